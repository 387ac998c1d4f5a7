//! The evaluator: collections of [`Item`]s, FHIR JSON navigation, three-valued logic,
//! partial-precision date comparison, and the functions of [`FUNCTIONS`](crate::FUNCTIONS).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use regex::Regex;
use serde_json::{Map, Value};

use crate::EvalError;
use crate::parse::Node;

static NULL: Value = Value::Null;

/// How deep an evaluation may recurse (nested function arguments, `descendants()`).
const MAX_DEPTH: usize = 128;

/// One item of a FHIRPath collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// A node of the JSON input: its value (`null` when only the `_name` sibling exists), its
    /// `_name` sibling (a primitive's id and extensions), and its FHIR type when the JSON
    /// says it (a choice element's suffix, a resource's `resourceType`).
    Node {
        value: &'a Value,
        ext: Option<&'a Value>,
        ty: Option<&'a str>,
    },
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(String),
    /// A date, dateTime or time literal (text after `@`, or converted from a string).
    DateTime(String),
    /// A value and its unit (UCUM code or calendar keyword).
    Quantity(f64, String),
}

impl<'a> Item<'a> {
    /// A JSON node of unknown FHIR type.
    pub fn node(value: &'a Value) -> Self {
        let ty = value.get("resourceType").and_then(Value::as_str);
        Item::Node {
            value,
            ext: None,
            ty,
        }
    }

    /// The boolean this item holds, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Item::Bool(b) => Some(*b),
            Item::Node {
                value: Value::Bool(b),
                ..
            } => Some(*b),
            _ => None,
        }
    }

    /// [`Item::prim`], with the parse of the date it found by its text (so that a
    /// comparison parses each date once).
    fn prim_parsed(&self) -> (Prim<'_>, Option<DateParts>) {
        if let Item::Node {
            value: Value::String(s),
            ty,
            ..
        } = self
            && !ty.is_some_and(is_date_type)
        {
            return match date_parts(s) {
                Some(parts) => (Prim::Date(s), Some(parts)),
                None => (Prim::Str(s), None),
            };
        }
        (self.prim(), None)
    }

    fn prim(&self) -> Prim<'_> {
        match self {
            Item::Bool(b) => Prim::Bool(*b),
            Item::Int(i) => Prim::Num(*i as f64),
            Item::Dec(d) => Prim::Num(*d),
            Item::Str(s) => Prim::Str(s),
            Item::DateTime(s) => Prim::Date(s),
            Item::Quantity(v, u) => Prim::Qty(*v, u),
            Item::Node { value, ty, .. } => match value {
                Value::Bool(b) => Prim::Bool(*b),
                Value::Number(n) => n.as_f64().map_or(Prim::Other, Prim::Num),
                Value::String(s) => {
                    if ty.is_some_and(is_date_type) || looks_like_date(s) {
                        Prim::Date(s)
                    } else {
                        Prim::Str(s)
                    }
                }
                Value::Object(o) => {
                    match (o.get("value").and_then(Value::as_f64), quantity_unit(o)) {
                        (Some(v), Some(u)) => Prim::Qty(v, u),
                        (Some(v), None) => Prim::Qty(v, ""),
                        _ => Prim::Other,
                    }
                }
                _ => Prim::Other,
            },
        }
    }

    fn string(&self) -> Option<&str> {
        match self {
            Item::Str(s) | Item::DateTime(s) => Some(s),
            Item::Node {
                value: Value::String(s),
                ..
            } => Some(s),
            _ => None,
        }
    }

    fn number(&self) -> Option<f64> {
        match self.prim() {
            Prim::Num(n) => Some(n),
            _ => None,
        }
    }

    fn has_value(&self) -> bool {
        match self {
            Item::Node { value, .. } => {
                !matches!(value, Value::Null | Value::Object(_) | Value::Array(_))
            }
            _ => true,
        }
    }

    /// Renders a primitive as FHIRPath `toString()` does.
    fn to_text(&self) -> Option<String> {
        match self.prim() {
            Prim::Bool(b) => Some(b.to_string()),
            Prim::Num(n) => Some(match self {
                Item::Node {
                    value: Value::Number(n),
                    ..
                } => n.to_string(),
                _ => fmt_num(n),
            }),
            Prim::Str(s) | Prim::Date(s) => Some(s.to_owned()),
            Prim::Qty(v, u) => Some(format!("{} '{u}'", fmt_num(v))),
            Prim::Other => None,
        }
    }
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn quantity_unit(o: &Map<String, Value>) -> Option<&str> {
    o.get("code")
        .or_else(|| o.get("unit"))
        .and_then(Value::as_str)
}

#[derive(Debug, Clone, Copy)]
enum Prim<'s> {
    Bool(bool),
    Num(f64),
    Str(&'s str),
    Date(&'s str),
    Qty(f64, &'s str),
    Other,
}

/// What the engine asks of its user: terminology, narrative and profile checks. Each answer
/// is `None` when the host cannot decide (the evaluation then fails with
/// [`EvalError::NotChecked`]).
pub trait Host: Sync {
    /// Is the code, Coding or CodeableConcept (`value`) in the value set `url`?
    fn member_of(&self, value: &Value, url: &str) -> Option<bool>;
    /// FHIR's `htmlChecks()`: is the narrative `div` acceptable XHTML?
    fn html_checks(&self, div: &str) -> Option<bool>;
    /// Does the resource conform to the profile `url`?
    fn conforms_to(&self, resource: &Value, url: &str) -> Option<bool> {
        let _ = (resource, url);
        None
    }
}

/// The environment of one evaluation: `%resource`, `%rootResource`, `%context` and a host.
#[derive(Clone, Copy, Default)]
pub struct Env<'a> {
    pub resource: Option<&'a Value>,
    pub root_resource: Option<&'a Value>,
    pub context: Option<&'a Value>,
    pub host: Option<&'a dyn Host>,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("host", &self.host.is_some())
            .finish_non_exhaustive()
    }
}

struct Ctx<'e, 'a> {
    env: &'e Env<'a>,
    regexes: &'e HashMap<String, Regex>,
    this: Option<Item<'a>>,
    index: Option<usize>,
    depth: usize,
    memo: &'e Memo,
    /// The values of the memo's subexpressions computed so far in this evaluation, shared
    /// with their readers instead of copied for each (`%resource.descendants()` is read four
    /// times by dom-3, the union of those once per contained resource).
    memoized: Vec<Option<Rc<Coll<'a>>>>,
    /// `distinct` by comparing every pair (the reference the fast path must equal).
    pairwise: bool,
}

type Coll<'a> = Vec<Item<'a>>;

/// A collection that is either the evaluator's own or a memoized value shared with the memo:
/// readers that only look at the items borrow it, the others take a copy ([`Shared::into_vec`]).
enum Shared<'a> {
    Owned(Coll<'a>),
    Memo(Rc<Coll<'a>>),
}

impl<'a> Shared<'a> {
    fn into_vec(self) -> Coll<'a> {
        match self {
            Shared::Owned(v) => v,
            Shared::Memo(rc) => Rc::unwrap_or_clone(rc),
        }
    }
}

impl<'a> std::ops::Deref for Shared<'a> {
    type Target = [Item<'a>];

    fn deref(&self) -> &[Item<'a>] {
        match self {
            Shared::Owned(v) => v,
            Shared::Memo(rc) => rc,
        }
    }
}

/// A set of values from the input: a fast hasher, seeded per process (no flooding by chosen
/// keys).
type Set<T> = HashSet<T, foldhash::fast::RandomState>;

/// What an expression's value may read besides the environment.
const READS_INPUT: u8 = 1;
const READS_THIS: u8 = 2;
const READS_INDEX: u8 = 4;

/// The subexpressions of one expression that depend only on the environment (`%resource`,
/// `%rootResource`, literals) and that one evaluation may meet more than once: inside the
/// criterion of `where`/`select`/`all`/`exists`/`repeat` (evaluated per item), or written
/// more than once (`%resource.descendants()` four times in dom-3). Each is computed once per
/// evaluation; structurally equal ones share a slot. Nodes are named by address (the tree
/// is boxed and never changes after compiling).
#[derive(Debug, Default)]
pub(crate) struct Memo {
    /// (node address, slot), sorted by address.
    nodes: Vec<(usize, usize)>,
    slots: usize,
}

impl Memo {
    pub(crate) fn plan(root: &Node) -> Memo {
        // An evaluation recurses at most as deep as the tree is high: within the limit, no
        // evaluation stops for depth, so a value computed once is the value every
        // occurrence would compute.
        if height(root) >= MAX_DEPTH {
            return Memo::default();
        }
        let mut found: Vec<(&Node, bool)> = Vec::new();
        reads(root, false, &mut found);
        // Slots: one per structurally distinct candidate.
        let mut distinct: Vec<&Node> = Vec::new();
        let mut uses: Vec<usize> = Vec::new();
        let mut slot_of: Vec<usize> = Vec::with_capacity(found.len());
        for (n, _) in &found {
            match distinct.iter().position(|d| *d == *n) {
                Some(i) => {
                    uses[i] += 1;
                    slot_of.push(i);
                }
                None => {
                    distinct.push(n);
                    uses.push(1);
                    slot_of.push(distinct.len() - 1);
                }
            }
        }
        let mut renumber: Vec<Option<usize>> = vec![None; distinct.len()];
        let mut slots = 0;
        let mut nodes = Vec::new();
        for ((n, repeated), &i) in found.iter().zip(&slot_of) {
            if !*repeated && uses[i] < 2 {
                continue;
            }
            let slot = *renumber[i].get_or_insert_with(|| {
                slots += 1;
                slots - 1
            });
            nodes.push((*n as *const Node as usize, slot));
        }
        nodes.sort_unstable();
        Memo { nodes, slots }
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    fn slot(&self, node: &Node) -> Option<usize> {
        let addr = node as *const Node as usize;
        self.nodes
            .binary_search_by_key(&addr, |&(a, _)| a)
            .ok()
            .map(|i| self.nodes[i].1)
    }
}

/// The number of levels of the tree (without recursing: a tree may be deep).
fn height(root: &Node) -> usize {
    let mut max = 0;
    let mut stack = vec![(root, 1usize)];
    while let Some((node, level)) = stack.pop() {
        max = max.max(level);
        match node {
            Node::Member(Some(b), _) | Node::Neg(b) | Node::TypeOp(_, b, _) => {
                stack.push((b, level + 1));
            }
            Node::Indexer(a, b) | Node::Binary(_, a, b) => {
                stack.push((a, level + 1));
                stack.push((b, level + 1));
            }
            Node::Call(base, _, args) => {
                stack.extend(base.as_deref().map(|b| (b, level + 1)));
                stack.extend(args.iter().map(|a| (a, level + 1)));
            }
            _ => {}
        }
    }
    max
}

/// What `node`'s value may read besides the environment ([`READS_INPUT`]…), as the
/// evaluator evaluates it; pushes onto `found` every subexpression that reads nothing else
/// and is worth keeping (a navigation, call or operator), with whether it sits inside a
/// per-item criterion (`repeated`).
fn reads<'n>(node: &'n Node, repeated: bool, found: &mut Vec<(&'n Node, bool)>) -> u8 {
    let r = match node {
        Node::Empty
        | Node::Bool(_)
        | Node::Str(_)
        | Node::Int(_)
        | Node::Dec(_)
        | Node::DateTime(_)
        | Node::Quantity(..)
        | Node::Total => 0,
        // `%context` is the input when the environment does not say it.
        Node::Var(name) => {
            if name == "context" {
                READS_INPUT
            } else {
                0
            }
        }
        Node::This => READS_THIS | READS_INPUT,
        Node::Index => READS_INDEX,
        Node::Member(None, _) => READS_INPUT,
        Node::Member(Some(b), _) | Node::Neg(b) | Node::TypeOp(_, b, _) => {
            reads(b, repeated, found)
        }
        Node::Indexer(a, b) | Node::Binary(_, a, b) => {
            reads(a, repeated, found) | reads(b, repeated, found)
        }
        Node::Call(base, name, args) => {
            let mut r = match base {
                Some(b) => reads(b, repeated, found),
                None => READS_INPUT,
            };
            match name.as_str() {
                // The criterion is evaluated per item, on the item, with `$this` and
                // `$index` set: it reads nothing of the outside.
                "exists" | "all" | "where" | "select" | "repeat" => {
                    for a in args {
                        reads(a, true, found);
                    }
                }
                // Evaluated on the base (already counted), with `$this` set only for a
                // single item and `$index` unchanged.
                "iif" => {
                    for a in args {
                        r |= reads(a, repeated, found) & (READS_THIS | READS_INDEX);
                    }
                }
                // Type names and trace labels are not evaluated.
                "ofType" | "is" | "as" | "trace" => {}
                _ => {
                    for a in args {
                        r |= reads(a, repeated, found);
                    }
                }
            }
            r
        }
    };
    if r == 0
        && matches!(
            node,
            Node::Member(Some(_), _)
                | Node::Call(..)
                | Node::Indexer(..)
                | Node::Binary(..)
                | Node::TypeOp(..)
        )
    {
        found.push((node, repeated));
    }
    r
}

pub(crate) fn evaluate<'a>(
    node: &Node,
    focus: &'a Value,
    env: &Env<'a>,
    regexes: &HashMap<String, Regex>,
    memo: &Memo,
) -> Result<Coll<'a>, EvalError> {
    evaluate_with(node, focus, env, regexes, memo, false)
}

/// [`evaluate`] without the memo and with the pairwise `distinct`.
pub(crate) fn evaluate_reference<'a>(
    node: &Node,
    focus: &'a Value,
    env: &Env<'a>,
    regexes: &HashMap<String, Regex>,
) -> Result<Coll<'a>, EvalError> {
    evaluate_with(node, focus, env, regexes, &Memo::default(), true)
}

fn evaluate_with<'a>(
    node: &Node,
    focus: &'a Value,
    env: &Env<'a>,
    regexes: &HashMap<String, Regex>,
    memo: &Memo,
    pairwise: bool,
) -> Result<Coll<'a>, EvalError> {
    let input = vec![Item::node(focus)];
    let mut ctx = Ctx {
        env,
        regexes,
        this: None,
        index: None,
        depth: 0,
        memo,
        memoized: Vec::new(),
        pairwise,
    };
    ctx.memoized.resize(memo.slots, None);
    ctx.eval(node, &input)
}

/// The operands of a chain of `|` (`A | B | C`, however parenthesised), left to right.
fn union_operands<'n>(node: &'n Node, out: &mut Vec<&'n Node>) {
    match node {
        Node::Binary(op, l, r) if op == "|" => {
            union_operands(l, out);
            union_operands(r, out);
        }
        other => out.push(other),
    }
}

fn single<'c, 'a>(c: &'c [Item<'a>], what: &str) -> Result<Option<&'c Item<'a>>, EvalError> {
    match c {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(EvalError::Type(format!(
            "{what} expects one item, got {}",
            c.len()
        ))),
    }
}

/// FHIRPath singleton evaluation of a collection as a boolean.
fn to_bool(c: &[Item<'_>]) -> Result<Option<bool>, EvalError> {
    match c {
        [] => Ok(None),
        [one] => Ok(Some(one.as_bool().unwrap_or(true))),
        _ => Err(EvalError::Type(format!(
            "a boolean expects one item, got {}",
            c.len()
        ))),
    }
}

fn bools<'a>(b: Option<bool>) -> Coll<'a> {
    b.map(Item::Bool).into_iter().collect()
}

impl<'a> Ctx<'_, 'a> {
    fn eval(&mut self, node: &Node, input: &[Item<'a>]) -> Result<Coll<'a>, EvalError> {
        self.eval_shared(node, input).map(Shared::into_vec)
    }

    /// [`Ctx::eval`] for a reader that may borrow the value: a memoized one is not copied.
    fn eval_shared(&mut self, node: &Node, input: &[Item<'a>]) -> Result<Shared<'a>, EvalError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.depth -= 1;
            return Err(EvalError::TooDeep);
        }
        let out = match self.memo.slot(node) {
            Some(slot) => match self.memoized.get(slot).and_then(Option::as_ref) {
                Some(known) => Ok(Shared::Memo(Rc::clone(known))),
                None => match self.eval_inner(node, input) {
                    Ok(v) => match self.memoized.get_mut(slot) {
                        Some(cell) => {
                            let rc = Rc::new(v);
                            *cell = Some(Rc::clone(&rc));
                            Ok(Shared::Memo(rc))
                        }
                        None => Ok(Shared::Owned(v)),
                    },
                    Err(e) => Err(e),
                },
            },
            None => self.eval_inner(node, input).map(Shared::Owned),
        };
        self.depth -= 1;
        out
    }

    fn eval_inner(&mut self, node: &Node, input: &[Item<'a>]) -> Result<Coll<'a>, EvalError> {
        Ok(match node {
            Node::Empty => Vec::new(),
            Node::Bool(b) => vec![Item::Bool(*b)],
            Node::Str(s) => vec![Item::Str(s.clone())],
            Node::Int(i) => vec![Item::Int(*i)],
            Node::Dec(d) => vec![Item::Dec(*d)],
            Node::DateTime(s) => vec![Item::DateTime(s.trim_start_matches('T').to_owned())],
            Node::Quantity(v, u) => vec![Item::Quantity(*v, u.clone())],
            Node::Var(name) => match name.as_str() {
                "ucum" => vec![Item::Str("http://unitsofmeasure.org".into())],
                "sct" => vec![Item::Str("http://snomed.info/sct".into())],
                "loinc" => vec![Item::Str("http://loinc.org".into())],
                "resource" => self.env.resource.map(Item::node).into_iter().collect(),
                "rootResource" => self
                    .env
                    .root_resource
                    .or(self.env.resource)
                    .map(Item::node)
                    .into_iter()
                    .collect(),
                "context" => match self.env.context {
                    Some(c) => vec![Item::node(c)],
                    None => input.to_vec(),
                },
                other => {
                    if let Some(vs) = other.strip_prefix("vs-") {
                        vec![Item::Str(format!("http://hl7.org/fhir/ValueSet/{vs}"))]
                    } else if let Some(ext) = other.strip_prefix("ext-") {
                        vec![Item::Str(format!(
                            "http://hl7.org/fhir/StructureDefinition/{ext}"
                        ))]
                    } else {
                        return Err(EvalError::Type(format!("unknown variable %{other}")));
                    }
                }
            },
            Node::This => match &self.this {
                Some(t) => vec![t.clone()],
                None => input.to_vec(),
            },
            Node::Index => self
                .index
                .map(|i| Item::Int(i as i64))
                .into_iter()
                .collect(),
            Node::Total => Vec::new(),
            Node::Member(None, name) => {
                // A leading type name (`Patient.name`) selects the focus of that type.
                if name.starts_with(|c: char| c.is_ascii_uppercase())
                    && !input.is_empty()
                    && input
                        .iter()
                        .all(|i| matches!(i, Item::Node { ty: Some(t), .. } if t == name))
                {
                    return Ok(input.to_vec());
                }
                navigate(input, name)
            }
            Node::Member(Some(base), name) => {
                let b = self.eval_shared(base, input)?;
                navigate(&b, name)
            }
            Node::Indexer(base, index) => {
                let b = self.eval(base, input)?;
                let i = self.eval(index, input)?;
                match single(&i, "an index")?.and_then(Item::number) {
                    Some(n) if n >= 0.0 => b.into_iter().nth(n as usize).into_iter().collect(),
                    _ => Vec::new(),
                }
            }
            Node::Neg(inner) => {
                let v = self.eval(inner, input)?;
                match single(&v, "unary minus")? {
                    None => Vec::new(),
                    Some(Item::Int(i)) => vec![Item::Int(-i)],
                    Some(Item::Quantity(v, u)) => vec![Item::Quantity(-v, u.clone())],
                    Some(other) => match other.number() {
                        Some(n) => vec![Item::Dec(-n)],
                        None => return Err(EvalError::Type("unary minus on a non-number".into())),
                    },
                }
            }
            Node::TypeOp(op, operand, ty) => {
                let v = self.eval(operand, input)?;
                if op == "is" {
                    match single(&v, "is")? {
                        None => Vec::new(),
                        Some(item) => vec![Item::Bool(is_type(item, ty))],
                    }
                } else {
                    let test = TypeTest::new(ty);
                    v.into_iter().filter(|i| test.matches(i)).collect()
                }
            }
            Node::Binary(op, l, r) => self.binary(op, l, r, input)?,
            Node::Call(base, name, args) => {
                let b = match base {
                    Some(b) => self.eval_shared(b, input)?,
                    None => Shared::Owned(input.to_vec()),
                };
                self.call(name, b, args, input)?
            }
        })
    }

    fn binary(
        &mut self,
        op: &str,
        l: &Node,
        r: &Node,
        input: &[Item<'a>],
    ) -> Result<Coll<'a>, EvalError> {
        // Logical operators short-circuit where the three-valued tables allow.
        match op {
            "and" | "or" | "implies" | "xor" => {
                let a = to_bool(&self.eval(l, input)?)?;
                if let Some(out) = logic_short_circuit(op, a) {
                    return Ok(bools(Some(out)));
                }
                let b = to_bool(&self.eval(r, input)?)?;
                return Ok(bools(logic(op, a, b)));
            }
            _ => {}
        }
        if matches!(op, "in" | "contains") {
            let (needle, hay) = if op == "in" { (l, r) } else { (r, l) };
            if let Some(found) = self.string_in_union(needle, hay, input) {
                return Ok(vec![Item::Bool(found)]);
            }
        }
        let a = self.eval_shared(l, input)?;
        let b = self.eval_shared(r, input)?;
        Ok(match op {
            "|" => self.union(a.into_vec(), b.into_vec()),
            "=" | "!=" | "~" | "!~" => {
                let equiv = op.contains('~');
                let res = if equiv {
                    Some(coll_equiv(&a, &b))
                } else if a.is_empty() || b.is_empty() {
                    None
                } else if a.len() != b.len() {
                    Some(false)
                } else {
                    let mut all = Some(true);
                    for (x, y) in a.iter().zip(b.iter()) {
                        match item_eq(x, y) {
                            Some(true) => {}
                            Some(false) => {
                                all = Some(false);
                                break;
                            }
                            None => all = None,
                        }
                    }
                    all
                };
                bools(if op.starts_with('!') {
                    res.map(|x| !x)
                } else {
                    res
                })
            }
            "<" | ">" | "<=" | ">=" => {
                let (Some(x), Some(y)) = (single(&a, op)?, single(&b, op)?) else {
                    return Ok(Vec::new());
                };
                bools(compare(x, y).map(|o| match op {
                    "<" => o == Ordering::Less,
                    ">" => o == Ordering::Greater,
                    "<=" => o != Ordering::Greater,
                    _ => o != Ordering::Less,
                }))
            }
            "in" | "contains" => {
                let (needle, hay) = if op == "in" { (&a, &b) } else { (&b, &a) };
                match single(needle, op)? {
                    None => Vec::new(),
                    // A plain string equals exactly the strings and dates of its text.
                    Some(x) if !self.pairwise && matches!(x.prim(), Prim::Str(_)) => {
                        let text = x.string();
                        vec![Item::Bool(hay.iter().any(|h| h.string() == text))]
                    }
                    Some(x) => vec![Item::Bool(hay.iter().any(|h| item_eq(x, h) == Some(true)))],
                }
            }
            "&" => {
                let x = single(&a, "&")?.and_then(Item::to_text).unwrap_or_default();
                let y = single(&b, "&")?.and_then(Item::to_text).unwrap_or_default();
                vec![Item::Str(x + &y)]
            }
            "+" | "-" | "*" | "/" | "div" | "mod" => {
                let (Some(x), Some(y)) = (single(&a, op)?, single(&b, op)?) else {
                    return Ok(Vec::new());
                };
                arith(op, x, y)?
            }
            other => return Err(EvalError::Type(format!("unknown operator {other}"))),
        })
    }

    /// `needle in A | B | …` for a plain string needle, without building the union (dom-3
    /// asks it of the union of every reference, URI and date of a resource, once per
    /// contained resource): `Some` when the operands alone decide it as the union would,
    /// `None` to evaluate it the plain way (which also reports any error).
    ///
    /// The union keeps a subset of its operands' items, so a text found in none of them is
    /// in no union. Of the items with the needle's text, the first (in operand order) is kept
    /// if it is a plain string: `distinct` drops a string only for a kept item of the same
    /// text, which would come before it. A first item that is a date may equal (and be
    /// dropped for) an earlier date written differently: the plain way decides.
    /// Only with a memo plan: its tree is shallow enough that no evaluation stops for depth,
    /// so evaluating the operands at a shallower depth changes nothing.
    fn string_in_union(&mut self, needle: &Node, hay: &Node, input: &[Item<'a>]) -> Option<bool> {
        if self.pairwise
            || self.memo.slots == 0
            || !matches!(hay, Node::Binary(op, ..) if op == "|")
        {
            return None;
        }
        let mut operands = Vec::new();
        union_operands(hay, &mut operands);
        let needle = self.eval_shared(needle, input).ok()?;
        let text = match single(&needle, "in").ok()? {
            Some(x) if matches!(x.prim(), Prim::Str(_)) => x.string()?,
            _ => return None,
        };
        let mut values = Vec::with_capacity(operands.len());
        for o in operands {
            values.push(self.eval_shared(o, input).ok()?);
        }
        let first = values
            .iter()
            .flat_map(|v| v.iter())
            .find(|h| h.string() == Some(text));
        match first {
            None => Some(false),
            Some(h) if matches!(h.prim(), Prim::Str(_)) => Some(true),
            Some(_) => None,
        }
    }

    /// Evaluates `arg` once per item of `base`, with `$this` set to the item.
    fn per_item(&mut self, base: &[Item<'a>], arg: &Node) -> Result<Vec<Coll<'a>>, EvalError> {
        let saved = (self.this.take(), self.index);
        let mut out = Vec::with_capacity(base.len());
        for (i, item) in base.iter().enumerate() {
            self.this = Some(item.clone());
            self.index = Some(i);
            let r = self.eval(arg, std::slice::from_ref(item));
            match r {
                Ok(v) => out.push(v),
                Err(e) => {
                    (self.this, self.index) = saved;
                    return Err(e);
                }
            }
        }
        (self.this, self.index) = saved;
        Ok(out)
    }

    fn arg_value(
        &mut self,
        args: &[Node],
        i: usize,
        input: &[Item<'a>],
    ) -> Result<Coll<'a>, EvalError> {
        match args.get(i) {
            Some(a) => {
                // Arguments are evaluated on the expression's input, with $this unchanged.
                self.eval(a, input)
            }
            None => Ok(Vec::new()),
        }
    }

    fn arg_str(
        &mut self,
        args: &[Node],
        i: usize,
        input: &[Item<'a>],
    ) -> Result<Option<String>, EvalError> {
        let v = self.arg_value(args, i, input)?;
        Ok(single(&v, "argument")?.and_then(Item::to_text))
    }

    fn arg_int(
        &mut self,
        args: &[Node],
        i: usize,
        input: &[Item<'a>],
    ) -> Result<Option<i64>, EvalError> {
        let v = self.arg_value(args, i, input)?;
        Ok(single(&v, "argument")?
            .and_then(Item::number)
            .map(|n| n as i64))
    }

    fn regex(&self, pattern: &str, whole: bool) -> Result<Regex, EvalError> {
        let key = if whole {
            format!("^(?:{pattern})$")
        } else {
            pattern.to_owned()
        };
        if let Some(r) = self.regexes.get(&key) {
            return Ok(r.clone());
        }
        Regex::new(&key).map_err(|e| EvalError::Regex(e.to_string()))
    }

    fn call(
        &mut self,
        name: &str,
        base: Shared<'a>,
        args: &[Node],
        input: &[Item<'a>],
    ) -> Result<Coll<'a>, EvalError> {
        let one_str = |b: &[Item<'a>]| -> Result<Option<String>, EvalError> {
            Ok(single(b, name)?.and_then(|i| i.string().map(str::to_owned)))
        };
        Ok(match name {
            "empty" => vec![Item::Bool(base.is_empty())],
            "exists" => match args.first() {
                None => vec![Item::Bool(!base.is_empty())],
                Some(a) => {
                    let r = self.per_item(&base, a)?;
                    let mut any = false;
                    for c in &r {
                        any |= to_bool(c)? == Some(true);
                    }
                    vec![Item::Bool(any)]
                }
            },
            "all" => {
                let Some(a) = args.first() else {
                    return Err(EvalError::Type("all() needs a criterion".into()));
                };
                let r = self.per_item(&base, a)?;
                let mut all = true;
                for c in &r {
                    all &= to_bool(c)? == Some(true);
                }
                vec![Item::Bool(all)]
            }
            "allTrue" => vec![Item::Bool(base.iter().all(|i| i.as_bool() == Some(true)))],
            "anyTrue" => vec![Item::Bool(base.iter().any(|i| i.as_bool() == Some(true)))],
            "allFalse" => vec![Item::Bool(base.iter().all(|i| i.as_bool() == Some(false)))],
            "anyFalse" => vec![Item::Bool(base.iter().any(|i| i.as_bool() == Some(false)))],
            "subsetOf" | "supersetOf" => {
                let other = self.arg_value(args, 0, input)?;
                let (small, big) = if name == "subsetOf" {
                    (&base[..], &other[..])
                } else {
                    (&other[..], &base[..])
                };
                vec![Item::Bool(
                    small
                        .iter()
                        .all(|x| big.iter().any(|y| item_eq(x, y) == Some(true))),
                )]
            }
            "count" => vec![Item::Int(base.len() as i64)],
            "distinct" => self.distinct(base.into_vec()),
            "isDistinct" => {
                let n = base.len();
                vec![Item::Bool(self.distinct(base.into_vec()).len() == n)]
            }
            "where" => {
                let Some(a) = args.first() else {
                    return Err(EvalError::Type("where() needs a criterion".into()));
                };
                let r = self.per_item(&base, a)?;
                let mut out = Vec::new();
                for (item, c) in base.into_vec().into_iter().zip(&r) {
                    if to_bool(c)? == Some(true) {
                        out.push(item);
                    }
                }
                out
            }
            "select" => {
                let Some(a) = args.first() else {
                    return Err(EvalError::Type("select() needs a projection".into()));
                };
                self.per_item(&base, a)?.into_iter().flatten().collect()
            }
            "repeat" => {
                let Some(a) = args.first() else {
                    return Err(EvalError::Type("repeat() needs a projection".into()));
                };
                let mut out: Coll<'a> = Vec::new();
                let mut frontier = base.into_vec();
                let mut rounds = 0;
                while !frontier.is_empty() && rounds < MAX_DEPTH {
                    rounds += 1;
                    let next: Coll<'a> =
                        self.per_item(&frontier, a)?.into_iter().flatten().collect();
                    frontier = Vec::new();
                    for n in next {
                        if !out.iter().any(|o| item_eq(o, &n) == Some(true)) {
                            out.push(n.clone());
                            frontier.push(n);
                        }
                    }
                }
                out
            }
            "ofType" | "is" | "as" => {
                let ty = type_arg(args)?;
                if name == "is" {
                    match single(&base, "is")? {
                        None => Vec::new(),
                        Some(i) => vec![Item::Bool(is_type(i, &ty))],
                    }
                } else {
                    let test = TypeTest::new(&ty);
                    base.iter().filter(|i| test.matches(i)).cloned().collect()
                }
            }
            "single" => match base.len() {
                0 | 1 => base.into_vec(),
                n => return Err(EvalError::Type(format!("single() on {n} items"))),
            },
            "first" => base.into_vec().into_iter().take(1).collect(),
            "last" => base.into_vec().into_iter().last().into_iter().collect(),
            "tail" => base.into_vec().into_iter().skip(1).collect(),
            "skip" => {
                let n = self.arg_int(args, 0, input)?.unwrap_or(0).max(0) as usize;
                base.into_vec().into_iter().skip(n).collect()
            }
            "take" => {
                let n = self.arg_int(args, 0, input)?.unwrap_or(0).max(0) as usize;
                base.into_vec().into_iter().take(n).collect()
            }
            "intersect" => {
                let other = self.arg_value(args, 0, input)?;
                self.distinct(
                    base.into_vec()
                        .into_iter()
                        .filter(|x| other.iter().any(|y| item_eq(x, y) == Some(true)))
                        .collect(),
                )
            }
            "exclude" => {
                let other = self.arg_value(args, 0, input)?;
                base.into_vec()
                    .into_iter()
                    .filter(|x| !other.iter().any(|y| item_eq(x, y) == Some(true)))
                    .collect()
            }
            "union" => {
                let other = self.arg_value(args, 0, input)?;
                self.union(base.into_vec(), other)
            }
            "combine" => {
                // Evaluated with the base as `$this` context (`concept.code.combine($this…)`).
                let other = self.arg_value(args, 0, input)?;
                let mut out = base.into_vec();
                out.extend(other);
                out
            }
            "iif" => {
                let cond = match args.first() {
                    Some(a) => {
                        let saved = self.this.clone();
                        if base.len() == 1 {
                            self.this = base.first().cloned();
                        }
                        let r = self.eval(a, &base);
                        self.this = saved;
                        to_bool(&r?)?
                    }
                    None => return Err(EvalError::Type("iif() needs a criterion".into())),
                };
                let pick = if cond == Some(true) { 1 } else { 2 };
                match args.get(pick) {
                    Some(a) => self.eval(a, &base)?,
                    None => Vec::new(),
                }
            }
            "not" => match single(&base, "not")? {
                None => Vec::new(),
                Some(i) => vec![Item::Bool(!i.as_bool().unwrap_or(true))],
            },
            "hasValue" => vec![Item::Bool(
                base.len() == 1 && base.iter().all(Item::has_value),
            )],
            "getValue" => base
                .into_vec()
                .into_iter()
                .filter(Item::has_value)
                .collect(),
            "children" => {
                let mut out = Vec::new();
                for item in base.iter() {
                    children_into(item, &mut out);
                }
                out
            }
            "descendants" => {
                let mut out = Vec::new();
                let mut frontier: Coll<'a> = Vec::new();
                for item in base.iter() {
                    children_into(item, &mut frontier);
                }
                let mut rounds = 0;
                while !frontier.is_empty() && rounds < MAX_DEPTH {
                    rounds += 1;
                    let mut next: Coll<'a> = Vec::with_capacity(frontier.len());
                    for item in &frontier {
                        children_into(item, &mut next);
                    }
                    out.append(&mut frontier);
                    frontier = next;
                }
                out
            }
            "trace" => base.into_vec(),
            "extension" => {
                let url = self.arg_str(args, 0, input)?.unwrap_or_default();
                navigate(&base, "extension")
                    .into_iter()
                    .filter(|e| matches!(e, Item::Node { value, .. } if value.get("url").and_then(Value::as_str) == Some(url.as_str())))
                    .collect()
            }
            "resolve" => base.iter().flat_map(|i| self.resolve(i)).collect(),
            "memberOf" => {
                let url = self.arg_str(args, 0, input)?.unwrap_or_default();
                let Some(item) = single(&base, "memberOf")? else {
                    return Ok(Vec::new());
                };
                let owned;
                let value = match item {
                    Item::Node { value, .. } => *value,
                    other => {
                        owned = Value::String(other.to_text().unwrap_or_default());
                        &owned
                    }
                };
                match self.env.host.and_then(|h| h.member_of(value, &url)) {
                    Some(b) => vec![Item::Bool(b)],
                    None => return Err(EvalError::NotChecked(format!("membership in {url}"))),
                }
            }
            "conformsTo" => {
                let url = self.arg_str(args, 0, input)?.unwrap_or_default();
                let Some(Item::Node { value, .. }) = single(&base, "conformsTo")? else {
                    return Ok(Vec::new());
                };
                match self.env.host.and_then(|h| h.conforms_to(value, &url)) {
                    Some(b) => vec![Item::Bool(b)],
                    None => return Err(EvalError::NotChecked(format!("conformance to {url}"))),
                }
            }
            "htmlChecks" => {
                let Some(div) = single(&base, "htmlChecks")?.and_then(Item::string) else {
                    return Ok(vec![Item::Bool(false)]);
                };
                match self.env.host.and_then(|h| h.html_checks(div)) {
                    Some(b) => vec![Item::Bool(b)],
                    None => return Err(EvalError::NotChecked("narrative XHTML".into())),
                }
            }
            // Conversions.
            "toString" => single(&base, name)?
                .and_then(Item::to_text)
                .map(Item::Str)
                .into_iter()
                .collect(),
            "convertsToString" => vec![Item::Bool(
                single(&base, name)?.and_then(Item::to_text).is_some(),
            )],
            "toInteger" | "convertsToInteger" => {
                let v = single(&base, name)?.and_then(|i| match i.prim() {
                    Prim::Num(n) if n.fract() == 0.0 => Some(n as i64),
                    Prim::Str(s) => s.parse::<i64>().ok(),
                    Prim::Bool(b) => Some(i64::from(b)),
                    _ => None,
                });
                if name == "toInteger" {
                    v.map(Item::Int).into_iter().collect()
                } else {
                    vec![Item::Bool(v.is_some())]
                }
            }
            "toDecimal" | "convertsToDecimal" => {
                let v = single(&base, name)?.and_then(|i| match i.prim() {
                    Prim::Num(n) => Some(n),
                    Prim::Str(s) => s.parse::<f64>().ok(),
                    Prim::Bool(b) => Some(f64::from(u8::from(b))),
                    _ => None,
                });
                if name == "toDecimal" {
                    v.map(Item::Dec).into_iter().collect()
                } else {
                    vec![Item::Bool(v.is_some())]
                }
            }
            "toBoolean" | "convertsToBoolean" => {
                let v = single(&base, name)?.and_then(|i| match i.prim() {
                    Prim::Bool(b) => Some(b),
                    Prim::Num(1.0) => Some(true),
                    Prim::Num(0.0) => Some(false),
                    Prim::Str(s) => match s.to_ascii_lowercase().as_str() {
                        "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
                        "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
                        _ => None,
                    },
                    _ => None,
                });
                if name == "toBoolean" {
                    bools(v)
                } else {
                    vec![Item::Bool(v.is_some())]
                }
            }
            "toDate" | "toDateTime" => one_str(&base)?
                .filter(|s| looks_like_date(s))
                .map(Item::DateTime)
                .into_iter()
                .collect(),
            // Strings.
            "length" => one_str(&base)?
                .map(|s| Item::Int(s.chars().count() as i64))
                .into_iter()
                .collect(),
            "upper" => one_str(&base)?
                .map(|s| Item::Str(s.to_uppercase()))
                .into_iter()
                .collect(),
            "lower" => one_str(&base)?
                .map(|s| Item::Str(s.to_lowercase()))
                .into_iter()
                .collect(),
            "toChars" => one_str(&base)?
                .map(|s| s.chars().map(|c| Item::Str(c.to_string())).collect())
                .unwrap_or_default(),
            "startsWith" | "endsWith" | "contains" | "indexOf" => {
                let (Some(s), Some(arg)) = (one_str(&base)?, self.arg_str(args, 0, input)?) else {
                    return Ok(Vec::new());
                };
                match name {
                    "startsWith" => vec![Item::Bool(s.starts_with(&arg))],
                    "endsWith" => vec![Item::Bool(s.ends_with(&arg))],
                    "contains" => vec![Item::Bool(s.contains(&arg))],
                    _ => vec![Item::Int(
                        s.find(&arg).map_or(-1, |b| s[..b].chars().count() as i64),
                    )],
                }
            }
            "substring" => {
                let Some(s) = one_str(&base)? else {
                    return Ok(Vec::new());
                };
                let start = self.arg_int(args, 0, input)?.unwrap_or(0);
                let len = self.arg_int(args, 1, input)?;
                let n = s.chars().count() as i64;
                if start < 0 || start >= n {
                    return Ok(Vec::new());
                }
                let take = len.unwrap_or(n).max(0) as usize;
                vec![Item::Str(
                    s.chars().skip(start as usize).take(take).collect(),
                )]
            }
            "replace" => {
                let (Some(s), Some(a), Some(b)) = (
                    one_str(&base)?,
                    self.arg_str(args, 0, input)?,
                    self.arg_str(args, 1, input)?,
                ) else {
                    return Ok(Vec::new());
                };
                vec![Item::Str(s.replace(&a, &b))]
            }
            "matches" => {
                let (Some(s), Some(p)) = (one_str(&base)?, self.arg_str(args, 0, input)?) else {
                    return Ok(Vec::new());
                };
                vec![Item::Bool(self.regex(&p, true)?.is_match(&s))]
            }
            "replaceMatches" => {
                let (Some(s), Some(p), Some(sub)) = (
                    one_str(&base)?,
                    self.arg_str(args, 0, input)?,
                    self.arg_str(args, 1, input)?,
                ) else {
                    return Ok(Vec::new());
                };
                vec![Item::Str(
                    self.regex(&p, false)?
                        .replace_all(&s, sub.as_str())
                        .into_owned(),
                )]
            }
            // Math.
            "abs" | "ceiling" | "floor" | "round" | "truncate" => {
                let Some(item) = single(&base, name)? else {
                    return Ok(Vec::new());
                };
                let Some(n) = item.number() else {
                    return Err(EvalError::Type(format!("{name}() on a non-number")));
                };
                let r = match name {
                    "abs" => n.abs(),
                    "ceiling" => n.ceil(),
                    "floor" => n.floor(),
                    "round" => n.round(),
                    _ => n.trunc(),
                };
                if matches!(item, Item::Int(_)) || name != "abs" {
                    vec![Item::Int(r as i64)]
                } else {
                    vec![Item::Dec(r)]
                }
            }
            other => {
                return Err(EvalError::Type(format!(
                    "function {other}() is not implemented"
                )));
            }
        })
    }

    fn union(&self, a: Coll<'a>, b: Coll<'a>) -> Coll<'a> {
        let mut out = a;
        out.extend(b);
        self.distinct(out)
    }

    fn distinct(&self, c: Coll<'a>) -> Coll<'a> {
        if self.pairwise {
            distinct_pairwise(c)
        } else {
            distinct(c)
        }
    }

    /// `resolve()`: `#id` to a contained resource of the root resource, `#` to the root
    /// itself, anything else to an entry of the root Bundle (by fullUrl or `Type/id`).
    fn resolve(&self, item: &Item<'a>) -> Vec<Item<'a>> {
        let reference = match item {
            Item::Node {
                value: Value::String(s),
                ..
            } => s.as_str(),
            Item::Node {
                value: Value::Object(o),
                ..
            } => match o.get("reference").and_then(Value::as_str) {
                Some(r) => r,
                None => return Vec::new(),
            },
            _ => return Vec::new(),
        };
        let Some(root) = self.env.root_resource.or(self.env.resource) else {
            return Vec::new();
        };
        if reference == "#" {
            return vec![Item::node(root)];
        }
        if let Some(id) = reference.strip_prefix('#') {
            return root
                .get("contained")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|c| c.get("id").and_then(Value::as_str) == Some(id))
                .map(Item::node)
                .collect();
        }
        root.get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| {
                e.get("fullUrl").and_then(Value::as_str) == Some(reference)
                    || e.get("resource").is_some_and(|r| {
                        match (
                            r.get("resourceType").and_then(Value::as_str),
                            r.get("id").and_then(Value::as_str),
                        ) {
                            (Some(t), Some(id)) => {
                                let key = format!("{t}/{id}");
                                reference == key || reference.ends_with(&format!("/{key}"))
                            }
                            _ => false,
                        }
                    })
            })
            .filter_map(|e| e.get("resource"))
            .map(Item::node)
            .collect()
    }
}

fn type_arg(args: &[Node]) -> Result<String, EvalError> {
    match args.first() {
        Some(Node::Member(None, t)) => Ok(t.clone()),
        Some(Node::Member(Some(_), t)) => Ok(t.clone()),
        Some(Node::Str(t)) => Ok(t.clone()),
        _ => Err(EvalError::Type("expected a type name".into())),
    }
}

/// The children named `name` of each item, with FHIR's JSON conventions.
fn navigate<'a>(input: &[Item<'a>], name: &str) -> Coll<'a> {
    let mut out = Vec::new();
    for item in input {
        let Item::Node { value, ext, .. } = item else {
            continue;
        };
        let obj = match value {
            Value::Object(o) => o,
            // A primitive's id and extensions live in its `_name` sibling.
            _ => match ext {
                Some(Value::Object(o)) => o,
                _ => continue,
            },
        };
        member(obj, name, &mut out);
    }
    out
}

fn push_values<'a>(
    v: Option<&'a Value>,
    u: Option<&'a Value>,
    ty: Option<&'a str>,
    out: &mut Coll<'a>,
) {
    match (v, u) {
        (Some(Value::Array(a)), u) => {
            let ua = u.and_then(Value::as_array);
            for (i, x) in a.iter().enumerate() {
                let ext = ua.and_then(|ua| ua.get(i)).filter(|e| !e.is_null());
                push_one(x, ext, ty, out);
            }
        }
        (None, Some(Value::Array(ua))) => {
            for e in ua.iter().filter(|e| !e.is_null()) {
                push_one(&NULL, Some(e), ty, out);
            }
        }
        (Some(x), u) => push_one(x, u, ty, out),
        (None, Some(u)) => push_one(&NULL, Some(u), ty, out),
        (None, None) => {}
    }
}

fn push_one<'a>(value: &'a Value, ext: Option<&'a Value>, ty: Option<&'a str>, out: &mut Coll<'a>) {
    if value.is_null() && ext.is_none() {
        return;
    }
    let ty = ty.or_else(|| value.get("resourceType").and_then(Value::as_str));
    out.push(Item::Node { value, ext, ty });
}

/// `obj["_" + name]`, a primitive's sibling, without allocating for the usual short names
/// (navigation looks one up at every step).
fn sibling<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let mut buf = [0u8; 64];
    if let Some(rest) = buf.get_mut(1..=name.len()) {
        rest.copy_from_slice(name.as_bytes());
        buf[0] = b'_';
        if let Ok(key) = std::str::from_utf8(&buf[..=name.len()]) {
            return obj.get(key);
        }
    }
    obj.get(&format!("_{name}"))
}

fn member<'a>(obj: &'a Map<String, Value>, name: &str, out: &mut Coll<'a>) {
    let v = obj.get(name);
    let u = sibling(obj, name);
    if v.is_some() || u.is_some() {
        push_values(v, u, None, out);
        return;
    }
    // A choice element: `value` finds `valueQuantity` (type Quantity).
    for (key, v) in obj {
        let k = key.strip_prefix('_').unwrap_or(key);
        if k.len() > name.len()
            && k.starts_with(name)
            && k[name.len()..].starts_with(|c: char| c.is_ascii_uppercase())
        {
            let ty = &k[name.len()..];
            if key.starts_with('_') {
                if !obj.contains_key(k) {
                    push_values(None, Some(v), Some(ty), out);
                }
            } else {
                push_values(Some(v), sibling(obj, k), Some(ty), out);
            }
        }
    }
}

/// All child nodes of an item (`children()`), appended to `out`.
fn children_into<'a>(item: &Item<'a>, out: &mut Coll<'a>) {
    let Item::Node { value, ext, .. } = item else {
        return;
    };
    let obj = match value {
        Value::Object(o) => o,
        _ => match ext {
            Some(Value::Object(o)) => o,
            _ => return,
        },
    };
    // Most objects have no `_name` member: then no member has a sibling to look up.
    let siblings = obj.keys().any(|k| k.starts_with('_'));
    for (key, v) in obj {
        if key == "resourceType" {
            continue;
        }
        if siblings {
            if let Some(base) = key.strip_prefix('_') {
                if !obj.contains_key(base) {
                    push_values(None, Some(v), None, out);
                }
                continue;
            }
            push_values(Some(v), sibling(obj, key), None, out);
        } else {
            push_values(Some(v), None, None, out);
        }
    }
}

fn distinct(c: Coll<'_>) -> Coll<'_> {
    // An item is kept unless it equals (FHIRPath `=`) an item kept before it. Comparing every
    // pair is quadratic (dom-3 unions every reference, URI and date of a resource), so items
    // are matched through sets of keys that decide the same equality:
    // - a plain string equals only a string or a date of the same text;
    // - a date equals a date by [`cmp_dates`], decided by its [`DateKeys`];
    // - other items (numbers, quantities, objects) are compared with the kept others.
    // Same items kept, same order.
    let keep: Vec<bool> = {
        let mut kept_strings: Set<&str> = Set::default();
        let mut kept_dates: Set<&str> = Set::default();
        // Texts of kept dates that equal some date (their keys are not `Unequal`): the same
        // text has the same keys, so it repeats one of them without parsing it again (dom-3's
        // union holds each string of a resource three times: as uri, url and canonical).
        let mut kept_equal_dates: Set<&str> = Set::default();
        // Raw fields of kept dates with a zone and at least minutes, their UTC form, and
        // raw fields of the other kept dates.
        let mut zoned_raw: Set<Vec<u64>> = Set::default();
        let mut zoned_utc: Set<Vec<u64>> = Set::default();
        let mut plain_raw: Set<Vec<u64>> = Set::default();
        let mut kept_others: Vec<usize> = Vec::new();
        let mut keep = Vec::with_capacity(c.len());
        for (i, item) in c.iter().enumerate() {
            let repeat = match item.prim() {
                Prim::Str(s) => {
                    let repeat = kept_strings.contains(s) || kept_dates.contains(s);
                    if !repeat {
                        kept_strings.insert(s);
                    }
                    repeat
                }
                Prim::Date(s) if kept_equal_dates.contains(s) => true,
                Prim::Date(s) => {
                    let keys = DateKeys::of(s);
                    let repeat = kept_strings.contains(s)
                        || match &keys {
                            DateKeys::Unequal => false,
                            DateKeys::Zoned { raw, utc } => {
                                zoned_utc.contains(utc)
                                    || raw.as_ref().is_some_and(|r| plain_raw.contains(r))
                            }
                            DateKeys::Plain(raw) => {
                                plain_raw.contains(raw) || zoned_raw.contains(raw)
                            }
                        };
                    if !repeat {
                        kept_dates.insert(s);
                        if !matches!(keys, DateKeys::Unequal) {
                            kept_equal_dates.insert(s);
                        }
                        match keys {
                            DateKeys::Unequal => {}
                            DateKeys::Zoned { raw, utc } => {
                                zoned_raw.extend(raw);
                                zoned_utc.insert(utc);
                            }
                            DateKeys::Plain(raw) => {
                                plain_raw.insert(raw);
                            }
                        }
                    }
                    repeat
                }
                _ => {
                    let repeat = kept_others
                        .iter()
                        .any(|&o| item_eq(&c[o], item) == Some(true));
                    if !repeat {
                        kept_others.push(i);
                    }
                    repeat
                }
            };
            keep.push(!repeat);
        }
        keep
    };
    c.into_iter()
        .zip(keep)
        .filter_map(|(i, k)| k.then_some(i))
        .collect()
}

/// What decides [`cmp_dates`] equality of a date with others: two dates with a zone and at
/// least minutes compare in UTC; any other pair compares its fields as written. Equal means
/// the same number of fields, each equal (`-0` equals `0`; nothing equals NaN).
enum DateKeys {
    /// Equals no date (it does not parse, or a field is NaN).
    Unequal,
    /// A zone and at least minutes: the UTC form, and the fields as written (`None` if one
    /// is NaN).
    Zoned {
        raw: Option<Vec<u64>>,
        utc: Vec<u64>,
    },
    Plain(Vec<u64>),
}

impl DateKeys {
    fn of(s: &str) -> DateKeys {
        let Some(p) = parse_date(s) else {
            return DateKeys::Unequal;
        };
        let f = p.fields();
        // Fields as written, unless one is NaN (then equal to nothing as written).
        let bits = |v: &[f64]| -> Option<Vec<u64>> {
            (!v.iter().any(|x| x.is_nan())).then(|| v.iter().map(|x| (x + 0.0).to_bits()).collect())
        };
        let raw = bits(f);
        match (p.tz, f) {
            (Some(z), [y, m, d, h, min, rest @ ..]) => {
                match bits(&utc_fields(*y, *m, *d, *h, *min, rest.first().copied(), z)) {
                    Some(utc) => DateKeys::Zoned { raw, utc },
                    None => DateKeys::Unequal,
                }
            }
            _ => raw.map_or(DateKeys::Unequal, DateKeys::Plain),
        }
    }
}

/// `distinct` by FHIRPath equality between every pair: what [`distinct`] must equal.
fn distinct_pairwise(c: Coll<'_>) -> Coll<'_> {
    let mut out: Coll<'_> = Vec::with_capacity(c.len());
    for i in c {
        if !out.iter().any(|o| item_eq(o, &i) == Some(true)) {
            out.push(i);
        }
    }
    out
}

const STRING_TYPES: &[&str] = &[
    "string",
    "uri",
    "url",
    "canonical",
    "code",
    "id",
    "oid",
    "uuid",
    "markdown",
    "base64binary",
    "date",
    "datetime",
    "instant",
    "time",
    "xhtml",
];

/// Whether an item is of FHIR or System type `ty` (case-insensitive on the first letter, so
/// `Boolean` and `boolean` both match a boolean).
fn is_type(item: &Item<'_>, ty: &str) -> bool {
    TypeTest::new(ty).matches(item)
}

/// [`is_type`] for one type name, its case-insensitive comparisons made once (`as(uri)`
/// tests every descendant of a resource).
struct TypeTest<'t> {
    ty: &'t str,
    boolean: bool,
    integer: bool,
    decimal: bool,
    string: bool,
    date_like: bool,
    quantity: bool,
    resource: bool,
    string_family: bool,
    integer_family: bool,
}

impl<'t> TypeTest<'t> {
    fn new(ty: &'t str) -> Self {
        let is = |name: &str| ty.eq_ignore_ascii_case(name);
        TypeTest {
            ty,
            boolean: is("boolean"),
            integer: is("integer"),
            decimal: is("decimal"),
            string: is("string"),
            date_like: is("date") || is("datetime") || is("time"),
            quantity: is("quantity"),
            resource: is("resource") || is("domainresource"),
            string_family: STRING_TYPES.iter().any(|s| is(s)),
            integer_family: is("integer") || is("positiveint") || is("unsignedint"),
        }
    }

    fn matches(&self, item: &Item<'_>) -> bool {
        match item {
            Item::Bool(_) => self.boolean,
            Item::Int(_) => self.integer,
            Item::Dec(_) => self.decimal,
            Item::Str(_) => self.string,
            Item::DateTime(_) => self.date_like,
            Item::Quantity(..) => self.quantity,
            Item::Node {
                value, ty: Some(t), ..
            } => {
                t.eq_ignore_ascii_case(self.ty)
                    || (self.resource && value.get("resourceType").is_some())
                    || (self.quantity
                        && [
                            "age",
                            "duration",
                            "count",
                            "distance",
                            "simplequantity",
                            "moneyquantity",
                        ]
                        .iter()
                        .any(|q| t.eq_ignore_ascii_case(q)))
            }
            Item::Node {
                value, ty: None, ..
            } => match value {
                // No type in the JSON: judge by the JSON shape (lenient for the string family).
                Value::String(_) => self.string_family,
                Value::Bool(_) => self.boolean,
                Value::Number(n) => self.decimal || (n.is_i64() && self.integer_family),
                _ => false,
            },
        }
    }
}

fn item_eq(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    match (a.prim(), b.prim()) {
        (Prim::Bool(x), Prim::Bool(y)) => Some(x == y),
        (Prim::Num(x), Prim::Num(y)) => Some(x == y),
        (Prim::Str(x) | Prim::Date(x), Prim::Str(y)) | (Prim::Str(x), Prim::Date(y)) => {
            Some(x == y)
        }
        (Prim::Date(x), Prim::Date(y)) => cmp_dates(x, y).map(|o| o == Ordering::Equal),
        (Prim::Qty(x, u), Prim::Qty(y, v)) => Some(x == y && u == v),
        (Prim::Other, Prim::Other) => match (a, b) {
            (Item::Node { value: x, .. }, Item::Node { value: y, .. }) => Some(x == y),
            _ => Some(false),
        },
        _ => Some(false),
    }
}

fn coll_equiv(a: &[Item<'_>], b: &[Item<'_>]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().all(|x| {
        b.iter().any(|y| match (x.prim(), y.prim()) {
            (Prim::Str(s), Prim::Str(t)) => {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
                    == t.split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .to_lowercase()
            }
            _ => item_eq(x, y) == Some(true),
        })
    })
}

fn compare(a: &Item<'_>, b: &Item<'_>) -> Option<Ordering> {
    let ((pa, da), (pb, db)) = (a.prim_parsed(), b.prim_parsed());
    match (pa, pb) {
        (Prim::Num(x), Prim::Num(y)) => x.partial_cmp(&y),
        (Prim::Str(x), Prim::Str(y)) => Some(x.cmp(y)),
        (Prim::Date(x), Prim::Date(y)) => {
            let x = match da {
                Some(parts) => parts,
                None => parse_date(x)?,
            };
            let y = match db {
                Some(parts) => parts,
                None => parse_date(y)?,
            };
            cmp_parts(&x, &y)
        }
        (Prim::Qty(x, u), Prim::Qty(y, v)) if u == v || u.is_empty() || v.is_empty() => {
            x.partial_cmp(&y)
        }
        (Prim::Qty(x, _), Prim::Num(y)) => x.partial_cmp(&y),
        (Prim::Num(x), Prim::Qty(y, _)) => x.partial_cmp(&y),
        _ => None,
    }
}

fn arith<'a>(op: &str, a: &Item<'a>, b: &Item<'a>) -> Result<Coll<'a>, EvalError> {
    if op == "+"
        && let (Some(x), Some(y)) = (
            a.string().filter(|_| a.number().is_none()),
            b.string().filter(|_| b.number().is_none()),
        )
    {
        return Ok(vec![Item::Str(format!("{x}{y}"))]);
    }
    let (Some(x), Some(y)) = (a.number(), b.number()) else {
        return Err(EvalError::Type(format!("{op} needs two numbers")));
    };
    let ints = matches!(a.prim(), Prim::Num(n) if n.fract() == 0.0)
        && matches!(b.prim(), Prim::Num(n) if n.fract() == 0.0)
        && !matches!(a, Item::Dec(_))
        && !matches!(b, Item::Dec(_));
    Ok(match op {
        "+" if ints => vec![Item::Int((x + y) as i64)],
        "-" if ints => vec![Item::Int((x - y) as i64)],
        "*" if ints => vec![Item::Int((x * y) as i64)],
        "+" => vec![Item::Dec(x + y)],
        "-" => vec![Item::Dec(x - y)],
        "*" => vec![Item::Dec(x * y)],
        _ if y == 0.0 => Vec::new(),
        "/" => vec![Item::Dec(x / y)],
        "div" => vec![Item::Int((x / y).trunc() as i64)],
        _ => vec![if ints {
            Item::Int((x % y) as i64)
        } else {
            Item::Dec(x % y)
        }],
    })
}

/// `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, with an optional `Thh:mm:ss(.fff)(Z|±hh:mm)`, or a time.
fn looks_like_date(s: &str) -> bool {
    date_parts(s).is_some()
}

/// The fields of a text that looks like a date (`YYYY`, `YYYY-…`) and parses as one.
fn date_parts(s: &str) -> Option<DateParts> {
    let b = s.as_bytes();
    if b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit) && (b.len() == 4 || b[4] == b'-') {
        parse_date(s)
    } else {
        None
    }
}

/// A FHIR or System date/time type name, as a JSON choice suffix gives it.
fn is_date_type(t: &str) -> bool {
    matches!(
        t,
        "date" | "dateTime" | "instant" | "time" | "Date" | "DateTime" | "Instant" | "Time"
    )
}

/// Components of a date/time: values from year down to seconds (as many as given), and the
/// timezone offset in minutes when a time with a zone is given.
struct DateParts {
    /// The first fields (most dates have at most 7), and all of them past that.
    head: [f64; 8],
    more: Vec<f64>,
    n: usize,
    tz: Option<i64>,
}

impl DateParts {
    fn fields(&self) -> &[f64] {
        if self.n > self.head.len() {
            &self.more
        } else {
            &self.head[..self.n]
        }
    }

    fn push(&mut self, v: f64) {
        if self.n < self.head.len() {
            self.head[self.n] = v;
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(&self.head);
            }
            self.more.push(v);
        }
        self.n += 1;
    }
}

/// `part.parse::<f64>()`, without the float parser for the usual short run of digits.
fn date_field(part: &str) -> Option<f64> {
    let b = part.as_bytes();
    if !b.is_empty() && b.len() <= 15 && b.iter().all(u8::is_ascii_digit) {
        let mut v: u64 = 0;
        for d in b {
            v = v * 10 + u64::from(d - b'0');
        }
        // Below 10^15: exactly the f64 the float parser gives.
        return Some(v as f64);
    }
    part.parse::<f64>().ok()
}

fn parse_date(s: &str) -> Option<DateParts> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None if s.contains(':') && s.len() <= 18 => ("", Some(s)),
        None => (s, None),
    };
    let mut p = DateParts {
        head: [0.0; 8],
        more: Vec::new(),
        n: 0,
        tz: None,
    };
    if !date.is_empty() {
        for part in date.split('-') {
            p.push(date_field(part)?);
        }
        if p.n > 3 {
            return None;
        }
    }
    if let Some(t) = time.filter(|t| !t.is_empty()) {
        let (clock, zone) = if let Some(c) = t.strip_suffix('Z') {
            (c, Some(0))
        } else if let Some(i) = t.rfind(['+', '-']) {
            let z = &t[i + 1..];
            let (h, m) = z.split_once(':')?;
            let mins = h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?;
            (
                &t[..i],
                Some(if t.as_bytes()[i] == b'-' { -mins } else { mins }),
            )
        } else {
            (t, None)
        };
        for part in clock.split(':') {
            p.push(date_field(part)?);
        }
        p.tz = zone;
    }
    Some(p)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Compares two dates/times; `None` when their precisions differ and the common part is
/// equal (FHIRPath's "uncertain" answer).
fn cmp_dates(a: &str, b: &str) -> Option<Ordering> {
    cmp_parts(&parse_date(a)?, &parse_date(b)?)
}

/// [`cmp_dates`] of parsed dates.
fn cmp_parts(x: &DateParts, y: &DateParts) -> Option<Ordering> {
    let (fx, fy) = (x.fields(), y.fields());
    // Both with a time and a zone: compare on UTC.
    let utc;
    let (fx, fy): (&[f64], &[f64]) = match (x.tz, y.tz, fx, fy) {
        (Some(zx), Some(zy), [y1, m1, d1, h1, n1, r1 @ ..], [y2, m2, d2, h2, n2, r2 @ ..]) => {
            utc = (
                utc_fields(*y1, *m1, *d1, *h1, *n1, r1.first().copied(), zx),
                utc_fields(*y2, *m2, *d2, *h2, *n2, r2.first().copied(), zy),
            );
            (&utc.0, &utc.1)
        }
        _ => (fx, fy),
    };
    let n = fx.len().min(fy.len());
    for i in 0..n {
        match fx[i].partial_cmp(&fy[i])? {
            Ordering::Equal => {}
            other => return Some(other),
        }
    }
    if fx.len() == fy.len() {
        Some(Ordering::Equal)
    } else {
        None
    }
}

/// A zoned date-time's fields for comparison in UTC: minutes since the epoch, then the
/// seconds if given (fields past the seconds are not compared).
fn utc_fields(y: f64, m: f64, d: f64, h: f64, min: f64, secs: Option<f64>, zone: i64) -> Vec<f64> {
    let days = days_from_civil(y as i64, m as i64, d as i64);
    let mins = days * 1440 + (h as i64) * 60 + min as i64 - zone;
    let mut out = vec![mins as f64];
    out.extend(secs);
    out
}

/// What `and`, `or` and `implies` answer from their left operand alone (`None`: the right
/// operand is needed). The evaluator does not evaluate the right operand after these, and
/// the vacuity analysis must reason the same way.
pub(crate) fn logic_short_circuit(op: &str, a: Option<bool>) -> Option<bool> {
    match (op, a) {
        ("and", Some(false)) => Some(false),
        ("or", Some(true)) => Some(true),
        ("implies", Some(false)) => Some(true),
        _ => None,
    }
}

/// FHIRPath's three-valued tables for `and`, `or`, `implies` and `xor` (`None`: empty).
pub(crate) fn logic(op: &str, a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match op {
        "and" => match (a, b) {
            (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        "or" => match (a, b) {
            (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        "implies" => match (a, b) {
            (_, Some(true)) => Some(true),
            (Some(true), Some(false)) => Some(false),
            _ => None,
        },
        _ => match (a, b) {
            (Some(x), Some(y)) => Some(x != y),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `distinct` keeps exactly what comparing every pair keeps, in the same order: plain
    /// strings, date-like text, numbers, objects, and mixes of them.
    #[test]
    fn distinct_of_strings_equals_the_pairwise_distinct() {
        let values: Vec<Value> = (0..200)
            .map(|i| Value::String(format!("urn:uuid:{}", (i * 7) % 53)))
            .collect();
        let items: Coll<'_> = values.iter().map(Item::node).collect();
        let fast = distinct(items.clone());
        assert_eq!(fast, distinct_pairwise(items));
        assert_eq!(fast.len(), 53);
        let strs: Coll<'_> = (0..20).map(|i| Item::Str(format!("a{}", i % 3))).collect();
        assert_eq!(distinct(strs.clone()), distinct_pairwise(strs));
        // Dates compare by FHIRPath date equality: the pairwise path decides.
        let dates: Vec<Value> = (0..12)
            .map(|i| Value::String(format!("2020-01-{:02}", 1 + i % 4)))
            .collect();
        let items: Coll<'_> = dates.iter().map(Item::node).collect();
        assert_eq!(distinct(items.clone()).len(), 4);
        assert_eq!(distinct(items.clone()), distinct_pairwise(items));
        // A mix: strings equal to date text, dates of other precisions and zones, numbers,
        // booleans, objects, quantities.
        let mixed: Vec<Value> = serde_json::from_str(
            r#"["2020-01-01", "x", "2020-01-01T10:00:00Z", "2020-01-01T11:00:00+01:00", 1, 1.0,
                true, "2020", {"a": 1}, {"a": 1}, "x", "2020-01-01", false, 2, "y",
                {"value": 1, "code": "mg"}, {"value": 1, "code": "mg"}, "2020-01", "2020-01"]"#,
        )
        .unwrap();
        let mut items: Coll<'_> = mixed.iter().map(Item::node).collect();
        items.push(Item::Str("2020-01-01".into()));
        items.push(Item::Str("x".into()));
        items.push(Item::DateTime("2020-01-01".into()));
        items.push(Item::Int(1));
        items.push(Item::Quantity(1.0, "mg".into()));
        items.push(Item::Bool(true));
        for start in 0..items.len() {
            let mut rotated = items.clone();
            rotated.rotate_left(start);
            assert_eq!(
                distinct(rotated.clone()),
                distinct_pairwise(rotated),
                "rotation {start}"
            );
        }
    }

    /// Dates of every shape the parser takes (precisions, zones, offsets that meet in UTC,
    /// seconds with fractions, `-0`-like and NaN fields, unparsable text), in many orders:
    /// the keyed `distinct` keeps what comparing every pair keeps.
    #[test]
    fn distinct_of_dates_equals_the_pairwise_distinct() {
        let texts = [
            "2020",
            "2020-01",
            "2020-01-01",
            "2020-01-01T10:00",
            "2020-01-01T10:00Z",
            "2020-01-01T10:00:00Z",
            "2020-01-01T10:00:00",
            "2020-01-01T11:00:00+01:00",
            "2020-01-01T09:00:00-01:00",
            "2020-01-01T10:00:00.000Z",
            "2020-01-01T10:00:00.5Z",
            "2020-01-01T10:00:00.50Z",
            "2020-01-01T10Z",
            "2020-01-01T10",
            "2020-01-01T10:00:00:00Z",
            "2020-01-01T10:00:00:07Z",
            "2020-01-01T10:00:NaN",
            "2020-01-01T10:00:NaNZ",
            "2020-01-01T10:00:00:NaNZ",
            "2020-01-01T10:NaN:00Z",
            "2020-01-01T10:00:+0Z",
            "2019-12-31T23:00:00-11:00",
            "2020-01-02T10:00:00+24:00",
            "2020-1-1",
            "2020-01-01T",
            "2020-01-01-01",
            "2020-xx",
            "10:00:00",
            "10:00",
        ];
        let values: Vec<Value> = texts.iter().map(|t| Value::String((*t).into())).collect();
        let mut items: Coll<'_> = values
            .iter()
            .map(|v| Item::Node {
                value: v,
                ext: None,
                ty: Some("dateTime"),
            })
            .collect();
        items.extend(texts.iter().map(|t| Item::DateTime((*t).into())));
        items.extend(texts.iter().take(8).map(|t| Item::Str((*t).into())));
        // A fixed pseudo-random sequence of orders (no dependency on a random crate).
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..300 {
            let mut order = items.clone();
            for i in (1..order.len()).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                order.swap(i, (seed % (i as u64 + 1)) as usize);
            }
            let take = 5 + round % order.len();
            let order: Coll<'_> = order.into_iter().take(take).collect();
            assert_eq!(
                distinct(order.clone()),
                distinct_pairwise(order),
                "round {round}"
            );
        }
    }

    /// A plain string `in` (or `contains`) a union of operands, decided from the operands
    /// when they decide it, equals the plain evaluation that builds the union: found, not
    /// found, a date written differently dropped from the union before the needle's text,
    /// a date needle, several needles (an error), and the `|` chain however parenthesised.
    #[test]
    fn string_in_union_equals_the_plain_evaluation() {
        let resource: Value = serde_json::json!({
            "resourceType": "Observation",
            "a": ["x", "y", "2020-01-01T10:00:00Z"],
            "b": ["2020-01-01T11:00:00+01:00", "z", "#c1"],
            "c": [{"reference": "#c1"}, {"reference": "#c2"}],
            "n": [1, 2]
        });
        let env = Env {
            resource: Some(&resource),
            ..Env::default()
        };
        let regexes = HashMap::new();
        let mut fast_paths = 0;
        for needle in [
            "'x'",
            "'z'",
            "'#c1'",
            "'#c2'",
            "'w'",
            "'2020-01-01T11:00:00+01:00'",
            "'2020-01-01T10:00:00Z'",
            "@2020-01-01T10:00:00Z",
            "$this.reference",
            "%resource.a",
            "1",
        ] {
            for hay in [
                "(%resource.a | %resource.b | %resource.c.reference)",
                "(%resource.a | (%resource.b | %resource.c.reference))",
                "(%resource.b | %resource.a)",
                "(%resource.n | %resource.b)",
            ] {
                for src in [
                    format!("%resource.c.where({needle} in {hay})"),
                    format!("%resource.c.where({hay} contains {needle})"),
                    format!("%resource.c.select({needle} in {hay})"),
                ] {
                    let (root, memo) = memo_of(&src);
                    assert!(memo.slots > 0, "{src}");
                    let fast = evaluate(&root, &resource, &env, &regexes, &memo);
                    let plain = evaluate_reference(&root, &resource, &env, &regexes);
                    assert_eq!(format!("{fast:?}"), format!("{plain:?}"), "{src}");
                    let mut ctx = Ctx {
                        env: &env,
                        regexes: &regexes,
                        this: None,
                        index: None,
                        depth: 0,
                        memo: &memo,
                        memoized: vec![None; memo.slots],
                        pairwise: false,
                    };
                    let Node::Call(_, _, args) = &*root else {
                        panic!("{src}")
                    };
                    let Node::Binary(op, l, r) = &args[0] else {
                        panic!("{src}")
                    };
                    let (n, h) = if op == "in" { (l, r) } else { (r, l) };
                    let input = vec![Item::node(&resource["c"][0])];
                    fast_paths += usize::from(ctx.string_in_union(n, h, &input).is_some());
                }
            }
        }
        // The operands decide most plain-string cases; the date cases fall back.
        assert!(fast_paths > 20, "{fast_paths}");
    }

    /// Non-allocating date parsing reads the same fields as the float parser.
    #[test]
    fn date_fields_equal_the_float_parser() {
        for part in [
            "0",
            "07",
            "2020",
            "999999999999999",
            "1234567890123456",
            "",
            "+5",
            "1.5",
            "NaN",
            "inf",
            "-0",
            "x",
        ] {
            let want = part.parse::<f64>().ok();
            let got = date_field(part);
            assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{part:?}");
        }
        let many = parse_date("2020-01-01T1:2:3:4:5:6:7:8:9").unwrap();
        assert_eq!(
            many.fields(),
            &[
                2020.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0
            ]
        );
    }

    fn memo_of(src: &str) -> (Box<Node>, Memo) {
        let tokens = crate::lex::lex(src).unwrap();
        let root = Box::new(crate::parse::parse(&tokens).unwrap());
        let memo = Memo::plan(&root);
        (root, memo)
    }

    /// Only subexpressions that read nothing but the environment are computed once, and
    /// only where one evaluation may meet them again.
    #[test]
    fn memo_keeps_only_environment_subexpressions_met_again() {
        let dom3 = "contained.where((('#'+id in (%resource.descendants().reference | %resource.descendants().as(canonical) | %resource.descendants().as(uri) | %resource.descendants().as(url))) or descendants().where(reference = '#').exists() or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#').exists()).not()).trace('unmatched', id).empty()";
        let (_, memo) = memo_of(dom3);
        // The union of four, its three inner unions, the four branches, `%resource
        // .descendants()` (four times, one slot) and the repeated `as(canonical) = '#'`.
        assert!(memo.len() >= 9, "{}", memo.len());
        assert!(memo.slots < memo.len());
        for (src, n) in [
            ("name.exists() or telecom.exists()", 0),
            ("%resource.id.exists()", 0),
            ("a.where(b = %resource.id).exists()", 1),
            ("a.where(b = $this.c).exists()", 0),
            ("a.where(%context.b = 1).exists()", 0),
            ("a.where(b = $index).exists()", 0),
            ("a.where(iif(b, %resource.x, 1) = 1).exists()", 1),
            ("%resource.x.count() + %resource.x.count()", 4),
            ("x.count() + x.count()", 0),
            ("a.where(b.union(%resource.c).exists())", 1),
        ] {
            assert_eq!(memo_of(src).1.len(), n, "{src}");
        }
    }

    /// `is_type` as it was written with lowercased copies: what the comparison without
    /// copies must equal.
    fn is_type_lowercased(item: &Item<'_>, ty: &str) -> bool {
        let want = ty.to_ascii_lowercase();
        let want = want.as_str();
        match item {
            Item::Bool(_) => want == "boolean",
            Item::Int(_) => want == "integer",
            Item::Dec(_) => want == "decimal",
            Item::Str(_) => want == "string",
            Item::DateTime(_) => matches!(want, "date" | "datetime" | "time"),
            Item::Quantity(..) => want == "quantity",
            Item::Node {
                value, ty: Some(t), ..
            } => {
                let t = t.to_ascii_lowercase();
                t == want
                    || (matches!(want, "resource" | "domainresource")
                        && value.get("resourceType").is_some())
                    || (want == "quantity"
                        && matches!(
                            t.as_str(),
                            "age"
                                | "duration"
                                | "count"
                                | "distance"
                                | "simplequantity"
                                | "moneyquantity"
                        ))
            }
            Item::Node {
                value, ty: None, ..
            } => match value {
                Value::String(_) => STRING_TYPES.contains(&want),
                Value::Bool(_) => want == "boolean",
                Value::Number(n) => {
                    want == "decimal"
                        || (n.is_i64() && matches!(want, "integer" | "positiveint" | "unsignedint"))
                }
                _ => false,
            },
        }
    }

    /// `compare` (each date parsed once) gives what comparing through `prim()` and
    /// `cmp_dates` (each date parsed twice) gives, for every pair of texts of many shapes,
    /// typed by a choice suffix or not.
    #[test]
    fn compare_parsing_once_equals_the_double_parse() {
        fn reference(a: &Item<'_>, b: &Item<'_>) -> Option<Ordering> {
            match (a.prim(), b.prim()) {
                (Prim::Num(x), Prim::Num(y)) => x.partial_cmp(&y),
                (Prim::Str(x), Prim::Str(y)) => Some(x.cmp(y)),
                (Prim::Date(x), Prim::Date(y)) => cmp_dates(x, y),
                (Prim::Qty(x, u), Prim::Qty(y, v)) if u == v || u.is_empty() || v.is_empty() => {
                    x.partial_cmp(&y)
                }
                (Prim::Qty(x, _), Prim::Num(y)) => x.partial_cmp(&y),
                (Prim::Num(x), Prim::Qty(y, _)) => x.partial_cmp(&y),
                _ => None,
            }
        }
        let texts: Vec<Value> = [
            "2020",
            "2020-01",
            "2020-01-02",
            "2020-1-2",
            "2020-01-02T10:00",
            "2020-01-02T10:00:00",
            "2020-01-02T10:00:00Z",
            "2020-01-02T10:00:00+05:00",
            "2020-01-02T05:00:00-00:00",
            "2020-01-02T10:00:00.5+01:30",
            "2019-12-31T23:59:59-05:00",
            "2020-13-45",
            "20201",
            "2020-",
            "2020-01-02T",
            "10:00:00",
            "10:00",
            "T10:00",
            "abcd",
            "",
            "2020-01-02Tx",
            "2020-01-02T10:00:00+5",
            "9999-12-31T23:59:59.999+14:00",
            "0001-01-01",
        ]
        .iter()
        .map(|t| json!(t))
        .collect();
        let numbers = [json!(1), json!(2.5), json!({"value": 3, "unit": "mg"})];
        let mut items = Vec::new();
        for v in texts.iter().chain(&numbers) {
            items.push(Item::node(v));
            items.push(Item::Node {
                value: v,
                ext: None,
                ty: Some("dateTime"),
            });
            items.push(Item::Node {
                value: v,
                ext: None,
                ty: Some("string"),
            });
        }
        items.push(Item::DateTime("2020-01-02".into()));
        items.push(Item::Str("2020-01-02".into()));
        items.push(Item::Int(2));
        let mut compared = 0;
        for a in &items {
            for b in &items {
                assert_eq!(compare(a, b), reference(a, b), "{a:?} vs {b:?}");
                compared += 1;
            }
        }
        assert!(compared > 5000, "{compared}");
    }

    /// `children()` as written before `children_into` (a sibling looked up for every
    /// member): the reference the faster walk must equal.
    fn children_reference<'a>(item: &Item<'a>) -> Coll<'a> {
        let mut out = Vec::new();
        let Item::Node { value, ext, .. } = item else {
            return out;
        };
        let obj = match value {
            Value::Object(o) => o,
            _ => match ext {
                Some(Value::Object(o)) => o,
                _ => return out,
            },
        };
        for (key, v) in obj {
            if key == "resourceType" {
                continue;
            }
            if let Some(base) = key.strip_prefix('_') {
                if !obj.contains_key(base) {
                    push_values(None, Some(v), None, &mut out);
                }
                continue;
            }
            let u = sibling(obj, key);
            push_values(Some(v), u, None, &mut out);
        }
        out
    }

    #[test]
    fn children_into_equals_the_member_by_member_lookup() {
        let values = [
            json!({"resourceType": "Patient", "id": "p", "name": [{"given": ["a", "b"]}]}),
            json!({"birthDate": "2000", "_birthDate": {"id": "x"}, "gender": "male"}),
            json!({"_given": [null, {"id": "y"}], "given": ["a", "b"], "_only": {"id": "z"}}),
            json!({"a": null, "_a": {"extension": []}, "b": [1, null, 2], "_b": [null, {"id": "q"}]}),
            json!({"valueQuantity": {"value": 1}, "contained": [{"resourceType": "Basic"}]}),
            json!({}),
            json!("text"),
            json!([1, 2]),
        ];
        for v in &values {
            for item in [
                Item::node(v),
                Item::Node {
                    value: &NULL,
                    ext: Some(v),
                    ty: None,
                },
            ] {
                let mut got = Vec::new();
                children_into(&item, &mut got);
                assert_eq!(got, children_reference(&item), "{v}");
                // Descendants, both ways, breadth first.
                let (mut a, mut b) = (got, children_reference(&item));
                for _ in 0..4 {
                    let mut next = Vec::new();
                    for i in &a {
                        children_into(i, &mut next);
                    }
                    let reference: Coll<'_> = b.iter().flat_map(children_reference).collect();
                    assert_eq!(next, reference, "{v}");
                    (a, b) = (next, reference);
                }
            }
        }
    }

    #[test]
    fn is_type_equals_the_lowercased_comparison() {
        let values: Vec<Value> = serde_json::from_str(
            r#"["x", true, 1, 1.5, {"resourceType": "Patient"}, {"value": 1}, null, [1]]"#,
        )
        .unwrap();
        let tys = [
            None,
            Some("String"),
            Some("Quantity"),
            Some("Age"),
            Some("SimpleQuantity"),
            Some("Patient"),
            Some("canonical"),
            Some("DateTime"),
            Some("Ünïcode"),
        ];
        let mut items: Coll<'_> = Vec::new();
        for v in &values {
            for ty in tys {
                items.push(Item::Node {
                    value: v,
                    ext: None,
                    ty,
                });
            }
        }
        items.extend([
            Item::Bool(true),
            Item::Int(1),
            Item::Dec(1.0),
            Item::Str("s".into()),
            Item::DateTime("2020".into()),
            Item::Quantity(1.0, "mg".into()),
        ]);
        let names = [
            "boolean",
            "Boolean",
            "integer",
            "Integer",
            "decimal",
            "string",
            "String",
            "date",
            "DateTime",
            "time",
            "quantity",
            "Quantity",
            "age",
            "Age",
            "resource",
            "Resource",
            "DomainResource",
            "Patient",
            "patient",
            "canonical",
            "Canonical",
            "uri",
            "url",
            "code",
            "id",
            "oid",
            "uuid",
            "markdown",
            "base64Binary",
            "instant",
            "xhtml",
            "positiveInt",
            "unsignedInt",
            "SimpleQuantity",
            "moneyquantity",
            "ünïcode",
            "Ünïcode",
            "",
        ];
        let mut matched = 0;
        for item in &items {
            for name in names {
                assert_eq!(
                    is_type(item, name),
                    is_type_lowercased(item, name),
                    "{item:?} is {name}"
                );
                matched += usize::from(is_type(item, name));
            }
        }
        assert!(matched > 40, "{matched}");
    }
}
