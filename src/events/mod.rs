//! Change events: the bus port, the local bus, and the relay that moves committed changes from
//! the store's outbox to the bus.
//!
//! Events follow the store: the store writes an outbox entry in the same transaction as each
//! committed change, and [`relay_outbox`] delivers outbox entries in commit order, marking each
//! delivered only after the bus accepted it. A crash in between re-delivers, and the event id
//! is stable, so targets de-duplicate (the local NDJSON target does it itself).

pub mod local;

use async_trait::async_trait;

use crate::model::ChangeEvent;
use crate::store::{Outbox, StoreError};

/// EventBridge `PutEvents` accepts at most 10 entries a call.
pub const MAX_ENTRIES_PER_PUT: usize = 10;

/// EventBridge's limit on one entry (256 KB), counted as AWS does it: Source, DetailType,
/// Detail and Resources bytes together.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// The result of one entry of a `put_events` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutEntryResult {
    /// Accepted; the bus's event id.
    Accepted(String),
    /// Refused; EventBridge's error code and message (`ThrottlingException`, …).
    Failed { code: String, message: String },
}

/// Errors of a whole `put_events` call.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The call itself is invalid (more than 10 entries…): a bug in the caller, not retryable.
    #[error("invalid PutEvents call: {0}")]
    Invalid(String),
    /// The bus cannot be reached or a target failed: the call may succeed later.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

impl BusError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Unavailable(_))
    }
}

/// An event bus (EventBridge, or the local bus) with EventBridge's `PutEvents` contract.
#[async_trait]
pub trait EventBus: Send + Sync + std::fmt::Debug {
    /// Puts up to [`MAX_ENTRIES_PER_PUT`] events; one result per entry, in order.
    async fn put_events(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError>;
}

/// The size EventBridge counts for an entry.
pub fn entry_size(event: &ChangeEvent) -> usize {
    let detail = serde_json::to_string(&event.detail).map_or(0, |d| d.len());
    event.source.len()
        + event.detail_type.detail_type().len()
        + detail
        + event.resources.iter().map(String::len).sum::<usize>()
}

/// Errors of the outbox relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl RelayError {
    pub fn is_retryable(&self) -> bool {
        match self {
            RelayError::Store(e) => e.is_retryable(),
            RelayError::Bus(e) => e.is_retryable(),
        }
    }
}

/// What one relay run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayReport {
    /// Events the bus accepted and that are now marked delivered.
    pub delivered: usize,
    /// Events the bus refused this time; they stay in the outbox for the next run.
    pub failed: usize,
}

/// Delivers every pending outbox event to the bus, in commit order, at most 10 per call.
///
/// Entries the bus refuses stay pending, and the run stops at the first refused entry so that
/// later changes to the same resource are not delivered before earlier ones.
pub async fn relay_outbox(
    outbox: &dyn Outbox,
    bus: &dyn EventBus,
) -> Result<RelayReport, RelayError> {
    let mut report = RelayReport::default();
    loop {
        let pending = outbox.pending(MAX_ENTRIES_PER_PUT).await?;
        if pending.is_empty() {
            return Ok(report);
        }
        let events: Vec<ChangeEvent> = pending.iter().map(|e| e.event.clone()).collect();
        let results = bus.put_events(&events).await?;
        let mut delivered = Vec::with_capacity(pending.len());
        for (entry, result) in pending.iter().zip(&results) {
            match result {
                PutEntryResult::Accepted(_) => delivered.push(entry.position),
                PutEntryResult::Failed { code, .. } => {
                    tracing::warn!(
                        position = entry.position,
                        event_id = %entry.event.detail.event_id,
                        code = %code,
                        "event refused by the bus; it stays in the outbox"
                    );
                    break;
                }
            }
        }
        outbox.mark_delivered(&delivered).await?;
        report.delivered += delivered.len();
        if delivered.len() < pending.len() {
            report.failed += pending.len() - delivered.len();
            return Ok(report);
        }
    }
}
