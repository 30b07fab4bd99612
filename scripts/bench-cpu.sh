#!/usr/bin/env bash
# Side-by-side single-stream benchmark: duet vs llama.cpp (llama-bench) on the
# same GGUF files and thread count, interleaved run by run so machine noise
# hits both alike. Reports medians of prompt (pp, 512 tokens) and decode (tg,
# 128 tokens) tok/s and the duet/llama.cpp ratios, as a Markdown table.
#
# Needs: a built duet (./build/duet), llama.cpp's llama-bench
# (scripts/build-llamacpp.sh) and the Q8_0 model (scripts/make-q8-model.sh).
#
# Environment: THREADS (2), RUNS (7), PP (512), TG (128), DUET (./build/duet),
#              DUET_CACHE (~/.cache/duet), MODELS (the Q4_1 and Q8_0 files).
set -euo pipefail
cd "$(dirname "$0")/.."

DUET_CACHE=${DUET_CACHE:-$HOME/.cache/duet}
THREADS=${THREADS:-2}
RUNS=${RUNS:-7}
PP=${PP:-512}
TG=${TG:-128}
DUET=${DUET:-./build/duet}
LLAMA_BENCH=$DUET_CACHE/llama.cpp-build/bin/llama-bench
M=$DUET_CACHE/models
MODELS=${MODELS:-"$M/SmolLM2-135M-Instruct.Q4_1.gguf $M/SmolLM2-135M-Instruct.Q8_0.gguf"}

[[ -x $DUET ]] || { echo "bench-cpu: $DUET not built (scripts/build.sh)" >&2; exit 1; }
[[ -x $LLAMA_BENCH ]] || scripts/build-llamacpp.sh
[[ -f $M/SmolLM2-135M-Instruct.Q8_0.gguf ]] || scripts/make-q8-model.sh

out=$(mktemp)
trap 'rm -f "$out"' EXIT
for ((run = 1; run <= RUNS; run++)); do
  for model in $MODELS; do
    name=$(basename "$model" .gguf)
    echo "bench-cpu: run $run/$RUNS $name" >&2
    "$DUET" bench latency --model "$model" --threads "$THREADS" -p "$PP" -n "$TG" -r 1 --json |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"engine":"duet","model":sys.argv[1],"pp":d["pp_tok_s_median"],"tg":d["tg_tok_s_median"],"rss":d["peak_rss_mib"]}))' "$name" >>"$out"
    "$LLAMA_BENCH" -m "$model" -t "$THREADS" -p "$PP" -n "$TG" -r 1 -o jsonl 2>/dev/null |
      python3 -c '
import json, sys
pp = tg = None
for line in sys.stdin:
    d = json.loads(line)
    if d.get("n_prompt", 0) > 0 and d.get("n_gen", 0) == 0: pp = d["avg_ts"]
    if d.get("n_gen", 0) > 0 and d.get("n_prompt", 0) == 0: tg = d["avg_ts"]
print(json.dumps({"engine": "llama.cpp", "model": sys.argv[1], "pp": pp, "tg": tg}))' "$name" >>"$out"
  done
done

python3 - "$out" "$THREADS" "$RUNS" "$PP" "$TG" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
threads, runs, pp, tg = sys.argv[2:]
models = sorted({r["model"] for r in rows})
print(f"| model | test | duet tok/s | llama.cpp tok/s | duet / llama.cpp |")
print(f"|---|---|---|---|---|")
for m in models:
    for test, label in (("pp", f"prompt {pp}"), ("tg", f"decode {tg}")):
        d = statistics.median(r[test] for r in rows if r["model"] == m and r["engine"] == "duet")
        l = statistics.median(r[test] for r in rows if r["model"] == m and r["engine"] == "llama.cpp")
        print(f"| {m} | {label} | {d:.1f} | {l:.1f} | {d / l:.2f} |")
    rss = max(r["rss"] for r in rows if r["model"] == m and r["engine"] == "duet")
    print(f"| {m} | duet peak RSS | {rss:.0f} MiB | | |")
print(f"\nmedians of {runs} interleaved runs each, {threads} threads")
PY
