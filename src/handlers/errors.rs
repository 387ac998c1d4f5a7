//! The error a handler returns, and the stable error-type names it reports to Lambda. Those
//! names are what `Retry` and `Catch` match in `statemachines/`: they live here and only here.

use crate::events::RelayError;
use crate::store::StoreError;

/// The input does not have the shape the function takes: retrying cannot help.
pub const INVALID_INPUT: &str = "FhirUnify.InvalidInput";
/// The store is unreachable or busy: retry with back-off.
pub const STORE_UNAVAILABLE: &str = "FhirUnify.StoreUnavailable";
/// The store refused or could not read data: retrying cannot help.
pub const STORE_FAILED: &str = "FhirUnify.StoreFailed";
/// The event bus is unreachable: retry with back-off (committed events wait in the outbox).
pub const BUS_UNAVAILABLE: &str = "FhirUnify.BusUnavailable";
/// The bus refused the call itself.
pub const BUS_FAILED: &str = "FhirUnify.BusFailed";
/// The workflow a batch was handed to could not run it.
pub const WORKFLOW_FAILED: &str = "FhirUnify.WorkflowFailed";
/// The object store (S3) could not be read for now: retry with back-off.
pub const OBJECT_STORE_UNAVAILABLE: &str = "FhirUnify.ObjectStoreUnavailable";

/// A file of a bulk load cannot be read (not Parquet, a row group that cannot be decoded): the
/// load fails, since publishing it without that part would delete live resources.
pub const BULK_INPUT_CORRUPT: &str = "FhirUnify.BulkInputCorrupt";
/// Another load of the dataset is running (its heartbeat is fresh): retry later.
pub const DATASET_BUSY: &str = "FhirUnify.DatasetBusy";
/// The dataset version is not in a status that allows the step (or does not exist).
pub const DATASET_STATE: &str = "FhirUnify.DatasetState";
/// A rejected record of a bulk load could not be quarantined: the chunk fails rather than
/// drop it.
pub const QUARANTINE_FAILED: &str = "FhirUnify.QuarantineFailed";

/// The function could not start (bad pipeline file, store not openable): reported to the
/// Lambda Runtime API's `/runtime/init/error` by [`crate::lambda`].
pub const INIT_FAILED: &str = "FhirUnify.InitFailed";

/// Every error-type name, for checks that state machines only name errors that exist.
pub const ALL: &[&str] = &[
    INVALID_INPUT,
    STORE_UNAVAILABLE,
    STORE_FAILED,
    BUS_UNAVAILABLE,
    BUS_FAILED,
    WORKFLOW_FAILED,
    INIT_FAILED,
    OBJECT_STORE_UNAVAILABLE,
    BULK_INPUT_CORRUPT,
    DATASET_BUSY,
    DATASET_STATE,
    QUARANTINE_FAILED,
];

/// A handler failure: the whole invocation failed (per-record problems are not errors; they
/// are rejections carried in the output).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error(transparent)]
    Workflow(#[from] crate::env::WorkflowError),
    /// Something the function needs could not be set up (its definitions, its config).
    #[error("setup: {0}")]
    Setup(String),
    /// A source file could not be read for a reason that may pass (a throttle, a timeout).
    #[error("object store: {0}")]
    ObjectStore(String),
}

impl HandlerError {
    /// The stable error-type name reported to Lambda and matched by state machines.
    pub fn error_type(&self) -> &'static str {
        match self {
            HandlerError::InvalidInput(_) => INVALID_INPUT,
            HandlerError::Store(e) if e.is_retryable() => STORE_UNAVAILABLE,
            HandlerError::Store(_) => STORE_FAILED,
            HandlerError::Relay(RelayError::Store(e)) if e.is_retryable() => STORE_UNAVAILABLE,
            HandlerError::Relay(RelayError::Store(_)) => STORE_FAILED,
            HandlerError::Relay(RelayError::Bus(e)) if e.is_retryable() => BUS_UNAVAILABLE,
            HandlerError::Relay(RelayError::Bus(_)) => BUS_FAILED,
            HandlerError::Workflow(_) => WORKFLOW_FAILED,
            HandlerError::ObjectStore(_) => OBJECT_STORE_UNAVAILABLE,
            HandlerError::Setup(_) => INIT_FAILED,
        }
    }

    /// Whether the same invocation may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.error_type(),
            STORE_UNAVAILABLE | BUS_UNAVAILABLE | WORKFLOW_FAILED | OBJECT_STORE_UNAVAILABLE
        )
    }
}

impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(e: HandlerError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}

/// Reads a function's payload as `T`. A payload of another shape is [`INVALID_INPUT`], with a
/// message that says what did not fit and where, but never quotes the payload's values (serde
/// quotes the offending string, which may be patient data).
pub fn parse_payload<T: serde::de::DeserializeOwned>(
    payload: serde_json::Value,
) -> Result<T, HandlerError> {
    serde_json::from_value(payload).map_err(|e| {
        let what = std::any::type_name::<T>()
            .rsplit("::")
            .next()
            .unwrap_or("payload");
        HandlerError::InvalidInput(format!(
            "payload is not a {what}: {}",
            redact_quoted(&e.to_string())
        ))
    })
}

/// Replaces every double-quoted run in a serde message with `"…"`; field names are quoted with
/// backticks by serde and stay.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChangeBatch;

    #[test]
    fn a_payload_of_the_wrong_shape_is_invalid_input_without_its_values() {
        let e = parse_payload::<ChangeBatch>(
            serde_json::json!({"batchId": "b", "changes": [{"source": "Ada Lovelace"}]}),
        )
        .unwrap_err();
        assert_eq!(e.error_type(), INVALID_INPUT);
        let text = e.to_string();
        assert!(text.contains("ChangeBatch"), "{text}");
        assert!(!text.contains("Ada"), "{text}");
        let e = parse_payload::<ChangeBatch>(serde_json::json!({"batchId": 7, "changes": []}))
            .unwrap_err();
        assert!(
            e.to_string().contains("batchId") || e.to_string().contains("invalid type"),
            "{e}"
        );
        assert_eq!(
            redact_quoted(r#"invalid type: string "secret", expected u64"#),
            r#"invalid type: string "…", expected u64"#
        );
    }
}
