//! Behaviour tests of Wait, Parallel, variables (`Assign`) and the virtual-time clock.

// Test helpers outside #[test] functions may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use asl::{
    Clock, Engine, ExecutionStatus, LambdaError, LambdaFunction, StateMachine, TaskRegistry,
    VirtualClock,
};
use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

/// Sleeps `secs` (on tokio's clock), then echoes its input.
struct Slow {
    secs: u64,
}

#[async_trait]
impl LambdaFunction for Slow {
    async fn invoke(&self, payload: Value) -> Result<Value, LambdaError> {
        tokio::time::sleep(Duration::from_secs(self.secs)).await;
        Ok(payload)
    }
}

fn machine(def: Value) -> StateMachine {
    StateMachine::parse(&def.to_string()).unwrap()
}

fn engine(clock: Arc<VirtualClock>) -> Engine {
    let mut reg = TaskRegistry::new();
    reg.register_lambda("slow", Arc::new(Slow { secs: 30 }));
    Engine::new(reg, clock)
}

const SLOW: &str = "arn:aws:lambda:us-east-1:123456789012:function:slow";

#[tokio::test(start_paused = true)]
async fn waits_advance_virtual_time_exactly() {
    let start = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(VirtualClock::starting_at(start));
    let sm = machine(json!({"StartAt": "A", "States": {
        "A": {"Type": "Wait", "Seconds": 3600, "Next": "B"},
        "B": {"Type": "Wait", "SecondsPath": "$.s", "Next": "C"},
        "C": {"Type": "Wait", "Timestamp": "2030-01-01T02:00:00Z", "Next": "D"},
        "D": {"Type": "Wait", "TimestampPath": "$.t", "Next": "E"},
        "E": {"Type": "Pass", "Parameters": {"now.$": "$$.State.EnteredTime"}, "End": true}
    }}));
    let r = engine(clock.clone())
        .start_execution(
            &sm,
            None,
            json!({"s": 60, "t": "2030-01-01T03:00:00+01:00"}),
        )
        .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    // A timestamp in the past (03:00+01:00 is 02:00Z) does not wait.
    assert_eq!(r.output, Some(json!({"now": "2030-01-01T02:00:00.000Z"})));
    assert_eq!(clock.now(), start + chrono::Duration::hours(2));
}

#[tokio::test(start_paused = true)]
async fn wait_path_errors_name_the_path_and_value() {
    let sm = machine(json!({"StartAt": "W", "States": {
        "W": {"Type": "Wait", "SecondsPath": "$.s", "End": true}
    }}));
    let eng = engine(Arc::new(VirtualClock::new()));
    for (input, detail) in [
        (json!({"s": -2}), "references a negative value: $.s == -2"),
        (
            json!({"s": 1.5}),
            "cannot be parsed as a long value: $.s == 1.5",
        ),
        (
            json!({"s": "10"}),
            "cannot be parsed as a long value: $.s == 10",
        ),
    ] {
        let r = eng.start_execution(&sm, None, input).await;
        assert_eq!(r.status, ExecutionStatus::Failed);
        assert_eq!(r.error.as_deref(), Some("States.Runtime"));
        assert!(
            r.cause.as_deref().unwrap().ends_with(detail),
            "{:?}",
            r.cause
        );
    }
    let r = eng.start_execution(&sm, None, json!({})).await;
    assert_eq!(r.error.as_deref(), Some("States.Runtime"));
    let sm = machine(json!({"StartAt": "W", "States": {
        "W": {"Type": "Wait", "TimestampPath": "$.t", "End": true}
    }}));
    let r = eng
        .start_execution(&sm, None, json!({"t": "2016-12-05T21:29:29"}))
        .await;
    assert!(r.cause.as_deref().unwrap().ends_with(
        "does not reference a valid ISO-8601 extended offset date-time format string: $.t == 2016-12-05T21:29:29"
    ));
}

#[tokio::test(start_paused = true)]
async fn timeouts_fire_only_when_virtual_time_passes_them() {
    let clock = Arc::new(VirtualClock::new());
    let task = |timeout: u64| {
        machine(json!({"StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": SLOW, "TimeoutSeconds": timeout, "End": true}
        }}))
    };
    let eng = engine(clock);
    let r = eng.start_execution(&task(31), None, json!(1)).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    let r = eng.start_execution(&task(29), None, json!(1)).await;
    assert_eq!(r.error.as_deref(), Some("States.Timeout"));
    // Heartbeats: no local task sends one, so HeartbeatSeconds bounds the call.
    let sm = machine(json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": SLOW, "TimeoutSeconds": 100, "HeartbeatSeconds": 10, "End": true,
              "Catch": [{"ErrorEquals": ["States.Timeout"], "Next": "C"}]},
        "C": {"Type": "Pass", "End": true}
    }}));
    let r = eng.start_execution(&sm, None, json!({})).await;
    assert_eq!(
        r.output,
        Some(json!({"Error": "States.HeartbeatTimeout"})),
        "{r:?}"
    );
    // The machine's own timeout against a long Wait.
    let sm = machine(json!({"TimeoutSeconds": 5, "StartAt": "W", "States": {
        "W": {"Type": "Wait", "Seconds": 60, "End": true}
    }}));
    let r = eng.start_execution(&sm, None, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::TimedOut);
    let sm = machine(json!({"TimeoutSeconds": 61, "StartAt": "W", "States": {
        "W": {"Type": "Wait", "Seconds": 60, "End": true}
    }}));
    let r = eng.start_execution(&sm, None, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn parallel_keeps_branch_order_and_fails_with_the_branch_error() {
    let eng = engine(Arc::new(VirtualClock::new()));
    let sm = machine(json!({"StartAt": "P", "States": {"P": {
        "Type": "Parallel", "End": true,
        "Parameters": {"v.$": "$.v"},
        "ResultSelector": {"first.$": "$[0]", "second.$": "$[1].v"},
        "ResultPath": "$.out",
        "Branches": [
            {"StartAt": "Slow", "States": {"Slow": {"Type": "Task", "Resource": SLOW, "End": true}}},
            {"StartAt": "Fast", "States": {"Fast": {"Type": "Pass", "End": true}}}
        ]
    }}}));
    let r = eng.start_execution(&sm, None, json!({"v": 7})).await;
    assert_eq!(
        r.output,
        Some(json!({"v": 7, "out": {"first": {"v": 7}, "second": 7}}))
    );
    let types: Vec<&str> = r.history.iter().map(|e| e.event_type.as_str()).collect();
    assert!(types.contains(&"ParallelStateStarted"));

    let sm = machine(json!({"StartAt": "P", "States": {
        "P": {"Type": "Parallel", "Next": "Done",
              "Catch": [{"ErrorEquals": ["Boom"], "ResultPath": "$.err", "Next": "Caught"}],
              "Branches": [
                {"StartAt": "S", "States": {"S": {"Type": "Task", "Resource": SLOW, "End": true}}},
                {"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "Boom", "Cause": "why"}}}
              ]},
        "Done": {"Type": "Succeed"},
        "Caught": {"Type": "Pass", "End": true}
    }}));
    let r = eng.start_execution(&sm, None, json!({})).await;
    assert_eq!(
        r.output,
        Some(json!({"err": {"Error": "Boom", "Cause": "why"}}))
    );
}

#[tokio::test(start_paused = true)]
async fn variables_are_scoped_and_assigned_after_the_state() {
    let eng = engine(Arc::new(VirtualClock::new()));
    let sm = machine(json!({"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Parameters": {"n": 2}, "Assign": {"n.$": "$.n", "lit": "$.not-a-path", "old.$": "$n"}, "Next": "M"},
        "M": {"Type": "Map", "ItemsPath": "$.items", "ResultPath": "$.m",
              "ItemSelector": {"i.$": "$$.Map.Item.Value", "n.$": "$n"},
              "ItemProcessor": {"StartAt": "I", "States": {
                "I": {"Type": "Pass", "Assign": {"n": 100}, "Parameters": {"sum.$": "States.MathAdd($.i, $n)"}, "End": true}
              }}, "Next": "B"},
        "B": {"Type": "Pass", "Parameters": {"n.$": "$n", "lit.$": "$lit", "m.$": "$.m"}, "End": true}
    }}));
    // `old.$: $n` reads n before A assigns it: an unknown variable is a runtime error.
    let r = eng
        .start_execution(&sm, None, json!({"items": [1, 2]}))
        .await;
    assert_eq!(r.error.as_deref(), Some("States.Runtime"), "{r:?}");

    let sm = machine(json!({"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Parameters": {"n": 2, "items": [1, 2]}, "Assign": {"n.$": "$.n", "lit": "$.not-a-path"}, "Next": "M"},
        "M": {"Type": "Map", "ItemsPath": "$.items", "ResultPath": "$.m",
              "ItemSelector": {"i.$": "$$.Map.Item.Value"},
              "ItemProcessor": {"StartAt": "I", "States": {
                "I": {"Type": "Pass", "Parameters": {"sum.$": "States.MathAdd($.i, $n)"}, "Assign": {"n": 100}, "End": true}
              }}, "Next": "B"},
        "B": {"Type": "Pass", "Parameters": {"n.$": "$n", "lit.$": "$lit", "m.$": "$.m"}, "End": true}
    }}));
    let r = eng.start_execution(&sm, None, json!({})).await;
    assert_eq!(
        r.output,
        Some(json!({"n": 2, "lit": "$.not-a-path", "m": [{"sum": 3}, {"sum": 4}]})),
        "{r:?}"
    );
    let exited = r
        .history
        .iter()
        .find(|e| e.event_type == "PassStateExited")
        .unwrap();
    assert_eq!(exited.details["assignedVariables"]["n"], json!("2"));

    // Choice: the matched rule's Assign, else the state's own on the Default path.
    let sm = machine(json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Assign": {"how": "default"}, "Default": "D",
              "Choices": [{"Variable": "$.x", "NumericEquals": 1, "Assign": {"how": "rule"}, "Next": "D"}]},
        "D": {"Type": "Pass", "Parameters": {"how.$": "$how"}, "End": true}
    }}));
    for (x, how) in [(1, "rule"), (2, "default")] {
        let r = eng.start_execution(&sm, None, json!({"x": x})).await;
        assert_eq!(r.output, Some(json!({"how": how})));
    }
}

#[tokio::test(start_paused = true)]
async fn mocked_states_answer_by_invocation_and_call_nothing() {
    let config = r#"{
      "StateMachines": {"Sm": {"TestCases": {"Retry": {"Call": "FailOnce"}}}},
      "MockedResponses": {"FailOnce": {
        "0": {"Throw": {"Error": "Lambda.TooManyRequestsException", "Cause": "slow down"}},
        "1": {"Return": {"StatusCode": 200, "Payload": {"ok": true}}}}}}"#;
    let mut reg = TaskRegistry::new();
    reg.mock_states(asl::mock::load_test_case(config, Some("Sm"), "Retry").unwrap());
    let eng = Engine::new(reg, Arc::new(VirtualClock::new()));
    // The function does not exist: a mocked state never calls it.
    let sm = machine(json!({"StartAt": "Call", "States": {"Call": {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": "missing", "Payload.$": "$"},
        "ResultSelector": {"ok.$": "$.Payload.ok"},
        "Retry": [{"ErrorEquals": ["Lambda.TooManyRequestsException"], "IntervalSeconds": 5}],
        "End": true
    }}}));
    let r = eng.start_execution(&sm, None, json!({})).await;
    assert_eq!(r.output, Some(json!({"ok": true})), "{r:?}");
    let types: Vec<&str> = r.history.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types.iter().filter(|t| **t == "TaskFailed").count(),
        1,
        "{types:?}"
    );
}
