//! DynamoDB FHIR store: resources and their history in one DynamoDB table, with the same
//! semantics as the SQLite store (see [`super`]), kept by conditional transactional writes so
//! that any number of concurrent writers (Lambda instances) never lose an update.
//!
//! # Table
//!
//! One table, key `pk` (S, `Type/id`) + `sk` (S), pay per request, stream `NEW_IMAGE`
//! (`infra/template.yaml`, `FhirStoreTable`; [`DynamoStore::create_table`] makes the same one
//! for emulators and tests). Per resource, one item collection:
//!
//! - `sk = "current"`: the resource's current state: `rev` (N, a revision bumped by every
//!   write of this item: the condition every write checks), `version` (N, 0 when only sequence
//!   marks exist yet: e.g. after deleting a resource that never existed), `lastUpdated` (S),
//!   `deleted` (BOOL), `content` (S, the stored resource with `meta`), `lineage` (S, JSON),
//!   `marks` (M: the highest source sequence applied per source entity, keyed by the JSON
//!   array `["source","entity"]`, values S: canonical decimal digits, compared in Rust as
//!   [`Sequence`]s, never as DynamoDB numbers, which hold 38 digits only), and `resourceType`,
//!   `id`. A read is one `GetItem`.
//! - `sk = "v#0000000001"`, `"v#0000000002"`…: one history item per version, written once and
//!   never changed: `version`, `lastUpdated`, `deleted`, `content` (absent for a delete),
//!   `lineage`, `action` (`created` | `updated` | `deleted`), `resourceType`, `id`. History is a
//!   `Query` on `pk` with `begins_with(sk, "v#")`, newest first; the zero padding to 10
//!   digits keeps the text order equal to the numeric order.
//! - Search index items (`pk = "ix#<Type>#<param>"`) and type history pointers
//!   (`pk = "hx#<Type>"`), written and removed in the same transaction as the version they
//!   index; the current item lists its index keys (`ix`). See [`search`], which implements
//!   [`SearchStore`] for the partner gateway.
//!
//! # Resources as JSON strings
//!
//! Content and lineage are JSON *string* attributes, not DynamoDB maps: the text read back is
//! byte for byte the text written (the "unchanged" comparison and `meta` depend on it), while a
//! map would turn every JSON number into a DynamoDB number (at most 38 significant digits,
//! normalized: `1.50` comes back as `1.5`), would refuse nesting deeper than 32 levels
//! (Questionnaire items nest deeper), and costs a conversion of every element both ways.
//! Nothing queries inside a resource here: search reads its own index items ([`search`]).
//!
//! # Writes
//!
//! [`FhirStore::apply`] checks every change first (ids, content, item size), so a bad change
//! fails the call before anything is written. It reads the current items of all targets
//! (`BatchGetItem`, consistent reads), computes each change in order exactly as the SQLite store
//! does, and writes with `TransactWriteItems`: for each resource touched, its new `current` item
//! (condition: `rev` is still the one read, or the item does not exist) and one history item per
//! new version (condition: it does not exist). A transaction that fails a condition (another
//! writer got there first) is re-read and recomputed, up to [`MAX_ATTEMPTS`] times, then the
//! call fails with the retryable [`StoreError::Unavailable`]. Each transaction carries a
//! `ClientRequestToken`, so an SDK-level retry of a transaction that did commit is not applied
//! twice.
//!
//! A change that moves a sequence mark but leaves the content as it is (`Unchanged`) rewrites
//! the current item only; a stale change or an exact replay writes nothing.
//!
//! **Atomicity.** A DynamoDB transaction holds at most [`MAX_TRANSACTION_ITEMS`] items and
//! [`MAX_TRANSACTION_BYTES`]. An `apply` whose writes fit is one transaction: all or nothing,
//! like SQLite. A larger one (more than ~50 new versions) is split, in order, into several
//! transactions, each all-or-nothing and each keeping a resource's current item and its
//! history items together; if a later one fails, the earlier ones stay committed. That is safe
//! to retry: the publish step retries the whole call and what was committed comes back
//! `Unchanged`, so nothing is lost or duplicated, but the all-or-nothing of one source change's
//! resources holds only for up to ~50 resources per call.
//!
//! # Item size
//!
//! A DynamoDB item holds at most [`MAX_ITEM_BYTES`] (400 KB). A resource too large for one item
//! is refused with [`StoreError::Invalid`] naming it (publish quarantines that record alone);
//! keeping large bodies in S3 with a pointer here is the planned next step.
//!
//! # Events: the table stream is the outbox
//!
//! This store does not implement [`super::Outbox`]: on AWS its table's stream is the outbox,
//! written by DynamoDB itself in the same commit as the data. Every committed version is
//! exactly one history-item `INSERT` on the stream; mark-only rewrites of `current` items are
//! `MODIFY` records that carry no event, and so are index and type history writes. The stream
//! needs view type `NEW_IMAGE` (the history item is new and immutable, so the old image adds
//! nothing); the `emit` function's event source mapping (`EmitStoreStreamMapping` in
//! `infra/template.yaml`) filters on `{"eventName": ["INSERT"], "dynamodb": {"Keys": {"sk":
//! {"S": [{"prefix": "v#"}]}}, "NewImage": {"action": {"S": ["created", "updated",
//! "deleted"]}}}}` (only history items have `action`: an index item's sort key may start with
//! `v#` too) and turns each record's `NewImage` into the change event with
//! [`change_event_from_stream_image`], the same event (and event id) the SQLite outbox holds
//! ([`crate::handlers::emit_stream`]).
//!
//! **IAM.** With search index items, `apply`'s transactions hold `Delete`s as well as `Put`s:
//! the writer needs `dynamodb:DeleteItem` besides `PutItem` and `BatchGetItem`; a reader (the
//! gateway) needs `GetItem`, `Query` and `BatchGetItem`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, KeySchemaElement, KeyType, Put,
    ScalarAttributeType, StreamSpecification, StreamViewType, TransactWriteItem,
};
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;

use super::search::{HistoryPage, HistoryQuery, SearchPage, SearchQuery, SearchStore};
use super::sqlite::Clock;
use super::{
    FhirStore, StoreError, StoredVersion, canonical_content, change_event, check_ref, format_time,
    invalid, parse_time, parse_version_id, stored_canonical_text, with_meta,
};
use crate::model::{
    ChangeEvent, ChangeKind, Lineage, PublishAction, PublishOutcome, ResourceChange, ResourceOp,
    ResourceRef, Sequence,
};

/// Partition key attribute: `Type/id`.
pub const PK: &str = "pk";
/// Sort key attribute: [`CURRENT_SK`] or `v#` + the zero-padded version.
pub const SK: &str = "sk";
/// Sort key of a resource's current item.
pub const CURRENT_SK: &str = "current";
/// Prefix of the sort keys of history items.
pub const HISTORY_PREFIX: &str = "v#";

/// Items in one `TransactWriteItems` call (DynamoDB's limit).
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// Total size of the items of one transaction (DynamoDB's limit: 4 MB).
pub const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;
/// Size of one item (DynamoDB's limit: 400 KB, attribute names included).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// Attempts of one transaction that keeps losing a race to other writers, and of a batch read
/// that keeps coming back with unprocessed keys.
pub const MAX_ATTEMPTS: u32 = 8;
/// Versions are zero-padded to this many digits in sort keys (up to 9,999,999,999 versions).
const VERSION_DIGITS: usize = 10;

/// The DynamoDB FHIR store. Cheap to share: the SDK client is a handle.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    clock: Clock,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// The state of one resource as its current item holds it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Current {
    /// 0: no item yet.
    rev: u64,
    /// 0: no version yet (marks only).
    version: i64,
    last_updated: Option<DateTime<Utc>>,
    deleted: bool,
    content: Option<String>,
    lineage: Option<String>,
    marks: BTreeMap<String, Sequence>,
    /// The keys of the resource's search index items (`[pk, sk]`), removed with its next
    /// version.
    ix: Vec<(String, String)>,
}

impl Current {
    fn live(&self) -> bool {
        self.version > 0 && !self.deleted
    }
}

/// A change checked and serialized before anything is written.
struct Prepared<'a> {
    change: &'a ResourceChange,
    /// Canonical content of an upsert.
    content: Option<Value>,
    lineage_text: String,
    mark_key: String,
    /// Whether sequence marks are checked and moved (false: a dataset pointer move).
    check_order: bool,
}

/// The writes of one transaction, and what they do.
#[derive(Default)]
struct Segment {
    /// Resources whose current item is rewritten, with the revision read (0: new item).
    rewritten: BTreeMap<ResourceRef, u64>,
    /// History items, in order.
    history: Vec<HashMap<String, AttributeValue>>,
    history_bytes: usize,
    /// Search index rewrites, per resource: from its index when the segment began to its
    /// index after the segment's last version of it.
    index: BTreeMap<ResourceRef, IndexWrite>,
    /// Items the index rewrites touch (puts and deletes), and the bytes they put.
    index_len: usize,
    index_bytes: usize,
    outcomes: Vec<PublishOutcome>,
}

/// The index items one resource's versions in a segment put, and the old ones they delete.
#[derive(Clone)]
struct IndexWrite {
    puts: Vec<HashMap<String, AttributeValue>>,
    deletes: Vec<(String, String)>,
    bytes: usize,
}

impl IndexWrite {
    fn len(&self) -> usize {
        self.puts.len() + self.deletes.len()
    }
}

/// What a new version writes besides the current item.
struct VersionWrites {
    /// The version's history item.
    history: HashMap<String, AttributeValue>,
    /// Its type history pointer.
    pointer: HashMap<String, AttributeValue>,
    /// The resource's index items after this version (none after a delete).
    index: Vec<HashMap<String, AttributeValue>>,
}

enum CommitError {
    /// Another writer changed an item this transaction was conditioned on.
    Conflict(String),
    Failed(StoreError),
}

impl DynamoStore {
    /// A store over `table`, with a client built from [`crate::aws::loader`].
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
            clock: std::sync::Arc::new(Utc::now),
        }
    }

    /// A store over `table` with the SDK configuration of the environment
    /// ([`crate::aws::sdk_config`]: the Lambda role, region and endpoint).
    pub async fn from_environment(table: impl Into<String>) -> DynamoStore {
        let config = crate::aws::sdk_config().await;
        DynamoStore::new(Client::new(&config), table)
    }

    /// Replaces the clock that stamps `lastUpdated`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table as `infra/template.yaml` declares it (keys, on-demand billing, a
    /// `NEW_IMAGE` stream): for emulators, tests and hand-made environments. On AWS the stack
    /// creates it.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        create_streamed_table(&self.client, &self.table).await
    }

    fn now(&self) -> DateTime<Utc> {
        // Stored and returned times must be equal, and the text form keeps milliseconds.
        (self.clock)().trunc_subsecs(3)
    }

    fn sdk_err<E, R>(&self, operation: &str, e: SdkError<E, R>) -> StoreError
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        // Throttling, network, a missing table or missing permission: an operator can fix each
        // and the same call then succeeds, so all are retryable.
        StoreError::Unavailable(format!(
            "DynamoDB {operation} on table {}: {}",
            self.table,
            DisplayErrorContext(&e)
        ))
    }

    /// Applies changes without the per-source sequence check (and without moving sequence
    /// marks): a dataset version is authoritative for its resources, and a rollback must be
    /// able to bring back older content (see [`super::dataset`]). Otherwise as
    /// [`FhirStore::apply`]: a replay of content already stored is `Unchanged` and writes no
    /// version, so a retried pointer move emits nothing twice.
    pub async fn apply_unordered(
        &self,
        changes: &[ResourceChange],
    ) -> Result<Vec<PublishOutcome>, StoreError> {
        self.apply_all(changes, false).await
    }

    async fn apply_all(
        &self,
        changes: &[ResourceChange],
        check_order: bool,
    ) -> Result<Vec<PublishOutcome>, StoreError> {
        let now = self.now();
        let prepared = changes
            .iter()
            .map(|c| prepare(c, now, check_order))
            .collect::<Result<Vec<_>, _>>()?;
        let mut targets: Vec<ResourceRef> = Vec::new();
        let mut seen = HashSet::new();
        for p in &prepared {
            if seen.insert(&p.change.target) {
                targets.push(p.change.target.clone());
            }
        }
        let mut state = self.read_currents(&targets).await?;
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut start = 0;
        while start < prepared.len() {
            let mut attempt = 1;
            loop {
                let (segment, end, next) = plan(&prepared[start..], &state, now)?;
                let end = start + end;
                match self.commit(&segment, &next).await {
                    Ok(()) => {
                        for (target, current) in next {
                            state.insert(target, current);
                        }
                        outcomes.extend(segment.outcomes);
                        start = end;
                        break;
                    }
                    Err(CommitError::Conflict(why)) if attempt < MAX_ATTEMPTS => {
                        tracing::debug!(attempt, table = %self.table, "write conflict, re-reading: {why}");
                        backoff(attempt).await;
                        attempt += 1;
                        let touched: Vec<ResourceRef> = segment.rewritten.keys().cloned().collect();
                        for (target, current) in self.read_currents(&touched).await? {
                            state.insert(target, current);
                        }
                    }
                    Err(CommitError::Conflict(why)) => {
                        return Err(StoreError::Unavailable(format!(
                            "table {}: still conflicting with other writers after {MAX_ATTEMPTS} attempts: {why}",
                            self.table
                        )));
                    }
                    Err(CommitError::Failed(e)) => return Err(e),
                }
            }
        }
        tracing::debug!(
            changes = changes.len(),
            committed = outcomes
                .iter()
                .filter(|o| ChangeKind::for_action(o.action).is_some())
                .count(),
            "applied resource changes"
        );
        Ok(outcomes)
    }

    /// Writes a segment in one transaction (nothing when it writes nothing).
    async fn commit(
        &self,
        segment: &Segment,
        next: &HashMap<ResourceRef, Current>,
    ) -> Result<(), CommitError> {
        let mut items = Vec::with_capacity(segment.rewritten.len() + segment.history.len());
        for (target, read_rev) in &segment.rewritten {
            let Some(current) = next.get(target) else {
                continue;
            };
            let mut put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(current_item(target, current)));
            put = if *read_rev == 0 {
                put.condition_expression("attribute_not_exists(#pk)")
                    .expression_attribute_names("#pk", PK)
            } else {
                put.condition_expression("#rev = :rev")
                    .expression_attribute_names("#rev", "rev")
                    .expression_attribute_values(":rev", AttributeValue::N(read_rev.to_string()))
            };
            items.push(put);
        }
        for item in &segment.history {
            items.push(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item.clone()))
                    .condition_expression("attribute_not_exists(#pk)")
                    .expression_attribute_names("#pk", PK),
            );
        }
        // Index items need no condition: the current item's condition serializes every write
        // of the resource, so the keys it listed are exactly those in the table.
        let mut deletes = Vec::new();
        for write in segment.index.values() {
            for item in &write.puts {
                items.push(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item.clone())),
                );
            }
            for (p, k) in &write.deletes {
                deletes.push(
                    Delete::builder()
                        .table_name(&self.table)
                        .key(PK, AttributeValue::S(p.clone()))
                        .key(SK, AttributeValue::S(k.clone())),
                );
            }
        }
        if items.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let failed = |e: aws_sdk_dynamodb::error::BuildError| {
            CommitError::Failed(StoreError::Unavailable(format!(
                "table {}: {e}",
                self.table
            )))
        };
        let mut request = self
            .client
            .transact_write_items()
            .client_request_token(uuid::Uuid::new_v4().to_string());
        for put in items {
            let put = put.build().map_err(failed)?;
            request = request.transact_items(TransactWriteItem::builder().put(put).build());
        }
        for delete in deletes {
            let delete = delete.build().map_err(failed)?;
            request = request.transact_items(TransactWriteItem::builder().delete(delete).build());
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.transaction_err(e)),
        }
    }

    fn transaction_err<R: std::fmt::Debug>(
        &self,
        e: SdkError<TransactWriteItemsError, R>,
    ) -> CommitError {
        if let SdkError::ServiceError(service) = &e {
            match service.err() {
                TransactWriteItemsError::TransactionCanceledException(canceled) => {
                    let codes: Vec<&str> = canceled
                        .cancellation_reasons()
                        .iter()
                        .filter_map(|r| r.code())
                        .filter(|c| *c != "None")
                        .collect();
                    // No reasons (some emulators send none) is treated as a conflict: a re-read
                    // tells, and the attempts are bounded.
                    let conflict = codes.is_empty()
                        || codes.iter().all(|c| {
                            matches!(*c, "ConditionalCheckFailed" | "TransactionConflict")
                        });
                    let why = format!("transaction canceled: {}", codes.join(", "));
                    return if conflict {
                        CommitError::Conflict(why)
                    } else {
                        CommitError::Failed(StoreError::Unavailable(format!(
                            "table {}: {why}",
                            self.table
                        )))
                    };
                }
                TransactWriteItemsError::TransactionInProgressException(_) => {
                    return CommitError::Conflict(
                        "a transaction with this token is in progress".into(),
                    );
                }
                _ => {}
            }
        }
        CommitError::Failed(self.sdk_err("TransactWriteItems", e))
    }

    /// The current items of `targets` (a default, empty state for those without one).
    async fn read_currents(
        &self,
        targets: &[ResourceRef],
    ) -> Result<HashMap<ResourceRef, Current>, StoreError> {
        let keys: Vec<(String, String)> = targets
            .iter()
            .map(|t| (pk(t), CURRENT_SK.to_owned()))
            .collect();
        let items = self.batch_get(&keys).await?;
        let mut out = HashMap::with_capacity(targets.len());
        for (target, k) in targets.iter().zip(&keys) {
            let current = match items.get(k) {
                Some(item) => parse_current(target, item)?,
                None => Current::default(),
            };
            out.insert(target.clone(), current);
        }
        Ok(out)
    }

    async fn get_item(
        &self,
        target: &ResourceRef,
        sk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let answer = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(target, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_err("GetItem", e))?;
        Ok(answer.item)
    }
}

#[async_trait]
impl FhirStore for DynamoStore {
    async fn apply(&self, changes: &[ResourceChange]) -> Result<Vec<PublishOutcome>, StoreError> {
        self.apply_all(changes, true).await
    }

    async fn read(&self, target: &ResourceRef) -> Result<Option<StoredVersion>, StoreError> {
        if check_ref(target).is_err() {
            return Ok(None);
        }
        let Some(item) = self.get_item(target, CURRENT_SK).await? else {
            return Ok(None);
        };
        let current = parse_current(target, &item)?;
        if current.version == 0 {
            return Ok(None);
        }
        stored_version(
            target,
            current.version,
            current.last_updated,
            current.deleted,
            current.content.as_deref(),
            current.lineage.as_deref(),
        )
        .map(Some)
    }

    async fn vread(
        &self,
        target: &ResourceRef,
        version_id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let Some(version) = parse_version_id(version_id) else {
            return Ok(None);
        };
        if check_ref(target).is_err() || version_id.len() > VERSION_DIGITS {
            return Ok(None);
        }
        let Some(item) = self.get_item(target, &history_sk(version)).await? else {
            return Ok(None);
        };
        parse_history(target, &item).map(Some)
    }

    async fn history(&self, target: &ResourceRef) -> Result<Vec<StoredVersion>, StoreError> {
        if check_ref(target).is_err() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let answer = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :v)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":pk", AttributeValue::S(pk(target)))
                .expression_attribute_values(":v", AttributeValue::S(HISTORY_PREFIX.to_owned()))
                .scan_index_forward(false)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.sdk_err("Query", e))?;
            for item in answer.items() {
                out.push(parse_history(target, item)?);
            }
            match answer.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl SearchStore for DynamoStore {
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        self.search_page(query).await
    }

    async fn history_page(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.history_page_of(query).await
    }
}

/// Checks one change and serializes what every write needs, so that a bad change fails the
/// call before anything is written.
fn prepare(
    change: &ResourceChange,
    now: DateTime<Utc>,
    check_order: bool,
) -> Result<Prepared<'_>, StoreError> {
    let target = &change.target;
    check_ref(target)?;
    let content = match &change.op {
        ResourceOp::Upsert { resource } => Some(canonical_content(target, resource)?),
        ResourceOp::Delete => None,
    };
    let lineage_text = serde_json::to_string(&change.lineage)
        .map_err(|e| invalid(target, format!("lineage cannot be stored: {e}")))?;
    let mark_key = mark_key(&change.lineage);
    if let Some(content) = &content {
        // The largest this version's items can be: the widest versionId and the marks of this
        // change's source entity (the exact size is checked again when the items are built).
        let stored = with_meta(content.clone(), 9_999_999_999, now).to_string();
        let probe = Current {
            rev: u64::MAX,
            version: 9_999_999_999,
            last_updated: Some(now),
            deleted: false,
            content: Some(stored.clone()),
            lineage: Some(lineage_text.clone()),
            marks: BTreeMap::from([(mark_key.clone(), change.lineage.sequence.clone())]),
            ix: Vec::new(),
        };
        let index = search::index_items(target, Some(content), now);
        if index.len() > search::MAX_INDEX_ITEMS {
            return Err(invalid(
                target,
                format!(
                    "the resource has {} search index values; this store indexes at most {} per resource (one transaction must hold a version's old and new index)",
                    index.len(),
                    search::MAX_INDEX_ITEMS
                ),
            ));
        }
        for item in &index {
            check_item_size(target, item)?;
        }
        let mut probe = probe;
        probe.ix = index.iter().map(search::item_key).collect();
        check_item_size(target, &current_item(target, &probe))?;
        check_item_size(
            target,
            &history_item(
                target,
                9_999_999_999,
                now,
                PublishAction::Updated,
                Some(&stored),
                &lineage_text,
            ),
        )?;
    }
    Ok(Prepared {
        change,
        content,
        lineage_text,
        mark_key,
        check_order,
    })
}

/// Computes changes in order from `state` until the next one would overflow one transaction.
/// Returns the segment, how many changes it covers, and the new state of the resources it
/// touches.
fn plan(
    prepared: &[Prepared<'_>],
    state: &HashMap<ResourceRef, Current>,
    now: DateTime<Utc>,
) -> Result<(Segment, usize, HashMap<ResourceRef, Current>), StoreError> {
    let mut segment = Segment::default();
    let mut next: HashMap<ResourceRef, Current> = HashMap::new();
    let mut current_bytes: HashMap<ResourceRef, usize> = HashMap::new();
    for (done, p) in prepared.iter().enumerate() {
        let target = &p.change.target;
        let before = next
            .get(target)
            .or_else(|| state.get(target))
            .cloned()
            .unwrap_or_default();
        let (after, outcome, writes) = step(p, &before, now)?;
        let rewrites = after != before;
        let mut history_bytes = segment.history_bytes;
        let mut history_len = segment.history.len();
        let (mut index_len, mut index_bytes) = (segment.index_len, segment.index_bytes);
        let mut index_write = None;
        if let Some(w) = &writes {
            for item in [&w.history, &w.pointer] {
                history_bytes += check_item_size(target, item)?;
                history_len += 1;
            }
            // From the index the table holds (as of the segment's start) to this version's.
            let new_keys: HashSet<(String, String)> =
                w.index.iter().map(search::item_key).collect();
            let deletes: Vec<(String, String)> = state
                .get(target)
                .map(|c| c.ix.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|k| !new_keys.contains(*k))
                .cloned()
                .collect();
            let bytes = w
                .index
                .iter()
                .map(|i| check_item_size(target, i))
                .sum::<Result<usize, _>>()?;
            let write = IndexWrite {
                puts: w.index.clone(),
                deletes,
                bytes,
            };
            if let Some(old) = segment.index.get(target) {
                index_len -= old.len();
                index_bytes -= old.bytes;
            }
            index_len += write.len();
            index_bytes += write.bytes;
            index_write = Some(write);
        }
        let mut sizes = current_bytes.clone();
        let mut rewritten_len = segment.rewritten.len();
        if rewrites {
            let size = check_item_size(target, &current_item(target, &after))?;
            sizes.insert(target.clone(), size);
            if !segment.rewritten.contains_key(target) {
                rewritten_len += 1;
            }
        }
        let bytes = history_bytes + index_bytes + sizes.values().sum::<usize>();
        let overflows = rewritten_len + history_len + index_len > MAX_TRANSACTION_ITEMS
            || bytes > MAX_TRANSACTION_BYTES;
        if overflows && done > 0 {
            return Ok((segment, done, next));
        }
        if rewrites {
            let read_rev = state.get(target).map_or(0, |c| c.rev);
            segment.rewritten.entry(target.clone()).or_insert(read_rev);
            current_bytes = sizes;
        }
        if let Some(w) = writes {
            segment.history.push(w.history);
            segment.history.push(w.pointer);
            segment.history_bytes = history_bytes;
        }
        if let Some(write) = index_write {
            segment.index.insert(target.clone(), write);
            segment.index_len = index_len;
            segment.index_bytes = index_bytes;
        }
        segment.outcomes.push(outcome);
        next.insert(target.clone(), after);
    }
    Ok((segment, prepared.len(), next))
}

/// One change against one resource state, as the SQLite store's `apply_one` does it: the new
/// state (its `rev` bumped when it differs), the outcome, and the writes of a new version.
fn step(
    p: &Prepared<'_>,
    before: &Current,
    now: DateTime<Utc>,
) -> Result<(Current, PublishOutcome, Option<VersionWrites>), StoreError> {
    let target = &p.change.target;
    let lineage = &p.change.lineage;
    if p.check_order
        && before
            .marks
            .get(&p.mark_key)
            .is_some_and(|mark| lineage.sequence < *mark)
    {
        return Ok((
            before.clone(),
            outcome(target, PublishAction::Stale, before),
            None,
        ));
    }
    let mut after = before.clone();
    if p.check_order {
        after
            .marks
            .insert(p.mark_key.clone(), lineage.sequence.clone());
    }
    let next_version = before.version + 1;
    let last_updated = before.last_updated.map_or(now, |t| now.max(t));
    let (action, stored) = match &p.content {
        Some(content) => {
            if before.live() {
                let text = before.content.as_deref().ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "{target} version {}: a live version without content",
                        before.version
                    ))
                })?;
                if stored_canonical_text(target, before.version, text)? == *content {
                    return Ok(finish(before, after, target, PublishAction::Unchanged));
                }
            }
            let action = if before.live() {
                PublishAction::Updated
            } else {
                PublishAction::Created
            };
            (
                action,
                Some(with_meta(content.clone(), next_version, last_updated).to_string()),
            )
        }
        None => {
            if !before.live() {
                return Ok(finish(before, after, target, PublishAction::Unchanged));
            }
            (PublishAction::Deleted, None)
        }
    };
    let item = history_item(
        target,
        next_version,
        last_updated,
        action,
        stored.as_deref(),
        &p.lineage_text,
    );
    let index = search::index_items(target, p.content.as_ref(), last_updated);
    after.ix = index.iter().map(search::item_key).collect();
    let writes = VersionWrites {
        history: item,
        pointer: search::type_history_item(target, next_version, last_updated),
        index,
    };
    after.version = next_version;
    after.last_updated = Some(last_updated);
    after.deleted = stored.is_none();
    after.content = stored;
    after.lineage = Some(p.lineage_text.clone());
    after.rev = before.rev + 1;
    let out = PublishOutcome {
        target: target.clone(),
        action,
        version_id: Some(next_version.to_string()),
        last_updated: Some(last_updated),
    };
    Ok((after, out, Some(writes)))
}

/// A change that makes no version: the state keeps its version, and is rewritten only if a
/// mark moved.
fn finish(
    before: &Current,
    mut after: Current,
    target: &ResourceRef,
    action: PublishAction,
) -> (Current, PublishOutcome, Option<VersionWrites>) {
    if after != *before {
        after.rev = before.rev + 1;
    }
    (after, outcome(target, action, before), None)
}

fn outcome(target: &ResourceRef, action: PublishAction, current: &Current) -> PublishOutcome {
    let exists = current.version > 0;
    PublishOutcome {
        target: target.clone(),
        action,
        version_id: exists.then(|| current.version.to_string()),
        last_updated: current.last_updated.filter(|_| exists),
    }
}

async fn backoff(attempt: u32) {
    // 10, 20, 40… ms with up to 100% jitter, so racing writers spread out.
    let base = 10u64 << attempt.min(6);
    let jitter = (uuid::Uuid::new_v4().as_u128() % u128::from(base)) as u64;
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

fn pk(target: &ResourceRef) -> String {
    format!("{}/{}", target.resource_type, target.id)
}

fn history_sk(version: i64) -> String {
    format!("{HISTORY_PREFIX}{version:0width$}", width = VERSION_DIGITS)
}

fn key(target: &ResourceRef, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(pk(target))),
        (SK.to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

/// Sequences of different source entities are not comparable: one mark per source entity,
/// keyed by a JSON array so no name can collide with another.
fn mark_key(lineage: &Lineage) -> String {
    serde_json::Value::Array(vec![
        Value::String(lineage.source.clone()),
        Value::String(lineage.entity.clone()),
    ])
    .to_string()
}

fn current_item(target: &ResourceRef, c: &Current) -> HashMap<String, AttributeValue> {
    let mut item = key(target, CURRENT_SK);
    item.insert(
        "resourceType".into(),
        AttributeValue::S(target.resource_type.clone()),
    );
    item.insert("id".into(), AttributeValue::S(target.id.clone()));
    item.insert("rev".into(), AttributeValue::N(c.rev.to_string()));
    item.insert("version".into(), AttributeValue::N(c.version.to_string()));
    item.insert("deleted".into(), AttributeValue::Bool(c.deleted));
    if let Some(t) = c.last_updated {
        item.insert("lastUpdated".into(), AttributeValue::S(format_time(t)));
    }
    if let Some(content) = &c.content {
        item.insert("content".into(), AttributeValue::S(content.clone()));
    }
    if let Some(lineage) = &c.lineage {
        item.insert("lineage".into(), AttributeValue::S(lineage.clone()));
    }
    let marks = c
        .marks
        .iter()
        .map(|(k, v)| (k.clone(), AttributeValue::S(v.as_str().to_owned())))
        .collect();
    item.insert("marks".into(), AttributeValue::M(marks));
    if !c.ix.is_empty() {
        let keys =
            c.ix.iter()
                .map(|(p, k)| {
                    AttributeValue::L(vec![
                        AttributeValue::S(p.clone()),
                        AttributeValue::S(k.clone()),
                    ])
                })
                .collect();
        item.insert("ix".into(), AttributeValue::L(keys));
    }
    item
}

fn history_item(
    target: &ResourceRef,
    version: i64,
    last_updated: DateTime<Utc>,
    action: PublishAction,
    content: Option<&str>,
    lineage: &str,
) -> HashMap<String, AttributeValue> {
    let mut item = key(target, &history_sk(version));
    item.insert(
        "resourceType".into(),
        AttributeValue::S(target.resource_type.clone()),
    );
    item.insert("id".into(), AttributeValue::S(target.id.clone()));
    item.insert("version".into(), AttributeValue::N(version.to_string()));
    item.insert(
        "lastUpdated".into(),
        AttributeValue::S(format_time(last_updated)),
    );
    item.insert("deleted".into(), AttributeValue::Bool(content.is_none()));
    let action = match action {
        PublishAction::Created => "created",
        PublishAction::Deleted => "deleted",
        _ => "updated",
    };
    item.insert("action".into(), AttributeValue::S(action.to_owned()));
    if let Some(content) = content {
        item.insert("content".into(), AttributeValue::S(content.to_owned()));
    }
    item.insert("lineage".into(), AttributeValue::S(lineage.to_owned()));
    item
}

/// The size DynamoDB counts for an item (attribute names plus values, as documented under
/// "Item sizes and formats"); refuses one over [`MAX_ITEM_BYTES`], naming the resource.
fn check_item_size(
    target: &ResourceRef,
    item: &HashMap<String, AttributeValue>,
) -> Result<usize, StoreError> {
    let size: usize = item.iter().map(|(k, v)| k.len() + value_size(v)).sum();
    if size > MAX_ITEM_BYTES {
        return Err(invalid(
            target,
            format!(
                "the resource needs a {size}-byte DynamoDB item; an item holds at most {MAX_ITEM_BYTES} bytes"
            ),
        ));
    }
    Ok(size)
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        // Numbers: about one byte per two significant digits, plus one.
        AttributeValue::N(n) => n.len().div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::L(l) => 3 + l.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        AttributeValue::Ss(s) => s.iter().map(String::len).sum(),
        AttributeValue::Ns(n) => n.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::Bs(b) => b.iter().map(|b| b.as_ref().len()).sum(),
        _ => 1,
    }
}

fn string_attr<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s),
        _ => None,
    }
}

fn corrupt(target: &ResourceRef, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{target}: {what}"))
}

fn number_attr<T: std::str::FromStr>(
    target: &ResourceRef,
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n
            .parse()
            .map_err(|_| corrupt(target, format!("attribute {name} = {n:?} is not a count"))),
        _ => Err(corrupt(
            target,
            format!("attribute {name} is missing or not a number"),
        )),
    }
}

fn bool_attr(
    target: &ResourceRef,
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<bool, StoreError> {
    match item.get(name) {
        Some(AttributeValue::Bool(b)) => Ok(*b),
        _ => Err(corrupt(
            target,
            format!("attribute {name} is missing or not a boolean"),
        )),
    }
}

fn time_attr(
    target: &ResourceRef,
    item: &HashMap<String, AttributeValue>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    string_attr(item, "lastUpdated")
        .map(|t| parse_time(target, t))
        .transpose()
}

fn parse_current(
    target: &ResourceRef,
    item: &HashMap<String, AttributeValue>,
) -> Result<Current, StoreError> {
    let mut marks = BTreeMap::new();
    if let Some(AttributeValue::M(m)) = item.get("marks") {
        for (k, v) in m {
            let AttributeValue::S(digits) = v else {
                return Err(corrupt(
                    target,
                    format!("sequence mark {k} is not a string"),
                ));
            };
            let sequence = Sequence::parse(digits)
                .map_err(|e| corrupt(target, format!("stored sequence: {e}")))?;
            marks.insert(k.clone(), sequence);
        }
    }
    let mut ix = Vec::new();
    match item.get("ix") {
        None => {}
        Some(AttributeValue::L(keys)) => {
            for k in keys {
                match k {
                    AttributeValue::L(pair) => match pair.as_slice() {
                        [AttributeValue::S(p), AttributeValue::S(s)] => {
                            ix.push((p.clone(), s.clone()));
                        }
                        _ => return Err(corrupt(target, "an index key is not [pk, sk]")),
                    },
                    _ => return Err(corrupt(target, "an index key is not [pk, sk]")),
                }
            }
        }
        Some(_) => return Err(corrupt(target, "attribute ix is not a list")),
    }
    Ok(Current {
        ix,
        rev: number_attr(target, item, "rev")?,
        version: number_attr(target, item, "version")?,
        last_updated: time_attr(target, item)?,
        deleted: bool_attr(target, item, "deleted")?,
        content: string_attr(item, "content").map(str::to_owned),
        lineage: string_attr(item, "lineage").map(str::to_owned),
        marks,
    })
}

fn parse_history(
    target: &ResourceRef,
    item: &HashMap<String, AttributeValue>,
) -> Result<StoredVersion, StoreError> {
    stored_version(
        target,
        number_attr(target, item, "version")?,
        time_attr(target, item)?,
        bool_attr(target, item, "deleted")?,
        string_attr(item, "content"),
        string_attr(item, "lineage"),
    )
}

fn stored_version(
    target: &ResourceRef,
    version: i64,
    last_updated: Option<DateTime<Utc>>,
    deleted: bool,
    content: Option<&str>,
    lineage: Option<&str>,
) -> Result<StoredVersion, StoreError> {
    let at = |what: String| corrupt(target, format!("version {version}: {what}"));
    let last_updated = last_updated.ok_or_else(|| at("lastUpdated is missing".into()))?;
    let resource = match content {
        Some(text) if !deleted => {
            Some(serde_json::from_str(text).map_err(|e| at(format!("content: {e}")))?)
        }
        None if !deleted => return Err(at("a live version without content".into())),
        _ => None,
    };
    let lineage = lineage
        .map(serde_json::from_str::<Lineage>)
        .transpose()
        .map_err(|e| at(format!("lineage: {e}")))?;
    Ok(StoredVersion {
        target: target.clone(),
        version_id: version.to_string(),
        last_updated,
        deleted,
        resource,
        lineage,
    })
}

/// A history item as the table stream's `NewImage` carries it.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryImage {
    sk: String,
    resource_type: String,
    id: String,
    version: i64,
    last_updated: String,
    action: String,
    lineage: String,
}

/// The change event of one table stream record's `NewImage` (as a Lambda event source mapping
/// delivers it, `aws_lambda_events`' `StreamRecord::new_image`): `Some` for a history item (one
/// committed version), `None` for a current item (no event: its versions come as history
/// items). The event, and its id, are those the SQLite store's outbox holds for the same
/// version.
pub fn change_event_from_stream_image(
    image: &serde_dynamo::Item,
) -> Result<Option<ChangeEvent>, StoreError> {
    let pk = match image.get(PK) {
        Some(serde_dynamo::AttributeValue::S(pk)) => pk.as_str(),
        _ => "",
    };
    match image.get(SK) {
        Some(serde_dynamo::AttributeValue::S(sk)) if search::is_history_key(pk, sk) => {}
        Some(serde_dynamo::AttributeValue::S(_)) => return Ok(None),
        _ => {
            return Err(StoreError::Corrupt(
                "stream image without a string sort key".into(),
            ));
        }
    }
    let h: HistoryImage = serde_dynamo::from_item(image.clone())
        .map_err(|e| StoreError::Corrupt(format!("stream image of a history item: {e}")))?;
    let target = ResourceRef {
        resource_type: h.resource_type,
        id: h.id,
    };
    if h.sk != history_sk(h.version) {
        return Err(corrupt(
            &target,
            format!("history item {} holds version {}", h.sk, h.version),
        ));
    }
    let kind = match h.action.as_str() {
        "created" => ChangeKind::Created,
        "updated" => ChangeKind::Updated,
        "deleted" => ChangeKind::Deleted,
        other => return Err(corrupt(&target, format!("unknown action {other:?}"))),
    };
    let lineage: Lineage =
        serde_json::from_str(&h.lineage).map_err(|e| corrupt(&target, format!("lineage: {e}")))?;
    let last_updated = parse_time(&target, &h.last_updated)?;
    Ok(Some(change_event(
        kind,
        &target,
        &h.version.to_string(),
        last_updated,
        &lineage,
    )))
}

pub mod dataset;
pub mod resolved;
pub mod search;

/// Creates a `pk`/`sk` table with on-demand billing and a `NEW_IMAGE` stream, as
/// `infra/template.yaml` declares the store and the ledger tables: for emulators, tests and
/// hand-made environments. On AWS the stack creates them.
pub(crate) async fn create_streamed_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let build = |e: aws_sdk_dynamodb::error::BuildError| {
        StoreError::Unavailable(format!("table {table}: {e}"))
    };
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build)
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(build)
    };
    client
        .create_table()
        .table_name(table)
        .attribute_definitions(attribute(PK)?)
        .attribute_definitions(attribute(SK)?)
        .key_schema(key(PK, KeyType::Hash)?)
        .key_schema(key(SK, KeyType::Range)?)
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .map_err(build)?,
        )
        .send()
        .await
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "DynamoDB CreateTable on table {table}: {}",
                DisplayErrorContext(&e)
            ))
        })?;
    Ok(())
}

#[cfg(test)]
mod tests;
