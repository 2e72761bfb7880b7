#include "control/stats_json.h"

#include <arpa/inet.h>

#include "common/lb_abi.h"
#include "common/net.h"

namespace sluice {

namespace {

using nlohmann::json;

/** The counters a service and a backend share, under the same names. */
void addCounters(json& j, const BackendTotals& c) {
  j["packets"] = c.packets;
  j["bytes"] = c.bytes;
  j["new_flows"] = c.flows;
  j["active_flows"] = c.active;
  j["reply_packets"] = c.reply_packets;
  j["reply_bytes"] = c.reply_bytes;
}

std::string keyEndpoint(const uint32_t* addr, uint16_t port_be, uint8_t family) {
  return formatEndpoint(IpAddress::fromWords(family, addr), ntohs(port_be));
}

}  // namespace

json backendJson(const BackendEntry& b, const BackendTotals& c) {
  MacAddress m;
  std::copy(b.mac, b.mac + 6, m.bytes.begin());
  json j = {{"address", b.address.str()},
            {"port", b.port},
            {"mac", m.isZero() ? json(nullptr) : json(m.str())},
            {"weight", b.weight},
            {"state", backendStateName(b.state)},
            {"reschedules_flows", (b.flags & LB_BACKEND_F_RESCHEDULE) != 0}};
  addCounters(j, c);
  return j;
}

json servicesJson(const Snapshot& snap, const StatsTotals& t) {
  json services = json::array();
  for (const ServiceStats& ss : perService(snap, t)) {
    const ServiceEntry& s = *ss.service;
    json backends = json::array();
    for (const auto& [b, c] : ss.backends) {
      backends.push_back(backendJson(*b, c));
    }
    json j = {{"name", s.name},
              {"vip", s.vip.str()},
              {"port", s.port},
              {"protocol", protocolName(s.protocol)},
              {"forwarding", forwardingName(s.forwarding)},
              {"scheduler", "maglev"},  // the only scheduler yet
              {"table_size", s.maglev.size()}};
    addCounters(j, ss.total);
    j["backends"] = std::move(backends);
    services.push_back(std::move(j));
  }
  return services;
}

json workerJson(const WorkerTotals& w, bool with_index) {
  json drops = json::object();
  for (int r = 0; r < LB_DROP__COUNT; ++r) {
    drops[lb_drop_reason_name(r)] = w.drops[r];
  }
  json j = json::object();
  if (with_index) {
    j["worker"] = w.worker;
  }
  j["packets_in"] = w.rx_packets;
  j["packets_out"] = w.tx_packets;
  j["dropped"] = w.dropped;
  j["drops"] = std::move(drops);
  j["reply_packets"] = w.reply_packets;
  j["flows_created"] = w.flows_created;
  j["flows_expired"] = w.flows_expired;
  j["flows_syn_expired"] = w.flows_syn_expired;
  j["flows_evicted"] = w.flows_evicted;
  j["flows_syn_evicted"] = w.flows_syn_evicted;
  j["flows_active"] = w.flows_active;
  j["new_flows_unpinned"] = w.new_flows_unpinned;
  j["flows_rescheduled"] = w.flows_rescheduled;
  j["passed"] = w.passed;
  j["answered"] = w.answered;
  j["icmp_forwarded"] = w.icmp_forwarded;
  j["host_sent"] = w.host_sent;
  return j;
}

json workersJson(const StatsTotals& t) {
  json workers = json::array();
  for (const WorkerTotals& w : t.workers) {
    workers.push_back(workerJson(w, true));
  }
  return workers;
}

json flowJson(const Snapshot& snap, const FlowRow& f) {
  if (f.backend_id >= snap.backends.size() || f.service_id >= snap.services.size() ||
      !snap.backends[f.backend_id].present || !snap.services[f.service_id].present) {
    return nullptr;
  }
  const ServiceEntry& s = snap.services[f.service_id];
  const BackendEntry& b = snap.backends[f.backend_id];
  return {{"protocol", f.key.proto == LB_PROTO_TCP ? "tcp" : "udp"},
          {"client", keyEndpoint(f.key.src, f.key.sport, f.key.family)},
          {"vip", IpAddress::fromWords(f.key.family, f.key.dst).str()},
          {"port", ntohs(f.key.dport)},
          {"service", s.name},
          {"backend", formatEndpoint(b.address, b.port)},
          {"worker", f.worker}};
}

}  // namespace sluice
