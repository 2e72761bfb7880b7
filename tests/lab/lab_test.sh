#!/usr/bin/env bash
# End-to-end tests on the lab (tools/lab/lab.sh): real curl clients, a router, a switch, Sluice and
# nginx backends in network namespaces, on every data path x forwarding (dpdk|xdp x dr|nat), IPv4
# and IPv6 in the same lab. For each combination, one `lab.sh up` (weights 1,1,2, one spare
# backend, health checks every 500 ms, fall 2, rise 2), then:
#
#   1 spread    1,000 requests per VIP, one connection each, all answered, spread by the weights
#               (chi-square against 1:1:2)
#   2 failover  be3's nginx killed while a prober opens a connection every 20 ms per VIP: the
#               last failed request starts within interval x fall + interval of the kill; and
#               new connections from client ports that last carried a connection to be3 go
#               elsewhere (2-reuse)
#   3 recovery  be3's nginx started again: it answers a request within interval x rise +
#               interval + 250 ms of the restart, and nothing fails after the restart
#   4 add       `sluicectl backend add` of the spare be4 (no --mac: resolved): it answers new
#               connections, and 400 more requests per VIP spread by 1:1:2:1
#   5 long      a 200 KB download at 10 KB/s (about 20 s), started before the kill on a backend
#               that is not killed, completes whole after all of the above
#   6 host      Sluice's own addresses answer ICMP echo from the client (through the router) and
#               from a backend, TCP to a listener on them from the client; the VIPs answer echo
#   7 checksum  checksum offload on, on every veth; every request of 1 answered; no checksum
#               error counted by the client's or the backends' kernels
#   8 counters  no frame of the lab's traffic dropped but for no service, non-IP or another MAC;
#               on DPDK, the host kernel's frames left through the exception interface
#   9 pmtu      a 1 MB download per VIP through a 1,280-byte link between router and client:
#               the router's ICMP errors reach the backends through Sluice (icmp_forwarded)
#
# Usage: tests/lab/lab_test.sh BUILD_DIR [--dataplanes dpdk,xdp] [--forwardings dr,nat]
#                              [--requests N] [--keep-failed]
# Prints a PASS or FAIL line per check and the measured figures; exits 0 when everything passed,
# 1 when anything failed, 77 (meson's skip) when it cannot run here: not root, no nginx, curl,
# python3, ethtool, nstat or /dev/net/tun. About 2 minutes. Registered in meson as the test `lab`
# (suite e2e); docs/lab.md has the checks, their bounds and a run.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
readonly HERE REPO
readonly LAB=$REPO/tools/lab/lab.sh
readonly PREFIX=lt-            # the tests' lab namespaces, apart from a hand-run lab's slab-*
readonly WEIGHTS=(1 1 2)       # be1 be2 be3
readonly VICTIM=3              # the backend whose nginx is killed: weight 2, half of the requests
readonly SPARE=4               # the spare backend added by sluicectl
readonly INTERVAL_MS=500 TIMEOUT_MS=300 RISE=2 FALL=2
readonly PROBE_PERIOD_MS=20    # the prober: a new connection per VIP every 20 ms ...
readonly PROBE_TIMEOUT_MS=1000 # ... given 1 s to answer
readonly PUBLISH_MARGIN_MS=250 # recovery: the publish, and the prober's next hit on the backend
readonly ADD_BOUND_MS=3000     # a backend added (resolved, starts up) answers within this
readonly P_LIMIT=1e-4          # chi-square: fail below this p-value (see the spread check)

BUILD=""
DATAPLANES=dpdk,xdp
FORWARDINGS=dr,nat
REQUESTS=1000
AFTER_ADD_REQUESTS=400
KEEP_FAILED=0

say() { printf 'lab-test: %s\n' "$*"; }
skip() {
  say "SKIP: $*"
  exit 77
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --dataplanes) DATAPLANES=$2; shift 2 ;;
    --forwardings) FORWARDINGS=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --keep-failed) KEEP_FAILED=1; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) say "unknown option $1"; exit 2 ;;
    *) BUILD=$1; shift ;;
  esac
done
[[ -n $BUILD ]] || { say "usage: $0 BUILD_DIR [options] (--help)"; exit 2; }
BUILD=$(realpath -m "$BUILD")

# --- can it run here -----------------------------------------------------------------------------

[[ $(id -u) -eq 0 ]] || skip "needs root (network namespaces, sluiced)"
# Made and entered: a chroot can make a namespace but not enter it (`ip -n` remounts /).
probe_ns="${PREFIX}probe$$"
if ! { ip netns add "$probe_ns" 2>/dev/null && ip -n "$probe_ns" link set lo up 2>/dev/null; }; then
  ip netns del "$probe_ns" 2>/dev/null
  skip "cannot create and enter network namespaces here (a container or chroot without them)"
fi
ip netns del "$probe_ns"
[[ -c /dev/net/tun ]] || skip "no /dev/net/tun (the DPDK path's exception interface is a tap)"
for cmd in nginx curl python3 ip ethtool nstat; do
  command -v "$cmd" >/dev/null || skip "no $cmd (tools/scripts/install-deps.sh installs nginx-light curl ethtool)"
done
for bin in "$BUILD/src/sluiced" "$BUILD/tools/sluicectl/sluicectl"; do
  [[ -x $bin ]] || { say "FAIL: $bin is not built"; exit 1; }
done
PY=$(command -v python3)
readonly PY

# --- results -------------------------------------------------------------------------------------

PASSES=0
FAILS=0
FAILED_CHECKS=()
FIGURES=() # one summary line per combination and family
COMBO=""   # dpdk/dr ...

pass() { # CHECK DETAIL
  printf 'PASS %-8s %-22s %s\n' "$COMBO" "$1" "$2"
  PASSES=$((PASSES + 1))
}
fail() { # CHECK DETAIL
  printf 'FAIL %-8s %-22s %s\n' "$COMBO" "$1" "$2"
  FAILS=$((FAILS + 1))
  FAILED_CHECKS+=("$COMBO $1")
}
# Lines "PASS|FAIL CHECK: DETAIL" from the python helpers (on stdin: `collect < <(...)`, not a
# pipe, which would count in a subshell).
collect() {
  local verdict rest
  while read -r verdict rest; do
    case $verdict in
      PASS) pass "${rest%%: *}" "${rest#*: }" ;;
      FAIL) fail "${rest%%: *}" "${rest#*: }" ;;
      FIGURE) FIGURES+=("$COMBO $rest") ;;
      *) printf '    %s %s\n' "$verdict" "$rest" ;;
    esac
  done
}

nowMs() { # the wall clock in ms, as the prober's time.time() (no fork: bash 5's EPOCHREALTIME)
  local t=${EPOCHREALTIME/./}
  echo $((t / 1000))
}

# --- helpers run inside the namespaces (python: no ping on a fresh Debian, exact timings) -------

# A new TCP connection and one GET per VIP every PERIOD ms, each given TIMEOUT ms, until STOP
# exists. One line per request: start_ms end_ms label ok backend-or-error client-port.
readonly PROBER_PY='
import errno, os, socket, sys, threading, time
out_path, stop_path = sys.argv[1], sys.argv[2]
period, timeout = int(sys.argv[3]) / 1000, int(sys.argv[4]) / 1000
targets = [t.split(",") for t in sys.argv[5:]]
lock = threading.Lock()
out = open(out_path, "a", buffering=1)
REQ = b"GET / HTTP/1.1\r\nHost: lab\r\nUser-Agent: lab-prober\r\nConnection: close\r\n\r\n"
def one(label, host, port):
    t0 = time.time()
    deadline = time.monotonic() + timeout
    ok, who, lport = 0, "", 0
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            s.settimeout(timeout)
            try:
                s.connect((host, int(port)))
            finally:
                lport = s.getsockname()[1]  # kept after a failed connect too
            s.sendall(REQ)
            data = b""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError()
                s.settimeout(left)
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        status = head[0].split()
        hdr = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in head[1:])}
        if len(status) >= 2 and status[1] == "200" and hdr.get("x-backend"):
            ok, who = 1, hdr["x-backend"]
        else:
            who = "answer:" + (status[1] if len(status) > 1 else "none")
    except (TimeoutError, socket.timeout):
        who = "timeout"
    except OSError as e:
        who = errno.errorcode.get(e.errno, "oserror")
    t1 = time.time()
    with lock:
        out.write("%d %d %s %d %s %d\n" % (t0 * 1000, t1 * 1000, label, ok, who, lport))
threads, nxt = [], time.monotonic()
while not os.path.exists(stop_path):
    for t in targets:
        th = threading.Thread(target=one, args=t, daemon=True)
        th.start()
        threads.append(th)
    nxt += period
    delay = nxt - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    else:
        nxt = time.monotonic()
    threads = [th for th in threads if th.is_alive()]
for th in threads:
    th.join()
'

# ICMP echo, as `ping -c COUNT -i 0.2 -W 1` (iputils ping is not on a fresh Debian 12): raw
# sockets, root. Prints "N/COUNT replies, rtt avg X ms"; exits 0 when every echo was answered.
readonly ECHO_PY='
import os, select, socket, struct, sys, time
dst, count = sys.argv[1], int(sys.argv[2])
v6 = ":" in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def csum(b):
    if len(b) % 2:
        b += b"\0"
    x = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    x = (x >> 16) + (x & 0xFFFF)
    x += x >> 16
    return ~x & 0xFFFF
rtts = []
for seq in range(count):
    payload = b"sluice-lab-echo!" * 3
    typ = 128 if v6 else 8
    hdr = struct.pack("!BBHHH", typ, 0, 0, ident, seq)
    if not v6:  # the kernel fills in the ICMPv6 checksum itself
        hdr = struct.pack("!BBHHH", typ, 0, csum(hdr + payload), ident, seq)
    t0 = time.monotonic()
    s.sendto(hdr + payload, (dst, 0))
    deadline = t0 + 1.0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([s], [], [], left)[0]:
            break
        data, src = s.recvfrom(2048)
        if not v6:
            data = data[(data[0] & 0x0F) * 4:]
        if len(data) < 8 or socket.inet_pton(s.family, src[0]) != socket.inet_pton(s.family, dst):
            continue
        t, _, _, i, q = struct.unpack("!BBHHH", data[:8])
        if t == (129 if v6 else 0) and i == ident and q == seq:
            rtts.append((time.monotonic() - t0) * 1000)
            break
    time.sleep(max(0, 0.2 - (time.monotonic() - t0)))
avg = ", rtt avg %.2f ms" % (sum(rtts) / len(rtts)) if rtts else ""
print("%d/%d replies%s" % (len(rtts), count, avg))
sys.exit(0 if len(rtts) == count else 1)
'

# The spread of one batch of requests. Reads curl -w lines "exitcode http_code num_connects
# x-backend" on stdin; argv: check name, label, then name=weight per backend.
#
# The test: every request answered (200, with an X-Backend), each on a connection of its own,
# and the counts per backend consistent with the weights by Pearson's chi-square, failing below
# p = P_LIMIT. A 5-tuple hash over fresh client ports spreads like a multinomial draw with the
# weights' shares (Maglev's table holds them to well under 1 % at M = 65537), so chi-square is
# the exact question; the p limit is low (1e-4) because CI asks it 16 times a run (false alarm
# about 0.2 % a run), and it still fails any real mistake at these counts: weights ignored
# (1:1:1 instead of 1:1:2) gives chi-square about 110 at 1,000 requests, p about 1e-24. A fixed
# +-35 % band would pass 1:1:1 for be1 and be2 (+33 %) and only catch it on be3.
readonly SPREAD_PY='
import math, os, sys
check, label, p_limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
names = [a.split("=")[0] for a in sys.argv[4:]]
weights = [int(a.split("=")[1]) for a in sys.argv[4:]]
got = dict.fromkeys(names, 0)
failed, why, total, reused, rows = 0, {}, 0, 0, []
for line in sys.stdin:
    f = line.split()
    if not f:
        continue
    rows.append(f)
    total += 1
    if len(f) >= 4 and f[0] == "0" and f[1] == "200" and f[3] in got:
        got[f[3]] += 1
        reused += f[2] != "1"
    else:
        failed += 1
        r = "curl exit %s" % f[0] if f[0] != "0" else "answer %s %s" % (f[1], f[3] if len(f) > 3 else "")
        why[r] = why.get(r, 0) + 1
def q_chi2(x, df):  # P(X >= x), X chi-square with integer df
    if df % 2 == 0:
        term = s = math.exp(-x / 2)
        for k in range(1, df // 2):
            term *= (x / 2) / k
            s += term
        return s
    s = math.erfc(math.sqrt(x / 2))
    term = math.exp(-x / 2) * math.sqrt(x / 2) / math.gamma(1.5)
    for k in range(1, (df + 1) // 2):
        s += term
        term *= (x / 2) / (k + 0.5)
    return s
answered = sum(got.values())
wsum = sum(weights)
chi2 = sum((got[n] - answered * w / wsum) ** 2 / (answered * w / wsum) for n, w in zip(names, weights) if w)
p = q_chi2(chi2, len(names) - 1) if answered else 0.0
parts = ["%s %d (exp %.0f, %+.1f%%)" % (n, got[n], answered * w / wsum,
         100 * (got[n] / (answered * w / wsum) - 1) if answered and w else 0) for n, w in zip(names, weights)]
detail = "%d/%d answered; %s; chi2 %.2f df %d p %.3g" % (answered, total, ", ".join(parts), chi2, len(names) - 1, p)
if failed:
    detail += "; failed: " + ", ".join("%s x%d" % kv for kv in why.items())
if reused:
    detail += "; %d not on a new connection" % reused
ok = failed == 0 and reused == 0 and total > 0 and p >= p_limit
# Whether the connections came from client ports that earlier requests of this combination used
# (SPREAD_EARLIER: lines "port backend"), and how many went where those earlier ones had gone: a
# flow entry still pinned from before would send such a connection the old way, and skew the
# spread. Said whenever there were earlier requests.
earlier_path = os.environ.get("SPREAD_EARLIER", "")
before = {}
if earlier_path and os.path.exists(earlier_path):
    for line in open(earlier_path):
        f = line.split()
        if len(f) == 2:
            before[f[0]] = f[1]
if before:
    same = again = 0
    for f in rows:
        if len(f) >= 5 and f[4] in before:
            again += 1
            same += f[3] == before[f[4]]
    detail += "; %d from a client port used before (%d answered by the same backend as then)" % (again, same)
print("%s %s %s: %s" % ("PASS" if ok else "FAIL", check, label, detail))
'

# The prober's record against the events: failover (2), recovery (3), add (4), per family.
readonly EVENTS_PY='
import sys
probe_file, ev = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
t_kill, t_restart, t_add = int(ev["kill"]), int(ev["restart"]), int(ev["add"])
t_end = int(ev["end"])
victim, spare = ev["victim"], ev["spare"]
fo_bound, rec_bound, add_bound = int(ev["fo_bound"]), int(ev["rec_bound"]), int(ev["add_bound"])
rows = []
for line in open(probe_file):
    f = line.split()
    if len(f) == 6:
        rows.append((int(f[0]), int(f[1]), f[2], f[3] == "1", f[4], int(f[5])))
# Client ports the spread batches used before the prober ran (curl: no times).
batch = {}
for label in ev["labels"].split(","):
    for line in open(ev["spread_" + label]):
        f = line.split()
        if len(f) == 5:
            batch.setdefault((label, int(f[4])), f[3])
        elif len(f) == 4 and f[3].isdigit():
            batch.setdefault((label, int(f[3])), "(failed)")
def reuse(x):
    """What used the client port of request x before it: a flow the balancer may still hold."""
    label, port, t = x[2], x[5], x[0]
    prev = [y for y in rows if y[2] == label and y[5] == port and y[0] < t]
    if prev:
        y = prev[-1]
        return "port %d used %d ms before (%s)" % (port, t - y[0], y[4] if y[3] else "failed: " + y[4])
    if (label, port) in batch:
        return "port %d used in the spread batch (%s)" % (port, batch[(label, port)])
    return "port %d" % port
def show(xs, t_ref, what):
    return ", ".join("%s at %+d ms after %s [%s]" % (x[4], x[0] - t_ref, what, reuse(x)) for x in xs[:4])
for label in ev["labels"].split(","):
    down_at, up_at = ev.get("down_" + label, ""), ev.get("up_" + label, "")
    r = [x for x in rows if x[2] == label]
    # Before: ended before the kill. A request in flight at the kill belongs to the failover.
    before = [x for x in r if x[1] < t_kill]
    bad_before = [x for x in before if not x[3]]
    if bad_before:
        print("FAIL 2-baseline %s: %d of %d requests failed before the kill: %s" % (label, len(bad_before), len(before),
              show(bad_before, t_kill, "the kill")))
    # 2: failures between the kill and the restart; the last one must start within the bound.
    between = [x for x in r if x[1] >= t_kill and x[0] < t_restart]
    bad = [x for x in between if not x[3]]
    kinds = {}
    for x in bad:
        kinds[x[4]] = kinds.get(x[4], 0) + 1
    last = max((x[0] for x in bad), default=t_kill)
    fo = max(0, last - t_kill)
    hit_after = [x for x in between if x[3] and x[4] == victim and x[0] > t_kill]
    flip = (" health check down after %d ms;" % (int(down_at) - t_kill)) if down_at else ""
    detail = "failover: %d ms (bound %d ms);%s %d of %d requests failed (%s)" % (
        fo, fo_bound, flip, len(bad), len(between), ", ".join("%s x%d" % kv for kv in kinds.items()) or "none")
    ok = fo <= fo_bound and not hit_after and between
    if hit_after:
        detail += "; %s answered after the kill?" % victim
    if fo > fo_bound:
        detail += "; late: " + show([x for x in bad if x[0] - t_kill > fo_bound], t_kill, "the kill")
    print("%s 2-failover %s: %s" % ("PASS" if ok else "FAIL", label, detail))
    # 3: the first answer from the victim after its restart, and no failure from then on.
    after = [x for x in r if t_restart <= x[0] < t_end]
    first = min((x[0] for x in after if x[3] and x[4] == victim), default=None)
    bad_after = [x for x in after if not x[3]]
    flip = (" health check up after %d ms;" % (int(up_at) - t_restart)) if up_at else ""
    if first is None:
        detail = "recovery: %s never answered again (bound %d ms);%s" % (victim, rec_bound, flip)
        rec = None
    else:
        rec = first - t_restart
        detail = "recovery: %d ms (bound %d ms);%s" % (rec, rec_bound, flip)
    detail += " %d of %d requests failed after the restart" % (len(bad_after), len(after))
    if bad_after:
        detail += ": " + show(bad_after, t_restart, "the restart")
    ok = rec is not None and rec <= rec_bound and not bad_after
    print("%s 3-recovery %s: %s" % ("PASS" if ok else "FAIL", label, detail))
    # 4: the first answer from the added backend.
    first = min((x[0] for x in r if t_add <= x[0] and x[3] and x[4] == spare), default=None)
    n = len([x for x in r if t_add <= x[0] and x[3] and x[4] == spare])
    m = len([x for x in r if t_add <= x[0]])
    if first is None:
        print("FAIL 4-add-first %s: %s never answered the prober after the add (%d requests)" % (label, spare, m))
    else:
        d = first - t_add
        print("%s 4-add-first %s: %s answered %d ms after sluicectl backend add (bound %d ms); %d of the %d requests since" % (
            "PASS" if d <= add_bound else "FAIL", label, spare, d, add_bound, n, m))
    print("FIGURE %s failover %d ms (bound %d), recovery %s ms (bound %d), add %s ms" % (
        label, fo, fo_bound, rec if rec is not None else "-", rec_bound,
        (first - t_add) if first is not None else "-"))
'

# New connections from given client ports (bound to them) to the VIP, one GET each: argv check,
# label, vip, port, the victim, what the ports carried, then the ports. A PASS line when every
# one was answered by a backend other than the victim.
readonly REUSE_PY='
import errno, socket, sys, time
check, label, vip, vport, victim, what = sys.argv[1:7]
vport = int(vport)
fam = socket.AF_INET6 if ":" in vip else socket.AF_INET
res = []
for p in map(int, sys.argv[7:]):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.bind(("", p))
        s.connect((vip, vport))
        s.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            c = s.recv(4096)
            if not c:
                break
            data += c
        who = [l.split(":", 1)[1].strip() for l in data.decode("latin-1").split("\r\n") if l.lower().startswith("x-backend:")]
        res.append((p, who[0] if who else "no X-Backend"))
    except (TimeoutError, socket.timeout):
        res.append((p, "timeout"))
    except OSError as e:
        res.append((p, errno.errorcode.get(e.errno, str(e))))
    finally:
        s.close()
bad = [r for r in res if not r[1].startswith("be") or r[1] == victim]
ok = not [r for r in bad if r[1] != "EADDRINUSE"] and len(bad) < len(res)
print("%s %s %s: new connections from client ports that last carried %s (%s is down): %s" % (
    "PASS" if ok else "FAIL", check, label, what, victim, ", ".join("%d %s" % r for r in res)))
'

# When sluicectl --json list says BACKEND of SERVICE last changed state (unix ms), if it is in STATE.
readonly CHANGE_PY='
import json, sys, datetime
doc = json.load(sys.stdin)
svc, addr, want = sys.argv[1], sys.argv[2], sys.argv[3]
for s in doc.get("services", []):
    if s["name"] != svc:
        continue
    for b in s.get("backends", []):
        if b["address"] == addr:
            h = b.get("health") or {}
            if b.get("state") == want and h.get("last_change"):
                t = datetime.datetime.strptime(h["last_change"], "%Y-%m-%dT%H:%M:%S.%fZ")
                print(int(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000))
            else:
                print("state=%s" % b.get("state"))
'

# 8: the daemon's counters after a combination. Frames for no service (the host's own traffic,
# passed to the kernel), non-IP (ARP) and for other MACs are expected; any other reason is a
# frame of the lab's well-formed traffic that Sluice dropped (bad_ip_length on DPDK NAT, when
# net_af_packet received the backends' TSO/GSO super-frames cut to its ring's frame, before the
# lab's switch segmented them as a wire does). On DPDK, the host's own answers (6-*) left through
# the exception interface: host_sent.
readonly DROPS_PY='
import json, sys
d = json.load(sys.stdin)["total"]
drops = {k: v for k, v in d["drops"].items() if v}
odd = {k: v for k, v in drops.items() if k not in ("no_service", "non_ip", "not_for_us")}
print("lab-test: %s: %d of %d packets in dropped: %s; passed %d, answered %d, host_sent %d" % (
      sys.argv[1], d["dropped"], d["packets_in"],
      " ".join("%s=%d" % kv for kv in drops.items()) or "none", d["passed"], d["answered"],
      d["host_sent"]))
print("%s 8-drops: %s" % ("FAIL" if odd else "PASS",
      "dropped for other reasons: " + " ".join("%s=%d" % kv for kv in odd.items()) if odd
      else "only frames for no service, non-IP or other MACs dropped"))
if sys.argv[1].startswith("dpdk/"):
    print("%s 8-host-sent: %d frames of the host kernel out through the exception interface" % (
          "PASS" if d["host_sent"] > 0 else "FAIL", d["host_sent"]))
'

# --- cleanup -------------------------------------------------------------------------------------

LAB_IS_UP=0
RUN_DIR=""
BG_PIDS=() # processes this script started in the lab (the lab's teardown ends them too)

downLab() {
  local pid
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  BG_PIDS=()
  if ((LAB_IS_UP)); then
    "$LAB" down --ns-prefix "$PREFIX" >/dev/null 2>&1 || true
    LAB_IS_UP=0
  fi
}

# shellcheck disable=SC2317 # run by the trap
onExit() {
  local rc=$?
  trap - EXIT INT TERM
  downLab
  [[ -n $RUN_DIR ]] && rm -rf "$RUN_DIR"
  exit "$rc"
}
trap onExit EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

RUN_DIR=$(mktemp -d /tmp/lab-test.XXXXXX)

# --- the checks of one combination ---------------------------------------------------------------

# In the background, `ip netns exec` itself and not nsx: then $! is the process (ip execs it), not
# a subshell running the function, and killing it ends it.
nsx() { # NAME COMMAND...
  local name=$1
  shift
  ip netns exec "$PREFIX$name" "$@"
}
ctl() { "$LAB_SLUICECTL" --socket "$LAB_SOCKET" "$@"; }
vipAddr() { if [[ $1 == 4 ]]; then echo "$LAB_VIP4"; else echo "$LAB_VIP6"; fi; }
vipUrl() { # FAMILY PATH
  if [[ $1 == 4 ]]; then echo "http://$LAB_VIP4$2"; else echo "http://[$LAB_VIP6]$2"; fi
}
beAddr() { # FAMILY I
  if [[ $1 == 4 ]]; then echo "198.51.100.$((10 + $2))"; else echo "2001:db8:b::$((10 + $2))"; fi
}

# N requests to URL from the client, 8 at a time, each on a new connection; prints curl's
# "exitcode http_code num_connects x-backend local_port" per request. --parallel-immediate:
# without it curl holds transfers back to wait for a connection it could share (PIPEWAIT), and
# the last few of a batch sometimes waited out --max-time without ever connecting (curl 7.88).
requests() { # URL N
  local cfg=$RUN_DIR/urls.cfg i
  for ((i = 0; i < $2; i++)); do printf 'url = "%s"\noutput = "/dev/null"\n' "$1"; done >"$cfg"
  nsx client curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max 8 \
    --max-time 2 -H 'Connection: close' \
    -w '%{exitcode} %{http_code} %{num_connects} %header{x-backend} %{local_port}\n' \
    -K "$cfg"
}

checkSpread() { # CHECK N WEIGHT...
  local check=$1 n=$2 fam label url backends=() i
  shift 2
  for ((i = 1; i <= $#; i++)); do backends+=("be$i=${!i}"); done
  for fam in 4 6; do
    label=IPv$fam
    url=$(vipUrl "$fam" /)
    # The earlier requests of this combination for the family, as "client-port backend": what a
    # failed spread is compared with. Before 1-spread there are none (the files left are the
    # previous combination's); after it, 1-spread's and the prober's.
    local earlier=$RUN_DIR/earlier-ports.$label
    : >"$earlier"
    if [[ $check != 1-spread ]]; then
      awk -v l="$label" '$3 == l { print $6, $5 }' "$RUN_DIR/probe.txt" >>"$earlier" 2>/dev/null
      awk 'NF >= 5 { print $5, $4 }' "$RUN_DIR/1-spread.$label" >>"$earlier" 2>/dev/null
    fi
    collect < <(requests "$url" "$n" | tee "$RUN_DIR/$check.$label" |
      SPREAD_EARLIER=$earlier "$PY" -c "$SPREAD_PY" "$check" "$label" "$P_LIMIT" "${backends[@]}")
  done
}

# A slow download (LAB_SLOW_PATH) from the client, kept only if it reached a backend other than
# the victim (its X-Backend): the flow must outlive everything that happens to the victim.
startDownload() { # FAMILY: sets DL_PID_<fam>, DL_BACKEND_<fam>
  local fam=$1 try hdr res pid who="" url
  url=$(vipUrl "$fam" "$LAB_SLOW_PATH")
  for ((try = 1; try <= 10; try++)); do
    hdr=$RUN_DIR/dl$fam.hdr res=$RUN_DIR/dl$fam.res
    rm -f "$hdr" "$res" "$RUN_DIR/dl$fam.body"
    ip netns exec "${PREFIX}client" curl -s --max-time 90 -o "$RUN_DIR/dl$fam.body" -D "$hdr" \
      -w '%{exitcode} %{http_code} %{size_download} %{time_total}\n' "$url" >"$res" 2>&1 &
    pid=$!
    who=""
    local i
    for ((i = 0; i < 40; i++)); do # its headers, within 2 s
      sleep 0.05
      [[ -f $hdr ]] && who=$(tr -d '\r' <"$hdr" | awk -F': ' 'tolower($1) == "x-backend" {print $2}')
      [[ -n $who ]] && break
    done
    if [[ -n $who && $who != "be$VICTIM" ]]; then
      BG_PIDS+=("$pid")
      printf -v "DL_PID_$fam" %s "$pid"
      printf -v "DL_BACKEND_$fam" %s "$who"
      printf -v "DL_START_$fam" %s "$(nowMs)"
      return 0
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  printf -v "DL_PID_$fam" %s ""
  printf -v "DL_BACKEND_$fam" %s "${who:-none}"
  return 1
}

checkDownload() { # FAMILY EVENTS_END_MS
  local fam=$1 events_end=$2 pid_var="DL_PID_$1" be_var="DL_BACKEND_$1" start_var="DL_START_$1"
  local pid=${!pid_var} res code http size secs end
  if [[ -z $pid ]]; then
    fail "5-long IPv$fam" "no download started on a backend other than be$VICTIM (last on ${!be_var})"
    return
  fi
  wait "$pid"
  end=$(nowMs)
  read -r code http size secs <"$RUN_DIR/dl$fam.res" || true
  local detail="$size of $LAB_SLOW_BYTES bytes from ${!be_var}, curl exit $code, http $http, in $secs s"
  detail+=", ended $(((end - events_end) / 1000)) s after the last event"
  detail+=" (started $(((events_end - ${!start_var}) / 1000)) s before it)"
  if [[ $code == 0 && $http == 200 && $size == "$LAB_SLOW_BYTES" ]] && ((end > events_end)); then
    pass "5-long IPv$fam" "$detail"
  else
    fail "5-long IPv$fam" "$detail"
  fi
}

# 9: path MTU discovery through Sluice (RFC 1191, RFC 8201). With the router's link to the client
# at 1,280 bytes, a backend's full-sized replies (the client's MSS is 1,460) cannot pass the
# router, which sends "fragmentation needed" / "packet too big" to their source, the VIP: Sluice
# must send it on to the backend (NAT: rewritten to it) for the backend to send smaller segments.
# Without that the download stalls: a black hole.
checkPmtu() {
  local fam url out code http size before after
  before=$(ctl --json stats | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["total"]["icmp_forwarded"])')
  nsx router ip link set rt-c mtu 1280
  for fam in 4 6; do
    url=$(vipUrl "$fam" "$LAB_BIG_PATH")
    out=$(nsx client curl -s -o /dev/null --max-time 10 -w '%{http_code} %{size_download} %{header_json}' "$url" 2>&1)
    code=$?
    read -r http size _ <<<"$out"
    local be
    be=$(grep -o '"x-backend":\["[a-z0-9]*"' <<<"$out" | grep -o 'be[0-9]*')
    if [[ $code == 0 && $http == 200 && $size == "$LAB_BIG_BYTES" ]]; then
      pass "9-pmtu IPv$fam" "$size of $LAB_BIG_BYTES bytes from ${be:-?} through a 1280-byte link, curl exit 0"
    else
      fail "9-pmtu IPv$fam" "${size:-0} of $LAB_BIG_BYTES bytes from ${be:-?} through a 1280-byte link, curl exit $code, http ${http:-none}"
    fi
  done
  nsx router ip link set rt-c mtu 1500
  after=$(ctl --json stats | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["total"]["icmp_forwarded"])')
  if ((after > before)); then
    pass "9-pmtu-icmp" "$((after - before)) ICMP errors forwarded to their flows' backends (icmp_forwarded)"
  else
    fail "9-pmtu-icmp" "no ICMP error forwarded (icmp_forwarded $before -> $after)"
  fi
}

checkEcho() { # FROM DESTINATION NAME WHAT
  local out
  if out=$(nsx "$1" "$PY" -c "$ECHO_PY" "$2" 3 2>&1); then
    pass "6-echo $3" "$4 ($1 -> $2): $out"
  else
    fail "6-echo $3" "$4 ($1 -> $2): $out"
  fi
}

# TCP to Sluice's own address through the exception path: a listener in slab-lb on each address
# (on DPDK the addresses live on the sluice0 tap), fetched from the client through the router.
checkHostTcp() {
  local dir=$RUN_DIR/www-lb addr pid url body i fam
  mkdir -p "$dir"
  echo "sluice host" >"$dir/index.html"
  for addr in "$LAB_LB4" "$LAB_LB6"; do
    ip netns exec "${PREFIX}lb" "$PY" -m http.server --bind "$addr" --directory "$dir" 9000 >/dev/null 2>&1 &
    pid=$!
    BG_PIDS+=("$pid")
    if [[ $addr == *:* ]]; then url="http://[$addr]:9000/" fam=6; else url="http://$addr:9000/" fam=4; fi
    for ((i = 0; i < 50; i++)); do # until it listens (asked from inside slab-lb), at most 5 s
      nsx lb curl -s --max-time 1 -o /dev/null "$url" && break
      sleep 0.1
    done
    local err
    if body=$(nsx client curl -sS --max-time 3 "$url" 2>&1) && [[ $body == "sluice host" ]]; then
      pass "6-tcp IPv$fam client>host" "client -> $url answered by a listener in ${PREFIX}lb"
    else
      err=$body
      local inside
      inside=$(nsx lb curl -s --max-time 1 -o /dev/null -w '%{http_code}' "$url")
      fail "6-tcp IPv$fam client>host" \
        "client -> $url: ${err:-no answer} (the listener answers inside ${PREFIX}lb: $inside)"
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
}

checkHost() {
  checkEcho client "$LAB_LB4" "IPv4 client>host" "Sluice's address, through the router"
  checkEcho client "$LAB_LB6" "IPv6 client>host" "Sluice's address, through the router"
  checkEcho be1 "$LAB_LB4" "IPv4 be1>host" "Sluice's address, from a backend"
  checkEcho be1 "$LAB_LB6" "IPv6 be1>host" "Sluice's address, from a backend"
  checkEcho client "$LAB_VIP4" "IPv4 client>VIP" "a VIP, answered by the data plane"
  checkEcho client "$LAB_VIP6" "IPv6 client>VIP" "a VIP, answered by the data plane"
  checkHostTcp
}

# 7: offload on everywhere a packet of the lab crosses a veth, and no checksum error counted at
# the endpoints. A backend's kernel verifies a frame that Sluice transmitted (DPDK: a new skb
# from af_packet; XDP: the rewritten frame) and drops it, counting TcpInCsumErrors, if its
# checksum is wrong.
checkChecksum() { # SPREAD_OK
  local off="" ns state errs="" n
  for ns in client:eth0 router:rt-c router:rt-s lb:lb0 be1:eth0 be2:eth0 be3:eth0 be4:eth0; do
    state=$(nsx "${ns%%:*}" ethtool -k "${ns#*:}" 2>/dev/null | awk '/^tx-checksumming:/ {print $2}')
    [[ $state == on ]] || off+=" ${ns#*:}@${ns%%:*}=${state:-?}"
  done
  for ns in client be1 be2 be3 be4; do
    n=$(nsx "$ns" nstat -asz TcpInCsumErrors IcmpInCsumErrors Icmp6InCsumErrors |
      awk 'NR > 1 {s += $2} END {print s + 0}')
    ((n == 0)) || errs+=" $ns=$n"
  done
  local detail="tx-checksumming: on, on every veth${off:+ but$off}; checksum errors counted:${errs:- none} (client, be1..4)"
  if [[ -z $off && -z $errs && $1 == 1 ]]; then
    pass "7-checksum" "$detail; every request of 1 answered with offload on"
  elif [[ $1 == 1 ]]; then
    fail "7-checksum" "$detail"
  else
    fail "7-checksum" "$detail; not every request of 1 was answered"
  fi
}

showDaemon() { # on failure: where the packets went, and the daemon's last words
  say "sluicectl list / stats of $COMBO:"
  ctl list 2>&1 | sed 's/^/    /'
  ctl stats 2>&1 | sed -n '/^Worker/,$p' | sed 's/^/    /'
  say "sluiced log ($LAB_LOG), last 15 lines:"
  tail -n 15 "$LAB_LOG" 2>/dev/null | sed 's/^/    /'
}

runCombo() { # DATAPLANE FORWARDING
  local dp=$1 fw=$2 t0 up_ms rc fails_before=$FAILS
  COMBO="$dp/$fw"
  echo
  say "=== $COMBO: IPv4 and IPv6, backends be1..3 weights ${WEIGHTS[*]}, spare be$SPARE ==="
  t0=$(nowMs)
  "$LAB" up --build "$BUILD" --ns-prefix "$PREFIX" --dataplane "$dp" --forwarding "$fw" \
    --family both --backends ${#WEIGHTS[@]} --weights "$(IFS=,; echo "${WEIGHTS[*]}")" --spare 1 \
    --interval-ms "$INTERVAL_MS" --timeout-ms "$TIMEOUT_MS" --rise "$RISE" --fall "$FALL" \
    >"$RUN_DIR/up.log" 2>&1
  rc=$?
  up_ms=$(($(nowMs) - t0))
  local env
  env=$(awk '/^lab: env / {print $3}' "$RUN_DIR/up.log")
  if [[ -z $env || ! -f $env ]]; then
    say "lab.sh up failed (exit $rc) after $up_ms ms:"
    tail -n 40 "$RUN_DIR/up.log" | sed 's/^/    /'
    fail "lab-up" "lab.sh up exit $rc: no lab, so no check of $COMBO ran"
    # A failed up tears its lab down itself; this makes sure.
    LAB_IS_UP=1
    downLab
    return
  fi
  LAB_IS_UP=1
  # shellcheck disable=SC1090
  source "$env"
  say "lab up in $up_ms ms ($LAB_DIR): $(grep -E '^lab: (serving|not every)' "$RUN_DIR/up.log" | sed 's/^lab: //')"

  if ((rc != 0)); then
    sed -n '/^lab: not every backend/,/^lab: the lab/p' "$RUN_DIR/up.log" | sed '$d; s/^/    /'
    fail "lab-up" "not every backend up after 30 s (exit $rc): checks 1-5 and 7 not run"
    checkHost
    showDaemon
    downLab
    return
  fi

  # 1: the spread of 1,000 requests per VIP over 1:1:2.
  local fails_spread=$FAILS
  checkSpread 1-spread "$REQUESTS" "${WEIGHTS[@]}"
  local spread_ok=$((FAILS == fails_spread))

  # 5: the long downloads, away from the victim, before anything happens to it.
  startDownload 4
  startDownload 6

  # The prober, both VIPs, from the client.
  local probe=$RUN_DIR/probe.txt stop=$RUN_DIR/probe.stop prober_pid
  rm -f "$probe" "$stop"
  ip netns exec "${PREFIX}client" "$PY" -c "$PROBER_PY" "$probe" "$stop" "$PROBE_PERIOD_MS" "$PROBE_TIMEOUT_MS" \
    "IPv4,$LAB_VIP4,80" "IPv6,$LAB_VIP6,80" &
  prober_pid=$!
  BG_PIDS+=("$prober_pid")
  sleep 1 # a baseline: nothing may fail before the kill

  # 2: kill the victim's nginx (every process of it, at once), wait the bound and a second more.
  local fo_bound=$((INTERVAL_MS * FALL + INTERVAL_MS))
  local rec_bound=$((INTERVAL_MS * RISE + INTERVAL_MS + PUBLISH_MARGIN_MS))
  local t_kill pids
  pids=$(ip netns pids "${PREFIX}be$VICTIM")
  t_kill=$(nowMs)
  # shellcheck disable=SC2086
  kill -KILL $pids
  sleep "$(printf '%d.%03d' $(((fo_bound + 1000) / 1000)) $(((fo_bound + 1000) % 1000)))"
  # When Sluice saw it go down, by its own account.
  local list changes=() fam change
  list=$(ctl --json list)
  for fam in 4 6; do
    change=$("$PY" -c "$CHANGE_PY" "web$fam" "$(beAddr "$fam" "$VICTIM")" down <<<"$list")
    if [[ $change =~ ^[0-9]+$ ]]; then
      changes+=("down_IPv$fam=$change")
    else
      say "IPv$fam: be$VICTIM after the kill: ${change:-not found} (sluicectl list)"
    fi
  done

  # 2, the same for a new connection on a used 5-tuple, while the victim is down: from client
  # ports that had connections to it just before the kill (answered, closed by FIN since:
  # 2-reuse), and from those of requests it refused after the kill (a SYN and the victim's RST:
  # 2-reuse-refused). An entry of a connection that is over must not send a new one (a SYN) to a
  # backend that is down (IPVS: conn_reuse_mode). The prober stumbles on this only when the
  # client's kernel happens to reuse a port; this asks for it.
  local ports check
  for check in 2-reuse 2-reuse-refused; do
    for fam in 4 6; do
      ports=$(awk -v c="$check" -v t="$t_kill" -v l="IPv$fam" -v v="be$VICTIM" '
        $3 != l { next }
        c == "2-reuse" && $2 < t && $4 == 1 && $5 == v { print $6 }
        c == "2-reuse-refused" && $2 >= t && $4 == 0 && $5 == "ECONNREFUSED" { print $6 }' "$probe" |
        tail -n 10 | xargs)
      if [[ -z $ports ]]; then
        fail "$check IPv$fam" "no request of the prober to use: none $([[ $check == 2-reuse ]] &&
          echo "reached be$VICTIM before the kill" || echo "was refused after it")"
        continue
      fi
      local what="an answered connection to be$VICTIM"
      [[ $check == 2-reuse-refused ]] && what="a connection be$VICTIM refused"
      # shellcheck disable=SC2086
      collect < <(nsx client "$PY" -c "$REUSE_PY" "$check" "IPv$fam" "$(vipAddr "$fam")" 80 \
        "be$VICTIM" "$what" $ports)
    done
  done

  # 3: start it again; wait until it has answered on both VIPs (or twice the bound), then a
  # half-second more to see that nothing fails.
  local t_restart
  t_restart=$(nowMs)
  "$LAB_DIR/be$VICTIM/start" || say "nginx of be$VICTIM did not start again"
  local deadline=$((t_restart + 2 * rec_bound))
  while (($(nowMs) < deadline)); do
    [[ $(awk -v t="$t_restart" -v v="be$VICTIM" '$1 >= t && $4 == 1 && $5 == v {print $3}' "$probe" | sort -u | wc -l) -ge 2 ]] && break
    sleep 0.05
  done
  sleep 0.5
  list=$(ctl --json list)
  for fam in 4 6; do
    change=$("$PY" -c "$CHANGE_PY" "web$fam" "$(beAddr "$fam" "$VICTIM")" up <<<"$list")
    if [[ $change =~ ^[0-9]+$ ]]; then
      changes+=("up_IPv$fam=$change")
    else
      say "IPv$fam: be$VICTIM after the restart: ${change:-not found} (sluicectl list)"
    fi
  done

  # 4: add the spare to both services, no MAC given; wait until it answered on both VIPs.
  local t_add port_opt=() out
  [[ $LAB_FORWARDING == nat ]] && port_opt=(--port "$LAB_BE_PORT")
  t_add=$(nowMs)
  for fam in 4 6; do
    if ! out=$(ctl backend add "web$fam" "$(beAddr "$fam" "$SPARE")" "${port_opt[@]}" --weight 1 2>&1); then
      fail "4-add IPv$fam" "sluicectl backend add web$fam $(beAddr "$fam" "$SPARE") ${port_opt[*]}: $out"
    fi
  done
  deadline=$((t_add + 2 * ADD_BOUND_MS))
  while (($(nowMs) < deadline)); do
    [[ $(awk -v t="$t_add" -v v="be$SPARE" '$1 >= t && $4 == 1 && $5 == v {print $3}' "$probe" | sort -u | wc -l) -ge 2 ]] && break
    sleep 0.05
  done
  sleep 0.3
  local t_end
  t_end=$(nowMs)
  touch "$stop"
  wait "$prober_pid"

  # Figures of 2, 3 and the first half of 4, from the prober's record.
  collect < <("$PY" -c "$EVENTS_PY" "$probe" kill="$t_kill" restart="$t_restart" add="$t_add" \
    end="$t_end" victim="be$VICTIM" spare="be$SPARE" fo_bound="$fo_bound" rec_bound="$rec_bound" \
    add_bound="$ADD_BOUND_MS" labels=IPv4,IPv6 spread_IPv4="$RUN_DIR/1-spread.IPv4" \
    spread_IPv6="$RUN_DIR/1-spread.IPv6" "${changes[@]}")

  # 4, second half: new connections spread over 1:1:2:1 now.
  checkSpread 4-add-spread "$AFTER_ADD_REQUESTS" "${WEIGHTS[@]}" 1

  # 6 while the downloads go on.
  checkHost

  # 5: the downloads, which have seen all of that.
  checkDownload 4 "$t_end"
  checkDownload 6 "$t_end"

  checkChecksum "$spread_ok"
  checkPmtu

  if ! kill -0 "$LAB_DAEMON_PID" 2>/dev/null; then
    fail "daemon" "sluiced is no longer running"
  fi
  if ((FAILS > fails_before)); then
    showDaemon
    if ((KEEP_FAILED)); then
      say "--keep-failed: the lab of $COMBO stays ($LAB_DIR), and the test's files ($RUN_DIR);"
      say "    $LAB down --ns-prefix $PREFIX removes the lab"
      LAB_IS_UP=0
      RUN_DIR=""
      exit 1
    fi
  fi
  collect < <(ctl --json stats | "$PY" -c "$DROPS_PY" "$COMBO")
  local t_down
  t_down=$(nowMs)
  downLab
  local took=$((($(nowMs) - t0) / 1000)) down_ms=$(($(nowMs) - t_down))
  say "$COMBO took $took s (lab up $up_ms ms, down $down_ms ms)"
  FIGURES+=("$COMBO lab up $up_ms ms, down $down_ms ms, all of $COMBO $took s")
}

# --- main ----------------------------------------------------------------------------------------

T_START=$(nowMs)
say "Sluice from $BUILD; $(lscpu 2>/dev/null | awk -F': +' '/^Model name/ {print $2; exit}'), $(nproc) CPUs, kernel $(uname -r)"
say "data paths: ${DATAPLANES//,/ }; forwarding: ${FORWARDINGS//,/ }$([[ $DATAPLANES != *xdp* ]] && echo " (no xdp: this build has no XDP data path, or not asked for)")"
say "health checks: interval $INTERVAL_MS ms, timeout $TIMEOUT_MS ms, fall $FALL, rise $RISE; prober: a connection per VIP every $PROBE_PERIOD_MS ms, timeout $PROBE_TIMEOUT_MS ms"
if ip netns list 2>/dev/null | awk '{print $1}' | grep -q "^$PREFIX"; then
  say "removing a lab an earlier run of this test left (${PREFIX}*)"
  "$LAB" down --ns-prefix "$PREFIX" | sed 's/^/    /'
fi

for dp in ${DATAPLANES//,/ }; do
  for fw in ${FORWARDINGS//,/ }; do
    runCombo "$dp" "$fw"
  done
done

echo
say "figures (failover: kill -> last failed request; recovery: restart -> first answer; add: sluicectl -> first answer; setup):"
for line in "${FIGURES[@]}"; do printf '    %s\n' "$line"; done
say "$PASSES passed, $FAILS failed, in $((($(nowMs) - T_START) / 1000)) s"
if ((FAILS)); then
  for line in "${FAILED_CHECKS[@]}"; do printf '    failed: %s\n' "$line"; done
  exit 1
fi
exit 0
