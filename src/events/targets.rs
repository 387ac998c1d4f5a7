//! Targets of the local bus's rules: where a matching event is delivered, as EventBridge
//! delivers it (the envelope a subscriber receives).
//!
//! - [`NdjsonTarget`]: appended to an NDJSON file, exactly once per event across crashes;
//! - [`WebhookTarget`]: POSTed as JSON to a URL, retried with exponential backoff on connection
//!   errors, 429 and 5xx (EventBridge API destinations' behaviour); the receiver sees each
//!   event at least once and de-duplicates by the envelope's stable `id` (also sent as the
//!   `Idempotency-Key` header);
//! - [`SseTarget`]: published on an in-process channel that the local HTTP server streams as
//!   Server-Sent Events; a subscriber that falls behind resumes from the archive.
//!
//! A target delivers a batch in order and, when it fails, says how many leading events it
//! delivered; the bus reports the first undelivered event's entry as failed, so it stays in
//! the outbox and is delivered again later, and its delivery ledger keeps targets that already
//! received an event from receiving it twice.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::broadcast;

use super::local::{Line, NdjsonWriter, delivery_key};

/// Why a target could not take an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TargetError {
    pub message: String,
}

/// A batch delivered in part: the first `delivered` events went, the next one failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFailure {
    pub delivered: usize,
    pub error: TargetError,
}

/// Where a rule sends the events it matches.
#[async_trait]
pub trait Target: Send + Sync + fmt::Debug {
    /// A stable name (`ndjson:patients.ndjson`, `webhook:https://…`); with the rule name it
    /// keys the delivery ledger, so it must not change between runs.
    fn id(&self) -> &str;

    /// Delivers envelopes in order.
    async fn deliver(&self, envelopes: &[&Value]) -> Result<(), TargetFailure>;

    /// [`Self::deliver`] given each envelope's JSON text too (`texts[i]` is `envelopes[i]`
    /// serialized): the bus serializes each envelope once, for its archive, and a target that
    /// writes text takes it from there.
    async fn deliver_serialized(
        &self,
        envelopes: &[&Value],
        _texts: &[&str],
    ) -> Result<(), TargetFailure> {
        self.deliver(envelopes).await
    }
}

/// Appends matching events to an NDJSON file.
#[derive(Debug)]
pub struct NdjsonTarget {
    id: String,
    writer: Arc<NdjsonWriter>,
}

impl NdjsonTarget {
    /// `label` names the file in the target id as the pipeline file gives it, so moving the
    /// data folder does not change the id.
    pub fn new(label: &str, writer: NdjsonWriter) -> NdjsonTarget {
        NdjsonTarget {
            id: format!("ndjson:{label}"),
            writer: Arc::new(writer),
        }
    }
}

#[async_trait]
impl Target for NdjsonTarget {
    fn id(&self) -> &str {
        &self.id
    }

    async fn deliver(&self, envelopes: &[&Value]) -> Result<(), TargetFailure> {
        let lines = Line::serialize_all(envelopes).map_err(|e| write_failure(e.to_string()))?;
        self.write(lines).await
    }

    async fn deliver_serialized(
        &self,
        envelopes: &[&Value],
        texts: &[&str],
    ) -> Result<(), TargetFailure> {
        // The lines are copied as text: a copy of each envelope's tree cost more in bulk emits.
        let lines = envelopes
            .iter()
            .zip(texts)
            .map(|(e, t)| Line::new(e, (*t).to_owned()))
            .collect();
        self.write(lines).await
    }
}

impl NdjsonTarget {
    /// One write and one fsync for the batch: all of it is written, or (after a repair at the
    /// next open) none of it. Off the async threads, so targets' fsyncs overlap.
    async fn write(&self, lines: Vec<Line>) -> Result<(), TargetFailure> {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || writer.append_lines(lines).map(|_| ()))
            .await
            .map_err(|e| write_failure(format!("write task failed: {e}")))?
            .map_err(|e| write_failure(e.to_string()))
    }
}

/// A batch of which nothing was written.
fn write_failure(message: String) -> TargetFailure {
    TargetFailure {
        delivered: 0,
        error: TargetError { message },
    }
}

/// How a webhook retries one event before the bus reports it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per event within one delivery (at least 1).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Time limit of one request (connect, send, answer).
    pub timeout: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `n + 1` (n ≥ 1): initial × 2^(n-1), capped.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// POSTs each matching event to a URL.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    inner: Arc<Webhook>,
}

#[derive(Debug)]
struct Webhook {
    id: String,
    url: String,
    headers: Vec<(String, String)>,
    retry: RetryPolicy,
    agent: ureq::Agent,
}

/// The outcome of one POST.
enum Attempt {
    Delivered,
    Retryable(String),
    Refused(String),
}

impl WebhookTarget {
    pub fn new(url: &str, headers: Vec<(String, String)>, retry: RetryPolicy) -> WebhookTarget {
        WebhookTarget {
            inner: Arc::new(Webhook::new(url, headers, retry)),
        }
    }
}

impl Webhook {
    fn new(url: &str, headers: Vec<(String, String)>, retry: RetryPolicy) -> Webhook {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(retry.timeout))
            .build()
            .into();
        Webhook {
            id: format!("webhook:{url}"),
            url: url.to_owned(),
            headers,
            retry,
            agent,
        }
    }

    fn post(&self, envelope: &Value) -> Attempt {
        let mut request = self
            .agent
            .post(&self.url)
            .header("content-type", "application/json");
        if let Some(key) = delivery_key(envelope) {
            request = request.header("idempotency-key", key);
        }
        for (k, v) in &self.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        match request.send(envelope.to_string()) {
            Ok(response) => {
                let status = response.status().as_u16();
                match status {
                    200..=299 => Attempt::Delivered,
                    408 | 429 | 500..=599 => Attempt::Retryable(format!("HTTP {status}")),
                    _ => Attempt::Refused(format!("HTTP {status}")),
                }
            }
            Err(e) => Attempt::Retryable(e.to_string()),
        }
    }

    async fn deliver_one(self: &Arc<Self>, envelope: &Value) -> Result<(), TargetError> {
        let mut last = String::new();
        for attempt in 1..=self.retry.max_attempts.max(1) {
            if attempt > 1 {
                tokio::time::sleep(self.retry.backoff(attempt - 1)).await;
            }
            let this = Arc::clone(self);
            let body = envelope.clone();
            // ureq is blocking; a webhook call must not hold up the async runtime.
            let outcome = tokio::task::spawn_blocking(move || this.post(&body))
                .await
                .unwrap_or_else(|e| Attempt::Retryable(format!("request task failed: {e}")));
            match outcome {
                Attempt::Delivered => return Ok(()),
                Attempt::Refused(why) => {
                    return Err(TargetError {
                        message: format!("{} refused the event: {why}", self.url),
                    });
                }
                Attempt::Retryable(why) => {
                    tracing::debug!(attempt, target = %self.id, "webhook attempt failed");
                    last = why;
                }
            }
        }
        Err(TargetError {
            message: format!(
                "{}: {} attempts failed, last: {last}",
                self.url, self.retry.max_attempts
            ),
        })
    }
}

#[async_trait]
impl Target for WebhookTarget {
    fn id(&self) -> &str {
        &self.inner.id
    }

    async fn deliver(&self, envelopes: &[&Value]) -> Result<(), TargetFailure> {
        for (i, envelope) in envelopes.iter().enumerate() {
            self.inner
                .deliver_one(envelope)
                .await
                .map_err(|error| TargetFailure {
                    delivered: i,
                    error,
                })?;
        }
        Ok(())
    }
}

/// One Server-Sent Event: `id:` is the delivery key, `data:` the envelope JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    pub id: String,
    pub data: String,
}

/// How many events a slow SSE subscriber may fall behind before it misses some (it then
/// resumes from the archive with `Last-Event-ID`).
pub const SSE_CHANNEL_CAPACITY: usize = 1024;

/// Publishes matching events on a named stream for the local HTTP server.
#[derive(Debug)]
pub struct SseTarget {
    id: String,
    sender: broadcast::Sender<Arc<SseMessage>>,
}

impl SseTarget {
    pub fn new(stream: &str, sender: broadcast::Sender<Arc<SseMessage>>) -> SseTarget {
        SseTarget {
            id: format!("sse:{stream}"),
            sender,
        }
    }
}

#[async_trait]
impl Target for SseTarget {
    fn id(&self) -> &str {
        &self.id
    }

    async fn deliver(&self, envelopes: &[&Value]) -> Result<(), TargetFailure> {
        for envelope in envelopes {
            // No subscriber is not a failure: a live stream has nobody to lose events for,
            // and a subscriber that connects later reads the archive first.
            let _ = self.sender.send(Arc::new(SseMessage {
                id: delivery_key(envelope).unwrap_or_default(),
                data: envelope.to_string(),
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
