//! The change-event ledger of a store without a change stream (the [`super::rest`] store: a
//! FHIR server such as HealthLake keeps no stream the pipeline can read in commit order).
//!
//! # Why intents, and not only outcomes
//!
//! Recording events from what `apply` reports loses an event when the process dies after the
//! server committed and before the ledger write: the retry finds the content unchanged, reports
//! `Unchanged`, and nothing ever says the version was made. So the write is bracketed:
//!
//! 1. **intent** — before the transaction is sent, one [`Intent`] per resource write:
//!    the target, the version the write follows (`ifMatch`; `None` for `ifNoneMatch: *`), and
//!    the lineage. Recorded durably ([`Ledger::record`]).
//! 2. **settle** — after the server answered, the events of the versions made, and the
//!    intents closed, in one step ([`Ledger::settle`]; one SQLite transaction; on DynamoDB the
//!    events first, each put only if absent, then the intents deleted, so a crash in between
//!    leaves intents that settle again to the same events, which are not put twice).
//! 3. **recovery** — an intent still open (a crash between 1 and 2, or a timeout with no
//!    answer) is resolved against the server: the write was conditional on `prior`, so if the
//!    server holds a version right after `prior`, it is the one that write made (or the one a
//!    concurrent writer made instead, whose event is the same, by its stable id), and its
//!    event is settled; if the current version is still `prior` once no request of the intent
//!    can still be in flight ([`crate::store::rest::RestOptions::settle_after`]), nothing was
//!    committed and the intent is closed without an event.
//!
//! Events are keyed by their stable event id (`Type/id/version`), so settling one twice keeps
//! one: nothing is lost and nothing repeats. Ledgers: [`SqliteLedger`] (its own database file
//! and schema version, independent of the store's migrations; its outbox is relayed by
//! [`crate::events::relay_outbox`] like the SQLite store's) and [`dynamodb::DynamoLedger`] (a
//! table whose stream drives `emit` on AWS, as the DynamoDB store's does).

pub mod dynamodb;

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::sqlite::Delivered;
use super::{Outbox, OutboxEntry, StoreError};
use crate::model::{ChangeEvent, Lineage, ResourceRef};

/// A resource write about to be sent to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Intent {
    pub target: ResourceRef,
    /// The version the write is conditional on (`ifMatch`); `None`: `ifNoneMatch: *`.
    pub prior: Option<String>,
    /// The source change of the write.
    pub lineage: Lineage,
    /// When it was recorded (recovery waits until no request of it can be in flight).
    pub recorded_at: DateTime<Utc>,
}

/// An intent not settled yet, with the ledger's id for it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIntent {
    pub id: String,
    pub intent: Intent,
}

/// A ledger of intents and events; its [`Outbox`] side holds the settled events not yet
/// delivered (empty for a ledger whose table stream delivers them).
#[async_trait]
pub trait Ledger: Outbox {
    /// Records intents durably before their writes are sent; their ids, in order.
    async fn record(&self, intents: &[Intent]) -> Result<Vec<String>, StoreError>;

    /// Adds the events (each at most once, by event id) and closes the intents `ids`.
    async fn settle(&self, ids: &[String], events: &[ChangeEvent]) -> Result<(), StoreError>;

    /// Every open intent, oldest first.
    async fn open_intents(&self) -> Result<Vec<OpenIntent>, StoreError>;
}

/// The schema version of the SQLite ledger (its own `user_version`, not the store's).
pub const LEDGER_SCHEMA_VERSION: i64 = 2;

/// How long a delivered event stays in a ledger: a recovery that settles the same version
/// again finds it there and does not deliver it twice. It only has to outlast a recovery's
/// re-settle (minutes) and, on AWS, the table stream's 24 hours.
pub const EVENT_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

const LEDGER_SCHEMA: &str = "
CREATE TABLE intents (
    id INTEGER PRIMARY KEY,
    intent TEXT NOT NULL
);
CREATE TABLE outbox (
    position INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX outbox_undelivered ON outbox (position) WHERE delivered_at IS NULL;
";

/// Schema 2: delivered events are pruned after [`EVENT_RETENTION`], found by delivery time.
const LEDGER_MIGRATION_2: &str = "
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
";

/// The ledger in a SQLite file of its own (WAL, synchronous NORMAL: durable across process
/// crashes, which is the failure it exists for).
#[derive(Debug)]
pub struct SqliteLedger {
    conn: Mutex<Connection>,
    location: String,
}

impl SqliteLedger {
    /// Opens (or creates) the ledger file.
    pub fn open(path: &Path) -> Result<SqliteLedger, StoreError> {
        let (conn, location) = crate::store::sqlite::open_wal_file(path, "ledger")?;
        Self::setup(conn, location)
    }

    /// A private in-memory ledger (tests).
    pub fn open_in_memory() -> Result<SqliteLedger, StoreError> {
        let conn = Connection::open_in_memory().map_err(|e| sql(":memory:", e))?;
        Self::setup(conn, ":memory:".to_owned())
    }

    fn setup(mut conn: Connection, location: String) -> Result<SqliteLedger, StoreError> {
        let err = |e| sql(&location, e);
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        match version {
            0 | 1 => {
                if version == 0 {
                    tx.execute_batch(LEDGER_SCHEMA).map_err(err)?;
                }
                tx.execute_batch(LEDGER_MIGRATION_2).map_err(err)?;
                tx.pragma_update(None, "user_version", LEDGER_SCHEMA_VERSION)
                    .map_err(err)?;
            }
            LEDGER_SCHEMA_VERSION => {}
            other => {
                return Err(StoreError::Corrupt(format!(
                    "{location}: ledger schema version {other}, this build knows {LEDGER_SCHEMA_VERSION}"
                )));
            }
        }
        tx.commit().map_err(err)?;
        Ok(SqliteLedger {
            conn: Mutex::new(conn),
            location,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| {
            StoreError::Unavailable(format!("{}: ledger lock poisoned", self.location))
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |e| sql(&self.location, e)
    }

    /// Events settled and not delivered yet, and intents open: for `fhir-unify` status lines
    /// and tests.
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        let conn = self.lock()?;
        let count = |q: &str| {
            conn.query_row(q, [], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(self.err())
        };
        Ok((
            count("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")?,
            count("SELECT count(*) FROM intents")?,
        ))
    }
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn record(&self, intents: &[Intent]) -> Result<Vec<String>, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let mut ids = Vec::with_capacity(intents.len());
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO intents (intent) VALUES (?1)")
                .map_err(self.err())?;
            for intent in intents {
                let text = serde_json::to_string(intent).map_err(|e| StoreError::Invalid {
                    target: intent.target.to_string(),
                    reason: format!("intent cannot be recorded: {e}"),
                })?;
                stmt.execute([text]).map_err(self.err())?;
                ids.push(tx.last_insert_rowid().to_string());
            }
        }
        tx.commit().map_err(self.err())?;
        Ok(ids)
    }

    async fn settle(&self, ids: &[String], events: &[ChangeEvent]) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR IGNORE INTO outbox (event_id, event) VALUES (?1, ?2)")
                .map_err(self.err())?;
            for event in events {
                let text = serde_json::to_string(event).map_err(|e| {
                    StoreError::Corrupt(format!("event {}: {e}", event.detail.event_id))
                })?;
                put.execute(params![event.detail.event_id, text])
                    .map_err(self.err())?;
            }
            let mut close = tx
                .prepare_cached("DELETE FROM intents WHERE id = ?1")
                .map_err(self.err())?;
            for id in ids {
                let id: i64 = id
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("ledger intent id {id:?}")))?;
                close.execute([id]).map_err(self.err())?;
            }
        }
        tx.commit().map_err(self.err())
    }

    async fn open_intents(&self) -> Result<Vec<OpenIntent>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached("SELECT id, intent FROM intents ORDER BY id")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.err())?;
        rows.map(|row| {
            let (id, text) = row.map_err(self.err())?;
            let intent = serde_json::from_str(&text).map_err(|e| {
                StoreError::Corrupt(format!("{}: ledger intent {id}: {e}", self.location))
            })?;
            Ok(OpenIntent {
                id: id.to_string(),
                intent,
            })
        })
        .collect()
    }
}

#[async_trait]
impl Outbox for SqliteLedger {
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        crate::store::sqlite::outbox_pending(&*self.lock()?, limit, &self.location)
    }

    async fn mark_delivered(&self, positions: &[i64]) -> Result<(), StoreError> {
        crate::store::sqlite::outbox_mark_delivered(
            &mut *self.lock()?,
            positions,
            Utc::now(),
            Delivered::KeepFor(retention()),
            &self.location,
        )
    }
}

impl SqliteLedger {
    /// Whether an event id was ever settled (delivered or not).
    pub fn has_event(&self, event_id: &str) -> Result<bool, StoreError> {
        let conn = self.lock()?;
        conn.query_row(
            "SELECT 1 FROM outbox WHERE event_id = ?1",
            [event_id],
            |_| Ok(()),
        )
        .optional()
        .map(|r| r.is_some())
        .map_err(self.err())
    }
}

/// [`EVENT_RETENTION`] as chrono counts time.
fn retention() -> chrono::Duration {
    chrono::Duration::from_std(EVENT_RETENTION).unwrap_or(chrono::Duration::MAX)
}

/// An error of the ledger file, classified as the store's are (busy, locked, I/O: retryable).
fn sql(location: &str, e: rusqlite::Error) -> StoreError {
    crate::store::sqlite::with_context(&format!("ledger {location}"), e)
}

#[cfg(test)]
mod tests;
