//! The `fhir-unify` command as a new user runs it: from a folder that holds the example,
//! with no flags, then reading what it made.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod partners;
}

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A working folder holding a copy of `examples/`, as a clone does.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        &dir.path().join("examples"),
    );
    dir
}

fn fhir_unify(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fhir-unify"))
        .args(args)
        .current_dir(cwd)
        .env_remove("FHIR_UNIFY_CONFIG")
        .env_remove("FHIR_UNIFY_DATA_DIR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_then_get_and_history_from_a_folder_holding_the_example() {
    let dir = workdir();
    let out = fhir_unify(dir.path(), &["run"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("records in    29"), "{stdout}");
    assert!(
        stdout.contains("created 16 · updated 3 · unchanged 1 · deleted 2 · stale 1"),
        "{stdout}"
    );
    assert!(stdout.contains("quarantined   6"), "{stdout}");
    assert!(stdout.contains("events        21"), "{stdout}");
    // Data under the working folder by default.
    let events = std::fs::read_to_string(dir.path().join(".fhir-unify/events.ndjson")).unwrap();
    let first: Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    let reference = format!("Patient/{}", first["detail"]["id"].as_str().unwrap());

    let got = fhir_unify(dir.path(), &["get", &reference]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    let resource: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(resource["resourceType"], "Patient");
    assert_eq!(resource["meta"]["versionId"], "2");

    let history = fhir_unify(dir.path(), &["history", &reference]);
    assert!(history.status.success(), "{}", text(&history.stderr));
    let bundle: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["total"], 2);
    assert_eq!(bundle["entry"][0]["response"]["etag"], "W/\"2\"");

    let listed = fhir_unify(dir.path(), &["quarantine", "list"]);
    let listed = text(&listed.stdout);
    assert_eq!(listed.lines().count(), 4 + 1 + 1, "{listed}");
    assert!(
        listed.contains("20240427-015534228.parquet row 1") && listed.contains("unknown Op"),
        "{listed}"
    );
    assert!(
        listed.contains("p-1004") && listed.contains("birthDate"),
        "{listed}"
    );
    assert!(
        listed.contains("p-1005") && listed.contains("family"),
        "{listed}"
    );
    assert!(listed.contains("400000000000000000006"), "{listed}");
}

#[test]
fn reading_what_is_not_there_says_so() {
    let dir = workdir();
    let none = fhir_unify(dir.path(), &["get", "Patient/x"]);
    assert!(!none.status.success());
    assert!(
        text(&none.stderr).contains("no store"),
        "{}",
        text(&none.stderr)
    );
    assert!(fhir_unify(dir.path(), &["run"]).status.success());
    let missing = fhir_unify(dir.path(), &["get", "Patient/does-not-exist"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("not found"));
    let bad = fhir_unify(dir.path(), &["get", "not-a-reference"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("not a reference like Patient/123"));
}

#[test]
fn a_bad_pipeline_file_is_refused_with_its_line() {
    let dir = workdir();
    let config = dir.path().join("examples/fhir-unify.yaml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, original.replace("quarantine:", "quarantine_:")).unwrap();
    let out = fhir_unify(dir.path(), &["run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("examples/fhir-unify.yaml")
            && err.contains("quarantine_")
            && err.contains("line"),
        "{err}"
    );
    assert!(
        !dir.path().join(".fhir-unify/store.db").exists(),
        "nothing runs on a bad file"
    );
}

#[test]
fn the_data_folder_and_pipeline_file_can_be_named() {
    let dir = workdir();
    let elsewhere = tempfile::tempdir().unwrap();
    let data = elsewhere.path().join("data");
    let config = dir.path().join("examples/fhir-unify.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_fhir-unify"))
        .arg("run")
        .current_dir(elsewhere.path())
        .env("FHIR_UNIFY_CONFIG", &config)
        .env("FHIR_UNIFY_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(data.join("store.db").is_file() && data.join("events.ndjson").is_file());
    assert!(!elsewhere.path().join(".fhir-unify").exists());
}

#[test]
fn with_a_fhir_server_as_the_store_run_get_and_history_use_that_server() {
    // The project's own FHIR API over a SQLite store it keeps to itself, on loopback.
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let (base, token, _server) = tokio.block_on(common::partners::fhir_api(
        &["Patient", "Observation", "Basic"],
        "system/*.cruds",
    ));
    let dir = workdir();
    let config = dir.path().join("examples/fhir-unify.yaml");
    let original = std::fs::read_to_string(&config).unwrap();
    let embedded = "  sqlite: { path: store.db }";
    assert!(original.contains(embedded));
    std::fs::write(
        &config,
        original.replace(
            embedded,
            &format!(
                "  rest: {{ base: \"{base}\", auth: bearer, token_env: EXAMPLE_SERVER_TOKEN }}"
            ),
        ),
    )
    .unwrap();
    let with_token = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_fhir-unify"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("FHIR_UNIFY_CONFIG")
            .env_remove("FHIR_UNIFY_DATA_DIR")
            .env("EXAMPLE_SERVER_TOKEN", &token)
            .output()
            .unwrap()
    };

    let no_token = fhir_unify(dir.path(), &["run"]);
    assert_eq!(no_token.status.code(), Some(1));
    assert!(
        text(&no_token.stderr).contains("$EXAMPLE_SERVER_TOKEN"),
        "{}",
        text(&no_token.stderr)
    );

    // The same outcomes as over the embedded store, and the same events, relayed from the
    // ledger under the data folder.
    let out = with_token(&["run"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("created 16 · updated 3 · unchanged 1 · deleted 2 · stale 1"),
        "{stdout}"
    );
    assert!(stdout.contains("quarantined   6"), "{stdout}");
    assert!(stdout.contains("events        21"), "{stdout}");
    let data = dir.path().join(".fhir-unify");
    assert!(
        !data.join("store.db").exists(),
        "the embedded store is not used"
    );
    assert!(data.join("ledger.db").is_file());
    let events = std::fs::read_to_string(data.join("events.ndjson")).unwrap();
    let ids: std::collections::HashSet<String> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["detail"]["eventId"].to_string())
        .collect();
    assert_eq!(
        ids.len(),
        21,
        "one event per committed version, none repeated"
    );

    let first: Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    let reference = format!("Patient/{}", first["detail"]["id"].as_str().unwrap());
    let got = with_token(&["get", &reference]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    let resource: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(resource["meta"]["versionId"], "2");
    let history = with_token(&["history", &reference]);
    assert!(history.status.success(), "{}", text(&history.stderr));
    let bundle: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(bundle["total"], 2);

    // Dataset versions cannot live on a FHIR server: `load` says so instead of loading
    // into an embedded store nobody reads.
    let load = with_token(&["load", "clinic", "examples/dms/clinic"]);
    assert_eq!(load.status.code(), Some(1));
    assert!(
        text(&load.stderr).contains("dataset loads"),
        "{}",
        text(&load.stderr)
    );
}
