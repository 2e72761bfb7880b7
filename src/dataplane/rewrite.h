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

}  // namespace sluice
