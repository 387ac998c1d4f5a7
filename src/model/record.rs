//! A source record as the pipeline carries it: any JSON value, or a row of cells that shares
//! its column names with every other row of its file.
//!
//! A CSV file's rows all have the same keys; building each row as a JSON object allocated,
//! copied and freed every column name once per row without ever reading it as data. A
//! [`Cells`] row holds only its values and an [`Arc`] of the file's [`Columns`]. On the wire
//! (the store, Step Functions payloads, the event archive) a record is exactly the JSON object
//! the row would have been: the same keys, in the same (name) order, the absent cells left
//! out. What comes back from the wire is always [`Record::Json`].

use std::fmt;
use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The column names of a file, in name order (the order of a JSON object's keys).
#[derive(Debug, PartialEq, Eq)]
pub struct Columns {
    names: Box<[String]>,
}

impl Columns {
    /// `names` must be distinct and sorted (callers check the header).
    pub fn sorted(names: Vec<String>) -> Arc<Self> {
        debug_assert!(names.windows(2).all(|w| w[0] < w[1]));
        Arc::new(Columns {
            names: names.into_boxed_slice(),
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The index of a column.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }
}

/// One row: a value per column (`None`: the cell is absent, as a key left out of an object).
#[derive(Debug, Clone)]
pub struct Cells {
    columns: Arc<Columns>,
    values: Vec<Option<Value>>,
}

impl Cells {
    /// `values` are in the order of `columns`, one each.
    pub fn new(columns: Arc<Columns>, values: Vec<Option<Value>>) -> Self {
        debug_assert_eq!(columns.names.len(), values.len());
        Cells { columns, values }
    }

    pub fn columns(&self) -> &Arc<Columns> {
        &self.columns
    }

    /// The cell at a column index.
    pub fn at(&self, index: usize) -> Option<&Value> {
        self.values.get(index).and_then(Option::as_ref)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.columns
            .names
            .iter()
            .zip(&self.values)
            .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
    }
}

/// A source change's data.
#[derive(Debug, Clone)]
pub enum Record {
    Json(Value),
    Cells(Cells),
}

impl Default for Record {
    fn default() -> Self {
        Record::Json(Value::Null)
    }
}

impl From<Value> for Record {
    fn from(v: Value) -> Self {
        Record::Json(v)
    }
}

impl From<Map<String, Value>> for Record {
    fn from(m: Map<String, Value>) -> Self {
        Record::Json(Value::Object(m))
    }
}

impl From<Cells> for Record {
    fn from(c: Cells) -> Self {
        Record::Cells(c)
    }
}

static NULL: Value = Value::Null;

impl Record {
    /// A field's value (`None`: absent, or the record is not an object).
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Record::Json(v) => v.get(name),
            Record::Cells(c) => c.columns.index(name).and_then(|i| c.at(i)),
        }
    }

    /// Whether the record is an object (a row always is).
    pub fn is_object(&self) -> bool {
        matches!(self, Record::Cells(_) | Record::Json(Value::Object(_)))
    }

    /// The JSON value, borrowed when it is one.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Record::Json(v) => Some(v),
            Record::Cells(_) => None,
        }
    }

    /// The fields in key order (nothing when the record is not an object).
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&String, &Value)> + '_> {
        match self {
            Record::Json(Value::Object(m)) => Box::new(m.iter()),
            Record::Json(_) => Box::new(std::iter::empty()),
            Record::Cells(c) => Box::new(c.iter()),
        }
    }

    /// The record as the JSON value it is on the wire.
    pub fn to_value(&self) -> Value {
        match self {
            Record::Json(v) => v.clone(),
            Record::Cells(c) => {
                Value::Object(c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            Record::Json(v) => v,
            Record::Cells(c) => {
                let Cells { columns, values } = c;
                Value::Object(
                    columns
                        .names
                        .iter()
                        .zip(values)
                        .filter_map(|(n, v)| v.map(|v| (n.clone(), v)))
                        .collect(),
                )
            }
        }
    }
}

impl std::ops::Index<&str> for Record {
    type Output = Value;

    /// Like `serde_json`'s: `null` for an absent field.
    fn index(&self, name: &str) -> &Value {
        self.get(name).unwrap_or(&NULL)
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Record::Json(a), Record::Json(b)) => a == b,
            (Record::Json(a), b @ Record::Cells(_)) | (b @ Record::Cells(_), Record::Json(a)) => {
                b == a
            }
            (a, b) => a.is_object() && b.is_object() && a.iter().eq(b.iter()),
        }
    }
}

impl PartialEq<Value> for Record {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Record::Json(a), b) => a == b,
            (Record::Cells(c), Value::Object(m)) => {
                c.iter().count() == m.len() && c.iter().eq(m.iter())
            }
            (Record::Cells(_), _) => false,
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Json(v) => v.fmt(f),
            Record::Cells(_) => self.to_value().fmt(f),
        }
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Record::Json(v) => v.serialize(s),
            Record::Cells(c) => {
                let mut m = s.serialize_map(None)?;
                for (k, v) in c.iter() {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Record::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> (Record, Value) {
        let columns = Columns::sorted(vec!["BIRTH".into(), "Id".into(), "STOP".into(), "a".into()]);
        let cells = Cells::new(
            columns,
            vec![
                Some(json!("1990-01-01")),
                Some(json!("p1")),
                None,
                Some(Value::Null),
            ],
        );
        (
            Record::Cells(cells),
            json!({"BIRTH": "1990-01-01", "Id": "p1", "a": null}),
        )
    }

    #[test]
    fn cells_serialize_as_the_object_they_replace_and_come_back_as_it() {
        let (r, v) = row();
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, serde_json::to_string(&v).unwrap());
        assert_eq!(text, r#"{"BIRTH":"1990-01-01","Id":"p1","a":null}"#);
        let back: Record = serde_json::from_str(&text).unwrap();
        assert!(matches!(back, Record::Json(_)));
        assert_eq!(back, r);
        assert_eq!(r, v);
        assert_eq!(r.to_value(), v);
        assert_eq!(r.clone().into_value(), v);
        assert_eq!(r.to_string(), v.to_string());
        // Inside a change, as the wire carries it.
        let wrapped = serde_json::to_value(json!({"data": r.to_value()})).unwrap();
        assert_eq!(
            serde_json::to_value(serde_json::json!({"data": serde_json::to_value(&r).unwrap()}))
                .unwrap(),
            wrapped
        );
    }

    #[test]
    fn cells_answer_like_the_object() {
        let (r, v) = row();
        for name in ["BIRTH", "Id", "STOP", "a", "zz", ""] {
            assert_eq!(r.get(name), v.get(name), "{name}");
            assert_eq!(r[name], v[name], "{name}");
        }
        assert!(r.is_object());
        let pairs: Vec<_> = r.iter().collect();
        let expected: Vec<_> = v.as_object().unwrap().iter().collect();
        assert_eq!(pairs, expected);
        assert_ne!(r, json!({"BIRTH": "1990-01-01", "Id": "p1"}));
        assert_ne!(r, json!("p1"));
        assert_eq!(Record::default(), Value::Null);
    }
}
