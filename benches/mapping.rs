//! Mapping throughput on Synthea-like patient rows (the columns of Synthea's `patients.csv`,
//! generated here, so the benchmark needs no outside data), one core:
//! - `decode`: CSV text → `SourceChange`s (`mapping::csv_records`);
//! - `map`: `SourceChange` → FHIR Patient with `examples/synthea/patients.yaml` (identifiers,
//!   names, two ConceptMaps, translation tables), planned expressions (`Mapping::apply`);
//! - `map_templates`: the same through minijinja templates only
//!   (`Mapping::apply_via_templates`, the engine before plans): the before/after in one run;
//! - `decode_and_map`: both, as the pipeline does;
//! - `floor_records` / `floor_resources`: a copy and a drop of the decoded changes / of the
//!   mapped resource changes, i.e. the allocations and frees the `serde_json::Value` trees
//!   alone cost (what no decoder or mapping engine producing those trees can go below).
//!
//! Run: `CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 cargo bench -p
//! fhir-unify --bench mapping`. Throughput is in records (rows) per second.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use fhir_unify::mapping::Mapping;
use fhir_unify::mapping::csv_records::{CsvOptions, read_csv};
use fhir_unify::model::SourceChange;

const ROWS: usize = 2_000;

/// Synthea-like patient rows, deterministic.
fn patients_csv(n: usize) -> String {
    let mut s = String::from(
        "Id,BIRTHDATE,DEATHDATE,SSN,DRIVERS,PASSPORT,PREFIX,FIRST,LAST,SUFFIX,MAIDEN,MARITAL,RACE,ETHNICITY,GENDER,BIRTHPLACE,ADDRESS,CITY,STATE,COUNTY,FIPS,ZIP,LAT,LON,HEALTHCARE_EXPENSES,HEALTHCARE_COVERAGE,INCOME\n",
    );
    let races = ["white", "black", "asian", "native", "other"];
    let marital = ["M", "S", "D", "", "W"];
    for i in 0..n {
        let gender = if i % 2 == 0 { "F" } else { "M" };
        let maiden = if i % 4 == 0 { "Okuneva707" } else { "" };
        s.push_str(&format!(
            "{:08x}-7e9e-f3f7-f891-{:012x},{}-{:02}-{:02},{},999-{:02}-{:04},S9999{:04},X{:08}X,Mrs.,First{i},Last{i},,{maiden},{},{},{},{gender},Milton  Massachusetts  US,{} Kirlin Village Suite 22,Walpole,Massachusetts,Norfolk County,25021,{:05},42.16260877593776,-71.25096856312933,2500.00,68841.05,17807\n",
            i,
            i * 7919,
            1940 + i % 80,
            1 + i % 12,
            1 + i % 28,
            if i % 10 == 0 { "2022-09-07" } else { "" },
            i % 100,
            i % 10_000,
            i % 10_000,
            i,
            marital[i % marital.len()],
            races[i % races.len()],
            if i % 3 == 0 { "hispanic" } else { "nonhispanic" },
            i % 1000,
            2000 + i % 1000,
        ));
    }
    s
}

fn decode(text: &str) -> Vec<SourceChange> {
    read_csv(
        text.as_bytes(),
        "patients.csv",
        CsvOptions::new("synthea", "patients", &["Id"]),
    )
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn bench(c: &mut Criterion) {
    let mapping = Mapping::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/synthea/patients.yaml"),
    )
    .unwrap();
    let text = patients_csv(ROWS);
    let changes = decode(&text);
    assert_eq!(changes.len(), ROWS);
    // Every generated row maps (a benchmark of errors would measure the wrong thing).
    for ch in &changes {
        assert_eq!(mapping.apply(ch), mapping.apply_via_templates(ch));
        mapping.apply(ch).unwrap();
    }

    let mut g = c.benchmark_group("synthea_patients");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("decode", |b| b.iter(|| black_box(decode(black_box(&text)))));
    g.bench_function("map", |b| {
        b.iter(|| {
            for ch in &changes {
                black_box(mapping.apply(black_box(ch)).unwrap());
            }
        })
    });
    g.bench_function("map_templates", |b| {
        b.iter(|| {
            for ch in &changes {
                black_box(mapping.apply_via_templates(black_box(ch)).unwrap());
            }
        })
    });
    g.bench_function("decode_and_map", |b| {
        b.iter(|| {
            let records = read_csv(
                text.as_bytes(),
                "patients.csv",
                CsvOptions::new("synthea", "patients", &["Id"]),
            )
            .unwrap();
            for r in records {
                black_box(mapping.apply(&r.unwrap()).unwrap());
            }
        })
    });
    let mapped: Vec<_> = changes.iter().map(|c| mapping.apply(c).unwrap()).collect();
    g.bench_function("floor_records", |b| {
        b.iter(|| {
            for ch in &changes {
                black_box(black_box(ch).clone());
            }
        })
    });
    g.bench_function("floor_resources", |b| {
        b.iter(|| {
            for m in &mapped {
                black_box(black_box(m).clone());
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
