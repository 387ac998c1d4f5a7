//! The SDK side of the emulator tests: an `SdkConfig` pointed at a moto server, and an
//! EventBridge subscriber (a bus, a rule, an SQS queue as its target) whose deliveries a test
//! reads back. Each test file that uses it also declares `common::moto`.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use serde_json::{Value, json};

use super::moto::REGION;

/// The account moto reports for everything it creates.
pub const MOTO_ACCOUNT: &str = "123456789012";

/// The SDK configuration every client of a test uses: the emulator's endpoint, the test
/// region, dummy credentials.
pub async fn sdk(endpoint: &str) -> SdkConfig {
    fhir_unify::aws::loader()
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::for_tests())
        .load()
        .await
}

/// An S3 client for moto, which serves buckets by path (http://host/bucket/key), not as
/// subdomains.
pub fn s3(config: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    )
}

/// Creates the bus `bus`, a queue named "subscriber", and the rule `rule` sending the bus's
/// events that match `pattern` to the queue; the queue's URL.
pub async fn subscribe(config: &SdkConfig, bus: &str, rule: &str, pattern: Value) -> String {
    let events = aws_sdk_eventbridge::Client::new(config);
    let sqs = aws_sdk_sqs::Client::new(config);
    events.create_event_bus().name(bus).send().await.unwrap();
    let url = sqs
        .create_queue()
        .queue_name("subscriber")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    events
        .put_rule()
        .name(rule)
        .event_bus_name(bus)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule(rule)
        .event_bus_name(bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("subscriber")
                .arn(arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    url
}

/// Receives (and deletes) the queue's messages until `n` arrived or 20 s passed, then polls
/// until two receives come back empty, so that a message delivered twice is seen too.
pub async fn receive(config: &SdkConfig, url: &str, n: usize) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(config);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    let mut empty_after_n = 0;
    while Instant::now() < deadline && empty_after_n < 2 {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() && out.len() >= n {
            empty_after_n += 1;
        }
        for m in got.messages() {
            out.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    out
}

/// The envelope as EventBridge delivers it. moto 5.2's default target input template leaves
/// out `account` (EventBridge always delivers it): put back moto's account, and only when it
/// is missing, so anything else moto delivers is checked as it came.
pub fn as_delivered(mut envelope: Value) -> Value {
    if let Some(o) = envelope.as_object_mut() {
        o.entry("account").or_insert_with(|| json!(MOTO_ACCOUNT));
    }
    envelope
}
