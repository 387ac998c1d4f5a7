//! The SQS quarantine against an emulated SQS and S3 (moto's server, the real SDK over HTTP):
//! rejections arrive as sent; one over SQS's 256 KB limit is never cut silently — it is stored
//! in S3 and referenced, or sent as a marker that keeps the record's label and outcome and
//! names what it left out.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod aws;
    pub mod moto;
}

use std::sync::Arc;

use common::aws::{s3, sdk};
use common::moto::Moto;
use fhir_unify::local::queue::LocalQueue;
use fhir_unify::model::{Rejection, Stage};
use fhir_unify::queue::sqs::{OverflowBucket, SqsQuarantine};
use fhir_unify::queue::{LocalQuarantine, MAX_MESSAGE_BYTES, Oversized, Quarantine};
use serde_json::json;

fn rejection(raw_bytes: usize) -> Rejection {
    Rejection {
        stage: Stage::Validate,
        record: "app/patients {\"pk\":\"p-1\"} @7".into(),
        change: None,
        raw: Some(json!({ "note": "n".repeat(raw_bytes) })),
        outcome: json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": "invalid", "diagnostics": "birthDate is not a date", "expression": ["Patient.birthDate"] }]
        }),
    }
}

async fn receive_one(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    for _ in 0..10 {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(m) = got.messages().first() {
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
            return m.body().unwrap().to_owned();
        }
    }
    panic!("no message arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_arrive_whole_and_large_ones_by_reference_or_marked() {
    let moto = Moto::start();
    let config = sdk(&moto.endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let url = sqs
        .create_queue()
        .queue_name("quarantine")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let plain = SqsQuarantine::new(sqs.clone(), &url);

    // Under the limit: the rejection as sent, which replays read back.
    let small = serde_json::to_string(&rejection(1000)).unwrap();
    let id = plain.send(&small).await.unwrap();
    assert!(!id.is_empty());
    let body = receive_one(&sqs, &url).await;
    assert_eq!(body, small);
    assert_eq!(
        serde_json::from_str::<Rejection>(&body).unwrap(),
        rejection(1000)
    );

    // Exactly at the limit still goes whole.
    let base = serde_json::to_string(&rejection(0)).unwrap().len();
    let at_limit = serde_json::to_string(&rejection(MAX_MESSAGE_BYTES - base)).unwrap();
    assert_eq!(at_limit.len(), MAX_MESSAGE_BYTES);
    plain.send(&at_limit).await.unwrap();
    assert_eq!(receive_one(&sqs, &url).await, at_limit);

    // Over the limit, no bucket: a marker with the label, stage and outcome, naming `raw`.
    let big = serde_json::to_string(&rejection(MAX_MESSAGE_BYTES)).unwrap();
    plain.send(&big).await.unwrap();
    let body = receive_one(&sqs, &url).await;
    let marker = Oversized::parse(&body).expect("a marker");
    assert_eq!(marker.original_bytes, big.len());
    assert_eq!(
        marker.record.as_deref(),
        Some("app/patients {\"pk\":\"p-1\"} @7")
    );
    assert_eq!(
        marker.outcome.as_ref().unwrap()["issue"][0]["expression"][0],
        "Patient.birthDate"
    );
    assert_eq!(marker.omitted, ["raw"]);
    assert!(marker.stored_at.is_none());

    // Over the limit with an overflow bucket: stored whole, referenced.
    let s3 = s3(&config);
    s3.create_bucket().bucket("overflow").send().await.unwrap();
    let stored = SqsQuarantine::new(sqs.clone(), &url).with_overflow(OverflowBucket {
        client: s3.clone(),
        bucket: "overflow".into(),
        prefix: "quarantine/".into(),
    });
    stored.send(&big).await.unwrap();
    let marker = Oversized::parse(&receive_one(&sqs, &url).await).unwrap();
    let at = marker.stored_at.clone().unwrap();
    let key = at.strip_prefix("s3://overflow/").unwrap();
    assert_eq!(key, format!("quarantine/{}.json", marker.sha256));
    let whole = s3
        .get_object()
        .bucket("overflow")
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(std::str::from_utf8(&whole).unwrap(), big);
    assert_eq!(
        serde_json::from_slice::<Rejection>(&whole).unwrap(),
        rejection(MAX_MESSAGE_BYTES)
    );

    // A queue that does not exist is an error naming it.
    let e = SqsQuarantine::new(sqs, format!("{}/000000000000/nope", moto.endpoint))
        .send(&small)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[tokio::test]
async fn the_local_queue_is_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(LocalQueue::open(&dir.path().join("q.db")).unwrap());
    let q: Arc<dyn Quarantine> = Arc::new(LocalQuarantine {
        queue: queue.clone(),
        name: "quarantine".into(),
    });
    let body = serde_json::to_string(&rejection(10)).unwrap();
    let id = q.send(&body).await.unwrap();
    let msgs = queue.list("quarantine").unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (msgs[0].message_id.as_str(), msgs[0].body.as_str()),
        (id.as_str(), body.as_str())
    );
}
