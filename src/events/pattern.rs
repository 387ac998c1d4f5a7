//! EventBridge event patterns: the JSON language rules use to choose events, checked when a
//! pattern is loaded and matched against delivered event envelopes.
//!
//! The language is EventBridge's (as implemented by AWS's event-ruler, which EventBridge runs):
//!
//! - a pattern is a JSON object; every field it names must match (AND), and a field's value is
//!   either a nested object (the event's field must have the same nesting) or an array of
//!   conditions, any of which may match (OR);
//! - a condition is an exact value (string, number, `true`, `false`, `null`), or an object with
//!   one operator: `prefix`, `suffix` (each with a string or `{"equals-ignore-case": s}`),
//!   `equals-ignore-case`, `wildcard`, `anything-but` (a value, a list of strings or of numbers,
//!   or `{prefix|suffix|equals-ignore-case|wildcard: …}`), `numeric` (`["=", n]`, or a lower
//!   and/or an upper bound: `[">", 0, "<=", 5]`), `exists` (`true`/`false`), `cidr`;
//! - `"$or": [{…}, {…}, …]` (two or more objects) matches when any of its objects matches;
//! - where the event holds an array, the condition matches if any element does; objects inside
//!   arrays are matched array-consistently: all the fields of one pattern object must match
//!   within the same array element (event-ruler's `rulesForJSONEvent`);
//! - `null` and `""` are different values; `exists` looks at leaf values only, so a field
//!   holding an object, or an empty array, does not "exist" for it.
//!
//! Choices where the public documentation is silent, kept consistent: numbers compare by value
//! (`[300]` matches `300.0`); `anything-but` of values matches any leaf not listed, whatever its
//! type, and `anything-but` of `prefix`/`suffix`/`equals-ignore-case`/`wildcard` matches any leaf
//! that is not a string matching it.

use std::net::IpAddr;

use serde_json::{Map, Value};

/// EventBridge's limit on a rule's `EventPattern` (`PutRule`: at most 4096 characters).
pub const MAX_PATTERN_CHARS: usize = 4096;

/// A pattern that is not valid, with where in the pattern and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {path})")]
pub struct PatternError {
    /// Where in the pattern, e.g. `detail.state[0].numeric`; `$` is the whole pattern.
    pub path: String,
    pub message: String,
}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, PatternError> {
    Err(PatternError {
        path: if path.is_empty() {
            "$".to_owned()
        } else {
            path.to_owned()
        },
        message: message.into(),
    })
}

/// A checked event pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPattern {
    root: ObjectPattern,
}

#[derive(Debug, Clone, PartialEq)]
struct ObjectPattern {
    fields: Vec<(String, FieldPattern)>,
    /// Each `$or`: one of the alternatives must match.
    ors: Vec<Vec<ObjectPattern>>,
}

#[derive(Debug, Clone, PartialEq)]
enum FieldPattern {
    Nested(ObjectPattern),
    Conditions(Vec<Condition>),
}

#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Exact(Value),
    Prefix { text: String, ignore_case: bool },
    Suffix { text: String, ignore_case: bool },
    EqualsIgnoreCase(String),
    Wildcard(Glob),
    AnythingBut(AnythingBut),
    Numeric(Range),
    Exists(bool),
    Cidr(Cidr),
}

#[derive(Debug, Clone, PartialEq)]
enum AnythingBut {
    Values(Vec<Value>),
    Prefix(String),
    Suffix(String),
    IgnoreCase(Vec<String>),
    Wildcard(Vec<Glob>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Range {
    lower: Option<(f64, bool)>,
    upper: Option<(f64, bool)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// A `wildcard` value: literal parts between unescaped `*`.
#[derive(Debug, Clone, PartialEq)]
struct Glob {
    parts: Vec<String>,
}

/// Keys that are operators inside a condition object; an `$or` alternative may not use them.
const OPERATORS: &[&str] = &[
    "prefix",
    "suffix",
    "equals-ignore-case",
    "wildcard",
    "anything-but",
    "numeric",
    "exists",
    "cidr",
];

impl EventPattern {
    /// Parses and checks a pattern given as JSON text.
    pub fn parse(text: &str) -> Result<EventPattern, PatternError> {
        let value: Value = serde_json::from_str(text).map_err(|e| PatternError {
            path: "$".into(),
            message: format!("not JSON: {e}"),
        })?;
        EventPattern::from_value(&value)
    }

    /// Checks a pattern given as a JSON value (e.g. read from YAML).
    pub fn from_value(value: &Value) -> Result<EventPattern, PatternError> {
        let chars = value.to_string().chars().count();
        if chars > MAX_PATTERN_CHARS {
            return err(
                "",
                format!(
                    "pattern is {chars} characters; EventBridge takes at most {MAX_PATTERN_CHARS}"
                ),
            );
        }
        let Value::Object(map) = value else {
            return err("", "a pattern must be a JSON object");
        };
        Ok(EventPattern {
            root: parse_object(map, "")?,
        })
    }

    /// Whether the event (a delivered envelope, or any JSON object) matches.
    pub fn matches(&self, event: &Value) -> bool {
        match_object(&self.root, Some(event))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn parse_object(map: &Map<String, Value>, path: &str) -> Result<ObjectPattern, PatternError> {
    if map.is_empty() {
        return err(
            path,
            "an empty object matches nothing; name at least one field",
        );
    }
    let mut pattern = ObjectPattern {
        fields: Vec::new(),
        ors: Vec::new(),
    };
    for (key, value) in map {
        let at = join(path, key);
        if key == "$or"
            && let Some(alternatives) = or_alternatives(value)
        {
            let mut parsed = Vec::with_capacity(alternatives.len());
            for (i, alt) in alternatives.iter().enumerate() {
                parsed.push(parse_object(alt, &format!("{at}[{i}]"))?);
            }
            pattern.ors.push(parsed);
            continue;
        }
        let field = match value {
            Value::Object(inner) => FieldPattern::Nested(parse_object(inner, &at)?),
            Value::Array(items) => {
                if items.is_empty() {
                    return err(
                        &at,
                        "an empty array matches nothing; give at least one value",
                    );
                }
                let mut conditions = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    conditions.push(parse_condition(item, &format!("{at}[{i}]"))?);
                }
                FieldPattern::Conditions(conditions)
            }
            _ => {
                return err(
                    &at,
                    "a field's value must be an array of values to match, or an object",
                );
            }
        };
        pattern.fields.push((key.clone(), field));
    }
    Ok(pattern)
}

/// `$or` is the OR primitive only as an array of two or more objects naming no operator;
/// otherwise it is an ordinary field name (event-ruler's backward compatibility).
fn or_alternatives(value: &Value) -> Option<Vec<&Map<String, Value>>> {
    let items = value.as_array()?;
    if items.len() < 2 {
        return None;
    }
    items
        .iter()
        .map(|v| {
            v.as_object()
                .filter(|m| !m.keys().any(|k| OPERATORS.contains(&k.as_str())))
        })
        .collect()
}

fn parse_condition(item: &Value, at: &str) -> Result<Condition, PatternError> {
    match item {
        Value::String(_) | Value::Bool(_) | Value::Null => Ok(Condition::Exact(item.clone())),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Condition::Exact(item.clone())),
            _ => err(at, "number out of range"),
        },
        Value::Array(_) => err(at, "a value to match cannot be an array"),
        Value::Object(map) => {
            let mut entries = map.iter();
            let (Some((op, arg)), None) = (entries.next(), entries.next()) else {
                return err(
                    at,
                    format!(
                        "a condition object holds exactly one operator ({}); this one has {}",
                        OPERATORS.join(", "),
                        map.len()
                    ),
                );
            };
            let at = format!("{at}.{op}");
            match op.as_str() {
                "prefix" => {
                    let (text, ignore_case) = string_or_ignore_case(arg, &at)?;
                    Ok(Condition::Prefix { text, ignore_case })
                }
                "suffix" => {
                    let (text, ignore_case) = string_or_ignore_case(arg, &at)?;
                    Ok(Condition::Suffix { text, ignore_case })
                }
                "equals-ignore-case" => Ok(Condition::EqualsIgnoreCase(string(arg, &at)?)),
                "wildcard" => Ok(Condition::Wildcard(Glob::parse(&string(arg, &at)?, &at)?)),
                "anything-but" => Ok(Condition::AnythingBut(parse_anything_but(arg, &at)?)),
                "numeric" => Ok(Condition::Numeric(parse_range(arg, &at)?)),
                "exists" => match arg {
                    Value::Bool(b) => Ok(Condition::Exists(*b)),
                    _ => err(&at, "exists takes true or false"),
                },
                "cidr" => Ok(Condition::Cidr(Cidr::parse(&string(arg, &at)?, &at)?)),
                other => err(
                    &at,
                    format!(
                        "unknown operator {other:?} (expected one of {})",
                        OPERATORS.join(", ")
                    ),
                ),
            }
        }
    }
}

fn string(arg: &Value, at: &str) -> Result<String, PatternError> {
    match arg {
        Value::String(s) => Ok(s.clone()),
        _ => err(at, "takes a string"),
    }
}

/// `"text"` or `{"equals-ignore-case": "text"}` (inside `prefix` and `suffix`).
fn string_or_ignore_case(arg: &Value, at: &str) -> Result<(String, bool), PatternError> {
    match arg {
        Value::String(s) => Ok((s.clone(), false)),
        Value::Object(m) if m.len() == 1 => match m.get("equals-ignore-case") {
            Some(v) => Ok((string(v, &format!("{at}.equals-ignore-case"))?, true)),
            None => err(at, "takes a string or {\"equals-ignore-case\": string}"),
        },
        _ => err(at, "takes a string or {\"equals-ignore-case\": string}"),
    }
}

fn strings(arg: &Value, at: &str) -> Result<Vec<String>, PatternError> {
    match arg {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| string(v, &format!("{at}[{i}]")))
            .collect(),
        _ => err(at, "takes a string or a non-empty array of strings"),
    }
}

fn parse_anything_but(arg: &Value, at: &str) -> Result<AnythingBut, PatternError> {
    match arg {
        Value::String(_) => Ok(AnythingBut::Values(vec![arg.clone()])),
        Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => {
            Ok(AnythingBut::Values(vec![arg.clone()]))
        }
        Value::Array(items) => {
            let all_strings = items.iter().all(Value::is_string);
            let all_numbers = items.iter().all(|v| v.as_f64().is_some_and(f64::is_finite));
            if items.is_empty() || !(all_strings || all_numbers) {
                return err(
                    at,
                    "anything-but takes a non-empty list of only strings or only numbers",
                );
            }
            Ok(AnythingBut::Values(items.clone()))
        }
        Value::Object(m) if m.len() == 1 => {
            let Some((op, inner)) = m.iter().next() else {
                return err(at, "anything-but takes one operator");
            };
            let inner_at = format!("{at}.{op}");
            match op.as_str() {
                "prefix" => Ok(AnythingBut::Prefix(string(inner, &inner_at)?)),
                "suffix" => Ok(AnythingBut::Suffix(string(inner, &inner_at)?)),
                "equals-ignore-case" => Ok(AnythingBut::IgnoreCase(strings(inner, &inner_at)?)),
                "wildcard" => Ok(AnythingBut::Wildcard(
                    strings(inner, &inner_at)?
                        .iter()
                        .map(|s| Glob::parse(s, &inner_at))
                        .collect::<Result<_, _>>()?,
                )),
                other => err(
                    &inner_at,
                    format!(
                        "anything-but takes prefix, suffix, equals-ignore-case or wildcard, not {other:?}"
                    ),
                ),
            }
        }
        _ => err(
            at,
            "anything-but takes a string, a number, a list of strings or of numbers, or {prefix|suffix|equals-ignore-case|wildcard: …}",
        ),
    }
}

fn parse_range(arg: &Value, at: &str) -> Result<Range, PatternError> {
    let Value::Array(items) = arg else {
        return err(at, "numeric takes an array like [\">\", 0, \"<=\", 5]");
    };
    let number = |i: usize| -> Result<f64, PatternError> {
        match items.get(i).and_then(Value::as_f64) {
            Some(f) if f.is_finite() => Ok(f),
            _ => err(&format!("{at}[{i}]"), "expected a number"),
        }
    };
    let op = |i: usize| -> Result<&str, PatternError> {
        match items.get(i).and_then(Value::as_str) {
            Some(s @ ("=" | "<" | "<=" | ">" | ">=")) => Ok(s),
            _ => err(
                &format!("{at}[{i}]"),
                "expected an operator: =, <, <=, > or >=",
            ),
        }
    };
    let mut range = Range {
        lower: None,
        upper: None,
    };
    match items.len() {
        2 => {
            let (o, n) = (op(0)?, number(1)?);
            match o {
                "=" => {
                    range.lower = Some((n, true));
                    range.upper = Some((n, true));
                }
                ">" | ">=" => range.lower = Some((n, o == ">=")),
                _ => range.upper = Some((n, o == "<=")),
            }
        }
        4 => {
            let (o1, n1, o2, n2) = (op(0)?, number(1)?, op(2)?, number(3)?);
            if !matches!(o1, ">" | ">=") || !matches!(o2, "<" | "<=") {
                return err(
                    at,
                    "a range is a lower bound (> or >=) followed by an upper bound (< or <=)",
                );
            }
            if n1 >= n2 {
                return err(at, "the lower bound must be less than the upper bound");
            }
            range.lower = Some((n1, o1 == ">="));
            range.upper = Some((n2, o2 == "<="));
        }
        _ => {
            return err(
                at,
                "numeric takes [op, number] or [lower-op, number, upper-op, number]",
            );
        }
    }
    Ok(range)
}

impl Range {
    fn contains(&self, x: f64) -> bool {
        let above = match self.lower {
            None => true,
            Some((b, inclusive)) => x > b || (inclusive && x == b),
        };
        let below = match self.upper {
            None => true,
            Some((b, inclusive)) => x < b || (inclusive && x == b),
        };
        above && below
    }
}

impl Cidr {
    fn parse(text: &str, at: &str) -> Result<Cidr, PatternError> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let Ok(network) = addr.parse::<IpAddr>() else {
            return err(at, format!("{text:?} is not an IP address or CIDR block"));
        };
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return err(at, format!("{text:?}: prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr {
            network,
            prefix_len,
        })
    }

    fn contains(&self, text: &str) -> bool {
        let Ok(ip) = text.parse::<IpAddr>() else {
            return false;
        };
        let (a, b, bits) = match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(i)) << 96,
                self.prefix_len,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), self.prefix_len),
            _ => return false,
        };
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(bits))
        };
        a & mask == b & mask
    }
}

impl Glob {
    /// `*` matches any run of characters; `\*` is a literal star and `\\` a backslash. Two
    /// wildcards in a row, and any other escape, are refused (as EventBridge does).
    fn parse(text: &str, at: &str) -> Result<Glob, PatternError> {
        let mut parts = vec![String::new()];
        let mut chars = text.chars().peekable();
        let mut last_was_star = false;
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if last_was_star {
                        return err(
                            at,
                            format!("{text:?}: consecutive wildcard characters are not allowed"),
                        );
                    }
                    parts.push(String::new());
                    last_was_star = true;
                    continue;
                }
                '\\' => match chars.next() {
                    Some(e @ ('*' | '\\')) => push_last(&mut parts, e),
                    _ => {
                        return err(at, format!("{text:?}: a backslash may only escape * or \\"));
                    }
                },
                c => push_last(&mut parts, c),
            }
            last_was_star = false;
        }
        Ok(Glob { parts })
    }

    fn matches(&self, s: &str) -> bool {
        let (Some(first), Some(last)) = (self.parts.first(), self.parts.last()) else {
            return false;
        };
        if self.parts.len() == 1 {
            return s == first;
        }
        if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) {
            return false;
        }
        if !s.ends_with(last.as_str()) {
            return false;
        }
        let end = s.len() - last.len();
        let mut pos = first.len();
        // Leftmost placement of each middle part is optimal for `*`-only globs.
        for part in &self.parts[1..self.parts.len() - 1] {
            match s
                .get(pos..end)
                .and_then(|window| window.find(part.as_str()))
            {
                Some(i) => pos += i + part.len(),
                None => return false,
            }
        }
        true
    }
}

fn push_last(parts: &mut [String], c: char) {
    if let Some(p) = parts.last_mut() {
        p.push(c);
    }
}

/// Matches an object pattern at an event location (`None`: absent). An array is matched
/// element by element: one element must satisfy the whole object (array consistency).
fn match_object(pattern: &ObjectPattern, value: Option<&Value>) -> bool {
    match value {
        Some(Value::Array(items)) => {
            let mut objects = Vec::new();
            collect_objects(items, &mut objects);
            if objects.is_empty() {
                match_object_at(pattern, None)
            } else {
                objects
                    .into_iter()
                    .any(|o| match_object_at(pattern, Some(o)))
            }
        }
        Some(Value::Object(map)) => match_object_at(pattern, Some(map)),
        _ => match_object_at(pattern, None),
    }
}

fn collect_objects<'a>(items: &'a [Value], out: &mut Vec<&'a Map<String, Value>>) {
    for item in items {
        match item {
            Value::Object(m) => out.push(m),
            Value::Array(inner) => collect_objects(inner, out),
            _ => {}
        }
    }
}

fn match_object_at(pattern: &ObjectPattern, map: Option<&Map<String, Value>>) -> bool {
    let field = |k: &str| map.and_then(|m| m.get(k));
    pattern.fields.iter().all(|(key, fp)| match fp {
        FieldPattern::Nested(inner) => match_object(inner, field(key)),
        FieldPattern::Conditions(conditions) => {
            let mut leaves = Vec::new();
            if let Some(v) = field(key) {
                collect_leaves(v, &mut leaves);
            }
            conditions.iter().any(|c| c.matches(&leaves))
        }
    }) && pattern.ors.iter().all(|alternatives| {
        alternatives.iter().any(|alt| match map {
            Some(m) => match_object_at(alt, Some(m)),
            None => match_object_at(alt, None),
        })
    })
}

/// The leaf values at a field: the value itself, or the scalar elements of (nested) arrays.
fn collect_leaves<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect_leaves(v, out)),
        Value::Object(_) => {}
        leaf => out.push(leaf),
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

impl Condition {
    fn matches(&self, leaves: &[&Value]) -> bool {
        match self {
            Condition::Exists(wanted) => leaves.is_empty() != *wanted,
            _ => leaves.iter().any(|leaf| self.matches_leaf(leaf)),
        }
    }

    fn matches_leaf(&self, leaf: &Value) -> bool {
        let text = leaf.as_str();
        match self {
            Condition::Exact(v) => same_value(v, leaf),
            Condition::Prefix {
                text: p,
                ignore_case,
            } => text.is_some_and(|s| {
                if *ignore_case {
                    s.to_lowercase().starts_with(&p.to_lowercase())
                } else {
                    s.starts_with(p.as_str())
                }
            }),
            Condition::Suffix {
                text: p,
                ignore_case,
            } => text.is_some_and(|s| {
                if *ignore_case {
                    s.to_lowercase().ends_with(&p.to_lowercase())
                } else {
                    s.ends_with(p.as_str())
                }
            }),
            Condition::EqualsIgnoreCase(p) => {
                text.is_some_and(|s| s.to_lowercase() == p.to_lowercase())
            }
            Condition::Wildcard(g) => text.is_some_and(|s| g.matches(s)),
            Condition::AnythingBut(ab) => match ab {
                AnythingBut::Values(vs) => !vs.iter().any(|v| same_value(v, leaf)),
                AnythingBut::Prefix(p) => !text.is_some_and(|s| s.starts_with(p.as_str())),
                AnythingBut::Suffix(p) => !text.is_some_and(|s| s.ends_with(p.as_str())),
                AnythingBut::IgnoreCase(vs) => !text.is_some_and(|s| {
                    let s = s.to_lowercase();
                    vs.iter().any(|v| v.to_lowercase() == s)
                }),
                AnythingBut::Wildcard(gs) => !text.is_some_and(|s| gs.iter().any(|g| g.matches(s))),
            },
            Condition::Numeric(r) => leaf.as_f64().is_some_and(|x| r.contains(x)),
            Condition::Cidr(c) => text.is_some_and(|s| c.contains(s)),
            Condition::Exists(_) => true,
        }
    }
}

#[cfg(test)]
mod tests;
