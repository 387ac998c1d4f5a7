//! `emit` on AWS with the DynamoDB store, against moto: versions written by the store reach
//! the table's stream; the stream is read the way Lambda's event source mapping reads it and
//! filtered with the filter `infra/template.yaml` gives that mapping; the handler publishes
//! through the real EventBridge SDK, and a subscriber's queue receives each version's change
//! event exactly once, with its stable id, matching the schema.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod lambda_stream;
    pub mod moto;
    pub mod serial_moto;
}

use common::aws::{as_delivered, receive, sdk, subscribe};
use common::lambda_stream::read_stream;
use common::moto::REGION;
use common::serial_moto::SerialMoto;
use fhir_unify::events::eventbridge::EventBridgeBus;
use fhir_unify::events::pattern::EventPattern;
use fhir_unify::events::schema::check_eventbridge_event;
use fhir_unify::handlers::emit_stream;
use fhir_unify::model::{
    ChangeEventDetail, Lineage, RecordKey, ResourceChange, ResourceOp, ResourceRef, Sequence,
};
use fhir_unify::sources::dynamodb::DynamoDbStreamEvent;
use fhir_unify::store::FhirStore;
use fhir_unify::store::dynamodb::DynamoStore;
use serde_json::{Value, json};

const TABLE: &str = "fhir-store";
const BUS: &str = "fhir-changes";

/// The filter of the emit function's mapping on the store stream, from the template.
fn template_filter() -> EventPattern {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/template.yaml");
    let template: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mapping = &template["Resources"]["EmitStoreStreamMapping"]["Properties"];
    assert_eq!(
        mapping["FunctionResponseTypes"][0].as_str(),
        Some("ReportBatchItemFailures")
    );
    let filters = mapping["FilterCriteria"]["Filters"].as_sequence().unwrap();
    assert_eq!(filters.len(), 1);
    EventPattern::parse(filters[0]["Pattern"].as_str().unwrap()).unwrap()
}

fn change(id: &str, op: ResourceOp, seq: u64) -> ResourceChange {
    ResourceChange {
        target: ResourceRef {
            resource_type: "Patient".into(),
            id: id.into(),
        },
        op,
        lineage: Lineage {
            source: "app".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!(id))]),
            sequence: Sequence::from(seq),
            observed_at: "2024-01-01T00:00:00Z".parse().unwrap(),
        },
    }
}

fn upsert(id: &str, family: &str, seq: u64) -> ResourceChange {
    change(
        id,
        ResourceOp::Upsert {
            resource: json!({"resourceType": "Patient", "name": [{"family": family}],
                "identifier": [{"system": "urn:x", "value": "v#1"}]}),
        },
        seq,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_versions_reach_a_subscriber_once_each_through_the_stream() {
    let moto = SerialMoto::start();
    let config = sdk(&moto.endpoint).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), TABLE);
    store.create_table().await.unwrap();
    let url = subscribe(
        &config,
        BUS,
        "patients",
        json!({"detail": {"resourceType": ["Patient"]}}),
    )
    .await;

    // Two creates, an update, a delete; an exact replay and a mark-only change write no
    // version (the latter rewrites the current item: a MODIFY on the stream).
    store
        .apply(&[upsert("p1", "Smith", 1), upsert("p2", "Jones", 1)])
        .await
        .unwrap();
    store.apply(&[upsert("p1", "Smyth", 2)]).await.unwrap();
    store
        .apply(&[change("p2", ResourceOp::Delete, 2)])
        .await
        .unwrap();
    store.apply(&[upsert("p1", "Smyth", 2)]).await.unwrap();
    store.apply(&[upsert("p1", "Smyth", 3)]).await.unwrap();

    let stream_arn = common::lambda_stream::stream_arn(&config, TABLE).await;
    let all = read_stream(&config, &stream_arn, REGION).await;
    // The mapping's filter keeps exactly the history INSERTs: one per version, even though
    // index items (the identifier "v#1" above) have sort keys that start like them.
    let filter = template_filter();
    let records: Vec<Value> = all.iter().filter(|r| filter.matches(r)).cloned().collect();
    assert!(all.len() > records.len());
    let keys: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let k = &r["dynamodb"]["Keys"];
            (
                k["pk"]["S"].as_str().unwrap().to_owned(),
                k["sk"]["S"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("Patient/p1", 1),
        ("Patient/p2", 1),
        ("Patient/p1", 2),
        ("Patient/p2", 2),
    ]
    .iter()
    .map(|(pk, v)| ((*pk).to_owned(), format!("v#{v:010}")))
    .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(sorted, want_sorted);

    let bus = EventBridgeBus::with_client(BUS, aws_sdk_eventbridge::Client::new(&config));
    let out = emit_stream::handle(&DynamoDbStreamEvent { records }, &bus).await;
    assert_eq!((out.published, out.skipped), (4, 0));
    assert!(out.response.batch_item_failures.is_empty());
    // Unfiltered (to a bus no rule reads), every other record is skipped and nothing fails:
    // a filter left out of the mapping costs invocations, not wrong events.
    aws_sdk_eventbridge::Client::new(&config)
        .create_event_bus()
        .name("unrouted")
        .send()
        .await
        .unwrap();
    let unrouted =
        EventBridgeBus::with_client("unrouted", aws_sdk_eventbridge::Client::new(&config));
    let out = emit_stream::handle(
        &DynamoDbStreamEvent {
            records: all.clone(),
        },
        &unrouted,
    )
    .await;
    assert_eq!((out.published, out.skipped), (4, all.len() - 4));
    assert!(out.failures.is_empty(), "{:?}", out.failures);

    let received = receive(&config, &url, 4).await;
    let mut got: Vec<String> = received
        .iter()
        .map(|e| e["detail"]["eventId"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut expected: Vec<String> = want
        .iter()
        .map(|(pk, sk)| {
            let id = pk.trim_start_matches("Patient/");
            let version = sk.trim_start_matches("v#").trim_start_matches('0');
            ChangeEventDetail::stable_event_id("Patient", id, version)
        })
        .collect();
    expected.sort();
    assert_eq!(got, expected, "each version once, by its stable id");
    for envelope in received {
        check_eventbridge_event(&as_delivered(envelope)).unwrap();
    }
}
