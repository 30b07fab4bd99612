#!/usr/bin/env bash
# gpu-check.sh — one command that checks duet's Vulkan backend on a GPU
# machine and measures it, in at most ~6 minutes:
#   1. duet devices                        (what the loader and driver show)
#   2. duet bench bandwidth                (device-local copy rate: the ceiling)
#   3. duet conform --backends cpu,vulkan  (every op, then a tiny seeded model
#                                           end to end: logits, top-1, greedy,
#                                           seeded sampling)
#   4. duet bench forward on a Llama-3.1-8B-shaped dummy model (BF16): decode
#      at batch 1, 8, 64 and a 2,048-token prefill; tok/s and achieved
#      bandwidth = bytes a step must read / step time, against step 2; GPU
#      time per shader (--profile, after the timed steps); then batch-1
#      decode again through the tiled matmul, for comparison
#   5. the same model quantized to Q4_0: decode at batch 1 and 8 (the
#      quantized matmul_qvec where the device has subgroup arithmetic),
#      profiled too
#   6. the BF16 decode of step 4 at batch 1, 8, 64 again with one weight row
#      per decode-matmul workgroup (DUET_VK_VEC_ROWS=1; the default is 4)
#   7. the same with 256 keys per split-K attention partition
#      (DUET_VK_ATTN_PART=256; the default is 64)
#   8. conform on a SmolLM2-135M-shaped dummy (Q4_1), if time is left
#   9. Q4_0 batch-1 decode through the tiled matmul, if time is left
# Every step has a timeout; a failed step is reported and the rest still
# run. A table comes last, then where batch-1 decode spends its GPU time
# (BF16 and Q4_0); JSON and logs go to $DUET_RESULTS (default
# ./gpu-check-results): one file per step and summary.json.
#
# Usage:
#   tools/gpu-check.sh [--quick] [--duet PATH]   run the check
#   tools/gpu-check.sh --bundle DIR [--duet PATH] make DIR: this script, the
#       duet binary, the shared libraries it needs beyond glibc, and the
#       Vulkan loader (used there only if the system has none); copy DIR to
#       the GPU machine and run DIR/gpu-check.sh there (no internet needed)
# --quick: tiny shapes everywhere (a couple of minutes on a CPU Vulkan such
# as lavapipe); proves the script, not the GPU.
# Environment: DUET_RESULTS (results folder), DUET_GPU_CHECK_BUDGET (seconds
# for all steps, default 350), DUET_VK_VALIDATION (passed through).
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
quick=0
bundle_dir=""
duet=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --duet) duet="${2:?--duet needs a path}"; shift ;;
    --bundle) bundle_dir="${2:?--bundle needs a folder}"; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---- finding duet --------------------------------------------------------
if [ -z "$duet" ]; then
  for c in "$here/bin/duet" "$here/../build/duet" "$(command -v duet 2>/dev/null)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then duet="$c"; break; fi
  done
fi
if [ -z "$duet" ] || [ ! -x "$duet" ]; then
  echo "gpu-check: no duet binary found (give --duet PATH, or run from a bundle)" >&2
  exit 2
fi

# ---- --bundle: a folder that runs on a machine without duet's libraries ------
if [ -n "$bundle_dir" ]; then
  mkdir -p "$bundle_dir/bin" "$bundle_dir/lib" "$bundle_dir/vulkan-loader" || exit 2
  cp "$duet" "$bundle_dir/bin/duet" && cp "${BASH_SOURCE[0]}" "$bundle_dir/gpu-check.sh" || exit 2
  chmod +x "$bundle_dir/gpu-check.sh"
  # Everything ldd resolves except glibc itself (the target's is used).
  ldd "$duet" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libresolv.so*) ;;
      *) cp -L "$lib" "$bundle_dir/lib/" ;;
    esac
  done
  loader="$(ldconfig -p 2>/dev/null | awk '/libvulkan\.so\.1 / {print $NF; exit}')"
  if [ -n "$loader" ]; then
    cp -L "$loader" "$bundle_dir/vulkan-loader/libvulkan.so.1"
  else
    echo "gpu-check: no libvulkan.so.1 here to bundle; the target must have one" >&2
  fi
  echo "gpu-check: bundle in $bundle_dir ($(du -sh "$bundle_dir" | cut -f1)); run $bundle_dir/gpu-check.sh on the GPU machine"
  exit 0
fi

# ---- the environment: bundled libraries, Vulkan loader, NVIDIA ICD ---------
if [ -d "$here/lib" ]; then
  export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 ' && [ -e "$here/vulkan-loader/libvulkan.so.1" ]; then
  export LD_LIBRARY_PATH="$here/vulkan-loader:$LD_LIBRARY_PATH"
  loader_note="bundled Vulkan loader"
else
  loader_note="system Vulkan loader"
fi
# Containers often mount the NVIDIA driver outside the loader's search path.
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -z "${VK_ICD_FILENAMES:-}" ] && [ -e "$nv_icd" ] &&
   ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
  export VK_DRIVER_FILES="$nv_icd" VK_ICD_FILENAMES="$nv_icd"
  loader_note="$loader_note, ICD $nv_icd"
fi

results="${DUET_RESULTS:-./gpu-check-results}"
mkdir -p "$results" || exit 2
results="$(cd "$results" && pwd)"
rm -f "$results"/*.json "$results"/*.log
export DUET_CACHE="$results/cache" # pipeline cache; nothing else is read from it
budget="${DUET_GPU_CHECK_BUDGET:-350}"
t_start=$(date +%s)
steps_file="$results/steps.tsv"
: >"$steps_file"

# ---- shapes ------------------------------------------------------------------
tiny="$results/tiny-llama.json"
cat >"$tiny" <<'EOF'
{"model_type": "llama", "hidden_size": 128, "intermediate_size": 352,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "vocab_size": 512, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
 "rope_theta": 10000.0, "tie_word_embeddings": false}
EOF
if [ "$quick" = 1 ]; then
  bw_args=(--size 64 --copies 4 --repeat 3)
  model_args=(--prompts 3 --gen-tokens 16)
  fwd_model=(--model-config "$tiny" --dummy-dtype bf16)
  fwd_args=(--batch 1,8,64 --context 64 --steps 4 --prefill 256 --chunk 128 --repeat 2)
  fwd_name="tiny dummy (bf16)"
  fwdq_model=(--model-config "$tiny" --dummy-dtype q4_0)
  fwdq_args=(--batch 1,8 --context 64 --steps 4 --prefill 0)
else
  bw_args=(--size 1024 --copies 20 --repeat 5)
  model_args=()
  fwd_model=(--model-config llama-3.1-8b --dummy-dtype bf16)
  fwd_args=(--batch 1,8,64 --context 512 --steps 16 --prefill 2048 --chunk 512 --repeat 2)
  fwd_name="llama-3.1-8b dummy (bf16)"
  # Q4_0 weights: ~4.2 GB; generating them takes ~60 s on 2 threads here,
  # so ~8-15 s on a 16-core GPU host.
  fwdq_model=(--model-config llama-3.1-8b --dummy-dtype q4_0)
  fwdq_args=(--batch 1,8 --context 512 --steps 16 --prefill 0)
fi

# run NAME TIMEOUT OUTFILE CMD...: stdout to OUTFILE (if not -), stderr and
# stdout to NAME.log; records name, exit status, seconds, timeout used.
run() {
  local name="$1" limit="$2" out="$3"
  shift 3
  local left=$((budget - ($(date +%s) - t_start)))
  if [ "$left" -lt 10 ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 "$limit" >>"$steps_file"
    echo "gpu-check: $name: skipped (the ${budget}s budget is spent)"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "gpu-check: $name (timeout ${limit}s): $*"
  local t0 rc
  t0=$(date +%s.%N)
  if [ "$out" = "-" ]; then
    timeout -k 5 "$limit" "$@" >"$results/$name.log" 2>&1
    rc=$?
  else
    timeout -k 5 "$limit" "$@" >"$results/$out" 2>"$results/$name.log"
    rc=$?
  fi
  local dt
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$limit" >>"$steps_file"
  [ "$rc" -ne 0 ] && echo "gpu-check: $name: exit status $rc$([ "$rc" -ge 124 ] && echo ' (timed out?)') — see $results/$name.log"
}

echo "gpu-check: duet $("$duet" --version 2>&1 | head -1) at $duet; $loader_note; results in $results"
command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv >"$results/nvidia-smi.log" 2>&1

run devices 30 devices.json "$duet" devices --json
run bandwidth 30 bandwidth.json "$duet" bench bandwidth --device vulkan --json "${bw_args[@]}"
run conform-ops 75 - "$duet" conform --backends cpu,vulkan --json "$results/conform-ops.json"
run conform-model 40 - "$duet" conform --backends cpu,vulkan --ops model --model-config "$tiny" \
  --dummy-dtype f16 --dummy-seed 1 --json "$results/conform-model.json" "${model_args[@]}"
run forward 170 forward.json "$duet" bench forward --device vulkan --json --profile "${fwd_model[@]}" \
  "${fwd_args[@]}"
# The same batch-1 decode through the tiled matmul (the default for 16-bit
# weights is matmul_vec where the device has subgroup arithmetic).
run forward-tiled 60 forward-tiled.json env DUET_VK_MATMUL=tiled "$duet" bench forward \
  --device vulkan --json "${fwd_model[@]}" "${fwd_args[@]}" --batch 1 --prefill 0
# Quantized decode: the one pass over Q4_0 weights per step (matmul_qvec
# where the device has subgroup arithmetic).
run forward-q4 60 forward-q4.json "$duet" bench forward --device vulkan --json --profile \
  "${fwdq_model[@]}" "${fwdq_args[@]}"
# The BF16 decode with one weight row per matmul_vec workgroup (the default
# takes 4 and reads each activation run once for all of them).
run forward-rows1 60 forward-rows1.json env DUET_VK_VEC_ROWS=1 "$duet" bench forward \
  --device vulkan --json "${fwd_model[@]}" "${fwd_args[@]}" --prefill 0
# The BF16 decode with 256 keys per split-K attention partition (the default
# is 64: at batch 1 and context 512, 64 workgroups of one 64-key tile each
# instead of 16 walking 4 tiles in turn).
run forward-part256 60 forward-part256.json env DUET_VK_ATTN_PART=256 "$duet" bench forward \
  --device vulkan --json "${fwd_model[@]}" "${fwd_args[@]}" --prefill 0
if [ "$quick" = 0 ]; then
  run conform-smollm 60 - "$duet" conform --backends cpu,vulkan --ops model \
    --model-config smollm2-135m --dummy-dtype q4_1 --dummy-seed 1 --json "$results/conform-smollm.json"
fi
run forward-q4-tiled 45 forward-q4-tiled.json env DUET_VK_MATMUL=tiled "$duet" bench forward \
  --device vulkan --json "${fwdq_model[@]}" "${fwdq_args[@]}" --batch 1

# ---- summary.json and the table (last) -----------------------------------------
if ! command -v python3 >/dev/null; then
  echo "gpu-check: no python3: no summary; the per-step JSON is in $results"
  cat "$steps_file"
  exit 1
fi
python3 - "$results" "$fwd_name" "$quick" <<'PY'
import json, os, sys
res, fwd_name, quick = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

def load(name):
    try:
        with open(os.path.join(res, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

steps = []
for line in open(os.path.join(res, "steps.tsv")):
    name, rc, secs, limit = line.rstrip("\n").split("\t")
    steps.append({"step": name, "exit_status": None if rc == "skipped" else int(rc),
                  "seconds": float(secs), "timeout": int(limit),
                  "status": "SKIPPED" if rc == "skipped" else
                            "OK" if rc == "0" else "TIMEOUT" if rc in ("124", "137") else "FAIL"})
summary = {"quick": quick, "steps": steps}
rows = []  # (what, status, numbers)
st = {s["step"]: s for s in steps}

def status(name):
    return st[name]["status"] if name in st else "-"

dev = load("devices.json")
if dev:
    vk = [d for d in dev.get("devices", []) if d.get("backend") == "vulkan"]
    summary["devices"] = dev
    rows.append(("devices", status("devices"),
                 "; ".join("%s (%s)" % (d.get("name"), d.get("type", "?")) for d in vk) or "no Vulkan device"))
else:
    rows.append(("devices", status("devices"), "no output"))

bw = load("bandwidth.json")
copy = bw.get("copy_gbps_median") if bw else None
summary["bandwidth"] = bw
rows.append(("copy bandwidth", status("bandwidth"),
             "%.1f GB/s (read + write), %d x %d MiB" % (copy, bw["copies"], bw["bytes_per_copy"] >> 20)
             if bw else "no output"))

for name, label in (("conform-ops", "conform ops"), ("conform-model", "conform model (tiny)"),
                    ("conform-smollm", "conform model (135M)")):
    if name not in st:
        continue
    c = load(name + ".json")
    summary[name] = c
    if status(name) == "SKIPPED":
        rows.append((label, "SKIPPED", "not run: the time budget was spent"))
        continue
    if not c:
        rows.append((label, status(name), "no JSON (see %s.log)" % name))
        continue
    s = c["summary"]
    bad = [r for r in c["results"] if r["status"] == "FAIL"]
    text = "%d pass, %d fail, %d skip" % (s["pass"], s["fail"], s["skip"])
    if bad:
        text += "; first failure: %s %s %s" % (bad[0]["op"], bad[0]["shape"], bad[0]["note"])
    model = [r for r in c["results"] if r["op"].startswith("model.")]
    if model:
        text += " [" + ", ".join("%s %s" % (r["op"][6:], r["status"]) for r in model) + "]"
    rows.append((label, "FAIL" if s["fail"] else status(name), text))

def decode_text(d):
    """A decode row: one step at a time (median), then two in flight (mean),
    each as a share of the copy bandwidth; the shares go into the JSON."""
    pct = lambda g: " = %.0f%% of copy" % (100 * g / copy) if copy else ""
    d["fraction_of_copy"] = d["gbps"] / copy if copy else None
    text = "%.2f ms/step, %.1f tok/s, %.1f GB/s%s" % (d["step_ms_median"], d["tok_s"], d["gbps"],
                                                      pct(d["gbps"]))
    if "pipelined_gbps" in d:
        d["pipelined_fraction_of_copy"] = d["pipelined_gbps"] / copy if copy else None
        text += "; 2 in flight %.2f ms/step, %.1f GB/s%s" % (
            d["pipelined_step_ms"], d["pipelined_gbps"], pct(d["pipelined_gbps"]))
    return text

fw = load("forward.json")
summary["forward"] = fw
if fw:
    for d in fw.get("decode", []):
        rows.append(("decode batch %d" % d["batch"], status("forward"), decode_text(d)))
    p = fw.get("prefill")
    if p:
        rows.append(("prefill %d" % p["tokens"], status("forward"),
                     "%.1f tok/s (%.2f s, chunks of %d)" % (p["tok_s"], p["seconds_median"], p["chunk"])))
    if fw.get("weights_device_bytes", -1) >= 0:
        rows.append(("weights on device", status("forward"),
                     "%.2f GiB of device memory for %.2f GiB of weights (loaded in %.1f s)" %
                     (fw["weights_device_bytes"] / 2**30, fw["weight_bytes"] / 2**30,
                      fw["load_seconds"])))
    if not fw.get("ok", False):
        rows.append(("forward", "FAIL", "incomplete (see forward.log)"))
for step, key, label in (("forward-tiled", "forward_tiled", "decode %d, tiled mm"),
                         ("forward-q4", "forward_q4", "decode %d, q4_0"),
                         ("forward-rows1", "forward_rows1", "decode %d, vec rows 1"),
                         ("forward-part256", "forward_part256", "decode %d, part 256"),
                         ("forward-q4-tiled", "forward_q4_tiled", "decode %d, q4_0 tiled")):
    ft = load(step + ".json")
    summary[key] = ft
    for d in (ft or {}).get("decode", []):
        rows.append((label % d["batch"], status(step), decode_text(d)))
    if step in st and not ft:
        rows.append((label.replace(" %d", ""), status(step),
                     "not run: the time budget was spent" if status(step) == "SKIPPED" else
                     "no output (see %s.log)" % step))
if fw:
    pass
elif status("forward") == "SKIPPED":
    rows.append(("forward", "SKIPPED", "not run: the time budget was spent"))
else:
    rows.append(("forward", status("forward"), "no output (see forward.log)"))

with open(os.path.join(res, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
print()
print("duet GPU check%s — model for decode/prefill: %s; q4_0 rows: the same shape in Q4_0" %
      (" (quick)" if quick else "", fwd_name))
print("%-22s %-8s %s" % ("check", "status", "result"))
for what, s, text in rows:
    print("%-22s %-8s %s" % (what, s, text))
print("%-22s %-8s %s" % ("steps", "", ", ".join("%s %s %.0fs" % (x["step"], x["status"], x["seconds"]) for x in steps)))

# Where batch-1 decode spends its GPU time (bench forward --profile: GPU
# timestamps after each command, in extra steps after the timed ones).
for label, doc in (("bf16", fw), ("q4_0", summary.get("forward_q4"))):
    d1 = [d for d in (doc or {}).get("decode", []) if d["batch"] == 1 and d.get("profile")]
    if not d1:
        print("profile, decode batch 1 (%s): none (see the step's log)" % label)
        continue
    p = d1[0]["profile"]
    kinds = p["kinds"]
    busy = " (%.0f%% of the wall)" % (100 * p["span_us_per_step"] / p["wall_us_per_step"]) \
        if p["wall_us_per_step"] > 0 else ""
    print("profile, decode batch 1 (%s): GPU %.1f us/step, wall %.1f us/step%s; %d commands, "
          "%d barriers per step" %
          (label, p["span_us_per_step"], p["wall_us_per_step"], busy,
           round(sum(k["per_step"] for k in kinds)), round(p.get("barriers_per_step", 0))))
    for k in kinds[:6]:
        print("  %-22s %10.1f us/step %6.1f%%  (%g per step)" %
              (k["kind"], k["us_per_step"], 100 * k["share"], k["per_step"]))
    rest = sum(k["share"] for k in kinds[6:])
    if rest > 0:
        print("  %-22s %10.1f us/step %6.1f%%" % ("(the other %d kinds)" % (len(kinds) - 6),
              sum(k["us_per_step"] for k in kinds[6:]), 100 * rest))
print("  (a command's GPU time: its timestamp minus the previous one's; approximate where "
      "commands overlap, exact across barriers)")
print("JSON: %s/summary.json" % res)
bad = any(x["status"] != "OK" for x in steps) or any(s == "FAIL" for _, s, _ in rows)
sys.exit(1 if bad else 0)
PY
