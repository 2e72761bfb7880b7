// The counters every data path reports, whichever it is: sums over its workers (DPDK lcores or
// CPUs running the XDP program), per worker and per backend id. What replay reports and what the
// control socket serves; each data path fills them from its own counters (dataplane/dpdk_dataplane.h,
// xdp/xdp_dataplane.h).
#pragma once

#include <cstdint>
#include <vector>

#include "common/lb_abi.h"
#include "common/snapshot.h"

namespace sluice {

struct BackendTotals {
  uint64_t packets = 0;
  uint64_t bytes = 0;
  uint64_t flows = 0;   // new flows scheduled to it
  uint64_t active = 0;  // flows pinned to it now
  uint64_t reply_packets = 0;
  uint64_t reply_bytes = 0;
};

struct WorkerTotals {
  uint32_t worker = 0;
  uint64_t rx_packets = 0;
  uint64_t tx_packets = 0;
  uint64_t drops[LB_DROP__COUNT] = {};
  uint64_t dropped = 0;  // sum of drops
  uint64_t reply_packets = 0;
  uint64_t flows_created = 0;
  uint64_t flows_expired = 0;
  uint64_t flows_syn_expired = 0;  // of flows_expired: unestablished (handshake never completed)
  uint64_t flows_evicted = 0;
  uint64_t flows_syn_evicted = 0;  // of flows_evicted: unestablished
  uint64_t flows_active = 0;
  uint64_t new_flows_unpinned = 0;  // new flows forwarded without an entry (rate guard, no room)
  uint64_t flows_rescheduled = 0;
  uint64_t passed = 0;    // handed to the kernel (XDP_PASS, the DPDK exception port)
  uint64_t answered = 0;  // ARP, Neighbour Solicitations and echo requests answered in place
  uint64_t icmp_forwarded = 0;  // ICMP errors about a flow sent on to its other end (in tx_packets)
  uint64_t host_sent = 0; // sent by the host's kernel through the DPDK exception port (not rx/tx)
};

struct StatsTotals {
  WorkerTotals all;                    // every worker together
  std::vector<WorkerTotals> workers;   // one per pipeline, in the order given
  std::vector<BackendTotals> backends; // indexed by backend id
};

/** into += w, field by field (the worker index of into is kept). */
void addTotals(WorkerTotals& into, const WorkerTotals& w);
/** into += b, field by field. */
void addTotals(BackendTotals& into, const BackendTotals& b);

/** One service's backends with their totals, and the service's sum over them. */
struct ServiceStats {
  const ServiceEntry* service = nullptr;
  BackendTotals total;
  std::vector<std::pair<const BackendEntry*, BackendTotals>> backends;  // canonical order
};

/** Group backend totals by the snapshot's services (present services only, by id). */
std::vector<ServiceStats> perService(const Snapshot& snap, const StatsTotals& totals);

/** A flow in a worker's flow table: for replay's --flows and flow listings. */
struct FlowRow {
  lb_flow_key key;
  uint32_t service_id = 0;
  uint32_t backend_id = 0;
  uint32_t worker = 0;
};

}  // namespace sluice
