//! Pipeline configuration.
