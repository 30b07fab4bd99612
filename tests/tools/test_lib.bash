# Shared by the shell tests of tests/tools (sourced; not a test itself):
# pass/fail counters and the summary, a JSON check, the bad-argument
# check, and the skip when the duet program at $duet sees no usable Vulkan
# device. Callers set $duet and $tmp first.
failures=0
passed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failures=$((failures + 1)); echo "FAIL $1"; }
# finish: the summary line; exit 1 on any failure.
finish() {
  echo "$passed passed, $failures failed"
  [ "$failures" -eq 0 ] || exit 1
  exit 0
}
# py_json FILE CODE: run CODE with d = the JSON in FILE.
py_json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); $2" "$3"; }
# expect_error NAME PATTERN ARGS...: duet ARGS fails (not by a signal) with
# exactly one line on stderr that matches PATTERN.
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
require_vulkan() {
  if ! "$duet" devices --json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if any(x.get("backend") == "vulkan" and x.get("usable") for x in d.get("devices", [])) else 1)'; then
    echo "skip: no usable Vulkan device"
    exit 77
  fi
}
