// What the data plane answers itself, as the host of its addresses and VIPs: ARP requests
// (RFC 826), IPv6 Neighbour Solicitations (RFC 4861 section 7.2.4) and, for VIPs, ICMP echo
// requests (RFC 792, RFC 4443). Each answer is written over the request in place, so it needs no
// allocation and leaves by the port the request came in on. The XDP path's twin is
// bpf/lib/host.h; both build byte-identical answers.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/lb_abi.h"
#include "dataplane/packet.h"
#include "dataplane/rewrite.h"

namespace sluice {

/**
 * Whether a frame's destination MAC is one the port takes: its own, or a group address (broadcast
 * for ARP; 33:33:* for Neighbour Discovery, RFC 2464 section 7; IPv4 multicast and link-local
 * protocols such as VRRP, OSPF, LLDP, which go on to the kernel). Unicast for another MAC is a
 * switch flooding a frame it has not learnt: another host's to forward.
 */
inline bool frameIsForPort(const uint8_t* frame, const uint8_t port_mac[6]) noexcept {
  return std::memcmp(frame, port_mac, 6) == 0 || (frame[0] & 1) != 0;
}

/** The offset of the ARP payload, or 0 when the frame is not ARP (after up to two VLAN tags). */
inline uint32_t arpOffset(const uint8_t* frame, uint32_t data_len) noexcept {
  uint32_t off = 12;
  uint16_t type = loadBe16(frame + off);
  off += 2;
  for (int i = 0; i < kMaxVlanTags && (type == kEtherTypeVlan || type == kEtherTypeQinQ); ++i) {
    if (off + 4 > data_len) {
      return 0;
    }
    type = loadBe16(frame + off + 2);
    off += 4;
  }
  return type == LB_ETH_P_ARP ? off : 0;
}

/**
 * The IPv4 address an ARP request asks for (network order, in *target), if the packet at arp is
 * an Ethernet/IPv4 request that is not a gratuitous announcement (sender == target).
 */
inline bool arpRequestTarget(const uint8_t* arp, uint32_t* target) noexcept {
  // htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4, op 1 (request).
  static constexpr uint8_t kRequest[8] = {0, 1, 8, 0, 6, 4, 0, 1};
  if (std::memcmp(arp, kRequest, 8) != 0 || std::memcmp(arp + 14, arp + 24, 4) == 0) {
    return false;
  }
  std::memcpy(target, arp + 24, 4);
  return true;
}

/** Turn the ARP request at arp (in frame) into the reply "target is at port_mac". */
inline void answerArp(uint8_t* frame, uint8_t* arp, const uint8_t port_mac[6]) noexcept {
  uint8_t requester_mac[6];
  uint8_t requester_ip[4];
  uint8_t target_ip[4];
  std::memcpy(requester_mac, arp + 8, 6);
  std::memcpy(requester_ip, arp + 14, 4);
  std::memcpy(target_ip, arp + 24, 4);
  arp[7] = 2;  // reply
  std::memcpy(arp + 8, port_mac, 6);
  std::memcpy(arp + 14, target_ip, 4);
  std::memcpy(arp + 18, requester_mac, 6);
  std::memcpy(arp + 24, requester_ip, 4);
  rewriteMacs(frame, requester_mac, port_mac);
}

/**
 * The target of an IPv6 Neighbour Solicitation that can be answered: ICMPv6 type 135 code 0, hop
 * limit 255 (RFC 4861 section 7.1.1), a source that is not the unspecified address (duplicate
 * address detection is the kernel's business), and room for a target link-layer address option
 * (at least one option present, so the answer fits in place). nullptr otherwise.
 * @param l3_end one past the IPv6 payload, or the end of the first segment if that comes first
 */
inline const uint8_t* solicitTarget(const uint8_t* frame, const ParsedPacket& p,
                                    uint32_t l3_end) noexcept {
  if (p.key.family != LB_FAMILY_IPV6 || p.key.proto != LB_IPPROTO_ICMPV6 || p.fragment ||
      p.l4_offset != p.l3_offset + 40u || p.l4_offset + uint32_t{LB_ND_NA_LEN} > l3_end) {
    return nullptr;
  }
  const uint8_t* ip = frame + p.l3_offset;
  const uint8_t* icmp = frame + p.l4_offset;
  static constexpr uint32_t kUnspecified[4] = {0, 0, 0, 0};
  if (icmp[0] != LB_ICMPV6_NEIGH_SOLICIT || icmp[1] != 0 || ip[7] != 255 ||
      std::memcmp(p.key.src, kUnspecified, 16) == 0) {
    return nullptr;
  }
  return icmp + 8;
}

/**
 * Turn the Neighbour Solicitation into the solicited advertisement "target is at port_mac"
 * (flags Solicited and Override, RFC 4861 section 7.2.4), sent to the solicitor.
 * @return the frame's new length (the advertisement is LB_ND_NA_LEN bytes of ICMPv6)
 */
inline uint32_t answerSolicit(uint8_t* frame, const ParsedPacket& p,
                              const uint8_t port_mac[6]) noexcept {
  uint8_t* ip = frame + p.l3_offset;
  uint8_t* icmp = frame + p.l4_offset;
  uint8_t target[16];
  std::memcpy(target, icmp + 8, 16);
  std::memcpy(ip + 24, ip + 8, 16);  // to the solicitor
  std::memcpy(ip + 8, target, 16);   // from the address asked for
  ip[4] = 0;
  ip[5] = LB_ND_NA_LEN;
  ip[7] = 255;
  icmp[0] = LB_ICMPV6_NEIGH_ADVERT;
  icmp[1] = 0;
  icmp[2] = 0;
  icmp[3] = 0;
  icmp[4] = 0x60;  // Solicited, Override; not a router
  icmp[5] = icmp[6] = icmp[7] = 0;
  icmp[24] = LB_ND_OPT_TARGET_LLADDR;
  icmp[25] = 1;  // 8 bytes
  std::memcpy(icmp + 26, port_mac, 6);
  // Pseudo-header (RFC 8200 section 8.1): addresses, upper-layer length, next header.
  uint32_t sum = sumWords(ip + 8, 32);
  const uint8_t tail[8] = {0, 0, 0, LB_ND_NA_LEN, 0, 0, 0, LB_IPPROTO_ICMPV6};
  sum = sumWords(tail, 8, sum);
  sum = sumWords(icmp, LB_ND_NA_LEN, sum);
  const uint16_t csum = static_cast<uint16_t>(~foldSum(sum));
  std::memcpy(icmp + 2, &csum, 2);
  uint8_t solicitor_mac[6];
  std::memcpy(solicitor_mac, frame + 6, 6);
  rewriteMacs(frame, solicitor_mac, port_mac);
  return p.l4_offset + LB_ND_NA_LEN;
}

/** Whether the packet is an ICMP or ICMPv6 echo request (not a fragment) with its header present. */
inline bool isEchoRequest(const uint8_t* frame, const ParsedPacket& p, uint32_t data_len) noexcept {
  if (p.fragment || p.l4_offset + 8u > data_len || p.l4_offset + 8u > p.l3_end) {
    return false;
  }
  const uint8_t* icmp = frame + p.l4_offset;
  if (p.key.family == LB_FAMILY_IPV4) {
    return p.key.proto == LB_IPPROTO_ICMP && icmp[0] == LB_ICMP_ECHO_REQUEST && icmp[1] == 0;
  }
  return p.key.proto == LB_IPPROTO_ICMPV6 && icmp[0] == LB_ICMPV6_ECHO_REQUEST && icmp[1] == 0;
}

/**
 * Turn an echo request into its reply in place: addresses swapped, type 0 / 129, TTL or hop limit
 * LB_REPLY_HOP_LIMIT, checksums updated incrementally (swapping the addresses changes no sum).
 */
inline void answerEcho(uint8_t* frame, const ParsedPacket& p, const uint8_t port_mac[6]) noexcept {
  uint8_t* ip = frame + p.l3_offset;
  uint8_t* icmp = frame + p.l4_offset;
  const bool v4 = p.key.family == LB_FAMILY_IPV4;
  const size_t alen = v4 ? 4 : 16;
  uint8_t* src = ip + (v4 ? 12 : 8);
  uint8_t* dst = src + alen;
  uint8_t tmp[16];
  std::memcpy(tmp, src, alen);
  std::memcpy(src, dst, alen);
  std::memcpy(dst, tmp, alen);
  if (v4) {
    const uint8_t ttl[2] = {LB_REPLY_HOP_LIMIT, ip[9]};  // TTL and protocol share a word
    ChecksumDelta d;
    d.replace(ip + 8, ttl, 2);
    d.applyTo(ip + 10);
    ip[8] = LB_REPLY_HOP_LIMIT;
  } else {
    ip[7] = LB_REPLY_HOP_LIMIT;  // the IPv6 header has no checksum
  }
  const uint8_t type[2] = {v4 ? uint8_t{LB_ICMP_ECHO_REPLY} : uint8_t{LB_ICMPV6_ECHO_REPLY}, 0};
  ChecksumDelta d;
  d.replace(icmp, type, 2);
  d.applyTo(icmp + 2);
  if (icmp[2] == 0 && icmp[3] == 0) {
    // The update's -0 where the sum of the rest is 0 (an empty echo with id and sequence 0):
    // only all ones verifies then, and all ones is right whenever 0 is (RFC 1624 section 3).
    icmp[2] = icmp[3] = 0xff;
  }
  icmp[0] = type[0];
  uint8_t peer_mac[6];
  std::memcpy(peer_mac, frame + 6, 6);
  rewriteMacs(frame, peer_mac, port_mac);
}

}  // namespace sluice
