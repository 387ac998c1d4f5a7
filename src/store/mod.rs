//! The FHIR store port: resources with versions and history, written only through
//! [`FhirStore::apply`], which also records one outbox entry per committed change so events
//! follow the store exactly.
//!
//! Adapters: [`sqlite`] (the embedded default, [`sqlite::SqliteStore`]). DynamoDB and FHIR
//! REST servers come later. The partner gateway reads through [`SearchStore`] as well
//! ([`search`]: type-level search, paged history).
//!
//! Semantics every adapter keeps:
//! - an upsert assigns the next `versionId` (1, 2, 3…) and `lastUpdated`, and keeps history;
//! - content equal to the current version (ignoring `meta.versionId`/`meta.lastUpdated`)
//!   makes no new version: [`PublishAction::Unchanged`];
//! - each resource remembers the highest source sequence applied to it, per source entity
//!   (sequences of different sources are not comparable); a change with a strictly older
//!   sequence is skipped: [`PublishAction::Stale`]. An equal sequence is applied (a replay
//!   after a mapping fix may bring new content; an exact replay is `Unchanged`);
//! - a delete is a version too (history shows it); deleting what is absent or already
//!   deleted is `Unchanged`; an upsert after a delete re-creates it (`Created`, next version).

pub mod dataset;
pub mod search;
pub mod sqlite;

pub use dataset::DatasetStore;
pub use search::SearchStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{ChangeEvent, Lineage, PublishOutcome, ResourceChange, ResourceRef};

/// One version of a resource as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredVersion {
    #[serde(flatten)]
    pub target: ResourceRef,
    pub version_id: String,
    pub last_updated: DateTime<Utc>,
    /// True for a delete version.
    pub deleted: bool,
    /// The resource with `meta.versionId` and `meta.lastUpdated` set; `None` for a delete.
    pub resource: Option<Value>,
    /// The source change that made this version.
    pub lineage: Option<Lineage>,
}

/// An event waiting in the outbox, with its position there.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Position in the outbox (increasing in commit order).
    pub position: i64,
    pub event: ChangeEvent,
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is busy: the same call may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A resource the store refuses (bad id, missing resourceType…): not retryable.
    #[error("{target}: {reason}")]
    Invalid { target: String, reason: String },
    /// Stored data that cannot be read back (corruption, a newer schema).
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A FHIR store. Implementations are shared across tasks (`Arc<dyn FhirStore>`).
#[async_trait]
pub trait FhirStore: Send + Sync + std::fmt::Debug {
    /// Applies the resource changes of one source change in one transaction and returns what
    /// happened to each, in order. Each committed change (created, updated, deleted) writes
    /// one outbox entry in the same transaction.
    async fn apply(&self, changes: &[ResourceChange]) -> Result<Vec<PublishOutcome>, StoreError>;

    /// The current version (possibly a delete), or `None` if the resource never existed.
    async fn read(&self, target: &ResourceRef) -> Result<Option<StoredVersion>, StoreError>;

    /// One version, or `None`.
    async fn vread(
        &self,
        target: &ResourceRef,
        version_id: &str,
    ) -> Result<Option<StoredVersion>, StoreError>;

    /// All versions, newest first (empty if the resource never existed).
    async fn history(&self, target: &ResourceRef) -> Result<Vec<StoredVersion>, StoreError>;
}

/// The outbox side of a store that keeps one: events of committed changes not yet delivered.
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Up to `limit` undelivered events, oldest first.
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Marks entries delivered; they are never returned by `pending` again.
    async fn mark_delivered(&self, positions: &[i64]) -> Result<(), StoreError>;
}
