//! JsonPath as Step Functions evaluates it (Jayway semantics, not RFC 9535).
//!
//! AWS runs Jayway JsonPath: a *definite* path (only names and single indexes) yields one value
//! or "not found", an *indefinite* path (wildcards, slices, unions, filters, deep scan) always
//! yields a list, possibly empty. RFC 9535 crates always return node lists and differ on filter
//! and error behaviour, so we keep a small evaluator that follows Jayway instead.

use serde_json::Value;

use crate::context::Ctx;

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Name(String),
    Index(i64),
    Wildcard,
    Slice(Option<i64>, Option<i64>, Option<i64>),
    Union(Vec<UnionItem>),
    DeepScan(Box<Segment>),
    Filter(Filter),
}

#[derive(Debug, Clone, PartialEq)]
enum UnionItem {
    Name(String),
    Index(i64),
}

#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Or(Box<Filter>, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Exists(Vec<Segment>),
    Cmp(Operand, CmpOp, Operand),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Current(Vec<Segment>),
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed JsonPath (`$...` against the input, `$$...` against the context object,
/// `$name...` against the variable `name`).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    text: String,
    context: bool,
    variable: Option<String>,
    segments: Vec<Segment>,
}

/// Why a path text was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSyntaxError(pub String);

impl JsonPath {
    /// Parses a path; it must start with `$` (or `$$` for the context object).
    pub fn parse(text: &str) -> Result<Self, PathSyntaxError> {
        let mut variable = None;
        let (context, rest) = if let Some(r) = text.strip_prefix("$$") {
            (true, r)
        } else if let Some(r) = text.strip_prefix('$') {
            let name_len = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            if name_len > 0 && r.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                variable = Some(r[..name_len].to_string());
                (false, &r[name_len..])
            } else {
                (false, r)
            }
        } else {
            return Err(PathSyntaxError(format!(
                "path '{text}' must start with '$'"
            )));
        };
        let mut p = Parser {
            s: rest.as_bytes(),
            pos: 0,
            text,
        };
        let segments = p.segments(false)?;
        if p.pos != p.s.len() {
            return Err(p.err("unexpected character"));
        }
        Ok(Self {
            text: text.to_string(),
            context,
            variable,
            segments,
        })
    }

    /// The path as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the path reads the context object (`$$`).
    pub fn is_context(&self) -> bool {
        self.context
    }

    /// The variable the path reads (`$name...`), if any.
    pub fn variable(&self) -> Option<&str> {
        self.variable.as_deref()
    }

    /// Evaluates against the right root: the effective input, the context object, or a
    /// variable. A context path reads only the part of the context it names, so the shared
    /// execution input is not copied unless the path asks for it.
    pub(crate) fn lookup(&self, input: &Value, context: &Ctx<'_>) -> Option<Value> {
        if let Some(name) = &self.variable {
            return self.evaluate(context.variable(name)?);
        }
        if !self.context {
            return self.evaluate(input);
        }
        match self.segments.split_first() {
            Some((Segment::Name(first), rest)) => match context.field(first) {
                Some(v) => self.evaluate_segments(rest, &v),
                None if self.is_definite() => None,
                None => Some(Value::Array(Vec::new())),
            },
            _ => self.evaluate(&context.materialize()),
        }
    }

    fn evaluate_segments(&self, segments: &[Segment], root: &Value) -> Option<Value> {
        if self.is_definite() {
            return definite(segments, root).cloned();
        }
        let mut out = Vec::new();
        collect(segments, root, &mut out);
        Some(Value::Array(out.into_iter().cloned().collect()))
    }

    /// Whether the path is `$` itself: the whole effective input.
    pub(crate) fn is_root(&self) -> bool {
        !self.context && self.variable.is_none() && self.segments.is_empty()
    }

    /// A definite path names at most one value (no wildcard, slice, union, filter or deep scan).
    pub fn is_definite(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Name(_) | Segment::Index(_)))
    }

    /// A reference path: names and non-negative indexes only (ResultPath and friends).
    pub fn is_reference(&self) -> bool {
        !self.context
            && self.variable.is_none()
            && self
                .segments
                .iter()
                .all(|s| matches!(s, Segment::Name(_)) || matches!(s, Segment::Index(i) if *i >= 0))
    }

    /// Jayway's rendering of the path, used in AWS error causes: `$['a'][0]`.
    pub fn jayway_form(&self) -> String {
        let mut out = String::from(if self.context { "$$" } else { "$" });
        if let Some(v) = &self.variable {
            out.push_str(v);
        }
        for s in &self.segments {
            match s {
                Segment::Name(n) => out.push_str(&format!("['{n}']")),
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
                Segment::Wildcard => out.push_str("[*]"),
                _ => {}
            }
        }
        out
    }

    /// Evaluates against `root`; `None` when a definite path finds nothing. Indefinite paths
    /// always give an array.
    pub fn evaluate(&self, root: &Value) -> Option<Value> {
        self.evaluate_segments(&self.segments, root)
    }

    /// The names and indexes of a reference path, for writing (ResultPath).
    pub(crate) fn reference_steps(&self) -> Vec<RefStep> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Name(n) => Some(RefStep::Name(n.clone())),
                Segment::Index(i) => Some(RefStep::Index(usize::try_from(*i).unwrap_or(0))),
                _ => None,
            })
            .collect()
    }
}

/// One step of a reference path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RefStep {
    Name(String),
    Index(usize),
}

fn index_of(len: usize, i: i64) -> Option<usize> {
    let len_i = i64::try_from(len).ok()?;
    let idx = if i < 0 { len_i + i } else { i };
    if (0..len_i).contains(&idx) {
        usize::try_from(idx).ok()
    } else {
        None
    }
}

fn definite<'a>(segments: &[Segment], root: &'a Value) -> Option<&'a Value> {
    let mut cur = root;
    for s in segments {
        cur = match (s, cur) {
            (Segment::Name(n), Value::Object(m)) => m.get(n)?,
            (Segment::Index(i), Value::Array(a)) => a.get(index_of(a.len(), *i)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn collect<'a>(segments: &[Segment], cur: &'a Value, out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = segments.split_first() else {
        out.push(cur);
        return;
    };
    match first {
        Segment::Name(n) => {
            if let Some(v) = cur.as_object().and_then(|m| m.get(n)) {
                collect(rest, v, out);
            }
        }
        Segment::Index(i) => {
            if let Some(a) = cur.as_array() {
                if let Some(v) = index_of(a.len(), *i).and_then(|k| a.get(k)) {
                    collect(rest, v, out);
                }
            }
        }
        Segment::Wildcard => match cur {
            Value::Array(a) => a.iter().for_each(|v| collect(rest, v, out)),
            Value::Object(m) => m.values().for_each(|v| collect(rest, v, out)),
            _ => {}
        },
        Segment::Slice(start, end, step) => {
            if let Some(a) = cur.as_array() {
                for k in slice_indexes(a.len(), *start, *end, *step) {
                    if let Some(v) = a.get(k) {
                        collect(rest, v, out);
                    }
                }
            }
        }
        Segment::Union(items) => {
            for it in items {
                let v = match (it, cur) {
                    (UnionItem::Name(n), Value::Object(m)) => m.get(n),
                    (UnionItem::Index(i), Value::Array(a)) => {
                        index_of(a.len(), *i).and_then(|k| a.get(k))
                    }
                    _ => None,
                };
                if let Some(v) = v {
                    collect(rest, v, out);
                }
            }
        }
        Segment::DeepScan(inner) => {
            let mut nodes = Vec::new();
            descendants(cur, &mut nodes);
            for n in nodes {
                let mut matched = Vec::new();
                collect(std::slice::from_ref(inner.as_ref()), n, &mut matched);
                for m in matched {
                    collect(rest, m, out);
                }
            }
        }
        Segment::Filter(f) => match cur {
            Value::Array(a) => a
                .iter()
                .filter(|v| filter_matches(f, v))
                .for_each(|v| collect(rest, v, out)),
            Value::Object(_) if filter_matches(f, cur) => collect(rest, cur, out),
            _ => {}
        },
    }
}

fn descendants<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(v);
    match v {
        Value::Array(a) => a.iter().for_each(|c| descendants(c, out)),
        Value::Object(m) => m.values().for_each(|c| descendants(c, out)),
        _ => {}
    }
}

fn slice_indexes(
    len: usize,
    start: Option<i64>,
    end: Option<i64>,
    step: Option<i64>,
) -> Vec<usize> {
    let Ok(len) = i64::try_from(len) else {
        return Vec::new();
    };
    let step = step.unwrap_or(1);
    if step <= 0 {
        return Vec::new();
    }
    let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i.min(len) };
    let s = start.map_or(0, norm);
    let e = end.map_or(len, norm);
    let mut out = Vec::new();
    let mut i = s;
    while i < e {
        if let Ok(u) = usize::try_from(i) {
            out.push(u);
        }
        i += step;
    }
    out
}

fn filter_matches(f: &Filter, item: &Value) -> bool {
    match f {
        Filter::Or(a, b) => filter_matches(a, item) || filter_matches(b, item),
        Filter::And(a, b) => filter_matches(a, item) && filter_matches(b, item),
        Filter::Not(a) => !filter_matches(a, item),
        Filter::Exists(segs) => definite(segs, item).is_some(),
        Filter::Cmp(l, op, r) => {
            let (Some(l), Some(r)) = (operand(l, item), operand(r, item)) else {
                return false;
            };
            compare(&l, *op, &r)
        }
    }
}

fn operand(o: &Operand, item: &Value) -> Option<Value> {
    match o {
        Operand::Literal(v) => Some(v.clone()),
        Operand::Current(segs) => definite(segs, item).cloned(),
    }
}

fn compare(l: &Value, op: CmpOp, r: &Value) -> bool {
    use std::cmp::Ordering;
    let ord = match (l, r) {
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .zip(b.as_f64())
            .and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => {
            if l == r {
                Some(Ordering::Equal)
            } else {
                None
            }
        }
    };
    match op {
        CmpOp::Eq => ord == Some(Ordering::Equal),
        CmpOp::Ne => ord != Some(Ordering::Equal),
        CmpOp::Lt => ord == Some(Ordering::Less),
        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ord == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> PathSyntaxError {
        PathSyntaxError(format!(
            "invalid JsonPath '{}': {what} at offset {}",
            self.text, self.pos
        ))
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Parses segments until the end or, inside a filter, until a character that ends an operand.
    fn segments(&mut self, in_filter: bool) -> Result<Vec<Segment>, PathSyntaxError> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => break,
                Some(b'.') => {
                    self.pos += 1;
                    if self.peek() == Some(b'.') {
                        self.pos += 1;
                        let inner = if self.peek() == Some(b'[') {
                            self.bracket()?
                        } else if self.peek() == Some(b'*') {
                            self.pos += 1;
                            Segment::Wildcard
                        } else {
                            Segment::Name(self.name()?)
                        };
                        out.push(Segment::DeepScan(Box::new(inner)));
                    } else if self.peek() == Some(b'*') {
                        self.pos += 1;
                        out.push(Segment::Wildcard);
                    } else {
                        out.push(Segment::Name(self.name()?));
                    }
                }
                Some(b'[') => out.push(self.bracket()?),
                Some(_) if in_filter => break,
                Some(_) => return Err(self.err("expected '.' or '['")),
            }
        }
        Ok(out)
    }

    fn name(&mut self) -> Result<String, PathSyntaxError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if matches!(
                c,
                b'.' | b'[' | b']' | b' ' | b')' | b'=' | b'!' | b'<' | b'>' | b'&' | b'|' | b','
            ) {
                break;
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err("empty name"));
        }
        std::str::from_utf8(&self.s[start..self.pos])
            .map(str::to_string)
            .map_err(|_| self.err("invalid UTF-8"))
    }

    fn quoted(&mut self) -> Result<String, PathSyntaxError> {
        let Some(q) = self.peek() else {
            return Err(self.err("expected quote"));
        };
        self.pos += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.pos += 1;
            if c == b'\\' {
                if let Some(n) = self.peek() {
                    out.push(n);
                    self.pos += 1;
                }
                continue;
            }
            if c == q {
                return String::from_utf8(out).map_err(|_| self.err("invalid UTF-8"));
            }
            out.push(c);
        }
        Err(self.err("unterminated string"))
    }

    fn int(&mut self) -> Result<Option<i64>, PathSyntaxError> {
        self.skip_ws();
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        if self.pos == start {
            return Ok(None);
        }
        let t =
            std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| self.err("bad number"))?;
        let n = t.parse::<i64>().map_err(|_| self.err("bad number"))?;
        self.skip_ws();
        Ok(Some(n))
    }

    fn expect(&mut self, c: u8) -> Result<(), PathSyntaxError> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", c as char)))
        }
    }

    fn bracket(&mut self) -> Result<Segment, PathSyntaxError> {
        self.expect(b'[')?;
        self.skip_ws();
        let seg = match self.peek() {
            Some(b'*') => {
                self.pos += 1;
                Segment::Wildcard
            }
            Some(b'?') => {
                self.pos += 1;
                self.expect(b'(')?;
                let f = self.filter_or()?;
                self.expect(b')')?;
                Segment::Filter(f)
            }
            Some(b'\'' | b'"') => {
                let mut names = vec![self.quoted()?];
                self.skip_ws();
                while self.peek() == Some(b',') {
                    self.pos += 1;
                    self.skip_ws();
                    names.push(self.quoted()?);
                    self.skip_ws();
                }
                if names.len() == 1 {
                    Segment::Name(names.remove(0))
                } else {
                    Segment::Union(names.into_iter().map(UnionItem::Name).collect())
                }
            }
            _ => {
                let first = self.int()?;
                if self.peek() == Some(b':') {
                    self.pos += 1;
                    let end = self.int()?;
                    let step = if self.peek() == Some(b':') {
                        self.pos += 1;
                        self.int()?
                    } else {
                        None
                    };
                    Segment::Slice(first, end, step)
                } else if self.peek() == Some(b',') {
                    let mut items = vec![UnionItem::Index(
                        first.ok_or_else(|| self.err("expected index"))?,
                    )];
                    while self.peek() == Some(b',') {
                        self.pos += 1;
                        items.push(UnionItem::Index(
                            self.int()?.ok_or_else(|| self.err("expected index"))?,
                        ));
                    }
                    Segment::Union(items)
                } else {
                    Segment::Index(first.ok_or_else(|| self.err("expected index"))?)
                }
            }
        };
        self.expect(b']')?;
        Ok(seg)
    }

    fn filter_or(&mut self) -> Result<Filter, PathSyntaxError> {
        let mut left = self.filter_and()?;
        loop {
            self.skip_ws();
            if self.s[self.pos..].starts_with(b"||") {
                self.pos += 2;
                left = Filter::Or(Box::new(left), Box::new(self.filter_and()?));
            } else {
                return Ok(left);
            }
        }
    }

    fn filter_and(&mut self) -> Result<Filter, PathSyntaxError> {
        let mut left = self.filter_atom()?;
        loop {
            self.skip_ws();
            if self.s[self.pos..].starts_with(b"&&") {
                self.pos += 2;
                left = Filter::And(Box::new(left), Box::new(self.filter_atom()?));
            } else {
                return Ok(left);
            }
        }
    }

    fn filter_atom(&mut self) -> Result<Filter, PathSyntaxError> {
        self.skip_ws();
        match self.peek() {
            Some(b'!') => {
                self.pos += 1;
                return Ok(Filter::Not(Box::new(self.filter_atom()?)));
            }
            Some(b'(') => {
                self.pos += 1;
                let f = self.filter_or()?;
                self.expect(b')')?;
                return Ok(f);
            }
            _ => {}
        }
        let left = self.operand()?;
        self.skip_ws();
        let rest = &self.s[self.pos..];
        let op = [
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
        ]
        .into_iter()
        .find(|(t, _)| rest.starts_with(t.as_bytes()));
        match op {
            Some((t, op)) => {
                self.pos += t.len();
                let right = self.operand()?;
                Ok(Filter::Cmp(left, op, right))
            }
            None => match left {
                Operand::Current(segs) => Ok(Filter::Exists(segs)),
                Operand::Literal(_) => Err(self.err("expected comparison")),
            },
        }
    }

    fn operand(&mut self) -> Result<Operand, PathSyntaxError> {
        self.skip_ws();
        match self.peek() {
            Some(b'@') => {
                self.pos += 1;
                Ok(Operand::Current(self.segments(true)?))
            }
            Some(b'\'' | b'"') => Ok(Operand::Literal(Value::String(self.quoted()?))),
            _ => {
                let start = self.pos;
                while let Some(c) = self.peek() {
                    if matches!(c, b' ' | b')' | b'&' | b'|' | b'=' | b'!' | b'<' | b'>') {
                        break;
                    }
                    self.pos += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.pos])
                    .map_err(|_| self.err("invalid UTF-8"))?;
                serde_json::from_str::<Value>(t)
                    .ok()
                    .filter(|v| !v.is_object() && !v.is_array())
                    .map(Operand::Literal)
                    .ok_or_else(|| self.err("expected a literal"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(p: &str, v: &Value) -> Option<Value> {
        JsonPath::parse(p).unwrap().evaluate(v)
    }

    #[test]
    fn definite_and_indefinite() {
        let v = json!({"a": {"b": [1, 2, 3, 4]}, "users": [{"s": 0}, {"s": 1}]});
        assert_eq!(eval("$.a.b[1]", &v), Some(json!(2)));
        assert_eq!(eval("$.a.b[-1]", &v), Some(json!(4)));
        assert_eq!(eval("$.a.x", &v), None);
        assert_eq!(eval("$.a.b[1:3]", &v), Some(json!([2, 3])));
        assert_eq!(eval("$.a.b[*]", &v), Some(json!([1, 2, 3, 4])));
        assert_eq!(eval("$.x[*].y", &v), Some(json!([])));
        assert_eq!(eval("$.users[?(@.s == 0)]", &v), Some(json!([{"s": 0}])));
        assert_eq!(eval("$..s", &v), Some(json!([0, 1])));
        assert_eq!(eval("$['a']['b'][0]", &v), Some(json!(1)));
        assert_eq!(eval("$", &v), Some(v.clone()));
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in ["a.b", "$.", "$[", "$.a[1", "$.a b", "$[?(@.a ==)]"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reference_paths() {
        assert!(JsonPath::parse("$.a['b'][0]").unwrap().is_reference());
        assert!(!JsonPath::parse("$.a[*]").unwrap().is_reference());
        assert!(!JsonPath::parse("$$.Execution").unwrap().is_reference());
        assert_eq!(
            JsonPath::parse("$.a[0]").unwrap().jayway_form(),
            "$['a'][0]"
        );
    }
}
