#!/usr/bin/env bash
# tools/gpu-check.sh --quick end to end where a Vulkan device exists (here:
# lavapipe, validation on): every step runs and passes, summary.json holds
# the numbers (with the GPU profile of steps 4 and 5), the table comes
# last, then the batch-1 decode profile block. Everywhere: duet bench
# forward on the CPU writes complete JSON whose bytes per step follow from
# the shape, and the new bench modes reject bad arguments with one line.
set -u
duet="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/test_lib.bash"
tiny="$root/tests/fixtures/conform/tiny-llama.json"

# 1. bench forward on the CPU: decode rows per batch size, a prefill, and
# bytes per step = weights once + batch x (context + 1) x KV bytes/token.
if "$duet" bench forward --device cpu --threads 1 --json --model-config "$tiny" --dummy-dtype f16 \
     --batch 1,3 --context 20 --steps 2 --prefill 40 --chunk 16 --repeat 1 >"$tmp/fw.json" 2>"$tmp/err" &&
   py_json "$tmp/fw.json" '
assert d["ok"] is True and d["context"] == 20 and d["kv_type"] == "f32"
assert [x["batch"] for x in d["decode"]] == [1, 3]
# tiny-llama: 2 layers, hidden 128, ffn 352, 4 heads / 2 KV heads of 32, vocab 512, F16
w = 2 * (2*(128*128*2) + 2*(64*128*2) + 3*(352*128*2) + 2*128*4) + 512*128*2 + 128*4
assert d["weight_bytes"] == w, (d["weight_bytes"], w)
assert d["weights_device_bytes"] == -1  # the CPU: host RAM, not counted
assert d["kv_bytes_per_token"] == 2 * 2 * 64 * 4
for x in d["decode"]:
    b = x["batch"]
    assert x["bytes_per_step"] == w + b * 128 * 2 + b * 21 * d["kv_bytes_per_token"], x
    assert x["tok_s"] > 0 and len(x["step_ms"]) == 2
    assert abs(x["gbps"] - x["bytes_per_step"] / (x["step_ms_median"] / 1e3) / 1e9) < 0.01 + 0.01 * x["gbps"]
    assert x["pipelined_step_ms"] > 0 and abs(x["pipelined_tok_s"] - b / (x["pipelined_step_ms"] / 1e3)) < 0.01 + 0.01 * x["pipelined_tok_s"], x
    assert abs(x["pipelined_gbps"] - x["bytes_per_step"] / (x["pipelined_step_ms"] / 1e3) / 1e9) < 0.01 + 0.01 * x["pipelined_gbps"], x
assert d["prefill"]["tokens"] == 40 and d["prefill"]["tok_s"] > 0
' "$tmp/fw.json" 2>"$tmp/err2"; then
  ok "bench forward --json on the CPU: complete, bytes per step from the shape"
else
  bad "bench forward: $(cat "$tmp/err" "$tmp/err2" | tail -5)"
fi

# 2. Bad arguments: non-zero exit, one line on stderr naming the flag.
expect_error "forward --batch 0" "--batch" bench forward --batch 0
expect_error "forward --batch list" "--batch" bench forward --batch 1,,2
expect_error "forward --kv-type" "--kv-type 'q8'" bench forward --kv-type q8
expect_error "forward extra arg" "unexpected argument" bench forward extra
expect_error "forward --profile on cpu" "--profile needs a Vulkan device" bench forward --device cpu --profile
expect_error "forward --profile-steps" "--profile-steps" bench forward --profile-steps 0
expect_error "bandwidth on cpu" "only Vulkan" bench bandwidth --device cpu
expect_error "bandwidth --copies" "--copies" bench bandwidth --copies 0

# 3. The whole script, quick, where a Vulkan device exists.
if "$duet" devices --json >"$tmp/dev.json" 2>/dev/null &&
   py_json "$tmp/dev.json" 'sys.exit(0 if any(x["backend"] == "vulkan" and x["usable"] for x in d["devices"]) else 1)' "$tmp/dev.json"; then
  DUET_VK_VALIDATION=1 DUET_RESULTS="$tmp/res" bash "$root/tools/gpu-check.sh" --quick --duet "$duet" \
    >"$tmp/gc.txt" 2>&1
  rc=$?
  # The table, then the profile block: a header and at least one kind for
  # each of BF16 and Q4_0, then the JSON line.
  table="$(sed -n '/^duet GPU check/,$p' "$tmp/gc.txt")"
  if [ $rc -eq 0 ] && grep -q "^decode batch 64 " <<<"$table" &&
     grep -q "^weights on device  *OK  *[0-9.]* GiB of device memory for" <<<"$table" &&
     grep -A1 "^profile, decode batch 1 (bf16): GPU [0-9.]* us/step, wall" <<<"$table" | grep -q "^  matmul" &&
     grep -A1 "^profile, decode batch 1 (q4_0): GPU [0-9.]* us/step, wall" <<<"$table" | grep -q "^  matmul" &&
     [ "$(tail -n 1 "$tmp/gc.txt")" = "JSON: $tmp/res/summary.json" ] &&
     ! grep -qi "validation" "$tmp/res"/*.log && py_json "$tmp/res/summary.json" '
assert d["quick"] is True
assert [s["step"] for s in d["steps"]] == ["devices", "bandwidth", "conform-ops", "conform-model", "forward",
                                          "forward-tiled", "forward-q4", "forward-rows1",
                                          "forward-part256", "forward-q4-tiled"]
assert all(s["status"] == "OK" for s in d["steps"]), d["steps"]
assert d["bandwidth"]["copy_gbps_median"] > 0
assert d["conform-ops"]["summary"]["fail"] == 0 and d["conform-ops"]["summary"]["pass"] > 50
m = {r["op"]: r["status"] for r in d["conform-model"]["results"]}
assert m["model.logits"] == m["model.top1"] == m["model.greedy"] == "PASS", m
assert [x["batch"] for x in d["forward"]["decode"]] == [1, 8, 64]
assert all(0 < x["fraction_of_copy"] for x in d["forward"]["decode"])
assert d["forward"]["prefill"]["tokens"] == 256
# Device memory held after loading: the weights and the file around them
# (one buffer: the file fits one allocation), not overlapping chunks.
for f in (d["forward"], d["forward_q4"]):
    assert f["weight_bytes"] <= f["weights_device_bytes"] < 1.2 * f["weight_bytes"] + (1 << 20), f
assert [x["batch"] for x in d["forward_tiled"]["decode"]] == [1]
assert [x["batch"] for x in d["forward_q4"]["decode"]] == [1, 8]
assert d["forward_q4"]["weight_bytes"] < d["forward"]["weight_bytes"] / 3  # Q4_0, not BF16
assert all(0 < x["fraction_of_copy"] for x in d["forward_q4"]["decode"])
assert [x["batch"] for x in d["forward_q4_tiled"]["decode"]] == [1]
assert [x["batch"] for x in d["forward_rows1"]["decode"]] == [1, 8, 64]
assert d["forward_rows1"].get("prefill") is None, d["forward_rows1"].get("prefill")
assert [x["batch"] for x in d["forward_part256"]["decode"]] == [1, 8, 64]
assert d["forward_part256"].get("prefill") is None
# --profile on steps 4 and 5 only: every decode batch (and the prefill) of
# those, 4 profiled steps each, one recording per step (the prefill: one per
# chunk), the shares of the kinds summing to at most 1, a matmul kind present.
def check_profile(p, steps):
    assert p["steps"] == steps and p["recordings"] == steps, p
    assert 0 < p["span_us_per_step"] and 0 < p["wall_us_per_step"], p
    assert 0 < p["barriers_per_step"] < sum(k["per_step"] for k in p["kinds"]), p
    ks = p["kinds"]
    assert any(k["kind"].startswith("matmul") for k in ks), ks
    assert all(k["us_per_step"] >= 0 and k["per_step"] > 0 for k in ks), ks
    assert 0.99 < sum(k["share"] for k in ks) <= 1.001, ks  # shares rounded to 1e-4
    assert [k["us_per_step"] for k in ks] == sorted((k["us_per_step"] for k in ks), reverse=True)
for x in d["forward"]["decode"] + d["forward_q4"]["decode"]:
    check_profile(x["profile"], 4)
check_profile(d["forward"]["prefill"]["profile"], 2)  # 256 tokens in chunks of 128
for k in ("forward_tiled", "forward_rows1", "forward_part256", "forward_q4_tiled"):
    assert all("profile" not in x for x in d[k]["decode"]), k
' "$tmp/res/summary.json" 2>"$tmp/err"; then
    ok "gpu-check.sh --quick on $(py_json "$tmp/dev.json" 'print([x["name"] for x in d["devices"] if x["backend"] == "vulkan"][0])' "$tmp/dev.json")"
  else
    bad "gpu-check.sh --quick: rc=$rc $(tail -n 40 "$tmp/gc.txt") $(cat "$tmp/err" 2>/dev/null)"
  fi
  # A step that fails is reported and the rest still run.
  mkdir -p "$tmp/fake"
  printf '#!/bin/sh\n[ "$1 $2" = "bench bandwidth" ] && exit 3\nexec "%s" "$@"\n' "$duet" >"$tmp/fake/duet"
  chmod +x "$tmp/fake/duet"
  DUET_RESULTS="$tmp/res2" bash "$root/tools/gpu-check.sh" --quick --duet "$tmp/fake/duet" >"$tmp/gc2.txt" 2>&1
  rc=$?
  if [ $rc -eq 1 ] && py_json "$tmp/res2/summary.json" '
s = {x["step"]: x for x in d["steps"]}
assert s["bandwidth"]["status"] == "FAIL" and s["bandwidth"]["exit_status"] == 3
assert s["forward"]["status"] == "OK" and d["forward"]["decode"][0]["fraction_of_copy"] is None
' "$tmp/res2/summary.json" 2>"$tmp/err"; then
    ok "gpu-check.sh: a failing step is reported, the later steps run, exit 1"
  else
    bad "gpu-check.sh failing step: rc=$rc $(tail -n 10 "$tmp/gc2.txt") $(cat "$tmp/err")"
  fi
else
  echo "skip gpu-check.sh --quick: no usable Vulkan device"
fi

finish
