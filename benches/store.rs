//! FHIR store upserts against a raw SQLite insert loop of the same rows (issue 6 goal: the
//! store within 3× of the raw loop).
//!
//! Both write 1,000 Patients into a fresh file in a temporary folder, in WAL mode with
//! `synchronous = NORMAL` (the store's own settings): the store through `FhirStore::apply`
//! in calls of 500 (as `publish` batches), the raw loop with one prepared `INSERT` of the
//! resource's JSON text per row, in transactions of 500. The store does what the raw loop does
//! not: canonical comparison with the current version, sequence marks, history, the outbox
//! event and search index rows.
//!
//! Run: `CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 cargo bench --bench store`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fhir_unify::model::{Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef, Sequence};
use fhir_unify::store::FhirStore;
use fhir_unify::store::sqlite::SqliteStore;
use serde_json::{Value, json};

const ROWS: usize = 1000;
const BATCH: usize = 500;

fn patient(i: usize) -> Value {
    json!({
        "resourceType": "Patient",
        "id": format!("p{i}"),
        "identifier": [{"system": "urn:app", "value": format!("{i}")}],
        "name": [{"family": format!("Family{}", i % 97), "given": ["Ada", "B."]}],
        "gender": if i.is_multiple_of(2) { "female" } else { "male" },
        "birthDate": format!("19{:02}-0{}-1{}", i % 100, 1 + i % 9, i % 10),
        "address": [{"line": [format!("{i} Main St")], "city": "Springfield", "postalCode": "12345"}]
    })
}

fn changes() -> Vec<ResourceChange> {
    (0..ROWS)
        .map(|i| ResourceChange {
            target: ResourceRef {
                resource_type: "Patient".into(),
                id: format!("p{i}"),
            },
            op: ResourceOp::Upsert {
                resource: patient(i),
            },
            lineage: Lineage {
                source: "app".into(),
                entity: "patients".into(),
                key: RecordKey::from_pairs([("pk", json!(i))]),
                sequence: Sequence::from(i as u64 + 1),
                observed_at: "2025-01-01T00:00:00Z".parse().unwrap(),
            },
        })
        .collect()
}

fn raw_open(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE resources (resource_type TEXT NOT NULL, id TEXT NOT NULL, content TEXT NOT NULL,
         PRIMARY KEY (resource_type, id)) WITHOUT ROWID",
    )
    .unwrap();
    conn
}

fn bench(c: &mut Criterion) {
    let changes = changes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("store_upserts_1000_patients");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(20);

    group.bench_function("sqlite_store_apply_batches_of_500", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
                (dir, store)
            },
            |(dir, store)| {
                runtime.block_on(async {
                    for batch in changes.chunks(BATCH) {
                        store.apply(batch).await.unwrap();
                    }
                });
                (dir, store)
            },
            BatchSize::PerIteration,
        );
    });

    group.bench_function("raw_sqlite_insert_loop_transactions_of_500", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let conn = raw_open(&dir.path().join("raw.db"));
                (dir, conn)
            },
            |(dir, mut conn)| {
                for batch in changes.chunks(BATCH) {
                    let tx = conn.transaction().unwrap();
                    {
                        let mut stmt = tx
                            .prepare_cached(
                                "INSERT INTO resources (resource_type, id, content) VALUES (?1, ?2, ?3)",
                            )
                            .unwrap();
                        for change in batch {
                            let ResourceOp::Upsert { resource } = &change.op else {
                                continue;
                            };
                            stmt.execute((
                                &change.target.resource_type,
                                &change.target.id,
                                resource.to_string(),
                            ))
                            .unwrap();
                        }
                    }
                    tx.commit().unwrap();
                }
                (dir, conn)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
