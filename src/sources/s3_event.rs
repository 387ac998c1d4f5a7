//! The events that announce a new object (shared by the file sources, DMS and Transfer): S3 event notifications (`Records[]`, delivered to
//! Lambda directly or as the body of an SQS/SNS message) and EventBridge "Object Created".
//!
//! - Notification keys are form-URL-encoded (`+` is a space, `%2B` a plus): decoded here.
//! - `s3:TestEvent` (sent once when a notification is configured) carries no object: it yields
//!   nothing. Records other than `ObjectCreated:*` (removals, restores) are skipped.
//! - EventBridge's `detail.object.key`: whether it is encoded is not documented. The key is
//!   form-decoded as well, and [`ObjectCreated::raw_key`] keeps the key as received, so the
//!   reader can fall back to it when the decoded key names no object.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// One object an event says was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCreated {
    pub bucket: String,
    /// The key, form-URL-decoded.
    pub key: String,
    /// The key exactly as the event carried it.
    pub raw_key: String,
    pub size: Option<u64>,
    pub version_id: Option<String>,
    /// When S3 says the object was created.
    pub event_time: Option<DateTime<Utc>>,
}

/// An event that is neither an S3 notification nor an EventBridge S3 event, or one of those
/// with a required field missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct EventError {
    /// Where in the event (`Records[2].s3.object.key`).
    pub place: String,
    pub message: String,
}

fn err(place: impl Into<String>, message: impl Into<String>) -> EventError {
    EventError {
        place: place.into(),
        message: message.into(),
    }
}

/// The objects created according to an event (either kind, or an SQS/SNS envelope of a
/// notification). The test event yields no object.
pub fn objects_created(event: &Value) -> Result<Vec<ObjectCreated>, EventError> {
    let Some(obj) = event.as_object() else {
        return Err(err("$", "an S3 event must be a JSON object"));
    };
    if obj.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if obj.contains_key("detail-type")
        || obj.get("source").and_then(Value::as_str) == Some("aws.s3")
    {
        return eventbridge(event).map(|o| o.into_iter().collect());
    }
    let Some(records) = obj.get("Records") else {
        return Err(err(
            "$",
            "neither an S3 event notification (`Records`) nor an EventBridge event (`detail-type`)",
        ));
    };
    let Some(records) = records.as_array() else {
        return Err(err("Records", "must be an array"));
    };
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let at = |p: &str| format!("Records[{i}]{p}");
        // SQS wraps the notification as a string body; SNS (and SNS via SQS) as `Message`.
        if let Some(body) = r.get("body").or_else(|| r.pointer("/Sns/Message"))
            && let Some(text) = body.as_str()
        {
            let inner: Value = serde_json::from_str(text)
                .map_err(|e| err(at(".body"), format!("not JSON: {e}")))?;
            let inner = match inner.get("Message").and_then(Value::as_str) {
                Some(m) if inner.get("Type").is_some() => serde_json::from_str(m)
                    .map_err(|e| err(at(".body.Message"), format!("not JSON: {e}")))?,
                _ => inner,
            };
            out.extend(
                objects_created(&inner)
                    .map_err(|e| err(format!("{}.{}", at(""), e.place), e.message))?,
            );
            continue;
        }
        let name = r.get("eventName").and_then(Value::as_str).unwrap_or("");
        let name = name.strip_prefix("s3:").unwrap_or(name);
        if !name.starts_with("ObjectCreated:") {
            if name.is_empty() {
                return Err(err(at(".eventName"), "missing"));
            }
            tracing::debug!(
                event_name = name,
                "S3 record is not an object creation; skipped"
            );
            continue;
        }
        let bucket = r
            .pointer("/s3/bucket/name")
            .and_then(Value::as_str)
            .ok_or_else(|| err(at(".s3.bucket.name"), "missing or not a string"))?;
        let raw_key = r
            .pointer("/s3/object/key")
            .and_then(Value::as_str)
            .ok_or_else(|| err(at(".s3.object.key"), "missing or not a string"))?;
        let key = form_url_decode(raw_key).map_err(|m| err(at(".s3.object.key"), m))?;
        out.push(ObjectCreated {
            bucket: bucket.to_owned(),
            key,
            raw_key: raw_key.to_owned(),
            size: r.pointer("/s3/object/size").and_then(Value::as_u64),
            version_id: r
                .pointer("/s3/object/versionId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            event_time: r
                .get("eventTime")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        });
    }
    Ok(out)
}

/// An EventBridge S3 event: `Object Created` yields its object; other S3 detail types nothing.
fn eventbridge(event: &Value) -> Result<Option<ObjectCreated>, EventError> {
    let detail_type = event
        .get("detail-type")
        .and_then(Value::as_str)
        .ok_or_else(|| err("detail-type", "missing or not a string"))?;
    if event.get("source").and_then(Value::as_str) != Some("aws.s3") {
        return Err(err(
            "source",
            "an EventBridge event for objects must come from aws.s3",
        ));
    }
    if detail_type != "Object Created" {
        tracing::debug!(
            detail_type,
            "EventBridge S3 event is not an object creation; skipped"
        );
        return Ok(None);
    }
    let bucket = event
        .pointer("/detail/bucket/name")
        .and_then(Value::as_str)
        .ok_or_else(|| err("detail.bucket.name", "missing or not a string"))?;
    let raw_key = event
        .pointer("/detail/object/key")
        .and_then(Value::as_str)
        .ok_or_else(|| err("detail.object.key", "missing or not a string"))?;
    let key = form_url_decode(raw_key).map_err(|m| err("detail.object.key", m))?;
    Ok(Some(ObjectCreated {
        bucket: bucket.to_owned(),
        key,
        raw_key: raw_key.to_owned(),
        size: event.pointer("/detail/object/size").and_then(Value::as_u64),
        version_id: event
            .pointer("/detail/object/version-id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        event_time: event
            .get("time")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
    }))
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte; the bytes
/// must be UTF-8.
pub fn form_url_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "percent escapes do not decode to UTF-8".to_owned())
}

/// Encodes a key the way S3 notifications carry it (for events the local runtime builds).
pub fn form_url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'*' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An S3 event notification for objects (what the local runtime delivers to `ingest-dms`).
pub fn notification(bucket: &str, objects: &[(String, u64)], time: DateTime<Utc>) -> Value {
    let records: Vec<Value> = objects
        .iter()
        .map(|(key, size)| {
            serde_json::json!({
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": crate::events::local::LOCAL_REGION,
                "eventTime": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                    "object": {"key": form_url_encode(key), "size": size},
                },
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_decoding() {
        assert_eq!(form_url_decode("red+flower.jpg").unwrap(), "red flower.jpg");
        assert_eq!(form_url_decode("c%2B%2B/a%3Db").unwrap(), "c++/a=b");
        assert_eq!(form_url_decode("caf%C3%A9").unwrap(), "café");
        assert!(form_url_decode("bad%2").is_err());
        assert!(form_url_decode("bad%zz").is_err());
        assert!(form_url_decode("%FF").is_err());
        for k in ["a b+c/d=e%f/LOAD00000001.parquet", "plain/key", "é ü"] {
            assert_eq!(form_url_decode(&form_url_encode(k)).unwrap(), k);
        }
    }

    #[test]
    fn shapes_that_are_not_s3_events_are_errors_with_the_place() {
        assert_eq!(objects_created(&json!([])).unwrap_err().place, "$");
        assert_eq!(objects_created(&json!({"x": 1})).unwrap_err().place, "$");
        assert_eq!(
            objects_created(&json!({"Records": {}})).unwrap_err().place,
            "Records"
        );
        let e = objects_created(&json!({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {}}}]}))
            .unwrap_err();
        assert_eq!(e.place, "Records[0].s3.object.key");
        let e = objects_created(&json!({"detail-type": "Object Created", "source": "aws.s3", "detail": {"bucket": {"name": "b"}}}))
            .unwrap_err();
        assert_eq!(e.place, "detail.object.key");
        let e = objects_created(&json!({"detail-type": "Object Created", "source": "aws.ec2"}))
            .unwrap_err();
        assert_eq!(e.place, "source");
    }

    #[test]
    fn sqs_and_sns_envelopes_are_opened() {
        let n = notification("b", &[("s/t/LOAD00000001.parquet".into(), 5)], Utc::now());
        let sqs = json!({"Records": [{"messageId": "m", "body": n.to_string()}]});
        let got = objects_created(&sqs).unwrap();
        assert_eq!(got[0].key, "s/t/LOAD00000001.parquet");
        let sns = json!({"Type": "Notification", "Message": n.to_string()});
        let via = json!({"Records": [{"body": sns.to_string()}]});
        assert_eq!(objects_created(&via).unwrap()[0].bucket, "b");
        let test = json!({"Records": [{"body": json!({"Event": "s3:TestEvent", "Bucket": "b"}).to_string()}]});
        assert!(objects_created(&test).unwrap().is_empty());
        let broken = json!({"Records": [{"body": "{not json"}]});
        assert_eq!(
            objects_created(&broken).unwrap_err().place,
            "Records[0].body"
        );
    }
}
