#include "tests/support/netns.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace testsupport {

bool sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }

std::string whyNoNamespaces() {
  if (::geteuid() != 0) {
    return "needs root (network namespaces, XDP)";
  }
  if (!sh("ip -V")) {
    return "iproute2 (ip) is not installed";
  }
  return "";
}

Namespaces::Namespaces(std::string_view prefix, std::initializer_list<std::string_view> roles) {
  const int pid = ::getpid();
  for (std::string_view role : roles) {
    ns_.emplace(std::string(role), fmt::format("{}-{}-{}", prefix, role, pid));
  }
}

Namespaces::~Namespaces() {
  for (const auto& [role, ns] : ns_) {
    sh("ip netns del " + ns);
  }
}

bool Namespaces::create() {
  for (const auto& [role, ns] : ns_) {
    if (!run("ip netns add " + ns)) {
      return false;
    }
  }
  return true;
}

const std::string& Namespaces::ns(std::string_view role) const {
  const auto it = ns_.find(role);
  if (it == ns_.end()) {
    throw std::out_of_range(fmt::format("no namespace for role {}", role));
  }
  return it->second;
}

bool Namespaces::run(const std::string& cmd) {
  if (sh(cmd)) {
    return true;
  }
  error_ = "failed: " + cmd;
  return false;
}

bool Namespaces::in(std::string_view role, const std::string& cmd) {
  return run(fmt::format("ip netns exec {} {}", ns(role), cmd));
}

bool Namespaces::veth(std::string_view a, const std::string& a_if, std::string_view b,
                      const std::string& b_if) {
  return run(fmt::format("ip link add {} netns {} type veth peer name {} netns {}", a_if, ns(a),
                         b_if, ns(b)));
}

bool Namespaces::setMac(std::string_view role, const std::string& ifname,
                        const sluice::MacAddress& mac) {
  return run(fmt::format("ip -n {} link set {} address {}", ns(role), ifname, mac.str()));
}

bool Namespaces::up(std::string_view role, const std::string& ifname) {
  return run(fmt::format("ip -n {} link set {} up", ns(role), ifname));
}

std::string enterNamespace(const std::string& ns, int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  ::sched_setaffinity(0, sizeof(one), &one);
  const int fd = ::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return std::string("open netns: ") + std::strerror(errno);
  }
  const int rc = ::setns(fd, CLONE_NEWNET);
  const int e = errno;
  ::close(fd);
  return rc == 0 ? "" : std::string("setns: ") + std::strerror(e);
}

void inNamespace(const std::string& ns, const std::function<void()>& f, std::string& error,
                 int cpu) {
  std::thread t([&] {
    error = enterNamespace(ns, cpu);
    if (error.empty()) {
      f();
    }
  });
  t.join();
}

XdpDaemon::XdpDaemon(const std::string& ns, const std::string& ifname, const TempDir& dir,
                     const std::string& config_text, const Programs& programs)
    : dir_(dir), sluicectl_(programs.sluicectl), sock_(dir.file("s.sock")),
      log_(dir.file("sluiced.log")) {
  const std::string cfg = dir.file("sluice.toml");
  writeFile(cfg, config_text);
  pid_ = ::fork();
  if (pid_ == 0) {
    const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::execlp("ip", "ip", "netns", "exec", ns.c_str(), programs.sluiced.c_str(), "run", "--config",
             cfg.c_str(), "--socket", sock_.c_str(), "--interface", ifname.c_str(), nullptr);
    ::_exit(127);
  }
  for (int i = 0; i < 100 && !up_; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    up_ = ctl({"version"}).status == 0;
  }
}

XdpDaemon::~XdpDaemon() {
  if (pid_ > 0) {
    stop();
  }
}

RunResult XdpDaemon::ctl(std::vector<std::string> args) const {
  args.insert(args.begin(), {"--socket", sock_});
  return runProgram(sluicectl_, args, dir_.path());
}

nlohmann::json XdpDaemon::totals() const {
  const RunResult stats = ctl({"--json", "stats"});
  EXPECT_EQ(stats.status, 0) << stats.describe();
  return stats.status == 0 ? nlohmann::json::parse(stats.out).at("total")
                           : nlohmann::json::object();
}

int XdpDaemon::stop() {
  ::kill(pid_, SIGTERM);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

}  // namespace testsupport
