//! Amazon States Language engine: runs Step Functions definitions (JSONPath query language) on
//! one machine, behaving as AWS Step Functions does for the features it supports: Pass, Task,
//! Choice, Succeed, Fail and inline Map states, the JSONPath data flow, Retry and Catch, the
//! context object, the 256 KiB payload quota and the common intrinsic functions.
//!
//! Not yet: Wait, Parallel, distributed Map (a DISTRIBUTED processor runs inline), JSONata,
//! `States.Hash`, heartbeats, `.sync` / `.waitForTaskToken` integrations.

mod choice;
mod definition;
mod engine;
mod intrinsics;
mod jsonpath;
pub mod mock;
mod substitute;
mod task;

pub use definition::{DefinitionError, StateMachine};
pub use engine::{
    Engine, EngineConfig, ExecutionResult, ExecutionStatus, HistoryEvent, MAX_PAYLOAD_BYTES,
};
pub use jsonpath::{JsonPath, PathSyntaxError};
pub use substitute::substitute;
pub use task::{
    Clock, LambdaError, LambdaFunction, ServiceIntegration, SystemClock, TaskError, TaskRegistry,
    TestClock, VirtualClock, virtual_time_runtime,
};
