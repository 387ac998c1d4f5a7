//! Change events of the REST store (HealthLake mode) through its ledger: the store runs against
//! the project's own FHIR API over SQLite (as in `tests/store_suite.rs`), and a crash is
//! injected between the server's commit and the ledger write (a ledger whose `settle` fails
//! once, then the process's handles are dropped and opened again). After the restart, every
//! committed version has exactly one event, by its stable id: none lost, none repeated.
//! The AWS ledger (a DynamoDB table whose stream drives `emit`) is run against moto the same
//! way, its stream read as Lambda's event source mapping reads it, filtered by the template.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod lambda_stream;
    pub mod moto;
    pub mod partners;
    pub mod serial_moto;
}

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fhir_unify::events::local::NdjsonBus;
use fhir_unify::events::relay_outbox;
use fhir_unify::model::{
    ChangeEvent, ChangeEventDetail, Lineage, PublishAction, RecordKey, ResourceChange, ResourceOp,
    ResourceRef, Sequence,
};
use fhir_unify::store::ledger::{Intent, Ledger, OpenIntent, SqliteLedger};
use fhir_unify::store::rest::{RestAuth, RestOptions, RestStore};
use fhir_unify::store::{FhirStore, Outbox, OutboxEntry, StoreError};
use serde_json::{Value, json};

/// The project's FHIR API over SQLite on a free port; the base URL, a token, and the guard.
async fn server() -> (String, String, Box<dyn std::any::Any + Send>) {
    common::partners::fhir_api(&["Patient", "Basic"], "system/*.cruds").await
}

fn store(base: &str, token: &str, ledger: Arc<dyn Ledger>, settle_after: Duration) -> RestStore {
    let options = RestOptions {
        backoff: Duration::from_millis(10),
        settle_after,
        ..RestOptions::default()
    };
    RestStore::new(base, RestAuth::Bearer(token.to_owned()), options)
        .unwrap()
        .with_ledger(ledger)
}

fn target(id: &str) -> ResourceRef {
    ResourceRef {
        resource_type: "Patient".into(),
        id: id.into(),
    }
}

fn lineage(seq: u64) -> Lineage {
    Lineage {
        source: "app".into(),
        entity: "patients".into(),
        key: RecordKey::from_pairs([("pk", json!(seq))]),
        sequence: Sequence::from(seq),
        observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
    }
}

fn upsert(id: &str, family: &str, seq: u64) -> ResourceChange {
    ResourceChange {
        target: target(id),
        op: ResourceOp::Upsert {
            resource: json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}),
        },
        lineage: lineage(seq),
    }
}

fn delete(id: &str, seq: u64) -> ResourceChange {
    ResourceChange {
        target: target(id),
        op: ResourceOp::Delete,
        lineage: lineage(seq),
    }
}

fn event_id(id: &str, version: &str) -> String {
    ChangeEventDetail::stable_event_id("Patient", id, version)
}

/// A ledger that dies (fails, writing nothing) at its next `settle` while `crash` is set: the
/// process killed between the server's commit and the ledger write.
#[derive(Debug)]
struct CrashingLedger {
    inner: Arc<dyn Ledger>,
    crash: AtomicBool,
}

#[async_trait]
impl Ledger for CrashingLedger {
    async fn record(&self, intents: &[Intent]) -> Result<Vec<String>, StoreError> {
        self.inner.record(intents).await
    }
    async fn settle(&self, ids: &[String], events: &[ChangeEvent]) -> Result<(), StoreError> {
        if self.crash.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "killed before the ledger write".into(),
            ));
        }
        self.inner.settle(ids, events).await
    }
    async fn open_intents(&self) -> Result<Vec<OpenIntent>, StoreError> {
        self.inner.open_intents().await
    }
}

#[async_trait]
impl Outbox for CrashingLedger {
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner.pending(limit).await
    }
    async fn mark_delivered(&self, positions: &[i64]) -> Result<(), StoreError> {
        self.inner.mark_delivered(positions).await
    }
}

/// `detail.eventId`s in an NDJSON bus file, in order.
/// The ids of the ledger's undelivered events, in order.
async fn pending_ids(ledger: &SqliteLedger) -> Vec<String> {
    ledger
        .pending(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event.detail.event_id)
        .collect()
}

fn delivered(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["detail"]["eventId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn events_follow_each_committed_version_and_nothing_else() {
    let (base, token, _guard) = server().await;
    let ledger = Arc::new(SqliteLedger::open_in_memory().unwrap());
    let s = store(&base, &token, ledger.clone(), Duration::from_secs(300));
    s.apply(&[upsert("a", "Smith", 1), upsert("b", "Jones", 1)])
        .await
        .unwrap();
    s.apply(&[upsert("a", "Smyth", 2)]).await.unwrap();
    // An exact replay and an older sequence make no version and no event.
    let replay = s.apply(&[upsert("a", "Smyth", 2)]).await.unwrap();
    assert_eq!(replay[0].action, PublishAction::Unchanged);
    let stale = s.apply(&[upsert("a", "Old", 1)]).await.unwrap();
    assert_eq!(stale[0].action, PublishAction::Stale);
    s.apply(&[delete("b", 2)]).await.unwrap();
    // Deleting what is deleted: no version, no event.
    s.apply(&[delete("b", 3)]).await.unwrap();
    let pending = ledger.pending(100).await.unwrap();
    let got: Vec<(String, String)> = pending
        .iter()
        .map(|e| {
            (
                e.event.detail_type.detail_type().to_owned(),
                e.event.detail.event_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("FhirResourceCreated".to_owned(), event_id("a", "1")),
            ("FhirResourceCreated".to_owned(), event_id("b", "1")),
            ("FhirResourceUpdated".to_owned(), event_id("a", "2")),
            ("FhirResourceDeleted".to_owned(), event_id("b", "2")),
        ]
    );
    // The event carries the source lineage of the change that made the version.
    assert_eq!(pending[2].event.detail.sequence, Sequence::from(2));
    assert_eq!(ledger.counts().unwrap(), (4, 0), "no intent left open");
}

#[tokio::test]
async fn a_crash_between_the_servers_commit_and_the_ledger_write_loses_no_event_and_repeats_none() {
    let (base, token, _guard) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let bus_file = dir.path().join("events.ndjson");
    {
        let ledger = Arc::new(SqliteLedger::open(&path).unwrap());
        let s = store(&base, &token, ledger.clone(), Duration::from_secs(300));
        s.apply(&[upsert("a", "Smith", 1)]).await.unwrap();
        relay_outbox(ledger.as_ref(), &NdjsonBus::open(&bus_file).unwrap())
            .await
            .unwrap();
        // The next publish commits on the server, then the process dies.
        let crashing = Arc::new(CrashingLedger {
            inner: ledger.clone(),
            crash: AtomicBool::new(true),
        });
        let s = store(&base, &token, crashing, Duration::from_secs(300));
        let err = s
            .apply(&[
                upsert("a", "Smyth", 2),
                upsert("b", "Jones", 2),
                delete("c", 2),
            ])
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert_eq!(
            ledger.counts().unwrap(),
            (0, 2),
            "two intents open, no event"
        );
    }
    // The server did commit (the content is there), so a plain retry would find it unchanged.
    // Restart: the ledger file opened again, the same batch retried.
    let ledger = Arc::new(SqliteLedger::open(&path).unwrap());
    let s = store(&base, &token, ledger.clone(), Duration::from_secs(300));
    let outcomes = s
        .apply(&[
            upsert("a", "Smyth", 2),
            upsert("b", "Jones", 2),
            delete("c", 2),
        ])
        .await
        .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| o.action == PublishAction::Unchanged),
        "{outcomes:?}"
    );
    assert_eq!(
        ledger.counts().unwrap(),
        (2, 0),
        "recovered from the history"
    );
    // Another retry, and a relay that dies after delivering and before marking, then runs again.
    s.apply(&[upsert("a", "Smyth", 2), upsert("b", "Jones", 2)])
        .await
        .unwrap();
    let bus = NdjsonBus::open(&bus_file).unwrap();
    let pending: Vec<ChangeEvent> = ledger
        .pending(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    use fhir_unify::events::EventBus;
    bus.put_events(&pending).await.unwrap();
    drop(bus);
    relay_outbox(ledger.as_ref(), &NdjsonBus::open(&bus_file).unwrap())
        .await
        .unwrap();
    assert_eq!(
        delivered(&bus_file),
        vec![event_id("a", "1"), event_id("a", "2"), event_id("b", "1")],
        "each committed version once"
    );
    for line in std::fs::read_to_string(&bus_file).unwrap().lines() {
        fhir_unify::events::schema::check_change_event(&serde_json::from_str(line).unwrap())
            .unwrap();
    }
    let recovered = s.history(&target("a")).await.unwrap();
    assert_eq!(recovered.len(), 2);
}

#[tokio::test]
async fn an_intent_whose_write_never_reached_the_server_closes_without_an_event() {
    let (base, token, _guard) = server().await;
    let ledger = Arc::new(SqliteLedger::open_in_memory().unwrap());
    // A process recorded intents and died before sending: one old (no request of it can be in
    // flight any more), one young, on a resource the next batch writes.
    let old = Intent {
        target: target("x"),
        prior: None,
        lineage: lineage(1),
        recorded_at: chrono::Utc::now() - chrono::Duration::seconds(600),
    };
    let young = Intent {
        target: target("y"),
        prior: None,
        lineage: lineage(1),
        recorded_at: chrono::Utc::now(),
    };
    ledger.record(&[old, young]).await.unwrap();
    let s = store(&base, &token, ledger.clone(), Duration::from_millis(400));
    // The young intent's write may still be in flight: it stays open while "y" is written.
    s.apply(&[upsert("y", "Young", 1)]).await.unwrap();
    let open: Vec<String> = ledger
        .open_intents()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.intent.target.id)
        .collect();
    assert_eq!(open, vec!["y"], "the old one closed: x was never written");
    assert_eq!(ledger.counts().unwrap(), (1, 1));
    // Once it is old, it resolves to the version made after its prior: y/1, already settled
    // by the write itself, so it is not added twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.recover_ledger(None).await.unwrap(), 1);
    let ids: HashSet<String> = pending_ids(&ledger).await.into_iter().collect();
    assert_eq!(ids, HashSet::from([event_id("y", "1")]));
    assert_eq!(ledger.counts().unwrap(), (1, 0));
}

#[tokio::test]
async fn a_server_that_is_down_at_recovery_keeps_the_intent_for_later() {
    let ledger = Arc::new(SqliteLedger::open_in_memory().unwrap());
    ledger
        .record(&[Intent {
            target: target("z"),
            prior: Some("1".into()),
            lineage: lineage(1),
            recorded_at: chrono::Utc::now(),
        }])
        .await
        .unwrap();
    // Nothing listens on this port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let options = RestOptions {
        max_attempts: 1,
        ..RestOptions::default()
    };
    let s = RestStore::new(&base, RestAuth::None, options)
        .unwrap()
        .with_ledger(ledger.clone());
    let err = s.apply(&[upsert("z", "Zed", 2)]).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(ledger.counts().unwrap(), (0, 1), "the intent waits");
}

/// The filter of the emit function's mapping on the ledger stream, from the template.
fn ledger_filter() -> fhir_unify::events::pattern::EventPattern {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/template.yaml");
    let template: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mapping = &template["Resources"]["EmitLedgerStreamMapping"]["Properties"];
    let filters = mapping["FilterCriteria"]["Filters"].as_sequence().unwrap();
    assert_eq!(filters.len(), 1);
    fhir_unify::events::pattern::EventPattern::parse(filters[0]["Pattern"].as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn on_aws_the_ledger_tables_stream_carries_each_committed_version_once_across_a_crash() {
    use common::moto::REGION;
    use fhir_unify::events::eventbridge::EventBridgeBus;
    use fhir_unify::handlers::emit_stream;
    use fhir_unify::sources::dynamodb::DynamoDbStreamEvent;
    use fhir_unify::store::ledger::dynamodb::DynamoLedger;

    let moto = common::serial_moto::SerialMoto::start();
    let config = common::aws::sdk(&moto.endpoint).await;
    let table = "fhir-ledger";
    let dynamo = DynamoLedger::new(aws_sdk_dynamodb::Client::new(&config), table);
    dynamo.create_table().await.unwrap();
    let (base, token, _guard) = server().await;

    let ledger: Arc<dyn Ledger> = Arc::new(dynamo.clone());
    let s = store(&base, &token, ledger.clone(), Duration::from_secs(300));
    s.apply(&[upsert("a", "Smith", 1)]).await.unwrap();
    // Killed between the server's commit and the ledger write.
    let crashing = Arc::new(CrashingLedger {
        inner: ledger.clone(),
        crash: AtomicBool::new(true),
    });
    let s = store(&base, &token, crashing, Duration::from_secs(300));
    s.apply(&[upsert("a", "Smyth", 2), upsert("b", "Jones", 2)])
        .await
        .unwrap_err();
    assert_eq!(dynamo.open_intents().await.unwrap().len(), 2);
    // Another Lambda instance retries the batch twice.
    let again = DynamoLedger::new(aws_sdk_dynamodb::Client::new(&config), table);
    let s = store(&base, &token, Arc::new(again), Duration::from_secs(300));
    for _ in 0..2 {
        let outcomes = s
            .apply(&[upsert("a", "Smyth", 2), upsert("b", "Jones", 2)])
            .await
            .unwrap();
        assert!(
            outcomes
                .iter()
                .all(|o| o.action == PublishAction::Unchanged)
        );
    }
    assert!(dynamo.open_intents().await.unwrap().is_empty());
    for (id, v) in [("a", "1"), ("a", "2"), ("b", "1")] {
        assert!(
            dynamo.has_event(&event_id(id, v)).await.unwrap(),
            "{id}/{v}"
        );
    }

    let stream_arn = common::lambda_stream::stream_arn(&config, table).await;
    let all = common::lambda_stream::read_stream(&config, &stream_arn, REGION).await;
    let filter = ledger_filter();
    let records: Vec<Value> = all.iter().filter(|r| filter.matches(r)).cloned().collect();
    assert!(all.len() > records.len(), "intent records are filtered out");
    aws_sdk_eventbridge::Client::new(&config)
        .create_event_bus()
        .name("changes")
        .send()
        .await
        .unwrap();
    let bus = EventBridgeBus::with_client("changes", aws_sdk_eventbridge::Client::new(&config));
    let out = emit_stream::handle(
        &DynamoDbStreamEvent {
            records: all.clone(),
        },
        &bus,
    )
    .await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(
        (out.published, out.skipped),
        (3, all.len() - 3),
        "three versions, each published once"
    );
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| {
            r["dynamodb"]["Keys"]["pk"]["S"]
                .as_str()
                .unwrap()
                .trim_start_matches("event#")
                .to_owned()
        })
        .collect();
    ids.sort();
    // Each event item expires a week after it was settled (the table's TTL attribute).
    let week = i64::try_from(fhir_unify::store::ledger::EVENT_RETENTION.as_secs()).unwrap();
    for r in &records {
        let at: i64 =
            r["dynamodb"]["NewImage"][fhir_unify::store::ledger::dynamodb::EXPIRES_AT]["N"]
                .as_str()
                .unwrap_or_else(|| panic!("no expiry: {r}"))
                .parse()
                .unwrap();
        let left = at - chrono::Utc::now().timestamp();
        assert!(week - 600 < left && left <= week, "{left} s left");
    }
    let mut want = vec![event_id("a", "1"), event_id("a", "2"), event_id("b", "1")];
    want.sort();
    assert_eq!(ids, want);
}

/// A proxy in front of the FHIR API that forwards everything, but answers the first
/// transaction 503 after the server has committed it: a gateway timing out, a load balancer
/// dropping the answer. Returns its base URL, whether it did, and a guard.
async fn losing_the_first_commit_answer(
    upstream: String,
) -> (String, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    use axum::body::{Body, to_bytes};
    use axum::extract::Request;
    use axum::response::Response;
    let lost = Arc::new(AtomicBool::new(false));
    let did = lost.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let upstream = upstream.clone();
        let lost = lost.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = to_bytes(body, usize::MAX).await.unwrap().to_vec();
            let transaction =
                parts.method == "POST" && parts.uri.path().trim_matches('/').is_empty();
            let url = format!(
                "{upstream}{}",
                parts.uri.path_and_query().map_or("/", |p| p.as_str())
            );
            let (status, headers, text) = tokio::task::spawn_blocking(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut forward = ureq::http::Request::builder()
                    .method(parts.method.as_str())
                    .uri(&url);
                for (k, v) in &parts.headers {
                    if k != "host" && k != "content-length" {
                        forward = forward.header(k.as_str(), v.as_bytes());
                    }
                }
                let mut answer = agent.run(forward.body(body).unwrap()).unwrap();
                let headers: Vec<(String, Vec<u8>)> = answer
                    .headers()
                    .iter()
                    .filter(|(k, _)| *k != "content-length" && *k != "transfer-encoding")
                    .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                let text = answer.body_mut().read_to_string().unwrap();
                (answer.status().as_u16(), headers, text)
            })
            .await
            .unwrap();
            if transaction && status == 200 && !lost.swap(true, Ordering::SeqCst) {
                return Response::builder()
                    .status(503)
                    .header("content-type", "application/fhir+json")
                    .body(Body::from(
                        json!({"resourceType": "OperationOutcome", "issue": [{
                            "severity": "error", "code": "timeout",
                            "diagnostics": "upstream answer lost"}]})
                        .to_string(),
                    ))
                    .unwrap();
            }
            let mut response = Response::builder().status(status);
            for (k, v) in headers {
                response = response.header(k, v);
            }
            response.body(Body::from(text)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), did, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_committed_transaction_reports_what_it_made_and_emits_each_version_once()
{
    let (base, token, _guard) = server().await;
    let (proxy, lost, _proxy) = losing_the_first_commit_answer(base).await;
    let ledger = Arc::new(SqliteLedger::open_in_memory().unwrap());
    let s = store(&proxy, &token, ledger.clone(), Duration::from_secs(300));
    // The server commits a/1 and b/1; the store hears 503 and sends the same Bundle again,
    // which the server refuses (412: the versions moved on). The history shows the first
    // attempt made them: they are reported created, and their events are in the ledger.
    let outcomes = s
        .apply(&[upsert("a", "Smith", 1), upsert("b", "Jones", 1)])
        .await
        .unwrap();
    let actions: Vec<(PublishAction, Option<&str>)> = outcomes
        .iter()
        .map(|o| (o.action, o.version_id.as_deref()))
        .collect();
    assert_eq!(
        actions,
        vec![
            (PublishAction::Created, Some("1")),
            (PublishAction::Created, Some("1"))
        ]
    );
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(lost.load(Ordering::SeqCst), "the commit's answer was lost");
    s.apply(&[upsert("a", "Smyth", 2)]).await.unwrap();
    let ids = pending_ids(&ledger).await;
    let mut want = vec![event_id("a", "1"), event_id("b", "1"), event_id("a", "2")];
    let mut got = ids.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{ids:?}");
    assert_eq!(ledger.counts().unwrap(), (3, 0), "no intent left open");
    assert_eq!(s.history(&target("a")).await.unwrap().len(), 2);
}
