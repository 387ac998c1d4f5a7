//! The local stand-in for SQS: named queues kept in SQLite. Quarantined records land here,
//! sent by the state machine's `sqs:sendMessage` tasks or by the local stream poller's
//! on-failure destination, and stay until someone reads and deletes them.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Errors of the local queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("queue lock poisoned")]
    Poisoned,
}

/// One message in a queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedMessage {
    pub message_id: String,
    pub queue: String,
    pub sent_at: DateTime<Utc>,
    /// The body as sent (for quarantine: a JSON `Rejection`).
    pub body: String,
}

/// SQLite-backed queues.
#[derive(Debug)]
pub struct LocalQueue {
    path: String,
    conn: Mutex<Connection>,
}

impl LocalQueue {
    /// Opens or creates the queue database.
    pub fn open(path: &Path) -> Result<LocalQueue, QueueError> {
        let label = path.display().to_string();
        let err = |source| QueueError::Sqlite {
            path: label.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            // A failure here resurfaces as the open error below, with the path.
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS messages (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 message_id TEXT NOT NULL UNIQUE,
                 queue TEXT NOT NULL,
                 sent_at TEXT NOT NULL,
                 body TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS messages_queue ON messages(queue, seq);",
        )
        .map_err(err)?;
        Ok(LocalQueue {
            path: label,
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, QueueError> {
        let conn = self.conn.lock().map_err(|_| QueueError::Poisoned)?;
        f(&conn).map_err(|source| QueueError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Appends a message; returns its id.
    pub fn send(&self, queue: &str, body: &str) -> Result<String, QueueError> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.with(|c| {
            c.execute(
                "INSERT INTO messages (message_id, queue, sent_at, body) VALUES (?1, ?2, ?3, ?4)",
                params![id, queue, now, body],
            )
        })?;
        Ok(id)
    }

    /// Every message of a queue, oldest first.
    pub fn list(&self, queue: &str) -> Result<Vec<QueuedMessage>, QueueError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT message_id, queue, sent_at, body FROM messages WHERE queue = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![queue], |r| {
                let sent_at: String = r.get(2)?;
                Ok(QueuedMessage {
                    message_id: r.get(0)?,
                    queue: r.get(1)?,
                    sent_at: DateTime::parse_from_rfc3339(&sent_at)
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or_default(),
                    body: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// How many messages a queue holds.
    pub fn count(&self, queue: &str) -> Result<usize, QueueError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM messages WHERE queue = ?1",
                params![queue],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| usize::try_from(n).unwrap_or(0))
    }

    /// Removes a message (after it was replayed or dealt with); false if it was not there.
    pub fn delete(&self, message_id: &str) -> Result<bool, QueueError> {
        self.with(|c| {
            c.query_row(
                "DELETE FROM messages WHERE message_id = ?1 RETURNING seq",
                params![message_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })
        .map(|r| r.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_persist_in_order_per_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let q = LocalQueue::open(&path).unwrap();
        let a = q.send("quarantine", "{\"n\":1}").unwrap();
        q.send("other", "x").unwrap();
        q.send("quarantine", "{\"n\":2}").unwrap();
        drop(q);
        let q = LocalQueue::open(&path).unwrap();
        let msgs = q.list("quarantine").unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].message_id, a);
        assert_eq!(msgs[1].body, "{\"n\":2}");
        assert_eq!(q.count("other").unwrap(), 1);
        assert!(q.delete(&a).unwrap());
        assert!(!q.delete(&a).unwrap());
        assert_eq!(q.count("quarantine").unwrap(), 1);
    }
}
