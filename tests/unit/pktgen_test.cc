// Tests of the independent packet library (tools/pktgen): checksums against known vectors,
// build/decode round trips, pcap I/O and the synthetic traffic generator.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "tools/pktgen/packet_builder.h"
#include "tools/pktgen/pcap_io.h"
#include "tools/pktgen/traffic.h"

namespace pktgen {
namespace {

sluice::IpAddress ip(const char* text) {
  auto a = sluice::IpAddress::parse(text);
  EXPECT_TRUE(a.has_value()) << text;
  return a.value_or(sluice::IpAddress{});
}

uint16_t get16(const Bytes& b, size_t at) { return static_cast<uint16_t>(b[at] << 8 | b[at + 1]); }

// A file name under the temp directory, removed when the object goes away.
class TempPath {
public:
  explicit TempPath(const std::string& stem)
      : path_(std::filesystem::temp_directory_path() /
              (stem + "_" + std::to_string(::getpid()) + "_" +
               ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".pcap")) {}
  ~TempPath() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  std::string str() const { return path_.string(); }

private:
  std::filesystem::path path_;
};

void writeFile(const std::string& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

Bytes readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// ---------------------------------------------------------------------------------------------
// Checksums against hand-computed vectors.

TEST(PktgenChecksum, Rfc1071Example) {
  // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (after the end-around carry).
  const Bytes data = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
  EXPECT_EQ(onesSum(data), 0xddf2);
  // The sum is byte-order independent in the sense of RFC 1071 1.2.B: swapped pairs, swapped sum.
  const Bytes swapped = {0x01, 0x00, 0x03, 0xf2, 0xf5, 0xf4, 0xf7, 0xf6};
  EXPECT_EQ(onesSum(swapped), 0xf2dd);
}

TEST(PktgenChecksum, OddLengthPadsWithZero) {
  EXPECT_EQ(onesSum(Bytes{0x01}), 0x0100);
  EXPECT_EQ(onesSum(Bytes{0x12, 0x34, 0x56}), 0x1234 + 0x5600);
  EXPECT_EQ(onesSum(Bytes{}), 0);
  EXPECT_EQ(onesSum(Bytes{}, 0x1FFFF), 0x0001);  // initial value folded too
  EXPECT_EQ(onesSum(Bytes{0xFF, 0xFF, 0x00, 0x01}), 0x0001);  // end-around carry
}

TEST(PktgenChecksum, ClassicIpv4HeaderVector) {
  // 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7
  Bytes hdr = {0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
               0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7};
  EXPECT_EQ(static_cast<uint16_t>(~onesSum(hdr)), 0xb861);
  hdr[10] = 0xb8;
  hdr[11] = 0x61;
  EXPECT_EQ(onesSum(hdr), 0xFFFF);  // a correct header sums to all ones
}

TEST(PktgenChecksum, BuildMatchesClassicIpv4Header) {
  // The same header through build(): 0x73 = 20 IP + 8 UDP + 87 payload. build() never sets DF,
  // so the expected checksum is the vector's with 0x4000 taken out of the sum: 0xf861.
  PacketSpec s;
  s.src = ip("192.168.0.1");
  s.dst = ip("192.168.0.199");
  s.proto = LB_PROTO_UDP;
  s.ttl = 64;
  s.ip_id = 0;
  s.payload = Bytes(87, 0);
  const Bytes f = build(s);
  ASSERT_EQ(f.size(), 14u + 0x73);
  const Bytes expect_hdr = {0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x00, 0x00, 0x40, 0x11,
                            0xf8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7};
  EXPECT_EQ(Bytes(f.begin() + 14, f.begin() + 34), expect_hdr);
}

TEST(PktgenChecksum, TcpKnownVectors) {
  // Values confirmed by tcpdump -vv ("cksum 0x985b (correct)").
  PacketSpec s;
  s.src = ip("198.51.100.1");
  s.dst = ip("192.0.2.10");
  s.sport = 10000;
  s.dport = 80;
  s.tcp_flags = 0x02;
  s.seq = 1000;
  s.ack = 0;
  Bytes f = build(s);
  ASSERT_EQ(f.size(), 54u);
  EXPECT_EQ(get16(f, 14 + 20 + 16), 0x985b);

  s.src = ip("2001:db8:ff::2");
  s.dst = ip("2001:db8::10");
  s.sport = 30001;
  s.dport = 443;
  s.seq = 8919;
  f = build(s);
  ASSERT_EQ(f.size(), 74u);
  EXPECT_EQ(get16(f, 14 + 40 + 16), 0xb99c);
}

TEST(PktgenChecksum, UdpKnownVectors) {
  // Computed by hand (Python) over pseudo-header + header + "hello".
  PacketSpec s;
  s.proto = LB_PROTO_UDP;
  s.src = ip("10.0.0.1");
  s.dst = ip("10.0.0.2");
  s.sport = 1234;
  s.dport = 53;
  s.payload = Bytes{'h', 'e', 'l', 'l', 'o'};
  Bytes f = build(s);
  ASSERT_EQ(f.size(), 14u + 20 + 8 + 5);
  EXPECT_EQ(get16(f, 14 + 20 + 4), 13);
  EXPECT_EQ(get16(f, 14 + 20 + 6), 0xa2f8);

  s.src = ip("2001:db8::1");
  s.dst = ip("2001:db8::2");
  s.sport = 5000;
  f = build(s);
  ASSERT_EQ(f.size(), 14u + 40 + 8 + 5);
  EXPECT_EQ(get16(f, 14 + 40 + 6), 0x4cd0);
}

// ---------------------------------------------------------------------------------------------
// build() -> decode() round trips.

class PktgenRoundTrip
    : public ::testing::TestWithParam<std::tuple<bool /*v6*/, uint8_t /*proto*/, int /*vlans*/>> {};

TEST_P(PktgenRoundTrip, DecodesWhatWasBuilt) {
  const auto [v6, proto, nvlans] = GetParam();
  PacketSpec s;
  s.src = v6 ? ip("2001:db8:1::5") : ip("198.51.100.7");
  s.dst = v6 ? ip("2001:db8::10") : ip("192.0.2.10");
  s.proto = proto;
  s.sport = 43210;
  s.dport = 443;
  s.ttl = 17;
  s.ip_id = 0x4242;
  s.payload = Bytes(37, 0);
  for (size_t i = 0; i < s.payload.size(); ++i) {
    s.payload[i] = static_cast<uint8_t>(i * 7 + 3);
  }
  for (int i = 0; i < nvlans; ++i) {
    s.vlans.push_back(static_cast<uint16_t>(100 + i));
  }
  const Bytes f = build(s);

  const size_t l3 = 14 + 4 * static_cast<size_t>(nvlans);
  const size_t l4 = l3 + (v6 ? 40 : 20);
  const size_t l4_hdr = proto == LB_PROTO_TCP ? 20 : 8;
  ASSERT_EQ(f.size(), l4 + l4_hdr + s.payload.size());
  for (int i = 0; i < nvlans; ++i) {
    EXPECT_EQ(get16(f, 12 + 4 * static_cast<size_t>(i)), 0x8100);
    EXPECT_EQ(get16(f, 14 + 4 * static_cast<size_t>(i)), 100 + i);
  }
  EXPECT_EQ(get16(f, l3 - 2), v6 ? 0x86DD : 0x0800);
  if (v6) {
    EXPECT_EQ(f[l3] >> 4, 6);
    EXPECT_EQ(get16(f, l3 + 4), l4_hdr + s.payload.size());
    EXPECT_EQ(f[l3 + 6], proto);
    EXPECT_EQ(f[l3 + 7], 17);  // hop limit
  } else {
    EXPECT_EQ(f[l3], 0x45);
    EXPECT_EQ(get16(f, l3 + 2), 20 + l4_hdr + s.payload.size());
    EXPECT_EQ(get16(f, l3 + 4), 0x4242);
    EXPECT_EQ(get16(f, l3 + 6), 0);  // no DF, no MF, offset 0
    EXPECT_EQ(f[l3 + 8], 17);
    EXPECT_EQ(f[l3 + 9], proto);
  }
  if (proto == LB_PROTO_TCP) {
    EXPECT_EQ(f[l4 + 12], 0x50);
    EXPECT_EQ(f[l4 + 13], 0x10);
    EXPECT_EQ(get16(f, l4 + 14), 65535);
  } else {
    EXPECT_EQ(get16(f, l4 + 4), 8 + s.payload.size());
  }

  const auto d = decode(f);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->src_mac, s.src_mac);
  EXPECT_EQ(d->dst_mac, s.dst_mac);
  EXPECT_EQ(d->vlans, s.vlans);
  EXPECT_EQ(d->src, s.src);
  EXPECT_EQ(d->dst, s.dst);
  EXPECT_EQ(d->proto, proto);
  EXPECT_EQ(d->sport, 43210);
  EXPECT_EQ(d->dport, 443);
  EXPECT_EQ(d->l3_offset, l3);
  EXPECT_EQ(d->l4_offset, l4);
  EXPECT_TRUE(d->ip_checksum_ok);
  EXPECT_TRUE(d->l4_checksum_ok);
  EXPECT_FALSE(d->udp_checksum_zero);

  // Any flipped payload byte breaks the L4 checksum, and only that.
  for (size_t at : {f.size() - 1, f.size() - s.payload.size(), f.size() - 20}) {
    Bytes bad = f;
    bad[at] ^= 0x01;
    const auto bd = decode(bad);
    ASSERT_TRUE(bd.has_value());
    EXPECT_TRUE(bd->ip_checksum_ok);
    EXPECT_FALSE(bd->l4_checksum_ok) << "flipped byte " << at;
  }
  // A changed address breaks the L4 checksum through the pseudo-header.
  {
    Bytes bad = f;
    bad[l3 + (v6 ? 39 : 19)] ^= 0x80;
    const auto bd = decode(bad);
    ASSERT_TRUE(bd.has_value());
    EXPECT_FALSE(bd->l4_checksum_ok);
    EXPECT_EQ(bd->ip_checksum_ok, v6);  // IPv6 has no header checksum
  }
  // Ethernet trailer padding is not part of the segment.
  {
    Bytes padded = f;
    padded.resize(std::max<size_t>(f.size() + 6, 60), 0);
    const auto pd = decode(padded);
    ASSERT_TRUE(pd.has_value());
    EXPECT_TRUE(pd->ip_checksum_ok);
    EXPECT_TRUE(pd->l4_checksum_ok);
  }
  // Any truncation is refused.
  for (size_t len : {size_t{0}, size_t{13}, l3 + 1, l4 - 1, l4 + l4_hdr - 1, f.size() - 1}) {
    EXPECT_FALSE(decode(std::span<const uint8_t>(f).first(len)).has_value()) << "len " << len;
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, PktgenRoundTrip,
    ::testing::Combine(::testing::Bool(),
                       ::testing::Values(uint8_t{LB_PROTO_TCP}, uint8_t{LB_PROTO_UDP}),
                       ::testing::Values(0, 1, 2)),
    [](const auto& p) {
      return std::string(std::get<0>(p.param) ? "Ipv6" : "Ipv4") +
             (std::get<1>(p.param) == LB_PROTO_TCP ? "Tcp" : "Udp") + "Vlans" +
             std::to_string(std::get<2>(p.param));
    });

TEST(PktgenBuild, EmptyPayloadKeepsExactLength) {
  PacketSpec s;
  s.src = ip("192.0.2.1");
  s.dst = ip("192.0.2.2");
  EXPECT_EQ(build(s).size(), 54u);  // not padded to 60
  s.proto = LB_PROTO_UDP;
  EXPECT_EQ(build(s).size(), 42u);
}

TEST(PktgenBuild, MismatchedFamiliesThrow) {
  PacketSpec s;
  s.src = ip("192.0.2.1");
  s.dst = ip("2001:db8::1");
  EXPECT_THROW(build(s), std::invalid_argument);
  s.src = sluice::IpAddress{};
  s.dst = sluice::IpAddress{};
  EXPECT_THROW(build(s), std::invalid_argument);
}

TEST(PktgenBuild, UdpZeroChecksum) {
  PacketSpec s;
  s.proto = LB_PROTO_UDP;
  s.src = ip("192.0.2.1");
  s.dst = ip("192.0.2.2");
  s.payload = Bytes(10, 0x33);
  s.udp_zero_checksum = true;
  const Bytes f = build(s);
  EXPECT_EQ(get16(f, 34 + 6), 0);
  auto d = decode(f);
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(d->udp_checksum_zero);
  EXPECT_TRUE(d->l4_checksum_ok);

  // IPv6 requires the checksum: the flag is ignored when building ...
  s.src = ip("2001:db8::1");
  s.dst = ip("2001:db8::2");
  Bytes f6 = build(s);
  EXPECT_NE(get16(f6, 54 + 6), 0);
  d = decode(f6);
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(d->l4_checksum_ok);
  // ... and a zero checksum over IPv6 does not verify.
  f6[54 + 6] = 0;
  f6[54 + 7] = 0;
  d = decode(f6);
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(d->udp_checksum_zero);
  EXPECT_FALSE(d->l4_checksum_ok);
}

TEST(PktgenBuild, ComputedZeroUdpChecksumIsSentAsOnes) {
  // Search for a payload whose UDP checksum computes to 0; it must go out as 0xFFFF and verify.
  PacketSpec s;
  s.proto = LB_PROTO_UDP;
  s.src = ip("192.0.2.1");
  s.dst = ip("192.0.2.2");
  s.payload = Bytes(2, 0);
  bool found = false;
  for (uint32_t v = 0; v <= 0xFFFF && !found; ++v) {
    s.payload[0] = static_cast<uint8_t>(v >> 8);
    s.payload[1] = static_cast<uint8_t>(v);
    const Bytes f = build(s);
    if (get16(f, 34 + 6) == 0xFFFF) {
      found = true;
      const auto d = decode(f);
      ASSERT_TRUE(d.has_value());
      EXPECT_TRUE(d->l4_checksum_ok);
      EXPECT_FALSE(d->udp_checksum_zero);
    }
    ASSERT_NE(get16(f, 34 + 6), 0);
  }
  EXPECT_TRUE(found);
}

TEST(PktgenBuild, Ipv4Fragments) {
  PacketSpec s;
  s.src = ip("198.51.100.1");
  s.dst = ip("192.0.2.10");
  s.payload = Bytes(24, 0xAB);
  s.ip_id = 77;
  s.more_fragments = true;
  Bytes first = build(s);
  EXPECT_EQ(get16(first, 14 + 6), 0x2000);
  ASSERT_EQ(first.size(), 14u + 20 + 20 + 24);  // first fragment carries the TCP header
  auto d = decode(first);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->dport, 80);

  s.more_fragments = false;
  s.frag_offset = 5;
  const Bytes later = build(s);
  EXPECT_EQ(get16(later, 14 + 6), 5);
  ASSERT_EQ(later.size(), 14u + 20 + 24);  // payload only
  EXPECT_EQ(later[34], 0xAB);
  EXPECT_EQ(onesSum(std::span<const uint8_t>(later).subspan(14, 20)), 0xFFFF);
  EXPECT_FALSE(decode(later).has_value());
}

TEST(PktgenBuild, Ipv6ExtensionHeaders) {
  PacketSpec s;
  s.src = ip("2001:db8::1");
  s.dst = ip("2001:db8::2");
  s.proto = LB_PROTO_UDP;
  s.payload = Bytes(9, 0x11);
  s.ipv6_ext = {0, 60, 43};
  const Bytes f = build(s);
  ASSERT_EQ(f.size(), 14u + 40 + 24 + 8 + 9);
  EXPECT_EQ(f[14 + 6], 0);                // first next header: hop-by-hop
  EXPECT_EQ(get16(f, 14 + 4), 24 + 8 + 9);  // payload length counts the extensions
  EXPECT_EQ(f[54], 60);
  EXPECT_EQ(f[55], 0);
  EXPECT_EQ(f[62], 43);
  EXPECT_EQ(f[70], LB_PROTO_UDP);
  const auto d = decode(f);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->proto, LB_PROTO_UDP);
  EXPECT_EQ(d->l4_offset, 14u + 40 + 24);
  EXPECT_TRUE(d->l4_checksum_ok);

  // More extension headers than decode() walks.
  s.ipv6_ext = std::vector<uint8_t>(12, 60);
  EXPECT_FALSE(decode(build(s)).has_value());
}

TEST(PktgenBuild, Ipv6FragmentHeader) {
  PacketSpec s;
  s.src = ip("2001:db8::1");
  s.dst = ip("2001:db8::2");
  s.ipv6_ext = {44};
  s.ip_id = 0x0304;
  s.more_fragments = true;
  s.payload = Bytes(8, 0);
  Bytes f = build(s);
  ASSERT_EQ(f.size(), 14u + 40 + 8 + 20 + 8);
  EXPECT_EQ(f[20], 44);
  EXPECT_EQ(f[54], LB_PROTO_TCP);
  EXPECT_EQ(get16(f, 56), 0x0001);  // offset 0, M set
  EXPECT_EQ(get16(f, 58), 0);       // identification: ip_id as a 32-bit number
  EXPECT_EQ(get16(f, 60), 0x0304);
  EXPECT_FALSE(decode(f).has_value());  // decode() does not walk fragment headers

  s.more_fragments = false;
  s.frag_offset = 3;
  f = build(s);
  EXPECT_EQ(get16(f, 56), 3 << 3);
  ASSERT_EQ(f.size(), 14u + 40 + 8 + 8);  // later fragment: no TCP header
}

TEST(PktgenBuild, OtherProtocolPayloadFollowsIpHeader) {
  PacketSpec s;
  s.src = ip("192.0.2.1");
  s.dst = ip("192.0.2.2");
  s.proto = 1;  // ICMP
  s.payload = {8, 0, 0xf7, 0xff, 0, 0, 0, 0};
  const Bytes f = build(s);
  ASSERT_EQ(f.size(), 14u + 20 + 8);
  EXPECT_EQ(f[23], 1);
  EXPECT_EQ(Bytes(f.begin() + 34, f.end()), s.payload);
  EXPECT_FALSE(decode(f).has_value());
}

// ---------------------------------------------------------------------------------------------
// decode() of frames build() does not make.

TEST(PktgenDecode, QinQAndMalformedFrames) {
  PacketSpec s;
  s.src = ip("192.0.2.1");
  s.dst = ip("192.0.2.2");
  s.vlans = {10, 20};
  Bytes f = build(s);
  f[12] = 0x88;  // outer tag as 802.1ad
  f[13] = 0xA8;
  auto d = decode(f);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->vlans, (std::vector<uint16_t>{10, 20}));
  EXPECT_EQ(d->l3_offset, 22u);

  s.vlans.clear();
  const Bytes plain = build(s);

  Bytes arp = plain;
  arp[12] = 0x08;
  arp[13] = 0x06;
  EXPECT_FALSE(decode(arp).has_value());

  Bytes short_ihl = plain;
  short_ihl[14] = 0x44;
  EXPECT_FALSE(decode(short_ihl).has_value());

  Bytes wrong_version = plain;
  wrong_version[14] = 0x65;
  EXPECT_FALSE(decode(wrong_version).has_value());

  Bytes long_total = plain;
  long_total[17] += 1;  // total length one past the frame
  EXPECT_FALSE(decode(long_total).has_value());

  Bytes bad_doff = plain;
  bad_doff[34 + 12] = 0x40;  // data offset 4
  EXPECT_FALSE(decode(bad_doff).has_value());

  // IPv4 options: the L4 header moves with IHL.
  Bytes opts(plain.begin(), plain.begin() + 34);
  opts.insert(opts.end(), {1, 1, 1, 0});  // NOP NOP NOP EOL
  opts.insert(opts.end(), plain.begin() + 34, plain.end());
  opts[14] = 0x46;
  opts[17] += 4;
  opts[24] = 0;
  opts[25] = 0;
  const uint16_t csum =
      static_cast<uint16_t>(~onesSum(std::span<const uint8_t>(opts).subspan(14, 24)));
  opts[24] = static_cast<uint8_t>(csum >> 8);
  opts[25] = static_cast<uint8_t>(csum);
  d = decode(opts);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->l4_offset, 38u);
  EXPECT_TRUE(d->ip_checksum_ok);
  EXPECT_TRUE(d->l4_checksum_ok);

  // Too many VLAN tags.
  Bytes tags(plain.begin(), plain.begin() + 12);
  for (int i = 0; i < 20; ++i) {
    tags.insert(tags.end(), {0x81, 0x00, 0x00, 0x01});
  }
  tags.insert(tags.end(), plain.begin() + 12, plain.end());
  EXPECT_FALSE(decode(tags).has_value());
}

// ---------------------------------------------------------------------------------------------
// pcap files.

TEST(PktgenPcap, WriteReadRoundTrip) {
  TempPath path("pktgen_rt");
  std::vector<PcapRecord> recs;
  PacketSpec s;
  s.src = ip("192.0.2.1");
  s.dst = ip("192.0.2.2");
  for (uint32_t i = 0; i < 10; ++i) {
    s.payload = Bytes(i * 13, static_cast<uint8_t>(i));
    recs.push_back(PcapRecord{1700000000ull * 1000000ull + i * 999'999ull + 1, build(s)});
  }
  recs.push_back(PcapRecord{0, Bytes{1, 2, 3}});  // tiny, timestamp 0
  recs.push_back(PcapRecord{123, Bytes(9000, 0xEE)});  // jumbo
  writePcap(path.str(), recs);
  const auto back = readPcap(path.str());
  ASSERT_EQ(back.size(), recs.size());
  for (size_t i = 0; i < recs.size(); ++i) {
    EXPECT_EQ(back[i].ts_us, recs[i].ts_us) << i;
    EXPECT_EQ(back[i].data, recs[i].data) << i;
  }

  // Writing again overwrites.
  writePcap(path.str(), {});
  EXPECT_TRUE(readPcap(path.str()).empty());
}

TEST(PktgenPcap, ReadsNanosecondCaptureAsMicroseconds) {
  TempPath path("pktgen_ns");
  // A hand-made little-endian nanosecond pcap (magic a1b23c4d) with one 4-byte record at
  // 1700000000.123456789 s.
  Bytes f = {0x4d, 0x3c, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0,
             0xff, 0xff, 0, 0, 1, 0, 0, 0};
  auto put32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) {
      f.push_back(static_cast<uint8_t>(v >> (8 * i)));
    }
  };
  put32(1700000000u);
  put32(123456789u);
  put32(4);
  put32(4);
  f.insert(f.end(), {0xde, 0xad, 0xbe, 0xef});
  writeFile(path.str(), f);
  const auto recs = readPcap(path.str());
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].ts_us, 1700000000ull * 1000000ull + 123456);
  EXPECT_EQ(recs[0].data, (Bytes{0xde, 0xad, 0xbe, 0xef}));
}

TEST(PktgenPcap, MissingFileThrows) {
  const std::string missing = "/nonexistent/dir/pktgen_missing.pcap";
  try {
    readPcap(missing);
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  EXPECT_THROW(writePcap(missing, {}), std::runtime_error);
}

TEST(PktgenPcap, CorruptFileThrows) {
  TempPath path("pktgen_corrupt");
  std::mt19937 rng(12345);
  Bytes junk(4096);
  for (auto& b : junk) {
    b = static_cast<uint8_t>(rng());
  }
  junk[0] = 0x00;  // make sure it is no pcap/pcapng magic
  writeFile(path.str(), junk);
  EXPECT_THROW(readPcap(path.str()), std::runtime_error);

  writeFile(path.str(), {});
  EXPECT_THROW(readPcap(path.str()), std::runtime_error);
}

TEST(PktgenPcap, TruncatedRecordThrows) {
  TempPath path("pktgen_trunc");
  writePcap(path.str(), {PcapRecord{1, Bytes(100, 1)}, PcapRecord{2, Bytes(100, 2)}});
  Bytes f = readFile(path.str());
  ASSERT_EQ(f.size(), 24u + 2 * (16 + 100));
  f.erase(f.end() - 10, f.end());
  writeFile(path.str(), f);
  EXPECT_THROW(readPcap(path.str()), std::runtime_error);
}

// ---------------------------------------------------------------------------------------------
// Synthetic traffic.

TEST(PktgenTraffic, TcpFlowsInterleaved) {
  TrafficSpec t;
  t.vip = ip("192.0.2.10");
  t.vport = 80;
  t.flows = 7;
  t.packets_per_flow = 4;
  t.payload_bytes = 50;
  t.client_base = ip("198.51.100.250");
  const auto recs = makeTraffic(t);
  ASSERT_EQ(recs.size(), 28u);
  for (size_t k = 0; k < recs.size(); ++k) {
    const uint32_t pkt = static_cast<uint32_t>(k / t.flows);
    const uint32_t flow = static_cast<uint32_t>(k % t.flows);
    EXPECT_EQ(recs[k].ts_us, t.start_us + k * t.gap_us);
    const auto d = decode(recs[k].data);
    ASSERT_TRUE(d.has_value());
    EXPECT_TRUE(d->ip_checksum_ok);
    EXPECT_TRUE(d->l4_checksum_ok);
    EXPECT_EQ(d->src_mac, t.client_mac);
    EXPECT_EQ(d->dst_mac, t.lb_mac);
    EXPECT_EQ(d->src, clientAddress(t, flow));
    EXPECT_EQ(d->dst, t.vip);
    EXPECT_EQ(d->sport, t.client_port_base + flow);
    EXPECT_EQ(d->dport, 80);
    const uint8_t flags = recs[k].data[d->l4_offset + 13];
    const size_t payload = recs[k].data.size() - d->l4_offset - 20;
    if (pkt == 0) {
      EXPECT_EQ(flags, 0x02);
      EXPECT_EQ(payload, 0u);
    } else if (pkt == 3) {
      EXPECT_EQ(flags, 0x11);
      EXPECT_EQ(payload, 0u);
    } else {
      EXPECT_EQ(flags, 0x18);
      EXPECT_EQ(payload, 50u);
    }
  }
  // 198.51.100.250 + 6 carries into the third byte.
  EXPECT_EQ(clientAddress(t, 6), ip("198.51.101.0"));
}

TEST(PktgenTraffic, UdpFlowByFlow) {
  TrafficSpec t;
  t.vip = ip("2001:db8::53");
  t.vport = 53;
  t.proto = LB_PROTO_UDP;
  t.flows = 3;
  t.packets_per_flow = 5;
  t.payload_bytes = 20;
  t.interleave = false;
  t.start_us = 1000;
  t.gap_us = 7;
  t.client_base = ip("2001:db8:ff::ffff:fffe");
  const auto recs = makeTraffic(t);
  ASSERT_EQ(recs.size(), 15u);
  std::set<Bytes> payloads;
  for (size_t k = 0; k < recs.size(); ++k) {
    EXPECT_EQ(recs[k].ts_us, 1000 + 7 * k);
    const auto d = decode(recs[k].data);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->proto, LB_PROTO_UDP);
    EXPECT_TRUE(d->l4_checksum_ok);
    EXPECT_EQ(d->src, clientAddress(t, static_cast<uint32_t>(k / 5)));
    EXPECT_EQ(recs[k].data.size(), 14u + 40 + 8 + 20);
    payloads.insert(Bytes(recs[k].data.begin() + 62, recs[k].data.end()));
  }
  EXPECT_EQ(payloads.size(), 15u);  // payload varies per flow and packet
  // The last word wraps without touching the rest of the address.
  EXPECT_EQ(clientAddress(t, 0), ip("2001:db8:ff::ffff:fffe"));
  EXPECT_EQ(clientAddress(t, 2), ip("2001:db8:ff::"));
}

TEST(PktgenTraffic, ShortFlowsAndDefaults) {
  TrafficSpec t;
  t.vip = ip("192.0.2.10");
  t.flows = 2;
  t.packets_per_flow = 2;
  auto recs = makeTraffic(t);
  ASSERT_EQ(recs.size(), 4u);
  EXPECT_EQ(recs[0].data[47], 0x02);  // SYN
  EXPECT_EQ(recs[2].data[47], 0x11);  // FIN|ACK
  EXPECT_EQ(clientAddress(t, 0), ip("198.51.100.1"));

  t.packets_per_flow = 1;
  recs = makeTraffic(t);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1].data[47], 0x02);

  t.packets_per_flow = 0;
  EXPECT_TRUE(makeTraffic(t).empty());

  t.vip = ip("2001:db8::10");
  EXPECT_EQ(clientAddress(t, 1), ip("2001:db8:ff::2"));

  t.client_base = ip("10.0.0.1");
  EXPECT_THROW(makeTraffic(t), std::invalid_argument);
}

TEST(PktgenTraffic, ManyFlowsStayDistinct) {
  TrafficSpec t;
  t.vip = ip("192.0.2.10");
  t.proto = LB_PROTO_UDP;
  t.flows = 50001;
  t.packets_per_flow = 1;
  t.payload_bytes = 0;
  const auto recs = makeTraffic(t);
  ASSERT_EQ(recs.size(), 50001u);
  const auto first = decode(recs.front().data);
  const auto last = decode(recs.back().data);
  ASSERT_TRUE(first && last);
  EXPECT_EQ(first->sport, last->sport);  // port wrapped after 50000 flows
  EXPECT_NE(first->src, last->src);      // but the address differs
  EXPECT_EQ(last->src, ip("198.52.39.81"));  // 198.51.100.1 + 50000 (= 195 * 256 + 80)
}

TEST(PktgenTraffic, Deterministic) {
  TrafficSpec t;
  t.vip = ip("192.0.2.10");
  t.flows = 25;
  t.packets_per_flow = 6;
  const auto a = makeTraffic(t);
  const auto b = makeTraffic(t);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].ts_us, b[i].ts_us);
    EXPECT_EQ(a[i].data, b[i].data);
  }

  TempPath p1("pktgen_det1");
  TempPath p2("pktgen_det2");
  writePcap(p1.str(), a);
  writePcap(p2.str(), b);
  EXPECT_EQ(readFile(p1.str()), readFile(p2.str()));
}

// An ICMP error quotes the start of the IP packet it is about after its 8-byte header, and its
// checksum covers the quote (ICMPv6: and the pseudo-header, RFC 4443 section 2.3).
TEST(PktgenIcmp, ErrorQuotesTheStartOfTheIpPacket) {
  for (const bool v4 : {true, false}) {
    PacketSpec reply;
    reply.src = ip(v4 ? "192.0.2.10" : "2001:db8::10");
    reply.dst = ip(v4 ? "203.0.113.9" : "2001:db8:ff::9");
    reply.vlans = {5};  // not quoted: the quote is the IP packet
    reply.sport = 80;
    reply.dport = 40000;
    reply.payload = Bytes(1400, 0x61);
    PacketSpec err;
    err.src = ip(v4 ? "198.51.100.1" : "2001:db8:b::1");
    err.dst = reply.src;
    const size_t quote_len = v4 ? 28 : 100;
    const Bytes f = buildIcmpError(err, v4 ? 3 : 2, v4 ? 4 : 0, v4 ? 1300 : 1280, reply, quote_len);
    const auto d = decodeIcmp(f);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->type, v4 ? 3 : 2);
    EXPECT_EQ(d->code, v4 ? 4 : 0);
    EXPECT_TRUE(d->ip_checksum_ok);
    EXPECT_TRUE(d->icmp_checksum_ok);
    ASSERT_EQ(d->message.size(), 8 + quote_len);
    EXPECT_EQ(get16(d->message, 6), v4 ? 1300 : 1280);
    const Bytes whole = ipPacket(reply);
    EXPECT_EQ(Bytes(d->message.begin() + 8, d->message.end()),
              Bytes(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(quote_len)));
    EXPECT_EQ(whole[0] >> 4, v4 ? 4 : 6);
    EXPECT_EQ(whole.size(), (v4 ? 20u : 40u) + 20u + 1400u);
  }
}

}  // namespace
}  // namespace pktgen
