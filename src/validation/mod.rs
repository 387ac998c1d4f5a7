//! Validation of FHIR resources, answered as an OperationOutcome.
//!
//! [`Validator`] walks each resource against HL7's own R4 core StructureDefinitions, compiled
//! into `fhir-profiles/r4/definitions.json` ([`definitions`]): the contract ([`structure`]:
//! FHIR JSON rules, cardinality, choice types, references, fixed/pattern values, core
//! invariants) and the coding ([`terminology`]: bindings by strength, code system membership,
//! offline check digits). Issues name the rule and the place (`Patient.name[0].given[1]`),
//! never the value. [`SchemaValidator`] (HL7's R4 JSON Schema) is kept for comparison.

pub mod definition_checks;
pub mod definitions;
pub mod lexical;
pub mod location;
pub mod narrative;
pub mod profile;
pub mod questionnaire;
pub mod schema;
pub mod structure;
pub mod terminology;
pub mod ucum;
pub mod validator;

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod corpus_tests;

pub use definitions::Definitions;
pub use location::pointer_to_expression;
pub use schema::SchemaValidator;
pub use structure::MAX_ISSUES;
pub use validator::Validator;

/// Why a validator could not be built. Problems with a *resource* are never errors: they are
/// issues in the returned [`Outcome`](crate::outcome::Outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The embedded schema is not JSON (a broken generated file).
    #[error("FHIR JSON Schema is not valid JSON: {0}")]
    SchemaParse(String),
    /// The schema lacks what the validator relies on (`definitions`, the resource type list).
    #[error("FHIR JSON Schema has an unexpected shape: {0}")]
    SchemaShape(String),
    /// The schema could not be indexed for reference resolution.
    #[error("FHIR JSON Schema could not be indexed: {0}")]
    SchemaIndex(String),
    /// A resource type's validator could not be compiled.
    #[error("FHIR JSON Schema of {resource_type} could not be compiled: {reason}")]
    Compile {
        resource_type: String,
        reason: String,
    },
    /// The compiled definitions are not JSON of the expected shape (a broken generated file).
    #[error("compiled FHIR definitions are not valid: {0}")]
    DefinitionsParse(String),
    /// The compiled definitions lack what the validator relies on.
    #[error("compiled FHIR definitions have an unexpected shape: {0}")]
    DefinitionsShape(String),
    /// A conformance resource given to load is not usable (no url, no elements…).
    #[error("cannot load conformance resource: {0}")]
    Profile(String),
    /// Asked to prepare a resource type the schema does not define.
    #[error("{0} is not a resource type of the FHIR JSON Schema")]
    UnknownResourceType(String),
}
