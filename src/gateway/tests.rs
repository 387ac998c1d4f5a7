use std::collections::BTreeSet;

use serde_json::json;

use super::*;
use crate::model::{Lineage, RecordKey, ResourceChange, ResourceOp, Sequence};

fn change(t: &str, id: &str, op: ResourceOp, seq: &str) -> ResourceChange {
    ResourceChange {
        target: target(t, id),
        op,
        lineage: Lineage {
            source: "app".into(),
            entity: "e".into(),
            key: RecordKey::from_pairs([("pk", json!(id))]),
            sequence: Sequence::parse(seq).unwrap(),
            observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
        },
    }
}

fn put(t: &str, id: &str, body: Value) -> ResourceChange {
    let mut resource = body;
    resource["resourceType"] = json!(t);
    change(t, id, ResourceOp::Upsert { resource }, "1")
}

async fn gateway() -> Gateway {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    for i in 1..=5u32 {
        store
            .apply(&[put(
                "Patient",
                &format!("p{i}"),
                json!({"name": [{"family": format!("Fam{i}")}], "gender": if i.is_multiple_of(2) { "male" } else { "female" }}),
            )])
            .await
            .unwrap();
    }
    store
        .apply(&[put(
            "Patient",
            "p1",
            json!({"name": [{"family": "Fam1b"}], "gender": "female"}),
        )])
        .await
        .unwrap();
    store
        .apply(&[change("Patient", "p5", ResourceOp::Delete, "2")])
        .await
        .unwrap();
    store
        .apply(&[put(
            "Observation",
            "o1",
            json!({"status": "final", "subject": {"reference": "Patient/p1"}}),
        )])
        .await
        .unwrap();
    Gateway::sqlite(store)
}

fn grant(read: &[&str], search: &[&str]) -> AccessGrant {
    AccessGrant {
        partner: "acme".into(),
        read: read
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>(),
        search: search.iter().map(|s| (*s).to_owned()).collect(),
        write: BTreeSet::new(),
    }
}

fn get(path: &str, query: &[(&str, &str)]) -> FhirRequest {
    FhirRequest {
        method: "GET".into(),
        path: path.into(),
        query: query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        if_none_match: None,
        base_url: "https://fhir.example/r4".into(),
        grant: Some(grant(
            &["Patient", "Observation"],
            &["Patient", "Observation"],
        )),
    }
}

fn body(r: &FhirResponse) -> Value {
    serde_json::from_str(r.body.as_deref().unwrap()).unwrap()
}

fn assert_outcome(r: &FhirResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some(FHIR_JSON));
    let b = body(r);
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert_eq!(b["issue"][0]["code"], code, "{b}");
}

#[tokio::test]
async fn read_vread_etag_and_conditional_read() {
    let gw = gateway().await;
    let r = gw.handle(&get("Patient/p1", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    assert_eq!(r.header("content-type"), Some(FHIR_JSON));
    let lm = r.header("last-modified").unwrap();
    assert!(lm.ends_with(" GMT") && lm.len() == 29, "{lm}");
    assert_eq!(body(&r)["name"][0]["family"], "Fam1b");
    assert_eq!(body(&r)["meta"]["versionId"], "2");

    let mut req = get("Patient/p1", &[]);
    req.if_none_match = Some("W/\"2\"".into());
    let r = gw.handle(&req).await;
    assert_eq!((r.status, r.body.as_deref()), (304, None));
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    req.if_none_match = Some("W/\"1\"".into());
    assert_eq!(gw.handle(&req).await.status, 200);

    let r = gw.handle(&get("Patient/p1/_history/1", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(body(&r)["name"][0]["family"], "Fam1");
    assert_eq!(r.header("etag"), Some("W/\"1\""));

    let mut head = get("Patient/p1", &[]);
    head.method = "HEAD".into();
    let r = gw.handle(&head).await;
    assert_eq!((r.status, r.body.is_none()), (200, true));
}

#[tokio::test]
async fn unknown_deleted_and_bad_requests_are_operation_outcomes() {
    let gw = gateway().await;
    assert_outcome(
        &gw.handle(&get("Patient/nope", &[])).await,
        404,
        "not-found",
    );
    assert_outcome(
        &gw.handle(&get("Patient/p1/_history/9", &[])).await,
        404,
        "not-found",
    );
    assert_outcome(
        &gw.handle(&get("Patient/p1/_history/x", &[])).await,
        404,
        "not-found",
    );
    assert_outcome(
        &gw.handle(&get("Patient/nope/_history", &[])).await,
        404,
        "not-found",
    );
    assert_outcome(&gw.handle(&get("patient/p1", &[])).await, 404, "not-found");
    let r = gw.handle(&get("Patient/p5", &[])).await;
    assert_outcome(&r, 410, "deleted");
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    assert_outcome(
        &gw.handle(&get("Patient/p5/_history/2", &[])).await,
        410,
        "deleted",
    );
    assert_eq!(
        gw.handle(&get("Patient/p5/_history/1", &[])).await.status,
        200
    );
    assert_outcome(
        &gw.handle(&get("Patient", &[("nope", "1")])).await,
        400,
        "invalid",
    );
    assert_outcome(
        &gw.handle(&get("Patient", &[("birthdate", "soon")])).await,
        400,
        "invalid",
    );
    assert_outcome(
        &gw.handle(&get("Patient", &[("_cursor", "aGk")])).await,
        400,
        "invalid",
    );
    assert_outcome(
        &gw.handle(&get("Patient/p1", &[("x", "1")])).await,
        400,
        "invalid",
    );
    assert_outcome(
        &gw.handle(&get("Patient/p1/a/b/c", &[])).await,
        400,
        "invalid",
    );
    assert_outcome(&gw.handle(&get("", &[])).await, 400, "invalid");
    let mut post = get("Patient", &[]);
    post.method = "POST".into();
    assert_outcome(&gw.handle(&post).await, 405, "not-supported");
}

#[tokio::test]
async fn search_pages_with_next_links_until_the_end() {
    let gw = gateway().await;
    let mut req = get("Patient", &[("_count", "2"), ("gender", "female,male")]);
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let r = gw.handle(&req).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let b = body(&r);
        assert_eq!(
            (b["type"].as_str(), b["total"].as_u64()),
            (Some("searchset"), Some(4))
        );
        for e in b["entry"].as_array().unwrap() {
            assert_eq!(e["search"]["mode"], "match");
            assert!(
                e["fullUrl"]
                    .as_str()
                    .unwrap()
                    .starts_with("https://fhir.example/r4/Patient/")
            );
            ids.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        let links = b["link"].as_array().unwrap();
        assert_eq!(links[0]["relation"], "self");
        let Some(next) = links.iter().find(|l| l["relation"] == "next") else {
            break;
        };
        let url = next["url"].as_str().unwrap();
        let (path, q) = url.split_once('?').unwrap();
        assert_eq!(path, "https://fhir.example/r4/Patient");
        assert!(
            q.contains("gender=female%2Cmale") && q.contains("_count=2"),
            "{q}"
        );
        req.query = crate::handlers::gateway::parse_query(q);
    }
    assert_eq!(ids, ["p1", "p2", "p3", "p4"], "deleted p5 is not found");
    assert_eq!(pages, 2);

    let r = gw.handle(&get("Patient", &[("_count", "0")])).await;
    let b = body(&r);
    assert_eq!(
        (b["total"].as_u64(), b["entry"].as_array().map(Vec::len)),
        (Some(4), Some(0))
    );
    let r = gw
        .handle(&get(
            "Observation",
            &[("patient", "p1"), ("status", "final")],
        ))
        .await;
    assert_eq!(body(&r)["total"], 1);
    let r = gw
        .handle(&get("Patient", &[("family", "fam1b"), ("_format", "json")]))
        .await;
    assert_eq!(body(&r)["entry"][0]["resource"]["id"], "p1");
}

#[tokio::test]
async fn history_instance_type_and_since() {
    let gw = gateway().await;
    let r = gw.handle(&get("Patient/p1/_history", &[])).await;
    let b = body(&r);
    assert_eq!(
        (b["type"].as_str(), b["total"].as_u64()),
        (Some("history"), Some(2))
    );
    assert_eq!(b["entry"][0]["response"]["etag"], "W/\"2\"");
    assert_eq!(b["entry"][1]["response"]["status"], "201");

    let r = gw
        .handle(&get("Patient/_history", &[("_count", "3")]))
        .await;
    let b = body(&r);
    assert_eq!(b["total"], 7, "5 creates, 1 update, 1 delete");
    assert_eq!(b["entry"].as_array().unwrap().len(), 3);
    assert_eq!(b["entry"][0]["request"]["method"], "DELETE");
    assert!(b["entry"][0].get("resource").is_none());
    assert!(
        b["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );

    let r = gw
        .handle(&get(
            "Patient/_history",
            &[("_since", "2999-01-01T00:00:00Z")],
        ))
        .await;
    assert_eq!(body(&r)["total"], 0);
    assert_outcome(
        &gw.handle(&get("Patient/_history", &[("_since", "x")]))
            .await,
        400,
        "invalid",
    );
}

#[tokio::test]
async fn grants_decide_every_interaction_and_metadata_is_open() {
    let gw = gateway().await;
    let mut req = get("metadata", &[]);
    req.grant = None;
    let r = gw.handle(&req).await;
    assert_eq!(r.status, 200);
    let cs = body(&r);
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let patient = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    let names: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "_id",
        "_lastUpdated",
        "identifier",
        "name",
        "family",
        "given",
        "birthdate",
        "gender",
    ] {
        assert!(names.contains(&p), "{p}");
    }

    for path in [
        "Patient/p1",
        "Patient",
        "Patient/_history",
        "Patient/p1/_history/1",
    ] {
        let mut req = get(path, &[]);
        req.grant = None;
        assert_outcome(&gw.handle(&req).await, 401, "login");
        req.grant = Some(grant(&["Observation"], &["Observation"]));
        assert_outcome(&gw.handle(&req).await, 403, "forbidden");
    }
    // Read without search: reads pass, searches do not.
    let mut req = get("Patient/p1", &[]);
    req.grant = Some(grant(&["Patient"], &[]));
    assert_eq!(gw.handle(&req).await.status, 200);
    req.path = "Patient".into();
    assert_outcome(&gw.handle(&req).await, 403, "forbidden");
    // Search without read: a searchset would hand out resources, so it is withheld.
    req.grant = Some(grant(&[], &["Patient"]));
    let b = body(&gw.handle(&req).await);
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["search"]["mode"], "outcome");
    assert_eq!(entries[0]["resource"]["issue"][0]["code"], "suppressed");
}

/// `serve`'s authorizer cache in front of the real authorizer, over HTTP: an allow is
/// answered from the cache (the same grant, so the same resources), a bad token is denied
/// (and the deny cached), no token is 401 and never cached, TTL 0 verifies every request.
#[tokio::test]
async fn serve_caches_authorizer_answers_per_token() {
    use std::time::Duration;

    use server::{LocalApi, bind, router_with_cache};

    use crate::config::PipelineConfig;
    use authcache::{AuthorizerCache, CacheStats};

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
    let yaml = format!(
        "sources: [{{name: app, dynamodb: {{table: T}}, entities: {{e: {{key: [k], mapping: m.yaml}}}}}}]\npartners:\n  - {{ name: acme, issuer: 'https://idp.acme.example', audience: 'https://fhir.example/r4', jwks: '{}', read: [Patient] }}\n",
        dir.join("acme-jwks.json").display()
    );
    let config = PipelineConfig::from_yaml(&yaml, std::path::Path::new("t.yaml")).unwrap();
    let sign = |exp_in: i64, scope: &str| {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({"iss": "https://idp.acme.example", "aud": "https://fhir.example/r4",
            "exp": now + exp_in, "nbf": now - 5, "scope": scope});
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("acme-1".into());
        let pem = std::fs::read(dir.join("acme-rs256.pem")).unwrap();
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        )
    };
    let good = sign(300, "system/Patient.rs");
    let expired = sign(-3600, "system/Patient.rs");
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });

    for ttl in [300, 0] {
        let api = LocalApi {
            gateway: gateway().await,
            authorizer: auth::Authorizer::from_config(&config).unwrap(),
            ingest: None,
            events: None,
        };
        let cache = Arc::new(AuthorizerCache::new(Duration::from_secs(ttl), 100));
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let app = router_with_cache(api, cache.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let base = format!("http://{addr}");
        let get = move |path: &str, auth: Option<String>| {
            let url = format!("{base}/{path}");
            async move {
                tokio::task::spawn_blocking(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let mut req = agent.get(&url);
                    if let Some(a) = auth {
                        req = req.header("Authorization", &a);
                    }
                    let mut r = req.call().unwrap();
                    let body = r.body_mut().read_to_string().unwrap();
                    (r.status().as_u16(), body)
                })
                .await
                .unwrap()
            }
        };
        for _ in 0..3 {
            let (status, body) = get("Patient/p2", Some(good.clone())).await;
            assert_eq!(status, 200, "{body}");
            // The cached grant still allows only its types.
            let (status, _) = get("Observation/o1", Some(good.clone())).await;
            assert_eq!(status, 403);
        }
        for bad in [&expired, &tampered] {
            for _ in 0..2 {
                assert_eq!(get("Patient/p2", Some(bad.clone())).await.0, 403);
            }
        }
        for _ in 0..2 {
            assert_eq!(get("Patient/p2", None).await.0, 401);
        }
        assert_eq!(get("metadata", None).await.0, 200);
        if ttl == 0 {
            assert_eq!(cache.stats(), CacheStats::default());
            assert!(cache.is_empty());
        } else {
            // 6 requests with the good token: one verification; 2 bad tokens twice: one
            // verification each; no token: not looked up.
            assert_eq!(
                cache.stats(),
                CacheStats {
                    hits: 5 + 2,
                    misses: 1 + 2
                }
            );
            assert_eq!(cache.len(), 3);
        }
        server.abort();
    }
}
