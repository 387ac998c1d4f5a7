//! The filters and functions a mapping's expressions can call besides minijinja's builtins:
//! `required`, `translate(table)` and `reference(type, entity=, key=, suffix=)`.
//!
//! Their errors carry a [`FnError`] as source, so the mapping can report them word for word:
//! they name tables and fields, never values. Errors from minijinja itself may quote values
//! (e.g. an overflowing `+`), so only their kind is reported.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

use super::json::{ToJsonError, to_json};
use super::resource_id;
use crate::model::RecordKey;

/// Translation tables: table name → source code → FHIR value.
pub(crate) type Tables = BTreeMap<String, BTreeMap<String, serde_json::Value>>;

/// An error raised by one of our filters or functions; its text is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FnError {
    #[error("required value missing")]
    Required,
    #[error("code not in translation table `{0}`")]
    NotInTable(String),
    #[error("unknown translation table `{0}`")]
    UnknownTable(String),
    #[error("translate: a code must be a string, number or boolean, not {0}")]
    BadCode(String),
    #[error("reference: `{0}` is not a FHIR resource type name")]
    BadType(String),
    #[error("reference: key must be a map of key attribute names to values")]
    BadKey,
    #[error("reference: {0} is not available in this context")]
    NoContext(&'static str),
}

impl FnError {
    fn into_error(self) -> Error {
        Error::new(ErrorKind::InvalidOperation, self.to_string()).with_source(self)
    }
}

/// True if `v` holds nothing FHIR would keep: undefined, none, a blank string, an empty list
/// or map.
pub(crate) fn is_missing(v: &Value) -> bool {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => true,
        ValueKind::String => v.as_str().is_some_and(|s| s.trim().is_empty()),
        ValueKind::Seq | ValueKind::Map => v.len() == Some(0),
        _ => false,
    }
}

/// `value | required`: the value itself, or an error if it is missing.
pub(crate) fn required(value: Value) -> Result<Value, Error> {
    if is_missing(&value) {
        Err(FnError::Required.into_error())
    } else {
        Ok(value)
    }
}

/// `value | translate('table')`: the table's entry for the code. A missing value stays missing;
/// a code not in the table is an error (never passed through).
pub(crate) fn translate(tables: Arc<Tables>) -> impl Fn(Value, String) -> Result<Value, Error> {
    move |value: Value, table: String| {
        let Some(entries) = tables.get(&table) else {
            return Err(FnError::UnknownTable(table).into_error());
        };
        if value.is_undefined() || value.is_none() {
            return Ok(Value::UNDEFINED);
        }
        let code = match value.kind() {
            ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
            ValueKind::Number => value.to_string(),
            // minijinja prints booleans Python-style (`True`); YAML keys are `true`/`false`.
            ValueKind::Bool => value.is_true().to_string(),
            other => return Err(FnError::BadCode(other.to_string()).into_error()),
        };
        match entries.get(&code) {
            Some(serde_json::Value::Null) => Ok(Value::UNDEFINED),
            Some(found) => Ok(Value::from(Serde(found))),
            None => Err(FnError::NotInTable(table).into_error()),
        }
    }
}

/// `reference('Organization', entity='clinics', key={'clinic_id': record.clinic_id},
/// suffix=none)`: `"Organization/<id>"`, the id the mapping of that entity of the same source
/// gives. `entity` defaults to the current entity and `key` to the current record's key. If
/// any key value is missing, the result is undefined (the reference is left out).
pub(crate) fn reference(
    state: &State,
    resource_type: String,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    if !super::is_resource_type(&resource_type) {
        return Err(FnError::BadType(resource_type).into_error());
    }
    let entity: Option<String> = kwargs.get("entity")?;
    let key_arg: Option<Value> = kwargs.get("key")?;
    let suffix: Option<String> = kwargs.get("suffix")?;
    kwargs.assert_all_used()?;

    let context_str = |name: &'static str| {
        state
            .lookup(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .ok_or_else(|| FnError::NoContext(name).into_error())
    };
    let source = context_str("source")?;
    let entity = match entity {
        Some(e) => e,
        None => context_str("entity")?,
    };
    let key_value = match key_arg {
        Some(k) => k,
        None => state
            .lookup("key")
            .ok_or_else(|| FnError::NoContext("key").into_error())?,
    };
    if key_value.kind() != ValueKind::Map {
        return Err(FnError::BadKey.into_error());
    }
    let mut key = RecordKey::default();
    for name in key_value.try_iter()? {
        let Some(name_str) = name.as_str() else {
            return Err(FnError::BadKey.into_error());
        };
        let v = key_value.get_item(&name)?;
        if is_missing(&v) {
            return Ok(Value::UNDEFINED);
        }
        let json = to_json(&v).map_err(|e| match e {
            ToJsonError::NotRepresentable(kind) => Error::new(
                ErrorKind::InvalidOperation,
                format!("reference: a key value of kind {kind} cannot be used"),
            ),
        })?;
        key.0.insert(name_str.to_owned(), json);
    }
    let id = resource_id(&source, &entity, &key, &resource_type, suffix.as_deref());
    Ok(Value::from(format!("{resource_type}/{id}")))
}
