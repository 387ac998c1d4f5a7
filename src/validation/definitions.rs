//! The compiled FHIR R4 core definitions (`fhir-profiles/r4/definitions.json` and
//! `fhir-profiles/r4/types.ndjson`, written by `fhir-profiles/generate.sh` from HL7's own
//! StructureDefinitions, ValueSets and CodeSystems), loaded into lookup tables the structural
//! validator walks.
//!
//! A type's tables are built on its first use, from its own line of `types.ndjson`, and kept:
//! a Lambda that validates Patients parses and indexes the few dozen types a Patient holds,
//! not all 209 (the validate function's cold start). Once built, a type is indexed for the
//! walk: the children of every element path, and for each child the JSON property names it
//! may appear under (`valueQuantity` for `value[x]`). The build is thread-safe (one
//! `OnceLock` per type) and never re-entrant: an element's checks need the root invariants of
//! its type (Extension's elements are Extensions), which have a cell of their own, computed
//! from that type's line alone.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::ValidationError;
use super::lexical::Form;

/// The generated definitions but the types' elements (see `fhir-profiles/README.md`).
const R4_DEFINITIONS: &str = include_str!("../../fhir-profiles/r4/definitions.json");
/// Each type's elements, one line per type sorted by name: `{"elements":[...],"name":"X"}`.
const R4_TYPES: &str = include_str!("../../fhir-profiles/r4/types.ndjson");

#[derive(Debug, Deserialize)]
struct RawDefinitions {
    #[serde(rename = "fhirVersion")]
    fhir_version: String,
    primitives: HashMap<String, Option<String>>,
    types: HashMap<String, RawTypeHeader>,
    #[serde(rename = "valueSets")]
    value_sets: HashMap<String, RawValueSet>,
    #[serde(rename = "codeSystems")]
    code_systems: HashMap<String, Vec<String>>,
    /// Code system → code → display (older files have none).
    #[serde(default)]
    displays: HashMap<String, HashMap<String, String>>,
    /// Core search parameter URL → its type (`token`, `string`…).
    #[serde(default, rename = "searchParams")]
    search_params: HashMap<String, String>,
    /// Core extension URL → its contexts, `[type, expression]`.
    #[serde(default, rename = "extensionContexts")]
    extension_contexts: HashMap<String, Vec<(String, String)>>,
}

#[derive(Debug, Deserialize)]
struct RawTypeHeader {
    kind: String,
    base: Option<String>,
    #[serde(rename = "abstract")]
    is_abstract: bool,
}

/// One line of `types.ndjson`.
#[derive(Debug, Deserialize)]
struct RawTypeLine {
    name: String,
    elements: Vec<RawElement>,
}

/// One line of `types.ndjson` read for its root element only (the others are skipped, not
/// built): what another type's elements need of it.
#[derive(Debug, Deserialize)]
struct RawTypeRoot {
    name: String,
    elements: FirstElement,
}

/// The first element of a list, the rest skipped.
#[derive(Debug)]
struct FirstElement(Option<RawElement>);

impl<'de> Deserialize<'de> for FirstElement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = FirstElement;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of elements")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FirstElement, A::Error> {
                let first = seq.next_element::<RawElement>()?;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstElement(first))
            }
        }
        d.deserialize_seq(Visit)
    }
}

#[derive(Debug, Deserialize)]
struct RawElement {
    p: String,
    min: u32,
    max: String,
    #[serde(default)]
    t: Vec<RawTypeRef>,
    cr: Option<String>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    b: Option<(String, String)>,
    /// key, severity, expression, human text (older files have no human text).
    #[serde(default)]
    inv: Vec<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct RawTypeRef {
    c: String,
    #[serde(default)]
    r: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawValueSet {
    codes: HashMap<String, Vec<String>>,
    open: Vec<String>,
}

/// What kind of type a StructureDefinition defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Primitive,
    Complex,
    Resource,
}

/// Binding strength (FHIR `BindingStrength`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    Required,
    Extensible,
    Preferred,
    Example,
}

/// One allowed type of an element.
#[derive(Debug, Clone)]
pub struct TypeRef {
    /// FHIR type code (`HumanName`, `string`), or `System.<fhir type>` for the few elements
    /// whose JSON has no `_name` sibling (`Element.id`, `Extension.url`).
    pub code: String,
    /// For `Reference`/`canonical`: the resource types it may point at (empty: any).
    pub targets: Vec<String>,
    /// True if `code` is a primitive type (`System.x` included), set at load.
    pub primitive: bool,
}

/// One element of a type's snapshot.
#[derive(Debug, Clone)]
pub struct ElementDef {
    /// Path below the type's root (`name`, `contact.name`); empty for the root.
    pub path: String,
    /// The last path segment, without `[x]`.
    pub name: String,
    pub choice: bool,
    pub min: u32,
    /// `None` for `*`.
    pub max: Option<u32>,
    pub types: Vec<TypeRef>,
    /// For elements defined as another element of the same type (`Questionnaire.item.item`),
    /// that element's path below the root.
    pub content_reference: Option<String>,
    pub fixed: Option<Value>,
    pub pattern: Option<Value>,
    pub binding: Option<(Strength, String)>,
    /// FHIRPath invariants, compiled once per distinct expression at load.
    pub invariants: Vec<Invariant>,
    /// Per type (in `types` order): the JSON member name (`valueQuantity`, or `name` for a
    /// non-choice element), its `_` sibling, and whether the type is a FHIR primitive that
    /// may have one. Computed once at load so the walker allocates nothing to look them up.
    pub json_names: Vec<(String, String, bool)>,
    /// True if the element has children defined inline (a backbone element).
    pub has_children: bool,
    /// The members an object here may have: the element's direct children, or for a content
    /// reference those of the element it names. Computed once at load.
    pub children: Children,
    /// Per type (in `types` order; one entry when there is no type): the FHIRPath invariants
    /// the walker evaluates on a value of that type here. The element's own, then those of
    /// the type's root not already among them (Period's per-1 on every Period), less the
    /// ones the walker reads off the JSON itself ([`WALKER_INVARIANTS`]). Computed once at
    /// load, so validating looks nothing up.
    pub checks: Vec<Arc<[Invariant]>>,
}

impl ElementDef {
    /// True if the element repeats (`max` above 1): FHIR JSON then requires an array.
    pub fn is_array(&self) -> bool {
        self.max.is_none_or(|m| m > 1)
    }
}

/// Core invariants the walker checks itself, with finer messages, while reading the JSON:
/// ele-1 (no empty values: objects, arrays, strings, nulls), txt-1/txt-2 (narrative XHTML)
/// and ref-1 (`#id` references resolve). They are left out of [`ElementDef::checks`].
pub(crate) const WALKER_INVARIANTS: &[&str] = &["ele-1", "txt-1", "txt-2", "ref-1"];

/// One FHIRPath invariant of an element (`pat-1`), compiled once at load.
#[derive(Debug, Clone)]
pub struct Invariant {
    pub key: String,
    /// True for `severity: error`, false for warnings.
    pub error: bool,
    /// The constraint's human text (may be empty in old compiled files).
    pub human: String,
    /// The compiled expression, or why it did not compile (reported by a load test and, at
    /// validation time, as an information issue: never silently skipped).
    pub expression: Result<Arc<fhirpath::Expression>, String>,
}

/// Compiles each distinct expression once.
#[derive(Debug, Default)]
pub(crate) struct InvariantCache(HashMap<String, Result<Arc<fhirpath::Expression>, String>>);

impl InvariantCache {
    pub(crate) fn invariant(&mut self, raw: &[String]) -> Option<Invariant> {
        let [key, severity, expression, rest @ ..] = raw else {
            return None;
        };
        let expression = errata(key, expression);
        let compiled = self
            .0
            .entry(expression.to_owned())
            .or_insert_with(|| {
                fhirpath::Expression::compile(expression)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone();
        Some(Invariant {
            key: key.clone(),
            error: severity != "warning",
            human: rest.first().cloned().unwrap_or_default(),
            expression: compiled,
        })
    }
}

/// Published R4 invariants whose expression contradicts their own human text, corrected as
/// the reference validator corrects them (and as R4B/R5 publish them).
fn errata<'e>(key: &str, expression: &'e str) -> &'e str {
    match (key, expression) {
        // "If there are more than one enableWhen, enableBehavior must be specified".
        ("que-12", "enableWhen.count() > 2 implies enableBehavior.exists()") => {
            "enableWhen.count() > 1 implies enableBehavior.exists()"
        }
        _ => expression,
    }
}

/// Published R4 extension contexts that R4's own definitions contradict, corrected as later
/// versions publish them: `structuredefinition-fhir-type` names `ElementDefinition.type.code`,
/// yet R4's snapshots carry it on `ElementDefinition.type` (its R4B/R5 context).
fn extension_errata(
    mut contexts: HashMap<String, Vec<(String, String)>>,
) -> HashMap<String, Vec<(String, String)>> {
    if let Some(c) =
        contexts.get_mut("http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type")
    {
        c.push(("element".to_owned(), "ElementDefinition.type".to_owned()));
    }
    contexts
}

/// A hash map keyed by names from the definitions (not by input: no flooding concern), with a
/// fast hasher: the walker looks names up at every element.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
/// The set counterpart of [`FastMap`].
pub type FastSet<K> = HashSet<K, foldhash::fast::FixedState>;

/// The child elements an object may hold, and the JSON member names they appear under, so
/// that the walker reads each member of an object once instead of looking up every name
/// every child may take (`value[x]` alone has 50).
#[derive(Debug, Clone, Default)]
pub struct Children {
    /// Indexes in the type's `elements`, in definition order.
    pub list: Vec<usize>,
    /// JSON member name → (position in `list`, index of the type in the child's `types`,
    /// whether it is a primitive's `_` sibling). `None` when two children claim one name
    /// (no core definition does): the walker then looks each child's names up instead.
    pub keys: Option<FastMap<String, (usize, usize, bool)>>,
}

impl Children {
    fn new(list: Vec<usize>, elements: &[ElementDef]) -> Self {
        let mut keys = FastMap::default();
        let mut clash = false;
        for (pos, &i) in list.iter().enumerate() {
            let Some(e) = elements.get(i) else {
                continue;
            };
            // A non-choice element is found under its first name only (as the walker reads it).
            let names = if e.choice {
                &e.json_names[..]
            } else {
                e.json_names.get(..1).unwrap_or(&[])
            };
            for (ti, (key, ukey, primitive)) in names.iter().enumerate() {
                clash |= keys.insert(key.clone(), (pos, ti, false)).is_some();
                if *primitive {
                    clash |= keys.insert(ukey.clone(), (pos, ti, true)).is_some();
                }
            }
        }
        Children {
            list,
            keys: (!clash).then_some(keys),
        }
    }
}

/// One type (resource, data type or primitive).
#[derive(Debug)]
pub struct TypeDef {
    pub name: String,
    pub kind: Kind,
    pub base: Option<String>,
    pub is_abstract: bool,
    pub elements: Vec<ElementDef>,
    /// Element path → indexes of its direct children in `elements`.
    children: HashMap<String, Vec<usize>>,
    /// The direct children of the root (`children("")`), looked up once at load.
    pub root_children: Children,
    /// The root element's invariants the walker evaluates on the whole value (a resource's
    /// dom-2…, a data type's per-1), less [`WALKER_INVARIANTS`].
    pub root_checks: Vec<Invariant>,
}

impl TypeDef {
    /// The direct children of the element at `path` (empty for a leaf).
    pub fn children(&self, path: &str) -> &[usize] {
        self.children.get(path).map(Vec::as_slice).unwrap_or(&[])
    }

    /// True if the element at `path` has children defined inline (a backbone element).
    pub fn has_children(&self, path: &str) -> bool {
        self.children.contains_key(path)
    }
}

/// An expanded value set: the codes it holds per system, and the systems (or value sets) it
/// draws on that are not held, so membership there cannot be decided.
#[derive(Debug, Default)]
pub struct ValueSetDef {
    pub codes: HashMap<String, HashSet<String>>,
    pub open: Vec<String>,
}

impl ValueSetDef {
    /// True if every code of the value set is known here.
    pub fn is_complete(&self) -> bool {
        self.open.is_empty()
    }

    /// True if the value set holds `code` in any system (for a bare `code` element).
    pub fn has_code(&self, code: &str) -> bool {
        self.codes.values().any(|c| c.contains(code))
    }
}

/// The compiled FHIR R4 definitions.
#[derive(Debug)]
pub struct Definitions {
    pub fhir_version: String,
    types: FastMap<String, TypeEntry>,
    /// The types' lines (`types.ndjson`), each parsed on its type's first use.
    type_lines: TypeLines,
    primitives: FastMap<String, Option<Primitive>>,
    /// Each distinct invariant expression compiled once, across the types built so far.
    invariant_cache: Mutex<InvariantCache>,
    value_sets: FastMap<String, ValueSetDef>,
    code_systems: FastMap<String, HashSet<String>>,
    displays: FastMap<String, HashMap<String, String>>,
    search_params: HashMap<String, String>,
    extension_contexts: FastMap<String, Vec<(String, String)>>,
    /// Code systems loaded as fragments (a subset: a code not found is not an error).
    fragments: FastSet<String>,
    /// CodeSystem supplements loaded (they add designations; they are no system of codes).
    supplements: FastSet<String>,
}

/// A primitive type's lexical rule: its regex, and the hand-written checker that accepts
/// exactly what the regex accepts when the pattern is one of the core ones.
#[derive(Debug)]
struct Primitive {
    regex: Regex,
    form: Option<Form>,
}

/// The text of `types.ndjson` (borrowed from the binary, or owned for other text).
struct TypeLines(Cow<'static, str>);

impl std::fmt::Debug for TypeLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TypeLines({} bytes)", self.0.len())
    }
}

/// A type as the header names it, its tables built on first use.
#[derive(Debug)]
struct TypeEntry {
    name: String,
    kind: Kind,
    base: Option<String>,
    is_abstract: bool,
    /// Its line in [`Definitions::type_lines`].
    line: Range<usize>,
    /// The root element's invariants the walker evaluates ([`TypeDef::root_checks`]), which
    /// other types' elements of this type need: computed apart from the full build.
    root: OnceLock<Arc<[Invariant]>>,
    /// The tables, or why the type's line did not build (reported, never panicked on).
    built: OnceLock<Result<TypeDef, String>>,
}

impl Definitions {
    /// The FHIR R4 (4.0.1) core definitions, from the embedded compiled files. Types are built
    /// on first use (a test builds every one of them).
    pub fn r4() -> Result<Self, ValidationError> {
        Self::lazy(R4_DEFINITIONS, Cow::Borrowed(R4_TYPES))
    }

    /// The process-wide R4 definitions, loaded on first call.
    pub fn shared() -> Result<&'static Definitions, ValidationError> {
        static SHARED: OnceLock<Result<Definitions, ValidationError>> = OnceLock::new();
        SHARED
            .get_or_init(Definitions::r4)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Definitions from compiled text (the two files `compile_definitions.py` writes), every
    /// type built at once so that a broken one is an error here.
    pub fn from_json(definitions: &str, types: &str) -> Result<Self, ValidationError> {
        let defs = Self::lazy(definitions, Cow::Owned(types.to_owned()))?;
        defs.build_all()?;
        Ok(defs)
    }

    /// Builds every type not built yet; the first that does not build is the error.
    pub fn build_all(&self) -> Result<(), ValidationError> {
        let mut names: Vec<&String> = self.types.keys().collect();
        names.sort_unstable();
        for name in names {
            if let Some(Err(reason)) = self.types.get(name.as_str()).map(|e| self.built(e)) {
                return Err(ValidationError::DefinitionsShape(reason.clone()));
            }
        }
        Ok(())
    }

    /// Parses the header and indexes the type lines; builds no type.
    fn lazy(text: &str, type_lines: Cow<'static, str>) -> Result<Self, ValidationError> {
        let raw: RawDefinitions = serde_json::from_str(text)
            .map_err(|e| ValidationError::DefinitionsParse(e.to_string()))?;
        let mut primitives =
            FastMap::with_capacity_and_hasher(raw.primitives.len(), Default::default());
        for (name, pattern) in raw.primitives {
            let rule = match pattern {
                Some(p) => Some(Primitive {
                    regex: Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                        ValidationError::DefinitionsShape(format!("regex of {name}: {e}"))
                    })?,
                    form: Form::for_pattern(&p),
                }),
                None => None,
            };
            primitives.insert(name, rule);
        }
        // The lines are sorted by type name, as are the header's names: line i is the i-th
        // name (checked again when the line is parsed).
        let mut ranges = Vec::with_capacity(raw.types.len());
        let mut start = 0;
        for line in type_lines.split_inclusive('\n') {
            let end = start + line.len();
            if !line.trim().is_empty() {
                ranges.push(start..end);
            }
            start = end;
        }
        if ranges.len() != raw.types.len() {
            return Err(ValidationError::DefinitionsShape(format!(
                "{} types named, {} type lines",
                raw.types.len(),
                ranges.len()
            )));
        }
        let mut headers: Vec<(String, RawTypeHeader)> = raw.types.into_iter().collect();
        headers.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut types = FastMap::with_capacity_and_hasher(headers.len(), Default::default());
        for ((name, t), line) in headers.into_iter().zip(ranges) {
            let kind = match t.kind.as_str() {
                "primitive-type" => Kind::Primitive,
                "complex-type" => Kind::Complex,
                "resource" => Kind::Resource,
                other => {
                    return Err(ValidationError::DefinitionsShape(format!(
                        "type {name} has kind {other}"
                    )));
                }
            };
            types.insert(
                name.clone(),
                TypeEntry {
                    name,
                    kind,
                    base: t.base,
                    is_abstract: t.is_abstract,
                    line,
                    root: OnceLock::new(),
                    built: OnceLock::new(),
                },
            );
        }
        if !types.contains_key("Resource") || !types.contains_key("Extension") {
            return Err(ValidationError::DefinitionsShape(
                "no Resource or Extension definition".into(),
            ));
        }
        let value_sets = raw
            .value_sets
            .into_iter()
            .map(|(url, vs)| {
                (
                    url,
                    ValueSetDef {
                        codes: vs
                            .codes
                            .into_iter()
                            .map(|(s, c)| (s, c.into_iter().collect()))
                            .collect(),
                        open: vs.open,
                    },
                )
            })
            .collect();
        let code_systems = raw
            .code_systems
            .into_iter()
            .map(|(url, codes)| (url, codes.into_iter().collect()))
            .collect();
        Ok(Definitions {
            fhir_version: raw.fhir_version,
            types,
            type_lines: TypeLines(type_lines),
            primitives,
            invariant_cache: Mutex::default(),
            value_sets,
            code_systems,
            displays: raw.displays.into_iter().collect(),
            search_params: raw.search_params,
            extension_contexts: extension_errata(raw.extension_contexts)
                .into_iter()
                .collect(),
            fragments: FastSet::default(),
            supplements: FastSet::default(),
        })
    }

    /// A type's tables, built on its first call (by whichever thread comes first; the others
    /// wait for it). A type whose line does not build is logged once and is `Err` after.
    fn built<'d>(&'d self, entry: &'d TypeEntry) -> &'d Result<TypeDef, String> {
        entry.built.get_or_init(|| {
            let built = self.build(entry);
            if let Err(reason) = &built {
                tracing::error!(r#type = %entry.name, %reason, "FHIR type definition does not build");
            }
            built
        })
    }

    /// The elements of a type's line, checked to be that type's.
    fn parse_line(&self, entry: &TypeEntry) -> Result<Vec<RawElement>, String> {
        let text = self.type_lines.0.get(entry.line.clone()).unwrap_or("");
        let line: RawTypeLine = serde_json::from_str(text)
            .map_err(|e| format!("the line of type {}: {e}", entry.name))?;
        if line.name != entry.name {
            return Err(format!(
                "the line of type {} defines {} (lines out of order)",
                entry.name, line.name
            ));
        }
        Ok(line.elements)
    }

    /// The root element of a type's line, checked to be that type's.
    fn parse_root(&self, entry: &TypeEntry) -> Result<Option<RawElement>, String> {
        let text = self.type_lines.0.get(entry.line.clone()).unwrap_or("");
        let line: RawTypeRoot = serde_json::from_str(text)
            .map_err(|e| format!("the line of type {}: {e}", entry.name))?;
        if line.name != entry.name {
            return Err(format!(
                "the line of type {} defines {} (lines out of order)",
                entry.name, line.name
            ));
        }
        Ok(line.elements.0)
    }

    /// Compiles the invariants of one raw element through the shared cache.
    fn compile_invariants(&self, raw: &RawElement) -> Vec<Invariant> {
        let mut cache = self
            .invariant_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        raw.inv.iter().filter_map(|i| cache.invariant(i)).collect()
    }

    /// The root invariants the walker evaluates on every value of type `code` (empty for a
    /// name that is no type). Never builds a type: it parses the type's line if its root
    /// has not been computed yet (a type that does not parse has none; its build reports it).
    fn root_checks_of(&self, code: &str) -> Option<Arc<[Invariant]>> {
        let entry = self.types.get(code)?;
        let root = entry.root.get_or_init(|| match self.parse_root(entry) {
            Ok(root) => root
                .as_ref()
                .map(|root| {
                    let invs = self.compile_invariants(root);
                    walker_checks(&invs).cloned().collect::<Vec<_>>()
                })
                .unwrap_or_default()
                .into(),
            Err(_) => Arc::from(Vec::new()),
        });
        Some(root.clone())
    }

    /// Builds one type's tables from its line.
    fn build(&self, entry: &TypeEntry) -> Result<TypeDef, String> {
        let raw = self.parse_line(entry)?;
        let primitives = &self.primitives;
        let mut elements: Vec<ElementDef> = raw
            .into_iter()
            .map(|e| {
                let invariants = self.compile_invariants(&e);
                element(e, invariants)
            })
            .collect();
        for e in &mut elements {
            for t in &mut e.types {
                t.primitive =
                    primitives.contains_key(t.code.strip_prefix("System.").unwrap_or(&t.code));
            }
            e.json_names = e
                .types
                .iter()
                .map(|t| {
                    let key = if e.choice {
                        choice_key(&e.name, &t.code)
                    } else {
                        e.name.clone()
                    };
                    let primitive =
                        primitives.contains_key(&t.code) && !t.code.starts_with("System.");
                    (key.clone(), format!("_{key}"), primitive)
                })
                .collect();
            if e.json_names.is_empty() {
                e.json_names
                    .push((e.name.clone(), format!("_{}", e.name), false));
            }
        }
        let mut children: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in elements.iter().enumerate().skip(1) {
            let parent = e.path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
            children.entry(parent.to_owned()).or_default().push(i);
        }
        let mut indexed = Vec::with_capacity(elements.len());
        for e in &elements {
            let of = e.content_reference.as_deref().unwrap_or(&e.path);
            let list = children.get(of).cloned().unwrap_or_default();
            indexed.push(Children::new(list, &elements));
        }
        for (e, kids) in elements.iter_mut().zip(indexed) {
            e.has_children = children.contains_key(&e.path);
            e.children = kids;
        }
        let root_children = Children::new(children.get("").cloned().unwrap_or_default(), &elements);
        let root_checks: Vec<Invariant> = elements
            .first()
            .map(|root| walker_checks(&root.invariants).cloned().collect())
            .unwrap_or_default();
        // This type's root cell, from this build if no element of another type needed it
        // first (both are computed from the same line: the same invariants).
        let own_root = entry
            .root
            .get_or_init(|| Arc::from(root_checks.as_slice()))
            .clone();
        link_checks(&mut elements, |code| {
            if code == entry.name {
                Some(own_root.clone())
            } else {
                self.root_checks_of(code)
            }
        });
        Ok(TypeDef {
            name: entry.name.clone(),
            kind: entry.kind,
            base: entry.base.clone(),
            is_abstract: entry.is_abstract,
            elements,
            children,
            root_children,
            root_checks,
        })
    }

    /// The display of a code of a held code system (`None`: not held, or no display).
    pub fn display(&self, system: &str, code: &str) -> Option<&str> {
        self.displays.get(system)?.get(code).map(String::as_str)
    }

    /// True if the displays of this code system's codes are held.
    pub fn has_displays(&self, system: &str) -> bool {
        self.displays.contains_key(system)
    }

    /// Adds (or replaces) the displays of a code system's codes (a CodeSystem loaded at run
    /// time).
    pub fn add_displays(&mut self, system: &str, displays: HashMap<String, String>) {
        if displays.is_empty() {
            self.displays.remove(system);
        } else {
            self.displays.insert(system.to_owned(), displays);
        }
    }

    /// The type of a core (or loaded) search parameter.
    pub fn search_param_type(&self, url: &str) -> Option<&str> {
        self.search_params
            .get(url.split('|').next().unwrap_or(url))
            .map(String::as_str)
    }

    /// Adds a search parameter's type (a SearchParameter loaded at run time).
    pub fn add_search_param(&mut self, url: &str, ty: &str) {
        self.search_params.insert(url.to_owned(), ty.to_owned());
    }

    /// Where an extension may be used (`[type, expression]`), if its definition is held.
    pub fn extension_context(&self, url: &str) -> Option<&[(String, String)]> {
        self.extension_contexts.get(url).map(Vec::as_slice)
    }

    /// Adds an extension's contexts (an extension definition loaded at run time).
    pub fn add_extension_context(&mut self, url: &str, contexts: Vec<(String, String)>) {
        self.extension_contexts.insert(url.to_owned(), contexts);
    }

    /// Adds (or replaces) a code system's codes (a CodeSystem loaded at run time).
    pub fn add_code_system(&mut self, url: &str, codes: HashSet<String>) {
        self.fragments.remove(url);
        self.code_systems.insert(url.to_owned(), codes);
    }

    /// Adds (or replaces) a code system's codes known to be a subset of it (a CodeSystem
    /// with `content: fragment`, such as a SNOMED CT or LOINC extract): a code outside it
    /// is a warning, not an error.
    pub fn add_code_system_fragment(&mut self, url: &str, codes: HashSet<String>) {
        self.code_systems.insert(url.to_owned(), codes);
        self.fragments.insert(url.to_owned());
    }

    /// Records a CodeSystem supplement (a Coding may not name it as its system).
    pub fn add_supplement(&mut self, url: &str) {
        self.supplements.insert(url.to_owned());
    }

    /// True if `url` is a loaded CodeSystem supplement.
    pub fn is_supplement(&self, url: &str) -> bool {
        self.supplements.contains(url)
    }

    /// True if the code system was loaded as a fragment.
    pub fn is_fragment(&self, url: &str) -> bool {
        self.fragments.contains(url)
    }

    /// Adds (or replaces) an expanded value set (a ValueSet loaded at run time).
    pub fn add_value_set(&mut self, url: &str, vs: ValueSetDef) {
        self.value_sets.insert(url.to_owned(), vs);
    }

    /// A type's tables, built on first use (`None`: no such type, or, never for the embedded
    /// definitions, whose every type a test builds, a type whose line does not build, logged).
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.built(self.types.get(name)?).as_ref().ok()
    }

    /// True if `name` is a concrete resource type (`Patient`, not `DomainResource`).
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.types
            .get(name)
            .is_some_and(|t| t.kind == Kind::Resource && !t.is_abstract)
    }

    /// The concrete resource types, sorted.
    pub fn resource_types(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .types
            .values()
            .filter(|t| t.kind == Kind::Resource && !t.is_abstract)
            .map(|t| t.name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// True if `name` is a primitive type (`System.x` codes are primitives too).
    pub fn is_primitive(&self, name: &str) -> bool {
        self.primitives
            .contains_key(name.strip_prefix("System.").unwrap_or(name))
    }

    /// The value regex of a primitive type (`None`: no lexical rule, e.g. `xhtml`).
    pub fn primitive_regex(&self, name: &str) -> Option<&Regex> {
        self.primitives
            .get(name.strip_prefix("System.").unwrap_or(name))
            .and_then(Option::as_ref)
            .map(|p| &p.regex)
    }

    /// Whether `value` is in the lexical space of primitive type `name` (`None`: no
    /// lexical rule, e.g. `xhtml`, or not a primitive): the hand-written checker of a core
    /// pattern, else the regex.
    pub fn primitive_matches(&self, name: &str, value: &str) -> Option<bool> {
        let rule = self
            .primitives
            .get(name.strip_prefix("System.").unwrap_or(name))?
            .as_ref()?;
        Some(match rule.form {
            Some(form) => form.is_match(value),
            None => rule.regex.is_match(value),
        })
    }

    /// The hand-written checker of primitive type `name`, if its pattern has one.
    #[cfg(test)]
    pub(crate) fn primitive_form(&self, name: &str) -> Option<Form> {
        self.primitives.get(name)?.as_ref()?.form
    }

    /// The primitive type names that have a lexical rule.
    #[cfg(test)]
    pub(crate) fn primitive_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .primitives
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// Checks every primitive with its regex only (the walk before the hand-written
    /// checkers), for equivalence tests.
    #[cfg(test)]
    pub(crate) fn drop_hand_checkers(&mut self) {
        for p in self.primitives.values_mut().flatten() {
            p.form = None;
        }
    }

    pub fn value_set(&self, url: &str) -> Option<&ValueSetDef> {
        self.value_sets.get(url.split('|').next().unwrap_or(url))
    }

    /// The codes of a FHIR-defined code system held whole (`None`: not held).
    pub fn code_system(&self, url: &str) -> Option<&HashSet<String>> {
        self.code_systems.get(url)
    }

    /// True if `sub` is `ancestor` or derives from it (`Age` from `Quantity`).
    pub fn derives_from(&self, sub: &str, ancestor: &str) -> bool {
        let mut current = Some(sub);
        let mut hops = 0;
        while let Some(name) = current {
            if name == ancestor {
                return true;
            }
            hops += 1;
            if hops > 16 {
                return false;
            }
            current = self.types.get(name).and_then(|t| t.base.as_deref());
        }
        false
    }
}

#[cfg(test)]
impl Definitions {
    /// How many types are built.
    pub(crate) fn built_types(&self) -> usize {
        self.types
            .values()
            .filter(|e| e.built.get().is_some())
            .count()
    }

    /// Every type, built.
    pub(crate) fn all_types(&self) -> impl Iterator<Item = &TypeDef> {
        self.build_all().expect("the definitions build");
        self.types
            .values()
            .filter_map(|e| e.built.get()?.as_ref().ok())
    }

    /// Drops every member index: the walker then looks each child's JSON names up in the
    /// object, as it did before the index (an equivalence test compares both walks).
    pub(crate) fn drop_member_index(&mut self) {
        self.build_all().expect("the definitions build");
        for t in self
            .types
            .values_mut()
            .filter_map(|e| e.built.get_mut()?.as_mut().ok())
        {
            t.root_children.keys = None;
            for e in &mut t.elements {
                e.children.keys = None;
            }
        }
    }
}

/// The invariants of `invs` the walker evaluates (all but [`WALKER_INVARIANTS`]).
fn walker_checks(invs: &[Invariant]) -> impl Iterator<Item = &Invariant> {
    invs.iter()
        .filter(|i| !WALKER_INVARIANTS.contains(&i.key.as_str()))
}

/// Fills [`ElementDef::checks`] of one type's elements: per element and type, its own
/// invariants and those of the type's root (`roots`: a value of a data type that is not a
/// backbone element or a content reference, nor a contained resource, which is walked as a
/// resource of its own).
fn link_checks(elements: &mut [ElementDef], roots: impl Fn(&str) -> Option<Arc<[Invariant]>>) {
    // Most elements have no invariant of their own but ele-1: their list is the type root's,
    // shared rather than copied (loading stays within its time budget).
    let none: Arc<[Invariant]> = Arc::from(Vec::new());
    for e in elements.iter_mut() {
        let own: Vec<Invariant> = walker_checks(&e.invariants).cloned().collect();
        let of_type = !e.has_children && e.content_reference.is_none();
        let codes: Vec<&str> = if e.types.is_empty() {
            vec![""]
        } else {
            e.types.iter().map(|t| t.code.as_str()).collect()
        };
        let checks = codes
            .iter()
            .map(|&code| {
                // Asked only when used: asking parses the type's line.
                let root = (of_type && code != "Resource")
                    .then(|| roots(code))
                    .flatten()
                    .filter(|r| !r.is_empty());
                if own.is_empty() {
                    // Only walker invariants of its own: none of the root's is dropped.
                    return root.unwrap_or_else(|| none.clone());
                }
                let mut list = own.clone();
                if of_type && code != "Resource" {
                    list.extend(
                        root.as_deref()
                            .unwrap_or(&[])
                            .iter()
                            .filter(|i| !e.invariants.iter().any(|o| o.key == i.key))
                            .cloned(),
                    );
                }
                Arc::from(list)
            })
            .collect();
        e.checks = checks;
    }
}

fn element(raw: RawElement, invariants: Vec<Invariant>) -> ElementDef {
    let last = raw.p.rsplit('.').next().unwrap_or("").to_owned();
    let (name, choice) = match last.strip_suffix("[x]") {
        Some(stem) => (stem.to_owned(), true),
        None => (last, false),
    };
    let max = raw.max.parse::<u32>().ok();
    let binding = raw.b.map(|(strength, url)| {
        let strength = match strength.as_str() {
            "required" => Strength::Required,
            "extensible" => Strength::Extensible,
            "preferred" => Strength::Preferred,
            _ => Strength::Example,
        };
        (strength, url)
    });
    ElementDef {
        path: raw.p,
        name,
        choice,
        min: raw.min,
        max,
        types: raw
            .t
            .into_iter()
            .map(|t| TypeRef {
                code: t.c,
                targets: t.r,
                primitive: false,
            })
            .collect(),
        content_reference: raw.cr.map(|cr| match cr.split_once('.') {
            Some((_, rest)) => rest.to_owned(),
            None => String::new(),
        }),
        fixed: raw.fixed,
        pattern: raw.pattern,
        binding,
        invariants,
        json_names: Vec::new(),
        has_children: false,
        children: Children::default(),
        checks: Vec::new(),
    }
}

/// The JSON name of a choice element for one type: `value` + `Quantity`.
pub fn choice_key(stem: &str, code: &str) -> String {
    let mut key = String::with_capacity(stem.len() + code.len());
    key.push_str(stem);
    let mut chars = code.chars();
    if let Some(first) = chars.next() {
        key.extend(first.to_uppercase());
        key.push_str(chars.as_str());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_core_types_value_sets_and_code_systems() {
        let defs = Definitions::r4().unwrap();
        assert_eq!(defs.fhir_version, "4.0.1");
        assert!(defs.is_resource_type("Patient"));
        assert!(!defs.is_resource_type("DomainResource"));
        assert!(!defs.is_resource_type("HumanName"));
        assert!(defs.resource_types().len() >= 140);
        let patient = defs.type_def("Patient").unwrap();
        let names: Vec<&str> = patient
            .children("")
            .iter()
            .map(|i| patient.elements[*i].name.as_str())
            .collect();
        assert!(names.contains(&"birthDate") && names.contains(&"deceased"));
        let contact_children = patient.children("contact");
        assert!(!contact_children.is_empty());
        assert!(defs.primitive_regex("date").unwrap().is_match("2020-01-31"));
        assert!(!defs.primitive_regex("date").unwrap().is_match("2020-13-01"));
        let gender = defs
            .value_set("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1")
            .unwrap();
        assert!(gender.is_complete() && gender.has_code("female") && !gender.has_code("f"));
        assert!(
            defs.code_system("http://hl7.org/fhir/administrative-gender")
                .unwrap()
                .contains("other")
        );
        assert!(defs.derives_from("Age", "Quantity"));
        assert!(!defs.derives_from("HumanName", "Quantity"));
    }

    /// Every FHIRPath invariant of the R4 core compiles: the engine knows every function
    /// they name. A failure lists each expression that does not, with the reason.
    #[test]
    fn every_core_invariant_compiles() {
        let defs = Definitions::r4().unwrap();
        let mut total = 0;
        let mut failed = std::collections::BTreeSet::new();
        for t in defs.all_types() {
            for e in &t.elements {
                for inv in &e.invariants {
                    total += 1;
                    if let Err(reason) = &inv.expression {
                        failed.insert(format!("{} {}: {reason}", t.name, inv.key));
                    }
                }
            }
        }
        println!("{total} core invariants, {} not compiled", failed.len());
        assert!(total > 8000, "expected the core invariants, got {total}");
        assert!(failed.is_empty(), "{failed:#?}");
    }

    /// Every core invariant the engine answers from the focus's keys alone (when the focus
    /// has none of the children it reads) gets the verdict of the plain evaluation on such
    /// foci: an object with only unrelated members, an empty object, a string, a number.
    #[test]
    fn vacuous_core_invariants_equal_the_plain_evaluation() {
        let defs = Definitions::r4().unwrap();
        let foci = [
            serde_json::json!({"zzUnrelated": 1, "_zzUnrelated": {"id": "a"}}),
            serde_json::json!({}),
            serde_json::json!("text"),
            serde_json::json!(3),
        ];
        let env = fhirpath::Env::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut vacuous = 0;
        for t in defs.all_types() {
            for e in &t.elements {
                for inv in &e.invariants {
                    let Ok(expr) = &inv.expression else { continue };
                    if !seen.insert(expr.source().to_owned()) {
                        continue;
                    }
                    for focus in &foci {
                        if !expr.is_vacuous_on(focus) {
                            continue;
                        }
                        vacuous += 1;
                        assert_eq!(
                            expr.check(focus, &env),
                            expr.check_reference(focus, &env),
                            "{} {} on {focus}",
                            t.name,
                            inv.key
                        );
                    }
                }
            }
        }
        println!(
            "{} distinct expressions, {vacuous} vacuous checks compared",
            seen.len()
        );
        assert!(vacuous > 500, "{vacuous}");
    }

    /// `ElementDef::checks` lists, per element and type, exactly what the walker used to
    /// gather at every value: the element's own invariants, then those of the type's root
    /// whose key is not among them (not for backbone elements, content references or
    /// contained resources), less the walker's own.
    #[test]
    fn precomputed_checks_equal_the_per_value_gathering() {
        let defs = Definitions::r4().unwrap();
        let mut with_type = 0;
        for t in defs.all_types() {
            let expected_root: Vec<&str> = t
                .elements
                .first()
                .map(|r| r.invariants.iter().map(|i| i.key.as_str()).collect())
                .unwrap_or_default();
            let expected_root: Vec<&str> = expected_root
                .into_iter()
                .filter(|k| !WALKER_INVARIANTS.contains(k))
                .collect();
            let root: Vec<&str> = t.root_checks.iter().map(|i| i.key.as_str()).collect();
            assert_eq!(root, expected_root, "{}", t.name);
            for e in &t.elements {
                let codes: Vec<&str> = if e.types.is_empty() {
                    vec![""]
                } else {
                    e.types.iter().map(|t| t.code.as_str()).collect()
                };
                assert_eq!(e.checks.len(), codes.len(), "{} {}", t.name, e.path);
                for (ti, code) in codes.iter().enumerate() {
                    let own = e.invariants.iter();
                    let of_type = (*code != "Resource"
                        && !t.has_children(&e.path)
                        && e.content_reference.is_none())
                    .then(|| defs.type_def(code))
                    .flatten()
                    .and_then(|dt| dt.elements.first())
                    .map(|root| root.invariants.as_slice())
                    .unwrap_or(&[])
                    .iter()
                    .filter(|i| !e.invariants.iter().any(|o| o.key == i.key));
                    let expected: Vec<(&str, &str)> = own
                        .chain(of_type)
                        .filter(|i| !WALKER_INVARIANTS.contains(&i.key.as_str()))
                        .map(|i| (i.key.as_str(), i.human.as_str()))
                        .collect();
                    let got: Vec<(&str, &str)> = e.checks[ti]
                        .iter()
                        .map(|i| (i.key.as_str(), i.human.as_str()))
                        .collect();
                    assert_eq!(got, expected, "{} {} {code}", t.name, e.path);
                    with_type += usize::from(!got.is_empty());
                }
            }
        }
        assert!(
            with_type > 1000,
            "{with_type} element types with invariants"
        );
    }

    /// The member index names each child under the JSON names the walker reads, and the
    /// children list is the element's (or its content reference's) direct children.
    #[test]
    fn member_index_covers_every_json_name_of_the_children() {
        let defs = Definitions::r4().unwrap();
        let obs = defs.type_def("Observation").unwrap();
        let keys = obs.root_children.keys.as_ref().unwrap();
        let value = obs
            .elements
            .iter()
            .position(|e| e.path == "value[x]")
            .unwrap();
        let pos = obs
            .root_children
            .list
            .iter()
            .position(|&i| i == value)
            .unwrap();
        let quantity = obs.elements[value]
            .types
            .iter()
            .position(|t| t.code == "Quantity")
            .unwrap();
        assert_eq!(keys.get("valueQuantity"), Some(&(pos, quantity, false)));
        let string = obs.elements[value]
            .types
            .iter()
            .position(|t| t.code == "string")
            .unwrap();
        assert_eq!(keys.get("_valueString"), Some(&(pos, string, true)));
        assert!(!keys.contains_key("_valueQuantity"));
        assert!(!keys.contains_key("value"));
        let status = obs
            .elements
            .iter()
            .position(|e| e.path == "status")
            .unwrap();
        let pos = obs
            .root_children
            .list
            .iter()
            .position(|&i| i == status)
            .unwrap();
        assert_eq!(keys.get("_status"), Some(&(pos, 0, true)));
        assert_eq!(obs.root_children.list.as_slice(), obs.children(""));
        let q = defs.type_def("Questionnaire").unwrap();
        let item_item = q.elements.iter().find(|e| e.path == "item.item").unwrap();
        assert_eq!(item_item.children.list.as_slice(), q.children("item"));
        assert!(
            item_item
                .children
                .keys
                .as_ref()
                .unwrap()
                .contains_key("linkId")
        );
    }

    /// Two children claiming one JSON name leave the index out (the walker then looks names
    /// up, as the equivalence test over the corpora checks).
    #[test]
    fn clashing_json_names_leave_the_member_index_out() {
        let text = r#"{"fhirVersion":"4.0.1","primitives":{"string":null},"codeSystems":{},"valueSets":{},
            "types":{
              "Resource":{"kind":"resource","abstract":true},
              "Extension":{"kind":"complex-type","abstract":false},
              "X":{"kind":"resource","abstract":false}}}"#;
        let lines = r#"{"elements":[{"p":"","min":0,"max":"*"}],"name":"Extension"}
{"elements":[{"p":"","min":0,"max":"*"}],"name":"Resource"}
{"elements":[{"p":"","min":0,"max":"*"},{"p":"value[x]","min":0,"max":"1","t":[{"c":"string"}]},{"p":"valueString","min":0,"max":"1","t":[{"c":"string"}]},{"p":"other","min":0,"max":"1","t":[{"c":"string"}]}],"name":"X"}
"#;
        let defs = Definitions::from_json(text, lines).unwrap();
        let x = defs.type_def("X").unwrap();
        assert!(x.root_children.keys.is_none());
        assert_eq!(x.root_children.list.len(), 3);
        let clean = defs.type_def("Extension").unwrap();
        assert!(clean.root_children.keys.is_some());
    }

    /// Loading builds no type; asking for one builds it alone (other types' root invariants
    /// are read without building them), once, and Extension, whose elements are Extensions,
    /// builds from its own root without re-entering its build.
    #[test]
    fn types_are_built_on_first_use() {
        let defs = Definitions::r4().unwrap();
        assert_eq!(defs.built_types(), 0);
        assert!(defs.is_resource_type("Patient") && defs.derives_from("Age", "Quantity"));
        assert!(defs.resource_types().contains(&"Patient"));
        assert_eq!(defs.built_types(), 0);
        let patient = defs.type_def("Patient").unwrap();
        assert_eq!(defs.built_types(), 1);
        assert!(std::ptr::eq(patient, defs.type_def("Patient").unwrap()));
        let name = patient.elements.iter().find(|e| e.path == "name").unwrap();
        let human_name = defs.types.get("HumanName").unwrap();
        assert!(human_name.root.get().is_some() && human_name.built.get().is_none());
        assert_eq!(name.checks.len(), 1);
        let ext = defs.type_def("Extension").unwrap();
        assert_eq!(defs.built_types(), 2);
        let nested = ext.elements.iter().find(|e| e.path == "extension").unwrap();
        let keys: Vec<&str> = nested.checks[0].iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"ext-1"), "{keys:?}");
        assert!(defs.type_def("NoSuchType").is_none());
    }

    /// A type line that does not parse, lines out of order and a missing line are typed
    /// errors of `from_json`; loaded lazily, the broken type is absent (and logged) while the
    /// others build.
    #[test]
    fn a_type_line_that_does_not_build_is_an_error_not_a_panic() {
        let header = r#"{"fhirVersion":"4.0.1","primitives":{},"codeSystems":{},"valueSets":{},
            "types":{"Extension":{"kind":"complex-type","abstract":false},
              "Resource":{"kind":"resource","abstract":true},
              "X":{"kind":"resource","abstract":false}}}"#;
        let ext = r#"{"elements":[{"p":"","min":0,"max":"*"}],"name":"Extension"}"#;
        let res = r#"{"elements":[{"p":"","min":0,"max":"*"}],"name":"Resource"}"#;
        let x = r#"{"elements":[{"p":"","min":0,"max":"*"},{"p":"a","min":0,"max":"1","t":[{"c":"Extension"}]}],"name":"X"}"#;
        let good = format!("{ext}\n{res}\n{x}\n");
        let defs = Definitions::from_json(header, &good).unwrap();
        assert_eq!(defs.type_def("X").unwrap().elements.len(), 2);

        let broken = format!("{ext}\n{res}\n{{\"elements\":[{{\"p\":\n");
        let Err(ValidationError::DefinitionsShape(reason)) =
            Definitions::from_json(header, &broken)
        else {
            panic!("a broken line must be a shape error");
        };
        assert!(reason.contains("type X"), "{reason}");
        let lazy = Definitions::lazy(header, Cow::Owned(broken)).unwrap();
        assert!(lazy.is_resource_type("X"));
        assert!(lazy.type_def("X").is_none());
        assert!(lazy.type_def("X").is_none());
        assert!(lazy.type_def("Extension").is_some());

        let swapped = format!("{res}\n{ext}\n{x}\n");
        let Err(ValidationError::DefinitionsShape(reason)) =
            Definitions::from_json(header, &swapped)
        else {
            panic!("lines out of order must be a shape error");
        };
        assert!(reason.contains("out of order"), "{reason}");

        let missing = format!("{ext}\n{res}\n");
        assert!(matches!(
            Definitions::from_json(header, &missing),
            Err(ValidationError::DefinitionsShape(r)) if r.contains("3 types named, 2 type lines")
        ));
    }

    #[test]
    fn questionnaire_item_item_is_a_content_reference() {
        let defs = Definitions::r4().unwrap();
        let q = defs.type_def("Questionnaire").unwrap();
        let item_item = q.elements.iter().find(|e| e.path == "item.item").unwrap();
        assert_eq!(item_item.content_reference.as_deref(), Some("item"));
    }

    #[test]
    fn broken_definitions_are_typed_errors() {
        assert!(matches!(
            Definitions::from_json("{", ""),
            Err(ValidationError::DefinitionsParse(_))
        ));
        let empty =
            r#"{"fhirVersion":"4.0.1","primitives":{},"types":{},"valueSets":{},"codeSystems":{}}"#;
        assert!(matches!(
            Definitions::from_json(empty, ""),
            Err(ValidationError::DefinitionsShape(_))
        ));
    }
}
