//! FHIR REST store: resources kept in any FHIR R4 server (AWS HealthLake, HAPI, Azure Health
//! Data Services, the project's own `fhir-unify serve`…), with the semantics of [`super`]
//! kept through the server's REST API.
//!
//! # Writes: conditional updates by deterministic id
//!
//! Resource ids are deterministic (mapping), so every write is a `PUT Type/id` (create or
//! update) or a `DELETE Type/id`, never a server-assigned `POST`. [`FhirStore::apply`] checks
//! every change first (ids, content) so a bad change fails the call before anything is sent,
//! reads the current state of every target (`GET Type/id` and its state resource, below), then
//! computes each change as the other stores do: a stale sequence is skipped, content equal to
//! the current version ([`super::canonical_content`]) makes no version, a delete of what is
//! absent or deleted makes none. What must be written goes in a `transaction` Bundle whose
//! entries carry `ifMatch` on the version read (`ifNoneMatch: *` for what never existed), so
//! a concurrent writer makes the server refuse (412/409); the store then re-reads and
//! recomputes, up to [`MAX_CONFLICT_ATTEMPTS`] times, then fails with the retryable
//! [`StoreError::Unavailable`]. Servers that ignore `If-None-Match: *` on `PUT` (FHIR R4 does
//! not require it) cannot detect two writers creating the same resource at once.
//!
//! **Bundles.** A Bundle holds at most [`RestOptions::max_entries`] entries (servers limit it:
//! HealthLake, HAPI's `maximum_transaction_bundle_size`), and each resource at most once (FHIR
//! forbids two entries for one resource in a transaction). Changes whose resources reference
//! each other (`reference: "Type/id"` to another target of the same call) are kept in the same
//! Bundle, so a server that checks referential integrity sees both; several changes of one
//! resource go in successive Bundles, in order. An `apply` that fits one Bundle is all or
//! nothing; a larger one is several transactions in order: if a later one fails, the earlier
//! stay committed, and retrying the call is safe (what was committed comes back `Unchanged`),
//! as with the DynamoDB store. A group of resources referencing each other that alone exceeds
//! the limit is split (with a warning): the server may then refuse a dangling reference.
//!
//! # Source sequences and lineage: where they are kept
//!
//! - **Lineage of a live version** is on the resource, as a `meta.extension`
//!   ([`EXT_LINEAGE`], `valueString`: the [`Lineage`] as compact JSON). It travels with the
//!   version, so vread and history return it. [`FhirStore::read`] and friends take it off
//!   again: a resource read through this store is the one the SQLite and DynamoDB stores
//!   return, and the "unchanged" comparison ignores it.
//! - **Sequence marks** (the highest sequence applied per source entity) and the lineage of
//!   delete versions are in one state resource per target: `Basic/<STATE_ID_PREFIX + uuid-v5 of
//!   "Type/id">` with `subject` = the target, `code` = [`STATE_SYSTEM`]#[`STATE_CODE`], and
//!   extensions [`EXT_MARK`] (`source`, `entity`, `sequence` as decimal text) and
//!   [`EXT_DELETE_LINEAGE`] (`after`: the version the delete followed, `lineage`). Marks cannot
//!   live on the resource itself: a mark must move when content is unchanged (which must not
//!   make a version) and must survive a delete (a FHIR delete leaves no body to carry it, and
//!   a late, older upsert must still be refused). The state resource is written in the same
//!   transaction Bundle as the resource, so both move together. It is a bookkeeping resource:
//!   partners with `Basic` access on the server see it.
//!
//! # Reads
//!
//! `read` is `GET Type/id` (a 410 is a delete: its version and time come from the history),
//! `vread` is `GET Type/id/_history/vid`, `history` is `GET Type/id/_history` following the
//! `next` links (only those under the base URL).
//!
//! # Errors, retries, authentication
//!
//! 429, 5xx and transport errors are retried up to [`RestOptions::max_attempts`] times with
//! exponential backoff and full jitter; a `Retry-After` (seconds or HTTP date) is waited for
//! instead when given (at most [`MAX_RETRY_AFTER`]). A server that still fails gives the
//! retryable [`StoreError::Unavailable`], with the OperationOutcome's text; another 4xx gives
//! [`StoreError::Invalid`] naming the resource (for a Bundle: the one the OperationOutcome
//! names, else all of them) and the server's OperationOutcome; 401/403 are
//! [`StoreError::Unavailable`] (credentials or permissions an operator fixes). A body that is
//! not JSON where JSON is expected names the URL, status and content type. A transaction the
//! server committed but answered with a 5xx (or a timeout) is retried: its `ifMatch` then
//! fails, the store re-reads, and the changes come back `Unchanged` — nothing is applied twice
//! (but that call reports `Unchanged` for what it did commit: see Events).
//! A `meta.source` the server stamps (HAPI does, on every write) is not taken for content.
//!
//! # Events
//!
//! A FHIR server keeps no change stream the pipeline can read in commit order (HealthLake has
//! none; FHIR Subscriptions are optional and server-specific), so events come from a
//! [`Ledger`] given with [`RestStore::with_ledger`]: before a transaction is sent, an intent per
//! resource write (target, the version it follows, lineage); after the answer, the events of
//! the versions made and the intents closed, in one step. An intent left open (the process died
//! between the server's commit and the ledger write, or a request timed out) is resolved from
//! the server's history at the next `apply` that touches its resource, or at any `apply` once
//! [`RestOptions::settle_after`] has passed: the version right after the one the conditional
//! write followed is the one it made. See [`super::ledger`]. Without a ledger, no events.
//!
//! Authentication: none, a bearer token, or AWS SigV4 ([`aws_sigv4`], service `healthlake` by
//! default) with the credentials of [`crate::aws::sdk_config`]. HTTP is ureq (sync, the
//! project's client) on Tokio's blocking pool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::ledger::{Intent, Ledger, OpenIntent};
use super::{
    FhirStore, StoreError, StoredVersion, canonical_content, change_event, check_ref, format_time,
    invalid, is_fhir_id,
};
use crate::model::Sequence;
use crate::model::{
    ChangeEvent, ChangeKind, Lineage, PublishAction, PublishOutcome, ResourceChange, ResourceOp,
    ResourceRef,
};

/// Attempts of one Bundle that keeps losing a race to other writers.
pub const MAX_CONFLICT_ATTEMPTS: u32 = 12;
/// The longest `Retry-After` waited for; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// Extension (on `meta`) holding a live version's lineage.
pub const EXT_LINEAGE: &str = "https://fhir-unify.dev/fhir/StructureDefinition/lineage";
/// Extension (on the state resource) holding one source entity's sequence mark.
pub const EXT_MARK: &str = "https://fhir-unify.dev/fhir/StructureDefinition/source-sequence";
/// Extension (on the state resource) holding a delete version's lineage.
pub const EXT_DELETE_LINEAGE: &str =
    "https://fhir-unify.dev/fhir/StructureDefinition/delete-lineage";
/// Code system and code of the state resources.
pub const STATE_SYSTEM: &str = "https://fhir-unify.dev/fhir/CodeSystem/store";
pub const STATE_CODE: &str = "resource-state";
/// The resource type of the state resources.
pub const STATE_TYPE: &str = "Basic";
/// The id prefix of the state resources.
pub const STATE_ID_PREFIX: &str = "fu-state-";
/// Environment variable holding the bearer token when the configuration names none.
pub const TOKEN_VARIABLE: &str = "FHIR_UNIFY_FHIR_TOKEN";

/// The namespace of state resource ids (UUID v5 over `Type/id`).
const STATE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1d_52a3_9c1e_4c55_b0a7_1d2b_5e9f_0c41);

/// How requests are authenticated.
#[derive(Clone)]
pub enum RestAuth {
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// AWS Signature Version 4 (HealthLake: service `healthlake`).
    SigV4 {
        region: String,
        service: String,
        credentials: SharedCredentialsProvider,
    },
}

impl std::fmt::Debug for RestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestAuth::None => f.write_str("None"),
            RestAuth::Bearer(_) => f.write_str("Bearer(..)"),
            RestAuth::SigV4 {
                region, service, ..
            } => f
                .debug_struct("SigV4")
                .field("region", region)
                .field("service", service)
                .finish_non_exhaustive(),
        }
    }
}

/// Limits and retry behaviour.
#[derive(Debug, Clone)]
pub struct RestOptions {
    /// Entries in one transaction Bundle (at least 2: a resource and its state).
    pub max_entries: usize,
    /// Attempts of one request on 429, 5xx and transport errors.
    pub max_attempts: u32,
    /// First backoff; doubles each attempt, with full jitter.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
    /// How old an open ledger intent must be before the store concludes, finding the server
    /// still at the version the intent followed, that its write was never committed (no
    /// request of it can still be in flight): longer than a request's retries and timeouts.
    pub settle_after: Duration,
}

impl Default for RestOptions {
    fn default() -> Self {
        RestOptions {
            max_entries: 100,
            max_attempts: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            timeout: Duration::from_secs(30),
            // 5 attempts of 30 s each plus their backoff stay under 3 minutes.
            settle_after: Duration::from_secs(300),
        }
    }
}

/// The FHIR REST store. Cheap to clone (the HTTP agent is a handle).
#[derive(Clone)]
pub struct RestStore {
    base: String,
    auth: RestAuth,
    options: RestOptions,
    agent: ureq::Agent,
    ledger: Option<std::sync::Arc<dyn Ledger>>,
}

impl std::fmt::Debug for RestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestStore")
            .field("base", &self.base)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// One HTTP answer.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The state resource's content: marks and delete lineages.
#[derive(Debug, Clone, Default, PartialEq)]
struct StateDoc {
    marks: BTreeMap<(String, String), Sequence>,
    /// Version a delete followed → the delete's lineage (JSON).
    deletes: BTreeMap<String, String>,
}

/// What the server holds for one target.
#[derive(Debug, Clone, Default)]
struct Remote {
    /// Current version (a delete too); `None`: never existed.
    version: Option<String>,
    deleted: bool,
    last_updated: Option<DateTime<Utc>>,
    /// Canonical content of the live version.
    content: Option<Value>,
    state: StateDoc,
    /// The state resource's version; `None`: none yet.
    state_version: Option<String>,
}

impl Remote {
    fn live(&self) -> bool {
        self.version.is_some() && !self.deleted
    }
}

/// A change checked before anything is sent.
struct Prepared<'a> {
    change: &'a ResourceChange,
    content: Option<Value>,
    lineage_text: String,
    mark: (String, String),
}

/// One change computed against the remote state.
struct Step {
    action: PublishAction,
    /// The resource entry (PUT or DELETE).
    resource_entry: Option<Value>,
    /// The new state document, when it changed.
    state: Option<StateDoc>,
}

enum TxError {
    /// Refused as sent (409/412): re-read and plan again. `made`: the versions an earlier
    /// attempt of the same call committed after all (its answer lost), found in the history.
    Conflict {
        why: String,
        made: Vec<ChangeEvent>,
    },
    Failed(StoreError),
}

/// What became of an open ledger intent.
enum Settled {
    /// Its write may still be in flight: left open.
    NotYet,
    /// Closed, with the event of the version its write made (none if it made none).
    Closed(Option<Box<ChangeEvent>>),
}

impl RestStore {
    /// A store over the FHIR base URL `base` (`http://` or `https://`, no trailing slash needed).
    pub fn new(base: &str, auth: RestAuth, options: RestOptions) -> Result<RestStore, StoreError> {
        let base = base.trim_end_matches('/').to_owned();
        let bad = |reason: &str| StoreError::Invalid {
            target: format!("FHIR base {base:?}"),
            reason: reason.to_owned(),
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(bad("not an http:// or https:// URL"));
        }
        if base.contains(['?', '#', ' ']) {
            return Err(bad("a base URL has no query, fragment or spaces"));
        }
        if options.max_entries < 2 {
            return Err(bad(
                "max_entries must be at least 2 (a resource and its state)",
            ));
        }
        if options.max_attempts == 0 {
            return Err(bad("max_attempts must be at least 1"));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(options.timeout))
            .max_redirects(0)
            .build()
            .into();
        Ok(RestStore {
            base,
            auth,
            options,
            agent,
            ledger: None,
        })
    }

    /// The store a pipeline file's `store.rest` describes; `base` overrides its URL (the
    /// `FHIR_UNIFY_FHIR_ENDPOINT` variable). SigV4 takes region and credentials from
    /// [`crate::aws::sdk_config`] unless the file names a region.
    pub async fn from_config(
        config: &crate::config::RestStoreConfig,
        base: Option<&str>,
    ) -> Result<RestStore, StoreError> {
        use crate::config::RestAuthKind;
        let base = base.unwrap_or(&config.base);
        let auth = match config.auth {
            RestAuthKind::None => RestAuth::None,
            RestAuthKind::Bearer => {
                let variable = config.token_env.as_deref().unwrap_or(TOKEN_VARIABLE);
                let token = std::env::var(variable)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .ok_or_else(|| StoreError::Invalid {
                        target: format!("FHIR base {base:?}"),
                        reason: format!("auth: bearer needs the token in ${variable}"),
                    })?;
                RestAuth::Bearer(token.trim().to_owned())
            }
            RestAuthKind::Sigv4 => {
                let sdk = crate::aws::sdk_config().await;
                let region = config
                    .region
                    .clone()
                    .or_else(|| sdk.region().map(|r| r.as_ref().to_owned()))
                    .ok_or_else(|| StoreError::Invalid {
                        target: format!("FHIR base {base:?}"),
                        reason: "auth: sigv4 needs a region (store.rest.region or AWS_REGION)"
                            .into(),
                    })?;
                let credentials =
                    sdk.credentials_provider()
                        .ok_or_else(|| StoreError::Invalid {
                            target: format!("FHIR base {base:?}"),
                            reason: "auth: sigv4 found no AWS credentials provider".into(),
                        })?;
                RestAuth::SigV4 {
                    region,
                    service: config
                        .service
                        .clone()
                        .unwrap_or_else(|| "healthlake".to_owned()),
                    credentials,
                }
            }
        };
        let defaults = RestOptions::default();
        let options = RestOptions {
            max_entries: config.max_entries.unwrap_or(defaults.max_entries),
            max_attempts: config.max_attempts.unwrap_or(defaults.max_attempts),
            timeout: config
                .timeout_seconds
                .map_or(defaults.timeout, Duration::from_secs),
            ..defaults
        };
        RestStore::new(base, auth, options)
    }

    /// The FHIR base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The store writing its change events through `ledger` (see the module's Events).
    pub fn with_ledger(mut self, ledger: std::sync::Arc<dyn Ledger>) -> RestStore {
        self.ledger = Some(ledger);
        self
    }

    /// The ledger, if the store has one.
    pub fn ledger(&self) -> Option<&std::sync::Arc<dyn Ledger>> {
        self.ledger.as_ref()
    }

    /// Resolves open ledger intents against the server: those of `targets` (all when `None`)
    /// and every one older than [`RestOptions::settle_after`]. Returns how many were settled.
    pub async fn recover_ledger(
        &self,
        targets: Option<&HashSet<&ResourceRef>>,
    ) -> Result<usize, StoreError> {
        let Some(ledger) = &self.ledger else {
            return Ok(0);
        };
        let open = ledger.open_intents().await?;
        let mut settled = 0;
        for o in open {
            let age = Utc::now()
                .signed_duration_since(o.intent.recorded_at)
                .to_std()
                .unwrap_or_default();
            let old = age >= self.options.settle_after;
            let ours = targets.is_none_or(|t| t.contains(&o.intent.target));
            if !old && !ours {
                continue;
            }
            match self.resolve_intent(ledger.as_ref(), &o, !old).await {
                Ok(Settled::Closed(_)) => settled += 1,
                Ok(Settled::NotYet) => {}
                Err(e) if ours => return Err(e),
                // Another resource's leftover must not stop this batch: the next sweep retries.
                Err(e) => tracing::warn!(
                    target = %o.intent.target,
                    intent = %o.id,
                    "ledger intent not recovered yet: {e}"
                ),
            }
        }
        Ok(settled)
    }

    /// Settles one open intent from the server's history; `in_flight`: a request of it may
    /// still reach the server, so "not committed" cannot be concluded yet.
    async fn resolve_intent(
        &self,
        ledger: &dyn Ledger,
        open: &OpenIntent,
        in_flight: bool,
    ) -> Result<Settled, StoreError> {
        let target = &open.intent.target;
        let history = self.history_versions(target).await?;
        // Newest first: the version made right after `prior` sits just before it.
        let made = match &open.intent.prior {
            None => history.last().map(|v| (v, None)),
            Some(p) => match history.iter().position(|v| &v.version_id == p) {
                Some(0) => None,
                Some(n) => history.get(n - 1).map(|v| (v, history.get(n))),
                None => {
                    tracing::warn!(
                        target = %target,
                        intent = %open.id,
                        "the version a ledger intent followed is not in the server's history; closed without an event"
                    );
                    ledger.settle(std::slice::from_ref(&open.id), &[]).await?;
                    return Ok(Settled::Closed(None));
                }
            },
        };
        let event = match made {
            None if in_flight => return Ok(Settled::NotYet),
            None => None,
            Some((version, before)) => {
                let kind = if version.deleted {
                    ChangeKind::Deleted
                } else if before.is_none_or(|b| b.deleted) {
                    ChangeKind::Created
                } else {
                    ChangeKind::Updated
                };
                match &version.lineage {
                    Some(lineage) => Some(change_event(
                        kind,
                        target,
                        &version.version_id,
                        version.last_updated,
                        lineage,
                    )),
                    None => {
                        // Not written through this store (no lineage): another writer's.
                        tracing::warn!(
                            target = %target,
                            version = %version.version_id,
                            "the version after a ledger intent carries no lineage; no event"
                        );
                        None
                    }
                }
            }
        };
        tracing::info!(
            target = %target,
            intent = %open.id,
            committed = event.is_some(),
            "ledger intent recovered from the server's history"
        );
        ledger
            .settle(std::slice::from_ref(&open.id), event.as_slice())
            .await?;
        Ok(Settled::Closed(event.map(Box::new)))
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// The headers authentication adds to a request.
    async fn auth_headers(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, StoreError> {
        match &self.auth {
            RestAuth::None => Ok(Vec::new()),
            RestAuth::Bearer(token) => Ok(vec![(
                "authorization".to_owned(),
                format!("Bearer {token}"),
            )]),
            RestAuth::SigV4 {
                region,
                service,
                credentials,
            } => {
                let creds = credentials.provide_credentials().await.map_err(|e| {
                    StoreError::Unavailable(format!(
                        "FHIR server {}: AWS credentials: {e}",
                        self.base
                    ))
                })?;
                sigv4_headers(
                    method,
                    url,
                    headers,
                    body,
                    &creds,
                    region,
                    service,
                    SystemTime::now(),
                )
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "FHIR server {}: SigV4 signing: {e}",
                        self.base
                    ))
                })
            }
        }
    }

    /// Sends one request, retrying 429, 5xx and transport errors. `what` names the resource(s)
    /// in errors.
    async fn call(
        &self,
        method: &'static str,
        url: &str,
        extra: &[(String, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer, StoreError> {
        let body_bytes = match body {
            Some(v) => serde_json::to_vec(v)
                .map_err(|e| invalid_named(what, format!("request body: {e}")))?,
            None => Vec::new(),
        };
        let mut headers: Vec<(String, String)> =
            vec![("accept".to_owned(), "application/fhir+json".to_owned())];
        if body.is_some() {
            headers.push((
                "content-type".to_owned(),
                "application/fhir+json".to_owned(),
            ));
        }
        headers.extend(extra.iter().cloned());
        let mut last = String::new();
        for attempt in 1..=self.options.max_attempts {
            let mut all = headers.clone();
            all.extend(
                self.auth_headers(method, url, &headers, &body_bytes)
                    .await?,
            );
            let wait = match self.send_once(method, url, all, body_bytes.clone()).await {
                Ok(answer) if answer.status == 429 || answer.status >= 500 => {
                    last = format!("answered {}{}", answer.status, outcome_text(&answer));
                    retry_after(&answer).unwrap_or_else(|| self.backoff(attempt))
                }
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    last = e;
                    self.backoff(attempt)
                }
            };
            tracing::debug!(attempt, method, "FHIR server call failed; retrying: {last}");
            if attempt < self.options.max_attempts {
                tokio::time::sleep(wait).await;
            }
        }
        Err(StoreError::Unavailable(format!(
            "{what}: {method} {url} {last} ({} attempts)",
            self.options.max_attempts
        )))
    }

    async fn send_once(
        &self,
        method: &'static str,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let agent = self.agent.clone();
        let url = url.to_owned();
        let joined = tokio::task::spawn_blocking(move || {
            let mut builder = ureq::http::Request::builder().method(method).uri(&url);
            for (k, v) in &headers {
                builder = builder.header(k.as_str(), v.as_str());
            }
            let request = builder.body(body).map_err(|e| format!("request: {e}"))?;
            let mut response = agent.run(request).map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter_map(|(k, v)| {
                    v.to_str()
                        .ok()
                        .map(|v| (k.as_str().to_ascii_lowercase(), v.to_owned()))
                })
                .collect();
            let body = response
                .body_mut()
                .with_config()
                .limit(256 * 1024 * 1024)
                .read_to_vec()
                .map_err(|e| format!("reading the answer: {e}"))?;
            Ok(Answer {
                status,
                headers,
                body,
            })
        })
        .await;
        match joined {
            Ok(r) => r,
            Err(e) => Err(format!("HTTP task: {e}")),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .options
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.options.max_backoff);
        // Full jitter: anywhere up to the ceiling, so writers that failed together spread out.
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }

    /// The JSON body of a 2xx answer.
    fn json_body(
        &self,
        answer: &Answer,
        method: &str,
        url: &str,
        what: &str,
    ) -> Result<Value, StoreError> {
        serde_json::from_slice(&answer.body).map_err(|_| {
            StoreError::Unavailable(format!(
                "{what}: {method} {url} answered {} with a body that is not JSON (content type {:?}, {} bytes)",
                answer.status,
                answer.header("content-type").unwrap_or("none"),
                answer.body.len()
            ))
        })
    }

    /// The error for an answer this store does not expect.
    fn refused(&self, answer: &Answer, method: &str, url: &str, what: &str) -> StoreError {
        let text = format!(
            "{method} {url} answered {}{}",
            answer.status,
            outcome_text(answer)
        );
        match answer.status {
            401 | 403 => StoreError::Unavailable(format!("{what}: {text}")),
            400..=499 => invalid_named(what, text),
            _ => StoreError::Unavailable(format!("{what}: {text}")),
        }
    }

    /// `GET` a resource: `Ok(None)` for 404/410 (with the status), else its JSON.
    async fn get_resource(
        &self,
        path: &str,
        what: &str,
    ) -> Result<(u16, Option<Value>), StoreError> {
        let url = self.url(path);
        let answer = self.call("GET", &url, &[], None, what).await?;
        match answer.status {
            200 => Ok((200, Some(self.json_body(&answer, "GET", &url, what)?))),
            404 | 410 => Ok((answer.status, None)),
            _ => Err(self.refused(&answer, "GET", &url, what)),
        }
    }

    async fn read_state(
        &self,
        target: &ResourceRef,
    ) -> Result<(StateDoc, Option<String>), StoreError> {
        let path = format!("{STATE_TYPE}/{}", state_id(target));
        let (_, body) = self.get_resource(&path, &target.to_string()).await?;
        match body {
            None => Ok((StateDoc::default(), None)),
            Some(v) => {
                let version = meta_version(&v);
                Ok((parse_state(target, &v)?, version))
            }
        }
    }

    /// The server's state of one target, for planning writes.
    async fn read_remote(&self, target: &ResourceRef) -> Result<Remote, StoreError> {
        let (state, state_version) = self.read_state(target).await?;
        let mut remote = Remote {
            state,
            state_version,
            ..Remote::default()
        };
        match self.read(target).await? {
            None => {}
            Some(v) => {
                remote.version = Some(v.version_id.clone());
                remote.deleted = v.deleted;
                remote.last_updated = Some(v.last_updated);
                if let Some(resource) = &v.resource {
                    remote.content = Some(canonical_content(target, resource).map_err(|e| {
                        StoreError::Corrupt(format!("{target}: the server's resource: {e}"))
                    })?);
                }
            }
        }
        Ok(remote)
    }

    async fn apply_all(
        &self,
        changes: &[ResourceChange],
    ) -> Result<Vec<PublishOutcome>, StoreError> {
        let prepared = changes.iter().map(prepare).collect::<Result<Vec<_>, _>>()?;
        if self.ledger.is_some() {
            // A crash after an earlier attempt's commit left its intents open: settle them
            // before this attempt reads the state and finds the content unchanged.
            let targets: HashSet<&ResourceRef> =
                prepared.iter().map(|p| &p.change.target).collect();
            self.recover_ledger(Some(&targets)).await?;
        }
        let bundles = plan_bundles(&prepared, self.options.max_entries);
        let mut remote: HashMap<ResourceRef, Remote> = HashMap::new();
        for p in &prepared {
            let t = &p.change.target;
            if !remote.contains_key(t) {
                let r = self.read_remote(t).await?;
                remote.insert(t.clone(), r);
            }
        }
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; prepared.len()];
        let mut made_earlier: Vec<ChangeEvent> = Vec::new();
        for bundle in bundles {
            let mut attempt = 1;
            loop {
                let steps: Vec<(usize, Step)> = bundle
                    .iter()
                    .map(|&i| {
                        let p = &prepared[i];
                        let r = remote.get(&p.change.target).cloned().unwrap_or_default();
                        (i, step(p, &r, &self.base))
                    })
                    .collect();
                match self.commit(&prepared, &steps, &mut remote).await {
                    Ok(done) => {
                        for (i, o) in done {
                            outcomes[i] = Some(o);
                        }
                        break;
                    }
                    Err(TxError::Conflict { why, made }) if attempt < MAX_CONFLICT_ATTEMPTS => {
                        tracing::debug!(attempt, "FHIR transaction conflict, re-reading: {why}");
                        made_earlier.extend(made);
                        tokio::time::sleep(self.backoff(attempt.min(6))).await;
                        attempt += 1;
                        for &i in &bundle {
                            let t = &prepared[i].change.target;
                            let r = self.read_remote(t).await?;
                            remote.insert(t.clone(), r);
                        }
                    }
                    Err(TxError::Conflict { why, .. }) => {
                        return Err(StoreError::Unavailable(format!(
                            "FHIR server {}: still conflicting with other writers after {MAX_CONFLICT_ATTEMPTS} attempts: {why}",
                            self.base
                        )));
                    }
                    Err(TxError::Failed(e)) => return Err(e),
                }
            }
        }
        let mut out: Vec<PublishOutcome> = outcomes.into_iter().flatten().collect();
        credit_lost_answers(&mut out, &made_earlier);
        if out.len() != changes.len() {
            return Err(StoreError::Unavailable(
                "internal: a change was not planned into any Bundle".into(),
            ));
        }
        tracing::debug!(
            changes = changes.len(),
            "applied resource changes to the FHIR server"
        );
        Ok(out)
    }

    /// Sends the writes of one Bundle's steps and updates `remote`; the outcomes by index.
    async fn commit(
        &self,
        prepared: &[Prepared<'_>],
        steps: &[(usize, Step)],
        remote: &mut HashMap<ResourceRef, Remote>,
    ) -> Result<Vec<(usize, PublishOutcome)>, TxError> {
        // Entries, and for each: (step position, is the state entry).
        let mut entries = Vec::new();
        let mut owners: Vec<(usize, bool)> = Vec::new();
        for (pos, (i, s)) in steps.iter().enumerate() {
            let target = &prepared[*i].change.target;
            if let Some(e) = &s.resource_entry {
                entries.push(e.clone());
                owners.push((pos, false));
            }
            if let Some(state) = &s.state {
                let r = remote.get(target).cloned().unwrap_or_default();
                entries.push(state_entry(
                    &self.base,
                    target,
                    state,
                    r.state_version.as_deref(),
                ));
                owners.push((pos, true));
            }
        }
        let names: Vec<String> = steps
            .iter()
            .map(|(i, _)| prepared[*i].change.target.to_string())
            .collect();
        let mut responses: Vec<Value> = Vec::new();
        let intents = self
            .record_intents(prepared, steps, remote)
            .await
            .map_err(TxError::Failed)?;
        if !entries.is_empty() {
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            let url = self.base.clone();
            let what = names.join(", ");
            let answer = self
                .call("POST", &url, &[], Some(&bundle), &what)
                .await
                .map_err(TxError::Failed)?;
            match answer.status {
                200 | 201 => {}
                409 | 412 => {
                    // Refused as sent; an earlier attempt of the same call (retried after a
                    // 5xx or a timeout) may have committed, which the history tells.
                    let mut made = Vec::new();
                    if let Some(ledger) = &self.ledger {
                        for o in &intents {
                            let settled = self
                                .resolve_intent(ledger.as_ref(), o, true)
                                .await
                                .map_err(TxError::Failed)?;
                            if let Settled::Closed(Some(event)) = settled {
                                made.push(*event);
                            }
                        }
                    }
                    return Err(TxError::Conflict {
                        why: format!(
                            "{what}: answered {}{}",
                            answer.status,
                            outcome_text(&answer)
                        ),
                        made,
                    });
                }
                _ => {
                    let named = named_in_outcome(&answer, &names).unwrap_or(what);
                    return Err(TxError::Failed(self.refused(&answer, "POST", &url, &named)));
                }
            }
            let body = self
                .json_body(&answer, "POST", &url, &names.join(", "))
                .map_err(TxError::Failed)?;
            responses = body
                .get("entry")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if responses.len() != entries.len() {
                return Err(TxError::Failed(StoreError::Unavailable(format!(
                    "{}: POST {url}: the transaction-response has {} entries for {} sent",
                    names.join(", "),
                    responses.len(),
                    entries.len()
                ))));
            }
        }
        // Per step: the response of its resource entry and of its state entry.
        let mut resource_response: HashMap<usize, &Value> = HashMap::new();
        let mut state_response: HashMap<usize, &Value> = HashMap::new();
        for ((pos, is_state), response) in owners.iter().zip(&responses) {
            if *is_state {
                state_response.insert(*pos, response);
            } else {
                resource_response.insert(*pos, response);
            }
        }
        let mut out = Vec::with_capacity(steps.len());
        for (pos, (i, s)) in steps.iter().enumerate() {
            let p = &prepared[*i];
            let target = &p.change.target;
            let mut r = remote.get(target).cloned().unwrap_or_default();
            let mut reread = false;
            if let Some(state) = &s.state {
                r.state = state.clone();
                match state_response.get(&pos).and_then(|e| entry_version(e)) {
                    Some(v) => r.state_version = Some(v),
                    None => reread = true,
                }
            }
            if let Some(response) = resource_response.get(&pos) {
                let version = entry_version(response);
                let modified = response
                    .pointer("/response/lastModified")
                    .and_then(Value::as_str)
                    .and_then(parse_any_time);
                match (version, modified) {
                    (Some(v), Some(t)) => {
                        r.version = Some(v);
                        r.last_updated = Some(t);
                        r.deleted = s.action == PublishAction::Deleted;
                        r.content = if r.deleted { None } else { p.content.clone() };
                    }
                    _ => reread = true,
                }
            }
            if reread {
                // The server did not say the new version or time: ask.
                r = self.read_remote(target).await.map_err(TxError::Failed)?;
            }
            let exists = r.version.is_some();
            out.push((
                *i,
                PublishOutcome {
                    target: target.clone(),
                    action: s.action,
                    version_id: r.version.clone().filter(|_| exists),
                    last_updated: r.last_updated.filter(|_| exists),
                },
            ));
            remote.insert(target.clone(), r);
        }
        if let Some(ledger) = &self.ledger {
            let ids: Vec<String> = intents.iter().map(|o| o.id.clone()).collect();
            let events: Vec<ChangeEvent> = out
                .iter()
                .filter_map(|(i, o)| {
                    let kind = match o.action {
                        PublishAction::Created => ChangeKind::Created,
                        PublishAction::Updated => ChangeKind::Updated,
                        PublishAction::Deleted => ChangeKind::Deleted,
                        PublishAction::Unchanged | PublishAction::Stale => return None,
                    };
                    Some(change_event(
                        kind,
                        &o.target,
                        o.version_id.as_deref()?,
                        o.last_updated?,
                        &prepared[*i].change.lineage,
                    ))
                })
                .collect();
            if !ids.is_empty() || !events.is_empty() {
                ledger
                    .settle(&ids, &events)
                    .await
                    .map_err(TxError::Failed)?;
            }
        }
        Ok(out)
    }

    /// Records one intent per resource write of the steps, before they are sent.
    async fn record_intents(
        &self,
        prepared: &[Prepared<'_>],
        steps: &[(usize, Step)],
        remote: &HashMap<ResourceRef, Remote>,
    ) -> Result<Vec<OpenIntent>, StoreError> {
        let Some(ledger) = &self.ledger else {
            return Ok(Vec::new());
        };
        let now = Utc::now();
        let intents: Vec<Intent> = steps
            .iter()
            .filter(|(_, s)| s.resource_entry.is_some())
            .map(|(i, _)| {
                let change = prepared[*i].change;
                Intent {
                    target: change.target.clone(),
                    prior: remote.get(&change.target).and_then(|r| r.version.clone()),
                    lineage: change.lineage.clone(),
                    recorded_at: now,
                }
            })
            .collect();
        if intents.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ledger.record(&intents).await?;
        Ok(ids
            .into_iter()
            .zip(intents)
            .map(|(id, intent)| OpenIntent { id, intent })
            .collect())
    }

    /// The history Bundle's entries, all pages.
    async fn history_entries(
        &self,
        target: &ResourceRef,
    ) -> Result<Option<Vec<Value>>, StoreError> {
        let what = target.to_string();
        let mut url = self.url(&format!("{target}/_history"));
        let mut entries = Vec::new();
        let mut pages = 0;
        loop {
            pages += 1;
            if pages > 10_000 {
                return Err(StoreError::Unavailable(format!(
                    "{what}: history has more than 10,000 pages (a next link loop?)"
                )));
            }
            let answer = self.call("GET", &url, &[], None, &what).await?;
            match answer.status {
                200 => {}
                404 | 410 => return Ok(None),
                _ => return Err(self.refused(&answer, "GET", &url, &what)),
            }
            let body = self.json_body(&answer, "GET", &url, &what)?;
            if let Some(list) = body.get("entry").and_then(Value::as_array) {
                entries.extend(list.iter().cloned());
            }
            let next = body
                .get("link")
                .and_then(Value::as_array)
                .and_then(|links| {
                    links
                        .iter()
                        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
                })
                .and_then(|l| l.get("url"))
                .and_then(Value::as_str);
            match next {
                None => break,
                Some(n) if n.starts_with(&format!("{}/", self.base)) => url = n.to_owned(),
                Some(n) => {
                    return Err(StoreError::Unavailable(format!(
                        "{what}: the history's next link {n:?} is not under the base URL {}",
                        self.base
                    )));
                }
            }
        }
        Ok(Some(entries))
    }

    async fn history_versions(
        &self,
        target: &ResourceRef,
    ) -> Result<Vec<StoredVersion>, StoreError> {
        let Some(entries) = self.history_entries(target).await? else {
            return Ok(Vec::new());
        };
        let mut versions = Vec::with_capacity(entries.len());
        let mut state: Option<StateDoc> = None;
        for (n, e) in entries.iter().enumerate() {
            let deleted = e.get("resource").is_none()
                || e.pointer("/request/method").and_then(Value::as_str) == Some("DELETE");
            if !deleted {
                if let Some(r) = e.get("resource") {
                    versions.push(self.version_of(target, r)?);
                }
                continue;
            }
            let version = entry_version(e).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{target}: history entry {n} is a delete without a version"
                ))
            })?;
            let last_updated = e
                .pointer("/response/lastModified")
                .and_then(Value::as_str)
                .and_then(parse_any_time)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "{target}: history entry {n} (a delete) has no response.lastModified"
                    ))
                })?;
            // The version the delete followed is the next (older) entry.
            let after = entries.get(n + 1).and_then(|older| {
                older
                    .get("resource")
                    .and_then(meta_version)
                    .or_else(|| entry_version(older))
            });
            if state.is_none() {
                state = Some(self.read_state(target).await?.0);
            }
            let lineage = match (after, &state) {
                (Some(a), Some(s)) => match s.deletes.get(&a) {
                    Some(text) => Some(parse_lineage(target, text)?),
                    None => None,
                },
                _ => None,
            };
            versions.push(StoredVersion {
                target: target.clone(),
                version_id: version,
                last_updated,
                deleted: true,
                resource: None,
                lineage,
            });
        }
        Ok(versions)
    }

    /// A live version as the server returned it: our lineage taken off, `meta.lastUpdated`
    /// in the form every store writes.
    fn version_of(
        &self,
        target: &ResourceRef,
        resource: &Value,
    ) -> Result<StoredVersion, StoreError> {
        let corrupt = |reason: &str| {
            StoreError::Corrupt(format!("{target}: the server's resource: {reason}"))
        };
        let mut resource = resource.clone();
        let version_id = meta_version(&resource).ok_or_else(|| corrupt("no meta.versionId"))?;
        let last_updated = resource
            .pointer("/meta/lastUpdated")
            .and_then(Value::as_str)
            .and_then(parse_any_time)
            .ok_or_else(|| corrupt("no meta.lastUpdated"))?;
        let lineage = take_lineage(&mut resource)
            .map(|text| parse_lineage(target, &text))
            .transpose()?;
        if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
            meta.insert(
                "lastUpdated".into(),
                Value::String(format_time(last_updated)),
            );
        }
        Ok(StoredVersion {
            target: target.clone(),
            version_id,
            last_updated,
            deleted: false,
            resource: Some(resource),
            lineage,
        })
    }
}

#[async_trait]
impl FhirStore for RestStore {
    async fn apply(&self, changes: &[ResourceChange]) -> Result<Vec<PublishOutcome>, StoreError> {
        self.apply_all(changes).await
    }

    async fn read(&self, target: &ResourceRef) -> Result<Option<StoredVersion>, StoreError> {
        if check_ref(target).is_err() {
            return Ok(None);
        }
        match self
            .get_resource(&target.to_string(), &target.to_string())
            .await?
        {
            (_, Some(resource)) => self.version_of(target, &resource).map(Some),
            (410, None) => Ok(self.history_versions(target).await?.into_iter().next()),
            _ => Ok(None),
        }
    }

    async fn vread(
        &self,
        target: &ResourceRef,
        version_id: &str,
    ) -> Result<Option<StoredVersion>, StoreError> {
        if check_ref(target).is_err() || !is_fhir_id(version_id) {
            return Ok(None);
        }
        let path = format!("{target}/_history/{version_id}");
        match self.get_resource(&path, &target.to_string()).await? {
            (_, Some(resource)) => self.version_of(target, &resource).map(Some),
            (410, None) => Ok(self
                .history_versions(target)
                .await?
                .into_iter()
                .find(|v| v.version_id == version_id)),
            _ => Ok(None),
        }
    }

    async fn history(&self, target: &ResourceRef) -> Result<Vec<StoredVersion>, StoreError> {
        if check_ref(target).is_err() {
            return Ok(Vec::new());
        }
        self.history_versions(target).await
    }
}

/// Checks one change before anything is sent.
fn prepare(change: &ResourceChange) -> Result<Prepared<'_>, StoreError> {
    let target = &change.target;
    check_ref(target)?;
    let content = match &change.op {
        ResourceOp::Upsert { resource } => {
            let mut c = canonical_content(target, resource)?;
            // Our own lineage extension is bookkeeping, not content.
            take_lineage(&mut c);
            Some(c)
        }
        ResourceOp::Delete => None,
    };
    let lineage_text = serde_json::to_string(&change.lineage)
        .map_err(|e| invalid(target, format!("lineage cannot be stored: {e}")))?;
    Ok(Prepared {
        change,
        content,
        lineage_text,
        mark: (change.lineage.source.clone(), change.lineage.entity.clone()),
    })
}

/// One change against the server's state, as the other stores compute it.
fn step(p: &Prepared<'_>, r: &Remote, base: &str) -> Step {
    let target = &p.change.target;
    let sequence = &p.change.lineage.sequence;
    if r.state.marks.get(&p.mark).is_some_and(|m| sequence < m) {
        return Step {
            action: PublishAction::Stale,
            resource_entry: None,
            state: None,
        };
    }
    let mut state = r.state.clone();
    state.marks.insert(p.mark.clone(), sequence.clone());
    let moved = (state != r.state).then(|| state.clone());
    let url = target.to_string();
    let mut request = Map::new();
    match &r.version {
        Some(v) => request.insert("ifMatch".into(), Value::String(format!("W/\"{v}\""))),
        None => request.insert("ifNoneMatch".into(), Value::String("*".into())),
    };
    request.insert("url".into(), Value::String(url.clone()));
    match &p.content {
        Some(content) => {
            if r.live() && r.content.as_ref().is_some_and(|c| same_content(c, content)) {
                return Step {
                    action: PublishAction::Unchanged,
                    resource_entry: None,
                    state: moved,
                };
            }
            request.insert("method".into(), Value::String("PUT".into()));
            let mut resource = content.clone();
            put_lineage(&mut resource, &p.lineage_text);
            Step {
                action: if r.live() {
                    PublishAction::Updated
                } else {
                    PublishAction::Created
                },
                resource_entry: Some(json!({
                    "fullUrl": format!("{base}/{url}"),
                    "resource": resource,
                    "request": request,
                })),
                state: moved,
            }
        }
        None => {
            if !r.live() {
                return Step {
                    action: PublishAction::Unchanged,
                    resource_entry: None,
                    state: moved,
                };
            }
            request.insert("method".into(), Value::String("DELETE".into()));
            if let Some(v) = &r.version {
                state.deletes.insert(v.clone(), p.lineage_text.clone());
            }
            Step {
                action: PublishAction::Deleted,
                resource_entry: Some(json!({"request": request})),
                state: Some(state),
            }
        }
    }
}

/// Whether the server's canonical content is the content of a new upsert. Servers stamp
/// `meta.source` on every write (HAPI: `#<request id>`): unless the upsert sets one itself,
/// the server's is not content, else every replay would make a version.
fn same_content(remote: &Value, new: &Value) -> bool {
    if remote == new {
        return true;
    }
    if new.pointer("/meta/source").is_some() || remote.pointer("/meta/source").is_none() {
        return false;
    }
    let mut remote = remote.clone();
    if let Some(map) = remote.as_object_mut() {
        let empty = match map.get_mut("meta").and_then(Value::as_object_mut) {
            Some(meta) => {
                meta.remove("source");
                meta.is_empty()
            }
            None => false,
        };
        if empty {
            map.remove("meta");
        }
    }
    remote == *new
}

/// Groups the changes into Bundles: targets that reference each other together, each target
/// at most once per Bundle (its changes in order across Bundles), at most `max_entries`
/// entries (two per change: the resource and its state).
fn plan_bundles(prepared: &[Prepared<'_>], max_entries: usize) -> Vec<Vec<usize>> {
    let per_bundle = (max_entries / 2).max(1);
    // Union-find over the distinct targets.
    let mut index: HashMap<&ResourceRef, usize> = HashMap::new();
    let mut order: Vec<&ResourceRef> = Vec::new();
    for p in prepared {
        let t = &p.change.target;
        if !index.contains_key(t) {
            index.insert(t, order.len());
            order.push(t);
        }
    }
    let mut parent: Vec<usize> = (0..order.len()).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let by_text: HashMap<String, usize> = order
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i))
        .collect();
    for p in prepared {
        let Some(content) = &p.content else { continue };
        let from = index[&p.change.target];
        let mut refs = Vec::new();
        collect_references(content, &mut refs);
        for r in refs {
            if let Some(&to) = reference_target(&r).and_then(|t| by_text.get(&t)) {
                let (a, b) = (find(&mut parent, from), find(&mut parent, to));
                if a != b {
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
    }
    // Components in order of their first change; within one, layer k holds each target's k-th
    // change.
    let mut components: Vec<usize> = Vec::new();
    let mut layers: HashMap<usize, Vec<Vec<usize>>> = HashMap::new();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for (i, p) in prepared.iter().enumerate() {
        let t = index[&p.change.target];
        let root = find(&mut parent, t);
        let component = layers.entry(root).or_insert_with(|| {
            components.push(root);
            Vec::new()
        });
        let occurrence = seen.entry(t).or_insert(0);
        if component.len() <= *occurrence {
            component.push(Vec::new());
        }
        component[*occurrence].push(i);
        *occurrence += 1;
    }
    // All first changes, then all second changes…: each target's changes stay in order, and
    // the common case (each resource once) is as few Bundles as the limit allows.
    let mut units: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    for (c, root) in components.iter().enumerate() {
        for (layer, unit) in layers
            .remove(root)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            units.push((layer, c, unit));
        }
    }
    units.sort_by_key(|(layer, c, _)| (*layer, *c));
    let mut bundles: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut in_current: HashSet<&ResourceRef> = HashSet::new();
    for (_, _, unit) in units {
        let clash = unit
            .iter()
            .any(|&i| in_current.contains(&prepared[i].change.target));
        if (clash || current.len() + unit.len() > per_bundle) && !current.is_empty() {
            bundles.push(std::mem::take(&mut current));
            in_current.clear();
        }
        if unit.len() > per_bundle {
            tracing::warn!(
                resources = unit.len(),
                per_bundle,
                "resources referencing each other exceed one Bundle: split"
            );
            for chunk in unit.chunks(per_bundle) {
                bundles.push(chunk.to_vec());
            }
            continue;
        }
        for &i in &unit {
            in_current.insert(&prepared[i].change.target);
        }
        current.extend(unit);
    }
    if !current.is_empty() {
        bundles.push(current);
    }
    for b in &mut bundles {
        b.sort_unstable();
    }
    bundles
}

/// Every `reference` string in a resource.
fn collect_references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => collect_references(x, out),
                }
            }
        }
        Value::Array(list) => list.iter().for_each(|x| collect_references(x, out)),
        _ => {}
    }
}

/// `Type/id` of a relative or absolute reference (a version suffix dropped).
fn reference_target(reference: &str) -> Option<String> {
    let path = reference.split(['?', '#']).next()?;
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    // …/Type/id/_history/v
    let (t, id) = if n >= 4 && parts[n - 2] == "_history" {
        (parts[n - 4], parts[n - 3])
    } else if n >= 2 {
        (parts[n - 2], parts[n - 1])
    } else {
        return None;
    };
    Some(format!("{t}/{id}"))
}

/// The state resource's id for a target.
/// A write whose answer was lost (a 5xx or a timeout after the server committed) comes back
/// `Unchanged` from the retry that finds its content in place; `made` (the versions the
/// history shows it made) turns such outcomes back into what the write did.
fn credit_lost_answers(outcomes: &mut [PublishOutcome], made: &[ChangeEvent]) {
    for o in outcomes
        .iter_mut()
        .filter(|o| o.action == PublishAction::Unchanged)
    {
        let Some(event) = made.iter().find(|e| {
            e.detail.resource_type == o.target.resource_type
                && e.detail.id == o.target.id
                && o.version_id.as_deref() == Some(e.detail.version_id.as_str())
        }) else {
            continue;
        };
        o.action = match event.detail_type {
            ChangeKind::Created => PublishAction::Created,
            ChangeKind::Updated => PublishAction::Updated,
            ChangeKind::Deleted => PublishAction::Deleted,
        };
    }
}

pub fn state_id(target: &ResourceRef) -> String {
    let uuid = uuid::Uuid::new_v5(&STATE_NAMESPACE, target.to_string().as_bytes());
    format!("{STATE_ID_PREFIX}{}", uuid.simple())
}

fn state_resource(target: &ResourceRef, state: &StateDoc) -> Value {
    let mut extension: Vec<Value> = state
        .marks
        .iter()
        .map(|((source, entity), seq)| {
            json!({"url": EXT_MARK, "extension": [
                {"url": "source", "valueString": source},
                {"url": "entity", "valueString": entity},
                {"url": "sequence", "valueString": seq.as_str()},
            ]})
        })
        .collect();
    extension.extend(state.deletes.iter().map(|(after, lineage)| {
        json!({"url": EXT_DELETE_LINEAGE, "extension": [
            {"url": "after", "valueString": after},
            {"url": "lineage", "valueString": lineage},
        ]})
    }));
    json!({
        "resourceType": STATE_TYPE,
        "id": state_id(target),
        "code": {"coding": [{"system": STATE_SYSTEM, "code": STATE_CODE}]},
        "subject": {"reference": target.to_string()},
        "extension": extension,
    })
}

fn state_entry(base: &str, target: &ResourceRef, state: &StateDoc, version: Option<&str>) -> Value {
    let url = format!("{STATE_TYPE}/{}", state_id(target));
    let mut request = json!({"method": "PUT", "url": url});
    match version {
        Some(v) => request["ifMatch"] = Value::String(format!("W/\"{v}\"")),
        None => request["ifNoneMatch"] = Value::String("*".into()),
    }
    json!({
        "fullUrl": format!("{base}/{url}"),
        "resource": state_resource(target, state),
        "request": request,
    })
}

fn parse_state(target: &ResourceRef, v: &Value) -> Result<StateDoc, StoreError> {
    let corrupt =
        |reason: String| StoreError::Corrupt(format!("{target}: state resource: {reason}"));
    let mut doc = StateDoc::default();
    let sub = |ext: &Value, name: &str| -> Option<String> {
        ext.get("extension")?
            .as_array()?
            .iter()
            .find(|e| e.get("url").and_then(Value::as_str) == Some(name))?
            .get("valueString")?
            .as_str()
            .map(str::to_owned)
    };
    for ext in v
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match ext.get("url").and_then(Value::as_str) {
            Some(EXT_MARK) => {
                let (Some(source), Some(entity), Some(seq)) =
                    (sub(ext, "source"), sub(ext, "entity"), sub(ext, "sequence"))
                else {
                    return Err(corrupt("a mark without source, entity or sequence".into()));
                };
                let seq = Sequence::parse(&seq).map_err(|e| corrupt(e.to_string()))?;
                doc.marks.insert((source, entity), seq);
            }
            Some(EXT_DELETE_LINEAGE) => {
                let (Some(after), Some(lineage)) = (sub(ext, "after"), sub(ext, "lineage")) else {
                    return Err(corrupt("a delete lineage without after or lineage".into()));
                };
                doc.deletes.insert(after, lineage);
            }
            _ => {}
        }
    }
    Ok(doc)
}

/// Puts the lineage extension on `meta`.
fn put_lineage(resource: &mut Value, lineage: &str) {
    let Value::Object(map) = resource else { return };
    let meta = map
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else { return };
    let ext = meta
        .entry("extension")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = ext {
        list.push(json!({"url": EXT_LINEAGE, "valueString": lineage}));
    }
}

/// Takes the lineage extension off `meta` (and `meta.extension`/`meta` when they end empty).
fn take_lineage(resource: &mut Value) -> Option<String> {
    let map = resource.as_object_mut()?;
    let meta = map.get_mut("meta")?.as_object_mut()?;
    let list = meta.get_mut("extension")?.as_array_mut()?;
    let pos = list
        .iter()
        .position(|e| e.get("url").and_then(Value::as_str) == Some(EXT_LINEAGE))?;
    let taken = list.remove(pos);
    if list.is_empty() {
        meta.remove("extension");
    }
    if meta.is_empty() {
        map.remove("meta");
    }
    taken
        .get("valueString")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn parse_lineage(target: &ResourceRef, text: &str) -> Result<Lineage, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{target}: stored lineage: {e}")))
}

fn meta_version(resource: &Value) -> Option<String> {
    resource
        .pointer("/meta/versionId")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The version of a transaction-response or history entry: its ETag, else `…/_history/v` in
/// its location or request URL, else its resource's `meta.versionId`.
fn entry_version(e: &Value) -> Option<String> {
    if let Some(tag) = e.pointer("/response/etag").and_then(Value::as_str) {
        let v = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
        if !v.is_empty() {
            return Some(v.to_owned());
        }
    }
    for pointer in ["/response/location", "/request/url"] {
        if let Some(v) = e
            .pointer(pointer)
            .and_then(Value::as_str)
            .and_then(|l| l.split("/_history/").nth(1))
            .map(|v| v.trim_end_matches('/'))
            .filter(|v| !v.is_empty())
        {
            return Some(v.to_owned());
        }
    }
    e.get("resource").and_then(meta_version)
}

/// An RFC 3339 instant or an HTTP date.
fn parse_any_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_rfc2822(text))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `Retry-After` as a wait: seconds or an HTTP date, at most [`MAX_RETRY_AFTER`].
fn retry_after(answer: &Answer) -> Option<Duration> {
    let value = answer.header("retry-after")?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value)
                .ok()?
                .with_timezone(&Utc);
            (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// `: <issues>` of an OperationOutcome body, or a short note on what the body is.
fn outcome_text(answer: &Answer) -> String {
    let Ok(body) = serde_json::from_slice::<Value>(&answer.body) else {
        return if answer.body.is_empty() {
            String::new()
        } else {
            format!(
                " with a body that is not JSON (content type {:?}, {} bytes)",
                answer.header("content-type").unwrap_or("none"),
                answer.body.len()
            )
        };
    };
    if body.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome") {
        return String::new();
    }
    let issues: Vec<String> = body
        .get("issue")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| {
            let s = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or("");
            let text = i
                .get("diagnostics")
                .and_then(Value::as_str)
                .or_else(|| i.pointer("/details/text").and_then(Value::as_str))
                .unwrap_or("");
            let place = i
                .get("expression")
                .or_else(|| i.get("location"))
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|p| !p.is_empty())
                .map(|p| format!(" (at {p})"))
                .unwrap_or_default();
            format!("{} {}: {text}{place}", s("severity"), s("code"))
        })
        .collect();
    format!(": OperationOutcome: {}", issues.join("; "))
}

/// The first of `names` the OperationOutcome of an answer mentions.
fn named_in_outcome(answer: &Answer, names: &[String]) -> Option<String> {
    let text = String::from_utf8_lossy(&answer.body);
    names.iter().find(|n| text.contains(n.as_str())).cloned()
}

fn invalid_named(what: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        target: what.to_owned(),
        reason: reason.into(),
    }
}

/// The SigV4 headers (`x-amz-date`, `authorization`, and `x-amz-security-token` with session
/// credentials) for a request; `headers` are the ones sent (all are signed).
#[allow(clippy::too_many_arguments)]
pub fn sigv4_headers(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    credentials: &aws_credential_types::Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let (signed, _params) = instructions.into_parts();
    Ok(signed
        .into_iter()
        .map(|h| (h.name().to_owned(), h.value().to_owned()))
        .collect())
}

pub mod forward;

#[cfg(test)]
mod tests;
