// The per-packet work of one worker, independent of DPDK: parse, service lookup, flow lookup,
// Maglev pick on a miss, rewrite. The DPDK lcore loop (worker.h) feeds it bursts of mbuf data;
// the unit tests feed it plain byte buffers. Nothing here allocates, locks or calls the kernel.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/counter.h"
#include "common/lb_abi.h"
#include "common/snapshot.h"
#include "dataplane/backend_counters.h"
#include "dataplane/flow_table.h"
#include "dataplane/icmp_error.h"
#include "dataplane/packet.h"

namespace sluice {

/** Per-worker counters: written only by the worker. */
struct WorkerCounters {
  Counter rx_packets;
  Counter tx_packets;
  Counter drops[LB_DROP__COUNT];
  Counter flows_rescheduled;  // a pinned backend was removed; the flow got a new one
  Counter passed;             // handed to the kernel through the exception port
  Counter answered;           // ARP, Neighbour Solicitations and echo requests answered in place
  Counter icmp_forwarded;     // ICMP errors about a flow sent on to its other end (icmp_error.h)
  Counter checksums_completed;  // partial checksums of local senders completed (kernel-fed ports)
  Counter host_sent;          // frames the host's kernel sent out through the NIC (exception port)
  // New flows forwarded by their Maglev pick without an entry: above new_flow_rate_limit, or a
  // SYN whose two buckets hold established flows only (flow_table.h).
  Counter new_flows_unpinned;
};

/** What a worker knows of the port a packet came in on (and goes out of: one-armed). */
struct PortContext {
  uint8_t mac[6] = {};
  // NAT replies go to the configured gateway MAC or, if there is none, to the source MAC of the
  // last client packet this port received for a NAT service. Packed in the low 48 bits; 0 = none.
  // Shared by the workers of the port: relaxed loads, and a store only when the value changes.
  std::atomic<uint64_t> learned_gateway{0};
  // Take frames whatever their destination MAC (replay of captures taken on other hosts); live
  // ports drop what is not for them (not_for_us).
  bool accept_any_mac = false;
  // The port is fed by the kernel (net_af_packet, net_tap): frames from local senders may carry
  // partial checksums, completed before they go anywhere (rewrite.h, completePartialChecksum).
  bool complete_partial_checksums = false;
};

/** One packet of a burst. The caller fills the inputs; process() sets `transmit`. */
struct PacketRef {
  uint8_t* data = nullptr;
  uint32_t data_len = 0;  // bytes in the first segment
  uint32_t pkt_len = 0;   // bytes in all segments
  uint64_t now_ns = 0;    // the clock for flow expiry
  bool transmit = false;  // out: rewritten in place, send it out of the port it came in on
  bool to_kernel = false; // out: for the host's kernel (the exception port), unchanged
  uint32_t new_len = 0;   // out: when non-zero, the frame's length after an in-place answer
  // Internal to the pipeline between its two stages.
  int status = 0;
  uint32_t hash = 0;
  ParsedPacket parsed;
};

class Pipeline {
 public:
  static constexpr size_t kMaxBurst = 64;

  /**
   * @param flow_capacity flow entries of this worker's table
   * @param max_backend_ids size of the per-backend counter array (ids are below it)
   */
  Pipeline(uint32_t flow_capacity, uint32_t max_backend_ids);

  /**
   * Process a burst (at most kMaxBurst packets) in stages, so the memory latency of one packet's
   * flow lookup overlaps the work on the others: parse and hash every packet and prefetch its
   * bucket's signatures; prefetch the entry whose signature matches; then look up, schedule and
   * rewrite each one.
   */
  void process(std::span<PacketRef> burst, const Snapshot& snap, PortContext& port) noexcept;

  /** Expire idle flows in a few buckets; call once per poll-loop pass. */
  void sweep(uint64_t now_ns, uint32_t buckets = 2) noexcept { flows_.sweep(buckets, now_ns); }

  const WorkerCounters& counters() const { return counters_; }
  WorkerCounters& counters() { return counters_; }
  /** Indexed by backend id; valid for a backend when their epoch is the backend's. */
  const std::vector<BackendCounters>& backendCounters() const { return backend_counters_; }
  const FlowTable& flows() const { return flows_; }
  FlowTable& flows() { return flows_; }

 private:
  bool forward(PacketRef& p, const Snapshot& snap, PortContext& port) noexcept;
  bool toBackend(PacketRef& p, const Snapshot& snap, const ServiceEntry& svc,
                 PortContext& port) noexcept;
  bool natReply(PacketRef& p, const Snapshot& snap, const EndpointMap::Value& v,
                PortContext& port) noexcept;
  /** An ICMP error about a flow of svc (icmp_error.h): to the flow's backend, the flow untouched. */
  bool icmpErrorToBackend(PacketRef& p, const Snapshot& snap, const ServiceEntry& svc,
                          const IcmpError& e, PortContext& port) noexcept;
  /**
   * An ICMP error from behind NAT about a client's packet to the NAT backend of v (icmp_error.h):
   * to the client, as if about its packet to the VIP; stateless, as natReply().
   */
  bool icmpErrorToClient(PacketRef& p, const Snapshot& snap, const EndpointMap::Value& v,
                         const IcmpError& e, PortContext& port) noexcept;
  /** A packet sent back to a client for v's backend: its reply counters. */
  void countReply(const PacketRef& p, const Snapshot& snap, const EndpointMap::Value& v) noexcept;
  /**
   * The per-core new-flow rate guard (Katran's is_under_flood(): a one-second window per core):
   * whether a new flow at now_ns exceeds limit flows per second and so is not to be inserted.
   * The clock is the packet's, as for expiry, so a replay decides the same on every machine and
   * both data paths the same for one input (bpf/lib/lb.h, lb_over_new_flow_rate).
   */
  bool overNewFlowRate(uint64_t now_ns, uint64_t limit) noexcept {
    if (limit == 0) {
      return false;
    }
    if (now_ns - rate_window_start_ns_ >= kRateWindowNs) {  // also when the clock went back
      rate_window_start_ns_ = now_ns;
      rate_window_flows_ = 0;
    }
    if (rate_window_flows_ >= limit) {
      return true;
    }
    ++rate_window_flows_;
    return false;
  }
  bool drop(int reason) noexcept {
    ++counters_.drops[reason];
    return false;
  }
  /** For the kernel, counted under reason too when it is one (non_ip, no_service: as XDP_PASS). */
  bool toKernel(PacketRef& p, int reason = -1) noexcept {
    if (reason >= 0) {
      ++counters_.drops[reason];
    }
    ++counters_.passed;
    p.to_kernel = true;
    return false;
  }
  bool answered() noexcept {
    ++counters_.answered;
    return true;
  }
  /** A frame that is neither IPv4 nor IPv6: ARP answered, the rest to the kernel. */
  bool host(PacketRef& p, const Snapshot& snap, PortContext& port) noexcept;

  static constexpr uint64_t kRateWindowNs = 1'000'000'000;

  FlowTable flows_;
  WorkerCounters counters_;
  std::vector<BackendCounters> backend_counters_;
  uint64_t rate_window_start_ns_ = 0;  // the rate guard's current one-second window
  uint64_t rate_window_flows_ = 0;     // new flows inserted in it
};

}  // namespace sluice
