// The DPDK data path as the control plane sees it: snapshots published through the SnapshotSlot
// (RCU), counters summed over the workers' pipelines.
#pragma once

#include <span>
#include <vector>

#include "common/dataplane_handle.h"
#include "common/snapshot.h"
#include "common/stats.h"
#include "dataplane/pipeline.h"
#include "dataplane/snapshot_slot.h"

namespace sluice {

/**
 * Add up the counters of several pipelines; read while they run (relaxed loads, see
 * common/counter.h) or after they stopped.
 * @param pipelines the workers' pipelines; worker i is reported with index i
 * @param snap the snapshot whose backends are reported: a worker's counters for an id count only
 *        when they are for the backend that has the id in this snapshot (same epoch)
 */
StatsTotals collectStats(std::span<const Pipeline* const> pipelines, const Snapshot& snap);

/** The DPDK path: a SnapshotSlot (RCU) and the workers' pipelines. */
class DpdkDataplaneHandle : public DataplaneHandle {
 public:
  DpdkDataplaneHandle(SnapshotSlot& slot, std::vector<const Pipeline*> pipelines)
      : slot_(slot), pipelines_(std::move(pipelines)) {}
  void publish(SnapshotPtr next) override { slot_.publish(std::move(next)); }
  const Snapshot* current() const override { return slot_.current(); }
  StatsTotals totals(const Snapshot& snap) const override { return collectStats(pipelines_, snap); }
  size_t workers() const override { return pipelines_.size(); }

 private:
  SnapshotSlot& slot_;
  std::vector<const Pipeline*> pipelines_;
};

}  // namespace sluice
