//! AWS DMS Parquet files in S3 (full load and CDC), decoded into [`SourceChange`]s.
//!
//! - [`event`]: which objects an S3 event notification or an EventBridge "Object Created"
//!   event announces (keys form-URL-decoded);
//! - [`path`]: what a key says (schema, table, full-load or CDC file, its place in order);
//! - [`file`]: reading one file row group by row group, row by row;
//! - [`value`]: Parquet values to JSON (exact decimals, dates, timestamps, base64 binary).
//!
//! [`read_object`] puts them together for one announced object: it finds the table's previous
//! file (by listing the table's folder) to check for a schema change, then streams every row
//! to a sink as a change or a rejection.

mod columnar;
pub mod file;
pub mod path;
pub mod value;
pub mod write;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

// The S3 event parsing is shared with the Transfer source; `dms::event` keeps its old path.
pub use crate::sources::s3_event as event;
pub use crate::sources::s3_event::{ObjectCreated, objects_created};
pub use file::{DEFAULT_TIMESTAMP_COLUMN, Decoded, DmsBinding, DmsFile, FileError, FileSchema};
pub use path::{DmsFileKind, DmsPath, PathError};

use crate::model::{Rejection, Stage};
use crate::objects::{ObjectError, ObjectStore};
use crate::outcome::{Issue, Outcome};

/// What reading one object did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectReport {
    /// Rows in the file according to its footer.
    pub rows: u64,
    pub changes: u64,
    pub rejected: u64,
    pub full_load: bool,
}

/// The rejection of a whole file that cannot be read (one entry, naming the file).
pub fn file_rejection(binding: &DmsBinding, uri: &str, message: &str) -> Rejection {
    Rejection {
        stage: Stage::Ingest,
        record: format!("{}/{} {uri}", binding.source, binding.entity),
        change: None,
        raw: Some(json!({ "file": uri })),
        outcome: Outcome::from(Issue::error("structure", message.to_owned()).at(uri.to_owned()))
            .to_fhir(),
    }
}

/// The key of the table's file just before `path` in DMS order, if any (listing the table's
/// folder below `prefix`).
pub fn previous_file(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    path: &DmsPath,
) -> Result<Option<DmsPath>, ObjectError> {
    let prefix = prefix.trim_matches('/');
    let folder = if prefix.is_empty() {
        format!("{}/{}/", path.schema, path.table)
    } else {
        format!("{prefix}/{}/{}/", path.schema, path.table)
    };
    Ok(store
        .list(bucket, &folder)?
        .into_iter()
        .filter_map(|m| DmsPath::parse(&m.key, prefix).ok())
        .filter(|p| p < path)
        .max())
}

/// Reads one announced object: every row goes to `sink` as a change or a rejection, in file
/// order. A file that cannot be read at all is one rejection (`Ok`), unless the store itself
/// failed in a way worth retrying (`Err`: nothing was sent to `sink`).
pub fn read_object(
    store: Arc<dyn ObjectStore>,
    bucket: &str,
    prefix: &str,
    path: DmsPath,
    binding: DmsBinding,
    fallback_time: DateTime<Utc>,
    sink: &mut dyn FnMut(Decoded),
) -> Result<ObjectReport, FileError> {
    let uri = format!("s3://{bucket}/{}", path.key);
    let mut report = ObjectReport {
        full_load: path.is_full_load(),
        ..ObjectReport::default()
    };
    let previous = match previous_file(store.as_ref(), bucket, prefix, &path) {
        Ok(p) => p,
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => {
            tracing::warn!(file = %path.key, error = %e, "cannot list the table's files; schema not compared");
            None
        }
    };
    let file = match DmsFile::open(store.clone(), bucket, path, binding.clone()) {
        Ok(f) => f,
        Err(e) if e.is_retryable() => return Err(e),
        Err(e) => {
            report.rejected = 1;
            sink(Decoded::Rejected(file_rejection(
                &binding,
                &uri,
                &e.to_string(),
            )));
            return Ok(report);
        }
    };
    report.rows = file.rows;
    let previous_schema = previous.and_then(|p| {
        let key = p.key.clone();
        match DmsFile::open(store.clone(), bucket, p, binding.clone()) {
            Ok(f) => Some((key, f.schema().clone())),
            Err(e) => {
                tracing::warn!(file = %key, error = %e, "previous file unreadable; schema not compared");
                None
            }
        }
    });
    file.read(
        previous_schema.as_ref().map(|(k, s)| (k.as_str(), s)),
        fallback_time,
        &mut |d| {
            match &d {
                Decoded::Change(_) => report.changes += 1,
                Decoded::Rejected(_) => report.rejected += 1,
            }
            sink(d);
        },
    );
    Ok(report)
}
