//! `emit` on AWS with the DynamoDB store: the store table's stream is the outbox. The event
//! source mapping (`infra/template.yaml`, `EmitStoreStreamMapping`) delivers only the `INSERT`s
//! of history items — one per committed version, written by DynamoDB in the same commit as the
//! data — and this handler turns each `NewImage` into its change event
//! ([`change_event_from_stream_image`]: the same event, and the same stable event id from
//! `Type/id/version`, the SQLite outbox would hold) and publishes them through the bus
//! (EventBridge), ten per call, in stream order.
//!
//! # Failures: reported, never dropped, never published twice by design
//!
//! The answer is a partial-batch response (`ReportBatchItemFailures`). The first record that
//! cannot be decoded, or whose event the bus still refuses after its retries, is reported by
//! its `SequenceNumber`, and so is every record after it, which this invocation leaves
//! unpublished: Lambda checkpoints before the lowest one and delivers it and the rest again,
//! so nothing before it is published a second time and nothing after it is lost. A record that
//! keeps failing is retried up to the mapping's `MaximumRetryAttempts` (the batch bisected on
//! the way), then its shard range goes to the failure queue (`OnFailure`) and the shard moves
//! on: a poison record costs a delay, never an event. The one repeat left is EventBridge's own
//! partial answer: if an entry of a call of up to ten is refused past its retries while later
//! entries of the same call were accepted, those later ones are published again on the retry
//! (subscribers dedupe by `detail.eventId`; the bus retries refused entries before that).
//!
//! Records that are not history items (the filter normally keeps them away: `current`
//! rewrites, index and type history items) are skipped and counted.
//!
//! # The `unify` state machine's `Emit` step on AWS
//!
//! With the DynamoDB store, this stream is the only publisher: the `Emit` step's invocation
//! (a trigger, not a stream batch) publishes nothing and answers `{delivered: 0, failed: 0}`
//! ([`Invocation::Trigger`] in stream mode: `FHIR_UNIFY_STORE_TABLE` set on `emit`, see
//! [`crate::lambda::emit_env`]), so an event is never published by both the step and the
//! stream. Without the variable the step relays the function's own outbox, which nothing writes
//! on AWS (`publish` writes to DynamoDB, whose outbox is the stream), so it publishes nothing
//! either; the variable makes that explicit. With the SQLite store (local runs, the embedded
//! runtime) the step relays the outbox as before ([`super::emit`]) and no stream exists.

use aws_lambda_events::event::dynamodb::EventRecord;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use serde_json::Value;

use crate::events::{EventBus, MAX_ENTRIES_PER_PUT, PutEntryResult, RelayReport};
use crate::model::ChangeEvent;
use crate::sources::dynamodb::DynamoDbStreamEvent;
use crate::store::dynamodb::change_event_from_stream_image;
use crate::store::ledger::dynamodb::{change_event_from_ledger_image, is_ledger_image};

/// Why one stream record was not published. Never carries patient data: positions, ids and
/// codes only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitRecordError {
    /// The record is not a DynamoDB stream record of the shape Lambda delivers.
    #[error("record {index}: not a DynamoDB stream record: {reason}")]
    Undecodable { index: usize, reason: String },
    /// A history item's image that is not a committed version (a corrupt or foreign item).
    #[error("record {index}: {reason}")]
    BadImage { index: usize, reason: String },
    /// The bus refused the event after its retries (or the whole call failed).
    #[error("record {index}: event {event_id} refused by the bus: {code}")]
    Refused {
        index: usize,
        event_id: String,
        code: String,
    },
    /// Left unpublished because an earlier record of the batch failed: delivered again from
    /// the earlier one, in order.
    #[error("record {index}: held back behind the failed record {first_failed}")]
    HeldBack { index: usize, first_failed: usize },
}

/// One record that failed, with the `SequenceNumber` Lambda retries it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmitRecordFailure {
    /// `dynamodb.SequenceNumber`, if the record has one.
    pub sequence_number: Option<String>,
    pub error: EmitRecordError,
}

/// What one stream batch did. Lambda receives only `response`.
#[derive(Debug, Default)]
pub struct EmitStreamOutcome {
    pub response: DynamoDbEventResponse,
    /// Events the bus accepted.
    pub published: usize,
    /// Records that carry no event (not history items).
    pub skipped: usize,
    pub failures: Vec<EmitRecordFailure>,
}

/// What an `emit` invocation carries.
#[derive(Debug)]
pub enum Invocation {
    /// A batch of the store table's stream, from the event source mapping.
    Stream(DynamoDbStreamEvent),
    /// The `unify` state machine's `Emit` step (its payload is a trigger).
    Trigger(Value),
}

impl Invocation {
    /// A payload with a `Records` list is a stream batch; anything else is a trigger.
    pub fn classify(payload: Value) -> Result<Invocation, super::HandlerError> {
        if payload.get("Records").is_some() {
            super::errors::parse_payload(payload).map(Invocation::Stream)
        } else {
            Ok(Invocation::Trigger(payload))
        }
    }
}

/// The state machine's `Emit` step when the stream publishes: nothing to do, by design.
pub fn trigger_in_stream_mode() -> RelayReport {
    tracing::info!(
        "emit: the store's table stream publishes change events; the step has nothing to relay"
    );
    RelayReport::default()
}

/// One `emit` invocation, whatever carried it. A stream batch comes only from the event
/// source mapping on the store table's stream: it is published. A trigger (the state machine's
/// `Emit` step) relays nothing in stream mode (`stream_mode`: the store is DynamoDB) and
/// relays the outbox otherwise.
pub async fn dispatch(
    payload: Value,
    env: &crate::env::Env,
    stream_mode: bool,
) -> Result<Value, super::HandlerError> {
    let answer = match Invocation::classify(payload)? {
        Invocation::Stream(batch) => {
            serde_json::to_value(handle(&batch, env.bus.as_ref()).await.response)
        }
        Invocation::Trigger(_) if stream_mode => serde_json::to_value(trigger_in_stream_mode()),
        Invocation::Trigger(trigger) => {
            serde_json::to_value(super::emit::handle(trigger, env).await?)
        }
    };
    answer.map_err(|e| super::HandlerError::Setup(format!("emit answer: {e}")))
}

fn sequence_number(raw: &Value) -> Option<String> {
    raw.get("dynamodb")
        .and_then(|d| d.get("SequenceNumber"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Publishes the change events of one stream batch; see the module documentation.
pub async fn handle(event: &DynamoDbStreamEvent, bus: &dyn EventBus) -> EmitStreamOutcome {
    let mut out = EmitStreamOutcome::default();
    // (record index, sequence number, event) waiting for the next bus call.
    let mut pending: Vec<(usize, Option<String>, ChangeEvent)> = Vec::new();
    let mut first_failed: Option<usize> = None;
    for (index, raw) in event.records.iter().enumerate() {
        let seq = sequence_number(raw);
        match decode(index, raw) {
            Ok(Some(event)) => pending.push((index, seq, event)),
            Ok(None) => out.skipped += 1,
            Err(error) => {
                // Publish what came before it, then stop here.
                if let Some(failed) = flush(&mut pending, bus, &mut out).await {
                    first_failed = Some(failed);
                } else {
                    out.failures.push(EmitRecordFailure {
                        sequence_number: seq,
                        error,
                    });
                    first_failed = Some(index);
                }
                break;
            }
        }
        if pending.len() == MAX_ENTRIES_PER_PUT
            && let Some(failed) = flush(&mut pending, bus, &mut out).await
        {
            first_failed = Some(failed);
            break;
        }
    }
    if first_failed.is_none() {
        first_failed = flush(&mut pending, bus, &mut out).await;
    }
    if let Some(first) = first_failed {
        for (index, raw) in event.records.iter().enumerate().skip(first + 1) {
            // Lambda retries from the lowest reported number: a later record without one
            // (an empty identifier would fail the whole batch) is retried anyway.
            let Some(seq) = sequence_number(raw) else {
                continue;
            };
            out.failures.push(EmitRecordFailure {
                sequence_number: Some(seq),
                error: EmitRecordError::HeldBack {
                    index,
                    first_failed: first,
                },
            });
        }
    }
    for f in &out.failures {
        if !matches!(f.error, EmitRecordError::HeldBack { .. }) {
            tracing::warn!(
                sequence_number = f.sequence_number.as_deref().unwrap_or("?"),
                "emit: stream record not published: {}",
                f.error
            );
        }
    }
    out.response = response(&out.failures);
    tracing::info!(
        records = event.records.len(),
        published = out.published,
        skipped = out.skipped,
        failed = out.failures.len(),
        "emit (stream) done"
    );
    out
}

/// The change event of one record: `None` for a record that carries none.
fn decode(index: usize, raw: &Value) -> Result<Option<ChangeEvent>, EmitRecordError> {
    let record: EventRecord =
        serde_json::from_value(raw.clone()).map_err(|e| EmitRecordError::Undecodable {
            index,
            // serde's message may quote a value: keep only where it failed.
            reason: format!("line {} column {}", e.line(), e.column()),
        })?;
    if record
        .change
        .sequence_number
        .as_deref()
        .is_none_or(str::is_empty)
    {
        return Err(EmitRecordError::Undecodable {
            index,
            reason: "no dynamodb.SequenceNumber".into(),
        });
    }
    if record.event_name != "INSERT" {
        // A history item is written once: only its INSERT is a version.
        return Ok(None);
    }
    if record.change.new_image.is_empty() {
        return Err(EmitRecordError::BadImage {
            index,
            reason: "an INSERT without a NewImage: the stream needs view type NEW_IMAGE".into(),
        });
    }
    // The REST store's ledger table (HealthLake) feeds this handler the same way: its event
    // items are the committed versions.
    if is_ledger_image(&record.change.new_image) {
        return change_event_from_ledger_image(&record.change.new_image).map_err(|e| {
            EmitRecordError::BadImage {
                index,
                reason: e.to_string(),
            }
        });
    }
    change_event_from_stream_image(&record.change.new_image).map_err(|e| {
        EmitRecordError::BadImage {
            index,
            reason: e.to_string(),
        }
    })
}

/// Publishes `pending` (at most ten) in one bus call. Returns the index of the first record
/// the bus refused, if any; the accepted ones before it are counted as published.
async fn flush(
    pending: &mut Vec<(usize, Option<String>, ChangeEvent)>,
    bus: &dyn EventBus,
    out: &mut EmitStreamOutcome,
) -> Option<usize> {
    if pending.is_empty() {
        return None;
    }
    let batch = std::mem::take(pending);
    let events: Vec<ChangeEvent> = batch.iter().map(|(_, _, e)| e.clone()).collect();
    let results = match bus.put_events(&events).await {
        Ok(r) => r,
        Err(e) => {
            let (index, seq, event) = &batch[0];
            out.failures.push(EmitRecordFailure {
                sequence_number: seq.clone(),
                error: EmitRecordError::Refused {
                    index: *index,
                    event_id: event.detail.event_id.clone(),
                    code: format!("call failed: {e}"),
                },
            });
            return Some(*index);
        }
    };
    for (i, (index, seq, event)) in batch.iter().enumerate() {
        match results.get(i) {
            Some(PutEntryResult::Accepted(_)) => out.published += 1,
            other => {
                let code = match other {
                    Some(PutEntryResult::Failed { code, .. }) => code.clone(),
                    _ => "NoResult".to_owned(),
                };
                out.failures.push(EmitRecordFailure {
                    sequence_number: seq.clone(),
                    error: EmitRecordError::Refused {
                        index: *index,
                        event_id: event.detail.event_id.clone(),
                        code,
                    },
                });
                return Some(*index);
            }
        }
    }
    None
}

/// The partial-batch answer: each failure's `SequenceNumber` (an empty identifier, "the whole
/// batch failed", for a record without one).
fn response(failures: &[EmitRecordFailure]) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    response.batch_item_failures = failures
        .iter()
        .map(|f| {
            let mut item = DynamoDbBatchItemFailure::default();
            item.item_identifier = Some(f.sequence_number.clone().unwrap_or_default());
            item
        })
        .collect();
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::events::BusError;
    use crate::model::{ChangeEventDetail, ChangeKind};

    fn fixture(name: &str) -> DynamoDbStreamEvent {
        let path = format!(
            "{}/tests/fixtures/store-stream-{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        let event: DynamoDbStreamEvent = serde_json::from_str(&text).unwrap();
        // Round trip: what Lambda delivers reads back the same.
        let again: DynamoDbStreamEvent =
            serde_json::from_value(serde_json::to_value(&event).unwrap()).unwrap();
        assert_eq!(again.records, event.records);
        event
    }

    /// A bus that records each call, refuses the events named in `refuse`, and fails whole
    /// calls when `down`.
    #[derive(Debug, Default)]
    struct FakeBus {
        calls: Mutex<Vec<Vec<String>>>,
        refuse: Vec<String>,
        down: bool,
    }

    #[async_trait]
    impl EventBus for FakeBus {
        async fn put_events(
            &self,
            events: &[ChangeEvent],
        ) -> Result<Vec<PutEntryResult>, BusError> {
            assert!(events.len() <= MAX_ENTRIES_PER_PUT);
            if self.down {
                return Err(BusError::Unavailable("bus down".into()));
            }
            self.calls
                .lock()
                .unwrap()
                .push(events.iter().map(|e| e.detail.event_id.clone()).collect());
            Ok(events
                .iter()
                .map(|e| {
                    if self.refuse.contains(&e.detail.event_id) {
                        PutEntryResult::Failed {
                            code: "InternalFailure".into(),
                            message: "no".into(),
                        }
                    } else {
                        PutEntryResult::Accepted(format!("eb-{}", e.detail.event_id))
                    }
                })
                .collect())
        }
    }

    fn id(v: u32) -> String {
        ChangeEventDetail::stable_event_id("Patient", "p1", &v.to_string())
    }

    fn identifiers(out: &EmitStreamOutcome) -> Vec<String> {
        out.response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn history_inserts_become_events_with_stable_ids_and_the_rest_is_skipped() {
        let bus = FakeBus::default();
        let out = handle(&fixture("batch"), &bus).await;
        assert_eq!((out.published, out.skipped), (3, 2));
        assert!(out.failures.is_empty() && out.response.batch_item_failures.is_empty());
        let calls = bus.calls.lock().unwrap().clone();
        assert_eq!(calls, [vec![id(1), id(2), id(3)]]);
        // The same kinds the SQLite outbox would hold.
        let batch = fixture("batch");
        let kinds: Vec<ChangeKind> = batch
            .records
            .iter()
            .filter_map(|r| decode(0, r).unwrap())
            .map(|e| e.detail_type)
            .collect();
        assert_eq!(
            kinds,
            [
                ChangeKind::Created,
                ChangeKind::Updated,
                ChangeKind::Deleted
            ]
        );
    }

    #[tokio::test]
    async fn a_bad_record_is_reported_with_everything_after_it_and_nothing_is_dropped() {
        let bus = FakeBus::default();
        let out = handle(&fixture("malformed"), &bus).await;
        assert_eq!(
            out.published, 1,
            "the record before the bad one is published"
        );
        assert_eq!(identifiers(&out), ["210", "220", "230"]);
        assert!(
            matches!(&out.failures[0].error, EmitRecordError::BadImage { index: 1, reason } if reason.contains("action")),
            "{:?}",
            out.failures[0]
        );
        assert!(matches!(
            out.failures[1].error,
            EmitRecordError::HeldBack {
                index: 2,
                first_failed: 1
            }
        ));
        // A record Lambda would not deliver (no SequenceNumber, not a record) is undecodable.
        for raw in [
            serde_json::json!({"eventName": "INSERT", "dynamodb": {"Keys": {}}}),
            serde_json::json!({"eventName": 3}),
            serde_json::json!("x"),
        ] {
            assert!(matches!(
                decode(7, &raw),
                Err(EmitRecordError::Undecodable { index: 7, .. })
            ));
        }
        let mut no_image = fixture("batch").records[0].clone();
        no_image["dynamodb"]
            .as_object_mut()
            .unwrap()
            .remove("NewImage");
        assert!(matches!(
            decode(0, &no_image),
            Err(EmitRecordError::BadImage { .. })
        ));
    }

    #[tokio::test]
    async fn refused_events_stop_the_batch_at_their_record() {
        let bus = FakeBus {
            refuse: vec![id(2)],
            ..FakeBus::default()
        };
        let out = handle(&fixture("batch"), &bus).await;
        assert_eq!(out.published, 1);
        // Record 2 (the update) refused; the index item and the delete after it held back.
        assert_eq!(identifiers(&out), ["120", "130", "140"]);
        assert!(matches!(
            &out.failures[0].error,
            EmitRecordError::Refused { index: 2, code, .. } if code == "InternalFailure"
        ));

        let down = FakeBus {
            down: true,
            ..FakeBus::default()
        };
        let out = handle(&fixture("batch"), &down).await;
        assert_eq!(out.published, 0);
        assert_eq!(identifiers(&out), ["100", "110", "120", "130", "140"]);
    }

    #[tokio::test]
    async fn many_events_go_ten_per_call_in_order() {
        let template = fixture("batch").records[0].clone();
        let records: Vec<Value> = (1..=23)
            .map(|v| {
                let mut r = template.clone();
                let img = &mut r["dynamodb"]["NewImage"];
                img["sk"]["S"] = Value::String(format!("v#{v:010}"));
                img["version"]["N"] = Value::String(v.to_string());
                r["dynamodb"]["SequenceNumber"] = Value::String(format!("{}", 1000 + v));
                r
            })
            .collect();
        let bus = FakeBus::default();
        let out = handle(&DynamoDbStreamEvent { records }, &bus).await;
        assert_eq!(out.published, 23);
        let calls = bus.calls.lock().unwrap().clone();
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 3]);
        let all: Vec<String> = calls.into_iter().flatten().collect();
        assert_eq!(all, (1..=23).map(id).collect::<Vec<_>>());
    }

    #[test]
    fn invocations_are_told_apart_and_the_step_relays_nothing_in_stream_mode() {
        let batch = serde_json::to_value(fixture("batch")).unwrap();
        assert!(matches!(
            Invocation::classify(batch),
            Ok(Invocation::Stream(_))
        ));
        assert!(matches!(
            Invocation::classify(serde_json::json!({"trigger": "b1"})),
            Ok(Invocation::Trigger(_))
        ));
        assert!(Invocation::classify(serde_json::json!({"Records": 5})).is_err());
        assert_eq!(trigger_in_stream_mode(), RelayReport::default());
    }
}
