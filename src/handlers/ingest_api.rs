//! `ingest-api`: records and FHIR resources posted through API Gateway, published through
//! `unify` while the caller waits.
//!
//! Takes proxy events of both payload versions — REST APIs (v1) and HTTP APIs (v2) — for the
//! sources that say `api: { path: /ingest/<name>, fhir: [Types…] }`:
//!
//! - `POST <path>/<entity>`: one of the source's own JSON records (an object) or several (an
//!   array), keyed and mapped like any other source's records;
//! - `POST <path>/fhir/<Type>` (create), `PUT <path>/fhir/<Type>/<id>` (update), and
//!   `POST <path>/fhir` with a `batch` or `transaction` Bundle: FHIR resources of the listed
//!   types, passed through a built-in mapping that keeps the resource and gives it the
//!   pipeline's deterministic id ([`crate::mapping::resource_id`] of the source, the entity
//!   `fhir.<Type>` and the key below). References between resources posted to the same source
//!   (`Patient/123`, or a Bundle entry's `fullUrl`) are rewritten to those ids.
//!
//! - `DELETE <path>/fhir/<Type>/<id>` (what `PUT` of that id made) and
//!   `DELETE <path>/<entity>/<key>` (the resources a source record made; entities with a
//!   one-column key; the key is the path segment as a string, or as an integer when only that
//!   form is stored): 200 with an OperationOutcome saying what was deleted, 404 when the store
//!   holds no current resource for it. The delete goes through `unify` like any change.
//!
//! Keys of FHIR resources: `PUT …/<Type>/<id>` is keyed by `{"id": <id>}`; a create by its
//! first identifier with system and value (`{"identifier": "system|value"}`, so posting the
//! same identifier again updates, like a conditional create), else by the request
//! (`{"request": "<requestId>#<n>"}`, a new resource per request, as FHIR creates do).
//!
//! The answer is synchronous, with the HTTP codes of a FHIR server: 201 created, 200 updated or
//! unchanged, 400 not JSON or not a resource, 403 not granted, 404 unknown path, 405 method,
//! 409 stale, 413 too large, 415 content type, 422 invalid (mapping or validation), and
//! `batch-response` / `transaction-response` Bundles with a status per entry. A transaction is
//! mapped and validated whole before anything is handed on: one bad entry fails it and nothing
//! is written. Every refusal is an OperationOutcome naming the request id and the place.
//!
//! Writing needs the authorizer's grant (`writeTypes` in its context): a FHIR resource needs
//! its type; a source record needs every type its entity's mapping makes. No grant, no write.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use aws_lambda_events::apigw::{
    ApiGatewayProxyRequest, ApiGatewayProxyResponse, ApiGatewayV2httpRequest,
    ApiGatewayV2httpResponse,
};
use aws_lambda_events::encodings::Body;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::config::{SourceConfig, api_fhir_entity};
use crate::env::{IngestEnv, LazyValidator};
use crate::gateway::{AccessGrant, FHIR_JSON, etag, http_date};
use crate::mapping::MappingSet;
use crate::model::{
    ChangeBatch, Op, PublishAction, PublishOutcome, PublishedBatch, RecordKey, Rejection,
    ResourceOp, ResourceRef, Sequence, SourceChange, Stage,
};
use crate::outcome::{Issue, Outcome, Severity};
use crate::store::FhirStore;

use super::HandlerError;
use super::apigw::{header, header_map, scheme};
use super::ingest_dynamodb::run_unify_chunked;

/// The largest body taken: Lambda's limit for a synchronous invocation's payload is 6 MB, and
/// the event around the body needs some of it.
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// The most records (or Bundle entries) one request may carry: the caller waits for all of
/// them, and API Gateway gives up after 29 seconds.
pub const MAX_RECORDS: usize = 1000;

/// What `ingest-api` needs: the ingress environment (config, workflow), the mappings and the
/// validator (a transaction is checked whole before it is handed on), and the store (to answer
/// a create or update with the resource as stored).
#[derive(Debug, Clone)]
pub struct ApiEnv {
    pub ingest: IngestEnv,
    pub mappings: Arc<MappingSet>,
    pub validator: LazyValidator,
    pub store: Arc<dyn FhirStore>,
}

impl ApiEnv {
    /// The environment of a runtime: the embedded one locally; on Lambda the same with its
    /// ingress on Step Functions and the store table (`lambda::api_env`).
    pub fn from_runtime(runtime: &crate::local::LocalRuntime) -> ApiEnv {
        ApiEnv {
            ingest: runtime.ingest.clone(),
            mappings: runtime.env.mappings.clone(),
            validator: runtime.env.validator.clone(),
            store: runtime.env.store.clone(),
        }
    }
}

/// One write request, whatever carried it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiRequest {
    /// HTTP method, upper case.
    pub method: String,
    /// The request path (without the stage), e.g. `/ingest/partner/fhir/Patient`.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Option<String>,
    pub is_base64_encoded: bool,
    /// API Gateway's request id: named in every answer and in keys of created resources.
    pub request_id: String,
    /// When API Gateway received the request (epoch milliseconds; 0 if unknown).
    pub time_epoch_ms: i64,
    /// The FHIR base where stored resources are read (`Location` headers point there).
    pub read_base_url: String,
    /// What the authorizer allowed; `None` allows nothing.
    pub grant: Option<AccessGrant>,
}

/// The answer: status, headers, JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl ApiResponse {
    fn json(status: u16, body: Value) -> ApiResponse {
        ApiResponse {
            status,
            headers: vec![("content-type".to_owned(), FHIR_JSON.to_owned())],
            body,
        }
    }

    fn header(mut self, name: &str, value: String) -> ApiResponse {
        self.headers.push((name.to_owned(), value));
        self
    }

    /// A header's value (names compared case-insensitively).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A refusal of the whole request: status and OperationOutcome.
#[derive(Debug, Clone)]
struct Refused {
    status: u16,
    outcome: Outcome,
}

impl Refused {
    fn new(status: u16, code: &str, req: &ApiRequest, what: String, at: &str) -> Refused {
        Refused {
            status,
            outcome: Outcome::from(
                Issue::error(code, format!("request {}: {what}", req.request_id)).at(at),
            ),
        }
    }

    fn response(self) -> ApiResponse {
        ApiResponse::json(self.status, self.outcome.to_fhir())
    }
}

/// Answers a REST API (payload v1) proxy event.
pub async fn handle_v1(event: &ApiGatewayProxyRequest, env: &ApiEnv) -> ApiGatewayProxyResponse {
    let response = ingest(&request_v1(event), env).await;
    let mut out = ApiGatewayProxyResponse::default();
    out.status_code = i64::from(response.status);
    out.headers = header_map(&response.headers);
    out.body = Some(Body::Text(response.body.to_string()));
    out
}

/// Answers an HTTP API (payload v2) proxy event.
pub async fn handle_v2(event: &ApiGatewayV2httpRequest, env: &ApiEnv) -> ApiGatewayV2httpResponse {
    let response = ingest(&request_v2(event), env).await;
    response_v2(&response)
}

/// The v2 shape of a response (also what the local server turns into HTTP).
pub fn response_v2(response: &ApiResponse) -> ApiGatewayV2httpResponse {
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(response.status);
    out.headers = header_map(&response.headers);
    out.body = Some(Body::Text(response.body.to_string()));
    out
}

/// The Lambda entry point: either payload version, told apart by `version: "2.0"`.
pub async fn handle(event: Value, env: &ApiEnv) -> Result<Value, HandlerError> {
    let v2 = event.get("version").and_then(Value::as_str) == Some("2.0");
    let out = if v2 {
        let e: ApiGatewayV2httpRequest = serde_json::from_value(event)
            .map_err(|e| HandlerError::InvalidInput(format!("API Gateway v2 event: {e}")))?;
        serde_json::to_value(handle_v2(&e, env).await)
    } else {
        let e: ApiGatewayProxyRequest = serde_json::from_value(event)
            .map_err(|e| HandlerError::InvalidInput(format!("API Gateway v1 event: {e}")))?;
        serde_json::to_value(handle_v1(&e, env).await)
    };
    out.map_err(|e| HandlerError::InvalidInput(format!("response cannot be encoded: {e}")))
}

/// The request of a REST API (v1) event.
pub fn request_v1(event: &ApiGatewayProxyRequest) -> ApiRequest {
    let path = event.path.clone().unwrap_or_else(|| "/".to_owned());
    let host = header(&event.headers, "host")
        .map(str::to_owned)
        .or_else(|| event.request_context.domain_name.clone())
        .unwrap_or_else(|| "localhost".to_owned());
    // On the default execute-api endpoint the stage is part of the URL but not of `path`.
    let stage = match &event.request_context.stage {
        Some(s) if host.ends_with(".amazonaws.com") => format!("/{s}"),
        _ => String::new(),
    };
    ApiRequest {
        method: event.http_method.as_str().to_owned(),
        path,
        content_type: header(&event.headers, "content-type").map(str::to_owned),
        body: event.body.clone(),
        is_base64_encoded: event.is_base64_encoded,
        request_id: event
            .request_context
            .request_id
            .clone()
            .unwrap_or_else(|| "unknown".to_owned()),
        time_epoch_ms: event.request_context.request_time_epoch,
        read_base_url: format!("{}://{host}{stage}", scheme(&event.headers)),
        grant: AccessGrant::from_context(&event.request_context.authorizer.fields),
    }
}

/// The request of an HTTP API (v2) event.
pub fn request_v2(event: &ApiGatewayV2httpRequest) -> ApiRequest {
    let full = event
        .raw_path
        .clone()
        .or_else(|| event.request_context.http.path.clone())
        .unwrap_or_else(|| "/".to_owned());
    let (path, stage) = match event.request_context.stage.as_deref() {
        Some(stage) if stage != "$default" => match full.strip_prefix(&format!("/{stage}")) {
            Some(rest) => (rest.to_owned(), format!("/{stage}")),
            None => (full.clone(), String::new()),
        },
        _ => (full.clone(), String::new()),
    };
    let host = header(&event.headers, "host")
        .map(str::to_owned)
        .or_else(|| event.request_context.domain_name.clone())
        .unwrap_or_else(|| "localhost".to_owned());
    let empty = HashMap::new();
    let context = event
        .request_context
        .authorizer
        .as_ref()
        .map_or(&empty, |a| &a.fields);
    ApiRequest {
        method: event.request_context.http.method.as_str().to_owned(),
        path,
        content_type: header(&event.headers, "content-type").map(str::to_owned),
        body: event.body.clone(),
        is_base64_encoded: event.is_base64_encoded,
        request_id: event
            .request_context
            .request_id
            .clone()
            .unwrap_or_else(|| "unknown".to_owned()),
        time_epoch_ms: event.request_context.time_epoch,
        read_base_url: format!("{}://{host}{stage}", scheme(&event.headers)),
        grant: AccessGrant::from_context(context),
    }
}

/// Where a request goes.
enum Route<'a> {
    /// `POST <path>/<entity>`.
    Records {
        source: &'a SourceConfig,
        entity: String,
    },
    /// `POST <path>/fhir`: a batch or transaction Bundle.
    Bundle { source: &'a SourceConfig },
    /// `POST <path>/fhir/<Type>`.
    Create {
        source: &'a SourceConfig,
        resource_type: String,
    },
    /// `PUT <path>/fhir/<Type>/<id>`.
    Update {
        source: &'a SourceConfig,
        resource_type: String,
        id: String,
    },
    /// `DELETE <path>/fhir/<Type>/<id>` or `DELETE <path>/<entity>/<key>`: `keys` are the
    /// record keys it may mean, in order of preference.
    Delete {
        source: &'a SourceConfig,
        entity: String,
        keys: Vec<RecordKey>,
    },
}

/// Answers one request. Never fails: every problem is an OperationOutcome response.
pub async fn ingest(req: &ApiRequest, env: &ApiEnv) -> ApiResponse {
    let started = std::time::Instant::now();
    let response = match answer(req, env).await {
        Ok(r) => r,
        Err(refused) => refused.response(),
    };
    tracing::info!(
        request_id = %req.request_id,
        method = %req.method,
        status = response.status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ingest-api done"
    );
    response
}

async fn answer(req: &ApiRequest, env: &ApiEnv) -> Result<ApiResponse, Refused> {
    let route = route(req, env)?;
    if let Route::Delete {
        source,
        entity,
        keys,
    } = route
    {
        return delete(req, env, source, &entity, &keys).await;
    }
    let body = body_json(req)?;
    match route {
        Route::Records { source, entity } => records(req, env, source, &entity, body).await,
        Route::Create {
            source,
            resource_type,
        } => single(req, env, source, &resource_type, None, body).await,
        Route::Update {
            source,
            resource_type,
            id,
        } => single(req, env, source, &resource_type, Some(&id), body).await,
        Route::Bundle { source } => bundle(req, env, source, body).await,
        Route::Delete { .. } => Err(Refused::new(
            500,
            "exception",
            req,
            "a delete reached the body step".into(),
            "method",
        )),
    }
}

/// The route, the method check (405) and the grant check (403).
fn route<'a>(req: &ApiRequest, env: &'a ApiEnv) -> Result<Route<'a>, Refused> {
    let not_found = |what: String| Refused::new(404, "not-found", req, what, "path");
    let (source, rest) = env
        .ingest
        .config
        .api_source_for(&req.path)
        .ok_or_else(|| not_found(format!("no API source has the path {:?}", req.path)))?;
    let api = source.api.as_ref();
    let fhir_types: &[String] = api.map_or(&[], |a| a.fhir.as_slice());
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method.as_str();
    let allow = |allowed: &str| -> Result<(), Refused> {
        if allowed.split(", ").any(|m| m == method) {
            Ok(())
        } else {
            Err(Refused {
                status: 405,
                outcome: Outcome::from(
                    Issue::error(
                        "not-supported",
                        format!(
                            "request {}: {method} is not allowed here (allowed: {allowed})",
                            req.request_id
                        ),
                    )
                    .at("method"),
                ),
            })
        }
    };
    let type_accepted = |t: &str| -> Result<(), Refused> {
        if fhir_types.iter().any(|f| f == t) {
            Ok(())
        } else {
            Err(not_found(format!(
                "source {:?} does not accept FHIR {t} resources (accepted: {})",
                source.name,
                fhir_types.join(", ")
            )))
        }
    };
    let route = match segments.as_slice() {
        ["fhir"] => {
            allow("POST")?;
            Route::Bundle { source }
        }
        ["fhir", t] => {
            type_accepted(t)?;
            allow("POST")?;
            Route::Create {
                source,
                resource_type: (*t).to_owned(),
            }
        }
        ["fhir", t, id] => {
            type_accepted(t)?;
            allow("PUT, DELETE")?;
            if !is_fhir_id(id) {
                return Err(Refused::new(
                    400,
                    "invalid",
                    req,
                    "the id in the path is not a FHIR id ([A-Za-z0-9.-]{1,64})".into(),
                    "path",
                ));
            }
            if method == "DELETE" {
                Route::Delete {
                    source,
                    entity: api_fhir_entity(t),
                    keys: vec![RecordKey::from_pairs([("id", Value::from(*id))])],
                }
            } else {
                Route::Update {
                    source,
                    resource_type: (*t).to_owned(),
                    id: (*id).to_owned(),
                }
            }
        }
        [entity, key] if source.entities.contains_key(*entity) => {
            allow("DELETE")?;
            let columns = source
                .entities
                .get(*entity)
                .map_or(&[][..], |e| e.key.as_slice());
            let [column] = columns else {
                return Err(Refused::new(
                    400,
                    "not-supported",
                    req,
                    format!(
                        "entity {entity:?} has a key of {} columns; a delete by path needs a one-column key",
                        columns.len()
                    ),
                    "path",
                ));
            };
            let mut keys = vec![RecordKey::from_pairs([(
                column.as_str(),
                Value::from(*key),
            )])];
            if let Ok(n) = key.parse::<i64>()
                && n.to_string() == *key
            {
                keys.push(RecordKey::from_pairs([(column.as_str(), Value::from(n))]));
            }
            Route::Delete {
                source,
                entity: (*entity).to_owned(),
                keys,
            }
        }
        [entity] if source.entities.contains_key(*entity) => {
            allow("POST")?;
            Route::Records {
                source,
                entity: (*entity).to_owned(),
            }
        }
        _ => {
            return Err(not_found(format!(
                "source {:?} has no entity or FHIR endpoint at {:?}",
                source.name, req.path
            )));
        }
    };
    // Which types the request writes; a bundle's entries are checked one by one.
    let needed: Vec<String> = match &route {
        Route::Records { entity, .. } | Route::Delete { entity, .. } => env
            .mappings
            .get(&source.name, entity)
            .map(|m| {
                m.targets(&RecordKey::default())
                    .into_iter()
                    .map(|t| t.resource_type)
                    .collect()
            })
            .unwrap_or_default(),
        Route::Create { resource_type, .. } | Route::Update { resource_type, .. } => {
            vec![resource_type.clone()]
        }
        Route::Bundle { .. } => Vec::new(),
    };
    let grant = req.grant.as_ref().ok_or_else(|| {
        Refused::new(
            403,
            "forbidden",
            req,
            "no authorizer grant: writing is denied".into(),
            "authorization",
        )
    })?;
    if let Some(t) = needed.iter().find(|t| !grant.may_write(t)) {
        return Err(Refused::new(
            403,
            "forbidden",
            req,
            format!("partner {:?} may not write {t} resources", grant.partner),
            "authorization",
        ));
    }
    Ok(route)
}

fn is_fhir_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The body as JSON: content type (415), size (413), base64 (400), empty (400), JSON (400).
fn body_json(req: &ApiRequest) -> Result<Value, Refused> {
    let media = req
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some("application/fhir+json" | "application/json") => {}
        Some(other) => {
            return Err(Refused::new(
                415,
                "not-supported",
                req,
                format!(
                    "content type {other:?} is not accepted (application/fhir+json or application/json)"
                ),
                "header Content-Type",
            ));
        }
        None => {
            return Err(Refused::new(
                415,
                "not-supported",
                req,
                "no Content-Type (application/fhir+json or application/json)".into(),
                "header Content-Type",
            ));
        }
    }
    let raw = req.body.as_deref().unwrap_or("");
    // A base64 body is a third longer than what it carries.
    let limit = if req.is_base64_encoded {
        MAX_BODY_BYTES / 3 * 4 + 4
    } else {
        MAX_BODY_BYTES
    };
    if raw.len() > limit {
        return Err(Refused::new(
            413,
            "too-costly",
            req,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            "body",
        ));
    }
    let decoded;
    let text: &str = if req.is_base64_encoded {
        let bytes = STANDARD.decode(raw.trim()).map_err(|e| {
            Refused::new(
                400,
                "structure",
                req,
                format!("the body is marked isBase64Encoded but is not base64: {e}"),
                "body",
            )
        })?;
        decoded = String::from_utf8(bytes).map_err(|e| {
            Refused::new(
                400,
                "structure",
                req,
                format!(
                    "the base64 body is not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
                "body",
            )
        })?;
        &decoded
    } else {
        raw
    };
    if text.trim().is_empty() {
        return Err(Refused::new(
            400,
            "required",
            req,
            "the body is empty".into(),
            "body",
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        Refused::new(
            400,
            "structure",
            req,
            format!("the body is not JSON: {e}"),
            &format!("body line {} column {}", e.line(), e.column()),
        )
    })
}

/// One change handed to `unify`, with what the answer needs to say about it.
struct Pending {
    change: SourceChange,
    /// The resources it can make (the mapping's targets for its key).
    targets: Vec<ResourceRef>,
    /// Where it is in the request (`record[2]`, `Bundle.entry[1]`).
    place: String,
}

/// The result of one change.
#[derive(Debug, Clone)]
enum Done {
    Published(Vec<PublishOutcome>),
    Rejected { status: u16, outcome: Value },
}

impl Done {
    fn status(&self) -> u16 {
        match self {
            Done::Rejected { status, .. } => *status,
            Done::Published(outcomes) => {
                let actions: Vec<PublishAction> = outcomes.iter().map(|o| o.action).collect();
                if actions.contains(&PublishAction::Created) {
                    201
                } else if !actions.is_empty() && actions.iter().all(|a| *a == PublishAction::Stale)
                {
                    409
                } else {
                    200
                }
            }
        }
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "200 OK",
        201 => "201 Created",
        400 => "400 Bad Request",
        403 => "403 Forbidden",
        404 => "404 Not Found",
        405 => "405 Method Not Allowed",
        409 => "409 Conflict",
        422 => "422 Unprocessable Entity",
        _ => "500 Internal Server Error",
    }
}

/// The sequence of the `index`th change of a request: later requests win, and within a
/// request later entries win.
fn sequence(req: &ApiRequest, index: usize) -> (Sequence, DateTime<Utc>) {
    let at = DateTime::<Utc>::from_timestamp_millis(req.time_epoch_ms)
        .filter(|_| req.time_epoch_ms > 0)
        .unwrap_or_else(Utc::now);
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let n = millis
        .saturating_mul(10_000)
        .saturating_add(u64::try_from(index).unwrap_or(0));
    (Sequence::from(n), at)
}

fn batch_id(req: &ApiRequest) -> String {
    format!("api-{}", req.request_id)
}

/// Hands the changes to `unify` and says what became of each.
async fn publish(
    req: &ApiRequest,
    env: &ApiEnv,
    pending: &[Pending],
) -> Result<Vec<Done>, Refused> {
    let batch = ChangeBatch {
        batch_id: batch_id(req),
        changes: pending.iter().map(|p| p.change.clone()).collect(),
    };
    let runs = run_unify_chunked(&env.ingest, batch).await.map_err(|e| {
        tracing::error!(request_id = %req.request_id, error = %e, "ingest-api: unify failed");
        Refused::new(
            503,
            "transient",
            req,
            "the pipeline could not take the request; retry later".into(),
            "unify",
        )
    })?;
    let mut published: HashMap<ResourceRef, VecDeque<PublishOutcome>> = HashMap::new();
    let mut rejected: HashMap<String, Rejection> = HashMap::new();
    for run in runs {
        let output = run.output.unwrap_or(Value::Null);
        let Ok(out) = serde_json::from_value::<PublishedBatch>(strip_emitted(output)) else {
            // The batch went to quarantine whole (a step failed as a whole).
            tracing::error!(request_id = %req.request_id, execution = %run.execution, "ingest-api: batch quarantined");
            return Err(Refused::new(
                500,
                "exception",
                req,
                format!(
                    "the pipeline failed on the batch (execution {}); it is in quarantine",
                    run.execution
                ),
                "unify",
            ));
        };
        for o in out.published {
            published.entry(o.target.clone()).or_default().push_back(o);
        }
        for r in out.rejected {
            rejected.insert(r.record.clone(), r);
        }
    }
    Ok(pending
        .iter()
        .map(|p| match rejected.remove(&p.change.label()) {
            Some(r) => Done::Rejected {
                status: match r.stage {
                    Stage::Ingest => 400,
                    Stage::Transform | Stage::Validate => 422,
                    Stage::Publish => 500,
                },
                outcome: r.outcome,
            },
            None => Done::Published(
                p.targets
                    .iter()
                    .filter_map(|t| published.get_mut(t).and_then(VecDeque::pop_front))
                    .collect(),
            ),
        })
        .collect())
}

/// The workflow output without the `emitted` summary the state machine adds.
fn strip_emitted(mut output: Value) -> Value {
    if let Some(o) = output.as_object_mut() {
        o.remove("emitted");
        o.remove("emitError");
    }
    output
}

fn location(req: &ApiRequest, o: &PublishOutcome) -> Option<String> {
    o.version_id.as_ref().map(|v| {
        format!(
            "{}/{}/{}/_history/{v}",
            req.read_base_url, o.target.resource_type, o.target.id
        )
    })
}

/// A `batch-response` / `transaction-response` entry.
fn response_entry(req: &ApiRequest, done: &Done, place: &str) -> Value {
    let status = done.status();
    match done {
        Done::Rejected { outcome, .. } => json!({
            "response": {"status": status_text(status), "outcome": outcome}
        }),
        Done::Published(outcomes) => {
            let mut response = json!({"status": status_text(status)});
            if let Some(first) = outcomes.first() {
                if let Some(l) = location(req, first) {
                    response["location"] = json!(l);
                }
                if let Some(v) = &first.version_id {
                    response["etag"] = json!(etag(v));
                }
                if let Some(t) = first.last_updated {
                    response["lastModified"] =
                        json!(t.to_rfc3339_opts(SecondsFormat::Millis, true));
                }
            }
            // Every resource the record made, for records that make several.
            let mut outcome = Outcome::new();
            for o in outcomes {
                outcome.push(Issue::new(
                    Severity::Information,
                    "informational",
                    format!(
                        "{}: {} (version {})",
                        o.target,
                        action_word(o.action),
                        o.version_id.as_deref().unwrap_or("none")
                    ),
                ));
            }
            if outcomes.is_empty() {
                outcome.push(Issue::new(
                    Severity::Information,
                    "informational",
                    format!("{place}: the mapping made no resource from this record"),
                ));
            }
            response["outcome"] = outcome.to_fhir();
            json!({ "response": response })
        }
    }
}

fn action_word(a: PublishAction) -> &'static str {
    match a {
        PublishAction::Created => "created",
        PublishAction::Updated => "updated",
        PublishAction::Deleted => "deleted",
        PublishAction::Unchanged => "unchanged",
        PublishAction::Stale => "stale: a newer change was already applied",
    }
}

fn response_bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": kind,
        "entry": entries,
    })
}

/// `POST <path>/<entity>`: the source's own records.
async fn records(
    req: &ApiRequest,
    env: &ApiEnv,
    source: &SourceConfig,
    entity: &str,
    body: Value,
) -> Result<ApiResponse, Refused> {
    let (items, single) = match body {
        Value::Array(items) => (items, false),
        other => (vec![other], true),
    };
    if items.len() > MAX_RECORDS {
        return Err(Refused::new(
            413,
            "too-costly",
            req,
            format!("{} records; at most {MAX_RECORDS} a request", items.len()),
            "body",
        ));
    }
    if items.is_empty() {
        return Err(Refused::new(
            400,
            "required",
            req,
            "the array holds no record".into(),
            "body",
        ));
    }
    let key_names = source
        .entities
        .get(entity)
        .map(|e| e.key.clone())
        .unwrap_or_default();
    let mapping = env.mappings.get(&source.name, entity);
    let mut results: Vec<Option<Done>> = vec![None; items.len()];
    let mut pending = Vec::new();
    let mut slots = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let place = if single {
            "body".to_owned()
        } else {
            format!("body[{i}]")
        };
        match record_key(&item, &key_names) {
            Err(why) => {
                let status = if item.is_object() { 422 } else { 400 };
                let code = if item.is_object() {
                    "required"
                } else {
                    "structure"
                };
                results[i] = Some(Done::Rejected {
                    status,
                    outcome: Outcome::from(
                        Issue::error(code, format!("request {}: {place}: {why}", req.request_id))
                            .at(place.clone()),
                    )
                    .to_fhir(),
                });
            }
            Ok(key) => {
                let (sequence, observed_at) = sequence(req, i);
                let targets = mapping.map(|m| m.targets(&key)).unwrap_or_default();
                pending.push(Pending {
                    change: SourceChange {
                        source: source.name.clone(),
                        entity: entity.to_owned(),
                        key,
                        op: Op::Upsert,
                        sequence,
                        observed_at,
                        data: item.into(),
                    },
                    targets,
                    place,
                });
                slots.push(i);
            }
        }
    }
    if !pending.is_empty() {
        let done = publish(req, env, &pending).await?;
        for (slot, d) in slots.into_iter().zip(done) {
            results[slot] = Some(d);
        }
    }
    let results: Vec<Done> = results.into_iter().flatten().collect();
    if single && let Some(done) = results.first() {
        return Ok(match done {
            Done::Rejected { status, outcome } => ApiResponse::json(*status, outcome.clone()),
            Done::Published(outcomes) => {
                let mut r = ApiResponse::json(
                    done.status(),
                    response_bundle("batch-response", vec![response_entry(req, done, "body")]),
                );
                if let [only] = outcomes.as_slice() {
                    r = with_version_headers(r, req, only);
                }
                r
            }
        });
    }
    let entries = results
        .iter()
        .enumerate()
        .map(|(i, d)| response_entry(req, d, &format!("body[{i}]")))
        .collect();
    Ok(ApiResponse::json(
        200,
        response_bundle("batch-response", entries),
    ))
}

fn with_version_headers(mut r: ApiResponse, req: &ApiRequest, o: &PublishOutcome) -> ApiResponse {
    if let Some(l) = location(req, o) {
        r = r.header("location", l);
    }
    if let Some(v) = &o.version_id {
        r = r.header("etag", etag(v));
    }
    if let Some(t) = o.last_updated {
        r = r.header("last-modified", http_date(t));
    }
    r
}

/// The key of a source record: its key attributes, each present and a string, number or bool.
fn record_key(item: &Value, names: &[String]) -> Result<RecordKey, String> {
    let Some(obj) = item.as_object() else {
        return Err("a record must be a JSON object".into());
    };
    let mut key = BTreeMap::new();
    for name in names {
        match obj.get(name) {
            None | Some(Value::Null) => return Err(format!("key attribute {name:?} is missing")),
            Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
                if v.as_str().is_some_and(|s| s.trim().is_empty()) {
                    return Err(format!("key attribute {name:?} is blank"));
                }
                key.insert(name.clone(), v.clone());
            }
            Some(_) => {
                return Err(format!(
                    "key attribute {name:?} must be a string, number or boolean"
                ));
            }
        }
    }
    Ok(RecordKey(key))
}

/// A FHIR write ready for `unify`, or why not.
struct FhirWrite {
    resource_type: String,
    key: RecordKey,
    resource: Value,
}

/// Checks a resource and finds its key: `PUT` by the path id, a create by identifier or by the
/// request. `place` names it in errors.
fn fhir_write(
    req: &ApiRequest,
    index: usize,
    resource: Value,
    url_type: &str,
    url_id: Option<&str>,
    place: &str,
) -> Result<FhirWrite, (u16, Outcome)> {
    let fail = |status: u16, code: &str, what: String, at: String| {
        (
            status,
            Outcome::from(Issue::error(code, format!("request {}: {what}", req.request_id)).at(at)),
        )
    };
    let Value::Object(mut map) = resource else {
        return Err(fail(
            400,
            "structure",
            "not a FHIR resource (not a JSON object)".into(),
            place.to_owned(),
        ));
    };
    let Some(rt) = map.get("resourceType").and_then(Value::as_str) else {
        return Err(fail(
            400,
            "structure",
            "not a FHIR resource (no resourceType)".into(),
            format!("{place}.resourceType"),
        ));
    };
    if rt != url_type {
        return Err(fail(
            400,
            "invalid",
            format!("resourceType {rt:?} does not match the URL's type {url_type:?}"),
            format!("{place}.resourceType"),
        ));
    }
    let key = match url_id {
        Some(id) => {
            match map.get("id").and_then(Value::as_str) {
                Some(body_id) if body_id == id => {}
                Some(_) => {
                    return Err(fail(
                        400,
                        "invalid",
                        "the resource's id differs from the id in the URL".into(),
                        format!("{place}.id"),
                    ));
                }
                None => {
                    return Err(fail(
                        400,
                        "required",
                        "an update needs the resource's id, equal to the id in the URL".into(),
                        format!("{place}.id"),
                    ));
                }
            }
            RecordKey::from_pairs([("id", json!(id))])
        }
        None => match first_identifier(&map) {
            Some(i) => RecordKey::from_pairs([("identifier", json!(i))]),
            None => {
                RecordKey::from_pairs([("request", json!(format!("{}#{index}", req.request_id)))])
            }
        },
    };
    // The store sets versions and times; the client's are not kept.
    if let Some(Value::Object(meta)) = map.get_mut("meta") {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            map.remove("meta");
        }
    }
    Ok(FhirWrite {
        resource_type: url_type.to_owned(),
        key,
        resource: Value::Object(map),
    })
}

/// `system|value` of the first identifier that has both.
fn first_identifier(map: &serde_json::Map<String, Value>) -> Option<String> {
    map.get("identifier")?.as_array()?.iter().find_map(|i| {
        let system = i.get("system")?.as_str()?;
        let value = i.get("value")?.as_str()?;
        Some(format!("{system}|{value}"))
    })
}

/// The pipeline's id for a FHIR resource of an API source.
fn pipeline_id(env: &ApiEnv, source: &str, resource_type: &str, key: &RecordKey) -> Option<String> {
    env.mappings
        .get(source, &api_fhir_entity(resource_type))?
        .targets(key)
        .into_iter()
        .next()
        .map(|t| t.id)
}

/// Rewrites references to resources of the source's FHIR types (`Type/id`, the client's ids)
/// and to Bundle entries (`fullUrl`) into the pipeline's ids.
fn rewrite_references(
    value: &mut Value,
    env: &ApiEnv,
    source: &SourceConfig,
    full_urls: &HashMap<String, String>,
) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == "reference"
                    && let Value::String(r) = v
                {
                    if let Some(new) = full_urls.get(r.as_str()) {
                        *r = new.clone();
                    } else if let Some((t, id)) = r.split_once('/')
                        && is_fhir_id(id)
                        && source
                            .api
                            .as_ref()
                            .is_some_and(|a| a.fhir.iter().any(|f| f == t))
                        && let Some(new) = pipeline_id(
                            env,
                            &source.name,
                            t,
                            &RecordKey::from_pairs([("id", json!(id))]),
                        )
                    {
                        *r = format!("{t}/{new}");
                    }
                } else {
                    rewrite_references(v, env, source, full_urls);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                rewrite_references(v, env, source, full_urls);
            }
        }
        _ => {}
    }
}

fn pending_of(
    req: &ApiRequest,
    env: &ApiEnv,
    source: &SourceConfig,
    index: usize,
    write: FhirWrite,
    full_urls: &HashMap<String, String>,
    place: String,
) -> Pending {
    let entity = api_fhir_entity(&write.resource_type);
    let mut resource = write.resource;
    rewrite_references(&mut resource, env, source, full_urls);
    let targets = env
        .mappings
        .get(&source.name, &entity)
        .map(|m| m.targets(&write.key))
        .unwrap_or_default();
    let (sequence, observed_at) = sequence(req, index);
    Pending {
        change: SourceChange {
            source: source.name.clone(),
            entity,
            key: write.key,
            op: Op::Upsert,
            sequence,
            observed_at,
            data: resource.into(),
        },
        targets,
        place,
    }
}

/// `POST <path>/fhir/<Type>` and `PUT <path>/fhir/<Type>/<id>`.
async fn single(
    req: &ApiRequest,
    env: &ApiEnv,
    source: &SourceConfig,
    resource_type: &str,
    id: Option<&str>,
    body: Value,
) -> Result<ApiResponse, Refused> {
    let write = fhir_write(req, 0, body, resource_type, id, resource_type)
        .map_err(|(status, outcome)| Refused { status, outcome })?;
    let pending = vec![pending_of(
        req,
        env,
        source,
        0,
        write,
        &HashMap::new(),
        "body".into(),
    )];
    let done = publish(req, env, &pending).await?;
    let Some(done) = done.into_iter().next() else {
        return Err(Refused::new(
            500,
            "exception",
            req,
            "no result".into(),
            "unify",
        ));
    };
    match &done {
        Done::Rejected { status, outcome } => Ok(ApiResponse::json(*status, outcome.clone())),
        Done::Published(outcomes) => {
            let status = done.status();
            let Some(first) = outcomes.first() else {
                return Err(Refused::new(
                    500,
                    "exception",
                    req,
                    "the resource was not published".into(),
                    "unify",
                ));
            };
            // The answer is the resource as stored (FHIR's default `return=representation`).
            let body = match env.store.read(&first.target).await {
                Ok(Some(v)) => v
                    .resource
                    .unwrap_or_else(|| response_entry(req, &done, "body")),
                _ => response_bundle("batch-response", vec![response_entry(req, &done, "body")]),
            };
            Ok(with_version_headers(
                ApiResponse::json(status, body),
                req,
                first,
            ))
        }
    }
}

/// `DELETE`: the resources of the first of `keys` the store holds a current version of are
/// deleted through `unify`; none is 404.
async fn delete(
    req: &ApiRequest,
    env: &ApiEnv,
    source: &SourceConfig,
    entity: &str,
    keys: &[RecordKey],
) -> Result<ApiResponse, Refused> {
    let Some(mapping) = env.mappings.get(&source.name, entity) else {
        return Err(Refused::new(
            404,
            "not-found",
            req,
            format!("source {:?} has no mapping for {entity:?}", source.name),
            "path",
        ));
    };
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(request_id = %req.request_id, error = %e, "ingest-api: store read failed");
        Refused::new(
            503,
            "transient",
            req,
            "the store could not be read; retry later".into(),
            "store",
        )
    };
    let mut found = None;
    'keys: for key in keys {
        let targets = mapping.targets(key);
        for t in &targets {
            if env
                .store
                .read(t)
                .await
                .map_err(unavailable)?
                .is_some_and(|v| !v.deleted)
            {
                found = Some((key.clone(), targets));
                break 'keys;
            }
        }
    }
    let Some((key, targets)) = found else {
        return Err(Refused::new(
            404,
            "not-found",
            req,
            format!(
                "no current resource of {}/{entity} at this path",
                source.name
            ),
            "path",
        ));
    };
    let (sequence, observed_at) = sequence(req, 0);
    let pending = vec![Pending {
        change: SourceChange {
            source: source.name.clone(),
            entity: entity.to_owned(),
            key,
            op: Op::Delete,
            sequence,
            observed_at,
            data: Value::Null.into(),
        },
        targets,
        place: "path".into(),
    }];
    let done = publish(req, env, &pending).await?;
    match done.into_iter().next() {
        Some(Done::Rejected { status, outcome }) => Ok(ApiResponse::json(status, outcome)),
        Some(done @ Done::Published(_)) => {
            let status = done.status();
            let Done::Published(outcomes) = done else {
                return Err(Refused::new(
                    500,
                    "exception",
                    req,
                    "no result".into(),
                    "unify",
                ));
            };
            let deleted: Vec<String> = outcomes
                .iter()
                .filter(|o| o.action == PublishAction::Deleted)
                .map(|o| o.target.to_string())
                .collect();
            let text = if deleted.is_empty() {
                format!(
                    "request {}: nothing deleted (a later change was already applied)",
                    req.request_id
                )
            } else {
                format!("request {}: deleted {}", req.request_id, deleted.join(", "))
            };
            let outcome =
                Outcome::from(Issue::new(Severity::Information, "informational", text)).to_fhir();
            Ok(ApiResponse::json(status, outcome))
        }
        None => Err(Refused::new(
            500,
            "exception",
            req,
            "no result".into(),
            "unify",
        )),
    }
}

/// `POST <path>/fhir`: a batch or transaction Bundle.
async fn bundle(
    req: &ApiRequest,
    env: &ApiEnv,
    source: &SourceConfig,
    body: Value,
) -> Result<ApiResponse, Refused> {
    let bad =
        |status: u16, code: &str, what: String, at: &str| Refused::new(status, code, req, what, at);
    if body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(bad(
            400,
            "structure",
            "the FHIR base takes a Bundle (resourceType Bundle)".into(),
            "Bundle.resourceType",
        ));
    }
    let transaction = match body.get("type").and_then(Value::as_str) {
        Some("transaction") => true,
        Some("batch") => false,
        _ => {
            return Err(bad(
                400,
                "invalid",
                "the Bundle's type must be batch or transaction".into(),
                "Bundle.type",
            ));
        }
    };
    let entries = match body.get("entry") {
        None => Vec::new(),
        Some(Value::Array(e)) => e.clone(),
        Some(_) => {
            return Err(bad(
                400,
                "structure",
                "Bundle.entry must be an array".into(),
                "Bundle.entry",
            ));
        }
    };
    if entries.len() > MAX_RECORDS {
        return Err(bad(
            413,
            "too-costly",
            format!("{} entries; at most {MAX_RECORDS} a request", entries.len()),
            "Bundle.entry",
        ));
    }
    let kind = if transaction {
        "transaction-response"
    } else {
        "batch-response"
    };
    let grant = req.grant.clone().unwrap_or_default();
    // First pass: every entry's method, URL, type, grant and key.
    let mut checked: Vec<CheckedEntry> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let place = format!("Bundle.entry[{i}]");
        checked.push(bundle_entry(req, source, &grant, i, entry, &place));
    }
    if transaction
        && let Some((i, (status, outcome))) = checked
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.as_ref().err().map(|e| (i, e)))
    {
        tracing::info!(request_id = %req.request_id, entry = i, "ingest-api: transaction refused");
        return Ok(ApiResponse::json(*status, outcome.to_fhir()));
    }
    // fullUrls of entries → the ids the pipeline gives them, for references between entries.
    let mut full_urls = HashMap::new();
    for c in checked.iter().flatten() {
        let (write, full_url) = c;
        if let Some(u) = full_url
            && let Some(id) = pipeline_id(env, &source.name, &write.resource_type, &write.key)
        {
            full_urls.insert(u.clone(), format!("{}/{id}", write.resource_type));
        }
    }
    let mut results: Vec<Option<Done>> = vec![None; checked.len()];
    let mut pending = Vec::new();
    let mut slots = Vec::new();
    for (i, c) in checked.into_iter().enumerate() {
        match c {
            Err((status, outcome)) => {
                results[i] = Some(Done::Rejected {
                    status,
                    outcome: outcome.to_fhir(),
                });
            }
            Ok((write, _)) => {
                pending.push(pending_of(
                    req,
                    env,
                    source,
                    i,
                    write,
                    &full_urls,
                    format!("Bundle.entry[{i}]"),
                ));
                slots.push(i);
            }
        }
    }
    if transaction && let Some(refused) = preflight(req, env, &pending) {
        return Ok(refused.response());
    }
    if !pending.is_empty() {
        let done = publish(req, env, &pending).await?;
        if transaction
            && let Some(p) = done
                .iter()
                .zip(&pending)
                .find(|(d, _)| matches!(d, Done::Rejected { .. }))
        {
            // Mapped and validated beforehand: only the store can refuse now.
            tracing::error!(request_id = %req.request_id, "ingest-api: transaction partly written");
            return Err(Refused::new(
                500,
                "exception",
                req,
                format!(
                    "{}: the store refused an entry after the transaction was checked; entries before it may be written",
                    p.1.place
                ),
                &p.1.place,
            ));
        }
        for (slot, d) in slots.into_iter().zip(done) {
            results[slot] = Some(d);
        }
    }
    let entries = results
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            d.as_ref()
                .map(|d| response_entry(req, d, &format!("Bundle.entry[{i}]")))
        })
        .collect();
    Ok(ApiResponse::json(200, response_bundle(kind, entries)))
}

/// A Bundle entry checked: the write and its `fullUrl`, or the status and outcome refusing it.
type CheckedEntry = Result<(FhirWrite, Option<String>), (u16, Outcome)>;

/// One Bundle entry: its request (POST `Type` or PUT `Type/id`), the type accepted and granted,
/// and its resource. Returns the write and the entry's `fullUrl`.
fn bundle_entry(
    req: &ApiRequest,
    source: &SourceConfig,
    grant: &AccessGrant,
    index: usize,
    entry: &Value,
    place: &str,
) -> CheckedEntry {
    let fail = |status: u16, code: &str, what: String, at: String| {
        (
            status,
            Outcome::from(Issue::error(code, format!("request {}: {what}", req.request_id)).at(at)),
        )
    };
    let method = entry
        .pointer("/request/method")
        .and_then(Value::as_str)
        .unwrap_or("");
    let url = entry
        .pointer("/request/url")
        .and_then(Value::as_str)
        .unwrap_or("");
    let url = url.split('?').next().unwrap_or("");
    let parts: Vec<&str> = url.split('/').filter(|s| !s.is_empty()).collect();
    let (resource_type, id) = match (method, parts.as_slice()) {
        ("POST", [t]) => (*t, None),
        ("PUT", [t, id]) => (*t, Some(*id)),
        ("POST" | "PUT", _) => {
            return Err(fail(
                400,
                "invalid",
                format!("request.url {url:?} does not fit {method} (POST Type, PUT Type/id)"),
                format!("{place}.request.url"),
            ));
        }
        _ => {
            return Err(fail(
                405,
                "not-supported",
                format!("request.method {method:?} is not supported (POST, PUT)"),
                format!("{place}.request.method"),
            ));
        }
    };
    if let Some(id) = id
        && !is_fhir_id(id)
    {
        return Err(fail(
            400,
            "invalid",
            "the id in request.url is not a FHIR id".into(),
            format!("{place}.request.url"),
        ));
    }
    if !source
        .api
        .as_ref()
        .is_some_and(|a| a.fhir.iter().any(|f| f == resource_type))
    {
        return Err(fail(
            404,
            "not-found",
            format!(
                "source {:?} does not accept FHIR {resource_type} resources",
                source.name
            ),
            format!("{place}.request.url"),
        ));
    }
    if !grant.may_write(resource_type) {
        return Err(fail(
            403,
            "forbidden",
            format!(
                "partner {:?} may not write {resource_type} resources",
                grant.partner
            ),
            format!("{place}.request.url"),
        ));
    }
    let Some(resource) = entry.get("resource") else {
        return Err(fail(
            400,
            "required",
            "the entry has no resource".into(),
            format!("{place}.resource"),
        ));
    };
    let write = fhir_write(
        req,
        index,
        resource.clone(),
        resource_type,
        id,
        &format!("{place}.resource"),
    )?;
    let full_url = entry
        .get("fullUrl")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((write, full_url))
}

/// Maps and validates every change of a transaction as `unify` will: the first failure
/// refuses the whole transaction (422) before anything is written.
fn preflight(req: &ApiRequest, env: &ApiEnv, pending: &[Pending]) -> Option<Refused> {
    let validator = match env.validator.get() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "ingest-api: validator cannot be loaded");
            return Some(Refused::new(
                500,
                "exception",
                req,
                "the validator cannot be loaded".into(),
                "validate",
            ));
        }
    };
    let mut seen = HashSet::new();
    for p in pending {
        let resources = match env.mappings.apply(&p.change) {
            Ok(r) => r,
            Err(outcome) => return Some(prefixed(req, &p.place, outcome)),
        };
        for rc in &resources {
            if !seen.insert(rc.target.clone()) {
                return Some(Refused::new(
                    400,
                    "duplicate",
                    req,
                    format!(
                        "{}: {} is written twice in one transaction",
                        p.place, rc.target
                    ),
                    &p.place,
                ));
            }
            if let ResourceOp::Upsert { resource } = &rc.op {
                let outcome = validator.validate(resource);
                if outcome.has_errors() {
                    return Some(prefixed(req, &p.place, outcome));
                }
            }
        }
    }
    None
}

fn prefixed(req: &ApiRequest, place: &str, mut outcome: Outcome) -> Refused {
    for issue in &mut outcome.issues {
        issue.diagnostics = format!("request {}: {place}: {}", req.request_id, issue.diagnostics);
        issue.expression.push(place.to_owned());
    }
    Refused {
        status: 422,
        outcome,
    }
}

/// One request of a local requests file (`api.local_requests`): what `fhir-unify run` posts
/// through `ingest-api` for an API source, as its partner would.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalRequest {
    pub method: String,
    /// The request path, e.g. `/ingest/partner/fhir/Patient`.
    pub path: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// The body, as JSON.
    pub body: Value,
}

fn default_content_type() -> String {
    FHIR_JSON.to_owned()
}

/// What a local requests file did: one status per request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalRequestsReport {
    pub requests: usize,
    /// Requests answered with a 2xx status.
    pub accepted: usize,
    /// The statuses, in order, per file.
    pub statuses: Vec<(String, u16)>,
}

/// Posts every API source's `local_requests` file through `ingest-api`, granted to write the
/// source's types (the local run is the partner), and adds the `unify` runs to `summary`.
pub async fn run_local_requests(
    runtime: &crate::local::LocalRuntime,
    summary: &mut crate::local::RunSummary,
) -> Result<LocalRequestsReport, crate::local::LocalError> {
    let env = ApiEnv::from_runtime(runtime);
    let mut report = LocalRequestsReport::default();
    // Runs logged so far were counted by the caller.
    let _ = runtime.workflow.take_runs();
    for source in &runtime.config.sources {
        let Some(api) = &source.api else { continue };
        let Some(file) = &api.local_requests else {
            continue;
        };
        let path = runtime.config.resolve(file);
        let err = |message: String| crate::local::LocalError::Input {
            file: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let requests: Vec<LocalRequest> = serde_json::from_str(&text)
            .map_err(|e| err(format!("not a JSON array of requests: {e}")))?;
        let mut write: std::collections::BTreeSet<String> = api.fhir.iter().cloned().collect();
        for entity in source.entities.keys() {
            if let Some(m) = env.mappings.get(&source.name, entity) {
                write.extend(
                    m.targets(&RecordKey::default())
                        .into_iter()
                        .map(|t| t.resource_type),
                );
            }
        }
        let grant = AccessGrant {
            partner: format!("local:{}", source.name),
            write,
            ..AccessGrant::default()
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (n, r) in requests.into_iter().enumerate() {
            let req = ApiRequest {
                method: r.method.to_ascii_uppercase(),
                path: r.path,
                content_type: Some(r.content_type),
                body: Some(r.body.to_string()),
                is_base64_encoded: false,
                request_id: format!("local-{stem}-{}", n + 1),
                time_epoch_ms: Utc::now().timestamp_millis(),
                read_base_url: "http://localhost".into(),
                grant: Some(grant.clone()),
            };
            let response = ingest(&req, &env).await;
            report.requests += 1;
            if (200..300).contains(&response.status) {
                report.accepted += 1;
            }
            report
                .statuses
                .push((format!("{} {}", req.method, req.path), response.status));
            summary.records_in +=
                match serde_json::from_str::<Value>(req.body.as_deref().unwrap_or("")) {
                    Ok(Value::Array(a)) => a.len(),
                    Ok(v) if v.get("resourceType").and_then(Value::as_str) == Some("Bundle") => {
                        v.get("entry").and_then(Value::as_array).map_or(0, Vec::len)
                    }
                    _ => 1,
                };
        }
    }
    for run in runtime.workflow.take_runs() {
        summary.add_run(&run);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_need_every_attribute_as_a_scalar() {
        let names = vec!["id".to_owned(), "site".to_owned()];
        let k = record_key(&json!({"id": 1, "site": "a", "x": [1]}), &names).unwrap();
        assert_eq!(k.canonical(), r#"{"id":1,"site":"a"}"#);
        assert!(
            record_key(&json!({"id": 1}), &names)
                .unwrap_err()
                .contains("\"site\" is missing")
        );
        assert!(
            record_key(&json!({"id": 1, "site": {"a": 1}}), &names)
                .unwrap_err()
                .contains("string, number or boolean")
        );
        assert!(
            record_key(&json!({"id": 1, "site": " "}), &names)
                .unwrap_err()
                .contains("blank")
        );
        assert!(record_key(&json!([1]), &names).is_err());
    }

    #[test]
    fn sequences_order_requests_then_entries() {
        let req = |t| ApiRequest {
            time_epoch_ms: t,
            ..ApiRequest::default()
        };
        let (a, at) = sequence(&req(1_700_000_000_000), 5);
        let (b, _) = sequence(&req(1_700_000_000_001), 0);
        assert!(a < b);
        assert_eq!(at.timestamp_millis(), 1_700_000_000_000);
        assert!(sequence(&req(1), 0).0 < sequence(&req(1), 1).0);
    }

    #[test]
    fn fhir_ids() {
        assert!(is_fhir_id("a-1.B"));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a_b"));
        assert!(!is_fhir_id(&"a".repeat(65)));
    }
}
