//! One suite of search and paged-history cases, run against every store the partner gateway
//! can read: the SQLite store and the DynamoDB store (against a one-request-at-a-time moto, as
//! `tests/store_suite.rs` does), through the `SearchStore` port and through the gateway itself.
//! Both must give the same answers: the cases are those of `src/store/sqlite/search.rs`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod moto;
    pub mod serial_moto;
}

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use common::serial_moto::SerialMoto;
use fhir_unify::gateway::{AccessGrant, FhirRequest, FhirResponse, Gateway};
use fhir_unify::model::{Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef, Sequence};
use fhir_unify::store::dynamodb::DynamoStore;
use fhir_unify::store::search::{
    Criterion, Filter, HistoryQuery, Prefix, SearchPage, SearchQuery, StringMode, date_range,
};
use fhir_unify::store::sqlite::{Clock, SqliteStore};
use fhir_unify::store::{FhirStore, SearchStore, StoreError};
use serde_json::{Value, json};

/// A store under test through both ports, and what keeps it alive.
struct Stores {
    store: Arc<dyn FhirStore>,
    search: Arc<dyn SearchStore>,
    /// The DynamoDB client and table, to look at the items themselves.
    dynamo: Option<(aws_sdk_dynamodb::Client, String)>,
    _guard: Box<dyn std::any::Any + Send>,
}

/// A clock one second further on each call, from 2024-01-01.
fn clock() -> Clock {
    let n = Arc::new(AtomicI64::new(0));
    Arc::new(move || {
        let i = n.fetch_add(1, Ordering::SeqCst);
        "2024-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::seconds(i)
    })
}

fn sqlite() -> Stores {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap().with_clock(clock()));
    Stores {
        store: store.clone(),
        search: store,
        dynamo: None,
        _guard: Box::new(()),
    }
}

const TABLE: &str = "fhir-store";

async fn dynamodb() -> Stores {
    let moto = SerialMoto::start();
    let config = common::aws::sdk(&moto.endpoint).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let store = Arc::new(DynamoStore::new(client.clone(), TABLE).with_clock(clock()));
    store.create_table().await.unwrap();
    Stores {
        store: store.clone(),
        search: store,
        dynamo: Some((client, TABLE.to_owned())),
        _guard: Box::new(moto),
    }
}

fn change(t: &str, id: &str, op: ResourceOp, seq: &str) -> ResourceChange {
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
            sequence: Sequence::parse(seq).unwrap(),
            observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
        },
    }
}

fn put(t: &str, id: &str, resource: Value) -> ResourceChange {
    change(t, id, ResourceOp::Upsert { resource }, "1")
}

/// Four patients at seconds 0..3 and one observation at second 4.
async fn sample(s: &Stores) {
    let people = [
        ("p1", "Smith", "Anna", "1970-03-01", "female", "M1"),
        ("p2", "Smithers", "Bob", "1980-07-15", "male", "M2"),
        ("p3", "Jones", "Ann", "1990", "female", "M3"),
        ("p4", "50%_off", "Zed", "2000-01-01", "other", "M4"),
    ];
    for (id, family, given, birth, gender, mrn) in people {
        s.store
            .apply(&[put(
                "Patient",
                id,
                json!({"resourceType": "Patient", "name": [{"family": family, "given": [given]}],
                       "birthDate": birth, "gender": gender,
                       "identifier": [{"system": "urn:mrn", "value": mrn}]}),
            )])
            .await
            .unwrap();
    }
    s.store
        .apply(&[put(
            "Observation",
            "o1",
            json!({"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                   "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2021-05-01T10:00:00Z"}),
        )])
        .await
        .unwrap();
}

fn q(t: &str, filters: Vec<(&str, Vec<Criterion>)>) -> SearchQuery {
    SearchQuery {
        resource_type: t.into(),
        filters: filters
            .into_iter()
            .map(|(p, any_of)| Filter {
                param: p.into(),
                any_of,
            })
            .collect(),
        count: 10,
        cursor: None,
    }
}

fn ids(page: &SearchPage) -> Vec<&str> {
    page.matches.iter().map(|m| m.target.id.as_str()).collect()
}

fn s(v: &str, mode: StringMode) -> Criterion {
    Criterion::String {
        value: v.into(),
        mode,
    }
}

fn d(p: Prefix, v: &str) -> Criterion {
    let (low, high) = date_range(v).unwrap();
    Criterion::Date {
        prefix: p,
        low,
        high,
    }
}

fn tok(system: Option<Option<&str>>, code: Option<&str>) -> Criterion {
    Criterion::Token {
        system: system.map(|s| s.map(str::to_owned)),
        code: code.map(str::to_owned),
    }
}

fn r(t: Option<&str>, id: &str) -> Criterion {
    Criterion::Reference {
        resource_type: t.map(str::to_owned),
        id: id.into(),
    }
}

/// A search case: the type, the filters (parameter, values OR-ed) and the ids expected.
type Case = (
    &'static str,
    Vec<(&'static str, Vec<Criterion>)>,
    Vec<&'static str>,
);

mod cases {
    use super::*;

    pub async fn filters_of_every_kind(st: Stores) {
        sample(&st).await;
        let run = |query: SearchQuery| {
            let st = &st;
            async move { st.search.search(&query).await.unwrap() }
        };
        let cases: Vec<Case> = vec![
            (
                "Patient",
                vec![("family", vec![s("smith", StringMode::Prefix)])],
                vec!["p1", "p2"],
            ),
            (
                "Patient",
                vec![("family", vec![s("Smith", StringMode::Exact)])],
                vec!["p1"],
            ),
            (
                "Patient",
                vec![("family", vec![s("smith", StringMode::Exact)])],
                vec![],
            ),
            (
                "Patient",
                vec![("name", vec![s("ann", StringMode::Prefix)])],
                vec!["p1", "p3"],
            ),
            (
                "Patient",
                vec![("name", vec![s("MITH", StringMode::Contains)])],
                vec!["p1", "p2"],
            ),
            (
                "Patient",
                vec![("family", vec![s("50%_", StringMode::Prefix)])],
                vec!["p4"],
            ),
            (
                "Patient",
                vec![("family", vec![s("5_", StringMode::Prefix)])],
                vec![],
            ),
            (
                "Patient",
                vec![("gender", vec![tok(None, Some("female"))])],
                vec!["p1", "p3"],
            ),
            (
                "Patient",
                vec![("identifier", vec![tok(Some(Some("urn:mrn")), Some("M2"))])],
                vec!["p2"],
            ),
            (
                "Patient",
                vec![("identifier", vec![tok(Some(None), Some("M2"))])],
                vec![],
            ),
            (
                "Patient",
                vec![("identifier", vec![tok(Some(Some("urn:mrn")), None)])],
                vec!["p1", "p2", "p3", "p4"],
            ),
            (
                "Patient",
                vec![
                    (
                        "gender",
                        vec![tok(None, Some("male")), tok(None, Some("other"))],
                    ),
                    ("family", vec![s("s", StringMode::Prefix)]),
                ],
                vec!["p2"],
            ),
            (
                "Patient",
                vec![("birthdate", vec![d(Prefix::Eq, "1970-03-01")])],
                vec!["p1"],
            ),
            (
                "Patient",
                vec![("birthdate", vec![d(Prefix::Eq, "1970")])],
                vec!["p1"],
            ),
            (
                "Patient",
                vec![("birthdate", vec![d(Prefix::Lt, "1985")])],
                vec!["p1", "p2"],
            ),
            (
                "Patient",
                vec![("birthdate", vec![d(Prefix::Ge, "1990-06-01")])],
                vec!["p3", "p4"],
            ),
            (
                "Patient",
                vec![("birthdate", vec![d(Prefix::Gt, "1990")])],
                vec!["p4"],
            ),
            (
                "Patient",
                vec![("birthdate", vec![d(Prefix::Le, "1980-07-15")])],
                vec!["p1", "p2"],
            ),
            (
                "Patient",
                vec![("birthdate", vec![d(Prefix::Ne, "1970-03-01")])],
                vec!["p2", "p3", "p4"],
            ),
            (
                "Patient",
                vec![("birthdate", vec![d(Prefix::Sa, "1990-06")])],
                vec!["p4"],
            ),
            (
                "Patient",
                vec![("birthdate", vec![d(Prefix::Eb, "1980")])],
                vec!["p1"],
            ),
            (
                "Patient",
                vec![(
                    "_id",
                    vec![Criterion::Id("p3".into()), Criterion::Id("nope".into())],
                )],
                vec!["p3"],
            ),
            (
                "Patient",
                vec![("_lastUpdated", vec![d(Prefix::Ge, "2024-01-01T00:00:02Z")])],
                vec!["p3", "p4"],
            ),
            (
                "Patient",
                vec![("_lastUpdated", vec![d(Prefix::Lt, "2024-01-01T00:00:01Z")])],
                vec!["p1"],
            ),
            (
                "Patient",
                vec![("_lastUpdated", vec![d(Prefix::Eq, "2024-01-01T00:00:01Z")])],
                vec!["p2"],
            ),
            (
                "Observation",
                vec![("patient", vec![r(Some("Patient"), "p1")])],
                vec!["o1"],
            ),
            (
                "Observation",
                vec![("subject", vec![r(None, "p1")])],
                vec!["o1"],
            ),
            (
                "Observation",
                vec![("subject", vec![r(Some("Group"), "p1")])],
                vec![],
            ),
            (
                "Observation",
                vec![
                    (
                        "code",
                        vec![tok(Some(Some("http://loinc.org")), Some("8867-4"))],
                    ),
                    ("date", vec![d(Prefix::Eq, "2021-05")]),
                    ("status", vec![tok(None, Some("final"))]),
                ],
                vec!["o1"],
            ),
            (
                "Observation",
                vec![(
                    "code",
                    vec![tok(Some(Some("http://snomed.info/sct")), Some("8867-4"))],
                )],
                vec![],
            ),
        ];
        for (t, filters, want) in cases {
            let label = format!("{t} {filters:?}");
            let page = run(q(t, filters)).await;
            assert_eq!(ids(&page), want, "{label}");
            assert_eq!(page.total, want.len() as u64, "{label}");
            assert!(page.next.is_none(), "{label}");
        }
    }

    pub async fn string_prefixes_are_case_insensitive(st: Stores) {
        let families = [
            ("a", "Smith"),
            ("b", "SMITHERS"),
            ("c", "smj"),
            ("d", "Smi"),
            ("e", "Ómar"),
            ("f", "ómarsson"),
            ("g", "Sm"),
        ];
        let changes: Vec<_> = families
            .iter()
            .map(|(id, family)| {
                put(
                    "Patient",
                    id,
                    json!({"resourceType": "Patient", "name": [{"family": family}]}),
                )
            })
            .collect();
        st.store.apply(&changes).await.unwrap();
        for v in [
            "smi", "SMI", "Smith", "smithers", "sm", "óm", "ÓMAR", "smj", "x",
        ] {
            let want: Vec<&str> = families
                .iter()
                .filter(|(_, f)| f.to_lowercase().starts_with(&v.to_lowercase()))
                .map(|(id, _)| *id)
                .collect();
            let page = st
                .search
                .search(&q(
                    "Patient",
                    vec![("family", vec![s(v, StringMode::Prefix)])],
                ))
                .await
                .unwrap();
            assert_eq!(ids(&page), want, "{v}");
        }
    }

    pub async fn pages_are_stable_and_changes_reindex(st: Stores) {
        sample(&st).await;
        let mut query = q("Patient", vec![]);
        query.count = 3;
        let first = st.search.search(&query).await.unwrap();
        assert_eq!((ids(&first), first.total), (vec!["p1", "p2", "p3"], 4));
        let cursor = first.next.clone().unwrap();
        // A new resource sorting before the cursor does not shift the next page.
        st.store
            .apply(&[put("Patient", "p0", json!({"resourceType": "Patient"}))])
            .await
            .unwrap();
        query.cursor = Some(cursor);
        let second = st.search.search(&query).await.unwrap();
        assert_eq!(ids(&second), ["p4"]);
        assert!(second.next.is_none());
        query.count = 0;
        let only_total = st.search.search(&query).await.unwrap();
        assert_eq!((only_total.total, only_total.matches.len()), (5, 0));

        // Filtered pages continue after the cursor too.
        let mut filtered = q(
            "Patient",
            vec![("identifier", vec![tok(Some(Some("urn:mrn")), None)])],
        );
        filtered.count = 3;
        let page = st.search.search(&filtered).await.unwrap();
        assert_eq!((ids(&page), page.total), (vec!["p1", "p2", "p3"], 4));
        filtered.cursor = page.next;
        let page = st.search.search(&filtered).await.unwrap();
        assert_eq!(ids(&page), ["p4"]);
        assert!(page.next.is_none());

        st.store
            .apply(&[change("Patient", "p1", ResourceOp::Delete, "2")])
            .await
            .unwrap();
        st.store
            .apply(&[put(
                "Patient",
                "p2",
                json!({"resourceType": "Patient", "name": [{"family": "Brown"}]}),
            )])
            .await
            .unwrap();
        let find = |v: &'static str| {
            let st = &st;
            async move {
                st.search
                    .search(&q(
                        "Patient",
                        vec![("family", vec![s(v, StringMode::Prefix)])],
                    ))
                    .await
                    .unwrap()
            }
        };
        let p = find("smith").await;
        assert!(
            ids(&p).is_empty(),
            "deleted and renamed resources leave the index"
        );
        assert_eq!(p.total, 0);
        assert_eq!(ids(&find("brown").await), ["p2"]);
        let all = st.search.search(&q("Patient", vec![])).await.unwrap();
        assert_eq!(ids(&all), ["p0", "p2", "p3", "p4"]);
        // Re-created after the delete: found again.
        st.store
            .apply(&[change(
                "Patient",
                "p1",
                ResourceOp::Upsert {
                    resource: json!({"resourceType": "Patient", "name": [{"family": "Smith"}]}),
                },
                "3",
            )])
            .await
            .unwrap();
        assert_eq!(ids(&find("smith").await), ["p1"]);

        for bad in ["x", "i:", "h:2024|1|p1"] {
            let mut query = q("Patient", vec![]);
            query.cursor = Some(bad.into());
            assert!(
                matches!(
                    st.search.search(&query).await,
                    Err(StoreError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }

    pub async fn history_pages_newest_first_with_since(st: Stores) {
        sample(&st).await;
        st.store
            .apply(&[change("Patient", "p1", ResourceOp::Delete, "2")])
            .await
            .unwrap();
        let mut query = HistoryQuery {
            resource_type: "Patient".into(),
            id: None,
            since: None,
            count: 2,
            cursor: None,
        };
        let mut seen = Vec::new();
        loop {
            let page = st.search.history_page(&query).await.unwrap();
            assert_eq!(page.total, 5);
            seen.extend(
                page.versions
                    .iter()
                    .map(|v| format!("{}/{}", v.target.id, v.version_id)),
            );
            match page.next {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, ["p1/2", "p4/1", "p3/1", "p2/1", "p1/1"]);
        // Since second 3: p4/1 (second 3) and the delete (second 5), paged one at a time.
        query.cursor = None;
        query.since = Some("2024-01-01T00:00:03Z".parse().unwrap());
        query.count = 1;
        let mut since = Vec::new();
        loop {
            let page = st.search.history_page(&query).await.unwrap();
            assert_eq!(page.total, 2);
            since.extend(
                page.versions
                    .iter()
                    .map(|v| (v.target.id.clone(), v.deleted)),
            );
            match page.next {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(since, [("p1".to_owned(), true), ("p4".to_owned(), false)]);
        query.count = 0;
        query.cursor = None;
        let page = st.search.history_page(&query).await.unwrap();
        assert_eq!((page.total, page.versions.len()), (2, 0));
        query.since = None;
        query.count = 1;
        query.id = Some("p1".into());
        let page = st.search.history_page(&query).await.unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(page.versions[0].version_id, "2");
        query.cursor = page.next;
        let page = st.search.history_page(&query).await.unwrap();
        assert_eq!(page.versions[0].version_id, "1");
        assert!(page.next.is_none());
        query.cursor = Some("i:p1".into());
        assert!(st.search.history_page(&query).await.is_err());
    }

    fn grant() -> AccessGrant {
        let types: BTreeSet<String> = ["Patient", "Observation"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        AccessGrant {
            partner: "acme".into(),
            read: types.clone(),
            search: types,
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
            grant: Some(grant()),
        }
    }

    fn body(r: &FhirResponse) -> Value {
        assert_eq!(r.status, 200, "{:?}", r.body);
        serde_json::from_str(r.body.as_deref().unwrap()).unwrap()
    }

    /// The gateway over the store: a search paged by its next links, a type history, and a
    /// read, the same on every store.
    pub async fn gateway_pages_searches_and_history(st: Stores) {
        sample(&st).await;
        let gw = Gateway::new(st.store.clone(), st.search.clone());
        let mut req = get("Patient", &[("_count", "1"), ("gender", "female,male")]);
        let mut seen = Vec::new();
        loop {
            let b = body(&gw.handle(&req).await);
            assert_eq!(b["total"], 3);
            for e in b["entry"].as_array().unwrap() {
                seen.push(e["resource"]["id"].as_str().unwrap().to_owned());
            }
            let links = b["link"].as_array().unwrap();
            let Some(next) = links.iter().find(|l| l["relation"] == "next") else {
                break;
            };
            let (_, query) = next["url"].as_str().unwrap().split_once('?').unwrap();
            req.query = fhir_unify::handlers::gateway::parse_query(query);
        }
        assert_eq!(seen, ["p1", "p2", "p3"]);
        let b = body(
            &gw.handle(&get(
                "Observation",
                &[
                    ("patient", "p1"),
                    ("code", "http://loinc.org|8867-4"),
                    ("date", "ge2021"),
                ],
            ))
            .await,
        );
        assert_eq!(b["entry"][0]["resource"]["id"], "o1");
        let b = body(&gw.handle(&get("Patient", &[("birthdate", "lt1980")])).await);
        assert_eq!(b["total"], 1);
        let b = body(
            &gw.handle(&get("Patient/_history", &[("_count", "10")]))
                .await,
        );
        assert_eq!(b["total"], 4);
        let b = body(&gw.handle(&get("Patient/p2", &[])).await);
        assert_eq!(b["meta"]["versionId"], "1");
        let r = gw
            .handle(&get("Patient", &[("_cursor", "aTpwMQ"), ("family", "x")]))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
}

macro_rules! suite {
    ($($case:ident,)*) => {
        mod sqlite_store {
            $(
                #[tokio::test]
                async fn $case() {
                    super::cases::$case(super::sqlite()).await;
                }
            )*
        }
        mod dynamodb_store {
            $(
                #[tokio::test]
                async fn $case() {
                    super::cases::$case(super::dynamodb().await).await;
                }
            )*
        }
    };
}

suite! {
    filters_of_every_kind,
    string_prefixes_are_case_insensitive,
    pages_are_stable_and_changes_reindex,
    history_pages_newest_first_with_since,
    gateway_pages_searches_and_history,
}

// ---- DynamoDB only: the index items themselves ----

/// Every item of the table (a test may scan; the store never does).
async fn scan(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<std::collections::HashMap<String, AttributeValue>> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let answer = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .unwrap();
        out.extend(answer.items().iter().cloned());
        match answer.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => break,
        }
    }
    out
}

fn text<'a>(i: &'a std::collections::HashMap<String, AttributeValue>, name: &str) -> &'a str {
    match i.get(name) {
        Some(AttributeValue::S(s)) => s,
        _ => "",
    }
}

/// After creates, updates, deletes and a re-create, the table's index items are exactly those
/// the current items list, and every one of them belongs to a live resource: nothing orphaned,
/// nothing missing.
#[tokio::test]
async fn dynamodb_index_items_follow_their_resources_exactly() {
    let st = dynamodb().await;
    sample(&st).await;
    st.store
        .apply(&[
            change("Patient", "p1", ResourceOp::Delete, "2"),
            put(
                "Patient",
                "p2",
                json!({"resourceType": "Patient", "name": [{"family": "Brown", "given": ["B", "C"]}]}),
            ),
        ])
        .await
        .unwrap();
    st.store
        .apply(&[change(
            "Patient",
            "p1",
            ResourceOp::Upsert {
                resource: json!({"resourceType": "Patient", "gender": "male"}),
            },
            "3",
        )])
        .await
        .unwrap();
    let (client, table) = st.dynamo.as_ref().unwrap();
    let items = scan(client, table).await;
    let mut listed = HashSet::new();
    let mut live = HashSet::new();
    for i in items.iter().filter(|i| text(i, "sk") == "current") {
        if let Some(AttributeValue::L(keys)) = i.get("ix") {
            for k in keys {
                let AttributeValue::L(pair) = k else { panic!() };
                let (AttributeValue::S(p), AttributeValue::S(s)) = (&pair[0], &pair[1]) else {
                    panic!()
                };
                listed.insert((p.clone(), s.clone()));
            }
        }
        if i.get("deleted") == Some(&AttributeValue::Bool(false)) {
            live.insert(text(i, "pk").to_owned());
        }
    }
    let index: HashSet<(String, String)> = items
        .iter()
        .filter(|i| text(i, "pk").starts_with("ix#"))
        .map(|i| (text(i, "pk").to_owned(), text(i, "sk").to_owned()))
        .collect();
    assert_eq!(index, listed);
    for i in items.iter().filter(|i| text(i, "pk").starts_with("ix#")) {
        let t = text(i, "pk").split('#').nth(1).unwrap();
        assert!(live.contains(&format!("{t}/{}", text(i, "id"))), "{i:?}");
    }
    // p1 is male now and has no name; p2's old family is gone.
    let family = |i: &&std::collections::HashMap<String, AttributeValue>| {
        text(i, "pk") == "ix#Patient#family"
    };
    let families: BTreeSet<&str> = items
        .iter()
        .filter(family)
        .map(|i| text(i, "raw"))
        .collect();
    assert_eq!(families, BTreeSet::from(["Brown", "Jones", "50%_off"]));
    // One type history pointer per version.
    let pointers = items
        .iter()
        .filter(|i| text(i, "pk") == "hx#Patient")
        .count();
    let versions = items
        .iter()
        .filter(|i| text(i, "pk").starts_with("Patient/") && text(i, "sk").starts_with("v#"))
        .count();
    assert_eq!((pointers, versions), (7, 7));
}

/// A resource with more indexed values than one transaction can rewrite is refused by name,
/// and nothing of it is written.
#[tokio::test]
async fn dynamodb_refuses_a_resource_with_too_many_index_values() {
    let st = dynamodb().await;
    let identifiers: Vec<Value> = (0..60).map(|i| json!({"value": format!("X{i}")})).collect();
    let err = st
        .store
        .apply(&[put(
            "Patient",
            "big",
            json!({"resourceType": "Patient", "identifier": identifiers}),
        )])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid { target, reason } if target == "Patient/big" && reason.contains("index")),
        "{err}"
    );
    let target = ResourceRef {
        resource_type: "Patient".into(),
        id: "big".into(),
    };
    assert!(st.store.read(&target).await.unwrap().is_none());
}
