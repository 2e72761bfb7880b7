#!/usr/bin/env python3
"""Check that every #include runs in the direction of docs/architecture.md.

    common  <-  control, dataplane, xdp  <-  replay  <-  sluiced, tools  (tests: anything)

A plane's files may include their own plane and the planes to its left, nothing else: the data
paths never include the control plane (they meet it in common/), control never includes a data
path, and src/common/ includes only itself and system headers. Library headers are held to the
same direction: DPDK (<rte_*.h>) belongs to dataplane/, libbpf (<bpf/...>) to xdp/, and common/
and control/ use neither, so that they build on a machine that has neither installed.

Usage: check_includes.py ROOT      check the tree at ROOT; exit 1 naming file:line of each fault
       check_includes.py --self-test
"""

import os
import re
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')

# The generated config header (version, optional features) is a fact of the build, not a plane.
CONFIG_HEADER = "sluice_config.h"

# plane -> the project folders its files may include (quoted includes).
ALLOWED = {
    "src/common": ("common/",),
    "src/control": ("common/", "control/", CONFIG_HEADER),
    "src/dataplane": ("common/", "dataplane/", CONFIG_HEADER),
    # bpf/xdp_lb.skel.h: the bpftool skeleton of bpf/xdp_lb.bpf.c, the program xdp/ loads.
    "src/xdp": ("common/", "xdp/", "bpf/xdp_lb.skel.h", CONFIG_HEADER),
    "src/replay": ("common/", "control/", "dataplane/", "xdp/", "replay/", CONFIG_HEADER),
    "src/sluiced": ("common/", "control/", "dataplane/", "xdp/", "replay/", "sluiced/",
                    CONFIG_HEADER),
    "tools": ("common/", "control/", "dataplane/", "xdp/", "replay/", "tools/", "bpf/",
              CONFIG_HEADER),
    # The BPF program: its own lib/ (relative) and the ABI header it shares with C++.
    "bpf": ("common/lb_abi.h", "lib/", "consts.h", "maps.h", "parse.h", "csum.h", "stats.h",
            "flow_table.h"),
}

# Library headers (angle includes) a plane must not use: prefix -> which library.
DPDK = ("rte_", "DPDK")
LIBBPF = ("bpf/", "libbpf")
THIRD_PARTY = [("fmt/", "fmt"), ("nlohmann/", "nlohmann-json"), ("toml++/", "toml++"),
               ("spdlog/", "spdlog"), ("CLI/", "CLI11"), ("pcap", "libpcap"), ("gtest/", "gtest")]
FORBIDDEN = {
    "src/common": [DPDK, LIBBPF] + THIRD_PARTY,
    "src/control": [DPDK, LIBBPF],
    "src/dataplane": [LIBBPF],
    "src/xdp": [DPDK],
}

SOURCE_SUFFIXES = (".h", ".hpp", ".c", ".cc", ".cpp")


def plane_of(rel):
    """The plane of a file (its folder rule), or None for files outside every plane."""
    for plane in sorted(ALLOWED, key=len, reverse=True):
        if rel == plane or rel.startswith(plane + "/"):
            return plane
    return None


def check_file(root, rel):
    plane = plane_of(rel)
    if plane is None:
        return []
    faults = []
    with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            kind, target = m.groups()
            if kind == '"':
                if not any(target == a or (a.endswith("/") and target.startswith(a))
                           for a in ALLOWED[plane]):
                    faults.append(
                        f'{rel}:{lineno}: includes "{target}": {plane}/ may include only '
                        f'{", ".join(ALLOWED[plane])} (docs/architecture.md)')
            else:
                for prefix, lib in FORBIDDEN.get(plane, []):
                    if target.startswith(prefix):
                        faults.append(f"{rel}:{lineno}: includes <{target}>: {plane}/ must not "
                                      f"use {lib} (docs/architecture.md)")
    return faults


def check_tree(root):
    faults = []
    for top in ("src", "tools", "bpf"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(SOURCE_SUFFIXES):
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    faults.extend(check_file(root, rel.replace(os.sep, "/")))
    return faults


def self_test():
    """The checker finds what it must and nothing else, on a tree made for the purpose."""
    files = {
        "src/common/good.h": '#include <cstdint>\n#include "common/lb_abi.h"\n',
        "src/common/bad.h": '#include "control/config.h"\n#include <fmt/format.h>\n',
        "src/control/good.cc": '#include "common/snapshot.h"\n#include "sluice_config.h"\n',
        "src/control/bad.cc": '\n#include <rte_rcu_qsbr.h>\n#include "dataplane/pipeline.h"\n',
        "src/dataplane/bad.h": '#include "control/config.h"\n',
        "src/dataplane/good.h": '#include <rte_mbuf.h>\n#include "common/stats.h"\n',
        "src/xdp/bad.cc": '#include "dataplane/stats.h"\n# include "control/x.h"\n',
        "src/xdp/good.cc": '#include <bpf/libbpf.h>\n#include "bpf/xdp_lb.skel.h"\n',
        "src/replay/good.cc": '#include "xdp/xdp_dataplane.h"\n#include "dataplane/eal.h"\n',
        "src/replay/bad.cc": '#include "sluiced/daemon.h"\n',
        "tools/x/good.cc": '#include "replay/replay.h"\n',
        "tools/x/bad.cc": '#include "tests/support/run.h"\n',
        "bpf/lib/good.h": '#include "consts.h"\n#include "common/lb_abi.h"\n',
        "bpf/lib/bad.h": '#include "common/net.h"\n',
    }
    expected = {
        ("src/common/bad.h", 1), ("src/common/bad.h", 2),
        ("src/control/bad.cc", 2), ("src/control/bad.cc", 3),
        ("src/dataplane/bad.h", 1),
        ("src/xdp/bad.cc", 1), ("src/xdp/bad.cc", 2),
        ("src/replay/bad.cc", 1),
        ("tools/x/bad.cc", 1),
        ("bpf/lib/bad.h", 1),
    }
    with tempfile.TemporaryDirectory() as root:
        for rel, text in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        faults = check_tree(root)
    found = set()
    for fault in faults:
        rel, lineno = fault.split(":")[:2]
        found.add((rel, int(lineno)))
    if found != expected:
        print("self-test failed")
        print("  missed:", sorted(expected - found))
        print("  wrongly reported:", sorted(found - expected))
        return 1
    print(f"self-test: {len(faults)} faults found in the test tree, as expected")
    return 0


def main(argv):
    if len(argv) == 2 and argv[1] == "--self-test":
        return self_test()
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-2].strip(), file=sys.stderr)
        return 2
    faults = check_tree(argv[1])
    for fault in faults:
        print(fault)
    if faults:
        print(f"{len(faults)} include(s) against the direction of docs/architecture.md")
        return 1
    print("includes: every file includes only what its plane may")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
