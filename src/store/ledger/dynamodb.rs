//! The ledger on AWS: a DynamoDB table (the stack's `FhirLedgerTable`, `pk`/`sk` strings,
//! stream `NEW_IMAGE`) whose stream is the outbox, as the DynamoDB store's is.
//!
//! - An intent is an item `pk = "intent"`, `sk = "<recorded time>#<uuid>"` (so one `Query`
//!   lists the open ones, oldest first) holding the [`Intent`] as JSON in `intent`.
//! - A settled event is an item `pk = "event#<eventId>"`, `sk = "event"`, holding the
//!   [`ChangeEvent`] as JSON in `event`, put only if absent (`attribute_not_exists`): the
//!   stream carries one `INSERT` per event, whoever settles it and however often. `emit`
//!   (`handlers::emit_stream`, mapping `EmitLedgerStreamMapping`) publishes those INSERTs.
//! - Settling puts the events first, then deletes the intents: a crash in between leaves
//!   intents that settle again, from the server's history, to the same events, which are not
//!   put twice. No transaction is needed, and a conditional put that fails costs nothing.
//!
//! - Event items carry `expires_at` (epoch seconds, [`EVENT_RETENTION`] after settling), the
//!   table's TTL attribute: DynamoDB deletes them after that, so the table holds the events
//!   in flight, not every event ever. The deletions reach the stream as `REMOVE` records,
//!   which `EmitLedgerStreamMapping`'s filter (INSERTs only) drops.
//!
//! Every intent shares one partition: intents live from just before a transaction to just
//! after it, so the partition holds the writes in flight (a few per running `publish`).

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

use super::EVENT_RETENTION;
use super::{Intent, Ledger, OpenIntent};
use crate::model::ChangeEvent;
use crate::store::{Outbox, OutboxEntry, StoreError, format_time};

/// Key attributes of the ledger table.
pub const PK: &str = "pk";
pub const SK: &str = "sk";
/// The partition of open intents.
pub const INTENT_PK: &str = "intent";
/// The key prefix of settled events.
pub const EVENT_PREFIX: &str = "event#";
/// The sort key of settled events.
pub const EVENT_SK: &str = "event";

/// The TTL attribute of event items (the template's `TimeToLiveSpecification`).
pub const EXPIRES_AT: &str = "expires_at";

/// The ledger table.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
}

impl DynamoLedger {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoLedger {
        DynamoLedger {
            client,
            table: table.into(),
        }
    }

    /// When an event item settled now expires, as DynamoDB's TTL reads it.
    fn expires_at() -> AttributeValue {
        let at = chrono::Utc::now().timestamp()
            + i64::try_from(EVENT_RETENTION.as_secs()).unwrap_or(i64::MAX / 2);
        AttributeValue::N(at.to_string())
    }

    /// The ledger table `table` with the SDK configuration of the environment.
    pub async fn from_environment(table: impl Into<String>) -> DynamoLedger {
        let config = crate::aws::sdk_config().await;
        DynamoLedger::new(Client::new(&config), table)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table as `infra/template.yaml` declares it (tests, local trials).
    pub async fn create_table(&self) -> Result<(), StoreError> {
        crate::store::dynamodb::create_streamed_table(&self.client, &self.table).await
    }

    fn sdk_err<E, R>(&self, operation: &str, e: SdkError<E, R>) -> StoreError
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        // Throttling, network, a missing table or permission: retryable once fixed.
        StoreError::Unavailable(format!(
            "DynamoDB {operation} on ledger table {}: {}",
            self.table,
            DisplayErrorContext(&e)
        ))
    }

    /// Whether an event was ever settled (tests and checks).
    pub async fn has_event(&self, event_id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(format!("{EVENT_PREFIX}{event_id}")))
            .key(SK, AttributeValue::S(EVENT_SK.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_err("GetItem", e))?;
        Ok(out.item.is_some())
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn record(&self, intents: &[Intent]) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::with_capacity(intents.len());
        for intent in intents {
            let text = serde_json::to_string(intent).map_err(|e| StoreError::Invalid {
                target: intent.target.to_string(),
                reason: format!("intent cannot be recorded: {e}"),
            })?;
            let id = format!(
                "{}#{}",
                format_time(intent.recorded_at),
                uuid::Uuid::new_v4()
            );
            self.client
                .put_item()
                .table_name(&self.table)
                .item(PK, AttributeValue::S(INTENT_PK.into()))
                .item(SK, AttributeValue::S(id.clone()))
                .item("intent", AttributeValue::S(text))
                .send()
                .await
                .map_err(|e| self.sdk_err("PutItem", e))?;
            ids.push(id);
        }
        Ok(ids)
    }

    async fn settle(&self, ids: &[String], events: &[ChangeEvent]) -> Result<(), StoreError> {
        for event in events {
            let text = serde_json::to_string(event).map_err(|e| {
                StoreError::Corrupt(format!("event {}: {e}", event.detail.event_id))
            })?;
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(
                    PK,
                    AttributeValue::S(format!("{EVENT_PREFIX}{}", event.detail.event_id)),
                )
                .item(SK, AttributeValue::S(EVENT_SK.into()))
                .item("event", AttributeValue::S(text))
                .item(EXPIRES_AT, Self::expires_at())
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            match put {
                Ok(_) => {}
                // Settled before (a recovery, or a concurrent writer of the same version).
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(self.sdk_err("PutItem", e)),
            }
        }
        for id in ids {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key(PK, AttributeValue::S(INTENT_PK.into()))
                .key(SK, AttributeValue::S(id.clone()))
                .send()
                .await
                .map_err(|e| self.sdk_err("DeleteItem", e))?;
        }
        Ok(())
    }

    async fn open_intents(&self) -> Result<Vec<OpenIntent>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", AttributeValue::S(INTENT_PK.into()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.sdk_err("Query", e))?;
            for item in page.items() {
                let text = |name: &str| match item.get(name) {
                    Some(AttributeValue::S(s)) => Ok(s.clone()),
                    _ => Err(StoreError::Corrupt(format!(
                        "ledger table {}: an intent item without a string {name}",
                        self.table
                    ))),
                };
                let id = text(SK)?;
                let intent = serde_json::from_str(&text("intent")?).map_err(|e| {
                    StoreError::Corrupt(format!("ledger table {}: intent {id}: {e}", self.table))
                })?;
                out.push(OpenIntent { id, intent });
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// The table's stream is the outbox (`emit` publishes its INSERTs): nothing to relay here.
#[async_trait]
impl Outbox for DynamoLedger {
    async fn pending(&self, _limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(Vec::new())
    }

    async fn mark_delivered(&self, _positions: &[i64]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The change event of a ledger table stream record's `NewImage`: `Some` for a settled event
/// item, `None` for anything else (an intent).
pub fn change_event_from_ledger_image(
    image: &serde_dynamo::Item,
) -> Result<Option<ChangeEvent>, StoreError> {
    let Some(serde_dynamo::AttributeValue::S(pk)) = image.get(PK) else {
        return Err(StoreError::Corrupt(
            "ledger stream image without a string pk".into(),
        ));
    };
    let Some(event_id) = pk.strip_prefix(EVENT_PREFIX) else {
        return Ok(None);
    };
    let Some(serde_dynamo::AttributeValue::S(text)) = image.get("event") else {
        return Err(StoreError::Corrupt(format!(
            "ledger event item {event_id}: no string `event`"
        )));
    };
    let event: ChangeEvent = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("ledger event item {event_id}: {e}")))?;
    if event.detail.event_id != event_id {
        return Err(StoreError::Corrupt(format!(
            "ledger event item {event_id} holds event {}",
            event.detail.event_id
        )));
    }
    Ok(Some(event))
}

/// Whether a stream image is a ledger item (its `pk` is `intent` or an event key), not a
/// store item.
pub fn is_ledger_image(image: &serde_dynamo::Item) -> bool {
    matches!(image.get(PK), Some(serde_dynamo::AttributeValue::S(pk))
        if pk == INTENT_PK || pk.starts_with(EVENT_PREFIX))
}
