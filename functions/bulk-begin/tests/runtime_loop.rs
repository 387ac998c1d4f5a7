//! The `bulk-begin` binary under a local Lambda Runtime API with the environment
//! `infra/template.yaml` gives it: main.rs's wiring (environment built at cold start,
//! lambda_runtime's loop), not only the handler.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("bulk-begin", env!("CARGO_BIN_EXE_bulk-begin"))
}

/// A request of the wrong shape: refused before the versions table, SSM or S3 is called (every real request of this step calls DynamoDB; the timing is that of the runtime and the environment).
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = serde_json::json!({ "unexpected": true });
    let answers = time_cold_starts(
        "bulk-begin",
        &binary(),
        &example_config(&root),
        dir.path(),
        &stack_env("bulk-begin", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        match answer {
            Answer::Error {
                error_type,
                error_message,
                ..
            } => {
                assert!(error_type.starts_with("FhirUnify."), "{answer:?}");
                assert!(!error_message.is_empty());
            }
            other => panic!("expected the refusal, got {other:?}"),
        }
    }
}
