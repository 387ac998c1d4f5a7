//! Hand-written checkers for the lexical rules of FHIR's primitive types (`date`, `dateTime`,
//! `code`, `id`, `uri`…), used instead of the definitions' regexes when the regex is one we
//! know: the walker checks every primitive string of every resource, and a regex, even a
//! compiled one, costs several times what a direct scan does.
//!
//! A checker is chosen by the regex's exact text ([`Form::for_pattern`]): a regenerated
//! definitions file with a changed pattern falls back to its regex, never to a checker that
//! says something else. Each checker accepts exactly what its regex accepts (the regexes are
//! wrapped as `^(?:…)$`; `\s` is Unicode `White_Space`, as [`char::is_whitespace`]); the
//! tests compare both on the corpora's strings and on generated tricky strings.

/// A primitive type's lexical rule, checked by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Base64Binary,
    Boolean,
    /// `canonical`, `uri`, `url`: `\S*`.
    NoSpace,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    /// `string`, `markdown`: `[ \r\n\t\S]+`.
    Text,
    Oid,
    PositiveInt,
    Time,
    UnsignedInt,
    Uuid,
}

/// The R4 core patterns (as `definitions.json` holds them) and their checkers.
const PATTERNS: &[(&str, Form)] = &[
    (r"(\s*([0-9a-zA-Z\+/=]){4}\s*)+", Form::Base64Binary),
    ("true|false", Form::Boolean),
    (r"\S*", Form::NoSpace),
    (r"[^\s]+(\s[^\s]+)*", Form::Code),
    (
        "([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?",
        Form::Date,
    ),
    (
        r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?",
        Form::DateTime,
    ),
    (
        r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?",
        Form::Decimal,
    ),
    (r"[A-Za-z0-9\-\.]{1,64}", Form::Id),
    (
        r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))",
        Form::Instant,
    ),
    ("-?([0]|([1-9][0-9]*))", Form::Integer),
    (r"[ \r\n\t\S]+", Form::Text),
    (r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+", Form::Oid),
    ("[1-9][0-9]*", Form::PositiveInt),
    (
        r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?",
        Form::Time,
    ),
    ("[0]|([1-9][0-9]*)", Form::UnsignedInt),
    (
        "urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        Form::Uuid,
    ),
];

impl Form {
    /// The checker of a pattern (the regex text, unanchored), if it is one we know.
    pub fn for_pattern(pattern: &str) -> Option<Form> {
        PATTERNS
            .iter()
            .find(|(p, _)| *p == pattern)
            .map(|&(_, form)| form)
    }

    /// True if `s` is in the lexical space (as the anchored regex would say).
    pub fn is_match(self, s: &str) -> bool {
        let b = s.as_bytes();
        match self {
            Form::Base64Binary => base64(s),
            Form::Boolean => s == "true" || s == "false",
            Form::NoSpace => {
                if s.is_ascii() {
                    !b.iter().copied().any(ascii_space)
                } else {
                    !s.chars().any(char::is_whitespace)
                }
            }
            Form::Code => code(s),
            Form::Date => date(b).is_some_and(<[u8]>::is_empty),
            Form::DateTime => date_time(b),
            Form::Decimal => decimal(b),
            Form::Id => {
                (1..=64).contains(&b.len())
                    && b.iter()
                        .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
            }
            Form::Instant => instant(b),
            Form::Integer => unsigned(b.strip_prefix(b"-").unwrap_or(b)),
            Form::Text => {
                !s.is_empty()
                    && if s.is_ascii() {
                        b.iter()
                            .all(|&c| !ascii_space(c) || matches!(c, b' ' | b'\r' | b'\n' | b'\t'))
                    } else {
                        s.chars()
                            .all(|c| !c.is_whitespace() || matches!(c, ' ' | '\r' | '\n' | '\t'))
                    }
            }
            Form::Oid => oid(b),
            Form::PositiveInt => b.first().is_some_and(|&c| c != b'0') && unsigned(b),
            Form::Time => time(b).is_some_and(<[u8]>::is_empty),
            Form::UnsignedInt => unsigned(b),
            Form::Uuid => b.strip_prefix(b"urn:uuid:").is_some_and(|u| {
                u.len() == 36
                    && u.iter().enumerate().all(|(i, &c)| {
                        if matches!(i, 8 | 13 | 18 | 23) {
                            c == b'-'
                        } else {
                            c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
                        }
                    })
            }),
        }
    }
}

/// Unicode `White_Space` among ASCII bytes (tab, LF, VT, FF, CR, space).
fn ascii_space(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`: blanks and base64 characters, at least one character,
/// every run of characters (between blanks) a multiple of 4 long.
fn base64(s: &str) -> bool {
    let mut run = 0usize;
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=') {
            run += 1;
            any = true;
        } else if c.is_whitespace() {
            if !run.is_multiple_of(4) {
                return false;
            }
            run = 0;
        } else {
            return false;
        }
    }
    any && run.is_multiple_of(4)
}

/// `[^\s]+(\s[^\s]+)*`: no blank at either end, never two blanks in a row.
fn code(s: &str) -> bool {
    let mut last_blank = true;
    for c in s.chars() {
        let blank = c.is_whitespace();
        if blank && last_blank {
            return false;
        }
        last_blank = blank;
    }
    !last_blank
}

/// `0|[1-9][0-9]*`.
fn unsigned(b: &[u8]) -> bool {
    match b {
        [b'0'] => true,
        [first, rest @ ..] => (b'1'..=b'9').contains(first) && rest.iter().all(u8::is_ascii_digit),
        [] => false,
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn decimal(b: &[u8]) -> bool {
    let b = b.strip_prefix(b"-").unwrap_or(b);
    let int_end = b
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len());
    let (int, rest) = b.split_at(int_end);
    if !unsigned(int) {
        return false;
    }
    let rest = match rest.strip_prefix(b".") {
        Some(frac) => match digits1(frac) {
            Some(r) => r,
            None => return false,
        },
        None => rest,
    };
    match rest {
        [] => true,
        [b'e' | b'E', exp @ ..] => {
            let exp = match exp {
                [b'+' | b'-', e @ ..] => e,
                e => e,
            };
            !exp.is_empty() && exp.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// One or more digits: the rest after them.
fn digits1(b: &[u8]) -> Option<&[u8]> {
    let n = b
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len());
    (n > 0).then(|| &b[n..])
}

/// Two digits in `lo..=hi`: the rest after them.
fn two(b: &[u8], lo: u8, hi: u8) -> Option<&[u8]> {
    match b {
        [d1, d2, rest @ ..] if d1.is_ascii_digit() && d2.is_ascii_digit() => {
            let n = (d1 - b'0') * 10 + (d2 - b'0');
            (lo..=hi).contains(&n).then_some(rest)
        }
        _ => None,
    }
}

/// Four digits, not `0000`: the rest after them.
fn year(b: &[u8]) -> Option<&[u8]> {
    match b {
        [a, b2, c, d, rest @ ..]
            if [a, b2, c, d].iter().all(|x| x.is_ascii_digit())
                && [a, b2, c, d].iter().any(|&&x| x != b'0') =>
        {
            Some(rest)
        }
        _ => None,
    }
}

/// `YYYY(-MM(-DD)?)?` at the start of `b`: the rest after it (a date's own prefix).
fn date(b: &[u8]) -> Option<&[u8]> {
    let rest = year(b)?;
    let Some(m) = rest.strip_prefix(b"-") else {
        return Some(rest);
    };
    let rest = two(m, 1, 12)?;
    let Some(d) = rest.strip_prefix(b"-") else {
        return Some(rest);
    };
    two(d, 1, 31)
}

/// `hh:mm:ss(.f+)?`: the rest after it.
fn time(b: &[u8]) -> Option<&[u8]> {
    let rest = two(b, 0, 23)?;
    let rest = two(rest.strip_prefix(b":")?, 0, 59)?;
    let rest = two(rest.strip_prefix(b":")?, 0, 60)?;
    match rest.strip_prefix(b".") {
        Some(frac) => digits1(frac),
        None => Some(rest),
    }
}

/// `Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)`, the whole of `b`.
fn zone(b: &[u8]) -> bool {
    match b {
        [b'Z'] => true,
        [b'+' | b'-', b'1', b'4', b':', b'0', b'0'] => true,
        [b'+' | b'-', rest @ ..] => two(rest, 0, 13)
            .and_then(|r| r.strip_prefix(b":"))
            .and_then(|r| two(r, 0, 59))
            .is_some_and(<[u8]>::is_empty),
        _ => false,
    }
}

/// `Thh:mm:ss(.f+)?` and a zone, the whole of `b`.
fn time_and_zone(b: &[u8]) -> bool {
    b.strip_prefix(b"T").and_then(time).is_some_and(zone)
}

/// A dateTime: a date, and with a full date optionally a time and zone.
fn date_time(b: &[u8]) -> bool {
    let Some(rest) = date(b) else {
        return false;
    };
    // A time may follow only a full date (10 bytes: YYYY-MM-DD).
    rest.is_empty() || (b.len() - rest.len() == 10 && time_and_zone(rest))
}

/// An instant: a full date, a time and a zone.
fn instant(b: &[u8]) -> bool {
    date(b).is_some_and(|rest| b.len() - rest.len() == 10 && time_and_zone(rest))
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`.
fn oid(b: &[u8]) -> bool {
    let Some([first, rest @ ..]) = b.strip_prefix(b"urn:oid:") else {
        return false;
    };
    if !(b'0'..=b'2').contains(first) || rest.is_empty() {
        return false;
    }
    rest.split(|&c| c == b'.').enumerate().all(|(i, arc)| {
        if i == 0 {
            arc.is_empty()
        } else {
            unsigned(arc)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use regex::Regex;
    use serde_json::Value;

    use super::*;
    use crate::validation::Definitions;
    use crate::validation::corpus_tests::{corpus, json_files, read_json};

    /// Characters that decide the rules: digits, separators, letters of the patterns, ASCII
    /// and Unicode blanks (VT, FF, NEL, NBSP, em space), a control and a non-ASCII letter.
    const ALPHABET: &[char] = &[
        '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '-', ':', '.', 'T', 'Z', '+', 'e', 'E',
        'a', 'f', 'g', 'A', 'z', '/', '=', '_', 'u', 'r', 'n', 'o', 'i', 'd', ' ', '\t', '\n',
        '\r', '\u{0b}', '\u{0c}', '\u{85}', '\u{a0}', '\u{2003}', '\u{1}', 'é',
    ];

    /// Valid and nearly valid values of every form, to be mutated.
    const SEEDS: &[&str] = &[
        "2020",
        "0001",
        "1000",
        "2020-01",
        "2020-12-31",
        "2020-02-30T23:59:60Z",
        "2020-12-31T23:59:60.123+14:00",
        "1999-09-09T00:00:00-13:59",
        "2020-01-31T12:30:00.1-00:00",
        "23:59:60.5",
        "00:00:00",
        "-0",
        "-12.50e+10",
        "0.5E-3",
        "1e5",
        "2147483647",
        "true",
        "false",
        "urn:oid:1.2.840.10008",
        "urn:oid:2.0",
        "urn:uuid:2b4c7e8a-0f3d-4c1e-9a6b-1d2e3f4a5b6c",
        "abcd EFGH+/==",
        " QUJD\tREVG ",
        "http://example.org/fhir/ValueSet/x|4.0.1",
        "a b c",
        "in-progress",
        "Patient.name[0]",
        "ID-1.2",
        "line one\r\nline two\ttab",
        "x",
        "",
    ];

    /// Every seed, its prefixes and suffixes, and each one-character substitution, deletion
    /// and insertion from [`ALPHABET`]; every pair of digit substitutions in the date-times;
    /// pseudo-random strings over the alphabet.
    fn tricky_strings() -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for seed in SEEDS {
            let chars: Vec<char> = seed.chars().collect();
            for i in 0..=chars.len() {
                out.insert(chars[..i].iter().collect::<String>());
                out.insert(chars[i..].iter().collect::<String>());
                for &c in ALPHABET {
                    let mut ins = chars.clone();
                    ins.insert(i, c);
                    out.insert(ins.into_iter().collect());
                    if i < chars.len() {
                        let mut sub = chars.clone();
                        sub[i] = c;
                        out.insert(sub.into_iter().collect());
                    }
                }
                if i < chars.len() {
                    let mut del = chars.clone();
                    del.remove(i);
                    out.insert(del.into_iter().collect());
                }
            }
        }
        for seed in ["2020-12-31T23:59:60.1+14:00", "1000-01-01T00:00:00Z"] {
            let chars: Vec<char> = seed.chars().collect();
            let digits: Vec<usize> = (0..chars.len())
                .filter(|&i| chars[i].is_ascii_digit())
                .collect();
            for (n, &i) in digits.iter().enumerate() {
                for &j in &digits[n + 1..] {
                    for a in '0'..='9' {
                        for b in '0'..='9' {
                            let mut v = chars.clone();
                            v[i] = a;
                            v[j] = b;
                            out.insert(v.into_iter().collect());
                        }
                    }
                }
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 14) as usize;
            let mut s = String::new();
            let mut y = x;
            for _ in 0..len {
                y = y.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                s.push(ALPHABET[(y >> 33) as usize % ALPHABET.len()]);
            }
            out.insert(s);
        }
        out
    }

    /// Every string value of the Synthea corpus and of the HL7 validator's cases.
    fn corpus_strings() -> BTreeSet<String> {
        fn walk(v: &Value, out: &mut BTreeSet<String>) {
            match v {
                Value::String(s) => {
                    out.insert(s.clone());
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                Value::Object(o) => o.values().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        let mut out = BTreeSet::new();
        for path in json_files(&corpus("conformance/synthea/fhir")) {
            walk(&read_json(&path), &mut out);
        }
        for path in json_files(&corpus("conformance/fhir-validation/cases")) {
            walk(&read_json(&path)["resource"], &mut out);
        }
        out
    }

    /// Each primitive's checker against its regex, as loaded from the R4 definitions.
    fn assert_same(defs: &Definitions, strings: &BTreeSet<String>) -> usize {
        let mut accepted = 0;
        for name in defs.primitive_names() {
            let form = defs
                .primitive_form(name)
                .unwrap_or_else(|| panic!("{name}: no hand-written checker"));
            let regex = defs.primitive_regex(name).unwrap();
            for s in strings {
                let want = regex.is_match(s);
                assert_eq!(form.is_match(s), want, "{name} ({form:?}) on {s:?}");
                accepted += usize::from(want);
            }
        }
        accepted
    }

    #[test]
    fn whitespace_is_the_regex_class() {
        let all: String = (0..=0x10_ffff_u32).filter_map(char::from_u32).collect();
        let by_regex: Vec<char> = Regex::new(r"\s")
            .unwrap()
            .find_iter(&all)
            .flat_map(|m| m.as_str().chars())
            .collect();
        let by_char: Vec<char> = all.chars().filter(|c| c.is_whitespace()).collect();
        assert_eq!(by_regex, by_char);
        assert!(by_char.len() > 20);
        // The ASCII shortcut agrees with both.
        for b in 0..0x80u8 {
            assert_eq!(ascii_space(b), char::from(b).is_whitespace(), "{b:#x}");
        }
    }

    #[test]
    fn checkers_equal_the_regexes_on_tricky_strings() {
        let defs = Definitions::r4().unwrap();
        let strings = tricky_strings();
        assert!(strings.len() > 50_000, "{}", strings.len());
        let accepted = assert_same(&defs, &strings);
        // Both sides are exercised: many strings in and out of each lexical space.
        assert!(accepted > 20_000, "{accepted}");
        assert_eq!(defs.primitive_names().len(), 19);
    }

    #[test]
    fn checkers_equal_the_regexes_on_the_corpus_strings() {
        let defs = Definitions::r4().unwrap();
        let strings = corpus_strings();
        assert!(strings.len() > 10_000, "{}", strings.len());
        assert_same(&defs, &strings);
    }

    /// The whole validation with the checkers equals the validation with the regexes only
    /// (issues, order, places) over the Synthea corpus and every HL7 case resource.
    #[test]
    fn validation_with_checkers_equals_validation_with_regexes() {
        use crate::validation::Validator;
        let checkers = Validator::r4().unwrap();
        let mut regexes = Validator::r4().unwrap();
        regexes.definitions_mut().drop_hand_checkers();
        let resources = crate::validation::corpus_tests::corpus_resources();
        assert!(resources.len() > 5000, "{}", resources.len());
        let mut value_issues = 0;
        for r in &resources {
            let a = checkers.validate(r);
            assert_eq!(a, regexes.validate(r), "{}", r["resourceType"]);
            value_issues += a.issues.iter().filter(|i| i.code == "value").count();
        }
        // The corpus holds values the lexical rules reject (the HL7 cases' invalid ones).
        assert!(value_issues > 10, "{value_issues}");
    }

    #[test]
    fn checkers_on_known_values() {
        assert!(Form::Date.is_match("2020-02-31"));
        assert!(!Form::Date.is_match("0000"));
        assert!(!Form::DateTime.is_match("2020-01-01T10:00:00"));
        assert!(!Form::DateTime.is_match("2020-01T10:00:00Z"));
        assert!(Form::DateTime.is_match("2020-01-01T10:00:00.000+14:00"));
        assert!(!Form::DateTime.is_match("2020-01-01T10:00:00+14:01"));
        assert!(!Form::Instant.is_match("2020-01-01"));
        assert!(Form::Code.is_match("a b"));
        assert!(!Form::Code.is_match("a  b") && !Form::Code.is_match(" a"));
        assert!(!Form::Code.is_match("a\u{a0}"));
        assert!(!Form::Id.is_match(&"a".repeat(65)) && Form::Id.is_match(&"a".repeat(64)));
        assert!(!Form::NoSpace.is_match("a\u{2003}b") && Form::NoSpace.is_match(""));
        assert!(!Form::Text.is_match("a\u{0b}b") && Form::Text.is_match("é\t"));
        assert!(Form::Base64Binary.is_match(" QUJD REVG "));
        assert!(!Form::Base64Binary.is_match("QUJ DREVG"));
        assert!(Form::Oid.is_match("urn:oid:1.0.25") && !Form::Oid.is_match("urn:oid:1.01"));
        assert!(Form::Decimal.is_match("-0.0e-0") && !Form::Decimal.is_match("00.1"));
    }

    #[test]
    fn every_core_pattern_has_a_checker() {
        assert_eq!(PATTERNS.len(), 16);
        assert_eq!(Form::for_pattern(r"\S*"), Some(Form::NoSpace));
        assert_eq!(Form::for_pattern(r"\S+"), None);
    }
}
