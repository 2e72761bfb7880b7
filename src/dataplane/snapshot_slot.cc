#include "dataplane/snapshot_slot.h"

#include <fmt/format.h>

#include <cstdlib>

#include "dataplane/eal.h"

namespace sluice {

SnapshotSlot::SnapshotSlot(uint32_t max_workers) {
  // Plain memory, not rte_malloc: the QSBR variable needs no hugepage, so the control plane
  // and its tests can use it without an EAL.
  const size_t sz = rte_rcu_qsbr_get_memsize(max_workers);
  qsv_ = static_cast<rte_rcu_qsbr*>(std::aligned_alloc(RTE_CACHE_LINE_SIZE,
                                                       (sz + RTE_CACHE_LINE_SIZE - 1) /
                                                           RTE_CACHE_LINE_SIZE * RTE_CACHE_LINE_SIZE));
  if (qsv_ == nullptr || rte_rcu_qsbr_init(qsv_, max_workers) != 0) {
    std::free(qsv_);
    throw DpdkError(fmt::format("cannot set up RCU for {} workers", max_workers));
  }
}

SnapshotSlot::~SnapshotSlot() {
  delete current_.load(std::memory_order_acquire);
  std::free(qsv_);
}

void SnapshotSlot::publish(SnapshotPtr next) {
  // acq_rel: release publishes the new Snapshot's contents; acquire orders our later delete of
  // the old one after the exchange.
  const Snapshot* old = current_.exchange(next.release(), std::memory_order_acq_rel);
  if (old != nullptr) {
    // Returns once every online worker has reported quiescent after the exchange, i.e. has
    // finished the pass in which it may have used `old`.
    rte_rcu_qsbr_synchronize(qsv_, RTE_QSBR_THRID_INVALID);
    delete old;
  }
}

}  // namespace sluice
