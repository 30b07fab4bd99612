#!/usr/bin/env bash
# Bad input to the duet program: each case must exit non-zero with exactly
# one line on stderr that names the problem — no crash, no sanitizer
# report, no leak (this script also runs against the ASan build).
set -u
duet="$1"
model="${DUET_MODEL:-${DUET_CACHE:-$HOME/.cache/duet}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ ! -f "$model" ]; then
  echo "model $model is missing: run scripts/fetch-model.sh first" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failures=0
passed=0

# expect_error NAME PATTERN -- ARGS...: non-zero exit, one stderr line
# matching PATTERN (grep -E).
expect_error() {
  local name="$1" pattern="$2"
  shift 3
  "$duet" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  local lines
  lines=$(wc -l <"$tmp/err")
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$lines" -eq 1 ] && grep -Eq -- "$pattern" "$tmp/err"; then
    passed=$((passed + 1))
    echo "ok   $name: $(cat "$tmp/err")"
  else
    failures=$((failures + 1))
    echo "FAIL $name: exit $rc, $lines stderr lines, wanted /$pattern/:"
    sed 's/^/     /' "$tmp/err" | head -20
  fi
}

expect_ok() {
  local name="$1"
  shift 2
  "$duet" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -eq 0 ] && ! grep -q Sanitizer "$tmp/err"; then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failures=$((failures + 1))
    echo "FAIL $name: exit $rc"
    sed 's/^/     /' "$tmp/err" | head -20
  fi
}

# Patch a copy of the model with Python's standard library only: rename
# the architecture, or give the first tensor an unknown type.
python3 - "$model" "$tmp" <<'PY'
import struct, sys
src, out = sys.argv[1], sys.argv[2]
data = bytearray(open(src, "rb").read())
arch = b"\x05\x00\x00\x00\x00\x00\x00\x00llama"
i = data.index(arch)
bad_arch = bytearray(data)
bad_arch[i + 8:i + 13] = b"gpt99"
open(out + "/bad_arch.gguf", "wb").write(bad_arch)

# Walk the header to the first tensor info's type field.
pos = 4 + 4
n_tensors, n_kv = struct.unpack_from("<QQ", data, pos); pos += 16
sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def skip_value(t, pos):
    if t == 8:
        (n,) = struct.unpack_from("<Q", data, pos); return pos + 8 + n
    if t == 9:
        et, n = struct.unpack_from("<IQ", data, pos); pos += 12
        for _ in range(n):
            pos = skip_value(et, pos)
        return pos
    return pos + sizes[t]
for _ in range(n_kv):
    (kl,) = struct.unpack_from("<Q", data, pos); pos += 8 + kl
    (t,) = struct.unpack_from("<I", data, pos); pos += 4
    pos = skip_value(t, pos)
(nl,) = struct.unpack_from("<Q", data, pos); pos += 8 + nl
(nd,) = struct.unpack_from("<I", data, pos); pos += 4 + 8 * nd
bad_type = bytearray(data)
struct.pack_into("<I", bad_type, pos, 99)
open(out + "/bad_type.gguf", "wb").write(bad_type)
open(out + "/truncated.gguf", "wb").write(data[:3_000_000])
open(out + "/header_only.gguf", "wb").write(data[:100])
PY
printf 'this is not a model\n' >"$tmp/text.gguf"
: >"$tmp/empty.gguf"
printf 'bad utf-8: \xff\xfe \xc3 \xe2\x82 end' >"$tmp/bad_utf8.txt"
python3 -c 'print("hello " * 9000)' >"$tmp/long_prompt.txt"

expect_error "missing model" "nonexistent\.gguf" -- generate --model "$tmp/nonexistent.gguf"
expect_error "not a GGUF file" "not a GGUF file" -- generate --model "$tmp/text.gguf"
expect_error "empty file" "GGUF" -- generate --model "$tmp/empty.gguf"
expect_error "truncated model" "offset|past the end|truncat" -- generate --model "$tmp/truncated.gguf"
expect_error "truncated header" "offset|past the end|truncat" -- generate --model "$tmp/header_only.gguf"
expect_error "unknown architecture" "gpt99.*supported.*llama" -- generate --model "$tmp/bad_arch.gguf"
expect_error "unknown weight type" "type 99" -- generate --model "$tmp/bad_type.gguf"
expect_error "prompt over the context" "8192" -- generate --model "$model" --prompt-file "$tmp/long_prompt.txt"
expect_error "prompt over --ctx" "context of 32" -- generate --model "$model" --ctx 32 --prompt-file "$tmp/long_prompt.txt"
expect_error "max-tokens 0" "max-tokens 0" -- generate --model "$model" --max-tokens 0
expect_error "max-tokens negative" "max-tokens -5" -- generate --model "$model" --max-tokens -5
expect_error "max-tokens not a number" "max-tokens 'ten'" -- generate --model "$model" --max-tokens ten
expect_error "temperature negative" "temperature -1" -- generate --model "$model" --temperature -1
expect_error "seed negative" "seed '-3'" -- generate --model "$model" --seed -3
expect_error "threads 0" "threads 0" -- generate --model "$model" --threads 0
expect_error "unknown device" "device 'tpu'" -- generate --model "$model" --device tpu
expect_error "prompt file missing" "nope\.txt" -- generate --model "$model" --prompt-file "$tmp/nope.txt"
expect_error "decode id out of range" "id 999999" -- tokenize --model "$model" --decode "1 999999"
expect_error "decode not an id" "'abc'" -- tokenize --model "$model" --decode "1 abc"
expect_error "tokenize without input" "exactly one" -- tokenize --model "$model"
expect_error "unknown command" "unknown command" -- frobnicate
expect_ok "invalid UTF-8 prompt runs" -- generate --model "$model" --prompt-file "$tmp/bad_utf8.txt" --max-tokens 4 --no-stats
expect_ok "invalid UTF-8 tokenizes" -- tokenize --model "$model" --file "$tmp/bad_utf8.txt"
expect_error "bench throughput stray argument" "unexpected argument 'x'" -- bench throughput x
expect_error "generate --top-p 0" "top-p" -- generate --model "$model" --top-p 0
expect_error "generate --min-p 2" "min-p" -- generate --model "$model" --min-p 2
expect_error "serve --port 70000" "port" -- serve --model "$model" --port 70000
expect_error "bench sampler --rows 0" "rows" -- bench sampler --rows 0
expect_ok "generate --help" -- generate --help
expect_ok "tokenize --help" -- tokenize --help
expect_ok "top-level --help" -- --help

echo "$passed passed, $failures failed"
[ $failures -eq 0 ]
