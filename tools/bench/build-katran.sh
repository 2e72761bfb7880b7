#!/usr/bin/env bash
# Build Katran's XDP balancer (katran/lib/bpf/balancer.bpf.c) for `sluice-bench --xdp --katran`.
#
#   tools/bench/build-katran.sh KATRAN_SRC [OUT.o]     (OUT.o defaults to ./balancer.bpf.o)
#
# KATRAN_SRC is a Katran source tree: a git checkout of github.com/facebookincubator/katran, or
# one exported with `git -C REPO archive HEAD | tar -x -C DIR`. Katran is GPL-2.0, so none of
# its code is in this repository: the object is built from the user's tree, and sluice-bench
# programs its maps from our own code (tools/bench/katran_bench.cc).
#
# The flags are those of Katran's own open-source build with its defaults:
# build_katran.sh calls build_bpf_modules_opensource.sh without -d, so EXTRA_CFLAGS is empty,
# and that script copies katran/lib/linux_includes/* to include/ and runs katran/lib/Makefile-bpf,
# whose rule is
#   $(CLANG) -I$(obj)/usr/include -I$(obj)/include -I$(obj) $(EXTRA_CFLAGS) $(DEBUGBPF)
#     -D__KERNEL__ -Wno-unused-value -Wno-pointer-sign -Wno-compare-distinct-pointer-types
#     -O2 -emit-llvm -c -g $< -o - | $(LLC) -march=bpf -filetype=obj -o $@
# with DEBUGBPF = -DDEBUG and $(obj) the copy's root. Here -I points at the same files in place
# (linux_includes for include/, the tree's root for $(obj); usr/include does not exist in either).
# No optional define is set, so the object has Katran's default features: IPIP encapsulation to
# the real (GUE only with -DGUE_ENCAP), per-CPU LRUs behind the lru_mapping map of maps, the
# 65,537-slot ring (RING_SIZE), 512 VIPs, 4,096 reals (balancer_consts.h).
#
# The one difference is the compiler: Katran's build_katran.sh (get_clang) downloads LLVM 12, or
# takes the distribution's on Red Hat; this takes Debian 12's clang-14 and llc-14
# (apt-get install clang-14 llvm-14).
set -euo pipefail

die() {
  echo "build-katran.sh: $*" >&2
  exit 1
}

if [[ $# -lt 1 || $# -gt 2 || $1 == -h || $1 == --help ]]; then
  echo "usage: $0 KATRAN_SRC [OUT.o]" >&2
  echo "  KATRAN_SRC: a Katran checkout or exported tree; OUT.o: ./balancer.bpf.o by default" >&2
  exit 2
fi
src=${1%/}
out=${2:-balancer.bpf.o}

[[ -d $src ]] || die "$src: no such directory"
if [[ ! -e $src/katran/lib/bpf/balancer.bpf.c && -f $src/HEAD && -d $src/objects ]]; then
  die "$src is a bare git directory, not a source tree; export one first:
  mkdir -p /tmp/katran-src && git -C $src archive HEAD | tar -x -C /tmp/katran-src"
fi
# What the build reads: the program, the headers it includes by their tree path, and the
# Makefile whose flags are copied above.
for f in katran/lib/bpf/balancer.bpf.c katran/lib/bpf/balancer_maps.h \
  katran/lib/linux_includes/bpf_helpers.h katran/lib/Makefile-bpf; do
  [[ -f $src/$f ]] ||
    die "$src is not a Katran tree: no $f (KATRAN_SRC is the directory that holds katran/lib/)"
done
# If Katran changes its recipe, the flags above may no longer be its defaults: say so.
if ! grep -q -- '-O2 -emit-llvm -c -g' "$src/katran/lib/Makefile-bpf" ||
  ! grep -q -- '-D__KERNEL__' "$src/katran/lib/Makefile-bpf"; then
  echo "build-katran.sh: warning: $src/katran/lib/Makefile-bpf no longer has the rule" \
    "this script copies; check its flags" >&2
fi

pick() {
  local tool
  for tool in "$@"; do
    if command -v "$tool" >/dev/null 2>&1; then
      echo "$tool"
      return 0
    fi
  done
  return 1
}
clang=$(pick clang-14 clang) || die "no clang: apt-get install clang-14"
llc=$(pick llc-14 llc) || die "no llc: apt-get install llvm-14"
# A here-string, not a pipe: grep -q stops reading early, and pipefail would count llc's SIGPIPE.
grep -q 'bpf ' <<<"$("$llc" --version)" || die "$llc has no BPF target"

mkdir -p "$(dirname "$out")"
# Written beside OUT and renamed: a failed build leaves no partial object under OUT's name.
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# pipefail: a clang error fails the pipe even though llc then reads an empty input.
"$clang" -I"$src/katran/lib/linux_includes" -I"$src" \
  -DDEBUG -D__KERNEL__ -Wno-unused-value -Wno-pointer-sign -Wno-compare-distinct-pointer-types \
  -O2 -emit-llvm -c -g "$src/katran/lib/bpf/balancer.bpf.c" -o - |
  "$llc" -march=bpf -filetype=obj -o "$tmp"
mv "$tmp" "$out"
trap - EXIT

rev=""
# Only a checkout's own .git: an exported tree inside another repository must not take its HEAD.
if [[ -e $src/.git ]] && git -C "$src" rev-parse --short HEAD >/dev/null 2>&1; then
  rev=" (katran $(git -C "$src" rev-parse --short HEAD))"
fi
echo "build-katran.sh: $out$rev with $("$clang" --version | head -n1)"
