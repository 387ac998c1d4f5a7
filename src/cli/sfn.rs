//! `fhir-unify sfn`: check and run Amazon States Language definitions on the local engine,
//! with stand-in functions or a Step Functions Local mock configuration instead of real tasks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use asl::{Clock, Engine, ExecutionResult, StateMachine, SystemClock, TaskRegistry, VirtualClock};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum SfnCommand {
    /// Check a definition the way AWS does when it creates a state machine.
    Validate {
        /// The definition (`.asl.json`).
        file: PathBuf,
        /// Value of a `${Name}` placeholder, as `Name=value` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Run one execution and print `{"status", "output" | "error", "cause"[, "history"]}`.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The definition (`.asl.json`).
    definition: PathBuf,
    /// The execution input: a JSON file, or JSON text. Default `{}`.
    #[arg(long)]
    input: Option<String>,
    /// A JSON object from function name or ARN to a behaviour:
    /// `{"returns": "input"}`, `{"returns": VALUE}`, `{"raises": TYPE, "message": TEXT}`,
    /// each with an optional `"sleep_seconds"`.
    #[arg(long)]
    functions: Option<PathBuf>,
    /// A Step Functions Local mock configuration file (use with --test-case).
    #[arg(long, requires = "test_case")]
    mock_config: Option<PathBuf>,
    /// The test case of the mock configuration to run.
    #[arg(long, requires = "mock_config")]
    test_case: Option<String>,
    /// The state machine's name (in the mock configuration and the ARNs). Default: the file
    /// name without `.asl.json`.
    #[arg(long)]
    state_machine: Option<String>,
    /// Run Waits, retry intervals, slow functions and timeouts on simulated time.
    #[arg(long)]
    virtual_time: bool,
    /// Add the execution history, shaped as GetExecutionHistory's events.
    #[arg(long)]
    history: bool,
    /// Value of a `${Name}` placeholder, as `Name=value` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// A directory laid out like S3 buckets (`DIR/<bucket>/<key>`) that distributed Maps read
    /// items from (ItemReader) and write results to (ResultWriter).
    #[arg(long, value_name = "DIR")]
    objects: Option<PathBuf>,
}

/// Runs an `sfn` subcommand. An execution that fails still exits 0: only a run that could not
/// happen (unreadable or invalid definition, input, functions or mock file) is an error.
pub async fn run(command: SfnCommand) -> Result<ExitCode> {
    match command {
        SfnCommand::Validate { file, set } => match load_machine(&file, &set) {
            Ok(m) => {
                println!("{}: valid ({} states)", file.display(), m.state_count());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: invalid: {e:#}", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
        SfnCommand::Run(args) => {
            let out = execute(args).await?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn machine_name(path: &Path) -> String {
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("StateMachine");
    file.strip_suffix(".asl.json")
        .or_else(|| file.strip_suffix(".json"))
        .unwrap_or(file)
        .to_string()
}

fn load_machine(path: &Path, set: &[String]) -> Result<StateMachine> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut values = HashMap::new();
    for s in set {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s:?}: expected NAME=VALUE"))?;
        values.insert(k.to_string(), v.to_string());
    }
    let text = asl::substitute(&text, &values).context("pass its value with --set NAME=VALUE")?;
    Ok(StateMachine::parse(&text)?.with_name(&machine_name(path)))
}

fn read_input(input: Option<&str>) -> Result<Value> {
    let Some(input) = input else {
        return Ok(json!({}));
    };
    let path = Path::new(input);
    let (text, from) = if path.is_file() {
        (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            format!("input file {}", path.display()),
        )
    } else {
        (input.to_string(), "--input".to_string())
    };
    serde_json::from_str(&text).with_context(|| format!("{from} is not JSON (nor a file)"))
}

async fn execute(args: RunArgs) -> Result<Value> {
    let machine = load_machine(&args.definition, &args.set)
        .with_context(|| format!("invalid definition {}", args.definition.display()))?;
    let input = read_input(args.input.as_deref())?;
    let mut registry = TaskRegistry::new();
    if let Some(dir) = &args.objects {
        registry.set_object_store(std::sync::Arc::new(asl::objects::DirObjectStore::new(dir)));
    }
    if let Some(f) = &args.functions {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        asl::mock::register_functions(&mut registry, &text)
            .with_context(|| format!("functions file {}", f.display()))?;
    }
    if let (Some(f), Some(case)) = (&args.mock_config, &args.test_case) {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let named = args
            .state_machine
            .clone()
            .unwrap_or_else(|| machine.name().to_string());
        // A file with one state machine needs no name; otherwise the machine's name picks it.
        let mocks = asl::mock::load_test_case(&text, args.state_machine.as_deref(), case)
            .or_else(|_| asl::mock::load_test_case(&text, Some(&named), case))
            .with_context(|| format!("mock configuration {}", f.display()))?;
        registry.mock_states(mocks);
    }
    let machine = match &args.state_machine {
        Some(n) => machine.with_name(n),
        None => machine,
    };
    let result = if args.virtual_time {
        // Paused time needs its own single-threaded runtime; build it off the async threads.
        tokio::task::spawn_blocking(move || -> Result<ExecutionResult> {
            let rt = asl::virtual_time_runtime().context("cannot start the virtual clock")?;
            let clock: Arc<dyn Clock> = Arc::new(VirtualClock::new());
            let engine = Engine::new(registry, clock);
            Ok(rt.block_on(engine.start_execution(&machine, None, input)))
        })
        .await
        .context("the virtual-time run stopped")??
    } else {
        let engine = Engine::new(registry, Arc::new(SystemClock));
        engine.start_execution(&machine, None, input).await
    };
    Ok(report(&result, args.history))
}

fn report(r: &ExecutionResult, history: bool) -> Value {
    let mut out = json!({"status": r.status.as_str()});
    if let Some(o) = &r.output {
        out["output"] = o.clone();
    }
    if let Some(e) = &r.error {
        out["error"] = Value::String(e.clone());
    }
    if let Some(c) = &r.cause {
        out["cause"] = Value::String(c.clone());
    }
    if history {
        out["history"] = Value::Array(r.history.iter().map(|e| e.to_aws_json()).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn run_reads_distributed_map_items_from_the_objects_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("objects/landing")).unwrap();
        std::fs::write(
            dir.path().join("objects/landing/rows.csv"),
            "id,name\n1,Ann\n2,Bo\n",
        )
        .unwrap();
        let def = dir.path().join("load.asl.json");
        std::fs::write(
            &def,
            serde_json::json!({"StartAt": "M", "States": {"M": {"Type": "Map", "End": true,
                "ItemReader": {"Resource": "arn:aws:states:::s3:getObject",
                    "ReaderConfig": {"InputType": "CSV"},
                    "Parameters": {"Bucket": "landing", "Key": "rows.csv"}},
                "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED"}, "StartAt": "P",
                    "States": {"P": {"Type": "Pass", "Parameters": {"n.$": "$.name"}, "End": true}}}}}})
            .to_string(),
        )
        .unwrap();
        let args = |objects: Option<PathBuf>| RunArgs {
            definition: def.clone(),
            input: None,
            functions: None,
            mock_config: None,
            test_case: None,
            state_machine: None,
            virtual_time: false,
            history: false,
            set: Vec::new(),
            objects,
        };
        let out = execute(args(Some(dir.path().join("objects"))))
            .await
            .unwrap();
        assert_eq!(out["status"], "SUCCEEDED");
        assert_eq!(
            out["output"],
            serde_json::json!([{"n": "Ann"}, {"n": "Bo"}])
        );
        // Without --objects the run still happens and fails as AWS names it.
        let out = execute(args(None)).await.unwrap();
        assert_eq!(out["status"], "FAILED");
        assert_eq!(out["error"], "States.ItemReaderFailed");
    }
}
