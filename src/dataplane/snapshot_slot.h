// Publishing snapshots to running workers: build, swap, wait for a grace period, free.
#pragma once

#include <rte_config.h>
#include <rte_rcu_qsbr.h>

#include <atomic>
#include <cstdint>

#include "common/snapshot.h"

namespace sluice {

/**
 * The current Snapshot and the QSBR state that guards it (DPDK lib/rcu). publish() stores the
 * new pointer, waits until every registered worker has reported quiescent since, then frees the
 * old Snapshot: workers never see a table change under them within one pass.
 */
class SnapshotSlot {
 public:
  /** @param max_workers workers that may register (their thread ids are 0..max_workers-1) */
  explicit SnapshotSlot(uint32_t max_workers);
  ~SnapshotSlot();
  SnapshotSlot(const SnapshotSlot&) = delete;
  SnapshotSlot& operator=(const SnapshotSlot&) = delete;

  /** Workers: the Snapshot to use until the next quiescent report. */
  const Snapshot* current() const noexcept {
    // Acquire pairs with the release in publish(): the Snapshot's contents, written before it
    // was published, are visible to the worker that loads the pointer.
    return current_.load(std::memory_order_acquire);
  }
  /** Control plane: swap in next; returns after the old one has been freed. */
  void publish(SnapshotPtr next);
  rte_rcu_qsbr* qsbr() const { return qsv_; }

 private:
  std::atomic<const Snapshot*> current_{nullptr};
  rte_rcu_qsbr* qsv_ = nullptr;
};

}  // namespace sluice
