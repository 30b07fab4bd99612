#!/usr/bin/env bash
# duet generate on the Vulkan backend (lavapipe in CI, validation layer on)
# against the CPU backend on the default model: greedy and seeded sampling
# (temperature 0.8, top-p 0.9) give the same text, and the validation layer
# reports nothing. Exits 77 (skip) without a Vulkan device.
set -u
duet="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/test_lib.bash"
require_vulkan

prompt="The capital of France is"
run() { # device extra-args... -> $tmp/<device>-<tag>.txt
  local dev="$1" tag="$2"
  shift 2
  DUET_VK_VALIDATION=1 "$duet" generate --device "$dev" --prompt "$prompt" --max-tokens 6 \
    --ignore-eos --no-stats "$@" >"$tmp/$dev-$tag.txt" 2>"$tmp/$dev-$tag.err"
}
for tag in greedy sampled; do
  args=()
  [ "$tag" = sampled ] && args=(--temperature 0.8 --top-p 0.9 --seed 3)
  run cpu "$tag" "${args[@]}" || bad "cpu $tag: $(tail -2 "$tmp/cpu-$tag.err")"
  if run vulkan "$tag" "${args[@]}"; then
    ok "generate --device vulkan ($tag) exits 0"
  else
    bad "generate --device vulkan ($tag): $(tail -2 "$tmp/vulkan-$tag.err")"
    continue
  fi
  if [ -s "$tmp/vulkan-$tag.txt" ] && cmp -s "$tmp/cpu-$tag.txt" "$tmp/vulkan-$tag.txt"; then
    ok "$tag text identical to the CPU backend: $(tr '\n' ' ' <"$tmp/vulkan-$tag.txt")"
  else
    bad "$tag text differs: cpu '$(cat "$tmp/cpu-$tag.txt")' vs vulkan '$(cat "$tmp/vulkan-$tag.txt")'"
  fi
  if grep -q "duet: Vulkan validation" "$tmp/vulkan-$tag.err"; then
    bad "$tag: validation messages: $(grep -m2 'duet: Vulkan validation' "$tmp/vulkan-$tag.err" | cut -c1-300)"
  else
    ok "$tag: no validation message"
  fi
done
finish
