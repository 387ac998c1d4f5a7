//! The environment handlers run in: trait objects for every port, built once per process
//! (per Lambda cold start, or once for a local run), so a handler never knows which runtime
//! called it.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::{DataDir, PipelineConfig};
use crate::events::EventBus;
use crate::mapping::MappingSet;
use crate::model::ChangeBatch;
use crate::model::{PublishOutcome, ResourceChange, ResourceRef};
use crate::store::sqlite::SqliteStore;
use crate::store::{FhirStore, Outbox, OutboxEntry, StoreError, StoredVersion};
use crate::validation::Validator;

/// The REST store's change-event ledger of a local run or trial, under the data folder.
pub const LEDGER_FILE: &str = "ledger.db";

/// What the pipeline-step handlers (transform, validate, publish, emit) need.
#[derive(Debug, Clone)]
pub struct Env {
    pub mappings: Arc<MappingSet>,
    pub validator: LazyValidator,
    pub store: Arc<dyn FhirStore>,
    pub outbox: Arc<dyn Outbox>,
    pub bus: Arc<dyn EventBus>,
}

/// Errors building an environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("event bus: {0}")]
    Bus(#[from] crate::events::BusError),
    #[error("validator: {0}")]
    Validator(String),
}

impl Env {
    /// Builds the environment a pipeline file describes, with local data under `data`.
    pub fn from_config(config: &PipelineConfig, data: &DataDir) -> Result<Env, EnvError> {
        let mappings = Arc::new(config.load_mappings()?);
        // Only `validate` uses the validator: the others should not pay for loading the FHIR
        // definitions at their cold start.
        let validator = LazyValidator::default();
        let store = Arc::new(SqliteStore::open(&data.join(config.store.sqlite_path()))?);
        let bus = crate::events::bus_from_config(&config.events, data)?;
        Ok(Env {
            mappings,
            validator,
            store: store.clone(),
            outbox: store,
            bus,
        })
    }

    /// The environment of a local run (`run`, `serve`): [`Env::from_config`], except that
    /// when the pipeline file names a FHIR server (`store.rest`), resources go there and its
    /// change events go through a ledger under the data folder (`ledger.db`), which the local
    /// emit relays. (A `dynamodb` store is for Lambda: the local runtime keeps SQLite.)
    pub async fn local(config: &PipelineConfig, data: &DataDir) -> Result<Env, EnvError> {
        let Some(rest) = &config.store.rest else {
            return Env::from_config(config, data);
        };
        let server = crate::store::rest::RestStore::from_config(rest, None).await?;
        let ledger = crate::store::ledger::SqliteLedger::open(&data.join(LEDGER_FILE.as_ref()))?;
        Ok(Env::lazy(config, data, true)?.with_rest_store(server, Arc::new(ledger)))
    }

    /// This environment writing to a FHIR server: the store records each write in `ledger`,
    /// whose events become the outbox `emit` drains.
    pub fn with_rest_store(
        mut self,
        server: crate::store::rest::RestStore,
        ledger: Arc<dyn crate::store::ledger::Ledger>,
    ) -> Env {
        self.outbox = ledger.clone();
        self.store = Arc::new(server.with_ledger(ledger));
        self
    }

    /// The environment of a Lambda cold start: only what a function's handler uses is paid
    /// for at init. The mappings are loaded when `mappings` is true (else the set is empty:
    /// the function maps nothing); the validator is loaded on first use; the embedded SQLite
    /// store is opened (its file created under `data`) on first use, so a function whose
    /// store is DynamoDB or a FHIR server, or that uses none, never creates it.
    pub fn lazy(config: &PipelineConfig, data: &DataDir, mappings: bool) -> Result<Env, EnvError> {
        let mappings = Arc::new(if mappings {
            config.load_mappings()?
        } else {
            MappingSet::new()
        });
        let store = Arc::new(LazySqliteStore::new(data.join(config.store.sqlite_path())));
        let bus = crate::events::bus_from_config(&config.events, data)?;
        Ok(Env {
            mappings,
            validator: LazyValidator::default(),
            store: store.clone(),
            outbox: store,
            bus,
        })
    }
}

/// The embedded SQLite store, opened on first use: creating it in an empty folder (schema,
/// WAL, a few fsyncs) is a cold start's largest local cost, which a function that reads and
/// writes elsewhere should not pay. A failed open is reported by every call (the same
/// message), as the eager open would have reported it once at start.
#[derive(Debug)]
pub struct LazySqliteStore {
    path: std::path::PathBuf,
    store: std::sync::OnceLock<Result<Arc<SqliteStore>, StoreError>>,
}

impl LazySqliteStore {
    pub fn new(path: std::path::PathBuf) -> Self {
        LazySqliteStore {
            path,
            store: std::sync::OnceLock::new(),
        }
    }

    /// Whether the store was opened (a call needed it).
    pub fn is_open(&self) -> bool {
        matches!(self.store.get(), Some(Ok(_)))
    }

    fn get(&self) -> Result<&SqliteStore, StoreError> {
        match self
            .store
            .get_or_init(|| SqliteStore::open(&self.path).map(Arc::new))
        {
            Ok(store) => Ok(store),
            // The same error, of the same kind, for every call (StoreError is not Clone).
            Err(StoreError::Unavailable(m)) => Err(StoreError::Unavailable(m.clone())),
            Err(StoreError::Invalid { target, reason }) => Err(StoreError::Invalid {
                target: target.clone(),
                reason: reason.clone(),
            }),
            Err(StoreError::Corrupt(m)) => Err(StoreError::Corrupt(m.clone())),
        }
    }
}

#[async_trait]
impl FhirStore for LazySqliteStore {
    async fn apply(&self, changes: &[ResourceChange]) -> Result<Vec<PublishOutcome>, StoreError> {
        self.get()?.apply(changes).await
    }

    async fn read(&self, target: &ResourceRef) -> Result<Option<StoredVersion>, StoreError> {
        self.get()?.read(target).await
    }

    async fn vread(
        &self,
        target: &ResourceRef,
        version_id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        self.get()?.vread(target, version_id).await
    }

    async fn history(&self, target: &ResourceRef) -> Result<Vec<StoredVersion>, StoreError> {
        self.get()?.history(target).await
    }
}

#[async_trait]
impl Outbox for LazySqliteStore {
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.get()?.pending(limit).await
    }

    async fn mark_delivered(&self, positions: &[i64]) -> Result<(), StoreError> {
        self.get()?.mark_delivered(positions).await
    }
}

/// The pipeline's FHIR validator ([`Validator::pipeline`]: the R4 core and the project's profiles),
/// loaded on first use (loading the compiled R4 definitions takes ~15 ms,
/// which only the functions that validate should pay at cold start).
#[derive(Debug, Clone, Default)]
pub struct LazyValidator(Arc<std::sync::OnceLock<Result<Arc<Validator>, String>>>);

impl LazyValidator {
    /// A validator that is already loaded.
    pub fn ready(validator: Arc<Validator>) -> Self {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(Ok(validator));
        LazyValidator(Arc::new(cell))
    }

    /// The validator, loading it the first time; the error says why it cannot be loaded.
    pub fn get(&self) -> Result<&Validator, String> {
        match self.0.get_or_init(|| {
            Validator::pipeline()
                .map(Arc::new)
                .map_err(|e| e.to_string())
        }) {
            Ok(v) => Ok(v),
            Err(e) => Err(e.clone()),
        }
    }
}

/// The result of one run of the `unify` state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRun {
    /// The execution's name.
    pub execution: String,
    pub succeeded: bool,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
}

/// A workflow that could not be run at all.
#[derive(Debug, thiserror::Error)]
#[error("workflow {workflow}: {message}")]
pub struct WorkflowError {
    pub workflow: String,
    pub message: String,
}

/// A `bulk-load` started for an uploaded full-refresh file.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkStart {
    /// The execution's name (derived from the upload, so a redelivered event names the same).
    pub execution: String,
    /// An earlier delivery of the same upload started it: nothing new was started.
    pub already_started: bool,
    /// On one machine the load runs to its end before the answer: how it ended. On AWS the
    /// execution goes on after the answer (`None`).
    pub finished: Option<WorkflowRun>,
}

/// Starts the `unify` state machine (Step Functions on AWS, the ASL engine locally), and
/// `bulk-load` for full-refresh uploads.
#[async_trait]
pub trait Workflow: Send + Sync + std::fmt::Debug {
    /// Runs `unify` on a batch and waits for its end.
    async fn run_unify(&self, batch: &ChangeBatch) -> Result<WorkflowRun, WorkflowError>;

    /// Starts `bulk-load` for one new version of a dataset (a full-refresh file: `req.prefix`
    /// is its key) as the execution `name`. A workflow that cannot start one says so.
    async fn start_bulk_load(
        &self,
        req: &crate::bulk::LoadRequest,
        name: &str,
    ) -> Result<BulkStart, WorkflowError> {
        Err(WorkflowError {
            workflow: "bulk-load".into(),
            message: format!(
                "execution {name} for dataset {}: this environment starts no bulk loads",
                req.dataset
            ),
        })
    }
}

/// What the ingress handlers need: the pipeline file (to bind events to sources) and the
/// workflow they hand batches to.
#[derive(Debug, Clone)]
pub struct IngestEnv {
    pub config: Arc<PipelineConfig>,
    pub workflow: Arc<dyn Workflow>,
}
