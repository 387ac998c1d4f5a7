//! The embedded runtime: everything on one machine, no AWS account.
//!
//! The project's ASL engine runs `statemachines/unify.asl.json` (embedded in the binary) with
//! the same handler functions registered under their function names; `sqs:sendMessage` tasks
//! go to the SQLite queue; a DynamoDB table's stream is a folder of stream events delivered the
//! way Lambda's event source mapping does it (partial-batch failures re-delivered, then sent
//! to the on-failure destination, here the quarantine queue). A DMS source's local folder is
//! delivered file by file as S3 events to `ingest-dms` ([`dms`]); a Transfer source's as
//! Transfer Family upload events to `ingest-transfer` ([`transfer`]).

pub mod dms;
pub mod queue;
pub mod stream;
pub mod transfer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::config::{DataDir, PipelineConfig};
use crate::env::{BulkStart, Env, EnvError, IngestEnv, Workflow, WorkflowError, WorkflowRun};
use crate::events::local::{LOCAL_ACCOUNT, LOCAL_REGION};
use crate::handlers::{self, HandlerError};
use crate::model::ChangeBatch;
use queue::LocalQueue;

pub use stream::{DeliveryReport, RunSummary};

/// The `unify` definition, with `${Placeholders}` for functions and queues.
pub const UNIFY_DEFINITION: &str = include_str!("../../statemachines/unify.asl.json");

/// The local ARN of a function.
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT}:function:{name}")
}

/// The local URL of a queue (SQS's URL shape; the queue name is its last segment).
pub fn queue_url(queue: &str) -> String {
    format!("https://sqs.{LOCAL_REGION}.amazonaws.com/{LOCAL_ACCOUNT}/{queue}")
}

/// The pipeline steps, with their function names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Transform,
    Validate,
    Publish,
    Emit,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::Transform, Step::Validate, Step::Publish, Step::Emit];

    /// The function's name (as deployed: `fhir-unify-<step>`).
    pub fn function_name(self) -> &'static str {
        match self {
            Step::Transform => "fhir-unify-transform",
            Step::Validate => "fhir-unify-validate",
            Step::Publish => "fhir-unify-publish",
            Step::Emit => "fhir-unify-emit",
        }
    }

    /// The `${Placeholder}` naming the function's ARN in state machine definitions.
    pub fn placeholder(self) -> &'static str {
        match self {
            Step::Transform => "TransformFunctionArn",
            Step::Validate => "ValidateFunctionArn",
            Step::Publish => "PublishFunctionArn",
            Step::Emit => "EmitFunctionArn",
        }
    }
}

/// The definition substitutions of a local run.
pub fn substitutions(config: &PipelineConfig) -> HashMap<String, String> {
    let mut s: HashMap<String, String> = Step::ALL
        .iter()
        .map(|step| {
            (
                step.placeholder().to_owned(),
                function_arn(step.function_name()),
            )
        })
        .collect();
    s.insert(
        "QuarantineQueueUrl".into(),
        queue_url(&config.quarantine.queue),
    );
    s
}

/// Errors of the local runtime.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("state machine unify: {0}")]
    Definition(String),
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error("{file}: {message}")]
    Input { file: String, message: String },
    #[error(transparent)]
    Handler(#[from] HandlerError),
}

/// A step handler seen by the ASL engine as a Lambda function.
#[derive(Debug)]
struct StepFunction {
    step: Step,
    env: Arc<Env>,
}

fn parse<T: serde::de::DeserializeOwned>(payload: Value) -> Result<T, HandlerError> {
    handlers::errors::parse_payload(payload)
}

fn to_json<T: serde::Serialize>(v: T) -> Result<Value, HandlerError> {
    serde_json::to_value(v).map_err(|e| HandlerError::InvalidInput(e.to_string()))
}

impl StepFunction {
    async fn call(&self, payload: Value) -> Result<Value, HandlerError> {
        let env = &self.env;
        match self.step {
            Step::Transform => to_json(handlers::transform::handle(parse(payload)?, env).await?),
            Step::Validate => to_json(handlers::validate::handle(parse(payload)?, env).await?),
            Step::Publish => to_json(handlers::publish::handle(parse(payload)?, env).await?),
            Step::Emit => to_json(handlers::emit::handle(payload, env).await?),
        }
    }
}

#[async_trait]
impl asl::LambdaFunction for StepFunction {
    async fn invoke(&self, payload: Value) -> Result<Value, asl::LambdaError> {
        self.call(payload)
            .await
            .map_err(|e| asl::LambdaError::new(e.error_type(), e.to_string()))
    }
}

/// `arn:aws:states:::sqs:sendMessage` on the local queue.
#[derive(Debug)]
struct SqsSendMessage {
    queue: Arc<LocalQueue>,
    /// Queue URLs this run knows, by URL.
    known: HashMap<String, String>,
}

#[async_trait]
impl asl::ServiceIntegration for SqsSendMessage {
    async fn call(&self, _resource: &str, parameters: Value) -> Result<Value, asl::TaskError> {
        let fail = |error: &str, cause: String| asl::TaskError {
            error: error.to_owned(),
            cause,
        };
        let url = parameters
            .get("QueueUrl")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                fail(
                    "SQS.MissingParameterException",
                    "The request must contain the parameter QueueUrl.".into(),
                )
            })?;
        let name = self.known.get(url).ok_or_else(|| {
            fail(
                "SQS.QueueDoesNotExistException",
                format!(
                    "The specified queue does not exist for this wsdl version. (QueueUrl {url})"
                ),
            )
        })?;
        let body = match parameters.get("MessageBody") {
            Some(Value::String(s)) => s.clone(),
            Some(v) if !v.is_null() => v.to_string(),
            _ => {
                return Err(fail(
                    "SQS.MissingParameterException",
                    "The request must contain the parameter MessageBody.".into(),
                ));
            }
        };
        let id = self
            .queue
            .send(name, &body)
            .map_err(|e| fail("States.TaskFailed", e.to_string()))?;
        Ok(json!({ "MessageId": id }))
    }
}

/// `arn:aws:states:::events:putEvents` on the pipeline's event bus. The bus carries FHIR
/// change events only, so an entry that is not one (DetailType `FhirResource…`, a Detail
/// that is a change event's detail) is a failed entry saying so, never dropped.
#[derive(Debug)]
struct BusSink {
    bus: Arc<dyn crate::events::EventBus>,
}

fn change_event(
    entry: &asl::services::events::EventEntry,
) -> Result<crate::model::ChangeEvent, String> {
    let kind: crate::model::ChangeKind =
        serde_json::from_value(json!(entry.detail_type)).map_err(|_| {
            format!(
                "DetailType '{}' is not a FHIR change kind",
                entry.detail_type
            )
        })?;
    let detail: crate::model::ChangeEventDetail = serde_json::from_str(&entry.detail)
        .map_err(|e| format!("Detail is not a change event detail: {e}"))?;
    let time = match &entry.time {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| format!("Time '{t}' is not an RFC 3339 time: {e}"))?
            .with_timezone(&chrono::Utc),
        None => detail.last_updated,
    };
    Ok(crate::model::ChangeEvent {
        source: entry.source.clone(),
        detail_type: kind,
        detail,
        time,
        resources: entry.resources.clone(),
    })
}

#[async_trait]
impl asl::services::events::EventSink for BusSink {
    async fn put_events(
        &self,
        entries: &[asl::services::events::EventEntry],
    ) -> Result<Vec<asl::services::events::EntryResult>, asl::TaskError> {
        use asl::services::events::EntryResult;
        let converted: Vec<Result<crate::model::ChangeEvent, String>> =
            entries.iter().map(change_event).collect();
        let events: Vec<crate::model::ChangeEvent> = converted
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut put = if events.is_empty() {
            Vec::new()
        } else {
            self.bus
                .put_events(&events)
                .await
                .map_err(|e| asl::TaskError {
                    error: "States.TaskFailed".into(),
                    cause: e.to_string(),
                })?
        }
        .into_iter();
        Ok(converted
            .into_iter()
            .map(|c| match c {
                Err(message) => EntryResult::Failed {
                    code: "InvalidArgument".into(),
                    message,
                },
                Ok(_) => match put.next() {
                    Some(crate::events::PutEntryResult::Accepted(id)) => EntryResult::Accepted(id),
                    Some(crate::events::PutEntryResult::Failed { code, message }) => {
                        EntryResult::Failed { code, message }
                    }
                    None => EntryResult::Failed {
                        code: "InternalFailure".into(),
                        message: "the event bus gave no result for this entry".into(),
                    },
                },
            })
            .collect())
    }
}

/// `unify` on the project's ASL engine, in-process.
#[derive(Debug)]
pub struct LocalWorkflow {
    engine: asl::Engine,
    machine: asl::StateMachine,
    /// Every run, for the summary of a local run.
    log: Mutex<Vec<WorkflowRun>>,
    /// What `bulk-load` needs, when the store is the embedded one.
    bulk: Option<BulkParts>,
}

/// The parts of a runtime a local `bulk-load` runs with.
#[derive(Debug)]
struct BulkParts {
    config: Arc<PipelineConfig>,
    env: Arc<Env>,
    data: DataDir,
    queue: Arc<LocalQueue>,
}

impl LocalWorkflow {
    /// Registers the step handlers and the local queue, and loads `unify`.
    pub fn new(
        env: Arc<Env>,
        config: &PipelineConfig,
        queue: Arc<LocalQueue>,
    ) -> Result<Self, LocalError> {
        Self::with_clock(env, config, queue, Arc::new(asl::SystemClock))
    }

    /// As [`Self::new`], with a clock of the caller's (tests use one that does not sleep).
    pub fn with_clock(
        env: Arc<Env>,
        config: &PipelineConfig,
        queue: Arc<LocalQueue>,
        clock: Arc<dyn asl::Clock>,
    ) -> Result<Self, LocalError> {
        let mut registry = asl::TaskRegistry::new();
        for step in Step::ALL {
            // The registry resolves a function by name, whatever ARN (region, account,
            // qualifier) a definition names it with.
            registry.register_lambda(
                step.function_name(),
                Arc::new(StepFunction {
                    step,
                    env: env.clone(),
                }),
            );
        }
        let url = queue_url(&config.quarantine.queue);
        registry.register_service(
            "arn:aws:states:::sqs:sendMessage",
            Arc::new(SqsSendMessage {
                queue,
                known: HashMap::from([(url, config.quarantine.queue.clone())]),
            }),
        );
        registry.set_event_sink(Arc::new(BusSink {
            bus: env.bus.clone(),
        }));
        let text = asl::substitute(UNIFY_DEFINITION, &substitutions(config))
            .map_err(|e| LocalError::Definition(e.to_string()))?;
        let machine = asl::StateMachine::parse(&text)
            .map_err(|e| LocalError::Definition(e.to_string()))?
            .with_name("unify")
            // Express, as the stack deploys it: the same five-minute limit (on the engine's
            // clock) and the same integrations refused.
            .with_type(asl::WorkflowType::Express)
            .map_err(|e| LocalError::Definition(e.to_string()))?;
        Ok(LocalWorkflow {
            engine: asl::Engine::with_config(
                registry,
                clock,
                asl::EngineConfig {
                    region: LOCAL_REGION.into(),
                    account_id: LOCAL_ACCOUNT.into(),
                    ..asl::EngineConfig::default()
                },
            ),
            machine,
            log: Mutex::new(Vec::new()),
            bulk: None,
        })
    }

    /// Full-refresh uploads run `bulk-load` over the embedded store under `data`, reading
    /// the files from the pipeline file's local folders.
    pub fn with_bulk_loads(
        mut self,
        config: Arc<PipelineConfig>,
        env: Arc<Env>,
        data: DataDir,
        queue: Arc<LocalQueue>,
    ) -> Self {
        self.bulk = Some(BulkParts {
            config,
            env,
            data,
            queue,
        });
        self
    }

    /// Takes the runs recorded since the last call.
    pub fn take_runs(&self) -> Vec<WorkflowRun> {
        self.log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

/// A Step Functions execution name: at most 80 characters of `[A-Za-z0-9-_]`.
pub(crate) fn execution_name(batch_id: &str) -> String {
    batch_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect()
}

#[async_trait]
impl Workflow for LocalWorkflow {
    async fn run_unify(&self, batch: &ChangeBatch) -> Result<WorkflowRun, WorkflowError> {
        let input = serde_json::to_value(batch).map_err(|e| WorkflowError {
            workflow: "unify".into(),
            message: e.to_string(),
        })?;
        let name = execution_name(&batch.batch_id);
        let result = self
            .engine
            .start_execution(&self.machine, Some(&name), input)
            .await;
        let run = WorkflowRun {
            execution: name,
            succeeded: result.status == asl::ExecutionStatus::Succeeded,
            output: result.output,
            error: result.error,
            cause: result.cause,
        };
        if !run.succeeded {
            tracing::error!(execution = %run.execution, error = ?run.error, "unify execution failed");
        }
        if let Ok(mut log) = self.log.lock() {
            log.push(run.clone());
        }
        Ok(run)
    }

    /// Runs `bulk-load` to its end on the project's engine. `name` is claimed in the store
    /// first, as Step Functions refuses an execution name used before: a redelivered upload
    /// starts nothing (and a failed load is retried by a new upload or `fhir-unify load`).
    async fn start_bulk_load(
        &self,
        req: &crate::bulk::LoadRequest,
        name: &str,
    ) -> Result<BulkStart, WorkflowError> {
        let failed = |message: String| WorkflowError {
            workflow: "bulk-load".into(),
            message: format!("{name}: {message}"),
        };
        let Some(parts) = &self.bulk else {
            return Err(failed(
                "bulk loads need the embedded store (the pipeline file names a FHIR server)".into(),
            ));
        };
        // The folders of the pipeline file; S3 for an `s3://` location (in-process on Lambda).
        let objects =
            crate::objects::s3::source_objects(&parts.config, crate::objects::s3::from_env_shared)
                .map_err(failed)?;
        let bulk = crate::bulk::local::LocalBulk::with_objects(
            parts.config.clone(),
            parts.env.clone(),
            &parts.data,
            parts.queue.clone(),
            objects,
            crate::bulk::DEFAULT_LEASE,
        )
        .map_err(|e| failed(e.to_string()))?;
        if !bulk
            .datasets
            .claim_execution(name)
            .map_err(|e| failed(e.to_string()))?
        {
            tracing::info!(execution = %name, "bulk-load of this upload started before");
            return Ok(BulkStart {
                execution: name.to_owned(),
                already_started: true,
                finished: None,
            });
        }
        let outcome = match bulk.load(req).await {
            Ok(outcome) => outcome,
            Err(e) => {
                if let Err(r) = bulk.datasets.release_execution(name) {
                    tracing::warn!(execution = %name, error = %r, "the execution name stays taken");
                }
                return Err(failed(e.to_string()));
            }
        };
        // The pointer move's counts, and the records the load read.
        let mut output = outcome.published;
        if let (Some(serde_json::Value::Object(o)), Some(v)) = (output.as_mut(), &outcome.version) {
            o.insert("recordsRead".into(), v.counts.records_read.into());
        }
        let run = WorkflowRun {
            execution: name.to_owned(),
            succeeded: outcome.succeeded,
            output,
            error: outcome.error,
            cause: outcome.cause,
        };
        if let Ok(mut log) = self.log.lock() {
            log.push(run.clone());
        }
        Ok(BulkStart {
            execution: name.to_owned(),
            already_started: false,
            finished: Some(run),
        })
    }
}

/// Everything a local run needs, built from a pipeline file and a data folder.
#[derive(Debug)]
pub struct LocalRuntime {
    pub config: Arc<PipelineConfig>,
    pub data: DataDir,
    pub env: Arc<Env>,
    pub queue: Arc<LocalQueue>,
    pub workflow: Arc<LocalWorkflow>,
    pub ingest: IngestEnv,
    /// Where records an ingress rejects itself go: the local queue, or on Lambda the stack's
    /// SQS quarantine (a queue under /tmp would vanish with the execution environment).
    pub rejections: Arc<dyn crate::queue::Quarantine>,
}

impl LocalRuntime {
    /// Opens the store, queue and bus under `data` and loads the mappings and `unify`. The
    /// store is the embedded one; [`LocalRuntime::connect`] also honours `store.rest`.
    pub fn open(config: PipelineConfig, data: DataDir) -> Result<LocalRuntime, LocalError> {
        let env = Env::from_config(&config, &data)?;
        LocalRuntime::with_env(config, data, env)
    }

    /// [`LocalRuntime::open`] over the store the pipeline file names for a local run
    /// ([`Env::local`]): the embedded SQLite store, or a FHIR server (`store.rest`).
    pub async fn connect(
        config: PipelineConfig,
        data: DataDir,
    ) -> Result<LocalRuntime, LocalError> {
        let env = Env::local(&config, &data).await?;
        LocalRuntime::with_env(config, data, env)
    }

    fn with_env(
        config: PipelineConfig,
        data: DataDir,
        env: Env,
    ) -> Result<LocalRuntime, LocalError> {
        let config = Arc::new(config);
        let env = Arc::new(env);
        let queue = Arc::new(LocalQueue::open(&data.join("queue.db".as_ref()))?);
        let mut workflow = LocalWorkflow::new(env.clone(), &config, queue.clone())?;
        if config.store.rest.is_none() {
            workflow =
                workflow.with_bulk_loads(config.clone(), env.clone(), data.clone(), queue.clone());
        }
        let workflow = Arc::new(workflow);
        let ingest = IngestEnv {
            config: config.clone(),
            workflow: workflow.clone(),
        };
        let rejections = Arc::new(crate::queue::LocalQuarantine {
            queue: queue.clone(),
            name: config.quarantine.queue.clone(),
        });
        Ok(LocalRuntime {
            config,
            data,
            env,
            queue,
            workflow,
            ingest,
            rejections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{BusError, EventBus, PutEntryResult};
    use crate::model::{ChangeEvent, ChangeEventDetail, ChangeKind, RecordKey, Sequence};
    use asl::services::events::{EntryResult, EventEntry, EventSink};

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<ChangeEvent>>);

    #[async_trait]
    impl EventBus for Recorder {
        async fn put_events(
            &self,
            events: &[ChangeEvent],
        ) -> Result<Vec<PutEntryResult>, BusError> {
            self.0.lock().unwrap().extend(events.iter().cloned());
            Ok(events
                .iter()
                .map(|e| PutEntryResult::Accepted(e.detail.event_id.clone()))
                .collect())
        }
    }

    fn entry(detail_type: &str, detail: String) -> EventEntry {
        EventEntry {
            source: "fhir-unify".into(),
            detail_type: detail_type.into(),
            detail,
            event_bus_name: None,
            resources: vec!["Patient/x".into()],
            time: None,
        }
    }

    #[tokio::test]
    async fn put_events_tasks_reach_the_event_bus() {
        let detail = ChangeEventDetail {
            event_id: ChangeEventDetail::stable_event_id("Patient", "x", "1"),
            resource_type: "Patient".into(),
            id: "x".into(),
            version_id: "1".into(),
            last_updated: "2024-01-02T03:04:05Z".parse().unwrap(),
            source: "app".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!("x"))]),
            sequence: Sequence::from(1),
        };
        let bus = Arc::new(Recorder::default());
        let sink = BusSink { bus: bus.clone() };
        let results = sink
            .put_events(&[
                entry(
                    "FhirResourceCreated",
                    serde_json::to_string(&detail).unwrap(),
                ),
                entry("Something", "{}".into()),
                entry("FhirResourceUpdated", "{\"id\": 1}".into()),
            ])
            .await
            .unwrap();
        assert_eq!(results[0], EntryResult::Accepted(detail.event_id.clone()));
        assert!(
            matches!(&results[1], EntryResult::Failed { code, message } if code == "InvalidArgument" && message.contains("'Something'"))
        );
        assert!(
            matches!(&results[2], EntryResult::Failed { message, .. } if message.starts_with("Detail is not a change event detail"))
        );
        let put = bus.0.lock().unwrap();
        assert_eq!(put.len(), 1);
        assert_eq!(put[0].detail_type, ChangeKind::Created);
        assert_eq!(put[0].time, detail.last_updated);
        assert_eq!(put[0].resources, vec!["Patient/x".to_string()]);
    }
}
