//! JSONata text → syntax tree: a tokenizer and a Pratt (top-down operator precedence) parser
//! with JSONata's binding powers.

use std::sync::Arc;

use super::JsonataError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Num(f64),
    Str(String),
    /// A field name (plain or back-quoted).
    Name(String),
    /// `$name`; `$` alone is the empty name, `$$` is `"$"`.
    Var(String),
    Op(&'static str),
    Regex(String, String),
    End,
}

const OPS: &[&str] = &[
    "..", ":=", "!=", ">=", "<=", "**", "~>", ".", "[", "]", "{", "}", "(", ")", ",", "@", "#",
    ";", ":", "?", "+", "-", "*", "/", "%", "|", "=", "<", ">", "^", "&", "!", "~",
];

pub(crate) fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, JsonataError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<(Tok, usize)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            let mut j = i + 2;
            while j + 1 < chars.len() && !(chars[j] == '*' && chars[j + 1] == '/') {
                j += 1;
            }
            if j + 1 >= chars.len() {
                return Err(JsonataError::syntax(
                    "S0106",
                    "Comment has no closing tag",
                    i,
                ));
            }
            i = j + 2;
            continue;
        }
        // A `/` starts a regular expression where an operand is expected.
        let operand_expected = match out.last() {
            None => true,
            Some((Tok::Op(o), _)) => !matches!(*o, ")" | "]" | "}"),
            _ => false,
        };
        if c == '/' && operand_expected {
            let mut j = i + 1;
            let mut pattern = String::new();
            let mut depth = 0i32;
            loop {
                let Some(&d) = chars.get(j) else {
                    return Err(JsonataError::syntax(
                        "S0302",
                        "No terminating / in regular expression",
                        i,
                    ));
                };
                if d == '\\' {
                    pattern.push(d);
                    if let Some(&e) = chars.get(j + 1) {
                        pattern.push(e);
                    }
                    j += 2;
                    continue;
                }
                if d == '[' {
                    depth += 1;
                } else if d == ']' {
                    depth -= 1;
                } else if d == '/' && depth <= 0 {
                    break;
                }
                pattern.push(d);
                j += 1;
            }
            if pattern.is_empty() {
                return Err(JsonataError::syntax(
                    "S0301",
                    "Empty regular expressions are not allowed",
                    i,
                ));
            }
            j += 1;
            let mut flags = String::new();
            while let Some(&f) = chars.get(j) {
                if f == 'i' || f == 'm' {
                    flags.push(f);
                    j += 1;
                } else {
                    break;
                }
            }
            out.push((Tok::Regex(pattern, flags), start));
            i = j;
            continue;
        }
        if c == '"' || c == '\'' {
            let mut s = String::new();
            let mut j = i + 1;
            loop {
                let Some(&d) = chars.get(j) else {
                    return Err(JsonataError::syntax(
                        "S0101",
                        "String literal must be terminated by a matching quote",
                        i,
                    ));
                };
                if d == c {
                    break;
                }
                if d == '\\' {
                    let Some(&e) = chars.get(j + 1) else {
                        return Err(JsonataError::syntax(
                            "S0101",
                            "String literal must be terminated by a matching quote",
                            i,
                        ));
                    };
                    j += 2;
                    match e {
                        '"' | '\\' | '/' | '\'' => s.push(e),
                        'b' => s.push('\u{8}'),
                        'f' => s.push('\u{c}'),
                        'n' => s.push('\n'),
                        'r' => s.push('\r'),
                        't' => s.push('\t'),
                        'u' => {
                            let hex: String = chars.iter().skip(j).take(4).collect();
                            let code = u32::from_str_radix(&hex, 16).map_err(|_| {
                                JsonataError::syntax(
                                    "S0104",
                                    "The escape sequence \\u must be followed by 4 hex digits",
                                    j,
                                )
                            })?;
                            j += 4;
                            // A surrogate pair is two \u escapes.
                            if (0xD800..0xDC00).contains(&code)
                                && chars.get(j) == Some(&'\\')
                                && chars.get(j + 1) == Some(&'u')
                            {
                                let hex2: String = chars.iter().skip(j + 2).take(4).collect();
                                if let Ok(low) = u32::from_str_radix(&hex2, 16) {
                                    let combined = 0x10000
                                        + ((code - 0xD800) << 10)
                                        + (low.wrapping_sub(0xDC00) & 0x3FF);
                                    s.push(char::from_u32(combined).unwrap_or('\u{FFFD}'));
                                    j += 6;
                                    continue;
                                }
                            }
                            s.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                        }
                        other => {
                            return Err(JsonataError::syntax(
                                "S0103",
                                format!("Unsupported escape sequence: \\{other}"),
                                j,
                            ));
                        }
                    }
                    continue;
                }
                s.push(d);
                j += 1;
            }
            out.push((Tok::Str(s), start));
            i = j + 1;
            continue;
        }
        if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            // `1..5` is a range, not a decimal point.
            if chars.get(j) == Some(&'.') && chars.get(j + 1).is_some_and(char::is_ascii_digit) {
                j += 1;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
            }
            if matches!(chars.get(j), Some('e' | 'E')) {
                let mut k = j + 1;
                if matches!(chars.get(k), Some('+' | '-')) {
                    k += 1;
                }
                if chars.get(k).is_some_and(char::is_ascii_digit) {
                    j = k;
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                }
            }
            let text: String = chars[i..j].iter().collect();
            let n: f64 = text.parse().map_err(|_| {
                JsonataError::syntax("S0102", format!("Number out of range: {text}"), i)
            })?;
            if !n.is_finite() {
                return Err(JsonataError::syntax(
                    "S0102",
                    format!("Number out of range: {text}"),
                    i,
                ));
            }
            out.push((Tok::Num(n), start));
            i = j;
            continue;
        }
        if c == '`' {
            let mut j = i + 1;
            let mut s = String::new();
            while let Some(&d) = chars.get(j) {
                if d == '`' {
                    break;
                }
                s.push(d);
                j += 1;
            }
            if j >= chars.len() {
                return Err(JsonataError::syntax(
                    "S0105",
                    "Quoted property name must be terminated with a backquote (`)",
                    i,
                ));
            }
            out.push((Tok::Name(s), start));
            i = j + 1;
            continue;
        }
        if c == '$' {
            let mut j = i + 1;
            if chars.get(j) == Some(&'$') {
                out.push((Tok::Var("$".into()), start));
                i = j + 1;
                continue;
            }
            let mut s = String::new();
            while let Some(&d) = chars.get(j) {
                if d.is_alphanumeric() || d == '_' {
                    s.push(d);
                    j += 1;
                } else {
                    break;
                }
            }
            out.push((Tok::Var(s), start));
            i = j;
            continue;
        }
        if let Some(op) = OPS.iter().find(|op| {
            op.chars()
                .enumerate()
                .all(|(k, oc)| chars.get(i + k) == Some(&oc))
        }) {
            out.push((Tok::Op(op), start));
            i += op.chars().count();
            continue;
        }
        if c.is_alphabetic() || c == '_' || c == 'λ' {
            let mut j = i;
            let mut s = String::new();
            while let Some(&d) = chars.get(j) {
                if d.is_alphanumeric() || d == '_' {
                    s.push(d);
                    j += 1;
                } else {
                    break;
                }
            }
            out.push((Tok::Name(s), start));
            i = j;
            continue;
        }
        return Err(JsonataError::syntax(
            "S0204",
            format!("Unknown operator: \"{c}\""),
            i,
        ));
    }
    out.push((Tok::End, chars.len()));
    Ok(out)
}

/// The syntax tree.
#[derive(Debug)]
pub(crate) enum Node {
    Num(f64),
    Str(String),
    Bool(bool),
    Null,
    Regex(Arc<regex::Regex>),
    /// A field name step.
    Name(String),
    Var(String),
    Wildcard,
    Descendants,
    /// `a.b.c`: the steps in order.
    Path(Vec<Node>),
    /// `expr[predicate]`.
    Filter(Box<Node>, Box<Node>),
    Binary(&'static str, Box<Node>, Box<Node>),
    Neg(Box<Node>),
    Array(Vec<Node>),
    Range(Box<Node>, Box<Node>),
    Object(Vec<(Node, Node)>),
    Cond(Box<Node>, Box<Node>, Option<Box<Node>>),
    Bind(String, Box<Node>),
    Block(Vec<Node>),
    Lambda(Arc<Lambda>),
    Call(Box<Node>, Vec<Node>),
    /// `a ~> f`.
    Chain(Box<Node>, Box<Node>),
    /// `expr^(key, >key2)`: (expression, [(key, descending)]).
    Sort(Box<Node>, Vec<(Node, bool)>),
    /// `expr{key: value, …}`: groups the items of `expr` by key.
    Group(Box<Node>, Vec<(Node, Node)>),
    /// `step#$name`: binds each result's position (within its input item) to `$name`.
    IndexBind(Box<Node>, String),
    /// `step@$name`: binds each result to `$name`, the context staying where it was.
    FocusBind(Box<Node>, String),
    /// `| location | update [, delete] |`.
    Transform(Box<Node>, Box<Node>, Option<Box<Node>>),
    /// `?` as a call argument (partial application).
    Placeholder,
}

#[derive(Debug)]
pub(crate) struct Lambda {
    pub params: Vec<String>,
    pub body: Node,
}

fn lbp(t: &Tok) -> u8 {
    match t {
        Tok::Op(o) => match *o {
            "." => 75,
            "[" | "(" | "@" | "#" => 80,
            "{" => 70,
            "^" => 40,
            "?" => 20,
            "+" | "-" | "&" => 50,
            "*" | "/" | "%" => 60,
            "=" | "!=" | "<" | ">" | "<=" | ">=" | "~>" => 40,
            ":=" => 10,
            ".." => 20,
            _ => 0,
        },
        Tok::Name(n) if n == "and" => 30,
        Tok::Name(n) if n == "or" => 25,
        Tok::Name(n) if n == "in" => 40,
        _ => 0,
    }
}

pub(crate) struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    pub(crate) fn new(toks: Vec<(Tok, usize)>) -> Self {
        Self {
            toks,
            pos: 0,
            depth: 0,
        }
    }

    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map_or(&Tok::End, |t| &t.0)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(0, |t| t.1)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }

    fn expect(&mut self, op: &str) -> Result<(), JsonataError> {
        if self.is_op(op) {
            self.pos += 1;
            Ok(())
        } else {
            Err(JsonataError::syntax(
                "S0202",
                format!("Expected \"{op}\", got {}", describe(self.peek())),
                self.at(),
            ))
        }
    }

    pub(crate) fn parse_all(mut self) -> Result<Node, JsonataError> {
        let n = self.expression(0)?;
        if *self.peek() != Tok::End {
            return Err(JsonataError::syntax(
                "S0201",
                format!("Syntax error: {}", describe(self.peek())),
                self.at(),
            ));
        }
        Ok(n)
    }

    fn expression(&mut self, rbp: u8) -> Result<Node, JsonataError> {
        self.depth += 1;
        if self.depth > 300 {
            return Err(JsonataError::syntax(
                "S0200",
                "Expression is nested too deeply",
                self.at(),
            ));
        }
        let t = self.next();
        let mut left = self.nud(t)?;
        while rbp < lbp(self.peek()) {
            let t = self.next();
            left = self.led(t, left)?;
        }
        self.depth -= 1;
        Ok(left)
    }

    fn nud(&mut self, t: Tok) -> Result<Node, JsonataError> {
        let at = self.toks.get(self.pos.saturating_sub(1)).map_or(0, |t| t.1);
        Ok(match t {
            Tok::Num(n) => Node::Num(n),
            Tok::Str(s) => Node::Str(s),
            Tok::Var(v) => Node::Var(v),
            Tok::Regex(p, flags) => {
                let mut pat = String::new();
                if !flags.is_empty() {
                    pat.push_str(&format!("(?{flags})"));
                }
                pat.push_str(&js_regex_to_rust(&p));
                let re = regex::Regex::new(&pat).map_err(|e| {
                    JsonataError::syntax("S0301", format!("Invalid regular expression: {e}"), at)
                })?;
                Node::Regex(Arc::new(re))
            }
            Tok::Name(n) => match n.as_str() {
                "true" => Node::Bool(true),
                "false" => Node::Bool(false),
                "null" => Node::Null,
                "function" | "λ" if self.is_op("(") => self.lambda()?,
                "and" | "or" | "in" => Node::Name(n),
                _ => Node::Name(n),
            },
            Tok::Op("-") => Node::Neg(Box::new(self.expression(70)?)),
            Tok::Op("*") => Node::Wildcard,
            Tok::Op("**") => Node::Descendants,
            Tok::Op("(") => {
                let mut items = Vec::new();
                while !self.is_op(")") {
                    items.push(self.expression(0)?);
                    if !self.is_op(";") {
                        break;
                    }
                    self.pos += 1;
                }
                self.expect(")")?;
                Node::Block(items)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.is_op("]") {
                    loop {
                        let item = self.expression(0)?;
                        let item = if self.is_op("..") {
                            self.pos += 1;
                            Node::Range(Box::new(item), Box::new(self.expression(0)?))
                        } else {
                            item
                        };
                        items.push(item);
                        if !self.is_op(",") {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                self.expect("]")?;
                Node::Array(items)
            }
            Tok::Op("{") => Node::Object(self.object_body()?),
            Tok::Op("|") => {
                let location = self.expression(0)?;
                self.expect("|")?;
                let update = self.expression(0)?;
                let delete = if self.is_op(",") {
                    self.pos += 1;
                    Some(Box::new(self.expression(0)?))
                } else {
                    None
                };
                self.expect("|")?;
                Node::Transform(Box::new(location), Box::new(update), delete)
            }
            Tok::End => {
                return Err(JsonataError::syntax(
                    "S0207",
                    "Unexpected end of expression",
                    at,
                ));
            }
            other => {
                return Err(JsonataError::syntax(
                    "S0211",
                    format!(
                        "The symbol {} cannot be used as a unary operator",
                        describe(&other)
                    ),
                    at,
                ));
            }
        })
    }

    fn object_body(&mut self) -> Result<Vec<(Node, Node)>, JsonataError> {
        let mut pairs = Vec::new();
        if !self.is_op("}") {
            loop {
                let k = self.expression(0)?;
                self.expect(":")?;
                let v = self.expression(0)?;
                pairs.push((k, v));
                if !self.is_op(",") {
                    break;
                }
                self.pos += 1;
            }
        }
        self.expect("}")?;
        Ok(pairs)
    }

    fn lambda(&mut self) -> Result<Node, JsonataError> {
        self.expect("(")?;
        let mut params = Vec::new();
        while !self.is_op(")") {
            match self.next() {
                Tok::Var(v) => params.push(v),
                other => {
                    return Err(JsonataError::syntax(
                        "S0208",
                        format!(
                            "Parameter {} of function definition must be a variable name (start with $)",
                            describe(&other)
                        ),
                        self.at(),
                    ));
                }
            }
            if self.is_op(",") {
                self.pos += 1;
            }
        }
        self.expect(")")?;
        // An optional signature `<...>` is accepted and not checked.
        if self.is_op("<") {
            while !self.is_op(">") && *self.peek() != Tok::End {
                self.pos += 1;
            }
            self.expect(">")?;
        }
        self.expect("{")?;
        let body = if self.is_op("}") {
            Node::Block(Vec::new())
        } else {
            self.expression(0)?
        };
        self.expect("}")?;
        Ok(Node::Lambda(Arc::new(Lambda { params, body })))
    }

    fn led(&mut self, t: Tok, left: Node) -> Result<Node, JsonataError> {
        let at = self.toks.get(self.pos.saturating_sub(1)).map_or(0, |t| t.1);
        let op = match &t {
            Tok::Op(o) => *o,
            Tok::Name(n) if n == "and" => "and",
            Tok::Name(n) if n == "or" => "or",
            Tok::Name(n) if n == "in" => "in",
            other => {
                return Err(JsonataError::syntax(
                    "S0201",
                    format!("Syntax error: {}", describe(other)),
                    at,
                ));
            }
        };
        Ok(match op {
            "." => {
                let right = self.expression(75)?;
                let mut steps = match left {
                    Node::Path(s) => s,
                    other => vec![other],
                };
                match right {
                    Node::Path(s) => steps.extend(s),
                    other => steps.push(other),
                }
                Node::Path(steps)
            }
            "[" => {
                if self.is_op("]") {
                    // `a[]`: keep as an array.
                    self.pos += 1;
                    return Ok(Node::Call(
                        Box::new(Node::Var("__keep_array".into())),
                        vec![left],
                    ));
                }
                let pred = self.expression(0)?;
                self.expect("]")?;
                Node::Filter(Box::new(left), Box::new(pred))
            }
            "(" => {
                let mut args = Vec::new();
                if !self.is_op(")") {
                    loop {
                        let placeholder = self.is_op("?")
                            && matches!(
                                self.toks.get(self.pos + 1).map(|t| &t.0),
                                Some(Tok::Op("," | ")"))
                            );
                        if placeholder {
                            self.pos += 1;
                            args.push(Node::Placeholder);
                        } else {
                            args.push(self.expression(0)?);
                        }
                        if !self.is_op(",") {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                self.expect(")")?;
                Node::Call(Box::new(left), args)
            }
            "?" => {
                let then = self.expression(0)?;
                let otherwise = if self.is_op(":") {
                    self.pos += 1;
                    Some(Box::new(self.expression(0)?))
                } else {
                    None
                };
                Node::Cond(Box::new(left), Box::new(then), otherwise)
            }
            ":=" => {
                let Node::Var(name) = left else {
                    return Err(JsonataError::syntax(
                        "S0212",
                        "The left side of := must be a variable name (start with $)",
                        at,
                    ));
                };
                // Right-associative.
                Node::Bind(name, Box::new(self.expression(9)?))
            }
            ".." => Node::Range(Box::new(left), Box::new(self.expression(20)?)),
            "~>" => Node::Chain(Box::new(left), Box::new(self.expression(40)?)),
            "^" => {
                self.expect("(")?;
                let mut keys = Vec::new();
                loop {
                    let desc = if self.is_op(">") {
                        self.pos += 1;
                        true
                    } else {
                        if self.is_op("<") {
                            self.pos += 1;
                        }
                        false
                    };
                    keys.push((self.expression(0)?, desc));
                    if !self.is_op(",") {
                        break;
                    }
                    self.pos += 1;
                }
                self.expect(")")?;
                Node::Sort(Box::new(left), keys)
            }
            "{" => Node::Group(Box::new(left), self.object_body()?),
            "@" | "#" => {
                let Tok::Var(name) = self.next() else {
                    return Err(JsonataError::syntax(
                        "S0214",
                        format!("The right side of {op} must be a variable name (start with $)"),
                        at,
                    ));
                };
                if op == "@" {
                    Node::FocusBind(Box::new(left), name)
                } else {
                    Node::IndexBind(Box::new(left), name)
                }
            }
            "+" | "-" | "*" | "/" | "%" | "&" | "=" | "!=" | "<" | ">" | "<=" | ">=" | "and"
            | "or" | "in" => {
                let right = self.expression(lbp(&t))?;
                Node::Binary(op, Box::new(left), Box::new(right))
            }
            other => {
                return Err(JsonataError::syntax(
                    "S0201",
                    format!("Syntax error: \"{other}\""),
                    at,
                ));
            }
        })
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::End => "(end)".into(),
        Tok::Num(n) => n.to_string(),
        Tok::Str(s) => format!("\"{s}\""),
        Tok::Name(s) => format!("\"{s}\""),
        Tok::Var(s) => format!("\"${s}\""),
        Tok::Op(o) => format!("\"{o}\""),
        Tok::Regex(p, _) => format!("/{p}/"),
    }
}

/// JavaScript regular expressions escape any punctuation (and space); Rust's regex accepts
/// escapes of meta characters only, so other escaped characters become literals.
fn js_regex_to_rust(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e) if e.is_ascii_alphanumeric() => {
                out.push('\\');
                out.push(e);
            }
            Some(e) => out.push_str(&regex::escape(&e.to_string())),
            None => out.push_str("\\\\"),
        }
    }
    out
}
