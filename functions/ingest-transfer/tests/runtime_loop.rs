//! The `ingest-transfer` binary under a local Lambda Runtime API: a cold start that cannot build its
//! environment is reported to `/runtime/init/error`, as the other functions do.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use runtime_api::*;

#[test]
fn a_bad_pipeline_file_is_an_init_error() {
    let dir = tempfile::tempdir().unwrap();
    let binary = runtime_api::binary("ingest-transfer", env!("CARGO_BIN_EXE_ingest-transfer"));
    assert_init_error(&binary, dir.path());
}

/// The S3 test event (sent once when a notification is set up): it announces no object, so nothing is read from S3 and nothing goes to Step Functions.
#[test]
fn cold_start_with_the_stacks_environment() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let event = fixture(&root, "s3-test-event.json");
    let answers = time_cold_starts(
        "ingest-transfer",
        &runtime_api::binary("ingest-transfer", env!("CARGO_BIN_EXE_ingest-transfer")),
        &example_config(&root),
        dir.path(),
        &stack_env("ingest-transfer", NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        let r = answer.response();
        assert_eq!(
            (r["objects"].as_u64(), r["executions"].as_u64()),
            (Some(0), Some(0)),
            "{r}"
        );
    }
}
