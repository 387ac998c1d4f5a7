//! `emit`: delivers the store's outbox (one event per committed change, in commit order) to
//! the event bus. Its input is only a trigger: what to emit is what the store committed, so
//! an event can be neither invented nor lost by the state machine's data flow.

use serde_json::Value;

use crate::env::Env;
use crate::events::{RelayReport, relay_outbox};

use super::HandlerError;

pub async fn handle(_trigger: Value, env: &Env) -> Result<RelayReport, HandlerError> {
    let report = relay_outbox(env.outbox.as_ref(), env.bus.as_ref()).await?;
    tracing::info!(
        delivered = report.delivered,
        failed = report.failed,
        "emit done"
    );
    Ok(report)
}
