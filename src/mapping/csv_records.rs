//! A small CSV reader that turns each row of a file into a [`SourceChange`] upsert, for
//! `fhir-unify map`, the Synthea example and benchmarks. The full Transfer decoders (encodings,
//! fixed-width, gzip, …) live in `sources::transfer`; this one only knows UTF-8 CSV with a
//! header, so it can be swapped for them.
//!
//! A record is the row as a JSON object of header → string; empty cells are left out (so
//! `record.STOP` is undefined, as a mapping expects of a missing value). The key is made of the
//! configured key columns, as written (an empty cell is `""` in the key: Synthea's medications
//! need `STOP` in theirs, and it is often empty); a row whose key cells are all empty is an
//! error. The sequence is the row's line number; errors name the file and the
//! line, never a value.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};

use crate::model::{Op, RecordKey, Sequence, SourceChange};

/// What each row becomes.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub source: String,
    pub entity: String,
    /// The columns whose values make the record key (at least one).
    pub key: Vec<String>,
    pub delimiter: u8,
    /// The `observed_at` of every change (a file has one time: when it was written).
    pub observed_at: DateTime<Utc>,
}

impl CsvOptions {
    /// Comma-separated, observed now.
    pub fn new(source: &str, entity: &str, key: &[&str]) -> Self {
        CsvOptions {
            source: source.to_owned(),
            entity: entity.to_owned(),
            key: key.iter().map(|k| (*k).to_owned()).collect(),
            delimiter: b',',
            observed_at: Utc::now(),
        }
    }
}

/// A CSV file or row that cannot be read; names the file and line, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvRecordError {
    #[error("{file}: cannot read: {reason}")]
    Open { file: String, reason: String },
    #[error("{file}: {reason}")]
    Header { file: String, reason: String },
    #[error("{file} line {line}: {reason}")]
    Row {
        file: String,
        line: u64,
        reason: String,
    },
}

/// The rows of one CSV file as source changes, in file order.
#[derive(Debug)]
pub struct CsvRecords<R> {
    reader: ::csv::Reader<R>,
    file: String,
    headers: Vec<String>,
    key_index: Vec<(String, usize)>,
    options: CsvOptions,
    record: ::csv::StringRecord,
    done: bool,
}

/// Opens a CSV file (header first).
pub fn open_csv(path: &Path, options: CsvOptions) -> Result<CsvRecords<File>, CsvRecordError> {
    let file = path.display().to_string();
    let f = File::open(path).map_err(|e| CsvRecordError::Open {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    read_csv(f, &file, options)
}

/// Reads CSV from any reader; `file` names it in errors.
pub fn read_csv<R: Read>(
    reader: R,
    file: &str,
    options: CsvOptions,
) -> Result<CsvRecords<R>, CsvRecordError> {
    let header_error = |reason: String| CsvRecordError::Header {
        file: file.to_owned(),
        reason,
    };
    let mut reader = ::csv::ReaderBuilder::new()
        .delimiter(options.delimiter)
        .has_headers(true)
        .flexible(false)
        .from_reader(reader);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| header_error(format!("cannot read the header: {}", safe_reason(&e))))?
        .iter()
        .map(str::to_owned)
        .collect();
    if options.key.is_empty() {
        return Err(header_error("no key columns configured".into()));
    }
    let mut key_index = Vec::with_capacity(options.key.len());
    for k in &options.key {
        match headers.iter().position(|h| h == k) {
            Some(i) => key_index.push((k.clone(), i)),
            None => {
                return Err(header_error(format!(
                    "key column `{k}` is not in the header"
                )));
            }
        }
    }
    Ok(CsvRecords {
        reader,
        file: file.to_owned(),
        headers,
        key_index,
        options,
        record: ::csv::StringRecord::new(),
        done: false,
    })
}

impl<R> CsvRecords<R> {
    /// The header's column names.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }
}

impl<R: Read> Iterator for CsvRecords<R> {
    type Item = Result<SourceChange, CsvRecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let line_of = |e: &::csv::Error| e.position().map_or(0, |p| p.line());
        match self.reader.read_record(&mut self.record) {
            Ok(false) => {
                self.done = true;
                None
            }
            Ok(true) => {
                let line = self.record.position().map_or(0, |p| p.line());
                Some(self.change(line))
            }
            Err(e) => {
                let line = line_of(&e);
                // An I/O error ends the file; a bad row (wrong width, bad UTF-8) is reported
                // and the rows after it are still read.
                if matches!(e.kind(), ::csv::ErrorKind::Io(_)) {
                    self.done = true;
                }
                Some(Err(CsvRecordError::Row {
                    file: self.file.clone(),
                    line,
                    reason: safe_reason(&e),
                }))
            }
        }
    }
}

impl<R> CsvRecords<R> {
    fn change(&self, line: u64) -> Result<SourceChange, CsvRecordError> {
        let mut data = Map::with_capacity(self.headers.len());
        for (name, value) in self.headers.iter().zip(self.record.iter()) {
            if !value.is_empty() {
                data.insert(name.clone(), Json::String(value.to_owned()));
            }
        }
        let mut key = RecordKey::default();
        for (name, i) in &self.key_index {
            let v = self.record.get(*i).unwrap_or_default();
            key.0.insert(name.clone(), Json::String(v.to_owned()));
        }
        if key.0.values().all(|v| v.as_str() == Some("")) {
            let names: Vec<&str> = self.options.key.iter().map(String::as_str).collect();
            return Err(CsvRecordError::Row {
                file: self.file.clone(),
                line,
                reason: format!("the key ({}) is empty", names.join(", ")),
            });
        }
        Ok(SourceChange {
            source: self.options.source.clone(),
            entity: self.options.entity.clone(),
            key,
            op: Op::Upsert,
            sequence: Sequence::from(line),
            observed_at: self.options.observed_at,
            data: Json::Object(data),
        })
    }
}

/// The csv crate's error without any cell content (its messages hold positions and lengths,
/// but a UTF-8 error's text is kept generic to be safe).
fn safe_reason(e: &::csv::Error) -> String {
    match e.kind() {
        ::csv::ErrorKind::Utf8 { err, .. } => {
            format!("field {} is not valid UTF-8", err.field() + 1)
        }
        ::csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        ::csv::ErrorKind::Io(io) => format!("read error: {io}"),
        _ => "malformed CSV".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> CsvOptions {
        CsvOptions::new("synthea", "patients", &["Id"])
    }

    #[test]
    fn rows_become_upserts_with_key_and_without_empty_cells() {
        let text = "Id,NAME,STOP\np1,\"Ada, L\",\np2,Bob,2020\n";
        let rows: Vec<_> = read_csv(text.as_bytes(), "p.csv", opts())
            .unwrap()
            .collect();
        assert_eq!(rows.len(), 2);
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.data, json!({"Id": "p1", "NAME": "Ada, L"}));
        assert_eq!(first.key, RecordKey::from_pairs([("Id", json!("p1"))]));
        assert_eq!(first.sequence.as_str(), "2");
        assert_eq!(first.op, Op::Upsert);
        assert_eq!(rows[1].as_ref().unwrap().sequence.as_str(), "3");
    }

    #[test]
    fn bad_rows_name_file_and_line_and_reading_goes_on() {
        let mut bytes = b"Id,NAME\np1,Ada\np2\n,Nokey\np3,".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b"\np4,secret\n");
        let rows: Vec<_> = read_csv(&bytes[..], "p.csv", opts()).unwrap().collect();
        assert_eq!(rows.len(), 5, "{rows:?}");
        assert!(rows[0].is_ok());
        let errs: Vec<String> = rows
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        assert_eq!(
            errs,
            [
                "p.csv line 3: 1 fields where the header has 2",
                "p.csv line 4: the key (Id) is empty",
                "p.csv line 5: field 2 is not valid UTF-8",
            ]
        );
        assert_eq!(rows[4].as_ref().unwrap().data["NAME"], "secret");
    }

    #[test]
    fn header_problems_are_errors() {
        let e = read_csv("NAME\nAda\n".as_bytes(), "p.csv", opts()).unwrap_err();
        assert_eq!(e.to_string(), "p.csv: key column `Id` is not in the header");
        let mut o = opts();
        o.key.clear();
        assert!(read_csv("Id\n".as_bytes(), "p.csv", o).is_err());
        assert!(matches!(
            open_csv(Path::new("/nonexistent.csv"), opts()),
            Err(CsvRecordError::Open { .. })
        ));
    }
}
