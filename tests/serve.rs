//! `fhir-unify serve` on an ephemeral loopback port, read with a real HTTP client (ureq):
//! metadata without a token, 401/403 refusals, read with ETag and 304, paged search by
//! following `next` links, history.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod partners;
    pub mod server;
}

use serde_json::Value;

use common::partners::{Fault, authorization};
use common::server::start;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET with optional headers: status, a header map of interest, and the JSON body.
fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, Option<Value>) {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().unwrap();
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.body_mut().read_to_string().unwrap();
    let body = (!text.is_empty()).then(|| serde_json::from_str(&text).unwrap());
    (status, etag, body)
}

#[tokio::test]
async fn serve_answers_a_real_http_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let base = &server.base;

    let (status, _, body) = get(&format!("{base}/metadata"), &[]);
    assert_eq!(status, 200);
    assert_eq!(body.unwrap()["resourceType"], "CapabilityStatement");

    let (status, _, body) = get(&format!("{base}/Patient/x1"), &[]);
    assert_eq!(status, 401);
    assert_eq!(body.unwrap()["resourceType"], "OperationOutcome");
    let expired = authorization("acme", "system/*.rs", Fault::Expired).unwrap();
    let (status, _, _) = get(
        &format!("{base}/Patient/x1"),
        &[("Authorization", &expired)],
    );
    assert_eq!(status, 403);

    let token = authorization("acme", "system/*.rs", Fault::None).unwrap();
    let auth = [("Authorization", token.as_str())];
    let (status, etag, body) = get(&format!("{base}/Patient/x1"), &auth);
    assert_eq!(status, 200);
    assert_eq!(etag.as_deref(), Some("W/\"1\""));
    assert_eq!(body.unwrap()["id"], "x1");
    let (status, _, body) = get(
        &format!("{base}/Patient/x1"),
        &[auth[0], ("If-None-Match", "W/\"1\"")],
    );
    assert_eq!((status, body), (304, None));
    // acme may not read Observation.
    let (status, _, _) = get(&format!("{base}/Observation/x1"), &auth);
    assert_eq!(status, 403);
    let (status, _, _) = get(&format!("{base}/Patient/none"), &auth);
    assert_eq!(status, 404);

    let mut url = format!("{base}/Patient?gender=female&_count=2");
    let mut ids = Vec::new();
    loop {
        let (status, _, body) = get(&url, &auth);
        assert_eq!(status, 200);
        let b = body.unwrap();
        assert_eq!(b["total"], 5, "x1 and p001, p003, p005, p007");
        for e in b["entry"].as_array().unwrap() {
            ids.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => {
                url = next["url"].as_str().unwrap().to_owned();
                assert!(url.starts_with(base.as_str()), "{url}");
            }
            None => break,
        }
    }
    assert_eq!(ids, ["p001", "p003", "p005", "p007", "x1"]);

    let (status, _, body) = get(&format!("{base}/Patient/p001/_history"), &auth);
    assert_eq!(status, 200);
    assert_eq!(body.unwrap()["type"], "history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_a_fhir_server_reads_and_searches_through_it() {
    use fhir_unify::store::FhirStore;
    use fhir_unify::store::rest::{RestAuth, RestOptions, RestStore};
    // The FHIR server (the project's API over a SQLite store of its own), holding one Patient
    // written through the REST store, as a pipeline on that server would have written it.
    let (remote, remote_token, _remote) =
        common::partners::fhir_api(&["Patient", "Basic"], "system/*.cruds").await;
    let writer = RestStore::new(
        &remote,
        RestAuth::Bearer(remote_token.clone()),
        RestOptions::default(),
    )
    .unwrap();
    writer
        .apply(&[common::partners::upsert(serde_json::json!({
            "resourceType": "Patient", "id": "on-server", "gender": "other",
            "name": [{"family": "Remote", "given": ["Only"]}]
        }))])
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}store:\n  rest: {{ base: \"{remote}\", auth: bearer, token_env: SERVE_TEST_SERVER_TOKEN }}\n",
        common::partners::pipeline_yaml()
    );
    let server = common::server::serve(
        dir.path(),
        &yaml,
        &[("SERVE_TEST_SERVER_TOKEN", &remote_token)],
    );
    let acme = authorization("acme", "system/Patient.rs", Fault::None).unwrap();
    let auth = [("Authorization", acme.as_str())];
    let (status, etag, body) = get(&format!("{}/Patient/on-server", server.base), &auth);
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(etag.as_deref(), Some("W/\"1\""));
    assert_eq!(body.unwrap()["name"][0]["family"], "Remote");
    let (status, _, body) = get(&format!("{}/Patient?family=Remote", server.base), &auth);
    assert_eq!(status, 200);
    let bundle = body.unwrap();
    assert_eq!(
        bundle["entry"][0]["resource"]["id"], "on-server",
        "{bundle}"
    );
    assert!(
        !dir.path().join("data/store.db").exists(),
        "the embedded store is neither read nor created"
    );
}
