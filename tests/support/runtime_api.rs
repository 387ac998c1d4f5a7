//! A local implementation of the Lambda Runtime API (2018-06-01) for tests: the interface a
//! `provided.al2023` function's own loop (lambda_runtime) talks to. It serves
//! `GET /runtime/invocation/next` (long poll), `POST /runtime/invocation/{id}/response`,
//! `POST /runtime/invocation/{id}/error` and `POST /runtime/init/error` on 127.0.0.1, so a
//! test runs a real function binary the way Lambda does and reads what it answered.
//!
//! Shared by each `functions/<name>/tests/runtime_loop.rs` (`#[path]`-included): a package's
//! test can only name its own binary (`CARGO_BIN_EXE_<name>`). Plain std (threads, TcpStream):
//! one connection thread per client connection, HTTP/1.1 keep-alive, bodies by
//! `Content-Length` or chunked.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long a test waits for a function to answer before failing.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// What a function answered for one invocation (or for its init).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `POST /invocation/{id}/response`: the handler's result.
    Response(Value),
    /// `POST /invocation/{id}/error` or `/init/error`: the diagnostic, and the
    /// `Lambda-Runtime-Function-Error-Type` header.
    Error {
        error_type: String,
        error_message: String,
        header: Option<String>,
    },
}

impl Answer {
    pub fn response(&self) -> &Value {
        match self {
            Answer::Response(v) => v,
            Answer::Error { .. } => panic!("expected a response, got {self:?}"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pending: VecDeque<(String, Vec<u8>)>,
    answers: HashMap<String, (Answer, Instant)>,
    init_error: Option<(Answer, Instant)>,
    next_calls: usize,
    counter: u64,
    /// Requests the API did not recognise (method and path), to fail the test with.
    unknown: Vec<String>,
}

/// The Runtime API server. It stops with the test process.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    addr: SocketAddr,
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl RuntimeApi {
    pub fn start() -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let api = RuntimeApi { addr, shared };
        let server = api.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let server = server.clone();
                std::thread::spawn(move || server.serve(stream));
            }
        });
        api
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Queues an invocation; returns its request id.
    pub fn invoke(&self, event: &Value) -> String {
        self.invoke_raw(serde_json::to_vec(event).unwrap())
    }

    /// Queues an invocation whose payload is the given bytes (not necessarily JSON).
    pub fn invoke_raw(&self, payload: Vec<u8>) -> String {
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap();
        state.counter += 1;
        let id = format!("00000000-0000-4000-8000-{:012}", state.counter);
        state.pending.push_back((id.clone(), payload));
        cvar.notify_all();
        id
    }

    /// Waits for the answer to an invocation, and when it arrived.
    pub fn answer(&self, id: &str) -> (Answer, Instant) {
        self.wait(|s| s.answers.get(id).cloned())
            .unwrap_or_else(|| panic!("no answer to invocation {id} within {ANSWER_TIMEOUT:?}"))
    }

    /// Waits for an init error.
    pub fn init_error(&self) -> Option<Answer> {
        self.wait(|s| s.init_error.clone()).map(|(a, _)| a)
    }

    /// How many times the function asked for its next invocation.
    pub fn next_calls(&self) -> usize {
        self.shared.0.lock().unwrap().next_calls
    }

    /// Requests the API did not recognise.
    pub fn unknown_requests(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().unknown.clone()
    }

    fn wait<T>(&self, found: impl Fn(&State) -> Option<T>) -> Option<T> {
        let (lock, cvar) = &*self.shared;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut state = lock.lock().unwrap();
        loop {
            if let Some(t) = found(&state) {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = cvar.wait_timeout(state, left).unwrap().0;
        }
    }

    fn serve(&self, stream: TcpStream) {
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        while let Some(request) = read_request(&mut reader) {
            let reply = self.route(&request);
            if writer.write_all(&reply).is_err() {
                return;
            }
        }
    }

    fn route(&self, req: &Request) -> Vec<u8> {
        const PREFIX: &str = "/2018-06-01/runtime/";
        let path = req.path.strip_prefix(PREFIX).unwrap_or("");
        let (lock, cvar) = &*self.shared;
        match (req.method.as_str(), path) {
            ("GET", "invocation/next") => {
                let mut state = lock.lock().unwrap();
                state.next_calls += 1;
                cvar.notify_all();
                // Long poll, as Lambda does: the function waits here between invocations.
                let (id, payload) = loop {
                    if let Some(next) = state.pending.pop_front() {
                        break next;
                    }
                    state = cvar.wait(state).unwrap();
                };
                drop(state);
                let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
                    + Duration::from_secs(300);
                let headers = format!(
                    "Lambda-Runtime-Aws-Request-Id: {id}\r\n\
                     Lambda-Runtime-Deadline-Ms: {}\r\n\
                     Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:test\r\n\
                     Lambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000;Sampled=0\r\n\
                     Content-Type: application/json\r\n",
                    deadline.as_millis()
                );
                http_reply("200 OK", &headers, &payload)
            }
            ("POST", "init/error") => {
                let answer = error_answer(req);
                let mut state = lock.lock().unwrap();
                state.init_error = Some((answer, Instant::now()));
                cvar.notify_all();
                accepted()
            }
            ("POST", p) if p.starts_with("invocation/") => {
                let rest = &p["invocation/".len()..];
                let answer = if let Some(id) = rest.strip_suffix("/response") {
                    let value = serde_json::from_slice(&req.body).unwrap_or_else(|e| {
                        panic!("response of {id} is not JSON ({e}): {:?}", req.body)
                    });
                    Some((id, Answer::Response(value)))
                } else {
                    rest.strip_suffix("/error")
                        .map(|id| (id, error_answer(req)))
                };
                let Some((id, answer)) = answer else {
                    return self.unknown(req);
                };
                let mut state = lock.lock().unwrap();
                state
                    .answers
                    .insert(id.to_owned(), (answer, Instant::now()));
                cvar.notify_all();
                accepted()
            }
            _ => self.unknown(req),
        }
    }

    fn unknown(&self, req: &Request) -> Vec<u8> {
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap();
        state.unknown.push(format!("{} {}", req.method, req.path));
        cvar.notify_all();
        http_reply("404 Not Found", "", b"{\"errorMessage\":\"unknown\"}")
    }
}

fn error_answer(req: &Request) -> Answer {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    Answer::Error {
        error_type: body["errorType"].as_str().unwrap_or_default().to_owned(),
        error_message: body["errorMessage"].as_str().unwrap_or_default().to_owned(),
        header: req
            .headers
            .get("lambda-runtime-function-error-type")
            .cloned(),
    }
}

fn accepted() -> Vec<u8> {
    http_reply(
        "202 Accepted",
        "Content-Type: application/json\r\n",
        b"{\"status\":\"OK\"}",
    )
}

fn http_reply(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// One HTTP/1.1 request, or None when the client closed the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                // Trailers (the streaming error headers), up to the blank line.
                loop {
                    let mut t = String::new();
                    reader.read_line(&mut t).ok()?;
                    let t = t.trim_end();
                    if t.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = t.split_once(':') {
                        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = headers.get("content-length") {
        body = vec![0; len.parse().ok()?];
        reader.read_exact(&mut body).ok()?;
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// A function process; killed when dropped.
#[derive(Debug)]
pub struct Function {
    pub child: Child,
    pub started: Instant,
    pub log: PathBuf,
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Function {
    /// Starts `binary` as Lambda would, against `api`, with the pipeline file `config` and the
    /// data folder `data`. Its output goes to `<data>/../function.log`.
    pub fn start(binary: &Path, api: &RuntimeApi, config: &Path, data: &Path) -> Function {
        Function::start_with(binary, api, config, data, &[])
    }

    /// As [`Function::start`], with more environment variables (those the stack sets).
    pub fn start_with(
        binary: &Path,
        api: &RuntimeApi,
        config: &Path,
        data: &Path,
        env: &[(&str, String)],
    ) -> Function {
        let log = data.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let started = Instant::now();
        let child = Command::new(binary)
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", api.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", "test")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/test")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("LAMBDA_TASK_ROOT", config.parent().unwrap())
            .env("FHIR_UNIFY_CONFIG", config)
            .env("FHIR_UNIFY_DATA_DIR", data)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Function {
            child,
            started,
            log,
        }
    }

    /// What the function wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (after an init error); its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the function did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The binary to run: the packaged one under `$FHIR_UNIFY_LAMBDA_DIR/<name>/bootstrap` when
/// that is set (scripts/package.sh output, for the timings in BENCHMARKS.md), else the
/// package's own debug build.
pub fn binary(name: &str, built: &str) -> PathBuf {
    match std::env::var_os("FHIR_UNIFY_LAMBDA_DIR") {
        Some(dir) => PathBuf::from(dir).join(name).join("bootstrap"),
        None => PathBuf::from(built),
    }
}

/// The repository root (the function package is `functions/<name>`).
pub fn repo_root(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir)
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A pipeline file that cannot be loaded (an unknown key), in `dir`.
pub fn bad_config(dir: &Path) -> PathBuf {
    let path = dir.join("bad-fhir-unify.yaml");
    std::fs::write(&path, "store: {}\nsourcez: []\n").unwrap();
    path
}

/// Cold start (process start to the first answer) and the median and maximum round trip of
/// `n` further invocations of `event`, each answered with a response: printed (run the test
/// with `--nocapture`), never asserted.
pub fn time_invocations(
    name: &str,
    binary: &Path,
    config: &Path,
    data: &Path,
    event: &Value,
    n: usize,
) {
    let api = RuntimeApi::start();
    let first = api.invoke(event);
    let function = Function::start(binary, &api, config, data);
    let (answer, at) = api.answer(&first);
    assert!(
        matches!(answer, Answer::Response(_)),
        "{answer:?}\n{}",
        function.output()
    );
    let cold = at.duration_since(function.started);
    let mut rounds = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = Instant::now();
        let id = api.invoke(event);
        let (answer, at) = api.answer(&id);
        assert!(matches!(answer, Answer::Response(_)), "{answer:?}");
        rounds.push(at.duration_since(sent));
    }
    rounds.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "TIMING {name} ({}): cold start {:.1} ms; {n} invocations: median {:.2} ms, max {:.2} ms",
        binary.display(),
        ms(cold),
        ms(rounds[n / 2]),
        ms(rounds[n - 1]),
    );
}

/// The bundled example's pipeline file.
pub fn example_config(root: &Path) -> PathBuf {
    root.join("examples/fhir-unify.yaml")
}

/// A DynamoDB Streams event of the bundled example (`examples/streams/patients/<file>`).
pub fn stream_event(root: &Path, file: &str) -> Value {
    let path = root.join("examples/streams/patients").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The example stream event decoded into a ChangeBatch (the input of `transform`), and the
/// SequenceNumbers of its records that do not decode.
pub fn change_batch(root: &Path, file: &str) -> (fhir_unify::model::ChangeBatch, Vec<String>) {
    let config = fhir_unify::config::PipelineConfig::load(&example_config(root)).unwrap();
    let event: fhir_unify::sources::dynamodb::DynamoDbStreamEvent =
        serde_json::from_value(stream_event(root, file)).unwrap();
    let decoded =
        fhir_unify::sources::dynamodb::decode(&event, &|table| config.dynamodb_binding(table));
    let failed = decoded
        .failures
        .iter()
        .map(|f| f.sequence_number.clone().unwrap())
        .collect();
    (decoded.batch, failed)
}

/// The pipeline-step environment over `data`, built in-process (to prepare a step's input or
/// its store the way the steps before it would have).
pub fn step_env(root: &Path, data: &Path) -> fhir_unify::env::Env {
    let config = fhir_unify::config::PipelineConfig::load(&example_config(root)).unwrap();
    let data = fhir_unify::config::DataDir(data.to_path_buf());
    fhir_unify::env::Env::from_config(&config, &data).unwrap()
}

/// Runs a future to completion on a fresh runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// The start of a bad cold start: the function reports `FhirUnify.InitFailed` with the file at
/// fault to `/runtime/init/error`, answers no invocation, and exits with a failure.
pub fn assert_init_error(binary: &Path, dir: &Path) {
    let api = RuntimeApi::start();
    let config = bad_config(dir);
    let data = dir.join("init-error-data");
    let mut function = Function::start(binary, &api, &config, &data);
    let answer = api.init_error();
    let status = function.wait_exit();
    let output = function.output();
    match answer {
        Some(Answer::Error {
            error_type,
            error_message,
            header,
        }) => {
            assert_eq!(error_type, "FhirUnify.InitFailed", "{output}");
            assert_eq!(header.as_deref(), Some("FhirUnify.InitFailed"));
            assert!(
                error_message.contains("bad-fhir-unify.yaml") && error_message.contains("sourcez"),
                "the message names the file and the key: {error_message}"
            );
        }
        other => panic!("no init error reported ({other:?}); output:\n{output}"),
    }
    assert!(
        !status.success(),
        "a failed cold start exits with a failure"
    );
    assert_eq!(
        api.next_calls(),
        0,
        "no invocation is asked for after a failed init"
    );
    assert!(
        api.unknown_requests().is_empty(),
        "{:?}",
        api.unknown_requests()
    );
}

/// The error type lambda_runtime reports for a payload it cannot deserialize.
pub const DESERIALIZE_ERROR: &str = "&lambda_runtime::deserializer::DeserializeError";

/// Checks the answers to [`WRONG_SHAPE`] and [`NOT_JSON`]: a payload of the wrong shape reaches
/// the function, which names it `FhirUnify.InvalidInput`; one that is not JSON at all is
/// refused by lambda_runtime before that, with its own type.
pub fn assert_bad_shape_then_not_json(answers: &[Answer]) {
    let errors: Vec<&str> = answers
        .iter()
        .map(|answer| match answer {
            Answer::Error { error_type, .. } => error_type.as_str(),
            other => panic!("expected an error answer, got {other:?}"),
        })
        .collect();
    assert_eq!(errors, ["FhirUnify.InvalidInput", DESERIALIZE_ERROR]);
}

/// Payloads that are not JSON, or JSON of another shape than the function takes.
pub const NOT_JSON: &[u8] = b"not json";
pub const WRONG_SHAPE: &[u8] = b"{\"unexpected\": true}";

/// Sends each bad payload: each is answered on `/error` (the handler is never called), and
/// the function goes on serving: `good` is then answered with a response.
pub fn assert_bad_input_then_recovers(
    api: &RuntimeApi,
    bad: &[&[u8]],
    good: &Value,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    for payload in bad {
        let id = api.invoke_raw(payload.to_vec());
        let (answer, _) = api.answer(&id);
        match &answer {
            Answer::Error {
                error_type,
                error_message,
                header,
            } => {
                assert!(
                    !error_type.is_empty() && !error_message.is_empty(),
                    "{answer:?}"
                );
                assert_eq!(header.as_deref(), Some("unhandled"));
            }
            Answer::Response(v) => panic!("bad input was answered with a response: {v}"),
        }
        answers.push(answer);
    }
    let id = api.invoke(good);
    let (answer, _) = api.answer(&id);
    assert!(matches!(answer, Answer::Response(_)), "{answer:?}");
    answers.push(answer);
    answers
}

// ---- the stack's environment and cold-start timings (issue 8) ----------------------------

/// The variables `infra/template.yaml` sets on `function` (the Globals and the function's own,
/// with made-up resource names; `FHIR_UNIFY_CONFIG` and `FHIR_UNIFY_DATA_DIR` are set by
/// [`Function::start_with`]), and those Lambda itself sets for the SDK: region and the role's
/// credentials. `AWS_ENDPOINT_URL` points every client at `endpoint` (a moto server, or an
/// address where nothing listens when the event needs no AWS call).
pub fn stack_env(function: &str, endpoint: &str) -> Vec<(&'static str, String)> {
    let account = "123456789012";
    let arn = format!("arn:aws:states:us-east-1:{account}:stateMachine:stack-unify");
    let queue = format!("{endpoint}/{account}/stack-Quarantine");
    let mut env = vec![
        ("FHIR_UNIFY_EVENT_BUS", "stack-ChangeEventBus".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_SESSION_TOKEN", "testing".to_owned()),
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
    ];
    let store = ("FHIR_UNIFY_STORE_TABLE", "stack-FhirStore".to_owned());
    let versions = (
        "FHIR_UNIFY_VERSIONS_TABLE",
        "stack-DatasetVersions".to_owned(),
    );
    let machine = ("FHIR_UNIFY_UNIFY_STATE_MACHINE_ARN", arn);
    let quarantine = ("FHIR_UNIFY_QUARANTINE_QUEUE_URL", queue);
    match function {
        "ingest-dynamodb" => env.push(machine),
        "ingest-dms" | "ingest-transfer" => env.extend([machine, quarantine]),
        "ingest-api" => env.extend([machine, store]),
        "publish" | "emit" => env.push(store),
        "gateway" => env.extend([store, versions]),
        "bulk-begin" | "bulk-finalize" | "bulk-fail" => env.extend([versions, store]),
        "bulk-load-chunk" => env.extend([versions, store, quarantine]),
        "transform" | "validate" | "authorizer" => {}
        other => panic!("no template entry for {other}"),
    }
    env
}

/// An address where nothing listens: an SDK call there fails at once (the events timed with
/// [`stack_env`] need no AWS call).
pub const NO_AWS: &str = "http://127.0.0.1:9";

/// CPU time (user + system) the process has used so far, over all its threads, from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds, unlike `/proc/<pid>/stat`'s clock ticks).
pub fn cpu_time(pid: u32) -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// Cold starts of `binary` with the stack's environment (`env`, see [`stack_env`]): `runs`
/// fresh processes, each with an empty data folder under `dir` (a new execution environment),
/// each timed from process start to the answer to `event`, with the CPU time it used by then;
/// the last one then answers `invocations` more `event`s. Prints one `TIMING` line (run the
/// test with `--nocapture`; never asserted) and returns the answers to the first event, for
/// the caller to check.
#[allow(clippy::too_many_arguments)]
pub fn time_cold_starts(
    name: &str,
    binary: &Path,
    config: &Path,
    dir: &Path,
    env: &[(&str, String)],
    event: &Value,
    runs: usize,
    invocations: usize,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut rounds = Vec::new();
    for run in 0..runs {
        let api = RuntimeApi::start();
        let first = api.invoke(event);
        let data = dir.join(format!("cold-{run}"));
        let function = Function::start_with(binary, &api, config, &data, env);
        let (answer, at) = api.answer(&first);
        cpus.push(cpu_time(function.child.id()));
        walls.push(at.duration_since(function.started));
        if run + 1 == runs {
            for _ in 0..invocations {
                let sent = Instant::now();
                let id = api.invoke(event);
                let (again, at) = api.answer(&id);
                assert_eq!(
                    std::mem::discriminant(&again),
                    std::mem::discriminant(&answer),
                    "{again:?}"
                );
                rounds.push(at.duration_since(sent));
            }
        }
        assert!(
            api.unknown_requests().is_empty(),
            "{:?}",
            api.unknown_requests()
        );
        answers.push(answer);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).map_or(0.0, |d| ms(*d))
    };
    let (min, max) = (
        walls.iter().min().map_or(0.0, |d| ms(*d)),
        walls.iter().max().map_or(0.0, |d| ms(*d)),
    );
    eprintln!(
        "TIMING {name} ({}): cold start median {:.1} ms (min {min:.1}, max {max:.1}, {runs} runs), \
         CPU user+sys median {:.1} ms; {invocations} invocations: median {:.2} ms",
        binary.display(),
        median(&mut walls),
        median(&mut cpus),
        median(&mut rounds),
    );
    answers
}

/// A test fixture of the repository (`tests/fixtures/<name>`), as JSON.
pub fn fixture(root: &Path, name: &str) -> Value {
    let path = root.join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How many cold starts the stack-environment timing tests make (`FHIR_UNIFY_COLD_RUNS`,
/// default 3: enough to exercise the path in the test command; BENCHMARKS.md uses more).
pub fn cold_runs() -> usize {
    std::env::var("FHIR_UNIFY_COLD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Times the cold starts of a function whose every real request calls AWS (the bulk steps)
/// with a request of the wrong shape: the function must refuse it as a `FhirUnify.*` error
/// before any AWS call, so the timing is that of the runtime and the environment.
pub fn assert_cold_start_refuses_a_wrong_request(manifest_dir: &str, name: &str, binary: &Path) {
    let root = repo_root(manifest_dir);
    let dir = tempfile::tempdir().unwrap();
    let event = serde_json::json!({ "unexpected": true });
    let answers = time_cold_starts(
        name,
        binary,
        &example_config(&root),
        dir.path(),
        &stack_env(name, NO_AWS),
        &event,
        cold_runs(),
        20,
    );
    for answer in &answers {
        match answer {
            Answer::Error {
                error_type,
                error_message,
                ..
            } => {
                assert!(error_type.starts_with("FhirUnify."), "{answer:?}");
                assert!(!error_message.is_empty());
            }
            other => panic!("expected the refusal, got {other:?}"),
        }
    }
}

/// The runtime-loop tests of an S3-notified ingest function (`ingest-dms`, `ingest-transfer`):
/// a bad pipeline file is an init error, and the S3 test event (sent once when a
/// notification is set up) announces no object, so nothing is read and nothing is started.
/// A macro because `env!("CARGO_BIN_EXE_…")` needs the name as a literal in the test crate.
#[macro_export]
macro_rules! s3_ingest_runtime_tests {
    ($name:literal) => {
        #[test]
        fn a_bad_pipeline_file_is_an_init_error() {
            let dir = tempfile::tempdir().unwrap();
            let binary = binary($name, env!(concat!("CARGO_BIN_EXE_", $name)));
            assert_init_error(&binary, dir.path());
        }

        #[test]
        fn cold_start_with_the_stacks_environment() {
            let root = repo_root(env!("CARGO_MANIFEST_DIR"));
            let dir = tempfile::tempdir().unwrap();
            let event = fixture(&root, "s3-test-event.json");
            let answers = time_cold_starts(
                $name,
                &binary($name, env!(concat!("CARGO_BIN_EXE_", $name))),
                &example_config(&root),
                dir.path(),
                &stack_env($name, NO_AWS),
                &event,
                cold_runs(),
                20,
            );
            for answer in &answers {
                let r = answer.response();
                assert_eq!(
                    (r["objects"].as_u64(), r["executions"].as_u64()),
                    (Some(0), Some(0)),
                    "{r}"
                );
            }
        }
    };
}
