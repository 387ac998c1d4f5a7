//! What every `functions/<name>` binary shares: JSON logs as Lambda expects them, and the
//! environment built once per cold start from the pipeline file packaged with the function.
//!
//! `FHIR_UNIFY_CONFIG` names the pipeline file (default `fhir-unify.yaml` in the function's
//! folder, `LAMBDA_TASK_ROOT`); `FHIR_UNIFY_DATA_DIR` the folder for local data (default
//! `/tmp/fhir-unify`, the only writable place on Lambda).

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{DataDir, PipelineConfig};
use crate::env::{Env, EnvError, IngestEnv};
use crate::local::{LocalError, LocalRuntime};

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
    Ok((Arc::new(PipelineConfig::load(&config)?), DataDir(data)))
}

/// The environment of the pipeline-step functions (transform, validate, publish, emit).
pub fn step_env() -> Result<Arc<Env>, EnvError> {
    let (config, data) = load_config()?;
    Ok(Arc::new(Env::from_config(&config, &data)?))
}

/// The environment of an ingress function. Until the Step Functions adapter arrives with the
/// deploy work, the `unify` state machine runs in-process on the project's ASL engine, with
/// the same step handlers (the embedded runtime, with its data under `FHIR_UNIFY_DATA_DIR`).
pub fn ingest_env() -> Result<IngestEnv, LocalError> {
    let (config, data) = load_config()?;
    let runtime = LocalRuntime::open(config.as_ref().clone(), data)?;
    Ok(runtime.ingest)
}
