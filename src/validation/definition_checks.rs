//! Checks of conformance resources being validated (not loaded): a constraint
//! StructureDefinition's differential may only name paths that exist in its base type (with
//! a choice element renamed to one of its types, `value[x]` → `valueQuantity`), as snapshot
//! generation requires; a SearchParameter derived from another has that one's type; a
//! CapabilityStatement's search parameters have the type of the definition they name.

use serde_json::Value;

use super::definitions::{Definitions, TypeDef};
use super::structure::Sink;

/// Checks a conformance resource (located at `loc`) against the definitions it names.
pub(crate) fn check(defs: &Definitions, resource: &Value, loc: &str, sink: &mut Sink) {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("StructureDefinition") => check_structure_definition(defs, resource, loc, sink),
        Some("SearchParameter") => {
            if let (Some(from), Some(ty)) = (
                resource.get("derivedFrom").and_then(Value::as_str),
                resource.get("type").and_then(Value::as_str),
            ) && let Some(base) = defs.search_param_type(from)
                && base != ty
            {
                sink.error(
                    "business-rule",
                    loc,
                    format!(
                        "the type {ty} differs from the type {base} of the SearchParameter {from} it is derived from"
                    ),
                );
            }
        }
        Some("CapabilityStatement") => {
            for (i, rest) in items(resource, "rest").iter().enumerate() {
                let at = format!("{loc}.rest[{i}]");
                search_params(defs, rest, &at, sink);
                for (j, r) in items(rest, "resource").iter().enumerate() {
                    search_params(defs, r, &format!("{at}.resource[{j}]"), sink);
                }
            }
        }
        _ => {}
    }
}

fn items<'v>(v: &'v Value, key: &str) -> &'v [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn search_params(defs: &Definitions, holder: &Value, loc: &str, sink: &mut Sink) {
    for (k, sp) in items(holder, "searchParam").iter().enumerate() {
        if let (Some(def), Some(ty)) = (
            sp.get("definition").and_then(Value::as_str),
            sp.get("type").and_then(Value::as_str),
        ) && let Some(base) = defs.search_param_type(def)
            && base != ty
        {
            sink.error(
                "invalid",
                &format!("{loc}.searchParam[{k}]"),
                format!("type mismatch: the SearchParameter {def} has the type {base}, but the type here is {ty}"),
            );
        }
    }
}

/// Checks a StructureDefinition (located at `loc`): each differential path must exist.
fn check_structure_definition(defs: &Definitions, sd: &Value, loc: &str, sink: &mut Sink) {
    if sd.get("derivation").and_then(Value::as_str) != Some("constraint") {
        return;
    }
    let Some(ty) = sd.get("type").and_then(Value::as_str) else {
        return;
    };
    if defs.type_def(ty).is_none() {
        return;
    }
    for (i, e) in sd
        .pointer("/differential/element")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let Some(path) = e.get("path").and_then(Value::as_str) else {
            continue;
        };
        let mut segs = path.split('.');
        if segs.next() != Some(ty) {
            sink.error(
                "structure",
                &format!("{loc}.differential.element[{i}]"),
                format!("the differential path {path} does not start with the profiled type {ty}"),
            );
            continue;
        }
        let segs: Vec<&str> = segs.collect();
        if !path_exists(defs, ty, &segs) {
            sink.error(
                "structure",
                &format!("{loc}.differential.element[{i}]"),
                format!(
                    "the differential path {path} is not an element of {ty} (a snapshot cannot be generated)"
                ),
            );
        }
    }
}

/// True if `segs` name an element below the type `ty`, following data types.
fn path_exists(defs: &Definitions, ty: &str, segs: &[&str]) -> bool {
    let Some(mut td): Option<&TypeDef> = defs.type_def(ty) else {
        return false;
    };
    let mut prefix = String::new();
    for (n, seg) in segs.iter().enumerate() {
        let last = n + 1 == segs.len();
        let found = td.children(&prefix).iter().find_map(|&i| {
            let e = &td.elements[i];
            if !e.choice {
                return (e.name == *seg).then_some((e, None));
            }
            if seg.strip_suffix("[x]") == Some(e.name.as_str()) {
                return Some((e, None));
            }
            let suffix = seg.strip_prefix(e.name.as_str())?;
            e.types
                .iter()
                .find(|t| {
                    let mut c = t.code.chars();
                    c.next().is_some_and(|f| {
                        suffix.starts_with(f.to_ascii_uppercase()) && suffix[1..] == *c.as_str()
                    })
                })
                .map(|t| (e, Some(t.code.as_str())))
        });
        let Some((e, renamed)) = found else {
            return false;
        };
        if last {
            return true;
        }
        if let Some(cr) = &e.content_reference {
            prefix = cr.clone();
            continue;
        }
        if td.has_children(&e.path) {
            prefix = e.path.clone();
            continue;
        }
        let next = match (renamed, e.types.as_slice()) {
            (Some(code), _) => code,
            (None, [one]) => one.code.as_str(),
            // A choice not renamed, or no type: what lies below cannot be told apart.
            _ => return true,
        };
        match defs.type_def(next) {
            Some(t) => {
                td = t;
                prefix = String::new();
            }
            None => return true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(paths: &[&str]) -> usize {
        let defs = Definitions::shared().unwrap();
        let sd = json!({"resourceType": "StructureDefinition", "type": "Observation",
            "derivation": "constraint",
            "differential": {"element": paths.iter().map(|p| json!({"path": p})).collect::<Vec<_>>()}});
        let mut sink = Sink::default();
        check(defs, &sd, "StructureDefinition", &mut sink);
        sink.outcome.issues.len()
    }

    #[test]
    fn differential_paths_must_exist_in_the_base() {
        assert_eq!(
            errors(&[
                "Observation",
                "Observation.value[x]",
                "Observation.valueQuantity",
                "Observation.valueQuantity.code",
                "Observation.code.coding.system",
                "Observation.component.code",
                "Observation.component.referenceRange.low",
                "Observation.extension.url",
                "Observation.extension.valueString",
                "Observation.subject.identifier.period.start",
            ]),
            0
        );
        assert_eq!(errors(&["Observation.valueBla"]), 1);
        assert_eq!(errors(&["Observation.code.codingg"]), 1);
        assert_eq!(errors(&["Patient.name"]), 1);
        assert_eq!(
            errors(&["Observation.valueQuantity.bogus", "Observation.nope"]),
            2
        );
    }
}

#[cfg(test)]
mod search_param_tests {
    use serde_json::json;

    use super::*;

    fn errors(r: &Value) -> Vec<String> {
        let mut sink = Sink::default();
        check(Definitions::shared().unwrap(), r, "R", &mut sink);
        sink.outcome
            .issues
            .iter()
            .map(|i| i.expression.join(","))
            .collect()
    }

    #[test]
    fn search_parameter_types_follow_their_definitions() {
        let sp = |ty: &str| {
            json!({"resourceType": "SearchParameter", "type": ty,
                "derivedFrom": "http://hl7.org/fhir/SearchParameter/Organization-name"})
        };
        assert!(errors(&sp("string")).is_empty());
        assert_eq!(errors(&sp("token")), vec!["R"]);
        let unknown = json!({"resourceType": "SearchParameter", "type": "token",
            "derivedFrom": "http://example.org/SearchParameter/x"});
        assert!(errors(&unknown).is_empty());
        let cs = |ty: &str| {
            json!({"resourceType": "CapabilityStatement", "rest": [{"resource": [{"searchParam": [
                {"name": "clinical-status", "type": ty,
                 "definition": "http://hl7.org/fhir/SearchParameter/AllergyIntolerance-clinical-status|4.0.1"}]}]}]})
        };
        assert!(errors(&cs("token")).is_empty());
        assert_eq!(
            errors(&cs("date")),
            vec!["R.rest[0].resource[0].searchParam[0]"]
        );
    }
}
