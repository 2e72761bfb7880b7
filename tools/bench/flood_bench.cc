// sluice-bench --flood: what a SYN flood costs and what it leaves, on both data paths.
//
// A table of --flow-table entries holds --established established TCP flows (SYN, then the ACK of
// the handshake); then --factor times the table's size in SYNs from random sources (the issue's
// case: 2 million SYNs into 65,536 entries). Reported per path:
//
//   - the cost of a flood packet, against the cost of an ordinary new flow (a SYN into a table
//     with room) measured the same way in the same run: the floor of this benchmark, since a
//     flood SYN is a new flow that evicts one;
//   - the same flood with the new-flow rate guard on (flood.new_flow_rate_limit), the flood's
//     packet clock running at --flood-pps, so that most SYNs are forwarded without an entry;
//   - how many established flows kept their entries: each one's next packet is sent after a
//     backend was added, and one that had lost its entry would be scheduled again with the new
//     backend in the table (how many would, without entries, is printed beside).
//
// DPDK: the Pipeline on byte buffers in bursts of 32 (no I/O), wall clock. XDP: one
// BPF_PROG_TEST_RUN per frame with repeat = 1 (the program rewrites what it is given), the
// kernel-measured run time, against a bare XDP_TX program on the same frames. Each figure is the
// min / median / max over --runs runs, each on fresh tables.
#include "tools/bench/flood_bench.h"

#include <arpa/inet.h>
#include <sched.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "control/config.h"
#include "control/snapshot_builder.h"
#include "dataplane/pipeline.h"
#include "sluice_config.h"
#include "tools/bench/report.h"
#include "tools/pktgen/packet_builder.h"
#if SLUICE_HAS_XDP
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf/xdp_tx.skel.h"
#include "xdp/xdp_dataplane.h"
#endif

namespace sluice {

namespace {

constexpr uint64_t kSec = 1'000'000'000ull;
constexpr uint64_t kT0 = 1000 * kSec;
constexpr uint32_t kBackends = 10;
constexpr uint8_t kPortMac[6] = {0x02, 0, 0, 0, 0, 0xbb};

/** One TCP service, DR, kBackends (+ 1 when grown) backends. */
Config benchConfig(const FloodBenchOptions& o, bool guarded, bool grown) {
  std::string text = fmt::format(
      "[dataplane]\nflow_table_size = {}\n[flood]\nnew_flow_rate_limit = {}\n"
      "[[service]]\nname = \"web\"\nvip = \"192.0.2.80\"\nport = 80\nprotocol = \"tcp\"\n"
      "forwarding = \"dr\"\n",
      o.table, guarded ? o.rate_limit : 0);
  for (uint32_t i = 0; i < kBackends + (grown ? 1 : 0); ++i) {
    text += fmt::format("[[service.backend]]\naddress = \"10.1.0.{}\"\nmac = "
                        "\"02:00:00:01:00:{:02x}\"\n",
                        i + 1, i);
  }
  return parseConfig(text, "bench");
}

/** A client endpoint: source address and port, network order. */
struct Client {
  uint32_t addr_be;
  uint16_t port_be;
};

/** A TCP frame to the VIP, the client written per packet. */
class Frames {
 public:
  explicit Frames(uint8_t flags) {
    pktgen::PacketSpec s;
    s.dst_mac = *MacAddress::parse("02:00:00:00:00:bb");
    s.src = *IpAddress::parse("198.51.100.1");
    s.dst = *IpAddress::parse("192.0.2.80");
    s.dport = 80;
    s.tcp_flags = flags;
    tmpl_ = pktgen::build(s);  // 54 bytes; checksums are not checked on the way
    tmpl_.resize(60, 0);       // the Ethernet minimum
  }
  size_t size() const { return tmpl_.size(); }
  void fill(uint8_t* buf) const { std::memcpy(buf, tmpl_.data(), tmpl_.size()); }
  /** The client into a frame made by fill(). */
  static void setClient(uint8_t* buf, const Client& c) {
    std::memcpy(buf + 14 + 12, &c.addr_be, 4);
    std::memcpy(buf + 14 + 20, &c.port_be, 2);
  }

 private:
  pktgen::Bytes tmpl_;
};

std::vector<Client> established(uint32_t n) {
  std::vector<Client> v;
  for (uint32_t i = 0; i < n; ++i) {
    v.push_back({htonl(0xc6330000u + i), htons(static_cast<uint16_t>(20000 + i % 1000))});
  }
  return v;
}

std::vector<Client> fresh(uint32_t n, uint32_t run) {
  std::vector<Client> v;
  for (uint32_t i = 0; i < n; ++i) {
    v.push_back({htonl(0x0a000000u + run * 0x00100000u + i), htons(40000)});
  }
  return v;
}

std::vector<Client> flood(uint32_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Client> v;
  v.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    v.push_back({static_cast<uint32_t>(rng()) | htonl(0x01000000u),
                 static_cast<uint16_t>(rng())});
  }
  return v;
}

struct Figures {
  std::vector<double> v;
  double median() const { return bench::spreadOf(v).median; }
  double min() const { return bench::spreadOf(v).min; }
  double max() const { return bench::spreadOf(v).max; }
};

/** The results of one path over all runs. */
struct PathFigures {
  Figures floor;  // XDP only: the bare XDP_TX program
  Figures new_flow;
  Figures established;
  Figures flood;
  Figures guarded;
  // Established flows still on their backend after the flood, in the worst run.
  uint64_t kept = UINT64_MAX;
  uint64_t kept_guarded = UINT64_MAX;
  uint64_t would_move = 0;  // of them, moved by the added backend had they no entry (one run)
  uint64_t unpinned = 0;    // guarded flood SYNs forwarded without an entry (one run)
  uint64_t syn_evicted = 0;
  uint64_t evicted = 0;
};

void printPath(const char* title, const PathFigures& f, const FloodBenchOptions& o,
               bool with_floor) {
  std::printf("\n%s\n%-48s %28s %14s%s\n", title, "case", "ns/pkt min / median / max",
              "x new flow", with_floor ? "     x floor" : "");
  const double base = f.new_flow.median();
  auto row = [&](const std::string& name, const Figures& x) {
    std::printf("%-48s %8.1f / %8.1f / %8.1f %14.2f", name.c_str(), x.min(), x.median(), x.max(),
                x.median() / base);
    nlohmann::json extra = {{"path", with_floor ? "xdp" : "dpdk"}, {"flow_table", o.table},
                            {"established", o.established}};
    if (with_floor) {
      extra["ratio_to_floor"] = x.median() / f.floor.median();
    }
    if (&x == &f.flood || &x == &f.guarded) {
      extra["kept"] = &x == &f.flood ? f.kept : f.kept_guarded;
    }
    bench::jsonCase(name, "ns/pkt", x.v, &x == &f.new_flow ? "" : "new flow", x.median() / base,
                    extra);
    if (with_floor) {
      std::printf(" %11.2f", x.median() / f.floor.median());
    }
    std::printf("\n");
  };
  if (with_floor) {
    row("xdp_tx floor", f.floor);
  }
  row("new flow (SYN, table with room)", f.new_flow);
  row("established flow (ACK)", f.established);
  row(fmt::format("SYN flood, {} x table", o.factor), f.flood);
  row(fmt::format("SYN flood, rate guard {}/s at {} pps", o.rate_limit, o.flood_pps), f.guarded);
  std::printf("established flows kept through the flood, worst of the runs: %llu of %u (rate "
              "guard: %llu of %u); without their entries %llu of %u would have moved to the "
              "added backend\n",
              static_cast<unsigned long long>(f.kept), o.established,
              static_cast<unsigned long long>(f.kept_guarded), o.established,
              static_cast<unsigned long long>(f.would_move), o.established);
  std::printf("flood: %llu evicted, of which %llu unestablished; rate guard: %llu of %llu SYNs "
              "forwarded without an entry\n",
              static_cast<unsigned long long>(f.evicted),
              static_cast<unsigned long long>(f.syn_evicted),
              static_cast<unsigned long long>(f.unpinned),
              static_cast<unsigned long long>(uint64_t{o.factor} * o.table));
}

// ---------------------------------------------------------------------------------------------
// DPDK: the Pipeline on byte buffers.

class DpdkRun {
 public:
  DpdkRun(const Snapshot& snap, uint32_t table) : snap_(&snap), pipe_(table, kMaxBackendIds) {
    std::memcpy(port_.mac, kPortMac, 6);
    port_.accept_any_mac = true;
  }
  void use(const Snapshot& snap) { snap_ = &snap; }

  /**
   * Every client's frame once, in bursts of 32, the clock at now + i * step for the i-th.
   * @param backend_of when set, the backend id each frame was sent to
   * @return wall-clock ns per packet
   */
  double pass(const Frames& frames, const std::vector<Client>& clients, uint64_t now,
              uint64_t step, std::vector<uint32_t>* backend_of = nullptr) {
    constexpr size_t kBurst = 32;
    std::vector<uint8_t> bufs(kBurst * frames.size());
    for (size_t i = 0; i < kBurst; ++i) {
      frames.fill(&bufs[i * frames.size()]);
    }
    std::array<PacketRef, kBurst> refs;
    uint64_t sent = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t start = 0; start < clients.size(); start += kBurst) {
      const size_t n = std::min(kBurst, clients.size() - start);
      for (size_t i = 0; i < n; ++i) {
        uint8_t* b = &bufs[i * frames.size()];
        Frames::setClient(b, clients[start + i]);
        refs[i].data = b;
        refs[i].data_len = refs[i].pkt_len = static_cast<uint32_t>(frames.size());
        refs[i].now_ns = now + (start + i) * step;
      }
      pipe_.process(std::span<PacketRef>(refs.data(), n), *snap_, port_);
      for (size_t i = 0; i < n; ++i) {
        sent += refs[i].transmit ? 1 : 0;
        if (backend_of != nullptr) {
          backend_of->push_back(backendOf(&bufs[i * frames.size()]));
        }
      }
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (sent != clients.size()) {
      throw std::runtime_error("the pipeline did not forward every frame");
    }
    return std::chrono::duration<double, std::nano>(t1 - t0).count() /
           static_cast<double>(clients.size());
  }

  uint32_t backendOf(const uint8_t* frame) const {
    for (uint32_t id = 1; id < snap_->backends.size(); ++id) {
      if (snap_->backends[id].present && std::memcmp(frame, snap_->backends[id].mac, 6) == 0) {
        return id;
      }
    }
    return 0;
  }
  Pipeline& pipe() { return pipe_; }

 private:
  const Snapshot* snap_;
  Pipeline pipe_;
  PortContext port_;
};

size_t countMoved(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    n += a[i] != b[i] ? 1 : 0;
  }
  return n;
}

PathFigures dpdkFlood(const FloodBenchOptions& o) {
  IdRegistry ids;
  const SnapshotPtr plain = buildSnapshot(benchConfig(o, false, false), ids, 1);
  const SnapshotPtr guarded = buildSnapshot(benchConfig(o, true, false), ids, 2);
  const SnapshotPtr grown = buildSnapshot(benchConfig(o, false, true), ids, 3);
  const Frames syn(0x02);
  const Frames ack(0x10);
  const std::vector<Client> est = established(o.established);
  PathFigures f;
  for (uint32_t r = 0; r < o.runs; ++r) {
    const std::vector<Client> storm = flood(o.factor * o.table, 1000 + r);
    {
      // Warmed first: the table's pages are touched (anonymous memory faults in on first use,
      // which the flood's table has behind it too), then emptied.
      DpdkRun fresh_table(*plain, o.table);
      fresh_table.pass(syn, fresh(o.table / 2, r + 100), kT0, 0);
      fresh_table.pipe().flows().clear();
      f.new_flow.v.push_back(fresh_table.pass(syn, fresh(o.table / 2, r), kT0, 0));
    }
    for (const bool guard : {false, true}) {
      DpdkRun run(guard ? *guarded : *plain, o.table);
      std::vector<uint32_t> before;
      run.pass(syn, est, kT0, 0);
      run.pass(ack, est, kT0 + kSec / 1000, 0, &before);
      if (!guard) {
        f.established.v.push_back(run.pass(ack, est, kT0 + kSec / 500, 0));
      }
      const double ns = run.pass(syn, storm, kT0 + kSec, guard ? kSec / o.flood_pps : 0);
      (guard ? f.guarded : f.flood).v.push_back(ns);
      if (r == 0) {
        const FlowTableStats& st = run.pipe().flows().stats();
        if (guard) {
          f.unpinned = run.pipe().counters().new_flows_unpinned;
        } else {
          f.evicted = st.evicted;
          f.syn_evicted = st.syn_evicted;
        }
      }
      // A backend added: only the flows that lost their entries are scheduled again.
      run.use(*grown);
      std::vector<uint32_t> after;
      run.pass(ack, est, kT0 + 2 * kSec + (guard ? o.factor * o.table * (kSec / o.flood_pps) : 0),
               0, &after);
      uint64_t& kept = guard ? f.kept_guarded : f.kept;
      kept = std::min<uint64_t>(kept, est.size() - countMoved(before, after));
      if (r == 0 && !guard) {
        DpdkRun none(*grown, o.table);
        std::vector<uint32_t> unpinned;
        none.pass(ack, est, kT0, 0, &unpinned);
        f.would_move = countMoved(before, unpinned);
      }
    }
  }
  return f;
}

// ---------------------------------------------------------------------------------------------
// XDP: BPF_PROG_TEST_RUN, one frame per call.

#if SLUICE_HAS_XDP
class XdpRun {
 public:
  XdpRun(const Snapshot& snap, uint32_t table) : xdp_(table) {
    xdp_.setPortMac(kPortMac);
    xdp_.setAcceptAnyMac(true);
    use(snap);
  }
  void use(const Snapshot& snap) {
    snap_ = &snap;
    xdp_.apply(snap);
  }

  /** pass() of DpdkRun, on prog_fd (the program's own when -1); kernel-measured ns per run. */
  double pass(const Frames& frames, const std::vector<Client>& clients, uint64_t now,
              uint64_t step, std::vector<uint32_t>* backend_of = nullptr, int prog_fd = -1) {
    std::vector<uint8_t> in(frames.size());
    std::vector<uint8_t> out(frames.size() + 256);
    frames.fill(in.data());
    const int fd = prog_fd >= 0 ? prog_fd : xdp_.programFd();
    uint64_t total = 0;
    for (size_t i = 0; i < clients.size(); ++i) {
      Frames::setClient(in.data(), clients[i]);
      if (step != 0 || i == 0) {
        xdp_.setClock(now + i * step);
      }
      LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = in.data(), .data_out = out.data(),
                  .data_size_in = static_cast<uint32_t>(in.size()),
                  .data_size_out = static_cast<uint32_t>(out.size()), .repeat = 1);
      if (bpf_prog_test_run_opts(fd, &opts) != 0) {
        throw std::runtime_error(fmt::format("BPF_PROG_TEST_RUN: {}", std::strerror(errno)));
      }
      if (static_cast<int>(opts.retval) != kXdpTx) {
        throw std::runtime_error(fmt::format("unexpected XDP action {}", opts.retval));
      }
      total += opts.duration;
      if (backend_of != nullptr) {
        backend_of->push_back(backendOf(out.data()));
      }
    }
    return static_cast<double>(total) / static_cast<double>(clients.size());
  }

  uint32_t backendOf(const uint8_t* frame) const {
    for (uint32_t id = 1; id < snap_->backends.size(); ++id) {
      if (snap_->backends[id].present && std::memcmp(frame, snap_->backends[id].mac, 6) == 0) {
        return id;
      }
    }
    return 0;
  }
  WorkerTotals totals() const { return xdp_.totals(*snap_).all; }

 private:
  XdpDataplane xdp_;
  const Snapshot* snap_ = nullptr;
};

PathFigures xdpFlood(const FloodBenchOptions& o) {
  IdRegistry ids;
  const SnapshotPtr plain = buildSnapshot(benchConfig(o, false, false), ids, 1);
  const SnapshotPtr guarded = buildSnapshot(benchConfig(o, true, false), ids, 2);
  const SnapshotPtr grown = buildSnapshot(benchConfig(o, false, true), ids, 3);
  xdp_tx* floor = xdp_tx__open_and_load();
  if (floor == nullptr) {
    throw std::runtime_error(
        fmt::format("cannot load the XDP_TX program: {}", std::strerror(errno)));
  }
  const int floor_fd = bpf_program__fd(floor->progs.xdp_tx);
  const Frames syn(0x02);
  const Frames ack(0x10);
  const std::vector<Client> est = established(o.established);
  PathFigures f;
  try {
    for (uint32_t r = 0; r < o.runs; ++r) {
      const std::vector<Client> storm = flood(o.factor * o.table, 1000 + r);
      {
        XdpRun fresh_table(*plain, o.table);
        const std::vector<Client> news = fresh(o.table / 2, r);
        f.floor.v.push_back(fresh_table.pass(syn, news, kT0, 0, nullptr, floor_fd));
        f.new_flow.v.push_back(fresh_table.pass(syn, news, kT0, 0));
      }
      for (const bool guard : {false, true}) {
        XdpRun run(guard ? *guarded : *plain, o.table);
        std::vector<uint32_t> before;
        run.pass(syn, est, kT0, 0);
        run.pass(ack, est, kT0 + kSec / 1000, 0, &before);
        if (!guard) {
          f.established.v.push_back(run.pass(ack, est, kT0 + kSec / 500, 0));
        }
        const double ns = run.pass(syn, storm, kT0 + kSec, guard ? kSec / o.flood_pps : 0);
        (guard ? f.guarded : f.flood).v.push_back(ns);
        if (r == 0) {
          const WorkerTotals t = run.totals();
          if (guard) {
            f.unpinned = t.new_flows_unpinned;
          } else {
            f.evicted = t.flows_evicted;
            f.syn_evicted = t.flows_syn_evicted;
          }
        }
        run.use(*grown);
        std::vector<uint32_t> after;
        run.pass(ack, est,
                 kT0 + 2 * kSec + (guard ? o.factor * o.table * (kSec / o.flood_pps) : 0), 0,
                 &after);
        uint64_t& kept = guard ? f.kept_guarded : f.kept;
        kept = std::min<uint64_t>(kept, est.size() - countMoved(before, after));
        if (r == 0 && !guard) {
          XdpRun none(*grown, o.table);
          std::vector<uint32_t> unpinned;
          none.pass(ack, est, kT0, 0, &unpinned);
          f.would_move = countMoved(before, unpinned);
        }
      }
    }
  } catch (...) {
    xdp_tx__destroy(floor);
    throw;
  }
  xdp_tx__destroy(floor);
  return f;
}
#endif

}  // namespace

int runFloodBench(const FloodBenchOptions& o) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(static_cast<unsigned>(sched_getcpu()), &one);
  sched_setaffinity(0, sizeof(one), &one);  // per-CPU flow tables: stay on one CPU
  if (o.runs == 0 || o.table == 0 || o.flood_pps == 0 || o.established > o.table) {
    std::fprintf(stderr, "sluice-bench --flood: bad options\n");
    return 1;
  }
  std::printf("sluice-bench --flood: flow table of %u entries, %u established TCP flows, a SYN "
              "flood of %llu (%u x the table) from random sources, one DR service of %u backends "
              "(one more added after the flood), %u runs on fresh tables; 60-byte frames\n",
              o.table, o.established, static_cast<unsigned long long>(uint64_t{o.factor} * o.table),
              o.factor, kBackends, o.runs);
  int status = 0;
  try {
    const PathFigures d = dpdkFlood(o);
    printPath("DPDK pipeline (byte buffers, bursts of 32, no I/O; wall-clock ns per packet):", d, o,
              false);
    status |= d.kept == o.established && d.kept_guarded == o.established ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sluice-bench --flood (DPDK): %s\n", e.what());
    return 1;
  }
#if SLUICE_HAS_XDP
  try {
    const PathFigures x = xdpFlood(o);
    printPath("XDP program (BPF_PROG_TEST_RUN, repeat = 1, kernel-measured ns per run):", x, o,
              true);
    status |= x.kept == o.established && x.kept_guarded == o.established ? 0 : 1;
  } catch (const XdpError& e) {
    std::printf("\nXDP: not measured: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sluice-bench --flood (XDP): %s\n", e.what());
    return 1;
  }
#else
  std::printf("\nXDP: not measured (built without the XDP data path)\n");
#endif
  return status;
}

}  // namespace sluice
