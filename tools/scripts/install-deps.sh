#!/usr/bin/env bash
# Install Sluice's build and test dependencies from Debian 12 packages (as root). Does nothing
# when they are all present already.
set -euo pipefail
packages=(
  build-essential pkg-config meson ninja-build   # toolchain
  libdpdk-dev                                   # DPDK 22.11: EAL, ethdev, net_pcap, rcu
  libpcap-dev                                   # pcap files (replay checks, test captures)
  libtomlplusplus-dev                           # config files
  nlohmann-json3-dev                            # JSON output
  libcli11-dev                                  # command-line parsing
  libfmt-dev                                    # formatting
  libspdlog-dev                                 # daemon logging
  libevent-dev                                  # the daemon's event loop, health-check probes (HTTP client)
  libnl-route-3-dev                             # rtnetlink: neighbours (ARP/ND), addresses, links
  clang llvm libbpf-dev bpftool                 # the XDP data path (bpf/)
  libclang-rt-14-dev                            # fuzzing: libFuzzer and clang's sanitizer runtimes
  libgtest-dev                                  # tests
  iproute2                                      # tests: network namespaces and veth pairs
  nginx-light curl ethtool                      # the lab and its end-to-end tests: real HTTP servers
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root (or: sudo $0)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
