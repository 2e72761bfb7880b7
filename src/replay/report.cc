#include "replay/report.h"

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

#include "control/stats_json.h"

namespace sluice {

/** Read the whole capture once: a missing, non-Ethernet or corrupt file fails here, clearly. */
uint64_t checkCapture(const std::string& path, CaptureCut* cut) {
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
    if (cut != nullptr && hdr->caplen < hdr->len) {
      ++cut->packets;
    }
  }
  if (cut != nullptr) {
    cut->snaplen = static_cast<uint32_t>(pcap_snapshot(p));
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

nlohmann::json report(const Snapshot& snap, const StatsTotals& t, uint64_t capture_packets,
                      const std::vector<FlowRow>* flow_rows) {
  using nlohmann::json;
  json j = {{"schema", kJsonSchema},
            {"capture_packets", capture_packets},
            {"services", servicesJson(snap, t)},
            {"workers", workersJson(t)},
            {"total", workerJson(t.all, false)}};
  if (flow_rows != nullptr) {
    json flows = json::array();
    for (const FlowRow& f : *flow_rows) {
      json row = flowJson(snap, f);
      if (!row.is_null()) {
        flows.push_back(std::move(row));
      }
    }
    // By service endpoint, then client: the same order whichever worker held the flow.
    std::sort(flows.begin(), flows.end(), [](const json& a, const json& b) {
      return std::make_tuple(a["vip"].get_ref<const std::string&>(), a["port"].get<uint16_t>(),
                             a["client"].get_ref<const std::string&>()) <
             std::make_tuple(b["vip"].get_ref<const std::string&>(), b["port"].get<uint16_t>(),
                             b["client"].get_ref<const std::string&>());
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
  const auto& total = j["total"];
  auto n = [](const nlohmann::json& o, const char* key) { return o[key].get<uint64_t>(); };
  std::string s;
  s += fmt::format("replayed {}: {} packets in, {} out, {} dropped\n", in, n(total, "packets_in"),
                   n(total, "packets_out"), n(total, "dropped"));
  s += fmt::format("output written to {}\n", out);
  std::string drops;
  for (const auto& [reason, count] : total["drops"].items()) {
    if (count.get<uint64_t>() != 0) {
      drops += fmt::format("{}{}={}", drops.empty() ? "" : " ", reason, count.get<uint64_t>());
    }
  }
  s += fmt::format("drops by reason: {}\n", drops.empty() ? "none" : drops);
  s += fmt::format("flows: {} created, {} expired, {} evicted, {} rescheduled, {} active at end\n",
                   n(total, "flows_created"), n(total, "flows_expired"), n(total, "flows_evicted"),
                   n(total, "flows_rescheduled"), n(total, "flows_active"));
  if (n(total, "flows_syn_expired") + n(total, "flows_syn_evicted") +
          n(total, "new_flows_unpinned") != 0) {
    s += fmt::format("unestablished flows (SYN only): {} expired, {} evicted; {} new flows not "
                     "inserted (rate guard, or no room)\n",
                     n(total, "flows_syn_expired"), n(total, "flows_syn_evicted"),
                     n(total, "new_flows_unpinned"));
  }
  s += "\n";
  s += fmt::format("{:<28} {:<5} {:>10} {:>8} {:>10}\n", "service / backend", "mode", "packets",
                   "flows", "replies");
  auto endpoint = [](const std::string& addr, int port) {
    return addr.find(':') != std::string::npos ? fmt::format("[{}]:{}", addr, port)
                                               : fmt::format("{}:{}", addr, port);
  };
  for (const auto& svc : j["services"]) {
    s += fmt::format("{:<28} {:<5} {:>10} {:>8} {:>10}\n",
                     fmt::format("{} {}/{}", svc["name"].get<std::string>(),
                                 endpoint(svc["vip"].get<std::string>(), svc["port"].get<int>()),
                                 svc["protocol"].get<std::string>()),
                     svc["forwarding"].get<std::string>(), n(svc, "packets"), n(svc, "new_flows"),
                     n(svc, "reply_packets"));
    for (const auto& b : svc["backends"]) {
      s += fmt::format("  -> {:<23} {:<5} {:>10} {:>8} {:>10}\n",
                       endpoint(b["address"].get<std::string>(), b["port"].get<int>()),
                       fmt::format("w{}", b["weight"].get<uint32_t>()), n(b, "packets"),
                       n(b, "new_flows"), n(b, "reply_packets"));
    }
  }
  if (j.contains("flow_list")) {
    s += "\nflows:\n";
    for (const auto& fl : j["flow_list"]) {
      s += fmt::format("  {} {} -> {} => {} ({})\n", fl["protocol"].get<std::string>(),
                       fl["client"].get<std::string>(),
                       endpoint(fl["vip"].get<std::string>(), fl["port"].get<int>()),
                       fl["backend"].get<std::string>(), fl["service"].get<std::string>());
    }
  }
  std::fputs(s.c_str(), stdout);
}

}  // namespace sluice
