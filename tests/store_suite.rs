//! One suite of FHIR store cases, run against every adapter: the SQLite store (a file, so a
//! second handle is a second connection, as a second process would have), the DynamoDB store
//! (against moto, one server per test, the table created as `infra/template.yaml` declares it,
//! and a second handle is a second SDK client, as a second Lambda instance would have), and the
//! REST store (against the project's own FHIR API over SQLite, see [`rest`]).
//!
//! The semantics checked are those of `src/store/mod.rs`. Adapter-specific behaviour (SQLite's
//! outbox and migrations, DynamoDB's stream and item sizes) is tested next to each adapter and at
//! the end of this file.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod lambda_stream;
    pub mod moto;
    pub mod partners;
    pub mod serial_moto;
}

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::moto::Moto;
use common::serial_moto::SerialMoto;
use fhir_unify::model::{
    Lineage, PublishAction, PublishOutcome, RecordKey, ResourceChange, ResourceOp, ResourceRef,
    Sequence,
};
use fhir_unify::store::dynamodb::DynamoStore;
use fhir_unify::store::rest::{RestAuth, RestOptions, RestStore};
use fhir_unify::store::sqlite::SqliteStore;
use fhir_unify::store::{FhirStore, StoreError};
use serde_json::{Value, json};

/// A store under test, a second handle on the same data, and what keeps them alive.
struct Harness {
    /// Resources in the "many in one apply" case.
    many: usize,
    store: Arc<dyn FhirStore>,
    second: Arc<dyn FhirStore>,
    _guard: Box<dyn std::any::Any + Send>,
}

fn sqlite() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    Harness {
        many: 500,
        store: Arc::new(SqliteStore::open(&path).unwrap()),
        second: Arc::new(SqliteStore::open(&path).unwrap()),
        _guard: Box::new(dir),
    }
}

const TABLE: &str = "fhir-store";

async fn dynamodb() -> Harness {
    let moto = SerialMoto::start();
    let config = common::aws::sdk(&moto.endpoint).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), TABLE);
    store.create_table().await.unwrap();
    let second = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), TABLE);
    Harness {
        // 42 resources: 294 items (current, history, type history and 4 search index items
        // each), three transactions. moto copies the whole table for each item of a
        // transaction, so hundreds take minutes there; the planning of 500 into transactions is
        // tested in src/store/dynamodb/tests.rs.
        many: 42,
        store: Arc::new(store),
        second: Arc::new(second),
        _guard: Box::new(moto),
    }
}

/// The REST store against the project's own FHIR API: `fhir-unify serve`'s server (gateway
/// with its write interactions on, authorizer) started in-process on a free port over a SQLite
/// store, and a partner token allowed to read and write `Patient` and `Basic` (the REST
/// store's state resources). Two store handles are two HTTP clients. Bundles are limited to 20
/// entries, so the larger cases are split into several transactions; "many" is 150 resources
/// (15 transactions and ~1,200 HTTP requests through the authorizer), as for DynamoDB, to keep
/// a debug-build run short — the planning itself is unit-tested in `src/store/rest/tests.rs`.
async fn rest() -> Harness {
    rest_with_scope("system/*.cruds").await
}

async fn rest_with_scope(scope: &str) -> Harness {
    let (base, token, guard) = common::partners::fhir_api(&["Patient", "Basic"], scope).await;
    let options = RestOptions {
        max_entries: 20,
        backoff: std::time::Duration::from_millis(10),
        ..RestOptions::default()
    };
    let store = RestStore::new(&base, RestAuth::Bearer(token.clone()), options.clone()).unwrap();
    let second = RestStore::new(&base, RestAuth::Bearer(token), options).unwrap();
    Harness {
        many: 150,
        store: Arc::new(store),
        second: Arc::new(second),
        _guard: guard,
    }
}

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

async fn one(store: &dyn FhirStore, change: ResourceChange) -> PublishOutcome {
    let mut out = store.apply(&[change]).await.unwrap();
    assert_eq!(out.len(), 1);
    out.remove(0)
}

async fn family(store: &dyn FhirStore, id: &str) -> Option<String> {
    let current = store.read(&target(id)).await.unwrap()?;
    current
        .resource
        .map(|r| r["name"][0]["family"].as_str().unwrap().to_owned())
}

async fn versions(store: &dyn FhirStore, id: &str) -> Vec<String> {
    store
        .history(&target(id))
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.version_id)
        .collect()
}

fn descending(n: usize) -> Vec<String> {
    (1..=n).rev().map(|v| v.to_string()).collect()
}

/// The cases, each over a fresh store.
mod cases {
    use super::*;

    pub async fn create_then_update(h: Harness) {
        let s = h.store.as_ref();
        let created = one(s, upsert("p1", patient("p1", "A"), "1")).await;
        assert_eq!(created.action, PublishAction::Created);
        assert_eq!(created.version_id.as_deref(), Some("1"));
        let read = s.read(&target("p1")).await.unwrap().unwrap();
        assert_eq!(read.version_id, "1");
        assert!(!read.deleted);
        assert_eq!(Some(read.last_updated), created.last_updated);
        let resource = read.resource.unwrap();
        assert_eq!(resource["meta"]["versionId"], "1");
        let stamped: DateTime<Utc> = resource["meta"]["lastUpdated"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(Some(stamped), created.last_updated);
        assert_eq!(read.lineage.unwrap(), lineage("app", "1"));

        let updated = one(s, upsert("p1", patient("p1", "B"), "2")).await;
        assert_eq!(updated.action, PublishAction::Updated);
        assert_eq!(updated.version_id.as_deref(), Some("2"));
        assert!(updated.last_updated >= created.last_updated);
        assert_eq!(family(s, "p1").await.as_deref(), Some("B"));
    }

    pub async fn unchanged_content_makes_no_version(h: Harness) {
        let s = h.store.as_ref();
        let first = one(s, upsert("p1", patient("p1", "A"), "1")).await;
        let same = one(s, upsert("p1", patient("p1", "A"), "2")).await;
        assert_eq!(same.action, PublishAction::Unchanged);
        assert_eq!(same.version_id.as_deref(), Some("1"));
        assert_eq!(same.last_updated, first.last_updated);
        // Other meta times and no id: the same content.
        let mut echoed = patient("p1", "A");
        echoed["meta"] = json!({"versionId": "7", "lastUpdated": "1999-01-01T00:00:00Z"});
        echoed.as_object_mut().unwrap().remove("id");
        let out = one(s, upsert("p1", echoed, "3")).await;
        assert_eq!(out.action, PublishAction::Unchanged);
        // A meta element that is content is a change.
        let mut profiled = patient("p1", "A");
        profiled["meta"] = json!({"profile": ["http://example.org/p"]});
        let out = one(s, upsert("p1", profiled, "4")).await;
        assert_eq!(out.action, PublishAction::Updated);
        assert_eq!(versions(s, "p1").await, descending(2));
        // The unchanged calls moved the mark: sequence 2 with other content is now stale.
        let out = one(s, upsert("p1", patient("p1", "Z"), "2")).await;
        assert_eq!(out.action, PublishAction::Stale);
    }

    pub async fn stale_sequences_are_skipped(h: Harness) {
        let s = h.store.as_ref();
        let newer = "1405400000000002063282833";
        let older = "1405400000000002063282832";
        one(s, upsert("p1", patient("p1", "A"), newer)).await;
        for change in [
            upsert("p1", patient("p1", "B"), older),
            // Shorter is smaller even though "999" > "1405…" as text.
            upsert("p1", patient("p1", "C"), "999"),
            delete("p1", older),
        ] {
            let out = one(s, change).await;
            assert_eq!(out.action, PublishAction::Stale);
            assert_eq!(out.version_id.as_deref(), Some("1"));
        }
        assert_eq!(family(s, "p1").await.as_deref(), Some("A"));
        assert_eq!(versions(s, "p1").await, descending(1));
        let out = one(
            s,
            upsert("p1", patient("p1", "D"), "10000000000000000000000000"),
        )
        .await;
        assert_eq!(out.action, PublishAction::Updated);
        // Sequences of another source are not compared with this one's.
        let other = ResourceChange {
            lineage: lineage("eligibility", "3"),
            ..upsert("p1", patient("p1", "E"), "3")
        };
        assert_eq!(one(s, other).await.action, PublishAction::Updated);
    }

    pub async fn equal_sequence_is_applied(h: Harness) {
        let s = h.store.as_ref();
        one(s, upsert("p1", patient("p1", "A"), "5")).await;
        let out = one(s, upsert("p1", patient("p1", "B"), "5")).await;
        assert_eq!(out.action, PublishAction::Updated);
        assert_eq!(out.version_id.as_deref(), Some("2"));
        let replay = one(s, upsert("p1", patient("p1", "B"), "5")).await;
        assert_eq!(replay.action, PublishAction::Unchanged);
        assert_eq!(replay.version_id.as_deref(), Some("2"));
    }

    pub async fn delete_is_a_version(h: Harness) {
        let s = h.store.as_ref();
        one(s, upsert("p1", patient("p1", "A"), "1")).await;
        let out = one(s, delete("p1", "2")).await;
        assert_eq!(out.action, PublishAction::Deleted);
        assert_eq!(out.version_id.as_deref(), Some("2"));
        let read = s.read(&target("p1")).await.unwrap().unwrap();
        assert!(read.deleted && read.resource.is_none());
        assert_eq!(read.version_id, "2");
        let history = s.history(&target("p1")).await.unwrap();
        assert_eq!(history.len(), 2);
        assert!(history[0].deleted && !history[1].deleted);
        let again = one(s, delete("p1", "3")).await;
        assert_eq!(again.action, PublishAction::Unchanged);
        assert_eq!(again.version_id.as_deref(), Some("2"));
    }

    pub async fn delete_of_absent_then_older_upsert(h: Harness) {
        let s = h.store.as_ref();
        let out = one(s, delete("p1", "20")).await;
        assert_eq!(out.action, PublishAction::Unchanged);
        assert_eq!((out.version_id, out.last_updated), (None, None));
        assert!(s.read(&target("p1")).await.unwrap().is_none());
        // The delete's sequence is remembered although it made no version.
        let out = one(s, upsert("p1", patient("p1", "A"), "19")).await;
        assert_eq!(out.action, PublishAction::Stale);
        assert_eq!(out.version_id, None);
        assert!(s.read(&target("p1")).await.unwrap().is_none());
        assert!(s.history(&target("p1")).await.unwrap().is_empty());
        let out = one(s, upsert("p1", patient("p1", "A"), "21")).await;
        assert_eq!(out.action, PublishAction::Created);
        assert_eq!(out.version_id.as_deref(), Some("1"));
    }

    pub async fn recreate_after_delete(h: Harness) {
        let s = h.store.as_ref();
        one(s, upsert("p1", patient("p1", "A"), "1")).await;
        one(s, upsert("p1", patient("p1", "B"), "2")).await;
        one(s, delete("p1", "3")).await;
        // The same content as before the delete: still a re-creation.
        let out = one(s, upsert("p1", patient("p1", "B"), "4")).await;
        assert_eq!(out.action, PublishAction::Created);
        assert_eq!(out.version_id.as_deref(), Some("4"));
        assert_eq!(family(s, "p1").await.as_deref(), Some("B"));
    }

    pub async fn history_is_newest_first_and_vread_finds_each(h: Harness) {
        let s = h.store.as_ref();
        one(s, upsert("p1", patient("p1", "A"), "1")).await;
        one(s, upsert("p1", patient("p1", "B"), "2")).await;
        one(s, delete("p1", "3")).await;
        one(s, upsert("p1", patient("p1", "C"), "4")).await;
        let t = target("p1");
        let history = s.history(&t).await.unwrap();
        let ids: Vec<&str> = history.iter().map(|v| v.version_id.as_str()).collect();
        assert_eq!(ids, ["4", "3", "2", "1"]);
        assert!(
            history
                .windows(2)
                .all(|w| w[0].last_updated >= w[1].last_updated)
        );
        for v in &history {
            let read = s.vread(&t, &v.version_id).await.unwrap().unwrap();
            assert_eq!(&read, v);
            let seq = read.lineage.as_ref().unwrap().sequence.as_str().to_owned();
            assert_eq!(seq, v.version_id);
        }
        assert_eq!(
            history[1].resource, None,
            "version 3 is the delete, without content"
        );
        assert_eq!(
            history[3].resource.as_ref().unwrap()["name"][0]["family"],
            "A"
        );
        for missing in [
            "5",
            "0",
            "01",
            "-1",
            "+1",
            "",
            "x",
            "99999999999999999999999",
        ] {
            assert!(s.vread(&t, missing).await.unwrap().is_none(), "{missing:?}");
        }
    }

    pub async fn unknown_and_malformed_resources(h: Harness) {
        let s = h.store.as_ref();
        let unknown = target("nobody");
        assert!(s.read(&unknown).await.unwrap().is_none());
        assert!(s.vread(&unknown, "1").await.unwrap().is_none());
        assert!(s.history(&unknown).await.unwrap().is_empty());
        for id in ["", "a/b", "a b", "é", "a_b", &"a".repeat(65)] {
            assert!(s.read(&target(id)).await.unwrap().is_none());
            let err = s.apply(&[delete(id, "1")]).await.unwrap_err();
            match err {
                StoreError::Invalid { target, reason } => {
                    assert_eq!(target, format!("Patient/{id}"));
                    assert!(reason.contains("FHIR id"), "{reason}");
                }
                other => panic!("{id:?}: {other}"),
            }
        }
        let err = s
            .apply(&[upsert("p1", json!({"resourceType": "Observation"}), "1")])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid { target, .. } if target == "Patient/p1"),
            "{err}"
        );
        assert!(!err.is_retryable());
    }

    pub async fn several_resources_in_one_apply(h: Harness) {
        let s = h.store.as_ref();
        let out = s
            .apply(&[
                upsert("p1", patient("p1", "A"), "1"),
                upsert("p2", patient("p2", "B"), "1"),
                upsert("p1", patient("p1", "C"), "1"),
                delete("p3", "1"),
            ])
            .await
            .unwrap();
        let actions: Vec<_> = out
            .iter()
            .map(|o| (o.target.id.as_str(), o.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("p1", PublishAction::Created),
                ("p2", PublishAction::Created),
                ("p1", PublishAction::Updated),
                ("p3", PublishAction::Unchanged),
            ]
        );
        assert_eq!(out[2].version_id.as_deref(), Some("2"));
        assert_eq!(family(s, "p1").await.as_deref(), Some("C"));
        assert_eq!(family(s, "p2").await.as_deref(), Some("B"));
        assert_eq!(versions(s, "p1").await, descending(2));
    }

    pub async fn a_bad_change_fails_the_call_and_writes_nothing(h: Harness) {
        let s = h.store.as_ref();
        let good = upsert("p1", patient("p1", "A"), "1");
        let bad = upsert("p2", json!({"resourceType": "Patient", "id": "other"}), "1");
        let err = s.apply(&[good.clone(), bad]).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid { target, .. } if target == "Patient/p2"),
            "{err}"
        );
        assert!(s.read(&target("p1")).await.unwrap().is_none());
        // Not even the sequence mark remains.
        let out = s
            .apply(&[good, upsert("p2", patient("p2", "B"), "1")])
            .await
            .unwrap();
        assert!(out.iter().all(|o| o.action == PublishAction::Created));
    }

    pub async fn many_resources_in_one_apply(h: Harness) {
        let s = h.store.as_ref();
        let n = h.many;
        let ids: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        let changes: Vec<_> = ids
            .iter()
            .map(|id| upsert(id, patient(id, &format!("F{id}")), "1"))
            .collect();
        let out = s.apply(&changes).await.unwrap();
        assert_eq!(out.len(), n);
        for (o, id) in out.iter().zip(&ids) {
            assert_eq!(
                (o.target.id.as_str(), o.action),
                (id.as_str(), PublishAction::Created)
            );
        }
        for id in &ids {
            assert_eq!(family(s, id).await, Some(format!("F{id}")));
        }
        // Replaying the call changes nothing; updating every other one makes version 2.
        let again = s.apply(&changes).await.unwrap();
        assert!(again.iter().all(|o| o.action == PublishAction::Unchanged));
        let updates: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let name = if i.is_multiple_of(2) {
                    format!("G{id}")
                } else {
                    format!("F{id}")
                };
                upsert(id, patient(id, &name), "2")
            })
            .collect();
        let out = s.apply(&updates).await.unwrap();
        for (i, o) in out.iter().enumerate() {
            let expected = if i.is_multiple_of(2) {
                (PublishAction::Updated, "2")
            } else {
                (PublishAction::Unchanged, "1")
            };
            assert_eq!((o.action, o.version_id.as_deref().unwrap()), expected);
        }
        assert_eq!(versions(s, "p0").await, descending(2));
        assert_eq!(versions(s, "p1").await, descending(1));
    }

    pub async fn many_versions_of_one_resource_in_one_apply(h: Harness) {
        let s = h.store.as_ref();
        let n = 150;
        let changes: Vec<_> = (1..=n)
            .map(|i| upsert("p1", patient("p1", &format!("V{i}")), &i.to_string()))
            .collect();
        let out = s.apply(&changes).await.unwrap();
        for (i, o) in out.iter().enumerate() {
            assert_eq!(o.version_id, Some((i + 1).to_string()));
        }
        assert_eq!(versions(s, "p1").await, descending(n));
        assert_eq!(family(s, "p1").await, Some(format!("V{n}")));
    }

    /// Writers of different sources on one resource: none is stale to another, so every one
    /// makes a version, each version number once, and every writer's mark is kept.
    pub async fn concurrent_writers_lose_no_update(h: Harness) {
        let writers = 8u32;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let store = if w.is_multiple_of(2) {
                h.store.clone()
            } else {
                h.second.clone()
            };
            tasks.push(tokio::spawn(async move {
                let change = ResourceChange {
                    lineage: lineage(&format!("w{w}"), "10"),
                    ..upsert("p1", patient("p1", &format!("W{w}")), "10")
                };
                let mut out = store.apply(&[change]).await.unwrap();
                out.remove(0)
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        let mut numbers: Vec<u32> = outcomes
            .iter()
            .map(|o| o.version_id.as_deref().unwrap().parse().unwrap())
            .collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=writers).collect::<Vec<u32>>());
        let created = outcomes
            .iter()
            .filter(|o| o.action == PublishAction::Created)
            .count();
        assert_eq!(created, 1);
        let s = h.store.as_ref();
        assert_eq!(versions(s, "p1").await, descending(writers as usize));
        // The last version's writer is the current content.
        let last = outcomes
            .iter()
            .position(|o| o.version_id.as_deref() == Some(&writers.to_string()))
            .unwrap();
        assert_eq!(family(s, "p1").await, Some(format!("W{last}")));
        // Every writer's mark survived the others.
        for w in 0..writers {
            let older = ResourceChange {
                lineage: lineage(&format!("w{w}"), "9"),
                ..upsert("p1", patient("p1", "old"), "9")
            };
            assert_eq!(one(s, older).await.action, PublishAction::Stale, "w{w}");
        }
    }

    /// Writers of one source racing with increasing sequences: whatever the order they land
    /// in, the newest sequence's content is what remains.
    pub async fn concurrent_writers_end_at_the_newest_sequence(h: Harness) {
        let writers = 8u32;
        let mut tasks = Vec::new();
        for w in 1..=writers {
            let store = if w.is_multiple_of(2) {
                h.store.clone()
            } else {
                h.second.clone()
            };
            tasks.push(tokio::spawn(async move {
                let change = upsert("p1", patient("p1", &format!("S{w}")), &w.to_string());
                store.apply(&[change]).await.unwrap().remove(0)
            }));
        }
        let mut committed = 0;
        for t in tasks {
            let o = t.await.unwrap();
            assert!(
                matches!(
                    o.action,
                    PublishAction::Created | PublishAction::Updated | PublishAction::Stale
                ),
                "{o:?}"
            );
            if o.action != PublishAction::Stale {
                committed += 1;
            }
        }
        let s = h.store.as_ref();
        assert_eq!(family(s, "p1").await, Some(format!("S{writers}")));
        assert_eq!(versions(s, "p1").await, descending(committed));
    }
}

macro_rules! suite {
    ($($case:ident,)*) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::sqlite()).await;
                }
            )*
        }
        mod dynamodb_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::dynamodb().await).await;
                }
            )*
        }
        mod rest_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::rest().await).await;
                }
            )*
        }
    };
}

suite! {
    create_then_update,
    unchanged_content_makes_no_version,
    stale_sequences_are_skipped,
    equal_sequence_is_applied,
    delete_is_a_version,
    delete_of_absent_then_older_upsert,
    recreate_after_delete,
    history_is_newest_first_and_vread_finds_each,
    unknown_and_malformed_resources,
    several_resources_in_one_apply,
    a_bad_change_fails_the_call_and_writes_nothing,
    many_resources_in_one_apply,
    many_versions_of_one_resource_in_one_apply,
    concurrent_writers_lose_no_update,
    concurrent_writers_end_at_the_newest_sequence,
}

// ---- REST only ----------------------------------------------------------------------------

/// A token that may read but not write: the server's 403 OperationOutcome comes back as a
/// typed error naming the resources and the server's reason, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_store_surfaces_the_servers_refusal() {
    let h = rest_with_scope("system/*.rs").await;
    let err = h
        .store
        .apply(&[upsert("p1", patient("p1", "A"), "1")])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{text}");
    assert!(text.contains("Patient/p1"), "{text}");
    assert!(text.contains("answered 403"), "{text}");
    assert!(text.contains("may not write"), "{text}");
    assert!(h.store.read(&target("p1")).await.unwrap().is_none());
}

// ---- DynamoDB only ------------------------------------------------------------------------

fn to_dynamo(v: &aws_sdk_dynamodbstreams::types::AttributeValue) -> serde_dynamo::AttributeValue {
    use aws_sdk_dynamodbstreams::types::AttributeValue as A;
    use serde_dynamo::AttributeValue as D;
    match v {
        A::S(s) => D::S(s.clone()),
        A::N(n) => D::N(n.clone()),
        A::Bool(b) => D::Bool(*b),
        A::Null(b) => D::Null(*b),
        A::M(m) => D::M(m.iter().map(|(k, v)| (k.clone(), to_dynamo(v))).collect()),
        A::L(l) => D::L(l.iter().map(to_dynamo).collect()),
        other => panic!("unexpected attribute {other:?}"),
    }
}

/// Events follow the store the same way on both adapters: the DynamoDB table's stream, read
/// through the real Streams API and decoded as `emit` would, yields exactly the events the
/// SQLite outbox holds for the same changes (same ids, kinds, versions, times), and none for
/// unchanged or stale changes or mark-only rewrites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_stream_carries_the_sqlite_outbox_events() {
    use fhir_unify::store::Outbox;
    let moto = Moto::start();
    let config = common::aws::sdk(&moto.endpoint).await;
    let fixed: DateTime<Utc> = "2025-03-04T05:06:07.123Z".parse().unwrap();
    let clock: fhir_unify::store::sqlite::Clock = Arc::new(move || fixed);
    let dynamo =
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), TABLE).with_clock(clock.clone());
    dynamo.create_table().await.unwrap();
    let sqlite = SqliteStore::open_in_memory().unwrap().with_clock(clock);

    let batches = vec![
        vec![upsert("p1", patient("p1", "A"), "1"), delete("p9", "1")],
        vec![upsert("p1", patient("p1", "A"), "2")],
        vec![upsert("p1", patient("p1", "B"), "1")],
        vec![
            upsert("p1", patient("p1", "B"), "3"),
            upsert("p2", patient("p2", "X"), "1"),
        ],
        vec![delete("p1", "4")],
        vec![upsert("p1", patient("p1", "B"), "5")],
    ];
    for batch in &batches {
        let a = dynamo.apply(batch).await.unwrap();
        let b = sqlite.apply(batch).await.unwrap();
        assert_eq!(a, b);
    }
    let expected: Vec<_> = sqlite
        .pending(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(expected.len(), 5);

    let arn = common::lambda_stream::stream_arn(&config, TABLE).await;
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    let described = streams
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap();
    let mut events = Vec::new();
    let mut records = 0;
    for shard in described.stream_description().unwrap().shards() {
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(shard.shard_id().unwrap())
            .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator
            .unwrap();
        loop {
            let page = streams
                .get_records()
                .shard_iterator(&iterator)
                .send()
                .await
                .unwrap();
            for record in page.records() {
                records += 1;
                let Some(image) = record.dynamodb().unwrap().new_image() else {
                    // Only the search index items a new version replaces are removed: a
                    // REMOVE has no new image and carries no event.
                    let keys = record.dynamodb().unwrap().keys().unwrap();
                    assert_eq!(record.event_name().unwrap().as_str(), "REMOVE", "{keys:?}");
                    let aws_sdk_dynamodbstreams::types::AttributeValue::S(pk) = &keys["pk"] else {
                        panic!("{keys:?}")
                    };
                    assert!(pk.starts_with("ix#"), "{pk}");
                    continue;
                };
                let item: serde_dynamo::Item = image
                    .iter()
                    .map(|(k, v)| (k.clone(), to_dynamo(v)))
                    .collect::<HashMap<_, _>>()
                    .into();
                if let Some(event) =
                    fhir_unify::store::dynamodb::change_event_from_stream_image(&item).unwrap()
                {
                    events.push(event);
                }
            }
            match page.next_shard_iterator {
                Some(next) if !page.records().is_empty() => iterator = next,
                _ => break,
            }
        }
    }
    // Current items were written too (more records than events), but carry no event.
    assert!(records > events.len(), "{records} records");
    events.sort_by(|a, b| {
        (
            &a.detail.id,
            a.detail.version_id.len(),
            &a.detail.version_id,
        )
            .cmp(&(
                &b.detail.id,
                b.detail.version_id.len(),
                &b.detail.version_id,
            ))
    });
    let mut expected = expected;
    expected.sort_by(|a, b| {
        (
            &a.detail.id,
            a.detail.version_id.len(),
            &a.detail.version_id,
        )
            .cmp(&(
                &b.detail.id,
                b.detail.version_id.len(),
                &b.detail.version_id,
            ))
    });
    assert_eq!(events, expected);
}
