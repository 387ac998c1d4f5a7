//! Runs a parsed state machine: data flow, Retry/Catch, Map iterations, history.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::choice;
use crate::context::{Ctx, Vars};
use crate::definition::WorkflowType;
use crate::definition::{
    Catcher, JsonataFields, Kind, MapState, NumOrPath, ParallelState, Program, Retrier, Rule,
    State, StateMachine, StrOrPath, TaskState, Template, Transformation, Wait,
};
use crate::distributed;
use crate::jsonata::{Bindings, Expr, Outcome};
use crate::jsonpath::{JsonPath, RefStep};
use crate::mock::MockedResult;
use crate::task::{Clock, TaskRegistry};
use crate::tokens::{TaskTokenError, TokenAnswer, Tokens};

/// The Step Functions payload quota: 256 KiB for a state's input, output or task result.
pub const MAX_PAYLOAD_BYTES: usize = 262_144;

/// The longest an Express execution runs.
const EXPRESS_MAX_SECONDS: u64 = 300;

/// Where the engine pretends to run: used in ARNs and error causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// ARN partition, `aws` by default.
    pub partition: String,
    /// Region, `us-east-1` by default.
    pub region: String,
    /// Account id, `123456789012` by default.
    pub account_id: String,
    /// The execution role, shown as `$$.Execution.RoleArn`.
    pub role_arn: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            partition: "aws".into(),
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            role_arn: "arn:aws:iam::123456789012:role/StepFunctionsLocal".into(),
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionStatus {
    /// Reached a Succeed state or an `End`.
    Succeeded,
    /// An error was not caught, or a Fail state ran.
    Failed,
    /// The machine's `TimeoutSeconds` elapsed.
    TimedOut,
}

impl ExecutionStatus {
    /// The status as `DescribeExecution` names it: `SUCCEEDED`, `FAILED`, `TIMED_OUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
        }
    }
}

/// One history event (AWS event types; `details` mirrors the AWS `...EventDetails`).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    /// 1-based event id.
    pub id: u64,
    /// The id of the event this one follows (0 for none).
    pub previous_event_id: u64,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// AWS event type, e.g. `TaskStateEntered`.
    pub event_type: String,
    /// The state it concerns, if any.
    pub state_name: Option<String>,
    /// Event details (input, output, error, cause, index...).
    pub details: Value,
}

impl HistoryEvent {
    /// The event as `GetExecutionHistory` returns it: `id`, `previousEventId`, `timestamp`,
    /// `type` and a `<type>EventDetails` object whose payloads (`input`, `output`,
    /// `parameters`) are JSON text with their `...Details` siblings.
    pub fn to_aws_json(&self) -> Value {
        let mut out = json!({
            "id": self.id,
            "previousEventId": self.previous_event_id,
            "timestamp": self.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "type": self.event_type,
        });
        let Value::Object(details) = &self.details else {
            return out;
        };
        if details.is_empty() {
            return out;
        }
        let mut d = Map::new();
        for (k, v) in details {
            match k.as_str() {
                "input" | "output" => {
                    d.insert(k.clone(), Value::String(compact(v)));
                    d.insert(format!("{k}Details"), json!({"truncated": false}));
                }
                "parameters" => {
                    d.insert(k.clone(), Value::String(compact(v)));
                }
                _ if v.is_null() => {}
                _ => {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
        let key = if self.event_type.ends_with("StateEntered") {
            "stateEnteredEventDetails".to_string()
        } else if self.event_type.ends_with("StateExited") {
            "stateExitedEventDetails".to_string()
        } else {
            let mut c = self.event_type.chars();
            match c.next() {
                Some(f) => format!("{}{}EventDetails", f.to_ascii_lowercase(), c.as_str()),
                None => "eventDetails".to_string(),
            }
        };
        out[key] = Value::Object(d);
        out
    }
}

/// The outcome of an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionResult {
    /// Final status.
    pub status: ExecutionStatus,
    /// The output, when it succeeded.
    pub output: Option<Value>,
    /// The error name, when it failed (a Fail state may leave it out).
    pub error: Option<String>,
    /// The cause, when it failed.
    pub cause: Option<String>,
    /// The execution history.
    pub history: Vec<HistoryEvent>,
}

/// Runs state machines against a task registry.
#[derive(Clone)]
pub struct Engine {
    registry: Arc<TaskRegistry>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// Tokens of `.waitForTaskToken` tasks, shared by every clone of the engine.
    tokens: Arc<Tokens>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("registry", &self.registry)
            .field("config", &self.config)
            .finish()
    }
}

/// How far an error can be caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Catchable {
    /// Ordinary error: exact name, `States.ALL`, `States.TaskFailed` (unless a timeout).
    Yes,
    /// Only by its exact name (e.g. a state output over the payload quota).
    ByNameOnly,
    /// `States.Runtime`: never retried or caught.
    No,
}

#[derive(Debug, Clone)]
pub(crate) struct Failure {
    error: Option<String>,
    cause: Option<String>,
    catchable: Catchable,
    /// The `<Type>StateFailed` event still to record for the failed Map or Parallel state:
    /// written once retries are over, as AWS records it once.
    state_failed: Option<&'static str>,
    /// For a JSONata evaluation failure, the field (`Items`, `Output/result`): its
    /// `EvaluationFailed` event is still to record.
    location: Option<String>,
}

impl Failure {
    fn new(error: &str, cause: impl Into<String>) -> Self {
        Self {
            error: Some(error.to_string()),
            cause: Some(cause.into()),
            catchable: Catchable::Yes,
            state_failed: None,
            location: None,
        }
    }

    fn runtime(state: &str, entered: u64, detail: &str) -> Self {
        Self {
            error: Some("States.Runtime".into()),
            cause: Some(format!(
                "An error occurred while executing the state '{state}' (entered at the event id #{entered}). {detail}"
            )),
            catchable: Catchable::No,
            state_failed: None,
            location: None,
        }
    }

    /// `States.QueryEvaluationError`: a JSONata expression failed or gave the wrong type.
    fn query(state: &str, entered: u64, location: &str, detail: &str) -> Self {
        Self {
            location: Some(location.to_string()),
            ..Self::new(
                "States.QueryEvaluationError",
                format!(
                    "An error occurred while executing the state '{state}' (entered at the event id #{entered}). {detail}"
                ),
            )
        }
    }

    fn matches(&self, names: &[String]) -> bool {
        let err = self.error.as_deref().unwrap_or("");
        match self.catchable {
            Catchable::No => false,
            Catchable::ByNameOnly => names.iter().any(|n| n == err),
            Catchable::Yes => names.iter().any(|n| {
                n == err
                    || n == "States.ALL"
                    || (n == "States.Timeout" && err == "States.HeartbeatTimeout")
                    || (n == "States.TaskFailed"
                        && err != "States.Timeout"
                        && err != "States.HeartbeatTimeout")
            }),
        }
    }

    fn as_value(&self) -> Value {
        let mut m = Map::new();
        if let Some(e) = &self.error {
            m.insert("Error".into(), Value::String(e.clone()));
        }
        if let Some(c) = &self.cause {
            m.insert("Cause".into(), Value::String(c.clone()));
        }
        Value::Object(m)
    }
}

/// Counts serialised bytes without building the text.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `v` as compact JSON text, what the payload quota is measured on.
fn size_of(v: &Value) -> usize {
    let mut counter = ByteCounter(0);
    match serde_json::to_writer(&mut counter, v) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

struct Exec {
    registry: Arc<TaskRegistry>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// `$$.Execution` and `$$.StateMachine`, shared by every state (it holds the input).
    context_base: Arc<Value>,
    history: Mutex<Vec<HistoryEvent>>,
    /// Calls so far of each mocked state, to pick its next mocked answer.
    mock_calls: Mutex<std::collections::HashMap<String, usize>>,
    tokens: Arc<Tokens>,
}

impl Exec {
    /// The execution a distributed Map's iterations run in: same machine and services, own
    /// history (AWS runs them as child executions, out of the parent's history).
    fn child(&self) -> Exec {
        Exec {
            registry: self.registry.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            context_base: self.context_base.clone(),
            history: Mutex::new(Vec::new()),
            mock_calls: Mutex::new(std::collections::HashMap::new()),
            tokens: self.tokens.clone(),
        }
    }

    fn next_mock_call(&self, state: &str) -> usize {
        let Ok(mut calls) = self.mock_calls.lock() else {
            return 0;
        };
        let n = calls.entry(state.to_string()).or_insert(0);
        *n += 1;
        *n - 1
    }

    fn event(
        &self,
        event_type: &str,
        previous: u64,
        state_name: Option<&str>,
        details: Value,
    ) -> u64 {
        let Ok(mut h) = self.history.lock() else {
            return 0;
        };
        let id = h.len() as u64 + 1;
        h.push(HistoryEvent {
            id,
            previous_event_id: previous,
            timestamp: self.clock.now(),
            event_type: event_type.to_string(),
            state_name: state_name.map(str::to_string),
            details,
        });
        id
    }

    fn lambda_arn(&self, name: &str, qualifier: Option<&str>) -> String {
        let c = &self.config;
        let mut arn = format!(
            "arn:{}:lambda:{}:{}:function:{name}",
            c.partition, c.region, c.account_id
        );
        if let Some(q) = qualifier {
            arn.push(':');
            arn.push_str(q);
        }
        arn
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What one state did: its output, where to go next (`None` at the end), what it assigned.
struct Step {
    output: Value,
    next: Option<String>,
    assigned: Option<Vars>,
}

impl Engine {
    /// An engine with the default [`EngineConfig`].
    pub fn new(registry: TaskRegistry, clock: Arc<dyn Clock>) -> Self {
        Self::with_config(registry, clock, EngineConfig::default())
    }

    /// An engine with an explicit partition, region, account and role.
    pub fn with_config(
        registry: TaskRegistry,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Self {
        Self {
            registry: Arc::new(registry),
            clock,
            config,
            tokens: Arc::new(Tokens::default()),
        }
    }

    /// SendTaskSuccess: the `.waitForTaskToken` task holding `token` succeeds with `output`.
    pub fn send_task_success(&self, token: &str, output: Value) -> Result<(), TaskTokenError> {
        self.tokens.send(token, TokenAnswer::Success(output))
    }

    /// SendTaskFailure: the task holding `token` fails with `error` and `cause`.
    pub fn send_task_failure(
        &self,
        token: &str,
        error: Option<&str>,
        cause: Option<&str>,
    ) -> Result<(), TaskTokenError> {
        self.tokens.send(
            token,
            TokenAnswer::Failure {
                error: error.map(str::to_string),
                cause: cause.map(str::to_string),
            },
        )
    }

    /// SendTaskHeartbeat: restarts the HeartbeatSeconds timer of the task holding `token`.
    pub fn send_task_heartbeat(&self, token: &str) -> Result<(), TaskTokenError> {
        self.tokens.send(token, TokenAnswer::Heartbeat)
    }

    /// Runs one execution to its end. `name` defaults to a random UUID, as on AWS.
    pub async fn start_execution(
        &self,
        machine: &StateMachine,
        name: Option<&str>,
        input: Value,
    ) -> ExecutionResult {
        let exec_name = name.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
        let exec_arn = self.execution_arn(machine, &exec_name);
        self.run_execution(machine, exec_name, exec_arn, input)
            .await
    }

    /// The ARN an execution of `machine` named `exec_name` gets.
    fn execution_arn(&self, machine: &StateMachine, exec_name: &str) -> String {
        let c = &self.config;
        if machine.workflow_type == WorkflowType::Express {
            format!(
                "arn:{}:states:{}:{}:express:{}:{exec_name}:{}",
                c.partition,
                c.region,
                c.account_id,
                machine.name,
                uuid::Uuid::new_v4()
            )
        } else {
            format!(
                "arn:{}:states:{}:{}:execution:{}:{exec_name}",
                c.partition, c.region, c.account_id, machine.name
            )
        }
    }

    async fn run_execution(
        &self,
        machine: &StateMachine,
        exec_name: String,
        exec_arn: String,
        input: Value,
    ) -> ExecutionResult {
        let c = &self.config;
        let sm_arn = format!(
            "arn:{}:states:{}:{}:stateMachine:{}",
            c.partition, c.region, c.account_id, machine.name
        );
        let express = machine.workflow_type == WorkflowType::Express;
        let start = self
            .clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut execution = json!({"Id": exec_arn, "Input": input, "StartTime": start, "Name": exec_name, "RoleArn": c.role_arn});
        if !express {
            execution["RedriveCount"] = json!(0);
        }
        // An Express execution runs at most five minutes.
        let timeout_seconds = match (machine.timeout_seconds, express) {
            (Some(t), true) => Some(t.min(EXPRESS_MAX_SECONDS)),
            (None, true) => Some(EXPRESS_MAX_SECONDS),
            (t, false) => t,
        };
        // The timeout runs on the engine's clock: an execution's sleeps stop at its deadline,
        // so a clock whose sleeps return at once (TestClock) or simulated time
        // (VirtualClock) times the execution out exactly when its time passes the deadline.
        // A timeout too large for a date is no timeout at all (it would never be reached).
        let deadline = timeout_seconds.and_then(|t| {
            chrono::Duration::try_seconds(i64::try_from(t).ok()?)
                .and_then(|d| self.clock.now().checked_add_signed(d))
        });
        let clock: Arc<dyn Clock> = match deadline {
            Some(deadline) => Arc::new(DeadlineClock {
                inner: self.clock.clone(),
                deadline,
            }),
            None => self.clock.clone(),
        };
        let exec = Arc::new(Exec {
            registry: self.registry.clone(),
            clock,
            config: self.config.clone(),
            context_base: Arc::new(json!({
                "Execution": execution,
                "StateMachine": {"Id": sm_arn, "Name": machine.name},
            })),
            history: Mutex::new(Vec::new()),
            mock_calls: Mutex::new(std::collections::HashMap::new()),
            tokens: self.tokens.clone(),
        });
        tracing::debug!(execution = %exec_name, state_machine = %machine.name, "execution started");
        exec.event(
            "ExecutionStarted",
            0,
            None,
            json!({"input": input, "roleArn": c.role_arn}),
        );
        let outcome = if size_of(&input) > MAX_PAYLOAD_BYTES {
            Err(Some(Failure::new(
                "States.DataLimitExceeded",
                "The execution input exceeds the maximum number of bytes service limit.",
            )))
        } else {
            let run = run_program(
                exec.clone(),
                machine.program.clone(),
                input,
                Vars::new(),
                false,
            );
            match deadline {
                None => run.await.map_err(Some),
                Some(deadline) => {
                    tokio::select! {
                        biased;
                        r = run => r.map_err(Some),
                        () = self.clock.sleep_until(deadline) => Err(None),
                    }
                }
            }
        };
        let last = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
        let (status, output, error, cause) = match outcome {
            Ok(out) => {
                exec.event("ExecutionSucceeded", last, None, json!({"output": out}));
                (ExecutionStatus::Succeeded, Some(out), None, None)
            }
            Err(Some(f)) => {
                exec.event(
                    "ExecutionFailed",
                    last,
                    None,
                    json!({"error": f.error, "cause": f.cause}),
                );
                (ExecutionStatus::Failed, None, f.error, f.cause)
            }
            Err(None) => {
                exec.event("ExecutionTimedOut", last, None, json!({}));
                (ExecutionStatus::TimedOut, None, None, None)
            }
        };
        tracing::debug!(execution = %exec_name, status = ?status, "execution ended");
        let history = exec
            .history
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default();
        ExecutionResult {
            status,
            output,
            error,
            cause,
            history,
        }
    }
}

fn run_program(
    exec: Arc<Exec>,
    program: Arc<Program>,
    input: Value,
    vars: Vars,
    interleave: bool,
) -> BoxFut<Result<Value, Failure>> {
    Box::pin(async move {
        let mut name = program.start_at.clone();
        let mut input = input;
        let mut vars = vars;
        loop {
            let Some(state) = program.states.get(&name).cloned() else {
                return Err(Failure::new(
                    "States.Runtime",
                    format!("state '{name}' does not exist"),
                ));
            };
            let prev = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
            let entered = exec.event(
                state.kind.event_types().0,
                prev,
                Some(&state.name),
                json!({"name": state.name, "input": input}),
            );
            if interleave {
                // Parallel branches take turns state by state, as AWS's history shows.
                tokio::task::yield_now().await;
            }
            let Step {
                output,
                next,
                assigned,
            } = match run_state(&exec, &state, input, entered, &vars).await {
                Ok(step) => step,
                Err(mut f) => {
                    record_evaluation_failed(&exec, &state.name, &mut f);
                    if interleave && matches!(state.kind, Kind::Task(_)) {
                        // A Task whose failure ends a Parallel branch is aborted, as AWS
                        // records it.
                        let prev = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
                        exec.event("TaskStateAborted", prev, Some(&state.name), json!({}));
                    }
                    return Err(f);
                }
            };
            let prev = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
            let mut details = json!({"name": state.name, "output": output});
            if let Some(a) = assigned {
                // History shows each assigned value as JSON text, as AWS does.
                details["assignedVariables"] = Value::Object(
                    a.iter()
                        .map(|(k, v)| (k.clone(), Value::String(compact(v))))
                        .collect(),
                );
                vars.extend(a);
            }
            exec.event(state.kind.event_types().1, prev, Some(&state.name), details);
            match next {
                Some(n) => {
                    name = n;
                    input = output;
                }
                None => return Ok(output),
            }
        }
    })
}

/// InputPath, OutputPath, ItemsPath: `$` (the usual case) borrows, so a state does not copy
/// its input just to pass it on.
fn apply_path<'v>(
    state: &State,
    entered: u64,
    path: Option<&JsonPath>,
    value: &'v Value,
    ctx: &Ctx<'_>,
) -> Result<Cow<'v, Value>, Failure> {
    let Some(p) = path else {
        return Ok(Cow::Owned(json!({})));
    };
    if p.is_root() {
        return Ok(Cow::Borrowed(value));
    }
    p.lookup(value, ctx).map(Cow::Owned).ok_or_else(|| {
        Failure::runtime(
            &state.name,
            entered,
            &format!(
                "Invalid path '{}' : No results for path: {}",
                p.text(),
                p.jayway_form()
            ),
        )
    })
}

fn eval_template(
    state: &str,
    entered: u64,
    t: &Template,
    input: &Value,
    ctx: &Ctx<'_>,
) -> Result<Value, Failure> {
    match t {
        Template::Literal(v) => Ok(v.clone()),
        Template::Array(a) => a
            .iter()
            .map(|x| eval_template(state, entered, x, input, ctx))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Template::Object(fields) => {
            let mut m = Map::new();
            for (k, v) in fields {
                m.insert(k.clone(), eval_template(state, entered, v, input, ctx)?);
            }
            Ok(Value::Object(m))
        }
        Template::Path { field, path } => {
            path.lookup(input, ctx).ok_or_else(|| {
                Failure::runtime(
                    state,
                    entered,
                    &format!(
                        "The JSONPath '{}' specified for the field '{field}' could not be found in the input '{}'",
                        path.text(),
                        compact(input)
                    ),
                )
            })
        }
        Template::Jsonata { field, expr } => eval_jsonata(state, entered, field, expr, input, ctx),
        Template::Intrinsic { field, text, call } => call.evaluate(input, ctx).map_err(|e| {
            Failure::runtime(
                state,
                entered,
                &format!("The function '{text}' specified for the field '{field}' failed: {e}"),
            )
        }),
    }
}

/// Evaluates a JSONata expression with `$states.input` = `input` and the variables in scope.
fn eval_jsonata(
    state: &str,
    entered: u64,
    field: &str,
    expr: &Expr,
    input: &Value,
    ctx: &Ctx<'_>,
) -> Result<Value, Failure> {
    // The context object holds the execution input: built only for expressions that read it
    // (`$states.context…`, or `$states` as a whole).
    let text = expr.text();
    let whole_states = text
        .match_indices("$states")
        .any(|(i, m)| !text[i + m.len()..].starts_with('.'));
    let context = (whole_states || text.contains("context")).then(|| ctx.materialize());
    let mut b = Bindings::new();
    b.with_map(ctx.vars).states_field("input", input);
    if let Some(r) = ctx.states_result {
        b.states_field("result", r);
    }
    if let Some(e) = ctx.states_error {
        b.states_field("errorOutput", e);
    }
    if let Some(c) = &context {
        b.states_field("context", c);
    }
    match expr.evaluate(None, &b) {
        Ok(Outcome::Value(v)) => Ok(v),
        Ok(Outcome::Undefined) => Err(Failure::query(
            state,
            entered,
            field,
            &format!(
                "The JSONata expression '{text}' specified for the field '{field}' returned nothing (undefined)."
            ),
        )),
        Ok(Outcome::Function) => Err(Failure::query(
            state,
            entered,
            field,
            &format!(
                "The JSONata expression '{text}' specified for the field '{field}' returned an unsupported result type."
            ),
        )),
        Err(e) => Err(Failure::query(
            state,
            entered,
            field,
            &format!(
                "The JSONata expression '{text}' specified for the field '{field}' threw an error during evaluation: {e}"
            ),
        )),
    }
}

/// The JSON type name AWS uses in JSONata result-type errors.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// An expression template's text, for messages (`None` for a literal).
fn template_text(t: &Template) -> Option<&str> {
    match t {
        Template::Jsonata { expr, .. } => Some(expr.text()),
        _ => None,
    }
}

/// A JSONata state's `Output` (default: `default`).
fn jsonata_output(
    state: &State,
    entered: u64,
    output: Option<&Template>,
    input: &Value,
    default: Value,
    ctx: &Ctx<'_>,
) -> Result<Value, Failure> {
    let out = match output {
        Some(t) => eval_template(&state.name, entered, t, input, ctx)?,
        None => default,
    };
    check_output_size(state, &out)?;
    Ok(out)
}

/// OutputPath on a value the state owns: `$` passes it on without a copy.
fn apply_output_path(
    state: &State,
    entered: u64,
    path: Option<&JsonPath>,
    value: Value,
    ctx: &Ctx<'_>,
) -> Result<Value, Failure> {
    match path {
        Some(p) if p.is_root() => Ok(value),
        _ => apply_path(state, entered, path, &value, ctx).map(Cow::into_owned),
    }
}

fn apply_result_path(raw: &Value, rp: Option<&JsonPath>, result: Value) -> Result<Value, Failure> {
    let Some(p) = rp else { return Ok(raw.clone()) };
    let steps = p.reference_steps();
    if steps.is_empty() {
        return Ok(result);
    }
    let fail = || {
        Failure::new(
            "States.ResultPathMatchFailure",
            format!(
                "Unable to apply ReferencePath {} to input {}",
                p.text(),
                compact(raw)
            ),
        )
    };
    let mut out = raw.clone();
    let mut cur = &mut out;
    for (i, step) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        cur = match step {
            RefStep::Name(n) => {
                let Value::Object(m) = cur else {
                    return Err(fail());
                };
                let slot = m.entry(n.clone()).or_insert_with(|| json!({}));
                if !last && !slot.is_object() && !slot.is_array() {
                    *slot = json!({});
                }
                slot
            }
            RefStep::Index(k) => {
                let Value::Array(a) = cur else {
                    return Err(fail());
                };
                a.get_mut(*k).ok_or_else(fail)?
            }
        };
    }
    *cur = result;
    Ok(out)
}

fn check_output_size(state: &State, v: &Value) -> Result<(), Failure> {
    if size_of(v) > MAX_PAYLOAD_BYTES {
        return Err(Failure {
            error: Some("States.DataLimitExceeded".into()),
            cause: Some(format!(
                "The state/task '{}' returned a result with a size exceeding the maximum number of bytes service limit.",
                state.name
            )),
            catchable: Catchable::ByNameOnly,
            state_failed: None,
            location: None,
        });
    }
    Ok(())
}

/// Evaluates an `Assign` block; `$` is what the state type says it is (its result, its input
/// or the error output of a Catch).
fn eval_assign(
    state: &str,
    entered: u64,
    assign: Option<&Template>,
    dollar: &Value,
    ctx: &Ctx<'_>,
) -> Result<Option<Vars>, Failure> {
    let Some(t) = assign else { return Ok(None) };
    match eval_template(state, entered, t, dollar, ctx)? {
        Value::Object(m) => Ok(Some(m)),
        other => Err(Failure::runtime(
            state,
            entered,
            &format!(
                "The Assign field must be an object, not {}",
                compact(&other)
            ),
        )),
    }
}

/// The end of every state that produces a result (Task, Map, Parallel): the payload quota on
/// the result, ResultSelector, Assign (on the selected result), ResultPath, OutputPath.
struct ResultFields<'a> {
    selector: Option<&'a Template>,
    result_path: Option<&'a JsonPath>,
}

fn finish_result(
    state: &State,
    entered: u64,
    label: &str,
    fields: &ResultFields<'_>,
    raw: &Value,
    result: Value,
    ctx: &Ctx<'_>,
) -> Result<(Value, Option<Vars>), Failure> {
    if size_of(&result) > MAX_PAYLOAD_BYTES {
        return Err(Failure::new(
            "States.DataLimitExceeded",
            format!(
                "The state/task '{label}' returned a result with a size exceeding the maximum number of bytes service limit."
            ),
        ));
    }
    if let Some(j) = &state.jsonata {
        // JSONata: Assign and Output see `$states.input` and `$states.result`; the output is
        // the result unless Output says otherwise.
        let rctx = Ctx {
            states_result: Some(&result),
            ..*ctx
        };
        let assigned = eval_assign(&state.name, entered, state.assign.as_ref(), raw, &rctx)?;
        let out = match &j.output {
            Some(t) => eval_template(&state.name, entered, t, raw, &rctx)?,
            None => result,
        };
        check_output_size(state, &out)?;
        return Ok((out, assigned));
    }
    let result = match fields.selector {
        Some(t) => eval_template(&state.name, entered, t, &result, ctx)?,
        None => result,
    };
    let assigned = eval_assign(&state.name, entered, state.assign.as_ref(), &result, ctx)?;
    let merged = apply_result_path(raw, fields.result_path, result)?;
    let out = apply_output_path(state, entered, state.output_path.as_ref(), merged, ctx)?;
    check_output_size(state, &out)?;
    Ok((out, assigned))
}

/// Runs one state.
async fn run_state(
    exec: &Arc<Exec>,
    state: &Arc<State>,
    raw: Value,
    entered: u64,
    vars: &Vars,
) -> Result<Step, Failure> {
    let ctx = Ctx {
        base: &exec.context_base,
        state: &state.name,
        entered: exec.clock.now(),
        retry_count: None,
        item: None,
        task_token: None,
        vars,
        states_result: None,
        states_error: None,
    };
    let name = state.name.as_str();
    if let Some(j) = &state.jsonata {
        if let Some(step) = run_jsonata_state(exec, state, j, &raw, entered, &ctx).await {
            return step;
        }
    }
    let step = |output: Value, next: Option<String>, assigned: Option<Vars>| Step {
        output,
        next,
        assigned,
    };
    match &state.kind {
        Kind::Pass {
            result,
            parameters,
            result_path,
        } => {
            let effective = apply_path(state, entered, state.input_path.as_ref(), &raw, &ctx)?;
            let params = match parameters {
                Some(t) => Some(eval_template(name, entered, t, &effective, &ctx)?),
                None => None,
            };
            let res = match (result, params) {
                (Some(r), _) => r.clone(),
                (None, Some(p)) => p,
                (None, None) => effective.into_owned(),
            };
            let assigned = eval_assign(name, entered, state.assign.as_ref(), &res, &ctx)?;
            let merged =
                apply_result_path(&raw, result_path.as_ref(), res).map_err(|f| Failure {
                    catchable: Catchable::No,
                    ..f
                })?;
            let out = apply_output_path(state, entered, state.output_path.as_ref(), merged, &ctx)?;
            check_output_size(state, &out)?;
            Ok(step(out, state.next.clone(), assigned))
        }
        Kind::Succeed => {
            let effective = apply_path(state, entered, state.input_path.as_ref(), &raw, &ctx)?;
            let out = apply_path(state, entered, state.output_path.as_ref(), &effective, &ctx)?
                .into_owned();
            Ok(step(out, None, None))
        }
        Kind::Fail { error, cause } => {
            let resolve = |sp: &Option<StrOrPath>,
                           field: &str|
             -> Result<Option<String>, Failure> {
                match sp {
                    None => Ok(None),
                    Some(StrOrPath::Str(s)) => Ok(Some(s.clone())),
                    Some(StrOrPath::Expr(t)) => {
                        Ok(Some(match eval_template(name, entered, t, &raw, &ctx)? {
                            Value::String(s) => s,
                            other => compact(&other),
                        }))
                    }
                    Some(StrOrPath::Path(p)) => {
                        let v = p.lookup(&raw, &ctx).ok_or_else(|| {
                            Failure::runtime(
                                name,
                                entered,
                                &format!(
                                    "The JSONPath '{}' specified for the field '{field}' could not be found in the input '{}'",
                                    p.text(),
                                    compact(&raw)
                                ),
                            )
                        })?;
                        Ok(Some(match v {
                            Value::String(s) => s,
                            other => compact(&other),
                        }))
                    }
                }
            };
            let error = resolve(error, "ErrorPath")?;
            let cause = resolve(cause, "CausePath")?;
            Err(Failure {
                error,
                cause,
                catchable: Catchable::Yes,
                state_failed: None,
                location: None,
            })
        }
        Kind::Choice { choices, default } => {
            let effective = apply_path(state, entered, state.input_path.as_ref(), &raw, &ctx)?;
            let mut chosen = None;
            for (rule, target, assign) in choices {
                if choice::evaluate(rule, &effective, &ctx)
                    .map_err(|d| Failure::runtime(name, entered, &d))?
                {
                    chosen = Some((target.clone(), assign.as_ref()));
                    break;
                }
            }
            let (next, assign) = match chosen {
                Some(c) => c,
                None => {
                    let d = default.clone().ok_or_else(|| Failure {
                        error: Some("States.NoChoiceMatched".into()),
                        cause: Some(format!("No Matches! (state '{name}')")),
                        catchable: Catchable::Yes,
                        state_failed: None,
                        location: None,
                    })?;
                    (d, state.assign.as_ref())
                }
            };
            let assigned = eval_assign(name, entered, assign, &effective, &ctx)?;
            let out = apply_path(state, entered, state.output_path.as_ref(), &effective, &ctx)?
                .into_owned();
            Ok(step(out, Some(next), assigned))
        }
        Kind::Wait(wait) => {
            let effective = apply_path(state, entered, state.input_path.as_ref(), &raw, &ctx)?;
            let delay = wait_duration(exec, state, entered, wait, &effective, &ctx)?;
            exec.clock.sleep(delay).await;
            let assigned = eval_assign(name, entered, state.assign.as_ref(), &effective, &ctx)?;
            let out = apply_path(state, entered, state.output_path.as_ref(), &effective, &ctx)?
                .into_owned();
            Ok(step(out, state.next.clone(), assigned))
        }
        Kind::Task(task) => {
            let attempt = |retry_count: u32| {
                let ctx = ctx.with_retry(retry_count);
                let raw = &raw;
                async move { run_task_once(exec, state, task, raw, &ctx, entered).await }
            };
            with_retry_catch(
                exec,
                state,
                Recovery {
                    retry: &task.retry,
                    catch: &task.catch,
                },
                &raw,
                &ctx,
                entered,
                attempt,
            )
            .await
        }
        Kind::Map(map) => {
            let attempt = |_retry: u32| {
                let raw = &raw;
                let ctx = &ctx;
                async move { run_map_once(exec, state, map, raw, ctx, entered, vars).await }
            };
            with_retry_catch(
                exec,
                state,
                Recovery {
                    retry: &map.retry,
                    catch: &map.catch,
                },
                &raw,
                &ctx,
                entered,
                attempt,
            )
            .await
        }
        Kind::Parallel(par) => {
            let attempt = |_retry: u32| {
                let raw = &raw;
                let ctx = &ctx;
                async move { run_parallel_once(exec, state, par, raw, ctx, entered, vars).await }
            };
            with_retry_catch(
                exec,
                state,
                Recovery {
                    retry: &par.retry,
                    catch: &par.catch,
                },
                &raw,
                &ctx,
                entered,
                attempt,
            )
            .await
        }
    }
}

/// The JSONata forms of Pass, Succeed, Fail, Choice and Wait (`None` for the state types whose
/// JSONata fields are handled along their JSONPath path: Task, Map, Parallel).
async fn run_jsonata_state(
    exec: &Arc<Exec>,
    state: &State,
    j: &JsonataFields,
    raw: &Value,
    entered: u64,
    ctx: &Ctx<'_>,
) -> Option<Result<Step, Failure>> {
    let name = state.name.as_str();
    let simple = |next: Option<String>| -> Result<Step, Failure> {
        let assigned = eval_assign(name, entered, state.assign.as_ref(), raw, ctx)?;
        let output = jsonata_output(state, entered, j.output.as_ref(), raw, raw.clone(), ctx)?;
        Ok(Step {
            output,
            next,
            assigned,
        })
    };
    Some(match &state.kind {
        Kind::Pass { .. } => simple(state.next.clone()),
        Kind::Succeed => simple(None),
        Kind::Wait(wait) => {
            let delay = match wait_duration(exec, state, entered, wait, raw, ctx) {
                Ok(d) => d,
                Err(f) => return Some(Err(f)),
            };
            exec.clock.sleep(delay).await;
            simple(state.next.clone())
        }
        Kind::Choice { choices, default } => {
            let mut chosen = None;
            for (i, (rule, target, assign)) in choices.iter().enumerate() {
                let Rule::Condition(t) = rule else { continue };
                let v = match eval_template(name, entered, t, raw, ctx) {
                    Ok(v) => v,
                    Err(f) => return Some(Err(f)),
                };
                let Value::Bool(b) = v else {
                    return Some(Err(Failure::query(
                        name,
                        entered,
                        "Condition",
                        &format!(
                            "The JSONata expression '{}' specified for the field 'Condition' returned an unexpected result type. Expected 'boolean', but was '{}' for value: {}",
                            template_text(t).unwrap_or_default(),
                            json_type(&v),
                            compact(&v)
                        ),
                    )));
                };
                if b {
                    chosen = Some((
                        target.clone(),
                        assign.as_ref(),
                        j.choice_outputs.get(i).and_then(Option::as_ref),
                    ));
                    break;
                }
            }
            let (next, assign, output) = match chosen {
                Some(c) => c,
                None => match default {
                    Some(d) => (d.clone(), state.assign.as_ref(), j.output.as_ref()),
                    None => {
                        return Some(Err(Failure::new(
                            "States.NoChoiceMatched",
                            format!("No Matches! (state '{name}')"),
                        )));
                    }
                },
            };
            (|| {
                let assigned = eval_assign(name, entered, assign, raw, ctx)?;
                let output = jsonata_output(state, entered, output, raw, raw.clone(), ctx)?;
                Ok(Step {
                    output,
                    next: Some(next),
                    assigned,
                })
            })()
        }
        _ => return None,
    })
}

/// How long a Wait state sleeps; the `...Path` forms fail as AWS words it.
fn wait_duration(
    exec: &Exec,
    state: &State,
    entered: u64,
    wait: &Wait,
    input: &Value,
    ctx: &Ctx<'_>,
) -> Result<Duration, Failure> {
    let until = |t: DateTime<chrono::FixedOffset>| {
        (t.with_timezone(&Utc) - exec.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    match wait {
        Wait::Expr { seconds, template } => {
            let v = eval_template(&state.name, entered, template, input, ctx)?;
            if *seconds {
                let n = v.as_u64().or_else(|| {
                    v.as_f64()
                        .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                        .map(|f| f as u64)
                });
                return n.map(Duration::from_secs).ok_or_else(|| {
                    Failure::query(
                        &state.name,
                        entered,
                        "Seconds",
                        &format!(
                            "The Seconds field must evaluate to a non-negative integer, but was: {}",
                            compact(&v)
                        ),
                    )
                });
            }
            match v.as_str().and_then(choice::parse_timestamp) {
                Some(t) => Ok(until(t)),
                None => Err(Failure::query(
                    &state.name,
                    entered,
                    "Timestamp",
                    &format!(
                        "The Timestamp field cannot be parsed as an ISO-8601 extended offset date-time format string: {}",
                        v.as_str().map_or_else(|| compact(&v), str::to_string)
                    ),
                )),
            }
        }
        Wait::Seconds(n) => Ok(Duration::from_secs(*n)),
        Wait::Timestamp(t) => Ok(until(*t)),
        Wait::SecondsPath(p) => {
            let v = apply_path(state, entered, Some(p), input, ctx)?.into_owned();
            let shown = match &v {
                Value::String(s) => s.clone(),
                other => compact(other),
            };
            match (v.as_i64(), v.as_u64()) {
                (_, Some(n)) => Ok(Duration::from_secs(n)),
                (Some(_), None) => Err(Failure::runtime(
                    &state.name,
                    entered,
                    &format!(
                        "The SecondsPath parameter references a negative value: {} == {shown}",
                        p.text()
                    ),
                )),
                _ => Err(Failure::runtime(
                    &state.name,
                    entered,
                    &format!(
                        "The SecondsPath parameter cannot be parsed as a long value: {} == {shown}",
                        p.text()
                    ),
                )),
            }
        }
        Wait::TimestampPath(p) => {
            let v = apply_path(state, entered, Some(p), input, ctx)?.into_owned();
            match v.as_str().and_then(choice::parse_timestamp) {
                Some(t) => Ok(until(t)),
                None => Err(Failure::runtime(
                    &state.name,
                    entered,
                    &format!(
                        "The TimestampPath parameter does not reference a valid ISO-8601 extended offset date-time format string: {} == {}",
                        p.text(),
                        v.as_str().map_or_else(|| compact(&v), str::to_string)
                    ),
                )),
            }
        }
    }
}

/// A state's `Retry` and `Catch` lists.
struct Recovery<'a> {
    retry: &'a [Retrier],
    catch: &'a [Catcher],
}

async fn with_retry_catch<F, Fut>(
    exec: &Arc<Exec>,
    state: &Arc<State>,
    Recovery { retry, catch }: Recovery<'_>,
    raw: &Value,
    ctx: &Ctx<'_>,
    entered: u64,
    attempt: F,
) -> Result<Step, Failure>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<(Value, Option<Vars>), Failure>>,
{
    let mut counts = vec![0u32; retry.len()];
    let mut retry_count = 0u32;
    loop {
        match attempt(retry_count).await {
            Ok((output, assigned)) => {
                return Ok(Step {
                    output,
                    next: state.next.clone(),
                    assigned,
                });
            }
            Err(mut f) => {
                record_evaluation_failed(exec, &state.name, &mut f);
                if let Some(i) = retry.iter().position(|r| f.matches(&r.error_equals)) {
                    let r = &retry[i];
                    if counts[i] < r.max_attempts {
                        let mut delay = r.interval_seconds
                            * r.backoff_rate
                                .powi(i32::try_from(counts[i]).unwrap_or(i32::MAX));
                        if let Some(max) = r.max_delay_seconds {
                            delay = delay.min(max);
                        }
                        if r.jitter_full {
                            let frac =
                                (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
                            delay *= frac;
                        }
                        counts[i] += 1;
                        retry_count += 1;
                        tracing::debug!(state = %state.name, attempt = retry_count, delay_seconds = delay, "retrying");
                        exec.clock
                            .sleep(Duration::from_secs_f64(delay.max(0.0)))
                            .await;
                        continue;
                    }
                }
                record_state_failed(exec, &state.name, &mut f);
                if let Some(c) = catch.iter().find(|c| f.matches(&c.error_equals)) {
                    let error_output = f.as_value();
                    if state.jsonata.is_some() {
                        let cctx = Ctx {
                            states_error: Some(&error_output),
                            ..*ctx
                        };
                        let assigned =
                            eval_assign(&state.name, entered, c.assign.as_ref(), raw, &cctx)?;
                        let output = match &c.output {
                            Some(t) => eval_template(&state.name, entered, t, raw, &cctx)?,
                            None => error_output.clone(),
                        };
                        return Ok(Step {
                            output,
                            next: Some(c.next.clone()),
                            assigned,
                        });
                    }
                    let assigned =
                        eval_assign(&state.name, entered, c.assign.as_ref(), &error_output, ctx)?;
                    let output = apply_result_path(raw, c.result_path.as_ref(), error_output)?;
                    return Ok(Step {
                        output,
                        next: Some(c.next.clone()),
                        assigned,
                    });
                }
                return Err(f);
            }
        }
    }
}

/// Resolves a number field that may come from a path in the effective input.
fn resolve_num(
    state: &State,
    entered: u64,
    np: &NumOrPath,
    field: &str,
    input: &Value,
    ctx: &Ctx<'_>,
) -> Result<u64, Failure> {
    match np {
        NumOrPath::Num(n) => Ok(*n),
        NumOrPath::Expr(t) => {
            let v = eval_template(&state.name, entered, t, input, ctx)?;
            v.as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64))
                .ok_or_else(|| {
                    Failure::query(
                        &state.name,
                        entered,
                        field,
                        &format!(
                            "The JSONata expression '{}' specified for the field '{field}' returned an unexpected result type. Expected 'integer', but was '{}' for value: {}",
                            template_text(t).unwrap_or_default(),
                            json_type(&v),
                            compact(&v)
                        ),
                    )
                })
        }
        NumOrPath::Path(p) => {
            let v = p.lookup(input, ctx);
            // A variable may hold the number as text (AWS accepts `"1"` from `$var`).
            let parsed = match (&v, p.variable()) {
                (Some(Value::String(s)), Some(_)) => s.parse::<u64>().ok(),
                (Some(n), _) => n.as_u64(),
                (None, _) => None,
            };
            parsed.ok_or_else(|| {
                Failure::runtime(
                    &state.name,
                    entered,
                    &format!(
                        "The {field}Path field refers to value \"{}\" which is not a valid integer: {}",
                        v.as_ref().map(compact).unwrap_or_else(|| "null".into()),
                        p.text()
                    ),
                )
            })
        }
    }
}

/// What a Task resource resolves to.
enum Target {
    /// `arn:...:lambda:...:function:name` — the result is the function's output.
    LambdaArn {
        name: String,
        qualifier: Option<String>,
    },
    /// `arn:aws:states:::lambda:invoke` — the result is wrapped.
    LambdaInvoke,
    /// Any other `arn:aws:states:::service:action`.
    Service { service: String },
}

fn resolve_target(resource: &str) -> Option<Target> {
    let parts: Vec<&str> = resource.split(':').collect();
    if parts.len() >= 7 && parts[2] == "lambda" && parts[5] == "function" {
        return Some(Target::LambdaArn {
            name: parts[6].to_string(),
            qualifier: parts.get(7).map(|q| q.to_string()),
        });
    }
    if parts.len() >= 7 && parts[2] == "states" && parts[3].is_empty() && parts[4].is_empty() {
        if parts[5] == "lambda" && parts[6] == "invoke" {
            return Some(Target::LambdaInvoke);
        }
        return Some(Target::Service {
            service: parts[5].to_string(),
        });
    }
    None
}

/// Splits a `FunctionName` (name, `name:qualifier`, full or partial ARN).
fn split_function_name(f: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = f.split(':').collect();
    if let Some(i) = parts.iter().position(|p| *p == "function") {
        return (
            parts.get(i + 1).unwrap_or(&"").to_string(),
            parts.get(i + 2).map(|q| q.to_string()),
        );
    }
    match parts.as_slice() {
        [n, q] => (n.to_string(), Some(q.to_string())),
        _ => (f.to_string(), None),
    }
}

fn not_found(exec: &Exec, name: &str, qualifier: Option<&str>) -> Failure {
    Failure::new(
        "Lambda.ResourceNotFoundException",
        format!(
            "Function not found: {} (Service: AWSLambda; Status Code: 404; Error Code: ResourceNotFoundException; Request ID: {}; Proxy: null)",
            exec.lambda_arn(name, Some(qualifier.unwrap_or("$LATEST"))),
            uuid::Uuid::new_v4()
        ),
    )
}

/// The length of `v` as Python's `json.dumps` writes it (`", "` and `": "` separators): the
/// Content-Length AWS reports for a Python function's response, as the recorded runs show.
fn python_json_len(v: &Value) -> usize {
    fn extra(v: &Value) -> usize {
        match v {
            Value::Array(a) => a.len().saturating_sub(1) + a.iter().map(extra).sum::<usize>(),
            Value::Object(m) => {
                m.len() + m.len().saturating_sub(1) + m.values().map(extra).sum::<usize>()
            }
            _ => 0,
        }
    }
    size_of(v) + extra(v)
}

/// Removes insignificant whitespace from JSON text, keeping key order (as Jackson re-serialises).
fn compact_json_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// An execution's view of the engine's clock: a sleep that would pass the execution's
/// deadline sleeps until the deadline and never returns, so the execution's timeout decides.
struct DeadlineClock {
    inner: Arc<dyn Clock>,
    deadline: DateTime<Utc>,
}

#[async_trait::async_trait]
impl Clock for DeadlineClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.now()
    }

    async fn sleep(&self, duration: Duration) {
        let wake = chrono::Duration::from_std(duration)
            .ok()
            .and_then(|d| self.inner.now().checked_add_signed(d));
        match wake {
            Some(w) if w < self.deadline => self.inner.sleep(duration).await,
            _ => {
                // Sleeping (not waiting) to the deadline moves a TestClock's time there.
                let left = (self.deadline - self.inner.now())
                    .to_std()
                    .unwrap_or_default();
                self.inner.sleep(left).await;
                std::future::pending::<()>().await;
            }
        }
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        if deadline < self.deadline {
            self.inner.sleep_until(deadline).await;
        } else {
            let left = (self.deadline - self.inner.now())
                .to_std()
                .unwrap_or_default();
            self.inner.sleep(left).await;
            std::future::pending::<()>().await;
        }
    }
}

async fn with_timeout<T>(
    exec: &Exec,
    timeout: Option<u64>,
    fut: impl Future<Output = T>,
) -> Option<T> {
    match timeout {
        None => Some(fut.await),
        Some(t) => {
            tokio::select! {
                biased;
                r = fut => Some(r),
                () = exec.clock.sleep(Duration::from_secs(t)) => None,
            }
        }
    }
}

async fn run_task_once(
    exec: &Arc<Exec>,
    state: &State,
    task: &TaskState,
    raw: &Value,
    ctx: &Ctx<'_>,
    entered: u64,
) -> Result<(Value, Option<Vars>), Failure> {
    let name = state.name.as_str();
    let effective = apply_path(state, entered, state.input_path.as_ref(), raw, ctx)?;
    // `.waitForTaskToken`: a token for `$$.Task.Token`, answered through the engine handle.
    let callback = task.resource.strip_suffix(".waitForTaskToken");
    let mocked = exec.registry.state_mock(name).is_some();
    let (token, rx) = match (callback.is_some() && !mocked).then(|| exec.tokens.issue()) {
        Some((t, rx)) => (Some(t), Some(rx)),
        None => (None, None),
    };
    let token_ctx;
    let ctx = match &token {
        Some(token) => {
            token_ctx = Ctx {
                task_token: Some(token.as_str()),
                ..*ctx
            };
            &token_ctx
        }
        None => ctx,
    };
    let r = run_task_call(exec, state, task, raw, &effective, ctx, entered, rx).await;
    if let Some(t) = token {
        exec.tokens.retire(&t);
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn run_task_call(
    exec: &Arc<Exec>,
    state: &State,
    task: &TaskState,
    raw: &Value,
    effective: &Value,
    ctx: &Ctx<'_>,
    entered: u64,
    issued: Option<tokio::sync::mpsc::UnboundedReceiver<TokenAnswer>>,
) -> Result<(Value, Option<Vars>), Failure> {
    let name = state.name.as_str();
    let resource = task
        .resource
        .strip_suffix(".waitForTaskToken")
        .unwrap_or(&task.resource);
    let waiting = issued.is_some();
    let success_event = if waiting {
        "TaskSubmitted"
    } else {
        "TaskSucceeded"
    };
    let started_at = exec.clock.now();
    let params = match &task.parameters {
        Some(t) => eval_template(name, entered, t, effective, ctx)?,
        None => effective.clone(),
    };
    if size_of(&params) > MAX_PAYLOAD_BYTES {
        return Err(Failure {
            error: Some("States.DataLimitExceeded".into()),
            cause: Some(format!(
                "The state/task '{name}' input exceeds the maximum number of bytes service limit."
            )),
            catchable: Catchable::ByNameOnly,
            state_failed: None,
            location: None,
        });
    }
    let timeout = task
        .timeout
        .as_ref()
        .map(|t| resolve_num(state, entered, t, "TimeoutSeconds", effective, ctx))
        .transpose()?;
    let heartbeat = task
        .heartbeat
        .as_ref()
        .map(|t| resolve_num(state, entered, t, "HeartbeatSeconds", effective, ctx))
        .transpose()?;
    let (task_timeout, task_heartbeat) = (timeout, heartbeat);
    // No local task sends heartbeats, so HeartbeatSeconds bounds the whole call; whichever
    // limit is shorter decides the error.
    let (timeout, timeout_error) = match (timeout, heartbeat) {
        (Some(t), Some(h)) if h < t => (Some(h), "States.HeartbeatTimeout"),
        (None, Some(h)) => (Some(h), "States.HeartbeatTimeout"),
        (t, _) => (t, "States.Timeout"),
    };
    let target = resolve_target(resource).ok_or_else(|| {
        Failure::runtime(
            name,
            entered,
            &format!(
                "The resource '{}' is not supported by this engine",
                task.resource
            ),
        )
    })?;
    let last = |exec: &Exec| exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
    let (resource_type, action) = match &target {
        Target::Service { service } => (
            service.clone(),
            task.resource
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        _ => ("lambda".to_string(), "invoke.waitForTaskToken".to_string()),
    };
    if let Some(mock) = exec.registry.state_mock(name) {
        let n = exec.next_mock_call(name);
        let (resource_type, action) = match &target {
            Target::LambdaArn { .. } | Target::LambdaInvoke => ("lambda", "invoke".to_string()),
            Target::Service { service } => (
                service.as_str(),
                task.resource
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
        };
        let d = json!({"resource": action, "resourceType": resource_type});
        let mut scheduled = d.clone();
        scheduled["parameters"] = params.clone();
        let id = exec.event("TaskScheduled", last(exec), Some(name), scheduled);
        let id = exec.event("TaskStarted", id, Some(name), d.clone());
        let result = match mock.answer(n) {
            Some(MockedResult::Return(v)) => v.clone(),
            Some(MockedResult::Throw { error, cause }) => {
                let f = Failure::new(error, cause.clone());
                exec.event(
                    "TaskFailed",
                    id,
                    Some(name),
                    json!({"error": f.error, "cause": f.cause}),
                );
                return Err(f);
            }
            None => Value::Null,
        };
        let mut succeeded = d;
        succeeded["output"] = result.clone();
        exec.event("TaskSucceeded", id, Some(name), succeeded);
        let fields = ResultFields {
            selector: task.result_selector.as_ref(),
            result_path: task.result_path.as_ref(),
        };
        return finish_result(state, entered, name, &fields, raw, result, ctx);
    }
    let child_mode = child_execution_mode(resource);
    let (result, label) = if let Some(mode) = child_mode {
        let v = start_child_execution(
            exec,
            name,
            entered,
            &task.resource,
            mode,
            &params,
            timeout,
            timeout_error,
        )
        .await?;
        (v, "states".to_string())
    } else {
        match target {
            Target::LambdaArn {
                name: fname,
                qualifier,
            } => {
                let id = exec.event(
                    "LambdaFunctionScheduled",
                    last(exec),
                    Some(name),
                    json!({"resource": task.resource, "input": params}),
                );
                let f = exec
                    .registry
                    .lambda(&fname)
                    .ok_or_else(|| not_found(exec, &fname, qualifier.as_deref()))?;
                let id = exec.event("LambdaFunctionStarted", id, Some(name), json!({}));
                match with_timeout(exec, timeout, f.invoke(params)).await {
                    None => {
                        exec.event(
                            "LambdaFunctionTimedOut",
                            id,
                            Some(name),
                            json!({"error": timeout_error}),
                        );
                        return Err(Failure {
                            error: Some(timeout_error.into()),
                            cause: None,
                            catchable: Catchable::Yes,
                            state_failed: None,
                            location: None,
                        });
                    }
                    Some(Err(e)) => {
                        let f = Failure::new(&e.error_type, e.payload_text());
                        exec.event(
                            "LambdaFunctionFailed",
                            id,
                            Some(name),
                            json!({"error": f.error, "cause": f.cause}),
                        );
                        return Err(f);
                    }
                    Some(Ok(v)) if size_of(&v) > MAX_PAYLOAD_BYTES => {
                        return Err(result_too_large(
                            exec,
                            "LambdaFunctionFailed",
                            id,
                            name,
                            &task.resource,
                            json!({}),
                        ));
                    }
                    Some(Ok(v)) => {
                        exec.event(
                            "LambdaFunctionSucceeded",
                            id,
                            Some(name),
                            json!({"output": v}),
                        );
                        (v, task.resource.clone())
                    }
                }
            }
            Target::LambdaInvoke => {
                let id = exec.event(
                    "TaskScheduled",
                    last(exec),
                    Some(name),
                    json!({"resource": "invoke", "resourceType": "lambda", "parameters": params}),
                );
                let fname = params
                    .get("FunctionName")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        Failure::runtime(
                            name,
                            entered,
                            "The field 'FunctionName' is required by the lambda:invoke integration",
                        )
                    })?;
                let (fname, qualifier) = split_function_name(fname);
                let payload = match params.get("Payload") {
                    None => json!({}),
                    Some(Value::String(s)) => {
                        serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                    }
                    Some(v) => v.clone(),
                };
                let id = exec.event(
                    "TaskStarted",
                    id,
                    Some(name),
                    json!({"resource": "invoke", "resourceType": "lambda"}),
                );
                let f = match exec.registry.lambda(&fname) {
                    Some(f) => f,
                    None => {
                        let f = not_found(exec, &fname, qualifier.as_deref());
                        exec.event(
                            "TaskFailed",
                            id,
                            Some(name),
                            json!({"error": f.error, "cause": f.cause}),
                        );
                        return Err(f);
                    }
                };
                match with_timeout(exec, timeout, f.invoke(payload)).await {
                    None => {
                        exec.event(
                            "TaskTimedOut",
                            id,
                            Some(name),
                            json!({"error": timeout_error}),
                        );
                        return Err(Failure {
                            error: Some(timeout_error.into()),
                            cause: None,
                            catchable: Catchable::Yes,
                            state_failed: None,
                            location: None,
                        });
                    }
                    Some(Err(e)) => {
                        let f = Failure::new(&e.error_type, compact_json_text(&e.payload_text()));
                        exec.event(
                            "TaskFailed",
                            id,
                            Some(name),
                            json!({"error": f.error, "cause": f.cause}),
                        );
                        return Err(f);
                    }
                    Some(Ok(v)) if size_of(&v) > MAX_PAYLOAD_BYTES => {
                        return Err(result_too_large(
                            exec,
                            "TaskFailed",
                            id,
                            name,
                            "lambda",
                            json!({"resource": "invoke", "resourceType": "lambda"}),
                        ));
                    }
                    Some(Ok(v)) => {
                        let len = python_json_len(&v).to_string();
                        let wrapped = json!({
                            "ExecutedVersion": "$LATEST",
                            "Payload": v,
                            "SdkHttpMetadata": {
                                "AllHttpHeaders": {
                                    "X-Amz-Executed-Version": ["$LATEST"],
                                    "x-amzn-Remapped-Content-Length": ["0"],
                                    "Connection": ["keep-alive"],
                                    "x-amzn-RequestId": [uuid::Uuid::new_v4().to_string()],
                                    "Content-Length": [len],
                                    "Date": [exec.clock.now().format("%a, %d %b %Y %H:%M:%S GMT").to_string()],
                                    "X-Amzn-Trace-Id": [format!("Root=1-{}", uuid::Uuid::new_v4().simple())],
                                    "Content-Type": ["application/json"]
                                },
                                "HttpHeaders": {
                                    "Connection": "keep-alive",
                                    "Content-Length": len,
                                    "Content-Type": "application/json",
                                    "Date": exec.clock.now().format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
                                    "X-Amz-Executed-Version": "$LATEST",
                                    "x-amzn-Remapped-Content-Length": "0",
                                    "x-amzn-RequestId": uuid::Uuid::new_v4().to_string(),
                                    "X-Amzn-Trace-Id": format!("Root=1-{}", uuid::Uuid::new_v4().simple())
                                },
                                "HttpStatusCode": 200
                            },
                            "SdkResponseMetadata": {"RequestId": uuid::Uuid::new_v4().to_string()},
                            "StatusCode": 200
                        });
                        exec.event(
                        success_event,
                        id,
                        Some(name),
                        json!({"resource": "invoke", "resourceType": "lambda", "output": wrapped}),
                    );
                        (wrapped, "lambda".to_string())
                    }
                }
            }
            Target::Service { service } => {
                let integration = exec.registry.service(resource).ok_or_else(|| {
                    Failure::runtime(
                        name,
                        entered,
                        &format!(
                            "The resource '{}' is not registered with this engine",
                            task.resource
                        ),
                    )
                })?;
                let action = task
                    .resource
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let id = exec.event(
                    "TaskScheduled",
                    last(exec),
                    Some(name),
                    json!({"resource": action, "resourceType": service, "parameters": params}),
                );
                let id = exec.event(
                    "TaskStarted",
                    id,
                    Some(name),
                    json!({"resource": action, "resourceType": service}),
                );
                let call_ctx = crate::task::CallContext {
                    execution_arn: exec.context_base["Execution"]["Id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    state_machine_arn: exec.context_base["StateMachine"]["Id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    state: name.to_owned(),
                };
                match with_timeout(
                    exec,
                    timeout,
                    integration.call_in(&call_ctx, resource, params),
                )
                .await
                {
                    None => {
                        exec.event(
                            "TaskTimedOut",
                            id,
                            Some(name),
                            json!({"error": timeout_error}),
                        );
                        return Err(Failure {
                            error: Some(timeout_error.into()),
                            cause: None,
                            catchable: Catchable::Yes,
                            state_failed: None,
                            location: None,
                        });
                    }
                    Some(Err(e)) => {
                        let f = Failure::new(&e.error, e.cause);
                        exec.event(
                            "TaskFailed",
                            id,
                            Some(name),
                            json!({"error": f.error, "cause": f.cause}),
                        );
                        return Err(f);
                    }
                    Some(Ok(v)) if size_of(&v) > MAX_PAYLOAD_BYTES => {
                        return Err(result_too_large(
                            exec,
                            "TaskFailed",
                            id,
                            name,
                            &service,
                            json!({"resource": action, "resourceType": service}),
                        ));
                    }
                    Some(Ok(v)) => {
                        exec.event(
                            success_event,
                            id,
                            Some(name),
                            json!({"resource": action, "resourceType": service, "output": v}),
                        );
                        (v, service)
                    }
                }
            }
        }
    };
    let result = match issued {
        Some(rx) => {
            let d = json!({"resource": action, "resourceType": resource_type});
            let elapsed = (exec.clock.now() - started_at).to_std().unwrap_or_default();
            let remaining = task_timeout.map(|t| Duration::from_secs(t).saturating_sub(elapsed));
            let last_id = last(exec);
            match wait_for_token(exec, rx, remaining, task_heartbeat.map(Duration::from_secs)).await
            {
                Ok(v) => {
                    let mut ok = d;
                    ok["output"] = v.clone();
                    exec.event("TaskSucceeded", last_id, Some(name), ok);
                    v
                }
                Err(f) => {
                    let mut details = d;
                    details["error"] = json!(f.error);
                    details["cause"] = json!(f.cause);
                    let ty =
                        if f.error.as_deref().is_some_and(|e| {
                            e == "States.Timeout" || e == "States.HeartbeatTimeout"
                        }) {
                            "TaskTimedOut"
                        } else {
                            "TaskFailed"
                        };
                    exec.event(ty, last_id, Some(name), details);
                    return Err(f);
                }
            }
        }
        None => result,
    };
    let fields = ResultFields {
        selector: task.result_selector.as_ref(),
        result_path: task.result_path.as_ref(),
    };
    finish_result(state, entered, &label, &fields, raw, result, ctx)
}

/// How a `states:startExecution` task waits for its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildMode {
    /// Request-response: returns once the child has started.
    Start,
    /// `.sync`: waits; the child's input and output as JSON text.
    Sync,
    /// `.sync:2`: waits; the child's input and output as JSON.
    Sync2,
}

fn child_execution_mode(resource: &str) -> Option<ChildMode> {
    let action = resource.split_once(":states:::states:")?.1;
    match action {
        "startExecution" => Some(ChildMode::Start),
        "startExecution.sync" => Some(ChildMode::Sync),
        "startExecution.sync:2" => Some(ChildMode::Sync2),
        _ => None,
    }
}

fn epoch_millis(t: DateTime<Utc>) -> Value {
    json!(t.timestamp_millis())
}

/// `states:startExecution`: starts a registered state machine as a child execution and, for
/// the `.sync` forms, waits for it, giving the result in DescribeExecution's shape.
#[allow(clippy::too_many_arguments)]
async fn start_child_execution(
    exec: &Arc<Exec>,
    state: &str,
    entered: u64,
    resource: &str,
    mode: ChildMode,
    params: &Value,
    timeout: Option<u64>,
    timeout_error: &str,
) -> Result<Value, Failure> {
    let action = resource
        .split_once(":states:::states:")
        .map_or("startExecution", |(_, a)| a)
        .to_string();
    let d = json!({"resource": action, "resourceType": "states"});
    let last = |exec: &Exec| exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
    let mut scheduled = d.clone();
    scheduled["parameters"] = params.clone();
    let id = exec.event("TaskScheduled", last(exec), Some(state), scheduled);
    let id = exec.event("TaskStarted", id, Some(state), d.clone());
    let fail = |error: &str, cause: String| {
        let f = Failure::new(error, cause);
        let mut details = d.clone();
        details["error"] = json!(f.error);
        details["cause"] = json!(f.cause);
        exec.event("TaskFailed", last(exec), Some(state), details);
        f
    };
    let Some(sm_arn) = params.get("StateMachineArn").and_then(Value::as_str) else {
        return Err(Failure::runtime(
            state,
            entered,
            "The field 'StateMachineArn' is required by the states:startExecution integration",
        ));
    };
    let child_name = match params.get("Name") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        Some(other) => {
            return Err(Failure::runtime(
                state,
                entered,
                &format!(
                    "The field 'Name' of the states:startExecution integration must be a non-empty string, not {}",
                    compact(other)
                ),
            ));
        }
    };
    let machine_name = sm_arn
        .split_once(":stateMachine:")
        .map(|(_, rest)| rest.split(':').next().unwrap_or(rest));
    let Some(machine) = machine_name
        .and_then(|n| exec.registry.state_machine(n))
        .cloned()
    else {
        return Err(fail(
            "StepFunctions.StateMachineDoesNotExistException",
            format!(
                "State Machine Does Not Exist: '{sm_arn}' (Service: AWSStepFunctions; Status Code: 400; Error Code: StateMachineDoesNotExist; Request ID: {}; Proxy: null)",
                uuid::Uuid::new_v4()
            ),
        ));
    };
    // Input: JSON as given; text holding JSON is parsed (as States.JsonToString gives it).
    let input = match params.get("Input") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(v) => v.clone(),
    };
    let engine = Engine {
        registry: exec.registry.clone(),
        clock: exec.clock.clone(),
        config: exec.config.clone(),
        tokens: exec.tokens.clone(),
    };
    let child_arn = engine.execution_arn(&machine, &child_name);
    let start = exec.clock.now();
    let started = json!({"ExecutionArn": child_arn, "StartDate": epoch_millis(start)});
    if mode == ChildMode::Start {
        let (name, arn, inp) = (child_name, child_arn, input);
        tokio::spawn(async move {
            engine.run_execution(&machine, name, arn, inp).await;
        });
        let body = json!({"executionArn": started["ExecutionArn"], "startDate": start.timestamp_millis() as f64 / 1000.0});
        let len = compact(&body).len().to_string();
        let request_id = uuid::Uuid::new_v4().to_string();
        let date = start.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let mut out = started;
        out["SdkHttpMetadata"] = json!({
            "AllHttpHeaders": {
                "x-amzn-RequestId": [request_id],
                "connection": ["keep-alive"],
                "Content-Length": [len],
                "Date": [date],
                "Content-Type": ["application/x-amz-json-1.0"]
            },
            "HttpHeaders": {
                "connection": "keep-alive",
                "Content-Length": len,
                "Content-Type": "application/x-amz-json-1.0",
                "Date": date,
                "x-amzn-RequestId": request_id
            },
            "HttpStatusCode": 200
        });
        out["SdkResponseMetadata"] = json!({"RequestId": request_id});
        let mut ok = d;
        ok["output"] = out.clone();
        exec.event("TaskSucceeded", id, Some(state), ok);
        return Ok(out);
    }
    let mut submitted = d.clone();
    submitted["output"] = started;
    let id = exec.event("TaskSubmitted", id, Some(state), submitted);
    let run: BoxFut<ExecutionResult> = Box::pin({
        let (engine, machine, name, arn, inp) = (
            engine.clone(),
            machine.clone(),
            child_name.clone(),
            child_arn.clone(),
            input.clone(),
        );
        async move { engine.run_execution(&machine, name, arn, inp).await }
    });
    let Some(r) = with_timeout(exec, timeout, run).await else {
        let mut details = d;
        details["error"] = json!(timeout_error);
        exec.event("TaskTimedOut", id, Some(state), details);
        return Err(Failure {
            error: Some(timeout_error.to_string()),
            cause: None,
            catchable: Catchable::Yes,
            state_failed: None,
            location: None,
        });
    };
    let payload = |v: &Value| match mode {
        ChildMode::Sync2 => v.clone(),
        _ => Value::String(compact(v)),
    };
    let mut envelope = json!({
        "ExecutionArn": child_arn,
        "Input": payload(&input),
        "InputDetails": {"Included": true},
        "Name": child_name,
        "RedriveCount": 0,
        "StartDate": epoch_millis(start),
        "StateMachineArn": sm_arn,
        "StopDate": epoch_millis(exec.clock.now()),
    });
    match r.status {
        ExecutionStatus::Succeeded => {
            envelope["Status"] = json!("SUCCEEDED");
            envelope["Output"] = payload(r.output.as_ref().unwrap_or(&Value::Null));
            envelope["OutputDetails"] = json!({"Included": true});
            envelope["RedriveStatus"] = json!("NOT_REDRIVABLE");
            envelope["RedriveStatusReason"] =
                json!("Execution is SUCCEEDED and cannot be redriven");
            let mut ok = d;
            ok["output"] = envelope.clone();
            exec.event("TaskSucceeded", id, Some(state), ok);
            Ok(envelope)
        }
        status => {
            envelope["Status"] = json!(match status {
                ExecutionStatus::TimedOut => "TIMED_OUT",
                _ => "FAILED",
            });
            if let Some(e) = &r.error {
                envelope["Error"] = json!(e);
            }
            if let Some(c) = &r.cause {
                envelope["Cause"] = json!(c);
            }
            envelope["RedriveStatus"] = json!("REDRIVABLE");
            Err(fail("States.TaskFailed", compact(&envelope)))
        }
    }
}

/// Waits for the answer to a task token: success, failure, or the timeout / heartbeat
/// timeout (each heartbeat restarts the heartbeat timer). Sleeps on the engine's clock.
async fn wait_for_token(
    exec: &Exec,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<TokenAnswer>,
    timeout: Option<Duration>,
    heartbeat: Option<Duration>,
) -> Result<Value, Failure> {
    let timed_out = |error: &str| Failure {
        error: Some(error.to_string()),
        cause: None,
        catchable: Catchable::Yes,
        state_failed: None,
        location: None,
    };
    let deadline = async {
        match timeout {
            Some(t) => exec.clock.sleep(t).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        let beat = async {
            match heartbeat {
                Some(h) => exec.clock.sleep(h).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            answer = rx.recv() => match answer {
                Some(TokenAnswer::Heartbeat) => {}
                Some(TokenAnswer::Success(v)) => return Ok(v),
                Some(TokenAnswer::Failure { error, cause }) => {
                    return Err(Failure {
                        error,
                        cause,
                        catchable: Catchable::Yes,
                        state_failed: None,
                        location: None,
                    });
                }
                None => return Err(timed_out("States.Timeout")),
            },
            () = &mut deadline => return Err(timed_out("States.Timeout")),
            () = beat => return Err(timed_out("States.HeartbeatTimeout")),
        }
    }
}

async fn run_map_once(
    exec: &Arc<Exec>,
    state: &State,
    map: &MapState,
    raw: &Value,
    ctx: &Ctx<'_>,
    entered: u64,
    vars: &Vars,
) -> Result<(Value, Option<Vars>), Failure> {
    let name = state.name.as_str();
    let effective = apply_path(state, entered, state.input_path.as_ref(), raw, ctx)?;
    let read;
    let items_v;
    let items: &Vec<Value> = if let Some(reader) = &map.item_reader {
        let params = match &reader.parameters {
            Some(t) => eval_template(name, entered, t, &effective, ctx)?,
            None => json!({}),
        };
        let max_items = reader
            .max_items
            .as_ref()
            .map(|m| resolve_num(state, entered, m, "MaxItems", &effective, ctx))
            .transpose()?;
        read = distributed::read_items(exec.registry.object_store(), reader, &params, max_items)
            .await
            .map_err(|cause| Failure {
                state_failed: Some("MapStateFailed"),
                ..Failure::new("States.ItemReaderFailed", cause)
            })?;
        &read
    } else if let Some(t) = &map.items {
        let evaluated = eval_template(name, entered, t, &effective, ctx).map_err(|f| Failure {
            state_failed: Some("MapStateFailed"),
            ..f
        })?;
        read = match evaluated {
            Value::Array(a) => a,
            other => {
                return Err(Failure {
                    state_failed: Some("MapStateFailed"),
                    ..Failure::query(
                        name,
                        entered,
                        "Items",
                        &format!(
                            "The JSONata expression '{}' specified for the field 'Items' returned an unexpected result type. Expected 'array', but was '{}' for value: {}",
                            template_text(t).unwrap_or_default(),
                            json_type(&other),
                            compact(&other)
                        ),
                    )
                });
            }
        };
        &read
    } else {
        items_v = apply_path(state, entered, Some(&map.items_path), &effective, ctx)?;
        let Value::Array(items) = &*items_v else {
            let detail = format!(
                "Map state input must be an array but was: {}",
                compact(&items_v)
            );
            return Err(if state.jsonata.is_some() {
                Failure {
                    state_failed: Some("MapStateFailed"),
                    ..Failure::query(name, entered, "Items", &detail)
                }
            } else {
                Failure::runtime(name, entered, &detail)
            });
        };
        items
    };
    let max = resolve_num(
        state,
        entered,
        &map.max_concurrency,
        "MaxConcurrency",
        &effective,
        ctx,
    )?;
    let prev = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
    exec.event(
        "MapStateStarted",
        prev,
        Some(name),
        json!({"length": items.len()}),
    );
    // A distributed Map resolves its tolerances in the map run, after MapStateStarted.
    let tol_count = map
        .tolerated_count
        .as_ref()
        .map(|t| resolve_num(state, entered, t, "ToleratedFailureCount", &effective, ctx))
        .transpose()?;
    let tol_pct = map
        .tolerated_percentage
        .as_ref()
        .map(|t| {
            resolve_num(
                state,
                entered,
                t,
                "ToleratedFailurePercentage",
                &effective,
                ctx,
            )
        })
        .transpose()?;
    let tolerant = tol_count.is_some() || tol_pct.is_some();
    let children = if map.distributed {
        exec.event("MapRunStarted", prev + 1, Some(name), json!({}));
        Arc::new(exec.child())
    } else {
        exec.clone()
    };
    let map_failed = |f: Failure| {
        if map.distributed {
            let prev = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
            exec.event("MapRunFailed", prev, Some(name), json!({}));
        }
        Failure {
            state_failed: Some("MapStateFailed"),
            ..f
        }
    };

    // Item inputs are computed up front: a bad ItemSelector fails the state before any iteration.
    let mut inputs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        inputs.push(match &map.item_selector {
            Some(t) => eval_template(name, entered, t, &effective, &ctx.with_item(i, item))?,
            None => item.clone(),
        });
    }
    let inputs = match &map.item_batcher {
        Some(b) => {
            let num = |n: &Option<NumOrPath>, field: &str| {
                n.as_ref()
                    .map(|n| resolve_num(state, entered, n, field, &effective, ctx))
                    .transpose()
            };
            let max_items = num(&b.max_items, "MaxItemsPerBatch")?;
            let max_bytes = num(&b.max_bytes, "MaxInputBytesPerBatch")?;
            let batch_input = b
                .batch_input
                .as_ref()
                .map(|t| eval_template(name, entered, t, &effective, ctx))
                .transpose()?;
            distributed::batches(inputs, max_items, max_bytes, batch_input.as_ref())
        }
        None => inputs,
    };
    let c = &exec.config;
    let sm_name = exec.context_base["StateMachine"]["Name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let map_run_arn = format!(
        "arn:{}:states:{}:{}:mapRun:{sm_name}/{name}:{}",
        c.partition,
        c.region,
        c.account_id,
        uuid::Uuid::new_v4()
    );
    let kept_inputs = map.result_writer.as_ref().map(|_| inputs.clone());
    let mut records: Vec<distributed::ChildRecord> = Vec::new();
    let permits = if max == 0 {
        inputs.len().max(1)
    } else {
        usize::try_from(max).unwrap_or(usize::MAX)
    };
    let semaphore = Arc::new(tokio::sync::Semaphore::new(permits));
    let mut set = tokio::task::JoinSet::new();
    let total = inputs.len();
    let mut results: Vec<Value> = vec![Value::Null; total];
    let mut failures = 0u64;
    // Records one finished iteration; `Some(failure)` when it must fail the whole Map.
    type Joined = (usize, Result<Value, Failure>, DateTime<Utc>, DateTime<Utc>);
    let mut record = |joined: Result<Joined, tokio::task::JoinError>| -> Option<Failure> {
        let Ok((i, r, start, stop)) = joined else {
            return None;
        };
        if let Some(inputs) = &kept_inputs {
            let id = uuid::Uuid::new_v4();
            records.push(distributed::ChildRecord {
                execution_arn: format!(
                    "arn:{}:states:{}:{}:execution:{sm_name}/{name}:{id}",
                    c.partition, c.region, c.account_id
                ),
                name: id.to_string(),
                state_machine_arn: format!(
                    "arn:{}:states:{}:{}:stateMachine:{sm_name}/{name}",
                    c.partition, c.region, c.account_id
                ),
                index: i,
                input: inputs.get(i).cloned().unwrap_or_default(),
                outcome: match &r {
                    Ok(v) => Ok(v.clone()),
                    Err(f) => Err((f.error.clone(), f.cause.clone())),
                },
                start,
                stop,
            });
        }
        match r {
            Ok(v) => {
                if let Some(slot) = results.get_mut(i) {
                    *slot = v;
                }
                None
            }
            Err(f) if !tolerant => Some(f),
            Err(f) => {
                failures += 1;
                if let Some(slot) = results.get_mut(i) {
                    *slot = f.as_value();
                }
                None
            }
        }
    };
    for (i, input) in inputs.into_iter().enumerate() {
        // Acquired in index order, so MaxConcurrency 1 runs the items one after the other.
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        tokio::task::yield_now().await;
        while let Some(joined) = set.try_join_next() {
            if let Some(f) = record(joined) {
                set.abort_all();
                return Err(map_failed(f));
            }
        }
        let exec2 = children.clone();
        let program = map.processor.clone();
        let state_name = state.name.clone();
        let vars = vars.clone();
        set.spawn(async move {
            let start = exec2.clock.now();
            let prev = exec2.history.lock().map(|h| h.len() as u64).unwrap_or(0);
            exec2.event(
                "MapIterationStarted",
                prev,
                Some(&state_name),
                json!({"name": state_name, "index": i}),
            );
            let r = run_program(exec2.clone(), program, input, vars, false).await;
            let prev = exec2.history.lock().map(|h| h.len() as u64).unwrap_or(0);
            let ty = if r.is_ok() {
                "MapIterationSucceeded"
            } else {
                "MapIterationFailed"
            };
            exec2.event(
                ty,
                prev,
                Some(&state_name),
                json!({"name": state_name, "index": i}),
            );
            drop(permit);
            (i, r, start, exec2.clock.now())
        });
        // A failed item stops the Map before more items start.
        while let Some(joined) = set.try_join_next() {
            if let Some(f) = record(joined) {
                set.abort_all();
                return Err(map_failed(f));
            }
        }
    }
    while let Some(joined) = set.join_next().await {
        if let Some(f) = record(joined) {
            set.abort_all();
            return Err(map_failed(f));
        }
    }
    if tolerant && failures > 0 {
        let over_count = tol_count.is_some_and(|c| failures > c);
        let pct = failures as f64 * 100.0 / total.max(1) as f64;
        let over_pct = tol_pct.is_some_and(|p| pct > p as f64);
        let within = match (tol_count, tol_pct) {
            (Some(_), Some(_)) => !(over_count && over_pct),
            _ => !(over_count || over_pct),
        };
        if !within {
            return Err(map_failed(Failure::new(
                "States.ExceedToleratedFailureThreshold",
                "The specified tolerated failure threshold was exceeded",
            )));
        }
    }
    let prev = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
    let prev = if map.distributed {
        exec.event("MapRunSucceeded", prev, Some(name), json!({}))
    } else {
        prev
    };
    let result = match &map.result_writer {
        Some(writer) => {
            records.sort_by_key(|r| r.start);
            match &writer.location {
                Some(t) => {
                    let params = eval_template(name, entered, t, &effective, ctx)?;
                    distributed::write_results(
                        exec.registry.object_store(),
                        &params,
                        &map_run_arn,
                        &records,
                        writer.config,
                    )
                    .await
                    .map_err(|cause| map_failed(Failure::new("States.ResultWriterFailed", cause)))?
                }
                // WriterConfig alone: the shaped results are the state's result, in item order.
                None => {
                    records.sort_by_key(|r| r.index);
                    let transformation = writer
                        .config
                        .map_or(Transformation::Compact, |c| c.transformation);
                    Value::Array(distributed::transform_results(&records, transformation))
                }
            }
        }
        None => Value::Array(results),
    };
    exec.event("MapStateSucceeded", prev, Some(name), json!({}));
    let fields = ResultFields {
        selector: map.result_selector.as_ref(),
        result_path: map.result_path.as_ref(),
    };
    finish_result(state, entered, name, &fields, raw, result, ctx)
}

async fn run_parallel_once(
    exec: &Arc<Exec>,
    state: &State,
    par: &ParallelState,
    raw: &Value,
    ctx: &Ctx<'_>,
    entered: u64,
    vars: &Vars,
) -> Result<(Value, Option<Vars>), Failure> {
    let name = state.name.as_str();
    let effective = apply_path(state, entered, state.input_path.as_ref(), raw, ctx)?;
    let input = match &par.parameters {
        Some(t) => eval_template(name, entered, t, &effective, ctx)?,
        None => effective.into_owned(),
    };
    let prev = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
    exec.event("ParallelStateStarted", prev, Some(name), json!({}));
    let mut set = tokio::task::JoinSet::new();
    for (i, branch) in par.branches.iter().enumerate() {
        let run = run_program(
            exec.clone(),
            branch.clone(),
            input.clone(),
            vars.clone(),
            true,
        );
        set.spawn(async move { (i, run.await) });
    }
    let mut results = vec![Value::Null; par.branches.len()];
    while let Some(joined) = set.join_next().await {
        let Ok((i, r)) = joined else { continue };
        match r {
            Ok(v) => {
                if let Some(slot) = results.get_mut(i) {
                    *slot = v;
                }
            }
            Err(f) => {
                // The first failed branch fails the state with its own error; the others stop.
                set.abort_all();
                return Err(Failure {
                    state_failed: Some("ParallelStateFailed"),
                    ..f
                });
            }
        }
    }
    let fields = ResultFields {
        selector: par.result_selector.as_ref(),
        result_path: par.result_path.as_ref(),
    };
    finish_result(
        state,
        entered,
        name,
        &fields,
        raw,
        Value::Array(results),
        ctx,
    )
}

/// A task result over the payload quota: the task's failed event, then the error AWS gives.
fn result_too_large(
    exec: &Exec,
    event_type: &str,
    previous: u64,
    state: &str,
    label: &str,
    mut details: Value,
) -> Failure {
    let f = Failure::new(
        "States.DataLimitExceeded",
        format!(
            "The state/task '{label}' returned a result with a size exceeding the maximum number of bytes service limit."
        ),
    );
    details["error"] = json!(f.error);
    details["cause"] = json!(f.cause);
    exec.event(event_type, previous, Some(state), details);
    f
}

/// Records the pending `EvaluationFailed` event of a JSONata evaluation failure.
fn record_evaluation_failed(exec: &Exec, state: &str, f: &mut Failure) {
    if let Some(location) = f.location.take() {
        let prev = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
        exec.event(
            "EvaluationFailed",
            prev,
            Some(state),
            json!({"error": f.error, "cause": f.cause, "location": location, "state": state}),
        );
    }
}

/// Records the pending `<Type>StateFailed` event of a failure that will not be retried.
fn record_state_failed(exec: &Exec, state: &str, f: &mut Failure) {
    if let Some(ty) = f.state_failed.take() {
        let prev = exec.history.lock().map(|h| h.len() as u64).unwrap_or(0);
        exec.event(ty, prev, Some(state), json!({}));
    }
}
