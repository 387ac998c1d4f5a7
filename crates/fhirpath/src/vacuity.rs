//! What an expression's check gives when the focus has none of the children it reads:
//! decided once at compile time, so that an invariant such as `code.empty() or
//! system.exists()` on a Quantity without a `code` is answered from the focus's keys,
//! without evaluating anything.
//!
//! The analysis is an abstract evaluation of the tree in which every navigation from the
//! focus yields the empty collection. It follows the evaluator's own rules (which operands
//! it evaluates, how it short-circuits, what a function gives for an empty input) and gives
//! up (`None`) wherever an answer could depend on anything else or an evaluation could fail:
//! the environment (`%resource`, `$this`), a function of the focus itself (`hasValue()`,
//! `children()`), a leading type name, any function or operator not listed here. Tests
//! compare the answer with the evaluator's on every expression of the R4 definitions.

use serde_json::Value;

use crate::eval::{logic, logic_short_circuit};
use crate::parse::Node;

/// A value the evaluator certainly produces, without error, when the focus has none of the
/// children the expression reads.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    /// The empty collection.
    Empty,
    Bool(bool),
    Int(i64),
    /// One item that is neither a boolean nor an integer (a string, decimal, date literal).
    Other,
}

/// An expression's verdicts when the focus lacks children: each rule says what
/// [`crate::Expression::check`] gives when the focus has none of the rule's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vacuity {
    rules: Vec<Rule>,
    /// Whether the first rule is the whole expression's (all its children absent).
    whole: bool,
}

/// The verdict when the focus lacks every child in `names`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// The children read (JSON names; a choice element's stem, such as `value`, stands for
    /// every `valueX`).
    names: Vec<String>,
    verdict: Option<bool>,
    /// The first bytes of `names`, as a set: a member whose name (without `_`) starts with
    /// none of them is passed over without comparing names.
    first_bytes: [u64; 4],
}

impl Rule {
    fn new(names: Vec<String>, verdict: Option<bool>) -> Rule {
        let mut first_bytes = [0u64; 4];
        for n in &names {
            // An empty name (never produced: navigation names are not empty) would match
            // every member: every member is then compared.
            let b = n.as_bytes().first().copied();
            match b {
                Some(b) => first_bytes[usize::from(b >> 6)] |= 1 << (b & 63),
                None => first_bytes = [u64::MAX; 4],
            }
        }
        Rule {
            names,
            verdict,
            first_bytes,
        }
    }

    /// Whether `key` (a member of the focus) is named after one of the rule's children.
    fn reads(&self, key: &str) -> bool {
        let k = key.strip_prefix('_').unwrap_or(key);
        let Some(&b) = k.as_bytes().first() else {
            return self.names.iter().any(String::is_empty);
        };
        self.first_bytes[usize::from(b >> 6)] & (1 << (b & 63)) != 0
            && self.names.iter().any(|n| k.starts_with(n.as_str()))
    }
}

/// Trees deeper than this are left to the evaluator (whose depth limit could then matter).
const MAX_HEIGHT: usize = 32;

impl Vacuity {
    /// The analysis of `root`: the rules under which its verdict is certain. The whole
    /// expression with all its children absent; and, for `A or B`, `A and B`, `A implies B`,
    /// an operand that decides the result alone: `A` (the evaluator does not evaluate `B`
    /// then), or `B` when `A` is a boolean whose evaluation cannot fail.
    pub(crate) fn of(root: &Node) -> Option<Vacuity> {
        let mut rules = Vec::new();
        let whole = collect(root, &mut rules, 0);
        (!rules.is_empty()).then_some(Vacuity { rules, whole })
    }

    /// The verdict of the first rule whose children `focus` holds none of: a primitive
    /// (whose `_name` sibling is not part of the focus) holds none; an object holds a child
    /// when a member is named after it (`name`, `_name`, or a choice `nameType`; any member
    /// whose name starts with a child's name counts, which is more than navigation finds).
    pub(crate) fn verdict(&self, focus: &Value) -> Option<Option<bool>> {
        let Value::Object(o) = focus else {
            return self.rules.first().map(|r| r.verdict);
        };
        self.rules
            .iter()
            .find(|r| !o.keys().any(|k| r.reads(k)))
            .map(|r| r.verdict)
    }

    /// Every child some rule reads.
    #[cfg(test)]
    pub(crate) fn names(&self) -> Vec<String> {
        let mut all: Vec<String> = self.rules.iter().flat_map(|r| r.names.clone()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// The verdict with every child absent, if the whole expression is decided then.
    #[cfg(test)]
    pub(crate) fn whole(&self) -> Option<Option<bool>> {
        self.whole.then(|| self.rules[0].verdict)
    }
}

/// Pushes the rules of `node`, the rule of the whole first; whether there is one.
fn collect(node: &Node, rules: &mut Vec<Rule>, height: usize) -> bool {
    if height > MAX_HEIGHT {
        return false;
    }
    let before = rules.len();
    let mut names = Vec::new();
    if let Some(verdict) = abstract_eval(node, &mut names, height).and_then(|k| match k {
        Known::Empty => Some(None),
        Known::Bool(b) => Some(Some(b)),
        // `check` reads a lone non-boolean item as true only through `as_bool`: leave
        // those to the evaluator.
        Known::Int(_) | Known::Other => None,
    }) {
        names.sort();
        names.dedup();
        rules.push(Rule::new(names, verdict));
    }
    let whole = rules.len() > before;
    let Node::Binary(op, l, r) = node else {
        return whole;
    };
    // The result when an operand is decided with this verdict (operands are read as
    // booleans: a rule's verdict stands for `{}` or one boolean, never an error).
    let decides = |verdict: Option<bool>, left: bool| match (op.as_str(), verdict) {
        ("or", Some(true)) => Some(Some(true)),
        ("and", Some(false)) => Some(Some(false)),
        ("implies", Some(false)) if left => Some(Some(true)),
        ("implies", Some(true)) if !left => Some(Some(true)),
        _ => None,
    };
    if !matches!(op.as_str(), "or" | "and" | "implies") {
        return whole;
    }
    let mut sub = Vec::new();
    collect(l, &mut sub, height + 1);
    for rule in sub.drain(..) {
        if let Some(verdict) = decides(rule.verdict, true) {
            rules.push(Rule::new(rule.names, verdict));
        }
    }
    if infallible_bool(l, height + 1) {
        collect(r, &mut sub, height + 1);
        for rule in sub {
            if let Some(verdict) = decides(rule.verdict, false) {
                rules.push(Rule::new(rule.names, verdict));
            }
        }
    }
    whole
}

/// Whether the evaluator certainly evaluates `node` to `{}` or one boolean, without error
/// and without reading the environment.
fn infallible_bool(node: &Node, height: usize) -> bool {
    if height > MAX_HEIGHT {
        return false;
    }
    match node {
        Node::Bool(_) => true,
        Node::Call(Some(b), name, args) if args.is_empty() => match name.as_str() {
            "exists" | "empty" | "hasValue" => infallible_collection(b, height + 1),
            "not" => infallible_bool(b, height + 1),
            _ => false,
        },
        Node::Binary(op, l, r) if matches!(op.as_str(), "and" | "or" | "implies" | "xor") => {
            infallible_bool(l, height + 1) && infallible_bool(r, height + 1)
        }
        _ => false,
    }
}

/// Whether the evaluator certainly evaluates `node` without error and without reading the
/// environment: navigation from the focus.
fn infallible_collection(node: &Node, height: usize) -> bool {
    if height > MAX_HEIGHT {
        return false;
    }
    match node {
        Node::Member(None, name) => name.starts_with(|c: char| c.is_ascii_lowercase()),
        Node::Member(Some(b), _) => infallible_collection(b, height + 1),
        _ => infallible_bool(node, height),
    }
}

/// The value of `node` evaluated on an input that is either the focus (`on_focus`) or the
/// empty collection, when the focus lacks every name pushed onto `names`.
fn abstract_eval(node: &Node, names: &mut Vec<String>, height: usize) -> Option<Known> {
    if height > MAX_HEIGHT {
        return None;
    }
    let h = height + 1;
    Some(match node {
        Node::Empty => Known::Empty,
        Node::Bool(b) => Known::Bool(*b),
        Node::Int(i) => Known::Int(*i),
        Node::Str(_) | Node::Dec(_) | Node::DateTime(_) | Node::Quantity(..) => Known::Other,
        // A name on the focus: absent by assumption. A leading type name may select the
        // focus itself.
        Node::Member(None, name) => {
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_uppercase()) {
                return None;
            }
            names.push(name.clone());
            Known::Empty
        }
        Node::Member(Some(base), _) => match abstract_eval(base, names, h)? {
            Known::Empty => Known::Empty,
            _ => return None,
        },
        Node::TypeOp(_, operand, _) => match abstract_eval(operand, names, h)? {
            // `{} is T` and `{} as T` are empty.
            Known::Empty => Known::Empty,
            _ => return None,
        },
        Node::Call(Some(base), name, args) => {
            match abstract_eval(base, names, h)? {
                Known::Empty => empty_call(name, args)?,
                // One item (a boolean, as `hasValue()` gives): what the functions of one
                // item used on such results give.
                one => match (name.as_str(), args.len(), one) {
                    ("not", 0, Known::Bool(b)) => Known::Bool(!b),
                    ("exists", 0, _) => Known::Bool(true),
                    ("empty", 0, _) => Known::Bool(false),
                    ("count", 0, _) => Known::Int(1),
                    _ => return None,
                },
            }
        }
        Node::Binary(op, l, r) => binary(op, l, r, names, h)?,
        // The environment, `$this`, a function of the focus, indexers, negation: left to
        // the evaluator.
        Node::Var(_)
        | Node::This
        | Node::Index
        | Node::Total
        | Node::Call(None, ..)
        | Node::Indexer(..)
        | Node::Neg(_) => return None,
    })
}

/// What the evaluator's function `name` gives for an empty input without evaluating its
/// arguments (criteria are evaluated per item: never, here).
fn empty_call(name: &str, args: &[Node]) -> Option<Known> {
    Some(match (name, args.len()) {
        ("empty", 0) => Known::Bool(true),
        ("exists", 0 | 1) => Known::Bool(false),
        ("all", 1) => Known::Bool(true),
        ("allTrue" | "allFalse", 0) => Known::Bool(true),
        ("anyTrue" | "anyFalse", 0) => Known::Bool(false),
        ("count", 0) => Known::Int(0),
        ("isDistinct", 0) => Known::Bool(true),
        ("hasValue", 0) => Known::Bool(false),
        ("where" | "select" | "repeat", 1) => Known::Empty,
        ("distinct" | "single" | "first" | "last" | "tail" | "not" | "trace", 0) => Known::Empty,
        ("trace", 1 | 2) if matches!(args.first(), Some(Node::Str(_))) => Known::Empty,
        _ => return None,
    })
}

fn binary(op: &str, l: &Node, r: &Node, names: &mut Vec<String>, h: usize) -> Option<Known> {
    let a = abstract_eval(l, names, h)?;
    match op {
        "and" | "or" | "implies" | "xor" => {
            let a = as_bool(&a)?;
            if let Some(out) = logic_short_circuit(op, a) {
                return Some(Known::Bool(out));
            }
            let b = as_bool(&abstract_eval(r, names, h)?)?;
            let out = logic(op, a, b);
            Some(out.map_or(Known::Empty, Known::Bool))
        }
        "=" | "!=" | "<" | ">" | "<=" | ">=" | "|" => {
            let b = abstract_eval(r, names, h)?;
            match (&a, &b) {
                (Known::Empty, Known::Empty) => Some(Known::Empty),
                (Known::Empty, _) | (_, Known::Empty) if op != "|" => Some(Known::Empty),
                (Known::Bool(x), Known::Bool(y)) if op == "=" || op == "!=" => {
                    Some(Known::Bool((x == y) == (op == "=")))
                }
                (Known::Int(x), Known::Int(y)) => Some(Known::Bool(match op {
                    "=" => x == y,
                    "!=" => x != y,
                    "<" => x < y,
                    ">" => x > y,
                    "<=" => x <= y,
                    ">=" => x >= y,
                    _ => return None,
                })),
                _ => None,
            }
        }
        _ => None,
    }
}

/// FHIRPath's singleton reading of a known value as a boolean (`to_bool`), where certain.
fn as_bool(k: &Known) -> Option<Option<bool>> {
    match k {
        Known::Empty => Some(None),
        Known::Bool(b) => Some(Some(*b)),
        // A lone integer or string reads as true unless it is a boolean-like text: leave it.
        Known::Int(_) | Known::Other => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use crate::{Env, Expression};

    /// Every expression: the analysis's verdict, where it has one, equals the evaluator's
    /// on foci without the children read (an object with other members, an empty object, a
    /// primitive); with one of them present the analysis stays out of the way.
    #[test]
    fn vacuous_verdicts_equal_the_evaluation() {
        let cases: &[(&str, Option<Option<bool>>)] = &[
            // (expression, verdict the analysis gives: None = no analysis)
            ("code.empty() or system.exists()", Some(Some(true))),
            ("extension.exists() != value.exists()", Some(Some(false))),
            (
                "extension.exists() implies value.exists()",
                Some(Some(true)),
            ),
            (
                "name.exists() or telecom.exists() or address.exists()",
                Some(Some(false)),
            ),
            (
                "dataAbsentReason.empty() or value.empty()",
                Some(Some(true)),
            ),
            ("contained.contained.empty()", Some(Some(true))),
            (
                "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()",
                Some(Some(true)),
            ),
            (
                "start.hasValue().not() or end.hasValue().not() or (start <= end)",
                Some(Some(true)),
            ),
            (
                "(low.empty() or high.empty()) or (low <= high)",
                Some(Some(true)),
            ),
            (
                "component.where(code = %resource.code).empty()",
                Some(Some(true)),
            ),
            (
                "repeat.all(count.exists() implies countMax.empty())",
                Some(Some(true)),
            ),
            ("children().count() > id.count()", None),
            ("id.count() > 1", Some(Some(false))),
            ("id.count() = 0", Some(Some(true))),
            ("a = b", Some(None)),
            ("a < 'x'", Some(None)),
            ("a | b", Some(None)),
            ("(a | b).empty()", Some(Some(true))),
            ("a.where($this = 'x').exists().not()", Some(Some(true))),
            ("a.trace('t').empty()", Some(Some(true))),
            ("a is Quantity", Some(None)),
            ("(a as Quantity).exists()", Some(Some(false))),
            ("a.exists() xor b.exists()", Some(Some(false))),
            ("a.exists() and %resource.x.exists()", Some(Some(false))),
            ("%resource.x.exists() and a.exists()", None),
            ("a.exists() or %resource.x.exists()", None),
            ("hasValue() or a.exists()", None),
            ("Patient.name.exists()", None),
            ("$this.a.exists()", None),
            ("a[0].exists()", None),
            ("a.count()", None),
            ("'x'", None),
            ("a.exists() or 1", None),
            ("a.first().b.empty()", Some(Some(true))),
            ("a.select(b).empty()", Some(Some(true))),
            ("a.all(b)", Some(Some(true))),
            ("a.allTrue() and a.anyTrue().not()", Some(Some(true))),
            ("a.substring(1).empty()", None),
        ];
        let env = Env::default();
        let absent = [
            json!({"other": 1, "_other": {"id": "x"}}),
            json!({}),
            json!("text"),
            json!(3),
        ];
        for (source, expected) in cases {
            let expr = Expression::compile(source).unwrap();
            let got = expr.vacuity.as_ref().and_then(|v| v.whole());
            assert_eq!(got, *expected, "{source}: analysis");
            let Some(v) = &expr.vacuity else { continue };
            for focus in absent.iter().filter(|_| got.is_some()) {
                let plain = expr.check_reference(focus, &env);
                assert!(expr.is_vacuous_on(focus), "{source} on {focus}");
                assert_eq!(Ok(v.whole().unwrap()), plain, "{source} on {focus}");
                assert_eq!(expr.check(focus, &env), plain, "{source} on {focus}");
            }
            // Every child read present (as itself, as a `_` sibling, as a choice type):
            // evaluated. Each alone present: the evaluator's verdict, by a rule or not.
            for form in ["{}", "_{}", "{}Quantity"] {
                let all: serde_json::Map<String, Value> = v
                    .names()
                    .iter()
                    .map(|n| (form.replace("{}", n), json!({"value": 1})))
                    .collect();
                assert!(!expr.is_vacuous_on(&Value::Object(all)), "{source}");
            }
            for name in &v.names() {
                for key in [name.clone(), format!("_{name}"), format!("{name}Quantity")] {
                    let focus = json!({ key.clone(): {"value": 1, "system": "s"} });
                    assert_eq!(
                        expr.check(&focus, &env),
                        expr.check_reference(&focus, &env),
                        "{source} with {key}"
                    );
                }
            }
        }
    }

    /// Every rule against the evaluator: for the expressions of the table and more, every
    /// subset of the children read present (with values of several shapes), the other
    /// absent; `check` (rules first) equals the plain evaluation.
    #[test]
    fn rules_equal_the_evaluation_on_every_subset_of_children() {
        let sources = [
            "dataAbsentReason.empty() or value.empty()",
            "value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()",
            "code.empty() or system.exists()",
            "orderDetail.empty() or code.exists()",
            "abatement.empty() or clinicalStatus.coding.where(system='x' and (code='resolved' or code='inactive')).exists()",
            "verificationStatus.coding.where(system='x' and code='e').empty() or clinicalStatus.empty()",
            "clinicalStatus.exists() or verificationStatus.coding.where(code = 'e').exists() or category.select($this='p').empty()",
            "onBehalfOf.exists() implies (member.resolve().iif(empty(), true, ofType(Practitioner).exists()))",
            "duration.exists() implies duration >= 0",
            "offset.empty() or (when.exists() and ((when in ('C' | 'CM')).not()))",
            "start.hasValue().not() or end.hasValue().not() or (start <= end)",
            "a.exists() and b.exists()",
            "a.exists() implies b.exists()",
            "a.empty() implies b.exists()",
            "a.exists() and (b.empty() or c = 'x')",
            "(a.exists() or b.exists()) and c.empty()",
            "a.count() > 1 or b.empty()",
            "a or b.empty()",
            "a.exists() xor b.exists()",
            "%resource.x.exists() or a.empty()",
            "a.where(b = 1).exists() or c.empty()",
        ];
        let shapes = [
            json!(true),
            json!(false),
            json!("2020-01-01"),
            json!(7),
            json!({"coding": [{"system": "x", "code": "e"}], "value": 1}),
            json!([{"code": "C"}, {"code": "x"}]),
            json!(["C", "x"]),
        ];
        let env = Env::default();
        let mut decided = 0;
        for source in sources {
            let expr = Expression::compile(source).unwrap();
            let names = expr.vacuity.as_ref().map(|v| v.names()).unwrap_or_default();
            assert!(names.len() <= 6, "{source}");
            for subset in 0..(1u32 << names.len()) {
                for (si, shape) in shapes.iter().enumerate() {
                    let mut focus = serde_json::Map::new();
                    focus.insert("unrelated".into(), json!(1));
                    for (i, n) in names.iter().enumerate() {
                        if subset & (1 << i) != 0 {
                            // Rotate shapes so children differ from each other.
                            let shape = &shapes[(si + i) % shapes.len()];
                            focus.insert(n.clone(), shape.clone());
                        }
                    }
                    let focus = Value::Object(focus);
                    decided += usize::from(expr.is_vacuous_on(&focus));
                    assert_eq!(
                        expr.check(&focus, &env),
                        expr.check_reference(&focus, &env),
                        "{source} on {focus}"
                    );
                    let _ = shape;
                }
            }
        }
        assert!(decided > 100, "{decided}");
    }

    /// The first-byte filter changes nothing: a member is read exactly when its name
    /// (without `_`) starts with one of the rule's names.
    #[test]
    fn first_byte_filter_equals_the_prefix_comparison() {
        let names_sets: [&[&str]; 5] = [
            &["value"],
            &["code", "system"],
            &["contained", "text", "extension"],
            &["", "a"],
            &["ä", "z", "_x"],
        ];
        let keys = [
            "",
            "_",
            "value",
            "_value",
            "valueQuantity",
            "valu",
            "code",
            "_code",
            "coding",
            "system",
            "sys",
            "contained",
            "text",
            "textual",
            "extension",
            "a",
            "b",
            "ä",
            "äb",
            "z",
            "_x",
            "__x",
            "x",
            "ZZ",
            "~",
            "\u{7f}",
        ];
        for names in names_sets {
            let rule = super::Rule::new(names.iter().map(|n| n.to_string()).collect(), None);
            for key in keys {
                let k = key.strip_prefix('_').unwrap_or(key);
                let expected = names.iter().any(|n| k.starts_with(n));
                assert_eq!(rule.reads(key), expected, "{names:?} {key}");
            }
        }
    }

    /// A member whose name merely starts with a child's name (`valueSet` for `value`) is
    /// taken as present: the analysis errs towards evaluating.
    #[test]
    fn members_sharing_a_prefix_count_as_present() {
        let expr = Expression::compile("value.empty()").unwrap();
        assert!(!expr.is_vacuous_on(&json!({"valueSet": "x"})));
        assert!(!expr.is_vacuous_on(&json!({"valueQuantity": {"value": 1}})));
        assert!(!expr.is_vacuous_on(&json!({"_value": {"id": "x"}})));
        assert!(expr.is_vacuous_on(&json!({"code": "x"})));
        let env = Env::default();
        assert_eq!(
            expr.check(&json!({"valueQuantity": {"value": 1}}), &env),
            Ok(Some(false))
        );
        assert_eq!(expr.check(&json!({"code": "x"}), &env), Ok(Some(true)));
    }
}
