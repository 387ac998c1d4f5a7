//! Search and paged history over a FHIR store: the port the partner gateway reads through,
//! and the FHIR knowledge every adapter shares — which search parameters each resource type
//! has, and which values of a resource each parameter indexes.
//!
//! Parameters (FHIR R4 names and types):
//! - every type: `_id`, `_lastUpdated`, `identifier` (token);
//! - `Patient`: `name`, `family`, `given` (string), `birthdate` (date), `gender` (token);
//! - every other type (the clinical types): `patient`, `subject` (reference), `code`,
//!   `status`, `category` (token), `date` (date). Each reads the element its resource type
//!   uses for it (`Observation.effective[x]`, `Condition.onset[x]`, `Immunization.patient`,
//!   `Coverage.beneficiary`…), see [`index_entries`].
//!
//! Strings match case-insensitively by prefix (`:exact` and `:contains` as in FHIR); accents
//! are not folded. Dates are ranges at millisecond precision, stored as UTC text that sorts in
//! time order, so adapters compare them as text.

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use serde_json::Value;

use super::{StoreError, StoredVersion};

/// The lowest and highest instants a range may have (open period ends).
pub const MIN_INSTANT: &str = "0001-01-01T00:00:00.000Z";
pub const MAX_INSTANT: &str = "9999-12-31T23:59:59.999Z";

/// The type of a search parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Token,
    String,
    Date,
    Reference,
}

impl ParamKind {
    /// The FHIR `SearchParamType` code.
    pub fn code(self) -> &'static str {
        match self {
            ParamKind::Token => "token",
            ParamKind::String => "string",
            ParamKind::Date => "date",
            ParamKind::Reference => "reference",
        }
    }
}

/// Parameters every type has, handled on the resource row itself.
pub const COMMON_PARAMS: &[(&str, ParamKind)] = &[
    ("_id", ParamKind::Token),
    ("_lastUpdated", ParamKind::Date),
    ("identifier", ParamKind::Token),
];

const PATIENT_PARAMS: &[(&str, ParamKind)] = &[
    ("name", ParamKind::String),
    ("family", ParamKind::String),
    ("given", ParamKind::String),
    ("birthdate", ParamKind::Date),
    ("gender", ParamKind::Token),
];

const CLINICAL_PARAMS: &[(&str, ParamKind)] = &[
    ("patient", ParamKind::Reference),
    ("subject", ParamKind::Reference),
    ("code", ParamKind::Token),
    ("date", ParamKind::Date),
    ("status", ParamKind::Token),
    ("category", ParamKind::Token),
];

/// The indexed parameters of a type (besides [`COMMON_PARAMS`]).
pub fn type_params(resource_type: &str) -> &'static [(&'static str, ParamKind)] {
    if resource_type == "Patient" {
        PATIENT_PARAMS
    } else {
        CLINICAL_PARAMS
    }
}

/// The kind of a parameter of a type, or `None` if the type has no such parameter.
pub fn param_kind(resource_type: &str, param: &str) -> Option<ParamKind> {
    COMMON_PARAMS
        .iter()
        .chain(type_params(resource_type))
        .find(|(p, _)| *p == param)
        .map(|(_, k)| *k)
}

/// One indexed value of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    pub param: &'static str,
    pub value: IndexValue,
}

/// An indexed value, by parameter kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexValue {
    Token {
        system: Option<String>,
        code: String,
    },
    String {
        /// Lower-cased, for prefix and contains matches.
        normalized: String,
        /// As written, for `:exact`.
        exact: String,
    },
    Date {
        low: String,
        high: String,
    },
    Reference {
        resource_type: Option<String>,
        id: String,
    },
}

/// The values a resource's search parameters index (not `_id`/`_lastUpdated`, which every
/// adapter reads from its own resource row).
pub fn index_entries(resource: &Value) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return out;
    };
    for identifier in list(resource.get("identifier")) {
        if let Some(code) = identifier.get("value").and_then(Value::as_str) {
            out.push(token("identifier", identifier.get("system"), code));
        }
    }
    if resource_type == "Patient" {
        patient_entries(resource, &mut out);
    } else {
        clinical_entries(resource, &mut out);
    }
    out
}

fn patient_entries(resource: &Value, out: &mut Vec<IndexEntry>) {
    for name in list(resource.get("name")) {
        let mut add = |param: &'static str, v: &Value| {
            if let Some(s) = v.as_str() {
                out.push(string(param, s));
            }
        };
        if let Some(text) = name.get("text") {
            add("name", text);
        }
        if let Some(family) = name.get("family") {
            add("name", family);
            add("family", family);
        }
        for given in list(name.get("given")) {
            add("name", given);
            add("given", given);
        }
        for part in list(name.get("prefix")).chain(list(name.get("suffix"))) {
            add("name", part);
        }
    }
    if let Some((low, high)) = resource
        .get("birthDate")
        .and_then(Value::as_str)
        .and_then(date_range)
    {
        out.push(date("birthdate", low, high));
    }
    if let Some(g) = resource.get("gender").and_then(Value::as_str) {
        out.push(IndexEntry {
            param: "gender",
            value: IndexValue::Token {
                system: Some("http://hl7.org/fhir/administrative-gender".to_owned()),
                code: g.to_owned(),
            },
        });
    }
}

/// Elements holding the patient a clinical resource is about, in the order types use them.
const PATIENT_ELEMENTS: &[&str] = &["subject", "patient", "beneficiary"];
/// Elements holding a clinical resource's code.
const CODE_ELEMENTS: &[&str] = &["code", "vaccineCode", "medicationCodeableConcept"];
/// Elements holding a clinical resource's clinically relevant date, first present wins.
const DATE_ELEMENTS: &[&str] = &[
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "onsetDateTime",
    "onsetPeriod",
    "performedDateTime",
    "performedPeriod",
    "occurrenceDateTime",
    "authoredOn",
    "recordedDate",
    "issued",
    "period",
    "date",
    "created",
];

fn clinical_entries(resource: &Value, out: &mut Vec<IndexEntry>) {
    if let Some(subject) = resource.get("subject").and_then(parse_reference) {
        out.push(IndexEntry {
            param: "subject",
            value: subject,
        });
    }
    if let Some(patient) = PATIENT_ELEMENTS
        .iter()
        .filter_map(|e| resource.get(*e).and_then(parse_reference))
        .find(
            |r| matches!(r, IndexValue::Reference { resource_type: Some(t), .. } if t == "Patient"),
        )
    {
        out.push(IndexEntry {
            param: "patient",
            value: patient,
        });
    }
    if let Some(code) = CODE_ELEMENTS.iter().find_map(|e| resource.get(*e)) {
        codeable_tokens("code", code, out);
    }
    match resource.get("status") {
        Some(Value::String(s)) => out.push(token("status", None, s)),
        _ => {
            if let Some(cs) = resource.get("clinicalStatus") {
                codeable_tokens("status", cs, out);
            }
        }
    }
    if let Some(category) = resource.get("category") {
        codeable_tokens("category", category, out);
    }
    if let Some((low, high)) = DATE_ELEMENTS
        .iter()
        .find_map(|e| resource.get(*e))
        .and_then(value_range)
    {
        out.push(date("date", low, high));
    }
}

/// Tokens of a CodeableConcept, a list of them, a `code` string or a list of codes.
fn codeable_tokens(param: &'static str, v: &Value, out: &mut Vec<IndexEntry>) {
    for item in list(Some(v)) {
        match item {
            Value::String(code) => out.push(token(param, None, code)),
            Value::Object(cc) => {
                for coding in list(cc.get("coding")) {
                    if let Some(code) = coding.get("code").and_then(Value::as_str) {
                        out.push(token(param, coding.get("system"), code));
                    }
                }
            }
            _ => {}
        }
    }
}

/// A Reference's target as `(type, id)`, from `Type/id` or an absolute URL ending in it.
fn parse_reference(v: &Value) -> Option<IndexValue> {
    let text = v.get("reference")?.as_str()?;
    let text = text.split(['?', '#']).next().unwrap_or(text);
    let mut parts = text.rsplit('/');
    let id = parts.next().filter(|s| !s.is_empty())?;
    let resource_type = parts
        .next()
        .filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(str::to_owned);
    Some(IndexValue::Reference {
        resource_type,
        id: id.to_owned(),
    })
}

fn list(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    let items: &[Value] = match v {
        Some(Value::Array(a)) => a,
        Some(other) => std::slice::from_ref(other),
        None => &[],
    };
    items.iter()
}

fn token(param: &'static str, system: Option<&Value>, code: &str) -> IndexEntry {
    IndexEntry {
        param,
        value: IndexValue::Token {
            system: system.and_then(Value::as_str).map(str::to_owned),
            code: code.to_owned(),
        },
    }
}

fn string(param: &'static str, s: &str) -> IndexEntry {
    IndexEntry {
        param,
        value: IndexValue::String {
            normalized: s.to_lowercase(),
            exact: s.to_owned(),
        },
    }
}

fn date(param: &'static str, low: String, high: String) -> IndexEntry {
    IndexEntry {
        param,
        value: IndexValue::Date { low, high },
    }
}

/// The range of a date-like element: a date/dateTime/instant string or a Period.
fn value_range(v: &Value) -> Option<(String, String)> {
    match v {
        Value::String(s) => date_range(s),
        Value::Object(period) => {
            let start = period.get("start").and_then(Value::as_str);
            let end = period.get("end").and_then(Value::as_str);
            if start.is_none() && end.is_none() {
                return None;
            }
            let low = match start {
                Some(s) => date_range(s)?.0,
                None => MIN_INSTANT.to_owned(),
            };
            let high = match end {
                Some(e) => date_range(e)?.1,
                None => MAX_INSTANT.to_owned(),
            };
            Some((low, high))
        }
        _ => None,
    }
}

/// Formats an instant as the sortable text every range uses.
pub fn format_instant(t: DateTime<Utc>) -> String {
    use std::fmt::Write as _;
    // Written field by field: `format` parses its pattern on every call, which a profile of
    // store upserts showed (every indexed date formats two instants). Years outside
    // 0000-9999 (a sign) and leap seconds keep chrono's own text.
    let year = t.year();
    if !(0..=9999).contains(&year) || t.nanosecond() >= 1_000_000_000 {
        return chrono_instant(t);
    }
    let mut out = String::with_capacity(24);
    let written = write!(
        out,
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 1_000_000
    );
    match written {
        Ok(()) => out,
        Err(_) => chrono_instant(t),
    }
}

/// [`format_instant`] by chrono's pattern (its reference, and the text of rare instants).
fn chrono_instant(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The range `[low, high]` (inclusive, millisecond precision, UTC) a FHIR date, dateTime or
/// instant covers: `2020` is the whole year, `2020-03-04T10:00:00Z` one second. A time without
/// a zone (allowed in search values) is read as UTC. `None` if the text is not such a value.
pub fn date_range(text: &str) -> Option<(String, String)> {
    let (low, high) = parse_range(text.trim())?;
    Some((format_instant(low), format_instant(high)))
}

fn parse_range(text: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let ms = Duration::milliseconds(1);
    let day_start = |d: NaiveDate| d.and_time(NaiveTime::MIN).and_utc();
    if !text.contains('T') {
        let parts: Vec<&str> = text.split('-').collect();
        let num = |s: &str, len: usize| -> Option<u32> {
            (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let year = i32::try_from(num(parts.first()?, 4)?).ok()?;
        let (start, end) = match parts.len() {
            1 => (
                NaiveDate::from_ymd_opt(year, 1, 1)?,
                NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1),
            ),
            2 => {
                let start = NaiveDate::from_ymd_opt(year, num(parts[1], 2)?, 1)?;
                let next = if start.month() == 12 {
                    NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(year, start.month() + 1, 1)
                };
                (start, next)
            }
            3 => {
                let d = NaiveDate::from_ymd_opt(year, num(parts[1], 2)?, num(parts[2], 2)?)?;
                (d, d.succ_opt())
            }
            _ => return None,
        };
        let low = day_start(start);
        let high = match end {
            Some(e) => day_start(e) - ms,
            None => day_start(start) + Duration::days(1) - ms,
        };
        return Some((low, high));
    }
    // A time: with a zone (RFC 3339), or without one (UTC); seconds may be absent in search.
    let (instant, has_fraction, has_seconds) = if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        (t.with_timezone(&Utc), text.contains('.'), true)
    } else {
        // (format, has seconds, has a zone)
        let formats = [
            ("%Y-%m-%dT%H:%M:%S%.f", true, false),
            ("%Y-%m-%dT%H:%M", false, false),
            ("%Y-%m-%dT%H:%M%:z", false, true),
        ];
        let found = formats.iter().find_map(|(f, secs, zoned)| {
            if *zoned {
                DateTime::parse_from_str(text, f)
                    .ok()
                    .map(|t| (t.with_timezone(&Utc), *secs))
            } else {
                NaiveDateTime::parse_from_str(text, f)
                    .ok()
                    .map(|n| (n.and_utc(), *secs))
            }
        })?;
        (found.0, text.contains('.'), found.1)
    };
    let high = if has_fraction {
        instant
    } else if has_seconds {
        instant + Duration::seconds(1) - ms
    } else {
        instant + Duration::minutes(1) - ms
    };
    Some((instant, high))
}

/// A search prefix (FHIR R4 3.1.1.4.4) of a date parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

impl Prefix {
    /// Splits a leading prefix off a date search value (`ge2020` → `(Ge, "2020")`).
    pub fn split(value: &str) -> (Prefix, &str) {
        const ALL: &[(&str, Prefix)] = &[
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
        ];
        for (p, prefix) in ALL {
            if let Some(rest) = value.strip_prefix(p) {
                return (*prefix, rest);
            }
        }
        (Prefix::Eq, value)
    }
}

/// One value a parameter may match (the values of one parameter are OR-ed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// `_id`.
    Id(String),
    /// A token: `code`, `system|code`, `|code` (no system) or `system|`.
    Token {
        /// `None`: any system; `Some(None)`: no system; `Some(Some(s))`: that system.
        system: Option<Option<String>>,
        code: Option<String>,
    },
    /// A string: prefix (default), `:exact` or `:contains`.
    String { value: String, mode: StringMode },
    /// A date range with a prefix; `_lastUpdated` too.
    Date {
        prefix: Prefix,
        low: String,
        high: String,
    },
    /// A reference: `id` (any type) or `Type/id`.
    Reference {
        resource_type: Option<String>,
        id: String,
    },
}

/// How a string parameter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    Prefix,
    Exact,
    Contains,
}

/// One parameter of a search: a resource matches if it matches any of `any_of`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub param: String,
    pub any_of: Vec<Criterion>,
}

/// A type-level search: every filter must match (AND). Results are ordered by id, so pages
/// are stable while resources change: a page continues after the last id of the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub resource_type: String,
    pub filters: Vec<Filter>,
    /// Page size; 0 asks for the total only.
    pub count: usize,
    /// The `next` cursor of the previous page.
    pub cursor: Option<String>,
}

/// One page of search results.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// All matches, on every page.
    pub total: u64,
    /// This page's matches (current versions, never deletes).
    pub matches: Vec<StoredVersion>,
    /// The cursor of the next page, if there is one.
    pub next: Option<String>,
}

/// A history query: one resource's versions or a whole type's, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub resource_type: String,
    /// `None` for the whole type.
    pub id: Option<String>,
    /// Only versions made at or after this instant (`_since`).
    pub since: Option<DateTime<Utc>>,
    pub count: usize,
    pub cursor: Option<String>,
}

/// One page of history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub total: u64,
    /// Versions, newest first, deletes included.
    pub versions: Vec<StoredVersion>,
    pub next: Option<String>,
}

impl Criterion {
    /// Whether one indexed value of parameter `param` matches: the reference semantics every
    /// adapter answers with (the SQLite store in SQL, the DynamoDB store in Rust over the index
    /// items its key conditions narrowed down). `_id` is not an indexed value: always false.
    pub fn matches(&self, value: &IndexValue) -> bool {
        match (self, value) {
            (Criterion::Token { system, code }, IndexValue::Token { system: s, code: c }) => {
                code.as_ref().is_none_or(|code| code == c)
                    && match system {
                        None => true,
                        Some(None) => s.is_none(),
                        Some(Some(want)) => s.as_deref() == Some(want.as_str()),
                    }
            }
            (Criterion::String { value, mode }, IndexValue::String { normalized, exact }) => {
                match mode {
                    StringMode::Exact => exact == value,
                    StringMode::Prefix => normalized.starts_with(&value.to_lowercase()),
                    StringMode::Contains => normalized.contains(&value.to_lowercase()),
                }
            }
            (Criterion::Date { prefix, low, high }, IndexValue::Date { low: lo, high: hi }) => {
                date_matches(*prefix, lo, hi, low, high)
            }
            (
                Criterion::Reference { resource_type, id },
                IndexValue::Reference {
                    resource_type: t,
                    id: i,
                },
            ) => {
                id == i
                    && resource_type
                        .as_ref()
                        .is_none_or(|want| t.as_deref() == Some(want.as_str()))
            }
            _ => false,
        }
    }
}

/// FHIR R4 prefix semantics of a date search over ranges: the resource's `[lo, hi]` against
/// the value's `[low, high]`, compared as sortable instant text.
pub fn date_matches(prefix: Prefix, lo: &str, hi: &str, low: &str, high: &str) -> bool {
    match prefix {
        Prefix::Eq => lo >= low && hi <= high,
        Prefix::Ne => !(lo >= low && hi <= high),
        Prefix::Gt => hi > high,
        Prefix::Lt => lo < low,
        Prefix::Ge => hi >= low,
        Prefix::Le => lo <= high,
        Prefix::Sa => lo > high,
        Prefix::Eb => hi < low,
    }
}

/// Whether a live resource matches every filter of a query (the values of one filter OR-ed):
/// the same answer as an adapter's index, computed from the resource itself.
pub fn resource_matches(
    resource: &Value,
    id: &str,
    last_updated: &str,
    filters: &[Filter],
) -> bool {
    let entries = index_entries(resource);
    filters.iter().all(|f| {
        f.any_of.iter().any(|c| match c {
            Criterion::Id(want) => want == id,
            Criterion::Date { prefix, low, high } if f.param == "_lastUpdated" => {
                date_matches(*prefix, last_updated, last_updated, low, high)
            }
            _ => entries
                .iter()
                .any(|e| e.param == f.param && c.matches(&e.value)),
        })
    })
}

/// The read side the partner gateway needs beyond [`super::FhirStore`]. Cursors are the
/// adapter's own text; a cursor the adapter did not make is [`StoreError::Invalid`].
#[async_trait]
pub trait SearchStore: Send + Sync + std::fmt::Debug {
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError>;
    async fn history_page(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn range(s: &str) -> (String, String) {
        date_range(s).unwrap()
    }

    #[test]
    fn date_ranges_follow_precision() {
        assert_eq!(
            range("2020"),
            (
                "2020-01-01T00:00:00.000Z".into(),
                "2020-12-31T23:59:59.999Z".into()
            )
        );
        assert_eq!(range("2020-02").1, "2020-02-29T23:59:59.999Z");
        assert_eq!(range("2020-12").1, "2020-12-31T23:59:59.999Z");
        assert_eq!(
            range("1970-03-01"),
            (
                "1970-03-01T00:00:00.000Z".into(),
                "1970-03-01T23:59:59.999Z".into()
            )
        );
        assert_eq!(
            range("2020-03-04T10:00:00+02:00"),
            (
                "2020-03-04T08:00:00.000Z".into(),
                "2020-03-04T08:00:00.999Z".into()
            )
        );
        assert_eq!(
            range("2020-03-04T10:00:00.250Z").1,
            "2020-03-04T10:00:00.250Z"
        );
        assert_eq!(range("2020-03-04T10:00").1, "2020-03-04T10:00:59.999Z");
        for bad in [
            "",
            "20",
            "2020-13",
            "2020-02-30",
            "abc",
            "2020-1-1",
            "2020-01-01Tx",
        ] {
            assert!(date_range(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn instants_are_written_as_chrono_writes_them() {
        let mut instants: Vec<DateTime<Utc>> = [
            "2020-03-04T10:00:00Z",
            "2020-03-04T10:00:00.25Z",
            "1970-01-01T00:00:00.999999Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999Z",
            "0001-02-03T04:05:06.007Z",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        // Outside 0000-9999 and on a leap second chrono's own text is kept.
        instants.push(
            NaiveDate::from_ymd_opt(-1, 12, 31)
                .unwrap()
                .and_time(NaiveTime::MIN)
                .and_utc(),
        );
        instants.push(
            NaiveDate::from_ymd_opt(10000, 1, 1)
                .unwrap()
                .and_time(NaiveTime::MIN)
                .and_utc(),
        );
        instants.push(
            NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_milli_opt(23, 59, 59, 1_500)
                .unwrap()
                .and_utc(),
        );
        // And a sweep of ordinary ones.
        let start: DateTime<Utc> = "1899-12-31T23:59:58.123Z".parse().unwrap();
        instants.extend((0..2000).map(|i| start + Duration::milliseconds(i * 7_777_777_777 + i)));
        for t in instants {
            assert_eq!(format_instant(t), chrono_instant(t), "{t:?}");
        }
    }

    #[test]
    fn prefixes_split() {
        assert_eq!(Prefix::split("ge2020"), (Prefix::Ge, "2020"));
        assert_eq!(Prefix::split("2020"), (Prefix::Eq, "2020"));
        assert_eq!(Prefix::split("eb2020-01"), (Prefix::Eb, "2020-01"));
    }

    #[test]
    fn patient_entries_cover_names_identifiers_birthdate_gender() {
        let p = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": "M1"}, {"value": "X"}],
            "name": [{"family": "Müller", "given": ["Anna", "B"], "text": "Anna Müller"}],
            "birthDate": "1970-03-01",
            "gender": "female"
        });
        let e = index_entries(&p);
        let params: Vec<&str> = e.iter().map(|e| e.param).collect();
        assert_eq!(
            params,
            [
                "identifier",
                "identifier",
                "name",
                "name",
                "family",
                "name",
                "given",
                "name",
                "given",
                "birthdate",
                "gender"
            ]
        );
        assert!(e.contains(&IndexEntry {
            param: "family",
            value: IndexValue::String {
                normalized: "müller".into(),
                exact: "Müller".into()
            }
        }));
        assert!(e.contains(&IndexEntry {
            param: "identifier",
            value: IndexValue::Token {
                system: None,
                code: "X".into()
            }
        }));
    }

    #[test]
    fn clinical_entries_read_each_types_elements() {
        let obs = json!({
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectivePeriod": {"start": "2021-05-01"}
        });
        let e = index_entries(&obs);
        assert!(e.contains(&IndexEntry {
            param: "patient",
            value: IndexValue::Reference {
                resource_type: Some("Patient".into()),
                id: "p1".into()
            }
        }));
        assert!(e.contains(&IndexEntry {
            param: "date",
            value: IndexValue::Date {
                low: "2021-05-01T00:00:00.000Z".into(),
                high: MAX_INSTANT.into()
            }
        }));
        assert_eq!(e.iter().filter(|e| e.param == "code").count(), 1);

        let cond = json!({
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "subject": {"reference": "https://x/fhir/Group/g1"},
            "onsetDateTime": "2019"
        });
        let e = index_entries(&cond);
        assert!(e.iter().any(|e| e.param == "status"));
        assert!(
            !e.iter().any(|e| e.param == "patient"),
            "a Group is not a patient"
        );
        assert!(e.contains(&IndexEntry {
            param: "subject",
            value: IndexValue::Reference {
                resource_type: Some("Group".into()),
                id: "g1".into()
            }
        }));

        let imm = json!({"resourceType": "Immunization", "patient": {"reference": "Patient/p2"},
            "vaccineCode": {"coding": [{"code": "08"}]}, "occurrenceDateTime": "bad date"});
        let e = index_entries(&imm);
        assert!(e.iter().any(|e| e.param == "patient"));
        assert!(e.iter().any(|e| e.param == "code"));
        assert!(
            !e.iter().any(|e| e.param == "date"),
            "a bad date is not indexed"
        );
    }

    #[test]
    fn resources_match_their_own_index_values_and_nothing_else() {
        let p = json!({"resourceType": "Patient", "name": [{"family": "Müller"}],
            "identifier": [{"system": "urn:mrn", "value": "M1"}], "birthDate": "1970"});
        let f = |param: &str, any_of: Vec<Criterion>| Filter {
            param: param.into(),
            any_of,
        };
        let (low, high) = date_range("1970-06").unwrap();
        let lu = "2024-01-01T00:00:00.000Z";
        let yes = [
            f(
                "family",
                vec![Criterion::String {
                    value: "MÜL".into(),
                    mode: StringMode::Prefix,
                }],
            ),
            f(
                "family",
                vec![Criterion::String {
                    value: "Müller".into(),
                    mode: StringMode::Exact,
                }],
            ),
            f(
                "identifier",
                vec![Criterion::Token {
                    system: Some(Some("urn:mrn".into())),
                    code: None,
                }],
            ),
            f(
                "birthdate",
                vec![Criterion::Date {
                    prefix: Prefix::Ge,
                    low: low.clone(),
                    high: high.clone(),
                }],
            ),
            f(
                "_id",
                vec![Criterion::Id("x".into()), Criterion::Id("p1".into())],
            ),
            f(
                "_lastUpdated",
                vec![Criterion::Date {
                    prefix: Prefix::Le,
                    low: lu.into(),
                    high: lu.into(),
                }],
            ),
        ];
        for filter in &yes {
            assert!(
                resource_matches(&p, "p1", lu, std::slice::from_ref(filter)),
                "{filter:?}"
            );
        }
        assert!(resource_matches(&p, "p1", lu, &yes));
        let no = [
            f(
                "family",
                vec![Criterion::String {
                    value: "müller".into(),
                    mode: StringMode::Exact,
                }],
            ),
            f(
                "identifier",
                vec![Criterion::Token {
                    system: Some(None),
                    code: Some("M1".into()),
                }],
            ),
            f(
                "birthdate",
                vec![Criterion::Date {
                    prefix: Prefix::Eq,
                    low,
                    high,
                }],
            ),
            f(
                "gender",
                vec![Criterion::Token {
                    system: None,
                    code: Some("male".into()),
                }],
            ),
            f("family", vec![]),
        ];
        for filter in &no {
            assert!(
                !resource_matches(&p, "p1", lu, std::slice::from_ref(filter)),
                "{filter:?}"
            );
        }
        // A criterion of another kind than the value never matches it.
        let token = Criterion::Token {
            system: None,
            code: Some("M1".into()),
        };
        assert!(!token.matches(&IndexValue::String {
            normalized: "m1".into(),
            exact: "M1".into()
        }));
        assert!(!Criterion::Id("p1".into()).matches(&IndexValue::Reference {
            resource_type: None,
            id: "p1".into()
        }));
    }

    #[test]
    fn odd_shapes_index_nothing_and_do_not_panic() {
        for v in [
            json!(null),
            json!({"resourceType": 3}),
            json!({"resourceType": "Patient", "name": "x", "identifier": 5, "gender": 1}),
            json!({"resourceType": "Observation", "subject": {"reference": ""}, "code": [1, null]}),
        ] {
            let _ = index_entries(&v);
        }
        assert!(
            index_entries(&json!({"resourceType": "Patient", "name": [{"given": [1]}]})).is_empty()
        );
        assert_eq!(param_kind("Patient", "family"), Some(ParamKind::String));
        assert_eq!(param_kind("Observation", "family"), None);
        assert_eq!(
            param_kind("Observation", "_lastUpdated"),
            Some(ParamKind::Date)
        );
    }
}
