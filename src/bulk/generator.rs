//! `fhir-unify gen`: synthetic, Synthea-like source records for tests and benchmarks, written
//! as an AWS DMS full load (Parquet, `public/<table>/LOAD<counter>.parquet`, with the
//! `DMS_TIMESTAMP` column) and, optionally, as CSV files (`csv/<table>.csv`, the shape of a
//! Transfer upload). Tables: `patients` (the schema of [`PATIENTS_SCHEMA`]), `coverage` and
//! `encounters`, whose `PATIENT` column points at generated patients. The mappings for them
//! are in `examples/mappings/synthea/`, the pipeline file `examples/synthea.yaml`.
//!
//! Output is deterministic in (records, variant): `variant` 0 is a first load; another
//! variant changes one record in ten and leaves one patient in 97 out, so loading it after
//! variant 0 gives updates and deletes as well as unchanged records.
//!
//! Memory: one file's rows at a time ([`GenOptions::rows_per_file`]).

use std::path::{Path, PathBuf};

use parquet::errors::ParquetError;

use crate::sources::dms::write::{Cell, PATIENTS_SCHEMA, WriteOptions, patient_row, write_rows};

/// The tables the generator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Patients,
    Coverage,
    Encounters,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Patients, Table::Coverage, Table::Encounters];

    pub fn name(self) -> &'static str {
        match self {
            Table::Patients => "patients",
            Table::Coverage => "coverage",
            Table::Encounters => "encounters",
        }
    }

    pub fn parse(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    fn schema(self) -> &'static str {
        match self {
            Table::Patients => PATIENTS_SCHEMA,
            Table::Coverage => COVERAGE_SCHEMA,
            Table::Encounters => ENCOUNTERS_SCHEMA,
        }
    }
}

/// Synthea's `payer_transitions`, reduced: one coverage period of a patient with a payer.
pub const COVERAGE_SCHEMA: &str = "
message coverage {
  required binary DMS_TIMESTAMP (STRING);
  optional binary Id (STRING);
  optional binary PATIENT (STRING);
  optional binary PAYER (STRING);
  optional int32 START (DATE);
  optional int32 STOP (DATE);
  optional binary PLAN (STRING);
}";

/// Synthea's `encounters`, reduced.
pub const ENCOUNTERS_SCHEMA: &str = "
message encounters {
  required binary DMS_TIMESTAMP (STRING);
  optional binary Id (STRING);
  optional int64 START (TIMESTAMP(MICROS,true));
  optional int64 STOP (TIMESTAMP(MICROS,true));
  optional binary PATIENT (STRING);
  optional binary ENCOUNTERCLASS (STRING);
  optional binary CODE (STRING);
  optional binary DESCRIPTION (STRING);
}";

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Records in all, split evenly over `tables`.
    pub records: u64,
    /// The DMS bucket folder to write (`public/<table>/…` below it).
    pub dir: PathBuf,
    pub tables: Vec<Table>,
    pub rows_per_file: usize,
    /// 0 for a first load; others change and drop records (see the module doc).
    pub variant: u64,
    /// Also write `csv/<table>.csv`.
    pub csv: bool,
}

impl GenOptions {
    pub fn new(records: u64, dir: impl Into<PathBuf>) -> Self {
        GenOptions {
            records,
            dir: dir.into(),
            tables: Table::ALL.to_vec(),
            rows_per_file: 50_000,
            variant: 0,
            csv: false,
        }
    }
}

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{path}: {message}")]
    Write { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenReport {
    pub records: u64,
    pub files: Vec<PathBuf>,
}

/// The DMS write time of generated rows (2024-05-01T00:00:00Z).
const WRITTEN_MICROS: i64 = 1_714_521_600_000_000;

fn patient_id(i: u64) -> String {
    // As `patient_row` writes it.
    format!("{:08x}-7e9e-4f3f-8f91-{:012x}", i, i * 7919)
}

fn dms_ts() -> Cell {
    Cell::Str("2024-05-01 00:00:00.000000".into())
}

/// Whether `variant` changes row `i` (of any table) from variant 0.
fn changes(variant: u64, i: u64) -> bool {
    variant > 0 && i % 10 == variant % 10
}

/// Whether `variant` leaves patient `i` out.
fn drops_patient(variant: u64, i: u64) -> bool {
    variant > 0 && i % 97 == variant % 97
}

/// What loading `variant`'s first `patients` patients after variant 0's does to them:
/// (updated, deleted); the others are unchanged.
pub fn patient_changes(patients: u64, variant: u64) -> (u64, u64) {
    let deleted = (0..patients).filter(|&i| drops_patient(variant, i)).count() as u64;
    let updated = (0..patients)
        .filter(|&i| changes(variant, i) && !drops_patient(variant, i))
        .count() as u64;
    (updated, deleted)
}

/// Row `i` of a table in a variant; `None` when the variant leaves it out.
fn row(table: Table, i: u64, patients: u64, variant: u64) -> Option<Vec<Cell>> {
    let changed = changes(variant, i);
    match table {
        Table::Patients => {
            if drops_patient(variant, i) {
                return None;
            }
            let mut r = patient_row(i, WRITTEN_MICROS);
            if changed && let Some(c) = r.get_mut(12) {
                *c = Cell::Str(format!("{} Variant Way {variant}", 100 + i % 900));
            }
            Some(r)
        }
        Table::Coverage => {
            const PAYERS: [&str; 4] = ["Medicaid", "Medicare", "Blue Cross", "Aetna"];
            let p = i % patients.max(1);
            Some(vec![
                dms_ts(),
                Cell::Str(format!("cov-{i:010}")),
                Cell::Str(patient_id(p)),
                Cell::Str(PAYERS[(i % 4) as usize].into()),
                Cell::Int(17_000 + (i % 1_500) as i64),
                if i.is_multiple_of(3) || changed {
                    Cell::Int(19_000 + (i % 200) as i64 + variant as i64)
                } else {
                    Cell::Null
                },
                Cell::Str(format!("plan-{}", i % 12)),
            ])
        }
        Table::Encounters => {
            const CLASS: [(&str, &str, &str); 4] = [
                ("AMB", "185349003", "Encounter for check up"),
                ("EMER", "50849002", "Emergency room admission"),
                ("IMP", "32485007", "Hospital admission"),
                ("AMB", "410620009", "Well child visit"),
            ];
            let (class, code, text) = CLASS[(i % 4) as usize];
            let start = 1_600_000_000_000_000 + (i as i64 % 100_000) * 3_600_000_000;
            let hours = if changed { 2 } else { 1 };
            Some(vec![
                dms_ts(),
                Cell::Str(format!("enc-{i:010}")),
                Cell::Int(start),
                Cell::Int(start + hours * 3_600_000_000),
                Cell::Str(patient_id(i % patients.max(1))),
                Cell::Str(class.into()),
                Cell::Str(code.into()),
                Cell::Str(text.into()),
            ])
        }
    }
}

/// How a column's values are written to CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CsvText {
    Plain,
    Date,
    /// Units a second, and whether the instant is UTC.
    Timestamp(i64, bool),
    Decimal(u32),
}

/// The names of a schema's columns, and how each is written to CSV: as the text the DMS
/// reader gives the Parquet value (`crate::sources::dms::value`), so the CSV of a table maps
/// with the same mapping as its Parquet files.
fn csv_columns(schema: &str) -> Vec<(String, CsvText)> {
    schema
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_end_matches(';');
            let mut words = l.split_whitespace();
            let rep = words.next()?;
            if rep != "required" && rep != "optional" {
                return None;
            }
            let name = words.nth(1)?.trim_end_matches(';').to_owned();
            let annotation = words.collect::<String>();
            let kind = if annotation.starts_with("(DATE") {
                CsvText::Date
            } else if let Some(rest) = annotation.strip_prefix("(TIMESTAMP(") {
                let per_second = match rest.split(',').next() {
                    Some("MILLIS") => 1_000,
                    Some("NANOS") => 1_000_000_000,
                    _ => 1_000_000,
                };
                CsvText::Timestamp(per_second, rest.contains("true"))
            } else if let Some(rest) = annotation.strip_prefix("(DECIMAL(") {
                let scale = rest
                    .split([',', ')'])
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                CsvText::Decimal(scale)
            } else {
                CsvText::Plain
            };
            Some((name, kind))
        })
        .collect()
}

fn cell_text(c: &Cell, kind: CsvText) -> Result<String, String> {
    use crate::sources::dms::value::{date_text, timestamp_text};
    Ok(match (c, kind) {
        (Cell::Null, _) => String::new(),
        (Cell::Int(n), CsvText::Date) => {
            date_text(i32::try_from(*n).map_err(|_| format!("date {n} is out of range"))?)?
        }
        (Cell::Int(n), CsvText::Timestamp(per_second, utc)) => timestamp_text(*n, per_second, utc)?,
        (Cell::Decimal(d), CsvText::Decimal(scale)) if scale > 0 => {
            let unit = 10i128.pow(scale);
            let sign = if *d < 0 { "-" } else { "" };
            let (int, frac) = (
                d.unsigned_abs() / unit.unsigned_abs(),
                d.unsigned_abs() % unit.unsigned_abs(),
            );
            format!("{sign}{int}.{frac:0width$}", width = scale as usize)
        }
        (Cell::Bool(b), _) => b.to_string(),
        (Cell::Int(n), _) => n.to_string(),
        (Cell::Float(f), _) => f.to_string(),
        (Cell::Str(s), _) => s.clone(),
        (Cell::Bytes(b), _) => b.iter().map(|x| format!("{x:02x}")).collect(),
        (Cell::Decimal(d), _) => d.to_string(),
    })
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> GenError {
    GenError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes the tables; returns the records and files written.
pub fn generate(opts: &GenOptions) -> Result<GenReport, GenError> {
    if opts.tables.is_empty() {
        return Err(GenError::Invalid("no table to generate".into()));
    }
    let per_table = opts.records / opts.tables.len() as u64;
    let extra = opts.records % opts.tables.len() as u64;
    let patients = if opts.tables.contains(&Table::Patients) {
        per_table + extra
    } else {
        per_table.max(1)
    };
    let mut report = GenReport::default();
    for (t, table) in opts.tables.iter().enumerate() {
        let count = if t == 0 { per_table + extra } else { per_table };
        let folder = opts.dir.join("public").join(table.name());
        std::fs::create_dir_all(&folder).map_err(|e| write_err(&folder, e))?;
        let mut csv = if opts.csv {
            let path = opts.dir.join("csv").join(format!("{}.csv", table.name()));
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(|e| write_err(p, e))?;
            }
            let mut w = csv::Writer::from_path(&path).map_err(|e| write_err(&path, e))?;
            let columns = csv_columns(table.schema());
            w.write_record(columns.iter().map(|(name, _)| name))
                .map_err(|e| write_err(&path, e))?;
            report.files.push(path.clone());
            let kinds: Vec<CsvText> = columns.into_iter().map(|(_, k)| k).collect();
            Some((w, path, kinds))
        } else {
            None
        };
        let rows_per_file = opts.rows_per_file.max(1) as u64;
        let mut start = 0u64;
        let mut file_no = 1u32;
        while start < count {
            let end = (start + rows_per_file).min(count);
            let rows: Vec<Vec<Cell>> = (start..end)
                .filter_map(|i| row(*table, i, patients, opts.variant))
                .collect();
            let path = folder.join(format!("LOAD{file_no:08X}.parquet"));
            let file = std::fs::File::create(&path).map_err(|e| write_err(&path, e))?;
            write_rows(file, table.schema(), &rows, WriteOptions::default())
                .map_err(|e: ParquetError| write_err(&path, e))?;
            if let Some((w, p, kinds)) = csv.as_mut() {
                for r in &rows {
                    let texts = r
                        .iter()
                        .zip(kinds.iter())
                        .map(|(c, k)| cell_text(c, *k))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| write_err(p, e))?;
                    w.write_record(&texts).map_err(|e| write_err(p, e))?;
                }
            }
            report.records += rows.len() as u64;
            report.files.push(path);
            start = end;
            file_no += 1;
        }
        if let Some((mut w, p, _)) = csv {
            w.flush().map_err(|e| write_err(&p, e))?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_dms_files_and_csv_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = GenOptions::new(1_000, dir.path());
        opts.rows_per_file = 150;
        opts.csv = true;
        let r = generate(&opts).unwrap();
        assert_eq!(r.records, 1_000);
        // 334 patients in 3 files, 333 coverage and encounters in 3 files each, 3 CSV files.
        assert_eq!(r.files.len(), 3 + 3 * 3);
        let csv = std::fs::read_to_string(dir.path().join("csv/coverage.csv")).unwrap();
        assert!(csv.starts_with("DMS_TIMESTAMP,Id,PATIENT,PAYER,START,STOP,PLAN\n"));
        assert_eq!(csv.lines().count(), 334);
        let again = tempfile::tempdir().unwrap();
        let mut opts2 = opts.clone();
        opts2.dir = again.path().to_owned();
        generate(&opts2).unwrap();
        let a = std::fs::read(dir.path().join("public/patients/LOAD00000002.parquet")).unwrap();
        let b = std::fs::read(again.path().join("public/patients/LOAD00000002.parquet")).unwrap();
        assert_eq!(a, b);
    }

    /// Every CSV cell is the text of what the DMS reader makes of the same Parquet value, so
    /// one mapping serves both (dates and timestamps as text, not epoch counts).
    #[test]
    fn the_csv_holds_what_the_dms_reader_reads_from_the_parquet_files() {
        use crate::objects::LocalBuckets;
        use crate::sources::Decoded;
        use crate::sources::dms::{DmsBinding, DmsFile, DmsPath};
        use serde_json::Value;

        let dir = tempfile::tempdir().unwrap();
        let mut opts = GenOptions::new(60, dir.path());
        opts.csv = true;
        generate(&opts).unwrap();
        let store = LocalBuckets::new().with_bucket("b", dir.path()).shared();
        for table in Table::ALL {
            let key = format!("public/{}/LOAD00000001.parquet", table.name());
            let binding = DmsBinding {
                source: "s".into(),
                entity: table.name().into(),
                key: vec!["Id".into()],
                timestamp_column: "DMS_TIMESTAMP".into(),
            };
            let file = DmsFile::open(
                store.clone(),
                "b",
                DmsPath::parse(&key, "").unwrap(),
                binding,
            )
            .unwrap();
            let mut rows = Vec::new();
            file.read(None, chrono::Utc::now(), &mut |d| match d {
                Decoded::Change(c) => rows.push(c.data),
                Decoded::Rejected(r) => panic!("{}", r.record),
            });
            let mut csv = ::csv::Reader::from_path(
                dir.path().join("csv").join(format!("{}.csv", table.name())),
            )
            .unwrap();
            let header = csv.headers().unwrap().clone();
            let records: Vec<::csv::StringRecord> = csv.records().map(Result::unwrap).collect();
            assert_eq!(records.len(), rows.len());
            let mut typed = 0;
            for (record, row) in records.iter().zip(&rows) {
                for (name, text) in header.iter().zip(record.iter()) {
                    if name == "DMS_TIMESTAMP" {
                        continue;
                    }
                    match &row[name] {
                        Value::Null => assert_eq!(text, "", "{name}"),
                        Value::String(s) => {
                            assert_eq!(text, s, "{name}");
                            typed += usize::from(s.contains('-') && s.len() >= 10);
                        }
                        Value::Number(n) => {
                            assert_eq!(text.parse::<f64>().unwrap(), n.as_f64().unwrap(), "{name}")
                        }
                        other => panic!("{name}: {other}"),
                    }
                }
            }
            assert!(typed > 0, "{}: dates or timestamps compared", table.name());
        }
    }

    #[test]
    fn a_variant_changes_and_drops_records() {
        assert!(row(Table::Patients, 3, 100, 0).is_some());
        assert!(row(Table::Patients, 3, 100, 3).is_none());
        assert_ne!(
            row(Table::Patients, 13, 100, 3),
            row(Table::Patients, 13, 100, 0)
        );
        assert_eq!(
            row(Table::Patients, 14, 100, 3),
            row(Table::Patients, 14, 100, 0)
        );
        assert!(matches!(
            generate(&GenOptions {
                tables: vec![],
                ..GenOptions::new(1, "/nonexistent")
            }),
            Err(GenError::Invalid(_))
        ));
        assert_eq!(Table::parse("coverage"), Some(Table::Coverage));
        assert_eq!(Table::parse("claims"), None);
    }
}
