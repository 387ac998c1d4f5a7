//! Runs the Step Functions executions recorded on real AWS (shared/conformance/asl/cases) whose
//! features this engine supports, with mock Lambdas standing in for the recorded ones.

// Test helpers outside #[test] functions may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use asl::{
    Engine, EngineConfig, ExecutionStatus, LambdaError, LambdaFunction, StateMachine, TaskRegistry,
    VirtualClock, WorkflowType,
};
use async_trait::async_trait;
use serde_json::Value;

/// Features (as named in each case's `features`) that the engine implements.
const SUPPORTED: &[&str] = &[
    "state:Pass",
    "state:Task",
    "state:Choice",
    "state:Succeed",
    "state:Fail",
    "state:Map",
    "state:Wait",
    "state:Parallel",
    "map:inline",
    "map:distributed",
    "long_wait",
    "field:Assign",
    "field:Seconds",
    "field:SecondsPath",
    "field:Timestamp",
    "field:TimestampPath",
    "field:HeartbeatSeconds",
    "field:Result",
    "field:Parameters",
    "field:ResultPath",
    "field:InputPath",
    "field:OutputPath",
    "field:ResultSelector",
    "field:Catch",
    "field:Retry",
    "field:ErrorPath",
    "field:CausePath",
    "field:ItemsPath",
    "field:ItemSelector",
    "field:MaxConcurrency",
    "field:MaxConcurrencyPath",
    "field:ToleratedFailureCount",
    "field:ToleratedFailureCountPath",
    "field:ToleratedFailurePercentage",
    "field:TimeoutSeconds",
    "field:TimeoutSecondsPath",
    "context_object",
    "retry:MaxAttempts",
    "retry:IntervalSeconds",
    "retry:BackoffRate",
    "retry:MaxDelaySeconds",
    "retry:JitterStrategy",
    "lambda:invoke_integration",
    "lambda:function_arn",
    "lambda:complex_handler",
    "intrinsic:States.ALL",
    "intrinsic:States.TaskFailed",
    "intrinsic:States.DataLimitExceeded",
    "intrinsic:States.Format",
    "intrinsic:States.StringToJson",
    "intrinsic:States.JsonToString",
    "intrinsic:States.Array",
    "intrinsic:States.ArrayPartition",
    "intrinsic:States.ArrayContains",
    "intrinsic:States.ArrayRange",
    "intrinsic:States.ArrayGetItem",
    "intrinsic:States.ArrayLength",
    "intrinsic:States.ArrayUnique",
    "intrinsic:States.Base64Encode",
    "intrinsic:States.Base64Decode",
    "intrinsic:States.JsonMerge",
    "intrinsic:States.MathAdd",
    "intrinsic:States.StringSplit",
    "intrinsic:States.UUID",
    "intrinsic:States.Hash",
    "choice:StringEquals",
    "choice:StringEqualsPath",
    "choice:StringLessThan",
    "choice:StringLessThanPath",
    "choice:StringGreaterThan",
    "choice:StringGreaterThanPath",
    "choice:StringLessThanEquals",
    "choice:StringLessThanEqualsPath",
    "choice:StringGreaterThanEquals",
    "choice:StringGreaterThanEqualsPath",
    "choice:StringMatches",
    "choice:NumericEquals",
    "choice:NumericEqualsPath",
    "choice:NumericLessThan",
    "choice:NumericLessThanPath",
    "choice:NumericGreaterThan",
    "choice:NumericGreaterThanPath",
    "choice:NumericLessThanEquals",
    "choice:NumericLessThanEqualsPath",
    "choice:NumericGreaterThanEquals",
    "choice:NumericGreaterThanEqualsPath",
    "choice:BooleanEquals",
    "choice:BooleanEqualsPath",
    "choice:TimestampEquals",
    "choice:TimestampEqualsPath",
    "choice:TimestampLessThan",
    "choice:TimestampLessThanPath",
    "choice:TimestampGreaterThan",
    "choice:TimestampGreaterThanPath",
    "choice:TimestampLessThanEquals",
    "choice:TimestampLessThanEqualsPath",
    "choice:TimestampGreaterThanEquals",
    "choice:TimestampGreaterThanEqualsPath",
    "choice:IsNull",
    "choice:IsPresent",
    "choice:IsNumeric",
    "choice:IsString",
    "choice:IsBoolean",
    "choice:IsTimestamp",
    "jsonata",
    "jsonata:$states",
    "field:QueryLanguage",
    "field:Arguments",
    "field:Output",
    "field:Items",
    "express",
];

fn cases_dir() -> PathBuf {
    let shared = std::env::var_os("FHIR_UNIFY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    shared.join("conformance/asl/cases")
}

/// Stand-in for one recorded Python Lambda, following the case's `lambdas` description.
struct MockLambda {
    handler: String,
    behavior: Value,
}

fn python_error(error_type: &str, message: &str, trace: &str) -> LambdaError {
    // The Python runtime's error document, as json.dumps writes it.
    let raw = format!(
        "{{\"errorMessage\": {}, \"errorType\": {}, \"requestId\": \"{}\", \"stackTrace\": [{}]}}",
        serde_json::to_string(message).unwrap(),
        serde_json::to_string(error_type).unwrap(),
        uuid::Uuid::new_v4(),
        serde_json::to_string(trace).unwrap()
    );
    LambdaError {
        error_type: error_type.into(),
        error_message: message.into(),
        raw_payload: Some(raw),
    }
}

#[async_trait]
impl LambdaFunction for MockLambda {
    async fn invoke(&self, payload: Value) -> Result<Value, LambdaError> {
        match self.handler.as_str() {
            "id_function.py" => Ok(payload),
            "echo_function.py" => Ok(self.behavior["returns"].clone()),
            "raise_exception.py" => Err(python_error(
                "Exception",
                "Some exception was raised.",
                "  File \"/var/task/handler.py\", line 2, in handler\n    raise Exception(\"Some exception was raised.\")\n",
            )),
            "raise_custom_exception.py" => Err(python_error(
                "CustomException",
                "",
                "  File \"/var/task/handler.py\", line 9, in handler\n    raise CustomException()\n",
            )),
            "large_output_string.py" => Ok(Value::String("a".repeat(257 * 1024))),
            "wait_60_seconds.py" => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(payload)
            }
            other => Err(LambdaError::new(
                "MockError",
                format!("no mock for handler {other}"),
            )),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ch(char),
    Any,
}

/// `<uuid:1>`, `<json-input:1>`, `<request_id>`… in an expected string stand for any text.
fn pattern(expected: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut rest = expected;
    'outer: while let Some(c) = rest.chars().next() {
        if c == '<' {
            for prefix in [
                "<uuid:",
                "<json-input:",
                "<request_id>",
                "<request-id>",
                "<timestamp>",
                // The generated id at the end of an Express execution ARN.
                "<SyncExecArn_Part2_",
            ] {
                if rest.starts_with(prefix) {
                    if let Some(end) = rest.find('>') {
                        out.push(Tok::Any);
                        rest = &rest[end + 1..];
                        continue 'outer;
                    }
                }
            }
        }
        out.push(Tok::Ch(c));
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn glob(actual: &str, pat: &[Tok]) -> bool {
    let v: Vec<char> = actual.chars().collect();
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < v.len() {
        match pat.get(j) {
            Some(Tok::Ch(c)) if *c == v[i] => {
                i += 1;
                j += 1;
            }
            Some(Tok::Any) => {
                star = Some((j, i));
                j += 1;
            }
            _ => match star {
                Some((sj, si)) => {
                    j = sj + 1;
                    i = si + 1;
                    star = Some((sj, si + 1));
                }
                None => return false,
            },
        }
    }
    pat[j..].iter().all(|t| *t == Tok::Any)
}

/// Applies the snapshot's normalisation of partition and region to what the engine produced.
fn normalise(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(
            s.replace("arn:aws:", "arn:<partition>:")
                .replace(":us-east-1:", ":<region>:"),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalise(v))).collect())
        }
        other => other.clone(),
    }
}

fn matches(expected: &Value, actual: &Value, bare_tokens: &HashSet<String>) -> bool {
    match (expected, actual) {
        (Value::String(e), _) if bare_tokens.contains(e) => true,
        // Snapshot labels for timestamps the notes do not list: any RFC 3339 time matches.
        (Value::String(e), Value::String(a)) if e == "start-time" || e == "entered-time" => {
            chrono::DateTime::parse_from_rfc3339(a).is_ok()
        }
        (Value::String(e), Value::String(a)) => e == a || glob(a, &pattern(e)),
        (Value::Number(e), Value::Number(a)) => e.as_f64() == a.as_f64(),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y, bare_tokens))
        }
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, x)| a.get(k).is_some_and(|y| matches(x, y, bare_tokens)))
        }
        _ => expected == actual,
    }
}

async fn run_case(case: &Value) -> Result<(), String> {
    let definition = serde_json::to_string(&case["definition"]).unwrap();
    let express = case["notes"]["state_machine_type"] == "EXPRESS";
    let machine = StateMachine::parse(&definition)
        .map_err(|e| format!("definition rejected: {e}"))?
        .with_name("<ArnPart_0idx>")
        .with_type(if express {
            WorkflowType::Express
        } else {
            WorkflowType::Standard
        })
        .map_err(|e| format!("definition rejected: {e}"))?;
    let mut registry = TaskRegistry::new();
    if let Some(lambdas) = case["lambdas"].as_object() {
        for (name, l) in lambdas {
            let mock = Arc::new(MockLambda {
                handler: l["handler"].as_str().unwrap_or_default().to_string(),
                behavior: l["behavior"].clone(),
            });
            registry.register_lambda(name, mock.clone());
            if let Some(fname) = l["arn"].as_str().and_then(|a| a.rsplit(':').next()) {
                registry.register_lambda(fname, mock);
            }
        }
    }
    let config = EngineConfig {
        partition: "aws".into(),
        region: "us-east-1".into(),
        account_id: "111111111111".into(),
        // The recordings label the execution role differently in the Express fixture.
        role_arn: if express {
            "sfn_role_arn"
        } else {
            "snf_role_arn"
        }
        .into(),
    };
    let engine = Engine::with_config(registry, Arc::new(VirtualClock::new()), config);
    let result = engine
        .start_execution(
            &machine,
            Some(if express {
                "<SyncExecArn_Part1_0idx>"
            } else {
                "<ExecArnPart_0idx>"
            }),
            case["input"].clone(),
        )
        .await;
    let expected = &case["expected"];
    let bare: HashSet<String> = case["notes"]["normalised_tokens_in_expected"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| !t.starts_with('<'))
        .map(str::to_string)
        .collect();
    let status = match result.status {
        ExecutionStatus::Succeeded => "SUCCEEDED",
        ExecutionStatus::Failed => "FAILED",
        ExecutionStatus::TimedOut => "TIMED_OUT",
    };
    if expected["status"] != status {
        return Err(format!(
            "status {status}, expected {}; error {:?} cause {:?}",
            expected["status"], result.error, result.cause
        ));
    }
    if status == "SUCCEEDED" {
        let actual = normalise(result.output.as_ref().unwrap_or(&Value::Null));
        if !matches(&expected["output"], &actual, &bare) {
            return Err(format!(
                "output\n  actual:   {}\n  expected: {}",
                cut(&actual),
                cut(&expected["output"])
            ));
        }
    } else {
        let err = result.error.clone().map_or(Value::Null, Value::String);
        if !matches(expected.get("error").unwrap_or(&Value::Null), &err, &bare) {
            return Err(format!("error {err}, expected {}", expected["error"]));
        }
        let cause = match (&result.cause, expected.get("cause_is_parsed_json")) {
            (Some(c), Some(Value::Bool(true))) => {
                serde_json::from_str(c).unwrap_or(Value::String(c.clone()))
            }
            (Some(c), _) => Value::String(c.clone()),
            (None, _) => Value::Null,
        };
        let cause = normalise(&cause);
        if !matches(expected.get("cause").unwrap_or(&Value::Null), &cause, &bare) {
            return Err(format!(
                "cause\n  actual:   {}\n  expected: {}",
                cut(&cause),
                cut(&expected["cause"])
            ));
        }
    }
    let expected_types: Vec<&str> = expected["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str())
        .collect();
    let actual_types: Vec<&str> = result
        .history
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    // Where the snapshot dropped events of parallel branches (ids missing), the recorded order
    // is not AWS's: check that every recorded event type occurs, and the total count.
    let ids: Vec<u64> = expected["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    let recorded = expected["history"].as_array().map_or(0, Vec::len) as u64;
    let total = ids.iter().copied().max().unwrap_or(0);
    if total > recorded && expected_types != actual_types {
        let mut rest = actual_types.clone();
        for t in &expected_types {
            match rest.iter().position(|a| a == t) {
                Some(i) => {
                    rest.remove(i);
                }
                None => {
                    return Err(format!(
                        "history types: {t} missing\n  actual:   {actual_types:?}\n  expected: {expected_types:?}"
                    ));
                }
            }
        }
        if actual_types.len() as u64 > total {
            return Err(format!(
                "history: {} events, expected {total}\n  actual:   {actual_types:?}",
                actual_types.len()
            ));
        }
        return Ok(());
    }
    if !expected_types.is_empty() && expected_types != actual_types {
        return Err(format!(
            "history types\n  actual:   {actual_types:?}\n  expected: {expected_types:?}"
        ));
    }
    Ok(())
}

fn cut(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 600 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(600).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

// Paused time: Waits, retries, slow functions and timeouts run on simulated time.
#[tokio::test(start_paused = true)]
async fn recorded_aws_executions() {
    let dir = cases_dir();
    assert!(
        dir.is_dir(),
        "conformance data not found at {} (set FHIR_UNIFY_SHARED_DIR to the `shared` directory)",
        dir.display()
    );
    let supported: HashSet<&str> = SUPPORTED.iter().copied().collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let (mut ran, mut passed) = (0, 0);
    let mut skipped_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut skipped = 0;
    let mut failures = Vec::new();
    // category → (cases, selected, passed)
    let mut per_category: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for f in &files {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let cat = per_category
            .entry(case["category"].as_str().unwrap_or("?").to_string())
            .or_default();
        cat.0 += 1;
        let missing: Vec<String> = case["features"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|x| !supported.contains(x))
            .map(str::to_string)
            .collect();
        if !missing.is_empty() {
            skipped += 1;
            for m in missing {
                *skipped_by.entry(m).or_default() += 1;
            }
            continue;
        }
        ran += 1;
        cat.1 += 1;
        match run_case(&case).await {
            Ok(()) => {
                passed += 1;
                cat.2 += 1;
            }
            Err(e) => failures.push(format!("{}: {e}", case["name"].as_str().unwrap_or("?"))),
        }
    }
    println!(
        "conformance: {} cases, ran {ran}, passed {passed}, skipped {skipped} as unsupported",
        files.len()
    );
    println!("skipped cases per unsupported feature: {skipped_by:?}");
    println!("| category | cases | selected | passed | passed of all |");
    println!("|---|---:|---:|---:|---:|");
    for (name, (n, sel, ok)) in &per_category {
        println!(
            "| {name} | {n} | {sel} | {ok} | {:.0}% |",
            *ok as f64 * 100.0 / (*n).max(1) as f64
        );
    }
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(ran > 0, "no case selected");
    assert!(
        failures.is_empty(),
        "{} of {ran} selected cases failed",
        failures.len()
    );
}
