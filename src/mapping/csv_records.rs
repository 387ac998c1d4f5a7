//! CSV files as [`SourceChange`] upserts, for `fhir-unify map`-style tools, the Synthea
//! example and benchmarks: the Transfer source's CSV decoder ([`crate::sources::transfer::csv`]:
//! quoting, broken-quoting recovery, UTF-8 checks) read row by row, with the keys and records
//! the Synthea mappings expect.
//!
//! A record is the row as an object of header → string (its cells sharing the header's names,
//! [`crate::model::Cells`]); empty cells are left out (so
//! `record.STOP` is undefined, as a mapping expects of a missing value). The key is made of the
//! configured key columns, as written (an empty cell is `""` in the key: Synthea's medications
//! need `STOP` in theirs, and it is often empty); a row whose key cells are all empty is an
//! error. The sequence is the row's number counting the header as 1 (its line number when no
//! field spans lines); errors name the file and the row, never a value.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::model::{Op, Record, RecordKey, Sequence, SourceChange};
use crate::sources::transfer::CsvFormat;
use crate::sources::transfer::csv::CsvRows;
use crate::sources::transfer::row::Row;

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

/// A CSV file or row that cannot be read; names the file and row, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvRecordError {
    #[error("{file}: cannot read: {reason}")]
    Open { file: String, reason: String },
    #[error("{file}: {reason}")]
    Header { file: String, reason: String },
    /// `place` is the decoder's: `row 3 (line 4)`.
    #[error("{file} {place}: {reason}")]
    Row {
        file: String,
        place: String,
        reason: String,
    },
}

/// The rows of one CSV file as source changes, in file order.
#[derive(Debug)]
pub struct CsvRecords<R> {
    rows: CsvRows<BufReader<R>>,
    /// The first row, read with the header.
    first: Option<Row>,
    file: String,
    headers: Vec<String>,
    options: CsvOptions,
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
    if options.key.is_empty() {
        return Err(header_error("no key columns configured".into()));
    }
    let format = CsvFormat {
        delimiter: char::from(options.delimiter).to_string(),
        ..CsvFormat::default()
    };
    let mut rows = CsvRows::new(BufReader::with_capacity(64 * 1024, reader), &format).omit_empty();
    let first = match rows.next() {
        None => None,
        Some(Ok(Row::Bad {
            row: 0,
            place,
            message,
        })) => return Err(header_error(format!("{place}: {message}"))),
        Some(Ok(row)) => Some(row),
        Some(Err(broken)) => {
            return Err(header_error(format!(
                "{}: {}",
                broken.place,
                broken.message()
            )));
        }
    };
    let Some(headers) = rows.columns().map(<[String]>::to_vec) else {
        return Err(header_error("the file is empty: no header".into()));
    };
    for k in &options.key {
        if !headers.contains(k) {
            return Err(header_error(format!(
                "key column `{k}` is not in the header"
            )));
        }
    }
    Ok(CsvRecords {
        rows,
        first,
        file: file.to_owned(),
        headers,
        options,
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
        let row = match self.first.take() {
            Some(row) => row,
            None => match self.rows.next()? {
                Ok(row) => row,
                // The decoder stops after a read error.
                Err(broken) => {
                    return Some(Err(CsvRecordError::Row {
                        file: self.file.clone(),
                        place: broken.place.clone(),
                        reason: broken.message(),
                    }));
                }
            },
        };
        Some(match row {
            Row::Bad { place, message, .. } => Err(CsvRecordError::Row {
                file: self.file.clone(),
                place,
                reason: message,
            }),
            Row::Record { row, fields } => self.change(row, fields),
        })
    }
}

impl<R> CsvRecords<R> {
    fn change(&self, row: u64, fields: Record) -> Result<SourceChange, CsvRecordError> {
        let mut key = RecordKey::default();
        for name in &self.options.key {
            let v = match fields.get(name) {
                Some(Json::String(s)) => s.clone(),
                _ => String::new(),
            };
            key.0.insert(name.clone(), Json::String(v));
        }
        if key.0.values().all(|v| v.as_str() == Some("")) {
            return Err(CsvRecordError::Row {
                file: self.file.clone(),
                place: format!("row {row}"),
                reason: format!("the key ({}) is empty", self.options.key.join(", ")),
            });
        }
        Ok(SourceChange {
            source: self.options.source.clone(),
            entity: self.options.entity.clone(),
            key,
            op: Op::Upsert,
            sequence: Sequence::from(row + 1),
            observed_at: self.options.observed_at,
            data: fields,
        })
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
                "p.csv row 2 (line 3): 1 fields, but the header has 2",
                "p.csv row 3: the key (Id) is empty",
                "p.csv row 4 (line 5): column \"NAME\" is not valid UTF-8 (is the file in another encoding? set the format's `encoding`, e.g. latin-1)",
            ]
        );
        assert_eq!(rows[4].as_ref().unwrap().data["NAME"], "secret");
    }

    #[test]
    fn composite_keys_keep_empty_cells_and_broken_quoting_is_one_bad_row() {
        let mut o = opts();
        o.key = vec!["Id".into(), "STOP".into()];
        let text = "Id,NAME,STOP\np1,\"Ada\n L\",\np2,\"Bob,2020\np3,Cy,2021\n";
        let rows: Vec<_> = read_csv(text.as_bytes(), "m.csv", o).unwrap().collect();
        assert_eq!(rows.len(), 3, "{rows:?}");
        let first = rows[0].as_ref().unwrap();
        assert_eq!(
            first.key,
            RecordKey::from_pairs([("Id", json!("p1")), ("STOP", json!(""))])
        );
        assert_eq!(first.data, json!({"Id": "p1", "NAME": "Ada\n L"}));
        // The unclosed quote of row 2 is refused alone; row 3 is read.
        assert_eq!(
            rows[1].as_ref().unwrap_err().to_string(),
            "m.csv row 2 (line 4): broken quoting: a quoted field opened here is never closed"
        );
        assert_eq!(rows[2].as_ref().unwrap().data["NAME"], "Cy");
    }

    #[test]
    fn header_problems_are_errors() {
        for (text, reason) in [
            ("", "p.csv: the file is empty: no header"),
            (
                "Id,Id\n1,2\n",
                "p.csv: header (line 1): column \"Id\" appears twice in the header; no row of the file was read",
            ),
        ] {
            let e = read_csv(text.as_bytes(), "p.csv", opts()).unwrap_err();
            assert_eq!(e.to_string(), reason);
        }
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
