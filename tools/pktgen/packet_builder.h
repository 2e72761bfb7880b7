// Test and tool side packet construction: Ethernet / 802.1Q / IPv4 / IPv6 / TCP / UDP frames with
// every checksum computed from scratch (a plain one's-complement sum over the whole header and
// payload). Deliberately shares no code with src/dataplane, so tests can check the data plane's
// incremental checksum updates against an independent computation.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/net.h"

namespace pktgen {

using Bytes = std::vector<uint8_t>;

/** Description of one frame; build() turns it into bytes. */
struct PacketSpec {
  sluice::MacAddress src_mac = *sluice::MacAddress::parse("02:00:00:00:00:01");
  sluice::MacAddress dst_mac = *sluice::MacAddress::parse("02:00:00:00:00:02");
  std::vector<uint16_t> vlans;  // 802.1Q tags, outermost first (TCI values)
  sluice::IpAddress src;        // family decides IPv4 vs IPv6 (both must match)
  sluice::IpAddress dst;
  uint8_t proto = LB_PROTO_TCP;  // 6 TCP, 17 UDP, anything else: raw payload after the IP header
  uint16_t sport = 12345;
  uint16_t dport = 80;
  uint8_t tcp_flags = 0x10;  // ACK; 0x02 SYN, 0x01 FIN, 0x04 RST
  uint32_t seq = 1;
  uint32_t ack = 0;
  uint8_t ttl = 64;
  uint16_t ip_id = 0;
  bool udp_zero_checksum = false;  // IPv4 UDP only: send checksum 0 ("none")
  Bytes payload;
  // IPv4 fragmentation fields: more-fragments flag and offset in 8-byte units.
  bool more_fragments = false;
  uint16_t frag_offset = 0;
  // IPv6: extension headers to insert before the L4 header (next-header values, each 8 bytes,
  // e.g. 0 hop-by-hop, 60 destination options, 44 fragment).
  std::vector<uint8_t> ipv6_ext;
};

/** The frame with correct lengths and checksums. */
Bytes build(const PacketSpec& spec);

/** One's-complement Internet checksum (RFC 1071) of data, folded, not inverted. */
uint16_t onesSum(std::span<const uint8_t> data, uint32_t initial = 0);

/** What a parsed frame holds, read independently of the data plane's parser. */
struct Decoded {
  sluice::MacAddress src_mac, dst_mac;
  std::vector<uint16_t> vlans;
  sluice::IpAddress src, dst;
  uint8_t proto = 0;
  uint16_t sport = 0, dport = 0;
  size_t l3_offset = 0, l4_offset = 0;
  bool ip_checksum_ok = false;  // IPv4 header checksum verifies (true for IPv6)
  bool l4_checksum_ok = false;  // TCP/UDP checksum verifies over pseudo-header + segment
  bool udp_checksum_zero = false;
};

/** Decode an Ethernet frame with TCP or UDP inside; nullopt when it is not one. */
std::optional<Decoded> decode(std::span<const uint8_t> frame);

}  // namespace pktgen
