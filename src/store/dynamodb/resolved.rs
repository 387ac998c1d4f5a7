//! The FHIR store as the partner gateway reads it on AWS while dataset pointer moves are in
//! flight: no reader by id sees a dataset half old, half new.
//!
//! On AWS a pointer move is a sequence of steps ([`super::dataset`]): the pointer is moved in
//! SSM (the visible step), then the difference between the two versions is written into the
//! DynamoDB FHIR store in batches, which for a large dataset takes minutes. Reading the store
//! alone in that window would show some resources of the new version and some of the old.
//! [`ResolvedStore`] answers reads of the resources of a dataset whose move is in flight from
//! the staged resources of the version the pointer is on, and everything else from the store.
//!
//! Which moves are in flight is read with one `Query` ([`DynamoDatasets::moves_in_flight`])
//! and kept for [`POINTER_TTL`]; a move waits that long after its visible step before it
//! changes the store, so a reader whose list is stale still reads an unchanged store.
//!
//! Per read, for each move in flight (usually none): the resource in the new version wins
//! (shown with the store's `meta` when the store already holds that content, else as the
//! store's next version); absent from the new version but present in the old one, it reads as
//! deleted; in neither, the next move or the store answers. Searches and histories read the
//! store's own index, which follows the pointer within the duration of the move.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::DynamoStore;
use super::dataset::{DynamoDatasets, MoveInFlight};
use crate::model::{PublishOutcome, ResourceChange, ResourceRef};
use crate::store::dataset::{DatasetError, POINTER_TTL};
use crate::store::{FhirStore, StoreError, StoredVersion, canonical_content, with_meta};

/// The DynamoDB FHIR store, read through the dataset pointers (see the module docs).
#[derive(Debug)]
pub struct ResolvedStore {
    store: DynamoStore,
    datasets: DynamoDatasets,
    ttl: Duration,
    /// The moves in flight and when they were read.
    moves: Mutex<Option<(Instant, Vec<MoveInFlight>)>>,
}

fn store_err(e: DatasetError) -> StoreError {
    match e {
        DatasetError::Store(e) => e,
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl ResolvedStore {
    /// Reads `datasets.store()` through the pointers of `datasets`, trusting a list of moves
    /// for [`POINTER_TTL`].
    pub fn new(datasets: DynamoDatasets) -> ResolvedStore {
        ResolvedStore {
            store: datasets.store().clone(),
            datasets,
            ttl: POINTER_TTL,
            moves: Mutex::new(None),
        }
    }

    /// Replaces how long a list of moves is trusted; it must not exceed the movers' settle
    /// time ([`DynamoDatasets::with_settle`]).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The moves in flight, at most `ttl` old. A failed read is not kept.
    async fn moves(&self) -> Result<Vec<MoveInFlight>, StoreError> {
        let now = Instant::now();
        if let Ok(cached) = self.moves.lock()
            && let Some((at, moves)) = cached.as_ref()
            && now.duration_since(*at) < self.ttl
        {
            return Ok(moves.clone());
        }
        let moves = self.datasets.moves_in_flight().await.map_err(store_err)?;
        if !moves.is_empty() {
            tracing::debug!(moves = moves.len(), "dataset pointer moves in flight");
        }
        if let Ok(mut cached) = self.moves.lock() {
            *cached = Some((now, moves.clone()));
        }
        Ok(moves)
    }

    /// What the version the pointer of `mv` is on holds for `target`: `None` when the
    /// dataset never held it (the store answers).
    async fn read_moving(
        &self,
        mv: &MoveInFlight,
        target: &ResourceRef,
    ) -> Result<Option<Option<StoredVersion>>, StoreError> {
        let staged = self
            .datasets
            .read_staged(&mv.dataset, mv.to, target)
            .await
            .map_err(store_err)?;
        if let Some(staged) = staged {
            let content = canonical_content(target, &staged.resource)?;
            let stored = self.store.read(target).await?;
            if let Some(resource) = stored.as_ref().and_then(|v| v.resource.as_ref())
                && canonical_content(target, resource)? == content
            {
                return Ok(Some(stored));
            }
            let version = next_version(target, stored.as_ref())?;
            return Ok(Some(Some(StoredVersion {
                target: target.clone(),
                version_id: version.to_string(),
                last_updated: mv.at,
                deleted: false,
                resource: Some(with_meta(content, version, mv.at)),
                lineage: Some(staged.lineage),
            })));
        }
        let Some(from) = mv.from else {
            return Ok(None);
        };
        let Some(was) = self
            .datasets
            .read_staged(&mv.dataset, from, target)
            .await
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        // Deleted by the new version: the store shows it gone once the move is applied.
        let stored = self.store.read(target).await?;
        Ok(Some(match stored {
            Some(v) if !v.deleted => Some(StoredVersion {
                target: target.clone(),
                version_id: next_version(target, Some(&v))?.to_string(),
                last_updated: mv.at,
                deleted: true,
                resource: None,
                lineage: Some(was.lineage),
            }),
            other => other,
        }))
    }
}

/// The version the store will give the next change of a resource.
fn next_version(target: &ResourceRef, stored: Option<&StoredVersion>) -> Result<i64, StoreError> {
    match stored {
        Some(v) => {
            v.version_id.parse::<i64>().map(|n| n + 1).map_err(|_| {
                StoreError::Corrupt(format!("{target}: version id {:?}", v.version_id))
            })
        }
        None => Ok(1),
    }
}

#[async_trait]
impl FhirStore for ResolvedStore {
    async fn apply(&self, changes: &[ResourceChange]) -> Result<Vec<PublishOutcome>, StoreError> {
        self.store.apply(changes).await
    }

    async fn read(&self, target: &ResourceRef) -> Result<Option<StoredVersion>, StoreError> {
        for mv in self.moves().await? {
            if let Some(answer) = self.read_moving(&mv, target).await? {
                return Ok(answer);
            }
        }
        self.store.read(target).await
    }

    async fn vread(
        &self,
        target: &ResourceRef,
        version_id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        self.store.vread(target, version_id).await
    }

    async fn history(&self, target: &ResourceRef) -> Result<Vec<StoredVersion>, StoreError> {
        self.store.history(target).await
    }
}
