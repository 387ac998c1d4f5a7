//! The EventBridge publisher: the [`EventBus`] port over `PutEvents` (`aws-sdk-eventbridge`).
//!
//! EventBridge's limits live here, with their numbers:
//!
//! - at most [`MAX_ENTRIES_PER_PUT`] (10) entries a call, and the entries of one call together
//!   at most [`MAX_ENTRY_BYTES`] (256 KB), so a call is split further when entries are large;
//! - at most 256 KB an entry, counted as AWS documents it ("Calculating Amazon EventBridge
//!   PutEvents event entry size"): 14 bytes when `Time` is set, plus the UTF-8 bytes of
//!   `Source`, `DetailType`, `Detail` and each `Resources` entry ([`Entry::size`]);
//! - an event whose entry would be larger is sent as a **claim-check**: the unbounded part of
//!   the detail (the source record's `key`) is left out and `claimCheck` says so, with the
//!   versioned resource reference (`Patient/p1/_history/3`) to vread it through the partner
//!   gateway. The detail stays valid against `infra/schemas/change-event.schema.json`.
//!
//! A call answers per entry (`FailedEntryCount`, and an `ErrorCode` on each refused entry).
//! Entries refused for a passing reason (throttling, an internal failure) and calls that failed
//! on the wire are retried, only those entries, with exponential backoff and full jitter, a
//! bounded number of times ([`EntryRetry`]); what still fails is reported per entry to the
//! outbox relay (which keeps it for the next run), or as a [`PublishError`] naming the event ids
//! by [`EventBridgeBus::publish`].

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{BusError, EventBus, MAX_ENTRIES_PER_PUT, MAX_ENTRY_BYTES, PutEntryResult};
use crate::model::ChangeEvent;

/// What AWS counts for an entry's `Time` parameter, whatever its value.
pub const TIME_BYTES: usize = 14;

/// The most bytes (by the entry-size rule) the entries of one `PutEvents` call may total.
pub const MAX_CALL_BYTES: usize = MAX_ENTRY_BYTES;

/// Entry error code of an event that is too large even as a claim-check (never sent).
pub const ENTRY_TOO_LARGE: &str = "EntryTooLarge";

/// Entry error codes EventBridge gives for refusals that may pass: retried.
const RETRYABLE_ENTRY_CODES: &[&str] = &[
    "ThrottlingException",
    "InternalFailure",
    "InternalException",
    "ServiceUnavailable",
];

/// Why a claim-check was sent instead of the whole detail.
pub const CLAIM_CHECK_REASON: &str = "entry-too-large";

/// One `PutEvents` entry, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The change event's stable id (`detail.eventId`).
    pub event_id: String,
    pub source: String,
    pub detail_type: &'static str,
    /// The detail, as sent (JSON text).
    pub detail: String,
    pub resources: Vec<String>,
    pub time: DateTime<Utc>,
    /// Whether the detail is a claim-check.
    pub claim_checked: bool,
}

impl Entry {
    /// The entry's size as EventBridge counts it.
    pub fn size(&self) -> usize {
        TIME_BYTES
            + self.source.len()
            + self.detail_type.len()
            + self.detail.len()
            + self.resources.iter().map(String::len).sum::<usize>()
    }

    /// The entry for an event: its whole detail when that fits in [`MAX_ENTRY_BYTES`], a
    /// claim-check otherwise; an error when not even the claim-check fits.
    pub fn prepare(event: &ChangeEvent) -> Result<Entry, EntryTooLarge> {
        let not_json = |e: serde_json::Error| EntryTooLarge {
            event_id: event.detail.event_id.clone(),
            size: 0,
            message: format!("the detail does not serialize: {e}"),
        };
        // The detail's own field order (a Value would sort the keys).
        let full = serde_json::to_string(&event.detail).map_err(not_json)?;
        let mut entry = Entry {
            event_id: event.detail.event_id.clone(),
            source: event.source.clone(),
            detail_type: event.detail_type.detail_type(),
            detail: full,
            resources: event.resources.clone(),
            time: event.time,
            claim_checked: false,
        };
        let full_size = entry.size();
        if full_size <= MAX_ENTRY_BYTES {
            return Ok(entry);
        }
        let value = serde_json::to_value(&event.detail).map_err(not_json)?;
        entry.detail = claim_check(value, full_size).to_string();
        entry.claim_checked = true;
        let size = entry.size();
        if size > MAX_ENTRY_BYTES {
            return Err(EntryTooLarge {
                event_id: entry.event_id,
                size,
                message: "even as a claim-check (source, entity or resources too long)".into(),
            });
        }
        tracing::info!(
            event_id = %entry.event_id,
            full_size,
            size,
            "event sent as a claim-check"
        );
        Ok(entry)
    }

    fn to_sdk(&self, bus: &str) -> PutEventsRequestEntry {
        PutEventsRequestEntry::builder()
            .event_bus_name(bus)
            .source(&self.source)
            .detail_type(self.detail_type)
            .detail(&self.detail)
            .set_resources(Some(self.resources.clone()))
            .time(aws_sdk_eventbridge::primitives::DateTime::from_millis(
                self.time.timestamp_millis(),
            ))
            .build()
    }
}

/// The claim-check detail: the full detail without its `key` (the only part whose size the
/// pipeline does not bound), and `claimCheck` saying what was left out and where the
/// resource version is.
fn claim_check(mut detail: Value, full_size: usize) -> Value {
    let reference = format!(
        "{}/{}/_history/{}",
        detail["resourceType"].as_str().unwrap_or_default(),
        detail["id"].as_str().unwrap_or_default(),
        detail["versionId"].as_str().unwrap_or_default()
    );
    if let Some(o) = detail.as_object_mut() {
        o.remove("key");
        o.insert(
            "claimCheck".into(),
            json!({
                "reason": CLAIM_CHECK_REASON,
                "entryBytes": full_size,
                "omitted": ["key"],
                "reference": reference,
                "fetch": "vread",
            }),
        );
    }
    detail
}

/// An event too large for EventBridge even as a claim-check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event_id}: entry of {size} bytes is over EventBridge's 256 KB: {message}")]
pub struct EntryTooLarge {
    pub event_id: String,
    pub size: usize,
    pub message: String,
}

/// Groups entries (by their sizes, in order) into calls of at most [`MAX_ENTRIES_PER_PUT`]
/// entries and [`MAX_CALL_BYTES`] bytes. Every size must be at most [`MAX_ENTRY_BYTES`].
pub fn plan_calls(sizes: &[usize]) -> Vec<Range<usize>> {
    let mut calls = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, size) in sizes.iter().enumerate() {
        if i > start && (i - start == MAX_ENTRIES_PER_PUT || bytes + size > MAX_CALL_BYTES) {
            calls.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        calls.push(start..sizes.len());
    }
    calls
}

/// How refused entries are retried: up to `max_attempts` calls in all, waiting a random time
/// up to `base × 2^(attempt-1)` (at most `max_delay`) before each retry ("full jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRetry {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl Default for EntryRetry {
    fn default() -> Self {
        EntryRetry {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(3),
        }
    }
}

impl EntryRetry {
    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }
}

/// One entry's answer from a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    Accepted(String),
    Failed { code: String, message: String },
}

/// A call that failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

/// The `PutEvents` call itself: the SDK client, or a scripted one in tests.
#[async_trait]
pub trait PutEventsApi: Send + Sync + std::fmt::Debug {
    /// Sends entries (within the limits) to a bus; one outcome per entry, in order.
    async fn put(&self, bus: &str, entries: &[Entry]) -> Result<Vec<EntryOutcome>, CallFailure>;
}

/// `PutEvents` through the AWS SDK; the client is built on first use from
/// [`crate::aws::sdk_config`] unless one is given.
#[derive(Debug, Default)]
pub struct SdkPutEvents {
    client: OnceCell<aws_sdk_eventbridge::Client>,
}

impl SdkPutEvents {
    pub fn with_client(client: aws_sdk_eventbridge::Client) -> Self {
        SdkPutEvents {
            client: OnceCell::new_with(Some(client)),
        }
    }

    async fn client(&self) -> &aws_sdk_eventbridge::Client {
        self.client
            .get_or_init(|| async {
                aws_sdk_eventbridge::Client::new(&crate::aws::sdk_config().await)
            })
            .await
    }
}

fn call_failure<E, R>(e: &SdkError<E, R>) -> CallFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("Unknown").to_owned();
            let retryable = RETRYABLE_ENTRY_CODES.contains(&code.as_str());
            CallFailure {
                message: s.err().message().unwrap_or_default().to_owned(),
                code,
                retryable,
            }
        }
        SdkError::ConstructionFailure(_) => CallFailure {
            code: "ConstructionFailure".into(),
            message: format!("{e:?}"),
            retryable: false,
        },
        // Timeouts, connection failures, unreadable responses: the call may pass later.
        _ => CallFailure {
            code: "RequestFailed".into(),
            message: aws_smithy_error_text(e),
            retryable: true,
        },
    }
}

fn aws_smithy_error_text<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[async_trait]
impl PutEventsApi for SdkPutEvents {
    async fn put(&self, bus: &str, entries: &[Entry]) -> Result<Vec<EntryOutcome>, CallFailure> {
        let mut request = self.client().await.put_events();
        for e in entries {
            request = request.entries(e.to_sdk(bus));
        }
        let out = request.send().await.map_err(|e| call_failure(&e))?;
        let answered = out.entries();
        if answered.len() != entries.len() {
            return Err(CallFailure {
                code: "InternalFailure".into(),
                message: format!(
                    "PutEvents answered {} entries for {} sent",
                    answered.len(),
                    entries.len()
                ),
                retryable: true,
            });
        }
        Ok(answered
            .iter()
            .map(|r| match (r.event_id(), r.error_code()) {
                (Some(id), None) => EntryOutcome::Accepted(id.to_owned()),
                (_, code) => EntryOutcome::Failed {
                    code: code.unwrap_or("Unknown").to_owned(),
                    message: r.error_message().unwrap_or_default().to_owned(),
                },
            })
            .collect())
    }
}

/// Events still refused after every retry, by event id.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("EventBridge refused events {event_ids:?} ({codes:?}) after retries")]
    EntriesFailed {
        /// The change events' stable ids (`detail.eventId`).
        event_ids: Vec<String>,
        /// Each one's last error code, in the same order.
        codes: Vec<String>,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl PublishError {
    pub fn is_retryable(&self) -> bool {
        match self {
            PublishError::EntriesFailed { codes, .. } => codes
                .iter()
                .all(|c| RETRYABLE_ENTRY_CODES.contains(&c.as_str()) || c == "RequestFailed"),
            PublishError::Bus(e) => e.is_retryable(),
        }
    }
}

/// The EventBridge bus.
#[derive(Debug, Clone)]
pub struct EventBridgeBus {
    bus: String,
    api: Arc<dyn PutEventsApi>,
    retry: EntryRetry,
}

impl EventBridgeBus {
    /// A bus (name or ARN) reached through the SDK configured from the environment (built on
    /// the first call, so a cold start does not wait for it).
    pub fn from_env(bus: impl Into<String>) -> Self {
        Self::with_api(bus, Arc::new(SdkPutEvents::default()))
    }

    /// A bus reached through a given SDK client.
    pub fn with_client(bus: impl Into<String>, client: aws_sdk_eventbridge::Client) -> Self {
        Self::with_api(bus, Arc::new(SdkPutEvents::with_client(client)))
    }

    /// A bus reached through any `PutEvents` implementation.
    pub fn with_api(bus: impl Into<String>, api: Arc<dyn PutEventsApi>) -> Self {
        EventBridgeBus {
            bus: bus.into(),
            api,
            retry: EntryRetry::default(),
        }
    }

    pub fn with_retry(mut self, retry: EntryRetry) -> Self {
        self.retry = retry;
        self
    }

    /// The bus name or ARN.
    pub fn bus(&self) -> &str {
        &self.bus
    }

    /// Publishes any number of events, ten at a time; the bus's event ids in order, or the
    /// events still refused after the retries.
    pub async fn publish(&self, events: &[ChangeEvent]) -> Result<Vec<String>, PublishError> {
        let mut ids = Vec::with_capacity(events.len());
        let mut failed_ids = Vec::new();
        let mut codes = Vec::new();
        for chunk in events.chunks(MAX_ENTRIES_PER_PUT) {
            for (event, result) in chunk.iter().zip(self.put_events(chunk).await?) {
                match result {
                    PutEntryResult::Accepted(id) => ids.push(id),
                    PutEntryResult::Failed { code, .. } => {
                        failed_ids.push(event.detail.event_id.clone());
                        codes.push(code);
                    }
                }
            }
        }
        if failed_ids.is_empty() {
            Ok(ids)
        } else {
            Err(PublishError::EntriesFailed {
                event_ids: failed_ids,
                codes,
            })
        }
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn put_events(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        super::check_put_size(events)?;
        let mut results: Vec<Option<PutEntryResult>> = vec![None; events.len()];
        // (index in `events`, entry) of what is still to send.
        let mut pending: Vec<(usize, Entry)> = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match Entry::prepare(event) {
                Ok(e) => pending.push((i, e)),
                Err(e) => {
                    tracing::error!(event_id = %e.event_id, size = e.size, "event too large for EventBridge");
                    results[i] = Some(PutEntryResult::Failed {
                        code: ENTRY_TOO_LARGE.into(),
                        message: e.to_string(),
                    });
                }
            }
        }
        // The last refusal of each pending entry, and whether it was the whole call's.
        let mut last: Vec<(String, String, bool)> = vec![Default::default(); events.len()];
        let mut accepted = 0usize;
        let mut attempt = 0u32;
        while !pending.is_empty() && attempt < self.retry.max_attempts.max(1) {
            attempt += 1;
            if attempt > 1 {
                tokio::time::sleep(self.retry.delay(attempt - 1)).await;
            }
            let sizes: Vec<usize> = pending.iter().map(|(_, e)| e.size()).collect();
            let mut again = Vec::new();
            for call in plan_calls(&sizes) {
                let batch: Vec<Entry> = pending[call.clone()]
                    .iter()
                    .map(|(_, e)| e.clone())
                    .collect();
                match self.api.put(&self.bus, &batch).await {
                    Ok(outcomes) => {
                        for ((i, entry), outcome) in pending[call].iter().zip(outcomes) {
                            match outcome {
                                EntryOutcome::Accepted(id) => {
                                    accepted += 1;
                                    results[*i] = Some(PutEntryResult::Accepted(id));
                                }
                                EntryOutcome::Failed { code, message } => {
                                    let retryable = RETRYABLE_ENTRY_CODES.contains(&code.as_str());
                                    if retryable {
                                        again.push((*i, entry.clone()));
                                        last[*i] = (code, message, false);
                                    } else {
                                        results[*i] =
                                            Some(PutEntryResult::Failed { code, message });
                                    }
                                }
                            }
                        }
                    }
                    Err(f) => {
                        for (i, entry) in &pending[call] {
                            if f.retryable {
                                again.push((*i, entry.clone()));
                                last[*i] = (f.code.clone(), f.message.clone(), true);
                            } else {
                                results[*i] = Some(PutEntryResult::Failed {
                                    code: f.code.clone(),
                                    message: f.message.clone(),
                                });
                            }
                        }
                    }
                }
            }
            if !again.is_empty() {
                tracing::warn!(
                    bus = %self.bus,
                    attempt,
                    refused = again.len(),
                    "EventBridge refused entries; retrying those"
                );
            }
            pending = again;
        }
        let mut call_failures = 0usize;
        for (i, entry) in &pending {
            let (code, message, whole_call) = last[*i].clone();
            call_failures += usize::from(whole_call);
            tracing::error!(event_id = %entry.event_id, code = %code, attempts = attempt, "event not accepted by EventBridge");
            results[*i] = Some(PutEntryResult::Failed {
                code,
                message: format!("after {attempt} attempts: {message}"),
            });
        }
        // Nothing got through and the bus could not be reached: the whole call failed.
        if accepted == 0 && !pending.is_empty() && call_failures == events.len() {
            let (code, message, _) = last[pending[0].0].clone();
            return Err(BusError::Unavailable(format!(
                "EventBridge bus {}: {code}: {message}",
                self.bus
            )));
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or(PutEntryResult::Failed {
                    code: "InternalFailure".into(),
                    message: "entry not handled".into(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
