//! The HL7 FHIR validator's own R4 test cases (`<shared>/conformance/fhir-validation/cases`)
//! run through [`Validator`]: agreement with the reference validator on valid/invalid and on
//! the error count, overall and for the cases that need nothing beyond the core package
//! (`needs` empty). Set `FHIR_UNIFY_CASE_DETAIL=1` to print every disagreement.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Validator;
use super::corpus_tests::{corpus, json_files, read_json, summary};
use crate::outcome::Severity;

#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    valid_agree: usize,
    count_agree: usize,
}

impl Tally {
    fn pct(n: usize, d: usize) -> f64 {
        if d == 0 {
            0.0
        } else {
            100.0 * n as f64 / d as f64
        }
    }
    fn line(&self, what: &str) -> String {
        format!(
            "{what}: {} cases, valid/invalid agree {} ({:.1}%), error count agrees {} ({:.1}%)",
            self.cases,
            self.valid_agree,
            Self::pct(self.valid_agree, self.cases),
            self.count_agree,
            Self::pct(self.count_agree, self.cases)
        )
    }
}

#[test]
fn hl7_validator_cases_agreement() {
    let validator = Validator::shared().unwrap();
    let dir = corpus("conformance/fhir-validation/cases");
    let detail = std::env::var_os("FHIR_UNIFY_CASE_DETAIL").is_some();
    let mut all = Tally::default();
    let mut core = Tally::default();
    let mut confusion: BTreeMap<&str, usize> = BTreeMap::new();
    let mut not_checked_cases = 0usize;
    let mut silent_passes = Vec::new();
    for path in json_files(&dir) {
        let case = read_json(&path);
        let name = case["name"].as_str().unwrap_or("?").to_owned();
        let expected_valid = case["expected"]["valid"].as_bool().unwrap();
        let expected_errors = case["expected"]["errorCount"].as_u64().unwrap_or(0) as usize;
        let self_contained = case["needs"].as_array().is_none_or(Vec::is_empty);
        // Supporting resources and the case's profile are loaded into a validator of its own.
        let supporting: Vec<&Value> = case["supporting"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let own;
        let v = if supporting.is_empty() && case["profile"].is_null() {
            validator
        } else {
            let mut fresh = Validator::r4().unwrap();
            for r in supporting.iter().copied().chain(Some(&case["profile"])) {
                if r.is_object() {
                    let _ = fresh.load(r);
                }
            }
            own = fresh;
            &own
        };
        let profiles: Vec<&str> = case["profileUrl"].as_str().into_iter().collect();
        let outcome = match &case["resource"] {
            Value::Null => v.validate_str(case["resourceText"].as_str().unwrap_or("")),
            resource => v.validate_with(resource, &profiles),
        };
        let errors = outcome
            .issues
            .iter()
            .filter(|i| i.severity >= Severity::Error)
            .count();
        let valid = errors == 0;
        let said_not_checked = outcome.issues.iter().any(|i| {
            i.diagnostics.contains("not checked")
                || i.diagnostics.contains("not loaded")
                || i.diagnostics.contains("not evaluated")
        });
        if said_not_checked {
            not_checked_cases += 1;
        }
        // A case that needs what is not held (a terminology server, SNOMED CT…), that the
        // reference finds invalid and that passes here, must say what was not checked.
        if !self_contained && !expected_valid && valid && !said_not_checked {
            silent_passes.push(name.clone());
        }
        for (t, counted) in [(&mut all, true), (&mut core, self_contained)] {
            if !counted {
                continue;
            }
            t.cases += 1;
            t.valid_agree += usize::from(valid == expected_valid);
            t.count_agree += usize::from(errors == expected_errors);
        }
        let key = match (expected_valid, valid) {
            (true, true) => "agree: valid",
            (false, false) => "agree: invalid",
            (false, true) => "expected invalid, validator passes",
            (true, false) => "expected valid, validator errors",
        };
        *confusion.entry(key).or_default() += 1;
        if detail && (valid != expected_valid || errors != expected_errors) {
            println!(
                "{name} core={self_contained} expected valid={expected_valid} errors={expected_errors}, got {errors}: {}",
                summary(&outcome)
            );
        }
    }
    println!("HL7 validator R4 cases vs fhir-unify Validator");
    println!("  {}", all.line("all"));
    println!("  {}", core.line("needs empty"));
    for (k, n) in &confusion {
        println!("  {n:4}  {k}");
    }
    println!("  {not_checked_cases:4}  cases with a 'not checked' information issue");
    println!(
        "  {:4}  cases needing what is not held that pass without saying so: {silent_passes:?}",
        silent_passes.len()
    );
    assert!(all.cases > 200, "expected the whole case set");
    assert!(core.cases > 100);
    // A floor against regressions (measured: 113 of 116, see BENCHMARKS.md): the issue's
    // goal of 95% on the self-contained cases.
    assert!(
        Tally::pct(core.valid_agree, core.cases) >= 95.0,
        "{}",
        core.line("needs empty")
    );
}

/// Every resource of every Synthea bundle has no error and no warning but the documented
/// modality one (information issues, such as "SNOMED CT not loaded: membership not checked",
/// are expected), and whole bundles pass too.
#[test]
fn synthea_resources_have_no_errors() {
    let validator = Validator::shared().unwrap();
    let files = json_files(&corpus("conformance/synthea/fhir"));
    let mut resources = 0usize;
    let mut failures = Vec::new();
    let mut by_severity: BTreeMap<String, usize> = BTreeMap::new();
    let mut modality_warnings = 0usize;
    for path in &files {
        let bundle = read_json(path);
        for (i, entry) in bundle["entry"].as_array().unwrap().iter().enumerate() {
            resources += 1;
            let outcome = validator.validate(&entry["resource"]);
            for issue in &outcome.issues {
                *by_severity
                    .entry(format!("{:?}", issue.severity))
                    .or_default() += 1;
            }
            for issue in outcome
                .issues
                .iter()
                .filter(|i| i.severity >= Severity::Warning)
            {
                // A real finding, not a validator fault: Synthea codes ImagingStudy modality
                // with the DICOM value set's URL as the Coding.system instead of the DICOM
                // code system (http://dicom.nema.org/resources/ontology/DCM), so the code is
                // outside the extensible binding: a warning, as FHIR says.
                let known = issue.severity == Severity::Warning
                    && issue.diagnostics.contains("extensible value set")
                    && issue.expression.iter().all(|e| {
                        e.starts_with("ImagingStudy.series[") && e.ends_with("].modality")
                    });
                if known {
                    modality_warnings += 1;
                } else {
                    failures.push(format!(
                        "{} entry[{i}]: {}",
                        path.file_name().unwrap().to_string_lossy(),
                        summary(&outcome)
                    ));
                }
            }
        }
        let whole = validator.validate(&bundle);
        assert!(
            !whole.has_errors(),
            "{}: {}",
            path.display(),
            summary(&whole)
        );
    }
    println!(
        "synthea: {} bundles, {resources} resources, issues by severity {by_severity:?}",
        files.len()
    );
    println!("synthea: {modality_warnings} ImagingStudy modality warnings (Synthea's coding)");
    assert!(resources > 1000);
    assert!(
        failures.is_empty(),
        "{} Synthea resources have errors or warnings, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
