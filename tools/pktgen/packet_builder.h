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

// ---------------------------------------------------------------------------------------------
// What a host answers itself: ARP (RFC 826), ICMP echo (RFC 792, RFC 4443) and IPv6 Neighbour
// Discovery (RFC 4861). Built and read here with the same from-scratch checksums, so that the
// tests check the data plane's answers against an independent computation.

/** An Ethernet/IPv4 ARP packet. */
struct ArpSpec {
  sluice::MacAddress src_mac = *sluice::MacAddress::parse("02:00:00:00:00:01");  // Ethernet
  sluice::MacAddress dst_mac = *sluice::MacAddress::parse("ff:ff:ff:ff:ff:ff");
  std::vector<uint16_t> vlans;  // 802.1Q tags, outermost first (TCI values)
  uint16_t op = 1;              // 1 request, 2 reply
  sluice::MacAddress sender_mac = *sluice::MacAddress::parse("02:00:00:00:00:01");
  sluice::IpAddress sender;     // IPv4
  sluice::MacAddress target_mac;  // zero in a request
  sluice::IpAddress target;     // IPv4; == sender: a gratuitous announcement
  size_t min_frame = 0;         // zero padding up to this length (60: the Ethernet minimum)
};

/** The ARP frame. */
Bytes buildArp(const ArpSpec& spec);

/**
 * An ICMP (IPv4) or ICMPv6 (IPv6) message in spec's IP packet: type, code, the four bytes after
 * the checksum (`rest`, network order), then body. The checksum is computed from scratch, for
 * ICMPv6 over the pseudo-header of spec.src and spec.dst. spec.proto and spec.payload are
 * replaced; spec.ttl is the TTL or hop limit.
 */
Bytes buildIcmp(PacketSpec spec, uint8_t type, uint8_t code, uint32_t rest,
                std::span<const uint8_t> body = {});

/** An echo request (type 8 or 128) with an identifier, a sequence number and data. */
Bytes buildEchoRequest(const PacketSpec& spec, uint16_t id, uint16_t seq,
                       std::span<const uint8_t> data = {});

/** The IP packet of spec: build(spec) without its Ethernet header and VLAN tags. */
Bytes ipPacket(const PacketSpec& spec);

/**
 * An ICMP error from spec.src to spec.dst (IPv4: type 3 destination unreachable, 11 time
 * exceeded; ICMPv6: type 1 destination unreachable, 2 packet too big, 3 time exceeded) quoting
 * the first quote_len bytes of ipPacket(quoted): RFC 792 quotes the IP header and 8 bytes,
 * RFC 4443 as much as fits in 1280 bytes (the default: all of it). rest is the word after the
 * checksum: for fragmentation needed the next-hop MTU in its low 16 bits (RFC 1191 section 4),
 * for packet too big the MTU (RFC 4443 section 3.2), else 0. For a quote that is not a
 * PacketSpec's (patched bytes), buildIcmp() with the bytes as body.
 */
Bytes buildIcmpError(const PacketSpec& spec, uint8_t type, uint8_t code, uint32_t rest,
                     const PacketSpec& quoted, size_t quote_len = SIZE_MAX);

/**
 * A Neighbour Solicitation (RFC 4861 section 4.3) from spec.src to spec.dst (usually the
 * target's solicited-node group) for target, with a source link-layer address option carrying
 * spec.src_mac unless source_option is false. Valid solicitations have hop limit (spec.ttl) 255.
 */
Bytes buildNeighbourSolicit(const PacketSpec& spec, const sluice::IpAddress& target,
                            bool source_option = true);

/** The solicited-node multicast group of a: ff02::1:ff00:0/104 + its low 24 bits (RFC 4291). */
sluice::IpAddress solicitedNode(const sluice::IpAddress& a);

/** The Ethernet group of an IPv6 multicast address: 33:33 + its low 32 bits (RFC 2464). */
sluice::MacAddress multicastMac(const sluice::IpAddress& group);

/** What an ICMP or ICMPv6 frame holds, read independently of the data plane. */
struct DecodedIcmp {
  sluice::MacAddress src_mac, dst_mac;
  std::vector<uint16_t> vlans;
  sluice::IpAddress src, dst;
  uint8_t ttl = 0;                // TTL or hop limit
  size_t l3_offset = 0, l4_offset = 0;
  uint8_t type = 0, code = 0;
  Bytes message;                  // the ICMP message as the IP length bounds it
  bool ip_checksum_ok = false;    // IPv4 header checksum verifies (true for IPv6)
  bool icmp_checksum_ok = false;  // over the message (ICMPv6: and the pseudo-header)
};

/** Decode an ICMP-over-IPv4 or ICMPv6 frame (after IPv6 hop-by-hop, routing and destination
 * options headers); nullopt when it is not one. */
std::optional<DecodedIcmp> decodeIcmp(std::span<const uint8_t> frame);

/** What an ARP frame holds. */
struct DecodedArp {
  sluice::MacAddress src_mac, dst_mac;
  std::vector<uint16_t> vlans;
  uint16_t op = 0;
  sluice::MacAddress sender_mac, target_mac;
  sluice::IpAddress sender, target;
};

/** Decode an Ethernet/IPv4 ARP frame; nullopt when it is not one. */
std::optional<DecodedArp> decodeArp(std::span<const uint8_t> frame);

}  // namespace pktgen
