//! One DMS Parquet file, read row group by row group through the object store, each row
//! becoming a [`SourceChange`] or a [`Rejection`] naming the file and the row.
//!
//! - The footer is read first (two ranged reads); then each row group's column chunks as
//!   the rows are iterated: a file is never held whole in memory.
//! - `Op` (`I`/`U` upsert, `D` delete; absent on a full load without `IncludeOpForFullLoad`:
//!   every row an insert; null in a full-load file: an insert; null in a CDC file: refused) and the timestamp column (`DMS_TIMESTAMP` by default, a STRING
//!   `yyyy-MM-dd HH:mm:ss.SSSSSS`) are read and left out of the record's data.
//! - The sequence of a change is `micros(20 digits) ‖ file ordinal(20) ‖ row(12)`: the
//!   timestamp column's microseconds since the epoch (else the CDC file name's time; else 0
//!   for a full-load file), the file's place among the table's files ([`DmsPath::ordinal`]),
//!   and the row number. Comparing sequences therefore orders changes by (timestamp, file,
//!   row), across files and deliveries, which is what the store's stale-change rule needs.
//! - Rows are numbered from 1 in the file, across row groups.
//!
//! Failures, none of them a panic and none silent:
//! - the file cannot be opened (truncated, not Parquet, a column type the reader cannot
//!   convert, a key column missing): [`FileError`], one rejection for the whole file;
//! - a row group whose pages are corrupt: one rejection naming its row range; the next row
//!   group goes on;
//! - a row with an unknown `Op`, a null key column, a bad timestamp or an unconvertible value:
//!   a rejection naming file, row and column; the next row goes on;
//! - a file whose schema removes a column or changes a column's type compared with the table's
//!   previous file: every row is rejected (decoded, so it can be replayed once the mapping has
//!   been checked), with the change of schema in the outcome. Added columns are accepted
//!   (that is what DMS writes after `ALTER TABLE … ADD COLUMN`).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use parquet::basic::{ConvertedType, Repetition, Type as PhysicalType};
use parquet::file::reader::{ChunkReader, FileReader, Length};
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::record::Field;
use parquet::schema::types::SchemaDescriptor;
use serde_json::{Map, Value, json};

use super::columnar;
use super::path::{DmsFileKind, DmsPath};
use super::value::{ColumnInfo, to_json};
use crate::model::{Op, RecordKey, Rejection, Sequence, SourceChange, Stage};
use crate::objects::{ObjectError, ObjectStore};
use crate::outcome::{Issue, Outcome};

/// The name of the operation column DMS adds.
pub const OP_COLUMN: &str = "Op";
/// The timestamp column looked for when the source names none.
pub const DEFAULT_TIMESTAMP_COLUMN: &str = "DMS_TIMESTAMP";

/// How a table's files feed the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmsBinding {
    pub source: String,
    pub entity: String,
    /// The key columns.
    pub key: Vec<String>,
    /// The timestamp column (used when present in a file).
    pub timestamp_column: String,
}

/// One row's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Change(SourceChange),
    Rejected(Rejection),
}

/// A file that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("s3://{bucket}/{key}: {message}")]
    Unreadable {
        bucket: String,
        key: String,
        message: String,
    },
}

impl FileError {
    /// Whether reading the file again may succeed (the store was unavailable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, FileError::Object(e) if e.is_retryable())
    }
}

/// A file's columns: name to a description of its type (`INT64 TIMESTAMP_MILLIS OPTIONAL`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileSchema(pub BTreeMap<String, String>);

impl FileSchema {
    fn of(descr: &SchemaDescriptor) -> FileSchema {
        FileSchema(
            descr
                .columns()
                .iter()
                .map(|c| {
                    let t = c.self_type();
                    let logical = t
                        .get_basic_info()
                        .logical_type_ref()
                        .map_or_else(|| format!("{}", c.converted_type()), |l| format!("{l:?}"));
                    let rep = if t.get_basic_info().has_repetition() {
                        format!("{}", t.get_basic_info().repetition())
                    } else {
                        String::new()
                    };
                    let len = if c.physical_type() == PhysicalType::FIXED_LEN_BYTE_ARRAY {
                        format!("({})", c.type_length())
                    } else {
                        String::new()
                    };
                    (
                        c.path().string(),
                        format!("{}{len} {logical} {rep}", c.physical_type()),
                    )
                })
                .collect(),
        )
    }

    /// What changed from `previous` that a mapping may not survive: removed columns and
    /// changed types (the DMS columns `Op` and the timestamp aside). Empty: compatible.
    pub fn incompatible_changes(&self, previous: &FileSchema, ignore: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for (name, was) in &previous.0 {
            if ignore.contains(&name.as_str()) {
                continue;
            }
            match self.0.get(name) {
                None => out.push(format!("column {name:?} was removed")),
                // A required column becoming optional is not a change of type.
                Some(now) if strip_rep(now) != strip_rep(was) => {
                    out.push(format!("column {name:?} changed from {was} to {now}"))
                }
                Some(_) => {}
            }
        }
        out
    }

    /// Columns present here and not in `previous`.
    pub fn added_columns(&self, previous: &FileSchema) -> Vec<String> {
        self.0
            .keys()
            .filter(|k| !previous.0.contains_key(*k))
            .cloned()
            .collect()
    }
}

fn strip_rep(t: &str) -> &str {
    t.trim_end_matches("OPTIONAL")
        .trim_end_matches("REQUIRED")
        .trim_end()
}

/// Ranged reads of one object, as Parquet's reader asks for them.
#[derive(Debug, Clone)]
struct ObjectChunks {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    key: String,
    len: u64,
}

impl Length for ObjectChunks {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for ObjectChunks {
    type T = ObjectRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<ObjectRead> {
        Ok(ObjectRead {
            chunks: self.clone(),
            pos: start,
            buf: Bytes::new(),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let b = self
            .store
            .read_range(&self.bucket, &self.key, start, length)
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
        if b.len() < length {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "wanted {length} bytes at {start}, the object has {}",
                b.len()
            )));
        }
        Ok(b)
    }
}

/// A reader from an offset to the end of an object, fetching a window at a time.
struct ObjectRead {
    chunks: ObjectChunks,
    pos: u64,
    buf: Bytes,
}

/// How much a sequential read fetches at once.
const READ_WINDOW: usize = 1024 * 1024;

impl Read for ObjectRead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            if self.pos >= self.chunks.len {
                return Ok(0);
            }
            let want = READ_WINDOW.min((self.chunks.len - self.pos) as usize);
            self.buf = self
                .chunks
                .store
                .read_range(&self.chunks.bucket, &self.chunks.key, self.pos, want)
                .map_err(std::io::Error::other)?;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        self.pos += n as u64;
        Ok(n)
    }
}

/// An opened DMS file: its footer read, its schema checked.
pub struct DmsFile {
    reader: SerializedFileReader<ObjectChunks>,
    bucket: String,
    path: DmsPath,
    binding: DmsBinding,
    columns: Vec<ColumnInfo>,
    schema: FileSchema,
    op_index: Option<usize>,
    ts_index: Option<usize>,
    /// Every top-level field is one primitive column (what DMS writes): rows are read column
    /// by column ([`columnar`]); otherwise through the row reader.
    flat: bool,
    /// Rows in the file (from the footer).
    pub rows: u64,
}

impl std::fmt::Debug for DmsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmsFile")
            .field("bucket", &self.bucket)
            .field("key", &self.path.key)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// (physical type, converted type) pairs the row reader converts; it panics on others, so a
/// file with any other is refused before a row is read (the profiler refuses them too).
pub(crate) fn convertible(physical: PhysicalType, converted: ConvertedType) -> bool {
    use ConvertedType as C;
    match physical {
        PhysicalType::BOOLEAN
        | PhysicalType::INT96
        | PhysicalType::FLOAT
        | PhysicalType::DOUBLE => true,
        PhysicalType::INT32 => matches!(
            converted,
            C::INT_8
                | C::INT_16
                | C::INT_32
                | C::NONE
                | C::UINT_8
                | C::UINT_16
                | C::UINT_32
                | C::DATE
                | C::TIME_MILLIS
                | C::DECIMAL
        ),
        PhysicalType::INT64 => matches!(
            converted,
            C::INT_64
                | C::NONE
                | C::UINT_64
                | C::TIME_MICROS
                | C::TIMESTAMP_MILLIS
                | C::TIMESTAMP_MICROS
                | C::DECIMAL
        ),
        PhysicalType::BYTE_ARRAY => matches!(
            converted,
            C::UTF8 | C::ENUM | C::JSON | C::BSON | C::NONE | C::DECIMAL
        ),
        PhysicalType::FIXED_LEN_BYTE_ARRAY => matches!(converted, C::DECIMAL | C::NONE),
    }
}

impl DmsFile {
    /// Reads the footer of `s3://bucket/<path.key>` and checks the schema can be converted and
    /// has the key columns.
    pub fn open(
        store: Arc<dyn ObjectStore>,
        bucket: &str,
        path: DmsPath,
        binding: DmsBinding,
    ) -> Result<DmsFile, FileError> {
        let unreadable = |message: String| FileError::Unreadable {
            bucket: bucket.to_owned(),
            key: path.key.clone(),
            message,
        };
        let len = store.size(bucket, &path.key)?;
        let chunks = ObjectChunks {
            store,
            bucket: bucket.to_owned(),
            key: path.key.clone(),
            len,
        };
        let reader = SerializedFileReader::new(chunks).map_err(|e| match e {
            parquet::errors::ParquetError::External(inner) => {
                match inner.downcast::<ObjectError>() {
                    Ok(o) => FileError::Object(*o),
                    Err(other) => unreadable(format!("not a readable Parquet file: {other}")),
                }
            }
            e => unreadable(format!("not a readable Parquet file: {e}")),
        })?;
        let meta = reader.metadata().file_metadata();
        let descr = meta.schema_descr();
        for c in descr.columns() {
            if !convertible(c.physical_type(), c.converted_type()) {
                return Err(unreadable(format!(
                    "column {:?} has type {} {} which cannot be converted",
                    c.path().string(),
                    c.physical_type(),
                    c.converted_type()
                )));
            }
            if c.self_type().get_basic_info().has_repetition()
                && c.self_type().get_basic_info().repetition() == Repetition::REPEATED
            {
                return Err(unreadable(format!(
                    "column {:?} is repeated; DMS writes flat tables",
                    c.path().string()
                )));
            }
        }
        let columns: Vec<ColumnInfo> = descr
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| ColumnInfo::of(f.as_ref()))
            .collect();
        for k in &binding.key {
            if !columns.iter().any(|c| &c.name == k) {
                return Err(unreadable(format!(
                    "key column {k:?} of {}/{} is not in the file (columns: {})",
                    binding.source,
                    binding.entity,
                    columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let op_index = columns.iter().position(|c| c.name == OP_COLUMN);
        let ts_index = columns
            .iter()
            .position(|c| c.name == binding.timestamp_column);
        let rows = u64::try_from(meta.num_rows()).unwrap_or(0);
        let schema = FileSchema::of(descr);
        let flat = descr.num_columns() == columns.len()
            && descr
                .root_schema()
                .get_fields()
                .iter()
                .all(|f| f.is_primitive());
        Ok(DmsFile {
            flat,
            reader,
            bucket: bucket.to_owned(),
            path,
            binding,
            columns,
            schema,
            op_index,
            ts_index,
            rows,
        })
    }

    /// Reads through parquet's row reader even when the file is flat: the reference the
    /// columnar reader is tested against (files with nested columns always go this way).
    pub fn through_row_reader(mut self) -> DmsFile {
        self.flat = false;
        self
    }

    /// The file's columns and types.
    pub fn schema(&self) -> &FileSchema {
        &self.schema
    }

    pub fn path(&self) -> &DmsPath {
        &self.path
    }

    /// `s3://bucket/key`.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.path.key)
    }

    /// Reads every row in order, handing each outcome to `sink`. `previous` is the schema of
    /// the table's previous file, if known; `fallback_time` dates changes that have neither a
    /// timestamp column nor a time in their file name.
    pub fn read(
        &self,
        previous: Option<(&str, &FileSchema)>,
        fallback_time: DateTime<Utc>,
        sink: &mut dyn FnMut(Decoded),
    ) {
        let ignore = [OP_COLUMN, self.binding.timestamp_column.as_str()];
        let schema_problem = previous.and_then(|(prev_key, prev)| {
            let added = self.schema.added_columns(prev);
            if !added.is_empty() {
                tracing::info!(file = %self.path.key, added = added.len(), "columns added since the previous file");
            }
            let changes = self.schema.incompatible_changes(prev, &ignore);
            (!changes.is_empty()).then(|| {
                format!(
                    "the schema differs from the table's previous file {prev_key}: {}",
                    changes.join("; ")
                )
            })
        });
        let mut row_no: u64 = 0;
        for g in 0..self.reader.num_row_groups() {
            let group_rows =
                u64::try_from(self.reader.metadata().row_group(g).num_rows()).unwrap_or(0);
            let first = row_no + 1;
            let mut read_in_group: u64 = 0;
            let failure = match self.reader.get_row_group(g) {
                Err(e) => Some(e.to_string()),
                Ok(group) if self.flat => {
                    let mut on_row = |fields: &mut [Field]| {
                        row_no += 1;
                        read_in_group += 1;
                        let named = self
                            .columns
                            .iter()
                            .zip(fields.iter_mut())
                            .map(|(c, f)| (c.name.clone(), std::mem::replace(f, Field::Null)));
                        sink(self.decode_row(
                            named,
                            row_no,
                            fallback_time,
                            schema_problem.as_deref(),
                        ));
                    };
                    columnar::read_group(group.as_ref(), &mut on_row)
                        .err()
                        .map(|e| e.to_string())
                }
                Ok(group) => match group.get_row_iter(None) {
                    Err(e) => Some(e.to_string()),
                    Ok(rows) => {
                        let mut failure = None;
                        for row in rows {
                            match row {
                                Ok(row) => {
                                    row_no += 1;
                                    read_in_group += 1;
                                    sink(self.decode_row(
                                        row.into_columns().into_iter(),
                                        row_no,
                                        fallback_time,
                                        schema_problem.as_deref(),
                                    ));
                                }
                                Err(e) => {
                                    failure = Some(e.to_string());
                                    break;
                                }
                            }
                        }
                        failure
                    }
                },
            };
            if let Some(message) = failure {
                let from = first + read_in_group;
                let to = first + group_rows.max(read_in_group + 1) - 1;
                tracing::warn!(file = %self.path.key, row_group = g, from, to, "row group cannot be read");
                sink(Decoded::Rejected(
                    self.rows_rejection(from, to, g, &message),
                ));
                row_no = first + group_rows.max(read_in_group) - 1;
            } else if read_in_group < group_rows {
                // The footer promised more rows than the pages held.
                let from = first + read_in_group;
                let to = first + group_rows - 1;
                sink(Decoded::Rejected(self.rows_rejection(
                    from,
                    to,
                    g,
                    "the row group ended before the row count its footer gives",
                )));
                row_no = to;
            }
        }
    }

    fn rows_rejection(&self, from: u64, to: u64, group: usize, message: &str) -> Rejection {
        let rows = if from == to {
            format!("row {from}")
        } else {
            format!("rows {from}-{to}")
        };
        let place = format!("{} {rows} (row group {group})", self.uri());
        Rejection {
            stage: Stage::Ingest,
            record: format!("{}/{} {place}", self.binding.source, self.binding.entity),
            change: None,
            raw: Some(json!({
                "file": self.uri(),
                "firstRow": from,
                "lastRow": to,
                "rowGroup": group,
            })),
            outcome: Outcome::from(
                Issue::error("structure", format!("cannot read {rows}: {message}")).at(place),
            )
            .to_fhir(),
        }
    }

    /// A row to a change, or to a rejection naming file, row and column.
    fn decode_row(
        &self,
        row: impl Iterator<Item = (String, Field)>,
        row_no: u64,
        fallback_time: DateTime<Utc>,
        schema_problem: Option<&str>,
    ) -> Decoded {
        // Only made when a row is refused (it costs two strings a row otherwise).
        let place = || format!("{} row {row_no}", self.uri());
        let mut issues: Vec<Issue> = Vec::new();
        let mut data = Map::with_capacity(self.columns.len());
        let mut op_text: Option<String> = None;
        let mut ts_text: Option<Option<String>> = None;
        let default_info = ColumnInfo::default();
        // The row is consumed: names and strings move into the record without a copy.
        for (i, (name, field)) in row.enumerate() {
            if Some(i) == self.op_index {
                op_text = match field {
                    Field::Str(s) => Some(s),
                    Field::Null => None,
                    _ => Some(String::from("<not a string>")),
                };
                continue;
            }
            if Some(i) == self.ts_index {
                ts_text = Some(match field {
                    Field::Str(s) => Some(s),
                    _ => None,
                });
                continue;
            }
            let converted = match field {
                Field::Str(s) => Ok(Value::String(s)),
                other => to_json(&other, self.columns.get(i).unwrap_or(&default_info)),
            };
            match converted {
                Ok(v) => {
                    data.insert(name, v);
                }
                Err(m) => {
                    issues.push(
                        Issue::error("value", format!("column {name:?}: {m}"))
                            .at(format!("{} column {name}", place())),
                    );
                    data.insert(name, Value::Null);
                }
            }
        }
        let op = match (self.op_index, op_text.as_deref()) {
            (None, _) => Some(Op::Upsert),
            // A full load writes only inserts; a null `Op` there says nothing else.
            (Some(_), None) if self.path.is_full_load() => Some(Op::Upsert),
            (Some(_), Some("I" | "U")) => Some(Op::Upsert),
            (Some(_), Some("D")) => Some(Op::Delete),
            (Some(_), other) => {
                issues.push(
                    Issue::error(
                        "code-invalid",
                        match other {
                            None => "Op is null; expected I, U or D".to_owned(),
                            Some(v) if v.chars().count() <= 8 => {
                                format!("unknown Op {v:?}; expected I, U or D")
                            }
                            Some(_) => "unknown Op; expected I, U or D".to_owned(),
                        },
                    )
                    .at(format!("{} column {OP_COLUMN}", place())),
                );
                None
            }
        };
        let mut key_pairs = Vec::with_capacity(self.binding.key.len());
        for k in &self.binding.key {
            match data.get(k) {
                Some(v) if !v.is_null() => key_pairs.push((k.clone(), v.clone())),
                _ => issues.push(
                    Issue::error("required", format!("key column {k:?} is null"))
                        .at(format!("{} column {k}", place())),
                ),
            }
        }
        let name_time = match &self.path.kind {
            DmsFileKind::Cdc { at, .. } => Some(*at),
            DmsFileKind::Load { .. } => None,
        };
        let observed = match ts_text {
            Some(Some(text)) => match parse_dms_timestamp(&text) {
                Some(t) => Some(t),
                None => {
                    issues.push(
                        Issue::error(
                            "value",
                            format!(
                                "{} is not a timestamp yyyy-MM-dd HH:mm:ss.SSSSSS",
                                self.binding.timestamp_column
                            ),
                        )
                        .at(format!(
                            "{} column {}",
                            place(),
                            self.binding.timestamp_column
                        )),
                    );
                    None
                }
            },
            Some(None) => {
                issues.push(
                    Issue::error(
                        "required",
                        format!("{} is null", self.binding.timestamp_column),
                    )
                    .at(format!(
                        "{} column {}",
                        place(),
                        self.binding.timestamp_column
                    )),
                );
                None
            }
            None => name_time,
        };
        let micros = match (self.ts_index, observed) {
            (Some(_), Some(t)) | (None, Some(t)) => t.timestamp_micros().max(0) as u64,
            _ => 0,
        };
        let sequence = Sequence::parse(&format!("{micros:020}{}{row_no:012}", self.path.ordinal()))
            .unwrap_or_else(|_| Sequence::from(row_no));
        let data = Value::Object(data);
        if issues.is_empty()
            && let Some(op) = op
        {
            let change = SourceChange {
                source: self.binding.source.clone(),
                entity: self.binding.entity.clone(),
                key: RecordKey::from_pairs(key_pairs),
                op,
                sequence,
                observed_at: observed.unwrap_or(fallback_time),
                data: data.into(),
            };
            if let Some(problem) = schema_problem {
                return Decoded::Rejected(Rejection {
                    stage: Stage::Ingest,
                    record: change.label(),
                    outcome: Outcome::from(
                        Issue::error("structure", problem.to_owned()).at(place()),
                    )
                    .to_fhir(),
                    change: Some(change),
                    raw: None,
                });
            }
            return Decoded::Change(change);
        }
        if let Some(problem) = schema_problem {
            issues.push(Issue::error("structure", problem.to_owned()).at(place()));
        }
        let mut raw = Map::new();
        raw.insert("file".into(), Value::String(self.uri()));
        raw.insert("row".into(), Value::from(row_no));
        if let Some(op) = &op_text {
            raw.insert(OP_COLUMN.into(), Value::String(op.clone()));
        }
        raw.insert("data".into(), data);
        Decoded::Rejected(Rejection {
            stage: Stage::Ingest,
            record: format!(
                "{}/{} {}",
                self.binding.source,
                self.binding.entity,
                place()
            ),
            change: None,
            raw: Some(Value::Object(raw)),
            outcome: Outcome { issues }.to_fhir(),
        })
    }
}

/// Parses DMS's timestamp column text `yyyy-MM-dd HH:mm:ss[.f…]` (UTC).
pub fn parse_dms_timestamp(text: &str) -> Option<DateTime<Utc>> {
    fast_dms_timestamp(text).or_else(|| {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
            .ok()
            .map(|t| t.and_utc())
    })
}

/// The exact form DMS writes, `yyyy-MM-dd HH:mm:ss.SSSSSS`, without a format interpreter (it
/// is parsed once per row).
fn fast_dms_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let b = text.as_bytes();
    if b.len() != 26 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 7)?, num(8, 10)?)?;
    let time = chrono::NaiveTime::from_hms_micro_opt(
        num(11, 13)?,
        num(14, 16)?,
        num(17, 19)?,
        num(20, 26)?,
    )?;
    Some(date.and_time(time).and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dms_timestamps() {
        let t = parse_dms_timestamp("2022-07-26 06:46:18.616807").unwrap();
        assert_eq!(t.timestamp_micros(), 1_658_817_978_616_807);
        assert!(parse_dms_timestamp("2022-07-26 06:46:18").is_some());
        assert!(parse_dms_timestamp("2022-07-26T06:46:18.616807").is_none());
        assert!(parse_dms_timestamp("yesterday").is_none());
        assert!(parse_dms_timestamp("2022-13-26 06:46:18.616807").is_none());
        assert!(parse_dms_timestamp("2022-07-26 06:46:18.61680x").is_none());
        assert_eq!(
            parse_dms_timestamp("2022-07-26 06:46:18.6")
                .unwrap()
                .timestamp_micros(),
            1_658_817_978_600_000
        );
    }

    #[test]
    fn only_conversions_the_row_reader_knows_are_allowed() {
        use ConvertedType as C;
        assert!(convertible(PhysicalType::INT32, C::DATE));
        assert!(convertible(PhysicalType::INT64, C::TIMESTAMP_MICROS));
        assert!(convertible(PhysicalType::FIXED_LEN_BYTE_ARRAY, C::DECIMAL));
        assert!(convertible(PhysicalType::BYTE_ARRAY, C::JSON));
        // The row reader would panic on these: the file is refused instead.
        assert!(!convertible(PhysicalType::INT64, C::UINT_8));
        assert!(!convertible(PhysicalType::INT32, C::TIMESTAMP_MILLIS));
        assert!(!convertible(PhysicalType::BYTE_ARRAY, C::INTERVAL));
        assert!(!convertible(PhysicalType::FIXED_LEN_BYTE_ARRAY, C::UTF8));
    }

    #[test]
    fn schema_changes() {
        let s = |pairs: &[(&str, &str)]| {
            FileSchema(
                pairs
                    .iter()
                    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                    .collect(),
            )
        };
        let prev = s(&[
            ("id", "INT64 NONE REQUIRED"),
            ("name", "BYTE_ARRAY UTF8 OPTIONAL"),
        ]);
        let same_but_optional = s(&[
            ("id", "INT64 NONE OPTIONAL"),
            ("name", "BYTE_ARRAY UTF8 OPTIONAL"),
        ]);
        assert!(
            same_but_optional
                .incompatible_changes(&prev, &[])
                .is_empty()
        );
        let added = s(&[
            ("id", "INT64 NONE REQUIRED"),
            ("name", "BYTE_ARRAY UTF8 OPTIONAL"),
            ("x", "INT32 NONE OPTIONAL"),
        ]);
        assert!(added.incompatible_changes(&prev, &[]).is_empty());
        assert_eq!(added.added_columns(&prev), ["x"]);
        let changed = s(&[("id", "BYTE_ARRAY UTF8 REQUIRED")]);
        let c = changed.incompatible_changes(&prev, &[]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].contains("\"id\" changed"), "{c:?}");
        assert!(c[1].contains("\"name\" was removed"), "{c:?}");
        assert!(
            changed
                .incompatible_changes(&prev, &["name", "id"])
                .is_empty()
        );
    }
}
