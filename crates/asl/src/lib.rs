//! Amazon States Language engine: runs Step Functions definitions on one machine, behaving as
//! AWS Step Functions does for the features it supports: Pass, Task, Choice, Wait, Succeed,
//! Fail, Parallel and Map states (a DISTRIBUTED Map runs its items as child runs, recorded as a
//! map run), both query languages (JSONPath with Parameters, ResultSelector, ResultPath…, and
//! JSONata with Arguments, Output, Condition, Items and `{% … %}` through the evaluator in
//! [`jsonata`]), variables (`Assign`, `$name`), Retry and Catch, TimeoutSeconds and
//! HeartbeatSeconds, the context object, the 256 KiB payload quota and the common intrinsic
//! functions. History events follow AWS's types and order ([`HistoryEvent::to_aws_json`] gives
//! GetExecutionHistory's shape). [`VirtualClock`] in a paused runtime runs every wait on
//! simulated time. [`mock`] runs a machine without its tasks: stand-in functions, or Step
//! Functions Local's mock configuration.
//!
//! Tasks: Lambda functions by ARN or through `lambda:invoke`, service integrations the caller
//! registers, `.waitForTaskToken` (answered through [`Engine::send_task_success`],
//! [`Engine::send_task_failure`], [`Engine::send_task_heartbeat`]), and
//! `states:startExecution` with its `.sync` / `.sync:2` forms over machines registered with
//! [`TaskRegistry::register_state_machine`]. Express machines
//! ([`StateMachine::with_type`]) get Express execution ARNs and the five-minute limit.
//!
//! Local service integrations ([`services`]): `events:putEvents` into an event sink
//! ([`TaskRegistry::set_event_sink`]) and `dynamodb:getItem`/`putItem`/`updateItem`/`deleteItem`
//! over a table backend ([`TaskRegistry::set_table_backend`]; [`services::dynamodb::MemoryTables`]
//! keeps tables in memory).
//!
//! A distributed Map reads items through an [`objects::ObjectStore`] (ItemReader: JSON, JSON
//! Lines, CSV, object listing), batches them (ItemBatcher) and writes results back
//! (ResultWriter).

mod choice;
mod context;
mod definition;
mod distributed;
mod engine;
mod intrinsics;
pub mod jsonata;
mod jsonpath;
pub mod mock;
pub mod objects;
pub mod services;
mod substitute;
mod task;
mod tokens;

pub use definition::{DefinitionError, StateMachine, WorkflowType};
pub use engine::{
    Engine, EngineConfig, ExecutionResult, ExecutionStatus, HistoryEvent, MAX_PAYLOAD_BYTES,
};
pub use jsonpath::{JsonPath, PathSyntaxError};
pub use substitute::substitute;
pub use task::{
    CallContext, Clock, LambdaError, LambdaFunction, ServiceIntegration, SystemClock, TaskError,
    TaskRegistry, TestClock, VirtualClock, virtual_time_runtime,
};
pub use tokens::TaskTokenError;
