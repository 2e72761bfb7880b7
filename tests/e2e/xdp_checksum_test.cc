// Partial checksums end to end: real TCP connections and UDP exchanges from a client namespace
// to NAT services of `sluiced run` on the XDP path (generic mode, on a veth), through a router
// namespace that completes the checksums (its egress veths have tx checksum offload off, so
// skb_checksum_help finishes them, as a NIC would), to a backend namespace.
//
//            client ──── router ──── backend
//                          │  (the backend's traffic is policy-routed to Sluice)
//                        sluice (XDP, one-armed)
//
// The client's and the backend's kernels hand their veths CHECKSUM_PARTIAL skbs (only the folded
// pseudo-header sum in the field); the router passes them on as they are toward Sluice (offload
// on), Sluice rewrites the addresses (NAT) and sends them back with XDP_TX, still partial, and
// the router completes them on the way out to the backend or the client. A NAT rewrite that
// updated the field as if it were complete made every such packet arrive with a bad checksum
// (0 of 30 requests answered); it must keep the field partial (bpf/lib/lb.h, lb_rewrite_l3l4).
// The namespaces are removed at the end whatever happens.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/net.h"
#include "control/config.h"
#include "tests/support/fixtures.h"
#include "tests/support/netns.h"
#include "tests/support/run.h"

namespace {

using json = nlohmann::json;
using testsupport::ip;
using testsupport::mac;
using testsupport::XdpDaemon;

const testsupport::Programs kPrograms{SLUICED_PATH, SLUICECTL_PATH};

std::string capture(const std::string& cmd) {
  std::string out;
  if (FILE* p = ::popen((cmd + " 2>&1").c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) {
      out.append(buf, n);
    }
    ::pclose(p);
  }
  return out;
}

// The router's end toward Sluice: the next hop of the backends and of NAT replies.
const sluice::MacAddress kRouterLbMac = mac("02:5e:00:00:01:01");
const sluice::MacAddress kLbMac = mac("02:5e:00:00:01:02");

constexpr uint16_t kTcpPort = 8080;  // the backend listens here (NAT)
constexpr uint16_t kUdpPort = 5353;

/** One family's addresses: client, router's three ends, Sluice, backend, VIP. */
struct Plan {
  const char* client;       // on the client link, with the router's client end
  const char* router_c;
  const char* router_l;     // on Sluice's link
  const char* lb;
  const char* router_b;     // on the backend link
  const char* backend;
  const char* vip;
  int prefix;
};

const Plan kPlan4 = {"10.77.0.2", "10.77.0.1", "10.77.1.1", "10.77.1.2",
                     "10.77.2.1", "10.77.2.2", "192.0.2.80", 24};
const Plan kPlan6 = {"fd77:0::2", "fd77:0::1", "fd77:1::1", "fd77:1::2",
                     "fd77:2::1", "fd77:2::2", "2001:db8:77::80", 64};

/** Four namespaces, three veth pairs, routes and offloads; removed on destruction. */
class Lab {
 public:
  Lab() : netns_("sluice-csum", {"c", "r", "l", "b"}) {
    const int tag = ::getpid() % 100000;
    c0_ = fmt::format("scc{}", tag);   // client
    rc_ = fmt::format("scrc{}", tag);  // router, toward the client
    rl_ = fmt::format("scrl{}", tag);  // router, toward Sluice
    l0_ = fmt::format("scl{}", tag);   // Sluice
    rb_ = fmt::format("scrb{}", tag);  // router, toward the backend
    b0_ = fmt::format("scb{}", tag);   // backend
    ok_ = setUp();
  }
  bool ok() const { return ok_; }
  const std::string& error() const { return netns_.error(); }
  const std::string& ns(const char* role) const { return netns_.ns(role); }
  const std::string& lbIf() const { return l0_; }
  const std::string& routerToClientIf() const { return rc_; }

 private:
  bool in(const char* role, const std::string& cmd) { return netns_.in(role, cmd); }

  bool setUp() {
    if (!netns_.create() || !netns_.veth("c", c0_, "r", rc_) || !netns_.veth("l", l0_, "r", rl_) ||
        !netns_.veth("b", b0_, "r", rb_) || !netns_.setMac("r", rl_, kRouterLbMac) ||
        !netns_.setMac("l", l0_, kLbMac)) {
      return false;
    }
    for (const auto& [role, ifname] :
         {std::pair{"c", c0_}, {"r", rc_}, {"r", rl_}, {"r", rb_}, {"l", l0_}, {"b", b0_}}) {
      if (!netns_.up(role, ifname) || !netns_.up(role, "lo")) {
        return false;
      }
    }
    // The router forwards, and takes packets whatever their reverse path (the backend's come to
    // it from Sluice's link).
    for (const char* k : {"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                          "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"}) {
      if (!in("r", std::string("sysctl -qw ") + k)) {
        return false;
      }
    }
    for (const std::string& i : {rc_, rl_, rb_}) {
      in("r", fmt::format("sysctl -qw net.ipv4.conf.{}.rp_filter=0", i));
    }
    for (const Plan* p : {&kPlan4, &kPlan6}) {
      const bool v6 = p == &kPlan6;
      const std::string fam = v6 ? "-6 " : "";
      const std::string nodad = v6 ? " nodad" : "";
      // Sluice's own address goes on its interface through the daemon ([dataplane] addresses).
      if (!in("c", fmt::format("ip addr add {}/{} dev {}{}", p->client, p->prefix, c0_, nodad)) ||
          !in("r", fmt::format("ip addr add {}/{} dev {}{}", p->router_c, p->prefix, rc_, nodad)) ||
          !in("r", fmt::format("ip addr add {}/{} dev {}{}", p->router_l, p->prefix, rl_, nodad)) ||
          !in("r", fmt::format("ip addr add {}/{} dev {}{}", p->router_b, p->prefix, rb_, nodad)) ||
          !in("b", fmt::format("ip addr add {}/{} dev {}{}", p->backend, p->prefix, b0_, nodad)) ||
          !in("c", fmt::format("ip {}route add default via {}", fam, p->router_c)) ||
          !in("b", fmt::format("ip {}route add default via {}", fam, p->router_b)) ||
          // The VIP is behind Sluice; everything from the backend goes through Sluice (NAT).
          !in("r", fmt::format("ip {}route add {}/{} via {} dev {}", fam, p->vip, v6 ? 128 : 32,
                               p->lb, rl_)) ||
          !in("r", fmt::format("ip {}rule add iif {} lookup 100 pref 100", fam, rb_)) ||
          !in("r", fmt::format("ip {}route add default via {} dev {} table 100", fam, p->lb,
                               rl_))) {
        return false;
      }
    }
    // The router completes what it sends to the client and to the backend (tx checksum offload
    // off: skb_checksum_help on transmit, as a NIC would finish it); what it sends to Sluice stays
    // partial (offload on, the veth default). The senders' veths keep their offload on, so their
    // kernels leave TCP and UDP checksums partial.
    return in("r", fmt::format("ethtool -K {} tx off", rc_)) &&
           in("r", fmt::format("ethtool -K {} tx off", rb_));
  }

  testsupport::Namespaces netns_;
  std::string c0_, rc_, rl_, l0_, rb_, b0_;
  bool ok_ = false;
};

sockaddr_storage sockaddrOf(const char* addr, uint16_t port, socklen_t& len) {
  sockaddr_storage ss{};
  if (std::strchr(addr, ':') == nullptr) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    ::inet_pton(AF_INET, addr, &a->sin_addr);
    len = sizeof(sockaddr_in);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    ::inet_pton(AF_INET6, addr, &a->sin6_addr);
    len = sizeof(sockaddr_in6);
  }
  return ss;
}

bool waitFor(int fd, short events, int ms) {
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, ms) == 1 && (p.revents & events) != 0;
}

/**
 * The backend: TCP on kTcpPort answers each connection's request with "pong " + request and
 * closes; UDP on kUdpPort echoes "pong " + datagram. Runs in the backend namespace until stopped.
 */
class Backend {
 public:
  Backend(const std::string& ns, std::string& error) {
    thread_ = std::thread([this, ns, &error] {
      // On CPU 0, as the client: generic XDP on a veth runs on the sending CPU, and one CPU
      // keeps each flow on one per-CPU flow table, as RSS would.
      error = testsupport::enterNamespace(ns);
      if (error.empty()) {
        serve(ready_);
      }
      ready_ = true;
    });
    for (int i = 0; i < 200 && !ready_; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~Backend() {
    stop_ = true;
    thread_.join();
  }

 private:
  void serve(std::atomic<bool>& ready) {
    std::vector<int> tcp;
    std::vector<int> udp;
    for (const Plan* p : {&kPlan4, &kPlan6}) {
      socklen_t len;
      const int family = p == &kPlan4 ? AF_INET : AF_INET6;
      for (int type : {SOCK_STREAM, SOCK_DGRAM}) {
        const int fd = ::socket(family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        const int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        const sockaddr_storage a =
            sockaddrOf(p->backend, type == SOCK_STREAM ? kTcpPort : kUdpPort, len);
        ::bind(fd, reinterpret_cast<const sockaddr*>(&a), len);
        if (type == SOCK_STREAM) {
          ::listen(fd, 64);
          tcp.push_back(fd);
        } else {
          udp.push_back(fd);
        }
      }
    }
    ready = true;
    char buf[2048];
    while (!stop_) {
      std::vector<pollfd> fds;
      for (int fd : tcp) {
        fds.push_back({fd, POLLIN, 0});
      }
      for (int fd : udp) {
        fds.push_back({fd, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), 50) <= 0) {
        continue;
      }
      for (const pollfd& p : fds) {
        if ((p.revents & POLLIN) == 0) {
          continue;
        }
        if (std::find(tcp.begin(), tcp.end(), p.fd) != tcp.end()) {
          const int c = ::accept4(p.fd, nullptr, nullptr, SOCK_CLOEXEC);
          if (c < 0) {
            continue;
          }
          if (waitFor(c, POLLIN, 2000)) {
            const ssize_t n = ::recv(c, buf, sizeof(buf), 0);
            if (n > 0) {
              const std::string answer = "pong " + std::string(buf, static_cast<size_t>(n));
              ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
            }
          }
          ::close(c);
        } else {
          sockaddr_storage from{};
          socklen_t len = sizeof(from);
          const ssize_t n =
              ::recvfrom(p.fd, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len);
          if (n > 0) {
            const std::string answer = "pong " + std::string(buf, static_cast<size_t>(n));
            ::sendto(p.fd, answer.data(), answer.size(), 0, reinterpret_cast<sockaddr*>(&from),
                     len);
          }
        }
      }
    }
    for (int fd : tcp) {
      ::close(fd);
    }
    for (int fd : udp) {
      ::close(fd);
    }
  }

  // A member, not a local of the constructor: the thread sets it again when serve() returns,
  // long after the constructor has (ASan: stack-use-after-scope).
  std::atomic<bool> ready_{false};
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

/** A TCP request to vip:port from the client: whether the answer came back whole. */
bool tcpRequest(const char* vip, uint16_t port, const std::string& request, std::string& why) {
  socklen_t len;
  const sockaddr_storage a = sockaddrOf(vip, port, len);
  const int fd = ::socket(a.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  bool ok = false;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), len) != 0 && errno != EINPROGRESS) {
    why = std::string("connect: ") + std::strerror(errno);
  } else if (!waitFor(fd, POLLOUT, 3000)) {
    why = "connect timed out (the SYN or the SYN-ACK did not arrive)";
  } else {
    int err = 0;
    socklen_t elen = sizeof(err);
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0) {
      why = std::string("connect: ") + std::strerror(err);
    } else if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
               static_cast<ssize_t>(request.size())) {
      why = "send failed";
    } else {
      std::string got;
      char buf[2048];
      while (waitFor(fd, POLLIN, 3000)) {
        const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
          break;
        }
        got.append(buf, static_cast<size_t>(n));
      }
      ok = got == "pong " + request;
      if (!ok) {
        why = fmt::format("answer {:?}", got);
      }
    }
  }
  ::close(fd);
  return ok;
}

/** A UDP request to vip:port from the client: whether its answer came back. */
bool udpRequest(const char* vip, uint16_t port, const std::string& request, std::string& why) {
  socklen_t len;
  const sockaddr_storage a = sockaddrOf(vip, port, len);
  const int fd = ::socket(a.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  bool ok = false;
  for (int attempt = 0; attempt < 2 && !ok; ++attempt) {  // one datagram may meet an ARP wait
    ::sendto(fd, request.data(), request.size(), 0, reinterpret_cast<const sockaddr*>(&a), len);
    char buf[2048];
    if (waitFor(fd, POLLIN, 1000)) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      ok = n > 0 && std::string(buf, static_cast<size_t>(n)) == "pong " + request;
    }
  }
  if (!ok) {
    why = "no answer";
  }
  ::close(fd);
  return ok;
}

/** A counter of /proc/net/snmp ("Tcp" "InCsumErrors") in namespace ns, or -1. */
long snmp(const std::string& ns, const std::string& group, const std::string& field) {
  std::istringstream in(capture(fmt::format("ip netns exec {} cat /proc/net/snmp", ns)));
  std::string names;
  std::string values;
  while (std::getline(in, names) && std::getline(in, values)) {
    if (names.rfind(group + ":", 0) != 0) {
      continue;
    }
    std::istringstream n(names);
    std::istringstream v(values);
    std::string name;
    std::string value;
    while (n >> name && v >> value) {
      if (name == field) {
        return std::stol(value);
      }
    }
  }
  return -1;
}

/** NAT services for TCP and UDP in both families, to the backend; its next hop is the router. */
sluice::Config labConfig() {
  sluice::Config c;
  c.dataplane.mode = sluice::DataplaneMode::kXdp;
  c.dataplane.flow_table_size = 65536;
  c.dataplane.addresses = {*sluice::IpPrefix::parse(fmt::format("{}/24", kPlan4.lb)),
                           *sluice::IpPrefix::parse(fmt::format("{}/64", kPlan6.lb))};
  // NAT replies go to the router learned from the client packets (no gateway configured).
  for (const Plan* p : {&kPlan4, &kPlan6}) {
    for (sluice::Protocol proto : {sluice::Protocol::kTcp, sluice::Protocol::kUdp}) {
      sluice::ServiceConfig s;
      const bool tcp = proto == sluice::Protocol::kTcp;
      s.name = fmt::format("{}{}", tcp ? "tcp" : "udp", p == &kPlan4 ? 4 : 6);
      s.vip = ip(p->vip);
      s.port = tcp ? 80 : 53;
      s.protocol = proto;
      s.forwarding = sluice::Forwarding::kNat;
      sluice::BackendConfig b;
      b.address = ip(p->backend);
      b.port = tcp ? kTcpPort : kUdpPort;
      b.mac = kRouterLbMac;  // off-link: through the router
      s.backends.push_back(b);
      c.services.push_back(s);
    }
  }
  sluice::validateConfig(c, "test");
  return c;
}

std::string whyNot(const Lab& lab) {
  if (std::string why = testsupport::whyNoNamespaces(); !why.empty()) {
    return why;
  }
  if (!testsupport::sh("ethtool --version")) {
    return "ethtool is not installed";
  }
  if (!lab.ok()) {
    return "cannot build the namespaces here: " + lab.error();
  }
  return "";
}

TEST(XdpChecksum, NatConnectionsWorkThroughARouterThatCompletesChecksums) {
  Lab lab;
  if (const std::string why = whyNot(lab); !why.empty()) {
    GTEST_SKIP() << why;
  }
  testsupport::TempDir dir("sluice-xdp-csum");
  XdpDaemon daemon(lab.ns("l"), lab.lbIf(), dir, testsupport::configText(labConfig()), kPrograms);
  ASSERT_TRUE(daemon.up()) << daemon.log();
  // A veth: generic mode, and one flow table for all CPUs (src/sluiced/daemon.cc).
  ASSERT_NE(daemon.log().find("XDP program attached to " + lab.lbIf() +
                              " (generic mode, one shared flow table)"),
            std::string::npos)
      << daemon.log();
  ASSERT_NE(capture(fmt::format("ip netns exec {} ethtool -k {}", lab.ns("r"),
                                lab.routerToClientIf()))
                .find("tx-checksumming: off"),
            std::string::npos)
      << "the router must complete checksums toward the client";
  std::string error;
  Backend backend(lab.ns("b"), error);
  ASSERT_TRUE(error.empty()) << error;
  const long backend_csum_errors = snmp(lab.ns("b"), "Tcp", "InCsumErrors");
  const long client_csum_errors = snmp(lab.ns("c"), "Tcp", "InCsumErrors");

  constexpr int kRequests = 15;  // per family and protocol
  std::map<std::string, int> answered;
  std::map<std::string, std::string> first_failure;
  testsupport::inNamespace(lab.ns("c"), [&] {  // on CPU 0, as the backend
    for (const Plan* p : {&kPlan4, &kPlan6}) {
      const std::string fam = p == &kPlan4 ? "IPv4" : "IPv6";
      for (int i = 0; i < kRequests; ++i) {
        std::string why;
        const std::string request = fmt::format("request {} over {}", i, fam);
        if (tcpRequest(p->vip, 80, request, why)) {
          ++answered[fam + " TCP"];
        } else if (!first_failure.contains(fam + " TCP")) {
          first_failure[fam + " TCP"] = why;
        }
        if (udpRequest(p->vip, 53, request, why)) {
          ++answered[fam + " UDP"];
        } else if (!first_failure.contains(fam + " UDP")) {
          first_failure[fam + " UDP"] = why;
        }
      }
    }
  }, error);
  ASSERT_TRUE(error.empty()) << error;
  for (const char* what : {"IPv4 TCP", "IPv4 UDP", "IPv6 TCP", "IPv6 UDP"}) {
    EXPECT_EQ(answered[what], kRequests)
        << what << ": NAT requests answered through the completing router; first failure: "
        << first_failure[what];
  }
  // Nothing arrived with a bad checksum on either end (the router finished every packet right).
  EXPECT_EQ(snmp(lab.ns("b"), "Tcp", "InCsumErrors"), backend_csum_errors);
  EXPECT_EQ(snmp(lab.ns("c"), "Tcp", "InCsumErrors"), client_csum_errors);
  EXPECT_EQ(snmp(lab.ns("b"), "Udp", "InCsumErrors"), 0);
  EXPECT_EQ(snmp(lab.ns("c"), "Udp", "InCsumErrors"), 0);

  const json total = daemon.totals();
  ASSERT_TRUE(total.contains("packets_out")) << total.dump();
  EXPECT_GT(total.at("packets_out").get<uint64_t>(), 4u * kRequests) << total.dump();
  for (const char* reason : {"truncated", "bad_l4_header", "no_backend", "no_next_hop"}) {
    if (total.at("drops").contains(reason)) {
      EXPECT_EQ(total.at("drops").at(reason).get<uint64_t>(), 0u) << reason;
    }
  }
  const int status = daemon.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << daemon.log();
}

}  // namespace
