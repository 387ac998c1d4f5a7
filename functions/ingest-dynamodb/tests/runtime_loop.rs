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
