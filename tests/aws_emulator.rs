//! The real AWS SDK talks to the emulator the tests use (moto's server, started per test):
//! the smoke test every AWS-backed test builds on.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common {
    pub mod moto;
}

use common::moto::{Moto, REGION};

#[tokio::test]
async fn sdk_clients_reach_the_emulator() {
    let moto = Moto::start();
    let config = fhir_unify::aws::loader()
        .region(aws_config::Region::new(REGION))
        .endpoint_url(&moto.endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::for_tests())
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let created = sqs.create_queue().queue_name("smoke").send().await.unwrap();
    let url = created.queue_url().unwrap().to_string();
    let listed = sqs.list_queues().send().await.unwrap();
    assert_eq!(listed.queue_urls(), [url]);
}
