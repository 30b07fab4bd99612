#!/usr/bin/env bash
# Builds the llama.cpp baseline that docs/PERFORMANCE.md compares duet against.
#
# The source is the llama.cpp tree vendored in the llama-cpp-python sdist, so the
# benchmark binaries and the Python reference bindings (scripts/setup-reference-venv.sh)
# come from one and the same llama.cpp commit. CPU only, tuned for the build machine.
#
# Environment:
#   DUET_CACHE     cache root (default ~/.cache/duet)
#   LCP_VERSION    llama-cpp-python version whose vendored llama.cpp is built (default 0.3.36)
#   LCP_SDIST      path to an already downloaded sdist (optional)
#   JOBS           parallel build jobs (default: nproc)
#
# Output: $DUET_CACHE/llama.cpp-build/bin/{llama-bench,llama-cli,llama-server,
#         llama-quantize,llama-batched-bench} and the shared libraries next to them.
# Idempotent: an unchanged build is a no-op; cmake rebuilds only what changed.
set -euo pipefail

DUET_CACHE=${DUET_CACHE:-$HOME/.cache/duet}
LCP_VERSION=${LCP_VERSION:-0.3.36}
JOBS=${JOBS:-$(nproc)}
SDIST_DIR=$DUET_CACHE/sdist
SDIST=${LCP_SDIST:-$SDIST_DIR/llama_cpp_python-$LCP_VERSION.tar.gz}
SRC_PARENT=$DUET_CACHE/src
SRC=$SRC_PARENT/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp
BUILD=$DUET_CACHE/llama.cpp-build
TARGETS=(llama-bench llama-cli llama-server llama-quantize llama-batched-bench)

mkdir -p "$SDIST_DIR" "$SRC_PARENT"

if [[ ! -f $SDIST ]]; then
    # A copy left by an earlier session saves the download.
    if [[ -f /tmp/lcp/llama_cpp_python-$LCP_VERSION.tar.gz ]]; then
        cp "/tmp/lcp/llama_cpp_python-$LCP_VERSION.tar.gz" "$SDIST"
    else
        PY=${PYTHON:-python3}
        if ! "$PY" -m pip --version >/dev/null 2>&1; then
            for cand in "$DUET_CACHE/venv-ref/bin/python" /tmp/refvenv/bin/python; do
                if [[ -x $cand ]]; then PY=$cand; break; fi
            done
        fi
        "$PY" -m pip download --no-deps --no-binary :all: \
            "llama-cpp-python==$LCP_VERSION" -d "$SDIST_DIR"
    fi
fi

if [[ ! -f $SRC/CMakeLists.txt ]]; then
    tar xzf "$SDIST" -C "$SRC_PARENT"
fi

# The embedded web UI would be fetched from the network; the benchmark does not need it.
cmake -S "$SRC" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=ON \
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF \
    >"$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; exit 1; }

cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"

for t in "${TARGETS[@]}"; do
    [[ -x $BUILD/bin/$t ]] || { echo "build-llamacpp: $BUILD/bin/$t missing" >&2; exit 1; }
done
echo "llama.cpp $(git -C "$SRC" describe --tags --always 2>/dev/null || echo "from llama-cpp-python $LCP_VERSION") built in $BUILD/bin"
