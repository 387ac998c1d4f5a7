//! `fhir-unify validate FILE… [--profile URL_OR_FILE] [--load FILE_OR_DIR]… [--pipeline]`: validates FHIR
//! JSON files and prints the OperationOutcome of each (one input: the OperationOutcome; several:
//! a JSON array in input order). Exit status: 0 when no input has an error, 1 when one does
//! (text that is not JSON is such an error, with its line and column), 2 when an input, a
//! `--load` file or a `--profile` could not be read or used.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use fhir_unify::validation::Validator;
use fhir_unify::validation::validator::{Loaded, parse_error};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// FHIR JSON files to validate (each one resource, a Bundle included).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Validate against this profile too: the canonical URL of a loaded StructureDefinition,
    /// or a StructureDefinition file (loaded, then used).
    #[arg(long)]
    pub profile: Vec<String>,
    /// Conformance resources to know (StructureDefinitions, ValueSets, CodeSystems, Bundles of
    /// them): a file, or a folder whose `.json` files are all loaded.
    #[arg(long)]
    pub load: Vec<PathBuf>,
    /// Check what the pipeline checks: the project's own profiles
    /// (`fhir-profiles/profiles/`) apply to every resource of their types.
    #[arg(long)]
    pub pipeline: bool,
    /// Measure instead of report: validate every resource of the inputs (a Bundle's entries
    /// one by one, an `.ndjson` file's lines) this many times, and print one JSON line with
    /// the definitions' load time and the best pass's resources per second.
    #[arg(long, value_name = "PASSES")]
    pub bench: Option<u32>,
}

/// Runs the command; `Err` only for what stops it before any output (exit 2).
pub fn run(args: ValidateArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: &ValidateArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let mut validator = if args.pipeline {
        Validator::pipeline().context("loading the FHIR R4 definitions and pipeline profiles")?
    } else {
        Validator::r4().context("loading the FHIR R4 definitions")?
    };
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    for path in &args.load {
        load_path(&mut validator, path)?;
    }
    let mut profiles = Vec::new();
    for p in &args.profile {
        if validator.has_profile(p) {
            profiles.push(p.clone());
            continue;
        }
        let path = Path::new(p);
        if path.is_file() {
            match load_file(&mut validator, path)? {
                Loaded::Profile(url) => profiles.push(url),
                other => bail!("--profile {p}: not a profile StructureDefinition ({other:?})"),
            }
        } else {
            bail!("--profile {p}: neither a loaded profile's canonical URL nor a file");
        }
    }
    let profile_refs: Vec<&str> = profiles.iter().map(String::as_str).collect();
    if let Some(passes) = args.bench {
        return bench(&validator, &args.files, &profile_refs, passes, load_ms);
    }
    // Inputs are read before anything is printed, so an unreadable one gives exit 2 alone.
    let mut texts = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        texts.push(text);
    }
    let mut outcomes = Vec::with_capacity(texts.len());
    let mut any_error = false;
    for text in &texts {
        let outcome = match serde_json::from_str::<Value>(text) {
            Ok(resource) => validator.validate_with(&resource, &profile_refs),
            Err(e) => parse_error(&e).into(),
        };
        any_error |= outcome.has_errors();
        outcomes.push(outcome.to_fhir());
    }
    let out = if outcomes.len() == 1 {
        outcomes.pop().unwrap_or(Value::Null)
    } else {
        Value::Array(outcomes)
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if any_error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--bench`: the resources of the inputs, parsed once, validated `passes` times.
fn bench(
    validator: &Validator,
    files: &[PathBuf],
    profiles: &[&str],
    passes: u32,
    load_ms: f64,
) -> Result<ExitCode> {
    let mut resources = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if path.extension().is_some_and(|e| e == "ndjson") {
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
                resources.push(v);
            }
            continue;
        }
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        match v.get("entry").and_then(Value::as_array) {
            Some(entries) if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") => {
                resources.extend(entries.iter().filter_map(|e| e.get("resource").cloned()));
            }
            _ => resources.push(v),
        }
    }
    if resources.is_empty() {
        bail!("--bench: the inputs hold no resource");
    }
    let mut best = f64::INFINITY;
    let mut with_errors = 0usize;
    let mut issues = 0usize;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        with_errors = 0;
        issues = 0;
        for r in &resources {
            let outcome = validator.validate_with(r, profiles);
            with_errors += usize::from(outcome.has_errors());
            issues += outcome.issues.len();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let line = serde_json::json!({
        "resources": resources.len(),
        "passes": passes.max(1),
        "load_ms": (load_ms * 100.0).round() / 100.0,
        "best_pass_s": best,
        "resources_per_s": (resources.len() as f64 / best).round(),
        "resources_with_errors": with_errors,
        "issues": issues,
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

fn load_path(validator: &mut Validator, path: &Path) -> Result<()> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for f in files {
            load_file(validator, &f)?;
        }
        Ok(())
    } else {
        load_file(validator, path).map(|_| ())
    }
}

fn load_file(validator: &mut Validator, path: &Path) -> Result<Loaded> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot open {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    validator
        .load(&value)
        .with_context(|| format!("cannot load {}", path.display()))
}
