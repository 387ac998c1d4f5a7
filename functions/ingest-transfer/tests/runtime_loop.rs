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
