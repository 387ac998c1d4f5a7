//! `ingest-dms`: an S3 event (a notification's `Records[]`, or EventBridge "Object Created")
//! announcing DMS Parquet files in, `unify` runs out.
//!
//! Each announced object is bound to a DMS source and entity by the pipeline file (bucket and
//! folder, then `schema.table` or table), read through the object store on a blocking thread,
//! and streamed back row by row: changes are handed to `unify` in batches of at most
//! [`FLUSH_CHANGES`] changes, each split by [`chunk_batch`](super::ingest_dynamodb::chunk_batch) to the state size limit, so a large
//! file is never held whole. Batches never span two files; batch ids are derived from the
//! object (bucket, key, version), so a redelivered event makes the same ids.
//!
//! Rows that cannot become changes (and files that cannot be read) come back as
//! [`Rejection`]s in [`DmsIngestOutcome::rejected`]; the caller sends them to quarantine (the
//! local runtime's queue). Objects outside every DMS location, of tables no entity maps, or
//! that are not DMS data files (`_SUCCESS` markers, CSV) are listed in `skipped` and logged.
//!
//! A full-load file (`LOAD…`) is, for now, upserts like any other: the atomic bulk load
//! (a dataset version switched in one step) is separate work.

use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::PipelineConfig;
use crate::env::{IngestEnv, WorkflowRun};
use crate::model::Rejection;
use crate::objects::{ObjectError, ObjectStore};
use crate::sources::dms::{self, Decoded, ObjectCreated, ObjectReport, PathError};

use super::HandlerError;
pub use super::file_batches::FLUSH_CHANGES;
use super::file_batches::{CHANNEL_ROWS, FileBatches, object_name};

/// What one file of the event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// `s3://bucket/key`.
    pub uri: String,
    pub report: ObjectReport,
}

/// What one invocation did.
#[derive(Debug, Default)]
pub struct DmsIngestOutcome {
    /// Objects the event announced.
    pub objects: usize,
    pub files: Vec<FileSummary>,
    /// Objects not read, with why.
    pub skipped: Vec<(String, String)>,
    /// Rows and files refused at ingest: for quarantine.
    pub rejected: Vec<Rejection>,
    pub runs: Vec<WorkflowRun>,
    /// Changes handed to `unify`.
    pub records_in: usize,
}

/// What the reading thread sends back.
enum Msg {
    Row(Box<Decoded>),
    FileDone { uri: String, report: ObjectReport },
    Skipped { uri: String, reason: String },
    Retry(String),
}

/// A file to read, bound to its source.
struct Job {
    bucket: String,
    target: crate::config::DmsTarget,
    path: dms::DmsPath,
    version: Option<String>,
}

/// The object store for the DMS sources of a pipeline file on one machine: local folders
/// served as buckets named after their source. `s3://` locations are read from S3 by the
/// Lambda function (`lambda::dms_env`, through `objects::s3::dms_objects`); here they are
/// refused at start rather than on the first event.
pub fn local_objects(config: &PipelineConfig) -> Result<Arc<dyn ObjectStore>, String> {
    crate::objects::s3::dms_objects(config, || {
        Err(
            "an s3:// location is read from S3 by the deployed function; \
             this store serves local folders only"
                .to_owned(),
        )
    })
}

pub async fn handle(
    event: Value,
    env: &IngestEnv,
    objects: Arc<dyn ObjectStore>,
) -> Result<DmsIngestOutcome, HandlerError> {
    let announced = dms::objects_created(&event)
        .map_err(|e| HandlerError::InvalidInput(format!("not an S3 event: {e}")))?;
    let mut out = DmsIngestOutcome {
        objects: announced.len(),
        ..DmsIngestOutcome::default()
    };
    let mut jobs = Vec::new();
    for o in announced {
        match bind(&env.config, objects.as_ref(), &o) {
            Ok(job) => jobs.push(job),
            Err(Unbound::Skip(reason)) => {
                tracing::warn!(bucket = %o.bucket, key = %o.key, reason = %reason, "object skipped");
                out.skipped
                    .push((format!("s3://{}/{}", o.bucket, o.key), reason));
            }
            Err(Unbound::Reject(r)) => out.rejected.push(*r),
        }
    }
    // DMS order: by table, full-load files before CDC files, each in its own order.
    jobs.sort_by(|a, b| a.path.cmp(&b.path));

    let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL_ROWS);
    let fallback_time = Utc::now();
    let reader_objects = objects.clone();
    let names = jobs
        .iter()
        .map(|j| object_name(&j.bucket, &j.path.key, j.version.as_deref()))
        .collect();
    let mut batches = FileBatches::new(env, "dms", BATCH_ID_NAMESPACE, names);
    let reader = tokio::task::spawn_blocking(move || {
        for job in jobs {
            let uri = format!("s3://{}/{}", job.bucket, job.path.key);
            let mut send_row = |d: Decoded| {
                // A closed channel means the handler gave up; reading on is pointless.
                let _ = tx.blocking_send(Msg::Row(Box::new(d)));
            };
            let result = dms::read_object(
                reader_objects.clone(),
                &job.bucket,
                &job.target.prefix,
                job.path,
                job.target.binding,
                fallback_time,
                &mut send_row,
            );
            let msg = match result {
                Ok(report) => Msg::FileDone { uri, report },
                Err(e) if e.is_retryable() => {
                    let _ = tx.blocking_send(Msg::Retry(e.to_string()));
                    return;
                }
                Err(e) => Msg::Skipped {
                    uri,
                    reason: e.to_string(),
                },
            };
            if tx.blocking_send(msg).is_err() {
                return;
            }
        }
    });

    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Row(d) => match *d {
                Decoded::Change(c) => batches.push(c).await?,
                Decoded::Rejected(r) => out.rejected.push(r),
            },
            Msg::FileDone { uri, report } => {
                batches.end_file().await?;
                tracing::info!(
                    file = %uri,
                    rows = report.rows,
                    changes = report.changes,
                    rejected = report.rejected,
                    full_load = report.full_load,
                    "dms file read"
                );
                out.files.push(FileSummary { uri, report });
            }
            Msg::Skipped { uri, reason } => {
                out.skipped.push((uri, reason));
                batches.skip_file();
            }
            Msg::Retry(message) => return Err(HandlerError::ObjectStore(message)),
        }
    }
    reader
        .await
        .map_err(|e| HandlerError::ObjectStore(format!("the reading thread stopped: {e}")))?;
    out.records_in = batches.records_in;
    out.runs = batches.runs;
    tracing::info!(
        objects = out.objects,
        files = out.files.len(),
        skipped = out.skipped.len(),
        changes = out.records_in,
        rejected = out.rejected.len(),
        executions = out.runs.len(),
        "ingest-dms done"
    );
    Ok(out)
}

/// Namespace of the v5 UUIDs naming DMS batches.
const BATCH_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x9b2e_4d71_0c3a_4e8f_a6d5_37c1_e08b_5f24);

enum Unbound {
    Skip(String),
    Reject(Box<Rejection>),
}

/// Binds an announced object to its source and entity. EventBridge keys may or may not be
/// URL-encoded: when the decoded key is not a bound DMS object (or names no object) and the
/// key as received differs, the key as received is tried.
fn bind(
    config: &PipelineConfig,
    store: &dyn ObjectStore,
    o: &ObjectCreated,
) -> Result<Job, Unbound> {
    let mut candidates = vec![o.key.as_str()];
    if o.raw_key != o.key {
        candidates.push(o.raw_key.as_str());
    }
    let mut first_miss: Option<Unbound> = None;
    for key in candidates {
        match bind_key(config, &o.bucket, key) {
            Ok((target, path)) => {
                let exists = !matches!(
                    store.size(&o.bucket, key),
                    Err(ObjectError::NotFound { .. })
                );
                if exists || o.raw_key == o.key || key == o.raw_key {
                    return Ok(Job {
                        bucket: o.bucket.clone(),
                        target,
                        path,
                        version: o.version_id.clone(),
                    });
                }
                first_miss.get_or_insert(Unbound::Skip(format!(
                    "s3://{}/{key}: no such object",
                    o.bucket
                )));
            }
            Err(e) => {
                first_miss.get_or_insert(e);
            }
        }
    }
    Err(first_miss.unwrap_or_else(|| Unbound::Skip("not bound".into())))
}

fn bind_key(
    config: &PipelineConfig,
    bucket: &str,
    key: &str,
) -> Result<(crate::config::DmsTarget, dms::DmsPath), Unbound> {
    if let Some(found) = config.dms_target(bucket, key) {
        return Ok(found);
    }
    let Some(source) = config.dms_source_for(bucket, key) else {
        return Err(Unbound::Skip("no dms source's location holds it".into()));
    };
    let prefix = match source.dms.as_ref().and_then(|d| d.location().ok()) {
        Some(crate::config::DmsLocation::S3 { prefix, .. }) => prefix,
        _ => String::new(),
    };
    match dms::DmsPath::parse(key, &prefix) {
        Err(PathError::NotADmsFile { reason, .. }) => Err(Unbound::Skip(reason)),
        Err(e @ PathError::Invalid { .. }) => {
            // Looks like a DMS file of this source but cannot be one: quarantined, named.
            let binding = dms::DmsBinding {
                source: source.name.clone(),
                entity: "?".into(),
                key: Vec::new(),
                timestamp_column: String::new(),
            };
            Err(Unbound::Reject(Box::new(dms::file_rejection(
                &binding,
                &format!("s3://{bucket}/{key}"),
                &e.to_string(),
            ))))
        }
        Ok(p) => Err(Unbound::Skip(format!(
            "table {} is not an entity of source {:?}",
            p.qualified_table(),
            source.name
        ))),
    }
}
