// The DPDK path's per-packet work (Pipeline::process, src/dataplane/pipeline.h) on arbitrary
// frames, under a snapshot of every kind of service, Sluice's own addresses and a down backend,
// on byte buffers as the unit tests drive it (no EAL). Each frame sits in a buffer of exactly its
// size, so a read or write past it is an ASan report. Beyond "no crash, no UB", what the pipeline
// promises its worker:
//   - a burst gives what the same frames one at a time give (the stages only prefetch), frame
//     bytes, verdicts and counters alike;
//   - a packet is sent, handed to the kernel or dropped, one of them; one for the kernel leaves
//     unchanged; a sent one leaves from the port's MAC, and an answer never grows the frame;
//   - checksums that verify on the way in verify on the way out (the NAT rewrites are
//     incremental, RFC 1624: a slip there sends frames every receiver drops).
//
// Input: frames.h's format. Flags: kFlagAcceptAnyMac, kFlagPartialChecksums, and in bits 3-7 a
// count of 256-byte segments after each frame's first (an mbuf chain: the parser checks IP
// lengths against them, nothing may read them).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "common/lb_abi.h"
#include "control/snapshot_builder.h"
#include "dataplane/pipeline.h"
#include "tests/fuzz/frames.h"
#include "tests/fuzz/fuzz_check.h"
#include "tools/pktgen/packet_builder.h"

namespace {

using sluice::PacketRef;
using sluice::Pipeline;
using sluice::PortContext;

constexpr size_t kMaxFrames = 32;
constexpr size_t kMaxFrameLen = 9216;  // a jumbo frame
constexpr uint32_t kFlowCapacity = 1024;

struct Fixture {
  sluice::IdRegistry ids;
  sluice::SnapshotPtr snap = fuzz::snapshot(ids);
};

const Fixture& fixture() {
  static const Fixture f;
  return f;
}

void setUpPort(PortContext& port, uint8_t flags) {
  std::copy(fuzz::kPortMac.bytes.begin(), fuzz::kPortMac.bytes.end(), port.mac);
  port.accept_any_mac = (flags & fuzz::kFlagAcceptAnyMac) != 0;
  port.complete_partial_checksums = (flags & fuzz::kFlagPartialChecksums) != 0;
}

/** The outcome of one frame, as the worker reads it. */
struct Outcome {
  bool transmit = false;
  bool to_kernel = false;
  uint32_t new_len = 0;
  std::vector<uint8_t> bytes;
  bool operator==(const Outcome&) const = default;
};

std::vector<PacketRef> refsOf(std::vector<std::vector<uint8_t>>& bufs,
                              const fuzz::Input& in, uint32_t extra) {
  std::vector<PacketRef> refs(bufs.size());
  for (size_t i = 0; i < bufs.size(); ++i) {
    refs[i].data = bufs[i].data();
    refs[i].data_len = static_cast<uint32_t>(bufs[i].size());
    refs[i].pkt_len = refs[i].data_len + extra;
    refs[i].now_ns = in.frames[i].now_ns;
    // Left over from a previous burst: process() must set every output.
    refs[i].transmit = (i % 2) == 0;
    refs[i].to_kernel = (i % 3) == 0;
    refs[i].new_len = 7;
  }
  return refs;
}

std::vector<std::vector<uint8_t>> buffersOf(const fuzz::Input& in) {
  std::vector<std::vector<uint8_t>> bufs;
  for (const fuzz::Frame& f : in.frames) {
    bufs.push_back(f.bytes);
  }
  return bufs;
}

std::vector<uint64_t> countersOf(const Pipeline& p) {
  const sluice::WorkerCounters& c = p.counters();
  std::vector<uint64_t> v = {c.rx_packets, c.tx_packets, c.flows_rescheduled, c.passed,
                             c.answered, c.icmp_forwarded, c.checksums_completed,
                             p.flows().stats().inserted, p.flows().stats().active};
  for (const sluice::Counter& d : c.drops) {
    v.push_back(d);
  }
  return v;
}

/** Whether the IP and TCP/UDP (or ICMP) checksums of a frame verify; nullopt: neither kind. */
std::optional<bool> checksumsOk(std::span<const uint8_t> f) {
  if (const auto d = pktgen::decode(f)) {
    return d->ip_checksum_ok && d->l4_checksum_ok;
  }
  if (const auto d = pktgen::decodeIcmp(f)) {
    return d->ip_checksum_ok && d->icmp_checksum_ok;
  }
  return std::nullopt;
}

void checkOutcome(const std::vector<uint8_t>& in, const Outcome& o, uint32_t extra,
                  bool partial) {
  FUZZ_CHECK(!(o.transmit && o.to_kernel));
  if (o.to_kernel && !partial) {
    FUZZ_CHECK(o.bytes == in);  // "for the host's kernel, unchanged"
  }
  if (!o.transmit) {
    return;
  }
  FUZZ_CHECK(o.bytes.size() >= 14);
  FUZZ_CHECK(std::equal(fuzz::kPortMac.bytes.begin(), fuzz::kPortMac.bytes.end(),
                        o.bytes.begin() + 6));
  FUZZ_CHECK(o.new_len <= o.bytes.size());  // written in place, in the first segment
  if (extra != 0 || partial) {
    return;  // checksums over bytes that are not here, or completed on the way
  }
  std::span<const uint8_t> out(o.bytes);
  if (o.new_len != 0) {
    out = out.first(o.new_len);
  }
  const auto before = checksumsOk(in);
  const auto after = checksumsOk(out);
  if (before && after && *before) {
    FUZZ_CHECK(*after);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Fixture& fx = fixture();
  const fuzz::Input in = fuzz::decode(data, size, kMaxFrames, kMaxFrameLen);
  if (in.frames.empty()) {
    return 0;
  }
  const uint32_t extra = (in.flags >> 3) * 256u;
  const bool partial = (in.flags & fuzz::kFlagPartialChecksums) != 0;
  // Per-backend counters for the snapshot's ids only (all it hands out), not kMaxBackendIds:
  // 3.5 MB zeroed twice per input would cost more than the pipeline's work.
  const auto ids = static_cast<uint32_t>(fx.snap->backends.size());

  // The burst.
  Pipeline burst_pipe(kFlowCapacity, ids);
  PortContext burst_port;
  setUpPort(burst_port, in.flags);
  std::vector<std::vector<uint8_t>> burst_bufs = buffersOf(in);
  std::vector<PacketRef> burst = refsOf(burst_bufs, in, extra);
  burst_pipe.process(std::span<PacketRef>(burst), *fx.snap, burst_port);

  // The same frames one by one, on a pipeline of their own.
  Pipeline one_pipe(kFlowCapacity, ids);
  PortContext one_port;
  setUpPort(one_port, in.flags);
  std::vector<std::vector<uint8_t>> one_bufs = buffersOf(in);
  std::vector<PacketRef> one = refsOf(one_bufs, in, extra);
  for (PacketRef& p : one) {
    one_pipe.process(std::span<PacketRef>(&p, 1), *fx.snap, one_port);
  }

  for (size_t i = 0; i < in.frames.size(); ++i) {
    const Outcome a{burst[i].transmit, burst[i].to_kernel, burst[i].new_len, burst_bufs[i]};
    const Outcome b{one[i].transmit, one[i].to_kernel, one[i].new_len, one_bufs[i]};
    FUZZ_CHECK(a == b);
    checkOutcome(in.frames[i].bytes, a, extra, partial);
  }
  FUZZ_CHECK(countersOf(burst_pipe) == countersOf(one_pipe));
  FUZZ_CHECK(burst_pipe.counters().rx_packets == in.frames.size());
  FUZZ_CHECK(burst_port.learned_gateway.load() == one_port.learned_gateway.load());
  return 0;
}
