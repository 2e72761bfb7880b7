// End-to-end tests of the control socket against hostile clients and hostile surroundings
// (issue 9): bytes that are not UTF-8 in a request or in the configuration path, a socket
// directory others could write to, and two daemons racing for one socket path.
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

}  // namespace
