//! The local FHIR API server (`fhir-unify serve`): an HTTP server (axum) that does what API
//! Gateway does on AWS. Each HTTP request becomes the same HTTP API (payload 2.0) event API
//! Gateway would send; the authorizer handler runs on it (except for `/metadata`, which
//! answers without a token, as FHIR servers do), its context is put where API Gateway puts
//! it (`requestContext.authorizer.lambda`), and the gateway handler answers.
//!
//! As API Gateway does, the authorizer's answer is cached per `Authorization` header (and
//! route) for [`ServeOptions::authorizer_cache_ttl`] (`--authorizer-cache-ttl`, default 300 s,
//! 0 disables), never past the token's `exp`: see [`super::authcache`].
//!
//! Refusals before the gateway are OperationOutcomes too: 401 without a token (with
//! `WWW-Authenticate: Bearer`), 403 when the authorizer denies.
//!
//! Behind the same authorizer:
//! - `/ingest/…` goes to `ingest-api` (the request body in the event, as API Gateway puts it:
//!   text, or base64 with `isBase64Encoded` when it is not UTF-8), which checks the grant's
//!   write types;
//! - with [`Gateway::allow_writes`], the gateway's write interactions (`PUT`/`DELETE Type/id`,
//!   transaction Bundles at the base) get the request body the same way;
//! - `GET /events/stream?stream=NAME` is a Server-Sent Events stream of the change events a
//!   bus rule sends to the `sse: { stream: NAME }` target, limited to the resource types the
//!   caller may read. Events are read from the bus archive (so `Last-Event-ID` resumes where
//!   a client left off, and events committed by other processes arrive too); the bus's live
//!   channel ([`crate::events::bus::LocalBus::subscribe`]) wakes the stream as soon as one is
//!   committed here, and the archive is polled every [`SSE_POLL`] for the others.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizer, ApiGatewayV2CustomAuthorizerV2Request, ApiGatewayV2httpRequest,
    ApiGatewayV2httpRequestContext, ApiGatewayV2httpRequestContextHttpDescription,
    ApiGatewayV2httpResponse,
};
use aws_lambda_events::encodings::Body as EventBody;
use aws_lambda_events::http::{HeaderValue, StatusCode};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use super::auth::{AccessGrant, Authorizer};
use super::authcache::{self, AuthorizerCache, CachedAnswer};
use super::{Gateway, Refusal};
use crate::events::EventBus;
use crate::handlers::authorizer::authorize_http_cacheable;
use crate::handlers::gateway::{handle_v2, parse_query, refusal_v2};
use crate::handlers::ingest_api::{self, ApiEnv, MAX_BODY_BYTES};

/// What the server runs: the gateway, the authorizer and `ingest-api`, as the Lambdas would,
/// and the event bus whose SSE streams it serves.
#[derive(Debug, Clone)]
pub struct LocalApi {
    pub gateway: Gateway,
    pub authorizer: Authorizer,
    /// `ingest-api` (`None`: the pipeline has no API source; `/ingest` answers 404).
    pub ingest: Option<ApiEnv>,
    /// The local bus (`None`: no SSE streams).
    pub events: Option<Arc<dyn EventBus>>,
}

/// How often an SSE stream looks in the archive for events committed by other processes.
pub const SSE_POLL: Duration = Duration::from_millis(500);

/// The most events an SSE stream sends from the archive in one go.
const SSE_PAGE: usize = 500;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// How the server runs: what API Gateway would have configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// The authorizer result cache TTL (API Gateway's `authorizerResultTtlInSeconds`;
    /// zero disables the cache): see [`super::authcache`].
    pub authorizer_cache_ttl: Duration,
    /// The most authorizer answers cached.
    pub authorizer_cache_capacity: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            authorizer_cache_ttl: authcache::DEFAULT_TTL,
            authorizer_cache_capacity: authcache::DEFAULT_CAPACITY,
        }
    }
}

/// The server's state: the API and the authorizer cache in front of its authorizer.
struct ServerState {
    api: LocalApi,
    auth_cache: Arc<AuthorizerCache>,
}

/// The router with the default [`ServeOptions`]: every path goes through [`answer`].
pub fn router(api: LocalApi) -> Router {
    router_with(api, ServeOptions::default())
}

/// The router with the caller's options.
pub fn router_with(api: LocalApi, options: ServeOptions) -> Router {
    let cache = AuthorizerCache::new(
        options.authorizer_cache_ttl,
        options.authorizer_cache_capacity,
    );
    router_with_cache(api, Arc::new(cache))
}

/// The router with an authorizer cache of the caller's (which can then look at its stats).
pub fn router_with_cache(api: LocalApi, auth_cache: Arc<AuthorizerCache>) -> Router {
    let state = ServerState { api, auth_cache };
    Router::new().fallback(answer).with_state(Arc::new(state))
}

/// Binds `addr` (port 0 picks a free one) and returns the listener and its real address.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { addr, source })?;
    Ok((listener, local))
}

/// Serves until the process ends, with the default [`ServeOptions`].
pub async fn serve(listener: TcpListener, api: LocalApi) -> Result<(), ServeError> {
    serve_with(listener, api, ServeOptions::default()).await
}

/// Serves until the process ends.
pub async fn serve_with(
    listener: TcpListener,
    api: LocalApi,
    options: ServeOptions,
) -> Result<(), ServeError> {
    axum::serve(listener, router_with(api, options)).await?;
    Ok(())
}

async fn answer(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    let api = &state.api;
    let (parts, body) = request.into_parts();
    let mut event = event_of(&parts);
    let path = event.raw_path.clone().unwrap_or_default();
    let mut grant = None;
    if path.trim_matches('/') != "metadata" {
        // API Gateway's cache key: the identity source (the Authorization header) and the
        // route.
        let identity = event
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let route = event.route_key.as_deref().unwrap_or("$default");
        let decision = state.auth_cache.answer(route, identity, || {
            let auth_event = authorizer_event(&event);
            let (response, cacheable) = authorize_http_cacheable(&auth_event, &api.authorizer);
            let context: std::collections::HashMap<String, serde_json::Value> =
                match response.context {
                    serde_json::Value::Object(context) => context.into_iter().collect(),
                    _ => Default::default(),
                };
            let grant = AccessGrant::from_context(&context);
            let answer = CachedAnswer {
                is_authorized: response.is_authorized,
                context,
                grant,
            };
            (answer, cacheable)
        });
        if !decision.is_authorized {
            let has_token = event.headers.contains_key("authorization");
            let mut response = if has_token {
                refusal_v2(Refusal::new(403, "forbidden", "access denied"))
            } else {
                refusal_v2(Refusal::new(
                    401,
                    "login",
                    "no bearer token (Authorization: Bearer <JWT>)",
                ))
            };
            if !has_token {
                response
                    .headers
                    .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            return http_response(response);
        }
        let mut authorizer = ApiGatewayRequestAuthorizer::default();
        authorizer.fields = decision.context.clone();
        grant = decision.grant.clone();
        event.request_context.authorizer = Some(authorizer);
    }
    if path == "/ingest" || path.starts_with("/ingest/") {
        return ingest(api, event, body).await;
    }
    if path == "/events/stream" {
        return events_stream(api, &event, grant);
    }
    // Writes (when the gateway allows them) carry a body.
    if let Err(refused) = put_body(&mut event, body).await {
        return refused;
    }
    http_response(handle_v2(&event, &api.gateway).await)
}

/// `/ingest/…`: the body into the event, then `ingest-api`.
/// The request body into the event, as API Gateway puts it: text, or base64 with
/// `isBase64Encoded` when it is not UTF-8. A body over [`MAX_BODY_BYTES`] is refused (413).
async fn put_body(event: &mut ApiGatewayV2httpRequest, body: Body) -> Result<(), Response> {
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES + 1).await {
        Ok(b) => b,
        Err(_) => {
            return Err(http_response(refusal_v2(Refusal::new(
                413,
                "too-costly",
                format!(
                    "request {}: the body is larger than {MAX_BODY_BYTES} bytes",
                    event.request_context.request_id.as_deref().unwrap_or("")
                ),
            ))));
        }
    };
    if !bytes.is_empty() {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => event.body = Some(text),
            Err(_) => {
                // API Gateway's way with a body that is not text.
                event.body = Some(base64::engine::general_purpose::STANDARD.encode(&bytes));
                event.is_base64_encoded = true;
            }
        }
    }
    Ok(())
}

async fn ingest(api: &LocalApi, mut event: ApiGatewayV2httpRequest, body: Body) -> Response {
    let Some(env) = &api.ingest else {
        return http_response(refusal_v2(Refusal::new(
            404,
            "not-found",
            "this pipeline has no API source (`api:` in the pipeline file)",
        )));
    };
    if let Err(refused) = put_body(&mut event, body).await {
        return refused;
    }
    let response = ingest_api::handle_v2(&event, env).await;
    http_response(response)
}

/// `GET /events/stream?stream=NAME`: Server-Sent Events (see the module comment).
fn events_stream(
    api: &LocalApi,
    event: &ApiGatewayV2httpRequest,
    grant: Option<AccessGrant>,
) -> Response {
    let refuse = |status: u16, code: &str, why: String| {
        http_response(refusal_v2(Refusal::new(status, code, why)))
    };
    if event.request_context.http.method != aws_lambda_events::http::Method::GET {
        return refuse(405, "not-supported", "the event stream takes GET".into());
    }
    let Some(grant) = grant.filter(|g| !g.read.is_empty()) else {
        return refuse(
            403,
            "forbidden",
            "the event stream needs a grant to read at least one type".into(),
        );
    };
    let query = parse_query(event.raw_query_string.as_deref().unwrap_or(""));
    let Some(name) = query
        .iter()
        .find(|(k, _)| k == "stream")
        .map(|(_, v)| v.clone())
    else {
        return refuse(400, "required", "name the stream: ?stream=NAME".into());
    };
    let Some(bus) = api.events.clone() else {
        return refuse(404, "not-found", "no local event bus".into());
    };
    let Some(live) = bus.as_local().and_then(|b| b.subscribe(&name)) else {
        return refuse(
            404,
            "not-found",
            format!("no rule sends events to the SSE stream {name:?}"),
        );
    };
    let last = event
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|s| !s.is_empty());
    tracing::info!(stream = %name, partner = %grant.partner, resumed = last.is_some(), "SSE stream opened");
    let state = SseState {
        bus,
        stream: name,
        grant,
        live,
        last,
        queue: VecDeque::new(),
    };
    Sse::new(futures_util::stream::unfold(state, next_event))
        .keep_alive(KeepAlive::default())
        .into_response()
}

struct SseState {
    bus: Arc<dyn EventBus>,
    stream: String,
    grant: AccessGrant,
    live: broadcast::Receiver<Arc<crate::events::targets::SseMessage>>,
    /// The id of the last event sent (or the client's `Last-Event-ID`).
    last: Option<String>,
    queue: VecDeque<crate::events::targets::SseMessage>,
}

/// The next event of a stream: from the archive, after the last one sent; waits for the live
/// channel or the poll interval when there is none. Ends the stream when the archive cannot
/// be read (the client reconnects with `Last-Event-ID`).
async fn next_event(
    mut s: SseState,
) -> Option<(Result<Event, std::convert::Infallible>, SseState)> {
    loop {
        while let Some(m) = s.queue.pop_front() {
            s.last = Some(m.id.clone());
            if !readable(&s.grant, &m.data) {
                continue;
            }
            let event = Event::default().id(m.id).data(m.data);
            return Some((Ok(event), s));
        }
        let backlog = s
            .bus
            .as_local()?
            .stream_backlog(&s.stream, s.last.as_deref(), SSE_PAGE);
        match backlog {
            Ok(page) if !page.is_empty() => {
                s.queue.extend(page);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(stream = %s.stream, error = %e, "SSE: archive unreadable; closing");
                return None;
            }
        }
        // Nothing new: wait for a live event (it is in the archive by then) or the poll.
        tokio::select! {
            r = s.live.recv() => {
                if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                    return None;
                }
            }
            () = tokio::time::sleep(SSE_POLL) => {}
        }
    }
}

/// Whether the grant may read the resource type of an event envelope.
fn readable(grant: &AccessGrant, data: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| {
            v.pointer("/detail/resourceType")
                .and_then(|t| t.as_str())
                .map(|t| grant.may_read(t))
        })
        .unwrap_or(false)
}

/// The HTTP API payload 2.0 event API Gateway would send for this request.
fn event_of(request: &Parts) -> ApiGatewayV2httpRequest {
    let uri = &request.uri;
    let mut headers = request.headers.clone();
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let now = chrono::Utc::now();
    let mut http = ApiGatewayV2httpRequestContextHttpDescription::default();
    http.method = request.method.clone();
    http.path = Some(uri.path().to_owned());
    http.protocol = Some(format!("{:?}", request.version));
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.route_key = Some("$default".to_owned());
    context.stage = Some("$default".to_owned());
    context.account_id = Some("local".to_owned());
    context.apiid = Some("local".to_owned());
    context.request_id = Some(uuid::Uuid::new_v4().to_string());
    context.domain_name = host;
    context.time_epoch = now.timestamp_millis();
    context.time = Some(now.format("%d/%b/%Y:%H:%M:%S %z").to_string());
    context.http = http;
    let mut event = ApiGatewayV2httpRequest::default();
    event.version = Some("2.0".to_owned());
    event.route_key = Some("$default".to_owned());
    event.raw_path = Some(uri.path().to_owned());
    event.raw_query_string = Some(uri.query().unwrap_or("").to_owned());
    event.headers = headers;
    event.request_context = context;
    event
}

/// The authorizer event (payload 2.0) for a request event.
fn authorizer_event(event: &ApiGatewayV2httpRequest) -> ApiGatewayV2CustomAuthorizerV2Request {
    let mut a = ApiGatewayV2CustomAuthorizerV2Request::default();
    a.version = Some("2.0".to_owned());
    a.type_ = Some("REQUEST".to_owned());
    a.route_arn = Some("arn:aws:execute-api:local:local:local/$default/$default".to_owned());
    a.identity_source = event
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| vec![v.to_owned()]);
    a.route_key = event.route_key.clone();
    a.raw_path = event.raw_path.clone();
    a.raw_query_string = event.raw_query_string.clone();
    a.headers = event.headers.clone();
    a.request_context = event.request_context.clone();
    a
}

fn http_response(r: ApiGatewayV2httpResponse) -> Response {
    let body = match r.body {
        Some(EventBody::Text(t)) => Body::from(t),
        Some(EventBody::Binary(b)) => Body::from(b),
        Some(EventBody::Empty) | None => Body::empty(),
        // `Body` is non-exhaustive.
        Some(_) => Body::empty(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = u16::try_from(r.status_code)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = r.headers;
    response
}

/// `fhir-unify serve`: the API over the pipeline's store and partners. Prints the FHIR base
/// URL on the first line of stdout (tests read the port from it), then serves.
pub async fn serve_cli(
    config: &crate::config::PipelineConfig,
    data: &crate::config::DataDir,
    listen: SocketAddr,
    options: ServeOptions,
) -> Result<(), CliError> {
    // `ingest-api` needs the embedded runtime (mappings, `unify`); a pipeline without API
    // sources serves reads only and needs no mapping files.
    let runtime = if config.sources.iter().any(|s| s.api.is_some()) {
        Some(
            crate::local::LocalRuntime::connect(config.clone(), data.clone())
                .await
                .map_err(Box::new)?,
        )
    } else {
        None
    };
    let events: Option<Arc<dyn EventBus>> = match &runtime {
        Some(r) => Some(r.env.bus.clone()),
        None => match &config.events.local {
            Some(local) => Some(Arc::new(
                crate::events::bus::LocalBus::open(local, data).map_err(Box::new)?,
            )),
            None => None,
        },
    };
    let api = LocalApi {
        gateway: Gateway::local(config, data).await?,
        authorizer: Authorizer::from_config(config)?,
        ingest: runtime.as_ref().map(ApiEnv::from_runtime),
        events,
    };
    let (listener, addr) = bind(listen).await?;
    let partners = api.authorizer.partner_names();
    // Whoever started us may stop reading stdout; the server must go on regardless.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "fhir-unify serve: FHIR base http://{addr}");
    if partners.is_empty() {
        let _ = writeln!(
            out,
            "  no partners in {}: only /metadata answers",
            config.file.display()
        );
    } else {
        let _ = writeln!(out, "  partners: {}", partners.join(", "));
    }
    let _ = out.flush();
    drop(out);
    tracing::info!(
        %addr,
        partners = partners.len(),
        authorizer_cache_ttl_secs = options.authorizer_cache_ttl.as_secs(),
        "serving the FHIR API"
    );
    serve_with(listener, api, options).await?;
    Ok(())
}

/// Errors of `fhir-unify serve`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Gateway(#[from] super::GatewayError),
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("ingest-api: {0}")]
    Runtime(#[from] Box<crate::local::LocalError>),
    #[error("event bus: {0}")]
    Bus(#[from] Box<crate::events::BusError>),
}
