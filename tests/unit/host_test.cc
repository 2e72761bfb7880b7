// Tests of what the DPDK pipeline does as the host of its addresses and VIPs (src/dataplane/
// host.h and Pipeline::forward): ARP and Neighbour Solicitations answered in place, echo requests
// to a VIP answered, the host's own traffic handed to the kernel, frames for other MACs dropped
// (not_for_us), down backends' flows rescheduled, partial checksums completed. Frames are built
// and answers read with tools/pktgen, which computes every checksum from scratch and shares no
// code with the data plane; answers are checked field by field.
#include <cstdint>
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
#include "tools/pktgen/packet_builder.h"

namespace sluice {
namespace {

using pktgen::Bytes;
using testsupport::ip;
using testsupport::mac;

const MacAddress kPortMac = mac("02:00:00:00:00:bb");
const MacAddress kPeerMac = mac("02:00:00:00:00:aa");
const MacAddress kOtherMac = mac("02:00:00:00:00:cc");

constexpr size_t kEthLen = 14;
constexpr size_t kTcpLen = 20;

Bytes bytesOf(const MacAddress& m) { return Bytes(m.bytes.begin(), m.bytes.end()); }
MacAddress dstMac(const Bytes& f) { return MacAddress{{f[0], f[1], f[2], f[3], f[4], f[5]}}; }

/** An ARP request (or, op 2, reply) from the peer for target, padded to the Ethernet minimum. */
Bytes arpFrame(const MacAddress& dst_mac, const IpAddress& sender, const IpAddress& target,
               uint16_t op = 1) {
  pktgen::ArpSpec a;
  a.src_mac = kPeerMac;
  a.dst_mac = dst_mac;
  a.op = op;
  a.sender_mac = kPeerMac;
  a.sender = sender;
  a.target = target;
  a.min_frame = 60;  // Ethernet minimum, as a switch delivers it
  return pktgen::buildArp(a);
}

// A Neighbour Solicitation for target from src, to the target's solicited-node group (RFC 4291
// section 2.7.1), with a source link-layer address option unless with_option is false.
Bytes solicitation(const IpAddress& src, const IpAddress& target, uint8_t hops = 255,
                   bool with_option = true) {
  pktgen::PacketSpec s;
  s.src_mac = kPeerMac;
  s.src = src;
  s.dst = pktgen::solicitedNode(target);
  s.dst_mac = pktgen::multicastMac(s.dst);
  s.ttl = hops;
  return pktgen::buildNeighbourSolicit(s, target, with_option);
}

Bytes echoRequest(const IpAddress& src, const IpAddress& dst) {
  pktgen::PacketSpec s;
  s.src_mac = kPeerMac;
  s.dst_mac = kPortMac;
  s.src = src;
  s.dst = dst;
  s.ttl = 57;
  s.ip_id = 0x1234;
  Bytes data;
  for (int i = 0; i < 24; ++i) {
    data.push_back(static_cast<uint8_t>(i * 7));
  }
  return pktgen::buildEchoRequest(s, 0x0bad, 7, data);
}

// pktgen builds complete checksums only. What Linux leaves in a CHECKSUM_PARTIAL field is the
// folded pseudo-header sum, not complemented (RFC 793, RFC 8200 section 8.1); as 16-bit words
// the pseudo-header is the two addresses, the length's two halves and the protocol.
uint16_t pseudoHeaderSum(const IpAddress& src, const IpAddress& dst, uint32_t len, uint8_t proto) {
  const size_t n = src.isV4() ? 4 : 16;
  Bytes addresses(src.bytes.begin(), src.bytes.begin() + static_cast<long>(n));
  addresses.insert(addresses.end(), dst.bytes.begin(), dst.bytes.begin() + static_cast<long>(n));
  return pktgen::onesSum(addresses, (len >> 16) + (len & 0xffff) + proto);
}

// A TCP segment with a payload; `partial`: the checksum field holds only the folded
// pseudo-header sum, as Linux leaves it for the NIC (CHECKSUM_PARTIAL).
Bytes tcp(const MacAddress& dst_mac, const IpAddress& src, const IpAddress& dst, uint16_t sport,
          uint16_t dport, uint8_t flags, bool partial = false, size_t payload = 37) {
  pktgen::PacketSpec s;
  s.src_mac = kPeerMac;
  s.dst_mac = dst_mac;
  s.src = src;
  s.dst = dst;
  s.sport = sport;
  s.dport = dport;
  s.tcp_flags = flags;
  s.ip_id = 0x1234;
  for (size_t i = 0; i < payload; ++i) {
    s.payload.push_back(static_cast<uint8_t>(i * 13 + 5));
  }
  Bytes f = pktgen::build(s);
  if (partial) {
    const size_t l4 = f.size() - kTcpLen - payload;
    const uint16_t c =
        pseudoHeaderSum(src, dst, static_cast<uint32_t>(kTcpLen + payload), LB_PROTO_TCP);
    f[l4 + 16] = static_cast<uint8_t>(c >> 8);
    f[l4 + 17] = static_cast<uint8_t>(c);
  }
  return f;
}

// Whether the TCP checksum of a frame verifies.
bool tcpChecksumValid(const Bytes& f) {
  const auto d = pktgen::decode(f);
  return d && d->proto == LB_PROTO_TCP && d->l4_checksum_ok;
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
  c.dataplane.addresses = {*IpPrefix::parse("198.51.100.2/24"),
                           *IpPrefix::parse("2001:db8:b::2/64")};
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
    Bytes f = arpFrame(mac("ff:ff:ff:ff:ff:ff"), kPeer4, target);
    const PacketRef r = h.run(f);
    ASSERT_TRUE(r.transmit) << target.str();
    EXPECT_FALSE(r.to_kernel);
    pktgen::ArpSpec want;
    want.src_mac = kPortMac;
    want.dst_mac = kPeerMac;
    want.op = 2;
    want.sender_mac = kPortMac;
    want.sender = target;
    want.target_mac = kPeerMac;
    want.target = kPeer4;
    want.min_frame = 60;
    EXPECT_EQ(f, pktgen::buildArp(want)) << target.str();
  }
  EXPECT_EQ(h.pipe.counters().answered.get(), 2u);
}

TEST(HostTest, OtherArpGoesToTheKernel) {
  Host h(hostConfig());
  const std::vector<Bytes> frames = {
      arpFrame(mac("ff:ff:ff:ff:ff:ff"), kPeer4, ip("198.51.100.99")),  // someone else
      arpFrame(mac("ff:ff:ff:ff:ff:ff"), kVip4, kVip4),                 // a gratuitous one
  };
  for (Bytes f : frames) {
    const Bytes before = f;
    const PacketRef r = h.run(f);
    EXPECT_FALSE(r.transmit);
    EXPECT_TRUE(r.to_kernel);
    EXPECT_EQ(f, before);  // untouched
  }
  Bytes reply = arpFrame(kPortMac, kPeer4, kHost4, 2);  // an ARP reply to the kernel's own request
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
    ASSERT_EQ(f.size(), kEthLen + 40 + LB_ND_NA_LEN);
    const auto d = pktgen::decodeIcmp(f);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->dst_mac, kPeerMac);
    EXPECT_EQ(d->src_mac, kPortMac);
    EXPECT_EQ(d->l4_offset, kEthLen + 40) << "ICMPv6 right after the IPv6 header";
    ASSERT_EQ(d->message.size(), LB_ND_NA_LEN) << "the IPv6 payload length";
    EXPECT_EQ(d->ttl, 255);  // RFC 4861 section 7.1.2
    EXPECT_EQ(d->src, target);
    EXPECT_EQ(d->dst, kPeer6);
    const Bytes& m = d->message;
    EXPECT_EQ(d->type, LB_ICMPV6_NEIGH_ADVERT);
    EXPECT_EQ(m[4], 0x60);  // solicited, override, not a router
    EXPECT_EQ(Bytes(m.begin() + 8, m.begin() + 24),
              Bytes(target.bytes.begin(), target.bytes.end()));
    EXPECT_EQ(m[24], LB_ND_OPT_TARGET_LLADDR);
    EXPECT_EQ(m[25], 1);
    EXPECT_EQ(Bytes(m.begin() + 26, m.end()), bytesOf(kPortMac));
    EXPECT_TRUE(d->icmp_checksum_ok) << "NA checksum for " << target.str();
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
  for (const auto& [client, vip] :
       {std::pair{kClient4, kVip4}, std::pair{ip("2001:db8:c::7"), kVip6}}) {
    Bytes f = echoRequest(client, vip);
    const Bytes before = f;
    const PacketRef r = h.run(f);
    ASSERT_TRUE(r.transmit) << vip.str();
    const auto d = pktgen::decodeIcmp(f);
    const auto sent = pktgen::decodeIcmp(before);
    ASSERT_TRUE(d.has_value() && sent.has_value());
    EXPECT_EQ(d->type, vip.isV4() ? LB_ICMP_ECHO_REPLY : LB_ICMPV6_ECHO_REPLY);
    EXPECT_EQ(Bytes(d->message.begin() + 4, d->message.end()),
              Bytes(sent->message.begin() + 4, sent->message.end()));  // id, seq, data
    EXPECT_EQ(d->ttl, LB_REPLY_HOP_LIMIT);
    EXPECT_TRUE(d->ip_checksum_ok);
    EXPECT_EQ(d->src, vip);
    EXPECT_EQ(d->dst, client);
    EXPECT_TRUE(d->icmp_checksum_ok);
    EXPECT_EQ(d->dst_mac, kPeerMac);
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
  Bytes arp_unicast = arpFrame(kOtherMac, kPeer4, kHost4);
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
    EXPECT_EQ(dstMac(g), mac("02:00:00:00:01:12"));
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
    const MacAddress first = dstMac(syn);
    const IpAddress first_ip =
        first == mac("02:00:00:00:01:11") ? ip("198.51.100.11") : ip("198.51.100.12");
    h.runtime
        .health[backendRef(c.services[0],
                           c.services[0].backends[first_ip == ip("198.51.100.11") ? 0 : 1])]
        .up = false;
    h.rebuild();
    Bytes ack = tcp(kPortMac, kClient4, kVip4, 5555, 80, LB_TCP_ACK);
    ASSERT_TRUE(h.run(ack).transmit);
    const MacAddress now = dstMac(ack);
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
      EXPECT_NE(dstMac(g), first);
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
  EXPECT_EQ(Bytes(full.begin() + kEthLen, full.end()),
            Bytes(before.begin() + kEthLen, before.end()));
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
  const MacAddress kNatBackendMac = mac("02:00:00:00:02:21");
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
    b.mac = kNatBackendMac;
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
      const IpAddress backend = ip(n.backend);
      const auto d = pktgen::decode(f);
      ASSERT_TRUE(d.has_value());
      EXPECT_EQ(d->dst, backend) << "to the backend's address";
      EXPECT_EQ(d->dport, 8080) << "and port";
      EXPECT_TRUE(tcpChecksumValid(f)) << "a full checksum after NAT, payload " << payload;
      EXPECT_TRUE(d->ip_checksum_ok);

      // The backend's reply, partial too: back to the VIP, with a full checksum.
      Bytes reply = tcp(kPortMac, backend, ip(n.client), 8080, sport, LB_TCP_SYN | LB_TCP_ACK,
                        true, payload);
      // From the backend's MAC, its next hop: a NAT reply is taken from nowhere else.
      std::copy(kNatBackendMac.bytes.begin(), kNatBackendMac.bytes.end(), reply.begin() + 6);
      ASSERT_FALSE(tcpChecksumValid(reply));
      ASSERT_TRUE(h.run(reply).transmit);
      ++completed;
      const auto rd = pktgen::decode(reply);
      ASSERT_TRUE(rd.has_value());
      EXPECT_EQ(rd->src, ip(n.vip)) << "from the VIP";
      EXPECT_TRUE(tcpChecksumValid(reply)) << "a full checksum on the NAT reply, payload "
                                           << payload;
    }
  }
  EXPECT_EQ(h.pipe.counters().checksums_completed.get(), completed);
}

}  // namespace
}  // namespace sluice
