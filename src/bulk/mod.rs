//! Bulk loads: a whole dataset (a DMS full load, or a full-refresh file uploaded through
//! Transfer Family) loaded as a new dataset version and made visible in one step, by
//! `statemachines/bulk-load.asl.json`.
//!
//! The state machine's tasks are the handlers here, one per step:
//! - `fhir-unify-bulk-begin` ([`begin`]): creates the version, IN_PROGRESS ([`DatasetStore::begin`],
//!   which first marks loads whose owner died FAILED);
//! - `fhir-unify-bulk-load-chunk` ([`load_chunk`]): one chunk (a full-load file, or the
//!   full-refresh file) of the distributed Map: its rows are decoded on a blocking thread and, in batches of
//!   [`BATCH_RECORDS`], mapped and validated by the very `transform` and `validate` handlers of
//!   `unify`, then staged into the version;
//! - `fhir-unify-bulk-finalize` ([`finalize`]): SUCCEEDED and the pointer move, one step;
//! - `fhir-unify-bulk-fail` ([`fail`]): FAILED, the pointer untouched.
//!
//! **Bad input.** A record the mapping or the validator refuses, or a row whose values cannot
//! be decoded, is *quarantined* with its OperationOutcome (file, row, column) and the load goes
//! on, as in `unify`: one bad record among millions should not hold back a monthly refresh,
//! and quarantined records can be replayed. A file that cannot be read whole (not Parquet, a
//! row group that cannot be decoded, a missing key column; a Transfer file cut off, not
//! decryptable, or with a bad header) *fails the load* with an error naming
//! the file and the rows: in a full refresh every record absent from the new version is
//! deleted, so publishing a version with an unknown part of a file missing would delete live
//! resources.
//!
//! [`local::LocalBulk`] runs the state machine on the project's ASL engine; [`generator`] writes
//! synthetic loads.

pub mod generator;
pub mod local;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::PipelineConfig;
use crate::env::Env;
use crate::handlers::{self, HandlerError};
use crate::model::{ChangeBatch, MappedBatch, Rejection, ResourceOp, SourceChange};
use crate::objects::ObjectStore;
use crate::sources::dms::{Decoded, DmsFile};
use crate::store::dataset::{
    DatasetError, DatasetStore, DatasetVersion, LoadCounts, PointerMove, StagedResource,
};

/// Records mapped, validated and staged together (one store transaction).
pub const BATCH_RECORDS: usize = 2_000;

/// How long a load may go without a heartbeat before another load declares it dead.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

/// Errors of the bulk functions.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A file of the load cannot be read: the load fails.
    #[error("{file}: {message}")]
    Corrupt { file: String, message: String },
    #[error(transparent)]
    Handler(#[from] HandlerError),
    #[error("quarantine: {0}")]
    Quarantine(#[from] crate::queue::QuarantineError),
    #[error("state machine bulk-load: {0}")]
    Definition(String),
    #[error("{0}")]
    Input(String),
}

impl BulkError {
    /// The stable error-type name reported to Lambda and matched by state machines.
    pub fn error_type(&self) -> &'static str {
        use crate::handlers::errors as h;
        match self {
            BulkError::Dataset(DatasetError::Busy { .. }) => h::DATASET_BUSY,
            BulkError::Dataset(DatasetError::Store(e)) if e.is_retryable() => h::STORE_UNAVAILABLE,
            BulkError::Dataset(DatasetError::Store(_)) => h::STORE_FAILED,
            BulkError::Dataset(_) => h::DATASET_STATE,
            BulkError::Corrupt { .. } => h::BULK_INPUT_CORRUPT,
            BulkError::Handler(e) => e.error_type(),
            BulkError::Quarantine(_) => h::QUARANTINE_FAILED,
            BulkError::Definition(_) | BulkError::Input(_) => h::INVALID_INPUT,
        }
    }
}

/// Sends a rejected record to the quarantine (the local queue, or SQS on Lambda).
async fn quarantine(env: &BulkEnv, r: &Rejection) -> Result<(), BulkError> {
    let body = serde_json::to_string(r).map_err(|e| {
        BulkError::Quarantine(crate::queue::QuarantineError::Send {
            queue: "quarantine".into(),
            message: format!("the rejection cannot be serialized: {e}"),
            retryable: false,
        })
    })?;
    env.quarantine.send(&body).await?;
    Ok(())
}

/// What the bulk functions need.
#[derive(Debug, Clone)]
pub struct BulkEnv {
    /// The `unify` environment: mappings, validator, outbox and bus.
    pub env: Arc<Env>,
    pub config: Arc<PipelineConfig>,
    pub datasets: Arc<dyn DatasetStore>,
    /// Where the load's files are (buckets named after DMS sources).
    pub objects: Arc<dyn ObjectStore>,
    /// Where rejected records go (the local queue; SQS on Lambda).
    pub quarantine: Arc<dyn crate::queue::Quarantine>,
    /// Who runs the loads (host and process), written into new versions.
    pub owner: String,
    pub lease: Duration,
    /// Records read so far by every chunk (for progress displays).
    pub records_read: Arc<AtomicU64>,
    /// Where the loads' time goes, per stage (logged at the end of a load).
    pub timings: Arc<StageTimings>,
}

/// Time spent per stage of the loads sharing a [`BulkEnv`], summed over batches: batches run
/// at once on several threads, so the sum of the stages can exceed the wall time. Counts and
/// durations only: no record content.
#[derive(Debug, Default)]
pub struct StageTimings {
    decode_ns: AtomicU64,
    map_ns: AtomicU64,
    validate_ns: AtomicU64,
    quarantine_ns: AtomicU64,
    stage_ns: AtomicU64,
    finalize_ns: AtomicU64,
    emit_ns: AtomicU64,
    batches: AtomicU64,
    /// Each dataset's own, for loads that run at once ([`StageTimings::dataset`]).
    datasets: std::sync::Mutex<std::collections::HashMap<String, Arc<StageTimings>>>,
}

/// A reading of [`StageTimings`], in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageReport {
    /// Reading and decoding the files (the reading threads, waits for a full queue excluded).
    pub decode_ms: u64,
    /// The mapping (`transform` handler).
    pub map_ms: u64,
    /// The validator (`validate` handler).
    pub validate_ms: u64,
    /// Sending rejected records to the quarantine.
    pub quarantine_ms: u64,
    /// Writing batches into the version (`DatasetStore::stage`).
    pub stage_ms: u64,
    /// The pointer move (`DatasetStore::finalize`).
    pub finalize_ms: u64,
    /// Delivering the outbox's events to the bus (`emit` handler).
    pub emit_ms: u64,
    pub batches: u64,
}

impl StageTimings {
    pub(crate) fn add_emit(&self, d: Duration) {
        Self::add(&self.emit_ns, d);
    }

    fn add(counter: &AtomicU64, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(ns, Ordering::Relaxed);
    }

    /// The timings of one dataset's load: loads of several datasets may run at once, so each
    /// counts its stages apart.
    pub fn dataset(&self, dataset: &str) -> Arc<StageTimings> {
        // A poisoned lock only means a panic elsewhere while counting: counts stay usable.
        let mut map = self
            .datasets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(dataset.to_owned()).or_default().clone()
    }

    /// The time spent so far, and the counters set back to zero (one load's share).
    pub fn take(&self) -> StageReport {
        let ms = |c: &AtomicU64| c.swap(0, Ordering::Relaxed) / 1_000_000;
        StageReport {
            decode_ms: ms(&self.decode_ns),
            map_ms: ms(&self.map_ns),
            validate_ms: ms(&self.validate_ns),
            quarantine_ms: ms(&self.quarantine_ns),
            stage_ms: ms(&self.stage_ns),
            finalize_ms: ms(&self.finalize_ns),
            emit_ms: ms(&self.emit_ns),
            batches: self.batches.swap(0, Ordering::Relaxed),
        }
    }
}

/// The input of a bulk-load execution, and of `begin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadRequest {
    pub dataset: String,
    pub source: String,
    pub entity: String,
    /// The bucket holding the files (locally: the source's name).
    pub bucket: String,
    /// The table's folder in the bucket (`schema/table/`).
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// One item of the distributed Map: a file of the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChunkRequest {
    pub dataset: String,
    pub version: u64,
    pub bucket: String,
    pub key: String,
    /// The load's prefix (the listing's); a Transfer full refresh is the one file it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// What one chunk did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkReport {
    pub key: String,
    /// Why the object was not loaded (not a full-load file of a mapped table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(flatten)]
    pub counts: LoadCounts,
}

/// The input of `finalize` and `fail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRef {
    pub dataset: String,
    pub version: u64,
    /// The caught error (`fail`): `{"Error": ..., "Cause": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// `fhir-unify-bulk-begin`: creates the version; answers the request with its number.
pub async fn begin(mut req: LoadRequest, env: &BulkEnv) -> Result<LoadRequest, BulkError> {
    let v: DatasetVersion = env
        .datasets
        .begin(&req.dataset, &env.owner, env.lease)
        .await?;
    req.version = Some(v.version);
    Ok(req)
}

/// The file of a chunk, as the pipeline file binds it.
enum ChunkFile {
    Dms {
        path: crate::sources::dms::DmsPath,
        binding: crate::sources::dms::DmsBinding,
    },
    /// A `load: full-refresh` file of a Transfer source: the whole dataset.
    Transfer(crate::sources::transfer::TransferTarget),
}

impl ChunkFile {
    /// Binds the chunk's object: `Ok(Err(reason))` for an object the load skips.
    fn bind(
        config: &PipelineConfig,
        req: &ChunkRequest,
    ) -> Result<Result<Self, String>, BulkError> {
        let uri = format!("s3://{}/{}", req.bucket, req.key);
        let (file, dataset) = if let Some((target, path)) = config.dms_target(&req.bucket, &req.key)
        {
            if !path.is_full_load() {
                return Ok(Err("a CDC file: not part of a full load".into()));
            }
            let dataset = format!("{}/{}", target.binding.source, target.binding.entity);
            (
                ChunkFile::Dms {
                    path,
                    binding: target.binding,
                },
                dataset,
            )
        } else if let Some(target) = config.transfer_target(&req.bucket, &req.key) {
            if target.load != crate::sources::transfer::LoadMode::FullRefresh {
                return Ok(Err("an increment file: not part of a full refresh".into()));
            }
            if req.prefix.as_deref().is_some_and(|p| p != req.key) {
                // The listing of `members/2024.csv` also holds `members/2024.csv.gz`.
                return Ok(Err("another file: a full refresh is one file".into()));
            }
            let dataset = format!("{}/{}", target.source, target.entity);
            (ChunkFile::Transfer(target), dataset)
        } else {
            return Ok(Err(
                "not a DMS data file of a mapped table, nor a full-refresh file of a transfer source"
                    .into(),
            ));
        };
        if dataset != req.dataset {
            return Err(BulkError::Input(format!(
                "{uri} belongs to dataset {dataset}, not {}",
                req.dataset
            )));
        }
        Ok(Ok(file))
    }

    /// Reads the file on the calling (blocking) thread, every record to `sink`. `Err`: the
    /// file cannot be read whole (corrupt, or a store error worth retrying).
    fn read(
        self,
        objects: Arc<dyn ObjectStore>,
        bucket: &str,
        key: &str,
        sink: &mut dyn FnMut(crate::sources::Decoded),
    ) -> Result<(), BulkError> {
        let failed = |retryable: bool, message: String| {
            if retryable {
                BulkError::Handler(HandlerError::ObjectStore(message))
            } else {
                BulkError::Corrupt {
                    file: format!("s3://{bucket}"),
                    message,
                }
            }
        };
        match self {
            ChunkFile::Dms { path, binding } => {
                let file = DmsFile::open(objects, bucket, path, binding)
                    .map_err(|e| failed(e.is_retryable(), e.to_string()))?;
                file.read(None, Utc::now(), sink);
                Ok(())
            }
            ChunkFile::Transfer(target) => {
                let report = crate::sources::transfer::read_object(
                    objects,
                    bucket,
                    key,
                    &target,
                    Utc::now(),
                    sink,
                )
                .map_err(|e| failed(e.is_retryable(), e.to_string()))?;
                match report.broken {
                    Some(place) => Err(BulkError::Corrupt {
                        file: format!("s3://{bucket}/{key}"),
                        message: format!("cannot read {place}"),
                    }),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What the reading thread sends back.
enum Msg {
    Batch(Vec<SourceChange>),
    Rejected(Box<Rejection>),
    Corrupt(String),
}

/// `fhir-unify-bulk-load-chunk`: loads one file into the version.
pub async fn load_chunk(req: ChunkRequest, env: &BulkEnv) -> Result<ChunkReport, BulkError> {
    let started = Instant::now();
    let uri = format!("s3://{}/{}", req.bucket, req.key);
    let mut report = ChunkReport {
        key: req.key.clone(),
        skipped: None,
        counts: LoadCounts::default(),
    };
    let file = match ChunkFile::bind(&env.config, &req)? {
        Ok(file) => file,
        Err(reason) => {
            report.skipped = Some(reason);
            return Ok(report);
        }
    };
    let (tx, mut rx) = mpsc::channel::<Msg>(4);
    let objects = env.objects.clone();
    let (bucket, key) = (req.bucket.clone(), req.key.clone());
    let timings = env.timings.dataset(&req.dataset);
    let reader = tokio::task::spawn_blocking(move || -> Result<(), BulkError> {
        let reading = Instant::now();
        let mut batch = Vec::with_capacity(BATCH_RECORDS);
        let mut closed = false;
        // Time blocked on a full queue is the loader's, not decoding's.
        let mut waited = Duration::ZERO;
        let mut send = |m: Msg| {
            let at = Instant::now();
            if !closed && tx.blocking_send(m).is_err() {
                // The loader stopped (a failed batch): read on without sending.
                closed = true;
            }
            waited += at.elapsed();
        };
        let read = file.read(objects, &bucket, &key, &mut |d| match d {
            Decoded::Change(c) => {
                batch.push(c);
                if batch.len() >= BATCH_RECORDS {
                    send(Msg::Batch(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(BATCH_RECORDS),
                    )));
                }
            }
            // A block of rows that cannot be read is a corrupt file; a row that cannot be
            // decoded is a bad record.
            Decoded::Rejected(r) if r.raw.as_ref().is_some_and(|v| v.get("firstRow").is_some()) => {
                send(Msg::Corrupt(r.record.clone()));
            }
            Decoded::Rejected(r) => send(Msg::Rejected(Box::new(r))),
        });
        // Nothing of a file that broke off is staged: the load fails.
        read?;
        if !batch.is_empty() {
            send(Msg::Batch(batch));
        }
        StageTimings::add(&timings.decode_ns, reading.elapsed().saturating_sub(waited));
        Ok(())
    });

    // Batches are mapped and validated on up to `workers` threads at once, and staged one
    // after the other in reading order (a later row for the same resource must win, as it
    // would in one pass). At most `workers` batches are in flight and 4 wait in the queue, so
    // memory does not grow with the file.
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let mut in_flight: VecDeque<JoinHandle<Result<Checked, BulkError>>> = VecDeque::new();
    let mut part = 0usize;
    let mut reading = true;
    let mut failure: Option<BulkError> = None;
    loop {
        if reading && in_flight.len() < workers {
            let result = match rx.recv().await {
                Some(Msg::Batch(changes)) => {
                    part += 1;
                    let batch = ChangeBatch {
                        batch_id: format!("{}-v{}-{}-{part}", req.dataset, req.version, req.key),
                        changes,
                    };
                    in_flight.push_back(tokio::spawn(check_batch(
                        batch,
                        env.env.clone(),
                        env.timings.dataset(&req.dataset),
                    )));
                    continue;
                }
                Some(Msg::Rejected(r)) => {
                    report.counts.records_read += 1;
                    report.counts.quarantined += 1;
                    env.records_read.fetch_add(1, Ordering::Relaxed);
                    quarantine(env, &r).await
                }
                Some(Msg::Corrupt(place)) => Err(BulkError::Corrupt {
                    file: uri.clone(),
                    message: format!("cannot read {place}"),
                }),
                None => {
                    reading = false;
                    continue;
                }
            };
            if let Err(e) = result {
                failure = Some(e);
                break;
            }
            continue;
        }
        let Some(next) = in_flight.pop_front() else {
            break;
        };
        let checked = match next.await {
            Ok(r) => r,
            Err(e) => Err(BulkError::Input(format!("{uri}: a batch stopped: {e}"))),
        };
        match stage_batch(&req, checked, env).await {
            Ok(c) => report.counts += c,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    for h in &in_flight {
        h.abort();
    }
    drop(rx);
    let read = reader
        .await
        .map_err(|e| BulkError::Input(format!("{uri}: the reading thread stopped: {e}")))?;
    if let Some(e) = failure {
        return Err(e);
    }
    read.map_err(|e| match e {
        BulkError::Corrupt { message, .. } => BulkError::Corrupt {
            file: uri.clone(),
            message,
        },
        other => other,
    })?;
    env.datasets
        .chunk_done(&req.dataset, req.version, &req.key, report.counts)
        .await?;
    tracing::info!(
        dataset = %req.dataset,
        version = req.version,
        file = %req.key,
        records_in = report.counts.records_read,
        resources_out = report.counts.resources_written,
        quarantined = report.counts.quarantined,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "chunk loaded"
    );
    Ok(report)
}

/// A batch after mapping and validation.
struct Checked {
    records: u64,
    valid: MappedBatch,
}

/// Maps and validates one batch of a chunk (on a worker thread).
async fn check_batch(
    batch: ChangeBatch,
    env: Arc<Env>,
    timings: Arc<StageTimings>,
) -> Result<Checked, BulkError> {
    let records = batch.changes.len() as u64;
    let at = Instant::now();
    let mapped = handlers::transform::handle(batch, &env).await?;
    let mapped_at = Instant::now();
    let valid = handlers::validate::handle(mapped, &env).await?;
    StageTimings::add(&timings.map_ns, mapped_at - at);
    StageTimings::add(&timings.validate_ns, mapped_at.elapsed());
    timings.batches.fetch_add(1, Ordering::Relaxed);
    Ok(Checked { records, valid })
}

/// Quarantines a checked batch's rejected records and stages its resources.
async fn stage_batch(
    req: &ChunkRequest,
    checked: Result<Checked, BulkError>,
    env: &BulkEnv,
) -> Result<LoadCounts, BulkError> {
    let Checked { records, valid } = checked?;
    let mut counts = LoadCounts {
        records_read: records,
        ..LoadCounts::default()
    };
    let at = Instant::now();
    for r in &valid.rejected {
        quarantine(env, r).await?;
    }
    let timings = env.timings.dataset(&req.dataset);
    StageTimings::add(&timings.quarantine_ns, at.elapsed());
    counts.quarantined = valid.rejected.len() as u64;
    let mut staged = Vec::new();
    for item in valid.items {
        for rc in item.resources {
            // A full load has no deletes: what is absent from the version is deleted.
            if let ResourceOp::Upsert { resource } = rc.op {
                staged.push(StagedResource {
                    target: rc.target,
                    resource,
                    lineage: rc.lineage,
                });
            }
        }
    }
    let at = Instant::now();
    env.datasets
        .stage(&req.dataset, req.version, &staged)
        .await?;
    StageTimings::add(&timings.stage_ns, at.elapsed());
    counts.resources_written = staged.len() as u64;
    env.records_read
        .fetch_add(counts.records_read, Ordering::Relaxed);
    Ok(counts)
}

/// `fhir-unify-bulk-finalize`: SUCCEEDED and the pointer move, in one step.
pub async fn finalize(req: VersionRef, env: &BulkEnv) -> Result<PointerMove, BulkError> {
    let at = Instant::now();
    let mv = env.datasets.finalize(&req.dataset, req.version).await?;
    StageTimings::add(&env.timings.dataset(&req.dataset).finalize_ns, at.elapsed());
    Ok(mv)
}

/// `fhir-unify-bulk-fail`: marks the version FAILED with the caught error.
pub async fn fail(req: VersionRef, env: &BulkEnv) -> Result<VersionRef, BulkError> {
    let reason = match &req.error {
        Some(e) => format!(
            "{}: {}",
            e.get("Error").and_then(Value::as_str).unwrap_or("error"),
            e.get("Cause").and_then(Value::as_str).unwrap_or("")
        ),
        None => "the load failed".to_owned(),
    };
    env.datasets
        .fail(&req.dataset, req.version, &reason)
        .await?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_timings_add_up_per_stage_and_start_again_from_zero() {
        let t = StageTimings::default();
        StageTimings::add(&t.map_ns, Duration::from_millis(30));
        StageTimings::add(&t.map_ns, Duration::from_millis(12));
        StageTimings::add(&t.finalize_ns, Duration::from_millis(5));
        t.add_emit(Duration::from_millis(7));
        t.batches.fetch_add(2, Ordering::Relaxed);
        let first = t.take();
        assert_eq!(first.map_ms, 42);
        assert_eq!(first.finalize_ms, 5);
        assert_eq!(first.emit_ms, 7);
        assert_eq!(first.decode_ms, 0);
        assert_eq!(first.batches, 2);
        // A reading belongs to one load: the next one starts from zero.
        assert_eq!(t.take(), StageReport::default());
    }
}
