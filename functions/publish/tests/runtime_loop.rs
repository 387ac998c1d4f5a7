//! The `publish` binary under a local Lambda Runtime API: main.rs's wiring (the store opened
//! under FHIR_UNIFY_DATA_DIR at cold start, lambda_runtime's loop).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("publish", env!("CARGO_BIN_EXE_publish"))
}

/// What transform and validate make of the example's first stream batch (in-process).
fn validated_batch(root: &std::path::Path, data: &std::path::Path) -> serde_json::Value {
    let (batch, _) = change_batch(root, "001-initial-load.json");
    let env = step_env(root, data);
    let mapped = block_on(fhir_unify::handlers::transform::handle(batch, &env)).unwrap();
    let checked = block_on(fhir_unify::handlers::validate::handle(mapped, &env)).unwrap();
    serde_json::to_value(checked).unwrap()
}

#[test]
fn validated_resources_are_stored_once() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let input = validated_batch(&root, &dir.path().join("prep"));
    let data = dir.path().join("data");
    let api = RuntimeApi::start();
    let first = api.invoke(&input);
    let function = Function::start(&binary(), &api, &example_config(&root), &data);
    let (answer, _) = api.answer(&first);
    let published = answer.response().to_string();
    let items = input["items"].as_array().unwrap().len();
    assert!(items > 0);
    assert_eq!(
        published.matches("\"created\"").count(),
        items,
        "{published}\n{}",
        function.output()
    );
    assert!(
        data.join("store.db").exists(),
        "the store is under FHIR_UNIFY_DATA_DIR"
    );
    // The same batch again, after bad input: stored already, so unchanged.
    let bad = assert_bad_input_then_recovers(&api, &[WRONG_SHAPE, NOT_JSON], &input);
    let again = bad[2].response().to_string();
    assert_eq!(again.matches("\"created\"").count(), 0, "{again}");
    assert_eq!(again.matches("\"unchanged\"").count(), items, "{again}");
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
    let input = validated_batch(&root, &dir.path().join("prep"));
    time_invocations(
        "publish",
        &binary(),
        &example_config(&root),
        &dir.path().join("data"),
        &input,
        50,
    );
}

/// A validated batch with nothing left to store (every change rejected upstream): answered with no call to the stack's DynamoDB table, which every other batch writes to.
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = serde_json::json!({ "batchId": "timing", "items": [], "rejected": [] });
    let answers = time_cold_starts(
        "publish",
        &binary(),
        &example_config(&root),
        dir.path(),
        &stack_env("publish", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        let r = answer.response();
        assert_eq!(r["batchId"], "timing");
        assert_eq!(r["published"], serde_json::json!([]), "{r}");
    }
}
