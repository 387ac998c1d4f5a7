//! The global allocator of every binary that links the library (the `fhir-unify` CLI, the
//! Lambda functions, tests and benchmarks): mimalloc, when the default `mimalloc` feature is on.
//!
//! Why: a mapped record is a `serde_json::Value` tree (a Synthea patient row is ~55 strings in,
//! ~110 strings and ~25 maps out), so decoding and mapping are mostly small allocations and
//! frees. With glibc's malloc a quarter of the time went to `malloc`/`free`, and more to
//! `malloc_consolidate` walking the fast bins a batch of freed records leaves behind (which made
//! the CSV decode benchmark swing by a fifth on unrelated changes). mimalloc's per-thread free
//! lists have neither cost. It is set here, not in each `main`, so the Lambda functions and the
//! criterion benches (separate binaries) run with the allocator the CLI has.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
