#include "dataplane/replay.h"
#include "dataplane/replay_report.h"

#include "sluice_config.h"
#ifdef SLUICE_HAS_XDP
#include "xdp/xdp_replay.h"
#endif

#include <fcntl.h>
#include <sys/stat.h>
#include <pcap/pcap.h>
#include <unistd.h>

#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "control/config.h"
#include "control/snapshot_builder.h"
#include "dataplane/eal.h"
#include "dataplane/packet.h"
#include "dataplane/stats.h"
#include "dataplane/worker.h"

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

std::string keyEndpoint(const uint32_t* addr, uint16_t port_be, uint8_t family) {
  return formatEndpoint(IpAddress::fromWords(family, addr), ntohs(port_be));
}

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

namespace {

/**
 * Software RSS for a replay with several workers: split the capture into one file per queue by
 * the flow hash of each packet's 5-tuple, as a NIC's RSS would (and, like RSS with the usual key,
 * not symmetric: a NAT reply usually lands on another worker than its client's packets).
 * Frames that do not parse go to queue 0, where the pipeline counts them.
 */
std::vector<std::string> splitCapture(const std::string& in, const std::string& dir, uint32_t n) {
  char err[PCAP_ERRBUF_SIZE] = {};
  pcap_t* p = pcap_open_offline_with_tstamp_precision(in.c_str(), PCAP_TSTAMP_PRECISION_NANO, err);
  if (p == nullptr) {
    throw ReplayInputError(fmt::format("cannot read capture {}: {}", in, err));
  }
  std::vector<std::string> files;
  std::vector<pcap_dumper_t*> dumpers;
  for (uint32_t q = 0; q < n; ++q) {
    files.push_back(fmt::format("{}/in{}.pcap", dir, q));
    dumpers.push_back(pcap_dump_open(p, files.back().c_str()));
    if (dumpers.back() == nullptr) {
      throw ReplayInputError(fmt::format("cannot write {}: {}", files.back(), pcap_geterr(p)));
    }
  }
  pcap_pkthdr* hdr = nullptr;
  const u_char* data = nullptr;
  while (pcap_next_ex(p, &hdr, &data) == 1) {
    ParsedPacket parsed;
    uint32_t q = 0;
    if (parsePacket(data, hdr->caplen, hdr->len, parsed) == kParseOk) {
      q = lb_flow_hash(&parsed.key) % n;
    }
    pcap_dump(reinterpret_cast<u_char*>(dumpers[q]), hdr, data);
  }
  for (pcap_dumper_t* d : dumpers) {
    pcap_dump_close(d);
  }
  pcap_close(p);
  return files;
}

/** Merge the workers' output captures into one, in transmit-time order. */
void mergeCaptures(const std::vector<std::string>& parts, const std::string& out) {
  struct Rec {
    pcap_pkthdr hdr;
    std::vector<u_char> data;
  };
  std::vector<Rec> all;
  char err[PCAP_ERRBUF_SIZE] = {};
  for (const std::string& f : parts) {
    pcap_t* p = pcap_open_offline_with_tstamp_precision(f.c_str(), PCAP_TSTAMP_PRECISION_NANO, err);
    if (p == nullptr) {
      throw DpdkError(fmt::format("cannot read worker output {}: {}", f, err));
    }
    pcap_pkthdr* hdr = nullptr;
    const u_char* data = nullptr;
    while (pcap_next_ex(p, &hdr, &data) == 1) {
      all.push_back({*hdr, std::vector<u_char>(data, data + hdr->caplen)});
    }
    pcap_close(p);
  }
  std::stable_sort(all.begin(), all.end(), [](const Rec& a, const Rec& b) {
    return std::tie(a.hdr.ts.tv_sec, a.hdr.ts.tv_usec) < std::tie(b.hdr.ts.tv_sec, b.hdr.ts.tv_usec);
  });
  pcap_t* dead = pcap_open_dead_with_tstamp_precision(DLT_EN10MB, 65535, PCAP_TSTAMP_PRECISION_NANO);
  pcap_dumper_t* d = pcap_dump_open(dead, out.c_str());
  if (d == nullptr) {
    const std::string why = pcap_geterr(dead);
    pcap_close(dead);
    throw DpdkError(fmt::format("cannot write {}: {}", out, why));
  }
  for (const Rec& r : all) {
    pcap_dump(reinterpret_cast<u_char*>(d), &r.hdr, r.data.data());
  }
  pcap_dump_close(d);
  pcap_close(dead);
}

/** A temporary directory removed with everything in it when the object goes. */
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/sluice-replay-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      throw ReplayInputError(fmt::format("cannot create a temporary directory: {}", std::strerror(errno)));
    }
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace

int runReplay(const ReplayOptions& opts) {
  Config config;
  uint64_t capture_packets = 0;
  const uint32_t nworkers = opts.workers;
  std::unique_ptr<TempDir> tmp;
  std::vector<std::string> in_files{opts.in_pcap};
  std::vector<std::string> out_files{opts.out_pcap};
  try {
    config = opts.config_path.empty() ? parseConfig(defaultConfigText(), "<built-in default>")
                                      : loadConfigFile(opts.config_path);
    if (opts.dataplane != "dpdk" && opts.dataplane != "xdp") {
      throw ReplayInputError(fmt::format("--dataplane must be dpdk or xdp, not {:?}", opts.dataplane));
    }
    if (opts.dataplane == "xdp" && nworkers != 1) {
      throw ReplayInputError("--workers applies to the DPDK data path only");
    }
    if (nworkers < 1 || nworkers > kMaxReplayWorkers) {
      throw ReplayInputError(
          fmt::format("--workers must be between 1 and {}, not {}", kMaxReplayWorkers, nworkers));
    }
    checkDevargPath("--in", opts.in_pcap);
    checkDevargPath("--out", opts.out_pcap);
    capture_packets = checkCapture(opts.in_pcap);
    checkWritable(opts.out_pcap, opts.in_pcap);
    if (nworkers > 1 && opts.dataplane == "dpdk") {
      tmp = std::make_unique<TempDir>();
      in_files = splitCapture(opts.in_pcap, tmp->path(), nworkers);
      out_files.clear();
      for (uint32_t q = 0; q < nworkers; ++q) {
        out_files.push_back(fmt::format("{}/out{}.pcap", tmp->path(), q));
      }
    }
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "sluiced replay: bad configuration: %s\n", e.what());
    return 2;
  } catch (const ReplayInputError& e) {
    std::fprintf(stderr, "sluiced replay: %s\n", e.what());
    return 2;
  }

  if (opts.dataplane == "xdp") {
#ifdef SLUICE_HAS_XDP
    return runXdpReplay(opts, config, capture_packets);
#else
    std::fprintf(stderr, "sluiced replay: this sluiced was built without the XDP data path\n");
    return 2;
#endif
  }

  // One port with a queue pair per worker: net_pcap gives queue q the q-th rx_pcap and tx_pcap.
  std::string vdev = "net_pcap_replay";
  for (uint32_t q = 0; q < nworkers; ++q) {
    vdev += fmt::format(",rx_pcap={},tx_pcap={}", in_files[q], out_files[q]);
  }
  // Lcore 0 is the main lcore; with several workers, worker i runs on lcore i + 1. Lcores are
  // spread over the CPUs there are (a replay is correct, if slower, with more workers than CPUs).
  const long ncpu = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
  std::string lcores = "0@0";
  if (nworkers > 1) {
    for (uint32_t w = 1; w <= nworkers; ++w) {
      lcores += fmt::format(",{}@{}", w, w % ncpu);
    }
  }
  // No hugepages, no PCI, no shared files: a replay needs nothing of the host and can run
  // beside a live sluiced or another replay.
  std::vector<std::string> eal = {"sluiced", "--no-shconf", "--no-huge", "--no-pci",
                                  fmt::format("--file-prefix=sluice-replay-{}", getpid()),
                                  "-m", std::to_string(256 + 64 * nworkers),
                                  "--lcores", lcores, "--log-level", "*:error", "--vdev", vdev};
  eal.insert(eal.end(), opts.eal_args.begin(), opts.eal_args.end());

  try {
    Eal env(eal);
    uint16_t port_id = 0;
    if (rte_eth_dev_get_port_by_name("net_pcap_replay", &port_id) != 0) {
      throw DpdkError("the pcap replay port did not come up");
    }
    rte_mempool* pool =
        createMbufPool("replay_mbufs", 4096 * nworkers + 4095, static_cast<int>(rte_socket_id()));
    PortConfig pc;
    pc.port_id = port_id;
    pc.queues = static_cast<uint16_t>(nworkers);
    pc.pool = pool;
    const PortInfo pinfo = startPort(pc);

    IdRegistry ids;
    PortContext port_ctx;
    std::memcpy(port_ctx.mac, pinfo.mac, 6);
    std::atomic<bool> stop{false};
    std::vector<std::unique_ptr<Worker>> workers;
    {
      SnapshotSlot slot(nworkers);
      slot.publish(buildSnapshot(config, ids, 1));
      WorkerOptions wo;
      wo.flow_capacity = config.dataplane.flow_table_size;
      wo.max_backend_ids = kMaxBackendIds;
      wo.packet_clock = true;
      wo.stop_when_idle = true;
      for (uint32_t w = 0; w < nworkers; ++w) {
        workers.push_back(std::make_unique<Worker>(
            w, wo, std::vector<RxQueueRef>{{port_id, static_cast<uint16_t>(w), &port_ctx}}, slot,
            stop));
      }
      if (nworkers == 1) {
        workers[0]->run();  // a single worker runs on the main lcore
      } else {
        unsigned lcore = rte_get_next_lcore(-1, 1, 0);
        for (uint32_t w = 0; w < nworkers; ++w, lcore = rte_get_next_lcore(lcore, 1, 0)) {
          if (int rc = rte_eal_remote_launch(Worker::launch, workers[w].get(), lcore); rc != 0) {
            stop.store(true);
            rte_eal_mp_wait_lcore();
            throw DpdkError(fmt::format("cannot start worker {} on lcore {}", w, lcore));
          }
        }
        rte_eal_mp_wait_lcore();
      }
      stopPort(port_id);  // flushes and closes the output captures
      if (nworkers > 1) {
        mergeCaptures(out_files, opts.out_pcap);
      }

      const Snapshot& snap = *slot.current();
      std::vector<const Pipeline*> pipelines;
      for (const auto& w : workers) {
        pipelines.push_back(&w->pipeline());
      }
      const StatsTotals totals = collectStats(pipelines, snap);
      std::vector<FlowRow> rows;
      if (opts.list_flows) {
        for (const auto& w : workers) {
          w->pipeline().flows().forEach(0, [&](const FlowEntry& e) {
            rows.push_back({e.key, e.service_id, e.backend_id, w->index()});
          });
        }
      }
      printReport(report(snap, totals, capture_packets, opts.list_flows ? &rows : nullptr),
                  opts.json, opts.in_pcap, opts.out_pcap);
      workers.clear();
    }
    rte_mempool_free(pool);
    return 0;
  } catch (const DpdkError& e) {
    std::fprintf(stderr, "sluiced replay: %s\n", e.what());
    return 1;
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "sluiced replay: bad configuration: %s\n", e.what());
    return 2;
  }
}

}  // namespace sluice
