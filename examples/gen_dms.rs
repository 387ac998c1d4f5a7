//! Writes the bundled example's DMS folder (`examples/dms/clinic/`): what an AWS DMS task with
//! a PostgreSQL source and a Parquet S3 target (`TimestampColumnName: DMS_TIMESTAMP`,
//! `DatePartitionEnabled: true`) leaves for a small `public.patients` table — one full-load
//! file, then two CDC files. The data is made up for the example.
//!
//! Run from the project folder: `cargo run --example gen_dms`.

use std::path::Path;

use fhir_unify::sources::dms::write::{Cell, WriteOptions, write_file};

const SCHEMA: &str = "
message patients {
  required binary DMS_TIMESTAMP (STRING);
  optional binary Op (STRING);
  required int64 patient_id;
  optional binary mrn (STRING);
  optional binary first_name (STRING);
  optional binary last_name (STRING);
  optional binary sex (STRING);
  optional int32 birth_date (DATE);
  optional binary phone (STRING);
  optional binary city (STRING);
  optional binary postal_code (STRING);
  optional fixed_len_byte_array(9) balance (DECIMAL(20,2));
  optional int64 updated_at (TIMESTAMP(MICROS,true));
}";

/// Days from 1970-01-01 to a date.
fn day(y: i32, m: u32, d: u32) -> Cell {
    let date = chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default();
    Cell::Int((date - chrono::NaiveDate::default()).num_days())
}

#[allow(clippy::too_many_arguments)]
fn row(
    ts: &str,
    op: &str,
    id: i64,
    mrn: &str,
    first: &str,
    last: &str,
    sex: &str,
    born: Cell,
    phone: &str,
    city: &str,
    zip: &str,
    balance_cents: i128,
    updated_micros: i64,
) -> Vec<Cell> {
    vec![
        ts.into(),
        op.into(),
        Cell::Int(id),
        mrn.into(),
        first.into(),
        last.into(),
        sex.into(),
        born,
        if phone.is_empty() {
            Cell::Null
        } else {
            phone.into()
        },
        city.into(),
        zip.into(),
        Cell::Decimal(balance_cents),
        Cell::Int(updated_micros),
    ]
}

/// A delete as PostgreSQL without REPLICA IDENTITY FULL sends it: only the key.
fn key_only_delete(ts: &str, id: i64) -> Vec<Cell> {
    let mut r = vec![ts.into(), "D".into(), Cell::Int(id)];
    r.resize(13, Cell::Null);
    r
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dms/clinic/public/patients");
    let t0 = 1_714_182_814_000_000_i64; // 2024-04-27 01:53:34 UTC
    let load = vec![
        row(
            "2024-04-27 01:53:34.000117",
            "I",
            1,
            "CL-0001",
            "Maria",
            "Lopez",
            "F",
            day(1979, 3, 14),
            "+1-617-555-0101",
            "Boston",
            "02108",
            12_050,
            t0,
        ),
        row(
            "2024-04-27 01:53:34.000245",
            "I",
            2,
            "CL-0002",
            "James",
            "Okafor",
            "M",
            day(1990, 11, 2),
            "+1-617-555-0102",
            "Cambridge",
            "02139",
            0,
            t0,
        ),
        row(
            "2024-04-27 01:53:34.000371",
            "I",
            3,
            "CL-0003",
            "Wei",
            "Chen",
            "F",
            day(2001, 6, 30),
            "",
            "Somerville",
            "02143",
            98_765_432,
            t0,
        ),
    ];
    write_file(
        &root.join("LOAD00000001.parquet"),
        SCHEMA,
        &load,
        WriteOptions::default(),
    )?;
    let cdc1 = vec![
        // Maria's new phone; a new patient; Wei's record deleted (key only).
        row(
            "2024-04-27 01:54:34.010012",
            "U",
            1,
            "CL-0001",
            "Maria",
            "Lopez",
            "F",
            day(1979, 3, 14),
            "+1-617-555-0199",
            "Boston",
            "02108",
            12_050,
            t0 + 60_010_012,
        ),
        row(
            "2024-04-27 01:54:34.020518",
            "I",
            4,
            "CL-0004",
            "Samir",
            "Haddad",
            "M",
            day(1968, 1, 21),
            "+1-508-555-0104",
            "Worcester",
            "01608",
            -4_200,
            t0 + 60_020_518,
        ),
        key_only_delete("2024-04-27 01:54:34.031007", 3),
    ];
    write_file(
        &root.join("2024/04/27/20240427-015434214.parquet"),
        SCHEMA,
        &cdc1,
        WriteOptions::default(),
    )?;
    let cdc2 = vec![
        // An operation DMS never writes: quarantined with the file and row named.
        row(
            "2024-04-27 01:55:34.004400",
            "X",
            2,
            "CL-0002",
            "James",
            "Okafor",
            "M",
            day(1990, 11, 2),
            "+1-617-555-0102",
            "Cambridge",
            "02139",
            0,
            t0 + 120_004_400,
        ),
        row(
            "2024-04-27 01:55:34.009900",
            "U",
            2,
            "CL-0002",
            "James",
            "Okafor",
            "M",
            day(1990, 11, 2),
            "+1-617-555-0102",
            "Medford",
            "02155",
            2_500,
            t0 + 120_009_900,
        ),
    ];
    write_file(
        &root.join("2024/04/27/20240427-015534228.parquet"),
        SCHEMA,
        &cdc2,
        WriteOptions::default(),
    )?;
    println!("wrote {}", root.display());
    Ok(())
}
