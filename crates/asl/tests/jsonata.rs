//! The JSONata query language in running state machines: data flow through `$states`,
//! variables, Choice conditions, Map items, and the errors AWS raises for bad expressions.

// Test helpers outside #[test] functions may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use asl::{
    Engine, ExecutionResult, ExecutionStatus, LambdaError, LambdaFunction, StateMachine,
    TaskRegistry, TestClock, WorkflowType,
};
use async_trait::async_trait;
use serde_json::{Value, json};

struct Double;

#[async_trait]
impl LambdaFunction for Double {
    async fn invoke(&self, payload: Value) -> Result<Value, LambdaError> {
        match payload["n"].as_i64() {
            Some(n) => Ok(json!({"n": n * 2})),
            None => Err(LambdaError::new("BadInput", "no n")),
        }
    }
}

async fn run(def: Value, input: Value) -> ExecutionResult {
    let mut reg = TaskRegistry::new();
    reg.register_lambda("double", Arc::new(Double));
    let engine = Engine::new(reg, Arc::new(TestClock::new()));
    let sm = StateMachine::parse(&def.to_string()).unwrap();
    engine.start_execution(&sm, Some("run"), input).await
}

fn types(r: &ExecutionResult) -> Vec<&str> {
    r.history.iter().map(|e| e.event_type.as_str()).collect()
}

#[tokio::test]
async fn task_arguments_output_and_variables() {
    let r = run(
        json!({"QueryLanguage": "JSONata", "StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:double",
                  "Arguments": {"n": "{% $states.input.value + 1 %}"},
                  "Assign": {"doubled": "{% $states.result.n %}", "was": "{% $states.input.value %}"},
                  "Output": {"result": "{% $states.result.n %}", "input": "{% $states.input %}"},
                  "Next": "P"},
            "P": {"Type": "Pass", "Output": "{% $doubled & '/' & $was & '/' & $states.context.State.Name %}", "End": true}
        }}),
        json!({"value": 4}),
    )
    .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(r.output, Some(json!("10/4/P")));
    let exited = r
        .history
        .iter()
        .find(|e| e.event_type == "TaskStateExited")
        .unwrap();
    assert_eq!(
        exited.details["output"],
        json!({"result": 10, "input": {"value": 4}})
    );
    assert_eq!(exited.details["assignedVariables"]["doubled"], json!("10"));
}

#[tokio::test]
async fn choice_conditions_and_outputs() {
    let def = json!({"QueryLanguage": "JSONata", "StartAt": "C", "States": {
        "C": {"Type": "Choice",
              "Choices": [
                  {"Condition": "{% $states.input.n > 10 %}", "Next": "Big", "Output": {"size": "big"}},
                  {"Condition": "{% $states.input.n in [1, 2, 3] %}", "Next": "Small", "Assign": {"tiny": true}}
              ],
              "Default": "Other", "Output": "{% 'other: ' & $string($states.input.n) %}"},
        "Big": {"Type": "Succeed"},
        "Small": {"Type": "Pass", "Output": "{% $tiny %}", "End": true},
        "Other": {"Type": "Succeed"}
    }});
    let big = run(def.clone(), json!({"n": 11})).await;
    assert_eq!(big.output, Some(json!({"size": "big"})));
    let small = run(def.clone(), json!({"n": 2})).await;
    assert_eq!(small.output, Some(json!(true)));
    let other = run(def, json!({"n": 5})).await;
    assert_eq!(other.output, Some(json!("other: 5")));
}

#[tokio::test]
async fn choice_condition_must_be_boolean() {
    let r = run(
        json!({"QueryLanguage": "JSONata", "StartAt": "C", "States": {
            "C": {"Type": "Choice", "Choices": [{"Condition": "{% $states.input.n %}", "Next": "D"}], "Default": "D"},
            "D": {"Type": "Succeed"}
        }}),
        json!({"n": 3}),
    )
    .await;
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("States.QueryEvaluationError"));
    assert_eq!(
        r.cause.as_deref(),
        Some(
            "An error occurred while executing the state 'C' (entered at the event id #2). The JSONata expression '$states.input.n' specified for the field 'Condition' returned an unexpected result type. Expected 'boolean', but was 'number' for value: 3"
        )
    );
    assert_eq!(
        types(&r),
        [
            "ExecutionStarted",
            "ChoiceStateEntered",
            "EvaluationFailed",
            "ExecutionFailed"
        ]
    );
}

#[tokio::test]
async fn evaluation_errors_are_catchable() {
    let r = run(
        json!({"QueryLanguage": "JSONata", "StartAt": "T", "States": {
            "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:double",
                  "Arguments": {"n": "{% $states.input.s + 1 %}"},
                  "Catch": [{"ErrorEquals": ["States.QueryEvaluationError"],
                             "Output": {"caught": "{% $states.errorOutput.Error %}", "input": "{% $states.input %}"},
                             "Next": "Done"}],
                  "End": true},
            "Done": {"Type": "Succeed"}
        }}),
        json!({"s": "text"}),
    )
    .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(
        r.output,
        Some(json!({"caught": "States.QueryEvaluationError", "input": {"s": "text"}}))
    );
    let failed = r
        .history
        .iter()
        .find(|e| e.event_type == "EvaluationFailed")
        .unwrap();
    assert_eq!(failed.details["location"], json!("Arguments/n"));
    assert!(
        failed.details["cause"]
            .as_str()
            .unwrap()
            .contains("T2001: The left side of the \"+\" operator must evaluate to a number"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn undefined_result_fails_with_field() {
    let r = run(
        json!({"QueryLanguage": "JSONata", "StartAt": "P", "States": {
            "P": {"Type": "Pass", "Output": {"a": {"b": "{% $states.input.missing %}"}}, "End": true}
        }}),
        json!({}),
    )
    .await;
    assert_eq!(r.error.as_deref(), Some("States.QueryEvaluationError"));
    assert!(
        r.cause
            .as_deref()
            .unwrap()
            .ends_with("The JSONata expression '$states.input.missing' specified for the field 'Output/a/b' returned nothing (undefined).")
    );
}

#[tokio::test]
async fn map_items_selector_and_result() {
    let r = run(
        json!({"QueryLanguage": "JSONata", "StartAt": "M", "States": {
            "M": {"Type": "Map", "Items": "{% $states.input.values[$ > 1] %}",
                  "ItemSelector": {"n": "{% $states.context.Map.Item.Value %}", "i": "{% $states.context.Map.Item.Index %}"},
                  "ItemProcessor": {"StartAt": "T", "States": {
                      "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:double",
                            "Output": "{% $states.result.n %}", "End": true}}},
                  "Output": {"sum": "{% $sum($states.result) %}", "all": "{% $states.result %}"},
                  "End": true}
        }}),
        json!({"values": [1, 2, 3]}),
    )
    .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(r.output, Some(json!({"sum": 10, "all": [4, 6]})));
}

#[tokio::test]
async fn wait_and_fail_take_expressions() {
    let r = run(
        json!({"QueryLanguage": "JSONata", "StartAt": "W", "States": {
            "W": {"Type": "Wait", "Seconds": "{% $states.input.delay * 2 %}", "Next": "F"},
            "F": {"Type": "Fail", "Error": "{% 'Custom.' & $states.input.kind %}", "Cause": "{% $string($states.input) %}"}
        }}),
        json!({"delay": 1, "kind": "Stop"}),
    )
    .await;
    assert_eq!(r.error.as_deref(), Some("Custom.Stop"));
    assert_eq!(r.cause.as_deref(), Some("{\"delay\":1,\"kind\":\"Stop\"}"));
    let r = run(
        json!({"QueryLanguage": "JSONata", "StartAt": "W", "States": {
            "W": {"Type": "Wait", "Seconds": "{% -1 %}", "End": true}
        }}),
        json!({}),
    )
    .await;
    assert_eq!(r.error.as_deref(), Some("States.QueryEvaluationError"));
}

#[tokio::test]
async fn express_execution_arn_and_context() {
    let sm = StateMachine::parse(
        &json!({"StartAt": "P", "States": {"P": {"Type": "Pass", "Parameters": {"ctx.$": "$$.Execution"}, "End": true}}})
            .to_string(),
    )
    .unwrap()
    .with_name("m")
    .with_type(WorkflowType::Express)
    .unwrap();
    let engine = Engine::new(TaskRegistry::new(), Arc::new(TestClock::new()));
    let r = engine.start_execution(&sm, Some("x"), json!({})).await;
    let ctx = &r.output.unwrap()["ctx"];
    assert!(ctx.get("RedriveCount").is_none());
    let id = ctx["Id"].as_str().unwrap();
    assert!(id.contains(":express:m:x:"), "{id}");
}

#[tokio::test]
async fn whole_states_object_includes_the_context() {
    let r = run(
        json!({"QueryLanguage": "JSONata", "StartAt": "P", "States": {
            "P": {"Type": "Pass", "Output": "{% $keys($states) %}", "End": true}
        }}),
        json!({}),
    )
    .await;
    assert_eq!(r.output, Some(json!(["input", "context"])));
}
