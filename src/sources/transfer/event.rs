//! The events that announce an upload: AWS Transfer Family's "File Upload Completed" on
//! EventBridge (`source: aws.transfer`), and the S3 events of the landing bucket (an event
//! notification, or EventBridge "Object Created": parsed by [`crate::sources::s3_event`]).
//!
//! Transfer Family's detail-type is spelled two ways across the documentation's versions
//! (`SFTP Server File Upload Completed`, and the older `FTP File Server Upload Completed`):
//! a detail-type is recognised by its words, in any order, for SFTP, FTPS and FTP. The
//! detail's `file-path` is the path as stored, `/bucket/key` for an S3-backed server (not
//! URL-encoded); `bytes` is a number; `etag` is there only for S3. A failed upload
//! (`... Upload Failed`, or `status-code` other than `COMPLETED`) announces nothing to read:
//! it is reported as skipped, with its failure code.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::sources::s3_event::{EventError, ObjectCreated, objects_created};

/// What an event announces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announced {
    pub objects: Vec<ObjectCreated>,
    /// Uploads or events not to read, with why (`(what, reason)`).
    pub skipped: Vec<(String, String)>,
}

const PROTOCOLS: [&str; 3] = ["SFTP", "FTPS", "FTP"];

/// Whether a detail-type is `<protocol> Server File Upload <outcome>` in any word order.
fn is_upload(detail_type: &str, outcome: &str) -> bool {
    let mut words: Vec<&str> = detail_type.split_whitespace().collect();
    words.sort_unstable();
    PROTOCOLS.iter().any(|p| {
        let mut want = vec![*p, "Server", "File", "Upload", outcome];
        want.sort_unstable();
        want == words
    })
}

fn err(place: &str, message: &str) -> EventError {
    EventError {
        place: place.to_owned(),
        message: message.to_owned(),
    }
}

fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The uploads an event announces (Transfer Family or S3, in any envelope S3 events come in).
pub fn uploads(event: &Value) -> Result<Announced, EventError> {
    if event.get("source").and_then(Value::as_str) != Some("aws.transfer") {
        return Ok(Announced {
            objects: objects_created(event)?,
            skipped: Vec::new(),
        });
    }
    let detail_type = event
        .get("detail-type")
        .and_then(Value::as_str)
        .ok_or_else(|| err("detail-type", "missing or not a string"))?;
    let detail = event
        .get("detail")
        .filter(|d| d.is_object())
        .ok_or_else(|| err("detail", "missing or not an object"))?;
    let path = detail.get("file-path").and_then(Value::as_str);
    let label = path.unwrap_or("?").to_owned();
    if is_upload(detail_type, "Failed") {
        let code = detail
            .get("failure-code")
            .and_then(Value::as_str)
            .unwrap_or("UNKNOWN_ERROR");
        return Ok(Announced {
            objects: Vec::new(),
            skipped: vec![(label, format!("{detail_type}: {code}"))],
        });
    }
    if !is_upload(detail_type, "Completed") {
        tracing::debug!(
            detail_type,
            "Transfer Family event is not an upload; skipped"
        );
        return Ok(Announced {
            objects: Vec::new(),
            skipped: vec![(label, format!("{detail_type}: not an upload"))],
        });
    }
    if let Some(status) = detail.get("status-code").and_then(Value::as_str)
        && status != "COMPLETED"
    {
        return Ok(Announced {
            objects: Vec::new(),
            skipped: vec![(label, format!("status-code {status}"))],
        });
    }
    let path = path.ok_or_else(|| err("detail.file-path", "missing or not a string"))?;
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let (bucket, key) = trimmed
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| err("detail.file-path", "must be /bucket/key"))?;
    let size = match detail.get("bytes") {
        Some(Value::Number(n)) => n.as_u64(),
        // Documented as a number; tolerate a string of digits.
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok(Announced {
        objects: vec![ObjectCreated {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            raw_key: key.to_owned(),
            size,
            version_id: None,
            event_time: time(detail.get("end-timestamp")).or_else(|| time(event.get("time"))),
        }],
        skipped: Vec::new(),
    })
}

/// A Transfer Family "SFTP Server File Upload Completed" event (what the local runtime
/// delivers for each file of a local landing folder).
pub fn upload_completed(bucket: &str, key: &str, bytes: u64, time: DateTime<Utc>) -> Value {
    let stamp = time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::json!({
        "version": "0",
        "id": uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("{bucket}/{key}@{stamp}").as_bytes()).to_string(),
        "detail-type": "SFTP Server File Upload Completed",
        "source": "aws.transfer",
        "account": crate::events::local::LOCAL_ACCOUNT,
        "time": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": crate::events::local::LOCAL_REGION,
        "resources": [],
        "detail": {
            "status-code": "COMPLETED",
            "protocol": "SFTP",
            "bytes": bytes,
            "file-path": format!("/{bucket}/{key}"),
            "server-id": "s-local",
            "username": "local",
            "session-id": "local",
            "start-timestamp": stamp,
            "end-timestamp": stamp,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detail_types_in_either_word_order() {
        for t in [
            "SFTP Server File Upload Completed",
            "FTPS Server File Upload Completed",
            "FTP Server File Upload Completed",
            "FTP File Server Upload Completed",
            "SFTP File Server Upload Completed",
        ] {
            assert!(is_upload(t, "Completed"), "{t}");
        }
        assert!(!is_upload(
            "SFTP Server File Download Completed",
            "Completed"
        ));
        assert!(!is_upload("AS2 Server File Upload Completed", "Completed"));
        assert!(is_upload("SFTP Server File Upload Failed", "Failed"));
    }

    #[test]
    fn shapes_that_are_wrong_are_errors_with_the_place() {
        let base = |detail: Value| json!({"source": "aws.transfer", "detail-type": "SFTP Server File Upload Completed", "detail": detail});
        assert_eq!(
            uploads(&base(json!({}))).unwrap_err().place,
            "detail.file-path"
        );
        assert_eq!(
            uploads(&base(json!({"file-path": "/only-bucket"})))
                .unwrap_err()
                .place,
            "detail.file-path"
        );
        assert_eq!(
            uploads(&json!({"source": "aws.transfer", "detail": {}}))
                .unwrap_err()
                .place,
            "detail-type"
        );
        let got = uploads(&base(
            json!({"file-path": "/b/in/a b+c.csv", "bytes": "12", "status-code": "COMPLETED"}),
        ))
        .unwrap();
        assert_eq!(got.objects[0].key, "in/a b+c.csv", "not URL-decoded");
        assert_eq!(got.objects[0].size, Some(12));
        let partial = uploads(&base(
            json!({"file-path": "/b/k.csv", "status-code": "FAILED"}),
        ))
        .unwrap();
        assert!(partial.objects.is_empty());
        assert_eq!(partial.skipped[0].1, "status-code FAILED");
    }

    #[test]
    fn the_local_event_round_trips() {
        let t = Utc::now();
        let e = upload_completed("b", "in/x y.csv", 7, t);
        let got = uploads(&e).unwrap();
        assert_eq!(got.objects.len(), 1);
        assert_eq!(
            (got.objects[0].bucket.as_str(), got.objects[0].key.as_str()),
            ("b", "in/x y.csv")
        );
        assert_eq!(
            got.objects[0].event_time.map(|t| t.timestamp_millis()),
            Some(t.timestamp_millis())
        );
    }
}
