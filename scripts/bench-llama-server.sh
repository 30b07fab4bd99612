#!/usr/bin/env bash
# The peer for `duet bench throughput`: llama.cpp's llama-server with
# parallel slots, driven by NUM requests of random-token prompts (INPUT_LEN
# tokens, OUTPUT_LEN generated, end-of-text ignored) at CONCURRENCY, on
# loopback. Prints aggregate output tok/s and mean TTFT-free latency.
#
# Environment: MODEL (the default Q4_1 file), SLOTS (16), CONCURRENCY (32),
# NUM (64), INPUT_LEN (128), OUTPUT_LEN (128), THREADS (2), PORT (8087),
# FA (on|off|auto, default auto), DUET_CACHE (~/.cache/duet).
set -euo pipefail
cd "$(dirname "$0")/.."

DUET_CACHE=${DUET_CACHE:-$HOME/.cache/duet}
MODEL=${MODEL:-$DUET_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf}
SLOTS=${SLOTS:-16}
CONCURRENCY=${CONCURRENCY:-32}
NUM=${NUM:-64}
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-128}
THREADS=${THREADS:-2}
PORT=${PORT:-8087}
FA=${FA:-auto}
SERVER=$DUET_CACHE/llama.cpp-build/bin/llama-server
[[ -x $SERVER ]] || scripts/build-llamacpp.sh

ctx=$((SLOTS * (INPUT_LEN + OUTPUT_LEN + 16)))
log=$(mktemp)
"$SERVER" -m "$MODEL" -t "$THREADS" -np "$SLOTS" -c "$ctx" -fa "$FA" --host 127.0.0.1 \
  --port "$PORT" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.5
done

python3 - "$PORT" "$NUM" "$CONCURRENCY" "$INPUT_LEN" "$OUTPUT_LEN" <<'PY'
import concurrent.futures as cf, json, random, sys, time, urllib.request
port, num, conc, n_in, n_out = map(int, sys.argv[1:])
rng = random.Random(0)
prompts = [[rng.randrange(100, 49152) for _ in range(n_in)] for _ in range(num)]

def one(p):
    body = json.dumps({"prompt": p, "n_predict": n_out, "ignore_eos": True,
                       "cache_prompt": False, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body,
                                 {"Content-Type": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        d = json.load(r)
    return d.get("tokens_predicted", 0), time.time() - t

t0 = time.time()
with cf.ThreadPoolExecutor(conc) as ex:
    res = list(ex.map(one, prompts))
secs = time.time() - t0
toks = sum(r[0] for r in res)
print(json.dumps({"engine": "llama-server", "requests": num, "concurrency": conc,
                  "elapsed_s": round(secs, 2), "output_tokens": toks,
                  "output_tok_s": round(toks / secs, 1),
                  "total_tok_s": round((toks + num * n_in) / secs, 1),
                  "mean_latency_s": round(sum(r[1] for r in res) / num, 2)}))
PY
