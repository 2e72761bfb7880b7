// End-to-end tests of the control socket against hostile clients and hostile surroundings
// (issue 9): bytes that are not UTF-8 in a request or in the configuration path, a socket
// directory others could write to, two daemons racing for one socket path, clients that hold
// their connections (idle, not reading their answers), and answers of many megabytes.
//
// Each test starts the real `sluiced run` on one net_pcap virtual port that reads an empty capture
// (no NIC, no hugepages), with its own configuration, socket and --file-prefix in a fresh temporary
// directory, and talks to it over a raw Unix socket or through the real sluicectl. The daemons are
// children of this process and only those pids are signalled. Needs root (chown to nobody).
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/fixtures.h"
#include "tests/support/run.h"
#include "tools/pktgen/pcap_io.h"

#ifndef SLUICED_PATH
#error "SLUICED_PATH must name the sluiced binary under test"
#endif
#ifndef SLUICECTL_PATH
#error "SLUICECTL_PATH must name the sluicectl binary under test"
#endif

namespace {

using json = nlohmann::json;
using testsupport::readFile;
using testsupport::RunResult;
using testsupport::runProgram;
using testsupport::TempDir;
using testsupport::statusOf;
using testsupport::waitChild;
using testsupport::writeFile;

constexpr uid_t kNobody = 65534;

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string modeOf(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    return std::string("missing: ") + std::strerror(errno);
  }
  return fmt::format("{:04o}", st.st_mode & 07777);
}

/** One `sluiced run`, a child of this process; stopped (SIGKILL at worst) when destroyed. */
class Daemon {
 public:
  Daemon(const TempDir& dir, std::string tag, std::string config, std::string socket)
      : tag_(std::move(tag)), config_(std::move(config)), socket_(std::move(socket)),
        log_path_(dir.file(tag_ + "-sluiced.log")) {
    static int counter = 0;
    prefix_ = fmt::format("sluice-e2e-sock-{}-{}", ::getpid(), ++counter);
    in_pcap_ = dir.file(tag_ + "-in.pcap");
    out_pcap_ = dir.file(tag_ + "-out.pcap");
    pktgen::writePcap(in_pcap_, {});
  }
  ~Daemon() { stop(); }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  /** fork + exec, with umask mask in the child; returns at once. */
  void spawn(mode_t mask = 022) {
    std::vector<std::string> args = {
        SLUICED_PATH, "run", "--config", config_, "--socket", socket_, "--", "-l", "0,1",
        "--no-huge", "--no-pci", "--no-shconf", "--file-prefix=" + prefix_, "-m", "256",
        "--log-level", "*:error", "--vdev",
        fmt::format("net_pcap0,rx_pcap={},tx_pcap={}", in_pcap_, out_pcap_)};
    std::vector<char*> argv;
    for (std::string& a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    const int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::umask(mask);
      ::dup2(null_fd, STDOUT_FILENO);
      ::dup2(log_fd, STDERR_FILENO);
      ::execv(SLUICED_PATH, argv.data());
      ::_exit(127);
    }
    ::close(log_fd);
    ::close(null_fd);
  }

  /** Wait until it logs that it runs (true) or exits (false, exitStatus() set). */
  bool waitRunning(int timeout_s = 60) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      if (exited()) {
        return false;
      }
      if (contains(log(), " running: ")) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  /** Wait until it exits, at most timeout_s; its exit status or -1. */
  int waitExit(int timeout_s = 30) {
    if (pid_ > 0) {
      status_ = waitChild(pid_, timeout_s);
      pid_ = -1;
    }
    return status_;
  }

  int stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
    }
    return waitExit();
  }

  bool exited() {
    int wstatus = 0;
    if (pid_ > 0 && ::waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      status_ = statusOf(wstatus);
    }
    return pid_ <= 0;
  }

  pid_t pid() const { return pid_; }
  int exitStatus() const { return status_; }
  std::string log() const { return readFile(log_path_); }

 private:
  std::string tag_, config_, socket_, log_path_, prefix_, in_pcap_, out_pcap_;
  pid_t pid_ = -1;
  int status_ = -1;
};

std::string writeConfig(const TempDir& dir, const std::string& name = "c.toml") {
  const std::string path = dir.file(name);
  writeFile(path, testsupport::configText(testsupport::threeServices()));
  return path;
}

/** Send raw bytes (a newline is added) and read the whole answer, at most 5 s. */
std::string rawRequest(const std::string& socket, const std::string& bytes) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket.c_str(), socket.size() + 1);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const std::string e = std::strerror(errno);
    ::close(fd);
    return "connect: " + e;
  }
  const timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const std::string line = bytes + "\n";
  (void)::send(fd, line.data(), line.size(), MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) {
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

RunResult ctl(const TempDir& dir, const std::string& socket, std::vector<std::string> args) {
  args.insert(args.begin(), {"--socket", socket});
  return runProgram(SLUICECTL_PATH, args, dir.path());
}

// =============================================================================================
// Bytes that are not UTF-8

TEST(Utf8, RequestWithABadByteIsRefusedAndTheDaemonServesOn) {
  TempDir dir;
  const std::string sock = dir.file("s.sock");
  Daemon d(dir, "utf8", writeConfig(dir), sock);
  d.spawn();
  ASSERT_TRUE(d.waitRunning()) << d.log();

  const std::string prefix = R"({"command":"backend.del","service":")";
  // A stray byte, a truncated sequence, an overlong '/', an encoded surrogate, one past U+10FFFF.
  for (const std::string bad : {"\xff", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"}) {
    const std::string request = prefix + "web" + bad + R"(","address":"10.0.0.11"})";
    const std::string answer = rawRequest(sock, request);
    json r;
    ASSERT_NO_THROW(r = json::parse(answer)) << "not JSON: " << answer << "\n" << d.log();
    EXPECT_EQ(r.value("ok", true), false) << answer;
    EXPECT_EQ(r.value("error", std::string()),
              fmt::format("the request is not valid UTF-8 (byte at offset {})",
                          prefix.size() + 3))
        << answer;
    const std::string v = rawRequest(sock, R"({"command":"version"})");
    ASSERT_TRUE(contains(v, R"("ok":true)")) << "the daemon stopped serving: " << v << "\n"
                                             << d.log();
  }
  EXPECT_TRUE(contains(d.log(), "-> error: the request is not valid UTF-8")) << d.log();

  // sluicectl refuses such an argument itself: nothing is sent. Its exit status is sluicectl's
  // rule (docs/cli.md), not this test's.
  const RunResult r = ctl(dir, sock, {"backend", "del", "web\xff", "10.0.0.11"});
  EXPECT_NE(r.status, 0) << r.describe();
  EXPECT_TRUE(contains(r.err, "not valid UTF-8")) << r.describe();
  EXPECT_FALSE(contains(r.err, "unexpected answer")) << r.describe();
  EXPECT_EQ(ctl(dir, sock, {"version"}).status, 0);
  EXPECT_EQ(d.stop(), 0) << d.log();
}

TEST(Utf8, ReloadOfAConfigPathWithABadByte) {
  TempDir dir;
  const std::string sock = dir.file("s.sock");
  const std::string config = writeConfig(dir, "conf-\xff.toml");
  Daemon d(dir, "utf8-path", config, sock);
  d.spawn();
  ASSERT_TRUE(d.waitRunning()) << d.log();

  const RunResult r = ctl(dir, sock, {"--json", "reload"});
  ASSERT_EQ(r.status, 0) << r.describe() << "\n" << d.log();
  const json reply = json::parse(r.out);
  EXPECT_TRUE(contains(reply.at("change").get<std::string>(), "conf-\xef\xbf\xbd.toml"))
      << "the bad byte is replaced by U+FFFD: " << r.out;

  // An error quoting the path too: the file is gone.
  std::filesystem::remove(config);
  const RunResult gone = ctl(dir, sock, {"reload"});
  EXPECT_EQ(gone.status, 1) << gone.describe();
  EXPECT_TRUE(contains(gone.err, "reload rejected")) << gone.describe();
  EXPECT_EQ(ctl(dir, sock, {"version"}).status, 0) << d.log();
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// =============================================================================================
// The socket's directory

TEST(SocketDirectory, CreatedPrivateWhateverTheUmask) {
  TempDir dir;
  const std::string sock = dir.file("run/sluice/s.sock");
  Daemon d(dir, "umask", writeConfig(dir), sock);
  d.spawn(0);
  ASSERT_TRUE(d.waitRunning()) << d.log();
  EXPECT_EQ(modeOf(dir.file("run")), "0700");
  EXPECT_EQ(modeOf(dir.file("run/sluice")), "0700");
  EXPECT_EQ(modeOf(sock), "0600");
  EXPECT_EQ(modeOf(sock + ".lock"), "0600");
  EXPECT_EQ(d.stop(), 0) << d.log();
}

TEST(SocketDirectory, RefusedWhenOthersCanWriteIt) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to chown to nobody";
  }
  TempDir dir;
  const std::string config = writeConfig(dir);
  struct Case {
    std::string name;
    uid_t owner;
    mode_t mode;
    std::string sock;  // under name
    std::string why;
  };
  const std::vector<Case> cases = {
      {"nobodys", kNobody, 0777, "s.sock", "owned by uid 65534, mode 0777"},
      {"nobodys-private", kNobody, 0700, "s.sock", "owned by uid 65534, mode 0700"},
      {"group-writable", 0, 0770, "s.sock", "owned by uid 0, mode 0770"},
      {"world-writable", 0, 0777, "s.sock", "owned by uid 0, mode 0777"},
      // Nobody could rename the private directory below away and put their own in its place.
      {"above", kNobody, 0755, "private/s.sock", "owned by uid 65534, mode 0755"},
  };
  for (const Case& c : cases) {
    const std::string sub = dir.file(c.name);
    ASSERT_EQ(::mkdir(sub.c_str(), 0700), 0);
    ASSERT_EQ(::chown(sub.c_str(), c.owner, c.owner), 0);
    ASSERT_EQ(::chmod(sub.c_str(), c.mode), 0);
    if (c.name == "above") {
      ASSERT_EQ(::mkdir((sub + "/private").c_str(), 0700), 0);
    }
    const std::string sock = sub + "/" + c.sock;
    Daemon d(dir, c.name, config, sock);
    d.spawn();
    EXPECT_FALSE(d.waitRunning()) << c.name << ": started\n" << d.log();
    EXPECT_EQ(d.exitStatus(), 1) << c.name << "\n" << d.log();
    EXPECT_TRUE(contains(d.log(), fmt::format("control socket directory {} is {}", sub, c.why)))
        << c.name << "\n" << d.log();
    EXPECT_FALSE(std::filesystem::exists(sock)) << c.name;
    EXPECT_FALSE(std::filesystem::exists(sock + ".lock")) << c.name;
  }
}

TEST(SocketDirectory, StickyDirectoryOnlyWithoutAnotherUsersSocket) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to chown to nobody";
  }
  TempDir dir;
  const std::string config = writeConfig(dir);
  const std::string sticky = dir.file("tmp");
  ASSERT_EQ(::mkdir(sticky.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(sticky.c_str(), 01777), 0);
  const std::string sock = sticky + "/s.sock";
  {
    Daemon d(dir, "sticky", config, sock);
    d.spawn();
    ASSERT_TRUE(d.waitRunning()) << d.log();
    EXPECT_EQ(d.stop(), 0) << d.log();
  }
  // Someone else's socket (or lock file) at the path: not replaced.
  for (const std::string& theirs : {sock, sock + ".lock"}) {
    std::filesystem::remove(sock);
    std::filesystem::remove(sock + ".lock");
    if (theirs == sock) {
      const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::memcpy(addr.sun_path, sock.c_str(), sock.size() + 1);
      ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
      ::close(fd);
    } else {
      writeFile(theirs, "");
    }
    ASSERT_EQ(::chown(theirs.c_str(), kNobody, kNobody), 0);
    Daemon d(dir, "sticky-theirs", config, sock);
    d.spawn();
    EXPECT_FALSE(d.waitRunning()) << theirs << ": started\n" << d.log();
    EXPECT_EQ(d.exitStatus(), 1) << d.log();
    EXPECT_TRUE(contains(d.log(), fmt::format("{} is owned by uid 65534", theirs))) << d.log();
    struct stat st {};
    ASSERT_EQ(::lstat(theirs.c_str(), &st), 0) << "left alone";
    EXPECT_EQ(st.st_uid, kNobody);
  }
}

// =============================================================================================
// Two daemons at once

TEST(Lock, TwoDaemonsStartedTogetherOneServes) {
  TempDir dir;
  const std::string config = writeConfig(dir);
  constexpr int kRounds = 20;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(fmt::format("round {}", round));
    const std::string sock = dir.file(fmt::format("r{}.sock", round));
    Daemon a(dir, fmt::format("r{}a", round), config, sock);
    Daemon b(dir, fmt::format("r{}b", round), config, sock);
    a.spawn();
    b.spawn();
    const pid_t pid_a = a.pid();
    const pid_t pid_b = b.pid();
    const bool a_runs = a.waitRunning();
    const bool b_runs = b.waitRunning();
    ASSERT_NE(a_runs, b_runs) << "exactly one serves\n--- a ---\n" << a.log() << "--- b ---\n"
                              << b.log();
    Daemon& loser = a_runs ? b : a;
    const pid_t winner = a_runs ? pid_a : pid_b;
    EXPECT_EQ(loser.exitStatus(), 1) << loser.log();
    EXPECT_TRUE(contains(loser.log(), fmt::format("another sluiced is already serving {} (pid {})",
                                                  sock, winner)))
        << loser.log();
    const std::string v = rawRequest(sock, R"({"command":"version"})");
    EXPECT_TRUE(contains(v, R"("ok":true)")) << v;
    EXPECT_EQ((a_runs ? a : b).stop(), 0);
  }
}

// =============================================================================================
// Clients that hold on

/** A connection to socket that has sent bytes (perhaps none) and reads nothing; -1 on failure. */
int holdConnection(const std::string& socket, const std::string& bytes) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket.c_str(), socket.size() + 1);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  if (!bytes.empty() && ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) < 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/** n services of one backend each, table_size 7: list, stats and save answers of megabytes. */
std::string writeManyServices(const TempDir& dir, int n) {
  std::string text;
  for (int i = 0; i < n; ++i) {
    text += fmt::format(
        "[[service]]\nname = \"svc-{}\"\nvip = \"198.18.{}.{}\"\nport = 80\nprotocol = \"tcp\"\n"
        "forwarding = \"dr\"\ntable_size = 7\n[[service.backend]]\naddress = \"10.9.{}.{}\"\n"
        "mac = \"02:00:00:00:00:01\"\n",
        i, i / 250, i % 250 + 1, i / 250, i % 250 + 1);
  }
  const std::string path = dir.file("many.toml");
  writeFile(path, text);
  return path;
}

double millisSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The control loop once served one client at a time with blocking writes: a client that sent
// `list` and never read the answer held it (and SIGTERM) until that client went away.
TEST(Hold, AClientThatDoesNotReadItsAnswerHoldsUpNoOne) {
  TempDir dir;
  const std::string sock = dir.file("s.sock");
  Daemon d(dir, "noread", writeManyServices(dir, 3000), sock);
  d.spawn();
  ASSERT_TRUE(d.waitRunning()) << d.log();

  // The big answer reaches a client that reads it. What it takes is the daemon's own work on one
  // `list` (building the answer; several times longer under ASan), which the held clients below
  // cost too before `version` is read: that is allowed for, waiting behind them is not.
  auto t0 = std::chrono::steady_clock::now();
  const RunResult list = ctl(dir, sock, {"--json", "list"});
  const double list_ms = millisSince(t0);
  ASSERT_EQ(list.status, 0) << list.describe();
  EXPECT_EQ(json::parse(list.out).at("services").size(), 3000u);

  // Answers far larger than the socket's buffers, so that the daemon's writes would block.
  std::vector<int> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(holdConnection(sock, "{\"command\":\"list\"}\n"));
    ASSERT_GE(held.back(), 0) << std::strerror(errno);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  t0 = std::chrono::steady_clock::now();
  const RunResult v = ctl(dir, sock, {"version"});
  const double version_ms = millisSince(t0);
  EXPECT_EQ(v.status, 0) << v.describe() << "\n" << d.log();
  EXPECT_LT(version_ms, 1000.0 + 3 * list_ms)
      << "sluicectl version waited behind clients that do not read (one list took " << list_ms
      << " ms)";

  t0 = std::chrono::steady_clock::now();
  ::kill(d.pid(), SIGTERM);
  EXPECT_EQ(d.waitExit(), 0) << d.log();
  EXPECT_LT(millisSince(t0), 1000.0) << "SIGTERM waited behind clients that do not read\n"
                                     << d.log();
  for (const int fd : held) {
    ::close(fd);
  }
}

// 18 idle connections once filled the backlog: every sluicectl after them timed out.
TEST(Hold, IdleConnectionsDoNotLockOutSluicectl) {
  TempDir dir;
  const std::string sock = dir.file("s.sock");
  Daemon d(dir, "idle", writeConfig(dir), sock);
  d.spawn();
  ASSERT_TRUE(d.waitRunning()) << d.log();

  std::vector<int> held;
  for (int i = 0; i < 300; ++i) {
    // Silent ones, and ones that stop half-way through a request.
    const int fd = holdConnection(sock, i % 2 == 0 ? "" : "{\"command\":\"li");
    ASSERT_GE(fd, 0) << "connection " << i << ": " << std::strerror(errno);
    held.push_back(fd);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const RunResult v = ctl(dir, sock, {"version"});
  EXPECT_EQ(v.status, 0) << v.describe() << "\n" << d.log();
  EXPECT_LT(millisSince(t0), 1000.0) << "sluicectl waited behind idle connections";
  EXPECT_TRUE(contains(d.log(), "clients at once is the bound")) << d.log();

  // Past the request deadline the daemon has closed every one of them: each reads EOF (or a
  // reset), none an answer.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  size_t closed = 0;
  for (const int fd : held) {
    char c = 0;
    const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
    closed += n == 0 || (n < 0 && errno == ECONNRESET) ? 1 : 0;
    ::close(fd);
  }
  EXPECT_EQ(closed, held.size());
  EXPECT_TRUE(contains(d.log(), "no request within 2000 ms")) << d.log();
  EXPECT_EQ(ctl(dir, sock, {"version"}).status, 0);
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// =============================================================================================
// Answers of many megabytes

// Answers were capped at 1 MB, like requests: at 10,000 services the running configuration could
// be neither listed nor saved.
TEST(Size, TenThousandServicesListStatsAndSave) {
  TempDir dir;
  const std::string sock = dir.file("s.sock");
  const std::string config = writeManyServices(dir, 10000);
  Daemon d(dir, "large", config, sock);
  d.spawn();
  ASSERT_TRUE(d.waitRunning(120)) << d.log();

  const RunResult list = ctl(dir, sock, {"--json", "list"});
  ASSERT_EQ(list.status, 0) << list.err << "\n" << d.log();
  EXPECT_GT(list.out.size(), size_t{1} << 20);
  EXPECT_EQ(json::parse(list.out).at("services").size(), 10000u);
  const RunResult text = ctl(dir, sock, {"list"});
  ASSERT_EQ(text.status, 0) << text.err;
  EXPECT_TRUE(contains(text.out, "svc-9999")) << text.out.substr(0, 200);

  const RunResult stats = ctl(dir, sock, {"--json", "stats"});
  ASSERT_EQ(stats.status, 0) << stats.err;
  EXPECT_EQ(json::parse(stats.out).at("services").size(), 10000u);

  // Saved, and the saved file is what runs: reloading it changes nothing and is accepted.
  const std::string saved = dir.file("saved.toml");
  const RunResult save = ctl(dir, sock, {"save", "--out", saved});
  ASSERT_EQ(save.status, 0) << save.describe();
  std::filesystem::rename(saved, config);
  const RunResult reload = ctl(dir, sock, {"--json", "reload"});
  ASSERT_EQ(reload.status, 0) << reload.describe();
  EXPECT_EQ(ctl(dir, sock, {"--json", "list"}).out.size(), list.out.size());
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// =============================================================================================
// The memory budget

/** MemAvailable in bytes, or 0. */
uint64_t memAvailable() {
  const std::string info = readFile("/proc/meminfo");
  const size_t at = info.find("MemAvailable:");
  return at == std::string::npos ? 0 : std::stoull(info.substr(at + 13)) * 1024;
}

// A configuration whose Maglev tables outgrow the host was allocated until the host ran out of
// memory; a flow table that could not be allocated ended in std::bad_alloc (exit 134) and left
// the socket behind.
TEST(Memory, TablesLargerThanTheHostAreRefusedAtStart) {
  const uint64_t available = memAvailable();
  if (available == 0) {
    GTEST_SKIP() << "no MemAvailable in /proc/meminfo";
  }
  TempDir dir;
  const std::string sock = dir.file("s.sock");
  const uint64_t count = available / (1048573 * 4) + 16;
  std::string text;
  for (uint64_t i = 0; i < count; ++i) {
    text += fmt::format(
        "[[service]]\nname = \"big-{}\"\nvip = \"198.18.{}.{}\"\nport = 80\nprotocol = "
        "\"tcp\"\nforwarding = \"dr\"\ntable_size = 1048573\n",
        i, i / 250, i % 250 + 1);
  }
  writeFile(dir.file("big.toml"), text);
  Daemon d(dir, "big", dir.file("big.toml"), sock);
  d.spawn();
  EXPECT_EQ(d.waitExit(120), 2) << d.log();
  EXPECT_TRUE(contains(d.log(), fmt::format("the tables need")) &&
              contains(d.log(), fmt::format("({} services, {} slots in all x 4 B)", count,
                                            count * 1048573)) &&
              contains(d.log(), "this host has available (MemAvailable)"))
      << d.log();
  EXPECT_FALSE(std::filesystem::exists(sock)) << "no socket left behind";

  // With memory_limit, the flow tables count too.
  sluice::Config flows = testsupport::threeServices();
  flows.dataplane.flow_table_size = 67108864;
  flows.dataplane.memory_limit = uint64_t{1} << 30;
  writeFile(dir.file("flows.toml"), testsupport::configText(flows));
  Daemon f(dir, "flows", dir.file("flows.toml"), sock);
  f.spawn();
  EXPECT_EQ(f.waitExit(60), 2) << f.log();
  EXPECT_TRUE(contains(f.log(), "more than dataplane.memory_limit 1.0 GiB")) << f.log();
  EXPECT_TRUE(contains(f.log(), " GiB (1 worker x 67108864 entries x 68 B)")) << f.log();
  EXPECT_FALSE(std::filesystem::exists(sock));
}

TEST(Memory, AServiceWhoseTableDoesNotFitIsRefusedAndTheRestRuns) {
  TempDir dir;
  const std::string sock = dir.file("s.sock");
  sluice::Config limited = testsupport::threeServices();
  limited.dataplane.flow_table_size = 65536;
  limited.dataplane.memory_limit = uint64_t{16} << 20;
  writeFile(dir.file("c.toml"), testsupport::configText(limited));
  Daemon d(dir, "limit", dir.file("c.toml"), sock);
  d.spawn();
  ASSERT_TRUE(d.waitRunning()) << d.log();
  const std::string before = ctl(dir, sock, {"--json", "list"}).out;
  for (int i = 0; i < 3; ++i) {
    // 4 MiB each; the second would need 16 MiB and more: the flow table (4.25 MiB), the tables
    // in force and the new ones.
    const RunResult r = ctl(dir, sock, {"service", "add", fmt::format("big{}", i), "--vip",
                                        fmt::format("192.0.2.{}", 100 + i), "--port", "80",
                                        "--protocol", "tcp", "--forwarding", "dr",
                                        "--table-size", "1048573"});
    if (i < 1) {
      EXPECT_EQ(r.status, 0) << r.describe();
    } else {
      EXPECT_EQ(r.status, 1) << r.describe();
      EXPECT_TRUE(contains(r.err, "more than dataplane.memory_limit 16.0 MiB")) << r.describe();
    }
  }
  EXPECT_TRUE(contains(ctl(dir, sock, {"list"}).out, "big0"));
  EXPECT_FALSE(contains(ctl(dir, sock, {"list"}).out, "big1"));
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// =============================================================================================
// reload and the changes made with sluicectl

TEST(Reload, RefusesToUndoSluicectlChangesUnlessForced) {
  TempDir dir;
  const std::string sock = dir.file("s.sock");
  const std::string config = writeConfig(dir);
  Daemon d(dir, "undo", config, sock);
  d.spawn();
  ASSERT_TRUE(d.waitRunning()) << d.log();
  ASSERT_EQ(ctl(dir, sock, {"backend", "add", "web", "10.0.0.14", "--mac", "02:00:00:00:01:14"})
                .status,
            0);
  const RunResult refused = ctl(dir, sock, {"reload"});
  EXPECT_EQ(refused.status, 1) << refused.describe();
  EXPECT_TRUE(contains(refused.err, "would undo 1 change made with sluicectl")) << refused.err;
  EXPECT_TRUE(contains(refused.err, "backend add web 10.0.0.14:80")) << refused.err;
  EXPECT_TRUE(contains(ctl(dir, sock, {"list"}).out, "10.0.0.14:80"));

  const RunResult forced = ctl(dir, sock, {"reload", "--force"});
  EXPECT_EQ(forced.status, 0) << forced.describe();
  EXPECT_TRUE(contains(forced.err, "reload dropped 1 change(s) made with sluicectl"))
      << forced.describe();
  EXPECT_FALSE(contains(ctl(dir, sock, {"list"}).out, "10.0.0.14:80"));

  // SIGHUP takes the file as it is, and the log says what it dropped.
  ASSERT_EQ(ctl(dir, sock, {"backend", "drain", "web", "10.0.0.11"}).status, 0);
  ::kill(d.pid(), SIGHUP);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!contains(d.log(), "SIGHUP: the file dropped") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(contains(d.log(), "SIGHUP: the file dropped 1 change(s) made with sluicectl: "
                                "backend.drain web 10.0.0.11:80"))
      << d.log();
  EXPECT_EQ(d.stop(), 0) << d.log();
}

}  // namespace
