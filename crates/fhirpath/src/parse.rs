//! FHIRPath syntax tree and a precedence-climbing parser over [`lex`](crate::lex) tokens.

use crate::ParseError;
use crate::lex::{Tok, Token};

/// Every function the evaluator implements. A name outside this list is refused at compile
/// time, so no invariant is silently skipped at validation time.
pub const FUNCTIONS: &[&str] = &[
    "empty",
    "exists",
    "all",
    "allTrue",
    "anyTrue",
    "allFalse",
    "anyFalse",
    "subsetOf",
    "supersetOf",
    "count",
    "distinct",
    "isDistinct",
    "where",
    "select",
    "repeat",
    "ofType",
    "is",
    "as",
    "single",
    "first",
    "last",
    "tail",
    "skip",
    "take",
    "intersect",
    "exclude",
    "union",
    "combine",
    "iif",
    "toBoolean",
    "convertsToBoolean",
    "toInteger",
    "convertsToInteger",
    "toDecimal",
    "convertsToDecimal",
    "toString",
    "convertsToString",
    "toDate",
    "toDateTime",
    "indexOf",
    "substring",
    "startsWith",
    "endsWith",
    "contains",
    "upper",
    "lower",
    "replace",
    "matches",
    "replaceMatches",
    "length",
    "toChars",
    "children",
    "descendants",
    "trace",
    "not",
    "hasValue",
    "resolve",
    "extension",
    "memberOf",
    "conformsTo",
    "htmlChecks",
    "abs",
    "ceiling",
    "floor",
    "round",
    "truncate",
    "getValue",
];

/// Environment variables the evaluator knows (`%ucum`, `%resource`…).
const VARIABLES: &[&str] = &[
    "ucum",
    "resource",
    "rootResource",
    "context",
    "sct",
    "loinc",
];

/// A FHIRPath expression's syntax tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `{}`
    Empty,
    Bool(bool),
    Str(String),
    Int(i64),
    Dec(f64),
    /// `@2020-01-01T10:00`: the text after `@`.
    DateTime(String),
    /// `4 'mg'`, `2 days`.
    Quantity(f64, String),
    /// `%resource`
    Var(String),
    /// `$this`
    This,
    /// `$index`
    Index,
    /// `$total`
    Total,
    /// `base.name`; `None` for a name on the focus (`name`).
    Member(Option<Box<Node>>, String),
    /// `base.f(args)`; `None` for a function of the focus.
    Call(Option<Box<Node>>, String, Vec<Node>),
    /// `base[index]`
    Indexer(Box<Node>, Box<Node>),
    Binary(String, Box<Node>, Box<Node>),
    /// Unary minus.
    Neg(Box<Node>),
    /// `x is T` / `x as T`: operator, operand, type name (without `FHIR.`/`System.`).
    TypeOp(String, Box<Node>, String),
}

struct Parser<'t> {
    toks: &'t [Token],
    i: usize,
}

fn err(pos: usize, msg: impl Into<String>) -> ParseError {
    ParseError::Syntax {
        pos,
        msg: msg.into(),
    }
}

pub(crate) fn parse(toks: &[Token]) -> Result<Node, ParseError> {
    let mut p = Parser { toks, i: 0 };
    let node = p.expr(0, 0)?;
    if let Some(t) = p.toks.get(p.i) {
        return Err(err(t.pos, format!("unexpected {:?}", t.tok)));
    }
    Ok(node)
}

/// Binary operator precedence (higher binds tighter); `None` if the token is not one.
fn binary(tok: &Tok) -> Option<(&'static str, u8)> {
    Some(match tok {
        Tok::Ident(s) => match s.as_str() {
            "implies" => ("implies", 1),
            "or" => ("or", 2),
            "xor" => ("xor", 2),
            "and" => ("and", 3),
            "in" => ("in", 4),
            "contains" => ("contains", 4),
            "is" => ("is", 8),
            "as" => ("as", 8),
            "div" => ("div", 10),
            "mod" => ("mod", 10),
            _ => return None,
        },
        Tok::Op(op) => match *op {
            "=" | "~" | "!=" | "!~" => (op, 5),
            "<" | ">" | "<=" | ">=" => (op, 6),
            "|" => ("|", 7),
            "+" | "-" | "&" => (op, 9),
            "*" | "/" => (op, 10),
            _ => return None,
        },
        _ => return None,
    })
}

const MAX_NESTING: usize = 200;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.tok)
    }

    fn pos(&self) -> usize {
        self.toks
            .get(self.i)
            .or_else(|| self.toks.last())
            .map_or(0, |t| t.pos)
    }

    fn expect(&mut self, want: &Tok) -> Result<(), ParseError> {
        if self.peek() == Some(want) {
            self.i += 1;
            Ok(())
        } else {
            Err(err(self.pos(), format!("expected {want:?}")))
        }
    }

    fn expr(&mut self, min: u8, depth: usize) -> Result<Node, ParseError> {
        if depth > MAX_NESTING {
            return Err(err(self.pos(), "expression nested too deeply"));
        }
        let mut left = self.unary(depth)?;
        while let Some((op, prec)) = self.peek().and_then(binary) {
            if prec < min {
                break;
            }
            self.i += 1;
            if op == "is" || op == "as" {
                let ty = self.type_name()?;
                left = Node::TypeOp(op.to_owned(), Box::new(left), ty);
                continue;
            }
            let right = self.expr(prec + 1, depth + 1)?;
            left = Node::Binary(op.to_owned(), Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn type_name(&mut self) -> Result<String, ParseError> {
        let mut name = match self.peek() {
            Some(Tok::Ident(s) | Tok::Quoted(s)) => s.clone(),
            _ => return Err(err(self.pos(), "expected a type name")),
        };
        self.i += 1;
        while self.peek() == Some(&Tok::Dot) {
            if let Some(Tok::Ident(s) | Tok::Quoted(s)) = self.toks.get(self.i + 1).map(|t| &t.tok)
            {
                name = s.clone();
                self.i += 2;
            } else {
                break;
            }
        }
        Ok(name)
    }

    fn unary(&mut self, depth: usize) -> Result<Node, ParseError> {
        match self.peek() {
            Some(Tok::Op("-")) => {
                self.i += 1;
                let inner = self.unary(depth + 1)?;
                Ok(match inner {
                    Node::Int(n) => Node::Int(-n),
                    Node::Dec(n) => Node::Dec(-n),
                    other => Node::Neg(Box::new(other)),
                })
            }
            Some(Tok::Op("+")) => {
                self.i += 1;
                self.unary(depth + 1)
            }
            _ => {
                let term = self.term(depth)?;
                self.postfix(term, depth)
            }
        }
    }

    fn postfix(&mut self, mut node: Node, depth: usize) -> Result<Node, ParseError> {
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.i += 1;
                    let name = match self.peek() {
                        Some(Tok::Ident(s) | Tok::Quoted(s)) => s.clone(),
                        _ => return Err(err(self.pos(), "expected a name after '.'")),
                    };
                    let quoted = matches!(self.peek(), Some(Tok::Quoted(_)));
                    self.i += 1;
                    if !quoted && self.peek() == Some(&Tok::LParen) {
                        let args = self.args(&name, depth)?;
                        node = Node::Call(Some(Box::new(node)), name, args);
                    } else {
                        node = Node::Member(Some(Box::new(node)), name);
                    }
                }
                Some(Tok::LBracket) => {
                    self.i += 1;
                    let index = self.expr(0, depth + 1)?;
                    self.expect(&Tok::RBracket)?;
                    node = Node::Indexer(Box::new(node), Box::new(index));
                }
                _ => return Ok(node),
            }
        }
    }

    fn args(&mut self, name: &str, depth: usize) -> Result<Vec<Node>, ParseError> {
        if !FUNCTIONS.contains(&name) {
            return Err(ParseError::UnknownFunction(name.to_owned()));
        }
        self.expect(&Tok::LParen)?;
        let mut args = Vec::new();
        if self.peek() == Some(&Tok::RParen) {
            self.i += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expr(0, depth + 1)?);
            match self.peek() {
                Some(Tok::Comma) => self.i += 1,
                Some(Tok::RParen) => {
                    self.i += 1;
                    return Ok(args);
                }
                _ => return Err(err(self.pos(), "expected ',' or ')'")),
            }
        }
    }

    fn term(&mut self, depth: usize) -> Result<Node, ParseError> {
        let pos = self.pos();
        let Some(tok) = self.peek().cloned() else {
            return Err(err(pos, "unexpected end of expression"));
        };
        self.i += 1;
        Ok(match tok {
            Tok::Int(n) => self.maybe_quantity(n as f64).unwrap_or(Node::Int(n)),
            Tok::Dec(n) => self.maybe_quantity(n).unwrap_or(Node::Dec(n)),
            Tok::Str(s) => Node::Str(s),
            Tok::DateTime(s) => Node::DateTime(s),
            Tok::Var(v) => {
                if !VARIABLES.contains(&v.as_str())
                    && !v.starts_with("vs-")
                    && !v.starts_with("ext-")
                {
                    return Err(ParseError::UnknownVariable(v));
                }
                Node::Var(v)
            }
            Tok::Special(s) => match s.as_str() {
                "this" => Node::This,
                "index" => Node::Index,
                "total" => Node::Total,
                other => return Err(err(pos, format!("unknown ${other}"))),
            },
            Tok::LParen => {
                let inner = self.expr(0, depth + 1)?;
                self.expect(&Tok::RParen)?;
                inner
            }
            Tok::LBrace => {
                self.expect(&Tok::RBrace)?;
                Node::Empty
            }
            Tok::Quoted(s) => Node::Member(None, s),
            Tok::Ident(s) => match s.as_str() {
                "true" => Node::Bool(true),
                "false" => Node::Bool(false),
                _ if self.peek() == Some(&Tok::LParen) => {
                    let args = self.args(&s, depth)?;
                    Node::Call(None, s, args)
                }
                _ => Node::Member(None, s),
            },
            other => return Err(err(pos, format!("unexpected {other:?}"))),
        })
    }

    /// A number followed by a unit string or a calendar duration keyword is a Quantity.
    fn maybe_quantity(&mut self, n: f64) -> Option<Node> {
        let unit = match self.peek() {
            Some(Tok::Str(u)) => u.clone(),
            Some(Tok::Ident(u))
                if matches!(
                    u.as_str(),
                    "year"
                        | "years"
                        | "month"
                        | "months"
                        | "week"
                        | "weeks"
                        | "day"
                        | "days"
                        | "hour"
                        | "hours"
                        | "minute"
                        | "minutes"
                        | "second"
                        | "seconds"
                        | "millisecond"
                        | "milliseconds"
                ) =>
            {
                u.clone()
            }
            _ => return None,
        };
        self.i += 1;
        Some(Node::Quantity(n, unit))
    }
}
