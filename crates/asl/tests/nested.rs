//! `arn:aws:states:::states:startExecution` and its `.sync` / `.sync:2` forms: child state
//! machines resolved by ARN from the registry, with the result shapes AWS gives.

// Test helpers outside #[test] functions may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use asl::{
    Engine, ExecutionResult, ExecutionStatus, LambdaError, LambdaFunction, StateMachine,
    TaskRegistry, VirtualClock,
};
use async_trait::async_trait;
use serde_json::{Value, json};

#[derive(Default)]
struct Counter(AtomicUsize);

#[async_trait]
impl LambdaFunction for Counter {
    async fn invoke(&self, payload: Value) -> Result<Value, LambdaError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(payload)
    }
}

fn machine(name: &str, def: Value) -> StateMachine {
    StateMachine::parse(&def.to_string())
        .unwrap()
        .with_name(name)
}

/// A child that doubles `n` through a function, and one that fails.
fn registry(counter: Arc<Counter>) -> TaskRegistry {
    let mut reg = TaskRegistry::new();
    reg.register_lambda("count", counter);
    reg.register_state_machine(machine(
        "child",
        json!({"StartAt": "C", "States": {
            "C": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:count", "Next": "D"},
            "D": {"Type": "Pass", "Parameters": {"doubled.$": "States.MathAdd($.n, $.n)"}, "End": true}
        }}),
    ));
    reg.register_state_machine(machine(
        "broken",
        json!({"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "Child.Broke", "Cause": "on purpose"}}}),
    ));
    reg
}

async fn run_parent(mode: &str, child: &str, extra: Value) -> (ExecutionResult, Arc<Counter>) {
    let counter = Arc::new(Counter::default());
    let engine = Engine::new(registry(counter.clone()), Arc::new(VirtualClock::new()));
    let mut task = json!({
        "Type": "Task",
        "Resource": format!("arn:aws:states:::states:startExecution{mode}"),
        "Parameters": {
            "StateMachineArn": format!("arn:aws:states:us-east-1:123456789012:stateMachine:{child}"),
            "Input": {"n.$": "$.n"},
            "Name": "kid"
        },
        "End": true
    });
    for (k, v) in extra.as_object().unwrap() {
        task[k] = v.clone();
    }
    let parent = machine(
        "parent",
        json!({"StartAt": "Start", "States": {"Start": task}}),
    );
    let r = engine
        .start_execution(&parent, Some("p"), json!({"n": 21}))
        .await;
    (r, counter)
}

fn types(r: &ExecutionResult) -> Vec<&str> {
    r.history.iter().map(|e| e.event_type.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn request_response_returns_arn_and_start_date() {
    let (r, counter) = run_parent("", "child", json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    let out = r.output.clone().unwrap();
    assert_eq!(
        out["ExecutionArn"],
        json!("arn:aws:states:us-east-1:123456789012:execution:child:kid")
    );
    assert!(out["StartDate"].is_i64());
    assert_eq!(out["SdkHttpMetadata"]["HttpStatusCode"], json!(200));
    assert_eq!(
        types(&r)[2..5],
        ["TaskScheduled", "TaskStarted", "TaskSucceeded"]
    );
    // The child runs on by itself.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn sync_gives_output_as_text_and_sync2_as_json() {
    let (r, _) = run_parent(".sync", "child", json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    let out = r.output.clone().unwrap();
    assert_eq!(out["Output"], json!("{\"doubled\":42}"));
    assert_eq!(out["Input"], json!("{\"n\":21}"));
    assert_eq!(out["Status"], json!("SUCCEEDED"));
    assert_eq!(out["Name"], json!("kid"));
    assert_eq!(
        types(&r)[2..6],
        [
            "TaskScheduled",
            "TaskStarted",
            "TaskSubmitted",
            "TaskSucceeded"
        ]
    );
    assert_eq!(
        r.history[2].details["resource"],
        json!("startExecution.sync")
    );

    let (r, _) = run_parent(".sync:2", "child", json!({})).await;
    let out = r.output.unwrap();
    assert_eq!(out["Output"], json!({"doubled": 42}));
    assert_eq!(out["Input"], json!({"n": 21}));
    assert_eq!(out["OutputDetails"], json!({"Included": true}));
}

#[tokio::test(start_paused = true)]
async fn failed_child_is_a_task_failure_carrying_its_description() {
    let (r, _) = run_parent(".sync:2", "broken", json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("States.TaskFailed"));
    let cause: Value = serde_json::from_str(r.cause.as_deref().unwrap()).unwrap();
    assert_eq!(cause["Status"], json!("FAILED"));
    assert_eq!(cause["Error"], json!("Child.Broke"));
    assert_eq!(cause["Cause"], json!("on purpose"));
    assert!(cause.get("Output").is_none());
}

#[tokio::test(start_paused = true)]
async fn failed_child_can_be_caught() {
    let counter = Arc::new(Counter::default());
    let engine = Engine::new(registry(counter), Arc::new(VirtualClock::new()));
    let parent = machine(
        "parent",
        json!({"StartAt": "S", "States": {
            "S": {"Type": "Task", "Resource": "arn:aws:states:::states:startExecution.sync",
                  "Parameters": {"StateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:broken"},
                  "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.err", "Next": "Caught"}],
                  "End": true},
            "Caught": {"Type": "Pass", "End": true}
        }}),
    );
    let r = engine.start_execution(&parent, None, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(
        r.output.unwrap()["err"]["Error"],
        json!("States.TaskFailed")
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_child_machine_is_a_typed_error() {
    let (r, _) = run_parent(".sync", "nobody", json!({})).await;
    assert_eq!(
        r.error.as_deref(),
        Some("StepFunctions.StateMachineDoesNotExistException")
    );
    assert!(r.cause.unwrap().contains("stateMachine:nobody"));
}
