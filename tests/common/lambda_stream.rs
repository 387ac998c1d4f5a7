//! A DynamoDB table's stream read the way Lambda's event source mapping reads it
//! (`DescribeStream`, `GetShardIterator` TRIM_HORIZON, `GetRecords`), each record in the JSON
//! shape the mapping hands to the function (`tests/aws_flow_moto.rs`, `tests/emit_stream_moto.rs`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_sdk_dynamodbstreams::types::{AttributeValue as StreamValue, ShardIteratorType};
use base64::Engine;
use serde_json::{Value, json};

/// A stream attribute value in the JSON shape of Lambda's DynamoDB event.
pub fn attribute(v: &StreamValue) -> Value {
    let b64 = |b: &aws_sdk_dynamodbstreams::primitives::Blob| {
        base64::engine::general_purpose::STANDARD.encode(b.as_ref())
    };
    match v {
        StreamValue::S(s) => json!({ "S": s }),
        StreamValue::N(n) => json!({ "N": n }),
        StreamValue::B(b) => json!({ "B": b64(b) }),
        StreamValue::Ss(v) => json!({ "SS": v }),
        StreamValue::Ns(v) => json!({ "NS": v }),
        StreamValue::Bs(v) => json!({ "BS": v.iter().map(b64).collect::<Vec<_>>() }),
        StreamValue::Bool(b) => json!({ "BOOL": b }),
        StreamValue::Null(n) => json!({ "NULL": n }),
        StreamValue::L(l) => json!({ "L": l.iter().map(attribute).collect::<Vec<_>>() }),
        StreamValue::M(m) => json!({ "M": image(m) }),
        other => panic!("unknown attribute value {other:?}"),
    }
}

pub fn image(m: &HashMap<String, StreamValue>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), attribute(v))).collect())
}

/// A `GetRecords` record as the event source mapping hands it to the function.
pub fn lambda_record(
    r: &aws_sdk_dynamodbstreams::types::Record,
    stream_arn: &str,
    region: &str,
) -> Value {
    let d = r.dynamodb().unwrap();
    let mut dynamodb = json!({
        "Keys": image(d.keys().unwrap()),
        "SequenceNumber": d.sequence_number().unwrap(),
        "SizeBytes": d.size_bytes().unwrap_or_default(),
        "StreamViewType": d.stream_view_type().unwrap().as_str(),
    });
    if let Some(t) = d.approximate_creation_date_time() {
        dynamodb["ApproximateCreationDateTime"] = json!(t.secs());
    }
    if let Some(n) = d.new_image() {
        dynamodb["NewImage"] = image(n);
    }
    if let Some(o) = d.old_image() {
        dynamodb["OldImage"] = image(o);
    }
    json!({
        "eventID": r.event_id().unwrap(),
        "eventName": r.event_name().unwrap().as_str(),
        "eventVersion": r.event_version().unwrap_or("1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": r.aws_region().unwrap_or(region),
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    })
}

/// Every record of the table's stream, from the start of each shard.
pub async fn read_stream(config: &SdkConfig, stream_arn: &str, region: &str) -> Vec<Value> {
    let streams = aws_sdk_dynamodbstreams::Client::new(config);
    let described = streams
        .describe_stream()
        .stream_arn(stream_arn)
        .send()
        .await
        .unwrap();
    let mut records = Vec::new();
    for shard in described.stream_description().unwrap().shards() {
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard.shard_id().unwrap())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_owned);
        while let Some(it) = iterator.take() {
            let page = streams
                .get_records()
                .shard_iterator(it)
                .limit(100)
                .send()
                .await
                .unwrap();
            if page.records().is_empty() {
                break;
            }
            records.extend(
                page.records()
                    .iter()
                    .map(|r| lambda_record(r, stream_arn, region)),
            );
            iterator = page.next_shard_iterator().map(str::to_owned);
        }
    }
    records
}

/// The ARN of a table's stream (`DescribeTable`'s `LatestStreamArn`).
pub async fn stream_arn(config: &SdkConfig, table: &str) -> String {
    aws_sdk_dynamodb::Client::new(config)
        .describe_table()
        .table_name(table)
        .send()
        .await
        .unwrap()
        .table()
        .unwrap()
        .latest_stream_arn()
        .unwrap()
        .to_owned()
}
