//! Parquet decode speed of the DMS source: a DMS-style full-load file of 100,000 Synthea-like
//! patient rows (21 columns: strings, dates, doubles, a fixed-length decimal, a timestamp;
//! snappy, DMS's default row groups of 10,024 rows), read through the local object store into
//! `SourceChange`s. Run: `cargo bench --bench dms_decode`.

// Benchmark setup: a failure is a failed benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fhir_unify::objects::LocalBuckets;
use fhir_unify::sources::dms::write::{PATIENTS_SCHEMA, WriteOptions, patient_row, write_file};
use fhir_unify::sources::dms::{Decoded, DmsBinding, DmsPath, read_object};

const ROWS: u64 = 100_000;

fn decode(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let key = "synthea/patients/LOAD00000001.parquet";
    let t0 = 1_714_182_814_000_000_i64;
    let rows: Vec<_> = (0..ROWS).map(|i| patient_row(i, t0 + i as i64)).collect();
    write_file(
        &dir.path().join(key),
        PATIENTS_SCHEMA,
        &rows,
        WriteOptions::default(),
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    drop(rows);
    let store = LocalBuckets::new().with_bucket("b", dir.path()).shared();
    let binding = DmsBinding {
        source: "synthea".into(),
        entity: "patients".into(),
        key: vec!["Id".into()],
        timestamp_column: "DMS_TIMESTAMP".into(),
    };
    let mut group = c.benchmark_group("dms_parquet_decode");
    group.throughput(Throughput::Elements(ROWS));
    group.sample_size(10);
    group.bench_function("patients_100k_rows_to_source_changes", |b| {
        b.iter(|| {
            let path = DmsPath::parse(key, "").unwrap_or_else(|e| panic!("{e}"));
            let mut changes = 0u64;
            read_object(
                store.clone(),
                "b",
                "",
                path,
                binding.clone(),
                Utc::now(),
                &mut |d| {
                    if let Decoded::Change(c) = d {
                        changes += 1;
                        black_box(c);
                    }
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(changes, ROWS);
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
