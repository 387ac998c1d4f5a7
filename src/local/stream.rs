//! A DynamoDB table's stream on one machine: a folder of DynamoDB Streams Lambda events,
//! delivered in file-name order to `ingest-dynamodb` the way Lambda's event source mapping
//! does it with `ReportBatchItemFailures`:
//! - failures reported by `SequenceNumber` make it re-deliver the batch from the lowest
//!   failed record on (records after it are delivered again: the pipeline is idempotent);
//! - an empty or unknown identifier, or a failed invocation, re-delivers the whole batch;
//! - after `MaximumRetryAttempts` re-deliveries, the records still failing go to the
//!   on-failure destination, here the quarantine queue, each with the reason it failed.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{LocalError, LocalRuntime};
use crate::env::WorkflowRun;
use crate::handlers::ingest_dynamodb;
use crate::model::{PublishAction, PublishedBatch, Rejection, Sequence};
use crate::outcome::Outcome;
use crate::sources::dynamodb::{DynamoDbStreamEvent, RecordFailure};

/// What delivering one stream batch did.
#[derive(Debug, Default, Clone)]
pub struct DeliveryReport {
    /// Records in the batch.
    pub records: usize,
    /// Invocations of the ingest function (1 + re-deliveries).
    pub invocations: usize,
    /// Records sent to the on-failure destination.
    pub quarantined: usize,
    /// Every `unify` run the deliveries made.
    pub runs: Vec<WorkflowRun>,
}

/// The totals of a local run.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub records_in: usize,
    pub executions: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub deleted: usize,
    pub stale: usize,
    pub quarantined: usize,
    pub events: usize,
    /// Dataset versions loaded for full-refresh uploads (`bulk-load` runs), and how many of
    /// those failed (their pointer stayed).
    pub loads: usize,
    pub loads_failed: usize,
}

impl RunSummary {
    /// Adds what a `unify` run reports in its output.
    pub(crate) fn add_run(&mut self, run: &WorkflowRun) {
        self.executions += 1;
        let Some(output) = &run.output else { return };
        if output.get("error").is_some() {
            // The Catch path: the whole batch went to quarantine, as the failing step got it.
            let n = ["changes", "items"]
                .iter()
                .find_map(|k| output.get(*k).and_then(Value::as_array).map(Vec::len))
                .unwrap_or(0);
            self.quarantined += n + output
                .get("rejected")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            return;
        }
        if let Ok(batch) =
            serde_json::from_value::<PublishedBatch>(strip(output, &["emitted", "emitError"]))
        {
            for p in &batch.published {
                match p.action {
                    PublishAction::Created => self.created += 1,
                    PublishAction::Updated => self.updated += 1,
                    PublishAction::Deleted => self.deleted += 1,
                    PublishAction::Unchanged => self.unchanged += 1,
                    PublishAction::Stale => self.stale += 1,
                }
            }
            self.quarantined += batch.rejected.len();
        }
        self.events += output
            .pointer("/emitted/delivered")
            .and_then(Value::as_u64)
            .map_or(0, |n| n as usize);
    }
}

impl RunSummary {
    /// Adds what a `bulk-load` run reports: the records it read, and its pointer move's
    /// created, updated and deleted resources, each one change event.
    pub(crate) fn add_load(&mut self, run: &WorkflowRun) {
        let count = |k: &str| {
            run.output
                .as_ref()
                .and_then(|o| o.get(k))
                .and_then(Value::as_u64)
                .map_or(0, |n| n as usize)
        };
        self.loads += 1;
        self.records_in += count("recordsRead");
        if !run.succeeded {
            self.loads_failed += 1;
            return;
        }
        let (created, updated, deleted) = (count("created"), count("updated"), count("deleted"));
        self.created += created;
        self.updated += updated;
        self.deleted += deleted;
        self.unchanged += count("unchanged");
        self.events += created + updated + deleted;
    }
}

fn strip(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

fn sequence_of(record: &Value) -> Option<Sequence> {
    record
        .pointer("/dynamodb/SequenceNumber")
        .and_then(Value::as_str)
        .and_then(|s| Sequence::parse(s).ok())
}

impl LocalRuntime {
    /// Delivers one stream batch with the event source mapping's retry rules.
    pub async fn deliver_dynamodb(
        &self,
        event: DynamoDbStreamEvent,
    ) -> Result<DeliveryReport, LocalError> {
        let max_retries = self.config.local.stream_max_retry_attempts as usize;
        let mut report = DeliveryReport {
            records: event.records.len(),
            ..DeliveryReport::default()
        };
        let mut records = event.records;
        loop {
            report.invocations += 1;
            let last_attempt = report.invocations > max_retries;
            let result = ingest_dynamodb::handle(
                DynamoDbStreamEvent {
                    records: records.clone(),
                },
                &self.ingest,
            )
            .await;
            let (identifiers, failures) = match result {
                Ok(outcome) => {
                    report.runs.extend(outcome.runs);
                    let ids: Vec<Option<String>> = outcome
                        .response
                        .batch_item_failures
                        .iter()
                        .map(|f| f.item_identifier.clone())
                        .collect();
                    (ids, outcome.failures)
                }
                Err(e) => {
                    tracing::warn!(
                        error_type = e.error_type(),
                        "ingest invocation failed; the whole batch is re-delivered"
                    );
                    if last_attempt {
                        let outcome = Outcome::error(
                            "exception",
                            format!("ingest failed after {} attempts: {e}", report.invocations),
                        );
                        for raw in &records {
                            let failure = RecordFailure {
                                sequence_number: raw
                                    .pointer("/dynamodb/SequenceNumber")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned),
                                event_id: raw
                                    .get("eventID")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned),
                                raw: raw.clone(),
                                outcome: outcome.clone(),
                            };
                            self.quarantine(&failure.rejection()).await?;
                        }
                        report.quarantined += records.len();
                        return Ok(report);
                    }
                    continue;
                }
            };
            if identifiers.is_empty() {
                return Ok(report);
            }
            if last_attempt {
                for f in &failures {
                    self.quarantine(&f.rejection()).await?;
                }
                report.quarantined += failures.len();
                return Ok(report);
            }
            // Lambda checkpoints at the lowest failed sequence number and re-delivers from there;
            // an identifier that is empty or names no record fails the whole batch.
            let lowest = identifiers
                .iter()
                .map(|id| id.as_deref().and_then(|s| Sequence::parse(s).ok()))
                .collect::<Option<Vec<_>>>()
                .and_then(|seqs| seqs.into_iter().min());
            if let Some(lowest) = lowest
                && records
                    .iter()
                    .any(|r| sequence_of(r).as_ref() == Some(&lowest))
            {
                records.retain(|r| sequence_of(r).is_none_or(|s| s >= lowest));
            }
        }
    }

    pub(crate) async fn quarantine(&self, rejection: &Rejection) -> Result<(), LocalError> {
        let body = serde_json::to_string(rejection).map_err(|e| LocalError::Input {
            file: "quarantine".into(),
            message: e.to_string(),
        })?;
        self.rejections
            .send(&body)
            .await
            .map_err(|e| LocalError::Input {
                file: "quarantine".into(),
                message: e.to_string(),
            })?;
        Ok(())
    }

    /// Delivers every configured local stream (each folder's `*.json` files, in name order),
    /// then every local DMS folder (see [`super::dms`]), then every API source's requests file
    /// (see [`crate::handlers::ingest_api::run_local_requests`]), and sums up what happened.
    pub async fn run(&self) -> Result<RunSummary, LocalError> {
        let mut summary = RunSummary::default();
        for source in &self.config.sources {
            let Some(stream) = source
                .dynamodb
                .as_ref()
                .and_then(|d| d.local_stream.as_ref())
            else {
                continue;
            };
            for file in stream_files(&self.config.resolve(stream))? {
                let event = read_event(&file)?;
                let report = self.deliver_dynamodb(event).await?;
                summary.records_in += report.records;
                summary.quarantined += report.quarantined;
                for run in &report.runs {
                    summary.add_run(run);
                }
            }
        }
        self.run_dms(&mut summary).await?;
        self.run_transfer(&mut summary).await?;
        crate::handlers::ingest_api::run_local_requests(self, &mut summary).await?;
        Ok(summary)
    }
}

fn stream_files(dir: &Path) -> Result<Vec<PathBuf>, LocalError> {
    let err = |e: std::io::Error| LocalError::Input {
        file: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_event(file: &Path) -> Result<DynamoDbStreamEvent, LocalError> {
    let err = |message: String| LocalError::Input {
        file: file.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(file).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(format!("not a DynamoDB Streams event: {e}")))
}
