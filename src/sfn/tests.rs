//! The adapter against a scripted HTTP server standing in for Step Functions: moto 5.2.5's
//! server does not implement `StartSyncExecution` (it answers 500, "The start_sync_execution
//! action has not been implemented"), so the request the SDK sends and the mapping of each
//! answer are checked here, on the wire, with the real SDK client.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:stack-unify";

use crate::scripted_http::ScriptedHttp as Fixture;

/// Records the address each request is sent to before the adapter's own [`EmulatorHost`]
/// takes the `sync-` prefix off (client interceptors run in the order they were added).
#[derive(Debug, Default)]
struct RecordHost {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Intercept for RecordHost {
    fn name(&self) -> &'static str {
        "RecordHost"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_sfn::error::BoxError> {
        let uri = context.request_mut().uri().to_owned();
        self.seen.lock().unwrap().push(uri);
        Ok(())
    }
}

fn conf(endpoint: &str, seen: Arc<Mutex<Vec<String>>>) -> aws_sdk_sfn::Config {
    aws_sdk_sfn::Config::builder()
        .behavior_version(aws_sdk_sfn::config::BehaviorVersion::latest())
        .region(aws_sdk_sfn::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sfn::config::Credentials::for_tests())
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .interceptor(RecordHost { seen })
        .build()
}

fn fast() -> CallRetry {
    CallRetry {
        max_attempts: 3,
        base: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

fn workflow(fixture: &Fixture) -> (StepFunctionsWorkflow, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let w = StepFunctionsWorkflow::new(conf(&fixture.endpoint, seen.clone()), ARN)
        .unwrap()
        .with_retry(fast());
    (w, seen)
}

fn batch() -> ChangeBatch {
    serde_json::from_value(json!({
        "batchId": "ddb:shard-1/49600000000000000001",
        "changes": [{
            "source": "app", "entity": "patients", "key": { "pk": "p-1" }, "op": "upsert",
            "sequence": "49600000000000000001", "observedAt": "2026-01-02T03:04:05Z",
            "data": { "pk": "p-1" }
        }]
    }))
    .unwrap()
}

fn answer(status: &str) -> Value {
    json!({
        "executionArn": "arn:aws:states:us-east-1:123456789012:express:stack-unify:ddb_shard-1_49600000000000000001:1",
        "stateMachineArn": ARN,
        "name": "ddb_shard-1_49600000000000000001",
        "startDate": 1767225600.0,
        "stopDate": 1767225601.5,
        "status": status,
    })
}

#[tokio::test]
async fn a_succeeded_execution_is_a_run_with_its_output_and_the_request_is_start_sync_execution() {
    let mut ok = answer("SUCCEEDED");
    ok["output"] = json!(json!({ "published": 1, "emitted": 1 }).to_string());
    let fixture = Fixture::start(vec![(200, ok)]);
    let (w, seen) = workflow(&fixture);
    let run = w.run_unify(&batch()).await.unwrap();
    assert_eq!(
        run,
        WorkflowRun {
            execution: "ddb_shard-1_49600000000000000001".into(),
            succeeded: true,
            output: Some(json!({ "published": 1, "emitted": 1 })),
            error: None,
            cause: None,
        }
    );
    let requests = fixture.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        r.header("x-amz-target"),
        Some("AWSStepFunctions.StartSyncExecution")
    );
    assert_eq!(r.body["stateMachineArn"], ARN);
    assert_eq!(r.body["name"], "ddb_shard-1_49600000000000000001");
    let input: Value = serde_json::from_str(r.body["input"].as_str().unwrap()).unwrap();
    assert_eq!(input, serde_json::to_value(batch()).unwrap());
    let seen = seen.lock().unwrap();
    assert!(
        seen[0].starts_with("http://sync-127.0.0.1:"),
        "the SDK addresses the sync-states host: {seen:?}"
    );
}

#[test]
fn the_sync_prefix_comes_off_only_for_emulators_at_an_ip_address_or_localhost() {
    for local in [
        "http://127.0.0.1:4566",
        "http://localhost:4566/",
        "https://10.0.0.5",
        "http://[::1]:5000",
        "http://user@127.0.0.1:1",
    ] {
        assert!(is_local_endpoint(local), "{local}");
    }
    for remote in [
        "https://states.us-east-1.amazonaws.com",
        "https://vpce-1.states.us-east-1.vpce.amazonaws.com",
        "http://localhost.localstack.cloud:4566",
        "https://127.0.0.1.example.com",
    ] {
        assert!(!is_local_endpoint(remote), "{remote}");
    }
    assert_eq!(
        without_sync_prefix("http://sync-127.0.0.1:4566/").as_deref(),
        Some("http://127.0.0.1:4566/")
    );
    assert_eq!(without_sync_prefix("http://127.0.0.1:4566/"), None);
    assert_eq!(
        without_sync_prefix("https://sync-states.us-east-1.amazonaws.com/"),
        None,
        "AWS's own sync host is left alone"
    );
}

#[tokio::test]
async fn failed_and_timed_out_executions_are_runs_that_did_not_succeed() {
    let mut failed = answer("FAILED");
    failed["error"] = json!("States.DataLimitExceeded");
    failed["cause"] = json!("The state/task 'Transform' returned a result too large");
    let timed_out = answer("TIMED_OUT");
    let fixture = Fixture::start(vec![(200, failed), (200, timed_out)]);
    let (w, _) = workflow(&fixture);

    let run = w.run_unify(&batch()).await.unwrap();
    assert!(!run.succeeded);
    assert_eq!(run.error.as_deref(), Some("States.DataLimitExceeded"));
    assert_eq!(
        run.cause.as_deref(),
        Some("The state/task 'Transform' returned a result too large")
    );
    assert_eq!(run.output, None);

    let run = w.run_unify(&batch()).await.unwrap();
    assert!(!run.succeeded);
    assert_eq!(run.error.as_deref(), Some("States.Timeout"));
    assert_eq!(run.cause, None);
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_then_the_call_passes() {
    let fixture = Fixture::start(vec![
        (
            400,
            json!({ "__type": "ThrottlingException", "message": "Rate exceeded" }),
        ),
        (500, json!({ "__type": "InternalFailure" })),
        (200, answer("SUCCEEDED")),
    ]);
    let (w, _) = workflow(&fixture);
    let run = w.run(&batch()).await.unwrap();
    assert!(run.succeeded);
    assert_eq!(fixture.requests().len(), 3);
}

#[tokio::test]
async fn throttling_past_the_last_attempt_is_a_typed_retryable_error() {
    let throttled = json!({ "__type": "ThrottlingException", "message": "Rate exceeded" });
    let fixture = Fixture::start(vec![(400, throttled.clone()); 3]);
    let (w, _) = workflow(&fixture);
    let err = w.run(&batch()).await.unwrap_err();
    match &err {
        SfnError::Call {
            attempts,
            code,
            retryable,
            batch,
            ..
        } => {
            assert_eq!(*attempts, 3);
            assert_eq!(code, "ThrottlingException");
            assert!(*retryable);
            assert_eq!(batch, "ddb:shard-1/49600000000000000001");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fixture.requests().len(), 3);
    let message = WorkflowError::from(err).to_string();
    assert!(
        message.starts_with("workflow unify: StartSyncExecution of"),
        "{message}"
    );
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let fixture = Fixture::start(vec![(
        400,
        json!({ "__type": "StateMachineDoesNotExist", "message": "State Machine Does Not Exist" }),
    )]);
    let (w, _) = workflow(&fixture);
    let err = w.run(&batch()).await.unwrap_err();
    assert!(
        matches!(&err, SfnError::Call { attempts: 1, code, retryable: false, .. } if code == "StateMachineDoesNotExist"),
        "{err:?}"
    );
    assert_eq!(fixture.requests().len(), 1);
}

#[tokio::test]
async fn an_output_that_is_not_json_is_a_typed_error() {
    let mut ok = answer("SUCCEEDED");
    ok["output"] = json!("{not json");
    let fixture = Fixture::start(vec![(200, ok)]);
    let (w, _) = workflow(&fixture);
    let err = w.run(&batch()).await.unwrap_err();
    assert!(
        matches!(&err, SfnError::Output { execution, .. } if execution == "ddb_shard-1_49600000000000000001"),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_service_is_retried_then_reported() {
    // A port nothing listens on: connection refused, every attempt.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let w = StepFunctionsWorkflow::new(conf(&format!("http://127.0.0.1:{port}"), seen), ARN)
        .unwrap()
        .with_retry(fast());
    let err = w.run(&batch()).await.unwrap_err();
    assert!(
        matches!(&err, SfnError::Call { attempts: 3, code, retryable: true, .. } if code == "RequestFailed"),
        "{err:?}"
    );
}

#[test]
fn only_state_machine_arns_are_accepted() {
    for good in [
        ARN,
        "arn:aws-us-gov:states:us-gov-west-1:123456789012:stateMachine:u",
        "arn:aws:states:eu-west-1:123456789012:stateMachine:u:live",
    ] {
        assert!(is_state_machine_arn(good), "{good}");
    }
    for bad in [
        "",
        "unify",
        "arn:aws:states:us-east-1:123456789012:activity:u",
        "arn:aws:lambda:us-east-1:123456789012:function:u",
        "arn:aws:states:us-east-1:12345:stateMachine:u",
        "arn:aws:states::123456789012:stateMachine:u",
        "arn:aws:states:us-east-1:123456789012:stateMachine:",
        "arn:aws:states:us-east-1:123456789012:stateMachine:a b",
    ] {
        let conf = aws_sdk_sfn::Config::builder()
            .behavior_version(aws_sdk_sfn::config::BehaviorVersion::latest())
            .build();
        let err = StepFunctionsWorkflow::new(conf, bad).unwrap_err();
        assert_eq!(err, SfnError::InvalidArn(bad.to_owned()));
        assert!(err.to_string().contains(UNIFY_STATE_MACHINE_ARN));
    }
}

#[test]
fn the_backoff_grows_and_is_capped() {
    let retry = CallRetry {
        max_attempts: 10,
        base: Duration::from_millis(100),
        max_delay: Duration::from_millis(300),
    };
    for _ in 0..50 {
        assert!(retry.delay(1) <= Duration::from_millis(100));
        assert!(retry.delay(2) <= Duration::from_millis(200));
        assert!(retry.delay(9) <= Duration::from_millis(300));
    }
}
