//! Change events end to end: the example run's events (all-events file, a rule's target, the
//! archive) against the published JSON Schema, and the `events` commands.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use fhir_unify::config::{DataDir, PipelineConfig};
use fhir_unify::events::schema::check_change_event;
use fhir_unify::local::LocalRuntime;
use serde_json::Value;

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fhir-unify.yaml")
}

fn checked_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            if let Err(problems) = check_change_event(&v) {
                panic!("{}: {v}: {problems:?}", path.display());
            }
            v
        })
        .collect()
}

fn fhir_unify(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fhir-unify"))
        .arg("--config")
        .arg(example())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn every_event_of_the_example_matches_the_schema_and_rules_route_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = PipelineConfig::load(&example()).unwrap();
    let rt = LocalRuntime::open(config, DataDir(dir.path().to_path_buf())).unwrap();
    let summary = rt.run().await.unwrap();
    // 12 from the stream and DMS files, 3 from the Transfer upload, 6 from the partner's API
    // requests.
    assert_eq!(summary.events, 12 + 3 + 6);

    let all = checked_lines(&dir.path().join("events.ndjson"));
    assert_eq!(all.len(), 12 + 3 + 6);
    let deletions = checked_lines(&dir.path().join("deletions.ndjson"));
    assert_eq!(deletions.len(), 2, "the rule takes only the deletions");
    for d in &deletions {
        assert_eq!(d["detail-type"], "FhirResourceDeleted");
        assert!(all.contains(d));
    }

    let bus = rt.env.bus.as_local().expect("the local bus with rules");
    let archived = bus.archive().list(None, 0, 100).unwrap();
    assert_eq!(archived.len(), 12 + 3 + 6);
    for a in &archived {
        check_change_event(&a.envelope).unwrap();
    }
    let ids: Vec<&Value> = all.iter().map(|e| &e["id"]).collect();
    let archived_ids: Vec<&Value> = archived.iter().map(|a| &a.envelope["id"]).collect();
    assert_eq!(ids, archived_ids, "archived in delivery order");
}

#[test]
fn events_list_and_replay_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    assert!(fhir_unify(data, &["run"]).0);

    let (ok, out, err) = fhir_unify(data, &["events", "list"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 12 + 3 + 6, "{out}");
    assert!(out.contains("FhirResourceDeleted"), "{out}");
    let (ok, out, _) = fhir_unify(data, &["events", "list", "--json", "--limit", "2"]);
    assert!(ok);
    for line in out.lines() {
        check_change_event(&serde_json::from_str(line).unwrap()).unwrap();
    }
    assert_eq!(out.lines().count(), 2);
    let (ok, out, _) = fhir_unify(data, &["events", "list", "--since", "2999-01-01"]);
    assert!(ok && out.is_empty(), "{out}");

    let (ok, out, err) = fhir_unify(
        data,
        &[
            "events",
            "replay",
            "--since",
            "2000-01-01",
            "--rule",
            "patient-deletions",
            "--name",
            "fix-1",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("21 archived events") && out.contains("2 deliveries"),
        "{out}"
    );
    let deletions = checked_lines(&data.join("deletions.ndjson"));
    assert_eq!(deletions.len(), 4, "two deletions, each replayed once");
    assert_eq!(deletions[2]["replay-name"], "fix-1");
    assert_eq!(deletions[3]["replay-name"], "fix-1");
    assert_eq!(deletions[0]["id"], deletions[2]["id"]);
    assert_eq!(deletions[1]["id"], deletions[3]["id"]);
    assert_eq!(
        checked_lines(&data.join("events.ndjson")).len(),
        12 + 3 + 6,
        "other rules untouched"
    );

    let (ok, _, err) = fhir_unify(
        data,
        &[
            "events",
            "replay",
            "--since",
            "2000-01-01",
            "--rule",
            "nope",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("nope") && err.contains("patient-deletions"),
        "{err}"
    );
    let (ok, _, err) = fhir_unify(data, &["events", "replay", "--since", "last week"]);
    assert!(!ok);
    assert!(err.contains("--since"), "{err}");
}
