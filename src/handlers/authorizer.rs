//! `authorizer`: the Lambda REQUEST authorizer in front of the partner FHIR API. It verifies
//! the bearer token with [`Authorizer::authorize`] and answers in the shape each API type
//! wants:
//! - REST APIs: an IAM policy ([`ApiGatewayCustomAuthorizerResponse`]) with the grant as
//!   context (API Gateway flattens it into the request's `requestContext.authorizer`);
//! - HTTP APIs, payload 2.0 with simple responses: `{isAuthorized, context}`
//!   ([`ApiGatewayV2CustomAuthorizerSimpleResponse`]; the context reaches the handler as
//!   `requestContext.authorizer.lambda`).
//!
//! Deny by default: any failure (no token, a bad one, no useful scope) denies. An allow covers
//! every read route of the stage, because API Gateway caches the answer per token across
//! routes; which resource types the caller may read is in the context, and the gateway
//! checks it on every resource it returns.

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse, ApiGatewayV2CustomAuthorizerSimpleResponse,
    ApiGatewayV2CustomAuthorizerV2Request,
};
use aws_lambda_events::http::HeaderMap;
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use serde_json::{Map, Value};

use crate::gateway::auth::{AccessGrant, Authorizer, Denial};
use crate::gateway::authcache::Cacheable;

use super::HandlerError;

/// Answers a REST API REQUEST authorizer event with an IAM policy.
pub fn authorize_rest(
    event: &ApiGatewayCustomAuthorizerRequestTypeRequest,
    authorizer: &Authorizer,
) -> ApiGatewayCustomAuthorizerResponse {
    let decision = decide(authorizer, bearer(&event.headers, None));
    let method_arn = event.method_arn.clone();
    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".to_owned()];
    let mut response = ApiGatewayCustomAuthorizerResponse::default();
    match decision {
        Ok(grant) => {
            statement.effect = IamPolicyEffect::Allow;
            statement.resource = routes(method_arn.as_deref(), !grant.write.is_empty());
            response.principal_id = Some(grant.partner.clone());
            response.context = Value::Object(grant.to_context());
        }
        Err(_) => {
            statement.effect = IamPolicyEffect::Deny;
            statement.resource = vec![method_arn.unwrap_or_else(|| "*".to_owned())];
            response.principal_id = Some("denied".to_owned());
            response.context = Value::Object(Map::new());
        }
    }
    let mut policy = ApiGatewayCustomAuthorizerPolicy::default();
    policy.version = Some("2012-10-17".to_owned());
    policy.statement = vec![statement];
    response.policy_document = policy;
    response
}

/// Answers an HTTP API (payload 2.0) authorizer event with a simple response.
pub fn authorize_http(
    event: &ApiGatewayV2CustomAuthorizerV2Request,
    authorizer: &Authorizer,
) -> ApiGatewayV2CustomAuthorizerSimpleResponse {
    authorize_http_cacheable(event, authorizer).0
}

/// As [`authorize_http`], with how long a cache in front of the authorizer (API Gateway's,
/// or `serve`'s [`crate::gateway::authcache::AuthorizerCache`]) may keep the answer.
pub fn authorize_http_cacheable(
    event: &ApiGatewayV2CustomAuthorizerV2Request,
    authorizer: &Authorizer,
) -> (ApiGatewayV2CustomAuthorizerSimpleResponse, Cacheable) {
    let identity = event
        .identity_source
        .as_ref()
        .and_then(|s| s.first())
        .map(String::as_str);
    let mut response = ApiGatewayV2CustomAuthorizerSimpleResponse::default();
    let decision = decide_until(authorizer, bearer(&event.headers, identity));
    let cacheable = Cacheable::of(&decision);
    match decision {
        Ok((grant, _)) => {
            response.is_authorized = true;
            response.context = Value::Object(grant.to_context());
        }
        Err(_) => {
            response.is_authorized = false;
            response.context = Value::Object(Map::new());
        }
    }
    (response, cacheable)
}

/// The Lambda entry point: an HTTP API payload 2.0 event (`version: "2.0"`) gets a simple
/// response; anything else is read as a REST REQUEST event and gets a policy.
pub async fn handle(event: Value, authorizer: &Authorizer) -> Result<Value, HandlerError> {
    let out = if event.get("version").and_then(Value::as_str) == Some("2.0") {
        let e: ApiGatewayV2CustomAuthorizerV2Request = serde_json::from_value(event)
            .map_err(|e| HandlerError::InvalidInput(format!("HTTP API authorizer event: {e}")))?;
        serde_json::to_value(authorize_http(&e, authorizer))
    } else {
        let e: ApiGatewayCustomAuthorizerRequestTypeRequest = serde_json::from_value(event)
            .map_err(|e| HandlerError::InvalidInput(format!("REST authorizer event: {e}")))?;
        serde_json::to_value(authorize_rest(&e, authorizer))
    };
    out.map_err(|e| HandlerError::InvalidInput(format!("response cannot be encoded: {e}")))
}

fn decide(authorizer: &Authorizer, token: Option<&str>) -> Result<AccessGrant, Denial> {
    decide_until(authorizer, token).map(|(grant, _)| grant)
}

fn decide_until(
    authorizer: &Authorizer,
    token: Option<&str>,
) -> Result<(AccessGrant, i64), Denial> {
    let decision = authorizer.authorize_until(token);
    match &decision {
        Ok((g, _)) => tracing::info!(
            partner = %g.partner,
            read_types = g.read.len(),
            "authorizer: allowed"
        ),
        Err(d) => tracing::info!(reason = %d, "authorizer: denied"),
    }
    decision
}

fn bearer<'a>(headers: &'a HeaderMap, identity: Option<&'a str>) -> Option<&'a str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .or(identity)
}

/// The routes of the stage a method ARN belongs to that the grant may call:
/// `arn:aws:execute-api:region:account:api/stage/GET/*` and the same for HEAD; for a grant
/// that may write, POST and PUT too (`ingest-api` checks the types).
fn routes(method_arn: Option<&str>, write: bool) -> Vec<String> {
    let Some(arn) = method_arn else {
        return Vec::new();
    };
    let mut parts = arn.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(api), Some(stage)) if !api.is_empty() && !stage.is_empty() => {
            let methods: &[&str] = if write {
                &["GET", "HEAD", "POST", "PUT"]
            } else {
                &["GET", "HEAD"]
            };
            methods
                .iter()
                .map(|m| format!("{api}/{stage}/{m}/*"))
                .collect()
        }
        _ => vec![arn.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_routes_cover_the_stage() {
        assert_eq!(
            routes(
                Some("arn:aws:execute-api:us-east-1:123:abc/prod/GET/Patient/1"),
                false
            ),
            [
                "arn:aws:execute-api:us-east-1:123:abc/prod/GET/*",
                "arn:aws:execute-api:us-east-1:123:abc/prod/HEAD/*"
            ]
        );
        assert_eq!(routes(Some("odd"), false), ["odd"]);
        assert!(routes(None, false).is_empty());
        assert_eq!(
            routes(Some("arn:aws:execute-api:r:1:abc/prod/POST/ingest/x"), true),
            [
                "arn:aws:execute-api:r:1:abc/prod/GET/*",
                "arn:aws:execute-api:r:1:abc/prod/HEAD/*",
                "arn:aws:execute-api:r:1:abc/prod/POST/*",
                "arn:aws:execute-api:r:1:abc/prod/PUT/*"
            ]
        );
    }
}
