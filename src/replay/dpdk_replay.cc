#include "replay/dpdk_replay.h"

#include <pcap/pcap.h>
#include <unistd.h>

#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "control/snapshot_builder.h"
#include "dataplane/dpdk_dataplane.h"
#include "dataplane/eal.h"
#include "dataplane/packet.h"
#include "dataplane/worker.h"
#include "replay/report.h"

namespace sluice {

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

int runDpdkReplay(const ReplayOptions& opts, const Config& config, uint64_t capture_packets) {
  const uint32_t nworkers = opts.workers;
  std::unique_ptr<TempDir> tmp;
  std::vector<std::string> in_files{opts.in_pcap};
  std::vector<std::string> out_files{opts.out_pcap};
  if (nworkers > 1) {
    try {
      tmp = std::make_unique<TempDir>();
      in_files = splitCapture(opts.in_pcap, tmp->path(), nworkers);
    } catch (const ReplayInputError& e) {
      std::fprintf(stderr, "sluiced replay: %s\n", e.what());
      return 2;
    }
    out_files.clear();
    for (uint32_t q = 0; q < nworkers; ++q) {
      out_files.push_back(fmt::format("{}/out{}.pcap", tmp->path(), q));
    }
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
    port_ctx.accept_any_mac = true;
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
