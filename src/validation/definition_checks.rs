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
        Some("ValueSet") => value_set(defs, resource, loc, sink),
        Some("CodeSystem") => {
            let mut seen = std::collections::HashSet::new();
            for (i, p) in items(resource, "property").iter().enumerate() {
                if let Some(code) = p.get("code").and_then(Value::as_str)
                    && !seen.insert(code)
                {
                    sink.error(
                        "business-rule",
                        &format!("{loc}.property[{i}]"),
                        "a property is already defined with this code".into(),
                    );
                }
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

/// A ValueSet's listed codes are checked as Codings are (membership in the code systems
/// held, offline check digits, or "not checked"); its filters need the code system's
/// properties, which are not held: said, not passed.
fn value_set(defs: &Definitions, vs: &Value, loc: &str, sink: &mut Sink) {
    let Some(compose) = vs.get("compose") else {
        return;
    };
    for part in ["include", "exclude"] {
        for (i, inc) in items(compose, part).iter().enumerate() {
            let at = format!("{loc}.compose.{part}[{i}]");
            let Some(system) = inc.get("system").and_then(Value::as_str) else {
                continue;
            };
            if !system.contains(':') {
                sink.error(
                    "invalid",
                    &format!("{at}.system"),
                    "the system of a ValueSet include must be an absolute URI (a contained CodeSystem is named by its url)".into(),
                );
                continue;
            }
            for (j, c) in items(inc, "concept").iter().enumerate() {
                if let Some(code) = c.get("code").and_then(Value::as_str) {
                    let mut coding = serde_json::Map::new();
                    coding.insert("system".into(), Value::from(system));
                    coding.insert("code".into(), Value::from(code));
                    if let Some(d) = c.get("display") {
                        coding.insert("display".into(), d.clone());
                    }
                    super::terminology::check_coding(
                        defs,
                        &coding,
                        &format!("{at}.concept[{j}]"),
                        sink,
                    );
                }
            }
            if !items(inc, "filter").is_empty() {
                sink.push(
                    crate::outcome::Severity::Information,
                    "informational",
                    &at,
                    format!(
                        "the filters over {system} were not checked (their properties and values need the code system's definition: a terminology server)"
                    ),
                );
            }
        }
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

#[cfg(test)]
mod terminology_resource_tests {
    use serde_json::json;

    use super::*;
    use crate::outcome::Severity;

    fn issues(r: &Value) -> Vec<(Severity, String)> {
        let mut sink = Sink::default();
        check(Definitions::shared().unwrap(), r, "R", &mut sink);
        sink.outcome
            .issues
            .iter()
            .map(|i| (i.severity, i.expression.join(",")))
            .collect()
    }

    #[test]
    fn value_set_codes_are_checked_and_filters_said_not_checked() {
        let vs = json!({"resourceType": "ValueSet", "compose": {"include": [
            {"system": "http://snomed.info/sct", "concept": [{"code": "1"}, {"code": "271649006"}]},
            {"system": "http://hl7.org/fhir/administrative-gender", "concept": [{"code": "male"}, {"code": "nope"}]},
            {"system": "http://snomed.info/sct", "filter": [{"property": "concept", "op": "is-a", "value": "1"}]},
            {"system": "#cs"}]}});
        let got = issues(&vs);
        let errors: Vec<&str> = got
            .iter()
            .filter(|(s, _)| *s == Severity::Error)
            .map(|(_, e)| e.as_str())
            .collect();
        assert_eq!(
            errors,
            vec![
                "R.compose.include[0].concept[0]",
                "R.compose.include[1].concept[1]",
                "R.compose.include[3].system"
            ]
        );
        assert!(got.contains(&(Severity::Information, "R.compose.include[2]".to_owned())));
    }

    #[test]
    fn code_system_properties_are_unique() {
        let cs = |codes: &[&str]| json!({"resourceType": "CodeSystem", "property": codes.iter().map(|c| json!({"code": c, "type": "code"})).collect::<Vec<_>>()});
        assert!(issues(&cs(&["a", "b"])).is_empty());
        assert_eq!(
            issues(&cs(&["a", "b", "a"])),
            vec![(Severity::Error, "R.property[2]".to_owned())]
        );
    }
}
