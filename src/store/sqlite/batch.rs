//! `apply` of a batch of changes with set-based reads and multi-row writes.
//!
//! The rules are those of [`super::apply_change`] (stale-sequence skip, no-op on unchanged
//! canonical content, versions, history, outbox event, search index), applied in order to
//! each change as if one at a time; what differs is how the rows move:
//! - the current rows and the sequence marks of every target of the batch are read first,
//!   [`CHUNK`] ids per statement, and kept in memory; a change reads and updates this state,
//!   so a target changed twice in one batch sees its first change;
//! - the rows to write are gathered (history and outbox in order; for `resources`, marks and
//!   the search index only the final state of each target) and written at the end with
//!   multi-row statements of [`CHUNK`] rows, all in the caller's transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ToSql};
use serde_json::Value;

use super::search::{self, CHUNK, IndexRow, multi_values};
use super::{Current, outcome, parse_time, sql_err, stored_canonical};
use crate::model::{
    ChangeKind, Lineage, PublishAction, PublishOutcome, ResourceChange, ResourceOp, ResourceRef,
    Sequence,
};
use crate::store::{
    StoreError, canonical_content, change_event, check_ref, format_time, invalid, with_meta,
};

/// A sequence mark's key: the resource and the source entity.
type MarkKey = (ResourceRef, String, String);

/// A `resources` row to write.
struct ResourceRow {
    version: i64,
    last_updated: String,
    deleted: bool,
    content: Option<String>,
}

/// A `history` row to write.
struct HistoryRow {
    target: ResourceRef,
    version: i64,
    last_updated: String,
    deleted: bool,
    content: Option<String>,
    lineage: String,
}

#[derive(Default)]
struct Batch {
    /// The current row of each target (`None`: never held), as of the changes applied so far.
    current: HashMap<ResourceRef, Option<Current>>,
    /// Targets that had a row before the batch (their index rows in the file are replaced).
    held_before: HashSet<ResourceRef>,
    marks: HashMap<MarkKey, Sequence>,
    marks_written: HashMap<MarkKey, String>,
    resources: HashMap<ResourceRef, ResourceRow>,
    history: Vec<HistoryRow>,
    /// The index rows of each target whose index changes (empty: a delete).
    index: HashMap<ResourceRef, Vec<IndexRow>>,
    outbox: Vec<String>,
}

/// Applies `changes` in order within `tx` (see the module comment).
pub(super) fn apply_batch(
    tx: &Connection,
    changes: &[ResourceChange],
    now: DateTime<Utc>,
) -> Result<Vec<PublishOutcome>, StoreError> {
    // Bad content is an error even when the change turns out to be stale, and before
    // anything is read.
    let mut prepared = Vec::with_capacity(changes.len());
    for change in changes {
        let target = &change.target;
        check_ref(target)?;
        let content = match &change.op {
            ResourceOp::Upsert { resource } => Some(canonical_content(target, resource)?),
            ResourceOp::Delete => None,
        };
        let lineage_text = serde_json::to_string(&change.lineage)
            .map_err(|e| invalid(target, format!("lineage cannot be stored: {e}")))?;
        prepared.push((change, content, lineage_text));
    }
    let mut batch = Batch::default();
    batch.load(tx, changes)?;
    let mut outcomes = Vec::with_capacity(changes.len());
    for (change, content, lineage_text) in prepared {
        outcomes.push(batch.apply(&change.target, content, &change.lineage, lineage_text, now)?);
    }
    batch.flush(tx)?;
    Ok(outcomes)
}

impl Batch {
    /// Reads the current rows and marks of every target, [`CHUNK`] ids a statement (the
    /// last chunk padded with its last id, so one cached statement serves every chunk).
    fn load(&mut self, tx: &Connection, changes: &[ResourceChange]) -> Result<(), StoreError> {
        let mut by_type: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut seen: HashSet<&ResourceRef> = HashSet::new();
        for change in changes {
            if seen.insert(&change.target) {
                by_type
                    .entry(change.target.resource_type.as_str())
                    .or_default()
                    .push(change.target.id.as_str());
                self.current.insert(change.target.clone(), None);
            }
        }
        let ids_in = in_list(CHUNK);
        let mut current = tx
            .prepare_cached(&format!(
                "SELECT id, version_id, last_updated, deleted, content FROM resources
                 WHERE resource_type = ?1 AND id IN ({ids_in})"
            ))
            .map_err(sql_err)?;
        let mut marks = tx
            .prepare_cached(&format!(
                "SELECT id, source, entity, sequence FROM sequences
                 WHERE resource_type = ?1 AND id IN ({ids_in})"
            ))
            .map_err(sql_err)?;
        for (resource_type, ids) in by_type {
            for chunk in ids.chunks(CHUNK) {
                let mut values: Vec<&dyn ToSql> = Vec::with_capacity(CHUNK + 1);
                values.push(&resource_type);
                for i in 0..CHUNK {
                    values.push(chunk.get(i).or(chunk.last()).unwrap_or(&""));
                }
                let mut rows = current.query(values.as_slice()).map_err(sql_err)?;
                while let Some(r) = rows.next().map_err(sql_err)? {
                    let target = ResourceRef {
                        resource_type: resource_type.to_owned(),
                        id: r.get(0).map_err(sql_err)?,
                    };
                    let last_updated: String = r.get(2).map_err(sql_err)?;
                    let row = Current {
                        version: r.get(1).map_err(sql_err)?,
                        last_updated: parse_time(&target, &last_updated)?,
                        deleted: r.get(3).map_err(sql_err)?,
                        content: r.get(4).map_err(sql_err)?,
                    };
                    self.held_before.insert(target.clone());
                    self.current.insert(target, Some(row));
                }
                let mut rows = marks.query(values.as_slice()).map_err(sql_err)?;
                while let Some(r) = rows.next().map_err(sql_err)? {
                    let target = ResourceRef {
                        resource_type: resource_type.to_owned(),
                        id: r.get(0).map_err(sql_err)?,
                    };
                    let text: String = r.get(3).map_err(sql_err)?;
                    let sequence = Sequence::parse(&text).map_err(|e| {
                        StoreError::Corrupt(format!("{target}: stored sequence: {e}"))
                    })?;
                    let key = (
                        target,
                        r.get(1).map_err(sql_err)?,
                        r.get(2).map_err(sql_err)?,
                    );
                    self.marks.insert(key, sequence);
                }
            }
        }
        Ok(())
    }

    /// [`super::apply_canonical`]'s rules on the batch's state.
    fn apply(
        &mut self,
        target: &ResourceRef,
        content: Option<Value>,
        lineage: &Lineage,
        lineage_text: String,
        now: DateTime<Utc>,
    ) -> Result<PublishOutcome, StoreError> {
        let current = self.current.get(target).and_then(Option::as_ref);
        let key = (
            target.clone(),
            lineage.source.clone(),
            lineage.entity.clone(),
        );
        if self
            .marks
            .get(&key)
            .is_some_and(|mark| lineage.sequence < *mark)
        {
            return Ok(outcome(target, PublishAction::Stale, current));
        }
        self.marks_written
            .insert(key.clone(), lineage.sequence.as_str().to_owned());
        self.marks.insert(key, lineage.sequence.clone());

        let live = current.filter(|c| !c.deleted);
        let next_version = current.map_or(1, |c| c.version + 1);
        let last_updated = current.map_or(now, |c| now.max(c.last_updated));
        let (action, stored) = match content {
            Some(content) => {
                if let Some(live) = live
                    && stored_canonical(target, live)? == content
                {
                    return Ok(outcome(target, PublishAction::Unchanged, current));
                }
                let action = if live.is_some() {
                    PublishAction::Updated
                } else {
                    PublishAction::Created
                };
                (action, Some(with_meta(content, next_version, last_updated)))
            }
            None => {
                if live.is_none() {
                    return Ok(outcome(target, PublishAction::Unchanged, current));
                }
                (PublishAction::Deleted, None)
            }
        };

        let content_text = stored.as_ref().map(Value::to_string);
        let time_text = format_time(last_updated);
        let deleted = stored.is_none();
        self.index.insert(
            target.clone(),
            stored.as_ref().map(search::index_rows).unwrap_or_default(),
        );
        self.history.push(HistoryRow {
            target: target.clone(),
            version: next_version,
            last_updated: time_text.clone(),
            deleted,
            content: content_text.clone(),
            lineage: lineage_text,
        });
        self.resources.insert(
            target.clone(),
            ResourceRow {
                version: next_version,
                last_updated: time_text,
                deleted,
                content: content_text.clone(),
            },
        );
        self.current.insert(
            target.clone(),
            Some(Current {
                version: next_version,
                last_updated,
                deleted,
                content: content_text,
            }),
        );

        let version_id = next_version.to_string();
        if let Some(kind) = ChangeKind::for_action(action) {
            let event = change_event(kind, target, &version_id, last_updated, lineage);
            let event_text = serde_json::to_string(&event)
                .map_err(|e| invalid(target, format!("change event cannot be stored: {e}")))?;
            self.outbox.push(event_text);
        }
        Ok(PublishOutcome {
            target: target.clone(),
            action,
            version_id: Some(version_id),
            last_updated: Some(last_updated),
        })
    }

    /// Writes the gathered rows.
    fn flush(self, tx: &Connection) -> Result<(), StoreError> {
        let history: Vec<[&dyn ToSql; 7]> = self
            .history
            .iter()
            .map(|h| {
                [
                    &h.target.resource_type as &dyn ToSql,
                    &h.target.id,
                    &h.version,
                    &h.last_updated,
                    &h.deleted,
                    &h.content,
                    &h.lineage,
                ]
            })
            .collect();
        insert_rows(
            tx,
            "INSERT INTO history (resource_type, id, version_id, last_updated, deleted, content, lineage)",
            "",
            &history,
        )?;
        let resources: Vec<[&dyn ToSql; 6]> = self
            .resources
            .iter()
            .map(|(t, r)| {
                [
                    &t.resource_type as &dyn ToSql,
                    &t.id,
                    &r.version,
                    &r.last_updated,
                    &r.deleted,
                    &r.content,
                ]
            })
            .collect();
        insert_rows(
            tx,
            "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, content)",
            " ON CONFLICT (resource_type, id) DO UPDATE SET
               version_id = excluded.version_id, last_updated = excluded.last_updated,
               deleted = excluded.deleted, content = excluded.content",
            &resources,
        )?;
        let marks: Vec<[&dyn ToSql; 5]> = self
            .marks_written
            .iter()
            .map(|((t, source, entity), sequence)| {
                [
                    &t.resource_type as &dyn ToSql,
                    &t.id,
                    source,
                    entity,
                    sequence,
                ]
            })
            .collect();
        insert_rows(
            tx,
            "INSERT INTO sequences (resource_type, id, source, entity, sequence)",
            " ON CONFLICT (resource_type, id, source, entity) DO UPDATE SET sequence = excluded.sequence",
            &marks,
        )?;
        // Index rows of resources held before the batch go, then the final rows of every
        // target whose index changed are written.
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM search_index WHERE resource_type = ?1 AND id = ?2")
                .map_err(sql_err)?;
            for target in self.index.keys().filter(|t| self.held_before.contains(*t)) {
                delete
                    .execute([&target.resource_type, &target.id])
                    .map_err(sql_err)?;
            }
        }
        let n: usize = self.index.values().map(Vec::len).sum();
        search::insert_index_rows(
            tx,
            ExactLen {
                inner: self
                    .index
                    .iter()
                    .flat_map(|(t, rows)| rows.iter().map(move |r| (t, r))),
                left: n,
            },
        )?;
        let outbox: Vec<[&dyn ToSql; 1]> = self.outbox.iter().map(|e| [e as &dyn ToSql]).collect();
        insert_rows(tx, "INSERT INTO outbox (event)", "", &outbox)
    }
}

/// Writes rows of `N` values: full chunks of [`CHUNK`] rows with one multi-row statement
/// (rows are inserted in order), the rest one by one.
fn insert_rows<const N: usize>(
    tx: &Connection,
    head: &str,
    tail: &str,
    rows: &[[&dyn ToSql; N]],
) -> Result<(), StoreError> {
    let mut chunks = rows.chunks_exact(CHUNK);
    if rows.len() >= CHUNK {
        let mut stmt = tx
            .prepare_cached(&multi_values(head, N, CHUNK, tail))
            .map_err(sql_err)?;
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(N * CHUNK);
        for chunk in chunks.by_ref() {
            values.clear();
            for row in chunk {
                values.extend_from_slice(row);
            }
            stmt.execute(values.as_slice()).map_err(sql_err)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = tx
            .prepare_cached(&multi_values(head, N, 1, tail))
            .map_err(sql_err)?;
        for row in rest {
            stmt.execute(&row[..]).map_err(sql_err)?;
        }
    }
    Ok(())
}

/// `?2, ?3, …` for `n` ids after the type (`?1`).
fn in_list(n: usize) -> String {
    (0..n)
        .map(|i| format!("?{}", i + 2))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An iterator with a known length (a `flat_map` does not say its own).
struct ExactLen<I> {
    inner: I,
    left: usize,
}

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        self.left = self.left.saturating_sub(1);
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}
