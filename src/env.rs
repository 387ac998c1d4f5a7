//! Handler environment.
