//! The distributed Map's own parts: reading items from the object store (ItemReader), grouping
//! them into batches (ItemBatcher) and writing the results back (ResultWriter), in the shapes
//! AWS uses. Failures are returned as cause text; the engine names the error
//! (`States.ItemReaderFailed`, `States.ResultWriterFailed`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::definition::{ItemReader, OutputType, ReaderSource, Transformation, WriterConfig};
use crate::objects::ObjectStore;

/// `Bucket` and `Key` (or `Prefix`) from the evaluated Parameters.
fn location<'a>(params: &'a Value, key_field: &str) -> Result<(&'a str, &'a str), String> {
    let bucket = params
        .get("Bucket")
        .and_then(Value::as_str)
        .ok_or("the field 'Bucket' is missing or not a string")?;
    let key = match params.get(key_field) {
        None if key_field == "Prefix" => "",
        Some(Value::String(k)) => k.as_str(),
        _ => {
            return Err(format!(
                "the field '{key_field}' is missing or not a string"
            ));
        }
    };
    Ok((bucket, key))
}

/// Reads the items the reader names; `params` are its evaluated Parameters.
pub(crate) async fn read_items(
    store: Option<&dyn ObjectStore>,
    reader: &ItemReader,
    params: &Value,
    max_items: Option<u64>,
) -> Result<Vec<Value>, String> {
    let store = store.ok_or("no object store is configured for ItemReader")?;
    let limit = max_items
        .filter(|m| *m > 0)
        .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    if reader.source == ReaderSource::Listing {
        let (bucket, prefix) = location(params, "Prefix")?;
        let listed = store
            .list(bucket, prefix)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(listed
            .into_iter()
            .take(limit)
            .map(|o| {
                json!({
                    "Etag": format!("\"{}\"", o.etag),
                    "Key": o.key,
                    "LastModified": o.last_modified.timestamp(),
                    "Size": o.size,
                    "StorageClass": "STANDARD",
                })
            })
            .collect());
    }
    let (bucket, key) = location(params, "Key")?;
    let body = store.get(bucket, key).await.map_err(|e| e.to_string())?;
    let text =
        std::str::from_utf8(&body).map_err(|_| format!("the object '{key}' is not UTF-8 text"))?;
    match reader.source {
        ReaderSource::Json => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => Ok(items.into_iter().take(limit).collect()),
            Ok(_) => Err(format!("the object '{key}' does not contain a JSON array")),
            Err(e) => Err(format!("the object '{key}' is not valid JSON: {e}")),
        },
        ReaderSource::JsonLines => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .take(limit)
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    format!(
                        "line {} of the object '{key}' is not valid JSON: {e}",
                        i + 1
                    )
                })
            })
            .collect(),
        ReaderSource::Csv => read_csv(reader, text, key, limit),
        ReaderSource::Listing => Ok(Vec::new()),
    }
}

/// One object per row, every value as text, keyed by the header.
fn read_csv(
    reader: &ItemReader,
    text: &str,
    key: &str,
    limit: usize,
) -> Result<Vec<Value>, String> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(reader.csv_delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = rdr.records();
    let headers: Vec<String> = match &reader.csv_headers {
        Some(h) => h.clone(),
        None => match rows.next() {
            Some(Ok(r)) => r.iter().map(str::to_string).collect(),
            Some(Err(e)) => return Err(format!("the object '{key}' is not valid CSV: {e}")),
            None => return Ok(Vec::new()),
        },
    };
    let mut out = Vec::new();
    for row in rows {
        if out.len() >= limit {
            break;
        }
        let row = row.map_err(|e| format!("the object '{key}' is not valid CSV: {e}"))?;
        if row.len() != headers.len() {
            let line = row.position().map_or(0, csv::Position::line);
            return Err(format!(
                "line {line} of the object '{key}' has {} fields, the header has {}",
                row.len(),
                headers.len()
            ));
        }
        let m: Map<String, Value> = headers
            .iter()
            .zip(row.iter())
            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
            .collect();
        out.push(Value::Object(m));
    }
    Ok(out)
}

fn json_size(v: &Value) -> usize {
    serde_json::to_string(v).map_or(usize::MAX, |s| s.len())
}

/// Groups item inputs into `{"BatchInput": ..., "Items": [...]}` child inputs, at most
/// `max_items` items and `max_bytes` bytes of input each (a single item is never split).
pub(crate) fn batches(
    items: Vec<Value>,
    max_items: Option<u64>,
    max_bytes: Option<u64>,
    batch_input: Option<&Value>,
) -> Vec<Value> {
    let max_items = max_items.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let max_bytes = max_bytes.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let wrap = |group: Vec<Value>| {
        let mut m = Map::new();
        if let Some(b) = batch_input {
            m.insert("BatchInput".into(), b.clone());
        }
        m.insert("Items".into(), Value::Array(group));
        Value::Object(m)
    };
    // The envelope's own bytes count toward the limit.
    let overhead = json_size(&wrap(Vec::new()));
    let mut out = Vec::new();
    let mut group = Vec::new();
    let mut bytes = overhead;
    for item in items {
        let size = json_size(&item) + 1;
        if !group.is_empty() && (group.len() >= max_items || bytes + size > max_bytes) {
            out.push(wrap(std::mem::take(&mut group)));
            bytes = overhead;
        }
        bytes += size;
        group.push(item);
    }
    if !group.is_empty() {
        out.push(wrap(group));
    }
    out
}

/// One child execution, as the ResultWriter's result files list it.
#[derive(Debug, Clone)]
pub(crate) struct ChildRecord {
    /// The item's (or batch's) position.
    pub index: usize,
    pub execution_arn: String,
    pub name: String,
    pub state_machine_arn: String,
    pub input: Value,
    pub outcome: Result<Value, (Option<String>, Option<String>)>,
    pub start: DateTime<Utc>,
    pub stop: DateTime<Utc>,
}

fn date(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl ChildRecord {
    fn to_json(&self) -> Value {
        let text = |v: &Value| serde_json::to_string(v).unwrap_or_default();
        let mut m = json!({
            "ExecutionArn": self.execution_arn,
            "Input": text(&self.input),
            "InputDetails": {"Included": true},
            "Name": self.name,
            "RedriveCount": 0,
            "StartDate": date(self.start),
            "StateMachineArn": self.state_machine_arn,
            "StopDate": date(self.stop),
        });
        match &self.outcome {
            Ok(out) => {
                m["Output"] = Value::String(text(out));
                m["OutputDetails"] = json!({"Included": true});
                m["RedriveStatus"] = json!("NOT_REDRIVABLE");
                m["RedriveStatusReason"] = json!("Execution is SUCCEEDED and cannot be redriven");
                m["Status"] = json!("SUCCEEDED");
            }
            Err((error, cause)) => {
                if let Some(e) = error {
                    m["Error"] = json!(e);
                }
                if let Some(c) = cause {
                    m["Cause"] = json!(c);
                }
                m["RedriveStatus"] = json!("REDRIVABLE");
                m["Status"] = json!("FAILED");
            }
        }
        m
    }
}

/// The rows `WriterConfig.Transformation` makes of the child executions: their records
/// (NONE), their outputs (COMPACT), or their outputs with arrays spread (FLATTEN). A failed
/// child keeps its record whatever the transformation, as AWS documents.
pub(crate) fn transform_results(children: &[ChildRecord], t: Transformation) -> Vec<Value> {
    let mut rows = Vec::with_capacity(children.len());
    for c in children {
        match (&c.outcome, t) {
            (Ok(out), Transformation::Compact) => rows.push(out.clone()),
            (Ok(Value::Array(items)), Transformation::Flatten) => {
                rows.extend(items.iter().cloned())
            }
            (Ok(out), Transformation::Flatten) => rows.push(out.clone()),
            _ => rows.push(c.to_json()),
        }
    }
    rows
}

/// Writes `manifest.json` and the `SUCCEEDED_0.json` / `FAILED_0.json` result files under
/// `Prefix/<map run id>/` (with a WriterConfig: its transformation, and JSON Lines files
/// `SUCCEEDED_0.jsonl` for OutputType JSONL), and gives the Map state's result.
pub(crate) async fn write_results(
    store: Option<&dyn ObjectStore>,
    params: &Value,
    map_run_arn: &str,
    children: &[ChildRecord],
    config: Option<WriterConfig>,
) -> Result<Value, String> {
    let transformation = config.map_or(Transformation::None, |c| c.transformation);
    let lines = config.is_some_and(|c| c.output_type == OutputType::JsonLines);
    let store = store.ok_or("no object store is configured for ResultWriter")?;
    let (bucket, prefix) = location(params, "Prefix")?;
    let run_id = map_run_arn.rsplit(':').next().unwrap_or_default();
    let base = if prefix.is_empty() {
        run_id.to_string()
    } else {
        format!("{}/{run_id}", prefix.trim_end_matches('/'))
    };
    let mut files = json!({"FAILED": [], "PENDING": [], "SUCCEEDED": []});
    for (status, ok) in [("SUCCEEDED", true), ("FAILED", false)] {
        let these: Vec<ChildRecord> = children
            .iter()
            .filter(|c| c.outcome.is_ok() == ok)
            .cloned()
            .collect();
        if these.is_empty() {
            continue;
        }
        let rows = transform_results(&these, transformation);
        let (key, body) = if lines {
            let mut body = Vec::new();
            for r in &rows {
                serde_json::to_writer(&mut body, r).map_err(|e| e.to_string())?;
                body.push(b'\n');
            }
            (format!("{base}/{status}_0.jsonl"), body)
        } else {
            (
                format!("{base}/{status}_0.json"),
                serde_json::to_vec(&rows).map_err(|e| e.to_string())?,
            )
        };
        let size = body.len();
        store
            .put(bucket, &key, body)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(list) = files[status].as_array_mut() {
            list.push(json!({"Key": key, "Size": size}));
        }
    }
    let manifest_key = format!("{base}/manifest.json");
    let manifest = json!({
        "DestinationBucket": bucket,
        "MapRunArn": map_run_arn,
        "ResultFiles": files,
    });
    let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    store
        .put(bucket, &manifest_key, body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "MapRunArn": map_run_arn,
        "ResultWriterDetails": {"Bucket": bucket, "Key": manifest_key},
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn batches_respect_both_limits() {
        let items: Vec<Value> = (0..5).map(|i| json!({"i": i})).collect();
        let b = batches(items.clone(), Some(2), None, Some(&json!({"x": 1})));
        assert_eq!(b.len(), 3);
        assert_eq!(
            b[0],
            json!({"BatchInput": {"x": 1}, "Items": [{"i": 0}, {"i": 1}]})
        );
        assert_eq!(b[2]["Items"], json!([{"i": 4}]));
        // {"Items":[]} is 12 bytes, each {"i":n} 7 + 1: two items fit in 28 bytes, not three.
        let b = batches(items, None, Some(28), None);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0], json!({"Items": [{"i": 0}, {"i": 1}]}));
        // An item larger than the limit still gets a batch of its own.
        let b = batches(vec![json!("a long string")], None, Some(1), None);
        assert_eq!(b, vec![json!({"Items": ["a long string"]})]);
    }
}
