//! Reading each format into column statistics, row by row (a file is never held whole).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Cell, ColumnStats, FileProfile, Kind, ProfileError, ProfileOptions};
use crate::sources::dms::file::convertible;
use crate::sources::dms::value::{ColumnInfo, to_json};
use crate::sources::transfer::CsvFormat;
use crate::sources::transfer::csv::CsvRows;
use crate::sources::transfer::row::Row;

/// A file format the profiler reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Ndjson,
    Parquet,
}

impl Format {
    /// The format a file name says (`.csv`, `.ndjson`/`.jsonl`, `.parquet`).
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" => Some(Format::Ndjson),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// Columns in first-seen order.
struct Columns {
    stats: Vec<ColumnStats>,
}

impl Columns {
    fn index(&mut self, name: &str) -> usize {
        match self.stats.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                self.stats.push(ColumnStats::new(name));
                self.stats.len() - 1
            }
        }
    }
}

pub(super) fn profile(
    path: &Path,
    format: Format,
    options: &ProfileOptions,
) -> Result<FileProfile, ProfileError> {
    let file = path.display().to_string();
    let open = || {
        File::open(path).map_err(|e| ProfileError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })
    };
    let mut columns = Columns { stats: Vec::new() };
    let mut errors = Vec::new();
    let rows = match format {
        Format::Csv => csv(open()?, &file, options, &mut columns, &mut errors)?,
        Format::Ndjson => ndjson(open()?, &file, options, &mut columns, &mut errors),
        Format::Parquet => parquet(open()?, &file, options, &mut columns, &mut errors)?,
    };
    let mut profiles = Vec::with_capacity(columns.stats.len());
    for mut c in columns.stats {
        // A column missing from some NDJSON rows is null there.
        let seen = c.nulls + c.values;
        c.nulls += rows.saturating_sub(seen);
        profiles.push(c.finish(rows, options));
    }
    Ok(FileProfile {
        file,
        format,
        rows,
        schema: profiles
            .iter()
            .map(|c| (c.name.clone(), c.inferred_type.clone()))
            .collect(),
        columns: profiles,
        errors,
    })
}

fn limit_reached(rows: u64, options: &ProfileOptions) -> bool {
    options.max_rows.is_some_and(|m| rows >= m)
}

/// CSV through the Transfer source's decoder ([`CsvRows`]), so the profiler reads a file as
/// ingest does: the same quoting and broken-quoting recovery, the same rows refused (a wrong
/// field count, a field that is not UTF-8), named the same way.
fn csv(
    f: File,
    file: &str,
    options: &ProfileOptions,
    columns: &mut Columns,
    errors: &mut Vec<String>,
) -> Result<u64, ProfileError> {
    let mut reader = CsvRows::new(BufReader::new(f), &CsvFormat::default());
    let mut idx: Option<Vec<(String, usize)>> = None;
    let mut rows = 0;
    loop {
        if limit_reached(rows, options) {
            break;
        }
        let Some(next) = reader.next() else { break };
        match next {
            Ok(Row::Bad {
                row: 0,
                place,
                message,
            }) => {
                return Err(ProfileError::Malformed {
                    file: file.to_owned(),
                    reason: format!("cannot read the header: {place}: {message}"),
                });
            }
            Ok(Row::Bad { place, message, .. }) => {
                errors.push(format!("{file} {place}: {message}"));
            }
            Ok(Row::Record { fields, .. }) => {
                rows += 1;
                let idx = idx.get_or_insert_with(|| {
                    reader
                        .columns()
                        .unwrap_or_default()
                        .iter()
                        .map(|name| (name.clone(), columns.index(name)))
                        .collect()
                });
                for (name, i) in idx.iter() {
                    let cell = match fields.get(name) {
                        Some(Value::String(s)) => Cell::Text(s),
                        _ => Cell::Null,
                    };
                    columns.stats[*i].add(cell, options);
                }
            }
            Err(broken) => {
                errors.push(format!("{file} {}", broken.message()));
                break;
            }
        }
    }
    // A file of a header only still has its columns.
    if idx.is_none()
        && let Some(names) = reader.columns()
    {
        for name in names {
            columns.index(name);
        }
    }
    Ok(rows)
}

fn add_json(stats: &mut ColumnStats, v: &Value, options: &ProfileOptions) {
    match v {
        Value::Null => stats.add(Cell::Null, options),
        Value::String(s) => stats.add(Cell::Text(s), options),
        Value::Bool(b) => stats.add(
            Cell::Typed(if *b { "true" } else { "false" }, Kind::Boolean),
            options,
        ),
        Value::Number(n) => {
            let kind = if n.is_f64() {
                Kind::Decimal
            } else {
                Kind::Integer
            };
            stats.add(Cell::Typed(&n.to_string(), kind), options);
        }
        other => stats.add(Cell::Typed(&other.to_string(), Kind::Json), options),
    }
}

fn ndjson(
    f: File,
    file: &str,
    options: &ProfileOptions,
    columns: &mut Columns,
    errors: &mut Vec<String>,
) -> u64 {
    let mut rows = 0;
    for (n, line) in BufReader::new(f).lines().enumerate() {
        if limit_reached(rows, options) {
            break;
        }
        let line_no = n + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("{file} line {line_no}: {e}"));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(map)) => {
                rows += 1;
                for (k, v) in &map {
                    let i = columns.index(k);
                    add_json(&mut columns.stats[i], v, options);
                }
            }
            Ok(_) => errors.push(format!("{file} line {line_no}: not a JSON object")),
            Err(e) => errors.push(format!(
                "{file} line {line_no}: not JSON (column {})",
                e.column()
            )),
        }
    }
    rows
}

fn parquet(
    f: File,
    file: &str,
    options: &ProfileOptions,
    columns: &mut Columns,
    errors: &mut Vec<String>,
) -> Result<u64, ProfileError> {
    let malformed = |reason: String| ProfileError::Malformed {
        file: file.to_owned(),
        reason,
    };
    let reader = SerializedFileReader::new(f)
        .map_err(|e| malformed(format!("not a readable Parquet file: {e}")))?;
    let meta = reader.metadata().file_metadata();
    for c in meta.schema_descr().columns() {
        if !convertible(c.physical_type(), c.converted_type()) {
            return Err(malformed(format!(
                "column {} has a type the profiler cannot read ({:?}/{:?})",
                c.path(),
                c.physical_type(),
                c.converted_type()
            )));
        }
    }
    let infos: Vec<ColumnInfo> = meta
        .schema()
        .get_fields()
        .iter()
        .map(|t| ColumnInfo::of(t))
        .collect();
    let idx: Vec<usize> = infos.iter().map(|c| columns.index(&c.name)).collect();
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| malformed(format!("cannot read rows: {e}")))?;
    let mut rows = 0;
    for row in iter {
        if limit_reached(rows, options) {
            break;
        }
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("{file} row {}: {e}", rows + 1));
                break;
            }
        };
        rows += 1;
        for (n, (_, field)) in row.get_column_iter().enumerate() {
            let (Some(i), Some(info)) = (idx.get(n), infos.get(n)) else {
                continue;
            };
            match to_json(field, info) {
                Ok(v) => add_json(&mut columns.stats[*i], &v, options),
                Err(reason) => {
                    errors.push(format!("{file} row {rows} column {}: {reason}", info.name));
                }
            }
        }
    }
    Ok(rows)
}
