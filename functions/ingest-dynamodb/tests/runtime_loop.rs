//! The `ingest-dynamodb` binary under a local Lambda Runtime API, fed the example's DynamoDB
//! Streams events as the event source mapping delivers them: main.rs's wiring (the embedded
//! runtime opened under FHIR_UNIFY_DATA_DIR at cold start, lambda_runtime's loop, the
//! partial-batch answer).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;
use serde_json::json;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("ingest-dynamodb", env!("CARGO_BIN_EXE_ingest-dynamodb"))
}

#[test]
fn stream_batches_flow_through_unify_with_a_partial_batch_answer() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let api = RuntimeApi::start();
    let files = [
        "001-initial-load.json",
        "002-changes.json",
        "003-late-arrival.json",
    ];
    let ids: Vec<String> = files
        .iter()
        .map(|f| api.invoke(&stream_event(&root, f)))
        .collect();
    let function = Function::start(&binary(), &api, &example_config(&root), &data);
    for (file, id) in files.iter().zip(&ids) {
        let (answer, _) = api.answer(id);
        let (_, undecodable) = change_batch(&root, file);
        let expected: Vec<_> = undecodable
            .iter()
            .map(|s| json!({ "itemIdentifier": s }))
            .collect();
        assert_eq!(
            answer.response(),
            &json!({ "batchItemFailures": expected }),
            "{file}\n{}",
            function.output()
        );
    }
    // Every committed change became an event in the embedded bus's file.
    let events = std::fs::read_to_string(data.join("events.ndjson")).unwrap();
    assert!(events.lines().count() > 0);
    assert!(events.contains("FhirResourceUpdated") && events.contains("FhirResourceDeleted"));
    let bad = assert_bad_input_then_recovers(
        &api,
        &[WRONG_SHAPE, NOT_JSON],
        &stream_event(&root, files[2]),
    );
    assert_bad_shape_then_not_json(&bad[..2]);
    assert!(
        api.unknown_requests().is_empty(),
        "{:?}",
        api.unknown_requests()
    );
}

#[test]
fn a_bad_pipeline_file_is_an_init_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_init_error(&binary(), dir.path());
}

#[test]
fn cold_start_and_invocation_timings() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = stream_event(&root, "002-changes.json");
    time_invocations(
        "ingest-dynamodb",
        &binary(),
        &example_config(&root),
        &dir.path().join("data"),
        &event,
        50,
    );
}

#[path = "../../../tests/support/scripted_http.rs"]
mod scripted_http;

/// A `StartSyncExecution` answer.
fn execution(status: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut answer = json!({
        "executionArn": "arn:aws:states:us-east-1:123456789012:express:fu-unify:x:1",
        "name": "x",
        "startDate": 1767225600.0,
        "stopDate": 1767225600.2,
        "status": status,
    });
    answer
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    answer
}

#[test]
fn with_the_stacks_state_machine_each_batch_is_a_sync_execution_on_step_functions() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sfn = scripted_http::ScriptedHttp::start(vec![
        (
            200,
            execution("SUCCEEDED", json!({ "output": "{\"published\":3}" })),
        ),
        (
            200,
            execution(
                "FAILED",
                json!({ "error": "States.Runtime", "cause": "quarantine failed" }),
            ),
        ),
    ]);
    let arn = "arn:aws:states:us-east-1:123456789012:stateMachine:fu-unify";
    let api = RuntimeApi::start();
    let files = ["001-initial-load.json", "002-changes.json"];
    let ids: Vec<String> = files
        .iter()
        .map(|f| api.invoke(&stream_event(&root, f)))
        .collect();
    let function = Function::start_with(
        &binary(),
        &api,
        &example_config(&root),
        &data,
        &[
            ("FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN", arn.to_owned()),
            ("AWS_ENDPOINT_URL", sfn.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ],
    );

    // The first batch: one execution, whose success is the partial-batch answer.
    let (answer, _) = api.answer(&ids[0]);
    let (batch, undecodable) = change_batch(&root, files[0]);
    let expected: Vec<_> = undecodable
        .iter()
        .map(|s| json!({ "itemIdentifier": s }))
        .collect();
    assert_eq!(
        answer.response(),
        &json!({ "batchItemFailures": expected }),
        "{}",
        function.output()
    );
    let requests = sfn.requests();
    let r = &requests[0];
    assert_eq!(
        r.header("x-amz-target"),
        Some("AWSStepFunctions.StartSyncExecution")
    );
    assert_eq!(r.body["stateMachineArn"], arn);
    let input: serde_json::Value = serde_json::from_str(r.body["input"].as_str().unwrap()).unwrap();
    assert_eq!(
        input["changes"],
        serde_json::to_value(&batch.changes).unwrap(),
        "the execution's input is the batch's changes"
    );

    // The second: the execution failed, so the invocation fails and Lambda retries it.
    let (answer, _) = api.answer(&ids[1]);
    match &answer {
        runtime_api::Answer::Error { error_message, .. } => {
            assert!(error_message.contains("States.Runtime"), "{error_message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(sfn.requests().len(), 2);
    // unify did not run in-process: no change event was written locally.
    let local_events = std::fs::read_to_string(data.join("events.ndjson")).unwrap_or_default();
    assert_eq!(local_events.lines().count(), 0, "{local_events}");
    assert!(api.unknown_requests().is_empty());
}

/// A stream batch with no records (what the event source mapping never sends, but the
/// smallest event the handler takes whole): answered with no Step Functions call; every other
/// batch is a `StartSyncExecution`.
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = serde_json::json!({ "Records": [] });
    let answers = time_cold_starts(
        "ingest-dynamodb",
        &binary(),
        &example_config(&root),
        dir.path(),
        &stack_env("ingest-dynamodb", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        let r = answer.response();
        assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");
    }
}
