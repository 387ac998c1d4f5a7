//! Choice rule evaluation.

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use crate::context::Ctx;
use crate::definition::{Cmp, Family, Op, Operand, Rule};
use crate::jsonpath::JsonPath;

/// Parses an RFC 3339 timestamp as AWS accepts it (upper-case `T`, offset or `Z` required).
pub(crate) fn parse_timestamp(s: &str) -> Option<DateTime<FixedOffset>> {
    if s.as_bytes().get(10) != Some(&b'T') || !(s.ends_with('Z') || s.len() > 19) {
        return None;
    }
    DateTime::parse_from_rfc3339(s).ok()
}

fn invalid_path(p: &JsonPath) -> String {
    format!(
        "Invalid path '{}': The choice state's condition path references an invalid value.",
        p.text()
    )
}

fn lookup(p: &JsonPath, input: &Value, context: &Ctx<'_>) -> Option<Value> {
    p.lookup(input, context)
}

/// Evaluates a rule; `Err` carries the cause detail of a `States.Runtime` error.
pub(crate) fn evaluate(rule: &Rule, input: &Value, context: &Ctx<'_>) -> Result<bool, String> {
    match rule {
        // The engine evaluates JSONata conditions itself (they need `$states`).
        Rule::Condition(_) => {
            Err("a JSONata Condition cannot be evaluated as a JSONPath rule".into())
        }
        Rule::And(rs) => {
            for r in rs {
                if !evaluate(r, input, context)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Rule::Or(rs) => {
            for r in rs {
                if evaluate(r, input, context)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Rule::Not(r) => Ok(!evaluate(r, input, context)?),
        Rule::Cmp {
            variable,
            op,
            operand,
        } => {
            let var = lookup(variable, input, context);
            if *op == Op::IsPresent {
                return Ok(var.is_some() == (operand_value(operand) == Some(&Value::Bool(true))));
            }
            let var = var.ok_or_else(|| invalid_path(variable))?;
            let expected = match operand {
                Operand::Value(v) => v.clone(),
                Operand::Path(p) => lookup(p, input, context).ok_or_else(|| invalid_path(p))?,
            };
            Ok(compare(&var, *op, &expected))
        }
    }
}

fn operand_value(o: &Operand) -> Option<&Value> {
    match o {
        Operand::Value(v) => Some(v),
        Operand::Path(_) => None,
    }
}

fn ordering_ok(ord: std::cmp::Ordering, cmp: Cmp) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match cmp {
        Cmp::Eq => ord == Equal,
        Cmp::Lt => ord == Less,
        Cmp::Gt => ord == Greater,
        Cmp::Le => ord != Greater,
        Cmp::Ge => ord != Less,
    }
}

fn compare(var: &Value, op: Op, expected: &Value) -> bool {
    let flag = expected.as_bool();
    match op {
        Op::IsNull => Some(var.is_null()) == flag,
        Op::IsNumeric => Some(var.is_number()) == flag,
        Op::IsString => Some(var.is_string()) == flag,
        Op::IsBoolean => Some(var.is_boolean()) == flag,
        Op::IsTimestamp => Some(var.as_str().and_then(parse_timestamp).is_some()) == flag,
        Op::IsPresent => false,
        Op::StringMatches => match (var.as_str(), expected.as_str()) {
            (Some(v), Some(p)) => string_matches(v, p),
            _ => false,
        },
        Op::Compare(Family::String, cmp) => match (var.as_str(), expected.as_str()) {
            (Some(a), Some(b)) => ordering_ok(a.cmp(b), cmp),
            _ => false,
        },
        Op::Compare(Family::Numeric, cmp) => {
            match (var.as_f64().filter(|_| var.is_number()), expected.as_f64()) {
                (Some(a), Some(b)) => a.partial_cmp(&b).is_some_and(|o| ordering_ok(o, cmp)),
                _ => false,
            }
        }
        Op::Compare(Family::Boolean, _) => match (var.as_bool(), expected.as_bool()) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
        Op::Compare(Family::Timestamp, cmp) => {
            match (
                var.as_str().and_then(parse_timestamp),
                expected.as_str().and_then(parse_timestamp),
            ) {
                (Some(a), Some(b)) => ordering_ok(a.cmp(&b), cmp),
                _ => false,
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Char(char),
    Star,
}

/// `*` matches any run of characters; `\*` and `\\` are a literal star and backslash.
fn string_matches(value: &str, pattern: &str) -> bool {
    let mut toks = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.next() {
                Some(n) => toks.push(Tok::Char(n)),
                None => toks.push(Tok::Char('\\')),
            },
            '*' => toks.push(Tok::Star),
            c => toks.push(Tok::Char(c)),
        }
    }
    let v: Vec<char> = value.chars().collect();
    // Classic wildcard matching with backtracking to the last star.
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < v.len() {
        match toks.get(j) {
            Some(Tok::Char(c)) if *c == v[i] => {
                i += 1;
                j += 1;
            }
            Some(Tok::Star) => {
                star = Some((j, i));
                j += 1;
            }
            _ => match star {
                Some((sj, si)) => {
                    j = sj + 1;
                    i = si + 1;
                    star = Some((sj, si + 1));
                }
                None => return false,
            },
        }
    }
    toks[j..].iter().all(|t| *t == Tok::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matches_wildcards_and_escapes() {
        assert!(string_matches("log-2024.txt", "log-*.txt"));
        assert!(string_matches("abc", "*"));
        assert!(string_matches("", "*"));
        assert!(!string_matches("abc", "a*d"));
        assert!(string_matches("a*c", "a\\*c"));
        assert!(!string_matches("abc", "a\\*c"));
        assert!(string_matches("a\\c", "a\\\\c"));
        assert!(string_matches("aXbXc", "a*b*c"));
    }

    #[test]
    fn timestamps() {
        assert!(parse_timestamp("2016-12-05T21:29:29Z").is_some());
        assert!(parse_timestamp("2016-12-05T21:29:29.123+02:00").is_some());
        assert!(parse_timestamp("2016-12-05 21:29:29Z").is_none());
        assert!(parse_timestamp("2016-12-05T21:29:29").is_none());
        assert!(parse_timestamp("2016-12-05T25:29:29Z").is_none());
    }
}
