//! [`DatasetStore`] for the SQLite store.
//!
//! A version's resources are staged in `dataset_staged` (dataset, version, type, id,
//! canonical content, lineage): a rowid table with only the short key in a B-tree
//! (`dataset_staged_key`). While a version loads, its rows are appended to
//! `dataset_incoming` in the order they arrive (no key index: see [`INCOMING_LAYOUT`]);
//! `finalize` moves them into `dataset_staged` in key order in its transaction. (Files of earlier
//! builds staged into the `WITHOUT ROWID` table `dataset_resources`, keyed by the same key
//! with the content inline: [`ensure_layout`] moves their rows over once.) The FHIR tables (`resources`, `history`, `search_index`,
//! `outbox`) always hold the *current* version of every dataset: moving the pointer (the
//! `parameters` row [`pointer_parameter`]) applies the difference between the two versions'
//! staged rows to them **in the same transaction**. Readers therefore need no pointer lookup
//! at all: a read (gateway read, vread, search, history; `fhir-unify get`) runs on one SQLite
//! snapshot, which shows either the state before the move or the state after it, never a mix
//! (WAL readers do not wait for the writer and never see its uncommitted pages). Rollback is
//! the same move in the other direction, and gc only deletes staged rows.
//!
//! Costs: staging is one insert per resource; a move costs one store write per *changed*
//! resource (an unchanged reload is only a join). The move holds the write lock while it
//! applies the difference: a first load of N resources blocks other writers (streamed changes,
//! which retry `StoreUnavailable`) for its duration; later loads for their difference only.
//!
//! A move skips the per-source sequence check: a dataset version is authoritative for its
//! resources, and a rollback must be able to bring back older content.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use super::{
    HISTORY_CONTENT, LINEAGE_IN_STAGED, SqliteStore, apply_canonical, apply_change,
    canonical_content, canonical_owned, check_ref, format_time, off_worker, search, sql_err,
};
use crate::model::{ChangeKind, Lineage, PublishAction, ResourceChange, ResourceOp, ResourceRef};
use crate::store::dataset::{
    DatasetError, DatasetStore, DatasetVersion, GcReport, LoadCounts, PointerMove, StagedResource,
    VersionStatus, check_dataset_name, pointer_parameter,
};
use crate::store::{StoreError, change_event, with_meta};

/// Dataset versions, their chunks and staged resources, and the parameter rows of pointers.
pub(super) const MIGRATION_3: &str = "
CREATE TABLE dataset_versions (
    dataset       TEXT NOT NULL,
    version       INTEGER NOT NULL,
    status        TEXT NOT NULL
                  CHECK (status IN ('IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'ROLLED_BACK')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL,
    owner         TEXT NOT NULL,
    error         TEXT,
    purged        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dataset, version)
) WITHOUT ROWID;

CREATE TABLE dataset_chunks (
    dataset           TEXT NOT NULL,
    version           INTEGER NOT NULL,
    chunk             TEXT NOT NULL,
    records_read      INTEGER NOT NULL,
    resources_written INTEGER NOT NULL,
    quarantined       INTEGER NOT NULL,
    done_at           TEXT NOT NULL,
    PRIMARY KEY (dataset, version, chunk)
) WITHOUT ROWID;

CREATE TABLE dataset_resources (
    dataset       TEXT NOT NULL,
    version       INTEGER NOT NULL,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    content       TEXT NOT NULL,
    lineage       TEXT NOT NULL,
    PRIMARY KEY (dataset, version, resource_type, id)
) WITHOUT ROWID;

CREATE TABLE parameters (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
";

/// The staging table of this build, created (and the rows of `dataset_resources` moved into
/// it) by [`ensure_layout`] in the first dataset write of a file: it is not a numbered
/// migration, so that the store's schema version stays the FHIR tables' own.
const STAGED_LAYOUT: &str = "
CREATE TABLE dataset_staged (
    dataset       TEXT NOT NULL,
    version       INTEGER NOT NULL,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    content       TEXT NOT NULL,
    lineage       TEXT NOT NULL
);
CREATE UNIQUE INDEX dataset_staged_key ON dataset_staged (dataset, version, resource_type, id);
INSERT INTO dataset_staged (dataset, version, resource_type, id, content, lineage)
    SELECT dataset, version, resource_type, id, content, lineage FROM dataset_resources;
DELETE FROM dataset_resources;
";

/// Where `stage` appends a version's rows while it loads: no key index, only the version's,
/// whose entries for one version all land at the end of its range. Staging into
/// `dataset_staged` directly put every row at a random place of `dataset_staged_key` (ids
/// are random UUIDs), so each staged batch dirtied about one index page per row once the
/// index outgrew a batch, and wrote them all to the WAL at its commit: at 1M records the
/// staging writes took 30-50× as long as at 100k for 10× the rows. `finalize` moves the
/// version's rows into `dataset_staged` in key order in its transaction ([`move_incoming`]):
/// the key index and the table then grow by appends, and the publish reads them in the order
/// they are stored. Like [`STAGED_LAYOUT`], created by [`ensure_layout`] rather than a
/// numbered migration: a build that does not know it never reads it, and only versions still
/// loading (or failed, until `gc`) have rows there.
const INCOMING_LAYOUT: &str = "
CREATE TABLE dataset_incoming (
    dataset       TEXT NOT NULL,
    version       INTEGER NOT NULL,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    content       TEXT NOT NULL,
    lineage       TEXT NOT NULL
);
CREATE INDEX dataset_incoming_version ON dataset_incoming (dataset, version);
";

/// Creates the staging tables this file has not got yet (see [`STAGED_LAYOUT`] and
/// [`INCOMING_LAYOUT`]).
pub(super) fn ensure_layout(conn: &Connection) -> Result<(), DatasetError> {
    let (staged, incoming): (bool, bool) = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master
                            WHERE type = 'table' AND name = 'dataset_staged'),
                    EXISTS (SELECT 1 FROM sqlite_master
                            WHERE type = 'table' AND name = 'dataset_incoming')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql_err)?;
    if !staged {
        conn.execute_batch(STAGED_LAYOUT).map_err(sql_err)?;
    }
    if !incoming {
        conn.execute_batch(INCOMING_LAYOUT).map_err(sql_err)?;
    }
    Ok(())
}

/// Moves a version's rows from `dataset_incoming` into `dataset_staged`, in key order; of
/// two rows for one resource the later replaces the earlier, as staging in place did. Every
/// pointer move runs it first for the version it moves to (nothing to move for a version
/// published before). Returns the number of rows moved.
fn move_incoming(conn: &Connection, dataset: &str, version: u64) -> Result<usize, DatasetError> {
    let t0 = std::time::Instant::now();
    let moved = conn
        .execute(
            "INSERT OR REPLACE INTO dataset_staged
               (dataset, version, resource_type, id, content, lineage)
             SELECT dataset, version, resource_type, id, content, lineage
             FROM dataset_incoming WHERE dataset = ?1 AND version = ?2
             ORDER BY resource_type, id, rowid",
            params![dataset, to_i64(version)],
        )
        .map_err(sql_err)?;
    delete_incoming(conn, dataset, version)?;
    if moved > 0 {
        tracing::debug!(
            dataset,
            rows = moved,
            move_ms = t0.elapsed().as_millis() as u64,
            "staged rows moved in key order"
        );
    }
    Ok(moved)
}

/// Deletes a version's rows from `dataset_incoming`; returns how many.
fn delete_incoming(conn: &Connection, dataset: &str, version: u64) -> Result<usize, DatasetError> {
    Ok(conn
        .execute(
            "DELETE FROM dataset_incoming WHERE dataset = ?1 AND version = ?2",
            params![dataset, to_i64(version)],
        )
        .map_err(sql_err)?)
}

/// A version row before its chunks are added.
struct Row {
    version: u64,
    status: VersionStatus,
    created_at: String,
    updated_at: String,
    heartbeat_at: String,
    owner: String,
    error: Option<String>,
    purged: bool,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v)
        .map_err(|_| StoreError::Corrupt(format!("negative number {v} in a dataset table")))
}

fn parse_at(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("dataset table: stored time {text:?}: {e}")))
}

fn read_row(conn: &Connection, dataset: &str, version: u64) -> Result<Option<Row>, DatasetError> {
    let raw = conn
        .query_row(
            "SELECT version, status, created_at, updated_at, heartbeat_at, owner, error, purged
             FROM dataset_versions WHERE dataset = ?1 AND version = ?2",
            params![dataset, to_i64(version)],
            raw_row,
        )
        .optional()
        .map_err(sql_err)?;
    raw.map(decode_row).transpose()
}

type RawRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    bool,
);

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn decode_row(raw: RawRow) -> Result<Row, DatasetError> {
    let (version, status, created_at, updated_at, heartbeat_at, owner, error, purged) = raw;
    let status = VersionStatus::parse(&status).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "dataset version {version}: unknown status {status:?}"
        ))
    })?;
    Ok(Row {
        version: to_u64(version)?,
        status,
        created_at,
        updated_at,
        heartbeat_at,
        owner,
        error,
        purged,
    })
}

fn require(conn: &Connection, dataset: &str, version: u64) -> Result<Row, DatasetError> {
    read_row(conn, dataset, version)?.ok_or_else(|| DatasetError::NoSuchVersion {
        dataset: dataset.to_owned(),
        version,
    })
}

fn wrong(dataset: &str, row: &Row, reason: &str) -> DatasetError {
    DatasetError::WrongStatus {
        dataset: dataset.to_owned(),
        version: row.version,
        status: row.status,
        reason: reason.to_owned(),
    }
}

fn read_pointer(conn: &Connection, dataset: &str) -> Result<Option<u64>, DatasetError> {
    let name = pointer_parameter(dataset);
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM parameters WHERE name = ?1",
            [&name],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err)?;
    text.map(|t| {
        t.parse::<u64>().map_err(|_| {
            DatasetError::Store(StoreError::Corrupt(format!(
                "parameter {name} is not a version number: {t:?}"
            )))
        })
    })
    .transpose()
}

fn write_pointer(
    conn: &Connection,
    dataset: &str,
    version: u64,
    now: &str,
) -> Result<(), DatasetError> {
    conn.execute(
        "INSERT INTO parameters (name, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        params![pointer_parameter(dataset), version.to_string(), now],
    )
    .map_err(sql_err)?;
    Ok(())
}

fn set_status(
    conn: &Connection,
    dataset: &str,
    version: u64,
    status: VersionStatus,
    error: Option<&str>,
    now: &str,
) -> Result<(), DatasetError> {
    conn.execute(
        "UPDATE dataset_versions SET status = ?3, error = COALESCE(error, ?4), updated_at = ?5
         WHERE dataset = ?1 AND version = ?2",
        params![dataset, to_i64(version), status.as_str(), error, now],
    )
    .map_err(sql_err)?;
    Ok(())
}

fn fail_dead_in(
    conn: &Connection,
    dataset: &str,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<u64>, DatasetError> {
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    let cutoff = format_time(
        now.checked_sub_signed(lease)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    );
    let now_text = format_time(now);
    let mut stmt = conn
        .prepare(
            "UPDATE dataset_versions
             SET status = 'FAILED', updated_at = ?3,
                 error = 'the load stopped: no heartbeat since ' || heartbeat_at
             WHERE dataset = ?1 AND status = 'IN_PROGRESS' AND heartbeat_at < ?2
             RETURNING version",
        )
        .map_err(sql_err)?;
    let rows = stmt
        .query_map(params![dataset, cutoff, now_text], |r| r.get::<_, i64>(0))
        .map_err(sql_err)?;
    let mut dead = Vec::new();
    for r in rows {
        dead.push(to_u64(r.map_err(sql_err)?)?);
    }
    for v in &dead {
        tracing::warn!(
            dataset,
            version = v,
            "dataset load without heartbeat marked FAILED"
        );
    }
    Ok(dead)
}

fn refresh_heartbeat(
    conn: &Connection,
    dataset: &str,
    version: u64,
    now: &str,
) -> Result<Row, DatasetError> {
    let row = require(conn, dataset, version)?;
    if row.status != VersionStatus::InProgress {
        return Err(wrong(
            dataset,
            &row,
            "only a version being loaded takes resources",
        ));
    }
    conn.execute(
        "UPDATE dataset_versions SET heartbeat_at = ?3, updated_at = ?3
         WHERE dataset = ?1 AND version = ?2",
        params![dataset, to_i64(version), now],
    )
    .map_err(sql_err)?;
    Ok(row)
}

/// Applies the difference between version `from` (or nothing) and version `to` of the
/// dataset's staged rows to the FHIR tables.
fn switch(
    conn: &Connection,
    dataset: &str,
    from: Option<u64>,
    to: u64,
    now: DateTime<Utc>,
) -> Result<PointerMove, DatasetError> {
    match from {
        None => publish_first(conn, dataset, to, now),
        Some(_) => switch_each(conn, dataset, from, to, now),
    }
}

/// The first version of a dataset: the difference is "everything created", except for
/// resources the store already holds (streamed in, or another dataset's), which take the
/// per-resource path of [`switch_each`]. The rest is written in one pass over the staged rows
/// in key order: `history` and `resources` rows with `meta` (version 1, `now`) set by SQLite's
/// `json_set`, search-index rows and outbox events (which need the parsed resource and a v5
/// event id).
///
/// The stored text differs from the per-resource path's only in the place of the `meta` key
/// (appended rather than sorted), which no reader sees: contents are parsed when read.
fn publish_first(
    conn: &Connection,
    dataset: &str,
    to: u64,
    now: DateTime<Utc>,
) -> Result<PointerMove, DatasetError> {
    let mut mv = PointerMove {
        dataset: dataset.to_owned(),
        from: None,
        to: Some(to),
        ..PointerMove::default()
    };
    let to_key = to_i64(to);
    let at = format_time(now);
    move_incoming(conn, dataset, to)?;
    let mut phases = Phases::default();
    let started = std::time::Instant::now();
    // Resources the store holds already: compared and versioned one by one.
    {
        let mut held = conn
            .prepare(
                "SELECT n.resource_type, n.id, n.content, n.lineage FROM dataset_staged n
                 WHERE n.dataset = ?1 AND n.version = ?2 AND EXISTS (
                   SELECT 1 FROM resources r
                   WHERE r.resource_type = n.resource_type AND r.id = n.id)
                 ORDER BY n.resource_type, n.id",
            )
            .map_err(sql_err)?;
        let mut rows = held.query(params![dataset, to_key]).map_err(sql_err)?;
        while let Some(r) = rows.next().map_err(sql_err)? {
            let staged = read_staged(dataset, to, r)?;
            let outcome = apply_canonical(
                conn,
                &staged.target,
                Some(staged.resource),
                &staged.lineage,
                &staged.lineage_text,
                now,
                false,
                Some((dataset, to_key)),
            )?;
            count(outcome.action, &mut mv);
        }
    }
    phases.held = started.elapsed();
    // The rest is new: one pass in key order writes each resource's first version to
    // `history` and `resources`, its search-index rows and its outbox event. The staged table
    // is a rowid table read through its key index, so each row read in key order is a random
    // page: one pass reads the load once (three `INSERT … SELECT`-style passes read it three
    // times, and at 1M records that scan no longer fits the page cache).
    {
        // `history` names the staged row instead of copying its text (see the store's
        // `MIGRATION_9`): readers set `meta` (version 1, `now`) with `json_set`.
        let mut new = conn
            .prepare(
                "SELECT n.resource_type, n.id, n.content, n.lineage
                 FROM dataset_staged n
                 WHERE n.dataset = ?1 AND n.version = ?2 AND NOT EXISTS (
                   SELECT 1 FROM resources r
                   WHERE r.resource_type = n.resource_type AND r.id = n.id)
                 ORDER BY n.resource_type, n.id",
            )
            .map_err(sql_err)?;
        let mut event_insert = conn
            .prepare_cached("INSERT INTO outbox (event) VALUES (?1)")
            .map_err(sql_err)?;
        // Plain inserts: the scan keeps only resources the store does not hold, and the
        // staged key is unique, so a conflict here is a bug and fails the move.
        let mut history_insert = conn
            .prepare_cached(
                "INSERT INTO history
                   (resource_type, id, version_id, last_updated, deleted, content, lineage,
                    dataset, dataset_version)
                 VALUES (?1, ?2, 1, ?3, 0, NULL, ?4, ?5, ?6)",
            )
            .map_err(sql_err)?;
        let mut resource_insert = conn
            .prepare_cached(
                "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted)
                 VALUES (?1, ?2, 1, ?3, 0)",
            )
            .map_err(sql_err)?;
        search::begin_collecting(conn)?;
        let mut rows = new.query(params![dataset, to_key]).map_err(sql_err)?;
        // Decoding the staged text, computing search-index entries and writing the event's
        // text is CPU work that does not need the connection: a worker thread does it for
        // blocks of rows while this thread reads the next block and writes the previous one.
        // One worker and FIFO channels: rows are written in key order, as read.
        std::thread::scope(|s| -> Result<(), DatasetError> {
            let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Vec<RawStaged>>(2);
            let (done_tx, done_rx) =
                std::sync::mpsc::sync_channel::<Result<Vec<Prepared>, DatasetError>>(2);
            s.spawn(move || {
                for block in raw_rx {
                    let out = block
                        .into_iter()
                        .map(|r| prepare_new(dataset, to, now, r))
                        .collect();
                    if done_tx.send(out).is_err() {
                        break;
                    }
                }
            });
            let stopped = || {
                DatasetError::Store(StoreError::Unavailable(format!(
                    "{dataset} version {to}: the publishing worker stopped"
                )))
            };
            let mut written = || -> Result<(), DatasetError> {
                let mut in_flight = 0usize;
                let mut reading = true;
                while reading || in_flight > 0 {
                    if reading {
                        let t0 = std::time::Instant::now();
                        let mut block = Vec::with_capacity(PUBLISH_BLOCK);
                        while block.len() < PUBLISH_BLOCK {
                            match rows.next().map_err(sql_err)? {
                                Some(r) => block.push(RawStaged {
                                    target: ResourceRef {
                                        resource_type: r.get(0).map_err(sql_err)?,
                                        id: r.get(1).map_err(sql_err)?,
                                    },
                                    content: r.get(2).map_err(sql_err)?,
                                    lineage_text: r.get(3).map_err(sql_err)?,
                                }),
                                None => {
                                    reading = false;
                                    break;
                                }
                            }
                        }
                        phases.scan += t0.elapsed();
                        if !block.is_empty() {
                            raw_tx.send(block).map_err(|_| stopped())?;
                            in_flight += 1;
                        }
                        // Two blocks in flight: the worker is never idle waiting for a read.
                        if reading && in_flight < 2 {
                            continue;
                        }
                    }
                    if in_flight == 0 {
                        continue;
                    }
                    let t0 = std::time::Instant::now();
                    let prepared = done_rx.recv().map_err(|_| stopped())??;
                    in_flight -= 1;
                    let t1 = std::time::Instant::now();
                    phases.decode += t1 - t0;
                    for p in prepared {
                        let t1 = std::time::Instant::now();
                        search::collect_entries(conn, &p.target, p.entries)?;
                        let t2 = std::time::Instant::now();
                        phases.index += t2 - t1;
                        event_insert.execute([p.event_text]).map_err(sql_err)?;
                        let t3 = std::time::Instant::now();
                        phases.events += t3 - t2;
                        history_insert
                            .execute(params![
                                p.target.resource_type,
                                p.target.id,
                                at,
                                LINEAGE_IN_STAGED,
                                dataset,
                                to_key
                            ])
                            .map_err(sql_err)?;
                        let t4 = std::time::Instant::now();
                        phases.history += t4 - t3;
                        resource_insert
                            .execute(params![p.target.resource_type, p.target.id, at])
                            .map_err(sql_err)?;
                        mv.created += 1;
                        phases.resources += t4.elapsed();
                    }
                }
                Ok(())
            };
            let out = written();
            // Dropping both ends stops the worker whether it waits to read or to send.
            drop(raw_tx);
            drop(done_rx);
            out
        })?;
        // The index rows, sorted by their indexes' keys (see `search::write_collected`).
        let t0 = std::time::Instant::now();
        search::write_collected(conn)?;
        phases.sorted_index = t0.elapsed();
    }
    tracing::debug!(
        dataset,
        held_ms = phases.held.as_millis() as u64,
        scan_ms = phases.scan.as_millis() as u64,
        prepare_wait_ms = phases.decode.as_millis() as u64,
        collect_ms = phases.index.as_millis() as u64,
        sorted_index_ms = phases.sorted_index.as_millis() as u64,
        events_ms = phases.events.as_millis() as u64,
        history_ms = phases.history.as_millis() as u64,
        resources_ms = phases.resources.as_millis() as u64,
        "first publish phases"
    );
    Ok(mv)
}

/// Rows a first publish hands its worker at a time (see [`publish_first`]).
const PUBLISH_BLOCK: usize = 256;

/// A staged row as read, before decoding.
struct RawStaged {
    target: ResourceRef,
    content: String,
    lineage_text: String,
}

/// What a first publish writes for a new resource.
struct Prepared {
    target: ResourceRef,
    entries: Vec<crate::store::search::IndexEntry>,
    event_text: String,
}

/// The CPU part of publishing a new resource: decoded and checked as [`read_staged`] does,
/// its index entries and its event's text.
fn prepare_new(
    dataset: &str,
    version: u64,
    now: DateTime<Utc>,
    raw: RawStaged,
) -> Result<Prepared, DatasetError> {
    let staged = decode_staged(dataset, version, raw.target, &raw.content, raw.lineage_text)?;
    let stored = with_meta(staged.resource, 1, now);
    let entries = crate::store::search::index_entries(&stored);
    let event = change_event(
        ChangeKind::Created,
        &staged.target,
        "1",
        now,
        &staged.lineage,
    );
    let event_text = serde_json::to_string(&event).map_err(|e| StoreError::Invalid {
        target: staged.target.to_string(),
        reason: format!("change event cannot be stored: {e}"),
    })?;
    Ok(Prepared {
        target: staged.target,
        entries,
        event_text,
    })
}

/// Where a first publish's time goes (logged; durations only).
#[derive(Default)]
struct Phases {
    held: std::time::Duration,
    scan: std::time::Duration,
    decode: std::time::Duration,
    index: std::time::Duration,
    sorted_index: std::time::Duration,
    events: std::time::Duration,
    history: std::time::Duration,
    resources: std::time::Duration,
}

/// A staged row, checked and decoded.
struct Staged {
    target: ResourceRef,
    resource: Value,
    lineage: Lineage,
    lineage_text: String,
}

/// Reads (resource_type, id, content, lineage) of a staged row. The staged text is canonical
/// and its lineage serialised already: what `apply_change` would do again is only checked.
fn read_staged(dataset: &str, version: u64, r: &rusqlite::Row<'_>) -> Result<Staged, DatasetError> {
    let target = ResourceRef {
        resource_type: r.get(0).map_err(sql_err)?,
        id: r.get(1).map_err(sql_err)?,
    };
    let content: String = r.get(2).map_err(sql_err)?;
    let lineage_text: String = r.get(3).map_err(sql_err)?;
    decode_staged(dataset, version, target, &content, lineage_text)
}

/// [`read_staged`] on the row's values.
fn decode_staged(
    dataset: &str,
    version: u64,
    target: ResourceRef,
    content: &str,
    lineage_text: String,
) -> Result<Staged, DatasetError> {
    let resource: Value = serde_json::from_str(content)
        .map_err(|e| StoreError::Corrupt(format!("{dataset} version {version}: {target}: {e}")))?;
    check_ref(&target)?;
    let resource = canonical_owned(&target, resource)?;
    let lineage = decode_lineage(dataset, version, &target, &lineage_text)?;
    Ok(Staged {
        target,
        resource,
        lineage,
        lineage_text,
    })
}

/// Applies the difference one resource at a time through the store's write path.
fn switch_each(
    conn: &Connection,
    dataset: &str,
    from: Option<u64>,
    to: u64,
    now: DateTime<Utc>,
) -> Result<PointerMove, DatasetError> {
    move_incoming(conn, dataset, to)?;
    let mut mv = PointerMove {
        dataset: dataset.to_owned(),
        from,
        to: Some(to),
        ..PointerMove::default()
    };
    // -1 matches no version: without a previous version everything is new.
    let from_key = from.map_or(-1, to_i64);
    let to_key = to_i64(to);
    // One pass over the new version's rows: a separate count(*) would read every staged page
    // (the whole load) once more.
    let mut total = 0u64;
    let mut changed = 0u64;
    {
        let mut upserts = conn
            .prepare(
                "SELECT n.resource_type, n.id, n.content, n.lineage,
                        EXISTS (SELECT 1 FROM dataset_staged o
                                WHERE o.dataset = ?1 AND o.version = ?3
                                  AND o.resource_type = n.resource_type AND o.id = n.id
                                  AND o.content = n.content)
                 FROM dataset_staged n WHERE n.dataset = ?1 AND n.version = ?2
                 ORDER BY n.resource_type, n.id",
            )
            .map_err(sql_err)?;
        let mut rows = upserts
            .query(params![dataset, to_key, from_key])
            .map_err(sql_err)?;
        while let Some(r) = rows.next().map_err(sql_err)? {
            total += 1;
            if r.get::<_, bool>(4).map_err(sql_err)? {
                continue;
            }
            let target = ResourceRef {
                resource_type: r.get(0).map_err(sql_err)?,
                id: r.get(1).map_err(sql_err)?,
            };
            let content: String = r.get(2).map_err(sql_err)?;
            let lineage: String = r.get(3).map_err(sql_err)?;
            let resource: Value = serde_json::from_str(&content).map_err(|e| {
                StoreError::Corrupt(format!("{dataset} version {to}: {target}: {e}"))
            })?;
            // The staged text is canonical and its lineage serialised already: what
            // `apply_change` would do again is only checked, not redone.
            check_ref(&target)?;
            let resource = canonical_owned(&target, resource)?;
            let decoded = decode_lineage(dataset, to, &target, &lineage)?;
            let outcome = apply_canonical(
                conn,
                &target,
                Some(resource),
                &decoded,
                &lineage,
                now,
                false,
                Some((dataset, to_key)),
            )?;
            changed += 1;
            count(outcome.action, &mut mv);
        }
    }
    mv.unchanged += total.saturating_sub(changed);
    if from.is_some() {
        let mut deletes = conn
            .prepare(
                "SELECT o.resource_type, o.id, o.lineage FROM dataset_staged o
                 WHERE o.dataset = ?1 AND o.version = ?3 AND NOT EXISTS (
                   SELECT 1 FROM dataset_staged n
                   WHERE n.dataset = ?1 AND n.version = ?2 AND n.resource_type = o.resource_type
                     AND n.id = o.id)",
            )
            .map_err(sql_err)?;
        let mut rows = deletes
            .query(params![dataset, to_key, from_key])
            .map_err(sql_err)?;
        while let Some(r) = rows.next().map_err(sql_err)? {
            let target = ResourceRef {
                resource_type: r.get(0).map_err(sql_err)?,
                id: r.get(1).map_err(sql_err)?,
            };
            let lineage: String = r.get(2).map_err(sql_err)?;
            let change = ResourceChange {
                lineage: decode_lineage(dataset, from.unwrap_or(0), &target, &lineage)?,
                target,
                op: ResourceOp::Delete,
            };
            let outcome = apply_change(conn, &change, now, false)?;
            count(outcome.action, &mut mv);
        }
    }
    Ok(mv)
}

fn count(action: PublishAction, mv: &mut PointerMove) {
    match action {
        PublishAction::Created => mv.created += 1,
        PublishAction::Updated => mv.updated += 1,
        PublishAction::Deleted => mv.deleted += 1,
        PublishAction::Unchanged | PublishAction::Stale => mv.unchanged += 1,
    }
}

fn decode_lineage(
    dataset: &str,
    version: u64,
    target: &ResourceRef,
    text: &str,
) -> Result<Lineage, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Corrupt(format!(
            "{dataset} version {version}: {target}: lineage: {e}"
        ))
    })
}

impl SqliteStore {
    fn write_tx<T>(
        &self,
        f: impl FnOnce(&Connection, DateTime<Utc>) -> Result<T, DatasetError>,
    ) -> Result<T, DatasetError> {
        let now = self.now();
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        ensure_layout(&tx)?;
        let out = f(&tx, now)?;
        tx.commit().map_err(sql_err)?;
        Ok(out)
    }

    fn version_of(
        &self,
        conn: &Connection,
        row: Row,
        dataset: &str,
        current: Option<u64>,
    ) -> Result<DatasetVersion, DatasetError> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT chunk, records_read, resources_written, quarantined FROM dataset_chunks
                 WHERE dataset = ?1 AND version = ?2 ORDER BY done_at, chunk",
            )
            .map_err(sql_err)?;
        let chunks = stmt
            .query_map(params![dataset, to_i64(row.version)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(sql_err)?;
        let mut counts = LoadCounts::default();
        let mut files = Vec::new();
        for c in chunks {
            let (chunk, read, written, quarantined) = c.map_err(sql_err)?;
            counts += LoadCounts {
                records_read: to_u64(read)?,
                resources_written: to_u64(written)?,
                quarantined: to_u64(quarantined)?,
            };
            files.push(chunk);
        }
        Ok(DatasetVersion {
            dataset: dataset.to_owned(),
            version: row.version,
            status: row.status,
            created_at: parse_at(&row.created_at)?,
            updated_at: parse_at(&row.updated_at)?,
            heartbeat_at: parse_at(&row.heartbeat_at)?,
            owner: row.owner,
            counts,
            source_files: files,
            error: row.error,
            current: current == Some(row.version),
            purged: row.purged,
        })
    }

    fn begin_sync(
        &self,
        dataset: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<DatasetVersion, DatasetError> {
        check_dataset_name(dataset)?;
        let (row, current) = self.write_tx(|tx, now| {
            fail_dead_in(tx, dataset, lease, now)?;
            let live = tx
                .query_row(
                    "SELECT version, owner, heartbeat_at FROM dataset_versions
                     WHERE dataset = ?1 AND status = 'IN_PROGRESS' ORDER BY version LIMIT 1",
                    [dataset],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    },
                )
                .optional()
                .map_err(sql_err)?;
            if let Some((version, owner, heartbeat_at)) = live {
                return Err(DatasetError::Busy {
                    dataset: dataset.to_owned(),
                    version: to_u64(version)?,
                    owner,
                    heartbeat_at: parse_at(&heartbeat_at)?,
                });
            }
            let next: i64 = tx
                .query_row(
                    "SELECT COALESCE(max(version), 0) + 1 FROM dataset_versions WHERE dataset = ?1",
                    [dataset],
                    |r| r.get(0),
                )
                .map_err(sql_err)?;
            let at = format_time(now);
            tx.execute(
                "INSERT INTO dataset_versions
                   (dataset, version, status, created_at, updated_at, heartbeat_at, owner)
                 VALUES (?1, ?2, 'IN_PROGRESS', ?3, ?3, ?3, ?4)",
                params![dataset, next, at, owner],
            )
            .map_err(sql_err)?;
            let row = require(tx, dataset, to_u64(next)?)?;
            Ok((row, read_pointer(tx, dataset)?))
        })?;
        tracing::info!(dataset, version = row.version, "dataset version created");
        let conn = self.lock()?;
        self.version_of(&conn, row, dataset, current)
    }

    fn stage_sync(
        &self,
        dataset: &str,
        version: u64,
        resources: &[StagedResource],
    ) -> Result<(), DatasetError> {
        // Canonical text outside the lock: it is the expensive part.
        let t0 = std::time::Instant::now();
        let mut rows = Vec::with_capacity(resources.len());
        for r in resources {
            check_ref(&r.target)?;
            let content = canonical_content(&r.target, &r.resource)?.to_string();
            let lineage = serde_json::to_string(&r.lineage).map_err(|e| StoreError::Invalid {
                target: r.target.to_string(),
                reason: format!("lineage cannot be stored: {e}"),
            })?;
            rows.push((r, content, lineage));
        }
        let t1 = std::time::Instant::now();
        let out = self.write_tx(|tx, now| {
            let t2 = std::time::Instant::now();
            refresh_heartbeat(tx, dataset, version, &format_time(now))?;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO dataset_incoming
                       (dataset, version, resource_type, id, content, lineage)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql_err)?;
            for (r, content, lineage) in &rows {
                stmt.execute(params![
                    dataset,
                    to_i64(version),
                    r.target.resource_type,
                    r.target.id,
                    content,
                    lineage
                ])
                .map_err(sql_err)?;
            }
            Ok(t2)
        })?;
        tracing::debug!(
            dataset,
            rows = rows.len(),
            canonical_us = (t1 - t0).as_micros() as u64,
            lock_us = (out - t1).as_micros() as u64,
            write_us = out.elapsed().as_micros() as u64,
            "staged"
        );
        Ok(())
    }

    fn chunk_done_sync(
        &self,
        dataset: &str,
        version: u64,
        chunk: &str,
        counts: LoadCounts,
    ) -> Result<(), DatasetError> {
        self.write_tx(|tx, now| {
            let at = format_time(now);
            refresh_heartbeat(tx, dataset, version, &at)?;
            tx.execute(
                "INSERT OR REPLACE INTO dataset_chunks
                   (dataset, version, chunk, records_read, resources_written, quarantined, done_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    dataset,
                    to_i64(version),
                    chunk,
                    to_i64(counts.records_read),
                    to_i64(counts.resources_written),
                    to_i64(counts.quarantined),
                    at
                ],
            )
            .map_err(sql_err)?;
            Ok(())
        })
    }

    fn finalize_sync(&self, dataset: &str, version: u64) -> Result<PointerMove, DatasetError> {
        let mv = self.write_tx(|tx, now| {
            let row = require(tx, dataset, version)?;
            let current = read_pointer(tx, dataset)?;
            if row.status == VersionStatus::Succeeded && current == Some(version) {
                // A retried finalize whose first attempt committed.
                return Ok(PointerMove {
                    dataset: dataset.to_owned(),
                    from: current,
                    to: current,
                    ..PointerMove::default()
                });
            }
            if row.status != VersionStatus::InProgress {
                return Err(wrong(
                    dataset,
                    &row,
                    "only a version being loaded can be finalized",
                ));
            }
            let mv = switch(tx, dataset, current, version, now)?;
            let at = format_time(now);
            set_status(tx, dataset, version, VersionStatus::Succeeded, None, &at)?;
            write_pointer(tx, dataset, version, &at)?;
            Ok(mv)
        })?;
        tracing::info!(
            dataset,
            version,
            from = ?mv.from,
            created = mv.created,
            updated = mv.updated,
            deleted = mv.deleted,
            unchanged = mv.unchanged,
            "dataset version published"
        );
        Ok(mv)
    }

    fn fail_sync(&self, dataset: &str, version: u64, reason: &str) -> Result<(), DatasetError> {
        self.write_tx(|tx, now| {
            let row = require(tx, dataset, version)?;
            match row.status {
                VersionStatus::InProgress => set_status(
                    tx,
                    dataset,
                    version,
                    VersionStatus::Failed,
                    Some(reason),
                    &format_time(now),
                ),
                VersionStatus::Failed => Ok(()),
                _ => Err(wrong(dataset, &row, "only a version being loaded can fail")),
            }
        })?;
        tracing::warn!(dataset, version, "dataset version marked FAILED");
        Ok(())
    }

    fn rollback_sync(&self, dataset: &str, to: Option<u64>) -> Result<PointerMove, DatasetError> {
        let mv = self.write_tx(|tx, now| {
            let invalid = |reason: String| DatasetError::Invalid {
                dataset: dataset.to_owned(),
                reason,
            };
            let current = read_pointer(tx, dataset)?
                .ok_or_else(|| invalid("no version is current: nothing to roll back".into()))?;
            let target = match to {
                Some(v) => {
                    let row = require(tx, dataset, v)?;
                    if v == current {
                        return Err(invalid(format!("version {v} is already current")));
                    }
                    if !matches!(row.status, VersionStatus::Succeeded | VersionStatus::RolledBack) {
                        return Err(wrong(dataset, &row, "only a loaded version can be made current"));
                    }
                    if row.purged {
                        return Err(invalid(format!(
                            "version {v} was garbage-collected: its resources are gone"
                        )));
                    }
                    v
                }
                None => {
                    let v: Option<i64> = tx
                        .query_row(
                            "SELECT version FROM dataset_versions
                             WHERE dataset = ?1 AND version < ?2 AND status = 'SUCCEEDED' AND purged = 0
                             ORDER BY version DESC LIMIT 1",
                            params![dataset, to_i64(current)],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(sql_err)?;
                    let v = v.ok_or_else(|| {
                        invalid(format!(
                            "no SUCCEEDED version older than the current one ({current}) is left"
                        ))
                    })?;
                    to_u64(v)?
                }
            };
            let mv = switch(tx, dataset, Some(current), target, now)?;
            let at = format_time(now);
            set_status(tx, dataset, current, VersionStatus::RolledBack, None, &at)?;
            set_status(tx, dataset, target, VersionStatus::Succeeded, None, &at)?;
            write_pointer(tx, dataset, target, &at)?;
            Ok(mv)
        })?;
        tracing::info!(
            dataset,
            from = ?mv.from,
            to = ?mv.to,
            created = mv.created,
            updated = mv.updated,
            deleted = mv.deleted,
            "dataset rolled back"
        );
        Ok(mv)
    }

    fn versions_sync(&self, dataset: &str) -> Result<Vec<DatasetVersion>, DatasetError> {
        let conn = self.lock()?;
        let current = read_pointer(&conn, dataset)?;
        let rows = {
            let mut stmt = conn
                .prepare(
                    "SELECT version, status, created_at, updated_at, heartbeat_at, owner, error, purged
                     FROM dataset_versions WHERE dataset = ?1 ORDER BY version DESC",
                )
                .map_err(sql_err)?;
            let raw = stmt.query_map([dataset], raw_row).map_err(sql_err)?;
            let mut rows = Vec::new();
            for r in raw {
                rows.push(decode_row(r.map_err(sql_err)?)?);
            }
            rows
        };
        rows.into_iter()
            .map(|row| self.version_of(&conn, row, dataset, current))
            .collect()
    }

    fn gc_sync(&self, dataset: &str, keep: usize) -> Result<GcReport, DatasetError> {
        let report = self.write_tx(|tx, _now| {
            let current = read_pointer(tx, dataset)?;
            let mut stmt = tx
                .prepare(
                    "SELECT version, status FROM dataset_versions
                     WHERE dataset = ?1 AND purged = 0 AND status <> 'IN_PROGRESS'
                     ORDER BY version DESC",
                )
                .map_err(sql_err)?;
            let rows = stmt
                .query_map([dataset], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(sql_err)?;
            let mut loaded_seen = 0usize;
            let mut purge = Vec::new();
            for r in rows {
                let (version, status) = r.map_err(sql_err)?;
                let version = to_u64(version)?;
                if status == "FAILED" {
                    purge.push(version);
                    continue;
                }
                loaded_seen += 1;
                if Some(version) != current && loaded_seen > keep {
                    purge.push(version);
                }
            }
            drop(stmt);
            let mut report = GcReport {
                dataset: dataset.to_owned(),
                ..GcReport::default()
            };
            for v in purge {
                // Versions published from these rows get their text back first (see the
                // store's `MIGRATION_9`): they may still be current, or in history.
                tx.execute(
                    &format!(
                        "UPDATE history AS h SET
                           content = (SELECT {HISTORY_CONTENT} FROM dataset_staged hs
                                      WHERE hs.dataset = h.dataset
                                        AND hs.version = h.dataset_version
                                        AND hs.resource_type = h.resource_type
                                        AND hs.id = h.id),
                           lineage = (SELECT hs.lineage FROM dataset_staged hs
                                      WHERE hs.dataset = h.dataset
                                        AND hs.version = h.dataset_version
                                        AND hs.resource_type = h.resource_type
                                        AND hs.id = h.id),
                           dataset = NULL, dataset_version = NULL
                         WHERE h.dataset = ?1 AND h.dataset_version = ?2
                           AND (h.resource_type, h.id) IN (
                             SELECT resource_type, id FROM dataset_staged
                             WHERE dataset = ?1 AND version = ?2)"
                    ),
                    params![dataset, to_i64(v)],
                )
                .map_err(sql_err)?;
                let n = tx
                    .execute(
                        "DELETE FROM dataset_staged WHERE dataset = ?1 AND version = ?2",
                        params![dataset, to_i64(v)],
                    )
                    .map_err(sql_err)?
                    + delete_incoming(tx, dataset, v)?;
                tx.execute(
                    "UPDATE dataset_versions SET purged = 1 WHERE dataset = ?1 AND version = ?2",
                    params![dataset, to_i64(v)],
                )
                .map_err(sql_err)?;
                report.rows_deleted += n as u64;
                report.purged_versions.push(v);
            }
            Ok(report)
        })?;
        tracing::info!(
            dataset,
            versions = report.purged_versions.len(),
            rows = report.rows_deleted,
            "dataset versions garbage-collected"
        );
        Ok(report)
    }
}

#[async_trait]
impl DatasetStore for SqliteStore {
    async fn begin(
        &self,
        dataset: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<DatasetVersion, DatasetError> {
        self.begin_sync(dataset, owner, lease)
    }

    async fn heartbeat(&self, dataset: &str, version: u64) -> Result<(), DatasetError> {
        off_worker(|| {
            self.write_tx(|tx, now| {
                refresh_heartbeat(tx, dataset, version, &format_time(now)).map(|_| ())
            })
        })
    }

    async fn stage(
        &self,
        dataset: &str,
        version: u64,
        resources: &[StagedResource],
    ) -> Result<(), DatasetError> {
        off_worker(|| self.stage_sync(dataset, version, resources))
    }

    async fn chunk_done(
        &self,
        dataset: &str,
        version: u64,
        chunk: &str,
        counts: LoadCounts,
    ) -> Result<(), DatasetError> {
        off_worker(|| self.chunk_done_sync(dataset, version, chunk, counts))
    }

    async fn finalize(&self, dataset: &str, version: u64) -> Result<PointerMove, DatasetError> {
        off_worker(|| self.finalize_sync(dataset, version))
    }

    async fn fail(&self, dataset: &str, version: u64, reason: &str) -> Result<(), DatasetError> {
        self.fail_sync(dataset, version, reason)
    }

    async fn rollback(&self, dataset: &str, to: Option<u64>) -> Result<PointerMove, DatasetError> {
        self.rollback_sync(dataset, to)
    }

    async fn versions(&self, dataset: &str) -> Result<Vec<DatasetVersion>, DatasetError> {
        self.versions_sync(dataset)
    }

    async fn current(&self, dataset: &str) -> Result<Option<u64>, DatasetError> {
        let conn = self.lock()?;
        read_pointer(&conn, dataset)
    }

    async fn fail_dead(&self, dataset: &str, lease: Duration) -> Result<Vec<u64>, DatasetError> {
        self.write_tx(|tx, now| fail_dead_in(tx, dataset, lease, now))
    }

    async fn gc(&self, dataset: &str, keep: usize) -> Result<GcReport, DatasetError> {
        self.gc_sync(dataset, keep)
    }
}

#[cfg(test)]
mod tests;
