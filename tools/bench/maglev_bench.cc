// sluice-bench --maglev: the Maglev table build (src/control/maglev.cc) for N = 10, 100 and 1,000
// backends at M = 65,537, equal and uneven weights, and the start-up of many services (parse,
// validate, build every table), each as min / median / max of several runs.
//
// The floor, timed in the same run: one walk of a single backend's permutation writing all M
// slots, i.e. the build without a single collision. Maglev's populate loop makes about M ln M
// probes in all (the paper, section 3.4: the last slots are found after long walks), so the
// ratio to the floor says how much of the build is that search rather than writing the table.
#include "tools/bench/maglev_bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "common/lb_abi.h"
#include "control/config.h"
#include "control/maglev.h"
#include "control/snapshot_builder.h"
#include "tools/bench/report.h"

namespace sluice {
namespace {

using Clock = std::chrono::steady_clock;

double microsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

std::vector<MaglevBackend> backendsOf(uint32_t n, bool uneven) {
  std::vector<MaglevBackend> v;
  v.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    // The keys the snapshot builder makes: the backend's endpoint.
    v.push_back({i + 1, fmt::format("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256),
                 uneven ? i % 100 + 1 : 100});
  }
  return v;
}

// A walk of one permutation over all M slots: what filling the table costs with no collision.
// The result feeds the check below so that the compiler cannot drop the loop.
std::vector<uint32_t> floorFill(uint32_t m, uint32_t offset, uint32_t skip) {
  std::vector<uint32_t> table(m, LB_BACKEND_NONE);
  uint32_t slot = offset;
  for (uint32_t j = 0; j < m; ++j) {
    table[slot] = j % 1000 + 1;
    slot += skip;
    if (slot >= m) {
      slot -= m;
    }
  }
  return table;
}

bool full(const std::vector<uint32_t>& t) {
  for (const uint32_t id : t) {
    if (id == LB_BACKEND_NONE) {
      return false;
    }
  }
  return true;
}

std::string startupConfig(uint32_t services, uint32_t backends, uint32_t m) {
  std::string s = "[dataplane]\ngateway_mac = \"02:00:00:00:00:fe\"\n";
  for (uint32_t v = 0; v < services; ++v) {
    s += fmt::format(
        "[[service]]\nname = \"s{}\"\nvip = \"192.0.{}.{}\"\nport = 80\nprotocol = \"tcp\"\n"
        "forwarding = \"dr\"\ntable_size = {}\n",
        v, 2 + v / 250, v % 250 + 1, m);
    for (uint32_t b = 0; b < backends; ++b) {
      s += fmt::format("[[service.backend]]\naddress = \"10.{}.{}.{}\"\nmac = \"02:00:00:01:00:01\"\n",
                       v / 250, v % 250, b + 1);
    }
  }
  return s;
}

void printRow(const std::string& name, const std::vector<double>& us, double floor_median,
              const nlohmann::json& extra) {
  const bench::Spread s = bench::spreadOf(us);
  std::printf("%-40s %10.1f / %10.1f / %10.1f %10.2f\n", name.c_str(), s.min, s.median, s.max,
              s.median / floor_median);
  bench::jsonCase(name, "us", us, "maglev floor", s.median / floor_median, extra);
}

}  // namespace

int runMaglevBench(const MaglevBenchOptions& opts) {
  const uint32_t m = opts.table_size;
  std::printf("sluice-bench --maglev: Maglev table builds at M = %u, %u runs each, on %s\n"
              "The floor: one permutation walked over all M slots (no collision); the ratio is "
              "of the medians.\n\n%-40s %36s %10s\n",
              m, opts.runs, bench::cpuModel().c_str(), "case", "us min / median / max", "ratio");
  int status = 0;

  struct Case {
    uint32_t n;
    bool uneven;
  };
  const std::vector<Case> cases = {{10, false}, {100, false}, {1000, false}, {1000, true}};
  std::vector<std::vector<MaglevBackend>> inputs;
  for (const Case& c : cases) {
    inputs.push_back(backendsOf(c.n, c.uneven));
  }

  // Interleaved, run by run, so that a slow moment of the machine hits every case alike.
  std::vector<double> floor_us;
  std::vector<std::vector<double>> case_us(cases.size());
  for (uint32_t r = 0; r < opts.runs; ++r) {
    auto t0 = Clock::now();
    const std::vector<uint32_t> f = floorFill(m, 12345 % m, 40503 % (m - 1) + 1);
    floor_us.push_back(microsSince(t0));
    if (!full(f)) {
      status = 1;
    }
    for (size_t i = 0; i < cases.size(); ++i) {
      t0 = Clock::now();
      const std::vector<uint32_t> t = buildMaglevTable(inputs[i], m);
      case_us[i].push_back(microsSince(t0));
      if (!full(t)) {
        std::fprintf(stderr, "sluice-bench: a build left slots empty\n");
        status = 1;
      }
    }
  }
  const double floor_median = bench::spreadOf(floor_us).median;
  printRow("floor (one permutation, no collision)", floor_us, floor_median,
           {{"table_size", m}});
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string name = fmt::format("build N = {}, {}", cases[i].n,
                                         cases[i].uneven ? "weights 1..100" : "equal weights");
    printRow(name, case_us[i], floor_median,
             {{"backends", cases[i].n}, {"table_size", m}, {"uneven", cases[i].uneven}});
  }

  // Start-up: what sluiced does with its configuration before it forwards (parse and validate
  // the file, give out ids, build every service's table and the snapshot around them).
  const uint32_t startup_runs = std::max<uint32_t>(1, std::min<uint32_t>(opts.runs, 3));
  const std::string text = startupConfig(opts.services, 10, m);
  // The tables are built on every hardware thread, as sluiced does; the one-thread row, run
  // alternately with it, shows what that parallelism buys on this machine.
  const unsigned hw_threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<double> parse_ms;
  std::vector<double> total_ms;
  std::vector<double> serial_ms;
  for (uint32_t r = 0; r < startup_runs; ++r) {
    for (const unsigned threads : {hw_threads, 1u}) {
      const auto t0 = Clock::now();
      const Config config = parseConfig(text, "bench");
      const double parsed = microsSince(t0) / 1000;
      IdRegistry ids;
      const SnapshotPtr snap = buildSnapshot(config, ids, 1, nullptr, nullptr, threads);
      (threads == 1 && hw_threads > 1 ? serial_ms : total_ms).push_back(microsSince(t0) / 1000);
      if (threads == hw_threads) {
        parse_ms.push_back(parsed);
      }
      if (snap->services.size() != opts.services) {
        status = 1;
      }
      if (hw_threads == 1) {
        break;
      }
    }
  }
  const bench::Spread p = bench::spreadOf(parse_ms);
  const bench::Spread t = bench::spreadOf(total_ms);
  std::printf("\nstart-up: %u services x 10 backends, M = %u (parse + validate, then build the "
              "snapshot), %u runs\n%-40s %36s\n%-40s %10.1f / %10.1f / %10.1f\n"
              "%-40s %10.1f / %10.1f / %10.1f\n",
              opts.services, m, startup_runs, "", "ms min / median / max", "parse + validate",
              p.min, p.median, p.max,
              fmt::format("parse + validate + build ({} threads)", hw_threads).c_str(), t.min,
              t.median, t.max);
  bench::jsonCase("start-up parse", "ms", parse_ms, "", 0,
                  {{"services", opts.services}, {"backends", 10}, {"table_size", m}});
  bench::jsonCase("start-up", "ms", total_ms, "", 0,
                  {{"services", opts.services}, {"backends", 10}, {"table_size", m},
                   {"threads", hw_threads}});
  if (!serial_ms.empty()) {
    const bench::Spread one = bench::spreadOf(serial_ms);
    std::printf("%-40s %10.1f / %10.1f / %10.1f\n", "parse + validate + build (1 thread)",
                one.min, one.median, one.max);
    bench::jsonCase("start-up, 1 thread", "ms", serial_ms, "", 0,
                    {{"services", opts.services}, {"backends", 10}, {"table_size", m},
                     {"threads", 1}});
  }
  return status;
}

}  // namespace sluice
