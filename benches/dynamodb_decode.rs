//! DynamoDB Streams decode speed (issue 5): a stream event of Synthea-like patient items (the
//! columns of `fhir-unify gen`'s patients, as a table would hold them: strings, numbers, a
//! date as text, nulls) decoded from the Lambda event's JSON into `SourceChange`s
//! (`sources::dynamodb::decode`: key, image, sequence), and decoded then mapped with
//! `examples/mappings/synthea/patients.yaml`, one core. Batches of 1,000 records (a large
//! event source mapping batch). Throughput is in records per second.
//!
//! Run: `CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 cargo bench -p
//! fhir-unify --bench dynamodb_decode`.

// Benchmark setup: a failure is a failed benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fhir_unify::mapping::Mapping;
use fhir_unify::sources::dms::write::{Cell, PATIENTS_SCHEMA, patient_row};
use fhir_unify::sources::dynamodb::{DynamoDbStreamEvent, StreamBinding, decode};
use serde_json::{Map, Value, json};

const RECORDS: usize = 1_000;

/// The column names of the generator's patients, in row order.
fn columns() -> Vec<String> {
    PATIENTS_SCHEMA
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_end_matches(';');
            let l = l.split(" (").next()?;
            (l.starts_with("optional") || l.starts_with("required"))
                .then(|| l.rsplit(' ').next().map(str::to_owned))?
        })
        .collect()
}

/// One generated patient row as a DynamoDB item (attribute values).
fn item(names: &[String], i: u64) -> Map<String, Value> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    names
        .iter()
        .zip(patient_row(i, 1_714_182_814_000_000 + i as i64))
        .map(|(name, cell)| {
            let v = match cell {
                Cell::Null => json!({"NULL": true}),
                Cell::Bool(b) => json!({"BOOL": b}),
                Cell::Int(days) if name.ends_with("DATE") => {
                    let d = epoch + chrono::Days::new(days.max(0) as u64);
                    json!({"S": d.format("%Y-%m-%d").to_string()})
                }
                Cell::Int(n) => json!({"N": n.to_string()}),
                Cell::Float(f) => json!({"N": f.to_string()}),
                Cell::Str(s) => json!({"S": s}),
                Cell::Decimal(cents) => json!({"N": format!("{}.{:02}", cents / 100, cents % 100)}),
                Cell::Bytes(_) => panic!("the generator's patients have no binary column"),
            };
            (name.clone(), v)
        })
        .collect()
}

fn event(n: usize) -> DynamoDbStreamEvent {
    let names = columns();
    let records = (0..n as u64)
        .map(|i| {
            let image = item(&names, i);
            let id = image["Id"].clone();
            json!({
                "eventID": format!("{i:032x}"),
                "eventName": if i % 4 == 0 { "MODIFY" } else { "INSERT" },
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_714_182_814 + i,
                    "Keys": {"Id": id},
                    "NewImage": image,
                    "SequenceNumber": format!("{}", 4_000_000_000_000_000_000_u64 + i),
                    "SizeBytes": 400,
                    "StreamViewType": "NEW_AND_OLD_IMAGES"
                },
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/public.patients/stream/2024-04-27T00:00:00.000"
            })
        })
        .collect();
    DynamoDbStreamEvent { records }
}

fn binding(table: &str) -> Option<StreamBinding> {
    (table == "public.patients").then(|| StreamBinding {
        source: "synthea".into(),
        entity: "public.patients".into(),
        key: vec!["Id".into()],
    })
}

fn bench(c: &mut Criterion) {
    let mapping = Mapping::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mappings/synthea/patients.yaml"),
    )
    .unwrap();
    let event = event(RECORDS);
    let decoded = decode(&event, &binding);
    assert!(decoded.failures.is_empty(), "{:?}", decoded.failures[0]);
    assert_eq!(decoded.batch.changes.len(), RECORDS);
    // Every record maps (a benchmark of errors would measure the wrong thing).
    for ch in &decoded.batch.changes {
        mapping.apply(ch).unwrap();
    }

    let mut group = c.benchmark_group("dynamodb_stream");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("decode", |b| {
        b.iter(|| black_box(decode(black_box(&event), &binding)))
    });
    group.bench_function("decode_and_map", |b| {
        b.iter(|| {
            let decoded = decode(black_box(&event), &binding);
            for ch in &decoded.batch.changes {
                black_box(mapping.apply(ch).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
