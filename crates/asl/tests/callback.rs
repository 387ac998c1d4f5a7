//! `.waitForTaskToken`: the task hands `$$.Task.Token` to a service and waits for
//! SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat on the engine handle, or for its
//! TimeoutSeconds / HeartbeatSeconds. Runs on paused (virtual) time.

// Test helpers outside #[test] functions may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use asl::{
    Engine, ExecutionResult, ExecutionStatus, ServiceIntegration, StateMachine, TaskError,
    TaskRegistry, TaskTokenError, VirtualClock,
};
use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A queue that hands each message body to the test.
struct Queue(mpsc::UnboundedSender<Value>);

#[async_trait]
impl ServiceIntegration for Queue {
    async fn call(&self, _resource: &str, parameters: Value) -> Result<Value, TaskError> {
        let _ = self.0.send(parameters["MessageBody"].clone());
        Ok(json!({"MessageId": "m-1"}))
    }
}

fn definition(extra: Value) -> StateMachine {
    let mut task = json!({
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {"QueueUrl": "q", "MessageBody": {"token.$": "$$.Task.Token", "order.$": "$.order"}},
        "Catch": [{"ErrorEquals": ["Declined"], "Next": "Declined"}],
        "End": true
    });
    for (k, v) in extra.as_object().unwrap() {
        task[k] = v.clone();
    }
    let def = json!({"StartAt": "Ask", "States": {"Ask": task, "Declined": {"Type": "Pass", "End": true}}});
    StateMachine::parse(&def.to_string()).unwrap()
}

fn start(
    extra: Value,
) -> (
    Engine,
    mpsc::UnboundedReceiver<Value>,
    JoinHandle<ExecutionResult>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut reg = TaskRegistry::new();
    reg.register_service("arn:aws:states:::sqs:sendMessage", Arc::new(Queue(tx)));
    let engine = Engine::new(reg, Arc::new(VirtualClock::new()));
    let sm = definition(extra);
    let e = engine.clone();
    let run =
        tokio::spawn(async move { e.start_execution(&sm, Some("x"), json!({"order": 7})).await });
    (engine, rx, run)
}

fn types(r: &ExecutionResult) -> Vec<&str> {
    r.history.iter().map(|e| e.event_type.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn waits_for_success_without_polling() {
    let began = tokio::time::Instant::now();
    let (engine, mut rx, run) = start(json!({}));
    let body = rx.recv().await.unwrap();
    assert_eq!(body["order"], json!(7));
    let token = body["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    engine
        .send_task_success(&token, json!({"approved": true}))
        .unwrap();
    let r = run.await.unwrap();
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(r.output, Some(json!({"approved": true})));
    assert_eq!(
        types(&r),
        [
            "ExecutionStarted",
            "TaskStateEntered",
            "TaskScheduled",
            "TaskStarted",
            "TaskSubmitted",
            "TaskSucceeded",
            "TaskStateExited",
            "ExecutionSucceeded"
        ]
    );
    assert_eq!(
        r.history[2].details["resource"],
        json!("sendMessage.waitForTaskToken")
    );
    assert!(began.elapsed() >= Duration::from_secs(3600));
    // The task is over: its token is refused as AWS refuses it.
    assert_eq!(
        engine.send_task_success(&token, json!(1)),
        Err(TaskTokenError::TaskTimedOut)
    );
    assert!(matches!(
        engine.send_task_heartbeat("never-issued"),
        Err(TaskTokenError::InvalidToken(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn failure_is_caught_like_any_error() {
    let (engine, mut rx, run) = start(json!({}));
    let token = rx.recv().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    engine
        .send_task_failure(&token, Some("Declined"), Some("not today"))
        .unwrap();
    let r = run.await.unwrap();
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(
        r.output,
        Some(json!({"Error": "Declined", "Cause": "not today"}))
    );
    assert!(types(&r).contains(&"TaskFailed"));
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_the_task_alive_until_they_stop() {
    let began = tokio::time::Instant::now();
    let (engine, mut rx, run) = start(json!({"HeartbeatSeconds": 10, "TimeoutSeconds": 100}));
    let token = rx.recv().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(8)).await;
        engine.send_task_heartbeat(&token).unwrap();
    }
    let r = run.await.unwrap();
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("States.HeartbeatTimeout"));
    // Three heartbeats 8 s apart, then 10 s of silence.
    assert_eq!(began.elapsed(), Duration::from_secs(34));
    assert!(types(&r).contains(&"TaskTimedOut"));
}

#[tokio::test(start_paused = true)]
async fn timeout_bounds_the_whole_wait_despite_heartbeats() {
    let began = tokio::time::Instant::now();
    let (engine, mut rx, run) = start(json!({"HeartbeatSeconds": 10, "TimeoutSeconds": 25}));
    let token = rx.recv().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let beats = tokio::spawn(async move {
        while engine.send_task_heartbeat(&token).is_ok() {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let r = run.await.unwrap();
    assert_eq!(r.error.as_deref(), Some("States.Timeout"));
    assert_eq!(began.elapsed(), Duration::from_secs(25));
    beats.await.unwrap();
}
