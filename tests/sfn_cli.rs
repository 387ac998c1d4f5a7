//! `fhir-unify sfn validate` and `fhir-unify sfn run` as a user calls them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn sfn(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fhir-unify"))
        .current_dir(dir)
        .arg("sfn")
        .args(args)
        .output()
        .unwrap()
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

fn stdout_json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}; stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

const FN_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:work";

fn machine() -> Value {
    json!({"StartAt": "Wait", "TimeoutSeconds": 3600, "States": {
        "Wait": {"Type": "Wait", "Seconds": 600, "Next": "Work"},
        "Work": {"Type": "Task", "Resource": FN_ARN, "ResultPath": "$.result",
                 "Retry": [{"ErrorEquals": ["Busy"], "IntervalSeconds": 30, "MaxAttempts": 2}],
                 "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}],
                 "End": true},
        "Failed": {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"}
    }})
}

#[test]
fn validate_accepts_good_and_names_the_fault_in_bad_definitions() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ok.asl.json", &machine());
    let o = sfn(dir.path(), &["validate", "ok.asl.json"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("valid (3 states)"));

    let mut bad = machine();
    bad["States"]["Work"]["Nxt"] = json!("Failed");
    write(dir.path(), "bad.asl.json", &bad);
    let o = sfn(dir.path(), &["validate", "bad.asl.json"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("state 'Work'") && err.contains("Nxt"), "{err}");

    std::fs::write(
        dir.path().join("sub.asl.json"),
        r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"${Fn}","End":true}}}"#,
    )
    .unwrap();
    let o = sfn(dir.path(), &["validate", "sub.asl.json"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("${Fn}"));
    let o = sfn(
        dir.path(),
        &["validate", "sub.asl.json", "--set", &format!("Fn={FN_ARN}")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn run_with_functions_on_virtual_time() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.asl.json", &machine());
    write(
        dir.path(),
        "ok.json",
        &json!({FN_ARN: {"returns": {"done": true}, "sleep_seconds": 120}}),
    );
    let started = std::time::Instant::now();
    let o = sfn(
        dir.path(),
        &[
            "run",
            "m.asl.json",
            "--input",
            r#"{"id": 7}"#,
            "--functions",
            "ok.json",
            "--virtual-time",
            "--history",
        ],
    );
    let v = stdout_json(&o);
    assert!(
        started.elapsed().as_secs() < 60,
        "virtual time did not skip the waits"
    );
    assert_eq!(v["status"], "SUCCEEDED");
    assert_eq!(v["output"], json!({"id": 7, "result": {"done": true}}));
    let history = v["history"].as_array().unwrap();
    assert_eq!(history[0]["type"], "ExecutionStarted");
    assert_eq!(
        history[0]["executionStartedEventDetails"]["input"],
        json!(r#"{"id":7}"#)
    );
    assert!(
        history
            .iter()
            .any(|e| e["type"] == "LambdaFunctionSucceeded")
    );
    // The clock moved by the Wait and the function's own 120 s.
    let t =
        |e: &Value| chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
    let span = t(history.last().unwrap()) - t(&history[0]);
    // Timestamps are written to the millisecond, and the real time the run takes (a few
    // milliseconds, more on a loaded machine) adds to the simulated 720 s.
    let drift = (span.num_milliseconds() - 720_000).abs();
    assert!(
        drift < 1_000,
        "span {span} is not the 720 s of the Wait and the function"
    );

    // A raise, retried, then caught and re-thrown by the Fail state: still exit 0.
    write(
        dir.path(),
        "busy.json",
        &json!({"work": {"raises": "Busy", "message": "later"}}),
    );
    let v = stdout_json(&sfn(
        dir.path(),
        &[
            "run",
            "m.asl.json",
            "--functions",
            "busy.json",
            "--virtual-time",
        ],
    ));
    assert_eq!(v["status"], "FAILED");
    assert_eq!(v["error"], "Busy");
    let cause: Value = serde_json::from_str(v["cause"].as_str().unwrap()).unwrap();
    assert_eq!(cause["errorMessage"], "later");
    assert!(v.get("history").is_none());

    // The machine's TimeoutSeconds against a slow function, in simulated time.
    write(
        dir.path(),
        "slow.json",
        &json!({"work": {"returns": "input", "sleep_seconds": 7200}}),
    );
    let v = stdout_json(&sfn(
        dir.path(),
        &[
            "run",
            "m.asl.json",
            "--functions",
            "slow.json",
            "--virtual-time",
        ],
    ));
    assert_eq!(v["status"], "TIMED_OUT");
}

#[test]
fn run_with_a_mock_configuration_test_case() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.asl.json", &machine());
    write(
        dir.path(),
        "mocks.json",
        &json!({
            "StateMachines": {"m": {"TestCases": {
                "HappyPath": {"Work": "Done"},
                "Retries": {"Work": "BusyThenDone"},
                "GivesUp": {"Work": "AlwaysBusy"}
            }}},
            "MockedResponses": {
                "Done": {"0": {"Return": {"done": 1}}},
                "BusyThenDone": {"0-1": {"Throw": {"Error": "Busy", "Cause": "later"}}, "2": {"Return": {"done": 3}}},
                "AlwaysBusy": {"0": {"Throw": {"Error": "Busy", "Cause": "never"}}}
            }
        }),
    );
    let run = |case: &str| {
        stdout_json(&sfn(
            dir.path(),
            &[
                "run",
                "m.asl.json",
                "--mock-config",
                "mocks.json",
                "--test-case",
                case,
                "--virtual-time",
            ],
        ))
    };
    assert_eq!(run("HappyPath")["output"], json!({"result": {"done": 1}}));
    assert_eq!(run("Retries")["output"], json!({"result": {"done": 3}}));
    let v = run("GivesUp");
    assert_eq!(
        (&v["status"], &v["error"], &v["cause"]),
        (&json!("FAILED"), &json!("Busy"), &json!("never"))
    );

    let o = sfn(
        dir.path(),
        &[
            "run",
            "m.asl.json",
            "--mock-config",
            "mocks.json",
            "--test-case",
            "Nope",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Nope"));
}

#[test]
fn runs_that_cannot_happen_exit_non_zero_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.asl.json", &machine());
    let cases: [(&[&str], &str); 4] = [
        (&["run", "missing.asl.json"], "cannot read"),
        (&["run", "m.asl.json", "--input", "{not json"], "not JSON"),
        (
            &["run", "m.asl.json", "--functions", "missing.json"],
            "cannot read",
        ),
        (
            &["run", "m.asl.json", "--mock-config", "x.json"],
            "--test-case",
        ),
    ];
    for (args, msg) in cases {
        let o = sfn(dir.path(), args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    std::fs::write(dir.path().join("f.json"), r#"{"work": {"raises": 1}}"#).unwrap();
    let o = sfn(dir.path(), &["run", "m.asl.json", "--functions", "f.json"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("/work/raises"));
}
