#!/usr/bin/env bash
# Install what is missing, build, and run every test suite (unit, dpdk, e2e).
set -uo pipefail
cd "$(dirname "$0")/../.."
tools/scripts/install-deps.sh || exit 1
tools/scripts/build.sh || exit 1
meson test -C build --print-errorlogs "$@"
status=$?
# One closing line over all GoogleTest cases of the run (meson counts only the binaries).
log=build/meson-logs/testlog.txt
if [ -f "$log" ]; then
  passed=$(grep -Eo '^\[  PASSED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
  failed=$(grep -Eo '^\[  FAILED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
  skipped=$(grep -Eo '^\[  SKIPPED \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
  if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1  # a suite failed without a gtest verdict (crash, timeout)
  fi
  echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
fi
exit $status
