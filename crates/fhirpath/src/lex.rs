//! FHIRPath tokens: identifiers (plain or `delimited`), literals, operators, punctuation.

use crate::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    /// A `` `delimited` `` identifier: never a keyword.
    Quoted(String),
    Str(String),
    Int(i64),
    Dec(f64),
    /// `@2020-01-01`, `@T10:00`: the text after `@`.
    DateTime(String),
    /// `%name` or `` %`name` ``.
    Var(String),
    /// `$this`, `$index`, `$total`.
    Special(String),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Dot,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

fn err(pos: usize, msg: impl Into<String>) -> ParseError {
    ParseError::Syntax {
        pos,
        msg: msg.into(),
    }
}

pub(crate) fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let pos = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
            continue;
        }
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                Tok::Dec(text.parse().map_err(|_| err(pos, "bad number"))?)
            } else {
                let text: String = chars[start..i].iter().collect();
                Tok::Int(text.parse().map_err(|_| err(pos, "integer out of range"))?)
            }
        } else {
            match c {
                '\'' | '`' => {
                    let (text, next) = quoted(&chars, i, c)?;
                    i = next;
                    if c == '\'' {
                        Tok::Str(text)
                    } else {
                        Tok::Quoted(text)
                    }
                }
                '@' => {
                    i += 1;
                    let start = i;
                    while i < chars.len()
                        && (chars[i].is_ascii_alphanumeric()
                            || matches!(chars[i], '-' | ':' | '.' | '+' | 'T' | 'Z'))
                    {
                        i += 1;
                    }
                    Tok::DateTime(chars[start..i].iter().collect())
                }
                '%' => {
                    i += 1;
                    if chars.get(i) == Some(&'`') || chars.get(i) == Some(&'\'') {
                        let q = chars[i];
                        let (text, next) = quoted(&chars, i, q)?;
                        i = next;
                        Tok::Var(text)
                    } else {
                        let start = i;
                        while i < chars.len()
                            && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '-'))
                        {
                            i += 1;
                        }
                        Tok::Var(chars[start..i].iter().collect())
                    }
                }
                '$' => {
                    i += 1;
                    let start = i;
                    while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                        i += 1;
                    }
                    Tok::Special(chars[start..i].iter().collect())
                }
                _ => {
                    i += 1;
                    let two = |n: char| chars.get(i) == Some(&n);
                    match c {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '[' => Tok::LBracket,
                        ']' => Tok::RBracket,
                        '{' => Tok::LBrace,
                        '}' => Tok::RBrace,
                        ',' => Tok::Comma,
                        '.' => Tok::Dot,
                        '=' => Tok::Op("="),
                        '~' => Tok::Op("~"),
                        '!' if two('=') => {
                            i += 1;
                            Tok::Op("!=")
                        }
                        '!' if two('~') => {
                            i += 1;
                            Tok::Op("!~")
                        }
                        '<' if two('=') => {
                            i += 1;
                            Tok::Op("<=")
                        }
                        '>' if two('=') => {
                            i += 1;
                            Tok::Op(">=")
                        }
                        '<' => Tok::Op("<"),
                        '>' => Tok::Op(">"),
                        '+' => Tok::Op("+"),
                        '-' => Tok::Op("-"),
                        '*' => Tok::Op("*"),
                        '/' => Tok::Op("/"),
                        '&' => Tok::Op("&"),
                        '|' => Tok::Op("|"),
                        other => return Err(err(pos, format!("unexpected character {other:?}"))),
                    }
                }
            }
        };
        out.push(Token { tok, pos });
    }
    Ok(out)
}

/// A quoted string or identifier starting at `start` (the quote), with FHIRPath escapes.
fn quoted(chars: &[char], start: usize, q: char) -> Result<(String, usize), ParseError> {
    let mut i = start + 1;
    let mut s = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == q {
            return Ok((s, i + 1));
        }
        if c == '\\' {
            i += 1;
            let Some(&e) = chars.get(i) else { break };
            match e {
                'n' => s.push('\n'),
                'r' => s.push('\r'),
                't' => s.push('\t'),
                'f' => s.push('\u{c}'),
                'u' => {
                    let hex: String = chars
                        .get(i + 1..i + 5)
                        .map(|h| h.iter().collect())
                        .unwrap_or_default();
                    let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                    match ch {
                        Some(ch) => s.push(ch),
                        None => return Err(err(i, "bad \\u escape")),
                    }
                    i += 4;
                }
                other => s.push(other),
            }
            i += 1;
            continue;
        }
        s.push(c);
        i += 1;
    }
    Err(err(start, "unterminated quoted text"))
}
