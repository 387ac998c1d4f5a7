//! The local event bus with rules: EventBridge's `PutEvents` contract on one machine. Every
//! accepted event is archived, then each rule whose pattern matches the delivered envelope
//! sends it to its targets (NDJSON files, webhooks, SSE streams).
//!
//! Delivery semantics, so that a target's failure loses nothing:
//!
//! - events are handled in entry order; targets receive them in that order;
//! - when a target fails an event, that entry and every later entry of the call are reported
//!   `Failed` (so the outbox relay keeps them, in order, for its next run), while the entries
//!   before it are `Accepted`;
//! - a ledger in the archive database records each (rule, target, event) delivered, so an
//!   event put again after a partial failure goes only to the targets that missed it. An NDJSON
//!   target is exactly-once even across a crash between its write and the ledger (the file is
//!   its own ledger); a webhook may see an event twice only after such a crash, and the
//!   envelope `id` is stable for de-duplication.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::broadcast;

use super::archive::{Archive, ArchiveError, Archived};
use super::local::{LOCAL_ACCOUNT, LOCAL_REGION, NdjsonWriter, delivery_key};
use super::pattern::EventPattern;
use super::targets::{
    NdjsonTarget, RetryPolicy, SSE_CHANNEL_CAPACITY, SseMessage, SseTarget, Target, WebhookTarget,
};
use super::{BusError, EventBus, LOCAL_PAGE_EVENTS, MAX_ENTRY_BYTES, PutEntryResult, entry_size};
use crate::config::{DataDir, LocalBusConfig};
use crate::model::ChangeEvent;

/// The rule that the top-level `ndjson:` file of the pipeline file is attached to.
pub const ALL_EVENTS_RULE: &str = "all-events";

/// Entry error code when a target failed the event.
pub const TARGET_FAILED: &str = "TargetDeliveryFailed";
/// Entry error code for the entries after a failed one (not attempted, to keep the order).
pub use super::PRECEDING_ENTRY_FAILED;

/// A rule: a pattern (none: every event) and its targets.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pattern: Option<EventPattern>,
    targets: Vec<Arc<dyn Target>>,
}

impl Rule {
    pub fn new(name: &str, pattern: Option<EventPattern>, targets: Vec<Arc<dyn Target>>) -> Rule {
        Rule {
            name: name.to_owned(),
            pattern,
            targets,
        }
    }

    fn matches(&self, envelope: &Value) -> bool {
        self.pattern.as_ref().is_none_or(|p| p.matches(envelope))
    }
}

/// The local bus.
#[derive(Debug)]
pub struct LocalBus {
    rules: Vec<Rule>,
    archive: Archive,
    streams: BTreeMap<String, broadcast::Sender<Arc<SseMessage>>>,
}

/// Errors of `replay`.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no rule named {name:?} (rules: {known})")]
    UnknownRule { name: String, known: String },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(
        "rule {rule:?}, target {target}: {message} (after {delivered} replayed deliveries; replay again to continue)"
    )]
    Target {
        rule: String,
        target: String,
        delivered: usize,
        message: String,
    },
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Archived events read.
    pub events: usize,
    /// Deliveries made (an event to each target of each matching rule).
    pub deliveries: usize,
}

impl LocalBus {
    /// A bus with an archive and no rules yet.
    pub fn new(archive: Archive) -> LocalBus {
        LocalBus {
            rules: Vec::new(),
            archive,
            streams: BTreeMap::new(),
        }
    }

    /// Builds the bus a pipeline file's `events.local` describes, with files under `data`.
    pub fn open(config: &LocalBusConfig, data: &DataDir) -> Result<LocalBus, BusError> {
        let unavailable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
        let archive = Archive::open(&data.join(&config.archive)).map_err(|e| unavailable(&e))?;
        let mut bus = LocalBus::new(archive);
        let ndjson = |path: &std::path::Path| -> Result<Arc<dyn Target>, BusError> {
            let writer = NdjsonWriter::open(&data.join(path)).map_err(|e| unavailable(&e))?;
            Ok(Arc::new(NdjsonTarget::new(
                &path.display().to_string(),
                writer,
            )))
        };
        if let Some(path) = &config.ndjson {
            bus.add_rule(Rule::new(ALL_EVENTS_RULE, None, vec![ndjson(path)?]))?;
        }
        for rule in &config.rules {
            let pattern = EventPattern::from_value(&rule.pattern_value())
                .map_err(|e| BusError::Invalid(format!("rule {:?}: pattern: {e}", rule.name)))?;
            let mut targets: Vec<Arc<dyn Target>> = Vec::new();
            for t in &rule.targets {
                if let Some(path) = &t.ndjson {
                    targets.push(ndjson(path)?);
                }
                if let Some(w) = &t.webhook {
                    targets.push(Arc::new(WebhookTarget::new(
                        &w.url,
                        w.headers.clone().into_iter().collect(),
                        RetryPolicy {
                            max_attempts: w.max_attempts,
                            initial_backoff: std::time::Duration::from_millis(w.initial_backoff_ms),
                            max_backoff: std::time::Duration::from_millis(w.max_backoff_ms),
                            timeout: std::time::Duration::from_millis(w.timeout_ms),
                        },
                    )));
                }
                if let Some(s) = &t.sse {
                    targets.push(Arc::new(SseTarget::new(&s.stream, bus.stream(&s.stream))));
                }
            }
            bus.add_rule(Rule::new(&rule.name, Some(pattern), targets))?;
        }
        Ok(bus)
    }

    /// Adds a rule (names are unique).
    pub fn add_rule(&mut self, rule: Rule) -> Result<(), BusError> {
        if self.rules.iter().any(|r| r.name == rule.name) {
            return Err(BusError::Invalid(format!(
                "two rules are named {:?}",
                rule.name
            )));
        }
        self.rules.push(rule);
        Ok(())
    }

    /// The sender of a named SSE stream (created on first use).
    pub fn stream(&mut self, name: &str) -> broadcast::Sender<Arc<SseMessage>> {
        self.streams
            .entry(name.to_owned())
            .or_insert_with(|| broadcast::channel(SSE_CHANNEL_CAPACITY).0)
            .clone()
    }

    /// Subscribes to a named SSE stream that a rule targets (`None`: no rule names it).
    /// Messages sent before the subscription are read from [`Self::archive`].
    pub fn subscribe(&self, stream: &str) -> Option<broadcast::Receiver<Arc<SseMessage>>> {
        self.streams.get(stream).map(broadcast::Sender::subscribe)
    }

    /// What a stream's subscriber missed: archived events after the one with id
    /// `last_event_id` (an SSE client's `Last-Event-ID`; `None`: from the start) that a rule
    /// targeting `stream` matches, oldest first, at most `limit`. Subscribe first, then read
    /// the backlog, then skip live messages already seen, so nothing falls in between.
    pub fn stream_backlog(
        &self,
        stream: &str,
        last_event_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SseMessage>, ArchiveError> {
        let target_id = format!("sse:{stream}");
        let rules: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.targets.iter().any(|t| t.id() == target_id))
            .collect();
        let mut after = match last_event_id {
            Some(id) => self.archive.position_of(id)?.unwrap_or(0),
            None => 0,
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let page = self.archive.list(None, after, 256)?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for a in page {
                if out.len() < limit && rules.iter().any(|r| r.matches(&a.envelope)) {
                    out.push(SseMessage {
                        id: delivery_key(&a.envelope).unwrap_or_default(),
                        data: a.envelope.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The names of the SSE streams rules target.
    pub fn stream_names(&self) -> Vec<&str> {
        self.streams.keys().map(String::as_str).collect()
    }

    /// The archive of every accepted event.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// The rule names, in order.
    pub fn rule_names(&self) -> Vec<&str> {
        self.rules.iter().map(|r| r.name.as_str()).collect()
    }

    /// Delivers envelopes through the rules; returns the index of the first envelope a target
    /// failed, with the reason. Targets are delivered to concurrently (their `fsync`s overlap),
    /// each in event order.
    ///
    /// `texts[i]`: envelope `i` serialized. `archived[i]`: envelope `i`'s archive position, and
    /// whether this call archived it (then no target has it yet and its delivery ledger is not
    /// read; see [`Archive::archive`]).
    async fn route(
        &self,
        envelopes: &[(usize, Value, String)],
        texts: &[&str],
        archived: &[Archived],
    ) -> Result<Option<(usize, String)>, BusError> {
        let unavailable = |e: ArchiveError| BusError::Unavailable(e.to_string());
        let position = |i: usize| archived.get(i).map_or(0, |a| a.position);
        // (rule, target, ledger name, entries to deliver)
        let mut jobs = Vec::new();
        for rule in &self.rules {
            let matching: Vec<usize> = (0..envelopes.len())
                .filter(|&i| rule.matches(&envelopes[i].1))
                .collect();
            if matching.is_empty() {
                continue;
            }
            // Only envelopes archived before may have reached a target already.
            let seen: Vec<usize> = matching
                .iter()
                .copied()
                .filter(|&i| !archived.get(i).is_some_and(|a| a.fresh))
                .collect();
            let positions: Vec<i64> = seen.iter().map(|&i| position(i)).collect();
            for target in &rule.targets {
                let ledger = format!("{}/{}", rule.name, target.id());
                let done = self
                    .archive
                    .delivered_at(&ledger, &positions)
                    .map_err(unavailable)?;
                let delivered: std::collections::HashSet<usize> = seen
                    .iter()
                    .zip(&done)
                    .filter(|(_, d)| **d)
                    .map(|(i, _)| *i)
                    .collect();
                let todo: Vec<usize> = matching
                    .iter()
                    .copied()
                    .filter(|i| !delivered.contains(i))
                    .collect();
                if !todo.is_empty() {
                    jobs.push((rule, target, ledger, todo));
                }
            }
        }
        let batches: Vec<(Vec<&Value>, Vec<&str>)> = jobs
            .iter()
            .map(|(_, _, _, todo)| {
                todo.iter()
                    .map(|&i| (&envelopes[i].1, texts.get(i).copied().unwrap_or_default()))
                    .unzip()
            })
            .collect();
        let outcomes =
            futures_util::future::join_all(jobs.iter().zip(&batches).map(
                |((_, target, _, _), (batch, texts))| target.deliver_serialized(batch, texts),
            ))
            .await;
        let mut first_failed: Option<(usize, String)> = None;
        let mut records: Vec<(&str, Vec<i64>)> = Vec::with_capacity(jobs.len());
        for ((rule, target, ledger, todo), outcome) in jobs.iter().zip(outcomes) {
            let delivered = match &outcome {
                Ok(()) => todo.len(),
                Err(f) => f.delivered.min(todo.len()),
            };
            records.push((
                ledger.as_str(),
                todo[..delivered].iter().map(|&i| position(i)).collect(),
            ));
            if let (Err(failure), Some(&failed)) = (outcome, todo.get(delivered)) {
                tracing::warn!(
                    rule = %rule.name,
                    target = %target.id(),
                    event_id = %envelopes[failed].2,
                    "target failed an event; it stays in the outbox"
                );
                if first_failed.as_ref().is_none_or(|(f, _)| failed < *f) {
                    first_failed = Some((
                        failed,
                        format!(
                            "rule {:?}, target {}: {}",
                            rule.name,
                            target.id(),
                            failure.error
                        ),
                    ));
                }
            }
        }
        let records: Vec<(&str, &[i64])> =
            records.iter().map(|(l, p)| (*l, p.as_slice())).collect();
        self.archive
            .record_positions(&records)
            .map_err(unavailable)?;
        Ok(first_failed)
    }

    /// Re-delivers archived events whose time is at or after `since` through every rule, or
    /// only `rule`, marking each envelope with `replay-name` as EventBridge replays do.
    /// Delivery ledgers are not consulted: a replay sends again on purpose.
    pub async fn replay(
        &self,
        since: &DateTime<Utc>,
        rule: Option<&str>,
        replay_name: &str,
    ) -> Result<ReplayReport, ReplayError> {
        let rules: Vec<&Rule> = match rule {
            None => self.rules.iter().collect(),
            Some(name) => match self.rules.iter().find(|r| r.name == name) {
                Some(r) => vec![r],
                None => {
                    return Err(ReplayError::UnknownRule {
                        name: name.to_owned(),
                        known: self.rule_names().join(", "),
                    });
                }
            },
        };
        let mut report = ReplayReport::default();
        let mut after = 0;
        loop {
            let page = self.archive.list(Some(since), after, 256)?;
            let Some(last) = page.last() else {
                return Ok(report);
            };
            after = last.position;
            report.events += page.len();
            let envelopes: Vec<Value> = page
                .into_iter()
                .map(|a| {
                    let mut e = a.envelope;
                    if let Some(o) = e.as_object_mut() {
                        o.insert("replay-name".into(), Value::String(replay_name.to_owned()));
                    }
                    e
                })
                .collect();
            for rule in &rules {
                let batch: Vec<&Value> = envelopes.iter().filter(|e| rule.matches(e)).collect();
                if batch.is_empty() {
                    continue;
                }
                for target in &rule.targets {
                    if let Err(f) = target.deliver(&batch).await {
                        return Err(ReplayError::Target {
                            rule: rule.name.clone(),
                            target: target.id().to_owned(),
                            delivered: report.deliveries + f.delivered,
                            message: f.error.message,
                        });
                    }
                    report.deliveries += batch.len();
                }
            }
        }
    }
}

impl LocalBus {
    /// Archives the events in one commit, then routes them (each target gets them in one
    /// delivery, so one `fsync` per NDJSON target) and records the deliveries in one commit:
    /// the cost of a call hardly depends on how many events it carries.
    async fn put(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        let mut results: Vec<Option<PutEntryResult>> = vec![None; events.len()];
        // (entry index, envelope, delivery key) of the entries within the limits.
        let mut accepted = Vec::with_capacity(events.len());
        // Each envelope's JSON text, made once for the archive and the NDJSON targets.
        let mut texts = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let envelope = event.delivered(LOCAL_ACCOUNT, LOCAL_REGION);
            let text = envelope.to_string();
            // The envelope holds every part `entry_size` counts, so a text within the limit
            // spares measuring the entry (a serialization of its detail).
            if text.len() > MAX_ENTRY_BYTES && entry_size(event) > MAX_ENTRY_BYTES {
                results[i] = Some(PutEntryResult::Failed {
                    code: "ValidationException".into(),
                    message: format!(
                        "entry for event {} is larger than 256 KB",
                        event.detail.event_id
                    ),
                });
                continue;
            }
            let key = delivery_key(&envelope).unwrap_or_default();
            accepted.push((i, envelope, key));
            texts.push(text);
        }
        let refs: Vec<&Value> = accepted.iter().map(|(_, e, _)| e).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let archived = self
            .archive
            .archive_serialized(&refs, &texts)
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let failed = self.route(&accepted, &texts, &archived).await?;
        for (n, (i, _, key)) in accepted.iter().enumerate() {
            results[*i] = Some(match &failed {
                Some((f, why)) if n == *f => PutEntryResult::Failed {
                    code: TARGET_FAILED.into(),
                    message: why.clone(),
                },
                Some((f, _)) if n > *f => PutEntryResult::Failed {
                    code: PRECEDING_ENTRY_FAILED.into(),
                    message: "not delivered, to keep the order after a failed entry".into(),
                },
                _ => PutEntryResult::Accepted(key.clone()),
            });
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or(PutEntryResult::Failed {
                    code: "InternalFailure".into(),
                    message: "entry not handled".into(),
                })
            })
            .collect())
    }
}

#[async_trait]
impl EventBus for LocalBus {
    async fn put_events(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        super::check_put_size(events)?;
        self.put(events).await
    }

    fn page_size(&self) -> usize {
        LOCAL_PAGE_EVENTS
    }

    async fn put_page(&self, events: &[ChangeEvent]) -> Result<Vec<PutEntryResult>, BusError> {
        super::check_page_size(events)?;
        self.put(events).await
    }

    fn as_local(&self) -> Option<&LocalBus> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;
