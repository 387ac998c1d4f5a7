//! Schema drift: the schema of a file set (a file, or a folder of files) is remembered in a
//! small JSON state file, and the next profile of the same set says which columns were
//! added, removed or changed type. A set's schema is the union of its files' columns; a column
//! that held only nulls (`empty`) takes no type, so it never counts as retyped.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FileProfile, ProfileError};

/// The state file: set name → column → type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaState {
    pub version: u32,
    pub sets: BTreeMap<String, BTreeMap<String, String>>,
}

/// How a set's schema changed since the last profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub set: String,
    /// True when the set had not been seen before (nothing to compare with).
    pub first_seen: bool,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// (column, type before, type now).
    pub retyped: Vec<(String, String, String)>,
}

impl DriftReport {
    pub fn drifted(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.retyped.is_empty())
    }
}

fn union(profiles: &[FileProfile]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for p in profiles {
        for (name, ty) in &p.schema {
            match out.get(name).map(String::as_str) {
                None | Some("empty") => {
                    out.insert(name.clone(), ty.clone());
                }
                Some(prev) if ty != "empty" && prev != ty => {
                    let joined = match (prev, ty.as_str()) {
                        ("integer", "decimal") | ("decimal", "integer") => "decimal",
                        ("date", "datetime") | ("datetime", "date") => "datetime",
                        _ => "string",
                    };
                    out.insert(name.clone(), joined.to_owned());
                }
                _ => {}
            }
        }
    }
    out
}

/// Compares `profiles` (the files of set `set`) with the schema last recorded in
/// `state_path`, then records the new one. A missing state file is an empty state.
pub fn drift(
    state_path: &Path,
    set: &str,
    profiles: &[FileProfile],
) -> Result<DriftReport, ProfileError> {
    let file = state_path.display().to_string();
    let mut state: SchemaState = match std::fs::read_to_string(state_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| ProfileError::Malformed {
            file: file.clone(),
            reason: format!("not a schema state file: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SchemaState {
            version: 1,
            ..SchemaState::default()
        },
        Err(e) => {
            return Err(ProfileError::Read {
                file,
                reason: e.to_string(),
            });
        }
    };
    let now = union(profiles);
    let mut report = DriftReport {
        set: set.to_owned(),
        ..DriftReport::default()
    };
    match state.sets.get(set) {
        None => report.first_seen = true,
        Some(before) => {
            for (name, ty) in &now {
                match before.get(name) {
                    None => report.added.push(name.clone()),
                    Some(old) if old != ty && old != "empty" && ty != "empty" => {
                        report.retyped.push((name.clone(), old.clone(), ty.clone()));
                    }
                    _ => {}
                }
            }
            report.removed = before
                .keys()
                .filter(|k| !now.contains_key(*k))
                .cloned()
                .collect();
        }
    }
    // Keep a known type for a column that is all-null this time.
    let mut merged = now;
    if let Some(before) = state.sets.get(set) {
        for (name, ty) in merged.iter_mut() {
            if ty == "empty"
                && let Some(old) = before.get(name)
            {
                ty.clone_from(old);
            }
        }
    }
    state.sets.insert(set.to_owned(), merged);
    state.version = 1;
    let text = serde_json::to_string_pretty(&state).map_err(|e| ProfileError::Malformed {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    if let Some(parent) = state_path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| ProfileError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
    }
    std::fs::write(state_path, text).map_err(|e| ProfileError::Read {
        file,
        reason: e.to_string(),
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiling::Format;

    fn profile(schema: &[(&str, &str)]) -> FileProfile {
        FileProfile {
            file: "f.csv".into(),
            format: Format::Csv,
            rows: 1,
            schema: schema
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
            columns: Vec::new(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn reports_added_removed_and_retyped_columns() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/schemas.json");
        let first = drift(
            &state,
            "s",
            &[profile(&[("a", "integer"), ("b", "string"), ("c", "date")])],
        )
        .unwrap();
        assert!(first.first_seen && !first.drifted());
        let same = drift(
            &state,
            "s",
            &[profile(&[("a", "integer"), ("b", "empty"), ("c", "date")])],
        )
        .unwrap();
        assert!(!same.first_seen && !same.drifted(), "{same:?}");
        let changed = drift(
            &state,
            "s",
            &[profile(&[("a", "string"), ("b", "string"), ("d", "date")])],
        )
        .unwrap();
        assert_eq!(changed.added, ["d"]);
        assert_eq!(changed.removed, ["c"]);
        assert_eq!(
            changed.retyped,
            [("a".to_owned(), "integer".to_owned(), "string".to_owned())]
        );
        // Another set is independent.
        assert!(
            drift(&state, "t", &[profile(&[("x", "integer")])])
                .unwrap()
                .first_seen
        );
        std::fs::write(&state, "{").unwrap();
        assert!(matches!(
            drift(&state, "s", &[]),
            Err(ProfileError::Malformed { .. })
        ));
    }
}
