//! The contract validator: walks a FHIR R4 JSON resource against the compiled core
//! StructureDefinitions ([`Definitions`]) and reports every departure as an OperationOutcome
//! issue located by a FHIRPath expression (`Patient.name[0].given[0]`), never quoting a value.
//!
//! Checked: FHIR JSON rules (JSON type and lexical form of every primitive, no empty strings,
//! arrays or objects, `_element` siblings and their array alignment, `resourceType`, unknown
//! elements, arrays exactly where the element repeats), cardinality at every level including
//! backbone elements, choice types (`value[x]`: one of the allowed types, at most one),
//! references (format and target type, `#id` resolving to a contained resource), fixed and
//! pattern values, contained resources and Bundle entries (each by its own type), extensions
//! (`url`, no version), every FHIRPath invariant of the element and of its data type's root
//! (evaluated by the `fhirpath` crate, compiled once at load; ele-1, txt-1/2 and ref-1 are
//! read off the JSON here instead), UCUM codes of Quantities ([`ucum`](super::ucum)) and
//! terminology bindings (see [`terminology`](super::terminology)).

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::definitions::{Children, Definitions, ElementDef, Invariant, TypeDef, choice_key};
use super::terminology::{self, BindingTarget};
use super::ucum;

/// The UCUM code system.
const UCUM: &str = "http://unitsofmeasure.org";
use crate::outcome::{Issue, Outcome, Severity};

/// Issues listed per resource at most; one more issue says how many were left out.
pub const MAX_ISSUES: usize = 100;

/// Resources nested in resources (contained, Bundle entries, Parameters) are checked to this
/// depth; deeper ones are reported rather than followed.
const MAX_NESTING: usize = 8;

/// Elements nested deeper than this (a pathological `extension.extension…`) are not followed.
const MAX_DEPTH: usize = 64;

/// Best-practice invariants (HL7 marks them so): reported as information, as the reference
/// validator does by default.
const BEST_PRACTICE: &[&str] = &["dom-6"];

/// What the FHIRPath engine asks of the validator: value set membership from the value sets
/// held, and the narrative checks.
#[derive(Debug, Clone, Copy)]
struct DefsHost<'d>(&'d Definitions);

impl fhirpath::Host for DefsHost<'_> {
    fn member_of(&self, value: &Value, url: &str) -> Option<bool> {
        let vs = self.0.value_set(url)?;
        let codings: Vec<(Option<&str>, &str)> = match value {
            Value::String(code) => vec![(None, code.as_str())],
            Value::Object(o) if o.contains_key("coding") => o
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some((
                        c.get("system").and_then(Value::as_str),
                        c.get("code")?.as_str()?,
                    ))
                })
                .collect(),
            Value::Object(o) => o
                .get("code")
                .and_then(Value::as_str)
                .map(|code| (o.get("system").and_then(Value::as_str), code))
                .into_iter()
                .collect(),
            _ => return None,
        };
        let found = codings.iter().any(|(system, code)| match system {
            Some(s) => vs.codes.get(*s).is_some_and(|c| c.contains(*code)),
            None => vs.has_code(code),
        });
        if found {
            Some(true)
        } else if vs.is_complete() {
            Some(false)
        } else {
            None
        }
    }

    fn html_checks(&self, div: &str) -> Option<bool> {
        let mut sink = Sink::default();
        terminology::check_xhtml(div, "", &mut sink);
        Some(sink.outcome.issues.is_empty())
    }
}

/// Appends `[i]` to a location (once per array item walked: without the formatter).
fn push_index(loc: &mut String, i: usize) {
    let mut digits = [0u8; 20];
    let mut n = i;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    loc.push('[');
    for &d in &digits[start..] {
        loc.push(char::from(d));
    }
    loc.push(']');
}

/// Collects issues, capped at [`MAX_ISSUES`].
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub outcome: Outcome,
    dropped: usize,
}

impl Sink {
    pub(crate) fn push(&mut self, severity: Severity, code: &str, loc: &str, msg: String) {
        if self.outcome.issues.len() >= MAX_ISSUES {
            self.dropped += 1;
            return;
        }
        self.outcome
            .push(Issue::new(severity, code, msg).at(loc.to_owned()));
    }

    pub(crate) fn error(&mut self, code: &str, loc: &str, msg: String) {
        self.push(Severity::Error, code, loc, msg);
    }

    fn finish(mut self) -> Outcome {
        if self.dropped > 0 {
            self.outcome.push(Issue::new(
                Severity::Information,
                "too-costly",
                format!("{} more issues were not listed", self.dropped),
            ));
        }
        self.outcome
    }
}

/// What an object holds for one child element: its value and `_` sibling, found under the
/// JSON names of `types` distinct types of the element (0: absent; more than 1: an error
/// for a choice element), the first of them `ti`.
#[derive(Debug, Clone, Copy, Default)]
struct Slot<'v> {
    v: Option<&'v Value>,
    u: Option<&'v Value>,
    ti: usize,
    types: u8,
}

impl<'v> Slot<'v> {
    fn hit(&mut self, ti: usize, sibling: bool, val: &'v Value) {
        if self.types == 0 {
            self.ti = ti;
            self.types = 1;
        } else if self.ti != ti {
            self.types = 2;
        }
        if sibling {
            self.u = Some(val);
        } else {
            self.v = Some(val);
        }
    }
}

/// One resource being walked: its location root and contained ids (for `#id` references).
#[derive(Debug, Default)]
struct Frame {
    contained: HashSet<String>,
}

/// Walks resources against the definitions.
pub(crate) struct Walker<'d, 'v> {
    defs: &'d Definitions,
    host: DefsHost<'d>,
    sink: Sink,
    frames: Vec<Frame>,
    /// The resources being walked, innermost last: (`%resource`, `%rootResource`).
    resources: Vec<(&'v Value, &'v Value)>,
    /// False to skip FHIRPath invariants (a benchmark's baseline).
    evaluate_invariants: bool,
    /// While walking a primitive's `_` sibling: the primitive element (type name, path), the
    /// context of the extensions found there.
    primitive_context: Option<(&'d str, &'d str)>,
    /// The children's slots of the objects being walked, innermost last.
    slots: Vec<Slot<'v>>,
}

impl<'d, 'v> Walker<'d, 'v> {
    pub(crate) fn new(defs: &'d Definitions) -> Self {
        Walker {
            defs,
            host: DefsHost(defs),
            sink: Sink::default(),
            frames: Vec::new(),
            resources: Vec::new(),
            evaluate_invariants: true,
            primitive_context: None,
            slots: Vec::new(),
        }
    }

    /// Turns FHIRPath invariant evaluation on or off (on by default).
    pub(crate) fn with_invariants(mut self, on: bool) -> Self {
        self.evaluate_invariants = on;
        self
    }

    pub(crate) fn sink_mut(&mut self) -> &mut Sink {
        &mut self.sink
    }

    pub(crate) fn finish(self) -> Outcome {
        self.sink.finish()
    }

    /// Validates a resource at `loc` (empty for a top-level resource: the location then
    /// starts with its type).
    pub(crate) fn resource(&mut self, value: &'v Value, loc: &mut String, nesting: usize) {
        let Some(obj) = value.as_object() else {
            let at = if loc.is_empty() { "$" } else { loc.as_str() };
            self.sink
                .error("structure", at, "a resource must be a JSON object".into());
            return;
        };
        let rt = match obj.get("resourceType") {
            Some(Value::String(rt)) => rt.as_str(),
            Some(_) => {
                let at = if loc.is_empty() { "$" } else { loc.as_str() };
                self.sink
                    .error("structure", at, "resourceType must be a string".into());
                return;
            }
            None => {
                let at = if loc.is_empty() { "$" } else { loc.as_str() };
                self.sink.error(
                    "structure",
                    at,
                    "no resourceType: cannot tell what resource this is".into(),
                );
                return;
            }
        };
        // Asked in this order so that a resourceType naming a data type builds no tables.
        let Some(ty) = self
            .defs
            .is_resource_type(rt)
            .then(|| self.defs.type_def(rt))
            .flatten()
        else {
            let at = if loc.is_empty() { "$" } else { loc.as_str() };
            self.sink.error(
                "structure",
                at,
                "resourceType is not a FHIR R4 resource type".into(),
            );
            return;
        };
        if nesting > MAX_NESTING {
            self.sink.push(
                Severity::Warning,
                "too-costly",
                loc,
                format!("resources nested deeper than {MAX_NESTING} levels were not checked"),
            );
            return;
        }
        let top = loc.is_empty();
        let mark = loc.len();
        if top {
            loc.push_str(rt);
        }
        let mut frame = Frame::default();
        if let Some(Value::Array(contained)) = obj.get("contained") {
            for c in contained {
                if let Some(Value::String(id)) = c.get("id") {
                    frame.contained.insert(id.clone());
                }
            }
        }
        self.frames.push(frame);
        // A contained resource's %rootResource is its container; any other resource
        // (top level, Bundle entry, Parameters) is its own root.
        let in_container = loc
            .rsplit('.')
            .next()
            .is_some_and(|l| l.starts_with("contained["));
        let root = match self.resources.last() {
            Some((_, root)) if in_container => *root,
            _ => value,
        };
        self.resources.push((value, root));
        self.object(ty, &ty.root_children, obj, loc, true, 0, nesting);
        self.invariants(&ty.root_checks, value, loc);
        if rt == "Bundle" {
            self.bundle_rules(obj, loc);
        }
        self.resources.pop();
        self.frames.pop();
        loc.truncate(mark);
    }

    /// Bundle rules the snapshot cannot say: fullUrl is absolute; each link relation once.
    fn bundle_rules(&mut self, obj: &Map<String, Value>, loc: &mut String) {
        if let Some(Value::Array(links)) = obj.get("link") {
            let mut seen = HashSet::new();
            for (i, link) in links.iter().enumerate() {
                if let Some(Value::String(relation)) = link.get("relation")
                    && !seen.insert(relation.as_str())
                {
                    let at = format!("{loc}.link[{i}]");
                    self.sink.error(
                        "invariant",
                        &at,
                        "a link relation type can only occur once in a Bundle".into(),
                    );
                }
            }
        }
        let Some(Value::Array(entries)) = obj.get("entry") else {
            return;
        };
        for (i, entry) in entries.iter().enumerate() {
            if let Some(Value::String(full_url)) = entry.get("fullUrl")
                && !is_absolute_uri(full_url)
            {
                let at = format!("{loc}.entry[{i}].fullUrl");
                self.sink
                    .error("invalid", &at, "fullUrl must be an absolute URL".into());
            }
        }
    }

    /// Validates the members of `obj` against `kids`, the children (in `ty`) of the element
    /// the object is a value of.
    #[allow(clippy::too_many_arguments)]
    fn object(
        &mut self,
        ty: &'d TypeDef,
        kids: &'d Children,
        obj: &'v Map<String, Value>,
        loc: &mut String,
        is_resource: bool,
        depth: usize,
        nesting: usize,
    ) {
        if depth > MAX_DEPTH {
            self.sink.push(
                Severity::Warning,
                "too-costly",
                loc,
                format!("elements nested deeper than {MAX_DEPTH} levels were not checked"),
            );
            return;
        }
        if obj.is_empty() {
            self.sink.error(
                "structure",
                loc,
                "ele-1: an element must have a value or children (empty object)".into(),
            );
            return;
        }
        // Each member of the object is read once and put in its child's slot; the children
        // are then checked in definition order (the order issues are reported in).
        let mut used = 0usize;
        let base = self.slots.len();
        self.slots.resize(base + kids.list.len(), Slot::default());
        match &kids.keys {
            Some(keys) => {
                for (k, val) in obj {
                    if let Some(&(pos, ti, sibling)) = keys.get(k.as_str()) {
                        used += 1;
                        self.slots[base + pos].hit(ti, sibling, val);
                    }
                }
            }
            None => {
                for (pos, &i) in kids.list.iter().enumerate() {
                    let e = &ty.elements[i];
                    let names = if e.choice {
                        &e.json_names[..]
                    } else {
                        e.json_names.get(..1).unwrap_or(&[])
                    };
                    for (ti, (key, ukey, primitive)) in names.iter().enumerate() {
                        if let Some(val) = obj.get(key.as_str()) {
                            used += 1;
                            self.slots[base + pos].hit(ti, false, val);
                        }
                        if *primitive && let Some(val) = obj.get(ukey.as_str()) {
                            used += 1;
                            self.slots[base + pos].hit(ti, true, val);
                        }
                    }
                }
            }
        }
        for (pos, &i) in kids.list.iter().enumerate() {
            let slot = self.slots[base + pos];
            let e = &ty.elements[i];
            if slot.types == 0 {
                if e.min > 0 {
                    let msg = if e.choice {
                        format!(
                            "{}[x]: minimum required = {}, but only found 0",
                            e.name, e.min
                        )
                    } else {
                        format!("{}: minimum required = {}, but only found 0", e.name, e.min)
                    };
                    self.sink.error("required", loc, msg);
                }
                continue;
            }
            if !e.choice {
                let code = e.types.first().map(|t| t.code.as_str()).unwrap_or("");
                self.property(
                    ty,
                    e,
                    (0, code),
                    &e.name,
                    slot.v,
                    slot.u,
                    loc,
                    depth,
                    nesting,
                );
                continue;
            }
            let (ti, v, u) = if slot.types == 1 {
                (slot.ti, slot.v, slot.u)
            } else {
                // Several types present (an error): the first in definition order is walked.
                self.sink.error(
                    "structure",
                    loc,
                    format!("{}[x]: only one type of value may be present", e.name),
                );
                let first = e
                    .json_names
                    .iter()
                    .enumerate()
                    .find_map(|(ti, (k, uk, p))| {
                        let v = obj.get(k.as_str());
                        let u = if *p { obj.get(uk.as_str()) } else { None };
                        (v.is_some() || u.is_some()).then_some((ti, v, u))
                    });
                match first {
                    Some(found) => found,
                    None => continue,
                }
            };
            let code = e.types.get(ti).map(|t| t.code.as_str()).unwrap_or("");
            let key = e.json_names.get(ti).map(|n| n.0.as_str()).unwrap_or("");
            let v = v.filter(|x| !x.is_null());
            self.property(ty, e, (ti, code), key, v, u, loc, depth, nesting);
        }
        self.slots.truncate(base);
        let expected = obj.len() - usize::from(is_resource && obj.contains_key("resourceType"));
        if used < expected {
            self.unknown_members(ty, &kids.list, obj, loc, is_resource);
        }
    }

    /// Reports the members of `obj` that no child element of `path` accounts for.
    fn unknown_members(
        &mut self,
        ty: &TypeDef,
        children: &[usize],
        obj: &Map<String, Value>,
        loc: &str,
        is_resource: bool,
    ) {
        for key in obj.keys() {
            if is_resource && key == "resourceType" {
                continue;
            }
            let name = key.strip_prefix('_').unwrap_or(key);
            let known = children.iter().any(|&i| {
                let e = &ty.elements[i];
                if e.choice {
                    e.types.iter().any(|t| choice_key(&e.name, &t.code) == name)
                } else {
                    e.name == name
                        && (!key.starts_with('_')
                            || e.types.first().is_some_and(|t| {
                                self.defs.is_primitive(&t.code) && !t.code.starts_with("System.")
                            }))
                }
            });
            if known {
                continue;
            }
            let choice_stem = children.iter().find_map(|&i| {
                let e = &ty.elements[i];
                (e.choice
                    && name.len() > e.name.len()
                    && name.starts_with(e.name.as_str())
                    && name[e.name.len()..].starts_with(|c: char| c.is_ascii_uppercase()))
                .then_some(e.name.as_str())
            });
            let msg = match choice_stem {
                Some(stem) => format!("{key}: this type is not allowed for {stem}[x]"),
                None => format!("unrecognized element `{key}`"),
            };
            self.sink.error("structure", loc, msg);
        }
    }

    /// One element's value(s) `v` and primitive siblings `u` (under JSON name `key`), of
    /// the type `code` (index `ti` in the element's types).
    #[allow(clippy::too_many_arguments)]
    fn property(
        &mut self,
        ty: &'d TypeDef,
        e: &'d ElementDef,
        code: (usize, &str),
        key: &str,
        v: Option<&'v Value>,
        u: Option<&'v Value>,
        loc: &mut String,
        depth: usize,
        nesting: usize,
    ) {
        let mark = loc.len();
        loc.push('.');
        loc.push_str(key);
        let count;
        if e.is_array() {
            let va = match v {
                None => None,
                Some(Value::Array(a)) => Some(a.as_slice()),
                Some(_) => {
                    self.sink.error(
                        "structure",
                        loc,
                        format!("{key} repeats: it must be a JSON array"),
                    );
                    loc.truncate(mark);
                    return;
                }
            };
            let ua = match u {
                None => None,
                Some(Value::Array(a)) => Some(a.as_slice()),
                Some(_) => {
                    self.sink.error(
                        "structure",
                        loc,
                        format!("_{key} must be a JSON array, like {key}"),
                    );
                    loc.truncate(mark);
                    return;
                }
            };
            if va.is_some_and(<[Value]>::is_empty) || ua.is_some_and(<[Value]>::is_empty) {
                self.sink.error(
                    "structure",
                    loc,
                    "array cannot be empty: the property should be absent if it has no values"
                        .into(),
                );
                loc.truncate(mark);
                return;
            }
            let n = va
                .map_or(0, <[Value]>::len)
                .max(ua.map_or(0, <[Value]>::len));
            count = n;
            for i in 0..n {
                let item = va.and_then(|a| a.get(i)).filter(|x| !x.is_null());
                let ext = ua.and_then(|a| a.get(i)).filter(|x| !x.is_null());
                let item_mark = loc.len();
                push_index(loc, i);
                if item.is_none() && ext.is_none() {
                    self.sink.error(
                        "structure",
                        loc,
                        "array item must have a value or an extension (null on both sides)".into(),
                    );
                } else {
                    if va.is_some_and(|a| a.get(i).is_some_and(Value::is_null)) && ext.is_none() {
                        self.sink.error(
                            "structure",
                            loc,
                            "null in an array is only allowed with an extension in the matching _ array".into(),
                        );
                    }
                    self.item(ty, e, code, item, ext, loc, depth, nesting);
                }
                loc.truncate(item_mark);
            }
        } else {
            if matches!(v, Some(Value::Array(_))) || matches!(u, Some(Value::Array(_))) {
                self.sink.error(
                    "structure",
                    loc,
                    format!("{key} does not repeat: it must not be a JSON array"),
                );
                loc.truncate(mark);
                return;
            }
            count = 1;
            let v = v.filter(|x| !x.is_null());
            if v.is_none() && u.is_none() {
                self.sink
                    .error("structure", loc, "null is not a FHIR value".into());
            } else {
                self.item(ty, e, code, v, u, loc, depth, nesting);
            }
        }
        loc.truncate(mark);
        if (count as u64) < u64::from(e.min) {
            self.sink.error(
                "required",
                loc,
                format!(
                    "{}: minimum required = {}, but only found {count}",
                    e.name, e.min
                ),
            );
        }
        if let Some(max) = e.max
            && count as u64 > u64::from(max)
        {
            self.sink.error(
                "structure",
                loc,
                format!("{}: max allowed = {max}, but found {count}", e.name),
            );
        }
    }

    /// One value of an element (`v`), with its primitive extension object (`u`), of the
    /// type `code` (index `ti` in the element's types).
    #[allow(clippy::too_many_arguments)]
    fn item(
        &mut self,
        ty: &'d TypeDef,
        e: &'d ElementDef,
        (ti, code): (usize, &str),
        v: Option<&'v Value>,
        u: Option<&'v Value>,
        loc: &mut String,
        depth: usize,
        nesting: usize,
    ) {
        if let Some(u) = u {
            match u.as_object() {
                Some(ext) => {
                    if let Some(element) = self.defs.type_def("Element") {
                        let outer = self
                            .primitive_context
                            .replace((ty.name.as_str(), e.path.as_str()));
                        self.object(
                            element,
                            &element.root_children,
                            ext,
                            loc,
                            false,
                            depth + 1,
                            nesting,
                        );
                        self.primitive_context = outer;
                    }
                }
                None => self.sink.error(
                    "structure",
                    loc,
                    "the _ sibling of a primitive must be an object (id, extension)".into(),
                ),
            }
        }
        let Some(v) = v else {
            return;
        };
        if e.types.get(ti).is_some_and(|t| t.primitive) {
            self.primitive(code, v, loc);
            if let Some(target) = primitive_binding_target(code, v) {
                self.binding(e, target, loc);
            }
        } else if e.content_reference.is_some() || e.has_children {
            match v.as_object() {
                Some(obj) => self.object(ty, &e.children, obj, loc, false, depth + 1, nesting),
                None => self.not_object(loc),
            }
        } else if code == "Resource" {
            self.resource(v, loc, nesting + 1);
        } else {
            let Some(dt) = self.defs.type_def(code) else {
                return;
            };
            let Some(obj) = v.as_object() else {
                self.not_object(loc);
                return;
            };
            self.object(dt, &dt.root_children, obj, loc, false, depth + 1, nesting);
            match code {
                "Reference" => self.reference(e, obj, loc),
                "Extension" => {
                    self.extension(obj, loc);
                    self.extension_context(ty, e, obj, loc);
                }
                "Coding" => {
                    terminology::check_coding(self.defs, obj, loc, &mut self.sink);
                    self.binding(e, BindingTarget::Coding(obj), loc);
                }
                "CodeableConcept" => {
                    self.binding(e, BindingTarget::Concept(obj), loc);
                }
                "Identifier" => terminology::check_identifier(obj, loc, &mut self.sink),
                "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity"
                | "MoneyQuantity" => self.quantity(code, obj, loc),
                "Attachment" => self.attachment(obj, loc),
                _ => {}
            }
        }
        if let Some(fixed) = &e.fixed
            && v != fixed
        {
            self.sink.error(
                "value",
                loc,
                "the value differs from the fixed value the definition requires".into(),
            );
        }
        if let Some(pattern) = &e.pattern
            && !matches_pattern(v, pattern)
        {
            self.sink.error(
                "value",
                loc,
                "the value does not match the pattern the definition requires".into(),
            );
        }
        // The element's invariants, and those of its data type's root (Period's per-1…),
        // each key once: listed per type at load.
        if let Some(checks) = e.checks.get(ti) {
            self.invariants(checks, v, loc);
        }
    }

    /// Evaluates FHIRPath invariants on one value. An invariant that the engine cannot
    /// evaluate is reported as an information issue ("not checked"), never passed silently.
    fn invariants(&mut self, invs: &'d [Invariant], focus: &'v Value, loc: &str) {
        if !self.evaluate_invariants || invs.is_empty() {
            return;
        }
        let (resource, root) = match self.resources.last() {
            Some(&(r, root)) => (Some(r), Some(root)),
            None => (None, None),
        };
        for inv in invs {
            let expr = match &inv.expression {
                Ok(expr) => expr,
                Err(reason) => {
                    self.sink.push(
                        Severity::Information,
                        "informational",
                        loc,
                        format!(
                            "{}: invariant not checked (does not compile: {reason})",
                            inv.key
                        ),
                    );
                    continue;
                }
            };
            let env = fhirpath::Env {
                resource,
                root_resource: root,
                context: Some(focus),
                host: Some(&self.host),
            };
            let verdict = expr.check(focus, &env);
            #[cfg(test)]
            reference_check::compare(inv, expr, focus, &env, &verdict);
            match verdict {
                Ok(Some(false)) => {
                    let severity = if BEST_PRACTICE.contains(&inv.key.as_str()) {
                        Severity::Information
                    } else if inv.error {
                        Severity::Error
                    } else {
                        Severity::Warning
                    };
                    let human = if inv.human.is_empty() {
                        expr.source()
                    } else {
                        inv.human.as_str()
                    };
                    self.sink
                        .push(severity, "invariant", loc, format!("{}: {human}", inv.key));
                }
                Ok(_) => {}
                Err(e) => self.sink.push(
                    Severity::Information,
                    "informational",
                    loc,
                    format!("{}: invariant not checked ({e})", inv.key),
                ),
            }
        }
    }

    fn binding(&mut self, e: &ElementDef, target: BindingTarget<'_>, loc: &str) {
        if let Some((strength, url)) = &e.binding {
            terminology::check_binding(self.defs, *strength, url, target, loc, &mut self.sink);
        }
    }

    fn not_object(&mut self, loc: &str) {
        self.sink.error(
            "structure",
            loc,
            "this element is a complex type: it must be a JSON object".into(),
        );
    }

    /// A primitive's JSON type and lexical form.
    fn primitive(&mut self, code: &str, v: &Value, loc: &str) {
        let base = code.strip_prefix("System.").unwrap_or(code);
        let ok_type = match base {
            "boolean" => v.is_boolean(),
            "integer" | "positiveInt" | "unsignedInt" => v.is_i64() || v.is_u64(),
            "decimal" => v.is_number(),
            _ => v.is_string(),
        };
        if !ok_type {
            let want = match base {
                "boolean" => "a JSON boolean",
                "integer" | "positiveInt" | "unsignedInt" => "a JSON integer number",
                "decimal" => "a JSON number",
                _ => "a JSON string",
            };
            self.sink.error(
                "structure",
                loc,
                format!("a value of type {base} must be {want}"),
            );
            return;
        }
        match v {
            Value::Number(n) => {
                let bad = match base {
                    "integer" => n.as_i64().is_none_or(|i| i32::try_from(i).is_err()),
                    "positiveInt" => n
                        .as_i64()
                        .is_none_or(|i| !(1..=i64::from(i32::MAX)).contains(&i)),
                    "unsignedInt" => n
                        .as_i64()
                        .is_none_or(|i| !(0..=i64::from(i32::MAX)).contains(&i)),
                    _ => false,
                };
                if bad {
                    self.sink.error(
                        "value",
                        loc,
                        format!("the number is out of range for {base}"),
                    );
                }
            }
            Value::String(s) => {
                if s.is_empty() {
                    self.sink.error(
                        "value",
                        loc,
                        "ele-1: a primitive value must not be an empty string".into(),
                    );
                    return;
                }
                if base == "xhtml" {
                    terminology::check_xhtml(s, loc, &mut self.sink);
                    return;
                }
                // Printable ASCII (plus tab, CR, LF) is always a valid string or markdown:
                // skip the regex for the common case.
                let plain_text = matches!(base, "string" | "markdown")
                    && s.bytes()
                        .all(|b| (0x20..0x7f).contains(&b) || matches!(b, b'\t' | b'\r' | b'\n'));
                if !plain_text && self.defs.primitive_matches(base, s) == Some(false) {
                    let msg = if base == "dateTime" || base == "instant" {
                        format!(
                            "not a valid {base} (a time needs a timezone; dates are YYYY, YYYY-MM or YYYY-MM-DD)"
                        )
                    } else {
                        format!("not a valid {base}")
                    };
                    self.sink.error("value", loc, msg);
                }
                if matches!(base, "uri" | "url" | "canonical")
                    && let Some(uuid) = s.strip_prefix("urn:uuid:")
                {
                    let ok = uuid.len() == 36
                        && uuid.bytes().enumerate().all(|(i, b)| {
                            if matches!(i, 8 | 13 | 18 | 23) {
                                b == b'-'
                            } else {
                                b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
                            }
                        });
                    if !ok {
                        self.sink.error(
                            "value",
                            loc,
                            "a urn:uuid must be a valid lowercase UUID".into(),
                        );
                    }
                }
                if base == "string" || base == "markdown" {
                    terminology::check_string_security(s, loc, &mut self.sink);
                }
                // Markdown is rendered with HTML escaped: a tag in it is likely a mistake (the
                // reference validator's html-in-markdown rule, a warning by default).
                if base == "markdown"
                    && s.as_bytes()
                        .windows(2)
                        .any(|w| w[0] == b'<' && w[1].is_ascii_alphabetic())
                {
                    self.sink.push(
                        Severity::Warning,
                        "invalid",
                        loc,
                        "the markdown contains what appears to be an embedded HTML tag".into(),
                    );
                }
            }
            _ => {}
        }
    }

    /// Reference format and target type; `#id` must resolve to a contained resource (ref-1).
    fn reference(&mut self, e: &ElementDef, obj: &Map<String, Value>, loc: &mut String) {
        let Some(Value::String(reference)) = obj.get("reference") else {
            return;
        };
        let targets: &[String] = e
            .types
            .iter()
            .find(|t| t.code == "Reference")
            .map(|t| t.targets.as_slice())
            .unwrap_or(&[]);
        let mark = loc.len();
        loc.push_str(".reference");
        if let Some(id) = reference.strip_prefix('#') {
            let resolved = id.is_empty()
                || self
                    .frames
                    .iter()
                    .rev()
                    .take(2)
                    .any(|f| f.contained.contains(id));
            if !resolved {
                self.sink.error(
                    "invariant",
                    loc,
                    "ref-1: a local reference (#id) must point at a contained resource".into(),
                );
            }
        } else if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
            // Resolved inside a Bundle or a transaction; nothing more to say here.
        } else {
            let rel = match reference.split_once("://") {
                Some((_, rest)) => rest.split_once('/').map(|(_, p)| p).unwrap_or(""),
                None => reference.as_str(),
            };
            let absolute = reference.contains("://") || is_absolute_uri(reference);
            let segments: Vec<&str> = rel.split('/').collect();
            // Type/id, or Type/id/_history/vid, possibly after a base URL's path.
            let found = segments
                .windows(2)
                .rposition(|w| self.defs.is_resource_type(w[0]))
                .map(|p| (segments[p], segments[p + 1]));
            match found {
                Some((rt, id)) => {
                    let id_ok = self.defs.primitive_matches("id", id) != Some(false);
                    if !id_ok && !absolute {
                        self.sink.error(
                            "value",
                            loc,
                            "the reference's id part is not a valid id".into(),
                        );
                    }
                    if !targets.is_empty()
                        && !targets
                            .iter()
                            .any(|t| t == "Resource" || self.defs.derives_from(rt, t))
                    {
                        self.sink.error(
                            "structure",
                            loc,
                            format!(
                                "invalid reference target type {rt}: expected one of {}",
                                targets.join(", ")
                            ),
                        );
                    }
                }
                None if absolute => {}
                None => self.sink.error(
                    "value",
                    loc,
                    "a relative reference must be Type/id with a FHIR resource type".into(),
                ),
            }
        }
        loc.truncate(mark);
        if let Some(Value::String(t)) = obj.get("type")
            && !targets.is_empty()
            && self.defs.is_resource_type(t)
            && !targets
                .iter()
                .any(|x| x == "Resource" || self.defs.derives_from(t, x))
        {
            let at = format!("{loc}.type");
            self.sink.error(
                "structure",
                &at,
                format!("reference type {t} is not one of {}", targets.join(", ")),
            );
        }
    }

    /// A Quantity coded in UCUM has a well-formed UCUM code; an Age so coded is in a unit
    /// of time.
    fn quantity(&mut self, code: &str, obj: &Map<String, Value>, loc: &str) {
        if obj.get("system").and_then(Value::as_str) != Some(UCUM) {
            return;
        }
        let Some(Value::String(unit)) = obj.get("code") else {
            return;
        };
        let at = format!("{loc}.code");
        match ucum::parse(unit) {
            Err(why) => {
                self.sink
                    .error("code-invalid", &at, format!("not a valid UCUM unit: {why}"))
            }
            Ok(()) if code == "Age" && !ucum::TIME_UNITS.contains(&unit.as_str()) => {
                self.sink.error(
                    "code-invalid",
                    &at,
                    "an Age must be given in a unit of time (a, mo, wk, d, h, min)".into(),
                )
            }
            Ok(()) => {}
        }
    }

    /// An attachment's stated size matches its data.
    fn attachment(&mut self, obj: &Map<String, Value>, loc: &str) {
        if let (Some(stated), Some(Value::String(_))) =
            (obj.get("size").and_then(Value::as_u64), obj.get("data"))
            && let Some(actual) = attachment_size(obj)
            && actual as u64 != stated
        {
            self.sink.error(
                "value",
                loc,
                "the stated attachment size does not match the size of its data".into(),
            );
        }
    }

    /// An extension whose definition is held may only be used where its context allows:
    /// an element context names a type (`HumanName`, or an ancestor such as `Element`), or
    /// an element path (`HumanName.family`, `Patient.name`). Contexts of other kinds
    /// (`fhirpath`, `extension`) are not evaluated here.
    fn extension_context(
        &mut self,
        ty: &'d TypeDef,
        e: &'d ElementDef,
        obj: &Map<String, Value>,
        loc: &str,
    ) {
        let Some(Value::String(url)) = obj.get("url") else {
            return;
        };
        let Some(contexts) = self.defs.extension_context(url) else {
            return;
        };
        if contexts.iter().any(|(kind, _)| kind != "element") {
            return;
        }
        // The element holding the extension: a type's root, an element inside a type
        // (backbone), or a primitive whose `_` sibling holds it.
        let (type_name, inner) = match (ty.name.as_str(), self.primitive_context) {
            ("Element", Some((t, p))) => (t, p),
            _ => (
                ty.name.as_str(),
                e.path.rsplit_once('.').map(|(p, _)| p).unwrap_or(""),
            ),
        };
        let definitional = if inner.is_empty() {
            type_name.to_owned()
        } else {
            format!("{type_name}.{inner}")
        };
        // The instance path without indexes or the extension's own segment.
        let mut instance = String::with_capacity(loc.len());
        let mut depth = 0usize;
        for c in loc.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ if depth == 0 => instance.push(c),
                _ => {}
            }
        }
        let instance = instance.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        let allowed = contexts.iter().any(|(_, expr)| {
            let expr = expr.as_str();
            // A context in a type R4 does not have (`CanonicalResource`, from a later
            // version's extension) cannot be evaluated here.
            let head = expr.split('.').next().unwrap_or(expr);
            self.defs.type_def(head).is_none()
                || expr == definitional
                || expr == instance
                || matches!(expr, "Element" | "Base")
                || (inner.is_empty() && self.defs.derives_from(type_name, expr))
                || (!inner.is_empty() && expr == "BackboneElement")
        });
        if !allowed {
            let list: Vec<&str> = contexts.iter().map(|(_, x)| x.as_str()).collect();
            self.sink.error(
                "structure",
                loc,
                format!(
                    "the extension {url} is not allowed here ({definitional}): it may be used at {}",
                    list.join(", ")
                ),
            );
        }
    }

    /// An extension's url carries no version (ext-1 is an invariant the engine evaluates).
    fn extension(&mut self, obj: &Map<String, Value>, loc: &str) {
        if let Some(Value::String(url)) = obj.get("url")
            && url.contains('|')
        {
            self.sink.error(
                "value",
                loc,
                "an extension url must not contain a version".into(),
            );
        }
    }
}

/// The size in bytes of an attachment's decoded data (`None` without data, or data that is
/// not base64, which the primitive check reports).
pub(crate) fn attachment_size(att: &Map<String, Value>) -> Option<usize> {
    use base64::Engine as _;
    let data = att.get("data")?.as_str()?;
    let compact: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()
        .map(|d| d.len())
}

fn primitive_binding_target<'a>(code: &str, v: &'a Value) -> Option<BindingTarget<'a>> {
    match (code, v) {
        ("code", Value::String(s)) => Some(BindingTarget::Code(s)),
        _ => None,
    }
}

/// FHIR pattern matching: objects match when every member of the pattern matches, arrays
/// when each pattern item matches some item of the value, primitives by equality.
pub(crate) fn matches_pattern(v: &Value, pattern: &Value) -> bool {
    match (v, pattern) {
        (Value::Object(vo), Value::Object(po)) => po
            .iter()
            .all(|(k, pv)| vo.get(k).is_some_and(|x| matches_pattern(x, pv))),
        (Value::Array(va), Value::Array(pa)) => {
            pa.iter().all(|p| va.iter().any(|x| matches_pattern(x, p)))
        }
        (Value::Array(va), p) => va.iter().any(|x| matches_pattern(x, p)),
        _ => v == pattern,
    }
}

fn is_absolute_uri(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// Tests: every invariant the walker evaluates is also evaluated the plain way
/// ([`fhirpath::Expression::check_reference`]: no subexpression computed once, `distinct`
/// by comparing every pair) and the verdicts compared, on this thread while switched on.
#[cfg(test)]
mod index_tests {
    /// `push_index` writes what the formatter writes.
    #[test]
    fn push_index_equals_the_formatter() {
        for i in (0..2000).chain([9_999, 10_000, 123_456_789, usize::MAX]) {
            let mut loc = String::from("Patient.name");
            super::push_index(&mut loc, i);
            assert_eq!(loc, format!("Patient.name[{i}]"));
        }
    }
}

#[cfg(test)]
pub(crate) mod reference_check {
    use std::cell::RefCell;

    use serde_json::Value;

    use super::Invariant;

    /// Evaluations compared, of them with a memo plan, and the disagreements.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct Tally {
        pub compared: usize,
        pub memoized: usize,
        pub disagreements: Vec<String>,
        /// Evaluations per (invariant key, expression source).
        pub per_key: std::collections::BTreeMap<(String, String), usize>,
    }

    thread_local! {
        static TALLY: RefCell<Option<Tally>> = const { RefCell::new(None) };
    }

    /// Starts comparing on this thread.
    pub(crate) fn start() {
        TALLY.with(|t| *t.borrow_mut() = Some(Tally::default()));
    }

    /// Stops comparing and returns what was compared.
    pub(crate) fn stop() -> Tally {
        TALLY.with(|t| t.borrow_mut().take().unwrap_or_default())
    }

    pub(super) fn compare<'a>(
        inv: &Invariant,
        expr: &fhirpath::Expression,
        focus: &'a Value,
        env: &fhirpath::Env<'a>,
        verdict: &Result<Option<bool>, fhirpath::EvalError>,
    ) {
        TALLY.with(|t| {
            if let Some(tally) = t.borrow_mut().as_mut() {
                let plain = expr.check_reference(focus, env);
                tally.compared += 1;
                *tally
                    .per_key
                    .entry((inv.key.clone(), expr.source().to_owned()))
                    .or_default() += 1;
                tally.memoized += usize::from(expr.memo_len() > 0);
                if &plain != verdict {
                    tally
                        .disagreements
                        .push(format!("{}: fast {verdict:?}, plain {plain:?}", inv.key));
                }
            }
        });
    }
}
