#!/usr/bin/env bash
# Builds every Lambda function (functions/*) for provided.al2023 on x86_64 and writes the
# artifacts infra/template.yaml deploys:
#
#   target/lambda/<name>/bootstrap      the binary (release profile: LTO, strip, abort on panic)
#   target/lambda/<name>/bootstrap.zip  the function's code
#   target/lambda/pipeline/pipeline.zip the pipeline layer: the folder of the pipeline file,
#                                       with that file as fhir-unify.yaml (mounted at /opt)
#
# Usage: scripts/package.sh [PIPELINE_FILE]     (default: examples/fhir-unify.yaml)
#
#   FHIR_UNIFY_FUNCTIONS="validate transform"   package only these functions (default: all;
#                                               fat LTO links each binary on one core)
#   FHIR_UNIFY_PACKAGE_VENV=DIR                 the virtualenv for zig and cargo-zigbuild
#                                               (default: .venv)
#
# Amazon Linux 2023 has glibc 2.34, older than this machine's: the binaries are linked with
# cargo-zigbuild against glibc 2.34 (zig and cargo-zigbuild come from PyPI, installed into
# .venv/), and the script fails if any binary needs a newer GLIBC symbol version.
set -euo pipefail
cd "$(dirname "$0")/.."

pipeline="${1:-examples/fhir-unify.yaml}"
[ -f "$pipeline" ] || { echo "package.sh: no pipeline file $pipeline" >&2; exit 1; }

glibc=2.34
target=x86_64-unknown-linux-gnu
out=target/lambda

venv="${FHIR_UNIFY_PACKAGE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r infra/requirements-package.txt
# cargo-zigbuild runs `python3 -m ziglang` when no `zig` is on PATH: the venv's python has it.
export PATH="$(cd "$venv" && pwd)/bin:$PATH"

functions=()
if [ -n "${FHIR_UNIFY_FUNCTIONS:-}" ]; then
  for name in $FHIR_UNIFY_FUNCTIONS; do
    [ -d "functions/$name" ] || { echo "package.sh: no function $name" >&2; exit 1; }
    functions+=("$name")
  done
else
  for dir in functions/*/; do
    functions+=("$(basename "$dir")")
  done
fi
packages=()
for name in "${functions[@]}"; do packages+=(-p "$name"); done

echo "== cargo zigbuild --release --target $target.$glibc (${functions[*]})"
start=$(date +%s)
cargo zigbuild --release --locked --target "$target.$glibc" "${packages[@]}"
echo "   built in $(( $(date +%s) - start )) s"

# Deterministic zips: fixed timestamps, bootstrap executable.
zip_files() { # zip_files ZIP DIR: every file under DIR, paths relative to DIR
  "$venv/bin/python" - "$1" "$2" <<'EOF'
import os, sys, zipfile
archive, root = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(base, name)
            info = zipfile.ZipInfo(os.path.relpath(path, root), date_time=(1980, 1, 1, 0, 0, 0))
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                z.writestr(info, f.read(), compresslevel=9)
EOF
}

status=0
printf '%-16s %10s %10s  %s\n' function binary zip "newest GLIBC needed"
for name in "${functions[@]}"; do
  binary="target/$target/release/$name"
  stage="$out/$name/stage"
  rm -rf "$out/$name"
  mkdir -p "$stage"
  cp "$binary" "$stage/bootstrap"
  cp "$binary" "$out/$name/bootstrap"
  zip_files "$out/$name/bootstrap.zip" "$stage"
  rm -rf "$stage"
  newest=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
  printf '%-16s %10s %10s  %s\n' "$name" "$(stat -c %s "$binary")" \
    "$(stat -c %s "$out/$name/bootstrap.zip")" "GLIBC_$newest"
  if [ "$(printf '%s\n%s\n' "$newest" "$glibc" | sort -V | tail -1)" != "$glibc" ]; then
    echo "package.sh: $name needs GLIBC_$newest, newer than Amazon Linux 2023's $glibc" >&2
    status=1
  fi
done

# The pipeline layer: the pipeline file's folder, without hidden files.
layer="$out/pipeline"
rm -rf "$layer"
mkdir -p "$layer/stage"
src_dir=$(dirname "$pipeline")
(cd "$src_dir" && find . -type f ! -path '*/.*' -print0) | while IFS= read -r -d '' f; do
  mkdir -p "$layer/stage/$(dirname "$f")"
  cp "$src_dir/$f" "$layer/stage/$f"
done
[ "$(basename "$pipeline")" = fhir-unify.yaml ] || mv "$layer/stage/$(basename "$pipeline")" "$layer/stage/fhir-unify.yaml"
zip_files "$layer/pipeline.zip" "$layer/stage"
rm -rf "$layer/stage"
printf '%-16s %10s %10s\n' pipeline - "$(stat -c %s "$layer/pipeline.zip")"

exit $status
