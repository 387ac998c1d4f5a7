//! The local FHIR API server (`fhir-unify serve`): an HTTP server (axum) that does what API
//! Gateway does on AWS. Each HTTP request becomes the same HTTP API (payload 2.0) event API
//! Gateway would send; the authorizer handler runs on it (except for `/metadata`, which
//! answers without a token, as FHIR servers do), its context is put where API Gateway puts
//! it (`requestContext.authorizer.lambda`), and the gateway handler answers.
//!
//! Refusals before the gateway are OperationOutcomes too: 401 without a token (with
//! `WWW-Authenticate: Bearer`), 403 when the authorizer denies.

use std::net::SocketAddr;
use std::sync::Arc;

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
use axum::response::Response;
use tokio::net::TcpListener;

use super::auth::Authorizer;
use super::{Gateway, Refusal};
use crate::handlers::authorizer::authorize_http;
use crate::handlers::gateway::{handle_v2, refusal_v2};

/// What the server runs: the gateway and the authorizer, as the two Lambdas would.
#[derive(Debug, Clone)]
pub struct LocalApi {
    pub gateway: Gateway,
    pub authorizer: Authorizer,
}

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

/// The router: every path goes through [`answer`].
pub fn router(api: LocalApi) -> Router {
    Router::new().fallback(answer).with_state(Arc::new(api))
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

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, api: LocalApi) -> Result<(), ServeError> {
    axum::serve(listener, router(api)).await?;
    Ok(())
}

async fn answer(State(api): State<Arc<LocalApi>>, request: Request) -> Response {
    let mut event = event_of(&request);
    let path = event.raw_path.clone().unwrap_or_default();
    if path.trim_matches('/') != "metadata" {
        let auth_event = authorizer_event(&event);
        let decision = authorize_http(&auth_event, &api.authorizer);
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
        if let serde_json::Value::Object(context) = decision.context {
            authorizer.fields = context.into_iter().collect();
        }
        event.request_context.authorizer = Some(authorizer);
    }
    http_response(handle_v2(&event, &api.gateway).await)
}

/// The HTTP API payload 2.0 event API Gateway would send for this request.
fn event_of(request: &Request) -> ApiGatewayV2httpRequest {
    let uri = request.uri();
    let mut headers = request.headers().clone();
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let now = chrono::Utc::now();
    let mut http = ApiGatewayV2httpRequestContextHttpDescription::default();
    http.method = request.method().clone();
    http.path = Some(uri.path().to_owned());
    http.protocol = Some(format!("{:?}", request.version()));
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
) -> Result<(), CliError> {
    let api = LocalApi {
        gateway: Gateway::from_config(config, data)?,
        authorizer: Authorizer::from_config(config)?,
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
    tracing::info!(%addr, partners = partners.len(), "serving the FHIR API");
    serve(listener, api).await?;
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
}
