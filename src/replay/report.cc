#include "replay/report.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <pcap/pcap.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <tuple>

#include "common/net.h"
#include "control/config.h"

namespace sluice {

/** Read the whole capture once: a missing, non-Ethernet or corrupt file fails here, clearly. */
uint64_t checkCapture(const std::string& path) {
  char err[PCAP_ERRBUF_SIZE] = {};
  pcap_t* p = pcap_open_offline(path.c_str(), err);
  if (p == nullptr) {
    throw ReplayInputError(fmt::format("cannot read capture {}: {}", path, err));
  }
  if (pcap_datalink(p) != DLT_EN10MB) {
    const int dlt = pcap_datalink(p);
    pcap_close(p);
    throw ReplayInputError(fmt::format(
        "capture {} has link type {} ({}); sluiced replays Ethernet (EN10MB) captures", path,
        pcap_datalink_val_to_name(dlt) ? pcap_datalink_val_to_name(dlt) : "?", dlt));
  }
  uint64_t n = 0;
  pcap_pkthdr* hdr = nullptr;
  const u_char* data = nullptr;
  int rc;
  while ((rc = pcap_next_ex(p, &hdr, &data)) == 1) {
    ++n;
  }
  if (rc == PCAP_ERROR) {
    const std::string why = pcap_geterr(p);
    pcap_close(p);
    throw ReplayInputError(
        fmt::format("capture {} is corrupt after {} packets: {}", path, n, why));
  }
  pcap_close(p);
  return n;
}

void checkDevargPath(const std::string& what, const std::string& path) {
  if (path.empty()) {
    throw ReplayInputError(fmt::format("{} is required", what));
  }
  if (path.find_first_of(",=") != std::string::npos) {
    throw ReplayInputError(fmt::format(
        "{} path {:?} contains ',' or '=', which DPDK device arguments cannot carry; rename it",
        what, path));
  }
}

void checkWritable(const std::string& path, const std::string& in) {
  // Refuse to truncate the capture being replayed (the same path, a link to it, ...).
  struct stat in_st {};
  struct stat out_st {};
  if (::stat(in.c_str(), &in_st) == 0 && ::stat(path.c_str(), &out_st) == 0 &&
      in_st.st_dev == out_st.st_dev && in_st.st_ino == out_st.st_ino) {
    throw ReplayInputError(fmt::format("--out {} is the input capture; choose another file", path));
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    throw ReplayInputError(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  }
  ::close(fd);
}

namespace {

std::string keyEndpoint(const uint32_t* addr, uint16_t port_be, uint8_t family) {
  return formatEndpoint(IpAddress::fromWords(family, addr), ntohs(port_be));
}

}  // namespace

nlohmann::json report(const Snapshot& snap, const StatsTotals& t, uint64_t capture_packets,
                      const std::vector<FlowRow>* flow_rows) {
  using nlohmann::json;
  json j;
  j["packets_in"] = t.all.rx_packets;
  j["packets_out"] = t.all.tx_packets;
  j["capture_packets"] = capture_packets;
  json dropped = json::object();
  for (int r = 0; r < LB_DROP__COUNT; ++r) {
    dropped[lb_drop_reason_name(r)] = t.all.drops[r];
  }
  j["dropped"] = dropped;
  j["dropped_total"] = t.all.dropped;
  j["flows"] = {{"created", t.all.flows_created},
                {"expired", t.all.flows_expired},
                {"evicted", t.all.flows_evicted},
                {"active", t.all.flows_active},
                {"rescheduled", t.all.flows_rescheduled}};
  json services = json::array();
  json backends = json::array();
  for (const ServiceStats& ss : perService(snap, t)) {
    const ServiceEntry& s = *ss.service;
    for (const auto& [b, c] : ss.backends) {
      backends.push_back({{"service", s.name},
                          {"address", b->address.str()},
                          {"port", b->port},
                          {"weight", b->weight},
                          {"packets", c.packets},
                          {"bytes", c.bytes},
                          {"flows", c.flows},
                          {"reply_packets", c.reply_packets},
                          {"reply_bytes", c.reply_bytes}});
    }
    services.push_back({{"name", s.name},
                        {"vip", s.vip.str()},
                        {"port", s.port},
                        {"protocol", protocolName(s.protocol)},
                        {"forwarding", forwardingName(s.forwarding)},
                        {"packets", ss.total.packets},
                        {"flows", ss.total.flows},
                        {"reply_packets", ss.total.reply_packets}});
  }
  j["services"] = services;
  json per_worker = json::array();
  for (const WorkerTotals& w : t.workers) {
    per_worker.push_back({{"worker", w.worker},
                          {"packets_in", w.rx_packets},
                          {"packets_out", w.tx_packets},
                          {"dropped", w.dropped},
                          {"reply_packets", w.reply_packets},
                          {"flows_created", w.flows_created}});
  }
  j["workers"] = per_worker;
  j["backends"] = backends;
  if (flow_rows != nullptr) {
    json flows = json::array();
    for (const FlowRow& f : *flow_rows) {
      if (f.backend_id >= snap.backends.size() || f.service_id >= snap.services.size()) {
        continue;
      }
      const BackendEntry& b = snap.backends[f.backend_id];
      flows.push_back({{"client", keyEndpoint(f.key.src, f.key.sport, f.key.family)},
                       {"vip", keyEndpoint(f.key.dst, f.key.dport, f.key.family)},
                       {"protocol", f.key.proto == LB_PROTO_TCP ? "tcp" : "udp"},
                       {"service", snap.services[f.service_id].name},
                       {"backend", formatEndpoint(b.address, b.port)},
                       {"worker", f.worker}});
    }
    std::sort(flows.begin(), flows.end(), [](const json& a, const json& b) {
      return std::tie(a["vip"].get_ref<const std::string&>(), a["client"].get_ref<const std::string&>()) <
             std::tie(b["vip"].get_ref<const std::string&>(), b["client"].get_ref<const std::string&>());
    });
    j["flow_list"] = flows;
  }
  return j;
}

void printReport(const nlohmann::json& j, bool as_json, const std::string& in,
                 const std::string& out) {
  if (as_json) {
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::string s;
  s += fmt::format("replayed {}: {} packets in, {} out, {} dropped\n", in,
                   j["packets_in"].get<uint64_t>(), j["packets_out"].get<uint64_t>(),
                   j["dropped_total"].get<uint64_t>());
  s += fmt::format("output written to {}\n", out);
  std::string drops;
  for (const auto& [reason, count] : j["dropped"].items()) {
    if (count.get<uint64_t>() != 0) {
      drops += fmt::format("{}{}={}", drops.empty() ? "" : " ", reason, count.get<uint64_t>());
    }
  }
  s += fmt::format("drops by reason: {}\n", drops.empty() ? "none" : drops);
  const auto& f = j["flows"];
  s += fmt::format("flows: {} created, {} expired, {} evicted, {} rescheduled, {} active at end\n",
                   f["created"].get<uint64_t>(), f["expired"].get<uint64_t>(),
                   f["evicted"].get<uint64_t>(), f["rescheduled"].get<uint64_t>(),
                   f["active"].get<uint64_t>());
  s += "\n";
  s += fmt::format("{:<28} {:<5} {:>10} {:>8} {:>10}\n", "service / backend", "mode", "packets",
                   "flows", "replies");
  for (const auto& svc : j["services"]) {
    const std::string name = svc["name"].get<std::string>();
    const std::string vip = svc["vip"].get<std::string>();
    const bool v6 = vip.find(':') != std::string::npos;
    s += fmt::format("{:<28} {:<5} {:>10} {:>8} {:>10}\n",
                     fmt::format("{} {}{}{}:{}/{}", name, v6 ? "[" : "", vip, v6 ? "]" : "",
                                 svc["port"].get<int>(), svc["protocol"].get<std::string>()),
                     svc["forwarding"].get<std::string>(), svc["packets"].get<uint64_t>(),
                     svc["flows"].get<uint64_t>(), svc["reply_packets"].get<uint64_t>());
    for (const auto& b : j["backends"]) {
      if (b["service"] != svc["name"]) {
        continue;
      }
      const std::string addr = b["address"].get<std::string>();
      const bool b6 = addr.find(':') != std::string::npos;
      s += fmt::format("  -> {:<23} {:<5} {:>10} {:>8} {:>10}\n",
                       fmt::format("{}{}{}:{}", b6 ? "[" : "", addr, b6 ? "]" : "",
                                   b["port"].get<int>()),
                       fmt::format("w{}", b["weight"].get<uint32_t>()),
                       b["packets"].get<uint64_t>(), b["flows"].get<uint64_t>(),
                       b["reply_packets"].get<uint64_t>());
    }
  }
  if (j.contains("flow_list")) {
    s += "\nflows:\n";
    for (const auto& fl : j["flow_list"]) {
      s += fmt::format("  {} {} -> {} => {} ({})\n", fl["protocol"].get<std::string>(),
                       fl["client"].get<std::string>(), fl["vip"].get<std::string>(),
                       fl["backend"].get<std::string>(), fl["service"].get<std::string>());
    }
  }
  std::fputs(s.c_str(), stdout);
}

}  // namespace sluice
