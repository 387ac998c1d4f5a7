//! Mapping files: how one source entity's records become FHIR resources.
//!
//! A mapping file is YAML (unknown keys are refused; a bad file is refused at load with the
//! file, line and reason):
//!
//! ```yaml
//! version: 1                  # optional; only 1 exists
//! source: app                 # the configured source name
//! entity: patients            # the entity within it
//! resources:
//!   - resourceType: Patient
//!     when: "record.active != false"   # optional expression; the resource is made only if true
//!     idSuffix: null                   # optional; needed when one record makes two resources
//!                                      # of one type ([A-Za-z0-9.-]+, unique per type)
//!     template:                        # the resource, without resourceType and id
//!       identifier:
//!         - system: "urn:fhir-unify:app:patients"
//!           value: "{{ record.pk }}"
//!       name:
//!         - family: "{{ record.last_name | required }}"
//!           given: ["{{ record.first_name }}"]
//!       gender: "{{ record.sex | translate('gender') }}"
//!       managingOrganization:
//!         reference: "{{ reference('Organization', entity='clinics', key={'clinic_id': record.clinic_id}) }}"
//! translations:               # optional code tables for `translate`
//!   gender: { M: male, F: female, O: other, U: unknown }
//! conceptMaps:                # optional FHIR R4 ConceptMap files, relative to this file
//!   - ../../fhir-profiles/conceptmaps/synthea-gender.json
//! ```
//!
//! Evaluation uses [minijinja](https://docs.rs/minijinja) (Jinja, as data engineers know it
//! from dbt):
//! - a string that is exactly one `{{ expr }}` is an expression and keeps its type (string,
//!   number, bool, list, map); other strings holding `{{`, `{%` or `{#` are templates, rendered
//!   to a string and trimmed; any other value is a literal. Object keys are literal.
//! - after evaluation, nulls, undefined values, blank strings, empty arrays and empty objects
//!   are removed at every depth (FHIR forbids empty values).
//! - undefined values chain (`record.address.city` is undefined, not an error, when `address`
//!   is missing); use `| required` where a value must be present.
//! - context: `record` (the source data), `key` (the record key as a map), `source`, `entity`,
//!   `op` (`"upsert"`).
//! - besides minijinja's builtin filters and functions: `value | required` (error "required
//!   value missing" if undefined, none, blank or empty); `code | translate('table')` (the
//!   table's entry, which may be any YAML value, e.g. a Coding; an entry of `null` drops the
//!   value; a missing code stays missing; a code not in the table is an error, never passed
//!   through); `reference('Type', entity=?, key=?, suffix=?)` → `"Type/<id>"` with the id the
//!   mapping of that entity in the same source gives (defaults: this entity, this record's
//!   key; key values must have the same JSON type as in that entity's records; a missing key
//!   value leaves the reference out); `coding('system', code, display)` → a Coding, or
//!   nothing when the code is missing; `conceptmap('url', code, system=none)` → the Coding a
//!   listed ConceptMap maps the code to ([`conceptmap`]: equivalence and `unmapped` honoured;
//!   an unmapped code is a `code-invalid` error naming the map, never the code).
//! - the template root may also be one expression that yields a map (e.g. `"{{ record }}"` for
//!   sources that already send FHIR JSON); `resourceType`, if the map has one, must match.
//! - `resourceType` and `id` are set by the mapping: `id` is [`resource_id`].
//!
//! Every expression and template is compiled at load, so a syntax error is reported with the
//! file and the place (`resources[0].template.name[0].family`). At apply time, errors are an
//! OperationOutcome naming the record ([`SourceChange::label`]), the mapping file and the
//! template path (`Patient.name[0].family`), never a value.
//!
//! A delete maps to a delete of every resource the file can produce for the record, without
//! evaluating anything. A `when` that turns false on a later upsert does not delete a resource
//! made earlier.

pub mod conceptmap;
pub mod csv_records;
#[cfg(test)]
mod equivalence_tests;
mod functions;
mod json;
mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use minijinja::value::{Serde, Value};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::model::{Op, RecordKey, ResourceChange, ResourceOp, ResourceRef, SourceChange};
use crate::outcome::{Issue, Outcome};
use conceptmap::{ConceptMap, ConceptMaps};
use functions::{FnError, Tables};

/// Namespace of the v5 UUIDs used as resource ids: `9b1c4a6e-2f0d-4e8b-a3c7-5d1e8f2a6b40`.
pub const RESOURCE_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x9b1c_4a6e_2f0d_4e8b_a3c7_5d1e_8f2a_6b40);

/// The id of the resource of `resource_type` that a source record maps to.
///
/// It is the v5 UUID (lower-case, hyphenated: 36 characters, a valid FHIR id) in
/// [`RESOURCE_ID_NAMESPACE`] of the canonical string
/// `[<source>,<entity>,<key>,<resource_type>,<suffix>]`, where source, entity, resource type
/// and suffix are JSON strings (suffix `null` when absent) and key is
/// [`RecordKey::canonical`], e.g. `["app","patients",{"pk":"p-1"},"Patient",null]`. It never
/// changes for the same inputs, so replays and redeliveries address the same resource.
pub fn resource_id(
    source: &str,
    entity: &str,
    key: &RecordKey,
    resource_type: &str,
    suffix: Option<&str>,
) -> String {
    let mut name = Vec::with_capacity(128);
    push_id_prefix(&mut name, source, entity);
    push_key(&mut name, key);
    push_id_tail(&mut name, resource_type, suffix);
    v5_id(&name)
}

/// Appends `s` as a JSON string: what `serde_json::to_string(s)` gives.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// `[<source>,<entity>,` of [`resource_id`]'s canonical string.
fn push_id_prefix(buf: &mut Vec<u8>, source: &str, entity: &str) {
    buf.push(b'[');
    push_json_str(buf, source);
    buf.push(b',');
    push_json_str(buf, entity);
    buf.push(b',');
}

/// [`RecordKey::canonical`], appended.
fn push_key(buf: &mut Vec<u8>, key: &RecordKey) {
    // A BTreeMap of JSON values always serializes (`canonical` says the same).
    let _ = serde_json::to_writer(&mut *buf, &key.0);
}

/// `,<resource_type>,<suffix>]` of [`resource_id`]'s canonical string.
fn push_id_tail(buf: &mut Vec<u8>, resource_type: &str, suffix: Option<&str>) {
    buf.push(b',');
    push_json_str(buf, resource_type);
    buf.push(b',');
    match suffix {
        Some(s) => push_json_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
    buf.push(b']');
}

/// `Uuid::new_v5(&RESOURCE_ID_NAMESPACE, name).to_string()`, computed with the `sha1` crate
/// (which uses the CPU's SHA instructions where there are some; uuid's own SHA-1 is portable
/// code) and formatted without `fmt`.
fn v5_id(name: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(RESOURCE_ID_NAMESPACE.as_bytes());
    h.update(name);
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let id = uuid::Builder::from_sha1_bytes(bytes).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text).to_owned()
}

/// `s.trim().to_owned()`, without a copy when there is nothing to trim.
fn trimmed(s: String) -> String {
    let t = s.trim();
    if t.len() == s.len() { s } else { t.to_owned() }
}

/// True for names shaped like FHIR resource types (`Patient`, `MedicationRequest`).
pub(crate) fn is_resource_type(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

/// A mapping file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("{}: cannot read mapping file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not valid YAML, or not the mapping format (unknown key, wrong type, missing field).
    #[error("{origin}{}: {reason}", location(*line, *column))]
    Yaml {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        reason: String,
    },
    /// Well-formed, but wrong: a syntax error in an expression, a bad name, a duplicate.
    #[error("{origin}: {path}: {reason}")]
    Invalid {
        origin: String,
        path: String,
        reason: String,
    },
    /// Two mapping files for the same source entity.
    #[error("{second}: maps {source_name}/{entity}, already mapped by {first}")]
    Duplicate {
        source_name: String,
        entity: String,
        first: String,
        second: String,
    },
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// The mapping file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MappingFile {
    #[serde(default)]
    version: Option<u32>,
    source: String,
    entity: String,
    resources: Vec<ResourceFile>,
    #[serde(default)]
    translations: BTreeMap<String, serde_yaml_ng::Mapping>,
    /// ConceptMap JSON files, relative to the mapping file.
    #[serde(default)]
    concept_maps: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourceFile {
    resource_type: String,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    id_suffix: Option<String>,
    template: Json,
}

/// A template value, compiled.
#[derive(Debug)]
enum Node {
    /// A literal as written, and pruned ([`json::prune`]) once at load for the planned path.
    Literal {
        value: Json,
        pruned: Option<Json>,
    },
    /// One `{{ expr }}`, kept typed; `name` is its template in the environment, `plan` its
    /// direct evaluation when it has a planned shape.
    Expr {
        name: String,
        path: String,
        plan: Option<plan::Ex>,
    },
    /// A string template, rendered to a string.
    Text {
        name: String,
        path: String,
        plan: Option<Vec<plan::Seg>>,
    },
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn literal(value: Json) -> Node {
        let pruned = json::prune(value.clone());
        Node::Literal { value, pruned }
    }

    /// Gives the record fields its plans read their slots ([`plan::Fields::resolve`]).
    fn resolve_fields(&mut self, fields: &mut plan::Fields) {
        match self {
            Node::Literal { .. } => {}
            Node::Expr { plan, .. } => {
                if let Some(p) = plan {
                    fields.resolve(p);
                }
            }
            Node::Text { plan, .. } => {
                if let Some(p) = plan {
                    fields.resolve_text(p);
                }
            }
            Node::Array(items) => items.iter_mut().for_each(|n| n.resolve_fields(fields)),
            Node::Object(entries) => entries
                .iter_mut()
                .for_each(|(_, n)| n.resolve_fields(fields)),
        }
    }
}

#[derive(Debug)]
struct CompiledResource {
    resource_type: String,
    /// The `when` expression's template name and plan.
    when: Option<(String, Option<plan::Ex>)>,
    root: Node,
    /// The end of its ids' canonical string ([`push_id_tail`]).
    id_tail: Vec<u8>,
}

/// The variable a compiled expression leaves its value in.
const RESULT_VAR: &str = "__fhir_unify_value";

/// A loaded, compiled mapping file.
#[derive(Debug)]
pub struct Mapping {
    origin: String,
    source: String,
    entity: String,
    env: Environment<'static>,
    resources: Vec<CompiledResource>,
    tables: Arc<Tables>,
    maps: Arc<ConceptMaps>,
    /// The start of its ids' canonical string ([`push_id_prefix`]).
    id_prefix: Vec<u8>,
    /// The record fields its plans read, by slot.
    fields: plan::Fields,
}

impl Mapping {
    /// Parses and compiles a mapping. `origin` names it in errors (usually the file path).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Mapping, MappingError> {
        let file: MappingFile = serde_yaml_ng::from_str(text).map_err(|e| {
            let loc = e.location();
            let reason = e.to_string();
            // The location is reported separately; drop serde_yaml's copy of it.
            let reason = match &loc {
                Some(l) => reason
                    .strip_suffix(&format!(" at line {} column {}", l.line(), l.column()))
                    .map(str::to_owned)
                    .unwrap_or(reason),
                None => reason,
            };
            MappingError::Yaml {
                origin: origin.to_owned(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                reason,
            }
        })?;
        Compiler::new(origin).compile(file)
    }

    /// Reads, parses and compiles a mapping file.
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.to_owned(),
            source,
        })?;
        Mapping::from_yaml(&text, &path.display().to_string())
    }

    /// The source this mapping is for.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The entity this mapping is for.
    pub fn entity(&self) -> &str {
        &self.entity
    }

    /// Where the mapping came from (its file path, or the origin given to [`Mapping::from_yaml`]).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The (type, id) of every resource this mapping can produce for a record key.
    pub fn targets(&self, key: &RecordKey) -> Vec<ResourceRef> {
        // [`resource_id`], with the parts the mapping fixes written once, at load.
        let mut name = Vec::with_capacity(self.id_prefix.len() + 96);
        name.extend_from_slice(&self.id_prefix);
        push_key(&mut name, key);
        let common = name.len();
        self.resources
            .iter()
            .map(|r| {
                name.truncate(common);
                name.extend_from_slice(&r.id_tail);
                ResourceRef {
                    resource_type: r.resource_type.clone(),
                    id: v5_id(&name),
                }
            })
            .collect()
    }

    /// Maps one source change to its resource changes.
    ///
    /// An upsert gives one [`ResourceOp::Upsert`] per resource whose `when` holds; a delete
    /// gives a [`ResourceOp::Delete`] for every resource of the file, evaluating nothing.
    /// Every error found (not only the first) is in the outcome.
    pub fn apply(&self, change: &SourceChange) -> Result<Vec<ResourceChange>, Outcome> {
        self.apply_with(change, true)
    }

    /// [`Mapping::apply`] with every expression rendered through its compiled template, as
    /// before expressions were planned: the same results and errors, slower. Kept for the
    /// equivalence tests and the benchmark's before/after comparison.
    #[doc(hidden)]
    pub fn apply_via_templates(
        &self,
        change: &SourceChange,
    ) -> Result<Vec<ResourceChange>, Outcome> {
        self.apply_with(change, false)
    }

    /// How many of the file's expressions and string templates are planned (evaluated without
    /// the template engine), of how many.
    pub fn planned(&self) -> (usize, usize) {
        fn count(n: &Node, acc: &mut (usize, usize)) {
            match n {
                Node::Literal { .. } => {}
                Node::Expr { plan, .. } => {
                    acc.0 += usize::from(plan.is_some());
                    acc.1 += 1;
                }
                Node::Text { plan, .. } => {
                    acc.0 += usize::from(plan.is_some());
                    acc.1 += 1;
                }
                Node::Array(items) => items.iter().for_each(|i| count(i, acc)),
                Node::Object(fields) => fields.iter().for_each(|(_, i)| count(i, acc)),
            }
        }
        let mut acc = (0, 0);
        for r in &self.resources {
            if let Some((_, plan)) = &r.when {
                acc.0 += usize::from(plan.is_some());
                acc.1 += 1;
            }
            count(&r.root, &mut acc);
        }
        acc
    }

    fn apply_with(
        &self,
        change: &SourceChange,
        fast: bool,
    ) -> Result<Vec<ResourceChange>, Outcome> {
        if change.source != self.source || change.entity != self.entity {
            return Err(Outcome::from(Issue::error(
                "processing",
                format!(
                    "{}: mapping {} is for {}/{}, not {}/{}",
                    change.label(),
                    self.origin,
                    self.source,
                    self.entity,
                    change.source,
                    change.entity
                ),
            )));
        }
        let targets = self.targets(&change.key);
        if change.op == Op::Delete {
            return Ok(targets
                .into_iter()
                .map(|target| ResourceChange {
                    target,
                    op: ResourceOp::Delete,
                    lineage: change.lineage(),
                })
                .collect());
        }

        let fields = self.fields.values(&change.data);
        let ctx = Ctx {
            change,
            mapping: self,
            value: OnceLock::new(),
            scope: plan::Scope {
                record: &change.data,
                fields: &fields,
                key: &change.key,
                source: &self.source,
                entity: &self.entity,
                tables: &self.tables,
                maps: &self.maps,
            },
        };
        let mut issues = Vec::new();
        let mut out = Vec::new();
        for (index, (resource, target)) in self.resources.iter().zip(targets).enumerate() {
            let mut errors = Errors {
                change,
                origin: &self.origin,
                index,
                issues: &mut issues,
            };
            if let Some((when, when_plan)) = &resource.when {
                let planned = match when_plan.as_ref().filter(|_| fast) {
                    Some(p) => match plan::eval(p, &ctx.scope) {
                        Ok(v) => Some(Ok(v.is_true())),
                        Err(plan::Stop::Fn(e)) => Some(Err(Fail::Fn(e))),
                        Err(plan::Stop::Unsure) => None,
                    },
                    None => None,
                };
                let verdict = match planned {
                    Some(v) => v,
                    None => self
                        .eval_expr(when, ctx.value())
                        .map(|v| v.is_true())
                        .map_err(Fail::Template),
                };
                match verdict {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        errors.fail(&format!("resources[{index}].when"), &e);
                        continue;
                    }
                }
            }
            let before = errors.issues.len();
            let value = if fast {
                self.eval_planned(&resource.root, &ctx, &mut errors)
            } else {
                json::prune(self.eval_node(&resource.root, ctx.value(), &mut errors))
            };
            if errors.issues.len() > before {
                continue;
            }
            match self.finish(resource, &target, value) {
                Ok(resource) => out.push(ResourceChange {
                    target,
                    op: ResourceOp::Upsert { resource },
                    // Made per resource: most records make one, so no spare copy is made.
                    lineage: change.lineage(),
                }),
                Err(reason) => errors.push_text("structure", &resource.resource_type, &reason),
            }
        }
        if issues.is_empty() {
            Ok(out)
        } else {
            Err(Outcome { issues })
        }
    }

    /// Sets `resourceType` and `id` on an evaluated, pruned template root.
    fn finish(
        &self,
        r: &CompiledResource,
        target: &ResourceRef,
        value: Option<Json>,
    ) -> Result<Json, String> {
        let mut map = match value {
            None => serde_json::Map::new(),
            Some(Json::Object(map)) => map,
            Some(_) => return Err("the template must produce an object".to_owned()),
        };
        if let Some(t) = map.get("resourceType")
            && t.as_str() != Some(r.resource_type.as_str())
        {
            return Err(format!(
                "the template produced a resourceType other than {}",
                r.resource_type
            ));
        }
        map.insert("resourceType".into(), Json::String(r.resource_type.clone()));
        map.insert("id".into(), Json::String(target.id.clone()));
        Ok(Json::Object(map))
    }

    fn eval_expr(&self, name: &str, ctx: &Value) -> Result<Value, minijinja::Error> {
        let template = self.env.get_template(name)?;
        let captured = template.render_captured(ctx.clone())?;
        Ok(captured
            .state()
            .lookup(RESULT_VAR)
            .unwrap_or(Value::UNDEFINED))
    }

    /// Evaluates a template value, pruned as it is built ([`json::prune`] of the template
    /// path's value): planned expressions directly, the rest through their templates.
    fn eval_planned(&self, node: &Node, ctx: &Ctx<'_>, errors: &mut Errors<'_>) -> Option<Json> {
        match node {
            Node::Literal { pruned, .. } => pruned.clone(),
            Node::Expr { name, path, plan } => {
                if let Some(p) = plan {
                    match plan::eval(p, &ctx.scope) {
                        Ok(v) => return v.into_pruned(),
                        Err(plan::Stop::Fn(e)) => {
                            errors.push_fn(path, &e);
                            return None;
                        }
                        Err(plan::Stop::Unsure) => {}
                    }
                }
                json::prune(self.eval_expr_node(name, path, ctx.value(), errors))
            }
            Node::Text { name, path, plan } => {
                if let Some(p) = plan {
                    match plan::render_text(p, &ctx.scope) {
                        Ok(s) => return json::prune(Json::String(trimmed(s))),
                        Err(plan::Stop::Fn(e)) => {
                            errors.push_fn(path, &e);
                            return None;
                        }
                        Err(plan::Stop::Unsure) => {}
                    }
                }
                json::prune(self.eval_text_node(name, path, ctx.value(), errors))
            }
            Node::Array(items) => {
                let kept: Vec<Json> = items
                    .iter()
                    .filter_map(|n| self.eval_planned(n, ctx, errors))
                    .collect();
                (!kept.is_empty()).then_some(Json::Array(kept))
            }
            Node::Object(fields) => {
                // Fields are in key order (they come from a JSON map): the map is built in
                // one pass rather than by a search per key.
                let mut kept = Vec::with_capacity(fields.len());
                for (k, n) in fields {
                    if let Some(v) = self.eval_planned(n, ctx, errors) {
                        kept.push((k.clone(), v));
                    }
                }
                (!kept.is_empty())
                    .then(|| Json::Object(kept.into_iter().collect::<serde_json::Map<_, _>>()))
            }
        }
    }

    fn eval_expr_node(&self, name: &str, path: &str, ctx: &Value, errors: &mut Errors<'_>) -> Json {
        match self.eval_expr(name, ctx) {
            Ok(v) => match json::to_json(&v) {
                Ok(j) => j,
                Err(e) => {
                    errors.push_text("processing", path, &e.to_string());
                    Json::Null
                }
            },
            Err(e) => {
                errors.push(path, &e);
                Json::Null
            }
        }
    }

    fn eval_text_node(&self, name: &str, path: &str, ctx: &Value, errors: &mut Errors<'_>) -> Json {
        match self
            .env
            .get_template(name)
            .and_then(|t| t.render(ctx.clone()))
        {
            Ok(s) => Json::String(s.trim().to_owned()),
            Err(e) => {
                errors.push(path, &e);
                Json::Null
            }
        }
    }

    fn eval_node(&self, node: &Node, ctx: &Value, errors: &mut Errors<'_>) -> Json {
        match node {
            Node::Literal { value, .. } => value.clone(),
            Node::Expr { name, path, .. } => self.eval_expr_node(name, path, ctx, errors),
            Node::Text { name, path, .. } => self.eval_text_node(name, path, ctx, errors),
            Node::Array(items) => Json::Array(
                items
                    .iter()
                    .map(|n| self.eval_node(n, ctx, errors))
                    .collect(),
            ),
            Node::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, n)| (k.clone(), self.eval_node(n, ctx, errors)))
                    .collect(),
            ),
        }
    }
}

/// What expressions of one record see: the plan's scope, and the template context, made only
/// if a template is evaluated.
struct Ctx<'c> {
    change: &'c SourceChange,
    mapping: &'c Mapping,
    value: OnceLock<Value>,
    scope: plan::Scope<'c>,
}

impl Ctx<'_> {
    fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            minijinja::context! {
                record => Value::from(Serde(&self.change.data)),
                key => Value::from(Serde(&self.change.key)),
                source => self.mapping.source.clone(),
                entity => self.mapping.entity.clone(),
                op => "upsert",
            }
        })
    }
}

/// A failed `when`, from either path.
enum Fail {
    Fn(FnError),
    Template(minijinja::Error),
}

/// Collects apply-time issues for one resource of one record.
struct Errors<'a> {
    change: &'a SourceChange,
    origin: &'a str,
    index: usize,
    issues: &'a mut Vec<Issue>,
}

impl Errors<'_> {
    fn push_text(&mut self, code: &str, path: &str, reason: &str) {
        self.issues.push(
            Issue::error(
                code,
                format!(
                    "{}: mapping {} resources[{}] {path}: {reason}",
                    self.change.label(),
                    self.origin,
                    self.index
                ),
            )
            .at(path),
        );
    }

    fn fail(&mut self, path: &str, e: &Fail) {
        match e {
            Fail::Fn(e) => self.push_fn(path, e),
            Fail::Template(e) => self.push(path, e),
        }
    }

    /// Reports one of our functions' errors, word for word.
    fn push_fn(&mut self, path: &str, e: &FnError) {
        let code = match e {
            FnError::Required => "required",
            FnError::NotInTable(_)
            | FnError::BadCode(_)
            | FnError::BadConceptMapCode(_)
            | FnError::ConceptMap(conceptmap::TranslateError::Unmapped(_)) => "code-invalid",
            _ => "processing",
        };
        self.push_text(code, path, &e.to_string());
    }

    /// Reports a minijinja error. Our own filters' errors are reported word for word; for
    /// minijinja's, only the kind (their details may quote values), except for kinds whose
    /// details name mapping-file things (unknown filters, wrong arguments).
    fn push(&mut self, path: &str, err: &minijinja::Error) {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = source {
            if let Some(ours) = e.downcast_ref::<FnError>() {
                return self.push_fn(path, ours);
            }
            source = e.source();
        }
        use minijinja::ErrorKind as K;
        let reason = match err.kind() {
            K::UnknownFilter
            | K::UnknownTest
            | K::UnknownFunction
            | K::UnknownMethod
            | K::TooManyArguments
            | K::MissingArgument
            | K::SyntaxError => match err.detail() {
                Some(d) => format!("{}: {d}", err.kind()),
                None => err.kind().to_string(),
            },
            kind => format!("expression failed: {kind}"),
        };
        self.push_text("processing", path, &reason);
    }
}

/// Turns a parsed mapping file into a [`Mapping`], reporting the first problem.
struct Compiler<'a> {
    origin: &'a str,
    env: Environment<'static>,
}

impl<'a> Compiler<'a> {
    fn new(origin: &'a str) -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        Compiler { origin, env }
    }

    fn invalid(&self, path: impl Into<String>, reason: impl Into<String>) -> MappingError {
        MappingError::Invalid {
            origin: self.origin.to_owned(),
            path: path.into(),
            reason: reason.into(),
        }
    }

    fn compile(mut self, file: MappingFile) -> Result<Mapping, MappingError> {
        if let Some(v) = file.version
            && v != 1
        {
            return Err(self.invalid(
                "version",
                format!("unsupported mapping version {v} (only 1)"),
            ));
        }
        if file.source.trim().is_empty() {
            return Err(self.invalid("source", "must not be empty"));
        }
        if file.entity.trim().is_empty() {
            return Err(self.invalid("entity", "must not be empty"));
        }
        if file.resources.is_empty() {
            return Err(self.invalid("resources", "a mapping must produce at least one resource"));
        }
        let tables = Arc::new(self.tables(file.translations)?);
        self.env.add_filter("required", functions::required);
        self.env
            .add_filter("translate", functions::translate(tables.clone()));
        self.env.add_function("reference", functions::reference);
        self.env.add_function("coding", functions::coding);
        let maps = Arc::new(self.concept_maps(&file.concept_maps)?);
        self.env
            .add_function("conceptmap", functions::conceptmap(maps.clone()));

        let mut seen = BTreeSet::new();
        let mut resources = Vec::with_capacity(file.resources.len());
        for (i, r) in file.resources.into_iter().enumerate() {
            let at = format!("resources[{i}]");
            if !is_resource_type(&r.resource_type) {
                return Err(self.invalid(
                    format!("{at}.resourceType"),
                    "must be a FHIR resource type name (e.g. Patient)",
                ));
            }
            if let Some(s) = &r.id_suffix
                && (s.is_empty()
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
            {
                return Err(self.invalid(format!("{at}.idSuffix"), "must match [A-Za-z0-9.-]+"));
            }
            if !seen.insert((r.resource_type.clone(), r.id_suffix.clone())) {
                return Err(self.invalid(
                    format!("{at}.idSuffix"),
                    format!(
                        "another {} of this mapping has the same idSuffix; give each a distinct one",
                        r.resource_type
                    ),
                ));
            }
            if let Json::Object(m) = &r.template {
                for reserved in ["resourceType", "id"] {
                    if m.contains_key(reserved) {
                        return Err(self.invalid(
                            format!("{at}.template.{reserved}"),
                            "is set by the mapping; remove it from the template",
                        ));
                    }
                }
            }
            let when = match &r.when {
                None => None,
                Some(expr) => Some((
                    self.expression(i, &format!("{at}.when"), expr)?,
                    plan::parse_expr(expr),
                )),
            };
            let root = self.node(i, &format!("{at}.template"), &r.resource_type, r.template)?;
            if matches!(
                root,
                Node::Literal { .. } | Node::Array(_) | Node::Text { .. }
            ) {
                return Err(self.invalid(
                    format!("{at}.template"),
                    "must be a map (or one expression yielding a map)",
                ));
            }
            let mut id_tail = Vec::new();
            push_id_tail(&mut id_tail, &r.resource_type, r.id_suffix.as_deref());
            resources.push(CompiledResource {
                resource_type: r.resource_type,
                when,
                root,
                id_tail,
            });
        }
        let mut fields = plan::Fields::default();
        for r in &mut resources {
            if let Some((_, Some(p))) = &mut r.when {
                fields.resolve(p);
            }
            r.root.resolve_fields(&mut fields);
        }
        let mut prefix = Vec::new();
        push_id_prefix(&mut prefix, &file.source, &file.entity);
        Ok(Mapping {
            id_prefix: prefix,
            origin: self.origin.to_owned(),
            source: file.source,
            entity: file.entity,
            env: self.env,
            resources,
            tables,
            maps,
            fields,
        })
    }

    /// Loads the ConceptMaps a mapping file lists, relative to the file's folder.
    fn concept_maps(&self, files: &[String]) -> Result<ConceptMaps, MappingError> {
        let base = Path::new(self.origin).parent().unwrap_or(Path::new(""));
        let mut maps = ConceptMaps::default();
        for (i, file) in files.iter().enumerate() {
            let at = format!("conceptMaps[{i}]");
            let map = ConceptMap::load(&base.join(file))
                .map_err(|e| self.invalid(at.clone(), e.to_string()))?;
            let url = map.url().to_owned();
            if !maps.insert(map) {
                return Err(self.invalid(at, format!("a second ConceptMap with url {url}")));
            }
        }
        Ok(maps)
    }

    fn tables(
        &self,
        raw: BTreeMap<String, serde_yaml_ng::Mapping>,
    ) -> Result<Tables, MappingError> {
        let mut tables = Tables::new();
        for (name, entries) in raw {
            let mut table = BTreeMap::new();
            for (code, value) in entries {
                let code = match code {
                    serde_yaml_ng::Value::String(s) => s,
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    serde_yaml_ng::Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(self.invalid(
                            format!("translations.{name}"),
                            "codes must be strings, numbers or booleans",
                        ));
                    }
                };
                let value = serde_json::to_value(&value).map_err(|e| {
                    self.invalid(format!("translations.{name}.{code}"), e.to_string())
                })?;
                table.insert(code, value);
            }
            tables.insert(name, table);
        }
        Ok(tables)
    }

    /// Compiles an expression (no braces) into a template that leaves its value in
    /// [`RESULT_VAR`]; returns the template's name.
    fn expression(&mut self, index: usize, at: &str, expr: &str) -> Result<String, MappingError> {
        // Checked alone first, so the error speaks of the expression as written and so the
        // wrapper below cannot be escaped.
        self.env
            .compile_expression(expr)
            .map_err(|e| self.invalid(at, syntax_reason(&e)))?;
        let name = format!("{index}:{at}");
        self.env
            .add_template_owned(name.clone(), format!("{{% set {RESULT_VAR} = ({expr}) %}}"))
            .map_err(|e| self.invalid(at, syntax_reason(&e)))?;
        Ok(name)
    }

    /// Compiles a template value. `at` is its place in the file, `path` its FHIR path.
    fn node(&mut self, index: usize, at: &str, path: &str, v: Json) -> Result<Node, MappingError> {
        Ok(match v {
            Json::String(s) => {
                if let Some(inner) = single_expression(&s)
                    && self.env.compile_expression(inner).is_ok()
                {
                    Node::Expr {
                        name: self.expression(index, at, inner)?,
                        path: path.to_owned(),
                        plan: plan::parse_expr(inner),
                    }
                } else if s.contains("{{") || s.contains("{%") || s.contains("{#") {
                    let name = format!("{index}:{at}");
                    let plan = plan::parse_text(&s);
                    self.env
                        .add_template_owned(name.clone(), s)
                        .map_err(|e| self.invalid(at, syntax_reason(&e)))?;
                    Node::Text {
                        name,
                        path: path.to_owned(),
                        plan,
                    }
                } else {
                    Node::literal(Json::String(s))
                }
            }
            Json::Array(items) => Node::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.node(index, &format!("{at}[{i}]"), &format!("{path}[{i}]"), item)
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(map) => Node::Object(
                map.into_iter()
                    .map(|(k, item)| {
                        let node =
                            self.node(index, &format!("{at}.{k}"), &format!("{path}.{k}"), item)?;
                        Ok((k, node))
                    })
                    .collect::<Result<_, MappingError>>()?,
            ),
            other => Node::literal(other),
        })
    }
}

/// The inside of a string that starts with `{{` and ends with `}}`. It is one expression only
/// if it also compiles as one (`{{ a }} {{ b }}` does not: ` a }} {{ b ` is no expression).
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.trim().is_empty()).then_some(inner)
}

fn syntax_reason(e: &minijinja::Error) -> String {
    let detail = e.detail().unwrap_or("invalid");
    match e.line() {
        Some(line) if line > 1 => format!("{}: {detail} (line {line} of the expression)", e.kind()),
        _ => format!("{}: {detail}", e.kind()),
    }
}

/// Many mappings, one per (source, entity).
#[derive(Debug, Default)]
pub struct MappingSet {
    by_entity: HashMap<(String, String), Mapping>,
}

impl MappingSet {
    pub fn new() -> Self {
        MappingSet::default()
    }

    /// Adds a mapping; a second one for the same source entity is refused.
    pub fn insert(&mut self, mapping: Mapping) -> Result<(), MappingError> {
        let k = (mapping.source.clone(), mapping.entity.clone());
        if let Some(first) = self.by_entity.get(&k) {
            return Err(MappingError::Duplicate {
                source_name: k.0,
                entity: k.1,
                first: first.origin.clone(),
                second: mapping.origin,
            });
        }
        self.by_entity.insert(k, mapping);
        Ok(())
    }

    /// Loads every file; the first bad one is the error.
    pub fn load_all<P: AsRef<Path>>(
        paths: impl IntoIterator<Item = P>,
    ) -> Result<Self, MappingError> {
        let mut set = MappingSet::new();
        for p in paths {
            set.insert(Mapping::load(p.as_ref())?)?;
        }
        Ok(set)
    }

    /// The mapping of a source entity.
    pub fn get(&self, source: &str, entity: &str) -> Option<&Mapping> {
        self.by_entity.get(&(source.to_owned(), entity.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.by_entity.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_entity.is_empty()
    }

    /// Maps a change with the mapping of its source entity; none is an error outcome.
    pub fn apply(&self, change: &SourceChange) -> Result<Vec<ResourceChange>, Outcome> {
        match self.get(&change.source, &change.entity) {
            Some(m) => m.apply(change),
            None => Err(Outcome::from(Issue::error(
                "not-found",
                format!(
                    "{}: no mapping for {}/{}",
                    change.label(),
                    change.source,
                    change.entity
                ),
            ))),
        }
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}/{})", self.origin, self.source, self.entity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sequence;
    use serde_json::json;

    fn fixture_path(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
    }

    fn load(name: &str) -> Mapping {
        Mapping::load(&fixture_path(name)).unwrap()
    }

    fn load_err(name: &str) -> MappingError {
        Mapping::load(&fixture_path(name)).unwrap_err()
    }

    fn change(op: Op, data: Json) -> SourceChange {
        SourceChange {
            source: "app".into(),
            entity: "patients".into(),
            key: RecordKey::from_pairs([("pk", json!("p-1"))]),
            op,
            sequence: Sequence::parse("1405400000000002063282832").unwrap(),
            observed_at: "2024-01-02T03:04:05Z".parse().unwrap(),
            data: data.into(),
        }
    }

    fn ada() -> Json {
        json!({
            "pk": "p-1", "active": true, "last_name": "Lovelace", "first_name": "Ada",
            "sex": "F", "dob": "1815-12-10", "birth_order": 2, "clinic_id": 7,
            "weight_kg": 54.5, "marital": "M"
        })
    }

    fn with(mut data: Json, field: &str, value: Json) -> Json {
        data[field] = value;
        data
    }

    fn without(mut data: Json, field: &str) -> Json {
        data.as_object_mut().unwrap().remove(field);
        data
    }

    fn upserted(changes: &[ResourceChange]) -> Vec<&Json> {
        changes
            .iter()
            .map(|c| match &c.op {
                ResourceOp::Upsert { resource } => resource,
                ResourceOp::Delete => panic!("unexpected delete"),
            })
            .collect()
    }

    /// The ids of the fixture records, computed independently (Python `uuid.uuid5` over the
    /// canonical strings documented on [`resource_id`]).
    const PATIENT_ID: &str = "ab3afa18-1a47-55e5-a242-c53afd4856bf";
    const WEIGHT_ID: &str = "4be209d6-e2e6-5615-a938-e9508862f9c3";
    const CLINIC_7_ID: &str = "76d99fea-3289-5563-837a-3fd2002e97e2";

    #[test]
    fn resource_ids_follow_the_documented_rule() {
        let key = RecordKey::from_pairs([("pk", json!("p-1"))]);
        assert_eq!(
            resource_id("app", "patients", &key, "Patient", None),
            PATIENT_ID
        );
        let canonical = r#"["app","patients",{"pk":"p-1"},"Patient",null]"#;
        assert_eq!(
            uuid::Uuid::new_v5(&RESOURCE_ID_NAMESPACE, canonical.as_bytes()).to_string(),
            PATIENT_ID
        );
        assert_eq!(
            resource_id("app", "patients", &key, "Observation", Some("weight")),
            WEIGHT_ID
        );
        let clinic = RecordKey::from_pairs([("clinic_id", json!(7))]);
        assert_eq!(
            resource_id("app", "clinics", &clinic, "Organization", None),
            CLINIC_7_ID
        );
        // Every part matters, and the key's type too (7 is not "7").
        let other = [
            resource_id("app2", "patients", &key, "Patient", None),
            resource_id("app", "patients2", &key, "Patient", None),
            resource_id("app", "patients", &key, "Person", None),
            resource_id("app", "patients", &key, "Patient", Some("x")),
            resource_id(
                "app",
                "clinics",
                &RecordKey::from_pairs([("clinic_id", json!("7"))]),
                "Organization",
                None,
            ),
        ];
        for id in &other {
            assert_ne!(id, PATIENT_ID);
            assert_ne!(id, CLINIC_7_ID);
            assert_eq!(id.len(), 36);
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        }
    }

    /// The id function as it was first written (format!, serde_json::to_string, uuid's own
    /// SHA-1): ids are persisted, so the faster one must give the same text for every input.
    fn resource_id_as_first_written(
        source: &str,
        entity: &str,
        key: &RecordKey,
        resource_type: &str,
        suffix: Option<&str>,
    ) -> String {
        let text = |s: &str| serde_json::to_string(s).unwrap();
        let canonical = format!(
            "[{},{},{},{},{}]",
            text(source),
            text(entity),
            key.canonical(),
            text(resource_type),
            suffix.map_or_else(|| "null".to_owned(), text)
        );
        uuid::Uuid::new_v5(&RESOURCE_ID_NAMESPACE, canonical.as_bytes()).to_string()
    }

    #[test]
    fn resource_ids_are_unchanged_by_the_faster_implementation() {
        let keys = [
            RecordKey::default(),
            RecordKey::from_pairs([("pk", json!("p-1"))]),
            RecordKey::from_pairs([("Id", json!("a\"b\\c\n\u{1}é€😀")), ("STOP", json!(""))]),
            RecordKey::from_pairs([("n", json!(7)), ("f", json!(1.5)), ("b", json!(true))]),
            RecordKey::from_pairs([("x", json!(null)), ("l", json!([1, "2"]))]),
            // Long enough for a canonical string of several SHA-1 blocks.
            RecordKey::from_pairs([("long", json!("x".repeat(300)))]),
        ];
        for key in &keys {
            for (source, entity) in [("app", "patients"), ("s\"q", "e\\t"), ("", "")] {
                for (rt, suffix) in [("Patient", None), ("Observation", Some("weight.1-a"))] {
                    assert_eq!(
                        resource_id(source, entity, key, rt, suffix),
                        resource_id_as_first_written(source, entity, key, rt, suffix),
                        "{source} {entity} {key:?} {rt} {suffix:?}"
                    );
                }
            }
        }
        // The mapping's targets write the fixed parts once; the ids are the same.
        let yaml = "source: s\"x\nentity: e\nresources:\n  - resourceType: Patient\n    template: {a: b}\n  - resourceType: Observation\n    idSuffix: w\n    template: {a: b}\n";
        let m = Mapping::from_yaml(yaml, "t.yaml").unwrap();
        for key in &keys {
            let ids: Vec<String> = m.targets(key).into_iter().map(|t| t.id).collect();
            assert_eq!(
                ids,
                [
                    resource_id_as_first_written("s\"x", "e", key, "Patient", None),
                    resource_id_as_first_written("s\"x", "e", key, "Observation", Some("w")),
                ]
            );
        }
    }

    #[test]
    fn maps_a_record_with_types_kept_and_empties_removed() {
        let m = load("mapping-patients.yaml");
        assert_eq!((m.source(), m.entity()), ("app", "patients"));
        let c = change(Op::Upsert, ada());
        let out = m.apply(&c).unwrap();
        assert_eq!(out.len(), 2);
        for rc in &out {
            assert_eq!(rc.lineage, c.lineage());
        }
        assert_eq!(
            out[0].target,
            ResourceRef {
                resource_type: "Patient".into(),
                id: PATIENT_ID.into()
            }
        );
        let r = upserted(&out);
        assert_eq!(
            r[0],
            &json!({
                "resourceType": "Patient",
                "id": PATIENT_ID,
                "identifier": [{"system": "urn:fhir-unify:app:patients", "value": "p-1"}],
                "active": true,
                "name": [{"use": "official", "family": "Lovelace", "given": ["Ada"], "text": "Ada Lovelace"}],
                "gender": "female",
                "birthDate": "1815-12-10",
                "multipleBirthInteger": 2,
                "maritalStatus": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"
                }]},
                "managingOrganization": {"reference": format!("Organization/{CLINIC_7_ID}")}
            })
        );
        assert!(r[0]["multipleBirthInteger"].is_i64());
        assert_eq!(
            r[1],
            &json!({
                "resourceType": "Observation",
                "id": WEIGHT_ID,
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                "subject": {"reference": format!("Patient/{PATIENT_ID}")},
                "valueQuantity": {"value": 54.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
            })
        );
    }

    #[test]
    fn references_match_the_ids_of_the_referenced_mapping() {
        let patients = load("mapping-patients.yaml");
        let clinics = load("mapping-clinics.yaml");
        let out = patients.apply(&change(Op::Upsert, ada())).unwrap();
        let clinic_key = RecordKey::from_pairs([("clinic_id", json!(7))]);
        let target = &clinics.targets(&clinic_key)[0];
        assert_eq!(
            upserted(&out)[0]["managingOrganization"]["reference"],
            json!(target.to_string())
        );
        // Stable across loads and applications.
        let again = load("mapping-patients.yaml")
            .apply(&change(Op::Upsert, ada()))
            .unwrap();
        assert_eq!(again, out);
        // A missing key value leaves the reference (and the then-empty object) out.
        let out = patients
            .apply(&change(Op::Upsert, without(ada(), "clinic_id")))
            .unwrap();
        assert!(upserted(&out)[0].get("managingOrganization").is_none());
    }

    #[test]
    fn when_selects_resources() {
        let m = load("mapping-patients.yaml");
        let inactive = m
            .apply(&change(Op::Upsert, with(ada(), "active", json!(false))))
            .unwrap();
        assert_eq!(inactive.len(), 1);
        assert_eq!(inactive[0].target.resource_type, "Observation");
        // `active` absent is not `false`: the Patient is made.
        let out = m
            .apply(&change(Op::Upsert, without(ada(), "active")))
            .unwrap();
        assert_eq!(out.len(), 2);
        assert!(upserted(&out)[0].get("active").is_none());
        for data in [
            without(ada(), "weight_kg"),
            with(ada(), "weight_kg", Json::Null),
        ] {
            let out = m.apply(&change(Op::Upsert, data)).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].target.resource_type, "Patient");
        }
    }

    #[test]
    fn required_missing_names_record_file_and_path_not_values() {
        let m = load("mapping-patients.yaml");
        for data in [
            without(ada(), "last_name"),
            with(ada(), "last_name", json!("  ")),
            with(ada(), "last_name", Json::Null),
        ] {
            let c = change(Op::Upsert, data);
            let outcome = m.apply(&c).unwrap_err();
            assert_eq!(outcome.issues.len(), 1, "{outcome:#?}");
            let issue = &outcome.issues[0];
            assert_eq!(issue.code, "required");
            assert_eq!(issue.expression, ["Patient.name[0].family"]);
            assert!(
                issue.diagnostics.contains(&c.label()),
                "{}",
                issue.diagnostics
            );
            assert!(issue.diagnostics.contains("mapping-patients.yaml"));
            assert!(issue.diagnostics.contains("required value missing"));
            assert!(!issue.diagnostics.contains("Ada"));
        }
    }

    #[test]
    fn translate_known_unknown_null_and_missing_codes() {
        let m = load("mapping-patients.yaml");
        let g = |data: Json| m.apply(&change(Op::Upsert, data));
        assert_eq!(
            upserted(&g(with(ada(), "sex", json!("M"))).unwrap())[0]["gender"],
            "male"
        );
        // A missing code stays missing; a code mapped to null is dropped.
        assert!(
            upserted(&g(without(ada(), "sex")).unwrap())[0]
                .get("gender")
                .is_none()
        );
        let out = g(with(ada(), "marital", json!("?"))).unwrap();
        assert!(upserted(&out)[0].get("maritalStatus").is_none());
        // A code not in the table is an error naming the table, not the code.
        let outcome = g(with(ada(), "sex", json!("Zq"))).unwrap_err();
        assert_eq!(outcome.issues.len(), 1);
        let issue = &outcome.issues[0];
        assert_eq!(issue.code, "code-invalid");
        assert_eq!(issue.expression, ["Patient.gender"]);
        assert!(issue.diagnostics.contains("translation table `gender`"));
        assert!(!issue.diagnostics.contains("Zq"));
        // Several errors in one record are all reported.
        let both = g(with(with(ada(), "sex", json!("Zq")), "marital", json!("W"))).unwrap_err();
        let places: Vec<_> = both
            .issues
            .iter()
            .map(|i| i.expression[0].as_str())
            .collect();
        assert_eq!(places, ["Patient.gender", "Patient.maritalStatus"]);
    }

    #[test]
    fn translate_numeric_and_boolean_codes_and_unknown_tables() {
        let yaml = r#"
source: s
entity: e
resources:
  - resourceType: Basic
    template:
      a: "{{ record.n | translate('t') }}"
      b: "{{ record.b | translate('t') }}"
      c: "{{ record.other | translate('nope') }}"
translations:
  t: { 1: one, true: yes-code }
"#;
        let m = Mapping::from_yaml(yaml, "inline.yaml").unwrap();
        let mut c = change(Op::Upsert, json!({"n": 1, "b": true, "other": "x"}));
        c.source = "s".into();
        c.entity = "e".into();
        let outcome = m.apply(&c).unwrap_err();
        assert_eq!(outcome.issues.len(), 1, "{outcome:#?}");
        assert_eq!(outcome.issues[0].expression, ["Basic.c"], "{outcome:#?}");
        assert!(
            outcome.issues[0]
                .diagnostics
                .contains("unknown translation table `nope`")
        );
        c.data = json!({"n": 1, "b": true}).into();
        // An unknown table is a bug in the mapping: reported even when the value is missing.
        assert!(m.apply(&c).is_err());
        let m = Mapping::from_yaml(&yaml.replace("'nope'", "'t'"), "inline.yaml").unwrap();
        let out = m.apply(&c).unwrap();
        assert_eq!(upserted(&out)[0]["a"], "one");
        assert_eq!(upserted(&out)[0]["b"], "yes-code");
    }

    #[test]
    fn delete_deletes_every_resource_without_evaluating() {
        let m = load("mapping-patients.yaml");
        // No data at all: nothing is evaluated, so nothing can fail.
        let c = change(Op::Delete, Json::Null);
        let out = m.apply(&c).unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.target.to_string(), r.op.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (format!("Patient/{PATIENT_ID}"), ResourceOp::Delete),
                (format!("Observation/{WEIGHT_ID}"), ResourceOp::Delete)
            ]
        );
        assert!(out.iter().all(|r| r.lineage == c.lineage()));
    }

    #[test]
    fn expressions_keep_types_templates_make_strings() {
        let yaml = r#"
source: s
entity: e
resources:
  - resourceType: Basic
    template:
      int: "{{ record.n }}"
      float: "{{ record.f }}"
      whole_float: "{{ record.w }}"
      bool: "{{ record.flag }}"
      list: "{{ record.items }}"
      map: "{{ record.obj }}"
      sum: "{{ record.n + 1 }}"
      text: "n={{ record.n }}"
      padded: "  {{ record.s }}  "
      literal_number: 5
      literal_null: null
      dict_literal: "{{ {'a': {'b': record.n}} }}"
      gone: "{{ record.nothing }}"
      gone_too: "{{ none }}"
      builtin: "{{ record.s | upper }}"
"#;
        let m = Mapping::from_yaml(yaml, "inline.yaml").unwrap();
        let mut c = change(
            Op::Upsert,
            json!({"n": 41, "f": 1.25, "w": 2.0, "flag": false, "items": ["a", "", null],
                   "obj": {"k": "v", "e": []}, "s": "x"}),
        );
        c.source = "s".into();
        c.entity = "e".into();
        let out = m.apply(&c).unwrap();
        let r = upserted(&out)[0];
        let id = resource_id("s", "e", &c.key, "Basic", None);
        assert_eq!(
            r,
            &json!({
                "resourceType": "Basic", "id": id,
                "int": 41, "float": 1.25, "whole_float": 2.0, "bool": false, "list": ["a"],
                "map": {"k": "v"}, "sum": 42, "text": "n=41", "padded": "x",
                "literal_number": 5, "dict_literal": {"a": {"b": 41}}, "builtin": "X"
            })
        );
        assert!(r["whole_float"].is_f64());
        assert!(r["int"].is_i64());
    }

    #[test]
    fn template_root_may_be_one_expression() {
        let yaml = "source: s\nentity: e\nresources:\n  - resourceType: Patient\n    template: \"{{ record }}\"\n";
        let m = Mapping::from_yaml(yaml, "passthrough.yaml").unwrap();
        let mut c = change(
            Op::Upsert,
            json!({"resourceType": "Patient", "id": "theirs", "gender": "male", "name": []}),
        );
        c.source = "s".into();
        c.entity = "e".into();
        let out = m.apply(&c).unwrap();
        let id = resource_id("s", "e", &c.key, "Patient", None);
        assert_eq!(
            upserted(&out)[0],
            &json!({"resourceType": "Patient", "id": id, "gender": "male"})
        );
        c.data = json!({"resourceType": "Practitioner"}).into();
        let o = m.apply(&c).unwrap_err();
        assert_eq!(o.issues[0].code, "structure");
        assert_eq!(o.issues[0].expression, ["Patient"]);
        c.data = json!("just a string").into();
        let o = m.apply(&c).unwrap_err();
        assert!(o.issues[0].diagnostics.contains("must produce an object"));
        assert!(!o.issues[0].diagnostics.contains("just a string"));
    }

    #[test]
    fn runtime_errors_never_quote_values() {
        let yaml = r#"
source: s
entity: e
resources:
  - resourceType: Basic
    template:
      a: "{{ record.big * record.big * record.big }}"
      b: "{{ record.s | no_such_filter }}"
      c: "{{ reference('not a type') }}"
"#;
        let m = Mapping::from_yaml(yaml, "inline.yaml").unwrap();
        let mut c = change(Op::Upsert, json!({"big": i64::MAX, "s": "secret-value"}));
        c.source = "s".into();
        c.entity = "e".into();
        let o = m.apply(&c).unwrap_err();
        let places: Vec<_> = o.issues.iter().map(|i| i.expression[0].as_str()).collect();
        assert_eq!(places, ["Basic.a", "Basic.b", "Basic.c"]);
        let text = serde_json::to_string(&o.to_fhir()).unwrap();
        assert!(!text.contains(&i64::MAX.to_string()), "{text}");
        assert!(!text.contains("secret-value"), "{text}");
        assert!(o.issues[1].diagnostics.contains("no_such_filter"), "{text}");
    }

    #[test]
    fn a_failing_when_is_reported_at_its_place() {
        let yaml = "source: s\nentity: e\nresources:\n  - resourceType: Basic\n    when: \"record.a | nope\"\n    template: {a: 1}\n";
        let m = Mapping::from_yaml(yaml, "x.yaml").unwrap();
        let mut c = change(Op::Upsert, json!({"a": 1}));
        c.source = "s".into();
        c.entity = "e".into();
        let o = m.apply(&c).unwrap_err();
        assert_eq!(o.issues[0].expression, ["resources[0].when"]);
        assert!(o.issues[0].diagnostics.contains("unknown filter"), "{o:#?}");
    }

    #[test]
    fn conceptmap_and_coding_functions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cm.json"),
            json!({"resourceType": "ConceptMap", "url": "urn:cm:sex", "group": [{
                "source": "urn:src", "target": "http://hl7.org/fhir/administrative-gender",
                "element": [{"code": "M", "target": [{"code": "male", "equivalence": "equivalent"}]}]
            }]})
            .to_string(),
        )
        .unwrap();
        let origin = dir.path().join("m.yaml");
        let yaml = r#"
source: s
entity: e
conceptMaps: [cm.json]
resources:
  - resourceType: Basic
    template:
      a: "{{ conceptmap('urn:cm:sex', record.sex) }}"
      b: "{{ coding('http://snomed.info/sct', record.code, record.text) }}"
      c: "{{ conceptmap('urn:cm:other', record.sex) }}"
"#;
        let m = Mapping::from_yaml(yaml, &origin.display().to_string()).unwrap();
        let mut c = change(Op::Upsert, json!({"sex": "M", "code": "123", "text": "T"}));
        c.source = "s".into();
        c.entity = "e".into();
        // An unknown ConceptMap url is a mapping bug: reported at its place.
        let o = m.apply(&c).unwrap_err();
        assert_eq!(o.issues.len(), 1, "{o:#?}");
        assert_eq!(o.issues[0].expression, ["Basic.c"]);
        assert!(
            o.issues[0]
                .diagnostics
                .contains("unknown ConceptMap `urn:cm:other`")
        );
        let m = Mapping::from_yaml(
            &yaml.replace(
                "      c: \"{{ conceptmap('urn:cm:other', record.sex) }}\"\n",
                "",
            ),
            &origin.display().to_string(),
        )
        .unwrap();
        let out = m.apply(&c).unwrap();
        let r = upserted(&out)[0];
        assert_eq!(
            r["a"],
            json!({"system": "http://hl7.org/fhir/administrative-gender", "code": "male"})
        );
        assert_eq!(
            r["b"],
            json!({"system": "http://snomed.info/sct", "code": "123", "display": "T"})
        );
        // `system` by keyword (as the README writes it) and by position, on the plan and on the
        // template path alike; a wrong source system is not mapped.
        for form in ["system='urn:src'", "'urn:src'"] {
            let kw = Mapping::from_yaml(
                &format!(
                    "source: s\nentity: e\nconceptMaps: [cm.json]\nresources:\n  - resourceType: Basic\n    template:\n      a: \"{{{{ conceptmap('urn:cm:sex', record.sex, {form}) }}}}\"\n"
                ),
                &origin.display().to_string(),
            )
            .unwrap();
            for r in [kw.apply(&c).unwrap(), kw.apply_via_templates(&c).unwrap()] {
                assert_eq!(upserted(&r)[0]["a"]["code"], "male", "{form}");
            }
        }
        // Missing codes leave both out (no lone `system`).
        c.data = json!({}).into();
        let out = m.apply(&c).unwrap();
        assert!(upserted(&out)[0].get("a").is_none() && upserted(&out)[0].get("b").is_none());
        // An unmapped code: code-invalid, naming the map, the mapping file, the place and the
        // record, never the code.
        c.data = json!({"sex": "Secret-Q"}).into();
        let o = m.apply(&c).unwrap_err();
        let issue = &o.issues[0];
        assert_eq!(issue.code, "code-invalid");
        assert_eq!(issue.expression, ["Basic.a"]);
        for part in ["urn:cm:sex", "m.yaml", &c.label()] {
            assert!(
                issue.diagnostics.contains(part),
                "{part}: {}",
                issue.diagnostics
            );
        }
        assert!(!issue.diagnostics.contains("Secret-Q"));
        // A ConceptMap file that is missing or bad is refused at load, with its place.
        for (file, text) in [
            ("none.json", None),
            ("bad.json", Some("{\"resourceType\": \"ConceptMap\"}")),
        ] {
            if let Some(t) = text {
                std::fs::write(dir.path().join(file), t).unwrap();
            }
            let e = Mapping::from_yaml(
                &yaml.replace("cm.json", file),
                &origin.display().to_string(),
            )
            .unwrap_err();
            assert!(
                matches!(&e, MappingError::Invalid { path, .. } if path == "conceptMaps[0]"),
                "{e}"
            );
        }
        let twice = yaml.replace("[cm.json]", "[cm.json, cm.json]");
        assert!(Mapping::from_yaml(&twice, &origin.display().to_string()).is_err());
    }

    #[test]
    fn mappings_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Mapping>();
        shared::<MappingSet>();
    }

    #[test]
    fn yaml_errors_give_file_and_line() {
        match load_err("mapping-bad-yaml.yaml") {
            MappingError::Yaml {
                origin,
                line,
                reason,
                ..
            } => {
                assert!(origin.ends_with("mapping-bad-yaml.yaml"));
                assert_eq!(line, Some(7), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let e = load_err("mapping-unknown-key.yaml");
        let text = e.to_string();
        match e {
            MappingError::Yaml { line, reason, .. } => {
                assert_eq!(line, Some(7), "{reason}");
                assert!(reason.contains("unknown field `tempalte`"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(text.contains("mapping-unknown-key.yaml:7:"), "{text}");
        // Unknown keys are refused at the top level too.
        let e = Mapping::from_yaml("source: a\nentity: b\nresources: []\nextra: 1\n", "x.yaml");
        assert!(
            matches!(e, Err(MappingError::Yaml { line: Some(4), .. })),
            "{e:?}"
        );
        let e = Mapping::load(&fixture_path("mapping-does-not-exist.yaml")).unwrap_err();
        assert!(matches!(e, MappingError::Read { .. }));
    }

    #[test]
    fn expression_syntax_errors_are_found_at_load() {
        match load_err("mapping-bad-expression.yaml") {
            MappingError::Invalid {
                origin,
                path,
                reason,
            } => {
                assert!(origin.ends_with("mapping-bad-expression.yaml"));
                assert_eq!(path, "resources[0].template.name[0].family");
                assert!(reason.contains("syntax error"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let base = "source: s\nentity: e\nresources:\n  - resourceType: Basic\n";
        let cases = [
            (
                "    when: \"record.a ==\"\n    template: {a: 1}\n",
                "resources[0].when",
            ),
            (
                "    template: {a: \"x {{ record.a \"}\n",
                "resources[0].template.a",
            ),
            (
                "    template: {a: \"{% if %}\"}\n",
                "resources[0].template.a",
            ),
            ("    template: {id: x}\n", "resources[0].template.id"),
            (
                "    template: {resourceType: Basic}\n",
                "resources[0].template.resourceType",
            ),
            ("    template: [1]\n", "resources[0].template"),
            ("    template: \"plain\"\n", "resources[0].template"),
            (
                "    idSuffix: \"a b\"\n    template: {a: 1}\n",
                "resources[0].idSuffix",
            ),
        ];
        for (rest, expected) in cases {
            match Mapping::from_yaml(&format!("{base}{rest}"), "x.yaml") {
                Err(MappingError::Invalid { path, .. }) => assert_eq!(path, expected, "{rest}"),
                other => panic!("{rest}: {other:?}"),
            }
        }
        let twice = format!(
            "{base}    template: {{a: 1}}\n  - resourceType: Basic\n    template: {{a: 2}}\n"
        );
        assert!(matches!(
            Mapping::from_yaml(&twice, "x.yaml"),
            Err(MappingError::Invalid { path, .. }) if path == "resources[1].idSuffix"
        ));
        let lower =
            "source: s\nentity: e\nresources:\n  - resourceType: patient\n    template: {a: 1}\n";
        assert!(matches!(
            Mapping::from_yaml(lower, "x.yaml"),
            Err(MappingError::Invalid { .. })
        ));
        let v2 = format!("version: 2\n{base}    template: {{a: 1}}\n");
        assert!(
            matches!(Mapping::from_yaml(&v2, "x.yaml"), Err(MappingError::Invalid { path, .. }) if path == "version")
        );
    }

    #[test]
    fn mapping_set_routes_by_source_and_entity() {
        let mut set = MappingSet::load_all([
            fixture_path("mapping-patients.yaml"),
            fixture_path("mapping-clinics.yaml"),
        ])
        .unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.get("app", "clinics").unwrap().entity(), "clinics");
        assert!(set.get("app", "nope").is_none());
        assert_eq!(set.apply(&change(Op::Upsert, ada())).unwrap().len(), 2);
        let mut c = change(Op::Upsert, ada());
        c.entity = "visits".into();
        let o = set.apply(&c).unwrap_err();
        assert_eq!(o.issues[0].code, "not-found");
        assert!(o.issues[0].diagnostics.contains(&c.label()));
        let dup = set.insert(load("mapping-clinics.yaml")).unwrap_err();
        assert!(matches!(dup, MappingError::Duplicate { .. }));
        // A mapping applied to another entity's change refuses it.
        let o = load("mapping-clinics.yaml")
            .apply(&change(Op::Upsert, ada()))
            .unwrap_err();
        assert_eq!(o.issues[0].code, "processing");
    }
}
