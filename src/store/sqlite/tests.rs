use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::json;

use super::*;
use crate::model::{ChangeEventDetail, RecordKey};

fn target(id: &str) -> ResourceRef {
    ResourceRef {
        resource_type: "Patient".into(),
        id: id.into(),
    }
}

fn lineage(source: &str, seq: &str) -> Lineage {
    Lineage {
        source: source.into(),
        entity: "patients".into(),
        key: RecordKey::from_pairs([("pk", json!("p-1"))]),
        sequence: Sequence::parse(seq).unwrap(),
        observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
    }
}

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

fn upsert(id: &str, resource: Value, seq: &str) -> ResourceChange {
    ResourceChange {
        target: target(id),
        op: ResourceOp::Upsert { resource },
        lineage: lineage("app", seq),
    }
}

fn delete(id: &str, seq: &str) -> ResourceChange {
    ResourceChange {
        target: target(id),
        op: ResourceOp::Delete,
        lineage: lineage("app", seq),
    }
}

fn store() -> SqliteStore {
    SqliteStore::open_in_memory().unwrap()
}

async fn one(store: &SqliteStore, change: ResourceChange) -> PublishOutcome {
    let mut out = store.apply(&[change]).await.unwrap();
    assert_eq!(out.len(), 1);
    out.remove(0)
}

/// A clock that starts at a fixed time and moves by `step_ms` each call (possibly backwards).
fn stepping_clock(start: &str, step_ms: i64) -> Clock {
    let start: DateTime<Utc> = start.parse().unwrap();
    let calls = Arc::new(AtomicI64::new(0));
    Arc::new(move || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        start + chrono::Duration::milliseconds(n * step_ms)
    })
}

#[tokio::test]
async fn create_gives_version_1_with_meta_and_an_event() {
    let store = store().with_clock(stepping_clock("2025-03-04T05:06:07.123456Z", 0));
    let out = one(&store, upsert("p1", patient("p1", "Lovelace"), "10")).await;
    assert_eq!(out.action, PublishAction::Created);
    assert_eq!(out.version_id.as_deref(), Some("1"));
    let when: DateTime<Utc> = "2025-03-04T05:06:07.123Z".parse().unwrap();
    assert_eq!(out.last_updated, Some(when));

    let read = store.read(&target("p1")).await.unwrap().unwrap();
    assert_eq!(read.version_id, "1");
    assert!(!read.deleted);
    assert_eq!(read.last_updated, when);
    let resource = read.resource.unwrap();
    assert_eq!(resource["meta"]["versionId"], "1");
    assert_eq!(resource["meta"]["lastUpdated"], "2025-03-04T05:06:07.123Z");
    assert_eq!(resource["name"][0]["family"], "Lovelace");
    assert_eq!(read.lineage.unwrap(), lineage("app", "10"));

    let pending = store.pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    let event = &pending[0].event;
    assert_eq!(event.detail_type, ChangeKind::Created);
    assert_eq!(event.detail.version_id, "1");
    assert_eq!(event.detail.last_updated, when);
    assert_eq!(event.detail.sequence.as_str(), "10");
    assert_eq!(
        event.detail.event_id,
        ChangeEventDetail::stable_event_id("Patient", "p1", "1")
    );
    assert_eq!(event.resources, vec!["Patient/p1".to_owned()]);
}

#[tokio::test]
async fn id_is_set_when_absent_and_other_meta_is_kept() {
    let store = store();
    let resource = json!({
        "resourceType": "Patient",
        "meta": {"versionId": "99", "lastUpdated": "2000-01-01T00:00:00Z", "source": "app"},
        "active": true
    });
    let out = one(&store, upsert("p1", resource, "1")).await;
    assert_eq!(out.version_id.as_deref(), Some("1"));
    let stored = store
        .read(&target("p1"))
        .await
        .unwrap()
        .unwrap()
        .resource
        .unwrap();
    assert_eq!(stored["id"], "p1");
    assert_eq!(stored["meta"]["source"], "app");
    assert_eq!(stored["meta"]["versionId"], "1");
    assert_ne!(stored["meta"]["lastUpdated"], "2000-01-01T00:00:00Z");
}

#[tokio::test]
async fn update_gives_version_2_and_history_is_newest_first() {
    let store = store();
    one(&store, upsert("p1", patient("p1", "A"), "1")).await;
    let out = one(&store, upsert("p1", patient("p1", "B"), "2")).await;
    assert_eq!(out.action, PublishAction::Updated);
    assert_eq!(out.version_id.as_deref(), Some("2"));

    let history = store.history(&target("p1")).await.unwrap();
    let versions: Vec<&str> = history.iter().map(|v| v.version_id.as_str()).collect();
    assert_eq!(versions, ["2", "1"]);
    assert_eq!(
        history[0].resource.as_ref().unwrap()["name"][0]["family"],
        "B"
    );
    assert_eq!(
        history[1].resource.as_ref().unwrap()["name"][0]["family"],
        "A"
    );
    assert_eq!(history[1].lineage.as_ref().unwrap().sequence.as_str(), "1");

    let kinds: Vec<ChangeKind> = store
        .pending(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event.detail_type)
        .collect();
    assert_eq!(kinds, [ChangeKind::Created, ChangeKind::Updated]);
}

#[tokio::test]
async fn same_content_is_unchanged_without_version_or_event() {
    let store = store();
    let first = one(&store, upsert("p1", patient("p1", "A"), "1")).await;
    let out = one(&store, upsert("p1", patient("p1", "A"), "2")).await;
    assert_eq!(out.action, PublishAction::Unchanged);
    assert_eq!(out.version_id.as_deref(), Some("1"));
    assert_eq!(out.last_updated, first.last_updated);
    assert_eq!(store.history(&target("p1")).await.unwrap().len(), 1);
    assert_eq!(store.pending(10).await.unwrap().len(), 1);
    // The mark moved up to 2, so sequence 1 with other content is now stale.
    let stale = one(&store, upsert("p1", patient("p1", "Z"), "1")).await;
    assert_eq!(stale.action, PublishAction::Stale);
}

#[tokio::test]
async fn content_equal_except_meta_is_unchanged() {
    let store = store();
    one(&store, upsert("p1", patient("p1", "A"), "1")).await;
    // What a client would send back after reading it, with other meta times and no id.
    let mut resource = patient("p1", "A");
    resource["meta"] = json!({"versionId": "7", "lastUpdated": "1999-01-01T00:00:00Z"});
    let out = one(&store, upsert("p1", resource, "2")).await;
    assert_eq!(out.action, PublishAction::Unchanged);
    let mut no_id = patient("p1", "A");
    no_id.as_object_mut().unwrap().remove("id");
    let out = one(&store, upsert("p1", no_id, "3")).await;
    assert_eq!(out.action, PublishAction::Unchanged);
    // A meta element that is content (a profile) is a change.
    let mut profiled = patient("p1", "A");
    profiled["meta"] = json!({"profile": ["http://example.org/p"]});
    let out = one(&store, upsert("p1", profiled, "4")).await;
    assert_eq!(out.action, PublishAction::Updated);
    assert_eq!(store.pending(10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn stale_sequence_is_skipped_including_25_digit_sequences() {
    let store = store();
    let newer = "1405400000000002063282833";
    let older = "1405400000000002063282832";
    one(&store, upsert("p1", patient("p1", "A"), newer)).await;
    let out = one(&store, upsert("p1", patient("p1", "B"), older)).await;
    assert_eq!(out.action, PublishAction::Stale);
    assert_eq!(out.version_id.as_deref(), Some("1"));
    // Shorter is smaller even though "999" > "1405…" as text.
    let out = one(&store, upsert("p1", patient("p1", "C"), "999")).await;
    assert_eq!(out.action, PublishAction::Stale);
    let out = one(&store, delete("p1", older)).await;
    assert_eq!(out.action, PublishAction::Stale);

    let read = store.read(&target("p1")).await.unwrap().unwrap();
    assert_eq!(read.resource.unwrap()["name"][0]["family"], "A");
    assert_eq!(store.pending(10).await.unwrap().len(), 1);
    let bigger = "10000000000000000000000000";
    let out = one(&store, upsert("p1", patient("p1", "D"), bigger)).await;
    assert_eq!(out.action, PublishAction::Updated);
}

#[tokio::test]
async fn sequences_of_other_sources_are_not_compared() {
    let store = store();
    one(&store, upsert("p1", patient("p1", "A"), "500")).await;
    let other = ResourceChange {
        lineage: lineage("eligibility", "3"),
        ..upsert("p1", patient("p1", "B"), "3")
    };
    let out = one(&store, other).await;
    assert_eq!(out.action, PublishAction::Updated);
}

#[tokio::test]
async fn equal_sequence_with_new_content_is_applied() {
    let store = store();
    one(&store, upsert("p1", patient("p1", "A"), "5")).await;
    let out = one(&store, upsert("p1", patient("p1", "B"), "5")).await;
    assert_eq!(out.action, PublishAction::Updated);
    assert_eq!(out.version_id.as_deref(), Some("2"));
    // Replaying the same change again is a no-op.
    let out = one(&store, upsert("p1", patient("p1", "B"), "5")).await;
    assert_eq!(out.action, PublishAction::Unchanged);
}

#[tokio::test]
async fn delete_makes_a_deleted_version_and_an_event() {
    let store = store();
    one(&store, upsert("p1", patient("p1", "A"), "1")).await;
    let out = one(&store, delete("p1", "2")).await;
    assert_eq!(out.action, PublishAction::Deleted);
    assert_eq!(out.version_id.as_deref(), Some("2"));

    let read = store.read(&target("p1")).await.unwrap().unwrap();
    assert!(read.deleted);
    assert_eq!(read.version_id, "2");
    assert!(read.resource.is_none());
    let history = store.history(&target("p1")).await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(history[0].deleted && !history[1].deleted);

    let pending = store.pending(10).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[1].event.detail_type, ChangeKind::Deleted);
    assert_eq!(pending[1].event.detail.version_id, "2");
    // Deleting again changes nothing.
    let again = one(&store, delete("p1", "3")).await;
    assert_eq!(again.action, PublishAction::Unchanged);
    assert_eq!(again.version_id.as_deref(), Some("2"));
    assert_eq!(store.pending(10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn delete_of_absent_is_unchanged_and_an_older_upsert_then_stale() {
    let store = store();
    let out = one(&store, delete("p1", "20")).await;
    assert_eq!(out.action, PublishAction::Unchanged);
    assert_eq!(out.version_id, None);
    assert_eq!(out.last_updated, None);
    assert!(store.read(&target("p1")).await.unwrap().is_none());

    let out = one(&store, upsert("p1", patient("p1", "A"), "19")).await;
    assert_eq!(out.action, PublishAction::Stale);
    assert_eq!(out.version_id, None);
    assert!(store.read(&target("p1")).await.unwrap().is_none());
    assert!(store.history(&target("p1")).await.unwrap().is_empty());
    assert!(store.pending(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn upsert_after_delete_is_created_with_the_next_version() {
    let store = store();
    one(&store, upsert("p1", patient("p1", "A"), "1")).await;
    one(&store, upsert("p1", patient("p1", "B"), "2")).await;
    one(&store, delete("p1", "3")).await;
    // Same content as before the delete: still a re-creation.
    let out = one(&store, upsert("p1", patient("p1", "B"), "4")).await;
    assert_eq!(out.action, PublishAction::Created);
    assert_eq!(out.version_id.as_deref(), Some("4"));
    let last = store.pending(10).await.unwrap().pop().unwrap();
    assert_eq!(last.event.detail_type, ChangeKind::Created);
    assert_eq!(last.event.detail.version_id, "4");
}

#[tokio::test]
async fn vread_returns_each_version() {
    let store = store();
    one(&store, upsert("p1", patient("p1", "A"), "1")).await;
    one(&store, upsert("p1", patient("p1", "B"), "2")).await;
    one(&store, delete("p1", "3")).await;
    let t = target("p1");
    let v1 = store.vread(&t, "1").await.unwrap().unwrap();
    assert_eq!(v1.resource.unwrap()["name"][0]["family"], "A");
    let v2 = store.vread(&t, "2").await.unwrap().unwrap();
    assert_eq!(v2.resource.as_ref().unwrap()["meta"]["versionId"], "2");
    assert_eq!(v2.lineage.unwrap().sequence.as_str(), "2");
    let v3 = store.vread(&t, "3").await.unwrap().unwrap();
    assert!(v3.deleted && v3.resource.is_none());
    for missing in [
        "4",
        "0",
        "01",
        "-1",
        "+1",
        "",
        "x",
        "99999999999999999999999",
    ] {
        assert!(
            store.vread(&t, missing).await.unwrap().is_none(),
            "{missing:?}"
        );
    }
    assert!(store.vread(&target("other"), "1").await.unwrap().is_none());
    assert!(store.read(&target("other")).await.unwrap().is_none());
}

#[tokio::test]
async fn multi_resource_apply_is_atomic() {
    let store = store();
    let good = upsert("p1", patient("p1", "A"), "1");
    let mut bad = upsert("p2", patient("p2", "B"), "1");
    bad.op = ResourceOp::Upsert {
        resource: json!({"resourceType": "Observation", "id": "p2"}),
    };
    let err = store.apply(&[good.clone(), bad]).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid { target, .. } if target == "Patient/p2"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(store.read(&target("p1")).await.unwrap().is_none());
    assert!(store.pending(10).await.unwrap().is_empty());
    assert_eq!(store.counts().unwrap(), StoreCounts::default());

    // Nothing of the failed call remains, not even the sequence mark.
    let out = store
        .apply(&[good, upsert("p2", patient("p2", "B"), "1")])
        .await
        .unwrap();
    let actions: Vec<PublishAction> = out.iter().map(|o| o.action).collect();
    assert_eq!(actions, [PublishAction::Created, PublishAction::Created]);
    assert_eq!(store.pending(10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_same_resource_twice_in_one_call_is_applied_in_order() {
    let store = store();
    let out = store
        .apply(&[
            upsert("p1", patient("p1", "A"), "1"),
            upsert("p1", patient("p1", "B"), "1"),
        ])
        .await
        .unwrap();
    assert_eq!(out[0].action, PublishAction::Created);
    assert_eq!(out[1].action, PublishAction::Updated);
    assert_eq!(out[1].version_id.as_deref(), Some("2"));
}

#[tokio::test]
async fn outbox_pending_and_mark_delivered() {
    let store = store();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        one(&store, upsert(id, patient(id, "X"), &(i + 1).to_string())).await;
    }
    let all = store.pending(10).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|e| e.event.detail.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(store.pending(2).await.unwrap().len(), 2);
    assert!(store.pending(0).await.unwrap().is_empty());

    store
        .mark_delivered(&[all[0].position, all[2].position, 12345])
        .await
        .unwrap();
    store.mark_delivered(&[]).await.unwrap();
    let left = store.pending(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0], all[1]);
    // Delivering twice is harmless.
    store.mark_delivered(&[all[0].position]).await.unwrap();
    assert_eq!(store.counts().unwrap().outbox_pending, 1);
}

#[tokio::test]
async fn file_store_is_wal_and_reopens_with_data_and_undelivered_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/store.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        {
            let conn = store.lock().unwrap();
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(sync, 1, "synchronous=NORMAL");
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION);
        }
        one(&store, upsert("p1", patient("p1", "A"), "1")).await;
        one(&store, upsert("p2", patient("p2", "B"), "1")).await;
        one(&store, delete("p2", "2")).await;
        let first = store.pending(1).await.unwrap();
        store.mark_delivered(&[first[0].position]).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.counts().unwrap(),
        StoreCounts {
            resources_live: 1,
            versions: 3,
            outbox_pending: 2
        }
    );
    let read = store.read(&target("p1")).await.unwrap().unwrap();
    assert_eq!(read.resource.unwrap()["name"][0]["family"], "A");
    let pending = store.pending(10).await.unwrap();
    let kinds: Vec<ChangeKind> = pending.iter().map(|e| e.event.detail_type).collect();
    assert_eq!(kinds, [ChangeKind::Created, ChangeKind::Deleted]);
    // Marks survive too.
    let out = one(&store, upsert("p2", patient("p2", "C"), "1")).await;
    assert_eq!(out.action, PublishAction::Stale);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt(ref m) if m.contains("newer")),
        "{err}"
    );
}

#[test]
fn migrations_match_the_schema_version() {
    assert_eq!(i64::try_from(MIGRATIONS.len()).unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    std::fs::write(&path, vec![b'x'; 4096]).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn busy_database_is_unavailable_and_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let waiter = SqliteStore::open(&path).unwrap();
    waiter
        .lock()
        .unwrap()
        .busy_timeout(Duration::from_millis(20))
        .unwrap();
    // Another process holding the write lock.
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = waiter
        .apply(&[upsert("p1", patient("p1", "A"), "1")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.is_retryable());
    holder.execute_batch("ROLLBACK").unwrap();
    let out = waiter
        .apply(&[upsert("p1", patient("p1", "A"), "1")])
        .await
        .unwrap();
    assert_eq!(out[0].action, PublishAction::Created);
}

#[tokio::test]
async fn a_poisoned_lock_is_unavailable() {
    let store = Arc::new(store());
    let poisoner = Arc::clone(&store);
    let joined = std::thread::spawn(move || {
        let _guard = poisoner.conn.lock().unwrap();
        panic!("poison the lock");
    })
    .join();
    assert!(joined.is_err());
    let err = store.read(&target("p1")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn last_updated_never_goes_backwards() {
    // Each call to the clock is one second earlier than the previous one.
    let store = store().with_clock(stepping_clock("2025-01-01T00:00:10Z", -1000));
    let first = one(&store, upsert("p1", patient("p1", "A"), "1")).await;
    let second = one(&store, upsert("p1", patient("p1", "B"), "2")).await;
    let third = one(&store, delete("p1", "3")).await;
    assert_eq!(second.last_updated, first.last_updated);
    assert_eq!(third.last_updated, first.last_updated);
    let history = store.history(&target("p1")).await.unwrap();
    assert!(
        history
            .iter()
            .all(|v| Some(v.last_updated) == first.last_updated)
    );
}

/// Every permutation of `items` (Heap's algorithm).
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn heap<T: Clone>(k: usize, items: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(items.clone());
            return;
        }
        heap(k - 1, items, out);
        for i in 0..k - 1 {
            if k.is_multiple_of(2) {
                items.swap(i, k - 1);
            } else {
                items.swap(0, k - 1);
            }
            heap(k - 1, items, out);
        }
    }
    let mut items = items.to_vec();
    let mut out = Vec::new();
    heap(items.len(), &mut items, &mut out);
    out
}

/// The live state of a resource: its content without meta, or `None` if deleted or absent.
async fn live_state(store: &SqliteStore, id: &str) -> Option<Value> {
    let current = store.read(&target(id)).await.unwrap()?;
    let mut resource = current.resource?;
    resource.as_object_mut().unwrap().remove("meta");
    Some(resource)
}

#[tokio::test]
async fn out_of_order_application_ends_in_the_in_order_state() {
    let histories: Vec<Vec<ResourceChange>> = vec![
        vec![
            upsert("p1", patient("p1", "A"), "1"),
            upsert("p1", patient("p1", "B"), "2"),
            delete("p1", "3"),
            upsert("p1", patient("p1", "C"), "4"),
            upsert("p1", patient("p1", "D"), "10000000000000000000005"),
        ],
        vec![
            upsert("p1", patient("p1", "A"), "1"),
            delete("p1", "2"),
            upsert("p1", patient("p1", "B"), "3"),
            upsert("p1", patient("p1", "A"), "4"),
            delete("p1", "5"),
        ],
        vec![
            delete("p1", "1"),
            upsert("p1", patient("p1", "A"), "2"),
            upsert("p1", patient("p1", "A"), "3"),
            delete("p1", "4"),
            delete("p1", "5"),
        ],
    ];
    for changes in histories {
        let in_order = store();
        for c in &changes {
            one(&in_order, c.clone()).await;
        }
        let expected = live_state(&in_order, "p1").await;
        for order in permutations(&changes) {
            let store = store();
            for c in &order {
                one(&store, c.clone()).await;
            }
            let seqs: Vec<&str> = order.iter().map(|c| c.lineage.sequence.as_str()).collect();
            assert_eq!(live_state(&store, "p1").await, expected, "order {seqs:?}");
            // Every committed version has exactly one event.
            let counts = store.counts().unwrap();
            assert_eq!(counts.outbox_pending, counts.versions, "order {seqs:?}");
        }
    }
}

#[tokio::test]
async fn bad_ids_and_types_are_invalid_and_name_the_target() {
    let store = store();
    let long = "a".repeat(65);
    for id in ["", "a/b", "a b", "é", "a_b", long.as_str()] {
        let err = store.apply(&[delete(id, "1")]).await.unwrap_err();
        match err {
            StoreError::Invalid { target, reason } => {
                assert_eq!(target, format!("Patient/{id}"));
                assert!(reason.contains("FHIR id"), "{reason}");
            }
            other => panic!("{id:?}: {other}"),
        }
        assert!(store.read(&target(id)).await.unwrap().is_none());
        assert!(store.history(&target(id)).await.unwrap().is_empty());
    }
    let ok = "a".repeat(64);
    let out = one(&store, upsert(&ok, patient(&ok, "A"), "1")).await;
    assert_eq!(out.action, PublishAction::Created);
    let out = one(&store, upsert("A-1.b", patient("A-1.b", "A"), "1")).await;
    assert_eq!(out.action, PublishAction::Created);

    for bad_type in ["", "patient", "Pa tient", "Patient1"] {
        let change = ResourceChange {
            target: ResourceRef {
                resource_type: bad_type.into(),
                id: "p1".into(),
            },
            op: ResourceOp::Delete,
            lineage: lineage("app", "1"),
        };
        let err = store.apply(&[change]).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Invalid { .. }),
            "{bad_type:?}: {err}"
        );
    }
}

#[tokio::test]
async fn mismatched_resources_are_invalid() {
    let store = store();
    let cases = [
        (
            json!({"resourceType": "Observation", "id": "p1"}),
            "resourceType",
        ),
        (json!({"id": "p1"}), "resourceType is missing"),
        (
            json!({"resourceType": 5, "id": "p1"}),
            "resourceType is not a string",
        ),
        (
            json!({"resourceType": "Patient", "id": "p2"}),
            "id \"p2\" differs",
        ),
        (
            json!({"resourceType": "Patient", "id": 1}),
            "id is not a string",
        ),
        (
            json!({"resourceType": "Patient", "meta": []}),
            "meta is not an object",
        ),
        (json!(["Patient"]), "not a JSON object"),
        (Value::Null, "not a JSON object"),
    ];
    for (resource, expected) in cases {
        let err = store
            .apply(&[upsert("p1", resource.clone(), "1")])
            .await
            .unwrap_err();
        match err {
            StoreError::Invalid { target, reason } => {
                assert_eq!(target, "Patient/p1");
                assert!(reason.contains(expected), "{resource}: {reason}");
            }
            other => panic!("{resource}: {other}"),
        }
    }
    // Invalid even when it would be stale: bad input is never silently skipped.
    one(&store, upsert("p1", patient("p1", "A"), "9")).await;
    let err = store
        .apply(&[upsert("p1", json!({"resourceType": "Observation"}), "1")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert_eq!(store.counts().unwrap().versions, 1);
}

#[test]
fn sql_errors_map_to_retryable_or_not() {
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    assert!(sql_err(busy).is_retryable());
    let locked = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_LOCKED),
        None,
    );
    assert!(sql_err(locked).is_retryable());
    let corrupt = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        None,
    );
    assert!(matches!(sql_err(corrupt), StoreError::Corrupt(_)));
    assert!(matches!(
        sql_err(rusqlite::Error::InvalidColumnType(
            0,
            "x".into(),
            rusqlite::types::Type::Null
        )),
        StoreError::Corrupt(_)
    ));
}

#[test]
fn debug_shows_the_location_only() {
    let text = format!("{:?}", store());
    assert!(text.contains(":memory:"), "{text}");
}

#[test]
fn tuning_for_bulk_loads_sets_the_cache_and_checkpoint_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
    store.tune_for_bulk(64, 32).unwrap();
    let conn = store.lock().unwrap();
    let cache: i64 = conn
        .pragma_query_value(None, "cache_size", |r| r.get(0))
        .unwrap();
    let page: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    let checkpoint: i64 = conn
        .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
        .unwrap();
    let temp_store: i64 = conn
        .pragma_query_value(None, "temp_store", |r| r.get(0))
        .unwrap();
    // A negative cache size is in KiB.
    assert_eq!(cache, -64 * 1024);
    assert_eq!(checkpoint, 32 * 1024 * 1024 / page);
    // 1 = FILE: statement journals spill to disk instead of growing in memory with the load.
    assert_eq!(temp_store, 1);
}

/// The `CREATE` statement of a table, as SQLite keeps it.
fn table_sql(conn: &Connection, table: &str) -> String {
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )
    .unwrap()
}

fn outbox_rows(store: &SqliteStore) -> Vec<(i64, bool)> {
    store
        .lock()
        .unwrap()
        .prepare("SELECT position, delivered_at IS NOT NULL FROM outbox ORDER BY position")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn delivered_outbox_rows_are_deleted_and_positions_keep_increasing() {
    let store = store();
    assert!(!table_sql(&store.lock().unwrap(), "outbox").contains("AUTOINCREMENT"));
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        one(&store, upsert(id, patient(id, "X"), &(i + 1).to_string())).await;
    }
    let first = store.pending(10).await.unwrap();
    let positions: Vec<i64> = first.iter().map(|e| e.position).collect();
    // Delivering some leaves the backlog alone.
    store.mark_delivered(&positions[..2]).await.unwrap();
    assert_eq!(
        outbox_rows(&store),
        [(positions[2], false), (positions[3], false)]
    );
    // Delivering the newest keeps it (delivered), so the next position is above it.
    store.mark_delivered(&positions[2..]).await.unwrap();
    assert_eq!(outbox_rows(&store), [(positions[3], true)]);
    assert_eq!(store.counts().unwrap().outbox_pending, 0);
    one(&store, upsert("e", patient("e", "X"), "1")).await;
    one(&store, upsert("a", patient("a", "Y"), "5")).await;
    let next = store.pending(10).await.unwrap();
    let ids: Vec<&str> = next.iter().map(|e| e.event.detail.id.as_str()).collect();
    assert_eq!(ids, ["e", "a"]);
    assert!(
        next[0].position > positions[3],
        "{next:?} after {positions:?}"
    );
    assert!(next[1].position > next[0].position);
    // The row kept last time goes with the next delivery; a position delivered twice is
    // harmless.
    store
        .mark_delivered(&[next[0].position, positions[0]])
        .await
        .unwrap();
    assert_eq!(outbox_rows(&store), [(next[1].position, false)]);
}

#[tokio::test]
async fn a_version_4_outbox_is_migrated_in_place_keeping_positions_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let (pending_before, newest_before) = {
        let store = SqliteStore::open(&path).unwrap();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            one(&store, upsert(id, patient(id, "X"), &(i + 1).to_string())).await;
        }
        let all = store.pending(10).await.unwrap();
        store.mark_delivered(&[all[0].position]).await.unwrap();
        // Back to schema 4: the outbox of MIGRATION_1, with its AUTOINCREMENT counter.
        let conn = store.lock().unwrap();
        conn.execute_batch(
            "CREATE TABLE outbox_4 (
                 position     INTEGER PRIMARY KEY AUTOINCREMENT,
                 event        TEXT NOT NULL,
                 delivered_at TEXT
             );
             INSERT INTO outbox_4 SELECT position, event, delivered_at FROM outbox;
             DROP TABLE outbox;
             ALTER TABLE outbox_4 RENAME TO outbox;
             CREATE INDEX outbox_undelivered ON outbox (position) WHERE delivered_at IS NULL;
             PRAGMA user_version = 4;",
        )
        .unwrap();
        let newest = all.last().unwrap().position;
        let seq: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, newest);
        // The newest event deleted by hand: the counter stays above every position left.
        conn.execute("DELETE FROM outbox WHERE position = ?1", [newest])
            .unwrap();
        (all[1..3].to_vec(), newest)
    };
    let store = SqliteStore::open(&path).unwrap();
    {
        let conn = store.lock().unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert!(!table_sql(&conn, "outbox").contains("AUTOINCREMENT"));
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT position FROM outbox WHERE delivered_at IS NULL
                 ORDER BY position",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("outbox_undelivered"), "{plan}");
    }
    // Undelivered events keep their positions and text; delivered ones stay delivered.
    assert_eq!(store.pending(10).await.unwrap(), pending_before);
    assert_eq!(store.counts().unwrap().outbox_pending, 2);
    one(&store, upsert("e", patient("e", "X"), "1")).await;
    let pending = store.pending(10).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert_eq!(pending[2].event.detail.id, "e");
    assert!(pending[2].position > newest_before, "{pending:?}");
}

#[tokio::test]
async fn a_version_6_outbox_loses_its_delivered_rows_but_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let positions: Vec<i64> = {
        let store = SqliteStore::open(&path).unwrap();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            one(&store, upsert(id, patient(id, "X"), &(i + 1).to_string())).await;
        }
        let positions = pending_positions(&store).await;
        // Schema 6 marked delivered rows and kept them.
        store
            .lock()
            .unwrap()
            .execute_batch(
                "DROP INDEX outbox_delivered;
                 UPDATE outbox SET delivered_at = '2026-01-01T00:00:00.000Z'
                     WHERE position IN (SELECT position FROM outbox ORDER BY position LIMIT 1)
                        OR position = (SELECT max(position) FROM outbox);
                 PRAGMA user_version = 6;",
            )
            .unwrap();
        positions
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        outbox_rows(&store),
        [
            (positions[1], false),
            (positions[2], false),
            (positions[3], true)
        ]
    );
}

/// Every `search_index` row, sorted (rowids aside).
fn index_rows(store: &SqliteStore) -> Vec<Vec<rusqlite::types::Value>> {
    let conn = store.lock().unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT resource_type, id, param, system, value, raw, low, high FROM search_index
             ORDER BY resource_type, id, param, system, value, raw, low, high",
        )
        .unwrap();
    stmt.query_map([], |r| (0..8).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn updates_and_deletes_leave_the_index_rows_of_the_final_versions_only() {
    let p = |given: &[&str], birth: &str, system: Option<&str>| {
        let mut identifier = json!({"value": "M-1"});
        if let Some(s) = system {
            identifier["system"] = json!(s);
        }
        json!({"resourceType": "Patient", "identifier": [identifier, {"value": "M-1"}],
               "name": [{"family": "Smith", "given": given}, {"text": "Dr. Smith"}],
               "gender": "female", "birthDate": birth})
    };
    let o = |subject: &str, date: &str| {
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": subject}, "effectiveDateTime": date})
    };
    let at = |t: &str, id: &str| ResourceRef {
        resource_type: t.into(),
        id: id.into(),
    };
    let put = |t: &str, id: &str, resource: Value, seq: u64| ResourceChange {
        target: at(t, id),
        op: ResourceOp::Upsert { resource },
        lineage: lineage("app", &seq.to_string()),
    };
    let del = |t: &str, id: &str, seq: u64| ResourceChange {
        target: at(t, id),
        op: ResourceOp::Delete,
        lineage: lineage("app", &seq.to_string()),
    };
    let changed = store();
    let steps = vec![
        vec![
            put("Patient", "a", p(&["Ada", "Ada"], "1970", Some("urn:x")), 1),
            put("Patient", "b", p(&["Bo"], "1980-02", None), 1),
            put("Observation", "o", o("Patient/a", "2021-05-01"), 1),
            put("Patient", "c", p(&["Cy"], "1990-03-04", None), 1),
        ],
        // Same values in other places, one duplicate gone, a system added, a date moved;
        // the same resource twice in one call; a delete.
        vec![
            put("Patient", "a", p(&["Ada"], "1970", None), 2),
            put("Patient", "a", p(&["Ada", "Eve"], "1971", Some("urn:y")), 3),
            put("Observation", "o", o("Patient/b", "2021-05-02"), 2),
            del("Patient", "c", 2),
        ],
        // Unchanged, re-created after a delete, deleted.
        vec![
            put("Patient", "a", p(&["Ada", "Eve"], "1971", Some("urn:y")), 4),
            put("Patient", "c", p(&["Cy"], "1990-03-04", None), 3),
            del("Patient", "b", 2),
        ],
    ];
    for step in &steps {
        changed.apply(step).await.unwrap();
    }
    let fresh = store();
    let mut finals = Vec::new();
    for (t, id) in [("Patient", "a"), ("Patient", "c"), ("Observation", "o")] {
        let resource = changed.read(&at(t, id)).await.unwrap().unwrap().resource;
        finals.push(put(t, id, resource.unwrap(), 1));
    }
    fresh.apply(&finals).await.unwrap();
    let rows = index_rows(&changed);
    assert_eq!(rows, index_rows(&fresh));
    let of = |id: &str| {
        let id = rusqlite::types::Value::Text(id.to_owned());
        rows.iter().filter(|r| r[1] == id).count()
    };
    assert_eq!((of("b"), of("o") > 0, of("a") > of("c")), (0, true, true));
}

#[tokio::test]
async fn an_older_files_search_index_is_rebuilt_so_updates_leave_no_stale_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        one(&store, upsert("a", patient("a", "Smith"), "1")).await;
        one(&store, upsert("b", patient("b", "Jones"), "1")).await;
        // A row an older build's entries made and this build's do not (nothing would delete
        // it through the value index), in a schema 5 file.
        store
            .lock()
            .unwrap()
            .execute_batch(
                "INSERT INTO search_index (resource_type, id, param, value)
                 VALUES ('Patient', 'a', 'family', 'stale');
                 PRAGMA user_version = 5;",
            )
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    one(&store, upsert("a", patient("a", "Smyth"), "2")).await;
    let fresh = SqliteStore::open(&dir.path().join("fresh.db")).unwrap();
    one(&fresh, upsert("a", patient("a", "Smyth"), "1")).await;
    one(&fresh, upsert("b", patient("b", "Jones"), "1")).await;
    assert_eq!(index_rows(&store), index_rows(&fresh));
}

#[tokio::test]
async fn pending_after_reads_on_past_entries_not_yet_marked_through_the_undelivered_index() {
    let store = store();
    for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        one(&store, upsert(id, patient(id, "X"), &(i + 1).to_string())).await;
    }
    let all = store.pending(10).await.unwrap();
    assert_eq!(all.len(), 5);
    // From the start it is `pending`.
    assert_eq!(store.pending_after(0, 10).unwrap(), all);
    // After a position: the entries past it, oldest first, at most `limit`.
    assert_eq!(store.pending_after(all[1].position, 2).unwrap(), all[2..4]);
    assert!(store.pending_after(all[4].position, 10).unwrap().is_empty());
    // A marked entry is skipped either way.
    store.mark_delivered_off_worker(&[all[3].position]).unwrap();
    let after = store.pending_after(all[1].position, 10).unwrap();
    assert_eq!(after, vec![all[2].clone(), all[4].clone()]);
    assert_eq!(store.pending(10).await.unwrap().len(), 4);
    let conn = store.lock().unwrap();
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT position, event FROM outbox
             WHERE delivered_at IS NULL AND position > 0 ORDER BY position LIMIT 10",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("outbox_undelivered"), "{plan}");
}

#[test]
fn an_execution_name_is_claimed_once_until_given_back() {
    let store = store();
    assert!(store.claim_execution("partner_members-1").unwrap());
    assert!(!store.claim_execution("partner_members-1").unwrap());
    assert!(store.claim_execution("partner_members-2").unwrap());
    store.release_execution("partner_members-1").unwrap();
    assert!(store.claim_execution("partner_members-1").unwrap());
    // The claims live beside the pointers, not in them.
    let pointers: i64 = store
        .lock()
        .unwrap()
        .query_row(
            "SELECT count(*) FROM parameters WHERE name NOT LIKE 'bulk-load-execution/%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pointers, 0);
}

/// Rows of `resources` that still hold content (schema 8 writes none).
fn resource_copies(conn: &Connection) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM resources WHERE content IS NOT NULL",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn resources_hold_no_copy_of_the_content_and_a_schema_7_file_drops_its_copies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        one(&store, upsert("p1", patient("p1", "A"), "1")).await;
        one(&store, upsert("p1", patient("p1", "B"), "2")).await;
        one(&store, upsert("p2", patient("p2", "C"), "1")).await;
        one(&store, delete("p2", "2")).await;
        let conn = store.lock().unwrap();
        assert_eq!(resource_copies(&conn), 0, "schema 8 writes no copy");
        // Back to schema 7: `resources` repeating the current version's text from `history`.
        conn.execute_batch(
            "UPDATE resources SET content = (
                 SELECT h.content FROM history h
                 WHERE h.resource_type = resources.resource_type AND h.id = resources.id
                   AND h.version_id = resources.version_id);
             PRAGMA user_version = 7;",
        )
        .unwrap();
        assert_eq!(resource_copies(&conn), 1, "p1's copy (p2 is deleted)");
    }
    let store = SqliteStore::open(&path).unwrap();
    {
        let conn = store.lock().unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(resource_copies(&conn), 0, "the copy is gone");
    }
    let read = store.read(&target("p1")).await.unwrap().unwrap();
    assert_eq!(read.version_id, "2");
    assert_eq!(read.resource.unwrap()["name"][0]["family"], "B");
    // The current version's content is still what an upsert is compared with, through
    // `history`: the same content is unchanged, other content is a new version.
    let same = one(&store, upsert("p1", patient("p1", "B"), "3")).await;
    assert_eq!(same.action, PublishAction::Unchanged);
    let other = one(&store, upsert("p1", patient("p1", "D"), "4")).await;
    assert_eq!(other.action, PublishAction::Updated);
    assert_eq!(other.version_id.as_deref(), Some("3"));
    // A delete of a live version still removes it, and a re-create follows the delete.
    assert_eq!(
        one(&store, delete("p1", "5")).await.action,
        PublishAction::Deleted
    );
    assert!(
        store
            .read(&target("p1"))
            .await
            .unwrap()
            .unwrap()
            .resource
            .is_none()
    );
    let again = one(&store, upsert("p2", patient("p2", "E"), "3")).await;
    assert_eq!(again.action, PublishAction::Created);
    assert_eq!(
        store
            .read(&target("p2"))
            .await
            .unwrap()
            .unwrap()
            .resource
            .unwrap()["name"][0]["family"],
        "E"
    );
    assert_eq!(resource_copies(&store.lock().unwrap()), 0);
}

#[test]
fn a_schema_7_row_without_its_history_row_keeps_its_content_and_is_still_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            r#"INSERT INTO resources VALUES ('Patient', 'a', 1, '2024-01-01T00:00:00.000Z', 0,
                 '{"resourceType":"Patient","id":"a","gender":"male"}');
               PRAGMA user_version = 5;"#,
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let conn = store.lock().unwrap();
    assert_eq!(resource_copies(&conn), 1, "the only copy is kept");
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM search_index WHERE id = 'a' AND param = 'gender'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "reindexed from the kept content");
}

#[tokio::test]
async fn a_schema_8_file_gets_the_staged_row_columns_and_the_staging_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        one(&store, upsert("p1", patient("p1", "A"), "1")).await;
        // Back to schema 8: no staged-row columns, no staging table before a dataset write.
        store
            .lock()
            .unwrap()
            .execute_batch(
                "ALTER TABLE history DROP COLUMN dataset;
                 ALTER TABLE history DROP COLUMN dataset_version;
                 DROP TABLE dataset_staged;
                 PRAGMA user_version = 8;",
            )
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    {
        let conn = store.lock().unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let history = table_sql(&conn, "history");
        assert!(history.contains("dataset_version"), "{history}");
        assert!(!table_sql(&conn, "dataset_staged").is_empty());
    }
    let read = store.read(&target("p1")).await.unwrap().unwrap();
    assert_eq!(read.resource.unwrap()["name"][0]["family"], "A");
    assert_eq!(store.history(&target("p1")).await.unwrap().len(), 1);
    let out = one(&store, upsert("p1", patient("p1", "B"), "2")).await;
    assert_eq!(out.action, PublishAction::Updated);
}

/// The outbox positions still waiting for delivery, oldest first.
async fn pending_positions(store: &SqliteStore) -> Vec<i64> {
    store
        .pending(10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect()
}

#[tokio::test]
async fn marks_in_several_runs_and_out_of_order_delete_exactly_those_rows() {
    let store = store();
    for (i, id) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
        one(&store, upsert(id, patient(id, "X"), &(i + 1).to_string())).await;
    }
    let p = pending_positions(&store).await;
    // Two runs (a b, d e), given out of order and with a repeat; c and f stay pending.
    store
        .mark_delivered(&[p[4], p[0], p[3], p[1], p[0]])
        .await
        .unwrap();
    assert_eq!(outbox_rows(&store), [(p[2], false), (p[5], false)]);
    assert_eq!(super::runs(&[1, 2, 3, 5, 7, 8]), [(1, 3), (5, 5), (7, 8)]);
    assert!(super::runs(&[]).is_empty());
}
