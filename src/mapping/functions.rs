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

use super::conceptmap::{ConceptMaps, TranslateError};
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
    #[error("{0}")]
    ConceptMap(#[from] TranslateError),
    #[error("conceptmap: a code must be a string, number or boolean, not {0}")]
    BadConceptMapCode(String),
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
        let code = code_text(&value)
            .ok_or_else(|| FnError::BadCode(value.kind().to_string()).into_error())?;
        match entries.get(&code) {
            Some(serde_json::Value::Null) => Ok(Value::UNDEFINED),
            Some(found) => Ok(Value::from(Serde(found))),
            None => Err(FnError::NotInTable(table).into_error()),
        }
    }
}

/// A code as text: strings as they are, numbers in their shortest form, booleans as
/// `true`/`false` (minijinja prints them Python-style, `True`; YAML and FHIR say `true`).
fn code_text(value: &Value) -> Option<String> {
    match value.kind() {
        ValueKind::String => value.as_str().map(str::to_owned),
        ValueKind::Number => Some(value.to_string()),
        ValueKind::Bool => Some(value.is_true().to_string()),
        _ => None,
    }
}

/// `coding('system', code, display=none)`: the Coding `{system, code, display}`, or undefined
/// (left out) when the code is missing, so an optional code never leaves a lone `system`.
pub(crate) fn coding(system: String, code: Value, display: Option<Value>) -> Result<Value, Error> {
    if is_missing(&code) {
        return Ok(Value::UNDEFINED);
    }
    let code =
        code_text(&code).ok_or_else(|| FnError::BadCode(code.kind().to_string()).into_error())?;
    let mut m = serde_json::Map::new();
    m.insert("system".into(), serde_json::Value::String(system));
    m.insert("code".into(), serde_json::Value::String(code));
    if let Some(d) = display.filter(|d| !is_missing(d))
        && let Some(text) = code_text(&d)
    {
        m.insert("display".into(), serde_json::Value::String(text));
    }
    Ok(Value::from(Serde(serde_json::Value::Object(m))))
}

/// `conceptmap('url', code, system=none)`: the Coding the ConceptMap at `url` maps `code` to
/// (see [`ConceptMaps::translate`]). A missing code stays missing; an unmapped code is an error
/// naming the ConceptMap (unless the map's `unmapped` rule gives a code). `system` may be given
/// by position or by keyword, as the README shows it.
pub(crate) fn conceptmap(
    maps: std::sync::Arc<ConceptMaps>,
) -> impl Fn(String, Value, Option<String>, Kwargs) -> Result<Value, Error> {
    move |url: String, value: Value, positional: Option<String>, kwargs: Kwargs| {
        let keyword: Option<String> = kwargs.get("system")?;
        kwargs.assert_all_used()?;
        if positional.is_some() && keyword.is_some() {
            return Err(Error::new(
                ErrorKind::TooManyArguments,
                "conceptmap: system given both by position and as system=",
            ));
        }
        let system = positional.or(keyword);
        if is_missing(&value) {
            // The url is still checked: an unknown map is a bug in the mapping file.
            return match maps.translate(&url, "", system.as_deref()) {
                Err(e @ TranslateError::UnknownMap(_)) => Err(FnError::from(e).into_error()),
                _ => Ok(Value::UNDEFINED),
            };
        }
        let code = code_text(&value)
            .ok_or_else(|| FnError::BadConceptMapCode(value.kind().to_string()).into_error())?;
        match maps.translate(&url, &code, system.as_deref()) {
            Ok(coding) => Ok(Value::from(Serde(&coding))),
            Err(e) => Err(FnError::from(e).into_error()),
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
