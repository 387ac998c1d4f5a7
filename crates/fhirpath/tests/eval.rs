#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Behaviour of the engine on FHIR JSON: navigation, logic, functions, errors.

use fhirpath::{Env, EvalError, Expression, Host, Item, ParseError};
use serde_json::{Value, json};

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "contained": [{"resourceType": "Practitioner", "id": "dr"}],
        "name": [{"given": ["Ann", "B"], "family": "Lee"}, {"use": "old", "family": "Ng"}],
        "birthDate": "1970-03",
        "_birthDate": {"extension": [{"url": "http://x/e", "valueBoolean": true}]},
        "deceasedBoolean": false,
        "generalPractitioner": [{"reference": "#dr"}],
        "multipleBirthInteger": 2
    })
}

fn eval(expr: &str, v: &Value) -> Vec<Item<'static>> {
    let v: &'static Value = Box::leak(Box::new(v.clone()));
    let env = Env {
        resource: Some(v),
        ..Env::default()
    };
    Expression::compile(expr)
        .unwrap()
        .evaluate(v, &env)
        .unwrap()
}

fn check(expr: &str, v: &Value) -> Option<bool> {
    let env = Env {
        resource: Some(v),
        ..Env::default()
    };
    Expression::compile(expr).unwrap().check(v, &env).unwrap()
}

#[test]
fn navigation_follows_fhir_json() {
    let p = patient();
    assert_eq!(eval("name.given", &p).len(), 2);
    assert_eq!(eval("Patient.name.family", &p).len(), 2);
    assert_eq!(
        check("name.where(use = 'old').family = 'Ng'", &p),
        Some(true)
    );
    // Choice types are found by their stem, with their type.
    assert_eq!(check("deceased = false", &p), Some(true));
    assert_eq!(check("deceased is boolean", &p), Some(true));
    assert_eq!(check("multipleBirth is Integer", &p), Some(true));
    assert_eq!(
        check("deceased.exists() and deceased.hasValue()", &p),
        Some(true)
    );
    // A primitive's extension lives in its `_` sibling.
    assert_eq!(check("birthDate.extension.count() = 1", &p), Some(true));
    assert_eq!(
        check("birthDate.extension('http://x/e').value = true", &p),
        Some(true)
    );
    assert_eq!(check("name[1].use = 'old'", &p), Some(true));
}

#[test]
fn empty_propagates_and_logic_is_three_valued() {
    let p = patient();
    assert_eq!(check("gender = 'male'", &p), None);
    assert_eq!(check("gender.empty()", &p), Some(true));
    assert_eq!(check("gender = 'x' or true", &p), Some(true));
    assert_eq!(check("gender = 'x' and false", &p), Some(false));
    assert_eq!(check("gender = 'x' and true", &p), None);
    assert_eq!(check("false implies gender = 'x'", &p), Some(true));
    assert_eq!(check("true implies gender = 'x'", &p), None);
    assert_eq!(check("true xor false", &p), Some(true));
    assert_eq!(check("(1 | 2 | 2).count() = 2", &p), Some(true));
    assert_eq!(check("(1).combine(1).count() = 2", &p), Some(true));
}

#[test]
fn functions_used_by_core_invariants() {
    let p = patient();
    assert_eq!(
        check("name.count() = 2 and name.given.isDistinct()", &p),
        Some(true)
    );
    assert_eq!(check("name.all(family.exists())", &p), Some(true));
    assert_eq!(check("name.select(given).count() = 2", &p), Some(true));
    assert_eq!(check("id.matches('[a-z][0-9]')", &p), Some(true));
    assert_eq!(
        check("id.matches('[0-9]')", &p),
        Some(false),
        "matches is whole-string"
    );
    assert_eq!(
        check(
            "id.startsWith('p') and id.contains('1') and id.length() = 2",
            &p
        ),
        Some(true)
    );
    assert_eq!(
        check("'#dr'.substring(1) in %rootResource.contained.id", &p),
        Some(true)
    );
    assert_eq!(
        check("generalPractitioner.resolve().is(Practitioner)", &p),
        Some(true)
    );
    assert_eq!(
        check(
            "generalPractitioner.resolve().ofType(Practitioner).exists()",
            &p
        ),
        Some(true)
    );
    assert_eq!(check("iif(name.exists(), 1, 2) = 1", &p), Some(true));
    assert_eq!(
        check("'5'.toInteger() + 1 = 6 and 2.5.toString() = '2.5'", &p),
        Some(true)
    );
    assert_eq!(
        check("descendants().where($this = 'Lee').exists()", &p),
        Some(true)
    );
    assert_eq!(check("children().count() > 5", &p), Some(true));
    assert_eq!(
        check("name.first().given.tail().single() = 'B'", &p),
        Some(true)
    );
    assert_eq!(
        check("'a-b'.replaceMatches('-.*', '') = 'a'", &p),
        Some(true)
    );
    assert_eq!(
        check("name.family.intersect('Lee' | 'X').count() = 1", &p),
        Some(true)
    );
    assert_eq!(check("%ucum = 'http://unitsofmeasure.org'", &p), Some(true));
    assert_eq!(
        check("contained.as(Practitioner).id = 'dr'", &p),
        Some(true)
    );
}

#[test]
fn dates_compare_with_partial_precision() {
    let v = json!({"start": "2020-01-01", "end": "2020-01-02T10:00:00Z", "same": "2020-01-01T10:00:00+02:00", "utc": "2020-01-01T08:00:00Z", "m": "2020-01"});
    assert_eq!(check("start <= end", &v), Some(true));
    assert_eq!(check("same = utc", &v), Some(true));
    assert_eq!(
        check("m < start", &v),
        None,
        "2020-01 against 2020-01-01 is uncertain"
    );
    assert_eq!(check("m < end", &v), None);
    assert_eq!(check("@2019 < start", &v), Some(true));
}

#[test]
fn quantities_compare_in_the_same_unit() {
    let v = json!({"low": {"value": 1, "code": "mg"}, "high": {"value": 2.5, "code": "mg"}, "other": {"value": 0.5, "code": "g"}});
    assert_eq!(check("low <= high", &v), Some(true));
    assert_eq!(check("high <= low", &v), Some(false));
    assert_eq!(
        check("low <= other", &v),
        None,
        "no conversion between units"
    );
}

struct Terms;
impl Host for Terms {
    fn member_of(&self, value: &Value, url: &str) -> Option<bool> {
        (url == "http://vs/known").then(|| value.as_str() == Some("a"))
    }
    fn html_checks(&self, div: &str) -> Option<bool> {
        Some(!div.contains("<script"))
    }
}

#[test]
fn terminology_is_asked_of_the_host_and_never_passes_silently() {
    let v = json!({"code": "a", "text": {"div": "<div>x</div>"}});
    let host = Terms;
    let env = Env {
        resource: Some(&v),
        host: Some(&host),
        ..Env::default()
    };
    let e = Expression::compile("code.memberOf('http://vs/known')").unwrap();
    assert_eq!(e.check(&v, &env).unwrap(), Some(true));
    let unknown = Expression::compile("code.memberOf('http://vs/other')").unwrap();
    assert!(matches!(
        unknown.check(&v, &env),
        Err(EvalError::NotChecked(_))
    ));
    let no_host = Env::default();
    assert!(matches!(
        e.check(&v, &no_host),
        Err(EvalError::NotChecked(_))
    ));
    let html = Expression::compile("text.`div`.htmlChecks()").unwrap();
    assert_eq!(html.check(&v, &env).unwrap(), Some(true));
}

#[test]
fn bad_expressions_are_refused_at_compile_time() {
    assert!(
        matches!(Expression::compile("name.frobnicate()"), Err(ParseError::UnknownFunction(f)) if f == "frobnicate")
    );
    assert!(matches!(
        Expression::compile("name.where("),
        Err(ParseError::Syntax { .. })
    ));
    assert!(matches!(
        Expression::compile("'open"),
        Err(ParseError::Syntax { .. })
    ));
    assert!(matches!(
        Expression::compile("%nope"),
        Err(ParseError::UnknownVariable(_))
    ));
    assert!(matches!(
        Expression::compile("a.matches('(')"),
        Err(ParseError::Syntax { .. })
    ));
    assert!(Expression::compile("a ^ b").is_err());
}

#[test]
fn evaluation_errors_are_typed() {
    let v = json!({"name": [{"family": "a"}, {"family": "b"}]});
    let e = Expression::compile("name.family = 'a' and true").unwrap();
    // `=` on two items is false, not an error; a boolean of two items is.
    assert_eq!(e.check(&v, &Env::default()).unwrap(), Some(false));
    let two = Expression::compile("name.family.not()").unwrap();
    assert!(matches!(
        two.check(&v, &Env::default()),
        Err(EvalError::Type(_))
    ));
    let deep = format!("{}1{}", "(".repeat(300), ")".repeat(300));
    assert!(Expression::compile(&deep).is_err());
}
