// Turns a validated Config into an immutable Snapshot for the workers. Pure and deterministic
// apart from the id registry, which keeps service and backend ids stable across rebuilds so that
// flows pinned in the workers' flow tables keep their meaning when the configuration changes.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/snapshot.h"
#include "control/config.h"

namespace sluice {

/**
 * Stable ids. A service keeps its id while its (VIP, port, protocol) exists; a backend keeps its
 * id while its (service, address, port) exists. A freed id that is handed out again gets a new
 * epoch, so a flow that still names the old owner is recognised and rescheduled.
 */
class IdRegistry {
 public:
  struct Assignment {
    std::vector<uint32_t> service_ids;               // parallel to config.services
    std::vector<std::vector<uint32_t>> backend_ids;  // parallel to each service's backends
  };
  /**
   * Ids for every service and backend of config; frees the ids of those that are gone first, so
   * any valid configuration gets ids whatever ran before it. Changes the registry even when it
   * throws: callers work on a copy (ControlPlane::apply).
   * @throws ConfigError when config has more backends than there are ids
   */
  Assignment assign(const Config& config);
  uint32_t epochOf(uint32_t backend_id) const { return epochs_.at(backend_id); }

 private:
  using ServiceKey = std::tuple<IpAddress, uint16_t, uint8_t>;
  using BackendKey = std::tuple<uint32_t, IpAddress, uint16_t>;
  std::map<ServiceKey, uint32_t> services_;
  std::map<BackendKey, uint32_t> backends_;
  std::vector<uint32_t> free_services_;
  std::vector<uint32_t> free_backends_;
  uint32_t next_service_ = 0;
  uint32_t next_backend_ = 1;
  std::vector<uint32_t> epochs_ = std::vector<uint32_t>(1, 0);
};

/**
 * The key that seeds a backend's Maglev permutation: its endpoint alone ("10.0.0.11:80",
 * "[2001:db8:1::11]:8443"), never its id, so that every host (and the XDP path) with the same
 * backends builds the same table whatever ids it handed out. Part of the cross-host contract:
 * changing it reshuffles every service on upgrade (pinned in tests/unit/golden_test.cc).
 * @param address the backend's address
 * @param port the backend's port (host order)
 * @return the key
 */
std::string maglevBackendKey(const IpAddress& address, uint16_t port);

/** A backend as the daemon names it at run time: (VIP, port, protocol, address, port). */
using BackendRef = std::tuple<IpAddress, uint16_t, uint8_t, IpAddress, uint16_t>;
BackendRef backendRef(const ServiceConfig& s, const BackendConfig& b);

/** What a health check and the operator say of a backend (both up when nothing was said). */
struct BackendHealth {
  bool up = true;           // the health checker's verdict
  bool maintenance = false; // forced down: sluicectl backend down
};

/**
 * What the daemon learned at run time, beyond the configuration: health verdicts, and the MACs
 * the kernel resolved by ARP/ND for backends and gateways that have none in the configuration.
 */
struct RuntimeState {
  std::map<BackendRef, BackendHealth> health;
  std::map<IpAddress, MacAddress> neighbours;
};

/** The address whose MAC a backend's frames go to: its own on-link, else its family's gateway. */
std::optional<IpAddress> nextHopOf(const DataplaneConfig& dp, const IpAddress& backend);

/**
 * Build the snapshot for config.
 * @param previous the snapshot being replaced, if any: the Maglev tables of services whose
 *        backends, weights and table size did not change are shared with it, not rebuilt
 * @param table_threads how many threads build the Maglev tables that are not shared: 0 means
 *        std::thread::hardware_concurrency(); never more than there are tables to build, so a
 *        rebuild of one service starts no thread. The snapshot is the same for any count.
 * @throws ConfigError when the id space is exhausted
 * @throws std::invalid_argument when a table cannot be built (see buildMaglevTable), the one of
 *         the first such service in configuration order, whatever the thread count
 */
SnapshotPtr buildSnapshot(const Config& config, IdRegistry& ids, uint64_t generation,
                          const Snapshot* previous = nullptr,
                          const RuntimeState* runtime = nullptr, unsigned table_threads = 0);

}  // namespace sluice
