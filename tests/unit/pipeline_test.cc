// Tests of the per-packet pipeline (src/dataplane/pipeline.h) on real frames: snapshots are built
// from configurations through IdRegistry + buildSnapshot exactly as the control plane does, frames
// come from the independent packet library (tools/pktgen), and outputs are compared byte for byte
// with frames pktgen builds from scratch.
#include <arpa/inet.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "common/lb_abi.h"
#include "common/net.h"
#include "control/config.h"
#include "control/snapshot_builder.h"
#include "dataplane/pipeline.h"
#include "common/snapshot.h"
#include "tests/support/fixtures.h"
#include "tools/pktgen/packet_builder.h"

namespace sluice {
namespace {

using pktgen::Bytes;
using pktgen::PacketSpec;
using testsupport::ip;
using testsupport::mac;

constexpr uint64_t kSec = 1'000'000'000ull;
constexpr uint64_t kT0 = 1000 * kSec;

const MacAddress kPortMac = mac("02:00:00:00:00:bb");
const MacAddress kClientMac = mac("02:00:00:00:00:aa");
const MacAddress kRouterMac = mac("02:00:00:00:00:ac");
const MacAddress kGatewayMac = mac("02:00:00:00:00:fe");

// The DR web service's three backends (DR: backend port = service port).
BackendConfig webA(uint32_t w = 1) {
  return testsupport::makeBackend("10.0.0.11", 80, "02:00:00:00:01:11", w);
}
BackendConfig webB(uint32_t w = 1) {
  return testsupport::makeBackend("10.0.0.12", 80, "02:00:00:00:01:12", w);
}
BackendConfig webC(uint32_t w = 1) {
  return testsupport::makeBackend("10.0.0.13", 80, "02:00:00:00:01:13", w);
}
BackendConfig webD(uint32_t w = 1) {
  return testsupport::makeBackend("10.0.0.14", 80, "02:00:00:00:01:14", w);
}

// A configuration with DR and NAT services of both families and protocols: the fixture's three
// (web DR/TCP/IPv4 with the given backends, dns NAT/UDP/IPv4, web6 NAT/TCP/IPv6 on port 443),
// then NAT/TCP/IPv4, NAT/UDP/IPv6, DR/TCP/IPv6 (port 80 of web6's VIP), a service whose backends
// are all drained and one without backends.
Config baseConfig(std::vector<BackendConfig> web = {webA(), webB(), webC()},
                  bool gateway = true) {
  Config c = testsupport::threeServices();
  c.dataplane.flow_table_size = 1u << 16;
  c.dataplane.gateway_mac.reset();
  if (gateway) {
    c.dataplane.gateway_mac = kGatewayMac;
  }
  c.timeouts.tcp_s = 900;
  c.timeouts.tcp_fin_s = 10;
  c.timeouts.udp_s = 300;
  testsupport::service(c, "web").backends = std::move(web);
  c.services.push_back(testsupport::makeService(
      "api", "192.0.2.20", 443, Protocol::kTcp, Forwarding::kNat,
      {testsupport::makeBackend("10.0.2.1", 8443, "02:00:00:00:03:01"),
       testsupport::makeBackend("10.0.2.2", 8443, "02:00:00:00:03:02", 3)}));
  c.services.push_back(testsupport::makeService(
      "dns6", "2001:db8::53", 53, Protocol::kUdp, Forwarding::kNat,
      {testsupport::makeBackend("2001:db8:2::1", 53, "02:00:00:00:05:01"),
       testsupport::makeBackend("2001:db8:2::2", 5300, "02:00:00:00:05:02")}));
  c.services.push_back(testsupport::makeService(
      "web6dr", "2001:db8::10", 80, Protocol::kTcp, Forwarding::kDr,
      {testsupport::makeBackend("2001:db8:3::1", 80, "02:00:00:00:06:01"),
       testsupport::makeBackend("2001:db8:3::2", 80, "02:00:00:00:06:02")}));
  c.services.push_back(
      testsupport::makeService("drained", "192.0.2.30", 80, Protocol::kTcp, Forwarding::kDr,
                               {testsupport::makeBackend("10.0.3.1", 80, "02:00:00:00:07:01", 0),
                                testsupport::makeBackend("10.0.3.2", 80, "02:00:00:00:07:02", 0)}));
  c.services.push_back(
      testsupport::makeService("empty", "192.0.2.31", 80, Protocol::kUdp, Forwarding::kNat, {}));
  validateConfig(c, "test");
  return c;
}

// One load balancer core: snapshot, pipeline, port.
struct Lb {
  explicit Lb(const Config& c, uint32_t flow_capacity = 1u << 16)
      : snap(buildSnapshot(c, ids, 1)), pipe(flow_capacity, kMaxBackendIds) {
    std::copy(kPortMac.bytes.begin(), kPortMac.bytes.end(), port.mac);
  }
  /** With the neighbours (MACs) the daemon would have resolved. */
  Lb(const Config& c, const RuntimeState& rt)
      : snap(buildSnapshot(c, ids, 1, nullptr, &rt)), pipe(1u << 12, kMaxBackendIds) {
    std::copy(kPortMac.bytes.begin(), kPortMac.bytes.end(), port.mac);
  }
  void reload(const Config& c) { snap = buildSnapshot(c, ids, snap->generation + 1); }

  IdRegistry ids;
  SnapshotPtr snap;
  Pipeline pipe;
  PortContext port;
};

// Run frames through a pipeline in bursts of at most kMaxBurst; the frames are rewritten in
// place. Returns the transmit flags.
std::vector<bool> run(Pipeline& pipe, const Snapshot& snap, PortContext& port,
                      std::vector<Bytes>& frames, uint64_t now) {
  std::vector<bool> out;
  std::vector<PacketRef> refs;
  for (size_t start = 0; start < frames.size(); start += Pipeline::kMaxBurst) {
    const size_t n = std::min(Pipeline::kMaxBurst, frames.size() - start);
    refs.assign(n, PacketRef{});
    for (size_t i = 0; i < n; ++i) {
      Bytes& f = frames[start + i];
      refs[i].data = f.data();
      refs[i].data_len = static_cast<uint32_t>(f.size());
      refs[i].pkt_len = static_cast<uint32_t>(f.size());
      refs[i].now_ns = now;
      refs[i].transmit = !static_cast<bool>(i % 2);  // garbage in: process() must set it
    }
    pipe.process(std::span<PacketRef>(refs), snap, port);
    for (const PacketRef& r : refs) {
      out.push_back(r.transmit);
    }
  }
  return out;
}

bool runOne(Pipeline& pipe, const Snapshot& snap, PortContext& port, Bytes& frame,
            uint64_t now) {
  std::vector<Bytes> frames = {frame};
  const bool tx = run(pipe, snap, port, frames, now)[0];
  frame = frames[0];
  return tx;
}

bool runOne(Lb& lb, Bytes& frame, uint64_t now) {
  return runOne(lb.pipe, *lb.snap, lb.port, frame, now);
}

// Client i of a flow to vip:vport; distinct 5-tuples for distinct i.
PacketSpec clientSpec(uint32_t i, const char* vip, uint16_t vport, uint8_t proto,
                      uint8_t flags = 0x10) {
  PacketSpec s;
  s.src_mac = kRouterMac;
  s.dst_mac = kPortMac;
  s.dst = ip(vip);
  if (s.dst.isV4()) {
    s.src = IpAddress::v4(0xc6330000u + (i / 50));  // 198.51.x.y
  } else {
    s.src = ip("2001:db8:ff::");
    s.src.bytes[12] = static_cast<uint8_t>(i >> 24);
    s.src.bytes[13] = static_cast<uint8_t>(i >> 16);
    s.src.bytes[14] = static_cast<uint8_t>(i >> 8);
    s.src.bytes[15] = static_cast<uint8_t>(i);
  }
  s.sport = static_cast<uint16_t>(20000 + (s.dst.isV4() ? i % 50 * 7 : 0));
  s.dport = vport;
  s.proto = proto;
  s.tcp_flags = flags;
  s.seq = 1000 + i;
  s.payload.assign(i % 7 + (proto == LB_PROTO_UDP ? 20 : 0), static_cast<uint8_t>(i));
  return s;
}

std::string macStr(const uint8_t* m) {
  MacAddress a;
  std::copy(m, m + 6, a.bytes.begin());
  return a.str();
}

// Backend id of address:port in a snapshot (0 if none).
uint32_t backendId(const Snapshot& snap, const IpAddress& addr, uint16_t port) {
  for (uint32_t id = 1; id < snap.backends.size(); ++id) {
    const BackendEntry& b = snap.backends[id];
    if (b.present && b.address == addr && b.port == port) {
      return id;
    }
  }
  return 0;
}

uint32_t backendIdByMac(const Snapshot& snap, const uint8_t* m) {
  for (uint32_t id = 1; id < snap.backends.size(); ++id) {
    const BackendEntry& b = snap.backends[id];
    if (b.present && std::memcmp(b.mac, m, 6) == 0) {
      return id;
    }
  }
  return 0;
}

uint64_t totalDrops(const WorkerCounters& c) {
  uint64_t n = 0;
  for (uint64_t d : c.drops) {
    n += d;
  }
  return n;
}

TEST(PipelineConfig, SnapshotFromTomlText) {
  // The same path as the daemon: TOML text -> Config -> Snapshot -> Pipeline. The text is the
  // fixture written out as a file, with a UDP timeout of its own and dns down to one backend.
  Config file = testsupport::threeServices();
  file.timeouts.udp_s = 30;
  std::erase_if(testsupport::service(file, "dns").backends,
                [](const BackendConfig& b) { return b.address != ip("10.0.1.21"); });
  const Config c = parseConfig(testsupport::configText(file), "test");
  Lb lb(c);
  EXPECT_EQ(lb.snap->udp_timeout_ns, 30 * kSec);
  const PacketSpec s = clientSpec(1, "192.0.2.53", 53, LB_PROTO_UDP);
  Bytes f = pktgen::build(s);
  ASSERT_TRUE(runOne(lb, f, kT0));
  PacketSpec expected = s;
  expected.dst = ip("10.0.1.21");
  expected.dport = 5353;
  expected.dst_mac = mac("02:00:00:00:02:21");
  expected.src_mac = kPortMac;
  EXPECT_EQ(f, pktgen::build(expected));
  // The UDP timeout from the file applies.
  f = pktgen::build(s);
  ASSERT_TRUE(runOne(lb, f, kT0 + 30 * kSec));
  EXPECT_EQ(lb.pipe.flows().stats().expired, 1u);
}

// ---------------------------------------------------------------------------------------------
// DR.

TEST(PipelineDr, OnlyTheMacsChange) {
  Lb lb(baseConfig());
  for (uint8_t flags : {uint8_t{0x02}, uint8_t{0x10}, uint8_t{0x18}}) {
    for (uint32_t i = 0; i < 50; ++i) {
      for (const char* vip : {"192.0.2.10", "2001:db8::10"}) {
        PacketSpec s = clientSpec(i, vip, 80, LB_PROTO_TCP, flags);
        if (i % 3 == 1) {
          s.vlans = {100};
        }
        const Bytes in = pktgen::build(s);
        Bytes out = in;
        ASSERT_TRUE(runOne(lb, out, kT0));
        ASSERT_EQ(out.size(), in.size());
        EXPECT_TRUE(std::equal(out.begin() + 12, out.end(), in.begin() + 12)) << i;
        EXPECT_EQ(macStr(out.data() + 6), kPortMac.str());
        const uint32_t bid = backendIdByMac(*lb.snap, out.data());
        ASSERT_NE(bid, 0u) << "dst MAC " << macStr(out.data()) << " is no backend's";
        // The backend belongs to the service of the VIP.
        const ServiceEntry& svc = lb.snap->services[lb.snap->backends[bid].service_id];
        EXPECT_EQ(svc.vip, ip(vip));
        // Byte-identical to a from-scratch frame with the new MACs.
        PacketSpec expected = s;
        std::copy(lb.snap->backends[bid].mac, lb.snap->backends[bid].mac + 6,
                  expected.dst_mac.bytes.begin());
        expected.src_mac = kPortMac;
        EXPECT_EQ(out, pktgen::build(expected));
      }
    }
  }
  EXPECT_EQ(totalDrops(lb.pipe.counters()), 0u);
  EXPECT_EQ(lb.pipe.counters().rx_packets, 3u * 50u * 2u);
}

TEST(PipelineDr, AllPacketsOfAFlowReachOneBackend) {
  Lb lb(baseConfig());
  std::map<uint32_t, uint32_t> chosen;  // flow -> backend id
  uint64_t now = kT0;
  // Ten rounds over 300 flows, interleaved, in bursts mixing flows.
  for (int round = 0; round < 10; ++round) {
    std::vector<Bytes> frames;
    for (uint32_t i = 0; i < 300; ++i) {
      frames.push_back(
          pktgen::build(clientSpec(i, "192.0.2.10", 80, LB_PROTO_TCP, round == 0 ? 0x02 : 0x10)));
    }
    const std::vector<bool> tx = run(lb.pipe, *lb.snap, lb.port, frames, now);
    for (uint32_t i = 0; i < 300; ++i) {
      ASSERT_TRUE(tx[i]);
      const uint32_t bid = backendIdByMac(*lb.snap, frames[i].data());
      ASSERT_NE(bid, 0u);
      auto [it, fresh] = chosen.emplace(i, bid);
      EXPECT_EQ(it->second, bid) << "flow " << i << " round " << round;
    }
    now += kSec;
  }
  // One flow each in the counters, ten packets each.
  uint64_t flows = 0;
  uint64_t packets = 0;
  for (uint32_t id = 1; id < lb.snap->backends.size(); ++id) {
    flows += lb.pipe.backendCounters()[id].flows;
    packets += lb.pipe.backendCounters()[id].packets;
  }
  EXPECT_EQ(flows, 300u);
  EXPECT_EQ(packets, 3000u);
  EXPECT_EQ(lb.pipe.flows().stats().active, 300u);
}

TEST(PipelineDr, ManyPacketsOfOneNewFlowInOneBurst) {
  // Stage 1 hashes the whole burst before stage 2 inserts: the second packet of a new flow in
  // the same burst must find the entry the first one created.
  Lb lb(baseConfig());
  std::vector<Bytes> frames;
  for (uint32_t k = 0; k < 64; ++k) {
    frames.push_back(pktgen::build(clientSpec(k % 4, "192.0.2.10", 80, LB_PROTO_TCP)));
  }
  const std::vector<bool> tx = run(lb.pipe, *lb.snap, lb.port, frames, kT0);
  std::map<uint32_t, uint32_t> chosen;
  for (uint32_t k = 0; k < 64; ++k) {
    ASSERT_TRUE(tx[k]);
    const uint32_t bid = backendIdByMac(*lb.snap, frames[k].data());
    auto [it, fresh] = chosen.emplace(k % 4, bid);
    EXPECT_EQ(it->second, bid);
  }
  uint64_t flows = 0;
  for (uint32_t id = 1; id < lb.snap->backends.size(); ++id) {
    flows += lb.pipe.backendCounters()[id].flows;
  }
  EXPECT_EQ(flows, 4u);
  EXPECT_EQ(lb.pipe.flows().stats().inserted, 4u);
}

TEST(PipelineDr, WeightedSpread) {
  Lb lb(baseConfig({webA(1), webB(1), webC(2)}), 1u << 18);
  constexpr uint32_t kFlows = 20000;
  std::map<uint32_t, uint32_t> count;
  std::vector<Bytes> frames;
  for (uint32_t i = 0; i < kFlows; ++i) {
    PacketSpec s = clientSpec(0, "192.0.2.10", 80, LB_PROTO_TCP, 0x02);
    s.src = IpAddress::v4(0x0a640000u + i * 13);  // 10.100.0.0 + 13 i
    s.sport = static_cast<uint16_t>(1024 + (i * 7919) % 60000);
    frames.push_back(pktgen::build(s));
  }
  const std::vector<bool> tx = run(lb.pipe, *lb.snap, lb.port, frames, kT0);
  for (uint32_t i = 0; i < kFlows; ++i) {
    ASSERT_TRUE(tx[i]);
    ++count[backendIdByMac(*lb.snap, frames[i].data())];
  }
  const uint32_t a = backendId(*lb.snap, ip("10.0.0.11"), 80);
  const uint32_t b = backendId(*lb.snap, ip("10.0.0.12"), 80);
  const uint32_t c = backendId(*lb.snap, ip("10.0.0.13"), 80);
  ASSERT_EQ(count.size(), 3u);
  const double share_a = 100.0 * count[a] / kFlows;
  const double share_b = 100.0 * count[b] / kFlows;
  const double share_c = 100.0 * count[c] / kFlows;
  EXPECT_NEAR(share_a, 25.0, 2.0);
  EXPECT_NEAR(share_b, 25.0, 2.0);
  EXPECT_NEAR(share_c, 50.0, 2.0);
  // The per-backend counters tell the same story.
  EXPECT_EQ(lb.pipe.backendCounters()[a].flows, count[a]);
  EXPECT_EQ(lb.pipe.backendCounters()[b].flows, count[b]);
  EXPECT_EQ(lb.pipe.backendCounters()[c].flows, count[c]);
  EXPECT_EQ(lb.pipe.backendCounters()[c].packets, count[c]);
}

// ---------------------------------------------------------------------------------------------
// NAT.

struct NatCase {
  const char* vip;
  uint16_t vport;
  uint8_t proto;
};

class PipelineNatTest : public ::testing::TestWithParam<NatCase> {};

TEST_P(PipelineNatTest, ForwardAndReplyOnAnotherCore) {
  const NatCase& nc = GetParam();
  const Config config = baseConfig();
  Lb lb(config);
  Pipeline core2(1u << 12, kMaxBackendIds);  // another core: its flow table is empty
  std::set<uint32_t> backends_seen;
  std::map<uint32_t, uint64_t> per_backend;
  for (uint32_t i = 0; i < 60; ++i) {
    const PacketSpec s = clientSpec(i, nc.vip, nc.vport, nc.proto, 0x18);
    Bytes f = pktgen::build(s);
    ASSERT_TRUE(runOne(lb, f, kT0));
    const auto d = pktgen::decode(f);
    ASSERT_TRUE(d.has_value());
    EXPECT_TRUE(d->ip_checksum_ok);
    EXPECT_TRUE(d->l4_checksum_ok);
    const uint32_t bid = backendId(*lb.snap, d->dst, d->dport);
    ASSERT_NE(bid, 0u) << d->dst.str() << ":" << d->dport << " is no backend";
    const BackendEntry& be = lb.snap->backends[bid];
    EXPECT_EQ(lb.snap->services[be.service_id].vip, ip(nc.vip));
    backends_seen.insert(bid);
    // Byte-identical to a from-scratch build toward the backend.
    PacketSpec expected = s;
    expected.dst = be.address;
    expected.dport = be.port;
    std::copy(be.mac, be.mac + 6, expected.dst_mac.bytes.begin());
    expected.src_mac = kPortMac;
    ASSERT_EQ(f, pktgen::build(expected)) << "flow " << i;

    // The backend answers, from the MAC Sluice sent its request to (a reply from anywhere else
    // is dropped: NatReplySource below); the reply is handled by the other core.
    PacketSpec reply;
    reply.src_mac = expected.dst_mac;
    reply.dst_mac = kPortMac;
    reply.src = be.address;
    reply.sport = be.port;
    reply.dst = s.src;
    reply.dport = s.sport;
    reply.proto = nc.proto;
    reply.tcp_flags = 0x12;
    reply.payload.assign(i % 5 + 3, 0xab);
    Bytes r = pktgen::build(reply);
    ASSERT_TRUE(runOne(core2, *lb.snap, lb.port, r, kT0));
    const auto rd = pktgen::decode(r);
    ASSERT_TRUE(rd.has_value());
    EXPECT_TRUE(rd->ip_checksum_ok);
    EXPECT_TRUE(rd->l4_checksum_ok);
    PacketSpec expected_reply = reply;
    expected_reply.src = ip(nc.vip);
    expected_reply.sport = nc.vport;
    expected_reply.dst_mac = kGatewayMac;
    expected_reply.src_mac = kPortMac;
    ASSERT_EQ(r, pktgen::build(expected_reply)) << "reply of flow " << i;
    ++per_backend[bid];
  }
  EXPECT_EQ(backends_seen.size(), 2u) << "60 flows should reach both backends";
  // Counters: forward on core 1, replies on core 2; NAT replies create no flow state.
  uint64_t fwd = 0;
  uint64_t flows = 0;
  uint64_t replies = 0;
  uint64_t replies_core1 = 0;
  for (uint32_t bid : backends_seen) {
    fwd += lb.pipe.backendCounters()[bid].packets;
    flows += lb.pipe.backendCounters()[bid].flows;
    replies += core2.backendCounters()[bid].reply_packets;
    replies_core1 += lb.pipe.backendCounters()[bid].reply_packets;
    EXPECT_EQ(core2.backendCounters()[bid].packets, 0u);
    EXPECT_EQ(core2.backendCounters()[bid].reply_packets, per_backend[bid]);
    EXPECT_EQ(lb.pipe.backendCounters()[bid].packets, per_backend[bid]);
    EXPECT_EQ(lb.pipe.backendCounters()[bid].flows, per_backend[bid]);
    EXPECT_GT(core2.backendCounters()[bid].reply_bytes, 0u);
  }
  EXPECT_EQ(fwd, 60u);
  EXPECT_EQ(flows, 60u);
  EXPECT_EQ(replies, 60u);
  EXPECT_EQ(replies_core1, 0u);
  EXPECT_EQ(core2.flows().stats().inserted, 0u);
  EXPECT_EQ(totalDrops(lb.pipe.counters()) + totalDrops(core2.counters()), 0u);
}

INSTANTIATE_TEST_SUITE_P(PipelineAll, PipelineNatTest,
                         ::testing::Values(NatCase{"192.0.2.53", 53, LB_PROTO_UDP},
                                           NatCase{"192.0.2.20", 443, LB_PROTO_TCP},
                                           NatCase{"2001:db8::10", 443, LB_PROTO_TCP},
                                           NatCase{"2001:db8::53", 53, LB_PROTO_UDP}),
                         [](const ::testing::TestParamInfo<NatCase>& info) {
                           return std::string(ip(info.param.vip).isV6() ? "Ipv6" : "Ipv4") +
                                  (info.param.proto == LB_PROTO_TCP ? "Tcp" : "Udp");
                         });

TEST(PipelineNat, ForwardWithVlanTagAndOddPayloads) {
  Lb lb(baseConfig());
  for (size_t payload : {0, 1, 2, 3, 255, 1001}) {
    for (const char* vip : {"192.0.2.53", "2001:db8::53"}) {
      PacketSpec s = clientSpec(7, vip, 53, LB_PROTO_UDP);
      s.vlans = {10, 20};
      s.payload.assign(payload, 0xc3);
      Bytes f = pktgen::build(s);
      ASSERT_TRUE(runOne(lb, f, kT0));
      const auto d = pktgen::decode(f);
      ASSERT_TRUE(d.has_value());
      EXPECT_TRUE(d->l4_checksum_ok && d->ip_checksum_ok);
      const uint32_t bid = backendId(*lb.snap, d->dst, d->dport);
      ASSERT_NE(bid, 0u);
      PacketSpec expected = s;
      expected.dst = lb.snap->backends[bid].address;
      expected.dport = lb.snap->backends[bid].port;
      std::copy(lb.snap->backends[bid].mac, lb.snap->backends[bid].mac + 6,
                expected.dst_mac.bytes.begin());
      expected.src_mac = kPortMac;
      EXPECT_EQ(f, pktgen::build(expected)) << payload;
    }
  }
}

TEST(PipelineNat, Ipv4UdpWithoutChecksumStaysWithout) {
  Lb lb(baseConfig());
  PacketSpec s = clientSpec(3, "192.0.2.53", 53, LB_PROTO_UDP);
  s.udp_zero_checksum = true;
  Bytes f = pktgen::build(s);
  ASSERT_TRUE(runOne(lb, f, kT0));
  const auto d = pktgen::decode(f);
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(d->udp_checksum_zero);
  EXPECT_TRUE(d->ip_checksum_ok);
}

TEST(PipelineNat, ReplyWithoutGatewayUsesLearnedMac) {
  const Config config = baseConfig({webA(), webB(), webC()}, /*gateway=*/false);
  Lb lb(config);
  ASSERT_FALSE(lb.snap->has_gateway_mac);
  const uint32_t bid = backendId(*lb.snap, ip("10.0.1.21"), 5353);
  ASSERT_NE(bid, 0u);
  PacketSpec reply;
  reply.src_mac = mac("02:00:00:00:02:21");
  reply.dst_mac = kPortMac;
  reply.src = ip("10.0.1.21");
  reply.sport = 5353;
  reply.dst = ip("198.51.0.1");
  reply.dport = 20007;
  reply.proto = LB_PROTO_UDP;
  reply.payload.assign(30, 1);
  // Nothing learned yet: no next hop.
  Bytes r = pktgen::build(reply);
  const Bytes r_in = r;
  EXPECT_FALSE(runOne(lb, r, kT0));
  EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_NO_NEXT_HOP], 1u);
  EXPECT_EQ(lb.pipe.backendCounters()[bid].reply_packets, 0u);

  // A DR client packet teaches nothing (only NAT services learn the router).
  Bytes dr = pktgen::build(clientSpec(1, "192.0.2.10", 80, LB_PROTO_TCP));
  ASSERT_TRUE(runOne(lb, dr, kT0));
  r = r_in;
  EXPECT_FALSE(runOne(lb, r, kT0));
  EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_NO_NEXT_HOP], 2u);

  // A NAT client packet from the router teaches its MAC.
  const MacAddress router = mac("02:00:00:00:77:01");
  PacketSpec c = clientSpec(1, "192.0.2.53", 53, LB_PROTO_UDP);
  c.src_mac = router;
  Bytes cf = pktgen::build(c);
  ASSERT_TRUE(runOne(lb, cf, kT0));
  r = r_in;
  ASSERT_TRUE(runOne(lb, r, kT0 + 1));
  PacketSpec expected = reply;
  expected.src = ip("192.0.2.53");
  expected.sport = 53;
  expected.dst_mac = router;
  expected.src_mac = kPortMac;
  EXPECT_EQ(r, pktgen::build(expected));
  EXPECT_EQ(lb.pipe.backendCounters()[bid].reply_packets, 1u);

  // Another core of the same port sees it too; a newer router MAC replaces it.
  Pipeline core2(1024, kMaxBackendIds);
  r = r_in;
  ASSERT_TRUE(runOne(core2, *lb.snap, lb.port, r, kT0 + 2));
  EXPECT_EQ(macStr(r.data()), router.str());
  const MacAddress router2 = mac("02:00:00:00:77:02");
  c.src_mac = router2;
  cf = pktgen::build(c);
  ASSERT_TRUE(runOne(core2, *lb.snap, lb.port, cf, kT0 + 3));
  r = r_in;
  ASSERT_TRUE(runOne(lb, r, kT0 + 4));
  EXPECT_EQ(macStr(r.data()), router2.str());

  // A different port (PortContext) has learned nothing.
  PortContext other;
  std::copy(kPortMac.bytes.begin(), kPortMac.bytes.end(), other.mac);
  r = r_in;
  EXPECT_FALSE(runOne(lb.pipe, *lb.snap, other, r, kT0 + 5));
  EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_NO_NEXT_HOP], 3u);
}

TEST(PipelineNat, ReplyFromUnknownPortIsNoService) {
  Lb lb(baseConfig());
  PacketSpec reply;
  reply.dst_mac = kPortMac;
  reply.src = ip("10.0.1.21");
  reply.sport = 5354;  // the backend listens on 5353
  reply.dst = ip("198.51.0.1");
  reply.dport = 20007;
  reply.proto = LB_PROTO_UDP;
  Bytes r = pktgen::build(reply);
  const Bytes in = r;
  EXPECT_FALSE(runOne(lb, r, kT0));
  EXPECT_EQ(r, in);
  // Right port, wrong protocol.
  reply.sport = 5353;
  reply.proto = LB_PROTO_TCP;
  r = pktgen::build(reply);
  EXPECT_FALSE(runOne(lb, r, kT0));
  EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_NO_SERVICE], 2u);
}

// ---------------------------------------------------------------------------------------------
// Where NAT replies may come from. The reply rewrite is stateless, so without a check any frame
// with a NAT backend's address and port as its source would leave from the VIP, to any
// destination: a reflection for whoever can spoof a backend's address. A reply (or an ICMP error
// from behind NAT) is taken only from the backend's next hop, the MAC Sluice sends the backend's
// requests to; anything else is dropped as nat_reply_mac, untouched.

MacAddress macOf(const BackendEntry& b) {
  MacAddress m;
  std::copy(b.mac, b.mac + 6, m.bytes.begin());
  return m;
}

// A reply of backend:port to the client 198.51.0.1:20007 (or 2001:db8:ff::1), sent from `from`.
PacketSpec natReplyFrom(const IpAddress& backend, uint16_t port, uint8_t proto,
                        const MacAddress& from) {
  PacketSpec r;
  r.src_mac = from;
  r.dst_mac = kPortMac;
  r.src = backend;
  r.sport = port;
  r.dst = backend.isV4() ? ip("198.51.0.1") : ip("2001:db8:ff::1");
  r.dport = 20007;
  r.proto = proto;
  r.tcp_flags = 0x12;
  r.payload.assign(21, 0x7e);
  return r;
}

TEST(NatReplySource, OnlyTheBackendsNextHopMayReply) {
  struct Case {
    const char* vip;
    uint16_t vport;
    const char* backend;
    uint16_t port;
    uint8_t proto;
  };
  const Case cases[] = {{"192.0.2.53", 53, "10.0.1.21", 5353, LB_PROTO_UDP},
                        {"192.0.2.20", 443, "10.0.2.1", 8443, LB_PROTO_TCP},
                        {"2001:db8::10", 443, "2001:db8:1::11", 8443, LB_PROTO_TCP},
                        {"2001:db8::53", 53, "2001:db8:2::2", 5300, LB_PROTO_UDP}};
  // accept_any_mac (replay, a promiscuous port) concerns the destination MAC only: the source
  // is checked all the same.
  for (const bool any_mac : {false, true}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(c.backend) + ":" + std::to_string(c.port) +
                   (any_mac ? ", any MAC accepted" : ""));
      Lb lb(baseConfig());
      lb.port.accept_any_mac = any_mac;
      const uint32_t bid = backendId(*lb.snap, ip(c.backend), c.port);
      ASSERT_NE(bid, 0u);
      const BackendEntry& b = lb.snap->backends[bid];
      uint32_t other = 0;  // the service's other backend
      for (uint32_t id : lb.snap->services[b.service_id].backend_ids) {
        other = id != bid ? id : other;
      }
      ASSERT_NE(other, 0u);
      // From the clients' router (where a spoofer's frames arrive), the gateway, the service's
      // other backend, a host nobody knows: none is where this backend's replies come from.
      const MacAddress spoofers[] = {kRouterMac, kGatewayMac, macOf(lb.snap->backends[other]),
                                     mac("02:00:00:00:99:99")};
      for (const MacAddress& from : spoofers) {
        Bytes r = pktgen::build(natReplyFrom(b.address, c.port, c.proto, from));
        const Bytes in = r;
        EXPECT_FALSE(runOne(lb, r, kT0)) << "from " << from.str();
        EXPECT_EQ(r, in) << "from " << from.str() << ": not rewritten";
      }
      EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_NAT_REPLY_MAC], 4u);
      EXPECT_EQ(totalDrops(lb.pipe.counters()), 4u);
      EXPECT_EQ(lb.pipe.counters().passed, 0u) << "nor handed to the kernel";
      EXPECT_EQ(lb.pipe.backendCounters()[bid].reply_packets, 0u);

      // From the backend's next hop: rewritten to come from the VIP, as ever.
      const PacketSpec real = natReplyFrom(b.address, c.port, c.proto, macOf(b));
      Bytes r = pktgen::build(real);
      ASSERT_TRUE(runOne(lb, r, kT0));
      PacketSpec want = real;
      want.src = ip(c.vip);
      want.sport = c.vport;
      want.src_mac = kPortMac;
      want.dst_mac = kGatewayMac;
      EXPECT_EQ(r, pktgen::build(want));
      EXPECT_EQ(lb.pipe.backendCounters()[bid].reply_packets, 1u);
      EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_NAT_REPLY_MAC], 4u);
    }
  }
}

// A routed backend's requests go to its gateway, so its replies come from the gateway: accepted
// from there (whatever the backend's own MAC is), and from nowhere else. The request and the
// check take the one MAC of the snapshot, so they cannot disagree. (That gateway is also where
// the clients are: a spoofed reply from it cannot be told apart; docs/architecture.md.)
TEST(NatReplySource, ARoutedBackendsRepliesComeFromItsGateway) {
  Config c = baseConfig({webA(), webB(), webC()}, /*gateway=*/false);
  c.dataplane.addresses = {*IpPrefix::parse("198.51.100.2/24")};
  c.dataplane.gateways = {ip("198.51.100.1")};
  for (BackendConfig& b : testsupport::service(c, "api").backends) {
    b.mac.reset();  // 10.0.2.0/24 is off-link: through the gateway
  }
  validateConfig(c, "test");
  RuntimeState rt;
  rt.neighbours[ip("198.51.100.1")] = kRouterMac;
  Lb lb(c, rt);
  Bytes req = pktgen::build(clientSpec(1, "192.0.2.20", 443, LB_PROTO_TCP, 0x02));
  ASSERT_TRUE(runOne(lb, req, kT0));
  EXPECT_EQ(macStr(req.data()), kRouterMac.str()) << "the request went to the gateway";
  const auto d = pktgen::decode(req);
  ASSERT_TRUE(d.has_value());
  const uint32_t bid = backendId(*lb.snap, d->dst, d->dport);
  ASSERT_NE(bid, 0u);

  const PacketSpec real = natReplyFrom(d->dst, d->dport, LB_PROTO_TCP, kRouterMac);
  Bytes r = pktgen::build(real);
  ASSERT_TRUE(runOne(lb, r, kT0));
  PacketSpec want = real;
  want.src = ip("192.0.2.20");
  want.sport = 443;
  want.src_mac = kPortMac;
  want.dst_mac = kRouterMac;
  EXPECT_EQ(r, pktgen::build(want));
  EXPECT_EQ(lb.pipe.backendCounters()[bid].reply_packets, 1u);

  for (const MacAddress& from : {mac("02:00:00:00:03:01"), mac("02:00:00:00:03:02"), kClientMac}) {
    r = pktgen::build(natReplyFrom(d->dst, d->dport, LB_PROTO_TCP, from));
    const Bytes in = r;
    EXPECT_FALSE(runOne(lb, r, kT0)) << from.str();
    EXPECT_EQ(r, in);
  }
  EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_NAT_REPLY_MAC], 3u);
  EXPECT_EQ(lb.pipe.backendCounters()[bid].reply_packets, 1u);
}

// A backend whose next hop is not resolved (no configured MAC, nothing from ARP/ND yet) gets no
// requests: nothing can say where its replies would come from, so none is taken, not even from
// the all-zero MAC the snapshot holds for it. Once resolved, replies come from the resolved MAC.
TEST(NatReplySource, AnUnresolvedBackendsRepliesAreDropped) {
  Config c = baseConfig();
  c.dataplane.addresses = {*IpPrefix::parse("10.0.1.2/24")};  // the dns backends are on-link
  testsupport::service(c, "dns").backends[0].mac.reset();     // 10.0.1.21
  validateConfig(c, "test");
  Lb unresolved(c, RuntimeState{});
  const uint32_t bid = backendId(*unresolved.snap, ip("10.0.1.21"), 5353);
  ASSERT_NE(bid, 0u);
  ASSERT_EQ(unresolved.snap->backends[bid].state, BackendState::kUnresolved);
  for (const MacAddress& from : {MacAddress{}, mac("02:00:00:00:02:21"), kGatewayMac}) {
    Bytes r = pktgen::build(natReplyFrom(ip("10.0.1.21"), 5353, LB_PROTO_UDP, from));
    const Bytes in = r;
    EXPECT_FALSE(runOne(unresolved, r, kT0)) << from.str();
    EXPECT_EQ(r, in);
  }
  EXPECT_EQ(unresolved.pipe.counters().drops[LB_DROP_NAT_REPLY_MAC], 3u);
  EXPECT_EQ(totalDrops(unresolved.pipe.counters()), 3u);

  RuntimeState rt;
  rt.neighbours[ip("10.0.1.21")] = mac("02:00:00:00:02:99");
  Lb resolved(c, rt);
  Bytes r =
      pktgen::build(natReplyFrom(ip("10.0.1.21"), 5353, LB_PROTO_UDP, mac("02:00:00:00:02:99")));
  EXPECT_TRUE(runOne(resolved, r, kT0));
  r = pktgen::build(natReplyFrom(ip("10.0.1.21"), 5353, LB_PROTO_UDP, mac("02:00:00:00:02:21")));
  EXPECT_FALSE(runOne(resolved, r, kT0));
  EXPECT_EQ(resolved.pipe.counters().drops[LB_DROP_NAT_REPLY_MAC], 1u);
}

// An ICMP error from behind NAT is sent to the client from the VIP as a reply is, so it is taken
// from the same place only: the backend's next hop (the backend itself, or a router on its side
// of that hop). From elsewhere it would reflect as a reply would: dropped, untouched.
TEST(NatReplySource, AnErrorFromBehindNatFromAnotherMacIsDropped) {
  Lb lb(baseConfig());
  uint64_t dropped = 0;
  uint64_t forwarded = 0;
  for (const auto& [vip, backend, port] :
       std::vector<std::tuple<const char*, const char*, uint16_t>>{
           {"192.0.2.53", "10.0.1.22", 5353}, {"2001:db8::53", "2001:db8:2::1", 53}}) {
    SCOPED_TRACE(backend);
    const uint32_t bid = backendId(*lb.snap, ip(backend), port);
    ASSERT_NE(bid, 0u);
    const BackendEntry& b = lb.snap->backends[bid];
    const bool v4 = b.address.isV4();
    PacketSpec sent = clientSpec(9, vip, 53, LB_PROTO_UDP);  // as Sluice sent it on
    sent.dst = b.address;
    sent.dport = b.port;
    PacketSpec o;
    o.dst_mac = kPortMac;
    o.src = b.address;
    o.dst = sent.src;
    auto error = [&] {
      return v4 ? pktgen::buildIcmpError(o, 3, 3, 0, sent, 548)
                : pktgen::buildIcmpError(o, 1, 4, 0, sent, 1232);
    };
    for (const MacAddress& from : {kRouterMac, kGatewayMac, mac("02:00:00:00:99:99")}) {
      o.src_mac = from;
      Bytes f = error();
      const Bytes in = f;
      EXPECT_FALSE(runOne(lb, f, kT0)) << from.str();
      EXPECT_EQ(f, in) << from.str() << ": not rewritten";
      ++dropped;
    }
    EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_NAT_REPLY_MAC], dropped);
    EXPECT_EQ(lb.pipe.counters().icmp_forwarded, forwarded);
    EXPECT_EQ(lb.pipe.counters().passed, 0u);
    EXPECT_EQ(lb.pipe.backendCounters()[bid].reply_packets, 0u);

    o.src_mac = macOf(b);
    Bytes f = error();
    ASSERT_TRUE(runOne(lb, f, kT0));
    ++forwarded;
    const auto icmp = pktgen::decodeIcmp(f);
    ASSERT_TRUE(icmp.has_value());
    EXPECT_EQ(icmp->src, ip(vip));
    EXPECT_EQ(icmp->dst_mac, kGatewayMac);
    EXPECT_EQ(lb.pipe.counters().icmp_forwarded, forwarded);
    EXPECT_EQ(lb.pipe.backendCounters()[bid].reply_packets, 1u);
  }
  EXPECT_EQ(totalDrops(lb.pipe.counters()), dropped);
}

// ---------------------------------------------------------------------------------------------
// Drops and counters.

TEST(PipelineDrops, CountedByReasonAndNotTransmitted) {
  Lb lb(baseConfig());
  std::vector<Bytes> frames;
  std::vector<int> expected;
  auto add = [&](Bytes f, int reason) {
    frames.push_back(std::move(f));
    expected.push_back(reason);
  };
  const Bytes good = pktgen::build(clientSpec(1, "192.0.2.10", 80, LB_PROTO_TCP));
  // Parser drops.
  add(Bytes(good.begin(), good.begin() + 10), LB_DROP_TRUNCATED);
  add(Bytes(good.begin(), good.begin() + 30), LB_DROP_TRUNCATED);
  {
    Bytes f = good;
    f[12] = 0x08;
    f[13] = 0x06;
    add(f, LB_DROP_NON_IP);
  }
  {
    Bytes f = good;
    f[14] = 0x44;  // IHL 4
    add(f, LB_DROP_BAD_IP_HEADER);
  }
  add(Bytes(good.begin(), good.end() - 1), LB_DROP_BAD_IP_LENGTH);
  {
    Bytes f = good;
    f[14 + 20 + 12] = 0x40;  // TCP data offset 4
    add(f, LB_DROP_BAD_L4_HEADER);
  }
  {
    PacketSpec s = clientSpec(1, "2001:db8::10", 80, LB_PROTO_TCP);
    s.ipv6_ext.assign(7, 60);
    add(pktgen::build(s), LB_DROP_IPV6_EXT_LIMIT);
  }
  // Pipeline drops.
  add(pktgen::build(clientSpec(1, "192.0.2.99", 80, LB_PROTO_TCP)), LB_DROP_NO_SERVICE);
  add(pktgen::build(clientSpec(1, "192.0.2.10", 81, LB_PROTO_TCP)), LB_DROP_NO_SERVICE);
  add(pktgen::build(clientSpec(1, "192.0.2.10", 80, LB_PROTO_UDP)), LB_DROP_NO_SERVICE);
  add(pktgen::build(clientSpec(1, "2001:db8::11", 80, LB_PROTO_TCP)), LB_DROP_NO_SERVICE);
  {
    PacketSpec s = clientSpec(1, "192.0.2.10", 80, LB_PROTO_TCP);
    s.proto = 1;  // ICMP to a VIP
    add(pktgen::build(s), LB_DROP_NO_SERVICE);
  }
  {
    PacketSpec s = clientSpec(1, "192.0.2.10", 80, LB_PROTO_TCP);
    s.more_fragments = true;
    add(pktgen::build(s), LB_DROP_FRAGMENT);
    s.more_fragments = false;
    s.frag_offset = 100;
    add(pktgen::build(s), LB_DROP_FRAGMENT);
    s.dst = ip("192.0.2.99");
    add(pktgen::build(s), LB_DROP_NO_SERVICE);
  }
  {
    PacketSpec s = clientSpec(1, "2001:db8::53", 53, LB_PROTO_UDP);
    s.ipv6_ext = {44};
    s.more_fragments = true;
    add(pktgen::build(s), LB_DROP_FRAGMENT);
    s.dst = ip("2001:db8::54");
    add(pktgen::build(s), LB_DROP_NO_SERVICE);
  }
  {
    // A fragment to a VIP address on a port no service uses is still a fragment for a VIP.
    PacketSpec s = clientSpec(1, "192.0.2.53", 9999, LB_PROTO_TCP);
    s.frag_offset = 8;
    add(pktgen::build(s), LB_DROP_FRAGMENT);
  }
  add(pktgen::build(clientSpec(1, "192.0.2.30", 80, LB_PROTO_TCP, 0x02)), LB_DROP_NO_BACKEND);
  add(pktgen::build(clientSpec(2, "192.0.2.30", 80, LB_PROTO_TCP, 0x02)), LB_DROP_NO_BACKEND);
  add(pktgen::build(clientSpec(1, "192.0.2.31", 80, LB_PROTO_UDP)), LB_DROP_NO_BACKEND);
  // And some good ones in between.
  add(good, -1);
  add(pktgen::build(clientSpec(2, "192.0.2.53", 53, LB_PROTO_UDP)), -1);

  std::vector<Bytes> copies = frames;
  const std::vector<bool> tx = run(lb.pipe, *lb.snap, lb.port, copies, kT0);
  uint64_t want[LB_DROP__COUNT] = {};
  for (size_t i = 0; i < frames.size(); ++i) {
    EXPECT_EQ(tx[i], expected[i] < 0) << "frame " << i;
    if (expected[i] >= 0) {
      ++want[expected[i]];
      EXPECT_EQ(copies[i], frames[i]) << "a dropped frame was modified: " << i;
    }
  }
  for (int r = 0; r < LB_DROP__COUNT; ++r) {
    EXPECT_EQ(lb.pipe.counters().drops[r], want[r]) << lb_drop_reason_name(r);
  }
  EXPECT_EQ(lb.pipe.counters().rx_packets, frames.size());
  // Dropped packets create no flow state and count toward no backend.
  EXPECT_EQ(lb.pipe.flows().stats().inserted, 2u);
  uint64_t packets = 0;
  for (const BackendCounters& bc : lb.pipe.backendCounters()) {
    packets += bc.packets;
  }
  EXPECT_EQ(packets, 2u);
}

TEST(PipelineCounters, PerBackend) {
  Lb lb(baseConfig());
  // 5 TCP flows x 4 packets to the DR service.
  uint64_t bytes = 0;
  for (int k = 0; k < 4; ++k) {
    for (uint32_t i = 0; i < 5; ++i) {
      Bytes f = pktgen::build(clientSpec(i, "192.0.2.10", 80, LB_PROTO_TCP, k == 0 ? 0x02 : 0x10));
      bytes += f.size();
      ASSERT_TRUE(runOne(lb, f, kT0 + k));
    }
  }
  uint64_t flows = 0;
  uint64_t packets = 0;
  uint64_t counted_bytes = 0;
  for (const char* addr : {"10.0.0.11", "10.0.0.12", "10.0.0.13"}) {
    const BackendCounters& bc = lb.pipe.backendCounters()[backendId(*lb.snap, ip(addr), 80)];
    flows += bc.flows;
    packets += bc.packets;
    counted_bytes += bc.bytes;
    EXPECT_EQ(bc.packets, 4 * bc.flows) << addr;
    EXPECT_EQ(bc.reply_packets, 0u);
  }
  EXPECT_EQ(flows, 5u);
  EXPECT_EQ(packets, 20u);
  EXPECT_EQ(counted_bytes, bytes);
  EXPECT_EQ(lb.pipe.counters().rx_packets, 20u);
  EXPECT_EQ(totalDrops(lb.pipe.counters()), 0u);
}

// ---------------------------------------------------------------------------------------------
// Flow pinning across configuration changes.

constexpr uint32_t kPinFlows = 1000;

std::vector<uint32_t> sendWebFlows(Lb& lb, uint64_t now, uint8_t flags, uint32_t first = 0,
                                   uint32_t count = kPinFlows) {
  std::vector<Bytes> frames;
  for (uint32_t i = first; i < first + count; ++i) {
    frames.push_back(pktgen::build(clientSpec(i, "192.0.2.10", 80, LB_PROTO_TCP, flags)));
  }
  const std::vector<bool> tx = run(lb.pipe, *lb.snap, lb.port, frames, now);
  std::vector<uint32_t> out;
  for (size_t i = 0; i < frames.size(); ++i) {
    EXPECT_TRUE(tx[i]) << i;
    out.push_back(backendIdByMac(*lb.snap, frames[i].data()));
  }
  return out;
}

TEST(PipelinePinning, RemovedBackendFlowsMoveOthersStay) {
  Lb lb(baseConfig({webA(), webB(), webC()}));
  const uint32_t a = backendId(*lb.snap, ip("10.0.0.11"), 80);
  const uint32_t b = backendId(*lb.snap, ip("10.0.0.12"), 80);
  const uint32_t c = backendId(*lb.snap, ip("10.0.0.13"), 80);
  const std::vector<uint32_t> before = sendWebFlows(lb, kT0, 0x02);
  const auto on_c = static_cast<uint64_t>(std::count(before.begin(), before.end(), c));
  ASSERT_GT(on_c, 200u);
  ASSERT_LT(on_c, 470u);

  // C removed and D added (same registry): ids of A and B stay.
  lb.reload(baseConfig({webA(), webB(), webD()}));
  ASSERT_EQ(backendId(*lb.snap, ip("10.0.0.11"), 80), a);
  ASSERT_EQ(backendId(*lb.snap, ip("10.0.0.12"), 80), b);
  const uint32_t d = backendId(*lb.snap, ip("10.0.0.14"), 80);
  ASSERT_NE(d, c);
  // Where a fresh core would send each flow now: some A and B flows would go to D, so the
  // flow table is what keeps them.
  Lb fresh(baseConfig({webA(), webB(), webC()}));
  fresh.reload(baseConfig({webA(), webB(), webD()}));
  const std::vector<uint32_t> fresh_choice = sendWebFlows(fresh, kT0, 0x10);

  const uint64_t resched_before = lb.pipe.counters().flows_rescheduled;
  const std::vector<uint32_t> after = sendWebFlows(lb, kT0 + kSec, 0x10);
  uint64_t ab_that_fresh_would_move = 0;
  for (uint32_t i = 0; i < kPinFlows; ++i) {
    if (before[i] == c) {
      EXPECT_NE(after[i], c) << i;
      EXPECT_EQ(after[i], fresh_choice[i]) << "a moved flow goes where Maglev says: " << i;
    } else {
      EXPECT_EQ(after[i], before[i]) << "flow " << i << " lost its backend";
      ab_that_fresh_would_move += fresh_choice[i] != before[i] ? 1 : 0;
    }
  }
  EXPECT_GT(ab_that_fresh_would_move, 0u);
  EXPECT_EQ(lb.pipe.counters().flows_rescheduled - resched_before, on_c);
  // Once moved they stay; no further rescheduling.
  const std::vector<uint32_t> again = sendWebFlows(lb, kT0 + 2 * kSec, 0x10);
  EXPECT_EQ(again, after);
  EXPECT_EQ(lb.pipe.counters().flows_rescheduled - resched_before, on_c);
}

TEST(PipelineCounters, ActiveFlowsPerBackendFollowInsertsMovesAndExpiry) {
  // What `sluicectl list` shows as active flows: per backend, the flows pinned to it now.
  Lb lb(baseConfig({webA(), webB(), webC()}));
  const uint32_t a = backendId(*lb.snap, ip("10.0.0.11"), 80);
  const uint32_t b = backendId(*lb.snap, ip("10.0.0.12"), 80);
  const uint32_t c = backendId(*lb.snap, ip("10.0.0.13"), 80);
  const std::vector<uint32_t> first = sendWebFlows(lb, kT0, 0x02);
  auto active = [&](uint32_t id) { return lb.pipe.backendCounters()[id].active.get(); };
  auto count = [](const std::vector<uint32_t>& v, uint32_t id) {
    return static_cast<uint64_t>(std::count(v.begin(), v.end(), id));
  };
  EXPECT_EQ(active(a), count(first, a));
  EXPECT_EQ(active(b), count(first, b));
  EXPECT_EQ(active(c), count(first, c));
  EXPECT_EQ(active(a) + active(b) + active(c), lb.pipe.flows().stats().active.get());

  // C removed: its flows move to A and B as their next packets arrive.
  lb.reload(baseConfig({webA(), webB()}));
  const std::vector<uint32_t> second = sendWebFlows(lb, kT0 + kSec, 0x10);
  EXPECT_EQ(active(c), 0u);
  EXPECT_EQ(active(a), count(second, a));
  EXPECT_EQ(active(b), count(second, b));
  EXPECT_EQ(active(a) + active(b), kPinFlows);

  // Everything idles out: the sweep brings every backend back to zero.
  const uint64_t later = kT0 + 2000 * kSec;
  for (uint32_t i = 0; i <= lb.pipe.flows().capacity() / FlowTable::kBucketEntries; ++i) {
    lb.pipe.sweep(later, 1);
  }
  EXPECT_EQ(lb.pipe.flows().stats().active.get(), 0u);
  EXPECT_EQ(active(a), 0u);
  EXPECT_EQ(active(b), 0u);
}

TEST(PipelinePinning, RemovedOnlyNoNewBackend) {
  // The brief's case exactly: C removed, nothing added.
  Lb lb(baseConfig({webA(), webB(), webC()}));
  const uint32_t c = backendId(*lb.snap, ip("10.0.0.13"), 80);
  const std::vector<uint32_t> before = sendWebFlows(lb, kT0, 0x02);
  const auto on_c = static_cast<uint64_t>(std::count(before.begin(), before.end(), c));
  lb.reload(baseConfig({webA(), webB()}));
  ASSERT_EQ(backendId(*lb.snap, ip("10.0.0.13"), 80), 0u);
  const std::vector<uint32_t> after = sendWebFlows(lb, kT0 + kSec, 0x10);
  for (uint32_t i = 0; i < kPinFlows; ++i) {
    if (before[i] == c) {
      EXPECT_NE(after[i], c);
      EXPECT_NE(after[i], 0u);
    } else {
      EXPECT_EQ(after[i], before[i]) << i;
    }
  }
  EXPECT_EQ(lb.pipe.counters().flows_rescheduled, on_c);
  EXPECT_EQ(totalDrops(lb.pipe.counters()), 0u);
}

TEST(PipelinePinning, ReusedBackendIdDoesNotInheritFlows) {
  // C removed (no packets in between), then D added: D gets C's old id with a new epoch. The
  // flows pinned to C must be rescheduled, not silently handed to D.
  Lb lb(baseConfig({webA(), webB(), webC()}));
  const uint32_t c = backendId(*lb.snap, ip("10.0.0.13"), 80);
  const std::vector<uint32_t> before = sendWebFlows(lb, kT0, 0x02);
  const auto on_c = static_cast<uint64_t>(std::count(before.begin(), before.end(), c));
  lb.reload(baseConfig({webA(), webB()}));
  lb.reload(baseConfig({webA(), webB(), webD()}));
  const uint32_t d = backendId(*lb.snap, ip("10.0.0.14"), 80);
  ASSERT_EQ(d, c) << "the registry is expected to hand out the freed id again";
  ASSERT_NE(lb.snap->backends[d].epoch, 1u);
  const std::vector<uint32_t> after = sendWebFlows(lb, kT0 + kSec, 0x10);
  EXPECT_EQ(lb.pipe.counters().flows_rescheduled, on_c);
  // D's counters start from zero (they are claimed for D's epoch): C's flows rescheduled onto D
  // count as new flows of D, C's old counts do not.
  uint64_t c_flows_to_d = 0;
  for (uint32_t i = 0; i < kPinFlows; ++i) {
    if (before[i] != c) {
      EXPECT_EQ(after[i], before[i]) << i;
    } else {
      c_flows_to_d += after[i] == d ? 1 : 0;
    }
  }
  EXPECT_EQ(lb.pipe.backendCounters()[d].epoch.get(), lb.snap->backends[d].epoch);
  EXPECT_EQ(lb.pipe.backendCounters()[d].flows, c_flows_to_d);
  EXPECT_EQ(lb.pipe.backendCounters()[d].active, c_flows_to_d);
}

TEST(PipelinePinning, DrainedBackendKeepsItsFlowsGetsNoNewOnes) {
  Lb lb(baseConfig({webA(), webB(), webC()}));
  const uint32_t c = backendId(*lb.snap, ip("10.0.0.13"), 80);
  const std::vector<uint32_t> before = sendWebFlows(lb, kT0, 0x02);
  const auto on_c = static_cast<uint64_t>(std::count(before.begin(), before.end(), c));
  ASSERT_GT(on_c, 0u);
  const uint64_t c_flows = lb.pipe.backendCounters()[c].flows;

  lb.reload(baseConfig({webA(), webB(), webC(0)}));
  ASSERT_EQ(backendId(*lb.snap, ip("10.0.0.13"), 80), c);
  ASSERT_EQ(lb.snap->backends[c].weight, 0u);
  const std::vector<uint32_t> after = sendWebFlows(lb, kT0 + kSec, 0x10);
  EXPECT_EQ(after, before);  // every flow, C's included, keeps its backend
  EXPECT_EQ(lb.pipe.counters().flows_rescheduled, 0u);
  EXPECT_EQ(lb.pipe.backendCounters()[c].packets, 2 * on_c);

  // New flows never reach C.
  const std::vector<uint32_t> fresh = sendWebFlows(lb, kT0 + kSec, 0x02, kPinFlows, 3000);
  EXPECT_EQ(std::count(fresh.begin(), fresh.end(), c), 0);
  EXPECT_EQ(lb.pipe.backendCounters()[c].flows, c_flows);
}

// ---------------------------------------------------------------------------------------------
// Timeouts and TCP state.

uint64_t flowsOf(const Lb& lb) {
  uint64_t n = 0;
  for (const BackendCounters& bc : lb.pipe.backendCounters()) {
    n += bc.flows;
  }
  return n;
}

TEST(PipelineTimeouts, FinLingerThenExpiry) {
  for (uint8_t closer : {uint8_t{0x11}, uint8_t{0x04}, uint8_t{0x14}}) {  // FIN|ACK, RST, RST|ACK
    Lb lb(baseConfig());
    const uint64_t fin = 10 * kSec;
    Bytes f = pktgen::build(clientSpec(5, "192.0.2.10", 80, LB_PROTO_TCP, 0x02));
    ASSERT_TRUE(runOne(lb, f, kT0));
    f = pktgen::build(clientSpec(5, "192.0.2.10", 80, LB_PROTO_TCP, 0x10));
    ASSERT_TRUE(runOne(lb, f, kT0 + kSec / 1000));  // the handshake's ACK: established
    f = pktgen::build(clientSpec(5, "192.0.2.10", 80, LB_PROTO_TCP, 0x10));
    ASSERT_TRUE(runOne(lb, f, kT0 + 100 * kSec));  // far below 900 s
    EXPECT_EQ(flowsOf(lb), 1u);
    const uint64_t t_fin = kT0 + 200 * kSec;
    f = pktgen::build(clientSpec(5, "192.0.2.10", 80, LB_PROTO_TCP, closer));
    ASSERT_TRUE(runOne(lb, f, t_fin));
    EXPECT_EQ(flowsOf(lb), 1u);
    // Lingering: the last ACK just inside the FIN timeout still belongs to the flow, and
    // refreshes the linger from its own time.
    f = pktgen::build(clientSpec(5, "192.0.2.10", 80, LB_PROTO_TCP, 0x10));
    ASSERT_TRUE(runOne(lb, f, t_fin + fin - 1));
    EXPECT_EQ(flowsOf(lb), 1u);
    EXPECT_EQ(lb.pipe.flows().stats().expired, 0u);
    // At last packet + FIN timeout it is gone: the next packet makes a new flow.
    const uint64_t t_gone = t_fin + fin - 1 + fin;
    f = pktgen::build(clientSpec(5, "192.0.2.10", 80, LB_PROTO_TCP, 0x10));
    ASSERT_TRUE(runOne(lb, f, t_gone));
    EXPECT_EQ(flowsOf(lb), 2u) << "closer flags " << int{closer};
    EXPECT_EQ(lb.pipe.flows().stats().expired, 1u);
  }
}

TEST(PipelineTimeouts, FinFlowIsSweptAfterLinger) {
  Lb lb(baseConfig());
  Bytes f = pktgen::build(clientSpec(5, "192.0.2.10", 80, LB_PROTO_TCP, 0x11));
  ASSERT_TRUE(runOne(lb, f, kT0));
  EXPECT_EQ(lb.pipe.flows().stats().active, 1u);
  const uint32_t buckets = lb.pipe.flows().capacity() / FlowTable::kBucketEntries;
  for (uint32_t i = 0; i < buckets; i += 8) {
    lb.pipe.sweep(kT0 + 10 * kSec - 1, 8);
  }
  EXPECT_EQ(lb.pipe.flows().stats().active, 1u);
  for (uint32_t i = 0; i < buckets; i += 8) {
    lb.pipe.sweep(kT0 + 10 * kSec, 8);
  }
  EXPECT_EQ(lb.pipe.flows().stats().active, 0u);
  EXPECT_EQ(lb.pipe.flows().stats().expired, 1u);
}

TEST(PipelineTimeouts, SynOnClosingFlowIsScheduledAfresh) {
  // Flow pinned to C; C is then drained. Packets of the open or closing flow stay on C, but a new
  // SYN reusing the ports of the closing flow is a new connection and is scheduled by Maglev,
  // which no longer picks C.
  Lb lb(baseConfig({webA(), webB(), webC()}));
  const uint32_t c = backendId(*lb.snap, ip("10.0.0.13"), 80);
  uint32_t flow = 0;
  for (;; ++flow) {
    ASSERT_LT(flow, 100u);
    Bytes f = pktgen::build(clientSpec(flow, "192.0.2.10", 80, LB_PROTO_TCP, 0x02));
    ASSERT_TRUE(runOne(lb, f, kT0));
    if (backendIdByMac(*lb.snap, f.data()) == c) {
      break;
    }
  }
  lb.reload(baseConfig({webA(), webB(), webC(0)}));
  auto send = [&](uint8_t flags, uint64_t t) {
    Bytes f = pktgen::build(clientSpec(flow, "192.0.2.10", 80, LB_PROTO_TCP, flags));
    EXPECT_TRUE(runOne(lb, f, t));
    return backendIdByMac(*lb.snap, f.data());
  };
  const uint64_t flows0 = flowsOf(lb);
  EXPECT_EQ(send(0x10, kT0 + kSec), c);
  // A SYN on an established flow is a retransmission: same backend, no new flow.
  EXPECT_EQ(send(0x02, kT0 + 2 * kSec), c);
  EXPECT_EQ(flowsOf(lb), flows0);
  EXPECT_EQ(send(0x11, kT0 + 3 * kSec), c);  // FIN: closing
  EXPECT_EQ(send(0x10, kT0 + 4 * kSec), c);
  // SYN|ACK is not a new connection.
  EXPECT_EQ(send(0x12, kT0 + 5 * kSec), c);
  EXPECT_EQ(flowsOf(lb), flows0);
  // A plain SYN within the linger: scheduled afresh.
  const uint32_t now_on = send(0x02, kT0 + 6 * kSec);
  EXPECT_NE(now_on, c);
  EXPECT_NE(now_on, 0u);
  EXPECT_EQ(flowsOf(lb), flows0 + 1);
  EXPECT_EQ(lb.pipe.counters().flows_rescheduled, 0u);
  // Once its handshake completes, the new connection is active again: the TCP idle timeout
  // applies, not the FIN linger (nor the tcp_syn timeout of a handshake).
  EXPECT_EQ(send(0x10, kT0 + 6 * kSec + kSec / 1000), now_on);
  EXPECT_EQ(send(0x10, kT0 + 6 * kSec + 500 * kSec), now_on);
  EXPECT_EQ(flowsOf(lb), flows0 + 1);
}

TEST(PipelineTimeouts, TcpIdleFlowIsRecreated) {
  Lb lb(baseConfig());
  const uint64_t tcp = 900 * kSec;
  Bytes f = pktgen::build(clientSpec(9, "192.0.2.10", 80, LB_PROTO_TCP, 0x02));
  ASSERT_TRUE(runOne(lb, f, kT0));
  f = pktgen::build(clientSpec(9, "192.0.2.10", 80, LB_PROTO_TCP, 0x10));
  ASSERT_TRUE(runOne(lb, f, kT0));  // the handshake's ACK
  f = pktgen::build(clientSpec(9, "192.0.2.10", 80, LB_PROTO_TCP, 0x10));
  ASSERT_TRUE(runOne(lb, f, kT0 + tcp - 1));
  EXPECT_EQ(flowsOf(lb), 1u);
  f = pktgen::build(clientSpec(9, "192.0.2.10", 80, LB_PROTO_TCP, 0x10));
  ASSERT_TRUE(runOne(lb, f, kT0 + tcp - 1 + tcp));
  EXPECT_EQ(flowsOf(lb), 2u);
  EXPECT_EQ(lb.pipe.flows().stats().expired, 1u);
  EXPECT_EQ(lb.pipe.flows().stats().active, 1u);
}

TEST(PipelineTimeouts, UdpIdleFlowExpires) {
  Lb lb(baseConfig());
  const uint64_t udp = 300 * kSec;
  auto send = [&](uint64_t t) {
    Bytes f = pktgen::build(clientSpec(4, "192.0.2.53", 53, LB_PROTO_UDP));
    EXPECT_TRUE(runOne(lb, f, t));
  };
  send(kT0);
  send(kT0 + udp - 1);
  EXPECT_EQ(flowsOf(lb), 1u);
  send(kT0 + udp - 1 + udp - 1);  // each packet refreshes
  EXPECT_EQ(flowsOf(lb), 1u);
  send(kT0 + udp - 1 + udp - 1 + udp);
  EXPECT_EQ(flowsOf(lb), 2u);
  EXPECT_EQ(lb.pipe.flows().stats().expired, 1u);
}

TEST(PipelineTimeouts, UdpNeverGetsTheTcpLinger) {
  // A UDP datagram whose bytes where TCP keeps its flags look like FIN|RST: no linger applies.
  Lb lb(baseConfig());
  auto send = [&](uint64_t t) {
    PacketSpec s = clientSpec(4, "192.0.2.53", 53, LB_PROTO_UDP);
    s.payload.assign(40, 0x05);
    Bytes f = pktgen::build(s);
    EXPECT_TRUE(runOne(lb, f, t));
  };
  send(kT0);
  send(kT0 + 20 * kSec);  // past the 10 s FIN linger
  send(kT0 + 40 * kSec);
  EXPECT_EQ(flowsOf(lb), 1u);
  EXPECT_EQ(lb.pipe.flows().stats().expired, 0u);
}

TEST(PipelineTimeouts, IdleExpiryRepicksAfterDrain) {
  // After the idle timeout the flow is new: a drained backend does not get it back.
  Lb lb(baseConfig({webA(), webB(), webC()}));
  const uint32_t c = backendId(*lb.snap, ip("10.0.0.13"), 80);
  const std::vector<uint32_t> before = sendWebFlows(lb, kT0, 0x02, 0, 200);
  lb.reload(baseConfig({webA(), webB(), webC(0)}));
  const std::vector<uint32_t> later = sendWebFlows(lb, kT0 + 900 * kSec, 0x10, 0, 200);
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_NE(later[i], c) << i;
    EXPECT_NE(later[i], 0u) << i;
  }
  EXPECT_GT(std::count(before.begin(), before.end(), c), 0);
  EXPECT_EQ(lb.pipe.flows().stats().expired, 200u);
}

// ---------------------------------------------------------------------------------------------
// Floods: unestablished flows (a SYN, no packet without SYN yet) get the tcp_syn timeout and
// cannot evict established ones; the per-core new-flow rate guard.

/** A SYN from a random source to web, as a flood sends them. */
Bytes floodSyn(std::mt19937& rng) {
  PacketSpec s = clientSpec(0, "192.0.2.10", 80, LB_PROTO_TCP, 0x02);
  s.src = IpAddress::v4(static_cast<uint32_t>(rng()) | 0x01000000u);
  s.sport = static_cast<uint16_t>(rng());
  s.payload.clear();
  return pktgen::build(s);
}

TEST(PipelineFlood, SynFloodOfTenTablesLeavesEstablishedFlowsPinned) {
  // The case, scaled down: 1,000 established flows, ten times the table's size in SYNs
  // from random sources, then a backend added. Had the flood evicted them, the established
  // flows' next packets would be scheduled again with D in the table, and some would move.
  constexpr uint32_t kTable = 4096;
  Lb lb(baseConfig({webA(), webB(), webC()}), kTable);
  const std::vector<uint32_t> before = sendWebFlows(lb, kT0, 0x02);
  EXPECT_EQ(sendWebFlows(lb, kT0 + kSec / 1000, 0x10), before);  // the handshakes' ACKs
  std::mt19937 rng(42);
  const uint32_t flood = 10 * lb.pipe.flows().capacity();
  for (uint32_t sent = 0; sent < flood;) {
    std::vector<Bytes> burst;
    for (uint32_t i = 0; i < 256 && sent < flood; ++i, ++sent) {
      burst.push_back(floodSyn(rng));
    }
    const std::vector<bool> tx = run(lb.pipe, *lb.snap, lb.port, burst, kT0 + kSec);
    ASSERT_EQ(std::count(tx.begin(), tx.end(), true), static_cast<long>(burst.size()));
  }
  const FlowTableStats& st = lb.pipe.flows().stats();
  EXPECT_GT(st.syn_evicted, flood - kTable) << "the flood churned its own entries";
  EXPECT_EQ(st.evicted.get(), st.syn_evicted.get()) << "and no established one";

  lb.reload(baseConfig({webA(), webB(), webC(), webD()}));
  Lb fresh(baseConfig({webA(), webB(), webC()}), kTable);
  fresh.reload(baseConfig({webA(), webB(), webC(), webD()}));
  const std::vector<uint32_t> unpinned = sendWebFlows(fresh, kT0, 0x10);
  size_t would_move = 0;
  for (uint32_t i = 0; i < kPinFlows; ++i) {
    would_move += unpinned[i] != before[i] ? 1 : 0;
  }
  ASSERT_GT(would_move, 100u) << "without their entries, many flows would move to D";
  const std::vector<uint32_t> after = sendWebFlows(lb, kT0 + 2 * kSec, 0x10);
  size_t moved = 0;
  for (uint32_t i = 0; i < kPinFlows; ++i) {
    moved += after[i] != before[i] ? 1 : 0;
  }
  EXPECT_EQ(moved, 0u) << "established flows lost their entries to the flood";
}

TEST(PipelineFlood, AHandshakeThatDoesNotCompleteExpiresAfterTcpSyn) {
  Config c = baseConfig();
  c.timeouts.tcp_syn_s = 5;
  validateConfig(c, "test");
  Lb lb(c);
  ASSERT_EQ(lb.snap->tcp_syn_timeout_ns, 5 * kSec);
  auto send = [&](uint32_t flow, uint8_t flags, uint64_t t) {
    Bytes f = pktgen::build(clientSpec(flow, "192.0.2.10", 80, LB_PROTO_TCP, flags));
    EXPECT_TRUE(runOne(lb, f, t));
  };
  // Flow 1: a SYN and its retransmission 4 s later keep one unestablished entry; the ACK 4 s
  // after that establishes it, and then the tcp timeout (900 s) applies.
  send(1, 0x02, kT0);
  send(1, 0x02, kT0 + 4 * kSec);
  send(1, 0x10, kT0 + 8 * kSec);
  send(1, 0x10, kT0 + 800 * kSec);
  EXPECT_EQ(flowsOf(lb), 1u);
  EXPECT_EQ(lb.pipe.flows().stats().expired, 0u);
  // Flow 2: a SYN and nothing for 5 s: gone. Its ACK then makes a new (established) flow.
  send(2, 0x02, kT0);
  send(2, 0x10, kT0 + 5 * kSec);
  EXPECT_EQ(flowsOf(lb), 3u);
  EXPECT_EQ(lb.pipe.flows().stats().expired, 1u);
  EXPECT_EQ(lb.pipe.flows().stats().syn_expired, 1u);
  // Flow 3: a SYN, then a RST (the client gave up): the tcp_fin linger, still unestablished.
  send(3, 0x02, kT0);
  send(3, 0x04, kT0 + kSec);
  EXPECT_EQ(flowsOf(lb), 4u);
  for (uint32_t i = 0; i <= lb.pipe.flows().capacity() / FlowTable::kBucketEntries; ++i) {
    lb.pipe.sweep(kT0 + kSec + 10 * kSec, 1);
  }
  EXPECT_EQ(lb.pipe.flows().stats().syn_expired, 2u);
  EXPECT_EQ(lb.pipe.flows().stats().active, 2u);  // flows 1 and 2's second
}

TEST(PipelineFlood, AboveTheRateNewFlowsGoByMaglevWithoutAnEntry) {
  Config limited = baseConfig();
  limited.flood.new_flow_rate_limit = 100;
  validateConfig(limited, "test");
  Lb lb(limited);
  Lb unlimited(baseConfig());
  // 300 new flows within one second: 100 get an entry, 200 are forwarded by their Maglev pick
  // alone, to the same backends an unlimited core gives them.
  const std::vector<uint32_t> got = sendWebFlows(lb, kT0, 0x02, 0, 300);
  EXPECT_EQ(got, sendWebFlows(unlimited, kT0, 0x02, 0, 300));
  EXPECT_EQ(lb.pipe.flows().stats().inserted, 100u);
  EXPECT_EQ(lb.pipe.counters().new_flows_unpinned, 200u);
  EXPECT_EQ(flowsOf(lb), 100u) << "a flow without an entry is no backend's new flow";
  // Within the same second the first 100 are established and counted as nothing new; the
  // others are still new flows, and still above the rate.
  EXPECT_EQ(sendWebFlows(lb, kT0 + kSec - 1, 0x10, 0, 300), got);
  EXPECT_EQ(lb.pipe.flows().stats().inserted, 100u);
  EXPECT_EQ(lb.pipe.counters().new_flows_unpinned, 400u);
  // The next second has room for 100 more: the first 100 of the ones without an entry.
  EXPECT_EQ(sendWebFlows(lb, kT0 + kSec, 0x10, 0, 300), got);
  EXPECT_EQ(lb.pipe.flows().stats().inserted, 200u);
  EXPECT_EQ(lb.pipe.counters().new_flows_unpinned, 500u);
  // Each packet of the backends counts wherever it went.
  uint64_t packets = 0;
  for (const BackendCounters& bc : lb.pipe.backendCounters()) {
    packets += bc.packets;
  }
  EXPECT_EQ(packets, 900u);
}

// ---------------------------------------------------------------------------------------------
// Determinism.

TEST(PipelineDeterminism, SameChoiceOnEveryCoreAndEveryBuild) {
  const std::vector<BackendConfig> order1 = {webA(1), webB(1), webC(2), webD(3)};
  const std::vector<BackendConfig> order2 = {webD(3), webC(2), webA(1), webB(1)};
  Lb lb1(baseConfig(order1));
  Lb lb2(baseConfig(order1));  // another core / host, same config
  Lb lb3(baseConfig(order2));  // independent build, backends listed in another order
  // The ids differ between lb1 and lb3; only the endpoints are the same.
  ASSERT_NE(backendId(*lb1.snap, ip("10.0.0.11"), 80), backendId(*lb3.snap, ip("10.0.0.11"), 80));
  constexpr uint32_t kFlows = 3000;
  std::vector<Bytes> f1;
  for (uint32_t i = 0; i < kFlows; ++i) {
    PacketSpec s = clientSpec(i, "192.0.2.10", 80, LB_PROTO_TCP, 0x02);
    s.src = IpAddress::v4(0x0a000000u + i * 101);
    f1.push_back(pktgen::build(s));
  }
  std::vector<Bytes> f2 = f1;
  std::vector<Bytes> f3 = f1;
  run(lb1.pipe, *lb1.snap, lb1.port, f1, kT0);
  run(lb2.pipe, *lb2.snap, lb2.port, f2, kT0 + 5 * kSec);
  run(lb3.pipe, *lb3.snap, lb3.port, f3, kT0);
  std::set<std::string> macs;
  for (uint32_t i = 0; i < kFlows; ++i) {
    ASSERT_EQ(macStr(f1[i].data()), macStr(f2[i].data())) << i;
    ASSERT_EQ(macStr(f1[i].data()), macStr(f3[i].data())) << i;
    macs.insert(macStr(f1[i].data()));
  }
  EXPECT_EQ(macs.size(), 4u);
  // IPv6 NAT too: the same backend address.
  Lb n1(baseConfig());
  Config swapped = baseConfig();
  std::vector<BackendConfig>& web6 = testsupport::service(swapped, "web6").backends;
  std::reverse(web6.begin(), web6.end());
  std::reverse(swapped.services.begin(), swapped.services.end());
  Lb n2(swapped);
  for (uint32_t i = 0; i < 500; ++i) {
    Bytes a = pktgen::build(clientSpec(i, "2001:db8::10", 443, LB_PROTO_TCP, 0x02));
    Bytes b = a;
    ASSERT_TRUE(runOne(n1, a, kT0));
    ASSERT_TRUE(runOne(n2, b, kT0));
    ASSERT_EQ(a, b) << i;
  }
}

TEST(PipelineDeterminism, PickIsTheMaglevSlotOfTheFlowHash) {
  // The contract shared with other hosts and the XDP path: a new flow goes to
  // maglev[lb_flow_hash(5-tuple) % M], the hash taken over the key as on the wire.
  for (uint32_t table_size : {7u, 13u, 4099u, 65537u}) {
    for (const char* vip : {"192.0.2.10", "2001:db8::10"}) {
      Config c;
      c.services.push_back(
          testsupport::makeService("svc", vip, 80, Protocol::kTcp, Forwarding::kDr, {}));
      for (int b = 0; b < 5; ++b) {
        const std::string addr = ip(vip).isV4() ? "10.9.0." + std::to_string(b + 1)
                                                : "2001:db8:9::" + std::to_string(b + 1);
        const std::string m = "02:00:00:00:09:0" + std::to_string(b + 1);
        c.services[0].backends.push_back(
            testsupport::makeBackend(addr.c_str(), 80, m.c_str(), 1 + b % 3));
      }
      c.services[0].table_size = table_size;
      validateConfig(c, "test");
      Lb lb(c);
      const ServiceEntry& svc = lb.snap->services[lb.snap->service_map.find(makeEndpointKey(
          ip(vip), 80, LB_PROTO_TCP))->service_id];
      ASSERT_EQ(svc.maglev.size(), table_size);
      for (uint32_t i = 0; i < 2000; ++i) {
        PacketSpec s = clientSpec(i, vip, 80, LB_PROTO_TCP, 0x02);
        s.sport = static_cast<uint16_t>(1024 + i * 31);
        Bytes f = pktgen::build(s);
        ASSERT_TRUE(runOne(lb, f, kT0));
        lb_flow_key k;
        std::memset(&k, 0, sizeof(k));
        s.src.toWords(k.src);
        s.dst.toWords(k.dst);
        k.sport = htons(s.sport);
        k.dport = htons(s.dport);
        k.proto = LB_PROTO_TCP;
        k.family = s.src.family;
        const uint32_t h = lb_flow_hash(&k);
        ASSERT_EQ(backendIdByMac(*lb.snap, f.data()), svc.maglev[h % table_size])
            << "M " << table_size << " flow " << i << " hash " << h;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ICMP errors about a flow (dataplane/icmp_error.h), both ways: what tests/bpf/xdp_diff_test.cc
// does not reach on the XDP side (VLAN tags with a quoted header with options, multi-segment
// frames) and that an error leaves its flow entry alone.

// The reply of the flow of client:cport with vip:vport as its router quotes it: the IP packet.
PacketSpec replySpec(const char* vip, uint16_t vport, uint8_t proto, const IpAddress& client,
                     uint16_t cport) {
  PacketSpec r;
  r.src = ip(vip);
  r.dst = client;
  r.proto = proto;
  r.sport = vport;
  r.dport = cport;
  r.tcp_flags = 0x18;
  r.payload = Bytes(1400, 0x5c);
  return r;
}

PacketSpec routerToVip(const char* vip) {
  PacketSpec o;
  o.src_mac = kRouterMac;
  o.dst_mac = kPortMac;
  o.src = ip("198.51.100.254");
  o.dst = ip(vip);
  return o;
}

void setIpv4HeaderChecksum(Bytes& b, size_t at) {
  const size_t ihl = (b[at] & 0x0f) * 4u;
  b[at + 10] = b[at + 11] = 0;
  const uint16_t sum = pktgen::onesSum(std::span<const uint8_t>(b).subspan(at, ihl));
  b[at + 10] = static_cast<uint8_t>(~sum >> 8);
  b[at + 11] = static_cast<uint8_t>(~sum);
}

// NAT, VLAN-tagged, the quoted IPv4 header with 4 bytes of options (IHL 6): the quoted port is
// found past the options and every checksum comes out as a from-scratch build's.
TEST(PipelineIcmpError, NatErrorWithAVlanTagAndQuotedIpOptions) {
  Lb lb(baseConfig());
  const PacketSpec c = clientSpec(3, "192.0.2.20", 443, LB_PROTO_TCP, 0x02);
  Bytes syn = pktgen::build(c);
  ASSERT_TRUE(runOne(lb, syn, kT0));
  const uint32_t bid = backendIdByMac(*lb.snap, syn.data());
  ASSERT_NE(bid, 0u);
  const BackendEntry& b = lb.snap->backends[bid];

  // The reply as Sluice sent it (from the VIP), with options: NOP, NOP, NOP, EOL.
  Bytes quote = pktgen::ipPacket(replySpec("192.0.2.20", 443, LB_PROTO_TCP, c.src, c.sport));
  quote.insert(quote.begin() + 20, {1, 1, 1, 0});
  quote[0] = 0x46;
  const uint16_t total = static_cast<uint16_t>((quote[2] << 8 | quote[3]) + 4);
  quote[2] = static_cast<uint8_t>(total >> 8);
  quote[3] = static_cast<uint8_t>(total);
  setIpv4HeaderChecksum(quote, 0);
  quote.resize(24 + 8);
  PacketSpec o = routerToVip("192.0.2.20");
  o.vlans = {42};
  Bytes f = pktgen::buildIcmp(o, 3, 4, 1400, quote);

  Bytes want_quote = quote;
  std::copy(b.address.bytes.begin(), b.address.bytes.begin() + 4, want_quote.begin() + 12);
  want_quote[24] = static_cast<uint8_t>(b.port >> 8);
  want_quote[25] = static_cast<uint8_t>(b.port);
  setIpv4HeaderChecksum(want_quote, 0);
  PacketSpec want = o;
  want.dst = b.address;
  want.src_mac = kPortMac;
  std::copy(b.mac, b.mac + 6, want.dst_mac.bytes.begin());

  ASSERT_TRUE(runOne(lb, f, kT0 + kSec));
  EXPECT_EQ(f, pktgen::buildIcmp(want, 3, 4, 1400, want_quote));
  EXPECT_EQ(lb.pipe.counters().icmp_forwarded, 1u);
  EXPECT_EQ(lb.pipe.backendCounters()[bid].packets, 2u);
}

// The DPDK path checks the quote against the first segment: ports in a later one are not read.
TEST(PipelineIcmpError, AQuoteBeyondTheFirstSegmentIsTruncated) {
  Lb lb(baseConfig());
  const PacketSpec r = replySpec("192.0.2.10", 80, LB_PROTO_TCP, ip("203.0.113.9"), 40000);
  Bytes f = pktgen::buildIcmpError(routerToVip("192.0.2.10"), 3, 4, 1400, r, 548);
  PacketRef p;
  p.data = f.data();
  p.pkt_len = static_cast<uint32_t>(f.size());
  p.data_len = 14 + 20 + 8 + 20 + 4;  // the quote's IP header and half its ports
  p.now_ns = kT0;
  lb.pipe.process(std::span<PacketRef>(&p, 1), *lb.snap, lb.port);
  EXPECT_FALSE(p.transmit);
  EXPECT_FALSE(p.to_kernel);
  EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_TRUNCATED], 1u);
  p.data_len = 14 + 20 + 8 + 20 + 8;  // all of the ports
  lb.pipe.process(std::span<PacketRef>(&p, 1), *lb.snap, lb.port);
  EXPECT_TRUE(p.transmit);
  EXPECT_EQ(lb.pipe.counters().icmp_forwarded, 1u);
}

// An error is no traffic of its flow: it creates no entry and does not extend one, so a flow
// idle for longer than its timeout expires even though errors about it kept arriving.
TEST(PipelineIcmpError, AnErrorNeitherCreatesNorRefreshesItsFlow) {
  Lb lb(baseConfig());
  const PacketSpec c = clientSpec(5, "192.0.2.53", 53, LB_PROTO_UDP);
  const PacketSpec r = replySpec("192.0.2.53", 53, LB_PROTO_UDP, c.src, c.sport);
  auto error = [&r] {
    return pktgen::buildIcmpError(routerToVip("192.0.2.53"), 3, 4, 1400, r, 548);
  };
  Bytes e = error();
  ASSERT_TRUE(runOne(lb, e, kT0));
  EXPECT_EQ(lb.pipe.flows().stats().inserted, 0u) << "no entry for an error";
  Bytes d = pktgen::build(c);
  ASSERT_TRUE(runOne(lb, d, kT0));
  EXPECT_EQ(lb.pipe.flows().stats().inserted, 1u);
  EXPECT_EQ(std::memcmp(e.data(), d.data(), 6), 0) << "the error went where the flow went";
  const uint64_t udp = lb.snap->udp_timeout_ns;
  e = error();
  ASSERT_TRUE(runOne(lb, e, kT0 + udp - kSec));
  EXPECT_EQ(std::memcmp(e.data(), d.data(), 6), 0);
  d = pktgen::build(c);
  ASSERT_TRUE(runOne(lb, d, kT0 + udp + kSec));
  EXPECT_EQ(lb.pipe.flows().stats().expired, 1u) << "the error did not extend the flow";
  EXPECT_EQ(lb.pipe.flows().stats().inserted, 2u);
  EXPECT_EQ(lb.pipe.counters().icmp_forwarded, 2u);
}

// Errors from behind NAT (a NAT backend's about a client's packet), VLAN-tagged, the quoted IPv4
// header with options: the quoted destination port is found past the options, the outer source
// and the quote's destination become the VIP and VIP:vport, and every checksum comes out as a
// from-scratch build's but the quoted UDP checksum, which is kept.
TEST(PipelineIcmpError, ErrorFromBehindNatWithAVlanTagAndQuotedIpOptions) {
  Lb lb(baseConfig());
  const uint32_t bid = backendId(*lb.snap, ip("10.0.1.22"), 5353);
  ASSERT_NE(bid, 0u);
  const BackendEntry& b = lb.snap->backends[bid];
  PacketSpec sent = clientSpec(7, "192.0.2.53", 53, LB_PROTO_UDP);  // as Sluice sent it on
  sent.dst = b.address;
  sent.dport = b.port;
  Bytes quote = pktgen::ipPacket(sent);
  quote.insert(quote.begin() + 20, {1, 1, 1, 0});  // NOP, NOP, NOP, EOL
  quote[0] = 0x46;
  const uint16_t total = static_cast<uint16_t>((quote[2] << 8 | quote[3]) + 4);
  quote[2] = static_cast<uint8_t>(total >> 8);
  quote[3] = static_cast<uint8_t>(total);
  setIpv4HeaderChecksum(quote, 0);
  quote.resize(24 + 8);
  PacketSpec o;
  o.vlans = {42};
  std::copy(b.mac, b.mac + 6, o.src_mac.bytes.begin());
  o.dst_mac = kPortMac;
  o.src = b.address;
  o.dst = sent.src;
  Bytes f = pktgen::buildIcmp(o, 3, 3, 0, quote);

  Bytes want_quote = quote;
  const IpAddress vip = ip("192.0.2.53");
  std::copy(vip.bytes.begin(), vip.bytes.begin() + 4, want_quote.begin() + 16);
  want_quote[26] = 0;
  want_quote[27] = 53;
  setIpv4HeaderChecksum(want_quote, 0);
  PacketSpec want = o;
  want.src = vip;
  want.src_mac = kPortMac;
  want.dst_mac = kGatewayMac;

  ASSERT_TRUE(runOne(lb, f, kT0));
  EXPECT_EQ(f, pktgen::buildIcmp(want, 3, 3, 0, want_quote));
  EXPECT_EQ(lb.pipe.counters().icmp_forwarded, 1u);
  EXPECT_EQ(lb.pipe.backendCounters()[bid].reply_packets, 1u);
  EXPECT_EQ(lb.pipe.backendCounters()[bid].packets, 0u);
}

// Sent to no VIP, a quote whose ports lie past the first segment is not read: the error goes on
// as before (to the kernel, no_service), not dropped as one to a VIP would be.
TEST(PipelineIcmpError, AQuoteFromBehindNatBeyondTheFirstSegmentGoesOnAsBefore) {
  Lb lb(baseConfig());
  PacketSpec sent = clientSpec(8, "192.0.2.53", 53, LB_PROTO_UDP);
  sent.dst = ip("10.0.1.21");
  sent.dport = 5353;
  PacketSpec o;
  o.src_mac = mac("02:00:00:00:02:21");  // the backend's: errors from elsewhere are not taken
  o.dst_mac = kPortMac;
  o.src = sent.dst;
  o.dst = sent.src;
  Bytes f = pktgen::buildIcmpError(o, 3, 3, 0, sent, 548);
  PacketRef p;
  p.data = f.data();
  p.pkt_len = static_cast<uint32_t>(f.size());
  p.data_len = 14 + 20 + 8 + 20 + 4;  // the quote's IP header and half its ports
  p.now_ns = kT0;
  lb.pipe.process(std::span<PacketRef>(&p, 1), *lb.snap, lb.port);
  EXPECT_FALSE(p.transmit);
  EXPECT_TRUE(p.to_kernel);
  EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_NO_SERVICE], 1u);
  EXPECT_EQ(lb.pipe.counters().drops[LB_DROP_TRUNCATED], 0u);
  p.data_len = 14 + 20 + 8 + 20 + 8;  // all of the ports
  lb.pipe.process(std::span<PacketRef>(&p, 1), *lb.snap, lb.port);
  EXPECT_TRUE(p.transmit);
  EXPECT_EQ(lb.pipe.counters().icmp_forwarded, 1u);
}

// ---------------------------------------------------------------------------------------------
// Robustness: mutated frames through the whole pipeline (run under ASan locally).

TEST(PipelineFuzz, MutatedFramesAreHandledAndAccountedFor) {
  Lb lb(baseConfig(), 1024);
  std::vector<Bytes> seeds;
  for (const auto& [vip, port, proto] :
       std::vector<std::tuple<const char*, uint16_t, uint8_t>>{
           {"192.0.2.10", 80, LB_PROTO_TCP},   {"192.0.2.53", 53, LB_PROTO_UDP},
           {"192.0.2.20", 443, LB_PROTO_TCP},  {"2001:db8::10", 443, LB_PROTO_TCP},
           {"2001:db8::53", 53, LB_PROTO_UDP}, {"2001:db8::10", 80, LB_PROTO_TCP}}) {
    seeds.push_back(pktgen::build(clientSpec(1, vip, port, proto)));
  }
  {
    PacketSpec reply;  // NAT replies, from their backends' MACs
    reply.src_mac = mac("02:00:00:00:03:01");
    reply.src = ip("10.0.2.1");
    reply.sport = 8443;
    reply.dst = ip("198.51.0.1");
    reply.dport = 20007;
    seeds.push_back(pktgen::build(reply));
    reply.src_mac = mac("02:00:00:00:05:02");
    reply.src = ip("2001:db8:2::2");
    reply.sport = 5300;
    reply.dst = ip("2001:db8:ff::1");
    reply.proto = LB_PROTO_UDP;
    seeds.push_back(pktgen::build(reply));
  }
  std::mt19937_64 rng(99);
  uint64_t transmitted = 0;
  uint64_t total = 0;
  for (int burst = 0; burst < 3000; ++burst) {
    std::vector<Bytes> frames;
    const size_t n = 1 + rng() % Pipeline::kMaxBurst;
    for (size_t i = 0; i < n; ++i) {
      Bytes f = seeds[rng() % seeds.size()];
      const int mutations = static_cast<int>(rng() % 4);
      for (int m = 0; m < mutations && !f.empty(); ++m) {
        switch (rng() % 3) {
          case 0:
            f[rng() % std::min<size_t>(f.size(), 80)] = static_cast<uint8_t>(rng());
            break;
          case 1:
            f.resize(rng() % (f.size() + 1));
            break;
          case 2:
            f[rng() % f.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
            break;
        }
      }
      f.shrink_to_fit();
      frames.push_back(std::move(f));
    }
    const std::vector<bool> tx = run(lb.pipe, *lb.snap, lb.port, frames, kT0 + burst * kSec);
    transmitted += static_cast<uint64_t>(std::count(tx.begin(), tx.end(), true));
    total += n;
    if (burst % 16 == 0) {
      lb.pipe.sweep(kT0 + burst * kSec, 64);
    }
  }
  // Every packet is either transmitted or counted as exactly one drop.
  EXPECT_EQ(lb.pipe.counters().rx_packets, total);
  EXPECT_EQ(transmitted + totalDrops(lb.pipe.counters()), total);
  EXPECT_GT(transmitted, total / 5);
}

}  // namespace
}  // namespace sluice
