//! The `ingest-transfer` binary under a local Lambda Runtime API: a cold start that cannot build its
//! environment is reported to `/runtime/init/error`, as the other functions do, and the S3
//! test event starts nothing.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/support/runtime_api.rs"]
#[macro_use]
mod runtime_api;

use runtime_api::*;

s3_ingest_runtime_tests!("ingest-transfer");
