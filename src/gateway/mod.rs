//! The partner FHIR API and its authorizer logic, independent of how requests arrive.
//!
//! [`Gateway::handle`] answers one [`FhirRequest`] (method, path below the FHIR base, decoded
//! query, `If-None-Match`, and the [`AccessGrant`] the authorizer gave) with a
//! [`FhirResponse`]: FHIR R4 read, vread, instance and type history (`_since`, paged), type
//! search (paged Bundles with opaque `next` cursors, stable order by id), and the
//! CapabilityStatement at `metadata`. Every error is an OperationOutcome with the HTTP status
//! FHIR asks for. The API Gateway payloads (REST v1, HTTP API v2) are turned into
//! `FhirRequest`s by [`crate::handlers::gateway`]; the local server builds the same events.
//!
//! Access is denied by default: without a grant only `metadata` answers, and every resource
//! returned — including each entry of a Bundle — is checked against the grant's types.
//! [`auth`] verifies partner tokens and makes grants.

pub mod auth;
pub mod authcache;
mod capability;
mod params;
pub mod server;
mod write;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::config::{DataDir, PipelineConfig};
use crate::model::ResourceRef;
use crate::outcome::{Issue, Outcome};
use crate::store::search::{HistoryQuery, SearchStore};
use crate::store::sqlite::SqliteStore;
use crate::store::{FhirStore, StoreError, StoredVersion};

pub use auth::AccessGrant;
pub use write::{WRITE_SOURCE, WriteParts};

/// The media type of every FHIR body this API returns.
pub const FHIR_JSON: &str = "application/fhir+json";

/// One request to the FHIR API, whatever carried it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FhirRequest {
    /// HTTP method, upper case.
    pub method: String,
    /// The path below the FHIR base, without leading slash: `Patient/1/_history/2`.
    pub path: String,
    /// Query parameters, percent-decoded, in request order.
    pub query: Vec<(String, String)>,
    /// The `If-None-Match` header.
    pub if_none_match: Option<String>,
    /// The FHIR base URL the client used (no trailing slash), for `fullUrl`s and links.
    pub base_url: String,
    /// What the authorizer allowed; `None` allows nothing but `metadata`.
    pub grant: Option<AccessGrant>,
}

/// The answer: status, headers and a FHIR JSON body (none for 304 and HEAD).
#[derive(Debug, Clone, PartialEq)]
pub struct FhirResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl FhirResponse {
    fn json(status: u16, body: &Value) -> FhirResponse {
        FhirResponse {
            status,
            headers: vec![("content-type".to_owned(), FHIR_JSON.to_owned())],
            body: Some(body.to_string()),
        }
    }

    fn outcome(status: u16, outcome: &Outcome) -> FhirResponse {
        FhirResponse::json(status, &outcome.to_fhir())
    }

    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request the API refuses: the status and the OperationOutcome saying why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub outcome: Outcome,
}

impl Refusal {
    pub fn new(status: u16, code: &str, diagnostics: impl Into<String>) -> Refusal {
        Refusal {
            status,
            outcome: Outcome::error(code, diagnostics),
        }
    }

    fn bad_request(diagnostics: impl Into<String>) -> Refusal {
        Refusal::new(400, "invalid", diagnostics)
    }

    fn not_found(diagnostics: impl Into<String>) -> Refusal {
        Refusal::new(404, "not-found", diagnostics)
    }

    fn forbidden(diagnostics: impl Into<String>) -> Refusal {
        Refusal::new(403, "forbidden", diagnostics)
    }

    fn from_store(e: &StoreError) -> Refusal {
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "gateway: store unavailable");
                Refusal::new(503, "transient", "the store is unavailable; retry later")
            }
            StoreError::Invalid { target, reason } => {
                Refusal::bad_request(format!("{target}: {reason}"))
            }
            StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "gateway: store data cannot be read");
                Refusal::new(500, "exception", "the store could not read this data")
            }
        }
    }

    pub fn into_response(self) -> FhirResponse {
        FhirResponse::outcome(self.status, &self.outcome)
    }
}

/// Errors building a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The partner FHIR API over a store that can search.
#[derive(Debug, Clone)]
pub struct Gateway {
    store: Arc<dyn FhirStore>,
    search: Arc<dyn SearchStore>,
    /// Whether the write interactions ([`write`]) answer.
    writes: bool,
    /// Held while a write checks versions and applies.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// A FHIR server as the store: searches are forwarded to it ([`Gateway::rest`]).
    forward: Option<Arc<crate::store::rest::RestStore>>,
}

/// Page size when `_count` is absent, and the most one page holds.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

impl Gateway {
    pub fn new(store: Arc<dyn FhirStore>, search: Arc<dyn SearchStore>) -> Gateway {
        Gateway {
            store,
            search,
            writes: false,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            forward: None,
        }
    }

    /// A gateway over a FHIR server (the `rest` store: HealthLake…): reads and histories go
    /// through the store, searches are forwarded to the server with the parameters this API
    /// accepts, every returned resource is checked against the grant again, and the server's
    /// paging links become links to this API (see [`crate::store::rest::forward`]).
    pub fn rest(store: Arc<crate::store::rest::RestStore>) -> Gateway {
        let mut gateway = Gateway::new(store.clone(), store.clone());
        gateway.forward = Some(store);
        gateway
    }

    /// A gateway over one SQLite store.
    pub fn sqlite(store: Arc<SqliteStore>) -> Gateway {
        Gateway::new(store.clone(), store)
    }

    /// Turns on the write interactions (`PUT`/`DELETE Type/id`, transaction Bundles; see
    /// [`write`]), for grants with write permission. They bypass the pipeline's mapping and
    /// validation, so they are off unless asked for.
    pub fn allow_writes(mut self) -> Gateway {
        self.writes = true;
        self
    }

    /// The gateway over the store a pipeline file names, with local data under `data`.
    pub fn from_config(config: &PipelineConfig, data: &DataDir) -> Result<Gateway, GatewayError> {
        let store = Arc::new(SqliteStore::open(&data.join(config.store.sqlite_path()))?);
        Ok(Gateway::sqlite(store))
    }

    /// The gateway of a local server (`serve`): over the FHIR server the pipeline file names
    /// (`store.rest`, searches forwarded as [`Gateway::rest`] does), else as
    /// [`Gateway::from_config`].
    pub async fn local(config: &PipelineConfig, data: &DataDir) -> Result<Gateway, GatewayError> {
        match &config.store.rest {
            Some(rest) => Ok(Gateway::rest(Arc::new(
                crate::store::rest::RestStore::from_config(rest, None).await?,
            ))),
            None => Gateway::from_config(config, data),
        }
    }

    /// Answers one request. Never fails: every problem is an OperationOutcome response.
    pub async fn handle(&self, req: &FhirRequest) -> FhirResponse {
        self.handle_write(req, WriteParts::default()).await
    }

    /// Answers one request that may carry a body and `If-Match` (the write interactions).
    pub async fn handle_write(&self, req: &FhirRequest, parts: WriteParts<'_>) -> FhirResponse {
        let head = req.method == "HEAD";
        let mut response = match self.route(req, parts).await {
            Ok(r) => r,
            Err(refusal) => refusal.into_response(),
        };
        if head {
            response.body = None;
        }
        response
    }

    async fn route(
        &self,
        req: &FhirRequest,
        parts: WriteParts<'_>,
    ) -> Result<FhirResponse, Refusal> {
        let writing = matches!(req.method.as_str(), "PUT" | "DELETE" | "POST");
        if !writing && req.method != "GET" && req.method != "HEAD" {
            return Err(Refusal::new(
                405,
                "not-supported",
                format!("{} is not supported: this API is read-only", req.method),
            ));
        }
        let segments: Vec<&str> = req
            .path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        if segments == ["metadata"] {
            params::check_only_format(&req.query)?;
            return Ok(FhirResponse::json(
                200,
                &capability::statement(&req.base_url),
            ));
        }
        let grant = req.grant.as_ref().ok_or_else(|| {
            Refusal::new(
                401,
                "login",
                "no authorization: send a bearer token from your partner issuer",
            )
        })?;
        if writing {
            return self.write(req, grant, &segments, parts).await;
        }
        let Some((&resource_type, rest)) = segments.split_first() else {
            return Err(Refusal::bad_request(
                "name a resource type: system-level interactions are not supported",
            ));
        };
        if !is_type_name(resource_type) {
            return Err(Refusal::not_found(format!(
                "{resource_type:?} is not a resource type"
            )));
        }
        match rest {
            [] => {
                check_grant(grant, resource_type, Interaction::Search)?;
                self.search(req, grant, resource_type).await
            }
            ["_history"] => {
                check_grant(grant, resource_type, Interaction::Read)?;
                self.history(req, grant, resource_type, None).await
            }
            [id] => {
                check_grant(grant, resource_type, Interaction::Read)?;
                params::check_only_format(&req.query)?;
                let target = target(resource_type, id);
                let current = self
                    .store
                    .read(&target)
                    .await
                    .map_err(|e| Refusal::from_store(&e))?;
                version_response(req, &target, current)
            }
            [id, "_history"] => {
                check_grant(grant, resource_type, Interaction::Read)?;
                self.history(req, grant, resource_type, Some(id)).await
            }
            [id, "_history", vid] => {
                check_grant(grant, resource_type, Interaction::Read)?;
                params::check_only_format(&req.query)?;
                let target = target(resource_type, id);
                let version = self
                    .store
                    .vread(&target, vid)
                    .await
                    .map_err(|e| Refusal::from_store(&e))?;
                if version.is_none() {
                    // Say which is unknown: the resource or only this version.
                    let exists = self
                        .store
                        .read(&target)
                        .await
                        .map_err(|e| Refusal::from_store(&e))?
                        .is_some();
                    if exists {
                        return Err(Refusal::not_found(format!(
                            "{target} has no version {vid:?}"
                        )));
                    }
                }
                version_response(req, &target, version)
            }
            _ => Err(Refusal::bad_request(format!(
                "unsupported path {:?}: use Type, Type/id, Type/id/_history[/vid] or Type/_history",
                req.path
            ))),
        }
    }

    async fn search(
        &self,
        req: &FhirRequest,
        grant: &AccessGrant,
        resource_type: &str,
    ) -> Result<FhirResponse, Refusal> {
        let parsed = params::parse_search(resource_type, &req.query)?;
        let (page, extra_withheld) = match &self.forward {
            Some(rest) => {
                let page = rest
                    .forward_search(
                        resource_type,
                        &parsed.echo,
                        parsed.query.count,
                        parsed.query.cursor.as_deref(),
                    )
                    .await
                    .map_err(|e| Refusal::from_store(&e))?;
                (
                    crate::store::search::SearchPage {
                        total: page.total.unwrap_or(page.versions.len() as u64),
                        matches: page.versions,
                        next: page.next,
                    },
                    page.withheld,
                )
            }
            None => (
                self.search
                    .search(&parsed.query)
                    .await
                    .map_err(|e| Refusal::from_store(&e))?,
                0,
            ),
        };
        let path = format!("{}/{resource_type}", req.base_url);
        let mut links = vec![link("self", &path, &parsed.echo, parsed.query.count, None)];
        if let Some(next) = &page.next {
            links.push(link(
                "next",
                &path,
                &parsed.echo,
                parsed.query.count,
                Some(next),
            ));
        }
        let mut entries = Vec::with_capacity(page.matches.len());
        let mut withheld = extra_withheld;
        for v in &page.matches {
            // The query is for one type; re-check each resource anyway, so a store that
            // returns something else (a bug, an include later) cannot leak it.
            let Some(resource) = v.resource.as_ref().filter(|r| {
                r.get("resourceType").and_then(Value::as_str) == Some(resource_type)
                    && grant.may_read(&v.target.resource_type)
                    && v.target.resource_type == resource_type
            }) else {
                withheld += 1;
                continue;
            };
            entries.push(json!({
                "fullUrl": format!("{}/{}", req.base_url, v.target),
                "resource": resource,
                "search": {"mode": "match"},
            }));
        }
        if withheld > 0 {
            tracing::warn!(
                partner = %grant.partner,
                withheld,
                "gateway: search results withheld by the grant check"
            );
            entries.push(json!({
                "resource": Outcome::from(Issue::new(
                    crate::outcome::Severity::Warning,
                    "suppressed",
                    format!("{withheld} results withheld: not readable with this grant"),
                ))
                .to_fhir(),
                "search": {"mode": "outcome"},
            }));
        }
        tracing::info!(
            partner = %grant.partner,
            resource_type,
            total = page.total,
            returned = entries.len(),
            "gateway: search"
        );
        Ok(FhirResponse::json(
            200,
            &json!({
                "resourceType": "Bundle",
                "type": "searchset",
                "total": page.total,
                "link": links,
                "entry": entries,
            }),
        ))
    }

    async fn history(
        &self,
        req: &FhirRequest,
        grant: &AccessGrant,
        resource_type: &str,
        id: Option<&str>,
    ) -> Result<FhirResponse, Refusal> {
        let parsed = params::parse_history(&req.query)?;
        if let Some(id) = id {
            let target = target(resource_type, id);
            let exists = self
                .store
                .read(&target)
                .await
                .map_err(|e| Refusal::from_store(&e))?
                .is_some();
            if !exists {
                return Err(Refusal::not_found(format!("{target} is not known")));
            }
        }
        let query = HistoryQuery {
            resource_type: resource_type.to_owned(),
            id: id.map(str::to_owned),
            since: parsed.since,
            count: parsed.count,
            cursor: parsed.cursor,
        };
        let page = self
            .search
            .history_page(&query)
            .await
            .map_err(|e| Refusal::from_store(&e))?;
        let path = match id {
            Some(id) => format!("{}/{resource_type}/{id}/_history", req.base_url),
            None => format!("{}/{resource_type}/_history", req.base_url),
        };
        let mut links = vec![link("self", &path, &parsed.echo, parsed.count, None)];
        if let Some(next) = &page.next {
            links.push(link("next", &path, &parsed.echo, parsed.count, Some(next)));
        }
        let entries: Vec<Value> = page
            .versions
            .iter()
            .filter(|v| v.target.resource_type == resource_type && grant.may_read(resource_type))
            .map(|v| history_entry(&req.base_url, v))
            .collect();
        Ok(FhirResponse::json(
            200,
            &json!({
                "resourceType": "Bundle",
                "type": "history",
                "total": page.total,
                "link": links,
                "entry": entries,
            }),
        ))
    }
}

/// What a request does with a type, for the grant check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interaction {
    Read,
    Search,
}

fn check_grant(grant: &AccessGrant, resource_type: &str, what: Interaction) -> Result<(), Refusal> {
    let allowed = match what {
        Interaction::Read => grant.may_read(resource_type),
        Interaction::Search => grant.may_search(resource_type),
    };
    if allowed {
        Ok(())
    } else {
        tracing::info!(partner = %grant.partner, resource_type, ?what, "gateway: denied by grant");
        Err(Refusal::forbidden(format!(
            "partner {:?} may not {} {resource_type}",
            grant.partner,
            match what {
                Interaction::Read => "read",
                Interaction::Search => "search",
            }
        )))
    }
}

fn target(resource_type: &str, id: &str) -> ResourceRef {
    ResourceRef {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
    }
}

/// A FHIR resource type name: `[A-Z][A-Za-z]*`.
fn is_type_name(s: &str) -> bool {
    s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.bytes().all(|b| b.is_ascii_alphabetic())
}

/// `W/"<versionId>"`.
pub fn etag(version_id: &str) -> String {
    format!("W/\"{version_id}\"")
}

/// An HTTP date (RFC 9110 IMF-fixdate).
pub fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Whether an `If-None-Match` value names this version (`*`, `W/"n"` or `"n"`, in a list).
fn none_match(header: &str, version_id: &str) -> bool {
    header.split(',').map(str::trim).any(|tag| {
        tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"') == version_id
    })
}

/// The answer to read and vread: the version, 304, 404 or 410.
fn version_response(
    req: &FhirRequest,
    target: &ResourceRef,
    version: Option<StoredVersion>,
) -> Result<FhirResponse, Refusal> {
    let Some(v) = version else {
        return Err(Refusal::not_found(format!("{target} is not known")));
    };
    let headers = vec![
        ("etag".to_owned(), etag(&v.version_id)),
        ("last-modified".to_owned(), http_date(v.last_updated)),
    ];
    let Some(resource) = v.resource.as_ref().filter(|_| !v.deleted) else {
        let mut r = Refusal::new(
            410,
            "deleted",
            format!("{target} was deleted (version {})", v.version_id),
        )
        .into_response();
        r.headers.extend(headers);
        return Ok(r);
    };
    if req
        .if_none_match
        .as_deref()
        .is_some_and(|h| none_match(h, &v.version_id))
    {
        return Ok(FhirResponse {
            status: 304,
            headers,
            body: None,
        });
    }
    let mut r = FhirResponse::json(200, resource);
    r.headers.extend(headers);
    Ok(r)
}

fn history_entry(base: &str, v: &StoredVersion) -> Value {
    let url = format!("{}", v.target);
    let mut e = json!({
        "fullUrl": format!("{base}/{url}"),
        "request": {"method": if v.deleted { "DELETE" } else { "PUT" }, "url": url},
        "response": {
            "status": if v.deleted { "204" } else if v.version_id == "1" { "201" } else { "200" },
            "etag": etag(&v.version_id),
            "lastModified": v.last_updated.to_rfc3339_opts(SecondsFormat::Millis, true),
        },
    });
    if let Some(r) = v.resource.as_ref().filter(|_| !v.deleted) {
        e["resource"] = r.clone();
    }
    e
}

/// Characters kept as they are in query components of links.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A Bundle link: the search's own parameters, `_count`, and the opaque cursor.
fn link(
    relation: &str,
    path: &str,
    echo: &[(String, String)],
    count: usize,
    cursor: Option<&str>,
) -> Value {
    let mut pairs: Vec<String> = echo
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, QUERY),
                utf8_percent_encode(v, QUERY)
            )
        })
        .collect();
    pairs.push(format!("_count={count}"));
    if let Some(c) = cursor {
        pairs.push(format!("_cursor={}", URL_SAFE_NO_PAD.encode(c)));
    }
    json!({"relation": relation, "url": format!("{path}?{}", pairs.join("&"))})
}

/// The store cursor inside a `_cursor` parameter.
fn decode_cursor(text: &str) -> Result<String, Refusal> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Refusal::bad_request("_cursor is not a cursor this server made"))
}

#[cfg(test)]
mod tests;
