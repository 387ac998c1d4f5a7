//! FHIRPath over FHIR JSON (`serde_json::Value`): the subset of FHIRPath N1 plus the FHIR R4
//! additions that the R4 core invariants use, and a little more.
//!
//! [`Expression::compile`] parses once (lexer → AST); [`Expression::evaluate`] walks a JSON
//! resource with FHIR's JSON conventions: repeating elements are arrays, choice elements are
//! found by name (`value` finds `valueQuantity` and knows its type is `Quantity`), a
//! primitive's extensions live in its `_name` sibling, and `resolve()` follows `#id` to a
//! contained resource and other references to a Bundle entry of the root resource.
//!
//! The crate knows nothing about a validator: terminology (`memberOf`), narrative checks
//! (`htmlChecks`) and profile conformance (`conformsTo`) are asked of a [`Host`]; a host that
//! cannot answer makes the evaluation fail with [`EvalError::NotChecked`], never a silent pass.
//! Functions the engine does not know are refused at compile time ([`ParseError`]).

mod eval;
mod lex;
mod parse;
mod vacuity;

pub use eval::{Env, Host, Item};
pub use parse::{FUNCTIONS, Node};

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

/// Why an expression could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("at {pos}: {msg}")]
    Syntax { pos: usize, msg: String },
    #[error("unsupported function {0}()")]
    UnknownFunction(String),
    #[error("unknown environment variable %{0}")]
    UnknownVariable(String),
}

/// Why an expression could not be evaluated on a given input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The input does not fit what the function expects (a collection where one item is
    /// required, a type mismatch the specification calls an error).
    #[error("{0}")]
    Type(String),
    /// The answer needs something the host does not hold (a value set, a profile).
    #[error("not checked: {0}")]
    NotChecked(String),
    /// A regular expression in the expression is not valid.
    #[error("invalid regular expression: {0}")]
    Regex(String),
    /// The evaluation went deeper than the engine allows (a pathological input).
    #[error("evaluation too deep")]
    TooDeep,
}

/// A compiled FHIRPath expression: parse once, evaluate many times. `Send + Sync`.
#[derive(Debug)]
pub struct Expression {
    source: String,
    /// Boxed so that its address, which [`Expression::memo`] names, stays put.
    root: Box<Node>,
    /// The regular expressions given as literals to `matches`/`replaceMatches`, compiled once.
    regexes: HashMap<String, Regex>,
    /// The subexpressions whose value depends only on the environment (`%resource…`) and
    /// that one evaluation may meet more than once: computed once per evaluation.
    memo: eval::Memo,
    /// The check's verdict when the focus has none of the children the expression reads
    /// (`code.empty() or system.exists()` on a Quantity without a code), if certain.
    vacuity: Option<vacuity::Vacuity>,
}

impl Clone for Expression {
    fn clone(&self) -> Self {
        // The memo plan names nodes by address: a copied tree needs its own plan.
        let root = self.root.clone();
        let memo = eval::Memo::plan(&root);
        Expression {
            source: self.source.clone(),
            root,
            regexes: self.regexes.clone(),
            memo,
            vacuity: self.vacuity.clone(),
        }
    }
}

impl Expression {
    /// Parses `source`; every function it names must be one the engine implements.
    pub fn compile(source: &str) -> Result<Self, ParseError> {
        let tokens = lex::lex(source)?;
        let root = Box::new(parse::parse(&tokens)?);
        let mut regexes = HashMap::new();
        collect_regexes(&root, &mut regexes)?;
        let memo = eval::Memo::plan(&root);
        let vacuity = vacuity::Vacuity::of(&root);
        Ok(Expression {
            source: source.to_owned(),
            root,
            regexes,
            memo,
            vacuity,
        })
    }

    /// The text the expression was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The syntax tree.
    pub fn ast(&self) -> &Node {
        &self.root
    }

    /// Evaluates with `focus` as the input collection (one item).
    pub fn evaluate<'a>(
        &self,
        focus: &'a Value,
        env: &Env<'a>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        eval::evaluate(&self.root, focus, env, &self.regexes, &self.memo)
    }

    /// [`Expression::evaluate`] the plain way: no subexpression computed once, `distinct`
    /// by comparing every pair. What the fast path must always equal (tests compare them).
    #[doc(hidden)]
    pub fn evaluate_reference<'a>(
        &self,
        focus: &'a Value,
        env: &Env<'a>,
    ) -> Result<Vec<Item<'a>>, EvalError> {
        eval::evaluate_reference(&self.root, focus, env, &self.regexes)
    }

    /// How many subexpressions one evaluation computes at most once.
    #[doc(hidden)]
    pub fn memo_len(&self) -> usize {
        self.memo.len()
    }

    /// Evaluates as an invariant: `Some(true)`/`Some(false)` for a single boolean (or a
    /// non-empty collection, which FHIRPath reads as true), `None` for an empty result.
    ///
    /// When the focus has none of the children the expression reads, the verdict known at
    /// compile time is given without evaluating (see [`Expression::is_vacuous_on`]).
    pub fn check<'a>(&self, focus: &'a Value, env: &Env<'a>) -> Result<Option<bool>, EvalError> {
        if let Some(verdict) = self.vacuity.as_ref().and_then(|v| v.verdict(focus)) {
            return Ok(verdict);
        }
        Ok(check_of(&self.evaluate(focus, env)?))
    }

    /// Whether [`Expression::check`] answers on `focus` from the compile-time analysis
    /// alone (the focus has none of the children the expression reads).
    pub fn is_vacuous_on(&self, focus: &Value) -> bool {
        self.vacuity
            .as_ref()
            .is_some_and(|v| v.verdict(focus).is_some())
    }

    /// [`Expression::check`] through [`Expression::evaluate_reference`].
    #[doc(hidden)]
    pub fn check_reference<'a>(
        &self,
        focus: &'a Value,
        env: &Env<'a>,
    ) -> Result<Option<bool>, EvalError> {
        Ok(check_of(&self.evaluate_reference(focus, env)?))
    }
}

/// An invariant's reading of a result collection.
fn check_of(out: &[Item<'_>]) -> Option<bool> {
    match out {
        [] => None,
        [Item::Bool(b)] => Some(*b),
        [one] => Some(one.as_bool().unwrap_or(true)),
        _ => Some(true),
    }
}

/// Compiles the literal patterns of `matches` (whole-string) and `replaceMatches`.
fn collect_regexes(node: &Node, out: &mut HashMap<String, Regex>) -> Result<(), ParseError> {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        match n {
            Node::Call(base, name, args) => {
                if let (Some(Node::Str(p)), true) =
                    (args.first(), name == "matches" || name == "replaceMatches")
                {
                    let key = if name == "matches" {
                        format!("^(?:{p})$")
                    } else {
                        p.clone()
                    };
                    let re = Regex::new(&key).map_err(|e| ParseError::Syntax {
                        pos: 0,
                        msg: format!("invalid regular expression: {e}"),
                    })?;
                    out.insert(key, re);
                }
                stack.extend(base.as_deref());
                stack.extend(args);
            }
            Node::Member(Some(b), _) | Node::Neg(b) | Node::TypeOp(_, b, _) => stack.push(b),
            Node::Indexer(a, b) | Node::Binary(_, a, b) => {
                stack.push(a);
                stack.push(b);
            }
            _ => {}
        }
    }
    Ok(())
}
