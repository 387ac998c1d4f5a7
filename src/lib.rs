//! fhir-unify: turns changes in source systems into validated FHIR R4 resources in one store,
//! and tells the world what changed.
//!
//! The parts stay apart and talk through [`model`] and the port traits:
//! - [`sources`] decode each source kind's events into [`model::SourceChange`]s;
//! - [`mapping`] turns a source record into FHIR resources, driven by mapping files;
//! - [`validation`] checks resources and answers with an OperationOutcome ([`outcome`]);
//! - [`store`] keeps FHIR resources with versions, history and an outbox;
//! - [`events`] turns committed changes into change events and delivers them;
//! - [`handlers`] are the Lambda functions, plain async functions over typed events;
//! - [`gateway`] is the partner FHIR API (read, vread, history, search) and its authorizer;
//! - [`local`] runs it all on one machine: the ASL engine, SQLite, the local bus and queue.

mod alloc;
pub mod aws;
pub mod bulk;
pub mod config;
pub mod env;
pub mod events;
pub mod gateway;
pub mod handlers;
pub mod lambda;
pub mod local;
pub mod mapping;
pub mod model;
pub mod objects;
pub mod outcome;
pub mod profiling;
pub mod queue;
// The scripted HTTP server of every test that needs one (webhooks, the REST store's bad
// answers, Step Functions), shared with the integration tests.
#[cfg(test)]
#[path = "../tests/support/scripted_http.rs"]
pub(crate) mod scripted_http;
pub mod sfn;
pub mod sources;
pub mod store;
pub mod validation;
