#!/usr/bin/env bash
# Gateway read benchmark (BENCHMARKS.md): installs wrk from the distribution if it is missing
# and apt is usable, then runs `cargo bench --bench gateway` (falls back to a Rust load loop
# without wrk). Optimised build without LTO, to keep the build short on small machines.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -qq wrk >/dev/null || echo "wrk not installed: using the Rust load loop"
fi
CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
  cargo bench -p fhir-unify --bench gateway
