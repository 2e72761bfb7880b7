// What the control plane needs of a running data path, whichever it is: publish a snapshot (and
// return once no packet is handled with the old one), the snapshot in force, and the counters.
#pragma once

#include <cstddef>
#include <vector>

#include "dataplane/pipeline.h"
#include "dataplane/snapshot.h"
#include "dataplane/snapshot_slot.h"
#include "dataplane/stats.h"

namespace sluice {

class DataplaneHandle {
 public:
  virtual ~DataplaneHandle() = default;
  /** Make next the snapshot in force; the previous one is freed once nothing can use it. */
  virtual void publish(SnapshotPtr next) = 0;
  /** The snapshot in force (control thread only). */
  virtual const Snapshot* current() const = 0;
  /** Counters summed over the data path's workers (DPDK lcores or CPUs). */
  virtual StatsTotals totals(const Snapshot& snap) const = 0;
  /** How many workers forward packets. */
  virtual size_t workers() const = 0;
};

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
