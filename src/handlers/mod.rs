//! The Lambda functions, one module each: plain async functions over typed events and an
//! environment of ports ([`crate::env`]). `functions/<name>/src/main.rs` wraps them for
//! Lambda; the local runtime registers the very same functions with the ASL engine.

mod apigw;
pub mod authorizer;
pub mod emit;
pub mod emit_stream;
pub mod errors;
mod file_batches;
pub mod gateway;
pub mod ingest_api;
pub mod ingest_dms;
pub mod ingest_dynamodb;
pub mod ingest_transfer;
pub mod publish;
pub mod transform;
pub mod validate;

pub use errors::HandlerError;
