//! The `bulk-finalize` binary under a local Lambda Runtime API with the environment
//! `infra/template.yaml` gives it: main.rs's wiring (environment built at cold start,
//! lambda_runtime's loop), not only the handler.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;

fn binary() -> std::path::PathBuf {
    runtime_api::binary("bulk-finalize", env!("CARGO_BIN_EXE_bulk-finalize"))
}

/// A request of the wrong shape: refused before the versions table, SSM or S3 is called (every real request of this step calls DynamoDB; the timing is that of the runtime and the environment).
#[test]
fn cold_start_with_the_stacks_environment() {
    assert_cold_start_refuses_a_wrong_request(
        env!("CARGO_MANIFEST_DIR"),
        "bulk-finalize",
        &binary(),
    );
}
