// Network namespaces for the end-to-end suites that put Sluice on a link of its own (root):
// namespaces and veth pairs made for one test and removed at its end, threads moved into a
// namespace, and `sluiced run` started in one, attached to its interface.
#pragma once

#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/net.h"
#include "tests/support/run.h"

namespace testsupport {

/** Run cmd through the shell with its output discarded; whether it exited 0. */
bool sh(const std::string& cmd);

/**
 * Why tests that make network namespaces cannot run here: "needs root" or "iproute2 (ip) is not
 * installed"; "" when they can.
 */
std::string whyNoNamespaces();

/**
 * The network namespaces of one test, named "<prefix>-<role>-<pid>", and the iproute2 commands
 * that wire them. Every namespace (and with it every veth end inside) is removed on destruction,
 * whatever happened.
 */
class Namespaces {
 public:
  Namespaces(std::string_view prefix, std::initializer_list<std::string_view> roles);
  ~Namespaces();
  Namespaces(const Namespaces&) = delete;
  Namespaces& operator=(const Namespaces&) = delete;

  /** Make every namespace; false (error() says which) at the first that cannot be made. */
  [[nodiscard]] bool create();
  /** The namespace of role; @throws std::out_of_range for a role not given to the constructor */
  const std::string& ns(std::string_view role) const;
  /** The last command that failed, or "". */
  const std::string& error() const { return error_; }

  /** Run cmd through the shell; on failure remember it as error(). @return whether it exited 0 */
  bool run(const std::string& cmd);
  /** run() cmd inside role's namespace (ip netns exec). */
  bool in(std::string_view role, const std::string& cmd);
  /** A veth pair: a_if in role a's namespace, its peer b_if in role b's. */
  bool veth(std::string_view a, const std::string& a_if, std::string_view b,
            const std::string& b_if);
  /** Give ifname in role's namespace the Ethernet address mac. */
  bool setMac(std::string_view role, const std::string& ifname, const sluice::MacAddress& mac);
  /** Bring ifname in role's namespace up. */
  bool up(std::string_view role, const std::string& ifname);

 private:
  std::map<std::string, std::string, std::less<>> ns_;  // role -> namespace
  std::string error_;
};

/**
 * Move the calling thread into the network namespace ns, pinned to cpu: generic XDP on a veth
 * runs on the CPU that sends, so the CPU decides which per-CPU state a frame meets.
 * @return "" or why not
 */
std::string enterNamespace(const std::string& ns, int cpu = 0);

/**
 * Run f on a thread that has entered ns on cpu (enterNamespace); the caller's thread stays
 * where it is. error is "" or why the thread could not enter ns (f is not run then); f may set
 * it too.
 */
void inNamespace(const std::string& ns, const std::function<void()>& f, std::string& error,
                 int cpu = 0);

/** Where the build put the programs an end-to-end test runs. */
struct Programs {
  std::string sluiced;
  std::string sluicectl;
};

/**
 * `sluiced run` in the namespace ns, attached to ifname, with config_text as its configuration
 * and its socket and log in dir; stopped (SIGTERM, to this child only) on destruction.
 */
class XdpDaemon {
 public:
  XdpDaemon(const std::string& ns, const std::string& ifname, const TempDir& dir,
            const std::string& config_text, const Programs& programs);
  ~XdpDaemon();
  XdpDaemon(const XdpDaemon&) = delete;
  XdpDaemon& operator=(const XdpDaemon&) = delete;

  /** Whether it answered `sluicectl version` within five seconds of starting. */
  bool up() const { return up_; }
  /** What it has written to stdout and stderr so far. */
  std::string log() const { return readFile(log_); }
  /** sluicectl args, on its socket. */
  RunResult ctl(std::vector<std::string> args) const;
  /** The "total" object of `sluicectl --json stats` (a failed gtest expectation and {} when the
   * command fails). */
  nlohmann::json totals() const;
  /** SIGTERM (to this child only) and wait. @return the wait status */
  int stop();

 private:
  const TempDir& dir_;
  std::string sluicectl_, sock_, log_;
  pid_t pid_ = -1;
  bool up_ = false;
};

}  // namespace testsupport
