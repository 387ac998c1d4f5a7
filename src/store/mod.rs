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
    check_map(target, &map)?;
    map.insert("id".to_owned(), Value::String(target.id.clone()));
    strip_meta(&mut map).map_err(|reason| invalid(target, reason))?;
    Ok(Value::Object(map))
}

/// What [`canonical_content`] checks, without copying the resource: a JSON object whose
/// `resourceType` is the target's, whose `id` (if any) is the target's and whose `meta` (if
/// any) is an object. The same errors, in the same order.
pub(crate) fn check_content<'a>(
    target: &ResourceRef,
    resource: &'a Value,
) -> Result<&'a Map<String, Value>, StoreError> {
    let Value::Object(map) = resource else {
        return Err(invalid(target, "the resource is not a JSON object"));
    };
    check_map(target, map)?;
    match map.get("meta") {
        None | Some(Value::Object(_)) => Ok(map),
        Some(_) => Err(invalid(target, "meta is not an object")),
    }
}

fn check_map(target: &ResourceRef, map: &Map<String, Value>) -> Result<(), StoreError> {
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
        None => Ok(()),
        Some(Value::String(id)) if *id == target.id => Ok(()),
        Some(Value::String(id)) => Err(invalid(
            target,
            format!("id {id:?} differs from the target's"),
        )),
        Some(_) => Err(invalid(target, "id is not a string")),
    }
}

/// The JSON text of a stored version, written straight from a checked resource (see
/// [`check_content`]; canonical or not): the target's `id`, and `meta` without the resource's
/// own `versionId`/`lastUpdated` but with this version's. The same text as
/// `with_meta(canonical_content(..), ..).to_string()` (keys in the same sorted order), without
/// copying the resource into a new tree first.
pub(crate) fn stored_text(
    target: &ResourceRef,
    resource: &Map<String, Value>,
    version_id: &str,
    last_updated: &str,
) -> Result<String, StoreError> {
    let meta_map = match resource.get("meta") {
        Some(Value::Object(meta)) => Some(meta),
        _ => None,
    };
    let mut meta: Vec<(&str, Part<'_>)> = meta_map
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "versionId" && *k != "lastUpdated")
        .map(|(k, v)| (k.as_str(), Part::Value(v)))
        .collect();
    meta.push(("versionId", Part::Str(version_id)));
    meta.push(("lastUpdated", Part::Str(last_updated)));
    meta.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut entries: Vec<(&str, Part<'_>)> = Vec::with_capacity(resource.len() + 2);
    entries.extend(
        resource
            .iter()
            .filter(|(k, _)| *k != "id" && *k != "meta")
            .map(|(k, v)| (k.as_str(), Part::Value(v))),
    );
    entries.push(("id", Part::Str(&target.id)));
    entries.push(("meta", Part::Object(meta)));
    // `Map` is a `BTreeMap` (no `preserve_order`): its text has keys in `str` order.
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    serde_json::to_string(&Part::Object(entries))
        .map_err(|e| invalid(target, format!("content cannot be stored: {e}")))
}

/// A JSON value to write: borrowed, a string, or an object of parts (keys already ordered).
enum Part<'a> {
    Value(&'a Value),
    Str(&'a str),
    Object(Vec<(&'a str, Part<'a>)>),
}

impl Serialize for Part<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Part::Value(v) => v.serialize(serializer),
            Part::Str(s) => serializer.serialize_str(s),
            Part::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patient() -> ResourceRef {
        ResourceRef {
            resource_type: "Patient".into(),
            id: "p-1".into(),
        }
    }

    /// The text `stored_text` replaces: the canonical copy with `meta` set, then its text.
    fn reference_text(target: &ResourceRef, resource: &Value, version: i64) -> String {
        let when: DateTime<Utc> = "2025-03-04T05:06:07.123Z".parse().unwrap();
        with_meta(canonical_content(target, resource).unwrap(), version, when).to_string()
    }

    #[test]
    fn stored_text_equals_the_canonical_copy_with_meta() {
        let target = patient();
        let resources = [
            json!({"resourceType": "Patient"}),
            json!({"resourceType": "Patient", "id": "p-1", "active": true}),
            json!({"resourceType": "Patient", "name": [{"family": "Ö\"\\\n", "given": ["a", "b"]}],
                   "_birthDate": {"extension": []}, "birthDate": "1970", "zzz": null, "a": 1.5}),
            json!({"resourceType": "Patient", "meta": {}}),
            json!({"resourceType": "Patient", "meta": {"versionId": "7", "lastUpdated": "x"}}),
            json!({"resourceType": "Patient", "id": "p-1", "meta": {"versionId": "7",
                   "profile": ["urn:p"], "tag": [{"code": "t"}], "source": "s", "lastUpdated": "x",
                   "security": []}, "identifier": [{"system": "urn:s", "value": "v"}],
                   "implicitRules": "r", "language": "en", "text": {"div": "<div/>"}}),
            json!({"resourceType": "Patient", "extension": [{"url": "u", "valueString": "v"}],
                   "idx": 1, "i": 2, "metb": 3, "mes": 4, "lastUpdated": 5, "versionId": 6}),
        ];
        for resource in &resources {
            let map = check_content(&target, resource).unwrap();
            for version in [1, 12] {
                let text = stored_text(
                    &target,
                    map,
                    &version.to_string(),
                    "2025-03-04T05:06:07.123Z",
                )
                .unwrap();
                assert_eq!(
                    text,
                    reference_text(&target, resource, version),
                    "{resource}"
                );
                // A canonical copy (a dataset's staged content) gives the same text too.
                let canonical = canonical_content(&target, resource).unwrap();
                let Value::Object(canonical) = &canonical else {
                    panic!("not an object")
                };
                let again = stored_text(
                    &target,
                    canonical,
                    &version.to_string(),
                    "2025-03-04T05:06:07.123Z",
                )
                .unwrap();
                assert_eq!(again, text);
            }
        }
    }

    #[test]
    fn check_content_refuses_what_canonical_content_refuses_with_the_same_error() {
        let target = patient();
        let cases = [
            json!([1]),
            json!("Patient"),
            json!({}),
            json!({"resourceType": 1}),
            json!({"resourceType": "Observation"}),
            json!({"resourceType": "Patient", "id": 7}),
            json!({"resourceType": "Patient", "id": "other"}),
            json!({"resourceType": "Patient", "meta": []}),
            json!({"resourceType": "Patient", "meta": "x"}),
            // Both wrong: the first check (resourceType) names the error, in both.
            json!({"resourceType": "Observation", "id": "other", "meta": 1}),
            json!({"resourceType": "Patient", "id": "other", "meta": 1}),
        ];
        for bad in &cases {
            let checked = check_content(&target, bad).unwrap_err();
            let canonical = canonical_content(&target, bad).unwrap_err();
            assert!(matches!(checked, StoreError::Invalid { .. }), "{bad}");
            assert_eq!(checked.to_string(), canonical.to_string(), "{bad}");
        }
        let good = json!({"resourceType": "Patient", "id": "p-1", "meta": {"tag": []}});
        assert!(check_content(&target, &good).is_ok());
        assert!(canonical_content(&target, &good).is_ok());
    }
}
