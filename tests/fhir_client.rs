//! Acceptance: a real FHIR client not written here — the SMART on FHIR Python client
//! (PyPI `fhirclient`) — reads through `fhir-unify serve`: the CapabilityStatement, a read,
//! a search paged by following `next` links, and a history.
//!
//! `scripts/test.sh` installs fhirclient into `.venv` (ignored by git); another Python
//! with fhirclient can be named with `FHIR_UNIFY_PYTHON`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod partners;
    pub mod server;
}

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::partners::{Fault, authorization};
use common::server::start;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FHIR_UNIFY_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/test.sh, which installs the fhirclient package there \
         (or set FHIR_UNIFY_PYTHON to a Python that has it)",
        p.display()
    );
    p
}

#[tokio::test]
async fn fhirclient_reads_searches_pages_and_history() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let token = authorization("acme", "system/Patient.rs", Fault::None).unwrap();
    let token = token.strip_prefix("Bearer ").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/fhirclient_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&server.base)
        .arg(token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fhirclient failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["fhirVersion"], "4.0.1");
    assert!(
        seen["types"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "Patient")
    );
    assert_eq!(seen["read"], "x1");
    // Female patients: x1, p001, p003, p005, p007 at two a page.
    assert_eq!(
        seen["ids"],
        serde_json::json!(["p001", "p003", "p005", "p007", "x1"])
    );
    assert_eq!(seen["pages"], 3);
    assert_eq!(seen["historyType"], "history");
    assert_eq!(seen["versions"], serde_json::json!(["W/\"2\"", "W/\"1\""]));
}
