//! The types every part of the pipeline speaks: a source change coming in, the FHIR resource
//! changes it maps to, what publishing did to each resource, and the change event going out.
//!
//! Sources, mapping, validation, store and events talk to each other only through these.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod record;
pub use record::{Cells, Columns, Record};

/// What a source change does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// The record exists with the given data (insert or update).
    Upsert,
    /// The record is gone.
    Delete,
}

/// A source's position for a record, as a non-negative decimal integer of any length.
///
/// DynamoDB stream sequence numbers have 21 or more digits and do not fit in a `u64`, so the
/// value is kept as its decimal digits and ordered numerically (length first, then digits),
/// which is exact for any size without a big-integer dependency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Sequence(String);

/// A sequence that is not a non-negative decimal integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sequence {0:?} is not a non-negative decimal integer")]
pub struct InvalidSequence(pub String);

impl Sequence {
    /// Parses a decimal sequence; leading zeros are dropped so equal numbers compare equal.
    pub fn parse(digits: &str) -> Result<Self, InvalidSequence> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidSequence(digits.to_owned()));
        }
        let trimmed = digits.trim_start_matches('0');
        Ok(Sequence(if trimmed.is_empty() {
            "0".to_owned()
        } else {
            trimmed.to_owned()
        }))
    }

    /// The canonical decimal digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<u64> for Sequence {
    fn from(n: u64) -> Self {
        Sequence(n.to_string())
    }
}

impl Ord for Sequence {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for Sequence {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sequence {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sequence::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The key of a source record: its key attributes by name (ordered, so it has one canonical form).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordKey(pub BTreeMap<String, Value>);

impl RecordKey {
    /// One canonical string for the key: compact JSON with keys sorted. Resource ids and
    /// quarantine entries are derived from it, so it must never change for the same key.
    pub fn canonical(&self) -> String {
        // A BTreeMap of JSON values always serializes.
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// Builds a key from (name, value) pairs.
    pub fn from_pairs<I, K>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, Value)>,
        K: Into<String>,
    {
        RecordKey(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// One change to one record of a source system, decoded from whatever carried it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceChange {
    /// The configured source name (e.g. `app`).
    pub source: String,
    /// The entity within the source (a table, a file kind).
    pub entity: String,
    /// The record's key attributes.
    pub key: RecordKey,
    pub op: Op,
    /// The source's order for this record; an older change never overwrites a newer one.
    pub sequence: Sequence,
    /// When the source says the change happened.
    pub observed_at: DateTime<Utc>,
    /// The record as the source holds it after the change (for a delete: what is known of it,
    /// often only the key).
    #[serde(default)]
    pub data: Record,
}

impl SourceChange {
    /// Where this change came from, without its data.
    pub fn lineage(&self) -> Lineage {
        Lineage {
            source: self.source.clone(),
            entity: self.entity.clone(),
            key: self.key.clone(),
            sequence: self.sequence.clone(),
            observed_at: self.observed_at,
        }
    }

    /// A short, data-free label for logs and error messages: `source/entity key @sequence`.
    pub fn label(&self) -> String {
        format!(
            "{}/{} {} @{}",
            self.source, self.entity, self.key, self.sequence
        )
    }
}

/// A batch of changes handed from an ingress to the `unify` state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeBatch {
    /// Stable id of the batch (derived from the ingress event, so a redelivery has the same id).
    pub batch_id: String,
    pub changes: Vec<SourceChange>,
}

/// Where a resource change came from: the source record, without its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lineage {
    pub source: String,
    pub entity: String,
    pub key: RecordKey,
    pub sequence: Sequence,
    pub observed_at: DateTime<Utc>,
}

/// A reference to one FHIR resource: its type and logical id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRef {
    pub resource_type: String,
    pub id: String,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_type, self.id)
    }
}

/// What to do to one FHIR resource because of a source change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ResourceOp {
    /// Create or update the resource to this content (`resourceType` and `id` set).
    Upsert { resource: Value },
    /// Delete the resource.
    Delete,
}

/// One FHIR resource change produced by mapping a source change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceChange {
    #[serde(flatten)]
    pub target: ResourceRef,
    #[serde(flatten)]
    pub op: ResourceOp,
    pub lineage: Lineage,
}

/// A source change together with the resource changes it maps to. Validation and publishing
/// keep a change's resources together: either all of them go on, or the change is rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MappedChange {
    pub change: SourceChange,
    pub resources: Vec<ResourceChange>,
}

/// The pipeline step at which a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Ingest,
    Transform,
    Validate,
    Publish,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Ingest => "ingest",
            Stage::Transform => "transform",
            Stage::Validate => "validate",
            Stage::Publish => "publish",
        })
    }
}

/// A record that cannot go on, with why: what is sent to quarantine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rejection {
    pub stage: Stage,
    /// A data-free label of the record (`source/entity key @sequence`).
    pub record: String,
    /// The change itself, when it could be decoded, so it can be replayed after a fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<SourceChange>,
    /// The raw input, when the change could not be decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
    /// A FHIR OperationOutcome saying what is wrong and where.
    pub outcome: Value,
}

/// The state handed between the steps of `unify`: changes still going on, and the rejected.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MappedBatch {
    pub batch_id: String,
    pub items: Vec<MappedChange>,
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

/// What publishing did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishAction {
    Created,
    Updated,
    Deleted,
    /// The content was the same as the current version: no new version, no event.
    Unchanged,
    /// The change is older than the one already applied to the resource: skipped.
    Stale,
}

/// The per-resource result of publishing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishOutcome {
    #[serde(flatten)]
    pub target: ResourceRef,
    pub action: PublishAction,
    /// The resource's current version after publishing (absent if it never existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<DateTime<Utc>>,
}

/// What the publish step returns for a batch.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishedBatch {
    pub batch_id: String,
    pub published: Vec<PublishOutcome>,
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

/// EventBridge `Source` of every change event.
pub const EVENT_SOURCE: &str = "fhir-unify";

/// The kind of a change event (EventBridge `DetailType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    #[serde(rename = "FhirResourceCreated")]
    Created,
    #[serde(rename = "FhirResourceUpdated")]
    Updated,
    #[serde(rename = "FhirResourceDeleted")]
    Deleted,
}

impl ChangeKind {
    /// The EventBridge `DetailType` string.
    pub fn detail_type(self) -> &'static str {
        match self {
            ChangeKind::Created => "FhirResourceCreated",
            ChangeKind::Updated => "FhirResourceUpdated",
            ChangeKind::Deleted => "FhirResourceDeleted",
        }
    }

    /// The event kind for a publish action; unchanged and stale resources emit nothing.
    pub fn for_action(action: PublishAction) -> Option<Self> {
        match action {
            PublishAction::Created => Some(ChangeKind::Created),
            PublishAction::Updated => Some(ChangeKind::Updated),
            PublishAction::Deleted => Some(ChangeKind::Deleted),
            PublishAction::Unchanged | PublishAction::Stale => None,
        }
    }
}

/// The `Detail` of a change event: which resource version was committed, and from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeEventDetail {
    /// Stable id: the same committed version always has the same event id, so subscribers
    /// can de-duplicate redeliveries.
    pub event_id: String,
    pub resource_type: String,
    pub id: String,
    pub version_id: String,
    pub last_updated: DateTime<Utc>,
    pub source: String,
    pub entity: String,
    pub key: RecordKey,
    pub sequence: Sequence,
}

impl ChangeEventDetail {
    /// The stable event id of a committed resource version.
    pub fn stable_event_id(resource_type: &str, id: &str, version_id: &str) -> String {
        uuid::Uuid::new_v5(
            &EVENT_ID_NAMESPACE,
            format!("{resource_type}/{id}/_history/{version_id}").as_bytes(),
        )
        .to_string()
    }
}

/// Namespace of the v5 UUIDs used as event ids.
const EVENT_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1d_2c1e_8a7b_4c3d_9e2f_0a1b_2c3d_4e5f);

/// A change event as an EventBridge `PutEvents` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ChangeEvent {
    /// Always [`EVENT_SOURCE`].
    pub source: String,
    pub detail_type: ChangeKind,
    pub detail: ChangeEventDetail,
    /// When the change was committed.
    pub time: DateTime<Utc>,
    /// The resource reference (`Patient/123`), as EventBridge `Resources`.
    #[serde(default)]
    pub resources: Vec<String>,
}

impl ChangeEvent {
    /// The event for a committed change.
    pub fn new(kind: ChangeKind, detail: ChangeEventDetail) -> Self {
        ChangeEvent {
            source: EVENT_SOURCE.to_owned(),
            detail_type: kind,
            time: detail.last_updated,
            resources: vec![format!("{}/{}", detail.resource_type, detail.id)],
            detail,
        }
    }

    /// The event as a subscriber receives it from EventBridge (the delivered envelope).
    pub fn delivered(&self, account: &str, region: &str) -> Value {
        serde_json::json!({
            "version": "0",
            "id": self.detail.event_id,
            "detail-type": self.detail_type.detail_type(),
            "source": self.source,
            "account": account,
            "time": self.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": region,
            "resources": self.resources,
            "detail": self.detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change() -> SourceChange {
        SourceChange {
            source: "app".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!("p-1"))]),
            op: Op::Upsert,
            sequence: Sequence::parse("111111111111111111111111").unwrap(),
            observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
            data: json!({"pk": "p-1", "name": "Ada"}).into(),
        }
    }

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(v: &T) {
        let text = serde_json::to_string(v).unwrap();
        let back: T = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, v, "{text}");
    }

    #[test]
    fn sequence_orders_numerically_beyond_u64() {
        let small = Sequence::parse("999").unwrap();
        let big = Sequence::parse("1405400000000002063282832").unwrap();
        let bigger = Sequence::parse("1405400000000002063282833").unwrap();
        assert!(small < big && big < bigger);
        assert_eq!(Sequence::parse("00042").unwrap(), Sequence::from(42));
        assert_eq!(Sequence::parse("000").unwrap().as_str(), "0");
        assert!(Sequence::parse("").is_err());
        assert!(Sequence::parse("12a").is_err());
        assert!(Sequence::parse("-1").is_err());
        assert!(serde_json::from_str::<Sequence>("\"x1\"").is_err());
    }

    #[test]
    fn record_key_is_canonical_whatever_the_insertion_order() {
        let a = RecordKey::from_pairs([("sk", json!(2)), ("pk", json!("a"))]);
        let b = RecordKey::from_pairs([("pk", json!("a")), ("sk", json!(2))]);
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(a.canonical(), r#"{"pk":"a","sk":2}"#);
    }

    #[test]
    fn source_change_and_batch_round_trip() {
        let c = change();
        round_trip(&c);
        let text = serde_json::to_value(&c).unwrap();
        assert_eq!(text["op"], "upsert");
        assert_eq!(text["sequence"], "111111111111111111111111");
        assert_eq!(text["observedAt"], "2024-01-02T03:04:05Z");
        round_trip(&ChangeBatch {
            batch_id: "b1".into(),
            changes: vec![
                c.clone(),
                SourceChange {
                    op: Op::Delete,
                    data: Value::Null.into(),
                    ..c
                },
            ],
        });
    }

    #[test]
    fn resource_change_and_outcomes_round_trip() {
        let c = change();
        let upsert = ResourceChange {
            target: ResourceRef {
                resource_type: "Patient".into(),
                id: "x".into(),
            },
            op: ResourceOp::Upsert {
                resource: json!({"resourceType": "Patient", "id": "x"}),
            },
            lineage: c.lineage(),
        };
        let v = serde_json::to_value(&upsert).unwrap();
        assert_eq!(v["op"], "upsert");
        assert_eq!(v["resourceType"], "Patient");
        round_trip(&upsert);
        let delete = ResourceChange {
            op: ResourceOp::Delete,
            ..upsert.clone()
        };
        round_trip(&delete);
        round_trip(&MappedBatch {
            batch_id: "b".into(),
            items: vec![MappedChange {
                change: c.clone(),
                resources: vec![upsert, delete],
            }],
            rejected: vec![Rejection {
                stage: Stage::Validate,
                record: c.label(),
                change: Some(c.clone()),
                raw: None,
                outcome: json!({"resourceType": "OperationOutcome", "issue": []}),
            }],
        });
        round_trip(&PublishedBatch {
            batch_id: "b".into(),
            published: vec![PublishOutcome {
                target: ResourceRef {
                    resource_type: "Patient".into(),
                    id: "x".into(),
                },
                action: PublishAction::Created,
                version_id: Some("1".into()),
                last_updated: Some("2024-01-02T03:04:05Z".parse().unwrap()),
            }],
            rejected: vec![],
        });
    }

    #[test]
    fn change_event_round_trips_and_has_eventbridge_shape() {
        let c = change();
        let detail = ChangeEventDetail {
            event_id: ChangeEventDetail::stable_event_id("Patient", "x", "1"),
            resource_type: "Patient".into(),
            id: "x".into(),
            version_id: "1".into(),
            last_updated: "2024-01-02T03:04:05Z".parse().unwrap(),
            source: c.source,
            entity: c.entity,
            key: c.key,
            sequence: c.sequence,
        };
        assert_eq!(
            detail.event_id,
            ChangeEventDetail::stable_event_id("Patient", "x", "1")
        );
        assert_ne!(
            detail.event_id,
            ChangeEventDetail::stable_event_id("Patient", "x", "2")
        );
        let event = ChangeEvent::new(ChangeKind::Created, detail);
        round_trip(&event);
        let v = serde_json::to_value(&event).unwrap();
        assert_eq!(v["Source"], "fhir-unify");
        assert_eq!(v["DetailType"], "FhirResourceCreated");
        assert_eq!(v["Detail"]["versionId"], "1");
        let delivered = event.delivered("000000000000", "local");
        assert_eq!(delivered["detail-type"], "FhirResourceCreated");
        assert_eq!(delivered["id"], event.detail.event_id.as_str());
    }
}
