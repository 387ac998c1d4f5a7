//! Structural validation of FHIR R4 resources against HL7's FHIR R4 JSON Schema
//! (`fhir-profiles/r4/fhir.schema.json`, embedded so a Lambda needs no file).
//!
//! Each resource is checked against `#/definitions/<resourceType>`, never through the root
//! `oneOf` over every resource type: that would try ~146 alternatives per resource and answer
//! "matches none of them". Validators are compiled lazily, once per resource type, and shared
//! by all threads. Schema errors become OperationOutcome issues that name the rule and the
//! place, never the offending value: values are patient data.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Draft, PatternOptions, Registry, Validator};
use serde::Serialize;
use serde_json::Value;

use super::ValidationError;
use super::location::{is_plain_name, pointer_to_expression};
use crate::outcome::{Issue, Outcome, Severity};

/// The generated schema (see `fhir-profiles/README.md`).
const R4_SCHEMA: &str = include_str!("../../fhir-profiles/r4/fhir.schema.json");

/// The schema's own `id`; the registry knows the schema under this URI.
const R4_SCHEMA_URI: &str = "http://hl7.org/fhir/json-schema/4.0";

/// Issues listed per resource at most; one more issue says how many were left out. A badly
/// broken resource (say, a mapping that emits the wrong shape for every row) would otherwise
/// give an outcome larger than the resource.
pub const MAX_ISSUES: usize = 100;

/// Resources nested in resources (contained, Bundle entries, Parameters) are checked to this
/// depth; deeper ones are reported rather than followed.
const MAX_NESTING: usize = 8;

/// The keyword that stands in for `ResourceList` (see [`SchemaValidator::r4`]).
const NESTED_RESOURCE_KEYWORD: &str = "x-fhir-unify-nested-resource";

/// Enum codes listed in a diagnostic at most.
const MAX_LISTED_CODES: usize = 12;

/// Validates FHIR R4 resources against the FHIR R4 JSON Schema. Build it once
/// ([`SchemaValidator::r4`] or [`SchemaValidator::shared`]) and share it: it is `Send + Sync`,
/// and compiles the validator of each resource type on first use.
pub struct SchemaValidator {
    registry: Registry<'static>,
    base_uri: String,
    /// One slot per resource type the schema defines; filled on first use.
    validators: HashMap<String, OnceLock<Result<Validator, String>>>,
}

impl std::fmt::Debug for SchemaValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaValidator")
            .field("base_uri", &self.base_uri)
            .field("resource_types", &self.validators.len())
            .field("compiled", &self.compiled_count())
            .finish_non_exhaustive()
    }
}

impl SchemaValidator {
    /// The FHIR R4 (4.0.1) validator, from the embedded schema. Parses and indexes the schema
    /// (tens of milliseconds); compiles nothing yet.
    ///
    /// One change is made to the schema as loaded: `ResourceList`, the type of a resource held
    /// in another (`contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`…), is
    /// a `oneOf` over every resource type. Compiled as is, every resource type's validator
    /// would include all 146 of them, and a bad inner resource would only say "matches none".
    /// It is replaced by a keyword that hands the inner resource back to this validator, which
    /// checks it against its own `resourceType`: the same rule, since the alternatives are told
    /// apart by their fixed `resourceType`.
    pub fn r4() -> Result<Self, ValidationError> {
        let schema: Value = serde_json::from_str(R4_SCHEMA)
            .map_err(|e| ValidationError::SchemaParse(e.to_string()))?;
        Self::from_schema(schema, R4_SCHEMA_URI)
    }

    /// A process-wide R4 validator, built on first call. Lambdas call this at cold start so
    /// every invocation shares one validator and its compiled resource types.
    pub fn shared() -> Result<&'static SchemaValidator, ValidationError> {
        static SHARED: OnceLock<Result<SchemaValidator, ValidationError>> = OnceLock::new();
        SHARED
            .get_or_init(SchemaValidator::r4)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A validator over any schema shaped like HL7's: resource definitions under
    /// `definitions`, resource type names as the keys of `discriminator.mapping`.
    fn from_schema(mut schema: Value, base_uri: &str) -> Result<Self, ValidationError> {
        let definitions = schema
            .get_mut("definitions")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ValidationError::SchemaShape("no `definitions` object".into()))?;
        if let Some(list) = definitions.get_mut("ResourceList") {
            *list = serde_json::json!({ NESTED_RESOURCE_KEYWORD: true });
        }
        let definitions = &schema["definitions"];
        let mapping = schema
            .pointer("/discriminator/mapping")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ValidationError::SchemaShape("no `discriminator.mapping` object".into())
            })?;
        let mut validators = HashMap::with_capacity(mapping.len());
        for name in mapping.keys() {
            if definitions.get(name).is_none() {
                return Err(ValidationError::SchemaShape(format!(
                    "resource type {name} has no definition"
                )));
            }
            validators.insert(name.clone(), OnceLock::new());
        }
        if validators.is_empty() {
            return Err(ValidationError::SchemaShape(
                "no resource types in `discriminator.mapping`".into(),
            ));
        }
        let registry = Registry::new()
            .draft(Draft::Draft6)
            .add(base_uri, schema)
            .and_then(|b| b.prepare())
            .map_err(|e| ValidationError::SchemaIndex(e.to_string()))?;
        Ok(SchemaValidator {
            registry,
            base_uri: base_uri.to_owned(),
            validators,
        })
    }

    /// True if `name` is a resource type of the schema (`Patient`, not `HumanName`).
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.validators.contains_key(name)
    }

    /// The resource types the schema defines, sorted.
    pub fn resource_types(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.validators.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// How many resource types have a compiled validator so far.
    pub fn compiled_count(&self) -> usize {
        self.validators
            .values()
            .filter(|slot| slot.get().is_some())
            .count()
    }

    /// Compiles the validators of these resource types now rather than on first use (for a
    /// Lambda's init phase, which is not billed against the first record's latency).
    pub fn warm_up<'a>(
        &self,
        resource_types: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ValidationError> {
        for name in resource_types {
            self.validator(name)
                .map_err(|reason| ValidationError::Compile {
                    resource_type: name.to_owned(),
                    reason: reason.to_owned(),
                })?
                .ok_or_else(|| ValidationError::UnknownResourceType(name.to_owned()))?;
        }
        Ok(())
    }

    /// Validates one resource: its `resourceType` picks the definition it is checked against.
    /// An empty outcome means no issue. Resources nested in it (contained resources, Bundle
    /// entries) are checked against their own types, with locations under the outer resource.
    pub fn validate(&self, resource: &Value) -> Outcome {
        let mut outcome = Outcome::new();
        let mut budget = Budget::default();
        self.check(resource, None, 0, &mut outcome, &mut budget);
        budget.finish(&mut outcome);
        outcome
    }

    /// Validates a resource given as JSON text (an API request body, a file line). Text that is
    /// not JSON gives a `structure` error naming the line and column.
    pub fn validate_str(&self, json: &str) -> Outcome {
        match serde_json::from_str::<Value>(json) {
            Ok(resource) => self.validate(&resource),
            Err(e) => Outcome::from(Issue::error(
                "structure",
                format!(
                    "not valid JSON ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )),
        }
    }

    /// Validates any serializable resource (a typed model, a map). A value that cannot be
    /// serialized gives a `processing` error.
    pub fn validate_typed<T: Serialize + ?Sized>(&self, resource: &T) -> Outcome {
        match serde_json::to_value(resource) {
            Ok(value) => self.validate(&value),
            Err(e) => Outcome::from(Issue::error(
                "processing",
                format!("the resource could not be serialized to JSON: {e}"),
            )),
        }
    }

    /// The compiled validator of a resource type: `Ok(None)` if the schema has no such
    /// resource type, `Err` if it could not be compiled (a schema problem, not the data's).
    fn validator(&self, resource_type: &str) -> Result<Option<&Validator>, &str> {
        let Some(slot) = self.validators.get(resource_type) else {
            return Ok(None);
        };
        slot.get_or_init(|| self.compile(resource_type))
            .as_ref()
            .map(Some)
            .map_err(String::as_str)
    }

    fn compile(&self, resource_type: &str) -> Result<Validator, String> {
        let started = std::time::Instant::now();
        let schema = serde_json::json!({
            "$ref": format!("{}#/definitions/{resource_type}", self.base_uri)
        });
        let compiled = jsonschema::options()
            .with_draft(Draft::Draft6)
            .with_registry(&self.registry)
            // FHIR's patterns need no look-around; the linear-time engine is faster and cannot
            // be made to backtrack by a hostile value.
            .with_pattern_options(PatternOptions::regex())
            .with_keyword(NESTED_RESOURCE_KEYWORD, |_, _, _| {
                Ok(Box::new(NestedResource))
            })
            .offline()
            .build(&schema)
            .map_err(|e| e.to_string());
        tracing::debug!(
            resource_type,
            ok = compiled.is_ok(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled FHIR schema validator"
        );
        compiled
    }

    /// Checks `resource` and adds its issues; `at` is the expression of a nested resource.
    fn check(
        &self,
        resource: &Value,
        at: Option<&str>,
        depth: usize,
        outcome: &mut Outcome,
        budget: &mut Budget,
    ) {
        let Some(object) = resource.as_object() else {
            budget.push(
                outcome,
                located(
                    Issue::error("structure", "a FHIR resource must be a JSON object"),
                    at,
                ),
            );
            return;
        };
        let type_expression = format!("{}.resourceType", at.unwrap_or("Resource"));
        let resource_type = match object.get("resourceType") {
            None => {
                budget.push(
                    outcome,
                    Issue::error("required", "resourceType is missing").at(type_expression),
                );
                return;
            }
            Some(Value::String(name)) => name,
            Some(_) => {
                budget.push(
                    outcome,
                    Issue::error("structure", "resourceType must be a JSON string")
                        .at(type_expression),
                );
                return;
            }
        };
        let validator = match self.validator(resource_type) {
            Ok(Some(validator)) => validator,
            Ok(None) => {
                budget.push(
                    outcome,
                    Issue::error("value", "resourceType is not a FHIR R4 resource type")
                        .at(type_expression),
                );
                return;
            }
            Err(reason) => {
                tracing::error!(resource_type, "FHIR schema validator failed to compile");
                budget.push(
                    outcome,
                    Issue::error(
                        "processing",
                        format!(
                            "the schema of {resource_type} could not be compiled, so the resource \
                             was not checked: {reason}"
                        ),
                    ),
                );
                return;
            }
        };
        let root = match at {
            Some(at) => at.to_owned(),
            None => resource_type.clone(),
        };
        // This resource's own issues, held back so that a wrong JSON type is not also reported
        // as a failed pattern at the same place (`"active": "yes"` fails both).
        let mut own: Vec<Issue> = Vec::new();
        let mut wrong_type_at: Vec<String> = Vec::new();
        for error in validator.iter_errors(resource) {
            if budget.listed + own.len() >= MAX_ISSUES {
                budget.skipped += 1;
                continue;
            }
            let expression = pointer_to_expression(&root, error.instance_path().as_str());
            let kind = error.kind();
            if let ValidationErrorKind::Custom { keyword, .. } = kind
                && keyword == NESTED_RESOURCE_KEYWORD
            {
                if depth + 1 >= MAX_NESTING {
                    budget.push(
                        outcome,
                        Issue::error(
                            "structure",
                            format!("resources nested more than {MAX_NESTING} deep"),
                        )
                        .at(expression),
                    );
                } else {
                    self.check(
                        error.instance(),
                        Some(&expression),
                        depth + 1,
                        outcome,
                        budget,
                    );
                }
                continue;
            }
            if let ValidationErrorKind::Type { .. } = kind {
                wrong_type_at.push(expression.clone());
            }
            own.extend(issues_for(
                kind,
                defining_type(&error).as_deref(),
                expression,
                error.instance(),
            ));
        }
        for issue in own {
            let redundant = issue.code == "value"
                && issue.expression.len() == 1
                && wrong_type_at.contains(&issue.expression[0]);
            if !redundant {
                budget.push(outcome, issue);
            }
        }
    }
}

/// Marks a resource nested in another. It always fails, so that every nested resource comes
/// out of the outer validation as one error at its place, to be checked by its own type.
struct NestedResource;

impl<'i> jsonschema::Keyword<'i> for NestedResource {
    fn validate(&self, _instance: &'i Value) -> Result<(), jsonschema::ValidationError<'i>> {
        Err(jsonschema::ValidationError::custom(
            "nested resource, checked by its own type",
        ))
    }

    fn is_valid(&self, _instance: &'i Value) -> bool {
        false
    }
}

/// Counts issues so one resource's outcome stays bounded.
#[derive(Debug, Default)]
struct Budget {
    listed: usize,
    skipped: usize,
}

impl Budget {
    fn full(&self) -> bool {
        self.listed >= MAX_ISSUES
    }

    fn push(&mut self, outcome: &mut Outcome, issue: Issue) {
        if self.full() {
            self.skipped += 1;
        } else {
            self.listed += 1;
            outcome.push(issue);
        }
    }

    fn finish(self, outcome: &mut Outcome) {
        if self.skipped > 0 {
            outcome.push(Issue::new(
                Severity::Error,
                "too-costly",
                format!(
                    "{} further schema issues not listed (at most {MAX_ISSUES} are)",
                    self.skipped
                ),
            ));
        }
    }
}

fn located(issue: Issue, at: Option<&str>) -> Issue {
    match at {
        Some(at) => issue.at(at),
        None => issue,
    }
}

/// The schema definition (FHIR type) whose own keyword failed, e.g. `date` for
/// `#/definitions/date/pattern`; `None` when the keyword sits deeper (on an element of a type).
fn defining_type(error: &jsonschema::ValidationError<'_>) -> Option<String> {
    let location = error.absolute_keyword_location()?;
    let fragment = location.as_str().rsplit_once('#')?.1;
    let mut parts = fragment.split('/').skip(1);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("definitions"), Some(name), Some(_keyword), None) => Some(name.to_owned()),
        _ => None,
    }
}

/// The issues for one schema error. Diagnostics say which rule failed using the schema's
/// words (element names, allowed codes, limits), never the instance's value.
fn issues_for(
    kind: &ValidationErrorKind,
    fhir_type: Option<&str>,
    expression: String,
    instance: &Value,
) -> Vec<Issue> {
    let of_type = fhir_type
        .map(|t| format!(" for FHIR type {t}"))
        .unwrap_or_default();
    let one =
        |code: &str, diagnostics: String| vec![Issue::error(code, diagnostics).at(&expression)];
    match kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| {
                if is_plain_name(name) {
                    Issue::error("structure", format!("unknown element {name}"))
                        .at(format!("{expression}.{name}"))
                } else {
                    // A key that is no element name may be data put in the wrong place.
                    Issue::error(
                        "structure",
                        "unknown element (its name is not a FHIR element name, not shown)",
                    )
                    .at(&expression)
                }
            })
            .collect(),
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("(unnamed)");
            vec![
                Issue::error("required", format!("required element {name} is missing"))
                    .at(format!("{expression}.{name}")),
            ]
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            let found = json_kind(instance);
            one(
                "structure",
                format!("wrong JSON type{of_type}: expected {expected}, found {found}"),
            )
        }
        ValidationErrorKind::Pattern { .. } => match fhir_type {
            Some(t) => one("value", format!("does not match the pattern for {t}")),
            None => one("value", "does not match the required pattern".to_owned()),
        },
        ValidationErrorKind::Enum { options } => {
            let codes: Vec<String> = options
                .as_array()
                .map(|codes| {
                    codes
                        .iter()
                        .take(MAX_LISTED_CODES)
                        .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let more = options
                .as_array()
                .is_some_and(|codes| codes.len() > MAX_LISTED_CODES);
            one(
                "code-invalid",
                format!(
                    "not one of the allowed codes{of_type}: {}{}",
                    codes.join(" | "),
                    if more { " | …" } else { "" }
                ),
            )
        }
        ValidationErrorKind::Constant { expected_value } => one(
            "value",
            format!("must be exactly {expected_value}{of_type}"),
        ),
        ValidationErrorKind::MinLength { limit } => {
            one("value", format!("shorter than {limit} characters{of_type}"))
        }
        ValidationErrorKind::MaxLength { limit } => {
            one("value", format!("longer than {limit} characters{of_type}"))
        }
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => {
            one("value", format!("below the minimum {limit}{of_type}"))
        }
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => {
            one("value", format!("above the maximum {limit}{of_type}"))
        }
        ValidationErrorKind::MultipleOf { .. } | ValidationErrorKind::Format { .. } => one(
            "value",
            format!("fails the schema's {} rule{of_type}", kind.keyword()),
        ),
        ValidationErrorKind::MinItems { limit } => {
            one("structure", format!("fewer than {limit} items"))
        }
        ValidationErrorKind::MaxItems { limit } => {
            one("structure", format!("more than {limit} items"))
        }
        ValidationErrorKind::UniqueItems => one("structure", "items are not unique".to_owned()),
        ValidationErrorKind::OneOfNotValid { .. } => one(
            "invalid",
            format!("matches none of the allowed alternatives{of_type}"),
        ),
        ValidationErrorKind::OneOfMultipleValid { .. } => one(
            "invalid",
            format!("matches more than one of the allowed alternatives{of_type}"),
        ),
        ValidationErrorKind::BacktrackLimitExceeded { .. }
        | ValidationErrorKind::RegexEngineFailure { .. }
        | ValidationErrorKind::Referencing(_) => one(
            "processing",
            format!(
                "the schema's {} rule could not be evaluated{of_type}",
                kind.keyword()
            ),
        ),
        _ => one(
            "invalid",
            format!("fails the schema's {} rule{of_type}", kind.keyword()),
        ),
    }
}

/// The JSON kind of a value, for "expected string, found number": says what, never which.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validator() -> &'static SchemaValidator {
        SchemaValidator::shared().expect("the embedded R4 schema loads")
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p-1",
            "meta": {"lastUpdated": "2024-04-01T10:00:00Z"},
            "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-42"}],
            "name": [{"use": "official", "family": "Smith", "given": ["Jane", "Q"]}],
            "gender": "female",
            "birthDate": "1980-02-29",
            "_birthDate": {"extension": [{"url": "http://example.org/x", "valueBoolean": true}]},
            "address": [{"line": ["1 Main St"], "city": "Boston", "postalCode": "02110"}],
            "contained": [{"resourceType": "Organization", "id": "o1", "name": "Acme"}],
            "managingOrganization": {"reference": "#o1"}
        })
    }

    /// Every issue's diagnostics and expressions, flattened, to check no value leaks.
    fn all_text(outcome: &Outcome) -> String {
        outcome
            .issues
            .iter()
            .map(|i| format!("{} {}", i.diagnostics, i.expression.join(" ")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn validator_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SchemaValidator>();
    }

    #[test]
    fn valid_patient_has_no_issues() {
        let outcome = validator().validate(&patient());
        assert!(outcome.issues.is_empty(), "{:?}", outcome.issues);
    }

    #[test]
    fn wrong_json_type_is_a_structure_error() {
        let mut p = patient();
        p["active"] = json!("yes");
        p["name"] = json!({"family": "Smith"});
        let outcome = validator().validate(&p);
        assert_eq!(outcome.issues.len(), 2, "{:?}", outcome.issues);
        let active = outcome
            .issues
            .iter()
            .find(|i| i.expression == ["Patient.active"])
            .expect("an issue at Patient.active");
        assert_eq!(active.code, "structure");
        assert_eq!(
            active.diagnostics,
            "wrong JSON type for FHIR type boolean: expected boolean, found string"
        );
        let name = outcome
            .issues
            .iter()
            .find(|i| i.expression == ["Patient.name"])
            .expect("an issue at Patient.name");
        assert_eq!(name.code, "structure");
        assert!(
            name.diagnostics.contains("expected array"),
            "{}",
            name.diagnostics
        );
    }

    #[test]
    fn bad_date_names_the_rule_not_the_value() {
        let mut p = patient();
        p["birthDate"] = json!("31/12/1999");
        let outcome = validator().validate(&p);
        assert_eq!(outcome.issues.len(), 1, "{:?}", outcome.issues);
        let issue = &outcome.issues[0];
        assert_eq!(issue.code, "value");
        assert_eq!(issue.diagnostics, "does not match the pattern for date");
        assert_eq!(issue.expression, ["Patient.birthDate"]);
        assert!(!all_text(&outcome).contains("1999"));
    }

    #[test]
    fn bad_nested_values_are_located_precisely() {
        let mut p = patient();
        p["name"][0]["given"][1] = json!("");
        p["meta"]["lastUpdated"] = json!("yesterday 10am");
        let outcome = validator().validate(&p);
        let at: Vec<&str> = outcome
            .issues
            .iter()
            .flat_map(|i| i.expression.iter().map(String::as_str))
            .collect();
        assert!(at.contains(&"Patient.name[0].given[1]"), "{at:?}");
        assert!(at.contains(&"Patient.meta.lastUpdated"), "{at:?}");
        assert!(
            outcome
                .issues
                .iter()
                .any(|i| i.diagnostics == "does not match the pattern for instant")
        );
        assert!(!all_text(&outcome).contains("yesterday"));
    }

    #[test]
    fn unknown_element_is_a_structure_error() {
        let mut p = patient();
        p["favouriteColour"] = json!("blue");
        p["name"][0]["nickname"] = json!("JJ");
        let outcome = validator().validate(&p);
        assert_eq!(outcome.issues.len(), 2, "{:?}", outcome.issues);
        assert!(outcome.issues.iter().all(|i| i.code == "structure"));
        let at: Vec<&str> = outcome
            .issues
            .iter()
            .map(|i| i.expression[0].as_str())
            .collect();
        assert!(at.contains(&"Patient.favouriteColour"), "{at:?}");
        assert!(at.contains(&"Patient.name[0].nickname"), "{at:?}");
        let text = all_text(&outcome);
        assert!(!text.contains("blue") && !text.contains("JJ"), "{text}");
    }

    #[test]
    fn unknown_element_with_a_data_like_name_is_not_echoed() {
        let mut p = patient();
        p["Jane Smith 1980-02-29"] = json!(true);
        let outcome = validator().validate(&p);
        assert_eq!(outcome.issues.len(), 1, "{:?}", outcome.issues);
        assert_eq!(outcome.issues[0].expression, ["Patient"]);
        assert!(!all_text(&outcome).contains("Jane"));
    }

    #[test]
    fn bad_code_lists_the_allowed_codes() {
        let mut p = patient();
        p["gender"] = json!("F");
        let outcome = validator().validate(&p);
        assert_eq!(outcome.issues.len(), 1, "{:?}", outcome.issues);
        let issue = &outcome.issues[0];
        assert_eq!(issue.code, "code-invalid");
        assert_eq!(issue.expression, ["Patient.gender"]);
        assert!(
            issue
                .diagnostics
                .contains("male | female | other | unknown")
        );
    }

    #[test]
    fn missing_required_element() {
        // Observation.code is 1..1 and not primitive, so the schema requires it.
        let obs = json!({"resourceType": "Observation", "status": "final"});
        let outcome = validator().validate(&obs);
        assert_eq!(outcome.issues.len(), 1, "{:?}", outcome.issues);
        assert_eq!(outcome.issues[0].code, "required");
        assert_eq!(outcome.issues[0].expression, ["Observation.code"]);
    }

    #[test]
    fn missing_resource_type() {
        let mut p = patient();
        p.as_object_mut().unwrap().remove("resourceType");
        let outcome = validator().validate(&p);
        assert_eq!(outcome.issues.len(), 1);
        assert_eq!(outcome.issues[0].code, "required");
        assert_eq!(outcome.issues[0].expression, ["Resource.resourceType"]);
    }

    #[test]
    fn non_string_resource_type() {
        let outcome = validator().validate(&json!({"resourceType": ["Patient"]}));
        assert_eq!(outcome.issues.len(), 1);
        assert_eq!(outcome.issues[0].code, "structure");
    }

    #[test]
    fn unknown_resource_type_is_not_echoed() {
        for name in ["Patinet", "HumanName", "Element", "", "Jane Smith"] {
            let outcome = validator().validate(&json!({"resourceType": name, "id": "x"}));
            assert_eq!(outcome.issues.len(), 1, "{name}: {:?}", outcome.issues);
            assert_eq!(outcome.issues[0].code, "value");
            assert!(name.is_empty() || !all_text(&outcome).contains(name));
        }
        assert!(!validator().is_resource_type("HumanName"));
        assert!(validator().is_resource_type("Patient"));
    }

    #[test]
    fn non_object_resource() {
        for v in [json!(null), json!([]), json!("Patient"), json!(3)] {
            let outcome = validator().validate(&v);
            assert_eq!(outcome.issues.len(), 1);
            assert_eq!(outcome.issues[0].code, "structure");
        }
    }

    #[test]
    fn contained_resources_are_checked_by_their_own_type() {
        let mut p = patient();
        p["contained"][0]["name"] = json!(7);
        p["contained"][0]["bogus"] = json!("x");
        let outcome = validator().validate(&p);
        let at: Vec<&str> = outcome
            .issues
            .iter()
            .map(|i| i.expression[0].as_str())
            .collect();
        assert!(at.contains(&"Patient.contained[0].name"), "{at:?}");
        assert!(at.contains(&"Patient.contained[0].bogus"), "{at:?}");
        assert_eq!(outcome.issues.len(), 2, "{:?}", outcome.issues);

        p["contained"][0] = json!({"id": "o1"});
        let outcome = validator().validate(&p);
        assert_eq!(outcome.issues.len(), 1);
        assert_eq!(outcome.issues[0].code, "required");
        assert_eq!(
            outcome.issues[0].expression,
            ["Patient.contained[0].resourceType"]
        );
    }

    #[test]
    fn bundle_entries_are_checked_by_their_own_type() {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": "urn:uuid:1", "resource": patient()},
                {"resource": {"resourceType": "Patient", "birthDate": "soon"}},
                {"resource": {"resourceType": "NotAType"}}
            ]
        });
        let outcome = validator().validate(&bundle);
        let at: Vec<&str> = outcome
            .issues
            .iter()
            .map(|i| i.expression[0].as_str())
            .collect();
        assert_eq!(
            at,
            [
                "Bundle.entry[1].resource.birthDate",
                "Bundle.entry[2].resource.resourceType"
            ],
            "{:?}",
            outcome.issues
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let mut inner = json!({"resourceType": "Basic", "code": {"text": "leaf"}});
        for _ in 0..(MAX_NESTING + 2) {
            inner = json!({"resourceType": "Basic", "code": {"text": "x"}, "contained": [inner]});
        }
        let outcome = validator().validate(&inner);
        assert_eq!(outcome.issues.len(), 1, "{:?}", outcome.issues);
        assert_eq!(outcome.issues[0].code, "structure");
        let depth = outcome.issues[0].expression[0]
            .matches("contained[0]")
            .count();
        assert_eq!(depth, MAX_NESTING);
    }

    #[test]
    fn issues_are_capped() {
        let mut p = patient();
        let names: Vec<Value> = (0..(MAX_ISSUES + 20))
            .map(|_| json!({"given": [1]}))
            .collect();
        p["name"] = Value::Array(names);
        let outcome = validator().validate(&p);
        assert_eq!(outcome.issues.len(), MAX_ISSUES + 1);
        let last = outcome.issues.last().unwrap();
        assert_eq!(last.code, "too-costly");
        assert!(
            last.diagnostics.starts_with("20 further"),
            "{}",
            last.diagnostics
        );
    }

    #[test]
    fn text_and_typed_entry_points() {
        let v = validator();
        assert!(v.validate_str(&patient().to_string()).issues.is_empty());
        let bad = v.validate_str("{\"resourceType\": \"Patient\",\n \"name\": [}");
        assert_eq!(bad.issues.len(), 1);
        assert_eq!(bad.issues[0].code, "structure");
        assert!(
            bad.issues[0].diagnostics.contains("line 2"),
            "{:?}",
            bad.issues
        );

        #[derive(Serialize)]
        struct Minimal<'a> {
            #[serde(rename = "resourceType")]
            resource_type: &'a str,
            active: bool,
        }
        let typed = Minimal {
            resource_type: "Patient",
            active: true,
        };
        assert!(v.validate_typed(&typed).issues.is_empty());
        let map: HashMap<Vec<u8>, u8> = HashMap::from([(vec![1u8], 1u8)]);
        assert_eq!(v.validate_typed(&map).issues[0].code, "processing");
    }

    #[test]
    fn capability_statement_for_4_0_1_is_valid() {
        let cs = json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "implementation": {"description": "fhir-unify"}
        });
        let outcome = validator().validate(&cs);
        assert!(outcome.issues.is_empty(), "{:?}", outcome.issues);
    }

    #[test]
    fn warm_up_compiles_and_rejects_unknown_types() {
        let v = SchemaValidator::r4().unwrap();
        assert_eq!(v.compiled_count(), 0);
        v.warm_up(["Patient", "Observation"]).unwrap();
        assert_eq!(v.compiled_count(), 2);
        assert!(matches!(
            v.warm_up(["Patinet"]),
            Err(ValidationError::UnknownResourceType(_))
        ));
        assert_eq!(v.resource_types().len(), 146);
        assert!(format!("{v:?}").contains("compiled: 2"));
    }

    #[test]
    fn malformed_schemas_are_typed_errors() {
        let uri = "http://example.org/s";
        assert!(matches!(
            SchemaValidator::from_schema(json!({}), uri),
            Err(ValidationError::SchemaShape(_))
        ));
        assert!(matches!(
            SchemaValidator::from_schema(
                json!({"definitions": {}, "discriminator": {"mapping": {"Patient": "#"}}}),
                uri
            ),
            Err(ValidationError::SchemaShape(_))
        ));
        assert!(matches!(
            SchemaValidator::from_schema(
                json!({"definitions": {}, "discriminator": {"mapping": {}}}),
                uri
            ),
            Err(ValidationError::SchemaShape(_))
        ));
    }

    #[test]
    fn uncompilable_type_gives_a_processing_issue() {
        let schema = json!({
            "definitions": {"Thing": {"$ref": "#/definitions/Missing"}},
            "discriminator": {"mapping": {"Thing": "#/definitions/Thing"}}
        });
        let v = SchemaValidator::from_schema(schema, "http://example.org/s").unwrap();
        let outcome = v.validate(&json!({"resourceType": "Thing"}));
        assert_eq!(outcome.issues.len(), 1, "{:?}", outcome.issues);
        assert_eq!(outcome.issues[0].code, "processing");
        assert!(matches!(
            v.warm_up(["Thing"]),
            Err(ValidationError::Compile { .. })
        ));
    }
}
