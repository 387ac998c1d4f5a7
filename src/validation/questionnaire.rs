//! QuestionnaireResponse checked against its Questionnaire (when that Questionnaire is
//! loaded): every linkId exists at its level, answers have the item's type and respect
//! `repeats`, `required`, `answerOption`, and the core constraint extensions (minValue,
//! maxValue, minLength, maxLength, regex, maxDecimalPlaces, minOccurs, mimeType, maxSize,
//! referenceResource). Diagnostics name the linkId and the rule, never the answer.

use serde_json::{Map, Value};

use super::definitions::Definitions;
use super::structure::Sink;
use crate::outcome::Severity;

const EXT: &str = "http://hl7.org/fhir/StructureDefinition/";

/// The SDC implementation guide's extensions for quantity bounds.
const SDC: &str = "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-";

fn ext<'a>(item: &'a Value, name: &str) -> Option<&'a Map<String, Value>> {
    item.get("extension")?.as_array()?.iter().find_map(|e| {
        let url = e.get("url")?.as_str()?;
        (url.strip_prefix(EXT) == Some(name)
            || url.strip_prefix(SDC) == Some(name)
            || url == format!("http://hl7.org/fhir/StructureDefinition/questionnaire-{name}"))
        .then(|| e.as_object())
        .flatten()
    })
}

/// The `value[x]` of an object: (type suffix, value).
fn value_x(obj: &Map<String, Value>) -> Option<(&str, &Value)> {
    obj.iter().find_map(|(k, v)| {
        k.strip_prefix("value")
            .filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
            .map(|t| (t, v))
    })
}

fn items(v: &Value) -> &[Value] {
    v.get("item")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The types `QuestionnaireResponse.item.answer.value[x]` may take.
const ANSWER_TYPES: &[&str] = &[
    "Boolean",
    "Decimal",
    "Integer",
    "Date",
    "DateTime",
    "Time",
    "String",
    "Uri",
    "Attachment",
    "Coding",
    "Quantity",
    "Reference",
];

fn answer_types(item_type: &str) -> &'static [&'static str] {
    match item_type {
        "boolean" => &["Boolean"],
        "decimal" => &["Decimal"],
        "integer" => &["Integer"],
        "date" => &["Date"],
        "dateTime" => &["DateTime"],
        "time" => &["Time"],
        "string" | "text" => &["String"],
        "url" => &["Uri"],
        "choice" => &["Coding", "String", "Integer", "Date", "Time", "Reference"],
        "open-choice" => &["Coding", "String", "Integer", "Date", "Time", "Reference"],
        "attachment" => &["Attachment"],
        "reference" => &["Reference"],
        "quantity" => &["Quantity"],
        _ => &[],
    }
}

/// Checks a QuestionnaireResponse's items against its Questionnaire's.
pub(crate) fn check_response(
    defs: &Definitions,
    response: &Value,
    questionnaire: &Value,
    loc: &str,
    sink: &mut Sink,
) {
    check_items(defs, items(response), items(questionnaire), loc, sink, 0);
}

fn check_items(
    defs: &Definitions,
    given: &[Value],
    defined: &[Value],
    loc: &str,
    sink: &mut Sink,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    for d in defined {
        let required = d.get("required").and_then(Value::as_bool) == Some(true);
        let link = d.get("linkId").and_then(Value::as_str).unwrap_or("");
        let ty = d.get("type").and_then(Value::as_str).unwrap_or("");
        if required && ty != "display" {
            let present = given.iter().any(|g| {
                g.get("linkId").and_then(Value::as_str) == Some(link)
                    && (ty == "group"
                        || g.get("answer")
                            .is_some_and(|a| a.as_array().is_some_and(|a| !a.is_empty())))
            });
            if !present {
                sink.error(
                    "required",
                    loc,
                    format!("no response answer found for required item '{link}'"),
                );
            }
        }
    }
    for (i, g) in given.iter().enumerate() {
        let here = format!("{loc}.item[{i}]");
        let link = g.get("linkId").and_then(Value::as_str).unwrap_or("");
        let Some(d) = defined
            .iter()
            .find(|d| d.get("linkId").and_then(Value::as_str) == Some(link))
        else {
            sink.error(
                "structure",
                &here,
                format!("linkId '{link}' not found in the questionnaire"),
            );
            continue;
        };
        let ty = d.get("type").and_then(Value::as_str).unwrap_or("");
        let answers = g
            .get("answer")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match ty {
            "display" if !answers.is_empty() || g.get("item").is_some() => sink.error(
                "structure",
                &here,
                "items of type 'display' cannot have answers".into(),
            ),
            "group" | "question" if !answers.is_empty() => sink.error(
                "structure",
                &here,
                format!("items of type '{ty}' should not have answers"),
            ),
            _ => {}
        }
        if ty != "group" && ty != "display" && ty != "question" {
            check_answers(defs, d, ty, answers, &here, sink, depth);
        }
        check_items(defs, items(g), items(d), &here, sink, depth + 1);
    }
}

fn check_answers(
    defs: &Definitions,
    d: &Value,
    ty: &str,
    answers: &[Value],
    loc: &str,
    sink: &mut Sink,
    depth: usize,
) {
    let repeats = d.get("repeats").and_then(Value::as_bool) == Some(true);
    if !repeats && answers.len() > 1 {
        sink.error(
            "structure",
            loc,
            "the item does not repeat but has more than one answer".into(),
        );
    }
    if let Some(min) = ext(d, "minOccurs")
        .and_then(|e| e.get("valueInteger"))
        .and_then(Value::as_u64)
        && (answers.len() as u64) < min
    {
        sink.error(
            "structure",
            loc,
            format!(
                "the minimum number of answers is {min} but this has {}",
                answers.len()
            ),
        );
    }
    let allowed = answer_types(ty);
    for (j, a) in answers.iter().enumerate() {
        let at = format!("{loc}.answer[{j}]");
        let Some(obj) = a.as_object() else {
            continue;
        };
        if let Some((vt, v)) = value_x(obj).filter(|(vt, _)| ANSWER_TYPES.contains(vt)) {
            if !allowed.is_empty() && !allowed.contains(&vt) {
                sink.error(
                    "structure",
                    &at,
                    format!("answer value must be of the type {ty}, not {vt}"),
                );
            } else {
                check_value(defs, d, vt, v, &at, sink);
            }
        }
        if let Some(children) = obj.get("item").and_then(Value::as_array) {
            check_items(defs, children, items(d), &at, sink, depth + 1);
        }
    }
}

fn check_value(defs: &Definitions, d: &Value, vt: &str, v: &Value, loc: &str, sink: &mut Sink) {
    if let Some(options) = d.get("answerOption").and_then(Value::as_array) {
        let same_kind: Vec<&Value> = options
            .iter()
            .filter_map(|o| o.as_object().and_then(value_x))
            .filter(|(t, _)| *t == vt)
            .map(|(_, v)| v)
            .collect();
        if !same_kind.is_empty() {
            let matches = same_kind.iter().any(|o| match vt {
                "Coding" => o.get("system") == v.get("system") && o.get("code") == v.get("code"),
                _ => *o == v,
            });
            if !matches {
                sink.error(
                    "value",
                    loc,
                    "the answer is not in the set of permitted values (answerOption)".into(),
                );
            }
        }
    }
    let bound = |name: &str| ext(d, name).and_then(value_x).map(|(_, b)| b);
    match (vt, v) {
        ("Integer" | "Decimal", Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = bound("minValue").and_then(Value::as_f64)
                && x < min
            {
                sink.error(
                    "value",
                    loc,
                    "the value is less than the allowed minimum".into(),
                );
            }
            if let Some(max) = bound("maxValue").and_then(Value::as_f64)
                && x > max
            {
                sink.error(
                    "value",
                    loc,
                    "the value is greater than the allowed maximum".into(),
                );
            }
            if let Some(places) = ext(d, "maxDecimalPlaces")
                .and_then(|e| e.get("valueInteger"))
                .and_then(Value::as_u64)
            {
                let text = n.to_string();
                let decimals = text.split_once('.').map_or(0, |(_, f)| f.len()) as u64;
                if decimals > places {
                    sink.error(
                        "value",
                        loc,
                        format!("the value has too many decimal places (limit = {places})"),
                    );
                }
            }
        }
        ("Date" | "DateTime", Value::String(s)) => {
            if let Some(min) = bound("minValue").and_then(Value::as_str)
                && date_cmp(s, min) == std::cmp::Ordering::Less
            {
                sink.error(
                    "value",
                    loc,
                    "the value is less than the allowed minimum".into(),
                );
            }
            if let Some(max) = bound("maxValue").and_then(Value::as_str)
                && date_cmp(s, max) == std::cmp::Ordering::Greater
            {
                sink.error(
                    "value",
                    loc,
                    "the value is greater than the allowed maximum".into(),
                );
            }
        }
        ("String", Value::String(s)) => {
            let len = s.chars().count() as u64;
            if let Some(min) = ext(d, "minLength")
                .and_then(|e| e.get("valueInteger"))
                .and_then(Value::as_u64)
                && len < min
            {
                sink.error(
                    "value",
                    loc,
                    format!("the answer is shorter than the required minimum length of {min}"),
                );
            }
            if let Some(max) = d.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                sink.error(
                    "value",
                    loc,
                    format!("the answer is longer than the allowed maximum length of {max}"),
                );
            }
            if let Some(re) = ext(d, "regex")
                .and_then(|e| e.get("valueString"))
                .and_then(Value::as_str)
                && let Ok(re) = regex::Regex::new(&format!("^(?:{re})$"))
                && !re.is_match(s)
            {
                sink.error(
                    "value",
                    loc,
                    "the answer does not conform to the expected format (regex)".into(),
                );
            }
        }
        ("Quantity", Value::Object(q)) => {
            for (name, word) in [("minValue", "minimum"), ("maxValue", "maximum")] {
                let sdc = if name == "minValue" {
                    "minQuantity"
                } else {
                    "maxQuantity"
                };
                let Some(Value::Object(b)) = bound(name).or_else(|| bound(sdc)) else {
                    continue;
                };
                let formal =
                    |x: &Map<String, Value>| x.contains_key("system") && x.contains_key("code");
                if !formal(q) || !formal(b) {
                    sink.error(
                        "value",
                        loc,
                        format!("the quantity cannot be compared to the allowed {word} because no formal units are specified"),
                    );
                    continue;
                }
                if q.get("system") != b.get("system") || q.get("code") != b.get("code") {
                    sink.push(
                        Severity::Information,
                        "informational",
                        loc,
                        format!(
                            "the quantity was not checked against the allowed {word}: their units differ, and unit conversion is not supported"
                        ),
                    );
                    continue;
                }
                let (x, y) = (
                    q.get("value").and_then(Value::as_f64),
                    b.get("value").and_then(Value::as_f64),
                );
                if let (Some(x), Some(y)) = (x, y)
                    && ((name == "minValue" && x < y) || (name == "maxValue" && x > y))
                {
                    sink.error(
                        "value",
                        loc,
                        format!("the quantity is outside the allowed {word}"),
                    );
                }
            }
            let units: Vec<&Map<String, Value>> = d
                .get("extension")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .filter(|e| {
                    e.get("url").and_then(Value::as_str)
                        == Some("http://hl7.org/fhir/StructureDefinition/questionnaire-unitOption")
                })
                .filter_map(|e| e.get("valueCoding").and_then(Value::as_object))
                .collect();
            if !units.is_empty()
                && !units
                    .iter()
                    .any(|u| u.get("system") == q.get("system") && u.get("code") == q.get("code"))
            {
                sink.error(
                    "value",
                    loc,
                    "the quantity's unit is not one of the units the question allows (unitOption)"
                        .into(),
                );
            }
        }
        ("Attachment", Value::Object(att)) => {
            if let Some(Value::String(ct)) = att.get("contentType") {
                let types: Vec<&str> = d
                    .get("extension")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter(|e| {
                                e.get("url").and_then(Value::as_str)
                                    == Some("http://hl7.org/fhir/StructureDefinition/mimeType")
                            })
                            .filter_map(|e| e.get("valueCode").and_then(Value::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
                if !types.is_empty() && !types.contains(&ct.as_str()) {
                    sink.error(
                        "value",
                        loc,
                        "the mime type is not valid for this answer".into(),
                    );
                }
            }
            if let Some(max) = ext(d, "maxSize")
                .and_then(value_x)
                .and_then(|(_, v)| v.as_f64())
            {
                let size = super::structure::attachment_size(att);
                if size.is_some_and(|s| s as f64 > max) {
                    sink.error("value", loc, "the attachment is too large".into());
                }
            }
        }
        ("Reference", Value::Object(r)) => {
            let allowed: Vec<&str> = d
                .get("extension")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter(|e| e.get("url").and_then(Value::as_str) == Some("http://hl7.org/fhir/StructureDefinition/questionnaire-referenceResource"))
                        .filter_map(|e| e.get("valueCode").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(Value::String(reference)) = r.get("reference") {
                let parts: Vec<&str> = reference.split('/').collect();
                let ty = parts
                    .len()
                    .checked_sub(2)
                    .and_then(|i| parts.get(i))
                    .copied();
                if !reference.starts_with('#')
                    && !reference.starts_with("urn:")
                    && ty.is_some_and(|t| !defs.is_resource_type(t))
                {
                    sink.error(
                        "value",
                        loc,
                        "the reference does not name a FHIR resource type".into(),
                    );
                } else if !allowed.is_empty() && ty.is_some_and(|t| !allowed.contains(&t)) {
                    sink.error(
                        "value",
                        loc,
                        format!(
                            "the reference's resource type is not allowed (allowed = {})",
                            allowed.join(",")
                        ),
                    );
                }
            }
        }
        _ => {}
    }
}

/// Compares partial dates: on their common precision, and a more precise value after a less
/// precise bound of the same prefix (2022-06-30 is later than a maximum of 2022-06).
fn date_cmp(v: &str, bound: &str) -> std::cmp::Ordering {
    let n = v.len().min(bound.len());
    match v[..n].cmp(&bound[..n]) {
        std::cmp::Ordering::Equal if v.len() > bound.len() => std::cmp::Ordering::Greater,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(q: Value, qr: Value) -> Vec<String> {
        let mut sink = Sink::default();
        let defs = Definitions::shared().unwrap();
        check_response(defs, &qr, &q, "QuestionnaireResponse", &mut sink);
        sink.outcome
            .issues
            .into_iter()
            .map(|i| i.diagnostics)
            .collect()
    }

    #[test]
    fn link_ids_types_required_and_bounds() {
        let q = json!({"item": [
            {"linkId": "q1", "type": "integer", "required": true, "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/minValue", "valueInteger": 20},
                {"url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueInteger": 30}]},
            {"linkId": "q2", "type": "date", "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueDate": "2022-06"}]},
            {"linkId": "q3", "type": "string", "answerOption": [{"valueString": "a"}]}
        ]});
        let ok = run(
            q.clone(),
            json!({"item": [
            {"linkId": "q1", "answer": [{"valueInteger": 25}]},
            {"linkId": "q2", "answer": [{"valueDate": "2022-05-31"}]},
            {"linkId": "q3", "answer": [{"valueString": "a"}]}]}),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let bad = run(
            q,
            json!({"item": [
            {"linkId": "q2", "answer": [{"valueDate": "2022-06-30"}]},
            {"linkId": "q3", "answer": [{"valueString": "b"}, {"valueCoding": {"code": "x"}}]},
            {"linkId": "nope"}]}),
        );
        assert_eq!(bad.len(), 6, "{bad:?}");
        assert!(bad[0].contains("required item 'q1'"));
        assert!(bad[1].contains("greater than the allowed maximum"));
        assert!(bad[2].contains("more than one answer"));
        assert!(bad[3].contains("permitted values"));
        assert!(bad[4].contains("must be of the type string"));
        assert!(bad[5].contains("not found"));
    }

    #[test]
    fn partial_dates_compare_by_precision() {
        use std::cmp::Ordering::*;
        assert_eq!(date_cmp("1998", "2020"), Less);
        assert_eq!(date_cmp("2022-07", "2022-06"), Greater);
        assert_eq!(date_cmp("2022-06-30", "2022-06"), Greater);
        assert_eq!(date_cmp("2022-06", "2022-06"), Equal);
    }
}
