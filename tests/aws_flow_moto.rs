//! The AWS flow against an emulator (moto's server, the real SDK over HTTP): items written to
//! a DynamoDB table with a stream are read from the stream the way Lambda's event source
//! mapping does (`DescribeStream`, `GetShardIterator` TRIM_HORIZON, `GetRecords`), turned into
//! the Lambda DynamoDB event, run through the `ingest-dynamodb` handler and the `unify`
//! pipeline (in-process, on the project's ASL engine, SQLite store), and the change events it
//! emits reach an SQS queue through a rule on an EventBridge bus, each valid against the
//! published schema.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod lambda_stream;
    pub mod moto;
}

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};
use common::aws::{as_delivered, receive, sdk, subscribe};
use common::lambda_stream::read_stream;
use common::moto::{Moto, REGION};
use fhir_unify::config::PipelineConfig;
use fhir_unify::env::{Env, IngestEnv, LazyValidator};
use fhir_unify::events::eventbridge::EventBridgeBus;
use fhir_unify::events::schema::check_eventbridge_event;
use fhir_unify::handlers::ingest_dynamodb;
use fhir_unify::local::LocalWorkflow;
use fhir_unify::local::queue::LocalQueue;
use fhir_unify::sources::dynamodb::DynamoDbStreamEvent;
use fhir_unify::store::Outbox;
use fhir_unify::store::sqlite::SqliteStore;
use serde_json::{Value, json};

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn patient(pk: &str, mrn: &str, last: &str, first: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(pk)),
        ("mrn".to_owned(), s(mrn)),
        ("last_name".to_owned(), s(last)),
        ("first_name".to_owned(), s(first)),
        ("sex".to_owned(), s("F")),
        ("dob".to_owned(), s("1985-12-10")),
        ("active".to_owned(), AttributeValue::Bool(true)),
        ("visits".to_owned(), AttributeValue::N("3".into())),
        (
            "address".to_owned(),
            AttributeValue::M(HashMap::from([
                (
                    "line".to_owned(),
                    AttributeValue::L(vec![s("12 Harbour St")]),
                ),
                ("city".to_owned(), s("Boston")),
                ("postal_code".to_owned(), s("02110")),
            ])),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_writes_flow_from_the_stream_through_unify_to_an_eventbridge_subscriber() {
    let moto = Moto::start();
    let config = sdk(&moto.endpoint).await;

    // The source table, with a stream of new and old images.
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let table = ddb
        .create_table()
        .table_name("Patients")
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let stream_arn = table
        .table_description()
        .unwrap()
        .latest_stream_arn()
        .unwrap()
        .to_owned();

    // The subscriber: a queue behind a rule for Patient changes on the bus.
    let url = subscribe(
        &config,
        "fhir-changes",
        "patients",
        json!({"source": ["fhir-unify"], "detail": {"resourceType": ["Patient"]}}),
    )
    .await;

    // Writes: three inserts, an update, a delete.
    for (pk, mrn, last, first) in [
        ("p-1", "MRN-1", "Lovelace", "Ada"),
        ("p-2", "MRN-2", "Hopper", "Grace"),
        ("p-3", "MRN-3", "Noether", "Emmy"),
    ] {
        ddb.put_item()
            .table_name("Patients")
            .set_item(Some(patient(pk, mrn, last, first)))
            .send()
            .await
            .unwrap();
    }
    ddb.put_item()
        .table_name("Patients")
        .set_item(Some(patient("p-1", "MRN-1", "King", "Ada")))
        .send()
        .await
        .unwrap();
    ddb.delete_item()
        .table_name("Patients")
        .key("pk", s("p-3"))
        .send()
        .await
        .unwrap();

    let records = read_stream(&config, &stream_arn, REGION).await;
    assert_eq!(records.len(), 5, "{records:#?}");
    let lambda_event: DynamoDbStreamEvent =
        serde_json::from_value(json!({ "Records": records })).unwrap();

    // The pipeline: the example's mapping, an SQLite store, events to the EventBridge bus.
    let dir = tempfile::tempdir().unwrap();
    let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mappings/app/patients.yaml");
    let yaml = format!(
        "events:\n  eventbridge: {{ bus: fhir-changes }}\nsources:\n  - name: app\n    dynamodb: {{ table: Patients }}\n    entities:\n      patients: {{ key: [pk], mapping: {} }}\n",
        mapping.display()
    );
    let file = dir.path().join("fhir-unify.yaml");
    std::fs::write(&file, yaml).unwrap();
    let pipeline = Arc::new(PipelineConfig::load(&file).unwrap());
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.db")).unwrap());
    let env = Arc::new(Env {
        mappings: Arc::new(pipeline.load_mappings().unwrap()),
        validator: LazyValidator::default(),
        store: store.clone(),
        outbox: store.clone(),
        bus: Arc::new(EventBridgeBus::with_client(
            "fhir-changes",
            aws_sdk_eventbridge::Client::new(&config),
        )),
    });
    let queue = Arc::new(LocalQueue::open(&dir.path().join("queue.db")).unwrap());
    let workflow = Arc::new(LocalWorkflow::new(env, &pipeline, queue.clone()).unwrap());
    let ingest = IngestEnv {
        config: pipeline.clone(),
        workflow,
    };
    let outcome = ingest_dynamodb::handle(lambda_event, &ingest)
        .await
        .unwrap();
    assert!(
        outcome.response.batch_item_failures.is_empty(),
        "{:?}",
        outcome.failures
    );
    assert_eq!(outcome.records_in, 5);
    assert!(
        outcome.runs.iter().all(|r| r.succeeded),
        "{:?}",
        outcome.runs
    );
    assert_eq!(
        queue.count(&pipeline.quarantine.queue).unwrap(),
        0,
        "nothing quarantined"
    );
    assert!(
        store.pending(10).await.unwrap().is_empty(),
        "the outbox is delivered"
    );

    // The subscriber receives one event per committed change, in a valid envelope.
    let received: Vec<Value> = receive(&config, &url, 5)
        .await
        .into_iter()
        .map(as_delivered)
        .collect();
    for envelope in &received {
        if let Err(problems) = check_eventbridge_event(envelope) {
            panic!("{problems:?} in {envelope:#}");
        }
    }
    assert_eq!(received.len(), 5, "{received:#?}");
    let mut by_key: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for e in &received {
        by_key
            .entry(e["detail"]["key"]["pk"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                e["detail-type"].as_str().unwrap().to_owned(),
                e["detail"]["versionId"].as_str().unwrap().to_owned(),
            ));
    }
    for v in by_key.values_mut() {
        v.sort_by(|a, b| a.1.cmp(&b.1));
    }
    let kinds = |k: &str| -> Vec<&str> { by_key[k].iter().map(|(t, _)| t.as_str()).collect() };
    assert_eq!(kinds("p-1"), ["FhirResourceCreated", "FhirResourceUpdated"]);
    assert_eq!(kinds("p-2"), ["FhirResourceCreated"]);
    assert_eq!(kinds("p-3"), ["FhirResourceCreated", "FhirResourceDeleted"]);
}
