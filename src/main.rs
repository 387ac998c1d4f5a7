//! The `fhir-unify` command: runs the pipeline on one machine and reads what it produced.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use fhir_unify::config::{DataDir, PipelineConfig};
use fhir_unify::local::LocalRuntime;
use fhir_unify::local::queue::LocalQueue;
use fhir_unify::model::{Rejection, ResourceRef};
use fhir_unify::store::sqlite::SqliteStore;
use fhir_unify::store::{FhirStore, StoredVersion};

mod cli {
    pub mod bulk;
    pub mod events;
    pub mod map;
    pub mod profile;
    pub mod sfn;
    pub mod validate;
}

#[derive(Debug, Parser)]
#[command(
    name = "fhir-unify",
    version,
    about = "Source changes in, validated FHIR R4 out, change events emitted"
)]
struct Cli {
    /// The pipeline file. Default: ./fhir-unify.yaml, else ./examples/fhir-unify.yaml.
    #[arg(long, global = true, env = "FHIR_UNIFY_CONFIG")]
    config: Option<PathBuf>,
    /// Where the store, queue and event file live.
    #[arg(
        long,
        global = true,
        env = "FHIR_UNIFY_DATA_DIR",
        default_value = ".fhir-unify"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Deliver every local source (e.g. the example's DynamoDB stream) through `unify`.
    Run,
    /// Print the current version of a resource, e.g. `get Patient/123`.
    Get { reference: String },
    /// Print the history of a resource as a FHIR history Bundle.
    History { reference: String },
    /// Serve the partner FHIR API on HTTP (authorizer, then gateway, as on API Gateway).
    Serve {
        /// Address and port to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Seconds an authorizer answer is cached per Authorization header, as API Gateway's
        /// authorizerResultTtlInSeconds (0 disables; never past the token's exp).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=3600))]
        authorizer_cache_ttl: u64,
    },
    /// Work with the quarantine queue.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// List and replay archived change events.
    Events {
        #[command(subcommand)]
        command: cli::events::EventsCommand,
    },
    /// Check or run an Amazon States Language definition on the local engine.
    Sfn {
        #[command(subcommand)]
        command: cli::sfn::SfnCommand,
    },
    /// Validate FHIR R4 JSON files; print the OperationOutcome of each.
    Validate(cli::validate::ValidateArgs),
    #[command(flatten)]
    Bulk(cli::bulk::BulkCommand),
    /// Show what a mapping file makes of source records (JSON files, `-`, or inline JSON).
    Map(cli::map::MapArgs),
    /// Profile CSV, NDJSON or Parquet files: per column type, nulls, distinct values, patterns.
    Profile(cli::profile::ProfileArgs),
}

#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// List quarantined records with the reason each was refused.
    List {
        /// Print each message whole (JSON Lines) instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn find_config(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    for candidate in ["fhir-unify.yaml", "examples/fhir-unify.yaml"] {
        let p = PathBuf::from(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no pipeline file: pass --config FILE (or set FHIR_UNIFY_CONFIG); looked for ./fhir-unify.yaml and ./examples/fhir-unify.yaml"
    )
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let data = DataDir(cli.data_dir.clone());
    match cli.command {
        Command::Sfn { command } => cli::sfn::run(command).await,
        Command::Validate(args) => Ok(cli::validate::run(args)),
        Command::Bulk(command) => cli::bulk::run(command, cli.config.as_deref(), &data).await,
        Command::Map(args) => Ok(cli::map::run(args)),
        Command::Profile(args) => Ok(cli::profile::run(args)),
        Command::Run => {
            let path = find_config(cli.config.as_deref())?;
            let config = PipelineConfig::load(&path)?;
            let events_file = config.events.ndjson_path().map(|p| data.join(p));
            let queue_name = config.quarantine.queue.clone();
            let runtime = LocalRuntime::connect(config, data.clone()).await?;
            let s = runtime.run().await?;
            println!(
                "fhir-unify run: {} (data in {})",
                path.display(),
                data.0.display()
            );
            println!("  records in    {}", s.records_in);
            println!("  executions    {}", s.executions);
            if s.loads > 0 {
                println!(
                    "  loads         {} dataset version(s) from full-refresh files, {} failed (`fhir-unify versions list`)",
                    s.loads, s.loads_failed
                );
            }
            println!(
                "  resources     created {} · updated {} · unchanged {} · deleted {} · stale {}",
                s.created, s.updated, s.unchanged, s.deleted, s.stale
            );
            println!(
                "  quarantined   {}  (now {} in queue {queue_name}: `fhir-unify quarantine list`)",
                s.quarantined,
                runtime.queue.count(&queue_name)?
            );
            match events_file {
                Some(f) => println!("  events        {}  ({})", s.events, f.display()),
                None => println!("  events        {}  (`fhir-unify events list`)", s.events),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { reference } => {
            let store = open_store(cli.config.as_deref(), &data).await?;
            let target = parse_reference(&reference)?;
            match store.read(&target).await? {
                Some(v) if !v.deleted => {
                    println!("{}", serde_json::to_string_pretty(&v.resource)?);
                    Ok(ExitCode::SUCCESS)
                }
                Some(v) => {
                    eprintln!(
                        "{target} was deleted (version {}, {})",
                        v.version_id,
                        v.last_updated.to_rfc3339()
                    );
                    Ok(ExitCode::from(2))
                }
                None => {
                    eprintln!("{target} not found");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::History { reference } => {
            let store = open_store(cli.config.as_deref(), &data).await?;
            let target = parse_reference(&reference)?;
            let versions = store.history(&target).await?;
            if versions.is_empty() {
                eprintln!("{target} not found");
                return Ok(ExitCode::from(2));
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&history_bundle(&target, &versions))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Events { command } => {
            let config = match command {
                cli::events::EventsCommand::Bench { .. } => PathBuf::new(),
                _ => find_config(cli.config.as_deref())?,
            };
            cli::events::run(command, &config, &data).await
        }
        Command::Serve {
            listen,
            authorizer_cache_ttl,
        } => {
            let path = find_config(cli.config.as_deref())?;
            let options = fhir_unify::gateway::server::ServeOptions {
                authorizer_cache_ttl: std::time::Duration::from_secs(authorizer_cache_ttl),
                ..Default::default()
            };
            fhir_unify::gateway::server::serve_cli(
                &PipelineConfig::load(&path)?,
                &data,
                listen,
                options,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Quarantine {
            command: QuarantineCommand::List { json },
        } => {
            let config = find_config(cli.config.as_deref())
                .ok()
                .and_then(|p| PipelineConfig::load(&p).ok());
            let name = config.map_or_else(
                || "fhir-unify-quarantine".to_owned(),
                |c| c.quarantine.queue,
            );
            let queue = LocalQueue::open(&data.join("queue.db".as_ref()))?;
            for m in queue.list(&name)? {
                if json {
                    println!("{}", serde_json::to_string(&m)?);
                    continue;
                }
                println!("{}", describe_quarantined(&m.body));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The store `get` and `history` read: the FHIR server the pipeline file names
/// (`store.rest`), else the embedded SQLite store under the data folder.
async fn open_store(config: Option<&Path>, data: &DataDir) -> Result<Arc<dyn FhirStore>> {
    let config = find_config(config)
        .ok()
        .map(|p| PipelineConfig::load(&p))
        .transpose()?;
    if let Some(rest) = config.as_ref().and_then(|c| c.store.rest.as_ref()) {
        return Ok(Arc::new(
            fhir_unify::store::rest::RestStore::from_config(rest, None).await?,
        ));
    }
    let path = match config {
        Some(c) => data.join(c.store.sqlite_path()),
        None => data.join("store.db".as_ref()),
    };
    if !path.is_file() {
        bail!(
            "no store at {} (run `fhir-unify run` first, or pass --data-dir)",
            path.display()
        );
    }
    Ok(Arc::new(SqliteStore::open(&path)?))
}

fn parse_reference(reference: &str) -> Result<ResourceRef> {
    let (t, id) = reference
        .split_once('/')
        .filter(|(t, id)| !t.is_empty() && !id.is_empty() && !id.contains('/'))
        .with_context(|| format!("{reference:?} is not a reference like Patient/123"))?;
    Ok(ResourceRef {
        resource_type: t.to_owned(),
        id: id.to_owned(),
    })
}

/// A FHIR `history` Bundle, newest first.
fn history_bundle(target: &ResourceRef, versions: &[StoredVersion]) -> Value {
    let entries: Vec<Value> = versions
        .iter()
        .map(|v| {
            let mut e = json!({
                "fullUrl": format!("{target}"),
                "request": {
                    "method": if v.deleted { "DELETE" } else { "PUT" },
                    "url": format!("{target}"),
                },
                "response": {
                    "status": if v.deleted { "204" } else if v.version_id == "1" { "201" } else { "200" },
                    "etag": format!("W/\"{}\"", v.version_id),
                    "lastModified": v.last_updated.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                },
            });
            if let Some(r) = &v.resource {
                e["resource"] = r.clone();
            }
            e
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "history", "total": entries.len(), "entry": entries})
}

/// One line per quarantined record: stage, record, and the first diagnostics.
fn describe_quarantined(body: &str) -> String {
    if let Ok(r) = serde_json::from_str::<Rejection>(body) {
        let reasons: Vec<String> = r
            .outcome
            .get("issue")
            .and_then(Value::as_array)
            .map(|issues| {
                issues
                    .iter()
                    .map(|i| {
                        let d = i.get("diagnostics").and_then(Value::as_str).unwrap_or("");
                        // Decoders often start the diagnostics with the record label, said already.
                        let d = d
                            .strip_prefix(r.record.as_str())
                            .map_or(d, |rest| rest.trim_start_matches(": "));
                        match i.pointer("/expression/0").and_then(Value::as_str) {
                            Some(at) => format!("{d} (at {at})"),
                            None => d.to_owned(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        return format!("[{}] {}: {}", r.stage, r.record, reasons.join("; "));
    }
    // A whole batch quarantined by the state machine's Catch: the step's input plus `error`.
    match serde_json::from_str::<Value>(body) {
        Ok(v) if v.get("error").is_some() => format!(
            "[batch {}] {}: {}",
            v.get("batchId").and_then(Value::as_str).unwrap_or("?"),
            v.pointer("/error/Error")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            v.pointer("/error/Cause")
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        _ => format!("[unrecognised message] {} bytes", body.len()),
    }
}
