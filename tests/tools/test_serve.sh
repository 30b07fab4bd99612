#!/usr/bin/env bash
# duet serve end to end with the official openai Python client
# (tests/serve/test_openai_api.py). The client lives in a venv under
# $DUET_CACHE, created on first run from PyPI; exit 77 (skip) when it
# cannot be created (no network, no python3-venv).
set -u
duet="$1"
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${DUET_CACHE:-$HOME/.cache/duet}"
model="${DUET_MODEL:-$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ ! -f "$model" ]; then
  echo "model $model is missing: run scripts/fetch-model.sh first" >&2
  exit 1
fi
venv="$cache/serve-test-venv"
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  echo "creating $venv (pip install openai==3.57.0)"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q "openai==3.57.0"; } >&2; then
    echo "skip: cannot create the test venv $venv" >&2
    exit 77
  fi
fi
exec "$venv/bin/python" "$here/serve/test_openai_api.py" "$duet" "$model"
