//! Transfer sources on one machine: a folder laid out like the landing bucket folder,
//! delivered to `ingest-transfer` the way Transfer Family announces uploads: one "SFTP
//! Server File Upload Completed" event per file, in key order, stamped with the file's
//! modification time (so a re-run of unchanged files makes the same sequences).
//!
//! The folder is served by [`LocalBuckets`] as a bucket named after the source. Files that
//! match no `files` entry (notes, layouts kept beside the data) are left alone. Rejected rows
//! and unreadable files go to the quarantine queue. A full-refresh file's upload runs
//! `bulk-load` for a new version of its dataset ([`RunSummary::loads`]); a second run over
//! the same files loads nothing again (the uploads are the same).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{LocalError, LocalRuntime, RunSummary};
use crate::config::DmsLocation;
use crate::handlers::ingest_transfer::{self, TransferIngestOutcome};
use crate::objects::{LocalBuckets, ObjectStore};
use crate::sources::transfer::upload_completed;

impl LocalRuntime {
    /// The object store serving every local transfer folder (as buckets named after the
    /// sources).
    pub fn transfer_objects(&self) -> Arc<dyn ObjectStore> {
        let mut buckets = LocalBuckets::new();
        for s in &self.config.sources {
            if let Some(DmsLocation::Local { dir }) =
                s.transfer.as_ref().and_then(|t| t.location().ok())
            {
                buckets.insert(s.name.clone(), self.config.resolve(&dir));
            }
        }
        buckets.shared()
    }

    /// Delivers one event to `ingest-transfer` and quarantines what it rejected.
    pub async fn deliver_transfer(
        &self,
        event: serde_json::Value,
        objects: Arc<dyn ObjectStore>,
    ) -> Result<TransferIngestOutcome, LocalError> {
        let outcome = ingest_transfer::handle(event, &self.ingest, objects).await?;
        for r in &outcome.rejected {
            self.quarantine(r).await?;
        }
        Ok(outcome)
    }

    /// Delivers every matching file of every local transfer folder, adding to `summary`.
    pub async fn run_transfer(&self, summary: &mut RunSummary) -> Result<(), LocalError> {
        let objects = self.transfer_objects();
        for s in &self.config.sources {
            let Some(DmsLocation::Local { dir }) =
                s.transfer.as_ref().and_then(|t| t.location().ok())
            else {
                continue;
            };
            let root = self.config.resolve(&dir);
            let listed = objects.list(&s.name, "").map_err(|e| LocalError::Input {
                file: root.display().to_string(),
                message: e.to_string(),
            })?;
            for m in listed {
                if self.config.transfer_target(&s.name, &m.key).is_none() {
                    tracing::debug!(key = %m.key, "matches no files entry; not delivered");
                    continue;
                }
                let modified: DateTime<Utc> = std::fs::metadata(root.join(&m.key))
                    .and_then(|meta| meta.modified())
                    .map(DateTime::<Utc>::from)
                    .unwrap_or_else(|_| Utc::now());
                let event = upload_completed(&s.name, &m.key, m.size, modified);
                let outcome = self.deliver_transfer(event, objects.clone()).await?;
                summary.records_in += outcome
                    .files
                    .iter()
                    .map(|f| f.report.rows as usize)
                    .sum::<usize>();
                summary.quarantined += outcome.rejected.len();
                for run in &outcome.runs {
                    summary.add_run(run);
                }
                for load in &outcome.loads {
                    if let Some(run) = &load.start.finished {
                        summary.add_load(run);
                    }
                }
            }
        }
        Ok(())
    }
}
