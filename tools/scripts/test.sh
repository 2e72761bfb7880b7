#!/usr/bin/env bash
# Install what is missing, build, and run every test suite (unit, dpdk).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/scripts/install-deps.sh
tools/scripts/build.sh
meson test -C build --print-errorlogs "$@"
