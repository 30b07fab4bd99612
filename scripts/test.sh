#!/usr/bin/env bash
# Build and run the whole test suite twice: a Release build, then an
# AddressSanitizer + UndefinedBehaviorSanitizer build (its own directory).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Release build + tests"
bash scripts/build.sh build
ctest --test-dir build --output-on-failure -j1

echo "== ASan + UBSan build + tests"
bash scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDUET_SANITIZE=ON
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j1
