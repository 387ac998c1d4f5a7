//! Compiled plans: the common expression shapes of mapping files, evaluated directly on the
//! record's JSON, without the template engine.
//!
//! Rendering a minijinja template sets up a VM state per call; mappings evaluate ~30
//! expressions per record, so that setup, not the work, was the cost. At load, each
//! expression is also parsed here, by a deliberately small grammar: literals, `record.a.b`,
//! `.attr`, the `required` and `translate('t')` filters, `conceptmap`, `coding` and
//! `reference` calls, dict and list literals, `x if c else y`, `or`, `and`, `not`, `==`, `!=`,
//! `in` and `~`. Anything else (other filters, maths, whitespace control, escapes in string
//! literals…) is not planned and keeps using its compiled template. What a shape means here
//! is what minijinja makes of it; where that depends on the values met at run time in ways
//! this module does not copy (a float printed as text, `==` across kinds, attributes of
//! non-maps), evaluation answers [`Stop::Unsure`] and the caller evaluates the compiled
//! template instead. The equivalence tests in `mapping::tests` run both paths on the same
//! expressions and records.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Map, Value as Json};

use super::conceptmap::{ConceptMaps, TranslateError};
use super::functions::{FnError, Tables};
use super::{is_resource_type, resource_id};
use crate::model::{Cells, Columns, Record, RecordKey};

/// A planned expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ex {
    Lit(Json),
    Record,
    Attr(Box<Ex>, String),
    /// `record.<name>`, its value found once per record ([`Fields`]): slot and name.
    Field(usize, String),
    Required(Box<Ex>),
    Translate(Box<Ex>, String),
    ConceptMap {
        url: String,
        code: Box<Ex>,
        system: Option<String>,
    },
    Coding {
        system: Box<Ex>,
        code: Box<Ex>,
        display: Option<Box<Ex>>,
    },
    Reference {
        resource_type: String,
        entity: Option<String>,
        key: Option<Vec<(String, Ex)>>,
        suffix: Option<String>,
    },
    /// Entries in source order (the order they are evaluated in).
    Dict(Vec<(String, Ex)>),
    List(Vec<Ex>),
    If {
        then: Box<Ex>,
        cond: Box<Ex>,
        other: Option<Box<Ex>>,
    },
    Or(Box<Ex>, Box<Ex>),
    And(Box<Ex>, Box<Ex>),
    Not(Box<Ex>),
    Eq {
        left: Box<Ex>,
        right: Box<Ex>,
        negated: bool,
    },
    In(Box<Ex>, Box<Ex>),
    Concat(Vec<Ex>),
}

/// A part of a string template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seg {
    Text(String),
    Ex(Ex),
}

/// Why a planned expression gave no value.
#[derive(Debug)]
pub(crate) enum Stop {
    /// One of our functions failed; reported exactly as the template path reports it.
    Fn(FnError),
    /// The values met are outside what this module copies: evaluate the template instead.
    Unsure,
}

impl From<FnError> for Stop {
    fn from(e: FnError) -> Self {
        Stop::Fn(e)
    }
}

/// The record fields a mapping's plans read (`record.<name>`), each given a slot at load, so
/// a record's values are found in one ordered walk of its map rather than by a search per
/// expression.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    /// Slot → name.
    names: Vec<String>,
    /// Slots in the order of their names (the order of a JSON map's keys).
    order: Vec<usize>,
    /// The column index of each slot in the last shared columns seen (rows of one file share
    /// them: the names are looked up once per file, not per row). The `Weak` keeps the
    /// columns' allocation, so its address is never another file's.
    by_columns: Mutex<Option<ColumnSlots>>,
}

/// Shared columns and the column index of each slot in them.
type ColumnSlots = (Weak<Columns>, Vec<Option<usize>>);

impl Fields {
    /// Replaces every `record.<name>` in `ex` by its slot.
    pub(crate) fn resolve(&mut self, ex: &mut Ex) {
        if let Ex::Attr(inner, name) = ex
            && **inner == Ex::Record
        {
            let slot = match self.names.iter().position(|n| n == name) {
                Some(slot) => slot,
                None => {
                    self.names.push(name.clone());
                    self.order = (0..self.names.len()).collect();
                    let names = &self.names;
                    self.order.sort_by(|&a, &b| names[a].cmp(&names[b]));
                    self.names.len() - 1
                }
            };
            *ex = Ex::Field(slot, std::mem::take(name));
            return;
        }
        match ex {
            Ex::Lit(_) | Ex::Record | Ex::Field(..) => {}
            Ex::Attr(a, _)
            | Ex::Required(a)
            | Ex::Translate(a, _)
            | Ex::Not(a)
            | Ex::ConceptMap { code: a, .. } => self.resolve(a),
            Ex::Coding {
                system,
                code,
                display,
            } => {
                self.resolve(system);
                self.resolve(code);
                if let Some(d) = display {
                    self.resolve(d);
                }
            }
            Ex::Reference { key, .. } => {
                for (_, e) in key.iter_mut().flatten() {
                    self.resolve(e);
                }
            }
            Ex::Dict(entries) => entries.iter_mut().for_each(|(_, e)| self.resolve(e)),
            Ex::List(items) | Ex::Concat(items) => items.iter_mut().for_each(|e| self.resolve(e)),
            Ex::If { then, cond, other } => {
                self.resolve(then);
                self.resolve(cond);
                if let Some(o) = other {
                    self.resolve(o);
                }
            }
            Ex::Or(a, b) | Ex::And(a, b) | Ex::In(a, b) => {
                self.resolve(a);
                self.resolve(b);
            }
            Ex::Eq { left, right, .. } => {
                self.resolve(left);
                self.resolve(right);
            }
        }
    }

    /// [`Self::resolve`] for each expression of a string template.
    pub(crate) fn resolve_text(&mut self, segs: &mut [Seg]) {
        for seg in segs {
            if let Seg::Ex(e) = seg {
                self.resolve(e);
            }
        }
    }

    /// The record's value of each slot (`None`: not in the record, or the record is no map),
    /// found by walking the record's keys and the slots' names side by side, both in order.
    pub(crate) fn values<'r>(&self, record: &'r Record) -> Vec<Option<&'r Json>> {
        let mut out = vec![None; self.names.len()];
        let m = match record {
            Record::Json(Json::Object(m)) => m,
            Record::Json(_) => return out,
            Record::Cells(cells) => {
                self.cells_values(cells, &mut out);
                return out;
            }
        };
        let mut entries = m.iter().peekable();
        for &slot in &self.order {
            let name = self.names[slot].as_str();
            while let Some((k, v)) = entries.peek() {
                match k.as_str().cmp(name) {
                    std::cmp::Ordering::Less => {
                        entries.next();
                    }
                    std::cmp::Ordering::Equal => {
                        out[slot] = Some(*v);
                        entries.next();
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
        }
        out
    }

    fn cells_values<'r>(&self, cells: &'r Cells, out: &mut [Option<&'r Json>]) {
        let columns = cells.columns();
        // Another thread mapping another file: look the names up.
        let Ok(mut cache) = self.by_columns.try_lock() else {
            for (slot, name) in self.names.iter().enumerate() {
                out[slot] = columns.index(name).and_then(|i| cells.at(i));
            }
            return;
        };
        let index = match &mut *cache {
            Some((seen, index)) if Weak::as_ptr(seen) == Arc::as_ptr(columns) => index,
            stale => {
                let index = self.names.iter().map(|n| columns.index(n)).collect();
                &mut stale.insert((Arc::downgrade(columns), index)).1
            }
        };
        for (slot, i) in index.iter().enumerate() {
            out[slot] = i.and_then(|i| cells.at(i));
        }
    }
}

/// What an expression can see.
pub(crate) struct Scope<'a> {
    pub record: &'a Record,
    /// The record's values of the mapping's [`Fields`] slots.
    pub fields: &'a [Option<&'a Json>],
    pub key: &'a RecordKey,
    pub source: &'a str,
    pub entity: &'a str,
    pub tables: &'a Tables,
    pub maps: &'a ConceptMaps,
}

/// A value during evaluation: undefined, or JSON (`null` is minijinja's `none`), borrowed from
/// the record, the plan or the tables where it can be.
#[derive(Debug, Clone)]
pub(crate) enum V<'a> {
    Undef,
    J(Cow<'a, Json>),
}

impl<'a> V<'a> {
    fn owned(j: Json) -> V<'a> {
        V::J(Cow::Owned(j))
    }

    fn json(&self) -> Option<&Json> {
        match self {
            V::Undef => None,
            V::J(j) => Some(j),
        }
    }

    /// minijinja's truthiness.
    pub(crate) fn is_true(&self) -> bool {
        match self.json() {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(Json::Number(n)) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => i != 0,
                (_, Some(u), _) => u != 0,
                (_, _, Some(f)) => f != 0.0,
                _ => true,
            },
            Some(Json::String(s)) => !s.is_empty(),
            Some(Json::Array(a)) => !a.is_empty(),
            Some(Json::Object(o)) => !o.is_empty(),
        }
    }

    /// [`super::functions::is_missing`] for JSON.
    fn is_missing(&self) -> bool {
        is_missing(self.json())
    }

    /// The value as JSON (undefined is null, removed later).
    pub(crate) fn into_json(self) -> Json {
        match self {
            V::Undef => Json::Null,
            V::J(j) => j.into_owned(),
        }
    }

    /// `json::prune(self.into_json())`, copying a borrowed value only if something of it is
    /// kept.
    pub(crate) fn into_pruned(self) -> Option<Json> {
        match self {
            V::Undef => None,
            V::J(j) => super::json::pruned(j),
        }
    }
}

/// [`super::functions::is_missing`] for JSON (`None`: undefined).
pub(crate) fn is_missing(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => true,
        Some(Json::String(s)) => super::json::is_blank(s),
        Some(Json::Array(a)) => a.is_empty(),
        Some(Json::Object(o)) => o.is_empty(),
        _ => false,
    }
}

/// A code as text, as `functions::code_text` makes it; floats are printed by minijinja's own
/// rules, which are not copied here.
fn code_text(v: &Json) -> Result<Option<Cow<'_, str>>, Stop> {
    Ok(match v {
        Json::String(s) => Some(Cow::Borrowed(s)),
        Json::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Json::Number(n) if n.is_i64() || n.is_u64() => Some(Cow::Owned(n.to_string())),
        Json::Number(_) => return Err(Stop::Unsure),
        _ => None,
    })
}

/// Evaluates a planned expression.
pub(crate) fn eval<'a>(ex: &'a Ex, s: &Scope<'a>) -> Result<V<'a>, Stop> {
    Ok(match ex {
        Ex::Lit(j) => V::J(Cow::Borrowed(j)),
        Ex::Record => match s.record {
            Record::Json(j) => V::J(Cow::Borrowed(j)),
            cells => V::J(Cow::Owned(cells.to_value())),
        },
        // What `Attr(Record, name)` gives, with the lookup done once per record.
        Ex::Field(slot, name) => match s.record {
            Record::Json(Json::Object(_)) | Record::Cells(_) => match s.fields.get(*slot) {
                Some(found) => found.map_or(V::Undef, |j| V::J(Cow::Borrowed(j))),
                None => s
                    .record
                    .get(name)
                    .map_or(V::Undef, |j| V::J(Cow::Borrowed(j))),
            },
            Record::Json(_) => return Err(Stop::Unsure),
        },
        Ex::Attr(inner, name) => match eval(inner, s)? {
            V::Undef => V::Undef,
            V::J(Cow::Borrowed(Json::Object(m))) => {
                m.get(name).map_or(V::Undef, |j| V::J(Cow::Borrowed(j)))
            }
            V::J(Cow::Owned(Json::Object(mut m))) => m.remove(name).map_or(V::Undef, V::owned),
            V::J(_) => return Err(Stop::Unsure),
        },
        Ex::Required(inner) => {
            let v = eval(inner, s)?;
            if v.is_missing() {
                return Err(FnError::Required.into());
            }
            v
        }
        Ex::Translate(inner, table) => {
            let v = eval(inner, s)?;
            let Some(entries) = s.tables.get(table) else {
                return Err(FnError::UnknownTable(table.clone()).into());
            };
            let Some(j) = v.json().filter(|j| !j.is_null()) else {
                return Ok(V::Undef);
            };
            let Some(code) = code_text(j)? else {
                return Err(Stop::Unsure);
            };
            match entries.get(code.as_ref()) {
                Some(Json::Null) => V::Undef,
                Some(found) => V::J(Cow::Borrowed(found)),
                None => return Err(FnError::NotInTable(table.clone()).into()),
            }
        }
        Ex::ConceptMap { url, code, system } => {
            let v = eval(code, s)?;
            if v.is_missing() {
                return match s.maps.translate_ref(url, "", system.as_deref()) {
                    Err(e @ TranslateError::UnknownMap(_)) => Err(FnError::from(e).into()),
                    _ => Ok(V::Undef),
                };
            }
            let Some(code) = v.json().map(code_text).transpose()?.flatten() else {
                return Err(Stop::Unsure);
            };
            match s.maps.translate_ref(url, &code, system.as_deref()) {
                Ok(coding) => V::J(coding),
                Err(e) => return Err(FnError::from(e).into()),
            }
        }
        Ex::Coding {
            system,
            code,
            display,
        } => {
            let system = match eval(system, s)? {
                V::J(j) => match j.as_ref() {
                    Json::String(t) => t.clone(),
                    _ => return Err(Stop::Unsure),
                },
                V::Undef => return Err(Stop::Unsure),
            };
            let code = eval(code, s)?;
            let display = match display {
                Some(d) => Some(eval(d, s)?),
                None => None,
            };
            if code.is_missing() {
                return Ok(V::Undef);
            }
            let Some(code) = code.json().map(code_text).transpose()?.flatten() else {
                return Err(Stop::Unsure);
            };
            // Keys in sorted order, so the map is built in one pass.
            let mut m = Vec::with_capacity(3);
            m.push(("code".to_owned(), Json::String(code.into_owned())));
            if let Some(d) = display.filter(|d| !d.is_missing())
                && let Some(text) = d.json().map(code_text).transpose()?.flatten()
            {
                m.push(("display".to_owned(), Json::String(text.into_owned())));
            }
            m.push(("system".to_owned(), Json::String(system)));
            V::owned(Json::Object(m.into_iter().collect::<Map<_, _>>()))
        }
        Ex::Reference {
            resource_type,
            entity,
            key,
            suffix,
        } => {
            let mut record_key = RecordKey::default();
            match key {
                Some(entries) => {
                    let mut values = Vec::with_capacity(entries.len());
                    for (name, e) in entries {
                        values.push((name, eval(e, s)?));
                    }
                    for (name, v) in values {
                        if v.is_missing() {
                            return Ok(V::Undef);
                        }
                        record_key.0.insert(name.clone(), v.into_json());
                    }
                }
                None => {
                    if s.key
                        .0
                        .values()
                        .any(|v| V::J(Cow::Borrowed(v)).is_missing())
                    {
                        return Ok(V::Undef);
                    }
                    record_key = s.key.clone();
                }
            }
            let entity = entity.as_deref().unwrap_or(s.entity);
            let id = resource_id(
                s.source,
                entity,
                &record_key,
                resource_type,
                suffix.as_deref(),
            );
            V::owned(Json::String(format!("{resource_type}/{id}")))
        }
        Ex::Dict(entries) => {
            // Evaluated in source order (the first error is the one reported), then built in
            // one pass (`collect` sorts; keys are distinct).
            let mut m = Vec::with_capacity(entries.len());
            for (k, e) in entries {
                let v = eval(e, s)?;
                m.push((k.clone(), v.into_json()));
            }
            V::owned(Json::Object(m.into_iter().collect::<Map<_, _>>()))
        }
        Ex::List(items) => V::owned(Json::Array(
            items
                .iter()
                .map(|e| eval(e, s).map(V::into_json))
                .collect::<Result<_, _>>()?,
        )),
        Ex::If { then, cond, other } => {
            if eval(cond, s)?.is_true() {
                eval(then, s)?
            } else {
                match other {
                    Some(o) => eval(o, s)?,
                    None => V::Undef,
                }
            }
        }
        Ex::Or(a, b) => {
            let v = eval(a, s)?;
            if v.is_true() { v } else { eval(b, s)? }
        }
        Ex::And(a, b) => {
            let v = eval(a, s)?;
            if v.is_true() { eval(b, s)? } else { v }
        }
        Ex::Not(a) => V::owned(Json::Bool(!eval(a, s)?.is_true())),
        Ex::Eq {
            left,
            right,
            negated,
        } => {
            let (l, r) = (eval(left, s)?, eval(right, s)?);
            V::owned(Json::Bool(equal(&l, &r)? != *negated))
        }
        Ex::In(needle, hay) => {
            let needle = eval(needle, s)?;
            let hay = eval(hay, s)?;
            let Some(Json::Array(items)) = hay.json() else {
                return Err(Stop::Unsure);
            };
            let mut found = false;
            for item in items {
                if equal(&needle, &V::J(Cow::Borrowed(item)))? {
                    found = true;
                    break;
                }
            }
            V::owned(Json::Bool(found))
        }
        Ex::Concat(parts) => {
            let mut out = String::new();
            for p in parts {
                render(&eval(p, s)?, &mut out)?;
            }
            V::owned(Json::String(out))
        }
    })
}

/// `==` for the kinds where minijinja's rule is plain equality.
fn equal(a: &V<'_>, b: &V<'_>) -> Result<bool, Stop> {
    match (a.json(), b.json()) {
        (Some(Json::String(x)), Some(Json::String(y))) => Ok(x == y),
        (Some(Json::Bool(x)), Some(Json::Bool(y))) => Ok(x == y),
        (Some(Json::Number(x)), Some(Json::Number(y))) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Ok(x == y),
            _ => Err(Stop::Unsure),
        },
        _ => Err(Stop::Unsure),
    }
}

/// Appends a value as a template prints it: strings as they are, integers in decimal,
/// undefined as nothing.
fn render(v: &V<'_>, out: &mut String) -> Result<(), Stop> {
    match v.json() {
        None => {}
        Some(Json::String(t)) => out.push_str(t),
        Some(Json::Number(n)) if n.is_i64() || n.is_u64() => out.push_str(&n.to_string()),
        Some(_) => return Err(Stop::Unsure),
    }
    Ok(())
}

/// Renders a planned string template (not yet trimmed).
pub(crate) fn render_text(segs: &[Seg], s: &Scope<'_>) -> Result<String, Stop> {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Text(t) => out.push_str(t),
            Seg::Ex(e) => render(&eval(e, s)?, &mut out)?,
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Debug, Clone, PartialEq)]
enum Tok<'s> {
    Str(String),
    Int(i64),
    Ident(&'s str),
    Sym(&'static str),
}

const SYMBOLS: [&str; 15] = [
    "==", "!=", ".", "|", ",", ":", "(", ")", "{", "}", "[", "]", "~", "=", "-",
];

fn tokenize(src: &str) -> Option<Vec<Tok<'_>>> {
    let mut out = Vec::new();
    let bytes = src.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'\'' || c == b'"' {
            let end = src[i + 1..].find(c as char)? + i + 1;
            let body = &src[i + 1..end];
            // Escapes are minijinja's business.
            if body.contains('\\') {
                return None;
            }
            out.push(Tok::Str(body.to_owned()));
            i = end + 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            // Floats, `1_000` and `1e3` are left to minijinja.
            if i < bytes.len()
                && (bytes[i] == b'.' || bytes[i] == b'_' || bytes[i].is_ascii_alphabetic())
            {
                return None;
            }
            out.push(Tok::Int(src[start..i].parse().ok()?));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(&src[start..i]));
        } else {
            let sym = SYMBOLS.iter().find(|s| src[i..].starts_with(**s))?;
            // `-` is only known as the start of whitespace control, which is not planned.
            if *sym == "-" {
                return None;
            }
            out.push(Tok::Sym(sym));
            i += sym.len();
        }
    }
    Some(out)
}

/// A keyword argument's value: a string literal, or a dict literal (`key=`).
enum KwArg {
    Text(String),
    Dict(Vec<(String, Ex)>),
}

const KEYWORDS: [&str; 8] = ["if", "else", "or", "and", "not", "in", "is", "none"];

struct Parser<'s> {
    toks: Vec<Tok<'s>>,
    pos: usize,
}

/// Plans an expression (the inside of `{{ }}`), or `None` if it is not a planned shape.
pub(crate) fn parse_expr(src: &str) -> Option<Ex> {
    let mut p = Parser {
        toks: tokenize(src)?,
        pos: 0,
    };
    let ex = p.ifexpr()?;
    (p.pos == p.toks.len()).then_some(ex)
}

/// Plans a string template made of text and `{{ expr }}` only.
pub(crate) fn parse_text(src: &str) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    let mut rest = src;
    while !rest.is_empty() {
        match rest.find("{{") {
            None => {
                segs.push(Seg::Text(plain(rest)?));
                break;
            }
            Some(start) => {
                if start > 0 {
                    segs.push(Seg::Text(plain(&rest[..start])?));
                }
                let after = &rest[start + 2..];
                let end = after.find("}}")?;
                let inner = &after[..end];
                // Braces inside, whitespace control and `{{ }}` are left to minijinja.
                let t = inner.trim();
                if t.is_empty()
                    || inner.contains(['{', '}'])
                    || t.starts_with(['-', '+'])
                    || t.ends_with(['-', '+'])
                {
                    return None;
                }
                segs.push(Seg::Ex(parse_expr(inner)?));
                rest = &after[end + 2..];
            }
        }
    }
    Some(segs)
}

/// Text between expressions, if it holds nothing a template would treat specially.
fn plain(text: &str) -> Option<String> {
    (!text.contains(['{', '}'])).then(|| text.to_owned())
}

impl<'s> Parser<'s> {
    fn peek(&self) -> Option<&Tok<'s>> {
        self.toks.get(self.pos)
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(x)) if *x == s)
    }

    fn is_kw(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(x)) if *x == k)
    }

    fn eat_sym(&mut self, s: &str) -> Option<()> {
        self.is_sym(s).then(|| self.pos += 1)
    }

    fn eat_kw(&mut self, k: &str) -> bool {
        let yes = self.is_kw(k);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn ident(&mut self) -> Option<&'s str> {
        match self.peek() {
            Some(Tok::Ident(x)) if !KEYWORDS.contains(x) => {
                let x = *x;
                self.pos += 1;
                Some(x)
            }
            _ => None,
        }
    }

    fn string(&mut self) -> Option<String> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.pos += 1;
                Some(s)
            }
            _ => None,
        }
    }

    fn ifexpr(&mut self) -> Option<Ex> {
        let then = self.or()?;
        if !self.eat_kw("if") {
            return Some(then);
        }
        let cond = self.or()?;
        let other = if self.eat_kw("else") {
            Some(Box::new(self.ifexpr()?))
        } else {
            None
        };
        Some(Ex::If {
            then: Box::new(then),
            cond: Box::new(cond),
            other,
        })
    }

    fn or(&mut self) -> Option<Ex> {
        let mut left = self.and()?;
        while self.eat_kw("or") {
            left = Ex::Or(Box::new(left), Box::new(self.and()?));
        }
        Some(left)
    }

    fn and(&mut self) -> Option<Ex> {
        let mut left = self.not()?;
        while self.eat_kw("and") {
            left = Ex::And(Box::new(left), Box::new(self.not()?));
        }
        Some(left)
    }

    fn not(&mut self) -> Option<Ex> {
        if self.eat_kw("not") {
            return Some(Ex::Not(Box::new(self.not()?)));
        }
        self.compare()
    }

    fn compare(&mut self) -> Option<Ex> {
        let left = self.concat()?;
        let negated = if self.eat_sym("==").is_some() {
            false
        } else if self.eat_sym("!=").is_some() {
            true
        } else if self.eat_kw("in") {
            return Some(Ex::In(Box::new(left), Box::new(self.concat()?)));
        } else {
            return Some(left);
        };
        Some(Ex::Eq {
            left: Box::new(left),
            right: Box::new(self.concat()?),
            negated,
        })
    }

    fn concat(&mut self) -> Option<Ex> {
        let first = self.unary()?;
        if !self.is_sym("~") {
            return Some(first);
        }
        let mut parts = vec![first];
        while self.eat_sym("~").is_some() {
            parts.push(self.unary()?);
        }
        Some(Ex::Concat(parts))
    }

    fn unary(&mut self) -> Option<Ex> {
        let mut ex = self.primary()?;
        while self.eat_sym(".").is_some() {
            ex = Ex::Attr(Box::new(ex), self.ident()?.to_owned());
        }
        while self.eat_sym("|").is_some() {
            ex = match self.ident()? {
                "required" => Ex::Required(Box::new(ex)),
                "translate" => {
                    self.eat_sym("(")?;
                    let table = self.string()?;
                    self.eat_sym(")")?;
                    Ex::Translate(Box::new(ex), table)
                }
                _ => return None,
            };
            // `required()` and the like are minijinja's to judge.
            if self.is_sym("(") || self.is_sym(".") {
                return None;
            }
        }
        Some(ex)
    }

    fn primary(&mut self) -> Option<Ex> {
        let tok = self.peek()?.clone();
        self.pos += 1;
        match tok {
            Tok::Str(s) => Some(Ex::Lit(Json::String(s))),
            Tok::Int(i) => Some(Ex::Lit(Json::from(i))),
            Tok::Ident("none") => Some(Ex::Lit(Json::Null)),
            Tok::Ident("true") => Some(Ex::Lit(Json::Bool(true))),
            Tok::Ident("false") => Some(Ex::Lit(Json::Bool(false))),
            Tok::Ident("record") => Some(Ex::Record),
            Tok::Ident(name @ ("conceptmap" | "coding" | "reference")) => {
                self.eat_sym("(")?;
                self.call(name)
            }
            Tok::Sym("(") => {
                let ex = self.ifexpr()?;
                self.eat_sym(")")?;
                Some(ex)
            }
            Tok::Sym("[") => {
                let mut items = Vec::new();
                if self.eat_sym("]").is_none() {
                    loop {
                        items.push(self.ifexpr()?);
                        if self.eat_sym("]").is_some() {
                            break;
                        }
                        self.eat_sym(",")?;
                    }
                }
                Some(Self::fold_list(items))
            }
            Tok::Sym("{") => Some(Self::fold_dict(self.dict_body()?)),
            _ => None,
        }
    }

    /// A list literal of literals is one literal, built once at load (evaluating it gives the
    /// same JSON: each item's value in order), so a record only copies it.
    fn fold_list(items: Vec<Ex>) -> Ex {
        if items.iter().all(|e| matches!(e, Ex::Lit(_))) {
            Ex::Lit(Json::Array(
                items
                    .into_iter()
                    .filter_map(|e| match e {
                        Ex::Lit(j) => Some(j),
                        _ => None,
                    })
                    .collect(),
            ))
        } else {
            Ex::List(items)
        }
    }

    /// [`Self::fold_list`] for dict literals (keys are distinct, so insertion order does not matter).
    fn fold_dict(entries: Vec<(String, Ex)>) -> Ex {
        if entries.iter().all(|(_, e)| matches!(e, Ex::Lit(_))) {
            Ex::Lit(Json::Object(
                entries
                    .into_iter()
                    .filter_map(|(k, e)| match e {
                        Ex::Lit(j) => Some((k, j)),
                        _ => None,
                    })
                    .collect(),
            ))
        } else {
            Ex::Dict(entries)
        }
    }

    /// `'k': expr, …}` with distinct string keys.
    fn dict_body(&mut self) -> Option<Vec<(String, Ex)>> {
        let mut entries: Vec<(String, Ex)> = Vec::new();
        if self.eat_sym("}").is_some() {
            return Some(entries);
        }
        loop {
            let k = self.string()?;
            if entries.iter().any(|(seen, _)| *seen == k) {
                return None;
            }
            self.eat_sym(":")?;
            entries.push((k, self.ifexpr()?));
            if self.eat_sym("}").is_some() {
                return Some(entries);
            }
            self.eat_sym(",")?;
        }
    }

    /// The arguments after `name(`: positional expressions, then `kw=value`.
    fn call(&mut self, name: &str) -> Option<Ex> {
        let mut args = Vec::new();
        let mut kwargs: Vec<(&'s str, KwArg)> = Vec::new();
        if self.eat_sym(")").is_none() {
            loop {
                if let (Some(Tok::Ident(k)), Some(Tok::Sym("="))) =
                    (self.peek().cloned(), self.toks.get(self.pos + 1).cloned())
                {
                    self.pos += 2;
                    if kwargs.iter().any(|(seen, _)| *seen == k) {
                        return None;
                    }
                    if self.eat_sym("{").is_some() {
                        kwargs.push((k, KwArg::Dict(self.dict_body()?)));
                    } else {
                        kwargs.push((k, KwArg::Text(self.string()?)));
                    }
                } else if kwargs.is_empty() {
                    args.push(self.ifexpr()?);
                } else {
                    return None;
                }
                if self.eat_sym(")").is_some() {
                    break;
                }
                self.eat_sym(",")?;
            }
        }
        let mut args = args.into_iter();
        let ex = match name {
            "conceptmap" => {
                let url = match args.next()? {
                    Ex::Lit(Json::String(u)) => u,
                    _ => return None,
                };
                let code = Box::new(args.next()?);
                let system = match (args.next(), kwargs.as_slice()) {
                    (None, []) => None,
                    (Some(Ex::Lit(Json::String(s))), []) => Some(s),
                    (None, [("system", KwArg::Text(s))]) => Some(s.clone()),
                    _ => return None,
                };
                Ex::ConceptMap { url, code, system }
            }
            "coding" => {
                if !kwargs.is_empty() {
                    return None;
                }
                Ex::Coding {
                    system: Box::new(args.next()?),
                    code: Box::new(args.next()?),
                    display: args.next().map(Box::new),
                }
            }
            _ => {
                let resource_type = match args.next()? {
                    Ex::Lit(Json::String(t)) if is_resource_type(&t) => t,
                    _ => return None,
                };
                let (mut entity, mut key, mut suffix) = (None, None, None);
                for (k, arg) in kwargs {
                    match (k, arg) {
                        ("entity", KwArg::Text(t)) => entity = Some(t),
                        ("suffix", KwArg::Text(t)) => suffix = Some(t),
                        ("key", KwArg::Dict(d)) => key = Some(d),
                        _ => return None,
                    }
                }
                Ex::Reference {
                    resource_type,
                    entity,
                    key,
                    suffix,
                }
            }
        };
        args.next().is_none().then_some(ex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_lists_and_dicts_are_folded_at_load_and_the_rest_is_not() {
        let folded = parse_expr(
            "{'type': {'coding': [{'system': 'urn:s', 'code': 'SS'}]}, 'n': [1, none, true]}",
        );
        assert_eq!(
            folded,
            Some(Ex::Lit(serde_json::json!({
                "type": {"coding": [{"system": "urn:s", "code": "SS"}]},
                "n": [1, null, true]
            })))
        );
        assert_eq!(parse_expr("[]"), Some(Ex::Lit(serde_json::json!([]))));
        assert_eq!(parse_expr("{}"), Some(Ex::Lit(serde_json::json!({}))));
        // A dict with one non-literal entry stays a dict; its literal parts are folded.
        let Some(Ex::Dict(entries)) = parse_expr("{'t': {'c': ['x']}, 'v': record.SSN}") else {
            panic!("not a dict");
        };
        assert_eq!(entries[0].1, Ex::Lit(serde_json::json!({"c": ["x"]})));
        assert!(matches!(entries[1].1, Ex::Attr(..)));
        assert!(matches!(parse_expr("[1, record.A]"), Some(Ex::List(_))));
    }

    #[test]
    fn record_fields_found_once_per_record_equal_attribute_lookups() {
        let exprs = [
            "record.b",
            "record.A ~ record.a",
            "{'x': record.ab, 'y': [record.zz, record.missing]} if record.b",
            "(record.n | translate('t')).display",
            "record.a.inner or record.AB",
            "coding('s', record.b, record.a) if record.zz in ['q', record.Z]",
            "reference('Patient', key={'Id': record.b})",
        ];
        let records = [
            serde_json::json!({"a": {"inner": "i"}, "A": "1", "AB": "2", "ab": "3", "b": "4",
                               "b_": "5", "zz": "q", "Z": "w", "n": "k"}),
            serde_json::json!({"b": "", "zz": "w", "Z": "w", "n": "k"}),
            serde_json::json!({"zzz": 1, "aa": 2}),
            serde_json::json!({}),
            serde_json::json!("not a map"),
            serde_json::json!(null),
        ];
        // Each object also as a row sharing its columns, read by column index.
        let cells = records.iter().filter_map(|r| {
            let m = r.as_object()?;
            let columns = Columns::sorted(m.keys().cloned().collect());
            Some(Record::from(Cells::new(
                columns,
                m.values().cloned().map(Some).collect(),
            )))
        });
        let records: Vec<Record> = records
            .iter()
            .cloned()
            .map(Record::from)
            .chain(cells)
            .collect();
        let tables: Tables = [(
            "t".to_owned(),
            [("k".to_owned(), serde_json::json!({"display": "K"}))]
                .into_iter()
                .collect(),
        )]
        .into_iter()
        .collect();
        let maps = ConceptMaps::default();
        let key = RecordKey::from_pairs([("Id", serde_json::json!("k-1"))]);
        let mut fields = Fields::default();
        let plain: Vec<Ex> = exprs.iter().map(|e| parse_expr(e).unwrap()).collect();
        let mut resolved = plain.clone();
        for e in &mut resolved {
            fields.resolve(e);
        }
        assert!(
            resolved
                .iter()
                .all(|e| !format!("{e:?}").contains("Record"))
        );
        let show = |r: Result<V<'_>, Stop>| match r {
            Ok(v) => format!("{:?}", v.json()),
            Err(Stop::Unsure) => "unsure".to_owned(),
            Err(Stop::Fn(e)) => format!("error {e}"),
        };
        for record in &records {
            let values = fields.values(record);
            let with = Scope {
                record,
                fields: &values,
                key: &key,
                source: "s",
                entity: "e",
                tables: &tables,
                maps: &maps,
            };
            let without = Scope {
                fields: &[],
                ..with
            };
            for (p, r) in plain.iter().zip(&resolved) {
                assert_eq!(
                    show(eval(r, &with)),
                    show(eval(p, &without)),
                    "{p:?} on {record}"
                );
                // A scope without the values (not filled) still finds them.
                assert_eq!(show(eval(r, &without)), show(eval(p, &without)), "{p:?}");
            }
        }
    }

    #[test]
    fn plans_the_common_shapes_and_leaves_the_rest() {
        for planned in [
            "record.Id",
            " record.LAST | required ",
            "record.RACE | translate('race')",
            "(record.RACE | translate('race')).display",
            "conceptmap('urn:x', record.G | required).code",
            "conceptmap('urn:x', record.G, 'urn:s')",
            "conceptmap('urn:x', record.G, system='urn:s')",
            "coding('http://snomed.info/sct', record.CODE, record.DESCRIPTION)",
            "reference('Patient', entity='patients', key={'Id': record.PATIENT | required})",
            "reference('Practitioner')",
            "{'use': 'maiden', 'family': record.MAIDEN, 'given': [record.FIRST]} if record.MAIDEN",
            "'resolved' if record.STOP else 'active'",
            "record.A or record.B",
            "record.T == 'numeric' or record.C in ['63586-2']",
            "not record.A and record.B != 'x'",
            "'Reason: ' ~ record.R ~ ' (' ~ record.C ~ ')' if record.C",
            "8",
            "none",
        ] {
            assert!(parse_expr(planned).is_some(), "{planned}");
        }
        for left in [
            "record.X | int",
            "(record.X | int) - 1 if record.X",
            "record.n + 1",
            "record.X | required()",
            "'a\\'b'",
            "1.5",
            "reference('not a type')",
            "reference('Patient', nope='x')",
            "coding('s', system='x')",
            "conceptmap('urn:x', record.G, 'urn:s', system='urn:s')",
            "conceptmap('urn:x', record.G, nope='urn:s')",
            "conceptmap(record.url, record.x)",
            "{'a': 1, 'a': 2}",
            "record.a == record.b == record.c",
            "record['x']",
            "key.pk",
            "record.X is defined",
            "[1, 2,]",
            "(record.a, record.b)",
        ] {
            assert_eq!(parse_expr(left), None, "{left}");
        }
        assert_eq!(
            parse_text("n={{ record.n }}!"),
            Some(vec![
                Seg::Text("n=".into()),
                Seg::Ex(Ex::Attr(Box::new(Ex::Record), "n".into())),
                Seg::Text("!".into())
            ])
        );
        for left in [
            "{{- record.n }}",
            "{{ record.n -}}",
            "{{ {'a': 1} }}",
            "{% if x %}y{% endif %}",
            "a {# c #} b",
            "{{ record.n",
            "x }} y",
        ] {
            assert_eq!(parse_text(left), None, "{left}");
        }
    }
}
