//! [`Validator`]: the pipeline's validator. One call checks a resource's contract (structure,
//! cardinality, types, references, core invariants) and its coding (bindings, code systems),
//! walking the compiled HL7 R4 core definitions, and answers an [`Outcome`].

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;

use super::ValidationError;
use super::definitions::{Definitions, ValueSetDef};
use super::profile::Profile;
use super::structure::Walker;
use crate::outcome::{Issue, Outcome, Severity};

/// The canonical URL prefix of HL7's core StructureDefinitions.
const CORE_SD: &str = "http://hl7.org/fhir/StructureDefinition/";

/// The project's profiles, embedded so that Lambdas and tests need no file
/// (`fhir-profiles/profiles/`; a test checks that every file there is listed).
const PIPELINE_PROFILES: &[&str] = &[
    include_str!("../../fhir-profiles/profiles/AllergyIntolerance.json"),
    include_str!("../../fhir-profiles/profiles/CarePlan.json"),
    include_str!("../../fhir-profiles/profiles/Claim.json"),
    include_str!("../../fhir-profiles/profiles/Condition.json"),
    include_str!("../../fhir-profiles/profiles/Coverage.json"),
    include_str!("../../fhir-profiles/profiles/Encounter.json"),
    include_str!("../../fhir-profiles/profiles/Immunization.json"),
    include_str!("../../fhir-profiles/profiles/MedicationRequest.json"),
    include_str!("../../fhir-profiles/profiles/Observation.json"),
    include_str!("../../fhir-profiles/profiles/Organization.json"),
    include_str!("../../fhir-profiles/profiles/Patient.json"),
    include_str!("../../fhir-profiles/profiles/Practitioner.json"),
    include_str!("../../fhir-profiles/profiles/PractitionerRole.json"),
    include_str!("../../fhir-profiles/profiles/Procedure.json"),
];

/// What [`Validator::load`] did with a conformance resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    Profile(String),
    CodeSystem(String),
    ValueSet(String),
    Questionnaire(String),
    /// A SearchParameter: its type is checked where it is named.
    SearchParameter(String),
    /// An ImplementationGuide: its global profiles (type → profile) now apply.
    ImplementationGuide(String),
    /// A Bundle: how many of its entries were loaded.
    Bundle(usize),
    /// A resource the validator does not use (Questionnaire, ImplementationGuide…).
    Ignored(String),
}

/// Validates FHIR R4 resources. Build it once ([`Validator::r4`] or [`Validator::shared`])
/// and share it: it is `Send + Sync` and holds no per-call state.
#[derive(Debug)]
pub struct Validator {
    defs: Definitions,
    profiles: HashMap<String, Profile>,
    questionnaires: HashMap<String, Value>,
    /// Global profiles of loaded ImplementationGuides: (resource type, profile URL).
    globals: Vec<(String, String)>,
    invariants: bool,
}

impl Validator {
    /// The FHIR R4 (4.0.1) validator over the embedded core definitions.
    pub fn r4() -> Result<Self, ValidationError> {
        Ok(Validator {
            defs: Definitions::r4()?,
            profiles: HashMap::new(),
            questionnaires: HashMap::new(),
            globals: Vec::new(),
            invariants: true,
        })
    }

    /// The pipeline's validator: [`Validator::r4`] with the project's own profiles
    /// (`fhir-profiles/profiles/`, one per resource type the pipeline emits: the identifiers,
    /// codes and bindings it requires), each applied to every resource of its type.
    pub fn pipeline() -> Result<Self, ValidationError> {
        let mut validator = Validator::r4()?;
        for text in PIPELINE_PROFILES {
            let sd: Value = serde_json::from_str(text)
                .map_err(|e| ValidationError::Profile(format!("a pipeline profile: {e}")))?;
            let ty = sd
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if let Loaded::Profile(url) = validator.load(&sd)? {
                validator.globals.push((ty, url));
            }
        }
        Ok(validator)
    }

    /// A process-wide R4 validator, built on first call (a Lambda's cold start).
    pub fn shared() -> Result<&'static Validator, ValidationError> {
        static SHARED: OnceLock<Result<Validator, ValidationError>> = OnceLock::new();
        SHARED
            .get_or_init(Validator::r4)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Turns the evaluation of FHIRPath invariants on (the default) or off. Off is for
    /// measuring their cost; a pipeline keeps them on.
    pub fn set_invariants(&mut self, on: bool) {
        self.invariants = on;
    }

    /// The definitions this validator walks.
    pub fn definitions(&self) -> &Definitions {
        &self.defs
    }

    #[cfg(test)]
    pub(crate) fn definitions_mut(&mut self) -> &mut Definitions {
        &mut self.defs
    }

    /// True if `name` is a concrete FHIR R4 resource type.
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.defs.is_resource_type(name)
    }

    /// Validates one resource: its `resourceType` picks the definition. Resources nested in
    /// it (contained, Bundle entries, Parameters) are checked by their own types, with
    /// locations under the outer resource. No error issue means valid; information issues
    /// say what could not be checked (codes of systems not held).
    pub fn validate(&self, resource: &Value) -> Outcome {
        self.validate_with(resource, &[])
    }

    /// Validates one resource against the core definitions, the profiles it names in
    /// `meta.profile` that are loaded, and `profiles` (canonical URLs of loaded profiles).
    /// A profile named in `meta.profile` that is not loaded gives an information issue.
    pub fn validate_with(&self, resource: &Value, profiles: &[&str]) -> Outcome {
        let mut walker = Walker::new(&self.defs).with_invariants(self.invariants);
        let mut loc = String::with_capacity(64);
        walker.resource(resource, &mut loc, 0);
        let root = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("Resource");
        let claimed = resource
            .get("meta")
            .and_then(|m| m.get("profile"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default();
        if root == "QuestionnaireResponse"
            && let Some(url) = resource.get("questionnaire").and_then(Value::as_str)
        {
            let key = url.split('|').next().unwrap_or(url);
            match self.questionnaires.get(key) {
                Some(q) => super::questionnaire::check_response(
                    &self.defs,
                    resource,
                    q,
                    root,
                    walker.sink_mut(),
                ),
                None => walker.sink_mut().push(
                    Severity::Information,
                    "informational",
                    root,
                    format!(
                        "the questionnaire {key} is not loaded: answers were not checked against it"
                    ),
                ),
            }
        }
        super::narrative::check_links(resource, root, walker.sink_mut());
        super::definition_checks::check(&self.defs, resource, root, walker.sink_mut());
        let globals = self
            .globals
            .iter()
            .filter(|(t, _)| t == root)
            .map(|(_, url)| url.as_str());
        let mut seen = HashSet::new();
        for url in profiles.iter().copied().chain(claimed).chain(globals) {
            let key = url.split('|').next().unwrap_or(url);
            if !seen.insert(key) {
                continue;
            }
            match self.profiles.get(key) {
                Some(profile) => {
                    let known = super::profile::Known {
                        profiles: &self.profiles,
                        defs: &self.defs,
                    };
                    profile.check_in(resource, root, walker.sink_mut(), &known, 0)
                }
                None if key.strip_prefix(CORE_SD).is_some_and(|t| t == root) => {}
                None => walker.sink_mut().push(
                    Severity::Information,
                    "informational",
                    root,
                    format!(
                        "the profile {key} is not loaded: the resource was not checked against it"
                    ),
                ),
            }
        }
        walker.finish()
    }

    /// True if a profile with this canonical URL is loaded.
    pub fn has_profile(&self, url: &str) -> bool {
        self.profiles
            .contains_key(url.split('|').next().unwrap_or(url))
    }

    /// Adds a conformance resource to what the validator knows: a constraint
    /// StructureDefinition (a profile), a CodeSystem (its codes), a ValueSet (its expansion,
    /// or its compose over code systems held), or a Bundle of them.
    pub fn load(&mut self, resource: &Value) -> Result<Loaded, ValidationError> {
        let rt = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let url = resource.get("url").and_then(Value::as_str).unwrap_or("");
        match rt {
            "StructureDefinition"
                if resource.get("derivation").and_then(Value::as_str) == Some("constraint") =>
            {
                let profile = Profile::from_structure_definition(resource)?;
                let url = profile.url.clone();
                if profile.resource_type == "Extension"
                    && let Some(ctx) = resource.get("context").and_then(Value::as_array)
                {
                    let contexts: Vec<(String, String)> = ctx
                        .iter()
                        .filter_map(|c| {
                            Some((
                                c.get("type")?.as_str()?.to_owned(),
                                c.get("expression")?.as_str()?.to_owned(),
                            ))
                        })
                        .collect();
                    if !contexts.is_empty() {
                        self.defs.add_extension_context(&url, contexts);
                    }
                }
                self.profiles.insert(url.clone(), profile);
                Ok(Loaded::Profile(url))
            }
            "CodeSystem" if !url.is_empty() => {
                let mut codes = HashMap::new();
                collect_concepts(resource.get("concept"), &mut codes, 0);
                let content = resource
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or("complete");
                if content == "supplement" || resource.get("supplements").is_some() {
                    self.defs.add_supplement(url);
                    return Ok(Loaded::Ignored(format!("CodeSystem supplement {url}")));
                }
                // A CodeSystem that lists no codes says nothing about membership: loading it
                // must not make every code unknown.
                if codes.is_empty() || content == "not-present" {
                    return Ok(Loaded::Ignored(format!("CodeSystem {url} ({content})")));
                }
                let displays: HashMap<String, String> = codes
                    .iter()
                    .filter_map(|(c, d)| Some((c.clone(), d.clone()?)))
                    .collect();
                let codes: HashSet<String> = codes.into_keys().collect();
                if content == "complete" {
                    self.defs.add_code_system(url, codes);
                } else {
                    self.defs.add_code_system_fragment(url, codes);
                }
                self.defs.add_displays(url, displays);
                Ok(Loaded::CodeSystem(url.to_owned()))
            }
            "SearchParameter" if !url.is_empty() => {
                if let Some(t) = resource.get("type").and_then(Value::as_str) {
                    self.defs.add_search_param(url, t);
                }
                Ok(Loaded::SearchParameter(url.to_owned()))
            }
            "ValueSet" if !url.is_empty() => {
                let vs = self.expand(resource);
                self.defs.add_value_set(url, vs);
                Ok(Loaded::ValueSet(url.to_owned()))
            }
            "ImplementationGuide" if !url.is_empty() => {
                for g in resource
                    .get("global")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    if let (Some(t), Some(p)) = (
                        g.get("type").and_then(Value::as_str),
                        g.get("profile").and_then(Value::as_str),
                    ) {
                        let p = p.split('|').next().unwrap_or(p);
                        if !self.globals.iter().any(|(gt, gp)| gt == t && gp == p) {
                            self.globals.push((t.to_owned(), p.to_owned()));
                        }
                    }
                }
                Ok(Loaded::ImplementationGuide(url.to_owned()))
            }
            "Questionnaire" if !url.is_empty() => {
                self.questionnaires.insert(url.to_owned(), resource.clone());
                Ok(Loaded::Questionnaire(url.to_owned()))
            }
            "Bundle" => {
                let mut n = 0;
                for entry in resource
                    .get("entry")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    if let Some(r) = entry.get("resource")
                        && !matches!(self.load(r)?, Loaded::Ignored(_))
                    {
                        n += 1;
                    }
                }
                Ok(Loaded::Bundle(n))
            }
            other => Ok(Loaded::Ignored(other.to_owned())),
        }
    }

    /// A loaded ValueSet's codes: its expansion if it has one, else its compose (concept
    /// lists, and whole code systems held); anything else makes it open.
    fn expand(&self, vs: &Value) -> ValueSetDef {
        let mut out = ValueSetDef::default();
        if let Some(contains) = vs.pointer("/expansion/contains").and_then(Value::as_array) {
            let mut stack: Vec<&Value> = contains.iter().collect();
            while let Some(c) = stack.pop() {
                if let (Some(s), Some(code)) = (
                    c.get("system").and_then(Value::as_str),
                    c.get("code").and_then(Value::as_str),
                ) {
                    out.codes
                        .entry(s.to_owned())
                        .or_default()
                        .insert(code.to_owned());
                }
                if let Some(more) = c.get("contains").and_then(Value::as_array) {
                    stack.extend(more);
                }
            }
            return out;
        }
        let includes = vs
            .pointer("/compose/include")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for inc in includes {
            let Some(system) = inc.get("system").and_then(Value::as_str) else {
                out.open.push("valueset-include".to_owned());
                continue;
            };
            if let Some(concepts) = inc.get("concept").and_then(Value::as_array) {
                let set = out.codes.entry(system.to_owned()).or_default();
                set.extend(
                    concepts
                        .iter()
                        .filter_map(|c| c.get("code").and_then(Value::as_str))
                        .map(str::to_owned),
                );
            } else if inc.get("filter").is_none()
                && let Some(all) = self.defs.code_system(system)
            {
                out.codes
                    .entry(system.to_owned())
                    .or_default()
                    .extend(all.iter().cloned());
            } else {
                out.open.push(system.to_owned());
            }
        }
        out
    }

    /// Validates a resource given as JSON text. Text that is not JSON gives a `structure`
    /// error naming the line and column.
    pub fn validate_str(&self, json: &str) -> Outcome {
        match serde_json::from_str::<Value>(json) {
            Ok(resource) => self.validate(&resource),
            Err(e) => Outcome::from(parse_error(&e)),
        }
    }

    /// Validates any serializable resource (a typed model, a map).
    pub fn validate_typed<T: Serialize + ?Sized>(&self, resource: &T) -> Outcome {
        match serde_json::to_value(resource) {
            Ok(value) => self.validate(&value),
            Err(e) => Outcome::from(Issue::error(
                "processing",
                format!("the resource could not be serialized to JSON: {e}"),
            )),
        }
    }
}

fn collect_concepts(
    concepts: Option<&Value>,
    out: &mut HashMap<String, Option<String>>,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    for c in concepts
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if let Some(code) = c.get("code").and_then(Value::as_str) {
            let display = c.get("display").and_then(Value::as_str).map(str::to_owned);
            out.insert(code.to_owned(), display);
        }
        collect_concepts(c.get("concept"), out, depth + 1);
    }
}

/// The issue for text that is not JSON: the kind of error, its line and column.
pub fn parse_error(e: &serde_json::Error) -> Issue {
    Issue::error(
        "structure",
        format!(
            "not valid JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    )
    .at(format!("line {}, column {}", e.line(), e.column()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn issues(v: &Value) -> Vec<(Severity, String, String)> {
        Validator::shared()
            .unwrap()
            .validate(v)
            .issues
            .into_iter()
            .map(|i| (i.severity, i.diagnostics, i.expression.join(",")))
            .collect()
    }

    fn has(v: &Value, severity: Severity, key: &str, at: &str) -> bool {
        issues(v)
            .iter()
            .any(|(s, d, e)| *s == severity && d.starts_with(&format!("{key}: ")) && e == at)
    }

    #[test]
    fn invariants_report_key_human_text_and_location() {
        let bad = json!({"resourceType": "Patient", "contact": [{"gender": "male"}]});
        assert!(has(&bad, Severity::Error, "pat-1", "Patient.contact[0]"));
        let text = issues(&bad);
        assert!(
            text.iter()
                .any(|(_, d, _)| d.contains("SHALL at least contain a contact's details"))
        );
        let good = json!({"resourceType": "Patient", "contact": [{"name": {"family": "Lee"}}]});
        assert!(
            !issues(&good)
                .iter()
                .any(|(s, _, _)| *s >= Severity::Warning)
        );
    }

    #[test]
    fn data_type_invariants_apply_where_the_type_is_used() {
        let bad = json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "period": {"start": "2020-02-01", "end": "2020-01-01"}});
        assert!(has(&bad, Severity::Error, "per-1", "Encounter.period"));
        let uncertain = json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "period": {"start": "2020-01", "end": "2020-01-15"}});
        assert!(!has(
            &uncertain,
            Severity::Error,
            "per-1",
            "Encounter.period"
        ));
    }

    #[test]
    fn engine_replaces_hand_coded_core_invariants() {
        let ext = json!({"resourceType": "Patient", "extension": [{"url": "http://x/e", "valueString": "a",
            "extension": [{"url": "b", "valueString": "c"}]}]});
        assert!(has(&ext, Severity::Error, "ext-1", "Patient.extension[0]"));
        let q = json!({"resourceType": "Questionnaire", "status": "draft", "item": [
            {"linkId": "1", "type": "boolean"},
            {"linkId": "2", "type": "string", "enableWhen": [
                {"question": "1", "operator": "=", "answerBoolean": true},
                {"question": "1", "operator": "exists", "answerBoolean": true}]}]});
        assert!(has(&q, Severity::Error, "que-12", "Questionnaire.item[1]"));
        let mut fixed = q.clone();
        fixed["item"][1]["enableBehavior"] = json!("any");
        assert!(!has(
            &fixed,
            Severity::Error,
            "que-12",
            "Questionnaire.item[1]"
        ));
        let orphan = json!({"resourceType": "Patient", "contained": [
            {"resourceType": "Organization", "id": "o", "meta": {"versionId": "1"}}]});
        assert!(has(&orphan, Severity::Error, "dom-3", "Patient"));
        assert!(has(&orphan, Severity::Error, "dom-4", "Patient"));
        let referenced = json!({"resourceType": "Patient", "managingOrganization": {"reference": "#o"},
            "contained": [{"resourceType": "Organization", "id": "o", "name": "x"}]});
        assert!(!has(&referenced, Severity::Error, "dom-3", "Patient"));
        let ras = json!({"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/p"},
            "prediction": [{"probabilityDecimal": 101}]});
        assert!(has(
            &ras,
            Severity::Error,
            "ras-2",
            "RiskAssessment.prediction[0]"
        ));
    }

    #[test]
    fn best_practice_invariants_are_information_and_can_be_switched_off() {
        let p = json!({"resourceType": "Patient"});
        assert!(has(&p, Severity::Information, "dom-6", "Patient"));
        let mut v = Validator::r4().unwrap();
        v.set_invariants(false);
        let bad = json!({"resourceType": "Patient", "contact": [{"gender": "male"}]});
        assert!(!v.validate(&bad).has_errors());
    }

    #[test]
    fn ucum_units_and_ages_in_time_units() {
        let obs = |code: &str| {
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "valueQuantity": {"value": 1, "system": "http://unitsofmeasure.org", "code": code}})
        };
        assert!(
            !Validator::shared()
                .unwrap()
                .validate(&obs("mg/dL"))
                .has_errors()
        );
        let bad = issues(&obs("mg//dL"));
        assert!(bad.iter().any(|(s, d, e)| *s == Severity::Error
            && d.starts_with("not a valid UCUM unit")
            && e == "Observation.valueQuantity.code"));
        let age = |code: &str| {
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/p"},
                "onsetAge": {"value": 3, "system": "http://unitsofmeasure.org", "code": code}})
        };
        assert!(
            !Validator::shared()
                .unwrap()
                .validate(&age("a"))
                .has_errors()
        );
        assert!(
            issues(&age("kg"))
                .iter()
                .any(|(s, d, e)| *s == Severity::Error
                    && d.contains("unit of time")
                    && e == "Condition.onsetAge.code")
        );
    }
    #[test]
    fn extension_contexts_are_checked() {
        let url = "http://hl7.org/fhir/StructureDefinition/humanname-mothers-family";
        let on_name = json!({"resourceType": "Patient", "name": [{"family": "F",
            "extension": [{"url": url, "valueString": "M"}]}]});
        assert!(has_error_at(
            &on_name,
            "Patient.name[0].extension[0]",
            "not allowed here"
        ));
        let on_family = json!({"resourceType": "Patient", "name": [{"family": "F",
            "_family": {"extension": [{"url": url, "valueString": "M"}]}}]});
        assert!(
            !Validator::shared()
                .unwrap()
                .validate(&on_family)
                .has_errors()
        );
        // A resource-level extension on a resource; one on a data type it is not made for.
        let birth = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace";
        let ok = json!({"resourceType": "Patient", "extension": [{"url": birth, "valueAddress": {"city": "X"}}]});
        assert!(!Validator::shared().unwrap().validate(&ok).has_errors());
        let bad = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "extension": [{"url": birth, "valueAddress": {"city": "X"}}]});
        assert!(has_error_at(
            &bad,
            "Observation.extension[0]",
            "not allowed here"
        ));
    }

    fn has_error_at(v: &Value, at: &str, text: &str) -> bool {
        issues(v)
            .iter()
            .any(|(s, d, e)| *s == Severity::Error && e == at && d.contains(text))
    }

    #[test]
    fn displays_of_held_code_systems_are_checked() {
        let coding = |display: &str| {
            json!({"resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": display}})
        };
        assert!(
            !issues(&coding("ambulatory"))
                .iter()
                .any(|(s, _, _)| *s >= Severity::Warning)
        );
        assert!(
            !issues(&coding("AMBULATORY "))
                .iter()
                .any(|(s, _, _)| *s >= Severity::Warning)
        );
        let wrong = issues(&coding("inpatient encounter"));
        assert!(wrong.iter().any(|(s, d, e)| *s == Severity::Warning
            && d.starts_with("wrong display")
            && e == "Encounter.class.display"));
        assert!(!wrong.iter().any(|(s, _, _)| *s == Severity::Error));
    }

    #[test]
    fn loaded_code_systems_check_membership_and_display() {
        let loinc = "http://loinc.org";
        let obs = |code: &str, display: &str| {
            json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": loinc, "code": code, "display": display}]}})
        };
        let shared = Validator::shared().unwrap();
        // Not loaded: the check digit is checked and membership is said not to be.
        let before = shared.validate(&obs("8480-6", "Systolic blood pressure"));
        assert!(
            before
                .issues
                .iter()
                .any(|i| i.severity == Severity::Information
                    && i.diagnostics.contains("membership was not checked"))
        );
        assert!(shared.validate(&obs("8480-5", "x")).has_errors());
        let mut v = Validator::r4().unwrap();
        let loaded = v
            .load(
                &json!({"resourceType": "CodeSystem", "url": loinc, "content": "fragment",
                "concept": [{"code": "8480-6", "display": "Systolic blood pressure"}]}),
            )
            .unwrap();
        assert_eq!(loaded, Loaded::CodeSystem(loinc.to_owned()));
        let ok = v.validate(&obs("8480-6", "Systolic blood pressure"));
        assert!(
            !ok.issues
                .iter()
                .any(|i| i.diagnostics.contains("not checked") || i.severity >= Severity::Warning),
            "{ok:?}"
        );
        let wrong_display = v.validate(&obs("8480-6", "Diastolic"));
        assert!(
            wrong_display
                .issues
                .iter()
                .any(|i| i.severity == Severity::Warning
                    && i.diagnostics.starts_with("wrong display"))
        );
        // A fragment: a code outside it is a warning, not an error.
        let outside = v.validate(&obs("8462-4", "Diastolic blood pressure"));
        assert!(!outside.has_errors());
        assert!(
            outside
                .issues
                .iter()
                .any(|i| i.severity == Severity::Warning && i.diagnostics.contains("fragment"))
        );
        // A complete code system: a code outside it is an error.
        v.load(&json!({"resourceType": "CodeSystem", "url": "http://example.org/cs", "content": "complete",
            "concept": [{"code": "a", "display": "A", "concept": [{"code": "b"}]}]}))
            .unwrap();
        let ex = |code: &str| {
            json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://example.org/cs", "code": code}]}})
        };
        assert!(!v.validate(&ex("b")).has_errors());
        assert!(v.validate(&ex("c")).has_errors());
        // A supplement adds designations: it is no system a Coding may name.
        v.load(&json!({"resourceType": "CodeSystem", "url": "http://example.org/sup", "content": "supplement",
            "supplements": loinc, "concept": [{"code": "8480-6", "display": "SBP"}]}))
            .unwrap();
        let sup = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://example.org/sup", "code": "8480-6"}]}});
        assert!(v.validate(&sup).has_errors());
        // A CodeSystem without its codes says nothing about membership.
        let ignored = v
            .load(&json!({"resourceType": "CodeSystem", "url": "http://snomed.info/sct", "content": "not-present"}))
            .unwrap();
        assert!(matches!(ignored, Loaded::Ignored(_)));
        let sct = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "271649006"}]}});
        assert!(!v.validate(&sct).has_errors());
    }

    #[test]
    fn global_profiles_of_a_loaded_implementation_guide_apply() {
        let mut v = Validator::r4().unwrap();
        v.load(&json!({"resourceType": "StructureDefinition", "url": "http://x/p", "type": "Patient",
            "derivation": "constraint", "differential": {"element": [{"path": "Patient.name", "min": 1}]}}))
            .unwrap();
        let p = json!({"resourceType": "Patient", "active": true});
        assert!(!v.validate(&p).has_errors());
        let ig = v
            .load(
                &json!({"resourceType": "ImplementationGuide", "url": "http://x/ig",
                "global": [{"type": "Patient", "profile": "http://x/p"}]}),
            )
            .unwrap();
        assert_eq!(ig, Loaded::ImplementationGuide("http://x/ig".to_owned()));
        assert!(v.validate(&p).has_errors());
        assert!(
            !v.validate(&json!({"resourceType": "Basic", "code": {"text": "x"}}))
                .has_errors()
        );
    }

    fn errors(outcome: &Outcome) -> Vec<String> {
        outcome
            .issues
            .iter()
            .filter(|i| i.severity == Severity::Error)
            .map(|i| format!("{} @ {}", i.diagnostics, i.expression.join(",")))
            .collect()
    }

    #[test]
    fn every_file_of_the_project_profiles_is_embedded_and_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-profiles/profiles");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = PIPELINE_PROFILES.iter().map(|s| (*s).to_owned()).collect();
        embedded.sort();
        assert_eq!(
            on_disk, embedded,
            "fhir-profiles/profiles/ and PIPELINE_PROFILES differ"
        );
        let v = Validator::pipeline().unwrap();
        assert_eq!(v.globals.len(), PIPELINE_PROFILES.len());
        for (ty, url) in &v.globals {
            assert!(v.is_resource_type(ty), "{ty}");
            assert_eq!(
                url,
                &format!("https://fhir-unify.dev/fhir/StructureDefinition/{ty}")
            );
            // Each profile, read as a resource, is itself a valid StructureDefinition.
            let text = PIPELINE_PROFILES
                .iter()
                .find(|t| t.contains(&format!("\"url\": \"{url}\"")))
                .unwrap();
            let sd: Value = serde_json::from_str(text).unwrap();
            assert!(
                errors(&v.validate(&sd)).is_empty(),
                "{ty}: {:?}",
                errors(&v.validate(&sd))
            );
        }
    }

    #[test]
    fn the_pipeline_requires_identifiers_codes_and_its_bindings() {
        let core = Validator::r4().unwrap();
        let v = Validator::pipeline().unwrap();
        let no_identifier = json!({"resourceType": "Patient", "gender": "female"});
        assert!(errors(&core.validate(&no_identifier)).is_empty());
        assert_eq!(
            errors(&v.validate(&no_identifier)),
            [
                "Patient.identifier: minimum required = 1, but only found 0 (from https://fhir-unify.dev/fhir/StructureDefinition/Patient) @ Patient"
            ]
        );
        let unsystemed = json!({"resourceType": "Patient", "identifier": [{"value": "7"}],
            "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]}});
        assert_eq!(
            errors(&v.validate(&unsystemed)),
            [
                "Patient.identifier.system: minimum required = 1, but only found 0 (from https://fhir-unify.dev/fhir/StructureDefinition/Patient) @ Patient.identifier[0]"
            ]
        );
        // maritalStatus: extensible in the core (a warning), required here (an error).
        let married_elsewhere = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:x", "value": "7"}],
            "maritalStatus": {"coding": [{"system": "urn:other", "code": "wed"}]}});
        assert!(errors(&core.validate(&married_elsewhere)).is_empty());
        assert_eq!(
            errors(&v.validate(&married_elsewhere)),
            [
                "the code is not in the required value set http://hl7.org/fhir/ValueSet/marital-status @ Patient.maritalStatus"
            ]
        );
        // The core's own binding (gender, required) is reported once, by the core.
        let bad_gender = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:x", "value": "7"}], "gender": "f"});
        assert_eq!(errors(&v.validate(&bad_gender)).len(), 1);
        let uncoded = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "weight"}, "subject": {"reference": "Patient/p"}});
        assert!(errors(&core.validate(&uncoded)).is_empty());
        assert_eq!(
            errors(&v.validate(&uncoded)),
            [
                "Observation.code.coding: minimum required = 1, but only found 0 (from https://fhir-unify.dev/fhir/StructureDefinition/Observation) @ Observation.code"
            ]
        );
        // Types without a project profile keep the core's rules only.
        let basic = json!({"resourceType": "Basic", "code": {"text": "x"}});
        assert!(errors(&v.validate(&basic)).is_empty());
    }
}
