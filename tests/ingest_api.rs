//! `ingest-api` on fixture API Gateway events (REST v1 and HTTP API v2, under
//! tests/fixtures/api/), through the embedded runtime's `unify`: what is published, what is
//! refused, with which HTTP status and OperationOutcome, and what reaches the store.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use fhir_unify::config::{DataDir, PipelineConfig};
use fhir_unify::handlers::ingest_api::{self, ApiEnv};
use fhir_unify::local::LocalRuntime;
use fhir_unify::model::ResourceRef;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/api")
}

fn event(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

struct Api {
    env: ApiEnv,
    runtime: LocalRuntime,
    _dir: tempfile::TempDir,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "sources:\n  - name: partner\n    api: {{ path: /ingest/partner, fhir: [Patient, Observation] }}\n    entities:\n      members: {{ key: [member_id], mapping: {} }}\n",
        fixtures().join("partner-members.yaml").display()
    );
    let file = dir.path().join("fhir-unify.yaml");
    std::fs::write(&file, yaml).unwrap();
    let config = PipelineConfig::load(&file).unwrap();
    let runtime = LocalRuntime::open(config, DataDir(dir.path().join("data"))).unwrap();
    Api {
        env: ApiEnv::from_runtime(&runtime),
        runtime,
        _dir: dir,
    }
}

/// Status, headers (lower-case names) and JSON body of the answer to a fixture event.
async fn call(api: &Api, name: &str) -> (u16, serde_json::Map<String, Value>, Value) {
    let out = ingest_api::handle(event(name), &api.env).await.unwrap();
    let status = u16::try_from(out["statusCode"].as_i64().unwrap()).unwrap();
    let headers = out["headers"].as_object().cloned().unwrap_or_default();
    let body = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    (status, headers, body)
}

fn diagnostics(outcome: &Value) -> String {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["diagnostics"].as_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn expressions(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

async fn stored(api: &Api, reference: &str) -> Option<Value> {
    let (t, id) = reference.split_once('/').unwrap();
    let target = ResourceRef {
        resource_type: t.into(),
        id: id.into(),
    };
    api.env
        .store
        .read(&target)
        .await
        .unwrap()
        .and_then(|v| v.resource)
}

/// `Type/id` of a `Location` or `response.location` (`…/Type/id/_history/v`).
fn reference_of(location: &str) -> String {
    let parts: Vec<&str> = location.rsplitn(5, '/').collect();
    format!("{}/{}", parts[3], parts[2])
}

fn count_events(api: &Api) -> usize {
    let file = api.runtime.data.join(Path::new("events.ndjson"));
    std::fs::read_to_string(file)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn v1_put_creates_then_updates_then_leaves_unchanged() {
    let api = api();
    let (status, headers, body) = call(&api, "apigw-v1-put-patient.json").await;
    assert_eq!(status, 201, "{body}");
    let location = headers["location"].as_str().unwrap();
    // REST API on its execute-api host: the stage is part of the URL.
    assert!(
        location.starts_with("https://abc123.execute-api.us-east-1.amazonaws.com/prod/Patient/"),
        "{location}"
    );
    assert!(location.ends_with("/_history/1"), "{location}");
    assert_eq!(headers["etag"], "W/\"1\"");
    assert!(headers.contains_key("last-modified"));
    // The answer is the stored resource: the pipeline's id, the client's meta dropped.
    assert_eq!(body["resourceType"], "Patient");
    assert_ne!(body["id"], "p-123");
    assert_eq!(body["name"][0]["family"], "Okafor");
    assert_ne!(body["meta"]["versionId"], "77");
    let reference = reference_of(location);
    assert_eq!(
        format!("Patient/{}", body["id"].as_str().unwrap()),
        reference
    );
    assert!(stored(&api, &reference).await.is_some());
    assert_eq!(count_events(&api), 1);

    // The same request again (a later request time would be a new sequence; the same one is
    // a redelivery): nothing changes, no event.
    let (status, headers, _) = call(&api, "apigw-v1-put-patient.json").await;
    assert_eq!(status, 200);
    assert_eq!(headers["etag"], "W/\"1\"");
    assert_eq!(count_events(&api), 1);

    // A changed resource at a later time: updated, version 2.
    let mut e = event("apigw-v1-put-patient.json");
    let mut patient: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
    patient["gender"] = "other".into();
    e["body"] = patient.to_string().into();
    e["requestContext"]["requestTimeEpoch"] = 1_714_182_875_000_i64.into();
    let out = ingest_api::handle(e, &api.env).await.unwrap();
    assert_eq!(out["statusCode"], 200);
    assert_eq!(out["headers"]["etag"], "W/\"2\"");
    assert_eq!(count_events(&api), 2);
}

#[tokio::test]
async fn v1_records_of_a_source_each_published_or_rejected() {
    let api = api();
    let (status, _, body) = call(&api, "apigw-v1-post-records.json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resourceType"], "Bundle");
    assert_eq!(body["type"], "batch-response");
    let entries = body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 6);
    let status_of = |i: usize| {
        entries[i]["response"]["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // m-1: published.
    assert_eq!(status_of(0), "201 Created");
    let location = entries[0]["response"]["location"].as_str().unwrap();
    let patient = stored(&api, &reference_of(location)).await.unwrap();
    assert_eq!(patient["identifier"][0]["value"], "m-1");
    assert_eq!(patient["gender"], "female");
    // No key: refused before unify, naming the record.
    assert_eq!(status_of(1), "422 Unprocessable Entity");
    let o = &entries[1]["response"]["outcome"];
    assert!(
        diagnostics(o)
            .contains("request v1-post-records: body[1]: key attribute \"member_id\" is missing")
    );
    assert_eq!(expressions(o), ["body[1]"]);
    // Mapping errors (a required value, a code not in the table) and a validation error.
    for i in [2, 3, 4] {
        assert_eq!(status_of(i), "422 Unprocessable Entity", "entry {i}");
        assert!(!diagnostics(&entries[i]["response"]["outcome"]).is_empty());
    }
    // The validator names the element (in the diagnostics or the expression).
    let o = entries[4]["response"]["outcome"].to_string();
    assert!(o.contains("birthDate"), "{o}");
    // Not an object.
    assert_eq!(status_of(5), "400 Bad Request");
    assert!(
        diagnostics(&entries[5]["response"]["outcome"])
            .contains("body[5]: a record must be a JSON object")
    );
    // The rejected records that reached unify are in quarantine, with their reasons.
    let queue = &api.runtime.config.quarantine.queue;
    assert_eq!(api.runtime.queue.count(queue).unwrap(), 3);
}

#[tokio::test]
async fn v1_a_single_record_answers_with_its_own_status_and_headers() {
    let api = api();
    let (status, headers, body) = call(&api, "apigw-v1-post-record.json").await;
    assert_eq!(status, 201, "{body}");
    assert!(headers["location"].as_str().unwrap().contains("/Patient/"));
    assert_eq!(headers["etag"], "W/\"1\"");
    assert_eq!(body["entry"][0]["response"]["status"], "201 Created");
}

#[tokio::test]
async fn v2_create_by_identifier_is_idempotent() {
    let api = api();
    let (status, headers, body) = call(&api, "apigw-v2-post-patient.json").await;
    assert_eq!(status, 201, "{body}");
    let first = headers["location"].as_str().unwrap().to_owned();
    assert!(
        first.starts_with("https://api.example.org/Patient/"),
        "{first}"
    );
    // The same identifier again: the same resource, unchanged.
    let (status, headers, _) = call(&api, "apigw-v2-post-patient.json").await;
    assert_eq!(status, 200);
    assert_eq!(headers["location"].as_str().unwrap(), first);
}

#[tokio::test]
async fn base64_bodies_are_decoded_and_bad_ones_refused() {
    let api = api();
    let (status, _, body) = call(&api, "apigw-v1-base64.json").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"][0]["family"], "Lindqvist");
    let (status, _, body) = call(&api, "apigw-v1-bad-base64.json").await;
    assert_eq!(status, 400);
    let d = diagnostics(&body);
    assert!(
        d.contains("request v1-bad-base64") && d.contains("not base64"),
        "{d}"
    );
    assert_eq!(expressions(&body), ["body"]);
}

#[tokio::test]
async fn bad_requests_are_refused_with_an_outcome_naming_request_and_place() {
    let api = api();
    let cases: &[(&str, u16, &str, &str)] = &[
        (
            "apigw-v1-not-json.json",
            400,
            "the body is not JSON",
            "body line 1 column",
        ),
        (
            "apigw-v1-no-grant.json",
            403,
            "writing is denied",
            "authorization",
        ),
        (
            "apigw-v1-put-patient-id-mismatch.json",
            400,
            "differs from the id in the URL",
            "Patient.id",
        ),
        (
            "apigw-v2-post-not-a-resource.json",
            400,
            "no resourceType",
            "Patient.resourceType",
        ),
        (
            "apigw-v2-post-wrong-type.json",
            400,
            "does not match the URL's type",
            "Patient.resourceType",
        ),
        (
            "apigw-v2-wrong-content-type.json",
            415,
            "\"text/plain\" is not accepted",
            "header Content-Type",
        ),
        (
            "apigw-v2-no-content-type.json",
            415,
            "no Content-Type",
            "header Content-Type",
        ),
        ("apigw-v2-empty-body.json", 400, "the body is empty", "body"),
        (
            "apigw-v2-unknown-entity.json",
            404,
            "no entity or FHIR endpoint",
            "path",
        ),
        (
            "apigw-v2-unknown-type.json",
            404,
            "does not accept FHIR Encounter",
            "path",
        ),
        ("apigw-v2-unknown-source.json", 404, "no API source", "path"),
        ("apigw-v2-get.json", 405, "GET is not allowed", "method"),
        (
            "apigw-v2-write-not-granted.json",
            403,
            "may not write Observation",
            "authorization",
        ),
        ("apigw-v2-too-many.json", 413, "at most 1000", "body"),
        (
            "apigw-v2-bundle-wrong-type.json",
            400,
            "batch or transaction",
            "Bundle.type",
        ),
    ];
    for (name, want, says, at) in cases {
        let (status, _, body) = call(&api, name).await;
        assert_eq!(status, *want, "{name}: {body}");
        let d = diagnostics(&body);
        let rid = event(name)["requestContext"]["requestId"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(d.contains(&format!("request {rid}")), "{name}: {d}");
        assert!(d.contains(says), "{name}: {d}");
        let e = expressions(&body);
        assert!(e.iter().any(|x| x.starts_with(at)), "{name}: {e:?}");
    }
    // Nothing was written by any of them.
    assert_eq!(count_events(&api), 0);
}

#[tokio::test]
async fn v2_records_under_a_stage() {
    let api = api();
    let (status, _, body) = call(&api, "apigw-v2-stage-records.json").await;
    assert_eq!(status, 200, "{body}");
    let location = body["entry"][0]["response"]["location"].as_str().unwrap();
    assert!(
        location.starts_with("https://api.example.org/prod/Patient/"),
        "{location}"
    );
}

#[tokio::test]
async fn a_transaction_resolves_references_and_is_all_or_nothing() {
    let api = api();
    // An invalid entry: 422 naming it, and nothing is written.
    let (status, _, body) = call(&api, "apigw-v2-transaction-invalid.json").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        expressions(&body).contains(&"Bundle.entry[1]".to_owned()),
        "{body}"
    );
    assert!(diagnostics(&body).contains("request v2-transaction-invalid: Bundle.entry[1]"));
    assert_eq!(count_events(&api), 0);

    let (status, _, body) = call(&api, "apigw-v2-transaction.json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "transaction-response");
    let entries = body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    let refs: Vec<String> = entries
        .iter()
        .map(|e| {
            assert_eq!(e["response"]["status"], "201 Created", "{e}");
            reference_of(e["response"]["location"].as_str().unwrap())
        })
        .collect();
    // The Observation's subject (a urn:uuid fullUrl) now names the created Patient.
    let obs = stored(&api, &refs[1]).await.unwrap();
    assert_eq!(obs["subject"]["reference"], refs[0]);
    // A reference by the partner's own id names the pipeline's id for that id.
    let put = call(&api, "apigw-v1-put-patient.json").await;
    let okafor = reference_of(put.1["location"].as_str().unwrap());
    let obs = stored(&api, &refs[2]).await.unwrap();
    assert_eq!(obs["subject"]["reference"], okafor);
    assert_eq!(count_events(&api), 4);
}

#[tokio::test]
async fn a_batch_answers_each_entry() {
    let api = api();
    let (status, _, body) = call(&api, "apigw-v2-batch.json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "batch-response");
    let statuses: Vec<&str> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "422 Unprocessable Entity",
            "201 Created",
            "404 Not Found",
            "405 Method Not Allowed"
        ]
    );
    let o = &body["entry"][3]["response"]["outcome"];
    assert_eq!(expressions(o), ["Bundle.entry[3].request.url"]);
    assert_eq!(count_events(&api), 2);
}

#[test]
fn fixtures_round_trip_through_the_event_types() {
    use aws_lambda_events::apigw::{ApiGatewayProxyRequest, ApiGatewayV2httpRequest};
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let v = event(&name);
        let again = if name.starts_with("apigw-v2-") {
            let e: ApiGatewayV2httpRequest = serde_json::from_value(v).unwrap();
            let back: ApiGatewayV2httpRequest =
                serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
            (ingest_api::request_v2(&e), ingest_api::request_v2(&back))
        } else {
            let e: ApiGatewayProxyRequest = serde_json::from_value(v).unwrap();
            let back: ApiGatewayProxyRequest =
                serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
            (ingest_api::request_v1(&e), ingest_api::request_v1(&back))
        };
        assert_eq!(again.0, again.1, "{name}");
        assert!(again.0.path.starts_with("/ingest/"), "{name}");
    }
}

/// Status and JSON body of the answer to an event.
async fn call_value(api: &Api, event: Value) -> (u16, Value) {
    let out = ingest_api::handle(event, &api.env).await.unwrap();
    let status = u16::try_from(out["statusCode"].as_i64().unwrap()).unwrap();
    (
        status,
        serde_json::from_str(out["body"].as_str().unwrap()).unwrap(),
    )
}

/// A v1 fixture turned into `DELETE path`, a second later, with its own request id.
fn delete_event(fixture: &str, path: &str, request_id: &str) -> Value {
    let mut e = event(fixture);
    e["httpMethod"] = "DELETE".into();
    e["requestContext"]["httpMethod"] = "DELETE".into();
    e["requestContext"]["requestId"] = request_id.into();
    let t = e["requestContext"]["requestTimeEpoch"].as_i64().unwrap();
    e["requestContext"]["requestTimeEpoch"] = (t + 1000).into();
    e["path"] = path.into();
    e["body"] = Value::Null;
    e
}

#[tokio::test]
async fn delete_of_a_fhir_resource_and_of_a_source_record() {
    let api = api();
    let (status, headers, _) = call(&api, "apigw-v1-put-patient.json").await;
    assert_eq!(status, 201);
    let patient = reference_of(headers["location"].as_str().unwrap());
    let events = count_events(&api);

    // DELETE of what `PUT …/Patient/p-123` made: 200 with an OperationOutcome, a delete
    // version in the store, one change event.
    let del = delete_event(
        "apigw-v1-put-patient.json",
        "/ingest/partner/fhir/Patient/p-123",
        "v1-delete-patient",
    );
    let (status, body) = call_value(&api, del.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["severity"], "information");
    let text = diagnostics(&body);
    assert!(text.contains(&patient), "{text}");
    assert!(text.contains("v1-delete-patient"), "{text}");
    assert!(stored(&api, &patient).await.is_none());
    let (t, id) = patient.split_once('/').unwrap();
    let current = api
        .env
        .store
        .read(&ResourceRef {
            resource_type: t.into(),
            id: id.into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert!(current.deleted);
    assert_eq!(count_events(&api), events + 1);

    // Again, and an id never written: the store has no current resource, so 404.
    for path in [
        "/ingest/partner/fhir/Patient/p-123",
        "/ingest/partner/fhir/Patient/never-written",
    ] {
        let (status, body) = call_value(
            &api,
            delete_event("apigw-v1-put-patient.json", path, "v1-delete-again"),
        )
        .await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["issue"][0]["code"], "not-found");
        assert_eq!(expressions(&body), ["path"]);
    }
    assert_eq!(count_events(&api), events + 1);

    // A source record, deleted by its key: the Patient its mapping made goes.
    let (status, headers, body) = call(&api, "apigw-v1-post-record.json").await;
    assert_eq!(status, 201, "{body}");
    let member = reference_of(headers["location"].as_str().unwrap());
    assert!(stored(&api, &member).await.is_some());
    let del = delete_event(
        "apigw-v1-post-record.json",
        "/ingest/partner/members/m-1",
        "v1-delete-member",
    );
    let (status, body) = call_value(&api, del).await;
    assert_eq!(status, 200, "{body}");
    assert!(diagnostics(&body).contains(&member), "{body}");
    assert!(stored(&api, &member).await.is_none());
    let (status, _) = call_value(
        &api,
        delete_event(
            "apigw-v1-post-record.json",
            "/ingest/partner/members/m-2",
            "v1-delete-unknown-member",
        ),
    )
    .await;
    assert_eq!(status, 404);

    // DELETE where it means nothing: 405, naming what is allowed.
    let (status, body) = call_value(
        &api,
        delete_event(
            "apigw-v1-put-patient.json",
            "/ingest/partner/fhir/Patient",
            "v1-delete-type",
        ),
    )
    .await;
    assert_eq!(status, 405);
    assert!(diagnostics(&body).contains("allowed: POST"), "{body}");

    // Without a write grant: 403, nothing deleted.
    let mut no_grant = delete_event(
        "apigw-v1-put-patient.json",
        "/ingest/partner/fhir/Patient/p-123",
        "v1-delete-no-grant",
    );
    no_grant["requestContext"]["authorizer"]["writeTypes"] = "Observation".into();
    let (status, _) = call_value(&api, no_grant).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_resource_without_what_the_pipeline_profiles_require_is_rejected() {
    let api = api();
    let mut e = event("apigw-v1-put-patient.json");
    let mut patient: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
    patient.as_object_mut().unwrap().remove("identifier");
    e["body"] = patient.to_string().into();
    let (status, outcome) = call_value(&api, e).await;
    assert_eq!(status, 422, "{outcome}");
    let errors: Vec<&str> = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| i["diagnostics"].as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 1, "{outcome}");
    assert!(
        errors[0].ends_with(
            "Patient.identifier: minimum required = 1, but only found 0 (from https://fhir-unify.dev/fhir/StructureDefinition/Patient)"
        ),
        "{outcome}"
    );
    assert_eq!(count_events(&api), 0, "nothing published");
}
