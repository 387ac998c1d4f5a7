//! Search and history parameters: from the decoded query of a request to a store query.
//!
//! Strict: a parameter the type does not have, a modifier or prefix that does not apply, or
//! a value of the wrong shape is a 400 OperationOutcome naming the parameter (not the value,
//! which may be patient data). `_format` (JSON forms), `_pretty` and `_total` are accepted
//! and change nothing: the answer is always JSON with an accurate total.

use chrono::{DateTime, Utc};

use super::{DEFAULT_COUNT, MAX_COUNT, Refusal, decode_cursor};
use crate::store::search::{
    Criterion, Filter, ParamKind, Prefix, SearchQuery, StringMode, date_range, param_kind,
};

/// A parsed search, with the parameters to repeat in its links.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ParsedSearch {
    pub query: SearchQuery,
    pub echo: Vec<(String, String)>,
}

/// A parsed history request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ParsedHistory {
    pub since: Option<DateTime<Utc>>,
    pub count: usize,
    pub cursor: Option<String>,
    pub echo: Vec<(String, String)>,
}

/// Parameters that change nothing here; whether the value is acceptable.
fn ignored(name: &str, value: &str) -> Option<Result<(), Refusal>> {
    match name {
        "_format" => Some(
            if matches!(
                value,
                "json" | "application/json" | "application/fhir+json" | "application/json+fhir"
            ) {
                Ok(())
            } else {
                Err(Refusal::new(
                    406,
                    "not-supported",
                    "_format: only JSON is supported",
                ))
            },
        ),
        "_pretty" => Some(Ok(())),
        "_total" => Some(if matches!(value, "none" | "estimate" | "accurate") {
            Ok(())
        } else {
            Err(Refusal::bad_request(
                "_total must be none, estimate or accurate",
            ))
        }),
        _ => None,
    }
}

/// For interactions that take no parameters but `_format`/`_pretty`.
pub(super) fn check_only_format(query: &[(String, String)]) -> Result<(), Refusal> {
    for (name, value) in query {
        match ignored(name, value) {
            Some(r) => r?,
            None => {
                return Err(Refusal::bad_request(format!(
                    "parameter {name:?} is not supported here"
                )));
            }
        }
    }
    Ok(())
}

fn parse_count(value: &str) -> Result<usize, Refusal> {
    value
        .parse::<usize>()
        .map(|n| n.min(MAX_COUNT))
        .map_err(|_| Refusal::bad_request("_count must be a whole number of 0 or more"))
}

pub(super) fn parse_search(
    resource_type: &str,
    query: &[(String, String)],
) -> Result<ParsedSearch, Refusal> {
    let mut filters = Vec::new();
    let mut echo = Vec::new();
    let mut count = DEFAULT_COUNT;
    let mut cursor = None;
    for (raw_name, value) in query {
        match raw_name.as_str() {
            "_count" => {
                count = parse_count(value)?;
                continue;
            }
            "_cursor" => {
                cursor = Some(decode_cursor(value)?);
                continue;
            }
            _ => {}
        }
        if let Some(r) = ignored(raw_name, value) {
            r?;
            continue;
        }
        let (name, modifier) = match raw_name.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (raw_name.as_str(), None),
        };
        let kind = param_kind(resource_type, name).ok_or_else(|| {
            Refusal::bad_request(format!(
                "{resource_type} has no search parameter {name:?} here (see /metadata)"
            ))
        })?;
        let mode = match (kind, modifier) {
            (_, None) => StringMode::Prefix,
            (ParamKind::String, Some("exact")) => StringMode::Exact,
            (ParamKind::String, Some("contains")) => StringMode::Contains,
            (_, Some(m)) => {
                return Err(Refusal::bad_request(format!(
                    "modifier :{m} is not supported on {name}"
                )));
            }
        };
        let values = split_values(value);
        if values.iter().all(String::is_empty) {
            return Err(Refusal::bad_request(format!("{name}: no value")));
        }
        let any_of = values
            .iter()
            .map(|v| criterion(name, kind, mode, v))
            .collect::<Result<Vec<_>, _>>()?;
        filters.push(Filter {
            param: name.to_owned(),
            any_of,
        });
        echo.push((raw_name.clone(), value.clone()));
    }
    Ok(ParsedSearch {
        query: SearchQuery {
            resource_type: resource_type.to_owned(),
            filters,
            count,
            cursor,
        },
        echo,
    })
}

fn criterion(
    name: &str,
    kind: ParamKind,
    mode: StringMode,
    value: &str,
) -> Result<Criterion, Refusal> {
    let bad = |what: &str| Refusal::bad_request(format!("{name}: {what}"));
    if name == "_id" {
        return Ok(Criterion::Id(value.to_owned()));
    }
    match kind {
        ParamKind::String => Ok(Criterion::String {
            value: value.to_owned(),
            mode,
        }),
        ParamKind::Token => {
            let (system, code) = match split_unescaped(value, '|') {
                Some((s, c)) => (Some((!s.is_empty()).then(|| unescape(s))), c),
                None => (None, value),
            };
            let code = (!code.is_empty()).then(|| unescape(code));
            if code.is_none() && !matches!(system, Some(Some(_))) {
                return Err(bad("a token needs a code or a system"));
            }
            Ok(Criterion::Token { system, code })
        }
        ParamKind::Date => {
            let (prefix, rest) = Prefix::split(value);
            let (low, high) = date_range(rest).ok_or_else(|| {
                bad("not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime), after an optional prefix eq, ne, lt, gt, le, ge, sa or eb")
            })?;
            Ok(Criterion::Date { prefix, low, high })
        }
        ParamKind::Reference => {
            let text = unescape(value);
            let text = text.split(['?', '#']).next().unwrap_or_default().to_owned();
            let mut parts = text.rsplit('/');
            let id = parts
                .next()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad("not a reference (id or Type/id)"))?
                .to_owned();
            let resource_type = match parts.next() {
                Some(t) if super::is_type_name(t) => Some(t.to_owned()),
                Some(_) => return Err(bad("not a reference (id or Type/id)")),
                None if name == "patient" => Some("Patient".to_owned()),
                None => None,
            };
            if name == "patient" && resource_type.as_deref() != Some("Patient") {
                return Err(bad("patient takes a Patient reference"));
            }
            Ok(Criterion::Reference { resource_type, id })
        }
    }
}

/// Splits a parameter value on commas not escaped by `\`; each part keeps its other escapes.
fn split_values(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn split_unescaped(value: &str, sep: char) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            return Some((&value[..i], &value[i + c.len_utf8()..]));
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) fn parse_history(query: &[(String, String)]) -> Result<ParsedHistory, Refusal> {
    let mut out = ParsedHistory {
        since: None,
        count: DEFAULT_COUNT,
        cursor: None,
        echo: Vec::new(),
    };
    for (name, value) in query {
        match name.as_str() {
            "_count" => out.count = parse_count(value)?,
            "_cursor" => out.cursor = Some(decode_cursor(value)?),
            "_since" => {
                let (low, _) = date_range(value).ok_or_else(|| {
                    Refusal::bad_request("_since: not an instant (e.g. 2024-01-01T00:00:00Z)")
                })?;
                let since = DateTime::parse_from_rfc3339(&low)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| Refusal::bad_request("_since: not an instant"))?;
                out.since = Some(since);
                out.echo.push((name.clone(), value.clone()));
            }
            _ => match ignored(name, value) {
                Some(r) => r?,
                None => {
                    return Err(Refusal::bad_request(format!(
                        "history takes _since, _count and _cursor, not {name:?}"
                    )));
                }
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn tokens_strings_refs_and_escapes() {
        let p = parse_search(
            "Patient",
            &q(&[
                ("identifier", "urn:mrn|M1,|X\\,Y"),
                ("family:exact", "Smith"),
                ("_count", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(p.query.count, 5);
        assert_eq!(
            p.query.filters[0].any_of,
            vec![
                Criterion::Token {
                    system: Some(Some("urn:mrn".into())),
                    code: Some("M1".into())
                },
                Criterion::Token {
                    system: Some(None),
                    code: Some("X,Y".into())
                },
            ]
        );
        assert_eq!(
            p.query.filters[1].any_of,
            vec![Criterion::String {
                value: "Smith".into(),
                mode: StringMode::Exact
            }]
        );
        assert_eq!(p.echo.len(), 2);
        let p = parse_search(
            "Observation",
            &q(&[("patient", "p1"), ("subject", "Patient/p1")]),
        )
        .unwrap();
        for f in &p.query.filters {
            assert_eq!(
                f.any_of,
                vec![Criterion::Reference {
                    resource_type: Some("Patient".into()),
                    id: "p1".into()
                }]
            );
        }
        assert_eq!(
            parse_search("Patient", &q(&[("_count", "100000")]))
                .unwrap()
                .query
                .count,
            MAX_COUNT
        );
    }

    #[test]
    fn bad_parameters_are_400_naming_the_parameter() {
        for (pairs, status) in [
            (vec![("foo", "1")], 400),
            (vec![("family:missing", "true")], 400),
            (vec![("gender:text", "x")], 400),
            (vec![("birthdate", "yesterday")], 400),
            (vec![("birthdate", "ap2020")], 400),
            (vec![("_count", "-1")], 400),
            (vec![("_count", "many")], 400),
            (vec![("_cursor", "%%%")], 400),
            (vec![("identifier", "|")], 400),
            (vec![("family", "")], 400),
            (vec![("_sort", "name")], 400),
            (vec![("_format", "xml")], 406),
        ] {
            let e = parse_search("Patient", &q(&pairs)).unwrap_err();
            assert_eq!(e.status, status, "{pairs:?}");
        }
        let e = parse_search("Observation", &q(&[("patient", "Group/g1")])).unwrap_err();
        assert!(e.outcome.issues[0].diagnostics.contains("patient"));
        let e = parse_search("Observation", &q(&[("family", "x")])).unwrap_err();
        assert!(e.outcome.issues[0].diagnostics.contains("family"));
        assert!(parse_search("Patient", &q(&[("_format", "json"), ("_pretty", "true")])).is_ok());
    }

    #[test]
    fn history_parameters() {
        let h = parse_history(&q(&[("_since", "2024-01-01T00:00:00Z"), ("_count", "2")])).unwrap();
        assert_eq!(h.count, 2);
        assert_eq!(h.since.unwrap().to_rfc3339(), "2024-01-01T00:00:00+00:00");
        assert_eq!(h.echo.len(), 1);
        assert!(parse_history(&q(&[("_since", "soon")])).is_err());
        assert!(parse_history(&q(&[("_at", "2024")])).is_err());
        assert!(check_only_format(&q(&[("_format", "json")])).is_ok());
        assert!(check_only_format(&q(&[("name", "x")])).is_err());
    }
}
