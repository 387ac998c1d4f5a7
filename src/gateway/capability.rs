//! The CapabilityStatement served at `metadata`: what this API does, said the FHIR way.

use serde_json::{Value, json};

use crate::store::search::{COMMON_PARAMS, type_params};

/// The resource types the pipeline's mappings produce, listed in the statement. Other types
/// are served the same way (every type has the clinical parameters) but not advertised.
pub const LISTED_TYPES: &[&str] = &[
    "Patient",
    "AllergyIntolerance",
    "Condition",
    "Coverage",
    "DiagnosticReport",
    "Encounter",
    "Immunization",
    "MedicationRequest",
    "Observation",
    "Procedure",
];

pub fn statement(base_url: &str) -> Value {
    let resources: Vec<Value> = LISTED_TYPES
        .iter()
        .map(|t| {
            let params: Vec<Value> = COMMON_PARAMS
                .iter()
                .chain(type_params(t))
                .map(|(name, kind)| json!({"name": name, "type": kind.code()}))
                .collect();
            json!({
                "type": t,
                "interaction": [
                    {"code": "read"}, {"code": "vread"},
                    {"code": "history-instance"}, {"code": "history-type"},
                    {"code": "search-type"}
                ],
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": false,
                "conditionalRead": "not-match",
                "searchParam": params,
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "fhir-unify",
        "kind": "instance",
        "software": {"name": "fhir-unify", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "fhir-unify partner FHIR API (read-only)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Search results are ordered by id; pages follow the `next` link (an opaque `_cursor`). _count is at most 1000 (default 50).",
            "security": {
                "cors": false,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]}],
                "description": "Bearer JWT from a registered partner issuer, with SMART system scopes (system/Patient.rs, system/*.read…); each partner reads only its registered types."
            },
            "resource": resources,
        }],
    })
}
