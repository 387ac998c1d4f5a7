//! The partner FHIR API as API Gateway drives it: fixture events of both payload versions
//! through the `gateway` handler, and the authorizer → gateway chain over a matrix of
//! partners × resource types × scopes × token faults × interactions.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod partners;
}

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayProxyRequest,
    ApiGatewayV2CustomAuthorizerV2Request, ApiGatewayV2httpRequest,
};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::HeaderValue;
use aws_lambda_events::iam::IamPolicyEffect;
use serde_json::{Value, json};

use common::partners::{FAULTS, Fault, authorization, fill, pipeline};
use fhir_unify::gateway::Gateway;
use fhir_unify::gateway::auth::Authorizer;
use fhir_unify::handlers::{authorizer, gateway};
use fhir_unify::store::sqlite::SqliteStore;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn api() -> Gateway {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    fill(&store, 5).await;
    Gateway::sqlite(store)
}

fn text(body: &Option<Body>) -> Value {
    match body {
        Some(Body::Text(t)) => serde_json::from_str(t).unwrap(),
        other => panic!("no text body: {other:?}"),
    }
}

#[test]
fn fixtures_round_trip_through_the_event_types() {
    for (name, v2) in [
        ("apigw-v1-read.json", false),
        ("apigw-v1-search.json", false),
        ("apigw-v2-search.json", true),
        ("apigw-v2-history-no-authorizer.json", true),
    ] {
        let raw = fixture(name);
        if v2 {
            let e: ApiGatewayV2httpRequest = serde_json::from_value(raw).unwrap();
            let again: ApiGatewayV2httpRequest =
                serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
            assert_eq!(e, again, "{name}");
        } else {
            let e: ApiGatewayProxyRequest = serde_json::from_value(raw).unwrap();
            let again: ApiGatewayProxyRequest =
                serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
            assert_eq!(e, again, "{name}");
        }
    }
    let e: ApiGatewayCustomAuthorizerRequestTypeRequest =
        serde_json::from_value(fixture("apigw-authorizer-v1-request.json")).unwrap();
    assert!(e.method_arn.is_some());
    let e: ApiGatewayV2CustomAuthorizerV2Request =
        serde_json::from_value(fixture("apigw-authorizer-v2-request.json")).unwrap();
    assert_eq!(e.identity_source.unwrap().len(), 1);
}

#[tokio::test]
async fn rest_v1_read_keeps_stage_and_base_path_and_reads_the_grant() {
    let api = api().await;
    let e: ApiGatewayProxyRequest = serde_json::from_value(fixture("apigw-v1-read.json")).unwrap();
    let req = gateway::request_v1(&e);
    assert_eq!(req.path, "Patient/x1");
    assert_eq!(
        req.base_url,
        "https://gy415nuibc.execute-api.us-east-1.amazonaws.com/prod/fhir"
    );
    assert_eq!(req.grant.as_ref().unwrap().partner, "acme");
    let r = gateway::handle_v1(&e, &api).await;
    assert_eq!(r.status_code, 200, "{:?}", r.body);
    assert_eq!(r.headers["etag"], "W/\"1\"");
    assert_eq!(r.headers["content-type"], "application/fhir+json");
    assert_eq!(text(&r.body)["id"], "x1");
    // The fixture's If-None-Match names another version; naming this one gives 304.
    let mut e = e;
    e.headers
        .insert("if-none-match", HeaderValue::from_static("W/\"1\""));
    let r = gateway::handle_v1(&e, &api).await;
    assert_eq!((r.status_code, r.body.is_none()), (304, true));
}

#[tokio::test]
async fn rest_v1_search_with_repeated_parameters_and_custom_domain() {
    let api = api().await;
    let raw = fixture("apigw-v1-search.json");
    let out = gateway::handle(raw, &api).await.unwrap();
    assert_eq!(out["statusCode"], 200, "{out}");
    let bundle: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(bundle["type"], "searchset");
    // Patients are born nowhere in this store, so the birthdate filters match none.
    assert_eq!(bundle["total"], 0);
    let self_link = bundle["link"][0]["url"].as_str().unwrap();
    assert!(
        self_link.starts_with("https://fhir.partner-api.example/fhir/Patient?"),
        "{self_link}"
    );
    assert!(
        self_link.contains("birthdate=ge1960&birthdate=lt2000-01-01"),
        "{self_link}"
    );
}

#[tokio::test]
async fn http_v2_search_pages_and_no_authorizer_context_is_refused() {
    let api = api().await;
    let mut e: ApiGatewayV2httpRequest =
        serde_json::from_value(fixture("apigw-v2-search.json")).unwrap();
    e.raw_query_string = Some("gender=female,male&_count=2".into());
    let mut seen = Vec::new();
    loop {
        let r = gateway::handle_v2(&e, &api).await;
        assert_eq!(r.status_code, 200, "{:?}", r.body);
        let b = text(&r.body);
        assert_eq!(b["total"], 6);
        seen.extend(
            b["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned()),
        );
        let Some(next) = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        else {
            break;
        };
        let url = next["url"].as_str().unwrap();
        let prefix = "https://abc123.execute-api.eu-west-1.amazonaws.com/prod/r4/Patient?";
        assert!(url.starts_with(prefix), "{url}");
        e.raw_query_string = Some(url[prefix.len()..].to_owned());
    }
    assert_eq!(seen, ["p001", "p002", "p003", "p004", "p005", "x1"]);

    let out = gateway::handle(fixture("apigw-v2-history-no-authorizer.json"), &api)
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 401);
    let outcome: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");

    let bad = gateway::handle(json!({"version": "2.0", "rawPath": 5}), &api).await;
    assert!(bad.is_err());
}

/// Scope sets, with what each allows by the SMART rules (the test's own oracle):
/// (scope, types it reads or `*`, whether it searches).
const SCOPES: &[(&str, &[&str], bool)] = &[
    ("system/*.rs", &["*"], true),
    ("system/Patient.rs", &["Patient"], true),
    ("system/Patient.read", &["Patient"], true),
    ("system/*.read", &["*"], true),
    (
        "system/Observation.r system/Coverage.r",
        &["Observation", "Coverage"],
        false,
    ),
    ("patient/*.read user/*.rs", &[], false),
];
const TYPES: &[&str] = &["Patient", "Coverage", "Observation"];

fn partner_reads(partner: &str, t: &str) -> bool {
    match partner {
        "acme" => ["Patient", "Coverage"].contains(&t),
        "beta" => ["Patient", "Observation"].contains(&t),
        _ => false,
    }
}

#[tokio::test]
async fn matrix_partners_types_scopes_faults_interactions() {
    let api = api().await;
    let authz = Authorizer::from_config(&pipeline()).unwrap();
    let v2_auth: ApiGatewayV2CustomAuthorizerV2Request =
        serde_json::from_value(fixture("apigw-authorizer-v2-request.json")).unwrap();
    let v1_auth: ApiGatewayCustomAuthorizerRequestTypeRequest =
        serde_json::from_value(fixture("apigw-authorizer-v1-request.json")).unwrap();
    let v2_req: ApiGatewayV2httpRequest =
        serde_json::from_value(fixture("apigw-v2-search.json")).unwrap();
    let v1_req: ApiGatewayProxyRequest =
        serde_json::from_value(fixture("apigw-v1-read.json")).unwrap();

    let (mut cells, mut allowed_cells) = (0, 0);
    for partner in ["acme", "beta"] {
        for (scope, scope_types, scope_search) in SCOPES {
            for fault in FAULTS {
                let header = authorization(partner, scope, *fault);
                // HTTP API: simple response, context under `lambda`.
                let mut a2 = v2_auth.clone();
                a2.headers.remove("authorization");
                a2.identity_source = None;
                if let Some(h) = &header {
                    a2.headers
                        .insert("authorization", HeaderValue::from_str(h).unwrap());
                }
                let d2 = authorizer::authorize_http(&a2, &authz);
                // REST API: IAM policy, context flattened.
                let mut a1 = v1_auth.clone();
                a1.headers.remove("authorization");
                if let Some(h) = &header {
                    a1.headers
                        .insert("authorization", HeaderValue::from_str(h).unwrap());
                }
                let d1 = authorizer::authorize_rest(&a1, &authz);
                let rest_allows = d1.policy_document.statement[0].effect == IamPolicyEffect::Allow;
                assert_eq!(rest_allows, d2.is_authorized, "{partner} {scope} {fault:?}");
                if *fault != Fault::None {
                    assert!(
                        !d2.is_authorized,
                        "{partner} {scope} {fault:?} must be denied"
                    );
                }
                for t in TYPES {
                    for search in [false, true] {
                        cells += 1;
                        let scope_ok = (scope_types.contains(&"*") || scope_types.contains(t))
                            && (!search || *scope_search);
                        let expected =
                            *fault == Fault::None && partner_reads(partner, t) && scope_ok;
                        let (path, query) = if search {
                            (t.to_string(), "_id=x1".to_owned())
                        } else {
                            (format!("{t}/x1"), String::new())
                        };
                        // v2 chain.
                        let got_v2 = if d2.is_authorized {
                            let mut e = v2_req.clone();
                            e.path_parameters.insert("proxy".into(), path.clone());
                            e.raw_query_string = Some(query.clone());
                            let mut auth =
                                aws_lambda_events::apigw::ApiGatewayRequestAuthorizer::default();
                            auth.fields = d2
                                .context
                                .as_object()
                                .unwrap()
                                .clone()
                                .into_iter()
                                .collect();
                            e.request_context.authorizer = Some(auth);
                            let r = gateway::handle_v2(&e, &api).await;
                            assert!(
                                r.status_code == 200 || r.status_code == 403,
                                "{partner} {scope} {t} {}",
                                r.status_code
                            );
                            r.status_code == 200
                        } else {
                            false
                        };
                        // v1 chain: API Gateway flattens the context next to principalId.
                        let got_v1 = if rest_allows {
                            let mut e = v1_req.clone();
                            e.headers.remove("if-none-match");
                            e.path_parameters.insert("proxy".into(), path.clone());
                            e.path = Some(format!("/fhir/{path}"));
                            let mut fields: HashMap<String, Value> = d1
                                .context
                                .as_object()
                                .unwrap()
                                .clone()
                                .into_iter()
                                .collect();
                            fields.insert("principalId".into(), json!(d1.principal_id));
                            e.request_context.authorizer.fields = fields;
                            e.multi_value_query_string_parameters = if search {
                                HashMap::from([("_id".to_owned(), vec!["x1".to_owned()])]).into()
                            } else {
                                HashMap::<String, Vec<String>>::new().into()
                            };
                            let r = gateway::handle_v1(&e, &api).await;
                            if r.status_code == 200 && search {
                                assert_eq!(
                                    text(&r.body)["entry"][0]["resource"]["resourceType"],
                                    *t
                                );
                            }
                            r.status_code == 200
                        } else {
                            false
                        };
                        let cell = format!(
                            "partner={partner} scope={scope:?} fault={fault:?} type={t} search={search}"
                        );
                        assert_eq!(got_v2, expected, "v2 {cell}");
                        assert_eq!(got_v1, expected, "v1 {cell}");
                        if expected {
                            allowed_cells += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cells, 2 * SCOPES.len() * FAULTS.len() * TYPES.len() * 2);
    // Per partner: 2 readable types; scopes 1,4 give both (read+search = 4 cells), 2,3 give
    // Patient (2 cells), 5 gives one read (1 cell), 6 nothing: 4+2+2+4+1 = 13 per partner.
    assert_eq!(allowed_cells, 26);
}

#[tokio::test]
async fn lambda_entry_points_answer_both_authorizer_versions() {
    let authz = Authorizer::from_config(&pipeline()).unwrap();
    let token = authorization("acme", "system/Patient.rs", Fault::None).unwrap();
    let mut v2 = fixture("apigw-authorizer-v2-request.json");
    v2["headers"]["authorization"] = json!(token);
    let out = authorizer::handle(v2, &authz).await.unwrap();
    assert_eq!(out["isAuthorized"], true);
    assert_eq!(out["context"]["readTypes"], "Patient");
    let mut v1 = fixture("apigw-authorizer-v1-request.json");
    v1["headers"]["Authorization"] = json!(token);
    let out = authorizer::handle(v1, &authz).await.unwrap();
    assert_eq!(out["principalId"], "acme");
    assert_eq!(out["policyDocument"]["Statement"][0]["Effect"], "Allow");
    assert_eq!(
        out["policyDocument"]["Statement"][0]["Resource"][0],
        "arn:aws:execute-api:us-east-1:123456789012:gy415nuibc/prod/GET/*"
    );
    assert_eq!(out["context"]["partner"], "acme");
    // The fixture's placeholder token is no JWT: denied.
    let out = authorizer::handle(fixture("apigw-authorizer-v1-request.json"), &authz)
        .await
        .unwrap();
    assert_eq!(out["policyDocument"]["Statement"][0]["Effect"], "Deny");
    assert!(
        authorizer::handle(json!({"version": "2.0"}), &authz)
            .await
            .is_err()
    );
}

#[test]
fn bad_partner_registries_fail_at_start() {
    let yaml = common::partners::pipeline_yaml().replace("acme-jwks.json", "missing.json");
    let c = fhir_unify::config::PipelineConfig::from_yaml(&yaml, Path::new("t.yaml")).unwrap();
    let e = Authorizer::from_config(&c).unwrap_err();
    assert!(e.to_string().contains("acme"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}"#,
    )
    .unwrap();
    let yaml = common::partners::pipeline_yaml().replace(
        &common::partners::auth_dir()
            .join("acme-jwks.json")
            .display()
            .to_string(),
        &bad.display().to_string(),
    );
    let c = fhir_unify::config::PipelineConfig::from_yaml(&yaml, Path::new("t.yaml")).unwrap();
    assert!(
        Authorizer::from_config(&c).is_err(),
        "symmetric keys are refused"
    );
}
