//! [`DatasetStore`] on AWS: versions and staged resources in a DynamoDB **versions table**,
//! the current-version pointer in **SSM Parameter Store**, the published state in the
//! DynamoDB FHIR store ([`DynamoStore`]).
//!
//! # Versions table
//!
//! Keys `pk` (S) + `sk` (S), pay per request, no stream (`infra/template.yaml`,
//! `DatasetVersionsTable`; [`DynamoDatasets::create_table`] makes the same one for tests):
//!
//! - **version** `pk = "ds#<dataset>"`, `sk = "v#<version, 10 digits>"`: `dataset`, `version`
//!   (N), `status` (`IN_PROGRESS` | `SUCCEEDED` | `FAILED` | `ROLLED_BACK`), `createdAt`,
//!   `updatedAt`, `heartbeatAt` (S, RFC 3339 with milliseconds), `owner`, `error`, `purged`
//!   (BOOL), and for a version the pointer was moved to: `previous` (N, the version it
//!   replaced; absent for the first) and `published` (BOOL, the difference is in the store).
//! - **chunk** `pk = "ds#<dataset>"`, `sk = "v#<version>#c#<chunk>"`: `chunk`, `recordsRead`,
//!   `resourcesWritten`, `quarantined` (N), `doneAt`. One `Query` on the dataset's `pk` reads
//!   every version with its chunks, in version order.
//! - **staged resource** `pk = "r#<dataset>#<version>#<shard, 2 digits>"`, `sk = "Type/id"`:
//!   `content` (S, the canonical resource) and `lineage` (S, JSON). A resource's shard is a
//!   hash of `Type/id` modulo [`SHARDS`], the same in every version, so a version's write load
//!   spreads over [`SHARDS`] partitions and the difference of two versions is a merge of two
//!   sorted `Query` streams per shard, in constant memory.
//! - **move** `pk = "moves"`, `sk = "<dataset>"`: `to`, `from` (N) and `at` (S), while a pointer
//!   move of the dataset is in flight (steps 2–4 below). One `Query` on `moves` tells a reader
//!   every dataset it must answer from the staged versions ([`DynamoDatasets::moves_in_flight`],
//!   [`super::resolved::ResolvedStore`]).
//!
//! Staged resources live here, not in the FHIR store table, because that table's stream is
//! the outbox: staging millions of rows there would put millions of records on the stream for
//! `emit` to filter out; and here the chunk function needs no permission on the FHIR store,
//! and `gc` deletes a version without touching the record.
//!
//! # Steps
//!
//! - `begin`: fails dead loads (heartbeat older than the lease: a conditional update on the
//!   very heartbeat seen, so one that moved meanwhile stays alive), refuses with `Busy` while a
//!   live load runs, then allocates `max + 1` with a `PutItem` conditioned on the item not
//!   existing: two loads that race for a number get it once; the loser re-reads, sees the
//!   winner IN_PROGRESS and answers `Busy`.
//! - `stage`: `BatchWriteItem` of 25, unprocessed items retried with back-off.
//! - `finalize`: (1) `SUCCEEDED` with `previous` = the pointer and `published = false`,
//!   conditioned on `IN_PROGRESS`; (2) the move item, then `PutParameter` (Overwrite) of the
//!   pointer: **the visible step**, then a wait of [`POINTER_TTL`] (every reader's list of
//!   moves is younger than that: from then on all of them answer this dataset from the staged
//!   versions); (3) the difference `previous` → version applied to the FHIR store through
//!   [`DynamoStore::apply_unordered`] in batches, each new resource version one history item
//!   and so one change event on the table stream; (4) `published = true`, and the move item
//!   deleted. A crash anywhere is
//!   repaired by calling `finalize` again (a SUCCEEDED, unpublished version resumes at (2)),
//!   and by the next `begin`, which finishes any unpublished move first. Step (3) is
//!   idempotent: content already stored comes back `Unchanged`, which writes no version, so a
//!   retried move writes nothing twice and emits no duplicate event.
//! - `rollback`: one transaction marks the current version ROLLED_BACK and the target
//!   SUCCEEDED (`previous` = the current one, unpublished), then (2)–(4) as above: the reverse
//!   difference, with its events.
//!
//! Readers by id see one version whole, never a mix: [`super::resolved::ResolvedStore`] (the
//! gateway's store on AWS) answers a dataset with a move in flight from the staged resource of
//! the version the pointer is on ([`DynamoDatasets::read_staged`]), and everything else from
//! the FHIR store. Searches and histories read the FHIR store's own index, which follows the
//! pointer within the duration of step (3).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, KeySchemaElement, KeyType,
    PutRequest, ScalarAttributeType, TransactWriteItem, Update, WriteRequest,
};
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;

use super::{DynamoStore, MAX_ATTEMPTS, MAX_ITEM_BYTES, PK, SK, backoff};
use crate::model::{Lineage, PublishAction, ResourceChange, ResourceOp, ResourceRef};
use crate::store::dataset::{
    DatasetError, DatasetStore, DatasetVersion, GcReport, LoadCounts, POINTER_TTL, PointerMove,
    StagedResource, VersionStatus, check_dataset_name, pointer_parameter,
};
use crate::store::sqlite::Clock;
use crate::store::{StoreError, canonical_content, check_ref, format_time, invalid};

/// Partitions a version's staged resources are spread over.
pub const SHARDS: u32 = 16;
/// Items in one `BatchWriteItem` call (DynamoDB's limit).
const BATCH_WRITE_ITEMS: usize = 25;
/// Changes handed to the FHIR store per `apply` during a pointer move.
const APPLY_BATCH: usize = 50;
/// The longest chunk name kept (a sort key holds at most 1,024 bytes).
const MAX_CHUNK_BYTES: usize = 900;

/// Dataset versions on AWS. Cheap to clone: the SDK clients are handles.
#[derive(Clone)]
pub struct DynamoDatasets {
    client: Client,
    ssm: aws_sdk_ssm::Client,
    table: String,
    store: DynamoStore,
    clock: Clock,
    /// How long a move waits between its visible step and the store's first change.
    settle: Duration,
}

impl std::fmt::Debug for DynamoDatasets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDatasets")
            .field("table", &self.table)
            .field("store", &self.store.table())
            .finish_non_exhaustive()
    }
}

/// A version item as read.
#[derive(Debug, Clone)]
struct Row {
    version: u64,
    status: VersionStatus,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    heartbeat_at: DateTime<Utc>,
    /// The text stored, for conditions on the very value seen.
    heartbeat_text: String,
    owner: String,
    error: Option<String>,
    purged: bool,
    previous: Option<u64>,
    published: bool,
    chunks: Vec<Chunk>,
}

#[derive(Debug, Clone)]
struct Chunk {
    name: String,
    counts: LoadCounts,
    done_at: String,
}

/// One staged resource as a shard query returns it.
struct StagedRow {
    sk: String,
    content: String,
    lineage: String,
}

type Item = HashMap<String, AttributeValue>;

/// A pointer move whose visible step is done and whose difference the FHIR store may not hold
/// yet ([`DynamoDatasets::moves_in_flight`]): readers answer from the staged versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveInFlight {
    pub dataset: String,
    /// The version the pointer is on.
    pub to: u64,
    /// The version it left (`None` for a dataset's first version).
    pub from: Option<u64>,
    /// When the move was announced: the `lastUpdated` a reader shows for content the store
    /// does not hold yet.
    pub at: DateTime<Utc>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn dataset_pk(dataset: &str) -> String {
    format!("ds#{dataset}")
}

fn version_sk(version: u64) -> String {
    format!("v#{version:010}")
}

fn chunk_sk(version: u64, chunk: &str) -> String {
    format!("v#{version:010}#c#{chunk}")
}

/// The partition of the move items: one per dataset whose pointer move is in flight.
const MOVES_PK: &str = "moves";

fn staged_pk(dataset: &str, version: u64, shard: u32) -> String {
    format!("r#{dataset}#{version:010}#{shard:02}")
}

/// FNV-1a of `Type/id`: stable across builds and platforms (the std hasher is not).
fn shard_of(resource_key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in resource_key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % SHARDS
}

fn resource_key(target: &ResourceRef) -> String {
    format!("{}/{}", target.resource_type, target.id)
}

fn key(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

fn corrupt(what: impl std::fmt::Display) -> DatasetError {
    DatasetError::Store(StoreError::Corrupt(format!(
        "dataset versions table: {what}"
    )))
}

fn str_attr<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

fn num_attr(item: &Item, name: &str) -> Result<Option<u64>, DatasetError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| corrupt(format!("attribute {name} = {v:?} is not a count"))),
        Some(_) => Err(corrupt(format!("attribute {name} is not a number"))),
    }
}

fn req_num(item: &Item, name: &str) -> Result<u64, DatasetError> {
    num_attr(item, name)?.ok_or_else(|| corrupt(format!("attribute {name} is missing")))
}

fn req_str<'a>(item: &'a Item, name: &str) -> Result<&'a str, DatasetError> {
    str_attr(item, name).ok_or_else(|| corrupt(format!("attribute {name} is missing")))
}

fn bool_attr(item: &Item, name: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::Bool(true)))
}

fn time_attr(item: &Item, name: &str) -> Result<DateTime<Utc>, DatasetError> {
    let text = req_str(item, name)?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(format!("attribute {name} = {text:?}: {e}")))
}

fn parse_row(item: &Item) -> Result<Row, DatasetError> {
    let status_text = req_str(item, "status")?;
    let status = VersionStatus::parse(status_text)
        .ok_or_else(|| corrupt(format!("unknown status {status_text:?}")))?;
    Ok(Row {
        version: req_num(item, "version")?,
        status,
        created_at: time_attr(item, "createdAt")?,
        updated_at: time_attr(item, "updatedAt")?,
        heartbeat_at: time_attr(item, "heartbeatAt")?,
        heartbeat_text: req_str(item, "heartbeatAt")?.to_owned(),
        owner: req_str(item, "owner")?.to_owned(),
        error: str_attr(item, "error").map(str::to_owned),
        purged: bool_attr(item, "purged"),
        previous: num_attr(item, "previous")?,
        published: bool_attr(item, "published"),
        chunks: Vec::new(),
    })
}

fn parse_chunk(item: &Item) -> Result<Chunk, DatasetError> {
    Ok(Chunk {
        name: req_str(item, "chunk")?.to_owned(),
        counts: LoadCounts {
            records_read: req_num(item, "recordsRead")?,
            resources_written: req_num(item, "resourcesWritten")?,
            quarantined: req_num(item, "quarantined")?,
        },
        done_at: req_str(item, "doneAt")?.to_owned(),
    })
}

fn wrong(dataset: &str, row: &Row, reason: &str) -> DatasetError {
    DatasetError::WrongStatus {
        dataset: dataset.to_owned(),
        version: row.version,
        status: row.status,
        reason: reason.to_owned(),
    }
}

fn count(action: PublishAction, mv: &mut PointerMove) {
    match action {
        PublishAction::Created => mv.created += 1,
        PublishAction::Updated => mv.updated += 1,
        PublishAction::Deleted => mv.deleted += 1,
        PublishAction::Unchanged | PublishAction::Stale => mv.unchanged += 1,
    }
}

fn is_condition_failed<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("ConditionalCheckFailedException")
        || s.err().code() == Some("TransactionCanceledException"))
}

impl DynamoDatasets {
    /// Versions in `table`, pointers in SSM, the published state in `store`.
    pub fn new(
        client: Client,
        ssm: aws_sdk_ssm::Client,
        table: impl Into<String>,
        store: DynamoStore,
    ) -> DynamoDatasets {
        DynamoDatasets {
            client,
            ssm,
            table: table.into(),
            store,
            clock: std::sync::Arc::new(Utc::now),
            settle: POINTER_TTL,
        }
    }

    /// Replaces how long a move waits after its pointer step before it changes the store
    /// ([`POINTER_TTL`] by default: the age of the oldest move list a reader may still trust).
    /// Tests whose readers cache nothing wait for nothing.
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// With the SDK configuration of the environment ([`crate::aws::sdk_config`]).
    pub async fn from_environment(
        versions_table: impl Into<String>,
        store_table: impl Into<String>,
    ) -> DynamoDatasets {
        let config = crate::aws::sdk_config().await;
        let client = Client::new(&config);
        DynamoDatasets::new(
            client.clone(),
            aws_sdk_ssm::Client::new(&config),
            versions_table,
            DynamoStore::new(client, store_table),
        )
    }

    /// Replaces the clock of the version table's times (and of the store's `lastUpdated`).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.store = self.store.with_clock(clock.clone());
        self.clock = clock;
        self
    }

    /// The versions table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The FHIR store the pointer moves publish into.
    pub fn store(&self) -> &DynamoStore {
        &self.store
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)().trunc_subsecs(3)
    }

    fn sdk_err<E, R>(&self, operation: &str, e: SdkError<E, R>) -> DatasetError
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        DatasetError::Store(StoreError::Unavailable(format!(
            "{operation} (versions table {}): {}",
            self.table,
            DisplayErrorContext(&e)
        )))
    }

    /// Creates the versions table as `infra/template.yaml` declares it (for emulators and
    /// tests; on AWS the stack creates it).
    pub async fn create_table(&self) -> Result<(), DatasetError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| {
            DatasetError::Store(StoreError::Unavailable(format!(
                "table {}: {e}",
                self.table
            )))
        };
        let mut request = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest);
        for (name, kind) in [(PK, KeyType::Hash), (SK, KeyType::Range)] {
            request = request
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(name)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(build)?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(name)
                        .key_type(kind)
                        .build()
                        .map_err(build)?,
                );
        }
        request
            .send()
            .await
            .map_err(|e| self.sdk_err("CreateTable", e))?;
        Ok(())
    }

    /// Every version of the dataset with its chunks, oldest first.
    async fn rows(&self, dataset: &str) -> Result<Vec<Row>, DatasetError> {
        let mut rows: Vec<Row> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(dataset_pk(dataset)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.sdk_err("Query", e))?;
            for item in page.items() {
                let sk = req_str(item, SK)?;
                if sk.contains("#c#") {
                    let chunk = parse_chunk(item)?;
                    let version = req_num(item, "version")?;
                    match rows.last_mut() {
                        Some(r) if r.version == version => r.chunks.push(chunk),
                        _ => return Err(corrupt(format!("chunk item {sk} without its version"))),
                    }
                } else {
                    rows.push(parse_row(item)?);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(rows)
    }

    async fn row(&self, dataset: &str, version: u64) -> Result<Option<Row>, DatasetError> {
        let answer = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(dataset_pk(dataset), version_sk(version))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.sdk_err("GetItem", e))?;
        answer.item.as_ref().map(parse_row).transpose()
    }

    async fn require(&self, dataset: &str, version: u64) -> Result<Row, DatasetError> {
        self.row(dataset, version)
            .await?
            .ok_or_else(|| DatasetError::NoSuchVersion {
                dataset: dataset.to_owned(),
                version,
            })
    }

    fn to_version(&self, dataset: &str, row: Row, current: Option<u64>) -> DatasetVersion {
        let mut chunks = row.chunks;
        chunks.sort_by(|a, b| (&a.done_at, &a.name).cmp(&(&b.done_at, &b.name)));
        let mut counts = LoadCounts::default();
        for c in &chunks {
            counts += c.counts;
        }
        DatasetVersion {
            dataset: dataset.to_owned(),
            version: row.version,
            status: row.status,
            created_at: row.created_at,
            updated_at: row.updated_at,
            heartbeat_at: row.heartbeat_at,
            owner: row.owner,
            counts,
            source_files: chunks.into_iter().map(|c| c.name).collect(),
            error: row.error,
            current: current == Some(row.version),
            purged: row.purged,
        }
    }

    async fn read_pointer(&self, dataset: &str) -> Result<Option<u64>, DatasetError> {
        let name = pointer_parameter(dataset);
        let answer = match self.ssm.get_parameter().name(&name).send().await {
            Ok(a) => a,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(DatasetError::Store(StoreError::Unavailable(format!(
                    "SSM GetParameter {name}: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                ))));
            }
        };
        let text = answer
            .parameter()
            .and_then(|p| p.value())
            .unwrap_or_default();
        text.parse::<u64>().map(Some).map_err(|_| {
            DatasetError::Store(StoreError::Corrupt(format!(
                "parameter {name} is not a version number: {text:?}"
            )))
        })
    }

    /// An unconditional `PutItem` into the versions table.
    async fn put(&self, item: Item) -> Result<(), DatasetError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| self.sdk_err("PutItem", e))?;
        Ok(())
    }

    async fn write_pointer(&self, dataset: &str, version: u64) -> Result<(), DatasetError> {
        let name = pointer_parameter(dataset);
        self.ssm
            .put_parameter()
            .name(&name)
            .value(version.to_string())
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .description(
                "fhir-unify: the dataset's current version (moved by finalize and rollback)",
            )
            .send()
            .await
            .map_err(|e| {
                DatasetError::Store(StoreError::Unavailable(format!(
                    "SSM PutParameter {name}: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                )))
            })?;
        Ok(())
    }

    /// Sets the heartbeat of an IN_PROGRESS version (refusing any other status).
    async fn touch(&self, dataset: &str, version: u64) -> Result<(), DatasetError> {
        let now = format_time(self.now());
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dataset_pk(dataset), version_sk(version))))
            .update_expression("SET heartbeatAt = :now, updatedAt = :now")
            .condition_expression("#status = :in")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":in", s(VersionStatus::InProgress.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => {
                let row = self.require(dataset, version).await?;
                Err(wrong(
                    dataset,
                    &row,
                    "only a version being loaded takes resources",
                ))
            }
            Err(e) => Err(self.sdk_err("UpdateItem", e)),
        }
    }

    /// Marks IN_PROGRESS versions of `rows` whose heartbeat is older than `lease` FAILED.
    async fn fail_dead_in(
        &self,
        dataset: &str,
        rows: &mut [Row],
        lease: Duration,
    ) -> Result<Vec<u64>, DatasetError> {
        let now = self.now();
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(lease)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut dead = Vec::new();
        for row in rows.iter_mut() {
            if row.status != VersionStatus::InProgress || row.heartbeat_at >= cutoff {
                continue;
            }
            let reason = format!(
                "the load stopped: no heartbeat since {}",
                row.heartbeat_text
            );
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(dataset_pk(dataset), version_sk(row.version))))
                .update_expression("SET #status = :failed, updatedAt = :now, #error = :why")
                .condition_expression("#status = :in AND heartbeatAt = :seen")
                .expression_attribute_names("#status", "status")
                .expression_attribute_names("#error", "error")
                .expression_attribute_values(":failed", s(VersionStatus::Failed.as_str()))
                .expression_attribute_values(":in", s(VersionStatus::InProgress.as_str()))
                .expression_attribute_values(":now", s(format_time(now)))
                .expression_attribute_values(":why", s(reason.clone()))
                .expression_attribute_values(":seen", s(row.heartbeat_text.clone()))
                .send()
                .await;
            match result {
                Ok(_) => {
                    tracing::warn!(
                        dataset,
                        version = row.version,
                        "dataset load without heartbeat marked FAILED"
                    );
                    row.status = VersionStatus::Failed;
                    row.error = Some(reason);
                    dead.push(row.version);
                }
                // It heartbeated (or ended) meanwhile: alive after all.
                Err(e) if is_condition_failed(&e) => {
                    if let Some(fresh) = self.row(dataset, row.version).await? {
                        *row = Row {
                            chunks: std::mem::take(&mut row.chunks),
                            ..fresh
                        };
                    }
                }
                Err(e) => return Err(self.sdk_err("UpdateItem", e)),
            }
        }
        Ok(dead)
    }

    async fn begin_inner(
        &self,
        dataset: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<DatasetVersion, DatasetError> {
        check_dataset_name(dataset)?;
        let mut attempt = 1;
        loop {
            let mut rows = self.rows(dataset).await?;
            self.fail_dead_in(dataset, &mut rows, lease).await?;
            if let Some(live) = rows.iter().find(|r| r.status == VersionStatus::InProgress) {
                return Err(DatasetError::Busy {
                    dataset: dataset.to_owned(),
                    version: live.version,
                    owner: live.owner.clone(),
                    heartbeat_at: live.heartbeat_at,
                });
            }
            // A move a crash interrupted is finished before the pointer can move again.
            for row in rows
                .iter()
                .filter(|r| r.status == VersionStatus::Succeeded && !r.published)
            {
                match self.publish(dataset, row).await {
                    Ok(_) => {}
                    // Superseded: the pointer went elsewhere since; nothing to finish.
                    Err(DatasetError::WrongStatus { .. }) => {
                        tracing::warn!(
                            dataset,
                            version = row.version,
                            "an interrupted move was superseded"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            let next = rows.iter().map(|r| r.version).max().unwrap_or(0) + 1;
            let now = format_time(self.now());
            let mut item = key(dataset_pk(dataset), version_sk(next));
            item.insert("dataset".into(), s(dataset));
            item.insert("version".into(), n(next));
            item.insert("status".into(), s(VersionStatus::InProgress.as_str()));
            for at in ["createdAt", "updatedAt", "heartbeatAt"] {
                item.insert(at.into(), s(now.clone()));
            }
            item.insert("owner".into(), s(owner));
            item.insert("purged".into(), AttributeValue::Bool(false));
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .send()
                .await;
            match result {
                Ok(_) => {
                    tracing::info!(dataset, version = next, "dataset version created");
                    let row = self.require(dataset, next).await?;
                    let current = self.read_pointer(dataset).await?;
                    return Ok(self.to_version(dataset, row, current));
                }
                // Another load took this number: look again (it is most likely live now).
                Err(e) if is_condition_failed(&e) && attempt < MAX_ATTEMPTS => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                Err(e) if is_condition_failed(&e) => {
                    return Err(DatasetError::Store(StoreError::Unavailable(format!(
                        "dataset {dataset}: no version number could be allocated in {MAX_ATTEMPTS} attempts"
                    ))));
                }
                Err(e) => return Err(self.sdk_err("PutItem", e)),
            }
        }
    }

    /// Writes `requests` in batches of 25, retrying unprocessed items.
    async fn batch_write(&self, requests: Vec<WriteRequest>) -> Result<(), DatasetError> {
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let mut batch: Vec<WriteRequest> = requests.by_ref().take(BATCH_WRITE_ITEMS).collect();
            let mut attempt = 1;
            loop {
                let answer = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, batch)
                    .send()
                    .await
                    .map_err(|e| self.sdk_err("BatchWriteItem", e))?;
                let rest = answer
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .unwrap_or_default();
                if rest.is_empty() {
                    break;
                }
                if attempt >= MAX_ATTEMPTS {
                    return Err(DatasetError::Store(StoreError::Unavailable(format!(
                        "versions table {}: BatchWriteItem left {} items unprocessed after {MAX_ATTEMPTS} attempts",
                        self.table,
                        rest.len()
                    ))));
                }
                backoff(attempt).await;
                attempt += 1;
                batch = rest;
            }
        }
        Ok(())
    }

    async fn stage_inner(
        &self,
        dataset: &str,
        version: u64,
        resources: &[StagedResource],
    ) -> Result<(), DatasetError> {
        // Everything is checked before anything is written; a resource staged twice in one
        // call keeps its last content (a batch may not name one key twice).
        let mut by_key: HashMap<String, (u32, String, String)> = HashMap::new();
        let mut order = Vec::new();
        for r in resources {
            check_ref(&r.target)?;
            let content = canonical_content(&r.target, &r.resource)?.to_string();
            let lineage = serde_json::to_string(&r.lineage)
                .map_err(|e| invalid(&r.target, format!("lineage cannot be stored: {e}")))?;
            let sk = resource_key(&r.target);
            let size = content.len() + lineage.len() + sk.len() + dataset.len() + 64;
            if size > MAX_ITEM_BYTES {
                return Err(DatasetError::Store(invalid(
                    &r.target,
                    format!(
                        "the resource needs a {size}-byte DynamoDB item; an item holds at most {MAX_ITEM_BYTES} bytes"
                    ),
                )));
            }
            if by_key
                .insert(sk.clone(), (shard_of(&sk), content, lineage))
                .is_none()
            {
                order.push(sk);
            }
        }
        self.touch(dataset, version).await?;
        let mut requests = Vec::with_capacity(order.len());
        for sk in order {
            let Some((shard, content, lineage)) = by_key.remove(&sk) else {
                continue;
            };
            let mut item = key(staged_pk(dataset, version, shard), sk);
            item.insert("content".into(), s(content));
            item.insert("lineage".into(), s(lineage));
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(|e| corrupt(e.to_string()))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        self.batch_write(requests).await
    }

    async fn chunk_done_inner(
        &self,
        dataset: &str,
        version: u64,
        chunk: &str,
        counts: LoadCounts,
    ) -> Result<(), DatasetError> {
        if chunk.is_empty() || chunk.len() > MAX_CHUNK_BYTES {
            return Err(DatasetError::Invalid {
                dataset: dataset.to_owned(),
                reason: format!(
                    "a chunk name is 1 to {MAX_CHUNK_BYTES} bytes; this one has {}",
                    chunk.len()
                ),
            });
        }
        self.touch(dataset, version).await?;
        let mut item = key(dataset_pk(dataset), chunk_sk(version, chunk));
        item.insert("version".into(), n(version));
        item.insert("chunk".into(), s(chunk));
        item.insert("recordsRead".into(), n(counts.records_read));
        item.insert("resourcesWritten".into(), n(counts.resources_written));
        item.insert("quarantined".into(), n(counts.quarantined));
        item.insert("doneAt".into(), s(format_time(self.now())));
        self.put(item).await
    }

    /// Step 1 of `finalize`: SUCCEEDED, remembering the version the pointer is on, not yet
    /// published. Public so that tests can stop a finalize right after it (a crash before the
    /// pointer moves); `finalize` resumes from there.
    pub async fn mark_succeeded(&self, dataset: &str, version: u64) -> Result<(), DatasetError> {
        let previous = self.read_pointer(dataset).await?;
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dataset_pk(dataset), version_sk(version))))
            .condition_expression("#status = :in")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in", s(VersionStatus::InProgress.as_str()))
            .expression_attribute_values(":ok", s(VersionStatus::Succeeded.as_str()))
            .expression_attribute_values(":now", s(format_time(self.now())))
            .expression_attribute_values(":no", AttributeValue::Bool(false));
        update = match previous {
            Some(p) => update
                .update_expression(
                    "SET #status = :ok, updatedAt = :now, published = :no, previous = :prev",
                )
                .expression_attribute_values(":prev", n(p)),
            None => update.update_expression(
                "SET #status = :ok, updatedAt = :now, published = :no REMOVE previous",
            ),
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => {
                let row = self.require(dataset, version).await?;
                Err(wrong(
                    dataset,
                    &row,
                    "only a version being loaded can be finalized",
                ))
            }
            Err(e) => Err(self.sdk_err("UpdateItem", e)),
        }
    }

    /// Steps 2–4 of a pointer move to `row` (SUCCEEDED, not published): the pointer, the
    /// difference from `row.previous`, `published`. Idempotent.
    async fn publish(&self, dataset: &str, row: &Row) -> Result<PointerMove, DatasetError> {
        self.show(dataset, row).await?;
        // Readers trust a move list for at most POINTER_TTL: once it has passed, every one of
        // them answers this dataset from the staged versions, so none sees the store half
        // way through the difference.
        if !self.settle.is_zero() {
            tokio::time::sleep(self.settle).await;
        }
        let mv = self
            .apply_difference(dataset, row.previous, row.version)
            .await?;
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dataset_pk(dataset), version_sk(row.version))))
            .update_expression("SET published = :yes, updatedAt = :now")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":now", s(format_time(self.now())))
            .send()
            .await
            .map_err(|e| self.sdk_err("UpdateItem", e))?;
        self.end_move(dataset, row.version).await?;
        Ok(mv)
    }

    /// Step 2 of a pointer move to `version` (SUCCEEDED, not published): the move item, then
    /// the pointer. Public so that tests can stop a move right after its visible step (the
    /// store not yet changed); `finalize` resumes from there.
    pub async fn move_pointer(&self, dataset: &str, version: u64) -> Result<(), DatasetError> {
        let row = self.require(dataset, version).await?;
        if row.status != VersionStatus::Succeeded || row.published {
            return Err(wrong(
                dataset,
                &row,
                "only a version whose move has not been published can be shown",
            ));
        }
        self.show(dataset, &row).await
    }

    async fn show(&self, dataset: &str, row: &Row) -> Result<(), DatasetError> {
        let current = self.read_pointer(dataset).await?;
        if current != Some(row.version) && current != row.previous {
            return Err(wrong(
                dataset,
                row,
                &format!(
                    "the pointer moved to {current:?} since this move from {:?} began",
                    row.previous
                ),
            ));
        }
        // Announced before the pointer moves, so a reader that sees the new pointer finds
        // the move too.
        self.announce_move(dataset, row).await?;
        if current != Some(row.version) {
            self.write_pointer(dataset, row.version).await?;
        }
        Ok(())
    }

    /// Puts the move item of a move to `row` (idempotent: a resumed move rewrites it).
    async fn announce_move(&self, dataset: &str, row: &Row) -> Result<(), DatasetError> {
        let mut item = key(MOVES_PK.to_owned(), dataset.to_owned());
        item.insert("to".into(), n(row.version));
        if let Some(p) = row.previous {
            item.insert("from".into(), n(p));
        }
        item.insert("at".into(), s(format_time(self.now())));
        self.put(item).await
    }

    /// Deletes the move item once the store holds the difference, unless a later move
    /// replaced it.
    async fn end_move(&self, dataset: &str, version: u64) -> Result<(), DatasetError> {
        match self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(MOVES_PK.to_owned(), dataset.to_owned())))
            .condition_expression("#to = :v")
            .expression_attribute_names("#to", "to")
            .expression_attribute_values(":v", n(version))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(self.sdk_err("DeleteItem", e)),
        }
    }

    /// The pointer moves in flight: announced, with the pointer on their new version (a move
    /// announced whose pointer step has not happened yet is invisible, and so is left out),
    /// and not yet published. One `Query`, plus an SSM read and a `GetItem` per move listed
    /// (usually none).
    pub async fn moves_in_flight(&self) -> Result<Vec<MoveInFlight>, DatasetError> {
        let mut moves = Vec::new();
        let mut start = None;
        loop {
            let (items, next) = self.query_page(MOVES_PK, start, false).await?;
            for item in &items {
                let dataset = req_str(item, SK)?;
                let mv = MoveInFlight {
                    dataset: dataset.to_owned(),
                    to: req_num(item, "to")?,
                    from: num_attr(item, "from")?,
                    at: time_attr(item, "at")?,
                };
                if self.read_pointer(dataset).await? != Some(mv.to) {
                    continue;
                }
                // A move item a crash left after `published` (the next move replaces it).
                if self
                    .row(dataset, mv.to)
                    .await?
                    .is_some_and(|row| row.published)
                {
                    continue;
                }
                moves.push(mv);
            }
            match next {
                Some(n) => start = Some(n),
                None => break,
            }
        }
        Ok(moves)
    }

    /// Applies the difference between the staged resources of `from` (or nothing) and `to`
    /// to the FHIR store, shard by shard, as two sorted streams merged.
    async fn apply_difference(
        &self,
        dataset: &str,
        from: Option<u64>,
        to: u64,
    ) -> Result<PointerMove, DatasetError> {
        let mut mv = PointerMove {
            dataset: dataset.to_owned(),
            from,
            to: Some(to),
            ..PointerMove::default()
        };
        let mut pending: Vec<ResourceChange> = Vec::with_capacity(APPLY_BATCH);
        for shard in 0..SHARDS {
            let mut new = ShardCursor::new(staged_pk(dataset, to, shard), true);
            let mut old = ShardCursor::new(
                from.map(|f| staged_pk(dataset, f, shard))
                    .unwrap_or_default(),
                from.is_some(),
            );
            loop {
                let n_key = new.peek(self).await?.map(|r| r.sk.clone());
                let o_key = old.peek(self).await?.map(|r| r.sk.clone());
                let change = match (n_key, o_key) {
                    (None, None) => break,
                    (Some(nk), Some(ok)) if nk == ok => {
                        let (Some(nr), Some(or)) = (new.next(), old.next()) else {
                            break;
                        };
                        if nr.content == or.content {
                            mv.unchanged += 1;
                            continue;
                        }
                        upsert(dataset, to, nr)?
                    }
                    (Some(nk), Some(ok)) if nk > ok => {
                        let Some(or) = old.next() else { break };
                        delete(dataset, from.unwrap_or(0), or)?
                    }
                    (Some(_), _) => {
                        let Some(nr) = new.next() else { break };
                        upsert(dataset, to, nr)?
                    }
                    (None, Some(_)) => {
                        let Some(or) = old.next() else { break };
                        delete(dataset, from.unwrap_or(0), or)?
                    }
                };
                pending.push(change);
                if pending.len() >= APPLY_BATCH {
                    self.apply_batch(&mut pending, &mut mv).await?;
                }
            }
        }
        self.apply_batch(&mut pending, &mut mv).await?;
        tracing::info!(
            dataset,
            from = ?mv.from,
            to = ?mv.to,
            created = mv.created,
            updated = mv.updated,
            deleted = mv.deleted,
            unchanged = mv.unchanged,
            "dataset difference applied to the store"
        );
        Ok(mv)
    }

    async fn apply_batch(
        &self,
        pending: &mut Vec<ResourceChange>,
        mv: &mut PointerMove,
    ) -> Result<(), DatasetError> {
        if pending.is_empty() {
            return Ok(());
        }
        let outcomes = self.store.apply_unordered(pending).await?;
        for o in outcomes {
            count(o.action, mv);
        }
        pending.clear();
        Ok(())
    }

    async fn query_page(
        &self,
        pk: &str,
        start: Option<Item>,
        keys_only: bool,
    ) -> Result<(Vec<Item>, Option<Item>), DatasetError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(true)
            .set_exclusive_start_key(start);
        if keys_only {
            q = q
                .projection_expression("#pk, #sk")
                .expression_attribute_names("#sk", SK);
        }
        let page = q.send().await.map_err(|e| self.sdk_err("Query", e))?;
        let next = page.last_evaluated_key.filter(|k| !k.is_empty());
        Ok((page.items.unwrap_or_default(), next))
    }

    async fn finalize_inner(
        &self,
        dataset: &str,
        version: u64,
    ) -> Result<PointerMove, DatasetError> {
        let mut row = self.require(dataset, version).await?;
        if row.status == VersionStatus::InProgress {
            self.mark_succeeded(dataset, version).await?;
            row = self.require(dataset, version).await?;
        }
        match row.status {
            VersionStatus::Succeeded if row.published => {
                // A retried finalize whose first attempt completed.
                let current = self.read_pointer(dataset).await?;
                if current != Some(version) {
                    return Err(wrong(
                        dataset,
                        &row,
                        "it was published, and the pointer has moved on since",
                    ));
                }
                Ok(PointerMove {
                    dataset: dataset.to_owned(),
                    from: current,
                    to: current,
                    ..PointerMove::default()
                })
            }
            VersionStatus::Succeeded => {
                let mv = self.publish(dataset, &row).await?;
                tracing::info!(dataset, version, from = ?mv.from, "dataset version published");
                Ok(mv)
            }
            _ => Err(wrong(
                dataset,
                &row,
                "only a version being loaded can be finalized",
            )),
        }
    }

    async fn fail_inner(
        &self,
        dataset: &str,
        version: u64,
        reason: &str,
    ) -> Result<(), DatasetError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dataset_pk(dataset), version_sk(version))))
            .update_expression(
                "SET #status = :failed, updatedAt = :now, #error = if_not_exists(#error, :why)",
            )
            .condition_expression("#status = :in")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#error", "error")
            .expression_attribute_values(":failed", s(VersionStatus::Failed.as_str()))
            .expression_attribute_values(":in", s(VersionStatus::InProgress.as_str()))
            .expression_attribute_values(":now", s(format_time(self.now())))
            .expression_attribute_values(":why", s(reason))
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::warn!(dataset, version, "dataset version marked FAILED");
                Ok(())
            }
            Err(e) if is_condition_failed(&e) => {
                let row = self.require(dataset, version).await?;
                if row.status == VersionStatus::Failed {
                    Ok(())
                } else {
                    Err(wrong(dataset, &row, "only a version being loaded can fail"))
                }
            }
            Err(e) => Err(self.sdk_err("UpdateItem", e)),
        }
    }

    async fn rollback_inner(
        &self,
        dataset: &str,
        to: Option<u64>,
    ) -> Result<PointerMove, DatasetError> {
        let invalid = |reason: String| DatasetError::Invalid {
            dataset: dataset.to_owned(),
            reason,
        };
        let current = self
            .read_pointer(dataset)
            .await?
            .ok_or_else(|| invalid("no version is current: nothing to roll back".into()))?;
        let rows = self.rows(dataset).await?;
        let target = match to {
            Some(v) => {
                let row = rows.iter().find(|r| r.version == v).ok_or_else(|| {
                    DatasetError::NoSuchVersion {
                        dataset: dataset.to_owned(),
                        version: v,
                    }
                })?;
                if v == current {
                    if row.status == VersionStatus::Succeeded && !row.published {
                        // A rollback a crash interrupted after the pointer moved: finish it.
                        return self.publish(dataset, row).await;
                    }
                    return Err(invalid(format!("version {v} is already current")));
                }
                if !matches!(
                    row.status,
                    VersionStatus::Succeeded | VersionStatus::RolledBack
                ) {
                    return Err(wrong(
                        dataset,
                        row,
                        "only a loaded version can be made current",
                    ));
                }
                if row.purged {
                    return Err(invalid(format!(
                        "version {v} was garbage-collected: its resources are gone"
                    )));
                }
                v
            }
            None => rows
                .iter()
                .rev()
                .find(|r| r.version < current && r.status == VersionStatus::Succeeded && !r.purged)
                .map(|r| r.version)
                .ok_or_else(|| {
                    invalid(format!(
                        "no SUCCEEDED version older than the current one ({current}) is left"
                    ))
                })?,
        };
        let now = s(format_time(self.now()));
        let build = |e: aws_sdk_dynamodb::error::BuildError| corrupt(e.to_string());
        let leave = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(dataset_pk(dataset), version_sk(current))))
            .update_expression("SET #status = :rb, updatedAt = :now")
            .condition_expression("#status = :ok")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":rb", s(VersionStatus::RolledBack.as_str()))
            .expression_attribute_values(":ok", s(VersionStatus::Succeeded.as_str()))
            .expression_attribute_values(":now", now.clone())
            .build()
            .map_err(build)?;
        let enter = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(dataset_pk(dataset), version_sk(target))))
            .update_expression(
                "SET #status = :ok, updatedAt = :now, previous = :prev, published = :no",
            )
            .condition_expression("(#status = :ok OR #status = :rb) AND purged = :no")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":rb", s(VersionStatus::RolledBack.as_str()))
            .expression_attribute_values(":ok", s(VersionStatus::Succeeded.as_str()))
            .expression_attribute_values(":now", now)
            .expression_attribute_values(":prev", n(current))
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .build()
            .map_err(build)?;
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(leave).build())
            .transact_items(TransactWriteItem::builder().update(enter).build())
            .send()
            .await
            .map_err(|e| {
                if is_condition_failed(&e) {
                    invalid(format!(
                        "versions {current} and {target} changed during the rollback; try again"
                    ))
                } else {
                    self.sdk_err("TransactWriteItems", e)
                }
            })?;
        let row = self.require(dataset, target).await?;
        let mv = self.publish(dataset, &row).await?;
        tracing::info!(dataset, from = current, to = target, "dataset rolled back");
        Ok(mv)
    }

    async fn gc_inner(&self, dataset: &str, keep: usize) -> Result<GcReport, DatasetError> {
        let current = self.read_pointer(dataset).await?;
        let rows = self.rows(dataset).await?;
        let mut loaded_seen = 0usize;
        let mut purge = Vec::new();
        for r in rows.iter().rev() {
            if r.purged || r.status == VersionStatus::InProgress {
                continue;
            }
            if r.status == VersionStatus::Failed {
                purge.push(r.version);
                continue;
            }
            loaded_seen += 1;
            // An unpublished move still needs both its versions.
            if Some(r.version) != current && loaded_seen > keep && r.published {
                purge.push(r.version);
            }
        }
        let mut report = GcReport {
            dataset: dataset.to_owned(),
            ..GcReport::default()
        };
        for v in purge {
            for shard in 0..SHARDS {
                let pk = staged_pk(dataset, v, shard);
                let mut start = None;
                loop {
                    let (items, next) = self.query_page(&pk, start.take(), true).await?;
                    report.rows_deleted += items.len() as u64;
                    let mut deletes = Vec::with_capacity(items.len());
                    for item in items {
                        let del = DeleteRequest::builder()
                            .set_key(Some(item))
                            .build()
                            .map_err(|e| corrupt(e.to_string()))?;
                        deletes.push(WriteRequest::builder().delete_request(del).build());
                    }
                    self.batch_write(deletes).await?;
                    match next {
                        Some(k) => start = Some(k),
                        None => break,
                    }
                }
            }
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(dataset_pk(dataset), version_sk(v))))
                .update_expression("SET purged = :yes")
                .expression_attribute_values(":yes", AttributeValue::Bool(true))
                .send()
                .await
                .map_err(|e| self.sdk_err("UpdateItem", e))?;
            report.purged_versions.push(v);
        }
        tracing::info!(
            dataset,
            versions = report.purged_versions.len(),
            rows = report.rows_deleted,
            "dataset versions garbage-collected"
        );
        Ok(report)
    }

    /// A resource as version `version` of the dataset holds it (`None`: not in that version,
    /// or the version was garbage-collected): the pointer-resolved read of
    /// [`super::resolved::ResolvedStore`], which shows readers one version whole while the
    /// FHIR store is catching up with a move.
    pub async fn read_staged(
        &self,
        dataset: &str,
        version: u64,
        target: &ResourceRef,
    ) -> Result<Option<StagedResource>, DatasetError> {
        if check_ref(target).is_err() {
            return Ok(None);
        }
        let sk = resource_key(target);
        let answer = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(staged_pk(dataset, version, shard_of(&sk)), sk)))
            .send()
            .await
            .map_err(|e| self.sdk_err("GetItem", e))?;
        let Some(item) = answer.item else {
            return Ok(None);
        };
        let row = staged_row(&item)?;
        let resource: Value = serde_json::from_str(&row.content)
            .map_err(|e| corrupt(format!("{dataset} version {version}: {target}: {e}")))?;
        let lineage: Lineage = serde_json::from_str(&row.lineage).map_err(|e| {
            corrupt(format!(
                "{dataset} version {version}: {target}: lineage: {e}"
            ))
        })?;
        Ok(Some(StagedResource {
            target: target.clone(),
            resource,
            lineage,
        }))
    }
}

/// The resource of a staged row (its key is `Type/id`).
fn staged_target(sk: &str) -> Result<ResourceRef, DatasetError> {
    let (resource_type, id) = sk
        .split_once('/')
        .ok_or_else(|| corrupt(format!("staged item key {sk:?} is not Type/id")))?;
    Ok(ResourceRef {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
    })
}

fn staged_row(item: &Item) -> Result<StagedRow, DatasetError> {
    Ok(StagedRow {
        sk: req_str(item, SK)?.to_owned(),
        content: req_str(item, "content")?.to_owned(),
        lineage: req_str(item, "lineage")?.to_owned(),
    })
}

fn upsert(dataset: &str, version: u64, row: StagedRow) -> Result<ResourceChange, DatasetError> {
    let target = staged_target(&row.sk)?;
    let resource: Value = serde_json::from_str(&row.content)
        .map_err(|e| corrupt(format!("{dataset} version {version}: {target}: {e}")))?;
    let lineage: Lineage = serde_json::from_str(&row.lineage).map_err(|e| {
        corrupt(format!(
            "{dataset} version {version}: {target}: lineage: {e}"
        ))
    })?;
    Ok(ResourceChange {
        target,
        op: ResourceOp::Upsert { resource },
        lineage,
    })
}

fn delete(dataset: &str, version: u64, row: StagedRow) -> Result<ResourceChange, DatasetError> {
    let target = staged_target(&row.sk)?;
    let lineage: Lineage = serde_json::from_str(&row.lineage).map_err(|e| {
        corrupt(format!(
            "{dataset} version {version}: {target}: lineage: {e}"
        ))
    })?;
    Ok(ResourceChange {
        target,
        op: ResourceOp::Delete,
        lineage,
    })
}

/// A paged, sorted read of one shard of one version.
struct ShardCursor {
    pk: String,
    buf: VecDeque<StagedRow>,
    start: Option<Item>,
    done: bool,
}

impl ShardCursor {
    fn new(pk: String, exists: bool) -> ShardCursor {
        ShardCursor {
            pk,
            buf: VecDeque::new(),
            start: None,
            done: !exists,
        }
    }

    async fn peek(&mut self, ds: &DynamoDatasets) -> Result<Option<&StagedRow>, DatasetError> {
        while self.buf.is_empty() && !self.done {
            let (items, next) = ds.query_page(&self.pk, self.start.take(), false).await?;
            for item in &items {
                self.buf.push_back(staged_row(item)?);
            }
            match next {
                Some(k) => self.start = Some(k),
                None => self.done = true,
            }
        }
        Ok(self.buf.front())
    }

    fn next(&mut self) -> Option<StagedRow> {
        self.buf.pop_front()
    }
}

#[async_trait]
impl DatasetStore for DynamoDatasets {
    async fn begin(
        &self,
        dataset: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<DatasetVersion, DatasetError> {
        self.begin_inner(dataset, owner, lease).await
    }

    async fn heartbeat(&self, dataset: &str, version: u64) -> Result<(), DatasetError> {
        self.touch(dataset, version).await
    }

    async fn stage(
        &self,
        dataset: &str,
        version: u64,
        resources: &[StagedResource],
    ) -> Result<(), DatasetError> {
        self.stage_inner(dataset, version, resources).await
    }

    async fn chunk_done(
        &self,
        dataset: &str,
        version: u64,
        chunk: &str,
        counts: LoadCounts,
    ) -> Result<(), DatasetError> {
        self.chunk_done_inner(dataset, version, chunk, counts).await
    }

    async fn finalize(&self, dataset: &str, version: u64) -> Result<PointerMove, DatasetError> {
        self.finalize_inner(dataset, version).await
    }

    async fn fail(&self, dataset: &str, version: u64, reason: &str) -> Result<(), DatasetError> {
        self.fail_inner(dataset, version, reason).await
    }

    async fn rollback(&self, dataset: &str, to: Option<u64>) -> Result<PointerMove, DatasetError> {
        self.rollback_inner(dataset, to).await
    }

    async fn versions(&self, dataset: &str) -> Result<Vec<DatasetVersion>, DatasetError> {
        let current = self.read_pointer(dataset).await?;
        let rows = self.rows(dataset).await?;
        Ok(rows
            .into_iter()
            .rev()
            .map(|r| self.to_version(dataset, r, current))
            .collect())
    }

    async fn current(&self, dataset: &str) -> Result<Option<u64>, DatasetError> {
        self.read_pointer(dataset).await
    }

    async fn fail_dead(&self, dataset: &str, lease: Duration) -> Result<Vec<u64>, DatasetError> {
        let mut rows = self.rows(dataset).await?;
        self.fail_dead_in(dataset, &mut rows, lease).await
    }

    async fn gc(&self, dataset: &str, keep: usize) -> Result<GcReport, DatasetError> {
        self.gc_inner(dataset, keep).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // FNV-1a is fixed: these values must never change, or staged rows become unreachable.
        assert_eq!(shard_of("Patient/a"), shard_of("Patient/a"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            seen.insert(shard_of(&format!("Patient/p{i}")));
        }
        assert_eq!(seen.len(), SHARDS as usize);
        assert!(shard_of("") < SHARDS);
    }

    #[test]
    fn keys_sort_as_numbers() {
        assert!(version_sk(9) < version_sk(10));
        assert!(version_sk(10) < chunk_sk(10, "a"));
        assert!(chunk_sk(10, "zzz") < version_sk(11));
        assert_eq!(staged_pk("a/b", 3, 7), "r#a/b#0000000003#07");
    }

    #[test]
    fn bad_items_are_corrupt_not_panics() {
        let item: Item = HashMap::from([("status".to_owned(), s("DONE"))]);
        assert!(matches!(
            parse_row(&item),
            Err(DatasetError::Store(StoreError::Corrupt(_)))
        ));
        let item: Item = HashMap::from([
            ("status".to_owned(), s("FAILED")),
            ("version".to_owned(), AttributeValue::N("-1".into())),
        ]);
        assert!(parse_row(&item).is_err());
        assert!(staged_target("no-slash").is_err());
        let row = StagedRow {
            sk: "Patient/a".into(),
            content: "{not json".into(),
            lineage: "{}".into(),
        };
        assert!(upsert("d", 1, row).is_err());
    }
}
