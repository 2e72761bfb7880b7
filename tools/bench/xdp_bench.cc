// The XDP path's cost per packet, measured with BPF_PROG_TEST_RUN against a bare XDP_TX program
// timed the same way in the same run.
//
// With repeat > 1 the kernel runs the program again on the packet it has just rewritten, so a
// rewriting program would measure something else after the first run. So every timed call has
// repeat = 1 on fresh input: N distinct frames, each sent once per pass. Per case the figure is the
// kernel-measured run time (opts.duration) averaged over the N calls; the floor (the XDP_TX
// program on the same frames) is subtracted. Every call's action and output are checked.
//
// With --katran, Katran's balancer (tools/bench/katran_bench.h) runs in every pass too, on the
// same frame sets right after Sluice's: issue 10's comparison, "measured in the same run".
#include "tools/bench/xdp_bench.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <sched.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "bpf/xdp_tx.skel.h"
#include "control/config.h"
#include "control/snapshot_builder.h"
#include "tools/bench/katran_bench.h"
#include "tools/bench/report.h"
#include "tools/pktgen/traffic.h"
#include "xdp/xdp_dataplane.h"

namespace sluice {

namespace {

struct Case {
  const char* name;
  std::vector<double> ns;  // one average per pass
};

double median(const std::vector<double>& v) { return bench::spreadOf(v).median; }
double minOf(const std::vector<double>& v) { return bench::spreadOf(v).min; }
double maxOf(const std::vector<double>& v) { return bench::spreadOf(v).max; }

/** What every call of a pass must give back: its action and, when checked, its output frame. */
struct Expect {
  int action;
  std::function<bool(std::span<const uint8_t> in, std::span<const uint8_t> out)> output_ok;
  const char* output_error = "";
};

/** One pass: every frame once through prog_fd; returns the mean kernel-measured ns per run. */
double pass(int prog_fd, const std::vector<pktgen::PcapRecord>& frames, const Expect& want) {
  std::vector<uint8_t> out(2048);
  uint64_t total = 0;
  for (const pktgen::PcapRecord& f : frames) {
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = f.data.data(), .data_out = out.data(),
                .data_size_in = static_cast<uint32_t>(f.data.size()),
                .data_size_out = static_cast<uint32_t>(out.size()), .repeat = 1);
    if (bpf_prog_test_run_opts(prog_fd, &opts) != 0) {
      throw std::runtime_error(fmt::format("BPF_PROG_TEST_RUN: {}", std::strerror(errno)));
    }
    if (static_cast<int>(opts.retval) != want.action) {
      throw std::runtime_error(fmt::format("unexpected XDP action {} (wanted {})", opts.retval,
                                           want.action));
    }
    if (want.output_ok && !want.output_ok(f.data, std::span(out.data(), opts.data_size_out))) {
      throw std::runtime_error(want.output_error);
    }
    total += opts.duration;
  }
  return static_cast<double>(total) / static_cast<double>(frames.size());
}

}  // namespace

int runXdpBench(uint32_t flows, uint32_t runs, const std::string& katran_object) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(static_cast<unsigned>(sched_getcpu()), &one);
  sched_setaffinity(0, sizeof(one), &one);  // per-CPU flow table: stay on one CPU
  try {
    std::string cfg =
        "[[service]]\nname = \"bench\"\nvip = \"192.0.2.80\"\nport = 80\nprotocol = \"udp\"\n"
        "forwarding = \"nat\"\n";
    std::vector<uint8_t> macs;
    for (int i = 0; i < 10; ++i) {
      cfg += fmt::format(
          "[[service.backend]]\naddress = \"10.1.0.{}\"\nport = 8080\nmac = \"02:00:00:01:00:{:02x}\"\n",
          i + 1, i);
      const uint8_t m[6] = {0x02, 0, 0, 0x01, 0, static_cast<uint8_t>(i)};
      macs.insert(macs.end(), m, m + 6);
    }
    const Config config = parseConfig(cfg, "bench");
    // Each CPU's flow table; Katran's per-CPU LRUs get as many entries.
    const uint32_t flow_entries = flows * 2 + 1024;
    XdpDataplane xdp(flow_entries);
    const uint8_t port_mac[6] = {0x02, 0, 0, 0, 0, 0xbb};
    xdp.setPortMac(port_mac);
    IdRegistry ids;
    const SnapshotPtr snap = buildSnapshot(config, ids, 1);
    xdp.apply(*snap);

    // Katran's balancer with the same VIP and the same 10 backends as its reals (issue 10:
    // 1 VIP, 10 reals, a 65,537-slot ring), forwarding by IPIP to them.
    std::unique_ptr<KatranBalancer> katran;
    if (!katran_object.empty()) {
      KatranService ks;
      ks.vip = *IpAddress::parse("192.0.2.80");
      ks.port = 80;
      ks.proto = Protocol::kUdp;
      for (int i = 0; i < 10; ++i) {
        ks.reals.push_back(*IpAddress::parse(fmt::format("10.1.0.{}", i + 1)));
      }
      ks.router_mac = *MacAddress::parse("02:00:00:00:00:fe");
      katran = std::make_unique<KatranBalancer>(katran_object, ks, flow_entries);
    }

    xdp_tx* floor = xdp_tx__open_and_load();
    if (floor == nullptr) {
      throw std::runtime_error(fmt::format("cannot load the XDP_TX program: {}", std::strerror(errno)));
    }
    const int floor_fd = bpf_program__fd(floor->progs.xdp_tx);

    pktgen::TrafficSpec t;
    t.vip = *IpAddress::parse("192.0.2.80");
    t.proto = LB_PROTO_UDP;
    t.packets_per_flow = 1;
    t.payload_bytes = 18;  // 60-byte frames
    t.flows = flows;
    const std::vector<pktgen::PcapRecord> established = pktgen::makeTraffic(t);
    pktgen::TrafficSpec other = t;
    other.vip = *IpAddress::parse("192.0.2.99");
    const std::vector<pktgen::PcapRecord> no_service = pktgen::makeTraffic(other);

    const Expect floor_tx{XDP_TX, {}};
    const Expect sluice_tx{
        XDP_TX,
        [&](std::span<const uint8_t>, std::span<const uint8_t> out) {
          bool ok = false;
          for (size_t i = 0; i + 6 <= macs.size(); i += 6) {
            ok = ok || (out.size() >= 6 && std::memcmp(out.data(), macs.data() + i, 6) == 0);
          }
          return ok;
        },
        "a forwarded frame does not go to a backend MAC"};
    const Expect pass_up{XDP_PASS, {}};
    const Expect katran_tx{XDP_TX,
                           [&](std::span<const uint8_t> in, std::span<const uint8_t> out) {
                             return katran->isEncapsulatedToReal(in, out);
                           },
                           "a frame Katran forwarded is not its IPIP encapsulation to a real"};

    Case c_floor{"xdp_tx floor"};
    Case c_new{"new flow"};
    Case c_est{"established flow"};
    Case c_none{"no service (XDP_PASS)"};
    Case k_new{"katran new flow"};
    Case k_est{"katran established flow"};
    Case k_none{"katran no service"};
    // Katran's own count of LRU lookups that missed, per case (the established case is meant to
    // be all hits, the new-flow case all misses): what says the cases are what they are named.
    uint64_t k_new_misses = 0;
    uint64_t k_est_misses = 0;
    uint64_t k_none_vip_packets = 0;
    for (uint32_t r = 0; r < runs; ++r) {
      // Fresh clients every pass for the new-flow case: nothing of them is in the table.
      pktgen::TrafficSpec fresh = t;
      fresh.client_base = IpAddress::v4(0x0a800000u + (r + 1) * 0x00100000u);
      const std::vector<pktgen::PcapRecord> new_flows = pktgen::makeTraffic(fresh);
      c_floor.ns.push_back(pass(floor_fd, established, floor_tx));
      c_new.ns.push_back(pass(xdp.programFd(), new_flows, sluice_tx));
      if (r == 0) {
        pass(xdp.programFd(), established, sluice_tx);  // establish
      }
      c_est.ns.push_back(pass(xdp.programFd(), established, sluice_tx));
      c_none.ns.push_back(pass(xdp.programFd(), no_service, pass_up));
      if (katran) {
        // The same frame sets: the fresh clients are new to Katran's LRUs as well.
        KatranBalancer::LruCounters before = katran->lruCounters();
        k_new.ns.push_back(pass(katran->programFd(), new_flows, katran_tx));
        KatranBalancer::LruCounters after = katran->lruCounters();
        k_new_misses += after.misses - before.misses;
        if (r == 0) {
          pass(katran->programFd(), established, katran_tx);  // establish
        }
        before = katran->lruCounters();
        k_est.ns.push_back(pass(katran->programFd(), established, katran_tx));
        after = katran->lruCounters();
        k_est_misses += after.misses - before.misses;
        before = after;
        k_none.ns.push_back(pass(katran->programFd(), no_service, pass_up));
        after = katran->lruCounters();
        k_none_vip_packets += after.vip_packets - before.vip_packets;
      }
    }
    xdp_tx__destroy(floor);
    if (katran && katran->lruCounters().fallback != 0) {
      throw std::runtime_error("Katran used its fallback LRU: this CPU's LRU is not attached");
    }

    const double f = median(c_floor.ns);
    std::printf("sluice-bench --xdp: BPF_PROG_TEST_RUN, repeat = 1 per call on fresh input, %u "
                "distinct 60-byte UDP frames per pass, %u passes; kernel-measured ns per run "
                "(opts.duration), median of the passes",
                flows, runs);
    if (katran) {
      std::printf("; CPU %s; Katran: %s", bench::cpuModel().c_str(), katran_object.c_str());
    }
    std::printf("\n\n%-24s %10s %12s %10s\n", "case", "ns/pkt", "minus floor", "ratio");
    std::vector<const Case*> rows = {&c_floor, &c_new, &c_est, &c_none};
    if (katran) {
      rows.insert(rows.end(), {&k_new, &k_est, &k_none});
    }
    for (const Case* c : rows) {
      const double m = median(c->ns);
      std::printf("%-24s %10.1f %12.1f %10.2f\n", c->name, m, m - f, m / f);
      bench::jsonCase(c->name, "ns/pkt", c->ns, c == &c_floor ? "" : "xdp_tx floor", m / f,
                      {{"flows", flows}, {"frame", 60}, {"minus_floor", m - f}});
    }
    if (!katran) {
      return 0;
    }

    // Each pass's figure minus the same pass's floor: the passes are interleaved, so drift of a
    // shared machine between passes cancels out of the difference.
    auto overFloor = [&](const Case& c) {
      std::vector<double> d;
      for (size_t i = 0; i < c.ns.size(); ++i) {
        d.push_back(c.ns[i] - c_floor.ns[i]);
      }
      return d;
    };
    std::printf("\nKatran (1 VIP, 10 reals, 65,537-slot ring, IPIP to the real) and Sluice (NAT), "
                "ns per packet minus the same pass's floor, min / median / max of %u passes; the "
                "ratio is of the medians\n\n%-24s %24s   %24s   %16s\n",
                runs, "case", "Katran - floor", "Sluice - floor", "Sluice / Katran");
    const std::pair<const Case*, const Case*> pairs[] = {
        {&k_est, &c_est}, {&k_new, &c_new}, {&k_none, &c_none}};
    const char* names[] = {"established flow", "new flow", "no service (XDP_PASS)"};
    for (size_t i = 0; i < 3; ++i) {
      const std::vector<double> k = overFloor(*pairs[i].first);
      const std::vector<double> s = overFloor(*pairs[i].second);
      std::printf("%-24s %6.1f / %6.1f / %6.1f   %6.1f / %6.1f / %6.1f   %16.2f\n", names[i],
                  minOf(k), median(k), maxOf(k), minOf(s), median(s), maxOf(s),
                  median(s) / median(k));
      bench::jsonCase(fmt::format("{} over the floor", names[i]), "ns/pkt", s,
                      "katran over the floor", median(s) / median(k),
                      {{"flows", flows}, {"frame", 60}, {"katran_samples", k}});
    }
    // An established flow the LRU evicted (both tables hold flow_entries per CPU, and each pass
    // adds `flows` new ones) is a new flow again in the established pass: these say how many.
    // Katran's counter is one array element, read around each pass; Sluice's totals() walks the
    // flow tables, which would warm them for the pass after, so it is read once, here: every
    // new-flow frame and the establishing pass create one flow each, the rest were evicted.
    const uint64_t packets = uint64_t{flows} * runs;
    const uint64_t s_created = xdp.totals(*snap).all.flows_created;
    const uint64_t s_expected = packets + flows;
    std::printf("\nflow table misses of the %llu packets per case, %u entries per CPU in both: "
                "Katran's LRU (LRU_CNTRS): new flow %llu, established flow %llu, no service %llu "
                "packets to a VIP; Sluice: established flow %lld (flows created beyond one per "
                "new-flow frame and establishing frame)\n",
                static_cast<unsigned long long>(packets), flow_entries,
                static_cast<unsigned long long>(k_new_misses),
                static_cast<unsigned long long>(k_est_misses),
                static_cast<unsigned long long>(k_none_vip_packets),
                static_cast<long long>(s_created) - static_cast<long long>(s_expected));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sluice-bench --xdp: %s\n", e.what());
    return 1;
  }
}

}  // namespace sluice
