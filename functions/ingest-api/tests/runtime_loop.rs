//! The `ingest-api` binary under a local Lambda Runtime API with the environment
//! `infra/template.yaml` gives it: main.rs's wiring (environment built at cold start,
//! lambda_runtime's loop), not only the handler.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("ingest-api", env!("CARGO_BIN_EXE_ingest-api"))
}

/// A write whose base64 body does not decode: refused with an OperationOutcome before Step Functions or the store is called.
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = fixture(&root, "api/apigw-v1-bad-base64.json");
    let answers = time_cold_starts(
        "ingest-api",
        &binary(),
        &example_config(&root),
        dir.path(),
        &stack_env("ingest-api", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        let r = answer.response();
        assert_eq!(r["statusCode"].as_u64(), Some(400), "{r}");
        assert!(
            r["body"].as_str().unwrap().contains("OperationOutcome"),
            "{r}"
        );
    }
}
