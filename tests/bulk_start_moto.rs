//! A full-refresh upload on AWS: `ingest-transfer` starts the standard `bulk-load` machine
//! through the real Step Functions SDK (against moto's server), with the load's request as
//! the execution's input and a name derived from the upload, so a redelivered event starts
//! no second execution.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod moto;
}

use std::path::Path;
use std::sync::Arc;

use chrono::TimeZone;
use serde_json::{Value, json};

use common::aws::{MOTO_ACCOUNT, sdk};
use common::moto::{Moto, REGION};
use fhir_unify::bulk::LoadRequest;
use fhir_unify::config::PipelineConfig;
use fhir_unify::env::{IngestEnv, Workflow};
use fhir_unify::handlers::ingest_transfer;
use fhir_unify::objects::LocalBuckets;
use fhir_unify::sfn::{SfnError, StepFunctionsWorkflow};
use fhir_unify::sources::transfer::upload_completed;

/// Creates a standard state machine named `name` in moto; its ARN.
async fn state_machine(sfn: &aws_sdk_sfn::Client, name: &str) -> String {
    let definition = json!({
        "StartAt": "Done",
        "States": { "Done": { "Type": "Succeed" } }
    });
    sfn.create_state_machine()
        .name(name)
        .definition(definition.to_string())
        .role_arn(format!("arn:aws:iam::{MOTO_ACCOUNT}:role/states"))
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_owned()
}

async fn executions(sfn: &aws_sdk_sfn::Client, arn: &str) -> Vec<(String, Value)> {
    let listed = sfn
        .list_executions()
        .state_machine_arn(arn)
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for e in listed.executions() {
        let described = sfn
            .describe_execution()
            .execution_arn(e.execution_arn())
            .send()
            .await
            .unwrap();
        let input = serde_json::from_str(described.input().unwrap()).unwrap();
        out.push((e.name().to_owned(), input));
    }
    out
}

const PIPELINE: &str = "
sources:
  - name: partner
    transfer: { location: s3://landing/partner }
    files:
      - { match: 'members/*.csv', entity: members, key: [Id], format: { csv: {} },
          mapping: m.yaml, load: full-refresh }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_starts_one_bulk_load_execution_whose_input_is_the_load() {
    let moto = Moto::start();
    let config = sdk(&moto.endpoint).await;
    let sfn = aws_sdk_sfn::Client::new(&config);
    let unify = state_machine(&sfn, "stack-unify").await;
    let bulk = state_machine(&sfn, "stack-bulk-load").await;
    let workflow = StepFunctionsWorkflow::new(aws_sdk_sfn::Config::from(&config), &unify)
        .unwrap()
        .with_bulk_load(&bulk)
        .unwrap();

    // The file the event announces (read for its size only: a full refresh is not read here).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("partner/members")).unwrap();
    std::fs::write(dir.path().join("partner/members/2026-03.csv"), "Id\n1\n").unwrap();
    let objects = LocalBuckets::new()
        .with_bucket("landing", dir.path())
        .shared();
    let env = IngestEnv {
        config: Arc::new(PipelineConfig::from_yaml(PIPELINE, Path::new("p.yaml")).unwrap()),
        workflow: Arc::new(workflow.clone()),
    };
    let at = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap();
    let event = upload_completed("landing", "partner/members/2026-03.csv", 5, at);

    let outcome = ingest_transfer::handle(event.clone(), &env, objects.clone())
        .await
        .unwrap();
    assert!(outcome.runs.is_empty());
    assert_eq!(outcome.loads.len(), 1);
    let start = &outcome.loads[0].start;
    assert!(
        !start.already_started && start.finished.is_none(),
        "{start:?}"
    );
    let started = executions(&sfn, &bulk).await;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].0, start.execution);
    assert_eq!(
        started[0].1,
        json!({
            "dataset": "partner/members",
            "source": "partner",
            "entity": "members",
            "bucket": "landing",
            "prefix": "partner/members/2026-03.csv"
        })
    );
    assert!(
        executions(&sfn, &unify).await.is_empty(),
        "no row went to unify"
    );

    // Redelivered: still one execution.
    let again = ingest_transfer::handle(event, &env, objects).await.unwrap();
    assert_eq!(again.loads[0].start.execution, start.execution);
    assert_eq!(executions(&sfn, &bulk).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bulk_load_machine_or_with_a_bad_arn_the_error_says_so() {
    let moto = Moto::start();
    let config = sdk(&moto.endpoint).await;
    let sfn = aws_sdk_sfn::Client::new(&config);
    let unify = state_machine(&sfn, "stack-unify").await;
    let workflow = StepFunctionsWorkflow::new(aws_sdk_sfn::Config::from(&config), &unify).unwrap();
    let req = LoadRequest {
        dataset: "partner/members".into(),
        source: "partner".into(),
        entity: "members".into(),
        bucket: "landing".into(),
        prefix: "partner/members/2026-03.csv".into(),
        version: None,
    };
    let e = workflow
        .start_bulk(&req, "partner_members-x")
        .await
        .unwrap_err();
    assert!(matches!(e, SfnError::NoBulkLoad { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("FHIR_UNIFY_BULK_LOAD_STATE_MACHINE_ARN")
    );
    // Through the trait, as the handler sees it.
    let e = workflow
        .start_bulk_load(&req, "partner_members-x")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("partner/members"), "{e}");
    assert!(matches!(
        workflow.clone().with_bulk_load("bulk-load"),
        Err(SfnError::InvalidBulkLoadArn(_))
    ));
    // A machine that does not exist: refused, not retried, and named.
    let missing = format!("arn:aws:states:{REGION}:{MOTO_ACCOUNT}:stateMachine:nothing");
    let e = workflow
        .with_bulk_load(&missing)
        .unwrap()
        .start_bulk(&req, "partner_members-x")
        .await
        .unwrap_err();
    match e {
        SfnError::Start {
            state_machine,
            attempts,
            ..
        } => {
            assert_eq!(state_machine, missing);
            assert_eq!(attempts, 1);
        }
        other => panic!("{other}"),
    }
}
