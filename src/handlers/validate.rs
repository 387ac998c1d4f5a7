//! `validate`: checks every resource a change maps to. A change any of whose resources has an
//! error is rejected whole, with every issue of every resource, so that no change is ever half
//! published.

use std::time::Instant;

use crate::env::Env;
use crate::model::{MappedBatch, Rejection, ResourceOp, Stage};
use crate::outcome::Outcome;

use super::HandlerError;

pub async fn handle(batch: MappedBatch, env: &Env) -> Result<MappedBatch, HandlerError> {
    let started = Instant::now();
    let records_in = batch.items.len();
    let mut out = MappedBatch {
        batch_id: batch.batch_id,
        items: Vec::with_capacity(batch.items.len()),
        rejected: batch.rejected,
    };
    let mut warnings = 0usize;
    let validator = env.validator.get().map_err(HandlerError::Setup)?;
    for item in batch.items {
        let mut outcome = Outcome::new();
        for rc in &item.resources {
            if let ResourceOp::Upsert { resource } = &rc.op {
                for mut issue in validator.validate(resource).issues {
                    issue.diagnostics = format!("{}: {}", rc.target, issue.diagnostics);
                    outcome.push(issue);
                }
            }
        }
        if outcome.has_errors() {
            out.rejected.push(Rejection {
                stage: Stage::Validate,
                record: item.change.label(),
                change: Some(item.change),
                raw: None,
                outcome: outcome.to_fhir(),
            });
        } else {
            warnings += outcome.issues.len();
            out.items.push(item);
        }
    }
    tracing::info!(
        batch_id = %out.batch_id,
        records_in,
        records_out = out.items.len(),
        rejected = out.rejected.len(),
        warnings,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "validate done"
    );
    Ok(out)
}
