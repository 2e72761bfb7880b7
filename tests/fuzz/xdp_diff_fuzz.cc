// Differential: the loaded XDP program (bpf/xdp_lb.bpf.c through BPF_PROG_TEST_RUN, as
// tests/bpf/xdp_diff_test.cc runs it) against the DPDK pipeline (src/dataplane/pipeline.h on byte
// buffers), on the same frames, the same snapshot and the same clock. The two paths are written
// to behave alike; any frame on which they differ in verdict (sent / to the kernel / dropped), in
// the bytes sent, or in the counters it moves (drops by reason, passed, answered, ICMP errors
// forwarded, flows created and rescheduled) is a finding, and the target traps on it.
//
// Each input starts from empty flow tables on both paths (a new pipeline; the program's table
// cleared, XdpDataplane::clearFlows), so that an input reproduces alone. The NAT next hop comes from the resolved
// gateways of both families, never from the router learned from earlier inputs' packets.
//
// Root (or CAP_BPF) only. Input: frames.h's format; the flag kFlagAcceptAnyMac applies to both
// paths (replay of foreign captures), kFlagPartialChecksums is ignored (its meaning differs
// between a DPDK kernel-fed port and generic XDP, and BPF_PROG_TEST_RUN has no partial
// checksums to complete).
#include <sched.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/lb_abi.h"
#include "control/snapshot_builder.h"
#include "dataplane/pipeline.h"
#include "tests/fuzz/frames.h"
#include "xdp/xdp_dataplane.h"

namespace {

using sluice::PacketRef;
using sluice::Pipeline;
using sluice::PortContext;
using sluice::XdpDataplane;

constexpr size_t kMaxFrames = 16;
// BPF_PROG_TEST_RUN takes a frame of at most a page less XDP's headroom and the shared info
// (3,520 bytes on x86-64) from a program without frags support.
constexpr size_t kMaxFrameLen = 3072;
constexpr uint32_t kFlowCapacity = 4096;

enum class Verdict { kTx, kPass, kDrop, kAborted };

/** Every counter both paths keep: the six of str(), then the drops by reason. */
using Counts = std::vector<uint64_t>;

Counts countsOf(const sluice::WorkerTotals& t) {
  Counts c = {t.rx_packets, t.passed, t.answered, t.icmp_forwarded, t.flows_rescheduled,
              t.flows_created};
  for (uint64_t d : t.drops) {
    c.push_back(d);
  }
  return c;
}

Counts countsOf(const Pipeline& p) {
  const sluice::WorkerCounters& w = p.counters();
  Counts c = {w.rx_packets, w.passed, w.answered, w.icmp_forwarded, w.flows_rescheduled,
              p.flows().stats().inserted};
  for (const sluice::Counter& d : w.drops) {
    c.push_back(d);
  }
  return c;
}

struct Fixture {
  sluice::IdRegistry ids;
  sluice::SnapshotPtr snap = fuzz::snapshot(ids);
  std::unique_ptr<XdpDataplane> xdp;
  Counts xdp_before;  // the program's counters after the previous input
};

Fixture* fx = nullptr;

const char* verdictName(Verdict v) {
  return v == Verdict::kTx     ? "tx"
         : v == Verdict::kPass ? "pass"
         : v == Verdict::kDrop ? "drop"
                               : "aborted";
}

std::string hex(const std::vector<uint8_t>& b) {
  std::string s;
  char two[3];
  for (uint8_t c : b) {
    std::snprintf(two, sizeof(two), "%02x", c);
    s += two;
  }
  return s;
}

std::string str(const Counts& c) {
  static const char* const kNames[] = {"rx", "passed", "answered", "icmp_forwarded",
                                       "rescheduled", "flows_created"};
  std::string s;
  for (size_t i = 0; i < c.size(); ++i) {
    if (c[i] != 0) {
      s += std::string(" ") + (i < 6 ? kNames[i] : lb_drop_reason_name(static_cast<int>(i - 6))) +
           "=" + std::to_string(c[i]);
    }
  }
  return s;
}

/** A disagreement: say what it is, then stop as a crash (libFuzzer saves the input). */
[[noreturn]] void disagree(size_t frame, const std::string& what) {
  std::fprintf(stderr, "xdp_diff_fuzz: frame %zu: the paths disagree: %s\n", frame, what.c_str());
  __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The program's flow table is per CPU: stay on one, as one DPDK worker would.
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(static_cast<unsigned>(sched_getcpu()), &one);
  sched_setaffinity(0, sizeof(one), &one);
  fx = new Fixture;
  try {
    fx->xdp = std::make_unique<XdpDataplane>(kFlowCapacity);
  } catch (const sluice::XdpError& e) {
    std::fprintf(stderr, "xdp_diff_fuzz: cannot load the XDP program (root or CAP_BPF): %s\n",
                 e.what());
    std::exit(77);
  }
  fx->xdp->setPortMac(fuzz::kPortMac.bytes.data());
  fx->xdp->apply(*fx->snap);
  fx->xdp_before = countsOf(fx->xdp->totals(*fx->snap).all);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fuzz::Input in = fuzz::decode(data, size, kMaxFrames, kMaxFrameLen);
  if (in.frames.empty()) {
    return 0;
  }
  const bool accept_any = (in.flags & fuzz::kFlagAcceptAnyMac) != 0;
  const sluice::Snapshot& snap = *fx->snap;
  XdpDataplane& xdp = *fx->xdp;
  xdp.clearFlows();
  xdp.setAcceptAnyMac(accept_any);

  // Counters for the snapshot's backend ids only, as pipeline_fuzz (a fresh table per input).
  Pipeline pipe(kFlowCapacity, static_cast<uint32_t>(snap.backends.size()));
  PortContext port;
  std::copy(fuzz::kPortMac.bytes.begin(), fuzz::kPortMac.bytes.end(), port.mac);
  port.accept_any_mac = accept_any;

  std::vector<uint8_t> xdp_out;
  for (size_t i = 0; i < in.frames.size(); ++i) {
    const fuzz::Frame& f = in.frames[i];
    // DPDK: the frame in a buffer of its own size, trimmed as the worker trims an answer.
    std::vector<uint8_t> dpdk_out = f.bytes;
    PacketRef p;
    p.data = dpdk_out.data();
    p.data_len = static_cast<uint32_t>(dpdk_out.size());
    p.pkt_len = p.data_len;
    p.now_ns = f.now_ns;
    pipe.process(std::span<PacketRef>(&p, 1), snap, port);
    const Verdict dv = p.transmit ? Verdict::kTx : p.to_kernel ? Verdict::kPass : Verdict::kDrop;
    if (p.transmit && p.new_len != 0 && p.new_len < dpdk_out.size()) {
      dpdk_out.resize(p.new_len);
    }

    xdp.setClock(f.now_ns);
    const int action = xdp.run(f.bytes, xdp_out);
    const Verdict xv = action == sluice::kXdpTx     ? Verdict::kTx
                       : action == sluice::kXdpPass ? Verdict::kPass
                       : action == sluice::kXdpDrop ? Verdict::kDrop
                                                    : Verdict::kAborted;
    if (xv != dv) {
      disagree(i, std::string("dpdk ") + verdictName(dv) + ", xdp " + verdictName(xv));
    }
    if (dv == Verdict::kTx && xdp_out != dpdk_out) {
      disagree(i, "sent bytes\n  in   " + hex(f.bytes) + "\n  dpdk " + hex(dpdk_out) +
                      "\n  xdp  " + hex(xdp_out));
    }
  }

  const Counts now = countsOf(xdp.totals(snap).all);
  Counts delta(now.size());
  for (size_t i = 0; i < now.size(); ++i) {
    delta[i] = now[i] - fx->xdp_before[i];
  }
  fx->xdp_before = now;
  const Counts dpdk = countsOf(pipe);
  if (delta != dpdk) {
    disagree(in.frames.size() - 1, "counters after the input\n  dpdk" + str(dpdk) + "\n  xdp " +
                                       str(delta));
  }
  return 0;
}
