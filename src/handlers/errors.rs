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

/// Every error-type name, for checks that state machines only name errors that exist.
pub const ALL: &[&str] = &[
    INVALID_INPUT,
    STORE_UNAVAILABLE,
    STORE_FAILED,
    BUS_UNAVAILABLE,
    BUS_FAILED,
    WORKFLOW_FAILED,
    OBJECT_STORE_UNAVAILABLE,
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
