//! JSONata evaluation: typical Step Functions expressions (parsed once, evaluated many times,
//! as the engine does), and a 200-state JSONata Pass chain through the engine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use asl::jsonata::{Bindings, Expr, Outcome};
use asl::{Engine, StateMachine, TaskRegistry, TestClock};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

const EXPRESSIONS: [(&str, &str); 4] = [
    ("field", "$states.input.order.id"),
    ("arithmetic", "$states.input.order.total * 1.2 + $fee"),
    (
        "sum_filter",
        "$sum($states.input.order.items[price > 10].price)",
    ),
    (
        "object",
        "{'id': $states.input.order.id, 'names': $states.input.order.items.name, 'big': $count($states.input.order.items[qty > 2]) > 0}",
    ),
];

fn input() -> Value {
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("item-{i}"), "price": i * 3, "qty": i % 5}))
        .collect();
    json!({"order": {"id": "o-1", "total": 120.5, "items": items}})
}

fn expressions(c: &mut Criterion) {
    let data = input();
    let mut vars = serde_json::Map::new();
    vars.insert("fee".into(), json!(2));
    let mut group = c.benchmark_group("jsonata");
    group.throughput(Throughput::Elements(1));
    for (name, text) in EXPRESSIONS {
        let expr = Expr::parse(text).unwrap();
        let mut b = Bindings::new();
        b.with_map(&vars).states_field("input", &data);
        assert!(
            matches!(expr.evaluate(None, &b).unwrap(), Outcome::Value(_)),
            "{name}"
        );
        group.bench_function(name, |bench| {
            bench.iter(|| expr.evaluate(None, &b).unwrap())
        });
    }
    group.bench_function("parse_object", |bench| {
        bench.iter(|| Expr::parse(EXPRESSIONS[3].1).unwrap())
    });
    group.finish();
}

fn pass_chain(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut states = serde_json::Map::new();
    for i in 0..200 {
        let mut st = json!({"Type": "Pass",
            "Output": {"n": "{% $states.input.n + 1 %}", "tag": "{% 'step-' & $string($states.input.n) %}"}});
        if i == 199 {
            st["End"] = json!(true);
        } else {
            st["Next"] = json!(format!("S{}", i + 1));
        }
        states.insert(format!("S{i}"), st);
    }
    let def = json!({"QueryLanguage": "JSONata", "StartAt": "S0", "States": states});
    let sm = StateMachine::parse(&def.to_string()).unwrap();
    let engine = Engine::new(TaskRegistry::new(), Arc::new(TestClock::new()));
    let first = rt.block_on(engine.start_execution(&sm, None, json!({"n": 0})));
    assert_eq!(first.output.unwrap()["n"], json!(200));
    let mut group = c.benchmark_group("transitions");
    group.throughput(Throughput::Elements(200));
    group.bench_function("jsonata_pass_chain_200", |b| {
        b.iter(|| rt.block_on(engine.start_execution(&sm, None, json!({"n": 0}))))
    });
    group.finish();
}

criterion_group!(benches, expressions, pass_chain);
criterion_main!(benches);
