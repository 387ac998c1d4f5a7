//! Amazon States Language engine.
