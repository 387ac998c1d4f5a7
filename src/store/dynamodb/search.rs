//! Search and paged history for the DynamoDB store: index items in the store's own table,
//! written in the same `TransactWriteItems` as the version they index, read by partition key
//! (`Query`, never `Scan`), with the same answers as the SQLite store.
//!
//! # Items (same table as the resources)
//!
//! - Search index: one item per indexed value of each live resource
//!   ([`crate::store::search::index_entries`]), `pk = "ix#<Type>#<param>"`,
//!   `sk = <key value> \x01 <id> \x01 <n>` (`n` numbers the resource's values of that parameter,
//!   so keys are unique whatever the values hold). The key value is what queries narrow on:
//!   a token's code, a string's lower-cased form, a reference's id, a date range's low end —
//!   and for dates a second item under `ix#<Type>#<param>>` keyed by the high end, so every
//!   prefix (`lt`, `gt`, `sa`, `eb`…) is a key range on one of the two. Key values are cut at
//!   [`MAX_KEY_VALUE_BYTES`] (DynamoDB sort keys hold 1 KB); the full value is in attributes
//!   (`code`/`system`, `raw` (a string as written), `low`/`high`, `ref`/`rtype`, and `id`), and every
//!   candidate a key condition returns is checked exactly in Rust
//!   ([`crate::store::search::Criterion::matches`]), so narrowing is only ever a superset.
//! - `pk = "ix#<Type>#_all"`, `sk = <id>`: every live resource of a type (unfiltered searches,
//!   `_id`); `pk = "ix#<Type>#_lastUpdated"`, `sk = <lastUpdated> \x01 <id> \x01 0`.
//! - Type history: `pk = "hx#<Type>"`, `sk = <lastUpdated> \x01 <id> \x01 <version, 10
//!   digits>`, one per version, written with the version's history item and never changed;
//!   a type history page is a descending `Query` on it, then a `BatchGetItem` of the versions.
//!
//! The current item lists its index keys (`ix`: a list of `[pk, sk]`), so the transaction that
//! makes the next version (or the delete) removes exactly those not rewritten, even if the
//! indexing rules changed meanwhile. A resource has at most [`MAX_INDEX_ITEMS`] index items, so
//! one version's writes (old and new index items, current, history, pointer) fit one
//! transaction; a resource with more indexed values is refused by name.
//!
//! # Reads
//!
//! A search runs one consistent `Query` per value of each parameter (narrowed by its key
//! condition), intersects the parameters' id sets in memory, and counts the total from them;
//! the page is the ids after the cursor in id order (the SQLite store's order and cursor
//! form, `i:<id>`), read with one consistent `BatchGetItem` of their current items. A resource
//! that changed between the index read and the page read is checked again against the query
//! from its current content, and left out if it no longer matches (the page is then shorter
//! than `_count`; the total is the index's). Every index partition of a type and parameter is
//! one DynamoDB partition key: at very high write rates per type (a bulk load at thousands of
//! resources a second) these are hot keys; sharding them is future work.

use std::collections::{BTreeSet, HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Select};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    DynamoStore, HISTORY_PREFIX, MAX_ATTEMPTS, PK, SK, VERSION_DIGITS, backoff, history_sk,
    parse_history, pk, string_attr,
};
use crate::model::ResourceRef;
use crate::store::search::{
    Criterion, Filter, HistoryPage, HistoryQuery, IndexValue, Prefix, SearchPage, SearchQuery,
    StringMode, index_entries, resource_matches,
};
use crate::store::{FhirStore, StoreError, StoredVersion, format_time};

pub(super) type Item = HashMap<String, AttributeValue>;

/// Prefix of search index partition keys.
pub const INDEX_PREFIX: &str = "ix#";
/// Prefix of type history partition keys.
pub const TYPE_HISTORY_PREFIX: &str = "hx#";
/// Separates the parts of index and type history sort keys; below every character a value
/// holds in practice, so `value + SEP` sorts right after `value`.
pub const SEP: char = '\u{1}';
/// Longest key value in an index sort key, in bytes.
pub const MAX_KEY_VALUE_BYTES: usize = 512;
/// Most index items one resource may have (two per date value; `_all` and `_lastUpdated`
/// included): twice this plus the current, history and type history items fits the 100 items
/// of one transaction.
pub const MAX_INDEX_ITEMS: usize = 45;
/// The pseudo-parameter listing every live resource of a type.
const ALL: &str = "_all";
const LAST_UPDATED: &str = "_lastUpdated";
/// Keys in one `BatchGetItem` call (DynamoDB's limit).
const MAX_BATCH_GET_KEYS: usize = 100;

pub(super) fn index_pk(resource_type: &str, param: &str) -> String {
    format!("{INDEX_PREFIX}{resource_type}#{param}")
}

/// The partition of a date parameter keyed by the range's high end.
fn high_param(param: &str) -> String {
    format!("{param}>")
}

/// `s` cut to at most [`MAX_KEY_VALUE_BYTES`] at a character boundary, and whether it was cut.
fn key_value(s: &str) -> (&str, bool) {
    if s.len() <= MAX_KEY_VALUE_BYTES {
        return (s, false);
    }
    let mut end = MAX_KEY_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

fn index_sk(value: &str, id: &str, n: usize) -> String {
    format!("{}{SEP}{id}{SEP}{n}", key_value(value).0)
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn item(pk: String, sk: String, id: &str) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(pk)),
        (SK.to_owned(), AttributeValue::S(sk)),
        ("id".to_owned(), s(id)),
    ])
}

/// The index items of a resource version: none for a delete.
pub(super) fn index_items(
    target: &ResourceRef,
    content: Option<&Value>,
    last_updated: DateTime<Utc>,
) -> Vec<Item> {
    let Some(content) = content else {
        return Vec::new();
    };
    let (t, id) = (&target.resource_type, &target.id);
    let lu = format_time(last_updated);
    let mut out = vec![item(index_pk(t, ALL), id.clone(), id)];
    let mut last = item(index_pk(t, LAST_UPDATED), index_sk(&lu, id, 0), id);
    last.insert("low".into(), s(&lu));
    last.insert("high".into(), s(&lu));
    out.push(last);
    let mut seen = HashSet::new();
    let mut ordinal: HashMap<&str, usize> = HashMap::new();
    for entry in index_entries(content) {
        if !seen.insert(entry.clone()) {
            continue;
        }
        let n = ordinal.entry(entry.param).or_default();
        let this = *n;
        *n += 1;
        let pk = index_pk(t, entry.param);
        match entry.value {
            IndexValue::Token { system, code } => {
                let mut i = item(pk, index_sk(&code, id, this), id);
                i.insert("code".into(), AttributeValue::S(code));
                if let Some(system) = system {
                    i.insert("system".into(), AttributeValue::S(system));
                }
                out.push(i);
            }
            IndexValue::String { normalized, exact } => {
                // The lower-cased form is derived again when read: a long value is stored once.
                let mut i = item(pk, index_sk(&normalized, id, this), id);
                i.insert("raw".into(), AttributeValue::S(exact));
                out.push(i);
            }
            IndexValue::Date { low, high } => {
                let mut by_low = item(pk, index_sk(&low, id, this), id);
                let mut by_high = item(
                    index_pk(t, &high_param(entry.param)),
                    index_sk(&high, id, this),
                    id,
                );
                for i in [&mut by_low, &mut by_high] {
                    i.insert("low".into(), s(&low));
                    i.insert("high".into(), s(&high));
                }
                out.push(by_low);
                out.push(by_high);
            }
            IndexValue::Reference {
                resource_type,
                id: rid,
            } => {
                let mut i = item(pk, index_sk(&rid, id, this), id);
                i.insert("ref".into(), AttributeValue::S(rid));
                if let Some(rt) = resource_type {
                    i.insert("rtype".into(), AttributeValue::S(rt));
                }
                out.push(i);
            }
        }
    }
    out
}

/// The type history pointer of one version.
pub(super) fn type_history_item(
    target: &ResourceRef,
    version: i64,
    last_updated: DateTime<Utc>,
) -> Item {
    let mut i = item(
        format!("{TYPE_HISTORY_PREFIX}{}", target.resource_type),
        type_history_sk(&format_time(last_updated), &target.id, version),
        &target.id,
    );
    i.insert("version".into(), AttributeValue::N(version.to_string()));
    i
}

fn type_history_sk(last_updated: &str, id: &str, version: i64) -> String {
    format!(
        "{last_updated}{SEP}{id}{SEP}{version:0width$}",
        width = VERSION_DIGITS
    )
}

/// The key of an item, as the current item's `ix` list holds it.
pub(super) fn item_key(i: &Item) -> (String, String) {
    (
        string_attr(i, PK).unwrap_or_default().to_owned(),
        string_attr(i, SK).unwrap_or_default().to_owned(),
    )
}

/// The value an index item holds, for the exact check.
fn indexed_value(i: &Item) -> Option<IndexValue> {
    let get = |n: &str| string_attr(i, n).map(str::to_owned);
    if let Some(code) = get("code") {
        return Some(IndexValue::Token {
            system: get("system"),
            code,
        });
    }
    if let Some(exact) = get("raw") {
        return Some(IndexValue::String {
            normalized: exact.to_lowercase(),
            exact,
        });
    }
    if let (Some(low), Some(high)) = (get("low"), get("high")) {
        return Some(IndexValue::Date { low, high });
    }
    get("ref").map(|id| IndexValue::Reference {
        resource_type: get("rtype"),
        id,
    })
}

/// A key condition on the sort key of an index partition: a superset of the matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Range {
    All,
    BeginsWith(String),
    /// Inclusive.
    Between(String, String),
    Below(String),
    Above(String),
}

/// `value + SEP` when the value fits a key whole (an exact key value), else its cut prefix.
fn exact_key(value: &str) -> String {
    match key_value(value) {
        (v, false) => format!("{v}{SEP}"),
        (v, true) => v.to_owned(),
    }
}

/// Just above every sort key whose fixed-length (instant) key value is `v`.
fn after_instant(v: &str) -> String {
    format!("{v}\u{2}")
}

/// The partition (parameter, or its high-end twin) and key range that hold every index item a
/// criterion can match.
fn narrowing(param: &str, c: &Criterion) -> (String, Range) {
    let p = param.to_owned();
    match c {
        Criterion::Token {
            code: Some(code), ..
        } => (p, Range::BeginsWith(exact_key(code))),
        Criterion::Token { code: None, .. } => (p, Range::All),
        Criterion::String { value, mode } => {
            let lower = value.to_lowercase();
            match mode {
                StringMode::Prefix => (p, Range::BeginsWith(key_value(&lower).0.to_owned())),
                StringMode::Exact => (p, Range::BeginsWith(exact_key(&lower))),
                StringMode::Contains => (p, Range::All),
            }
        }
        Criterion::Reference { id, .. } => (p, Range::BeginsWith(exact_key(id))),
        Criterion::Date { prefix, low, high } => {
            let by_high = |r| {
                if param == LAST_UPDATED {
                    // low = high: one partition serves both.
                    (p.clone(), r)
                } else {
                    (high_param(param), r)
                }
            };
            match prefix {
                Prefix::Eq => (p.clone(), Range::Between(low.clone(), after_instant(high))),
                Prefix::Ne => (p.clone(), Range::All),
                Prefix::Lt => (p.clone(), Range::Below(low.clone())),
                Prefix::Le => (p.clone(), Range::Below(after_instant(high))),
                Prefix::Sa => (p.clone(), Range::Above(after_instant(high))),
                Prefix::Gt => by_high(Range::Above(after_instant(high))),
                Prefix::Ge => by_high(Range::Above(low.clone())),
                Prefix::Eb => by_high(Range::Below(low.clone())),
            }
        }
        Criterion::Id(id) => (ALL.to_owned(), Range::Between(id.clone(), id.clone())),
    }
}

fn bad_cursor(cursor: &str) -> StoreError {
    StoreError::Invalid {
        target: "page cursor".to_owned(),
        reason: format!("{} characters that this store did not make", cursor.len()),
    }
}

/// A history cursor `h:<lastUpdated>|<version>|<id>` (the SQLite store's form).
fn parse_history_cursor(c: &str) -> Result<(String, i64, String), StoreError> {
    c.strip_prefix("h:")
        .and_then(|rest| {
            let (time, rest) = rest.split_once('|')?;
            let (version, id) = rest.split_once('|')?;
            Some((time.to_owned(), version.parse::<i64>().ok()?, id.to_owned()))
        })
        .ok_or_else(|| bad_cursor(c))
}

fn history_cursor(v: &StoredVersion) -> String {
    format!(
        "h:{}|{}|{}",
        format_time(v.last_updated),
        v.version_id,
        v.target.id
    )
}

impl DynamoStore {
    /// Every item of partition `pk` in `range`, in key order (descending if `!forward`), at
    /// most `limit` (`None`: all), with consistent reads.
    async fn query_items(
        &self,
        pk: &str,
        range: &Range,
        forward: bool,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(pk))
                .scan_index_forward(forward)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            let sk_cond = match range {
                Range::All => None,
                Range::BeginsWith(v) => {
                    q = q.expression_attribute_values(":a", s(v));
                    Some("begins_with(#sk, :a)")
                }
                Range::Between(a, b) => {
                    q = q
                        .expression_attribute_values(":a", s(a))
                        .expression_attribute_values(":b", s(b));
                    Some("#sk BETWEEN :a AND :b")
                }
                Range::Below(v) => {
                    q = q.expression_attribute_values(":a", s(v));
                    Some("#sk < :a")
                }
                Range::Above(v) => {
                    q = q.expression_attribute_values(":a", s(v));
                    Some("#sk > :a")
                }
            };
            q = match sk_cond {
                Some(c) => q
                    .key_condition_expression(format!("#pk = :pk AND {c}"))
                    .expression_attribute_names("#sk", SK),
                None => q.key_condition_expression("#pk = :pk"),
            };
            if let Some(limit) = limit {
                let left = limit.saturating_sub(out.len()).max(1);
                q = q.limit(i32::try_from(left).unwrap_or(i32::MAX));
            }
            let answer = q.send().await.map_err(|e| self.sdk_err("Query", e))?;
            out.extend(answer.items().iter().cloned());
            if limit.is_some_and(|l| out.len() >= l) {
                out.truncate(limit.unwrap_or(usize::MAX));
                break;
            }
            match answer.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// How many items partition `pk` holds in `range` (`Select=COUNT`, paged).
    async fn count_items(&self, pk: &str, range: &Range) -> Result<u64, StoreError> {
        let mut total = 0u64;
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .select(Select::Count)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(pk))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            q = match range {
                Range::Above(v) => q
                    .key_condition_expression("#pk = :pk AND #sk > :a")
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":a", s(v)),
                _ => q.key_condition_expression("#pk = :pk"),
            };
            let answer = q.send().await.map_err(|e| self.sdk_err("Query", e))?;
            total += u64::try_from(answer.count()).unwrap_or_default();
            match answer.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(total)
    }

    /// The items at `keys` (consistent reads), by key; missing items are absent. Throttled
    /// (unprocessed) keys are retried with backoff, bounded. The one BatchGetItem loop of
    /// the store: reads of current versions use it too.
    pub(super) async fn batch_get(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), Item>, StoreError> {
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_BATCH_GET_KEYS) {
            let mut request = KeysAndAttributes::builder().consistent_read(true);
            for (p, k) in chunk {
                request = request.keys(HashMap::from([
                    (PK.to_owned(), s(p)),
                    (SK.to_owned(), s(k)),
                ]));
            }
            let mut pending = Some(
                request
                    .build()
                    .map_err(|e| StoreError::Unavailable(format!("table {}: {e}", self.table)))?,
            );
            let mut attempt = 1;
            while let Some(request) = pending.take() {
                let answer = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| self.sdk_err("BatchGetItem", e))?;
                for i in answer
                    .responses()
                    .and_then(|r| r.get(&self.table))
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    out.insert(item_key(i), i.clone());
                }
                if let Some(rest) = answer
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .filter(|k| !k.keys().is_empty())
                    .cloned()
                {
                    if attempt >= MAX_ATTEMPTS {
                        return Err(StoreError::Unavailable(format!(
                            "table {}: BatchGetItem left keys unprocessed after {MAX_ATTEMPTS} attempts",
                            self.table
                        )));
                    }
                    backoff(attempt).await;
                    attempt += 1;
                    pending = Some(rest);
                }
            }
        }
        Ok(out)
    }

    /// The ids of live resources of `resource_type` matching one filter (its values OR-ed).
    async fn filter_ids(
        &self,
        resource_type: &str,
        f: &Filter,
    ) -> Result<BTreeSet<String>, StoreError> {
        let mut ids = BTreeSet::new();
        for c in &f.any_of {
            let (param, range) = narrowing(&f.param, c);
            let items = self
                .query_items(&index_pk(resource_type, &param), &range, true, None)
                .await?;
            for i in &items {
                let Some(id) = string_attr(i, "id") else {
                    continue;
                };
                let hit = match c {
                    Criterion::Id(want) => want == id,
                    _ => indexed_value(i).is_some_and(|v| c.matches(&v)),
                };
                if hit {
                    ids.insert(id.to_owned());
                }
            }
        }
        Ok(ids)
    }

    pub(super) async fn search_page(&self, q: &SearchQuery) -> Result<SearchPage, StoreError> {
        let after = match &q.cursor {
            None => None,
            Some(c) => Some(
                c.strip_prefix("i:")
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| bad_cursor(c))?
                    .to_owned(),
            ),
        };
        let all = index_pk(&q.resource_type, ALL);
        let (total, candidates) = if q.filters.is_empty() {
            let total = self.count_items(&all, &Range::All).await?;
            if q.count == 0 {
                (total, Vec::new())
            } else {
                let range = after.clone().map_or(Range::All, Range::Above);
                let items = self
                    .query_items(&all, &range, true, Some(q.count + 1))
                    .await?;
                let ids = items
                    .iter()
                    .filter_map(|i| string_attr(i, "id").map(str::to_owned))
                    .collect();
                (total, ids)
            }
        } else {
            let mut set: Option<BTreeSet<String>> = None;
            for f in &q.filters {
                if set.as_ref().is_some_and(BTreeSet::is_empty) {
                    break;
                }
                let ids = self.filter_ids(&q.resource_type, f).await?;
                set = Some(match set {
                    None => ids,
                    Some(prev) => prev.intersection(&ids).cloned().collect(),
                });
            }
            let set = set.unwrap_or_default();
            let total = u64::try_from(set.len()).unwrap_or(u64::MAX);
            let ids: Vec<String> = set
                .into_iter()
                .filter(|id| after.as_ref().is_none_or(|a| id > a))
                .take(if q.count == 0 { 0 } else { q.count + 1 })
                .collect();
            (total, ids)
        };
        let mut page: Vec<String> = candidates;
        let next = if page.len() > q.count {
            page.truncate(q.count);
            page.last().map(|id| format!("i:{id}"))
        } else {
            None
        };
        let matches = self.current_matches(&q.resource_type, &page, q).await?;
        Ok(SearchPage {
            total,
            matches,
            next,
        })
    }

    /// The current versions of `ids`, in that order, that are live and still match `q`.
    async fn current_matches(
        &self,
        resource_type: &str,
        ids: &[String],
        q: &SearchQuery,
    ) -> Result<Vec<StoredVersion>, StoreError> {
        let targets: Vec<ResourceRef> = ids
            .iter()
            .map(|id| ResourceRef {
                resource_type: resource_type.to_owned(),
                id: id.clone(),
            })
            .collect();
        let currents = self.read_currents(&targets).await?;
        let mut out = Vec::with_capacity(ids.len());
        for target in &targets {
            let Some(current) = currents.get(target).filter(|c| c.live()) else {
                continue;
            };
            let v = super::stored_version(
                target,
                current.version,
                current.last_updated,
                current.deleted,
                current.content.as_deref(),
                current.lineage.as_deref(),
            )?;
            let still = v.resource.as_ref().is_some_and(|r| {
                resource_matches(r, &target.id, &format_time(v.last_updated), &q.filters)
            });
            if still {
                out.push(v);
            } else {
                tracing::debug!(table = %self.table, "search: a resource changed while its page was read");
            }
        }
        Ok(out)
    }

    pub(super) async fn history_page_of(
        &self,
        q: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let cursor = q.cursor.as_deref().map(parse_history_cursor).transpose()?;
        let since = q.since.map(format_time);
        if let Some(id) = &q.id {
            let target = ResourceRef {
                resource_type: q.resource_type.clone(),
                id: id.clone(),
            };
            let all: Vec<StoredVersion> = self
                .history(&target)
                .await?
                .into_iter()
                .filter(|v| {
                    since
                        .as_ref()
                        .is_none_or(|s| format_time(v.last_updated) >= *s)
                })
                .collect();
            let total = u64::try_from(all.len()).unwrap_or(u64::MAX);
            // The SQLite store's order: (lastUpdated, id, version) descending.
            let mut versions: Vec<StoredVersion> = all
                .into_iter()
                .filter(|v| {
                    cursor.as_ref().is_none_or(|(t, ver, i)| {
                        let n = v.version_id.parse::<i64>().unwrap_or_default();
                        (format_time(v.last_updated), &v.target.id, n) < (t.clone(), i, *ver)
                    })
                })
                .take(if q.count == 0 { 0 } else { q.count + 1 })
                .collect();
            let next = page_next(&mut versions, q.count);
            return Ok(HistoryPage {
                total,
                versions,
                next,
            });
        }
        let partition = format!("{TYPE_HISTORY_PREFIX}{}", q.resource_type);
        let since_range = since.clone().map_or(Range::All, Range::Above);
        let total = self.count_items(&partition, &since_range).await?;
        if q.count == 0 {
            return Ok(HistoryPage {
                total,
                versions: Vec::new(),
                next: None,
            });
        }
        // Sort keys start with the instant, so `> since` is `>= since` on instants, and
        // `< cursor` continues right after the last version of the page before.
        let cursor_sk = cursor.as_ref().map(|(t, v, i)| type_history_sk(t, i, *v));
        let range = match (&since, &cursor_sk) {
            (None, None) => Range::All,
            (Some(s), None) => Range::Above(s.clone()),
            (_, Some(c)) => Range::Below(c.clone()),
        };
        let mut pointers = self
            .query_items(&partition, &range, false, Some(q.count + 1))
            .await?;
        if let Some(s) = &since {
            // Descending from the cursor: stop at the first one older than `since`.
            pointers.retain(|p| string_attr(p, SK).is_some_and(|k| k > s.as_str()));
        }
        let mut keys = Vec::with_capacity(pointers.len());
        for p in &pointers {
            let id = string_attr(p, "id").unwrap_or_default();
            let version: i64 = match p.get("version") {
                Some(AttributeValue::N(n)) => n.parse().unwrap_or_default(),
                _ => 0,
            };
            let target = ResourceRef {
                resource_type: q.resource_type.clone(),
                id: id.to_owned(),
            };
            keys.push((target, version));
        }
        let wanted: Vec<(String, String)> =
            keys.iter().map(|(t, v)| (pk(t), history_sk(*v))).collect();
        let items = self.batch_get(&wanted).await?;
        let mut versions = Vec::with_capacity(keys.len());
        for ((target, version), key) in keys.iter().zip(&wanted) {
            let Some(i) = items.get(key) else {
                return Err(StoreError::Corrupt(format!(
                    "{target}: type history names version {version}, which is missing"
                )));
            };
            versions.push(parse_history(target, i)?);
        }
        let next = page_next(&mut versions, q.count);
        Ok(HistoryPage {
            total,
            versions,
            next,
        })
    }
}

/// Cuts a page read one past `count` and gives the cursor after its last version.
fn page_next(versions: &mut Vec<StoredVersion>, count: usize) -> Option<String> {
    if versions.len() > count {
        versions.truncate(count);
        versions.last().map(history_cursor)
    } else {
        None
    }
}

/// Whether a sort key belongs to a version's history item (and not to an index item that
/// happens to start the same way).
pub(super) fn is_history_key(pk: &str, sk: &str) -> bool {
    !pk.starts_with(INDEX_PREFIX)
        && !pk.starts_with(TYPE_HISTORY_PREFIX)
        && sk.starts_with(HISTORY_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::search::date_range;
    use serde_json::json;

    fn target(id: &str) -> ResourceRef {
        ResourceRef {
            resource_type: "Patient".into(),
            id: id.into(),
        }
    }

    fn now() -> DateTime<Utc> {
        "2025-01-01T00:00:00.000Z".parse().unwrap()
    }

    #[test]
    fn index_items_have_unique_keys_and_round_trip_their_values() {
        let p = json!({"resourceType": "Patient", "identifier": [{"system": "urn:a|b", "value": "1"},
            {"system": "urn:a", "value": "b|1"}], "name": [{"family": "Ann", "given": ["Ann"], "text": "Ann"}],
            "birthDate": "1970", "gender": "female"});
        let items = index_items(&target("p1"), Some(&p), now());
        let keys: HashSet<_> = items.iter().map(item_key).collect();
        assert_eq!(keys.len(), items.len(), "keys are unique");
        // _all, _lastUpdated, 2 identifiers, name (once: deduplicated), family, given,
        // birthdate twice, gender.
        assert_eq!(items.len(), 10);
        for i in &items {
            assert_eq!(string_attr(i, "id"), Some("p1"));
            let (pk, _) = item_key(i);
            if !pk.ends_with(ALL) {
                assert!(indexed_value(i).is_some(), "{pk}");
            }
        }
        assert!(index_items(&target("p1"), None, now()).is_empty());
    }

    #[test]
    fn long_values_are_cut_in_keys_but_kept_whole() {
        let long = "é".repeat(400);
        let p = json!({"resourceType": "Patient", "name": [{"family": long}]});
        let items = index_items(&target("p1"), Some(&p), now());
        let family = items
            .iter()
            .find(|i| item_key(i).0.ends_with("#family"))
            .unwrap();
        assert!(item_key(family).1.len() < MAX_KEY_VALUE_BYTES + 100);
        assert_eq!(string_attr(family, "raw"), Some(long.as_str()));
        let (cut, was_cut) = key_value(&long);
        assert!(was_cut && long.starts_with(cut));
        assert_eq!(exact_key(&long), cut);
        assert_eq!(exact_key("ab"), "ab\u{1}");
    }

    /// The key range of every prefix holds every item the prefix matches: checked over a
    /// grid of stored ranges and search values, with keys compared as DynamoDB does (bytes).
    #[test]
    fn date_ranges_narrow_to_supersets() {
        let values = [
            "1969",
            "1970",
            "1970-03",
            "1970-03-01",
            "1971",
            "2000-01-01T10:00:00Z",
        ];
        let stored: Vec<(String, String)> = values.iter().map(|v| date_range(v).unwrap()).collect();
        for prefix in [
            Prefix::Eq,
            Prefix::Ne,
            Prefix::Lt,
            Prefix::Le,
            Prefix::Gt,
            Prefix::Ge,
            Prefix::Sa,
            Prefix::Eb,
        ] {
            for v in values {
                let (low, high) = date_range(v).unwrap();
                let c = Criterion::Date {
                    prefix,
                    low: low.clone(),
                    high: high.clone(),
                };
                let (param, range) = narrowing("birthdate", &c);
                for (lo, hi) in &stored {
                    let value = IndexValue::Date {
                        low: lo.clone(),
                        high: hi.clone(),
                    };
                    if !c.matches(&value) {
                        continue;
                    }
                    let key = if param.ends_with('>') {
                        index_sk(hi, "p1", 0)
                    } else {
                        index_sk(lo, "p1", 0)
                    };
                    let inside = match &range {
                        Range::All => true,
                        Range::BeginsWith(p) => key.starts_with(p.as_str()),
                        Range::Between(a, b) => key >= *a && key <= *b,
                        Range::Below(b) => key < *b,
                        Range::Above(a) => key > *a,
                    };
                    assert!(inside, "{prefix:?} {v}: [{lo}, {hi}] outside {range:?}");
                }
            }
        }
    }

    #[test]
    fn history_keys_are_told_from_index_keys_that_look_alike() {
        assert!(is_history_key("Patient/p1", "v#0000000001"));
        assert!(!is_history_key("ix#Patient#identifier", "v#1\u{1}p1\u{1}0"));
        assert!(!is_history_key("hx#Patient", "2024"));
        assert!(!is_history_key("Patient/p1", "current"));
        for bad in ["x", "h:", "h:2024|x|p1", "h:2024|1"] {
            assert!(parse_history_cursor(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_history_cursor("h:2024|3|p1").unwrap(),
            ("2024".into(), 3, "p1".into())
        );
    }
}
