#!/usr/bin/env bash
# duet conform and duet devices end to end: cpu-ref vs cpu must pass and
# write valid JSON; cpu vs vulkan must pass (validation layer on) where a
# Vulkan device exists, sample bit-identical (NMSE 0); bad arguments
# fail with one line on stderr; duet devices lists the CPU, as text and
# as valid JSON. The model rows (--ops model): cpu-ref,cpu on the default
# model (skipped without it), a tiny seeded dummy on cpu,vulkan, and two
# different models (--model2) that must fail.
set -u
duet="$1"
fixtures="$(cd "$(dirname "$0")/../fixtures/conform" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/test_lib.bash"

# 1. cpu-ref vs cpu: every case passes, the JSON holds every op.
if "$duet" conform --backends cpu-ref,cpu --json "$tmp/ref.json" >"$tmp/ref.txt" 2>"$tmp/err"; then
  ok "conform cpu-ref,cpu exits 0"
else
  bad "conform cpu-ref,cpu exited non-zero: $(tail -3 "$tmp/ref.txt") $(cat "$tmp/err")"
fi
if py_json "$tmp/ref.json" '
ops = {r["op"] for r in d["results"]}
want = {"embed","rms_norm","matmul","rope","kv_write","attention","swiglu","add","gather_rows","sample"}
assert ops == want, ops
assert len([r for r in d["results"] if r["op"] == "rms_norm" and r["type"] == "F32+res"]) == 4
assert all(r["status"] == "PASS" for r in d["results"])
assert d["summary"]["fail"] == 0 and d["summary"]["pass"] == len(d["results"])
assert d["backends"] == ["cpu-ref", "cpu"]
mm = [r for r in d["results"] if r["op"] == "matmul"]
assert all(r["threshold"] == 5e-4 for r in mm)
glu = [r for r in mm if r["type"].endswith("+glu")]
mm = [r for r in mm if r not in glu]
assert len({r["type"] for r in mm}) == 9 and len(mm) == 54, len(mm)
assert len({r["type"] for r in glu}) == 9 and len(glu) == 18, len(glu)
assert all(r["shape"].endswith(" w_up") for r in glu)
' "$tmp/ref.json" 2>"$tmp/err"; then
  ok "conform JSON is valid and complete"
else
  bad "conform JSON: $(tail -1 "$tmp/err")"
fi

# 2. --ops and --filter narrow the cases; the JSON says which ran.
"$duet" conform --backends cpu-ref,cpu --ops rope,add --filter neox --json - >"$tmp/f.json" 2>/dev/null
if py_json "$tmp/f.json" 'r = d["results"]; assert len(r) == 3 and all(x["op"] == "rope" for x in r), r' "$tmp/f.json" 2>"$tmp/err"; then
  ok "conform --ops/--filter/--json -"
else
  bad "conform --ops/--filter: $(tail -1 "$tmp/err")"
fi

# 3. cpu vs vulkan where a device exists.
if "$duet" devices --json >"$tmp/dev.json" 2>/dev/null &&
   py_json "$tmp/dev.json" 'sys.exit(0 if any(x["backend"] == "vulkan" and x["usable"] for x in d["devices"]) else 1)' "$tmp/dev.json"; then
  if DUET_VK_VALIDATION=1 "$duet" conform --backends cpu,vulkan --json "$tmp/vk.json" >"$tmp/vk.txt" 2>"$tmp/err"; then
    ok "conform cpu,vulkan exits 0"
  else
    bad "conform cpu,vulkan: $(grep -E 'FAIL|cases' "$tmp/vk.txt" | head -5) $(cat "$tmp/err")"
  fi
  if py_json "$tmp/vk.json" '
s = [r for r in d["results"] if r["op"] == "sample"]
assert s and all(r["status"] == "PASS" and r["nmse"] == 0.0 for r in s), s
assert d["summary"]["skip"] == 0 and d["summary"]["fail"] == 0
assert d["summary"]["pass"] == len(d["results"])
' "$tmp/vk.json" 2>"$tmp/err"; then
    ok "conform cpu,vulkan: every op PASS, sample bit-identical (NMSE 0)"
  else
    bad "conform cpu,vulkan report: $(tail -1 "$tmp/err")"
  fi
else
  echo "skip conform cpu,vulkan: no usable Vulkan device"
fi

# 3b. The model end to end. Few prompts and tokens: cpu-ref is slow.
model="${DUET_MODEL:-${DUET_CACHE:-$HOME/.cache/duet}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
n_prompts=2
[ "${DUET_SANITIZED:-0}" = 1 ] && n_prompts=1
if [ -f "$model" ]; then
  if "$duet" conform --backends cpu-ref,cpu --ops model --model "$model" --prompts $n_prompts \
       --gen-tokens 8 --json "$tmp/m.json" >"$tmp/m.txt" 2>"$tmp/err"; then
    ok "conform --ops model cpu-ref,cpu exits 0"
  else
    bad "conform --ops model cpu-ref,cpu: $(cat "$tmp/m.txt" "$tmp/err")"
  fi
  if py_json "$tmp/m.json" '
r = {x["op"]: x for x in d["results"]}
assert sorted(r) == ["model.greedy", "model.logits", "model.sampled", "model.top1"], sorted(r)
assert all(x["status"] == "PASS" for x in r.values()), r
assert r["model.logits"]["metric"] == "nmse" and r["model.logits"]["threshold"] == 2e-3
assert 0 <= r["model.logits"]["nmse"] <= 2e-3
assert r["model.top1"]["metric"] == "top1_mismatch" and r["model.top1"]["threshold"] == 0.005
assert r["model.greedy"]["nmse"] == 0 and r["model.sampled"]["nmse"] == 0
assert "engine" in r["model.greedy"]["shape"] and r["model.greedy"]["type"] == "gguf"
assert d["summary"] == {"pass": 4, "fail": 0, "skip": 0}
' "$tmp/m.json" 2>"$tmp/err"; then
    ok "conform model rows: JSON fields and values"
  else
    bad "conform model rows JSON: $(tail -1 "$tmp/err")"
  fi
else
  echo "skip conform --ops model on the default model: $model not found"
fi

# Two models that differ (tied vs separate LM head, same seed): every model
# row must fail, with the divergence named, and the exit status must be 1.
"$duet" conform --backends cpu,cpu --ops model --model-config "$fixtures/tiny-llama.json" \
  --model2 "$fixtures/tiny-llama-tied.json" --dummy-dtype f16 --prompts 2 --gen-tokens 8 \
  --json "$tmp/diff.json" >"$tmp/diff.txt" 2>"$tmp/err"
rc=$?
if [ $rc -eq 1 ] && py_json "$tmp/diff.json" '
r = {x["op"]: x for x in d["results"]}
assert all(r[o]["status"] == "FAIL" for o in ("model.logits", "model.top1", "model.greedy", "model.sampled")), r
assert r["model.logits"]["nmse"] > 2e-3 and r["model.greedy"]["nmse"] > 0
assert "diverges at token" in r["model.greedy"]["note"], r["model.greedy"]
assert d["summary"]["fail"] == 4
' "$tmp/diff.json" 2>"$tmp/err2"; then
  ok "conform --model2 with a different model fails (exit 1, every model row FAIL)"
else
  bad "conform --model2 different model: rc=$rc $(cat "$tmp/diff.txt" "$tmp/err" "$tmp/err2" 2>/dev/null | tail -5)"
fi

# The same tiny dummy on cpu,vulkan (validation on): logits, top-1 and greedy
# pass; sampled passes or, while Vulkan has no sample op, is a SKIP.
if [ -s "$tmp/dev.json" ] &&
   py_json "$tmp/dev.json" 'sys.exit(0 if any(x["backend"] == "vulkan" and x["usable"] for x in d["devices"]) else 1)' "$tmp/dev.json"; then
  if DUET_VK_VALIDATION=1 "$duet" conform --backends cpu,vulkan --ops model \
       --model-config "$fixtures/tiny-llama.json" --dummy-dtype f16 --dummy-seed 3 --prompts 3 \
       --gen-tokens 16 --json "$tmp/vkm.json" >"$tmp/vkm.txt" 2>"$tmp/err" &&
     ! grep -q "validation" "$tmp/err" && py_json "$tmp/vkm.json" '
r = {x["op"]: x for x in d["results"]}
assert all(r[o]["status"] == "PASS" for o in ("model.logits", "model.top1", "model.greedy")), r
s = r["model.sampled"]
assert s["status"] == "PASS" or (s["status"] == "SKIP" and s["note"] == "unsupported by vulkan"), s
' "$tmp/vkm.json" 2>"$tmp/err2"; then
    ok "conform --ops model cpu,vulkan on a tiny dummy"
  else
    bad "conform --ops model cpu,vulkan: $(cat "$tmp/vkm.txt" "$tmp/err" "$tmp/err2" 2>/dev/null | tail -8)"
  fi
fi

# 4. Bad arguments: non-zero exit, exactly one line on stderr naming the problem.
expect_error "unknown backend" "--backends 'cpu,nosuch'" conform --backends cpu,nosuch
expect_error "one backend" "exactly two" conform --backends cpu
expect_error "three backends" "exactly two" conform --backends cpu,cpu,cpu
expect_error "empty backend" "--backends" conform --backends ,cpu
expect_error "unknown op" "unknown op 'matmull'" conform --backends cpu-ref,cpu --ops matmull
expect_error "bad seed" "--seed" conform --seed -4
expect_error "devices extra arg" "unexpected argument" devices foo
expect_error "conform bad option" "--nosuch" conform --nosuch
expect_error "conform missing value" "--backends" conform --backends
expect_error "conform bad --prompts" "--prompts" conform --prompts 0
expect_error "conform bad --gen-tokens" "--gen-tokens" conform --gen-tokens x
expect_error "conform missing model" "nosuch.gguf" conform --backends cpu,cpu --model /nonexistent/nosuch.gguf
expect_error "conform --model2 vocabulary" "share a tokenizer" conform --backends cpu,cpu --ops model \
  --model-config "$fixtures/tiny-llama.json" --model2 smollm2-135m --dummy-dtype f16

# 5. duet devices: the CPU, as text and as JSON.
if "$duet" devices >"$tmp/dev.txt" 2>"$tmp/err" && grep -q -- "--device cpu" "$tmp/dev.txt" &&
   grep -q "^vulkan" "$tmp/dev.txt"; then
  ok "devices lists the CPU and a Vulkan line"
else
  bad "devices: $(cat "$tmp/dev.txt" "$tmp/err")"
fi
if "$duet" devices --json >"$tmp/dev.json" &&
   py_json "$tmp/dev.json" 'c = [x for x in d["devices"] if x["spec"] == "cpu"]; assert len(c) == 1 and c[0]["mem_total"] > 0' "$tmp/dev.json" 2>"$tmp/err"; then
  ok "devices --json is valid and has the CPU"
else
  bad "devices --json: $(tail -1 "$tmp/err")"
fi
"$duet" devices --help | grep -q "usage: duet devices" && ok "devices --help" || bad "devices --help"
"$duet" conform --help | grep -q "usage: duet conform" && ok "conform --help" || bad "conform --help"

finish
