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
//! A second raw baseline, `raw_sqlite_same_rows_transactions_of_500`, inserts exactly the table
//! rows the store writes for those resources (its `history`, `resources`, `sequences`,
//! `search_index` and `outbox` rows, read back from a store that applied the same changes,
//! before timing) into a file with the store's own schema (made by `SqliteStore::open`), with
//! prepared statements, resource after resource, in transactions of 500 resources. The store's
//! ratio to it is the cost of the store's own work (reads, canonical form, JSON text, index
//! values); its ratio to the first loop adds the cost of the rows themselves.
//! `raw_sqlite_same_rows_without_search_index` is the same without the `search_index` rows,
//! to show their share. `sqlite_store_apply_updates_batches_of_500` gives each of the 1,000
//! Patients of a filled store a second version (new name and address: new index rows).
//!
//! Run: `CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build
//! --release -p fhir-unify --bench store`, then `target/release/deps/store-<hash> --bench`
//! (`cargo bench` builds every dependency again in the `bench` profile).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fhir_unify::model::{Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef, Sequence};
use fhir_unify::store::FhirStore;
use fhir_unify::store::sqlite::SqliteStore;
use rusqlite::types::Value as SqlValue;
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

/// The same changes, each with a new family name and address line and a later sequence.
fn updated(changes: &[ResourceChange]) -> Vec<ResourceChange> {
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut c = c.clone();
            if let ResourceOp::Upsert { resource } = &mut c.op {
                resource["name"][0]["family"] = json!(format!("Other{}", i % 89));
                resource["address"][0]["line"] = json!([format!("{i} Elm St")]);
            }
            c.lineage.sequence = Sequence::from((ROWS + i) as u64 + 1);
            c
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

/// The rows the store writes for one resource, as SQL values, per table.
#[derive(Default)]
struct StoreRows {
    history: Vec<Vec<SqlValue>>,
    resources: Vec<Vec<SqlValue>>,
    sequences: Vec<Vec<SqlValue>>,
    search_index: Vec<Vec<SqlValue>>,
    outbox: Vec<Vec<SqlValue>>,
}

const HISTORY_COLUMNS: &str =
    "resource_type, id, version_id, last_updated, deleted, content, lineage";
const RESOURCES_COLUMNS: &str = "resource_type, id, version_id, last_updated, deleted, content";
const SEQUENCES_COLUMNS: &str = "resource_type, id, source, entity, sequence";
const SEARCH_COLUMNS: &str = "resource_type, id, param, system, value, raw, low, high";

fn columns(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies `changes` through a store (in calls of 500, as the bench does) and reads back, per
/// resource and in the order the store wrote them, the rows of each table.
fn store_rows(changes: &[ResourceChange], runtime: &tokio::runtime::Runtime) -> Vec<StoreRows> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        runtime.block_on(async {
            for batch in changes.chunks(BATCH) {
                store.apply(batch).await.unwrap();
            }
        });
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut rows: Vec<StoreRows> = (0..changes.len()).map(|_| StoreRows::default()).collect();
    let index: std::collections::HashMap<(String, String), usize> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| ((c.target.resource_type.clone(), c.target.id.clone()), i))
        .collect();
    let read = |sql: &str, n: usize| -> Vec<Vec<SqlValue>> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, SqlValue>(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let owner = |row: &[SqlValue]| -> usize {
        let (SqlValue::Text(t), SqlValue::Text(id)) = (&row[0], &row[1]) else {
            panic!("a row without a text type and id");
        };
        index[&(t.clone(), id.clone())]
    };
    for row in read(&format!("SELECT {HISTORY_COLUMNS} FROM history"), 7) {
        rows[owner(&row)].history.push(row);
    }
    for row in read(&format!("SELECT {RESOURCES_COLUMNS} FROM resources"), 6) {
        rows[owner(&row)].resources.push(row);
    }
    for row in read(&format!("SELECT {SEQUENCES_COLUMNS} FROM sequences"), 5) {
        rows[owner(&row)].sequences.push(row);
    }
    for row in read(
        &format!("SELECT {SEARCH_COLUMNS} FROM search_index ORDER BY rowid"),
        8,
    ) {
        rows[owner(&row)].search_index.push(row);
    }
    // One event per committed change, in change order (every change here creates a resource).
    let events = read("SELECT event FROM outbox ORDER BY position", 1);
    assert_eq!(events.len(), changes.len());
    for (rows, event) in rows.iter_mut().zip(events) {
        rows.outbox.push(event);
    }
    rows
}

/// Inserts the precomputed store rows, resource after resource, in transactions of `BATCH`
/// resources, into a file with the store's schema.
fn insert_rows(conn: &mut rusqlite::Connection, rows: &[StoreRows], with_search_index: bool) {
    let history = format!(
        "INSERT INTO history ({HISTORY_COLUMNS}) VALUES ({})",
        columns(7)
    );
    let resources = format!(
        "INSERT INTO resources ({RESOURCES_COLUMNS}) VALUES ({})",
        columns(6)
    );
    let sequences = format!(
        "INSERT INTO sequences ({SEQUENCES_COLUMNS}) VALUES ({})",
        columns(5)
    );
    let search = format!(
        "INSERT INTO search_index ({SEARCH_COLUMNS}) VALUES ({})",
        columns(8)
    );
    for batch in rows.chunks(BATCH) {
        let tx = conn.transaction().unwrap();
        {
            let mut statements = [
                tx.prepare_cached(&history).unwrap(),
                tx.prepare_cached(&resources).unwrap(),
                tx.prepare_cached(&sequences).unwrap(),
                tx.prepare_cached(&search).unwrap(),
                tx.prepare_cached("INSERT INTO outbox (event) VALUES (?1)")
                    .unwrap(),
            ];
            for resource in batch {
                let tables = [
                    &resource.history,
                    &resource.resources,
                    &resource.sequences,
                    &resource.search_index,
                    &resource.outbox,
                ];
                for (table, (stmt, table_rows)) in statements.iter_mut().zip(tables).enumerate() {
                    if table == 3 && !with_search_index {
                        continue;
                    }
                    for row in table_rows {
                        stmt.execute(rusqlite::params_from_iter(row.iter()))
                            .unwrap();
                    }
                }
            }
        }
        tx.commit().unwrap();
    }
}

/// The raw baseline writes what the store writes: every table's contents equal.
fn check_same_rows(
    changes: &[ResourceChange],
    rows: &[StoreRows],
    runtime: &tokio::runtime::Runtime,
) {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&store_path).unwrap();
        runtime.block_on(async {
            for batch in changes.chunks(BATCH) {
                store.apply(batch).await.unwrap();
            }
        });
    }
    let raw_path = dir.path().join("raw.db");
    insert_rows(&mut store_schema_open(&raw_path), rows, true);
    let dump = |path: &Path, table: &str, cols: &str| -> Vec<Vec<SqlValue>> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let n = cols.split(',').count();
        let mut stmt = conn
            .prepare(&format!("SELECT {cols} FROM {table} ORDER BY {cols}"))
            .unwrap();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, SqlValue>(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    for (table, cols) in [
        ("history", HISTORY_COLUMNS),
        ("resources", RESOURCES_COLUMNS),
        ("sequences", SEQUENCES_COLUMNS),
        ("search_index", SEARCH_COLUMNS),
        ("outbox", "position, event"),
    ] {
        let (store, raw) = (dump(&store_path, table, cols), dump(&raw_path, table, cols));
        // Times differ between two runs of the store; the row shapes and counts must not.
        assert_eq!(store.len(), raw.len(), "{table}: row count");
    }
}

/// A fresh file with the store's schema, opened as a plain connection with the store's
/// settings (WAL is a property of the file; `synchronous` of the connection).
fn store_schema_open(path: &Path) -> rusqlite::Connection {
    drop(SqliteStore::open(path).unwrap());
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn
}

fn bench(c: &mut Criterion) {
    let changes = changes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rows = store_rows(&changes, &runtime);
    check_same_rows(&changes, &rows, &runtime);
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

    // Updates: every Patient of a store that holds all 1,000 gets a new family name and a
    // new address line (a new version whose index rows replace the old ones).
    let updates = updated(&changes);
    group.bench_function("sqlite_store_apply_updates_batches_of_500", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
                runtime.block_on(async {
                    for batch in changes.chunks(BATCH) {
                        store.apply(batch).await.unwrap();
                    }
                });
                (dir, store)
            },
            |(dir, store)| {
                runtime.block_on(async {
                    for batch in updates.chunks(BATCH) {
                        let out = store.apply(batch).await.unwrap();
                        assert!(out.iter().all(|o| o.version_id.as_deref() == Some("2")));
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

    for (name, with_search_index) in [
        ("raw_sqlite_same_rows_transactions_of_500", true),
        ("raw_sqlite_same_rows_without_search_index", false),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let conn = store_schema_open(&dir.path().join("rows.db"));
                    (dir, conn)
                },
                |(dir, mut conn)| {
                    insert_rows(&mut conn, &rows, with_search_index);
                    (dir, conn)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
