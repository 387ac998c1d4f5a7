//! `bulk-load` on one machine: the project's ASL engine runs
//! `statemachines/bulk-load.asl.json` (embedded in the binary) with the bulk functions
//! registered under their function names, as `unify` runs in [`crate::local`]. The distributed
//! Map's ItemReader lists the load's folder through the same object store the chunk function
//! reads the files from.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use serde::Serialize;
use serde_json::Value;

use super::{
    BulkEnv, BulkError, ChunkRequest, LoadRequest, StageReport, VersionRef, begin, fail, finalize,
    load_chunk,
};
use crate::events::local::{LOCAL_ACCOUNT, LOCAL_REGION};
use crate::events::{EventBus, RelayError, RelayReport, relay_outbox};
use crate::handlers;
use crate::local::{LocalRuntime, function_arn};
use crate::objects::{LocalBuckets, ObjectStore};
use crate::sources::dms::DmsPath;
use crate::sources::transfer::LoadMode;
use crate::store::dataset::{DatasetStore, DatasetVersion, VersionStatus};
use crate::store::sqlite::SqliteStore;
use crate::store::{Outbox, OutboxEntry, StoreError};

/// The `bulk-load` definition, with `${Placeholders}` for functions.
pub const BULK_LOAD_DEFINITION: &str = include_str!("../../statemachines/bulk-load.asl.json");

/// The page cache of the loader's store connection, in MiB (`fhir-unify load` takes another
/// from `FHIR_UNIFY_BULK_CACHE_MIB`).
pub const DEFAULT_CACHE_MIB: u32 = 64;

/// How much WAL the loader writes between checkpoints, in MiB.
pub const CHECKPOINT_MIB: u32 = 64;

/// The functions of `bulk-load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkStep {
    Begin,
    LoadChunk,
    Finalize,
    Fail,
    /// `unify`'s own emit function.
    Emit,
}

impl BulkStep {
    pub const ALL: [BulkStep; 5] = [
        BulkStep::Begin,
        BulkStep::LoadChunk,
        BulkStep::Finalize,
        BulkStep::Fail,
        BulkStep::Emit,
    ];

    /// The function's name (as deployed).
    pub fn function_name(self) -> &'static str {
        match self {
            BulkStep::Begin => "fhir-unify-bulk-begin",
            BulkStep::LoadChunk => "fhir-unify-bulk-load-chunk",
            BulkStep::Finalize => "fhir-unify-bulk-finalize",
            BulkStep::Fail => "fhir-unify-bulk-fail",
            BulkStep::Emit => crate::local::Step::Emit.function_name(),
        }
    }

    /// The `${Placeholder}` naming the function's ARN in the definition.
    pub fn placeholder(self) -> &'static str {
        match self {
            BulkStep::Begin => "BulkBeginFunctionArn",
            BulkStep::LoadChunk => "BulkLoadChunkFunctionArn",
            BulkStep::Finalize => "BulkFinalizeFunctionArn",
            BulkStep::Fail => "BulkFailFunctionArn",
            BulkStep::Emit => crate::local::Step::Emit.placeholder(),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(payload: Value) -> Result<T, BulkError> {
    serde_json::from_value(payload).map_err(|e| BulkError::Input(format!("invalid input: {e}")))
}

fn to_json<T: Serialize>(v: T) -> Result<Value, BulkError> {
    serde_json::to_value(v).map_err(|e| BulkError::Input(e.to_string()))
}

#[derive(Debug)]
struct BulkFunction {
    step: BulkStep,
    env: Arc<BulkEnv>,
    local: Arc<LocalShared>,
}

impl BulkFunction {
    async fn call(&self, payload: Value) -> Result<Value, BulkError> {
        match self.step {
            BulkStep::Emit => {
                let at = Instant::now();
                let timings = emit_timings(&payload, &self.env);
                let report = self
                    .local
                    .emit
                    .emit()
                    .await
                    .map_err(|e| BulkError::Handler(e.into()))?;
                timings.add_emit(at.elapsed());
                tracing::info!(
                    delivered = report.delivered,
                    failed = report.failed,
                    "emit done"
                );
                to_json(report)
            }
            BulkStep::Finalize => {
                let req: VersionRef = parse(payload.clone())?;
                let turns = self.local.turns();
                if let Some(t) = &turns {
                    t.wait(&req.dataset, req.version, &self.env).await?;
                }
                let out = invoke(self.step, payload, &self.env).await;
                if let (Some(t), Ok(_)) = (&turns, &out) {
                    t.done(&req.dataset);
                }
                out
            }
            _ => invoke(self.step, payload, &self.env).await,
        }
    }
}

/// What the local bulk functions share beyond [`BulkEnv`]: the emitter, and the order in
/// which loads running at once move their pointers.
#[derive(Debug)]
struct LocalShared {
    emit: LocalEmit,
    turns: std::sync::Mutex<Option<Arc<Turns>>>,
}

impl LocalShared {
    fn turns(&self) -> Option<Arc<Turns>> {
        self.turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_turns(&self, turns: Option<Arc<Turns>>) {
        *self
            .turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = turns;
    }
}

/// The order of the pointer moves of loads running at once ([`LocalBulk::load_all`]): a
/// load's `Finalize` waits until every load before it in the request order has moved its
/// pointer or ended, so the outbox holds the loads' events in the same order as when they
/// ran one after the other, and a resource two datasets both write ends up as it did then.
#[derive(Debug)]
struct Turns {
    order: Vec<String>,
    done: tokio::sync::watch::Sender<Vec<bool>>,
}

impl Turns {
    fn new(reqs: &[LoadRequest]) -> Turns {
        let order: Vec<String> = reqs.iter().map(|r| r.dataset.clone()).collect();
        let done = tokio::sync::watch::Sender::new(vec![false; order.len()]);
        Turns { order, done }
    }

    fn index(&self, dataset: &str) -> Option<usize> {
        self.order.iter().position(|d| d == dataset)
    }

    /// Marks the dataset's turn as taken (its pointer moved, or its load ended).
    fn done(&self, dataset: &str) {
        if let Some(i) = self.index(dataset) {
            self.done.send_modify(|d| d[i] = true);
        }
    }

    /// Waits for the turn of `dataset`, keeping its version's heartbeat fresh meanwhile (the
    /// loads before it may take longer than the lease).
    async fn wait(&self, dataset: &str, version: u64, env: &BulkEnv) -> Result<(), BulkError> {
        let Some(i) = self.index(dataset) else {
            return Ok(());
        };
        let mut rx = self.done.subscribe();
        let beat = (env.lease / 4).max(Duration::from_millis(100));
        loop {
            // The guard `wait_for` returns is dropped inside the block.
            let turn = async { rx.wait_for(|d| d[..i].iter().all(|x| *x)).await.map(|_| ()) };
            tokio::select! {
                r = turn => {
                    // The sender lives as long as `self`: an error cannot happen here.
                    return r.map_err(|e| BulkError::Input(e.to_string()));
                }
                () = tokio::time::sleep(beat) => {
                    env.datasets.heartbeat(dataset, version).await?;
                }
            }
        }
    }
}

/// `emit` for local loads. It delivers the store's outbox through the bus as
/// [`handlers::emit`] does, with two differences that let it run while another load moves its
/// pointer (which holds the store's write lock for the whole move):
/// - it reads the outbox through its own connection (a WAL reader waits for no writer);
/// - it marks entries delivered in batches through the loader's connection, in between the
///   loader's transactions, rather than after every page (a mark is a write: it would wait
///   for the move, and SQLite's busy timeout could run out on a long one).
///
/// Marks that are written later change nothing for a crash: entries delivered but not marked
/// are sent again by the next relay, and the bus's delivery ledger sends each to each target
/// once, exactly as after a crash between a delivery and its mark. One relay runs at a time.
#[derive(Debug)]
pub struct LocalEmit {
    reader: SqliteStore,
    writer: Arc<SqliteStore>,
    bus: Arc<dyn EventBus>,
    turn: tokio::sync::Mutex<()>,
}

/// Delivered positions kept before they are written (8 bytes each).
const MARK_BATCH: usize = 50_000;

impl LocalEmit {
    /// An emitter reading the store file at `path` through its own connection and marking
    /// through `writer` (a connection to the same file).
    pub fn open(
        path: &Path,
        writer: Arc<SqliteStore>,
        bus: Arc<dyn EventBus>,
    ) -> Result<LocalEmit, StoreError> {
        Ok(LocalEmit {
            reader: SqliteStore::open(path)?,
            writer,
            bus,
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Relays every pending outbox entry, in outbox order.
    pub async fn emit(&self) -> Result<RelayReport, RelayError> {
        let _turn = self.turn.lock().await;
        let outbox = DeferredMarks {
            emit: self,
            after: std::sync::Mutex::new(0),
            marks: std::sync::Mutex::new(Vec::new()),
        };
        let relayed = relay_outbox(&outbox, self.bus.as_ref()).await;
        // What was delivered is marked even when the relay stopped on an error.
        let flushed = outbox.flush();
        let report = relayed?;
        flushed?;
        Ok(report)
    }
}

/// The outbox as [`LocalEmit`] relays it: reads go on past entries delivered but not yet
/// marked; marks are kept and written in batches.
#[derive(Debug)]
struct DeferredMarks<'a> {
    emit: &'a LocalEmit,
    after: std::sync::Mutex<i64>,
    marks: std::sync::Mutex<Vec<i64>>,
}

impl DeferredMarks<'_> {
    fn flush(&self) -> Result<(), StoreError> {
        let marks = std::mem::take(
            &mut *self
                .marks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.emit.writer.mark_delivered_off_worker(&marks)
    }
}

#[async_trait]
impl Outbox for DeferredMarks<'_> {
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut after = self
            .after
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let page = self.emit.reader.pending_after(*after, limit)?;
        if let Some(last) = page.last() {
            *after = last.position;
        }
        Ok(page)
    }

    async fn mark_delivered(&self, positions: &[i64]) -> Result<(), StoreError> {
        let full = {
            let mut marks = self
                .marks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            marks.extend_from_slice(positions);
            marks.len() >= MARK_BATCH
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }
}

/// Runs one bulk function on its JSON payload: what the local engine and each Lambda
/// (`functions/bulk-*`) call.
pub async fn invoke(step: BulkStep, payload: Value, env: &BulkEnv) -> Result<Value, BulkError> {
    match step {
        BulkStep::Begin => to_json(begin(parse(payload)?, env).await?),
        BulkStep::LoadChunk => {
            let req: ChunkRequest = parse(payload)?;
            match load_chunk(req.clone(), env).await {
                Ok(r) => to_json(r),
                Err(e) => {
                    // A chunk that cannot succeed fails its version at once (with its own
                    // error, naming file and row), which also stops the other chunks.
                    if !e.is_retryable()
                        && let Err(f) = env
                            .datasets
                            .fail(&req.dataset, req.version, &e.to_string())
                            .await
                    {
                        tracing::warn!(dataset = %req.dataset, error = %f, "cannot mark the version FAILED");
                    }
                    Err(e)
                }
            }
        }
        BulkStep::Finalize => to_json(finalize(parse::<VersionRef>(payload)?, env).await?),
        BulkStep::Fail => to_json(fail(parse(payload)?, env).await?),
        BulkStep::Emit => {
            let at = Instant::now();
            let timings = emit_timings(&payload, env);
            let report = handlers::emit::handle(payload, &env.env).await?;
            timings.add_emit(at.elapsed());
            to_json(report)
        }
    }
}

/// Where an emit's time is counted: its trigger names the dataset whose move it delivers.
fn emit_timings(payload: &Value, env: &BulkEnv) -> Arc<super::StageTimings> {
    match payload.get("trigger").and_then(Value::as_str) {
        Some(dataset) => env.timings.dataset(dataset),
        None => env.timings.dataset(""),
    }
}

impl From<BulkError> for lambda_runtime::Diagnostic {
    fn from(e: BulkError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}

impl BulkError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            BulkError::Dataset(e) => e.is_retryable(),
            BulkError::Handler(e) => e.is_retryable(),
            _ => false,
        }
    }
}

#[async_trait]
impl asl::LambdaFunction for BulkFunction {
    async fn invoke(&self, payload: Value) -> Result<Value, asl::LambdaError> {
        self.call(payload)
            .await
            .map_err(|e| asl::LambdaError::new(e.error_type(), e.to_string()))
    }
}

/// The project's object store seen by the ASL engine's ItemReader (read and list only).
struct AslObjects(Arc<dyn ObjectStore>);

#[async_trait]
impl asl::objects::ObjectStore for AslObjects {
    async fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<u8>, asl::objects::ObjectStoreError> {
        let io = |message: String| asl::objects::ObjectStoreError::Io {
            bucket: bucket.into(),
            key: key.into(),
            message,
        };
        let size = self.0.size(bucket, key).map_err(|e| io(e.to_string()))?;
        let len = usize::try_from(size).map_err(|e| io(e.to_string()))?;
        self.0
            .read_range(bucket, key, 0, len)
            .map(|b| b.to_vec())
            .map_err(|e| io(e.to_string()))
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        _body: Vec<u8>,
    ) -> Result<(), asl::objects::ObjectStoreError> {
        Err(asl::objects::ObjectStoreError::Io {
            bucket: bucket.into(),
            key: key.into(),
            message: "the load's files are read-only".into(),
        })
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<asl::objects::ObjectInfo>, asl::objects::ObjectStoreError> {
        let listed =
            self.0
                .list(bucket, prefix)
                .map_err(|e| asl::objects::ObjectStoreError::Io {
                    bucket: bucket.into(),
                    key: prefix.into(),
                    message: e.to_string(),
                })?;
        Ok(listed
            .into_iter()
            .map(|m| asl::objects::ObjectInfo {
                // Local files have no stored ETag; the key and size stand in for it.
                etag: format!("{:x}-{}", m.key.len(), m.size),
                key: m.key,
                size: m.size,
                last_modified: Utc::now(),
            })
            .collect())
    }
}

/// What one load did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadOutcome {
    pub dataset: String,
    pub succeeded: bool,
    /// The version the load made (its row, as it ended).
    pub version: Option<DatasetVersion>,
    /// What the pointer move did (`Finalize`'s result).
    pub published: Option<Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub elapsed_ms: u64,
    /// Where the time went, per stage.
    pub timings: StageReport,
}

/// `bulk-load` on the ASL engine, over a folder of DMS full-load files of one source, or over
/// full-refresh files of a Transfer source (a folder laid out like its location, or one file).
#[derive(Debug)]
pub struct LocalBulk {
    engine: asl::Engine,
    machine: asl::StateMachine,
    pub env: Arc<BulkEnv>,
    pub datasets: Arc<SqliteStore>,
    /// The one file to load, when `open` was given a file (its key below the folder).
    only: Option<String>,
    local: Arc<LocalShared>,
}

impl LocalBulk {
    /// Registers the bulk functions, with the files of `source` read from `path`: for a DMS
    /// source a folder laid out like the DMS bucket folder (`schema/table/LOAD….parquet`); for
    /// a Transfer source a folder laid out like its location, or one file, whose key is the
    /// shortest end of its path that a `files` entry matches.
    pub fn open(
        rt: &LocalRuntime,
        source: &str,
        path: &Path,
        lease: Duration,
    ) -> Result<LocalBulk, BulkError> {
        let src = rt
            .config
            .sources
            .iter()
            .find(|s| s.name == source)
            .ok_or_else(|| {
                BulkError::Input(format!("no source named {source:?} in the pipeline file"))
            })?;
        let (dir, only) = if src.transfer.is_some() && path.is_file() {
            let (dir, key) = transfer_file_key(&rt.config, source, path)?;
            (dir, Some(key))
        } else if src.dms.is_some() || src.transfer.is_some() {
            if !path.is_dir() {
                return Err(BulkError::Input(format!(
                    "{}: not a folder",
                    path.display()
                )));
            }
            (path.to_path_buf(), None)
        } else {
            return Err(BulkError::Input(format!(
                "source {source:?} is neither a DMS nor a transfer source: only DMS full loads and full-refresh files are loaded as datasets"
            )));
        };
        let objects = LocalBuckets::new().with_bucket(source, &dir).shared();
        let mut bulk = LocalBulk::with_objects(
            rt.config.clone(),
            rt.env.clone(),
            &rt.data,
            rt.queue.clone(),
            objects,
            lease,
        )?;
        bulk.only = only;
        Ok(bulk)
    }

    /// Registers the bulk functions over the store under `data`, reading the loads' files
    /// from `objects` (buckets named after their sources).
    pub fn with_objects(
        config: Arc<crate::config::PipelineConfig>,
        unify: Arc<crate::env::Env>,
        data: &crate::config::DataDir,
        queue: Arc<crate::local::queue::LocalQueue>,
        objects: Arc<dyn ObjectStore>,
        lease: Duration,
    ) -> Result<LocalBulk, BulkError> {
        let store_path = data.join(config.store.sqlite_path());
        let datasets = Arc::new(
            SqliteStore::open(&store_path).map_err(crate::store::dataset::DatasetError::from)?,
        );
        datasets
            .tune_for_bulk(DEFAULT_CACHE_MIB, CHECKPOINT_MIB)
            .map_err(crate::store::dataset::DatasetError::from)?;
        let env = Arc::new(BulkEnv {
            env: unify,
            config: config.clone(),
            datasets: datasets.clone(),
            objects: objects.clone(),
            quarantine: Arc::new(crate::queue::LocalQuarantine {
                queue,
                name: config.quarantine.queue.clone(),
            }),
            owner: format!(
                "pid {} started {}",
                std::process::id(),
                Utc::now().to_rfc3339()
            ),
            lease,
            records_read: Arc::new(AtomicU64::new(0)),
            timings: Arc::default(),
        });
        let local = Arc::new(LocalShared {
            emit: LocalEmit::open(&store_path, datasets.clone(), env.env.bus.clone())
                .map_err(crate::store::dataset::DatasetError::from)?,
            turns: std::sync::Mutex::new(None),
        });
        let mut registry = asl::TaskRegistry::new();
        let mut subs = HashMap::new();
        for step in BulkStep::ALL {
            registry.register_lambda(
                step.function_name(),
                Arc::new(BulkFunction {
                    step,
                    env: env.clone(),
                    local: local.clone(),
                }),
            );
            subs.insert(
                step.placeholder().to_owned(),
                function_arn(step.function_name()),
            );
        }
        registry.set_object_store(Arc::new(AslObjects(objects)));
        let text = asl::substitute(BULK_LOAD_DEFINITION, &subs)
            .map_err(|e| BulkError::Definition(e.to_string()))?;
        let machine = asl::StateMachine::parse(&text)
            .map_err(|e| BulkError::Definition(e.to_string()))?
            .with_name("bulk-load");
        let engine = asl::Engine::with_config(
            registry,
            Arc::new(asl::SystemClock),
            asl::EngineConfig {
                region: LOCAL_REGION.into(),
                account_id: LOCAL_ACCOUNT.into(),
                ..asl::EngineConfig::default()
            },
        );
        Ok(LocalBulk {
            engine,
            machine,
            env,
            datasets,
            only: None,
            local,
        })
    }

    /// The loads the folder holds: one per table with full-load files that an entity of the
    /// source maps, in table order.
    pub fn loads(&self, source: &str) -> Result<Vec<LoadRequest>, BulkError> {
        let listed = self
            .env
            .objects
            .list(source, self.only.as_deref().unwrap_or(""))
            .map_err(|e| BulkError::Input(e.to_string()))?;
        let is_transfer = self
            .env
            .config
            .sources
            .iter()
            .any(|s| s.name == source && s.transfer.is_some());
        if is_transfer {
            return self.transfer_loads(source, listed);
        }
        let mut out: Vec<LoadRequest> = Vec::new();
        for m in listed {
            let Ok(path) = DmsPath::parse(&m.key, "") else {
                continue;
            };
            if !path.is_full_load() {
                continue;
            }
            let Some((target, _)) = self.env.config.dms_target(source, &m.key) else {
                tracing::info!(file = %m.key, "no entity maps this table: not loaded");
                continue;
            };
            let dataset = format!("{}/{}", target.binding.source, target.binding.entity);
            if out.iter().any(|r| r.dataset == dataset) {
                continue;
            }
            out.push(LoadRequest {
                dataset,
                source: target.binding.source,
                entity: target.binding.entity,
                bucket: source.to_owned(),
                prefix: format!("{}/{}/", path.schema, path.table),
                version: None,
            });
        }
        if out.is_empty() {
            return Err(BulkError::Input(format!(
                "no full-load file (schema/table/LOAD….parquet) of a table that source {source:?} maps"
            )));
        }
        Ok(out)
    }

    /// The loads of a Transfer source: one per full-refresh file, in key order (files of one
    /// entity are successive versions of its dataset, the last one current).
    fn transfer_loads(
        &self,
        source: &str,
        listed: Vec<crate::objects::ObjectMeta>,
    ) -> Result<Vec<LoadRequest>, BulkError> {
        let mut out = Vec::new();
        for m in listed {
            if self.only.as_deref().is_some_and(|k| k != m.key) {
                continue;
            }
            let Some(target) = self.env.config.transfer_target(source, &m.key) else {
                tracing::info!(file = %m.key, "no `files` entry matches it: not loaded");
                continue;
            };
            if target.load != LoadMode::FullRefresh {
                if self.only.is_some() {
                    return Err(BulkError::Input(format!(
                        "{}: an increment file (`load: increment`, the `files` entry {:?}): only `load: full-refresh` files are loaded as dataset versions",
                        m.key, target.pattern
                    )));
                }
                tracing::info!(file = %m.key, "an increment file: not loaded");
                continue;
            }
            out.push(LoadRequest {
                dataset: format!("{}/{}", target.source, target.entity),
                source: target.source,
                entity: target.entity,
                bucket: source.to_owned(),
                prefix: m.key,
                version: None,
            });
        }
        if out.is_empty() {
            return Err(BulkError::Input(format!(
                "no file that a `load: full-refresh` entry of source {source:?} matches"
            )));
        }
        out.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        Ok(out)
    }

    /// Runs `bulk-load` for every request at once and waits for them all; outcomes in request
    /// order. The loads' reading, mapping and validating overlap each other's store work, and
    /// one load's events are delivered while the next moves its pointer. Pointer moves take
    /// turns in request order (see [`Turns`]), so the outbox, and what subscribers receive,
    /// is in the same order as from [`Self::load`] called for each in turn. A load that fails
    /// is marked FAILED on its own: the others go on. Requests for one dataset (several
    /// full-refresh files of one entity) are successive versions: those load one after the
    /// other.
    pub async fn load_all(
        self: &Arc<Self>,
        reqs: &[LoadRequest],
    ) -> Vec<Result<LoadOutcome, BulkError>> {
        let datasets: std::collections::BTreeSet<&str> =
            reqs.iter().map(|r| r.dataset.as_str()).collect();
        if datasets.len() < reqs.len() {
            let mut outcomes = Vec::with_capacity(reqs.len());
            for req in reqs {
                outcomes.push(self.load(req).await);
            }
            return outcomes;
        }
        let turns = Arc::new(Turns::new(reqs));
        self.local.set_turns(Some(turns.clone()));
        // One task per load: a pointer move blocks the thread it runs on, and the other loads'
        // steps (another's event delivery above all) must not wait on it.
        let tasks: Vec<_> = reqs
            .iter()
            .map(|req| {
                let (this, turns, req) = (self.clone(), turns.clone(), req.clone());
                tokio::spawn(async move {
                    let outcome = this.load(&req).await;
                    // Ended without moving its pointer (it failed): the next may go.
                    turns.done(&req.dataset);
                    outcome
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for (task, req) in futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .zip(reqs)
        {
            outcomes.push(task.unwrap_or_else(|e| {
                Err(BulkError::Input(format!(
                    "the load of {} stopped: {e}",
                    req.dataset
                )))
            }));
        }
        self.local.set_turns(None);
        outcomes
    }

    /// Runs `bulk-load` for one dataset and waits for its end.
    pub async fn load(&self, req: &LoadRequest) -> Result<LoadOutcome, BulkError> {
        let started = Instant::now();
        // What is counted from here on for this dataset is this load's.
        let dataset_timings = self.env.timings.dataset(&req.dataset);
        dataset_timings.take();
        let input = serde_json::to_value(req).map_err(|e| BulkError::Input(e.to_string()))?;
        let name: String = format!("{}-{}", req.dataset, Utc::now().timestamp_millis())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        let result = self
            .engine
            .start_execution(&self.machine, Some(&name), input)
            .await;
        let succeeded = result.status == asl::ExecutionStatus::Succeeded;
        let timings = dataset_timings.take();
        tracing::info!(
            dataset = %req.dataset,
            elapsed_ms = started.elapsed().as_millis() as u64,
            batches = timings.batches,
            decode_ms = timings.decode_ms,
            map_ms = timings.map_ms,
            validate_ms = timings.validate_ms,
            quarantine_ms = timings.quarantine_ms,
            stage_ms = timings.stage_ms,
            finalize_ms = timings.finalize_ms,
            emit_ms = timings.emit_ms,
            "load stages"
        );
        let versions = self.datasets.versions(&req.dataset).await?;
        // This process's newest version of the dataset (it may load one dataset several times).
        let version = versions
            .into_iter()
            .filter(|v| v.owner == self.env.owner)
            .max_by_key(|v| v.version);
        if !succeeded
            && let Some(v) = &version
            && v.status == VersionStatus::InProgress
        {
            // The engine stopped before MarkFailed could run: fail it here, pointer untouched.
            let reason = format!(
                "{}: {}",
                result.error.as_deref().unwrap_or("error"),
                result.cause.as_deref().unwrap_or("")
            );
            self.datasets.fail(&req.dataset, v.version, &reason).await?;
        }
        let version = match version {
            Some(v) => self
                .datasets
                .versions(&req.dataset)
                .await?
                .into_iter()
                .find(|x| x.version == v.version),
            None => None,
        };
        Ok(LoadOutcome {
            dataset: req.dataset.clone(),
            succeeded,
            published: result
                .output
                .as_ref()
                .and_then(|o| o.get("published").cloned()),
            version,
            error: result.error,
            cause: result.cause,
            elapsed_ms: started.elapsed().as_millis() as u64,
            timings,
        })
    }
}

/// The folder and key of one uploaded file of a Transfer source: the key is the shortest end
/// of the file's path that a `files` entry of the source matches (`members/2026-03.csv` for
/// `…/landing/members/2026-03.csv` and `match: "members/*.csv"`).
fn transfer_file_key(
    config: &crate::config::PipelineConfig,
    source: &str,
    file: &Path,
) -> Result<(std::path::PathBuf, String), BulkError> {
    let mut parts: Vec<String> = Vec::new();
    let mut dir = file;
    while let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
        parts.insert(0, name.to_string_lossy().into_owned());
        let key = parts.join("/");
        if config.transfer_target(source, &key).is_some() {
            let root = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            return Ok((root.to_path_buf(), key));
        }
        dir = parent;
    }
    Err(BulkError::Input(format!(
        "{}: no `files` entry of source {source:?} matches this file",
        file.display()
    )))
}
