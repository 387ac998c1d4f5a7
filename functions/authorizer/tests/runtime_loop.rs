//! The `authorizer` binary under a local Lambda Runtime API with the environment
//! `infra/template.yaml` gives it: main.rs's wiring (environment built at cold start,
//! lambda_runtime's loop), not only the handler. The init-error path is checked here too (the authorizer builds its partners from the pipeline file).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("authorizer", env!("CARGO_BIN_EXE_authorizer"))
}

/// An HTTP API authorizer request without a valid token: denied, with no call to anything.
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = fixture(&root, "apigw-authorizer-v2-request.json");
    let answers = time_cold_starts(
        "authorizer",
        &binary(),
        &example_config(&root),
        dir.path(),
        &stack_env("authorizer", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        let r = answer.response();
        assert_eq!(r["isAuthorized"], serde_json::json!(false), "{r}");
    }
}

#[test]
fn a_bad_pipeline_file_is_an_init_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_init_error(&binary(), dir.path());
}
