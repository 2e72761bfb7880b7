#!/usr/bin/env bash
# What health-checking many backends costs the DPDK data path, on the lab (tools/lab/lab.sh).
#
# One lab on DPDK, DR, IPv6 only, one nginx backend (be1). be1's eth0 gets N more addresses,
# 2001:db8:b::1:0 .. (nodad; nginx listens on [::]:80, so it answers on every one), and those N
# addresses become backends of the service web6 (appended to the lab's configuration and read
# with `sluicectl reload`), all http-checked every --interval-ms. Every probe's packets cross the
# worker: the probe leaves the kernel through the exception interface (sluice0) and the worker,
# and the backend's answers come back through the worker to the kernel (`passed`). Then, for
# --seconds:
#   - packets passed to the kernel per second (`sluicectl --json stats`, workers[].passed), and
#     the sluiced threads' CPU;
#   - whether every backend stays up, and whether each one's probe count (`list --json`,
#     health.probes) grew by seconds / interval: no drift;
#   - then the exception path's capacity, measured: UDP to Sluice's own address (no service,
#     so passed to the kernel) from the router as fast as one python sender goes, for 3 s, and
#     how much of it the worker passed; and, to compare, what the worker takes in of frames it
#     drops itself.
# Not part of CI (it takes a minute or two and the figures are the point). Root.
#
# Usage: tools/lab/probe_cost.sh [--build DIR] [--backends N] [--interval-ms MS] [--seconds S]
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
readonly REPO LAB=$REPO/tools/lab/lab.sh PREFIX=pc-
BUILD=$REPO/build
N=1000
INTERVAL_MS=1000
SECONDS_RUN=30

say() { printf 'probe-cost: %s\n' "$*"; }
die() {
  printf 'probe-cost: %s\n' "$*" >&2
  exit 1
}
while [[ $# -gt 0 ]]; do
  case $1 in
    --build) BUILD=$2; shift 2 ;;
    --backends) N=$2; shift 2 ;;
    --interval-ms) INTERVAL_MS=$2; shift 2 ;;
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (--help)" ;;
  esac
done
if ! [[ $N =~ ^[0-9]+$ ]] || ((N < 1 || N > 65535)); then die "--backends must be 1..65535"; fi
[[ $(id -u) -eq 0 ]] || die "needs root"
PY=$(command -v python3) || die "needs python3"
readonly PY

# The kernel's IPv6 neighbour table is one for all namespaces, and its default hard limit
# (gc_thresh3 = 1024) is about what N = 1000 backends alone need: raised for the run, put back after.
readonly GC=/proc/sys/net/ipv6/neigh/default
GC_SAVED=""
restoreGc() {
  if [[ -n $GC_SAVED ]]; then
    read -r t1 t2 t3 <<<"$GC_SAVED"
    echo "$t3" >"$GC/gc_thresh3"
    echo "$t2" >"$GC/gc_thresh2"
    echo "$t1" >"$GC/gc_thresh1"
    say "IPv6 neighbour table limits put back: gc_thresh1..3 = $t1 $t2 $t3"
  fi
}
LAB_IS_UP=0
FLOOD_PID=""
onExit() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $FLOOD_PID ]] && kill "$FLOOD_PID" 2>/dev/null
  ((LAB_IS_UP)) && "$LAB" down --ns-prefix "$PREFIX" >/dev/null 2>&1
  restoreGc
  exit "$rc"
}
trap onExit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "$(lscpu | awk -F': +' '/^Model name/ {print $2; exit}'), $(nproc) CPUs, kernel $(uname -r); sluiced from $BUILD"
say "$N backends, http check every $INTERVAL_MS ms (timeout $((INTERVAL_MS / 2)) ms), $SECONDS_RUN s"

need=$((N + 256))
read -r g1 < "$GC/gc_thresh1"; read -r g2 < "$GC/gc_thresh2"; read -r g3 < "$GC/gc_thresh3"
if ((g3 < 2 * need)); then
  GC_SAVED="$g1 $g2 $g3"
  echo $((2 * need)) >"$GC/gc_thresh1" # no garbage collection below this: entries are not dropped
  echo $((3 * need)) >"$GC/gc_thresh2"
  echo $((4 * need)) >"$GC/gc_thresh3"
  say "IPv6 neighbour table limits raised for the run: gc_thresh1..3 $g1 $g2 $g3 -> $((2 * need)) $((3 * need)) $((4 * need))"
fi

# --- the lab ---------------------------------------------------------------------------------------

LAB_IS_UP=1
t0=$(date +%s%3N)
"$LAB" up --build "$BUILD" --ns-prefix "$PREFIX" --dataplane dpdk --forwarding dr --family 6 \
  --backends 1 --interval-ms "$INTERVAL_MS" --timeout-ms $((INTERVAL_MS / 2)) >/tmp/probe-cost.up.log 2>&1 ||
  { tail -n 30 /tmp/probe-cost.up.log >&2; die "lab.sh up failed"; }
env=$(awk '/^lab: env / {print $3}' /tmp/probe-cost.up.log)
# shellcheck disable=SC1090
source "$env"
rm -f /tmp/probe-cost.up.log
say "lab up in $(($(date +%s%3N) - t0)) ms ($LAB_DIR)"
ctl() { "$LAB_SLUICECTL" --socket "$LAB_SOCKET" "$@"; }

addr() { printf '2001:db8:b::1:%x' "$1"; }
for ((i = 0; i < N; i++)); do echo "addr add $(addr "$i")/64 dev eth0 nodad"; done |
  ip -n "${PREFIX}be1" -batch -
{
  echo
  echo "# $N more backends, all of them addresses of be1 (tools/lab/probe_cost.sh)."
  for ((i = 0; i < N; i++)); do
    printf '[[service.backend]]\naddress = "%s"\nweight = 1\n' "$(addr "$i")"
  done
} >>"$LAB_CONF"
t0=$(date +%s%3N)
ctl reload >/dev/null
say "sluicectl reload with $((N + 1)) backends: $(($(date +%s%3N) - t0)) ms"

# Until every backend is up (resolved by ND, probed, answered), at most 60 s.
readonly COUNT_PY='
import json, sys
doc = json.load(sys.stdin)
b = [x for s in doc["services"] for x in s["backends"]]
# Up, and seen to answer: a new backend starts up before its first probe.
up = sum(1 for x in b if x["state"] == "up" and (x.get("health") or {}).get("probes", 0) > 0
         and (x.get("health") or {}).get("last_ok"))
states, last = {}, {}
for x in b:
    states[x["state"]] = states.get(x["state"], 0) + 1
    r = (x.get("health") or {}).get("last_result", "")
    r = "ok" if r.startswith("http 200") else (r or "none")
    last[r] = last.get(r, 0) + 1
print(up, len(b), " ".join("%s=%d" % kv for kv in sorted(states.items())) + "; last probe: " +
      ", ".join("%s %d" % kv for kv in sorted(last.items(), key=lambda kv: -kv[1])))
'
t0=$(date +%s%3N)
while :; do
  read -r up total states < <(ctl --json list | "$PY" -c "$COUNT_PY")
  ((up == total)) && break
  (($(date +%s%3N) - t0 < 60000)) || { say "after 60 s: $up of $total up ($states)"; break; }
  sleep 1
done
say "all up after $(($(date +%s%3N) - t0)) ms: $up of $total ($states)"

# --- the run ---------------------------------------------------------------------------------------

threadCpu() { # "comm=ticks ..." of sluiced's threads
  local t
  for t in /proc/"$LAB_DAEMON_PID"/task/*; do
    awk '{ sub(/^[0-9]+ \(/, ""); n = index($0, ") "); comm = substr($0, 1, n - 1); split(substr($0, n + 2), f, " ");
           printf "%s=%d ", comm, f[12] + f[13] }' "$t/stat"
  done
}
snap() { # FILE: stats and list, and the thread CPU
  ctl --json stats >"$1.stats"
  ctl --json list >"$1.list"
  threadCpu >"$1.cpu"
  date +%s%3N >"$1.t"
}
W=$(mktemp -d /tmp/probe-cost.XXXXXX)
snap "$W/a"
min_up=$N
samples=0
for ((s = 0; s < SECONDS_RUN; s += 5)); do
  sleep $((SECONDS_RUN - s < 5 ? SECONDS_RUN - s : 5))
  read -r up total states < <(ctl --json list | "$PY" -c "$COUNT_PY")
  ((up < min_up)) && min_up=$up
  samples=$((samples + 1))
  say "  +$((s + 5 > SECONDS_RUN ? SECONDS_RUN : s + 5)) s: $up of $total up ($states)"
done
snap "$W/b"

"$PY" - "$W" "$INTERVAL_MS" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
w, interval_ms, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ld = lambda n: json.load(open("%s/%s" % (w, n)))
sa, sb, la, lb = ld("a.stats"), ld("b.stats"), ld("a.list"), ld("b.list")
ta, tb = int(open(w + "/a.t").read()), int(open(w + "/b.t").read())
dt = (tb - ta) / 1000
def tot(s, k):
    return sum(x.get(k, 0) for x in s["workers"])
print("probe-cost: over %.1f s:" % dt)
for k in ("packets_in", "passed", "packets_out", "answered", "dropped"):
    print("    %-12s %9.0f /s" % (k, (tot(sb, k) - tot(sa, k)) / dt))
drops = {r: sum(x["drops"][r] for x in sb["workers"]) - sum(x["drops"][r] for x in sa["workers"]) for r in sb["workers"][0]["drops"]}
print("    drops by reason: " + (", ".join("%s %.1f /s" % (r, n / dt) for r, n in drops.items() if n) or "none"))
def probes(l):
    return {(x["address"], x["port"]): ((x.get("health") or {}).get("probes", 0), (x.get("health") or {}).get("failures", 0), x["state"])
            for s in l["services"] for x in s["backends"]}
pa, pb = probes(la), probes(lb)
d = [pb[k][0] - pa[k][0] for k in pb if k in pa]
f = [pb[k][1] - pa[k][1] for k in pb if k in pa]
want = dt * 1000 / interval_ms
down = [k for k in pb if pb[k][2] != "up"]
print("probe-cost: probes per backend in %.1f s: min %d, max %d, mean %.2f, expected %.1f; failures %d; %d probes/s in all" % (
    dt, min(d), max(d), sum(d) / len(d), want, sum(f), sum(d) / dt))
print("probe-cost: backends not up at the end: %d%s" % (len(down), (" (" + ", ".join("%s %s" % (k[0], pb[k][2]) for k in down[:5]) + ")") if down else ""))
ca = dict(x.split("=") for x in open(w + "/a.cpu").read().split())
cb = dict(x.split("=") for x in open(w + "/b.cpu").read().split())
print("probe-cost: sluiced CPU by thread: " + ", ".join("%s %.1f %%" % (k, 100 * (int(cb[k]) - int(ca.get(k, 0))) / hz / dt) for k in cb))
EOF

# --- the exception path's capacity ----------------------------------------------------------------

# UDP datagrams of 64 bytes to Sluice's address, port 9 (nothing listens: the kernel drops them
# after the worker passed them), from the router, for 3 s; sent counted by the sender.
readonly FLOOD_PY='
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
dst, payload, n = (sys.argv[1], 9), b"x" * 64, 0
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.sendto(payload, dst)
            n += 1
        except BlockingIOError:
            pass
print(n)
'
noPorts() { ip netns exec "${PREFIX}lb" nstat -asz Udp6NoPorts | awk '$1 == "Udp6NoPorts" {print $2}'; }
ctl --json stats >"$W/c.stats"
k0=$(noPorts)
sent=$(ip netns exec "${PREFIX}router" "$PY" -c "$FLOOD_PY" "$LAB_LB6" 3)
sleep 0.5
k1=$(noPorts)
ctl --json stats >"$W/d.stats"
"$PY" - "$W" "$sent" $((k1 - k0)) <<'EOF'
import json, sys
w, sent, kernel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c, d = (json.load(open("%s/%s.stats" % (w, n))) for n in ("c", "d"))
tot = lambda s, k: sum(x.get(k, 0) for x in s["workers"])
print("probe-cost: exception path capacity, 3 s of 64-byte UDP to Sluice's address from the router:")
print("    sent %d (%.0f /s); the worker received %d and passed %d (health checks included);"
      " the kernel got %d of them (Udp6NoPorts): %.0f /s, %.1f %% of sent" % (
      sent, sent / 3, tot(d, "packets_in") - tot(c, "packets_in"), tot(d, "passed") - tot(c, "passed"),
      kernel, kernel / 3, 100 * kernel / max(sent, 1)))
EOF

# The same sender, frames to Sluice's MAC for the VIP with a TCP header cut to its 4 bytes of
# ports (the worker drops them as truncated): what the worker takes in when nothing goes to
# the tap. (The switch's bridge runs ip6tables here, br_netfilter: a frame whose IPv6 header
# does not match its length never reaches Sluice.)
readonly FLOOD_RAW_PY='
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
src = s.getsockname()[4]
ip6 = bytes.fromhex("60000000" "0004" "06" "40") + socket.inet_pton(socket.AF_INET6, "2001:db8:c::10") + \
    socket.inet_pton(socket.AF_INET6, sys.argv[3])
frame = bytes.fromhex(sys.argv[4].replace(":", "")) + src + b"\x86\xdd" + ip6 + bytes.fromhex("c0000050")
n, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.send(frame)
            n += 1
        except OSError:
            pass
print(n)
'
ctl --json stats >"$W/e.stats"
mac=$(ip -n "${PREFIX}lb" -br link show sluice0 | awk '{print $3}')
sent=$(ip netns exec "${PREFIX}router" "$PY" -c "$FLOOD_RAW_PY" rt-s 3 "$LAB_VIP6" "$mac")
sleep 0.5
ctl --json stats >"$W/f.stats"
"$PY" - "$W" "$sent" <<'EOF'
import json, sys
w, sent = sys.argv[1], int(sys.argv[2])
e, f = (json.load(open("%s/%s.stats" % (w, n))) for n in ("e", "f"))
tot = lambda s, k: sum(x.get(k, 0) for x in s["workers"])
dr = lambda s: sum(v for x in s["workers"] for k, v in x["drops"].items() if k not in ("no_service", "non_ip"))
nfu = dr(f) - dr(e)
print("    for comparison, 3 s of frames the worker drops (a cut TCP header): sent %d (%.0f /s); the worker received %d and dropped %d (%.0f /s, %.1f %% of sent)" % (
    sent, sent / 3, tot(f, "packets_in") - tot(e, "packets_in"), nfu, nfu / 3, 100 * nfu / max(sent, 1)))
EOF
rm -rf "$W"
