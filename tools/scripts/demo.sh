#!/usr/bin/env bash
# The main job on the built-in default: install what is missing, build, and replay the sample
# capture (conf/sample.pcap) through the real DPDK pipeline with the built-in default config,
# printing where every flow went. Output packets go to build/sample-out.pcap.
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/scripts/install-deps.sh
tools/scripts/build.sh >/dev/null
exec build/src/sluiced replay --in conf/sample.pcap --out build/sample-out.pcap --flows "$@"
