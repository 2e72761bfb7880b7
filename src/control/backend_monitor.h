// The daemon's watch over its backends while it runs: health checks (control/health_check.h) and
// the MACs of backends and gateways from the kernel's neighbour table (control/host_interface.h).
// What it learns goes into the control plane's RuntimeState and is published through the same
// path as a CLI change (ControlPlane::republish), coalesced so that a hundred verdicts arriving
// together make one publish. It runs on the daemon's event loop, never on a worker.
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/net.h"
#include "control/config.h"
#include "control/control_plane.h"
#include "control/health_check.h"
#include "control/host_interface.h"
#include "control/snapshot_builder.h"

namespace sluice {

class BackendMonitor {
 public:
  /** How the monitor reports: info for state changes, warn for trouble. */
  using Log = std::function<void(bool warning, const std::string& message)>;

  /**
   * @param base the daemon's event loop
   * @param control where verdicts and MACs are published; the monitor registers itself as its
   *        onApplied hook and backend annotator
   * @param host the kernel interface that carries Sluice's addresses (the DPDK exception port or
   *        the XDP interface), or nullptr when there is none: then nothing is resolved and
   *        backends without a configured MAC stay unresolved
   */
  BackendMonitor(event_base* base, ControlPlane& control, HostInterface* host, Log log);
  ~BackendMonitor();
  BackendMonitor(const BackendMonitor&) = delete;
  BackendMonitor& operator=(const BackendMonitor&) = delete;

  /** Start following the running configuration: probes, resolution, announcements. */
  void start();

  /** The health-checker's loop figures (for the probe-cost measurement). */
  HealthChecker::LoopStats probeStats() const { return checker_.loopStats(); }

 private:
  struct Target {
    BackendRef ref;
    std::string service;
    std::string endpoint;
  };

  void follow(const Config& config);
  void annotate(const BackendRef& ref, nlohmann::json& backend) const;
  void onHealthChange(const std::string& key, const ProbeStatus& status);
  void onNeighbourEvents();
  void tick();
  void learn(const IpAddress& addr);
  /** Ask the kernel to resolve addr; a refusal is logged once, not thrown. */
  void resolve(const IpAddress& addr);
  void schedulePublish(std::string why);
  void publishNow();

  static void neighbourCallback(evutil_socket_t, short, void* self);
  static void tickCallback(evutil_socket_t, short, void* self);
  static void publishCallback(evutil_socket_t, short, void* self);

  event_base* base_;
  ControlPlane& control_;
  HostInterface* host_;
  Log log_;
  HealthChecker checker_;
  std::map<std::string, Target> targets_;         // health-check key -> backend
  std::map<BackendRef, std::string> keys_;         // backend -> health-check key
  std::set<IpAddress> wanted_;                     // next hops whose MAC the data path needs
  std::map<IpAddress, int> announce_;              // VIP -> announcements still to send
  std::set<IpAddress> vips_;
  std::set<IpAddress> resolve_failures_;
  std::string pending_why_;
  uint64_t ticks_ = 0;
  event* neighbour_event_ = nullptr;
  event* tick_event_ = nullptr;
  event* publish_event_ = nullptr;
};

}  // namespace sluice
