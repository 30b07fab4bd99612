#!/usr/bin/env bash
# Makes a Q8_0 GGUF of the default model for the Q8_0 baselines and tests.
#
# Source: the Q4_1 file that scripts/fetch-model.sh fetches, requantized with
# llama.cpp's llama-quantize --allow-requantize (Q4_1 -> f32 -> Q8_0). No
# higher-precision copy of SmolLM2-135M-Instruct is reachable offline, so the
# Q8_0 weights carry Q4_1's precision: the file has Q8_0's size, layout and
# speed, not the quality of a Q8_0 made from the original BF16 weights.
# token_embd is already Q8_0 in the source and stays Q8_0.
#
# Environment: DUET_CACHE (default ~/.cache/duet); needs scripts/build-llamacpp.sh.
# Output: $DUET_CACHE/models/SmolLM2-135M-Instruct.Q8_0.gguf (kept if present).
set -euo pipefail

DUET_CACHE=${DUET_CACHE:-$HOME/.cache/duet}
MODELS=$DUET_CACHE/models
SRC=${SRC_MODEL:-$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf}
DST=${DST_MODEL:-$MODELS/SmolLM2-135M-Instruct.Q8_0.gguf}
QUANTIZE=$DUET_CACHE/llama.cpp-build/bin/llama-quantize
HERE=$(cd "$(dirname "$0")" && pwd)

if [[ -f $DST ]]; then
    echo "make-q8-model: $DST (present)"
    exit 0
fi
[[ -f $SRC ]] || "$HERE/fetch-model.sh"
[[ -x $QUANTIZE ]] || "$HERE/build-llamacpp.sh"

tmp=$DST.tmp.$$
trap 'rm -f "$tmp"' EXIT
"$QUANTIZE" --allow-requantize "$SRC" "$tmp" Q8_0 "${THREADS:-$(nproc)}" >"$tmp.log" 2>&1 \
    || { cat "$tmp.log"; rm -f "$tmp.log"; exit 1; }
rm -f "$tmp.log"
mv "$tmp" "$DST"
echo "make-q8-model: wrote $DST ($(stat -c %s "$DST") bytes)"
