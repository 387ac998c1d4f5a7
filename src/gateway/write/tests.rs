//! The write interactions: what they refuse and why, and what they answer.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::store::sqlite::SqliteStore;

fn gateway(writes: bool) -> Gateway {
    let g = Gateway::sqlite(Arc::new(SqliteStore::open_in_memory().unwrap()));
    if writes { g.allow_writes() } else { g }
}

fn grant(write: &[&str]) -> AccessGrant {
    let all: BTreeSet<String> = ["Patient", "Observation"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    AccessGrant {
        partner: "acme".into(),
        read: all.clone(),
        search: all,
        write: write.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn request(method: &str, path: &str, grant: AccessGrant) -> FhirRequest {
    FhirRequest {
        method: method.into(),
        path: path.into(),
        query: Vec::new(),
        if_none_match: None,
        base_url: "https://fhir.example/r4".into(),
        grant: Some(grant),
    }
}

async fn send(
    g: &Gateway,
    req: &FhirRequest,
    body: Option<&Value>,
    if_match: Option<&str>,
) -> (u16, Value, FhirResponse) {
    let text = body.map(Value::to_string);
    let r = g
        .handle_write(
            req,
            WriteParts {
                body: text.as_deref(),
                if_match,
            },
        )
        .await;
    let body = r
        .body
        .as_deref()
        .map_or(Value::Null, |b| serde_json::from_str(b).unwrap());
    (r.status, body, r)
}

fn diagnostics(body: &Value) -> String {
    body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn writes_are_off_unless_allowed_and_need_the_write_grant() {
    let p = json!({"resourceType": "Patient", "id": "a"});
    let (status, body, _) = send(
        &gateway(false),
        &request("PUT", "Patient/a", grant(&["Patient"])),
        Some(&p),
        None,
    )
    .await;
    assert_eq!(status, 405);
    assert!(diagnostics(&body).contains("read-only"));
    let g = gateway(true);
    let (status, body, _) =
        send(&g, &request("PUT", "Patient/a", grant(&[])), Some(&p), None).await;
    assert_eq!(status, 403);
    assert!(
        diagnostics(&body).contains("may not write Patient"),
        "{body}"
    );
    let mut anonymous = request("PUT", "Patient/a", grant(&["Patient"]));
    anonymous.grant = None;
    assert_eq!(send(&g, &anonymous, Some(&p), None).await.0, 401);
    // A transaction with one type not granted writes nothing.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": p, "request": {"method": "PUT", "url": "Patient/a"}},
        {"request": {"method": "DELETE", "url": "Observation/o"}},
    ]});
    let (status, _, _) = send(
        &g,
        &request("POST", "", grant(&["Patient"])),
        Some(&bundle),
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        g.store
            .read(&target("Patient", "a"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn put_and_delete_keep_versions_and_check_if_match() {
    let g = gateway(true);
    let w = grant(&["Patient"]);
    let p = json!({"resourceType": "Patient", "id": "a", "gender": "female"});
    let mut create = request("PUT", "Patient/a", w.clone());
    create.if_none_match = Some("*".into());
    let (status, body, r) = send(&g, &create, Some(&p), None).await;
    assert_eq!(status, 201);
    assert_eq!(body["meta"]["versionId"], "1");
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert_eq!(
        r.header("location"),
        Some("https://fhir.example/r4/Patient/a/_history/1")
    );
    // Create-only again: it exists now.
    let (status, body, _) = send(&g, &create, Some(&p), None).await;
    assert_eq!(status, 412);
    assert!(diagnostics(&body).contains("version 1 exists"), "{body}");
    // Update on a stale version: refused, naming both.
    let q = json!({"resourceType": "Patient", "gender": "male"});
    let (status, body, _) = send(
        &g,
        &request("PUT", "Patient/a", w.clone()),
        Some(&q),
        Some("W/\"7\""),
    )
    .await;
    assert_eq!(status, 412);
    assert!(
        diagnostics(&body).contains("\"7\", the current version is 1"),
        "{body}"
    );
    let (status, body, _) = send(
        &g,
        &request("PUT", "Patient/a", w.clone()),
        Some(&q),
        Some("W/\"1\""),
    )
    .await;
    assert_eq!(
        (status, body["meta"]["versionId"].as_str()),
        (200, Some("2"))
    );
    // The same content again: no version.
    let (status, body, _) = send(&g, &request("PUT", "Patient/a", w.clone()), Some(&q), None).await;
    assert_eq!(
        (status, body["meta"]["versionId"].as_str()),
        (200, Some("2"))
    );
    let (status, _, r) = send(
        &g,
        &request("DELETE", "Patient/a", w.clone()),
        None,
        Some("W/\"1\""),
    )
    .await;
    assert_eq!(status, 412);
    assert!(r.body.is_some());
    let (status, _, r) = send(
        &g,
        &request("DELETE", "Patient/a", w.clone()),
        None,
        Some("W/\"2\""),
    )
    .await;
    assert_eq!((status, r.header("etag")), (204, Some("W/\"3\"")));
    let read = send(&g, &request("GET", "Patient/a", w.clone()), None, None).await;
    assert_eq!(read.0, 410);
    // If-Match on the delete re-creates it.
    let (status, body, _) = send(
        &g,
        &request("PUT", "Patient/a", w.clone()),
        Some(&p),
        Some("W/\"3\""),
    )
    .await;
    assert_eq!(
        (status, body["meta"]["versionId"].as_str()),
        (201, Some("4"))
    );
    // The writes are changes of the API's own source.
    let v = g
        .store
        .read(&target("Patient", "a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.lineage.unwrap().source, WRITE_SOURCE);
}

#[tokio::test]
async fn bad_writes_are_refused_naming_the_place() {
    let g = gateway(true);
    let w = grant(&["Patient"]);
    let cases: Vec<(&str, &str, Option<Value>, &str)> = vec![
        ("PUT", "Patient/a", None, "no body"),
        (
            "PUT",
            "Patient/a",
            Some(json!({"resourceType": "Observation"})),
            "resourceType is not Patient",
        ),
        (
            "PUT",
            "Patient/a",
            Some(json!({"resourceType": "Patient", "id": "b"})),
            "id differs",
        ),
        (
            "PUT",
            "Patient/a_b",
            Some(json!({"resourceType": "Patient"})),
            "not a FHIR id",
        ),
        (
            "POST",
            "Patient",
            Some(json!({"resourceType": "Patient"})),
            "server-assigned id",
        ),
        (
            "POST",
            "",
            Some(json!({"resourceType": "Patient"})),
            "takes a Bundle",
        ),
        (
            "POST",
            "",
            Some(json!({"resourceType": "Bundle", "type": "batch"})),
            "\"batch\"",
        ),
        (
            "POST",
            "",
            Some(
                json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "PATCH", "url": "Patient/a"}}]}),
            ),
            "entry 0 (Patient/a): request.method Some(\"PATCH\")",
        ),
        (
            "POST",
            "",
            Some(
                json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": "Patient"}}]}),
            ),
            "entry 0: request.url \"Patient\" is not Type/id",
        ),
        (
            "POST",
            "",
            Some(
                json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": "Patient/a"}},
            {"request": {"method": "DELETE", "url": "https://fhir.example/r4/Patient/a"}}]}),
            ),
            "names Patient/a twice",
        ),
        (
            "POST",
            "",
            Some(
                json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "PUT", "url": "Patient/a"}}]}),
            ),
            "a PUT without resource",
        ),
    ];
    for (method, path, body, expected) in cases {
        let (status, out, _) =
            send(&g, &request(method, path, w.clone()), body.as_ref(), None).await;
        assert!(matches!(status, 400 | 405), "{method} {path}: {status}");
        assert!(
            diagnostics(&out).contains(expected),
            "{method} {path}: {out}"
        );
    }
    let r = g
        .handle_write(
            &request("PUT", "Patient/a", w),
            WriteParts {
                body: Some("{not json"),
                if_match: None,
            },
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.unwrap().contains("not JSON (line 1"));
}

#[tokio::test]
async fn a_transaction_is_all_or_nothing() {
    let g = gateway(true);
    let w = grant(&["Patient", "Observation"]);
    let bundle = |if_match: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}, "request": {"method": "PUT", "url": "Patient/a", "ifNoneMatch": "*"}},
            {"resource": {"resourceType": "Observation", "id": "o", "status": "final", "subject": {"reference": "Patient/a"}},
             "request": {"method": "PUT", "url": "Observation/o", "ifMatch": if_match}},
        ]})
    };
    // The second entry's precondition fails: nothing is written.
    let (status, body, _) = send(
        &g,
        &request("POST", "", w.clone()),
        Some(&bundle("W/\"1\"")),
        None,
    )
    .await;
    assert_eq!(status, 412);
    assert!(
        diagnostics(&body).contains("entry 1 (Observation/o)"),
        "{body}"
    );
    assert!(
        g.store
            .read(&target("Patient", "a"))
            .await
            .unwrap()
            .is_none()
    );
    let mut ok = bundle("");
    ok["entry"][1]["request"]
        .as_object_mut()
        .unwrap()
        .remove("ifMatch");
    let (status, body, _) = send(&g, &request("POST", "", w), Some(&ok), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "transaction-response");
    assert_eq!(body["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(body["entry"][1]["response"]["etag"], "W/\"1\"");
    assert_eq!(
        body["entry"][1]["response"]["location"],
        "Observation/o/_history/1"
    );
    assert!(
        body["entry"][1]["response"]["lastModified"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
}
