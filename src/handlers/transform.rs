//! `transform`: maps each source change of a batch to FHIR resource changes with the mapping
//! files. A change that cannot be mapped is rejected with its OperationOutcome; the rest go on.

use std::time::Instant;

use crate::env::Env;
use crate::model::{ChangeBatch, MappedBatch, MappedChange, Rejection, Stage};

use super::HandlerError;

pub async fn handle(batch: ChangeBatch, env: &Env) -> Result<MappedBatch, HandlerError> {
    let started = Instant::now();
    let records_in = batch.changes.len();
    let mut out = MappedBatch {
        batch_id: batch.batch_id,
        ..MappedBatch::default()
    };
    for change in batch.changes {
        match env.mappings.apply(&change) {
            Ok(resources) => out.items.push(MappedChange { change, resources }),
            Err(outcome) => out.rejected.push(Rejection {
                stage: Stage::Transform,
                record: change.label(),
                change: Some(change),
                raw: None,
                outcome: outcome.to_fhir(),
            }),
        }
    }
    tracing::info!(
        batch_id = %out.batch_id,
        records_in,
        records_out = out.items.len(),
        rejected = out.rejected.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "transform done"
    );
    Ok(out)
}
