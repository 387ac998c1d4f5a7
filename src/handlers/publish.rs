//! `publish`: writes each change's resources to the FHIR store (one transaction per source
//! change) and reports, per resource, created / updated / deleted / unchanged / stale.
//!
//! A store that is unavailable fails the whole invocation with a retryable error type, so the
//! state machine's Retry runs it again; what was already written is then `unchanged`. A change
//! the store refuses is rejected alone.

use std::time::Instant;

use crate::env::Env;
use crate::model::{MappedBatch, PublishedBatch, Rejection, Stage};
use crate::outcome::Outcome;

use super::HandlerError;

pub async fn handle(batch: MappedBatch, env: &Env) -> Result<PublishedBatch, HandlerError> {
    let started = Instant::now();
    let records_in = batch.items.len();
    let mut out = PublishedBatch {
        batch_id: batch.batch_id,
        published: Vec::new(),
        rejected: batch.rejected,
    };
    for item in batch.items {
        match env.store.apply(&item.resources).await {
            Ok(outcomes) => out.published.extend(outcomes),
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => out.rejected.push(Rejection {
                stage: Stage::Publish,
                record: item.change.label(),
                change: Some(item.change),
                raw: None,
                outcome: Outcome::error("processing", e.to_string()).to_fhir(),
            }),
        }
    }
    tracing::info!(
        batch_id = %out.batch_id,
        records_in,
        resources = out.published.len(),
        rejected = out.rejected.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "publish done"
    );
    Ok(out)
}
