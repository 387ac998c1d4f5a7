//! The local bus's own database: an archive of every event it accepted (for `events list` and
//! `events replay`, as an EventBridge archive) and a ledger of which target received which
//! event, so an event redelivered after a partial failure reaches each target once.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS archive (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    time        TEXT NOT NULL,
    envelope    TEXT NOT NULL,
    archived_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS archive_time ON archive(time, position);
CREATE TABLE IF NOT EXISTS deliveries (
    target       TEXT NOT NULL,
    event_key    TEXT NOT NULL,
    delivered_at TEXT NOT NULL,
    PRIMARY KEY (target, event_key)
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

impl Archive {
    /// Opens (or creates) the archive database.
    pub fn open(path: &Path) -> Result<Archive, ArchiveError> {
        let name = path.display().to_string();
        let fail = |e: &dyn std::fmt::Display| ArchiveError {
            path: name.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        // WAL with NORMAL sync: a crash may lose the last archived rows, never corrupt; the
        // outbox, not the archive, is what guarantees delivery.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| fail(&e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| fail(&e))?;
        // Event ids and delivery keys are random (v5 UUIDs): every insert lands on a random
        // page of `event_id`'s index and of `deliveries`. With SQLite's default 2 MiB cache
        // those pages are read back from the file on nearly every insert once the archive
        // outgrows it, and emit slowed with the archive's size (a bulk load's emit grew 4x for
        // 3x the events). The cache is filled only as pages are used, up to this bound.
        conn.pragma_update(None, "cache_size", -ARCHIVE_CACHE_KIB)
            .map_err(|e| fail(&e))?;
        // A page of 1,000 events dirties about as many random pages of each index, more than
        // SQLite's default checkpoint interval (1,000 pages): a checkpoint (page writes and an
        // fsync) ran after nearly every commit. Checkpointing less often writes a page dirtied
        // by several commits once. The WAL file on disk grows to this size, memory does not.
        conn.pragma_update(None, "wal_autocheckpoint", ARCHIVE_CHECKPOINT_PAGES)
            .map_err(|e| fail(&e))?;
        conn.execute_batch(SCHEMA).map_err(|e| fail(&e))?;
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
        self.insert_new(envelopes).map(|_| ())
    }

    /// [`Self::insert`], telling for each envelope whether it was archived now (`false`: an
    /// event with its id was archived before). Nothing is ever removed from the archive, and
    /// an event is archived before it is delivered, so an event archived now has been
    /// delivered to no target: its delivery ledger need not be read.
    pub fn insert_new(&self, envelopes: &[&Value]) -> Result<Vec<bool>, ArchiveError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        let mut fresh = Vec::with_capacity(envelopes.len());
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO archive (event_id, time, envelope, archived_at)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| self.error(e))?;
            let now = time_key(&Utc::now());
            for e in envelopes {
                let id = e.get("id").and_then(Value::as_str).unwrap_or_default();
                let time = e.get("time").and_then(Value::as_str).unwrap_or_default();
                let inserted = stmt
                    .execute(params![id, time, e.to_string(), now])
                    .map_err(|e| self.error(e))?;
                fresh.push(inserted > 0);
            }
        }
        tx.commit().map_err(|e| self.error(e))?;
        Ok(fresh)
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
        conn.query_row(
            "SELECT position FROM archive WHERE event_id = ?1",
            [event_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| self.error(e))
    }

    /// Which of `keys` the target already received.
    pub fn delivered(&self, target: &str, keys: &[String]) -> Result<Vec<bool>, ArchiveError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached("SELECT 1 FROM deliveries WHERE target = ?1 AND event_key = ?2")
            .map_err(|e| self.error(e))?;
        keys.iter()
            .map(|k| stmt.exists(params![target, k]).map_err(|e| self.error(e)))
            .collect()
    }

    /// Records that the target received these deliveries.
    pub fn record_delivered(&self, target: &str, keys: &[String]) -> Result<(), ArchiveError> {
        self.record_deliveries(&[(target, keys)])
    }

    /// Records deliveries to several targets in one transaction.
    pub fn record_deliveries(&self, batches: &[(&str, &[String])]) -> Result<(), ArchiveError> {
        if batches.iter().all(|(_, keys)| keys.is_empty()) {
            return Ok(());
        }
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO deliveries (target, event_key, delivered_at)
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| self.error(e))?;
            let now = time_key(&Utc::now());
            for (target, keys) in batches {
                for k in *keys {
                    stmt.execute(params![target, k, now])
                        .map_err(|e| self.error(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.error(e))
    }
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
}
