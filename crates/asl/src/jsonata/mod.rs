//! A JSONata evaluator over `serde_json::Value`, for Step Functions' JSONata query language
//! (`{% … %}` in Arguments, Output, Assign, Condition, Items …).
//!
//! Written here because the crates.io implementations were not adequate for this engine:
//! jsonata-rs 0.3.x is incomplete (its own description), and jsonata-core 2.x turns on
//! serde_json's `preserve_order` for the whole workspace (changing every other crate's map
//! order) and brings its own value type. What this covers: paths with sequences and
//! flattening, predicates, wildcards and descendants, `&`, arithmetic, comparison, `in`,
//! `and`/`or`, conditionals, `:=` bindings and blocks, lambdas, `~>`, object and array
//! constructors, ranges, order-by `^(…)`, regular expressions, the common standard library and
//! the functions AWS adds (`$partition`, `$range`, `$hash`, `$random`, `$uuid`, `$parse`).
//! Also: group-by object constructors (`a{…}`), the positional and context variable binding
//! operators `#$i` and `@$v` (a path with them runs as a stream of tuples), the transform
//! operator `| location | update, delete |`, partial application (`$f(?, x)`),
//! `$formatNumber`/`$formatInteger`/`$formatBase` and `$eval`.
//! Not covered: variables bound by `#`/`@` are not visible to a group-by that ends their path
//! (JSONata's "reduce" tuples); `$eval` sees the bindings and `$states` but not variables bound
//! by `:=` in the calling expression; `$formatInteger` words are English only and its decimal
//! pictures use ASCII digits.
//!
//! Input data is borrowed, not copied: a path into `$states.input` walks the caller's value.

mod eval;
mod format;
mod functions;
mod parser;

use std::collections::HashMap;

use serde_json::Value;

/// A JSONata error: its code as the reference implementation names it, and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JsonataError {
    /// `S0201`, `T2001`, `D3001` … (S: syntax, T: type, D: dynamic).
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// Character offset in the expression, for syntax errors.
    pub position: Option<usize>,
}

impl JsonataError {
    pub(crate) fn syntax(code: &'static str, message: impl Into<String>, position: usize) -> Self {
        Self {
            code,
            message: message.into(),
            position: Some(position),
        }
    }

    pub(crate) fn eval(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            position: None,
        }
    }
}

/// A parsed JSONata expression, ready to evaluate many times.
#[derive(Debug)]
pub struct Expr {
    text: String,
    root: parser::Node,
}

/// What an expression evaluates to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A JSON value.
    Value(Value),
    /// Nothing (JSONata's `undefined`).
    Undefined,
    /// A function (not representable as JSON).
    Function,
}

/// Variables visible to an expression: `$name` → a borrowed JSON value.
#[derive(Debug, Default, Clone)]
pub struct Bindings<'a> {
    vars: HashMap<&'a str, &'a Value>,
    /// Variables looked up last (e.g. the state machine's `Assign` variables).
    fallback: Option<&'a serde_json::Map<String, Value>>,
    /// `$states`: (field, value) pairs.
    states: Vec<(&'static str, &'a Value)>,
}

impl<'a> Bindings<'a> {
    /// No variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `$name` to `value`.
    pub fn bind(&mut self, name: &'a str, value: &'a Value) -> &mut Self {
        self.vars.insert(name, value);
        self
    }

    /// Every key of `vars` becomes a variable (looked up after the explicit bindings).
    pub fn with_map(&mut self, vars: &'a serde_json::Map<String, Value>) -> &mut Self {
        self.fallback = Some(vars);
        self
    }

    /// Adds a field of the reserved `$states` object (`input`, `result`, `errorOutput`,
    /// `context`).
    pub fn states_field(&mut self, field: &'static str, value: &'a Value) -> &mut Self {
        self.states.push((field, value));
        self
    }
}

impl Expr {
    /// Parses an expression; a syntax error names its code and position.
    pub fn parse(text: &str) -> Result<Self, JsonataError> {
        let toks = parser::tokenize(text)?;
        let root = parser::Parser::new(toks).parse_all()?;
        Ok(Self {
            text: text.to_string(),
            root,
        })
    }

    /// The expression text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates against `input` (the context `$`; `None` is undefined) and `bindings`.
    pub fn evaluate(
        &self,
        input: Option<&Value>,
        bindings: &Bindings<'_>,
    ) -> Result<Outcome, JsonataError> {
        eval::run(&self.root, input, bindings)
    }
}

#[cfg(test)]
mod tests;
