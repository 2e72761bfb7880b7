#!/usr/bin/env bash
# Build the libFuzzer targets of tests/fuzz (clang, -Dfuzz=enabled, ASan + UBSan) and run each for
# a bounded time from its seed corpus; docs/testing.md. Fails when any target crashes, trips a
# sanitizer or finds a disagreement; prints one line per target with its executions and speed.
#
# Usage: fuzz.sh [BUILD_DIR] [SECONDS] [TARGET...]
#   BUILD_DIR  configured here on first use (default: build-fuzz, relative to the source root)
#   SECONDS    per target, libFuzzer's -max_total_time (default: 60)
#   TARGET     some of the targets only (default: every target the build has)
# New inputs go to BUILD_DIR/fuzz/corpus/TARGET (kept between runs; the seed corpus in the tree
# is only read), crash reproducers to BUILD_DIR/fuzz/artifacts/, each run's log to
# BUILD_DIR/fuzz/TARGET.log. xdp_diff_fuzz needs root (BPF_PROG_TEST_RUN); without, it is skipped.
set -uo pipefail
cd "$(dirname "$0")/../.."
src=$(pwd)
build=${1:-build-fuzz}
seconds=${2:-60}
shift $(( $# < 2 ? $# : 2 ))
jobs=${NINJA_JOBS:-2}

if [ ! -f "$build/build.ninja" ]; then
  # -Db_lundef=false: clang's sanitizer runtimes resolve symbols at link time that meson's
  # default --no-undefined would refuse in a shared module.
  # -O1 -g1 as sanitize-test.sh, for the same reason: a quicker build, stacks with file and line.
  CC=clang CXX=clang++ meson setup "$build" -Dfuzz=enabled -Db_sanitize=address,undefined \
    -Db_lundef=false -Doptimization=1 -Dc_args=-g1 -Dcpp_args=-g1 >"$build.setup.log" 2>&1 \
    || { cat "$build.setup.log"; exit 1; }
  rm -f "$build.setup.log"
fi

available=$(ninja -C "$build" -t targets all 2>/dev/null |
  sed -n 's|^tests/fuzz/\([a-z_]*_fuzz\): .*|\1|p' | sort -u)
if [ -z "$available" ]; then
  echo "fuzz: $build has no fuzz targets (configured without -Dfuzz=enabled, or not with clang?)" >&2
  exit 1
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  read -r -a targets <<<"$(echo $available)"
fi
for t in "${targets[@]}"; do
  echo "$available" | grep -qx "$t" || { echo "fuzz: no target $t in $build" >&2; exit 1; }
done
ninja -C "$build" -j"$jobs" "${targets[@]/#/tests/fuzz/}" >"$build/fuzz-build.log" 2>&1 \
  || { tail -40 "$build/fuzz-build.log"; exit 1; }

# UBSan reports and goes on unless told to halt; a finding must stop the run and leave its input.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

mkdir -p "$build/fuzz/artifacts"
summary=()
status=0
for t in "${targets[@]}"; do
  corpus="$build/fuzz/corpus/$t"
  mkdir -p "$corpus"
  args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=25
        -artifact_prefix="$build/fuzz/artifacts/$t-")
  dict="$src/tests/fuzz/${t%_fuzz}.dict"
  [ -f "$dict" ] && args+=(-dict="$dict")
  # control_fuzz touches ~20,000 coverage features per input; libFuzzer's entropic schedule then
  # spends most of the time updating feature frequencies (136 exec/s with it, 362 without).
  [ "$t" = control_fuzz ] && args+=(-entropic=0)
  # A crash's exit status, apart from 77, which a target that cannot run here exits with (skip).
  # libFuzzer's own default for a crash is 77 too: with it a finding read as a skip.
  args+=(-error_exitcode=99)
  log="$build/fuzz/$t.log"
  echo "fuzz: $t for ${seconds} s"
  "$build/tests/fuzz/$t" "${args[@]}" "$corpus" "$src/tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ "$rc" -eq 77 ]; then
    summary+=("$t: skipped ($(grep -m1 'cannot' "$log"))")
    continue
  fi
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "fuzz: $t FAILED (exit $rc); the end of $log:"
    grep -v '^\s*"' "$log" | tail -40
    summary+=("$t: FAILED after ${execs:-?} executions; $(grep -m1 -o 'Test unit written to .*' "$log")")
    continue
  fi
  summary+=("$t: ${execs:-?} executions, ${speed:-?} exec/s, ${seconds} s, no finding")
done
echo "fuzz results ($build):"
printf '  %s\n' "${summary[@]}"
exit $status
