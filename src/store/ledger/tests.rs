//! The SQLite ledger alone: intents, settling, the outbox side, its schema version.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::model::{ChangeEventDetail, ChangeKind, RecordKey, Sequence};
use serde_json::json;

fn target(id: &str) -> ResourceRef {
    ResourceRef {
        resource_type: "Patient".into(),
        id: id.into(),
    }
}

fn lineage() -> Lineage {
    Lineage {
        source: "app".into(),
        entity: "patients".into(),
        key: RecordKey::from_pairs([("pk", json!(1))]),
        sequence: Sequence::from(1),
        observed_at: "2024-01-01T00:00:00Z".parse().unwrap(),
    }
}

fn intent(id: &str, prior: Option<&str>) -> Intent {
    Intent {
        target: target(id),
        prior: prior.map(str::to_owned),
        lineage: lineage(),
        recorded_at: "2026-11-22T00:00:00Z".parse().unwrap(),
    }
}

fn event(id: &str, version: &str) -> ChangeEvent {
    crate::store::change_event(
        ChangeKind::Created,
        &target(id),
        version,
        "2026-11-22T00:00:01Z".parse().unwrap(),
        &lineage(),
    )
}

#[tokio::test]
async fn intents_stay_open_until_settled_and_events_are_kept_once() {
    let ledger = SqliteLedger::open_in_memory().unwrap();
    let ids = ledger
        .record(&[intent("a", None), intent("b", Some("3"))])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let open = ledger.open_intents().await.unwrap();
    assert_eq!(open.len(), 2);
    assert_eq!(open[1].intent, intent("b", Some("3")));
    ledger.settle(&ids[..1], &[event("a", "1")]).await.unwrap();
    assert_eq!(ledger.open_intents().await.unwrap().len(), 1);
    // The same event settled again (a recovery after a crash) is kept once.
    ledger
        .settle(&ids[1..], &[event("a", "1"), event("b", "4")])
        .await
        .unwrap();
    assert!(ledger.open_intents().await.unwrap().is_empty());
    let pending = ledger.pending(10).await.unwrap();
    let ids: Vec<&str> = pending.iter().map(|e| e.event.detail.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b"]);
    ledger.mark_delivered(&[pending[0].position]).await.unwrap();
    assert_eq!(ledger.counts().unwrap(), (1, 0));
    // Delivered events still block a second settling of the same id.
    ledger.settle(&[], &[event("a", "1")]).await.unwrap();
    assert_eq!(ledger.pending(10).await.unwrap().len(), 1);
    assert!(
        ledger
            .has_event(&ChangeEventDetail::stable_event_id("Patient", "a", "1"))
            .unwrap()
    );
}

#[tokio::test]
async fn a_bad_intent_id_is_a_typed_error_and_settles_nothing() {
    let ledger = SqliteLedger::open_in_memory().unwrap();
    let err = ledger
        .settle(&["not-a-number".into()], &[event("a", "1")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(m) if m.contains("not-a-number")));
    assert!(ledger.pending(10).await.unwrap().is_empty(), "rolled back");
}

#[tokio::test]
async fn the_file_survives_a_reopen_and_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    {
        let ledger = SqliteLedger::open(&path).unwrap();
        ledger.record(&[intent("a", None)]).await.unwrap();
    }
    let ledger = SqliteLedger::open(&path).unwrap();
    assert_eq!(ledger.open_intents().await.unwrap().len(), 1);
    drop(ledger);
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 7).unwrap();
    drop(conn);
    let err = SqliteLedger::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(m) if m.contains("schema version 7")));
}

#[tokio::test]
async fn a_corrupt_intent_row_is_named() {
    let ledger = SqliteLedger::open_in_memory().unwrap();
    ledger
        .lock()
        .unwrap()
        .execute("INSERT INTO intents (intent) VALUES ('{')", [])
        .unwrap();
    let err = ledger.open_intents().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(m) if m.contains("ledger intent 1")));
}

/// Ages every delivered row of the ledger's outbox by `days`.
fn age_delivered(ledger: &SqliteLedger, days: i64) {
    let conn = ledger.lock().unwrap();
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT position, delivered_at FROM outbox WHERE delivered_at IS NOT NULL")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (position, at) in rows {
        let at: chrono::DateTime<Utc> = at.parse().unwrap();
        conn.execute(
            "UPDATE outbox SET delivered_at = ?1 WHERE position = ?2",
            params![
                crate::store::format_time(at - chrono::Duration::days(days)),
                position
            ],
        )
        .unwrap();
    }
}

fn outbox_rows(ledger: &SqliteLedger) -> i64 {
    ledger
        .lock()
        .unwrap()
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn delivered_events_are_kept_for_the_retention_then_pruned_keeping_the_newest() {
    let ledger = SqliteLedger::open_in_memory().unwrap();
    ledger
        .settle(&[], &[event("a", "1"), event("b", "1"), event("c", "1")])
        .await
        .unwrap();
    let pending = ledger.pending(10).await.unwrap();
    let positions: Vec<i64> = pending.iter().map(|e| e.position).collect();
    ledger.mark_delivered(&positions[..2]).await.unwrap();
    // Within the retention a delivered event still stops a second settling.
    assert_eq!(outbox_rows(&ledger), 3);
    ledger.settle(&[], &[event("a", "1")]).await.unwrap();
    assert_eq!(ledger.counts().unwrap(), (1, 0));

    // Past the retention the next delivery prunes them.
    age_delivered(&ledger, 8);
    ledger.mark_delivered(&positions[2..]).await.unwrap();
    assert_eq!(outbox_rows(&ledger), 1, "the newest row stays");
    assert!(
        !ledger
            .has_event(&ChangeEventDetail::stable_event_id("Patient", "a", "1"))
            .unwrap()
    );

    // The newest row, delivered, keeps new positions above every old one, and goes once a
    // newer row exists and it is past the retention.
    age_delivered(&ledger, 8);
    ledger.settle(&[], &[event("d", "1")]).await.unwrap();
    let next = ledger.pending(10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert!(
        next[0].position > positions[2],
        "{next:?} after {positions:?}"
    );
    ledger.mark_delivered(&[next[0].position]).await.unwrap();
    assert_eq!(outbox_rows(&ledger), 1);
    assert_eq!(ledger.counts().unwrap(), (0, 0));
}

#[tokio::test]
async fn a_schema_1_ledger_is_migrated_keeping_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(LEDGER_SCHEMA).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO outbox (event_id, event, delivered_at) VALUES ('x', '{}', '2020-01-01T00:00:00.000Z')",
            [],
        )
        .unwrap();
    }
    let ledger = SqliteLedger::open(&path).unwrap();
    ledger.settle(&[], &[event("a", "1")]).await.unwrap();
    let pending = ledger.pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    ledger.mark_delivered(&[pending[0].position]).await.unwrap();
    // The old delivered row was past the retention: pruned through the new index.
    assert!(!ledger.has_event("x").unwrap());
    let version: i64 = ledger
        .lock()
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, LEDGER_SCHEMA_VERSION);
}
