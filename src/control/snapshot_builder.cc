#include "control/snapshot_builder.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <set>
#include <system_error>
#include <thread>

#include "control/maglev.h"

namespace sluice {
namespace {

// A service's table to build: its backends (keys, ids, weights) and size, taken out of the
// snapshot loop so that the tables, each a pure function of its own input, can be built at once.
struct TableJob {
  uint32_t service_id = 0;
  std::vector<MaglevBackend> backends;
  uint32_t size = 0;
};

// Builds every job's table on up to `threads` threads (the calling one among them), each taking
// the next job not yet taken. Every table lands at its job's index, so the result does not
// depend on which thread built what. An exception thrown for a job is kept and, once every
// thread is done, the one of the lowest job index is rethrown: the one a serial loop would have
// met first.
std::vector<std::vector<uint32_t>> buildTables(const std::vector<TableJob>& jobs,
                                               unsigned threads) {
  std::vector<std::vector<uint32_t>> tables(jobs.size());
  std::vector<std::exception_ptr> errors(jobs.size());
  // Only hands out indices: the tables and errors a thread writes are read after join(), which
  // orders them, so the counter needs no ordering of its own.
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next.fetch_add(1, std::memory_order_relaxed); i < jobs.size();
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      try {
        tables[i] = buildMaglevTable(jobs[i].backends, jobs[i].size);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> helpers;
  const size_t wanted = std::min<size_t>(threads, jobs.size());
  for (size_t t = 1; t < wanted; ++t) {
    try {
      helpers.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the ones running (and this one) take every job
    }
  }
  work();
  for (std::thread& h : helpers) {
    h.join();
  }
  for (const std::exception_ptr& e : errors) {
    if (e) {
      std::rethrow_exception(e);
    }
  }
  return tables;
}

}  // namespace

IdRegistry::Assignment IdRegistry::assign(const Config& config) {
  using ServiceKeySet = std::set<ServiceKey>;
  using BackendEndpoint = std::tuple<ServiceKey, IpAddress, uint16_t>;
  ServiceKeySet wanted_services;
  std::set<BackendEndpoint> wanted_backends;
  for (const ServiceConfig& s : config.services) {
    const ServiceKey key{s.vip, s.port, static_cast<uint8_t>(s.protocol)};
    wanted_services.insert(key);
    for (const BackendConfig& b : s.backends) {
      wanted_backends.emplace(key, b.address, b.port);
    }
  }

  // Free what the new configuration drops before giving ids to what it adds: replacing every
  // backend at once needs the ids of the old ones. They are handed out last, after the ids free
  // before and never used ones, so that an id changes owner within one publish only when there
  // is no other (the epoch bump below keeps the old owner's flows from following it).
  std::vector<uint32_t> freed_services;
  std::vector<uint32_t> freed_backends;
  std::map<uint32_t, ServiceKey> service_of_id;
  for (auto it = services_.begin(); it != services_.end();) {
    if (!wanted_services.contains(it->first)) {
      freed_services.push_back(it->second);
      it = services_.erase(it);
    } else {
      service_of_id.emplace(it->second, it->first);
      ++it;
    }
  }
  for (auto it = backends_.begin(); it != backends_.end();) {
    const auto& [sid, address, port] = it->first;
    const auto service = service_of_id.find(sid);
    if (service == service_of_id.end() ||
        !wanted_backends.contains({service->second, address, port})) {
      freed_backends.push_back(it->second);
      it = backends_.erase(it);
    } else {
      ++it;
    }
  }
  // Lowest first (taken from the back), so ids stay dense and deterministic.
  for (auto* v : {&freed_services, &freed_backends}) {
    std::sort(v->begin(), v->end(), std::greater<>());
  }

  auto takeService = [&](const ServiceKey& key) {
    if (auto it = services_.find(key); it != services_.end()) {
      return it->second;
    }
    uint32_t id;
    if (!free_services_.empty()) {
      id = free_services_.back();
      free_services_.pop_back();
    } else if (next_service_ < LB_MAX_SERVICES || freed_services.empty()) {
      id = next_service_++;
    } else {
      id = freed_services.back();
      freed_services.pop_back();
    }
    services_.emplace(key, id);
    return id;
  };
  auto takeBackend = [&](const BackendKey& key) {
    if (auto it = backends_.find(key); it != backends_.end()) {
      return it->second;
    }
    uint32_t id;
    if (!free_backends_.empty()) {
      id = free_backends_.back();
      free_backends_.pop_back();
      ++epochs_[id];  // a new owner: flows of the old one must not follow the id
    } else if (next_backend_ < kMaxBackendIds) {
      id = next_backend_++;
      epochs_.push_back(1);
    } else if (!freed_backends.empty()) {
      id = freed_backends.back();
      freed_backends.pop_back();
      ++epochs_[id];
    } else {
      throw ConfigError(fmt::format("more than {} backends in all", kMaxBackendIds - 1));
    }
    backends_.emplace(key, id);
    return id;
  };

  Assignment out;
  for (const ServiceConfig& s : config.services) {
    const uint32_t sid = takeService({s.vip, s.port, static_cast<uint8_t>(s.protocol)});
    out.service_ids.push_back(sid);
    std::vector<uint32_t> bids;
    bids.reserve(s.backends.size());
    for (const BackendConfig& b : s.backends) {
      bids.push_back(takeBackend({sid, b.address, b.port}));
    }
    out.backend_ids.push_back(std::move(bids));
  }
  free_services_.insert(free_services_.end(), freed_services.begin(), freed_services.end());
  free_backends_.insert(free_backends_.end(), freed_backends.begin(), freed_backends.end());
  std::sort(free_services_.begin(), free_services_.end(), std::greater<>());
  std::sort(free_backends_.begin(), free_backends_.end(), std::greater<>());
  return out;
}

std::string maglevBackendKey(const IpAddress& address, uint16_t port) {
  return formatEndpoint(address, port);
}

BackendRef backendRef(const ServiceConfig& s, const BackendConfig& b) {
  return {s.vip, s.port, static_cast<uint8_t>(s.protocol), b.address, b.port};
}

std::optional<IpAddress> nextHopOf(const DataplaneConfig& dp, const IpAddress& backend) {
  if (onLinkPrefix(dp, backend) != nullptr) {
    return backend;
  }
  if (const IpAddress* g = gatewayFor(dp, backend.family)) {
    return *g;
  }
  return std::nullopt;
}

SnapshotPtr buildSnapshot(const Config& config, IdRegistry& ids, uint64_t generation,
                          const Snapshot* previous, const RuntimeState* runtime,
                          unsigned table_threads) {
  const RuntimeState none;
  const RuntimeState& rt = runtime != nullptr ? *runtime : none;
  auto resolved = [&](const IpAddress& a) -> const MacAddress* {
    auto it = rt.neighbours.find(a);
    return it != rt.neighbours.end() ? &it->second : nullptr;
  };
  const IdRegistry::Assignment assigned = ids.assign(config);
  auto snap = std::make_unique<Snapshot>();
  snap->generation = generation;
  snap->tcp_timeout_ns = uint64_t{config.timeouts.tcp_s} * 1'000'000'000ull;
  snap->tcp_fin_timeout_ns = uint64_t{config.timeouts.tcp_fin_s} * 1'000'000'000ull;
  snap->udp_timeout_ns = uint64_t{config.timeouts.udp_s} * 1'000'000'000ull;
  snap->tcp_syn_timeout_ns = uint64_t{config.timeouts.tcp_syn_s} * 1'000'000'000ull;
  snap->new_flow_rate_limit = config.flood.new_flow_rate_limit;
  if (config.dataplane.gateway_mac) {
    snap->has_gateway_mac = snap->has_gateway_mac6 = true;
    std::memcpy(snap->gateway_mac, config.dataplane.gateway_mac->bytes.data(), 6);
    std::memcpy(snap->gateway_mac6, config.dataplane.gateway_mac->bytes.data(), 6);
  } else {
    for (const IpAddress& g : config.dataplane.gateways) {
      if (const MacAddress* m = resolved(g)) {
        (g.isV4() ? snap->has_gateway_mac : snap->has_gateway_mac6) = true;
        std::memcpy(g.isV4() ? snap->gateway_mac : snap->gateway_mac6, m->bytes.data(), 6);
      }
    }
  }
  snap->local_addresses.reserve(config.dataplane.addresses.size());
  for (const IpPrefix& a : config.dataplane.addresses) {
    snap->local_addresses.insert(makeEndpointKey(a.address, 0, 0), {});
  }

  uint32_t max_sid = 0;
  uint32_t max_bid = 0;
  size_t nat_backends = 0;
  for (size_t i = 0; i < config.services.size(); ++i) {
    max_sid = std::max(max_sid, assigned.service_ids[i]);
    for (uint32_t b : assigned.backend_ids[i]) {
      max_bid = std::max(max_bid, b);
    }
    if (config.services[i].forwarding == Forwarding::kNat) {
      nat_backends += config.services[i].backends.size();
    }
  }
  snap->services.resize(config.services.empty() ? 0 : max_sid + 1);
  snap->backends.resize(max_bid + 1);
  snap->service_map.reserve(config.services.size());
  snap->vip_addresses.reserve(config.services.size());
  snap->nat_reply_map.reserve(nat_backends);

  std::vector<TableJob> jobs;
  for (size_t i = 0; i < config.services.size(); ++i) {
    const ServiceConfig& sc = config.services[i];
    const uint32_t sid = assigned.service_ids[i];
    const uint8_t proto = static_cast<uint8_t>(sc.protocol);
    ServiceEntry& se = snap->services[sid];
    se.present = true;
    se.id = sid;
    se.name = sc.name;
    se.vip = sc.vip;
    se.port = sc.port;
    se.protocol = sc.protocol;
    se.forwarding = sc.forwarding;
    se.key = makeEndpointKey(sc.vip, sc.port, proto);

    std::vector<MaglevBackend> mb;
    mb.reserve(sc.backends.size());
    for (size_t j = 0; j < sc.backends.size(); ++j) {
      const BackendConfig& bc = sc.backends[j];
      const uint32_t bid = assigned.backend_ids[i][j];
      BackendEntry& be = snap->backends[bid];
      be.present = true;
      be.service_id = sid;
      be.epoch = ids.epochOf(bid);
      be.weight = bc.weight;
      bc.address.toWords(be.addr);
      const EndpointKey bk = makeEndpointKey(bc.address, bc.port, proto);
      be.port_be = bk.port;
      const MacAddress* mac = bc.mac ? &*bc.mac : nullptr;
      if (mac == nullptr) {
        if (auto hop = nextHopOf(config.dataplane, bc.address)) {
          mac = resolved(*hop);
        }
      }
      if (mac != nullptr) {
        std::memcpy(be.mac, mac->bytes.data(), 6);
      }
      be.address = bc.address;
      be.port = bc.port;
      BackendHealth health;
      if (auto it = rt.health.find(backendRef(sc, bc)); it != rt.health.end()) {
        health = it->second;
      }
      // Only an up backend is in the table; the others keep their id (and their flows, but for
      // a down one whose service reschedules).
      if (health.maintenance) {
        be.state = BackendState::kMaintenance;
      } else if (!health.up) {
        be.state = BackendState::kDown;
      } else if (mac == nullptr) {
        be.state = BackendState::kUnresolved;
      } else if (bc.weight == 0) {
        be.state = BackendState::kDrained;
      }
      if ((be.state == BackendState::kDown || be.state == BackendState::kMaintenance) &&
          sc.on_backend_down == DownPolicy::kReschedule) {
        be.flags |= LB_BACKEND_F_RESCHEDULE;
      }
      // A SYN is a new connection whatever the flow table remembers of its ports: one pinned to
      // a backend that cannot serve it would be refused, or sent to a dead host, until the old
      // entry expired (minutes under "keep"). A drained backend still serves: a SYN on an open
      // flow of it may be a retransmission, and stays (IPVS keeps a weight-0 destination's
      // connections the same way unless expire_nodest_conn is set).
      if (be.state == BackendState::kDown || be.state == BackendState::kMaintenance ||
          be.state == BackendState::kUnresolved) {
        be.flags |= LB_BACKEND_F_NO_NEW;
      }
      const uint32_t table_weight = be.state == BackendState::kUp ? bc.weight : 0;
      // The Maglev key is the backend's endpoint alone, so every host (and the XDP path) that
      // has the same backends builds the same table whatever ids it handed out.
      mb.push_back({bid, maglevBackendKey(bc.address, bc.port), table_weight});
      if (sc.forwarding == Forwarding::kNat) {
        snap->nat_reply_map.insert(bk, {sid, bid});
      }
    }
    // What the table depends on: each backend (id and epoch name its endpoint) with its weight,
    // in id order, and the table size. Equal inputs, equal table.
    std::vector<std::pair<uint64_t, uint64_t>> pairs;
    for (const MaglevBackend& b : mb) {
      pairs.emplace_back(uint64_t{b.id} << 32 | snap->backends[b.id].epoch, b.weight);
    }
    std::sort(pairs.begin(), pairs.end());
    std::vector<uint64_t> inputs;
    for (const auto& [id_epoch, weight] : pairs) {
      inputs.push_back(id_epoch);
      inputs.push_back(weight);
    }
    inputs.push_back(sc.table_size);
    if (previous != nullptr && sid < previous->services.size() &&
        previous->services[sid].present && previous->services[sid].maglev_inputs == inputs) {
      se.maglev = previous->services[sid].maglev;  // unchanged: share, do not rebuild
    } else {
      jobs.push_back({sid, std::move(mb), sc.table_size});
    }
    se.maglev_inputs = std::move(inputs);
    se.backend_ids = assigned.backend_ids[i];
    snap->service_map.insert(se.key, {sid, 0});
    snap->vip_addresses.insert(makeEndpointKey(sc.vip, 0, 0), {sid, 0});
  }

  // Most of a start-up: 1,000 services at M = 65,537 take about a millisecond each. The threads
  // inherit the calling thread's CPU affinity: under DPDK the control thread is pinned to the
  // main lcore by rte_eal_init, so they share its core and never preempt a polling worker (the
  // build is then serial in effect: 1,000 services in about 0.8 s on 1 thread here).
  const unsigned threads = table_threads != 0 ? table_threads
                                              : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::vector<uint32_t>> tables = buildTables(jobs, threads);
  for (size_t j = 0; j < jobs.size(); ++j) {
    snap->services[jobs[j].service_id].maglev = MaglevSlots(std::move(tables[j]));
  }
  return snap;
}

}  // namespace sluice
