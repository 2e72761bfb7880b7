// ICMP errors about a flow, both ways through NAT, as IPVS handles them (ip_vs_in_icmp() and
// ip_vs_out_icmp()).
// - To a VIP: a router that cannot pass a backend's reply (too big for a link, PMTU discovery:
//   RFC 1191, RFC 8201; unreachable; TTL exceeded) sends the error to the reply's source, the VIP,
//   and quotes the reply: source VIP:vport, destination client:cport. Sluice sends it on to the
//   backend that sent the reply, as Katran does too; left to the kernel, which has no such
//   connection, PMTU discovery through the balancer is a black hole.
// - From behind NAT: a NAT backend's kernel (a UDP port that is closed: port unreachable) or a
//   router between Sluice and the backend sends the error to the client, and quotes the client's
//   packet as Sluice rewrote it: source client:cport, destination backend:bport. Sluice sends it
//   on to the client as if it were about the packet the client sent to the VIP; left to the
//   kernel, the client never learns (a UDP client waits for its time-out instead of getting
//   ECONNREFUSED, and PMTU discovery towards the backend fails).
// The XDP path's twin is lb_parse_icmp_error() (bpf/lib/parse.h) and lb_rewrite_icmp_error()
// (bpf/lib/lb.h); both give the same bytes.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/lb_abi.h"
#include "dataplane/packet.h"
#include "dataplane/rewrite.h"

namespace sluice {

/** The flow an ICMP error is about, and where its quoted packet lies in the frame. */
struct IcmpError {
  // The quoted tuple reversed: the key of the flow's packets that go the other way, the client's
  // (a quoted reply from VIP:vport) or a NAT backend's replies (a quoted client packet to
  // backend:bport, so that its source endpoint is nat_reply_map's key).
  lb_flow_key key;
  uint16_t inner_l3;  // the quoted IP header
  uint16_t inner_l4;  // the quoted TCP/UDP header (its first 8 bytes are present)
};

/** parseIcmpError(): not an error about a TCP/UDP flow; the packet goes on as before. */
inline constexpr int kNotAFlowError = -2;

/**
 * Whether the packet is one of the ICMP errors about a flow that are forwarded (LB_ICMP_* and
 * LB_ICMPV6_* in lb_abi.h, every code), with its 8-byte ICMP header present.
 */
inline bool isIcmpError(const uint8_t* frame, const ParsedPacket& p, uint32_t data_len) noexcept {
  if (p.fragment || p.l4_offset + uint32_t{LB_ICMP_HLEN} > data_len ||
      p.l4_offset + uint32_t{LB_ICMP_HLEN} > p.l3_end) {
    return false;
  }
  const uint8_t type = frame[p.l4_offset];
  if (p.key.family == LB_FAMILY_IPV4) {
    return p.key.proto == LB_IPPROTO_ICMP &&
           (type == LB_ICMP_DEST_UNREACH || type == LB_ICMP_TIME_EXCEEDED);
  }
  return p.key.proto == LB_IPPROTO_ICMPV6 &&
         (type == LB_ICMPV6_DEST_UNREACH || type == LB_ICMPV6_PACKET_TOO_BIG ||
          type == LB_ICMPV6_TIME_EXCEEDED);
}

/**
 * Read the packet an ICMP error (isIcmpError()) quotes: an IPv4 header with options or an IPv6
 * header without extension headers, of the outer packet's family, then the first 8 bytes of its
 * TCP or UDP header (the ports; RFC 792 quotes only those, RFC 4443 as much as fits).
 * @return kParseOk with out filled; kNotAFlowError when the quoted packet is no TCP/UDP packet
 *         from the address the error is sent to (another protocol, an IPv6 extension header, a
 *         non-first fragment, another source); or the drop reason of a quoted header that is cut
 *         short (truncated) or malformed (bad_ip_header)
 */
inline int parseIcmpError(const uint8_t* frame, const ParsedPacket& p, uint32_t data_len,
                          IcmpError& out) noexcept {
  // Bounded by the outer IP packet as well as by the segment: a frame's padding is no quote.
  const uint32_t end = p.l3_end < data_len ? p.l3_end : data_len;
  const uint32_t l3 = p.l4_offset + uint32_t{LB_ICMP_HLEN};
  const uint8_t* ip = frame + l3;
  const bool v4 = p.key.family == LB_FAMILY_IPV4;
  uint32_t l4;
  uint8_t proto;
  std::memset(&out.key, 0, sizeof(out.key));
  if (v4) {
    if (l3 + 20 > end) {
      return LB_DROP_TRUNCATED;
    }
    const uint32_t ihl = (ip[0] & 0x0f) * 4u;
    if ((ip[0] >> 4) != 4 || ihl < 20) {
      return LB_DROP_BAD_IP_HEADER;
    }
    l4 = l3 + ihl;
    if (l4 + 8 > end) {
      return LB_DROP_TRUNCATED;
    }
    if ((loadBe16(ip + 6) & 0x1fff) != 0) {
      return kNotAFlowError;  // a later fragment has no ports
    }
    proto = ip[9];
    std::memcpy(&out.key.dst[0], ip + 12, 4);
    std::memcpy(&out.key.src[0], ip + 16, 4);
  } else {
    if (l3 + 40 > end) {
      return LB_DROP_TRUNCATED;
    }
    if ((ip[0] >> 4) != 6) {
      return LB_DROP_BAD_IP_HEADER;
    }
    l4 = l3 + 40;
    if (l4 + 8 > end) {
      return LB_DROP_TRUNCATED;
    }
    proto = ip[6];
    std::memcpy(out.key.dst, ip + 8, 16);
    std::memcpy(out.key.src, ip + 24, 16);
  }
  if ((proto != LB_PROTO_TCP && proto != LB_PROTO_UDP) ||
      std::memcmp(out.key.dst, p.key.dst, sizeof(out.key.dst)) != 0) {
    return kNotAFlowError;
  }
  // The quote is the packet the error is about; the key is that of the packets going the other way.
  std::memcpy(&out.key.dport, frame + l4, 2);
  std::memcpy(&out.key.sport, frame + l4 + 2, 2);
  out.key.proto = proto;
  out.key.family = p.key.family;
  out.inner_l3 = static_cast<uint16_t>(l3);
  out.inner_l4 = static_cast<uint16_t>(l4);
  return kParseOk;
}

/**
 * NAT: the error is rewritten as the other end of the flow must see it: as if the packet it quotes
 * had not been translated by Sluice. Updated incrementally (RFC 1624): the outer IPv4 header
 * checksum, the quoted IPv4 header checksum, and the ICMP checksum, which covers the whole
 * message and so the quote's address, port and header checksum (ICMPv4, RFC 792), and for ICMPv6
 * the pseudo-header with the outer addresses too (RFC 4443 section 2.3). The quoted TCP/UDP
 * checksum is left as it is: the quote is usually cut short of the segment it sums, and the
 * receiving stack does not check it (IPVS's ip_vs_nat_icmp() leaves it too).
 * @param to_backend true: an error to the VIP about a reply, for the backend; the outer
 *        destination VIP becomes addr, and in the quote the source VIP:vport becomes
 *        addr:port_be. false: an error from behind NAT about a client packet, for the client; the
 *        outer source becomes addr, and in the quote the destination backend:bport becomes
 *        addr:port_be (the VIP:vport)
 * @param addr 4 (IPv4) or 16 (IPv6) bytes in network order
 */
inline void rewriteIcmpError(uint8_t* frame, const ParsedPacket& p, const IcmpError& e,
                             bool to_backend, const void* addr, uint16_t port_be) noexcept {
  uint8_t* ip = frame + p.l3_offset;
  uint8_t* icmp = frame + p.l4_offset;
  uint8_t* inner = frame + e.inner_l3;
  uint8_t* inner_port = frame + e.inner_l4 + (to_backend ? 0 : 2);
  ChecksumDelta msg;
  if (p.key.family == LB_FAMILY_IPV4) {
    uint8_t* outer_addr = ip + (to_backend ? 16 : 12);
    uint8_t* inner_addr = inner + (to_backend ? 12 : 16);
    ChecksumDelta outer;
    outer.replace(outer_addr, addr, 4);
    outer.applyTo(ip + 10);
    std::memcpy(outer_addr, addr, 4);
    ChecksumDelta quoted;
    quoted.replace(inner_addr, addr, 4);
    uint8_t old_csum[2];
    std::memcpy(old_csum, inner + 10, 2);
    quoted.applyTo(inner + 10);
    msg = quoted;
    msg.replace(old_csum, inner + 10, 2);
    std::memcpy(inner_addr, addr, 4);
  } else {
    uint8_t* outer_addr = ip + (to_backend ? 24 : 8);
    uint8_t* inner_addr = inner + (to_backend ? 8 : 24);
    msg.replace(outer_addr, addr, 16);  // in the pseudo-header
    msg.replace(inner_addr, addr, 16);
    std::memcpy(outer_addr, addr, 16);
    std::memcpy(inner_addr, addr, 16);
  }
  msg.replace(inner_port, &port_be, 2);
  msg.applyTo(icmp + 2);
  std::memcpy(inner_port, &port_be, 2);
}

}  // namespace sluice
