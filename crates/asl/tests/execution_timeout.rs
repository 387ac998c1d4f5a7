//! The execution timeout (the machine's TimeoutSeconds, Express's five minutes) runs on the
//! engine's clock: with a TestClock (sleeps return at once) or virtual time, an execution
//! times out exactly when its clock passes the deadline, never by racing the clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use asl::{
    Engine, ExecutionStatus, LambdaError, LambdaFunction, StateMachine, TaskRegistry, TestClock,
    VirtualClock, WorkflowType,
};
use async_trait::async_trait;
use serde_json::{Value, json};

struct Failing;

#[async_trait]
impl LambdaFunction for Failing {
    async fn invoke(&self, _payload: Value) -> Result<Value, LambdaError> {
        Err(LambdaError::new("Boom", "always"))
    }
}

/// Sleeps 30 s of tokio time.
struct Slow;

#[async_trait]
impl LambdaFunction for Slow {
    async fn invoke(&self, payload: Value) -> Result<Value, LambdaError> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(payload)
    }
}

fn machine(def: Value) -> StateMachine {
    StateMachine::parse(&def.to_string()).unwrap()
}

fn engine(clock: Arc<dyn asl::Clock>) -> Engine {
    let mut reg = TaskRegistry::new();
    reg.register_lambda("failing", Arc::new(Failing));
    reg.register_lambda("slow", Arc::new(Slow));
    Engine::new(reg, clock)
}

fn waits(timeout: Option<u64>, seconds: &[u64]) -> Value {
    let mut states = serde_json::Map::new();
    for (i, s) in seconds.iter().enumerate() {
        let mut w = json!({"Type": "Wait", "Seconds": s});
        if i + 1 < seconds.len() {
            w["Next"] = json!(format!("W{}", i + 1));
        } else {
            w["End"] = json!(true);
        }
        states.insert(format!("W{i}"), w);
    }
    let mut def = json!({"StartAt": "W0", "States": states});
    if let Some(t) = timeout {
        def["TimeoutSeconds"] = json!(t);
    }
    def
}

#[tokio::test]
async fn test_clock_times_out_at_the_deadline_not_before() {
    let clock = Arc::new(TestClock::new());
    let start = asl::Clock::now(clock.as_ref());
    let r = engine(clock.clone())
        .start_execution(&machine(waits(Some(100), &[30, 50])), None, json!({}))
        .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(
        clock.sleeps(),
        vec![Duration::from_secs(30), Duration::from_secs(50)]
    );

    let clock = Arc::new(TestClock::new());
    let start2 = asl::Clock::now(clock.as_ref());
    let r = engine(clock.clone())
        .start_execution(&machine(waits(Some(100), &[30, 80])), None, json!({}))
        .await;
    assert_eq!(r.status, ExecutionStatus::TimedOut, "{r:?}");
    assert_eq!(r.history.last().unwrap().event_type, "ExecutionTimedOut");
    // The second Wait is cut at the deadline: 30 + 70 = 100 seconds of the clock.
    assert_eq!(
        clock.sleeps(),
        vec![Duration::from_secs(30), Duration::from_secs(70)]
    );
    assert_eq!(
        (asl::Clock::now(clock.as_ref()) - start2).num_seconds(),
        100
    );
    assert!(start <= start2);
}

#[tokio::test]
async fn test_clock_counts_retry_intervals_and_parallel_branches() {
    let clock = Arc::new(TestClock::new());
    let sm = machine(
        json!({"TimeoutSeconds": 25, "StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:failing",
        "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 10, "MaxAttempts": 5, "BackoffRate": 1}],
        "End": true}}}),
    );
    let r = engine(clock.clone())
        .start_execution(&sm, None, json!({}))
        .await;
    assert_eq!(r.status, ExecutionStatus::TimedOut, "{r:?}");
    let total: Duration = clock.sleeps().iter().sum();
    assert_eq!(total, Duration::from_secs(25));

    // Branches sleep concurrently on a real clock, but a TestClock adds them up: 20 + 20 is
    // within 60, so the run succeeds.
    let clock = Arc::new(TestClock::new());
    let sm = machine(
        json!({"TimeoutSeconds": 60, "StartAt": "P", "States": {"P": {
        "Type": "Parallel", "End": true, "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Wait", "Seconds": 20, "End": true}}},
            {"StartAt": "B", "States": {"B": {"Type": "Wait", "Seconds": 20, "End": true}}}
        ]}}}),
    );
    let r = engine(clock).start_execution(&sm, None, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
}

#[tokio::test]
async fn express_executions_stop_after_five_minutes_of_the_clock() {
    let clock = Arc::new(TestClock::new());
    let e = engine(clock.clone());
    let ok = machine(waits(None, &[299]))
        .with_type(WorkflowType::Express)
        .unwrap();
    assert_eq!(
        e.start_execution(&ok, None, json!({})).await.status,
        ExecutionStatus::Succeeded
    );
    let long = machine(waits(None, &[200, 200]))
        .with_type(WorkflowType::Express)
        .unwrap();
    let r = e.start_execution(&long, None, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::TimedOut, "{r:?}");
    // A machine's longer TimeoutSeconds does not lift the Express limit.
    let capped = machine(waits(Some(1000), &[400]))
        .with_type(WorkflowType::Express)
        .unwrap();
    let r = e.start_execution(&capped, None, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::TimedOut, "{r:?}");
    let slept: Duration = clock.sleeps().iter().sum();
    assert_eq!(slept, Duration::from_secs(299 + 300 + 300));
}

#[tokio::test]
async fn a_timeout_beyond_any_date_never_fires() {
    let clock = Arc::new(TestClock::new());
    let r = engine(clock)
        .start_execution(&machine(waits(Some(u64::MAX / 2), &[10])), None, json!({}))
        .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn virtual_time_times_out_exactly_at_the_deadline() {
    let begin = tokio::time::Instant::now();
    let sm = machine(
        json!({"TimeoutSeconds": 5, "StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:slow",
        "End": true}}}),
    );
    let r = engine(Arc::new(VirtualClock::new()))
        .start_execution(&sm, None, json!({}))
        .await;
    assert_eq!(r.status, ExecutionStatus::TimedOut, "{r:?}");
    assert_eq!(begin.elapsed(), Duration::from_secs(5));
    let sm = machine(
        json!({"TimeoutSeconds": 31, "StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:slow",
        "End": true}}}),
    );
    let r = engine(Arc::new(VirtualClock::new()))
        .start_execution(&sm, None, json!({"x": 1}))
        .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(r.output, Some(json!({"x": 1})));
}
