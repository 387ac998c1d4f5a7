use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::events::schema::check_change_event;
use crate::model::{ChangeEventDetail, ChangeKind, RecordKey, Sequence};

fn event(id: &str, key_value: &str) -> ChangeEvent {
    ChangeEvent::new(
        ChangeKind::Updated,
        ChangeEventDetail {
            event_id: ChangeEventDetail::stable_event_id("Patient", id, "2"),
            resource_type: "Patient".into(),
            id: id.into(),
            version_id: "2".into(),
            last_updated: "2024-01-02T03:04:05.678Z".parse().unwrap(),
            source: "app".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!(key_value))]),
            sequence: Sequence::from(7),
        },
    )
}

/// The envelope a subscriber would receive for an entry (the local bus's id convention).
fn envelope(entry: &Entry) -> Value {
    json!({
        "version": "0",
        "id": entry.event_id,
        "detail-type": entry.detail_type,
        "source": entry.source,
        "account": "123456789012",
        "time": entry.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": "us-east-1",
        "resources": entry.resources,
        "detail": serde_json::from_str::<Value>(&entry.detail).unwrap(),
    })
}

type Script = Box<dyn Fn(usize, &[Entry]) -> Result<Vec<EntryOutcome>, CallFailure> + Send + Sync>;

/// A `PutEvents` that answers by a script (call number from 0, entries) and records calls.
struct Scripted {
    script: Script,
    calls: Mutex<Vec<Vec<(String, usize)>>>,
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

impl Scripted {
    fn new(
        script: impl Fn(usize, &[Entry]) -> Result<Vec<EntryOutcome>, CallFailure>
        + Send
        + Sync
        + 'static,
    ) -> Arc<Scripted> {
        Arc::new(Scripted {
            script: Box::new(script),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<Vec<(String, usize)>> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl PutEventsApi for Scripted {
    async fn put(&self, bus: &str, entries: &[Entry]) -> Result<Vec<EntryOutcome>, CallFailure> {
        assert_eq!(bus, "changes");
        assert!(entries.len() <= MAX_ENTRIES_PER_PUT);
        assert!(entries.iter().map(Entry::size).sum::<usize>() <= MAX_CALL_BYTES);
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(
                entries
                    .iter()
                    .map(|e| (e.event_id.clone(), e.size()))
                    .collect(),
            );
            calls.len() - 1
        };
        (self.script)(n, entries)
    }
}

fn accept(entries: &[Entry]) -> Vec<EntryOutcome> {
    entries
        .iter()
        .map(|e| EntryOutcome::Accepted(format!("bus-{}", e.event_id)))
        .collect()
}

fn fast() -> EntryRetry {
    EntryRetry {
        max_attempts: 3,
        base: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    }
}

fn bus(api: Arc<Scripted>) -> EventBridgeBus {
    EventBridgeBus::with_api("changes", api).with_retry(fast())
}

#[test]
fn entry_size_is_counted_as_aws_documents_it() {
    // A multi-byte key: bytes count, not characters.
    let e = event("p1", "Zoë 日本");
    let entry = Entry::prepare(&e).unwrap();
    let detail = serde_json::to_string(&e.detail).unwrap();
    assert_eq!(entry.detail, detail);
    let expected =
        14 + "fhir-unify".len() + "FhirResourceUpdated".len() + detail.len() + "Patient/p1".len();
    assert_eq!(entry.size(), expected);
    assert!(
        detail.len() > detail.chars().count(),
        "the key has multi-byte characters"
    );
    // The port's own rule (used by the local bus) agrees.
    assert_eq!(crate::events::entry_size(&e), expected);
}

#[test]
fn calls_hold_at_most_ten_entries_and_256_kb() {
    let small = vec![100; 23];
    assert_eq!(plan_calls(&small), vec![0..10, 10..20, 20..23]);
    let big = vec![100 * 1024; 5];
    assert_eq!(plan_calls(&big), vec![0..2, 2..4, 4..5]);
    assert_eq!(
        plan_calls(&[MAX_ENTRY_BYTES, 1, MAX_ENTRY_BYTES - 1]),
        vec![0..1, 1..3]
    );
    assert!(plan_calls(&[]).is_empty());
    for sizes in [small, big, vec![200 * 1024, 60 * 1024, 3, 256 * 1024]] {
        let calls = plan_calls(&sizes);
        let covered: Vec<usize> = calls.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(covered, (0..sizes.len()).collect::<Vec<_>>());
        for c in calls {
            assert!(c.len() <= MAX_ENTRIES_PER_PUT);
            assert!(sizes[c].iter().sum::<usize>() <= MAX_CALL_BYTES);
        }
    }
}

#[test]
fn an_entry_at_the_limit_is_whole_and_one_byte_over_is_a_claim_check() {
    let base = Entry::prepare(&event("p1", "")).unwrap().size();
    let at_limit = event("p1", &"k".repeat(MAX_ENTRY_BYTES - base));
    let whole = Entry::prepare(&at_limit).unwrap();
    assert_eq!(whole.size(), MAX_ENTRY_BYTES);
    assert!(!whole.claim_checked);

    let over = event("p1", &"k".repeat(MAX_ENTRY_BYTES - base + 1));
    let checked = Entry::prepare(&over).unwrap();
    assert!(checked.claim_checked);
    assert!(checked.size() < 1024, "{}", checked.size());
    let detail: Value = serde_json::from_str(&checked.detail).unwrap();
    assert!(detail.get("key").is_none(), "no part of the key is sent");
    assert_eq!(
        detail["claimCheck"],
        json!({
            "reason": "entry-too-large",
            "entryBytes": MAX_ENTRY_BYTES + 1,
            "omitted": ["key"],
            "reference": "Patient/p1/_history/2",
            "fetch": "vread",
        })
    );
    // Everything else is the event's own detail.
    for field in [
        "eventId",
        "resourceType",
        "id",
        "versionId",
        "lastUpdated",
        "source",
        "entity",
        "sequence",
    ] {
        assert_eq!(
            detail[field],
            serde_json::to_value(&over.detail).unwrap()[field],
            "{field}"
        );
    }
    check_change_event(&envelope(&checked)).unwrap();
    check_change_event(&envelope(&whole)).unwrap();
}

#[test]
fn the_schema_refuses_a_detail_with_neither_key_nor_claim_check_and_a_bad_claim_check() {
    let checked = Entry::prepare(&event("p1", &"k".repeat(MAX_ENTRY_BYTES))).unwrap();
    let good = envelope(&checked);
    let mut no_claim = good.clone();
    no_claim["detail"]
        .as_object_mut()
        .unwrap()
        .remove("claimCheck");
    assert!(check_change_event(&no_claim).is_err());
    let mut bad_reference = good.clone();
    bad_reference["detail"]["claimCheck"]["reference"] = json!("Patient/p1");
    assert!(check_change_event(&bad_reference).is_err());
    let mut bad_size = good;
    bad_size["detail"]["claimCheck"]["entryBytes"] = json!(1000);
    assert!(check_change_event(&bad_size).is_err());
}

#[tokio::test]
async fn an_event_too_large_even_as_a_claim_check_is_refused_and_never_sent() {
    let mut huge = event("p1", "a");
    huge.resources = vec!["x".repeat(MAX_ENTRY_BYTES)];
    assert!(Entry::prepare(&huge).is_err());
    let api = Scripted::new(|_, e| Ok(accept(e)));
    let results = bus(api.clone())
        .put_events(&[event("p0", "a"), huge])
        .await
        .unwrap();
    assert!(matches!(results[0], PutEntryResult::Accepted(_)));
    assert!(matches!(&results[1], PutEntryResult::Failed { code, .. } if code == ENTRY_TOO_LARGE));
    assert_eq!(api.calls().len(), 1);
    assert_eq!(api.calls()[0].len(), 1);
}

#[tokio::test]
async fn only_refused_entries_are_retried_and_then_accepted() {
    // The first call throttles entries 2 and 5; the retry accepts them.
    let api = Scripted::new(|n, entries| {
        Ok(entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if n == 0 && (i == 2 || i == 5) {
                    EntryOutcome::Failed {
                        code: "ThrottlingException".into(),
                        message: "Rate exceeded".into(),
                    }
                } else {
                    EntryOutcome::Accepted(format!("bus-{}", e.event_id))
                }
            })
            .collect())
    });
    let events: Vec<ChangeEvent> = (0..7).map(|i| event(&format!("p{i}"), "k")).collect();
    let results = bus(api.clone()).put_events(&events).await.unwrap();
    for (e, r) in events.iter().zip(&results) {
        assert_eq!(
            r,
            &PutEntryResult::Accepted(format!("bus-{}", e.detail.event_id))
        );
    }
    let calls = api.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].len(), 7);
    let retried: Vec<&str> = calls[1].iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        retried,
        [
            events[2].detail.event_id.as_str(),
            events[5].detail.event_id.as_str()
        ]
    );
}

#[tokio::test]
async fn a_permanent_refusal_is_not_retried() {
    let api = Scripted::new(|_, entries| {
        Ok(entries
            .iter()
            .map(|_| EntryOutcome::Failed {
                code: "AccessDeniedException".into(),
                message: "not allowed".into(),
            })
            .collect())
    });
    let results = bus(api.clone())
        .put_events(&[event("p1", "k")])
        .await
        .unwrap();
    assert!(
        matches!(&results[0], PutEntryResult::Failed { code, .. } if code == "AccessDeniedException")
    );
    assert_eq!(api.calls().len(), 1);
}

#[tokio::test]
async fn retries_are_bounded_and_publish_names_the_event_ids_left() {
    let api = Scripted::new(|_, entries| {
        Ok(entries
            .iter()
            .map(|e| {
                if e.event_id == ChangeEventDetail::stable_event_id("Patient", "p3", "2") {
                    EntryOutcome::Failed {
                        code: "InternalFailure".into(),
                        message: "try again".into(),
                    }
                } else {
                    EntryOutcome::Accepted(format!("bus-{}", e.event_id))
                }
            })
            .collect())
    });
    let events: Vec<ChangeEvent> = (0..12).map(|i| event(&format!("p{i}"), "k")).collect();
    let err = bus(api.clone()).publish(&events).await.unwrap_err();
    match &err {
        PublishError::EntriesFailed { event_ids, codes } => {
            assert_eq!(event_ids, &[events[3].detail.event_id.clone()]);
            assert_eq!(codes, &["InternalFailure"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
    assert!(err.to_string().contains(&events[3].detail.event_id));
    // 12 events: a call of 10 (then 2 retries of the refused one) and a call of 2.
    let sizes: Vec<usize> = api.calls().iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 1, 1, 2]);
}

#[tokio::test]
async fn a_bus_that_cannot_be_reached_is_a_retryable_error_after_the_retries() {
    let api = Scripted::new(|_, _| {
        Err(CallFailure {
            code: "RequestFailed".into(),
            message: "connection refused".into(),
            retryable: true,
        })
    });
    let err = bus(api.clone())
        .put_events(&[event("p1", "k"), event("p2", "k")])
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(api.calls().len(), 3);

    // A passing failure of the whole call: the next attempt gets through.
    let api = Scripted::new(|n, e| {
        if n == 0 {
            Err(CallFailure {
                code: "ThrottlingException".into(),
                message: "slow down".into(),
                retryable: true,
            })
        } else {
            Ok(accept(e))
        }
    });
    let results = bus(api.clone())
        .put_events(&[event("p1", "k")])
        .await
        .unwrap();
    assert!(matches!(results[0], PutEntryResult::Accepted(_)));
    assert_eq!(api.calls().len(), 2);
}

#[tokio::test]
async fn large_entries_are_spread_over_calls_within_the_limits() {
    let api = Scripted::new(|_, e| Ok(accept(e)));
    let events: Vec<ChangeEvent> = (0..5)
        .map(|i| event(&format!("p{i}"), &"v".repeat(100 * 1024)))
        .collect();
    let results = bus(api.clone()).put_events(&events).await.unwrap();
    assert!(
        results
            .iter()
            .all(|r| matches!(r, PutEntryResult::Accepted(_)))
    );
    let sizes: Vec<usize> = api.calls().iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
}

#[tokio::test]
async fn more_than_ten_events_in_one_put_is_the_callers_bug() {
    let api = Scripted::new(|_, e| Ok(accept(e)));
    let events: Vec<ChangeEvent> = (0..11).map(|i| event(&format!("p{i}"), "k")).collect();
    let err = bus(api.clone()).put_events(&events).await.unwrap_err();
    assert!(matches!(err, BusError::Invalid(_)));
    assert!(api.calls().is_empty());
}

#[test]
fn backoff_waits_grow_and_stay_under_the_cap() {
    let retry = EntryRetry {
        max_attempts: 10,
        base: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
    };
    let mut seen = BTreeMap::new();
    for attempt in 1..=8 {
        for _ in 0..200 {
            let d = retry.delay(attempt);
            let cap = (10u64 << (attempt - 1)).min(100);
            assert!(d <= Duration::from_millis(cap), "{attempt}: {d:?}");
            let e: &mut Duration = seen.entry(attempt).or_default();
            *e = (*e).max(d);
        }
    }
    // Jitter spreads the waits: later attempts reach longer waits than the first.
    assert!(seen[&6] > seen[&1]);
}
