//! DMS sources on one machine: a folder laid out like the DMS bucket folder
//! (`schema/table/[date folders/]file.parquet`), delivered to `ingest-dms` the way S3 would
//! announce the files, one S3 event notification per file, in the order DMS writes them:
//! every full-load file first (by table, then segment and hexadecimal counter), then the CDC
//! files by the time in their names (tables interleaved as their changes happened).
//!
//! The folder is served by [`LocalBuckets`] as a bucket named after the source. Files that are
//! not DMS data files (`_fixture.json`, notes) and tables no entity maps are left alone.
//! Rejected rows and unreadable files go to the quarantine queue.

use std::sync::Arc;

use chrono::Utc;

use super::{LocalError, LocalRuntime, RunSummary};
use crate::config::DmsLocation;
use crate::handlers::ingest_dms::{self, DmsIngestOutcome};
use crate::objects::{LocalBuckets, ObjectStore};
use crate::sources::dms::event::notification;
use crate::sources::dms::{DmsFileKind, DmsPath};

/// A DMS file found in a local folder, with its source (= bucket).
#[derive(Debug, Clone)]
struct Found {
    source: String,
    path: DmsPath,
    size: u64,
}

impl LocalRuntime {
    /// The object store serving every local DMS folder (as buckets named after the sources).
    pub fn dms_objects(&self) -> Arc<dyn ObjectStore> {
        let mut buckets = LocalBuckets::new();
        for s in &self.config.sources {
            if let Some(DmsLocation::Local { dir }) = s.dms.as_ref().and_then(|d| d.location().ok())
            {
                buckets.insert(s.name.clone(), self.config.resolve(&dir));
            }
        }
        buckets.shared()
    }

    /// Delivers one S3 event to `ingest-dms` and quarantines what it rejected.
    pub async fn deliver_dms(
        &self,
        event: serde_json::Value,
        objects: Arc<dyn ObjectStore>,
    ) -> Result<DmsIngestOutcome, LocalError> {
        let outcome = ingest_dms::handle(event, &self.ingest, objects).await?;
        for r in &outcome.rejected {
            self.quarantine(r).await?;
        }
        Ok(outcome)
    }

    /// Delivers every file of every local DMS folder, in DMS order, adding to `summary`.
    pub async fn run_dms(&self, summary: &mut RunSummary) -> Result<(), LocalError> {
        let objects = self.dms_objects();
        let mut found = Vec::new();
        for s in &self.config.sources {
            let Some(DmsLocation::Local { dir }) = s.dms.as_ref().and_then(|d| d.location().ok())
            else {
                continue;
            };
            let listed = objects.list(&s.name, "").map_err(|e| LocalError::Input {
                file: self.config.resolve(&dir).display().to_string(),
                message: e.to_string(),
            })?;
            for m in listed {
                match DmsPath::parse(&m.key, "") {
                    Ok(path) => found.push(Found {
                        source: s.name.clone(),
                        path,
                        size: m.size,
                    }),
                    // Not a DMS data file: the local folder may hold notes and markers.
                    Err(e) => tracing::debug!(key = %m.key, error = %e, "not delivered"),
                }
            }
        }
        found.sort_by_key(delivery_order);
        for f in found {
            let event = notification(&f.source, &[(f.path.key.clone(), f.size)], Utc::now());
            let outcome = self.deliver_dms(event, objects.clone()).await?;
            summary.records_in += outcome
                .files
                .iter()
                .map(|s| (s.report.changes + s.report.rejected) as usize)
                .sum::<usize>();
            summary.quarantined += outcome.rejected.len();
            for run in &outcome.runs {
                summary.add_run(run);
            }
        }
        Ok(())
    }
}

/// Full loads first (by source, table, file order), then CDC files by the time in their name.
fn delivery_order(f: &Found) -> (u8, u64, String, String, DmsPath) {
    match f.path.kind {
        DmsFileKind::Load { .. } => (
            0,
            0,
            f.source.clone(),
            f.path.qualified_table(),
            f.path.clone(),
        ),
        DmsFileKind::Cdc { stamp, .. } => (
            1,
            stamp,
            f.source.clone(),
            f.path.qualified_table(),
            f.path.clone(),
        ),
    }
}
