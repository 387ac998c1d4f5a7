//! The local service integrations through the engine: registration, JSONata arguments,
//! Retry/Catch on their AWS error names.

use std::sync::Arc;

use asl::services::dynamodb::MemoryTables;
use asl::services::events::MemoryEventSink;
use asl::{Engine, ExecutionStatus, StateMachine, TaskRegistry, TestClock};
use serde_json::json;

fn engine(sink: &Arc<MemoryEventSink>, tables: &Arc<MemoryTables>) -> Engine {
    let mut registry = TaskRegistry::new();
    registry.set_event_sink(sink.clone());
    registry.set_table_backend(tables.clone());
    Engine::new(registry, Arc::new(TestClock::new()))
}

#[tokio::test]
async fn put_item_get_item_then_put_events() {
    let sink = Arc::new(MemoryEventSink::new());
    let tables = Arc::new(MemoryTables::new());
    tables.create_table("Runs", "id", None);
    let machine = StateMachine::parse(
        &json!({
            "QueryLanguage": "JSONata",
            "StartAt": "Put",
            "States": {
                "Put": {"Type": "Task", "Resource": "arn:aws:states:::dynamodb:putItem",
                    "Arguments": {"TableName": "Runs", "Item": {"id": {"S": "{% $states.input.id %}"}, "n": {"N": "{% $string($states.input.n) %}"}},
                        "ConditionExpression": "attribute_not_exists(id)"},
                    "Output": "{% $states.input %}",
                    "Catch": [{"ErrorEquals": ["DynamoDB.ConditionalCheckFailedException"], "Next": "Dup", "Output": {"dup": true}}],
                    "Next": "Get"},
                "Get": {"Type": "Task", "Resource": "arn:aws:states:::dynamodb:getItem",
                    "Arguments": {"TableName": "Runs", "Key": {"id": {"S": "{% $states.input.id %}"}}},
                    "Output": "{% $states.result.Item %}", "Next": "Emit"},
                "Emit": {"Type": "Task", "Resource": "arn:aws:states:::events:putEvents",
                    "Arguments": {"Entries": [{"Source": "app", "DetailType": "Stored", "Detail": "{% $states.input %}"}]},
                    "End": true},
                "Dup": {"Type": "Fail", "Error": "Duplicate"}
            }
        })
        .to_string(),
    )
    .unwrap()
    .with_name("m");
    let e = engine(&sink, &tables);
    let r = e
        .start_execution(&machine, Some("one"), json!({"id": "a", "n": 7}))
        .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    let out = r.output.unwrap();
    assert_eq!(out["FailedEntryCount"], 0);
    assert!(out["Entries"][0]["EventId"].is_string());
    let events = sink.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&events[0].detail).unwrap(),
        json!({"id": {"S": "a"}, "n": {"N": "7"}})
    );
    assert!(events[0].resources[0].ends_with(":execution:m:one"));
    assert!(events[0].resources[1].ends_with(":stateMachine:m"));
    // The second run hits the condition and is caught by its AWS error name.
    let r = e
        .start_execution(&machine, Some("two"), json!({"id": "a", "n": 8}))
        .await;
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("Duplicate"));
    assert_eq!(tables.items("Runs")[0]["n"], json!({"N": "7"}));
}

#[tokio::test]
async fn failed_entries_fail_the_task_with_eventbridge_failed_entry() {
    let sink = Arc::new(MemoryEventSink::new());
    let tables = Arc::new(MemoryTables::new());
    let machine = StateMachine::parse(
        &json!({
            "StartAt": "Emit",
            "States": {
                "Emit": {"Type": "Task", "Resource": "arn:aws:states:::events:putEvents",
                    "Parameters": {"Entries": [{"Source": "app", "Detail": {}}]},
                    "End": true}
            }
        })
        .to_string(),
    )
    .unwrap();
    let r = engine(&sink, &tables)
        .start_execution(&machine, None, json!({}))
        .await;
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("EventBridge.FailedEntry"));
    let cause: serde_json::Value = serde_json::from_str(r.cause.as_deref().unwrap()).unwrap();
    assert_eq!(cause["FailedEntryCount"], 1);
    assert_eq!(cause["Entries"][0]["ErrorCode"], "InvalidArgument");
    assert!(sink.events().is_empty());
}
