//! `fhir-unify profile FILE|DIR… [--state FILE] [--top N] [--exact-distinct N] [--max-rows N]`:
//! profiles CSV, NDJSON and Parquet files (see `fhir_unify::profiling`) and prints a JSON
//! report: per file its rows, schema and columns; per argument the schema drift since the last
//! run (kept in the `--state` file, default `.fhir-unify/profile-state.json`).
//!
//! The report holds data values (top values, min, max): run it on your own machine, on data
//! you may see. Exit status: 0 done, 1 a file had unreadable rows or the schema drifted,
//! 2 a file could not be profiled at all.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use fhir_unify::profiling::{ProfileOptions, drift, files_under, profile_file};

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Files or folders (folders: every .csv, .ndjson/.jsonl and .parquet file inside).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Where the last schema seen of each file set is kept, for drift reports.
    #[arg(long, default_value = ".fhir-unify/profile-state.json")]
    pub state: PathBuf,
    /// Do not read or update the schema state.
    #[arg(long)]
    pub no_state: bool,
    /// Top values shown per column.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Distinct values counted exactly up to this many per column, then estimated.
    #[arg(long, default_value_t = 10_000)]
    pub exact_distinct: usize,
    /// Read at most this many rows of each file.
    #[arg(long)]
    pub max_rows: Option<u64>,
}

pub fn run(args: ProfileArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: &ProfileArgs) -> Result<ExitCode> {
    let options = ProfileOptions {
        exact_distinct_limit: args.exact_distinct,
        top: args.top,
        max_rows: args.max_rows,
    };
    let mut sets = Vec::new();
    let mut problems = false;
    for path in &args.paths {
        let files = files_under(path)?;
        if files.is_empty() {
            bail!("{}: no .csv, .ndjson or .parquet files", path.display());
        }
        let mut profiles = Vec::with_capacity(files.len());
        for f in &files {
            let p = profile_file(f, &options)?;
            problems |= !p.errors.is_empty();
            profiles.push(p);
        }
        let drift_report = if args.no_state {
            None
        } else {
            let set = std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string();
            let report = drift(&args.state, &set, &profiles)?;
            problems |= report.drifted();
            Some(report)
        };
        sets.push(json!({
            "path": path.display().to_string(),
            "files": profiles,
            "drift": drift_report,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&sets)?);
    Ok(if problems {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
