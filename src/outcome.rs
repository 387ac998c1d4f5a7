//! FHIR OperationOutcome: the one way the pipeline says what is wrong with a record or a
//! resource, and where. Every stage (decode, transform, validate, publish) builds its
//! complaints with these helpers, so quarantine entries and API errors all look alike.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// FHIR `IssueSeverity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Information,
    Warning,
    Error,
    Fatal,
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub severity: Severity,
    /// FHIR `IssueType` code: `structure`, `required`, `value`, `invalid`, `code-invalid`,
    /// `processing`, `exception`, `not-found`, `conflict`…
    pub code: String,
    /// What is wrong, for a person. Never patient data: names of fields, not their values.
    pub diagnostics: String,
    /// Where: FHIRPath-like expressions (`Patient.birthDate`) or source locations
    /// (`record pk=p-1 field birth_date`).
    pub expression: Vec<String>,
}

impl Issue {
    pub fn new(severity: Severity, code: &str, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity,
            code: code.to_owned(),
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    pub fn error(code: &str, diagnostics: impl Into<String>) -> Self {
        Issue::new(Severity::Error, code, diagnostics)
    }

    /// Adds a location.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }
}

/// A list of issues that renders as a FHIR R4 OperationOutcome.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub issues: Vec<Issue>,
}

impl Outcome {
    pub fn new() -> Self {
        Outcome::default()
    }

    /// An outcome with one error issue.
    pub fn error(code: &str, diagnostics: impl Into<String>) -> Self {
        Outcome {
            issues: vec![Issue::error(code, diagnostics)],
        }
    }

    pub fn push(&mut self, issue: Issue) {
        self.issues.push(issue);
    }

    /// True if any issue is an error or fatal: the resource or record must not go on.
    pub fn has_errors(&self) -> bool {
        self.issues.iter().any(|i| i.severity >= Severity::Error)
    }

    /// The FHIR R4 OperationOutcome resource.
    pub fn to_fhir(&self) -> Value {
        let issues: Vec<Value> = if self.issues.is_empty() {
            // An OperationOutcome needs at least one issue; "all OK" is said as information.
            vec![
                json!({"severity": "information", "code": "informational", "diagnostics": "no issues"}),
            ]
        } else {
            self.issues
                .iter()
                .map(|i| {
                    let mut v = json!({
                        "severity": i.severity,
                        "code": i.code,
                        "diagnostics": i.diagnostics,
                    });
                    if !i.expression.is_empty() {
                        v["expression"] = json!(i.expression);
                    }
                    v
                })
                .collect()
        };
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

impl From<Issue> for Outcome {
    fn from(issue: Issue) -> Self {
        Outcome {
            issues: vec![issue],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fhir_operation_outcome() {
        let mut o = Outcome::new();
        assert!(!o.has_errors());
        assert_eq!(o.to_fhir()["issue"][0]["severity"], "information");
        o.push(Issue::new(Severity::Warning, "value", "odd"));
        assert!(!o.has_errors());
        o.push(Issue::error("required", "Patient.name missing").at("Patient.name"));
        assert!(o.has_errors());
        let v = o.to_fhir();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][1]["code"], "required");
        assert_eq!(v["issue"][1]["expression"][0], "Patient.name");
        assert!(v["issue"][0].get("expression").is_none());
    }
}
