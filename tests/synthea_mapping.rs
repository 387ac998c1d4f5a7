//! Synthea as a real source: maps the Synthea CSV export in `../shared/conformance/synthea/csv`
//! with the mapping files in `examples/synthea/`, and compares the result with the FHIR R4
//! bundles Synthea itself exported from the same population: per patient and resource type the
//! same number of resources, with equal key fields (identifiers, codes, dates, status and
//! references). The data stays in `../shared` (or `$FHIR_UNIFY_SHARED_DIR`); the test fails
//! with a clear message when it is absent.
//!
//! How the two exports are lined up:
//! - ids: ours are deterministic from (source, entity, key); Synthea's are its own UUIDs, which
//!   are the CSV `Id` where a file has one. References are compared as (type, source `Id`): ours
//!   through the keys we mapped, Synthea's `urn:uuid:` through the bundle, its conditional
//!   references (`Organization?identifier=…|Id`, `Practitioner?identifier=npi|…`) through the
//!   shared hospital and practitioner bundles.
//! - instants are compared in UTC (the CSV says `Z`, the FHIR local time with an offset); where
//!   the CSV has a date only, with the UTC date of Synthea's instant.
//! - Observations: the manifest's rule. `observations.csv` has one row per Observation without
//!   components, one per component, and QALY/DALY/QOLS rows (empty CATEGORY, CSV only); so
//!   Synthea's Observations are flattened into components and our rows without a category are
//!   left out of the comparison.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use fhir_unify::mapping::Mapping;
use fhir_unify::mapping::csv_records::{CsvOptions, open_csv};
use fhir_unify::model::{RecordKey, ResourceOp};

const SYNTHEA: &str = "https://github.com/synthetichealth/synthea";
const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

/// `../shared` next to the project, or `FHIR_UNIFY_SHARED_DIR` (as tests/dms.rs finds it);
/// fails loudly when absent.
fn synthea_dir() -> PathBuf {
    let dir = std::env::var_os("FHIR_UNIFY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let synthea = dir.join("conformance/synthea");
    assert!(
        synthea.join("MANIFEST.json").is_file(),
        "the Synthea conformance data is missing: expected {} (set FHIR_UNIFY_SHARED_DIR to the shared/ folder)",
        synthea.display()
    );
    synthea
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entity {
    file: String,
    key: Vec<String>,
    mapping: String,
}

/// One mapped resource and where it came from.
#[derive(Debug)]
struct Ours {
    entity: String,
    key: RecordKey,
    resource: Value,
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/synthea")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Maps every Synthea CSV file; any mapping or CSV error fails the test, listed.
fn map_all(synthea: &Path) -> (Vec<Ours>, BTreeMap<String, usize>) {
    let text = std::fs::read_to_string(examples().join("entities.yaml")).unwrap();
    let entities: BTreeMap<String, Entity> = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = Vec::new();
    let mut rows = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, e) in &entities {
        let mapping = Mapping::load(&examples().join(&e.mapping))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(mapping.entity(), name, "{}", e.mapping);
        let keys: Vec<&str> = e.key.iter().map(String::as_str).collect();
        let options = CsvOptions::new("synthea", name, &keys);
        let records = open_csv(&synthea.join("csv").join(&e.file), options).unwrap();
        let mut n = 0;
        for record in records {
            n += 1;
            let change = match record {
                Ok(c) => c,
                Err(err) => {
                    errors.push(err.to_string());
                    continue;
                }
            };
            match mapping.apply(&change) {
                Ok(changes) => {
                    for c in changes {
                        if let ResourceOp::Upsert { resource } = c.op {
                            out.push(Ours {
                                entity: name.clone(),
                                key: change.key.clone(),
                                resource,
                            });
                        }
                    }
                }
                Err(outcome) => errors.extend(outcome.issues.into_iter().map(|i| i.diagnostics)),
            }
        }
        rows.insert(name.clone(), n);
    }
    assert!(
        errors.is_empty(),
        "{} mapping errors, first: {:#?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    (out, rows)
}

/// An instant in UTC (`2014-05-06T08:34:30Z`); a date stays a date.
fn utc(s: &str) -> String {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t
            .with_timezone(&Utc)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        Err(_) => s.to_owned(),
    }
}

/// The date of an instant as written (Synthea's CSV gives the local date, its FHIR the local
/// time with an offset), or the date itself.
fn day(s: &str) -> String {
    s.chars().take(10).collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn code(v: &Value) -> String {
    let c = &v["coding"][0];
    format!("{}|{}", s(&c["system"]), s(&c["code"]))
}

fn number(v: &Value) -> String {
    v.as_f64().map(|f| format!("{f:.3}")).unwrap_or_default()
}

/// Resolves references on both sides to `Type/<source Id>`.
struct Refs {
    /// Our resource id → `Type/<Id>` (for single-`Id` keys).
    ours: HashMap<String, String>,
    /// Synthea `urn:uuid:…` → `Type/<id>`.
    urns: HashMap<String, String>,
    /// NPI → practitioner id.
    npis: HashMap<String, String>,
    /// Synthea `urn:uuid:…` → the resource (for MedicationRequest.medicationReference).
    resources: HashMap<String, Value>,
}

impl Refs {
    fn ours(&self, v: &Value) -> String {
        let r = s(&v["reference"]);
        let id = r.split_once('/').map(|(_, id)| id).unwrap_or_default();
        self.ours.get(id).cloned().unwrap_or_else(|| {
            if r.is_empty() {
                r
            } else {
                format!("unresolved {r}")
            }
        })
    }

    fn theirs(&self, v: &Value) -> String {
        let r = s(&v["reference"]);
        if let Some(t) = self.urns.get(&r) {
            return t.clone();
        }
        if let Some((ty, query)) = r.split_once("?identifier=") {
            if let Some(npi) = query.strip_prefix(&format!("{NPI}|"))
                && let Some(id) = self.npis.get(npi)
            {
                return format!("{ty}/{id}");
            }
            if let Some(id) = query.strip_prefix(&format!("{SYNTHEA}|")) {
                return format!("{ty}/{id}");
            }
        }
        if r.is_empty() {
            r
        } else {
            format!("unresolved {r}")
        }
    }
}

/// The key fields of a resource as one comparable line; `side` picks the reference resolver.
fn signature(r: &Value, refs: &Refs, ours: bool) -> Vec<String> {
    let rf = |v: &Value| if ours { refs.ours(v) } else { refs.theirs(v) };
    let own_id = |r: &Value| {
        if ours {
            s(&r["identifier"][0]["value"])
        } else {
            s(&r["id"])
        }
    };
    match r["resourceType"].as_str().unwrap_or_default() {
        "Patient" => {
            let synthea_id = r["identifier"]
                .as_array()
                .and_then(|ids| ids.iter().find(|i| i["system"] == SYNTHEA))
                .map(|i| s(&i["value"]))
                .unwrap_or_default();
            vec![
                synthea_id,
                s(&r["gender"]),
                s(&r["birthDate"]),
                s(&r["name"][0]["family"]),
                s(&r["name"][0]["given"][0]),
                day(&s(&r["deceasedDateTime"])),
            ]
        }
        "Encounter" => vec![
            s(&r["identifier"][0]["value"]),
            s(&r["status"]),
            format!("{}|{}", s(&r["class"]["system"]), s(&r["class"]["code"])),
            code(&r["type"][0]),
            rf(&r["subject"]),
            utc(&s(&r["period"]["start"])),
            utc(&s(&r["period"]["end"])),
            rf(&r["serviceProvider"]),
            rf(&r["participant"][0]["individual"]),
            code(&r["reasonCode"][0]),
        ],
        "Condition" => vec![
            code(&r["code"]),
            code(&r["clinicalStatus"]),
            rf(&r["subject"]),
            rf(&r["encounter"]),
            day(&s(&r["onsetDateTime"])),
            day(&s(&r["abatementDateTime"])),
        ],
        "Procedure" => vec![
            code(&r["code"]),
            s(&r["status"]),
            rf(&r["subject"]),
            rf(&r["encounter"]),
            utc(&s(&r["performedPeriod"]["start"])),
            utc(&s(&r["performedPeriod"]["end"])),
        ],
        "Immunization" => vec![
            code(&r["vaccineCode"]),
            s(&r["status"]),
            rf(&r["patient"]),
            rf(&r["encounter"]),
            utc(&s(&r["occurrenceDateTime"])),
        ],
        "MedicationRequest" => vec![
            match r.get("medicationReference") {
                Some(m) if !ours => refs
                    .resources
                    .get(&s(&m["reference"]))
                    .map(|med| code(&med["code"]))
                    .unwrap_or_else(|| format!("unresolved {m}")),
                _ => code(&r["medicationCodeableConcept"]),
            },
            s(&r["status"]),
            rf(&r["subject"]),
            rf(&r["encounter"]),
            utc(&s(&r["authoredOn"])),
        ],
        "AllergyIntolerance" => vec![
            code(&r["code"]),
            code(&r["clinicalStatus"]),
            s(&r["type"]),
            s(&r["category"][0]),
            rf(&r["patient"]),
            day(&s(&r["recordedDate"])),
        ],
        "CarePlan" => vec![
            own_id(r),
            s(&r["status"]),
            code(&r["category"][1]),
            rf(&r["subject"]),
            rf(&r["encounter"]),
            day(&s(&r["period"]["start"])),
            day(&s(&r["period"]["end"])),
        ],
        "Claim" => vec![
            own_id(r),
            s(&r["status"]),
            rf(&r["patient"]),
            utc(&s(&r["billablePeriod"]["start"])),
        ],
        // Synthea's CSV export writes commas in text as spaces ("TUFTS MEDICAL CENTER, INC"
        // is "TUFTS MEDICAL CENTER  INC" in organizations.csv).
        "Organization" => vec![own_id(r), s(&r["name"]).replace(',', " ")],
        "Practitioner" => vec![
            own_id(r),
            s(&r["name"][0]["family"]),
            s(&r["name"][0]["given"][0]),
            s(&r["gender"]),
        ],
        other => vec![format!("no signature for {other}")],
    }
}

/// An Observation row: (code, instant, encounter, unit, numeric value) for ours and for each
/// of Synthea's Observations or components (the manifest's rule). The value is last: the two
/// exports round differently (161.85 in FHIR is 161.9 in the CSV), so it is compared with a
/// tolerance, after the rows are sorted on the other fields.
fn observation_rows(r: &Value, refs: &Refs, ours: bool) -> Vec<Vec<String>> {
    let enc = if ours {
        refs.ours(&r["encounter"])
    } else {
        refs.theirs(&r["encounter"])
    };
    let at = utc(&s(&r["effectiveDateTime"]));
    let row = |part: &Value| {
        vec![
            code(&part["code"]),
            at.clone(),
            enc.clone(),
            s(&part["valueQuantity"]["unit"]),
            number(&part["valueQuantity"]["value"]),
        ]
    };
    match r["component"].as_array() {
        Some(components) if !ours => components.iter().map(row).collect(),
        _ => vec![row(r)],
    }
}

/// Observation rows agree on every field, and on the value within the CSV's rounding (one
/// decimal; Synthea's FHIR rounds large values to a few significant digits: 191395 → 191400).
fn observation_rows_agree(ours: &[String], theirs: &[String]) -> bool {
    let n = ours.len() - 1;
    if ours[..n] != theirs[..n] {
        return false;
    }
    match (ours[n].parse::<f64>(), theirs[n].parse::<f64>()) {
        (Ok(a), Ok(b)) => (a - b).abs() <= 0.0501_f64.max(b.abs() * 5e-4),
        _ => ours[n] == theirs[n],
    }
}

/// `(patient Id, type)` → sorted signatures.
type Grouped = BTreeMap<(String, String), Vec<Vec<String>>>;

fn push(g: &mut Grouped, patient: &str, ty: &str, sig: Vec<String>) {
    g.entry((patient.to_owned(), ty.to_owned()))
        .or_default()
        .push(sig);
}

#[test]
fn synthea_csv_maps_to_what_synthea_exports_as_fhir() {
    let synthea = synthea_dir();
    let manifest = read_json(&synthea.join("MANIFEST.json"));
    let (ours, rows) = map_all(&synthea);

    // Every row of every file became resources (providers two each).
    for (entity, n) in &rows {
        let made = ours.iter().filter(|o| &o.entity == entity).count();
        let per_row = if entity == "providers" { 2 } else { 1 };
        assert_eq!(made, n * per_row, "{entity}: {n} rows, {made} resources");
        let csv_rows = &manifest["csv"][format!("{}.csv", entity)]["rows"];
        assert_eq!(Some(*n as u64), csv_rows.as_u64(), "{entity}: row count");
    }

    // Our ids → Type/<Id> for the entities keyed by Id.
    let mut refs = Refs {
        ours: HashMap::new(),
        urns: HashMap::new(),
        npis: HashMap::new(),
        resources: HashMap::new(),
    };
    for o in &ours {
        if let Some(id) = o.key.0.get("Id").and_then(Value::as_str) {
            let ty = s(&o.resource["resourceType"]);
            refs.ours.insert(s(&o.resource["id"]), format!("{ty}/{id}"));
        }
    }

    // Synthea's bundles.
    let mut theirs_by_patient: Vec<(String, Vec<Value>)> = Vec::new();
    let mut shared: Vec<Value> = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(synthea.join("fhir"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let bundle = read_json(&path);
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        let mut resources = Vec::new();
        for e in entries {
            let r = e["resource"].clone();
            let ty = s(&r["resourceType"]);
            refs.urns
                .insert(s(&e["fullUrl"]), format!("{ty}/{}", s(&r["id"])));
            if ty == "Medication" {
                refs.resources.insert(s(&e["fullUrl"]), r.clone());
            }
            if ty == "Practitioner" {
                for i in r["identifier"].as_array().into_iter().flatten() {
                    if i["system"] == NPI {
                        refs.npis.insert(s(&i["value"]), s(&r["id"]));
                    }
                }
            }
            resources.push(r);
        }
        let patient = resources
            .iter()
            .find(|r| r["resourceType"] == "Patient")
            .map(|r| s(&r["id"]));
        match patient {
            Some(p) => theirs_by_patient.push((p, resources)),
            None => shared.extend(resources),
        }
    }
    assert_eq!(theirs_by_patient.len(), 10, "patient bundles");

    // The patient a resource belongs to.
    let patient_of = |r: &Value, ours: bool| -> String {
        if r["resourceType"] == "Patient" {
            return s(&r["identifier"][0]["value"]);
        }
        let v = if r.get("patient").is_some() {
            &r["patient"]
        } else {
            &r["subject"]
        };
        let t = if ours { refs.ours(v) } else { refs.theirs(v) };
        t.strip_prefix("Patient/").unwrap_or(&t).to_owned()
    };

    const COMPARED: [&str; 10] = [
        "Patient",
        "Encounter",
        "Condition",
        "Observation",
        "Procedure",
        "Immunization",
        "MedicationRequest",
        "AllergyIntolerance",
        "CarePlan",
        "Claim",
    ];
    let mut theirs_g = Grouped::new();
    let mut ours_g = Grouped::new();
    let with_bundle: Vec<&str> = theirs_by_patient.iter().map(|(p, _)| p.as_str()).collect();
    for (patient, resources) in &theirs_by_patient {
        for r in resources {
            let ty = s(&r["resourceType"]);
            if !COMPARED.contains(&ty.as_str()) {
                continue;
            }
            if ty == "Observation" {
                for row in observation_rows(r, &refs, false) {
                    push(&mut theirs_g, patient, &ty, row);
                }
            } else {
                push(&mut theirs_g, patient, &ty, signature(r, &refs, false));
            }
        }
    }
    let mut without_bundle = BTreeMap::<String, usize>::new();
    for o in &ours {
        let r = &o.resource;
        let ty = s(&r["resourceType"]);
        if !COMPARED.contains(&ty.as_str()) {
            continue;
        }
        let patient = patient_of(r, true);
        assert!(
            !patient.is_empty() && !patient.starts_with("unresolved"),
            "{ty} of {} {}: no patient ({patient})",
            o.entity,
            o.key
        );
        if !with_bundle.contains(&patient.as_str()) {
            *without_bundle.entry(patient).or_default() += 1;
            continue;
        }
        if ty == "Observation" {
            // CSV-only rows (QALY, DALY, QOLS) have no category: not in Synthea's FHIR.
            if r.get("category").is_none() {
                continue;
            }
            for row in observation_rows(r, &refs, true) {
                push(&mut ours_g, &patient, &ty, row);
            }
        } else {
            push(&mut ours_g, &patient, &ty, signature(r, &refs, true));
        }
    }
    // The one patient without a bundle is the one the manifest says is missing.
    let missing: Vec<String> = manifest["patients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["fhir_bundle"].is_null())
        .map(|p| s(&p["id"]))
        .collect();
    assert_eq!(
        without_bundle.keys().cloned().collect::<Vec<_>>(),
        missing,
        "our resources of patients without a Synthea bundle"
    );

    let mut problems = Vec::new();
    let mut compared = 0;
    let keys: std::collections::BTreeSet<_> =
        theirs_g.keys().chain(ours_g.keys()).cloned().collect();
    for k in keys {
        let mut a = ours_g.remove(&k).unwrap_or_default();
        let mut b = theirs_g.remove(&k).unwrap_or_default();
        // Observations sort without their value (it is compared with a tolerance).
        let without_last = |r: &Vec<String>| r[..r.len() - 1].to_vec();
        if k.1 == "Observation" {
            a.sort_by_key(without_last);
            b.sort_by_key(without_last);
        } else {
            a.sort();
            b.sort();
        }
        compared += b.len();
        if a.len() != b.len() {
            problems.push(format!(
                "{} {}: {} mapped, {} in Synthea's FHIR",
                k.0,
                k.1,
                a.len(),
                b.len()
            ));
            continue;
        }
        for (x, y) in a.iter().zip(&b) {
            let same = if k.1 == "Observation" {
                observation_rows_agree(x, y)
            } else {
                x == y
            };
            if !same {
                problems.push(format!("{} {}: ours {x:?} != Synthea's {y:?}", k.0, k.1));
                break;
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences, first:\n{}",
        problems.len(),
        problems[..problems.len().min(15)].join("\n")
    );
    assert!(compared > 2500, "only {compared} resources compared");

    // The shared bundles: every Organization and Practitioner, by Synthea Id.
    for ty in ["Organization", "Practitioner"] {
        let mut a: Vec<_> = ours
            .iter()
            .filter(|o| o.resource["resourceType"] == ty && o.entity != "payers")
            .map(|o| signature(&o.resource, &refs, true))
            .collect();
        let mut b: Vec<_> = shared
            .iter()
            .filter(|r| r["resourceType"] == ty)
            .map(|r| signature(r, &refs, false))
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a.len(), b.len(), "{ty} count");
        assert_eq!(a, b, "{ty}");
    }
    // Payers have no resource in Synthea's FHIR export (only display names): each is mapped.
    assert_eq!(
        ours.iter()
            .filter(|o| o.entity == "payers" && o.resource["type"][0]["coding"][0]["code"] == "pay")
            .count(),
        rows["payers"]
    );
}

/// What the pipeline's own profiles (`fhir-profiles/profiles/`) require, every resource the
/// Synthea mappings make has: the Synthea source is not quarantined by them.
#[test]
fn synthea_csv_maps_to_resources_the_pipeline_profiles_accept() {
    let (ours, _) = map_all(&synthea_dir());
    let validator = fhir_unify::validation::Validator::pipeline().unwrap();
    let mut by_profile: BTreeMap<String, usize> = BTreeMap::new();
    let mut first = Vec::new();
    for o in &ours {
        for issue in validator.validate(&o.resource).issues {
            if issue.severity == fhir_unify::outcome::Severity::Error
                && issue.diagnostics.contains("https://fhir-unify.dev/fhir/")
            {
                *by_profile.entry(o.entity.clone()).or_default() += 1;
                if first.len() < 5 {
                    first.push(format!("{}: {}", o.entity, issue.diagnostics));
                }
            }
        }
    }
    assert!(ours.len() > 1000, "{} resources", ours.len());
    assert!(by_profile.is_empty(), "{by_profile:?}, first: {first:#?}");
}
