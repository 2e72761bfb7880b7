// Header rewrites for the two forwarding modes. DR changes the Ethernet addresses and nothing
// else. NAT changes one IP address and one port and patches the IPv4 header checksum and the
// TCP/UDP checksum incrementally (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), so the cost does not
// depend on the payload length and multi-segment packets need no walk over their data.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/lb_abi.h"
#include "dataplane/packet.h"

namespace sluice {

/** Incremental one's-complement update of a checksum stored at csum_at (network order). */
class ChecksumDelta {
 public:
  /** Account for the 16-bit words at old_p being replaced by those at new_p (n bytes, even). */
  void replace(const void* old_p, const void* new_p, size_t n) noexcept {
    const uint8_t* o = static_cast<const uint8_t*>(old_p);
    const uint8_t* w = static_cast<const uint8_t*>(new_p);
    for (size_t i = 0; i + 1 < n; i += 2) {
      uint16_t ow;
      uint16_t nw;
      std::memcpy(&ow, o + i, 2);
      std::memcpy(&nw, w + i, 2);
      // One's-complement addition is byte-order independent, so the raw words are summed as
      // they sit in memory.
      sum_ += static_cast<uint16_t>(~ow);
      sum_ += nw;
    }
  }

  /** Apply to the checksum at csum_at. */
  void applyTo(uint8_t* csum_at) const noexcept {
    uint16_t hc;
    std::memcpy(&hc, csum_at, 2);
    uint32_t s = sum_ + static_cast<uint16_t>(~hc);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    const uint16_t out = static_cast<uint16_t>(~s);
    std::memcpy(csum_at, &out, 2);
  }

 private:
  uint32_t sum_ = 0;  // at most 2 * 20 words of 0xffff: no overflow
};

/** DR and the L2 part of NAT: new destination and source MAC. */
inline void rewriteMacs(uint8_t* frame, const uint8_t dst[6], const uint8_t src[6]) noexcept {
  std::memcpy(frame, dst, 6);
  std::memcpy(frame + 6, src, 6);
}

/**
 * Replace one address and one port of a parsed TCP/UDP packet and fix the checksums.
 * @param which_dst true: destination address/port (client -> backend, NAT forward);
 *                  false: source address/port (backend -> client, NAT reply)
 * @param addr new address, 4 (IPv4) or 16 (IPv6) bytes in network order
 * @param port_be new port in network order
 */
inline void rewriteL3L4(uint8_t* frame, const ParsedPacket& p, bool which_dst, const void* addr,
                        uint16_t port_be) noexcept {
  uint8_t* ip = frame + p.l3_offset;
  uint8_t* l4 = frame + p.l4_offset;
  const bool v4 = p.key.family == LB_FAMILY_IPV4;
  const size_t alen = v4 ? 4 : 16;
  uint8_t* addr_at = v4 ? ip + (which_dst ? 16 : 12) : ip + (which_dst ? 24 : 8);
  uint8_t* port_at = l4 + (which_dst ? 2 : 0);

  ChecksumDelta pseudo;  // the address is in the IPv4 header sum and in the L4 pseudo-header
  pseudo.replace(addr_at, addr, alen);
  if (v4) {
    pseudo.applyTo(ip + 10);
  }
  ChecksumDelta l4sum = pseudo;
  l4sum.replace(port_at, &port_be, 2);
  if (p.key.proto == LB_PROTO_TCP) {
    l4sum.applyTo(l4 + 16);
  } else {
    uint8_t* csum_at = l4 + 6;
    uint16_t cur;
    std::memcpy(&cur, csum_at, 2);
    if (!(v4 && cur == 0)) {  // IPv4 UDP checksum 0 means "none" and stays so
      l4sum.applyTo(csum_at);
      std::memcpy(&cur, csum_at, 2);
      if (cur == 0) {  // a computed 0 is sent as 0xffff (RFC 768)
        cur = 0xffff;
        std::memcpy(csum_at, &cur, 2);
      }
    }
  }
  std::memcpy(addr_at, addr, alen);
  std::memcpy(port_at, &port_be, 2);
}

/** Fold a 32-bit one's-complement sum to 16 bits (end-around carry). */
inline uint16_t foldSum(uint32_t sum) noexcept {
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

/** One's-complement sum of n bytes as 16-bit words in memory order; an odd last byte is padded. */
inline uint32_t sumWords(const uint8_t* p, uint32_t n, uint32_t sum = 0) noexcept {
  uint32_t i = 0;
  for (; i + 1 < n; i += 2) {
    uint16_t w;
    std::memcpy(&w, p + i, 2);
    sum += w;
    sum = (sum & 0xffff) + (sum >> 16);  // keep the carry in range for any length
  }
  if (i < n) {
    const uint8_t last[2] = {p[i], 0};
    uint16_t w;
    std::memcpy(&w, last, 2);
    sum += w;
  }
  return sum;
}

/** The TCP/UDP pseudo-header sum of a parsed packet (RFC 793, RFC 768, RFC 8200 section 8.1). */
inline uint32_t pseudoHeaderSum(const uint8_t* frame, const ParsedPacket& p) noexcept {
  const uint8_t* ip = frame + p.l3_offset;
  const bool v4 = p.key.family == LB_FAMILY_IPV4;
  const uint32_t l4_len = p.l3_end - p.l4_offset;
  uint32_t sum = sumWords(ip + (v4 ? 12 : 8), v4 ? 8 : 32);
  const uint8_t tail[8] = {static_cast<uint8_t>(l4_len >> 24), static_cast<uint8_t>(l4_len >> 16),
                           static_cast<uint8_t>(l4_len >> 8), static_cast<uint8_t>(l4_len),
                           0, 0, 0, p.key.proto};
  return sumWords(tail, 8, sum);
}

/**
 * Complete a partial TCP/UDP checksum (Linux CHECKSUM_PARTIAL). A local sender (a veth, a
 * container, a VM) leaves to the NIC the sum over the segment and puts only the folded
 * pseudo-header sum in the checksum field; a packet socket (net_af_packet) hands the frame on
 * like that and says nothing of it. Sluice's own transmissions through a packet socket or a tap
 * are taken as complete, so such a frame would reach its backend, or the kernel, with a bad
 * checksum. A checksum field equal to the pseudo-header sum is taken as partial and replaced by
 * the full checksum; a complete checksum that happens to equal it (1 in 65536) is recomputed to
 * the same value, so the test is never wrong, only occasionally wasted work.
 * @param data_len the bytes of the first segment: the whole segment must be in it (else untouched)
 * @return true when the checksum was completed
 */
inline bool completePartialChecksum(uint8_t* frame, uint32_t data_len,
                                    const ParsedPacket& p) noexcept {
  if (p.fragment || (p.key.proto != LB_PROTO_TCP && p.key.proto != LB_PROTO_UDP) ||
      p.l3_end > data_len) {
    return false;
  }
  uint8_t* l4 = frame + p.l4_offset;
  uint8_t* csum_at = l4 + (p.key.proto == LB_PROTO_TCP ? 16 : 6);
  uint16_t field;
  std::memcpy(&field, csum_at, 2);
  if (p.key.proto == LB_PROTO_UDP && p.key.family == LB_FAMILY_IPV4 && field == 0) {
    return false;  // no checksum
  }
  const uint32_t pseudo = pseudoHeaderSum(frame, p);
  if (field != foldSum(pseudo)) [[likely]] {
    return false;
  }
  const uint16_t zero = 0;
  std::memcpy(csum_at, &zero, 2);
  uint16_t full = static_cast<uint16_t>(~foldSum(sumWords(l4, p.l3_end - p.l4_offset, pseudo)));
  if (full == 0 && p.key.proto == LB_PROTO_UDP) {
    full = 0xffff;  // RFC 768: a computed 0 is sent as all ones
  }
  std::memcpy(csum_at, &full, 2);
  return true;
}

}  // namespace sluice
