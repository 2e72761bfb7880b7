// End-to-end tests of sluicectl against a running sluiced, as an operator uses them.
//
// Each fixture starts the real `sluiced run` (DPDK EAL, one net_pcap virtual port, no hugepages,
// no PCI) with its own configuration, control socket and --file-prefix in a fresh temporary
// directory. The port reads a capture this file generates (tools/pktgen) once, through the real
// pipeline, so `list` and `stats` report real flows and counters; the port's transmit side is
// written to a capture as well, and the tests check the daemon's counters against what it sent.
// `sluiced run` is a host on its segment: it takes only frames for its port's MAC (net_pcap's,
// testsupport::pcapPortMac()), broadcast and 33:33:*, so the capture is addressed to that MAC as
// a client's router would address it, but for a few frames for another host (not_for_us).
// Every command of the real sluicectl binary is then run with fork/exec, and its exit status,
// stdout (text and --json) and stderr are checked, together with the daemon's state before and
// after (`list --json`), so that refused requests are seen to change nothing.
//
// The daemons are children of this process and are stopped with SIGTERM (or SIGINT) at the end;
// only those pids are ever signalled. Set SLUICE_KEEP_TEST_DIRS=1 to keep the temporary
// directories (configurations, captures, daemon logs) for inspection.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/lb_abi.h"
#include "common/net.h"
#include "control/config.h"
#include "tests/support/fixtures.h"
#include "tests/support/run.h"
#include "tools/pktgen/packet_builder.h"
#include "tools/pktgen/pcap_io.h"
#include "tools/pktgen/traffic.h"

#ifndef SLUICED_PATH
#error "SLUICED_PATH must name the sluiced binary under test"
#endif
#ifndef SLUICECTL_PATH
#error "SLUICECTL_PATH must name the sluicectl binary under test"
#endif
#ifndef SOURCE_ROOT
#error "SOURCE_ROOT must name the repository root"
#endif

namespace {

using json = nlohmann::json;
using testsupport::readFile;
using testsupport::RunOptions;
using testsupport::RunResult;
using testsupport::runProgram;
using testsupport::TempDir;
using testsupport::statusOf;
using testsupport::waitChild;
using testsupport::writeFile;
using pktgen::PcapRecord;
using sluice::IpAddress;
using sluice::MacAddress;
using testsupport::ip;
using testsupport::mac;

constexpr uint64_t kSecondUs = 1'000'000;
constexpr uint64_t kStartUs = 1700000000ull * kSecondUs;
constexpr uid_t kNobody = 65534;

// ---------------------------------------------------------------------------------------------
// Small helpers

/** "10.0.0.1:80" or "[2001:db8::1]:80", as sluicectl prints endpoints. */
std::string endpoint(const std::string& address, uint64_t port) {
  return address.find(':') != std::string::npos ? fmt::format("[{}]:{}", address, port)
                                                 : fmt::format("{}:{}", address, port);
}

std::string endpoint(const json& address, const json& port) {
  return endpoint(address.get<std::string>(), port.get<uint64_t>());
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) {
    out.push_back(line);
  }
  return out;
}

size_t lineCount(std::string_view text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---------------------------------------------------------------------------------------------
// Running programs (tests/support/run.h)

/** sluicectl --socket SOCKET args... */
RunResult ctl(const std::string& socket, const std::vector<std::string>& args,
              const std::string& dir, const RunOptions& opts = {}) {
  std::vector<std::string> all = {"--socket", socket};
  all.insert(all.end(), args.begin(), args.end());
  return runProgram(SLUICECTL_PATH, all, dir, opts);
}

/** Throws (the test fails with the whole story) unless the command exited 0. */
const RunResult& expectOk(const RunResult& r) {
  if (r.status != 0) {
    throw std::runtime_error("expected exit status 0\n" + r.describe());
  }
  return r;
}

json parseJson(const RunResult& r) {
  try {
    return json::parse(r.out);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("stdout is not JSON ({})\n{}", e.what(), r.describe()));
  }
}

/** A listening-less Unix socket file at path: bound, then closed without unlinking. */
void makeStaleSocket(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof(addr.sun_path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0)
      << std::strerror(errno);
  ::close(fd);
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  ASSERT_TRUE(S_ISSOCK(st.st_mode));
}

// ---------------------------------------------------------------------------------------------
// The configuration and the capture

// The fixture's three services: DR/TCP/IPv4, NAT/UDP/IPv4, NAT/TCP/IPv6. The timeouts are long
// so that every flow of the capture stays active for the whole test (TCP flows end with a FIN);
// dns and web6 get table sizes of their own (the tests name them), web keeps the default.
sluice::Config baseConfig() {
  sluice::Config c = testsupport::threeServices();
  c.dataplane.flow_table_size = 65536;
  c.timeouts.tcp_s = 3600;
  c.timeouts.tcp_fin_s = 3600;
  c.timeouts.udp_s = 3600;
  testsupport::service(c, "dns").table_size = 251;
  testsupport::service(c, "web6").table_size = 1009;
  return c;
}

/** baseConfig() as the file the daemons start from; the tests count its lines (FILE:LINE). */
const std::string& baseConfigText() {
  static const std::string text = testsupport::configText(baseConfig());
  return text;
}

// What the capture holds.
constexpr uint32_t kDnsFlows = 200, kDnsPacketsPerFlow = 3;   // UDP -> dns (NAT)
constexpr uint32_t kWebFlows = 100, kWebPacketsPerFlow = 4;   // TCP -> web (DR)
constexpr uint32_t kWeb6Flows = 50, kWeb6PacketsPerFlow = 3;  // TCP -> web6 (NAT, IPv6)
constexpr uint32_t kRepliesFrom21 = 5, kRepliesFrom22 = 3;    // NAT replies dns backends -> clients
constexpr uint32_t kNoise = 7;  // UDP to no service: dropped (no_service), passed to the kernel
constexpr uint32_t kForOthers = 5;  // SYNs to the web VIP, but to another host's MAC: not_for_us

// The daemon's port, which every frame of the capture but kForOthers is addressed to.
const MacAddress kPortMac = testsupport::pcapPortMac();
// Another host on the segment (a switch floods frames for it when it does not know its port).
const MacAddress kOtherHostMac = mac("02:00:00:00:00:cc");

/** Whether a is a client of the kForOthers frames (198.51.103.0/24). */
bool isOtherHostsClient(const IpAddress& a) {
  return a.isV4() && a.bytes[0] == 198 && a.bytes[1] == 51 && a.bytes[2] == 103;
}

struct Capture {
  std::vector<PcapRecord> records;  // ..., the kForOthers frames, then the kNoise frames
  size_t size() const { return records.size(); }
  /** The kNoise frames for no service, which end the capture. */
  std::vector<PcapRecord> noise() const {
    return std::vector<PcapRecord>(records.end() - kNoise, records.end());
  }
};

Capture makeCapture() {
  Capture c;
  auto append = [&](const std::vector<PcapRecord>& r) {
    c.records.insert(c.records.end(), r.begin(), r.end());
  };
  pktgen::TrafficSpec dns;
  dns.vip = ip("192.0.2.53");
  dns.vport = 53;
  dns.proto = LB_PROTO_UDP;
  dns.flows = kDnsFlows;
  dns.packets_per_flow = kDnsPacketsPerFlow;
  dns.client_base = ip("198.51.100.1");
  dns.start_us = kStartUs;
  dns.lb_mac = kPortMac;
  append(pktgen::makeTraffic(dns));

  pktgen::TrafficSpec web;
  web.vip = ip("192.0.2.10");
  web.vport = 80;
  web.proto = LB_PROTO_TCP;
  web.flows = kWebFlows;
  web.packets_per_flow = kWebPacketsPerFlow;
  web.client_base = ip("198.51.101.1");
  web.start_us = kStartUs + kSecondUs;
  web.lb_mac = kPortMac;
  append(pktgen::makeTraffic(web));

  pktgen::TrafficSpec web6;
  web6.vip = ip("2001:db8::10");
  web6.vport = 443;
  web6.proto = LB_PROTO_TCP;
  web6.flows = kWeb6Flows;
  web6.packets_per_flow = kWeb6PacketsPerFlow;
  web6.client_base = ip("2001:db8:ff::1");
  web6.start_us = kStartUs + 2 * kSecondUs;
  web6.lb_mac = kPortMac;
  append(pktgen::makeTraffic(web6));

  uint64_t ts = kStartUs + 3 * kSecondUs;
  auto reply = [&](std::string_view backend, std::string_view backend_mac, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
      pktgen::PacketSpec p;
      p.src_mac = mac(backend_mac);
      p.dst_mac = kPortMac;
      p.src = ip(backend);
      p.dst = ip("198.51.100.1");
      p.proto = LB_PROTO_UDP;
      p.sport = 5353;
      p.dport = 10000;
      p.payload = pktgen::Bytes(48, 0x5a);
      c.records.push_back({ts, pktgen::build(p)});
      ts += 10;
    }
  };
  reply("10.0.1.21", "02:00:00:00:02:21", kRepliesFrom21);
  reply("10.0.1.22", "02:00:00:00:02:22", kRepliesFrom22);
  // For another host: SYNs that would be the web service's new flows, were they for the port.
  for (uint32_t i = 0; i < kForOthers; ++i) {
    pktgen::PacketSpec p;
    p.dst_mac = kOtherHostMac;
    p.src = ip(fmt::format("198.51.103.{}", i + 1));
    p.dst = ip("192.0.2.10");
    p.sport = static_cast<uint16_t>(30000 + i);
    p.dport = 80;
    p.tcp_flags = 0x02;
    c.records.push_back({ts, pktgen::build(p)});
    ts += 10;
  }
  for (uint32_t i = 0; i < kNoise; ++i) {
    pktgen::PacketSpec p;
    p.dst_mac = kPortMac;
    p.src = ip("198.51.102.1");
    p.dst = ip("192.0.2.99");
    p.proto = LB_PROTO_UDP;
    p.sport = static_cast<uint16_t>(20000 + i);
    p.dport = 9999;
    p.payload = pktgen::Bytes(16, 1);
    c.records.push_back({ts, pktgen::build(p)});
    ts += 10;
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// The daemon

/** One `sluiced run`, a child of this process. Stopped (SIGKILL at worst) when destroyed. */
class Daemon {
 public:
  Daemon() = default;
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon() {
    if (pid_ > 0) {
      stop(SIGTERM, 20);
    }
  }

  /**
   * Start sluiced on config with its control socket at socket; the port reads in_pcap once and
   * writes to outPcap(). With loop, the port reads in_pcap over and over until the daemon stops
   * (net_pcap's infinite_rx) and drops what is sent (there is no outPcap()): steady traffic of
   * the same flows. Waits until it logs that it runs. Returns "" or what went wrong.
   */
  std::string start(const std::string& dir, const std::string& tag, const std::string& config,
                    const std::string& socket, const std::string& in_pcap, bool loop = false) {
    static int counter = 0;
    prefix_ = fmt::format("sluice-e2e-cli-{}-{}", ::getpid(), ++counter);
    socket_ = socket;
    config_ = config;
    out_pcap_ = loop ? std::string() : fmt::format("{}/{}-out.pcap", dir, tag);
    log_path_ = fmt::format("{}/{}-sluiced.log", dir, tag);
    const std::string vdev =
        loop ? fmt::format("net_pcap0,rx_pcap={},infinite_rx=1", in_pcap)
             : fmt::format("net_pcap0,rx_pcap={},tx_pcap={}", in_pcap, out_pcap_);
    const std::vector<std::string> args = {
        "run", "--config", config, "--socket", socket, "--", "-l", "0,1", "--no-huge",
        "--no-pci", "--no-shconf", "--file-prefix=" + prefix_, "-m", "512", "--log-level",
        "*:error", "--vdev", vdev};
    command_ = SLUICED_PATH;
    for (const std::string& a : args) {
      command_ += " " + a;
    }
    std::vector<std::string> argv_store = {SLUICED_PATH};
    argv_store.insert(argv_store.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_store) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (log_fd < 0 || null_fd < 0) {
      return std::string("cannot open the log: ") + std::strerror(errno);
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(null_fd, STDOUT_FILENO);
      ::dup2(log_fd, STDERR_FILENO);
      ::execv(SLUICED_PATH, argv.data());
      std::fprintf(stderr, "exec %s: %s\n", SLUICED_PATH, std::strerror(errno));
      ::_exit(127);
    }
    ::close(log_fd);
    ::close(null_fd);
    if (pid < 0) {
      return std::string("fork: ") + std::strerror(errno);
    }
    pid_ = pid;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      int wstatus = 0;
      if (::waitpid(pid_, &wstatus, WNOHANG) == pid_) {
        pid_ = -1;
        exit_status_ = statusOf(wstatus);
        cleanupEal();
        return fmt::format("sluiced exited with status {} before it ran\ncommand: {}\n{}",
                           exit_status_, command_, log());
      }
      if (contains(log(), " running: ") && std::filesystem::exists(socket_)) {
        // The captures are addressed to this MAC; another would make them all not_for_us.
        const std::string port = fmt::format("port 0 (net_pcap0): mac {},", kPortMac.str());
        if (!contains(log(), port)) {
          return fmt::format("sluiced does not log \"{}\": the port's MAC is not the one the "
                             "captures are addressed to\ncommand: {}\n{}",
                             port, command_, log());
        }
        return "";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "sluiced did not log that it runs within 60 s\ncommand: " + command_ + "\n" + log();
  }

  /** Send sig to the daemon (only this child) and wait for it; returns its exit status. */
  int stop(int sig = SIGTERM, int timeout_s = 30) {
    if (pid_ <= 0) {
      return exit_status_;
    }
    ::kill(pid_, sig);
    bool timed_out = false;
    exit_status_ = waitChild(pid_, timeout_s, &timed_out);
    pid_ = -1;
    cleanupEal();
    if (timed_out) {
      ADD_FAILURE() << "sluiced did not stop within " << timeout_s << " s of signal " << sig
                    << "; killed\n" << log();
    }
    return exit_status_;
  }

  /** Send a signal that does not stop it (SIGHUP). */
  void signal(int sig) const {
    if (pid_ > 0) {
      ::kill(pid_, sig);
    }
  }

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  std::string log() const { return readFile(log_path_); }
  const std::string& socket() const { return socket_; }
  const std::string& config() const { return config_; }
  const std::string& outPcap() const { return out_pcap_; }

 private:
  // The EAL leaves an empty runtime directory named after the unique file prefix.
  void cleanupEal() {
    if (!prefix_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all("/var/run/dpdk/" + prefix_, ec);
    }
  }

  pid_t pid_ = -1;
  int exit_status_ = -1;
  std::string prefix_, socket_, config_, out_pcap_, log_path_, command_;
};

/** stats --json, via sluicectl. */
json statsJson(const std::string& socket, const std::string& dir) {
  return parseJson(expectOk(ctl(socket, {"--json", "stats"}, dir)));
}

json listJson(const std::string& socket, const std::string& dir) {
  return parseJson(expectOk(ctl(socket, {"list", "--json"}, dir)));
}

/** Wait until the daemon has taken all `packets` of its capture. "" or what went wrong. */
std::string waitForReplay(const std::string& socket, const std::string& dir, size_t packets) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  json last;
  while (std::chrono::steady_clock::now() < deadline) {
    last = statsJson(socket, dir);
    const json& t = last.at("total");
    if (t.at("packets_in").get<size_t>() >= packets &&
        t.at("packets_out").get<size_t>() + t.at("dropped").get<size_t>() >=
            t.at("packets_in").get<size_t>()) {
      return "";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return fmt::format("the daemon did not take the {} packets of its capture within 30 s; last "
                     "stats: {}",
                     packets, last.dump());
}

/** The services of a list --json answer, keyed by name. */
std::map<std::string, json> servicesByName(const json& list) {
  std::map<std::string, json> out;
  for (const json& s : list.at("services")) {
    out[s.at("name").get<std::string>()] = s;
  }
  return out;
}

/** The backend of service `service` at address:port in a list/stats answer, or null. */
json findBackend(const json& answer, const std::string& service, const std::string& address,
                 uint64_t port) {
  for (const json& s : answer.at("services")) {
    if (s.at("name") != service) {
      continue;
    }
    for (const json& b : s.at("backends")) {
      if (b.at("address") == address && b.at("port") == port) {
        return b;
      }
    }
  }
  return nullptr;
}

/**
 * The configuration part of a list answer: services sorted by name, without the counters, the
 * generation and the version. What a save/reload round trip must keep.
 */
json configOf(const json& list) {
  json services = json::array();
  for (auto& [name, s] : servicesByName(list)) {
    json c = s;
    c.erase("active_flows");
    for (json& b : c.at("backends")) {
      b.erase("active_flows");
    }
    services.push_back(c);
  }
  return services;
}

/** Config text with one more service appended; its first line number is returned in first_line. */
std::string withExtraService(std::string_view base, std::string_view extra, size_t* first_line) {
  std::string text(base);
  if (first_line != nullptr) {
    *first_line = lineCount(text) + 1;
  }
  text += extra;
  return text;
}

// The service appended to the base configuration by the reload tests.
constexpr std::string_view kExtraService = R"([[service]]
name = "extra"
vip = "192.0.2.77"
port = 7
protocol = "udp"
forwarding = "nat"
table_size = 13

[[service.backend]]
address = "10.0.3.1"
port = 7007
mac = "02:00:00:00:04:01"
weight = 3
)";

// Broken on line 7 of this text (table_size not prime); the rest is valid.
constexpr std::string_view kBrokenService = R"([[service]]
name = "broken"
vip = "192.0.2.78"
port = 7
protocol = "udp"
forwarding = "nat"
table_size = 100
)";
constexpr size_t kBrokenServiceBadLine = 7;

// ---------------------------------------------------------------------------------------------
// Base fixture: one daemon per suite, on the base configuration and the capture.

class DaemonSuite : public ::testing::Test {
 protected:
  struct State {
    std::unique_ptr<TempDir> dir;
    std::unique_ptr<Daemon> daemon;
    Capture capture;
    std::string error;  // why the daemon is not usable, or ""
  };

  static void startSuite(State& st, const std::string& tag) {
    st.dir = std::make_unique<TempDir>();
    st.daemon = std::make_unique<Daemon>();
    try {
      st.capture = makeCapture();
      const std::string in = st.dir->file(tag + "-in.pcap");
      pktgen::writePcap(in, st.capture.records);
      const std::string config = st.dir->file(tag + ".toml");
      writeFile(config, baseConfigText());
      st.error = st.daemon->start(st.dir->path(), tag, config, st.dir->file("s.sock"), in);
      if (st.error.empty()) {
        st.error = waitForReplay(st.daemon->socket(), st.dir->path(), st.capture.size());
      }
    } catch (const std::exception& e) {
      st.error = e.what();
    }
  }

  static void stopSuite(State& st) {
    if (st.daemon && st.daemon->running()) {
      const int status = st.daemon->stop(SIGTERM);
      EXPECT_EQ(status, 0) << st.daemon->log();
    }
    st.daemon.reset();
    st.dir.reset();
  }

  virtual State& state() const = 0;

  void SetUp() override { ASSERT_TRUE(state().error.empty()) << state().error; }

  Daemon& daemon() const { return *state().daemon; }
  const std::string& dir() const { return state().dir->path(); }
  std::string file(std::string_view name) const { return state().dir->file(name); }
  const std::string& sock() const { return daemon().socket(); }

  RunResult run(const std::vector<std::string>& args, const RunOptions& opts = {}) const {
    return ctl(sock(), args, dir(), opts);
  }
  json list() const { return listJson(sock(), dir()); }
  json stats() const { return statsJson(sock(), dir()); }
  uint64_t generation() const { return list().at("generation").get<uint64_t>(); }

  /** Run a command that must succeed; returns its stdout. */
  std::string ok(const std::vector<std::string>& args) const {
    return expectOk(run(args)).out;
  }

  /**
   * Run a command that the CLI or the daemon must refuse with `status`, with `needle` in its
   * message, and check that nothing changed (list --json, generation included, is the same).
   */
  void expectRejected(const std::vector<std::string>& args, int status,
                      const std::string& needle) const {
    std::string what;
    for (const std::string& a : args) {
      what += " " + a;
    }
    SCOPED_TRACE("sluicectl" + what);
    const json before = list();
    const RunResult r = run(args);
    EXPECT_EQ(r.status, status) << r.describe();
    EXPECT_TRUE(contains(r.err, needle)) << "expected \"" << needle << "\" in the message\n"
                                         << r.describe();
    EXPECT_TRUE(r.out.empty()) << r.describe();
    if (status == 1) {
      // One line: "sluicectl: what went wrong".
      EXPECT_EQ(r.err.rfind("sluicectl: ", 0), 0u) << r.describe();
      EXPECT_EQ(lineCount(r.err), 1u) << r.describe();
    } else {
      EXPECT_FALSE(r.err.empty()) << r.describe();
    }
    // With --json: the same status and stderr, and the failure as one JSON object on stdout.
    std::vector<std::string> with_json = {"--json"};
    with_json.insert(with_json.end(), args.begin(), args.end());
    const RunResult j = run(with_json);
    EXPECT_EQ(j.status, status) << j.describe();
    EXPECT_EQ(j.err, r.err) << j.describe();
    const json answer = parseJson(j);
    EXPECT_EQ(answer.size(), 2u) << answer.dump();
    EXPECT_EQ(answer.value("ok", true), false) << answer.dump();
    EXPECT_TRUE(contains(answer.value("error", std::string()), needle)) << answer.dump();
    if (status == 1) {
      EXPECT_EQ("sluicectl: " + answer.value("error", std::string()) + "\n", r.err);
    }
    EXPECT_EQ(list(), before) << "a refused command changed the running configuration";
  }

  /**
   * Write the base configuration to the daemon's file and reload it, and end the maintenance of
   * any backend (run-time state, which a reload keeps).
   */
  void restore() const {
    writeFile(daemon().config(), baseConfigText());
    ok({"reload", "--force"});  // whatever the test changed with sluicectl
    const json listed = list();  // kept: a range-for does not extend a temporary's life
    for (const json& s : listed.at("services")) {
      for (const json& b : s.at("backends")) {
        if (b.at("state") == "maintenance") {
          ok({"backend", "up", s.at("name").get<std::string>(), b.at("address").get<std::string>(),
              "--port", std::to_string(b.at("port").get<uint64_t>())});
        }
      }
    }
  }
};

// =============================================================================================
// Read-only commands on a daemon that replayed a known capture

class ReadOnlyCli : public DaemonSuite {
 protected:
  static State& suite() {
    static State s;
    return s;
  }
  State& state() const override { return suite(); }
  static void SetUpTestSuite() { startSuite(suite(), "ro"); }
  static void TearDownTestSuite() { stopSuite(suite()); }
};

struct Observed {
  std::set<std::string> flows;  // client address:port
  uint64_t packets = 0;
  uint64_t bytes = 0;
};

TEST_F(ReadOnlyCli, ListAndStatsJsonMatchTheCapture) {
  const size_t capture = state().capture.size();
  const json s = stats();
  const json l = list();

  // What the daemon sent, from its transmit capture: which backend every client flow went to.
  const std::vector<PcapRecord> out = pktgen::readPcap(daemon().outPcap());
  const std::map<std::string, std::string> dr_macs = {{"02:00:00:00:01:11", "10.0.0.11"},
                                                      {"02:00:00:00:01:12", "10.0.0.12"},
                                                      {"02:00:00:00:01:13", "10.0.0.13"}};
  std::map<std::pair<std::string, uint64_t>, Observed> seen;  // backend -> what it got
  std::map<std::string, std::set<std::string>> flow_backends;   // client flow -> backends
  size_t dns_replies = 0;
  size_t for_others = 0;
  for (const PcapRecord& r : out) {
    const auto d = pktgen::decode(r.data);
    ASSERT_TRUE(d.has_value()) << "an output frame does not decode";
    EXPECT_EQ(d->src_mac, kPortMac) << "every frame leaves from the port's MAC";
    if (isOtherHostsClient(d->src)) {
      ++for_others;
    }
    if (d->src == ip("192.0.2.53") && d->sport == 53) {
      ++dns_replies;  // a NAT reply, rewritten to come from the VIP
      EXPECT_EQ(d->dst_mac, mac("02:00:00:00:00:fe")) << "NAT replies go to the gateway MAC";
      continue;
    }
    std::pair<std::string, uint64_t> backend;
    if (d->dst == ip("192.0.2.10")) {  // DR: the VIP stays, the MAC names the backend
      const auto it = dr_macs.find(d->dst_mac.str());
      ASSERT_NE(it, dr_macs.end()) << "DR frame to unknown MAC " << d->dst_mac.str();
      backend = {it->second, d->dport};
    } else {
      backend = {d->dst.str(), d->dport};
    }
    const std::string client = endpoint(d->src.str(), d->sport);
    Observed& o = seen[backend];
    o.flows.insert(client);
    ++o.packets;
    o.bytes += r.data.size();
    flow_backends[client].insert(endpoint(backend.first, backend.second));
  }
  EXPECT_EQ(flow_backends.size(), size_t{kDnsFlows + kWebFlows + kWeb6Flows})
      << "every client flow of the capture was forwarded";
  for (const auto& [client, backends] : flow_backends) {
    EXPECT_EQ(backends.size(), 1u) << "flow " << client << " went to several backends";
  }
  EXPECT_EQ(dns_replies, size_t{kRepliesFrom21 + kRepliesFrom22});
  EXPECT_EQ(for_others, 0u) << "a frame for another host's MAC was forwarded";

  // Totals: every packet of the capture came in once; what was not sent was dropped. The
  // frames for no service were also handed to the kernel (passed; net_pcap has no exception
  // interface, so they were freed there); those for another MAC were not.
  const json& total = s.at("total");
  EXPECT_EQ(total.at("packets_in").get<size_t>(), capture);
  EXPECT_EQ(total.at("packets_out").get<size_t>(), out.size());
  EXPECT_EQ(total.at("dropped").get<size_t>(), size_t{kNoise + kForOthers});
  EXPECT_EQ(total.at("drops").at("no_service").get<size_t>(), size_t{kNoise});
  EXPECT_EQ(total.at("drops").at("not_for_us").get<size_t>(), size_t{kForOthers});
  uint64_t drop_sum = 0;
  for (const auto& [reason, n] : total.at("drops").items()) {
    drop_sum += n.get<uint64_t>();
  }
  EXPECT_EQ(total.at("dropped").get<uint64_t>(), drop_sum) << "dropped sums the reasons";
  EXPECT_EQ(total.at("passed").get<size_t>(), size_t{kNoise});
  EXPECT_EQ(total.at("answered").get<size_t>(), 0u) << "no ARP, ND or echo in the capture";
  // docs/json.md: packets_in = packets_out + dropped + passed - non_ip - no_service.
  EXPECT_EQ(total.at("packets_in").get<uint64_t>(),
            total.at("packets_out").get<uint64_t>() + total.at("dropped").get<uint64_t>() +
                total.at("passed").get<uint64_t>() -
                total.at("drops").at("non_ip").get<uint64_t>() -
                total.at("drops").at("no_service").get<uint64_t>());
  EXPECT_EQ(total.at("flows_created").get<size_t>(), size_t{kDnsFlows + kWebFlows + kWeb6Flows});
  EXPECT_EQ(total.at("flows_active").get<size_t>(), size_t{kDnsFlows + kWebFlows + kWeb6Flows});
  ASSERT_EQ(s.at("workers").size(), 1u) << "-l 0,1 gives one worker";
  EXPECT_EQ(s.at("workers")[0].at("packets_in"), total.at("packets_in"));
  EXPECT_EQ(s.at("workers")[0].at("passed"), total.at("passed"));
  EXPECT_EQ(s.at("workers")[0].at("answered"), total.at("answered"));
  EXPECT_EQ(s.at("workers")[0].at("worker"), 0);

  // Per backend, stats and list agree with the transmit capture.
  const std::map<std::string, uint64_t> flows_per_service = {
      {"web", kWebFlows}, {"dns", kDnsFlows}, {"web6", kWeb6Flows}};
  const std::map<std::string, uint64_t> packets_per_service = {
      {"web", uint64_t{kWebFlows} * kWebPacketsPerFlow},
      {"dns", uint64_t{kDnsFlows} * kDnsPacketsPerFlow},
      {"web6", uint64_t{kWeb6Flows} * kWeb6PacketsPerFlow}};
  ASSERT_EQ(s.at("services").size(), 3u) << s.dump(2);
  ASSERT_EQ(l.at("services").size(), 3u) << l.dump(2);
  uint64_t all_backend_packets = 0;
  uint64_t all_replies = 0;
  for (const json& svc : s.at("services")) {
    const std::string name = svc.at("name").get<std::string>();
    SCOPED_TRACE("service " + name);
    uint64_t flows = 0, packets = 0, bytes = 0, replies = 0;
    for (const json& b : svc.at("backends")) {
      const std::string addr = b.at("address").get<std::string>();
      const uint64_t port = b.at("port").get<uint64_t>();
      SCOPED_TRACE("backend " + endpoint(addr, port));
      const Observed& o = seen[{addr, port}];
      EXPECT_EQ(b.at("packets").get<uint64_t>(), o.packets);
      EXPECT_EQ(b.at("bytes").get<uint64_t>(), o.bytes);
      EXPECT_EQ(b.at("new_flows").get<uint64_t>(), o.flows.size());
      EXPECT_EQ(b.at("active_flows").get<uint64_t>(), o.flows.size());
      const json lb = findBackend(l, name, addr, port);
      ASSERT_FALSE(lb.is_null());
      EXPECT_EQ(lb.at("active_flows").get<uint64_t>(), o.flows.size()) << "list --json";
      flows += b.at("new_flows").get<uint64_t>();
      packets += b.at("packets").get<uint64_t>();
      bytes += b.at("bytes").get<uint64_t>();
      replies += b.at("reply_packets").get<uint64_t>();
      const uint64_t expected_replies = addr == "10.0.1.21"   ? kRepliesFrom21
                                        : addr == "10.0.1.22" ? kRepliesFrom22
                                                              : 0;
      EXPECT_EQ(b.at("reply_packets").get<uint64_t>(), expected_replies);
    }
    EXPECT_EQ(flows, flows_per_service.at(name));
    EXPECT_EQ(packets, packets_per_service.at(name));
    EXPECT_EQ(svc.at("new_flows").get<uint64_t>(), flows);
    EXPECT_EQ(svc.at("active_flows").get<uint64_t>(), flows);
    EXPECT_EQ(svc.at("packets").get<uint64_t>(), packets);
    EXPECT_EQ(svc.at("bytes").get<uint64_t>(), bytes);
    EXPECT_EQ(svc.at("reply_packets").get<uint64_t>(), replies);
    const auto ls = servicesByName(l).at(name);
    EXPECT_EQ(ls.at("active_flows").get<uint64_t>(), flows) << "list --json";
    all_backend_packets += packets;
    all_replies += replies;
  }
  EXPECT_EQ(all_backend_packets + all_replies, total.at("packets_out").get<uint64_t>());

  // The configuration part of list --json is the configuration file.
  EXPECT_EQ(l.at("ok"), true);
  EXPECT_EQ(l.at("generation"), 1) << "no change since the start";
  EXPECT_EQ(l.at("worker_count"), 1);
  // One schema (docs/json.md): list and stats carry the same service and backend objects.
  EXPECT_EQ(l.at("schema"), 1);
  EXPECT_EQ(s.at("schema"), 1);
  EXPECT_EQ(l.at("services"), s.at("services"));
  const auto services = servicesByName(l);
  ASSERT_TRUE(services.contains("web") && services.contains("dns") && services.contains("web6"));
  const json& web = services.at("web");
  EXPECT_EQ(web.at("vip"), "192.0.2.10");
  EXPECT_EQ(web.at("port"), 80);
  EXPECT_EQ(web.at("protocol"), "tcp");
  EXPECT_EQ(web.at("forwarding"), "dr");
  EXPECT_EQ(web.at("scheduler"), "maglev");
  EXPECT_EQ(web.at("table_size"), 65537) << "the default";
  ASSERT_EQ(web.at("backends").size(), 3u);
  EXPECT_EQ(web.at("backends")[2].at("address"), "10.0.0.13");
  EXPECT_EQ(web.at("backends")[2].at("port"), 80) << "DR backends take the service port";
  EXPECT_EQ(web.at("backends")[2].at("mac"), "02:00:00:00:01:13");
  EXPECT_EQ(web.at("backends")[2].at("weight"), 200);
  EXPECT_EQ(web.at("backends")[2].at("state"), "up");
  // Every backend of the file: a MAC, no health check, not in maintenance, flows kept when down.
  for (const auto& [name, svc] : services) {
    for (const json& b : svc.at("backends")) {
      SCOPED_TRACE(name + " " + b.dump());
      EXPECT_EQ(b.at("state"), "up");
      EXPECT_TRUE(b.at("mac").is_string());
      EXPECT_EQ(b.at("reschedules_flows"), false) << "on_backend_down = \"keep\", the default";
      EXPECT_EQ(b.at("health"), (json{{"check", "none"}, {"maintenance", false}}));
      EXPECT_FALSE(b.contains("unresolved_because"));
    }
  }
  const json& dns = services.at("dns");
  EXPECT_EQ(dns.at("protocol"), "udp");
  EXPECT_EQ(dns.at("forwarding"), "nat");
  EXPECT_EQ(dns.at("table_size"), 251);
  ASSERT_EQ(dns.at("backends").size(), 2u);
  EXPECT_EQ(dns.at("backends")[0].at("port"), 5353);
  EXPECT_EQ(dns.at("backends")[0].at("weight"), 1) << "the fixture's weight";
  const json& web6 = services.at("web6");
  EXPECT_EQ(web6.at("vip"), "2001:db8::10");
  EXPECT_EQ(web6.at("table_size"), 1009);
  ASSERT_EQ(web6.at("backends").size(), 2u);
  EXPECT_EQ(web6.at("backends")[1].at("address"), "2001:db8:1::12");
  EXPECT_EQ(web6.at("backends")[1].at("port"), 8443);
}

TEST_F(ReadOnlyCli, ListTextMatchesJson) {
  const json j = list();
  for (const std::vector<std::string>& args : {std::vector<std::string>{"list"},
                                               std::vector<std::string>{"--json", "list"}}) {
    const RunResult r = run(args);
    ASSERT_EQ(r.status, 0) << r.describe();
    EXPECT_TRUE(r.err.empty()) << r.describe();
    if (args.size() == 2) {
      // --json before the subcommand works as well as after it.
      EXPECT_EQ(parseJson(r), j);
      continue;
    }
    const std::vector<std::string> ls = lines(r.out);
    ASSERT_GE(ls.size(), 3u) << r.out;
    EXPECT_EQ(ls[0], fmt::format("Sluice {} (generation {}, 1 worker)",
                                 j.at("version").get<std::string>(),
                                 j.at("generation").get<uint64_t>()));
    EXPECT_EQ(ls[1], "Prot LocalAddress:Port Scheduler Forward Name");
    EXPECT_EQ(ls[2], "  -> RemoteAddress:Port                       Weight State       "
                     "ActiveFlows  Health (last result, since)");
    const std::regex service_re(R"((TCP|UDP)\s+(\S+) (\S+) (dr|nat) (\S+))");
    const std::regex backend_re(
        R"(  -> (\S+)\s+(\d+) (up|drained|down|maintenance|unresolved)\s+(\d+)  (\S.*))");
    size_t at = 3;
    for (const json& s : j.at("services")) {
      ASSERT_LT(at, ls.size()) << r.out;
      std::smatch m;
      ASSERT_TRUE(std::regex_match(ls[at], m, service_re)) << ls[at];
      std::string proto = s.at("protocol").get<std::string>();
      std::transform(proto.begin(), proto.end(), proto.begin(), ::toupper);
      EXPECT_EQ(m[1], proto);
      EXPECT_EQ(m[2], endpoint(s.at("vip"), s.at("port")));
      EXPECT_EQ(m[3], "maglev");
      EXPECT_EQ(m[4], s.at("forwarding").get<std::string>());
      EXPECT_EQ(m[5], s.at("name").get<std::string>());
      ++at;
      for (const json& b : s.at("backends")) {
        ASSERT_LT(at, ls.size()) << r.out;
        ASSERT_TRUE(std::regex_match(ls[at], m, backend_re)) << ls[at];
        EXPECT_EQ(m[1], endpoint(b.at("address"), b.at("port")));
        EXPECT_EQ(std::stoull(m[2]), b.at("weight").get<uint64_t>());
        EXPECT_EQ(m[3], b.at("state").get<std::string>());
        EXPECT_EQ(std::stoull(m[4]), b.at("active_flows").get<uint64_t>());
        EXPECT_EQ(m[5], "no check") << "the file has no health check";
        // The columns line up under the header's.
        EXPECT_EQ(ls[at], fmt::format("  -> {:<40} {:>6} {:<11} {:>11}  no check",
                                      endpoint(b.at("address"), b.at("port")),
                                      b.at("weight").get<uint64_t>(),
                                      b.at("state").get<std::string>(),
                                      b.at("active_flows").get<uint64_t>()));
        ++at;
      }
    }
    EXPECT_EQ(at, ls.size()) << "nothing after the last backend\n" << r.out;
    EXPECT_TRUE(contains(r.out, "UDP  192.0.2.53:53 maglev nat dns\n")) << r.out;
    EXPECT_TRUE(contains(r.out, "TCP  [2001:db8::10]:443 maglev nat web6\n")) << r.out;
  }
}

TEST_F(ReadOnlyCli, StatsTextMatchesJson) {
  const json j = stats();
  const json j2 = parseJson(expectOk(run({"stats", "--json"})));
  EXPECT_EQ(j2, j) << "stats --json and --json stats; nothing moves on an idle daemon";

  const RunResult r = run({"stats"});
  ASSERT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(r.err.empty());
  const std::vector<std::string> ls = lines(r.out);
  ASSERT_GE(ls.size(), 2u);
  EXPECT_TRUE(std::regex_match(
      ls[0],
      std::regex(R"(Prot LocalAddress:Port\s+Packets\s+Bytes\s+NewFlows\s+ActFlows\s+Replies)")))
      << ls[0];
  EXPECT_EQ(ls[1], "  -> RemoteAddress:Port");
  const std::regex service_re(R"((TCP|UDP)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+))");
  const std::regex backend_re(R"(  -> (\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+))");
  size_t at = 2;
  auto check = [](const std::smatch& m, const json& x) {
    EXPECT_EQ(std::stoull(m[3]), x.at("packets").get<uint64_t>());
    EXPECT_EQ(std::stoull(m[4]), x.at("bytes").get<uint64_t>());
    EXPECT_EQ(std::stoull(m[5]), x.at("new_flows").get<uint64_t>());
    EXPECT_EQ(std::stoull(m[6]), x.at("active_flows").get<uint64_t>());
    EXPECT_EQ(std::stoull(m[7]), x.at("reply_packets").get<uint64_t>());
  };
  for (const json& s : j.at("services")) {
    ASSERT_LT(at, ls.size());
    std::smatch m;
    ASSERT_TRUE(std::regex_match(ls[at], m, service_re)) << ls[at];
    EXPECT_EQ(m[2], endpoint(s.at("vip"), s.at("port")));
    check(m, s);
    ++at;
    for (const json& b : s.at("backends")) {
      ASSERT_LT(at, ls.size());
      std::smatch bm;
      ASSERT_TRUE(std::regex_match(ls[at], bm, backend_re)) << ls[at];
      EXPECT_EQ(bm[1], endpoint(b.at("address"), b.at("port")));
      EXPECT_EQ(std::stoull(bm[2]), b.at("packets").get<uint64_t>());
      EXPECT_EQ(std::stoull(bm[3]), b.at("bytes").get<uint64_t>());
      EXPECT_EQ(std::stoull(bm[4]), b.at("new_flows").get<uint64_t>());
      EXPECT_EQ(std::stoull(bm[5]), b.at("active_flows").get<uint64_t>());
      EXPECT_EQ(std::stoull(bm[6]), b.at("reply_packets").get<uint64_t>());
      ++at;
    }
  }
  ASSERT_LT(at + 3, ls.size()) << r.out;
  EXPECT_EQ(ls[at], "") << "a blank line before the workers";
  EXPECT_TRUE(std::regex_match(
      ls[at + 1], std::regex(R"(Worker\s+PacketsIn\s+PacketsOut\s+Dropped\s+Drops by reason)")))
      << ls[at + 1];
  const std::regex worker_re(R"((\d+|total)\s+(\d+)\s+(\d+)\s+(\d+)  (.+))");
  std::smatch w;
  ASSERT_TRUE(std::regex_match(ls[at + 2], w, worker_re)) << ls[at + 2];
  EXPECT_EQ(w[1], "0");
  ASSERT_TRUE(std::regex_match(ls[at + 3], w, worker_re)) << ls[at + 3];
  EXPECT_EQ(w[1], "total");
  const json& t = j.at("total");
  EXPECT_EQ(std::stoull(w[2]), t.at("packets_in").get<uint64_t>());
  EXPECT_EQ(std::stoull(w[2]), state().capture.size());
  EXPECT_EQ(std::stoull(w[3]), t.at("packets_out").get<uint64_t>());
  EXPECT_EQ(std::stoull(w[4]), uint64_t{kNoise + kForOthers});
  EXPECT_EQ(w[5], fmt::format("no_service={} not_for_us={}", kNoise, kForOthers))
      << "only the non-zero reasons";

  // The flow table, per worker and in total, as the JSON has it.
  ASSERT_LT(at + 7, ls.size()) << r.out;
  EXPECT_EQ(ls[at + 4], "") << "a blank line before the flow table";
  EXPECT_TRUE(std::regex_match(ls[at + 5], std::regex(R"(Worker\s+FlowsActive\s+Created\s+Expired)"
                                                      R"(\s+SynExpired\s+Evicted\s+SynEvicted)"
                                                      R"(\s+Unpinned\s+Rescheduled)")))
      << ls[at + 5];
  const std::regex flows_re(
      R"((\d+|total)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+))");
  const char* const kFlowKeys[] = {"flows_active", "flows_created", "flows_expired",
                                   "flows_syn_expired", "flows_evicted", "flows_syn_evicted",
                                   "new_flows_unpinned", "flows_rescheduled"};
  for (const auto& [line, name, of] :
       {std::tuple{at + 6, std::string("0"), j.at("workers").at(0)},
        std::tuple{at + 7, std::string("total"), t}}) {
    std::smatch f;
    ASSERT_TRUE(std::regex_match(ls[line], f, flows_re)) << ls[line];
    EXPECT_EQ(f[1], name);
    for (size_t k = 0; k < std::size(kFlowKeys); ++k) {
      EXPECT_EQ(std::stoull(f[k + 2]), of.at(kFlowKeys[k]).get<uint64_t>()) << kFlowKeys[k];
    }
  }
  EXPECT_GT(t.at("flows_created").get<uint64_t>(), 0u) << "the capture made flows";
  EXPECT_EQ(at + 8, ls.size()) << r.out;
}

TEST_F(ReadOnlyCli, StatsRateIsZeroWhenIdle) {
  const json s = stats();
  {
    const auto t0 = std::chrono::steady_clock::now();
    const RunResult r = run({"--json", "stats", "--rate", "--interval", "0.2"});
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_EQ(r.status, 0) << r.describe();
    EXPECT_GE(took, 0.2) << "it waits the interval";
    const json j = parseJson(r);
    EXPECT_EQ(j.at("ok"), true);
    EXPECT_GE(j.at("interval_s").get<double>(), 0.2);
    EXPECT_LT(j.at("interval_s").get<double>(), 5.0);
    ASSERT_EQ(j.at("services").size(), s.at("services").size());
    for (size_t i = 0; i < j.at("services").size(); ++i) {
      const json& rs = j.at("services")[i];
      const json& ss = s.at("services")[i];
      EXPECT_EQ(rs.at("name"), ss.at("name"));
      for (const char* k : {"packets_per_s", "bytes_per_s", "new_flows_per_s", "replies_per_s"}) {
        EXPECT_EQ(rs.at(k).get<double>(), 0.0) << rs.at("name") << " " << k;
      }
      EXPECT_EQ(rs.at("active_flows"), ss.at("active_flows")) << "active flows, not a rate";
      ASSERT_EQ(rs.at("backends").size(), ss.at("backends").size());
      for (size_t b = 0; b < rs.at("backends").size(); ++b) {
        const json& rb = rs.at("backends")[b];
        for (const char* k : {"packets_per_s", "bytes_per_s", "new_flows_per_s", "replies_per_s"}) {
          EXPECT_EQ(rb.at(k).get<double>(), 0.0) << rb.dump();
        }
        EXPECT_EQ(rb.at("active_flows"), ss.at("backends")[b].at("active_flows"));
      }
    }
    ASSERT_EQ(j.at("workers").size(), 1u);
    for (const char* k : {"packets_in_per_s", "packets_out_per_s", "dropped_per_s"}) {
      EXPECT_EQ(j.at("workers")[0].at(k).get<double>(), 0.0) << k;
    }
  }
  {
    const RunResult r = run({"stats", "--rate", "--interval", "0.2"});
    ASSERT_EQ(r.status, 0) << r.describe();
    const std::vector<std::string> ls = lines(r.out);
    ASSERT_GE(ls.size(), 3u) << r.out;
    std::smatch m;
    ASSERT_TRUE(std::regex_match(ls[0], m, std::regex(R"(rates over (\d+\.\d) s)"))) << ls[0];
    EXPECT_GE(std::stod(m[1]), 0.2) << ls[0];
    const std::regex row(R"((TCP|UDP)\s+\S+\s+0\s+0\s+0\s+(\d+)\s+0)");
    const std::regex brow(R"(  -> \S+\s+0\s+0\s+0\s+(\d+)\s+0)");
    const std::regex wrow(R"(0\s+0\s+0\s+0)");
    size_t rows = 0, brows = 0, wrows = 0;
    for (const std::string& l : ls) {
      rows += std::regex_match(l, row) ? 1 : 0;
      brows += std::regex_match(l, brow) ? 1 : 0;
      wrows += std::regex_match(l, wrow) ? 1 : 0;
    }
    EXPECT_EQ(rows, 3u) << r.out;
    EXPECT_EQ(brows, 7u) << r.out;
    EXPECT_EQ(wrows, 1u) << r.out;
  }
  // --interval is 0.1..60 s.
  for (const char* bad : {"0.01", "61", "x"}) {
    const RunResult r = run({"stats", "--rate", "--interval", bad});
    EXPECT_EQ(r.status, 2) << r.describe();
    EXPECT_TRUE(contains(r.err, "--interval")) << r.describe();
    EXPECT_TRUE(r.out.empty());
  }
}

TEST_F(ReadOnlyCli, VersionHelpAndSocketFromEnvironment) {
  const RunResult v = run({"version"});
  ASSERT_EQ(v.status, 0) << v.describe();
  EXPECT_TRUE(std::regex_match(
      v.out, std::regex(R"(sluicectl (\d+\.\d+\.\d+)\nsluiced \1 \(generation 1\)\n)")))
      << v.out;
  const RunResult ver = runProgram(SLUICECTL_PATH, {"--version"}, dir());
  EXPECT_EQ(ver.status, 0) << ver.describe();
  EXPECT_TRUE(contains(ver.out, "sluicectl ")) << ver.describe();
  const RunResult help = runProgram(SLUICECTL_PATH, {"--help"}, dir());
  EXPECT_EQ(help.status, 0) << help.describe();
  for (const char* cmd : {"list", "stats", "service", "backend", "reload", "save", "version"}) {
    EXPECT_TRUE(contains(help.out, cmd)) << cmd << "\n" << help.out;
  }

  // $SLUICE_SOCKET instead of --socket; --socket wins over it.
  RunOptions env;
  env.env = {{"SLUICE_SOCKET", sock()}};
  const RunResult e = runProgram(SLUICECTL_PATH, {"--json", "list"}, dir(), env);
  ASSERT_EQ(e.status, 0) << e.describe();
  EXPECT_EQ(parseJson(e), list());
  env.env = {{"SLUICE_SOCKET", file("nowhere.sock")}};
  const RunResult both = runProgram(SLUICECTL_PATH, {"--socket", sock(), "version"}, dir(), env);
  EXPECT_EQ(both.status, 0) << both.describe();
  const RunResult wrong = runProgram(SLUICECTL_PATH, {"version"}, dir(), env);
  EXPECT_EQ(wrong.status, 3) << wrong.describe();
  EXPECT_TRUE(contains(wrong.err, file("nowhere.sock"))) << wrong.describe();
}

TEST_F(ReadOnlyCli, SocketIsRootOnly) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to run sluicectl as nobody";
  }
  struct stat st {};
  ASSERT_EQ(::lstat(sock().c_str(), &st), 0) << std::strerror(errno);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u) << std::oct << (st.st_mode & 07777);
  EXPECT_EQ(st.st_uid, 0u);

  // Let nobody through the (0700) temporary directory, so that only the socket's own mode can
  // refuse it. The build tree may sit where nobody cannot reach (a clone under /root), so nobody
  // runs a copy of sluicectl placed in that directory.
  ASSERT_EQ(::chmod(dir().c_str(), 0711), 0);
  const std::string ctl_copy = file("sluicectl-for-nobody");
  std::filesystem::copy_file(SLUICECTL_PATH, ctl_copy,
                             std::filesystem::copy_options::overwrite_existing);
  ASSERT_EQ(::chmod(ctl_copy.c_str(), 0755), 0);
  RunOptions as_nobody;
  as_nobody.as_user = kNobody;
  const json before = list();
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"list"}, std::vector<std::string>{"--json", "stats"},
        std::vector<std::string>{"backend", "drain", "dns", "10.0.1.21", "--port", "5353"},
        std::vector<std::string>{"service", "del", "web"}}) {
    std::vector<std::string> all = {"--socket", sock()};
    all.insert(all.end(), args.begin(), args.end());
    const RunResult r = runProgram(ctl_copy, all, dir(), as_nobody);
    EXPECT_EQ(r.status, 3) << r.describe();
    EXPECT_TRUE(contains(r.err, "permission denied")) << r.describe();
    EXPECT_EQ(r.err.rfind("sluicectl: ", 0), 0u) << r.describe();
    EXPECT_EQ(lineCount(r.err), 1u) << r.describe();
    if (args[0] == "--json") {
      EXPECT_EQ(parseJson(r).at("ok"), false) << r.describe();
    } else {
      EXPECT_TRUE(r.out.empty()) << r.describe();
    }
  }
  ::chmod(dir().c_str(), 0700);
  EXPECT_EQ(list(), before) << "nobody changed nothing";
  // Root still can.
  EXPECT_EQ(run({"version"}).status, 0);
}

TEST_F(ReadOnlyCli, SecondDaemonOnTheSameSocketIsRefused) {
  const std::string in = file("second-in.pcap");
  pktgen::writePcap(in, state().capture.records);
  Daemon second;
  const std::string err = second.start(dir(), "second", daemon().config(), sock(), in);
  EXPECT_FALSE(err.empty()) << "a second sluiced started on a socket in use";
  EXPECT_NE(err.find("exited with status 1"), std::string::npos) << err;
  EXPECT_NE(err.find("already serving"), std::string::npos) << err;
  EXPECT_NE(err.find(sock()), std::string::npos) << err;

  // The first one is untouched: same socket file, still answering.
  struct stat st {};
  ASSERT_EQ(::lstat(sock().c_str(), &st), 0) << "the refused daemon removed the live socket";
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_TRUE(daemon().running());
  const RunResult v = run({"version"});
  EXPECT_EQ(v.status, 0) << v.describe();
  EXPECT_EQ(stats().at("total").at("packets_in").get<size_t>(), state().capture.size());
}

TEST_F(ReadOnlyCli, UsageErrorsExit2AndChangeNothing) {
  const std::string mac_ok = "02:00:00:00:09:01";
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{}, "a command is required"},
      // An unknown command is named.
      {{"frob"}, "not expected: frob"},
      {{"service"}, "a service command is required"},
      {{"backend"}, "a backend command is required"},
      {{"service", "frob"}, "not expected: frob"},
      {{"backend", "frob", "web"}, "not expected"},
      {{"service", "add"}, "NAME"},
      {{"service", "add", "x", "--vip", "192.0.2.99", "--port", "80", "--protocol", "tcp"},
       "--forwarding"},
      {{"service", "add", "x", "--port", "80", "--protocol", "tcp", "--forwarding", "dr"},
       "--vip"},
      {{"service", "add", "x", "--vip", "192.0.2.99", "--port", "80", "--protocol", "sctp",
        "--forwarding", "dr"},
       "sctp"},
      {{"service", "add", "x", "--vip", "192.0.2.99", "--port", "80", "--protocol", "tcp",
        "--forwarding", "tun"},
       "tun"},
      {{"service", "add", "x", "--vip", "192.0.2.99", "--port", "70000", "--protocol", "tcp",
        "--forwarding", "dr"},
       "--port"},
      {{"service", "add", "x", "--vip", "192.0.2.99", "--port", "0", "--protocol", "tcp",
        "--forwarding", "dr"},
       "--port"},
      {{"service", "add", "x", "--vip", "192.0.2.99", "--port", "80", "--protocol", "tcp",
        "--forwarding", "dr", "--scheduler", "rr"},
       "rr"},
      {{"service", "edit", "web", "--port", "http"}, "--port"},
      {{"service", "del"}, "NAME"},
      {{"backend", "add", "web"}, "ADDRESS"},
      // (backend add without --mac is valid for sluicectl: whether the MAC can be resolved is
      // the daemon's to say, see EditCli.RejectedRequestsChangeNothing.)
      {{"backend", "add", "web", "10.0.0.14", "--mac", mac_ok, "--weight", "heavy"}, "--weight"},
      {{"backend", "add", "web", "10.0.0.14", "--mac", mac_ok, "--port", "70000"}, "--port"},
      {{"backend", "add", "web", "10.0.0.14", "--mac", mac_ok, "--weight", "-1"}, "--weight"},
      {{"backend", "add", "web", "10.0.0.14", "--mac", mac_ok, "--weight", "4294967296"},
       "--weight"},
      {{"backend", "del", "web"}, "ADDRESS"},
      {{"backend", "drain"}, "SERVICE"},
      {{"backend", "down"}, "SERVICE"},
      {{"backend", "up", "web"}, "ADDRESS"},
      {{"backend", "down", "web", "10.0.0.11", "--weight", "0"}, "--weight"},
      {{"backend", "up", "web", "10.0.0.11", "--port", "0"}, "--port"},
      {{"backend", "edit", "web", "10.0.0.11", "--bogus", "1"}, "--bogus"},
      {{"list", "--bogus"}, "--bogus"},
      {{"stats", "--interval"}, "--interval"},
      {{"reload", "now"}, "now"},
      {{"--socket"}, "--socket"},
  };
  for (const auto& [args, needle] : cases) {
    expectRejected(args, 2, needle);
  }
}

// =============================================================================================
// Commands that change the configuration

class EditCli : public DaemonSuite {
 protected:
  static State& suite() {
    static State s;
    return s;
  }
  State& state() const override { return suite(); }
  static void SetUpTestSuite() { startSuite(suite(), "edit"); }
  static void TearDownTestSuite() { stopSuite(suite()); }

  void SetUp() override {
    DaemonSuite::SetUp();
    restore();
  }
};

TEST_F(EditCli, ServiceAddEditDel) {
  uint64_t gen = generation();

  // add, --json: the daemon's answer.
  json r = parseJson(expectOk(run({"--json", "service", "add", "api", "--vip", "192.0.2.20",
                                    "--port", "8080", "--protocol", "tcp", "--forwarding", "nat",
                                    "--table-size", "251"})));
  EXPECT_EQ(r.at("ok"), true);
  EXPECT_EQ(r.at("change"), "service add api");
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  EXPECT_TRUE(r.at("publish_us").is_number());
  json l = list();
  EXPECT_EQ(l.at("generation").get<uint64_t>(), gen);
  auto services = servicesByName(l);
  ASSERT_TRUE(services.contains("api")) << l.dump(2);
  EXPECT_EQ(services.at("api"), (json{{"name", "api"},
                                      {"vip", "192.0.2.20"},
                                      {"port", 8080},
                                      {"protocol", "tcp"},
                                      {"forwarding", "nat"},
                                      {"scheduler", "maglev"},
                                      {"table_size", 251},
                                      {"packets", 0},
                                      {"bytes", 0},
                                      {"new_flows", 0},
                                      {"reply_packets", 0},
                                      {"reply_bytes", 0},
                                      {"active_flows", 0},
                                      {"backends", json::array()}}));

  // add, text: nothing on stdout; the defaults (maglev, 65537).
  const RunResult plain = run({"service", "add", "api6", "--vip", "2001:db8::20", "--port", "53",
                               "--protocol", "udp", "--forwarding", "dr", "--scheduler",
                               "maglev"});
  ASSERT_EQ(plain.status, 0) << plain.describe();
  EXPECT_TRUE(plain.out.empty()) << plain.describe();
  EXPECT_TRUE(plain.err.empty()) << plain.describe();
  ++gen;
  services = servicesByName(list());
  ASSERT_TRUE(services.contains("api6"));
  EXPECT_EQ(services.at("api6").at("table_size"), 65537);
  EXPECT_EQ(services.at("api6").at("vip"), "2001:db8::20");
  EXPECT_EQ(services.at("api6").at("forwarding"), "dr");
  EXPECT_TRUE(contains(ok({"list"}), "UDP  [2001:db8::20]:53 maglev dr api6\n"));

  // edit several fields at once, renaming it.
  r = parseJson(expectOk(run({"--json", "service", "edit", "api", "--port", "8081",
                               "--protocol", "udp", "--table-size", "257", "--name", "api2"})));
  EXPECT_EQ(r.at("change"), "service edit api");
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  services = servicesByName(list());
  EXPECT_FALSE(services.contains("api")) << "renamed";
  ASSERT_TRUE(services.contains("api2"));
  EXPECT_EQ(services.at("api2").at("vip"), "192.0.2.20");
  EXPECT_EQ(services.at("api2").at("port"), 8081);
  EXPECT_EQ(services.at("api2").at("protocol"), "udp");
  EXPECT_EQ(services.at("api2").at("forwarding"), "nat");
  EXPECT_EQ(services.at("api2").at("table_size"), 257);
  EXPECT_TRUE(ok({"service", "edit", "api2", "--vip", "192.0.2.21", "--forwarding", "dr"}).empty());
  ++gen;
  services = servicesByName(list());
  EXPECT_EQ(services.at("api2").at("vip"), "192.0.2.21");
  EXPECT_EQ(services.at("api2").at("forwarding"), "dr");

  // A DR service's backends follow its port (DR cannot change the port).
  ok({"service", "edit", "web", "--port", "8080"});
  ++gen;
  services = servicesByName(list());
  EXPECT_EQ(services.at("web").at("port"), 8080);
  ASSERT_EQ(services.at("web").at("backends").size(), 3u);
  for (const json& b : services.at("web").at("backends")) {
    EXPECT_EQ(b.at("port"), 8080) << b.dump();
  }
  // ... but NAT backends keep theirs.
  ok({"service", "edit", "dns", "--port", "5300"});
  ++gen;
  services = servicesByName(list());
  EXPECT_EQ(services.at("dns").at("port"), 5300);
  for (const json& b : services.at("dns").at("backends")) {
    EXPECT_EQ(b.at("port"), 5353) << b.dump();
  }

  // del: the service and its backends go.
  r = parseJson(expectOk(run({"--json", "service", "del", "api2"})));
  EXPECT_EQ(r.at("change"), "service del api2");
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  EXPECT_TRUE(ok({"service", "del", "api6"}).empty());
  ++gen;
  ok({"service", "del", "web"});
  ++gen;
  l = list();
  services = servicesByName(l);
  EXPECT_FALSE(services.contains("api2"));
  EXPECT_FALSE(services.contains("api6"));
  EXPECT_FALSE(services.contains("web"));
  EXPECT_EQ(services.size(), 2u);
  EXPECT_EQ(l.at("generation").get<uint64_t>(), gen) << "one generation per change";
  EXPECT_FALSE(contains(ok({"list"}), "192.0.2.10")) << "web is gone from the text list too";

  // A deleted name can be used again.
  ok({"service", "add", "web", "--vip", "192.0.2.10", "--port", "80", "--protocol", "tcp",
      "--forwarding", "dr"});
  EXPECT_TRUE(servicesByName(list()).contains("web"));
}

TEST_F(EditCli, BackendAddEditDrainDel) {
  uint64_t gen = generation();

  json r = parseJson(expectOk(run({"--json", "backend", "add", "dns", "10.0.1.23", "--port",
                                    "5353", "--mac", "02:00:00:00:02:23", "--weight", "5"})));
  EXPECT_EQ(r.at("ok"), true);
  EXPECT_EQ(r.at("change"), "backend add dns 10.0.1.23:5353");
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  json b = findBackend(list(), "dns", "10.0.1.23", 5353);
  ASSERT_FALSE(b.is_null());
  // (Its active_flows: see Lifecycle.AddedBackendDoesNotInheritTheCountersOfADeletedOne; the
  // earlier tests of this suite deleted backends that had flows.)
  b.erase("active_flows");
  EXPECT_EQ(b, (json{{"address", "10.0.1.23"},
                     {"port", 5353},
                     {"mac", "02:00:00:00:02:23"},
                     {"weight", 5},
                     {"state", "up"},
                     {"reschedules_flows", false},
                     {"health", {{"check", "none"}, {"maintenance", false}}},
                     {"packets", 0},
                     {"bytes", 0},
                     {"new_flows", 0},
                     {"reply_packets", 0},
                     {"reply_bytes", 0}}));

  // Defaults: the service port, weight 1. Text mode prints nothing.
  EXPECT_TRUE(ok({"backend", "add", "web", "10.0.0.14", "--mac", "02:00:00:00:01:14"}).empty());
  ++gen;
  b = findBackend(list(), "web", "10.0.0.14", 80);
  ASSERT_FALSE(b.is_null());
  EXPECT_EQ(b.at("weight"), 1);
  EXPECT_EQ(b.at("mac"), "02:00:00:00:01:14");
  // A DR backend may repeat the service port explicitly.
  ok({"backend", "add", "web", "10.0.0.15", "--port", "80", "--mac", "02:00:00:00:01:15"});
  ++gen;
  EXPECT_FALSE(findBackend(list(), "web", "10.0.0.15", 80).is_null());

  // Weight 0 at once: drained. IPv6.
  ok({"backend", "add", "web6", "2001:db8:1::13", "--port", "8443", "--mac", "02:00:00:00:03:13",
      "--weight", "0"});
  ++gen;
  b = findBackend(list(), "web6", "2001:db8:1::13", 8443);
  ASSERT_FALSE(b.is_null());
  EXPECT_EQ(b.at("weight"), 0);
  EXPECT_EQ(b.at("state"), "drained");
  EXPECT_TRUE(contains(ok({"list"}), "[2001:db8:1::13]:8443")) << ok({"list"});

  // Same address, another port, on a NAT service.
  ok({"backend", "add", "dns", "10.0.1.23", "--port", "5354", "--mac", "02:00:00:00:02:24",
      "--weight", "65535"});
  ++gen;
  EXPECT_EQ(findBackend(list(), "dns", "10.0.1.23", 5354).at("weight"), 65535);

  // edit: mac and weight, alone or together, with --port to pick one of the two.
  r = parseJson(expectOk(run({"--json", "backend", "edit", "dns", "10.0.1.23", "--port", "5353",
                               "--mac", "02:00:00:00:02:33", "--weight", "9"})));
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  EXPECT_TRUE(contains(r.at("change").get<std::string>(), "dns 10.0.1.23:5353")) << r.dump();
  b = findBackend(list(), "dns", "10.0.1.23", 5353);
  EXPECT_EQ(b.at("mac"), "02:00:00:00:02:33");
  EXPECT_EQ(b.at("weight"), 9);
  EXPECT_EQ(findBackend(list(), "dns", "10.0.1.23", 5354).at("mac"), "02:00:00:00:02:24")
      << "the other port is untouched";
  ok({"backend", "edit", "web", "10.0.0.14", "--weight", "7"});
  ++gen;
  b = findBackend(list(), "web", "10.0.0.14", 80);
  EXPECT_EQ(b.at("weight"), 7);
  EXPECT_EQ(b.at("mac"), "02:00:00:00:01:14");
  ok({"backend", "edit", "web", "10.0.0.14", "--mac", "02:00:00:00:01:44"});
  ++gen;
  b = findBackend(list(), "web", "10.0.0.14", 80);
  EXPECT_EQ(b.at("weight"), 7);
  EXPECT_EQ(b.at("mac"), "02:00:00:00:01:44");
  ok({"backend", "edit", "web6", "2001:db8:1::13", "--weight", "2"});
  ++gen;
  EXPECT_EQ(findBackend(list(), "web6", "2001:db8:1::13", 8443).at("state"), "up");

  // drain: weight 0, state drained, its flows stay pinned to it (that it keeps a non-zero
  // count is checked on a fresh daemon in Lifecycle.ChangesThenSigtermExitsZeroAndReportsPackets).
  const json before = findBackend(list(), "dns", "10.0.1.22", 5353);
  ASSERT_FALSE(before.is_null());
  r = parseJson(expectOk(run({"--json", "backend", "drain", "dns", "10.0.1.22"})));
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  EXPECT_TRUE(contains(r.at("change").get<std::string>(), "dns 10.0.1.22:5353")) << r.dump();
  json after = findBackend(list(), "dns", "10.0.1.22", 5353);
  EXPECT_EQ(after.at("weight"), 0);
  EXPECT_EQ(after.at("state"), "drained");
  EXPECT_EQ(after.at("mac"), before.at("mac"));
  EXPECT_EQ(after.at("active_flows"), before.at("active_flows"));
  EXPECT_EQ(after.at("health"), (json{{"check", "none"}, {"maintenance", false}}))
      << "drained is not down";
  const std::regex drained(R"(  -> 10\.0\.1\.22:5353\s+0 drained\s+(\d+)  no check)");
  bool seen = false;
  for (const std::string& line : lines(ok({"list"}))) {
    std::smatch m;
    if (std::regex_match(line, m, drained)) {
      seen = true;
      EXPECT_EQ(std::stoull(m[1]), before.at("active_flows").get<uint64_t>());
    }
  }
  EXPECT_TRUE(seen) << ok({"list"});
  // Draining twice is harmless; drain with --port and an IPv6 backend.
  ok({"backend", "drain", "dns", "10.0.1.22", "--port", "5353"});
  ++gen;
  ok({"backend", "drain", "web6", "2001:db8:1::11"});
  ++gen;
  EXPECT_EQ(findBackend(list(), "web6", "2001:db8:1::11", 8443).at("state"), "drained");
  // Undrain.
  ok({"backend", "edit", "dns", "10.0.1.22", "--weight", "1"});
  ++gen;
  after = findBackend(list(), "dns", "10.0.1.22", 5353);
  EXPECT_EQ(after.at("state"), "up");
  EXPECT_EQ(after.at("active_flows"), before.at("active_flows"));

  // del.
  r = parseJson(expectOk(run({"--json", "backend", "del", "dns", "10.0.1.23", "--port", "5353"})));
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  EXPECT_TRUE(findBackend(list(), "dns", "10.0.1.23", 5353).is_null());
  EXPECT_FALSE(findBackend(list(), "dns", "10.0.1.23", 5354).is_null());
  // Now the address is unambiguous again: no --port needed.
  EXPECT_TRUE(ok({"backend", "del", "dns", "10.0.1.23"}).empty());
  ++gen;
  ok({"backend", "del", "web", "10.0.0.14"});
  ++gen;
  ok({"backend", "del", "web", "10.0.0.15", "--port", "80"});
  ++gen;
  ok({"backend", "del", "web6", "2001:db8:1::13", "--port", "8443"});
  ++gen;
  const json l = list();
  EXPECT_TRUE(findBackend(l, "dns", "10.0.1.23", 5354).is_null());
  EXPECT_TRUE(findBackend(l, "web", "10.0.0.14", 80).is_null());
  EXPECT_TRUE(findBackend(l, "web6", "2001:db8:1::13", 8443).is_null());
  EXPECT_EQ(servicesByName(l).at("web").at("backends").size(), 3u);
  EXPECT_EQ(l.at("generation").get<uint64_t>(), gen) << "one generation per change";

  // A service may lose all its backends.
  ok({"backend", "del", "web6", "2001:db8:1::11"});
  ok({"backend", "del", "web6", "2001:db8:1::12"});
  EXPECT_TRUE(servicesByName(list()).at("web6").at("backends").empty());
}

TEST_F(EditCli, BackendDownAndUpAreMaintenance) {
  uint64_t gen = generation();
  const std::string saved_before = ok({"save"});
  const json before = findBackend(list(), "web", "10.0.0.12", 80);
  ASSERT_FALSE(before.is_null());
  ASSERT_EQ(before.at("state"), "up");

  // down, --json: a change like the others, one generation.
  json r = parseJson(expectOk(run({"--json", "backend", "down", "web", "10.0.0.12"})));
  EXPECT_EQ(r.at("ok"), true);
  EXPECT_EQ(r.at("change"), "backend down web 10.0.0.12:80");
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  json b = findBackend(list(), "web", "10.0.0.12", 80);
  EXPECT_EQ(b.at("state"), "maintenance");
  EXPECT_EQ(b.at("weight"), before.at("weight")) << "maintenance leaves the weight alone";
  EXPECT_EQ(b.at("mac"), before.at("mac"));
  EXPECT_EQ(b.at("health"), (json{{"check", "none"}, {"maintenance", true}}));
  EXPECT_EQ(b.at("reschedules_flows"), false) << "web keeps a down backend's flows (keep)";
  EXPECT_EQ(b.at("active_flows"), before.at("active_flows")) << "keep: its flows stay pinned";
  EXPECT_EQ(findBackend(stats(), "web", "10.0.0.12", 80).at("state"), "maintenance");
  EXPECT_EQ(findBackend(list(), "web", "10.0.0.11", 80).at("state"), "up") << "only that one";
  // The text list: state and health column.
  const std::string text = ok({"list"});
  EXPECT_TRUE(contains(text, fmt::format("  -> {:<40} {:>6} {:<11} {:>11}  maintenance; no check\n",
                                         "10.0.0.12:80", before.at("weight").get<uint64_t>(),
                                         "maintenance",
                                         before.at("active_flows").get<uint64_t>())))
      << text;
  // Run-time state: not in the configuration that save writes, and kept by a reload.
  EXPECT_EQ(ok({"save"}), saved_before);
  ok({"reload"});
  ++gen;
  EXPECT_EQ(findBackend(list(), "web", "10.0.0.12", 80).at("state"), "maintenance")
      << "a reload keeps maintenance";
  // Down twice is harmless.
  EXPECT_TRUE(ok({"backend", "down", "web", "10.0.0.12", "--port", "80"}).empty());
  ++gen;
  EXPECT_EQ(findBackend(list(), "web", "10.0.0.12", 80).at("state"), "maintenance");

  // IPv6 and NAT, with --port; a drained backend in maintenance shows maintenance, and is
  // drained again when it comes up.
  ok({"backend", "down", "web6", "2001:db8:1::11", "--port", "8443"});
  ++gen;
  EXPECT_EQ(findBackend(list(), "web6", "2001:db8:1::11", 8443).at("state"), "maintenance");
  ok({"backend", "drain", "dns", "10.0.1.22"});
  ++gen;
  ok({"backend", "down", "dns", "10.0.1.22"});
  ++gen;
  b = findBackend(list(), "dns", "10.0.1.22", 5353);
  EXPECT_EQ(b.at("state"), "maintenance");
  EXPECT_EQ(b.at("weight"), 0);
  ok({"backend", "up", "dns", "10.0.1.22"});
  ++gen;
  b = findBackend(list(), "dns", "10.0.1.22", 5353);
  EXPECT_EQ(b.at("state"), "drained");
  EXPECT_EQ(b.at("health"), (json{{"check", "none"}, {"maintenance", false}}));

  // up, --json: back in the table.
  r = parseJson(expectOk(run({"--json", "backend", "up", "web", "10.0.0.12"})));
  EXPECT_EQ(r.at("change"), "backend up web 10.0.0.12:80");
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  b = findBackend(list(), "web", "10.0.0.12", 80);
  EXPECT_EQ(b.at("state"), "up");
  EXPECT_EQ(b.at("health"), (json{{"check", "none"}, {"maintenance", false}}));
  EXPECT_EQ(b.at("active_flows"), before.at("active_flows"));
  EXPECT_TRUE(
      contains(ok({"list"}), fmt::format("  -> {:<40} {:>6} {:<11} {:>11}  no check\n",
                                         "10.0.0.12:80", before.at("weight").get<uint64_t>(), "up",
                                         before.at("active_flows").get<uint64_t>())));
  // Up when not in maintenance is harmless too.
  ok({"backend", "up", "web", "10.0.0.12"});
  ++gen;
  ok({"backend", "up", "web6", "2001:db8:1::11"});
  ++gen;
  EXPECT_EQ(findBackend(list(), "web6", "2001:db8:1::11", 8443).at("state"), "up");
  EXPECT_EQ(generation(), gen) << "one generation per change";

  // Refused, changing nothing: no such service or backend, or an ambiguous address.
  ok({"backend", "add", "dns", "10.0.1.21", "--port", "5354", "--mac", "02:00:00:00:02:21"});
  for (const char* cmd : {"down", "up"}) {
    expectRejected({"backend", cmd, "nosuch", "10.0.0.11"}, 1, "no service named \"nosuch\"");
    expectRejected({"backend", cmd, "web", "10.9.9.9"}, 1,
                   "service \"web\" has no backend 10.9.9.9");
    expectRejected({"backend", cmd, "dns", "10.0.1.22", "--port", "5354"}, 1,
                   "service \"dns\" has no backend 10.0.1.22:5354");
    expectRejected({"backend", cmd, "web6", "2001:db8:1::99"}, 1, "has no backend 2001:db8:1::99");
    expectRejected({"backend", cmd, "dns", "10.0.1.21"}, 1, "several backends at 10.0.1.21");
  }
}

// Maintenance "survives reload while the backend exists" (docs/cli.md): a backend deleted and
// added again is a new backend (its counters start from zero, docs/json.md), and starts up.
TEST_F(EditCli, MaintenanceEndsWithTheBackend) {
  ok({"backend", "down", "web", "10.0.0.13"});
  ASSERT_EQ(findBackend(list(), "web", "10.0.0.13", 80).at("state"), "maintenance");
  ok({"backend", "del", "web", "10.0.0.13"});
  ok({"backend", "add", "web", "10.0.0.13", "--mac", "02:00:00:00:01:13", "--weight", "200"});
  EXPECT_EQ(findBackend(list(), "web", "10.0.0.13", 80).at("state"), "up")
      << "the maintenance of a deleted backend came back with a new one at its address";
  // The same through the file: a reload without it, then one with it again.
  sluice::Config without = baseConfig();
  std::erase_if(testsupport::service(without, "web").backends,
                [](const sluice::BackendConfig& b) { return b.address == ip("10.0.0.12"); });
  ok({"backend", "down", "web", "10.0.0.12"});
  writeFile(daemon().config(), testsupport::configText(without));
  ok({"reload"});
  ASSERT_TRUE(findBackend(list(), "web", "10.0.0.12", 80).is_null());
  writeFile(daemon().config(), baseConfigText());
  ok({"reload"});
  EXPECT_EQ(findBackend(list(), "web", "10.0.0.12", 80).at("state"), "up")
      << "the maintenance of a backend a reload removed came back when a reload added it";
}

TEST_F(EditCli, RejectedRequestsChangeNothing) {
  // A second NAT/UDP service, and a second port for a dns backend (for the ambiguous cases).
  ok({"service", "add", "dns2", "--vip", "192.0.2.54", "--port", "53", "--protocol", "udp",
      "--forwarding", "nat"});
  ok({"backend", "add", "dns", "10.0.1.21", "--port", "5354", "--mac", "02:00:00:00:02:21"});
  const std::string m = "02:00:00:00:09:01";

  const std::vector<std::pair<std::vector<std::string>, std::string>> refused = {
      // Unknown service / backend.
      {{"backend", "add", "nosuch", "10.0.0.1", "--mac", m}, "no service named \"nosuch\""},
      {{"backend", "edit", "nosuch", "10.0.0.11", "--weight", "2"}, "no service named \"nosuch\""},
      {{"backend", "del", "nosuch", "10.0.0.11"}, "no service named \"nosuch\""},
      {{"backend", "drain", "nosuch", "10.0.0.11"}, "no service named \"nosuch\""},
      {{"service", "edit", "nosuch", "--port", "81"}, "no service named \"nosuch\""},
      {{"service", "del", "nosuch"}, "no service named \"nosuch\""},
      {{"backend", "drain", "web", "10.9.9.9"}, "service \"web\" has no backend 10.9.9.9"},
      {{"backend", "del", "dns", "10.0.1.22", "--port", "5354"},
       "service \"dns\" has no backend 10.0.1.22:5354"},
      {{"backend", "del", "web6", "2001:db8:1::99"}, "has no backend 2001:db8:1::99"},
      // Duplicates.
      {{"backend", "add", "dns", "10.0.1.22", "--port", "5353", "--mac", m},
       "service \"dns\" has backend 10.0.1.22:5353 already"},
      {{"backend", "add", "web", "10.0.0.11", "--mac", m},
       "service \"web\" has backend 10.0.0.11:80 already"},
      {{"service", "add", "dns", "--vip", "192.0.2.60", "--port", "53", "--protocol", "udp",
        "--forwarding", "nat"},
       "service \"dns\" exists already"},
      {{"service", "edit", "dns2", "--name", "dns"}, "service name \"dns\" is used twice"},
      {{"service", "add", "dup", "--vip", "192.0.2.53", "--port", "53", "--protocol", "udp",
        "--forwarding", "dr"},
       "same VIP, port and protocol (192.0.2.53:53/udp)"},
      {{"service", "edit", "dns2", "--vip", "192.0.2.53"},
       "same VIP, port and protocol (192.0.2.53:53/udp)"},
      {{"service", "add", "dup6", "--vip", "2001:db8:0:0::10", "--port", "443", "--protocol",
        "tcp", "--forwarding", "nat"},
       "same VIP, port and protocol ([2001:db8::10]:443/tcp)"},
      // Malformed values.
      {{"backend", "add", "web", "10.0.0.300", "--mac", m},
       "address \"10.0.0.300\" is not an IPv4 or IPv6 address"},
      {{"backend", "add", "web", "backend1", "--mac", m}, "is not an IPv4 or IPv6 address"},
      {{"backend", "edit", "web", "10.0.0", "--weight", "2"}, "is not an IPv4 or IPv6 address"},
      {{"service", "add", "bad", "--vip", "192.0.2.300", "--port", "80", "--protocol", "tcp",
        "--forwarding", "dr"},
       "vip \"192.0.2.300\" is not an IPv4 or IPv6 address"},
      {{"service", "edit", "web", "--vip", "web.example"}, "is not an IPv4 or IPv6 address"},
      {{"service", "add", "mc", "--vip", "224.0.0.1", "--port", "80", "--protocol", "tcp",
        "--forwarding", "dr"},
       "is not a usable unicast address"},
      {{"backend", "add", "web", "10.0.0.14", "--mac", "02:00:00:00:01"}, "is not a MAC address"},
      {{"backend", "add", "web", "10.0.0.14", "--mac", "02-00-00-00-01-zz"},
       "is not a MAC address"},
      {{"backend", "edit", "web", "10.0.0.11", "--mac", "nope"}, "is not a MAC address"},
      {{"backend", "add", "web", "10.0.0.14", "--mac", "01:00:5e:00:00:01"}, "multicast"},
      {{"backend", "edit", "dns", "10.0.1.22", "--mac", "ff:ff:ff:ff:ff:ff"}, "multicast"},
      {{"backend", "add", "web", "10.0.0.14", "--mac", "00:00:00:00:00:00"}, "all zeros"},
      // No --mac, and nothing to resolve one with: the file has no dataplane.addresses and no
      // gateway (docs/config.md "Addresses, gateways and backends without a MAC").
      {{"backend", "add", "web", "10.0.0.14"},
       "service \"web\": backend 10.0.0.14 has no mac, is on none of the subnets of "
       "dataplane.addresses, and there is no IPv4 dataplane.gateway: its MAC could never be "
       "resolved (give its mac, or Sluice's address on its subnet)"},
      {{"backend", "add", "web6", "2001:db8:1::14", "--port", "8443", "--weight", "3"},
       "service \"web6\": backend 2001:db8:1::14 has no mac, is on none of the subnets of "
       "dataplane.addresses, and there is no IPv6 dataplane.gateway"},
      {{"service", "add", "bad name", "--vip", "192.0.2.61", "--port", "80", "--protocol", "tcp",
        "--forwarding", "dr"},
       "service name \"bad name\" is invalid"},
      {{"service", "edit", "web", "--name", std::string(65, 'x')}, "is invalid"},
      {{"service", "add", "t", "--vip", "192.0.2.61", "--port", "1", "--protocol", "tcp",
        "--forwarding", "nat", "--table-size", "100"},
       "table_size 100 is not prime"},
      {{"service", "edit", "dns", "--table-size", "1"}, "table_size 1 is out of range"},
      // Out of range.
      {{"backend", "add", "web", "10.0.0.14", "--mac", m, "--weight", "70000"},
       "weight 70000 is out of range 0..65535"},
      {{"backend", "edit", "web", "10.0.0.11", "--weight", "70000"},
       "weight 70000 is out of range 0..65535"},
      // DR cannot change the port.
      {{"backend", "add", "web", "10.0.0.14", "--port", "8080", "--mac", m},
       "DR cannot change the port (backend port 8080, service port 80)"},
      {{"service", "edit", "dns", "--forwarding", "dr"},
       "DR cannot change the port (backend port 5353, service port 53)"},
      // Address families.
      {{"backend", "add", "web", "2001:db8::14", "--mac", m},
       "backend 2001:db8::14 is IPv6 but the VIP is IPv4"},
      {{"backend", "add", "web6", "10.0.0.14", "--port", "8443", "--mac", m},
       "backend 10.0.0.14 is IPv4 but the VIP is IPv6"},
      {{"service", "edit", "web", "--vip", "2001:db8::99"}, "is IPv4 but the VIP is IPv6"},
      // One NAT backend (address, port, protocol) for two NAT services.
      {{"backend", "add", "dns2", "10.0.1.22", "--port", "5353", "--mac", m},
       "backend 10.0.1.22:5353/udp is used by NAT services \"dns\" and \"dns2\""},
      // ... or a NAT backend that is some service's VIP.
      {{"backend", "add", "dns2", "192.0.2.53", "--port", "53", "--mac", m},
       "is the VIP of service \"dns\""},
      // Ambiguous: two backends at that address, no --port.
      {{"backend", "edit", "dns", "10.0.1.21", "--weight", "5"},
       "service \"dns\" has several backends at 10.0.1.21 (ports 5353, 5354); say which port"},
      {{"backend", "del", "dns", "10.0.1.21"}, "several backends at 10.0.1.21"},
      {{"backend", "drain", "dns", "10.0.1.21"}, "several backends at 10.0.1.21"},
      // Nothing to change.
      {{"backend", "edit", "dns", "10.0.1.22"}, "backend edit: nothing to change"},
      {{"service", "edit", "dns"}, "service edit: nothing to change"},
  };
  for (const auto& [args, needle] : refused) {
    expectRejected(args, 1, needle);
  }

  // A Maglev table has room for table_size weighted backends, no more.
  ok({"service", "add", "tiny", "--vip", "192.0.2.70", "--port", "80", "--protocol", "tcp",
      "--forwarding", "dr", "--table-size", "7"});
  for (int i = 1; i <= 7; ++i) {
    ok({"backend", "add", "tiny", fmt::format("10.0.7.{}", i), "--mac",
        fmt::format("02:00:00:00:07:{:02x}", i)});
  }
  expectRejected({"backend", "add", "tiny", "10.0.7.8", "--mac", "02:00:00:00:07:08"}, 1,
                 "table_size 7 is smaller than the number of backends with weight > 0 (8)");
  ok({"backend", "add", "tiny", "10.0.7.8", "--mac", "02:00:00:00:07:08", "--weight", "0"});
  expectRejected({"backend", "edit", "tiny", "10.0.7.8", "--weight", "1"}, 1,
                 "table_size 7 is smaller");
  expectRejected({"service", "edit", "web", "--table-size", "2"}, 1,
                 "table_size 2 is out of range");

  // The same NAT backend under another protocol is a different reply key: allowed.
  ok({"service", "add", "dnstcp", "--vip", "192.0.2.53", "--port", "53", "--protocol", "tcp",
      "--forwarding", "nat"});
  ok({"backend", "add", "dnstcp", "10.0.1.22", "--port", "5353", "--mac", m});
  EXPECT_FALSE(findBackend(list(), "dnstcp", "10.0.1.22", 5353).is_null());
  // --port resolves the ambiguity.
  ok({"backend", "edit", "dns", "10.0.1.21", "--port", "5354", "--weight", "5"});
  EXPECT_EQ(findBackend(list(), "dns", "10.0.1.21", 5354).at("weight"), 5);
  EXPECT_EQ(findBackend(list(), "dns", "10.0.1.21", 5353).at("weight"), 1);
}

TEST_F(EditCli, ReloadFromTheFile) {
  const std::string path = daemon().config();
  uint64_t gen = generation();

  // sluicectl reload: a service added to the file appears.
  writeFile(path, withExtraService(baseConfigText(), std::string("\n") + std::string(kExtraService),
                                   nullptr));
  const RunResult plain = run({"reload"});
  ASSERT_EQ(plain.status, 0) << plain.describe();
  EXPECT_TRUE(plain.out.empty()) << plain.describe();
  ++gen;
  json l = list();
  EXPECT_EQ(l.at("generation").get<uint64_t>(), gen);
  ASSERT_TRUE(servicesByName(l).contains("extra")) << l.dump(2);
  const json extra = servicesByName(l).at("extra");
  EXPECT_EQ(extra.at("table_size"), 13);
  EXPECT_EQ(findBackend(l, "extra", "10.0.3.1", 7007).at("weight"), 3);

  // --json reload says what it did.
  std::string text = withExtraService(baseConfigText(), "\n" + std::string(kExtraService), nullptr);
  text.replace(text.find("weight = 3"), 10, "weight = 4");
  writeFile(path, text);
  json r = parseJson(expectOk(run({"--json", "reload"})));
  EXPECT_EQ(r.at("ok"), true);
  EXPECT_EQ(r.at("change"), "reload " + path);
  EXPECT_EQ(r.at("generation").get<uint64_t>(), ++gen);
  EXPECT_EQ(findBackend(list(), "extra", "10.0.3.1", 7007).at("weight"), 4);

  // Changes made with sluicectl are not undone by a reload without --force; with it, the file
  // replaces them and sluicectl says which it dropped.
  ok({"backend", "drain", "dns", "10.0.1.21"});
  ++gen;
  ok({"service", "del", "web6"});
  ++gen;
  const RunResult refused = run({"reload"});
  EXPECT_EQ(refused.status, 1) << refused.describe();
  EXPECT_TRUE(contains(refused.err, "would undo 2 changes made with sluicectl since it was read "
                                    "(backend.drain dns 10.0.1.21:5353; service del web6)"))
      << refused.describe();
  EXPECT_EQ(generation(), gen) << "a refused reload changes nothing";
  const RunResult forced = run({"reload", "--force"});
  EXPECT_EQ(forced.status, 0) << forced.describe();
  EXPECT_EQ(forced.err, "sluicectl: reload dropped 2 change(s) made with sluicectl:\n  "
                        "backend.drain dns 10.0.1.21:5353\n  service del web6\n")
      << forced.describe();
  ++gen;
  l = list();
  EXPECT_EQ(findBackend(l, "dns", "10.0.1.21", 5353).at("weight"), 1);
  EXPECT_TRUE(servicesByName(l).contains("web6"));

  // SIGHUP does the same.
  sluice::Config heavier = baseConfig();
  for (sluice::BackendConfig& b : testsupport::service(heavier, "web").backends) {
    if (b.address == ip("10.0.0.13")) {
      b.weight = 300;
    }
  }
  writeFile(path, testsupport::configText(heavier));
  daemon().signal(SIGHUP);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (generation() == gen && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  l = list();
  EXPECT_EQ(l.at("generation").get<uint64_t>(), ++gen) << "SIGHUP did not reload";
  EXPECT_EQ(findBackend(l, "web", "10.0.0.13", 80).at("weight"), 300);
  EXPECT_FALSE(servicesByName(l).contains("extra")) << "removed from the file";
  EXPECT_TRUE(contains(daemon().log(), "SIGHUP: configuration reloaded from " + path))
      << daemon().log();

  // A broken file: refused with its file:line, the running configuration is kept.
  size_t first = 0;
  writeFile(path, withExtraService(baseConfigText(), kBrokenService, &first));
  const size_t bad_line = first + kBrokenServiceBadLine - 1;
  const json before = list();
  const RunResult broken = run({"reload"});
  EXPECT_EQ(broken.status, 1) << broken.describe();
  EXPECT_EQ(broken.err,
            fmt::format("sluicectl: reload rejected, running configuration kept: {}:{}: service "
                        "\"broken\": table_size 100 is not prime (Maglev needs a prime; the next "
                        "one is 101)\n",
                        path, bad_line))
      << broken.describe();
  EXPECT_TRUE(broken.out.empty());
  EXPECT_EQ(list(), before) << "a refused reload changed the running configuration";
  const RunResult broken_json = run({"--json", "reload"});
  EXPECT_EQ(broken_json.status, 1) << broken_json.describe();
  EXPECT_TRUE(contains(broken_json.err, fmt::format("{}:{}:", path, bad_line)));
  EXPECT_EQ(parseJson(broken_json),
            json({{"ok", false}, {"error", broken.err.substr(11, broken.err.size() - 12)}}))
      << "the same message as JSON on stdout";
  EXPECT_EQ(list(), before);

  // ... and the same on SIGHUP, which only logs it.
  const std::string expected_log =
      fmt::format("error: SIGHUP: reload rejected, running configuration kept: {}:{}:", path,
                  bad_line);
  daemon().signal(SIGHUP);
  const auto deadline2 = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!contains(daemon().log(), expected_log) && std::chrono::steady_clock::now() < deadline2) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(contains(daemon().log(), expected_log)) << daemon().log();
  EXPECT_EQ(list(), before) << "a refused SIGHUP reload changed the running configuration";

  // A TOML syntax error, and a file that is gone.
  writeFile(path, std::string(baseConfigText()) + "[[service]\n");
  const RunResult syntax = run({"reload"});
  EXPECT_EQ(syntax.status, 1) << syntax.describe();
  EXPECT_TRUE(contains(syntax.err, fmt::format("{}:{}:", path, lineCount(baseConfigText()) + 1)))
      << syntax.describe();
  EXPECT_EQ(lineCount(syntax.err), 1u) << syntax.describe();
  std::filesystem::remove(path);
  const RunResult gone = run({"reload"});
  EXPECT_EQ(gone.status, 1) << gone.describe();
  EXPECT_TRUE(contains(gone.err, path + ": cannot read: No such file or directory"))
      << gone.describe();
  EXPECT_EQ(list(), before);

  // A FIFO where the file was: refused at once, not a control loop waiting for a writer.
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0) << std::strerror(errno);
  RunOptions briefly;
  briefly.timeout_s = 10;
  const RunResult fifo = run({"reload"}, briefly);
  if (fifo.timed_out) {
    // Let a daemon stuck in open() go on (it reads a broken file), so that the suite can end.
    const int w = ::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (w >= 0) {
      static_cast<void>(::write(w, "[[", 2));
      ::close(w);
    }
  }
  EXPECT_EQ(fifo.status, 1) << fifo.describe();
  EXPECT_EQ(fifo.err, fmt::format("sluicectl: reload rejected, running configuration kept: {}: "
                                  "not a regular file (a FIFO)\n",
                                  path))
      << fifo.describe();
  std::filesystem::remove(path);
  EXPECT_EQ(list(), before);
  EXPECT_TRUE(daemon().running());
}

TEST_F(EditCli, SaveRoundTrips) {
  // Make the running configuration differ from the file in every way sluicectl can.
  ok({"service", "add", "api", "--vip", "192.0.2.20", "--port", "8080", "--protocol", "tcp",
      "--forwarding", "nat", "--table-size", "251"});
  ok({"backend", "add", "api", "10.0.2.1", "--port", "9000", "--mac", "02:00:00:00:05:01",
      "--weight", "7"});
  ok({"backend", "add", "api", "10.0.2.1", "--port", "9001", "--mac", "02:00:00:00:05:02",
      "--weight", "0"});
  ok({"service", "add", "empty6", "--vip", "2001:db8::30", "--port", "53", "--protocol", "udp",
      "--forwarding", "dr"});
  ok({"service", "edit", "web", "--port", "8080"});
  ok({"backend", "drain", "dns", "10.0.1.22"});
  ok({"backend", "edit", "web6", "2001:db8:1::11", "--mac", "02:00:00:00:03:99", "--weight",
      "9"});
  ok({"backend", "del", "web", "10.0.0.12"});
  ok({"service", "edit", "dns", "--name", "resolver"});

  const json running = list();
  const RunResult save = run({"save"});
  ASSERT_EQ(save.status, 0) << save.describe();
  EXPECT_TRUE(save.err.empty());
  const std::string saved = save.out;
  EXPECT_EQ(saved.rfind("# Written by sluicectl save.", 0), 0u) << saved;
  // Every key whose default depends on others is written out: the exception interface (none:
  // the file has no dataplane.addresses) and each service's on_backend_down.
  EXPECT_TRUE(contains(saved, "\n[dataplane]\n")) << saved;
  EXPECT_TRUE(contains(saved, "\nexception_interface = \"\"\n")) << saved;
  size_t services_saved = 0, policies_saved = 0;
  for (const std::string& line : lines(saved)) {
    services_saved += line == "[[service]]" ? 1 : 0;
    policies_saved += line == "on_backend_down = \"keep\"" ? 1 : 0;
  }
  EXPECT_EQ(services_saved, running.at("services").size()) << saved;
  EXPECT_EQ(policies_saved, services_saved) << saved;
  {
    const RunResult js = run({"--json", "save"});
    ASSERT_EQ(js.status, 0) << js.describe();
    EXPECT_EQ(json::parse(js.out).at("config").get<std::string>(), saved)
        << "save --json carries the same file";
  }
  const std::string saved_path = file("saved.toml");
  writeFile(saved_path, saved);

  // A second daemon started from the saved file has the same services and backends. Its socket
  // path holds a stale socket (no listener), which it must replace.
  {
    const std::string second_sock = file("second.sock");
    makeStaleSocket(second_sock);
    const std::string in = file("second-in.pcap");
    pktgen::writePcap(in, state().capture.noise());
    Daemon second;
    const std::string err = second.start(dir(), "second", saved_path, second_sock, in);
    ASSERT_TRUE(err.empty()) << err;
    ASSERT_TRUE(waitForReplay(second_sock, dir(), kNoise).empty());
    const json other = listJson(second_sock, dir());
    EXPECT_EQ(configOf(other), configOf(running))
        << "saved and restarted:\n" << other.dump(2) << "\nrunning:\n" << running.dump(2);
    EXPECT_EQ(other.at("generation"), 1);
    EXPECT_EQ(expectOk(ctl(second_sock, {"save"}, dir())).out, saved)
        << "save of the restarted daemon is the same file";
    // SIGINT stops it too.
    EXPECT_EQ(second.stop(SIGINT), 0) << second.log();
    EXPECT_TRUE(contains(second.log(), "Interrupt: shutting down")) << second.log();
    EXPECT_TRUE(contains(second.log(), fmt::format("stopped: {} packets in, 0 out, {} dropped",
                                                   kNoise, kNoise)))
        << second.log();
    EXPECT_FALSE(std::filesystem::exists(second_sock)) << "the socket is removed on exit";
  }

  // Reloading the first daemon from the saved file changes nothing but the generation.
  const uint64_t gen = running.at("generation").get<uint64_t>();
  std::filesystem::copy_file(saved_path, daemon().config(),
                             std::filesystem::copy_options::overwrite_existing);
  ok({"reload"});
  const json reloaded = list();
  EXPECT_EQ(reloaded.at("generation").get<uint64_t>(), gen + 1);
  EXPECT_EQ(configOf(reloaded), configOf(running));
  EXPECT_EQ(ok({"save"}), saved);
  // The flows of the backends that stayed are still counted for them.
  for (const json& s : running.at("services")) {
    for (const json& b : s.at("backends")) {
      const json now =
          findBackend(reloaded, s.at("name").get<std::string>(), b.at("address").get<std::string>(),
                      b.at("port").get<uint64_t>());
      ASSERT_FALSE(now.is_null());
      EXPECT_EQ(now.at("active_flows"), b.at("active_flows")) << b.dump();
    }
  }
}

/** sluicectl --socket SOCKET args... > stdout_path, through a shell (which opens that path). */
RunResult ctlWithStdout(const std::string& socket, const std::vector<std::string>& args,
                        const std::string& stdout_path, const std::string& dir) {
  std::vector<std::string> all = {"-c", "exec \"$0\" \"$@\" > \"$SLUICE_TEST_STDOUT\"",
                                  SLUICECTL_PATH, "--socket", socket};
  all.insert(all.end(), args.begin(), args.end());
  RunOptions opts;
  opts.env = {{"SLUICE_TEST_STDOUT", stdout_path}};
  return runProgram("/bin/sh", all, dir, opts);
}

/**
 * The base configuration and a service of `backends` NAT backends: a file of several KB, more
 * than one 4 KB page.
 */
std::string bigConfigText(int backends) {
  std::string text = baseConfigText() + R"(
[[service]]
name = "big"
vip = "192.0.2.90"
port = 9
protocol = "tcp"
forwarding = "nat"
)";
  for (int i = 0; i < backends; ++i) {
    text += fmt::format("\n[[service.backend]]\naddress = \"10.0.9.{}\"\nport = 9000\n"
                        "mac = \"02:00:00:00:09:{:02x}\"\n",
                        i + 1, i + 1);
  }
  return text;
}

TEST_F(EditCli, OutputThatCannotBeWrittenFails) {
  // /dev/full: every write fails with ENOSPC, as on a full disk.
  const std::string no_space = std::strerror(ENOSPC);
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"save"}, std::vector<std::string>{"--json", "save"}}) {
    const RunResult r = ctlWithStdout(sock(), args, "/dev/full", dir());
    EXPECT_EQ(r.status, 1) << r.describe();
    EXPECT_EQ(r.err, "sluicectl: cannot write the configuration: " + no_space + "\n")
        << r.describe();
  }
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"list"}, std::vector<std::string>{"list", "--json"},
        std::vector<std::string>{"stats"}, std::vector<std::string>{"version"},
        std::vector<std::string>{"--json", "backend", "drain", "dns", "10.0.1.21"}}) {
    const RunResult r = ctlWithStdout(sock(), args, "/dev/full", dir());
    EXPECT_EQ(r.status, 1) << r.describe();
    EXPECT_EQ(r.err, "sluicectl: cannot write the output: " + no_space + "\n") << r.describe();
  }
  // A change without --json writes nothing, so nothing can fail to be written.
  EXPECT_EQ(ctlWithStdout(sock(), {"backend", "drain", "dns", "10.0.1.22"}, "/dev/full", dir())
                .status,
            0);
}

TEST_F(EditCli, SaveOutWritesTheFileAtomically) {
  const std::string expected = ok({"save"});

  // A new file: the content of `save`, mode 0666 less the umask (as `save > FILE` would make it).
  const std::string path = file("out.toml");
  std::filesystem::remove(path);
  const RunResult r = run({"save", "--out", path});
  ASSERT_EQ(r.status, 0) << r.describe();
  EXPECT_TRUE(r.out.empty()) << r.describe();
  EXPECT_TRUE(r.err.empty()) << r.describe();
  EXPECT_EQ(readFile(path), expected);
  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0666 & ~mask) << std::oct << (st.st_mode & 07777);

  // Over an old file: replaced, keeping its mode; --json says where it went.
  writeFile(path, "old\n");
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  const json answer = parseJson(expectOk(run({"--json", "save", "--out", path})));
  EXPECT_EQ(answer.at("ok"), true);
  EXPECT_EQ(answer.at("out"), path);
  EXPECT_EQ(readFile(path), expected);
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u) << std::oct << (st.st_mode & 07777);

  // Into a directory that does not exist: refused, naming the path and why.
  const std::string nowhere = file("no-such-dir") + "/out.toml";
  const RunResult missing = run({"save", "--out", nowhere});
  EXPECT_EQ(missing.status, 1) << missing.describe();
  EXPECT_EQ(missing.err,
            fmt::format("sluicectl: cannot save the configuration to {}: cannot create a "
                        "temporary file in {}: No such file or directory\n",
                        nowhere, file("no-such-dir")))
      << missing.describe();
  EXPECT_TRUE(missing.out.empty()) << missing.describe();
  const RunResult missing_json = run({"save", "--out", nowhere, "--json"});
  EXPECT_EQ(missing_json.status, 1) << missing_json.describe();
  EXPECT_EQ(parseJson(missing_json),
            json({{"ok", false}, {"error", missing.err.substr(11, missing.err.size() - 12)}}));

  // Only the files this test wrote are in the directory: no temporary file was left.
  for (const auto& entry : std::filesystem::directory_iterator(dir())) {
    EXPECT_EQ(entry.path().filename().string().rfind(".out.toml.", 0), std::string::npos)
        << entry.path();
  }
}

TEST_F(EditCli, SaveOutOnAFullFileSystemKeepsTheOldFile) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to mount a small tmpfs";
  }
  // Two pages: one for the old file, one for the new, which needs more. The write fails part
  // way, as on the full disk of the report (4,096 of 5,272 bytes).
  const std::string mnt = file("full-fs");
  std::filesystem::create_directory(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=8k,mode=0700") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs: " << std::strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};

  writeFile(daemon().config(), bigConfigText(80));
  ok({"reload"});
  const std::string big = ok({"save"});
  ASSERT_GT(big.size(), 4096u) << "the test needs a configuration of more than a page";

  const std::string path = mnt + "/sluice.toml";
  const std::string old_text = baseConfigText();
  writeFile(path, old_text);
  const RunResult r = run({"save", "--out", path});
  EXPECT_EQ(r.status, 1) << r.describe();
  EXPECT_EQ(r.err.rfind("sluicectl: cannot save the configuration to " + path + ": ", 0), 0u)
      << r.describe();
  EXPECT_TRUE(contains(r.err, std::strerror(ENOSPC))) << r.describe();
  EXPECT_EQ(lineCount(r.err), 1u) << r.describe();
  EXPECT_EQ(readFile(path), old_text) << "the old file is intact";
  std::vector<std::string> left;
  for (const auto& entry : std::filesystem::directory_iterator(mnt)) {
    left.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(left, std::vector<std::string>{"sluice.toml"}) << "no temporary file is left";
}

// =============================================================================================
// Without a daemon, and daemons that must not start

class NoDaemon : public ::testing::Test {
 protected:
  TempDir dir_;
};

TEST_F(NoDaemon, MissingSocket) {
  const std::string path = dir_.file("nothing-here.sock");
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"list"}, std::vector<std::string>{"--json", "stats"},
        std::vector<std::string>{"reload"}, std::vector<std::string>{"save"},
        std::vector<std::string>{"version"},
        std::vector<std::string>{"service", "del", "web"}}) {
    const RunResult r = ctl(path, args, dir_.path());
    EXPECT_EQ(r.status, 3) << r.describe();
    const std::string message =
        fmt::format("cannot reach sluiced at {}: no such socket (is sluiced running?)", path);
    EXPECT_EQ(r.err, "sluicectl: " + message + "\n") << r.describe();
    if (args[0] == "version") {
      EXPECT_EQ(r.out.rfind("sluicectl ", 0), 0u) << "its own version first\n" << r.describe();
    } else if (args[0] == "--json") {
      EXPECT_EQ(parseJson(r), json({{"ok", false}, {"error", message}})) << r.describe();
    } else {
      EXPECT_TRUE(r.out.empty()) << r.describe();
    }
    // --json, wherever it is: the same status and message, and the failure as JSON on stdout.
    std::vector<std::string> with_json = args;
    if (args[0] != "--json") {
      with_json.push_back("--json");
    }
    const RunResult j = ctl(path, with_json, dir_.path());
    EXPECT_EQ(j.status, 3) << j.describe();
    EXPECT_EQ(j.err, r.err) << j.describe();
    EXPECT_EQ(parseJson(j), json({{"ok", false}, {"error", message}})) << j.describe();
  }
  // The directory does not exist either.
  const RunResult r = ctl("/nonexistent-dir-sluice-test/s.sock", {"list"}, dir_.path());
  EXPECT_EQ(r.status, 3) << r.describe();
  EXPECT_TRUE(contains(r.err, "is sluiced running")) << r.describe();
}

TEST_F(NoDaemon, StaleSocketNoListener) {
  const std::string path = dir_.file("stale.sock");
  makeStaleSocket(path);
  const RunResult r = ctl(path, {"list"}, dir_.path());
  EXPECT_EQ(r.status, 3) << r.describe();
  EXPECT_EQ(r.err, fmt::format("sluicectl: cannot reach sluiced at {}: connection refused (is "
                               "sluiced running?)\n",
                               path))
      << r.describe();
  EXPECT_TRUE(r.out.empty());

  // Not a socket at all.
  const std::string plain = dir_.file("plain-file");
  writeFile(plain, "x");
  const RunResult p = ctl(plain, {"list"}, dir_.path());
  EXPECT_EQ(p.status, 3) << p.describe();
  EXPECT_EQ(p.err.rfind("sluicectl: ", 0), 0u) << p.describe();
  EXPECT_EQ(lineCount(p.err), 1u) << p.describe();
  // Said as it is, not as a daemon that is not running ("--socket /etc/passwd").
  EXPECT_TRUE(contains(p.err, "it is not a socket")) << p.describe();
  EXPECT_FALSE(contains(p.err, "is sluiced running")) << p.describe();

  // An argument that is not UTF-8 is a bad argument (exit 2), refused before anything is sent:
  // no daemon is needed to see it.
  const RunResult bad = ctl(path, {"service", "del", "web\xff"}, dir_.path());
  EXPECT_EQ(bad.status, 2) << bad.describe();
  EXPECT_TRUE(contains(bad.err, "is not valid UTF-8")) << bad.describe();
  EXPECT_TRUE(contains(bad.err, "nothing was sent")) << bad.describe();

  // A path that does not fit in sockaddr_un.
  const std::string long_path = "/tmp/" + std::string(120, 'x');
  const RunResult l = ctl(long_path, {"list"}, dir_.path());
  EXPECT_EQ(l.status, 3) << l.describe();
  EXPECT_TRUE(contains(l.err, "longer than 107 bytes")) << l.describe();
  EXPECT_EQ(lineCount(l.err), 1u) << l.describe();
}

TEST_F(NoDaemon, DaemonRefusesABadConfiguration) {
  size_t first = 0;
  const std::string config = dir_.file("bad.toml");
  writeFile(config, withExtraService(baseConfigText(), kBrokenService, &first));
  const std::string sock = dir_.file("s.sock");
  const std::string in = dir_.file("in.pcap");
  pktgen::writePcap(in, {});
  const std::vector<std::string> eal = {"--", "-l", "0,1", "--no-huge", "--no-pci",
                                        "--no-shconf", "--file-prefix=sluice-e2e-cli-bad-" +
                                                           std::to_string(::getpid()),
                                        "-m", "512", "--vdev",
                                        "net_pcap0,rx_pcap=" + in + ",tx_pcap=" +
                                            dir_.file("out.pcap")};
  auto sluiced = [&](std::vector<std::string> args, const RunOptions& opts = {}) {
    args.insert(args.end(), eal.begin(), eal.end());
    return runProgram(SLUICED_PATH, args, dir_.path(), opts);
  };

  const RunResult bad = sluiced({"run", "--config", config, "--socket", sock});
  EXPECT_EQ(bad.status, 2) << bad.describe();
  EXPECT_TRUE(contains(bad.err, fmt::format("bad configuration: {}:{}: service \"broken\": "
                                            "table_size 100 is not prime",
                                            config, first + kBrokenServiceBadLine - 1)))
      << bad.describe();
  EXPECT_FALSE(std::filesystem::exists(sock)) << "no socket for a daemon that did not start";

  writeFile(config, "[dataplane]\nflow_table_size = 12\n");
  const RunResult range = sluiced({"run", "--config", config, "--socket", sock});
  EXPECT_EQ(range.status, 2) << range.describe();
  EXPECT_TRUE(contains(range.err, config + ":2: ")) << range.describe();

  const RunResult missing =
      sluiced({"run", "--config", dir_.file("missing.toml"), "--socket", sock});
  EXPECT_EQ(missing.status, 2) << missing.describe();
  EXPECT_TRUE(contains(missing.err, "missing.toml: cannot read: No such file or directory"))
      << missing.describe();

  const RunResult no_config = sluiced({"run", "--socket", sock});
  EXPECT_EQ(no_config.status, 2) << no_config.describe();
  EXPECT_TRUE(contains(no_config.err, "--config")) << no_config.describe();
  EXPECT_FALSE(std::filesystem::exists(sock));

  // A FIFO that nobody writes to is refused at once, not waited on (tests/unit/config_test.cc
  // has the devices, directories and oversize files; the daemon and replay share the loader).
  const std::string fifo = dir_.file("config.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  const std::string not_regular = fifo + ": not a regular file (a FIFO)";
  RunOptions briefly;
  briefly.timeout_s = 10;  // a regression fails here instead of hanging the suite
  const auto t0 = std::chrono::steady_clock::now();
  const RunResult from_fifo = sluiced({"run", "--config", fifo, "--socket", sock}, briefly);
  EXPECT_FALSE(from_fifo.timed_out) << from_fifo.describe();
  EXPECT_EQ(from_fifo.status, 2) << from_fifo.describe();
  EXPECT_TRUE(contains(from_fifo.err, "bad configuration: " + not_regular)) << from_fifo.describe();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5)) << "not at once";
  EXPECT_FALSE(std::filesystem::exists(sock));
  const RunResult replay = runProgram(
      SLUICED_PATH, {"replay", "--config", fifo, "--in", in, "--out", dir_.file("replay.pcap")},
      dir_.path(), briefly);
  EXPECT_FALSE(replay.timed_out) << replay.describe();
  EXPECT_EQ(replay.status, 2) << replay.describe();
  EXPECT_TRUE(contains(replay.err, not_regular)) << replay.describe();

  // The socket path is taken by something that is not a socket.
  writeFile(config, baseConfigText());
  writeFile(sock, "not a socket");
  const RunResult not_sock = sluiced({"run", "--config", config, "--socket", sock});
  EXPECT_EQ(not_sock.status, 1) << not_sock.describe();
  EXPECT_TRUE(contains(not_sock.err, sock + " exists and is not a socket")) << not_sock.describe();
  EXPECT_EQ(readFile(sock), "not a socket") << "left alone";
}

// =============================================================================================
// A daemon through a series of changes: still forwarding, stops cleanly

std::string lastLine(const std::string& text) {
  const std::vector<std::string> ls = lines(text);
  for (auto it = ls.rbegin(); it != ls.rend(); ++it) {
    if (!it->empty()) {
      return *it;
    }
  }
  return "";
}

TEST(Lifecycle, ChangesThenSigtermExitsZeroAndReportsPackets) {
  TempDir dir;
  const Capture capture = makeCapture();
  const std::string in = dir.file("in.pcap");
  pktgen::writePcap(in, capture.records);
  const std::string config = dir.file("c.toml");
  writeFile(config, baseConfigText());
  const std::string sock = dir.file("run/sluiced.sock");  // a directory it creates
  Daemon d;
  const std::string err = d.start(dir.path(), "life", config, sock, in);
  ASSERT_TRUE(err.empty()) << err;
  ASSERT_TRUE(waitForReplay(sock, dir.path(), capture.size()).empty());
  EXPECT_TRUE(contains(d.log(), "running: 3 service(s), 1 port(s), 1 worker(s)")) << d.log();
  EXPECT_TRUE(contains(d.log(), fmt::format("port 0 (net_pcap0): mac {}, 1 queue pair(s), single "
                                            "queue\n",
                                            kPortMac.str())))
      << "not promiscuous unless the configuration says so\n" << d.log();

  auto run = [&](const std::vector<std::string>& args) {
    return expectOk(ctl(sock, args, dir.path()));
  };
  run({"service", "add", "api", "--vip", "192.0.2.20", "--port", "8080", "--protocol", "tcp",
       "--forwarding", "nat"});
  run({"backend", "add", "api", "10.0.2.1", "--port", "9000", "--mac", "02:00:00:00:05:01"});
  // Draining keeps the backend's flows, which the capture gave it.
  const json flows_before = findBackend(listJson(sock, dir.path()), "dns", "10.0.1.21", 5353);
  ASSERT_FALSE(flows_before.is_null());
  EXPECT_GT(flows_before.at("active_flows").get<uint64_t>(), 0u);
  run({"backend", "drain", "dns", "10.0.1.21"});
  const json drained = findBackend(listJson(sock, dir.path()), "dns", "10.0.1.21", 5353);
  EXPECT_EQ(drained.at("state"), "drained");
  EXPECT_EQ(drained.at("weight"), 0);
  EXPECT_EQ(drained.at("active_flows"), flows_before.at("active_flows"));
  const json drained_stats = findBackend(statsJson(sock, dir.path()), "dns", "10.0.1.21", 5353);
  EXPECT_EQ(drained_stats.at("active_flows"), flows_before.at("active_flows"));
  EXPECT_EQ(drained_stats.at("weight"), 0);
  run({"backend", "edit", "web", "10.0.0.11", "--weight", "50"});
  run({"service", "edit", "web6", "--table-size", "65537"});
  run({"backend", "del", "web", "10.0.0.12"});
  run({"service", "del", "api"});
  EXPECT_EQ(ctl(sock, {"service", "del", "api"}, dir.path()).status, 1);
  writeFile(config, withExtraService(baseConfigText(), "\n" + std::string(kExtraService), nullptr));
  d.signal(SIGHUP);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!servicesByName(listJson(sock, dir.path())).contains("extra") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(servicesByName(listJson(sock, dir.path())).contains("extra"));
  run({"reload"});

  // The data plane kept its counters through the changes.
  const json s = statsJson(sock, dir.path());
  EXPECT_EQ(s.at("total").at("packets_in").get<size_t>(), capture.size());
  EXPECT_EQ(s.at("total").at("flows_active").get<size_t>(),
            size_t{kDnsFlows + kWebFlows + kWeb6Flows});

  // Each request was logged with who made it and what changed.
  const std::string log = d.log();
  EXPECT_TRUE(contains(log, "request uid 0: service.add -> ok (service add api, generation 2)"))
      << log;
  EXPECT_TRUE(contains(log, "request uid 0: service.del -> error: no service named \"api\""))
      << log;

  const int status = d.stop(SIGTERM);
  EXPECT_EQ(status, 0) << d.log();
  const std::string final_log = d.log();
  EXPECT_TRUE(contains(final_log, "Terminated: shutting down")) << final_log;
  std::smatch m;
  const std::string last = lastLine(final_log);
  ASSERT_TRUE(std::regex_search(
      last, m,
      std::regex(R"(sluiced\[\d+\] info: stopped: (\d+) packets in, (\d+) out, (\d+) dropped$)")))
      << "the last log line reports the packets:\n"
      << final_log;
  EXPECT_EQ(std::stoull(m[1]), capture.size());
  EXPECT_EQ(std::stoull(m[3]), uint64_t{kNoise + kForOthers}) << "no_service and not_for_us";
  EXPECT_EQ(std::stoull(m[2]) + std::stoull(m[3]), capture.size());
  EXPECT_EQ(std::stoull(m[2]), pktgen::readPcap(d.outPcap()).size());
  EXPECT_FALSE(std::filesystem::exists(sock)) << "the socket is removed on exit";
  const RunResult after = ctl(sock, {"list"}, dir.path());
  EXPECT_EQ(after.status, 3);
  EXPECT_TRUE(contains(after.err, "is sluiced running")) << after.describe();
}

// A backend added after another was deleted must start from zero: no flows, no packets.
TEST(Lifecycle, AddedBackendDoesNotInheritTheCountersOfADeletedOne) {
  TempDir dir;
  const Capture capture = makeCapture();
  const std::string in = dir.file("in.pcap");
  pktgen::writePcap(in, capture.records);
  const std::string config = dir.file("c.toml");
  writeFile(config, baseConfigText());
  const std::string sock = dir.file("s.sock");
  Daemon d;
  const std::string err = d.start(dir.path(), "reuse", config, sock, in);
  ASSERT_TRUE(err.empty()) << err;
  ASSERT_TRUE(waitForReplay(sock, dir.path(), capture.size()).empty());

  const json gone = findBackend(statsJson(sock, dir.path()), "dns", "10.0.1.21", 5353);
  ASSERT_FALSE(gone.is_null());
  ASSERT_GT(gone.at("active_flows").get<uint64_t>(), 0u);
  expectOk(ctl(sock, {"backend", "del", "dns", "10.0.1.21"}, dir.path()));
  expectOk(ctl(sock, {"backend", "add", "dns", "10.0.1.23", "--port", "5353", "--mac",
                      "02:00:00:00:02:23"},
               dir.path()));
  // Nothing was sent to 10.0.1.23: the daemon has been idle since the capture ended.
  const json l = findBackend(listJson(sock, dir.path()), "dns", "10.0.1.23", 5353);
  const json s = findBackend(statsJson(sock, dir.path()), "dns", "10.0.1.23", 5353);
  ASSERT_FALSE(l.is_null());
  ASSERT_FALSE(s.is_null());
  // IdRegistry hands the freed id of the deleted 10.0.1.21:5353 to the new 10.0.1.23:5353 with a
  // new epoch; counters are kept per (id, epoch), so the new backend starts from zero.
  EXPECT_EQ(l.at("active_flows").get<uint64_t>(), 0u) << "list --json: " << l.dump();
  EXPECT_EQ(s.at("active_flows").get<uint64_t>(), 0u) << "stats --json: " << s.dump();
  EXPECT_EQ(s.at("packets").get<uint64_t>(), 0u) << s.dump();
  EXPECT_EQ(s.at("bytes").get<uint64_t>(), 0u) << s.dump();
  EXPECT_EQ(s.at("new_flows").get<uint64_t>(), 0u) << s.dump();
  EXPECT_EQ(s.at("reply_packets").get<uint64_t>(), 0u) << s.dump();
  EXPECT_EQ(d.stop(SIGTERM), 0) << d.log();
}

// [dataplane] promiscuous = true: a mirror port or a bump in the wire, where every frame is taken
// as the port's. The frames of the capture for another host are forwarded like the others.
TEST(Promiscuous, FramesForAnyMacAreTakenAsThePorts) {
  TempDir dir;
  const Capture capture = makeCapture();
  const std::string in = dir.file("in.pcap");
  pktgen::writePcap(in, capture.records);
  sluice::Config c = baseConfig();
  c.dataplane.promiscuous = true;
  const std::string config = dir.file("c.toml");
  writeFile(config, testsupport::configText(c));
  const std::string sock = dir.file("s.sock");
  Daemon d;
  const std::string err = d.start(dir.path(), "promisc", config, sock, in);
  ASSERT_TRUE(err.empty()) << err;
  ASSERT_TRUE(waitForReplay(sock, dir.path(), capture.size()).empty());
  EXPECT_TRUE(contains(d.log(), fmt::format("port 0 (net_pcap0): mac {}, 1 queue pair(s), single "
                                            "queue, promiscuous",
                                            kPortMac.str())))
      << d.log();
  const json total = statsJson(sock, dir.path()).at("total");
  EXPECT_EQ(total.at("drops").at("not_for_us"), 0) << total.dump();
  EXPECT_EQ(total.at("dropped").get<uint64_t>(), uint64_t{kNoise}) << total.dump();
  EXPECT_EQ(total.at("flows_created").get<uint64_t>(),
            uint64_t{kDnsFlows + kWebFlows + kWeb6Flows + kForOthers});
  size_t for_others = 0;
  for (const PcapRecord& r : pktgen::readPcap(d.outPcap())) {
    const auto dec = pktgen::decode(r.data);
    ASSERT_TRUE(dec.has_value());
    if (isOtherHostsClient(dec->src)) {
      ++for_others;
      EXPECT_EQ(dec->dst, ip("192.0.2.10")) << "DR to a web backend";
      EXPECT_EQ(dec->src_mac, kPortMac);
    }
  }
  EXPECT_EQ(for_others, size_t{kForOthers});
  EXPECT_EQ(d.stop(SIGTERM), 0) << d.log();
}

// =============================================================================================
// Maintenance under steady traffic: the port reads its capture over and over (net_pcap's
// infinite_rx), so the same flows keep coming while sluicectl takes backends down and up. Each
// TCP flow of the capture is SYN, data, FIN: with the long tcp_fin of baseConfig() its entry
// lingers, and the SYN of the next round is a new connection on the same ports, scheduled again.
// So every round brings new flows (to web, whose down backends keep their flows) and established
// ones (dns's UDP flows, whose down backends' flows move: on_backend_down = "reschedule").

/** The counters of service/address:port in a stats answer (fails the test when it is absent). */
json backendStats(const json& stats, const std::string& service, const std::string& address,
                  uint64_t port) {
  json b = findBackend(stats, service, address, port);
  EXPECT_FALSE(b.is_null()) << service << " " << address << ":" << port << " in " << stats.dump();
  return b.is_null() ? json{{"packets", 0}, {"new_flows", 0}, {"active_flows", 0}} : b;
}

uint64_t packetsOf(const json& stats, const std::string& service, const std::string& address,
                   uint64_t port) {
  return backendStats(stats, service, address, port).at("packets").get<uint64_t>();
}

TEST(Maintenance, NewFlowsAvoidABackendInMaintenanceAndReturnWhenItIsUp) {
  TempDir dir;
  pktgen::TrafficSpec web;
  web.vip = ip("192.0.2.10");
  web.vport = 80;
  web.proto = LB_PROTO_TCP;
  web.flows = 64;
  web.packets_per_flow = 3;  // SYN, data, FIN
  web.client_base = ip("198.51.101.1");
  web.lb_mac = kPortMac;
  pktgen::TrafficSpec dns;
  dns.vip = ip("192.0.2.53");
  dns.vport = 53;
  dns.proto = LB_PROTO_UDP;
  dns.flows = 64;
  dns.packets_per_flow = 1;
  dns.client_base = ip("198.51.100.1");
  dns.start_us = kStartUs + kSecondUs;
  dns.lb_mac = kPortMac;
  std::vector<PcapRecord> in = pktgen::makeTraffic(web);
  for (PcapRecord& r : pktgen::makeTraffic(dns)) {
    in.push_back(std::move(r));
  }
  const std::string in_path = dir.file("loop-in.pcap");
  pktgen::writePcap(in_path, in);
  sluice::Config c = baseConfig();
  testsupport::service(c, "dns").on_backend_down = sluice::DownPolicy::kReschedule;
  const std::string config = dir.file("c.toml");
  writeFile(config, testsupport::configText(c));
  const std::string sock = dir.file("s.sock");
  Daemon d;
  const std::string err = d.start(dir.path(), "loop", config, sock, in_path, /*loop=*/true);
  ASSERT_TRUE(err.empty()) << err;
  auto stats = [&] { return statsJson(sock, dir.path()); };
  auto ctlOk = [&](const std::vector<std::string>& args) {
    return expectOk(ctl(sock, args, dir.path())).out;
  };
  // Two samples of the counters a while apart, the first once every worker has left the
  // snapshot before the change (sluicectl returned) and the capture has gone round since.
  auto twoSamples = [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    json a = stats();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    json b = stats();
    EXPECT_GT(b.at("total").at("packets_in").get<uint64_t>(),
              a.at("total").at("packets_in").get<uint64_t>() + 10 * in.size())
        << "the capture did not go round between the samples";
    return std::pair{a, b};
  };

  // Every backend gets traffic before any change.
  {
    const auto [a, b] = twoSamples();
    for (const char* addr : {"10.0.0.11", "10.0.0.12", "10.0.0.13"}) {
      EXPECT_GT(packetsOf(b, "web", addr, 80), packetsOf(a, "web", addr, 80)) << addr;
    }
    for (const char* addr : {"10.0.1.21", "10.0.1.22"}) {
      EXPECT_GT(packetsOf(b, "dns", addr, 5353), packetsOf(a, "dns", addr, 5353)) << addr;
    }
    EXPECT_GT(backendStats(b, "dns", "10.0.1.21", 5353).at("active_flows").get<uint64_t>(), 0u);
  }

  // web 10.0.0.11 down: no new flow, so no packet, since each round's flows start with a SYN.
  ctlOk({"backend", "down", "web", "10.0.0.11"});
  {
    const json l = listJson(sock, dir.path());
    const json b = findBackend(l, "web", "10.0.0.11", 80);
    EXPECT_EQ(b.at("state"), "maintenance");
    EXPECT_EQ(b.at("reschedules_flows"), false);
    const auto [s1, s2] = twoSamples();
    const json x1 = backendStats(s1, "web", "10.0.0.11", 80);
    const json x2 = backendStats(s2, "web", "10.0.0.11", 80);
    EXPECT_EQ(x2.at("packets"), x1.at("packets")) << "traffic reached a backend in maintenance";
    EXPECT_EQ(x2.at("new_flows"), x1.at("new_flows")) << "a new flow for a backend in maintenance";
    for (const char* addr : {"10.0.0.12", "10.0.0.13"}) {
      EXPECT_GT(packetsOf(s2, "web", addr, 80), packetsOf(s1, "web", addr, 80))
          << addr << " took the flows";
    }
    EXPECT_EQ(s2.at("total").at("drops").at("no_backend"), 0);
  }

  // dns 10.0.1.21 down, in a service that reschedules: its established flows leave it.
  const uint64_t rescheduled_before = stats().at("total").at("flows_rescheduled").get<uint64_t>();
  ctlOk({"backend", "down", "dns", "10.0.1.21"});
  {
    const json b = findBackend(listJson(sock, dir.path()), "dns", "10.0.1.21", 5353);
    EXPECT_EQ(b.at("state"), "maintenance");
    EXPECT_EQ(b.at("reschedules_flows"), true);
    const auto [s1, s2] = twoSamples();
    const json x2 = backendStats(s2, "dns", "10.0.1.21", 5353);
    EXPECT_EQ(x2.at("packets"), backendStats(s1, "dns", "10.0.1.21", 5353).at("packets"))
        << "an established flow stayed on a backend in maintenance that reschedules";
    EXPECT_EQ(x2.at("active_flows"), 0) << "its flows moved";
    EXPECT_EQ(backendStats(s2, "dns", "10.0.1.22", 5353).at("active_flows"), dns.flows);
    EXPECT_GT(packetsOf(s2, "dns", "10.0.1.22", 5353), packetsOf(s1, "dns", "10.0.1.22", 5353));
    EXPECT_GT(s2.at("total").at("flows_rescheduled").get<uint64_t>(), rescheduled_before);
  }

  // Both up: web 10.0.0.11 takes new flows again; dns's moved flows stay where they are now.
  ctlOk({"backend", "up", "web", "10.0.0.11"});
  ctlOk({"backend", "up", "dns", "10.0.1.21"});
  {
    const json l = listJson(sock, dir.path());
    for (const auto& [svc, addr, port] : {std::tuple{"web", "10.0.0.11", 80},
                                          std::tuple{"dns", "10.0.1.21", 5353}}) {
      const json b = findBackend(l, svc, addr, port);
      EXPECT_EQ(b.at("state"), "up") << b.dump();
      EXPECT_EQ(b.at("reschedules_flows"), false) << b.dump();
      EXPECT_EQ(b.at("health").at("maintenance"), false) << b.dump();
    }
    const auto [s1, s2] = twoSamples();
    EXPECT_GT(packetsOf(s2, "web", "10.0.0.11", 80), packetsOf(s1, "web", "10.0.0.11", 80))
        << "no new flow for a backend that came up";
    EXPECT_EQ(packetsOf(s2, "dns", "10.0.1.21", 5353), packetsOf(s1, "dns", "10.0.1.21", 5353))
        << "established flows keep their backend when another comes up";
  }
  EXPECT_EQ(d.stop(SIGTERM), 0) << d.log();
}

}  // namespace
