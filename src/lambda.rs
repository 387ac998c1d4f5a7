//! What every `functions/<name>` binary shares: JSON logs as Lambda expects them, and the
//! environment built once per cold start from the pipeline file packaged with the function.
//!
//! `FHIR_UNIFY_CONFIG` names the pipeline file (default `fhir-unify.yaml` in the function's
//! folder, `LAMBDA_TASK_ROOT`); `FHIR_UNIFY_DATA_DIR` the folder for local data (default
//! `/tmp/fhir-unify`, the only writable place on Lambda); `FHIR_UNIFY_EVENT_BUS` the
//! EventBridge bus change events go to (see [`use_event_bus`]). `FHIR_UNIFY_STORE_TABLE`,
//! set on `publish`, `gateway` and `emit` by the stack, names the DynamoDB store table (it
//! overrides the pipeline file's `store`). `FHIR_UNIFY_FHIR_ENDPOINT` names a FHIR R4 server
//! as the store instead (HealthLake's data store endpoint, say; see [`rest_store_config`]).
//! `FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN`, set on every ingest function by the stack, sends
//! their batches to the Express `unify` machine on Step Functions instead of the in-process
//! engine (see [`ingest_env`]).
//!
//! Each builder makes only what its function's handler uses ([`Env::lazy`]): the mappings only
//! where something maps, the validator where something validates, the embedded SQLite store
//! and the local queue only when a call needs them (never on the stack, whose store, queue and
//! workflow are DynamoDB, SQS and Step Functions), so a cold start reads the pipeline file and
//! builds SDK clients, and little else.
//!
//! A cold start that cannot build its environment (a bad pipeline file, say) is reported to
//! the Lambda Runtime API's `/runtime/init/error` before the process exits, so the caller sees
//! [`INIT_FAILED`] and the reason rather than a bare `Runtime.ExitError`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{DataDir, EventBridgeConfig, EventsConfig, PipelineConfig};
use crate::env::{Env, EnvError, IngestEnv, LazySqliteStore, LazyValidator, Workflow};
use crate::gateway::{Gateway, GatewayError};
use crate::handlers::errors::INIT_FAILED;
use crate::local::{LocalError, LocalRuntime};
use crate::objects::ObjectStore;
use crate::sfn::StepFunctionsWorkflow;
use crate::store::dynamodb::DynamoStore;

/// Structured JSON logs on stdout, level from `RUST_LOG` (default `info`), without ANSI colours
/// or timestamps (CloudWatch adds its own).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_current_span(false)
        .try_init();
}

/// The pipeline file and data folder named by the environment.
pub fn load_config() -> Result<(Arc<PipelineConfig>, DataDir), EnvError> {
    let config = std::env::var_os("FHIR_UNIFY_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("LAMBDA_TASK_ROOT")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join("fhir-unify.yaml")
        });
    let data = std::env::var_os("FHIR_UNIFY_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/fhir-unify"));
    let mut config = PipelineConfig::load(&config)?;
    if let Ok(bus) = std::env::var("FHIR_UNIFY_EVENT_BUS") {
        use_event_bus(&mut config, &bus);
    }
    Ok((Arc::new(config), DataDir(data)))
}

/// Sends change events to the EventBridge bus `bus` (a name or ARN), whatever bus the pipeline
/// file names: on Lambda the stack's bus, set by `infra/template.yaml` as
/// `FHIR_UNIFY_EVENT_BUS` (a local bus under /tmp would vanish with the execution
/// environment). An empty value changes nothing.
pub fn use_event_bus(config: &mut PipelineConfig, bus: &str) {
    if !bus.trim().is_empty() {
        config.events = EventsConfig {
            local: None,
            eventbridge: Some(EventBridgeConfig {
                bus: bus.trim().to_owned(),
            }),
        };
    }
}

/// The environment of `transform`: the mappings (nothing else it uses needs building).
pub fn step_env() -> Result<Arc<Env>, EnvError> {
    let built = load_config().and_then(|(config, data)| Env::lazy(&config, &data, true));
    Ok(Arc::new(reported(built)?))
}

/// The environment of `validate`: the FHIR validator, loaded now rather than on the first
/// invocation (every invocation needs it, and Lambda runs the init phase at full CPU); no
/// mappings, no store.
pub fn validate_env() -> Result<Arc<Env>, EnvError> {
    let built = load_config()
        .and_then(|(config, data)| Env::lazy(&config, &data, false))
        .and_then(|mut env| {
            let validator = crate::validation::Validator::pipeline()
                .map_err(|e| EnvError::Validator(e.to_string()))?;
            env.validator = LazyValidator::ready(Arc::new(validator));
            Ok(env)
        });
    Ok(Arc::new(reported(built)?))
}

/// The environment of `publish`: [`step_env`], with the DynamoDB store when
/// `FHIR_UNIFY_STORE_TABLE` or the pipeline file's `store.dynamodb` names a table. The SDK
/// configuration (region, role credentials) comes from the Lambda environment.
pub async fn publish_env() -> Result<Arc<Env>, EnvError> {
    let built = match load_config().and_then(|(config, data)| {
        let table = store_table(std::env::var("FHIR_UNIFY_STORE_TABLE").ok(), &config)?;
        let rest = rest_store_config(std::env::var("FHIR_UNIFY_FHIR_ENDPOINT").ok(), &config)?;
        one_store(table.as_deref(), rest.as_ref())?;
        Ok((Env::lazy(&config, &data, false)?, table, rest, data))
    }) {
        Ok((mut env, Some(table), _, _)) => {
            tracing::info!(table = %table, "publish writes to the DynamoDB store");
            env.store = Arc::new(DynamoStore::from_environment(table).await);
            Ok(env)
        }
        Ok((env, None, Some(rest), data)) => {
            match crate::store::rest::RestStore::from_config(&rest, None).await {
                Ok(store) => {
                    tracing::info!(base = %store.base(), "publish writes to the FHIR server");
                    match rest_ledger(std::env::var("FHIR_UNIFY_LEDGER_TABLE").ok(), &data).await {
                        Ok(ledger) => Ok(env.with_rest_store(store, ledger)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(EnvError::Store(e)),
            }
        }
        Ok((env, None, None, _)) => Ok(env),
        Err(e) => Err(e),
    };
    Ok(Arc::new(reported(built)?))
}

// ---- bulk-load functions (issue 7) -------------------------------------------------------

/// The environment of the bulk-load functions (`bulk-begin`, `bulk-load-chunk`,
/// `bulk-finalize`, `bulk-fail`; [`crate::bulk`]). Dataset versions live in DynamoDB and the
/// pointer in SSM ([`crate::store::dynamodb::dataset::DynamoDatasets`]) when
/// `FHIR_UNIFY_VERSIONS_TABLE` names the versions table, which then needs the store table too
/// (`FHIR_UNIFY_STORE_TABLE` or the pipeline file's `store.dynamodb`): the pointer moves
/// publish into it. Without it, the embedded SQLite store under the data folder (a local
/// trial only: /tmp does not outlive the execution environment). Chunk files are read from
/// the DMS sources' locations (S3 for `s3://`); rejected records go to the SQS queue
/// `FHIR_UNIFY_QUARANTINE_QUEUE_URL` when set, else to the local queue.
///
/// Only `bulk-load-chunk` maps (`mappings`); the local queue is opened on the first rejection.
pub async fn bulk_env(mappings: bool) -> Result<Arc<crate::bulk::BulkEnv>, EnvError> {
    let built = build_bulk_env(
        mappings,
        std::env::var("FHIR_UNIFY_VERSIONS_TABLE").ok(),
        std::env::var("FHIR_UNIFY_STORE_TABLE").ok(),
        std::env::var("FHIR_UNIFY_QUARANTINE_QUEUE_URL").ok(),
    )
    .await;
    Ok(Arc::new(reported(built)?))
}

async fn build_bulk_env(
    mappings: bool,
    versions: Option<String>,
    store: Option<String>,
    quarantine_url: Option<String>,
) -> Result<crate::bulk::BulkEnv, EnvError> {
    use crate::queue::Quarantine;
    use crate::store::dataset::DatasetStore;
    let setting = |name: &str, reason: String| {
        EnvError::Store(crate::store::StoreError::Invalid {
            target: name.into(),
            reason,
        })
    };
    let (config, data) = load_config()?;
    let env = Env::lazy(&config, &data, mappings)?;
    let datasets: Arc<dyn DatasetStore> = match versions.filter(|v| !v.is_empty()) {
        Some(table) => {
            if !crate::config::is_table_name(&table) {
                return Err(setting(
                    "FHIR_UNIFY_VERSIONS_TABLE",
                    format!("{table:?} is not a DynamoDB table name"),
                ));
            }
            let store = store_table(store, &config)?.ok_or_else(|| {
                setting(
                    "FHIR_UNIFY_STORE_TABLE",
                    "the versions table needs the DynamoDB store table the pointer moves publish into".into(),
                )
            })?;
            tracing::info!(versions = %table, store = %store, "dataset versions in DynamoDB, pointers in SSM");
            Arc::new(
                crate::store::dynamodb::dataset::DynamoDatasets::from_environment(table, store)
                    .await,
            )
        }
        None => Arc::new(crate::store::sqlite::SqliteStore::open(
            &data.join(config.store.sqlite_path()),
        )?),
    };
    let objects = crate::objects::s3::source_objects(&config, crate::objects::s3::from_env_shared)
        .map_err(|reason| setting("the pipeline file's DMS and Transfer sources", reason))?;
    let quarantine: Arc<dyn Quarantine> = match sqs_quarantine(quarantine_url).await {
        Some(sqs) => sqs,
        None => Arc::new(LazyLocalQuarantine::new(&config, &data)),
    };
    Ok(crate::bulk::BulkEnv {
        env: Arc::new(env),
        config: config.clone(),
        datasets,
        objects,
        quarantine,
        owner: std::env::var("AWS_LAMBDA_LOG_STREAM_NAME")
            .unwrap_or_else(|_| format!("pid {}", std::process::id())),
        lease: crate::bulk::DEFAULT_LEASE,
        records_read: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        timings: Arc::default(),
    })
}

/// The partner API of the `gateway` function: over the DynamoDB store when
/// `FHIR_UNIFY_STORE_TABLE` (set by the stack, with read-only access to the table) or the
/// pipeline file's `store.dynamodb` names a table — reads, history and search then go to that
/// table, shared by every instance, and with `FHIR_UNIFY_VERSIONS_TABLE` (the stack sets it)
/// reads by id follow the dataset pointers while a move is in flight
/// ([`crate::store::dynamodb::resolved::ResolvedStore`]); otherwise over the embedded SQLite store under
/// `FHIR_UNIFY_DATA_DIR` (one per execution environment: local runs only).
pub async fn gateway_env() -> Result<Gateway, EnvError> {
    let built = match load_config().and_then(|(config, data)| {
        let table = store_table(std::env::var("FHIR_UNIFY_STORE_TABLE").ok(), &config)?;
        let rest = rest_store_config(std::env::var("FHIR_UNIFY_FHIR_ENDPOINT").ok(), &config)?;
        one_store(table.as_deref(), rest.as_ref())?;
        Ok((config, data, table, rest))
    }) {
        Ok((_, _, Some(table), _)) => {
            match std::env::var("FHIR_UNIFY_VERSIONS_TABLE")
                .ok()
                .filter(|v| !v.is_empty())
            {
                Some(versions) if !crate::config::is_table_name(&versions) => {
                    Err(EnvError::Store(crate::store::StoreError::Invalid {
                        target: "FHIR_UNIFY_VERSIONS_TABLE".into(),
                        reason: format!("{versions:?} is not a DynamoDB table name"),
                    }))
                }
                Some(versions) => {
                    tracing::info!(table = %table, versions = %versions, "gateway reads the DynamoDB store through the dataset pointers");
                    let datasets =
                        crate::store::dynamodb::dataset::DynamoDatasets::from_environment(
                            versions, table,
                        )
                        .await;
                    let store = Arc::new(datasets.store().clone());
                    let resolved = crate::store::dynamodb::resolved::ResolvedStore::new(datasets);
                    Ok(Gateway::new(Arc::new(resolved), store))
                }
                None => {
                    tracing::info!(table = %table, "gateway reads the DynamoDB store");
                    let store = Arc::new(DynamoStore::from_environment(table).await);
                    Ok(Gateway::new(store.clone(), store))
                }
            }
        }
        Ok((_, _, None, Some(rest))) => {
            match crate::store::rest::RestStore::from_config(&rest, None).await {
                Ok(store) => {
                    tracing::info!(base = %store.base(), "gateway reads the FHIR server");
                    Ok(Gateway::rest(Arc::new(store)))
                }
                Err(e) => Err(EnvError::Store(e)),
            }
        }
        Ok((config, data, None, None)) => {
            Gateway::from_config(&config, &data).map_err(|e| match e {
                GatewayError::Store(e) => EnvError::Store(e),
            })
        }
        Err(e) => Err(e),
    };
    reported(built)
}

/// Refuses a DynamoDB table and a FHIR server named together: a function has one store.
fn one_store(
    table: Option<&str>,
    rest: Option<&crate::config::RestStoreConfig>,
) -> Result<(), EnvError> {
    match (table, rest) {
        (Some(table), Some(rest)) => Err(EnvError::Store(crate::store::StoreError::Invalid {
            target: "store".into(),
            reason: format!(
                "both a DynamoDB table ({table}) and a FHIR server ({}) are named: one store",
                rest.base
            ),
        })),
        _ => Ok(()),
    }
}

/// The environment of `emit`: [`step_env`], and whether the store is DynamoDB
/// (`FHIR_UNIFY_STORE_TABLE` or the pipeline file's `store.dynamodb`). Then the table's stream
/// publishes the change events and the state machine's `Emit` step relays nothing
/// ([`crate::handlers::emit_stream`]).
pub fn emit_env() -> Result<(Arc<Env>, bool), EnvError> {
    let built = load_config().and_then(|(config, data)| {
        let table = store_table(std::env::var("FHIR_UNIFY_STORE_TABLE").ok(), &config)?;
        Ok((Arc::new(Env::lazy(&config, &data, false)?), table.is_some()))
    });
    reported(built)
}

/// The environment of `authorizer`: the partners and their keys from the pipeline file. A bad
/// file or key is an init error reported to the Runtime API, as for the other functions.
pub fn authorizer_env() -> Result<crate::gateway::auth::Authorizer, String> {
    let built = load_config()
        .map_err(|e| e.to_string())
        .and_then(|(config, _)| {
            crate::gateway::auth::Authorizer::from_config(&config).map_err(|e| e.to_string())
        });
    reported(built)
}

/// The DynamoDB table of the store: the variable (set by the stack) first, then the pipeline
/// file; `None` for the embedded store.
fn store_table(
    variable: Option<String>,
    config: &PipelineConfig,
) -> Result<Option<String>, EnvError> {
    match variable.filter(|v| !v.is_empty()) {
        Some(table) if crate::config::is_table_name(&table) => Ok(Some(table)),
        Some(table) => Err(EnvError::Store(crate::store::StoreError::Invalid {
            target: "FHIR_UNIFY_STORE_TABLE".into(),
            reason: format!("{table:?} is not a DynamoDB table name"),
        })),
        None => Ok(config.store.dynamodb_table().map(str::to_owned)),
    }
}

/// The change-event ledger of the `rest` store: the DynamoDB table `FHIR_UNIFY_LEDGER_TABLE`
/// names (set by the stack with HealthLake; its stream drives `emit`). Without it, a SQLite
/// ledger under the data folder, which a local trial relays; on Lambda /tmp does not outlive
/// the execution environment, so it is warned about.
async fn rest_ledger(
    variable: Option<String>,
    data: &DataDir,
) -> Result<Arc<dyn crate::store::ledger::Ledger>, EnvError> {
    match variable
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
    {
        Some(table) if crate::config::is_table_name(&table) => {
            tracing::info!(table = %table, "change events of the FHIR server go through the ledger table");
            Ok(Arc::new(
                crate::store::ledger::dynamodb::DynamoLedger::from_environment(table).await,
            ))
        }
        Some(table) => Err(EnvError::Store(crate::store::StoreError::Invalid {
            target: "FHIR_UNIFY_LEDGER_TABLE".into(),
            reason: format!("{table:?} is not a DynamoDB table name"),
        })),
        None => {
            let path = data.join(std::path::Path::new(crate::env::LEDGER_FILE));
            tracing::warn!(
                "no FHIR_UNIFY_LEDGER_TABLE: the FHIR server's change events go to a local ledger"
            );
            Ok(Arc::new(crate::store::ledger::SqliteLedger::open(&path)?))
        }
    }
}

/// The FHIR server of the store: `FHIR_UNIFY_FHIR_ENDPOINT` (set by the stack) overrides the
/// pipeline file's `store.rest.base` and keeps its other settings; without a `store.rest` it
/// signs with SigV4 (service `healthlake`) for an `*.amazonaws.com` host and sends no
/// credentials otherwise. `None`: the store is not a FHIR server.
pub fn rest_store_config(
    variable: Option<String>,
    config: &PipelineConfig,
) -> Result<Option<crate::config::RestStoreConfig>, EnvError> {
    use crate::config::{RestAuthKind, RestStoreConfig};
    let Some(base) = variable
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
    else {
        return Ok(config.store.rest.clone());
    };
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return Err(EnvError::Store(crate::store::StoreError::Invalid {
            target: "FHIR_UNIFY_FHIR_ENDPOINT".into(),
            reason: format!("{base:?} is not an http:// or https:// URL"),
        }));
    }
    Ok(Some(match &config.store.rest {
        Some(rest) => RestStoreConfig {
            base,
            ..rest.clone()
        },
        None => {
            let host = base
                .split("://")
                .nth(1)
                .and_then(|rest| rest.split(['/', ':']).next())
                .unwrap_or("");
            RestStoreConfig {
                auth: if host.ends_with(".amazonaws.com") {
                    RestAuthKind::Sigv4
                } else {
                    RestAuthKind::None
                },
                base,
                region: None,
                service: None,
                token_env: None,
                max_entries: None,
                max_attempts: None,
                timeout_seconds: None,
            }
        }
    }))
}

/// The environment of an ingress function. When the stack names the Express `unify` machine
/// (`FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN`), each batch is a `StartSyncExecution` of it
/// ([`StepFunctionsWorkflow`]) and nothing local is built; without it, `unify` runs in-process
/// on the project's ASL engine with the same step handlers (the embedded runtime, with its
/// data under `FHIR_UNIFY_DATA_DIR`). Call it inside the Tokio runtime.
pub async fn ingest_env() -> Result<IngestEnv, LocalError> {
    let built = match load_config().map_err(LocalError::from) {
        Ok((config, data)) => ingress(config, data, unify_state_machine()).await,
        Err(e) => Err(e),
    };
    Ok(reported(built)?.ingest)
}

/// The state machine ARN the stack set, if any (an empty value is none).
fn unify_state_machine() -> Option<String> {
    std::env::var("FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// What an ingress function hands its batches to.
#[derive(Debug)]
pub struct Ingress {
    pub ingest: IngestEnv,
    /// The embedded runtime when `unify` runs in-process; `None` on Step Functions.
    pub local: Option<Arc<LocalRuntime>>,
}

/// The ingress of a function: on Step Functions when the stack named the `unify` machine (no
/// store, queue or engine is opened then), else the embedded runtime.
async fn ingress(
    config: Arc<PipelineConfig>,
    data: DataDir,
    state_machine: Option<String>,
) -> Result<Ingress, LocalError> {
    match state_machine {
        Some(arn) => {
            let mut workflow =
                StepFunctionsWorkflow::from_env(&arn)
                    .await
                    .map_err(|e| LocalError::Input {
                        file: "FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN".into(),
                        message: e.to_string(),
                    })?;
            tracing::info!(state_machine = %arn, "unify runs on Step Functions");
            // ingest-transfer starts `bulk-load` for full-refresh uploads.
            if let Some(bulk) = std::env::var("FHIR_UNIFY_BULK_LOAD_STATE_MACHINE_ARN")
                .ok()
                .filter(|v| !v.trim().is_empty())
            {
                workflow = workflow
                    .with_bulk_load(&bulk)
                    .map_err(|e| LocalError::Input {
                        file: "FHIR_UNIFY_BULK_LOAD_STATE_MACHINE_ARN".into(),
                        message: e.to_string(),
                    })?;
                tracing::info!(state_machine = %bulk, "full-refresh uploads start bulk-load");
            }
            let workflow: Arc<dyn Workflow> = Arc::new(workflow);
            Ok(Ingress {
                ingest: IngestEnv { config, workflow },
                local: None,
            })
        }
        None => {
            let runtime = LocalRuntime::open(config.as_ref().clone(), data)?;
            Ok(Ingress {
                ingest: runtime.ingest.clone(),
                local: Some(Arc::new(runtime)),
            })
        }
    }
}

/// The environment of `ingest-api`: the ingress environment (Step Functions when the stack
/// names the `unify` machine, as [`ingest_env`]), mappings, validator (loaded on first use)
/// and store (a transaction is checked whole before `unify` runs it; the store is the DynamoDB
/// table when `FHIR_UNIFY_STORE_TABLE` names one, as for `publish`). Call it inside the Tokio
/// runtime.
pub async fn api_env() -> Result<crate::handlers::ingest_api::ApiEnv, LocalError> {
    let built = match load_config()
        .map_err(LocalError::from)
        .and_then(|(config, data)| {
            let table = store_table(std::env::var("FHIR_UNIFY_STORE_TABLE").ok(), &config)?;
            let mappings = Arc::new(config.load_mappings().map_err(EnvError::from)?);
            Ok((config, data, table, mappings))
        }) {
        Ok((config, data, table, mappings)) => {
            let sqlite = data.join(config.store.sqlite_path());
            ingress(config, data, unify_state_machine())
                .await
                .map(|ingress| (ingress, table, mappings, sqlite))
        }
        Err(e) => Err(e),
    };
    let (ingress, table, mappings, sqlite) = reported(built)?;
    let (validator, store): (LazyValidator, Arc<dyn crate::store::FhirStore>) = match &ingress.local
    {
        Some(runtime) => (runtime.env.validator.clone(), runtime.env.store.clone()),
        None => (
            LazyValidator::default(),
            Arc::new(LazySqliteStore::new(sqlite)),
        ),
    };
    let mut env = crate::handlers::ingest_api::ApiEnv {
        ingest: ingress.ingest,
        mappings,
        validator,
        store,
    };
    if let Some(table) = table {
        // The answer to a write is the resource as publish stored it: read it from there.
        env.store = Arc::new(DynamoStore::from_environment(table).await);
    }
    Ok(env)
}

/// What `ingest-dms` and `ingest-transfer` run on: the ingress, the object store their sources
/// name, and where the rows and files they refuse themselves go.
#[derive(Debug)]
pub struct FileIngress {
    pub ingress: Ingress,
    pub objects: Arc<dyn ObjectStore>,
    pub rejections: Arc<dyn crate::queue::Quarantine>,
}

impl FileIngress {
    /// Reads the DMS files an S3 event announces, hands their changes to `unify`, and
    /// quarantines what it refused.
    pub async fn deliver_dms(
        &self,
        event: serde_json::Value,
    ) -> Result<crate::handlers::ingest_dms::DmsIngestOutcome, LocalError> {
        let outcome =
            crate::handlers::ingest_dms::handle(event, &self.ingress.ingest, self.objects.clone())
                .await?;
        self.quarantine(&outcome.rejected).await?;
        Ok(outcome)
    }

    /// Reads the Transfer files an event announces, as [`FileIngress::deliver_dms`].
    pub async fn deliver_transfer(
        &self,
        event: serde_json::Value,
    ) -> Result<crate::handlers::ingest_transfer::TransferIngestOutcome, LocalError> {
        let outcome = crate::handlers::ingest_transfer::handle(
            event,
            &self.ingress.ingest,
            self.objects.clone(),
        )
        .await?;
        self.quarantine(&outcome.rejected).await?;
        Ok(outcome)
    }

    async fn quarantine(&self, rejected: &[crate::model::Rejection]) -> Result<(), LocalError> {
        for r in rejected {
            let failed = |message: String| LocalError::Input {
                file: "quarantine".into(),
                message,
            };
            let body = serde_json::to_string(r).map_err(|e| failed(e.to_string()))?;
            self.rejections
                .send(&body)
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        Ok(())
    }
}

/// The environment of `ingest-dms`: the ingress and the object store its DMS sources name (S3
/// for `s3://` locations, through the SDK configured from the environment; local folders as
/// buckets named after their source). Rows and files it refuses go to the SQS queue
/// `FHIR_UNIFY_QUARANTINE_QUEUE_URL` when set (the stack sets it), else to the local queue.
/// Call it inside the Tokio runtime.
pub async fn dms_env() -> Result<FileIngress, LocalError> {
    file_source_env(|config| {
        crate::objects::s3::dms_objects(config, crate::objects::s3::from_env_shared)
    })
    .await
}

/// The environment of `ingest-transfer`: the ingress and the object store its Transfer
/// sources name, routed as [`dms_env`] routes DMS sources (S3 for `s3://` locations, local
/// folders as buckets named after their source), with rejections sent as [`dms_env`] sends
/// them. Call it inside the Tokio runtime.
pub async fn transfer_env() -> Result<FileIngress, LocalError> {
    file_source_env(|config| {
        crate::objects::s3::transfer_objects(config, crate::objects::s3::from_env_shared)
    })
    .await
}

/// The ingress (on Step Functions when the stack names the `unify` machine) and the object
/// store `objects` builds for the pipeline file.
async fn file_source_env(
    objects: impl FnOnce(&PipelineConfig) -> Result<Arc<dyn ObjectStore>, String>,
) -> Result<FileIngress, LocalError> {
    let opened = load_config()
        .map_err(LocalError::from)
        .and_then(|(config, data)| {
            let objects = objects(&config).map_err(|message| LocalError::Input {
                file: config.file.display().to_string(),
                message,
            })?;
            Ok((config, data, objects))
        });
    let built = match opened {
        Ok((config, data, objects)) => {
            let sqs = sqs_quarantine(std::env::var("FHIR_UNIFY_QUARANTINE_QUEUE_URL").ok()).await;
            let lazy_local = LazyLocalQuarantine::new(&config, &data);
            ingress(config, data, unify_state_machine())
                .await
                .map(|ingress| {
                    // Rows and files the function refuses itself go to the stack's quarantine
                    // queue; else to the embedded runtime's queue (opened when first needed
                    // if `unify` itself runs on Step Functions).
                    let rejections = match (sqs, &ingress.local) {
                        (Some(sqs), _) => sqs,
                        (None, Some(runtime)) => runtime.rejections.clone(),
                        (None, None) => Arc::new(lazy_local),
                    };
                    FileIngress {
                        ingress,
                        objects,
                        rejections,
                    }
                })
        }
        Err(e) => Err(e),
    };
    reported(built)
}

/// The local quarantine queue (`queue.db` under the data folder), opened on the first message:
/// a function whose rejections go to SQS, or that rejects nothing, never creates it.
#[derive(Debug)]
pub struct LazyLocalQuarantine {
    path: PathBuf,
    name: String,
    queue: std::sync::OnceLock<Result<crate::queue::LocalQuarantine, String>>,
}

impl LazyLocalQuarantine {
    pub fn new(config: &PipelineConfig, data: &DataDir) -> Self {
        LazyLocalQuarantine {
            path: data.join("queue.db".as_ref()),
            name: config.quarantine.queue.clone(),
            queue: std::sync::OnceLock::new(),
        }
    }
}

#[async_trait::async_trait]
impl crate::queue::Quarantine for LazyLocalQuarantine {
    async fn send(&self, body: &str) -> Result<String, crate::queue::QuarantineError> {
        let queue = self.queue.get_or_init(|| {
            crate::local::queue::LocalQueue::open(&self.path)
                .map(|queue| crate::queue::LocalQuarantine {
                    queue: Arc::new(queue),
                    name: self.name.clone(),
                })
                .map_err(|e| format!("{}: {e}", self.path.display()))
        });
        match queue {
            Ok(queue) => queue.send(body).await,
            Err(message) => Err(crate::queue::QuarantineError::Send {
                queue: self.name.clone(),
                message: message.clone(),
                retryable: true,
            }),
        }
    }
}

/// The stack's SQS quarantine queue (`FHIR_UNIFY_QUARANTINE_QUEUE_URL`; empty is none), through
/// the SDK configured from the Lambda environment.
async fn sqs_quarantine(url: Option<String>) -> Option<Arc<dyn crate::queue::Quarantine>> {
    let url = url.filter(|u| !u.trim().is_empty())?;
    let sdk = crate::aws::sdk_config().await;
    Some(Arc::new(crate::queue::sqs::SqsQuarantine::new(
        aws_sdk_sqs::Client::new(&sdk),
        url,
    )))
}

/// `result`, with its error reported to the Runtime API first when running under Lambda.
fn reported<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T, E> {
    if let Err(e) = &result {
        tracing::error!(error_type = INIT_FAILED, "cold start failed: {e}");
        if let Some(api) = std::env::var_os("AWS_LAMBDA_RUNTIME_API") {
            let api = api.to_string_lossy();
            if let Err(io) = post_init_error(&api, &e.to_string()) {
                tracing::error!("could not report the init error to the Runtime API: {io}");
            }
        }
    }
    result
}

/// `POST /2018-06-01/runtime/init/error` on the Runtime API (`host:port`, plain HTTP/1.1).
/// lambda_runtime reports init errors only from inside its own loop, which a failed cold
/// start never reaches.
fn post_init_error(api: &str, message: &str) -> std::io::Result<()> {
    let body = serde_json::json!({ "errorType": INIT_FAILED, "errorMessage": message }).to_string();
    let mut stream = std::net::TcpStream::connect(api)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: {api}\r\n\
         Lambda-Runtime-Function-Error-Type: {INIT_FAILED}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    // The status line says whether the API took it; the rest of the answer does not matter.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    if head.starts_with(b"HTTP/1.1 2") || head.starts_with(b"HTTP/1.0 2") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "the Runtime API answered {}",
            String::from_utf8_lossy(&head)
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[tokio::test]
    async fn the_stacks_bus_replaces_the_files_bus_and_the_step_env_puts_events_there() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.yaml"),
            "source: app\nentity: patients\nresources:\n  - resourceType: Patient\n    template: { gender: \"{{ record.sex }}\" }\n",
        )
        .unwrap();
        let yaml = "sources:\n  - name: app\n    dynamodb: { table: Patients }\n    entities:\n      patients: { key: [pk], mapping: m.yaml }\n";
        let mut config = PipelineConfig::from_yaml(yaml, Path::new("p.yaml")).unwrap();
        config.base_dir = dir.path().to_path_buf();
        assert!(config.events.local.is_some());

        use_event_bus(&mut config, "  ");
        assert!(
            config.events.local.is_some(),
            "an empty value changes nothing"
        );

        use_event_bus(&mut config, "stack-changes");
        assert!(config.events.local.is_none());
        assert_eq!(
            config.events.eventbridge.as_ref().unwrap().bus,
            "stack-changes"
        );
        let env = Env::from_config(&config, &DataDir(dir.path().join("data"))).unwrap();
        assert!(
            env.bus.as_local().is_none(),
            "events go to EventBridge, not a local bus"
        );
        assert!(!dir.path().join("data/events.db").exists());
    }

    #[tokio::test]
    async fn the_stacks_state_machine_replaces_the_in_process_engine_and_a_bad_arn_fails() {
        let dir = tempfile::tempdir().unwrap();
        let config = {
            let mut c = config("");
            c.base_dir = dir.path().to_path_buf();
            std::fs::write(
                dir.path().join("m.yaml"),
                "source: app\nentity: p\nresources:\n  - resourceType: Patient\n    template: { gender: \"{{ record.sex }}\" }\n",
            )
            .unwrap();
            Arc::new(c)
        };
        // On Step Functions nothing local is opened: no store, queue or engine under /tmp.
        let cloud = DataDir(dir.path().join("cloud"));
        let arn = "arn:aws:states:us-east-1:123456789012:stateMachine:stack-unify";
        let aws = ingress(config.clone(), cloud.clone(), Some(arn.into()))
            .await
            .unwrap();
        let described = format!("{:?}", aws.ingest.workflow);
        assert!(
            described.starts_with("StepFunctionsWorkflow"),
            "{described}"
        );
        assert!(described.contains(arn));
        assert!(aws.local.is_none());
        assert!(!cloud.0.exists(), "the data folder stays untouched");

        let local = ingress(config.clone(), DataDir(dir.path().join("data")), None)
            .await
            .unwrap();
        assert!(format!("{:?}", local.ingest.workflow).starts_with("LocalWorkflow"));
        assert!(local.local.is_some());
        assert!(dir.path().join("data/queue.db").exists());

        let err = ingress(config, cloud.clone(), Some("unify".into()))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_lazy_sqlite_store_and_queue_are_created_by_their_first_use_only() {
        use crate::queue::Quarantine;
        use crate::store::{FhirStore, Outbox};
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("");
        c.base_dir = dir.path().to_path_buf();
        // As on the stack (a local bus would open its own file).
        use_event_bus(&mut c, "stack-bus");
        let data = DataDir(dir.path().join("data"));
        let env = Env::lazy(&c, &data, false).unwrap();
        let quarantine = LazyLocalQuarantine::new(&c, &data);
        assert!(
            env.mappings.get("app", "p").is_none(),
            "no mappings asked for"
        );
        assert!(!data.0.exists(), "nothing is created at start");

        assert!(env.outbox.pending(10).await.unwrap().is_empty());
        let target = crate::model::ResourceRef {
            resource_type: "Patient".into(),
            id: "p1".into(),
        };
        assert!(env.store.read(&target).await.unwrap().is_none());
        assert!(data.join(c.store.sqlite_path()).exists());
        assert!(!data.join("queue.db".as_ref()).exists());
        quarantine.send("{\"reason\":\"test\"}").await.unwrap();
        assert!(data.join("queue.db".as_ref()).exists());

        // A store that cannot be opened fails each call with the open's error.
        std::fs::write(dir.path().join("file"), "not a folder").unwrap();
        let broken = LazySqliteStore::new(dir.path().join("file/store.db"));
        let first = broken.read(&target).await.unwrap_err().to_string();
        let second = broken.pending(1).await.unwrap_err().to_string();
        assert_eq!(first, second);
        assert!(first.contains("file"), "names the place: {first}");
        assert!(!broken.is_open());
        let broken_queue = LazyLocalQuarantine::new(&c, &DataDir(dir.path().join("file")));
        let err = broken_queue.send("{}").await.unwrap_err().to_string();
        assert!(err.contains("queue.db"), "{err}");
    }

    const SOURCES: &str = "sources:\n  - name: app\n    dynamodb: { table: Patients }\n    entities: { p: { key: [pk], mapping: m.yaml } }\n";

    fn config(store: &str) -> PipelineConfig {
        PipelineConfig::from_yaml(&format!("{store}{SOURCES}"), Path::new("p.yaml")).unwrap()
    }

    #[test]
    fn the_fhir_endpoint_comes_from_the_stack_then_the_pipeline_file() {
        use crate::config::RestAuthKind;
        let sqlite = config("");
        assert!(rest_store_config(None, &sqlite).unwrap().is_none());
        assert!(
            rest_store_config(Some(" ".into()), &sqlite)
                .unwrap()
                .is_none()
        );
        let healthlake = "https://healthlake.us-east-1.amazonaws.com/datastore/abc/r4/";
        let r = rest_store_config(Some(healthlake.into()), &sqlite)
            .unwrap()
            .unwrap();
        assert_eq!((r.base.as_str(), r.auth), (healthlake, RestAuthKind::Sigv4));
        let r = rest_store_config(Some("http://hapi:8080/fhir".into()), &sqlite)
            .unwrap()
            .unwrap();
        assert_eq!(r.auth, RestAuthKind::None);
        let file = config(
            "store: { rest: { base: \"http://file/fhir\", auth: bearer, max_entries: 40 } }\n",
        );
        let r = rest_store_config(None, &file).unwrap().unwrap();
        assert_eq!(
            (r.base.as_str(), r.max_entries),
            ("http://file/fhir", Some(40))
        );
        let r = rest_store_config(Some("https://stack/fhir".into()), &file)
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.base.as_str(), r.auth, r.max_entries),
            ("https://stack/fhir", RestAuthKind::Bearer, Some(40))
        );
        let err = rest_store_config(Some("ftp://x".into()), &sqlite).unwrap_err();
        assert!(
            err.to_string().contains("FHIR_UNIFY_FHIR_ENDPOINT"),
            "{err}"
        );
    }

    #[test]
    fn the_store_table_comes_from_the_stack_then_the_pipeline_file() {
        let sqlite = config("");
        let dynamo = config("store: { dynamodb: { table: from-file } }\n");
        assert_eq!(store_table(None, &sqlite).unwrap(), None);
        assert_eq!(store_table(Some(String::new()), &sqlite).unwrap(), None);
        assert_eq!(
            store_table(None, &dynamo).unwrap().as_deref(),
            Some("from-file")
        );
        assert_eq!(
            store_table(Some("stack-FhirStore-1".into()), &dynamo)
                .unwrap()
                .as_deref(),
            Some("stack-FhirStore-1")
        );
        let err = store_table(Some("no way".into()), &sqlite).unwrap_err();
        assert!(err.to_string().contains("FHIR_UNIFY_STORE_TABLE"), "{err}");
    }

    #[tokio::test]
    async fn the_rest_ledger_is_the_named_table_or_a_local_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir(dir.path().to_path_buf());
        let err = rest_ledger(Some("bad table!".into()), &data)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("FHIR_UNIFY_LEDGER_TABLE"), "{err}");
        rest_ledger(Some(" ".into()), &data).await.ok().unwrap();
        assert!(dir.path().join("ledger.db").exists());
        rest_ledger(Some("stack-FhirLedgerTable-1".into()), &data)
            .await
            .ok()
            .unwrap();
    }
}
