// The daemon's health checker: keepalived-style TCP_CHECK and HTTP_GET probes of every backend,
// run without threads on the daemon's libevent loop, with rise/fall damping (the `rise`/`fall` of
// keepalived's vrrp_script, Envoy's healthy/unhealthy thresholds) and a drift-free schedule.
// docs/health-checks.md describes the probes, the knobs and the measured cost.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/net.h"
#include "control/config.h"

struct event_base;

namespace sluice {

/** One backend endpoint to probe, as the caller resolved it from the configuration. */
struct ProbeTarget {
  std::string key;               // stable identity chosen by the caller, e.g. "web 10.0.0.11:80"
  IpAddress address;
  uint16_t port = 0;             // the port to probe (the caller already applied check.port)
  HealthCheckConfig check;       // type is kTcp or kHttp (the caller leaves kNone targets out)
  std::optional<IpAddress> source;  // bind probes to this local address (Sluice's own), if set

  bool operator==(const ProbeTarget&) const = default;
};

/** What the checker knows of one target. */
struct ProbeStatus {
  bool up = true;                // state after rise/fall damping
  uint64_t probes = 0;           // completed probes
  uint64_t failures = 0;
  uint32_t streak = 0;           // consecutive results that disagree with `up` (towards a change)
  bool last_ok = false;
  // One line: "http 200 in 1.3 ms", "tcp connect in 0.4 ms", "connection refused",
  // "timeout after 500 ms", "http 503 (want 200)"; "" before the first probe.
  std::string last_result;
  int64_t last_change_unix_ms = 0;  // when `up` last changed; 0 = not since it was added
  int64_t last_probe_unix_ms = 0;   // when the last probe completed
  double last_duration_ms = 0;      // how long the last probe took, start to result
  // Slots passed over: the previous probe was still running, or the loop stalled past them.
  uint64_t skipped = 0;
};

/**
 * Probes a set of targets on one libevent loop. Every socket is non-blocking and every wait is an
 * event on `base`; no call blocks. Not thread-safe: use it from the loop's thread only.
 */
class HealthChecker {
 public:
  /**
   * Called on the event loop's thread when a target's `up` flips (after rise/fall), from a
   * callback of its own, never from inside setTargets() or a probe's socket callback, so it may
   * call setTargets(). It must not destroy the HealthChecker. An exception it throws is caught
   * and counted (LoopStats::callback_errors).
   */
  using OnChange = std::function<void(const std::string& key, const ProbeStatus& status)>;

  /**
   * @param base the loop to run on; it must outlive the checker. Created with
   *   EVENT_BASE_FLAG_PRECISE_TIMER, probes start a fraction of a millisecond after their slot;
   *   with libevent's default clock (CLOCK_MONOTONIC_COARSE, 4 ms ticks) 2-3 ms on average and
   *   up to two ticks.
   * @param on_change called on every flip of a target's `up`
   */
  HealthChecker(event_base* base, OnChange on_change);
  /** Cancels everything in flight and closes every socket. */
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  /**
   * Replace the target set. A target whose key AND check AND address/port/source are unchanged
   * keeps its state and schedule; new ones start `up` (keepalived's default) with their first
   * probe spread over the first interval; removed ones are cancelled. A target that keeps its
   * key but changes anything else starts over as new (no on_change for that). Of two targets
   * with one key, the first is kept. Targets of type kNone are ignored.
   * @param targets the complete new set
   */
  void setTargets(std::vector<ProbeTarget> targets);

  /**
   * @param key a target's key
   * @return its status, or nullptr if unknown; valid until a setTargets() removes or resets it
   */
  const ProbeStatus* status(const std::string& key) const;

  /** The probe loop's counters since construction. */
  struct LoopStats {
    uint64_t started = 0, completed = 0;
    double lateness_mean_ms = 0, lateness_max_ms = 0;  // probe start minus its scheduled time
    uint64_t skipped = 0;          // slots not probed (see ProbeStatus::skipped), all targets
    uint64_t in_flight = 0;        // probes running now
    uint64_t callback_errors = 0;  // exceptions caught in callbacks (on_change's included)
  };
  /** @return the loop's counters; lateness = actual probe start minus its scheduled time */
  LoopStats loopStats() const;

 private:
  class Impl;  // the libevent state, kept out of this header
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice
