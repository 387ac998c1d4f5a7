//! Parsing and static checks of a state machine definition (JSONPath and JSONata query
//! languages; `{% … %}` expressions are parsed here, so a syntax error names state and field).
//!
//! Everything that AWS rejects at `CreateStateMachine` time is rejected here, so that a
//! definition that loads locally also deploys: unknown fields, missing or dangling transitions,
//! unreachable states, malformed paths, and misplaced `States.ALL`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::intrinsics::{Intrinsic, looks_like_intrinsic};
use crate::jsonata::Expr;
use crate::jsonpath::JsonPath;

/// A definition that AWS would refuse, naming where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// The text is not JSON, or not a JSON object.
    #[error("definition is not a JSON object: {0}")]
    NotJson(String),
    /// A field is missing, unknown, or has a bad value.
    #[error("{}field '{field}': {message}", state.as_ref().map(|s| format!("state '{s}', ")).unwrap_or_default())]
    Invalid {
        /// The state, or `None` for a top-level field.
        state: Option<String>,
        /// The field (for nested fields, a `/`-separated path such as `Retry/0/ErrorEquals`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A `${Name}` DefinitionSubstitution placeholder without a value.
    #[error("definition substitution '${{{0}}}' has no value")]
    UnresolvedSubstitution(String),
}

fn invalid(
    state: Option<&str>,
    field: impl Into<String>,
    message: impl Into<String>,
) -> DefinitionError {
    DefinitionError::Invalid {
        state: state.map(str::to_string),
        field: field.into(),
        message: message.into(),
    }
}

/// A state machine's type (CreateStateMachine `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkflowType {
    /// Exactly-once, up to a year, with an execution history.
    #[default]
    Standard,
    /// At most five minutes; execution ARNs of the form `…:express:machine:name:id`, no
    /// `RedriveCount` in the context object, and no `.sync` / `.waitForTaskToken` tasks.
    Express,
}

/// A parsed, checked state machine.
#[derive(Debug, Clone)]
pub struct StateMachine {
    pub(crate) name: String,
    pub(crate) program: Arc<Program>,
    pub(crate) timeout_seconds: Option<u64>,
    pub(crate) workflow_type: WorkflowType,
}

impl StateMachine {
    /// Parses a definition (Amazon States Language, JSONPath) and runs the static checks.
    pub fn parse(json: &str) -> Result<Self, DefinitionError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| DefinitionError::NotJson(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(DefinitionError::NotJson("expected an object".into()));
        };
        let jsonata = match obj.get("QueryLanguage") {
            None => false,
            Some(v) if v == "JSONPath" => false,
            Some(v) if v == "JSONata" => true,
            Some(_) => {
                return Err(invalid(
                    None,
                    "QueryLanguage",
                    "must be JSONPath or JSONata",
                ));
            }
        };
        let program = parse_program(
            &obj,
            None,
            &[
                "StartAt",
                "States",
                "Comment",
                "Version",
                "TimeoutSeconds",
                "QueryLanguage",
            ],
            jsonata,
        )?;
        let timeout_seconds =
            match obj.get("TimeoutSeconds") {
                None => None,
                Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    invalid(None, "TimeoutSeconds", "must be a positive integer")
                })?),
            };
        Ok(Self {
            name: "StateMachine".into(),
            program: Arc::new(program),
            timeout_seconds,
            workflow_type: WorkflowType::Standard,
        })
    }

    /// Makes this an Express (or Standard) state machine. Express machines refuse the
    /// `.sync` and `.waitForTaskToken` integration patterns, as AWS does.
    pub fn with_type(mut self, workflow_type: WorkflowType) -> Result<Self, DefinitionError> {
        if workflow_type == WorkflowType::Express {
            if let Some((state, resource)) = find_resource(&self.program, |r| {
                r.ends_with(".sync") || r.contains(".sync:") || r.ends_with(".waitForTaskToken")
            }) {
                return Err(invalid(
                    Some(&state),
                    "Resource",
                    format!(
                        "Express state machines do not support the integration pattern of '{resource}'"
                    ),
                ));
            }
        }
        self.workflow_type = workflow_type;
        Ok(self)
    }

    /// Standard or Express.
    pub fn workflow_type(&self) -> WorkflowType {
        self.workflow_type
    }

    /// Names the machine (used in `$$.StateMachine.Name` and the ARNs).
    #[must_use]
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many states the machine has, counting those inside Map and Parallel states.
    pub fn state_count(&self) -> usize {
        fn count(p: &Program) -> usize {
            p.states
                .values()
                .map(|s| {
                    1 + match &s.kind {
                        Kind::Map(m) => count(&m.processor),
                        Kind::Parallel(par) => par.branches.iter().map(|b| count(b)).sum(),
                        _ => 0,
                    }
                })
                .sum()
        }
        count(&self.program)
    }
}

/// The first Task (state name, resource) whose resource satisfies `pred`, at any depth.
fn find_resource(p: &Program, pred: impl Fn(&str) -> bool + Copy) -> Option<(String, String)> {
    let mut names: Vec<&String> = p.states.keys().collect();
    names.sort();
    for n in names {
        let st = &p.states[n];
        let found = match &st.kind {
            Kind::Task(t) if pred(&t.resource) => Some((st.name.clone(), t.resource.clone())),
            Kind::Map(m) => find_resource(&m.processor, pred),
            Kind::Parallel(par) => par.branches.iter().find_map(|b| find_resource(b, pred)),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// A set of states with a start: the machine itself or a Map's item processor.
#[derive(Debug)]
pub(crate) struct Program {
    pub start_at: String,
    pub states: HashMap<String, Arc<State>>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub name: String,
    pub input_path: Option<JsonPath>,
    pub output_path: Option<JsonPath>,
    pub next: Option<String>,
    /// Variables the state sets when it completes (`Assign`).
    pub assign: Option<Template>,
    pub kind: Kind,
    /// Set for a state in the JSONata query language: its `Output` and per-choice outputs.
    /// (Its `Arguments` live where `Parameters` would, its `Items` in [`MapState::items`].)
    pub jsonata: Option<Box<JsonataFields>>,
}

/// The fields only a JSONata state has.
#[derive(Debug, Default)]
pub(crate) struct JsonataFields {
    /// `Output` (for a Choice state: the output when the Default is taken).
    pub output: Option<Template>,
    /// `Choices[i].Output`.
    pub choice_outputs: Vec<Option<Template>>,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Pass {
        result: Option<Value>,
        parameters: Option<Template>,
        result_path: Option<JsonPath>,
    },
    Task(Box<TaskState>),
    Choice {
        /// Each rule, its `Next`, and its own `Assign`.
        choices: Vec<(Rule, String, Option<Template>)>,
        default: Option<String>,
    },
    Wait(Wait),
    Parallel(Box<ParallelState>),
    Succeed,
    Fail {
        error: Option<StrOrPath>,
        cause: Option<StrOrPath>,
    },
    Map(Box<MapState>),
}

impl Kind {
    /// The history event types for entering and leaving a state of this type.
    pub fn event_types(&self) -> (&'static str, &'static str) {
        match self {
            Kind::Pass { .. } => ("PassStateEntered", "PassStateExited"),
            Kind::Task(_) => ("TaskStateEntered", "TaskStateExited"),
            Kind::Choice { .. } => ("ChoiceStateEntered", "ChoiceStateExited"),
            Kind::Succeed => ("SucceedStateEntered", "SucceedStateExited"),
            Kind::Fail { .. } => ("FailStateEntered", "FailStateExited"),
            Kind::Map(_) => ("MapStateEntered", "MapStateExited"),
            Kind::Wait(_) => ("WaitStateEntered", "WaitStateExited"),
            Kind::Parallel(_) => ("ParallelStateEntered", "ParallelStateExited"),
        }
    }
}

/// How long a Wait state waits: exactly one of the four fields.
#[derive(Debug)]
pub(crate) enum Wait {
    Seconds(u64),
    Timestamp(chrono::DateTime<chrono::FixedOffset>),
    SecondsPath(JsonPath),
    TimestampPath(JsonPath),
    /// JSONata `Seconds` (`seconds: true`) or `Timestamp` given as an expression.
    Expr {
        seconds: bool,
        template: Template,
    },
}

#[derive(Debug)]
pub(crate) struct ParallelState {
    pub branches: Vec<Arc<Program>>,
    pub parameters: Option<Template>,
    pub result_selector: Option<Template>,
    pub result_path: Option<JsonPath>,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
}

#[derive(Debug)]
pub(crate) enum StrOrPath {
    Str(String),
    Path(JsonPath),
    /// A JSONata `{% … %}` expression.
    Expr(Template),
}

#[derive(Debug, Clone)]
pub(crate) enum NumOrPath {
    Num(u64),
    Path(JsonPath),
    /// A JSONata `{% … %}` expression.
    Expr(Template),
}

#[derive(Debug)]
pub(crate) struct TaskState {
    pub resource: String,
    pub parameters: Option<Template>,
    pub result_selector: Option<Template>,
    pub result_path: Option<JsonPath>,
    pub timeout: Option<NumOrPath>,
    pub heartbeat: Option<NumOrPath>,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
}

#[derive(Debug)]
pub(crate) struct MapState {
    pub items_path: JsonPath,
    /// JSONata `Items` (an array, or an expression giving one).
    pub items: Option<Template>,
    pub item_selector: Option<Template>,
    pub processor: Arc<Program>,
    /// `ProcessorConfig.Mode: DISTRIBUTED`: iterations run as child executions.
    pub distributed: bool,
    pub max_concurrency: NumOrPath,
    pub tolerated_count: Option<NumOrPath>,
    pub tolerated_percentage: Option<NumOrPath>,
    pub result_selector: Option<Template>,
    pub result_path: Option<JsonPath>,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
    /// Where a distributed Map reads its items from, instead of its input.
    pub item_reader: Option<ItemReader>,
    /// How a distributed Map groups items into one child execution's input.
    pub item_batcher: Option<ItemBatcher>,
    /// How a distributed Map shapes its results, and where it writes them.
    pub result_writer: Option<ResultWriter>,
}

/// `ResultWriter`: `WriterConfig` alone shapes the state's output; `Resource` with
/// `Parameters` (or JSONata `Arguments`) exports the results; all three export shaped results.
#[derive(Debug)]
pub(crate) struct ResultWriter {
    /// Bucket and Prefix; `None` when the results are not exported.
    pub location: Option<Template>,
    /// `WriterConfig`, if given.
    pub config: Option<WriterConfig>,
}

/// `WriterConfig.OutputType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputType {
    Json,
    JsonLines,
}

/// `WriterConfig.Transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transformation {
    /// Each child execution's record (ARN, input, output, status, dates…).
    None,
    /// Each child execution's output.
    Compact,
    /// Outputs, an array output spread into its elements.
    Flatten,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriterConfig {
    pub output_type: OutputType,
    pub transformation: Transformation,
}

/// What an ItemReader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReaderSource {
    /// `s3:getObject` with `ReaderConfig.InputType` JSON (an array).
    Json,
    /// `s3:getObject`, JSONL: one JSON value a line.
    JsonLines,
    /// `s3:getObject`, CSV: one object per row, values as text.
    Csv,
    /// `s3:listObjectsV2`: one item per object.
    Listing,
}

#[derive(Debug)]
pub(crate) struct ItemReader {
    pub source: ReaderSource,
    /// Bucket and Key (or Prefix).
    pub parameters: Option<Template>,
    /// `CSVHeaders` when `CSVHeaderLocation` is `GIVEN`; `None` reads the first row.
    pub csv_headers: Option<Vec<String>>,
    pub csv_delimiter: u8,
    pub max_items: Option<NumOrPath>,
}

#[derive(Debug)]
pub(crate) struct ItemBatcher {
    pub max_items: Option<NumOrPath>,
    pub max_bytes: Option<NumOrPath>,
    pub batch_input: Option<Template>,
}

#[derive(Debug, Clone)]
pub(crate) struct Retrier {
    pub error_equals: Vec<String>,
    pub interval_seconds: f64,
    pub max_attempts: u32,
    pub backoff_rate: f64,
    pub max_delay_seconds: Option<f64>,
    pub jitter_full: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Catcher {
    pub error_equals: Vec<String>,
    pub result_path: Option<JsonPath>,
    pub assign: Option<Template>,
    /// JSONata `Output` of the catcher (default: the error output).
    pub output: Option<Template>,
    pub next: String,
}

/// A payload template (Parameters, ResultSelector, ItemSelector).
#[derive(Debug, Clone)]
pub(crate) enum Template {
    Literal(Value),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
    Path {
        field: String,
        path: JsonPath,
    },
    Intrinsic {
        field: String,
        text: String,
        call: Intrinsic,
    },
    /// A JSONata `{% … %}` string; `field` is the whole field path (`Output/result`).
    Jsonata {
        field: String,
        expr: Arc<Expr>,
    },
}

/// A Choice rule.
#[derive(Debug, Clone)]
pub(crate) enum Rule {
    /// JSONata `Condition`: a boolean literal or expression.
    Condition(Template),
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Cmp {
        variable: JsonPath,
        op: Op,
        operand: Operand,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    String,
    Numeric,
    Boolean,
    Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Compare(Family, Cmp),
    StringMatches,
    IsNull,
    IsPresent,
    IsNumeric,
    IsString,
    IsBoolean,
    IsTimestamp,
}

#[derive(Debug, Clone)]
pub(crate) enum Operand {
    Value(Value),
    Path(JsonPath),
}

const COMMON: &[&str] = &[
    "Type",
    "Comment",
    "InputPath",
    "OutputPath",
    "Next",
    "End",
    "Assign",
    "QueryLanguage",
];

/// The fields of each state type in the JSONata query language.
fn jsonata_fields(ty: &str) -> Option<&'static [&'static str]> {
    Some(match ty {
        "Pass" => &[
            "Type",
            "Comment",
            "QueryLanguage",
            "Next",
            "End",
            "Assign",
            "Output",
        ],
        "Task" => &[
            "Type",
            "Comment",
            "QueryLanguage",
            "Next",
            "End",
            "Assign",
            "Output",
            "Resource",
            "Arguments",
            "Retry",
            "Catch",
            "TimeoutSeconds",
            "HeartbeatSeconds",
            "Credentials",
        ],
        "Choice" => &[
            "Type",
            "Comment",
            "QueryLanguage",
            "Choices",
            "Default",
            "Assign",
            "Output",
        ],
        "Wait" => &[
            "Type",
            "Comment",
            "QueryLanguage",
            "Next",
            "End",
            "Assign",
            "Output",
            "Seconds",
            "Timestamp",
        ],
        "Succeed" => &["Type", "Comment", "QueryLanguage", "Output"],
        "Fail" => &["Type", "Comment", "QueryLanguage", "Error", "Cause"],
        "Parallel" => &[
            "Type",
            "Comment",
            "QueryLanguage",
            "Next",
            "End",
            "Assign",
            "Output",
            "Branches",
            "Arguments",
            "Retry",
            "Catch",
        ],
        "Map" => &[
            "Type",
            "Comment",
            "QueryLanguage",
            "Next",
            "End",
            "Assign",
            "Output",
            "Items",
            "ItemSelector",
            "ItemProcessor",
            "Iterator",
            "MaxConcurrency",
            "ToleratedFailureCount",
            "ToleratedFailurePercentage",
            "Retry",
            "Catch",
            "ItemReader",
            "ItemBatcher",
            "ResultWriter",
            "Label",
        ],
        _ => return None,
    })
}

fn allowed_fields(ty: &str) -> Option<Vec<&'static str>> {
    let extra: &[&str] = match ty {
        "Pass" => &["Result", "ResultPath", "Parameters"],
        "Task" => &[
            "Resource",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "Retry",
            "Catch",
            "TimeoutSeconds",
            "TimeoutSecondsPath",
            "HeartbeatSeconds",
            "HeartbeatSecondsPath",
            "Credentials",
        ],
        "Choice" => &["Choices", "Default", "Assign"],
        "Wait" => &["Seconds", "Timestamp", "SecondsPath", "TimestampPath"],
        "Parallel" => &[
            "Branches",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "Retry",
            "Catch",
        ],
        "Succeed" => &[],
        "Fail" => &["Error", "ErrorPath", "Cause", "CausePath"],
        "Map" => &[
            "ItemsPath",
            "ItemSelector",
            "Parameters",
            "ItemProcessor",
            "Iterator",
            "MaxConcurrency",
            "MaxConcurrencyPath",
            "ToleratedFailureCount",
            "ToleratedFailureCountPath",
            "ToleratedFailurePercentage",
            "ToleratedFailurePercentagePath",
            "ResultSelector",
            "ResultPath",
            "Retry",
            "Catch",
            "ItemReader",
            "ItemBatcher",
            "ResultWriter",
            "Label",
        ],
        _ => return None,
    };
    let mut all: Vec<&'static str> = match ty {
        "Choice" => vec![
            "Type",
            "Comment",
            "InputPath",
            "OutputPath",
            "QueryLanguage",
        ],
        "Succeed" => vec![
            "Type",
            "Comment",
            "InputPath",
            "OutputPath",
            "QueryLanguage",
        ],
        "Fail" => vec!["Type", "Comment", "QueryLanguage"],
        _ => COMMON.to_vec(),
    };
    all.extend_from_slice(extra);
    Some(all)
}

fn parse_program(
    obj: &Map<String, Value>,
    parent: Option<&str>,
    allowed: &[&str],
    top_jsonata: bool,
) -> Result<Program, DefinitionError> {
    let field = |f: &str| match parent {
        Some(_) => format!("ItemProcessor/{f}"),
        None => f.to_string(),
    };
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(parent, field(k), "unknown field"));
        }
    }
    let start_at = obj
        .get("StartAt")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(parent, field("StartAt"), "required string field is missing"))?
        .to_string();
    let states_obj = obj
        .get("States")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(parent, field("States"), "required object field is missing"))?;
    if states_obj.is_empty() {
        return Err(invalid(
            parent,
            field("States"),
            "must contain at least one state",
        ));
    }
    let mut states = HashMap::new();
    for (name, v) in states_obj {
        if name.is_empty() || name.chars().count() > 80 {
            return Err(invalid(
                Some(name),
                "Type",
                "state names must be 1 to 80 characters long",
            ));
        }
        let st = parse_state(name, v, top_jsonata)?;
        states.insert(name.clone(), Arc::new(st));
    }
    if !states.contains_key(&start_at) {
        return Err(invalid(
            parent,
            field("StartAt"),
            format!("names the unknown state '{start_at}'"),
        ));
    }
    // Every transition must name a state of this program.
    for st in states.values() {
        for (f, target) in transitions(st) {
            if !states.contains_key(&target) {
                return Err(invalid(
                    Some(&st.name),
                    f,
                    format!("names the unknown state '{target}'"),
                ));
            }
        }
    }
    // Unreachable states are refused by AWS.
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([start_at.clone()]);
    while let Some(n) = queue.pop_front() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(st) = states.get(&n) {
            queue.extend(transitions(st).into_iter().map(|(_, t)| t));
        }
    }
    let mut unreachable: Vec<&String> = states.keys().filter(|k| !seen.contains(*k)).collect();
    unreachable.sort();
    if let Some(u) = unreachable.first() {
        return Err(invalid(
            Some(u),
            "Type",
            "state is not reachable from StartAt",
        ));
    }
    Ok(Program { start_at, states })
}

fn transitions(st: &State) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(n) = &st.next {
        out.push(("Next".to_string(), n.clone()));
    }
    match &st.kind {
        Kind::Choice { choices, default } => {
            for (i, (_, n, _)) in choices.iter().enumerate() {
                out.push((format!("Choices/{i}/Next"), n.clone()));
            }
            if let Some(d) = default {
                out.push(("Default".to_string(), d.clone()));
            }
        }
        Kind::Task(t) => {
            for (i, c) in t.catch.iter().enumerate() {
                out.push((format!("Catch/{i}/Next"), c.next.clone()));
            }
        }
        Kind::Map(m) => {
            for (i, c) in m.catch.iter().enumerate() {
                out.push((format!("Catch/{i}/Next"), c.next.clone()));
            }
        }
        Kind::Parallel(p) => {
            for (i, c) in p.catch.iter().enumerate() {
                out.push((format!("Catch/{i}/Next"), c.next.clone()));
            }
        }
        _ => {}
    }
    out
}

fn path_field(
    state: &str,
    obj: &Map<String, Value>,
    f: &str,
) -> Result<Option<Option<JsonPath>>, DefinitionError> {
    match obj.get(f) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => JsonPath::parse(s)
            .map(|p| Some(Some(p)))
            .map_err(|e| invalid(Some(state), f, e.0)),
        Some(_) => Err(invalid(Some(state), f, "must be a string or null")),
    }
}

fn result_path_field(
    state: &str,
    obj: &Map<String, Value>,
    f: &str,
) -> Result<Option<JsonPath>, DefinitionError> {
    let p = path_field(state, obj, f)?;
    match p {
        None => JsonPath::parse("$")
            .map(Some)
            .map_err(|e| invalid(Some(state), f, e.0)),
        Some(None) => Ok(None),
        Some(Some(p)) if p.is_reference() => Ok(Some(p)),
        Some(Some(p)) => Err(invalid(
            Some(state),
            f,
            format!("'{}' is not a valid reference path", p.text()),
        )),
    }
}

fn string_field(
    state: &str,
    obj: &Map<String, Value>,
    f: &str,
) -> Result<Option<String>, DefinitionError> {
    match obj.get(f) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(Some(state), f, "must be a string")),
    }
}

fn uint_or_path(
    state: &str,
    obj: &Map<String, Value>,
    f: &str,
    min: u64,
) -> Result<Option<NumOrPath>, DefinitionError> {
    let path_name = format!("{f}Path");
    match (obj.get(f), obj.get(&path_name)) {
        (Some(_), Some(_)) => Err(invalid(
            Some(state),
            f,
            format!("cannot be combined with {path_name}"),
        )),
        (Some(v @ Value::String(t)), None) if is_jsonata(t) => {
            compile_jsonata(state, f, v).map(|t| Some(NumOrPath::Expr(t)))
        }
        (Some(v), None) => v
            .as_u64()
            .filter(|n| *n >= min)
            .map(|n| Some(NumOrPath::Num(n)))
            .ok_or_else(|| invalid(Some(state), f, format!("must be an integer >= {min}"))),
        (None, Some(Value::String(s))) => JsonPath::parse(s)
            .map(|p| Some(NumOrPath::Path(p)))
            .map_err(|e| invalid(Some(state), path_name.clone(), e.0)),
        (None, Some(_)) => Err(invalid(
            Some(state),
            path_name.clone(),
            "must be a path string",
        )),
        (None, None) => Ok(None),
    }
}

fn parse_state(name: &str, v: &Value, top_jsonata: bool) -> Result<State, DefinitionError> {
    let s = Some(name);
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(s, "Type", "a state must be a JSON object"))?;
    let ty = obj
        .get("Type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(s, "Type", "required string field is missing"))?;
    let jsonata = match obj.get("QueryLanguage") {
        None => top_jsonata,
        Some(v) if v == "JSONata" => true,
        Some(v) if v == "JSONPath" => {
            if top_jsonata {
                return Err(invalid(
                    s,
                    "QueryLanguage",
                    "a state cannot use JSONPath when the state machine uses JSONata",
                ));
            }
            false
        }
        Some(_) => return Err(invalid(s, "QueryLanguage", "must be JSONPath or JSONata")),
    };
    let allowed = if jsonata {
        jsonata_fields(ty).map(<[&str]>::to_vec)
    } else {
        allowed_fields(ty)
    }
    .ok_or_else(|| invalid(s, "Type", format!("unknown state type '{ty}'")))?;
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(
                s,
                k.clone(),
                format!(
                    "unknown field for a {ty} state in the {} query language",
                    if jsonata { "JSONata" } else { "JSONPath" }
                ),
            ));
        }
    }
    let next = string_field(name, obj, "Next")?;
    let end = match obj.get("End") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid(s, "End", "must be a boolean")),
    };
    let terminal_by_type = matches!(ty, "Choice" | "Succeed" | "Fail");
    if !terminal_by_type {
        match (&next, end) {
            (Some(_), true) => {
                return Err(invalid(s, "Next", "a state cannot have both Next and End"));
            }
            (None, false) => {
                return Err(invalid(
                    s,
                    "Next",
                    "a non-terminal state needs Next or End: true",
                ));
            }
            _ => {}
        }
    }
    let input_path = match path_field(name, obj, "InputPath")? {
        None => Some(JsonPath::parse("$").map_err(|e| invalid(s, "InputPath", e.0))?),
        Some(p) => p,
    };
    let output_path = match path_field(name, obj, "OutputPath")? {
        None => Some(JsonPath::parse("$").map_err(|e| invalid(s, "OutputPath", e.0))?),
        Some(p) => p,
    };
    let template = |f: &str| -> Result<Option<Template>, DefinitionError> {
        obj.get(f)
            .map(|v| {
                if jsonata {
                    compile_jsonata(name, f, v)
                } else {
                    compile_template(name, f, v)
                }
            })
            .transpose()
    };
    // JSONata states take their input as it is: the path fields are `$`.
    let (input_path, output_path) = if jsonata {
        let root = JsonPath::parse("$").map_err(|e| invalid(s, "Type", e.0))?;
        (Some(root.clone()), Some(root))
    } else {
        (input_path, output_path)
    };
    let mut jsonata_fields = JsonataFields::default();
    if jsonata {
        jsonata_fields.output = template("Output")?;
    }
    let kind = match ty {
        "Pass" => Kind::Pass {
            result: obj.get("Result").cloned(),
            parameters: template("Parameters")?,
            result_path: result_path_field(name, obj, "ResultPath")?,
        },
        "Task" => {
            let resource = string_field(name, obj, "Resource")?
                .ok_or_else(|| invalid(s, "Resource", "required string field is missing"))?;
            if !resource.starts_with("arn:") {
                return Err(invalid(
                    s,
                    "Resource",
                    format!("'{resource}' is not an ARN"),
                ));
            }
            let timeout = uint_or_path(name, obj, "TimeoutSeconds", 1)?;
            let heartbeat = uint_or_path(name, obj, "HeartbeatSeconds", 1)?;
            let parameters = if jsonata {
                template("Arguments")?
            } else {
                template("Parameters")?
            };
            if let (Some(NumOrPath::Num(t)), Some(NumOrPath::Num(h))) = (&timeout, &heartbeat) {
                if h >= t {
                    return Err(invalid(
                        s,
                        "HeartbeatSeconds",
                        "must be smaller than TimeoutSeconds",
                    ));
                }
            }
            Kind::Task(Box::new(TaskState {
                resource,
                parameters,
                result_selector: template("ResultSelector")?,
                result_path: result_path_field(name, obj, "ResultPath")?,
                timeout,
                heartbeat,
                retry: parse_retry(name, obj.get("Retry"))?,
                catch: parse_catch(name, obj.get("Catch"), jsonata)?,
            }))
        }
        "Choice" => {
            if next.is_some() || obj.contains_key("End") {
                return Err(invalid(s, "Next", "a Choice state cannot have Next or End"));
            }
            let arr = obj
                .get("Choices")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty());
            let arr = arr.ok_or_else(|| invalid(s, "Choices", "must be a non-empty array"))?;
            let mut choices = Vec::new();
            for (i, c) in arr.iter().enumerate() {
                let field = format!("Choices/{i}");
                let cobj = c
                    .as_object()
                    .ok_or_else(|| invalid(s, field.clone(), "must be an object"))?;
                let n = cobj.get("Next").and_then(Value::as_str).ok_or_else(|| {
                    invalid(
                        s,
                        format!("{field}/Next"),
                        "a top-level choice rule needs Next",
                    )
                })?;
                if jsonata {
                    let (rule, assign, output) = parse_jsonata_choice(name, &field, cobj)?;
                    jsonata_fields.choice_outputs.push(output);
                    choices.push((rule, n.to_string(), assign));
                    continue;
                }
                let assign = cobj
                    .get("Assign")
                    .map(|v| compile_template(name, &format!("{field}/Assign"), v))
                    .transpose()?;
                choices.push((parse_rule(name, &field, cobj, true)?, n.to_string(), assign));
            }
            Kind::Choice {
                choices,
                default: string_field(name, obj, "Default")?,
            }
        }
        "Succeed" => Kind::Succeed,
        "Fail" => {
            let sp = |f: &str| -> Result<Option<StrOrPath>, DefinitionError> {
                if let Some(Value::String(t)) = obj.get(f) {
                    if is_jsonata(t) {
                        return compile_jsonata(name, f, &obj[f]).map(|t| Some(StrOrPath::Expr(t)));
                    }
                }
                let path_f = format!("{f}Path");
                match (
                    string_field(name, obj, f)?,
                    string_field(name, obj, &path_f)?,
                ) {
                    (Some(_), Some(_)) => {
                        Err(invalid(s, f, format!("cannot be combined with {path_f}")))
                    }
                    (Some(v), None) => Ok(Some(StrOrPath::Str(v))),
                    (None, Some(p)) => JsonPath::parse(&p)
                        .map(|p| Some(StrOrPath::Path(p)))
                        .map_err(|e| invalid(s, path_f.clone(), e.0)),
                    (None, None) => Ok(None),
                }
            };
            Kind::Fail {
                error: sp("Error")?,
                cause: sp("Cause")?,
            }
        }
        "Map" => Kind::Map(Box::new(parse_map(
            name,
            obj,
            &template,
            jsonata,
            top_jsonata,
        )?)),
        "Wait" => Kind::Wait(parse_wait(name, obj)?),
        "Parallel" => Kind::Parallel(Box::new(parse_parallel(
            name,
            obj,
            &template,
            jsonata,
            top_jsonata,
        )?)),
        _ => return Err(invalid(s, "Type", format!("unknown state type '{ty}'"))),
    };
    Ok(State {
        name: name.to_string(),
        input_path,
        output_path,
        next,
        assign: template("Assign")?,
        kind,
        jsonata: jsonata.then(|| Box::new(jsonata_fields)),
    })
}

/// A JSONata choice rule: `Condition` (with `Next`, `Assign`, `Output`, `Comment`).
fn parse_jsonata_choice(
    state: &str,
    field: &str,
    o: &Map<String, Value>,
) -> Result<(Rule, Option<Template>, Option<Template>), DefinitionError> {
    let s = Some(state);
    for k in o.keys() {
        if !["Condition", "Next", "Assign", "Output", "Comment"].contains(&k.as_str()) {
            return Err(invalid(
                s,
                format!("{field}/{k}"),
                "unknown field for a JSONata choice rule",
            ));
        }
    }
    let cond_field = format!("{field}/Condition");
    let condition = match o.get("Condition") {
        Some(Value::Bool(b)) => Template::Literal(Value::Bool(*b)),
        Some(v @ Value::String(t)) if is_jsonata(t) => compile_jsonata(state, &cond_field, v)?,
        Some(_) => {
            return Err(invalid(
                s,
                cond_field,
                "must be a boolean or a JSONata expression {% … %}",
            ));
        }
        None => return Err(invalid(s, cond_field, "required field is missing")),
    };
    let sub = |f: &str| {
        o.get(f)
            .map(|v| compile_jsonata(state, &format!("{field}/{f}"), v))
            .transpose()
    };
    Ok((Rule::Condition(condition), sub("Assign")?, sub("Output")?))
}

/// Whether a string is a whole JSONata expression `{% … %}`.
pub(crate) fn is_jsonata(s: &str) -> bool {
    s.len() >= 4 && s.starts_with("{%") && s.ends_with("%}")
}

/// A JSONata payload template: `{% … %}` strings anywhere become expressions (parsed now, so
/// bad syntax is refused with the state and field), everything else is literal.
pub(crate) fn compile_jsonata(
    state: &str,
    field: &str,
    v: &Value,
) -> Result<Template, DefinitionError> {
    match v {
        Value::String(t) if is_jsonata(t) => {
            let text = t[2..t.len() - 2].trim();
            let expr = Expr::parse(text).map_err(|e| {
                invalid(
                    Some(state),
                    field,
                    format!("the JSONata expression '{text}' is not valid: {e}"),
                )
            })?;
            Ok(Template::Jsonata {
                field: field.to_string(),
                expr: Arc::new(expr),
            })
        }
        Value::Object(m) => Ok(Template::Object(
            m.iter()
                .map(|(k, x)| {
                    Ok((
                        k.clone(),
                        compile_jsonata(state, &format!("{field}/{k}"), x)?,
                    ))
                })
                .collect::<Result<_, DefinitionError>>()?,
        )),
        Value::Array(a) => Ok(Template::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| compile_jsonata(state, &format!("{field}/{i}"), x))
                .collect::<Result<_, _>>()?,
        )),
        other => Ok(Template::Literal(other.clone())),
    }
}

fn parse_wait(name: &str, obj: &Map<String, Value>) -> Result<Wait, DefinitionError> {
    let s = Some(name);
    let present: Vec<&str> = ["Seconds", "Timestamp", "SecondsPath", "TimestampPath"]
        .into_iter()
        .filter(|f| obj.contains_key(*f))
        .collect();
    let [field] = present.as_slice() else {
        return Err(invalid(
            s,
            "Seconds",
            "a Wait state needs exactly one of Seconds, Timestamp, SecondsPath, TimestampPath",
        ));
    };
    let v = &obj[*field];
    if let Value::String(t) = v {
        if is_jsonata(t) {
            return Ok(Wait::Expr {
                seconds: *field == "Seconds",
                template: compile_jsonata(name, field, v)?,
            });
        }
    }
    match *field {
        "Seconds" => v
            .as_u64()
            .map(Wait::Seconds)
            .ok_or_else(|| invalid(s, "Seconds", "must be a non-negative integer")),
        "Timestamp" => v
            .as_str()
            .and_then(crate::choice::parse_timestamp)
            .map(Wait::Timestamp)
            .ok_or_else(|| {
                invalid(
                    s,
                    "Timestamp",
                    "must be an ISO-8601 extended offset date-time string",
                )
            }),
        f => {
            let text = v
                .as_str()
                .ok_or_else(|| invalid(s, f, "must be a path string"))?;
            let p = JsonPath::parse(text).map_err(|e| invalid(s, f, e.0))?;
            Ok(if f == "SecondsPath" {
                Wait::SecondsPath(p)
            } else {
                Wait::TimestampPath(p)
            })
        }
    }
}

fn parse_parallel(
    name: &str,
    obj: &Map<String, Value>,
    template: &impl Fn(&str) -> Result<Option<Template>, DefinitionError>,
    jsonata: bool,
    top_jsonata: bool,
) -> Result<ParallelState, DefinitionError> {
    let s = Some(name);
    let arr = obj
        .get("Branches")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| invalid(s, "Branches", "must be a non-empty array"))?;
    let mut branches = Vec::with_capacity(arr.len());
    for (i, b) in arr.iter().enumerate() {
        let bobj = b
            .as_object()
            .ok_or_else(|| invalid(s, format!("Branches/{i}"), "must be an object"))?;
        branches.push(Arc::new(parse_program(
            bobj,
            s,
            &["StartAt", "States", "Comment"],
            top_jsonata,
        )?));
    }
    Ok(ParallelState {
        branches,
        parameters: if jsonata {
            template("Arguments")?
        } else {
            template("Parameters")?
        },
        result_selector: template("ResultSelector")?,
        result_path: result_path_field(name, obj, "ResultPath")?,
        retry: parse_retry(name, obj.get("Retry"))?,
        catch: parse_catch(name, obj.get("Catch"), jsonata)?,
    })
}

fn parse_map(
    name: &str,
    obj: &Map<String, Value>,
    template: &impl Fn(&str) -> Result<Option<Template>, DefinitionError>,
    jsonata: bool,
    top_jsonata: bool,
) -> Result<MapState, DefinitionError> {
    let s = Some(name);
    let (pf, proc_v) = match (obj.get("ItemProcessor"), obj.get("Iterator")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                s,
                "ItemProcessor",
                "cannot be combined with Iterator",
            ));
        }
        (Some(v), None) => ("ItemProcessor", v),
        (None, Some(v)) => ("Iterator", v),
        (None, None) => return Err(invalid(s, "ItemProcessor", "required field is missing")),
    };
    let pobj = proc_v
        .as_object()
        .ok_or_else(|| invalid(s, pf, "must be an object"))?;
    let distributed = pobj
        .get("ProcessorConfig")
        .and_then(|c| c.get("Mode"))
        .is_some_and(|m| m == "DISTRIBUTED");
    if let Some(cfg) = pobj.get("ProcessorConfig") {
        let mode = cfg.get("Mode").and_then(Value::as_str).unwrap_or("INLINE");
        if mode != "INLINE" && mode != "DISTRIBUTED" {
            return Err(invalid(
                s,
                format!("{pf}/ProcessorConfig/Mode"),
                format!("unknown mode '{mode}'"),
            ));
        }
    }
    let processor = parse_program(
        pobj,
        s,
        &["StartAt", "States", "Comment", "ProcessorConfig"],
        top_jsonata,
    )?;
    if obj.contains_key("ItemSelector") && obj.contains_key("Parameters") {
        return Err(invalid(
            s,
            "ItemSelector",
            "cannot be combined with Parameters",
        ));
    }
    let item_selector = match template("ItemSelector")? {
        Some(t) => Some(t),
        None => template("Parameters")?,
    };
    let items_path = match path_field(name, obj, "ItemsPath")? {
        Some(Some(p)) => p,
        Some(None) => return Err(invalid(s, "ItemsPath", "cannot be null")),
        None => JsonPath::parse("$").map_err(|e| invalid(s, "ItemsPath", e.0))?,
    };
    if let Some(Value::Number(n)) = obj.get("ToleratedFailurePercentage") {
        if !n.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)) {
            return Err(invalid(
                s,
                "ToleratedFailurePercentage",
                "must be between 0 and 100",
            ));
        }
    }
    let tolerated_percentage = match (
        obj.get("ToleratedFailurePercentage"),
        obj.get("ToleratedFailurePercentagePath"),
    ) {
        (Some(v @ Value::String(t)), None) if is_jsonata(t) => Some(NumOrPath::Expr(
            compile_jsonata(name, "ToleratedFailurePercentage", v)?,
        )),
        (Some(v), None) => Some(NumOrPath::Num(
            v.as_f64()
                .map(|f| f.ceil() as u64)
                .ok_or_else(|| invalid(s, "ToleratedFailurePercentage", "must be a number"))?,
        )),
        _ => uint_or_path(name, obj, "ToleratedFailurePercentage", 0)?,
    };
    for f in ["ItemReader", "ItemBatcher", "ResultWriter"] {
        if !distributed && obj.contains_key(f) {
            return Err(invalid(
                s,
                f,
                "is only allowed when ProcessorConfig.Mode is DISTRIBUTED",
            ));
        }
    }
    Ok(MapState {
        items_path,
        items: if jsonata { template("Items")? } else { None },
        item_selector,
        processor: Arc::new(processor),
        distributed,
        max_concurrency: uint_or_path(name, obj, "MaxConcurrency", 0)?.unwrap_or(NumOrPath::Num(0)),
        tolerated_count: uint_or_path(name, obj, "ToleratedFailureCount", 0)?,
        tolerated_percentage,
        result_selector: template("ResultSelector")?,
        result_path: result_path_field(name, obj, "ResultPath")?,
        retry: parse_retry(name, obj.get("Retry"))?,
        catch: parse_catch(name, obj.get("Catch"), jsonata)?,
        item_reader: parse_item_reader(name, obj.get("ItemReader"), jsonata)?,
        item_batcher: parse_item_batcher(name, obj.get("ItemBatcher"), jsonata)?,
        result_writer: parse_result_writer(name, obj.get("ResultWriter"), jsonata)?,
    })
}

fn sub_object<'a>(
    state: &str,
    field: &str,
    v: &'a Value,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, DefinitionError> {
    let m = v
        .as_object()
        .ok_or_else(|| invalid(Some(state), field, "must be an object"))?;
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(
                Some(state),
                format!("{field}/{k}"),
                "unknown field",
            ));
        }
    }
    Ok(m)
}

/// `Parameters` in a JSONPath state, `Arguments` (JSONata templates) in a JSONata one; the
/// other is refused, as AWS's validation does.
fn payload_field(
    state: &str,
    parent: &str,
    m: &Map<String, Value>,
    jsonata: bool,
) -> Result<Option<Template>, DefinitionError> {
    let (wanted, other) = if jsonata {
        ("Arguments", "Parameters")
    } else {
        ("Parameters", "Arguments")
    };
    if m.contains_key(other) {
        return Err(invalid(
            Some(state),
            format!("{parent}/{other}"),
            format!(
                "is not allowed when the query language is {}; use {wanted}",
                if jsonata { "JSONata" } else { "JSONPath" }
            ),
        ));
    }
    let field = format!("{parent}/{wanted}");
    match m.get(wanted) {
        None => Ok(None),
        Some(v) if jsonata => compile_jsonata(state, &field, v).map(Some),
        Some(v) => compile_template(state, &field, v).map(Some),
    }
}

/// A number field of a sub-object (`ItemReader/ReaderConfig/MaxItems`), in either language.
fn sub_uint(
    state: &str,
    parent: &str,
    m: &Map<String, Value>,
    f: &str,
    min: u64,
) -> Result<Option<NumOrPath>, DefinitionError> {
    match m.get(f) {
        Some(v @ Value::String(t)) if is_jsonata(t) => {
            compile_jsonata(state, &format!("{parent}/{f}"), v).map(|t| Some(NumOrPath::Expr(t)))
        }
        _ => uint_or_path(state, m, f, min).map_err(|mut e| {
            if let DefinitionError::Invalid { field, .. } = &mut e {
                *field = format!("{parent}/{field}");
            }
            e
        }),
    }
}

fn parse_item_reader(
    state: &str,
    v: Option<&Value>,
    jsonata: bool,
) -> Result<Option<ItemReader>, DefinitionError> {
    let Some(v) = v else { return Ok(None) };
    let s = Some(state);
    let m = sub_object(
        state,
        "ItemReader",
        v,
        &["Resource", "ReaderConfig", "Parameters", "Arguments"],
    )?;
    let resource = m
        .get("Resource")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(s, "ItemReader/Resource", "required string field is missing"))?;
    let empty = Map::new();
    let cfg = match m.get("ReaderConfig") {
        Some(c) => sub_object(
            state,
            "ItemReader/ReaderConfig",
            c,
            &[
                "InputType",
                "CSVHeaderLocation",
                "CSVHeaders",
                "CSVDelimiter",
                "MaxItems",
                "MaxItemsPath",
            ],
        )?,
        None => &empty,
    };
    let input_type = cfg.get("InputType").and_then(Value::as_str);
    let action = resource.rsplit(':').next().unwrap_or_default();
    let source = match (action, input_type) {
        ("listObjectsV2", None) => ReaderSource::Listing,
        ("getObject", Some("JSON")) => ReaderSource::Json,
        ("getObject", Some("JSONL")) => ReaderSource::JsonLines,
        ("getObject", Some("CSV")) => ReaderSource::Csv,
        ("getObject", other) => {
            return Err(invalid(
                s,
                "ItemReader/ReaderConfig/InputType",
                format!("unsupported input type {other:?} (JSON, JSONL or CSV)"),
            ));
        }
        _ => {
            return Err(invalid(
                s,
                "ItemReader/Resource",
                format!("unsupported resource '{resource}' (s3:getObject or s3:listObjectsV2)"),
            ));
        }
    };
    let csv_headers = match cfg.get("CSVHeaderLocation").and_then(Value::as_str) {
        None | Some("FIRST_ROW") => None,
        Some("GIVEN") => Some(
            cfg.get("CSVHeaders")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .map(|h| h.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    invalid(
                        s,
                        "ItemReader/ReaderConfig/CSVHeaders",
                        "must be an array of strings when CSVHeaderLocation is GIVEN",
                    )
                })?,
        ),
        Some(other) => {
            return Err(invalid(
                s,
                "ItemReader/ReaderConfig/CSVHeaderLocation",
                format!("unknown value '{other}' (FIRST_ROW or GIVEN)"),
            ));
        }
    };
    let csv_delimiter = match cfg.get("CSVDelimiter").and_then(Value::as_str) {
        None | Some("COMMA") => b',',
        Some("PIPE") => b'|',
        Some("SEMICOLON") => b';',
        Some("SPACE") => b' ',
        Some("TAB") => b'\t',
        Some(other) => {
            return Err(invalid(
                s,
                "ItemReader/ReaderConfig/CSVDelimiter",
                format!("unknown delimiter '{other}'"),
            ));
        }
    };
    let parameters = payload_field(state, "ItemReader", m, jsonata)?;
    Ok(Some(ItemReader {
        source,
        parameters,
        csv_headers,
        csv_delimiter,
        max_items: sub_uint(state, "ItemReader/ReaderConfig", cfg, "MaxItems", 0)?,
    }))
}

fn parse_item_batcher(
    state: &str,
    v: Option<&Value>,
    jsonata: bool,
) -> Result<Option<ItemBatcher>, DefinitionError> {
    let Some(v) = v else { return Ok(None) };
    let m = sub_object(
        state,
        "ItemBatcher",
        v,
        &[
            "MaxItemsPerBatch",
            "MaxItemsPerBatchPath",
            "MaxInputBytesPerBatch",
            "MaxInputBytesPerBatchPath",
            "BatchInput",
        ],
    )?;
    let batcher = ItemBatcher {
        max_items: sub_uint(state, "ItemBatcher", m, "MaxItemsPerBatch", 1)?,
        max_bytes: sub_uint(state, "ItemBatcher", m, "MaxInputBytesPerBatch", 1)?,
        batch_input: match m.get("BatchInput") {
            Some(b) if jsonata => Some(compile_jsonata(state, "ItemBatcher/BatchInput", b)?),
            Some(b) => Some(compile_template(state, "ItemBatcher/BatchInput", b)?),
            None => None,
        },
    };
    if batcher.max_items.is_none() && batcher.max_bytes.is_none() {
        return Err(invalid(
            Some(state),
            "ItemBatcher",
            "needs MaxItemsPerBatch or MaxInputBytesPerBatch",
        ));
    }
    Ok(Some(batcher))
}

fn parse_result_writer(
    state: &str,
    v: Option<&Value>,
    jsonata: bool,
) -> Result<Option<ResultWriter>, DefinitionError> {
    let Some(v) = v else { return Ok(None) };
    let s = Some(state);
    let m = sub_object(
        state,
        "ResultWriter",
        v,
        &["Resource", "Parameters", "Arguments", "WriterConfig"],
    )?;
    let config = match m.get("WriterConfig") {
        None => None,
        Some(c) => {
            let c = sub_object(
                state,
                "ResultWriter/WriterConfig",
                c,
                &["OutputType", "Transformation"],
            )?;
            let output_type = match c.get("OutputType").and_then(Value::as_str) {
                Some("JSON") => OutputType::Json,
                Some("JSONL") => OutputType::JsonLines,
                other => {
                    return Err(invalid(
                        s,
                        "ResultWriter/WriterConfig/OutputType",
                        format!("must be JSON or JSONL, not {other:?}"),
                    ));
                }
            };
            let transformation = match c.get("Transformation").and_then(Value::as_str) {
                Some("NONE") => Transformation::None,
                Some("COMPACT") => Transformation::Compact,
                Some("FLATTEN") => Transformation::Flatten,
                other => {
                    return Err(invalid(
                        s,
                        "ResultWriter/WriterConfig/Transformation",
                        format!("must be NONE, COMPACT or FLATTEN, not {other:?}"),
                    ));
                }
            };
            Some(WriterConfig {
                output_type,
                transformation,
            })
        }
    };
    let location = payload_field(state, "ResultWriter", m, jsonata)?;
    match (m.get("Resource"), &location) {
        (None, None) if config.is_some() => {}
        (None, None) => {
            return Err(invalid(
                s,
                "ResultWriter",
                "needs WriterConfig, or Resource with its bucket and prefix, or all three",
            ));
        }
        (Some(r), Some(_)) if r.as_str().is_some_and(|r| r.ends_with(":s3:putObject")) => {}
        (Some(_), Some(_)) => {
            return Err(invalid(
                s,
                "ResultWriter/Resource",
                "must be arn:aws:states:::s3:putObject",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                s,
                "ResultWriter/Resource",
                "required field is missing",
            ));
        }
        (Some(_), None) => {
            return Err(invalid(
                s,
                format!(
                    "ResultWriter/{}",
                    if jsonata { "Arguments" } else { "Parameters" }
                ),
                "required field is missing",
            ));
        }
    }
    Ok(Some(ResultWriter { location, config }))
}

fn error_equals(
    state: &str,
    field: &str,
    v: Option<&Value>,
    last: bool,
) -> Result<Vec<String>, DefinitionError> {
    let f = format!("{field}/ErrorEquals");
    let arr = v
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            invalid(
                Some(state),
                f.clone(),
                "must be a non-empty array of strings",
            )
        })?;
    let names: Vec<String> = arr
        .iter()
        .map(|e| e.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            invalid(
                Some(state),
                f.clone(),
                "must be a non-empty array of strings",
            )
        })?;
    if names.iter().any(|n| n == "States.ALL") {
        if names.len() != 1 {
            return Err(invalid(
                Some(state),
                f,
                "States.ALL must appear alone in ErrorEquals",
            ));
        }
        if !last {
            return Err(invalid(
                Some(state),
                f,
                "States.ALL must be in the last retrier or catcher",
            ));
        }
    }
    Ok(names)
}

fn parse_retry(state: &str, v: Option<&Value>) -> Result<Vec<Retrier>, DefinitionError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(Some(state), "Retry", "must be an array"))?;
    let mut out = Vec::new();
    for (i, r) in arr.iter().enumerate() {
        let f = format!("Retry/{i}");
        let o = r
            .as_object()
            .ok_or_else(|| invalid(Some(state), f.clone(), "must be an object"))?;
        for k in o.keys() {
            if ![
                "ErrorEquals",
                "IntervalSeconds",
                "MaxAttempts",
                "BackoffRate",
                "MaxDelaySeconds",
                "JitterStrategy",
                "Comment",
            ]
            .contains(&k.as_str())
            {
                return Err(invalid(Some(state), format!("{f}/{k}"), "unknown field"));
            }
        }
        let num = |k: &str, min: f64| -> Result<Option<f64>, DefinitionError> {
            o.get(k)
                .map(|v| {
                    v.as_f64().filter(|n| *n >= min).ok_or_else(|| {
                        invalid(
                            Some(state),
                            format!("{f}/{k}"),
                            format!("must be a number >= {min}"),
                        )
                    })
                })
                .transpose()
        };
        let interval = o
            .get("IntervalSeconds")
            .map(|v| v.as_u64().filter(|n| *n >= 1));
        if let Some(None) = interval {
            return Err(invalid(
                Some(state),
                format!("{f}/IntervalSeconds"),
                "must be a positive integer",
            ));
        }
        let max_attempts = match o.get("MaxAttempts") {
            None => 3,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    invalid(
                        Some(state),
                        format!("{f}/MaxAttempts"),
                        "must be a non-negative integer",
                    )
                })?,
        };
        let jitter_full = match o.get("JitterStrategy").map(|v| v.as_str()) {
            None | Some(Some("NONE")) => false,
            Some(Some("FULL")) => true,
            Some(_) => {
                return Err(invalid(
                    Some(state),
                    format!("{f}/JitterStrategy"),
                    "must be FULL or NONE",
                ));
            }
        };
        out.push(Retrier {
            error_equals: error_equals(state, &f, o.get("ErrorEquals"), i + 1 == arr.len())?,
            interval_seconds: interval.flatten().map_or(1.0, |n| n as f64),
            max_attempts,
            backoff_rate: num("BackoffRate", 1.0)?.unwrap_or(2.0),
            max_delay_seconds: num("MaxDelaySeconds", 1.0)?,
            jitter_full,
        });
    }
    Ok(out)
}

fn parse_catch(
    state: &str,
    v: Option<&Value>,
    jsonata: bool,
) -> Result<Vec<Catcher>, DefinitionError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(Some(state), "Catch", "must be an array"))?;
    let mut out = Vec::new();
    for (i, c) in arr.iter().enumerate() {
        let f = format!("Catch/{i}");
        let o = c
            .as_object()
            .ok_or_else(|| invalid(Some(state), f.clone(), "must be an object"))?;
        for k in o.keys() {
            let allowed: &[&str] = if jsonata {
                &["ErrorEquals", "Output", "Next", "Comment", "Assign"]
            } else {
                &["ErrorEquals", "ResultPath", "Next", "Comment", "Assign"]
            };
            if !allowed.contains(&k.as_str()) {
                return Err(invalid(Some(state), format!("{f}/{k}"), "unknown field"));
            }
        }
        let next = o.get("Next").and_then(Value::as_str).ok_or_else(|| {
            invalid(
                Some(state),
                format!("{f}/Next"),
                "required string field is missing",
            )
        })?;
        out.push(Catcher {
            error_equals: error_equals(state, &f, o.get("ErrorEquals"), i + 1 == arr.len())?,
            result_path: result_path_field(state, o, "ResultPath").map_err(|e| match e {
                DefinitionError::Invalid { state, message, .. } => DefinitionError::Invalid {
                    state,
                    field: format!("{f}/ResultPath"),
                    message,
                },
                other => other,
            })?,
            assign: o
                .get("Assign")
                .map(|v| {
                    if jsonata {
                        compile_jsonata(state, &format!("{f}/Assign"), v)
                    } else {
                        compile_template(state, &format!("{f}/Assign"), v)
                    }
                })
                .transpose()?,
            output: o
                .get("Output")
                .map(|v| compile_jsonata(state, &format!("{f}/Output"), v))
                .transpose()?,
            next: next.to_string(),
        });
    }
    Ok(out)
}

pub(crate) fn compile_template(
    state: &str,
    field: &str,
    v: &Value,
) -> Result<Template, DefinitionError> {
    match v {
        Value::Object(m) => {
            let mut out = Vec::new();
            for (k, val) in m {
                let here = format!("{field}/{k}");
                if let Some(stripped) = k.strip_suffix(".$") {
                    let Value::String(text) = val else {
                        return Err(invalid(
                            Some(state),
                            here,
                            "the value of a field ending in '.$' must be a path or an intrinsic function call",
                        ));
                    };
                    let t = if looks_like_intrinsic(text) {
                        let call = Intrinsic::parse(text)
                            .map_err(|e| invalid(Some(state), here.clone(), e))?;
                        Template::Intrinsic {
                            field: k.clone(),
                            text: text.clone(),
                            call,
                        }
                    } else {
                        let path = JsonPath::parse(text)
                            .map_err(|e| invalid(Some(state), here.clone(), e.0))?;
                        Template::Path {
                            field: k.clone(),
                            path,
                        }
                    };
                    out.push((stripped.to_string(), t));
                } else {
                    out.push((k.clone(), compile_template(state, &here, val)?));
                }
            }
            Ok(Template::Object(out))
        }
        Value::Array(a) => Ok(Template::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| compile_template(state, &format!("{field}/{i}"), x))
                .collect::<Result<_, _>>()?,
        )),
        other => Ok(Template::Literal(other.clone())),
    }
}

fn parse_rule(
    state: &str,
    field: &str,
    o: &Map<String, Value>,
    top: bool,
) -> Result<Rule, DefinitionError> {
    let s = Some(state);
    if !top && o.contains_key("Next") {
        return Err(invalid(
            s,
            format!("{field}/Next"),
            "a nested choice rule cannot have Next",
        ));
    }
    let nested = |v: &Value, f: &str| -> Result<Rule, DefinitionError> {
        let no = v
            .as_object()
            .ok_or_else(|| invalid(s, f, "must be an object"))?;
        parse_rule(state, f, no, false)
    };
    let allowed_meta = |k: &str| k == "Next" || k == "Comment" || (top && k == "Assign");
    if let Some(v) = o.get("And").or_else(|| o.get("Or")) {
        let is_and = o.contains_key("And");
        let key = if is_and { "And" } else { "Or" };
        if let Some(k) = o.keys().find(|k| k.as_str() != key && !allowed_meta(k)) {
            return Err(invalid(
                s,
                format!("{field}/{k}"),
                format!("unexpected field next to {key}"),
            ));
        }
        let arr = v
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid(s, format!("{field}/{key}"), "must be a non-empty array"))?;
        let rules = arr
            .iter()
            .enumerate()
            .map(|(i, r)| nested(r, &format!("{field}/{key}/{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if is_and {
            Rule::And(rules)
        } else {
            Rule::Or(rules)
        });
    }
    if let Some(v) = o.get("Not") {
        if let Some(k) = o.keys().find(|k| k.as_str() != "Not" && !allowed_meta(k)) {
            return Err(invalid(
                s,
                format!("{field}/{k}"),
                "unexpected field next to Not",
            ));
        }
        return Ok(Rule::Not(Box::new(nested(v, &format!("{field}/Not"))?)));
    }
    let variable = o.get("Variable").and_then(Value::as_str).ok_or_else(|| {
        invalid(
            s,
            format!("{field}/Variable"),
            "required string field is missing",
        )
    })?;
    let variable =
        JsonPath::parse(variable).map_err(|e| invalid(s, format!("{field}/Variable"), e.0))?;
    let ops: Vec<&String> = o
        .keys()
        .filter(|k| !allowed_meta(k) && k.as_str() != "Variable")
        .collect();
    let [op_name] = ops.as_slice() else {
        return Err(invalid(s, field, "a comparison needs exactly one operator"));
    };
    let f = format!("{field}/{op_name}");
    let v = &o[op_name.as_str()];
    let (base, is_path) = match op_name.strip_suffix("Path") {
        Some(b) if b != "Is" && !b.is_empty() && b != "StringMatches" => (b, true),
        _ => (op_name.as_str(), false),
    };
    let op = match base {
        "StringMatches" => Op::StringMatches,
        "IsNull" => Op::IsNull,
        "IsPresent" => Op::IsPresent,
        "IsNumeric" => Op::IsNumeric,
        "IsString" => Op::IsString,
        "IsBoolean" => Op::IsBoolean,
        "IsTimestamp" => Op::IsTimestamp,
        other => {
            let fams = [
                ("String", Family::String),
                ("Numeric", Family::Numeric),
                ("Boolean", Family::Boolean),
                ("Timestamp", Family::Timestamp),
            ];
            let (fam, rest) = fams
                .iter()
                .find_map(|(p, fam)| other.strip_prefix(p).map(|r| (*fam, r)))
                .ok_or_else(|| invalid(s, f.clone(), "unknown comparison operator"))?;
            let cmp = match rest {
                "Equals" => Cmp::Eq,
                "LessThan" => Cmp::Lt,
                "GreaterThan" => Cmp::Gt,
                "LessThanEquals" => Cmp::Le,
                "GreaterThanEquals" => Cmp::Ge,
                _ => return Err(invalid(s, f.clone(), "unknown comparison operator")),
            };
            if fam == Family::Boolean && cmp != Cmp::Eq {
                return Err(invalid(s, f.clone(), "unknown comparison operator"));
            }
            Op::Compare(fam, cmp)
        }
    };
    let operand = if is_path {
        let p = v
            .as_str()
            .ok_or_else(|| invalid(s, f.clone(), "must be a path string"))?;
        Operand::Path(JsonPath::parse(p).map_err(|e| invalid(s, f.clone(), e.0))?)
    } else {
        let ok = match op {
            Op::Compare(Family::String, _) | Op::StringMatches => v.is_string(),
            Op::Compare(Family::Numeric, _) => v.is_number(),
            Op::Compare(Family::Boolean, _) => v.is_boolean(),
            Op::Compare(Family::Timestamp, _) => v
                .as_str()
                .is_some_and(|t| crate::choice::parse_timestamp(t).is_some()),
            _ => v.is_boolean(),
        };
        if !ok {
            return Err(invalid(
                s,
                f.clone(),
                "operand has the wrong type for this operator",
            ));
        }
        Operand::Value(v.clone())
    };
    Ok(Rule::Cmp {
        variable,
        op,
        operand,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(def: &str) -> DefinitionError {
        StateMachine::parse(def).unwrap_err()
    }

    fn field_of(e: &DefinitionError) -> (Option<String>, String) {
        match e {
            DefinitionError::Invalid { state, field, .. } => (state.clone(), field.clone()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn accepts_a_good_definition() {
        let sm = StateMachine::parse(
            r#"{"StartAt":"A","States":{"A":{"Type":"Pass","Next":"B"},"B":{"Type":"Choice","Choices":[{"Variable":"$.x","NumericEquals":1,"Next":"C"}],"Default":"D"},"C":{"Type":"Succeed"},"D":{"Type":"Fail","Error":"E"}}}"#,
        );
        assert!(sm.is_ok(), "{sm:?}");
    }

    #[test]
    fn names_state_and_field() {
        let cases = [
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Pass","End":true,"Bogus":1}}}"#,
                (Some("A"), "Bogus"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Pass"}}}"#,
                (Some("A"), "Next"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Pass","Next":"Z"}}}"#,
                (Some("A"), "Next"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Pass","End":true},"B":{"Type":"Pass","End":true}}}"#,
                (Some("B"), "Type"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Pass","End":true,"InputPath":"$.a["}}}"#,
                (Some("A"), "InputPath"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Pass","End":true,"ResultPath":"$.a[*]"}}}"#,
                (Some("A"), "ResultPath"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Pass","End":true,"Parameters":{"x.$":"nope"}}}}"#,
                (Some("A"), "Parameters/x.$"),
            ),
            (
                r#"{"StartAt":"Z","States":{"A":{"Type":"Pass","End":true}}}"#,
                (None, "StartAt"),
            ),
            (
                r#"{"StartAt":"A","Bogus":1,"States":{"A":{"Type":"Pass","End":true}}}"#,
                (None, "Bogus"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"arn:aws:states:::x:y","End":true,"Retry":[{"ErrorEquals":["States.ALL"]},{"ErrorEquals":["X"]}]}}}"#,
                (Some("A"), "Retry/0/ErrorEquals"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"arn:aws:states:::x:y","End":true,"Catch":[{"ErrorEquals":["States.ALL","X"],"Next":"A"}]}}}"#,
                (Some("A"), "Catch/0/ErrorEquals"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Choice","Choices":[{"Variable":"$.x","NumericEquals":"1","Next":"A"}]}}}"#,
                (Some("A"), "Choices/0/NumericEquals"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Choice","Choices":[{"Not":{"Variable":"$.x","IsNull":true,"Next":"A"},"Next":"A"}]}}}"#,
                (Some("A"), "Choices/0/Not/Next"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Wait","Seconds":1,"SecondsPath":"$.s","End":true}}}"#,
                (Some("A"), "Seconds"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Wait","End":true}}}"#,
                (Some("A"), "Seconds"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Wait","Seconds":-1,"End":true}}}"#,
                (Some("A"), "Seconds"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Wait","Timestamp":"2016-03-14 01:59:00Z","End":true}}}"#,
                (Some("A"), "Timestamp"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Wait","TimestampPath":"x","End":true}}}"#,
                (Some("A"), "TimestampPath"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Parallel","Branches":[],"End":true}}}"#,
                (Some("A"), "Branches"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Parallel","Branches":[{"StartAt":"B","States":{"B":{"Type":"Pass","Next":"C"}}}],"End":true}}}"#,
                (Some("B"), "Next"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"arn:aws:lambda:us-east-1:1:function:f","TimeoutSeconds":5,"HeartbeatSeconds":5,"End":true}}}"#,
                (Some("A"), "HeartbeatSeconds"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Pass","Assign":{"x.$":"States.Nope("},"End":true}}}"#,
                (Some("A"), "Assign/x.$"),
            ),
            (
                r#"{"StartAt":"A","States":{"A":{"Type":"Fail","Assign":{"x":1}}}}"#,
                (Some("A"), "Assign"),
            ),
        ];
        for (def, (state, field)) in cases {
            let e = err(def);
            assert_eq!(
                field_of(&e),
                (state.map(str::to_string), field.to_string()),
                "{def}: {e}"
            );
        }
        assert!(matches!(err("[1]"), DefinitionError::NotJson(_)));
        assert!(matches!(err("{"), DefinitionError::NotJson(_)));
    }

    #[test]
    fn accepts_jsonata_definitions() {
        let def = r#"{"QueryLanguage":"JSONata","StartAt":"T","States":{
            "T":{"Type":"Task","Resource":"arn:aws:states:::lambda:invoke",
                 "Arguments":{"FunctionName":"f","Payload":"{% $states.input %}"},
                 "Output":{"r":"{% $states.result.Payload %}"},
                 "Assign":{"n":"{% $count($states.input.items) %}"},
                 "TimeoutSeconds":"{% $states.input.t %}",
                 "Catch":[{"ErrorEquals":["States.ALL"],"Output":"{% $states.errorOutput %}","Next":"F"}],
                 "Next":"C"},
            "C":{"Type":"Choice","Choices":[{"Condition":"{% $n > 1 %}","Next":"M","Output":{"many":true}}],"Default":"W"},
            "M":{"Type":"Map","Items":"{% $states.input.items %}","ItemSelector":{"v":"{% $states.context.Map.Item.Value %}"},
                 "ItemProcessor":{"StartAt":"P","States":{"P":{"Type":"Pass","End":true}}},"End":true},
            "W":{"Type":"Wait","Seconds":"{% 1 + 1 %}","Next":"F"},
            "F":{"Type":"Fail","Error":"{% 'E' %}","Cause":"literal"}}}"#;
        let m = StateMachine::parse(def).unwrap();
        assert_eq!(m.state_count(), 6);
        // A JSONata state inside a JSONPath machine.
        StateMachine::parse(
            r#"{"StartAt":"A","States":{"A":{"QueryLanguage":"JSONata","Type":"Pass","Output":"{% 1 %}","End":true}}}"#,
        )
        .unwrap();
    }

    #[test]
    fn refuses_bad_jsonata_naming_state_and_field() {
        let cases = [
            (
                r#"{"QueryLanguage":"JSONata","StartAt":"A","States":{"A":{"Type":"Pass","Output":{"x":"{% $states.input. %}"},"End":true}}}"#,
                (Some("A"), "Output/x"),
            ),
            (
                r#"{"QueryLanguage":"JSONata","StartAt":"A","States":{"A":{"Type":"Pass","Assign":{"v":["{% (1 %}"]},"End":true}}}"#,
                (Some("A"), "Assign/v/0"),
            ),
            (
                r#"{"QueryLanguage":"JSONata","StartAt":"A","States":{"A":{"Type":"Choice","Choices":[{"Condition":"{% 'a %}","Next":"A"}]}}}"#,
                (Some("A"), "Choices/0/Condition"),
            ),
            (
                r#"{"QueryLanguage":"JSONata","StartAt":"A","States":{"A":{"Type":"Choice","Choices":[{"Condition":"yes","Next":"A"}]}}}"#,
                (Some("A"), "Choices/0/Condition"),
            ),
            (
                r#"{"QueryLanguage":"JSONata","StartAt":"A","States":{"A":{"Type":"Pass","Parameters":{},"End":true}}}"#,
                (Some("A"), "Parameters"),
            ),
            (
                r#"{"QueryLanguage":"JSONata","StartAt":"A","States":{"A":{"Type":"Pass","QueryLanguage":"JSONPath","End":true}}}"#,
                (Some("A"), "QueryLanguage"),
            ),
            (
                r#"{"QueryLanguage":"XPath","StartAt":"A","States":{"A":{"Type":"Pass","End":true}}}"#,
                (None, "QueryLanguage"),
            ),
            (
                r#"{"QueryLanguage":"JSONata","StartAt":"A","States":{"A":{"Type":"Wait","Seconds":"{% %}","End":true}}}"#,
                (Some("A"), "Seconds"),
            ),
            (
                r#"{"QueryLanguage":"JSONata","StartAt":"A","States":{"A":{"Type":"Task","Resource":"arn:aws:states:::lambda:invoke","Catch":[{"ErrorEquals":["States.ALL"],"ResultPath":"$.e","Next":"A"}],"End":true}}}"#,
                (Some("A"), "Catch/0/ResultPath"),
            ),
        ];
        for (def, (state, field)) in cases {
            let e = err(def);
            let (s, f) = field_of(&e);
            assert_eq!((s.as_deref(), f.as_str()), (state, field), "{def}: {e}");
        }
        let e = err(
            r#"{"QueryLanguage":"JSONata","StartAt":"A","States":{"A":{"Type":"Pass","Output":"{% 1 + %}","End":true}}}"#,
        );
        assert!(
            e.to_string()
                .contains("the JSONata expression '1 +' is not valid: S0207"),
            "{e}"
        );
    }

    #[test]
    fn express_refuses_sync_and_callback_tasks() {
        let def = r#"{"StartAt":"A","States":{"A":{"Type":"Task","Resource":"arn:aws:states:::states:startExecution.sync:2","End":true}}}"#;
        let m = StateMachine::parse(def).unwrap();
        let e = m.clone().with_type(WorkflowType::Express).unwrap_err();
        assert_eq!(
            field_of(&e),
            (Some("A".to_string()), "Resource".to_string())
        );
        assert_eq!(
            m.with_type(WorkflowType::Standard).unwrap().workflow_type(),
            WorkflowType::Standard
        );
    }
}
