// Partial checksums (Linux CHECKSUM_PARTIAL) on the XDP path, through BPF_PROG_TEST_RUN.
//
// A local sender (a veth peer, a container) hands the kernel skbs whose TCP/UDP checksum field
// holds only the folded pseudo-header sum; with generic XDP the program sees such a frame, and
// after XDP_TX the skb is still partial, so whoever completes it later (a NIC, or a router's
// egress device without checksum offload) sums the segment from csum_start with the field as the
// seed. The NAT rewrite must therefore leave a partial field partial: the folded pseudo-header
// sum of the REWRITTEN addresses (bpf/lib/lb.h, lb_rewrite_l3l4). The loader takes partial
// checksums as possible only in generic mode (XdpDataplane::setPartialChecksumsPossible, which
// attach() sets); with it off the program treats every field as complete, as the DPDK pipeline
// on a port that does not complete partial checksums does, byte for byte.
//
// The expected fields are computed here from scratch (addresses, length and protocol summed as
// big-endian words), not with the data path's helpers. Needs root (CAP_BPF): every test skips
// when the program cannot be loaded.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/lb_abi.h"
#include "common/net.h"
#include "common/snapshot.h"
#include "control/config.h"
#include "control/snapshot_builder.h"
#include "dataplane/pipeline.h"
#include "tests/bpf/xdp_harness.h"
#include "tests/support/fixtures.h"
#include "tools/pktgen/packet_builder.h"
#include "xdp/xdp_dataplane.h"

namespace sluice {
namespace {

using bpftest::hex;
using pktgen::Bytes;
using pktgen::PacketSpec;
using testsupport::ip;
using testsupport::mac;

constexpr uint64_t kT0 = 1000ull * 1'000'000'000ull;
constexpr uint32_t kFlowCapacity = 1u << 12;

const MacAddress kPortMac = mac("02:00:00:00:00:bb");
const MacAddress kRouterMac = mac("02:00:00:00:00:ac");   // the clients' router
const MacAddress kGatewayMac = mac("02:00:00:00:00:fe");  // where NAT replies go
const MacAddress kBackendsMac = mac("02:00:00:00:05:01");

/** One NAT service: VIP:port/protocol to one backend address:port. */
struct NatService {
  const char* name;
  const char* vip;
  uint16_t port;
  Protocol protocol;
  const char* backend;
  uint16_t backend_port;
};

// Both families, TCP and UDP.
const NatService kServices[] = {
    {"tcp4", "192.0.2.80", 80, Protocol::kTcp, "10.0.5.1", 8080},
    {"udp4", "192.0.2.80", 53, Protocol::kUdp, "10.0.5.2", 5353},
    {"tcp6", "2001:db8::80", 443, Protocol::kTcp, "2001:db8:5::1", 8443},
    {"udp6", "2001:db8::80", 53, Protocol::kUdp, "2001:db8:5::2", 5353},
};

Config natConfig() {
  Config c;
  c.dataplane.flow_table_size = kFlowCapacity;
  c.dataplane.gateway_mac = kGatewayMac;
  for (const NatService& n : kServices) {
    ServiceConfig s;
    s.name = n.name;
    s.vip = ip(n.vip);
    s.port = n.port;
    s.protocol = n.protocol;
    s.forwarding = Forwarding::kNat;
    BackendConfig b;
    b.address = ip(n.backend);
    b.port = n.backend_port;
    b.mac = kBackendsMac;
    s.backends.push_back(b);
    c.services.push_back(s);
  }
  validateConfig(c, "test");
  return c;
}

uint8_t protoOf(const NatService& n) {
  return n.protocol == Protocol::kTcp ? LB_PROTO_TCP : LB_PROTO_UDP;
}

/** Where the L4 header of an untagged frame is (ext: bytes of IPv6 extension headers). */
size_t l4Offset(const Bytes& f, size_t ext = 0) {
  const bool v4 = f[12] == 0x08 && f[13] == 0x00;
  return 14 + (v4 ? 20 : 40) + ext;
}

/** Where its TCP/UDP checksum field is. */
size_t checksumAt(const Bytes& f, uint8_t proto, size_t ext = 0) {
  return l4Offset(f, ext) + (proto == LB_PROTO_TCP ? 16 : 6);
}

uint16_t get16(const Bytes& f, size_t at) { return static_cast<uint16_t>(f[at] << 8 | f[at + 1]); }

void set16(Bytes& f, size_t at, uint16_t v) {
  f[at] = static_cast<uint8_t>(v >> 8);
  f[at + 1] = static_cast<uint8_t>(v);
}

/**
 * The folded pseudo-header sum (RFC 793, RFC 768, RFC 8200 section 8.1) as Linux leaves it in a
 * partial checksum field: the two addresses, the upper-layer length and the protocol as
 * big-endian 16-bit words, end-around carry, not complemented.
 */
uint16_t pseudoFold(const IpAddress& src, const IpAddress& dst, uint32_t l4_len, uint8_t proto) {
  const size_t n = src.isV4() ? 4 : 16;
  uint64_t sum = 0;
  for (const IpAddress* a : {&src, &dst}) {
    for (size_t i = 0; i < n; i += 2) {
      sum += uint64_t{a->bytes[i]} << 8 | a->bytes[i + 1];
    }
  }
  sum += l4_len >> 16;
  sum += l4_len & 0xffff;
  sum += proto;
  while (sum >> 16) {
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return static_cast<uint16_t>(sum);
}

/**
 * What a device without the NIC does with a partial checksum (skb_checksum_help): sum the segment
 * from the L4 header, the field included as the seed, and store the complement.
 */
void completeAsADevice(Bytes& f, size_t l4, size_t csum_at) {
  uint64_t sum = 0;
  for (size_t i = l4; i < f.size(); i += 2) {
    sum += uint64_t{f[i]} << 8 | (i + 1 < f.size() ? f[i + 1] : 0);
  }
  while (sum >> 16) {
    sum = (sum & 0xffff) + (sum >> 16);
  }
  uint16_t c = static_cast<uint16_t>(~sum);
  if (c == 0 && csum_at == l4 + 6) {
    c = 0xffff;  // UDP (RFC 768)
  }
  set16(f, csum_at, c);
}

/** The partial field of spec's untagged frame f: its pseudo-header sum, folded. */
uint16_t partialField(const Bytes& f, const PacketSpec& spec) {
  const size_t l4 = l4Offset(f, spec.ipv6_ext.size() * 8);
  return pseudoFold(spec.src, spec.dst, static_cast<uint32_t>(f.size() - l4), spec.proto);
}

/** A frame with a partial checksum: spec's frame (complete) with the field replaced. */
Bytes partial(const PacketSpec& spec) {
  Bytes f = pktgen::build(spec);
  set16(f, checksumAt(f, spec.proto, spec.ipv6_ext.size() * 8), partialField(f, spec));
  return f;
}

/** A client's packet to service n (flow number i). */
PacketSpec clientSpec(const NatService& n, uint32_t i) {
  PacketSpec p;
  p.src_mac = kRouterMac;
  p.dst_mac = kPortMac;
  const IpAddress vip = ip(n.vip);
  p.src = vip.isV4() ? IpAddress::v4(0xcb007100u + i) : ip("2001:db8:ff::");
  if (!vip.isV4()) {
    p.src.bytes[15] = static_cast<uint8_t>(i);
  }
  p.dst = vip;
  p.proto = protoOf(n);
  p.sport = static_cast<uint16_t>(40000 + i * 7);
  p.dport = n.port;
  p.tcp_flags = 0x18;
  p.seq = 77 + i;
  p.payload = Bytes(9 + i * 5, static_cast<uint8_t>(0x30 + i));  // odd and even lengths
  return p;
}

/** Its rewrite toward the backend: the backend's address and port, MACs port -> backend. */
PacketSpec toBackend(PacketSpec p, const NatService& n) {
  p.src_mac = kPortMac;
  p.dst_mac = kBackendsMac;
  p.dst = ip(n.backend);
  p.dport = n.backend_port;
  return p;
}

/** The backend's reply to a client packet c. */
PacketSpec replySpec(const PacketSpec& c, const NatService& n) {
  PacketSpec r = c;
  r.src_mac = kBackendsMac;
  r.dst_mac = kPortMac;
  r.src = ip(n.backend);
  r.sport = n.backend_port;
  r.dst = c.src;
  r.dport = c.sport;
  r.payload = Bytes(c.payload.size() + 3, 0xa5);
  return r;
}

/** Its rewrite back to the VIP: VIP:port as the source, MACs port -> gateway. */
PacketSpec toClient(PacketSpec r, const NatService& n) {
  r.src_mac = kPortMac;
  r.dst_mac = kGatewayMac;
  r.src = ip(n.vip);
  r.sport = n.port;
  return r;
}

/** rewritten's frame with its checksum field partial: what the program must send. */
Bytes expectedPartial(const PacketSpec& rewritten) { return partial(rewritten); }

/** One DPDK worker on byte buffers, on a port that does not complete partial checksums. */
struct Reference : bpftest::Reference {
  Reference() : bpftest::Reference(kFlowCapacity, kPortMac) {}
  std::optional<Bytes> run(const Bytes& in, const Snapshot& snap) {
    return bpftest::Reference::run(in, snap, kT0);
  }
};

class XdpPartialChecksums : public ::testing::Test {
 protected:
  void SetUp() override {
    bpftest::stayOnThisCpu();  // the flow tables are per CPU
    xdp_ = bpftest::loadProgram(kFlowCapacity, kPortMac, kT0, why_);
    if (!xdp_) {
      return;
    }
    snap_ = buildSnapshot(natConfig(), ids_, 1);
    xdp_->apply(*snap_);
  }

  /** The frame the program sends for in, or nullopt when it does not transmit it. */
  std::optional<Bytes> run(const Bytes& in) { return bpftest::runXdp(*xdp_, in); }

  IdRegistry ids_;
  SnapshotPtr snap_;
  std::unique_ptr<XdpDataplane> xdp_;
  std::string why_;
};

#define LOAD_OR_SKIP()                                                                     \
  if (!xdp_) {                                                                             \
    GTEST_SKIP() << "cannot load the XDP program (needs root or CAP_BPF): " << why_;       \
  }

TEST_F(XdpPartialChecksums, OffAfterLoad) {
  LOAD_OR_SKIP();
  EXPECT_FALSE(xdp_->partialChecksumsPossible()) << "BPF_PROG_TEST_RUN and replay: complete";
  xdp_->setPartialChecksumsPossible(true);
  EXPECT_TRUE(xdp_->partialChecksumsPossible());
}

// The main case: partial in, partial out, holding the rewritten addresses' pseudo-header sum,
// in both directions, for both families and both protocols.
TEST_F(XdpPartialChecksums, NatKeepsAPartialChecksumPartialBothWays) {
  LOAD_OR_SKIP();
  xdp_->setPartialChecksumsPossible(true);
  for (const NatService& n : kServices) {
    for (uint32_t i = 0; i < 6; ++i) {
      const std::string what = fmt::format("{} flow {}", n.name, i);
      SCOPED_TRACE(what);
      const PacketSpec c = clientSpec(n, i);
      const auto out = run(partial(c));
      ASSERT_TRUE(out.has_value());
      const PacketSpec to_backend = toBackend(c, n);
      EXPECT_EQ(hex(*out), hex(expectedPartial(to_backend)))
          << "client -> backend: the backend's address in the partial field";
      const size_t at = checksumAt(*out, c.proto);
      EXPECT_EQ(get16(*out, at), partialField(*out, to_backend));
      EXPECT_NE(get16(*out, at), partialField(*out, c)) << "the field was updated";
      // Completed downstream (a router's egress device without offload), it verifies.
      Bytes completed = *out;
      completeAsADevice(completed, l4Offset(*out), at);
      const auto d = pktgen::decode(completed);
      ASSERT_TRUE(d.has_value());
      EXPECT_TRUE(d->ip_checksum_ok);
      EXPECT_TRUE(d->l4_checksum_ok) << "completed after the rewrite";

      const PacketSpec r = replySpec(c, n);
      const auto back = run(partial(r));
      ASSERT_TRUE(back.has_value());
      EXPECT_EQ(hex(*back), hex(expectedPartial(toClient(r, n))))
          << "NAT reply: the VIP in the partial field";
      Bytes reply_completed = *back;
      completeAsADevice(reply_completed, l4Offset(*back), checksumAt(*back, r.proto));
      const auto rd = pktgen::decode(reply_completed);
      ASSERT_TRUE(rd.has_value());
      EXPECT_TRUE(rd->ip_checksum_ok && rd->l4_checksum_ok);
    }
  }
}

// The upper-layer length of the pseudo-header leaves out IPv6 extension headers, and frames may
// carry VLAN tags: the test still recognises the partial field.
TEST_F(XdpPartialChecksums, IPv6ExtensionHeadersAndVlanTags) {
  LOAD_OR_SKIP();
  xdp_->setPartialChecksumsPossible(true);
  for (const NatService& n : {kServices[2], kServices[3]}) {
    SCOPED_TRACE(n.name);
    PacketSpec c = clientSpec(n, 1);
    c.ipv6_ext = {60};  // destination options
    const auto out = run(partial(c));
    ASSERT_TRUE(out.has_value());
    EXPECT_EQ(hex(*out), hex(expectedPartial(toBackend(c, n))));
  }
  PacketSpec tagged = clientSpec(kServices[0], 2);
  tagged.vlans = {100};
  Bytes in = pktgen::build(tagged);
  const size_t l4 = 18 + 20;  // after the tag
  set16(in, l4 + 16,
        pseudoFold(tagged.src, tagged.dst, static_cast<uint32_t>(in.size() - l4), LB_PROTO_TCP));
  const auto out = run(in);
  ASSERT_TRUE(out.has_value());
  const PacketSpec want = toBackend(tagged, kServices[0]);
  Bytes expected = pktgen::build(want);
  set16(expected, l4 + 16,
        pseudoFold(want.src, want.dst, static_cast<uint32_t>(expected.size() - l4), LB_PROTO_TCP));
  EXPECT_EQ(hex(*out), hex(expected));
}

// With partial checksums possible, a complete checksum is still updated as complete (unless it
// happens to equal the pseudo-header sum: the residual risk of 1 in 65536, documented in
// bpf/lib/lb.h), and an IPv4 UDP checksum 0 ("none") stays 0.
TEST_F(XdpPartialChecksums, CompleteChecksumsAndNoChecksumAreLeftAlone) {
  LOAD_OR_SKIP();
  xdp_->setPartialChecksumsPossible(true);
  Reference dpdk;
  for (const NatService& n : kServices) {
    for (uint32_t i = 0; i < 6; ++i) {
      SCOPED_TRACE(fmt::format("{} flow {}", n.name, i));
      const PacketSpec c = clientSpec(n, i);
      const Bytes in = pktgen::build(c);
      ASSERT_NE(get16(in, checksumAt(in, c.proto)), partialField(in, c))
          << "the fixture must not be the 1-in-65536 case";
      const auto out = run(in);
      ASSERT_TRUE(out.has_value());
      EXPECT_EQ(hex(*out), hex(pktgen::build(toBackend(c, n))));
      EXPECT_EQ(hex(*out), hex(dpdk.run(in, *snap_).value_or(Bytes{})));
      const PacketSpec r = replySpec(c, n);
      const auto back = run(pktgen::build(r));
      ASSERT_TRUE(back.has_value());
      EXPECT_EQ(hex(*back), hex(pktgen::build(toClient(r, n))));
    }
  }
  PacketSpec none = clientSpec(kServices[1], 3);
  none.udp_zero_checksum = true;
  const auto out = run(pktgen::build(none));
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(get16(*out, checksumAt(*out, LB_PROTO_UDP)), 0u);
  PacketSpec want = toBackend(none, kServices[1]);
  EXPECT_EQ(hex(*out), hex(pktgen::build(want)));
}

// Off (native attach, BPF_PROG_TEST_RUN, replay): every field is taken as complete and updated
// as such, the same bytes as the DPDK pipeline on a port that does not complete partial
// checksums (the xdp-diff comparisons rely on it).
TEST_F(XdpPartialChecksums, OffEveryFieldIsTakenAsComplete) {
  LOAD_OR_SKIP();
  ASSERT_FALSE(xdp_->partialChecksumsPossible());
  Reference dpdk;
  for (const NatService& n : kServices) {
    for (uint32_t i = 0; i < 6; ++i) {
      SCOPED_TRACE(fmt::format("{} flow {}", n.name, i));
      const PacketSpec c = clientSpec(n, i);
      const Bytes in = partial(c);
      const auto out = run(in);
      const auto ref = dpdk.run(in, *snap_);
      ASSERT_TRUE(out.has_value() && ref.has_value());
      EXPECT_EQ(hex(*out), hex(*ref));
      // RFC 1624 applied to the field as if complete: address and port both in the delta, so
      // the field is not the rewritten pseudo-header sum (unless by chance).
      EXPECT_NE(get16(*out, checksumAt(*out, c.proto)), partialField(*out, toBackend(c, n)));
      const PacketSpec r = replySpec(c, n);
      const Bytes rin = partial(r);
      const auto back = run(rin);
      const auto rref = dpdk.run(rin, *snap_);
      ASSERT_TRUE(back.has_value() && rref.has_value());
      EXPECT_EQ(hex(*back), hex(*rref));
    }
  }
}

}  // namespace
}  // namespace sluice
