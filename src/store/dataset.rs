//! Dataset versions: atomic, versioned full-refresh loads with rollback.
//!
//! Some sources deliver whole datasets again and again (a DMS full load, a monthly eligibility
//! file). Each load is a new **version** of its dataset; readers must see the previous version
//! complete, then the new one complete, never a mix, and a failed load must change nothing.
//!
//! The port, [`DatasetStore`], keeps:
//! - a **version table**: dataset, version (1, 2, 3… per dataset), [`VersionStatus`], created,
//!   updated and heartbeat times, the owner, records read, resources written, quarantined and
//!   the source files (chunks) loaded;
//! - a **current-version pointer** per dataset (a parameter named
//!   [`pointer_parameter`]`(dataset)`, the name an SSM parameter will have on AWS);
//! - the **staged resources** of every version that has not been garbage-collected.
//!
//! A load calls [`DatasetStore::begin`] (which creates the IN_PROGRESS version: a load that
//! never starts leaves nothing behind), then [`DatasetStore::stage`] for each batch of each
//! chunk (idempotent: a retried chunk writes the same rows), then [`DatasetStore::finalize`]
//! or [`DatasetStore::fail`]. `finalize` marks the version SUCCEEDED and moves the pointer, and
//! [`DatasetStore::rollback`] moves it back: both are **one step** that applies the difference
//! between the two versions to the FHIR store (created / updated / deleted per resource, each
//! with its history version and its outbox entry), so subscribers see a bulk change exactly as
//! they see streamed ones, with the same stable event ids.
//!
//! A load that dies (a killed process) leaves its version IN_PROGRESS with a heartbeat that
//! stops moving; [`DatasetStore::fail_dead`] (called by `begin` and by the CLI) marks such
//! versions FAILED once their heartbeat is older than the lease.
//!
//! Adapters: SQLite ([`super::sqlite::SqliteStore`], where the pointer move is one
//! transaction) and AWS ([`super::dynamodb::dataset::DynamoDatasets`]: versions and staged
//! resources in DynamoDB, the pointer in SSM Parameter Store, the move a resumable sequence
//! of idempotent steps). Locally the gateway reads the SQLite store, where a move is one
//! transaction; on AWS it reads through [`super::dynamodb::resolved::ResolvedStore`], which
//! answers the datasets whose move is in flight from the version the pointer is on.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::{Lineage, ResourceRef};

/// The status of a dataset version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VersionStatus {
    /// Being loaded; invisible to readers.
    InProgress,
    /// Loaded completely; the pointer is on it or was.
    Succeeded,
    /// The load failed or died; never visible.
    Failed,
    /// Was current, then a rollback moved the pointer away from it.
    RolledBack,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::InProgress => "IN_PROGRESS",
            VersionStatus::Succeeded => "SUCCEEDED",
            VersionStatus::Failed => "FAILED",
            VersionStatus::RolledBack => "ROLLED_BACK",
        }
    }

    pub fn parse(text: &str) -> Option<VersionStatus> {
        Some(match text {
            "IN_PROGRESS" => VersionStatus::InProgress,
            "SUCCEEDED" => VersionStatus::Succeeded,
            "FAILED" => VersionStatus::Failed,
            "ROLLED_BACK" => VersionStatus::RolledBack,
            _ => return None,
        })
    }
}

impl std::fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of one chunk of a load (a file, or a part of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadCounts {
    pub records_read: u64,
    pub resources_written: u64,
    pub quarantined: u64,
}

impl std::ops::AddAssign for LoadCounts {
    fn add_assign(&mut self, o: LoadCounts) {
        self.records_read += o.records_read;
        self.resources_written += o.resources_written;
        self.quarantined += o.quarantined;
    }
}

/// One row of the version table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetVersion {
    pub dataset: String,
    pub version: u64,
    pub status: VersionStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Last sign of life of the load's owner (IN_PROGRESS only means something with it).
    pub heartbeat_at: DateTime<Utc>,
    /// Who runs the load (host and process id, or an execution name).
    pub owner: String,
    #[serde(flatten)]
    pub counts: LoadCounts,
    /// The chunks (files) loaded into this version, in the order they completed.
    pub source_files: Vec<String>,
    /// Why the version FAILED.
    pub error: Option<String>,
    /// True when the pointer is on this version.
    pub current: bool,
    /// True when `gc` deleted its staged resources (it can no longer be rolled back to).
    pub purged: bool,
}

/// A resource of a version, as the load mapped and validated it.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedResource {
    pub target: ResourceRef,
    /// The resource (its `meta.versionId`/`lastUpdated` are the store's business).
    pub resource: serde_json::Value,
    pub lineage: Lineage,
}

/// What moving a pointer did to the FHIR store.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PointerMove {
    pub dataset: String,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Resources equal in both versions (or already equal in the store): no event.
    pub unchanged: u64,
}

/// What `gc` did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub dataset: String,
    /// Versions whose staged resources were deleted.
    pub purged_versions: Vec<u64>,
    pub rows_deleted: u64,
}

/// Errors of dataset versioning.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("dataset {dataset:?}: no version {version}")]
    NoSuchVersion { dataset: String, version: u64 },
    /// The version is not in a status that allows the operation.
    #[error("dataset {dataset:?} version {version} is {status}: {reason}")]
    WrongStatus {
        dataset: String,
        version: u64,
        status: VersionStatus,
        reason: String,
    },
    /// Another load of the dataset is running (its heartbeat is fresh).
    #[error(
        "dataset {dataset:?}: version {version} is being loaded by {owner} (heartbeat {heartbeat_at}); wait for it, or for its lease to expire"
    )]
    Busy {
        dataset: String,
        version: u64,
        owner: String,
        heartbeat_at: DateTime<Utc>,
    },
    #[error("dataset {dataset:?}: {reason}")]
    Invalid { dataset: String, reason: String },
}

impl DatasetError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            DatasetError::Store(e) => e.is_retryable(),
            DatasetError::Busy { .. } => true,
            _ => false,
        }
    }
}

/// The parameter holding a dataset's current version (an SSM parameter name on AWS).
pub fn pointer_parameter(dataset: &str) -> String {
    format!("/fhir-unify/datasets/{dataset}/current-version")
}

/// Checks a dataset name: 1 to 200 characters of `[A-Za-z0-9._/-]` (SSM parameter names).
pub fn check_dataset_name(dataset: &str) -> Result<(), DatasetError> {
    let ok = !dataset.is_empty()
        && dataset.len() <= 200
        && !dataset.starts_with('/')
        && !dataset.ends_with('/')
        && !dataset.contains("//")
        && dataset
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(DatasetError::Invalid {
            dataset: dataset.to_owned(),
            reason: "a dataset name is 1 to 200 characters of [A-Za-z0-9._/-], no leading, \
                     trailing or double '/'"
                .into(),
        })
    }
}

/// Versioned datasets over a FHIR store. Implemented next to the store whose resources it
/// switches, so a pointer move and its changes commit together.
#[async_trait]
pub trait DatasetStore: Send + Sync + std::fmt::Debug {
    /// Creates the next version, IN_PROGRESS, owned by `owner`. First marks dead loads
    /// (heartbeat older than `lease`) FAILED; a live one makes this fail with
    /// [`DatasetError::Busy`].
    async fn begin(
        &self,
        dataset: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<DatasetVersion, DatasetError>;

    /// Refreshes the heartbeat of an IN_PROGRESS version.
    async fn heartbeat(&self, dataset: &str, version: u64) -> Result<(), DatasetError>;

    /// Writes resources into an IN_PROGRESS version (replacing rows of the same resource,
    /// so a retried chunk is harmless) and refreshes the heartbeat.
    async fn stage(
        &self,
        dataset: &str,
        version: u64,
        resources: &[StagedResource],
    ) -> Result<(), DatasetError>;

    /// Records a chunk as done with its counts (replacing a previous record of the same chunk).
    async fn chunk_done(
        &self,
        dataset: &str,
        version: u64,
        chunk: &str,
        counts: LoadCounts,
    ) -> Result<(), DatasetError>;

    /// In one step: marks the version SUCCEEDED, moves the pointer to it and applies the
    /// difference from the previous current version to the store, with its events.
    async fn finalize(&self, dataset: &str, version: u64) -> Result<PointerMove, DatasetError>;

    /// Marks an IN_PROGRESS version FAILED with the reason; the pointer does not move.
    async fn fail(&self, dataset: &str, version: u64, reason: &str) -> Result<(), DatasetError>;

    /// Moves the pointer back to `to` (default: the newest SUCCEEDED version older than the
    /// current one), marks the version left ROLLED_BACK and applies the reverse difference.
    async fn rollback(&self, dataset: &str, to: Option<u64>) -> Result<PointerMove, DatasetError>;

    /// Every version of the dataset, newest first.
    async fn versions(&self, dataset: &str) -> Result<Vec<DatasetVersion>, DatasetError>;

    /// The version the pointer is on.
    async fn current(&self, dataset: &str) -> Result<Option<u64>, DatasetError>;

    /// Marks IN_PROGRESS versions whose heartbeat is older than `lease` FAILED; returns them.
    async fn fail_dead(&self, dataset: &str, lease: Duration) -> Result<Vec<u64>, DatasetError>;

    /// Deletes the staged resources of all but the newest `keep` SUCCEEDED/ROLLED_BACK
    /// versions (never the current one, never an IN_PROGRESS one) and of FAILED versions.
    async fn gc(&self, dataset: &str, keep: usize) -> Result<GcReport, DatasetError>;
}

/// How long a reader on AWS trusts the list of pointer moves in flight it read (a few
/// seconds: SSM and the versions table are read at most once per interval), and so how long a
/// move waits after its visible step before it changes the FHIR store
/// ([`super::dynamodb::resolved::ResolvedStore`]).
pub const POINTER_TTL: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_refuses_unknown() {
        for s in [
            VersionStatus::InProgress,
            VersionStatus::Succeeded,
            VersionStatus::Failed,
            VersionStatus::RolledBack,
        ] {
            assert_eq!(VersionStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(VersionStatus::parse("DONE"), None);
    }

    #[test]
    fn dataset_names() {
        check_dataset_name("clinic/patients").unwrap();
        check_dataset_name("eligibility.members-2024_05").unwrap();
        for bad in ["", "/a", "a/", "a//b", "a b", "é", &"x".repeat(201)] {
            assert!(
                matches!(check_dataset_name(bad), Err(DatasetError::Invalid { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            pointer_parameter("clinic/patients"),
            "/fhir-unify/datasets/clinic/patients/current-version"
        );
    }
}
