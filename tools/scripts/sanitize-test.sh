#!/usr/bin/env bash
# Build the whole project with AddressSanitizer and UndefinedBehaviorSanitizer (meson's
# -Db_sanitize=address,undefined, the default compiler) and run the test suites that make sense
# under them: unit, unit-dataplane and health-check, the DPDK replay, the BPF suites and the
# end-to-end tests of the daemon and the CLI. The programs the tests start (sluiced, sluicectl)
# are of the same build, so they run sanitized too. docs/testing.md.
#
# Usage: sanitize-test.sh [BUILD_DIR] [TEST...]
#   BUILD_DIR  configured here on first use (default: build-asan, relative to the source root)
#   TEST       meson test names to run instead of the default: every test of the suites unit,
#              dpdk, bpf and e2e that the build has, but those below
# Left out by default: lab (nginx and curl through namespaces for minutes, and nothing there
# that the e2e suites do not already run under the sanitizers), churn (1,000 changes under
# traffic: slow under ASan, and the control plane's changes are run by e2e-cli and control_fuzz),
# no-dpdk-build (a build of its own, unsanitized) and the Python include lints.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-asan}
shift $(( $# < 1 ? $# : 1 ))
jobs=${NINJA_JOBS:-2}

if [ ! -f "$build/build.ninja" ]; then
  # -O1 and line tables only (-g1): what the ASan authors advise, and it builds faster than the
  # -O2 -g of the release build (docs/testing.md); reports still name file and line.
  meson setup "$build" -Db_sanitize=address,undefined -Db_lundef=false -Doptimization=1 \
    -Dc_args=-g1 -Dcpp_args=-g1 \
    >"$build.setup.log" 2>&1 || { cat "$build.setup.log"; exit 1; }
  rm -f "$build.setup.log"
fi

# Stop at the first report, with a stack, in the tests and in every program they start (the
# environment is inherited). DPDK's EAL (--no-huge, as the tests start sluiced) needs nothing
# more under ASan.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=1:detect_leaks=1:print_summary=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1:print_summary=1}

# Every test of the suites unit, dpdk, bpf and e2e (new tests there are run without a change here)
# but the ones left out above; or the tests named.
listed=$(meson test -C "$build" --no-rebuild --list 2>/dev/null |
  sed -n 's/^[^:]*:\(unit\|dpdk\|bpf\|e2e\) \/ //p')
run=()
if [ $# -gt 0 ]; then
  run=("$@")
else
  for t in $listed; do
    case "$t" in
      includes|includes-selftest|lab|churn) ;;
      *) run+=("$t") ;;
    esac
  done
fi

# Only what those tests run (their programs, and sluiced and sluicectl where they start them), not
# the benchmarks and tools: under ASan the whole project takes about half as long again to build.
needed=$(python3 - "$build" "${run[@]}" <<'PY'
import json, os, subprocess, sys
build = os.path.abspath(sys.argv[1])
names = set(sys.argv[2:])
def introspect(what):
    return json.loads(subprocess.check_output(["meson", "introspect", build, what]))
targets = {t["id"]: t for t in introspect("--targets")}
out = set()
for t in introspect("--tests"):
    if t["name"] not in names:
        continue
    if t["cmd"][0].startswith(build + "/"):
        out.add(os.path.relpath(t["cmd"][0], build))
    for dep in t["depends"]:
        out.update(os.path.relpath(f, build) for f in targets[dep]["filename"])
print("\n".join(sorted(out)))
PY
) || exit 1
# shellcheck disable=SC2086  # one target per word
ninja -C "$build" -j"$jobs" $needed >"$build/sanitize-build.log" 2>&1 \
  || { tail -40 "$build/sanitize-build.log"; exit 1; }

meson test -C "$build" --no-rebuild --print-errorlogs "${run[@]}"
status=$?
log=$build/meson-logs/testlog.txt
if [ -f "$log" ]; then
  passed=$(grep -Eo '^\[  PASSED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
  failed=$(grep -Eo '^\[  FAILED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
  skipped=$(grep -Eo '^\[  SKIPPED \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
  reports=$(grep -Ec 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$log")
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1  # a suite failed without a gtest verdict (a sanitizer abort, a timeout)
  fi
  echo "sanitized tests: ${passed} passed, ${failed} failed, ${skipped} skipped; ${reports} sanitizer reports"
fi
exit $status
