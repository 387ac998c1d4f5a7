//! Decoders from each source kind's events to [`crate::model::SourceChange`]s.
//!
//! Each decoder turns one delivery (a Lambda event, a file) into a
//! [`crate::model::ChangeBatch`] plus the records it could not decode, each with an
//! OperationOutcome naming the record and the place, so one bad record never sinks the rest.
//!
//! - [`dynamodb`]: DynamoDB Streams records delivered to Lambda.
//! - [`dms`]: AWS DMS Parquet files (full load and CDC) announced by S3 events.

pub mod dms;
pub mod dynamodb;
