//! Coding checks: terminology bindings by strength against the value sets expanded from the
//! core package, membership of codes in the FHIR-defined code systems held whole, and the
//! offline checks that can be made on external systems that are not held (LOINC check digit,
//! SNOMED CT Verhoeff check digit, ICD-10-CM pattern, NPI Luhn check). Where membership cannot
//! be decided, an `information` issue says so: never a silent pass.
//!
//! Diagnostics name systems and value sets (definitions), never the code or value found (it
//! may be patient data).

use serde_json::{Map, Value};

use super::definitions::{Definitions, Strength};
use super::structure::Sink;
use crate::outcome::Severity;

/// What a binding applies to.
#[derive(Debug, Clone, Copy)]
pub enum BindingTarget<'a> {
    Code(&'a str),
    Coding(&'a Map<String, Value>),
    Concept(&'a Map<String, Value>),
}

pub const LOINC: &str = "http://loinc.org";
pub const SNOMED: &str = "http://snomed.info/sct";
pub const ICD10CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
pub const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

/// Membership of one coding in a value set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Yes,
    No,
    /// The value set draws on a system (or value set) not held: cannot tell.
    Unknown,
}

fn coding_member(vs: &super::definitions::ValueSetDef, system: Option<&str>, code: &str) -> Member {
    match system {
        Some(s) => {
            if vs.codes.get(s).is_some_and(|c| c.contains(code)) {
                Member::Yes
            } else if vs.open.iter().any(|o| o == s || o.starts_with("valueset:")) {
                Member::Unknown
            } else {
                Member::No
            }
        }
        None => {
            if vs.has_code(code) {
                Member::Yes
            } else if vs.is_complete() {
                Member::No
            } else {
                Member::Unknown
            }
        }
    }
}

/// Checks a bound element against its value set, by binding strength.
pub(crate) fn check_binding(
    defs: &Definitions,
    strength: Strength,
    url: &str,
    target: BindingTarget<'_>,
    loc: &str,
    sink: &mut Sink,
) {
    // An example binding says nothing about which codes are right.
    if strength == Strength::Example {
        return;
    }
    let Some(vs) = defs.value_set(url) else {
        return;
    };
    // Value sets whose expansion could not be computed at all (`open` names the value set
    // itself) say "not checked" only where it matters: required and extensible bindings.
    let member = match target {
        BindingTarget::Code(code) => coding_member(vs, None, code),
        BindingTarget::Coding(c) => match c.get("code").and_then(Value::as_str) {
            Some(code) => coding_member(vs, c.get("system").and_then(Value::as_str), code),
            None => return,
        },
        BindingTarget::Concept(cc) => {
            let codings: Vec<(Option<&str>, &str)> = cc
                .get("coding")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| {
                            let code = c.get("code")?.as_str()?;
                            Some((c.get("system").and_then(Value::as_str), code))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if codings.is_empty() {
                if strength == Strength::Required && cc.get("text").is_some() {
                    sink.error(
                        "code-invalid",
                        loc,
                        format!("no code given, and a code is required from the value set {url}"),
                    );
                }
                return;
            }
            let results: Vec<Member> = codings
                .iter()
                .map(|(s, c)| coding_member(vs, *s, c))
                .collect();
            if results.contains(&Member::Yes) {
                Member::Yes
            } else if results.contains(&Member::Unknown) {
                Member::Unknown
            } else {
                Member::No
            }
        }
    };
    match member {
        Member::Yes => {}
        Member::Unknown => {
            if matches!(strength, Strength::Required | Strength::Extensible) {
                sink.push(
                    Severity::Information,
                    "informational",
                    loc,
                    format!(
                        "membership in the value set {url} was not checked: it draws on {} which is not held",
                        vs.open.join(", ")
                    ),
                );
            }
        }
        Member::No => {
            let has_text = matches!(target, BindingTarget::Concept(cc) if cc.contains_key("text"));
            let (severity, word) = match strength {
                Strength::Required => (Severity::Error, "required"),
                Strength::Extensible if !has_text => (Severity::Warning, "extensible"),
                Strength::Extensible => (Severity::Information, "extensible"),
                Strength::Preferred => (Severity::Information, "preferred"),
                Strength::Example => (Severity::Information, "example"),
            };
            sink.push(
                severity,
                "code-invalid",
                loc,
                format!("the code is not in the {word} value set {url}"),
            );
        }
    }
}

/// Checks one Coding's code against its system: membership for systems held, offline checks
/// and a "not checked" note for the others.
pub(crate) fn check_coding(
    defs: &Definitions,
    coding: &Map<String, Value>,
    loc: &str,
    sink: &mut Sink,
) {
    let (Some(Value::String(system)), Some(Value::String(code))) =
        (coding.get("system"), coding.get("code"))
    else {
        return;
    };
    if defs.is_supplement(system) {
        sink.error(
            "code-invalid",
            loc,
            format!("{system} is a CodeSystem supplement: it cannot be the system of a Coding"),
        );
        return;
    }
    if let Some(codes) = defs.code_system(system) {
        if !codes.contains(code.as_str()) {
            if defs.is_fragment(system) {
                sink.push(
                    Severity::Warning,
                    "code-invalid",
                    loc,
                    format!(
                        "the code is not in the loaded fragment of {system}: membership could not be confirmed"
                    ),
                );
            } else {
                sink.error(
                    "code-invalid",
                    loc,
                    format!("unknown code in the code system {system}"),
                );
            }
        } else if let (Some(Value::String(display)), Some(expected)) =
            (coding.get("display"), defs.display(system, code))
            && !same_display(display, expected)
        {
            // R4: a wrong display is a warning (the reference validator's default).
            sink.push(
                Severity::Warning,
                "invalid",
                &format!("{loc}.display"),
                format!(
                    "wrong display for the code of {system}: the code system says '{expected}'"
                ),
            );
        }
        return;
    }
    let offline = match system.as_str() {
        LOINC => Some(("LOINC check digit", loinc_ok(code))),
        SNOMED => Some(("SNOMED CT Verhoeff check digit", snomed_ok(code))),
        ICD10CM => Some(("ICD-10-CM code pattern", icd10cm_ok(code))),
        _ => None,
    };
    match offline {
        Some((what, false)) => sink.error(
            "code-invalid",
            loc,
            format!("not a valid code of {system}: the {what} check fails"),
        ),
        Some((what, true)) => sink.push(
            Severity::Information,
            "informational",
            loc,
            format!("{system} is not loaded: the {what} passes, membership was not checked"),
        ),
        None => sink.push(
            Severity::Information,
            "informational",
            loc,
            format!("{system} is not loaded: membership was not checked"),
        ),
    }
}

/// Displays compare without regard to case or runs of white space.
fn same_display(a: &str, b: &str) -> bool {
    let mut x = a.split_whitespace();
    let mut y = b.split_whitespace();
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q))
                if p.eq_ignore_ascii_case(q) || p.to_lowercase() == q.to_lowercase() => {}
            _ => return false,
        }
    }
}

/// Identifier checks that need no registry: an NPI's Luhn check digit.
pub(crate) fn check_identifier(identifier: &Map<String, Value>, loc: &str, sink: &mut Sink) {
    if identifier.get("system").and_then(Value::as_str) == Some(NPI)
        && let Some(value) = identifier.get("value").and_then(Value::as_str)
        && !npi_ok(value)
    {
        sink.push(
            Severity::Warning,
            "value",
            &format!("{loc}.value"),
            "not a valid NPI: ten digits with a Luhn check digit (prefix 80840) expected".into(),
        );
    }
}

/// Narrative XHTML: a `div` in the XHTML namespace without active content (txt-1, txt-2).
pub(crate) fn check_xhtml(s: &str, loc: &str, sink: &mut Sink) {
    let trimmed = s.trim_start();
    if !trimmed.starts_with("<div") {
        sink.error(
            "value",
            loc,
            "txt-2: the narrative must be an XHTML div element".into(),
        );
        return;
    }
    let lower = s.to_ascii_lowercase();
    const FORBIDDEN: &[&str] = &[
        "<script", "<iframe", "<object", "<embed", "<form", "<input", "<applet", "<base", "<link",
        "<meta", "<frame",
    ];
    if FORBIDDEN.iter().any(|f| lower.contains(f)) {
        sink.error(
            "invariant",
            loc,
            "txt-1: the narrative SHALL contain only the basic html formatting elements and attributes".into(),
        );
        sink.error(
            "value",
            loc,
            "invalid element name in the XHTML (active content is not allowed)".into(),
        );
    } else if has_event_attribute(&lower) {
        sink.error(
            "invariant",
            loc,
            "txt-1: the narrative SHALL NOT contain event attributes (on…) or scripts".into(),
        );
    }
}

fn has_event_attribute(lower: &str) -> bool {
    lower.match_indices(" on").any(|(i, _)| {
        let rest = &lower[i + 3..];
        let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        name_len > 0 && rest[name_len..].trim_start().starts_with('=')
    })
}

/// Strings that carry active HTML content are refused (a security check the reference
/// validator makes too).
pub(crate) fn check_string_security(s: &str, loc: &str, sink: &mut Sink) {
    if !s.contains('<') {
        return;
    }
    let lower = s.to_ascii_lowercase();
    const ACTIVE: &[&str] = &["<script", "<iframe", "<object", "<embed", "<img", "<form"];
    if ACTIVE.iter().any(|a| lower.contains(a)) {
        sink.error(
            "security",
            loc,
            "the string contains text that looks like embedded HTML tags, which are not allowed"
                .into(),
        );
    }
}

/// LOINC: `NNNNN-C`, C the mod-10 check digit of the number part (LOINC's algorithm: double
/// every other digit from the right, starting with the rightmost; sum digits; 10 − sum % 10).
/// Part, answer and group codes (`LP…`, `LA…`, `LG…`) are accepted on form alone.
pub fn loinc_ok(code: &str) -> bool {
    let Some((num, check)) = code.split_once('-') else {
        return false;
    };
    if let Some(rest) = num
        .strip_prefix("LP")
        .or_else(|| num.strip_prefix("LA"))
        .or_else(|| num.strip_prefix("LG"))
        .or_else(|| num.strip_prefix("LL"))
    {
        return !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_digit())
            && check.len() == 1
            && check.bytes().all(|b| b.is_ascii_digit());
    }
    if num.is_empty()
        || num.len() > 7
        || !num.bytes().all(|b| b.is_ascii_digit())
        || check.len() != 1
    {
        return false;
    }
    let Some(check) = check.chars().next().and_then(|c| c.to_digit(10)) else {
        return false;
    };
    let mut sum = 0u32;
    for (i, b) in num.bytes().rev().enumerate() {
        let d = u32::from(b - b'0');
        if i % 2 == 0 {
            let dd = d * 2;
            sum += dd / 10 + dd % 10;
        } else {
            sum += d;
        }
    }
    (10 - sum % 10) % 10 == check
}

/// SNOMED CT identifier: 6–18 digits, no leading zero, Verhoeff check digit last.
pub fn snomed_ok(code: &str) -> bool {
    if !(6..=18).contains(&code.len())
        || code.starts_with('0')
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return false;
    }
    verhoeff_ok(code)
}

fn verhoeff_ok(digits: &str) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    let mut c = 0u8;
    for (i, b) in digits.bytes().rev().enumerate() {
        let d = usize::from(b - b'0');
        c = D[usize::from(c)][usize::from(P[i % 8][d])];
    }
    c == 0
}

/// ICD-10-CM code form: a letter, two characters (digit, digit or A/B), then optionally a
/// dot and one to four characters.
pub fn icd10cm_ok(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() < 3 {
        return false;
    }
    let first = b[0].is_ascii_uppercase() && b[0] != b'U';
    let second = b[1].is_ascii_digit();
    let third = b[2].is_ascii_digit() || b[2] == b'A' || b[2] == b'B';
    if !(first && second && third) {
        return false;
    }
    match &code[3..] {
        "" => true,
        rest => rest.strip_prefix('.').is_some_and(|tail| {
            (1..=4).contains(&tail.len())
                && tail
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && c != b'U'))
        }),
    }
}

/// NPI: ten digits whose Luhn check (over `80840` + the first nine digits) gives the tenth.
pub fn npi_ok(value: &str) -> bool {
    if value.len() != 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let full = format!("80840{value}");
    let mut sum = 0u32;
    for (i, b) in full.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loinc_check_digit() {
        assert!(loinc_ok("8867-4")); // heart rate
        assert!(loinc_ok("2339-0")); // glucose
        assert!(loinc_ok("85354-9")); // blood pressure panel
        assert!(!loinc_ok("8867-5"));
        assert!(!loinc_ok("8867"));
        assert!(!loinc_ok("88a7-4"));
        assert!(loinc_ok("LA6576-8"));
        assert!(!loinc_ok("LA-8"));
    }

    #[test]
    fn snomed_verhoeff() {
        assert!(snomed_ok("44054006")); // diabetes mellitus type 2
        assert!(snomed_ok("38341003")); // hypertension
        assert!(snomed_ok("73211009"));
        assert!(!snomed_ok("44054007"));
        assert!(!snomed_ok("12345"));
        assert!(!snomed_ok("0440540061"));
    }

    #[test]
    fn icd10cm_pattern() {
        assert!(icd10cm_ok("E11.9"));
        assert!(icd10cm_ok("I10"));
        assert!(icd10cm_ok("S72.001A"));
        assert!(!icd10cm_ok("E1"));
        assert!(!icd10cm_ok("e11.9"));
        assert!(!icd10cm_ok("E11."));
        assert!(!icd10cm_ok("E11.12345"));
    }

    #[test]
    fn npi_luhn() {
        assert!(npi_ok("1234567893")); // CMS's worked example
        assert!(!npi_ok("1234567890"));
        assert!(!npi_ok("123456789"));
    }

    #[test]
    fn xhtml_with_script_is_refused() {
        let mut sink = Sink::default();
        check_xhtml(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>x</script></div>",
            "Patient.text.div",
            &mut sink,
        );
        assert_eq!(sink.outcome.issues.len(), 2);
        let mut sink = Sink::default();
        check_xhtml(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onclick=\"x\">a</p></div>",
            "Patient.text.div",
            &mut sink,
        );
        assert_eq!(sink.outcome.issues.len(), 1);
        let mut sink = Sink::default();
        check_xhtml(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>fine, on = ok</p></div>",
            "Patient.text.div",
            &mut sink,
        );
        assert!(sink.outcome.issues.is_empty());
    }
}
