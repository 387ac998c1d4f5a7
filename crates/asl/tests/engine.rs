//! Behaviour tests of the engine: Retry back-off, Catch, payload quota, Map concurrency, services.

// Test helpers outside #[test] functions may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use asl::{
    Engine, ExecutionStatus, LambdaError, LambdaFunction, ServiceIntegration, StateMachine,
    TaskError, TaskRegistry, TestClock,
};
use async_trait::async_trait;
use serde_json::{Value, json};

/// Fails `failures` times, then echoes its input; counts calls and the peak concurrency.
#[derive(Default)]
struct Flaky {
    failures: usize,
    calls: AtomicUsize,
    running: AtomicUsize,
    peak: AtomicUsize,
}

#[async_trait]
impl LambdaFunction for Flaky {
    async fn invoke(&self, payload: Value) -> Result<Value, LambdaError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if n < self.failures {
            Err(LambdaError::new("Transient", "try again"))
        } else {
            Ok(payload)
        }
    }
}

fn engine_with(name: &str, f: Arc<dyn LambdaFunction>) -> (Engine, Arc<TestClock>) {
    let mut reg = TaskRegistry::new();
    reg.register_lambda(name, f);
    let clock = Arc::new(TestClock::new());
    (Engine::new(reg, clock.clone()), clock)
}

fn machine(def: Value) -> StateMachine {
    StateMachine::parse(&def.to_string()).unwrap()
}

#[tokio::test]
async fn retry_backs_off_exponentially_with_cap() {
    let f = Arc::new(Flaky {
        failures: 4,
        ..Default::default()
    });
    let (engine, clock) = engine_with("fn", f.clone());
    let sm = machine(json!({"StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:fn", "End": true,
        "Retry": [{"ErrorEquals": ["Transient"], "IntervalSeconds": 2, "BackoffRate": 3, "MaxAttempts": 5, "MaxDelaySeconds": 10}]
    }}}));
    let r = engine.start_execution(&sm, None, json!({"a": 1})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(r.output, Some(json!({"a": 1})));
    assert_eq!(f.calls.load(Ordering::SeqCst), 5);
    let secs: Vec<u64> = clock.sleeps().iter().map(Duration::as_secs).collect();
    assert_eq!(secs, vec![2, 6, 10, 10]);
}

#[tokio::test]
async fn retry_defaults_and_exhaustion() {
    let f = Arc::new(Flaky {
        failures: 100,
        ..Default::default()
    });
    let (engine, clock) = engine_with("fn", f.clone());
    let sm = machine(json!({"StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:fn", "End": true,
        "Retry": [{"ErrorEquals": ["States.ALL"]}]
    }}}));
    let r = engine.start_execution(&sm, None, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("Transient"));
    assert_eq!(
        r.cause.as_deref(),
        Some(r#"{"errorMessage":"try again","errorType":"Transient"}"#)
    );
    assert_eq!(f.calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        clock.sleeps(),
        vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4)
        ]
    );
}

#[tokio::test]
async fn jitter_full_never_exceeds_the_plain_delay() {
    let f = Arc::new(Flaky {
        failures: 3,
        ..Default::default()
    });
    let (engine, clock) = engine_with("fn", f);
    let sm = machine(json!({"StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:fn", "End": true,
        "Retry": [{"ErrorEquals": ["Transient"], "IntervalSeconds": 4, "JitterStrategy": "FULL"}]
    }}}));
    assert_eq!(
        engine.start_execution(&sm, None, json!({})).await.status,
        ExecutionStatus::Succeeded
    );
    let sleeps = clock.sleeps();
    assert_eq!(sleeps.len(), 3);
    for (s, max) in sleeps.iter().zip([4.0, 8.0, 16.0]) {
        assert!(s.as_secs_f64() <= max, "{s:?} > {max}");
    }
}

#[tokio::test]
async fn catch_merges_error_into_input_with_result_path() {
    let f = Arc::new(Flaky {
        failures: 100,
        ..Default::default()
    });
    let (engine, _) = engine_with("fn", f);
    let sm = machine(json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke", "Parameters": {"FunctionName": "fn", "Payload.$": "$"},
              "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.error", "Next": "Done"}], "End": true},
        "Done": {"Type": "Pass", "End": true}
    }}));
    let r = engine
        .start_execution(&sm, None, json!({"keep": true}))
        .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(
        r.output,
        Some(
            json!({"keep": true, "error": {"Error": "Transient", "Cause": "{\"errorMessage\":\"try again\",\"errorType\":\"Transient\"}"}})
        )
    );
    assert!(r.history.iter().any(|e| e.event_type == "TaskFailed"));
}

#[tokio::test]
async fn runtime_errors_are_not_caught_by_states_all() {
    let (engine, _) = engine_with("fn", Arc::new(Flaky::default()));
    let sm = machine(json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:fn", "InputPath": "$.missing",
              "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Done"}], "End": true},
        "Done": {"Type": "Pass", "End": true}
    }}));
    let r = engine.start_execution(&sm, None, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("States.Runtime"));
    assert_eq!(
        r.cause.as_deref(),
        Some(
            "An error occurred while executing the state 'T' (entered at the event id #2). Invalid path '$.missing' : No results for path: $['missing']"
        )
    );
}

#[tokio::test]
async fn payload_quota_is_256_kib() {
    let (engine, _) = engine_with("fn", Arc::new(Flaky::default()));
    let sm = machine(json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:fn",
              "Catch": [{"ErrorEquals": ["States.DataLimitExceeded"], "ResultPath": null, "Next": "Done"}], "End": true},
        "Done": {"Type": "Pass", "Result": "caught", "End": true}
    }}));
    // The serialised string is the payload plus two quotes.
    let at_limit = "a".repeat(asl::MAX_PAYLOAD_BYTES - 2);
    let r = engine.start_execution(&sm, None, json!(at_limit)).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(r.output, Some(json!(at_limit)));
    let over = "a".repeat(asl::MAX_PAYLOAD_BYTES - 1);
    let r = engine.start_execution(&sm, None, json!(over)).await;
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("States.DataLimitExceeded"));
}

#[tokio::test]
async fn task_result_over_quota_is_catchable() {
    struct Big;
    #[async_trait]
    impl LambdaFunction for Big {
        async fn invoke(&self, _: Value) -> Result<Value, LambdaError> {
            Ok(json!("b".repeat(300_000)))
        }
    }
    let (engine, _) = engine_with("big", Arc::new(Big));
    let sm = machine(json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:big",
              "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Done"}], "End": true},
        "Done": {"Type": "Pass", "End": true}
    }}));
    let r = engine.start_execution(&sm, None, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
    assert_eq!(r.output.unwrap()["Error"], "States.DataLimitExceeded");
}

async fn run_map(max_concurrency: u64) -> (Arc<Flaky>, asl::ExecutionResult) {
    let f = Arc::new(Flaky::default());
    let (engine, _) = engine_with("fn", f.clone());
    let sm = machine(json!({"StartAt": "M", "States": {"M": {
        "Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": max_concurrency,
        "ItemSelector": {"i.$": "$$.Map.Item.Index", "v.$": "$$.Map.Item.Value"},
        "ItemProcessor": {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:fn", "End": true}}},
        "ResultPath": "$.out", "End": true
    }}}));
    let r = engine
        .start_execution(&sm, None, json!({"items": ["a", "b", "c", "d", "e", "f"]}))
        .await;
    (f, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_runs_items_concurrently_up_to_max_concurrency() {
    let (f, r) = run_map(1).await;
    assert_eq!(f.peak.load(Ordering::SeqCst), 1);
    let out = r.output.unwrap();
    assert_eq!(out["out"][5], json!({"i": 5, "v": "f"}));
    let (f, _) = run_map(3).await;
    let peak = f.peak.load(Ordering::SeqCst);
    assert!(peak > 1 && peak <= 3, "peak {peak}");
    let (f, r) = run_map(0).await;
    assert!(f.peak.load(Ordering::SeqCst) > 3);
    assert_eq!(r.output.unwrap()["out"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn failing_item_fails_the_map_with_its_error() {
    let (engine, _) = engine_with("fn", Arc::new(Flaky::default()));
    let sm = machine(json!({"StartAt": "M", "States": {"M": {
        "Type": "Map", "MaxConcurrency": 1,
        "ItemProcessor": {"StartAt": "C", "States": {
            "C": {"Type": "Choice", "Choices": [{"Variable": "$", "NumericEquals": 2, "Next": "F"}], "Default": "P"},
            "P": {"Type": "Pass", "End": true},
            "F": {"Type": "Fail", "Error": "Bad", "Cause": "item 2"}
        }}, "End": true
    }}}));
    let r = engine.start_execution(&sm, None, json!([1, 2, 3])).await;
    assert_eq!(
        (r.error.as_deref(), r.cause.as_deref()),
        (Some("Bad"), Some("item 2"))
    );
    assert!(
        !r.history
            .iter()
            .any(|e| e.event_type == "MapIterationStarted" && e.details["index"] == 2)
    );
}

#[tokio::test]
async fn task_timeout_and_services() {
    struct Slow;
    #[async_trait]
    impl LambdaFunction for Slow {
        async fn invoke(&self, p: Value) -> Result<Value, LambdaError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(p)
        }
    }
    struct Sqs;
    #[async_trait]
    impl ServiceIntegration for Sqs {
        async fn call(&self, resource: &str, params: Value) -> Result<Value, TaskError> {
            if params["QueueUrl"] == "bad" {
                return Err(TaskError {
                    error: "SQS.QueueDoesNotExistException".into(),
                    cause: "no queue".into(),
                });
            }
            Ok(json!({"resource": resource, "MessageId": "m-1", "body": params["MessageBody"]}))
        }
    }
    let mut reg = TaskRegistry::new();
    reg.register_lambda("slow", Arc::new(Slow));
    reg.register_service("arn:aws:states:::sqs:sendMessage", Arc::new(Sqs));
    let clock = Arc::new(TestClock::new());
    let engine = Engine::new(reg, clock.clone());
    let sm = machine(json!({"StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:slow", "TimeoutSeconds": 5, "End": true}}}));
    let r = engine.start_execution(&sm, None, json!({})).await;
    assert_eq!(
        (r.status, r.error.as_deref(), r.cause.as_deref()),
        (ExecutionStatus::Failed, Some("States.Timeout"), None)
    );
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(5)]);

    let sm = machine(json!({"StartAt": "S", "States": {"S": {
        "Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage",
        "Parameters": {"QueueUrl.$": "$.q", "MessageBody.$": "States.JsonToString($.msg)"},
        "ResultSelector": {"id.$": "$.MessageId", "body.$": "$.body"}, "ResultPath": "$.sent", "End": true}}}));
    let r = engine
        .start_execution(&sm, None, json!({"q": "good", "msg": {"a": 1}}))
        .await;
    assert_eq!(
        r.output,
        Some(json!({"q": "good", "msg": {"a": 1}, "sent": {"id": "m-1", "body": "{\"a\":1}"}}))
    );
    let r = engine
        .start_execution(&sm, None, json!({"q": "bad", "msg": 1}))
        .await;
    assert_eq!(
        (r.error.as_deref(), r.cause.as_deref()),
        (Some("SQS.QueueDoesNotExistException"), Some("no queue"))
    );
}

#[tokio::test]
async fn unknown_function_and_no_choice_matched() {
    let (engine, _) = engine_with("fn", Arc::new(Flaky::default()));
    let sm = machine(json!({"StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke", "Parameters": {"FunctionName": "nope"}, "End": true}}}));
    let r = engine.start_execution(&sm, None, json!({})).await;
    assert_eq!(r.error.as_deref(), Some("Lambda.ResourceNotFoundException"));
    assert!(r.cause.unwrap().starts_with("Function not found: arn:aws:lambda:us-east-1:123456789012:function:nope:$LATEST (Service: AWSLambda; Status Code: 404;"));

    let sm = machine(json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [{"Variable": "$.x", "StringMatches": "a*", "Next": "D"}]},
        "D": {"Type": "Succeed"}
    }}));
    let r = engine.start_execution(&sm, None, json!({"x": "bcd"})).await;
    assert_eq!(r.error.as_deref(), Some("States.NoChoiceMatched"));
    let r = engine.start_execution(&sm, None, json!({"x": "abc"})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded);
}

#[tokio::test]
async fn result_path_match_failure_is_reported() {
    let (engine, _) = engine_with("fn", Arc::new(Flaky::default()));
    let sm = machine(json!({"StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:fn", "ResultPath": "$.a.b", "End": true}}}));
    let r = engine
        .start_execution(&sm, None, json!("not an object"))
        .await;
    assert_eq!(r.error.as_deref(), Some("States.ResultPathMatchFailure"));
}
