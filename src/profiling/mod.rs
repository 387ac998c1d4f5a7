//! Data profiling for people writing mappings: what is in a source file, column by column.
//!
//! Per column: inferred type, null rate, distinct count (exact up to a bound, then an
//! estimate, flagged as such), min/max, the most frequent values, and recognised patterns
//! (dates, date-times, ICD-10-CM, LOINC, SNOMED CT, NPI, US postal codes, UUIDs; the code
//! checks are the offline check-digit checks of [`crate::validation::terminology`]). Per file:
//! the row count and the schema. [`drift`] compares a file set's schema with the last one seen.
//!
//! **This reads data values.** Top values, min and max are data: a profile of patient data
//! holds patient data. It is meant for the engineer's own machine, on data they may see; it is
//! never logged, and nothing calls it in the pipeline. Whole records are never printed.
//!
//! Formats: CSV (header first), NDJSON (one JSON object a line; nested values as JSON text),
//! Parquet (read with the row reader and the DMS value conversion of
//! [`crate::sources::dms::value`]).

mod drift;
mod read;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::validation::terminology::{icd10cm_ok, loinc_ok, npi_ok, snomed_ok};

pub use drift::{DriftReport, SchemaState, drift};
pub use read::Format;

/// How much to remember.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// Distinct values counted exactly up to this many per column; beyond it, estimated.
    pub exact_distinct_limit: usize,
    /// How many top values to show per column.
    pub top: usize,
    /// Stop after this many rows (`None`: the whole file).
    pub max_rows: Option<u64>,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            exact_distinct_limit: 10_000,
            top: 5,
            max_rows: None,
        }
    }
}

/// A file that cannot be profiled at all.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: unknown format (expected .csv, .ndjson/.jsonl or .parquet)")]
    UnknownFormat { file: String },
    #[error("{file}: {reason}")]
    Malformed { file: String, reason: String },
}

/// One value and how often it was seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopValue {
    pub value: String,
    pub count: u64,
}

/// A recognised pattern and the share of non-null values that match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatternMatch {
    pub pattern: String,
    pub share: f64,
}

/// What one column holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    pub name: String,
    /// `integer`, `decimal`, `boolean`, `date`, `datetime`, `string`, `json` or `empty`.
    pub inferred_type: String,
    pub nulls: u64,
    pub null_rate: f64,
    pub distinct: u64,
    /// False when `distinct` is an estimate (more than `exact_distinct_limit` values; a
    /// K-minimum-values sketch, typically within a few percent).
    pub distinct_exact: bool,
    pub min: Option<String>,
    pub max: Option<String>,
    /// Most frequent first. When `distinct_exact` is false, counted among the values seen
    /// before the limit was reached, so indicative only.
    pub top: Vec<TopValue>,
    /// Patterns matched by at least half of the non-null values.
    pub patterns: Vec<PatternMatch>,
}

/// What one file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileProfile {
    pub file: String,
    pub format: Format,
    pub rows: u64,
    /// Column name → inferred type, in file order.
    pub schema: Vec<(String, String)>,
    pub columns: Vec<ColumnProfile>,
    /// Rows that could not be read (file and line; never the row).
    pub errors: Vec<String>,
}

/// A value as a reader gives it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cell<'a> {
    Null,
    Text(&'a str),
    /// A typed value from NDJSON or Parquet, written as text, with its JSON kind.
    Typed(&'a str, Kind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Integer,
    Decimal,
    Boolean,
    Date,
    DateTime,
    String,
    Json,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Integer => "integer",
            Kind::Decimal => "decimal",
            Kind::Boolean => "boolean",
            Kind::Date => "date",
            Kind::DateTime => "datetime",
            Kind::String => "string",
            Kind::Json => "json",
        }
    }

    /// The type of a text value. Numbers with a leading zero (`02081`) are codes, not numbers.
    fn of_text(s: &str) -> Kind {
        let b = s.as_bytes();
        let digits = s.strip_prefix('-').unwrap_or(s);
        if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
            return if digits.len() > 1 && digits.starts_with('0') {
                Kind::String
            } else {
                Kind::Integer
            };
        }
        if let Some((i, f)) = digits.split_once('.')
            && !i.is_empty()
            && !f.is_empty()
            && i.bytes().all(|c| c.is_ascii_digit())
            && f.bytes().all(|c| c.is_ascii_digit())
            && !(i.len() > 1 && i.starts_with('0'))
        {
            return Kind::Decimal;
        }
        if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
            return Kind::Boolean;
        }
        if is_date(b) {
            return Kind::Date;
        }
        if b.len() > 10 && is_date(&b[..10]) && (b[10] == b'T' || b[10] == b' ') {
            let rest = &s[11..];
            if chrono::NaiveTime::parse_from_str(rest.get(..8).unwrap_or(""), "%H:%M:%S").is_ok() {
                return Kind::DateTime;
            }
        }
        Kind::String
    }

    /// The type of a column that holds both.
    fn join(self, other: Kind) -> Kind {
        use Kind::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Integer, Decimal) | (Decimal, Integer) => Decimal,
            (Date, DateTime) | (DateTime, Date) => DateTime,
            (Json, _) | (_, Json) => Json,
            _ => String,
        }
    }
}

fn is_date(b: &[u8]) -> bool {
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && chrono::NaiveDate::parse_from_str(std::str::from_utf8(b).unwrap_or(""), "%Y-%m-%d")
            .is_ok()
}

/// A pattern test over one value.
type PatternTest = fn(&str) -> bool;

/// The recognised patterns, in report order.
const PATTERNS: [(&str, PatternTest); 8] = [
    ("date", |s| is_date(s.as_bytes())),
    ("datetime", |s| Kind::of_text(s) == Kind::DateTime),
    ("uuid", is_uuid),
    ("icd-10-cm", icd10_shaped),
    ("loinc", |s| s.contains('-') && loinc_ok(s)),
    ("snomed-ct", snomed_ok),
    ("npi", npi_ok),
    ("us-postal-code", is_zip),
];

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok() && s.len() == 36
}

/// ICD-10-CM as written in files: with or without the dot.
fn icd10_shaped(s: &str) -> bool {
    if icd10cm_ok(s) {
        return true;
    }
    // ASCII only, so the split at byte 3 is a character boundary.
    s.len() > 3
        && s.is_ascii()
        && !s.contains('.')
        && icd10cm_ok(&format!("{}.{}", &s[..3], &s[3..]))
}

fn is_zip(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |x: &[u8]| x.iter().all(u8::is_ascii_digit);
    match b.len() {
        5 | 9 => digits(b),
        10 => b[5] == b'-' && digits(&b[..5]) && digits(&b[6..]),
        _ => false,
    }
}

/// K-minimum-values distinct estimate: keeps the `K` smallest 64-bit hashes.
#[derive(Debug, Default)]
struct Kmv {
    smallest: BTreeSet<u64>,
}

const KMV_K: usize = 2048;

impl Kmv {
    fn add(&mut self, h: u64) {
        if self.smallest.len() < KMV_K {
            self.smallest.insert(h);
        } else if let Some(&max) = self.smallest.last()
            && h < max
            && self.smallest.insert(h)
        {
            self.smallest.pop_last();
        }
    }

    fn estimate(&self) -> u64 {
        match self.smallest.last() {
            Some(&kth) if self.smallest.len() >= KMV_K => {
                let fraction = (kth as f64 + 1.0) / (u64::MAX as f64);
                ((KMV_K as f64 - 1.0) / fraction).round() as u64
            }
            _ => self.smallest.len() as u64,
        }
    }
}

fn hash(s: &str) -> u64 {
    // SipHash with fixed keys: the same value hashes the same in every run.
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Accumulates one column.
#[derive(Debug)]
pub(crate) struct ColumnStats {
    name: String,
    kind: Option<Kind>,
    nulls: u64,
    values: u64,
    counts: HashMap<String, u64>,
    overflowed: bool,
    kmv: Kmv,
    min_num: Option<f64>,
    max_num: Option<f64>,
    min_text: Option<String>,
    max_text: Option<String>,
    pattern_hits: [u64; PATTERNS.len()],
}

impl ColumnStats {
    pub(crate) fn new(name: &str) -> Self {
        ColumnStats {
            name: name.to_owned(),
            kind: None,
            nulls: 0,
            values: 0,
            counts: HashMap::new(),
            overflowed: false,
            kmv: Kmv::default(),
            min_num: None,
            max_num: None,
            min_text: None,
            max_text: None,
            pattern_hits: [0; PATTERNS.len()],
        }
    }

    pub(crate) fn add(&mut self, cell: Cell<'_>, options: &ProfileOptions) {
        let (text, kind) = match cell {
            Cell::Null => {
                self.nulls += 1;
                return;
            }
            Cell::Text("") => {
                self.nulls += 1;
                return;
            }
            Cell::Text(s) => (s, Kind::of_text(s)),
            Cell::Typed(s, k) => (s, k),
        };
        self.values += 1;
        self.kind = Some(self.kind.map_or(kind, |k| k.join(kind)));
        if let Some(c) = self.counts.get_mut(text) {
            *c += 1;
        } else if self.counts.len() < options.exact_distinct_limit {
            self.counts.insert(text.to_owned(), 1);
        } else {
            self.overflowed = true;
        }
        self.kmv.add(hash(text));
        if matches!(kind, Kind::Integer | Kind::Decimal)
            && let Ok(n) = text.parse::<f64>()
        {
            self.min_num = Some(self.min_num.map_or(n, |m| m.min(n)));
            self.max_num = Some(self.max_num.map_or(n, |m| m.max(n)));
        }
        if self.min_text.as_deref().is_none_or(|m| text < m) {
            self.min_text = Some(text.to_owned());
        }
        if self.max_text.as_deref().is_none_or(|m| text > m) {
            self.max_text = Some(text.to_owned());
        }
        for (i, (_, test)) in PATTERNS.iter().enumerate() {
            if test(text) {
                self.pattern_hits[i] += 1;
            }
        }
    }

    pub(crate) fn finish(self, rows: u64, options: &ProfileOptions) -> ColumnProfile {
        let kind = self.kind.map_or("empty", Kind::name).to_owned();
        let numeric = matches!(kind.as_str(), "integer" | "decimal");
        let fmt_num = |n: f64| {
            if n.fract() == 0.0 && n.abs() < 1e15 {
                format!("{}", n as i64)
            } else {
                n.to_string()
            }
        };
        let (min, max) = if numeric {
            (self.min_num.map(fmt_num), self.max_num.map(fmt_num))
        } else {
            (self.min_text, self.max_text)
        };
        let mut top: Vec<TopValue> = self
            .counts
            .iter()
            .map(|(v, c)| TopValue {
                value: v.clone(),
                count: *c,
            })
            .collect();
        top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        top.truncate(options.top);
        let patterns = PATTERNS
            .iter()
            .zip(self.pattern_hits)
            .filter(|(_, hits)| self.values > 0 && *hits * 2 >= self.values)
            .map(|((name, _), hits)| PatternMatch {
                pattern: (*name).to_owned(),
                share: (hits as f64 / self.values as f64 * 1000.0).round() / 1000.0,
            })
            .collect();
        ColumnProfile {
            name: self.name,
            inferred_type: kind,
            nulls: self.nulls,
            null_rate: if rows == 0 {
                0.0
            } else {
                (self.nulls as f64 / rows as f64 * 1000.0).round() / 1000.0
            },
            distinct: if self.overflowed {
                self.kmv.estimate().max(self.counts.len() as u64)
            } else {
                self.counts.len() as u64
            },
            distinct_exact: !self.overflowed,
            min,
            max,
            top,
            patterns,
        }
    }
}

/// Profiles one file (its format from its name).
pub fn profile_file(path: &Path, options: &ProfileOptions) -> Result<FileProfile, ProfileError> {
    let format = Format::of(path).ok_or_else(|| ProfileError::UnknownFormat {
        file: path.display().to_string(),
    })?;
    read::profile(path, format, options)
}

/// The files a path names: itself, or the profilable files of a folder (recursively, sorted).
pub fn files_under(path: &Path) -> Result<Vec<PathBuf>, ProfileError> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| ProfileError::Read {
            file: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if Format::of(&p).is_some() {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The schemas of profiled files, by file name.
pub fn schemas(profiles: &[FileProfile]) -> BTreeMap<String, Vec<(String, String)>> {
    profiles
        .iter()
        .map(|p| {
            let name = Path::new(&p.file)
                .file_name()
                .map_or_else(|| p.file.clone(), |n| n.to_string_lossy().into_owned());
            (name, p.schema.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(values: &[&str], options: &ProfileOptions) -> ColumnProfile {
        let mut c = ColumnStats::new("c");
        for v in values {
            c.add(Cell::Text(v), options);
        }
        c.finish(values.len() as u64, options)
    }

    #[test]
    fn infers_types_and_keeps_codes_with_leading_zeros_as_strings() {
        let o = ProfileOptions::default();
        assert_eq!(column(&["1", "-2", ""], &o).inferred_type, "integer");
        assert_eq!(column(&["1", "2.5"], &o).inferred_type, "decimal");
        assert_eq!(column(&["02081", "01810"], &o).inferred_type, "string");
        assert_eq!(
            column(&["2020-01-01", "2021-02-03T04:05:06Z"], &o).inferred_type,
            "datetime"
        );
        assert_eq!(column(&["true", "FALSE"], &o).inferred_type, "boolean");
        assert_eq!(column(&["2020-13-01"], &o).inferred_type, "string");
        assert_eq!(column(&["", ""], &o).inferred_type, "empty");
    }

    #[test]
    fn counts_nulls_distinct_min_max_and_top() {
        let o = ProfileOptions::default();
        let c = column(&["9", "10", "10", "", "2"], &o);
        assert_eq!(c.nulls, 1);
        assert_eq!(c.null_rate, 0.2);
        assert_eq!(c.distinct, 3);
        assert!(c.distinct_exact);
        // Numeric order, not text order.
        assert_eq!(
            (c.min.as_deref(), c.max.as_deref()),
            (Some("2"), Some("10"))
        );
        assert_eq!(
            c.top[0],
            TopValue {
                value: "10".into(),
                count: 2
            }
        );
    }

    #[test]
    fn distinct_beyond_the_limit_is_an_estimate() {
        let o = ProfileOptions {
            exact_distinct_limit: 100,
            ..ProfileOptions::default()
        };
        let values: Vec<String> = (0..20_000).map(|i| format!("v{i}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let c = column(&refs, &o);
        assert!(!c.distinct_exact);
        let err = (c.distinct as f64 - 20_000.0).abs() / 20_000.0;
        assert!(err < 0.1, "estimate {} for 20000", c.distinct);
    }

    #[test]
    fn recognises_patterns() {
        let o = ProfileOptions::default();
        let names = |c: ColumnProfile| -> Vec<String> {
            c.patterns.into_iter().map(|p| p.pattern).collect()
        };
        assert_eq!(names(column(&["8302-2", "72514-3"], &o)), ["loinc"]);
        assert_eq!(names(column(&["65363002", "38341003"], &o)), ["snomed-ct"]);
        assert_eq!(names(column(&["E11.9", "I10"], &o)), ["icd-10-cm"]);
        assert!(names(column(&["1234567893"], &o)).contains(&"npi".to_owned()));
        assert_eq!(
            names(column(&["02081", "01810-1234"], &o)),
            ["us-postal-code"]
        );
        assert_eq!(
            names(column(&["b37f7960-7e9e-f3f7-f891-79ae4f632406"], &o)),
            ["uuid"]
        );
        assert_eq!(names(column(&["2014-05-06"], &o)), ["date"]);
        assert!(names(column(&["hello", "world"], &o)).is_empty());
        // Non-ASCII text is never split inside a character.
        assert!(names(column(&["Zé€ü", "ééé"], &o)).is_empty());
    }
}
