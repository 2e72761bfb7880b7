// The XDP path's cost per packet, measured with BPF_PROG_TEST_RUN against a bare XDP_TX program
// timed the same way in the same run.
//
// With repeat > 1 the kernel runs the program again on the packet it has just rewritten, so a
// rewriting program would measure something else after the first run. So every timed call has
// repeat = 1 on fresh input: N distinct frames, each sent once per pass. Per case the figure is the
// kernel-measured run time (opts.duration) averaged over the N calls; the floor (the XDP_TX
// program on the same frames) is subtracted. Every call's action and output are checked.
#include "tools/bench/xdp_bench.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <sched.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "bpf/xdp_tx.skel.h"
#include "control/config.h"
#include "control/snapshot_builder.h"
#include "tools/pktgen/traffic.h"
#include "xdp/xdp_dataplane.h"

namespace sluice {

namespace {

struct Case {
  const char* name;
  std::vector<double> ns;  // one average per pass
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/** One pass: every frame once through prog_fd; returns the mean kernel-measured ns per run. */
double pass(int prog_fd, const std::vector<pktgen::PcapRecord>& frames, int want_action,
            const std::vector<uint8_t>* want_dst_macs) {
  std::vector<uint8_t> out(2048);
  uint64_t total = 0;
  for (const pktgen::PcapRecord& f : frames) {
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = f.data.data(), .data_out = out.data(),
                .data_size_in = static_cast<uint32_t>(f.data.size()),
                .data_size_out = static_cast<uint32_t>(out.size()), .repeat = 1);
    if (bpf_prog_test_run_opts(prog_fd, &opts) != 0) {
      throw std::runtime_error(fmt::format("BPF_PROG_TEST_RUN: {}", std::strerror(errno)));
    }
    if (static_cast<int>(opts.retval) != want_action) {
      throw std::runtime_error(fmt::format("unexpected XDP action {} (wanted {})", opts.retval,
                                           want_action));
    }
    if (want_dst_macs != nullptr) {
      bool ok = false;
      for (size_t i = 0; i + 6 <= want_dst_macs->size(); i += 6) {
        ok = ok || std::memcmp(out.data(), want_dst_macs->data() + i, 6) == 0;
      }
      if (!ok) {
        throw std::runtime_error("a forwarded frame does not go to a backend MAC");
      }
    }
    total += opts.duration;
  }
  return static_cast<double>(total) / static_cast<double>(frames.size());
}

}  // namespace

int runXdpBench(uint32_t flows, uint32_t runs) {
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
    XdpDataplane xdp(flows * 2 + 1024);
    const uint8_t port_mac[6] = {0x02, 0, 0, 0, 0, 0xbb};
    xdp.setPortMac(port_mac);
    IdRegistry ids;
    const SnapshotPtr snap = buildSnapshot(config, ids, 1);
    xdp.apply(*snap);

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

    Case c_floor{"xdp_tx floor"};
    Case c_new{"new flow"};
    Case c_est{"established flow"};
    Case c_none{"no service (XDP_PASS)"};
    for (uint32_t r = 0; r < runs; ++r) {
      // Fresh clients every pass for the new-flow case: nothing of them is in the table.
      pktgen::TrafficSpec fresh = t;
      fresh.client_base = IpAddress::v4(0x0a800000u + (r + 1) * 0x00100000u);
      const std::vector<pktgen::PcapRecord> new_flows = pktgen::makeTraffic(fresh);
      c_floor.ns.push_back(pass(floor_fd, established, XDP_TX, nullptr));
      c_new.ns.push_back(pass(xdp.programFd(), new_flows, XDP_TX, &macs));
      if (r == 0) {
        pass(xdp.programFd(), established, XDP_TX, &macs);  // establish
      }
      c_est.ns.push_back(pass(xdp.programFd(), established, XDP_TX, &macs));
      c_none.ns.push_back(pass(xdp.programFd(), no_service, XDP_PASS, nullptr));
    }
    xdp_tx__destroy(floor);

    const double f = median(c_floor.ns);
    std::printf("sluice-bench --xdp: BPF_PROG_TEST_RUN, repeat = 1 per call on fresh input, %u "
                "distinct 60-byte UDP frames per pass, %u passes; kernel-measured ns per run "
                "(opts.duration), median of the passes\n\n%-24s %10s %12s %10s\n",
                flows, runs, "case", "ns/pkt", "minus floor", "ratio");
    for (const Case* c : {&c_floor, &c_new, &c_est, &c_none}) {
      const double m = median(c->ns);
      std::printf("%-24s %10.1f %12.1f %10.2f\n", c->name, m, m - f, m / f);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sluice-bench --xdp: %s\n", e.what());
    return 1;
  }
}

}  // namespace sluice
