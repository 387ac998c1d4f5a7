//! `ingest-transfer`: an upload announced (Transfer Family "File Upload Completed", or an S3
//! event notification / EventBridge "Object Created" for the landing bucket) in, `unify`
//! runs out.
//!
//! Each announced object is bound by the pipeline file to a transfer source and the first
//! `files` entry whose `match` fits its key (which says entity, key columns, format and load
//! mode), read through the object store on a blocking thread and streamed back record by
//! record ([`crate::sources::transfer::read_object`]): changes go to `unify` in batches of at
//! most [`FLUSH_CHANGES`], each cut to the state size limit by `run_unify_chunked`, so a large
//! file is never held whole. Batches never span two files; batch ids come from the object
//! (bucket, key, version), so a redelivered event makes the same ids.
//!
//! Rows that cannot be changes, and files that cannot be read, come back in
//! [`TransferIngestOutcome::rejected`] for quarantine. Objects outside every transfer
//! location, or matching no `files` entry, and failed uploads are listed in `skipped`.
//!
//! A `load: full-refresh` file is not read here: it is a whole dataset, so its upload starts
//! `bulk-load` ([`crate::env::Workflow::start_bulk_load`]) for a new version of
//! `SOURCE/ENTITY` with the file's key as the load's prefix (records absent from the file are
//! deleted when that version is published, in one step). The execution is named after the
//! upload (object, version, event time, size), so a redelivered event starts nothing new and
//! a later upload of the same key starts its own load ([`FullRefreshLoad`]).

use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::bulk::LoadRequest;
use crate::config::PipelineConfig;
use crate::env::{BulkStart, IngestEnv, WorkflowRun};
use crate::model::Rejection;
use crate::objects::{ObjectError, ObjectStore};
use crate::sources::Decoded;
use crate::sources::s3_event::ObjectCreated;
use crate::sources::transfer::{self, FileReport, LoadMode, TransferTarget};

use super::HandlerError;
pub use super::file_batches::FLUSH_CHANGES;
use super::file_batches::{CHANNEL_ROWS, FileBatches, object_name};

/// What one file of the event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// `s3://bucket/key`.
    pub uri: String,
    pub entity: String,
    pub load: LoadMode,
    pub report: FileReport,
}

/// What one invocation did.
#[derive(Debug, Default)]
pub struct TransferIngestOutcome {
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
    /// Full-refresh files, each started as a `bulk-load`.
    pub loads: Vec<FullRefreshLoad>,
}

/// A full-refresh upload and the `bulk-load` it started.
#[derive(Debug, Clone, PartialEq)]
pub struct FullRefreshLoad {
    /// `s3://bucket/key`.
    pub uri: String,
    pub dataset: String,
    pub start: BulkStart,
}

enum Msg {
    Row(Box<Decoded>),
    FileDone {
        uri: String,
        entity: String,
        report: FileReport,
    },
    Retry(String),
}

struct Job {
    object: ObjectCreated,
    /// The key that bound (decoded, or as received).
    key: String,
    target: TransferTarget,
}

/// The object store for the Transfer sources of a pipeline file on one machine: local folders
/// served as buckets named after their source. `s3://` locations are read from S3 by the
/// Lambda function (`lambda::transfer_env`, through `objects::s3::transfer_objects`); here they are
/// refused at start rather than on the first event.
pub fn local_objects(config: &PipelineConfig) -> Result<Arc<dyn ObjectStore>, String> {
    crate::objects::s3::transfer_objects(config, || {
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
) -> Result<TransferIngestOutcome, HandlerError> {
    let announced = transfer::uploads(&event).map_err(|e| {
        HandlerError::InvalidInput(format!("not a Transfer Family or S3 event: {e}"))
    })?;
    let mut out = TransferIngestOutcome {
        objects: announced.objects.len(),
        skipped: announced.skipped,
        ..TransferIngestOutcome::default()
    };
    let mut jobs = Vec::new();
    for o in announced.objects {
        match bind(&env.config, objects.as_ref(), &o) {
            Ok(job) if job.target.load == LoadMode::FullRefresh => {
                out.loads.push(start_full_refresh(env, &job).await?);
            }
            Ok(job) => jobs.push(job),
            Err(reason) => {
                tracing::warn!(bucket = %o.bucket, key = %o.key, reason = %reason, "upload skipped");
                out.skipped
                    .push((format!("s3://{}/{}", o.bucket, o.key), reason));
            }
        }
    }
    let names = jobs
        .iter()
        .map(|j| object_name(&j.object.bucket, &j.key, j.object.version_id.as_deref()))
        .collect();
    let mut batches = FileBatches::new(env, "transfer", BATCH_ID_NAMESPACE, names);

    let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL_ROWS);
    let fallback_time = Utc::now();
    let reader_objects = objects.clone();
    let reader = tokio::task::spawn_blocking(move || {
        for job in jobs {
            let uri = format!("s3://{}/{}", job.object.bucket, job.key);
            let observed_at = job.object.event_time.unwrap_or(fallback_time);
            let mut send_row = |d: Decoded| {
                // A closed channel means the handler gave up; reading on is pointless.
                let _ = tx.blocking_send(Msg::Row(Box::new(d)));
            };
            let msg = match transfer::read_object(
                reader_objects.clone(),
                &job.object.bucket,
                &job.key,
                &job.target,
                observed_at,
                &mut send_row,
            ) {
                Ok(report) => Msg::FileDone {
                    uri,
                    entity: job.target.entity.clone(),
                    report,
                },
                Err(e) => Msg::Retry(e.to_string()),
            };
            let stop = matches!(msg, Msg::Retry(_));
            if tx.blocking_send(msg).is_err() || stop {
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
            Msg::FileDone {
                uri,
                entity,
                report,
            } => {
                batches.end_file().await?;
                tracing::info!(
                    file = %uri,
                    rows = report.rows,
                    changes = report.changes,
                    rejected = report.rejected,
                    entries = report.entries,
                    load = ?report.load,
                    "transfer file read"
                );
                out.files.push(FileSummary {
                    uri,
                    entity,
                    load: report.load,
                    report,
                });
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
        "ingest-transfer done"
    );
    Ok(out)
}

/// Namespace of the v5 UUIDs naming the `bulk-load` executions of full-refresh uploads.
const LOAD_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f3a_91c2_5d04_4b7e_8c1f_2ae9_d4b6_7031);

/// Starts `bulk-load` for a full-refresh upload.
async fn start_full_refresh(env: &IngestEnv, job: &Job) -> Result<FullRefreshLoad, HandlerError> {
    let t = &job.target;
    let o = &job.object;
    let dataset = format!("{}/{}", t.source, t.entity);
    let uri = format!("s3://{}/{}", o.bucket, job.key);
    let req = LoadRequest {
        dataset: dataset.clone(),
        source: t.source.clone(),
        entity: t.entity.clone(),
        bucket: o.bucket.clone(),
        prefix: job.key.clone(),
        version: None,
    };
    let name = load_execution_name(&dataset, job);
    let start = env.workflow.start_bulk_load(&req, &name).await?;
    tracing::info!(
        file = %uri,
        dataset = %dataset,
        execution = %start.execution,
        already_started = start.already_started,
        "full-refresh upload: bulk-load"
    );
    Ok(FullRefreshLoad {
        uri,
        dataset,
        start,
    })
}

/// The execution name of a full-refresh upload's load: the dataset (readable in the console)
/// and a v5 UUID of the upload, the same for every delivery of one event and another for a
/// later upload of the same key (its event time differs; S3 versions differ too).
fn load_execution_name(dataset: &str, job: &Job) -> String {
    let o = &job.object;
    let upload = format!(
        "{}@{}#{}",
        object_name(&o.bucket, &job.key, o.version_id.as_deref()),
        o.event_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
        o.size.map(|n| n.to_string()).unwrap_or_default()
    );
    let id = uuid::Uuid::new_v5(&LOAD_NAMESPACE, upload.as_bytes()).to_string();
    // 80 characters at most: the UUID (36) always fits after a shortened dataset.
    let head: String = crate::local::execution_name(dataset)
        .chars()
        .take(43)
        .collect();
    format!("{head}-{id}")
}

/// Namespace of the v5 UUIDs naming Transfer batches.
const BATCH_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x4c1d_8e2a_7b35_4f60_9a13_e5d2_0c7b_8f91);

/// Binds an announced object. An EventBridge key may or may not be URL-encoded: when the
/// decoded key binds nothing, or names no object, the key as received is tried.
fn bind(
    config: &PipelineConfig,
    store: &dyn ObjectStore,
    o: &ObjectCreated,
) -> Result<Job, String> {
    let mut candidates = vec![o.key.as_str()];
    if o.raw_key != o.key {
        candidates.push(o.raw_key.as_str());
    }
    let mut first_miss = None;
    for key in candidates {
        let Some(target) = config.transfer_target(&o.bucket, key) else {
            first_miss.get_or_insert_with(|| match config.transfer_source_for(&o.bucket, key) {
                Some(s) => format!("matches no `files` entry of source {:?}", s.name),
                None => "no transfer source's location holds it".to_owned(),
            });
            continue;
        };
        let missing = matches!(
            store.size(&o.bucket, key),
            Err(ObjectError::NotFound { .. })
        );
        if !missing || key == o.raw_key {
            return Ok(Job {
                object: o.clone(),
                key: key.to_owned(),
                target,
            });
        }
        first_miss.get_or_insert_with(|| format!("s3://{}/{key}: no such object", o.bucket));
    }
    Err(first_miss.unwrap_or_else(|| "not bound".into()))
}
