//! Intrinsic functions (`States.Format(...)` and friends) in JSONPath payload templates.
//!
//! Results follow AWS, which runs them on the JVM: `States.Format` renders objects the way
//! Java's `Map.toString` does (`{a=1, b=[]}`) and `States.MathAdd` rounds each argument with
//! `Math.round` (half up) before adding.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::context::Ctx;
use crate::jsonpath::JsonPath;

/// A parsed intrinsic call.
#[derive(Debug, Clone, PartialEq)]
pub struct Intrinsic {
    name: String,
    args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    /// A string literal: its value and, for `States.Format`, which `{` / `}` were escaped.
    Str {
        value: String,
        raw_braces: Vec<bool>,
    },
    Literal(Value),
    Path(JsonPath),
    Call(Intrinsic),
}

const FUNCTIONS: &[&str] = &[
    "States.Format",
    "States.StringToJson",
    "States.JsonToString",
    "States.Array",
    "States.ArrayPartition",
    "States.ArrayContains",
    "States.ArrayRange",
    "States.ArrayGetItem",
    "States.ArrayLength",
    "States.ArrayUnique",
    "States.Base64Encode",
    "States.Base64Decode",
    "States.JsonMerge",
    "States.MathRandom",
    "States.MathAdd",
    "States.StringSplit",
    "States.UUID",
    "States.Hash",
];

/// Whether a `.$` value is written as an intrinsic call rather than a path.
pub fn looks_like_intrinsic(text: &str) -> bool {
    text.trim_start().starts_with("States.")
}

impl Intrinsic {
    /// Parses `States.Name(args...)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut p = P {
            s: text.as_bytes(),
            pos: 0,
        };
        let call = p.call()?;
        p.ws();
        if p.pos != p.s.len() {
            return Err(format!(
                "unexpected text after the call at offset {}",
                p.pos
            ));
        }
        Ok(call)
    }

    /// Evaluates against the effective input and the context object.
    pub(crate) fn evaluate(&self, input: &Value, context: &Ctx<'_>) -> Result<Value, String> {
        let mut args = Vec::with_capacity(self.args.len());
        for a in &self.args {
            args.push(match a {
                Arg::Str { value, .. } => Value::String(value.clone()),
                Arg::Literal(v) => v.clone(),
                Arg::Path(p) => p.lookup(input, context).ok_or_else(|| {
                    format!(
                        "The JsonPath '{}' could not be found in the input",
                        p.text()
                    )
                })?,
                Arg::Call(c) => c.evaluate(input, context)?,
            });
        }
        self.apply(&args)
    }

    fn arity(&self, args: &[Value], n: usize) -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "{} takes {n} arguments but got {}",
                self.name,
                args.len()
            ))
        }
    }

    fn apply(&self, args: &[Value]) -> Result<Value, String> {
        let name = self.name.as_str();
        let want_str = |v: &Value, what: &str| -> Result<String, String> {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{name}: {what} must be a string"))
        };
        let want_arr = |v: &Value| -> Result<Vec<Value>, String> {
            v.as_array()
                .cloned()
                .ok_or_else(|| format!("{name}: argument must be an array"))
        };
        let want_int = |v: &Value| -> Result<i64, String> {
            v.as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .ok_or_else(|| format!("{name}: argument must be an integer"))
        };
        match name {
            "States.Format" => {
                match (self.args.first(), args.first()) {
                    (Some(Arg::Str { value, raw_braces }), _) => {
                        format(value, raw_braces, args.get(1..).unwrap_or_default())
                    }
                    // A template from a path or a variable: every `{}` is a placeholder.
                    (Some(Arg::Path(_)), Some(Value::String(t))) => {
                        format(t, &[], args.get(1..).unwrap_or_default())
                    }
                    _ => Err("States.Format: the first argument must be a string".into()),
                }
            }
            "States.StringToJson" => {
                self.arity(args, 1)?;
                let s = want_str(&args[0], "argument")?;
                serde_json::from_str(&s).map_err(|e| format!("States.StringToJson: {e}"))
            }
            "States.JsonToString" => {
                self.arity(args, 1)?;
                serde_json::to_string(&args[0])
                    .map(Value::String)
                    .map_err(|e| e.to_string())
            }
            "States.Array" => Ok(Value::Array(args.to_vec())),
            "States.ArrayPartition" => {
                self.arity(args, 2)?;
                let arr = want_arr(&args[0])?;
                let size = want_int(&args[1])?;
                let size = usize::try_from(size)
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or("States.ArrayPartition: chunk size must be positive")?;
                Ok(Value::Array(
                    arr.chunks(size).map(|c| Value::Array(c.to_vec())).collect(),
                ))
            }
            "States.ArrayContains" => {
                self.arity(args, 2)?;
                Ok(Value::Bool(
                    want_arr(&args[0])?.iter().any(|v| json_eq(v, &args[1])),
                ))
            }
            "States.ArrayRange" => {
                self.arity(args, 3)?;
                let (start, end, step) = (
                    want_int(&args[0])?,
                    want_int(&args[1])?,
                    want_int(&args[2])?,
                );
                if step == 0 {
                    return Err("States.ArrayRange: step must not be 0".into());
                }
                let mut out = Vec::new();
                let mut i = start;
                while (step > 0 && i <= end) || (step < 0 && i >= end) {
                    out.push(Value::from(i));
                    if out.len() > 1000 {
                        return Err("States.ArrayRange: more than 1000 items".into());
                    }
                    i += step;
                }
                Ok(Value::Array(out))
            }
            "States.ArrayGetItem" => {
                self.arity(args, 2)?;
                let arr = want_arr(&args[0])?;
                let i = usize::try_from(want_int(&args[1])?)
                    .map_err(|_| "States.ArrayGetItem: negative index")?;
                arr.get(i)
                    .cloned()
                    .ok_or_else(|| "States.ArrayGetItem: index out of bounds".into())
            }
            "States.ArrayLength" => {
                self.arity(args, 1)?;
                Ok(Value::from(want_arr(&args[0])?.len()))
            }
            "States.ArrayUnique" => {
                self.arity(args, 1)?;
                let mut out: Vec<Value> = Vec::new();
                for v in want_arr(&args[0])? {
                    if !out.iter().any(|o| json_eq(o, &v)) {
                        out.push(v);
                    }
                }
                Ok(Value::Array(out))
            }
            "States.Base64Encode" => {
                self.arity(args, 1)?;
                Ok(Value::String(
                    base64::engine::general_purpose::STANDARD
                        .encode(want_str(&args[0], "argument")?),
                ))
            }
            "States.Base64Decode" => {
                self.arity(args, 1)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(want_str(&args[0], "argument")?)
                    .map_err(|e| format!("States.Base64Decode: {e}"))?;
                String::from_utf8(bytes)
                    .map(Value::String)
                    .map_err(|e| format!("States.Base64Decode: {e}"))
            }
            "States.Hash" => {
                self.arity(args, 2)?;
                let data = want_str(&args[0], "data")?;
                if data.chars().count() > 10_000 {
                    return Err(
                        "States.Hash: the data to hash must be at most 10,000 characters".into(),
                    );
                }
                let algorithm = want_str(&args[1], "algorithm")?;
                hash_hex(&algorithm, data.as_bytes()).map(Value::String)
            }
            "States.JsonMerge" => {
                self.arity(args, 3)?;
                if args[2] != Value::Bool(false) {
                    return Err("States.JsonMerge: only shallow merge (false) is supported".into());
                }
                let (Some(a), Some(b)) = (args[0].as_object(), args[1].as_object()) else {
                    return Err("States.JsonMerge: arguments must be objects".into());
                };
                let mut m: Map<String, Value> = a.clone();
                m.extend(b.clone());
                Ok(Value::Object(m))
            }
            "States.MathRandom" => {
                if args.len() != 2 && args.len() != 3 {
                    return Err("States.MathRandom takes 2 or 3 arguments".into());
                }
                let (start, end) = (want_int(&args[0])?, want_int(&args[1])?);
                if end <= start {
                    return Err("States.MathRandom: end must be greater than start".into());
                }
                let span = u128::try_from(end - start).map_err(|e| e.to_string())?;
                let r = uuid::Uuid::new_v4().as_u128() % span;
                Ok(Value::from(
                    start + i64::try_from(r).map_err(|e| e.to_string())?,
                ))
            }
            "States.MathAdd" => {
                self.arity(args, 2)?;
                let round = |v: &Value| -> Result<i64, String> {
                    v.as_i64()
                        .or_else(|| v.as_f64().map(|f| (f + 0.5).floor() as i64))
                        .ok_or_else(|| "States.MathAdd: arguments must be numbers".to_string())
                };
                Ok(Value::from(round(&args[0])? + round(&args[1])?))
            }
            "States.StringSplit" => {
                self.arity(args, 2)?;
                let s = want_str(&args[0], "first argument")?;
                let d = want_str(&args[1], "delimiter")?;
                Ok(Value::Array(
                    s.split(|c| d.contains(c))
                        .filter(|p| !p.is_empty())
                        .map(|p| Value::String(p.to_string()))
                        .collect(),
                ))
            }
            "States.UUID" => {
                self.arity(args, 0)?;
                Ok(Value::String(uuid::Uuid::new_v4().to_string()))
            }
            other => Err(format!("unsupported intrinsic function {other}")),
        }
    }
}

/// Equality where 1 and 1.0 are the same number.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn format(template: &str, raw_braces: &[bool], args: &[Value]) -> Result<Value, String> {
    let mut out = String::new();
    let chars: Vec<char> = template.chars().collect();
    let mut next = 0usize;
    let mut i = 0usize;
    while i < chars.len() {
        let escaped = raw_braces.get(i).copied().unwrap_or(false);
        if chars[i] == '{' && !escaped && chars.get(i + 1) == Some(&'}') {
            let arg = args
                .get(next)
                .ok_or("States.Format: fewer arguments than placeholders")?;
            out.push_str(&java_string(arg));
            next += 1;
            i += 2;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    if next != args.len() {
        return Err("States.Format: more arguments than placeholders".into());
    }
    Ok(Value::String(out))
}

/// Renders a value as Java's `toString` of the Jackson-decoded object would.
fn java_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(java_string).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k}={}", java_string(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

struct P<'a> {
    s: &'a [u8],
    pos: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn call(&mut self) -> Result<Intrinsic, String> {
        self.ws();
        let start = self.pos;
        while matches!(self.s.get(self.pos), Some(c) if c.is_ascii_alphanumeric() || *c == b'.') {
            self.pos += 1;
        }
        let name = String::from_utf8_lossy(&self.s[start..self.pos]).to_string();
        if !FUNCTIONS.contains(&name.as_str()) {
            return Err(format!("unknown intrinsic function '{name}'"));
        }
        self.ws();
        if self.s.get(self.pos) != Some(&b'(') {
            return Err(format!("expected '(' after {name}"));
        }
        self.pos += 1;
        let mut args = Vec::new();
        self.ws();
        if self.s.get(self.pos) == Some(&b')') {
            self.pos += 1;
            return Ok(Intrinsic { name, args });
        }
        loop {
            args.push(self.arg()?);
            self.ws();
            match self.s.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b')') => {
                    self.pos += 1;
                    return Ok(Intrinsic { name, args });
                }
                _ => {
                    return Err(format!(
                        "expected ',' or ')' in {name} at offset {}",
                        self.pos
                    ));
                }
            }
        }
    }

    fn arg(&mut self) -> Result<Arg, String> {
        self.ws();
        match self.s.get(self.pos) {
            Some(b'\'') => self.string(),
            Some(b'$') => {
                let start = self.pos;
                let mut depth = 0i32;
                let mut quote: Option<u8> = None;
                while let Some(&c) = self.s.get(self.pos) {
                    match (quote, c) {
                        (Some(q), c) if c == q => quote = None,
                        (Some(_), _) => {}
                        (None, b'\'' | b'"') => quote = Some(c),
                        (None, b'(' | b'[') => depth += 1,
                        (None, b']') => depth -= 1,
                        (None, b')') if depth == 0 => break,
                        (None, b')') => depth -= 1,
                        (None, b',') if depth == 0 => break,
                        _ => {}
                    }
                    self.pos += 1;
                }
                let text = String::from_utf8_lossy(&self.s[start..self.pos])
                    .trim()
                    .to_string();
                JsonPath::parse(&text).map(Arg::Path).map_err(|e| e.0)
            }
            Some(b'S') => Ok(Arg::Call(self.call()?)),
            _ => {
                let start = self.pos;
                while matches!(self.s.get(self.pos), Some(c) if !matches!(c, b',' | b')' | b' ')) {
                    self.pos += 1;
                }
                let text = String::from_utf8_lossy(&self.s[start..self.pos]).to_string();
                let v: Value = serde_json::from_str(&text)
                    .map_err(|_| format!("invalid argument '{text}'"))?;
                match v {
                    Value::Number(_) | Value::Bool(_) | Value::Null => Ok(Arg::Literal(v)),
                    _ => Err(format!("invalid argument '{text}'")),
                }
            }
        }
    }

    fn string(&mut self) -> Result<Arg, String> {
        self.pos += 1;
        let mut bytes = Vec::new();
        let mut escaped_at = Vec::new();
        loop {
            match self.s.get(self.pos) {
                None => return Err("unterminated string literal".into()),
                Some(b'\\') => {
                    let Some(&n) = self.s.get(self.pos + 1) else {
                        return Err("unterminated escape".into());
                    };
                    bytes.push(n);
                    escaped_at.push(bytes.len() - 1);
                    self.pos += 2;
                }
                Some(b'\'') => {
                    self.pos += 1;
                    break;
                }
                Some(&c) => {
                    bytes.push(c);
                    self.pos += 1;
                }
            }
        }
        let value = String::from_utf8(bytes.clone()).map_err(|e| e.to_string())?;
        // Map escaped byte offsets to char offsets, for Format's placeholder scan.
        let mut raw_braces = Vec::new();
        let mut byte = 0usize;
        for ch in value.chars() {
            raw_braces.push(escaped_at.contains(&byte));
            byte += ch.len_utf8();
        }
        Ok(Arg::Str { value, raw_braces })
    }
}

/// Lower-case hex digest, as `States.Hash` gives it.
fn hash_hex(algorithm: &str, data: &[u8]) -> Result<String, String> {
    use sha2::Digest as _;
    let digest: Vec<u8> = match algorithm {
        "MD5" => md5::Md5::digest(data).to_vec(),
        "SHA-1" => sha1::Sha1::digest(data).to_vec(),
        "SHA-256" => sha2::Sha256::digest(data).to_vec(),
        "SHA-384" => sha2::Sha384::digest(data).to_vec(),
        "SHA-512" => sha2::Sha512::digest(data).to_vec(),
        other => {
            return Err(format!(
                "States.Hash: the hashing algorithm '{other}' is not supported (MD5, SHA-1, SHA-256, SHA-384, SHA-512)"
            ));
        }
    };
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(expr: &str, input: Value) -> Result<Value, String> {
        let base = json!({"Execution": {"Name": "n"}});
        let vars = crate::context::Vars::new();
        let ctx = Ctx {
            base: &base,
            state: "S",
            entered: chrono::Utc::now(),
            retry_count: None,
            item: None,
            task_token: None,
            vars: &vars,
            states_result: None,
            states_error: None,
        };
        Intrinsic::parse(expr)?.evaluate(&input, &ctx)
    }

    #[test]
    fn format_and_friends() {
        assert_eq!(
            run(
                "States.Format('a={} b={}', $.a, $$.Execution.Name)",
                json!({"a": {"x": 1, "y": []}})
            )
            .unwrap(),
            json!("a={x=1, y=[]} b=n")
        );
        assert_eq!(
            run("States.Format('\\{\\}{}', 1)", json!({})).unwrap(),
            json!("{}1")
        );
        assert_eq!(
            run("States.MathAdd(-1.5, -1.51)", json!({})).unwrap(),
            json!(-3)
        );
        assert_eq!(
            run("States.StringSplit('a,,b', ',')", json!({})).unwrap(),
            json!(["a", "b"])
        );
        assert_eq!(
            run("States.ArrayGetItem(States.Array(1, 2), 1)", json!({})).unwrap(),
            json!(2)
        );
        assert_eq!(
            run("States.ArrayRange(1, 9, 2)", json!({})).unwrap(),
            json!([1, 3, 5, 7, 9])
        );
        assert_eq!(
            run("States.JsonToString($.a)", json!({"a": [1, "x"]})).unwrap(),
            json!("[1,\"x\"]")
        );
    }

    #[test]
    fn bad_calls() {
        assert!(Intrinsic::parse("States.Nope(1)").is_err());
        assert!(Intrinsic::parse("States.Format('x'").is_err());
        assert!(run("States.Format('{}')", json!({})).is_err());
        assert!(run("States.ArrayLength($.a)", json!({"a": 1})).is_err());
    }

    #[test]
    fn hash_algorithms() {
        let h = |alg: &str| run(&format!("States.Hash('abc', '{alg}')"), json!({}));
        assert_eq!(h("MD5").unwrap(), json!("900150983cd24fb0d6963f7d28e17f72"));
        assert_eq!(
            h("SHA-1").unwrap(),
            json!("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(
            h("SHA-256").unwrap(),
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(h("SHA-384").unwrap().as_str().unwrap().len(), 96);
        assert!(
            h("SHA-512")
                .unwrap()
                .as_str()
                .unwrap()
                .starts_with("ddaf35a193617aba")
        );
        assert!(h("CRC32").unwrap_err().contains("not supported"));
        assert!(run("States.Hash(1, 'MD5')", json!({})).is_err());
        assert!(run("States.Hash('a')", json!({})).is_err());
    }
}
