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

/// An expression's verdict when the focus lacks every child in `names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vacuity {
    /// The children the expression reads from the focus (JSON names; a choice element's
    /// stem, such as `value`, stands for every `valueX`).
    names: Vec<String>,
    /// What [`crate::Expression::check`] gives then.
    verdict: Option<bool>,
}

/// Trees deeper than this are left to the evaluator (whose depth limit could then matter).
const MAX_HEIGHT: usize = 32;

impl Vacuity {
    /// The analysis of `root`, if its verdict is certain for a focus without the children it
    /// reads.
    pub(crate) fn of(root: &Node) -> Option<Vacuity> {
        let mut names = Vec::new();
        let known = abstract_eval(root, &mut names, 0)?;
        let verdict = match known {
            Known::Empty => None,
            Known::Bool(b) => Some(b),
            // `check` reads a lone non-boolean item as true only through `as_bool`: leave
            // those to the evaluator.
            Known::Int(_) | Known::Other => return None,
        };
        names.sort();
        names.dedup();
        Some(Vacuity { names, verdict })
    }

    /// The verdict when `focus` holds none of the children read: a primitive (whose
    /// `_name` sibling is not part of the focus) or an object without any member named
    /// after one of them (`name`, `_name`, or a choice `nameType`; any member whose name
    /// starts with a child's name counts, which is more than navigation finds).
    pub(crate) fn verdict(&self, focus: &Value) -> Option<Option<bool>> {
        let absent = match focus {
            Value::Object(o) => o.keys().all(|k| {
                let k = k.strip_prefix('_').unwrap_or(k);
                self.names.iter().all(|n| !k.starts_with(n.as_str()))
            }),
            _ => true,
        };
        absent.then_some(self.verdict)
    }

    #[cfg(test)]
    pub(crate) fn names(&self) -> &[String] {
        &self.names
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
            // The evaluator does not evaluate the right operand after these.
            match (op, a) {
                ("and", Some(false)) => return Some(Known::Bool(false)),
                ("or", Some(true)) => return Some(Known::Bool(true)),
                ("implies", Some(false)) => return Some(Known::Bool(true)),
                _ => {}
            }
            let b = as_bool(&abstract_eval(r, names, h)?)?;
            let out = match op {
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
            };
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

    use serde_json::json;

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
            let got = expr.vacuity.as_ref().map(|v| v.verdict);
            assert_eq!(got, *expected, "{source}: analysis");
            let Some(v) = &expr.vacuity else { continue };
            for focus in &absent {
                let plain = expr.check_reference(focus, &env);
                assert!(expr.is_vacuous_on(focus), "{source} on {focus}");
                assert_eq!(Ok(v.verdict), plain, "{source} on {focus}");
                assert_eq!(expr.check(focus, &env), plain, "{source} on {focus}");
            }
            // Each child read, present (as itself, as a `_` sibling, as a choice type):
            // evaluated, with the evaluator's verdict.
            for name in v.names() {
                for key in [name.clone(), format!("_{name}"), format!("{name}Quantity")] {
                    let focus = json!({ key.clone(): {"value": 1, "system": "s"} });
                    assert!(!expr.is_vacuous_on(&focus), "{source} with {key}");
                    assert_eq!(
                        expr.check(&focus, &env),
                        expr.check_reference(&focus, &env),
                        "{source} with {key}"
                    );
                }
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
