//! `arn:aws:states:::events:putEvents`: Step Functions' optimized EventBridge integration.
//!
//! As on AWS: each entry is checked the way EventBridge checks it (a missing Source,
//! DetailType or Detail, or a Detail that is not a JSON object, makes a failed entry with
//! EventBridge's ErrorCode/ErrorMessage), a Detail given as JSON is serialised, the execution
//! and state machine ARNs are appended to each entry's Resources, more than 10 entries is a
//! validation error of the whole call, and any failed entry fails the Task with
//! `EventBridge.FailedEntry` (the cause is the PutEvents response).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::task::{CallContext, ServiceIntegration, TaskError};

/// PutEvents' limit on entries per call.
pub const MAX_ENTRIES: usize = 10;

/// One valid `PutEventsRequestEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEntry {
    pub source: String,
    pub detail_type: String,
    /// The Detail as JSON text (an object).
    pub detail: String,
    /// `EventBusName`, when the entry names one (else the default bus).
    pub event_bus_name: Option<String>,
    /// The entry's Resources, then the execution's and the state machine's ARN.
    pub resources: Vec<String>,
    /// `Time`, as given.
    pub time: Option<String>,
}

/// What the sink did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryResult {
    /// Accepted, with the event id.
    Accepted(String),
    /// Refused, with EventBridge's ErrorCode and ErrorMessage.
    Failed { code: String, message: String },
}

/// Where `events:putEvents` tasks send their entries (an event bus).
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Puts valid entries (at most [`MAX_ENTRIES`]); one result per entry, in order. An `Err`
    /// fails the whole call (the Task fails with that error).
    async fn put_events(&self, entries: &[EventEntry]) -> Result<Vec<EntryResult>, TaskError>;
}

/// An event sink that keeps what it is given, for tests and dry runs.
#[derive(Debug, Default)]
pub struct MemoryEventSink {
    events: Mutex<Vec<EventEntry>>,
}

impl MemoryEventSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries accepted so far.
    pub fn events(&self) -> Vec<EventEntry> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl EventSink for MemoryEventSink {
    async fn put_events(&self, entries: &[EventEntry]) -> Result<Vec<EntryResult>, TaskError> {
        let mut kept = self.events.lock().map_err(|_| TaskError {
            error: "States.TaskFailed".into(),
            cause: "the event sink is unusable after a panic".into(),
        })?;
        kept.extend(entries.iter().cloned());
        Ok(entries
            .iter()
            .map(|_| EntryResult::Accepted(uuid::Uuid::new_v4().to_string()))
            .collect())
    }
}

/// The integration over a sink.
pub(crate) struct PutEvents {
    pub(crate) sink: Arc<dyn EventSink>,
}

fn validation(message: &str) -> TaskError {
    TaskError {
        error: "EventBridge.AmazonEventBridgeException".into(),
        cause: super::sdk_cause(message, "AmazonEventBridge", "ValidationException"),
    }
}

fn invalid(param: &str, reason: &str) -> EntryResult {
    EntryResult::Failed {
        code: "InvalidArgument".into(),
        message: format!("Parameter {param} is not valid. Reason: {reason}"),
    }
}

fn required_string(entry: &Value, field: &str) -> Result<String, EntryResult> {
    match entry.get(field) {
        None | Some(Value::Null) => {
            Err(invalid(field, &format!("{field} is a required argument.")))
        }
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(invalid(field, &format!("{field} must not be empty."))),
        Some(_) => Err(invalid(field, &format!("{field} must be a string."))),
    }
}

/// Checks one entry as EventBridge does; `Err` is the failed entry's result.
fn check_entry(entry: &Value, ctx: &CallContext) -> Result<EventEntry, EntryResult> {
    if !entry.is_object() {
        return Err(invalid("Entries", "each entry must be an object."));
    }
    let detail = match entry.get("Detail") {
        None | Some(Value::Null) => {
            return Err(invalid("Detail", "Detail is a required argument."));
        }
        // Step Functions serialises a Detail given as JSON.
        Some(v @ Value::Object(_)) => v.to_string(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(_)) => s.clone(),
            _ => {
                return Err(EntryResult::Failed {
                    code: "MalformedDetail".into(),
                    message: "Detail is malformed.".into(),
                });
            }
        },
        Some(_) => {
            return Err(EntryResult::Failed {
                code: "MalformedDetail".into(),
                message: "Detail is malformed.".into(),
            });
        }
    };
    let source = required_string(entry, "Source")?;
    let detail_type = required_string(entry, "DetailType")?;
    let mut resources = match entry.get("Resources") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|r| {
                r.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("Resources", "each resource must be a string."))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("Resources", "Resources must be a list of strings.")),
    };
    resources.push(ctx.execution_arn.clone());
    resources.push(ctx.state_machine_arn.clone());
    let opt_string = |field: &str| -> Result<Option<String>, EntryResult> {
        match entry.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(field, &format!("{field} must be a string."))),
        }
    };
    Ok(EventEntry {
        source,
        detail_type,
        detail,
        event_bus_name: opt_string("EventBusName")?,
        resources,
        time: opt_string("Time")?,
    })
}

#[async_trait]
impl ServiceIntegration for PutEvents {
    async fn call(&self, resource: &str, parameters: Value) -> Result<Value, TaskError> {
        self.call_in(&CallContext::default(), resource, parameters)
            .await
    }

    async fn call_in(
        &self,
        ctx: &CallContext,
        _resource: &str,
        parameters: Value,
    ) -> Result<Value, TaskError> {
        let entries = match parameters.get("Entries") {
            Some(Value::Array(e)) => e,
            None | Some(Value::Null) => {
                return Err(validation(
                    "1 validation error detected: Value null at 'entries' failed to satisfy constraint: Member must not be null",
                ));
            }
            Some(_) => {
                return Err(TaskError {
                    error: "States.Runtime".into(),
                    cause: format!(
                        "An error occurred while executing the state '{}'. The field 'Entries' of events:putEvents must be an array of entries",
                        ctx.state
                    ),
                });
            }
        };
        if entries.is_empty() || entries.len() > MAX_ENTRIES {
            let bound = if entries.is_empty() {
                "greater than or equal to 1"
            } else {
                "less than or equal to 10"
            };
            return Err(validation(&format!(
                "1 validation error detected: Value '{}' at 'entries' failed to satisfy constraint: Member must have length {bound}",
                serde_json::to_string(entries).unwrap_or_default()
            )));
        }
        let checked: Vec<Result<EventEntry, EntryResult>> =
            entries.iter().map(|e| check_entry(e, ctx)).collect();
        let valid: Vec<EventEntry> = checked.iter().filter_map(|c| c.clone().ok()).collect();
        let mut sent = if valid.is_empty() {
            Vec::new()
        } else {
            self.sink.put_events(&valid).await?
        }
        .into_iter();
        let mut failed = 0usize;
        let mut out = Vec::with_capacity(checked.len());
        for c in checked {
            let result = match c {
                Ok(_) => sent.next().unwrap_or(EntryResult::Failed {
                    code: "InternalFailure".into(),
                    message: "the event sink gave no result for this entry".into(),
                }),
                Err(r) => r,
            };
            out.push(match result {
                EntryResult::Accepted(id) => json!({"EventId": id}),
                EntryResult::Failed { code, message } => {
                    failed += 1;
                    json!({"ErrorCode": code, "ErrorMessage": message})
                }
            });
        }
        let response = json!({"Entries": out, "FailedEntryCount": failed});
        if failed > 0 {
            return Err(TaskError {
                error: "EventBridge.FailedEntry".into(),
                cause: response.to_string(),
            });
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CallContext {
        CallContext {
            execution_arn: "arn:aws:states:us-east-1:1:execution:m:e".into(),
            state_machine_arn: "arn:aws:states:us-east-1:1:stateMachine:m".into(),
            state: "Put".into(),
        }
    }

    async fn put(sink: &Arc<MemoryEventSink>, params: Value) -> Result<Value, TaskError> {
        PutEvents { sink: sink.clone() }
            .call_in(&ctx(), "arn:aws:states:::events:putEvents", params)
            .await
    }

    #[tokio::test]
    async fn puts_entries_and_answers_like_aws() {
        let sink = Arc::new(MemoryEventSink::new());
        let out = put(
            &sink,
            json!({"Entries": [
                {"Source": "s", "DetailType": "t", "Detail": {"a": 1}},
                {"Source": "s", "DetailType": "t", "Detail": "{\"b\":2}", "Resources": ["r"], "EventBusName": "bus"}
            ]}),
        )
        .await
        .unwrap();
        assert_eq!(out["FailedEntryCount"], 0);
        assert_eq!(out["Entries"].as_array().unwrap().len(), 2);
        assert!(out["Entries"][0]["EventId"].is_string());
        let events = sink.events();
        assert_eq!(events[0].detail, "{\"a\":1}");
        assert_eq!(
            events[0].resources,
            vec![ctx().execution_arn, ctx().state_machine_arn]
        );
        assert_eq!(events[1].resources[0], "r");
        assert_eq!(events[1].event_bus_name.as_deref(), Some("bus"));
    }

    #[tokio::test]
    async fn malformed_entries_are_failed_entries() {
        let sink = Arc::new(MemoryEventSink::new());
        let err = put(
            &sink,
            json!({"Entries": [
                {"Source": "s", "DetailType": "t", "Detail": {}},
                {"DetailType": "t", "Detail": {}},
                {"Source": "s", "DetailType": "t", "Detail": "not json"},
                {"Source": "s", "Detail": {}},
                {"Source": "s", "DetailType": "t"}
            ]}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error, "EventBridge.FailedEntry");
        let cause: Value = serde_json::from_str(&err.cause).unwrap();
        assert_eq!(cause["FailedEntryCount"], 4);
        let e = &cause["Entries"];
        assert!(e[0]["EventId"].is_string());
        assert_eq!(e[1]["ErrorCode"], "InvalidArgument");
        assert_eq!(
            e[1]["ErrorMessage"],
            "Parameter Source is not valid. Reason: Source is a required argument."
        );
        assert_eq!(e[2]["ErrorCode"], "MalformedDetail");
        assert_eq!(
            e[3]["ErrorMessage"],
            "Parameter DetailType is not valid. Reason: DetailType is a required argument."
        );
        assert_eq!(
            e[4]["ErrorMessage"],
            "Parameter Detail is not valid. Reason: Detail is a required argument."
        );
        // The valid entry still went out, as on EventBridge.
        assert_eq!(sink.events().len(), 1);
    }

    #[tokio::test]
    async fn more_than_ten_entries_is_a_validation_error() {
        let sink = Arc::new(MemoryEventSink::new());
        let entry = json!({"Source": "s", "DetailType": "t", "Detail": {}});
        let err = put(&sink, json!({"Entries": vec![entry; 11]}))
            .await
            .unwrap_err();
        assert_eq!(err.error, "EventBridge.AmazonEventBridgeException");
        assert!(
            err.cause
                .contains("Member must have length less than or equal to 10")
        );
        assert!(err.cause.contains("Error Code: ValidationException"));
        assert!(sink.events().is_empty());
        let err = put(&sink, json!({})).await.unwrap_err();
        assert!(err.cause.contains("Member must not be null"));
        let err = put(&sink, json!({"Entries": "x"})).await.unwrap_err();
        assert_eq!(err.error, "States.Runtime");
        assert!(err.cause.contains("'Put'"));
    }
}
