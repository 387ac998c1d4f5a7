//! `arn:aws:states:::dynamodb:getItem` / `putItem` / `updateItem` / `deleteItem`: Step
//! Functions' optimized DynamoDB integration over a local [`TableBackend`].
//!
//! Items are DynamoDB's attribute-value JSON (`{"S": "x"}`, `{"N": "1"}`, `M`, `L`, `SS`, `NS`,
//! `BS`, `B`, `BOOL`, `NULL`). ConditionExpression (comparisons, `BETWEEN`, `IN`, `AND`/`OR`/
//! `NOT`, `attribute_exists`, `attribute_not_exists`, `attribute_type`, `begins_with`,
//! `contains`, `size`), UpdateExpression (`SET` with `+`/`-`, `if_not_exists`, `list_append`;
//! `REMOVE`; `ADD`; `DELETE`), ProjectionExpression (top-level attributes),
//! ExpressionAttributeNames/Values and ReturnValues are evaluated here, so any backend gets
//! DynamoDB's semantics; a backend only stores items atomically. Errors carry the names Step
//! Functions reports: `DynamoDB.ConditionalCheckFailedException`,
//! `DynamoDB.ResourceNotFoundException`, and `DynamoDB.AmazonDynamoDBException` for
//! DynamoDB's ValidationException (the Java SDK has no class of its own for it), each with the
//! SDK's `(Service: AmazonDynamoDBv2; Status Code: 400; Error Code: …)` cause.
//!
//! Numbers are compared and added as `i128` when both are integers, else as `f64` (DynamoDB
//! keeps 38 significant digits).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::task::{CallContext, ServiceIntegration, TaskError};

/// An item: attribute name → attribute value (`{"S": "x"}`…).
pub type Item = Map<String, Value>;

/// What [`TableBackend::apply`] does with the item it read.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Leave it as it is.
    Keep,
    /// Store this item under the key.
    Put(Item),
    /// Delete the item.
    Delete,
}

/// Local tables. Implementations only store; expressions are evaluated by the integration.
pub trait TableBackend: Send + Sync {
    /// The key attribute names of `table` (partition key, then sort key if any), or `None`
    /// when there is no such table.
    fn key_schema(&self, table: &str) -> Option<Vec<String>>;

    /// Atomically: reads the item of `table` under `key` (only the key attributes), passes it
    /// to `change`, and does the [`Write`] it returns. Gives the item as it was read.
    fn apply(
        &self,
        table: &str,
        key: &Item,
        change: &mut dyn FnMut(Option<&Item>) -> Result<Write, TaskError>,
    ) -> Result<Option<Item>, TaskError>;
}

/// Tables in memory.
#[derive(Debug, Default)]
pub struct MemoryTables {
    tables: Mutex<HashMap<String, MemoryTable>>,
}

#[derive(Debug)]
struct MemoryTable {
    key: Vec<String>,
    items: BTreeMap<String, Item>,
}

impl MemoryTables {
    /// No tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates (or empties) `table` with a partition key and an optional sort key.
    pub fn create_table(&self, table: &str, partition_key: &str, sort_key: Option<&str>) {
        if let Ok(mut t) = self.tables.lock() {
            let mut key = vec![partition_key.to_owned()];
            key.extend(sort_key.map(str::to_owned));
            t.insert(
                table.to_owned(),
                MemoryTable {
                    key,
                    items: BTreeMap::new(),
                },
            );
        }
    }

    /// Every item of `table`, in key order.
    pub fn items(&self, table: &str) -> Vec<Item> {
        self.tables
            .lock()
            .ok()
            .and_then(|t| t.get(table).map(|t| t.items.values().cloned().collect()))
            .unwrap_or_default()
    }
}

/// The canonical text of a key (numbers normalised, as DynamoDB compares them).
fn key_text(key: &Item, schema: &[String]) -> String {
    let parts: Vec<String> = schema
        .iter()
        .map(|k| match key.get(k) {
            Some(Value::Object(o)) => match o.get("N").and_then(Value::as_str) {
                Some(n) => format!("N:{}", normal_number(n)),
                None => Value::Object(o.clone()).to_string(),
            },
            other => other.map(Value::to_string).unwrap_or_default(),
        })
        .collect();
    parts.join("\u{1f}")
}

impl TableBackend for MemoryTables {
    fn key_schema(&self, table: &str) -> Option<Vec<String>> {
        self.tables.lock().ok()?.get(table).map(|t| t.key.clone())
    }

    fn apply(
        &self,
        table: &str,
        key: &Item,
        change: &mut dyn FnMut(Option<&Item>) -> Result<Write, TaskError>,
    ) -> Result<Option<Item>, TaskError> {
        let mut tables = self
            .tables
            .lock()
            .map_err(|_| task_failed("the in-memory tables are unusable after a panic"))?;
        let t = tables.get_mut(table).ok_or_else(not_found)?;
        let k = key_text(key, &t.key);
        let old = t.items.get(&k).cloned();
        match change(old.as_ref())? {
            Write::Keep => {}
            Write::Put(item) => {
                t.items.insert(k, item);
            }
            Write::Delete => {
                t.items.remove(&k);
            }
        }
        Ok(old)
    }
}

fn task_failed(cause: &str) -> TaskError {
    TaskError {
        error: "States.TaskFailed".into(),
        cause: cause.into(),
    }
}

fn aws_error(name: &str, message: &str) -> TaskError {
    TaskError {
        error: format!("DynamoDB.{name}"),
        cause: super::sdk_cause(
            message,
            "AmazonDynamoDBv2",
            if name == "AmazonDynamoDBException" {
                "ValidationException"
            } else {
                name
            },
        ),
    }
}

/// DynamoDB's ValidationException, as Step Functions names it.
fn invalid(message: impl AsRef<str>) -> TaskError {
    aws_error("AmazonDynamoDBException", message.as_ref())
}

fn not_found() -> TaskError {
    aws_error("ResourceNotFoundException", "Requested resource not found")
}

fn check_failed() -> TaskError {
    aws_error(
        "ConditionalCheckFailedException",
        "The conditional request failed",
    )
}

// ---------------------------------------------------------------- attribute values

const TYPES: [&str; 10] = ["S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"];

fn is_number(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty() && t == s && t.parse::<f64>().map(f64::is_finite).unwrap_or(false)
}

fn normal_number(s: &str) -> String {
    if let Ok(i) = s.parse::<i128>() {
        return i.to_string();
    }
    match s.parse::<f64>() {
        Ok(f) if f.fract() == 0.0 && f.abs() < 1e30 => format!("{}", f as i128),
        Ok(f) => format!("{f}"),
        Err(_) => s.to_owned(),
    }
}

/// Checks an attribute value's shape; `Err` is DynamoDB's message.
fn check_value(v: &Value) -> Result<(), String> {
    let Some(o) = v.as_object() else {
        return Err(format!(
            "Supplied AttributeValue is not an object with one of the supported datatypes: {v}"
        ));
    };
    let set: Vec<&String> = o.keys().filter(|k| TYPES.contains(&k.as_str())).collect();
    if o.len() != 1 || set.len() != 1 {
        return Err(if o.is_empty() || set.is_empty() {
            "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes"
                .into()
        } else {
            "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes".into()
        });
    }
    let (t, inner) = o.iter().next().ok_or("empty attribute value")?;
    let bad = || {
        format!(
            "One or more parameter values were invalid: {t} attribute value is not valid: {inner}"
        )
    };
    match (t.as_str(), inner) {
        ("S" | "B", Value::String(_)) => Ok(()),
        ("N", Value::String(n)) if is_number(n) => Ok(()),
        ("N", Value::String(_)) => Err("A value provided cannot be converted into a number".into()),
        ("BOOL", Value::Bool(_)) | ("NULL", Value::Bool(true)) => Ok(()),
        ("SS" | "NS" | "BS", Value::Array(items)) => {
            if items.is_empty() {
                return Err(format!(
                    "One or more parameter values were invalid: An {t} set may not be empty"
                ));
            }
            let mut seen = HashSet::new();
            for i in items {
                let Some(s) = i.as_str() else {
                    return Err(bad());
                };
                if t == "NS" && !is_number(s) {
                    return Err("A value provided cannot be converted into a number".into());
                }
                let s = if t == "NS" {
                    normal_number(s)
                } else {
                    s.to_owned()
                };
                if !seen.insert(s) {
                    return Err(format!(
                        "One or more parameter values were invalid: Input collection {inner} contains duplicates."
                    ));
                }
            }
            Ok(())
        }
        ("M", Value::Object(m)) => m.values().try_for_each(check_value),
        ("L", Value::Array(l)) => l.iter().try_for_each(check_value),
        _ => Err(bad()),
    }
}

fn check_item(item: &Item) -> Result<(), TaskError> {
    item.values().try_for_each(check_value).map_err(invalid)
}

fn type_of(v: &Value) -> &str {
    v.as_object()
        .and_then(|o| o.keys().next())
        .map_or("", String::as_str)
}

fn inner(v: &Value) -> &Value {
    v.as_object()
        .and_then(|o| o.values().next())
        .unwrap_or(&Value::Null)
}

#[derive(PartialEq, PartialOrd)]
enum Num {
    Int(i128),
    Float(f64),
}

fn num(v: &Value) -> Option<Num> {
    let s = v.get("N")?.as_str()?;
    s.parse::<i128>()
        .map(Num::Int)
        .ok()
        .or_else(|| s.parse::<f64>().ok().map(Num::Float))
}

fn num_cmp(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (num(a)?, num(b)?) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (x, y) => to_f(&x).partial_cmp(&to_f(&y)),
    }
}

fn to_f(n: &Num) -> f64 {
    match n {
        Num::Int(i) => *i as f64,
        Num::Float(f) => *f,
    }
}

fn num_value(n: Num) -> Value {
    json!({"N": match n {
        Num::Int(i) => i.to_string(),
        Num::Float(f) => normal_number(&format!("{f}")),
    }})
}

/// DynamoDB equality: same type and value (numbers by value, sets ignoring order).
fn equal(a: &Value, b: &Value) -> bool {
    let (ta, tb) = (type_of(a), type_of(b));
    if ta != tb {
        return false;
    }
    match ta {
        "N" => num_cmp(a, b) == Some(std::cmp::Ordering::Equal),
        "SS" | "BS" | "NS" => {
            let set = |v: &Value| -> HashSet<String> {
                inner(v)
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .filter_map(Value::as_str)
                            .map(|s| {
                                if ta == "NS" {
                                    normal_number(s)
                                } else {
                                    s.to_owned()
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            set(a) == set(b)
        }
        "L" => match (inner(a).as_array(), inner(b).as_array()) {
            (Some(x), Some(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q)),
            _ => false,
        },
        "M" => match (inner(a).as_object(), inner(b).as_object()) {
            (Some(x), Some(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
            }
            _ => false,
        },
        _ => a == b,
    }
}

/// `<`, `<=`… : defined for two values of one scalar type S, N or B; otherwise the
/// comparison is false.
fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (type_of(a), type_of(b)) {
        ("N", "N") => num_cmp(a, b),
        ("S", "S") | ("B", "B") => inner(a).as_str()?.partial_cmp(inner(b).as_str()?),
        _ => None,
    }
}

// ---------------------------------------------------------------- expressions

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Name(String),
    Value(String),
    Int(usize),
    Sym(&'static str),
}

fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Ident(s) | Tok::Name(s) | Tok::Value(s) => s.clone(),
        Tok::Int(i) => i.to_string(),
        Tok::Sym(s) => (*s).to_owned(),
    }
}

fn tokenize(kind: &str, text: &str) -> Result<Vec<Tok>, TaskError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_alphanumeric() || chars[*i] == '_') {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        if let Some(s) = ["<>", "<=", ">="].into_iter().find(|s| *s == two) {
            out.push(Tok::Sym(s));
            i += 2;
            continue;
        }
        if let Some(s) = ["(", ")", ",", ".", "[", "]", "=", "<", ">", "+", "-"]
            .into_iter()
            .find(|s| s.starts_with(c))
        {
            out.push(Tok::Sym(s));
            i += 1;
            continue;
        }
        if c == '#' || c == ':' {
            i += 1;
            let w = word(&mut i);
            if w.is_empty() {
                return Err(syntax(kind, &c.to_string(), text));
            }
            out.push(if c == '#' {
                Tok::Name(format!("#{w}"))
            } else {
                Tok::Value(format!(":{w}"))
            });
            continue;
        }
        if c.is_ascii_digit() {
            let w = word(&mut i);
            match w.parse::<usize>() {
                Ok(n) => out.push(Tok::Int(n)),
                Err(_) => out.push(Tok::Ident(w)),
            }
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            out.push(Tok::Ident(word(&mut i)));
            continue;
        }
        return Err(invalid(format!(
            "Invalid {kind}: Syntax error; token: \"{c}\", near: \"{text}\""
        )));
    }
    Ok(out)
}

fn syntax(kind: &str, token: &str, text: &str) -> TaskError {
    if token.is_empty() {
        invalid(format!(
            "Invalid {kind}: Syntax error; token: \"<EOF>\", near: \"{text}\""
        ))
    } else {
        invalid(format!(
            "Invalid {kind}: Syntax error; token: \"{token}\", near: \"{text}\""
        ))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Name(String),
    Index(usize),
}

type Path = Vec<Seg>;

#[derive(Debug, Clone)]
enum Operand {
    Path(Path),
    Value(Value),
    Size(Path),
    IfNotExists(Path, Box<Operand>),
    ListAppend(Box<Operand>, Box<Operand>),
    Arith(Box<Operand>, bool, Box<Operand>),
}

#[derive(Debug, Clone)]
enum Cond {
    Or(Box<Cond>, Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Cmp(Operand, &'static str, Operand),
    Between(Operand, Operand, Operand),
    In(Operand, Vec<Operand>),
    Exists(Path, bool),
    Type(Path, Operand),
    BeginsWith(Operand, Operand),
    Contains(Operand, Operand),
}

/// The request's placeholders, and which were used (DynamoDB refuses unused ones).
struct Placeholders<'a> {
    names: &'a Map<String, Value>,
    values: &'a Map<String, Value>,
    used_names: HashSet<String>,
    used_values: HashSet<String>,
}

struct Parser<'p, 'a> {
    kind: &'static str,
    text: &'p str,
    toks: Vec<Tok>,
    pos: usize,
    ph: &'p mut Placeholders<'a>,
}

const RESERVED: [&str; 12] = [
    "AND", "OR", "NOT", "BETWEEN", "IN", "SET", "REMOVE", "ADD", "DELETE", "SIZE", "NULL", "VALUE",
];

impl Parser<'_, '_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn err(&self) -> TaskError {
        syntax(
            self.kind,
            &self.peek().map(tok_text).unwrap_or_default(),
            self.text,
        )
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if *s == sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, sym: &str) -> Result<(), TaskError> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(word)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn name(&mut self) -> Result<String, TaskError> {
        match self.next() {
            Some(Tok::Ident(s)) => {
                if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&s)) {
                    return Err(invalid(format!(
                        "Invalid {}: Attribute name is a reserved keyword; reserved keyword: {s}",
                        self.kind
                    )));
                }
                Ok(s)
            }
            Some(Tok::Name(n)) => {
                let v = self.ph.names.get(&n).and_then(Value::as_str).ok_or_else(|| {
                    invalid(format!(
                        "Invalid {}: An expression attribute name used in the document path is not defined; attribute name: {n}",
                        self.kind
                    ))
                })?;
                self.ph.used_names.insert(n);
                Ok(v.to_owned())
            }
            _ => {
                self.pos = self.pos.saturating_sub(1);
                Err(self.err())
            }
        }
    }

    fn path(&mut self) -> Result<Path, TaskError> {
        let mut p = vec![Seg::Name(self.name()?)];
        loop {
            if self.eat(".") {
                p.push(Seg::Name(self.name()?));
            } else if self.eat("[") {
                match self.next() {
                    Some(Tok::Int(i)) => p.push(Seg::Index(i)),
                    _ => {
                        self.pos = self.pos.saturating_sub(1);
                        return Err(self.err());
                    }
                }
                self.expect("]")?;
            } else {
                return Ok(p);
            }
        }
    }

    fn value(&mut self, v: &str) -> Result<Value, TaskError> {
        let value = self.ph.values.get(v).cloned().ok_or_else(|| {
            invalid(format!(
                "Invalid {}: An expression attribute value used in expression is not defined; attribute value: {v}",
                self.kind
            ))
        })?;
        check_value(&value).map_err(|m| {
            invalid(format!(
                "ExpressionAttributeValues contains invalid value: {m} for key {v}"
            ))
        })?;
        self.ph.used_values.insert(v.to_owned());
        Ok(value)
    }

    fn function_name(&self) -> Option<String> {
        match (self.peek(), self.toks.get(self.pos + 1)) {
            (Some(Tok::Ident(f)), Some(Tok::Sym("("))) => Some(f.clone()),
            _ => None,
        }
    }

    /// An operand of a condition, or of SET's right-hand side when `update`.
    fn operand(&mut self, update: bool) -> Result<Operand, TaskError> {
        let first = self.simple_operand(update)?;
        if update
            && (self.eat("+") || {
                if self.eat("-") {
                    let rhs = self.simple_operand(true)?;
                    return Ok(Operand::Arith(Box::new(first), false, Box::new(rhs)));
                }
                false
            })
        {
            let rhs = self.simple_operand(true)?;
            return Ok(Operand::Arith(Box::new(first), true, Box::new(rhs)));
        }
        Ok(first)
    }

    fn simple_operand(&mut self, update: bool) -> Result<Operand, TaskError> {
        if let Some(f) = self.function_name() {
            self.pos += 2;
            let op = match (f.as_str(), update) {
                ("size", false) => Operand::Size(self.path()?),
                ("if_not_exists", true) => {
                    let p = self.path()?;
                    self.expect(",")?;
                    Operand::IfNotExists(p, Box::new(self.simple_operand(true)?))
                }
                ("list_append", true) => {
                    let a = self.simple_operand(true)?;
                    self.expect(",")?;
                    Operand::ListAppend(Box::new(a), Box::new(self.simple_operand(true)?))
                }
                _ => {
                    return Err(invalid(format!(
                        "Invalid {}: Invalid function name; function: {f}",
                        self.kind
                    )));
                }
            };
            self.expect(")")?;
            return Ok(op);
        }
        if let Some(Tok::Value(v)) = self.peek().cloned() {
            self.pos += 1;
            return Ok(Operand::Value(self.value(&v)?));
        }
        Ok(Operand::Path(self.path()?))
    }

    fn or(&mut self) -> Result<Cond, TaskError> {
        let mut c = self.and()?;
        while self.keyword("OR") {
            c = Cond::Or(Box::new(c), Box::new(self.and()?));
        }
        Ok(c)
    }

    fn and(&mut self) -> Result<Cond, TaskError> {
        let mut c = self.not()?;
        while self.keyword("AND") {
            c = Cond::And(Box::new(c), Box::new(self.not()?));
        }
        Ok(c)
    }

    fn not(&mut self) -> Result<Cond, TaskError> {
        if self.keyword("NOT") {
            return Ok(Cond::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Cond, TaskError> {
        if self.eat("(") {
            let c = self.or()?;
            self.expect(")")?;
            return Ok(c);
        }
        if let Some(f) = self.function_name().filter(|f| f != "size") {
            self.pos += 2;
            let c = match f.as_str() {
                "attribute_exists" => Cond::Exists(self.path()?, true),
                "attribute_not_exists" => Cond::Exists(self.path()?, false),
                "attribute_type" => {
                    let p = self.path()?;
                    self.expect(",")?;
                    Cond::Type(p, self.operand(false)?)
                }
                "begins_with" | "contains" => {
                    let a = self.operand(false)?;
                    self.expect(",")?;
                    let b = self.operand(false)?;
                    if f == "contains" {
                        Cond::Contains(a, b)
                    } else {
                        Cond::BeginsWith(a, b)
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "Invalid {}: Invalid function name; function: {f}",
                        self.kind
                    )));
                }
            };
            self.expect(")")?;
            return Ok(c);
        }
        let left = self.operand(false)?;
        if self.keyword("BETWEEN") {
            let lo = self.operand(false)?;
            if !self.keyword("AND") {
                return Err(self.err());
            }
            return Ok(Cond::Between(left, lo, self.operand(false)?));
        }
        if self.keyword("IN") {
            self.expect("(")?;
            let mut list = vec![self.operand(false)?];
            while self.eat(",") {
                list.push(self.operand(false)?);
            }
            self.expect(")")?;
            return Ok(Cond::In(left, list));
        }
        let op = match self.next() {
            Some(Tok::Sym(s)) if ["=", "<>", "<", "<=", ">", ">="].contains(&s) => s,
            _ => {
                self.pos = self.pos.saturating_sub(1);
                return Err(self.err());
            }
        };
        Ok(Cond::Cmp(left, op, self.operand(false)?))
    }

    fn end(&self) -> Result<(), TaskError> {
        if self.pos < self.toks.len() {
            Err(self.err())
        } else {
            Ok(())
        }
    }
}

fn parser<'p, 'a>(
    kind: &'static str,
    text: &'p str,
    ph: &'p mut Placeholders<'a>,
) -> Result<Parser<'p, 'a>, TaskError> {
    if text.trim().is_empty() {
        return Err(invalid(format!(
            "Invalid {kind}: The expression can not be empty;"
        )));
    }
    Ok(Parser {
        kind,
        text,
        toks: tokenize(kind, text)?,
        pos: 0,
        ph,
    })
}

fn parse_condition(text: &str, ph: &mut Placeholders<'_>) -> Result<Cond, TaskError> {
    let mut p = parser("ConditionExpression", text, ph)?;
    let c = p.or()?;
    p.end()?;
    Ok(c)
}

#[derive(Debug, Default)]
struct Update {
    set: Vec<(Path, Operand)>,
    remove: Vec<Path>,
    add: Vec<(Path, Value)>,
    delete: Vec<(Path, Value)>,
}

fn parse_update(text: &str, ph: &mut Placeholders<'_>) -> Result<Update, TaskError> {
    let mut p = parser("UpdateExpression", text, ph)?;
    let mut u = Update::default();
    let mut seen = HashSet::new();
    while p.peek().is_some() {
        let clause = match p.next() {
            Some(Tok::Ident(w)) => w.to_ascii_uppercase(),
            _ => {
                p.pos -= 1;
                return Err(p.err());
            }
        };
        if !["SET", "REMOVE", "ADD", "DELETE"].contains(&clause.as_str()) {
            p.pos -= 1;
            return Err(p.err());
        }
        if !seen.insert(clause.clone()) {
            return Err(invalid(format!(
                "Invalid UpdateExpression: The \"{clause}\" section can only be used once in an update expression;"
            )));
        }
        loop {
            let path = p.path()?;
            match clause.as_str() {
                "SET" => {
                    p.expect("=")?;
                    u.set.push((path, p.operand(true)?));
                }
                "REMOVE" => u.remove.push(path),
                _ => {
                    let v = match p.next() {
                        Some(Tok::Value(v)) => p.value(&v)?,
                        _ => {
                            p.pos -= 1;
                            return Err(p.err());
                        }
                    };
                    if clause == "ADD" {
                        u.add.push((path, v));
                    } else {
                        u.delete.push((path, v));
                    }
                }
            }
            if !p.eat(",") {
                break;
            }
        }
    }
    Ok(u)
}

// ---------------------------------------------------------------- evaluation

fn get<'v>(item: &'v Item, path: &Path) -> Option<&'v Value> {
    let mut segs = path.iter();
    let mut cur = match segs.next()? {
        Seg::Name(n) => item.get(n)?,
        Seg::Index(_) => return None,
    };
    for s in segs {
        cur = match s {
            Seg::Name(n) => cur.get("M")?.get(n)?,
            Seg::Index(i) => cur.get("L")?.get(*i)?,
        };
    }
    Some(cur)
}

fn eval(item: &Item, op: &Operand) -> Result<Option<Value>, TaskError> {
    Ok(match op {
        Operand::Path(p) => get(item, p).cloned(),
        Operand::Value(v) => Some(v.clone()),
        Operand::Size(p) => get(item, p).and_then(|v| {
            let n = match (type_of(v), inner(v)) {
                ("S", Value::String(s)) => s.chars().count(),
                ("B", Value::String(s)) => s.len() * 3 / 4,
                (_, Value::Array(a)) => a.len(),
                (_, Value::Object(m)) => m.len(),
                _ => return None,
            };
            Some(json!({"N": n.to_string()}))
        }),
        Operand::IfNotExists(p, dflt) => match get(item, p) {
            Some(v) => Some(v.clone()),
            None => eval(item, dflt)?,
        },
        Operand::ListAppend(a, b) => {
            let (a, b) = (eval(item, a)?, eval(item, b)?);
            match (a.as_ref().map(inner), b.as_ref().map(inner)) {
                (Some(Value::Array(x)), Some(Value::Array(y)))
                    if a.as_ref().is_some_and(|v| type_of(v) == "L")
                        && b.as_ref().is_some_and(|v| type_of(v) == "L") =>
                {
                    let mut l = x.clone();
                    l.extend(y.iter().cloned());
                    Some(json!({"L": l}))
                }
                (None, _) | (_, None) => {
                    return Err(invalid(
                        "The provided expression refers to an attribute that does not exist in the item",
                    ));
                }
                _ => {
                    return Err(invalid(
                        "Invalid UpdateExpression: Incorrect operand type for operator or function; operator or function: list_append, operand type: not a list",
                    ));
                }
            }
        }
        Operand::Arith(a, plus, b) => {
            let (a, b) = (eval(item, a)?, eval(item, b)?);
            let (Some(a), Some(b)) = (a, b) else {
                return Err(invalid(
                    "The provided expression refers to an attribute that does not exist in the item",
                ));
            };
            let sym = if *plus { "+" } else { "-" };
            let wrong = || {
                invalid(format!(
                    "An operand in the update expression has an incorrect data type; operator: {sym}"
                ))
            };
            let (x, y) = (num(&a).ok_or_else(wrong)?, num(&b).ok_or_else(wrong)?);
            Some(match (x, y) {
                (Num::Int(x), Num::Int(y)) => {
                    let r = if *plus {
                        x.checked_add(y)
                    } else {
                        x.checked_sub(y)
                    };
                    num_value(r.map_or_else(
                        || {
                            Num::Float(if *plus {
                                x as f64 + y as f64
                            } else {
                                x as f64 - y as f64
                            })
                        },
                        Num::Int,
                    ))
                }
                (x, y) => num_value(Num::Float(if *plus {
                    to_f(&x) + to_f(&y)
                } else {
                    to_f(&x) - to_f(&y)
                })),
            })
        }
    })
}

fn test(item: &Item, c: &Cond) -> Result<bool, TaskError> {
    Ok(match c {
        Cond::Or(a, b) => test(item, a)? || test(item, b)?,
        Cond::And(a, b) => test(item, a)? && test(item, b)?,
        Cond::Not(a) => !test(item, a)?,
        Cond::Cmp(a, op, b) => match (eval(item, a)?, eval(item, b)?) {
            (Some(x), Some(y)) => match *op {
                "=" => equal(&x, &y),
                "<>" => !equal(&x, &y),
                _ => order(&x, &y).is_some_and(|o| match *op {
                    "<" => o.is_lt(),
                    "<=" => o.is_le(),
                    ">" => o.is_gt(),
                    _ => o.is_ge(),
                }),
            },
            // A missing attribute is unequal to everything.
            _ => *op == "<>",
        },
        Cond::Between(a, lo, hi) => match (eval(item, a)?, eval(item, lo)?, eval(item, hi)?) {
            (Some(x), Some(l), Some(h)) => {
                order(&x, &l).is_some_and(|o| o.is_ge()) && order(&x, &h).is_some_and(|o| o.is_le())
            }
            _ => false,
        },
        Cond::In(a, list) => match eval(item, a)? {
            Some(x) => {
                let mut found = false;
                for o in list {
                    if eval(item, o)?.is_some_and(|y| equal(&x, &y)) {
                        found = true;
                    }
                }
                found
            }
            None => false,
        },
        Cond::Exists(p, want) => get(item, p).is_some() == *want,
        Cond::Type(p, t) => {
            let t = eval(item, t)?;
            let wanted = t.as_ref().and_then(|t| t.get("S")).and_then(Value::as_str);
            match wanted {
                Some(w) if TYPES.contains(&w) => get(item, p).is_some_and(|v| type_of(v) == w),
                _ => {
                    return Err(invalid(format!(
                        "Invalid ConditionExpression: Invalid attribute type name found; type: {}, valid types: {{B,NULL,SS,BOOL,L,BS,N,NS,S,M}}",
                        wanted.unwrap_or_default()
                    )));
                }
            }
        }
        Cond::BeginsWith(a, b) => match (eval(item, a)?, eval(item, b)?) {
            (Some(x), Some(y))
                if type_of(&x) == type_of(&y) && matches!(type_of(&x), "S" | "B") =>
            {
                match (inner(&x).as_str(), inner(&y).as_str()) {
                    (Some(x), Some(y)) => x.starts_with(y),
                    _ => false,
                }
            }
            _ => false,
        },
        Cond::Contains(a, b) => match (eval(item, a)?, eval(item, b)?) {
            (Some(x), Some(y)) => match (type_of(&x), type_of(&y)) {
                ("S", "S") => match (inner(&x).as_str(), inner(&y).as_str()) {
                    (Some(x), Some(y)) => x.contains(y),
                    _ => false,
                },
                ("SS", "S") | ("BS", "B") | ("NS", "N") => {
                    inner(&x).as_array().is_some_and(|set| {
                        set.iter().any(|e| {
                            let elem = json!({type_of(&y): e});
                            equal(&elem, &y)
                        })
                    })
                }
                ("L", _) => inner(&x)
                    .as_array()
                    .is_some_and(|l| l.iter().any(|e| equal(e, &y))),
                _ => false,
            },
            _ => false,
        },
    })
}

/// The type of a set's elements (`SS` → `S`).
fn elem_type(set: &str) -> &'static str {
    match set {
        "NS" => "N",
        "BS" => "B",
        _ => "S",
    }
}

fn bad_path() -> TaskError {
    invalid("The document path provided in the update expression is invalid for update")
}

/// Sets (`Some`) or removes (`None`) the value at `path`.
fn put_at(item: &mut Item, path: &Path, value: Option<Value>) -> Result<(), TaskError> {
    let (last, parents) = path.split_last().ok_or_else(bad_path)?;
    let Some((Seg::Name(top), rest)) = parents.split_first() else {
        // A top-level attribute.
        let Seg::Name(n) = last else {
            return Err(bad_path());
        };
        match value {
            Some(v) => item.insert(n.clone(), v),
            None => item.remove(n),
        };
        return Ok(());
    };
    let mut cur = match item.get_mut(top) {
        Some(v) => v,
        None if value.is_none() => return Ok(()),
        None => return Err(bad_path()),
    };
    for s in rest {
        let next = match s {
            Seg::Name(n) => cur.get_mut("M").and_then(|m| m.get_mut(n)),
            Seg::Index(i) => cur.get_mut("L").and_then(|l| l.get_mut(*i)),
        };
        cur = match next {
            Some(v) => v,
            None if value.is_none() => return Ok(()),
            None => return Err(bad_path()),
        };
    }
    match (last, value) {
        (Seg::Name(n), v) => {
            let m = cur
                .get_mut("M")
                .and_then(Value::as_object_mut)
                .ok_or_else(bad_path)?;
            match v {
                Some(v) => {
                    m.insert(n.clone(), v);
                }
                None => {
                    m.remove(n);
                }
            }
        }
        (Seg::Index(i), v) => {
            let l = cur
                .get_mut("L")
                .and_then(Value::as_array_mut)
                .ok_or_else(bad_path)?;
            match v {
                Some(v) if *i < l.len() => l[*i] = v,
                Some(v) => l.push(v),
                None if *i < l.len() => {
                    l.remove(*i);
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn apply_update(
    item: &mut Item,
    u: &Update,
    keys: &[String],
) -> Result<HashSet<String>, TaskError> {
    let mut touched = HashSet::new();
    let old = item.clone();
    let top = |p: &Path| match p.first() {
        Some(Seg::Name(n)) => n.clone(),
        _ => String::new(),
    };
    let all: Vec<&Path> = u
        .set
        .iter()
        .map(|(p, _)| p)
        .chain(u.remove.iter())
        .chain(u.add.iter().map(|(p, _)| p))
        .chain(u.delete.iter().map(|(p, _)| p))
        .collect();
    for (i, p) in all.iter().enumerate() {
        let t = top(p);
        if keys.contains(&t) {
            return Err(invalid(format!(
                "One or more parameter values were invalid: Cannot update attribute {t}. This attribute is part of the key"
            )));
        }
        if all[..i]
            .iter()
            .any(|q| q.starts_with(p) || p.starts_with(q))
        {
            return Err(invalid(
                "Invalid UpdateExpression: Two document paths overlap with each other; must remove or rewrite one of these paths",
            ));
        }
        touched.insert(t);
    }
    // Every right-hand side reads the item as it was before the update.
    let mut values = Vec::new();
    for (p, op) in &u.set {
        values.push((p, eval(&old, op)?.ok_or_else(|| {
            invalid("The provided expression refers to an attribute that does not exist in the item")
        })?));
    }
    for (p, v) in values {
        put_at(item, p, Some(v))?;
    }
    for p in &u.remove {
        put_at(item, p, None)?;
    }
    let wrong = |op: &str| {
        invalid(format!(
            "An operand in the update expression has an incorrect data type; operator: {op}"
        ))
    };
    for (p, v) in &u.add {
        let new = match get(&old, p) {
            None if matches!(type_of(v), "N" | "SS" | "NS" | "BS") => v.clone(),
            None => return Err(wrong("ADD")),
            Some(cur) => match (type_of(cur), type_of(v)) {
                ("N", "N") => eval(
                    &old,
                    &Operand::Arith(
                        Box::new(Operand::Value(cur.clone())),
                        true,
                        Box::new(Operand::Value(v.clone())),
                    ),
                )?
                .ok_or_else(|| wrong("ADD"))?,
                (a, b) if a == b && matches!(a, "SS" | "NS" | "BS") => {
                    let e = elem_type(a);
                    let mut l = inner(cur).as_array().cloned().unwrap_or_default();
                    for x in inner(v).as_array().into_iter().flatten() {
                        if !l.iter().any(|y| equal(&json!({e: y}), &json!({e: x}))) {
                            l.push(x.clone());
                        }
                    }
                    json!({ a: l })
                }
                _ => return Err(wrong("ADD")),
            },
        };
        put_at(item, p, Some(new))?;
    }
    for (p, v) in &u.delete {
        match get(&old, p) {
            None => {}
            Some(cur) if type_of(cur) == type_of(v) && matches!(type_of(v), "SS" | "NS" | "BS") => {
                let t = type_of(v);
                let e = elem_type(t);
                let drop = inner(v).as_array().cloned().unwrap_or_default();
                let kept: Vec<Value> = inner(cur)
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| !drop.iter().any(|d| equal(&json!({e: d}), &json!({e: *x}))))
                    .cloned()
                    .collect();
                put_at(item, p, (!kept.is_empty()).then(|| json!({ t: kept })))?;
            }
            Some(_) => return Err(wrong("DELETE")),
        }
    }
    Ok(touched)
}

// ---------------------------------------------------------------- the integration

pub(crate) struct DynamoDb {
    pub(crate) tables: Arc<dyn TableBackend>,
}

fn required<'v>(params: &'v Value, field: &str, wire: &str) -> Result<&'v Value, TaskError> {
    match params.get(field) {
        None | Some(Value::Null) => Err(invalid(format!(
            "1 validation error detected: Value null at '{wire}' failed to satisfy constraint: Member must not be null"
        ))),
        Some(v) => Ok(v),
    }
}

fn map_param<'v>(
    params: &'v Value,
    field: &str,
) -> Result<Option<&'v Map<String, Value>>, TaskError> {
    match params.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(invalid(format!("{field} must be an object, not {other}"))),
    }
}

fn str_param<'v>(params: &'v Value, field: &str) -> Result<Option<&'v str>, TaskError> {
    match params.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{field} must be a string"))),
    }
}

/// The key of an item or of a Key parameter, checked against the table's schema.
fn key_of(item: &Item, schema: &[String], exact: bool) -> Result<Item, TaskError> {
    let mismatch = || invalid("The provided key element does not match the schema");
    if exact && item.len() != schema.len() {
        return Err(mismatch());
    }
    let mut key = Item::new();
    for k in schema {
        match item.get(k) {
            Some(v) if matches!(type_of(v), "S" | "N" | "B") => {
                if type_of(v) == "S" && inner(v).as_str().is_some_and(str::is_empty) {
                    return Err(invalid(format!(
                        "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty string value. Key: {k}"
                    )));
                }
                key.insert(k.clone(), v.clone());
            }
            Some(_) => return Err(mismatch()),
            None if exact => return Err(mismatch()),
            None => {
                return Err(invalid(format!(
                    "One or more parameter values were invalid: Missing the key {k} in the item"
                )));
            }
        }
    }
    Ok(key)
}

fn with_metadata(mut out: Map<String, Value>) -> Value {
    let (http, response) = super::sdk_metadata("application/x-amz-json-1.0");
    out.insert("SdkHttpMetadata".into(), http);
    out.insert("SdkResponseMetadata".into(), response);
    Value::Object(out)
}

#[async_trait]
impl ServiceIntegration for DynamoDb {
    async fn call(&self, resource: &str, parameters: Value) -> Result<Value, TaskError> {
        self.call_in(&CallContext::default(), resource, parameters)
            .await
    }

    async fn call_in(
        &self,
        _ctx: &CallContext,
        resource: &str,
        params: Value,
    ) -> Result<Value, TaskError> {
        let action = resource.rsplit(':').next().unwrap_or_default();
        // Parameters the action does not take are refused, not ignored.
        let foreign: &[&str] = match action {
            "getItem" => &[
                "ConditionExpression",
                "UpdateExpression",
                "Item",
                "ReturnValues",
            ],
            "putItem" => &["UpdateExpression", "Key", "ProjectionExpression"],
            "deleteItem" => &["UpdateExpression", "Item", "ProjectionExpression"],
            _ => &["Item", "ProjectionExpression"],
        };
        if let Some(f) = foreign.iter().find(|f| params.get(**f).is_some()) {
            return Err(invalid(format!(
                "The parameter '{f}' is not a parameter of DynamoDB {}",
                action.get(..1).map(str::to_uppercase).unwrap_or_default()
                    + action.get(1..).unwrap_or_default()
            )));
        }
        let table = match required(&params, "TableName", "tableName")? {
            Value::String(s) if !s.is_empty() => s.as_str(),
            _ => {
                return Err(invalid(
                    "1 validation error detected: Value at 'tableName' failed to satisfy constraint: Member must have length greater than or equal to 3",
                ));
            }
        };
        let names = map_param(&params, "ExpressionAttributeNames")?;
        let values = map_param(&params, "ExpressionAttributeValues")?;
        let empty = Map::new();
        let mut ph = Placeholders {
            names: names.unwrap_or(&empty),
            values: values.unwrap_or(&empty),
            used_names: HashSet::new(),
            used_values: HashSet::new(),
        };
        let condition = str_param(&params, "ConditionExpression")?
            .map(|c| parse_condition(c, &mut ph))
            .transpose()?;
        let update = match action {
            "updateItem" => str_param(&params, "UpdateExpression")?
                .map(|u| parse_update(u, &mut ph))
                .transpose()?,
            _ => None,
        };
        let projection = match action {
            "getItem" => str_param(&params, "ProjectionExpression")?
                .map(|p| {
                    let mut parser = parser("ProjectionExpression", p, &mut ph)?;
                    let mut paths = vec![parser.path()?];
                    while parser.eat(",") {
                        paths.push(parser.path()?);
                    }
                    parser.end()?;
                    Ok::<_, TaskError>(paths)
                })
                .transpose()?,
            _ => None,
        };
        let unused = |all: Option<&Map<String, Value>>, used: &HashSet<String>| -> Vec<String> {
            all.map(|m| m.keys().filter(|k| !used.contains(*k)).cloned().collect())
                .unwrap_or_default()
        };
        let unused_names = unused(names, &ph.used_names);
        if !unused_names.is_empty() {
            return Err(invalid(format!(
                "Value provided in ExpressionAttributeNames unused in expressions: keys: {{{}}}",
                unused_names.join(", ")
            )));
        }
        let unused_values = unused(values, &ph.used_values);
        if !unused_values.is_empty() {
            return Err(invalid(format!(
                "Value provided in ExpressionAttributeValues unused in expressions: keys: {{{}}}",
                unused_values.join(", ")
            )));
        }
        let return_values = str_param(&params, "ReturnValues")?.unwrap_or("NONE");
        let allowed: &[&str] = match action {
            "updateItem" => &["NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW"],
            "putItem" | "deleteItem" => &["NONE", "ALL_OLD"],
            _ => &["NONE"],
        };
        if action != "getItem" && !allowed.contains(&return_values) {
            return Err(invalid(format!(
                "1 validation error detected: Value '{return_values}' at 'returnValues' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            )));
        }
        let schema = self.tables.key_schema(table).ok_or_else(not_found)?;
        let mut out = Map::new();
        match action {
            "getItem" => {
                let key = required(&params, "Key", "key")?
                    .as_object()
                    .ok_or_else(|| invalid("The provided key element does not match the schema"))?;
                check_item(key)?;
                let key = key_of(key, &schema, true)?;
                let found = self.tables.apply(table, &key, &mut |_| Ok(Write::Keep))?;
                if let Some(mut item) = found {
                    if let Some(paths) = projection {
                        let mut kept = Item::new();
                        for p in &paths {
                            match p.as_slice() {
                                [Seg::Name(n)] => {
                                    if let Some(v) = item.remove(n) {
                                        kept.insert(n.clone(), v);
                                    }
                                }
                                _ => {
                                    return Err(invalid(
                                        "ProjectionExpression: only top-level attributes are supported by the local engine",
                                    ));
                                }
                            }
                        }
                        item = kept;
                    }
                    out.insert("Item".into(), Value::Object(item));
                }
            }
            "putItem" => {
                let item = required(&params, "Item", "item")?
                    .as_object()
                    .ok_or_else(|| invalid("Item must be an object of attribute values"))?
                    .clone();
                check_item(&item)?;
                let key = key_of(&item, &schema, false)?;
                let old = self.tables.apply(table, &key, &mut |old| {
                    if let Some(c) = &condition
                        && !test(old.unwrap_or(&Item::new()), c)?
                    {
                        return Err(check_failed());
                    }
                    Ok(Write::Put(item.clone()))
                })?;
                if return_values == "ALL_OLD"
                    && let Some(old) = old
                {
                    out.insert("Attributes".into(), Value::Object(old));
                }
            }
            "deleteItem" => {
                let key = required(&params, "Key", "key")?
                    .as_object()
                    .ok_or_else(|| invalid("The provided key element does not match the schema"))?;
                check_item(key)?;
                let key = key_of(key, &schema, true)?;
                let old = self.tables.apply(table, &key, &mut |old| {
                    if let Some(c) = &condition
                        && !test(old.unwrap_or(&Item::new()), c)?
                    {
                        return Err(check_failed());
                    }
                    Ok(if old.is_some() {
                        Write::Delete
                    } else {
                        Write::Keep
                    })
                })?;
                if return_values == "ALL_OLD"
                    && let Some(old) = old
                {
                    out.insert("Attributes".into(), Value::Object(old));
                }
            }
            "updateItem" => {
                let key = required(&params, "Key", "key")?
                    .as_object()
                    .ok_or_else(|| invalid("The provided key element does not match the schema"))?;
                check_item(key)?;
                let key = key_of(key, &schema, true)?;
                let mut new_item = None;
                let mut touched = HashSet::new();
                let old = self.tables.apply(table, &key, &mut |old| {
                    let base = old.cloned().unwrap_or_else(|| key.clone());
                    if let Some(c) = &condition
                        && !test(old.unwrap_or(&Item::new()), c)?
                    {
                        return Err(check_failed());
                    }
                    let mut item = base;
                    if let Some(u) = &update {
                        touched = apply_update(&mut item, u, &schema)?;
                    }
                    new_item = Some(item.clone());
                    Ok(Write::Put(item))
                })?;
                let pick = |item: Option<&Item>, only: Option<&HashSet<String>>| -> Option<Value> {
                    let item = item?;
                    let m: Item = item
                        .iter()
                        .filter(|(k, _)| only.is_none_or(|t| t.contains(*k)))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    (!m.is_empty()).then_some(Value::Object(m))
                };
                let attrs = match return_values {
                    "ALL_OLD" => pick(old.as_ref(), None),
                    "UPDATED_OLD" => pick(old.as_ref(), Some(&touched)),
                    "ALL_NEW" => pick(new_item.as_ref(), None),
                    "UPDATED_NEW" => pick(new_item.as_ref(), Some(&touched)),
                    _ => None,
                };
                if let Some(a) = attrs {
                    out.insert("Attributes".into(), a);
                }
            }
            other => {
                return Err(TaskError {
                    error: "States.Runtime".into(),
                    cause: format!("The DynamoDB action '{other}' is not supported by this engine"),
                });
            }
        }
        Ok(with_metadata(out))
    }
}

#[cfg(test)]
mod tests;
