// Sums of the workers' counters, read while they run (relaxed loads, see common/counter.h) or
// after they stopped. What replay reports and what the control socket serves.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/lb_abi.h"
#include "dataplane/pipeline.h"
#include "dataplane/snapshot.h"

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
  uint64_t flows_evicted = 0;
  uint64_t flows_active = 0;
  uint64_t flows_rescheduled = 0;
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

/**
 * Add up the counters of several pipelines.
 * @param pipelines the workers' pipelines; worker i is reported with index i
 * @param snap the snapshot whose backends are reported: a worker's counters for an id count only
 *        when they are for the backend that has the id in this snapshot (same epoch)
 */
StatsTotals collectStats(std::span<const Pipeline* const> pipelines, const Snapshot& snap);

}  // namespace sluice
