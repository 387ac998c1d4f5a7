//! The FHIR store port: resources with versions and history, written only through
//! [`FhirStore::apply`], which also records one outbox entry per committed change so events
//! follow the store exactly.
//!
//! Adapters: [`sqlite`] (the embedded default, [`sqlite::SqliteStore`]), [`dynamodb`]
//! ([`dynamodb::DynamoStore`], whose table stream is the outbox on AWS) and [`rest`]
//! ([`rest::RestStore`], any FHIR R4 server: HealthLake, HAPI, `fhir-unify serve`…).
//! `tests/store_suite.rs` runs the same cases against every adapter. The partner gateway
//! reads through [`SearchStore`] as well ([`search`]: type-level search, paged history),
//! which the SQLite and DynamoDB adapters implement with the same answers
//! (`tests/search_suite.rs`).
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
pub mod dynamodb;
pub mod ledger;
pub mod rest;
pub mod search;
pub mod sqlite;

pub use dataset::DatasetStore;
pub use search::SearchStore;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{
    ChangeEvent, ChangeEventDetail, ChangeKind, Lineage, PublishOutcome, ResourceChange,
    ResourceRef,
};

/// Longest FHIR id (FHIR R4 `id` datatype: `[A-Za-z0-9\-\.]{1,64}`).
pub(crate) const MAX_ID_LEN: usize = 64;

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

// ---- helpers every adapter shares, so they keep the same semantics ----

/// The content compared for "unchanged": the resource without `meta.versionId` and
/// `meta.lastUpdated` (and without `meta` when nothing else is in it), with `id` set.
pub(crate) fn canonical_content(
    target: &ResourceRef,
    resource: &Value,
) -> Result<Value, StoreError> {
    if !resource.is_object() {
        return Err(invalid(target, "the resource is not a JSON object"));
    }
    canonical_owned(target, resource.clone())
}

/// [`canonical_content`] of a resource the caller owns (no copy).
pub(crate) fn canonical_owned(target: &ResourceRef, resource: Value) -> Result<Value, StoreError> {
    let Value::Object(mut map) = resource else {
        return Err(invalid(target, "the resource is not a JSON object"));
    };
    match map.get("resourceType") {
        Some(Value::String(t)) if *t == target.resource_type => {}
        Some(Value::String(t)) => {
            return Err(invalid(
                target,
                format!("resourceType {t:?} differs from the target's"),
            ));
        }
        Some(_) => return Err(invalid(target, "resourceType is not a string")),
        None => return Err(invalid(target, "resourceType is missing")),
    }
    match map.get("id") {
        None => {}
        Some(Value::String(id)) if *id == target.id => {}
        Some(Value::String(id)) => {
            return Err(invalid(
                target,
                format!("id {id:?} differs from the target's"),
            ));
        }
        Some(_) => return Err(invalid(target, "id is not a string")),
    }
    map.insert("id".to_owned(), Value::String(target.id.clone()));
    strip_meta(&mut map).map_err(|reason| invalid(target, reason))?;
    Ok(Value::Object(map))
}

pub(crate) fn strip_meta(map: &mut Map<String, Value>) -> Result<(), &'static str> {
    let now_empty = match map.get_mut("meta") {
        None => return Ok(()),
        Some(Value::Object(meta)) => {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            meta.is_empty()
        }
        Some(_) => return Err("meta is not an object"),
    };
    if now_empty {
        map.remove("meta");
    }
    Ok(())
}

/// The canonical content with this version's `meta.versionId` and `meta.lastUpdated`.
pub(crate) fn with_meta(content: Value, version: i64, last_updated: DateTime<Utc>) -> Value {
    let Value::Object(mut map) = content else {
        // canonical_content only returns objects.
        return content;
    };
    let meta = map
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert("versionId".to_owned(), Value::String(version.to_string()));
        meta.insert(
            "lastUpdated".to_owned(),
            Value::String(format_time(last_updated)),
        );
    }
    Value::Object(map)
}

/// Checks the target's type and id; the error names `Type/id`.
pub(crate) fn check_ref(target: &ResourceRef) -> Result<(), StoreError> {
    let t = &target.resource_type;
    if t.is_empty()
        || t.len() > MAX_ID_LEN
        || !t.starts_with(|c: char| c.is_ascii_uppercase())
        || !t.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return Err(invalid(target, "not a FHIR resource type name"));
    }
    if !is_fhir_id(&target.id) {
        return Err(invalid(
            target,
            "not a FHIR id ([A-Za-z0-9-.], 1 to 64 characters)",
        ));
    }
    Ok(())
}

pub(crate) fn is_fhir_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A `versionId` as this store writes it (1, 2, 3… without sign or leading zeros).
pub(crate) fn parse_version_id(version_id: &str) -> Option<i64> {
    if version_id.is_empty()
        || version_id.starts_with('0')
        || !version_id.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    version_id.parse().ok()
}

pub(crate) fn invalid(target: &ResourceRef, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        target: target.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn parse_time(target: &ResourceRef, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("{target}: stored time {text:?}: {e}")))
}

/// The canonical form of a stored live version's JSON text (`version` names it in errors):
/// what [`canonical_content`] of a new upsert is compared with.
pub(crate) fn stored_canonical_text(
    target: &ResourceRef,
    version: i64,
    text: &str,
) -> Result<Value, StoreError> {
    let corrupt =
        |reason: String| StoreError::Corrupt(format!("{target} version {version}: {reason}"));
    match serde_json::from_str(text) {
        Ok(Value::Object(mut map)) => {
            strip_meta(&mut map).map_err(|r| corrupt(r.to_owned()))?;
            Ok(Value::Object(map))
        }
        Ok(_) => Err(corrupt("content is not a JSON object".to_owned())),
        Err(e) => Err(corrupt(format!("content: {e}"))),
    }
}

/// The change event of a committed version (created, updated or deleted).
pub(crate) fn change_event(
    kind: ChangeKind,
    target: &ResourceRef,
    version_id: &str,
    last_updated: DateTime<Utc>,
    lineage: &Lineage,
) -> ChangeEvent {
    ChangeEvent::new(
        kind,
        ChangeEventDetail {
            event_id: ChangeEventDetail::stable_event_id(
                &target.resource_type,
                &target.id,
                version_id,
            ),
            resource_type: target.resource_type.clone(),
            id: target.id.clone(),
            version_id: version_id.to_owned(),
            last_updated,
            source: lineage.source.clone(),
            entity: lineage.entity.clone(),
            key: lineage.key.clone(),
            sequence: lineage.sequence.clone(),
        },
    )
}
