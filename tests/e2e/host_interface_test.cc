// HostInterface against a real kernel: two network namespaces joined by a veth pair. The test
// thread enters namespace "a" (setns) and runs HostInterface on a's end; namespace "b" is the
// peer (a backend, a router), configured with `ip -n`. Addresses are checked with `ip -j addr`,
// neighbour resolution with real ARP and Neighbour Discovery between the namespaces, and
// announcements by capturing in b with an AF_PACKET socket and checking the frame bytes, and what
// b's kernel made of them. Each test has its own namespaces, removed in TearDown whatever happens.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/net.h"
#include "control/host_interface.h"
#include "tests/support/fixtures.h"
#include "tests/support/run.h"

namespace {

using json = nlohmann::json;
using sluice::HostInterface;
using sluice::HostInterfaceError;
using sluice::IpAddress;
using sluice::IpPrefix;
using sluice::MacAddress;
using testsupport::ip;
using testsupport::mac;
using Clock = std::chrono::steady_clock;

using Frame = std::vector<uint8_t>;

std::string ipPath() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (::access(p, X_OK) == 0) {
      return p;
    }
  }
  return "ip";
}

IpPrefix prefix(std::string_view text) {
  auto p = IpPrefix::parse(text);
  if (!p) {
    throw std::invalid_argument("bad prefix in test: " + std::string(text));
  }
  return *p;
}

long msSince(Clock::time_point t0) {
  return static_cast<long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count());
}

bool enterNamespaceFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  const bool ok = ::setns(fd, CLONE_NEWNET) == 0;
  ::close(fd);
  return ok;
}

/** RFC 1071 sum over data, folded, not complemented. */
uint16_t onesSum(const uint8_t* data, size_t len, uint32_t sum) {
  for (size_t i = 0; i + 1 < len; i += 2) {
    sum += static_cast<uint32_t>(data[i] << 8 | data[i + 1]);
  }
  if (len % 2 != 0) {
    sum += static_cast<uint32_t>(data[len - 1] << 8);
  }
  while (sum >> 16 != 0) {
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return static_cast<uint16_t>(sum);
}

class HostInterfaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int serial = 0;
    const int pid = static_cast<int>(::getpid());
    ns_a_ = fmt::format("sluhi{}x{}a", pid, serial);
    ns_b_ = fmt::format("sluhi{}x{}b", pid, serial);
    ++serial;
    if_a_ = fmt::format("hia{}", pid);  // at most 3 + 7 characters: below IFNAMSIZ
    if_b_ = fmt::format("hib{}", pid);
    orig_ns_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(orig_ns_, 0) << std::strerror(errno);

    ASSERT_TRUE(run({"netns", "add", ns_a_}));
    created_a_ = true;
    ASSERT_TRUE(run({"netns", "add", ns_b_}));
    created_b_ = true;
    // A chroot can make namespaces but not enter them (`ip -n` remounts /, which is no mount
    // point there): nothing to test on such a machine.
    if (const testing::AssertionResult usable = runIn(ns_a_, {"link", "set", "lo", "up"});
        !usable) {
      GTEST_SKIP() << "network namespaces cannot be entered here: " << usable.message();
    }
    ASSERT_TRUE(run({"link", "add", if_a_, "netns", ns_a_, "type", "veth", "peer", "name", if_b_,
                     "netns", ns_b_}));
    ASSERT_TRUE(runIn(ns_b_, {"link", "set", if_b_, "up"}));
    ASSERT_TRUE(runIn(ns_b_, {"addr", "add", "198.51.100.3/24", "dev", if_b_}));
    ASSERT_TRUE(runIn(ns_b_, {"addr", "add", "2001:db8:b::3/64", "dev", if_b_, "nodad"}));
    mac_b_ = linkMac(ns_b_, if_b_);
    ASSERT_FALSE(mac_b_.isZero());

    ASSERT_TRUE(enterNamespaceFile("/run/netns/" + ns_a_)) << std::strerror(errno);
    in_a_ = true;
  }

  void TearDown() override {
    hi_.reset();  // in a, while a exists: removes the addresses it added
    for (const int fd : capture_fds_) {
      ::close(fd);
    }
    if (orig_ns_ >= 0) {
      if (in_a_ && ::setns(orig_ns_, CLONE_NEWNET) != 0) {
        ADD_FAILURE() << "cannot return to the original network namespace";
      }
      ::close(orig_ns_);
    }
    // Deleting a namespace deletes the veth end in it, and so the pair.
    if (created_b_) {
      EXPECT_TRUE(run({"netns", "del", ns_b_}));
    }
    if (created_a_) {
      EXPECT_TRUE(run({"netns", "del", ns_a_}));
    }
  }

  testing::AssertionResult run(const std::vector<std::string>& args) {
    const testsupport::RunResult r = testsupport::runProgram(ipPath(), args, tmp_.path());
    if (r.status == 0) {
      return testing::AssertionSuccess();
    }
    return testing::AssertionFailure() << r.describe();
  }
  testing::AssertionResult runIn(const std::string& ns, std::vector<std::string> args) {
    args.insert(args.begin(), {"-n", ns});
    return run(args);
  }
  json ipJson(const std::string& ns, std::vector<std::string> args) {
    args.insert(args.begin(), {"-j", "-n", ns});
    const testsupport::RunResult r = testsupport::runProgram(ipPath(), args, tmp_.path());
    if (r.status != 0) {
      ADD_FAILURE() << r.describe();
      return json::array();
    }
    // Some iproute2 versions print nothing at all for an empty list.
    return r.out.find_first_not_of(" \n") == std::string::npos ? json::array() : json::parse(r.out);
  }
  MacAddress linkMac(const std::string& ns, const std::string& ifname) {
    const json j = ipJson(ns, {"link", "show", "dev", ifname});
    return j.empty() ? MacAddress{} : mac(j.at(0).at("address").get<std::string>());
  }
  /** (local, prefixlen, nodad) of each address on ifname in ns. */
  std::vector<std::tuple<std::string, int, bool>> addresses(const std::string& ns,
                                                            const std::string& ifname) {
    std::vector<std::tuple<std::string, int, bool>> out;
    for (const json& link : ipJson(ns, {"addr", "show", "dev", ifname})) {
      for (const json& a : link.value("addr_info", json::array())) {
        out.emplace_back(a.at("local").get<std::string>(), a.at("prefixlen").get<int>(),
                         a.value("nodad", false));
      }
    }
    return out;
  }
  /** The kernel's own entry for addr on ifname in ns, as `ip -j neigh` shows it; null if none. */
  json kernelNeighbour(const std::string& ns, const std::string& ifname, const std::string& addr) {
    const json j = ipJson(ns, {"neigh", "show", addr, "dev", ifname});
    return j.empty() ? json() : j.at(0);
  }

  HostInterface& open() {
    hi_ = std::make_unique<HostInterface>(if_a_);
    return *hi_;
  }
  /** HostInterface up, with a's addresses; events read. */
  HostInterface& openConfigured() {
    HostInterface& hi = open();
    hi.setUp();
    hi.ensureAddresses({prefix("198.51.100.2/24"), prefix("2001:db8:b::2/64")});
    hi.processEvents();
    return hi;
  }
  /**
   * Wait until a's link-local address has finished DAD. The kernel sends a Neighbour Solicitation
   * only from a link-local address that is not tentative (ndisc_send_ns -> ipv6_get_lladdr), and
   * DAD takes a second or two after the link comes up: a solicitation due meanwhile is not sent,
   * though it counts as one of the mcast_solicit tries. A daemon's interface has long been up; a
   * test's has not. Returns the milliseconds waited.
   */
  long waitForLinkLocal() {
    const auto t0 = Clock::now();
    while (msSince(t0) < 5000) {
      for (const json& link : ipJson(ns_a_, {"-6", "addr", "show", "dev", if_a_})) {
        for (const json& a : link.value("addr_info", json::array())) {
          if (a.value("scope", "") == "link" && !a.value("tentative", false)) {
            return msSince(t0);
          }
        }
      }
      ::usleep(50 * 1000);
    }
    ADD_FAILURE() << "a's link-local address is still tentative";
    return -1;
  }

  /**
   * Poll the event fd and process events until done() holds or timeout_ms pass; every reported
   * address goes into reported. Returns the elapsed milliseconds, or -1 on time-out.
   */
  long waitFor(const std::function<bool()>& done, int timeout_ms, std::set<IpAddress>& reported,
               const std::function<void()>& each = nullptr) {
    const auto t0 = Clock::now();
    for (;;) {
      for (const IpAddress& a : hi_->processEvents()) {
        reported.insert(a);
      }
      if (each) {
        each();
      }
      if (done()) {
        return msSince(t0);
      }
      const long left = timeout_ms - msSince(t0);
      if (left <= 0) {
        return -1;
      }
      pollfd p{hi_->eventFd(), POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(std::min(left, 50L)));
    }
  }

  /** An AF_PACKET socket receiving everything on b's veth end (made in b, then back to a). */
  int openCapture() {
    if (!enterNamespaceFile("/run/netns/" + ns_b_)) {
      ADD_FAILURE() << "cannot enter " << ns_b_;
      return -1;
    }
    const int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL));
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = static_cast<int>(::if_nametoindex(if_b_.c_str()));
    const bool bound = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&sll), sizeof(sll)) == 0;
    const int saved = errno;
    if (!enterNamespaceFile("/run/netns/" + ns_a_)) {
      ADD_FAILURE() << "cannot return to " << ns_a_;
    }
    if (fd >= 0) {
      capture_fds_.push_back(fd);
    }
    if (!bound) {
      ADD_FAILURE() << "capture socket in " << ns_b_ << ": " << std::strerror(saved);
      return -1;
    }
    return fd;
  }
  /** The first received (not sent) frame matching want within timeout_ms. */
  std::optional<Frame> capture(int fd, const std::function<bool(const Frame&)>& want,
                               int timeout_ms) {
    const auto t0 = Clock::now();
    while (msSince(t0) < timeout_ms) {
      pollfd p{fd, POLLIN, 0};
      ::poll(&p, 1, 50);
      Frame f(2048);
      sockaddr_ll from{};
      socklen_t fromlen = sizeof(from);
      const ssize_t n =
          ::recvfrom(fd, f.data(), f.size(), 0, reinterpret_cast<sockaddr*>(&from), &fromlen);
      if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING) {
        continue;
      }
      f.resize(static_cast<size_t>(n));
      if (want(f)) {
        return f;
      }
    }
    return std::nullopt;
  }
  /** Wait until b's kernel entry for addr has lladdr want (its state machine runs in softirq). */
  bool peerLearned(const std::string& addr, const MacAddress& want) {
    const auto t0 = Clock::now();
    while (msSince(t0) < 1000) {
      const json n = kernelNeighbour(ns_b_, if_b_, addr);
      if (!n.is_null() && n.contains("lladdr") && mac(n["lladdr"].get<std::string>()) == want) {
        return true;
      }
      ::usleep(20 * 1000);
    }
    return false;
  }

  testsupport::TempDir tmp_{"sluice-hi"};
  std::string ns_a_, ns_b_, if_a_, if_b_;
  MacAddress mac_b_;
  bool created_a_ = false, created_b_ = false, in_a_ = false;
  int orig_ns_ = -1;
  std::vector<int> capture_fds_;
  std::unique_ptr<HostInterface> hi_;
};

TEST_F(HostInterfaceTest, RejectsMissingAndNonEthernetInterfaces) {
  try {
    HostInterface hi("nosuch0");
    FAIL() << "opened an interface that does not exist";
  } catch (const HostInterfaceError& e) {
    EXPECT_NE(std::string(e.what()).find("nosuch0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no such interface"), std::string::npos) << e.what();
  }
  try {
    HostInterface hi("lo");
    FAIL() << "opened the loopback interface";
  } catch (const HostInterfaceError& e) {
    EXPECT_NE(std::string(e.what()).find("host interface lo: not an Ethernet interface"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(HostInterfaceTest, OpensTheInterfaceAndBringsItUp) {
  HostInterface& hi = open();
  EXPECT_EQ(hi.name(), if_a_);
  EXPECT_EQ(hi.ifindex(), static_cast<int>(::if_nametoindex(if_a_.c_str())));
  EXPECT_EQ(hi.mac(), linkMac(ns_a_, if_a_));
  ASSERT_GE(hi.eventFd(), 0);
  EXPECT_NE(::fcntl(hi.eventFd(), F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_NE(::fcntl(hi.eventFd(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_TRUE(hi.processEvents().empty());  // never blocks, even with nothing to read

  hi.setUp();
  const json link = ipJson(ns_a_, {"link", "show", "dev", if_a_});
  ASSERT_FALSE(link.empty());
  const auto flags = link.at(0).at("flags").get<std::vector<std::string>>();
  EXPECT_NE(std::find(flags.begin(), flags.end(), "UP"), flags.end()) << link.dump();
  hi.setUp();  // and again: nothing to do, no error
}

TEST_F(HostInterfaceTest, EnsureAddressesIsIdempotentAndTheDestructorRemovesOnlyItsOwn) {
  ASSERT_TRUE(runIn(ns_a_, {"addr", "add", "198.51.100.9/24", "dev", if_a_}));  // not ours
  HostInterface& hi = open();
  const std::vector<IpPrefix> want = {prefix("198.51.100.2/24"), prefix("2001:db8:b::2/64"),
                                      prefix("198.51.100.9/24")};
  hi.ensureAddresses(want);
  hi.ensureAddresses(want);

  const auto count = [&](const std::string& local, int len) {
    const auto all = addresses(ns_a_, if_a_);
    return std::count_if(all.begin(), all.end(), [&](const auto& a) {
      return std::get<0>(a) == local && std::get<1>(a) == len;
    });
  };
  EXPECT_EQ(count("198.51.100.2", 24), 1);
  EXPECT_EQ(count("2001:db8:b::2", 64), 1);
  EXPECT_EQ(count("198.51.100.9", 24), 1);
  for (const auto& [local, len, nodad] : addresses(ns_a_, if_a_)) {
    if (local == "2001:db8:b::2") {
      EXPECT_TRUE(nodad) << "IPv6 address added without IFA_F_NODAD";
    }
  }

  try {
    hi.ensureAddresses({prefix("198.51.100.2/16")});
    FAIL() << "took 198.51.100.2/16 for the configured 198.51.100.2/24";
  } catch (const HostInterfaceError& e) {
    EXPECT_NE(std::string(e.what()).find(if_a_), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("already configured as /24"), std::string::npos)
        << e.what();
  }

  hi_.reset();
  EXPECT_EQ(count("198.51.100.2", 24), 0);
  EXPECT_EQ(count("2001:db8:b::2", 64), 0);
  EXPECT_EQ(count("198.51.100.9", 24), 1) << "the destructor removed an address it did not add";
}

// The host's own answers to off-link peers (a client's ping or SSH through the router) need a
// route: a default route via the gateway, of each family, that leaves an operator's alone.
TEST_F(HostInterfaceTest, DefaultRoutesViaTheGatewaysAreAddedOnceAndRemovedByTheDestructor) {
  HostInterface& hi = openConfigured();
  // b is the router: it owns an off-link address of each family on its loopback.
  ASSERT_TRUE(runIn(ns_b_, {"link", "set", "lo", "up"}));
  ASSERT_TRUE(runIn(ns_b_, {"addr", "add", "203.0.113.9/32", "dev", "lo"}));
  ASSERT_TRUE(runIn(ns_b_, {"addr", "add", "2001:db8:ff::9/128", "dev", "lo"}));
  auto defaults = [&](const char* family) {
    std::vector<std::pair<std::string, int>> out;  // (gateway, metric)
    for (const json& r : ipJson(ns_a_, {family, "route", "show", "default"})) {
      out.emplace_back(r.value("gateway", ""), r.value("metric", 0));
    }
    return out;
  };
  // A TCP connection to a closed port of b's: refused (b's RST came back) when a's kernel has a
  // route both ways, "network unreachable" at once when it has none.
  auto connectTo = [&](const IpAddress& to) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (to.isV4()) {
      auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
      sin->sin_family = AF_INET;
      sin->sin_port = htons(9);
      std::memcpy(&sin->sin_addr, to.bytes.data(), 4);
      len = sizeof(sockaddr_in);
    } else {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
      sin6->sin6_family = AF_INET6;
      sin6->sin6_port = htons(9);
      std::memcpy(&sin6->sin6_addr, to.bytes.data(), 16);
      len = sizeof(sockaddr_in6);
    }
    const int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      return std::string("socket: ") + std::strerror(errno);
    }
    int err = 0;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        err = ::poll(&p, 1, 2000) == 1 ? 0 : ETIMEDOUT;
        socklen_t el = sizeof(err);
        if (err == 0) {
          ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        }
      }
    }
    ::close(fd);
    return std::string(err == 0 ? "connected" : std::strerror(err));
  };
  const std::string refused = std::strerror(ECONNREFUSED);
  EXPECT_EQ(connectTo(ip("203.0.113.9")), std::strerror(ENETUNREACH)) << "no route yet";

  hi.ensureDefaultRoutes({ip("198.51.100.3"), ip("2001:db8:b::3")});
  hi.ensureDefaultRoutes({ip("198.51.100.3"), ip("2001:db8:b::3")});  // again: no change
  const int metric = static_cast<int>(HostInterface::kDefaultRouteMetric);
  using Routes = std::vector<std::pair<std::string, int>>;
  EXPECT_EQ(defaults("-4"), (Routes{{"198.51.100.3", metric}}));
  EXPECT_EQ(defaults("-6"), (Routes{{"2001:db8:b::3", metric}}));
  EXPECT_EQ(connectTo(ip("203.0.113.9")), refused);
  EXPECT_EQ(connectTo(ip("2001:db8:ff::9")), refused);

  try {
    hi.ensureDefaultRoutes({ip("10.77.0.1")});
    FAIL() << "added a default route via a gateway that is not on-link";
  } catch (const HostInterfaceError& e) {
    std::printf("[ message  ] %s\n", e.what());
    EXPECT_NE(std::string(e.what()).find("cannot add a default route via 10.77.0.1: "),
              std::string::npos)
        << e.what();
  }

  hi_.reset();
  EXPECT_TRUE(defaults("-4").empty());
  EXPECT_TRUE(defaults("-6").empty());
}

TEST_F(HostInterfaceTest, AnOperatorsDefaultRouteIsLeftInPlace) {
  // An operator's address keeps the subnet, and so the route, when Sluice's goes.
  ASSERT_TRUE(runIn(ns_a_, {"addr", "add", "198.51.100.9/24", "dev", if_a_}));
  HostInterface& hi = openConfigured();
  const std::string metric = std::to_string(HostInterface::kDefaultRouteMetric);
  // The same route, made by someone else: it is not the destructor's to remove.
  ASSERT_TRUE(runIn(ns_a_, {"route", "add", "default", "via", "198.51.100.3", "dev", if_a_,
                            "metric", metric}));
  hi.ensureDefaultRoutes({ip("198.51.100.3")});
  hi_.reset();
  const json left = ipJson(ns_a_, {"-4", "route", "show", "default"});
  ASSERT_EQ(left.size(), 1u) << left.dump();
  EXPECT_EQ(left.at(0).value("gateway", ""), "198.51.100.3");
}

TEST_F(HostInterfaceTest, ErrorsCarryTheKernelsReason) {
  ASSERT_TRUE(run({"netns", "exec", ns_a_, "sysctl", "-qw",
                   fmt::format("net.ipv6.conf.{}.disable_ipv6=1", if_a_)}));
  HostInterface& hi = open();
  try {
    hi.ensureAddresses({prefix("2001:db8:b::2/64")});
    FAIL() << "added an IPv6 address with IPv6 disabled";
  } catch (const HostInterfaceError& e) {
    std::printf("[ message  ] %s\n", e.what());
    EXPECT_NE(std::string(e.what()).find("cannot add 2001:db8:b::2/64: "), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("(kernel: "), std::string::npos) << e.what();
  }
  try {
    hi.resolve(ip("2001:db8:b::3"));
    FAIL() << "resolved an IPv6 address with IPv6 disabled";
  } catch (const HostInterfaceError& e) {
    std::printf("[ message  ] %s\n", e.what());
    EXPECT_NE(std::string(e.what()).find("cannot resolve 2001:db8:b::3: "), std::string::npos)
        << e.what();
  }
}

TEST_F(HostInterfaceTest, ResolvesBothFamiliesToThePeerMac) {
  HostInterface& hi = openConfigured();
  std::printf("[   time   ] link up to a usable link-local address: %ld ms\n", waitForLinkLocal());
  const IpAddress b4 = ip("198.51.100.3");
  const IpAddress b6 = ip("2001:db8:b::3");
  EXPECT_EQ(hi.neighbour(b4).state, "none");
  EXPECT_FALSE(hi.neighbour(b4).mac);

  const auto t0 = Clock::now();
  hi.resolve(b4);
  hi.resolve(b6);
  std::set<IpAddress> reported;
  const auto resolved = [&](const IpAddress& a) {
    const HostInterface::Neighbour n = hi.neighbour(a);
    return n.mac == mac_b_ && n.state == "reachable";
  };
  const long ms = waitFor([&] { return resolved(b4) && resolved(b6); }, 1000, reported);
  ASSERT_GE(ms, 0) << "v4: " << hi.neighbour(b4).state << ", v6: " << hi.neighbour(b6).state;
  std::printf("[   time   ] resolve() to reachable, both families: %ld ms\n", msSince(t0));
  EXPECT_TRUE(reported.contains(b4));
  EXPECT_TRUE(reported.contains(b6));

  // The kernel agrees, and the cache holds nothing else of this interface's.
  const json k = kernelNeighbour(ns_a_, if_a_, "198.51.100.3");
  ASSERT_FALSE(k.is_null());
  EXPECT_EQ(mac(k.at("lladdr").get<std::string>()), mac_b_);
  EXPECT_EQ(hi.neighbour(ip("198.51.100.4")).state, "none");

  // A second resolve() of a reachable entry re-validates it (one unicast probe) and keeps the MAC.
  hi.resolve(b4);
  EXPECT_EQ(hi.neighbour(b4).mac, mac_b_);
  EXPECT_GE(waitFor([&] { return resolved(b4); }, 2000, reported), 0) << hi.neighbour(b4).state;
}

TEST_F(HostInterfaceTest, AnAddressNobodyHasEndsFailed) {
  HostInterface& hi = openConfigured();
  const IpAddress x4 = ip("198.51.100.77");
  const IpAddress x6 = ip("2001:db8:b::77");
  ASSERT_TRUE(kernelNeighbour(ns_a_, if_a_, "198.51.100.77").is_null());

  const auto t0 = Clock::now();
  hi.resolve(x4);
  hi.resolve(x6);
  // NTF_USE created the kernel's entry for an address it had none for, and started resolving.
  EXPECT_EQ(hi.neighbour(x4).state, "incomplete");
  EXPECT_EQ(hi.neighbour(x6).state, "incomplete");
  const json k = kernelNeighbour(ns_a_, if_a_, "198.51.100.77");
  ASSERT_FALSE(k.is_null()) << "NTF_USE did not create an entry";
  EXPECT_EQ(k.at("state").at(0).get<std::string>(), "INCOMPLETE");

  std::set<IpAddress> reported;
  const long ms = waitFor(
      [&] { return hi.neighbour(x4).state == "failed" && hi.neighbour(x6).state == "failed"; },
      6000, reported);
  ASSERT_GE(ms, 0) << "v4: " << hi.neighbour(x4).state << ", v6: " << hi.neighbour(x6).state;
  std::printf("[   time   ] resolve() to failed, both families: %ld ms\n", msSince(t0));
  EXPECT_FALSE(hi.neighbour(x4).mac);
  EXPECT_FALSE(hi.neighbour(x6).mac);
  EXPECT_TRUE(reported.contains(x4));
  EXPECT_TRUE(reported.contains(x6));

  // Asking again starts a new round (FAILED -> INCOMPLETE), which fails and is reported again.
  hi.resolve(x4);
  EXPECT_EQ(hi.neighbour(x4).state, "incomplete");
}

TEST_F(HostInterfaceTest, LoadsTheTableAndLeavesPermanentEntriesAlone) {
  ASSERT_TRUE(runIn(ns_a_, {"neigh", "add", "198.51.100.60", "lladdr", "02:00:00:00:00:60", "dev",
                            if_a_, "nud", "permanent"}));
  HostInterface& hi = open();
  const IpAddress p = ip("198.51.100.60");
  EXPECT_EQ(hi.neighbour(p).state, "permanent");
  EXPECT_EQ(hi.neighbour(p).mac, mac("02:00:00:00:00:60"));
  const std::vector<IpAddress> first = hi.processEvents();  // the initial load is reported
  EXPECT_NE(std::find(first.begin(), first.end(), p), first.end());

  // NTF_USE would turn it into a dynamic entry and try to resolve it (seen: PERMANENT ->
  // INCOMPLETE). resolve() must not.
  hi.resolve(p);
  const json k = kernelNeighbour(ns_a_, if_a_, "198.51.100.60");
  ASSERT_FALSE(k.is_null());
  EXPECT_EQ(k.at("state").at(0).get<std::string>(), "PERMANENT") << k.dump();

  // Entries made or removed behind our back arrive as events.
  ASSERT_TRUE(runIn(ns_a_, {"neigh", "del", "198.51.100.60", "dev", if_a_}));
  std::set<IpAddress> reported;
  EXPECT_GE(waitFor([&] { return hi.neighbour(p).state == "none"; }, 1000, reported), 0);
  EXPECT_TRUE(reported.contains(p));
}

TEST_F(HostInterfaceTest, AMacChangeIsReportedAfterAReResolve) {
  HostInterface& hi = openConfigured();
  waitForLinkLocal();
  const IpAddress b4 = ip("198.51.100.3");
  const IpAddress b6 = ip("2001:db8:b::3");
  hi.resolve(b4);
  hi.resolve(b6);
  std::set<IpAddress> reported;
  ASSERT_GE(
      waitFor([&] { return hi.neighbour(b4).mac == mac_b_ && hi.neighbour(b6).mac == mac_b_; },
              1000, reported),
      0);

  const MacAddress moved = mac("02:00:5e:10:00:01");
  ASSERT_TRUE(runIn(ns_b_, {"link", "set", "dev", if_b_, "address", moved.str()}));
  reported.clear();
  const auto t0 = Clock::now();
  // What the daemon does: resolve() its backends now and then, and again when one failed. The
  // first one probes the old MAC by unicast; b no longer answers there, so the entry fails, and
  // the next resolve() broadcasts and learns the new MAC.
  hi.resolve(b4);
  hi.resolve(b6);
  const auto reResolveFailed = [&] {
    for (const IpAddress& a : {b4, b6}) {
      if (hi.neighbour(a).state == "failed") {
        hi.resolve(a);
      }
    }
  };
  const long ms =
      waitFor([&] { return hi.neighbour(b4).mac == moved && hi.neighbour(b6).mac == moved; }, 10000,
              reported, reResolveFailed);
  ASSERT_GE(ms, 0) << "v4: " << hi.neighbour(b4).state << ", v6: " << hi.neighbour(b6).state;
  std::printf("[   time   ] MAC change to new MAC in the cache, both families: %ld ms\n",
              msSince(t0));
  EXPECT_TRUE(reported.contains(b4));
  EXPECT_TRUE(reported.contains(b6));
}

TEST_F(HostInterfaceTest, AnnounceIpv4SendsAnRfc5227Announcement) {
  HostInterface& hi = openConfigured();
  const int cap = openCapture();
  ASSERT_GE(cap, 0);
  // b learns from a gratuitous ARP only for an address it has an entry for (arp_accept=0).
  ASSERT_TRUE(runIn(ns_b_, {"neigh", "add", "203.0.113.10", "lladdr", "02:00:00:00:00:99", "dev",
                            if_b_, "nud", "stale"}));
  const IpAddress vip = ip("203.0.113.10");
  const MacAddress a_mac = hi.mac();
  hi.announce(vip);
  hi.announce(ip("203.0.113.11"));

  const std::optional<Frame> f = capture(
      cap,
      [&](const Frame& fr) {
        return fr.size() >= 42 && fr[12] == 0x08 && fr[13] == 0x06 &&
               std::equal(vip.bytes.begin(), vip.bytes.begin() + 4, fr.begin() + 28);
      },
      1000);
  ASSERT_TRUE(f) << "no ARP announcement for 203.0.113.10 reached " << ns_b_;
  const Frame& fr = *f;
  EXPECT_EQ(fr.size(), 60u) << "not padded to the Ethernet minimum";
  EXPECT_TRUE(std::all_of(fr.begin(), fr.begin() + 6, [](uint8_t b) { return b == 0xff; }));
  EXPECT_TRUE(std::equal(a_mac.bytes.begin(), a_mac.bytes.end(), fr.begin() + 6));
  const uint8_t* arp = fr.data() + 14;
  EXPECT_EQ(arp[0] << 8 | arp[1], 1);       // htype Ethernet
  EXPECT_EQ(arp[2] << 8 | arp[3], 0x0800);  // ptype IPv4
  EXPECT_EQ(arp[4], 6);
  EXPECT_EQ(arp[5], 4);
  EXPECT_EQ(arp[6] << 8 | arp[7], 1);  // request (RFC 5227 section 3)
  EXPECT_TRUE(std::equal(a_mac.bytes.begin(), a_mac.bytes.end(), arp + 8));        // sha
  EXPECT_TRUE(std::equal(vip.bytes.begin(), vip.bytes.begin() + 4, arp + 14));     // spa
  EXPECT_TRUE(std::all_of(arp + 18, arp + 24, [](uint8_t b) { return b == 0; }));  // tha
  EXPECT_TRUE(std::equal(vip.bytes.begin(), vip.bytes.begin() + 4, arp + 24));     // tpa
  EXPECT_TRUE(std::all_of(fr.begin() + 42, fr.end(), [](uint8_t b) { return b == 0; }));

  EXPECT_TRUE(peerLearned("203.0.113.10", a_mac)) << kernelNeighbour(ns_b_, if_b_, "203.0.113.10");
  EXPECT_TRUE(kernelNeighbour(ns_b_, if_b_, "203.0.113.11").is_null())
      << "b created an entry from a gratuitous ARP";
}

TEST_F(HostInterfaceTest, AnnounceIpv6SendsAnUnsolicitedNeighbourAdvertisement) {
  HostInterface& hi = openConfigured();
  const int cap = openCapture();
  ASSERT_GE(cap, 0);
  ASSERT_TRUE(runIn(ns_b_, {"neigh", "add", "2001:db8:f::10", "lladdr", "02:00:00:00:00:99", "dev",
                            if_b_, "nud", "stale"}));
  const IpAddress vip = ip("2001:db8:f::10");
  const MacAddress a_mac = hi.mac();
  hi.announce(vip);
  hi.announce(ip("2001:db8:f::11"));

  const std::optional<Frame> f = capture(
      cap,
      [&](const Frame& fr) {
        return fr.size() >= 14 + 40 + 24 && fr[12] == 0x86 && fr[13] == 0xdd && fr[20] == 58 &&
               fr[54] == 136 && std::equal(vip.bytes.begin(), vip.bytes.end(), fr.begin() + 62);
      },
      1000);
  ASSERT_TRUE(f) << "no Neighbour Advertisement for 2001:db8:f::10 reached " << ns_b_;
  const Frame& fr = *f;
  ASSERT_EQ(fr.size(), 14u + 40 + 32);
  const std::vector<uint8_t> all_nodes_mac = {0x33, 0x33, 0, 0, 0, 1};
  EXPECT_TRUE(std::equal(all_nodes_mac.begin(), all_nodes_mac.end(), fr.begin()));
  EXPECT_TRUE(std::equal(a_mac.bytes.begin(), a_mac.bytes.end(), fr.begin() + 6));
  const uint8_t* ip6 = fr.data() + 14;
  EXPECT_EQ(ip6[0] >> 4, 6);
  EXPECT_EQ(ip6[4] << 8 | ip6[5], 32);  // payload length
  EXPECT_EQ(ip6[7], 255);               // hop limit (RFC 4861 section 7.1.2)
  EXPECT_TRUE(std::equal(vip.bytes.begin(), vip.bytes.end(), ip6 + 8));
  const IpAddress ff02_1 = ip("ff02::1");
  EXPECT_TRUE(std::equal(ff02_1.bytes.begin(), ff02_1.bytes.end(), ip6 + 24));
  const uint8_t* na = ip6 + 40;
  EXPECT_EQ(na[0], 136);
  EXPECT_EQ(na[1], 0);
  EXPECT_EQ(na[4], 0x20) << "want R=0 S=0 O=1";
  EXPECT_TRUE(std::all_of(na + 5, na + 8, [](uint8_t b) { return b == 0; }));
  EXPECT_TRUE(std::equal(vip.bytes.begin(), vip.bytes.end(), na + 8));
  EXPECT_EQ(na[24], 2);  // Target Link-Layer Address
  EXPECT_EQ(na[25], 1);
  EXPECT_TRUE(std::equal(a_mac.bytes.begin(), a_mac.bytes.end(), na + 26));
  // The checksum verifies: the sum over pseudo-header and message, checksum included, is 0xffff.
  uint32_t sum = onesSum(ip6 + 8, 32, 0);
  sum += 32 + 58;
  EXPECT_EQ(onesSum(na, 32, sum), 0xffff);

  // b's kernel accepted it (hop limit, code, options; icmpv6_rcv checks the checksum unless the
  // device vouched for it) and, having an entry, took the new MAC. It made none for the other.
  EXPECT_TRUE(peerLearned("2001:db8:f::10", a_mac))
      << kernelNeighbour(ns_b_, if_b_, "2001:db8:f::10");
  EXPECT_TRUE(kernelNeighbour(ns_b_, if_b_, "2001:db8:f::11").is_null());
}

TEST_F(HostInterfaceTest, AnnounceFailsOnADownLink) {
  HostInterface& hi = open();  // not set up: the veth end is down
  try {
    hi.announce(ip("203.0.113.10"));
    FAIL() << "sent on a down link";
  } catch (const HostInterfaceError& e) {
    std::printf("[ message  ] %s\n", e.what());
    EXPECT_NE(std::string(e.what()).find(if_a_), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("203.0.113.10"), std::string::npos) << e.what();
  }
}

TEST_F(HostInterfaceTest, ForeignAndMalformedMessagesAreSkipped) {
  HostInterface& hi = openConfigured();
  sockaddr_nl target{};
  socklen_t len = sizeof(target);
  ASSERT_EQ(::getsockname(hi.eventFd(), reinterpret_cast<sockaddr*>(&target), &len), 0);
  const int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  ASSERT_GE(fd, 0);
  sockaddr_nl to{};
  to.nl_family = AF_NETLINK;
  to.nl_pid = target.nl_pid;  // unicast to the event socket
  const auto send = [&](const std::vector<uint8_t>& bytes) {
    EXPECT_EQ(
        ::sendto(fd, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)),
        static_cast<ssize_t>(bytes.size()))
        << std::strerror(errno);
  };

  // A well-formed RTM_NEWNEIGH claiming 198.51.100.99 is at 02:00:00:00:00:66: not from the kernel.
  std::vector<uint8_t> forged(NLMSG_SPACE(sizeof(ndmsg)) + RTA_SPACE(4) + RTA_SPACE(6));
  auto* h = reinterpret_cast<nlmsghdr*>(forged.data());
  h->nlmsg_len = static_cast<uint32_t>(forged.size());
  h->nlmsg_type = RTM_NEWNEIGH;
  auto* ndm = reinterpret_cast<ndmsg*>(NLMSG_DATA(h));
  ndm->ndm_family = AF_INET;
  ndm->ndm_ifindex = hi.ifindex();
  ndm->ndm_state = NUD_REACHABLE;
  auto* dst = reinterpret_cast<rtattr*>(forged.data() + NLMSG_SPACE(sizeof(ndmsg)));
  dst->rta_type = NDA_DST;
  dst->rta_len = RTA_LENGTH(4);
  const IpAddress forged_ip = ip("198.51.100.99");
  std::memcpy(RTA_DATA(dst), forged_ip.bytes.data(), 4);
  auto* ll = reinterpret_cast<rtattr*>(forged.data() + NLMSG_SPACE(sizeof(ndmsg)) + RTA_SPACE(4));
  ll->rta_type = NDA_LLADDR;
  ll->rta_len = RTA_LENGTH(6);
  std::memcpy(RTA_DATA(ll), mac("02:00:00:00:00:66").bytes.data(), 6);
  send(forged);
  send({0xde, 0xad, 0xbe, 0xef, 1, 2, 3});  // shorter than a header (the kernel refuses empty
                                            // datagrams: ENODATA)
  std::vector<uint8_t> truncated = forged;  // header says more than there is
  reinterpret_cast<nlmsghdr*>(truncated.data())->nlmsg_len = 4096;
  send(truncated);
  ::close(fd);

  std::vector<IpAddress> changed;
  EXPECT_NO_THROW(changed = hi.processEvents());
  EXPECT_TRUE(changed.empty());
  EXPECT_EQ(hi.neighbour(forged_ip).state, "none");

  // And real events still get through behind them.
  ASSERT_TRUE(runIn(ns_a_, {"neigh", "add", "198.51.100.98", "lladdr", "02:00:00:00:00:98", "dev",
                            if_a_, "nud", "permanent"}));
  std::set<IpAddress> reported;
  EXPECT_GE(waitFor([&] { return hi.neighbour(ip("198.51.100.98")).state == "permanent"; }, 1000,
                    reported),
            0);
  EXPECT_TRUE(reported.contains(ip("198.51.100.98")));
}

TEST_F(HostInterfaceTest, AnEventOverrunReloadsTheTable) {
  HostInterface& hi = openConfigured();
  // Shrink the event socket's buffer to the kernel's minimum (a few messages), then make far more
  // events than fit before reading any: the kernel drops some and reports ENOBUFS.
  const int tiny = 1;
  ASSERT_EQ(::setsockopt(hi.eventFd(), SOL_SOCKET, SO_RCVBUF, &tiny, sizeof(tiny)), 0);
  constexpr int kEntries = 200;
  std::string batch;
  for (int i = 0; i < kEntries; ++i) {
    batch +=
        fmt::format("neigh add 198.51.100.{} lladdr 02:00:00:00:01:{:02x} dev {} nud permanent\n",
                    20 + i, i, if_a_);
  }
  testsupport::writeFile(tmp_.file("batch"), batch);
  ASSERT_TRUE(runIn(ns_a_, {"-batch", tmp_.file("batch")}));

  const std::vector<IpAddress> changed = hi.processEvents();
  const std::set<IpAddress> reported(changed.begin(), changed.end());
  int cached = 0;
  for (int i = 0; i < kEntries; ++i) {
    const IpAddress a = ip(fmt::format("198.51.100.{}", 20 + i));
    cached += hi.neighbour(a).state == "permanent" ? 1 : 0;
    EXPECT_TRUE(reported.contains(a)) << a.str();
  }
  EXPECT_EQ(cached, kEntries);
}

}  // namespace
