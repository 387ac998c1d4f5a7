#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use super::{Bindings, Expr, Outcome};

fn ev(expr: &str, input: Value) -> Outcome {
    Expr::parse(expr)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
        .evaluate(Some(&input), &Bindings::new())
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
}

fn val(expr: &str, input: Value) -> Value {
    match ev(expr, input) {
        Outcome::Value(v) => v,
        other => panic!("{expr}: {other:?}"),
    }
}

fn err(expr: &str, input: Value) -> String {
    match Expr::parse(expr) {
        Err(e) => e.code.to_string(),
        Ok(x) => x
            .evaluate(Some(&input), &Bindings::new())
            .map(|o| panic!("{expr} gave {o:?}"))
            .unwrap_err()
            .code
            .to_string(),
    }
}

#[test]
fn paths_sequences_and_flattening() {
    let doc = json!({"a": [{"b": [1, 2]}, {"b": [3]}, {"c": 0}], "x": {"y": [[1, 2]]}, "s": "t"});
    assert_eq!(val("a.b", doc.clone()), json!([1, 2, 3]));
    assert_eq!(val("a[0].b", doc.clone()), json!([1, 2]));
    assert_eq!(val("a.b[0]", doc.clone()), json!([1, 3]));
    assert_eq!(val("a[-1].c", doc.clone()), json!(0));
    assert_eq!(val("x.y", doc.clone()), json!([[1, 2]]));
    assert_eq!(
        val("a[$exists(b)]", doc.clone()).as_array().unwrap().len(),
        2
    );
    assert_eq!(val("a[c = 0].c", doc.clone()), json!(0));
    assert_eq!(val("s", doc.clone()), json!("t"));
    assert_eq!(ev("nothing.here", doc.clone()), Outcome::Undefined);
    assert_eq!(val("$count(a.*)", doc.clone()), json!(4));
    assert_eq!(val("$sum(**.b)", doc.clone()), json!(6));
    assert_eq!(val("a.b[]", json!({"a": {"b": 1}})), json!([1]));
}

#[test]
fn operators() {
    let doc = json!({"n": 7, "s": "ab", "l": [1, 2, 3]});
    assert_eq!(val("n * 2 + 1", doc.clone()), json!(15));
    assert_eq!(val("n / 2", doc.clone()), json!(3.5));
    assert_eq!(val("n % 4", doc.clone()), json!(3));
    assert_eq!(val("-n", doc.clone()), json!(-7));
    assert_eq!(val("s & '-' & n", doc.clone()), json!("ab-7"));
    assert_eq!(val("n > 5 and s = 'ab'", doc.clone()), json!(true));
    assert_eq!(val("n < 5 or false", doc.clone()), json!(false));
    assert_eq!(val("2 in l", doc.clone()), json!(true));
    assert_eq!(val("n != 7", doc.clone()), json!(false));
    assert_eq!(val("n > 5 ? 'big' : 'small'", doc.clone()), json!("big"));
    assert_eq!(ev("n < 5 ? 'big'", doc.clone()), Outcome::Undefined);
    assert_eq!(val("[1..4]", doc.clone()), json!([1, 2, 3, 4]));
    assert_eq!(
        val("[0, [1, 2], l]", doc.clone()),
        json!([0, [1, 2], 1, 2, 3])
    );
    assert_eq!(val("{'k': n, 'm': nothing}", doc.clone()), json!({"k": 7}));
    assert_eq!(val("l ~> $sum()", doc.clone()), json!(6));
    assert_eq!(val("l^(>$)", doc.clone()), json!([3, 2, 1]));
    assert_eq!(val("\"a\\\"b\" = 'a\"b'", doc.clone()), json!(true));
    assert_eq!(val("{'a': 1} = {'a': 1}", doc), json!(true));
}

#[test]
fn bindings_blocks_and_lambdas() {
    assert_eq!(val("($x := 2; $y := $x * 3; $y)", json!(null)), json!(6));
    assert_eq!(
        val("($f := function($a, $b){ $a + $b }; $f(2, 3))", json!(null)),
        json!(5)
    );
    assert_eq!(
        val(
            "($fact := function($n){ $n <= 1 ? 1 : $n * $fact($n - 1) }; $fact(5))",
            json!(null)
        ),
        json!(120)
    );
    assert_eq!(
        ev("$fn := function($x){$x}", json!(null)),
        Outcome::Function
    );
    assert_eq!(
        val("$map([1, 2, 3], function($v){ $v * 10 })", json!(null)),
        json!([10, 20, 30])
    );
    assert_eq!(
        val(
            "$filter([1, 2, 3, 4], function($v){ $v % 2 = 0 })",
            json!(null)
        ),
        json!([2, 4])
    );
    assert_eq!(
        val(
            "$reduce([1, 2, 3], function($a, $b){ $a + $b })",
            json!(null)
        ),
        json!(6)
    );
    assert_eq!(
        val("$sort([3, 1, 2], function($a, $b){ $a > $b })", json!(null)),
        json!([1, 2, 3])
    );
}

#[test]
fn standard_functions() {
    let n = json!(null);
    for (e, want) in [
        ("$string(1.5)", json!("1.5")),
        ("$string({'a': [1]})", json!("{\"a\":[1]}")),
        ("$string(0.1 + 0.2)", json!("0.3")),
        ("$number('12.5')", json!(12.5)),
        ("$boolean('')", json!(false)),
        ("$not(true)", json!(false)),
        ("$exists(nothing)", json!(false)),
        ("$type([])", json!("array")),
        ("$count([1, 2])", json!(2)),
        ("$max([1, 5, 2])", json!(5)),
        ("$min([4, 2])", json!(2)),
        ("$average([1, 2, 3])", json!(2)),
        ("$length('héllo')", json!(5)),
        ("$substring('hello', 1, 3)", json!("ell")),
        ("$substring('hello', -3)", json!("llo")),
        ("$substringBefore('a-b', '-')", json!("a")),
        ("$substringAfter('a-b', '-')", json!("b")),
        ("$uppercase('a')", json!("A")),
        ("$lowercase('A')", json!("a")),
        ("$trim('  a   b ')", json!("a b")),
        ("$pad('a', 3, '*')", json!("a**")),
        ("$contains('hello', 'ell')", json!(true)),
        ("$contains('hello', /^h.l/)", json!(true)),
        ("$split('a,b,c', ',')", json!(["a", "b", "c"])),
        ("$join(['a', 'b'], '-')", json!("a-b")),
        ("$replace('aXbX', 'X', '_')", json!("a_b_")),
        ("$replace('abc', /(b)/, '[$1]')", json!("a[b]c")),
        ("$match('a1b22', /[0-9]+/).match", json!(["1", "22"])),
        ("$keys({'a': 1, 'b': 2})", json!(["a", "b"])),
        ("$lookup({'a': 1}, 'a')", json!(1)),
        (
            "$merge([{'a': 1}, {'b': 2}, {'a': 3}])",
            json!({"a": 3, "b": 2}),
        ),
        ("$spread({'a': 1, 'b': 2})", json!([{"a": 1}, {"b": 2}])),
        ("$each({'a': 1}, function($v, $k){ $k & $v })", json!("a1")),
        ("$single([1, 2, 3], function($v){ $v = 2 })", json!(2)),
        ("$append([1], 2)", json!([1, 2])),
        ("$distinct([1, 1, 2])", json!([1, 2])),
        ("$reverse([1, 2])", json!([2, 1])),
        ("$zip([1, 2], [3, 4])", json!([[1, 3], [2, 4]])),
        ("$round(2.5)", json!(2)),
        ("$round(2.71828, 2)", json!(2.72)),
        ("$floor(2.7)", json!(2)),
        ("$ceil(2.1)", json!(3)),
        ("$abs(-2)", json!(2)),
        ("$power(2, 10)", json!(1024)),
        ("$sqrt(16)", json!(4)),
        ("$fromMillis(0)", json!("1970-01-01T00:00:00.000Z")),
        ("$toMillis('1970-01-01T00:00:01Z')", json!(1000)),
        ("$base64encode('hi')", json!("aGk=")),
        ("$base64decode('aGk=')", json!("hi")),
        ("$partition([1, 2, 3], 2)", json!([[1, 2], [3]])),
        ("$range(0, 10, 5)", json!([0, 5, 10])),
        ("$range(1, 9, 9)", json!(1)),
        (
            "$hash('abc', 'SHA-256')",
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ),
        ("$parse('[1, {\"a\": true}]')", json!([1, {"a": true}])),
    ] {
        assert_eq!(val(e, n.clone()), want, "{e}");
    }
    assert_eq!(val("$length($uuid())", n.clone()), json!(36));
    let r = val("$random()", n.clone()).as_f64().unwrap();
    assert!((0.0..1.0).contains(&r));
    assert_eq!(val("$random(7) = $random(7)", n), json!(true));
}

#[test]
fn errors_have_codes() {
    assert_eq!(err("1 +", json!(null)), "S0207");
    assert_eq!(err("'abc", json!(null)), "S0101");
    assert_eq!(err("(1", json!(null)), "S0202");
    assert_eq!(err("1 + 'a'", json!(null)), "T2002");
    assert_eq!(err("'a' < 1", json!(null)), "T2009");
    assert_eq!(err("$nothing()", json!(null)), "T1006");
    assert_eq!(err("{1: 2}", json!(null)), "T1003");
    assert_eq!(err("$number('x')", json!(null)), "D3030");
    assert_eq!(
        err("$f := function($x){ $f($x) }; $f(1)", json!(null)),
        "S0201"
    );
    assert_eq!(
        err("($f := function($x){ $f($x) }; $f(1))", json!(null)),
        "U1001"
    );
    assert_eq!(err("[1..100000000]", json!(null)), "D2014");
    assert_eq!(
        err("$partition([1], 0)", json!(null)),
        "States.QueryEvaluationError"
    );
    assert_eq!(
        err("$parse('{')", json!(null)),
        "States.QueryEvaluationError"
    );
    assert_eq!(err("/unclosed", json!(null)), "S0302");
    assert_eq!(err("$pad('a', 1e18)", json!(null)), "D3013");
    assert_eq!(ev("$__keep_array()", json!(null)), Outcome::Undefined);
    assert_eq!(val("$substring('abc', 1, 1e300)", json!(null)), json!("bc"));
}

#[test]
fn bindings_and_states() {
    let input = json!({"v": [1, 2]});
    let result = json!({"ok": true});
    let mut vars = serde_json::Map::new();
    vars.insert("count".into(), json!(3));
    let mut b = Bindings::new();
    b.states_field("input", &input)
        .states_field("result", &result)
        .with_map(&vars);
    let e = Expr::parse("$sum($states.input.v) + $count").unwrap();
    assert_eq!(e.evaluate(None, &b).unwrap(), Outcome::Value(json!(6)));
    let e = Expr::parse("$states.result.ok and $not($exists($states.errorOutput))").unwrap();
    assert_eq!(e.evaluate(None, &b).unwrap(), Outcome::Value(json!(true)));
    assert_eq!(
        e.text(),
        "$states.result.ok and $not($exists($states.errorOutput))"
    );
    let e = Expr::parse("states.input").unwrap();
    assert_eq!(e.evaluate(None, &b).unwrap(), Outcome::Undefined);
}

#[test]
fn truncated_and_mangled_expressions_never_panic() {
    let sources = [
        "($f := function($a, $b){ $a[$b > 1].x ~> $sum() }; $f(items, 2) & 'z')",
        "{'a': [1..3], \"b\": $match('x1', /[0-9]/i).groups, `c d`: **.e[-1]}",
        "items^(>price, name)[0].$string() ? $not(true) : -$abs(-1.5e3)",
        "/* c */ $replace(\"a\\u00e9\", /(a)/, '$1$$') in ['x'] and $exists($$)",
    ];
    let input = json!({"items": [{"price": 2, "name": "n", "x": 1}], "e": [1, {"e": 2}]});
    let mut checked = 0;
    for src in sources {
        let chars: Vec<char> = src.chars().collect();
        for end in 0..=chars.len() {
            let prefix: String = chars[..end].iter().collect();
            // A prefix, and the same text with one character dropped.
            let mut dropped = chars.clone();
            if end < dropped.len() {
                dropped.remove(end);
            }
            for text in [prefix, dropped.into_iter().collect()] {
                if let Ok(e) = Expr::parse(&text) {
                    let _ = e.evaluate(Some(&input), &Bindings::new());
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 300);
}

fn account() -> Value {
    json!({"Account": {"Account Name": "Firefly", "Order": [
        {"OrderID": "order103", "Product": [
            {"Product Name": "Bowler Hat", "ProductID": 858383, "Price": 34.45, "Quantity": 2},
            {"Product Name": "Trilby hat", "ProductID": 858236, "Price": 21.67, "Quantity": 1}]},
        {"OrderID": "order104", "Product": [
            {"Product Name": "Bowler Hat", "ProductID": 858383, "Price": 34.45, "Quantity": 4},
            {"Product Name": "Cloak", "ProductID": 345664, "Price": 107.99, "Quantity": 1}]}
    ]}})
}

#[test]
fn object_constructor_groups_by_key() {
    assert_eq!(
        val("Account.Order.Product{`Product Name`: Price}", account()),
        json!({"Bowler Hat": [34.45, 34.45], "Trilby hat": 21.67, "Cloak": 107.99})
    );
    assert_eq!(
        val(
            "Account.Order.Product{$string(ProductID): Price}",
            account()
        ),
        json!({"858383": [34.45, 34.45], "858236": 21.67, "345664": 107.99})
    );
    assert_eq!(
        val(
            "Account.Order.Product{`Product Name`: $sum(Quantity)}",
            account()
        ),
        json!({"Bowler Hat": 6, "Trilby hat": 1, "Cloak": 1})
    );
    // A constructor without a path groups the context.
    assert_eq!(
        val(
            "{type: $count($)}",
            json!([{"type": "a"}, {"type": "b"}, {"type": "a"}])
        ),
        json!({"a": 2, "b": 1})
    );
    assert_eq!(val("nothing{a: b}", account()), json!({}));
    assert_eq!(err("Account.Order.Product{Price: 1}", account()), "T1003");
    assert_eq!(
        err("Account.Order{OrderID: 1, 'order103': 2}", account()),
        "D1009"
    );
}

#[test]
fn positional_and_context_bindings() {
    assert_eq!(
        val(
            "Account.Order#$o.Product.{'p': `Product Name`, 'o': $o}",
            account()
        ),
        json!([
            {"p": "Bowler Hat", "o": 0}, {"p": "Trilby hat", "o": 0},
            {"p": "Bowler Hat", "o": 1}, {"p": "Cloak", "o": 1}
        ])
    );
    let nums = json!([3, 1, 4, 1, 5, 9]);
    assert_eq!(val("$.$#$pos[$pos<3]", nums.clone()), json!([3, 1, 4]));
    assert_eq!(val("$.$#$pos[$pos<3]^($)", nums.clone()), json!([1, 3, 4]));
    assert_eq!(val("$.$#$pos[$pos<3]^(>$)", nums.clone()), json!([4, 3, 1]));
    assert_eq!(val("$.$^($)#$pos[$pos<3]", nums.clone()), json!([1, 1, 3]));
    assert_eq!(val("$.$#$pos[$pos<3][1]", nums.clone()), json!(1));
    let library = json!({"library": {
        "books": [{"title": "A", "isbn": "1"}, {"title": "B", "isbn": "2"}],
        "loans": [{"customer": "x", "isbn": "2"}, {"customer": "y", "isbn": "1"}, {"customer": "z", "isbn": "2"}]
    }});
    assert_eq!(
        val(
            "library.loans@$l.books@$b[$l.isbn=$b.isbn].{'title': $b.title, 'customer': $l.customer}",
            library.clone()
        ),
        json!([
            {"title": "B", "customer": "x"},
            {"title": "A", "customer": "y"},
            {"title": "B", "customer": "z"}
        ])
    );
    assert_eq!(
        val("library.books#$i[title = 'B'].{'i': $i}", library),
        json!({"i": 1})
    );
    assert_eq!(err("Account.Order#5", account()), "S0214");
    assert_eq!(err("Account.Order@Product", account()), "S0214");
}

#[test]
fn transform_operator() {
    let doc = json!({"Account": {"Order": [{"Product": [{"Price": 10, "Quantity": 3}, {"Price": 5, "Quantity": 2}]}]}, "other": [1]});
    assert_eq!(
        val(
            "$ ~> |Account.Order.Product|{'Price': Price * 2}|",
            doc.clone()
        ),
        json!({"Account": {"Order": [{"Product": [{"Price": 20, "Quantity": 3}, {"Price": 10, "Quantity": 2}]}]}, "other": [1]})
    );
    assert_eq!(
        val(
            "$ ~> |Account.Order.Product|{'Total': Price * Quantity}, ['Price', 'Quantity']|",
            doc.clone()
        ),
        json!({"Account": {"Order": [{"Product": [{"Total": 30}, {"Total": 10}]}]}, "other": [1]})
    );
    // A transform is a function: it can be named and applied later; the input is not changed.
    assert_eq!(
        val(
            "($t := |Account|{}, 'Order'|; [$t($), Account.Order.Product.Price])",
            doc.clone()
        ),
        json!([{"Account": {}, "other": [1]}, 10, 5])
    );
    assert_eq!(val("$ ~> |nothing|{'a': 1}|", doc.clone()), doc.clone());
    assert_eq!(err("$ ~> |Account|5|", doc.clone()), "T2011");
    assert_eq!(err("$ ~> |Account|{}, 5|", doc.clone()), "T2012");
    assert_eq!(err("$ ~> |Account|{}", doc), "S0202");
}

#[test]
fn partial_application() {
    assert_eq!(
        val(
            "($first3 := $substring(?, 0, 3); $first3('Hello World'))",
            json!(null)
        ),
        json!("Hel")
    );
    assert_eq!(
        val(
            "($add := function($a, $b) {$a + $b}; $inc := $add(?, 1); [1, 2] ~> $map($inc))",
            json!(null)
        ),
        json!([2, 3])
    );
    assert_eq!(
        val("$map(['ab', 'cd'], $substring(?, 1))", json!(null)),
        json!(["b", "d"])
    );
    assert_eq!(err("($x := 5; $x(?, 1))", json!(null)), "T1008");
    assert_eq!(err("substring(?, 1)", json!(null)), "T1007");
}

#[test]
fn format_number_pictures() {
    let f = |e: &str| val(e, json!(null));
    assert_eq!(f("$formatNumber(12345.6, '#,###.00')"), json!("12,345.60"));
    assert_eq!(f("$formatNumber(123.9, '9999')"), json!("0124"));
    assert_eq!(
        f("$formatNumber(1234.5678, '00.000e000')"),
        json!("12.346e002")
    );
    assert_eq!(f("$formatNumber(0.234, '#.00e0')"), json!("0.23e0"));
    assert_eq!(f("$formatNumber(34.555, '#0.00;(#0.00)')"), json!("34.56"));
    assert_eq!(
        f("$formatNumber(-34.555, '#0.00;(#0.00)')"),
        json!("(34.56)")
    );
    assert_eq!(f("$formatNumber(-6, '#0')"), json!("-6"));
    assert_eq!(f("$formatNumber(0.14, '01%')"), json!("14%"));
    assert_eq!(f("$formatNumber(1234567.5, '#,##0')"), json!("1,234,568"));
    assert_eq!(
        f(
            "$formatNumber(1234.5, '#.##0,00', {'decimal-separator': ',', 'grouping-separator': '.'})"
        ),
        json!("1.234,50")
    );
    assert_eq!(
        ev("$formatNumber(nothing, '#')", json!({})),
        Outcome::Undefined
    );
    assert_eq!(err("$formatNumber(20, '#;#;#')", json!(null)), "D3080");
    assert_eq!(err("$formatNumber(20, '.e0')", json!(null)), "D3085");
    assert_eq!(err("$formatNumber(20, '#.0.0')", json!(null)), "D3081");
    assert_eq!(err("$formatNumber(20, '0#')", json!(null)), "D3090");
    assert_eq!(err("$formatNumber('x', '#')", json!(null)), "T0410");
    assert_eq!(
        err("$formatNumber(1, '#', {'bogus': 'x'})", json!(null)),
        "D3080"
    );
}

#[test]
fn format_integer_and_base() {
    let f = |e: &str| val(e, json!(null));
    assert_eq!(
        f("$formatInteger(2789, 'w')"),
        json!("two thousand, seven hundred and eighty-nine")
    );
    assert_eq!(f("$formatInteger(1999, 'I')"), json!("MCMXCIX"));
    assert_eq!(f("$formatInteger(14, 'i')"), json!("xiv"));
    assert_eq!(f("$formatInteger(28, 'A')"), json!("AB"));
    assert_eq!(f("$formatInteger(1234, '#,##0')"), json!("1,234"));
    assert_eq!(f("$formatInteger(7, '000')"), json!("007"));
    assert_eq!(f("$formatInteger(-7, '0')"), json!("-7"));
    assert_eq!(f("$formatInteger(22, '0;o')"), json!("22nd"));
    assert_eq!(f("$formatInteger(13, '0;o')"), json!("13th"));
    assert_eq!(f("$formatInteger(21, 'w;o')"), json!("twenty-first"));
    assert_eq!(f("$formatInteger(3, 'Ww')"), json!("Three"));
    assert_eq!(err("$formatInteger(3, 'x')", json!(null)), "D3130");
    assert_eq!(err("$formatInteger(3, '0x0')", json!(null)), "D3131");
    assert_eq!(err("$formatInteger(3, '')", json!(null)), "D3130");
    assert_eq!(err("$formatInteger('3', '0')", json!(null)), "T0410");
    assert_eq!(f("$formatBase(100, 2)"), json!("1100100"));
    assert_eq!(f("$formatBase(2555, 16)"), json!("9fb"));
    assert_eq!(f("$formatBase(-10)"), json!("-10"));
    assert_eq!(err("$formatBase(10, 1)", json!(null)), "D3100");
    assert_eq!(err("$formatBase(10, 37)", json!(null)), "D3100");
}

#[test]
fn eval_function() {
    assert_eq!(
        val("$eval('[1,$string(2),3]')", json!(null)),
        json!([1, "2", 3])
    );
    assert_eq!(
        val("$eval('Price * 2', {'Price': 4})", json!(null)),
        json!(8)
    );
    assert_eq!(val("$eval('a')", json!({"a": "ctx"})), json!("ctx"));
    assert_eq!(ev("$eval(nothing)", json!({})), Outcome::Undefined);
    assert_eq!(err("$eval('1 +')", json!(null)), "D3120");
    assert_eq!(err("$eval('$nope()')", json!(null)), "D3121");
    // An expression that evaluates itself forever stops with a stack error, not a crash.
    assert_eq!(err("$eval(e)", json!({"e": "$eval(e)"})), "U1001");
}
