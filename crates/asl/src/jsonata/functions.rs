//! The function library: JSONata's standard functions and the ones Step Functions adds.

use std::rc::Rc;

use serde_json::Value;

use super::JsonataError;
use super::eval::{Ctx, Val, apply, display, equal, num_to_json, truthy};

const NAMES: &[&str] = &[
    "string",
    "number",
    "boolean",
    "not",
    "exists",
    "type",
    "count",
    "sum",
    "max",
    "min",
    "average",
    "length",
    "substring",
    "substringBefore",
    "substringAfter",
    "uppercase",
    "lowercase",
    "trim",
    "pad",
    "contains",
    "split",
    "join",
    "replace",
    "match",
    "keys",
    "values",
    "lookup",
    "merge",
    "spread",
    "each",
    "map",
    "filter",
    "reduce",
    "single",
    "sort",
    "reverse",
    "append",
    "distinct",
    "zip",
    "shuffle",
    "now",
    "millis",
    "fromMillis",
    "toMillis",
    "round",
    "floor",
    "ceil",
    "abs",
    "power",
    "sqrt",
    "error",
    "assert",
    "base64encode",
    "base64decode",
    "encodeUrlComponent",
    "decodeUrlComponent",
    "encodeUrl",
    "decodeUrl",
    "sift",
    "partition",
    "range",
    "hash",
    "random",
    "uuid",
    "parse",
    "formatNumber",
    "formatInteger",
    "formatBase",
    "eval",
];

/// The longest string `$pad` builds (a guard against a width that would exhaust memory).
const MAX_STRING: usize = 10_000_000;

/// The builtin named `name`, if any.
pub(crate) fn builtin(name: &str) -> Option<&'static str> {
    NAMES.iter().copied().find(|n| *n == name)
}

fn arg_err(name: &str, i: usize) -> JsonataError {
    JsonataError::eval(
        "T0410",
        format!(
            "Argument {} of function \"{name}\" does not match function signature",
            i + 1
        ),
    )
}

/// `$string` of a value (`None` for undefined).
pub(crate) fn to_string(v: &Val<'_>) -> Result<Option<String>, JsonataError> {
    Ok(Some(match v {
        Val::Undef => return Ok(None),
        v if v.as_str().is_some() => v.as_str().unwrap_or_default().to_string(),
        Val::Func(_) | Val::Regex(_) => String::new(),
        v => match v.as_num() {
            Some(n) => format_number(n)?,
            None => match v.to_json()? {
                Some(j) => serde_json::to_string(&round_numbers(j)).unwrap_or_default(),
                None => String::new(),
            },
        },
    }))
}

/// Numbers as JSONata prints them: 15 significant digits, integers without a fraction.
fn format_number(n: f64) -> Result<String, JsonataError> {
    if !n.is_finite() {
        return Err(JsonataError::eval(
            "D3001",
            "Attempting to invoke string function on Infinity or NaN",
        ));
    }
    let rounded: f64 = format!("{n:.14e}").parse().unwrap_or(n);
    Ok(match num_to_json(rounded) {
        Ok(j) => j.to_string(),
        Err(_) => rounded.to_string(),
    })
}

fn round_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            let r: f64 = format!("{f:.14e}").parse().unwrap_or(f);
            num_to_json(r).map_or(Value::Null, Value::Number)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(round_numbers).collect()),
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, round_numbers(v))).collect())
        }
        other => other,
    }
}

fn nums(name: &str, v: &Val<'_>) -> Result<Vec<f64>, JsonataError> {
    v.items()
        .iter()
        .map(|x| x.as_num().ok_or_else(|| arg_err(name, 0)))
        .collect()
}

fn str_arg<'v>(name: &str, args: &'v [Val<'_>], i: usize) -> Result<Option<&'v str>, JsonataError> {
    match args.get(i) {
        None | Some(Val::Undef) => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| arg_err(name, i)),
    }
}

fn num_arg(name: &str, args: &[Val<'_>], i: usize) -> Result<Option<f64>, JsonataError> {
    match args.get(i) {
        None | Some(Val::Undef) => Ok(None),
        Some(v) => v.as_num().map(Some).ok_or_else(|| arg_err(name, i)),
    }
}

fn chars_slice(s: &str, start: f64, len: Option<f64>) -> String {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len() as i64;
    let mut st = start.round() as i64;
    if st < 0 {
        st = (n + st).max(0);
    }
    let st = st.min(n) as usize;
    let end = match len {
        None => chars.len(),
        Some(l) if l <= 0.0 => st,
        Some(l) => st.saturating_add(l.round() as usize).min(chars.len()),
    };
    chars[st..end].iter().collect()
}

fn round_half_even(x: f64, precision: i32) -> f64 {
    let factor = 10f64.powi(precision);
    let v = x * factor;
    let r = v.round();
    let r = if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    };
    r / factor
}

/// A regular expression applied as a function: the first match object.
pub(crate) fn regex_match_object<'a>(
    re: &regex::Regex,
    args: &[Val<'a>],
) -> Result<Val<'a>, JsonataError> {
    let Some(s) = args.first().and_then(Val::as_str) else {
        return Ok(Val::Undef);
    };
    Ok(match re.captures(s) {
        None => Val::Undef,
        Some(c) => match_object(&c, s),
    })
}

fn match_object<'a>(c: &regex::Captures<'_>, _s: &str) -> Val<'a> {
    let m = c.get(0);
    let groups: Vec<Val<'a>> = c
        .iter()
        .skip(1)
        .map(|g| Val::str(g.map_or("", |g| g.as_str())))
        .collect();
    Val::Obj(Rc::new(vec![
        ("match".into(), Val::str(m.map_or("", |m| m.as_str()))),
        ("index".into(), Val::Num(m.map_or(0, |m| m.start()) as f64)),
        ("groups".into(), Val::arr(groups)),
    ]))
}

fn hash_hex(algorithm: &str, data: &[u8]) -> Option<String> {
    use sha2::Digest;
    let bytes: Vec<u8> = match algorithm {
        "MD5" => md5::Md5::digest(data).to_vec(),
        "SHA-1" => sha1::Sha1::digest(data).to_vec(),
        "SHA-256" => sha2::Sha256::digest(data).to_vec(),
        "SHA-384" => sha2::Sha384::digest(data).to_vec(),
        "SHA-512" => sha2::Sha512::digest(data).to_vec(),
        _ => return None,
    };
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_millis() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64
}

#[allow(clippy::too_many_lines)]
pub(crate) fn call_builtin<'a>(
    name: &str,
    args: Vec<Val<'a>>,
    input: &Val<'a>,
    ctx: &mut Ctx<'a, '_>,
) -> Result<Val<'a>, JsonataError> {
    let a0 = args.first().cloned().unwrap_or(Val::Undef);
    let undef0 = a0.is_undef();
    Ok(match name {
        "string" => {
            // With no argument, the context.
            let v = if args.is_empty() { input.clone() } else { a0 };
            match to_string(&v)? {
                Some(s) => Val::str(&s),
                None => Val::Undef,
            }
        }
        "number" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            if let Some(n) = a0.as_num() {
                return Ok(Val::Num(n));
            }
            match a0.clone().norm() {
                Val::Bool(b) => Val::Num(if b { 1.0 } else { 0.0 }),
                Val::Str(s) => {
                    let t = s.trim();
                    let parsed = if let Some(h) = t.strip_prefix("0x") {
                        i64::from_str_radix(h, 16).ok().map(|n| n as f64)
                    } else {
                        serde_json::from_str::<f64>(t).ok()
                    };
                    match parsed {
                        Some(n) => Val::Num(n),
                        None => {
                            return Err(JsonataError::eval(
                                "D3030",
                                format!("Unable to cast value to a number: \"{s}\""),
                            ));
                        }
                    }
                }
                _ => {
                    return Err(JsonataError::eval(
                        "D3030",
                        format!("Unable to cast value to a number: {}", display(&a0)),
                    ));
                }
            }
        }
        "boolean" => {
            if undef0 {
                Val::Undef
            } else {
                Val::Bool(truthy(&a0))
            }
        }
        "not" => {
            if undef0 {
                Val::Undef
            } else {
                Val::Bool(!truthy(&a0))
            }
        }
        "exists" => Val::Bool(!undef0),
        "type" => {
            if undef0 {
                Val::Undef
            } else {
                Val::str(a0.type_name())
            }
        }
        "count" => Val::Num(a0.items().len() as f64),
        "sum" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            Val::Num(nums(name, &a0)?.iter().sum())
        }
        "max" | "min" => {
            let v = nums(name, &a0)?;
            if v.is_empty() {
                return Ok(Val::Undef);
            }
            let f = if name == "max" { f64::max } else { f64::min };
            Val::Num(v.iter().copied().fold(v[0], f))
        }
        "average" => {
            let v = nums(name, &a0)?;
            if v.is_empty() {
                return Ok(Val::Undef);
            }
            Val::Num(v.iter().sum::<f64>() / v.len() as f64)
        }
        "length" => match str_arg(name, &args, 0)? {
            Some(s) => Val::Num(s.chars().count() as f64),
            None => Val::Undef,
        },
        "substring" => match str_arg(name, &args, 0)? {
            Some(s) => {
                let start = num_arg(name, &args, 1)?.ok_or_else(|| arg_err(name, 1))?;
                Val::str(&chars_slice(s, start, num_arg(name, &args, 2)?))
            }
            None => Val::Undef,
        },
        "substringBefore" | "substringAfter" => {
            let (Some(s), Some(chars)) = (str_arg(name, &args, 0)?, str_arg(name, &args, 1)?)
            else {
                return Ok(if undef0 { Val::Undef } else { a0 });
            };
            match s.find(chars) {
                None => Val::str(s),
                Some(i) if name == "substringBefore" => Val::str(&s[..i]),
                Some(i) => Val::str(&s[i + chars.len()..]),
            }
        }
        "uppercase" => str_arg(name, &args, 0)?.map_or(Val::Undef, |s| Val::str(&s.to_uppercase())),
        "lowercase" => str_arg(name, &args, 0)?.map_or(Val::Undef, |s| Val::str(&s.to_lowercase())),
        "trim" => str_arg(name, &args, 0)?.map_or(Val::Undef, |s| {
            Val::str(&s.split_whitespace().collect::<Vec<_>>().join(" "))
        }),
        "pad" => {
            let Some(s) = str_arg(name, &args, 0)? else {
                return Ok(Val::Undef);
            };
            let width = num_arg(name, &args, 1)?.ok_or_else(|| arg_err(name, 1))?;
            let pad = str_arg(name, &args, 2)?.unwrap_or(" ");
            let len = s.chars().count();
            let target = width.abs() as usize;
            if target > MAX_STRING {
                return Err(JsonataError::eval(
                    "D3013",
                    format!("The width argument of $pad must not exceed {MAX_STRING}"),
                ));
            }
            if len >= target || pad.is_empty() {
                return Ok(Val::str(s));
            }
            let fill: String = pad.chars().cycle().take(target - len).collect();
            if width < 0.0 {
                Val::str(&format!("{fill}{s}"))
            } else {
                Val::str(&format!("{s}{fill}"))
            }
        }
        "contains" => {
            let Some(s) = str_arg(name, &args, 0)? else {
                return Ok(Val::Undef);
            };
            match args.get(1) {
                Some(Val::Regex(re)) => Val::Bool(re.is_match(s)),
                Some(p) => match p.as_str() {
                    Some(p) => Val::Bool(s.contains(p)),
                    None => return Err(arg_err(name, 1)),
                },
                None => return Err(arg_err(name, 1)),
            }
        }
        "split" => {
            let Some(s) = str_arg(name, &args, 0)? else {
                return Ok(Val::Undef);
            };
            let limit = num_arg(name, &args, 2)?;
            if limit.is_some_and(|l| l < 0.0) {
                return Err(JsonataError::eval(
                    "D3020",
                    "Third argument of split function must evaluate to a positive number",
                ));
            }
            let parts: Vec<String> = match args.get(1) {
                Some(Val::Regex(re)) => re.split(s).map(str::to_string).collect(),
                Some(p) => match p.as_str() {
                    Some("") => s.chars().map(String::from).collect(),
                    Some(p) => s.split(p).map(str::to_string).collect(),
                    None => return Err(arg_err(name, 1)),
                },
                None => return Err(arg_err(name, 1)),
            };
            let take = limit.map_or(parts.len(), |l| l as usize);
            Val::arr(parts.iter().take(take).map(|p| Val::str(p)).collect())
        }
        "join" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            let sep = str_arg(name, &args, 1)?.unwrap_or("");
            let mut parts = Vec::new();
            for x in a0.items() {
                parts.push(x.as_str().ok_or_else(|| arg_err(name, 0))?.to_string());
            }
            Val::str(&parts.join(sep))
        }
        "replace" => {
            let Some(s) = str_arg(name, &args, 0)? else {
                return Ok(Val::Undef);
            };
            let limit = num_arg(name, &args, 3)?.map(|l| l as usize);
            let Some(rep) = args.get(2) else {
                return Err(arg_err(name, 2));
            };
            match args.get(1) {
                Some(Val::Regex(re)) => {
                    let rep_s = rep.as_str().ok_or_else(|| arg_err(name, 2))?;
                    // JSONata writes groups as $1; Rust's regex as ${1}.
                    let rust_rep = js_replacement(rep_s);
                    let out = match limit {
                        Some(l) => re.replacen(s, l, rust_rep.as_str()).into_owned(),
                        None => re.replace_all(s, rust_rep.as_str()).into_owned(),
                    };
                    Val::str(&out)
                }
                Some(p) => {
                    let p = p.as_str().ok_or_else(|| arg_err(name, 1))?;
                    if p.is_empty() {
                        return Err(JsonataError::eval(
                            "D3010",
                            "Second argument of replace function cannot be an empty string",
                        ));
                    }
                    let rep_s = rep.as_str().ok_or_else(|| arg_err(name, 2))?;
                    Val::str(&match limit {
                        Some(l) => s.replacen(p, rep_s, l),
                        None => s.replace(p, rep_s),
                    })
                }
                None => return Err(arg_err(name, 1)),
            }
        }
        "match" => {
            let Some(s) = str_arg(name, &args, 0)? else {
                return Ok(Val::Undef);
            };
            let Some(Val::Regex(re)) = args.get(1) else {
                return Err(arg_err(name, 1));
            };
            let limit = num_arg(name, &args, 2)?.map_or(usize::MAX, |l| l as usize);
            let found: Vec<Val<'a>> = re
                .captures_iter(s)
                .take(limit)
                .map(|c| match_object(&c, s))
                .collect();
            Val::Seq(Rc::new(found))
        }
        "keys" => {
            let mut keys: Vec<String> = Vec::new();
            for item in a0.items() {
                for (k, _) in item.entries() {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            Val::Seq(Rc::new(keys.iter().map(|k| Val::str(k)).collect()))
        }
        "values" => Val::Seq(Rc::new(
            a0.items()
                .iter()
                .flat_map(|i| i.entries().into_iter().map(|(_, v)| v))
                .collect(),
        )),
        "lookup" => {
            let key = str_arg(name, &args, 1)?.ok_or_else(|| arg_err(name, 1))?;
            let mut out = Vec::new();
            for item in a0.items() {
                let v = item.field(key);
                if !v.is_undef() {
                    out.push(v);
                }
            }
            Val::Seq(Rc::new(out))
        }
        "merge" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            let mut out: Vec<(String, Val<'a>)> = Vec::new();
            for item in a0.items() {
                if !item.is_object() {
                    return Err(arg_err(name, 0));
                }
                for (k, v) in item.entries() {
                    match out.iter_mut().find(|(k2, _)| *k2 == k) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
            }
            Val::Obj(Rc::new(out))
        }
        "spread" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            let mut out = Vec::new();
            for item in a0.items() {
                if item.is_object() {
                    for (k, v) in item.entries() {
                        out.push(Val::Obj(Rc::new(vec![(k, v)])));
                    }
                } else {
                    out.push(item);
                }
            }
            Val::Seq(Rc::new(out))
        }
        "each" => {
            let f = args.get(1).cloned().unwrap_or(Val::Undef);
            let mut out = Vec::new();
            for (k, v) in a0.entries() {
                let r = apply(&f, vec![v, Val::str(&k), a0.clone()], input, ctx)?;
                if !r.is_undef() {
                    out.push(r);
                }
            }
            Val::Seq(Rc::new(out))
        }
        "map" | "filter" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            let f = args.get(1).cloned().unwrap_or(Val::Undef);
            if !f.is_func() {
                return Err(arg_err(name, 1));
            }
            let items = a0.items();
            let whole = Val::arr(items.clone());
            let mut out = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let r = apply(
                    &f,
                    vec![item.clone(), Val::Num(i as f64), whole.clone()],
                    input,
                    ctx,
                )?;
                if name == "map" {
                    if !r.is_undef() {
                        out.push(r);
                    }
                } else if truthy(&r) {
                    out.push(item);
                }
            }
            Val::Seq(Rc::new(out))
        }
        "single" => {
            let f = args.get(1).cloned();
            let mut found = None;
            for (i, item) in a0.items().into_iter().enumerate() {
                let keep = match &f {
                    Some(f) => truthy(&apply(
                        f,
                        vec![item.clone(), Val::Num(i as f64)],
                        input,
                        ctx,
                    )?),
                    None => true,
                };
                if keep {
                    if found.is_some() {
                        return Err(JsonataError::eval(
                            "D3138",
                            "The $single() function expected exactly 1 matching result.  Instead it matched more.",
                        ));
                    }
                    found = Some(item);
                }
            }
            found.ok_or_else(|| {
                JsonataError::eval(
                    "D3139",
                    "The $single() function expected exactly 1 matching result.  Instead it matched 0.",
                )
            })?
        }
        "reduce" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            let f = args.get(1).cloned().unwrap_or(Val::Undef);
            let mut items = a0.items().into_iter();
            let mut acc = match args.get(2) {
                Some(init) if !init.is_undef() => init.clone(),
                _ => items.next().unwrap_or(Val::Undef),
            };
            for (i, item) in items.enumerate() {
                acc = apply(&f, vec![acc, item, Val::Num(i as f64)], input, ctx)?;
            }
            acc
        }
        "sift" => {
            let f = args.get(1).cloned().unwrap_or(Val::Undef);
            let mut out = Vec::new();
            for (k, v) in a0.entries() {
                if truthy(&apply(
                    &f,
                    vec![v.clone(), Val::str(&k), a0.clone()],
                    input,
                    ctx,
                )?) {
                    out.push((k, v));
                }
            }
            if out.is_empty() {
                Val::Undef
            } else {
                Val::Obj(Rc::new(out))
            }
        }
        "sort" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            let mut items = a0.items();
            match args.get(1) {
                Some(f) => {
                    // Insertion-stable merge using the comparator ("a after b" → swap).
                    let mut sorted: Vec<Val<'a>> = Vec::with_capacity(items.len());
                    for item in items {
                        let mut pos = sorted.len();
                        while pos > 0 {
                            let after = truthy(&apply(
                                f,
                                vec![sorted[pos - 1].clone(), item.clone()],
                                input,
                                ctx,
                            )?);
                            if after {
                                pos -= 1;
                            } else {
                                break;
                            }
                        }
                        sorted.insert(pos, item);
                    }
                    items = sorted;
                }
                None => {
                    if items.iter().all(|x| x.as_num().is_some()) {
                        items.sort_by(|a, b| {
                            a.as_num()
                                .partial_cmp(&b.as_num())
                                .unwrap_or(std::cmp::Ordering::Equal)
                        });
                    } else if items.iter().all(|x| x.as_str().is_some()) {
                        items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                    } else {
                        return Err(JsonataError::eval(
                            "D3070",
                            "The single argument form of the sort function can only be applied to an array of strings or an array of numbers.  Use the second argument to specify a comparison function",
                        ));
                    }
                }
            }
            Val::arr(items)
        }
        "reverse" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            let mut items = a0.items();
            items.reverse();
            Val::arr(items)
        }
        "shuffle" => {
            let mut items = a0.items();
            let n = items.len();
            for i in (1..n).rev() {
                let j = (uuid::Uuid::new_v4().as_u128() % (i as u128 + 1)) as usize;
                items.swap(i, j);
            }
            Val::arr(items)
        }
        "append" => {
            let a1 = args.get(1).cloned().unwrap_or(Val::Undef);
            if undef0 {
                return Ok(a1);
            }
            if a1.is_undef() {
                return Ok(a0);
            }
            let mut items = a0.items();
            items.extend(a1.items());
            Val::arr(items)
        }
        "distinct" => {
            if undef0 {
                return Ok(Val::Undef);
            }
            if !a0.is_array() {
                return Ok(a0);
            }
            let mut out: Vec<Val<'a>> = Vec::new();
            for x in a0.items() {
                if !out.iter().any(|y| equal(&x, y)) {
                    out.push(x);
                }
            }
            Val::arr(out)
        }
        "zip" => {
            let lists: Vec<Vec<Val<'a>>> = args.iter().map(Val::items).collect();
            let n = lists.iter().map(Vec::len).min().unwrap_or(0);
            Val::arr(
                (0..n)
                    .map(|i| Val::arr(lists.iter().map(|l| l[i].clone()).collect()))
                    .collect(),
            )
        }
        "now" => Val::str(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "millis" => Val::Num(now_millis()),
        "fromMillis" => match num_arg(name, &args, 0)? {
            None => Val::Undef,
            Some(ms) => {
                let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
                    .ok_or_else(|| arg_err(name, 0))?;
                Val::str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            }
        },
        "toMillis" => match str_arg(name, &args, 0)? {
            None => Val::Undef,
            Some(s) => {
                let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| {
                    JsonataError::eval(
                        "D3110",
                        format!("Failed to parse the timestamp {s}: it is not ISO 8601"),
                    )
                })?;
                Val::Num(t.timestamp_millis() as f64)
            }
        },
        "round" => match num_arg(name, &args, 0)? {
            None => Val::Undef,
            Some(x) => {
                let p = num_arg(name, &args, 1)?.unwrap_or(0.0) as i32;
                Val::Num(round_half_even(x, p))
            }
        },
        "floor" => num_arg(name, &args, 0)?.map_or(Val::Undef, |x| Val::Num(x.floor())),
        "ceil" => num_arg(name, &args, 0)?.map_or(Val::Undef, |x| Val::Num(x.ceil())),
        "abs" => num_arg(name, &args, 0)?.map_or(Val::Undef, |x| Val::Num(x.abs())),
        "sqrt" => match num_arg(name, &args, 0)? {
            None => Val::Undef,
            Some(x) if x < 0.0 => {
                return Err(JsonataError::eval(
                    "D3060",
                    format!("The sqrt function cannot be applied to a negative number: {x}"),
                ));
            }
            Some(x) => Val::Num(x.sqrt()),
        },
        "power" => {
            let (Some(b), Some(e)) = (num_arg(name, &args, 0)?, num_arg(name, &args, 1)?) else {
                return Ok(Val::Undef);
            };
            let r = b.powf(e);
            if !r.is_finite() {
                return Err(JsonataError::eval(
                    "D3061",
                    format!(
                        "The power function has resulted in a value that cannot be represented as a JSON number: base={b}, exponent={e}"
                    ),
                ));
            }
            Val::Num(r)
        }
        "error" => {
            return Err(JsonataError::eval(
                "D3137",
                str_arg(name, &args, 0)?
                    .unwrap_or("$error() function evaluated")
                    .to_string(),
            ));
        }
        "assert" => {
            if !truthy(&a0) {
                return Err(JsonataError::eval(
                    "D3141",
                    str_arg(name, &args, 1)?
                        .unwrap_or("$assert() statement failed")
                        .to_string(),
                ));
            }
            Val::Undef
        }
        "base64encode" => str_arg(name, &args, 0)?.map_or(Val::Undef, |s| {
            use base64::Engine;
            Val::str(&base64::engine::general_purpose::STANDARD.encode(s))
        }),
        "base64decode" => match str_arg(name, &args, 0)? {
            None => Val::Undef,
            Some(s) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|_| arg_err(name, 0))?;
                Val::str(&String::from_utf8_lossy(&bytes))
            }
        },
        "encodeUrlComponent" | "encodeUrl" => str_arg(name, &args, 0)?.map_or(Val::Undef, |s| {
            let keep: &[u8] = if name == "encodeUrl" {
                b"-_.!~*'();/?:@&=+$,#"
            } else {
                b"-_.!~*'()"
            };
            let mut out = String::new();
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || keep.contains(&b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            Val::str(&out)
        }),
        "decodeUrlComponent" | "decodeUrl" => match str_arg(name, &args, 0)? {
            None => Val::Undef,
            Some(s) => {
                let bytes = s.as_bytes();
                let mut out = Vec::with_capacity(bytes.len());
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'%' && i + 2 < bytes.len() {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                        let b = u8::from_str_radix(hex, 16).map_err(|_| {
                            JsonataError::eval(
                                "D3140",
                                format!("Malformed URL passed to ${name}(): \"{s}\""),
                            )
                        })?;
                        out.push(b);
                        i += 3;
                    } else {
                        out.push(bytes[i]);
                        i += 1;
                    }
                }
                Val::str(&String::from_utf8_lossy(&out))
            }
        },
        // Step Functions' additions.
        "partition" => {
            let size = num_arg(name, &args, 1)?.ok_or_else(|| arg_err(name, 1))?;
            if size < 1.0 || size.fract() != 0.0 {
                return Err(JsonataError::eval(
                    "States.QueryEvaluationError",
                    "The chunk size argument of $partition must be a positive integer",
                ));
            }
            let items = a0.items();
            Val::arr(
                items
                    .chunks(size as usize)
                    .map(|c| Val::arr(c.to_vec()))
                    .collect(),
            )
        }
        "range" => {
            let (Some(start), Some(end), Some(step)) = (
                num_arg(name, &args, 0)?,
                num_arg(name, &args, 1)?,
                num_arg(name, &args, 2)?,
            ) else {
                return Err(arg_err(name, 0));
            };
            if step == 0.0 {
                return Err(JsonataError::eval(
                    "States.QueryEvaluationError",
                    "The step argument of $range must not be 0",
                ));
            }
            let mut out = Vec::new();
            let mut x = start;
            while (step > 0.0 && x <= end) || (step < 0.0 && x >= end) {
                out.push(Val::Num(x));
                if out.len() > 1000 {
                    return Err(JsonataError::eval(
                        "States.QueryEvaluationError",
                        "$range produces at most 1000 elements",
                    ));
                }
                x += step;
            }
            Val::Seq(Rc::new(out))
        }
        "hash" => {
            let (Some(data), Some(alg)) = (str_arg(name, &args, 0)?, str_arg(name, &args, 1)?)
            else {
                return Err(arg_err(name, 0));
            };
            Val::str(&hash_hex(alg, data.as_bytes()).ok_or_else(|| {
                JsonataError::eval(
                    "States.QueryEvaluationError",
                    format!("The hash algorithm '{alg}' is not supported; use MD5, SHA-1, SHA-256, SHA-384 or SHA-512"),
                )
            })?)
        }
        "random" => {
            let seed = num_arg(name, &args, 0)?;
            let bits = match seed {
                Some(s) => {
                    use sha2::Digest;
                    let d = sha2::Sha256::digest(s.to_bits().to_le_bytes());
                    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
                }
                None => uuid::Uuid::new_v4().as_u64_pair().0,
            };
            Val::Num((bits >> 11) as f64 / (1u64 << 53) as f64)
        }
        "uuid" => Val::str(&uuid::Uuid::new_v4().to_string()),
        "parse" => match str_arg(name, &args, 0)? {
            None => Val::Undef,
            Some(s) => {
                let v: Value = serde_json::from_str(s).map_err(|e| {
                    JsonataError::eval(
                        "States.QueryEvaluationError",
                        format!("The argument of $parse is not valid JSON: {e}"),
                    )
                })?;
                json_val(v)
            }
        },
        "formatNumber" => {
            let Some(n) = num_arg(name, &args, 0)? else {
                return Ok(Val::Undef);
            };
            let picture = str_arg(name, &args, 1)?.ok_or_else(|| arg_err(name, 1))?;
            let mut format = super::format::DecimalFormat::default();
            match args.get(2) {
                None | Some(Val::Undef) => {}
                Some(o) if o.is_object() => {
                    for (k, v) in o.entries() {
                        let v = v.as_str().ok_or_else(|| arg_err(name, 2))?.to_string();
                        format.set(&k, &v)?;
                    }
                }
                Some(_) => return Err(arg_err(name, 2)),
            }
            Val::str(&super::format::format_number(n, picture, &format)?)
        }
        "formatInteger" => {
            let Some(n) = num_arg(name, &args, 0)? else {
                return Ok(Val::Undef);
            };
            let picture = str_arg(name, &args, 1)?.ok_or_else(|| arg_err(name, 1))?;
            Val::str(&super::format::format_integer(n, picture)?)
        }
        "formatBase" => {
            let Some(n) = num_arg(name, &args, 0)? else {
                return Ok(Val::Undef);
            };
            let radix = num_arg(name, &args, 1)?.unwrap_or(10.0);
            Val::str(&super::format::format_base(n, radix)?)
        }
        "eval" => {
            let Some(text) = str_arg(name, &args, 0)? else {
                return Ok(Val::Undef);
            };
            let expr = super::Expr::parse(text).map_err(|e| {
                JsonataError::eval(
                    "D3120",
                    format!(
                        "Syntax error in expression passed to function eval: {}",
                        e.message
                    ),
                )
            })?;
            let context = match args.get(1) {
                Some(v) => v.clone(),
                None => input.clone(),
            };
            let context = context.to_json()?;
            let out = super::eval::run_at(
                &expr.root,
                context.as_ref(),
                ctx.bindings,
                ctx.depth + 20,
            )
            .map_err(|e| {
                if e.code == "U1001" {
                    return e;
                }
                JsonataError::eval(
                    "D3121",
                    format!(
                        "Dynamic error evaluating the expression passed to function eval: {}",
                        e.message
                    ),
                )
            })?;
            match out {
                super::Outcome::Value(v) => json_val(v),
                super::Outcome::Undefined | super::Outcome::Function => Val::Undef,
            }
        }
        other => {
            return Err(JsonataError::eval(
                "T1006",
                format!("Attempted to invoke a non-function: ${other}"),
            ));
        }
    })
}

/// An owned JSON value as a JSONata value.
fn json_val<'a>(v: Value) -> Val<'a> {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(b),
        Value::Number(n) => Val::Num(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Val::str(&s),
        Value::Array(a) => Val::arr(a.into_iter().map(json_val).collect()),
        Value::Object(m) => Val::Obj(Rc::new(
            m.into_iter().map(|(k, v)| (k, json_val(v))).collect(),
        )),
    }
}

/// JSONata's `$1` group references as Rust regex's `${1}`; `$$` is a literal dollar.
fn js_replacement(rep: &str) -> String {
    let mut out = String::with_capacity(rep.len());
    let mut chars = rep.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push_str("$$");
            }
            Some(d) if d.is_ascii_digit() => {
                let mut n = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            _ => out.push_str("$$"),
        }
    }
    out
}
