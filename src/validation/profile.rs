//! Profiles: StructureDefinitions that constrain a core resource type (`derivation:
//! constraint`), loaded at run time (`validate --load`, `--profile`, `meta.profile`, the
//! global profiles of a loaded ImplementationGuide).
//!
//! What a profile checks here, from its snapshot (or, without one, its differential, which is
//! what most hand-written profiles carry): the cardinality (min/max), fixed and pattern values
//! of each element it constrains, by path; the profile's own FHIRPath invariants; the
//! profiles of its types (a resource in `Bundle.entry.resource` typed with a loaded profile is
//! checked against it); the target profiles of its references; and slicing: the items of a
//! sliced element are sorted into slices by the slicing's discriminators (`value`, `pattern`,
//! `type`, `profile`, `exists`), each slice's cardinality is counted, closed slicing rejects
//! items that match no slice, and the elements under a slice are checked on the items it
//! holds. What cannot be decided (a discriminator path through `resolve()`, a slice inside a
//! slice, a value set not held) is said in an information issue, never silently passed.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::ValidationError;
use super::definitions::{Definitions, Strength};
use super::structure::{Sink, matches_pattern};
use super::terminology::{BindingTarget, check_binding};
use crate::outcome::Severity;

/// The canonical URL prefix of HL7's core StructureDefinitions.
const CORE_SD: &str = "http://hl7.org/fhir/StructureDefinition/";

/// Profiles checking resources inside resources (a profiled Bundle entry) stop at this depth.
const MAX_PROFILE_DEPTH: usize = 6;

/// Finds loaded profiles by canonical URL (for type profiles and `profile` discriminators),
/// and the definitions whose value sets a profile's bindings name.
pub(crate) trait Registry {
    fn profile(&self, url: &str) -> Option<&Profile>;

    /// The core definitions with the value sets loaded so far; without them a profile's
    /// bindings are reported as not checked.
    fn definitions(&self) -> Option<&Definitions> {
        None
    }
}

/// The validator's registry: its loaded profiles and its definitions.
pub(crate) struct Known<'a> {
    pub profiles: &'a HashMap<String, Profile>,
    pub defs: &'a Definitions,
}

impl Registry for Known<'_> {
    fn profile(&self, url: &str) -> Option<&Profile> {
        self.profiles.profile(url)
    }

    fn definitions(&self) -> Option<&Definitions> {
        Some(self.defs)
    }
}

impl Registry for HashMap<String, Profile> {
    fn profile(&self, url: &str) -> Option<&Profile> {
        self.get(url.split('|').next().unwrap_or(url))
    }
}

/// No other profile is known.
#[cfg(test)]
struct NoProfiles;

#[cfg(test)]
impl Registry for NoProfiles {
    fn profile(&self, _url: &str) -> Option<&Profile> {
        None
    }
}

/// One FHIRPath invariant a profile adds (`uab-1`), compiled at load.
#[derive(Debug, Clone)]
struct ProfileInvariant {
    key: String,
    error: bool,
    human: String,
    expression: Result<std::sync::Arc<fhirpath::Expression>, String>,
}

/// One element constraint of a profile (or of a slice, with a path below the sliced item).
#[derive(Debug, Clone, Default)]
struct Constraint {
    /// Path segments below the root (`["name", "given"]`); a segment ending in `[x]` matches
    /// any type of the choice. Empty: the root itself (a slice's item).
    path: Vec<String>,
    min: Option<u32>,
    /// `Some(None)` for `*`.
    max: Option<Option<u32>>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    /// Type codes with the profiles given for them.
    types: Vec<(String, Vec<String>)>,
    /// Target profiles of a Reference.
    target_profiles: Vec<String>,
    /// A binding's value set (for `value` discriminators on a bound element).
    binding: Option<String>,
    /// The binding's strength, when the profile gives one: the binding is then checked.
    strength: Option<Strength>,
    max_length: Option<u64>,
    /// `minValue[x]` / `maxValue[x]`: the member name (`minValueDate`) and the limit.
    min_value: Option<(String, Value)>,
    max_value: Option<(String, Value)>,
    invariants: Vec<ProfileInvariant>,
}

impl Constraint {
    fn is_empty(&self) -> bool {
        self.min.is_none()
            && self.max.is_none()
            && self.fixed.is_none()
            && self.pattern.is_none()
            && self.types.iter().all(|(_, p)| p.is_empty())
            && self.target_profiles.is_empty()
            && self.invariants.is_empty()
            && self.strength.is_none()
            && self.max_length.is_none()
            && self.min_value.is_none()
            && self.max_value.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiscKind {
    Value,
    Pattern,
    Type,
    Profile,
    Exists,
}

#[derive(Debug, Clone)]
struct Discriminator {
    kind: DiscKind,
    /// Below the item; empty for `$this`. `None`: a path this validator cannot follow.
    path: Option<Vec<String>>,
    raw: String,
}

/// A slice: its name, the constraint on its items themselves, and the elements below them.
#[derive(Debug, Clone, Default)]
struct Slice {
    name: String,
    root: Constraint,
    elements: Vec<Constraint>,
}

impl Slice {
    fn element(&self, path: &[String]) -> Option<&Constraint> {
        if path.is_empty() {
            return Some(&self.root);
        }
        self.elements.iter().find(|c| {
            c.path.len() == path.len()
                && c.path.iter().zip(path).all(|(a, b)| {
                    a == b
                        || a.strip_suffix("[x]")
                            .is_some_and(|stem| b.starts_with(stem))
                })
        })
    }
}

/// A sliced element.
#[derive(Debug, Clone, Default)]
struct Slicing {
    path: Vec<String>,
    discriminators: Vec<Discriminator>,
    closed: bool,
    slices: Vec<Slice>,
}

/// A constraint profile of a core resource type.
#[derive(Debug, Clone)]
pub struct Profile {
    pub url: String,
    pub resource_type: String,
    constraints: Vec<Constraint>,
    slicings: Vec<Slicing>,
    /// What the profile holds that is not evaluated (slices in slices…), said once per use.
    unsupported: Vec<String>,
}

/// Where an element of a profile belongs: the base profile or a slice.
enum Place {
    Base(Vec<String>),
    /// Sliced element path, slice name, path below the slice's item.
    Slice(Vec<String>, String, Vec<String>),
    Nested,
}

/// Reads an element id (`Bundle.entry:s1.resource`) into its place.
fn place_of_id(id: &str) -> Place {
    let mut segments = id.split('.');
    segments.next();
    let mut before = Vec::new();
    let mut slice: Option<(String, Vec<String>)> = None;
    for seg in segments {
        match (seg.split_once(':'), &mut slice) {
            (None, None) => before.push(seg.to_owned()),
            (None, Some((_, rel))) => rel.push(seg.to_owned()),
            (Some((name, slice_name)), None) => {
                // A type slice of a choice (`value[x]:valueQuantity`) is the concrete member.
                if let Some(stem) = name.strip_suffix("[x]")
                    && slice_name.starts_with(stem)
                    && slice_name.len() > stem.len()
                {
                    before.push(slice_name.to_owned());
                    continue;
                }
                before.push(name.to_owned());
                slice = Some((slice_name.to_owned(), Vec::new()));
            }
            (Some((name, slice_name)), Some((_, rel))) => {
                if let Some(stem) = name.strip_suffix("[x]")
                    && slice_name.starts_with(stem)
                {
                    rel.push(slice_name.to_owned());
                    continue;
                }
                return Place::Nested;
            }
        }
    }
    match slice {
        Some((name, rel)) => Place::Slice(before, name, rel),
        None => Place::Base(before),
    }
}

fn discriminator_path(raw: &str) -> Option<Vec<String>> {
    if raw == "$this" {
        return Some(Vec::new());
    }
    let segs: Vec<String> = raw
        .trim_start_matches("$this.")
        .split('.')
        .map(str::to_owned)
        .collect();
    segs.iter()
        .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(segs)
}

fn constraint_of(e: &Value, path: Vec<String>) -> Constraint {
    let min = e
        .get("min")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok());
    let max = e
        .get("max")
        .and_then(Value::as_str)
        .map(|m| m.parse::<u32>().ok());
    let mut c = Constraint {
        path,
        min,
        max,
        ..Constraint::default()
    };
    if let Some(obj) = e.as_object() {
        for (k, v) in obj {
            if k.starts_with("fixed") {
                c.fixed = Some(v.clone());
            } else if k.starts_with("pattern") {
                c.pattern = Some(v.clone());
            } else if k.starts_with("minValue") {
                c.min_value = Some((k.clone(), v.clone()));
            } else if k.starts_with("maxValue") {
                c.max_value = Some((k.clone(), v.clone()));
            }
        }
        c.max_length = obj.get("maxLength").and_then(Value::as_u64);
    }
    for t in e
        .get("type")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let Some(code) = t.get("code").and_then(Value::as_str) else {
            continue;
        };
        let strings = |k: &str| -> Vec<String> {
            t.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        c.types.push((code.to_owned(), strings("profile")));
        c.target_profiles.extend(strings("targetProfile"));
    }
    c.binding = e
        .pointer("/binding/valueSet")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if c.binding.is_some() {
        c.strength = match e.pointer("/binding/strength").and_then(Value::as_str) {
            Some("required") => Some(Strength::Required),
            Some("extensible") => Some(Strength::Extensible),
            Some("preferred") => Some(Strength::Preferred),
            // An example binding constrains nothing; one without a strength is not valid.
            _ => None,
        };
    }
    for inv in e
        .get("constraint")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        // The core's own invariants repeat in every snapshot: the walker checks those.
        let source = inv.get("source").and_then(Value::as_str).unwrap_or("");
        if source.starts_with(CORE_SD) {
            continue;
        }
        let (Some(key), Some(expression)) = (
            inv.get("key").and_then(Value::as_str),
            inv.get("expression").and_then(Value::as_str),
        ) else {
            continue;
        };
        if is_core_key(key) {
            continue;
        }
        c.invariants.push(ProfileInvariant {
            key: key.to_owned(),
            error: inv.get("severity").and_then(Value::as_str) != Some("warning"),
            human: inv
                .get("human")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            expression: fhirpath::Expression::compile(expression)
                .map(std::sync::Arc::new)
                .map_err(|e| e.to_string()),
        });
    }
    c
}

/// Keys of the core's invariants that every snapshot repeats (old snapshots lack `source`).
fn is_core_key(key: &str) -> bool {
    let Some((prefix, n)) = key.split_once('-') else {
        return false;
    };
    n.chars().all(|c| c.is_ascii_digit()) && matches!(prefix, "ele" | "ext" | "dom" | "txt" | "ref")
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
        let mut profile = Profile {
            url: url.to_owned(),
            resource_type: resource_type.to_owned(),
            constraints: Vec::new(),
            slicings: Vec::new(),
            unsupported: Vec::new(),
        };
        // Elements without an id belong to the slice last opened at a path above them.
        let mut open_slice: Option<(Vec<String>, String)> = None;
        for e in elements {
            let Some(path) = e.get("path").and_then(Value::as_str) else {
                continue;
            };
            if path.split('.').next() != Some(resource_type) {
                continue;
            }
            let place = match e.get("id").and_then(Value::as_str) {
                Some(id) if id.contains(':') => place_of_id(id),
                _ => {
                    let segs: Vec<String> = path.split('.').skip(1).map(str::to_owned).collect();
                    if let Some(name) = e.get("sliceName").and_then(Value::as_str) {
                        open_slice = Some((segs.clone(), name.to_owned()));
                        Place::Slice(segs, name.to_owned(), Vec::new())
                    } else {
                        match &open_slice {
                            Some((sp, name)) if segs.len() > sp.len() && segs.starts_with(sp) => {
                                Place::Slice(sp.clone(), name.clone(), segs[sp.len()..].to_vec())
                            }
                            _ => {
                                open_slice = None;
                                Place::Base(segs)
                            }
                        }
                    }
                }
            };
            match place {
                Place::Nested => {
                    let msg = format!("the slices inside slices ({path})");
                    if !profile.unsupported.contains(&msg) {
                        profile.unsupported.push(msg);
                    }
                }
                Place::Base(segs) => {
                    if let Some(slicing) = e.get("slicing") {
                        let s = profile.slicing_mut(&segs);
                        s.closed = slicing.get("rules").and_then(Value::as_str) == Some("closed");
                        s.discriminators = slicing
                            .get("discriminator")
                            .and_then(Value::as_array)
                            .map(Vec::as_slice)
                            .unwrap_or(&[])
                            .iter()
                            .filter_map(|d| {
                                let kind = match d.get("type").and_then(Value::as_str)? {
                                    "value" => DiscKind::Value,
                                    "pattern" => DiscKind::Pattern,
                                    "type" => DiscKind::Type,
                                    "profile" => DiscKind::Profile,
                                    "exists" => DiscKind::Exists,
                                    _ => return None,
                                };
                                let raw = d.get("path").and_then(Value::as_str)?;
                                Some(Discriminator {
                                    kind,
                                    path: discriminator_path(raw),
                                    raw: raw.to_owned(),
                                })
                            })
                            .collect();
                    }
                    if segs.is_empty() {
                        // The root element: its invariants apply to the whole resource.
                        let c = constraint_of(e, segs);
                        if !c.invariants.is_empty() {
                            profile.constraints.push(c);
                        }
                        continue;
                    }
                    let c = constraint_of(e, segs);
                    if !c.is_empty() {
                        profile.constraints.push(c);
                    }
                }
                Place::Slice(segs, name, rel) => {
                    let c = constraint_of(e, rel.clone());
                    let slicing = profile.slicing_mut(&segs);
                    let idx = match slicing.slices.iter().position(|s| s.name == name) {
                        Some(i) => i,
                        None => {
                            slicing.slices.push(Slice {
                                name: name.clone(),
                                ..Slice::default()
                            });
                            slicing.slices.len() - 1
                        }
                    };
                    let slice = &mut slicing.slices[idx];
                    if rel.is_empty() {
                        slice.root = c;
                    } else {
                        slice.elements.push(c);
                    }
                }
            }
        }
        for s in &mut profile.slicings {
            // Extensions are sliced by url unless a profile says otherwise.
            if s.discriminators.is_empty()
                && matches!(
                    s.path.last().map(String::as_str),
                    Some("extension" | "modifierExtension")
                )
            {
                s.discriminators.push(Discriminator {
                    kind: DiscKind::Value,
                    path: Some(vec!["url".to_owned()]),
                    raw: "url".to_owned(),
                });
            }
        }
        Ok(profile)
    }

    fn slicing_mut(&mut self, path: &[String]) -> &mut Slicing {
        let idx = match self.slicings.iter().position(|s| s.path == path) {
            Some(i) => i,
            None => {
                self.slicings.push(Slicing {
                    path: path.to_vec(),
                    ..Slicing::default()
                });
                self.slicings.len() - 1
            }
        };
        &mut self.slicings[idx]
    }

    /// Checks `resource` (located at `loc`) against the profile alone.
    #[cfg(test)]
    pub(crate) fn check(&self, resource: &Value, loc: &str, sink: &mut Sink) {
        self.check_in(resource, loc, sink, &NoProfiles, 0);
    }

    /// Checks `resource` against the profile, with `registry` for the other profiles it
    /// names (type profiles, `profile` discriminators, target profiles).
    pub(crate) fn check_in(
        &self,
        resource: &Value,
        loc: &str,
        sink: &mut Sink,
        registry: &dyn Registry,
        depth: usize,
    ) {
        self.check_within(resource, resource, loc, sink, registry, depth);
    }

    /// As [`Profile::check_in`], for a resource inside `outer` (a Bundle entry), where
    /// references resolve.
    fn check_within(
        &self,
        resource: &Value,
        outer: &Value,
        loc: &str,
        sink: &mut Sink,
        registry: &dyn Registry,
        depth: usize,
    ) {
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
        if depth > MAX_PROFILE_DEPTH {
            sink.push(
                Severity::Information,
                "informational",
                loc,
                format!(
                    "the profile {} was not checked: profiles nested too deep",
                    self.url
                ),
            );
            return;
        }
        let cx = Cx {
            profile: self,
            registry,
            resource,
            outer,
            depth,
        };
        for c in &self.constraints {
            let name = dotted(&self.resource_type, &c.path);
            cx.constraint(c, resource, loc, &name, sink);
        }
        for s in &self.slicings {
            cx.slicing(s, loc, sink);
        }
        for what in &self.unsupported {
            sink.push(
                Severity::Information,
                "informational",
                loc,
                format!("{what} of the profile {} were not evaluated", self.url),
            );
        }
    }

    /// True if `resource` has no error against this profile.
    fn conforms(
        &self,
        resource: &Value,
        outer: &Value,
        registry: &dyn Registry,
        depth: usize,
    ) -> bool {
        let mut sink = Sink::default();
        self.check_within(resource, outer, "", &mut sink, registry, depth + 1);
        !sink.outcome.has_errors()
    }
}

fn dotted(root: &str, path: &[String]) -> String {
    let mut s = root.to_owned();
    for p in path {
        s.push('.');
        s.push_str(p);
    }
    s
}

/// One profile check under way.
struct Cx<'a> {
    profile: &'a Profile,
    registry: &'a dyn Registry,
    resource: &'a Value,
    /// The outermost resource (a Bundle), where references are resolved.
    outer: &'a Value,
    depth: usize,
}

impl Cx<'_> {
    /// Checks one constraint whose path starts at `root` (located at `loc`).
    fn constraint(&self, c: &Constraint, root: &Value, loc: &str, name: &str, sink: &mut Sink) {
        let url = &self.profile.url;
        let located: Vec<(String, &Value)> = match c.path.split_last() {
            None => vec![(loc.to_owned(), root)],
            Some((leaf, parent_path)) => {
                let mut parents = vec![(loc.to_owned(), root)];
                for seg in parent_path {
                    parents = step(&parents, seg);
                }
                let mut out = Vec::new();
                for (ploc, parent) in &parents {
                    let Some(obj) = parent.as_object() else {
                        continue;
                    };
                    let count = member(obj, leaf).len();
                    if let Some(min) = c.min
                        && (count as u64) < u64::from(min)
                    {
                        sink.error(
                            "required",
                            ploc,
                            format!(
                                "{name}: minimum required = {min}, but only found {count} (from {url})"
                            ),
                        );
                    }
                    if let Some(Some(max)) = c.max
                        && count as u64 > u64::from(max)
                    {
                        sink.error(
                            "structure",
                            ploc,
                            format!("{name}: max allowed = {max}, but found {count} (from {url})"),
                        );
                    }
                    out.extend(step(&[(ploc.clone(), *parent)], leaf));
                }
                out
            }
        };
        for (vloc, v) in located {
            if c.fixed.as_ref().is_some_and(|f| f != v) {
                sink.error(
                    "value",
                    &vloc,
                    format!("{name}: the value differs from the fixed value of {url}"),
                );
            }
            if c.pattern.as_ref().is_some_and(|p| !matches_pattern(v, p)) {
                sink.error(
                    "value",
                    &vloc,
                    format!("{name}: the value does not match the pattern of {url}"),
                );
            }
            self.type_profiles(c, v, &vloc, sink);
            self.target_profiles(c, v, &vloc, name, sink);
            self.binding(c, v, &vloc, name, sink);
            self.limits(c, v, &vloc, name, sink);
            self.invariants(c, v, &vloc, sink);
        }
    }

    /// A resource typed with a loaded profile is checked against it.
    fn type_profiles(&self, c: &Constraint, v: &Value, loc: &str, sink: &mut Sink) {
        let Some(rt) = v.get("resourceType").and_then(Value::as_str) else {
            return;
        };
        for (code, profiles) in &c.types {
            if code != rt {
                continue;
            }
            for p in profiles {
                if p.strip_prefix(CORE_SD) == Some(rt) {
                    continue;
                }
                match self.registry.profile(p) {
                    Some(profile) => profile.check_within(
                        v,
                        self.outer,
                        loc,
                        sink,
                        self.registry,
                        self.depth + 1,
                    ),
                    None => sink.push(
                        Severity::Information,
                        "informational",
                        loc,
                        format!(
                            "the profile {p} is not loaded: the resource was not checked against it"
                        ),
                    ),
                }
            }
        }
    }

    /// A Reference whose target is at hand (contained, or an entry of the Bundle) must point
    /// at a resource its target profiles accept; a target profile that cannot be resolved
    /// makes that uncheckable: an error, as the reference validator reports it.
    fn target_profiles(&self, c: &Constraint, v: &Value, loc: &str, name: &str, sink: &mut Sink) {
        if c.target_profiles.is_empty() {
            return;
        }
        let Some(reference) = v.get("reference").and_then(Value::as_str) else {
            return;
        };
        let Some(target) = self.resolve(reference) else {
            return;
        };
        let target_type = target
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut accepted = false;
        let mut unknown = Vec::new();
        for p in &c.target_profiles {
            let key = p.split('|').next().unwrap_or(p);
            if let Some(t) = key.strip_prefix(CORE_SD) {
                accepted |= t == target_type || t == "Resource";
            } else if let Some(profile) = self.registry.profile(key) {
                accepted |= profile.resource_type == target_type
                    && profile.conforms(target, self.outer, self.registry, self.depth);
            } else {
                unknown.push(key);
            }
        }
        if accepted {
            return;
        }
        let why = if unknown.is_empty() {
            "it conforms to none of them".to_owned()
        } else {
            format!("{} cannot be resolved", unknown.join(", "))
        };
        sink.error(
            "structure",
            loc,
            format!(
                "{name}: the reference's target ({target_type}) was checked against the target profiles of {}: {why}",
                self.profile.url
            ),
        );
    }

    /// The resource a reference points at, if it is in the resource (`#id`) or in the
    /// outer Bundle (by `fullUrl`, or `Type/id`).
    fn resolve(&self, reference: &str) -> Option<&Value> {
        if let Some(id) = reference.strip_prefix('#') {
            return self
                .resource
                .get("contained")?
                .as_array()?
                .iter()
                .find(|r| r.get("id").and_then(Value::as_str) == Some(id));
        }
        let entries = self.outer.get("entry")?.as_array()?;
        entries.iter().find_map(|e| {
            let r = e.get("resource")?;
            let full = e.get("fullUrl").and_then(Value::as_str).unwrap_or("");
            let typed = match (
                r.get("resourceType").and_then(Value::as_str),
                r.get("id").and_then(Value::as_str),
            ) {
                (Some(t), Some(id)) => {
                    let tail = format!("{t}/{id}");
                    reference == tail || reference.ends_with(&format!("/{tail}"))
                }
                _ => false,
            };
            (full == reference || typed).then_some(r)
        })
    }

    /// A binding the profile adds or tightens, checked by strength as the core's are; one the
    /// core already has on that element (a snapshot repeats them all) is left to the walker.
    fn binding(&self, c: &Constraint, v: &Value, loc: &str, name: &str, sink: &mut Sink) {
        let (Some(strength), Some(vs)) = (c.strength, &c.binding) else {
            return;
        };
        let target = match v {
            Value::String(code) => BindingTarget::Code(code),
            Value::Object(o) if o.contains_key("coding") || o.contains_key("text") => {
                BindingTarget::Concept(o)
            }
            Value::Object(o) if o.contains_key("code") => BindingTarget::Coding(o),
            _ => return,
        };
        let Some(defs) = self.registry.definitions() else {
            return self.binding_not_checked(strength, vs, "no definitions", loc, name, sink);
        };
        if core_binding(defs, name).is_some_and(|(s, u)| *s == strength && u == vs) {
            return;
        }
        if defs.value_set(vs).is_none() {
            return self.binding_not_checked(strength, vs, "it is not loaded", loc, name, sink);
        }
        check_binding(defs, strength, vs, target, loc, sink);
    }

    fn binding_not_checked(
        &self,
        strength: Strength,
        vs: &str,
        why: &str,
        loc: &str,
        name: &str,
        sink: &mut Sink,
    ) {
        if matches!(strength, Strength::Required | Strength::Extensible) {
            sink.push(
                Severity::Information,
                "informational",
                loc,
                format!(
                    "{name}: membership in the value set {vs} (bound by {}) was not checked: {why}",
                    self.profile.url
                ),
            );
        }
    }

    /// `maxLength`, `minValue[x]` and `maxValue[x]`.
    fn limits(&self, c: &Constraint, v: &Value, loc: &str, name: &str, sink: &mut Sink) {
        let url = &self.profile.url;
        if let (Some(max), Value::String(s)) = (c.max_length, v)
            && s.chars().count() as u64 > max
        {
            sink.error(
                "too-long",
                loc,
                format!("{name}: the value is longer than the maxLength {max} of {url}"),
            );
        }
        for (limit, below) in [(&c.min_value, true), (&c.max_value, false)] {
            let Some((key, bound)) = limit else {
                continue;
            };
            let kind = if below { "minValue" } else { "maxValue" };
            match compare_limit(v, bound) {
                Some(std::cmp::Ordering::Less) if below => sink.error(
                    "value",
                    loc,
                    format!("{name}: the value is below the {kind} of {url}"),
                ),
                Some(std::cmp::Ordering::Greater) if !below => sink.error(
                    "value",
                    loc,
                    format!("{name}: the value is above the {kind} of {url}"),
                ),
                Some(_) => {}
                None => sink.push(
                    Severity::Information,
                    "informational",
                    loc,
                    format!(
                        "{name}: the value was not checked against the {key} of {url} (different precision, time zone or unit)"
                    ),
                ),
            }
        }
    }

    fn invariants(&self, c: &Constraint, v: &Value, loc: &str, sink: &mut Sink) {
        for inv in &c.invariants {
            let env = fhirpath::Env {
                resource: Some(self.resource),
                root_resource: Some(self.resource),
                context: Some(v),
                host: None,
            };
            let result = match &inv.expression {
                Ok(expr) => expr.check(v, &env).map_err(|e| e.to_string()),
                Err(reason) => Err(format!("does not compile: {reason}")),
            };
            match result {
                Ok(Some(false)) => sink.push(
                    if inv.error {
                        Severity::Error
                    } else {
                        Severity::Warning
                    },
                    "invariant",
                    loc,
                    format!("{}: {} (from {})", inv.key, inv.human, self.profile.url),
                ),
                Ok(_) => {}
                Err(why) => sink.push(
                    Severity::Information,
                    "informational",
                    loc,
                    format!("{}: invariant not checked ({why})", inv.key),
                ),
            }
        }
    }

    /// Sorts the items of a sliced element into its slices and checks each slice.
    fn slicing(&self, s: &Slicing, loc: &str, sink: &mut Sink) {
        let url = &self.profile.url;
        let name = dotted(&self.profile.resource_type, &s.path);
        if s.slices.is_empty() {
            return;
        }
        if let Some(d) = s.discriminators.iter().find(|d| d.path.is_none()) {
            sink.push(
                Severity::Information,
                "informational",
                loc,
                format!(
                    "{name}: the slices of {url} were not evaluated (discriminator path {} is not supported)",
                    d.raw
                ),
            );
            return;
        }
        if s.discriminators.is_empty() {
            sink.push(
                Severity::Information,
                "informational",
                loc,
                format!("{name}: the slices of {url} were not evaluated (no discriminator)"),
            );
            return;
        }
        let Some((leaf, parent_path)) = s.path.split_last() else {
            return;
        };
        let mut parents = vec![(loc.to_owned(), self.resource)];
        for seg in parent_path {
            parents = step(&parents, seg);
        }
        for parent in &parents {
            let items = step(std::slice::from_ref(parent), leaf);
            let mut counts = vec![0usize; s.slices.len()];
            let mut undecided = vec![false; s.slices.len()];
            let mut members: Vec<Option<usize>> = Vec::with_capacity(items.len());
            for (_, item) in &items {
                let mut found = None;
                for (i, slice) in s.slices.iter().enumerate() {
                    match self.matches(s, slice, item) {
                        Some(true) => {
                            found = Some(i);
                            break;
                        }
                        Some(false) => {}
                        None => undecided[i] = true,
                    }
                }
                if let Some(i) = found {
                    counts[i] += 1;
                }
                members.push(found);
            }
            for (i, slice) in s.slices.iter().enumerate() {
                let n = counts[i];
                let sname = format!("{name}:{}", slice.name);
                if let Some(min) = slice.root.min
                    && (n as u64) < u64::from(min)
                {
                    if undecided[i] {
                        sink.push(
                            Severity::Information,
                            "informational",
                            &parent.0,
                            format!(
                                "{sname}: the slice's minimum of {min} was not checked: some items could not be sorted into slices (from {url})"
                            ),
                        );
                    } else {
                        sink.error(
                            "structure",
                            &parent.0,
                            format!(
                                "{sname}: minimum required = {min}, but only found {n} (from {url})"
                            ),
                        );
                    }
                }
                if let Some(Some(max)) = slice.root.max
                    && n as u64 > u64::from(max)
                {
                    sink.error(
                        "structure",
                        &parent.0,
                        format!("{sname}: max allowed = {max}, but found {n} (from {url})"),
                    );
                }
            }
            for ((iloc, item), slot) in items.iter().zip(&members) {
                match slot {
                    Some(i) => {
                        let slice = &s.slices[*i];
                        let sname = format!("{name}:{}", slice.name);
                        let mut root = slice.root.clone();
                        // The slice's own cardinality was counted above.
                        root.min = None;
                        root.max = None;
                        self.constraint(&root, item, iloc, &sname, sink);
                        for c in &slice.elements {
                            let cname = dotted(&sname, &c.path);
                            self.constraint(c, item, iloc, &cname, sink);
                        }
                    }
                    None if s.closed => sink.error(
                        "structure",
                        iloc,
                        format!(
                            "{name}: this item matches none of the slices of {url}, and the slicing is closed"
                        ),
                    ),
                    None => {}
                }
            }
        }
    }

    /// Does `item` belong to `slice`? `None`: cannot be decided here.
    fn matches(&self, s: &Slicing, slice: &Slice, item: &Value) -> Option<bool> {
        let mut all = Some(true);
        for d in &s.discriminators {
            let path = d.path.as_deref()?;
            let values = walk(item, path);
            let el = slice.element(path);
            let this = match d.kind {
                DiscKind::Value | DiscKind::Pattern => {
                    let expected = el.and_then(|c| c.fixed.as_ref().or(c.pattern.as_ref()));
                    match expected {
                        Some(exp) => Some(values.iter().any(|v| matches_pattern(v, exp))),
                        None => {
                            // An extension slice names its extension by its type profile.
                            let ext_url = (path == ["url"])
                                .then(|| {
                                    slice
                                        .root
                                        .types
                                        .iter()
                                        .find(|(code, p)| code == "Extension" && !p.is_empty())
                                        .and_then(|(_, p)| p.first())
                                })
                                .flatten();
                            ext_url.map(|u| {
                                let u = u.split('|').next().unwrap_or(u);
                                values.iter().any(|v| v.as_str() == Some(u))
                            })
                        }
                    }
                }
                DiscKind::Type => {
                    let codes: Vec<&str> = el
                        .map(|c| c.types.iter().map(|(code, _)| code.as_str()).collect())
                        .unwrap_or_default();
                    if codes.is_empty() {
                        None
                    } else {
                        let types: Option<Vec<&str>> = values
                            .iter()
                            .map(|v| v.get("resourceType").and_then(Value::as_str))
                            .collect();
                        types.map(|ts| ts.iter().any(|t| codes.contains(t)))
                    }
                }
                DiscKind::Profile => {
                    let wanted: Vec<(&str, &str)> = el
                        .map(|c| {
                            c.types
                                .iter()
                                .flat_map(|(code, ps)| {
                                    ps.iter().map(move |p| (code.as_str(), p.as_str()))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    if wanted.is_empty() {
                        None
                    } else {
                        let mut decided = Some(false);
                        for v in &values {
                            for (code, p) in &wanted {
                                let ok = if let Some(t) = p.strip_prefix(CORE_SD) {
                                    Some(v.get("resourceType").and_then(Value::as_str) == Some(t))
                                } else if let Some(profile) = self.registry.profile(p) {
                                    Some(
                                        v.get("resourceType").and_then(Value::as_str)
                                            == Some(profile.resource_type.as_str())
                                            && profile.conforms(
                                                v,
                                                self.outer,
                                                self.registry,
                                                self.depth,
                                            ),
                                    )
                                } else if v.get("resourceType").and_then(Value::as_str)
                                    != Some(*code)
                                {
                                    Some(false)
                                } else {
                                    None
                                };
                                match ok {
                                    Some(true) => decided = Some(true),
                                    None if decided == Some(false) => decided = None,
                                    _ => {}
                                }
                            }
                        }
                        decided
                    }
                }
                DiscKind::Exists => match el {
                    Some(c) if c.min.is_some_and(|m| m >= 1) => Some(!values.is_empty()),
                    Some(c) if c.max == Some(Some(0)) => Some(values.is_empty()),
                    _ => None,
                },
            };
            match this {
                Some(false) => return Some(false),
                None => all = None,
                Some(true) => {}
            }
        }
        all
    }
}

/// The values at `path` below `root` (arrays flattened).
fn walk<'v>(root: &'v Value, path: &[String]) -> Vec<&'v Value> {
    let mut nodes = vec![root];
    for seg in path {
        let mut next = Vec::new();
        for n in nodes {
            if let Some(obj) = n.as_object() {
                next.extend(member(obj, seg));
            }
        }
        nodes = next;
    }
    nodes
}

/// The core's binding of the element a profile names by its dotted path
/// (`Observation.valueQuantity.code`, slice names after `:` ignored), following data types.
fn core_binding<'d>(defs: &'d Definitions, name: &str) -> Option<&'d (Strength, String)> {
    let mut segs = name.split('.').map(|s| s.split(':').next().unwrap_or(s));
    let mut ty = segs.next()?.to_owned();
    let mut rel = String::new();
    let mut segs = segs.peekable();
    while let Some(seg) = segs.next() {
        let td = defs.type_def(&ty)?;
        let want = if rel.is_empty() {
            seg.to_owned()
        } else {
            format!("{rel}.{seg}")
        };
        let mut next_type = None;
        let e = td.elements.iter().find(|e| {
            if e.path == want {
                return true;
            }
            let Some(stem) = e.path.strip_suffix("[x]") else {
                return false;
            };
            let Some(code) = want.strip_prefix(stem) else {
                return false;
            };
            match e.types.iter().find(|t| t.code.eq_ignore_ascii_case(code)) {
                Some(t) => {
                    next_type = Some(t.code.clone());
                    true
                }
                None => false,
            }
        })?;
        if segs.peek().is_none() {
            return e.binding.as_ref();
        }
        if e.has_children {
            rel = e.path.clone();
        } else {
            ty = match (next_type, e.types.as_slice()) {
                (Some(t), _) => t,
                (None, [only]) => only.code.clone(),
                _ => return None,
            };
            rel.clear();
        }
    }
    None
}

/// Orders a value against a `minValue[x]`/`maxValue[x]` limit: numbers by value, Quantities
/// by value when their units are the same, dates and times as text when both have the same
/// precision and time zone. `None` when they cannot be compared.
fn compare_limit(v: &Value, bound: &Value) -> Option<std::cmp::Ordering> {
    match (v, bound) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => {
            let zone = |s: &str| -> String {
                match s.find('T') {
                    Some(t) => s[t..]
                        .trim_start_matches(|c: char| c != 'Z' && c != '+' && c != '-')
                        .to_owned(),
                    None => String::new(),
                }
            };
            (a.len() == b.len() && zone(a) == zone(b)).then(|| a.cmp(b))
        }
        (Value::Object(a), Value::Object(b)) => {
            let unit = |o: &Map<String, Value>| (o.get("system").cloned(), o.get("code").cloned());
            if unit(a) == unit(b) {
                return compare_limit(a.get("value")?, b.get("value")?);
            }
            // UCUM units that differ by a metric prefix only (g and kg) compare after scaling.
            let ucum = |o: &Map<String, Value>| -> Option<(f64, &'static str)> {
                if o.get("system").and_then(Value::as_str) != Some("http://unitsofmeasure.org") {
                    return None;
                }
                let (factor, atom) = prefixed_unit(o.get("code")?.as_str()?)?;
                Some((o.get("value")?.as_f64()? * factor, atom))
            };
            let ((x, ux), (y, uy)) = (ucum(a)?, ucum(b)?);
            if ux != uy {
                return None;
            }
            x.partial_cmp(&y)
        }
        _ => None,
    }
}

/// A UCUM unit made of one metric prefix (or none) and one base atom: its factor and atom.
fn prefixed_unit(code: &str) -> Option<(f64, &'static str)> {
    const ATOMS: [&str; 8] = ["g", "m", "L", "l", "s", "mol", "eq", "[IU]"];
    const PREFIXES: [(&str, f64); 10] = [
        ("", 1.0),
        ("k", 1e3),
        ("h", 1e2),
        ("da", 1e1),
        ("d", 1e-1),
        ("c", 1e-2),
        ("m", 1e-3),
        ("u", 1e-6),
        ("n", 1e-9),
        ("p", 1e-12),
    ];
    PREFIXES.iter().find_map(|(prefix, factor)| {
        let atom = code.strip_prefix(prefix)?;
        let atom = ATOMS.iter().find(|a| **a == atom)?;
        // "l" and "L" are both the litre.
        Some((*factor, if *atom == "l" { "L" } else { *atom }))
    })
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
    fn sliced(discriminator: &str, rules: &str) -> Profile {
        Profile::from_structure_definition(&json!({
            "url": "http://example.org/b", "type": "Bundle", "derivation": "constraint",
            "differential": {"element": [
                {"id": "Bundle.entry", "path": "Bundle.entry",
                 "slicing": {"discriminator": [{"type": discriminator, "path": "resource"}], "rules": rules}},
                {"id": "Bundle.entry:pat", "path": "Bundle.entry", "sliceName": "pat", "min": 1, "max": "1"},
                {"id": "Bundle.entry:pat.resource", "path": "Bundle.entry.resource",
                 "type": [{"code": "Patient", "profile": ["http://example.org/active-patient"]}]},
                {"id": "Bundle.entry:prac", "path": "Bundle.entry", "sliceName": "prac", "min": 0, "max": "1"},
                {"id": "Bundle.entry:prac.resource", "path": "Bundle.entry.resource",
                 "type": [{"code": "Practitioner"}, {"code": "PractitionerRole"}]}
            ]}
        }))
        .unwrap()
    }

    fn registry() -> HashMap<String, Profile> {
        let active = Profile::from_structure_definition(&json!({
            "url": "http://example.org/active-patient", "type": "Patient", "derivation": "constraint",
            "differential": {"element": [{"path": "Patient.active", "min": 1}]}
        }))
        .unwrap();
        HashMap::from([(active.url.clone(), active)])
    }

    fn bundle(types: &[(&str, bool)]) -> Value {
        json!({"resourceType": "Bundle", "type": "collection", "entry": types.iter().map(|(t, active)| {
            let mut r = json!({"resourceType": t});
            if *active { r["active"] = json!(true); }
            json!({"resource": r})
        }).collect::<Vec<_>>()})
    }

    fn slice_issues(p: &Profile, b: &Value) -> Vec<(Severity, String, String)> {
        let mut sink = Sink::default();
        p.check_in(b, "Bundle", &mut sink, &registry(), 0);
        sink.outcome
            .issues
            .iter()
            .map(|i| (i.severity, i.diagnostics.clone(), i.expression.join(",")))
            .collect()
    }

    fn errors(p: &Profile, b: &Value) -> Vec<String> {
        slice_issues(p, b)
            .into_iter()
            .filter(|(s, _, _)| *s == Severity::Error)
            .map(|(_, d, e)| format!("{d} @ {e}"))
            .collect()
    }

    #[test]
    fn type_slicing_counts_each_slice() {
        let p = sliced("type", "open");
        let good = bundle(&[
            ("Patient", true),
            ("Practitioner", true),
            ("Organization", true),
        ]);
        assert!(errors(&p, &good).is_empty(), "{:?}", errors(&p, &good));
        let two = bundle(&[
            ("Patient", true),
            ("Practitioner", true),
            ("PractitionerRole", true),
        ]);
        let e = errors(&p, &two);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("Bundle.entry:prac: max allowed = 1, but found 2"));
        let none = bundle(&[("Practitioner", true)]);
        let e = errors(&p, &none);
        assert!(
            e.len() == 1 && e[0].starts_with("Bundle.entry:pat: minimum required = 1"),
            "{e:?}"
        );
        // The slice's type profile applies to the resources it holds.
        let inactive = bundle(&[("Patient", false)]);
        let e = errors(&p, &inactive);
        assert!(
            e.iter()
                .any(|x| x.contains("Patient.active: minimum required = 1")
                    && x.ends_with("@ Bundle.entry[0].resource")),
            "{e:?}"
        );
    }

    #[test]
    fn profile_slicing_uses_conformance_and_closed_rules() {
        let p = sliced("profile", "closed");
        // An inactive Patient does not conform to the slice's profile: it matches no slice.
        let e = errors(&p, &bundle(&[("Patient", false), ("Practitioner", true)]));
        assert!(
            e.iter()
                .any(|x| x.starts_with("Bundle.entry:pat: minimum required = 1")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|x| x.contains("matches none of the slices")
                    && x.ends_with("@ Bundle.entry[0]")),
            "{e:?}"
        );
        assert!(errors(&p, &bundle(&[("Patient", true)])).is_empty());
        // Without the registry the profile cannot be resolved: said, not guessed.
        let mut sink = Sink::default();
        p.check(&bundle(&[("Patient", true)]), "Bundle", &mut sink);
        assert!(
            sink.outcome
                .issues
                .iter()
                .any(|i| i.severity == Severity::Information)
        );
    }

    #[test]
    fn value_and_pattern_slices_and_extension_urls() {
        let p = Profile::from_structure_definition(&json!({
            "url": "http://example.org/o", "type": "Observation", "derivation": "constraint",
            "differential": {"element": [
                {"id": "Observation.category", "path": "Observation.category",
                 "slicing": {"discriminator": [{"type": "pattern", "path": "$this"}], "rules": "open"}},
                {"id": "Observation.category:vs", "path": "Observation.category", "sliceName": "vs", "min": 1, "max": "1",
                 "patternCodeableConcept": {"coding": [{"system": "http://s", "code": "vital-signs"}]}},
                {"id": "Observation.component", "path": "Observation.component",
                 "slicing": {"discriminator": [{"type": "value", "path": "code.coding.code"}], "rules": "closed"}},
                {"id": "Observation.component:sys", "path": "Observation.component", "sliceName": "sys", "min": 1, "max": "1"},
                {"id": "Observation.component:sys.code.coding.code", "path": "Observation.component.code.coding.code", "fixedCode": "8480-6"},
                {"id": "Observation.component:sys.value[x]", "path": "Observation.component.value[x]", "min": 1},
                {"id": "Observation.extension:e", "path": "Observation.extension", "sliceName": "e", "min": 1,
                 "type": [{"code": "Extension", "profile": ["http://example.org/ext"]}]}
            ]}
        }))
        .unwrap();
        let obs = json!({"resourceType": "Observation",
            "extension": [{"url": "http://example.org/ext", "valueString": "x"}],
            "category": [{"coding": [{"system": "http://s", "code": "vital-signs", "display": "V"}]}, {"text": "other"}],
            "component": [{"code": {"coding": [{"code": "8480-6"}]}, "valueQuantity": {"value": 1}}]});
        let e = errors(&p, &obs);
        assert!(e.is_empty(), "{e:?}");
        let mut bad = obs.clone();
        bad["extension"] = json!([{"url": "http://example.org/other", "valueString": "x"}]);
        bad["category"] = json!([{"text": "other"}]);
        bad["component"] = json!([{"code": {"coding": [{"code": "8480-6"}]}}, {"code": {"coding": [{"code": "1-1"}]}}]);
        let e = errors(&p, &bad);
        assert!(
            e.iter()
                .any(|x| x.starts_with("Observation.extension:e: minimum required = 1")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|x| x.starts_with("Observation.category:vs: minimum required = 1")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|x| x
                .starts_with("Observation.component:sys.value[x]: minimum required = 1")
                && x.ends_with(".component[0]")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|x| x.contains("matches none") && x.ends_with(".component[1]")),
            "{e:?}"
        );
    }

    #[test]
    fn profile_invariants_and_unsupported_discriminators_are_reported() {
        let p = Profile::from_structure_definition(&json!({
            "url": "http://example.org/p", "type": "Patient", "derivation": "constraint",
            "differential": {"element": [
                {"id": "Patient", "path": "Patient", "constraint": [
                    {"key": "p-1", "severity": "error", "human": "a name or an identifier", "expression": "name.exists() or identifier.exists()"},
                    {"key": "p-2", "severity": "error", "human": "broken", "expression": "name.("},
                    {"key": "ele-1", "severity": "error", "human": "core", "expression": "false"}]},
                {"id": "Patient.link", "path": "Patient.link",
                 "slicing": {"discriminator": [{"type": "value", "path": "other.resolve().id"}], "rules": "open"}},
                {"id": "Patient.link:a", "path": "Patient.link", "sliceName": "a", "min": 1}
            ]}
        }))
        .unwrap();
        let issues = slice_issues(&p, &json!({"resourceType": "Patient", "active": true}));
        assert!(issues.iter().any(|(s, d, e)| *s == Severity::Error
            && d.starts_with("p-1: a name")
            && e == "Bundle"));
        assert!(
            issues.iter().any(|(s, d, _)| *s == Severity::Information
                && d.starts_with("p-2: invariant not checked"))
        );
        assert!(
            issues
                .iter()
                .any(|(s, d, _)| *s == Severity::Information && d.contains("not supported"))
        );
        assert!(!issues.iter().any(|(_, d, _)| d.starts_with("ele-1")));
        assert_eq!(
            issues
                .iter()
                .filter(|(s, _, _)| *s == Severity::Error)
                .count(),
            1
        );
        assert!(
            slice_issues(
                &p,
                &json!({"resourceType": "Patient", "name": [{"family": "x"}]})
            )
            .iter()
            .all(|(s, _, _)| *s != Severity::Error)
        );
    }

    fn limited() -> Profile {
        Profile::from_structure_definition(&json!({
            "url": "http://example.org/limits", "type": "Observation", "derivation": "constraint",
            "differential": {"element": [
                {"path": "Observation.valueQuantity", "minValueQuantity": {"value": 0, "system": "http://unitsofmeasure.org", "code": "kg"},
                 "maxValueQuantity": {"value": 500, "system": "http://unitsofmeasure.org", "code": "kg"}},
                {"path": "Observation.issued", "maxValueInstant": "2030-01-01T00:00:00Z"},
                {"path": "Observation.effectiveDateTime", "minValueDateTime": "2000-01-01"},
                {"path": "Observation.note.text", "maxLength": 5},
                {"path": "Observation.status", "binding": {"strength": "required", "valueSet": "http://hl7.org/fhir/ValueSet/observation-status"}},
                {"path": "Observation.category", "binding": {"strength": "required", "valueSet": "http://hl7.org/fhir/ValueSet/observation-category"}},
                {"path": "Observation.method", "binding": {"strength": "extensible", "valueSet": "http://example.org/not-loaded"}},
                {"path": "Observation.interpretation", "binding": {"strength": "example", "valueSet": "http://example.org/whatever"}}
            ]}
        }))
        .unwrap()
    }

    fn issues_with(p: &Profile, r: &Value, defs: &Definitions) -> Vec<(Severity, String, String)> {
        let mut sink = Sink::default();
        let profiles = HashMap::new();
        let known = Known {
            profiles: &profiles,
            defs,
        };
        p.check_in(r, "Observation", &mut sink, &known, 0);
        sink.outcome
            .issues
            .iter()
            .map(|i| (i.severity, i.diagnostics.clone(), i.expression.join(",")))
            .collect()
    }

    #[test]
    fn max_length_and_min_max_values_are_checked() {
        let defs = Definitions::r4().unwrap();
        let p = limited();
        let ok = json!({"resourceType": "Observation", "status": "final",
            "valueQuantity": {"value": 70.5, "system": "http://unitsofmeasure.org", "code": "kg"},
            "issued": "2024-05-06T07:08:09Z", "effectiveDateTime": "2001-02-03",
            "note": [{"text": "héllo"}]});
        assert!(
            issues_with(&p, &ok, &defs).is_empty(),
            "{:#?}",
            issues_with(&p, &ok, &defs)
        );
        let bad = json!({"resourceType": "Observation", "status": "final",
            "valueQuantity": {"value": 501, "system": "http://unitsofmeasure.org", "code": "kg"},
            "issued": "2031-01-01T00:00:00Z", "effectiveDateTime": "1999-12-31",
            "note": [{"text": "hello!"}, {"text": "fine"}]});
        let got = issues_with(&p, &bad, &defs);
        let errors: Vec<(&str, &str)> = got
            .iter()
            .filter(|i| i.0 == Severity::Error)
            .map(|i| (i.1.as_str(), i.2.as_str()))
            .collect();
        assert_eq!(
            errors,
            [
                (
                    "Observation.valueQuantity: the value is above the maxValue of http://example.org/limits",
                    "Observation.valueQuantity"
                ),
                (
                    "Observation.issued: the value is above the maxValue of http://example.org/limits",
                    "Observation.issued"
                ),
                (
                    "Observation.effectiveDateTime: the value is below the minValue of http://example.org/limits",
                    "Observation.effectiveDateTime"
                ),
                (
                    "Observation.note.text: the value is longer than the maxLength 5 of http://example.org/limits",
                    "Observation.note[0].text"
                ),
            ],
            "{got:#?}"
        );
        // Different units or precisions are said, not guessed.
        let apart = json!({"resourceType": "Observation", "status": "final",
            "valueQuantity": {"value": 9000, "system": "http://unitsofmeasure.org", "code": "[lb_av]"},
            "effectiveDateTime": "1999"});
        let got = issues_with(&p, &apart, &defs);
        assert!(got.iter().all(|i| i.0 == Severity::Information), "{got:#?}");
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got.iter().all(|i| i.1.contains("was not checked")));
        // Units apart by a metric prefix compare after scaling: 501,000 g is above 500 kg.
        let grams = json!({"resourceType": "Observation", "status": "final",
            "valueQuantity": {"value": 501000, "system": "http://unitsofmeasure.org", "code": "g"}});
        let got = issues_with(&p, &grams, &defs);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].1.contains("above the maxValue"));
        let fine = json!({"resourceType": "Observation", "status": "final",
            "valueQuantity": {"value": 499000, "system": "http://unitsofmeasure.org", "code": "g"}});
        assert!(issues_with(&p, &fine, &defs).is_empty());
    }

    #[test]
    fn bindings_are_checked_by_strength_once() {
        let defs = Definitions::r4().unwrap();
        let p = limited();
        let r = json!({"resourceType": "Observation", "status": "bogus",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "nope"}]},
                         {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "method": {"coding": [{"system": "urn:m", "code": "m"}]},
            "interpretation": [{"coding": [{"system": "urn:i", "code": "i"}]}]});
        let got = issues_with(&p, &r, &defs);
        // status: the same binding as the core's (the walker reports it), so not here.
        assert_eq!(
            got,
            [
                (
                    Severity::Error,
                    "the code is not in the required value set http://hl7.org/fhir/ValueSet/observation-category".to_owned(),
                    "Observation.category[0]".to_owned()
                ),
                (
                    Severity::Information,
                    "Observation.method: membership in the value set http://example.org/not-loaded (bound by http://example.org/limits) was not checked: it is not loaded".to_owned(),
                    "Observation.method".to_owned()
                ),
            ]
        );
        // Without definitions (no registry), a binding is said not checked.
        let mut sink = Sink::default();
        p.check(&r, "Observation", &mut sink);
        assert!(
            sink.outcome
                .issues
                .iter()
                .all(|i| i.severity == Severity::Information)
        );
    }

    #[test]
    fn core_bindings_are_found_through_data_types() {
        let defs = Definitions::r4().unwrap();
        let b = |name: &str| core_binding(&defs, name).map(|(s, u)| (*s, u.as_str()));
        assert!(b("Patient.gender").is_some_and(|(_, u)| {
            u.starts_with("http://hl7.org/fhir/ValueSet/administrative-gender")
        }));
        assert!(b("Patient.gender").is_some_and(|(s, _)| s == Strength::Required));
        assert!(b("Patient.contact.gender").is_some());
        assert!(b("Patient.identifier.use").is_some_and(|(s, _)| s == Strength::Required));
        assert!(b("Observation.valueQuantity.comparator").is_some());
        assert!(b("Observation.value[x]").is_none());
        assert!(b("Patient.identifier:mrn.use").is_some());
        assert!(b("Patient.nothing").is_none());
    }
}
