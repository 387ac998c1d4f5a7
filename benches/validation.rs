#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Validation speed over the Synthea corpus (`<shared>/conformance/synthea/fhir`, or
//! `$FHIR_UNIFY_SHARED_DIR`): resources per second through the structural [`Validator`]
//! (contract + coding, with and without the FHIRPath invariants) and, side by side, the HL7 JSON Schema validator it replaced; plus the
//! time to load the compiled definitions (a Lambda cold start pays it once), and the floor
//! of any validator over these resources: one visit of every node, checking nothing
//! (`walk_every_node`).

use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

use fhir_unify::validation::{Definitions, SchemaValidator, Validator};

fn synthea_resources() -> Vec<Value> {
    let shared = std::env::var_os("FHIR_UNIFY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = shared.join("conformance/synthea/fhir");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bundle: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for entry in bundle["entry"].as_array().unwrap() {
            out.push(entry["resource"].clone());
        }
    }
    out
}

/// Visits every node, reading each key and string once (their lengths and first bytes), so
/// the walk touches what a validator must at least read.
fn walk(v: &Value, acc: &mut usize) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                *acc += k.len();
                walk(x, acc);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, acc)),
        Value::String(s) => {
            *acc += s.len() + usize::from(s.as_bytes().first().copied().unwrap_or(0))
        }
        Value::Number(n) => *acc += usize::from(n.is_f64()),
        Value::Bool(b) => *acc += usize::from(*b),
        Value::Null => {}
    }
}

fn bench(c: &mut Criterion) {
    let resources = synthea_resources();
    let mut load = c.benchmark_group("load");
    load.sample_size(20);
    load.bench_function("definitions_r4", |b| b.iter(|| Definitions::r4().unwrap()));
    // Types are built on first use: every type built, what loading cost before that.
    load.bench_function("definitions_r4_every_type_built", |b| {
        b.iter(|| {
            let defs = Definitions::r4().unwrap();
            defs.build_all().unwrap();
            defs
        })
    });
    load.finish();

    let validator = Validator::r4().unwrap();
    // The same validator without FHIRPath invariants: their cost, before/after in one run.
    let mut structural_only = Validator::r4().unwrap();
    structural_only.set_invariants(false);
    let schema = SchemaValidator::r4().unwrap();
    for r in &resources {
        // Compile every resource type's schema before timing.
        let _ = schema.validate(r);
    }
    let mut group = c.benchmark_group("synthea");
    group.sample_size(10);
    group.throughput(Throughput::Elements(resources.len() as u64));
    group.bench_function("structure_validator", |b| {
        b.iter(|| {
            let mut errors = 0usize;
            for r in &resources {
                errors += usize::from(validator.validate(r).has_errors());
            }
            errors
        })
    });
    group.bench_function("structure_validator_without_invariants", |b| {
        b.iter(|| {
            let mut errors = 0usize;
            for r in &resources {
                errors += usize::from(structural_only.validate(r).has_errors());
            }
            errors
        })
    });
    // The floor: visiting every member and item of every resource once, checking nothing. A
    // validator that looks at every element cannot be faster than this on one core.
    group.bench_function("walk_every_node", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for r in &resources {
                walk(r, &mut acc);
            }
            acc
        })
    });
    group.bench_function("json_schema_validator", |b| {
        b.iter(|| {
            let mut errors = 0usize;
            for r in &resources {
                errors += usize::from(schema.validate(r).has_errors());
            }
            errors
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
