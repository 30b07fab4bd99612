# Shared by the Vulkan shell tests (sourced; not a test itself): pass/fail
# counters and the skip when the duet program at $duet sees no usable
# Vulkan device.
failures=0
ok() { echo "ok   $1"; }
bad() { failures=$((failures + 1)); echo "FAIL $1"; }
finish() {
  [ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
  echo "all passed"
}
require_vulkan() {
  if ! "$duet" devices --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if any(x.get("backend") == "vulkan" and x.get("usable") for x in d.get("devices", [])) else 1)'; then
    echo "skip: no usable Vulkan device"
    exit 77
  fi
}
