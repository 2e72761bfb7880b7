// What the BPF suites share to put the loaded XDP program and the DPDK pipeline side by side on
// byte buffers (BPF_PROG_TEST_RUN; root or CAP_BPF): loading the program, one frame through it,
// one DPDK worker as the reference, and frames as hex for the comparisons' messages.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/net.h"
#include "common/snapshot.h"
#include "dataplane/pipeline.h"
#include "tools/pktgen/packet_builder.h"
#include "xdp/xdp_dataplane.h"

namespace sluice::bpftest {

/**
 * Pin the calling thread to the CPU it is on. The program's flow tables are per CPU: a test
 * stays on one, as one DPDK worker would (and as replay does).
 */
inline void stayOnThisCpu() {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(static_cast<unsigned>(sched_getcpu()), &one);
  sched_setaffinity(0, sizeof(one), &one);
}

/**
 * Load the program.
 * @param flow_capacity the flow table size
 * @param port_mac the MAC it takes frames for and sends from
 * @param now its clock (setClock)
 * @param why set to the loader's error when it cannot be loaded
 * @return the program, or nullptr when it cannot be loaded (no CAP_BPF)
 */
inline std::unique_ptr<XdpDataplane> loadProgram(uint32_t flow_capacity, const MacAddress& port_mac,
                                                 uint64_t now, std::string& why) {
  try {
    auto p = std::make_unique<XdpDataplane>(flow_capacity);
    p->setPortMac(port_mac.bytes.data());
    p->setClock(now);
    return p;
  } catch (const XdpError& e) {
    why = e.what();
    return nullptr;
  }
}

/** The frame the program sends for in, or nullopt when it does not transmit it. */
inline std::optional<pktgen::Bytes> runXdp(XdpDataplane& xdp, const pktgen::Bytes& in) {
  std::vector<uint8_t> out;
  if (xdp.run(in, out) != kXdpTx) {
    return std::nullopt;
  }
  return out;
}

/** runXdp() with the program's clock set to now first. */
inline std::optional<pktgen::Bytes> runXdp(XdpDataplane& xdp, const pktgen::Bytes& in,
                                           uint64_t now) {
  xdp.setClock(now);
  return runXdp(xdp, in);
}

/** One DPDK worker on byte buffers, on a port that does not complete partial checksums. */
struct Reference {
  Reference(uint32_t flow_capacity, const MacAddress& port_mac)
      : pipe(flow_capacity, kMaxBackendIds) {
    std::copy(port_mac.bytes.begin(), port_mac.bytes.end(), port.mac);
  }

  /** The frame the pipeline sends for in under snap at now, or nullopt when it does not. */
  std::optional<pktgen::Bytes> run(const pktgen::Bytes& in, const Snapshot& snap, uint64_t now) {
    pktgen::Bytes frame = in;
    PacketRef p;
    p.data = frame.data();
    p.data_len = static_cast<uint32_t>(frame.size());
    p.pkt_len = p.data_len;
    p.now_ns = now;
    pipe.process(std::span<PacketRef>(&p, 1), snap, port);
    if (!p.transmit) {
      return std::nullopt;
    }
    if (p.new_len != 0 && p.new_len < frame.size()) {
      frame.resize(p.new_len);  // an answered Neighbour Solicitation, trimmed by the worker
    }
    return frame;
  }

  Pipeline pipe;
  PortContext port;
};

/** The bytes of f in hex, for comparisons whose failure shows both frames. */
inline std::string hex(std::span<const uint8_t> f) {
  std::string s;
  for (uint8_t b : f) {
    s += fmt::format("{:02x}", b);
  }
  return s;
}

/** hex() of a frame sent, or "(not sent)". */
inline std::string show(const std::optional<pktgen::Bytes>& f) {
  return f ? hex(*f) : "(not sent)";
}

}  // namespace sluice::bpftest
