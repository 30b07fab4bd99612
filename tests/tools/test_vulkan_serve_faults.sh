#!/usr/bin/env bash
# Device failures on the Vulkan backend reach clients as clean errors
# (DUET_VK_FAULT injects them; docs/VULKAN.md): a device lost in the middle
# of a stream ends it with an error event and [DONE], later requests and
# /health answer 503, and the server still shuts down cleanly (exit 0); out
# of device memory at load and a pipeline that cannot be created give a
# clear error, never a crash or a hang. Tiny dummy model, validation on.
# Exits 77 (skip) without a Vulkan device.
set -u
duet="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
config="$root/tests/fixtures/tiny-llama.json"
tmp="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
. "$(dirname "$0")/test_lib.bash"
require_vulkan
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"

start() { # fault -> starts the server in the background, sets pid
  DUET_VK_VALIDATION=1 DUET_VK_FAULT="$1" "$duet" serve --device vulkan --model-config "$config" \
    --port "$port" >"$tmp/serve.log" 2>&1 &
  pid=$!
}
wait_up() { # -> 0 when /health answers at all, 1 when the server died
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "$url/health" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}
stop() { # -> the server's exit status after SIGINT (124 if it hangs)
  kill -INT "$pid" 2>/dev/null
  for _ in $(seq 1 75); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid"; local rc=$?; pid=""; return $rc; }
    sleep 0.2
  done
  return 124
}
post() { # body [stream] -> body on stdout, HTTP status in $tmp/code
  curl -s -m 60 -o "$tmp/body" -w '%{http_code}' "$url/v1/completions" \
    -H 'Content-Type: application/json' -d "$1" >"$tmp/code"
  cat "$tmp/body"
}

# 1. Device lost after 12 submissions: a short request completes, a long
#    stream breaks with an error event, then 503 everywhere.
start device_lost_after:12
if wait_up; then
  post '{"prompt": "Hello", "max_tokens": 2, "ignore_eos": true}' >/dev/null
  [ "$(cat "$tmp/code")" = 200 ] && ok "a request before the loss succeeds" ||
    bad "first request: HTTP $(cat "$tmp/code") $(cat "$tmp/body")"
  post '{"prompt": "Hello there", "max_tokens": 200, "ignore_eos": true, "stream": true}' >"$tmp/stream"
  if grep -q '^data: {"error"' "$tmp/stream" && grep -q 'VK_ERROR_DEVICE_LOST' "$tmp/stream" &&
     [ "$(tail -n 2 "$tmp/stream" | head -n 1)" = "data: [DONE]" ]; then
    ok "stream ends with a device-lost error event, then [DONE]"
  else
    bad "stream after the loss: $(tail -c 400 "$tmp/stream")"
  fi
  post '{"prompt": "Again", "max_tokens": 2}' >/dev/null
  [ "$(cat "$tmp/code")" = 503 ] && grep -q "engine has failed" "$tmp/body" &&
    ok "a later request gets 503 naming the failure" ||
    bad "later request: HTTP $(cat "$tmp/code") $(cat "$tmp/body")"
  code="$(curl -s -o /dev/null -w '%{http_code}' "$url/health")"
  [ "$code" = 503 ] && ok "/health is 503" || bad "/health is $code"
  stop
  rc=$?
  [ "$rc" = 0 ] && ok "SIGINT after the loss: exit 0" || bad "SIGINT after the loss: exit $rc"
else
  bad "server with device_lost_after did not start: $(tail -3 "$tmp/serve.log")"
fi

# 2. Out of device memory while loading: a clear message, exit 1, no crash.
DUET_VK_VALIDATION=1 DUET_VK_FAULT=oom:2 timeout 60 "$duet" serve --device vulkan \
  --model-config "$config" --port "$port" >"$tmp/oom.log" 2>&1
rc=$?
if [ "$rc" = 1 ] && grep -q "VK_ERROR_OUT_OF_DEVICE_MEMORY" "$tmp/oom.log"; then
  ok "out of device memory at load: exit 1, $(grep -m1 -o 'VK_ERROR_OUT_OF_DEVICE_MEMORY' "$tmp/oom.log")"
else
  bad "oom at load: exit $rc: $(tail -3 "$tmp/oom.log")"
fi

# 3. The attention pipeline cannot be created: the first request fails
#    naming it; the server stays controllable.
start pipeline:attention
if wait_up; then
  post '{"prompt": "Hello", "max_tokens": 2}' >/dev/null
  code="$(cat "$tmp/code")"
  if [ "$code" -ge 500 ] && grep -q "attention" "$tmp/body"; then
    ok "pipeline failure: HTTP $code naming the op"
  else
    bad "pipeline failure: HTTP $code $(cat "$tmp/body")"
  fi
  stop
  rc=$?
  [ "$rc" = 0 ] && ok "SIGINT after a pipeline failure: exit 0" || bad "exit $rc"
else
  bad "server with pipeline fault did not start: $(tail -3 "$tmp/serve.log")"
fi

finish
