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
# ---- Python tools, one project-local virtualenv (.venv/, ignored by git), pinned in
# tools/requirements.txt: cfn-lint for infra/, aws-sam-translator and moto for the stack test
# (tests/sam_stack_moto.rs runs tools/sam_translate.py), and fhirclient, the real FHIR client that
# tests/fhir_client.rs drives against `fhir-unify serve`.
echo "== tools: Python (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tools/requirements.txt

echo "== cargo test"
cargo test --workspace --all-targets --locked

# ---- infra (issue 8): the SAM template and the state machine definitions -------------------
# cfn-lint (PyPI, in .venv/, installed above) and asl-validator (npm, into infra/node_modules/)
# at the versions the project pins; both are git-ignored. Any error or warning fails the run.
echo "== infra: lint tools"
(cd infra && npm ci --no-audit --no-fund --loglevel=error)
echo "== cfn-lint infra/template.yaml"
.venv/bin/cfn-lint infra/template.yaml
echo "== asl-validator statemachines/"
asl_tmp=$(mktemp -d)
trap 'rm -rf "$asl_tmp"' EXIT
for definition in statemachines/*.asl.json; do
  # The ${Placeholders} as the template's DefinitionSubstitutions fill them (dummy values of
  # the same kind), so the ARN checks see what Step Functions will.
  sed -E \
    -e 's/\$\{[A-Za-z0-9]+FunctionArn\}/arn:aws:lambda:us-east-1:123456789012:function:placeholder/g' \
    -e 's/\$\{[A-Za-z0-9]+StateMachineArn\}/arn:aws:states:us-east-1:123456789012:stateMachine:placeholder/g' \
    -e 's#\$\{[A-Za-z0-9]+QueueUrl\}#https://sqs.us-east-1.amazonaws.com/123456789012/placeholder#g' \
    -e 's/\$\{[A-Za-z0-9]+Arn\}/arn:aws:iam::123456789012:placeholder/g' \
    -e 's/\$\{[A-Za-z0-9]+\}/placeholder/g' \
    "$definition" > "$asl_tmp/$(basename "$definition")"
  infra/node_modules/.bin/asl-validator --json-path "$asl_tmp/$(basename "$definition")"
done
