// sluice-bench: packets per second through one worker core, against an I/O floor measured in the
// same run on the same virtual port.
//
//   (a) io-floor: rx_burst -> rewrite both MACs -> tx_burst, the least a DR forwarder does;
//   (b) dr / nat: the real Worker poll loop (parse, service lookup, flow table, Maglev, rewrite)
//       with every flow of the capture already established.
//
// The port is DPDK's net_pcap with infinite_rx=1: it preloads a generated capture of N one-packet
// flows and replays it in a loop, copying each frame into a fresh mbuf; transmit frees the mbuf.
// That copy is part of both (a) and (b), so the ratio b/a is what Sluice costs on top of the
// cheapest possible forwarder. Each figure is the min / median / max of several timed runs.
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <thread>

#include "control/config.h"
#include "sluice_config.h"
#include "tools/bench/report.h"
#ifdef SLUICE_HAS_XDP
#include "tools/bench/xdp_bench.h"
#endif
#include "control/control_plane.h"
#include "control/snapshot_builder.h"
#include "dataplane/dpdk_dataplane.h"
#include "dataplane/eal.h"
#include "dataplane/worker.h"
#include "tools/bench/flood_bench.h"
#include "tools/bench/maglev_bench.h"
#include "tools/pktgen/traffic.h"

namespace {

using namespace sluice;

struct FloorLoop {
  uint16_t port = 0;
  uint8_t src_mac[6] = {};
  uint8_t dst_mac[6] = {0x02, 0, 0, 0, 0x01, 0x11};
  std::atomic<bool>* stop = nullptr;
  uint64_t packets = 0;

  static int run(void* arg) {
    auto* self = static_cast<FloorLoop*>(arg);
    std::array<rte_mbuf*, 32> mbufs;
    uint64_t n_total = 0;
    while (!self->stop->load(std::memory_order_relaxed)) {
      const uint16_t n = rte_eth_rx_burst(self->port, 0, mbufs.data(), 32);
      for (uint16_t i = 0; i < n; ++i) {
        uint8_t* d = rte_pktmbuf_mtod(mbufs[i], uint8_t*);
        std::memcpy(d, self->dst_mac, 6);
        std::memcpy(d + 6, self->src_mac, 6);
      }
      uint16_t sent = rte_eth_tx_burst(self->port, 0, mbufs.data(), n);
      for (uint16_t i = sent; i < n; ++i) {
        rte_pktmbuf_free(mbufs[i]);
      }
      n_total += n;
    }
    self->packets += n_total;
    return 0;
  }
};

std::string configText(const char* forwarding, uint32_t backends, const std::string& vip,
                       const char* protocol = "udp", uint32_t new_flow_rate_limit = 0) {
  std::string s = fmt::format(
      "[dataplane]\nflow_table_size = {}\ngateway_mac = \"02:00:00:00:00:fe\"\n"
      "[flood]\nnew_flow_rate_limit = {}\n"
      "[[service]]\nname = \"bench\"\nvip = \"{}\"\nport = 80\nprotocol = \"{}\"\n"
      "forwarding = \"{}\"\n",
      1u << 21, new_flow_rate_limit, vip, protocol, forwarding);
  for (uint32_t i = 0; i < backends; ++i) {
    const std::string address = vip.find(':') != std::string::npos
                                    ? fmt::format("2001:db8:1::{:x}", i + 1)
                                    : fmt::format("10.1.{}.{}", i / 250, i % 250 + 1);
    s += fmt::format("[[service.backend]]\naddress = \"{}\"\nmac = \"02:00:00:01:{:02x}:{:02x}\"\n"
                     "weight = 100\n",
                     address, i / 256, i % 256);
    if (forwarding == std::string("nat")) {
      s += "port = 8080\n";
    }
  }
  return s;
}

struct Figures {
  std::vector<double> mpps;
  double median() const { return bench::spreadOf(mpps).median; }
  double min() const { return bench::spreadOf(mpps).min; }
  double max() const { return bench::spreadOf(mpps).max; }
};

/** Run fn on the worker lcore for `seconds`; return packets/s in millions. */
template <typename Launch, typename Count>
double timed(unsigned lcore, std::atomic<bool>& stop, double seconds, Launch launch, Count count) {
  stop.store(false);
  const uint64_t before = count();
  const uint64_t t0 = rte_get_tsc_cycles();
  launch(lcore);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  rte_eal_wait_lcore(lcore);
  const uint64_t t1 = rte_get_tsc_cycles();
  const double secs = static_cast<double>(t1 - t0) / static_cast<double>(rte_get_tsc_hz());
  return static_cast<double>(count() - before) / secs / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sluice-bench: Mpps of the Sluice pipeline vs an I/O floor, one worker core"};
  uint32_t flows = 100000;
  uint32_t backends = 10;
  uint32_t runs = 5;
  double seconds = 1.0;
  uint32_t frame = 64;
  bool ipv6 = false;
  app.add_option("--flows", flows, "Established flows (distinct 5-tuples in the loop)");
  app.add_option("--backends", backends, "Backends in the service")->check(CLI::Range(1, 1000));
  app.add_option("--runs", runs, "Timed runs per case")->check(CLI::Range(1, 50));
  app.add_option("--seconds", seconds, "Length of each timed run");
  app.add_option("--frame", frame, "Frame size in bytes, without FCS (>= 60 for IPv4 UDP)")
      ->check(CLI::Range(60, 1500));
  app.add_flag("--ipv6", ipv6, "IPv6 flows instead of IPv4");
  bool new_flows = false;
  uint32_t guard_rate = 125000;
  app.add_flag("--new-flows", new_flows,
               "Instead of established flows: every packet a TCP SYN of a flow whose entry is gone "
               "(--flows distinct SYNs, default 4 x --flow-table, replayed in a loop through a "
               "--flow-table entry table, default 65536, that fills and evicts), DR and NAT, and "
               "DR with the new-flow rate guard at --guard-rate; new flows per second against "
               "the I/O floor");
  app.add_option("--guard-rate", guard_rate,
                 "flood.new_flow_rate_limit of the guarded case (--new-flows)")
      ->check(CLI::Range(1, 100000000));
  bool publish = false;
  uint32_t changes = 50;
  app.add_flag("--publish", publish,
               "Instead: time table publishes (backend weight edits through the control plane) "
               "for services of 10, 100 and 1000 backends while the worker forwards traffic");
  app.add_option("--changes", changes, "Publishes timed per backend count (--publish)")
      ->check(CLI::Range(1, 100000));
  uint32_t flow_table = 1u << 20;
  app.add_option("--flow-table", flow_table, "Flow table entries of the worker (as [dataplane] flow_table_size)");
  bool xdp = false;
  app.add_flag("--xdp", xdp,
               "Instead: ns per packet of the XDP program (BPF_PROG_TEST_RUN) for a new flow, an "
               "established flow and a packet for no service, against a bare XDP_TX program");
  std::string katran;
  app.add_option("--katran", katran,
                 "With --xdp: also time Katran's balancer, this balancer.bpf.o (built by "
                 "tools/bench/build-katran.sh from a Katran tree), in the same passes on the same "
                 "frames, and compare")
      ->check(CLI::ExistingFile);
  bool flood = false;
  FloodBenchOptions fo;
  app.add_flag("--flood", flood,
               "Instead: a SYN flood of --flood-factor x --flow-table SYNs from random sources "
               "against --established established flows, on the DPDK pipeline and the XDP "
               "program: ns per flood packet against a new flow's, with and without the rate "
               "guard, and how many established flows keep their entries");
  app.add_option("--established", fo.established, "Established flows before the flood (--flood)");
  app.add_option("--flood-factor", fo.factor, "SYNs sent, in flow tables (--flood)")
      ->check(CLI::Range(1, 100));
  app.add_option("--rate-limit", fo.rate_limit,
                 "flood.new_flow_rate_limit of the guarded flood case (--flood)")
      ->check(CLI::Range(1, 100000000));
  app.add_option("--flood-pps", fo.flood_pps,
                 "The flood's packet clock in the guarded case: SYNs per second (--flood)")
      ->check(CLI::Range(1, 1000000000));
  bool maglev = false;
  MaglevBenchOptions mo;
  app.add_flag("--maglev", maglev,
               "Instead: time Maglev table builds (N = 10, 100, 1000 backends, M = 65537) against "
               "a one-permutation floor, and the start-up of --services services of 10 backends");
  app.add_option("--services", mo.services, "Services of the start-up case (--maglev)")
      ->check(CLI::Range(1, 10000));
  bool json = false;
  app.add_flag("--json", json,
               "Print one JSON object per case and line on stdout (the tables go to stderr)");
  CLI11_PARSE(app, argc, argv);
  if (json) {
    bench::startJson(xdp       ? "xdp"
                     : flood   ? "flood"
                     : publish ? "publish"
                     : maglev  ? "maglev"
                               : "dpdk");
  }
  if (maglev) {
    mo.runs = app.count("--runs") != 0 ? runs : mo.runs;
    return runMaglevBench(mo);
  }
  if (!katran.empty() && !xdp) {
    std::fprintf(stderr, "sluice-bench: --katran goes with --xdp\n");
    return 2;
  }
  if (flood) {
    fo.table = app.count("--flow-table") != 0 ? flow_table : 65536;
    fo.runs = app.count("--runs") != 0 ? runs : 3;
    return runFloodBench(fo);
  }
  if (xdp) {
#ifdef SLUICE_HAS_XDP
    return runXdpBench(std::min<uint32_t>(flows, 20000), runs, katran);
#else
    std::fprintf(stderr, "sluice-bench: built without the XDP data path\n");
    return 1;
#endif
  }

  if (rte_lcore_count() == 0 && sysconf(_SC_NPROCESSORS_ONLN) < 2) {
    std::fprintf(stderr, "sluice-bench needs two CPUs (a control core and a worker core)\n");
    return 1;
  }
  if (new_flows) {
    flow_table = app.count("--flow-table") != 0 ? flow_table : 65536;
    flows = app.count("--flows") != 0 ? flows : 4 * flow_table - 1;  // (the pool: bit_ceil(flows + 1))
  }
  const std::string vip = ipv6 ? "2001:db8::80" : "192.0.2.80";
  char dir_tmpl[] = "/tmp/sluice-bench-XXXXXX";
  const std::string dir = mkdtemp(dir_tmpl);
  const std::string pcap = dir + "/flows.pcap";
  {
    pktgen::TrafficSpec t;
    t.vip = *IpAddress::parse(vip);
    t.vport = 80;
    // --new-flows: one TCP SYN per flow (a SYN carries no payload; the frame is the minimum)
    t.proto = new_flows ? LB_PROTO_TCP : LB_PROTO_UDP;
    t.flows = flows;
    t.packets_per_flow = 1;
    const uint32_t headers = 14 + (ipv6 ? 40 : 20) + 8;
    t.payload_bytes = frame > headers ? frame - headers : 0;
    pktgen::writePcap(pcap, pktgen::makeTraffic(t));
  }

  const uint32_t mbufs = std::bit_ceil(flows + 1) + 16383;
  const uint32_t mem_mb = static_cast<uint32_t>((uint64_t{mbufs} * 2560 >> 20) + 512);
  std::vector<std::string> eal = {"sluice-bench", "--no-shconf", "--no-huge", "--no-pci",
                                  fmt::format("--file-prefix=sluice-bench-{}", getpid()),
                                  "-m", std::to_string(mem_mb), "-l", "0,1",
                                  "--log-level", "*:error", "--vdev",
                                  fmt::format("net_pcap_bench,rx_pcap={},infinite_rx=1", pcap)};
  try {
    Eal env(eal);
    const unsigned worker_lcore = rte_get_next_lcore(-1, 1, 0);
    if (worker_lcore >= RTE_MAX_LCORE) {
      throw DpdkError("no worker lcore: the machine needs two CPUs");
    }
    uint16_t port = 0;
    if (rte_eth_dev_get_port_by_name("net_pcap_bench", &port) != 0) {
      throw DpdkError("the benchmark port did not come up");
    }
    rte_mempool* pool = createMbufPool("bench_mbufs", mbufs, static_cast<int>(rte_socket_id()));
    PortConfig pc;
    pc.port_id = port;
    pc.pool = pool;
    const PortInfo pinfo = startPort(pc);
    unlink(pcap.c_str());
    rmdir(dir.c_str());

    std::atomic<bool> stop{false};
    FloorLoop floor;
    floor.port = port;
    floor.stop = &stop;
    std::memcpy(floor.src_mac, pinfo.mac, 6);

    IdRegistry ids;
    SnapshotSlot slot(RTE_MAX_LCORE);
    PortContext ctx;
    std::memcpy(ctx.mac, pinfo.mac, 6);
    ctx.accept_any_mac = true;  // the generated traffic is addressed to a made-up port MAC
    WorkerOptions wo;
    wo.flow_capacity = flow_table;
    wo.max_backend_ids = kMaxBackendIds;
    Worker worker(0, wo, {{port, 0, &ctx}}, slot, stop);

    auto floorRun = [&] {
      return timed(worker_lcore, stop, seconds,
                   [&](unsigned l) { rte_eal_remote_launch(FloorLoop::run, &floor, l); },
                   [&] { return floor.packets; });
    };
    auto workerRun = [&] {
      return timed(worker_lcore, stop, seconds,
                   [&](unsigned l) { rte_eal_remote_launch(Worker::launch, &worker, l); },
                   [&] { return worker.pipeline().counters().rx_packets; });
    };

    if (publish) {
      std::printf("sluice-bench --publish: one service, a backend's weight edited %u times per "
                  "row; each publish = validate + build snapshot (the edited service's Maglev "
                  "table, M = 65537) + swap + RCU grace period, with the worker forwarding on "
                  "lcore %u\n\n%-10s %30s %30s\n",
                  changes, worker_lcore, "backends", "publish us min / median / max",
                  "of which build us");
      for (uint32_t n : {10u, 100u, 1000u}) {
        DpdkDataplaneHandle handle(slot, {&worker.pipeline()});
        ControlPlane control(parseConfig(configText("dr", n, vip), "bench"), "", handle);
        control.start();
        stop.store(false);
        rte_eal_remote_launch(Worker::launch, &worker, worker_lcore);
        Figures us;
        Figures build;
        for (uint32_t i = 0; i < changes; ++i) {
          const IpAddress addr = *IpAddress::parse(vip.find(':') != std::string::npos
                                                       ? fmt::format("2001:db8:1::{:x}", i % n + 1)
                                                       : fmt::format("10.1.{}.{}", (i % n) / 250,
                                                                     (i % n) % 250 + 1));
          const nlohmann::json r = control.handle({{"command", "backend.edit"},
                                                   {"service", "bench"},
                                                   {"address", addr.str()},
                                                   {"set", {{"weight", (i / n) % 2 == 0 ? 50 : 100}}}});
          if (!r.value("ok", false)) {
            throw DpdkError("publish failed: " + r.dump());
          }
          us.mpps.push_back(control.lastPublishMicros());
          build.mpps.push_back(control.lastBuildMicros());
        }
        stop.store(true);
        rte_eal_wait_lcore(worker_lcore);
        std::printf("%-10u %10.0f / %8.0f / %8.0f %10.0f / %8.0f / %8.0f\n", n, us.min(),
                    us.median(), us.max(), build.min(), build.median(), build.max());
        bench::jsonCase("publish", "us", us.mpps, "", 0, {{"backends", n}, {"table_size", 65537}});
        bench::jsonCase("build", "us", build.mpps, "", 0, {{"backends", n}, {"table_size", 65537}});
      }
      stopPort(port);
      return 0;
    }

    if (new_flows) {
      // Every packet a SYN whose flow's entry is gone: the capture holds more SYNs than the
      // table has entries, so by the time the loop comes back to one its unestablished entry has
      // been evicted by the SYNs after it (they evict each other first). A warm-up fills the
      // table, so the timed runs insert and evict on every packet, as a table under load does.
      std::printf("sluice-bench --new-flows: %u distinct %s TCP SYNs in a loop, a %u-entry flow "
                  "table (%u buckets of 8), %u backends, 1 worker (lcore %u), %u runs x %.1f s, "
                  "CPU %s, TSC %.2f GHz\n",
                  flows, ipv6 ? "IPv6" : "IPv4", worker.pipeline().flows().capacity(),
                  worker.pipeline().flows().capacity() / FlowTable::kBucketEntries, backends,
                  worker_lcore, runs, seconds, bench::cpuModel().c_str(),
                  static_cast<double>(rte_get_tsc_hz()) / 1e9);
      struct NewFlowCase {
        const char* name;
        const char* key;
        const char* forwarding;
        uint32_t rate_limit;
        Figures f;
        uint64_t rx = 0;
        uint64_t created = 0;
        uint64_t unpinned = 0;
        uint64_t tx = 0;
      };
      std::array<NewFlowCase, 3> cases = {{
          {"dr  new flows", "new-flow-dr", "dr", 0, {}},
          {"nat new flows", "new-flow-nat", "nat", 0, {}},
          {"dr  guard tripped", "new-flow-dr-guard", "dr", guard_rate, {}},
      }};
      Figures f_floor;
      uint64_t generation = 0;
      for (uint32_t r = 0; r < runs; ++r) {
        f_floor.mpps.push_back(floorRun());
        for (NewFlowCase& c : cases) {
          slot.publish(buildSnapshot(
              parseConfig(configText(c.forwarding, backends, vip, "tcp", c.rate_limit), "bench"),
              ids, ++generation));
          if (r == 0 && &c == &cases[0]) {
            workerRun();  // warm-up: fills the table
          }
          const WorkerCounters& wc = worker.pipeline().counters();
          const uint64_t rx0 = wc.rx_packets;
          const FlowTableStats& ft = worker.pipeline().flows().stats();
          const uint64_t created0 = ft.inserted;
          const uint64_t unpinned0 = wc.new_flows_unpinned;
          const uint64_t tx0 = wc.tx_packets;
          c.f.mpps.push_back(workerRun());
          c.rx += wc.rx_packets - rx0;
          c.created += ft.inserted - created0;
          c.unpinned += wc.new_flows_unpinned - unpinned0;
          c.tx += wc.tx_packets - tx0;
        }
      }
      std::printf("\n%-22s %28s %12s %18s %18s\n", "case", "Mpps min / median / max", "ratio",
                  "entries made/pkt", "unpinned/pkt");
      std::printf("%-22s %8.2f / %8.2f / %8.2f %12.2f\n", "io-floor (mac rewrite)",
                  f_floor.min(), f_floor.median(), f_floor.max(), 1.0);
      bench::jsonCase("io-floor", "Mpps", f_floor.mpps, "", 1.0,
                      {{"flows", flows}, {"flow_table", flow_table}});
      bool all_sent = true;
      for (const NewFlowCase& c : cases) {
        const double rx = static_cast<double>(std::max<uint64_t>(1, c.rx));
        std::printf("%-22s %8.2f / %8.2f / %8.2f %12.2f %18.3f %18.3f\n", c.name, c.f.min(),
                    c.f.median(), c.f.max(), c.f.median() / f_floor.median(),
                    static_cast<double>(c.created) / rx, static_cast<double>(c.unpinned) / rx);
        bench::jsonCase(c.key, "Mpps", c.f.mpps, "io-floor", c.f.median() / f_floor.median(),
                        {{"flows", flows},
                         {"flow_table", flow_table},
                         {"rate_limit", c.rate_limit},
                         {"entries_per_packet", static_cast<double>(c.created) / rx},
                         {"unpinned_per_packet", static_cast<double>(c.unpinned) / rx}});
        all_sent = all_sent && c.tx == c.rx;
      }
      std::printf("\nnew flows per second = Mpps x (entries made + unpinned) per packet; "
                  "table: %llu inserted, %llu evicted (%llu unestablished)\n",
                  static_cast<unsigned long long>(worker.pipeline().flows().stats().inserted),
                  static_cast<unsigned long long>(worker.pipeline().flows().stats().evicted),
                  static_cast<unsigned long long>(worker.pipeline().flows().stats().syn_evicted));
      stopPort(port);
      return all_sent ? 0 : 1;
    }
    std::printf("sluice-bench: %u established %s UDP flows, %u-byte frames, %u backends, "
                "1 worker (lcore %u), %u runs x %.1f s, TSC %.2f GHz\n",
                flows, ipv6 ? "IPv6" : "IPv4", frame, backends, worker_lcore, runs, seconds,
                static_cast<double>(rte_get_tsc_hz()) / 1e9);
    Figures f_floor;
    Figures f_dr;
    Figures f_nat;
    uint64_t tx_before = 0;
    for (uint32_t r = 0; r < runs; ++r) {
      // Interleave the cases so drift on a shared machine touches all of them alike.
      f_floor.mpps.push_back(floorRun());
      slot.publish(buildSnapshot(parseConfig(configText("dr", backends, vip), "bench"), ids, 1));
      if (r == 0) {
        workerRun();  // warm-up: establishes every flow
      }
      f_dr.mpps.push_back(workerRun());
      slot.publish(buildSnapshot(parseConfig(configText("nat", backends, vip), "bench"), ids, 2));
      f_nat.mpps.push_back(workerRun());
    }
    tx_before = worker.pipeline().counters().tx_packets;
    const WorkerCounters& c = worker.pipeline().counters();
    uint64_t drops = 0;
    for (uint64_t d : c.drops) {
      drops += d;
    }
    std::printf("\n%-22s %28s %12s\n", "case", "Mpps min / median / max", "ratio");
    auto row = [&](const char* name, const char* key, const Figures& f) {
      std::printf("%-22s %8.2f / %8.2f / %8.2f %12.2f\n", name, f.min(), f.median(), f.max(),
                  f.median() / f_floor.median());
      bench::jsonCase(key, "Mpps", f.mpps, &f == &f_floor ? "" : "io-floor",
                      f.median() / f_floor.median(),
                      {{"flows", flows}, {"frame", frame}, {"family", ipv6 ? "ipv6" : "ipv4"},
                       {"backends", backends}, {"seconds", seconds}});
    };
    row("io-floor (mac rewrite)", "io-floor", f_floor);
    row("dr  (full pipeline)", "dr", f_dr);
    row("nat (full pipeline)", "nat", f_nat);
    std::printf("\npipeline: %llu packets in, %llu out, %llu dropped, %llu flows created, "
                "%llu evicted\n",
                static_cast<unsigned long long>(c.rx_packets),
                static_cast<unsigned long long>(tx_before), static_cast<unsigned long long>(drops),
                static_cast<unsigned long long>(worker.pipeline().flows().stats().inserted),
                static_cast<unsigned long long>(worker.pipeline().flows().stats().evicted));
    stopPort(port);
    return drops == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sluice-bench: %s\n", e.what());
    return 1;
  }
}
