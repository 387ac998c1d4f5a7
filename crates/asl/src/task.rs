//! Task resources: the registry of Lambda functions and service integrations, and the clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// A failed Lambda invocation, as the Lambda runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type}: {error_message}")]
pub struct LambdaError {
    /// `errorType`: what Retry and Catch match.
    pub error_type: String,
    /// `errorMessage`.
    pub error_message: String,
    /// The runtime's raw error document, when it is not just
    /// `{"errorMessage":..,"errorType":..}` (the Python runtime adds `requestId` and
    /// `stackTrace`). A function-ARN Task passes it through verbatim as the Cause;
    /// `lambda:invoke` re-serialises it compactly.
    pub raw_payload: Option<String>,
}

impl LambdaError {
    /// An error with just a type and a message.
    pub fn new(error_type: impl Into<String>, error_message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            error_message: error_message.into(),
            raw_payload: None,
        }
    }

    /// The error document the function returned.
    pub(crate) fn payload_text(&self) -> String {
        match &self.raw_payload {
            Some(p) => p.clone(),
            None => serde_json::json!({"errorMessage": self.error_message, "errorType": self.error_type}).to_string(),
        }
    }
}

/// A Lambda function the engine can invoke.
#[async_trait]
pub trait LambdaFunction: Send + Sync {
    /// Runs the function on `payload`.
    async fn invoke(&self, payload: Value) -> Result<Value, LambdaError>;
}

/// A failed service integration call: the Error and Cause Step Functions reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {cause}")]
pub struct TaskError {
    /// Error name (what Retry and Catch match), e.g. `SQS.QueueDoesNotExistException`.
    pub error: String,
    /// Human-readable cause.
    pub cause: String,
}

/// Where a service integration is called from: the ARNs Step Functions passes along (the
/// EventBridge integration appends them to each entry's Resources) and the state's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    pub execution_arn: String,
    pub state_machine_arn: String,
    pub state: String,
}

/// An `arn:aws:states:::<service>:<action>` integration.
#[async_trait]
pub trait ServiceIntegration: Send + Sync {
    /// Calls the service with the Task's effective Parameters.
    async fn call(&self, resource: &str, parameters: Value) -> Result<Value, TaskError>;

    /// As [`Self::call`], knowing the execution and state calling (the engine calls this).
    async fn call_in(
        &self,
        context: &CallContext,
        resource: &str,
        parameters: Value,
    ) -> Result<Value, TaskError> {
        let _ = context;
        self.call(resource, parameters).await
    }
}

/// Where Task resources are found.
#[derive(Default, Clone)]
pub struct TaskRegistry {
    lambdas: HashMap<String, Arc<dyn LambdaFunction>>,
    services: HashMap<String, Arc<dyn ServiceIntegration>>,
    state_mocks: Arc<crate::mock::TestCaseMocks>,
    object_store: Option<Arc<dyn crate::objects::ObjectStore>>,
    state_machines: HashMap<String, crate::StateMachine>,
}

impl std::fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRegistry")
            .field("lambdas", &self.lambdas.keys().collect::<Vec<_>>())
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("state_mocks", &self.state_mocks.keys().collect::<Vec<_>>())
            .field(
                "state_machines",
                &self.state_machines.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TaskRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a Lambda function under its name (not its ARN).
    pub fn register_lambda(&mut self, name: &str, function: Arc<dyn LambdaFunction>) {
        self.lambdas.insert(name.to_string(), function);
    }

    /// Registers a service integration under its full resource ARN,
    /// e.g. `arn:aws:states:::sqs:sendMessage`.
    pub fn register_service(
        &mut self,
        resource_arn: &str,
        integration: Arc<dyn ServiceIntegration>,
    ) {
        self.services.insert(resource_arn.to_string(), integration);
    }

    /// Sends `arn:aws:states:::events:putEvents` tasks' entries to `sink`.
    pub fn set_event_sink(&mut self, sink: Arc<dyn crate::services::events::EventSink>) {
        self.register_service(
            "arn:aws:states:::events:putEvents",
            Arc::new(crate::services::events::PutEvents { sink }),
        );
    }

    /// Runs `arn:aws:states:::dynamodb:getItem`, `putItem`, `updateItem` and `deleteItem`
    /// tasks on `tables`.
    pub fn set_table_backend(&mut self, tables: Arc<dyn crate::services::dynamodb::TableBackend>) {
        for action in ["getItem", "putItem", "updateItem", "deleteItem"] {
            self.register_service(
                &format!("arn:aws:states:::dynamodb:{action}"),
                Arc::new(crate::services::dynamodb::DynamoDb {
                    tables: tables.clone(),
                }),
            );
        }
    }

    /// Replaces the result of the named Task states with mocked answers (a test case of a
    /// Step Functions Local mock configuration): such a state calls nothing.
    pub fn mock_states(&mut self, mocks: crate::mock::TestCaseMocks) {
        self.state_mocks = Arc::new(mocks);
    }

    /// Registers a state machine that `arn:aws:states:::states:startExecution` tasks (and its
    /// `.sync` / `.sync:2` forms) can start, found by the name in their `StateMachineArn`.
    pub fn register_state_machine(&mut self, machine: crate::StateMachine) {
        self.state_machines
            .insert(machine.name().to_string(), machine);
    }

    pub(crate) fn state_machine(&self, name: &str) -> Option<&crate::StateMachine> {
        self.state_machines.get(name)
    }

    /// The object store distributed Maps read items from and write results to.
    pub fn set_object_store(&mut self, store: Arc<dyn crate::objects::ObjectStore>) {
        self.object_store = Some(store);
    }

    pub(crate) fn object_store(&self) -> Option<&dyn crate::objects::ObjectStore> {
        self.object_store.as_deref()
    }

    pub(crate) fn state_mock(&self, state: &str) -> Option<&crate::mock::MockedResponses> {
        self.state_mocks.get(state)
    }

    pub(crate) fn lambda(&self, name: &str) -> Option<Arc<dyn LambdaFunction>> {
        self.lambdas.get(name).cloned()
    }

    pub(crate) fn service(&self, arn: &str) -> Option<Arc<dyn ServiceIntegration>> {
        self.services.get(arn).cloned()
    }
}

/// Time as the engine sees it: wall-clock for real runs, a recording clock for tests.
#[async_trait]
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// Waits for `duration`.
    async fn sleep(&self, duration: Duration);

    /// Waits until `now()` reaches `deadline` (the execution timeout's timer). The default
    /// sleeps for the difference; a clock whose time only moves when something sleeps
    /// ([`TestClock`]) overrides it to wait for that.
    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        let left = (deadline - self.now()).to_std().unwrap_or_default();
        self.sleep(left).await;
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A clock whose `sleep` returns at once and records what was asked, so Retry back-off and
/// timeouts are testable without waiting. `now()` advances by the recorded sleeps.
#[derive(Debug)]
pub struct TestClock {
    start: DateTime<Utc>,
    /// The recorded sleeps and their running total (kept so `now()` costs the same however
    /// long the clock has been used).
    sleeps: Mutex<(Vec<Duration>, Duration)>,
    /// Woken at each sleep, for [`Clock::sleep_until`].
    advanced: tokio::sync::Notify,
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            start: Utc::now(),
            sleeps: Mutex::new((Vec::new(), Duration::ZERO)),
            advanced: tokio::sync::Notify::new(),
        }
    }

    /// The durations passed to `sleep`, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.sleeps.lock().map(|s| s.0.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        let slept = self.sleeps.lock().map(|s| s.1).unwrap_or_default();
        self.start + chrono::Duration::from_std(slept).unwrap_or_default()
    }

    async fn sleep(&self, duration: Duration) {
        if let Ok(mut s) = self.sleeps.lock() {
            s.0.push(duration);
            s.1 += duration;
        }
        self.advanced.notify_waiters();
        tokio::task::yield_now().await;
    }

    /// Returns once sleeps (of the execution it times) have moved `now()` to `deadline`:
    /// this clock's time passes only when something sleeps.
    async fn sleep_until(&self, deadline: DateTime<Utc>) {
        loop {
            let notified = self.advanced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.now() >= deadline {
                return;
            }
            notified.await;
        }
    }
}

/// Time read from tokio's clock. In an ordinary runtime it is real time. In a runtime whose
/// time is paused ([`virtual_time_runtime`], or `#[tokio::test(start_paused = true)]`) it is
/// simulated: when every task is waiting, tokio jumps to the next timer, so Wait states, Retry
/// intervals, slow functions and timeouts end at once, in the order and with the result real
/// time would give (a timeout fires only when simulated time has really passed it).
#[derive(Debug, Clone, Copy)]
pub struct VirtualClock {
    start: DateTime<Utc>,
    base: tokio::time::Instant,
}

impl VirtualClock {
    /// A clock whose `now()` starts at the wall-clock time of the call.
    pub fn new() -> Self {
        Self::starting_at(Utc::now())
    }

    /// A clock whose `now()` starts at `start`.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self {
            start,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.base);
        self.start + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A single-threaded runtime with paused time, for [`VirtualClock`] runs. Real I/O inside such
/// a runtime still works, but while it is pending tokio may advance time to the next timer,
/// so use it with in-process tasks (local functions, mocks), not network calls.
pub fn virtual_time_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
}
