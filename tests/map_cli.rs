//! `fhir-unify map` and `fhir-unify profile`: output shapes, exit statuses (0 / 1 / 2), records
//! from files, stdin and inline JSON, errors that name the mapping, the place and the record
//! (never a value), and profiling with schema drift.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fhir-unify"))
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/synthea")
        .join(name)
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = bin();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
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

fn patient_row() -> Value {
    json!({"Id": "p-1", "BIRTHDATE": "1980-02-03", "FIRST": "Ada", "LAST": "Lovelace",
           "GENDER": "F", "MARITAL": "M", "RACE": "white", "ETHNICITY": "nonhispanic",
           "ZIP": "02081"})
}

#[test]
fn map_prints_resources_with_deterministic_ids() {
    let mapping = example("patients.yaml");
    let inline = patient_row().to_string();
    let args = [
        "map",
        mapping.to_str().unwrap(),
        inline.as_str(),
        "--key",
        "Id",
    ];
    let out = run(&args, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    let r = &v[0]["resources"][0];
    let id = fhir_unify::mapping::resource_id(
        "synthea",
        "patients",
        &fhir_unify::model::RecordKey::from_pairs([("Id", json!("p-1"))]),
        "Patient",
        None,
    );
    assert_eq!(r["reference"], format!("Patient/{id}"));
    assert_eq!(r["resource"]["id"], id);
    assert_eq!(r["resource"]["gender"], "female");
    // Through the marital-status ConceptMap: a Coding with the target system.
    assert_eq!(
        r["resource"]["maritalStatus"]["coding"][0],
        json!({"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M", "display": "Married"})
    );
    // The same again gives the same output.
    assert_eq!(stdout_json(&run(&args, None)), v);
}

#[test]
fn map_reads_stdin_and_files_and_reports_each_record() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.json");
    let mut bad = patient_row();
    bad["MARITAL"] = json!("Q"); // not in the ConceptMap
    bad["Id"] = json!("p-2");
    std::fs::write(&file, json!([patient_row(), bad]).to_string()).unwrap();
    let mapping = example("patients.yaml");
    let out = run(
        &[
            "map",
            mapping.to_str().unwrap(),
            "-",
            file.to_str().unwrap(),
            "--key",
            "Id",
        ],
        Some(&patient_row().to_string()),
    );
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries[0]["resources"].is_array());
    assert!(entries[1]["resources"].is_array());
    let issue = &entries[2]["outcome"]["issue"][0];
    assert_eq!(issue["code"], "code-invalid");
    assert_eq!(issue["expression"][0], "Patient.maritalStatus.coding[0]");
    let text = issue["diagnostics"].as_str().unwrap();
    assert!(text.contains("patients.yaml"), "{text}");
    assert!(text.contains("synthea-marital-status"), "{text}");
    assert!(text.contains("p-2"), "the record key: {text}");
    assert!(!text.contains("\"Q\""), "{text}");
}

#[test]
fn map_bad_inputs_give_1_and_unusable_ones_2() {
    let mapping = example("patients.yaml");
    let m = mapping.to_str().unwrap();
    // A record that is not JSON, one without its key, one that is not an object: 1.
    let out = run(&["map", m, "-", "--key", "Id"], Some("{\"Id\": "));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout_json(&out)[0]["outcome"]["issue"][0]["code"],
        "structure"
    );
    let out = run(&["map", m, "{\"LAST\": \"x\"}", "--key", "Id"], None);
    assert_eq!(out.status.code(), Some(1));
    let issue = &stdout_json(&out)[0]["outcome"]["issue"][0];
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("key field `Id`")
    );
    let out = run(&["map", m, "[1]", "--key", "Id"], None);
    assert_eq!(out.status.code(), Some(1));
    // A required value missing: named by its place and the record.
    let mut row = patient_row();
    row.as_object_mut().unwrap().remove("LAST");
    let out = run(&["map", m, &row.to_string(), "--key", "Id"], None);
    assert_eq!(out.status.code(), Some(1));
    let issue = &stdout_json(&out)[0]["outcome"]["issue"][0];
    assert_eq!(issue["code"], "required");
    assert_eq!(issue["expression"][0], "Patient.name[0].family");
    // A missing mapping file, a missing record file, a broken mapping: 2, nothing on stdout.
    for args in [
        vec!["map", "/nonexistent.yaml", "{}", "--key", "Id"],
        vec!["map", m, "/nonexistent.json", "--key", "Id"],
    ] {
        let out = run(&args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
    }
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "source: s\nentity: e\nconceptMaps: [missing.json]\nresources:\n  - resourceType: Basic\n    template: {a: 1}\n",
    )
    .unwrap();
    let out = run(
        &["map", broken.to_str().unwrap(), "{}", "--key", "Id"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yaml: conceptMaps[0]"), "{err}");
}

#[test]
fn profile_reports_columns_and_schema_drift() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("visits.csv"),
        "id,zip,code,when,n\n1,02081,8302-2,2020-01-02,5\n2,01810,72514-3,2021-03-04,\n3,02081,8302-2,2022-05-06,7\n",
    )
    .unwrap();
    std::fs::write(
        data.join("more.ndjson"),
        "{\"a\": 1, \"b\": \"x\"}\n{\"a\": 2.5}\nnot json\n",
    )
    .unwrap();
    let state = dir.path().join("state.json");
    let args = [
        "profile",
        data.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ];
    let out = run(&args, None);
    // The NDJSON line that is not JSON is reported: exit 1.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    let files = v[0]["files"].as_array().unwrap();
    let nd = &files[0];
    assert_eq!(nd["rows"], 2);
    assert_eq!(
        nd["errors"][0],
        format!(
            "{} line 3: not JSON (column 2)",
            data.join("more.ndjson").display()
        )
    );
    assert_eq!(nd["columns"][0]["inferred_type"], "decimal");
    assert_eq!(nd["columns"][1]["null_rate"], 0.5);
    let csv = &files[1];
    assert_eq!(csv["rows"], 3);
    let col = |name: &str| {
        csv["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(col("zip")["inferred_type"], "string");
    assert_eq!(col("zip")["patterns"][0]["pattern"], "us-postal-code");
    assert_eq!(col("code")["patterns"][0]["pattern"], "loinc");
    assert_eq!(
        col("code")["top"][0],
        json!({"value": "8302-2", "count": 2})
    );
    assert_eq!(col("when")["inferred_type"], "date");
    assert_eq!(col("n")["min"], "5");
    assert_eq!(col("n")["nulls"], 1);
    assert_eq!(col("id")["distinct"], 3);
    assert_eq!(col("id")["distinct_exact"], true);
    assert_eq!(v[0]["drift"]["first_seen"], true);

    // The schema changes: a column goes, one comes, one changes type.
    std::fs::remove_file(data.join("more.ndjson")).unwrap();
    std::fs::write(
        data.join("visits.csv"),
        "id,zip,code,n,extra\nA,02081,8302-2,5,x\n",
    )
    .unwrap();
    let out = run(&args, None);
    assert_eq!(out.status.code(), Some(1));
    let drift = &stdout_json(&out)[0]["drift"];
    assert_eq!(drift["first_seen"], false);
    assert_eq!(drift["added"], json!(["extra"]));
    assert_eq!(drift["removed"], json!(["a", "b", "when"]));
    assert_eq!(drift["retyped"], json!([["id", "integer", "string"]]));
    // The same again: no drift, exit 0.
    let out = run(&args, None);
    assert_eq!(out.status.code(), Some(0));
    // A file that cannot be profiled: 2.
    std::fs::write(data.join("bad.parquet"), "not parquet").unwrap();
    assert_eq!(run(&args, None).status.code(), Some(2));
}

#[test]
fn profile_reads_the_dms_parquet_file() {
    let shared = std::env::var_os("FHIR_UNIFY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let file = shared.join("conformance/dms/real_aws_dms_postgres_LOAD00000001.parquet");
    assert!(
        file.is_file(),
        "the DMS conformance file is missing: {} (set FHIR_UNIFY_SHARED_DIR to the shared/ folder)",
        file.display()
    );
    let out = run(&["profile", file.to_str().unwrap(), "--no-state"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    let f = &v[0]["files"][0];
    assert_eq!(f["format"], "parquet");
    assert_eq!(f["rows"], 10);
    let first = &f["schema"][0];
    assert_eq!(first[0], "DMS_TIMESTAMP");
    assert_eq!(first[1], "datetime");
}
