//! Change events published through the real AWS SDK to an emulated EventBridge (moto's server)
//! reach an SQS queue through a rule with an event pattern, and every received event matches
//! the published schema (`infra/schemas/change-event.schema.json`) — including an event too
//! large for EventBridge, sent as a claim-check.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod moto;
}

use std::collections::BTreeSet;
use std::time::Duration;

use common::aws::{as_delivered, receive, sdk, subscribe};
use common::moto::{Moto, REGION};
use fhir_unify::events::eventbridge::EventBridgeBus;
use fhir_unify::events::schema::check_eventbridge_event;
use fhir_unify::events::{MAX_ENTRY_BYTES, relay_outbox};
use fhir_unify::model::{
    ChangeEvent, ChangeEventDetail, ChangeKind, Lineage, RecordKey, ResourceChange, ResourceOp,
    ResourceRef, Sequence,
};
use fhir_unify::store::sqlite::SqliteStore;
use fhir_unify::store::{FhirStore, Outbox};
use serde_json::json;

fn change(resource_type: &str, id: &str, n: i64) -> ResourceChange {
    ResourceChange {
        target: ResourceRef {
            resource_type: resource_type.into(),
            id: id.into(),
        },
        op: ResourceOp::Upsert {
            resource: json!({"resourceType": resource_type, "id": id, "status": "final"}),
        },
        lineage: Lineage {
            source: "app".into(),
            entity: "records".into(),
            key: RecordKey::from_pairs([("pk", json!(n)), ("name", json!("Zoë"))]),
            sequence: Sequence::from(n as u64),
            observed_at: "2024-01-01T00:00:00Z".parse().unwrap(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_reach_an_sqs_subscriber_through_a_rule_and_match_the_schema() {
    let moto = Moto::start();
    let config = sdk(&moto.endpoint).await;
    let url = subscribe(
        &config,
        "fhir-changes",
        "patients-to-subscriber",
        json!({"source": ["fhir-unify"], "detail": {"resourceType": ["Patient"]}}),
    )
    .await;
    let bus =
        EventBridgeBus::with_client("fhir-changes", aws_sdk_eventbridge::Client::new(&config));

    // 13 Patients (more than one PutEvents call) and 2 Observations, committed to the store;
    // the outbox relay (what `emit` runs) puts them on the bus.
    let store = SqliteStore::open_in_memory().unwrap();
    let mut changes: Vec<ResourceChange> = (0..13)
        .map(|i| change("Patient", &format!("p{i}"), i))
        .collect();
    changes.push(change("Observation", "o1", 100));
    changes.push(change("Observation", "o2", 101));
    store.apply(&changes).await.unwrap();
    let expected: BTreeSet<String> = store
        .pending(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event.detail.resource_type == "Patient")
        .map(|e| e.event.detail.event_id)
        .collect();
    assert_eq!(expected.len(), 13);
    let report = relay_outbox(&store, &bus).await.unwrap();
    assert_eq!((report.delivered, report.failed), (15, 0));
    assert!(store.pending(10).await.unwrap().is_empty());

    // One event whose detail is too large for an entry goes as a claim-check.
    let big = ChangeEvent::new(
        ChangeKind::Updated,
        ChangeEventDetail {
            event_id: ChangeEventDetail::stable_event_id("Patient", "big", "4"),
            resource_type: "Patient".into(),
            id: "big".into(),
            version_id: "4".into(),
            last_updated: "2024-03-04T05:06:07.890Z".parse().unwrap(),
            source: "app".into(),
            entity: "records".into(),
            key: RecordKey::from_pairs([("blob", json!("x".repeat(MAX_ENTRY_BYTES)))]),
            sequence: Sequence::from(9),
        },
    );
    let ids = bus.publish(std::slice::from_ref(&big)).await.unwrap();
    assert_eq!(ids.len(), 1);

    let received = receive(&config, &url, 14).await;
    assert_eq!(received.len(), 14, "{received:#?}");
    let mut seen = BTreeSet::new();
    for raw in received {
        let envelope = as_delivered(raw);
        if let Err(problems) = check_eventbridge_event(&envelope) {
            panic!("{problems:?} in {envelope:#}");
        }
        assert_eq!(
            envelope["detail"]["resourceType"], "Patient",
            "the rule's pattern"
        );
        assert_eq!(envelope["region"], REGION);
        seen.insert(envelope["detail"]["eventId"].as_str().unwrap().to_owned());
        if envelope["detail"]["id"] == "big" {
            assert!(envelope["detail"].get("key").is_none());
            assert_eq!(
                envelope["detail"]["claimCheck"]["reference"],
                "Patient/big/_history/4"
            );
        } else {
            assert!(envelope["detail"].get("claimCheck").is_none());
            assert_eq!(envelope["detail"]["key"]["name"], "Zoë");
        }
    }
    let mut all = expected;
    all.insert(big.detail.event_id.clone());
    assert_eq!(seen, all, "each Patient event exactly once, no Observation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_that_does_not_exist_keeps_the_events_in_the_outbox() {
    let moto = Moto::start();
    let config = sdk(&moto.endpoint).await;
    let bus = EventBridgeBus::with_client("no-such-bus", aws_sdk_eventbridge::Client::new(&config))
        .with_retry(fhir_unify::events::eventbridge::EntryRetry {
            max_attempts: 2,
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        });
    let store = SqliteStore::open_in_memory().unwrap();
    store.apply(&[change("Patient", "p1", 1)]).await.unwrap();
    let outcome = relay_outbox(&store, &bus).await;
    // Whether refused per entry or as a whole call, nothing is marked delivered.
    match outcome {
        Ok(report) => assert_eq!((report.delivered, report.failed), (0, 1)),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    assert_eq!(store.pending(10).await.unwrap().len(), 1);
}
