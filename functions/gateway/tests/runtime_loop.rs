//! The `gateway` binary under a local Lambda Runtime API with the environment
//! `infra/template.yaml` gives it: main.rs's wiring (environment built at cold start,
//! lambda_runtime's loop), not only the handler.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("gateway", env!("CARGO_BIN_EXE_gateway"))
}

/// A history read without the authorizer's grant: refused by the gateway before any store call (the store is the stack's DynamoDB table).
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = fixture(&root, "apigw-v2-history-no-authorizer.json");
    let answers = time_cold_starts(
        "gateway",
        &binary(),
        &example_config(&root),
        dir.path(),
        &stack_env("gateway", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        let r = answer.response();
        let status = r["statusCode"].as_u64().unwrap();
        assert!((400..500).contains(&status), "{r}");
    }
}
