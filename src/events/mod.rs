//! Change events: the bus port, the local bus (rules with EventBridge event patterns, targets,
//! archive), and the relay that moves committed changes from the store's outbox to the bus.
//!
//! Events follow the store: the store writes an outbox entry in the same transaction as each
//! committed change, and [`relay_outbox`] delivers outbox entries in commit order, marking each
//! delivered only after the bus accepted it. A crash in between re-delivers, and the event id
//! is stable, so targets de-duplicate (the local NDJSON target does it itself).

pub mod archive;
pub mod bus;
pub mod eventbridge;
pub mod local;
pub mod pattern;
pub mod schema;
pub mod targets;

use async_trait::async_trait;

use crate::model::ChangeEvent;
use crate::store::{Outbox, StoreError};

/// EventBridge `PutEvents` accepts at most 10 entries a call.
pub const MAX_ENTRIES_PER_PUT: usize = 10;

/// The page of outbox entries the local buses take in one [`EventBus::put_page`] call: one
/// archive commit and one `fsync` per target for the page, instead of one per 10 events.
pub const LOCAL_PAGE_EVENTS: usize = 1_000;

/// Refuses a `put_events` call of more entries than `PutEvents` takes (every bus keeps that
/// limit, so local runs refuse what AWS would).
pub(crate) fn check_put_size(events: &[ChangeEvent]) -> Result<(), BusError> {
    if events.len() > MAX_ENTRIES_PER_PUT {
        return Err(BusError::Invalid(format!(
            "{} entries in one call; PutEvents takes at most {MAX_ENTRIES_PER_PUT}",
            events.len()
        )));
    }
    Ok(())
}

/// Refuses a `put_page` call to a local bus of more than [`LOCAL_PAGE_EVENTS`] entries.
pub(crate) fn check_page_size(events: &[ChangeEvent]) -> Result<(), BusError> {
    if events.len() > LOCAL_PAGE_EVENTS {
        return Err(BusError::Invalid(format!(
            "{} entries in one page; the local bus takes at most {LOCAL_PAGE_EVENTS}",
            events.len()
        )));
    }
    Ok(())
}

/// Entry error code for the entries of a page after a failed one (not attempted, to keep the
/// order).
pub const PRECEDING_ENTRY_FAILED: &str = "PrecedingEntryFailed";

/// EventBridge's limit on one entry (256 KB), counted as AWS does it: Source, DetailType,
/// Detail and Resources bytes together, and 14 for Time.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// The result of one entry of a `put_events` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutEntryResult {
    /// Accepted; the bus's event id.
    Accepted(String),
    /// Refused; EventBridge's error code and message (`ThrottlingException`, …).
    Failed { code: String, message: String },
}

/// Errors of a whole `put_events` call.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The call itself is invalid (more than 10 entries…): a bug in the caller, not retryable.
    #[error("invalid PutEvents call: {0}")]
    Invalid(String),
    /// The bus cannot be reached or a target failed: the call may succeed later.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

impl BusError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Unavailable(_))
    }
}

/// An event bus (EventBridge, or the local bus) with EventBridge's `PutEvents` contract.
#[async_trait]
pub trait EventBus: Send + Sync + std::fmt::Debug {
    /// Puts up to [`MAX_ENTRIES_PER_PUT`] events; one result per entry, in order.
    async fn put_events(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError>;

    /// The most events [`Self::put_page`] takes at once (the relay's page of the outbox).
    /// EventBridge: [`MAX_ENTRIES_PER_PUT`], one `PutEvents` call a page.
    fn page_size(&self) -> usize {
        MAX_ENTRIES_PER_PUT
    }

    /// Puts up to [`Self::page_size`] events, with `put_events`'s contract per entry: one
    /// result per entry, in order; once an entry failed, the later ones are not attempted
    /// (reported `Failed`), so that the relay keeps them, in order. The default sends the page
    /// through `put_events` 10 at a time; the local buses take a page in one call.
    async fn put_page(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        let mut results = Vec::with_capacity(events.len());
        for chunk in events.chunks(MAX_ENTRIES_PER_PUT) {
            let part = self.put_events(chunk).await?;
            let failed = part
                .iter()
                .any(|r| matches!(r, PutEntryResult::Failed { .. }));
            results.extend(part);
            if failed {
                break;
            }
        }
        while results.len() < events.len() {
            results.push(PutEntryResult::Failed {
                code: PRECEDING_ENTRY_FAILED.into(),
                message: "not attempted, to keep the order after a failed entry".into(),
            });
        }
        Ok(results)
    }

    /// The local bus with rules, when this is one: how the local HTTP server reaches its SSE
    /// streams and archive.
    fn as_local(&self) -> Option<&bus::LocalBus> {
        None
    }
}

/// The bus a pipeline file names: the local bus (its files under `data`), or an EventBridge
/// bus through the AWS SDK configured from the environment.
pub fn bus_from_config(
    config: &crate::config::EventsConfig,
    data: &crate::config::DataDir,
) -> Result<std::sync::Arc<dyn EventBus>, BusError> {
    match (&config.local, &config.eventbridge) {
        (Some(local), None) => Ok(std::sync::Arc::new(bus::LocalBus::open(local, data)?)),
        (None, Some(eb)) => Ok(std::sync::Arc::new(eventbridge::EventBridgeBus::from_env(
            eb.bus.clone(),
        ))),
        _ => Err(BusError::Invalid(
            "events: name one bus kind (`local` or `eventbridge`)".into(),
        )),
    }
}

/// The size EventBridge counts for an entry (its `Time` counts 14 bytes).
pub fn entry_size(event: &ChangeEvent) -> usize {
    // The detail's JSON length, counted as it is written rather than written to a string.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let detail = serde_json::to_writer(&mut count, &event.detail).map_or(0, |()| count.0);
    eventbridge::TIME_BYTES
        + event.source.len()
        + event.detail_type.detail_type().len()
        + detail
        + event.resources.iter().map(String::len).sum::<usize>()
}

/// Errors of the outbox relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl RelayError {
    pub fn is_retryable(&self) -> bool {
        match self {
            RelayError::Store(e) => e.is_retryable(),
            RelayError::Bus(e) => e.is_retryable(),
        }
    }
}

/// What one relay run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayReport {
    /// Events the bus accepted and that are now marked delivered.
    pub delivered: usize,
    /// Events the bus refused this time; they stay in the outbox for the next run.
    pub failed: usize,
}

/// Delivers every pending outbox event to the bus, in commit order, a page of
/// [`EventBus::page_size`] entries per call (10 for EventBridge, [`LOCAL_PAGE_EVENTS`] for the
/// local buses), marking each page's accepted entries delivered in one outbox commit.
///
/// Entries the bus refuses stay pending, and the run stops at the first refused entry so that
/// later changes to the same resource are not delivered before earlier ones.
pub async fn relay_outbox(
    outbox: &dyn Outbox,
    bus: &dyn EventBus,
) -> Result<RelayReport, RelayError> {
    let mut report = RelayReport::default();
    loop {
        let pending = outbox.pending(bus.page_size().max(1)).await?;
        if pending.is_empty() {
            return Ok(report);
        }
        // The events move out of the entries (a copy per event showed in bulk-load profiles).
        let (positions, events): (Vec<i64>, Vec<ChangeEvent>) =
            pending.into_iter().map(|e| (e.position, e.event)).unzip();
        let results = bus.put_page(&events).await?;
        let mut delivered = Vec::with_capacity(positions.len());
        for ((position, event), result) in positions.iter().zip(&events).zip(&results) {
            match result {
                PutEntryResult::Accepted(_) => delivered.push(*position),
                PutEntryResult::Failed { code, .. } => {
                    tracing::warn!(
                        position = *position,
                        event_id = %event.detail.event_id,
                        code = %code,
                        "event refused by the bus; it stays in the outbox"
                    );
                    break;
                }
            }
        }
        outbox.mark_delivered(&delivered).await?;
        report.delivered += delivered.len();
        if delivered.len() < positions.len() {
            report.failed += positions.len() - delivered.len();
            return Ok(report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::local::NdjsonBus;
    use crate::model::{Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef, Sequence};
    use crate::store::FhirStore;
    use crate::store::sqlite::SqliteStore;
    use serde_json::json;
    use std::sync::Mutex;

    async fn commit(store: &SqliteStore, n: usize) {
        for i in 0..n {
            let id = format!("p{i}");
            store
                .apply(&[ResourceChange {
                    target: ResourceRef {
                        resource_type: "Patient".into(),
                        id: id.clone(),
                    },
                    op: ResourceOp::Upsert {
                        resource: json!({"resourceType": "Patient", "id": id}),
                    },
                    lineage: Lineage {
                        source: "app".into(),
                        entity: "patients".into(),
                        key: RecordKey::from_pairs([("pk", json!(i))]),
                        sequence: Sequence::from(1),
                        observed_at: "2024-01-01T00:00:00Z".parse().unwrap(),
                    },
                }])
                .await
                .unwrap();
        }
    }

    /// A bus that refuses the entry with a given event position, or fails whole calls.
    #[derive(Debug, Default)]
    struct FlakyBus {
        refuse_id: Option<String>,
        down: bool,
        seen: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl EventBus for FlakyBus {
        async fn put_events(
            &self,
            events: &[ChangeEvent],
        ) -> Result<Vec<PutEntryResult>, BusError> {
            if self.down {
                return Err(BusError::Unavailable("connection refused".into()));
            }
            assert!(events.len() <= MAX_ENTRIES_PER_PUT);
            Ok(events
                .iter()
                .map(|e| {
                    self.seen.lock().unwrap().push(e.detail.id.clone());
                    if Some(&e.detail.id) == self.refuse_id.as_ref() {
                        PutEntryResult::Failed {
                            code: "ThrottlingException".into(),
                            message: "slow down".into(),
                        }
                    } else {
                        PutEntryResult::Accepted(e.detail.event_id.clone())
                    }
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn relays_everything_in_commit_order_ten_at_a_time() {
        let store = SqliteStore::open_in_memory().unwrap();
        commit(&store, 23).await;
        let bus = FlakyBus::default();
        let report = relay_outbox(&store, &bus).await.unwrap();
        assert_eq!(
            report,
            RelayReport {
                delivered: 23,
                failed: 0
            }
        );
        let seen = bus.seen.lock().unwrap().clone();
        assert_eq!(seen, (0..23).map(|i| format!("p{i}")).collect::<Vec<_>>());
        assert!(store.pending(10).await.unwrap().is_empty());
        // Nothing left: a second run delivers nothing.
        assert_eq!(relay_outbox(&store, &bus).await.unwrap().delivered, 0);
    }

    /// A bus with pages wider than a call: the default `put_page` splits them into calls of 10.
    #[derive(Debug)]
    struct WidePages(FlakyBus);

    #[async_trait]
    impl EventBus for WidePages {
        async fn put_events(
            &self,
            events: &[ChangeEvent],
        ) -> Result<Vec<PutEntryResult>, BusError> {
            self.0.put_events(events).await
        }

        fn page_size(&self) -> usize {
            25
        }
    }

    #[tokio::test]
    async fn the_default_page_is_sent_ten_at_a_time_and_stops_at_a_refusal() {
        let store = SqliteStore::open_in_memory().unwrap();
        commit(&store, 30).await;
        let bus = WidePages(FlakyBus {
            refuse_id: Some("p12".into()),
            ..FlakyBus::default()
        });
        let report = relay_outbox(&store, &bus).await.unwrap();
        // p0..p11 delivered; p12 refused; the rest of the page (p13..p24) kept in order.
        assert_eq!(
            report,
            RelayReport {
                delivered: 12,
                failed: 13
            }
        );
        // The call holding p12 was made (FlakyBus asserts at most 10 a call); the last part
        // of the page (p20..p24) was not attempted.
        let seen = bus.0.seen.lock().unwrap().clone();
        assert_eq!(seen, (0..20).map(|i| format!("p{i}")).collect::<Vec<_>>());
        assert_eq!(store.pending(100).await.unwrap().len(), 18);
        let results = bus
            .put_page(
                &store
                    .pending(25)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.event)
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        assert_eq!(results.len(), 18, "one result per entry of the page");
        assert!(matches!(
            &results[17],
            PutEntryResult::Failed { code, .. } if code == PRECEDING_ENTRY_FAILED
        ));
    }

    #[tokio::test]
    async fn a_refused_entry_and_everything_after_it_stay_in_the_outbox() {
        let store = SqliteStore::open_in_memory().unwrap();
        commit(&store, 5).await;
        let bus = FlakyBus {
            refuse_id: Some("p2".into()),
            ..FlakyBus::default()
        };
        let report = relay_outbox(&store, &bus).await.unwrap();
        assert_eq!(
            report,
            RelayReport {
                delivered: 2,
                failed: 3
            }
        );
        let pending: Vec<String> = store
            .pending(10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.detail.id)
            .collect();
        assert_eq!(pending, vec!["p2", "p3", "p4"]);
        // The bus recovers: the rest goes, in order.
        let report = relay_outbox(&store, &FlakyBus::default()).await.unwrap();
        assert_eq!(report.delivered, 3);
    }

    #[tokio::test]
    async fn a_bus_that_is_down_is_a_retryable_error_and_loses_nothing() {
        let store = SqliteStore::open_in_memory().unwrap();
        commit(&store, 3).await;
        let err = relay_outbox(
            &store,
            &FlakyBus {
                down: true,
                ..FlakyBus::default()
            },
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(store.pending(10).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_crash_between_delivery_and_marking_neither_loses_nor_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("store.db");
        let file = dir.path().join("events.ndjson");
        {
            let store = SqliteStore::open(&db).unwrap();
            commit(&store, 4).await;
            // The bus takes the first batch, then the process dies before marking it.
            let pending: Vec<ChangeEvent> = store
                .pending(10)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event)
                .collect();
            NdjsonBus::open(&file)
                .unwrap()
                .put_events(&pending[..3])
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&db).unwrap();
        let bus = NdjsonBus::open(&file).unwrap();
        let report = relay_outbox(&store, &bus).await.unwrap();
        assert_eq!(report.delivered, 4, "all four are marked now");
        let ids: Vec<String> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["detail"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            ids,
            vec!["p0", "p1", "p2", "p3"],
            "each event exactly once, in order"
        );
    }
}
