#!/usr/bin/env bash
# Side-by-side speed of the asl crate, aws-local-stepfunctions (npm) and moto's Step Functions
# execution (PyPI), on the same definitions (crates/asl/bench/definitions/*.json).
# Installs the npm package into crates/asl/bench/node_modules (from the committed lock file)
# and moto into crates/asl/bench/.venv; both folders are git-ignored. Not part of the tests.
#
#   crates/asl/bench/side-by-side.sh [SECONDS_PER_CASE] [MOTO_RUNS_PER_CASE]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
seconds="${1:-3}"
moto_runs="${2:-3}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== installing aws-local-stepfunctions (npm ci)" >&2
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
echo "== installing moto into $here/.venv" >&2
moto_ok=1
if [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv" >&2 || moto_ok=0
fi
if [ "$moto_ok" = 1 ]; then
  "$here/.venv/bin/pip" install -q 'moto[stepfunctions]==5.2.5' >&2 || moto_ok=0
fi

echo "== asl (criterion, bench profile)" >&2
(cd "$root" && cargo bench -p asl --bench transitions -- \
  --warm-up-time 1 --measurement-time "$seconds" 2>/dev/null) >"$out/asl.txt"

echo "== aws-local-stepfunctions" >&2
(cd "$here" && node run-aws-local-stepfunctions.mjs "$seconds" definitions/*.json) >"$out/als.jsonl"

if [ "$moto_ok" = 1 ]; then
  echo "== moto ($moto_runs runs per case)" >&2
  (cd "$here" && .venv/bin/python run_moto.py "$moto_runs" definitions/*.json 2>/dev/null) >"$out/moto.jsonl"
else
  echo "moto did not install; its column is left empty" >&2
  : >"$out/moto.jsonl"
fi

python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
asl, name = {}, None
for line in open(f"{out}/asl.txt"):
    m = re.match(r"transitions/(\S+)", line)
    if m:
        name = m.group(1)
    m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+)", line)
    if m and name and name not in asl:
        scale = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6}[m.group(2)]
        asl[name] = float(m.group(1)) * scale
def load(path):
    rows = {}
    for line in open(path):
        r = json.loads(line)
        rows[r["case"]] = r.get("transitions_per_second")
    return rows
als, moto = load(f"{out}/als.jsonl"), load(f"{out}/moto.jsonl")
fmt = lambda v: f"{v:,.0f}" if v else "n/a"
ratio = lambda a, b: f"{a / b:,.1f}x" if a and b else "n/a"
print("| case | asl transitions/s | aws-local-stepfunctions | moto | asl / aws-local-stepfunctions | asl / moto |")
print("|---|---:|---:|---:|---:|---:|")
for case in sorted(asl):
    a, b, c = asl[case], als.get(case), moto.get(case)
    print(f"| {case} | {fmt(a)} | {fmt(b)} | {fmt(c)} | {ratio(a, b)} | {ratio(a, c)} |")
PY
