//! Corpus tests: whole external corpora, not hand-picked cases. The data lives in the shared
//! conformance directory (`<repo>/../shared`, or `$FHIR_UNIFY_SHARED_DIR`); a missing corpus
//! fails the test with the path it looked at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::SchemaValidator;
use crate::outcome::Outcome;

pub(super) fn shared_dir() -> PathBuf {
    match std::env::var_os("FHIR_UNIFY_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

/// The corpus directory, or a failure that says where it was looked for.
pub(super) fn corpus(relative: &str) -> PathBuf {
    let dir = shared_dir().join(relative);
    assert!(
        dir.is_dir(),
        "conformance corpus not found at {} (set FHIR_UNIFY_SHARED_DIR to the `shared` directory)",
        dir.display()
    );
    dir
}

pub(super) fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .json files in {}", dir.display());
    files
}

pub(super) fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

pub(super) fn summary(outcome: &Outcome) -> String {
    outcome
        .issues
        .iter()
        .map(|i| format!("{} {} @ {}", i.code, i.diagnostics, i.expression.join(",")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every resource of every Synthea patient, hospital and practitioner bundle is valid R4.
#[test]
fn synthea_bundle_resources_are_valid() {
    let validator = SchemaValidator::shared().unwrap();
    let dir = corpus("conformance/synthea/fhir");
    let mut per_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let files = json_files(&dir);
    for path in &files {
        let bundle = read_json(path);
        let entries = bundle["entry"]
            .as_array()
            .unwrap_or_else(|| panic!("{} has no entry array", path.display()));
        for (i, entry) in entries.iter().enumerate() {
            let resource = &entry["resource"];
            let resource_type = resource["resourceType"].as_str().unwrap_or("?").to_owned();
            *per_type.entry(resource_type.clone()).or_default() += 1;
            let outcome = validator.validate(resource);
            if !outcome.issues.is_empty() {
                failures.push(format!(
                    "{} entry[{i}] {resource_type}: {}",
                    path.file_name().unwrap().to_string_lossy(),
                    summary(&outcome)
                ));
            }
        }
    }
    let total: usize = per_type.values().sum();
    println!(
        "synthea: {} bundles, {total} resources, {} types, {} with issues",
        files.len(),
        per_type.len(),
        failures.len()
    );
    assert!(
        total > 1000,
        "expected a real corpus, found {total} resources"
    );
    assert!(
        failures.is_empty(),
        "{} Synthea resources have schema issues, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Whole Synthea bundles validated as one resource each: their entries are reached through
/// `Bundle.entry.resource` and checked by their own types, so they must pass too.
#[test]
fn whole_synthea_bundles_are_valid() {
    let validator = SchemaValidator::shared().unwrap();
    let files = json_files(&corpus("conformance/synthea/fhir"));
    for path in &files {
        let outcome = validator.validate(&read_json(path));
        assert!(
            outcome.issues.is_empty(),
            "{}: {}",
            path.display(),
            summary(&outcome)
        );
    }
}

/// HL7 validator test cases whose expected outcome is "valid" and that need nothing beyond
/// the core package, yet on which the JSON Schema is genuinely stricter than the reference
/// validator. Each entry says why; the test fails if one of them stops disagreeing, so the
/// list stays true.
const SCHEMA_STRICTER: &[(&str, &str)] = &[(
    "json-comments-1-yes",
    "JSON with comments: the reference validator accepts it only with its allow-comments \
     option; the pipeline takes strict JSON",
)];

/// The HL7 FHIR validator's own R4 cases: no panic on any of them; every case expected valid
/// that needs nothing beyond core gets no schema error (except the documented ones above).
/// Set `FHIR_UNIFY_CASE_DETAIL=1` to print the issues of every case the schema rejects.
#[test]
fn hl7_validator_cases() {
    let validator = SchemaValidator::shared().unwrap();
    let dir = corpus("conformance/fhir-validation/cases");
    let detail = std::env::var_os("FHIR_UNIFY_CASE_DETAIL").is_some();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut disagree = Vec::new();
    let mut unexpected = Vec::new();
    let mut stricter_seen = Vec::new();
    let cases = json_files(&dir);
    for path in &cases {
        let case = read_json(path);
        let name = case["name"].as_str().unwrap_or("?").to_owned();
        let expected_valid = case["expected"]["valid"].as_bool().unwrap_or_else(|| {
            panic!("{}: no expected.valid", path.display());
        });
        let needs: Vec<&str> = case["needs"]
            .as_array()
            .map(|n| n.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let outcome = match &case["resource"] {
            // Not strict JSON (comments, a missing comma): the text itself goes in, and must be
            // refused cleanly, never with a panic.
            Value::Null => validator.validate_str(case["resourceText"].as_str().unwrap_or("")),
            resource => validator.validate(resource),
        };
        let schema_valid = !outcome.has_errors();
        if detail && !schema_valid {
            println!(
                "{name} (expected valid: {expected_valid}): {}",
                summary(&outcome)
            );
        }
        let key = match (expected_valid, schema_valid) {
            (true, true) => "agree: valid",
            (false, false) => "agree: invalid",
            (false, true) => "expected invalid, schema passes (a rule beyond structure)",
            (true, false) => "disagree: expected valid, schema errors",
        };
        *counts.entry(key).or_default() += 1;
        if expected_valid && !schema_valid {
            disagree.push(format!("{name} (needs {needs:?}): {}", summary(&outcome)));
            if !needs.is_empty() {
                continue;
            }
            if SCHEMA_STRICTER.iter().any(|(n, _)| *n == name) {
                stricter_seen.push(name.clone());
            } else {
                unexpected.push(format!("{name}: {}", summary(&outcome)));
            }
        }
    }
    println!(
        "HL7 validator cases ({}) vs FHIR R4 JSON Schema:",
        cases.len()
    );
    for (what, n) in &counts {
        println!("  {n:4}  {what}");
    }
    for line in &disagree {
        println!("  disagree: {line}");
    }
    assert!(counts.get("agree: valid").is_some_and(|n| *n > 0));
    assert!(counts.get("agree: invalid").is_some_and(|n| *n > 0));
    assert!(
        unexpected.is_empty(),
        "valid core-only cases with schema errors:\n{}",
        unexpected.join("\n")
    );
    for (name, why) in SCHEMA_STRICTER {
        assert!(
            stricter_seen.iter().any(|n| n == name),
            "{name} is listed as schema-stricter ({why}) but no longer disagrees"
        );
    }
}

/// Every resource of the Synthea corpus and of the HL7 validator's cases, valid and invalid.
pub(super) fn corpus_resources() -> Vec<Value> {
    let mut resources = Vec::new();
    for path in json_files(&corpus("conformance/synthea/fhir")) {
        let bundle = read_json(&path);
        resources.extend(
            bundle["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"].clone()),
        );
    }
    for path in json_files(&corpus("conformance/fhir-validation/cases")) {
        let case = read_json(&path);
        if case["resource"].is_object() {
            resources.push(case["resource"].clone());
        }
    }
    resources
}

/// The walker reads each member of an object once through a member index; without the index
/// it looks every JSON name of every child up (the walk before the index). Both give exactly
/// the same outcomes (issues, order, places) over the Synthea corpus and every resource of
/// the HL7 validator's cases, valid and invalid.
#[test]
fn member_index_walk_equals_lookup_walk() {
    use super::Validator;
    let indexed = Validator::r4().unwrap();
    let mut lookup = Validator::r4().unwrap();
    lookup.definitions_mut().drop_member_index();
    let resources = corpus_resources();
    let mut with_issues = 0;
    for r in &resources {
        let a = indexed.validate(r);
        let b = lookup.validate(r);
        assert_eq!(a, b, "{}", r["resourceType"]);
        with_issues += usize::from(
            a.issues
                .iter()
                .any(|i| i.severity >= crate::outcome::Severity::Warning),
        );
    }
    assert!(resources.len() > 5000, "{}", resources.len());
    assert!(
        with_issues > 50,
        "{with_issues} resources with warnings or errors"
    );
}

/// Types are built on first use. A validator whose types are built lazily, by several threads
/// at once (as bulk loads share one), gives exactly the outcomes of one whose every type was
/// built before the first validation, over the Synthea corpus and every resource of the HL7
/// validator's cases.
#[test]
fn lazily_built_types_equal_a_forced_full_build() {
    use super::Validator;
    let lazy = Validator::r4().unwrap();
    assert_eq!(lazy.definitions().built_types(), 0);
    let full = Validator::r4().unwrap();
    full.definitions().build_all().unwrap();
    let all = full.definitions().built_types();
    assert!(all > 200, "{all} types built");
    let resources = corpus_resources();
    const THREADS: usize = 4;
    let outcomes: Vec<Vec<(usize, Outcome)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (lazy, resources) = (&lazy, &resources);
                s.spawn(move || {
                    resources
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % THREADS == t)
                        .map(|(i, r)| (i, lazy.validate(r)))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut compared = 0;
    for (i, outcome) in outcomes.into_iter().flatten() {
        assert_eq!(outcome, full.validate(&resources[i]), "resource {i}");
        compared += 1;
    }
    assert_eq!(compared, resources.len());
    assert!(resources.len() > 5000, "{}", resources.len());
    let used = lazy.definitions().built_types();
    assert!(used > 20 && used <= all, "{used} of {all} types built");
    println!("the corpus built {used} of {all} types");
}

/// The FHIRPath engine's fast paths (environment-only subexpressions computed once per
/// evaluation, `distinct` through keyed sets) give every invariant the verdict of the plain
/// evaluation, on every element the walker evaluates one on, over the Synthea corpus and
/// every resource of the HL7 validator's cases (valid and invalid).
#[test]
fn fast_invariant_evaluation_equals_the_plain_evaluation() {
    use super::Validator;
    use super::structure::reference_check;
    let validator = Validator::r4().unwrap();
    let resources = corpus_resources();
    // The Synthea resources come first: their evaluations are counted apart (what the
    // validation bench spends its invariant time on).
    let synthea = json_files(&corpus("conformance/synthea/fhir"))
        .iter()
        .map(|p| read_json(p)["entry"].as_array().unwrap().len())
        .sum::<usize>();
    reference_check::start();
    let mut outcomes: Vec<Outcome> = resources[..synthea]
        .iter()
        .map(|r| validator.validate(r))
        .collect();
    let on_synthea = reference_check::stop();
    reference_check::start();
    outcomes.extend(resources[synthea..].iter().map(|r| validator.validate(r)));
    let mut tally = reference_check::stop();
    tally.compared += on_synthea.compared;
    tally.memoized += on_synthea.memoized;
    tally
        .disagreements
        .extend(on_synthea.disagreements.iter().cloned());
    assert!(
        tally.disagreements.is_empty(),
        "{} disagreements, first: {:?}",
        tally.disagreements.len(),
        tally.disagreements.iter().take(10).collect::<Vec<_>>()
    );
    assert!(tally.compared > 40_000, "{} compared", tally.compared);
    // dom-3 on every domain resource, its memo used where `contained` is not empty.
    assert!(tally.memoized > 5_000, "{} memoized", tally.memoized);
    assert!(outcomes.iter().any(Outcome::has_errors));
    println!(
        "{} invariant evaluations compared ({} with a memo plan)",
        tally.compared, tally.memoized
    );
    println!("on the {synthea} Synthea resources:");
    let mut by_count: Vec<_> = on_synthea.per_key.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1));
    for ((key, source), n) in by_count {
        println!("{n:>7} {key}: {source}");
    }
}
