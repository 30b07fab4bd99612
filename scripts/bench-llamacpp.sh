#!/usr/bin/env bash
# llama.cpp baseline for docs/PERFORMANCE.md: llama-bench on the Q4_1 and
# Q8_0 models, 512-token prompt processing and 128-token single-stream decode.
#
# Two-thread timings on shared machines are noisy, so the two models are
# interleaved for ROUNDS rounds of llama-bench -r REPS each, and the median of
# all samples is reported per model and test.
#
# Environment:
#   DUET_CACHE   cache root (default ~/.cache/duet)
#   THREADS      llama-bench -t (default 2)
#   REPS         llama-bench -r per round (default 5)
#   ROUNDS       interleaved rounds (default 1)
#   FA           llama-bench -fa value (default: llama-bench's own default, auto)
#   MODELS       space-separated GGUF paths (default: the Q4_1 and Q8_0 SmolLM2 files)
#   OUT          raw JSONL results file (default $DUET_CACHE/bench/llamacpp-<date>.jsonl)
#   MAX_LOAD     if set, wait (up to WAIT_S seconds, default 300) before each run until the
#                1-minute load average is below it: other jobs on 2 cores wreck -t 2 timings
# Prints a table: model, test, median tok/s, min, max, samples.
set -euo pipefail

DUET_CACHE=${DUET_CACHE:-$HOME/.cache/duet}
THREADS=${THREADS:-2}
REPS=${REPS:-5}
ROUNDS=${ROUNDS:-1}
BIN=$DUET_CACHE/llama.cpp-build/bin
HERE=$(cd "$(dirname "$0")" && pwd)
M=$DUET_CACHE/models
MODELS=${MODELS:-"$M/SmolLM2-135M-Instruct.Q4_1.gguf $M/SmolLM2-135M-Instruct.Q8_0.gguf"}
mkdir -p "$DUET_CACHE/bench"
OUT=${OUT:-$DUET_CACHE/bench/llamacpp-$(date -u +%Y%m%dT%H%M%SZ).jsonl}

[[ -x $BIN/llama-bench ]] || "$HERE/build-llamacpp.sh"
[[ -f $M/SmolLM2-135M-Instruct.Q4_1.gguf ]] || "$HERE/fetch-model.sh"
[[ -f $M/SmolLM2-135M-Instruct.Q8_0.gguf ]] || "$HERE/make-q8-model.sh"

# Waits for a quieter machine; reports the load the run started under.
wait_quiet() {
    local waited=0
    if [[ -n ${MAX_LOAD:-} ]]; then
        while awk -v max="$MAX_LOAD" '{ exit !($1 >= max) }' /proc/loadavg &&
            ((waited < ${WAIT_S:-300})); do
            sleep 5
            waited=$((waited + 5))
        done
    fi
    cut -d' ' -f1 /proc/loadavg
}

fa_args=()
[[ -n ${FA:-} ]] && fa_args=(-fa "$FA")

: >"$OUT"
for ((round = 1; round <= ROUNDS; round++)); do
    for model in $MODELS; do
        load=$(wait_quiet)
        echo "bench-llamacpp: round $round/$ROUNDS $(basename "$model") (load average $load)" >&2
        "$BIN/llama-bench" -m "$model" -t "$THREADS" -p 512 -n 128 -r "$REPS" \
            "${fa_args[@]}" -o jsonl >>"$OUT" 2>/dev/null
    done
done

python3 - "$OUT" <<'PY'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
    key = (os.path.basename(r["model_filename"]), test)
    by.setdefault(key, []).extend(r["samples_ts"])
first = rows[0]
print(f"llama.cpp {first.get('build_commit', '?')} (build {first.get('build_number', '?')}), "
      f"{first.get('cpu_info', '?')}, threads {first.get('n_threads')}, "
      f"flash_attn {first.get('flash_attn')}")
print(f"{'model':36s} {'test':6s} {'median t/s':>11s} {'min':>9s} {'max':>9s} {'n':>3s}")
for (model, test), s in sorted(by.items()):
    print(f"{model:36s} {test:6s} {statistics.median(s):11.1f} {min(s):9.1f} {max(s):9.1f} {len(s):3d}")
print(f"raw results: {sys.argv[1]}")
PY
