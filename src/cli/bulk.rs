//! `fhir-unify load | versions | rollback | gc | gen`: versioned dataset loads.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::json;

use fhir_unify::bulk::generator::{GenOptions, Table, generate};
use fhir_unify::bulk::local::LocalBulk;
use fhir_unify::config::{DataDir, PipelineConfig};
use fhir_unify::local::LocalRuntime;
use fhir_unify::store::DatasetStore;
use fhir_unify::store::dataset::{DatasetVersion, PointerMove};
use fhir_unify::store::sqlite::SqliteStore;

#[derive(Debug, Subcommand)]
pub enum BulkCommand {
    /// Load a DMS full-load folder (schema/table/LOAD….parquet) of SOURCE as a new version of
    /// each table's dataset (SOURCE/ENTITY), made visible in one step when it all loaded; for
    /// a Transfer source, a full-refresh file (or a folder of them, laid out like the source's
    /// location: each file a new version of its entity's dataset, in key order).
    Load {
        source: String,
        path: PathBuf,
        /// Seconds without a heartbeat after which a load is presumed dead.
        #[arg(long, default_value_t = 120)]
        lease_secs: u64,
        /// Print the outcome of each load as JSON.
        #[arg(long)]
        json: bool,
        /// Load the source's tables at once rather than one after the other (pointer moves
        /// and events keep the table order; each load succeeds or fails on its own).
        #[arg(long)]
        concurrent: bool,
    },
    /// The versions of a dataset.
    Versions {
        #[command(subcommand)]
        command: VersionsCommand,
    },
    /// Move a dataset's pointer back (to the previous loaded version, or `--to VERSION`);
    /// readers see the older version at once, and subscribers get the difference as events.
    Rollback {
        dataset: String,
        #[arg(long)]
        to: Option<u64>,
    },
    /// Delete the resources of all but the newest N loaded versions (never the current one).
    Gc {
        dataset: String,
        #[arg(long)]
        keep: usize,
    },
    /// Write N synthetic Synthea-like source records as a DMS full load (and CSV).
    Gen {
        records: u64,
        dir: PathBuf,
        /// Tables to write, comma-separated: patients, coverage, encounters.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "patients,coverage,encounters"
        )]
        tables: Vec<String>,
        #[arg(long, default_value_t = 50_000)]
        rows_per_file: usize,
        /// 0: a first load; another number changes some records and leaves some out.
        #[arg(long, default_value_t = 0)]
        variant: u64,
        /// Also write csv/<table>.csv.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VersionsCommand {
    /// List a dataset's versions, newest first (loads whose owner died are marked FAILED).
    List {
        dataset: String,
        #[arg(long, default_value_t = 120)]
        lease_secs: u64,
        #[arg(long)]
        json: bool,
    },
}

fn load_config(config: Option<&Path>) -> Result<PipelineConfig> {
    let path = crate::find_config(config)?;
    let config =
        PipelineConfig::load(&path).with_context(|| format!("pipeline file {}", path.display()))?;
    // Dataset versions live beside the store (SQLite here, DynamoDB on AWS); a FHIR server
    // cannot hold them, and loading into the embedded store instead would surprise.
    if let Some(rest) = &config.store.rest {
        bail!(
            "pipeline file {}: its store is a FHIR server ({}); dataset loads, versions and rollback need the embedded SQLite store (or DynamoDB on AWS)",
            path.display(),
            rest.base
        );
    }
    Ok(config)
}

fn open_datasets(config: &PipelineConfig, data: &DataDir) -> Result<SqliteStore> {
    Ok(SqliteStore::open(&data.join(config.store.sqlite_path()))?)
}

fn print_move(mv: &PointerMove) {
    println!(
        "  {}: version {} → {}: created {} · updated {} · deleted {} · unchanged {}",
        mv.dataset,
        mv.from.map_or("none".into(), |v| v.to_string()),
        mv.to.map_or("none".into(), |v| v.to_string()),
        mv.created,
        mv.updated,
        mv.deleted,
        mv.unchanged
    );
}

fn print_version(v: &DatasetVersion) {
    println!(
        "{:>4} {:<11}{} {}  read {} · written {} · quarantined {} · files {}{}{}",
        v.version,
        v.status.as_str(),
        if v.current { " *" } else { "  " },
        v.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        v.counts.records_read,
        v.counts.resources_written,
        v.counts.quarantined,
        v.source_files.len(),
        if v.purged { " · purged" } else { "" },
        v.error
            .as_deref()
            .map(|e| format!("\n       error: {e}"))
            .unwrap_or_default()
    );
}

pub async fn run(cmd: BulkCommand, config: Option<&Path>, data: &DataDir) -> Result<ExitCode> {
    match cmd {
        BulkCommand::Gen {
            records,
            dir,
            tables,
            rows_per_file,
            variant,
            csv,
        } => {
            let tables = tables
                .iter()
                .map(|t| Table::parse(t).with_context(|| format!("unknown table {t:?}")))
                .collect::<Result<Vec<_>>>()?;
            let started = Instant::now();
            let opts = GenOptions {
                records,
                dir: dir.clone(),
                tables,
                rows_per_file,
                variant,
                csv,
            };
            let report = tokio::task::spawn_blocking(move || generate(&opts)).await??;
            println!(
                "fhir-unify gen: {} records in {} files under {} ({:.1} s)",
                report.records,
                report.files.len(),
                dir.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        BulkCommand::Load {
            source,
            path,
            lease_secs,
            json,
            concurrent,
        } => {
            let config = load_config(config)?;
            let rt = LocalRuntime::open(config, data.clone())?;
            let bulk = Arc::new(LocalBulk::open(
                &rt,
                &source,
                &path,
                Duration::from_secs(lease_secs),
            )?);
            if let Some(mib) = std::env::var("FHIR_UNIFY_BULK_CACHE_MIB")
                .ok()
                .filter(|v| !v.trim().is_empty())
            {
                let mib: u32 = mib.trim().parse().map_err(|_| {
                    anyhow::anyhow!("FHIR_UNIFY_BULK_CACHE_MIB={mib:?} is not a number of MiB")
                })?;
                bulk.datasets
                    .tune_for_bulk(mib, fhir_unify::bulk::local::CHECKPOINT_MIB)?;
            }
            let loads = bulk.loads(&source)?;
            let counter = bulk.env.records_read.clone();
            let started = Instant::now();
            let ticker = tokio::spawn(async move {
                let terminal = std::io::stderr().is_terminal();
                let every = if terminal { 1 } else { 10 };
                loop {
                    tokio::time::sleep(Duration::from_secs(every)).await;
                    let n = counter.load(Ordering::Relaxed);
                    let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
                    if terminal {
                        eprint!("\r  {n} records read · {rate:.0} records/s   ");
                    } else {
                        eprintln!("progress: {n} records read, {rate:.0} records/s");
                    }
                }
            });
            let mut failed = false;
            let mut outcomes = Vec::new();
            if concurrent {
                // Each publishes on its own, in table order (see `load_all`).
                for outcome in bulk.load_all(&loads).await {
                    let outcome = outcome?;
                    failed |= !outcome.succeeded;
                    outcomes.push(outcome);
                }
            } else {
                for req in &loads {
                    let outcome = bulk.load(req).await?;
                    failed |= !outcome.succeeded;
                    outcomes.push(outcome);
                }
            }
            ticker.abort();
            let secs = started.elapsed().as_secs_f64();
            let read = bulk.env.records_read.load(Ordering::Relaxed);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "loads": outcomes,
                        "recordsRead": read,
                        "seconds": secs,
                    }))?
                );
            } else {
                if std::io::stderr().is_terminal() {
                    eprintln!();
                }
                println!(
                    "fhir-unify load: {source} from {} ({read} records in {secs:.1} s, {:.0} records/s)",
                    path.display(),
                    read as f64 / secs.max(0.001)
                );
                for o in &outcomes {
                    match &o.version {
                        Some(v) => print_version(v),
                        None => println!("  {}: no version was created", o.dataset),
                    }
                    if let Some(p) = &o.published {
                        println!("       published: {p}");
                    }
                    let t = &o.timings;
                    println!(
                        "       time (ms, summed over threads): decode {}, map {}, validate {}, quarantine {}, stage {}, finalize {}, emit {}; total {}",
                        t.decode_ms,
                        t.map_ms,
                        t.validate_ms,
                        t.quarantine_ms,
                        t.stage_ms,
                        t.finalize_ms,
                        t.emit_ms,
                        o.elapsed_ms
                    );
                    if !o.succeeded {
                        println!(
                            "       {}: {}",
                            o.error.as_deref().unwrap_or("failed"),
                            o.cause.as_deref().unwrap_or("")
                        );
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        BulkCommand::Versions {
            command:
                VersionsCommand::List {
                    dataset,
                    lease_secs,
                    json,
                },
        } => {
            let config = load_config(config)?;
            let store = open_datasets(&config, data)?;
            store
                .fail_dead(&dataset, Duration::from_secs(lease_secs))
                .await?;
            let versions = store.versions(&dataset).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
            } else if versions.is_empty() {
                println!("dataset {dataset} has no version");
            } else {
                println!("dataset {dataset} (* current)");
                for v in &versions {
                    print_version(v);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BulkCommand::Rollback { dataset, to } => {
            let config = load_config(config)?;
            let store = open_datasets(&config, data)?;
            let mv = store.rollback(&dataset, to).await?;
            println!("fhir-unify rollback:");
            print_move(&mv);
            let rt = LocalRuntime::open(config, data.clone())?;
            let report = fhir_unify::handlers::emit::handle(json!({}), &rt.env).await?;
            println!("  events delivered {}", report.delivered);
            Ok(ExitCode::SUCCESS)
        }
        BulkCommand::Gc { dataset, keep } => {
            if keep == 0 {
                bail!("--keep must be at least 1 (the current version is always kept)");
            }
            let config = load_config(config)?;
            let store = Arc::new(open_datasets(&config, data)?);
            let r = store.gc(&dataset, keep).await?;
            println!(
                "fhir-unify gc: {dataset}: purged versions {:?}, {} staged resources deleted",
                r.purged_versions, r.rows_deleted
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
