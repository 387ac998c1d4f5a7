//! The `transform` binary under a local Lambda Runtime API: main.rs's wiring (environment
//! from FHIR_UNIFY_CONFIG, lambda_runtime's loop), not only the handler.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("transform", env!("CARGO_BIN_EXE_transform"))
}

#[test]
fn a_change_batch_becomes_fhir_resources() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let (batch, _) = change_batch(&root, "001-initial-load.json");
    let input = serde_json::to_value(&batch).unwrap();
    let api = RuntimeApi::start();
    let first = api.invoke(&input);
    let function = Function::start(
        &binary(),
        &api,
        &example_config(&root),
        &dir.path().join("data"),
    );
    let (answer, _) = api.answer(&first);
    let mapped = answer.response();
    assert_eq!(mapped["batchId"], input["batchId"], "{}", function.output());
    let items = mapped["items"].as_array().unwrap();
    let rejected = mapped["rejected"].as_array().unwrap();
    assert_eq!(
        items.len() + rejected.len(),
        batch.changes.len(),
        "every change ends somewhere"
    );
    assert!(!items.is_empty());
    assert!(
        !rejected.is_empty(),
        "the example holds a record the mapping refuses"
    );
    let bad = assert_bad_input_then_recovers(&api, &[WRONG_SHAPE, NOT_JSON], &input);
    assert_eq!(
        bad[2].response(),
        mapped,
        "the same batch maps the same way"
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
    let (batch, _) = change_batch(&root, "001-initial-load.json");
    let input = serde_json::to_value(&batch).unwrap();
    time_invocations(
        "transform",
        &binary(),
        &example_config(&root),
        &dir.path().join("data"),
        &input,
        50,
    );
}

/// A change batch of the example: mapped, with no call to anything (the bus is the stack's EventBridge bus, unused here).
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let (batch, _) = change_batch(&root, "001-initial-load.json");
    let event = serde_json::to_value(&batch).unwrap();
    let answers = time_cold_starts(
        "transform",
        &binary(),
        &example_config(&root),
        dir.path(),
        &stack_env("transform", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        assert!(!answer.response()["items"].as_array().unwrap().is_empty());
    }
}
