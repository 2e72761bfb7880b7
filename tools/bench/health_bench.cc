// health-bench: the health checker probing many backends at once on loopback, measured for
// schedule drift (probes per target, lateness of each start against its slot) and for the CPU
// the probe loop costs.
//
// The backends are listeners on 127.0.0.1..127.0.0.N, a few ports each, served by a forked child
// process (accept-and-close for tcp, an evhttp server answering 200 for http), so that the
// parent's getrusage is the checker's alone; the child's is reported apart from it (wait4).
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/net.h"
#include "control/config.h"
#include "control/health_check.h"
#include "tools/bench/report.h"

namespace {

using namespace sluice;
using Clock = std::chrono::steady_clock;

struct Listener {
  IpAddress address;
  uint16_t port = 0;
  int fd = -1;
};

double tvSeconds(const timeval& tv) {
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
}

double cpuSeconds(const rusage& r) { return tvSeconds(r.ru_utime) + tvSeconds(r.ru_stime); }

Listener listenOn(const IpAddress& address) {
  Listener l;
  l.address = address;
  l.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  std::memcpy(&sin.sin_addr, address.bytes.data(), 4);
  socklen_t len = sizeof(sin);
  if (l.fd < 0 || bind(l.fd, reinterpret_cast<sockaddr*>(&sin), len) != 0 ||
      listen(l.fd, 4096) != 0 || getsockname(l.fd, reinterpret_cast<sockaddr*>(&sin), &len) != 0) {
    throw std::runtime_error(
        fmt::format("cannot listen on {}: {}", address.str(), strerror(errno)));
  }
  l.port = ntohs(sin.sin_port);
  return l;
}

void onAcceptClose(evutil_socket_t fd, short, void*) {
  for (;;) {
    const int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      return;
    }
    close(c);
  }
}

void onHttpRequest(evhttp_request* req, void*) {
  evbuffer* body = evbuffer_new();
  evbuffer_add(body, "ok\n", 3);
  evhttp_send_reply(req, 200, "OK", body);
  evbuffer_free(body);
}

/** The child: serve every listener until killed. */
[[noreturn]] void serve(const std::vector<Listener>& listeners, HealthCheckType type) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  event_base* base = event_base_new();
  for (const Listener& l : listeners) {
    if (type == HealthCheckType::kHttp) {
      evhttp* http = evhttp_new(base);
      evhttp_set_gencb(http, &onHttpRequest, nullptr);
      evhttp_accept_socket_with_handle(http, l.fd);
    } else {
      event* ev = event_new(base, l.fd, EV_READ | EV_PERSIST, &onAcceptClose, nullptr);
      event_add(ev, nullptr);
    }
  }
  event_base_dispatch(base);
  _exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "health-bench: many backends health-checked at once, drift and CPU of the probe loop"};
  uint32_t backends = 1000;
  uint32_t interval_ms = 1000;
  uint32_t timeout_ms = 0;
  double seconds = 10;
  std::string type_name = "tcp";
  uint32_t addresses = 10;
  uint32_t ports = 4;
  bool precise = false;
  app.add_option("--backends", backends, "Backends probed")->check(CLI::Range(1, 20000));
  app.add_option("--interval-ms", interval_ms, "Probe interval of every backend")
      ->check(CLI::Range(10, 3600000));
  app.add_option("--timeout-ms", timeout_ms, "Probe timeout (default: half the interval, <= 500)");
  app.add_option("--seconds", seconds, "Length of the measured run")
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--type", type_name, "Probe type")->check(CLI::IsMember({"tcp", "http"}));
  app.add_option("--addresses", addresses, "Listen addresses 127.0.0.1..127.0.0.N")
      ->check(CLI::Range(1, 250));
  app.add_option("--ports", ports, "Listening ports per address")->check(CLI::Range(1, 100));
  app.add_flag("--precise-timer", precise,
               "Create the loop with EVENT_BASE_FLAG_PRECISE_TIMER (libevent's default clock is "
               "CLOCK_MONOTONIC_COARSE)");
  CLI11_PARSE(app, argc, argv);
  const HealthCheckType type = type_name == "http" ? HealthCheckType::kHttp : HealthCheckType::kTcp;
  if (timeout_ms == 0) {
    timeout_ms = std::min<uint32_t>(500, interval_ms / 2);
  }

  try {
    rlimit nofile{};
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
      nofile.rlim_cur = nofile.rlim_max;
      setrlimit(RLIMIT_NOFILE, &nofile);
    }

    std::vector<Listener> listeners;
    for (uint32_t a = 1; a <= addresses; ++a) {
      for (uint32_t p = 0; p < ports; ++p) {
        listeners.push_back(listenOn(IpAddress::v4((127u << 24) | a)));
      }
    }
    const pid_t child = fork();
    if (child < 0) {
      throw std::runtime_error(fmt::format("fork: {}", strerror(errno)));
    }
    if (child == 0) {
      serve(listeners, type);
    }
    for (const Listener& l : listeners) {
      close(l.fd);  // only the child accepts
    }

    event_config* cfg = event_config_new();
    if (precise) {
      event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    }
    event_base* base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (base == nullptr) {
      throw std::runtime_error("event_base_new_with_config failed");
    }

    uint64_t flips = 0;
    std::vector<ProbeTarget> targets;
    targets.reserve(backends);
    for (uint32_t i = 0; i < backends; ++i) {
      const Listener& l = listeners[i % listeners.size()];
      ProbeTarget t;
      t.key = fmt::format("bench#{} {}", i, formatEndpoint(l.address, l.port));
      t.address = l.address;
      t.port = l.port;
      t.check.type = type;
      t.check.interval_ms = interval_ms;
      t.check.timeout_ms = timeout_ms;
      targets.push_back(std::move(t));
    }

    rusage self_before{};
    rusage self_after{};
    double wall = 0;
    HealthChecker::LoopStats ls;
    uint64_t min_probes = UINT64_MAX;
    uint64_t max_probes = 0;
    uint64_t failures = 0;
    uint64_t skipped = 0;
    double duration_sum = 0;
    double duration_max = 0;
    std::string a_failure;
    {
      HealthChecker checker(base, [&](const std::string&, const ProbeStatus&) { ++flips; });
      getrusage(RUSAGE_SELF, &self_before);
      const Clock::time_point t0 = Clock::now();
      checker.setTargets(targets);
      const auto us = static_cast<int64_t>(seconds * 1e6);
      const timeval tv{static_cast<time_t>(us / 1'000'000),
                       static_cast<suseconds_t>(us % 1'000'000)};
      event_base_loopexit(base, &tv);
      event_base_dispatch(base);
      wall = std::chrono::duration<double>(Clock::now() - t0).count();
      getrusage(RUSAGE_SELF, &self_after);
      ls = checker.loopStats();
      for (const ProbeTarget& t : targets) {
        const ProbeStatus* s = checker.status(t.key);
        min_probes = std::min(min_probes, s->probes);
        max_probes = std::max(max_probes, s->probes);
        failures += s->failures;
        skipped += s->skipped;
        duration_sum += s->last_duration_ms;
        duration_max = std::max(duration_max, s->last_duration_ms);
        if (!s->last_ok && a_failure.empty()) {
          a_failure = fmt::format("{}: {}", t.key, s->last_result);
        }
      }
    }
    event_base_free(base);

    kill(child, SIGTERM);
    int wstatus = 0;
    rusage server{};
    wait4(child, &wstatus, 0, &server);

    utsname un{};
    uname(&un);
    const double checker_cpu = cpuSeconds(self_after) - cpuSeconds(self_before);
    const double server_cpu = cpuSeconds(server);
    const double expected = static_cast<double>(backends) * seconds * 1000.0 / interval_ms;
    fmt::print("cpu             {} ({} online), kernel {}\n", bench::cpuModel(),
               sysconf(_SC_NPROCESSORS_ONLN), un.release);
    fmt::print("config          {} backends, {} probes, interval {} ms, timeout {} ms, {:.1f} s, "
               "{} listeners ({} addresses x {} ports), {} timer\n",
               backends, type_name, interval_ms, timeout_ms, seconds, listeners.size(), addresses,
               ports, precise ? "precise (EVENT_BASE_FLAG_PRECISE_TIMER)" : "default (coarse)");
    fmt::print("probes          started {}, completed {}, expected {:.0f} (backends x seconds / "
               "interval)\n",
               ls.started, ls.completed, expected);
    fmt::print("per target      min {} / max {} completed probes\n", min_probes, max_probes);
    fmt::print("failures        {} ({} flips, {} slots skipped){}\n", failures, flips, skipped,
               a_failure.empty() ? "" : fmt::format(", e.g. {}", a_failure));
    fmt::print("lateness        mean {:.3f} ms, max {:.3f} ms (probe start - its slot)\n",
               ls.lateness_mean_ms, ls.lateness_max_ms);
    fmt::print("probe time      last probe of each target: mean {:.3f} ms, max {:.3f} ms\n",
               duration_sum / backends, duration_max);
    fmt::print("checker cpu     {:.3f} s in {:.2f} s wall = {:.2f}% of one core, {:.1f} us per "
               "probe (user {:.3f} s, sys {:.3f} s)\n",
               checker_cpu, wall, 100.0 * checker_cpu / wall,
               ls.completed == 0 ? 0.0 : checker_cpu * 1e6 / static_cast<double>(ls.completed),
               tvSeconds(self_after.ru_utime) - tvSeconds(self_before.ru_utime),
               tvSeconds(self_after.ru_stime) - tvSeconds(self_before.ru_stime));
    fmt::print("server cpu      {:.3f} s (forked child, all listeners; not in the figure above)\n",
               server_cpu);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "health-bench: {}\n", e.what());
    return 1;
  }
}
