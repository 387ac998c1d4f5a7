//! Profiles: StructureDefinitions that constrain a core resource type (`derivation:
//! constraint`), loaded at run time (`validate --load`, `--profile`, `meta.profile`).
//!
//! What a profile checks here: the cardinality (min/max), fixed and pattern values of each
//! element it constrains, by path, from its snapshot (or, without one, its differential,
//! which is what most hand-written profiles carry). Slices (`sliceName`) and the elements
//! under them are not evaluated yet; a profile that slices says so in an information issue.

use serde_json::{Map, Value};

use super::ValidationError;
use super::structure::Sink;
use crate::outcome::Severity;

/// One element constraint of a profile.
#[derive(Debug, Clone)]
struct Constraint {
    /// Path segments below the root (`["name", "given"]`); a segment ending in `[x]` matches
    /// any type of the choice.
    path: Vec<String>,
    min: Option<u32>,
    /// `Some(None)` for `*`.
    max: Option<Option<u32>>,
    fixed: Option<Value>,
    pattern: Option<Value>,
}

/// A constraint profile of a core resource type.
#[derive(Debug, Clone)]
pub struct Profile {
    pub url: String,
    pub resource_type: String,
    constraints: Vec<Constraint>,
    /// True if the profile slices some element (not evaluated).
    slices: bool,
}

impl Profile {
    /// Reads a StructureDefinition. Only `derivation: constraint` profiles of a type are
    /// accepted; the snapshot is preferred to the differential.
    pub fn from_structure_definition(sd: &Value) -> Result<Profile, ValidationError> {
        let bad = |why: &str| ValidationError::Profile(why.to_owned());
        let url = sd
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a StructureDefinition without url"))?;
        let resource_type = sd
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a StructureDefinition without type"))?;
        let elements = sd
            .pointer("/snapshot/element")
            .or_else(|| sd.pointer("/differential/element"))
            .and_then(Value::as_array)
            .ok_or_else(|| bad("a StructureDefinition without snapshot or differential"))?;
        let mut constraints = Vec::new();
        let mut slices = false;
        for e in elements {
            let Some(path) = e.get("path").and_then(Value::as_str) else {
                continue;
            };
            let id = e.get("id").and_then(Value::as_str).unwrap_or(path);
            if e.get("sliceName").is_some() || id.contains(':') {
                slices = true;
                continue;
            }
            if e.get("slicing").is_some() {
                slices = true;
            }
            let mut segments = path.split('.');
            if segments.next() != Some(resource_type) {
                continue;
            }
            let path: Vec<String> = segments.map(str::to_owned).collect();
            if path.is_empty() {
                continue;
            }
            let min = e
                .get("min")
                .and_then(Value::as_u64)
                .and_then(|m| u32::try_from(m).ok());
            let max = e
                .get("max")
                .and_then(Value::as_str)
                .map(|m| m.parse::<u32>().ok());
            let mut fixed = None;
            let mut pattern = None;
            if let Some(obj) = e.as_object() {
                for (k, v) in obj {
                    if k.starts_with("fixed") {
                        fixed = Some(v.clone());
                    } else if k.starts_with("pattern") {
                        pattern = Some(v.clone());
                    }
                }
            }
            if min.is_some() || max.is_some() || fixed.is_some() || pattern.is_some() {
                constraints.push(Constraint {
                    path,
                    min,
                    max,
                    fixed,
                    pattern,
                });
            }
        }
        Ok(Profile {
            url: url.to_owned(),
            resource_type: resource_type.to_owned(),
            constraints,
            slices,
        })
    }

    /// Checks `resource` (located at `loc`) against the profile.
    pub(crate) fn check(&self, resource: &Value, loc: &str, sink: &mut Sink) {
        if resource.get("resourceType").and_then(Value::as_str) != Some(&self.resource_type) {
            sink.error(
                "structure",
                loc,
                format!(
                    "the profile {} applies to {} resources",
                    self.url, self.resource_type
                ),
            );
            return;
        }
        for c in &self.constraints {
            let (parent_path, last) = c.path.split_at(c.path.len() - 1);
            let mut parents = vec![(loc.to_owned(), resource)];
            for seg in parent_path {
                parents = step(&parents, seg);
            }
            let leaf = &last[0];
            for (ploc, parent) in &parents {
                let Some(obj) = parent.as_object() else {
                    continue;
                };
                let values = member(obj, leaf);
                let count = values.len();
                let name = format!("{}.{}", self.resource_type, c.path.join("."));
                if let Some(min) = c.min
                    && (count as u64) < u64::from(min)
                {
                    sink.error(
                        "required",
                        ploc,
                        format!(
                            "{name}: minimum required = {min}, but only found {count} (from {})",
                            self.url
                        ),
                    );
                }
                if let Some(Some(max)) = c.max
                    && count as u64 > u64::from(max)
                {
                    sink.error(
                        "structure",
                        ploc,
                        format!(
                            "{name}: max allowed = {max}, but found {count} (from {})",
                            self.url
                        ),
                    );
                }
                for v in values {
                    if c.fixed.as_ref().is_some_and(|f| f != v) {
                        sink.error(
                            "value",
                            ploc,
                            format!(
                                "{name}: the value differs from the fixed value of {}",
                                self.url
                            ),
                        );
                    }
                    if c.pattern
                        .as_ref()
                        .is_some_and(|p| !super::structure::matches_pattern(v, p))
                    {
                        sink.error(
                            "value",
                            ploc,
                            format!(
                                "{name}: the value does not match the pattern of {}",
                                self.url
                            ),
                        );
                    }
                }
            }
        }
        if self.slices {
            sink.push(
                Severity::Information,
                "informational",
                loc,
                format!(
                    "the slices of the profile {} were not evaluated (slicing is not supported yet)",
                    self.url
                ),
            );
        }
    }
}

/// The values of a member (array items flattened); `stem[x]` matches any `stemType` member.
fn member<'v>(obj: &'v Map<String, Value>, name: &str) -> Vec<&'v Value> {
    let mut out = Vec::new();
    let mut push = |v: &'v Value| match v {
        Value::Array(a) => out.extend(a.iter()),
        other => out.push(other),
    };
    match name.strip_suffix("[x]") {
        Some(stem) => {
            for (k, v) in obj {
                if k.len() > stem.len()
                    && k.starts_with(stem)
                    && k[stem.len()..].starts_with(|c: char| c.is_ascii_uppercase())
                {
                    push(v);
                }
            }
        }
        None => {
            if let Some(v) = obj.get(name) {
                push(v);
            }
        }
    }
    out
}

fn step<'v>(nodes: &[(String, &'v Value)], seg: &str) -> Vec<(String, &'v Value)> {
    let mut out = Vec::new();
    for (loc, node) in nodes {
        let Some(obj) = node.as_object() else {
            continue;
        };
        let is_array = match seg.strip_suffix("[x]") {
            Some(_) => false,
            None => obj.get(seg).is_some_and(Value::is_array),
        };
        for (i, v) in member(obj, seg).into_iter().enumerate() {
            let at = if is_array {
                format!("{loc}.{seg}[{i}]")
            } else {
                format!("{loc}.{}", seg.trim_end_matches("[x]"))
            };
            out.push((at, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile() -> Profile {
        Profile::from_structure_definition(&json!({
            "resourceType": "StructureDefinition",
            "url": "http://example.org/p",
            "type": "Patient",
            "derivation": "constraint",
            "differential": {"element": [
                {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1},
                {"id": "Patient.name", "path": "Patient.name", "max": "1"},
                {"id": "Patient.name.family", "path": "Patient.name.family", "min": 1},
                {"id": "Patient.gender", "path": "Patient.gender", "fixedCode": "female"}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn cardinality_and_fixed_values_by_path() {
        let mut sink = Sink::default();
        profile().check(
            &json!({"resourceType": "Patient", "name": [{"given": ["a"]}, {"family": "b"}], "gender": "male"}),
            "Patient",
            &mut sink,
        );
        let text: Vec<String> = sink
            .outcome
            .issues
            .iter()
            .map(|i| format!("{} @ {}", i.diagnostics, i.expression.join(",")))
            .collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert!(text[0].starts_with("Patient.identifier: minimum required = 1"));
        assert!(text[1].starts_with("Patient.name: max allowed = 1, but found 2"));
        assert!(
            text[2].contains("Patient.name.family: minimum")
                && text[2].ends_with("@ Patient.name[0]")
        );
        assert!(text[3].contains("fixed"));
        let mut sink = Sink::default();
        profile().check(
            &json!({"resourceType": "Patient", "identifier": [{"value": "1"}], "name": [{"family": "b"}], "gender": "female"}),
            "Patient",
            &mut sink,
        );
        assert!(sink.outcome.issues.is_empty());
    }

    #[test]
    fn wrong_type_and_bad_definitions() {
        let mut sink = Sink::default();
        profile().check(
            &json!({"resourceType": "Observation"}),
            "Observation",
            &mut sink,
        );
        assert_eq!(sink.outcome.issues.len(), 1);
        assert!(Profile::from_structure_definition(&json!({"type": "Patient"})).is_err());
        assert!(
            Profile::from_structure_definition(&json!({"url": "u", "type": "Patient"})).is_err()
        );
    }
}
