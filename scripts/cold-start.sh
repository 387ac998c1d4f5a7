#!/usr/bin/env bash
# Cold start (process start to the first /response) and warm invocation time of every Lambda
# function, with the environment infra/template.yaml gives it, against the local Runtime API
# of tests/support/runtime_api.rs (each function's `cold_start_with_the_stacks_environment`
# test; the events need no AWS call). Prints one TIMING line per function.
#
# Usage: scripts/cold-start.sh [LAMBDA_DIR] [RUNS]
#   LAMBDA_DIR  packaged binaries (<dir>/<name>/bootstrap; default target/lambda, written by
#               scripts/package.sh); "debug" times the test build's own debug binaries
#   RUNS        cold starts per function (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-target/lambda}"
packages=()
for d in functions/*/; do packages+=(-p "$(basename "$d")"); done
if [ "$dir" != debug ]; then
  export FHIR_UNIFY_LAMBDA_DIR
  FHIR_UNIFY_LAMBDA_DIR="$(cd "$dir" && pwd)"
fi
uptime
FHIR_UNIFY_COLD_RUNS="${2:-10}" cargo test --locked -q "${packages[@]}" --test runtime_loop \
  cold_start_with_the_stacks_environment -- --nocapture --test-threads=1 2>&1 | grep TIMING
uptime
