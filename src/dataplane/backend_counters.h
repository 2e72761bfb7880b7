// Per-worker counters of one backend id, written only by the worker that owns them.
#pragma once

#include <cstdint>

#include "common/counter.h"

namespace sluice {

/**
 * The counters of one backend id in one worker. Backend ids are reused by the control plane for
 * new backends (with a new epoch), so the counters carry the epoch they count for: the worker
 * starts them afresh when it first meets the id's new epoch, and readers ignore counters whose
 * epoch is not the snapshot's. Flows of an old epoch still in the table no longer count as active.
 */
struct BackendCounters {
  Counter epoch;          // the backend epoch these counters are for (0: never used)
  Counter packets;        // client -> backend
  Counter bytes;
  Counter flows;          // new flows scheduled to this backend
  Counter active;         // flows in this worker's table pinned to this backend (this epoch)
  Counter reply_packets;  // NAT backend -> client
  Counter reply_bytes;

  /** Make these the counters of epoch e, starting from zero, if they are not already. */
  void claim(uint32_t e) noexcept {
    if (epoch.get() != e) [[unlikely]] {
      packets.set(0);
      bytes.set(0);
      flows.set(0);
      active.set(0);
      reply_packets.set(0);
      reply_bytes.set(0);
      epoch.set(e);
    }
  }
};

}  // namespace sluice
