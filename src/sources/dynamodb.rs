//! DynamoDB Streams records, as Lambda delivers them, decoded into [`SourceChange`]s.
//!
//! The Lambda input is [`DynamoDbStreamEvent`]: its `Records` are kept as raw JSON and each one
//! is parsed on its own into `aws_lambda_events`' typed `EventRecord`, so one malformed record
//! becomes one [`RecordFailure`] and the rest of the batch goes on.
//!
//! Per record:
//! - the table name comes from `eventSourceARN`
//!   (`arn:<partition>:dynamodb:<region>:<account>:table/<Name>/stream/<label>`), or from
//!   `tableName` when there is no ARN; the caller's resolver binds it to a source, entity and key;
//! - `INSERT`/`MODIFY` become [`Op::Upsert`] with `NewImage` as data (a stream whose view type
//!   has no new images, `KEYS_ONLY`/`OLD_IMAGE`, cannot feed the pipeline: failure);
//!   `REMOVE` becomes [`Op::Delete`] with `OldImage` as data, or `Keys` when there is no old
//!   image; TTL expiries (`userIdentity.principalId = dynamodb.amazonaws.com`) are plain deletes;
//! - the key is `Keys` restricted to the binding's key attributes (all of `Keys` if the binding
//!   names none); the sequence is `dynamodb.SequenceNumber`, compared numerically (they have 21+
//!   digits); `observed_at` is `ApproximateCreationDateTime` (epoch seconds), which real streams
//!   always carry, so a record without it is refused rather than dated 1970.
//!
//! Attribute values become JSON by [`attribute_to_json`]: `S` string; `N` a JSON integer if it
//! fits `i64`/`u64`, else a JSON float if that float's shortest decimal form has exactly the same
//! value, else the digits kept exactly as a JSON **string** (DynamoDB numbers have up to 38
//! significant digits, more than any JSON number type here keeps); `B` the base64 text; `BOOL`;
//! `NULL` null; `L` array; `M` object; `SS`/`NS`/`BS` arrays of the converted members.
//!
//! Failures carry an OperationOutcome naming the record (`eventID`, `SequenceNumber`) and the
//! place (`dynamodb.NewImage.birth_date.N`), never a value. [`batch_response`] turns failures
//! into the partial-batch answer Lambda understands (`ReportBatchItemFailures`).

use std::collections::HashMap;

use aws_lambda_events::event::dynamodb::EventRecord;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_dynamo::AttributeValue;
use serde_json::{Map, Number, Value};

use crate::model::{ChangeBatch, Op, RecordKey, Rejection, Sequence, SourceChange, Stage};
use crate::outcome::{Issue, Outcome};

/// The Lambda input of a DynamoDB Streams event source mapping. Records stay raw JSON so each
/// is parsed (and may fail) on its own.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DynamoDbStreamEvent {
    #[serde(rename = "Records")]
    pub records: Vec<Value>,
}

/// How a table feeds the pipeline: the source and entity its records belong to, and the names
/// of its key attributes (empty: every attribute of the record's `Keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBinding {
    pub source: String,
    pub entity: String,
    pub key: Vec<String>,
}

/// The result of decoding one event: the changes that decoded, and the records that did not.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub batch: ChangeBatch,
    pub failures: Vec<RecordFailure>,
}

/// A stream record that could not be decoded, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordFailure {
    /// `dynamodb.SequenceNumber` as delivered, if the record has one.
    pub sequence_number: Option<String>,
    /// `eventID` as delivered, if the record has one.
    pub event_id: Option<String>,
    /// The record as delivered, so it can be quarantined and replayed.
    pub raw: Value,
    /// What is wrong and where.
    pub outcome: Outcome,
}

impl RecordFailure {
    /// A data-free label: `dynamodb eventID=<id> SequenceNumber=<n>` (`?` when absent).
    pub fn label(&self) -> String {
        record_label(self.event_id.as_deref(), self.sequence_number.as_deref())
    }

    /// The quarantine entry for this record (stage `ingest`, raw record kept).
    pub fn rejection(&self) -> Rejection {
        Rejection {
            stage: Stage::Ingest,
            record: self.label(),
            change: None,
            raw: Some(self.raw.clone()),
            outcome: self.outcome.to_fhir(),
        }
    }
}

/// Namespace of the v5 UUIDs used as batch ids of DynamoDB stream events.
const BATCH_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3c5e_61a0_9d2b_4f7e_8a41_d7b0_55e2_c913);

/// The principal of deletes made by DynamoDB's own TTL expiry.
const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// Decodes a stream event. Every record ends either as a change in `batch` (in record order)
/// or as a failure; none is dropped.
///
/// `batch.batch_id` is a v5 UUID over the records' `eventID`s (their `SequenceNumber`, or
/// their JSON text, when absent), so a redelivery of the same records has the same id.
pub fn decode(
    event: &DynamoDbStreamEvent,
    resolve: &dyn Fn(&str) -> Option<StreamBinding>,
) -> Decoded {
    let mut changes = Vec::with_capacity(event.records.len());
    let mut failures = Vec::new();
    for raw in &event.records {
        match decode_record(raw, resolve) {
            Ok(change) => changes.push(change),
            Err(failure) => failures.push(failure),
        }
    }
    tracing::debug!(
        records = event.records.len(),
        changes = changes.len(),
        failures = failures.len(),
        "decoded DynamoDB stream event"
    );
    Decoded {
        batch: ChangeBatch {
            batch_id: batch_id(&event.records),
            changes,
        },
        failures,
    }
}

/// The partial-batch response for the given failures: one `itemIdentifier` per failure, the
/// record's `dynamodb.SequenceNumber` (never its `eventID`: Lambda would not recognise it and
/// fail the whole batch). Lambda checkpoints before the lowest one returned and retries from
/// there. A failure without a sequence number cannot be named, so it is answered with an empty
/// `itemIdentifier`, which AWS defines as "the whole batch failed"
/// (<https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html>).
/// No failures gives an empty list: full success.
///
/// Decoding failures are deterministic: a retry fails the same way. Callers normally
/// quarantine those ([`RecordFailure::rejection`]) and answer with this only for records they
/// could not hand on.
pub fn batch_response(failures: &[RecordFailure]) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    response.batch_item_failures = failures
        .iter()
        .map(|f| {
            let mut item = DynamoDbBatchItemFailure::default();
            item.item_identifier = Some(
                f.sequence_number
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("")
                    .to_owned(),
            );
            item
        })
        .collect();
    response
}

fn batch_id(records: &[Value]) -> String {
    let mut name = String::from("dynamodb");
    for raw in records {
        name.push('\n');
        match (raw_event_id(raw), raw_sequence_number(raw)) {
            (Some(id), _) => name.push_str(id),
            (None, Some(seq)) => name.push_str(seq),
            (None, None) => name.push_str(&raw.to_string()),
        }
    }
    uuid::Uuid::new_v5(&BATCH_ID_NAMESPACE, name.as_bytes()).to_string()
}

fn raw_event_id(raw: &Value) -> Option<&str> {
    raw.get("eventID").and_then(Value::as_str)
}

fn raw_sequence_number(raw: &Value) -> Option<&str> {
    raw.get("dynamodb")
        .and_then(|d| d.get("SequenceNumber"))
        .and_then(Value::as_str)
}

fn record_label(event_id: Option<&str>, sequence_number: Option<&str>) -> String {
    format!(
        "dynamodb eventID={} SequenceNumber={}",
        event_id.unwrap_or("?"),
        sequence_number.unwrap_or("?")
    )
}

/// Builds the failure of one record from its issues; diagnostics are prefixed with the record.
fn failure(raw: &Value, issues: Vec<Issue>) -> RecordFailure {
    let event_id = raw_event_id(raw).map(str::to_owned);
    let sequence_number = raw_sequence_number(raw).map(str::to_owned);
    let label = record_label(event_id.as_deref(), sequence_number.as_deref());
    let outcome = Outcome {
        issues: issues
            .into_iter()
            .map(|mut i| {
                i.diagnostics = format!("{label}: {}", i.diagnostics);
                i
            })
            .collect(),
    };
    RecordFailure {
        sequence_number,
        event_id,
        raw: raw.clone(),
        outcome,
    }
}

fn issue(code: &str, place: impl Into<String>, reason: impl Into<String>) -> Issue {
    Issue::error(code, reason).at(place)
}

fn decode_record(
    raw: &Value,
    resolve: &dyn Fn(&str) -> Option<StreamBinding>,
) -> Result<SourceChange, RecordFailure> {
    // Read from the borrowed value: no copy of the whole record first.
    let record: EventRecord = match EventRecord::deserialize(raw) {
        Ok(r) => r,
        Err(_) => return Err(failure(raw, diagnose(raw))),
    };
    let fail =
        |code: &str, place: &str, reason: String| failure(raw, vec![issue(code, place, reason)]);

    if let Some(src) = record.event_source.as_deref()
        && src != "aws:dynamodb"
    {
        return Err(fail(
            "not-supported",
            "eventSource",
            "eventSource is not aws:dynamodb".into(),
        ));
    }

    let table = table_name(&record).ok_or_else(|| {
        fail(
            "structure",
            "eventSourceARN",
            "no table name: eventSourceARN is missing or not a DynamoDB stream ARN \
             (arn:aws:dynamodb:<region>:<account>:table/<Name>/stream/<label>)"
                .into(),
        )
    })?;
    let binding = resolve(&table).ok_or_else(|| {
        fail(
            "not-found",
            "eventSourceARN",
            format!("no source is configured for DynamoDB table `{table}`"),
        )
    })?;

    let sequence = match record.change.sequence_number.as_deref() {
        None => {
            return Err(fail(
                "required",
                "dynamodb.SequenceNumber",
                "dynamodb.SequenceNumber is missing".into(),
            ));
        }
        Some(s) => Sequence::parse(s).map_err(|_| {
            fail(
                "value",
                "dynamodb.SequenceNumber",
                "dynamodb.SequenceNumber is not a decimal integer".into(),
            )
        })?,
    };

    let has_time = raw
        .get("dynamodb")
        .and_then(|d| d.get("ApproximateCreationDateTime"))
        .is_some_and(Value::is_number);
    if !has_time {
        return Err(fail(
            "required",
            "dynamodb.ApproximateCreationDateTime",
            "dynamodb.ApproximateCreationDateTime (epoch seconds) is missing".into(),
        ));
    }
    let observed_at: DateTime<Utc> = record.change.approximate_creation_date_time;

    let op = match record.event_name.as_str() {
        "INSERT" | "MODIFY" => Op::Upsert,
        "REMOVE" => Op::Delete,
        _ => {
            return Err(fail(
                "not-supported",
                "eventName",
                "eventName is not INSERT, MODIFY or REMOVE".into(),
            ));
        }
    };

    let mut issues = Vec::new();
    let keys = item_to_json(&record.change.keys, "dynamodb.Keys", &mut issues);
    let data = match op {
        Op::Upsert => {
            if record.change.new_image.is_empty() {
                let view = record
                    .change
                    .stream_view_type
                    .as_ref()
                    .map_or_else(|| "unknown".to_owned(), ToString::to_string);
                return Err(fail(
                    "not-supported",
                    "dynamodb.NewImage",
                    format!(
                        "{} record has no NewImage (StreamViewType {view}): the stream view \
                         type must include new images (NEW_IMAGE or NEW_AND_OLD_IMAGES)",
                        record.event_name
                    ),
                ));
            }
            Value::Object(item_to_json(
                &record.change.new_image,
                "dynamodb.NewImage",
                &mut issues,
            ))
        }
        Op::Delete => {
            if is_ttl_delete(&record) {
                tracing::debug!(event_id = %record.event_id, "TTL expiry delete");
            }
            if record.change.old_image.is_empty() {
                Value::Object(keys.clone())
            } else {
                Value::Object(item_to_json(
                    &record.change.old_image,
                    "dynamodb.OldImage",
                    &mut issues,
                ))
            }
        }
    };

    let key = if binding.key.is_empty() {
        if keys.is_empty() {
            issues.push(issue(
                "required",
                "dynamodb.Keys",
                "dynamodb.Keys is missing or empty",
            ));
        }
        RecordKey(keys.into_iter().collect())
    } else {
        let mut key = RecordKey::default();
        for name in &binding.key {
            match keys.get(name) {
                Some(v) => {
                    key.0.insert(name.clone(), v.clone());
                }
                None => issues.push(issue(
                    "required",
                    format!("dynamodb.Keys.{name}"),
                    format!("key attribute `{name}` is missing from dynamodb.Keys"),
                )),
            }
        }
        key
    };

    if !issues.is_empty() {
        return Err(failure(raw, issues));
    }
    Ok(SourceChange {
        source: binding.source,
        entity: binding.entity,
        key,
        op,
        sequence,
        observed_at,
        data: data.into(),
    })
}

/// True for a delete made by DynamoDB's TTL expiry rather than by a client.
fn is_ttl_delete(record: &EventRecord) -> bool {
    record.event_name == "REMOVE"
        && record
            .user_identity
            .as_ref()
            .is_some_and(|u| u.principal_id == TTL_PRINCIPAL)
}

/// The table name, from `eventSourceARN` or else the record's `tableName`.
fn table_name(record: &EventRecord) -> Option<String> {
    match record.event_source_arn.as_deref() {
        Some(arn) => table_from_arn(arn).map(str::to_owned),
        None => record.table_name.clone().filter(|t| !t.is_empty()),
    }
}

/// `arn:<partition>:dynamodb:<region>:<account>:table/<Name>/stream/<label>` → `<Name>`.
pub fn table_from_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("dynamodb"), Some(_region), Some(_account)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let resource = parts.next()?;
    let mut segments = resource.split('/');
    match (segments.next(), segments.next(), segments.next()) {
        (Some("table"), Some(name), Some("stream")) if !name.is_empty() => Some(name),
        _ => None,
    }
}

/// One attribute conversion problem: where, and why (never the value).
fn bad(issues: &mut Vec<Issue>, code: &str, place: String, reason: &str) {
    issues.push(issue(code, place.clone(), format!("{place}: {reason}")));
}

/// Converts an item (an attribute map) to a JSON object, keys in sorted order so the result
/// does not depend on hash order. Problems are pushed to `issues`, each at `place.<attr>`.
fn item_to_json(
    item: &HashMap<String, AttributeValue>,
    place: &str,
    issues: &mut Vec<Issue>,
) -> Map<String, Value> {
    let mut attrs: Vec<(&String, &AttributeValue)> = item.iter().collect();
    attrs.sort_unstable_by(|a, b| a.0.cmp(b.0));
    // Names are distinct and sorted: the map is built in one pass, not by a search per name.
    attrs
        .into_iter()
        .map(|(name, v)| (name.clone(), attribute_at(v, place, name, issues)))
        .collect()
}

/// [`attribute_to_json_at`] of the attribute `name` of an item at `place`, with the place
/// string (`place.name`) made only for the kinds that can fail or nest.
fn attribute_at(v: &AttributeValue, place: &str, name: &str, issues: &mut Vec<Issue>) -> Value {
    match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::N(n) => match number_to_json(n) {
            Some(v) => v,
            None => {
                bad(issues, "value", format!("{place}.{name}.N"), "not a number");
                Value::Null
            }
        },
        _ => attribute_to_json_at(v, &format!("{place}.{name}"), issues),
    }
}

/// Converts one attribute value to JSON (see the module docs for the rules).
///
/// On error, returns every problem found, each as an issue whose location is the path of the
/// bad part below `place` (e.g. `dynamodb.NewImage.birth_date.N`).
pub fn attribute_to_json(v: &AttributeValue, place: &str) -> Result<Value, Vec<Issue>> {
    let mut issues = Vec::new();
    let value = attribute_to_json_at(v, place, &mut issues);
    if issues.is_empty() {
        Ok(value)
    } else {
        Err(issues)
    }
}

fn attribute_to_json_at(v: &AttributeValue, place: &str, issues: &mut Vec<Issue>) -> Value {
    let b64 = |bytes: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => number_or_issue(n, format!("{place}.N"), issues),
        AttributeValue::B(bytes) => b64(bytes),
        AttributeValue::Bool(b) => Value::Bool(*b),
        // `NULL` is only ever `true`; DynamoDB has no `NULL: false`.
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::L(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| attribute_to_json_at(v, &format!("{place}.L[{i}]"), issues))
                .collect(),
        ),
        AttributeValue::M(map) => Value::Object(item_to_json(map, &format!("{place}.M"), issues)),
        AttributeValue::Ss(items) => {
            Value::Array(items.iter().map(|s| Value::String(s.clone())).collect())
        }
        AttributeValue::Ns(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, n)| number_or_issue(n, format!("{place}.NS[{i}]"), issues))
                .collect(),
        ),
        AttributeValue::Bs(items) => Value::Array(items.iter().map(|b| b64(b)).collect()),
    }
}

fn number_or_issue(text: &str, place: String, issues: &mut Vec<Issue>) -> Value {
    match number_to_json(text) {
        Some(v) => v,
        None => {
            bad(issues, "value", place, "not a number");
            Value::Null
        }
    }
}

/// Converts a DynamoDB number (its decimal text) to JSON; `None` if it is not a number.
///
/// An integer that fits `i64` or `u64` becomes a JSON integer. Otherwise the number becomes a
/// JSON float if that float's shortest decimal form has exactly the same value (`123.45`,
/// `1.50`, `1E+2`); if not (more digits than a float keeps, e.g. 25-digit integers or 38-digit
/// decimals), the text is kept exactly as a JSON string so no digit is lost.
pub fn number_to_json(text: &str) -> Option<Value> {
    // Integers, the common case, first: what `parse` takes is a number unless it has a `+`
    // (which DynamoDB never writes and the grammar below refuses).
    if !text.starts_with('+') {
        if let Ok(i) = text.parse::<i64>() {
            return Some(Value::Number(i.into()));
        }
        if let Ok(u) = text.parse::<u64>() {
            return Some(Value::Number(u.into()));
        }
    }
    let exact = Decimal::parse(text)?;
    if let Ok(f) = text.parse::<f64>()
        && f.is_finite()
        && shortest_equals(f, &exact)
        && let Some(n) = Number::from_f64(f)
    {
        return Some(Value::Number(n));
    }
    Some(Value::String(text.to_owned()))
}

/// Whether `f`'s shortest decimal form (`{f:e}`) has exactly the value `exact`. The form is
/// written to the stack, not to a new string (a finite `f64` takes at most 24 bytes).
fn shortest_equals(f: f64, exact: &Decimal<'_>) -> bool {
    use std::fmt::Write;
    let mut text = StackText::default();
    match write!(text, "{f:e}") {
        Ok(()) => std::str::from_utf8(&text.bytes[..text.len])
            .ok()
            .and_then(Decimal::parse)
            .is_some_and(|d| d == *exact),
        Err(_) => Decimal::parse(&format!("{f:e}")).as_ref() == Some(exact),
    }
}

/// A short text written on the stack; writing more than it holds is an error.
struct StackText {
    bytes: [u8; 48],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            bytes: [0; 48],
            len: 0,
        }
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A decimal number's exact value, read in place from its text: `digits × 10^exponent`, where
/// `digits` are the integer and fraction digits together without their leading and trailing
/// zeros (zero is no digits, exponent 0, not negative), so equal values are equal.
#[derive(Debug)]
struct Decimal<'t> {
    negative: bool,
    int: &'t [u8],
    frac: &'t [u8],
    /// Where the significant digits start in `int ++ frac`, and how many there are.
    start: usize,
    len: usize,
    exponent: i64,
}

impl Decimal<'_> {
    fn digits(&self) -> impl Iterator<Item = u8> + '_ {
        self.int
            .iter()
            .chain(self.frac)
            .copied()
            .skip(self.start)
            .take(self.len)
    }
}

impl PartialEq for Decimal<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.negative == other.negative
            && self.exponent == other.exponent
            && self.len == other.len
            && self.digits().eq(other.digits())
    }
}

impl<'t> Decimal<'t> {
    /// Parses `-?(d+(.d*)?|.d+)([eE][+-]?d+)?`; anything else is not a number.
    fn parse(text: &'t str) -> Option<Decimal<'t>> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let mut exponent: i64 = match exp {
            None => 0,
            Some(e) => {
                let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
                if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                e.strip_prefix('+').unwrap_or(e).parse().ok()?
            }
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i.as_bytes(), f.as_bytes()),
            None => (mantissa.as_bytes(), &b""[..]),
        };
        if int.len() + frac.len() == 0 || !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        exponent = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
        let total = int.len() + frac.len();
        let lead = int.iter().chain(frac).take_while(|b| **b == b'0').count();
        if lead == total {
            return Some(Decimal {
                negative: false,
                int: b"",
                frac: b"",
                start: 0,
                len: 0,
                exponent: 0,
            });
        }
        let trail = int
            .iter()
            .chain(frac)
            .rev()
            .take_while(|b| **b == b'0')
            .count();
        exponent = exponent.checked_add(i64::try_from(trail).ok()?)?;
        Some(Decimal {
            negative,
            int,
            frac,
            start: lead,
            len: total - lead - trail,
            exponent,
        })
    }
}

/// Finds what makes a record unparseable, by walking its raw JSON: places and reasons only.
fn diagnose(raw: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    let Some(rec) = raw.as_object() else {
        return vec![issue("structure", "$", "record is not a JSON object")];
    };
    for field in ["eventID", "eventName", "awsRegion"] {
        match rec.get(field) {
            None | Some(Value::Null) => {
                issues.push(issue("required", field, format!("{field} is missing")))
            }
            Some(Value::String(_)) => {}
            Some(_) => issues.push(issue(
                "structure",
                field,
                format!("{field} must be a string"),
            )),
        }
    }
    for field in [
        "eventSource",
        "eventVersion",
        "eventSourceARN",
        "recordFormat",
        "tableName",
    ] {
        if let Some(v) = rec.get(field)
            && !(v.is_string() || v.is_null())
        {
            issues.push(issue(
                "structure",
                field,
                format!("{field} must be a string"),
            ));
        }
    }
    if let Some(u) = rec.get("userIdentity")
        && !u.is_null()
    {
        match u.as_object() {
            None => issues.push(issue(
                "structure",
                "userIdentity",
                "userIdentity must be an object",
            )),
            Some(u) => {
                for f in ["type", "principalId"] {
                    if u.get(f).is_some_and(|v| !v.is_string()) {
                        issues.push(issue(
                            "structure",
                            format!("userIdentity.{f}"),
                            format!("userIdentity.{f} must be a string"),
                        ));
                    }
                }
            }
        }
    }
    match rec.get("dynamodb") {
        None | Some(Value::Null) => issues.push(issue(
            "required",
            "dynamodb",
            "the dynamodb block is missing",
        )),
        Some(Value::Object(d)) => diagnose_stream_record(d, &mut issues),
        Some(_) => issues.push(issue("structure", "dynamodb", "dynamodb must be an object")),
    }
    if issues.is_empty() {
        issues.push(issue(
            "structure",
            "$",
            "record does not have the shape of a DynamoDB Streams record",
        ));
    }
    issues
}

fn diagnose_stream_record(d: &Map<String, Value>, issues: &mut Vec<Issue>) {
    if d.get("ApproximateCreationDateTime")
        .is_some_and(|v| !v.is_number())
    {
        issues.push(issue(
            "structure",
            "dynamodb.ApproximateCreationDateTime",
            "dynamodb.ApproximateCreationDateTime must be a number (epoch seconds)",
        ));
    }
    match d.get("SizeBytes") {
        None => issues.push(issue(
            "required",
            "dynamodb.SizeBytes",
            "dynamodb.SizeBytes is missing",
        )),
        Some(v) if v.is_i64() => {}
        Some(_) => issues.push(issue(
            "structure",
            "dynamodb.SizeBytes",
            "dynamodb.SizeBytes must be an integer",
        )),
    }
    if d.get("SequenceNumber")
        .is_some_and(|v| !(v.is_string() || v.is_null()))
    {
        issues.push(issue(
            "structure",
            "dynamodb.SequenceNumber",
            "dynamodb.SequenceNumber must be a string",
        ));
    }
    if let Some(v) = d.get("StreamViewType")
        && !v.is_null()
        && !matches!(
            v.as_str(),
            Some("KEYS_ONLY" | "NEW_IMAGE" | "OLD_IMAGE" | "NEW_AND_OLD_IMAGES")
        )
    {
        issues.push(issue(
            "value",
            "dynamodb.StreamViewType",
            "dynamodb.StreamViewType is not KEYS_ONLY, NEW_IMAGE, OLD_IMAGE or NEW_AND_OLD_IMAGES",
        ));
    }
    for image in ["Keys", "NewImage", "OldImage"] {
        let place = format!("dynamodb.{image}");
        match d.get(image) {
            None | Some(Value::Null) => {}
            Some(Value::Object(attrs)) => {
                for (name, v) in sorted(attrs) {
                    diagnose_attribute(v, &format!("{place}.{name}"), issues);
                }
            }
            Some(_) => bad(
                issues,
                "structure",
                place,
                "must be a map of attribute values",
            ),
        }
    }
}

fn sorted(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = map.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// Checks that `v` is an array whose members all pass `check`.
fn check_members(
    v: &Value,
    at: &str,
    check: &dyn Fn(&Value) -> bool,
    what: &str,
    issues: &mut Vec<Issue>,
) {
    match v.as_array() {
        None => bad(issues, "structure", at.to_owned(), "must be an array"),
        Some(items) => {
            for (i, item) in items.iter().enumerate() {
                if !check(item) {
                    bad(issues, "structure", format!("{at}[{i}]"), what);
                }
            }
        }
    }
}

/// Checks one raw attribute value against the AttributeValue JSON shape.
fn diagnose_attribute(v: &Value, place: &str, issues: &mut Vec<Issue>) {
    let single = v
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next());
    let Some((kind, inner)) = single else {
        bad(
            issues,
            "structure",
            place.to_owned(),
            "must be an object with exactly one type key (S, N, B, BOOL, NULL, L, M, SS, NS, BS)",
        );
        return;
    };
    let at = format!("{place}.{kind}");
    let is_b64 = |v: &Value| {
        v.as_str()
            .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok())
    };
    match kind.as_str() {
        "S" if !inner.is_string() => bad(issues, "structure", at, "must be a string"),
        "N" => match inner.as_str() {
            None => bad(issues, "structure", at, "must be a string holding a number"),
            Some(n) if Decimal::parse(n).is_none() => bad(issues, "value", at, "not a number"),
            Some(_) => {}
        },
        "BOOL" | "NULL" if !inner.is_boolean() => bad(issues, "structure", at, "must be a boolean"),
        "B" if !is_b64(inner) => bad(issues, "structure", at, "must be a base64 string"),
        "SS" => check_members(inner, &at, &Value::is_string, "must be a string", issues),
        "NS" => check_members(
            inner,
            &at,
            &|v| v.as_str().is_some_and(|n| Decimal::parse(n).is_some()),
            "must be a string holding a number",
            issues,
        ),
        "BS" => check_members(inner, &at, &is_b64, "must be a base64 string", issues),
        "L" => match inner.as_array() {
            None => bad(issues, "structure", at, "must be an array"),
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    diagnose_attribute(item, &format!("{at}[{i}]"), issues);
                }
            }
        },
        "M" => match inner.as_object() {
            None => bad(issues, "structure", at, "must be an object"),
            Some(attrs) => {
                for (name, item) in sorted(attrs) {
                    diagnose_attribute(item, &format!("{at}.{name}"), issues);
                }
            }
        },
        "S" | "BOOL" | "NULL" | "B" => {}
        _ => bad(
            issues,
            "structure",
            place.to_owned(),
            "unknown attribute type key (expected S, N, B, BOOL, NULL, L, M, SS, NS, BS)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> DynamoDbStreamEvent {
        let path = format!(
            "{}/tests/fixtures/dynamodb-{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn binding(source: &str, entity: &str, key: &[&str]) -> StreamBinding {
        StreamBinding {
            source: source.into(),
            entity: entity.into(),
            key: key.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    fn resolve(table: &str) -> Option<StreamBinding> {
        match table {
            "ExampleTableWithStream" => Some(binding("app", "messages", &["Id"])),
            "Example-Table" => Some(binding("app", "examples", &["key"])),
            "Patients" => Some(binding("app", "patients", &["pk"])),
            _ => None,
        }
    }

    fn decode_fixture(name: &str) -> Decoded {
        decode(&fixture(name), &resolve)
    }

    fn time(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// The failure of the record with this eventID.
    fn failure_of<'a>(d: &'a Decoded, event_id: &str) -> &'a RecordFailure {
        d.failures
            .iter()
            .find(|f| f.event_id.as_deref() == Some(event_id))
            .unwrap_or_else(|| panic!("no failure for {event_id}: {:#?}", d.failures))
    }

    fn places(f: &RecordFailure) -> Vec<String> {
        f.outcome
            .issues
            .iter()
            .flat_map(|i| i.expression.clone())
            .collect()
    }

    fn codes(f: &RecordFailure) -> Vec<String> {
        f.outcome.issues.iter().map(|i| i.code.clone()).collect()
    }

    #[test]
    fn canonical_insert_modify_remove() {
        let d = decode_fixture("canonical");
        assert!(d.failures.is_empty(), "{:#?}", d.failures);
        let c = &d.batch.changes;
        assert_eq!(c.len(), 3);
        let key = RecordKey::from_pairs([("Id", json!(101))]);
        for (change, seq) in c.iter().zip(["111", "222", "333"]) {
            assert_eq!(change.source, "app");
            assert_eq!(change.entity, "messages");
            assert_eq!(change.key, key);
            assert_eq!(change.sequence, Sequence::parse(seq).unwrap());
        }
        assert_eq!(c[0].op, Op::Upsert);
        assert_eq!(c[0].data, json!({"Id": 101, "Message": "New item!"}));
        assert_eq!(c[0].observed_at, time("2015-06-27T00:48:05Z"));
        assert_eq!(c[1].op, Op::Upsert);
        assert_eq!(
            c[1].data,
            json!({"Id": 101, "Message": "This item has changed"})
        );
        assert_eq!(c[1].observed_at, time("2015-06-27T00:48:06Z"));
        assert_eq!(c[2].op, Op::Delete);
        assert_eq!(
            c[2].data,
            json!({"Id": 101, "Message": "This item has changed"})
        );
        assert_eq!(c[2].observed_at, time("2015-06-27T00:48:07Z"));
        assert!(batch_response(&d.failures).batch_item_failures.is_empty());
    }

    #[test]
    #[allow(clippy::approx_constant)] // 3.14159 is the fixture's value, not an approximation of π
    fn every_attribute_kind_converts() {
        let d = decode_fixture("attribute-kinds");
        assert!(d.failures.is_empty(), "{:#?}", d.failures);
        let c = &d.batch.changes[0];
        assert_eq!(c.entity, "examples");
        // The binding names only `key`; `val` (also in Keys) is left out of the record key.
        assert_eq!(c.key, RecordKey::from_pairs([("key", json!("binary"))]));
        assert_eq!(
            c.sequence,
            Sequence::parse("1405400000000002063282832").unwrap()
        );
        assert_eq!(c.observed_at, time("2016-12-02T01:27:00Z"));
        let expected = json!({
            "val": "data",
            "asdf1": "AAEqQQ==",
            "b2": "test",
            "asdf2": ["AAEqQQ==", "QSoBAA==", "AAEqQQ=="],
            "key": "binary",
            "Binary": "AAEqQQ==",
            "Boolean": true,
            "BinarySet": ["AAEqQQ==", "AAEqQQ=="],
            "List": ["Cookies", "Coffee", 3.14159],
            "Map": {"Name": "Joe", "Age": 35},
            "FloatNumber": 123.45,
            "IntegerNumber": 123,
            "NegativeNumber": -42,
            "BigUnsigned": 18446744073709551615u64,
            "HugeInteger": "1405400000000002063282832",
            "TrailingZeros": 1.5,
            "Exponent": 100.0,
            "PreciseDecimal": "0.12345678901234567890123456789",
            "NumberSet": [1234, 567.8],
            "Null": null,
            "String": "Hello",
            "StringSet": ["Giraffe", "Zebra"],
            "EmptyStringSet": []
        });
        assert_eq!(c.data, expected);
        assert!(c.data["IntegerNumber"].is_i64());
        assert!(c.data["BigUnsigned"].is_u64());
        assert!(c.data["Exponent"].is_f64());
    }

    #[test]
    fn numbers_convert_exactly_or_stay_text() {
        let n = |s: &str| number_to_json(s);
        assert_eq!(n("0"), Some(json!(0)));
        assert_eq!(n("-0"), Some(json!(0)));
        assert_eq!(n("007"), Some(json!(7)));
        assert_eq!(n("-9223372036854775808"), Some(json!(i64::MIN)));
        assert_eq!(n("0.1"), Some(json!(0.1)));
        assert_eq!(n(".5"), Some(json!(0.5)));
        assert_eq!(n("5."), Some(json!(5.0)));
        assert_eq!(n("-1.25e-3"), Some(json!(-0.00125)));
        assert_eq!(n("9.99E+125"), Some(json!(9.99e125)));
        // 18446744073709551616 = u64::MAX + 1: an integer beyond u64 is kept as digits.
        assert_eq!(
            n("18446744073709551616"),
            Some(json!("18446744073709551616"))
        );
        assert_eq!(
            n("12345678901234567890123456789012345678"),
            Some(json!("12345678901234567890123456789012345678"))
        );
        assert_eq!(n("0.30000000000000001"), Some(json!("0.30000000000000001")));
        for bad in [
            "", "-", ".", "abc", "1.2.3", "+1", "1e", "1e+", "e5", "1,5", " 1", "0x10", "NaN",
            "inf",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
    }

    /// The conversion before decimals were read in place: the text copied into an owned
    /// `Decimal`, the float's shortest form formatted into a new string.
    fn number_to_json_by_copies(text: &str) -> Option<Value> {
        #[derive(PartialEq)]
        struct Owned {
            negative: bool,
            digits: String,
            exponent: i64,
        }
        fn parse(text: &str) -> Option<Owned> {
            let (negative, rest) = match text.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, text),
            };
            let (mantissa, exp) = match rest.find(['e', 'E']) {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            let mut exponent: i64 = match exp {
                None => 0,
                Some(e) => {
                    let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
                    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    e.strip_prefix('+').unwrap_or(e).parse().ok()?
                }
            };
            let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
            if int.len() + frac.len() == 0
                || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            {
                return None;
            }
            exponent = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
            let all = format!("{int}{frac}");
            let trimmed = all.trim_start_matches('0');
            let digits = trimmed.trim_end_matches('0');
            if digits.is_empty() {
                return Some(Owned {
                    negative: false,
                    digits: String::new(),
                    exponent: 0,
                });
            }
            exponent = exponent.checked_add(i64::try_from(trimmed.len() - digits.len()).ok()?)?;
            Some(Owned {
                negative,
                digits: digits.to_owned(),
                exponent,
            })
        }
        if !text.starts_with('+') {
            if let Ok(i) = text.parse::<i64>() {
                return Some(Value::Number(i.into()));
            }
            if let Ok(u) = text.parse::<u64>() {
                return Some(Value::Number(u.into()));
            }
        }
        let exact = parse(text)?;
        if let Ok(f) = text.parse::<f64>()
            && f.is_finite()
            && parse(&format!("{f:e}")).as_ref() == Some(&exact)
            && let Some(n) = serde_json::Number::from_f64(f)
        {
            return Some(Value::Number(n));
        }
        Some(Value::String(text.to_owned()))
    }

    #[test]
    fn decimals_read_in_place_agree_with_decimals_copied() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "0.0",
            "-0.000",
            "00.00e5",
            "1e400",
            "-1e-400",
            "1e9223372036854775807",
            "1e-9223372036854775808",
            "0e-9223372036854775808",
            "0.1e-9223372036854775808",
            "4.9e-324",
            "2.4703282292062328e-324",
            "1.7976931348623157e308",
            "1.8e308",
            "42.16260877593776",
            "-71.25096856312933",
            "68841.05",
            "2500.00",
            "1.50",
            "100",
            "1E+2",
            ".5",
            "5.",
            "-.5e-1",
            "0.30000000000000001",
            "123456789012345678901234567890",
            "",
            "-",
            ".",
            "e5",
            "1e",
            "1e+",
            "+1",
            "1.2.3",
            "1,5",
            "--1",
            "0x10",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for _ in 0..20_000 {
            let f = f64::from_bits(next());
            if f.is_finite() {
                texts.push(format!("{f}"));
                texts.push(format!("{f:e}"));
                texts.push(format!("{f:.3}"));
                texts.push(format!("{:.17e}", f));
            }
            // Random decimal shapes: digits, a point, an exponent, zeros at either end.
            let r = next();
            let mut t = String::new();
            if r & 1 == 1 {
                t.push('-');
            }
            for i in 0..(r >> 1) % 22 {
                t.push(char::from(b'0' + u8::try_from((next() >> 7) % 10).unwrap()));
                if i == (r >> 9) % 7 {
                    t.push('.');
                }
            }
            if (r >> 14) % 3 == 0 {
                t.push_str(&format!("e{}", i64::try_from(next() % 700).unwrap() - 350));
            }
            texts.push(t);
        }
        let mut floats = 0;
        for t in &texts {
            let got = number_to_json(t);
            assert_eq!(got, number_to_json_by_copies(t), "{t:?}");
            floats += usize::from(got.is_some_and(|v| v.is_f64()));
        }
        assert!(floats > 20_000, "{floats}");
    }

    #[test]
    fn integers_read_first_agree_with_the_exact_decimal_rule() {
        let n = |s: &str| number_to_json(s);
        assert_eq!(n("18446744073709551615"), Some(json!(u64::MAX)));
        assert_eq!(n("9223372036854775807"), Some(json!(i64::MAX)));
        // One past i64's lower bound is no exact float: kept as text.
        assert_eq!(
            n("-9223372036854775809"),
            Some(json!("-9223372036854775809"))
        );
        assert_eq!(n("-00"), Some(json!(0)));
        assert_eq!(n("0012"), Some(json!(12)));
        // Rust's integer parsing takes a leading `+`; DynamoDB numbers never have one.
        for bad in ["+0", "+12", "+18446744073709551615", "-+1", "+-1", "--1"] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ttl_expiry_is_a_delete_with_the_old_image() {
        let d = decode_fixture("ttl-remove");
        assert!(d.failures.is_empty(), "{:#?}", d.failures);
        let c = &d.batch.changes[0];
        assert_eq!(c.op, Op::Delete);
        assert_eq!(c.key, RecordKey::from_pairs([("pk", json!("p-1"))]));
        assert_eq!(
            c.data,
            json!({"pk": "p-1", "expires_at": 1699999999, "last_name": "Lovelace"})
        );
        assert_eq!(c.observed_at, time("2023-11-14T22:13:20Z"));
    }

    #[test]
    fn keys_only_stream_cannot_upsert_but_can_delete() {
        let d = decode_fixture("keys-only");
        assert_eq!(d.batch.changes.len(), 1);
        let del = &d.batch.changes[0];
        assert_eq!(del.op, Op::Delete);
        assert_eq!(del.data, json!({"pk": "p-1"}));
        assert_eq!(d.failures.len(), 2);
        for (id, view) in [("k1", "KEYS_ONLY"), ("k2", "OLD_IMAGE")] {
            let f = failure_of(&d, id);
            assert_eq!(places(f), ["dynamodb.NewImage"]);
            assert_eq!(codes(f), ["not-supported"]);
            let text = &f.outcome.issues[0].diagnostics;
            assert!(text.contains(view), "{text}");
            assert!(text.contains("must include new images"), "{text}");
            assert!(text.contains(&format!("eventID={id}")), "{text}");
        }
        let ids: Vec<_> = batch_response(&d.failures)
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        assert_eq!(
            ids,
            [
                Some("400000000000000000001".to_owned()),
                Some("400000000000000000002".to_owned())
            ]
        );
    }

    #[test]
    fn unknown_table_fails_only_its_record() {
        let d = decode_fixture("unknown-table");
        assert_eq!(d.batch.changes.len(), 1);
        assert_eq!(d.batch.changes[0].entity, "patients");
        let f = failure_of(&d, "u2");
        assert_eq!(codes(f), ["not-found"]);
        assert_eq!(places(f), ["eventSourceARN"]);
        assert!(f.outcome.issues[0].diagnostics.contains("`AuditLog`"));
        assert_eq!(f.sequence_number.as_deref(), Some("500000000000000000002"));
    }

    #[test]
    fn malformed_records_fail_alone_and_name_the_place_not_the_value() {
        let event = fixture("malformed");
        let d = decode(&event, &resolve);
        // Only the one good record goes on; every other record is a failure.
        assert_eq!(d.batch.changes.len(), 1);
        assert_eq!(
            d.batch.changes[0].data,
            json!({"pk": "p-1", "last_name": "Lovelace"})
        );
        assert_eq!(d.failures.len(), event.records.len() - 1);

        let expect = |id: &str, code: &[&str], place: &[&str]| {
            let f = failure_of(&d, id);
            assert_eq!(codes(f), code, "{id}: {:#?}", f.outcome);
            assert_eq!(places(f), place, "{id}: {:#?}", f.outcome);
            assert!(f.label().contains(&format!("eventID={id}")));
            for issue in &f.outcome.issues {
                assert!(
                    issue.diagnostics.contains(&f.label()),
                    "{}",
                    issue.diagnostics
                );
            }
        };
        expect("m1", &["value"], &["dynamodb.NewImage.birth_date.N"]);
        expect("m2", &["required"], &["dynamodb.SequenceNumber"]);
        expect("m3", &["required"], &["dynamodb"]);
        expect("m4", &["structure"], &["dynamodb.NewImage.photo.B"]);
        expect("m5", &["not-supported"], &["eventName"]);
        expect("m7", &["required"], &["dynamodb.Keys.pk"]);
        expect(
            "m8",
            &["structure", "structure"],
            &["dynamodb.NewImage.odd", "dynamodb.NewImage.pk.S"],
        );
        expect(
            "m9",
            &["required"],
            &["dynamodb.ApproximateCreationDateTime"],
        );
        let not_object = d.failures.iter().find(|f| f.raw.is_string()).unwrap();
        assert_eq!(places(not_object), ["$"]);
        assert_eq!(not_object.label(), "dynamodb eventID=? SequenceNumber=?");

        // No outcome carries a value from the records.
        let all = serde_json::to_string(
            &d.failures
                .iter()
                .map(|f| f.outcome.to_fhir())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        for value in ["abc", "Lovelace", "not base64", "UPDATE", "o-1", "\"y\""] {
            assert!(!all.contains(value), "outcome leaks {value:?}: {all}");
        }

        // The response names records by SequenceNumber; ones without it fail the batch ("").
        let ids: Vec<String> = batch_response(&d.failures)
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier.unwrap())
            .collect();
        assert_eq!(ids.len(), d.failures.len());
        assert!(ids.contains(&"600000000000000000001".to_owned()));
        assert_eq!(ids.iter().filter(|s| s.is_empty()).count(), 3); // m2, m3, "not a record"
        assert!(
            !ids.iter().any(|s| s.starts_with('m')),
            "eventIDs never identify items"
        );

        let rejection = failure_of(&d, "m1").rejection();
        assert_eq!(rejection.stage, Stage::Ingest);
        assert_eq!(rejection.raw.as_ref(), Some(&event.records[1]));
        assert_eq!(rejection.outcome["resourceType"], "OperationOutcome");
    }

    #[test]
    fn nested_and_set_problems_are_located() {
        let mut event = fixture("ttl-remove");
        let record = &mut event.records[0];
        record["eventName"] = json!("INSERT");
        record["dynamodb"]["NewImage"] = json!({
            "pk": {"S": "p-1"},
            "tags": {"NS": ["1", "x"]},
            "nested": {"M": {"a": {"L": [{"N": "1"}, {"N": "1..2"}]}}}
        });
        let d = decode(&event, &resolve);
        let f = &d.failures[0];
        assert_eq!(
            places(f),
            [
                "dynamodb.NewImage.nested.M.a.L[1].N",
                "dynamodb.NewImage.tags.NS[1]"
            ]
        );
        // The same problems plus one the typed parser refuses (bad base64, unknown type key)
        // are found by walking the raw record.
        event.records[0]["dynamodb"]["NewImage"]["blobs"] = json!({"BS": ["@@"]});
        event.records[0]["dynamodb"]["NewImage"]["odd"] = json!({"M": {"q": {"Q": 1}}});
        let d = decode(&event, &resolve);
        assert_eq!(
            places(&d.failures[0]),
            [
                "dynamodb.NewImage.blobs.BS[0]",
                "dynamodb.NewImage.nested.M.a.L[1].N",
                "dynamodb.NewImage.odd.M.q",
                "dynamodb.NewImage.tags.NS[1]"
            ]
        );
    }

    #[test]
    fn long_sequence_numbers_order_numerically() {
        let d = decode_fixture("long-sequence");
        assert!(d.failures.is_empty(), "{:#?}", d.failures);
        let [a, b] = [&d.batch.changes[0], &d.batch.changes[1]];
        assert_eq!(a.sequence.as_str(), "1405400000000002063282832");
        assert_eq!(b.sequence.as_str(), "999999999999999999999");
        // Lexically "9…" > "1…", numerically the 21-digit one is older.
        assert!(b.sequence < a.sequence);
    }

    #[test]
    fn batch_id_is_stable_across_redeliveries() {
        let a = decode_fixture("canonical");
        let b = decode_fixture("canonical");
        assert_eq!(a.batch.batch_id, b.batch.batch_id);
        assert!(uuid::Uuid::parse_str(&a.batch.batch_id).is_ok());
        let mut fewer = fixture("canonical");
        fewer.records.pop();
        assert_ne!(decode(&fewer, &resolve).batch.batch_id, a.batch.batch_id);
        assert_ne!(decode_fixture("keys-only").batch.batch_id, a.batch.batch_id);
    }

    #[test]
    fn missing_timestamp_of_the_canonical_example_is_refused() {
        let mut event = fixture("canonical");
        if let Some(d) = event.records[0]["dynamodb"].as_object_mut() {
            d.remove("ApproximateCreationDateTime");
        }
        let d = decode(&event, &resolve);
        assert_eq!(d.batch.changes.len(), 2);
        assert_eq!(
            places(failure_of(&d, "1")),
            ["dynamodb.ApproximateCreationDateTime"]
        );
    }

    #[test]
    fn table_name_from_arn_or_table_name_field() {
        assert_eq!(
            table_from_arn(
                "arn:aws:dynamodb:us-east-1:123456789012:table/Example-Table/stream/2016-12-01T00:00:00.000"
            ),
            Some("Example-Table")
        );
        assert_eq!(
            table_from_arn("arn:aws-cn:dynamodb:cn-north-1:123:table/T.1/stream/x"),
            Some("T.1")
        );
        for bad in [
            "stream-ARN",
            "arn:aws:kinesis:us-east-1:1:stream/x",
            "arn:aws:dynamodb:us-east-1:1:table/T",
            "arn:aws:dynamodb:us-east-1:1:table//stream/x",
        ] {
            assert_eq!(table_from_arn(bad), None, "{bad}");
        }
        // The optional-fields shape (aws_lambda_events fixture) has `tableName` and no ARN.
        let raw = json!({
            "awsRegion": "eu-west-1", "eventID": "00000000-0000-0000-0000-000000000000",
            "eventName": "INSERT", "userIdentity": null, "recordFormat": "application/json",
            "tableName": "Patients",
            "dynamodb": {"ApproximateCreationDateTime": 0, "Keys": {"pk": {"S": "p-9"}},
                         "NewImage": {"pk": {"S": "p-9"}}, "SequenceNumber": "7", "SizeBytes": 292},
            "eventSource": "aws:dynamodb"
        });
        let d = decode(&DynamoDbStreamEvent { records: vec![raw] }, &resolve);
        assert!(d.failures.is_empty(), "{:#?}", d.failures);
        assert_eq!(
            d.batch.changes[0].key,
            RecordKey::from_pairs([("pk", json!("p-9"))])
        );
    }

    #[test]
    fn binding_without_key_names_uses_all_keys() {
        let event = fixture("attribute-kinds");
        let d = decode(&event, &|_| Some(binding("app", "examples", &[])));
        assert_eq!(
            d.batch.changes[0].key,
            RecordKey::from_pairs([("key", json!("binary")), ("val", json!("data"))])
        );
    }

    #[test]
    fn events_round_trip_through_serde() {
        for name in [
            "canonical",
            "attribute-kinds",
            "ttl-remove",
            "keys-only",
            "unknown-table",
            "malformed",
            "long-sequence",
        ] {
            let event = fixture(name);
            let text = serde_json::to_string(&event).unwrap();
            let back: DynamoDbStreamEvent = serde_json::from_str(&text).unwrap();
            assert_eq!(back, event, "{name}");
            assert_eq!(decode(&back, &resolve), decode(&event, &resolve), "{name}");
        }
        // The typed record round-trips too (aws_lambda_events' own model of a record).
        for raw in fixture("canonical").records {
            let typed: EventRecord = serde_json::from_value(raw).unwrap();
            let again: EventRecord =
                serde_json::from_str(&serde_json::to_string(&typed).unwrap()).unwrap();
            assert_eq!(again, typed);
        }
        let response = batch_response(&decode_fixture("keys-only").failures);
        let v = serde_json::to_value(&response).unwrap();
        assert_eq!(
            v,
            json!({"batchItemFailures": [
                {"itemIdentifier": "400000000000000000001"},
                {"itemIdentifier": "400000000000000000002"}
            ]})
        );
    }
}
