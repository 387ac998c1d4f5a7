//! Decoders from each source kind's events to [`crate::model::SourceChange`]s.
//!
//! Each decoder turns one delivery (a Lambda event, a file) into a
//! [`crate::model::ChangeBatch`] plus the records it could not decode, each with an
//! OperationOutcome naming the record and the place, so one bad record never sinks the rest.
//!
//! - [`dynamodb`]: DynamoDB Streams records delivered to Lambda.
//! - [`dms`]: AWS DMS Parquet files (full load and CDC) announced by S3 events.
//! - [`transfer`]: files uploaded through AWS Transfer Family (CSV, fixed-width, NDJSON, XML;
//!   gzip, zip, OpenPGP), announced by Transfer Family or S3 events.
//! - [`s3_event`]: the S3 events (notifications, EventBridge) both file sources share.

pub mod dms;
pub mod dynamodb;
pub mod s3_event;
pub mod transfer;

/// One record's outcome in a file source: a change, or a rejection naming file and row.
pub use dms::Decoded;
