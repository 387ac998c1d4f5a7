//! State transitions per second: a Pass chain with Parameters, a Choice-heavy loop, a Map over
//! 1,000 items and a Retry/Catch path, each with history recording on (it always is).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use asl::{Engine, LambdaError, LambdaFunction, StateMachine, TaskRegistry, TestClock};
use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};

struct Failing;

#[async_trait]
impl LambdaFunction for Failing {
    async fn invoke(&self, _payload: Value) -> Result<Value, LambdaError> {
        Err(LambdaError::new("Transient", "try again"))
    }
}

/// `n` Pass states, each reshaping its input with Parameters.
pub fn pass_chain(n: usize) -> Value {
    let mut states = Map::new();
    for i in 0..n {
        let mut s = json!({"Type": "Pass", "Parameters": {"i.$": "$.i", "step": i, "ctx.$": "$$.State.Name"}});
        if i + 1 == n {
            s["End"] = json!(true);
        } else {
            s["Next"] = json!(format!("S{}", i + 1));
        }
        states.insert(format!("S{i}"), s);
    }
    json!({"StartAt": "S0", "States": states})
}

/// A counter loop: each round a Choice with several rules, then a Pass that adds one.
pub fn choice_loop() -> Value {
    json!({"StartAt": "Check", "States": {
        "Check": {"Type": "Choice", "Default": "Inc", "Choices": [
            {"Variable": "$.n", "NumericGreaterThanEquals": 100, "Next": "Done"},
            {"And": [{"Variable": "$.tag", "StringEquals": "never"}, {"Variable": "$.n", "IsNumeric": true}], "Next": "Done"},
            {"Or": [{"Variable": "$.missing", "IsPresent": true}, {"Variable": "$.tag", "StringMatches": "x*y"}], "Next": "Done"}
        ]},
        "Inc": {"Type": "Pass", "Parameters": {"n.$": "States.MathAdd($.n, 1)", "tag.$": "$.tag"}, "Next": "Check"},
        "Done": {"Type": "Succeed"}
    }})
}

pub fn map_items() -> Value {
    json!({"StartAt": "M", "States": {"M": {"Type": "Map", "ItemsPath": "$.items", "End": true,
        "ItemSelector": {"v.$": "$$.Map.Item.Value", "i.$": "$$.Map.Item.Index"},
        "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "Parameters": {"x.$": "$.v"}, "End": true}}}}}})
}

pub fn retry_catch() -> Value {
    json!({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:failing",
              "Retry": [{"ErrorEquals": ["Transient"], "IntervalSeconds": 1, "MaxAttempts": 3}],
              "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Handle"}],
              "End": true},
        "Handle": {"Type": "Pass", "End": true}
    }})
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut reg = TaskRegistry::new();
    reg.register_lambda("failing", Arc::new(Failing));
    // TestClock: retry intervals return at once, so the figure is the engine's own cost.
    let engine = Engine::new(reg, Arc::new(TestClock::new()));
    let items: Vec<Value> = (0..1000).map(|i| json!({"id": i})).collect();
    let cases = [
        ("pass_chain_200", pass_chain(200), json!({"i": 1})),
        (
            "choice_loop_100",
            choice_loop(),
            json!({"n": 0, "tag": "t"}),
        ),
        ("map_1000_items", map_items(), json!({"items": items})),
        ("retry_catch", retry_catch(), json!({"a": 1})),
    ];
    let mut group = c.benchmark_group("transitions");
    for (name, def, input) in cases {
        let sm = StateMachine::parse(&def.to_string()).unwrap();
        let first = rt.block_on(engine.start_execution(&sm, None, input.clone()));
        assert_eq!(first.status, asl::ExecutionStatus::Succeeded, "{name}");
        let transitions = first
            .history
            .iter()
            .filter(|e| e.event_type.ends_with("StateEntered"))
            .count() as u64;
        group.throughput(Throughput::Elements(transitions));
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(engine.start_execution(&sm, None, input.clone())))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
