#!/usr/bin/env bash
# Serving benchmark, duet serve vs llama.cpp's llama-server, with the same
# client (`duet bench serve`) and the same workload on each: NUM random
# prompts of INPUT_LEN tokens, OUTPUT_LEN generated (end-of-text ignored),
# at most CONCURRENCY in flight, once per request rate in RATES (inf = all
# at once). Servers run one at a time on loopback, started fresh for each
# run and alternated rate by rate.
# Prints a Markdown table of each run side by side with duet/llama ratios
# (for latencies lower is better); the JSON of every run stays in OUT.
#
# Needs: a built duet (./build/duet, scripts/build.sh) and llama-server
# (scripts/build-llamacpp.sh).
#
# Environment: MODEL (the default Q4_1 file), NUM (64), INPUT_LEN (128),
# OUTPUT_LEN (128), CONCURRENCY (32), RATES ("inf 4"), THREADS (2),
# SLOTS (llama-server parallel slots, 16), FA (llama-server flash attention
# on|off|auto, default auto), PORT (8087, the first server's; the next
# gets PORT+1), DUET
# (./build/duet), DUET_SERVE_ARGS (extra `duet serve` flags), LLAMA_ARGS
# (extra llama-server flags; on a busy machine "--poll 0" stops its threads
# spinning against each other, which can make it many times slower), SERVERS
# ("llama duet"), OUT (a new directory under $DUET_CACHE/bench),
# DUET_CACHE (~/.cache/duet).
set -euo pipefail
cd "$(dirname "$0")/.."

DUET_CACHE=${DUET_CACHE:-$HOME/.cache/duet}
MODEL=${MODEL:-$DUET_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf}
NUM=${NUM:-64}
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-128}
CONCURRENCY=${CONCURRENCY:-32}
RATES=${RATES:-"inf 4"}
THREADS=${THREADS:-2}
SLOTS=${SLOTS:-16}
FA=${FA:-auto}
PORT=${PORT:-8087}
DUET=${DUET:-./build/duet}
DUET_SERVE_ARGS=${DUET_SERVE_ARGS:-}
LLAMA_ARGS=${LLAMA_ARGS:-}
SERVERS=${SERVERS:-"llama duet"}
OUT=${OUT:-$DUET_CACHE/bench/serve-$(date -u +%Y%m%d-%H%M%S)}
LLAMA_SERVER=$DUET_CACHE/llama.cpp-build/bin/llama-server

[[ -x $DUET ]] || { echo "bench-serve: $DUET not built (scripts/build.sh)" >&2; exit 1; }
[[ -f $MODEL ]] || { echo "bench-serve: no model $MODEL (scripts/fetch-model.sh)" >&2; exit 1; }
if [[ " $SERVERS " == *" llama "* && ! -x $LLAMA_SERVER ]]; then
  scripts/build-llamacpp.sh
fi
mkdir -p "$OUT"

server_pid=""
stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

# wait_ready PORT NAME: poll /health until it answers (up to 5 minutes).
wait_ready() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "bench-serve: $2 did not start; its log is $OUT/$2.log" >&2
  tail -5 "$OUT/$2.log" >&2
  return 1
}

# start NAME PORT: start server NAME on PORT and wait until it is ready.
start() {
  case $1 in
  llama)
    # Every slot holds a whole request.
    local ctx=$((SLOTS * (INPUT_LEN + OUTPUT_LEN + 16)))
    # shellcheck disable=SC2086  # LLAMA_ARGS is a list of flags
    "$LLAMA_SERVER" -m "$MODEL" -t "$THREADS" -np "$SLOTS" -c "$ctx" -fa "$FA" \
      --host 127.0.0.1 --port "$2" $LLAMA_ARGS >>"$OUT/llama.log" 2>&1 &
    ;;
  duet)
    # shellcheck disable=SC2086  # DUET_SERVE_ARGS is a list of flags
    "$DUET" serve --model "$MODEL" --threads "$THREADS" --host 127.0.0.1 --port "$2" \
      $DUET_SERVE_ARGS >>"$OUT/duet.log" 2>&1 &
    ;;
  *)
    echo "bench-serve: unknown server '$1' in SERVERS (llama, duet)" >&2
    return 1
    ;;
  esac
  server_pid=$!
  wait_ready "$2" "$1"
}

# Rate by rate, each server in turn, started fresh for each run (an empty
# prefix cache, and machine noise hits both alike). Each rate has its own
# seed, the same for every server.
seed=0
for rate in $RATES; do
  seed=$((seed + 1))
  port=$PORT
  for s in $SERVERS; do
    if start "$s" "$port"; then
      echo "bench-serve: $s, request rate $rate" >&2
      cut -d' ' -f1 /proc/loadavg >"$OUT/$s-rate-$rate.load"
      "$DUET" bench serve --base-url "http://127.0.0.1:$port" --model "$MODEL" \
        --num-prompts "$NUM" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --ignore-eos \
        --request-rate "$rate" --max-concurrency "$CONCURRENCY" --seed "$seed" \
        --json "$OUT/$s-rate-$rate.json" >"$OUT/$s-rate-$rate.txt" 2>"$OUT/$s-rate-$rate.err" ||
        echo "bench-serve: $s at rate $rate failed; see $OUT/$s-rate-$rate.err" >&2
    fi
    stop_server
    port=$((port + 1))
  done
done

python3 - "$OUT" "$RATES" "$NUM" "$INPUT_LEN" "$OUTPUT_LEN" "$CONCURRENCY" <<'PY'
import json, os, sys
out, rates, num, n_in, n_out, conc = sys.argv[1], sys.argv[2].split(), *sys.argv[3:]
rows = [("machine load average at start", "load", "{:.1f}"),
        ("completed", "completed", "{:.0f}"), ("failed", "failed", "{:.0f}"),
        ("duration (s)", "duration", "{:.1f}"),
        ("request throughput (req/s)", "request_throughput", "{:.2f}"),
        ("output tok/s", "output_throughput", "{:.1f}"),
        ("total tok/s", "total_token_throughput", "{:.1f}")]
for m, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E latency")):
    rows += [(f"median {name} (ms)", f"median_{m}_ms", "{:.1f}"),
             (f"p99 {name} (ms)", f"p99_{m}_ms", "{:.1f}")]

def load(server, rate):
    try:
        d = json.load(open(os.path.join(out, f"{server}-rate-{rate}.json")))
        d["load"] = float(open(os.path.join(out, f"{server}-rate-{rate}.load")).read())
        return d
    except (OSError, ValueError):
        return None

print(f"# duet bench serve: {num} prompts, {n_in} in / {n_out} out, ignore_eos, "
      f"max concurrency {conc}\n")
for rate in rates:
    ll, du = load("llama", rate), load("duet", rate)
    print(f"## request rate {rate}\n")
    print("| metric | llama-server | duet serve | duet / llama |")
    print("|---|---:|---:|---:|")
    for label, key, fmt in rows:
        a = ll.get(key) if ll else None
        b = du.get(key) if du else None
        counts = key in ("load", "completed", "failed")
        ratio = f"{b / a:.2f}" if a and b is not None and not counts else ""
        print(f"| {label} | {fmt.format(a) if a is not None else '-'} | "
              f"{fmt.format(b) if b is not None else '-'} | {ratio} |")
    print()
print(f"JSON and logs: {out}")
PY
