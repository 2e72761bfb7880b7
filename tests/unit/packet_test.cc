// Tests of the data plane's packet parser (src/dataplane/packet.h) and header rewrites
// (src/dataplane/rewrite.h). Inputs are real frames built by the independent packet library
// (tools/pktgen), edited by hand where pktgen has no knob (IPv4 options, QinQ, malformed headers);
// rewritten frames are checked against frames pktgen builds from scratch with every checksum
// computed over the whole packet, so an incremental checksum slip shows up as a byte difference.
#include <arpa/inet.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "common/lb_abi.h"
#include "common/net.h"
#include "dataplane/packet.h"
#include "dataplane/rewrite.h"
#include "tools/pktgen/packet_builder.h"

namespace sluice {
namespace {

using pktgen::Bytes;
using pktgen::PacketSpec;

IpAddress ip(const char* text) {
  auto a = IpAddress::parse(text);
  EXPECT_TRUE(a.has_value()) << text;
  return a.value_or(IpAddress{});
}

MacAddress mac(const char* text) {
  auto m = MacAddress::parse(text);
  EXPECT_TRUE(m.has_value()) << text;
  return m.value_or(MacAddress{});
}

uint16_t get16(const Bytes& b, size_t at) { return static_cast<uint16_t>(b[at] << 8 | b[at + 1]); }

void set16(Bytes& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v >> 8);
  b[at + 1] = static_cast<uint8_t>(v);
}

// Parse a frame; the bytes are copied into a buffer of exactly data_len bytes so that any read
// past data_len is a heap overflow under AddressSanitizer.
int parse(const Bytes& frame, uint32_t data_len, uint32_t pkt_len, ParsedPacket& out) {
  std::vector<uint8_t> buf(frame.begin(), frame.begin() + data_len);
  return parsePacket(buf.data(), data_len, pkt_len, out);
}

int parse(const Bytes& frame, ParsedPacket& out) {
  const auto n = static_cast<uint32_t>(frame.size());
  return parse(frame, n, n, out);
}

int parseStatus(const Bytes& frame) {
  ParsedPacket p;
  return parse(frame, p);
}

std::string reasonName(int r) { return r == kParseOk ? "ok" : lb_drop_reason_name(r); }

#define EXPECT_REASON(expected, actual) \
  EXPECT_EQ(reasonName(actual), reasonName(expected))

// The lb_flow_key the parser should produce for a spec.
lb_flow_key expectedKey(const PacketSpec& s, bool with_ports = true) {
  lb_flow_key k;
  std::memset(&k, 0, sizeof(k));
  s.src.toWords(k.src);
  s.dst.toWords(k.dst);
  if (with_ports) {
    k.sport = htons(s.sport);
    k.dport = htons(s.dport);
  }
  k.proto = s.proto;
  k.family = s.src.family;
  return k;
}

std::string keyString(const lb_flow_key& k) {
  std::string out = IpAddress::fromWords(k.family, k.src).str() + ":" +
                    std::to_string(ntohs(k.sport)) + " -> " +
                    IpAddress::fromWords(k.family, k.dst).str() + ":" +
                    std::to_string(ntohs(k.dport)) + " proto " + std::to_string(k.proto) +
                    " family " + std::to_string(k.family) + " pad " + std::to_string(k.pad[0]) +
                    "," + std::to_string(k.pad[1]);
  return out;
}

void expectKeyEq(const lb_flow_key& expected, const lb_flow_key& actual) {
  EXPECT_EQ(std::memcmp(&expected, &actual, sizeof(lb_flow_key)), 0)
      << "expected " << keyString(expected) << "\n  actual " << keyString(actual);
}

// Recompute the IPv4 header checksum of the header at l3 from scratch.
void fixIpv4Checksum(Bytes& f, size_t l3) {
  const size_t ihl = (f[l3] & 0x0f) * 4u;
  set16(f, l3 + 10, 0);
  set16(f, l3 + 10,
        static_cast<uint16_t>(~pktgen::onesSum(std::span<const uint8_t>(f).subspan(l3, ihl))));
}

// Turn the IHL-5 header of a pktgen IPv4 frame into an IHL-`ihl` one by inserting NOP options.
// The L4 checksum does not cover IP options, so the frame stays fully valid.
Bytes withIpv4Options(Bytes f, size_t l3, int ihl) {
  const size_t extra = static_cast<size_t>(ihl - 5) * 4;
  f.insert(f.begin() + static_cast<ptrdiff_t>(l3 + 20), extra, uint8_t{0x01});  // NOP options
  f[l3] = static_cast<uint8_t>(0x40 | ihl);
  set16(f, l3 + 2, static_cast<uint16_t>(get16(f, l3 + 2) + extra));
  fixIpv4Checksum(f, l3);
  return f;
}

// Replace the outermost VLAN TPID (0x8100 at bytes 12..13) by the 802.1ad S-tag TPID.
void makeOuterQinQ(Bytes& f) {
  ASSERT_EQ(get16(f, 12), kEtherTypeVlan);
  set16(f, 12, kEtherTypeQinQ);
}

PacketSpec baseSpec(bool v6, uint8_t proto) {
  PacketSpec s;
  s.src_mac = mac("02:00:00:00:00:aa");
  s.dst_mac = mac("02:00:00:00:00:bb");
  if (v6) {
    s.src = ip("2001:db8:ff::1234:5678");
    s.dst = ip("2001:db8::10");
  } else {
    s.src = ip("198.51.100.7");
    s.dst = ip("192.0.2.10");
  }
  s.proto = proto;
  s.sport = 0xc1d2;  // asymmetric bytes: a byte-order slip changes the value
  s.dport = 0x0150;  // 336
  s.tcp_flags = 0xc2;  // CWR|ECE|SYN: all of the flag byte is kept, not just the low bits
  s.payload = {'h', 'e', 'l', 'l', 'o', '!', 0x00, 0xff, 0x7f};
  return s;
}

// ---------------------------------------------------------------------------------------------
// Every header combination: {IPv4, IPv6} x {TCP, UDP} x VLAN tagging.

enum class Tags { kNone, kOne, kOneQinQ, kTwo, kTwoQinQ };

struct ComboParam {
  bool v6;
  uint8_t proto;
  Tags tags;
};

int tagCount(Tags t) {
  switch (t) {
    case Tags::kNone: return 0;
    case Tags::kOne:
    case Tags::kOneQinQ: return 1;
    case Tags::kTwo:
    case Tags::kTwoQinQ: return 2;
  }
  return 0;
}

std::string comboName(const ::testing::TestParamInfo<ComboParam>& info) {
  const ComboParam& p = info.param;
  static const char* kTagNames[] = {"NoVlan", "Vlan", "QinQ1", "Vlan2", "QinQ2"};
  return std::string(p.v6 ? "Ipv6" : "Ipv4") + (p.proto == LB_PROTO_TCP ? "Tcp" : "Udp") +
         kTagNames[static_cast<int>(p.tags)];
}

std::vector<ComboParam> allCombos() {
  std::vector<ComboParam> out;
  for (bool v6 : {false, true}) {
    for (uint8_t proto : {uint8_t{LB_PROTO_TCP}, uint8_t{LB_PROTO_UDP}}) {
      for (Tags t : {Tags::kNone, Tags::kOne, Tags::kOneQinQ, Tags::kTwo, Tags::kTwoQinQ}) {
        out.push_back({v6, proto, t});
      }
    }
  }
  return out;
}

class PacketComboTest : public ::testing::TestWithParam<ComboParam> {
 protected:
  PacketSpec spec() const {
    PacketSpec s = baseSpec(GetParam().v6, GetParam().proto);
    const int n = tagCount(GetParam().tags);
    for (int i = 0; i < n; ++i) {
      s.vlans.push_back(static_cast<uint16_t>(0x0100 + 7 * i));
    }
    return s;
  }
  Bytes frame() const {
    Bytes f = pktgen::build(spec());
    const Tags t = GetParam().tags;
    if (t == Tags::kOneQinQ || t == Tags::kTwoQinQ) {
      makeOuterQinQ(f);
    }
    return f;
  }
  uint32_t l3() const { return 14 + 4 * tagCount(GetParam().tags); }
  uint32_t l4() const { return l3() + (GetParam().v6 ? 40 : 20); }
  uint32_t l4HeaderLen() const { return GetParam().proto == LB_PROTO_TCP ? 20 : 8; }
};

TEST_P(PacketComboTest, ParsesKeyOffsetsAndFlags) {
  const Bytes f = frame();
  ParsedPacket p;
  std::memset(&p, 0xa5, sizeof(p));  // garbage in: the parser must overwrite what it reports
  ASSERT_EQ(parse(f, p), kParseOk);
  expectKeyEq(expectedKey(spec()), p.key);
  EXPECT_EQ(p.l3_offset, l3());
  EXPECT_EQ(p.l4_offset, l4());
  EXPECT_FALSE(p.fragment);
  EXPECT_EQ(p.tcp_flags, GetParam().proto == LB_PROTO_TCP ? 0xc2 : 0);
  // Ports are in network order exactly as on the wire.
  EXPECT_EQ(std::memcmp(&p.key.sport, &f[l4()], 2), 0);
  EXPECT_EQ(std::memcmp(&p.key.dport, &f[l4() + 2], 2), 0);
  // The independent decoder agrees on the offsets.
  const auto d = pktgen::decode(f);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->l3_offset, p.l3_offset);
  EXPECT_EQ(d->l4_offset, p.l4_offset);
}

TEST_P(PacketComboTest, EveryTruncationIsDropped) {
  const Bytes f = frame();
  const uint32_t hdr_end = l3() + (GetParam().v6 ? 40 : 20);
  for (uint32_t len = 0; len < f.size(); ++len) {
    ParsedPacket p;
    const int r = parse(f, len, len, p);
    // Up to the end of the fixed IP header the frame is short; past it the IP length no longer
    // fits in the frame.
    const int expected = len < hdr_end ? LB_DROP_TRUNCATED : LB_DROP_BAD_IP_LENGTH;
    EXPECT_REASON(expected, r) << "data_len = pkt_len = " << len << " of " << f.size();
  }
}

TEST_P(PacketComboTest, HeadersMustBeInTheFirstSegment) {
  // pkt_len covers the whole frame (multi-segment mbuf) but data_len is the first segment only:
  // every header must lie inside data_len.
  const Bytes f = frame();
  const auto full = static_cast<uint32_t>(f.size());
  for (uint32_t len = 0; len <= full; ++len) {
    ParsedPacket p;
    const int r = parse(f, len, full, p);
    if (len < l4() + l4HeaderLen()) {
      EXPECT_REASON(LB_DROP_TRUNCATED, r) << "data_len " << len << " pkt_len " << full;
    } else {
      EXPECT_REASON(kParseOk, r) << "data_len " << len << " pkt_len " << full;
      if (r == kParseOk) {
        expectKeyEq(expectedKey(spec()), p.key);
      }
    }
  }
}

TEST_P(PacketComboTest, EthernetTrailerPaddingParses) {
  Bytes f = frame();
  const size_t ip_end = f.size();
  f.insert(f.end(), 23, uint8_t{0xee});  // trailer after the IP packet (e.g. minimum frame size)
  ParsedPacket p;
  ASSERT_EQ(parse(f, p), kParseOk);
  expectKeyEq(expectedKey(spec()), p.key);
  EXPECT_EQ(p.l4_offset, l4());
  // Cutting into the padding is fine; cutting into the IP packet is not.
  for (size_t len = ip_end - 1; len <= f.size(); ++len) {
    const auto n = static_cast<uint32_t>(len);
    EXPECT_REASON(len < ip_end ? LB_DROP_BAD_IP_LENGTH : kParseOk, parse(f, n, n, p)) << len;
  }
}

TEST_P(PacketComboTest, NonIpEtherTypesAreDropped) {
  for (uint16_t et : {uint16_t{0x0806}, uint16_t{0x88cc}, uint16_t{0x8847}, uint16_t{0x0000},
                      uint16_t{0xffff}}) {
    Bytes f = frame();
    set16(f, l3() - 2, et);
    EXPECT_REASON(LB_DROP_NON_IP, parseStatus(f)) << std::hex << et;
  }
}

TEST_P(PacketComboTest, WrongIpVersionIsBadHeader) {
  for (int version : {0, 1, 5, 7, 15, GetParam().v6 ? 4 : 6}) {
    Bytes f = frame();
    f[l3()] = static_cast<uint8_t>(version << 4 | (f[l3()] & 0x0f));
    EXPECT_REASON(LB_DROP_BAD_IP_HEADER, parseStatus(f)) << "version " << version;
  }
}

INSTANTIATE_TEST_SUITE_P(PacketAll, PacketComboTest, ::testing::ValuesIn(allCombos()), comboName);

TEST(PacketParse, EveryTcpFlagValueIsReported) {
  for (bool v6 : {false, true}) {
    for (size_t tags : {size_t{0}, size_t{2}}) {
      for (int flags = 0; flags < 256; ++flags) {
        PacketSpec s = baseSpec(v6, LB_PROTO_TCP);
        s.vlans.assign(tags, 9);
        s.tcp_flags = static_cast<uint8_t>(flags);
        ParsedPacket p;
        ASSERT_EQ(parse(pktgen::build(s), p), kParseOk);
        EXPECT_EQ(p.tcp_flags, flags);
      }
    }
  }
}

TEST(PacketParse, ThreeVlanTagsAreNotParsed) {
  // At most two tags are walked; the third TPID is then the "ethertype", which is not IP.
  PacketSpec s = baseSpec(false, LB_PROTO_TCP);
  s.vlans = {1, 2, 3};
  EXPECT_REASON(LB_DROP_NON_IP, parseStatus(pktgen::build(s)));
}

TEST(PacketParse, ArpFrameIsNonIp) {
  // A real ARP request: broadcast, ethertype 0x0806, 28 bytes of ARP.
  Bytes f = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0xaa, 0x08, 0x06,
             0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0, 0, 0, 0, 0xaa,
             198,  51,   100,  7,    0,    0,    0,    0,    0,    0,    192,  0, 2, 10};
  EXPECT_REASON(LB_DROP_NON_IP, parseStatus(f));
  // Also inside a VLAN tag.
  Bytes tagged(f.begin(), f.begin() + 12);
  tagged.insert(tagged.end(), {0x81, 0x00, 0x00, 0x05});
  tagged.insert(tagged.end(), f.begin() + 12, f.end());
  EXPECT_REASON(LB_DROP_NON_IP, parseStatus(tagged));
}

// ---------------------------------------------------------------------------------------------
// IPv4 header edge cases.

class PacketIpv4OptionsTest : public ::testing::TestWithParam<std::tuple<int, uint8_t>> {};

TEST_P(PacketIpv4OptionsTest, L4OffsetFollowsIhl) {
  const auto [ihl, proto] = GetParam();
  const PacketSpec s = baseSpec(false, proto);
  const Bytes f = withIpv4Options(pktgen::build(s), 14, ihl);
  // The hand-made frame is valid for the independent decoder too.
  const auto d = pktgen::decode(f);
  ASSERT_TRUE(d.has_value());
  ASSERT_TRUE(d->ip_checksum_ok);
  ASSERT_TRUE(d->l4_checksum_ok);
  ParsedPacket p;
  ASSERT_EQ(parse(f, p), kParseOk);
  EXPECT_EQ(p.l3_offset, 14);
  EXPECT_EQ(p.l4_offset, 14 + 4 * ihl);
  expectKeyEq(expectedKey(s), p.key);
  EXPECT_EQ(p.tcp_flags, proto == LB_PROTO_TCP ? 0xc2 : 0);
  // Truncation inside the options is TRUNCATED, not a read past the end.
  for (uint32_t len = 14 + 20; len < 14u + 4u * ihl; ++len) {
    EXPECT_REASON(LB_DROP_TRUNCATED, parse(f, len, len, p)) << len;
  }
}

INSTANTIATE_TEST_SUITE_P(PacketAll, PacketIpv4OptionsTest,
                         ::testing::Combine(::testing::Range(5, 16),
                                            ::testing::Values(uint8_t{LB_PROTO_TCP},
                                                              uint8_t{LB_PROTO_UDP})));

TEST(PacketParse, Ipv4IhlBelowFiveIsBadHeader) {
  for (int ihl = 0; ihl < 5; ++ihl) {
    Bytes f = pktgen::build(baseSpec(false, LB_PROTO_TCP));
    f[14] = static_cast<uint8_t>(0x40 | ihl);
    EXPECT_REASON(LB_DROP_BAD_IP_HEADER, parseStatus(f)) << "IHL " << ihl;
  }
}

TEST(PacketParse, Ipv4TotalLengthLargerThanFrame) {
  for (uint8_t proto : {uint8_t{LB_PROTO_TCP}, uint8_t{LB_PROTO_UDP}}) {
    Bytes f = pktgen::build(baseSpec(false, proto));
    const uint16_t total = get16(f, 16);
    for (uint16_t bad : {static_cast<uint16_t>(total + 1), static_cast<uint16_t>(total + 100),
                         uint16_t{0xffff}}) {
      set16(f, 16, bad);
      fixIpv4Checksum(f, 14);
      EXPECT_REASON(LB_DROP_BAD_IP_LENGTH, parseStatus(f)) << "total " << bad;
    }
  }
}

TEST(PacketParse, Ipv4TotalLengthBelowIhl) {
  for (int ihl : {5, 6, 15}) {
    Bytes f = withIpv4Options(pktgen::build(baseSpec(false, LB_PROTO_UDP)), 14, ihl);
    for (int total = 0; total < 4 * ihl; ++total) {
      set16(f, 16, static_cast<uint16_t>(total));
      EXPECT_REASON(LB_DROP_BAD_IP_LENGTH, parseStatus(f)) << "IHL " << ihl << " total " << total;
    }
    // Total == IHL: a header with an empty payload is a length-consistent IP packet but has no
    // room for a UDP header.
    set16(f, 16, static_cast<uint16_t>(4 * ihl));
    EXPECT_REASON(LB_DROP_BAD_L4_HEADER, parseStatus(f)) << "IHL " << ihl;
  }
}

TEST(PacketParse, Ipv4TotalLengthShorterThanL4HeaderWithTrailer) {
  // The frame has bytes enough (trailer), but the IP packet ends inside the TCP/UDP header.
  for (uint8_t proto : {uint8_t{LB_PROTO_TCP}, uint8_t{LB_PROTO_UDP}}) {
    Bytes f = pktgen::build(baseSpec(false, proto));
    const int hdr = proto == LB_PROTO_TCP ? 20 : 8;
    for (int l4len = 0; l4len < hdr; ++l4len) {
      set16(f, 16, static_cast<uint16_t>(20 + l4len));
      EXPECT_REASON(LB_DROP_BAD_L4_HEADER, parseStatus(f)) << int{proto} << " " << l4len;
    }
  }
}

TEST(PacketParse, Ipv6PayloadLengthLargerThanFrame) {
  Bytes f = pktgen::build(baseSpec(true, LB_PROTO_TCP));
  set16(f, 18, static_cast<uint16_t>(get16(f, 18) + 1));
  EXPECT_REASON(LB_DROP_BAD_IP_LENGTH, parseStatus(f));
  set16(f, 18, 0xffff);
  EXPECT_REASON(LB_DROP_BAD_IP_LENGTH, parseStatus(f));
  // Payload length 0: no room for the TCP header.
  set16(f, 18, 0);
  EXPECT_REASON(LB_DROP_BAD_L4_HEADER, parseStatus(f));
}

TEST(PacketParse, OtherIpProtocolsParseWithoutPorts) {
  // ICMP, GRE, SCTP: parsed (the pipeline finds no service for them), ports stay 0.
  for (uint8_t proto : {uint8_t{1}, uint8_t{47}, uint8_t{132}, uint8_t{58}}) {
    for (bool v6 : {false, true}) {
      PacketSpec s = baseSpec(v6, proto);
      ParsedPacket p;
      ASSERT_EQ(parse(pktgen::build(s), p), kParseOk);
      expectKeyEq(expectedKey(s, /*with_ports=*/false), p.key);
      EXPECT_EQ(p.l4_offset, 14 + (v6 ? 40 : 20));
      EXPECT_EQ(p.tcp_flags, 0);
      EXPECT_FALSE(p.fragment);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// L4 header edge cases.

TEST(PacketParse, TcpDataOffsetBelowFiveIsBadL4) {
  for (bool v6 : {false, true}) {
    const size_t l4 = 14 + (v6 ? 40 : 20);
    for (int doff = 0; doff < 5; ++doff) {
      Bytes f = pktgen::build(baseSpec(v6, LB_PROTO_TCP));
      f[l4 + 12] = static_cast<uint8_t>(doff << 4);
      EXPECT_REASON(LB_DROP_BAD_L4_HEADER, parseStatus(f)) << "v6 " << v6 << " doff " << doff;
    }
  }
}

TEST(PacketParse, TcpDataOffsetRules) {
  for (bool v6 : {false, true}) {
    const size_t l4 = 14 + (v6 ? 40 : 20);
    PacketSpec s = baseSpec(v6, LB_PROTO_TCP);
    s.payload.assign(20, 0x01);  // 40 bytes of TCP segment
    for (int doff = 5; doff < 16; ++doff) {
      Bytes f = pktgen::build(s);
      f[l4 + 12] = static_cast<uint8_t>(doff << 4);
      // Options up to the end of the segment are fine; a data offset past it is not.
      EXPECT_REASON(doff * 4 <= 40 ? kParseOk : LB_DROP_BAD_L4_HEADER, parseStatus(f))
          << "v6 " << v6 << " doff " << doff;
    }
  }
}

TEST(PacketParse, UdpLengthRules) {
  for (bool v6 : {false, true}) {
    const size_t l4 = 14 + (v6 ? 40 : 20);
    PacketSpec s = baseSpec(v6, LB_PROTO_UDP);
    s.payload.assign(10, 0x01);  // UDP length 18
    for (int ulen = 0; ulen < 40; ++ulen) {
      Bytes f = pktgen::build(s);
      ASSERT_EQ(get16(f, l4 + 4), 18);
      set16(f, l4 + 4, static_cast<uint16_t>(ulen));
      // Below 8: not even the header; above the IP payload: runs past it. A UDP length shorter
      // than the IP payload is accepted (the rest is IP-level padding).
      const int expected = (ulen < 8 || ulen > 18) ? LB_DROP_BAD_L4_HEADER : kParseOk;
      EXPECT_REASON(expected, parseStatus(f)) << "v6 " << v6 << " udp length " << ulen;
    }
    Bytes f = pktgen::build(s);
    set16(f, l4 + 4, 0xffff);
    EXPECT_REASON(LB_DROP_BAD_L4_HEADER, parseStatus(f));
  }
}

// ---------------------------------------------------------------------------------------------
// Fragments.

TEST(PacketParse, Ipv4FragmentsAreMarked) {
  struct Case {
    bool mf;
    uint16_t offset;
    bool df;
    bool fragment;
  };
  for (const Case& c : {Case{true, 0, false, true}, Case{false, 1, false, true},
                        Case{true, 185, false, true}, Case{false, 0x1fff, false, true},
                        Case{false, 0, true, false}, Case{false, 0, false, false}}) {
    for (uint8_t proto : {uint8_t{LB_PROTO_TCP}, uint8_t{LB_PROTO_UDP}}) {
      PacketSpec s = baseSpec(false, proto);
      s.more_fragments = c.mf;
      s.frag_offset = c.offset;
      Bytes f = pktgen::build(s);
      if (c.df) {
        f[20] |= 0x40;
        fixIpv4Checksum(f, 14);
      }
      ParsedPacket p;
      ASSERT_EQ(parse(f, p), kParseOk) << c.mf << " " << c.offset;
      EXPECT_EQ(p.fragment, c.fragment) << c.mf << " " << c.offset;
      // A fragment has no ports in its key (a later one has no L4 header at all).
      expectKeyEq(expectedKey(s, /*with_ports=*/!c.fragment), p.key);
      EXPECT_EQ(p.tcp_flags, (!c.fragment && proto == LB_PROTO_TCP) ? 0xc2 : 0);
      EXPECT_EQ(p.l4_offset, 34);
    }
  }
}

TEST(PacketParse, Ipv4LaterFragmentShorterThanL4Header) {
  // A non-first fragment carrying 4 bytes: no TCP header to check, still a fragment.
  PacketSpec s = baseSpec(false, LB_PROTO_TCP);
  s.frag_offset = 3;
  s.payload = {1, 2, 3, 4};
  ParsedPacket p;
  ASSERT_EQ(parse(pktgen::build(s), p), kParseOk);
  EXPECT_TRUE(p.fragment);
}

TEST(PacketParse, Ipv6FragmentHeaderIsMarked) {
  for (uint16_t offset : {uint16_t{0}, uint16_t{100}}) {
    for (bool mf : {false, true}) {
      for (const std::vector<uint8_t>& ext :
           {std::vector<uint8_t>{44}, std::vector<uint8_t>{0, 44}, std::vector<uint8_t>{0, 44, 60}}) {
        PacketSpec s = baseSpec(true, LB_PROTO_UDP);
        s.ipv6_ext = ext;
        s.frag_offset = offset;
        s.more_fragments = mf;
        ParsedPacket p;
        ASSERT_EQ(parse(pktgen::build(s), p), kParseOk);
        EXPECT_TRUE(p.fragment);
        expectKeyEq(expectedKey(s, /*with_ports=*/false), p.key);
        EXPECT_EQ(p.l4_offset, 54 + 8 * ext.size());
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// IPv6 extension headers.

TEST(PacketParse, Ipv6ExtensionHeadersAreWalked) {
  const std::vector<std::vector<uint8_t>> chains = {
      {0}, {60}, {43}, {0, 60}, {0, 43, 60}, {0, 60, 60, 60}, {0, 43, 60, 60, 43, 60}};
  for (uint8_t proto : {uint8_t{LB_PROTO_TCP}, uint8_t{LB_PROTO_UDP}}) {
    for (const auto& chain : chains) {
      PacketSpec s = baseSpec(true, proto);
      s.ipv6_ext = chain;
      const Bytes f = pktgen::build(s);
      ParsedPacket p;
      ASSERT_EQ(parse(f, p), kParseOk) << chain.size();
      EXPECT_EQ(p.l4_offset, 54 + 8 * chain.size());
      expectKeyEq(expectedKey(s), p.key);
      EXPECT_FALSE(p.fragment);
      EXPECT_EQ(p.tcp_flags, proto == LB_PROTO_TCP ? 0xc2 : 0);
      const auto d = pktgen::decode(f);
      ASSERT_TRUE(d.has_value());
      EXPECT_EQ(d->l4_offset, p.l4_offset);
    }
  }
}

TEST(PacketParse, Ipv6ExtensionHeaderLimit) {
  // kMaxIpv6ExtHeaders headers are walked; one more is a drop, whatever follows.
  for (size_t n = 1; n <= 9; ++n) {
    PacketSpec s = baseSpec(true, LB_PROTO_TCP);
    s.ipv6_ext.assign(n, 60);
    s.ipv6_ext[0] = 0;
    ParsedPacket p;
    const int r = parse(pktgen::build(s), p);
    if (n <= static_cast<size_t>(kMaxIpv6ExtHeaders)) {
      EXPECT_REASON(kParseOk, r) << n;
      EXPECT_EQ(p.l4_offset, 54 + 8 * n);
    } else {
      EXPECT_REASON(LB_DROP_IPV6_EXT_LIMIT, r) << n;
    }
  }
}

TEST(PacketParse, Ipv6LongerExtensionHeader) {
  // A hop-by-hop header with Hdr Ext Len 2 (24 bytes), made by hand.
  PacketSpec s = baseSpec(true, LB_PROTO_TCP);
  s.ipv6_ext = {0};
  Bytes f = pktgen::build(s);
  const size_t eh = 54;
  f.insert(f.begin() + eh + 8, 16, uint8_t{0});
  f[eh + 1] = 2;
  f[eh + 3] = 20;  // PadN covering the rest
  set16(f, 18, static_cast<uint16_t>(get16(f, 18) + 16));
  const auto d = pktgen::decode(f);
  ASSERT_TRUE(d.has_value());
  ASSERT_TRUE(d->l4_checksum_ok);
  ParsedPacket p;
  ASSERT_EQ(parse(f, p), kParseOk);
  EXPECT_EQ(p.l4_offset, eh + 24);
  expectKeyEq(expectedKey(s), p.key);
  // Truncation inside the extension header chain.
  for (uint32_t len = 54; len < eh + 24 + 20; ++len) {
    EXPECT_REASON(LB_DROP_TRUNCATED, parse(f, len, static_cast<uint32_t>(f.size()), p)) << len;
  }
  // Hdr Ext Len pointing past the IPv6 payload.
  f[eh + 1] = 200;
  EXPECT_REASON(LB_DROP_BAD_IP_LENGTH, parseStatus(f));
}

TEST(PacketParse, Ipv6AuthenticationHeaderLength) {
  // AH counts its length in 4-byte words minus 2 (RFC 4302): Payload Len 4 means 24 bytes.
  PacketSpec s = baseSpec(true, LB_PROTO_UDP);
  Bytes f = pktgen::build(s);
  Bytes ah(24, 0);
  ah[0] = LB_PROTO_UDP;
  ah[1] = 4;
  f.insert(f.begin() + 54, ah.begin(), ah.end());
  f[20] = 51;
  set16(f, 18, static_cast<uint16_t>(get16(f, 18) + 24));
  ParsedPacket p;
  ASSERT_EQ(parse(f, p), kParseOk);
  EXPECT_EQ(p.l4_offset, 54 + 24);
  expectKeyEq(expectedKey(s), p.key);
}

// ---------------------------------------------------------------------------------------------
// Fuzz: random bytes and random mutations of valid frames must never crash or read outside
// [data, data + data_len); whatever parses must have offsets inside the frame. Run under
// -fsanitize=address to catch out-of-bounds reads (the buffer is exactly data_len bytes).

std::vector<Bytes> seedFrames() {
  std::vector<Bytes> out;
  for (bool v6 : {false, true}) {
    for (uint8_t proto : {uint8_t{LB_PROTO_TCP}, uint8_t{LB_PROTO_UDP}, uint8_t{1}}) {
      for (int tags = 0; tags <= 2; ++tags) {
        PacketSpec s = baseSpec(v6, proto);
        s.vlans.assign(static_cast<size_t>(tags), 5);
        out.push_back(pktgen::build(s));
        if (v6) {
          s.ipv6_ext = {0, 43, 60};
          out.push_back(pktgen::build(s));
          s.ipv6_ext = {44};
          s.frag_offset = 2;
          out.push_back(pktgen::build(s));
        } else {
          out.push_back(withIpv4Options(pktgen::build(s), 14 + 4 * tags, 9));
          s.more_fragments = true;
          out.push_back(pktgen::build(s));
        }
      }
    }
  }
  return out;
}

// Check the parser's result on one input; run the rewrites when it is a TCP/UDP packet, so that
// they too are exercised on odd-but-accepted frames.
void fuzzOne(const std::vector<uint8_t>& buf, uint32_t pkt_len, uint64_t& accepted) {
  ParsedPacket p;
  const auto data_len = static_cast<uint32_t>(buf.size());
  const int r = parsePacket(buf.data(), data_len, pkt_len, p);
  ASSERT_TRUE(r == kParseOk || (r >= 0 && r < LB_DROP__COUNT)) << r;
  if (r != kParseOk) {
    return;
  }
  ++accepted;
  ASSERT_TRUE(p.key.family == LB_FAMILY_IPV4 || p.key.family == LB_FAMILY_IPV6);
  ASSERT_GE(p.l3_offset, 14u);
  ASSERT_LE(p.l3_offset + (p.key.family == LB_FAMILY_IPV4 ? 20u : 40u), data_len);
  ASSERT_LE(p.l4_offset, pkt_len);
  if (p.fragment || (p.key.proto != LB_PROTO_TCP && p.key.proto != LB_PROTO_UDP)) {
    ASSERT_EQ(p.key.sport, 0);
    ASSERT_EQ(p.key.dport, 0);
    return;
  }
  ASSERT_LE(p.l4_offset + (p.key.proto == LB_PROTO_TCP ? 20u : 8u), data_len);
  // Rewrite in a private copy of exactly data_len bytes.
  std::vector<uint8_t> copy = buf;
  const uint8_t addr[16] = {10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  rewriteL3L4(copy.data(), p, true, addr, htons(8080));
  rewriteL3L4(copy.data(), p, false, addr, htons(53));
  const uint8_t m[6] = {1, 2, 3, 4, 5, 6};
  rewriteMacs(copy.data(), m, m);
}

TEST(PacketFuzz, RandomBytesAndMutationsNeverCrash) {
  const std::vector<Bytes> seeds = seedFrames();
  std::mt19937_64 rng(0x5111ce5eedull);
  auto below = [&](uint64_t n) { return static_cast<uint32_t>(rng() % n); };
  static const uint8_t kInteresting[] = {0x00, 0x01, 0x05, 0x06, 0x0f, 0x11, 0x20, 0x2c, 0x33,
                                         0x3c, 0x40, 0x45, 0x4f, 0x60, 0x7f, 0x80, 0x81, 0x86,
                                         0x88, 0xa8, 0xdd, 0xf0, 0xfe, 0xff, 0x08, 0x2b, 0x00};
  uint64_t accepted = 0;
  constexpr int kIterations = 200000;
  for (int it = 0; it < kIterations; ++it) {
    std::vector<uint8_t> buf;
    if (below(8) == 0) {
      // Pure random bytes, sometimes with an IP ethertype to get past the first check.
      buf.resize(below(160));
      for (auto& b : buf) {
        b = static_cast<uint8_t>(rng());
      }
      if (buf.size() >= 15 && below(2) == 0) {
        const uint16_t et = below(2) ? kEtherTypeIpv4 : kEtherTypeIpv6;
        buf[12] = static_cast<uint8_t>(et >> 8);
        buf[13] = static_cast<uint8_t>(et);
        buf[14] = static_cast<uint8_t>((et == kEtherTypeIpv4 ? 0x40 : 0x60) | (rng() & 0x0f));
      }
    } else {
      buf = seeds[below(seeds.size())];
      const uint32_t mutations = 1 + below(6);
      for (uint32_t m = 0; m < mutations; ++m) {
        if (buf.empty()) {
          break;
        }
        switch (below(6)) {
          case 0:  // flip bits
            buf[below(buf.size())] ^= static_cast<uint8_t>(1u << below(8));
            break;
          case 1:  // random byte, biased to the headers
            buf[below(std::min<size_t>(buf.size(), 80))] = static_cast<uint8_t>(rng());
            break;
          case 2:  // interesting value
            buf[below(std::min<size_t>(buf.size(), 100))] =
                kInteresting[below(sizeof(kInteresting))];
            break;
          case 3:  // truncate
            buf.resize(below(buf.size() + 1));
            break;
          case 4:  // extend with random bytes
            for (uint32_t n = below(40); n > 0; --n) {
              buf.push_back(static_cast<uint8_t>(rng()));
            }
            break;
          case 5: {  // random 16-bit length-ish value at an even offset
            if (buf.size() >= 2) {
              const size_t at = below(std::min<size_t>(buf.size() - 1, 90)) & ~size_t{1};
              const uint16_t v = static_cast<uint16_t>(below(2) ? rng() : buf.size() - at + below(9) - 4);
              buf[at] = static_cast<uint8_t>(v >> 8);
              buf[at + 1] = static_cast<uint8_t>(v);
            }
            break;
          }
        }
      }
    }
    buf.shrink_to_fit();  // exactly data_len bytes on the heap
    // pkt_len >= data_len: a multi-segment frame whose tail is not in the first segment.
    const auto pkt_len = static_cast<uint32_t>(buf.size() + (below(4) == 0 ? below(64) : 0));
    fuzzOne(buf, pkt_len, accepted);
    if (::testing::Test::HasFatalFailure()) {
      FAIL() << "iteration " << it;
    }
  }
  // The mutations must keep a fair share of inputs parseable, or the fuzz only tests the
  // first few checks.
  EXPECT_GT(accepted, kIterations / 10u);
}

// ---------------------------------------------------------------------------------------------
// Rewrites: DR (MACs only) and NAT (one address + one port, incremental checksums).

struct RewriteParam {
  bool v6;
  uint8_t proto;
  size_t payload;
};

std::string rewriteName(const ::testing::TestParamInfo<RewriteParam>& info) {
  return std::string(info.param.v6 ? "Ipv6" : "Ipv4") +
         (info.param.proto == LB_PROTO_TCP ? "Tcp" : "Udp") + "Payload" +
         std::to_string(info.param.payload);
}

std::vector<RewriteParam> rewriteParams() {
  std::vector<RewriteParam> out;
  for (bool v6 : {false, true}) {
    for (uint8_t proto : {uint8_t{LB_PROTO_TCP}, uint8_t{LB_PROTO_UDP}}) {
      for (size_t payload : {size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{17}, size_t{64},
                             size_t{513}, size_t{1400}}) {
        out.push_back({v6, proto, payload});
      }
    }
  }
  return out;
}

IpAddress randomAddress(std::mt19937_64& rng, bool v6) {
  IpAddress a;
  a.family = v6 ? LB_FAMILY_IPV6 : LB_FAMILY_IPV4;
  for (size_t i = 0; i < (v6 ? 16u : 4u); ++i) {
    a.bytes[i] = static_cast<uint8_t>(rng());
  }
  return a;
}

// Parse, rewrite one side and return the frame.
Bytes rewritten(Bytes f, bool which_dst, const IpAddress& addr, uint16_t port) {
  ParsedPacket p;
  EXPECT_EQ(parse(f, p), kParseOk);
  rewriteL3L4(f.data(), p, which_dst, addr.bytes.data(), htons(port));
  return f;
}

void expectChecksumsOk(const Bytes& f) {
  const auto d = pktgen::decode(f);
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(d->ip_checksum_ok);
  EXPECT_TRUE(d->l4_checksum_ok);
}

class RewriteTest : public ::testing::TestWithParam<RewriteParam> {
 protected:
  PacketSpec spec(std::mt19937_64& rng) const {
    PacketSpec s = baseSpec(GetParam().v6, GetParam().proto);
    s.src = randomAddress(rng, GetParam().v6);
    s.dst = randomAddress(rng, GetParam().v6);
    s.sport = static_cast<uint16_t>(rng());
    s.dport = static_cast<uint16_t>(rng());
    s.ip_id = static_cast<uint16_t>(rng());
    s.seq = static_cast<uint32_t>(rng());
    s.payload.resize(GetParam().payload);
    for (auto& b : s.payload) {
      b = static_cast<uint8_t>(rng());
    }
    return s;
  }
};

TEST_P(RewriteTest, NatForwardMatchesScratchBuild) {
  std::mt19937_64 rng(1000 + GetParam().payload);
  for (int i = 0; i < 200; ++i) {
    const PacketSpec in = spec(rng);
    PacketSpec out = in;
    out.dst = randomAddress(rng, GetParam().v6);
    out.dport = static_cast<uint16_t>(rng());
    const Bytes got = rewritten(pktgen::build(in), true, out.dst, out.dport);
    expectChecksumsOk(got);
    ASSERT_EQ(got, pktgen::build(out)) << "iteration " << i;
  }
}

TEST_P(RewriteTest, NatReplyMatchesScratchBuild) {
  std::mt19937_64 rng(2000 + GetParam().payload);
  for (int i = 0; i < 200; ++i) {
    const PacketSpec in = spec(rng);
    PacketSpec out = in;
    out.src = randomAddress(rng, GetParam().v6);
    out.sport = static_cast<uint16_t>(rng());
    const Bytes got = rewritten(pktgen::build(in), false, out.src, out.sport);
    expectChecksumsOk(got);
    ASSERT_EQ(got, pktgen::build(out)) << "iteration " << i;
  }
}

TEST_P(RewriteTest, ForwardThenReplyRoundTrip) {
  // Client -> VIP rewritten to backend, the backend's answer rewritten back to VIP: the client
  // sees exactly the frame a direct exchange with the VIP would have produced.
  std::mt19937_64 rng(3000 + GetParam().payload);
  for (int i = 0; i < 50; ++i) {
    PacketSpec reply = spec(rng);  // backend -> client
    PacketSpec expected = reply;
    expected.src = randomAddress(rng, GetParam().v6);  // the VIP
    expected.sport = static_cast<uint16_t>(rng());
    Bytes f = rewritten(pktgen::build(reply), false, expected.src, expected.sport);
    ASSERT_EQ(f, pktgen::build(expected));
    // Rewriting back gives the original bytes.
    f = rewritten(f, false, reply.src, reply.sport);
    ASSERT_EQ(f, pktgen::build(reply));
  }
}

TEST_P(RewriteTest, SameAddressAndPortIsANoOp) {
  std::mt19937_64 rng(4000 + GetParam().payload);
  const PacketSpec in = spec(rng);
  const Bytes f = pktgen::build(in);
  EXPECT_EQ(rewritten(f, true, in.dst, in.dport), f);
  EXPECT_EQ(rewritten(f, false, in.src, in.sport), f);
}

TEST_P(RewriteTest, WithVlanTagsAndIpOptionsOrExtensionHeaders) {
  std::mt19937_64 rng(5000 + GetParam().payload);
  for (int i = 0; i < 50; ++i) {
    PacketSpec in = spec(rng);
    in.vlans = {static_cast<uint16_t>(i), 7};
    if (GetParam().v6) {
      in.ipv6_ext = {0, 60};
    }
    PacketSpec out = in;
    out.dst = randomAddress(rng, GetParam().v6);
    out.dport = static_cast<uint16_t>(rng());
    Bytes fin = pktgen::build(in);
    Bytes fout = pktgen::build(out);
    if (!GetParam().v6) {
      fin = withIpv4Options(fin, 22, 5 + i % 11);
      fout = withIpv4Options(fout, 22, 5 + i % 11);
    }
    const Bytes got = rewritten(fin, true, out.dst, out.dport);
    expectChecksumsOk(got);
    ASSERT_EQ(got, fout) << "iteration " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(RewriteAll, RewriteTest, ::testing::ValuesIn(rewriteParams()),
                         rewriteName);

TEST(RewriteUdp, Ipv4ZeroChecksumStaysZero) {
  for (bool which_dst : {true, false}) {
    for (size_t payload : {0, 1, 33}) {
      PacketSpec in = baseSpec(false, LB_PROTO_UDP);
      in.udp_zero_checksum = true;
      in.payload.assign(payload, 0x5a);
      PacketSpec out = in;
      if (which_dst) {
        out.dst = ip("10.0.0.77");
        out.dport = 5353;
      } else {
        out.src = ip("203.0.113.9");
        out.sport = 53;
      }
      const Bytes got = rewritten(pktgen::build(in), which_dst, which_dst ? out.dst : out.src,
                                  which_dst ? out.dport : out.sport);
      EXPECT_EQ(get16(got, 14 + 20 + 6), 0);
      EXPECT_EQ(got, pktgen::build(out));
      const auto d = pktgen::decode(got);
      ASSERT_TRUE(d.has_value());
      EXPECT_TRUE(d->udp_checksum_zero);
      EXPECT_TRUE(d->ip_checksum_ok);
    }
  }
}

// The value to put in a 16-bit word of the payload (at an even offset, currently 0) so that the
// L4 sum of the frame built from `s` becomes 0xFFFF, i.e. its computed checksum becomes 0.
// With the word at 0, the stored checksum is C = ~S (or 0xFFFF for UDP when ~S = 0); adding the
// word C makes the one's-complement sum S + ~S = 0xFFFF in every case.
uint16_t zeroingWord(const PacketSpec& s, size_t l4) {
  const Bytes f = pktgen::build(s);
  return get16(f, l4 + (s.proto == LB_PROTO_TCP ? 16 : 6));
}

TEST(RewriteUdp, ComputedZeroIsSentAsAllOnes) {
  // Construct packets whose checksum, after the rewrite, computes to 0: RFC 768 says it is sent
  // as 0xFFFF (0 would mean "no checksum"). pktgen does the same from scratch, so the frames must
  // be byte-identical, and the raw field must read 0xFFFF.
  std::mt19937_64 rng(77);
  int triggered = 0;
  for (bool v6 : {false, true}) {
    const size_t l4 = 14 + (v6 ? 40 : 20);
    for (bool which_dst : {true, false}) {
      for (size_t payload : {size_t{2}, size_t{3}, size_t{40}, size_t{41}}) {
        PacketSpec out = baseSpec(v6, LB_PROTO_UDP);
        out.src = randomAddress(rng, v6);
        out.dst = randomAddress(rng, v6);
        out.payload.assign(payload, 0);
        for (size_t i = 2; i < payload; ++i) {
          out.payload[i] = static_cast<uint8_t>(rng());
        }
        const uint16_t w = zeroingWord(out, l4);
        out.payload[0] = static_cast<uint8_t>(w >> 8);
        out.payload[1] = static_cast<uint8_t>(w);
        const Bytes expected = pktgen::build(out);
        ASSERT_EQ(get16(expected, l4 + 6), 0xffff) << "construction failed";
        // The same packet before the rewrite: another address and port on the rewritten side.
        PacketSpec in = out;
        if (which_dst) {
          in.dst = randomAddress(rng, v6);
          in.dport = 4242;
        } else {
          in.src = randomAddress(rng, v6);
          in.sport = 4242;
        }
        const Bytes before = pktgen::build(in);
        ASSERT_NE(get16(before, l4 + 6), 0xffff);
        const Bytes got = rewritten(before, which_dst, which_dst ? out.dst : out.src,
                                    which_dst ? out.dport : out.sport);
        EXPECT_EQ(get16(got, l4 + 6), 0xffff);
        EXPECT_EQ(got, expected);
        expectChecksumsOk(got);
        ++triggered;
      }
    }
  }
  EXPECT_EQ(triggered, 16);
}

TEST(RewriteUdp, AllOnesChecksumInputIsHandled) {
  // The reverse: the input carries 0xFFFF (a computed 0); the rewrite must give the right value.
  std::mt19937_64 rng(78);
  for (bool v6 : {false, true}) {
    const size_t l4 = 14 + (v6 ? 40 : 20);
    PacketSpec in = baseSpec(v6, LB_PROTO_UDP);
    in.payload.assign(20, 0);
    const uint16_t w = zeroingWord(in, l4);
    in.payload[0] = static_cast<uint8_t>(w >> 8);
    in.payload[1] = static_cast<uint8_t>(w);
    const Bytes before = pktgen::build(in);
    ASSERT_EQ(get16(before, l4 + 6), 0xffff);
    for (int i = 0; i < 20; ++i) {
      PacketSpec out = in;
      out.dst = randomAddress(rng, v6);
      out.dport = static_cast<uint16_t>(rng());
      const Bytes got = rewritten(before, true, out.dst, out.dport);
      EXPECT_EQ(got, pktgen::build(out));
      expectChecksumsOk(got);
    }
  }
}

TEST(RewriteTcp, ChecksumThatBecomesZero) {
  // TCP has no special zero: a computed 0x0000 is sent as is. Both directions through zero.
  std::mt19937_64 rng(79);
  for (bool v6 : {false, true}) {
    const size_t l4 = 14 + (v6 ? 40 : 20);
    for (size_t payload : {size_t{2}, size_t{7}}) {
      PacketSpec zero = baseSpec(v6, LB_PROTO_TCP);
      zero.payload.assign(payload, 0x33);
      zero.payload[0] = zero.payload[1] = 0;
      const uint16_t w = zeroingWord(zero, l4);
      zero.payload[0] = static_cast<uint8_t>(w >> 8);
      zero.payload[1] = static_cast<uint8_t>(w);
      const Bytes fzero = pktgen::build(zero);
      ASSERT_EQ(get16(fzero, l4 + 16), 0);
      PacketSpec other = zero;
      other.dst = randomAddress(rng, v6);
      other.dport = 9999;
      const Bytes fother = pktgen::build(other);
      // other -> zero: the result is a checksum of 0x0000.
      Bytes got = rewritten(fother, true, zero.dst, zero.dport);
      EXPECT_EQ(get16(got, l4 + 16), 0);
      EXPECT_EQ(got, fzero);
      expectChecksumsOk(got);
      // zero -> other: starting from 0x0000.
      got = rewritten(fzero, true, other.dst, other.dport);
      EXPECT_EQ(got, fother);
      expectChecksumsOk(got);
    }
  }
}

TEST(RewriteIpv4, HeaderChecksumThatBecomesZero) {
  // Pick the IP id so that the new IPv4 header checksum is 0x0000.
  std::mt19937_64 rng(80);
  for (bool which_dst : {true, false}) {
    for (int i = 0; i < 20; ++i) {
      PacketSpec out = baseSpec(false, i % 2 ? LB_PROTO_TCP : LB_PROTO_UDP);
      out.src = randomAddress(rng, false);
      out.dst = randomAddress(rng, false);
      out.ip_id = 0;
      out.ip_id = get16(pktgen::build(out), 24);  // S + ~S = 0xFFFF: checksum 0
      const Bytes expected = pktgen::build(out);
      ASSERT_EQ(get16(expected, 24), 0);
      PacketSpec in = out;
      (which_dst ? in.dst : in.src) = randomAddress(rng, false);
      const Bytes got = rewritten(pktgen::build(in), which_dst, which_dst ? out.dst : out.src,
                                  which_dst ? out.dport : out.sport);
      EXPECT_EQ(got, expected);
      expectChecksumsOk(got);
      // And away from zero again.
      const Bytes back = rewritten(expected, which_dst, which_dst ? in.dst : in.src,
                                   which_dst ? in.dport : in.sport);
      EXPECT_EQ(back, pktgen::build(in));
    }
  }
}

TEST(RewriteMacs, ChangesOnlyTheFirstTwelveBytes) {
  for (bool v6 : {false, true}) {
    for (uint8_t proto : {uint8_t{LB_PROTO_TCP}, uint8_t{LB_PROTO_UDP}}) {
      PacketSpec s = baseSpec(v6, proto);
      s.vlans = {42};
      const Bytes original = pktgen::build(s);
      Bytes f = original;
      const uint8_t dst[6] = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
      const uint8_t src[6] = {0x02, 0x66, 0x77, 0x88, 0x99, 0xaa};
      rewriteMacs(f.data(), dst, src);
      EXPECT_EQ(std::memcmp(f.data(), dst, 6), 0);
      EXPECT_EQ(std::memcmp(f.data() + 6, src, 6), 0);
      ASSERT_EQ(f.size(), original.size());
      EXPECT_TRUE(std::equal(f.begin() + 12, f.end(), original.begin() + 12));
      PacketSpec expected = s;
      expected.dst_mac.bytes = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
      expected.src_mac.bytes = {0x02, 0x66, 0x77, 0x88, 0x99, 0xaa};
      EXPECT_EQ(f, pktgen::build(expected));
    }
  }
}

}  // namespace
}  // namespace sluice
