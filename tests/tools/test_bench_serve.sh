#!/usr/bin/env bash
# `duet bench serve` end to end: bad options and an unreachable server must
# fail with one clear line; then small real runs against llama.cpp's
# llama-server (skipped with 77 when it or the model is missing), and
# against `duet serve` when the binary has it, must give results consistent
# with the workload asked for and with themselves.
set -u
duet="$1"
cache="${DUET_CACHE:-$HOME/.cache/duet}"
model="${DUET_MODEL:-$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
server="${LLAMA_SERVER:-$cache/llama.cpp-build/bin/llama-server}"
tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
passed=0

ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() {
  failures=$((failures + 1))
  echo "FAIL $1"
  [ -f "$tmp/err" ] && sed 's/^/     /' "$tmp/err" | head -20
}

# expect_error NAME RC PATTERN -- ARGS...: exit status RC, one stderr line
# matching PATTERN (grep -E), no sanitizer report.
expect_error() {
  local name="$1" want_rc="$2" pattern="$3"
  shift 4
  "$duet" bench serve "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  if [ $rc -eq "$want_rc" ] && [ "$lines" -eq 1 ] && grep -Eq -- "$pattern" "$tmp/err"; then
    ok "$name: $(cat "$tmp/err")"
  else
    fail "$name: exit $rc (wanted $want_rc), $lines stderr lines, wanted /$pattern/"
  fi
}

# A port nothing listens on: bind one, then close it.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}
dead_port=$(free_port)

expect_error "request rate 0" 2 "request-rate 0 must be > 0" -- --request-rate 0
expect_error "request rate negative" 2 "request-rate -2 must be > 0" -- --request-rate -2
expect_error "request rate not a number" 2 "request-rate 'fast'" -- --request-rate fast
expect_error "max concurrency 0" 2 "max-concurrency 0" -- --max-concurrency 0
expect_error "num prompts 0" 2 "num-prompts 0" -- --num-prompts 0
expect_error "range ratio 1" 2 "range-ratio 1" -- --range-ratio 1
expect_error "base url scheme" 2 "must start with http" -- --base-url ftp://127.0.0.1:1
expect_error "endpoint not a path" 2 "endpoint 'v1/completions'" -- --endpoint v1/completions
expect_error "unknown option" 2 "unknown option.*--frob" -- --frob
expect_error "unreachable server" 1 \
  "cannot reach the server at http://127.0.0.1:$dead_port/v1/models" \
  -- --base-url "http://127.0.0.1:$dead_port" --num-prompts 2
if "$duet" bench serve --help >"$tmp/out" 2>"$tmp/err" &&
  grep -q -- "--request-rate" "$tmp/out"; then
  ok "--help"
else
  fail "--help: exit non-zero or no --request-rate in the text"
fi

if [ ! -x "$server" ] || [ ! -f "$model" ]; then
  echo "$passed passed, $failures failed; llama-server ($server) or the model ($model) is" \
    "missing, so the runs against a server are skipped"
  [ $failures -eq 0 ] && exit 77
  exit 1
fi

# start_server NAME CMD...: run CMD (which gets --port) on a free port and
# wait for /health; sets base.
start_server() {
  local name="$1" port
  shift
  port=$(free_port)
  base="http://127.0.0.1:$port"
  "$@" --port "$port" >"$tmp/$name.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 480); do
    curl -sf "$base/health" >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.25
  done
  fail "$name did not come up on port $port"
  tail -20 "$tmp/$name.log"
  return 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null
  wait "$server_pid" 2>/dev/null
  server_pid=""
}

# run NAME ARGS...: a benchmark that must succeed, results in $tmp/NAME.json.
run() {
  local name="$1"
  shift
  "$duet" bench serve --base-url "$base" --model "$model" --json "$tmp/$name.json" "$@" \
    >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -eq 0 ] && [ -s "$tmp/$name.json" ] && ! grep -q Sanitizer "$tmp/err"; then
    return 0
  fi
  fail "$name: exit $rc"
  return 1
}

# check NAME PYTHON: run PYTHON assertions with d = the run's JSON.
check() {
  local name="$1" code="$2"
  if python3 - "$tmp/$name.json" >"$tmp/err" 2>&1 <<PY
import json, math, sys
d = json.load(open(sys.argv[1]))
def close(a, b): return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
def common(n, out_lens):
    assert d["completed"] == n and d["failed"] == 0, (d["completed"], d["failed"], d["errors"])
    assert d["output_lens"] == out_lens, d["output_lens"]
    assert d["total_output_tokens"] == sum(out_lens), d["total_output_tokens"]
    assert d["total_input_tokens"] == sum(d["input_lens"])
    assert all(e == "" for e in d["errors"]), d["errors"]
    assert d["duration"] > 0
    assert all(0 < t < e <= d["duration"] + 1e-6 for t, e in zip(d["ttfts"], d["e2els"])), \
        (d["ttfts"], d["e2els"])
    for itl, o in zip(d["itls"], d["output_lens"]):
        assert 1 <= len(itl) <= o - 1 and all(g >= 0 for g in itl), (itl, o)
    assert close(d["request_throughput"], n / d["duration"])
    assert close(d["output_throughput"], sum(out_lens) / d["duration"])
    assert close(d["total_token_throughput"],
                 (sum(out_lens) + sum(d["input_lens"])) / d["duration"])
    assert close(d["mean_ttft_ms"], 1000 * sum(d["ttfts"]) / n)
    assert close(d["mean_e2el_ms"], 1000 * sum(d["e2els"]) / n)
    itls = sorted(g for r in d["itls"] for g in r)
    assert close(d["mean_itl_ms"], 1000 * sum(itls) / len(itls))
    for m in ("ttft", "tpot", "itl", "e2el"):
        assert 0 < d[f"median_{m}_ms"] <= d[f"p99_{m}_ms"], m
        assert d[f"mean_{m}_ms"] > 0, m
$code
PY
  then
    ok "$name"
  else
    fail "$name"
  fi
}

# suite LABEL: the same small runs against the server at $base.
suite() {
  # Completions, random prompts of exactly 16 tokens by the server's count.
  if run "$1-completions" --num-prompts 4 --input-len 16 --output-len 8 --ignore-eos \
    --max-concurrency 2 --seed 1; then
    check "$1-completions" '
common(4, [8] * 4)
assert d["input_lens"] == [16] * 4 == d["dataset_input_lens"], d["input_lens"]
assert d["max_concurrency"] == 2 and d["request_rate"] == "inf"
'
    if grep -Eq "^Successful requests: +4$" "$tmp/out" &&
      grep -Eq "^P99 TTFT \(ms\): +[0-9.]+$" "$tmp/out"; then
      ok "$1-summary-table"
    else
      fail "$1-summary-table: no 'Successful requests: 4' / 'P99 TTFT (ms)' line in stdout"
    fi
  fi

  # Chat: the template adds tokens around the prompt, so the server counts more.
  if run "$1-chat" --endpoint /v1/chat/completions --num-prompts 2 --input-len 16 \
    --output-len 4 --ignore-eos --seed 2; then
    check "$1-chat" '
common(2, [4] * 2)
assert all(s > 16 for s in d["input_lens"]), d["input_lens"]
assert d["backend"] == "openai-chat"
'
  fi

  # Poisson arrivals at a finite rate, with varied lengths.
  if run "$1-poisson" --num-prompts 4 --input-len 16 --output-len 6 --range-ratio 0.5 \
    --ignore-eos --request-rate 20 --seed 3; then
    check "$1-poisson" '
common(4, d["output_lens"])
assert all(3 <= o <= 9 for o in d["output_lens"]), d["output_lens"]
assert d["input_lens"] == d["dataset_input_lens"], (d["input_lens"], d["dataset_input_lens"])
assert all(8 <= s <= 24 for s in d["input_lens"]), d["input_lens"]
assert d["request_rate"] == 20
'
  fi

  # A JSONL dataset: per-line output_len, lines cycled.
  printf '%s\n' '{"prompt": "The capital of France is", "output_len": 3}' '' \
    '{"prompt": "One, two, three,", "output_len": 5}' >"$tmp/prompts.jsonl"
  if run "$1-file" --dataset "$tmp/prompts.jsonl" --num-prompts 3 --ignore-eos; then
    check "$1-file" 'common(3, [3, 5, 3])'
  fi

  # Requests the server rejects: every request fails, the status is shown.
  "$duet" bench serve --base-url "$base" --model "$model" --endpoint /v1/no-such-endpoint \
    --num-prompts 2 --input-len 4 --output-len 2 >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -eq 1 ] && grep -q "HTTP 404" "$tmp/err" &&
    grep -q "all 2 requests failed" "$tmp/err" && grep -Eq "^Failed requests: +2$" "$tmp/out"; then
    ok "$1-server-rejects-requests"
  else
    fail "$1-server-rejects-requests: exit $rc"
  fi
}

if start_server llama-server "$server" -m "$model" -t 2 -np 4 -c 2048 --host 127.0.0.1; then
  suite llama
  stop_server
fi

# duet's own server too, when this build has it.
if "$duet" serve --help >/dev/null 2>&1 &&
  start_server duet-serve "$duet" serve --model "$model" --threads 2 --host 127.0.0.1; then
  suite duet
  stop_server
fi

echo "$passed passed, $failures failed"
[ $failures -eq 0 ]
