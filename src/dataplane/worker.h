// The per-lcore poll loop (after DPDK examples/l3fwd): receive a burst from each of the worker's
// queues, run it through the Pipeline against the current Snapshot, transmit what it forwards on
// the worker's own TX queue of the same port, and report a quiescent state once per pass so the
// control plane knows when an old Snapshot may be freed.
#pragma once

#include <rte_config.h>
#include <rte_rcu_qsbr.h>

struct rte_mbuf;

#include <atomic>
#include <cstdint>
#include <vector>

#include "common/snapshot.h"
#include "dataplane/pipeline.h"
#include "dataplane/snapshot_slot.h"

namespace sluice {

inline constexpr uint16_t kNoPort = 0xffff;

struct RxQueueRef {
  uint16_t port = 0;
  uint16_t queue = 0;
  PortContext* ctx = nullptr;
  // The port's kernel exception port (net_tap), or kNoPort. The worker sends what the pipeline
  // hands to the kernel on its own TX queue of it, and sends what the kernel transmits (its RX
  // queue of the same index) out of `port` unchanged.
  uint16_t kernel_port = kNoPort;
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
  /** tx_burst on this worker's queue of port, a few tries; what is left is counted tx_full. */
  uint16_t transmit(uint16_t port, rte_mbuf** pkts, uint16_t n, WorkerCounters& counters) noexcept;

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
