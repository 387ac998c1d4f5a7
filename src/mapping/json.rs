//! Between minijinja values and JSON, and the FHIR rule that nothing empty is kept.

use std::borrow::Cow;

use minijinja::value::{Value, ValueKind};
use serde_json::{Map, Value as Json};

/// A value an expression produced that JSON cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ToJsonError {
    #[error("an expression produced a value of kind {0}, which JSON cannot hold")]
    NotRepresentable(String),
}

/// Converts a minijinja value to JSON. Undefined and none become null (and are then removed);
/// bytes, functions, plain objects and invalid values are errors rather than silently null.
pub(crate) fn to_json(v: &Value) -> Result<Json, ToJsonError> {
    let not = |v: &Value| ToJsonError::NotRepresentable(v.kind().to_string());
    Ok(match v.kind() {
        ValueKind::Undefined | ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(v.is_true()),
        ValueKind::String => Json::String(v.as_str().unwrap_or_default().to_owned()),
        // Through serde, so a float stays a float (`2.0`) and an integer an integer; serde_json
        // turns non-finite floats into null, which is refused here rather than dropped.
        ValueKind::Number => match serde_json::to_value(v) {
            Ok(n @ Json::Number(_)) => n,
            _ => return Err(not(v)),
        },
        ValueKind::Seq | ValueKind::Iterable => {
            let iter = v.try_iter().map_err(|_| not(v))?;
            Json::Array(iter.map(|item| to_json(&item)).collect::<Result<_, _>>()?)
        }
        ValueKind::Map => {
            let mut map = Map::new();
            for k in v.try_iter().map_err(|_| not(v))? {
                let name = match k.as_str() {
                    Some(s) => s.to_owned(),
                    None if k.kind() == ValueKind::Number => k.to_string(),
                    None if k.kind() == ValueKind::Bool => k.is_true().to_string(),
                    None => return Err(not(&k)),
                };
                let item = v.get_item(&k).map_err(|_| not(v))?;
                map.insert(name, to_json(&item)?);
            }
            Json::Object(map)
        }
        _ => return Err(not(v)),
    })
}

/// `s.trim().is_empty()`: a string of whitespace only (Unicode's, as `trim` has it). Most
/// strings start with a printable ASCII character, which decides it without decoding.
#[inline]
pub(crate) fn is_blank(s: &str) -> bool {
    match s.as_bytes().first() {
        None => true,
        Some(&b) if b.is_ascii() && !char::from(b).is_whitespace() => false,
        Some(_) => s.trim().is_empty(),
    }
}

/// Removes what FHIR forbids: nulls, blank strings, empty arrays and empty objects, at every
/// depth (an object or array that only held such things goes too). `None` if nothing is left.
pub(crate) fn prune(v: Json) -> Option<Json> {
    match v {
        Json::Null => None,
        Json::String(s) if is_blank(&s) => None,
        Json::Array(items) => {
            let kept: Vec<Json> = items.into_iter().filter_map(prune).collect();
            (!kept.is_empty()).then_some(Json::Array(kept))
        }
        Json::Object(map) => {
            let kept: Map<String, Json> = map
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!kept.is_empty()).then_some(Json::Object(kept))
        }
        other => Some(other),
    }
}

/// Whether [`prune`] would give the value back unchanged: nothing in it, at any depth, is
/// null, a blank string, an empty array or an empty object.
pub(crate) fn is_pruned(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::String(s) => !is_blank(s),
        Json::Array(items) => !items.is_empty() && items.iter().all(is_pruned),
        Json::Object(map) => !map.is_empty() && map.values().all(is_pruned),
        Json::Bool(_) | Json::Number(_) => true,
    }
}

/// [`prune`] of a value that may be borrowed: a value with nothing to remove is copied (or
/// moved) as it is, without taking maps apart and building them again.
pub(crate) fn pruned(v: Cow<'_, Json>) -> Option<Json> {
    if is_pruned(&v) {
        Some(v.into_owned())
    } else {
        prune(v.into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prune_removes_empties_at_every_depth() {
        let v = json!({
            "a": "", "b": "  ", "c": null, "d": [], "e": {}, "f": [null, "", {}, [[]]],
            "g": {"h": {"i": null}}, "keep": [0, false, "x", {"y": 1, "z": ""}]
        });
        assert_eq!(prune(v), Some(json!({"keep": [0, false, "x", {"y": 1}]})));
        assert_eq!(prune(json!({"a": [{}]})), None);
    }

    #[test]
    fn is_blank_is_trim_is_empty() {
        let mut texts: Vec<String> = [
            "", " ", "\t", "\n", "\r", "\u{b}", "\u{c}", "\u{a0}", "\u{2003}", "\u{3000}",
            "\u{85}", "\u{feff}", "\u{200b}", "x", " x", "x ", "\u{a0}x", "é", " é", "\u{0}",
            "\u{1f}",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // Every ASCII byte, alone and before a space.
        for b in 0u8..128 {
            texts.push(char::from(b).to_string());
            texts.push(format!("{} ", char::from(b)));
        }
        for t in &texts {
            assert_eq!(is_blank(t), t.trim().is_empty(), "{t:?}");
            let v = Json::String(t.clone());
            assert_eq!(pruned(Cow::Borrowed(&v)), prune(v.clone()), "{t:?}");
        }
    }

    #[test]
    fn pruned_agrees_with_prune() {
        let values = [
            json!(null),
            json!(""),
            json!("  "),
            json!(" x "),
            json!(0),
            json!(false),
            json!([]),
            json!([null]),
            json!(["a", ""]),
            json!({}),
            json!({"a": null}),
            json!({"a": "x", "b": {"c": []}}),
            json!({"a": "x", "b": [{"c": 1}, {"d": true}]}),
            json!({"keep": [0, false, "x", {"y": 1, "z": ""}]}),
        ];
        for v in values {
            let expected = prune(v.clone());
            assert_eq!(is_pruned(&v), expected.as_ref() == Some(&v), "{v}");
            assert_eq!(pruned(Cow::Borrowed(&v)), expected, "{v}");
            assert_eq!(pruned(Cow::Owned(v.clone())), expected, "{v}");
        }
    }

    #[test]
    fn to_json_keeps_types_and_refuses_the_unrepresentable() {
        let v = Value::from(minijinja::value::Serde(
            json!({"n": 1, "f": 1.5, "s": "x", "b": true, "l": [1, null]}),
        ));
        assert_eq!(
            to_json(&v).unwrap(),
            json!({"n": 1, "f": 1.5, "s": "x", "b": true, "l": [1, null]})
        );
        assert_eq!(to_json(&Value::UNDEFINED).unwrap(), Json::Null);
        assert!(to_json(&Value::from(2.0)).unwrap().is_f64());
        assert_eq!(to_json(&Value::from(u64::MAX)).unwrap(), json!(u64::MAX));
        assert!(to_json(&Value::from_bytes(vec![1, 2])).is_err());
        assert!(to_json(&Value::from(f64::NAN)).is_err());
    }
}
