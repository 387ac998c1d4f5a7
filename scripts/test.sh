#!/usr/bin/env bash
# Runs every test of the project, as CI does: formatting, lints, then the whole test suite.
# Tests read outside conformance data from ../shared/conformance (next to the checkout) or
# from $FHIR_UNIFY_SHARED_DIR, and fail with a clear message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${FHIR_UNIFY_SHARED_DIR:-}" ] && [ -d ../shared ]; then
  FHIR_UNIFY_SHARED_DIR="$(cd ../shared && pwd)"
  export FHIR_UNIFY_SHARED_DIR
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# --- partner gateway: the Python FHIR client that tests/fhir_client.rs drives -------------
# fhirclient (PyPI, SMART on FHIR) in a project-local virtualenv, ignored by git.
echo "== tools: fhirclient into .tools/py"
if ! .tools/py/bin/python -c "import fhirclient" 2>/dev/null; then
  python3 -m venv .tools/py
  .tools/py/bin/pip install --quiet --disable-pip-version-check "fhirclient==4.4.0"
fi
# --- end partner gateway --------------------------------------------------------------------

echo "== cargo test"
cargo test --workspace --all-targets --locked
