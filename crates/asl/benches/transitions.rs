//! State transitions per second: a Pass chain with Parameters, a Choice-heavy loop, a Map over
//! 1,000 items and a Retry/Catch path, each with history recording on (it always is).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use asl::{Engine, LambdaError, LambdaFunction, StateMachine, TaskRegistry, TestClock};
use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

struct Failing;

#[async_trait]
impl LambdaFunction for Failing {
    async fn invoke(&self, _payload: Value) -> Result<Value, LambdaError> {
        Err(LambdaError::new("Transient", "try again"))
    }
}

/// The benchmark definitions and inputs, shared with the side-by-side script
/// (`crates/asl/bench/side-by-side.sh`), which runs the same files through other engines.
const CASES: [(&str, &str); 4] = [
    (
        "pass_chain_200",
        include_str!("../bench/definitions/pass_chain_200.json"),
    ),
    (
        "choice_loop_100",
        include_str!("../bench/definitions/choice_loop_100.json"),
    ),
    (
        "map_1000_items",
        include_str!("../bench/definitions/map_1000_items.json"),
    ),
    (
        "retry_catch",
        include_str!("../bench/definitions/retry_catch.json"),
    ),
];

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut reg = TaskRegistry::new();
    reg.register_lambda("failing", Arc::new(Failing));
    // TestClock: retry intervals return at once, so the figure is the engine's own cost.
    let engine = Engine::new(reg, Arc::new(TestClock::new()));
    let mut group = c.benchmark_group("transitions");
    for (name, text) in CASES {
        let case: Value = serde_json::from_str(text).unwrap();
        let sm = StateMachine::parse(&case["definition"].to_string()).unwrap();
        let input = case["input"].clone();
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
