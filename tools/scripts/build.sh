#!/usr/bin/env bash
# Configure (once) and build Sluice into ./build.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f build/build.ninja ]; then
  meson setup build --buildtype=release -Db_ndebug=true
fi
ninja -C build
