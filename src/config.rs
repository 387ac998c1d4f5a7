//! The pipeline file (`fhir-unify.yaml`): one file that says what the pipeline is — where the
//! store is, where events go, and each source with its entities, keys and mapping files.
//!
//! It is read once at start and checked whole: an unknown key, a missing mapping file, a
//! mapping whose source/entity disagrees with the entry naming it, all fail the start with
//! the file, the line where there is one, and the reason.
//!
//! Relative paths of mapping files and local stream folders resolve against the pipeline
//! file's folder; relative store and event paths resolve against the data folder.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mapping::{Mapping, MappingSet};
use crate::sources::dms::{DEFAULT_TIMESTAMP_COLUMN, DmsBinding, DmsPath};
use crate::sources::dynamodb::StreamBinding;
use crate::sources::transfer::{FileFormat, LoadMode, TransferTarget};

/// A pipeline file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file at fault (the pipeline file or a mapping file it names).
    pub file: String,
    /// What is wrong, with `line L column C` where known.
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            message: message.into(),
        }
    }
}

/// The whole pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub quarantine: QuarantineConfig,
    #[serde(default)]
    pub local: LocalConfig,
    pub sources: Vec<SourceConfig>,
    /// Partners that may read through the FHIR API, and which resource types each may read.
    #[serde(default)]
    pub partners: Vec<PartnerConfig>,
    /// The folder of the pipeline file (relative paths resolve against it).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The pipeline file itself.
    #[serde(skip)]
    pub file: PathBuf,
}

/// Which FHIR store to use (one key: the kind of store).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The embedded SQLite store.
    pub sqlite: Option<SqliteStoreConfig>,
    /// The DynamoDB store (`store::dynamodb`): used by the `publish` Lambda; the table's
    /// stream is the outbox on AWS.
    pub dynamodb: Option<DynamoStoreConfig>,
    /// A FHIR R4 server (`store::rest`: HealthLake, HAPI, Azure…): used by the `publish`
    /// Lambda; `FHIR_UNIFY_FHIR_ENDPOINT` overrides its base URL.
    #[serde(default)]
    pub rest: Option<RestStoreConfig>,
}

/// How the REST store authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestAuthKind {
    /// AWS SigV4 (HealthLake), credentials and region from the AWS environment.
    Sigv4,
    /// `Authorization: Bearer`, the token from an environment variable (never in the file).
    Bearer,
    None,
}

/// A FHIR R4 server as the store (`store::rest`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestStoreConfig {
    /// The FHIR base URL, e.g. `https://healthlake.us-east-1.amazonaws.com/datastore/ID/r4`.
    pub base: String,
    pub auth: RestAuthKind,
    /// SigV4 region (default: the AWS environment's).
    #[serde(default)]
    pub region: Option<String>,
    /// SigV4 service name (default `healthlake`).
    #[serde(default)]
    pub service: Option<String>,
    /// Bearer: the environment variable holding the token (default `FHIR_UNIFY_FHIR_TOKEN`).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Entries per transaction Bundle (default 100; the server's limit).
    #[serde(default)]
    pub max_entries: Option<usize>,
    /// Attempts per request on 429/5xx (default 5).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Timeout per request in seconds (default 30).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// The DynamoDB store: one table, laid out as `store::dynamodb` describes (the stack's
/// `FhirStoreTable`; on Lambda the stack passes its name in `FHIR_UNIFY_STORE_TABLE`, which
/// takes precedence).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoStoreConfig {
    /// The table name (3 to 255 of `A-Z a-z 0-9 _ - .`).
    pub table: String,
}

/// The embedded SQLite store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteStoreConfig {
    /// The database file, relative to the data folder.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            sqlite: Some(SqliteStoreConfig {
                path: PathBuf::from("store.db"),
            }),
            dynamodb: None,
            rest: None,
        }
    }
}

impl StoreConfig {
    /// The DynamoDB table, when the store is `dynamodb`.
    pub fn dynamodb_table(&self) -> Option<&str> {
        self.dynamodb.as_ref().map(|d| d.table.as_str())
    }

    fn check(&self) -> Result<(), String> {
        if let Some(r) = &self.rest {
            if self.sqlite.is_some() || self.dynamodb.is_some() {
                return Err(
                    "store: names two store kinds; one of `sqlite`, `dynamodb`, `rest`".into(),
                );
            }
            if !(r.base.starts_with("https://") || r.base.starts_with("http://")) {
                return Err(format!(
                    "store: rest: base {:?} is not an http:// or https:// URL",
                    r.base
                ));
            }
            if r.max_entries.is_some_and(|n| n < 2) {
                return Err("store: rest: max_entries must be at least 2".into());
            }
            if r.max_attempts == Some(0) {
                return Err("store: rest: max_attempts must be at least 1".into());
            }
            return Ok(());
        }
        match (&self.sqlite, &self.dynamodb) {
            (Some(_), Some(_)) => {
                Err("store: names two store kinds; one of `sqlite`, `dynamodb`".into())
            }
            (None, None) => {
                Err("store: name one store kind (`sqlite`, `dynamodb` or `rest`)".into())
            }
            (_, Some(d)) if !is_table_name(&d.table) => Err(format!(
                "store: dynamodb: table {:?} is not a DynamoDB table name (3 to 255 of A-Z a-z 0-9 _ - .)",
                d.table
            )),
            _ => Ok(()),
        }
    }

    /// The SQLite database file, relative to the data folder. The local runtime (`run`,
    /// `serve`) keeps this embedded store even when `dynamodb` is named.
    pub fn sqlite_path(&self) -> &Path {
        self.sqlite
            .as_ref()
            .map_or(Path::new("store.db"), |s| s.path.as_path())
    }
}

/// Where change events go (one key: the kind of bus).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// The local bus.
    pub local: Option<LocalBusConfig>,
    /// An EventBridge bus (on AWS).
    #[serde(default)]
    pub eventbridge: Option<EventBridgeConfig>,
}

/// The EventBridge bus change events are put on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBridgeConfig {
    /// The bus name or ARN. On Lambda, `FHIR_UNIFY_EVENT_BUS` (set by `infra/template.yaml` to
    /// the stack's bus) takes its place, so the packaged file need not know the stack.
    pub bus: String,
}

/// The local bus: an archive of every event, rules with EventBridge event patterns, and their
/// targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBusConfig {
    /// Every event goes to this NDJSON file (relative to the data folder), as if by a rule
    /// matching everything.
    #[serde(default)]
    pub ndjson: Option<PathBuf>,
    /// The archive (SQLite, relative to the data folder): every event, for `events list` and
    /// `events replay`, and the ledger of deliveries per target.
    #[serde(default = "default_archive")]
    pub archive: PathBuf,
    /// Rules, each sending the events its pattern matches to its targets.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_archive() -> PathBuf {
    PathBuf::from("events.db")
}

/// A rule of the local bus.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// An EventBridge event pattern, as YAML/JSON, or as a string of JSON.
    pub pattern: serde_json::Value,
    pub targets: Vec<TargetConfig>,
}

impl RuleConfig {
    /// The pattern as a JSON value (a string holding JSON is parsed; it stays a string if it
    /// is not JSON, which the pattern check then refuses).
    pub fn pattern_value(&self) -> serde_json::Value {
        match &self.pattern {
            serde_json::Value::String(s) => {
                serde_json::from_str(s).unwrap_or_else(|_| self.pattern.clone())
            }
            v => v.clone(),
        }
    }
}

/// One target of a rule (one key: the kind of target).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// An NDJSON file, relative to the data folder.
    #[serde(default)]
    pub ndjson: Option<PathBuf>,
    /// An HTTP endpoint receiving each event as a JSON POST.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// A Server-Sent Events stream of the local server (`fhir-unify serve`).
    #[serde(default)]
    pub sse: Option<SseConfig>,
}

/// A webhook target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Extra request headers (e.g. an authorization header).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Attempts per event before the bus reports it failed (it then stays in the outbox).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled each time, up to `max_backoff_ms`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    /// Time limit of one request.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> u64 {
    200
}
fn default_max_backoff() -> u64 {
    10_000
}
fn default_timeout() -> u64 {
    10_000
}

/// An SSE target: a named stream served by the local server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseConfig {
    pub stream: String,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            local: Some(LocalBusConfig {
                ndjson: Some(PathBuf::from("events.ndjson")),
                archive: default_archive(),
                rules: Vec::new(),
            }),
            eventbridge: None,
        }
    }
}

impl EventsConfig {
    /// The local bus's all-events file, relative to the data folder, if there is one.
    pub fn ndjson_path(&self) -> Option<&Path> {
        self.local.as_ref().and_then(|l| l.ndjson.as_deref())
    }

    /// Checks the local bus: rule names, targets, and every pattern (an invalid pattern names
    /// the rule and the place in the pattern).
    fn check(&self) -> Result<(), String> {
        let local = match (&self.local, &self.eventbridge) {
            (Some(local), None) => local,
            (None, Some(eb)) if eb.bus.trim().is_empty() => {
                return Err("events.eventbridge.bus: a bus name or ARN is needed".into());
            }
            (None, Some(_)) => return Ok(()),
            _ => return Err("events: name one bus kind (`local` or `eventbridge`)".into()),
        };
        let mut names = HashSet::new();
        let mut files: HashSet<&Path> = local.ndjson.iter().map(PathBuf::as_path).collect();
        for rule in &local.rules {
            let at = |msg: String| format!("events.local.rules {:?}: {msg}", rule.name);
            if rule.name.is_empty() || rule.name == crate::events::bus::ALL_EVENTS_RULE {
                return Err(at(format!(
                    "a rule needs a name other than {:?} (that one is the top-level ndjson file's)",
                    crate::events::bus::ALL_EVENTS_RULE
                )));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(at("rule names must be unique".into()));
            }
            crate::events::pattern::EventPattern::from_value(&rule.pattern_value())
                .map_err(|e| at(format!("pattern: {e}")))?;
            if rule.targets.is_empty() {
                return Err(at("targets: at least one target is needed".into()));
            }
            for (i, t) in rule.targets.iter().enumerate() {
                let kinds = usize::from(t.ndjson.is_some())
                    + usize::from(t.webhook.is_some())
                    + usize::from(t.sse.is_some());
                if kinds != 1 {
                    return Err(at(format!(
                        "targets[{i}]: name exactly one kind (ndjson, webhook or sse); {kinds} given"
                    )));
                }
                if let Some(p) = &t.ndjson
                    && !files.insert(p.as_path())
                {
                    return Err(at(format!(
                        "targets[{i}]: {} is already written by another target; give each NDJSON target its own file",
                        p.display()
                    )));
                }
                if let Some(w) = &t.webhook {
                    if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                        return Err(at(format!(
                            "targets[{i}].webhook.url: {:?} is not an http:// or https:// URL",
                            w.url
                        )));
                    }
                    if w.max_attempts == 0 || w.timeout_ms == 0 {
                        return Err(at(format!(
                            "targets[{i}].webhook: max_attempts and timeout_ms must be at least 1"
                        )));
                    }
                }
                if let Some(s) = &t.sse
                    && s.stream.is_empty()
                {
                    return Err(at(format!("targets[{i}].sse.stream: a name is needed")));
                }
            }
        }
        Ok(())
    }
}

/// The quarantine queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// Queue name (the SQS queue on AWS; a table of the local queue database locally).
    #[serde(default = "default_quarantine_queue")]
    pub queue: String,
}

fn default_quarantine_queue() -> String {
    "fhir-unify-quarantine".to_owned()
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            queue: default_quarantine_queue(),
        }
    }
}

/// Settings of the local runtime only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// How often the local stream poller re-delivers records an ingest function reported as
    /// failed before sending them to quarantine (Lambda's `MaximumRetryAttempts`).
    #[serde(default = "default_stream_retries")]
    pub stream_max_retry_attempts: u32,
}

fn default_stream_retries() -> u32 {
    2
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            stream_max_retry_attempts: default_stream_retries(),
        }
    }
}

/// A partner of the FHIR API: who issues its tokens, for which audience, with which keys,
/// and the resource types it may read (its tokens' scopes can only narrow this).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    pub name: String,
    /// The `iss` of its tokens (one partner per issuer).
    pub issuer: String,
    /// The `aud` its tokens must carry.
    pub audience: String,
    /// Its signing keys: a JWKS file (relative to the pipeline file), or an `https://` URL
    /// (fetched on first use, cached, fetched again on an unknown `kid`).
    pub jwks: PathBuf,
    /// Resource types it may read, e.g. `[Patient, Coverage]`.
    pub read: Vec<String>,
    /// Resource types it may create or update through `ingest-api` (none by default: writes
    /// are denied unless listed here and granted by a `system/<Type>.cu`-style scope).
    #[serde(default)]
    pub write: Vec<String>,
}

/// One source system.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// A DynamoDB table whose stream feeds the pipeline.
    #[serde(default)]
    pub dynamodb: Option<DynamoDbSource>,
    /// AWS DMS Parquet files (full load and CDC) in S3 or a local folder.
    #[serde(default)]
    pub dms: Option<DmsSource>,
    /// Records and FHIR resources posted through API Gateway (`ingest-api`).
    #[serde(default)]
    pub api: Option<ApiSource>,
    /// Files uploaded through AWS Transfer Family, in S3 or a local folder.
    #[serde(default)]
    pub transfer: Option<TransferSource>,
    /// The entities of the source, by name (for `dms`: `schema.table` or the table name).
    /// A `transfer` source names its entities in `files` instead.
    #[serde(default)]
    pub entities: BTreeMap<String, EntityConfig>,
    /// `transfer` only: which uploaded files are which entity, in which format (the first
    /// entry whose `match` fits a file's key wins).
    #[serde(default)]
    pub files: Vec<TransferFileConfig>,
}

/// A source that posts through the API: its own JSON records to `<path>/<entity>`, and FHIR
/// resources of the listed types to the FHIR base `<path>/fhir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSource {
    /// The path the source posts to, e.g. `/ingest/partner`.
    pub path: String,
    /// FHIR resource types accepted at `<path>/fhir` (passed through a built-in mapping that
    /// keeps the resource and gives it a deterministic id).
    #[serde(default)]
    pub fhir: Vec<String>,
    /// Local runtime only: a JSON file of requests (`[{method, path, contentType?, body}]`)
    /// that `fhir-unify run` posts through `ingest-api` (relative to the pipeline file).
    #[serde(default)]
    pub local_requests: Option<PathBuf>,
}

/// The entity name under which FHIR resources of `resource_type` posted to an API source
/// travel through `unify` (its built-in mapping).
pub fn api_fhir_entity(resource_type: &str) -> String {
    format!("fhir.{resource_type}")
}

fn is_type_name(t: &str) -> bool {
    t.starts_with(|c: char| c.is_ascii_uppercase()) && t.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Files uploaded through AWS Transfer Family: `s3://bucket[/folder]` (the server's landing
/// place), or a local folder laid out like it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSource {
    pub location: String,
    /// The secret key for OpenPGP-encrypted uploads (`.pgp`, `.gpg`, `.asc`).
    #[serde(default)]
    pub pgp: Option<PgpConfig>,
}

impl TransferSource {
    /// The location, parsed like a DMS source's.
    pub fn location(&self) -> Result<DmsLocation, String> {
        parse_location(&self.location)
    }
}

/// An OpenPGP secret key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgpConfig {
    /// The key file, ASCII-armored or binary (relative to the pipeline file).
    pub private_key: PathBuf,
    /// The environment variable holding the key's passphrase, if it has one.
    #[serde(default)]
    pub passphrase_env: Option<String>,
}

/// One kind of uploaded file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferFileConfig {
    /// A glob over the key below the location (`members/*.csv.gz`; `*` stays within a
    /// folder, `**` crosses folders).
    #[serde(rename = "match")]
    pub pattern: String,
    pub entity: String,
    /// The key columns of a record.
    pub key: Vec<String>,
    pub format: FileFormat,
    /// The mapping file (relative to the pipeline file).
    pub mapping: PathBuf,
    /// `increment` (default: each record an upsert) or `full-refresh` (the file is the
    /// entity's whole data set).
    #[serde(default)]
    pub load: LoadMode,
}

/// How `match` globs are matched: `*` does not cross `/`.
const GLOB_OPTIONS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// A DynamoDB table with a stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbSource {
    pub table: String,
    /// Local runtime only: a folder of DynamoDB Streams Lambda events (`*.json`), delivered
    /// in file-name order as the table's stream.
    #[serde(default)]
    pub local_stream: Option<PathBuf>,
}

/// A DMS target: `s3://bucket[/folder]` (the endpoint's bucket and `BucketFolder`), or a local
/// folder laid out like the bucket folder (`schema/table/LOAD00000001.parquet`, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmsSource {
    pub location: String,
    /// The endpoint's `TimestampColumnName` (default `DMS_TIMESTAMP`; used when a file has it).
    #[serde(default)]
    pub timestamp_column: Option<String>,
}

/// Where a DMS source's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmsLocation {
    S3 {
        bucket: String,
        prefix: String,
    },
    /// A local folder (resolved against the pipeline file), served as a bucket named after
    /// the source, with no prefix.
    Local {
        dir: PathBuf,
    },
}

/// Parses a file source's location: `s3://bucket[/folder]` or a local folder.
fn parse_location(location: &str) -> Result<DmsLocation, String> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("location {location:?} names no bucket"));
        }
        return Ok(DmsLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        });
    }
    if location.is_empty() || location.contains("://") {
        return Err(format!(
            "location {location:?} is neither s3://bucket[/folder] nor a local folder"
        ));
    }
    Ok(DmsLocation::Local {
        dir: PathBuf::from(location),
    })
}

impl DmsSource {
    /// The location, parsed (a relative local folder is resolved by the caller).
    pub fn location(&self) -> Result<DmsLocation, String> {
        parse_location(&self.location)
    }

    /// The timestamp column's name.
    pub fn timestamp_column(&self) -> &str {
        self.timestamp_column
            .as_deref()
            .unwrap_or(DEFAULT_TIMESTAMP_COLUMN)
    }
}

/// A DMS object bound to its source: the source's folder in the bucket and the entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmsTarget {
    /// The DMS bucket folder the key is below (empty: none).
    pub prefix: String,
    pub binding: DmsBinding,
}

/// One entity of a source: how its records are keyed and mapped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// The key attributes of a record.
    pub key: Vec<String>,
    /// The mapping file (relative to the pipeline file).
    pub mapping: PathBuf,
}

impl PipelineConfig {
    /// Reads and checks a pipeline file (mapping files are checked by [`Self::load_mappings`]).
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        let mut config = PipelineConfig::from_yaml(&text, path)?;
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        config.file = path.to_path_buf();
        Ok(config)
    }

    /// Parses and checks pipeline YAML; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<PipelineConfig, ConfigError> {
        let config: PipelineConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::new(origin, e.to_string()))?;
        config.check(origin)?;
        Ok(config)
    }

    fn check(&self, origin: &Path) -> Result<(), ConfigError> {
        self.store
            .check()
            .map_err(|m| ConfigError::new(origin, m))?;
        self.events
            .check()
            .map_err(|m| ConfigError::new(origin, m))?;
        if self.sources.is_empty() {
            return Err(ConfigError::new(
                origin,
                "sources: at least one source is needed",
            ));
        }
        let mut names = HashSet::new();
        let mut tables = HashSet::new();
        let mut api_paths = HashSet::new();
        for s in &self.sources {
            let at = |msg: String| ConfigError::new(origin, format!("source {:?}: {msg}", s.name));
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(at("source names must be unique and not empty".into()));
            }
            if let Some(t) = &s.transfer {
                if s.dynamodb.is_some() || s.dms.is_some() || s.api.is_some() {
                    return Err(at(
                        "names two source kinds; one of `dynamodb`, `dms`, `api`, `transfer`"
                            .into(),
                    ));
                }
                t.location().map_err(at)?;
                check_transfer_files(s).map_err(at)?;
                continue;
            }
            if !s.files.is_empty() {
                return Err(at("files: only a `transfer` source has files".into()));
            }
            let api_fhir = s.api.as_ref().is_some_and(|a| !a.fhir.is_empty());
            if s.entities.is_empty() && !api_fhir {
                return Err(at("entities: at least one entity is needed".into()));
            }
            for (name, e) in &s.entities {
                if e.key.is_empty() || e.key.iter().any(String::is_empty) {
                    return Err(at(format!(
                        "entity {name:?}: key must name at least one attribute"
                    )));
                }
            }
            if let Some(a) = &s.api {
                if s.dynamodb.is_some() || s.dms.is_some() {
                    return Err(at(
                        "names two source kinds; one of `dynamodb`, `dms`, `api`".into(),
                    ));
                }
                let p = &a.path;
                if !p.starts_with('/')
                    || p.ends_with('/')
                    || p.split('/').skip(1).any(str::is_empty)
                {
                    return Err(at(format!(
                        "api.path {p:?} must start with `/`, with no empty segment and no trailing `/`"
                    )));
                }
                if !api_paths.insert(p.as_str()) {
                    return Err(at(format!(
                        "api.path {p:?} is already used by another source"
                    )));
                }
                if let Some(t) = a.fhir.iter().find(|t| !is_type_name(t)) {
                    return Err(at(format!("api.fhir: {t:?} is not a resource type name")));
                }
                if let Some(name) = s
                    .entities
                    .keys()
                    .find(|n| *n == "fhir" || n.starts_with("fhir.") || n.contains('/'))
                {
                    return Err(at(format!(
                        "entity {name:?}: `fhir`, `fhir.*` and names with `/` are reserved in an api source"
                    )));
                }
                continue;
            }
            if let Some(d) = &s.dms {
                if s.dynamodb.is_some() {
                    return Err(at("names two source kinds; one of `dynamodb`, `dms`".into()));
                }
                d.location().map_err(at)?;
                for name in s.entities.keys() {
                    if name.split('.').count() > 2 || name.split('.').any(str::is_empty) {
                        return Err(at(format!(
                            "entity {name:?}: a dms entity is named `schema.table` or `table`"
                        )));
                    }
                }
                continue;
            }
            match &s.dynamodb {
                None => {
                    return Err(at(
                        "says no source kind (expected `dynamodb`, `dms`, `api` or `transfer`)"
                            .into(),
                    ));
                }
                Some(d) => {
                    if s.entities.len() != 1 {
                        return Err(at(format!(
                            "a dynamodb source maps its table to exactly one entity; {} given",
                            s.entities.len()
                        )));
                    }
                    if !tables.insert(d.table.as_str()) {
                        return Err(at(format!(
                            "table {:?} is already used by another source",
                            d.table
                        )));
                    }
                }
            }
        }
        self.check_partners(origin)
    }

    fn check_partners(&self, origin: &Path) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut issuers = HashSet::new();
        for p in &self.partners {
            let at = |msg: String| ConfigError::new(origin, format!("partner {:?}: {msg}", p.name));
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(at("partner names must be unique and not empty".into()));
            }
            if p.issuer.is_empty() || !issuers.insert(p.issuer.as_str()) {
                return Err(at(
                    "issuer must be set and not shared with another partner".into()
                ));
            }
            if p.audience.is_empty() {
                return Err(at("audience must be set".into()));
            }
            if p.read.is_empty() {
                return Err(at("read: name at least one resource type".into()));
            }
            if let Some(t) = p.read.iter().find(|t| !is_type_name(t)) {
                return Err(at(format!("read: {t:?} is not a resource type name")));
            }
            if let Some(t) = p.write.iter().find(|t| !is_type_name(t)) {
                return Err(at(format!("write: {t:?} is not a resource type name")));
            }
        }
        Ok(())
    }

    /// Resolves a path relative to the pipeline file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Loads every mapping file named by the sources, checking each says the source and entity
    /// that name it; and checks the other files a transfer source names (fixed-width layouts,
    /// its OpenPGP key), so that a bad one fails the start, not the first upload.
    pub fn load_mappings(&self) -> Result<MappingSet, ConfigError> {
        let mut set = MappingSet::new();
        for s in &self.sources {
            self.check_transfer_resources(s)?;
            let transfer_entities: BTreeMap<&String, &PathBuf> =
                s.files.iter().map(|f| (&f.entity, &f.mapping)).collect();
            let entities = s
                .entities
                .iter()
                .map(|(n, e)| (n, &e.mapping))
                .chain(transfer_entities);
            for (entity, mapping) in entities {
                let path = self.resolve(mapping);
                let mapping =
                    Mapping::load(&path).map_err(|err| ConfigError::new(&path, err.to_string()))?;
                if mapping.source() != s.name || mapping.entity() != entity {
                    return Err(ConfigError::new(
                        &path,
                        format!(
                            "maps {}/{}, but {} names it for {}/{entity}",
                            mapping.source(),
                            mapping.entity(),
                            self.file.display(),
                            s.name
                        ),
                    ));
                }
                set.insert(mapping)
                    .map_err(|err| ConfigError::new(&path, err.to_string()))?;
            }
            for t in s.api.iter().flat_map(|a| &a.fhir) {
                let entity = api_fhir_entity(t);
                let origin = format!(
                    "{} (built-in mapping of {}/{entity})",
                    self.file.display(),
                    s.name
                );
                // The resource passes through whole; the mapping sets its deterministic id.
                let yaml = format!(
                    "source: {}\nentity: {}\nresources:\n  - resourceType: {t}\n    template: \"{{{{ record }}}}\"\n",
                    serde_json::Value::String(s.name.clone()),
                    serde_json::Value::String(entity.clone()),
                );
                let mapping = Mapping::from_yaml(&yaml, &origin)
                    .map_err(|err| ConfigError::new(&self.file, err.to_string()))?;
                set.insert(mapping)
                    .map_err(|err| ConfigError::new(&self.file, err.to_string()))?;
            }
        }
        Ok(set)
    }

    /// The API source whose path holds a request path, and the rest of the path after it.
    pub fn api_source_for<'a>(&self, path: &'a str) -> Option<(&SourceConfig, &'a str)> {
        self.sources.iter().find_map(|s| {
            let a = s.api.as_ref()?;
            let rest = path.strip_prefix(a.path.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((s, rest))
        })
    }

    /// The stream binding of a DynamoDB table, if a source reads it.
    pub fn dynamodb_binding(&self, table: &str) -> Option<StreamBinding> {
        self.sources.iter().find_map(|s| {
            let d = s.dynamodb.as_ref()?;
            if d.table != table {
                return None;
            }
            let (entity, e) = s.entities.iter().next()?;
            Some(StreamBinding {
                source: s.name.clone(),
                entity: entity.clone(),
                key: e.key.clone(),
            })
        })
    }
}

impl PipelineConfig {
    /// The DMS source an object belongs to, and the entity its table maps to. `None` when no
    /// source's location holds the object or the table is not one of its entities.
    pub fn dms_target(&self, bucket: &str, key: &str) -> Option<(DmsTarget, DmsPath)> {
        self.sources.iter().find_map(|s| {
            let d = s.dms.as_ref()?;
            let prefix = match d.location().ok()? {
                DmsLocation::S3 { bucket: b, prefix } if b == bucket => prefix,
                DmsLocation::Local { .. } if s.name == bucket => String::new(),
                _ => return None,
            };
            if !prefix.is_empty() && !key.starts_with(&format!("{prefix}/")) {
                return None;
            }
            let path = DmsPath::parse(key, &prefix).ok()?;
            let (entity, e) = s
                .entities
                .get_key_value(&path.qualified_table())
                .or_else(|| s.entities.get_key_value(&path.table))?;
            Some((
                DmsTarget {
                    prefix,
                    binding: DmsBinding {
                        source: s.name.clone(),
                        entity: entity.clone(),
                        key: e.key.clone(),
                        timestamp_column: d.timestamp_column().to_owned(),
                    },
                },
                path,
            ))
        })
    }

    /// Whether a DMS source's location holds the bucket (and key prefix) of an object.
    pub fn dms_source_for(&self, bucket: &str, key: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| {
            s.dms
                .as_ref()
                .and_then(|d| d.location().ok())
                .is_some_and(|l| match l {
                    DmsLocation::S3 { bucket: b, prefix } => {
                        b == bucket && (prefix.is_empty() || key.starts_with(&format!("{prefix}/")))
                    }
                    DmsLocation::Local { .. } => s.name == bucket,
                })
        })
    }
}

/// A DynamoDB table name: 3 to 255 characters of `A-Z a-z 0-9 _ - .`.
pub fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks a transfer source's `files` (what can be checked without reading other files).
fn check_transfer_files(s: &SourceConfig) -> Result<(), String> {
    if !s.entities.is_empty() {
        return Err("entities: a transfer source names its entities in `files`".into());
    }
    if s.files.is_empty() {
        return Err("files: at least one entry is needed".into());
    }
    let mut by_entity: BTreeMap<&str, &TransferFileConfig> = BTreeMap::new();
    for (i, f) in s.files.iter().enumerate() {
        let at = |m: String| format!("files[{i}] ({:?}): {m}", f.pattern);
        glob::Pattern::new(&f.pattern).map_err(|e| at(format!("match: {e}")))?;
        if f.entity.is_empty() {
            return Err(at("entity must not be empty".into()));
        }
        if f.key.is_empty() || f.key.iter().any(String::is_empty) {
            return Err(at("key must name at least one column".into()));
        }
        f.format.check().map_err(at)?;
        if let Some(other) = by_entity.insert(&f.entity, f)
            && (other.mapping != f.mapping || other.key != f.key)
        {
            return Err(at(format!(
                "entity {:?} is named with another mapping or key by an earlier entry; one entity has one mapping and one key",
                f.entity
            )));
        }
    }
    Ok(())
}

impl PipelineConfig {
    /// Reads the layouts and the key a transfer source names.
    fn check_transfer_resources(&self, s: &SourceConfig) -> Result<(), ConfigError> {
        let Some(t) = &s.transfer else { return Ok(()) };
        for f in &s.files {
            if let FileFormat::FixedWidth(fw) = &f.format {
                let path = self.resolve(&fw.layout);
                crate::sources::transfer::fixed::Layout::load(&path)
                    .map_err(|e| ConfigError::new(&path, e.message))?;
            }
        }
        if let Some(pgp) = &t.pgp {
            let (path, passphrase) = self.pgp_key(pgp)?;
            crate::sources::transfer::pgp::DecryptionKey::load(&path, passphrase.as_deref())
                .map_err(|e| ConfigError::new(&path, e))?;
        }
        Ok(())
    }

    /// The key file and its passphrase (from the environment variable the source names).
    fn pgp_key(&self, pgp: &PgpConfig) -> Result<(PathBuf, Option<String>), ConfigError> {
        let path = self.resolve(&pgp.private_key);
        let passphrase = match &pgp.passphrase_env {
            None => None,
            Some(var) => Some(std::env::var(var).map_err(|_| {
                ConfigError::new(
                    &self.file,
                    format!("pgp.passphrase_env: the environment variable {var} is not set"),
                )
            })?),
        };
        Ok((path, passphrase))
    }

    /// The transfer source an uploaded object belongs to, and the `files` entry its key
    /// matches. `None` when no transfer source's location holds it or no entry matches.
    pub fn transfer_target(&self, bucket: &str, key: &str) -> Option<TransferTarget> {
        let s = self.transfer_source_for(bucket, key)?;
        let t = s.transfer.as_ref()?;
        let prefix = match t.location().ok()? {
            DmsLocation::S3 { prefix, .. } => prefix,
            DmsLocation::Local { .. } => String::new(),
        };
        let rel = if prefix.is_empty() {
            key
        } else {
            key.strip_prefix(&format!("{prefix}/"))?
        };
        let f = s.files.iter().find(|f| {
            glob::Pattern::new(&f.pattern).is_ok_and(|p| p.matches_with(rel, GLOB_OPTIONS))
        })?;
        let layout = match &f.format {
            FileFormat::FixedWidth(fw) => Some(self.resolve(&fw.layout)),
            _ => None,
        };
        let pgp = t.pgp.as_ref().and_then(|p| self.pgp_key(p).ok());
        Some(TransferTarget {
            source: s.name.clone(),
            entity: f.entity.clone(),
            key: f.key.clone(),
            format: f.format.clone(),
            load: f.load,
            pattern: f.pattern.clone(),
            layout,
            pgp,
        })
    }

    /// The transfer source whose location holds the bucket (and key prefix) of an object.
    pub fn transfer_source_for(&self, bucket: &str, key: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| {
            s.transfer
                .as_ref()
                .and_then(|t| t.location().ok())
                .is_some_and(|l| match l {
                    DmsLocation::S3 { bucket: b, prefix } => {
                        b == bucket && (prefix.is_empty() || key.starts_with(&format!("{prefix}/")))
                    }
                    DmsLocation::Local { .. } => s.name == bucket,
                })
        })
    }
}

/// Where the data of a local run lives: the store, the queue, the event file.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// A path relative to the data folder (absolute paths stay as they are).
    pub fn join(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.0.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
sources:
  - name: app
    dynamodb: { table: Patients }
    entities:
      patients: { key: [pk], mapping: mappings/patients.yaml }
";

    #[test]
    fn defaults_and_binding() {
        let c = PipelineConfig::from_yaml(GOOD, Path::new("p.yaml")).unwrap();
        assert_eq!(c.store.sqlite_path(), Path::new("store.db"));
        assert_eq!(c.quarantine.queue, "fhir-unify-quarantine");
        let b = c.dynamodb_binding("Patients").unwrap();
        assert_eq!((b.source.as_str(), b.entity.as_str()), ("app", "patients"));
        assert_eq!(b.key, vec!["pk".to_owned()]);
        assert!(c.dynamodb_binding("Other").is_none());
    }

    #[test]
    fn store_kinds() {
        let dynamo = format!("store: {{ dynamodb: {{ table: fhir-store.v1 }} }}\n{GOOD}");
        let c = PipelineConfig::from_yaml(&dynamo, Path::new("p.yaml")).unwrap();
        assert_eq!(c.store.dynamodb_table(), Some("fhir-store.v1"));
        assert!(c.store.sqlite.is_none());
        let d = PipelineConfig::from_yaml(GOOD, Path::new("p.yaml")).unwrap();
        assert_eq!(d.store.dynamodb_table(), None);
        for (store, expected) in [
            ("{ dynamodb: { table: T1, region: x } }", "region"),
            ("{ dynamodb: { tabel: T1 } }", "tabel"),
            ("{ dynamodb: {} }", "table"),
            ("{ dynamodb: { table: ab } }", "not a DynamoDB table name"),
            (
                "{ dynamodb: { table: \"a b c\" } }",
                "not a DynamoDB table name",
            ),
            (
                "{ sqlite: { path: s.db }, dynamodb: { table: T1 } }",
                "two store kinds",
            ),
            ("{}", "name one store kind"),
            ("{ mongo: { url: x } }", "mongo"),
        ] {
            let text = format!("store: {store}\n{GOOD}");
            let e = PipelineConfig::from_yaml(&text, Path::new("p.yaml")).unwrap_err();
            assert!(e.message.contains(expected), "{store}: {e}");
        }
        assert!(is_table_name(&"a".repeat(255)) && !is_table_name(&"a".repeat(256)));
    }

    #[test]
    fn rest_store_config() {
        let text = format!(
            "store: {{ rest: {{ base: \"https://healthlake.us-east-1.amazonaws.com/datastore/x/r4/\", auth: sigv4, max_entries: 50 }} }}\n{GOOD}"
        );
        let c = PipelineConfig::from_yaml(&text, Path::new("p.yaml")).unwrap();
        let r = c.store.rest.as_ref().unwrap();
        assert_eq!(r.auth, RestAuthKind::Sigv4);
        assert_eq!(r.max_entries, Some(50));
        assert!(c.store.sqlite.is_none() && c.store.dynamodb.is_none());
        for (store, expected) in [
            ("{ rest: { base: \"ftp://x\", auth: none } }", "not an http"),
            ("{ rest: { base: \"http://x\", auth: basic } }", "basic"),
            ("{ rest: { base: \"http://x\" } }", "auth"),
            (
                "{ rest: { base: \"http://x\", auth: none, max_entries: 1 } }",
                "at least 2",
            ),
            (
                "{ rest: { base: \"http://x\", auth: none, token: t } }",
                "token",
            ),
            (
                "{ rest: { base: \"http://x\", auth: none }, dynamodb: { table: T1 } }",
                "two store kinds",
            ),
        ] {
            let text = format!("store: {store}\n{GOOD}");
            let e = PipelineConfig::from_yaml(&text, Path::new("p.yaml")).unwrap_err();
            assert!(e.message.contains(expected), "{store}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_the_line() {
        let bad = GOOD.replace("entities:", "entitys:");
        let e = PipelineConfig::from_yaml(&bad, Path::new("p.yaml")).unwrap_err();
        assert_eq!(e.file, "p.yaml");
        assert!(e.message.contains("entitys"), "{e}");
        assert!(e.message.contains("line"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_source() {
        let no_kind = "sources:\n  - name: x\n    entities: { e: { key: [k], mapping: m.yaml } }\n";
        let e = PipelineConfig::from_yaml(no_kind, Path::new("p.yaml")).unwrap_err();
        assert!(
            e.message.contains("\"x\"") && e.message.contains("dynamodb"),
            "{e}"
        );
        let both = GOOD.replace(
            "dynamodb: { table: Patients }",
            "dynamodb: { table: Patients }\n    dms: { location: s3://b }",
        );
        let e = PipelineConfig::from_yaml(&both, Path::new("p.yaml")).unwrap_err();
        assert!(e.message.contains("two source kinds"), "{e}");
        let dup = format!(
            "{GOOD}  - name: app\n    dynamodb: {{ table: T2 }}\n    entities: {{ e: {{ key: [k], mapping: m.yaml }} }}\n"
        );
        assert!(PipelineConfig::from_yaml(&dup, Path::new("p.yaml")).is_err());
        let empty_key = GOOD.replace("key: [pk]", "key: []");
        assert!(PipelineConfig::from_yaml(&empty_key, Path::new("p.yaml")).is_err());
        assert!(PipelineConfig::from_yaml("sources: []", Path::new("p.yaml")).is_err());
    }

    const DMS: &str = "
sources:
  - name: clinic
    dms: { location: s3://landing/dms/clinic, timestamp_column: TS }
    entities:
      public.patients: { key: [id], mapping: m/patients.yaml }
      encounters: { key: [id], mapping: m/encounters.yaml }
  - name: lab
    dms: { location: lab-files }
    entities:
      results: { key: [id], mapping: m/results.yaml }
";

    #[test]
    fn dms_objects_bind_to_their_source_and_entity() {
        let c = PipelineConfig::from_yaml(DMS, Path::new("p.yaml")).unwrap();
        let (t, p) = c
            .dms_target("landing", "dms/clinic/public/patients/LOAD00000001.parquet")
            .unwrap();
        assert_eq!(t.prefix, "dms/clinic");
        assert_eq!(t.binding.entity, "public.patients");
        assert_eq!(t.binding.timestamp_column, "TS");
        assert_eq!(p.table, "patients");
        // By table name alone, whatever the schema; with a date partition.
        let (t, _) = c
            .dms_target(
                "landing",
                "dms/clinic/any/encounters/2024/04/27/20240427-015434214.parquet",
            )
            .unwrap();
        assert_eq!(t.binding.entity, "encounters");
        // Another schema's patients table is not bound; nor another bucket or folder.
        assert!(
            c.dms_target("landing", "dms/clinic/other/patients/LOAD00000001.parquet")
                .is_none()
        );
        assert!(
            c.dms_target("other", "dms/clinic/public/patients/LOAD00000001.parquet")
                .is_none()
        );
        assert!(
            c.dms_target(
                "landing",
                "dms/clinicx/public/patients/LOAD00000001.parquet"
            )
            .is_none()
        );
        assert!(
            c.dms_source_for("landing", "dms/clinic/x/y/z.parquet")
                .is_some()
        );
        // A local folder is served as the bucket named after the source.
        let (t, _) = c
            .dms_target("lab", "lims/results/LOAD00000001.parquet")
            .unwrap();
        assert_eq!(
            (t.prefix.as_str(), t.binding.timestamp_column.as_str()),
            ("", "DMS_TIMESTAMP")
        );
    }

    #[test]
    fn bad_dms_sources_are_refused() {
        for (from, to) in [
            ("s3://landing/dms/clinic", "s3://"),
            ("s3://landing/dms/clinic", "http://x/y"),
            ("public.patients:", "a.b.c:"),
        ] {
            let bad = DMS.replace(from, to);
            assert!(
                PipelineConfig::from_yaml(&bad, Path::new("p.yaml")).is_err(),
                "{to}"
            );
        }
        let unknown = DMS.replace("timestamp_column", "timestamp_col");
        assert!(PipelineConfig::from_yaml(&unknown, Path::new("p.yaml")).is_err());
    }

    #[test]
    fn the_bus_is_local_or_eventbridge_never_both_nor_none() {
        let eb = format!("{GOOD}events:\n  eventbridge: {{ bus: fhir-changes }}\n");
        let c = PipelineConfig::from_yaml(&eb, Path::new("p.yaml")).unwrap();
        assert_eq!(c.events.eventbridge.unwrap().bus, "fhir-changes");
        assert!(c.events.local.is_none());
        for bad in [
            "events:\n  eventbridge: { bus: '' }\n",
            "events:\n  eventbridge: { bus: b, region: x }\n",
            "events:\n  eventbridge: {}\n",
            "events:\n  local: {}\n  eventbridge: { bus: b }\n",
            "events: {}\n",
        ] {
            let e = PipelineConfig::from_yaml(&format!("{GOOD}{bad}"), Path::new("p.yaml"))
                .unwrap_err();
            assert!(
                e.message.contains("events") || e.message.contains("bus"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn partners_are_read_and_checked() {
        let with = |p: &str| format!("{GOOD}partners:\n{p}");
        let c = PipelineConfig::from_yaml(
            &with("  - { name: acme, issuer: https://idp, audience: fhir, jwks: k.json, read: [Patient] }\n"),
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(c.partners[0].read, vec!["Patient".to_owned()]);
        assert!(c.partners[0].write.is_empty(), "no writes unless listed");
        let c = PipelineConfig::from_yaml(
            &with("  - { name: acme, issuer: i, audience: a, jwks: k, read: [Patient], write: [Patient, Observation] }\n"),
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(c.partners[0].write, ["Patient", "Observation"]);
        assert!(
            PipelineConfig::from_yaml(GOOD, Path::new("p.yaml"))
                .unwrap()
                .partners
                .is_empty()
        );
        for bad in [
            "  - { name: acme, issuer: i, audience: a, jwks: k, read: [] }\n",
            "  - { name: acme, issuer: i, audience: a, jwks: k, read: [patient] }\n",
            "  - { name: acme, issuer: i, audience: '', jwks: k, read: [Patient] }\n",
            "  - { name: a, issuer: i, audience: a, jwks: k, read: [Patient] }\n  - { name: b, issuer: i, audience: a, jwks: k, read: [Patient] }\n",
            // `write` is a key now (ingest-api); a misspelt one is still refused.
            "  - { name: acme, issuer: i, audience: a, jwks: k, read: [Patient], writes: [Patient] }\n",
            "  - { name: acme, issuer: i, audience: a, jwks: k, read: [Patient], write: [patient] }\n",
        ] {
            assert!(
                PipelineConfig::from_yaml(&with(bad), Path::new("p.yaml")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn api_sources_are_checked() {
        let api = |rest: &str| {
            format!("sources:\n  - name: partner\n    api: {{ path: /ingest/partner{rest} }}\n")
        };
        let c = PipelineConfig::from_yaml(&api(", fhir: [Patient]"), Path::new("p.yaml")).unwrap();
        let (s, rest) = c.api_source_for("/ingest/partner/fhir/Patient").unwrap();
        assert_eq!((s.name.as_str(), rest), ("partner", "/fhir/Patient"));
        assert!(c.api_source_for("/ingest/partnerx").is_none());
        assert!(c.api_source_for("/other").is_none());
        for (bad, says) in [
            (api(""), "at least one entity"),
            (api(", fhir: [patient]"), "not a resource type name"),
            (api("/, fhir: [Patient]"), "trailing"),
            (
                "sources:\n  - name: p\n    api: { path: ingest, fhir: [Patient] }\n".into(),
                "must start with",
            ),
            (api(", fhir: [Patient], extra: 1"), "unknown field"),
            (
                format!("{}    dynamodb: {{ table: T }}\n", api(", fhir: [Patient]")),
                "two source kinds",
            ),
            (
                format!(
                    "{}    entities: {{ fhir: {{ key: [k], mapping: m.yaml }} }}\n",
                    api(", fhir: [Patient]")
                ),
                "reserved",
            ),
            (
                format!(
                    "{}{}",
                    api(", fhir: [Patient]"),
                    api(", fhir: [Patient]")
                        .replace("sources:\n  - name: partner", "  - name: other")
                ),
                "already used",
            ),
        ] {
            let e = PipelineConfig::from_yaml(&bad, Path::new("p.yaml")).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_missing_mapping_file_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fhir-unify.yaml");
        std::fs::write(&p, GOOD).unwrap();
        let c = PipelineConfig::load(&p).unwrap();
        let e = c.load_mappings().unwrap_err();
        assert!(e.file.ends_with("patients.yaml"), "{e}");
    }
}
