//! `ingest-dynamodb`: a DynamoDB Streams batch in, `unify` runs out.
//!
//! Records are decoded one by one; a record that cannot be decoded is answered in
//! `batchItemFailures` by its `SequenceNumber` while the others go on. The decoded changes are
//! handed to the `unify` state machine in chunks small enough for its 256 KB state limit. If a
//! `unify` run fails (it could not even quarantine), the invocation fails, so Lambda retries
//! the whole batch: nothing is lost, and replaying what did succeed changes nothing.

use aws_lambda_events::event::streams::DynamoDbEventResponse;

use crate::env::{IngestEnv, WorkflowError, WorkflowRun};
use crate::model::ChangeBatch;
use crate::sources::dynamodb::{self, DynamoDbStreamEvent, RecordFailure};

use super::HandlerError;

/// The largest `unify` input this function builds. Step Functions refuses state data over
/// 256 KB, and a batch grows on its way (transform adds the mapped resources beside each
/// change), so inputs are kept to a quarter of that.
pub const MAX_EXECUTION_INPUT_BYTES: usize = 64 * 1024;

/// What one invocation did. Lambda receives only `response`; the local runtime also reads the
/// reasons of the failures and the runs.
#[derive(Debug)]
pub struct IngestOutcome {
    pub response: DynamoDbEventResponse,
    pub failures: Vec<RecordFailure>,
    pub runs: Vec<WorkflowRun>,
    /// Records decoded and handed to `unify`.
    pub records_in: usize,
}

pub async fn handle(
    event: DynamoDbStreamEvent,
    env: &IngestEnv,
) -> Result<IngestOutcome, HandlerError> {
    let config = env.config.clone();
    let decoded = dynamodb::decode(&event, &|table| config.dynamodb_binding(table));
    let records_in = decoded.batch.changes.len();
    let runs = run_unify_chunked(env, decoded.batch).await?;
    for f in &decoded.failures {
        tracing::warn!(record = %f.label(), "stream record cannot be decoded");
    }
    tracing::info!(
        records = event.records.len(),
        decoded = records_in,
        failed = decoded.failures.len(),
        executions = runs.len(),
        "ingest-dynamodb done"
    );
    Ok(IngestOutcome {
        response: dynamodb::batch_response(&decoded.failures),
        failures: decoded.failures,
        runs,
        records_in,
    })
}

/// Hands a batch to `unify` in chunks ([`chunk_batch`]), in order, and returns the runs. A run
/// that fails (it could not even quarantine) fails the call, so the ingress is retried whole.
pub async fn run_unify_chunked(
    env: &IngestEnv,
    batch: ChangeBatch,
) -> Result<Vec<WorkflowRun>, HandlerError> {
    let mut runs = Vec::new();
    for chunk in chunk_batch(batch) {
        let run = env.workflow.run_unify(&chunk).await?;
        if !run.succeeded {
            return Err(WorkflowError {
                workflow: "unify".into(),
                message: format!(
                    "execution {} of batch {} failed: {} {}",
                    run.execution,
                    chunk.batch_id,
                    run.error.as_deref().unwrap_or(""),
                    run.cause.as_deref().unwrap_or("")
                ),
            }
            .into());
        }
        runs.push(run);
    }
    Ok(runs)
}

/// Splits a batch into batches whose JSON stays under [`MAX_EXECUTION_INPUT_BYTES`], keeping
/// the order; chunk `n` of batch `b` is named `b-n`, so a redelivery makes the same names.
/// A single change larger than the limit travels alone (the state machine then refuses it
/// with `States.DataLimitExceeded` if it really is too large).
pub fn chunk_batch(batch: ChangeBatch) -> Vec<ChangeBatch> {
    let overhead = batch.batch_id.len() + 64;
    let mut chunks: Vec<ChangeBatch> = Vec::new();
    let mut current = Vec::new();
    let mut size = overhead;
    for change in batch.changes {
        let n = serde_json::to_string(&change).map_or(0, |s| s.len()) + 1;
        if !current.is_empty() && size + n > MAX_EXECUTION_INPUT_BYTES {
            chunks.push(ChangeBatch {
                batch_id: String::new(),
                changes: std::mem::take(&mut current),
            });
            size = overhead;
        }
        size += n;
        current.push(change);
    }
    if !current.is_empty() {
        chunks.push(ChangeBatch {
            batch_id: String::new(),
            changes: current,
        });
    }
    let single = chunks.len() == 1;
    for (i, c) in chunks.iter_mut().enumerate() {
        c.batch_id = if single {
            batch.batch_id.clone()
        } else {
            format!("{}-{}", batch.batch_id, i + 1)
        };
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, RecordKey, Sequence, SourceChange};
    use serde_json::json;

    fn change(i: u64, bytes: usize) -> SourceChange {
        SourceChange {
            source: "app".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!(i))]),
            op: Op::Upsert,
            sequence: Sequence::from(i),
            observed_at: "2024-01-01T00:00:00Z".parse().unwrap(),
            data: json!({"pad": "x".repeat(bytes)}).into(),
        }
    }

    #[test]
    fn chunks_stay_under_the_limit_and_keep_order() {
        let batch = ChangeBatch {
            batch_id: "b".into(),
            changes: (0..40).map(|i| change(i, 5_000)).collect(),
        };
        let chunks = chunk_batch(batch);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        let mut seen = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.batch_id, format!("b-{}", i + 1));
            assert!(serde_json::to_string(c).unwrap().len() <= MAX_EXECUTION_INPUT_BYTES);
            seen.extend(c.changes.iter().map(|c| c.sequence.clone()));
        }
        assert_eq!(seen, (0..40).map(Sequence::from).collect::<Vec<_>>());
    }

    #[test]
    fn a_small_batch_keeps_its_id_and_an_empty_one_makes_no_run() {
        let one = chunk_batch(ChangeBatch {
            batch_id: "b".into(),
            changes: vec![change(1, 10)],
        });
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].batch_id, "b");
        assert!(
            chunk_batch(ChangeBatch {
                batch_id: "b".into(),
                changes: vec![]
            })
            .is_empty()
        );
    }
}
