//! Evaluation: JSONata's data model (sequences, undefined, functions) over borrowed JSON.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use super::parser::{Lambda, Node};
use super::{Bindings, JsonataError, Outcome, functions};

/// A JSONata value. `Ref` borrows the caller's JSON; the rest are built during evaluation.
#[derive(Clone)]
pub(crate) enum Val<'a> {
    Undef,
    Null,
    Bool(bool),
    Num(f64),
    Str(Rc<str>),
    Ref(&'a Value),
    /// An array (`cons`: built by an array constructor, so a path step does not flatten it).
    Arr(Rc<Vec<Val<'a>>>, bool),
    /// A sequence: the result of a path, flattened into its parent and unwrapped when single.
    Seq(Rc<Vec<Val<'a>>>),
    Obj(Rc<Vec<(String, Val<'a>)>>),
    Func(Rc<Func<'a>>),
    Regex(Arc<regex::Regex>),
}

pub(crate) enum Func<'a> {
    Lambda {
        def: &'a Lambda,
        env: Rc<Env<'a>>,
    },
    Builtin(&'static str),
    /// `f(?, x)`: the function and its arguments, `None` where a `?` stands.
    Partial(Val<'a>, Vec<Option<Val<'a>>>),
    /// `| location | update [, delete] |`.
    Transform {
        location: &'a Node,
        update: &'a Node,
        delete: Option<&'a Node>,
        env: Rc<Env<'a>>,
    },
}

pub(crate) struct Env<'a> {
    vars: RefCell<HashMap<String, Val<'a>>>,
    parent: Option<Rc<Env<'a>>>,
}

impl<'a> Env<'a> {
    pub(crate) fn child(parent: &Rc<Env<'a>>) -> Rc<Env<'a>> {
        Rc::new(Env {
            vars: RefCell::new(HashMap::new()),
            parent: Some(parent.clone()),
        })
    }

    pub(crate) fn set(&self, name: &str, v: Val<'a>) {
        self.vars.borrow_mut().insert(name.to_string(), v);
    }

    fn get(&self, name: &str) -> Option<Val<'a>> {
        if let Some(v) = self.vars.borrow().get(name) {
            return Some(v.clone());
        }
        self.parent.as_ref().and_then(|p| p.get(name))
    }
}

impl<'a> Val<'a> {
    pub(crate) fn str(s: &str) -> Self {
        Val::Str(Rc::from(s))
    }

    pub(crate) fn arr(v: Vec<Val<'a>>) -> Self {
        Val::Arr(Rc::new(v), false)
    }

    /// Null, booleans and numbers behind a reference become owned; strings and containers
    /// stay borrowed (reading a string field copies nothing).
    pub(crate) fn norm(self) -> Self {
        match self {
            Val::Ref(Value::Null) => Val::Null,
            Val::Ref(Value::Bool(b)) => Val::Bool(*b),
            Val::Ref(Value::Number(n)) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            other => other,
        }
    }

    pub(crate) fn is_undef(&self) -> bool {
        match self {
            Val::Undef => true,
            Val::Seq(s) => s.is_empty(),
            _ => false,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            Val::Ref(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_num(&self) -> Option<f64> {
        match self {
            Val::Num(n) => Some(*n),
            Val::Ref(Value::Number(n)) => n.as_f64(),
            _ => None,
        }
    }

    pub(crate) fn is_array(&self) -> bool {
        matches!(self, Val::Arr(..) | Val::Seq(_) | Val::Ref(Value::Array(_)))
    }

    pub(crate) fn is_object(&self) -> bool {
        matches!(self, Val::Obj(_) | Val::Ref(Value::Object(_)))
    }

    pub(crate) fn is_func(&self) -> bool {
        matches!(self, Val::Func(_) | Val::Regex(_))
    }

    /// The items of an array or sequence; anything else is a sequence of one (or none).
    pub(crate) fn items(&self) -> Vec<Val<'a>> {
        match self {
            Val::Undef => Vec::new(),
            Val::Arr(v, _) | Val::Seq(v) => v.as_ref().clone(),
            Val::Ref(Value::Array(a)) => a.iter().map(|x| Val::Ref(x).norm()).collect(),
            other => vec![other.clone()],
        }
    }

    /// Field `name` of an object (undefined otherwise).
    pub(crate) fn field(&self, name: &str) -> Val<'a> {
        match self {
            Val::Ref(Value::Object(m)) => m.get(name).map_or(Val::Undef, |v| Val::Ref(v).norm()),
            Val::Obj(pairs) => pairs
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map_or(Val::Undef, |(_, v)| v.clone()),
            _ => Val::Undef,
        }
    }

    /// Object entries, in order.
    pub(crate) fn entries(&self) -> Vec<(String, Val<'a>)> {
        match self {
            Val::Ref(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), Val::Ref(v).norm()))
                .collect(),
            Val::Obj(pairs) => pairs.as_ref().clone(),
            _ => Vec::new(),
        }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Undef => "undefined",
            Val::Null | Val::Ref(Value::Null) => "null",
            Val::Bool(_) | Val::Ref(Value::Bool(_)) => "boolean",
            Val::Num(_) | Val::Ref(Value::Number(_)) => "number",
            Val::Str(_) | Val::Ref(Value::String(_)) => "string",
            Val::Arr(..) | Val::Seq(_) | Val::Ref(Value::Array(_)) => "array",
            Val::Obj(_) | Val::Ref(Value::Object(_)) => "object",
            Val::Func(_) | Val::Regex(_) => "function",
        }
    }

    /// Unwraps a sequence of one; an empty sequence is undefined.
    pub(crate) fn collapse(self) -> Self {
        match self {
            Val::Seq(s) if s.is_empty() => Val::Undef,
            Val::Seq(s) if s.len() == 1 => s[0].clone(),
            other => other,
        }
    }

    /// The JSON form; `None` for undefined and functions (dropped from containers).
    pub(crate) fn to_json(&self) -> Result<Option<Value>, JsonataError> {
        Ok(Some(match self {
            Val::Undef | Val::Func(_) | Val::Regex(_) => return Ok(None),
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => Value::Number(num_to_json(*n)?),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Ref(v) => (*v).clone(),
            Val::Arr(v, _) | Val::Seq(v) => {
                let mut out = Vec::with_capacity(v.len());
                for x in v.iter() {
                    if let Some(j) = x.to_json()? {
                        out.push(j);
                    }
                }
                Value::Array(out)
            }
            Val::Obj(pairs) => {
                let mut m = Map::new();
                for (k, v) in pairs.iter() {
                    if let Some(j) = v.to_json()? {
                        m.insert(k.clone(), j);
                    }
                }
                Value::Object(m)
            }
        }))
    }
}

pub(crate) fn num_to_json(n: f64) -> Result<Number, JsonataError> {
    if !n.is_finite() {
        return Err(JsonataError::eval(
            "D1001",
            "Number out of range: the result is not a finite number",
        ));
    }
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        return Ok(Number::from(n as i64));
    }
    Number::from_f64(n).ok_or_else(|| JsonataError::eval("D1001", "Number out of range"))
}

/// JSONata's boolean coercion.
pub(crate) fn truthy(v: &Val<'_>) -> bool {
    match v {
        Val::Undef | Val::Null | Val::Func(_) | Val::Regex(_) => false,
        Val::Bool(b) => *b,
        Val::Num(n) => *n != 0.0,
        Val::Str(s) => !s.is_empty(),
        Val::Ref(Value::Null) => false,
        Val::Ref(Value::Bool(b)) => *b,
        Val::Ref(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Val::Ref(Value::String(s)) => !s.is_empty(),
        Val::Ref(Value::Array(_)) | Val::Arr(..) | Val::Seq(_) => {
            let items = v.items();
            match items.len() {
                0 => false,
                1 => truthy(&items[0]),
                _ => items.iter().any(truthy),
            }
        }
        Val::Ref(Value::Object(m)) => !m.is_empty(),
        Val::Obj(p) => !p.is_empty(),
    }
}

/// Deep equality (`=`).
pub(crate) fn equal(a: &Val<'_>, b: &Val<'_>) -> bool {
    if let (Some(x), Some(y)) = (a.as_num(), b.as_num()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return x == y;
    }
    match (a.clone().norm(), b.clone().norm()) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (x, y) if x.is_array() && y.is_array() => {
            let (xs, ys) = (x.items(), y.items());
            xs.len() == ys.len() && xs.iter().zip(&ys).all(|(p, q)| equal(p, q))
        }
        (x, y) if x.is_object() && y.is_object() => {
            let (xs, ys) = (x.entries(), y.entries());
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, v)| ys.iter().any(|(k2, v2)| k == k2 && equal(v, v2)))
        }
        _ => false,
    }
}

pub(crate) struct Ctx<'a, 'b> {
    pub bindings: &'b Bindings<'a>,
    pub depth: usize,
    /// `$states`, built on first use.
    pub states: Option<Val<'a>>,
}

const MAX_DEPTH: usize = 120;

pub(crate) fn run(
    root: &Node,
    input: Option<&Value>,
    bindings: &Bindings<'_>,
) -> Result<Outcome, JsonataError> {
    run_at(root, input, bindings, 0)
}

/// As [`run`], already `depth` calls deep (`$eval` inside an evaluation).
pub(crate) fn run_at(
    root: &Node,
    input: Option<&Value>,
    bindings: &Bindings<'_>,
    depth: usize,
) -> Result<Outcome, JsonataError> {
    let env = Rc::new(Env {
        vars: RefCell::new(HashMap::new()),
        parent: None,
    });
    let mut ctx = Ctx {
        bindings,
        depth,
        states: None,
    };
    let input = input.map_or(Val::Undef, |v| Val::Ref(v).norm());
    let result = eval(root, &input, &env, &mut ctx)?.collapse();
    // Break reference cycles (a lambda stored in the environment it captured).
    clear(&env);
    Ok(match result {
        Val::Undef => Outcome::Undefined,
        Val::Func(_) | Val::Regex(_) => Outcome::Function,
        v => match v.to_json()? {
            Some(j) => Outcome::Value(j),
            None => Outcome::Undefined,
        },
    })
}

fn clear(env: &Rc<Env<'_>>) {
    let vars = std::mem::take(&mut *env.vars.borrow_mut());
    for v in vars.into_values() {
        if let Val::Func(f) = v {
            if let Func::Lambda { env: inner, .. } | Func::Transform { env: inner, .. } = f.as_ref()
            {
                if !Rc::ptr_eq(inner, env) {
                    clear(inner);
                }
            }
        }
    }
}

pub(crate) fn eval<'a>(
    node: &'a Node,
    input: &Val<'a>,
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    ctx.depth += 1;
    if ctx.depth > MAX_DEPTH {
        return Err(JsonataError::eval(
            "U1001",
            "Stack overflow error: check for non-terminating recursive function",
        ));
    }
    let r = eval_inner(node, input, env, ctx);
    ctx.depth -= 1;
    r
}

fn lookup_var<'a>(
    name: &str,
    input: &Val<'a>,
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Val<'a> {
    if name.is_empty() {
        return input.clone();
    }
    if let Some(v) = env.get(name) {
        return v;
    }
    let b = ctx.bindings;
    if name == "states" && !b.states.is_empty() {
        if let Some(v) = &ctx.states {
            return v.clone();
        }
        let v = Val::Obj(Rc::new(
            b.states
                .iter()
                .map(|(k, v)| ((*k).to_string(), Val::Ref(v).norm()))
                .collect(),
        ));
        ctx.states = Some(v.clone());
        return v;
    }
    if let Some(v) = b.vars.get(name) {
        return Val::Ref(v).norm();
    }
    if let Some(v) = b.fallback.and_then(|m| m.get(name)) {
        return Val::Ref(v).norm();
    }
    if let Some(f) = functions::builtin(name) {
        return Val::Func(Rc::new(Func::Builtin(f)));
    }
    Val::Undef
}

fn eval_inner<'a>(
    node: &'a Node,
    input: &Val<'a>,
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    Ok(match node {
        Node::Num(n) => Val::Num(*n),
        Node::Str(s) => Val::str(s),
        Node::Bool(b) => Val::Bool(*b),
        Node::Null => Val::Null,
        Node::Regex(r) => Val::Regex(r.clone()),
        Node::Var(v) => lookup_var(v, input, env, ctx),
        Node::Name(n) => step_field(input, n),
        Node::Wildcard => {
            let mut out = Vec::new();
            for item in input.items() {
                for (_, v) in item.entries() {
                    push_flat(&mut out, v);
                }
            }
            Val::Seq(Rc::new(out))
        }
        Node::Descendants => {
            let mut out = Vec::new();
            for item in input.items() {
                descendants(&item, &mut out);
            }
            Val::Seq(Rc::new(out))
        }
        Node::Path(steps) => eval_path(steps, input, env, ctx)?,
        Node::Filter(base, _) if has_binding(base) => {
            tuple_path(std::slice::from_ref(node), input, env, ctx)?
        }
        Node::Filter(base, pred) => {
            let b = eval(base, input, env, ctx)?;
            filter(b, pred, env, ctx)?
        }
        Node::Binary(op, l, r) => binary(op, l, r, input, env, ctx)?,
        Node::Neg(e) => {
            let v = eval(e, input, env, ctx)?.collapse();
            match v {
                Val::Undef => Val::Undef,
                other => match other.as_num() {
                    Some(n) => Val::Num(-n),
                    None => {
                        return Err(JsonataError::eval(
                            "D1002",
                            "Cannot negate a non-numeric value",
                        ));
                    }
                },
            }
        }
        Node::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                if let Node::Range(lo, hi) = item {
                    let lo = eval(lo, input, env, ctx)?.collapse();
                    let hi = eval(hi, input, env, ctx)?.collapse();
                    for n in range(&lo, &hi)? {
                        out.push(Val::Num(n as f64));
                    }
                    continue;
                }
                let v = eval(item, input, env, ctx)?.collapse();
                match (item, v) {
                    (_, Val::Undef) => {}
                    (Node::Array(_), v) => out.push(v),
                    (_, v) if v.is_array() => out.extend(v.items()),
                    (_, v) => out.push(v),
                }
            }
            Val::Arr(Rc::new(out), true)
        }
        Node::Range(..) => {
            return Err(JsonataError::eval(
                "S0201",
                "A range is allowed only inside an array constructor",
            ));
        }
        Node::Object(pairs) => group(input.clone(), pairs, env, ctx)?,
        Node::Group(base, pairs) => {
            let b = eval(base, input, env, ctx)?;
            group(b, pairs, env, ctx)?
        }
        Node::IndexBind(..) | Node::FocusBind(..) => {
            tuple_path(std::slice::from_ref(node), input, env, ctx)?
        }
        Node::Transform(location, update, delete) => Val::Func(Rc::new(Func::Transform {
            location,
            update,
            delete: delete.as_deref(),
            env: env.clone(),
        })),
        Node::Placeholder => {
            return Err(JsonataError::eval(
                "S0211",
                "The symbol \"?\" cannot be used as a unary operator",
            ));
        }
        Node::Cond(c, t, e) => {
            let cv = eval(c, input, env, ctx)?.collapse();
            if truthy(&cv) {
                eval(t, input, env, ctx)?
            } else if let Some(e) = e {
                eval(e, input, env, ctx)?
            } else {
                Val::Undef
            }
        }
        Node::Bind(name, e) => {
            let v = eval(e, input, env, ctx)?.collapse();
            env.set(name, v.clone());
            v
        }
        Node::Block(items) => {
            let inner = Env::child(env);
            let mut last = Val::Undef;
            for i in items {
                last = eval(i, input, &inner, ctx)?;
            }
            last
        }
        Node::Lambda(def) => Val::Func(Rc::new(Func::Lambda {
            def,
            env: env.clone(),
        })),
        Node::Call(f, args) => {
            if let Node::Var(name) = f.as_ref() {
                if name == "__keep_array" {
                    let Some(arg) = args.first() else {
                        return Ok(Val::Undef);
                    };
                    let v = eval(arg, input, env, ctx)?.collapse();
                    return Ok(match v {
                        Val::Undef => Val::Undef,
                        v if v.is_array() => Val::Arr(Rc::new(v.items()), true),
                        v => Val::Arr(Rc::new(vec![v]), true),
                    });
                }
            }
            let fv = eval(f, input, env, ctx)?.collapse();
            if args.iter().any(|a| matches!(a, Node::Placeholder)) {
                return partial(fv, args, f, input, env, ctx);
            }
            let mut argv = Vec::with_capacity(args.len());
            for a in args {
                argv.push(eval(a, input, env, ctx)?.collapse());
            }
            call(&fv, argv, input, ctx, f)?
        }
        Node::Chain(l, r) => {
            let lv = eval(l, input, env, ctx)?.collapse();
            match r.as_ref() {
                Node::Call(f, args) => {
                    let fv = eval(f, input, env, ctx)?.collapse();
                    let mut argv = vec![lv];
                    for a in args {
                        argv.push(eval(a, input, env, ctx)?.collapse());
                    }
                    call(&fv, argv, input, ctx, f)?
                }
                other => {
                    let fv = eval(other, input, env, ctx)?.collapse();
                    call(&fv, vec![lv], input, ctx, other)?
                }
            }
        }
        Node::Sort(base, keys) => {
            let b = eval(base, input, env, ctx)?.collapse();
            let items = b.items();
            let mut keyed = Vec::with_capacity(items.len());
            for item in items {
                let mut ks = Vec::with_capacity(keys.len());
                for (k, _) in keys {
                    ks.push(eval(k, &item, env, ctx)?.collapse());
                }
                keyed.push((ks, item));
            }
            let mut err = None;
            keyed.sort_by(|(a, _), (b, _)| {
                for (i, (_, desc)) in keys.iter().enumerate() {
                    let o = match compare_sortable(&a[i], &b[i]) {
                        Ok(o) => o,
                        Err(e) => {
                            err = Some(e);
                            std::cmp::Ordering::Equal
                        }
                    };
                    let o = if *desc { o.reverse() } else { o };
                    if o != std::cmp::Ordering::Equal {
                        return o;
                    }
                }
                std::cmp::Ordering::Equal
            });
            if let Some(e) = err {
                return Err(e);
            }
            Val::Seq(Rc::new(keyed.into_iter().map(|(_, v)| v).collect()))
        }
    })
}

fn compare_sortable(a: &Val<'_>, b: &Val<'_>) -> Result<std::cmp::Ordering, JsonataError> {
    use std::cmp::Ordering;
    match (a, b) {
        (Val::Undef, Val::Undef) => Ok(Ordering::Equal),
        (Val::Undef, _) => Ok(Ordering::Greater),
        (_, Val::Undef) => Ok(Ordering::Less),
        _ => {
            if let (Some(x), Some(y)) = (a.as_num(), b.as_num()) {
                return Ok(x.partial_cmp(&y).unwrap_or(Ordering::Equal));
            }
            if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
                return Ok(x.cmp(y));
            }
            Err(JsonataError::eval(
                "T2008",
                "The expressions within an order-by clause must evaluate to numeric or string values",
            ))
        }
    }
}

fn descendants<'a>(v: &Val<'a>, out: &mut Vec<Val<'a>>) {
    if !v.is_array() {
        out.push(v.clone());
    }
    if v.is_array() {
        for i in v.items() {
            descendants(&i, out);
        }
    } else {
        for (_, c) in v.entries() {
            descendants(&c, out);
        }
    }
}

fn push_flat<'a>(out: &mut Vec<Val<'a>>, v: Val<'a>) {
    match v {
        Val::Undef => {}
        Val::Arr(_, true) => out.push(v),
        v if v.is_array() => out.extend(v.items()),
        v => out.push(v),
    }
}

/// A field name step: on an array it maps over the items.
fn step_field<'a>(input: &Val<'a>, name: &str) -> Val<'a> {
    if input.is_array() {
        let mut out = Vec::new();
        for item in input.items() {
            push_flat(&mut out, step_field(&item, name));
        }
        return Val::Seq(Rc::new(out));
    }
    input.field(name)
}

fn eval_path<'a>(
    steps: &'a [Node],
    input: &Val<'a>,
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    if steps.iter().any(has_binding) {
        return tuple_path(steps, input, env, ctx);
    }
    let Some((first, rest)) = steps.split_first() else {
        return Ok(Val::Undef);
    };
    let first_v = eval(first, input, env, ctx)?;
    let mut seq: Vec<Val<'a>> = match first_v {
        Val::Arr(_, true) if !rest.is_empty() => first_v.items(),
        Val::Arr(_, true) => vec![first_v],
        v => v.items(),
    };
    if rest.is_empty() && matches!(first, Node::Var(_)) {
        // A lone variable keeps its value as it is.
        return Ok(match seq.len() {
            1 => seq.remove(0),
            _ => Val::Seq(Rc::new(seq)),
        });
    }
    for (i, step) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        let mut results = Vec::with_capacity(seq.len());
        for item in &seq {
            let r = eval(step, item, env, ctx)?;
            if !r.is_undef() {
                results.push((r, matches!(step, Node::Array(_))));
            }
        }
        if last
            && results.len() == 1
            && results[0].0.is_array()
            && !matches!(results[0].0, Val::Seq(_))
        {
            return Ok(results.remove(0).0);
        }
        let mut next = Vec::new();
        for (r, cons) in results {
            if cons {
                next.push(r);
            } else {
                push_flat(&mut next, r);
            }
        }
        seq = next;
    }
    Ok(Val::Seq(Rc::new(seq)))
}

fn filter<'a>(
    base: Val<'a>,
    pred: &'a Node,
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    let items = base.collapse().items();
    let n = items.len() as i64;
    let index = |f: f64| -> Option<usize> {
        let mut i = f.floor() as i64;
        if i < 0 {
            i += n;
        }
        (0..n).contains(&i).then_some(i as usize)
    };
    if let Node::Num(f) = pred {
        return Ok(Val::Seq(Rc::new(
            index(*f)
                .map(|i| vec![items[i].clone()])
                .unwrap_or_default(),
        )));
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let r = eval(pred, item, env, ctx)?.collapse();
        let keep = if let Some(f) = r.as_num() {
            index(f) == Some(i)
        } else if r.is_array()
            && r.items().iter().all(|x| x.as_num().is_some())
            && !r.items().is_empty()
        {
            r.items()
                .iter()
                .any(|x| x.as_num().and_then(index) == Some(i))
        } else {
            truthy(&r)
        };
        if keep {
            out.push(item.clone());
        }
    }
    Ok(Val::Seq(Rc::new(out)))
}

fn range(lo: &Val<'_>, hi: &Val<'_>) -> Result<std::ops::RangeInclusive<i64>, JsonataError> {
    if lo.is_undef() || hi.is_undef() {
        #[allow(clippy::reversed_empty_ranges)]
        return Ok(1..=0);
    }
    let int = |v: &Val<'_>, code: &'static str, side: &str| {
        v.as_num()
            .filter(|f| f.fract() == 0.0)
            .map(|f| f as i64)
            .ok_or_else(|| {
                JsonataError::eval(
                    code,
                    format!(
                        "The {side} side of the range operator (..) must evaluate to an integer"
                    ),
                )
            })
    };
    let (a, b) = (int(lo, "T2003", "left")?, int(hi, "T2004", "right")?);
    if b.saturating_sub(a) > 10_000_000 {
        return Err(JsonataError::eval(
            "D2014",
            "The size of the sequence allocated by the range operator (..) must not exceed 1e7",
        ));
    }
    Ok(a..=b)
}

fn binary<'a>(
    op: &str,
    l: &'a Node,
    r: &'a Node,
    input: &Val<'a>,
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    if op == "and" {
        let a = eval(l, input, env, ctx)?.collapse();
        if !truthy(&a) {
            return Ok(Val::Bool(false));
        }
        let b = eval(r, input, env, ctx)?.collapse();
        return Ok(Val::Bool(truthy(&b)));
    }
    if op == "or" {
        let a = eval(l, input, env, ctx)?.collapse();
        if truthy(&a) {
            return Ok(Val::Bool(true));
        }
        let b = eval(r, input, env, ctx)?.collapse();
        return Ok(Val::Bool(truthy(&b)));
    }
    let a = eval(l, input, env, ctx)?.collapse();
    let b = eval(r, input, env, ctx)?.collapse();
    Ok(match op {
        "+" | "-" | "*" | "/" | "%" => {
            let num = |v: &Val<'_>, side: &str, code| -> Result<Option<f64>, JsonataError> {
                if v.is_undef() {
                    return Ok(None);
                }
                v.as_num().map(Some).ok_or_else(|| {
                    JsonataError::eval(
                        code,
                        format!(
                            "The {side} side of the \"{op}\" operator must evaluate to a number"
                        ),
                    )
                })
            };
            let (x, y) = (num(&a, "left", "T2001")?, num(&b, "right", "T2002")?);
            let (Some(x), Some(y)) = (x, y) else {
                return Ok(Val::Undef);
            };
            let v = match op {
                "+" => x + y,
                "-" => x - y,
                "*" => x * y,
                "/" => x / y,
                _ => x % y,
            };
            if !v.is_finite() {
                return Err(JsonataError::eval(
                    "D1001",
                    format!("Number out of range: {v}"),
                ));
            }
            Val::Num(v)
        }
        "&" => {
            let s = format!(
                "{}{}",
                functions::to_string(&a)?.unwrap_or_default(),
                functions::to_string(&b)?.unwrap_or_default()
            );
            Val::str(&s)
        }
        "=" => Val::Bool(!a.is_undef() && !b.is_undef() && equal(&a, &b)),
        "!=" => Val::Bool(!a.is_undef() && !b.is_undef() && !equal(&a, &b)),
        "<" | ">" | "<=" | ">=" => {
            let bad = |v: &Val<'_>| !v.is_undef() && v.as_num().is_none() && v.as_str().is_none();
            if bad(&a) || bad(&b) {
                return Err(JsonataError::eval(
                    "T2010",
                    format!(
                        "The expressions either side of operator \"{op}\" must evaluate to numeric or string values"
                    ),
                ));
            }
            if a.is_undef() || b.is_undef() {
                return Ok(Val::Undef);
            }
            let ord = if let (Some(x), Some(y)) = (a.as_num(), b.as_num()) {
                x.partial_cmp(&y)
            } else if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
                Some(x.cmp(y))
            } else {
                return Err(JsonataError::eval(
                    "T2009",
                    format!(
                        "The values {} and {} either side of operator \"{op}\" must be of the same data type",
                        display(&a),
                        display(&b)
                    ),
                ));
            };
            let Some(ord) = ord else {
                return Ok(Val::Bool(false));
            };
            use std::cmp::Ordering::*;
            Val::Bool(match op {
                "<" => ord == Less,
                ">" => ord == Greater,
                "<=" => ord != Greater,
                _ => ord != Less,
            })
        }
        "in" => {
            if a.is_undef() || b.is_undef() {
                return Ok(Val::Bool(false));
            }
            Val::Bool(b.items().iter().any(|x| equal(x, &a)))
        }
        other => {
            return Err(JsonataError::eval(
                "S0201",
                format!("Unknown operator \"{other}\""),
            ));
        }
    })
}

/// Applies a function value to arguments.
pub(crate) fn call<'a>(
    f: &Val<'a>,
    args: Vec<Val<'a>>,
    input: &Val<'a>,
    ctx: &mut Ctx<'a, '_>,
    callee: &Node,
) -> Result<Val<'a>, JsonataError> {
    match f {
        Val::Func(func) => match func.as_ref() {
            Func::Builtin(name) => functions::call_builtin(name, args, input, ctx),
            Func::Lambda { def, env } => {
                let frame = Env::child(env);
                for (i, p) in def.params.iter().enumerate() {
                    frame.set(p, args.get(i).cloned().unwrap_or(Val::Undef));
                }
                Ok(eval(&def.body, input, &frame, ctx)?.collapse())
            }
            Func::Partial(inner, bound) => {
                let mut given = args.into_iter();
                let full: Vec<Val<'a>> = bound
                    .iter()
                    .map(|b| match b {
                        Some(v) => v.clone(),
                        None => given.next().unwrap_or(Val::Undef),
                    })
                    .collect();
                call(inner, full, input, ctx, callee)
            }
            Func::Transform {
                location,
                update,
                delete,
                env,
            } => transform(
                args.into_iter().next().unwrap_or(Val::Undef),
                location,
                update,
                *delete,
                env,
                ctx,
            ),
        },
        Val::Regex(re) => functions::regex_match_object(re, &args),
        _ => {
            let name = match callee {
                Node::Var(v) => format!("${v}"),
                _ => "the expression".to_string(),
            };
            Err(JsonataError::eval(
                "T1006",
                format!("Attempted to invoke a non-function: {name}"),
            ))
        }
    }
}

/// Applies a function value with a fresh evaluation context (for higher-order builtins).
pub(crate) fn apply<'a>(
    f: &Val<'a>,
    args: Vec<Val<'a>>,
    input: &Val<'a>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    // A lambda declared with fewer parameters gets only those.
    let args = match f {
        Val::Func(func) => match func.as_ref() {
            Func::Lambda { def, .. } => args.into_iter().take(def.params.len()).collect(),
            Func::Partial(_, bound) => args
                .into_iter()
                .take(bound.iter().filter(|b| b.is_none()).count())
                .collect(),
            Func::Transform { .. } => args.into_iter().take(1).collect(),
            Func::Builtin(_) => args,
        },
        _ => args,
    };
    call(f, args, input, ctx, &Node::Null)
}

/// A short rendering of a value for error messages.
pub(crate) fn display(v: &Val<'_>) -> String {
    match v.to_json() {
        Ok(Some(j)) => j.to_string(),
        _ => v.type_name().to_string(),
    }
}

/// An object constructor: the items of `input` grouped by each pair's key, the value
/// evaluated once per group with the group's items as context (JSONata's group-by; a
/// constructor without a preceding path groups the context itself).
fn group<'a>(
    input: Val<'a>,
    pairs: &'a [(Node, Node)],
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    let input = input.collapse();
    let items = if input.is_array() {
        input.items()
    } else {
        vec![input]
    };
    // key → (pair index, items), in first-seen order.
    let mut groups: Vec<(String, usize, Vec<Val<'a>>)> = Vec::new();
    for item in &items {
        for (i, (k, _)) in pairs.iter().enumerate() {
            let key = eval(k, item, env, ctx)?.collapse();
            if key.is_undef() {
                continue;
            }
            let Some(key) = key.as_str().map(str::to_string) else {
                return Err(JsonataError::eval(
                    "T1003",
                    format!(
                        "Key in object structure must evaluate to a string; got: {}",
                        display(&key)
                    ),
                ));
            };
            match groups.iter_mut().find(|(k2, _, _)| *k2 == key) {
                Some((_, j, members)) if *j == i => members.push(item.clone()),
                Some(_) => {
                    return Err(JsonataError::eval(
                        "D1009",
                        format!("Multiple key definitions evaluate to same key: {key}"),
                    ));
                }
                None => groups.push((key, i, vec![item.clone()])),
            }
        }
    }
    let mut out: Vec<(String, Val<'a>)> = Vec::with_capacity(groups.len());
    for (key, i, mut members) in groups {
        let context = if members.len() == 1 {
            members.remove(0)
        } else {
            Val::Seq(Rc::new(members))
        };
        let val = eval(&pairs[i].1, &context, env, ctx)?.collapse();
        if !val.is_undef() {
            out.push((key, val));
        }
    }
    Ok(Val::Obj(Rc::new(out)))
}

/// A path step carrying a `#` or `@` binding (possibly under predicates).
fn has_binding(n: &Node) -> bool {
    match n {
        Node::IndexBind(..) | Node::FocusBind(..) => true,
        Node::Filter(b, _) => has_binding(b),
        _ => false,
    }
}

/// A step of a tuple path: the expression, its bindings, and the predicates applied to the
/// whole stream of its results.
struct TupleStep<'a> {
    core: &'a Node,
    index: Option<&'a str>,
    focus: Option<&'a str>,
    predicates: Vec<&'a Node>,
}

fn tuple_step(step: &Node) -> TupleStep<'_> {
    let mut predicates = Vec::new();
    let mut n = step;
    while let Node::Filter(b, p) = n {
        if !has_binding(b) {
            break;
        }
        predicates.push(p.as_ref());
        n = b;
    }
    predicates.reverse();
    let mut t = TupleStep {
        core: n,
        index: None,
        focus: None,
        predicates,
    };
    // `a@$x#$i`: both bindings on one step.
    loop {
        match t.core {
            Node::IndexBind(b, name) => {
                t.index = Some(name);
                t.core = b;
            }
            Node::FocusBind(b, name) => {
                t.focus = Some(name);
                t.core = b;
            }
            _ => return t,
        }
    }
}

/// A path with `#$i` / `@$v` bindings: a stream of (context, variables) tuples, so that
/// later steps, predicates and constructors see the variables bound by earlier steps.
fn tuple_path<'a>(
    steps: &'a [Node],
    input: &Val<'a>,
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    // The steps before the first binding run as an ordinary path; the first binding step
    // then sees their whole result as one context (so `#$i` numbers the whole sequence), and
    // every later step runs once per tuple.
    let first = steps.iter().position(has_binding).unwrap_or(0);
    let start = if first == 0 {
        input.clone()
    } else {
        eval_path(&steps[..first], input, env, ctx)?.collapse()
    };
    let mut tuples: Vec<(Val<'a>, Rc<Env<'a>>)> = vec![(start, env.clone())];
    for step in &steps[first..] {
        let t = tuple_step(step);
        let mut next = Vec::new();
        for (context, tenv) in &tuples {
            let r = eval(t.core, context, tenv, ctx)?;
            let mut results = Vec::new();
            push_flat(&mut results, r.collapse());
            for (j, item) in results.into_iter().enumerate() {
                let e = if t.index.is_some() || t.focus.is_some() {
                    Env::child(tenv)
                } else {
                    tenv.clone()
                };
                if let Some(name) = t.index {
                    e.set(name, Val::Num(j as f64));
                }
                let c = match t.focus {
                    Some(name) => {
                        e.set(name, item);
                        context.clone()
                    }
                    None => item,
                };
                next.push((c, e));
            }
        }
        for pred in t.predicates {
            next = filter_tuples(next, pred, ctx)?;
        }
        tuples = next;
    }
    Ok(Val::Seq(Rc::new(
        tuples.into_iter().map(|(v, _)| v).collect(),
    )))
}

#[allow(clippy::type_complexity)]
fn filter_tuples<'a>(
    tuples: Vec<(Val<'a>, Rc<Env<'a>>)>,
    pred: &'a Node,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Vec<(Val<'a>, Rc<Env<'a>>)>, JsonataError> {
    let n = tuples.len() as i64;
    let index = |f: f64| -> Option<usize> {
        let mut i = f.floor() as i64;
        if i < 0 {
            i += n;
        }
        (0..n).contains(&i).then_some(i as usize)
    };
    let mut out = Vec::new();
    for (i, (c, e)) in tuples.iter().enumerate() {
        let r = eval(pred, c, e, ctx)?.collapse();
        let keep = if let Some(f) = r.as_num() {
            index(f) == Some(i)
        } else if r.is_array()
            && !r.items().is_empty()
            && r.items().iter().all(|x| x.as_num().is_some())
        {
            r.items()
                .iter()
                .any(|x| x.as_num().and_then(index) == Some(i))
        } else {
            truthy(&r)
        };
        if keep {
            out.push((c.clone(), e.clone()));
        }
    }
    Ok(out)
}

/// `f(?, x)`: a function waiting for the `?` arguments.
fn partial<'a>(
    f: Val<'a>,
    args: &'a [Node],
    callee: &Node,
    input: &Val<'a>,
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    if !f.is_func() {
        let name = match callee {
            Node::Var(v) => format!("${v}"),
            Node::Name(n) => {
                return Err(JsonataError::eval(
                    "T1007",
                    format!("Attempted to partially apply a non-function. Did you mean ${n}?"),
                ));
            }
            _ => "the expression".to_string(),
        };
        return Err(JsonataError::eval(
            "T1008",
            format!("Attempted to partially apply a non-function: {name}"),
        ));
    }
    let mut bound = Vec::with_capacity(args.len());
    for a in args {
        bound.push(match a {
            Node::Placeholder => None,
            other => Some(eval(other, input, env, ctx)?.collapse()),
        });
    }
    Ok(Val::Func(Rc::new(Func::Partial(f, bound))))
}

/// Identity of an object value, to find the matches of a transform's location again while
/// rebuilding its input.
fn identity(v: &Val<'_>) -> Option<usize> {
    match v {
        Val::Ref(r @ Value::Object(_)) => Some(*r as *const Value as usize),
        Val::Obj(rc) => Some(Rc::as_ptr(rc) as usize),
        _ => None,
    }
}

/// What a transform does to each matched object (by identity): fields set, fields deleted.
type Changes<'a> = HashMap<usize, (Vec<(String, Val<'a>)>, Vec<String>)>;

/// `| location | update [, delete] |` applied to `target`: a copy of it in which every
/// object the location selects gets the update's fields and loses the deleted ones.
fn transform<'a>(
    target: Val<'a>,
    location: &'a Node,
    update: &'a Node,
    delete: Option<&'a Node>,
    env: &Rc<Env<'a>>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    let target = target.collapse();
    if target.is_undef() {
        return Ok(Val::Undef);
    }
    let matches = eval(location, &target, env, ctx)?.collapse();
    let mut changes: Changes<'a> = HashMap::new();
    for m in matches.items() {
        let Some(id) = identity(&m) else { continue };
        let upd = eval(update, &m, env, ctx)?.collapse();
        let set = match &upd {
            Val::Undef => Vec::new(),
            v if v.is_object() => v.entries(),
            other => {
                return Err(JsonataError::eval(
                    "T2011",
                    format!(
                        "The insert/update clause of the transform expression must evaluate to an object: {}",
                        display(other)
                    ),
                ));
            }
        };
        let mut removed = Vec::new();
        if let Some(d) = delete {
            let dv = eval(d, &m, env, ctx)?.collapse();
            if !dv.is_undef() {
                let names: Option<Vec<String>> = dv
                    .items()
                    .iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect();
                removed = names.ok_or_else(|| {
                    JsonataError::eval(
                        "T2012",
                        format!(
                            "The delete clause of the transform expression must evaluate to a string or array of strings: {}",
                            display(&dv)
                        ),
                    )
                })?;
            }
        }
        let entry = changes.entry(id).or_default();
        entry.0.extend(set);
        entry.1.extend(removed);
    }
    Ok(rebuild(&target, &changes))
}

fn rebuild<'a>(v: &Val<'a>, changes: &Changes<'a>) -> Val<'a> {
    if changes.is_empty() {
        return v.clone();
    }
    if v.is_object() {
        let mut entries: Vec<(String, Val<'a>)> = v
            .entries()
            .into_iter()
            .map(|(k, c)| {
                let c = rebuild(&c, changes);
                (k, c)
            })
            .collect();
        if let Some((set, removed)) = identity(v).and_then(|id| changes.get(&id)) {
            for (k, val) in set {
                match entries.iter_mut().find(|(k2, _)| k2 == k) {
                    Some(e) => e.1 = val.clone(),
                    None => entries.push((k.clone(), val.clone())),
                }
            }
            entries.retain(|(k, _)| !removed.contains(k));
        }
        return Val::Obj(Rc::new(entries));
    }
    match v {
        Val::Ref(Value::Array(_)) | Val::Arr(..) | Val::Seq(_) => {
            let cons = matches!(v, Val::Arr(_, true));
            let items = v.items().iter().map(|i| rebuild(i, changes)).collect();
            if matches!(v, Val::Seq(_)) {
                Val::Seq(Rc::new(items))
            } else {
                Val::Arr(Rc::new(items), cons)
            }
        }
        other => other.clone(),
    }
}
