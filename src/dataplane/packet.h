// The packet parser: Ethernet, up to two VLAN tags, IPv4 (with options) or IPv6 (with a bounded
// walk of extension headers), TCP or UDP. Every length comes from the wire and is checked against
// the bytes actually present before it is used. The parser only reads; rewrite.h writes.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/lb_abi.h"

namespace sluice {

// The wire constants are lb_abi.h's, shared with the XDP parser (bpf/lib/parse.h).
inline constexpr uint16_t kEtherTypeIpv4 = LB_ETH_P_IPV4;
inline constexpr uint16_t kEtherTypeIpv6 = LB_ETH_P_IPV6;
inline constexpr uint16_t kEtherTypeVlan = LB_ETH_P_VLAN;
inline constexpr uint16_t kEtherTypeQinQ = LB_ETH_P_QINQ;
inline constexpr int kMaxVlanTags = LB_MAX_VLAN_TAGS;
inline constexpr int kMaxIpv6ExtHeaders = LB_MAX_IPV6_EXT_HDRS;

inline constexpr uint8_t kTcpFin = LB_TCP_FIN;
inline constexpr uint8_t kTcpSyn = LB_TCP_SYN;
inline constexpr uint8_t kTcpRst = LB_TCP_RST;
inline constexpr uint8_t kTcpAck = LB_TCP_ACK;

/** What the parser learned of a frame. Offsets are from the start of the frame. */
struct ParsedPacket {
  lb_flow_key key;      // 5-tuple as on the wire (ports 0 for fragments and other protocols)
  uint16_t l3_offset;   // start of the IP header
  uint16_t l4_offset;   // start of the TCP/UDP header
  uint8_t tcp_flags;    // TCP only
  bool fragment;        // IPv4 MF or offset != 0, or an IPv6 fragment header
  // One past the last byte of the IP packet (frames may carry padding). 32 bits: behind VLAN
  // tags, an IPv4 total length or an IPv6 payload length of 65535 ends past 65535.
  uint32_t l3_end;
};

inline constexpr int kParseOk = LB_PARSE_OK;

/** The IPv6 extension headers the parser walks: hop-by-hop, routing, fragment, AH, dest opts. */
inline bool isIpv6ExtHeader(uint8_t proto) noexcept {
  return proto == LB_IPPROTO_HOPOPTS || proto == LB_IPPROTO_ROUTING ||
         proto == LB_IPPROTO_FRAGMENT || proto == LB_IPPROTO_AH || proto == LB_IPPROTO_DSTOPTS;
}

inline uint16_t loadBe16(const uint8_t* p) noexcept {
  return static_cast<uint16_t>(p[0] << 8 | p[1]);
}

/**
 * Parse a frame.
 * @param data first byte of the frame (the first segment of an mbuf chain)
 * @param data_len bytes present in that segment: every header must lie inside it
 * @param pkt_len length of the whole frame (all segments): the IP lengths are checked against it
 * @param out filled on success (and partly on a drop)
 * @return kParseOk, or the lb_drop_reason to count
 */
inline int parsePacket(const uint8_t* data, uint32_t data_len, uint32_t pkt_len,
                       ParsedPacket& out) noexcept {
  std::memset(&out.key, 0, sizeof(out.key));
  out.tcp_flags = 0;
  out.fragment = false;
  if (data_len < 14) [[unlikely]] {
    return LB_DROP_TRUNCATED;
  }
  uint32_t off = 12;
  uint16_t ether_type = loadBe16(data + off);
  off += 2;
  for (int i = 0; i < kMaxVlanTags && (ether_type == kEtherTypeVlan || ether_type == kEtherTypeQinQ);
       ++i) {
    if (off + 4 > data_len) [[unlikely]] {
      return LB_DROP_TRUNCATED;
    }
    ether_type = loadBe16(data + off + 2);
    off += 4;
  }

  uint32_t l4 = 0;
  uint32_t l3_end = 0;  // one past the last byte the IP header says belongs to the packet
  uint8_t proto = 0;
  if (ether_type == kEtherTypeIpv4) {
    if (off + 20 > data_len) [[unlikely]] {
      return LB_DROP_TRUNCATED;
    }
    const uint8_t* ip = data + off;
    const uint32_t ihl = (ip[0] & 0x0f) * 4u;
    if ((ip[0] >> 4) != 4 || ihl < 20) [[unlikely]] {
      return LB_DROP_BAD_IP_HEADER;
    }
    if (off + ihl > data_len) [[unlikely]] {
      return LB_DROP_TRUNCATED;
    }
    const uint32_t total = loadBe16(ip + 2);
    if (total < ihl || off + total > pkt_len) [[unlikely]] {
      return LB_DROP_BAD_IP_LENGTH;
    }
    proto = ip[9];
    out.key.family = LB_FAMILY_IPV4;
    std::memcpy(&out.key.src[0], ip + 12, 4);
    std::memcpy(&out.key.dst[0], ip + 16, 4);
    out.fragment = (loadBe16(ip + 6) & 0x3fff) != 0;  // MF flag or a fragment offset
    l4 = off + ihl;
    l3_end = off + total;
  } else if (ether_type == kEtherTypeIpv6) {
    if (off + 40 > data_len) [[unlikely]] {
      return LB_DROP_TRUNCATED;
    }
    const uint8_t* ip = data + off;
    if ((ip[0] >> 4) != 6) [[unlikely]] {
      return LB_DROP_BAD_IP_HEADER;
    }
    l3_end = off + 40 + loadBe16(ip + 4);
    if (l3_end > pkt_len) [[unlikely]] {
      return LB_DROP_BAD_IP_LENGTH;
    }
    out.key.family = LB_FAMILY_IPV6;
    std::memcpy(out.key.src, ip + 8, 16);
    std::memcpy(out.key.dst, ip + 24, 16);
    proto = ip[6];
    l4 = off + 40;
    int ext = 0;
    for (; ext < kMaxIpv6ExtHeaders; ++ext) {
      if (!isIpv6ExtHeader(proto)) {
        break;
      }
      if (l4 + 8 > data_len) [[unlikely]] {
        return LB_DROP_TRUNCATED;
      }
      const uint8_t* eh = data + l4;
      uint32_t len;
      if (proto == LB_IPPROTO_FRAGMENT) {
        out.fragment = true;
        len = 8;
      } else if (proto == LB_IPPROTO_AH) {
        len = (eh[1] + 2u) * 4u;  // AH counts 4-byte words (RFC 4302)
      } else {
        len = (eh[1] + 1u) * 8u;
      }
      proto = eh[0];
      l4 += len;
      if (l4 > l3_end) [[unlikely]] {
        return LB_DROP_BAD_IP_LENGTH;
      }
    }
    if (ext == kMaxIpv6ExtHeaders && isIpv6ExtHeader(proto)) [[unlikely]] {
      return LB_DROP_IPV6_EXT_LIMIT;
    }
  } else {
    return LB_DROP_NON_IP;
  }

  out.key.proto = proto;
  out.l3_offset = static_cast<uint16_t>(off);
  out.l4_offset = static_cast<uint16_t>(l4);
  out.l3_end = l3_end;
  if (out.fragment) {
    return kParseOk;  // no L4 header to read; the pipeline decides what a fragment gets
  }
  const uint32_t l4_len = l3_end - l4;
  if (proto == LB_PROTO_TCP) {
    if (l4 + 20 > data_len) [[unlikely]] {
      return LB_DROP_TRUNCATED;
    }
    const uint8_t* th = data + l4;
    const uint32_t doff = (th[12] >> 4) * 4u;
    if (l4_len < 20 || doff < 20 || doff > l4_len) [[unlikely]] {
      return LB_DROP_BAD_L4_HEADER;
    }
    std::memcpy(&out.key.sport, th, 2);
    std::memcpy(&out.key.dport, th + 2, 2);
    out.tcp_flags = th[13];
  } else if (proto == LB_PROTO_UDP) {
    if (l4 + 8 > data_len) [[unlikely]] {
      return LB_DROP_TRUNCATED;
    }
    const uint8_t* uh = data + l4;
    const uint32_t ulen = loadBe16(uh + 4);
    if (l4_len < 8 || ulen < 8 || ulen > l4_len) [[unlikely]] {
      return LB_DROP_BAD_L4_HEADER;
    }
    std::memcpy(&out.key.sport, uh, 2);
    std::memcpy(&out.key.dport, uh + 2, 2);
  }
  return kParseOk;
}

}  // namespace sluice
