//! `statemachines/unify.asl.json` on the project's ASL engine: the definition itself, and the
//! paths a batch can take besides the happy one (the example test covers that).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use fhir_unify::config::PipelineConfig;
use fhir_unify::env::{Env, LazyValidator, Workflow};
use fhir_unify::events::local::NdjsonBus;
use fhir_unify::handlers::errors;
use fhir_unify::local::queue::LocalQueue;
use fhir_unify::local::{LocalWorkflow, UNIFY_DEFINITION, substitutions};
use fhir_unify::model::{
    ChangeBatch, Op, PublishOutcome, RecordKey, ResourceChange, ResourceRef, Sequence, SourceChange,
};
use fhir_unify::store::sqlite::SqliteStore;
use fhir_unify::store::{FhirStore, StoreError, StoredVersion};
use fhir_unify::validation::Validator;
use serde_json::{Value, json};

fn example_config() -> PipelineConfig {
    PipelineConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fhir-unify.yaml"))
        .unwrap()
}

fn collect_error_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                if k == "ErrorEquals" {
                    out.extend(
                        child
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| e.as_str().unwrap().to_owned()),
                    );
                } else {
                    collect_error_names(child, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_error_names(c, out)),
        _ => {}
    }
}

#[test]
fn the_definition_names_only_errors_that_exist() {
    let def: Value = serde_json::from_str(UNIFY_DEFINITION).unwrap();
    let mut names = Vec::new();
    collect_error_names(&def, &mut names);
    assert!(!names.is_empty());
    for name in names {
        let aws = ["States.", "Lambda.", "SQS."]
            .iter()
            .any(|p| name.starts_with(p));
        assert!(
            aws || errors::ALL.contains(&name.as_str()),
            "unknown error name {name:?} in unify.asl.json"
        );
    }
}

#[test]
fn the_definition_is_valid_once_substituted_and_refused_before() {
    let text = asl::substitute(UNIFY_DEFINITION, &substitutions(&example_config())).unwrap();
    asl::StateMachine::parse(&text).unwrap();
    let unresolved = asl::substitute(UNIFY_DEFINITION, &Default::default()).unwrap_err();
    assert!(
        unresolved.to_string().contains("TransformFunctionArn"),
        "{unresolved}"
    );
}

/// A store that is always busy.
#[derive(Debug)]
struct BusyStore;

#[async_trait]
impl FhirStore for BusyStore {
    async fn apply(&self, _: &[ResourceChange]) -> Result<Vec<PublishOutcome>, StoreError> {
        Err(StoreError::Unavailable("database is locked".into()))
    }
    async fn read(&self, _: &ResourceRef) -> Result<Option<StoredVersion>, StoreError> {
        Ok(None)
    }
    async fn vread(&self, _: &ResourceRef, _: &str) -> Result<Option<StoredVersion>, StoreError> {
        Ok(None)
    }
    async fn history(&self, _: &ResourceRef) -> Result<Vec<StoredVersion>, StoreError> {
        Ok(Vec::new())
    }
}

fn batch() -> ChangeBatch {
    ChangeBatch {
        batch_id: "test-batch".into(),
        changes: vec![SourceChange {
            source: "app".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!("p-1"))]),
            op: Op::Upsert,
            sequence: Sequence::from(7),
            observed_at: "2024-05-01T00:00:00Z".parse().unwrap(),
            data: json!({"pk": "p-1", "mrn": "MRN-1", "first_name": "Ada", "last_name": "Lovelace", "sex": "F"}).into(),
        }],
    }
}

#[tokio::test]
async fn a_step_that_keeps_failing_is_retried_then_its_batch_goes_to_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config();
    let outbox = Arc::new(SqliteStore::open_in_memory().unwrap());
    let env = Arc::new(Env {
        mappings: Arc::new(config.load_mappings().unwrap()),
        validator: LazyValidator::ready(Arc::new(Validator::r4().unwrap())),
        store: Arc::new(BusyStore),
        outbox,
        bus: Arc::new(NdjsonBus::open(&dir.path().join("events.ndjson")).unwrap()),
    });
    let queue = Arc::new(LocalQueue::open(&dir.path().join("queue.db")).unwrap());
    let clock = Arc::new(asl::TestClock::default());
    let workflow = LocalWorkflow::with_clock(env, &config, queue.clone(), clock.clone()).unwrap();

    let run = workflow.run_unify(&batch()).await.unwrap();

    // The Catch path ends the execution well: the batch is safe in quarantine.
    assert!(run.succeeded, "{run:?}");
    // Publish's Retry on FhirUnify.StoreUnavailable: 5 attempts after the first, backing off.
    let sleeps = clock.sleeps();
    assert_eq!(sleeps.len(), 5, "{sleeps:?}");
    assert!(
        sleeps.iter().all(|d| d.as_secs_f64() <= 20.0),
        "MaxDelaySeconds caps each wait: {sleeps:?}"
    );
    let messages = queue.list(&config.quarantine.queue).unwrap();
    assert_eq!(messages.len(), 1);
    let body: Value = serde_json::from_str(&messages[0].body).unwrap();
    assert_eq!(body["error"]["Error"], errors::STORE_UNAVAILABLE);
    assert!(
        body["error"]["Cause"]
            .as_str()
            .unwrap()
            .contains("database is locked")
    );
    // The message holds the batch as Publish got it, so it can be replayed.
    assert_eq!(body["batchId"], "test-batch");
    assert_eq!(body["items"][0]["change"]["key"]["pk"], "p-1");
}

#[tokio::test]
async fn a_batch_whose_records_all_pass_ends_with_events_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config();
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let env = Arc::new(Env {
        mappings: Arc::new(config.load_mappings().unwrap()),
        validator: LazyValidator::ready(Arc::new(Validator::r4().unwrap())),
        store: store.clone(),
        outbox: store,
        bus: Arc::new(NdjsonBus::open(&dir.path().join("events.ndjson")).unwrap()),
    });
    let queue = Arc::new(LocalQueue::open(&dir.path().join("queue.db")).unwrap());
    let workflow = LocalWorkflow::with_clock(
        env,
        &config,
        queue.clone(),
        Arc::new(asl::TestClock::default()),
    )
    .unwrap();
    let run = workflow.run_unify(&batch()).await.unwrap();
    assert!(run.succeeded, "{run:?}");
    let out = run.output.unwrap();
    assert_eq!(out["published"][0]["action"], "created");
    assert_eq!(out["emitted"]["delivered"], 1);
    assert_eq!(queue.count(&config.quarantine.queue).unwrap(), 0);
    // Same batch again: unchanged, nothing emitted.
    let again = workflow.run_unify(&batch()).await.unwrap().output.unwrap();
    assert_eq!(again["published"][0]["action"], "unchanged");
    assert_eq!(again["emitted"]["delivered"], 0);
}
