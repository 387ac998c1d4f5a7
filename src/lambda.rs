//! What every `functions/<name>` binary shares: JSON logs as Lambda expects them, and the
//! environment built once per cold start from the pipeline file packaged with the function.
//!
//! `FHIR_UNIFY_CONFIG` names the pipeline file (default `fhir-unify.yaml` in the function's
//! folder, `LAMBDA_TASK_ROOT`); `FHIR_UNIFY_DATA_DIR` the folder for local data (default
//! `/tmp/fhir-unify`, the only writable place on Lambda).
//!
//! A cold start that cannot build its environment (a bad pipeline file, say) is reported to
//! the Lambda Runtime API's `/runtime/init/error` before the process exits, so the caller sees
//! [`INIT_FAILED`] and the reason rather than a bare `Runtime.ExitError`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{DataDir, PipelineConfig};
use crate::env::{Env, EnvError, IngestEnv};
use crate::handlers::errors::INIT_FAILED;
use crate::local::{LocalError, LocalRuntime};
use crate::objects::ObjectStore;

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
    let built = load_config().and_then(|(config, data)| Env::from_config(&config, &data));
    Ok(Arc::new(reported(built)?))
}

/// The environment of an ingress function. Until the Step Functions adapter arrives with the
/// deploy work, the `unify` state machine runs in-process on the project's ASL engine, with
/// the same step handlers (the embedded runtime, with its data under `FHIR_UNIFY_DATA_DIR`).
pub fn ingest_env() -> Result<IngestEnv, LocalError> {
    let built = load_config()
        .map_err(LocalError::from)
        .and_then(|(config, data)| LocalRuntime::open(config.as_ref().clone(), data));
    Ok(reported(built)?.ingest)
}

/// The environment of `ingest-dms`: the embedded runtime and the object store its DMS sources
/// name (local folders until the S3 adapter exists; an `s3://` location fails the cold start).
pub fn dms_env() -> Result<(Arc<LocalRuntime>, Arc<dyn ObjectStore>), LocalError> {
    let built = load_config()
        .map_err(LocalError::from)
        .and_then(|(config, data)| {
            let objects =
                crate::handlers::ingest_dms::local_objects(&config).map_err(|message| {
                    LocalError::Input {
                        file: config.file.display().to_string(),
                        message,
                    }
                })?;
            let runtime = LocalRuntime::open(config.as_ref().clone(), data)?;
            Ok((Arc::new(runtime), objects))
        });
    reported(built)
}

/// The environment of `ingest-transfer`: the embedded runtime and the object store its
/// transfer sources name (local folders until the S3 adapter exists).
pub fn transfer_env() -> Result<(Arc<LocalRuntime>, Arc<dyn ObjectStore>), LocalError> {
    let built = load_config()
        .map_err(LocalError::from)
        .and_then(|(config, data)| {
            let objects =
                crate::handlers::ingest_transfer::local_objects(&config).map_err(|message| {
                    LocalError::Input {
                        file: config.file.display().to_string(),
                        message,
                    }
                })?;
            let runtime = LocalRuntime::open(config.as_ref().clone(), data)?;
            Ok((Arc::new(runtime), objects))
        });
    reported(built)
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
