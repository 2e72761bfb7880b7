// The per-lcore poll loop (after DPDK examples/l3fwd): receive a burst from each of the worker's
// queues, run it through the Pipeline against the current Snapshot, transmit what it forwards on
// the worker's own TX queue of the same port, and report a quiescent state once per pass so the
// control plane knows when an old Snapshot may be freed.
#pragma once

#include <rte_config.h>
#include <rte_rcu_qsbr.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "common/snapshot.h"
#include "dataplane/pipeline.h"
#include "dataplane/snapshot_slot.h"

namespace sluice {

struct RxQueueRef {
  uint16_t port = 0;
  uint16_t queue = 0;
  PortContext* ctx = nullptr;
};

struct WorkerOptions {
  uint32_t flow_capacity = 1u << 20;
  uint32_t max_backend_ids = 1u << 16;
  // Replay: take the flow clock from the capture's timestamps (so idle timeouts and the FIN
  // linger behave as they would have live), and stop once every queue has run dry.
  bool packet_clock = false;
  bool stop_when_idle = false;
};

class alignas(RTE_CACHE_LINE_SIZE) Worker {
 public:
  static constexpr uint16_t kBurst = 32;

  Worker(uint32_t index, const WorkerOptions& opts, std::vector<RxQueueRef> queues,
         SnapshotSlot& slot, const std::atomic<bool>& stop);

  /** The poll loop; returns when stop is set (or, in replay, when the input is exhausted). */
  int run() noexcept;
  /** rte_eal_remote_launch entry point; arg is the Worker. */
  static int launch(void* arg) { return static_cast<Worker*>(arg)->run(); }

  uint32_t index() const { return index_; }
  const Pipeline& pipeline() const { return pipeline_; }

 private:
  uint64_t clockNs() const noexcept;

  uint32_t index_;
  WorkerOptions opts_;
  std::vector<RxQueueRef> queues_;
  SnapshotSlot& slot_;
  const std::atomic<bool>& stop_;
  Pipeline pipeline_;
  int ts_offset_ = -1;
  uint64_t ts_flag_ = 0;
  uint64_t ns_mult_ = 0;  // (1e9 << 32) / TSC hz
};

}  // namespace sluice
