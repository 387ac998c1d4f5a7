//! The local bus's own database: an archive of every event it accepted (for `events list` and
//! `events replay`, as an EventBridge archive) and a ledger of which target received which
//! event, so an event redelivered after a partial failure reaches each target once.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

/// Errors of the archive database.
#[derive(Debug, thiserror::Error)]
#[error("event archive {path}: {message}")]
pub struct ArchiveError {
    pub path: String,
    pub message: String,
}

/// One archived event.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedEvent {
    /// Order of arrival at the bus.
    pub position: i64,
    /// The event's `time` (commit time), as written in the envelope.
    pub time: String,
    /// The delivered envelope.
    pub envelope: Value,
}

/// The archive and delivery ledger (SQLite, WAL).
#[derive(Debug)]
pub struct Archive {
    path: String,
    conn: Mutex<Connection>,
}

/// The archive schema this build writes (`PRAGMA user_version`). Version 0 (no version set)
/// keyed the archive's dedupe and the delivery ledger by event id; [`migrate`] moves it.
pub const ARCHIVE_SCHEMA_VERSION: i64 = 1;

/// Schema 1. Positions are the archive's rowid without `AUTOINCREMENT`: nothing is ever
/// removed from the archive, so `max(position) + 1` only grows, and no `sqlite_sequence` row
/// is rewritten per insert.
///
/// - `archive.id_hash`: a 47-bit hash of the event id (see [`id_hash`]), the only lookup by
///   id that remains (dedupe of a re-published event, an SSE `Last-Event-ID`). Its index
///   entries are a third of a UUID text's, so far more of them stay in the page cache; a
///   hash match is confirmed against the envelope's `id`, so a collision costs a comparison,
///   never a lost event.
/// - `deliveries`: (ledger, archive position), both integers, append-only: a page of
///   delivered events adds entries at the end of each ledger's range instead of on random
///   pages (the event-id key slowed emit as the ledger grew).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS archive (
    position    INTEGER PRIMARY KEY,
    id_hash     INTEGER NOT NULL,
    time        TEXT NOT NULL,
    envelope    TEXT NOT NULL,
    archived_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS archive_id_hash ON archive(id_hash);
CREATE INDEX IF NOT EXISTS archive_time ON archive(time, position);
CREATE TABLE IF NOT EXISTS ledgers (
    ledger INTEGER PRIMARY KEY,
    name   TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS deliveries (
    ledger   INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (ledger, position)
) WITHOUT ROWID;
";

/// The archive connection's page cache bound, in KiB (see [`Archive::open`]).
pub const ARCHIVE_CACHE_KIB: i64 = 32 * 1024;

/// WAL pages between the archive's checkpoints (64 MiB of 4 KiB pages; see [`Archive::open`]).
pub const ARCHIVE_CHECKPOINT_PAGES: i64 = 16 * 1024;

/// Event times are stored as the envelope writes them (`2024-01-02T03:04:05Z`), so text order
/// is time order.
pub fn time_key(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The archive's hash of an event id: FNV-1a (stable across builds, unlike std's hasher),
/// cut to 47 bits so that SQLite stores it in 6 bytes.
pub fn id_hash(id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits in, then keep 47: FNV's low bits alone mix less.
    let folded = (h ^ (h >> 47)) & ((1u64 << 47) - 1);
    i64::try_from(folded).unwrap_or_default()
}

/// What [`Archive::archive`] did with one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archived {
    /// The event's archive position (the key of its delivery-ledger entries).
    pub position: i64,
    /// Archived by this call (`false`: an event with its id was archived before).
    pub fresh: bool,
}

impl Archive {
    /// Opens (or creates) the archive database, migrating a file of an older schema.
    pub fn open(path: &Path) -> Result<Archive, ArchiveError> {
        let name = path.display().to_string();
        let fail = |e: &dyn std::fmt::Display| ArchiveError {
            path: name.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let mut conn = Connection::open(path).map_err(|e| fail(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        // WAL with NORMAL sync: a crash may lose the last archived rows, never corrupt; the
        // outbox, not the archive, is what guarantees delivery.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| fail(&e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| fail(&e))?;
        // Event ids are random (v5 UUIDs): every insert lands on a random page of the id-hash
        // index. With SQLite's default 2 MiB cache those pages are read back from the file on
        // nearly every insert once the archive outgrows it. The cache is filled only as pages
        // are used, up to this bound.
        conn.pragma_update(None, "cache_size", -ARCHIVE_CACHE_KIB)
            .map_err(|e| fail(&e))?;
        // A page of 1,000 events dirties many random pages of the id-hash index, more than
        // SQLite's default checkpoint interval (1,000 pages): checkpointing less often writes
        // a page dirtied by several commits once. The WAL file on disk grows to this size,
        // memory does not.
        conn.pragma_update(None, "wal_autocheckpoint", ARCHIVE_CHECKPOINT_PAGES)
            .map_err(|e| fail(&e))?;
        migrate(&mut conn).map_err(|e| fail(&e))?;
        Ok(Archive {
            path: name,
            conn: Mutex::new(conn),
        })
    }

    fn error(&self, e: impl std::fmt::Display) -> ArchiveError {
        ArchiveError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, ArchiveError> {
        self.conn.lock().map_err(|_| self.error("lock poisoned"))
    }

    /// Archives envelopes (by `id`; one already archived is left as it is).
    pub fn insert(&self, envelopes: &[&Value]) -> Result<(), ArchiveError> {
        self.archive(envelopes).map(|_| ())
    }

    /// [`Self::insert`], telling for each envelope whether it was archived now (`false`: an
    /// event with its id was archived before). Nothing is ever removed from the archive, and
    /// an event is archived before it is delivered, so an event archived now has been
    /// delivered to no target: its delivery ledger need not be read.
    pub fn insert_new(&self, envelopes: &[&Value]) -> Result<Vec<bool>, ArchiveError> {
        Ok(self.archive(envelopes)?.iter().map(|a| a.fresh).collect())
    }

    /// [`Self::insert_new`] with each event's archive position, in one transaction.
    pub fn archive(&self, envelopes: &[&Value]) -> Result<Vec<Archived>, ArchiveError> {
        let texts: Vec<String> = envelopes.iter().map(|e| e.to_string()).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        self.archive_serialized(envelopes, &texts)
    }

    /// [`Self::archive`] given each envelope's JSON text too (`texts[i]` is `envelopes[i]`
    /// serialized), which is what the archive stores.
    pub fn archive_serialized(
        &self,
        envelopes: &[&Value],
        texts: &[&str],
    ) -> Result<Vec<Archived>, ArchiveError> {
        if envelopes.len() != texts.len() {
            return Err(self.error(format!(
                "{} envelopes but {} texts",
                envelopes.len(),
                texts.len()
            )));
        }
        let mut conn = self.lock()?;
        // Immediate: the lookup and the insert of an id are one step even when another
        // process archives the same event at once (the id index is not unique).
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        let mut out = Vec::with_capacity(envelopes.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO archive (id_hash, time, envelope, archived_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| self.error(e))?;
            let now = time_key(&Utc::now());
            for (e, text) in envelopes.iter().zip(texts) {
                let id = e.get("id").and_then(Value::as_str).unwrap_or_default();
                if let Some(position) = find(&tx, id).map_err(|e| self.error(e))? {
                    out.push(Archived {
                        position,
                        fresh: false,
                    });
                    continue;
                }
                let time = e.get("time").and_then(Value::as_str).unwrap_or_default();
                insert
                    .execute(params![id_hash(id), time, text, now])
                    .map_err(|e| self.error(e))?;
                out.push(Archived {
                    position: tx.last_insert_rowid(),
                    fresh: true,
                });
            }
        }
        tx.commit().map_err(|e| self.error(e))?;
        Ok(out)
    }

    /// Archived events whose time is at or after `since`, in arrival order, from `after`
    /// (a position, exclusive), at most `limit`.
    pub fn list(
        &self,
        since: Option<&DateTime<Utc>>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ArchivedEvent>, ArchiveError> {
        let conn = self.lock()?;
        let since = since.map(time_key).unwrap_or_default();
        let mut stmt = conn
            .prepare_cached(
                "SELECT position, time, envelope FROM archive
                 WHERE time >= ?1 AND position > ?2 ORDER BY position LIMIT ?3",
            )
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map(
                params![since, after, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (position, time, text) = row.map_err(|e| self.error(e))?;
            let envelope = serde_json::from_str(&text)
                .map_err(|e| self.error(format!("archived event {position}: {e}")))?;
            out.push(ArchivedEvent {
                position,
                time,
                envelope,
            });
        }
        Ok(out)
    }

    /// The position of an archived event by id (to resume after a `Last-Event-ID`).
    pub fn position_of(&self, event_id: &str) -> Result<Option<i64>, ArchiveError> {
        let conn = self.lock()?;
        find(&conn, event_id).map_err(|e| self.error(e))
    }

    /// Which of `keys` (event ids) the target already received.
    pub fn delivered(&self, target: &str, keys: &[String]) -> Result<Vec<bool>, ArchiveError> {
        let positions = {
            let conn = self.lock()?;
            keys.iter()
                .map(|k| find(&conn, k).map_err(|e| self.error(e)))
                .collect::<Result<Vec<_>, _>>()?
        };
        let known: Vec<i64> = positions.iter().flatten().copied().collect();
        let mut done = self.delivered_at(target, &known)?.into_iter();
        Ok(positions
            .iter()
            .map(|p| p.is_some() && done.next().unwrap_or(false))
            .collect())
    }

    /// Which of the events at `positions` the target (a ledger name) already received.
    pub fn delivered_at(&self, target: &str, positions: &[i64]) -> Result<Vec<bool>, ArchiveError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.lock()?;
        let Some(ledger) = ledger_id(&conn, target, false).map_err(|e| self.error(e))? else {
            return Ok(vec![false; positions.len()]);
        };
        let mut stmt = conn
            .prepare_cached("SELECT 1 FROM deliveries WHERE ledger = ?1 AND position = ?2")
            .map_err(|e| self.error(e))?;
        positions
            .iter()
            .map(|p| stmt.exists(params![ledger, p]).map_err(|e| self.error(e)))
            .collect()
    }

    /// Records that the target received these deliveries (event ids of archived events).
    pub fn record_delivered(&self, target: &str, keys: &[String]) -> Result<(), ArchiveError> {
        self.record_deliveries(&[(target, keys)])
    }

    /// Records deliveries (event ids of archived events) to several targets in one
    /// transaction. An id that was never archived is an error naming it: the ledger is keyed
    /// by archive position.
    pub fn record_deliveries(&self, batches: &[(&str, &[String])]) -> Result<(), ArchiveError> {
        let mut resolved: Vec<(&str, Vec<i64>)> = Vec::with_capacity(batches.len());
        {
            let conn = self.lock()?;
            for (target, keys) in batches {
                let mut positions = Vec::with_capacity(keys.len());
                for k in *keys {
                    match find(&conn, k).map_err(|e| self.error(e))? {
                        Some(p) => positions.push(p),
                        None => {
                            return Err(self.error(format!(
                                "delivery of event {k:?} to {target}: the event is not archived"
                            )));
                        }
                    }
                }
                resolved.push((target, positions));
            }
        }
        let refs: Vec<(&str, &[i64])> = resolved.iter().map(|(t, p)| (*t, p.as_slice())).collect();
        self.record_positions(&refs)
    }

    /// Records deliveries of the events at archive positions to several targets (ledger
    /// names) in one transaction.
    pub fn record_positions(&self, batches: &[(&str, &[i64])]) -> Result<(), ArchiveError> {
        if batches.iter().all(|(_, p)| p.is_empty()) {
            return Ok(());
        }
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO deliveries (ledger, position) VALUES (?1, ?2)",
                )
                .map_err(|e| self.error(e))?;
            for (target, positions) in batches {
                if positions.is_empty() {
                    continue;
                }
                let ledger = ledger_id(&tx, target, true)
                    .map_err(|e| self.error(e))?
                    .ok_or_else(|| self.error(format!("ledger {target}: not created")))?;
                for p in *positions {
                    stmt.execute(params![ledger, p])
                        .map_err(|e| self.error(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.error(e))
    }
}

/// The position of the archived event with this id: the hash narrows it to (nearly always)
/// one row, the envelope's `id` confirms it.
fn find(conn: &Connection, id: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT position FROM archive
         WHERE id_hash = ?1 AND json_extract(envelope, '$.id') = ?2
         ORDER BY position LIMIT 1",
    )?
    .query_row(params![id_hash(id), id], |r| r.get(0))
    .optional()
}

/// A ledger's number (`create`: made on first use).
fn ledger_id(conn: &Connection, name: &str, create: bool) -> rusqlite::Result<Option<i64>> {
    if create {
        conn.prepare_cached("INSERT OR IGNORE INTO ledgers (name) VALUES (?1)")?
            .execute([name])?;
    }
    conn.prepare_cached("SELECT ledger FROM ledgers WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

/// Brings the file to [`ARCHIVE_SCHEMA_VERSION`] in one write transaction (several processes
/// may open it at once). Schema 0's rows keep their positions; its ledger entries are keyed
/// by the position of the event they name (an entry naming no archived event, which schema 0
/// never wrote, is dropped).
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version == ARCHIVE_SCHEMA_VERSION {
        return Ok(());
    }
    if version != 0 {
        return Err(format!(
            "archive schema version {version}, this build knows {ARCHIVE_SCHEMA_VERSION}"
        ));
    }
    let old: bool = tx
        .query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('archive') WHERE name = 'event_id'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    let sql = |e: rusqlite::Error| format!("migrating schema 0: {e}");
    if old {
        tx.execute_batch(
            "ALTER TABLE archive RENAME TO archive_v0;
             DROP INDEX IF EXISTS archive_time;
             ALTER TABLE deliveries RENAME TO deliveries_v0;",
        )
        .map_err(sql)?;
    }
    tx.execute_batch(SCHEMA).map_err(sql)?;
    if old {
        {
            let mut read = tx
                .prepare(
                    "SELECT position, event_id, time, envelope, archived_at FROM archive_v0
                     ORDER BY position",
                )
                .map_err(sql)?;
            let mut write = tx
                .prepare(
                    "INSERT INTO archive (position, id_hash, time, envelope, archived_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(sql)?;
            let mut rows = read.query([]).map_err(sql)?;
            while let Some(r) = rows.next().map_err(sql)? {
                let id: String = r.get(1).map_err(sql)?;
                write
                    .execute(params![
                        r.get::<_, i64>(0).map_err(sql)?,
                        id_hash(&id),
                        r.get::<_, String>(2).map_err(sql)?,
                        r.get::<_, String>(3).map_err(sql)?,
                        r.get::<_, String>(4).map_err(sql)?,
                    ])
                    .map_err(sql)?;
            }
        }
        tx.execute_batch(
            "INSERT OR IGNORE INTO ledgers (name)
               SELECT DISTINCT target FROM deliveries_v0 ORDER BY target;
             INSERT OR IGNORE INTO deliveries (ledger, position)
               SELECT l.ledger, a.position
               FROM deliveries_v0 d
               JOIN ledgers l ON l.name = d.target
               JOIN archive_v0 a ON a.event_id = d.event_key;
             DROP TABLE deliveries_v0;
             DROP TABLE archive_v0;",
        )
        .map_err(sql)?;
    }
    tx.pragma_update(None, "user_version", ARCHIVE_SCHEMA_VERSION)
        .map_err(sql)?;
    tx.commit().map_err(sql)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn archives_once_lists_by_time_and_keeps_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::open(&dir.path().join("events.db")).unwrap();
        let e1 = json!({"id": "1", "time": "2024-01-01T00:00:00Z"});
        let e2 = json!({"id": "2", "time": "2024-01-02T00:00:00Z"});
        a.insert(&[&e1, &e2]).unwrap();
        a.insert(&[&e1]).unwrap();
        assert_eq!(a.list(None, 0, 10).unwrap().len(), 2, "archived once");
        let since: DateTime<Utc> = "2024-01-01T12:00:00Z".parse().unwrap();
        let later = a.list(Some(&since), 0, 10).unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].envelope["id"], "2");
        let first = a.position_of("1").unwrap().unwrap();
        assert_eq!(a.list(None, first, 10).unwrap()[0].envelope["id"], "2");
        assert_eq!(a.position_of("nope").unwrap(), None);

        let keys = vec!["1".to_owned(), "2".to_owned()];
        assert_eq!(a.delivered("t", &keys).unwrap(), vec![false, false]);
        a.record_delivered("t", &keys[..1]).unwrap();
        assert_eq!(a.delivered("t", &keys).unwrap(), vec![true, false]);
        assert_eq!(a.delivered("other", &keys).unwrap(), vec![false, false]);
    }

    #[test]
    fn insert_new_tells_which_envelopes_were_archived_by_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::open(&dir.path().join("events.db")).unwrap();
        let e1 = json!({"id": "1", "time": "2024-01-01T00:00:00Z"});
        let e2 = json!({"id": "2", "time": "2024-01-02T00:00:00Z"});
        assert_eq!(a.insert_new(&[&e1]).unwrap(), vec![true]);
        // Archived before; new; the same id twice in one call: only its first is new.
        assert_eq!(
            a.insert_new(&[&e1, &e2, &e2]).unwrap(),
            vec![false, true, false]
        );
        assert_eq!(a.list(None, 0, 10).unwrap().len(), 2);
    }

    #[test]
    fn the_archive_connection_has_its_larger_cache_and_checkpoint_interval() {
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::open(&dir.path().join("events.db")).unwrap();
        let cache: i64 = a
            .lock()
            .unwrap()
            .pragma_query_value(None, "cache_size", |r| r.get(0))
            .unwrap();
        assert_eq!(cache, -ARCHIVE_CACHE_KIB);
        let checkpoint: i64 = a
            .lock()
            .unwrap()
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(checkpoint, ARCHIVE_CHECKPOINT_PAGES);
    }

    #[test]
    fn an_unusable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let e = Archive::open(&file.join("events.db")).unwrap_err();
        assert!(e.path.contains("plain"), "{e}");
    }

    /// Schema 0 as the previous build wrote it.
    const SCHEMA_0: &str = "
        CREATE TABLE archive (
            position    INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id    TEXT NOT NULL UNIQUE,
            time        TEXT NOT NULL,
            envelope    TEXT NOT NULL,
            archived_at TEXT NOT NULL
        );
        CREATE INDEX archive_time ON archive(time, position);
        CREATE TABLE deliveries (
            target       TEXT NOT NULL,
            event_key    TEXT NOT NULL,
            delivered_at TEXT NOT NULL,
            PRIMARY KEY (target, event_key)
        ) WITHOUT ROWID;";

    #[test]
    fn a_schema_0_file_keeps_its_positions_and_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_0).unwrap();
            // Positions with a gap, as AUTOINCREMENT may leave.
            for (pos, id, time) in [
                (3, "e1", "2024-01-01T00:00:00Z"),
                (7, "e2", "2024-01-02T00:00:00Z"),
                (8, "e3", "2024-01-03T00:00:00Z"),
            ] {
                let envelope = json!({"id": id, "time": time}).to_string();
                conn.execute(
                    "INSERT INTO archive VALUES (?1, ?2, ?3, ?4, '2024-02-01T00:00:00Z')",
                    params![pos, id, time, envelope],
                )
                .unwrap();
            }
            conn.execute_batch(
                "INSERT INTO deliveries VALUES ('all/ndjson:a', 'e1', 'x'), ('all/ndjson:a', 'e2', 'x'),
                   ('hook/webhook:h', 'e2', 'x');",
            )
            .unwrap();
        }
        let a = Archive::open(&path).unwrap();
        let version: i64 = a
            .lock()
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, ARCHIVE_SCHEMA_VERSION);
        let listed: Vec<(i64, Value)> = a
            .list(None, 0, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.position, e.envelope["id"].clone()))
            .collect();
        assert_eq!(
            listed,
            vec![(3, json!("e1")), (7, json!("e2")), (8, json!("e3"))]
        );
        assert_eq!(a.position_of("e2").unwrap(), Some(7));
        let keys: Vec<String> = ["e1", "e2", "e3"].map(String::from).to_vec();
        assert_eq!(
            a.delivered("all/ndjson:a", &keys).unwrap(),
            vec![true, true, false]
        );
        assert_eq!(
            a.delivered("hook/webhook:h", &keys).unwrap(),
            vec![false, true, false]
        );
        assert_eq!(
            a.delivered_at("hook/webhook:h", &[3, 7, 8]).unwrap(),
            vec![false, true, false]
        );
        // A re-published event is found by id; a new one goes after every old position.
        let e2 = json!({"id": "e2", "time": "2024-01-02T00:00:00Z"});
        let e4 = json!({"id": "e4", "time": "2024-01-04T00:00:00Z"});
        assert_eq!(
            a.archive(&[&e2, &e4]).unwrap(),
            vec![
                Archived {
                    position: 7,
                    fresh: false
                },
                Archived {
                    position: 9,
                    fresh: true
                }
            ]
        );
        drop(a);
        // Opening again migrates nothing and keeps everything.
        let a = Archive::open(&path).unwrap();
        assert_eq!(a.list(None, 0, 10).unwrap().len(), 4);
        assert_eq!(
            a.delivered("all/ndjson:a", &keys).unwrap(),
            vec![true, true, false]
        );
    }

    #[test]
    fn a_newer_archive_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        drop(Archive::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", ARCHIVE_SCHEMA_VERSION + 1)
            .unwrap();
        let e = Archive::open(&path).unwrap_err();
        assert!(e.message.contains("schema version"), "{e}");
    }

    #[test]
    fn ids_whose_hashes_collide_are_told_apart_by_the_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::open(&dir.path().join("events.db")).unwrap();
        // Another event archived under the hash of "one", as a collision would leave it.
        a.lock()
            .unwrap()
            .execute(
                "INSERT INTO archive (id_hash, time, envelope, archived_at) VALUES (?1, 't', ?2, 't')",
                params![id_hash("one"), json!({"id": "two"}).to_string()],
            )
            .unwrap();
        assert_eq!(
            a.position_of("one").unwrap(),
            None,
            "not taken for the other"
        );
        let e1 = json!({"id": "one", "time": "2024-01-01T00:00:00Z"});
        assert_eq!(
            a.insert_new(&[&e1]).unwrap(),
            vec![true],
            "archived, not deduped"
        );
        assert_eq!(a.position_of("one").unwrap(), Some(2));
        let e3 = json!({"id": "three", "time": "2024-01-01T00:00:00Z"});
        assert_eq!(a.insert_new(&[&e1, &e3]).unwrap(), vec![false, true]);
        assert!(id_hash("one") >= 0 && id_hash("one") < 1 << 47);
        assert_ne!(id_hash("one"), id_hash("two"));
    }

    #[test]
    fn deliveries_are_keyed_by_position_and_an_unarchived_event_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Archive::open(&dir.path().join("events.db")).unwrap();
        let e1 = json!({"id": "1", "time": "2024-01-01T00:00:00Z"});
        let e2 = json!({"id": "2", "time": "2024-01-02T00:00:00Z"});
        let archived = a.archive(&[&e1, &e2]).unwrap();
        let positions: Vec<i64> = archived.iter().map(|x| x.position).collect();
        a.record_positions(&[("t", &positions[1..]), ("u", &[])])
            .unwrap();
        assert_eq!(a.delivered_at("t", &positions).unwrap(), vec![false, true]);
        assert_eq!(a.delivered_at("u", &positions).unwrap(), vec![false, false]);
        assert_eq!(a.delivered("t", &["2".to_owned()]).unwrap(), vec![true]);
        let e = a.record_delivered("t", &["nope".to_owned()]).unwrap_err();
        assert!(
            e.message.contains("nope") && e.message.contains("not archived"),
            "{e}"
        );
        // The ledger is two integers per entry, in position order.
        let sql: String = a
            .lock()
            .unwrap()
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'deliveries'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.contains("PRIMARY KEY (ledger, position)"), "{sql}");
    }
}
