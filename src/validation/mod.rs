//! Validation of FHIR resources, answered as an OperationOutcome.
