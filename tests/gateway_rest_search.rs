//! The partner gateway over a `rest` store (HealthLake mode): searches are forwarded to the
//! FHIR server — here the project's own FHIR API over SQLite — every returned resource is
//! checked against the partner's grant again (deny by default), the server's paging links
//! come back as links to the gateway's own base, and a cursor that is not a page of the same
//! search is refused.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod partners;
}

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use fhir_unify::gateway::{AccessGrant, FhirRequest, FhirResponse, Gateway};
use fhir_unify::model::{Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef, Sequence};
use fhir_unify::store::FhirStore;
use fhir_unify::store::rest::{RestAuth, RestOptions, RestStore};
use serde_json::{Value, json};

const FRONT: &str = "https://partners.example/fhir";

async fn server() -> (RestStore, Box<dyn std::any::Any + Send>) {
    let (base, token, guard) =
        common::partners::fhir_api(&["Patient", "Basic", "Observation"], "system/*.cruds").await;
    let options = RestOptions {
        backoff: Duration::from_millis(10),
        ..RestOptions::default()
    };
    let store = RestStore::new(&base, RestAuth::Bearer(token), options).unwrap();
    (store, guard)
}

fn change(t: &str, id: &str, op: ResourceOp, seq: u64) -> ResourceChange {
    ResourceChange {
        target: ResourceRef {
            resource_type: t.into(),
            id: id.into(),
        },
        op,
        lineage: Lineage {
            source: "app".into(),
            entity: "e".into(),
            key: RecordKey::from_pairs([("pk", json!(id))]),
            sequence: Sequence::from(seq),
            observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
        },
    }
}

async fn seeded() -> (Gateway, Box<dyn std::any::Any + Send>) {
    let (store, guard) = server().await;
    for i in 1..=5 {
        let id = format!("p{i}");
        store
            .apply(&[change(
                "Patient",
                &id,
                ResourceOp::Upsert {
                    resource: json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("Fam{i}")}]}),
                },
                1,
            )])
            .await
            .unwrap();
    }
    store
        .apply(&[change("Patient", "p5", ResourceOp::Delete, 2)])
        .await
        .unwrap();
    store
        .apply(&[change(
            "Observation",
            "o1",
            ResourceOp::Upsert {
                resource: json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}),
            },
            1,
        )])
        .await
        .unwrap();
    (Gateway::rest(Arc::new(store)), guard)
}

fn grant(read: &[&str], search: &[&str]) -> AccessGrant {
    AccessGrant {
        partner: "acme".into(),
        read: read.iter().map(|s| (*s).to_owned()).collect(),
        search: search.iter().map(|s| (*s).to_owned()).collect(),
        write: BTreeSet::new(),
    }
}

fn get(path: &str, query: Vec<(String, String)>, grant: &AccessGrant) -> FhirRequest {
    FhirRequest {
        method: "GET".into(),
        path: path.into(),
        query,
        if_none_match: None,
        base_url: FRONT.into(),
        grant: Some(grant.clone()),
    }
}

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn body(r: &FhirResponse) -> Value {
    serde_json::from_str(r.body.as_deref().unwrap()).unwrap()
}

/// A link of ours, split back into path and decoded query (what a client sends).
fn follow(url: &str) -> (String, Vec<(String, String)>) {
    let rest = url.strip_prefix(&format!("{FRONT}/")).unwrap();
    let (path, query) = rest.split_once('?').unwrap();
    let pairs = query
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            let d = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .unwrap()
                    .into_owned()
            };
            (d(k), d(v))
        })
        .collect();
    (path.to_owned(), pairs)
}

fn next_link(b: &Value) -> Option<String> {
    b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_search_is_forwarded_and_paged_through_the_gateways_own_links() {
    let (gateway, _guard) = seeded().await;
    let g = grant(&["Patient"], &["Patient"]);
    let mut request = get("Patient", q(&[("_count", "2")]), &g);
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let r = gateway.handle(&request).await;
        assert_eq!(r.status, 200, "{:?}", body(&r));
        let b = body(&r);
        assert_eq!(b["type"], "searchset");
        for e in b["entry"].as_array().unwrap() {
            assert_eq!(e["search"]["mode"], "match");
            let resource = &e["resource"];
            assert!(e["fullUrl"].as_str().unwrap().starts_with(FRONT));
            // The store's lineage is taken off, as on a read.
            assert!(resource["meta"].get("extension").is_none(), "{resource}");
            ids.push(resource["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match next_link(&b) {
            Some(url) => {
                assert!(url.starts_with(&format!("{FRONT}/Patient?")), "{url}");
                let (path, query) = follow(&url);
                request = get(&path, query, &g);
            }
            None => break,
        }
    }
    assert_eq!(
        ids,
        vec!["p1", "p2", "p3", "p4"],
        "the deleted p5 is not found"
    );
    assert_eq!(pages, 2);

    // A filter is forwarded as given.
    let r = gateway
        .handle(&get("Patient", q(&[("family", "Fam2")]), &g))
        .await;
    let b = body(&r);
    assert_eq!(b["total"], 1);
    assert_eq!(b["entry"][0]["resource"]["id"], "p2");
    // A parameter this API does not take is refused before anything is sent.
    let r = gateway
        .handle(&get("Patient", q(&[("_include", "Patient:link")]), &g))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn every_returned_resource_is_checked_against_the_grant() {
    let (gateway, _guard) = seeded().await;
    // No search grant on the type: refused.
    let r = gateway
        .handle(&get("Patient", vec![], &grant(&["Patient"], &[])))
        .await;
    assert_eq!(r.status, 403);
    // May search, may not read: every resource withheld, with an outcome saying so.
    let r = gateway
        .handle(&get("Patient", vec![], &grant(&[], &["Patient"])))
        .await;
    assert_eq!(r.status, 200);
    let b = body(&r);
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{b}");
    assert_eq!(entries[0]["search"]["mode"], "outcome");
    // The REST store's bookkeeping resources are never returned, even with Basic access.
    let r = gateway
        .handle(&get("Basic", vec![], &grant(&["Basic"], &["Basic"])))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        body(&r)["entry"].as_array().unwrap().is_empty(),
        "{}",
        body(&r)
    );
}

#[tokio::test]
async fn a_cursor_that_is_not_a_page_of_the_same_search_is_refused() {
    let (gateway, _guard) = seeded().await;
    let g = grant(&["Patient", "Observation"], &["Patient"]);
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    for forged in [
        "Observation?_count=5",
        "Patient?_count=5&_revinclude=Observation:subject",
        "Patient?_count=5&%5Finclude=Patient:link",
        "http://elsewhere/Patient",
        "/Patient?_count=5",
    ] {
        let r = gateway
            .handle(&get("Patient", q(&[("_cursor", &b64(forged))]), &g))
            .await;
        assert_eq!(r.status, 400, "{forged}: {:?}", body(&r));
        assert_eq!(body(&r)["resourceType"], "OperationOutcome");
    }
}

#[tokio::test]
async fn history_reads_through_the_server_deletes_included() {
    let (gateway, _guard) = seeded().await;
    let g = grant(&["Patient"], &["Patient"]);
    let r = gateway
        .handle(&get("Patient/p5/_history", vec![], &g))
        .await;
    assert_eq!(r.status, 200, "{:?}", body(&r));
    let b = body(&r);
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{b}");
    assert_eq!(entries[0]["request"]["method"], "DELETE");
}
