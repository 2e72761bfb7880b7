#!/usr/bin/env bash
# Configure and build Sluice as on a machine without libdpdk-dev and libbpf-dev (-Ddpdk=disabled
# -Dxdp=disabled), then run the unit suite of common and control there: the control plane must
# build and be tested with neither data path's library. Fails when a target of that build still
# links DPDK or libbpf. Usage: check-no-dpdk-build.sh SOURCE_DIR
set -euo pipefail
src=${1:?usage: $0 SOURCE_DIR}
dir=$(mktemp -d /tmp/sluice-no-dpdk-XXXXXX)
trap 'rm -rf "$dir"' EXIT
# plain: no optimisation, the quickest compile; this build is for the check, not for speed.
meson setup "$dir" "$src" -Ddpdk=disabled -Dxdp=disabled -Dtests=enabled --buildtype=plain \
  >"$dir/setup.log" 2>&1 || { cat "$dir/setup.log"; exit 1; }
ninja -C "$dir" >"$dir/build.log" 2>&1 || { tail -50 "$dir/build.log"; exit 1; }
if grep -Eq -- '-lrte_|librte_|-lbpf\b|libbpf\.' "$dir/build.ninja"; then
  echo "a target of the build without DPDK and libbpf still links one of them:"
  grep -Eo -- '-lrte_[a-z_]+|-lbpf\b' "$dir/build.ninja" | sort -u | head
  exit 1
fi
for t in sluiced sluice-bench; do
  if [ -e "$dir/src/$t" ] || [ -e "$dir/tools/bench/$t" ]; then
    echo "$t was built without DPDK"; exit 1
  fi
done
out=$("$dir/tests/unit_tests" --gtest_brief=1 2>&1) || { echo "$out" | tail -40; exit 1; }
# Report without gtest's own summary line, so the test command's total counts these tests once.
n=$(echo "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\?\./\1/p')
echo "built without DPDK and libbpf: sluice_common, sluice_control, sluicectl, pktgen; unit_tests: ${n:-?} passed"
