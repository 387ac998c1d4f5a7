//! SQLite FHIR store.
