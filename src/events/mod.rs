//! Change events.
