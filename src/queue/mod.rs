//! The quarantine port: where records that cannot go on are sent, one message each (a JSON
//! [`Rejection`](crate::model::Rejection), or what the state machine's quarantine task sends).
//! Locally this is the SQLite-backed [`LocalQueue`]; on AWS, SQS ([`sqs::SqsQuarantine`]).
//!
//! SQS takes at most [`MAX_MESSAGE_BYTES`] a message. A larger body is never cut silently: it
//! is stored in S3 and sent as a reference, or, with no bucket for that, sent as an
//! [`Oversized`] marker holding what fits (the record's label, its stage and its
//! OperationOutcome) and saying what was left out.

pub mod sqs;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::local::queue::LocalQueue;

/// SQS's message size limit as this project uses it (256 KiB, the limit Step Functions' own
/// `sqs:sendMessage` task payloads also stay under).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// A quarantine message that could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("quarantine queue {queue}: {message}")]
    Send {
        queue: String,
        message: String,
        retryable: bool,
    },
    #[error("quarantine overflow s3://{bucket}/{key}: {message}")]
    Overflow {
        bucket: String,
        key: String,
        message: String,
    },
}

impl QuarantineError {
    pub fn is_retryable(&self) -> bool {
        match self {
            QuarantineError::Send { retryable, .. } => *retryable,
            QuarantineError::Overflow { .. } => true,
        }
    }
}

/// Where quarantined records go.
#[async_trait]
pub trait Quarantine: Send + Sync + fmt::Debug {
    /// Sends one message; the queue's message id.
    async fn send(&self, body: &str) -> Result<String, QuarantineError>;
}

/// The local queue, as the quarantine of one named queue.
#[derive(Debug, Clone)]
pub struct LocalQuarantine {
    pub queue: Arc<LocalQueue>,
    pub name: String,
}

#[async_trait]
impl Quarantine for LocalQuarantine {
    async fn send(&self, body: &str) -> Result<String, QuarantineError> {
        self.queue
            .send(&self.name, body)
            .map_err(|e| QuarantineError::Send {
                queue: self.name.clone(),
                message: e.to_string(),
                retryable: true,
            })
    }
}

/// The body sent in place of one over [`MAX_MESSAGE_BYTES`]: `{"oversized": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Oversized {
    /// The size of the body that was not sent as is.
    pub original_bytes: usize,
    /// SHA-256 of the original body (hex), to check a fetched copy.
    pub sha256: String,
    /// Where the whole body is (`s3://bucket/key`), when it was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<String>,
    /// The record's data-free label, when the body was a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Value>,
    /// The rejection's OperationOutcome, when it fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
    /// The top-level members of the original body left out of this message (all of it when
    /// it was not a JSON object).
    pub omitted: Vec<String>,
}

/// The wrapper key of an [`Oversized`] message.
pub const OVERSIZED_KEY: &str = "oversized";

impl Oversized {
    /// The marker for `body`, keeping what fits under [`MAX_MESSAGE_BYTES`]: the record label
    /// and stage always (they are short), the outcome when the message still fits with it.
    pub fn of(body: &str, stored_at: Option<String>) -> Oversized {
        use sha2::Digest;
        let sha256 = sha2::Sha256::digest(body.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_str(body).ok();
        let mut marker = Oversized {
            original_bytes: body.len(),
            sha256,
            stored_at,
            record: None,
            stage: None,
            outcome: None,
            omitted: vec!["*".into()],
        };
        let Some(object) = parsed else {
            return marker;
        };
        let short = |v: &Value| v.to_string().len() <= 1024;
        marker.record = object
            .get("record")
            .filter(|v| short(v))
            .and_then(Value::as_str)
            .map(str::to_owned);
        marker.stage = object.get("stage").filter(|v| short(v)).cloned();
        marker.outcome = object.get("outcome").cloned();
        let kept = |m: &Oversized| {
            let mut k = Vec::new();
            if m.record.is_some() {
                k.push("record");
            }
            if m.stage.is_some() {
                k.push("stage");
            }
            if m.outcome.is_some() {
                k.push("outcome");
            }
            k
        };
        marker.omitted = object
            .keys()
            .filter(|k| !kept(&marker).contains(&k.as_str()))
            .cloned()
            .collect();
        if marker.body().len() > MAX_MESSAGE_BYTES {
            marker.outcome = None;
            marker.omitted.push("outcome".into());
        }
        marker
    }

    /// The message body: `{"oversized": {...}}`.
    pub fn body(&self) -> String {
        serde_json::json!({ OVERSIZED_KEY: self }).to_string()
    }

    /// The marker in a received body, if it is one.
    pub fn parse(body: &str) -> Option<Oversized> {
        let v: Value = serde_json::from_str(body).ok()?;
        serde_json::from_value(v.get(OVERSIZED_KEY)?.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Rejection, Stage};
    use serde_json::json;

    fn big_rejection() -> String {
        serde_json::to_string(&Rejection {
            stage: Stage::Validate,
            record: "app/patients {\"pk\":1} @7".into(),
            change: None,
            raw: Some(json!({ "blob": "x".repeat(MAX_MESSAGE_BYTES) })),
            outcome: json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad"}]}),
        })
        .unwrap()
    }

    #[test]
    fn a_marker_keeps_label_stage_and_outcome_and_names_what_it_left_out() {
        let body = big_rejection();
        let m = Oversized::of(&body, None);
        assert_eq!(m.original_bytes, body.len());
        assert_eq!(m.record.as_deref(), Some("app/patients {\"pk\":1} @7"));
        assert_eq!(m.stage, Some(json!("validate")));
        assert_eq!(
            m.outcome.as_ref().unwrap()["issue"][0]["diagnostics"],
            "bad"
        );
        assert_eq!(m.omitted, ["raw"]);
        assert_eq!(m.sha256.len(), 64);
        let sent = m.body();
        assert!(sent.len() < 2048);
        assert_eq!(Oversized::parse(&sent), Some(m));
        assert_eq!(Oversized::parse(&body), None, "a rejection is not a marker");
    }

    #[test]
    fn an_outcome_too_large_itself_is_left_out_too_and_non_json_entirely() {
        let body = serde_json::to_string(&Rejection {
            stage: Stage::Transform,
            record: "r".into(),
            change: None,
            raw: None,
            outcome: json!({"issue": [{"diagnostics": "y".repeat(MAX_MESSAGE_BYTES)}]}),
        })
        .unwrap();
        let m = Oversized::of(&body, Some("s3://b/k".into()));
        assert!(m.outcome.is_none());
        assert_eq!(m.omitted, ["outcome"]);
        assert!(m.body().len() <= MAX_MESSAGE_BYTES);
        let m = Oversized::of(&"z".repeat(300_000), None);
        assert_eq!(m.omitted, ["*"]);
        assert!(m.record.is_none());
    }
}
