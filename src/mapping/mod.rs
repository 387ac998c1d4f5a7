//! Mapping files: source records to FHIR resources.
