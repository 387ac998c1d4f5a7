//! End to end on the bundled example: DynamoDB stream batches → ingest → `unify` on the ASL
//! engine → SQLite store → events, with the bad records in quarantine.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use fhir_unify::config::{DataDir, PipelineConfig};
use fhir_unify::local::LocalRuntime;
use fhir_unify::model::{RecordKey, Rejection, ResourceRef, Stage};
use serde_json::{Value, json};

fn example_config() -> PipelineConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fhir-unify.yaml");
    PipelineConfig::load(&path).unwrap()
}

fn runtime(data: &Path) -> LocalRuntime {
    LocalRuntime::open(example_config(), DataDir(data.to_path_buf())).unwrap()
}

fn patient(pk: &str) -> ResourceRef {
    ResourceRef {
        resource_type: "Patient".into(),
        id: fhir_unify::mapping::resource_id(
            "app",
            "patients",
            &RecordKey::from_pairs([("pk", json!(pk))]),
            "Patient",
            None,
        ),
    }
}

fn event_lines(data: &Path) -> Vec<Value> {
    let path: PathBuf = data.join("events.ndjson");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn quarantined(rt: &LocalRuntime) -> Vec<Rejection> {
    rt.queue
        .list(&rt.config.quarantine.queue)
        .unwrap()
        .iter()
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .collect()
}

#[tokio::test]
async fn the_example_publishes_the_good_and_quarantines_the_bad() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let s = rt.run().await.unwrap();

    // 10 stream records, then 8 DMS rows (3 full load, 3 + 2 CDC), then 4 rows of the
    // Transfer upload, then 7 records of the partner's API requests (3 member records, 1 PUT
    // Patient, a transaction of 3).
    assert_eq!(s.records_in, 18 + 4 + 7);
    // Stream: p-1001, p-1002, p-1003 created; p-1001 updated (new phone); p-1002 unchanged
    // (only an unmapped attribute changed); p-1003 deleted; the late p-1001 change is stale.
    // DMS: patients 1, 2, 3 created by the full load, 4 by CDC; 1 and 2 updated; 3 deleted
    // (a key-only delete); the row with an unknown Op is quarantined.
    // Transfer: members E-0001..3 created; E-0004's row lacks a column and is quarantined.
    // API: 2 members, the PUT Patient and the transaction's 3 resources created; the member
    // without a last name is quarantined.
    assert_eq!(
        (s.created, s.updated, s.unchanged, s.deleted, s.stale),
        (3 + 4 + 3 + 6, 1 + 2, 1, 1 + 1, 1),
        "{s:?}"
    );
    assert_eq!(s.quarantined, 3 + 1 + 1 + 1, "{s:?}");
    assert_eq!(s.events, 5 + 7 + 3 + 6, "{s:?}");

    let p1 = rt
        .env
        .store
        .read(&patient("p-1001"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p1.version_id, "2");
    let r = p1.resource.unwrap();
    assert_eq!(r["telecom"][0]["value"], "+1-617-555-0199");
    assert_eq!(r["gender"], "female");
    assert_eq!(r["birthDate"], "1985-12-10");
    assert_eq!(r["meta"]["versionId"], "2");
    let p3 = rt
        .env
        .store
        .read(&patient("p-1003"))
        .await
        .unwrap()
        .unwrap();
    assert!(p3.deleted);
    for bad in ["p-1004", "p-1005", "p-1006"] {
        assert!(
            rt.env.store.read(&patient(bad)).await.unwrap().is_none(),
            "{bad} must not be published"
        );
    }

    // The DMS patients: Maria's phone from the first CDC file, Wei deleted, Samir inserted.
    let clinic = |id: i64| ResourceRef {
        resource_type: "Patient".into(),
        id: fhir_unify::mapping::resource_id(
            "clinic",
            "public.patients",
            &RecordKey::from_pairs([("patient_id", json!(id))]),
            "Patient",
            None,
        ),
    };
    let maria = rt.env.store.read(&clinic(1)).await.unwrap().unwrap();
    assert_eq!(maria.version_id, "2");
    let r = maria.resource.unwrap();
    assert_eq!(r["telecom"][0]["value"], "+1-617-555-0199");
    assert_eq!(r["birthDate"], "1979-03-14");
    assert!(
        rt.env
            .store
            .read(&clinic(3))
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    let james = rt.env.store.read(&clinic(2)).await.unwrap().unwrap();
    assert_eq!(james.resource.unwrap()["address"][0]["city"], "Medford");
    let samir = rt.env.store.read(&clinic(4)).await.unwrap().unwrap();
    assert_eq!(samir.version_id, "1");

    // The Transfer upload's members, the `|` inside quotes kept.
    let member = |id: &str| ResourceRef {
        resource_type: "Patient".into(),
        id: fhir_unify::mapping::resource_id(
            "eligibility",
            "members",
            &RecordKey::from_pairs([("member_id", json!(id))]),
            "Patient",
            None,
        ),
    };
    let bao = rt.env.store.read(&member("E-0002")).await.unwrap().unwrap();
    assert_eq!(bao.resource.unwrap()["name"][0]["family"], "Nguyen | Tran");
    assert!(
        rt.env
            .store
            .read(&member("E-0004"))
            .await
            .unwrap()
            .is_none()
    );

    // Each bad record is in quarantine once, with a reason that names it.
    let q = quarantined(&rt);
    assert_eq!(q.len(), 4 + 1 + 1, "{q:#?}");
    let api = q
        .iter()
        .find(|r| r.record.starts_with("partner/members"))
        .unwrap();
    assert_eq!(api.stage, Stage::Transform);
    assert!(api.record.contains("M-102"), "{}", api.record);
    let upload = q
        .iter()
        .find(|r| r.record.starts_with("eligibility/"))
        .unwrap_or_else(|| panic!("no Transfer rejection: {q:#?}"));
    assert_eq!(upload.stage, Stage::Ingest);
    assert!(
        upload
            .record
            .contains("members/2026-03-members.csv row 4 (line 5)"),
        "{}",
        upload.record
    );
    assert!(
        upload
            .outcome
            .to_string()
            .contains("5 fields, but the header has 6")
    );
    let dms = q
        .iter()
        .find(|r| r.record.starts_with("clinic/"))
        .unwrap_or_else(|| panic!("no DMS rejection: {q:#?}"));
    assert_eq!(dms.stage, Stage::Ingest);
    assert!(
        dms.record.contains("20240427-015534228.parquet row 1"),
        "{}",
        dms.record
    );
    assert!(dms.outcome.to_string().contains("unknown Op"));
    let find = |stage: Stage| {
        q.iter()
            .find(|r| r.stage == stage)
            .unwrap_or_else(|| panic!("no {stage} rejection: {q:#?}"))
    };
    let decode = q
        .iter()
        .find(|r| r.stage == Stage::Ingest && r.record.starts_with("dynamodb"))
        .unwrap_or_else(|| panic!("no stream rejection: {q:#?}"));
    assert!(
        decode.record.contains("400000000000000000006"),
        "{}",
        decode.record
    );
    assert!(decode.raw.is_some());
    let mapping = find(Stage::Transform);
    assert!(mapping.record.contains("p-1005"), "{}", mapping.record);
    assert!(mapping.change.is_some(), "kept for replay");
    let invalid = find(Stage::Validate);
    assert!(invalid.record.contains("p-1004"), "{}", invalid.record);
    let diagnostics = invalid.outcome.to_string();
    assert!(diagnostics.contains("birthDate"), "{diagnostics}");
    for r in &q {
        assert_eq!(r.outcome["resourceType"], "OperationOutcome");
        assert!(
            !r.outcome.to_string().contains("1985-13-45"),
            "no patient data in reasons"
        );
    }

    // Events: EventBridge envelopes with the lineage, one per committed change.
    let events = event_lines(dir.path());
    assert_eq!(events.len(), 12 + 3 + 6);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["detail-type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "FhirResourceCreated")
            .count(),
        7 + 3 + 6,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"FhirResourceUpdated") && kinds.contains(&"FhirResourceDeleted"));
    let first = &events[0];
    assert_eq!(first["source"], "fhir-unify");
    assert_eq!(first["detail"]["source"], "app");
    assert_eq!(first["detail"]["entity"], "patients");
    assert!(first["detail"]["sequence"].as_str().unwrap().len() >= 21);
    // The outbox is drained.
    assert!(rt.env.outbox.pending(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn running_the_example_twice_creates_no_versions_and_emits_no_events() {
    let dir = tempfile::tempdir().unwrap();
    {
        let rt = runtime(dir.path());
        rt.run().await.unwrap();
    }
    let events_before = event_lines(dir.path()).len();
    let history_before = {
        let rt = runtime(dir.path());
        rt.env
            .store
            .history(&patient("p-1001"))
            .await
            .unwrap()
            .len()
    };
    // A new process: everything reopened from the data folder.
    let rt = runtime(dir.path());
    let s = rt.run().await.unwrap();
    assert_eq!(
        (s.created, s.updated, s.deleted, s.events),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(event_lines(dir.path()).len(), events_before);
    assert_eq!(
        rt.env
            .store
            .history(&patient("p-1001"))
            .await
            .unwrap()
            .len(),
        history_before
    );
}

/// Every record of the example's stream, sorted by sequence number.
fn all_records_in_order() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/streams/patients");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut records: Vec<Value> = files
        .iter()
        .flat_map(|f| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            v["Records"].as_array().unwrap().clone()
        })
        .collect();
    records.sort_by_key(|r| {
        fhir_unify::model::Sequence::parse(r["dynamodb"]["SequenceNumber"].as_str().unwrap())
            .unwrap()
    });
    records
}

async fn live_state(rt: &LocalRuntime) -> Vec<Option<Value>> {
    let mut state = Vec::new();
    for pk in ["p-1001", "p-1002", "p-1003", "p-1004", "p-1005", "p-1006"] {
        let live = rt
            .env
            .store
            .read(&patient(pk))
            .await
            .unwrap()
            .filter(|v| !v.deleted);
        state.push(live.and_then(|v| v.resource).map(|mut r| {
            r.as_object_mut().unwrap().remove("meta");
            r
        }));
    }
    state
}

#[tokio::test]
async fn a_batch_delivered_out_of_order_ends_in_the_same_state_as_in_order() {
    use fhir_unify::sources::dynamodb::DynamoDbStreamEvent;
    let in_order = all_records_in_order();
    let mut reversed = in_order.clone();
    reversed.reverse();
    let mut shuffled = in_order.clone();
    // A fixed interleaving: odd positions first, then even ones.
    shuffled.sort_by_key(|r| {
        let i = in_order.iter().position(|x| x == r).unwrap();
        (i.is_multiple_of(2), i)
    });

    let mut states = Vec::new();
    for records in [in_order, reversed, shuffled] {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        rt.deliver_dynamodb(DynamoDbStreamEvent { records })
            .await
            .unwrap();
        states.push(live_state(&rt).await);
    }
    let expected = &states[0];
    assert!(expected[0].as_ref().unwrap()["telecom"][0]["value"] == "+1-617-555-0199");
    assert!(expected[1].is_some() && expected[2].is_none());
    assert_eq!(&states[1], expected, "reversed order");
    assert_eq!(&states[2], expected, "interleaved order");
}

#[tokio::test]
async fn the_example_posts_the_partner_requests_through_ingest_api() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    rt.run().await.unwrap();
    // The PUT Patient/pp-7: the pipeline's id for the partner's id.
    let key = |k: &str, v: &str| RecordKey::from_pairs([(k, json!(v))]);
    let pp7 = ResourceRef {
        resource_type: "Patient".into(),
        id: fhir_unify::mapping::resource_id(
            "partner",
            "fhir.Patient",
            &key("id", "pp-7"),
            "Patient",
            None,
        ),
    };
    let patient = rt.env.store.read(&pp7).await.unwrap().unwrap();
    assert_eq!(patient.resource.unwrap()["name"][0]["family"], "Osei");
    // The transaction's PUT Observation refers to it by the partner's id, rewritten.
    let obs = ResourceRef {
        resource_type: "Observation".into(),
        id: fhir_unify::mapping::resource_id(
            "partner",
            "fhir.Observation",
            &key("id", "obs-pp-7"),
            "Observation",
            None,
        ),
    };
    let obs = rt
        .env
        .store
        .read(&obs)
        .await
        .unwrap()
        .unwrap()
        .resource
        .unwrap();
    assert_eq!(obs["subject"]["reference"], format!("Patient/{}", pp7.id));
    // A member record, keyed and mapped like any source's.
    let member = ResourceRef {
        resource_type: "Patient".into(),
        id: fhir_unify::mapping::resource_id(
            "partner",
            "members",
            &key("member_id", "M-100"),
            "Patient",
            None,
        ),
    };
    let member = rt
        .env
        .store
        .read(&member)
        .await
        .unwrap()
        .unwrap()
        .resource
        .unwrap();
    assert_eq!(member["identifier"][0]["value"], "M-100");
    assert_eq!(member["gender"], "female");
}

/// Records what an ingress sends to quarantine.
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl fhir_unify::queue::Quarantine for Recorder {
    async fn send(&self, body: &str) -> Result<String, fhir_unify::queue::QuarantineError> {
        let mut sent = self.0.lock().unwrap();
        sent.push(body.to_owned());
        Ok(format!("m-{}", sent.len()))
    }
}

/// What an ingress refuses itself goes to the runtime's `rejections` port (on Lambda the SQS
/// quarantine, `FHIR_UNIFY_QUARANTINE_QUEUE_URL`), not to the in-process queue; what `unify`
/// refuses goes where the state machine sends it.
#[tokio::test]
async fn ingress_rejections_go_to_the_rejections_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime(dir.path());
    let recorder = std::sync::Arc::new(Recorder::default());
    rt.rejections = recorder.clone();
    let s = rt.run().await.unwrap();
    assert_eq!(s.quarantined, 6, "{s:?}");
    let sent: Vec<Rejection> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let in_queue = quarantined(&rt);
    // The malformed stream record, the DMS row with an unknown Op, the Transfer row without a
    // column: refused at ingest; the other three by the unify steps.
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert!(sent.iter().all(|r| r.stage == Stage::Ingest), "{sent:#?}");
    assert_eq!(in_queue.len(), 3, "{in_queue:#?}");
    assert!(
        in_queue.iter().all(|r| r.stage != Stage::Ingest),
        "{in_queue:#?}"
    );
}
