//! A row group of a flat Parquet file (every top-level field one primitive column, as DMS
//! writes) read column by column, in batches of [`BATCH`] rows, then handed on row by row.
//!
//! The row reader (`get_row_iter`) builds a `Row` per row, cloning every column's name and
//! walking a reader tree per field: most of a DMS file's decode time. Here each column's
//! values come from its typed column reader, and each value becomes the same [`Field`] the row
//! reader would make (through the same `Field::convert_*` functions), so rows decode exactly
//! as before. Memory holds one batch of every column, never the row group.

use parquet::column::reader::ColumnReader;
use parquet::data_type::{ByteArray, FixedLenByteArray, Int96};
use parquet::errors::{ParquetError, Result};
use parquet::file::reader::RowGroupReader;
use parquet::record::Field;
use parquet::schema::types::ColumnDescPtr;

/// Rows per batch: large enough to amortise the per-call cost of the column readers, small
/// enough to keep a batch of every column in cache.
pub const BATCH: usize = 1024;

/// Reads every row of `group`, calling `row` with its fields in column order (the callee may
/// take them). Stops at the first error, after the rows of the batches before it.
pub fn read_group(group: &dyn RowGroupReader, row: &mut dyn FnMut(&mut [Field])) -> Result<()> {
    let descr = group.metadata().schema_descr_ptr();
    let n = descr.num_columns();
    let mut columns = (0..n)
        .map(|i| Ok(Column::new(group.get_column_reader(i)?, descr.column(i))))
        .collect::<Result<Vec<_>>>()?;
    let mut batch: Vec<Vec<Field>> = (0..n).map(|_| Vec::with_capacity(BATCH)).collect();
    let mut fields: Vec<Field> = Vec::with_capacity(n);
    loop {
        let mut count = None;
        for (c, out) in columns.iter_mut().zip(batch.iter_mut()) {
            out.clear();
            let read = c.read(BATCH, out)?;
            match count {
                None => count = Some(read),
                Some(k) if k == read => {}
                Some(k) => {
                    return Err(ParquetError::General(format!(
                        "column {:?} holds {read} rows where the others hold {k}",
                        c.descr.path().string()
                    )));
                }
            }
        }
        let count = count.unwrap_or(0);
        if count == 0 {
            return Ok(());
        }
        let mut iters: Vec<_> = batch.iter_mut().map(|v| v.drain(..)).collect();
        for _ in 0..count {
            fields.clear();
            for it in &mut iters {
                fields.push(it.next().unwrap_or(Field::Null));
            }
            row(&mut fields);
        }
    }
}

/// One column's reader and its buffers.
struct Column {
    reader: ColumnReader,
    descr: ColumnDescPtr,
    defs: Vec<i16>,
}

impl Column {
    fn new(reader: ColumnReader, descr: ColumnDescPtr) -> Column {
        Column {
            reader,
            descr,
            defs: Vec::with_capacity(BATCH),
        }
    }

    /// Reads up to `max` rows' values into `out` (`Field::Null` where undefined).
    fn read(&mut self, max: usize, out: &mut Vec<Field>) -> Result<usize> {
        let descr = &self.descr;
        let max_def = descr.max_def_level();
        self.defs.clear();
        macro_rules! typed {
            ($r:expr, $t:ty, $convert:expr) => {{
                let mut values: Vec<$t> = Vec::with_capacity(max);
                let defs = (max_def > 0).then_some(&mut self.defs);
                let (rows, _, _) = $r.read_records(max, defs, None, &mut values)?;
                let mut values = values.into_iter();
                for i in 0..rows {
                    if max_def > 0 && self.defs.get(i) != Some(&max_def) {
                        out.push(Field::Null);
                        continue;
                    }
                    let Some(v) = values.next() else {
                        return Err(ParquetError::General(format!(
                            "column {:?}: fewer values than defined rows",
                            descr.path().string()
                        )));
                    };
                    out.push($convert(v)?);
                }
                rows
            }};
        }
        let rows = match &mut self.reader {
            ColumnReader::BoolColumnReader(r) => {
                typed!(r, bool, |v| Ok::<_, ParquetError>(Field::convert_bool(
                    descr, v
                )))
            }
            ColumnReader::Int32ColumnReader(r) => {
                typed!(r, i32, |v| Ok::<_, ParquetError>(Field::convert_int32(
                    descr, v
                )))
            }
            ColumnReader::Int64ColumnReader(r) => {
                typed!(r, i64, |v| Ok::<_, ParquetError>(Field::convert_int64(
                    descr, v
                )))
            }
            ColumnReader::Int96ColumnReader(r) => {
                typed!(r, Int96, |v| Ok::<_, ParquetError>(Field::convert_int96(
                    descr, v
                )))
            }
            ColumnReader::FloatColumnReader(r) => {
                typed!(r, f32, |v| Ok::<_, ParquetError>(Field::convert_float(
                    descr, v
                )))
            }
            ColumnReader::DoubleColumnReader(r) => {
                typed!(r, f64, |v| Ok::<_, ParquetError>(Field::convert_double(
                    descr, v
                )))
            }
            ColumnReader::ByteArrayColumnReader(r) => {
                typed!(r, ByteArray, |v| Field::convert_byte_array(descr, v))
            }
            ColumnReader::FixedLenByteArrayColumnReader(r) => {
                typed!(r, FixedLenByteArray, |v: FixedLenByteArray| {
                    Field::convert_byte_array(descr, v.into())
                })
            }
        };
        Ok(rows)
    }
}
