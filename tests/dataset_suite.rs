//! One suite of dataset-version cases (`src/store/dataset.rs`), run against both adapters: the
//! SQLite store (versions, staged rows and pointer in one file) and AWS (`DynamoDatasets`:
//! the DynamoDB versions table, the SSM pointer and the DynamoDB FHIR store, against moto run
//! on one thread as in `tests/store_suite.rs`). Events are read where each adapter puts them:
//! the SQLite outbox, and the DynamoDB table stream decoded as `emit` decodes it.
//!
//! At the end, AWS-only cases: a finalize stopped by a crash between the status and the
//! pointer is finished by a retry (or by the next `begin`), and a retried move emits nothing
//! twice.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod lambda_stream;
    pub mod moto;
    pub mod serial_moto;
}

use common::serial_moto::SerialMoto;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fhir_unify::model::{ChangeKind, Lineage, RecordKey, ResourceRef, Sequence};
use fhir_unify::store::dataset::{
    DatasetError, DatasetStore, LoadCounts, PointerMove, StagedResource, VersionStatus,
};
use fhir_unify::store::dynamodb::DynamoStore;
use fhir_unify::store::dynamodb::dataset::DynamoDatasets;
use fhir_unify::store::sqlite::{Clock, SqliteStore};
use fhir_unify::store::{FhirStore, Outbox, StoreError};
use serde_json::json;
use tokio::sync::Mutex;

const DS: &str = "clinic/patients";
const LEASE: Duration = Duration::from_secs(60);
const STORE_TABLE: &str = "fhir-store";
const VERSIONS_TABLE: &str = "fhir-versions";

type Event = (ChangeKind, String, String);

/// Where a harness reads the change events from.
enum Events {
    Sqlite(Arc<SqliteStore>),
    Stream {
        client: aws_sdk_dynamodbstreams::Client,
        arn: String,
        /// Where each shard was read up to.
        iterators: Mutex<HashMap<String, String>>,
    },
}

struct Harness {
    datasets: Arc<dyn DatasetStore>,
    store: Arc<dyn FhirStore>,
    /// Milliseconds after the fixed start the clock shows.
    clock: Arc<AtomicI64>,
    events: Events,
    dynamo: Option<(DynamoDatasets, aws_config::SdkConfig)>,
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

fn manual_clock() -> (Clock, Arc<AtomicI64>) {
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let start: DateTime<Utc> = "2024-05-01T00:00:00Z".parse().unwrap();
    let clock: Clock =
        Arc::new(move || start + chrono::Duration::milliseconds(o.load(Ordering::SeqCst)));
    (clock, offset)
}

async fn sqlite() -> Harness {
    let (clock, offset) = manual_clock();
    let store = Arc::new(SqliteStore::open_in_memory().unwrap().with_clock(clock));
    Harness {
        datasets: store.clone(),
        store: store.clone(),
        clock: offset,
        events: Events::Sqlite(store),
        dynamo: None,
        _guard: Box::new(()),
    }
}

// moto on one thread (`common::serial_moto`: its multi-threaded server undoes concurrent
// transactions); DynamoDB, DynamoDB Streams and SSM all answer on it.
async fn dynamodb() -> Harness {
    let moto = SerialMoto::start();
    let config = common::aws::sdk(&moto.endpoint).await;
    let (clock, offset) = manual_clock();
    let client = aws_sdk_dynamodb::Client::new(&config);
    let store = DynamoStore::new(client.clone(), STORE_TABLE);
    store.create_table().await.unwrap();
    let datasets = DynamoDatasets::new(
        client.clone(),
        aws_sdk_ssm::Client::new(&config),
        VERSIONS_TABLE,
        store,
    )
    .with_clock(clock)
    // Nothing here caches the moves in flight: no reader to wait for.
    .with_settle(Duration::ZERO);
    datasets.create_table().await.unwrap();
    let arn = common::lambda_stream::stream_arn(&config, STORE_TABLE).await;
    Harness {
        datasets: Arc::new(datasets.clone()),
        store: Arc::new(datasets.store().clone()),
        clock: offset,
        events: Events::Stream {
            client: aws_sdk_dynamodbstreams::Client::new(&config),
            arn,
            iterators: Mutex::new(HashMap::new()),
        },
        dynamo: Some((datasets, config)),
        _guard: Box::new(moto),
    }
}

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

impl Harness {
    /// The events written since the last drain, sorted (the adapters apply a difference in
    /// different orders: SQLite by key, DynamoDB by shard).
    async fn drain(&self) -> Vec<Event> {
        let mut out: Vec<Event> = match &self.events {
            Events::Sqlite(store) => {
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
            Events::Stream {
                client,
                arn,
                iterators,
            } => {
                let mut iterators = iterators.lock().await;
                let described = client
                    .describe_stream()
                    .stream_arn(arn)
                    .send()
                    .await
                    .unwrap();
                let mut events = Vec::new();
                for shard in described.stream_description().unwrap().shards() {
                    let id = shard.shard_id().unwrap().to_owned();
                    let mut iterator = match iterators.get(&id) {
                        Some(it) => it.clone(),
                        None => client
                            .get_shard_iterator()
                            .stream_arn(arn)
                            .shard_id(&id)
                            .shard_iterator_type(
                                aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon,
                            )
                            .send()
                            .await
                            .unwrap()
                            .shard_iterator
                            .unwrap(),
                    };
                    loop {
                        let page = client
                            .get_records()
                            .shard_iterator(&iterator)
                            .send()
                            .await
                            .unwrap();
                        for record in page.records() {
                            // REMOVEs (replaced search-index items) carry no new image
                            // and no change event.
                            let Some(image) = record.dynamodb().unwrap().new_image() else {
                                continue;
                            };
                            let item: serde_dynamo::Item = image
                                .iter()
                                .map(|(k, v)| (k.clone(), to_dynamo(v)))
                                .collect::<HashMap<_, _>>()
                                .into();
                            if let Some(e) =
                                fhir_unify::store::dynamodb::change_event_from_stream_image(&item)
                                    .unwrap()
                            {
                                events.push((e.detail_type, e.detail.id, e.detail.version_id));
                            }
                        }
                        let empty = page.records().is_empty();
                        if let Some(next) = page.next_shard_iterator {
                            iterator = next;
                        }
                        if empty {
                            break;
                        }
                    }
                    iterators.insert(id, iterator);
                }
                events
            }
        };
        out.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
        out
    }

    async fn family(&self, id: &str) -> Option<String> {
        let v = self.store.read(&pref(id)).await.unwrap()?;
        v.resource
            .and_then(|r| r["name"][0]["family"].as_str().map(str::to_owned))
    }

    /// Loads one full version (`rows` = (id, family)) and publishes it.
    async fn load(&self, rows: &[(&str, &str)]) -> (u64, PointerMove) {
        let v = self.datasets.begin(DS, "test", LEASE).await.unwrap();
        self.stage_all(v.version, rows).await;
        let mv = self.datasets.finalize(DS, v.version).await.unwrap();
        (v.version, mv)
    }

    async fn stage_all(&self, version: u64, rows: &[(&str, &str)]) {
        let resources: Vec<_> = rows.iter().map(|(id, f)| staged(id, f)).collect();
        self.datasets.stage(DS, version, &resources).await.unwrap();
        self.datasets
            .chunk_done(
                DS,
                version,
                "LOAD00000001.parquet",
                LoadCounts {
                    records_read: rows.len() as u64,
                    resources_written: rows.len() as u64,
                    quarantined: 0,
                },
            )
            .await
            .unwrap();
    }
}

fn staged(id: &str, family: &str) -> StagedResource {
    StagedResource {
        target: pref(id),
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

fn ev(kind: ChangeKind, id: &str, version: &str) -> Event {
    (kind, id.into(), version.into())
}

mod cases {
    use super::*;

    pub async fn load_publishes_the_difference_and_rollback_reverses_it(h: Harness) {
        let (v1, mv) = h.load(&[("a", "Alpha"), ("b", "Beta")]).await;
        assert_eq!((mv.from, mv.to, mv.created), (None, Some(v1), 2));
        assert_eq!(h.datasets.current(DS).await.unwrap(), Some(v1));
        assert_eq!(
            h.drain().await,
            vec![
                ev(ChangeKind::Created, "a", "1"),
                ev(ChangeKind::Created, "b", "1")
            ]
        );

        // v2: a unchanged, b updated, c created.
        let (v2, mv) = h
            .load(&[("a", "Alpha"), ("b", "Bravo"), ("c", "Gamma")])
            .await;
        assert_eq!(
            (mv.created, mv.updated, mv.deleted, mv.unchanged),
            (1, 1, 0, 1)
        );
        assert_eq!(
            h.drain().await,
            vec![
                ev(ChangeKind::Updated, "b", "2"),
                ev(ChangeKind::Created, "c", "1")
            ]
        );

        // v3 drops a: a delete version and event.
        let (v3, mv) = h.load(&[("b", "Bravo"), ("c", "Gamma")]).await;
        assert_eq!((mv.deleted, mv.unchanged), (1, 2));
        assert_eq!(h.drain().await, vec![ev(ChangeKind::Deleted, "a", "2")]);
        assert_eq!(h.family("a").await, None);

        // Rollback to v2 (the newest SUCCEEDED older than v3) brings a back: reverse events.
        let mv = h.datasets.rollback(DS, None).await.unwrap();
        assert_eq!((mv.from, mv.to, mv.created), (Some(v3), Some(v2), 1));
        assert_eq!(h.family("a").await.as_deref(), Some("Alpha"));
        assert_eq!(h.drain().await, vec![ev(ChangeKind::Created, "a", "3")]);

        // And to v1 explicitly: b back to Beta, c deleted.
        let mv = h.datasets.rollback(DS, Some(v1)).await.unwrap();
        assert_eq!((mv.updated, mv.deleted), (1, 1));
        assert_eq!(
            h.drain().await,
            vec![
                ev(ChangeKind::Updated, "b", "3"),
                ev(ChangeKind::Deleted, "c", "2")
            ]
        );
        assert_eq!(h.family("b").await.as_deref(), Some("Beta"));
        assert_eq!(h.family("c").await, None);
        assert_eq!(h.datasets.current(DS).await.unwrap(), Some(v1));

        let versions = h.datasets.versions(DS).await.unwrap();
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
        h.datasets.rollback(DS, Some(v3)).await.unwrap();
        assert!(matches!(
            h.datasets.rollback(DS, Some(v3)).await,
            Err(DatasetError::Invalid { .. })
        ));
        assert!(matches!(
            h.datasets.rollback(DS, Some(99)).await,
            Err(DatasetError::NoSuchVersion { version: 99, .. })
        ));
    }

    pub async fn a_failed_version_changes_nothing_and_a_retry_succeeds(h: Harness) {
        let (v1, _) = h.load(&[("a", "Alpha")]).await;
        h.drain().await;
        let v2 = h.datasets.begin(DS, "test", LEASE).await.unwrap().version;
        h.datasets
            .stage(DS, v2, &[staged("a", "Changed")])
            .await
            .unwrap();
        h.datasets.fail(DS, v2, "chunk LOAD2 failed").await.unwrap();
        // Failing twice is harmless; the first reason stays.
        h.datasets.fail(DS, v2, "again").await.unwrap();
        assert_eq!(h.datasets.current(DS).await.unwrap(), Some(v1));
        assert_eq!(h.family("a").await.as_deref(), Some("Alpha"));
        assert!(h.drain().await.is_empty());
        assert!(matches!(
            h.datasets.stage(DS, v2, &[staged("b", "B")]).await,
            Err(DatasetError::WrongStatus {
                status: VersionStatus::Failed,
                ..
            })
        ));
        assert!(matches!(
            h.datasets.finalize(DS, v2).await,
            Err(DatasetError::WrongStatus { .. })
        ));
        assert!(matches!(
            h.datasets.finalize(DS, 42).await,
            Err(DatasetError::NoSuchVersion { version: 42, .. })
        ));
        let (v3, mv) = h.load(&[("a", "Changed")]).await;
        assert_eq!((v3, mv.updated), (3, 1));
        let v = h.datasets.versions(DS).await.unwrap();
        assert_eq!(v[1].status, VersionStatus::Failed);
        assert_eq!(v[1].error.as_deref(), Some("chunk LOAD2 failed"));
        assert_eq!(h.drain().await, vec![ev(ChangeKind::Updated, "a", "2")]);
        // A finalize retried after it completed is harmless and emits nothing.
        let again = h.datasets.finalize(DS, v3).await.unwrap();
        assert_eq!((again.created, again.updated, again.deleted), (0, 0, 0));
        assert!(h.drain().await.is_empty());
    }

    pub async fn a_dead_load_is_detected_and_a_live_one_blocks(h: Harness) {
        let v1 = h.datasets.begin(DS, "pid-1", LEASE).await.unwrap().version;
        h.datasets.stage(DS, v1, &[staged("a", "A")]).await.unwrap();
        // Fresh heartbeat: a second load must wait.
        h.clock.store(30_000, Ordering::SeqCst);
        assert!(matches!(
            h.datasets.begin(DS, "pid-2", LEASE).await,
            Err(DatasetError::Busy { version, .. }) if version == v1
        ));
        h.datasets.heartbeat(DS, v1).await.unwrap();
        // 61 s after the last heartbeat (at 30 s) the owner is presumed dead.
        h.clock.store(91_000, Ordering::SeqCst);
        let v2 = h.datasets.begin(DS, "pid-2", LEASE).await.unwrap().version;
        assert_eq!(v2, 2);
        let versions = h.datasets.versions(DS).await.unwrap();
        assert_eq!(versions[1].status, VersionStatus::Failed);
        assert!(
            versions[1]
                .error
                .as_deref()
                .unwrap()
                .contains("no heartbeat")
        );
        assert_eq!(h.datasets.current(DS).await.unwrap(), None);
        assert_eq!(h.store.read(&pref("a")).await.unwrap(), None);
        assert!(h.datasets.fail_dead(DS, LEASE).await.unwrap().is_empty());
        // The dead version takes no heartbeat any more.
        assert!(matches!(
            h.datasets.heartbeat(DS, v1).await,
            Err(DatasetError::WrongStatus { .. })
        ));
    }

    pub async fn gc_keeps_the_newest_and_the_current(h: Harness) {
        for f in ["One", "Two", "Three", "Four"] {
            h.load(&[("a", f), ("b", f)]).await;
        }
        let failed = h.datasets.begin(DS, "t", LEASE).await.unwrap().version;
        h.datasets
            .stage(DS, failed, &[staged("x", "X")])
            .await
            .unwrap();
        h.datasets.fail(DS, failed, "boom").await.unwrap();
        h.datasets.rollback(DS, Some(1)).await.unwrap();
        // keep 2: versions 4 and 3 (newest), 1 (current); 2 and the FAILED 5 go.
        let report = h.datasets.gc(DS, 2).await.unwrap();
        assert_eq!(report.purged_versions, vec![5, 2]);
        assert_eq!(report.rows_deleted, 3);
        assert!(matches!(
            h.datasets.rollback(DS, Some(2)).await,
            Err(DatasetError::Invalid { .. })
        ));
        // keep 0 never removes the current version.
        h.datasets.gc(DS, 0).await.unwrap();
        let v = h.datasets.versions(DS).await.unwrap();
        assert!(v.iter().all(|v| v.purged != v.current));
        assert_eq!(h.family("a").await.as_deref(), Some("One"));
    }

    pub async fn bad_names_and_resources_are_refused(h: Harness) {
        assert!(matches!(
            h.datasets.begin("/bad", "t", LEASE).await,
            Err(DatasetError::Invalid { .. })
        ));
        let v = h.datasets.begin(DS, "t", LEASE).await.unwrap().version;
        let mut bad = staged("a", "A");
        bad.resource = json!({"resourceType": "Observation", "id": "a"});
        assert!(matches!(
            h.datasets.stage(DS, v, &[bad]).await,
            Err(DatasetError::Store(StoreError::Invalid { .. }))
        ));
        let mut bad_id = staged("a", "A");
        bad_id.target.id = "no spaces".into();
        assert!(h.datasets.stage(DS, v, &[bad_id]).await.is_err());
        assert!(matches!(
            h.datasets.rollback(DS, None).await,
            Err(DatasetError::Invalid { .. })
        ));
        assert!(matches!(
            h.datasets.stage(DS, 77, &[staged("a", "A")]).await,
            Err(DatasetError::NoSuchVersion { version: 77, .. })
        ));
        // Nothing of the refused batches was staged.
        let mv = h.datasets.finalize(DS, v).await.unwrap();
        assert_eq!((mv.created, mv.unchanged), (0, 0));
    }

    pub async fn two_concurrent_begins_get_one_version(h: Harness) {
        let h = Arc::new(h);
        let a = tokio::spawn({
            let h = h.clone();
            async move { h.datasets.begin(DS, "owner-a", LEASE).await }
        });
        let b = tokio::spawn({
            let h = h.clone();
            async move { h.datasets.begin(DS, "owner-b", LEASE).await }
        });
        let results = [a.await.unwrap(), b.await.unwrap()];
        let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert_eq!(won[0].version, 1);
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(DatasetError::Busy { version: 1, .. }))),
            "{results:?}"
        );
        let versions = h.datasets.versions(DS).await.unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].owner, won[0].owner);
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite_datasets {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::sqlite().await).await;
                }
            )*
        }
        mod dynamodb_datasets {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::dynamodb().await).await;
                }
            )*
        }
    };
}

suite! {
    load_publishes_the_difference_and_rollback_reverses_it,
    a_failed_version_changes_nothing_and_a_retry_succeeds,
    a_dead_load_is_detected_and_a_live_one_blocks,
    gc_keeps_the_newest_and_the_current,
    bad_names_and_resources_are_refused,
    two_concurrent_begins_get_one_version,
}

// ---- AWS only: the move is several steps, each one resumable --------------------------------

/// A crash right after SUCCEEDED (before the pointer moves): readers still see v1, nothing is
/// emitted; a retried finalize moves the pointer and applies the difference once; a crash
/// after the difference but before `published` is retried without a duplicate event; and the
/// next `begin` finishes a move nobody retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_is_resumed_after_a_crash_between_status_and_pointer() {
    let h = dynamodb().await;
    let (ds, config) = h
        .dynamo
        .as_ref()
        .map(|(d, c)| (d.clone(), c.clone()))
        .unwrap();
    let (v1, _) = h.load(&[("a", "Alpha"), ("b", "Beta")]).await;
    h.drain().await;

    let v2 = h.datasets.begin(DS, "t", LEASE).await.unwrap().version;
    h.stage_all(v2, &[("a", "Alpha"), ("b", "Bravo"), ("c", "Gamma")])
        .await;
    ds.mark_succeeded(DS, v2).await.unwrap();
    // "Crash": the pointer did not move; readers and subscribers see v1 only.
    assert_eq!(h.datasets.current(DS).await.unwrap(), Some(v1));
    assert_eq!(h.family("b").await.as_deref(), Some("Beta"));
    assert!(h.drain().await.is_empty());
    assert_eq!(
        h.datasets.versions(DS).await.unwrap()[0].status,
        VersionStatus::Succeeded
    );
    // Another load must not start on top of it without finishing it first (below); the
    // retried finalize finishes it.
    let mv = h.datasets.finalize(DS, v2).await.unwrap();
    assert_eq!((mv.from, mv.to), (Some(v1), Some(v2)));
    assert_eq!((mv.created, mv.updated, mv.unchanged), (1, 1, 1));
    assert_eq!(h.datasets.current(DS).await.unwrap(), Some(v2));
    assert_eq!(
        h.drain().await,
        vec![
            ev(ChangeKind::Updated, "b", "2"),
            ev(ChangeKind::Created, "c", "1")
        ]
    );

    // A crash after the difference was applied but before `published` was written.
    aws_sdk_dynamodb::Client::new(&config)
        .update_item()
        .table_name(VERSIONS_TABLE)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("ds#{DS}")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("v#{v2:010}")),
        )
        .update_expression("SET published = :no")
        .expression_attribute_values(":no", aws_sdk_dynamodb::types::AttributeValue::Bool(false))
        .send()
        .await
        .unwrap();
    let again = h.datasets.finalize(DS, v2).await.unwrap();
    assert_eq!((again.created, again.updated, again.deleted), (0, 0, 0));
    assert_eq!(again.unchanged, 3);
    assert!(
        h.drain().await.is_empty(),
        "a retried move emits nothing twice"
    );

    // Nobody retries: the next begin finishes the interrupted move before it starts.
    let v3 = h.datasets.begin(DS, "t", LEASE).await.unwrap().version;
    h.stage_all(v3, &[("c", "Gamma")]).await;
    ds.mark_succeeded(DS, v3).await.unwrap();
    let v4 = h.datasets.begin(DS, "t", LEASE).await.unwrap().version;
    assert_eq!(v4, v3 + 1);
    assert_eq!(h.datasets.current(DS).await.unwrap(), Some(v3));
    assert_eq!(h.family("a").await, None);
    assert_eq!(
        h.drain().await,
        vec![
            ev(ChangeKind::Deleted, "a", "2"),
            ev(ChangeKind::Deleted, "b", "3")
        ]
    );
}

/// Reads by id through `ResolvedStore` see the new version whole from the moment the pointer
/// moves, while the FHIR store still holds the old one: changed, created, deleted and unchanged
/// resources, and resources of no dataset from the store; after the move, the store's own
/// versions, with the same version ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_by_id_follow_the_pointer_while_the_store_catches_up() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use fhir_unify::model::{ResourceChange, ResourceOp};
    use fhir_unify::store::dynamodb::resolved::ResolvedStore;
    let h = dynamodb().await;
    let ds = h.dynamo.as_ref().map(|(d, _)| d.clone()).unwrap();
    let (v1, _) = h
        .load(&[("a", "Alpha"), ("b", "Beta"), ("d", "Delta")])
        .await;
    // A resource that no dataset holds (a streamed change).
    let other = staged("x", "Streamed");
    h.store
        .apply(&[ResourceChange {
            target: other.target.clone(),
            op: ResourceOp::Upsert {
                resource: other.resource.clone(),
            },
            lineage: other.lineage.clone(),
        }])
        .await
        .unwrap();
    let resolved = ResolvedStore::new(ds.clone()).with_ttl(Duration::ZERO);
    let read = |id: &'static str| {
        let resolved = &resolved;
        async move {
            resolved.read(&pref(id)).await.unwrap().map(|v| {
                let family = v
                    .resource
                    .as_ref()
                    .and_then(|r| r["name"][0]["family"].as_str().map(str::to_owned));
                (v.version_id, v.deleted, family)
            })
        }
    };
    let read_all = || async {
        let mut all = Vec::new();
        for id in ["a", "b", "c", "d", "x", "zz"] {
            all.push(read(id).await);
        }
        all
    };
    let seen = |version: &str, family: &str| Some((version.to_owned(), false, Some(family.into())));
    assert_eq!(read("b").await, seen("1", "Beta"));

    let v2 = h.datasets.begin(DS, "t", LEASE).await.unwrap().version;
    h.stage_all(v2, &[("a", "Alpha"), ("b", "Bravo"), ("c", "Gamma")])
        .await;
    ds.mark_succeeded(DS, v2).await.unwrap();
    // Finalized but not visible yet: the old version.
    assert_eq!(read("b").await, seen("1", "Beta"));
    assert_eq!(read("c").await, None);

    // The visible step alone: the store has not changed...
    ds.move_pointer(DS, v2).await.unwrap();
    assert_eq!(h.datasets.current(DS).await.unwrap(), Some(v2));
    assert_eq!(h.family("b").await.as_deref(), Some("Beta"));
    assert_eq!(h.family("c").await, None);
    assert_eq!(h.family("d").await.as_deref(), Some("Delta"));
    // ...and readers see version 2 whole, as the store's next versions.
    let during = read_all().await;
    assert_eq!(
        during,
        vec![
            seen("1", "Alpha"),
            seen("2", "Bravo"),
            seen("1", "Gamma"),
            Some(("2".to_owned(), true, None)),
            seen("1", "Streamed"),
            None,
        ]
    );
    // The content shown carries its meta, as the store's will.
    let b = resolved.read(&pref("b")).await.unwrap().unwrap();
    assert_eq!(b.resource.unwrap()["meta"]["versionId"], "2");

    // The move completes: the same answers, now from the store.
    let mv = h.datasets.finalize(DS, v2).await.unwrap();
    assert_eq!((mv.from, mv.to), (Some(v1), Some(v2)));
    assert!(ds.moves_in_flight().await.unwrap().is_empty());
    // A move item a crash left behind after the move was published is not a move.
    let (_, config) = h.dynamo.as_ref().unwrap();
    aws_sdk_dynamodb::Client::new(config)
        .put_item()
        .table_name(VERSIONS_TABLE)
        .item("pk", AttributeValue::S("moves".into()))
        .item("sk", AttributeValue::S(DS.into()))
        .item("to", AttributeValue::N(v2.to_string()))
        .item("from", AttributeValue::N(v1.to_string()))
        .item("at", AttributeValue::S("2024-05-01T00:00:00.000Z".into()))
        .send()
        .await
        .unwrap();
    assert!(ds.moves_in_flight().await.unwrap().is_empty());
    assert_eq!(h.family("b").await.as_deref(), Some("Bravo"));
    let after = read_all().await;
    assert_eq!(after, during);

    // A rollback moves them back, as the store's next versions.
    let back = h.datasets.rollback(DS, Some(v1)).await.unwrap();
    assert_eq!(back.to, Some(v1));
    assert_eq!(read("b").await, seen("3", "Beta"));
    assert_eq!(read("c").await, Some(("2".to_owned(), true, None)));
    assert_eq!(
        ds.read_staged(DS, v2, &pref("bad id!")).await.unwrap(),
        None
    );
}
