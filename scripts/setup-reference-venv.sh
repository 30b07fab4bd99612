#!/usr/bin/env bash
# Creates the Python environment for reference data (tests/reference/*.py) and
# the llama.cpp cross-checks. duet itself never needs Python.
#
# Environment:
#   DUET_CACHE   cache root (default ~/.cache/duet)
#   REF_VENV     where the venv goes (default $DUET_CACHE/venv-ref)
#   PYTHON       interpreter to create it with (default python3; needs the venv module)
#   WITH_LLAMA_CPP=0   skip llama-cpp-python
#
# llama-cpp-python: when scripts/build-llamacpp.sh has already built the same
# llama.cpp (the one vendored in this llama-cpp-python sdist), the package is
# installed without its own native build and its lib/ links to those shared
# libraries, saving a second 10-15 minute compile; otherwise pip builds it.
#
# Idempotent: packages already at the pinned version are left alone.
# Usage afterwards: $REF_VENV/bin/python tests/reference/make_model_fixtures.py
set -euo pipefail

DUET_CACHE=${DUET_CACHE:-$HOME/.cache/duet}
REF_VENV=${REF_VENV:-$DUET_CACHE/venv-ref}
PYTHON=${PYTHON:-python3}
WITH_LLAMA_CPP=${WITH_LLAMA_CPP:-1}

# The versions the committed fixtures were made with (docs/REFERENCE.md).
PINS=(
    torch==2.15.0
    transformers==5.24.0
    accelerate==1.15.0
    tokenizers==0.23.3
    gguf==0.19.0
    numpy==2.4.6
    sentencepiece==0.2.3
    safetensors==0.8.0
    huggingface_hub==2.4.0
)
LCP_VERSION=0.3.36

if [[ ! -x $REF_VENV/bin/python ]]; then
    mkdir -p "$(dirname "$REF_VENV")"
    "$PYTHON" -m venv "$REF_VENV"
fi
PIP=("$REF_VENV/bin/python" -m pip --disable-pip-version-check)

# pip skips requirements that are already satisfied, so a rerun is quick.
"${PIP[@]}" install --quiet "${PINS[@]}"

if [[ $WITH_LLAMA_CPP == 1 ]]; then
    if "$REF_VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LCP_VERSION')" \
        2>/dev/null; then
        :
    else
        LIBDIR=$DUET_CACHE/llama.cpp-build/bin
        if [[ -f $LIBDIR/libllama.so ]]; then
            CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
                "${PIP[@]}" install --quiet --no-binary llama-cpp-python "llama-cpp-python==$LCP_VERSION"
            PKG=$("$REF_VENV/bin/python" -c \
                "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('llama_cpp').origin))")
            mkdir -p "$PKG/lib"
            for so in "$LIBDIR"/lib*.so*; do
                ln -sf "$so" "$PKG/lib/$(basename "$so")"
            done
        else
            echo "setup-reference-venv: building llama-cpp-python from source (10-15 min on 2 cores);" \
                 "run scripts/build-llamacpp.sh first to share its build" >&2
            CMAKE_ARGS="-DGGML_NATIVE=ON" \
                "${PIP[@]}" install --quiet --no-binary llama-cpp-python "llama-cpp-python==$LCP_VERSION"
        fi
    fi
fi

"$REF_VENV/bin/python" - <<'EOF'
import importlib.metadata as md
for p in ("torch", "transformers", "accelerate", "tokenizers", "gguf", "numpy",
          "sentencepiece", "llama_cpp_python"):
    try:
        print(f"{p:18s} {md.version(p)}")
    except md.PackageNotFoundError:
        print(f"{p:18s} (not installed)")
EOF
echo "reference venv ready: $REF_VENV"
