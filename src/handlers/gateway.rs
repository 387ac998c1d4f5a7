//! `gateway`: the partner FHIR API behind API Gateway. Takes proxy events of both payload
//! versions — REST APIs (v1, [`ApiGatewayProxyRequest`]) and HTTP APIs (v2,
//! [`ApiGatewayV2httpRequest`]) — turns each into a [`FhirRequest`] and answers with
//! [`Gateway::handle`]'s response in the same version's shape.
//!
//! The FHIR path is the `{proxy+}` path parameter when the route has one, else the request
//! path (without the stage for v2). The base URL of links is the client's: scheme from
//! `X-Forwarded-Proto` (default https), host from `Host` (or the request context's domain),
//! and whatever path came before the FHIR path. The authorizer's grant comes from the
//! request context (v1: flattened into `authorizer`; v2: `authorizer.lambda`).

use std::collections::HashMap;

use aws_lambda_events::apigw::{
    ApiGatewayProxyRequest, ApiGatewayProxyResponse, ApiGatewayV2httpRequest,
    ApiGatewayV2httpResponse,
};
use aws_lambda_events::encodings::Body;
use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::gateway::{AccessGrant, FhirRequest, FhirResponse, Gateway, Refusal, WriteParts};

use super::HandlerError;
use super::apigw::{header, header_map, scheme};

/// Answers a REST API (payload v1) proxy event.
pub async fn handle_v1(
    event: &ApiGatewayProxyRequest,
    gateway: &Gateway,
) -> ApiGatewayProxyResponse {
    let body = body_text(event.body.as_deref(), event.is_base64_encoded);
    let parts = WriteParts {
        body: body.as_deref(),
        if_match: header(&event.headers, "if-match"),
    };
    let response = gateway.handle_write(&request_v1(event), parts).await;
    let mut out = ApiGatewayProxyResponse::default();
    out.status_code = i64::from(response.status);
    out.headers = header_map(&response.headers);
    out.body = response.body.map(Body::Text);
    out
}

/// Answers an HTTP API (payload v2) proxy event.
pub async fn handle_v2(
    event: &ApiGatewayV2httpRequest,
    gateway: &Gateway,
) -> ApiGatewayV2httpResponse {
    let body = body_text(event.body.as_deref(), event.is_base64_encoded);
    let parts = WriteParts {
        body: body.as_deref(),
        if_match: header(&event.headers, "if-match"),
    };
    let response = gateway.handle_write(&request_v2(event), parts).await;
    response_v2(response)
}

/// The request body as text (API Gateway base64-encodes bodies that are not); `None` when
/// absent or not UTF-8 (a write then answers that it has no body).
fn body_text(body: Option<&str>, base64: bool) -> Option<String> {
    let body = body?;
    if !base64 {
        return Some(body.to_owned());
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// The v2 shape of a response (also what the local server turns into HTTP).
pub fn response_v2(response: FhirResponse) -> ApiGatewayV2httpResponse {
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(response.status);
    out.headers = header_map(&response.headers);
    out.body = response.body.map(Body::Text);
    out
}

/// The Lambda entry point: either payload version, told apart by `version: "2.0"`.
pub async fn handle(event: Value, gateway: &Gateway) -> Result<Value, HandlerError> {
    let v2 = event.get("version").and_then(Value::as_str) == Some("2.0");
    let out = if v2 {
        let e: ApiGatewayV2httpRequest = serde_json::from_value(event)
            .map_err(|e| HandlerError::InvalidInput(format!("API Gateway v2 event: {e}")))?;
        serde_json::to_value(handle_v2(&e, gateway).await)
    } else {
        let e: ApiGatewayProxyRequest = serde_json::from_value(event)
            .map_err(|e| HandlerError::InvalidInput(format!("API Gateway v1 event: {e}")))?;
        serde_json::to_value(handle_v1(&e, gateway).await)
    };
    out.map_err(|e| HandlerError::InvalidInput(format!("response cannot be encoded: {e}")))
}

/// The request for a REST API (v1) event.
pub fn request_v1(event: &ApiGatewayProxyRequest) -> FhirRequest {
    let full = event.path.clone().unwrap_or_else(|| "/".to_owned());
    let fhir = event
        .path_parameters
        .get("proxy")
        .cloned()
        .unwrap_or_else(|| full.clone());
    let mut prefix = prefix_of(&full, &fhir);
    let host = header(&event.headers, "host")
        .map(str::to_owned)
        .or_else(|| event.request_context.domain_name.clone())
        .unwrap_or_else(|| "localhost".to_owned());
    // On the default execute-api endpoint the stage is part of the URL but not of `path`.
    if host.ends_with(".amazonaws.com")
        && let Some(stage) = &event.request_context.stage
    {
        prefix = format!("/{stage}{prefix}");
    }
    let mut query: Vec<(String, String)> = if event.multi_value_query_string_parameters.is_empty() {
        event
            .query_string_parameters
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    } else {
        event
            .multi_value_query_string_parameters
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    // The map has no order; sort by name (values of one name keep theirs) for stable links.
    query.sort_by(|a, b| a.0.cmp(&b.0));
    FhirRequest {
        method: event.http_method.as_str().to_owned(),
        path: fhir.trim_start_matches('/').to_owned(),
        query,
        if_none_match: header(&event.headers, "if-none-match").map(str::to_owned),
        base_url: format!("{}://{host}{prefix}", scheme(&event.headers)),
        grant: AccessGrant::from_context(&event.request_context.authorizer.fields),
    }
}

/// The request for an HTTP API (v2) event.
pub fn request_v2(event: &ApiGatewayV2httpRequest) -> FhirRequest {
    let full = event
        .raw_path
        .clone()
        .or_else(|| event.request_context.http.path.clone())
        .unwrap_or_else(|| "/".to_owned());
    let fhir = match event.path_parameters.get("proxy") {
        Some(p) => p.clone(),
        None => match event.request_context.stage.as_deref() {
            Some(stage) if stage != "$default" => full
                .strip_prefix(&format!("/{stage}"))
                .unwrap_or(&full)
                .to_owned(),
            _ => full.clone(),
        },
    };
    let prefix = prefix_of(&full, &fhir);
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
    FhirRequest {
        method: event.request_context.http.method.as_str().to_owned(),
        path: fhir.trim_start_matches('/').to_owned(),
        query: parse_query(event.raw_query_string.as_deref().unwrap_or("")),
        if_none_match: header(&event.headers, "if-none-match").map(str::to_owned),
        base_url: format!("{}://{host}{prefix}", scheme(&event.headers)),
        grant: AccessGrant::from_context(context),
    }
}

/// The part of `full` before the FHIR path, without trailing slash.
fn prefix_of(full: &str, fhir: &str) -> String {
    let fhir = fhir.trim_start_matches('/');
    full.strip_suffix(fhir)
        .unwrap_or("")
        .trim_end_matches('/')
        .to_owned()
}

/// A raw query string as name/value pairs, percent-decoded (`+` is a space), in order.
/// Repeated names stay separate: FHIR gives commas a meaning of their own.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

/// A refusal in the v2 shape (the local server's own answers: no token, denied).
pub fn refusal_v2(refusal: Refusal) -> ApiGatewayV2httpResponse {
    response_v2(refusal.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_and_keep_repeats_and_commas() {
        assert_eq!(
            parse_query("family=O%27Brien&given=a+b&code=x,y&code=z&flag"),
            vec![
                ("family".into(), "O'Brien".into()),
                ("given".into(), "a b".into()),
                ("code".into(), "x,y".into()),
                ("code".into(), "z".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert!(parse_query("").is_empty());
        assert_eq!(parse_query("a=%ZZ")[0].1, "%ZZ");
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix_of("/fhir/Patient/1", "Patient/1"), "/fhir");
        assert_eq!(prefix_of("/Patient/1", "/Patient/1"), "");
        assert_eq!(prefix_of("/x", "Patient"), "");
    }
}
