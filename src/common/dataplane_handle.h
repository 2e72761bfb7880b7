// What the control plane needs of a running data path, whichever it is: publish a snapshot (and
// return once no packet is handled with the old one), the snapshot in force, and the counters.
// The DPDK path implements it in src/dataplane/dpdk_dataplane.h, the XDP path in
// src/xdp/xdp_dataplane.h; src/sluiced/ hands one of them to the control plane.
#pragma once

#include <cstddef>

#include "common/snapshot.h"
#include "common/stats.h"

namespace sluice {

class DataplaneHandle {
 public:
  virtual ~DataplaneHandle() = default;
  /**
   * Make next the snapshot in force; the previous one is freed once nothing can use it.
   * All or nothing: when it throws, the previous snapshot stays in force, as it was.
   */
  virtual void publish(SnapshotPtr next) = 0;
  /** The snapshot in force (control thread only); nullptr before the first publish. */
  virtual const Snapshot* current() const = 0;
  /** Counters summed over the data path's workers (DPDK lcores or CPUs). */
  virtual StatsTotals totals(const Snapshot& snap) const = 0;
  /** How many workers forward packets. */
  virtual size_t workers() const = 0;
};

}  // namespace sluice
