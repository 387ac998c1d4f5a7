//! Writing DMS-style Parquet files: for tests, the decode benchmark and the example's
//! generator (`cargo run --example gen_dms`). Not used by the pipeline itself.
//!
//! A schema is given in Parquet's message syntax, so every physical and logical type DMS
//! writes can be produced exactly (`required binary DMS_TIMESTAMP (STRING);`,
//! `optional fixed_len_byte_array(16) amount (DECIMAL(38,2));` …).

use std::io::Write;
use std::sync::Arc;

use parquet::basic::{Compression, Type as PhysicalType};
use parquet::column::writer::ColumnWriter;
use parquet::data_type::{ByteArray, FixedLenByteArray};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// One value of a row. Integers cover every integer-backed type (INT8..64, DATE days, TIME,
/// TIMESTAMP units, INT32/INT64 decimals' unscaled values); `Decimal` is the unscaled value of
/// a FIXED_LEN_BYTE_ARRAY/BYTE_ARRAY decimal.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Decimal(i128),
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::Str(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::Str(s)
    }
}

impl From<i64> for Cell {
    fn from(n: i64) -> Self {
        Cell::Int(n)
    }
}

impl From<f64> for Cell {
    fn from(f: f64) -> Self {
        Cell::Float(f)
    }
}

impl From<bool> for Cell {
    fn from(b: bool) -> Self {
        Cell::Bool(b)
    }
}

/// How the file is written.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Rows per row group (DMS default: 10,024).
    pub row_group_rows: usize,
    pub compression: Compression,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            row_group_rows: 10_024,
            compression: Compression::SNAPPY,
        }
    }
}

/// Writes `rows` (each in schema column order) as a Parquet file to `out`.
pub fn write_rows<W: Write + Send>(
    out: W,
    message_type: &str,
    rows: &[Vec<Cell>],
    options: WriteOptions,
) -> Result<(), ParquetError> {
    let schema = Arc::new(parse_message_type(message_type)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(options.compression)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(out, schema, props)?;
    for group in rows.chunks(options.row_group_rows.max(1)) {
        let mut rg = writer.next_row_group()?;
        let mut col = 0usize;
        while let Some(mut column) = rg.next_column()? {
            let cells: Vec<&Cell> = group
                .iter()
                .map(|r| r.get(col).unwrap_or(&Cell::Null))
                .collect();
            let defs: Vec<i16> = cells
                .iter()
                .map(|c| i16::from(!matches!(c, Cell::Null)))
                .collect();
            let present = cells.iter().filter(|c| !matches!(c, Cell::Null));
            let bad = |what: &str| {
                ParquetError::General(format!("column {col}: a {what} column given {cells:?}"))
            };
            match column.untyped() {
                ColumnWriter::BoolColumnWriter(w) => {
                    let v: Vec<bool> = present
                        .map(|c| match c {
                            Cell::Bool(b) => Ok(*b),
                            _ => Err(bad("boolean")),
                        })
                        .collect::<Result<_, _>>()?;
                    w.write_batch(&v, Some(&defs), None)?;
                }
                ColumnWriter::Int32ColumnWriter(w) => {
                    let v: Vec<i32> = present
                        .map(|c| match c {
                            Cell::Int(n) => i32::try_from(*n).map_err(|_| bad("INT32")),
                            _ => Err(bad("INT32")),
                        })
                        .collect::<Result<_, _>>()?;
                    w.write_batch(&v, Some(&defs), None)?;
                }
                ColumnWriter::Int64ColumnWriter(w) => {
                    let v: Vec<i64> = present
                        .map(|c| match c {
                            Cell::Int(n) => Ok(*n),
                            _ => Err(bad("INT64")),
                        })
                        .collect::<Result<_, _>>()?;
                    w.write_batch(&v, Some(&defs), None)?;
                }
                ColumnWriter::FloatColumnWriter(w) => {
                    let v: Vec<f32> = present
                        .map(|c| match c {
                            Cell::Float(f) => Ok(*f as f32),
                            _ => Err(bad("FLOAT")),
                        })
                        .collect::<Result<_, _>>()?;
                    w.write_batch(&v, Some(&defs), None)?;
                }
                ColumnWriter::DoubleColumnWriter(w) => {
                    let v: Vec<f64> = present
                        .map(|c| match c {
                            Cell::Float(f) => Ok(*f),
                            _ => Err(bad("DOUBLE")),
                        })
                        .collect::<Result<_, _>>()?;
                    w.write_batch(&v, Some(&defs), None)?;
                }
                ColumnWriter::ByteArrayColumnWriter(w) => {
                    let v: Vec<ByteArray> = present
                        .map(|c| match c {
                            Cell::Str(s) => Ok(ByteArray::from(s.as_bytes().to_vec())),
                            Cell::Bytes(b) => Ok(ByteArray::from(b.clone())),
                            Cell::Decimal(n) => Ok(ByteArray::from(minimal_be(*n))),
                            _ => Err(bad("BYTE_ARRAY")),
                        })
                        .collect::<Result<_, _>>()?;
                    w.write_batch(&v, Some(&defs), None)?;
                }
                ColumnWriter::FixedLenByteArrayColumnWriter(w) => {
                    let len = usize::try_from(w.get_descriptor().type_length()).unwrap_or(0);
                    let v: Vec<FixedLenByteArray> = present
                        .map(|c| match c {
                            Cell::Decimal(n) => {
                                let full = n.to_be_bytes();
                                if len > 16 {
                                    let fill = if *n < 0 { 0xff } else { 0 };
                                    let mut b = vec![fill; len - 16];
                                    b.extend_from_slice(&full);
                                    Ok(FixedLenByteArray::from(b))
                                } else {
                                    Ok(FixedLenByteArray::from(full[16 - len..].to_vec()))
                                }
                            }
                            Cell::Bytes(b) if b.len() == len => {
                                Ok(FixedLenByteArray::from(b.clone()))
                            }
                            _ => Err(bad("FIXED_LEN_BYTE_ARRAY")),
                        })
                        .collect::<Result<_, _>>()?;
                    w.write_batch(&v, Some(&defs), None)?;
                }
                ColumnWriter::Int96ColumnWriter(_) => {
                    return Err(ParquetError::General(format!(
                        "column {col}: {} is not written by this helper",
                        PhysicalType::INT96
                    )));
                }
            }
            column.close()?;
            col += 1;
        }
        rg.close()?;
    }
    writer.close()?;
    Ok(())
}

/// The shortest big-endian two's-complement bytes of `n` (a BYTE_ARRAY decimal).
fn minimal_be(n: i128) -> Vec<u8> {
    let full = n.to_be_bytes();
    let fill = if n < 0 { 0xff } else { 0 };
    let mut start = 0;
    while start < 15 && full[start] == fill && (full[start + 1] & 0x80) == (fill & 0x80) {
        start += 1;
    }
    full[start..].to_vec()
}

/// Writes to a file path.
pub fn write_file(
    path: &std::path::Path,
    message_type: &str,
    rows: &[Vec<Cell>],
    options: WriteOptions,
) -> Result<(), ParquetError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ParquetError::External(Box::new(e)))?;
    }
    let file = std::fs::File::create(path).map_err(|e| ParquetError::External(Box::new(e)))?;
    write_rows(file, message_type, rows, options)
}

/// The schema of the Synthea-like `patients` table used by the benchmark and the example.
pub const PATIENTS_SCHEMA: &str = "
message patients {
  required binary DMS_TIMESTAMP (STRING);
  optional binary Id (STRING);
  optional int32 BIRTHDATE (DATE);
  optional int32 DEATHDATE (DATE);
  optional binary SSN (STRING);
  optional binary PREFIX (STRING);
  optional binary FIRST (STRING);
  optional binary LAST (STRING);
  optional binary MARITAL (STRING);
  optional binary RACE (STRING);
  optional binary ETHNICITY (STRING);
  optional binary GENDER (STRING);
  optional binary ADDRESS (STRING);
  optional binary CITY (STRING);
  optional binary STATE (STRING);
  optional binary ZIP (STRING);
  optional double LAT;
  optional double LON;
  optional fixed_len_byte_array(9) HEALTHCARE_EXPENSES (DECIMAL(20,2));
  optional int64 INCOME;
  optional int64 UPDATED_AT (TIMESTAMP(MICROS,true));
}";

/// A deterministic Synthea-like patient row (schema [`PATIENTS_SCHEMA`]) for row `i`,
/// written by DMS at `micros` since the epoch.
pub fn patient_row(i: u64, micros: i64) -> Vec<Cell> {
    const FIRST: [&str; 8] = [
        "Temika453",
        "Margorie48",
        "Chasidy481",
        "Barney639",
        "Rodrigo242",
        "Leonie332",
        "Jennie425",
        "Cameron381",
    ];
    const LAST: [&str; 6] = [
        "Wuckert783",
        "Cormier289",
        "Lakin515",
        "Grady603",
        "Jacobs452",
        "Heaney114",
    ];
    const CITY: [&str; 5] = ["Walpole", "Andover", "Rockport", "Boston", "Westwood"];
    let n = i as usize;
    let ts = chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        .unwrap_or_default();
    let female = i.is_multiple_of(2);
    vec![
        Cell::Str(ts),
        Cell::Str(format!("{:08x}-7e9e-4f3f-8f91-{:012x}", i, i * 7919)),
        Cell::Int(-3_650 + (i as i64 * 37) % 25_000),
        if i.is_multiple_of(17) {
            Cell::Int(18_000 + (i as i64 % 1_000))
        } else {
            Cell::Null
        },
        Cell::Str(format!("999-{:02}-{:04}", i % 100, i % 10_000)),
        Cell::Str(if female { "Mrs." } else { "Mr." }.into()),
        Cell::Str(FIRST[n % FIRST.len()].into()),
        Cell::Str(LAST[n % LAST.len()].into()),
        Cell::Str(if i.is_multiple_of(3) { "S" } else { "M" }.into()),
        Cell::Str("white".into()),
        Cell::Str("nonhispanic".into()),
        Cell::Str(if female { "F" } else { "M" }.into()),
        Cell::Str(format!("{} Kirlin Village Suite {}", 100 + i % 900, i % 50)),
        Cell::Str(CITY[n % CITY.len()].into()),
        Cell::Str("Massachusetts".into()),
        Cell::Str(format!("{:05}", 1000 + i % 2000)),
        Cell::Float(42.0 + (i % 1000) as f64 / 1000.0),
        Cell::Float(-71.0 - (i % 1000) as f64 / 1000.0),
        Cell::Decimal(i128::from(i) * 12_345 % 100_000_000),
        Cell::Int((i as i64 * 7_919) % 250_000),
        Cell::Int(micros - 86_400_000_000),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_two_complement() {
        assert_eq!(minimal_be(0), [0]);
        assert_eq!(minimal_be(127), [0x7f]);
        assert_eq!(minimal_be(128), [0x00, 0x80]);
        assert_eq!(minimal_be(-1), [0xff]);
        assert_eq!(minimal_be(-129), [0xff, 0x7f]);
    }
}
