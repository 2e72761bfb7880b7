// Tests of what the DPDK pipeline does as the host of its addresses and VIPs (src/dataplane/
// host.h and Pipeline::forward): ARP and Neighbour Solicitations answered in place, echo requests
// to a VIP answered, the host's own traffic handed to the kernel, frames for other MACs dropped
// (not_for_us), down backends' flows rescheduled, partial checksums completed. Frames are written
// byte by byte here and answers are checked field by field, checksums recomputed from scratch.
#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include <gtest/gtest.h>

#include "common/lb_abi.h"
#include "common/net.h"
#include "common/snapshot.h"
#include "control/config.h"
#include "control/snapshot_builder.h"
#include "dataplane/pipeline.h"
#include "tests/support/fixtures.h"

namespace sluice {
namespace {

using Bytes = std::vector<uint8_t>;
using testsupport::ip;
using testsupport::mac;

const MacAddress kPortMac = mac("02:00:00:00:00:bb");
const MacAddress kPeerMac = mac("02:00:00:00:00:aa");
const MacAddress kOtherMac = mac("02:00:00:00:00:cc");

void put(Bytes& b, std::initializer_list<uint8_t> bytes) { b.insert(b.end(), bytes); }
void put(Bytes& b, const MacAddress& m) { b.insert(b.end(), m.bytes.begin(), m.bytes.end()); }
void put(Bytes& b, const IpAddress& a) {
  b.insert(b.end(), a.bytes.begin(), a.bytes.begin() + (a.isV4() ? 4 : 16));
}
void put16(Bytes& b, uint16_t v) { put(b, {static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)}); }
uint16_t get16(const Bytes& b, size_t at) { return static_cast<uint16_t>(b[at] << 8 | b[at + 1]); }

// The Internet checksum over big-endian words (RFC 1071), written plainly: the reference the
// pipeline's incremental and in-place sums are checked against.
uint16_t internetChecksum(const Bytes& data) {
  uint64_t sum = 0;
  for (size_t i = 0; i < data.size(); i += 2) {
    sum += static_cast<uint64_t>(data[i]) << 8 | (i + 1 < data.size() ? data[i + 1] : 0);
  }
  while (sum >> 16) {
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return static_cast<uint16_t>(~sum);
}

Bytes pseudoHeader(const IpAddress& src, const IpAddress& dst, uint32_t len, uint8_t proto) {
  Bytes p;
  put(p, src);
  put(p, dst);
  if (src.isV4()) {
    put(p, {0, proto});
    put16(p, static_cast<uint16_t>(len));
  } else {
    put(p, {static_cast<uint8_t>(len >> 24), static_cast<uint8_t>(len >> 16),
            static_cast<uint8_t>(len >> 8), static_cast<uint8_t>(len), 0, 0, 0, proto});
  }
  return p;
}

Bytes ethernet(const MacAddress& dst, const MacAddress& src, uint16_t type) {
  Bytes f;
  put(f, dst);
  put(f, src);
  put16(f, type);
  return f;
}

Bytes arpRequest(const MacAddress& dst_mac, const IpAddress& sender, const IpAddress& target) {
  Bytes f = ethernet(dst_mac, kPeerMac, LB_ETH_P_ARP);
  put(f, {0, 1, 8, 0, 6, 4, 0, 1});
  put(f, kPeerMac);
  put(f, sender);
  put(f, {0, 0, 0, 0, 0, 0});
  put(f, target);
  f.resize(60, 0);  // Ethernet minimum, as a switch delivers it
  return f;
}

// IPv4 header with a correct checksum; payload appended by the caller.
Bytes ipv4(const IpAddress& src, const IpAddress& dst, uint8_t proto, size_t payload, uint8_t ttl = 64) {
  Bytes h;
  put(h, {0x45, 0});
  put16(h, static_cast<uint16_t>(20 + payload));
  put(h, {0x12, 0x34, 0x40, 0, ttl, proto, 0, 0});
  put(h, src);
  put(h, dst);
  const uint16_t c = internetChecksum(h);
  h[10] = static_cast<uint8_t>(c >> 8);
  h[11] = static_cast<uint8_t>(c);
  return h;
}

Bytes ipv6(const IpAddress& src, const IpAddress& dst, uint8_t next, size_t payload, uint8_t hops) {
  Bytes h;
  put(h, {0x60, 0, 0, 0});
  put16(h, static_cast<uint16_t>(payload));
  put(h, {next, hops});
  put(h, src);
  put(h, dst);
  return h;
}

// A Neighbour Solicitation for target from src, with a source link-layer address option.
Bytes solicitation(const IpAddress& src, const IpAddress& target, uint8_t hops = 255,
                   bool with_option = true) {
  Bytes icmp = {LB_ICMPV6_NEIGH_SOLICIT, 0, 0, 0, 0, 0, 0, 0};
  put(icmp, target);
  if (with_option) {
    put(icmp, {LB_ND_OPT_SOURCE_LLADDR, 1});
    put(icmp, kPeerMac);
  }
  // To the solicited-node group ff02::1:ffXX:XXXX of the target (RFC 4291 section 2.7.1).
  IpAddress group = *IpAddress::parse("ff02::1:ff00:0");
  std::copy(target.bytes.begin() + 13, target.bytes.end(), group.bytes.begin() + 13);
  Bytes pseudo = pseudoHeader(src, group, static_cast<uint32_t>(icmp.size()), LB_IPPROTO_ICMPV6);
  pseudo.insert(pseudo.end(), icmp.begin(), icmp.end());
  const uint16_t c = internetChecksum(pseudo);
  icmp[2] = static_cast<uint8_t>(c >> 8);
  icmp[3] = static_cast<uint8_t>(c);
  MacAddress group_mac = mac("33:33:ff:00:00:00");
  std::copy(target.bytes.begin() + 13, target.bytes.end(), group_mac.bytes.begin() + 3);
  Bytes f = ethernet(group_mac, kPeerMac, LB_ETH_P_IPV6);
  const Bytes h = ipv6(src, group, LB_IPPROTO_ICMPV6, icmp.size(), hops);
  f.insert(f.end(), h.begin(), h.end());
  f.insert(f.end(), icmp.begin(), icmp.end());
  return f;
}

Bytes echoRequest(const IpAddress& src, const IpAddress& dst) {
  Bytes icmp = {src.isV4() ? uint8_t{LB_ICMP_ECHO_REQUEST} : uint8_t{LB_ICMPV6_ECHO_REQUEST}, 0,
                0, 0, 0x0b, 0xad, 0, 7};
  for (int i = 0; i < 24; ++i) {
    icmp.push_back(static_cast<uint8_t>(i * 7));
  }
  Bytes summed = icmp;
  if (!src.isV4()) {
    summed = pseudoHeader(src, dst, static_cast<uint32_t>(icmp.size()), LB_IPPROTO_ICMPV6);
    summed.insert(summed.end(), icmp.begin(), icmp.end());
  }
  const uint16_t c = internetChecksum(summed);
  icmp[2] = static_cast<uint8_t>(c >> 8);
  icmp[3] = static_cast<uint8_t>(c);
  Bytes f = ethernet(kPortMac, kPeerMac, src.isV4() ? LB_ETH_P_IPV4 : LB_ETH_P_IPV6);
  const Bytes h = src.isV4() ? ipv4(src, dst, LB_IPPROTO_ICMP, icmp.size(), 57)
                             : ipv6(src, dst, LB_IPPROTO_ICMPV6, icmp.size(), 57);
  f.insert(f.end(), h.begin(), h.end());
  f.insert(f.end(), icmp.begin(), icmp.end());
  return f;
}

// A TCP segment with a payload; `partial`: the checksum field holds only the folded
// pseudo-header sum, as Linux leaves it for the NIC (CHECKSUM_PARTIAL).
Bytes tcp(const MacAddress& dst_mac, const IpAddress& src, const IpAddress& dst, uint16_t sport,
          uint16_t dport, uint8_t flags, bool partial = false, size_t payload = 37) {
  Bytes seg;
  put16(seg, sport);
  put16(seg, dport);
  put(seg, {0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0});
  for (size_t i = 0; i < payload; ++i) {
    seg.push_back(static_cast<uint8_t>(i * 13 + 5));
  }
  Bytes pseudo = pseudoHeader(src, dst, static_cast<uint32_t>(seg.size()), LB_PROTO_TCP);
  uint16_t c;
  if (partial) {
    c = static_cast<uint16_t>(~internetChecksum(pseudo));  // the folded sum, not complemented
  } else {
    pseudo.insert(pseudo.end(), seg.begin(), seg.end());
    c = internetChecksum(pseudo);
  }
  seg[16] = static_cast<uint8_t>(c >> 8);
  seg[17] = static_cast<uint8_t>(c);
  Bytes f = ethernet(dst_mac, kPeerMac, src.isV4() ? LB_ETH_P_IPV4 : LB_ETH_P_IPV6);
  const Bytes h = src.isV4() ? ipv4(src, dst, LB_PROTO_TCP, seg.size())
                             : ipv6(src, dst, LB_PROTO_TCP, seg.size(), 64);
  f.insert(f.end(), h.begin(), h.end());
  f.insert(f.end(), seg.begin(), seg.end());
  return f;
}

// Whether the TCP checksum of an untagged frame verifies.
bool tcpChecksumValid(const Bytes& f) {
  const bool v4 = get16(f, 12) == LB_ETH_P_IPV4;
  const size_t l3 = 14;
  const size_t l4 = l3 + (v4 ? 20 : 40);
  IpAddress src;
  IpAddress dst;
  src.family = dst.family = v4 ? LB_FAMILY_IPV4 : LB_FAMILY_IPV6;
  std::copy_n(f.begin() + static_cast<long>(l3 + (v4 ? 12 : 8)), v4 ? 4 : 16, src.bytes.begin());
  std::copy_n(f.begin() + static_cast<long>(l3 + (v4 ? 16 : 24)), v4 ? 4 : 16, dst.bytes.begin());
  Bytes sum = pseudoHeader(src, dst, static_cast<uint32_t>(f.size() - l4), LB_PROTO_TCP);
  sum.insert(sum.end(), f.begin() + static_cast<long>(l4), f.end());
  return internetChecksum(sum) == 0;
}

struct Host {
  explicit Host(Config c) : config(std::move(c)), pipe(1024, kMaxBackendIds) {
    validateConfig(config, "test");
    snap = buildSnapshot(config, ids, 1, nullptr, &runtime);
    std::copy(kPortMac.bytes.begin(), kPortMac.bytes.end(), port.mac);
  }
  void rebuild() { snap = buildSnapshot(config, ids, snap->generation + 1, snap.get(), &runtime); }

  // One frame through the pipeline; returns the PacketRef's verdict fields, frame rewritten.
  PacketRef run(Bytes& f, uint64_t now = 1'000'000'000'000ull) {
    PacketRef r;
    r.data = f.data();
    r.data_len = static_cast<uint32_t>(f.size());
    r.pkt_len = r.data_len;
    r.now_ns = now;
    pipe.process(std::span(&r, 1), *snap, port);
    if (r.transmit && r.new_len != 0) {
      f.resize(r.new_len);
    }
    return r;
  }

  Config config;
  IdRegistry ids;
  RuntimeState runtime;
  SnapshotPtr snap;
  Pipeline pipe;
  PortContext port;
};

const IpAddress kHost4 = ip("198.51.100.2");
const IpAddress kHost6 = ip("2001:db8:b::2");
const IpAddress kVip4 = ip("192.0.2.10");
const IpAddress kVip6 = ip("2001:db8::10");
const IpAddress kPeer4 = ip("198.51.100.1");
const IpAddress kPeer6 = ip("2001:db8:b::1");
const IpAddress kClient4 = ip("203.0.113.7");

// Sluice at 198.51.100.2/24 and 2001:db8:b::2/64; DR web on 192.0.2.10:80 with two on-link
// backends whose MACs are resolved, not configured; DR web6 on [2001:db8::10]:80.
Config hostConfig() {
  Config c;
  c.dataplane.addresses = {*IpPrefix::parse("198.51.100.2/24"), *IpPrefix::parse("2001:db8:b::2/64")};
  ServiceConfig web;
  web.name = "web";
  web.vip = kVip4;
  web.port = 80;
  for (const char* a : {"198.51.100.11", "198.51.100.12"}) {
    BackendConfig b;
    b.address = ip(a);
    b.port = 80;
    web.backends.push_back(b);
  }
  c.services.push_back(web);
  ServiceConfig web6;
  web6.name = "web6";
  web6.vip = kVip6;
  web6.port = 80;
  BackendConfig b6;
  b6.address = ip("2001:db8:b::11");
  b6.port = 80;
  b6.mac = mac("02:00:00:00:06:11");
  web6.backends.push_back(b6);
  c.services.push_back(web6);
  return c;
}

TEST(HostTest, AnswersArpForItsAddressAndVips) {
  Host h(hostConfig());
  for (const IpAddress& target : {kHost4, kVip4}) {
    Bytes f = arpRequest(mac("ff:ff:ff:ff:ff:ff"), kPeer4, target);
    const PacketRef r = h.run(f);
    ASSERT_TRUE(r.transmit) << target.str();
    EXPECT_FALSE(r.to_kernel);
    Bytes want = ethernet(kPeerMac, kPortMac, LB_ETH_P_ARP);
    put(want, {0, 1, 8, 0, 6, 4, 0, 2});
    put(want, kPortMac);
    put(want, target);
    put(want, kPeerMac);
    put(want, kPeer4);
    want.resize(60, 0);
    EXPECT_EQ(f, want) << target.str();
  }
  EXPECT_EQ(h.pipe.counters().answered.get(), 2u);
}

TEST(HostTest, OtherArpGoesToTheKernel) {
  Host h(hostConfig());
  const std::vector<Bytes> frames = {
      arpRequest(mac("ff:ff:ff:ff:ff:ff"), kPeer4, ip("198.51.100.99")),  // someone else
      arpRequest(mac("ff:ff:ff:ff:ff:ff"), kVip4, kVip4),                 // a gratuitous one
  };
  for (Bytes f : frames) {
    const Bytes before = f;
    const PacketRef r = h.run(f);
    EXPECT_FALSE(r.transmit);
    EXPECT_TRUE(r.to_kernel);
    EXPECT_EQ(f, before);  // untouched
  }
  Bytes reply = arpRequest(kPortMac, kPeer4, kHost4);
  reply[21] = 2;  // an ARP reply to the kernel's own request
  EXPECT_TRUE(h.run(reply).to_kernel);
  EXPECT_EQ(h.pipe.counters().drops[LB_DROP_NON_IP].get(), 3u);
  EXPECT_EQ(h.pipe.counters().passed.get(), 3u);
  EXPECT_EQ(h.pipe.counters().answered.get(), 0u);
}

TEST(HostTest, AnswersNeighbourSolicitations) {
  Host h(hostConfig());
  for (const IpAddress& target : {kHost6, kVip6}) {
    Bytes f = solicitation(kPeer6, target);
    const PacketRef r = h.run(f);
    ASSERT_TRUE(r.transmit) << target.str();
    ASSERT_EQ(f.size(), 14u + 40 + LB_ND_NA_LEN);
    EXPECT_EQ(Bytes(f.begin(), f.begin() + 6), Bytes(kPeerMac.bytes.begin(), kPeerMac.bytes.end()));
    EXPECT_EQ(Bytes(f.begin() + 6, f.begin() + 12),
              Bytes(kPortMac.bytes.begin(), kPortMac.bytes.end()));
    const size_t ip6 = 14;
    const size_t icmp = ip6 + 40;
    EXPECT_EQ(get16(f, ip6 + 4), LB_ND_NA_LEN);
    EXPECT_EQ(f[ip6 + 6], LB_IPPROTO_ICMPV6);
    EXPECT_EQ(f[ip6 + 7], 255);  // RFC 4861 section 7.1.2
    EXPECT_EQ(Bytes(f.begin() + ip6 + 8, f.begin() + ip6 + 24),
              Bytes(target.bytes.begin(), target.bytes.end()));
    EXPECT_EQ(Bytes(f.begin() + ip6 + 24, f.begin() + ip6 + 40),
              Bytes(kPeer6.bytes.begin(), kPeer6.bytes.end()));
    EXPECT_EQ(f[icmp], LB_ICMPV6_NEIGH_ADVERT);
    EXPECT_EQ(f[icmp + 4], 0x60);  // solicited, override, not a router
    EXPECT_EQ(Bytes(f.begin() + icmp + 8, f.begin() + icmp + 24),
              Bytes(target.bytes.begin(), target.bytes.end()));
    EXPECT_EQ(f[icmp + 24], LB_ND_OPT_TARGET_LLADDR);
    EXPECT_EQ(f[icmp + 25], 1);
    EXPECT_EQ(Bytes(f.begin() + icmp + 26, f.end()),
              Bytes(kPortMac.bytes.begin(), kPortMac.bytes.end()));
    Bytes sum = pseudoHeader(target, kPeer6, LB_ND_NA_LEN, LB_IPPROTO_ICMPV6);
    sum.insert(sum.end(), f.begin() + icmp, f.end());
    EXPECT_EQ(internetChecksum(sum), 0) << "NA checksum for " << target.str();
  }
  EXPECT_EQ(h.pipe.counters().answered.get(), 2u);
}

TEST(HostTest, SolicitationsItDoesNotAnswerGoToTheKernel) {
  Host h(hostConfig());
  std::vector<Bytes> frames = {
      solicitation(kPeer6, ip("2001:db8:b::99")),               // someone else's address
      solicitation(ip("::"), kHost6),                            // duplicate address detection
      solicitation(kPeer6, kHost6, 64),                          // hop limit not 255: off-link
      solicitation(kPeer6, kVip6, 255, false),                   // no option: no room in place
  };
  for (Bytes& f : frames) {
    const Bytes before = f;
    const PacketRef r = h.run(f);
    EXPECT_FALSE(r.transmit);
    EXPECT_TRUE(r.to_kernel);
    EXPECT_EQ(f, before);
  }
  EXPECT_EQ(h.pipe.counters().answered.get(), 0u);
}

TEST(HostTest, VipAnswersEchoHostsEchoGoesToTheKernel) {
  Host h(hostConfig());
  for (const auto& [client, vip] : {std::pair{kClient4, kVip4}, std::pair{ip("2001:db8:c::7"), kVip6}}) {
    Bytes f = echoRequest(client, vip);
    const Bytes before = f;
    const PacketRef r = h.run(f);
    ASSERT_TRUE(r.transmit) << vip.str();
    const bool v4 = vip.isV4();
    const size_t icmp = 14 + (v4 ? 20 : 40);
    EXPECT_EQ(f[icmp], v4 ? LB_ICMP_ECHO_REPLY : LB_ICMPV6_ECHO_REPLY);
    EXPECT_EQ(Bytes(f.begin() + static_cast<long>(icmp) + 4, f.end()),
              Bytes(before.begin() + static_cast<long>(icmp) + 4, before.end()));  // id, seq, data
    if (v4) {
      EXPECT_EQ(f[14 + 8], LB_REPLY_HOP_LIMIT);
      EXPECT_EQ(internetChecksum(Bytes(f.begin() + 14, f.begin() + 34)), 0);
      EXPECT_EQ(Bytes(f.begin() + 26, f.begin() + 30), Bytes(vip.bytes.begin(), vip.bytes.begin() + 4));
      EXPECT_EQ(internetChecksum(Bytes(f.begin() + 34, f.end())), 0);
    } else {
      EXPECT_EQ(f[14 + 7], LB_REPLY_HOP_LIMIT);
      Bytes sum = pseudoHeader(vip, client, static_cast<uint32_t>(f.size() - icmp), LB_IPPROTO_ICMPV6);
      sum.insert(sum.end(), f.begin() + static_cast<long>(icmp), f.end());
      EXPECT_EQ(internetChecksum(sum), 0);
    }
    EXPECT_EQ(Bytes(f.begin(), f.begin() + 6), Bytes(kPeerMac.bytes.begin(), kPeerMac.bytes.end()));
  }
  Bytes to_host = echoRequest(kClient4, kHost4);
  const Bytes before = to_host;
  const PacketRef r = h.run(to_host);
  EXPECT_TRUE(r.to_kernel);  // the kernel answers for its own address
  EXPECT_EQ(to_host, before);
  EXPECT_EQ(h.pipe.counters().answered.get(), 2u);
  EXPECT_EQ(h.pipe.counters().drops[LB_DROP_NO_SERVICE].get(), 0u);
}

TEST(HostTest, HostsOwnTrafficGoesToTheKernelEvenFromANatBackend) {
  Config c = hostConfig();
  ServiceConfig nat;
  nat.name = "nat";
  nat.vip = ip("192.0.2.20");
  nat.port = 80;
  nat.forwarding = Forwarding::kNat;
  BackendConfig b;
  b.address = ip("198.51.100.11");
  b.port = 8080;
  nat.backends.push_back(b);
  c.services.push_back(nat);
  Host h(c);
  // A health probe's answer from the NAT backend to Sluice's own address: not a NAT reply.
  Bytes f = tcp(kPortMac, ip("198.51.100.11"), kHost4, 8080, 40000, LB_TCP_SYN | LB_TCP_ACK);
  const Bytes before = f;
  const PacketRef r = h.run(f);
  EXPECT_TRUE(r.to_kernel);
  EXPECT_FALSE(r.transmit);
  EXPECT_EQ(f, before);
  EXPECT_EQ(h.pipe.counters().passed.get(), 1u);
  EXPECT_EQ(h.pipe.counters().drops[LB_DROP_NO_SERVICE].get(), 0u);
}

TEST(HostTest, FramesForOtherMacsAreNotForUs) {
  Host h(hostConfig());
  h.runtime.neighbours[ip("198.51.100.11")] = mac("02:00:00:00:01:11");
  h.runtime.neighbours[ip("198.51.100.12")] = mac("02:00:00:00:01:12");
  h.rebuild();
  Bytes flooded = tcp(kOtherMac, kClient4, kVip4, 1234, 80, LB_TCP_SYN);
  EXPECT_FALSE(h.run(flooded).transmit);
  EXPECT_EQ(h.pipe.counters().drops[LB_DROP_NOT_FOR_US].get(), 1u);
  Bytes arp_unicast = arpRequest(kOtherMac, kPeer4, kHost4);
  EXPECT_FALSE(h.run(arp_unicast).transmit);
  EXPECT_EQ(h.pipe.counters().drops[LB_DROP_NOT_FOR_US].get(), 2u);
  // Replaying a capture taken elsewhere: the port takes any destination.
  h.port.accept_any_mac = true;
  Bytes again = tcp(kOtherMac, kClient4, kVip4, 1234, 80, LB_TCP_SYN);
  EXPECT_TRUE(h.run(again).transmit);
  EXPECT_EQ(h.pipe.counters().drops[LB_DROP_NOT_FOR_US].get(), 2u);
}

TEST(HostTest, UnresolvedBackendsGetNoFlowsUntilResolved) {
  Host h(hostConfig());
  const Snapshot& s0 = *h.snap;
  for (uint32_t id : s0.services[0].backend_ids) {
    EXPECT_EQ(s0.backends[id].state, BackendState::kUnresolved);
  }
  Bytes f = tcp(kPortMac, kClient4, kVip4, 1234, 80, LB_TCP_SYN);
  EXPECT_FALSE(h.run(f).transmit);
  EXPECT_EQ(h.pipe.counters().drops[LB_DROP_NO_BACKEND].get(), 1u);
  // One resolves: every new flow goes to it, with its MAC.
  h.runtime.neighbours[ip("198.51.100.12")] = mac("02:00:00:00:01:12");
  h.rebuild();
  for (uint16_t sport = 2000; sport < 2050; ++sport) {
    Bytes g = tcp(kPortMac, kClient4, kVip4, sport, 80, LB_TCP_SYN);
    ASSERT_TRUE(h.run(g).transmit);
    EXPECT_EQ((MacAddress{{g[0], g[1], g[2], g[3], g[4], g[5]}}), mac("02:00:00:00:01:12"));
  }
}

TEST(HostTest, DownBackendsFlowsFollowTheServicesPolicy) {
  for (DownPolicy policy : {DownPolicy::kKeep, DownPolicy::kReschedule}) {
    Config c = hostConfig();
    c.services[0].on_backend_down = policy;
    Host h(c);
    h.runtime.neighbours[ip("198.51.100.11")] = mac("02:00:00:00:01:11");
    h.runtime.neighbours[ip("198.51.100.12")] = mac("02:00:00:00:01:12");
    h.rebuild();
    // Pin a flow, then take its backend down.
    Bytes syn = tcp(kPortMac, kClient4, kVip4, 5555, 80, LB_TCP_SYN);
    ASSERT_TRUE(h.run(syn).transmit);
    const MacAddress first{{syn[0], syn[1], syn[2], syn[3], syn[4], syn[5]}};
    const IpAddress first_ip =
        first == mac("02:00:00:00:01:11") ? ip("198.51.100.11") : ip("198.51.100.12");
    h.runtime.health[backendRef(c.services[0], c.services[0].backends[first_ip == ip("198.51.100.11") ? 0 : 1])]
        .up = false;
    h.rebuild();
    Bytes ack = tcp(kPortMac, kClient4, kVip4, 5555, 80, LB_TCP_ACK);
    ASSERT_TRUE(h.run(ack).transmit);
    const MacAddress now{{ack[0], ack[1], ack[2], ack[3], ack[4], ack[5]}};
    if (policy == DownPolicy::kKeep) {
      EXPECT_EQ(now, first) << "keep: the established flow stays on its backend";
    } else {
      EXPECT_NE(now, first) << "reschedule: the flow moves to the live backend";
      EXPECT_EQ(h.pipe.counters().flows_rescheduled.get(), 1u);
    }
    // New flows never go to the down backend.
    for (uint16_t sport = 3000; sport < 3040; ++sport) {
      Bytes g = tcp(kPortMac, kClient4, kVip4, sport, 80, LB_TCP_SYN);
      ASSERT_TRUE(h.run(g).transmit);
      EXPECT_NE((MacAddress{{g[0], g[1], g[2], g[3], g[4], g[5]}}), first);
    }
  }
}

TEST(HostTest, PartialChecksumsAreCompletedOnKernelFedPorts) {
  Config c = hostConfig();
  Host h(c);
  h.runtime.neighbours[ip("198.51.100.11")] = mac("02:00:00:00:01:11");
  h.runtime.neighbours[ip("198.51.100.12")] = mac("02:00:00:00:01:12");
  h.rebuild();
  h.port.complete_partial_checksums = true;
  // DR, IPv4 and IPv6; to the kernel (the host's own address).
  std::vector<Bytes> frames = {
      tcp(kPortMac, kClient4, kVip4, 7000, 80, LB_TCP_SYN, true),
      tcp(kPortMac, ip("2001:db8:c::7"), kVip6, 7001, 80, LB_TCP_SYN, true, 1000),
      tcp(kPortMac, kPeer4, kHost4, 7002, 22, LB_TCP_SYN, true, 0),
  };
  for (Bytes& f : frames) {
    ASSERT_FALSE(tcpChecksumValid(f));
    const PacketRef r = h.run(f);
    EXPECT_TRUE(r.transmit || r.to_kernel);
    EXPECT_TRUE(tcpChecksumValid(f)) << "completed checksum";
  }
  EXPECT_EQ(h.pipe.counters().checksums_completed.get(), 3u);
  // A complete checksum is left as it is.
  Bytes full = tcp(kPortMac, kClient4, kVip4, 7003, 80, LB_TCP_SYN);
  const Bytes before = full;
  ASSERT_TRUE(h.run(full).transmit);
  EXPECT_EQ(Bytes(full.begin() + 14, full.end()), Bytes(before.begin() + 14, before.end()));
  EXPECT_EQ(h.pipe.counters().checksums_completed.get(), 3u);
  // Off (replay, a NIC): a partial checksum is not touched.
  h.port.complete_partial_checksums = false;
  Bytes untouched = tcp(kPortMac, kClient4, kVip4, 7004, 80, LB_TCP_SYN, true);
  ASSERT_TRUE(h.run(untouched).transmit);
  EXPECT_FALSE(tcpChecksumValid(untouched));
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

// NAT on a kernel-fed port (net_af_packet): a partial checksum is completed first, and the NAT
// rewrite then updates a complete checksum, so the backend (and, for the reply, the client) gets
// a valid full checksum, in both families. The XDP path keeps such a field partial instead
// (bpf/lib/lb.h): its skb stays CHECKSUM_PARTIAL, where DPDK's packet socket transmission is
// taken as complete.
TEST(HostTest, NatOfAPartialChecksumGivesTheBackendAValidFullChecksum) {
  Config c = hostConfig();
  c.services.clear();
  struct Nat {
    const char* name;
    const char* vip;
    const char* backend;
    const char* client;
  };
  const Nat nats[] = {{"nat4", "192.0.2.20", "198.51.100.21", "203.0.113.7"},
                      {"nat6", "2001:db8::20", "2001:db8:b::21", "2001:db8:c::7"}};
  for (const Nat& n : nats) {
    ServiceConfig s;
    s.name = n.name;
    s.vip = ip(n.vip);
    s.port = 80;
    s.forwarding = Forwarding::kNat;
    BackendConfig b;
    b.address = ip(n.backend);
    b.port = 8080;
    b.mac = mac("02:00:00:00:02:21");
    s.backends.push_back(b);
    c.services.push_back(s);
  }
  Host h(c);
  h.port.complete_partial_checksums = true;
  uint64_t completed = 0;
  for (const Nat& n : nats) {
    SCOPED_TRACE(n.vip);
    for (size_t payload : {size_t{0}, size_t{37}, size_t{1000}}) {
      const uint16_t sport = static_cast<uint16_t>(9000 + payload);
      Bytes f = tcp(kPortMac, ip(n.client), ip(n.vip), sport, 80, LB_TCP_SYN, true, payload);
      ASSERT_FALSE(tcpChecksumValid(f));
      const PacketRef r = h.run(f);
      ASSERT_TRUE(r.transmit);
      ++completed;
      const bool v4 = ip(n.vip).isV4();
      const size_t dst_at = 14 + (v4 ? 16 : 24);
      const IpAddress backend = ip(n.backend);
      EXPECT_EQ(Bytes(f.begin() + static_cast<long>(dst_at),
                      f.begin() + static_cast<long>(dst_at + (v4 ? 4 : 16))),
                Bytes(backend.bytes.begin(), backend.bytes.begin() + (v4 ? 4 : 16)))
          << "to the backend's address";
      EXPECT_EQ(get16(f, 14 + (v4 ? 20 : 40) + 2), 8080) << "and port";
      EXPECT_TRUE(tcpChecksumValid(f)) << "a full checksum after NAT, payload " << payload;
      if (v4) {
        EXPECT_EQ(internetChecksum(Bytes(f.begin() + 14, f.begin() + 34)), 0);
      }

      // The backend's reply, partial too: back to the VIP, with a full checksum.
      Bytes reply = tcp(kPortMac, backend, ip(n.client), 8080, sport, LB_TCP_SYN | LB_TCP_ACK,
                        true, payload);
      ASSERT_FALSE(tcpChecksumValid(reply));
      ASSERT_TRUE(h.run(reply).transmit);
      ++completed;
      const size_t src_at = 14 + (v4 ? 12 : 8);
      const IpAddress vip = ip(n.vip);
      EXPECT_EQ(Bytes(reply.begin() + static_cast<long>(src_at),
                      reply.begin() + static_cast<long>(src_at + (v4 ? 4 : 16))),
                Bytes(vip.bytes.begin(), vip.bytes.begin() + (v4 ? 4 : 16)))
          << "from the VIP";
      EXPECT_TRUE(tcpChecksumValid(reply)) << "a full checksum on the NAT reply, payload "
                                           << payload;
    }
  }
  EXPECT_EQ(h.pipe.counters().checksums_completed.get(), completed);
}

}  // namespace
}  // namespace sluice
