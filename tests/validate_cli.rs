//! `fhir-unify validate`: output shape (one OperationOutcome, or an array in input order),
//! exit statuses (0 valid, 1 an error, 2 an input that cannot be opened), `--load` and
//! `--profile`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn validate(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fhir-unify"))
        .current_dir(cwd)
        .arg("validate")
        .args(args)
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, value: &Value) {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(value).unwrap()).unwrap();
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn good_patient() -> Value {
    json!({"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-31",
           "name": [{"family": "Doe", "given": ["Jane"]}]})
}

#[test]
fn one_valid_file_prints_one_outcome_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.json", &good_patient());
    let out = validate(dir.path(), &["good.json"]);
    assert_eq!(out.status.code(), Some(0));
    let oo = stdout_json(&out);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(
        oo["issue"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["severity"] != "error")
    );
}

#[test]
fn several_files_give_an_array_in_order_and_exit_1_on_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.json", &good_patient());
    let mut bad = good_patient();
    bad["birthDate"] = json!("31/01/1970");
    bad["gender"] = json!("f");
    write(dir.path(), "bad.json", &bad);
    std::fs::write(
        dir.path().join("broken.json"),
        "{\n  \"resourceType\": \"Patient\",\n  oops\n}",
    )
    .unwrap();
    let out = validate(dir.path(), &["good.json", "bad.json", "broken.json"]);
    assert_eq!(out.status.code(), Some(1));
    let all = stdout_json(&out);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3);
    let errors = |oo: &Value| -> Vec<Value> {
        oo["issue"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["severity"] == "error")
            .cloned()
            .collect()
    };
    assert!(errors(&all[0]).is_empty());
    let bad_errors = errors(&all[1]);
    let places: Vec<&str> = bad_errors
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert!(places.contains(&"Patient.birthDate"), "{places:?}");
    assert!(places.contains(&"Patient.gender"), "{places:?}");
    // Diagnostics never echo the values.
    let text = serde_json::to_string(&all[1]).unwrap();
    assert!(!text.contains("31/01/1970"));
    let broken = errors(&all[2]);
    assert_eq!(broken.len(), 1);
    assert!(
        broken[0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("line 3 column 3"),
        "{broken:?}"
    );
}

#[test]
fn a_missing_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.json", &good_patient());
    let out = validate(dir.path(), &["good.json", "missing.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));
}

#[test]
fn profiles_from_load_and_profile_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let profile = json!({
        "resourceType": "StructureDefinition", "url": "http://example.org/needs-identifier",
        "type": "Patient", "derivation": "constraint", "kind": "resource",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "differential": {"element": [
            {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1}
        ]}
    });
    std::fs::create_dir(dir.path().join("defs")).unwrap();
    write(&dir.path().join("defs"), "profile.json", &profile);
    write(dir.path(), "good.json", &good_patient());
    // By canonical URL after --load.
    let out = validate(
        dir.path(),
        &[
            "good.json",
            "--load",
            "defs",
            "--profile",
            "http://example.org/needs-identifier",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Patient.identifier: minimum required = 1"));
    // As a file.
    let out = validate(dir.path(), &["good.json", "--profile", "defs/profile.json"]);
    assert_eq!(out.status.code(), Some(1));
    // meta.profile names it, and --load makes it known.
    let mut claimed = good_patient();
    claimed["meta"] = json!({"profile": ["http://example.org/needs-identifier"]});
    write(dir.path(), "claimed.json", &claimed);
    assert_eq!(
        validate(dir.path(), &["claimed.json", "--load", "defs"])
            .status
            .code(),
        Some(1)
    );
    // Without --load it is reported as not checked, not an error.
    let out = validate(dir.path(), &["claimed.json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is not loaded"));
    // An unknown profile URL stops the command.
    let out = validate(
        dir.path(),
        &["good.json", "--profile", "http://example.org/nope"],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_counts_bundle_entries_and_ndjson_lines() {
    let dir = tempfile::tempdir().unwrap();
    let bad = json!({"resourceType": "Patient", "gender": "nope"});
    write(
        dir.path(),
        "b.json",
        &json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": good_patient()}, {"resource": bad}]}),
    );
    let lines = format!(
        "{}\n{}\n",
        serde_json::to_string(&good_patient()).unwrap(),
        serde_json::to_string(&good_patient()).unwrap()
    );
    std::fs::write(dir.path().join("c.ndjson"), lines).unwrap();
    let out = validate(dir.path(), &["--bench", "2", "b.json", "c.ndjson"]);
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["resources"], 4);
    assert_eq!(v["passes"], 2);
    assert_eq!(v["resources_with_errors"], 1);
    assert!(v["resources_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["load_ms"].as_f64().unwrap() > 0.0);
    // A corpus line that is not JSON stops the measurement (exit 2), naming the line.
    std::fs::write(dir.path().join("d.ndjson"), "{}\nnot json\n").unwrap();
    let out = validate(dir.path(), &["--bench", "1", "d.ndjson"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}
