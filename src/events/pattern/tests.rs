use super::*;
use serde_json::json;

const CASES: &str = include_str!("../../../tests/fixtures/eventbridge-patterns.json");

#[test]
fn the_documented_examples_match_as_documented() {
    let fixture: Value = serde_json::from_str(CASES).unwrap();
    let events = fixture["events"].as_object().unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(
        cases.len() > 60,
        "the table is the documentation's examples"
    );
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let event = &events[case["event"].as_str().unwrap()];
        let pattern = EventPattern::from_value(&case["pattern"])
            .unwrap_or_else(|e| panic!("{name}: pattern refused: {e}"));
        let expected = case["matches"].as_bool().unwrap();
        if pattern.matches(event) != expected {
            failures.push(format!("{name}: expected matches={expected}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn invalid_patterns_are_refused_naming_the_place() {
    let fixture: Value = serde_json::from_str(CASES).unwrap();
    for case in fixture["invalid"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let e = EventPattern::from_value(&case["pattern"])
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        assert_eq!(e.path, case["path"].as_str().unwrap(), "{name}: {e}");
        assert!(!e.message.is_empty());
    }
}

#[test]
fn text_patterns_and_the_size_limit() {
    let p = EventPattern::parse(r#"{"source": ["fhir-unify"]}"#).unwrap();
    assert!(p.matches(&json!({"source": "fhir-unify"})));
    assert!(!p.matches(&json!({"source": "other"})));
    assert!(!p.matches(&json!("fhir-unify")), "a non-object event");
    let e = EventPattern::parse("{not json").unwrap_err();
    assert!(e.message.contains("not JSON"), "{e}");
    let big = json!({"source": ["x".repeat(MAX_PATTERN_CHARS)]});
    let e = EventPattern::from_value(&big).unwrap_err();
    assert!(e.message.contains("4096"), "{e}");
}

#[test]
fn wildcard_escapes() {
    let g = Glob::parse(r"a\*b*c\\", "w").unwrap();
    assert!(g.matches(r"a*bXYZc\"));
    assert!(g.matches(r"a*bc\"));
    assert!(!g.matches(r"aXbc\"), "the escaped star is literal");
    let star = Glob::parse("*", "w").unwrap();
    assert!(star.matches("") && star.matches("anything"));
    let overlap = Glob::parse("ab*ba", "w").unwrap();
    assert!(!overlap.matches("aba") && overlap.matches("abba"));
}

/// A tiny deterministic generator (xorshift), so the property tests need no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn text(&mut self, alphabet: &[char], max: usize) -> String {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

/// Oracle: textbook dynamic programming over (pattern position, text position).
fn glob_oracle(pattern: &[char], text: &[char]) -> bool {
    let mut dp = vec![vec![false; text.len() + 1]; pattern.len() + 1];
    dp[0][0] = true;
    for i in 1..=pattern.len() {
        for j in 0..=text.len() {
            dp[i][j] = if pattern[i - 1] == '*' {
                dp[i - 1][j] || (j > 0 && dp[i][j - 1])
            } else {
                j > 0 && dp[i - 1][j - 1] && pattern[i - 1] == text[j - 1]
            };
        }
    }
    dp[pattern.len()][text.len()]
}

#[test]
fn wildcard_agrees_with_a_dynamic_programming_oracle() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    for _ in 0..20_000 {
        let p = rng.text(&['a', 'b', '*'], 7);
        if p.contains("**") {
            continue;
        }
        let t = rng.text(&['a', 'b'], 9);
        let pattern = EventPattern::from_value(&json!({"f": [{"wildcard": p}]})).unwrap();
        let chars: Vec<char> = p.chars().collect();
        let text: Vec<char> = t.chars().collect();
        assert_eq!(
            pattern.matches(&json!({"f": t})),
            glob_oracle(&chars, &text),
            "wildcard {p:?} on {t:?}"
        );
        checked += 1;
    }
    assert!(checked > 10_000);
}

#[test]
fn string_and_numeric_operators_agree_with_simple_oracles() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..5_000 {
        let s = rng.text(&['a', 'B', 'b', 'A'], 5);
        let p = rng.text(&['a', 'B', 'b', 'A'], 3);
        let event = json!({"f": s});
        let check = |cond: Value, expected: bool| {
            let pattern = EventPattern::from_value(&json!({"f": [cond.clone()]})).unwrap();
            assert_eq!(pattern.matches(&event), expected, "{cond} on {s:?}");
        };
        let (ls, lp) = (s.to_lowercase(), p.to_lowercase());
        check(json!(p), s == p);
        check(json!({"prefix": p}), s.starts_with(&p));
        check(json!({"suffix": p}), s.ends_with(&p));
        check(
            json!({"prefix": {"equals-ignore-case": p}}),
            ls.starts_with(&lp),
        );
        check(
            json!({"suffix": {"equals-ignore-case": p}}),
            ls.ends_with(&lp),
        );
        check(json!({"equals-ignore-case": p}), ls == lp);
        check(json!({"anything-but": p}), s != p);
        check(json!({"anything-but": {"prefix": p}}), !s.starts_with(&p));
        check(json!({"anything-but": {"suffix": p}}), !s.ends_with(&p));
        check(json!({"anything-but": {"equals-ignore-case": p}}), ls != lp);

        let x = rng.below(21) as f64 / 2.0 - 5.0;
        let a = rng.below(11) as f64 - 5.0;
        let b = a + 1.0 + rng.below(5) as f64;
        let event = json!({"n": x});
        let numeric = |range: Value, expected: bool| {
            let pattern =
                EventPattern::from_value(&json!({"n": [{"numeric": range.clone()}]})).unwrap();
            assert_eq!(pattern.matches(&event), expected, "{range} on {x}");
        };
        numeric(json!([">", a, "<", b]), x > a && x < b);
        numeric(json!([">=", a, "<=", b]), x >= a && x <= b);
        numeric(json!([">", a]), x > a);
        numeric(json!(["<=", b]), x <= b);
        numeric(json!(["=", a]), x == a);
    }
}

#[test]
fn the_or_primitive_needs_two_plain_objects() {
    // An operator name inside an alternative: not an $or, so "$or" is a field whose array
    // holds a condition object.
    let p = EventPattern::from_value(&json!({"$or": [{"prefix": "a"}, {"suffix": "b"}]})).unwrap();
    assert!(p.matches(&json!({"$or": "abc"})));
    assert!(!p.matches(&json!({"x": "abc"})));
}
