//! CSV decode speed of the Transfer source: 100,000 Synthea-like patient rows (the 25 columns
//! of Synthea's `patients.csv`, some quoted), read through the local object store with
//! `sources::transfer::read_object` into `SourceChange`s (fields to JSON, key, sequence), plain
//! and gzip-compressed. Run: `cargo bench --bench transfer_decode`.

// Benchmark setup: a failure is a failed benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::io::Write;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fhir_unify::objects::LocalBuckets;
use fhir_unify::sources::Decoded;
use fhir_unify::sources::transfer::{CsvFormat, FileFormat, LoadMode, TransferTarget, read_object};

const ROWS: u64 = 100_000;

const HEADER: &str = "Id,BIRTHDATE,DEATHDATE,SSN,DRIVERS,PASSPORT,PREFIX,FIRST,LAST,SUFFIX,MAIDEN,MARITAL,RACE,ETHNICITY,GENDER,BIRTHPLACE,ADDRESS,CITY,STATE,COUNTY,ZIP,LAT,LON,HEALTHCARE_EXPENSES,HEALTHCARE_COVERAGE";

/// One Synthea-like row (made-up values of Synthea's shapes).
fn row(i: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x},19{:02}-{:02}-{:02},,999-{:02}-{:04},S999{:05},X{:08}X,Mr.,Given{i},Family{},,,M,white,nonhispanic,{},\"Boston  Massachusetts  US\",\"{} Main St, Unit {}\",Boston,Massachusetts,Suffolk County,02{:03},42.3{:04},-71.0{:04},{}.{:02},{}.{:02}",
        i,
        i % 65536,
        i % 4096,
        (i * 7) % 4096,
        i * 31,
        40 + i % 60,
        1 + i % 12,
        1 + i % 28,
        i % 100,
        i % 10000,
        i % 100_000,
        i,
        i % 997,
        if i.is_multiple_of(2) { "M" } else { "F" },
        i % 900 + 1,
        i % 50,
        i % 1000,
        i % 10000,
        i % 10000,
        i * 13 % 1_000_000,
        i % 100,
        i * 7 % 100_000,
        i % 100,
    )
}

fn decode(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::with_capacity(ROWS as usize * 260);
    text.push_str(HEADER);
    text.push('\n');
    for i in 0..ROWS {
        text.push_str(&row(i));
        text.push('\n');
    }
    std::fs::write(dir.path().join("patients.csv"), &text).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    std::fs::write(dir.path().join("patients.csv.gz"), gz.finish().unwrap()).unwrap();
    drop(text);
    let store = LocalBuckets::new().with_bucket("b", dir.path()).shared();
    let target = TransferTarget {
        source: "synthea".into(),
        entity: "patients".into(),
        key: vec!["Id".into()],
        format: FileFormat::Csv(CsvFormat::default()),
        load: LoadMode::Increment,
        pattern: "*.csv*".into(),
        layout: None,
        pgp: None,
    };
    let mut group = c.benchmark_group("transfer_csv_decode");
    group.throughput(Throughput::Elements(ROWS));
    group.sample_size(10);
    for key in ["patients.csv", "patients.csv.gz"] {
        group.bench_function(format!("{key}_100k_rows_to_source_changes"), |b| {
            b.iter(|| {
                let mut changes = 0u64;
                read_object(store.clone(), "b", key, &target, Utc::now(), &mut |d| {
                    if let Decoded::Change(c) = d {
                        changes += 1;
                        black_box(c);
                    }
                })
                .unwrap();
                assert_eq!(changes, ROWS);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
