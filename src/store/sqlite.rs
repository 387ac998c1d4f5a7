//! SQLite FHIR store: the embedded default, one file in WAL mode.
//!
//! Tables:
//! - `resources`: the current version of each resource (possibly a delete), for reads and
//!   search; its content is the `history` row of its `version_id` (see [`MIGRATION_8`]);
//! - `history`: every version, deletes included, with the lineage of the change that made it;
//! - `sequences`: the highest source sequence applied per resource *and* source entity
//!   (sequences of different sources are not comparable), as canonical decimal text compared
//!   in Rust with [`Sequence`]'s numeric order;
//! - `outbox`: one change event per committed version, written in the same transaction, at
//!   increasing positions (see [`MIGRATION_5`]), deleted once delivered (see [`MIGRATION_7`]);
//! - `search_index`: the search parameter values of each live resource, rewritten in the same
//!   transaction as the resource (see [`search`]);
//! - `dataset_versions`, `dataset_chunks`, `dataset_resources`, `parameters`: versioned
//!   dataset loads (see [`dataset`]).
//!
//! The schema version is `PRAGMA user_version`; [`SqliteStore::open`] applies the missing
//! migrations and refuses a file written by a newer build.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;

use super::search::{HistoryPage, HistoryQuery, SearchPage, SearchQuery};
use super::{
    FhirStore, Outbox, OutboxEntry, SearchStore, StoreError, StoredVersion, canonical_content,
    canonical_owned, change_event, check_content, check_ref, format_time, invalid, parse_time,
    parse_version_id, stored_canonical_text, stored_text,
};
use crate::model::{
    ChangeEvent, ChangeKind, Lineage, PublishAction, PublishOutcome, ResourceChange, ResourceOp,
    ResourceRef, Sequence,
};

/// How long a statement waits for another connection (another process on the same file)
/// to release its lock before the call fails with [`StoreError::Unavailable`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema version this build writes; `MIGRATIONS[n]` moves a file from version `n` to `n+1`.
const SCHEMA_VERSION: i64 = 9;

const MIGRATIONS: &[&str] = &[
    MIGRATION_1,
    MIGRATION_2,
    dataset::MIGRATION_3,
    MIGRATION_4,
    MIGRATION_5,
    MIGRATION_6,
    MIGRATION_7,
    MIGRATION_8,
    MIGRATION_9,
];

const MIGRATION_1: &str = "
CREATE TABLE resources (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  TEXT NOT NULL,
    deleted       INTEGER NOT NULL,
    content       TEXT,
    PRIMARY KEY (resource_type, id)
) WITHOUT ROWID;

CREATE TABLE history (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  TEXT NOT NULL,
    deleted       INTEGER NOT NULL,
    content       TEXT,
    lineage       TEXT NOT NULL,
    PRIMARY KEY (resource_type, id, version_id)
) WITHOUT ROWID;

CREATE TABLE sequences (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    source        TEXT NOT NULL,
    entity        TEXT NOT NULL,
    sequence      TEXT NOT NULL,
    PRIMARY KEY (resource_type, id, source, entity)
) WITHOUT ROWID;

CREATE TABLE outbox (
    position     INTEGER PRIMARY KEY AUTOINCREMENT,
    event        TEXT NOT NULL,
    delivered_at TEXT
);

CREATE INDEX outbox_undelivered ON outbox (position) WHERE delivered_at IS NULL;
";

/// Search indexes for the partner gateway. Existing resources are indexed by [`migrate`].
const MIGRATION_2: &str = "
CREATE TABLE search_index (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    system        TEXT,
    value         TEXT,
    raw           TEXT,
    low           TEXT,
    high          TEXT
);

CREATE INDEX search_index_value ON search_index (resource_type, param, value, id);
CREATE INDEX search_index_date ON search_index (resource_type, param, low, high);
CREATE INDEX search_index_resource ON search_index (resource_type, id);
CREATE INDEX resources_updated ON resources (resource_type, last_updated);
CREATE INDEX history_updated ON history (resource_type, last_updated, id, version_id);
";

/// The search index's value and date indexes hold only the rows they answer: a date row has
/// no `value` and the other rows no `low`, so schema 3 kept about eight `NULL` entries in the
/// date index per Patient (and one in the value index). A profile of the upsert bench put
/// `search_index` inserts at about half the time of `apply`; these entries are about a third
/// of them. Every search condition names its index's `IS NOT NULL` term (see [`search`]), so
/// the planner can use the partial indexes.
const MIGRATION_4: &str = "
DROP INDEX search_index_value;
DROP INDEX search_index_date;
CREATE INDEX search_index_value ON search_index (resource_type, param, value, id)
    WHERE value IS NOT NULL;
CREATE INDEX search_index_date ON search_index (resource_type, param, low, high)
    WHERE low IS NOT NULL;
";

/// The outbox without `AUTOINCREMENT`, which wrote the `sqlite_sequence` row once per event.
/// A plain `INTEGER PRIMARY KEY` gives each new row one more than the highest position in the
/// table, so positions keep increasing as long as the newest row is never deleted: nothing
/// deletes outbox rows, and whatever prunes delivered rows one day must keep the newest one
/// (a test checks that pruning so keeps positions increasing). The rows keep their positions.
/// The last `AUTOINCREMENT` value can only be above the highest position if the newest rows
/// were deleted by hand; a delivered placeholder row at that value then keeps the next
/// position above every position ever handed out (the relay reads undelivered rows only).
const MIGRATION_5: &str = "
CREATE TABLE outbox_5 (
    position     INTEGER PRIMARY KEY,
    event        TEXT NOT NULL,
    delivered_at TEXT
);
INSERT INTO outbox_5 (position, event, delivered_at)
    SELECT position, event, delivered_at FROM outbox;
INSERT INTO outbox_5 (position, event, delivered_at)
    SELECT seq, '{}', strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM sqlite_sequence
    WHERE name = 'outbox' AND seq > (SELECT coalesce(max(position), 0) FROM outbox);
DROP TABLE outbox;
ALTER TABLE outbox_5 RENAME TO outbox;
CREATE INDEX outbox_undelivered ON outbox (position) WHERE delivered_at IS NULL;
";

/// No index of search-index rows by resource: it held one entry per row (about nine per
/// Patient) only to delete a resource's rows when it changes; [`search`]'s `unindex` deletes
/// them through the value and date indexes instead, by the entries of the version replaced.
const MIGRATION_6: &str = "
DROP INDEX IF EXISTS search_index_resource;
";

/// Delivered outbox rows are deleted ([`outbox_mark_delivered`]): the outbox held every event
/// ever committed (58 MB after a 100,000-record load), a second copy of the bus's archive.
/// Pruning finds delivered rows through this index (the newest row stays, see [`MIGRATION_5`]);
/// the rows an older build left delivered go now.
const MIGRATION_7: &str = "
CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox (position) WHERE delivered_at IS NOT NULL;
DELETE FROM outbox WHERE delivered_at IS NOT NULL
    AND position < (SELECT max(position) FROM outbox);
";

/// `resources` keeps no content: it points at its `history` row by `version_id` (the key of
/// `history`), where the current version's text already is. The copy was a sixth of the file
/// (65 of 380 MiB after a 100,000-record load) and written twice per version. The column
/// stays, `NULL`, so that readers of either schema take the same rows; a row whose `history`
/// row is missing (a file written before `history` existed) keeps its content and readers
/// fall back to it.
const MIGRATION_8: &str = "
UPDATE resources SET content = NULL
WHERE content IS NOT NULL AND EXISTS (
    SELECT 1 FROM history h
    WHERE h.resource_type = resources.resource_type AND h.id = resources.id
      AND h.version_id = resources.version_id AND h.content IS NOT NULL);
";

/// A version a dataset pointer move writes keeps no copy of its content or lineage:
/// `history.content` is `NULL`, `history.lineage` JSON `null` ([`HISTORY_LINEAGE`]), and (`dataset`, `dataset_version`, `resource_type`, `id`) names the staged row it was
/// published from, which holds the same canonical text (see [`dataset`]). Readers rebuild the
/// stored text with [`HISTORY_CONTENT`] (`meta.versionId` and `meta.lastUpdated` set by
/// `json_set`, as the set-based first publish always wrote it). The copy was a fifth of the
/// file after a 100,000-record load (78 of 380 MiB). gc of a dataset version writes the text
/// back into the rows that name it before it deletes the staged rows. [`migrate`] adds the
/// two columns (`ALTER TABLE` has no `IF NOT EXISTS`: see [`add_staged_columns`]) and creates
/// the staging table in every file from this version on, since every read names it.
const MIGRATION_9: &str = "";

/// The columns of [`MIGRATION_9`], added unless the file has them already.
fn add_staged_columns(tx: &Connection) -> rusqlite::Result<()> {
    for (column, kind) in [("dataset", "TEXT"), ("dataset_version", "INTEGER")] {
        let present: bool = tx.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('history') WHERE name = ?1",
            [column],
            |r| r.get(0),
        )?;
        if !present {
            tx.execute_batch(&format!("ALTER TABLE history ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// The staged row a `history` row `h` was published from (none for a row with content).
pub(crate) const HISTORY_STAGED_JOIN: &str = "LEFT JOIN dataset_staged hs
    ON hs.dataset = h.dataset AND hs.version = h.dataset_version
   AND hs.resource_type = h.resource_type AND hs.id = h.id";

/// The stored text of `history` row `h` joined by [`HISTORY_STAGED_JOIN`] (see [`MIGRATION_9`]).
pub(crate) const HISTORY_CONTENT: &str = "coalesce(h.content, json_set(hs.content,
    '$.meta.versionId', CAST(h.version_id AS TEXT), '$.meta.lastUpdated', h.last_updated))";

/// The lineage of `history` row `h` joined by [`HISTORY_STAGED_JOIN`]: a row that names a
/// staged row keeps JSON `null` in its own (`NOT NULL`) column and reads the staged row's,
/// which is the same text (see [`MIGRATION_9`]).
pub(crate) const HISTORY_LINEAGE: &str =
    "CASE WHEN h.dataset IS NULL THEN h.lineage ELSE hs.lineage END";

/// What a `history` row that names a staged row keeps in its `lineage` column.
pub(crate) const LINEAGE_IN_STAGED: &str = "null";

/// The source of `lastUpdated` times; the store truncates them to milliseconds.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Sizes of a store, for the CLI and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreCounts {
    /// Resources whose current version is not a delete.
    pub resources_live: u64,
    /// All versions of all resources, deletes included.
    pub versions: u64,
    /// Outbox events not yet delivered.
    pub outbox_pending: u64,
}

/// The embedded FHIR store. One connection behind a mutex: every call is a few statements.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    clock: Clock,
    location: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates, with its parent directories) the store file at `path`, in WAL mode,
    /// and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let (conn, location) = open_wal_file(path, "store")?;
        Self::setup(conn, location)
    }

    /// A private in-memory store (for tests and dry runs).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(sql_err)?;
        Self::setup(conn, ":memory:".to_owned())
    }

    fn setup(mut conn: Connection, location: String) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| with_context(&location, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| with_context(&location, e))?;
        migrate(&mut conn, &location)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            clock: Arc::new(Utc::now),
            location,
        })
    }

    /// Sets this connection up for bulk loads: a page cache of `cache_mib` MiB (the default
    /// 2 MiB makes a pointer move of a large load spill and re-read the same index pages from
    /// the WAL over and over: system time) and a checkpoint every `checkpoint_mib` MiB of WAL
    /// rather than every 4 MiB (each checkpoint syncs the file). Both bound memory and disk
    /// by a constant, whatever the size of the load.
    pub fn tune_for_bulk(&self, cache_mib: u32, checkpoint_mib: u32) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.pragma_update(None, "cache_size", -(i64::from(cache_mib) * 1024))
            .map_err(|e| with_context(&self.location, e))?;
        // The page size is 4 KiB unless the file says otherwise.
        let page: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(|e| with_context(&self.location, e))?;
        let pages = i64::from(checkpoint_mib) * 1024 * 1024 / page.max(512);
        conn.pragma_update(None, "wal_autocheckpoint", pages)
            .map_err(|e| with_context(&self.location, e))?;
        // Temporary files stay files. With `MEMORY`, SQLite keeps a statement's journal (the
        // pages an `INSERT … SELECT` of a whole load touches, kept so that the statement alone
        // can be undone) in memory without bound: a heap profile of a first publish showed it
        // growing with the load (37 MB at 100,000 records, and the largest consumer at
        // 300,000). As files, a journal spills to disk after 64 KiB.
        conn.pragma_update(None, "temp_store", "FILE")
            .map_err(|e| with_context(&self.location, e))?;
        Ok(())
    }

    /// Replaces the clock that stamps `lastUpdated` (tests; a shared runtime clock).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Records that this machine started the `bulk-load` execution `name` (a `parameters`
    /// row, kept as Step Functions keeps execution names): `false` when it was started
    /// before, so a redelivered upload starts nothing new.
    pub fn claim_execution(&self, name: &str) -> Result<bool, StoreError> {
        let changed = self
            .lock()?
            .execute(
                "INSERT OR IGNORE INTO parameters (name, value, updated_at)
                 VALUES ('bulk-load-execution/' || ?1, 'started', ?2)",
                params![name, format_time(self.now())],
            )
            .map_err(|e| with_context(&self.location, e))?;
        Ok(changed == 1)
    }

    /// Gives back a name [`Self::claim_execution`] took for a load that could not run at all
    /// (as a `StartExecution` that failed leaves no execution), so a redelivery runs it.
    pub fn release_execution(&self, name: &str) -> Result<(), StoreError> {
        self.lock()?
            .execute(
                "DELETE FROM parameters WHERE name = 'bulk-load-execution/' || ?1",
                [name],
            )
            .map_err(|e| with_context(&self.location, e))?;
        Ok(())
    }

    /// Live resources, versions and undelivered events.
    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        let conn = self.lock()?;
        let count = |sql: &str| -> Result<u64, StoreError> {
            let n: i64 = conn.query_row(sql, [], |r| r.get(0)).map_err(sql_err)?;
            u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
        };
        Ok(StoreCounts {
            resources_live: count("SELECT count(*) FROM resources WHERE deleted = 0")?,
            versions: count("SELECT count(*) FROM history")?,
            outbox_pending: count("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")?,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        // A poisoned lock means a panic mid-call; SQLite rolled back the open transaction when
        // it was dropped, but refuse further work rather than guess.
        self.conn.lock().map_err(|_| {
            StoreError::Unavailable(format!("store {} is unusable after a panic", self.location))
        })
    }

    fn now(&self) -> DateTime<Utc> {
        // Stored and returned times must be equal, and the text form keeps milliseconds.
        (self.clock)().trunc_subsecs(3)
    }

    fn apply_sync(&self, changes: &[ResourceChange]) -> Result<Vec<PublishOutcome>, StoreError> {
        let now = self.now();
        let mut conn = self.lock()?;
        // IMMEDIATE takes the write lock up front, so a concurrent writer makes us wait
        // (busy timeout) instead of failing later on a lock upgrade.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let mut outcomes = Vec::with_capacity(changes.len());
        for change in changes {
            outcomes.push(apply_one(&tx, change, now)?);
        }
        tx.commit().map_err(sql_err)?;
        tracing::debug!(
            changes = changes.len(),
            committed = outcomes
                .iter()
                .filter(|o| ChangeKind::for_action(o.action).is_some())
                .count(),
            "applied resource changes"
        );
        Ok(outcomes)
    }

    fn read_sync(&self, target: &ResourceRef) -> Result<Option<StoredVersion>, StoreError> {
        if check_ref(target).is_err() {
            return Ok(None);
        }
        let conn = self.lock()?;
        // A version with its own text (the common case) is one plain lookup: joining the
        // staged rows in the same statement made every read by id ~25% slower.
        let row = conn
            .query_row(
                "SELECT h.version_id, h.last_updated, h.deleted, h.content, h.lineage,
                        h.dataset, h.dataset_version
                 FROM resources r JOIN history h
                   ON h.resource_type = r.resource_type AND h.id = r.id
                  AND h.version_id = r.version_id
                 WHERE r.resource_type = ?1 AND r.id = ?2",
                params![target.resource_type, target.id],
                raw_version_named,
            )
            .optional()
            .map_err(sql_err)?;
        row.map(|raw| stored_from(&conn, target, raw)).transpose()
    }

    fn vread_sync(
        &self,
        target: &ResourceRef,
        version_id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let Some(version) = parse_version_id(version_id) else {
            return Ok(None);
        };
        if check_ref(target).is_err() {
            return Ok(None);
        }
        let conn = self.lock()?;
        let row = conn
            .query_row(
                &format!("{VERSION_COLUMNS} WHERE h.resource_type = ?1 AND h.id = ?2 AND h.version_id = ?3"),
                params![target.resource_type, target.id, version],
                raw_version_named,
            )
            .optional()
            .map_err(sql_err)?;
        row.map(|raw| stored_from(&conn, target, raw)).transpose()
    }

    fn history_sync(&self, target: &ResourceRef) -> Result<Vec<StoredVersion>, StoreError> {
        if check_ref(target).is_err() {
            return Ok(Vec::new());
        }
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "{VERSION_COLUMNS} WHERE h.resource_type = ?1 AND h.id = ?2
                 ORDER BY h.version_id DESC"
            ))
            .map_err(sql_err)?;
        let raws = stmt
            .query_map(params![target.resource_type, target.id], raw_version_named)
            .map_err(sql_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err)?;
        raws.into_iter()
            .map(|raw| stored_from(&conn, target, raw))
            .collect()
    }

    fn pending_sync(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        outbox_pending(&*self.lock()?, limit, &self.location)
    }

    /// Up to `limit` undelivered events after outbox position `after`, oldest first: for a
    /// relay that marks what it delivered later than it reads on (see
    /// `bulk::local`'s emit), so that `pending` would still return those entries.
    pub fn pending_after(&self, after: i64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        outbox_pending_after(&*self.lock()?, after, limit, &self.location)
    }

    /// Marks outbox entries delivered, off the async worker (see [`off_worker`]): the
    /// connection may be busy with a long pointer move.
    pub fn mark_delivered_off_worker(&self, positions: &[i64]) -> Result<(), StoreError> {
        off_worker(|| self.mark_delivered_sync(positions))
    }

    fn mark_delivered_sync(&self, positions: &[i64]) -> Result<(), StoreError> {
        outbox_mark_delivered(
            &mut *self.lock()?,
            positions,
            self.now(),
            Delivered::Delete,
            &self.location,
        )
    }
}

#[async_trait]
impl FhirStore for SqliteStore {
    async fn apply(&self, changes: &[ResourceChange]) -> Result<Vec<PublishOutcome>, StoreError> {
        self.apply_sync(changes)
    }

    async fn read(&self, target: &ResourceRef) -> Result<Option<StoredVersion>, StoreError> {
        self.read_sync(target)
    }

    async fn vread(
        &self,
        target: &ResourceRef,
        version_id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        self.vread_sync(target, version_id)
    }

    async fn history(&self, target: &ResourceRef) -> Result<Vec<StoredVersion>, StoreError> {
        self.history_sync(target)
    }
}

#[async_trait]
impl SearchStore for SqliteStore {
    // A page and its `total` are separate statements: one read transaction makes them one
    // snapshot, so a commit in between (a dataset's pointer move) never shows half of it.
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let conn = self.lock()?;
        let tx = conn.unchecked_transaction().map_err(sql_err)?;
        let page = search::search(&tx, query)?;
        tx.finish().map_err(sql_err)?;
        Ok(page)
    }

    async fn history_page(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let conn = self.lock()?;
        let tx = conn.unchecked_transaction().map_err(sql_err)?;
        let page = search::history_page(&tx, query)?;
        tx.finish().map_err(sql_err)?;
        Ok(page)
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.pending_sync(limit)
    }

    async fn mark_delivered(&self, positions: &[i64]) -> Result<(), StoreError> {
        self.mark_delivered_sync(positions)
    }
}

/// Runs a store call that may hold (or wait for) the connection for seconds (a pointer move
/// of a large load) without holding up the async worker it was called on: on a multi-threaded
/// runtime the worker hands its other tasks to a new thread meanwhile, so loads running
/// beside it (mapping, validating, delivering events) go on. On a current-thread runtime
/// (tests) it simply runs.
pub(crate) fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Brings the schema to [`SCHEMA_VERSION`]; several processes may open the file at once, so
/// the version is read and moved inside one write transaction.
fn migrate(conn: &mut Connection, location: &str) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| with_context(location, e))?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| with_context(location, e))?;
    let Ok(from) = usize::try_from(version) else {
        return Err(StoreError::Corrupt(format!(
            "{location}: schema version {version} is invalid"
        )));
    };
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{location}: schema version {version} is newer than this build supports ({SCHEMA_VERSION})"
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    for sql in MIGRATIONS.iter().skip(from) {
        tx.execute_batch(sql)
            .map_err(|e| with_context(location, e))?;
    }
    // From schema 6 a new version deletes the rows of the one it replaces by the entries this
    // build computes for it: rows an older build computed otherwise would be left behind, so
    // an older file's index is rebuilt once. (A build that changes the entries must bump the
    // schema again.)
    if from < 9 {
        add_staged_columns(&tx).map_err(|e| with_context(location, e))?;
        dataset::ensure_layout(&tx).map_err(|e| StoreError::Corrupt(format!("{location}: {e}")))?;
    }
    if from < 6 {
        search::reindex_all(&tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| with_context(location, e))?;
    tx.commit().map_err(|e| with_context(location, e))?;
    tracing::info!(location = %location, from = version, to = SCHEMA_VERSION, "store schema migrated");
    Ok(())
}

/// The current row of a resource.
struct Current {
    version: i64,
    last_updated: DateTime<Utc>,
    deleted: bool,
    content: Option<String>,
}

fn apply_one(
    tx: &Connection,
    change: &ResourceChange,
    now: DateTime<Utc>,
) -> Result<PublishOutcome, StoreError> {
    apply_change(tx, change, now, true)
}

/// Applies one change; `check_order` false skips the source-sequence check and leaves the
/// marks alone (a dataset pointer move is authoritative: see [`dataset`]).
fn apply_change(
    tx: &Connection,
    change: &ResourceChange,
    now: DateTime<Utc>,
    check_order: bool,
) -> Result<PublishOutcome, StoreError> {
    let target = &change.target;
    check_ref(target)?;
    // Bad content is an error even when the change turns out to be stale. Checked, not
    // copied: the stored text and index rows are made from the caller's resource.
    let content = match &change.op {
        ResourceOp::Upsert { resource } => {
            check_content(target, resource)?;
            Some(NewContent::Checked(resource))
        }
        ResourceOp::Delete => None,
    };
    let lineage_text = serde_json::to_string(&change.lineage)
        .map_err(|e| invalid(target, format!("lineage cannot be stored: {e}")))?;
    apply_content(
        tx,
        target,
        content,
        &change.lineage,
        &lineage_text,
        now,
        check_order,
        None,
    )
}

/// The content of an upsert.
enum NewContent<'a> {
    /// The caller's resource, checked by [`check_content`] but not made canonical: its
    /// canonical form is built only to compare it with a live version.
    Checked(&'a Value),
    /// Canonical content (the output of [`canonical_content`], or a dataset's staged text).
    Canonical(Value),
}

impl NewContent<'_> {
    fn value(&self) -> &Value {
        match self {
            NewContent::Checked(v) => v,
            NewContent::Canonical(v) => v,
        }
    }

    /// Whether the canonical form equals `stored` (a live version's canonical form).
    fn same_as(&self, target: &ResourceRef, stored: &Value) -> Result<bool, StoreError> {
        Ok(match self {
            NewContent::Checked(v) => canonical_content(target, v)? == *stored,
            NewContent::Canonical(v) => v == stored,
        })
    }
}

/// [`apply_change`] of a checked target whose content is already canonical (the output of
/// [`canonical_content`], or a dataset's staged text parsed back) and whose lineage is already
/// serialised: a dataset pointer move stages both and does not redo them.
///
/// `staged`: the content is the staged row of this (dataset, version) for the target, so a
/// new version names that row instead of copying its text (see [`MIGRATION_9`]).
#[allow(clippy::too_many_arguments)]
fn apply_canonical(
    tx: &Connection,
    target: &ResourceRef,
    content: Option<Value>,
    lineage: &Lineage,
    lineage_text: &str,
    now: DateTime<Utc>,
    check_order: bool,
    staged: Option<(&str, i64)>,
) -> Result<PublishOutcome, StoreError> {
    apply_content(
        tx,
        target,
        content.map(NewContent::Canonical),
        lineage,
        lineage_text,
        now,
        check_order,
        staged,
    )
}

#[allow(clippy::too_many_arguments)]
fn apply_content(
    tx: &Connection,
    target: &ResourceRef,
    content: Option<NewContent<'_>>,
    lineage: &Lineage,
    lineage_text: &str,
    now: DateTime<Utc>,
    check_order: bool,
    staged: Option<(&str, i64)>,
) -> Result<PublishOutcome, StoreError> {
    let current = read_current(tx, target)?;

    if check_order {
        let mark = read_mark(tx, target, lineage)?;
        if mark.as_ref().is_some_and(|mark| lineage.sequence < *mark) {
            return Ok(outcome(target, PublishAction::Stale, current.as_ref()));
        }
        write_mark(tx, target, lineage)?;
    }

    let live = current.as_ref().filter(|c| !c.deleted);
    // The live version's canonical form: compared with new content, and what says which
    // index rows a new version removes.
    let previous = live.map(|l| stored_canonical(target, l)).transpose()?;
    let next_version = current.as_ref().map_or(1, |c| c.version + 1);
    let last_updated = current.as_ref().map_or(now, |c| now.max(c.last_updated));

    let (action, stored) = match content {
        Some(content) => {
            if let Some(previous) = &previous
                && content.same_as(target, previous)?
            {
                return Ok(outcome(target, PublishAction::Unchanged, current.as_ref()));
            }
            let action = if previous.is_some() {
                PublishAction::Updated
            } else {
                PublishAction::Created
            };
            (action, Some(content))
        }
        None => {
            if previous.is_none() {
                return Ok(outcome(target, PublishAction::Unchanged, current.as_ref()));
            }
            (PublishAction::Deleted, None)
        }
    };

    let version_id = next_version.to_string();
    let time_text = format_time(last_updated);
    // The stored text is written once, straight from the content (no copy with `meta` set),
    // or not at all when a staged row holds it.
    let from_staged = staged.filter(|_| stored.is_some());
    let content_text = match (&stored, from_staged) {
        (Some(_), Some(_)) | (None, _) => None,
        (Some(content), None) => match content.value() {
            Value::Object(map) => Some(stored_text(target, map, &version_id, &time_text)?),
            _ => return Err(invalid(target, "the resource is not a JSON object")),
        },
    };
    let deleted = stored.is_none();
    tx.prepare_cached(
        "INSERT INTO history (resource_type, id, version_id, last_updated, deleted, content,
                              lineage, dataset, dataset_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            target.resource_type,
            target.id,
            next_version,
            time_text,
            deleted,
            content_text,
            if from_staged.is_some() {
                LINEAGE_IN_STAGED
            } else {
                lineage_text
            },
            from_staged.map(|(d, _)| d),
            from_staged.map(|(_, v)| v)
        ])
    })
    .map_err(sql_err)?;
    tx.prepare_cached(
        "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (resource_type, id) DO UPDATE SET
           version_id = excluded.version_id, last_updated = excluded.last_updated,
           deleted = excluded.deleted, content = NULL",
    )
    .and_then(|mut s| {
        s.execute(params![
            target.resource_type,
            target.id,
            next_version,
            time_text,
            deleted
        ])
    })
    .map_err(sql_err)?;
    // Index values come from elements other than `id` and `meta`, so the content as given
    // indexes the same as the stored version.
    // Only a live version has index rows (a first version, the common case of a load, and
    // one after a delete have none to remove).
    if let Some(previous) = &previous {
        search::unindex(tx, target, previous)?;
    }
    if let Some(content) = stored.as_ref().map(NewContent::value) {
        search::index_new(tx, target, content)?;
    }

    if let Some(kind) = ChangeKind::for_action(action) {
        let event = change_event(kind, target, &version_id, last_updated, lineage);
        let event_text = serde_json::to_string(&event)
            .map_err(|e| invalid(target, format!("change event cannot be stored: {e}")))?;
        tx.prepare_cached("INSERT INTO outbox (event) VALUES (?1)")
            .and_then(|mut s| s.execute([event_text]))
            .map_err(sql_err)?;
    }

    Ok(PublishOutcome {
        target: target.clone(),
        action,
        version_id: Some(version_id),
        last_updated: Some(last_updated),
    })
}

fn outcome(
    target: &ResourceRef,
    action: PublishAction,
    current: Option<&Current>,
) -> PublishOutcome {
    PublishOutcome {
        target: target.clone(),
        action,
        version_id: current.map(|c| c.version.to_string()),
        last_updated: current.map(|c| c.last_updated),
    }
}

fn read_current(tx: &Connection, target: &ResourceRef) -> Result<Option<Current>, StoreError> {
    let row = tx
        .prepare_cached(
            // The content is its `history` row's (see [`MIGRATION_8`]), read only for a
            // live version: a delete or a first version costs no second lookup.
            &format!(
                "SELECT r.version_id, r.last_updated, r.deleted,
                        CASE WHEN r.deleted THEN NULL ELSE coalesce(r.content, (
                          SELECT {HISTORY_CONTENT} FROM history h {HISTORY_STAGED_JOIN}
                          WHERE h.resource_type = r.resource_type AND h.id = r.id
                            AND h.version_id = r.version_id)) END
                 FROM resources r WHERE r.resource_type = ?1 AND r.id = ?2"
            ),
        )
        .and_then(|mut s| {
            s.query_row(params![target.resource_type, target.id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .optional()
        })
        .map_err(sql_err)?;
    row.map(|(version, last_updated, deleted, content)| {
        Ok(Current {
            version,
            last_updated: parse_time(target, &last_updated)?,
            deleted,
            content,
        })
    })
    .transpose()
}

fn read_mark(
    tx: &Connection,
    target: &ResourceRef,
    lineage: &Lineage,
) -> Result<Option<Sequence>, StoreError> {
    let text = tx
        .prepare_cached(
            "SELECT sequence FROM sequences
             WHERE resource_type = ?1 AND id = ?2 AND source = ?3 AND entity = ?4",
        )
        .and_then(|mut s| {
            s.query_row(
                params![
                    target.resource_type,
                    target.id,
                    lineage.source,
                    lineage.entity
                ],
                |r| r.get::<_, String>(0),
            )
            .optional()
        })
        .map_err(sql_err)?;
    text.map(|t| {
        Sequence::parse(&t)
            .map_err(|e| StoreError::Corrupt(format!("{target}: stored sequence: {e}")))
    })
    .transpose()
}

fn write_mark(tx: &Connection, target: &ResourceRef, lineage: &Lineage) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO sequences (resource_type, id, source, entity, sequence)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (resource_type, id, source, entity) DO UPDATE SET sequence = excluded.sequence",
    )
    .and_then(|mut s| {
        s.execute(params![
            target.resource_type,
            target.id,
            lineage.source,
            lineage.entity,
            lineage.sequence.as_str()
        ])
    })
    .map_err(sql_err)?;
    Ok(())
}

/// A history row as stored, before decoding.
struct RawVersion {
    version: i64,
    last_updated: String,
    deleted: bool,
    content: Option<String>,
    lineage: String,
}

/// The columns of a `history` row `h` as [`raw_version_named`] reads them.
const VERSION_COLUMNS: &str = "SELECT h.version_id, h.last_updated, h.deleted, h.content,
    h.lineage, h.dataset, h.dataset_version FROM history h";

/// A version and the staged row it names, if any (see [`MIGRATION_9`]).
type NamedVersion = (RawVersion, Option<(String, i64)>);

fn raw_version_named(r: &rusqlite::Row<'_>) -> rusqlite::Result<NamedVersion> {
    let staged = match (r.get::<_, Option<String>>(5)?, r.get(6)?) {
        (Some(dataset), Some(version)) => Some((dataset, version)),
        _ => None,
    };
    Ok((raw_version(r)?, staged))
}

/// The stored version of a row read by [`raw_version_named`], its text and lineage read
/// from its staged row when it names one.
fn stored_from(
    conn: &Connection,
    target: &ResourceRef,
    (mut raw, staged): NamedVersion,
) -> Result<StoredVersion, StoreError> {
    if let Some((dataset, version)) = staged {
        read_staged_text(conn, target, &mut raw, &dataset, version)?;
    }
    raw.into_stored(target)
}

/// Fills in the text and lineage of a version that names the staged row it was published
/// from (see [`MIGRATION_9`]), as [`HISTORY_CONTENT`] and [`HISTORY_LINEAGE`] read them.
fn read_staged_text(
    conn: &Connection,
    target: &ResourceRef,
    raw: &mut RawVersion,
    dataset: &str,
    version: i64,
) -> Result<(), StoreError> {
    let (content, lineage) = conn
        .query_row(
            "SELECT json_set(content, '$.meta.versionId', CAST(?5 AS TEXT),
                             '$.meta.lastUpdated', ?6),
                    lineage
             FROM dataset_staged
             WHERE dataset = ?1 AND version = ?2 AND resource_type = ?3 AND id = ?4",
            params![
                dataset,
                version,
                target.resource_type,
                target.id,
                raw.version,
                raw.last_updated
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()
        .map_err(sql_err)?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{target} version {}: its staged row ({dataset} version {version}) is gone",
                raw.version
            ))
        })?;
    if raw.content.is_none() {
        raw.content = Some(content);
    }
    raw.lineage = lineage;
    Ok(())
}

fn raw_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawVersion> {
    Ok(RawVersion {
        version: r.get(0)?,
        last_updated: r.get(1)?,
        deleted: r.get(2)?,
        content: r.get(3)?,
        lineage: r.get(4)?,
    })
}

impl RawVersion {
    fn into_stored(self, target: &ResourceRef) -> Result<StoredVersion, StoreError> {
        let corrupt = |what: &str, e: serde_json::Error| {
            StoreError::Corrupt(format!("{target} version {}: {what}: {e}", self.version))
        };
        let resource = match &self.content {
            Some(text) if !self.deleted => {
                Some(serde_json::from_str(text).map_err(|e| corrupt("content", e))?)
            }
            _ => None,
        };
        let lineage = serde_json::from_str(&self.lineage).map_err(|e| corrupt("lineage", e))?;
        Ok(StoredVersion {
            target: target.clone(),
            version_id: self.version.to_string(),
            last_updated: parse_time(target, &self.last_updated)?,
            deleted: self.deleted,
            resource,
            lineage: Some(lineage),
        })
    }
}

/// The canonical form of a stored live version.
fn stored_canonical(target: &ResourceRef, current: &Current) -> Result<Value, StoreError> {
    let corrupt = |reason: String| {
        StoreError::Corrupt(format!("{target} version {}: {reason}", current.version))
    };
    let text = current
        .content
        .as_deref()
        .ok_or_else(|| corrupt("a live version without content".to_owned()))?;
    stored_canonical_text(target, current.version, text)
}

pub(crate) fn with_context(location: &str, e: rusqlite::Error) -> StoreError {
    match sql_err(e) {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{location}: {m}")),
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{location}: {m}")),
        other => other,
    }
}

/// The undelivered entries of an `outbox` table (the store's and the REST ledger's have the
/// same `position`, `event`, `delivered_at` columns), oldest first.
pub(crate) fn outbox_pending(
    conn: &Connection,
    limit: usize,
    location: &str,
) -> Result<Vec<OutboxEntry>, StoreError> {
    outbox_pending_after(conn, i64::MIN, limit, location)
}

fn decode_entry(
    (position, text): (i64, String),
    location: &str,
) -> Result<OutboxEntry, StoreError> {
    let event = serde_json::from_str::<ChangeEvent>(&text).map_err(|e| {
        StoreError::Corrupt(format!(
            "{location}: outbox entry {position} is not a change event: {e}"
        ))
    })?;
    Ok(OutboxEntry { position, event })
}

/// [`outbox_pending`] from after position `after` (exclusive).
pub(crate) fn outbox_pending_after(
    conn: &Connection,
    after: i64,
    limit: usize,
    location: &str,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let err = |e| with_context(location, e);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT position, event FROM outbox WHERE delivered_at IS NULL AND position > ?2
             ORDER BY position LIMIT ?1",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map(params![limit, after], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(err)?;
    rows.map(|row| decode_entry(row.map_err(err)?, location))
        .collect()
}

/// What becomes of an `outbox` row once it is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Deleted: the store's outbox, whose rows are written in the commit's own transaction and
    /// so never need to be recognised again; the bus's archive keeps every event.
    Delete,
    /// Kept this long after delivery, then deleted: the REST ledger's outbox, whose rows also
    /// stop a recovery that settles the same version again from delivering it twice.
    KeepFor(chrono::Duration),
}

/// Marks `outbox` entries delivered at `delivered_at`, in one transaction (an entry already
/// marked keeps its first time), and prunes delivered rows as `rule` says.
///
/// The newest row is never deleted, delivered or not: positions are `INTEGER PRIMARY KEY`
/// without `AUTOINCREMENT` (see [`MIGRATION_5`]), so a new row gets one more than the highest
/// position in the table, and deleting the newest would hand its position out again. It is
/// deleted by a later call, once a newer row exists. Delivered rows are found through the
/// partial index `outbox_delivered`, so pruning reads only them, never the backlog.
pub(crate) fn outbox_mark_delivered(
    conn: &mut Connection,
    positions: &[i64],
    delivered_at: DateTime<Utc>,
    rule: Delivered,
    location: &str,
) -> Result<(), StoreError> {
    if positions.is_empty() {
        return Ok(());
    }
    let err = |e| with_context(location, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    {
        let newest: i64 = tx
            .query_row("SELECT coalesce(max(position), 0) FROM outbox", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        let at = format_time(delivered_at);
        let mut mark = tx
            .prepare_cached(
                "UPDATE outbox SET delivered_at = ?1
                 WHERE position = ?2 AND delivered_at IS NULL",
            )
            .map_err(err)?;
        match rule {
            Delivered::Delete => {
                // Deleted by runs of consecutive positions, one statement per run (a relay
                // delivers in outbox order, so a batch of marks is nearly always one run).
                let mut delete = tx
                    .prepare_cached(
                        "DELETE FROM outbox WHERE position BETWEEN ?1 AND ?2
                         AND delivered_at IS NULL",
                    )
                    .map_err(err)?;
                let mut older: Vec<i64> = Vec::with_capacity(positions.len());
                for &position in positions {
                    if position < newest {
                        older.push(position);
                    } else {
                        mark.execute(params![at, position]).map_err(err)?;
                    }
                }
                older.sort_unstable();
                older.dedup();
                for (first, last) in runs(&older) {
                    delete.execute([first, last]).map_err(err)?;
                }
                tx.prepare_cached(
                    "DELETE FROM outbox INDEXED BY outbox_delivered
                     WHERE delivered_at IS NOT NULL AND position < ?1",
                )
                .and_then(|mut prune| prune.execute([newest]))
                .map_err(err)?;
            }
            Delivered::KeepFor(retention) => {
                for position in positions {
                    mark.execute(params![at, position]).map_err(err)?;
                }
                tx.prepare_cached(
                    "DELETE FROM outbox INDEXED BY outbox_delivered
                     WHERE delivered_at IS NOT NULL AND delivered_at <= ?1 AND position < ?2",
                )
                .and_then(|mut prune| {
                    prune.execute(params![format_time(delivered_at - retention), newest])
                })
                .map_err(err)?;
            }
        }
    }
    tx.commit().map_err(err)
}

/// The runs of consecutive values of a sorted, de-duplicated list, as (first, last) pairs.
fn runs(sorted: &[i64]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &p in sorted {
        match out.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(p) => *last = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// Opens (or creates, with its parent directories) a SQLite file in WAL mode, which lets
/// readers (the gateway, the outbox relay) run beside the writer; `what` names it in a
/// warning when the file cannot be put in WAL mode. Returns the connection and the file's
/// location for error messages.
pub(crate) fn open_wal_file(path: &Path, what: &str) -> Result<(Connection, String), StoreError> {
    let location = path.display().to_string();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create directory {}: {e}", parent.display()))
        })?;
    }
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {location}: {e}")))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| with_context(&location, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(location = %location, journal_mode = %mode, "{what} file is not in WAL mode");
    }
    Ok((conn, location))
}

/// Busy, locked and I/O conditions may pass, so they are `Unavailable` (retryable); anything
/// else means the file or the data is not what this build expects.
fn sql_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::OutOfMemory
            | ErrorCode::OperationInterrupted
            | ErrorCode::FileLockingProtocolFailed,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Corrupt(e.to_string()),
    }
}

mod dataset;
mod search;

#[cfg(test)]
mod tests;
