//! Fixed-width text: each line one record, cut into columns by a layout file.
//!
//! A layout file (YAML, named by `format.fixed_width.layout`):
//!
//! ```yaml
//! columns:
//!   - { name: member_id, start: 1, length: 8 }      # 1-based character positions
//!   - { name: last_name, width: 20 }                # starts where the previous one ends
//!   - { name: birth_date, width: 8, type: date, format: "%Y%m%d" }
//!   - { name: copay, width: 7, type: decimal, implied_decimals: 2 }
//!   - { name: visits, width: 3, type: integer }
//! record_length: 46     # optional: lines must be exactly this long (else at least the end of the last column)
//! ```
//!
//! Values are trimmed; blank values are `null`. Types: `string` (default), `integer` (a JSON
//! number), `decimal` (an exact decimal string, `implied_decimals` places inserted when the
//! field has no point), `date` (an ISO `YYYY-MM-DD` string, read with `format`, default
//! `%Y%m%d`). A line too short for the layout, or a value not of its type, is refused naming
//! the line and the column. Positions count characters, not bytes.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::row::{Broken, Row, not_utf8, read_line, strip_bom, trim_eol};

/// A layout file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct LayoutError {
    pub file: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFile {
    columns: Vec<ColumnFile>,
    #[serde(default)]
    record_length: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    name: String,
    #[serde(default)]
    start: Option<usize>,
    #[serde(default)]
    length: Option<usize>,
    #[serde(default)]
    width: Option<usize>,
    #[serde(default, rename = "type")]
    kind: ColumnType,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    implied_decimals: Option<u32>,
}

/// A column's type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    #[default]
    String,
    Integer,
    Decimal,
    Date,
}

/// One column: characters `[start, end)` of a line (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub start: usize,
    pub end: usize,
    pub kind: ColumnType,
    /// `date`: the chrono format of the value.
    pub format: String,
    pub implied_decimals: u32,
}

/// A checked layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub columns: Vec<Column>,
    /// Lines must be at least this long (the end of the last column)…
    pub min_length: usize,
    /// …and exactly this long when the layout says so.
    pub exact_length: Option<usize>,
}

impl Layout {
    /// Reads and checks a layout file.
    pub fn load(path: &Path) -> Result<Layout, LayoutError> {
        let err = |message: String| LayoutError {
            file: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Layout::parse(&text).map_err(err)
    }

    /// Parses and checks layout YAML.
    pub fn parse(text: &str) -> Result<Layout, String> {
        let file: LayoutFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if file.columns.is_empty() {
            return Err("columns: at least one column is needed".into());
        }
        let mut columns = Vec::with_capacity(file.columns.len());
        let mut next = 0usize;
        let mut names = std::collections::HashSet::new();
        for c in file.columns {
            let at = |m: &str| format!("column {:?}: {m}", c.name);
            if c.name.is_empty() || !names.insert(c.name.clone()) {
                return Err(at("names must be unique and not empty"));
            }
            let start = match c.start {
                Some(0) => return Err(at("start counts from 1")),
                Some(s) => s - 1,
                None => next,
            };
            let len = match (c.length, c.width) {
                (Some(l), None) | (None, Some(l)) if l > 0 => l,
                (Some(_), Some(_)) => return Err(at("give `length` or `width`, not both")),
                _ => return Err(at("needs a `length` (or `width`) of at least 1")),
            };
            if c.format.is_some() && c.kind != ColumnType::Date {
                return Err(at("`format` is for date columns"));
            }
            if c.implied_decimals.is_some() && c.kind != ColumnType::Decimal {
                return Err(at("`implied_decimals` is for decimal columns"));
            }
            next = start + len;
            columns.push(Column {
                name: c.name,
                start,
                end: start + len,
                kind: c.kind,
                format: c.format.unwrap_or_else(|| "%Y%m%d".into()),
                implied_decimals: c.implied_decimals.unwrap_or(0),
            });
        }
        let min_length = columns.iter().map(|c| c.end).max().unwrap_or(0);
        if let Some(l) = file.record_length
            && l < min_length
        {
            return Err(format!(
                "record_length {l} is shorter than the columns ({min_length})"
            ));
        }
        Ok(Layout {
            columns,
            min_length,
            exact_length: file.record_length,
        })
    }
}

/// Reads a fixed-width file (UTF-8; transcode first for other encodings).
pub fn read(
    input: &mut dyn BufRead,
    layout: &Layout,
    emit: &mut dyn FnMut(Row),
) -> Result<(), Broken> {
    let mut buf = Vec::new();
    let mut line = 0u64;
    let mut row = 0u64;
    let mut chars: Vec<(usize, char)> = Vec::new();
    loop {
        match read_line(input, &mut buf) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                return Err(Broken::new(
                    row + 1,
                    format!("row {} (line {})", row + 1, line + 1),
                    e,
                ));
            }
        }
        line += 1;
        let bytes = trim_eol(if line == 1 { strip_bom(&buf) } else { &buf });
        if bytes.iter().all(|b| *b == b' ') {
            continue;
        }
        row += 1;
        let place = format!("row {row} (line {line})");
        emit(match cut(bytes, layout, &mut chars) {
            Ok(fields) => Row::Record {
                row,
                fields: fields.into(),
            },
            Err(message) => Row::Bad {
                row,
                place,
                message,
            },
        });
    }
}

fn cut(
    bytes: &[u8],
    layout: &Layout,
    chars: &mut Vec<(usize, char)>,
) -> Result<Map<String, Value>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| not_utf8("the line"))?;
    // ASCII lines (the usual case) are cut by byte; others by character.
    let ascii = text.is_ascii();
    if !ascii {
        chars.clear();
        chars.extend(text.char_indices());
    }
    let length = if ascii { text.len() } else { chars.len() };
    if length < layout.min_length {
        return Err(format!(
            "the line has {length} characters, the layout needs {}",
            layout.min_length
        ));
    }
    if let Some(exact) = layout.exact_length
        && length != exact
    {
        return Err(format!(
            "the line has {length} characters, the layout's record_length is {exact}"
        ));
    }
    let byte_at = |i: usize| -> usize {
        if ascii {
            i
        } else {
            chars.get(i).map_or(text.len(), |(b, _)| *b)
        }
    };
    let mut fields = Map::new();
    for c in &layout.columns {
        let raw = text[byte_at(c.start)..byte_at(c.end)].trim();
        let value = if raw.is_empty() {
            Value::Null
        } else {
            convert(raw, c).map_err(|m| {
                format!(
                    "column {:?} (characters {}-{}): {m}",
                    c.name,
                    c.start + 1,
                    c.end
                )
            })?
        };
        fields.insert(c.name.clone(), value);
    }
    Ok(fields)
}

fn convert(raw: &str, c: &Column) -> Result<Value, String> {
    match c.kind {
        ColumnType::String => Ok(Value::String(raw.to_owned())),
        ColumnType::Integer => raw
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| "not an integer".to_owned()),
        ColumnType::Decimal => decimal(raw, c.implied_decimals).map(Value::String),
        ColumnType::Date => chrono::NaiveDate::parse_from_str(raw, &c.format)
            .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
            .map_err(|_| format!("not a date in the format {:?}", c.format)),
    }
}

/// An exact decimal string; `implied` places are inserted when the text has no point.
fn decimal(raw: &str, implied: u32) -> Result<String, String> {
    let (sign, digits) = match raw.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", raw.strip_prefix('+').unwrap_or(raw)),
    };
    let bad = || "not a decimal number".to_owned();
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let norm = |i: &str| {
        let t = i.trim_start_matches('0');
        if t.is_empty() {
            "0".to_owned()
        } else {
            t.to_owned()
        }
    };
    if digits.contains('.') || implied == 0 {
        let int = norm(int);
        return Ok(if frac.is_empty() {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac}")
        });
    }
    let places = implied as usize;
    let padded = format!("{int:0>width$}", width = places + 1);
    let (i, f) = padded.split_at(padded.len() - places);
    Ok(format!("{sign}{}.{f}", norm(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: &str = "
columns:
  - { name: id, start: 1, length: 4, type: integer }
  - { name: name, width: 6 }
  - { name: dob, width: 8, type: date }
  - { name: copay, width: 5, type: decimal, implied_decimals: 2 }
";

    fn rows(text: &str, layout: &Layout) -> Vec<Row> {
        let mut out = Vec::new();
        read(&mut text.as_bytes(), layout, &mut |r| out.push(r)).unwrap();
        out
    }

    #[test]
    fn layouts_are_checked() {
        let l = Layout::parse(LAYOUT).unwrap();
        assert_eq!(l.min_length, 23);
        assert_eq!((l.columns[1].start, l.columns[1].end), (4, 10));
        for bad in [
            "columns: []",
            "columns: [{ name: a, start: 0, length: 1 }]",
            "columns: [{ name: a }]",
            "columns: [{ name: a, width: 1, length: 1 }]",
            "columns: [{ name: a, width: 1 }, { name: a, width: 1 }]",
            "columns: [{ name: a, width: 1, format: '%Y' }]",
            "columns: [{ name: a, width: 1, type: money }]",
            "columns: [{ name: a, width: 1, colour: red }]",
            "columns: [{ name: a, width: 4 }]\nrecord_length: 2",
        ] {
            assert!(Layout::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_are_cut_typed_and_bad_lines_named() {
        let l = Layout::parse(LAYOUT).unwrap();
        let text = "0001Ann   19800102  150\n0002Zoë   19791231\n\nx003Bo    19800102 1500\n0004Cy    19801302   00\n0005Di    1980010200100 trailing\n";
        let rows = rows(text, &l);
        assert_eq!(rows.len(), 5);
        let Row::Record { fields, row: 1 } = &rows[0] else {
            panic!("{:?}", rows[0])
        };
        assert_eq!(fields["id"], 1);
        assert_eq!(fields["name"], "Ann");
        assert_eq!(fields["dob"], "1980-01-02");
        assert_eq!(fields["copay"], "1.50");
        let Row::Bad { place, message, .. } = &rows[1] else {
            panic!()
        };
        assert_eq!(place, "row 2 (line 2)");
        assert!(message.contains("18 characters"), "{message}");
        let Row::Bad { place, message, .. } = &rows[2] else {
            panic!()
        };
        assert_eq!(place, "row 3 (line 4)");
        assert!(message.contains("\"id\"") && message.contains("integer"));
        let Row::Bad { message, .. } = &rows[3] else {
            panic!()
        };
        assert!(message.contains("\"dob\"") && message.contains("date"));
        let Row::Record { fields, .. } = &rows[4] else {
            panic!("{:?}", rows[4])
        };
        assert_eq!(fields["copay"], "1.00");
    }

    #[test]
    fn characters_not_bytes() {
        let l = Layout::parse("columns: [{ name: a, width: 3 }, { name: b, width: 2 }]").unwrap();
        let rows = rows("Zoëxy\n", &l);
        let Row::Record { fields, .. } = &rows[0] else {
            panic!()
        };
        assert_eq!(
            (fields["a"].as_str(), fields["b"].as_str()),
            (Some("Zoë"), Some("xy"))
        );
    }

    #[test]
    fn exact_record_length() {
        let l = Layout::parse("columns: [{ name: a, width: 2 }]\nrecord_length: 3").unwrap();
        let rows = rows("ab \nabcd\n", &l);
        assert!(matches!(rows[0], Row::Record { .. }));
        assert!(matches!(&rows[1], Row::Bad { message, .. } if message.contains("record_length")));
    }

    #[test]
    fn decimals() {
        assert_eq!(decimal("150", 2).unwrap(), "1.50");
        assert_eq!(decimal("5", 2).unwrap(), "0.05");
        assert_eq!(decimal("00100", 2).unwrap(), "1.00");
        assert_eq!(decimal("007.10", 2).unwrap(), "7.10");
        assert_eq!(decimal("-12.5", 2).unwrap(), "-12.5");
        assert_eq!(decimal("+7", 0).unwrap(), "7");
        assert_eq!(decimal(".5", 0).unwrap(), "0.5");
        for bad in ["1,5", "abc", ".", "-", "1.2.3"] {
            assert!(decimal(bad, 0).is_err(), "{bad}");
        }
    }
}
