//! Validation of FHIR resources, answered as an OperationOutcome.
//!
//! v1 is the contract check: every resource the pipeline produces is checked against HL7's
//! FHIR R4 JSON Schema ([`SchemaValidator`]). Issues name the rule and the place
//! (`Patient.name[0].given[1]`), never the value. Profile and terminology (coding) checks are
//! later stages that add to the same [`Outcome`](crate::outcome::Outcome).

pub mod location;
pub mod schema;

#[cfg(test)]
mod corpus_tests;

pub use location::pointer_to_expression;
pub use schema::{MAX_ISSUES, SchemaValidator};

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
    /// Asked to prepare a resource type the schema does not define.
    #[error("{0} is not a resource type of the FHIR JSON Schema")]
    UnknownResourceType(String),
}
