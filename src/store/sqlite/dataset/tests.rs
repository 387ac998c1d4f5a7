use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::json;

use super::*;
use crate::model::{ChangeKind, RecordKey, Sequence};
use crate::store::{FhirStore, Outbox};

const DS: &str = "clinic/patients";
const LEASE: Duration = Duration::from_secs(60);

/// A clock the test moves by hand (milliseconds after a fixed start).
fn manual_clock() -> (SqliteStore, Arc<AtomicI64>) {
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let start: DateTime<Utc> = "2024-05-01T00:00:00Z".parse().unwrap();
    let store = SqliteStore::open_in_memory()
        .unwrap()
        .with_clock(Arc::new(move || {
            start + chrono::Duration::milliseconds(o.load(Ordering::SeqCst))
        }));
    (store, offset)
}

fn staged(id: &str, family: &str) -> StagedResource {
    StagedResource {
        target: ResourceRef {
            resource_type: "Patient".into(),
            id: id.into(),
        },
        resource: json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}),
        lineage: Lineage {
            source: "clinic".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("patient_id", json!(id))]),
            sequence: Sequence::parse("1").unwrap(),
            observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
        },
    }
}

fn pref(id: &str) -> ResourceRef {
    ResourceRef {
        resource_type: "Patient".into(),
        id: id.into(),
    }
}

async fn family(store: &SqliteStore, id: &str) -> Option<String> {
    let v = store.read(&pref(id)).await.unwrap()?;
    v.resource
        .and_then(|r| r["name"][0]["family"].as_str().map(str::to_owned))
}

/// Loads one full version (`rows` = (id, family)) and publishes it.
async fn load(store: &SqliteStore, rows: &[(&str, &str)]) -> (u64, PointerMove) {
    let v = store.begin(DS, "test", LEASE).await.unwrap();
    let resources: Vec<_> = rows.iter().map(|(id, f)| staged(id, f)).collect();
    store.stage(DS, v.version, &resources).await.unwrap();
    store
        .chunk_done(
            DS,
            v.version,
            "LOAD00000001.parquet",
            LoadCounts {
                records_read: rows.len() as u64,
                resources_written: rows.len() as u64,
                quarantined: 0,
            },
        )
        .await
        .unwrap();
    let mv = store.finalize(DS, v.version).await.unwrap();
    (v.version, mv)
}

async fn drain(store: &SqliteStore) -> Vec<(ChangeKind, String, String)> {
    let pending = store.pending(1000).await.unwrap();
    let positions: Vec<i64> = pending.iter().map(|e| e.position).collect();
    store.mark_delivered(&positions).await.unwrap();
    pending
        .into_iter()
        .map(|e| {
            (
                e.event.detail_type,
                e.event.detail.id,
                e.event.detail.version_id,
            )
        })
        .collect()
}

#[tokio::test]
async fn load_publishes_the_difference_and_rollback_reverses_it() {
    let (store, _) = manual_clock();
    let (v1, mv) = load(&store, &[("a", "Alpha"), ("b", "Beta")]).await;
    assert_eq!((mv.from, mv.to, mv.created), (None, Some(v1), 2));
    assert_eq!(store.current(DS).await.unwrap(), Some(v1));
    assert_eq!(drain(&store).await.len(), 2);

    // v2: a unchanged, b updated, c created, (nothing deleted yet)
    let (v2, mv) = load(&store, &[("a", "Alpha"), ("b", "Bravo"), ("c", "Gamma")]).await;
    assert_eq!(
        (mv.created, mv.updated, mv.deleted, mv.unchanged),
        (1, 1, 0, 1)
    );
    let events = drain(&store).await;
    assert_eq!(
        events,
        vec![
            (ChangeKind::Updated, "b".into(), "2".into()),
            (ChangeKind::Created, "c".into(), "1".into())
        ]
    );

    // v3 drops a: a delete version and event.
    let (v3, mv) = load(&store, &[("b", "Bravo"), ("c", "Gamma")]).await;
    assert_eq!((mv.deleted, mv.unchanged), (1, 2));
    assert_eq!(
        drain(&store).await,
        vec![(ChangeKind::Deleted, "a".into(), "2".into())]
    );
    assert_eq!(family(&store, "a").await, None);

    // Rollback to v2 (the default: the newest SUCCEEDED older than v3) brings a back.
    let mv = store.rollback(DS, None).await.unwrap();
    assert_eq!((mv.from, mv.to, mv.created), (Some(v3), Some(v2), 1));
    assert_eq!(family(&store, "a").await.as_deref(), Some("Alpha"));
    assert_eq!(
        drain(&store).await,
        vec![(ChangeKind::Created, "a".into(), "3".into())]
    );

    // And to v1 explicitly: b back to Beta, c deleted.
    let mv = store.rollback(DS, Some(v1)).await.unwrap();
    assert_eq!((mv.updated, mv.deleted), (1, 1));
    assert_eq!(family(&store, "b").await.as_deref(), Some("Beta"));
    assert_eq!(family(&store, "c").await, None);
    assert_eq!(store.current(DS).await.unwrap(), Some(v1));

    let versions = store.versions(DS).await.unwrap();
    let statuses: Vec<_> = versions
        .iter()
        .map(|v| (v.version, v.status, v.current))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (v3, VersionStatus::RolledBack, false),
            (v2, VersionStatus::RolledBack, false),
            (v1, VersionStatus::Succeeded, true)
        ]
    );
    assert_eq!(versions[0].counts.records_read, 2);
    assert_eq!(versions[0].source_files, vec!["LOAD00000001.parquet"]);

    // Rolling forward to a ROLLED_BACK version is allowed; to the current one is not.
    store.rollback(DS, Some(v3)).await.unwrap();
    assert!(matches!(
        store.rollback(DS, Some(v3)).await,
        Err(DatasetError::Invalid { .. })
    ));
    assert!(matches!(
        store.rollback(DS, Some(99)).await,
        Err(DatasetError::NoSuchVersion { version: 99, .. })
    ));
}

#[tokio::test]
async fn a_failed_version_changes_nothing_and_a_retry_succeeds() {
    let (store, _) = manual_clock();
    let (v1, _) = load(&store, &[("a", "Alpha")]).await;
    drain(&store).await;
    let v2 = store.begin(DS, "test", LEASE).await.unwrap().version;
    store
        .stage(DS, v2, &[staged("a", "Changed")])
        .await
        .unwrap();
    store.fail(DS, v2, "chunk LOAD2 failed").await.unwrap();
    assert_eq!(store.current(DS).await.unwrap(), Some(v1));
    assert_eq!(family(&store, "a").await.as_deref(), Some("Alpha"));
    assert!(drain(&store).await.is_empty());
    // A failed version takes no more rows and cannot be published.
    assert!(matches!(
        store.stage(DS, v2, &[staged("b", "B")]).await,
        Err(DatasetError::WrongStatus {
            status: VersionStatus::Failed,
            ..
        })
    ));
    assert!(matches!(
        store.finalize(DS, v2).await,
        Err(DatasetError::WrongStatus { .. })
    ));
    let (v3, mv) = load(&store, &[("a", "Changed")]).await;
    assert_eq!((v3, mv.updated), (3, 1));
    let v = store.versions(DS).await.unwrap();
    assert_eq!(v[1].status, VersionStatus::Failed);
    assert_eq!(v[1].error.as_deref(), Some("chunk LOAD2 failed"));
    // A finalize retried after it committed is harmless.
    let again = store.finalize(DS, v3).await.unwrap();
    assert_eq!((again.created, again.updated, again.deleted), (0, 0, 0));
}

#[tokio::test]
async fn a_dead_load_is_detected_and_a_live_one_blocks() {
    let (store, clock) = manual_clock();
    let v1 = store.begin(DS, "pid-1", LEASE).await.unwrap().version;
    store.stage(DS, v1, &[staged("a", "A")]).await.unwrap();
    // Fresh heartbeat: a second load must wait.
    clock.store(30_000, Ordering::SeqCst);
    assert!(matches!(
        store.begin(DS, "pid-2", LEASE).await,
        Err(DatasetError::Busy { version, .. }) if version == v1
    ));
    // 61 s after the last heartbeat the owner is presumed dead.
    clock.store(91_000, Ordering::SeqCst);
    let v2 = store.begin(DS, "pid-2", LEASE).await.unwrap().version;
    assert_eq!(v2, 2);
    let versions = store.versions(DS).await.unwrap();
    assert_eq!(versions[1].status, VersionStatus::Failed);
    assert!(
        versions[1]
            .error
            .as_deref()
            .unwrap()
            .contains("no heartbeat")
    );
    assert_eq!(store.current(DS).await.unwrap(), None);
    assert_eq!(store.read(&pref("a")).await.unwrap(), None);
    assert!(store.fail_dead(DS, LEASE).await.unwrap().is_empty());
}

#[tokio::test]
async fn gc_keeps_the_newest_and_the_current() {
    let (store, _) = manual_clock();
    for f in ["One", "Two", "Three", "Four"] {
        load(&store, &[("a", f), ("b", f)]).await;
    }
    let failed = store.begin(DS, "t", LEASE).await.unwrap().version;
    store.stage(DS, failed, &[staged("x", "X")]).await.unwrap();
    store.fail(DS, failed, "boom").await.unwrap();
    store.rollback(DS, Some(1)).await.unwrap();
    // keep 2: versions 4 and 3 (newest), 1 (current); 2 and the FAILED 5 go.
    let report = store.gc(DS, 2).await.unwrap();
    assert_eq!(report.purged_versions, vec![5, 2]);
    assert_eq!(report.rows_deleted, 3);
    assert!(matches!(
        store.rollback(DS, Some(2)).await,
        Err(DatasetError::Invalid { .. })
    ));
    // keep 0 never removes the current version.
    store.gc(DS, 0).await.unwrap();
    let v = store.versions(DS).await.unwrap();
    assert!(v.iter().all(|v| v.purged != v.current));
    assert_eq!(family(&store, "a").await.as_deref(), Some("One"));
}

#[tokio::test]
async fn bad_names_and_resources_are_refused() {
    let (store, _) = manual_clock();
    assert!(matches!(
        store.begin("/bad", "t", LEASE).await,
        Err(DatasetError::Invalid { .. })
    ));
    let v = store.begin(DS, "t", LEASE).await.unwrap().version;
    let mut bad = staged("a", "A");
    bad.resource = json!({"resourceType": "Observation", "id": "a"});
    assert!(matches!(
        store.stage(DS, v, &[bad]).await,
        Err(DatasetError::Store(StoreError::Invalid { .. }))
    ));
    let mut bad_id = staged("a", "A");
    bad_id.target.id = "no spaces".into();
    assert!(store.stage(DS, v, &[bad_id]).await.is_err());
    assert!(matches!(
        store.rollback(DS, None).await,
        Err(DatasetError::Invalid { .. })
    ));
}

#[tokio::test]
async fn rows_staged_by_an_earlier_build_move_to_the_append_table_once() {
    let (store, _) = manual_clock();
    let (v1, _) = load(&store, &[("a", "Alpha"), ("b", "Beta")]).await;
    drain(&store).await;
    // Make the file look like one written by a build that staged into `dataset_resources`.
    store
        .lock()
        .unwrap()
        .execute_batch(
            "INSERT INTO dataset_resources (dataset, version, resource_type, id, content, lineage)
               SELECT dataset, version, resource_type, id, content, lineage FROM dataset_staged;
             DROP TABLE dataset_staged;",
        )
        .unwrap();
    // The next load finds v1's rows and publishes the difference against them.
    let (v2, mv) = load(&store, &[("a", "Alpha"), ("c", "Gamma")]).await;
    assert_eq!(
        (mv.from, mv.created, mv.updated, mv.deleted, mv.unchanged),
        (Some(v1), 1, 0, 1, 1)
    );
    let count = |sql: &str| -> i64 {
        store
            .lock()
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count("SELECT count(*) FROM dataset_resources"), 0);
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM dataset_staged WHERE version = {v1}"
        )),
        2
    );
    // Rolling back to the moved version brings b back.
    let mv = store.rollback(DS, Some(v1)).await.unwrap();
    assert_eq!((mv.from, mv.created, mv.deleted), (Some(v2), 1, 1));
    assert_eq!(family(&store, "b").await.as_deref(), Some("Beta"));
}

#[tokio::test]
async fn a_resource_staged_twice_in_a_version_keeps_the_later_row() {
    let (store, _) = manual_clock();
    let v = store.begin(DS, "test", LEASE).await.unwrap();
    store
        .stage(DS, v.version, &[staged("a", "First"), staged("b", "Beta")])
        .await
        .unwrap();
    store
        .stage(DS, v.version, &[staged("a", "Second")])
        .await
        .unwrap();
    let mv = store.finalize(DS, v.version).await.unwrap();
    assert_eq!((mv.created, mv.unchanged), (2, 0));
    assert_eq!(family(&store, "a").await.as_deref(), Some("Second"));
}

/// Everything a pointer move writes, contents parsed (their text may order keys differently).
fn snapshot(store: &SqliteStore) -> Vec<String> {
    let conn = store.lock().unwrap();
    let mut out = Vec::new();
    let mut dump = |sql: &str, json_cols: &[usize]| {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let cols: Vec<String> = (0..n)
                .map(|i| {
                    let v: rusqlite::types::Value = r.get(i).unwrap();
                    match v {
                        rusqlite::types::Value::Text(t) if json_cols.contains(&i) => {
                            serde_json::from_str::<Value>(&t).unwrap().to_string()
                        }
                        other => format!("{other:?}"),
                    }
                })
                .collect();
            out.push(format!("{sql}: {}", cols.join(" | ")));
        }
    };
    dump(
        "SELECT resource_type, id, version_id, last_updated, deleted, content FROM resources
         ORDER BY 1, 2",
        &[5],
    );
    dump(
        "SELECT resource_type, id, version_id, last_updated, deleted, content, lineage
         FROM history ORDER BY 1, 2, 3",
        &[5, 6],
    );
    dump(
        "SELECT resource_type, id, param, system, value, raw, low, high FROM search_index
         ORDER BY 1, 2, 3, 4, 5, 6, 7, 8",
        &[],
    );
    dump("SELECT event FROM outbox ORDER BY position", &[0]);
    out
}

fn rich(id: &str, family: &str) -> StagedResource {
    let mut s = staged(id, family);
    s.resource = json!({
        "resourceType": "Patient", "id": id,
        "meta": {"profile": ["http://example.org/p"]},
        "identifier": [{"system": "urn:mrn", "value": format!("mrn-{id}")}],
        "name": [{"family": family, "given": ["Ann"]}],
        "birthDate": "1980-02-03",
        "gender": "female"
    });
    s
}

#[tokio::test]
async fn the_set_based_first_publish_writes_what_the_per_resource_path_writes() {
    let rows = vec![
        rich("c", "Gamma"),
        rich("a", "Alpha"),
        staged("held-changed", "New"),
        staged("held-same", "Same"),
        rich("b", "Beta"),
    ];
    let mut snapshots = Vec::new();
    for set_based in [true, false] {
        let (store, clock) = manual_clock();
        // Two resources the store holds before the dataset's first version (streamed in).
        let streamed: Vec<ResourceChange> =
            [staged("held-changed", "Old"), staged("held-same", "Same")]
                .into_iter()
                .map(|s| ResourceChange {
                    target: s.target,
                    op: ResourceOp::Upsert {
                        resource: s.resource,
                    },
                    lineage: s.lineage,
                })
                .collect();
        store.apply(&streamed).await.unwrap();
        clock.store(5_000, Ordering::SeqCst);
        let v = store.begin(DS, "test", LEASE).await.unwrap();
        store.stage(DS, v.version, &rows).await.unwrap();
        clock.store(9_000, Ordering::SeqCst);
        let mv = if set_based {
            store.finalize(DS, v.version).await.unwrap()
        } else {
            store
                .write_tx(|tx, now| {
                    let mv = switch_each(tx, DS, None, v.version, now)?;
                    let at = format_time(now);
                    set_status(tx, DS, v.version, VersionStatus::Succeeded, None, &at)?;
                    write_pointer(tx, DS, v.version, &at)?;
                    Ok(mv)
                })
                .unwrap()
        };
        assert_eq!(
            (mv.created, mv.updated, mv.unchanged, mv.deleted),
            (3, 1, 1, 0),
            "set-based: {set_based}"
        );
        assert_eq!(family(&store, "held-changed").await.as_deref(), Some("New"));
        let a = store.read(&pref("a")).await.unwrap().unwrap();
        let meta = &a.resource.as_ref().unwrap()["meta"];
        assert_eq!(meta["versionId"], "1");
        assert_eq!(meta["profile"][0], "http://example.org/p");
        assert_eq!(meta["lastUpdated"], "2024-05-01T00:00:09.000Z");
        snapshots.push(snapshot(&store));
    }
    assert!(snapshots[0].len() > 20, "{:?}", snapshots[0]);
    // Events come in another order (held resources first); everything else is equal.
    let (mut set_based, mut each) = (snapshots[0].clone(), snapshots[1].clone());
    set_based.sort();
    each.sort();
    assert_eq!(set_based, each);
}

#[tokio::test]
async fn a_first_publish_of_several_worker_blocks_writes_what_the_per_resource_path_writes() {
    // More rows than two blocks of the publishing worker, the last block partial, staged out
    // of key order.
    let n = 2 * PUBLISH_BLOCK + 57;
    let rows: Vec<StagedResource> = (0..n)
        .rev()
        .map(|i| rich(&format!("r{i:05}"), &format!("F{i}")))
        .collect();
    let mut snapshots = Vec::new();
    for set_based in [true, false] {
        let (store, clock) = manual_clock();
        let v = store.begin(DS, "test", LEASE).await.unwrap();
        store.stage(DS, v.version, &rows).await.unwrap();
        clock.store(9_000, Ordering::SeqCst);
        let mv = if set_based {
            store.finalize(DS, v.version).await.unwrap()
        } else {
            store
                .write_tx(|tx, now| {
                    let mv = switch_each(tx, DS, None, v.version, now)?;
                    let at = format_time(now);
                    set_status(tx, DS, v.version, VersionStatus::Succeeded, None, &at)?;
                    write_pointer(tx, DS, v.version, &at)?;
                    Ok(mv)
                })
                .unwrap()
        };
        assert_eq!(mv.created, n as u64, "set-based: {set_based}");
        // Both write events in key order.
        let ids: Vec<String> = drain(&store).await.into_iter().map(|e| e.1).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids.len(), n);
        assert_eq!(ids, sorted, "set-based: {set_based}");
        snapshots.push(snapshot(&store));
    }
    assert_eq!(snapshots[0], snapshots[1]);
}

/// Every version of every id as the store reads it (read, and history, which reads each
/// version's text the way vread and search do).
async fn every_version(
    store: &SqliteStore,
    ids: &[&str],
) -> Vec<Option<crate::store::StoredVersion>> {
    let mut out = Vec::new();
    for id in ids {
        out.push(store.read(&pref(id)).await.unwrap());
        for v in store.history(&pref(id)).await.unwrap() {
            let again = store.vread(&pref(id), &v.version_id).await.unwrap();
            assert_eq!(again.as_ref(), Some(&v), "vread equals history");
            out.push(Some(v));
        }
    }
    out
}

/// History rows that name a staged row instead of holding their text.
fn pointing(store: &SqliteStore) -> i64 {
    store
        .lock()
        .unwrap()
        .query_row(
            "SELECT count(*) FROM history
             WHERE dataset IS NOT NULL AND content IS NULL AND lineage = 'null'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Writes the text the store wrote before schema 9 (`stored_text` of the staged content)
/// into every history row that names a staged row.
fn copy_texts_back(store: &SqliteStore) {
    let conn = store.lock().unwrap();
    #[allow(clippy::type_complexity)]
    let rows: Vec<(String, String, i64, String, String, String)> = conn
        .prepare(
            "SELECT h.resource_type, h.id, h.version_id, h.last_updated, s.content, s.lineage
             FROM history h JOIN dataset_staged s
               ON s.dataset = h.dataset AND s.version = h.dataset_version
              AND s.resource_type = h.resource_type AND s.id = h.id",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!rows.is_empty());
    for (rtype, id, version, at, content, lineage) in rows {
        let target = ResourceRef {
            resource_type: rtype.clone(),
            id: id.clone(),
        };
        let value: Value = serde_json::from_str(&content).unwrap();
        let text = crate::store::stored_text(
            &target,
            value.as_object().unwrap(),
            &version.to_string(),
            &at,
        )
        .unwrap();
        conn.execute(
            "UPDATE history SET content = ?4, lineage = ?5, dataset = NULL, dataset_version = NULL
             WHERE resource_type = ?1 AND id = ?2 AND version_id = ?3",
            params![rtype, id, version, text, lineage],
        )
        .unwrap();
    }
}

#[tokio::test]
async fn versions_published_from_staged_rows_read_as_the_copied_text_did() {
    let (store, clock) = manual_clock();
    let ids = ["a", "b", "c", "d", "s"];
    // A streamed resource the first load changes (the per-resource path of a first move).
    store
        .apply(&[ResourceChange {
            target: pref("s"),
            op: ResourceOp::Upsert {
                resource: staged("s", "Streamed").resource,
            },
            lineage: staged("s", "Streamed").lineage,
        }])
        .await
        .unwrap();
    clock.store(1_000, Ordering::SeqCst);
    let v1 = store.begin(DS, "test", LEASE).await.unwrap().version;
    store
        .stage(
            DS,
            v1,
            &[
                staged("a", "Alpha"),
                staged("b", "Beta"),
                rich("c", "Gamma"),
                staged("s", "Loaded"),
            ],
        )
        .await
        .unwrap();
    store.finalize(DS, v1).await.unwrap();
    clock.store(2_000, Ordering::SeqCst);
    load(&store, &[("a", "Alpha2"), ("b", "Beta"), ("d", "Delta")]).await;
    clock.store(3_000, Ordering::SeqCst);
    store.rollback(DS, Some(v1)).await.unwrap();
    // a: 3 versions, b: 1, c: 3 (created, deleted, re-created), d: 2, s: 4.
    assert!(pointing(&store) >= 7, "{}", pointing(&store));
    let c = store.read(&pref("c")).await.unwrap().unwrap();
    let meta = &c.resource.as_ref().unwrap()["meta"];
    assert_eq!(meta["versionId"], "3");
    assert_eq!(meta["profile"][0], "http://example.org/p");
    assert_eq!(meta["lastUpdated"], "2024-05-01T00:00:03.000Z");
    let named = every_version(&store, &ids).await;
    copy_texts_back(&store);
    assert_eq!(pointing(&store), 0);
    assert_eq!(every_version(&store, &ids).await, named);
}

#[tokio::test]
async fn gc_writes_the_text_back_into_the_versions_that_name_a_purged_row() {
    let (store, clock) = manual_clock();
    let ids = ["a", "b", "c"];
    load(&store, &[("a", "One"), ("b", "Same")]).await;
    clock.store(1_000, Ordering::SeqCst);
    load(&store, &[("a", "Two"), ("b", "Same"), ("c", "New")]).await;
    clock.store(2_000, Ordering::SeqCst);
    load(&store, &[("a", "Three"), ("b", "Same"), ("c", "New")]).await;
    let before = every_version(&store, &ids).await;
    let named = pointing(&store);
    // keep 1: versions 1 and 2 go; b's current version (from 1) and c's (from 2) stay readable.
    let report = store.gc(DS, 1).await.unwrap();
    assert_eq!(report.purged_versions, vec![2, 1]);
    assert_eq!(
        pointing(&store),
        named - 4,
        "a1, a2, b1 and c1 got their text back"
    );
    assert_eq!(every_version(&store, &ids).await, before);
    assert_eq!(family(&store, "b").await.as_deref(), Some("Same"));
    let rows: i64 = store
        .lock()
        .unwrap()
        .query_row(
            "SELECT count(*) FROM history h WHERE h.dataset IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM dataset_staged s WHERE s.dataset = h.dataset
                 AND s.version = h.dataset_version AND s.resource_type = h.resource_type
                 AND s.id = h.id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0, "no version names a deleted row");
}

/// `search_index` rows of one partial index in the order they were written (rowid order).
fn index_in_write_order(store: &SqliteStore, dates: bool) -> Vec<Vec<Option<String>>> {
    let conn = store.lock().unwrap();
    let sql = if dates {
        "SELECT resource_type, param, low, high, id FROM search_index
         WHERE low IS NOT NULL ORDER BY rowid"
    } else {
        "SELECT resource_type, param, value, id FROM search_index
         WHERE low IS NULL ORDER BY rowid"
    };
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn a_first_publish_writes_each_index_in_its_key_order() {
    // Several worker blocks, staged out of key order, with families and birth dates whose
    // order differs from the ids' order.
    let n = 2 * PUBLISH_BLOCK + 31;
    let rows: Vec<StagedResource> = (0..n)
        .map(|i| {
            let mut r = rich(&format!("r{i:05}"), &format!("F{}", (i * 7919) % 1000));
            r.resource["birthDate"] = json!(format!("19{:02}-01-01", (i * 31) % 100));
            r
        })
        .rev()
        .collect();
    let (store, _clock) = manual_clock();
    let v = store.begin(DS, "test", LEASE).await.unwrap();
    store.stage(DS, v.version, &rows).await.unwrap();
    let mv = store.finalize(DS, v.version).await.unwrap();
    assert_eq!(mv.created, n as u64);
    for dates in [true, false] {
        let written = index_in_write_order(&store, dates);
        let mut sorted = written.clone();
        // SQLite compares text by bytes, as `String` does; `NULL` first, as `None`.
        sorted.sort();
        assert!(written.len() >= n, "dates: {dates}: {}", written.len());
        assert_eq!(written, sorted, "dates: {dates}");
    }
    // Nothing is left collected on the connection, nor incoming; the staged rows are stored
    // in key order.
    let count = |sql: &str| -> i64 {
        store
            .lock()
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count("SELECT count(*) FROM temp.publish_index"), 0);
    assert_eq!(count("SELECT count(*) FROM dataset_incoming"), 0);
    let staged_ids: Vec<String> = {
        let conn = store.lock().unwrap();
        let mut stmt = conn
            .prepare("SELECT id FROM dataset_staged ORDER BY rowid")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut sorted_ids = staged_ids.clone();
    sorted_ids.sort();
    assert_eq!(staged_ids.len(), n);
    assert_eq!(staged_ids, sorted_ids);
    // Searches find the sorted rows.
    use crate::store::search::{Criterion, Filter, SearchQuery, SearchStore, StringMode};
    let page = store
        .search(&SearchQuery {
            resource_type: "Patient".into(),
            filters: vec![Filter {
                param: "family".into(),
                any_of: vec![Criterion::String {
                    value: "F0".into(),
                    mode: StringMode::Exact,
                }],
            }],
            count: 50,
            cursor: None,
        })
        .await
        .unwrap();
    let expected: Vec<String> = (0..n)
        .filter(|i| (i * 7919) % 1000 == 0)
        .map(|i| format!("r{i:05}"))
        .collect();
    assert!(!expected.is_empty());
    let found: Vec<String> = page.matches.iter().map(|m| m.target.id.clone()).collect();
    assert_eq!(found, expected);
}

#[tokio::test]
async fn a_first_publish_that_fails_midway_leaves_no_index_rows_behind() {
    // The corrupt row is in the second worker block: the first block's rows were collected
    // when the publish fails.
    let n = 2 * PUBLISH_BLOCK + 5;
    let rows: Vec<StagedResource> = (0..n)
        .map(|i| rich(&format!("r{i:05}"), &format!("F{i}")))
        .collect();
    let (store, _clock) = manual_clock();
    let v = store.begin(DS, "test", LEASE).await.unwrap();
    store.stage(DS, v.version, &rows).await.unwrap();
    let bad = format!("r{:05}", PUBLISH_BLOCK + 3);
    store
        .lock()
        .unwrap()
        .execute(
            "UPDATE dataset_incoming SET content = '{not json' WHERE id = ?1",
            [&bad],
        )
        .unwrap();
    let err = store.finalize(DS, v.version).await.unwrap_err();
    assert!(err.to_string().contains(&bad), "{err}");
    store.fail(DS, v.version, "corrupt").await.unwrap();
    assert!(index_in_write_order(&store, false).is_empty());
    assert_eq!(store.current(DS).await.unwrap(), None);
    // A retry with fewer resources publishes exactly its own rows.
    let v2 = store.begin(DS, "test", LEASE).await.unwrap();
    store.stage(DS, v2.version, &rows[..3]).await.unwrap();
    store.finalize(DS, v2.version).await.unwrap();
    let ids: std::collections::BTreeSet<String> = index_in_write_order(&store, false)
        .into_iter()
        .map(|r| r[3].clone().unwrap())
        .collect();
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        vec!["r00000", "r00001", "r00002"]
    );
}
