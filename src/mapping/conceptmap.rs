//! Code translation through FHIR R4 ConceptMap resources (kept in `fhir-profiles/conceptmaps/`),
//! for the mapping function `conceptmap('url', code, system=none)`.
//!
//! A ConceptMap is read whole at load (they are small) and checked: `group[].element[].target[]`
//! with an R4 `equivalence`, and `group[].unmapped` (`provided`, `fixed` or `other-map`).
//! Translation takes the groups in order (only those whose `source` is the given system, when
//! one is given); the first element with the code and a target whose equivalence is not
//! `unmatched` or `disjoint` gives the Coding `{system: group.target, code, display}`. A code
//! no group maps falls to the first matching group's `unmapped` rule; without one it is an
//! error naming the ConceptMap, never the code.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value as Json};

/// The R4 `ConceptMapEquivalence` codes; `unmatched` and `disjoint` say "no mapping".
const EQUIVALENCES: [&str; 10] = [
    "relatedto",
    "equivalent",
    "equal",
    "wider",
    "subsumes",
    "narrower",
    "specializes",
    "inexact",
    "unmatched",
    "disjoint",
];

/// How many `other-map` hops a translation may take (a loop of maps is an error, not a hang).
const MAX_OTHER_MAP_DEPTH: usize = 8;

/// A ConceptMap file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConceptMapError {
    #[error("{file}: cannot read ConceptMap: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: {path}: {reason}")]
    Invalid {
        file: String,
        path: String,
        reason: String,
    },
}

/// Why a code could not be translated; the text names the map, never the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("unknown ConceptMap `{0}` (list its file under conceptMaps)")]
    UnknownMap(String),
    #[error("code not mapped by ConceptMap `{0}`")]
    Unmapped(String),
    #[error("ConceptMap `{0}`: other-map chain longer than {MAX_OTHER_MAP_DEPTH} (a loop?)")]
    TooDeep(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMap {
    resource_type: String,
    url: Option<String>,
    #[serde(default)]
    group: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawGroup {
    source: Option<String>,
    target: Option<String>,
    #[serde(default)]
    element: Vec<RawElement>,
    unmapped: Option<RawUnmapped>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawElement {
    code: Option<String>,
    #[serde(default)]
    target: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTarget {
    code: Option<String>,
    display: Option<String>,
    equivalence: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawUnmapped {
    mode: String,
    code: Option<String>,
    display: Option<String>,
    url: Option<String>,
}

#[derive(Debug, Clone)]
enum Unmapped {
    /// The code is kept, in the group's target system.
    Provided,
    /// The Coding every unmapped code becomes, built at load.
    Fixed(Json),
    OtherMap(String),
}

#[derive(Debug, Clone)]
struct Group {
    source: Option<String>,
    target: Option<String>,
    /// code → the Coding `{system: target, code, display}` of the first usable target, built
    /// at load so that a translation clones it (or lends it) rather than building it.
    elements: HashMap<String, Option<Json>>,
    unmapped: Option<Unmapped>,
}

/// One loaded ConceptMap.
#[derive(Debug, Clone)]
pub struct ConceptMap {
    url: String,
    groups: Vec<Group>,
}

impl ConceptMap {
    /// Reads and checks a ConceptMap JSON file.
    pub fn load(path: &Path) -> Result<ConceptMap, ConceptMapError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConceptMapError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        ConceptMap::from_json(&text, &file)
    }

    /// Parses and checks a ConceptMap; `file` names it in errors.
    pub fn from_json(text: &str, file: &str) -> Result<ConceptMap, ConceptMapError> {
        let invalid = |path: &str, reason: &str| ConceptMapError::Invalid {
            file: file.to_owned(),
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let raw: RawMap = serde_json::from_str(text).map_err(|e| ConceptMapError::Read {
            file: file.to_owned(),
            reason: e.to_string(),
        })?;
        if raw.resource_type != "ConceptMap" {
            return Err(invalid("resourceType", "must be ConceptMap"));
        }
        let url = match raw.url {
            Some(u) if !u.trim().is_empty() => u,
            _ => return Err(invalid("url", "a ConceptMap needs its canonical url")),
        };
        if raw.group.is_empty() {
            return Err(invalid("group", "a ConceptMap needs at least one group"));
        }
        let mut groups = Vec::with_capacity(raw.group.len());
        for (g, group) in raw.group.into_iter().enumerate() {
            let mut elements = HashMap::new();
            for (e, element) in group.element.into_iter().enumerate() {
                let at = format!("group[{g}].element[{e}]");
                let Some(code) = element.code else {
                    return Err(invalid(&format!("{at}.code"), "missing"));
                };
                let mut found = None;
                for (t, target) in element.target.into_iter().enumerate() {
                    let at = format!("{at}.target[{t}]");
                    let eq = target.equivalence.unwrap_or_default();
                    if !EQUIVALENCES.contains(&eq.as_str()) {
                        return Err(invalid(
                            &format!("{at}.equivalence"),
                            "must be an R4 ConceptMapEquivalence code",
                        ));
                    }
                    if eq == "unmatched" || eq == "disjoint" {
                        continue;
                    }
                    let Some(target_code) = target.code else {
                        return Err(invalid(
                            &format!("{at}.code"),
                            "missing (only unmatched targets may omit it)",
                        ));
                    };
                    if found.is_none() {
                        found = Some((target_code, target.display));
                    }
                }
                // The first element with a code wins, as the first usable target does.
                elements.entry(code).or_insert_with(|| {
                    found.map(|(c, d)| coding(group.target.as_deref(), &c, d.as_deref()))
                });
            }
            let unmapped = match group.unmapped {
                None => None,
                Some(u) => Some(match u.mode.as_str() {
                    "provided" => Unmapped::Provided,
                    "fixed" => match u.code {
                        Some(code) => Unmapped::Fixed(coding(
                            group.target.as_deref(),
                            &code,
                            u.display.as_deref(),
                        )),
                        None => {
                            return Err(invalid(
                                &format!("group[{g}].unmapped.code"),
                                "mode fixed needs a code",
                            ));
                        }
                    },
                    "other-map" => match u.url {
                        Some(url) => Unmapped::OtherMap(url),
                        None => {
                            return Err(invalid(
                                &format!("group[{g}].unmapped.url"),
                                "mode other-map needs a url",
                            ));
                        }
                    },
                    _ => {
                        return Err(invalid(
                            &format!("group[{g}].unmapped.mode"),
                            "must be provided, fixed or other-map",
                        ));
                    }
                }),
            };
            groups.push(Group {
                source: group.source,
                target: group.target,
                elements,
                unmapped,
            });
        }
        Ok(ConceptMap { url, groups })
    }

    /// The canonical url.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The ConceptMaps a mapping can use, by url.
#[derive(Debug, Clone, Default)]
pub struct ConceptMaps {
    by_url: BTreeMap<String, ConceptMap>,
}

impl ConceptMaps {
    /// Adds a map; `false` if one with the same url is already there (it is kept).
    pub fn insert(&mut self, map: ConceptMap) -> bool {
        if self.by_url.contains_key(&map.url) {
            return false;
        }
        self.by_url.insert(map.url.clone(), map);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.by_url.is_empty()
    }

    /// Translates `code` (from `system`, if given) with the map at `url` into a Coding.
    pub fn translate(
        &self,
        url: &str,
        code: &str,
        system: Option<&str>,
    ) -> Result<Json, TranslateError> {
        self.translate_ref(url, code, system).map(Cow::into_owned)
    }

    /// [`ConceptMaps::translate`], lending the Coding where the map holds it.
    pub fn translate_ref(
        &self,
        url: &str,
        code: &str,
        system: Option<&str>,
    ) -> Result<Cow<'_, Json>, TranslateError> {
        self.translate_depth(url, code, system, 0)
    }

    fn translate_depth(
        &self,
        url: &str,
        code: &str,
        system: Option<&str>,
        depth: usize,
    ) -> Result<Cow<'_, Json>, TranslateError> {
        if depth > MAX_OTHER_MAP_DEPTH {
            return Err(TranslateError::TooDeep(url.to_owned()));
        }
        let map = self
            .by_url
            .get(url)
            .ok_or_else(|| TranslateError::UnknownMap(url.to_owned()))?;
        let groups = || {
            map.groups
                .iter()
                .filter(move |g| system.is_none() || g.source.as_deref() == system)
        };
        for g in groups() {
            if let Some(Some(coding)) = g.elements.get(code) {
                return Ok(Cow::Borrowed(coding));
            }
        }
        let fallback = groups().find_map(|g| g.unmapped.as_ref().map(|u| (g, u)));
        match fallback {
            Some((g, Unmapped::Provided)) => {
                Ok(Cow::Owned(coding(g.target.as_deref(), code, None)))
            }
            Some((_, Unmapped::Fixed(coding))) => Ok(Cow::Borrowed(coding)),
            Some((_, Unmapped::OtherMap(other))) => {
                self.translate_depth(other, code, system, depth + 1)
            }
            None => Err(TranslateError::Unmapped(url.to_owned())),
        }
    }
}

fn coding(system: Option<&str>, code: &str, display: Option<&str>) -> Json {
    let mut m = Map::new();
    if let Some(s) = system {
        m.insert("system".into(), Json::String(s.to_owned()));
    }
    m.insert("code".into(), Json::String(code.to_owned()));
    if let Some(d) = display {
        m.insert("display".into(), Json::String(d.to_owned()));
    }
    Json::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Json) -> Result<ConceptMap, ConceptMapError> {
        ConceptMap::from_json(&v.to_string(), "cm.json")
    }

    fn maps(list: Vec<Json>) -> ConceptMaps {
        let mut m = ConceptMaps::default();
        for v in list {
            assert!(m.insert(map(v).unwrap()));
        }
        m
    }

    fn sex(unmapped: Option<Json>) -> Json {
        let mut group = json!({
            "source": "urn:src", "target": "http://hl7.org/fhir/administrative-gender",
            "element": [
                {"code": "M", "target": [{"code": "male", "display": "Male", "equivalence": "equivalent"}]},
                {"code": "X", "target": [{"equivalence": "unmatched"}]},
                {"code": "N", "target": [{"code": "nope", "equivalence": "disjoint"},
                                         {"code": "unknown", "equivalence": "wider"}]}
            ]
        });
        if let Some(u) = unmapped {
            group["unmapped"] = u;
        }
        json!({"resourceType": "ConceptMap", "url": "urn:cm:sex", "status": "active", "group": [group]})
    }

    #[test]
    fn translates_with_equivalence_and_system() {
        let m = maps(vec![sex(None)]);
        assert_eq!(
            m.translate("urn:cm:sex", "M", None).unwrap(),
            json!({"system": "http://hl7.org/fhir/administrative-gender", "code": "male", "display": "Male"})
        );
        // A disjoint target is skipped, the next usable one is taken.
        assert_eq!(
            m.translate("urn:cm:sex", "N", Some("urn:src")).unwrap()["code"],
            "unknown"
        );
        // unmatched, an unknown code, another source system: no mapping.
        for (code, system) in [("X", None), ("Q", None), ("M", Some("urn:other"))] {
            assert_eq!(
                m.translate("urn:cm:sex", code, system),
                Err(TranslateError::Unmapped("urn:cm:sex".into()))
            );
        }
        let e = m.translate("urn:cm:none", "M", None).unwrap_err();
        assert_eq!(e, TranslateError::UnknownMap("urn:cm:none".into()));
        assert!(
            !m.translate("urn:cm:sex", "Q", None)
                .unwrap_err()
                .to_string()
                .contains("Q")
        );
    }

    #[test]
    fn unmapped_modes() {
        let fixed = maps(vec![sex(Some(
            json!({"mode": "fixed", "code": "unknown", "display": "Unknown"}),
        ))]);
        assert_eq!(
            fixed.translate("urn:cm:sex", "Q", None).unwrap()["code"],
            "unknown"
        );
        let provided = maps(vec![sex(Some(json!({"mode": "provided"})))]);
        assert_eq!(
            provided.translate("urn:cm:sex", "other", None).unwrap(),
            json!({"system": "http://hl7.org/fhir/administrative-gender", "code": "other"})
        );
        let mut chained = sex(Some(json!({"mode": "other-map", "url": "urn:cm:loop"})));
        let other = maps(vec![chained.clone()]);
        assert_eq!(
            other.translate("urn:cm:sex", "Q", None),
            Err(TranslateError::UnknownMap("urn:cm:loop".into()))
        );
        chained["url"] = json!("urn:cm:loop");
        let looped = maps(vec![chained]);
        assert!(matches!(
            looped.translate("urn:cm:loop", "Q", None),
            Err(TranslateError::TooDeep(_))
        ));
    }

    #[test]
    fn bad_conceptmaps_are_refused_with_the_place() {
        let cases = [
            (
                json!({"resourceType": "ValueSet", "url": "u", "group": []}),
                "resourceType",
            ),
            (json!({"resourceType": "ConceptMap", "group": [{}]}), "url"),
            (json!({"resourceType": "ConceptMap", "url": "u"}), "group"),
            (
                json!({"resourceType": "ConceptMap", "url": "u", "group": [{"element": [{"code": "a", "target": [{"code": "b", "equivalence": "same"}]}]}]}),
                "group[0].element[0].target[0].equivalence",
            ),
            (
                json!({"resourceType": "ConceptMap", "url": "u", "group": [{"element": [{"code": "a", "target": [{"equivalence": "equal"}]}]}]}),
                "group[0].element[0].target[0].code",
            ),
            (
                json!({"resourceType": "ConceptMap", "url": "u", "group": [{"unmapped": {"mode": "fixed"}}]}),
                "group[0].unmapped.code",
            ),
            (
                json!({"resourceType": "ConceptMap", "url": "u", "group": [{"unmapped": {"mode": "guess"}}]}),
                "group[0].unmapped.mode",
            ),
        ];
        for (v, expected) in cases {
            match map(v) {
                Err(ConceptMapError::Invalid { path, file, .. }) => {
                    assert_eq!(path, expected);
                    assert_eq!(file, "cm.json");
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
        assert!(matches!(
            ConceptMap::from_json("{", "cm.json"),
            Err(ConceptMapError::Read { .. })
        ));
        assert!(matches!(
            ConceptMap::load(Path::new("/nonexistent/cm.json")),
            Err(ConceptMapError::Read { .. })
        ));
    }
}
