//! `unify` on AWS Step Functions: the [`Workflow`] the ingest functions use on Lambda when the
//! stack names the Express `unify` machine (`FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN`, see
//! `lambda::ingest_env`). Each batch is one `StartSyncExecution`, which waits for the end of
//! the execution and answers with its status, output, error and cause, so an ingress handler
//! sees the same [`WorkflowRun`] as with the in-process engine.
//!
//! Throttling and server-side errors are retried here with exponential backoff and full
//! jitter (the SDK's own retries are turned off, so the attempts are counted in one place);
//! any other refusal is a typed [`SfnError`]. A call that timed out waiting for its answer is
//! not retried: the execution may be running, and the ingress is redelivered whole anyway.
//!
//! `StartSyncExecution` goes to the `sync-states` host (the SDK prefixes the endpoint's host
//! with `sync-`). An emulator named by an IP address or `localhost` in `AWS_ENDPOINT_URL` has
//! no such subdomain, so for those endpoints only the prefix is taken off again
//! ([`EmulatorHost`]); on AWS the configured endpoint is never one of them.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sfn::config::http::HttpResponse;
use aws_sdk_sfn::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_sfn::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sfn::operation::start_execution::StartExecutionError;
use aws_sdk_sfn::types::SyncExecutionStatus;
use serde_json::Value;

use crate::bulk::LoadRequest;
use crate::env::{BulkStart, Workflow, WorkflowError, WorkflowRun};
use crate::model::ChangeBatch;

/// The environment variable naming the `unify` state machine (set by `infra/template.yaml`
/// on every ingest function).
pub const UNIFY_STATE_MACHINE_ARN: &str = "FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN";

/// The environment variable naming the `bulk-load` state machine (set on `ingest-transfer`,
/// which starts it for full-refresh uploads).
pub const BULK_LOAD_STATE_MACHINE_ARN: &str = "FHIR_UNIFY_BULK_LOAD_STATE_MACHINE_ARN";

/// Error codes Step Functions answers when the caller should slow down or try again.
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalServerError",
    "KmsThrottlingException",
];

/// Why `unify` could not be run on Step Functions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfnError {
    #[error("{UNIFY_STATE_MACHINE_ARN}: {0:?} is not a Step Functions state machine ARN")]
    InvalidArn(String),
    #[error("{BULK_LOAD_STATE_MACHINE_ARN}: {0:?} is not a Step Functions state machine ARN")]
    InvalidBulkLoadArn(String),
    #[error(
        "execution {execution} for dataset {dataset}: no bulk-load state machine is configured ({BULK_LOAD_STATE_MACHINE_ARN})"
    )]
    NoBulkLoad { execution: String, dataset: String },
    /// `StartExecution` of `bulk-load` was refused (or kept being refused after every retry).
    #[error(
        "StartExecution of {state_machine} as {execution} failed after {attempts} attempt(s): \
         {code}: {message}"
    )]
    Start {
        state_machine: String,
        execution: String,
        attempts: u32,
        code: String,
        message: String,
        retryable: bool,
    },
    #[error("batch {batch}: the input cannot be written as JSON: {message}")]
    Input { batch: String, message: String },
    /// Step Functions refused the call (or kept refusing it after every retry).
    #[error(
        "StartSyncExecution of {state_machine} for batch {batch} failed after {attempts} \
         attempt(s): {code}: {message}"
    )]
    Call {
        state_machine: String,
        batch: String,
        attempts: u32,
        code: String,
        message: String,
        retryable: bool,
    },
    #[error("execution {execution} of batch {batch}: its output is not JSON: {message}")]
    Output {
        execution: String,
        batch: String,
        message: String,
    },
}

impl From<SfnError> for WorkflowError {
    fn from(e: SfnError) -> Self {
        WorkflowError {
            workflow: "unify".into(),
            message: e.to_string(),
        }
    }
}

/// How throttled or failed calls are retried: up to `max_attempts` calls in all, waiting a
/// random time up to `base × 2^(retry-1)` (at most `max_delay`) before each retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRetry {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl Default for CallRetry {
    fn default() -> Self {
        CallRetry {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl CallRetry {
    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }
}

/// The Express `unify` state machine, run synchronously through the SDK.
#[derive(Debug, Clone)]
pub struct StepFunctionsWorkflow {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
    /// The standard `bulk-load` machine, when this function starts bulk loads.
    bulk_load_arn: Option<String>,
    retry: CallRetry,
}

/// `arn:PARTITION:states:REGION:ACCOUNT:stateMachine:NAME` (a version or alias suffix allowed).
fn is_state_machine_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(7, ':').collect();
    parts.len() == 7
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "states"
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5] == "stateMachine"
        && !parts[6].is_empty()
        && !arn.chars().any(char::is_whitespace)
}

impl StepFunctionsWorkflow {
    /// A workflow on the machine `state_machine_arn`, with a client built from `conf` (its
    /// retries turned off: [`CallRetry`] does them).
    pub fn new(
        conf: aws_sdk_sfn::Config,
        state_machine_arn: &str,
    ) -> Result<StepFunctionsWorkflow, SfnError> {
        let arn = state_machine_arn.trim();
        if !is_state_machine_arn(arn) {
            return Err(SfnError::InvalidArn(state_machine_arn.to_owned()));
        }
        let conf = conf
            .to_builder()
            .retry_config(aws_sdk_sfn::config::retry::RetryConfig::disabled())
            .interceptor(EmulatorHost)
            .build();
        Ok(StepFunctionsWorkflow {
            client: aws_sdk_sfn::Client::from_conf(conf),
            state_machine_arn: arn.to_owned(),
            bulk_load_arn: None,
            retry: CallRetry::default(),
        })
    }

    /// A workflow with the SDK configured from the environment (the Lambda role, region).
    pub async fn from_env(state_machine_arn: &str) -> Result<StepFunctionsWorkflow, SfnError> {
        let config = crate::aws::sdk_config().await;
        Self::new(aws_sdk_sfn::Config::from(&config), state_machine_arn)
    }

    /// Full-refresh uploads start `bulk-load` at `arn` ([`Self::start_bulk`]).
    pub fn with_bulk_load(mut self, arn: &str) -> Result<Self, SfnError> {
        let arn = arn.trim();
        if !is_state_machine_arn(arn) {
            return Err(SfnError::InvalidBulkLoadArn(arn.to_owned()));
        }
        self.bulk_load_arn = Some(arn.to_owned());
        Ok(self)
    }

    /// Starts `bulk-load` for `req` as the execution `name` (a standard workflow: the call
    /// answers once it started). A redelivered upload starts nothing new: while its execution
    /// runs Step Functions answers with it, and once it ended refuses the name
    /// (`already_started`).
    pub async fn start_bulk(&self, req: &LoadRequest, name: &str) -> Result<BulkStart, SfnError> {
        let Some(arn) = &self.bulk_load_arn else {
            return Err(SfnError::NoBulkLoad {
                execution: name.to_owned(),
                dataset: req.dataset.clone(),
            });
        };
        let input = serde_json::to_string(req).map_err(|e| SfnError::Input {
            batch: name.to_owned(),
            message: e.to_string(),
        })?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .client
                .start_execution()
                .state_machine_arn(arn)
                .name(name)
                .input(&input)
                .send()
                .await;
            let e = match sent {
                Ok(_) => {
                    tracing::info!(execution = %name, dataset = %req.dataset, "bulk-load started");
                    return Ok(BulkStart {
                        execution: name.to_owned(),
                        already_started: false,
                        finished: None,
                    });
                }
                Err(e) => e,
            };
            if let SdkError::ServiceError(s) = &e
                && matches!(s.err(), StartExecutionError::ExecutionAlreadyExists(_))
            {
                // The name is the upload's: this delivery's execution ran already (a running
                // one with the same input is answered as started, StartExecution being
                // idempotent for standard workflows).
                tracing::info!(execution = %name, "bulk-load of this upload started before");
                return Ok(BulkStart {
                    execution: name.to_owned(),
                    already_started: true,
                    finished: None,
                });
            }
            let (code, message, retryable) = failure(&e);
            if !retryable || attempt >= self.retry.max_attempts.max(1) {
                return Err(SfnError::Start {
                    state_machine: arn.clone(),
                    execution: name.to_owned(),
                    attempts: attempt,
                    code,
                    message,
                    retryable,
                });
            }
            tracing::warn!(execution = %name, attempt, code = %code, "StartExecution refused; retrying");
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
    }

    pub fn with_retry(mut self, retry: CallRetry) -> Self {
        self.retry = retry;
        self
    }

    pub fn state_machine_arn(&self) -> &str {
        &self.state_machine_arn
    }

    /// Runs `unify` on `batch` and maps the execution's answer to a [`WorkflowRun`].
    pub async fn run(&self, batch: &ChangeBatch) -> Result<WorkflowRun, SfnError> {
        let input = serde_json::to_string(batch).map_err(|e| SfnError::Input {
            batch: batch.batch_id.clone(),
            message: e.to_string(),
        })?;
        let name = crate::local::execution_name(&batch.batch_id);
        let mut attempt = 0;
        let out = loop {
            attempt += 1;
            let mut request = self
                .client
                .start_sync_execution()
                .state_machine_arn(&self.state_machine_arn)
                .input(&input);
            if !name.is_empty() {
                request = request.name(&name);
            }
            match request.send().await {
                Ok(out) => break out,
                Err(e) => {
                    let (code, message, retryable) = failure(&e);
                    if !retryable || attempt >= self.retry.max_attempts.max(1) {
                        return Err(SfnError::Call {
                            state_machine: self.state_machine_arn.clone(),
                            batch: batch.batch_id.clone(),
                            attempts: attempt,
                            code,
                            message,
                            retryable,
                        });
                    }
                    tracing::warn!(
                        batch = %batch.batch_id,
                        attempt,
                        code = %code,
                        "StartSyncExecution refused; retrying"
                    );
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                }
            }
        };
        let execution = out.name().map_or_else(|| name.clone(), str::to_owned);
        let output = match out.output() {
            None => None,
            Some(text) => {
                Some(
                    serde_json::from_str::<Value>(text).map_err(|e| SfnError::Output {
                        execution: execution.clone(),
                        batch: batch.batch_id.clone(),
                        message: e.to_string(),
                    })?,
                )
            }
        };
        let status = out.status();
        let succeeded = *status == SyncExecutionStatus::Succeeded;
        let mut error = out.error().map(str::to_owned);
        if !succeeded && error.is_none() {
            // TIMED_OUT comes without an error name; say what happened in the engine's terms.
            error = Some(match status {
                SyncExecutionStatus::TimedOut => "States.Timeout".to_owned(),
                other => format!("States.{}", other.as_str()),
            });
        }
        let run = WorkflowRun {
            execution,
            succeeded,
            output,
            error,
            cause: out.cause().map(str::to_owned),
        };
        if !run.succeeded {
            tracing::error!(
                execution = %run.execution,
                status = status.as_str(),
                error = ?run.error,
                "unify execution failed"
            );
        }
        Ok(run)
    }
}

/// Whether `url`'s host is an IP address or `localhost` (an emulator on this machine or
/// network), where a `sync-` subdomain cannot resolve.
fn is_local_endpoint(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

/// Takes the `sync-` host prefix off a request to an emulator at an IP address or
/// `localhost`; leaves every other request (all of them on AWS) alone.
#[derive(Debug)]
struct EmulatorHost;

impl Intercept for EmulatorHost {
    fn name(&self) -> &'static str {
        "EmulatorHost"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_sfn::error::BoxError> {
        let request = context.request_mut();
        if let Some(uri) = without_sync_prefix(request.uri()) {
            request.set_uri(uri)?;
        }
        Ok(())
    }
}

/// `uri` without the `sync-` in front of its host, if it has one and the host behind it is an
/// IP address or `localhost`.
fn without_sync_prefix(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let rest = rest.strip_prefix("sync-")?;
    let unprefixed = format!("{scheme}://{rest}");
    is_local_endpoint(&unprefixed).then_some(unprefixed)
}

/// The error code, message and whether another attempt may pass.
fn failure<E>(e: &SdkError<E, HttpResponse>) -> (String, String, bool)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("Unknown").to_owned();
            let status = s.raw().status().as_u16();
            let retryable =
                RETRYABLE_CODES.contains(&code.as_str()) || status == 429 || status >= 500;
            (
                code,
                s.err().message().unwrap_or_default().to_owned(),
                retryable,
            )
        }
        SdkError::ConstructionFailure(_) => ("ConstructionFailure".into(), error_text(e), false),
        // The request never reached the service (connection refused, DNS): safe to retry.
        SdkError::DispatchFailure(d) if !d.is_timeout() => {
            ("RequestFailed".into(), error_text(e), true)
        }
        // Timed out or an unreadable answer: the execution may be running; not repeated here.
        _ => ("RequestFailed".into(), error_text(e), false),
    }
}

fn error_text<E: std::error::Error + 'static, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[async_trait]
impl Workflow for StepFunctionsWorkflow {
    async fn run_unify(&self, batch: &ChangeBatch) -> Result<WorkflowRun, WorkflowError> {
        Ok(self.run(batch).await?)
    }

    async fn start_bulk_load(
        &self,
        req: &LoadRequest,
        name: &str,
    ) -> Result<BulkStart, WorkflowError> {
        self.start_bulk(req, name).await.map_err(|e| WorkflowError {
            workflow: "bulk-load".into(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
