//! The `emit` binary under a local Lambda Runtime API: main.rs's wiring (store and event file
//! opened under FHIR_UNIFY_DATA_DIR at cold start, lambda_runtime's loop).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;
use serde_json::json;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("emit", env!("CARGO_BIN_EXE_emit"))
}

/// Publishes the example's first stream batch into the store under `data` (in-process), so
/// its outbox holds one event per created resource; returns how many.
fn publish_example(root: &std::path::Path, data: &std::path::Path) -> usize {
    let (batch, _) = change_batch(root, "001-initial-load.json");
    let env = step_env(root, data);
    block_on(async {
        let mapped = fhir_unify::handlers::transform::handle(batch, &env)
            .await
            .unwrap();
        let checked = fhir_unify::handlers::validate::handle(mapped, &env)
            .await
            .unwrap();
        let items = checked.items.len();
        fhir_unify::handlers::publish::handle(checked, &env)
            .await
            .unwrap();
        items
    })
}

#[test]
fn the_outbox_is_delivered_once() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let committed = publish_example(&root, &data);
    assert!(committed > 0);
    let trigger = json!({ "trigger": "batch-1" });
    let api = RuntimeApi::start();
    let first = api.invoke(&trigger);
    let function = Function::start(&binary(), &api, &example_config(&root), &data);
    let (answer, _) = api.answer(&first);
    assert_eq!(
        answer.response(),
        &json!({ "delivered": committed, "failed": 0 }),
        "{}",
        function.output()
    );
    let events = std::fs::read_to_string(data.join("events.ndjson")).unwrap();
    assert_eq!(events.lines().count(), committed);
    for line in events.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["source"], "fhir-unify");
        assert_eq!(event["detail-type"], "FhirResourceCreated");
    }
    // emit takes any JSON as its trigger: only a payload that is not JSON is refused. The
    // outbox is marked, so the next run delivers nothing.
    let bad = assert_bad_input_then_recovers(&api, &[NOT_JSON], &trigger);
    assert_eq!(bad[1].response(), &json!({ "delivered": 0, "failed": 0 }));
    let Answer::Error { error_type, .. } = &bad[0] else {
        unreachable!()
    };
    assert_eq!(error_type, DESERIALIZE_ERROR);
    assert_eq!(
        std::fs::read_to_string(data.join("events.ndjson")).unwrap(),
        events
    );
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
    let trigger = json!({ "trigger": "timing" });
    time_invocations(
        "emit",
        &binary(),
        &example_config(&root),
        &dir.path().join("data"),
        &trigger,
        50,
    );
}

/// The state machine's Emit step with the stack's DynamoDB store: the table's stream publishes the events, so the step relays nothing and calls nothing.
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = serde_json::json!({ "trigger": "timing" });
    let answers = time_cold_starts(
        "emit",
        &binary(),
        &example_config(&root),
        dir.path(),
        &stack_env("emit", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        assert!(answer.response().is_object(), "{answer:?}");
    }
}
