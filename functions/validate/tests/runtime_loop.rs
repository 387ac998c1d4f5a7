//! The `validate` binary under a local Lambda Runtime API: main.rs's wiring (environment
//! from FHIR_UNIFY_CONFIG, the FHIR R4 schema loaded at cold start, lambda_runtime's loop).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("validate", env!("CARGO_BIN_EXE_validate"))
}

/// What transform makes of the example's first stream batch (in-process).
fn mapped_batch(root: &std::path::Path, data: &std::path::Path) -> serde_json::Value {
    let (batch, _) = change_batch(root, "001-initial-load.json");
    let env = step_env(root, data);
    let mapped = block_on(fhir_unify::handlers::transform::handle(batch, &env)).unwrap();
    serde_json::to_value(mapped).unwrap()
}

#[test]
fn mapped_resources_are_checked_against_fhir_r4() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let input = mapped_batch(&root, &dir.path().join("prep"));
    let api = RuntimeApi::start();
    let first = api.invoke(&input);
    let function = Function::start(
        &binary(),
        &api,
        &example_config(&root),
        &dir.path().join("data"),
    );
    let (answer, _) = api.answer(&first);
    let checked = answer.response();
    let items_in = input["items"].as_array().unwrap().len();
    let rejected_in = input["rejected"].as_array().unwrap().len();
    let items = checked["items"].as_array().unwrap();
    let rejected = checked["rejected"].as_array().unwrap();
    assert_eq!(
        items.len() + rejected.len(),
        items_in + rejected_in,
        "{}",
        function.output()
    );
    assert!(
        rejected.len() > rejected_in,
        "the example holds a birth date that is not a date: validate rejects it"
    );
    let bad = assert_bad_input_then_recovers(&api, &[WRONG_SHAPE, NOT_JSON], &input);
    assert_eq!(bad[2].response(), checked);
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
    let input = mapped_batch(&root, &dir.path().join("prep"));
    time_invocations(
        "validate",
        &binary(),
        &example_config(&root),
        &dir.path().join("data"),
        &input,
        50,
    );
}

/// A mapped batch of the example: validated, with no call to anything (the validator is loaded at init).
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = mapped_batch(&root, &dir.path().join("prepare"));
    let answers = time_cold_starts(
        "validate",
        &binary(),
        &example_config(&root),
        dir.path(),
        &stack_env("validate", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        let r = answer.response();
        assert_eq!(r["batchId"], event["batchId"]);
        assert!(!r["items"].as_array().unwrap().is_empty(), "{r}");
    }
}
