#include "tools/pktgen/packet_builder.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace pktgen {
namespace {

constexpr uint16_t kEtherTypeIpv4 = 0x0800;
constexpr uint16_t kEtherTypeIpv6 = 0x86DD;
constexpr uint16_t kEtherTypeVlan = 0x8100;
constexpr uint16_t kEtherTypeQinq = 0x88A8;
constexpr size_t kEthHeaderLen = 14;
constexpr size_t kVlanTagLen = 4;
constexpr size_t kIpv4HeaderLen = 20;
constexpr size_t kIpv6HeaderLen = 40;
constexpr size_t kIpv6ExtLen = 8;
constexpr size_t kTcpHeaderLen = 20;
constexpr size_t kUdpHeaderLen = 8;
constexpr uint8_t kIpv6Fragment = 44;
constexpr uint16_t kEtherTypeArp = 0x0806;
constexpr size_t kArpLen = 28;
constexpr size_t kIcmpHeaderLen = 8;
constexpr uint8_t kIcmp = 1;
constexpr uint8_t kIcmpv6 = 58;
constexpr size_t kMaxVlanTags = 8;
constexpr size_t kMaxIpv6Ext = 8;

void put8(Bytes& out, uint8_t v) { out.push_back(v); }

void put16(Bytes& out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v));
}

void put32(Bytes& out, uint32_t v) {
  put16(out, static_cast<uint16_t>(v >> 16));
  put16(out, static_cast<uint16_t>(v));
}

void set16(Bytes& out, size_t at, uint16_t v) {
  out[at] = static_cast<uint8_t>(v >> 8);
  out[at + 1] = static_cast<uint8_t>(v);
}

uint16_t get16(std::span<const uint8_t> d, size_t at) {
  return static_cast<uint16_t>(d[at] << 8 | d[at + 1]);
}

void putAddress(Bytes& out, const sluice::IpAddress& a) {
  const size_t n = a.isV4() ? 4 : 16;
  out.insert(out.end(), a.bytes.begin(), a.bytes.begin() + n);
}

// The pseudo-header of RFC 793 / RFC 768 (IPv4) or RFC 8200 section 8.1 (IPv6), as bytes.
Bytes pseudoHeader(const sluice::IpAddress& src, const sluice::IpAddress& dst, uint8_t proto,
                   uint32_t l4_len) {
  Bytes ph;
  putAddress(ph, src);
  putAddress(ph, dst);
  if (src.isV4()) {
    put8(ph, 0);
    put8(ph, proto);
    put16(ph, static_cast<uint16_t>(l4_len));
  } else {
    put32(ph, l4_len);
    put8(ph, 0);
    put8(ph, 0);
    put8(ph, 0);
    put8(ph, proto);
  }
  return ph;
}

// Sum of pseudo-header and segment, folded; 0xFFFF means the checksum in the segment verifies.
uint16_t l4Sum(const sluice::IpAddress& src, const sluice::IpAddress& dst, uint8_t proto,
               std::span<const uint8_t> segment) {
  const Bytes ph = pseudoHeader(src, dst, proto, static_cast<uint32_t>(segment.size()));
  // The pseudo-header has an even length, so the two sums chain without realignment.
  return onesSum(segment, onesSum(ph));
}

sluice::IpAddress readAddress(std::span<const uint8_t> d, size_t at, bool v4) {
  sluice::IpAddress a;
  a.family = v4 ? LB_FAMILY_IPV4 : LB_FAMILY_IPV6;
  const size_t n = v4 ? 4 : 16;
  for (size_t i = 0; i < n; ++i) {
    a.bytes[i] = d[at + i];
  }
  return a;
}

}  // namespace

uint16_t onesSum(std::span<const uint8_t> data, uint32_t initial) {
  uint64_t sum = initial;
  size_t i = 0;
  for (; i + 1 < data.size(); i += 2) {
    sum += static_cast<uint32_t>(data[i] << 8 | data[i + 1]);
  }
  if (i < data.size()) {
    sum += static_cast<uint32_t>(data[i] << 8);
  }
  while (sum >> 16) {
    sum = (sum & 0xFFFF) + (sum >> 16);
  }
  return static_cast<uint16_t>(sum);
}

Bytes build(const PacketSpec& spec) {
  const bool v4 = spec.src.isV4();
  if ((!spec.src.isV4() && !spec.src.isV6()) || spec.src.family != spec.dst.family) {
    throw std::invalid_argument("pktgen::build: src and dst must be both IPv4 or both IPv6");
  }

  // L4 segment (or the raw payload for other protocols and for non-first IP fragments).
  bool has_frag_header = false;
  for (uint8_t nh : spec.ipv6_ext) {
    has_frag_header = has_frag_header || nh == kIpv6Fragment;
  }
  const bool later_fragment = spec.frag_offset != 0 && (v4 || has_frag_header);
  Bytes l4;
  if (!later_fragment && spec.proto == LB_PROTO_TCP) {
    put16(l4, spec.sport);
    put16(l4, spec.dport);
    put32(l4, spec.seq);
    put32(l4, spec.ack);
    put8(l4, 5 << 4);  // data offset 5 words, no options
    put8(l4, spec.tcp_flags);
    put16(l4, 65535);  // window
    put16(l4, 0);      // checksum, filled below
    put16(l4, 0);      // urgent pointer
    l4.insert(l4.end(), spec.payload.begin(), spec.payload.end());
    const uint16_t sum = l4Sum(spec.src, spec.dst, LB_PROTO_TCP, l4);
    set16(l4, 16, static_cast<uint16_t>(~sum));
  } else if (!later_fragment && spec.proto == LB_PROTO_UDP) {
    put16(l4, spec.sport);
    put16(l4, spec.dport);
    put16(l4, static_cast<uint16_t>(kUdpHeaderLen + spec.payload.size()));
    put16(l4, 0);
    l4.insert(l4.end(), spec.payload.begin(), spec.payload.end());
    if (!(v4 && spec.udp_zero_checksum)) {
      uint16_t csum = static_cast<uint16_t>(~l4Sum(spec.src, spec.dst, LB_PROTO_UDP, l4));
      if (csum == 0) {
        csum = 0xFFFF;  // 0 means "no checksum" in UDP
      }
      set16(l4, 6, csum);
    }
  } else {
    l4 = spec.payload;
  }

  Bytes out;
  out.reserve(kEthHeaderLen + kVlanTagLen * spec.vlans.size() + kIpv6HeaderLen +
              kIpv6ExtLen * spec.ipv6_ext.size() + l4.size());
  out.insert(out.end(), spec.dst_mac.bytes.begin(), spec.dst_mac.bytes.end());
  out.insert(out.end(), spec.src_mac.bytes.begin(), spec.src_mac.bytes.end());
  for (uint16_t tci : spec.vlans) {
    put16(out, kEtherTypeVlan);
    put16(out, tci);
  }
  put16(out, v4 ? kEtherTypeIpv4 : kEtherTypeIpv6);

  if (v4) {
    const size_t l3 = out.size();
    put8(out, 0x45);  // version 4, IHL 5
    put8(out, 0);     // TOS
    put16(out, static_cast<uint16_t>(kIpv4HeaderLen + l4.size()));
    put16(out, spec.ip_id);
    put16(out, static_cast<uint16_t>((spec.more_fragments ? 0x2000 : 0) |
                                     (spec.frag_offset & 0x1FFF)));
    put8(out, spec.ttl);
    put8(out, spec.proto);
    put16(out, 0);  // header checksum, filled below
    putAddress(out, spec.src);
    putAddress(out, spec.dst);
    const uint16_t sum =
        onesSum(std::span<const uint8_t>(out).subspan(l3, kIpv4HeaderLen));
    set16(out, l3 + 10, static_cast<uint16_t>(~sum));
  } else {
    const uint8_t first_nh = spec.ipv6_ext.empty() ? spec.proto : spec.ipv6_ext.front();
    put32(out, 6u << 28);  // version 6, traffic class 0, flow label 0
    put16(out, static_cast<uint16_t>(kIpv6ExtLen * spec.ipv6_ext.size() + l4.size()));
    put8(out, first_nh);
    put8(out, spec.ttl);
    putAddress(out, spec.src);
    putAddress(out, spec.dst);
    for (size_t i = 0; i < spec.ipv6_ext.size(); ++i) {
      const uint8_t type = spec.ipv6_ext[i];
      const uint8_t next = i + 1 < spec.ipv6_ext.size() ? spec.ipv6_ext[i + 1] : spec.proto;
      put8(out, next);
      if (type == kIpv6Fragment) {
        put8(out, 0);  // reserved
        put16(out, static_cast<uint16_t>((spec.frag_offset & 0x1FFF) << 3 |
                                         (spec.more_fragments ? 1 : 0)));
        put32(out, spec.ip_id);
      } else {
        put8(out, 0);  // hdr ext len: 8 bytes in total
        if (type == 0 || type == 60) {
          // Options: one PadN option filling the remaining six bytes.
          put8(out, 1);
          put8(out, 4);
          put32(out, 0);
        } else {
          // Routing (43) type 0 with segments left 0 and anything else: zeros.
          put16(out, 0);
          put32(out, 0);
        }
      }
    }
  }
  out.insert(out.end(), l4.begin(), l4.end());
  return out;
}

std::optional<Decoded> decode(std::span<const uint8_t> frame) {
  Decoded d;
  if (frame.size() < kEthHeaderLen) {
    return std::nullopt;
  }
  for (size_t i = 0; i < 6; ++i) {
    d.dst_mac.bytes[i] = frame[i];
    d.src_mac.bytes[i] = frame[6 + i];
  }
  size_t off = 12;
  uint16_t ethertype = get16(frame, off);
  off += 2;
  while (ethertype == kEtherTypeVlan || ethertype == kEtherTypeQinq) {
    if (d.vlans.size() >= kMaxVlanTags || off + kVlanTagLen > frame.size()) {
      return std::nullopt;
    }
    d.vlans.push_back(get16(frame, off));
    ethertype = get16(frame, off + 2);
    off += kVlanTagLen;
  }
  d.l3_offset = off;

  size_t l3_end = 0;  // end of the IP packet (excludes Ethernet trailer padding)
  if (ethertype == kEtherTypeIpv4) {
    if (off + kIpv4HeaderLen > frame.size() || (frame[off] >> 4) != 4) {
      return std::nullopt;
    }
    const size_t ihl = static_cast<size_t>(frame[off] & 0x0F) * 4;
    const size_t total = get16(frame, off + 2);
    if (ihl < kIpv4HeaderLen || total < ihl || off + total > frame.size()) {
      return std::nullopt;
    }
    const uint16_t frag = get16(frame, off + 6);
    if ((frag & 0x1FFF) != 0) {
      return std::nullopt;  // a later fragment: no L4 header
    }
    d.ip_checksum_ok = onesSum(frame.subspan(off, ihl)) == 0xFFFF;
    d.proto = frame[off + 9];
    d.src = readAddress(frame, off + 12, true);
    d.dst = readAddress(frame, off + 16, true);
    d.l4_offset = off + ihl;
    l3_end = off + total;
  } else if (ethertype == kEtherTypeIpv6) {
    if (off + kIpv6HeaderLen > frame.size() || (frame[off] >> 4) != 6) {
      return std::nullopt;
    }
    const size_t payload_len = get16(frame, off + 4);
    l3_end = off + kIpv6HeaderLen + payload_len;
    if (l3_end > frame.size()) {
      return std::nullopt;
    }
    d.ip_checksum_ok = true;
    d.src = readAddress(frame, off + 8, false);
    d.dst = readAddress(frame, off + 24, false);
    uint8_t nh = frame[off + 6];
    size_t pos = off + kIpv6HeaderLen;
    size_t walked = 0;
    while (nh == 0 || nh == 43 || nh == 60) {
      if (walked++ >= kMaxIpv6Ext || pos + 2 > l3_end) {
        return std::nullopt;
      }
      const size_t len = (static_cast<size_t>(frame[pos + 1]) + 1) * 8;
      if (pos + len > l3_end) {
        return std::nullopt;
      }
      nh = frame[pos];
      pos += len;
    }
    d.proto = nh;
    d.l4_offset = pos;
  } else {
    return std::nullopt;
  }

  const std::span<const uint8_t> segment = frame.subspan(d.l4_offset, l3_end - d.l4_offset);
  if (d.proto == LB_PROTO_TCP) {
    if (segment.size() < kTcpHeaderLen) {
      return std::nullopt;
    }
    const size_t doff = static_cast<size_t>(segment[12] >> 4) * 4;
    if (doff < kTcpHeaderLen || doff > segment.size()) {
      return std::nullopt;
    }
    d.sport = get16(segment, 0);
    d.dport = get16(segment, 2);
    d.l4_checksum_ok = l4Sum(d.src, d.dst, LB_PROTO_TCP, segment) == 0xFFFF;
  } else if (d.proto == LB_PROTO_UDP) {
    if (segment.size() < kUdpHeaderLen) {
      return std::nullopt;
    }
    const size_t udp_len = get16(segment, 4);
    if (udp_len < kUdpHeaderLen || udp_len > segment.size()) {
      return std::nullopt;
    }
    d.sport = get16(segment, 0);
    d.dport = get16(segment, 2);
    d.udp_checksum_zero = get16(segment, 6) == 0;
    if (d.udp_checksum_zero) {
      d.l4_checksum_ok = d.src.isV4();  // optional over IPv4, mandatory over IPv6
    } else {
      d.l4_checksum_ok =
          l4Sum(d.src, d.dst, LB_PROTO_UDP, segment.subspan(0, udp_len)) == 0xFFFF;
    }
  } else {
    return std::nullopt;
  }
  return d;
}

// ---------------------------------------------------------------------------------------------
// ARP, ICMP, Neighbour Discovery.

Bytes buildArp(const ArpSpec& spec) {
  if (!spec.sender.isV4() || !spec.target.isV4()) {
    throw std::invalid_argument("pktgen::buildArp: sender and target must be IPv4");
  }
  Bytes out;
  out.insert(out.end(), spec.dst_mac.bytes.begin(), spec.dst_mac.bytes.end());
  out.insert(out.end(), spec.src_mac.bytes.begin(), spec.src_mac.bytes.end());
  for (uint16_t tci : spec.vlans) {
    put16(out, kEtherTypeVlan);
    put16(out, tci);
  }
  put16(out, kEtherTypeArp);
  put16(out, 1);               // hardware type: Ethernet
  put16(out, kEtherTypeIpv4);  // protocol type
  put8(out, 6);
  put8(out, 4);
  put16(out, spec.op);
  out.insert(out.end(), spec.sender_mac.bytes.begin(), spec.sender_mac.bytes.end());
  putAddress(out, spec.sender);
  out.insert(out.end(), spec.target_mac.bytes.begin(), spec.target_mac.bytes.end());
  putAddress(out, spec.target);
  if (out.size() < spec.min_frame) {
    out.resize(spec.min_frame, 0);
  }
  return out;
}

Bytes buildIcmp(PacketSpec spec, uint8_t type, uint8_t code, uint32_t rest,
                std::span<const uint8_t> body) {
  const bool v4 = spec.src.isV4();
  Bytes msg;
  put8(msg, type);
  put8(msg, code);
  put16(msg, 0);  // checksum, filled below
  put32(msg, rest);
  msg.insert(msg.end(), body.begin(), body.end());
  // ICMP sums the message alone (RFC 792); ICMPv6 the pseudo-header too (RFC 4443 section 2.3).
  const uint16_t sum = v4 ? onesSum(msg) : l4Sum(spec.src, spec.dst, kIcmpv6, msg);
  set16(msg, 2, static_cast<uint16_t>(~sum));
  spec.proto = v4 ? kIcmp : kIcmpv6;
  spec.payload = std::move(msg);
  return build(spec);
}

Bytes buildEchoRequest(const PacketSpec& spec, uint16_t id, uint16_t seq,
                       std::span<const uint8_t> data) {
  const uint8_t type = spec.src.isV4() ? 8 : 128;
  return buildIcmp(spec, type, 0, uint32_t{id} << 16 | seq, data);
}

Bytes ipPacket(const PacketSpec& spec) {
  const Bytes frame = build(spec);
  return Bytes(frame.begin() + static_cast<std::ptrdiff_t>(kEthHeaderLen +
                                                           kVlanTagLen * spec.vlans.size()),
               frame.end());
}

Bytes buildIcmpError(const PacketSpec& spec, uint8_t type, uint8_t code, uint32_t rest,
                     const PacketSpec& quoted, size_t quote_len) {
  Bytes quote = ipPacket(quoted);
  quote.resize(std::min(quote.size(), quote_len));
  return buildIcmp(spec, type, code, rest, quote);
}

Bytes buildNeighbourSolicit(const PacketSpec& spec, const sluice::IpAddress& target,
                            bool source_option) {
  if (!spec.src.isV6() || !target.isV6()) {
    throw std::invalid_argument("pktgen::buildNeighbourSolicit: IPv6 addresses only");
  }
  Bytes body;
  putAddress(body, target);
  if (source_option) {
    put8(body, 1);  // source link-layer address
    put8(body, 1);  // length in units of 8 bytes
    body.insert(body.end(), spec.src_mac.bytes.begin(), spec.src_mac.bytes.end());
  }
  return buildIcmp(spec, 135, 0, 0, body);  // the 4 bytes after the checksum are reserved
}

sluice::IpAddress solicitedNode(const sluice::IpAddress& a) {
  sluice::IpAddress g = *sluice::IpAddress::parse("ff02::1:ff00:0");
  g.bytes[13] = a.bytes[13];
  g.bytes[14] = a.bytes[14];
  g.bytes[15] = a.bytes[15];
  return g;
}

sluice::MacAddress multicastMac(const sluice::IpAddress& group) {
  sluice::MacAddress m;
  m.bytes = {0x33, 0x33, group.bytes[12], group.bytes[13], group.bytes[14], group.bytes[15]};
  return m;
}

namespace {

/** The Ethernet header and tags of frame: the ethertype and where the payload starts. */
std::optional<std::pair<uint16_t, size_t>> etherPayload(std::span<const uint8_t> frame,
                                                        sluice::MacAddress& src,
                                                        sluice::MacAddress& dst,
                                                        std::vector<uint16_t>& vlans) {
  if (frame.size() < kEthHeaderLen) {
    return std::nullopt;
  }
  for (size_t i = 0; i < 6; ++i) {
    dst.bytes[i] = frame[i];
    src.bytes[i] = frame[6 + i];
  }
  size_t off = 12;
  uint16_t ethertype = get16(frame, off);
  off += 2;
  while (ethertype == kEtherTypeVlan || ethertype == kEtherTypeQinq) {
    if (vlans.size() >= kMaxVlanTags || off + kVlanTagLen > frame.size()) {
      return std::nullopt;
    }
    vlans.push_back(get16(frame, off));
    ethertype = get16(frame, off + 2);
    off += kVlanTagLen;
  }
  return std::make_pair(ethertype, off);
}

sluice::MacAddress readMac(std::span<const uint8_t> d, size_t at) {
  sluice::MacAddress m;
  for (size_t i = 0; i < 6; ++i) {
    m.bytes[i] = d[at + i];
  }
  return m;
}

}  // namespace

std::optional<DecodedIcmp> decodeIcmp(std::span<const uint8_t> frame) {
  DecodedIcmp d;
  const auto eth = etherPayload(frame, d.src_mac, d.dst_mac, d.vlans);
  if (!eth) {
    return std::nullopt;
  }
  const auto [ethertype, off] = *eth;
  d.l3_offset = off;
  size_t l3_end = 0;
  uint8_t proto = 0;
  if (ethertype == kEtherTypeIpv4) {
    if (off + kIpv4HeaderLen > frame.size() || (frame[off] >> 4) != 4) {
      return std::nullopt;
    }
    const size_t ihl = static_cast<size_t>(frame[off] & 0x0F) * 4;
    const size_t total = get16(frame, off + 2);
    if (ihl < kIpv4HeaderLen || total < ihl || off + total > frame.size() ||
        (get16(frame, off + 6) & 0x3FFF) != 0) {
      return std::nullopt;
    }
    d.ip_checksum_ok = onesSum(frame.subspan(off, ihl)) == 0xFFFF;
    d.ttl = frame[off + 8];
    proto = frame[off + 9];
    d.src = readAddress(frame, off + 12, true);
    d.dst = readAddress(frame, off + 16, true);
    d.l4_offset = off + ihl;
    l3_end = off + total;
  } else if (ethertype == kEtherTypeIpv6) {
    if (off + kIpv6HeaderLen > frame.size() || (frame[off] >> 4) != 6) {
      return std::nullopt;
    }
    l3_end = off + kIpv6HeaderLen + get16(frame, off + 4);
    if (l3_end > frame.size()) {
      return std::nullopt;
    }
    d.ip_checksum_ok = true;
    d.ttl = frame[off + 7];
    proto = frame[off + 6];
    d.src = readAddress(frame, off + 8, false);
    d.dst = readAddress(frame, off + 24, false);
    size_t pos = off + kIpv6HeaderLen;
    for (size_t walked = 0; proto == 0 || proto == 43 || proto == 60; ++walked) {
      if (walked >= kMaxIpv6Ext || pos + 2 > l3_end) {
        return std::nullopt;
      }
      const size_t len = (static_cast<size_t>(frame[pos + 1]) + 1) * 8;
      if (pos + len > l3_end) {
        return std::nullopt;
      }
      proto = frame[pos];
      pos += len;
    }
    d.l4_offset = pos;
  } else {
    return std::nullopt;
  }
  const bool v4 = ethertype == kEtherTypeIpv4;
  if (proto != (v4 ? kIcmp : kIcmpv6) || d.l4_offset + 4 > l3_end) {
    return std::nullopt;
  }
  const std::span<const uint8_t> msg = frame.subspan(d.l4_offset, l3_end - d.l4_offset);
  d.message.assign(msg.begin(), msg.end());
  d.type = msg[0];
  d.code = msg[1];
  d.icmp_checksum_ok =
      (v4 ? onesSum(msg) : l4Sum(d.src, d.dst, kIcmpv6, msg)) == 0xFFFF;
  return d;
}

std::optional<DecodedArp> decodeArp(std::span<const uint8_t> frame) {
  DecodedArp d;
  const auto eth = etherPayload(frame, d.src_mac, d.dst_mac, d.vlans);
  if (!eth || eth->first != kEtherTypeArp || eth->second + kArpLen > frame.size()) {
    return std::nullopt;
  }
  const size_t a = eth->second;
  if (get16(frame, a) != 1 || get16(frame, a + 2) != kEtherTypeIpv4 || frame[a + 4] != 6 ||
      frame[a + 5] != 4) {
    return std::nullopt;
  }
  d.op = get16(frame, a + 6);
  d.sender_mac = readMac(frame, a + 8);
  d.sender = readAddress(frame, a + 14, true);
  d.target_mac = readMac(frame, a + 18);
  d.target = readAddress(frame, a + 24, true);
  return d;
}

}  // namespace pktgen
