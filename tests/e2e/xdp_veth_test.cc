// `sluiced run` on the XDP path, on a veth pair between two network namespaces this test makes:
// real frames sent into one end come back out rewritten (DR: MACs only; NAT: address, port and
// valid checksums), sluicectl sees the counters, and SIGTERM detaches the program. The
// namespaces are removed at the end whatever happens. Sluice is a host on the link: frames for
// another host's MAC are dropped (not_for_us), unless the configuration says promiscuous.
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/net.h"
#include "control/config.h"
#include "tests/support/fixtures.h"
#include "tests/support/netns.h"
#include "tests/support/run.h"
#include "tools/pktgen/packet_builder.h"

namespace {

using json = nlohmann::json;
using pktgen::Bytes;
using pktgen::PacketSpec;
using sluice::IpAddress;
using sluice::MacAddress;
using testsupport::XdpDaemon;

const testsupport::Programs kPrograms{SLUICED_PATH, SLUICECTL_PATH};

// The two ends of the veth, given fixed MACs so that the frames can be addressed to Sluice's.
const MacAddress kLbMac = *MacAddress::parse("02:5d:00:00:00:01");   // sluiced's interface
const MacAddress kGenMac = *MacAddress::parse("02:5d:00:00:00:02");  // the test's
// Another host on the link, which a switch would flood frames for.
const MacAddress kOtherHostMac = *MacAddress::parse("02:00:00:00:00:cc");

/** Two namespaces joined by a veth pair; removed on destruction. */
class VethPair {
 public:
  VethPair() : netns_("sluice-xdp", {"lb", "gen"}) {
    const int tag = ::getpid() % 100000;
    lb_if_ = fmt::format("sxl{}", tag);
    gen_if_ = fmt::format("sxg{}", tag);
    ok_ = netns_.create() && netns_.veth("lb", lb_if_, "gen", gen_if_) &&
          netns_.setMac("lb", lb_if_, kLbMac) && netns_.setMac("gen", gen_if_, kGenMac) &&
          netns_.up("lb", lb_if_) && netns_.up("gen", gen_if_);
    netns_.in("lb", fmt::format("sysctl -qw net.ipv6.conf.{}.disable_ipv6=1", lb_if_));
    netns_.in("gen", fmt::format("sysctl -qw net.ipv6.conf.{}.disable_ipv6=1", gen_if_));
  }
  bool ok() const { return ok_; }
  const std::string& lbNs() const { return netns_.ns("lb"); }
  const std::string& genNs() const { return netns_.ns("gen"); }
  const std::string& lbIf() const { return lb_if_; }
  const std::string& genIf() const { return gen_if_; }

 private:
  testsupport::Namespaces netns_;
  std::string lb_if_, gen_if_;
  bool ok_ = false;
};

/**
 * The fixture on the XDP path, cut down to what the frames below exercise: web (DR) with two
 * backends of equal weight, one of which is drained half-way, and dns (NAT) with one. No IPv6
 * service: the test sends IPv4 frames only.
 */
sluice::Config vethConfig() {
  sluice::Config c = testsupport::threeServices();
  c.dataplane.mode = sluice::DataplaneMode::kXdp;
  c.dataplane.flow_table_size = 65536;
  std::erase_if(c.services, [](const sluice::ServiceConfig& s) { return s.name == "web6"; });
  auto& web = testsupport::service(c, "web").backends;
  std::erase_if(web, [](const sluice::BackendConfig& b) {
    return b.address == testsupport::ip("10.0.0.13");
  });
  auto& dns = testsupport::service(c, "dns").backends;
  std::erase_if(dns, [](const sluice::BackendConfig& b) {
    return b.address == testsupport::ip("10.0.1.22");
  });
  return c;
}

/**
 * In the generator namespace, on a thread pinned to cpu: send frames on the interface and
 * collect what comes back within the time limit: `want` frames, and whatever else comes in the
 * next linger_ms (frames that should not have come back at all).
 */
std::vector<Bytes> exchange(const std::string& ns, const std::string& ifname,
                            const std::vector<Bytes>& frames, size_t want, std::string& error,
                            int linger_ms = 300, int cpu = 0) {
  std::vector<Bytes> got;
  // Generic XDP on a veth runs on the CPU that sends: the frames' CPU is the sender's.
  testsupport::inNamespace(ns, [&] {
    const int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = static_cast<int>(if_nametoindex(ifname.c_str()));
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&sll), sizeof(sll)) != 0) {
      error = std::string("packet socket: ") + std::strerror(errno);
      return;
    }
    timeval tv{0, 200000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    for (const Bytes& f : frames) {
      ::send(fd, f.data(), f.size(), 0);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    std::optional<std::chrono::steady_clock::time_point> linger_end;
    uint8_t buf[4096];
    for (;;) {
      const auto now = std::chrono::steady_clock::now();
      if (!linger_end && (got.size() >= want || now >= deadline)) {
        linger_end = now + std::chrono::milliseconds(linger_ms);
      }
      if (linger_end && now >= *linger_end) {
        break;
      }
      sockaddr_ll from{};
      socklen_t len = sizeof(from);
      const ssize_t n = ::recvfrom(fd, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING) {
        continue;
      }
      got.emplace_back(buf, buf + n);
    }
    ::close(fd);
  }, error, cpu);
  return got;
}

/** A TCP SYN (or ACK) from client:sport to the web VIP, from the test's end to dst_mac. */
Bytes webFrame(uint32_t client, uint16_t sport, uint8_t flags, const MacAddress& dst_mac) {
  PacketSpec tcp;
  tcp.src_mac = kGenMac;
  tcp.dst_mac = dst_mac;
  tcp.src = IpAddress::v4(client);
  tcp.dst = *IpAddress::parse("192.0.2.10");
  tcp.sport = sport;
  tcp.dport = 80;
  tcp.tcp_flags = flags;
  return pktgen::build(tcp);
}

bool fromClients(const Bytes& f, uint32_t first, uint32_t count) {
  const auto d = pktgen::decode(f);
  if (!d || !d->src.isV4()) {
    return false;
  }
  const uint32_t a = uint32_t{d->src.bytes[0]} << 24 | uint32_t{d->src.bytes[1]} << 16 |
                     uint32_t{d->src.bytes[2]} << 8 | d->src.bytes[3];
  return a >= first && a < first + count;
}

constexpr uint32_t kOtherClients = 0xc6336701;  // 198.51.103.1..: the frames for another host
constexpr uint32_t kForOthers = 3;

/** Why these tests cannot run here, or "". */
std::string whyNot(const VethPair& veth) {
  if (std::string why = testsupport::whyNoNamespaces(); !why.empty()) {
    return why;
  }
  if (!veth.ok()) {
    return "cannot create network namespaces and a veth pair here";
  }
  return "";
}

TEST(XdpVeth, RunForwardsRealFramesOnAVeth) {
  VethPair veth;
  if (const std::string why = whyNot(veth); !why.empty()) {
    GTEST_SKIP() << why;
  }
  testsupport::TempDir dir("sluice-xdp-veth");
  XdpDaemon daemon(veth.lbNs(), veth.lbIf(), dir, testsupport::configText(vethConfig()),
                   kPrograms);
  ASSERT_TRUE(daemon.up()) << daemon.log();
  const std::string started = daemon.log();
  EXPECT_NE(started.find("XDP program attached to " + veth.lbIf() +
                         " (generic mode, one shared flow table)"),
            std::string::npos)
      << started;

  // 20 DR TCP flows, 20 NAT UDP flows, 1 frame for no service, all to sluiced's MAC; and a few
  // SYNs for the web VIP that were for another host's MAC.
  std::vector<Bytes> frames;
  for (uint32_t i = 0; i < 20; ++i) {
    frames.push_back(webFrame(0xc6336401 + i, static_cast<uint16_t>(20000 + i), 0x02, kLbMac));
    PacketSpec udp;
    udp.src_mac = kGenMac;
    udp.dst_mac = kLbMac;
    udp.src = IpAddress::v4(0xcb007101 + i);
    udp.dst = *IpAddress::parse("192.0.2.53");
    udp.proto = LB_PROTO_UDP;
    udp.sport = static_cast<uint16_t>(30000 + i);
    udp.dport = 53;
    udp.payload = Bytes(24, static_cast<uint8_t>(i));
    frames.push_back(pktgen::build(udp));
  }
  PacketSpec none;
  none.src_mac = kGenMac;
  none.dst_mac = kLbMac;
  none.src = *IpAddress::parse("198.51.100.9");
  none.dst = *IpAddress::parse("192.0.2.99");
  frames.push_back(pktgen::build(none));
  for (uint32_t i = 0; i < kForOthers; ++i) {
    frames.push_back(
        webFrame(kOtherClients + i, static_cast<uint16_t>(25000 + i), 0x02, kOtherHostMac));
  }

  std::string error;
  const std::vector<Bytes> got = exchange(veth.genNs(), veth.genIf(), frames, 40, error);
  ASSERT_TRUE(error.empty()) << error;
  EXPECT_EQ(got.size(), 40u) << "every service frame for sluiced's MAC comes back rewritten, "
                                "nothing else";
  std::map<std::string, size_t> per_backend;
  for (const Bytes& f : got) {
    const auto d = pktgen::decode(f);
    ASSERT_TRUE(d.has_value());
    EXPECT_FALSE(fromClients(f, kOtherClients, kForOthers)) << "a frame for another MAC came back";
    EXPECT_TRUE(d->ip_checksum_ok && d->l4_checksum_ok);
    EXPECT_EQ(d->src_mac, kLbMac) << "sent from sluiced's interface";
    per_backend[d->dst_mac.str()]++;
    if (d->proto == LB_PROTO_TCP) {  // DR: addresses untouched
      EXPECT_EQ(d->dst, *IpAddress::parse("192.0.2.10"));
      EXPECT_TRUE(d->dst_mac == *MacAddress::parse("02:00:00:00:01:11") ||
                  d->dst_mac == *MacAddress::parse("02:00:00:00:01:12"));
    } else {  // NAT: to the backend's address and port
      EXPECT_EQ(d->dst, *IpAddress::parse("10.0.1.21"));
      EXPECT_EQ(d->dport, 5353);
      EXPECT_EQ(d->dst_mac, *MacAddress::parse("02:00:00:00:02:21"));
    }
  }
  EXPECT_EQ(per_backend["02:00:00:00:02:21"], 20u);

  // A live change through sluicectl: drain 10.0.0.11. Established flows keep their backend; new
  // flows (other clients) all go to 10.0.0.12.
  std::map<uint16_t, std::string> backend_of;  // client port -> backend MAC (TCP, first round)
  for (const Bytes& f : got) {
    const auto d = pktgen::decode(f);
    if (d && d->proto == LB_PROTO_TCP) {
      backend_of[d->sport] = d->dst_mac.str();
    }
  }
  const testsupport::RunResult drain = daemon.ctl({"backend", "drain", "web", "10.0.0.11"});
  ASSERT_EQ(drain.status, 0) << drain.describe();
  const testsupport::RunResult list = daemon.ctl({"--json", "list"});
  ASSERT_EQ(list.status, 0) << list.describe();
  const json listed = json::parse(list.out);  // kept: a range-for does not extend a temporary's life
  for (const json& s : listed.at("services")) {
    for (const json& b : s.at("backends")) {
      EXPECT_EQ(b.at("state"), b.at("address") == "10.0.0.11" ? "drained" : "up") << b.dump();
    }
  }
  std::vector<Bytes> again;
  for (uint32_t i = 0; i < 20; ++i) {
    again.push_back(webFrame(0xc6336401 + i, static_cast<uint16_t>(20000 + i), 0x10, kLbMac));
    again.push_back(webFrame(0xc6336501 + i, static_cast<uint16_t>(40000 + i), 0x02, kLbMac));
  }
  const std::vector<Bytes> got2 = exchange(veth.genNs(), veth.genIf(), again, 40, error);
  ASSERT_TRUE(error.empty()) << error;
  ASSERT_EQ(got2.size(), 40u);
  size_t kept = 0;
  for (const Bytes& f : got2) {
    const auto d = pktgen::decode(f);
    ASSERT_TRUE(d.has_value());
    if (d->sport >= 40000) {
      EXPECT_EQ(d->dst_mac, *MacAddress::parse("02:00:00:00:01:12")) << "a new flow to a drained backend";
    } else {
      EXPECT_EQ(d->dst_mac.str(), backend_of[d->sport]) << "an established flow moved";
      kept += d->dst_mac == *MacAddress::parse("02:00:00:00:01:11") ? 1 : 0;
    }
  }
  EXPECT_GT(kept, 0u) << "some established flows stay on the drained backend";

  const json total = daemon.totals();
  ASSERT_TRUE(total.contains("drops")) << total.dump();
  EXPECT_GE(total.at("packets_in").get<uint64_t>(), 41u + kForOthers);
  EXPECT_EQ(total.at("packets_out").get<uint64_t>(), 80u);
  EXPECT_GE(total.at("drops").at("no_service").get<uint64_t>(), 1u);
  EXPECT_EQ(total.at("drops").at("not_for_us").get<uint64_t>(), kForOthers) << total.dump();
  // What is for no service goes to the kernel (XDP_PASS) as well as being counted; what was for
  // another MAC does not.
  EXPECT_GE(total.at("passed").get<uint64_t>(), 1u) << total.dump();
  EXPECT_EQ(total.at("answered").get<uint64_t>(), 0u) << total.dump();
  uint64_t drop_sum = 0;
  for (const auto& [reason, n] : total.at("drops").items()) {
    drop_sum += n.get<uint64_t>();
  }
  EXPECT_EQ(total.at("dropped").get<uint64_t>(), drop_sum);

  const int status = daemon.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << daemon.log();
  EXPECT_NE(daemon.log().find("XDP programs detached"), std::string::npos);
  // The program is gone from the interface.
  const testsupport::RunResult link = testsupport::runProgram(
      "/usr/sbin/ip", {"-n", veth.lbNs(), "link", "show", veth.lbIf()}, dir.path());
  EXPECT_EQ(link.out.find("prog/xdp"), std::string::npos) << link.out;
  EXPECT_NE(link.out.find(veth.lbIf()), std::string::npos) << link.out;
}

// [dataplane] promiscuous = true: every frame is taken as the interface's (a mirror port, a bump
// in the wire), so frames for another host's MAC are forwarded like the others.
TEST(XdpVeth, PromiscuousTakesFramesForAnyMac) {
  VethPair veth;
  if (const std::string why = whyNot(veth); !why.empty()) {
    GTEST_SKIP() << why;
  }
  testsupport::TempDir dir("sluice-xdp-veth");
  sluice::Config c = vethConfig();
  c.dataplane.promiscuous = true;
  XdpDaemon daemon(veth.lbNs(), veth.lbIf(), dir, testsupport::configText(c), kPrograms);
  ASSERT_TRUE(daemon.up()) << daemon.log();

  std::vector<Bytes> frames;
  for (uint32_t i = 0; i < kForOthers; ++i) {
    frames.push_back(
        webFrame(kOtherClients + i, static_cast<uint16_t>(25000 + i), 0x02, kOtherHostMac));
  }
  frames.push_back(webFrame(0xc6336401, 20000, 0x02, kLbMac));
  std::string error;
  const std::vector<Bytes> got =
      exchange(veth.genNs(), veth.genIf(), frames, kForOthers + 1, error);
  ASSERT_TRUE(error.empty()) << error;
  EXPECT_EQ(got.size(), kForOthers + 1) << "every frame, whatever its MAC, is forwarded";
  size_t others = 0;
  for (const Bytes& f : got) {
    const auto d = pktgen::decode(f);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->dst, *IpAddress::parse("192.0.2.10"));
    EXPECT_TRUE(d->dst_mac == *MacAddress::parse("02:00:00:00:01:11") ||
                d->dst_mac == *MacAddress::parse("02:00:00:00:01:12"))
        << d->dst_mac.str();
    others += fromClients(f, kOtherClients, kForOthers) ? 1 : 0;
  }
  EXPECT_EQ(others, kForOthers);
  const json total = daemon.totals();
  ASSERT_TRUE(total.contains("drops")) << total.dump();
  EXPECT_EQ(total.at("drops").at("not_for_us").get<uint64_t>(), 0u) << total.dump();
  EXPECT_EQ(total.at("packets_out").get<uint64_t>(), kForOthers + 1) << total.dump();
  const int status = daemon.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << daemon.log();
}

}  // namespace

namespace {

// Generic XDP on a veth runs on the CPU that sent the frame (no RSS), so one connection's packets
// meet several CPUs. With a table per CPU, a re-pick on one CPU (a SYN on a flow of a backend in
// maintenance) left the other CPU's copy on the old backend: the rest of the new connection went
// there. On a virtual interface the table is one for all CPUs.
TEST(XdpVeth, AFlowRePickedOnOneCpuIsRePickedForAllOnAVeth) {
  VethPair veth;
  if (const std::string why = whyNot(veth); !why.empty()) {
    GTEST_SKIP() << why;
  }
  if (std::thread::hardware_concurrency() < 2) {
    GTEST_SKIP() << "needs two CPUs";
  }
  testsupport::TempDir dir("sluice-xdp-veth");
  sluice::Config config = vethConfig();
  // web keeps (the default)
  XdpDaemon daemon(veth.lbNs(), veth.lbIf(), dir, testsupport::configText(config), kPrograms);
  ASSERT_TRUE(daemon.up()) << daemon.log();
  MacAddress be11, be12;  // web's two backends, by the MACs the frames will carry
  for (const sluice::BackendConfig& b : testsupport::service(config, "web").backends) {
    (b.address == testsupport::ip("10.0.0.11") ? be11 : be12) = *b.mac;
  }
  ASSERT_FALSE(be11.isZero());
  ASSERT_FALSE(be12.isZero());
  auto send = [&](uint16_t sport, uint8_t flags, int cpu) -> std::string {
    std::string error;
    const std::vector<Bytes> got = exchange(veth.genNs(), veth.genIf(),
                                            {webFrame(0xc6336501, sport, flags, kLbMac)}, 1,
                                            error, 50, cpu);
    EXPECT_EQ(error, "");
    for (const Bytes& f : got) {
      if (fromClients(f, 0xc6336501, 1)) {
        return MacAddress({f[0], f[1], f[2], f[3], f[4], f[5]}).str();
      }
    }
    return "nothing";
  };
  // Find a client port whose flow Maglev puts on 10.0.0.11 (SYN on CPU 0).
  uint16_t sport = 0;
  for (uint16_t p = 41000; p < 41064 && sport == 0; ++p) {
    if (send(p, 0x02, 0) == be11.str()) {
      sport = p;
    }
  }
  ASSERT_NE(sport, 0) << "no flow of 64 went to 10.0.0.11";
  EXPECT_EQ(send(sport, 0x10, 1), be11.str()) << "its ACK, on CPU 1";
  const testsupport::RunResult down = daemon.ctl({"backend", "down", "web", "10.0.0.11"});
  ASSERT_EQ(down.status, 0) << down.describe();
  EXPECT_EQ(send(sport, 0x10, 1), be11.str()) << "kept: on_backend_down = keep";
  // A new connection on the same ports, its SYN on CPU 1: picked again, off the backend in
  // maintenance; its next packet, on CPU 0, goes where the SYN went.
  EXPECT_EQ(send(sport, 0x02, 1), be12.str());
  EXPECT_EQ(send(sport, 0x10, 0), be12.str()) << "CPU 0 still had the old choice";
  const json total = daemon.totals();
  // One entry per port tried, each counted once (not once per CPU that holds a copy).
  EXPECT_EQ(total.at("flows_active").get<uint64_t>(), sport - 41000u + 1u) << total.dump();
}

}  // namespace
