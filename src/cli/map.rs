//! `fhir-unify map MAPPING RECORD… --key NAME…`: shows what a mapping file makes of source
//! records, for people writing one. A RECORD is a JSON file, `-` for standard input, or inline
//! JSON (an argument starting with `{` or `[`); a JSON array holds several records. The key of
//! each record is made of the `--key` fields, as the pipeline's entity configuration says.
//!
//! Output: a JSON array, one entry per record in input order: `{"record", "resources": [{
//! "reference", "resource"}]}` or `{"record", "outcome": OperationOutcome}`. Exit status: 0 when
//! every record mapped, 1 when one did not (a record that is not JSON or lacks a key field is
//! such an error), 2 when the mapping file or an input could not be read or used.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::Args;
use serde_json::{Value, json};

use fhir_unify::mapping::Mapping;
use fhir_unify::model::{Op, RecordKey, ResourceOp, Sequence, SourceChange};
use fhir_unify::outcome::{Issue, Outcome};

#[derive(Debug, Args)]
pub struct MapArgs {
    /// The mapping file (YAML).
    pub mapping: PathBuf,
    /// Records: JSON files, `-` for standard input, or inline JSON (`{"Id": "p1", …}`).
    #[arg(required = true)]
    pub records: Vec<String>,
    /// A field of the record that is part of its key (repeat for a composite key).
    #[arg(long, required = true)]
    pub key: Vec<String>,
}

/// Runs the command; errors that stop it before any output give exit 2.
pub fn run(args: MapArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One input, read: its name and its text.
struct Input {
    name: String,
    text: String,
}

fn read_inputs(args: &MapArgs) -> Result<Vec<Input>> {
    let mut inputs = Vec::with_capacity(args.records.len());
    let mut stdin_read = false;
    for (i, r) in args.records.iter().enumerate() {
        let trimmed = r.trim_start();
        if r == "-" {
            if stdin_read {
                bail!("`-` (standard input) given twice");
            }
            stdin_read = true;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            inputs.push(Input {
                name: "stdin".into(),
                text,
            });
        } else if trimmed.starts_with('{') || trimmed.starts_with('[') {
            inputs.push(Input {
                name: format!("argument {}", i + 1),
                text: r.clone(),
            });
        } else {
            let text = std::fs::read_to_string(r).with_context(|| format!("cannot open {r}"))?;
            inputs.push(Input {
                name: r.clone(),
                text,
            });
        }
    }
    Ok(inputs)
}

fn run_inner(args: &MapArgs) -> Result<ExitCode> {
    let mapping = Mapping::load(&args.mapping)?;
    let inputs = read_inputs(args)?;
    let mut out = Vec::new();
    let mut any_error = false;
    for input in &inputs {
        let records = match serde_json::from_str::<Value>(&input.text) {
            Ok(Value::Array(items)) => items,
            Ok(one) => vec![one],
            Err(e) => {
                any_error = true;
                // serde_json's message gives line and column, never the text.
                out.push(json!({
                    "record": input.name,
                    "outcome": Outcome::from(Issue::error(
                        "structure",
                        format!("{}: not JSON: {e}", input.name),
                    ))
                    .to_fhir(),
                }));
                continue;
            }
        };
        let several = records.len() > 1;
        for (n, data) in records.into_iter().enumerate() {
            let name = if several {
                format!("{}[{n}]", input.name)
            } else {
                input.name.clone()
            };
            match map_one(&mapping, &args.key, &name, data) {
                Ok(entry) => out.push(entry),
                Err(entry) => {
                    any_error = true;
                    out.push(entry);
                }
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&Value::Array(out))?);
    Ok(if any_error {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Maps one record; `Err` holds the entry with its OperationOutcome.
fn map_one(mapping: &Mapping, key: &[String], name: &str, data: Value) -> Result<Value, Value> {
    let fail =
        |label: &str, outcome: Outcome| json!({"record": label, "outcome": outcome.to_fhir()});
    let Value::Object(fields) = &data else {
        return Err(fail(
            name,
            Outcome::from(Issue::error(
                "structure",
                format!("{name}: a record must be a JSON object"),
            )),
        ));
    };
    let mut record_key = RecordKey::default();
    for k in key {
        match fields.get(k) {
            Some(v) if !v.is_null() => {
                record_key.0.insert(k.clone(), v.clone());
            }
            _ => {
                return Err(fail(
                    name,
                    Outcome::from(
                        Issue::error("required", format!("{name}: key field `{k}` is missing"))
                            .at(k),
                    ),
                ));
            }
        }
    }
    let change = SourceChange {
        source: mapping.source().to_owned(),
        entity: mapping.entity().to_owned(),
        key: record_key,
        op: Op::Upsert,
        sequence: Sequence::from(1),
        observed_at: Utc::now(),
        data: data.into(),
    };
    let label = change.label();
    match mapping.apply(&change) {
        Ok(changes) => {
            let resources: Vec<Value> = changes
                .into_iter()
                .filter_map(|c| match c.op {
                    ResourceOp::Upsert { resource } => Some(json!({
                        "reference": c.target.to_string(),
                        "resource": resource,
                    })),
                    _ => None,
                })
                .collect();
            Ok(json!({"record": label, "resources": resources}))
        }
        Err(outcome) => Err(fail(&label, outcome)),
    }
}
