//! Search and paged history for the SQLite store.
//!
//! `search_index` holds one row per indexed value of each live resource
//! ([`crate::store::search::index_entries`]), rewritten by `apply` in the same transaction as
//! the resource, so a search never sees an index that disagrees with the resources. `_id` and
//! `_lastUpdated` read the `resources` row itself.
//!
//! Cursors: a search page continues after the last id (`i:<id>`); a history page after the
//! last `(lastUpdated, id, version)` (`h:<lastUpdated>|<version>|<id>`).

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params, params_from_iter};
use serde_json::Value;

use super::{
    HISTORY_CONTENT, HISTORY_LINEAGE, HISTORY_STAGED_JOIN, RawVersion, format_time, sql_err,
};
use crate::model::ResourceRef;
use crate::store::StoreError;
use crate::store::search::{
    Criterion, Filter, HistoryPage, HistoryQuery, IndexValue, Prefix, SearchPage, SearchQuery,
    StringMode, index_entries,
};

/// Removes the index rows of a resource's live version, found through the value and date
/// indexes by the entries of that version (`previous`: its content, `id` and `meta` aside, as
/// [`index_new`] indexed it). There is no index by resource: it held one B-tree entry per
/// row only for this delete, on every write, while a delete by value costs only updates.
/// Index entries depend on the content alone, so the entries of the stored version are the
/// rows it wrote; a build that indexes differently must reindex (as migration 2 does).
pub(super) fn unindex(
    tx: &Connection,
    target: &ResourceRef,
    previous: &Value,
) -> Result<(), StoreError> {
    for entry in index_entries(previous) {
        let deleted = match entry.value {
            IndexValue::Date { low, high } => tx
                .prepare_cached(
                    "DELETE FROM search_index WHERE resource_type = ?1 AND param = ?2
                       AND low = ?3 AND high = ?4 AND id = ?5 AND low IS NOT NULL",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        target.resource_type,
                        entry.param,
                        low,
                        high,
                        target.id
                    ])
                }),
            IndexValue::Token { code: value, .. }
            | IndexValue::String {
                normalized: value, ..
            }
            | IndexValue::Reference { id: value, .. } => tx
                .prepare_cached(
                    "DELETE FROM search_index WHERE resource_type = ?1 AND param = ?2
                       AND value = ?3 AND id = ?4 AND value IS NOT NULL",
                )
                .and_then(|mut s| {
                    s.execute(params![target.resource_type, entry.param, value, target.id])
                }),
        };
        deleted.map_err(sql_err)?;
    }
    Ok(())
}

/// Indexes a resource that has no index rows yet (one the store never held: index rows exist
/// only for resources of the `resources` table).
pub(super) fn index_new(
    tx: &Connection,
    target: &ResourceRef,
    content: &Value,
) -> Result<(), StoreError> {
    insert_entries(tx, target, index_entries(content))
}

/// Writes a new version's index rows, computed beforehand by `index_entries` (a first
/// publish collects them instead: [`collect_entries`]).
pub(super) fn insert_entries(
    tx: &Connection,
    target: &ResourceRef,
    entries: Vec<crate::store::search::IndexEntry>,
) -> Result<(), StoreError> {
    insert_with(
        tx,
        "INSERT INTO search_index (resource_type, id, param, system, value, raw, low, high)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        target,
        entries,
    )
}

/// A first publish's index rows wait here until the pass over its resources is done, and are
/// then written to `search_index` sorted by the key of the index that holds them
/// ([`write_collected`]). Written in resource order, every row was an insert at a random
/// place of the value and date indexes (their keys start with the parameter and the value):
/// once those indexes outgrow the page cache, each insert reads a page back and dirties
/// another, and a dirty page evicted mid-transaction is written to the WAL again every time
/// it comes back (the 10M load's 8 GB WAL). Sorted, the inserts of a resource type new to the
/// store are appends, each index page is filled once, and SQLite's sorter bounds the sort's
/// memory (it spills to temporary files). A temporary table: it is this connection's own, and
/// its rows go with the transaction's rollback. Its columns are taken from `search_index`'s,
/// so the two cannot drift apart.
const COLLECTED_TABLE: &str = "
CREATE TEMP TABLE IF NOT EXISTS publish_index AS
    SELECT resource_type, id, param, system, value, raw, low, high
    FROM main.search_index WHERE 0;
DELETE FROM temp.publish_index;
";

/// Starts collecting index rows for [`collect_entries`] (an earlier collection that was not
/// written is discarded).
pub(super) fn begin_collecting(tx: &Connection) -> Result<(), StoreError> {
    tx.execute_batch(COLLECTED_TABLE).map_err(sql_err)
}

/// Keeps a new version's index rows for [`write_collected`].
pub(super) fn collect_entries(
    tx: &Connection,
    target: &ResourceRef,
    entries: Vec<crate::store::search::IndexEntry>,
) -> Result<(), StoreError> {
    insert_with(
        tx,
        "INSERT INTO temp.publish_index (resource_type, id, param, system, value, raw, low, high)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        target,
        entries,
    )
}

/// Writes the rows kept by [`collect_entries`] to `search_index`: the rows of the date index
/// in its key order, then the others in the value index's key order (a row is in one of the
/// two partial indexes, never both: see `MIGRATION_4`). Returns the number of rows.
pub(super) fn write_collected(tx: &Connection) -> Result<usize, StoreError> {
    let dates = tx
        .execute(
            "INSERT INTO search_index (resource_type, id, param, system, value, raw, low, high)
             SELECT resource_type, id, param, system, value, raw, low, high
             FROM temp.publish_index WHERE low IS NOT NULL
             ORDER BY resource_type, param, low, high",
            [],
        )
        .map_err(sql_err)?;
    let values = tx
        .execute(
            "INSERT INTO search_index (resource_type, id, param, system, value, raw, low, high)
             SELECT resource_type, id, param, system, value, raw, low, high
             FROM temp.publish_index WHERE low IS NULL
             ORDER BY resource_type, param, value, id",
            [],
        )
        .map_err(sql_err)?;
    tx.execute("DELETE FROM temp.publish_index", [])
        .map_err(sql_err)?;
    Ok(dates + values)
}

/// Binds and runs `sql`, an eight-column index-row insert, for each entry.
fn insert_with(
    tx: &Connection,
    sql: &str,
    target: &ResourceRef,
    entries: Vec<crate::store::search::IndexEntry>,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(sql).map_err(sql_err)?;
    for entry in entries {
        let (system, value, raw, low, high) = match entry.value {
            IndexValue::Token { system, code } => (system, Some(code), None, None, None),
            IndexValue::String { normalized, exact } => {
                (None, Some(normalized), Some(exact), None, None)
            }
            IndexValue::Date { low, high } => (None, None, None, Some(low), Some(high)),
            IndexValue::Reference { resource_type, id } => {
                (resource_type, Some(id), None, None, None)
            }
        };
        stmt.execute(params![
            target.resource_type,
            target.id,
            entry.param,
            system,
            value,
            raw,
            low,
            high
        ])
        .map_err(sql_err)?;
    }
    Ok(())
}

/// Rebuilds the index of every live resource: a store written before the index existed, or
/// by a build that computed its entries otherwise.
pub(super) fn reindex_all(tx: &Connection) -> Result<(), StoreError> {
    tx.execute("DELETE FROM search_index", [])
        .map_err(sql_err)?;
    // One live resource at a time: a large store is not held in memory.
    let mut stmt = tx
        .prepare(&format!(
            "SELECT r.resource_type, r.id, coalesce(r.content, {HISTORY_CONTENT})
             FROM resources r LEFT JOIN history h
               ON h.resource_type = r.resource_type AND h.id = r.id AND h.version_id = r.version_id
             {HISTORY_STAGED_JOIN}
             WHERE r.deleted = 0"
        ))
        .map_err(sql_err)?;
    let mut rows = stmt.query([]).map_err(sql_err)?;
    while let Some(row) = rows.next().map_err(sql_err)? {
        let target = ResourceRef {
            resource_type: row.get(0).map_err(sql_err)?,
            id: row.get(1).map_err(sql_err)?,
        };
        let content: String = row.get(2).map_err(sql_err)?;
        let value: Value = serde_json::from_str(&content)
            .map_err(|e| StoreError::Corrupt(format!("{target}: content: {e}")))?;
        index_new(tx, &target, &value)?;
    }
    Ok(())
}

fn bad_cursor(cursor: &str) -> StoreError {
    StoreError::Invalid {
        target: "page cursor".to_owned(),
        reason: format!("{} characters that this store did not make", cursor.len()),
    }
}

fn limit_of(count: usize) -> i64 {
    // One more than the page, to know whether a next page exists.
    i64::try_from(count).unwrap_or(i64::MAX - 1) + 1
}

/// A WHERE clause under construction, with its bound values.
#[derive(Default)]
struct Sql {
    clauses: Vec<String>,
    values: Vec<SqlValue>,
    /// The placeholder of the searched resource type (bound first).
    resource_type: String,
}

impl Sql {
    fn bind(&mut self, v: impl Into<SqlValue>) -> String {
        self.values.push(v.into());
        format!("?{}", self.values.len())
    }

    fn filter(&mut self, f: &Filter) -> String {
        let ors: Vec<String> = f
            .any_of
            .iter()
            .map(|c| self.criterion(&f.param, c))
            .collect();
        if ors.is_empty() {
            "0".to_owned()
        } else {
            format!("({})", ors.join(" OR "))
        }
    }

    fn criterion(&mut self, param: &str, c: &Criterion) -> String {
        match c {
            Criterion::Id(id) => format!("r.id = {}", self.bind(id.clone())),
            Criterion::Date { prefix, low, high } if param == "_lastUpdated" => {
                date_condition(self, *prefix, "r.last_updated", "r.last_updated", low, high)
            }
            _ => {
                let p = self.bind(param.to_owned());
                let cond = match c {
                    Criterion::Token { system, code } => {
                        let mut parts = Vec::new();
                        if let Some(code) = code {
                            parts.push(format!("s.value = {}", self.bind(code.clone())));
                        }
                        match system {
                            None => {}
                            Some(None) => parts.push("s.system IS NULL".to_owned()),
                            Some(Some(sys)) => {
                                parts.push(format!("s.system = {}", self.bind(sys.clone())));
                            }
                        }
                        if parts.is_empty() {
                            "1".to_owned()
                        } else {
                            parts.join(" AND ")
                        }
                    }
                    Criterion::String { value, mode } => match mode {
                        StringMode::Exact => format!("s.raw = {}", self.bind(value.clone())),
                        // A range on the lower-cased column, which the (resource_type,
                        // param, value) index answers; LIKE cannot use it.
                        StringMode::Prefix => {
                            let low = value.to_lowercase();
                            match prefix_successor(&low) {
                                Some(high) => format!(
                                    "(s.value >= {} AND s.value < {})",
                                    self.bind(low),
                                    self.bind(high)
                                ),
                                None => format!("s.value >= {}", self.bind(low)),
                            }
                        }
                        StringMode::Contains => format!(
                            "s.value LIKE {} ESCAPE '\\'",
                            self.bind(format!("%{}%", like_escape(&value.to_lowercase())))
                        ),
                    },
                    Criterion::Date { prefix, low, high } => {
                        date_condition(self, *prefix, "s.low", "s.high", low, high)
                    }
                    Criterion::Reference { resource_type, id } => {
                        let mut cond = format!("s.value = {}", self.bind(id.clone()));
                        if let Some(t) = resource_type {
                            cond.push_str(&format!(" AND s.system = {}", self.bind(t.clone())));
                        }
                        cond
                    }
                    // Handled above.
                    Criterion::Id(_) => "0".to_owned(),
                };
                // Not a correlated EXISTS per resource row (which probed the index range of
                // the value once per resource: 120 ms for a prefix among 10,000 Patients) but
                // the set of matching ids, computed once from the (resource_type, param,
                // value) index and joined to `resources` by its primary key.
                // The value and date indexes are partial (schema 4): a subquery names the
                // `IS NOT NULL` term of the index it reads, or the planner cannot use it.
                // Every row but a date's has a value, and only a date's has a range.
                let present = if matches!(c, Criterion::Date { .. }) {
                    "s.low IS NOT NULL"
                } else {
                    "s.value IS NOT NULL"
                };
                format!(
                    "r.id IN (SELECT s.id FROM search_index s WHERE s.resource_type = {t} \
                     AND s.param = {p} AND {present} AND {cond})",
                    t = self.resource_type
                )
            }
        }
    }
}

/// FHIR R4 prefix semantics over ranges: the resource's `[lo, hi]` against the value's
/// `[low, high]`.
fn date_condition(
    sql: &mut Sql,
    prefix: Prefix,
    lo: &str,
    hi: &str,
    low: &str,
    high: &str,
) -> String {
    // Bind only what the condition uses: SQLite counts parameters up to the highest used.
    let mut b = |v: &str| sql.bind(v.to_owned());
    match prefix {
        Prefix::Eq => {
            let (l, h) = (b(low), b(high));
            format!("({lo} >= {l} AND {hi} <= {h})")
        }
        Prefix::Ne => {
            let (l, h) = (b(low), b(high));
            format!("NOT ({lo} >= {l} AND {hi} <= {h})")
        }
        Prefix::Gt => format!("{hi} > {}", b(high)),
        Prefix::Lt => format!("{lo} < {}", b(low)),
        Prefix::Ge => format!("{hi} >= {}", b(low)),
        Prefix::Le => format!("{lo} <= {}", b(high)),
        Prefix::Sa => format!("{lo} > {}", b(high)),
        Prefix::Eb => format!("{hi} < {}", b(low)),
    }
}

/// The least string greater than every string starting with `prefix`, in SQLite's BINARY
/// order (UTF-8 bytes, which is code point order): the prefix with its last character
/// replaced by the next one (characters that have none are dropped first). `None` when no
/// such string exists (an empty prefix, or only `char::MAX`): every value matches from below.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub(super) fn search(conn: &Connection, q: &SearchQuery) -> Result<SearchPage, StoreError> {
    let after = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.strip_prefix("i:")
                .filter(|id| !id.is_empty())
                .ok_or_else(|| bad_cursor(c))?
                .to_owned(),
        ),
    };
    let mut sql = Sql::default();
    let t = sql.bind(q.resource_type.clone());
    sql.clauses.push(format!("r.resource_type = {t}"));
    sql.clauses.push("r.deleted = 0".to_owned());
    sql.resource_type = t;
    for f in &q.filters {
        let c = sql.filter(f);
        sql.clauses.push(c);
    }
    let where_all = sql.clauses.join(" AND ");
    let total = count(conn, "resources r", &where_all, &sql)?;
    if q.count == 0 {
        return Ok(SearchPage {
            total,
            matches: Vec::new(),
            next: None,
        });
    }
    let mut page_where = where_all;
    if let Some(after) = after {
        let a = sql.bind(after);
        page_where.push_str(&format!(" AND r.id > {a}"));
    }
    let limit = sql.bind(limit_of(q.count));
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT r.id, h.version_id, h.last_updated, h.deleted, {HISTORY_CONTENT}, {HISTORY_LINEAGE}
             FROM resources r JOIN history h
               ON h.resource_type = r.resource_type AND h.id = r.id AND h.version_id = r.version_id
             {HISTORY_STAGED_JOIN}
             WHERE {page_where} ORDER BY r.id LIMIT {limit}"
        ))
        .map_err(sql_err)?;
    let rows = stmt
        .query_map(params_from_iter(sql.values.iter()), |r| {
            Ok((
                r.get::<_, String>(0)?,
                RawVersion {
                    version: r.get(1)?,
                    last_updated: r.get(2)?,
                    deleted: r.get(3)?,
                    content: r.get(4)?,
                    lineage: r.get(5)?,
                },
            ))
        })
        .map_err(sql_err)?;
    let mut matches = Vec::new();
    for row in rows {
        let (id, raw) = row.map_err(sql_err)?;
        let target = ResourceRef {
            resource_type: q.resource_type.clone(),
            id,
        };
        matches.push(raw.into_stored(&target)?);
    }
    let next = if matches.len() > q.count {
        matches.truncate(q.count);
        matches.last().map(|v| format!("i:{}", v.target.id))
    } else {
        None
    };
    Ok(SearchPage {
        total,
        matches,
        next,
    })
}

/// How many rows of `from` (a table with its alias) match `where_all`, bound with `sql`'s values.
fn count(conn: &Connection, from: &str, where_all: &str, sql: &Sql) -> Result<u64, StoreError> {
    let total: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM {from} WHERE {where_all}"),
            params_from_iter(sql.values.iter()),
            |r| r.get(0),
        )
        .map_err(sql_err)?;
    u64::try_from(total).map_err(|_| StoreError::Corrupt("negative count".into()))
}

pub(super) fn history_page(conn: &Connection, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
    let mut sql = Sql::default();
    let t = sql.bind(q.resource_type.clone());
    sql.clauses.push(format!("h.resource_type = {t}"));
    if let Some(id) = &q.id {
        let i = sql.bind(id.clone());
        sql.clauses.push(format!("h.id = {i}"));
    }
    if let Some(since) = q.since {
        let s = sql.bind(format_time(since));
        sql.clauses.push(format!("h.last_updated >= {s}"));
    }
    let where_all = sql.clauses.join(" AND ");
    let total = count(conn, "history h", &where_all, &sql)?;
    if q.count == 0 {
        return Ok(HistoryPage {
            total,
            versions: Vec::new(),
            next: None,
        });
    }
    let mut page_where = where_all;
    if let Some(c) = &q.cursor {
        let (time, version, id) = c
            .strip_prefix("h:")
            .and_then(|rest| {
                let (time, rest) = rest.split_once('|')?;
                let (version, id) = rest.split_once('|')?;
                Some((time, version.parse::<i64>().ok()?, id))
            })
            .ok_or_else(|| bad_cursor(c))?;
        let (t, i, v) = (
            sql.bind(time.to_owned()),
            sql.bind(id.to_owned()),
            sql.bind(version),
        );
        page_where.push_str(&format!(
            " AND (h.last_updated, h.id, h.version_id) < ({t}, {i}, {v})"
        ));
    }
    let limit = sql.bind(limit_of(q.count));
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT h.id, h.version_id, h.last_updated, h.deleted, {HISTORY_CONTENT}, {HISTORY_LINEAGE}
             FROM history h {HISTORY_STAGED_JOIN} WHERE {page_where}
             ORDER BY h.last_updated DESC, h.id DESC, h.version_id DESC LIMIT {limit}"
        ))
        .map_err(sql_err)?;
    let rows = stmt
        .query_map(params_from_iter(sql.values.iter()), |r| {
            Ok((
                r.get::<_, String>(0)?,
                RawVersion {
                    version: r.get(1)?,
                    last_updated: r.get(2)?,
                    deleted: r.get(3)?,
                    content: r.get(4)?,
                    lineage: r.get(5)?,
                },
            ))
        })
        .map_err(sql_err)?;
    let mut versions = Vec::new();
    let mut last_key = None;
    for row in rows {
        let (id, raw) = row.map_err(sql_err)?;
        let key = (raw.last_updated.clone(), raw.version, id.clone());
        let target = ResourceRef {
            resource_type: q.resource_type.clone(),
            id,
        };
        versions.push(raw.into_stored(&target)?);
        if versions.len() == q.count {
            last_key = Some(key);
        }
    }
    let next = if versions.len() > q.count {
        versions.truncate(q.count);
        last_key.map(|(time, version, id)| format!("h:{time}|{version}|{id}"))
    } else {
        None
    };
    Ok(HistoryPage {
        total,
        versions,
        next,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::model::{Lineage, RecordKey, ResourceChange, ResourceOp, Sequence};
    use crate::store::search::{date_range, format_instant};
    use crate::store::sqlite::{Clock, SqliteStore};
    use crate::store::{FhirStore, SearchStore};

    use super::*;

    fn change(t: &str, id: &str, op: ResourceOp, seq: &str) -> ResourceChange {
        ResourceChange {
            target: ResourceRef {
                resource_type: t.into(),
                id: id.into(),
            },
            op,
            lineage: Lineage {
                source: "app".into(),
                entity: "e".into(),
                key: RecordKey::from_pairs([("pk", json!(id))]),
                sequence: Sequence::parse(seq).unwrap(),
                observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
            },
        }
    }

    fn put(t: &str, id: &str, resource: Value) -> ResourceChange {
        change(t, id, ResourceOp::Upsert { resource }, "1")
    }

    /// A clock one second further on each call, from 2024-01-01.
    fn clock() -> Clock {
        let n = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        std::sync::Arc::new(move || {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            "2024-01-01T00:00:00Z"
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
                + chrono::Duration::seconds(i)
        })
    }

    async fn sample() -> SqliteStore {
        let s = SqliteStore::open_in_memory().unwrap().with_clock(clock());
        let people = [
            ("p1", "Smith", "Anna", "1970-03-01", "female", "M1"),
            ("p2", "Smithers", "Bob", "1980-07-15", "male", "M2"),
            ("p3", "Jones", "Ann", "1990", "female", "M3"),
            ("p4", "50%_off", "Zed", "2000-01-01", "other", "M4"),
        ];
        for (id, family, given, birth, gender, mrn) in people {
            s.apply(&[put(
                "Patient",
                id,
                json!({"resourceType": "Patient", "name": [{"family": family, "given": [given]}],
                       "birthDate": birth, "gender": gender,
                       "identifier": [{"system": "urn:mrn", "value": mrn}]}),
            )])
            .await
            .unwrap();
        }
        s.apply(&[put(
            "Observation",
            "o1",
            json!({"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                   "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2021-05-01T10:00:00Z"}),
        )])
        .await
        .unwrap();
        s
    }

    /// Two Patients and one Observation for the migration test (a file store).
    fn migration_changes() -> Vec<ResourceChange> {
        vec![
            put(
                "Patient",
                "p1",
                json!({"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Anna"]}],
                       "birthDate": "1980-03-01", "gender": "female",
                       "identifier": [{"system": "urn:mrn", "value": "M1"}]}),
            ),
            put(
                "Patient",
                "p2",
                json!({"resourceType": "Patient", "name": [{"family": "Jones"}],
                       "birthDate": "1970", "identifier": [{"system": "urn:other", "value": "X"}]}),
            ),
            put(
                "Observation",
                "o1",
                json!({"resourceType": "Observation", "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                       "subject": {"reference": "Patient/p1"},
                       "effectiveDateTime": "2021-05-01T10:00:00Z"}),
            ),
        ]
    }

    fn q(t: &str, filters: Vec<(&str, Vec<Criterion>)>) -> SearchQuery {
        SearchQuery {
            resource_type: t.into(),
            filters: filters
                .into_iter()
                .map(|(p, any_of)| Filter {
                    param: p.into(),
                    any_of,
                })
                .collect(),
            count: 10,
            cursor: None,
        }
    }

    fn ids(page: &SearchPage) -> Vec<&str> {
        page.matches.iter().map(|m| m.target.id.as_str()).collect()
    }

    fn s(v: &str, mode: StringMode) -> Criterion {
        Criterion::String {
            value: v.into(),
            mode,
        }
    }

    fn d(p: Prefix, v: &str) -> Criterion {
        let (low, high) = date_range(v).unwrap();
        Criterion::Date {
            prefix: p,
            low,
            high,
        }
    }

    #[test]
    fn prefix_successors() {
        assert_eq!(prefix_successor("smi").as_deref(), Some("smj"));
        assert_eq!(prefix_successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_successor("b\u{10FFFF}").as_deref(), Some("c"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor(""), None);
    }

    #[tokio::test]
    async fn prefix_ranges_keep_case_insensitive_prefix_semantics() {
        let st = SqliteStore::open_in_memory().unwrap().with_clock(clock());
        let families = [
            ("a", "Smith"),
            ("b", "SMITHERS"),
            ("c", "smj"),
            ("d", "Smi"),
            ("e", "Ómar"),
            ("f", "ómarsson"),
            ("g", "Sm"),
            ("h", "Smi\u{10FFFF}x"),
        ];
        for (id, family) in families {
            st.apply(&[put(
                "Patient",
                id,
                json!({"resourceType": "Patient", "name": [{"family": family}]}),
            )])
            .await
            .unwrap();
        }
        let find = |v: &'static str| {
            let st = &st;
            async move {
                let page = st
                    .search(&q(
                        "Patient",
                        vec![("family", vec![s(v, StringMode::Prefix)])],
                    ))
                    .await
                    .unwrap();
                page.matches
                    .iter()
                    .map(|m| m.target.id.clone())
                    .collect::<Vec<_>>()
            }
        };
        // Every family that starts with the value, whatever the case, and nothing else: the
        // same answer as a case-insensitive `starts_with` over the data.
        for v in [
            "smi",
            "SMI",
            "Smith",
            "smithers",
            "sm",
            "óm",
            "ÓMAR",
            "smj",
            "x",
            "smi\u{10FFFF}",
        ] {
            let want: Vec<String> = families
                .iter()
                .filter(|(_, f)| f.to_lowercase().starts_with(&v.to_lowercase()))
                .map(|(id, _)| (*id).to_owned())
                .collect();
            assert_eq!(find(v).await, want, "{v}");
        }
        assert_eq!(find("smi").await, ["a", "b", "d", "h"]);
    }

    #[tokio::test]
    async fn string_token_date_reference_and_id_filters() {
        let st = sample().await;
        let run = |query: SearchQuery| {
            let st = &st;
            async move { st.search(&query).await.unwrap() }
        };
        let p = run(q(
            "Patient",
            vec![("family", vec![s("smith", StringMode::Prefix)])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1", "p2"]);
        assert_eq!(p.total, 2);
        let p = run(q(
            "Patient",
            vec![("family", vec![s("Smith", StringMode::Exact)])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1"]);
        let p = run(q(
            "Patient",
            vec![("name", vec![s("ann", StringMode::Prefix)])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1", "p3"]);
        let p = run(q(
            "Patient",
            vec![("name", vec![s("MITH", StringMode::Contains)])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1", "p2"]);
        // LIKE wildcards in the value are literal.
        let p = run(q(
            "Patient",
            vec![("family", vec![s("50%_", StringMode::Prefix)])],
        ))
        .await;
        assert_eq!(ids(&p), ["p4"]);
        let p = run(q(
            "Patient",
            vec![("family", vec![s("5_", StringMode::Prefix)])],
        ))
        .await;
        assert!(ids(&p).is_empty());

        let tok = |system: Option<Option<&str>>, code: Option<&str>| Criterion::Token {
            system: system.map(|s| s.map(str::to_owned)),
            code: code.map(str::to_owned),
        };
        let p = run(q(
            "Patient",
            vec![("gender", vec![tok(None, Some("female"))])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1", "p3"]);
        let p = run(q(
            "Patient",
            vec![("identifier", vec![tok(Some(Some("urn:mrn")), Some("M2"))])],
        ))
        .await;
        assert_eq!(ids(&p), ["p2"]);
        let p = run(q(
            "Patient",
            vec![("identifier", vec![tok(Some(None), Some("M2"))])],
        ))
        .await;
        assert!(ids(&p).is_empty(), "M2 has a system");
        let p = run(q(
            "Patient",
            vec![("identifier", vec![tok(Some(Some("urn:mrn")), None)])],
        ))
        .await;
        assert_eq!(p.total, 4);
        // OR within a parameter, AND across parameters.
        let p = run(q(
            "Patient",
            vec![
                (
                    "gender",
                    vec![tok(None, Some("male")), tok(None, Some("other"))],
                ),
                ("family", vec![s("s", StringMode::Prefix)]),
            ],
        ))
        .await;
        assert_eq!(ids(&p), ["p2"]);

        let p = run(q(
            "Patient",
            vec![("birthdate", vec![d(Prefix::Eq, "1970-03-01")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1"]);
        let p = run(q(
            "Patient",
            vec![("birthdate", vec![d(Prefix::Eq, "1970")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1"]);
        let p = run(q(
            "Patient",
            vec![("birthdate", vec![d(Prefix::Lt, "1985")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1", "p2"]);
        let p = run(q(
            "Patient",
            vec![("birthdate", vec![d(Prefix::Ge, "1990-06-01")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p3", "p4"], "1990 overlaps >= 1990-06-01");
        let p = run(q(
            "Patient",
            vec![("birthdate", vec![d(Prefix::Gt, "1990")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p4"]);
        let p = run(q(
            "Patient",
            vec![("birthdate", vec![d(Prefix::Le, "1980-07-15")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1", "p2"]);
        let p = run(q(
            "Patient",
            vec![("birthdate", vec![d(Prefix::Ne, "1970-03-01")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p2", "p3", "p4"]);
        let p = run(q(
            "Patient",
            vec![("birthdate", vec![d(Prefix::Sa, "1990-06")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p4"]);
        let p = run(q(
            "Patient",
            vec![("birthdate", vec![d(Prefix::Eb, "1980")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p1"]);

        let p = run(q(
            "Patient",
            vec![("_id", vec![Criterion::Id("p3".into())])],
        ))
        .await;
        assert_eq!(ids(&p), ["p3"]);
        // lastUpdated: p1..p4 at seconds 0..3.
        let p = run(q(
            "Patient",
            vec![("_lastUpdated", vec![d(Prefix::Ge, "2024-01-01T00:00:02Z")])],
        ))
        .await;
        assert_eq!(ids(&p), ["p3", "p4"]);

        let r = |t: Option<&str>, id: &str| Criterion::Reference {
            resource_type: t.map(str::to_owned),
            id: id.into(),
        };
        for (param, c) in [
            ("patient", r(Some("Patient"), "p1")),
            ("subject", r(None, "p1")),
        ] {
            let p = run(q("Observation", vec![(param, vec![c])])).await;
            assert_eq!(ids(&p), ["o1"]);
        }
        let p = run(q(
            "Observation",
            vec![("subject", vec![r(Some("Group"), "p1")])],
        ))
        .await;
        assert!(ids(&p).is_empty());
        let p = run(q(
            "Observation",
            vec![
                (
                    "code",
                    vec![tok(Some(Some("http://loinc.org")), Some("8867-4"))],
                ),
                ("date", vec![d(Prefix::Eq, "2021-05")]),
            ],
        ))
        .await;
        assert_eq!(ids(&p), ["o1"]);
    }

    #[tokio::test]
    async fn pages_are_stable_and_deletes_and_updates_reindex() {
        let st = sample().await;
        let mut query = q("Patient", vec![]);
        query.count = 3;
        let first = st.search(&query).await.unwrap();
        assert_eq!((ids(&first), first.total), (vec!["p1", "p2", "p3"], 4));
        let cursor = first.next.clone().unwrap();
        // A new resource sorting before the cursor does not shift the next page.
        st.apply(&[put("Patient", "p0", json!({"resourceType": "Patient"}))])
            .await
            .unwrap();
        query.cursor = Some(cursor);
        let second = st.search(&query).await.unwrap();
        assert_eq!(ids(&second), ["p4"]);
        assert!(second.next.is_none());
        query.count = 0;
        let only_total = st.search(&query).await.unwrap();
        assert_eq!((only_total.total, only_total.matches.len()), (5, 0));

        st.apply(&[change("Patient", "p1", ResourceOp::Delete, "2")])
            .await
            .unwrap();
        st.apply(&[put(
            "Patient",
            "p2",
            json!({"resourceType": "Patient", "name": [{"family": "Brown"}]}),
        )])
        .await
        .unwrap();
        let p = st
            .search(&q(
                "Patient",
                vec![("family", vec![s("smith", StringMode::Prefix)])],
            ))
            .await
            .unwrap();
        assert!(
            ids(&p).is_empty(),
            "deleted and renamed resources leave the index"
        );
        let p = st
            .search(&q(
                "Patient",
                vec![("family", vec![s("brown", StringMode::Prefix)])],
            ))
            .await
            .unwrap();
        assert_eq!(ids(&p), ["p2"]);

        for bad in ["x", "i:", "h:2024|1|p1"] {
            let mut query = q("Patient", vec![]);
            query.cursor = Some(bad.into());
            assert!(
                matches!(st.search(&query).await, Err(StoreError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn type_and_instance_history_page_newest_first_with_since() {
        let st = sample().await;
        st.apply(&[change("Patient", "p1", ResourceOp::Delete, "2")])
            .await
            .unwrap();
        let mut query = HistoryQuery {
            resource_type: "Patient".into(),
            id: None,
            since: None,
            count: 2,
            cursor: None,
        };
        let mut seen = Vec::new();
        loop {
            let page = st.history_page(&query).await.unwrap();
            assert_eq!(page.total, 5);
            seen.extend(
                page.versions
                    .iter()
                    .map(|v| format!("{}/{}", v.target.id, v.version_id)),
            );
            match page.next {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["p1/2", "p4/1", "p3/1", "p2/1", "p1/1"]);
        query.cursor = None;
        query.since = Some("2024-01-01T00:00:03Z".parse().unwrap());
        query.count = 10;
        let page = st.history_page(&query).await.unwrap();
        assert_eq!(page.versions.len(), 2);
        assert!(page.versions[0].deleted);
        query.since = None;
        query.id = Some("p1".into());
        let page = st.history_page(&query).await.unwrap();
        assert_eq!(
            page.versions
                .iter()
                .map(|v| v.version_id.as_str())
                .collect::<Vec<_>>(),
            ["2", "1"]
        );
        query.cursor = Some("i:p1".into());
        assert!(st.history_page(&query).await.is_err());
        assert_eq!(
            format_instant("2024-01-01T00:00:00Z".parse().unwrap()),
            "2024-01-01T00:00:00.000Z"
        );
    }

    /// The index-driven SQL gives, for every kind of filter, exactly the resources that
    /// [`crate::store::search::resource_matches`] (the filter computed from each resource
    /// itself) accepts, with the same total, over a store of a few hundred varied resources.
    #[tokio::test]
    async fn sql_answers_equal_matching_each_resource_directly() {
        let st = SqliteStore::open_in_memory().unwrap().with_clock(clock());
        let families = [
            "Smith", "Smithers", "SMYTHE", "Jones", "Ómar", "o'Neil", "50%_x",
        ];
        let mut changes = Vec::new();
        for i in 0..240usize {
            let family = families[i % families.len()];
            let gender = ["male", "female", "other"][i % 3];
            let status = ["final", "amended"][i % 2];
            let mut names = vec![
                json!({"family": format!("{family}{}", i % 13), "given": [format!("G{}", i % 5)]}),
            ];
            if i % 4 == 0 {
                names.push(json!({"family": "Alias", "given": ["Ann", "Bo"]}));
            }
            changes.push(put(
                "Patient",
                &format!("p{i:03}"),
                json!({"resourceType": "Patient", "name": names,
                       "gender": gender,
                       "birthDate": format!("19{:02}-0{}-1{}", i % 90, 1 + i % 9, i % 10),
                       "identifier": [{"system": if i % 2 == 0 { "urn:a" } else { "urn:b" }, "value": format!("M{}", i % 17)}]}),
            ));
            if i % 3 == 0 {
                changes.push(put(
                    "Observation",
                    &format!("o{i:03}"),
                    json!({"resourceType": "Observation", "status": status,
                           "code": {"coding": [{"system": "http://loinc.org", "code": format!("{}-4", i % 7)}]},
                           "subject": {"reference": format!("Patient/p{:03}", i % 11)},
                           "effectiveDateTime": format!("2021-0{}-0{}T10:00:00Z", 1 + i % 9, 1 + i % 8)}),
                ));
            }
        }
        st.apply(&changes).await.unwrap();
        // A few deletes and updates, so that stale index rows would show.
        st.apply(&[
            change("Patient", "p000", ResourceOp::Delete, "2"),
            put(
                "Patient",
                "p007",
                json!({"resourceType": "Patient", "name": [{"family": "Moved"}]}),
            ),
        ])
        .await
        .unwrap();
        let tok = |system: Option<Option<&str>>, code: Option<&str>| Criterion::Token {
            system: system.map(|s| s.map(str::to_owned)),
            code: code.map(str::to_owned),
        };
        let r = |t: Option<&str>, id: &str| Criterion::Reference {
            resource_type: t.map(str::to_owned),
            id: id.into(),
        };
        let mut queries = vec![];
        for v in [
            "smi",
            "SMITH1",
            "smithers12",
            "ó",
            "o'",
            "50%",
            "x",
            "",
            "alias",
        ] {
            queries.push(q(
                "Patient",
                vec![("family", vec![s(v, StringMode::Prefix)])],
            ));
            queries.push(q(
                "Patient",
                vec![("name", vec![s(v, StringMode::Contains)])],
            ));
        }
        for v in ["Smith1", "smith1", "Alias"] {
            queries.push(q(
                "Patient",
                vec![("family", vec![s(v, StringMode::Exact)])],
            ));
        }
        queries.push(q(
            "Patient",
            vec![(
                "given",
                vec![s("an", StringMode::Prefix), s("g3", StringMode::Prefix)],
            )],
        ));
        queries.push(q(
            "Patient",
            vec![
                ("gender", vec![tok(None, Some("male"))]),
                ("family", vec![s("sm", StringMode::Prefix)]),
            ],
        ));
        queries.push(q(
            "Patient",
            vec![("identifier", vec![tok(Some(Some("urn:a")), Some("M3"))])],
        ));
        queries.push(q(
            "Patient",
            vec![("identifier", vec![tok(Some(Some("urn:b")), None)])],
        ));
        queries.push(q(
            "Patient",
            vec![("identifier", vec![tok(Some(None), Some("M3"))])],
        ));
        for p in [
            Prefix::Eq,
            Prefix::Ne,
            Prefix::Gt,
            Prefix::Lt,
            Prefix::Ge,
            Prefix::Le,
            Prefix::Sa,
            Prefix::Eb,
        ] {
            queries.push(q("Patient", vec![("birthdate", vec![d(p, "1950")])]));
            queries.push(q("Observation", vec![("date", vec![d(p, "2021-05-03")])]));
        }
        queries.push(q(
            "Observation",
            vec![
                ("subject", vec![r(None, "p003")]),
                ("status", vec![tok(None, Some("final"))]),
            ],
        ));
        queries.push(q(
            "Observation",
            vec![("patient", vec![r(Some("Patient"), "p005")])],
        ));
        queries.push(q(
            "Observation",
            vec![(
                "code",
                vec![
                    tok(Some(Some("http://loinc.org")), Some("3-4")),
                    tok(None, Some("5-4")),
                ],
            )],
        ));
        queries.push(q(
            "Patient",
            vec![
                ("_id", vec![Criterion::Id("p010".into())]),
                ("gender", vec![tok(None, Some("female"))]),
            ],
        ));

        let mut all: Vec<(String, Value, String)> = Vec::new();
        for t in ["Patient", "Observation"] {
            let mut page_q = q(t, vec![]);
            page_q.count = 10_000;
            for m in st.search(&page_q).await.unwrap().matches {
                let lu = format_instant(m.last_updated);
                all.push((
                    t.to_owned(),
                    m.resource.unwrap(),
                    format!("{}|{lu}", m.target.id),
                ));
            }
        }
        let mut nonempty = 0;
        for mut query in queries {
            query.count = 10_000;
            let want: Vec<String> = all
                .iter()
                .filter(|(t, _, _)| *t == query.resource_type)
                .filter(|(_, res, key)| {
                    let (id, lu) = key.split_once('|').unwrap();
                    crate::store::search::resource_matches(res, id, lu, &query.filters)
                })
                .map(|(_, _, key)| key.split_once('|').unwrap().0.to_owned())
                .collect();
            let page = st.search(&query).await.unwrap();
            let got: Vec<String> = page.matches.iter().map(|m| m.target.id.clone()).collect();
            assert_eq!(got, want, "{:?}", query.filters);
            assert_eq!(page.total as usize, want.len(), "{:?}", query.filters);
            // Paged by 7: the same ids, in the same order.
            query.count = 7;
            let mut paged = Vec::new();
            loop {
                let page = st.search(&query).await.unwrap();
                paged.extend(page.matches.iter().map(|m| m.target.id.clone()));
                match page.next {
                    Some(c) => query.cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(paged, want, "paged {:?}", query.filters);
            nonempty += usize::from(!want.is_empty());
        }
        assert!(
            nonempty > 30,
            "the queries must mostly match something ({nonempty})"
        );
    }

    /// The plan of one filter's condition, as `search` builds it.
    fn plan(conn: &Connection, resource_type: &str, filter: Filter) -> String {
        let mut sql = Sql::default();
        let t = sql.bind(resource_type.to_owned());
        sql.resource_type = t.clone();
        let cond = sql.filter(&filter);
        let mut stmt = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT r.id FROM resources r \
                 WHERE r.resource_type = {t} AND {cond}"
            ))
            .unwrap();
        let rows = stmt
            .query_map(params_from_iter(sql.values.iter()), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("\n")
    }

    #[tokio::test]
    async fn every_kind_of_condition_uses_its_partial_index() {
        let st = sample().await;
        let conn = st.lock().unwrap();
        let filter = |param: &str, c: Criterion| Filter {
            param: param.into(),
            any_of: vec![c],
        };
        let token_system_only = Criterion::Token {
            system: Some(Some("urn:mrn".into())),
            code: None,
        };
        let value_filters = [
            filter("identifier", token_system_only),
            filter(
                "gender",
                Criterion::Token {
                    system: None,
                    code: Some("female".into()),
                },
            ),
            filter("family", s("smi", StringMode::Prefix)),
            filter("family", s("mit", StringMode::Contains)),
            filter("family", s("Smith", StringMode::Exact)),
        ];
        for f in value_filters {
            let plan = plan(&conn, "Patient", f.clone());
            assert!(plan.contains("search_index_value"), "{f:?}: {plan}");
        }
        for prefix in [Prefix::Eq, Prefix::Ne, Prefix::Ge, Prefix::Lt, Prefix::Sa] {
            let f = filter("birthdate", d(prefix, "1980"));
            let plan = plan(&conn, "Patient", f.clone());
            assert!(plan.contains("search_index_date"), "{f:?}: {plan}");
        }
        let f = filter(
            "subject",
            Criterion::Reference {
                resource_type: Some("Patient".into()),
                id: "p1".into(),
            },
        );
        let plan = plan(&conn, "Observation", f.clone());
        assert!(plan.contains("search_index_value"), "{f:?}: {plan}");
    }

    #[tokio::test]
    async fn a_version_3_file_gets_partial_indexes_and_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        let queries = || {
            vec![
                q("Patient", vec![("birthdate", vec![d(Prefix::Ge, "1975")])]),
                q(
                    "Patient",
                    vec![("family", vec![s("smith", StringMode::Prefix)])],
                ),
                q(
                    "Patient",
                    vec![(
                        "identifier",
                        vec![Criterion::Token {
                            system: Some(Some("urn:mrn".into())),
                            code: None,
                        }],
                    )],
                ),
                q("Observation", vec![("date", vec![d(Prefix::Le, "2022")])]),
            ]
        };
        let mut before = Vec::new();
        {
            let st = SqliteStore::open(&path).unwrap().with_clock(clock());
            st.apply(&migration_changes()).await.unwrap();
            for query in queries() {
                before.push(ids(&st.search(&query).await.unwrap()).join(","));
            }
            // Back to schema 3: full value and date indexes (as MIGRATION_2 made them).
            let conn = st.lock().unwrap();
            conn.execute_batch(
                "DROP INDEX search_index_value; DROP INDEX search_index_date;
                 CREATE INDEX search_index_value ON search_index (resource_type, param, value, id);
                 CREATE INDEX search_index_date ON search_index (resource_type, param, low, high);
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        assert!(before.iter().all(|ids| !ids.is_empty()), "{before:?}");
        let st = SqliteStore::open(&path).unwrap();
        {
            let conn = st.lock().unwrap();
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version, crate::store::sqlite::SCHEMA_VERSION);
            for (index, term) in [
                ("search_index_value", "WHERE value IS NOT NULL"),
                ("search_index_date", "WHERE low IS NOT NULL"),
            ] {
                let sql: String = conn
                    .query_row(
                        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                        [index],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert!(sql.contains(term), "{sql}");
            }
        }
        let mut after = Vec::new();
        for query in queries() {
            after.push(ids(&st.search(&query).await.unwrap()).join(","));
        }
        assert_eq!(after, before);
        // Writes after the migration are indexed and found.
        st.apply(&[put(
            "Patient",
            "p9",
            json!({"resourceType": "Patient", "birthDate": "1999-09-09",
                   "identifier": [{"system": "urn:mrn", "value": "M9"}]}),
        )])
        .await
        .unwrap();
        let page = st
            .search(&q(
                "Patient",
                vec![("birthdate", vec![d(Prefix::Eq, "1999")])],
            ))
            .await
            .unwrap();
        assert_eq!(ids(&page), ["p9"]);
    }

    #[test]
    fn a_version_1_file_is_migrated_and_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(crate::store::sqlite::MIGRATION_1)
                .unwrap();
            conn.execute_batch(
                r#"INSERT INTO resources VALUES ('Patient', 'a', 1, '2024-01-01T00:00:00.000Z', 0,
                     '{"resourceType":"Patient","id":"a","gender":"male"}');
                   PRAGMA user_version = 1;"#,
            )
            .unwrap();
        }
        let st = SqliteStore::open(&path).unwrap();
        let conn = st.lock().unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM search_index WHERE id = 'a' AND param = 'gender'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }
}
