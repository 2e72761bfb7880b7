#!/usr/bin/env bash
# The lab: Sluice between a real client and real servers, in network namespaces on this machine.
#
#   slab-client --- slab-router ---+--- slab-lb   (sluiced on lb0)
#                                  |
#                     slab-sw: bridge br0 --- slab-be1 .. slab-beN  (nginx)
#
# The router routes the VIPs to Sluice's address, as a BGP next hop would; Sluice forwards to the
# backends by DR or NAT. Then real HTTP requests from the client, one connection each, and how they
# spread over the backends. Everything lives in namespaces named slab-* (--ns-prefix), and all of
# it is removed at the end, on error and on Ctrl-C (unless --keep, or `up`). docs/lab.md has the
# picture and a real run; tests/lab/lab_test.sh drives it through `up` and `down`.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"   # ip, nginx and sysctl, when root came in without a login shell

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
readonly REPO
NS=slab-                                # every namespace of the lab starts with this (--ns-prefix)
STATE_FILE=/run/slab-lab.dir            # the temp dir of the running lab, for `lab.sh down`
readonly READY_TIMEOUT_S=30             # how long Sluice may take to report every backend up
readonly PARALLEL=8                     # requests in flight at once
readonly MAX_BACKENDS=40                # 198.51.100.11 .. .50, spares included
readonly SLOW_FILE_KB=200 SLOW_RATE=10k # nginx's /slow/200k.bin: 200 KB at 10 KB/s, about 20 s
readonly BIG_FILE_KB=1024               # nginx's /big/1024k.bin: 1 MB at full speed

# Documentation ranges (RFC 5737, RFC 3849): no address of the lab can leave this machine.
readonly CLIENT4=203.0.113.10 CLIENT6=2001:db8:c::10
readonly ROUTER_C4=203.0.113.1 ROUTER_C6=2001:db8:c::1       # the router, client side
readonly ROUTER_S4=198.51.100.1 ROUTER_S6=2001:db8:b::1      # the router, server side
readonly LB4=198.51.100.2 LB6=2001:db8:b::2                  # Sluice
readonly VIP4=192.0.2.10 VIP6=2001:db8:f::10 VIP_PORT=80
readonly VIP_NET4=192.0.2.0/24 VIP_NET6=2001:db8:f::/64

usage() {
  cat <<EOF
Usage: tools/lab/lab.sh [run] [OPTIONS]
       tools/lab/lab.sh up [OPTIONS]
       tools/lab/lab.sh down [--ns-prefix P]

Builds network namespaces (slab-*) on this machine: a client, a router, a switch, the Sluice host
and N nginx backends; runs sluiced between them; sends real HTTP requests to the VIPs and prints
how they spread over the backends. Exits non-zero if any request failed. Needs root.

Commands:
  run                     build the lab, test it, tear it down (the default)
  up                      build the lab, wait until Sluice serves, leave it running and print
                          "lab: env FILE", a file of shell variables that describe it (what
                          tests/lab/lab_test.sh reads). Exits 0 when every backend is up; 3 when
                          not every backend is up after ${READY_TIMEOUT_S} s (the lab is left running
                          all the same); 1 on any other failure (nothing is left)
  down                    remove whatever an earlier run left: processes, namespaces, temp dir

Options of run and up:
  --dataplane dpdk|xdp    Sluice's data path: DPDK net_af_packet on lb0, or XDP on lb0
                          (default dpdk)
  --forwarding dr|nat     how Sluice reaches the backends (default dr)
  --family 4|6|both       which VIPs to serve and test: $VIP4, $VIP6 (default both)
  --backends N            nginx backends in the configuration, 1..$MAX_BACKENDS (default 3)
  --weights W1,W2,...     their weights, one per backend (default 1 each)
  --spare N               more backend namespaces with nginx, not in the configuration: for
                          'sluicectl backend add' (default 0)
  --interval-ms N         health check interval (default 500)
  --timeout-ms N          health check timeout (default 300)
  --rise N, --fall N      health check thresholds (default 2, 2)
  --requests N            HTTP requests per VIP, one connection each (default 300; not by up)
  --build DIR             Sluice's build directory (default build: install-deps.sh and build.sh
                          run first, as demo.sh does)
  --keep                  leave the lab running at the end; 'lab.sh down' removes it
  --stand-in kernel       check the lab's plumbing without Sluice: slab-lb's kernel forwards
                          instead (DR: an ECMP route to the backends; NAT: nftables DNAT)
  --ns-prefix P           the namespaces' prefix (default slab-; also for down): a second lab,
                          such as the tests', beside one of the default name
  -h, --help              this text
EOF
}

say() { printf 'lab: %s\n' "$*"; }
die() {
  printf 'lab: %s\n' "$*" >&2
  exit 1
}

# --- options -----------------------------------------------------------------------------------

CMD=run
DATAPLANE=dpdk
FORWARDING=dr
FAMILY=both
BACKENDS=3
WEIGHTS=""
WEIGHT=()     # WEIGHT[i]: the weight of backend i (1-based), from --weights
SPARE=0
INTERVAL_MS=500
TIMEOUT_MS=300
RISE=2
FALL=2
REQUESTS=300
BUILD=""
KEEP=0
STAND_IN=""

inRange() { # WHAT VALUE MIN MAX: dies unless VALUE is an integer in MIN..MAX
  if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < $3 || $2 > $4)); then
    die "$1 must be $3..$4, not '$2'"
  fi
}

parseArgs() {
  if [[ $# -gt 0 && ($1 == run || $1 == up || $1 == down) ]]; then
    CMD=$1
    shift
  fi
  while [[ $# -gt 0 ]]; do
    local opt=$1 value=""
    shift
    if [[ $opt == --*=* ]]; then
      value=${opt#*=}
      opt=${opt%%=*}
    elif [[ $opt =~ ^--(dataplane|forwarding|family|backends|weights|spare|interval-ms|timeout-ms|rise|fall|requests|build|stand-in|ns-prefix)$ ]]; then
      [[ $# -ge 1 ]] || die "$opt needs a value (see --help)"
      value=$1
      shift
    fi
    case $opt in
      --dataplane) DATAPLANE=$value ;;
      --forwarding) FORWARDING=$value ;;
      --family) FAMILY=$value ;;
      --backends) BACKENDS=$value ;;
      --weights) WEIGHTS=$value ;;
      --spare) SPARE=$value ;;
      --interval-ms) INTERVAL_MS=$value ;;
      --timeout-ms) TIMEOUT_MS=$value ;;
      --rise) RISE=$value ;;
      --fall) FALL=$value ;;
      --requests) REQUESTS=$value ;;
      --ns-prefix) NS=$value ;;
      --build) BUILD=$value ;;
      --stand-in) STAND_IN=$value ;;
      --keep) KEEP=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage >&2
        die "unknown argument: $opt"
        ;;
    esac
  done
  [[ $DATAPLANE == dpdk || $DATAPLANE == xdp ]] || die "--dataplane must be dpdk or xdp, not '$DATAPLANE'"
  [[ $FORWARDING == dr || $FORWARDING == nat ]] || die "--forwarding must be dr or nat, not '$FORWARDING'"
  [[ $FAMILY == 4 || $FAMILY == 6 || $FAMILY == both ]] || die "--family must be 4, 6 or both, not '$FAMILY'"
  if ! [[ $BACKENDS =~ ^[0-9]+$ ]] || ((BACKENDS < 1 || BACKENDS > MAX_BACKENDS)); then
    die "--backends must be 1..$MAX_BACKENDS, not '$BACKENDS'"
  fi
  if ! [[ $REQUESTS =~ ^[0-9]+$ ]] || ((REQUESTS < 1)); then
    die "--requests must be a positive number, not '$REQUESTS'"
  fi
  if ! [[ $SPARE =~ ^[0-9]+$ ]] || ((BACKENDS + SPARE > MAX_BACKENDS)); then
    die "--spare must be 0..$((MAX_BACKENDS - BACKENDS)) with $BACKENDS backends, not '$SPARE'"
  fi
  local i w
  if [[ -z $WEIGHTS ]]; then
    for ((i = 1; i <= BACKENDS; i++)); do WEIGHT[i]=1; done
  else
    IFS=, read -r -a w <<<"$WEIGHTS"
    ((${#w[@]} == BACKENDS)) || die "--weights needs $BACKENDS weights (one per backend), not '$WEIGHTS'"
    for ((i = 1; i <= BACKENDS; i++)); do
      inRange "a weight of --weights" "${w[i - 1]}" 0 65535
      WEIGHT[i]=${w[i - 1]}
    done
  fi
  # The ranges of docs/config.md; sluiced would refuse the configuration otherwise.
  inRange --interval-ms "$INTERVAL_MS" 10 3600000
  inRange --timeout-ms "$TIMEOUT_MS" 1 "$INTERVAL_MS"
  inRange --rise "$RISE" 1 100
  inRange --fall "$FALL" 1 100
  [[ -z $STAND_IN || $STAND_IN == kernel ]] || die "--stand-in must be kernel, not '$STAND_IN'"
  [[ $NS =~ ^[a-z][a-z0-9]{0,7}-$ ]] || die "--ns-prefix must be a short name ending in '-' (slab-, lt-), not '$NS'"
  STATE_FILE=/run/${NS}lab.dir
}

# --- helpers -----------------------------------------------------------------------------------

nsx() { # NAME COMMAND...: run COMMAND in namespace slab-NAME
  local name=$1
  shift
  ip netns exec "$NS$name" "$@"
}

sysctlIn() { # NAME KEY=VALUE...
  local name=$1 kv
  shift
  for kv in "$@"; do
    nsx "$name" sysctl -qw "$kv"
  done
}

veth() { # NS_A IF_A NS_B IF_B: a veth pair with one end in each namespace
  ip link add "$2" netns "$NS$1" type veth peer name "$4" netns "$NS$3"
}

beAddr4() { echo "198.51.100.$((10 + $1))"; }
beAddr6() { echo "2001:db8:b::$((10 + $1))"; }
bePort() { if [[ $FORWARDING == nat ]]; then echo 8080; else echo "$VIP_PORT"; fi; }
families() { if [[ $FAMILY == both ]]; then echo "4 6"; else echo "$FAMILY"; fi; }

labNamespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS" || true; }

# --- teardown ----------------------------------------------------------------------------------

# Ends every process inside a slab- namespace (sluiced, nginx, anything started there by hand), by
# pid, then deletes the namespaces (which deletes their veths and the bridge) and the temp dir.
teardown() {
  local namespaces ns left i
  namespaces=$(labNamespaces)
  pidsIn() { for ns in $namespaces; do ip netns pids "$ns" 2>/dev/null || true; done; }
  left=$(pidsIn)
  if [[ -n $left ]]; then
    # shellcheck disable=SC2086
    kill -TERM $left 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do # up to 5 s: sluiced logs its last counters and closes its ports
      left=$(pidsIn)
      [[ -z $left ]] && break
      sleep 0.1
    done
    if [[ -n $left ]]; then
      # shellcheck disable=SC2086
      kill -KILL $left 2>/dev/null || true
    fi
  fi
  for ns in $namespaces; do
    ip netns del "$ns" 2>/dev/null || true
  done
  local dir=${TMP:-}
  [[ -z $dir && -f $STATE_FILE ]] && dir=$(cat "$STATE_FILE")
  if [[ -n $dir && -f $dir/.slab-lab ]]; then # only a directory this script made
    rm -rf "$dir"
  fi
  rm -f "$STATE_FILE"
}

OWN=0         # 1 once the namespaces are ours to remove
REACHED_END=0 # 1 once the requests were sent: --keep keeps the lab from there on

onExit() {
  local rc=$?
  trap - EXIT INT TERM
  if ((OWN)); then
    if ((KEEP && REACHED_END)); then
      printKeepHelp
    else
      say "tearing down"
      teardown
    fi
  fi
  exit "$rc"
}

# --- the lab -----------------------------------------------------------------------------------

TMP=""
SLUICED=""
SLUICECTL=""
CONF=""
SOCK=""
LOG=""
DAEMON_PID=""

checkPrerequisites() {
  [[ $(id -u) -eq 0 ]] || die "needs root (it creates network namespaces): sudo $0 $*"
  if [[ -n $(labNamespaces) ]]; then
    die "namespaces of an earlier lab are still there ($(labNamespaces | sort -V | xargs)); remove them first: $0 down"
  fi
  if [[ -z $BUILD ]]; then # the default: a fresh machine, as demo.sh does it
    BUILD=$REPO/build
    "$REPO/tools/scripts/install-deps.sh"
    if [[ -z $STAND_IN ]]; then
      say "building Sluice (tools/scripts/build.sh)"
      local out
      out=$("$REPO/tools/scripts/build.sh" 2>&1) || {
        printf '%s\n' "$out" | tail -n 40 >&2
        die "the build failed"
      }
    fi
  fi
  BUILD=$(realpath -m "$BUILD")
  SLUICED=$BUILD/src/sluiced
  SLUICECTL=$BUILD/tools/sluicectl/sluicectl
  local missing=() cmd
  for cmd in ip sysctl nginx curl xargs ethtool; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  if [[ -z $STAND_IN ]]; then
    command -v python3 >/dev/null || missing+=(python3)
    [[ -x $SLUICED ]] || missing+=("$SLUICED")
    [[ -x $SLUICECTL ]] || missing+=("$SLUICECTL")
  elif [[ $FORWARDING == nat ]]; then
    command -v nft >/dev/null || missing+=("nft (the NAT stand-in DNATs with nftables: apt-get install nftables)")
  fi
  if ((${#missing[@]})); then
    printf 'lab: missing: %s\n' "${missing[@]}" >&2
    die "tools/scripts/install-deps.sh installs the packages, tools/scripts/build.sh builds Sluice"
  fi
}

createNamespaces() {
  local name
  for name in client router sw lb $(seq -f 'be%g' 1 "$((BACKENDS + SPARE))"); do
    ip netns add "$NS$name"
    nsx "$name" ip link set lo up
    # No duplicate address detection on the link-local addresses either (the global ones get
    # nodad). A DR backend's reply comes from the VIP on lo, not from an address of eth0, so the
    # kernel solicits the router's MAC from eth0's link-local address, and sends nothing while
    # that is still tentative (about a second after the link comes up): the first replies of a
    # quick run were lost and their requests timed out.
    sysctlIn "$name" net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  done
  # The switch only bridges: no addresses, no IPv6 of its own (no router solicitations or MLD in
  # a capture). Set before its veth ends exist, so they inherit it.
  sysctlIn sw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
}

buildSwitch() {
  veth router rt-s sw sw-rt
  veth lb lb0 sw sw-lb
  local i
  for ((i = 1; i <= BACKENDS + SPARE; i++)); do
    veth "be$i" eth0 sw "sw-be$i"
  done
  # Multicast snooping off: a plain unmanaged switch that floods ARP and ND multicast to every
  # port, whoever joined which group.
  nsx sw ip link add br0 type bridge mcast_snooping 0
  nsx sw ip link set br0 up
  local port
  for port in sw-rt sw-lb $(seq -f 'sw-be%g' 1 "$((BACKENDS + SPARE))"); do
    nsx sw ip link set "$port" master br0 up
  done
  if [[ $DATAPLANE == dpdk && -z $STAND_IN ]]; then
    # A wire carries frames of at most the MTU: the switch segments what the backends' kernels
    # hand it as TSO/GSO super-frames (up to 64 KB) before they reach Sluice's port, as a
    # physical link would. net_af_packet takes at most one ring frame (2 KB) of each and would
    # see the rest cut off (bad_ip_length): DPDK NAT replies to large responses. Checksum
    # offload stays on.
    nsx sw ethtool -K sw-lb tso off gso off >/dev/null
  fi
}

buildClientAndRouter() {
  veth client eth0 router rt-c
  nsx client ip addr add "$CLIENT4/24" dev eth0
  nsx client ip -6 addr add "$CLIENT6/64" dev eth0 nodad
  nsx client ip link set eth0 up
  nsx client ip route add default via "$ROUTER_C4"
  nsx client ip -6 route add default via "$ROUTER_C6"

  nsx router ip addr add "$ROUTER_C4/24" dev rt-c
  nsx router ip -6 addr add "$ROUTER_C6/64" dev rt-c nodad
  nsx router ip addr add "$ROUTER_S4/24" dev rt-s
  nsx router ip -6 addr add "$ROUTER_S6/64" dev rt-s nodad
  nsx router ip link set rt-c up
  nsx router ip link set rt-s up
  sysctlIn router net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  # The VIPs' next hop is Sluice's address, as a BGP route announced by Sluice would have it.
  nsx router ip route add "$VIP_NET4" via "$LB4"
  nsx router ip -6 route add "$VIP_NET6" via "$LB6"
}

buildBackend() { # I
  local i=$1 be="be$1"
  nsx "$be" ip addr add "$(beAddr4 "$i")/24" dev eth0
  nsx "$be" ip -6 addr add "$(beAddr6 "$i")/64" dev eth0 nodad
  nsx "$be" ip link set eth0 up
  if [[ $FORWARDING == dr ]]; then
    # DR: the frame arrives with the VIP as its destination. Each backend holds the VIPs on lo and
    # must not answer ARP for them on eth0 (arp_ignore=1), nor use them as the source of its own
    # ARP requests (arp_announce=2). IPv6 needs nothing more: an address on lo is not answered for
    # in ND on eth0. Replies go straight to the router.
    nsx "$be" ip addr add "$VIP4/32" dev lo
    nsx "$be" ip -6 addr add "$VIP6/128" dev lo nodad
    sysctlIn "$be" net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1 \
      net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.eth0.arp_announce=2
    nsx "$be" ip route add default via "$ROUTER_S4"
    nsx "$be" ip -6 route add default via "$ROUTER_S6"
  else
    # NAT: replies must come back through Sluice, which rewrites their source to the VIP.
    nsx "$be" ip route add default via "$LB4"
    nsx "$be" ip -6 route add default via "$LB6"
  fi
  startNginx "$i"
}

# nginx in slab-beI, answering "beI" on every path, with a header "X-Backend: beI" on every
# answer; /slow/200k.bin is a file of 200 KB sent at 10 KB/s (a long-lived connection for the
# tests), /big/1024k.bin one of 1 MB at full speed (full-sized segments). The access log has the time to the millisecond. The same command starts it again after
# a test killed it: the file `start` next to its configuration.
startNginx() { # I
  local i=$1 dir="$TMP/be$1" port
  port=$(bePort)
  mkdir -p "$dir/www/slow" "$dir/www/big"
  head -c $((SLOW_FILE_KB * 1024)) /dev/zero >"$dir/www/slow/${SLOW_FILE_KB}k.bin"
  head -c $((BIG_FILE_KB * 1024)) /dev/zero >"$dir/www/big/${BIG_FILE_KB}k.bin"
  # nginx's workers run as nobody: they must get through the temp dir (mktemp's 0700) to www/.
  chmod 711 "$TMP" "$dir"
  chmod -R a+rX "$dir/www"
  cat >"$dir/nginx.conf" <<EOF
# nginx of backend be$i of the Sluice lab (tools/lab/lab.sh).
daemon on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_processes 1;
events { worker_connections 512; }
http {
  log_format lab '\$msec \$remote_addr:\$remote_port "\$request" \$status \$body_bytes_sent "\$http_user_agent"';
  access_log $dir/access.log lab;
  client_body_temp_path $dir/tmp-body;
  proxy_temp_path $dir/tmp-proxy;
  fastcgi_temp_path $dir/tmp-fastcgi;
  server {
    listen $port;
    listen [::]:$port;
    add_header X-Backend be$i always;
    location / {
      default_type text/plain;
      return 200 "be$i\n";
    }
    location /slow/ {
      root $dir/www;
      default_type application/octet-stream;
      limit_rate $SLOW_RATE;
    }
    location /big/ {
      root $dir/www;
      default_type application/octet-stream;
    }
  }
}
EOF
  printf '#!/bin/sh\n# Starts nginx of be%s again (tools/lab/lab.sh).\nexec ip netns exec %s nginx -q -e %s -p %s -c %s\n' \
    "$i" "${NS}be$i" "$dir/error.log" "$dir" "$dir/nginx.conf" >"$dir/start"
  chmod +x "$dir/start"
  "$dir/start" || die "nginx of be$i did not start: $(cat "$dir/error.log" 2>/dev/null)"
}

writeConfig() {
  CONF=$TMP/sluice.toml
  {
    echo "# Written by tools/lab/lab.sh for this run: $FORWARDING, $BACKENDS backends."
    echo "[dataplane]"
    echo "addresses = [\"$LB4/24\", \"$LB6/64\"]"
    echo "gateway = [\"$ROUTER_S4\", \"$ROUTER_S6\"]"
    local fam i port
    port=$(bePort)
    for fam in $(families); do
      local vip=$VIP4 name=web4
      [[ $fam == 6 ]] && vip=$VIP6 name=web6
      cat <<EOF

[[service]]
name = "$name"
vip = "$vip"
port = $VIP_PORT
protocol = "tcp"
forwarding = "$FORWARDING"

[service.health_check]
type = "http"
interval_ms = $INTERVAL_MS
timeout_ms = $TIMEOUT_MS
rise = $RISE
fall = $FALL
path = "/"
EOF
      for ((i = 1; i <= BACKENDS; i++)); do
        echo
        echo "[[service.backend]]"
        if [[ $fam == 4 ]]; then echo "address = \"$(beAddr4 "$i")\""; else echo "address = \"$(beAddr6 "$i")\""; fi
        [[ $FORWARDING == nat ]] && echo "port = $port"
        echo "weight = ${WEIGHT[i]}"
      done
    done
  } >"$CONF"
  say "Sluice configuration ($CONF):"
  sed 's/^/    /' "$CONF"
}

startSluice() {
  SOCK=$TMP/sluiced.sock
  LOG=$TMP/sluiced.log
  local args=(run --config "$CONF" --socket "$SOCK")
  if [[ $DATAPLANE == xdp ]]; then
    # lb0 keeps the kernel stack; sluiced puts its addresses on it from the configuration.
    args+=(--dataplane xdp --interface lb0)
  else
    # DPDK's net_af_packet owns lb0: no address, no IPv6 there. sluiced makes the kernel's side,
    # the exception interface sluice0 (a net_tap with lb0's MAC and Sluice's addresses).
    nsx lb sysctl -qw net.ipv6.conf.lb0.disable_ipv6=1
    # shellcheck disable=SC2054 # the commas are EAL syntax
    args+=(-- -l 0,1 --no-huge --no-pci --no-shconf -m 512 --vdev net_af_packet0,iface=lb0,qpairs=1)
  fi
  nsx lb ip link set lb0 up
  say "starting: ip netns exec ${NS}lb $SLUICED ${args[*]}"
  # Not through nsx: $! is then ip's pid, which becomes sluiced's (ip netns exec execs it).
  ip netns exec "${NS}lb" "$SLUICED" "${args[@]}" >"$LOG" 2>&1 &
  DAEMON_PID=$!
}

daemonFailed() { # MESSAGE
  printf 'lab: %s\n---- sluiced log (%s), last 60 lines ----\n' "$1" "$LOG" >&2
  tail -n 60 "$LOG" >&2 || true
  printf -- '---- end of sluiced log ----\n' >&2
  exit 1
}

# Reads `sluicectl --json list` on stdin. Ready when every service has all its backends up: state
# "up" and, where a health check runs, probed and its last result good. A sluiced from before health checks
# (no "health" object; states "active"/"draining") is taken at its word that active means up.
readonly READY_PY='
import json, sys
want_services, want_backends = sys.argv[1].split(), int(sys.argv[2])
doc = json.load(sys.stdin)
services = {s["name"]: s for s in doc.get("services", [])}
ready, parts, unreported = True, [], False
for name in want_services:
    s = services.get(name)
    if s is None:
        ready = False
        parts.append(name + ": not configured")
        continue
    up, down = 0, []
    for b in s.get("backends", []):
        state, health = b.get("state", "?"), b.get("health")
        if isinstance(health, dict):
            # Probed at least once, and the last probe good: a daemon that starts its backends
            # up must still have seen them answer.
            ok = state == "up" and (health.get("check") != "on" or (
                health.get("up") is True and health.get("probes", 1) > 0
                and health.get("last_ok", True) is not False))
        else:
            unreported = True
            ok = state in ("up", "active")
        if ok:
            up += 1
        else:
            why = b.get("unresolved_because") or (health or {}).get("last_result") or ""
            down.append("%s %s%s" % (b.get("address"), state, ": " + why if why else ""))
    ready = ready and up == want_backends
    parts.append("%s: %d/%d up" % (name, up, want_backends) + "".join("\n      " + d for d in down))
note = " [this sluiced reports no health state]" if unreported else ""
# One line when ready; a line per service and per backend that is not up otherwise.
print("; ".join(parts) + note if ready else "".join("\n    " + p for p in parts) + note)
sys.exit(0 if ready else 1)
'

# Returns when every backend is up. After READY_TIMEOUT_S: on `up`, says which are not and
# returns 1 (the lab stays, for a look at it); on `run`, prints the daemon's log and exits.
waitForSluice() {
  local services="" fam status summary="" deadline=$((SECONDS + READY_TIMEOUT_S))
  for fam in $(families); do services+="web$fam "; done
  say "waiting for Sluice to report every backend up (at most ${READY_TIMEOUT_S} s)"
  while :; do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
      local rc=0
      wait "$DAEMON_PID" || rc=$?
      daemonFailed "sluiced exited with status $rc before serving"
    fi
    if status=$("$SLUICECTL" --socket "$SOCK" --json list 2>&1); then
      if summary=$(python3 -c "$READY_PY" "$services" "$BACKENDS" <<<"$status" 2>&1); then
        say "serving: $summary"
        return
      fi
    else
      summary=" $status"
    fi
    if ((SECONDS >= deadline)); then
      if [[ $CMD == up ]]; then
        say "not every backend is up after ${READY_TIMEOUT_S} s:$summary"
        return 1
      fi
      daemonFailed "Sluice is not serving after ${READY_TIMEOUT_S} s:$summary"
    fi
    sleep 0.5
  done
}

# The kernel of slab-lb standing in for Sluice, to check the plumbing (namespaces, switch, routes,
# nginx, teardown) without the daemon. DR: an ECMP route for the VIPs over the backends (with an L4
# hash, so flows spread), which rewrites only the MACs, as DR does. NAT: nftables DNAT to the
# backends' port 8080 in turn; the replies come back through slab-lb, the backends' gateway.
startStandIn() {
  nsx lb ip addr add "$LB4/24" dev lb0
  nsx lb ip -6 addr add "$LB6/64" dev lb0 nodad
  nsx lb ip link set lb0 up
  nsx lb ip route add default via "$ROUTER_S4"
  nsx lb ip -6 route add default via "$ROUTER_S6"
  # Forwarding out of the interface a packet came in on would make Linux send ICMP redirects to
  # the router; a load balancer does not.
  sysctlIn lb net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
    net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.lb0.send_redirects=0
  local i hops4=() hops6=() map4="" map6=""
  for ((i = 1; i <= BACKENDS; i++)); do
    hops4+=(nexthop via "$(beAddr4 "$i")" dev lb0)
    hops6+=(nexthop via "$(beAddr6 "$i")" dev lb0)
    map4+="${map4:+, }$((i - 1)) : $(beAddr4 "$i") . 8080"
    map6+="${map6:+, }$((i - 1)) : $(beAddr6 "$i") . 8080"
  done
  if [[ $FORWARDING == dr ]]; then
    sysctlIn lb net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1
    nsx lb ip route add "$VIP4/32" "${hops4[@]}"
    nsx lb ip -6 route add "$VIP6/128" "${hops6[@]}"
    say "stand-in (kernel, DR): ECMP routes in ${NS}lb:"
    { nsx lb ip route show "$VIP4/32"; nsx lb ip -6 route show "$VIP6/128"; } | sed 's/^/    /; s/ *$//'
  else
    nsx lb nft -f - <<EOF
table inet slab {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr $VIP4 tcp dport $VIP_PORT dnat ip to numgen inc mod $BACKENDS map { $map4 }
    ip6 daddr $VIP6 tcp dport $VIP_PORT dnat ip6 to numgen inc mod $BACKENDS map { $map6 }
  }
}
EOF
    say "stand-in (kernel, NAT): nftables in ${NS}lb:"
    nsx lb nft list ruleset | sed 's/^/    /'
  fi
  # Ready when slab-lb reaches every nginx.
  local deadline=$((SECONDS + 10)) addr fam
  for ((i = 1; i <= BACKENDS; i++)); do
    for fam in 4 6; do
      if [[ $fam == 4 ]]; then addr=$(beAddr4 "$i"); else addr="[$(beAddr6 "$i")]"; fi
      until nsx lb curl -sf --max-time 1 -o /dev/null "http://$addr:$(bePort)/"; do
        ((SECONDS < deadline)) || die "slab-lb cannot reach nginx of be$i at $addr:$(bePort)"
        sleep 0.2
      done
    done
  done
  say "stand-in: slab-lb reaches the nginx of every backend"
}

showLab() {
  local lb_role="Sluice host: sluiced, $DATAPLANE on lb0"
  [[ -n $STAND_IN ]] && lb_role="kernel stand-in for Sluice ($FORWARDING)"
  local be_role
  if [[ $FORWARDING == dr ]]; then
    be_role="backend: nginx :$(bePort), VIPs on lo, default via router"
  else
    be_role="backend: nginx :$(bePort), default via Sluice"
  fi
  say "the lab:"
  printf '    %-12s %-10s %-38s %s\n' NAMESPACE INTERFACE ADDRESSES ROLE
  local name role
  for name in client router sw lb $(seq -f 'be%g' 1 "$((BACKENDS + SPARE))"); do
    case $name in
      client) role="client: curl" ;;
      router) role="router: $VIP_NET4, $VIP_NET6 via $LB4, $LB6" ;;
      sw) role="switch: bridge br0, ports sw-rt sw-lb sw-be1..$((BACKENDS + SPARE))" ;;
      lb) role=$lb_role ;;
      *) role=$be_role ;;
    esac
    local dev addrs rest
    while read -r dev _ rest; do
      dev=${dev%@*}
      addrs=$(tr ' ' '\n' <<<"$rest" | grep -v -e '^fe80:' -e '^127\.0\.0\.1/' -e '^::1/' -e '^$' | tr '\n' ' ') || true
      [[ $dev == lo && -z $addrs ]] && continue
      [[ $name == sw && $dev != br0 ]] && continue
      printf '    %-12s %-10s %-38s %s\n' "$NS$name" "$dev" "${addrs:--}" "$role"
      role=""
    done < <(ip -n "$NS$name" -br addr show)
  done | sed 's/ *$//'
}

sendRequests() { # NAME URL: prints the spread; returns 1 if any request failed
  local url=$2 out=$TMP/requests.$1 i
  # One curl per request (one connection each); each prints "EXIT BODY" in one short write.
  # shellcheck disable=SC2016 # $1 and $body belong to that sh
  local one='body=$(curl -sf --max-time 2 "$1"); echo "$? $body"'
  # In the background and waited for, so that a TERM reaches the trap at once (bash runs a trap
  # only after the foreground command ends); the teardown then ends the curls in slab-client.
  for ((i = 0; i < REQUESTS; i++)); do echo "$url"; done |
    nsx client xargs -P "$PARALLEL" -n 1 sh -c "$one" sh >"$out" &
  wait $!
  say "$url: $REQUESTS requests, $PARALLEL at a time, one connection each"
  awk -v n="$BACKENDS" -v total="$REQUESTS" '
    $1 == 0 && $2 ~ /^be[0-9]+$/ && NF == 2 { got[$2]++; next }
    { failed++; why[$1 == 0 ? "unexpected answer" : "curl exit " $1]++ }
    END {
      for (i = 1; i <= n; i++) {
        c = got["be" i] + 0
        printf "    be%-8d %6d  %5.1f%%\n", i, c, 100 * c / total
      }
      reasons = ""
      for (r in why) { reasons = reasons (reasons == "" ? "" : ", ") r ": " why[r] }
      printf "    %-10s %6d%s\n", "failed", failed + 0, reasons == "" ? "" : "  (" reasons ")"
      exit failed > 0
    }' "$out"
}

# The lab as shell variables, for the scripts that drive it (tests/lab/lab_test.sh).
writeEnv() { # READY: 1 if every backend was up
  local env=$TMP/lab.env
  {
    echo "# The lab of $TMP (tools/lab/lab.sh up), as shell variables."
    printf 'LAB_%s=%q\n' DIR "$TMP" NS "$NS" DATAPLANE "$DATAPLANE" FORWARDING "$FORWARDING" \
      FAMILY "$FAMILY" BACKENDS "$BACKENDS" WEIGHTS "$(IFS=,; echo "${WEIGHT[*]}")" SPARE "$SPARE" \
      BE_PORT "$(bePort)" INTERVAL_MS "$INTERVAL_MS" TIMEOUT_MS "$TIMEOUT_MS" RISE "$RISE" \
      FALL "$FALL" SLUICED "$SLUICED" SLUICECTL "$SLUICECTL" SOCKET "$SOCK" LOG "$LOG" \
      CONF "$CONF" DAEMON_PID "$DAEMON_PID" READY "$1" VIP4 "$VIP4" VIP6 "$VIP6" LB4 "$LB4" \
      LB6 "$LB6" SLOW_PATH "/slow/${SLOW_FILE_KB}k.bin" SLOW_BYTES "$((SLOW_FILE_KB * 1024))" \
      BIG_PATH "/big/${BIG_FILE_KB}k.bin" BIG_BYTES "$((BIG_FILE_KB * 1024))"
    echo "# backend I: LAB_DIR/beI/ (nginx.conf, start, access.log), addresses 198.51.100.(10+I), 2001:db8:b::(10+I)"
  } >"$env"
  echo "lab: env $env"
}

printKeepHelp() {
  cat <<EOF
lab: kept running ($([[ $CMD == up ]] && echo up || echo --keep)). Its files are in $TMP.
    ip netns exec ${NS}client curl http://$VIP4/
    ip netns exec ${NS}client curl 'http://[$VIP6]/'
    ip netns exec ${NS}lb bash                  # a shell on the Sluice host (or any ${NS}* namespace)
EOF
  if [[ -z $STAND_IN ]]; then
    cat <<EOF
    $SLUICECTL --socket $SOCK list
    less $LOG
EOF
  fi
  local prefix=""
  [[ $NS != slab- ]] && prefix=" --ns-prefix $NS"
  echo "lab: tear it down with: $0 down$prefix"
}

main() {
  parseArgs "$@"
  if [[ $CMD == down ]]; then
    [[ $(id -u) -eq 0 ]] || die "needs root: sudo $0 down"
    local left
    left=$(labNamespaces | sort -V | xargs)
    teardown
    say "removed ${left:-nothing: no lab was running}"
    exit 0
  fi
  checkPrerequisites "$@"
  [[ $CMD == up ]] && KEEP=1

  trap onExit EXIT
  trap 'say "interrupted"; exit 130' INT
  trap 'exit 143' TERM
  TMP=$(mktemp -d /tmp/slab.XXXXXX)
  touch "$TMP/.slab-lab"
  echo "$TMP" >"$STATE_FILE"
  OWN=1
  local what="sluiced $DATAPLANE from $BUILD"
  [[ -n $STAND_IN ]] && what="the kernel standing in for Sluice"
  local detail="$BACKENDS backends"
  [[ -n $WEIGHTS ]] && detail+=" (weights $WEIGHTS)"
  ((SPARE)) && detail+=", $SPARE spare"
  [[ $CMD == run ]] && detail+=", $REQUESTS requests per VIP"
  say "$what; forwarding $FORWARDING, family $FAMILY, $detail"

  createNamespaces
  buildSwitch
  buildClientAndRouter
  local i
  for ((i = 1; i <= BACKENDS + SPARE; i++)); do
    buildBackend "$i"
  done
  local ready=1
  if [[ -n $STAND_IN ]]; then
    startStandIn
  else
    writeConfig
    startSluice
    waitForSluice || ready=0
  fi
  showLab
  if [[ $CMD == up ]]; then
    writeEnv "$ready"
    REACHED_END=1
    ((ready)) || exit 3
    exit 0
  fi

  local fam failed=0
  for fam in $(families); do
    if [[ $fam == 4 ]]; then
      sendRequests web4 "http://$VIP4/" || failed=1
    else
      sendRequests web6 "http://[$VIP6]/" || failed=1
    fi
  done
  if [[ -z $STAND_IN ]]; then
    say "sluicectl list:"
    "$SLUICECTL" --socket "$SOCK" list | sed 's/^/    /' || true
    kill -0 "$DAEMON_PID" 2>/dev/null || daemonFailed "sluiced is no longer running"
  fi
  REACHED_END=1
  if ((failed)); then
    if [[ -z $STAND_IN ]]; then # where the packets went, as far as Sluice knows
      say "sluicectl stats:"
      "$SLUICECTL" --socket "$SOCK" stats | sed 's/^/    /' || true
      say "sluiced log ($LOG), last 20 lines:"
      tail -n 20 "$LOG" | sed 's/^/    /'
    fi
    say "FAILED: some requests got no answer from a backend"
    exit 1
  fi
  say "passed: every request answered"
}

main "$@"
