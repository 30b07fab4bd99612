#!/usr/bin/env bash
# duet conform and duet devices end to end: cpu-ref vs cpu must pass and
# write valid JSON; cpu vs vulkan must pass (validation layer on) where a
# Vulkan device exists, the sample op bit for bit (NMSE 0); bad arguments
# fail with one line on stderr; duet devices lists the CPU, as text and
# as valid JSON. Needs no model.
set -u
duet="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failures=0
passed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failures=$((failures + 1)); echo "FAIL $1"; }
py_json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); $2" "$3"; }

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
assert all(r["status"] == "PASS" for r in d["results"])
assert d["summary"]["fail"] == 0 and d["summary"]["pass"] == len(d["results"])
assert d["backends"] == ["cpu-ref", "cpu"]
mm = [r for r in d["results"] if r["op"] == "matmul"]
assert len({r["type"] for r in mm}) == 9 and len(mm) == 54, len(mm)
assert all(r["threshold"] == 5e-4 for r in mm)
' "$tmp/ref.json" 2>"$tmp/err"; then
  ok "conform JSON is valid and complete"
else
  bad "conform JSON: $(tail -1 "$tmp/err")"
fi

# 2. --ops and --filter narrow the cases; the JSON says which ran.
"$duet" conform --backends cpu-ref,cpu --ops rope,add --filter neox --json - >"$tmp/f.json" 2>/dev/null
if py_json "$tmp/f.json" 'r = d["results"]; assert len(r) == 2 and all(x["op"] == "rope" for x in r), r' "$tmp/f.json" 2>"$tmp/err"; then
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
assert s and all(r["status"] == "PASS" and r["nmse"] == 0 for r in s), s
assert d["summary"]["skip"] == 0 and d["summary"]["fail"] == 0
' "$tmp/vk.json" 2>"$tmp/err"; then
    ok "conform cpu,vulkan: sample passes bit for bit"
  else
    bad "conform cpu,vulkan sample: $(tail -1 "$tmp/err")"
  fi
else
  echo "skip conform cpu,vulkan: no usable Vulkan device"
fi

# 4. Bad arguments: non-zero exit, exactly one line on stderr naming the problem.
expect_error() {
  local name="$1" pattern="$2"
  shift 2
  "$duet" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] &&
     grep -Eq -- "$pattern" "$tmp/err"; then
    ok "$name: $(cat "$tmp/err")"
  else
    bad "$name: rc=$rc stderr: $(cat "$tmp/err")"
  fi
}
expect_error "unknown backend" "--backends 'cpu,nosuch'" conform --backends cpu,nosuch
expect_error "one backend" "exactly two" conform --backends cpu
expect_error "three backends" "exactly two" conform --backends cpu,cpu,cpu
expect_error "empty backend" "--backends" conform --backends ,cpu
expect_error "unknown op" "unknown op 'matmull'" conform --backends cpu-ref,cpu --ops matmull
expect_error "bad seed" "--seed" conform --seed -4
expect_error "devices extra arg" "unexpected argument" devices foo
expect_error "conform bad option" "--nosuch" conform --nosuch
expect_error "conform missing value" "--backends" conform --backends

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

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
