// Address types shared by the control plane and the data plane: IP addresses of either family
// and Ethernet MACs, with parsing and formatting for config files, the CLI and reports.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "common/lb_abi.h"

namespace sluice {

/** An IPv4 or IPv6 address in network byte order; IPv4 uses bytes 0..3 and zeroes the rest. */
struct IpAddress {
  uint8_t family = 0;  // LB_FAMILY_IPV4 or LB_FAMILY_IPV6, 0 = unset
  std::array<uint8_t, 16> bytes{};

  static std::optional<IpAddress> parse(std::string_view text);
  static IpAddress v4(uint32_t host_order);
  std::string str() const;
  bool isV4() const { return family == LB_FAMILY_IPV4; }
  bool isV6() const { return family == LB_FAMILY_IPV6; }

  /** The four 32-bit words of lb_flow_key layout (network byte order, IPv4 in word 0). */
  void toWords(uint32_t out[4]) const { std::memcpy(out, bytes.data(), 16); }
  static IpAddress fromWords(uint8_t family, const uint32_t in[4]);

  auto operator<=>(const IpAddress&) const = default;
  bool operator==(const IpAddress&) const = default;
};

/** An address with a prefix length: one of Sluice's own addresses and its on-link subnet. */
struct IpPrefix {
  IpAddress address;
  uint8_t length = 0;  // 0..32 (IPv4) or 0..128 (IPv6)

  /** "198.51.100.2/24", "2001:db8:b::2/64"; nullopt when malformed or the length is too long. */
  static std::optional<IpPrefix> parse(std::string_view text);
  std::string str() const;
  /** Whether a is in this prefix's subnet (same family, same first `length` bits). */
  bool contains(const IpAddress& a) const;

  auto operator<=>(const IpPrefix&) const = default;
  bool operator==(const IpPrefix&) const = default;
};

/** An Ethernet MAC address. */
struct MacAddress {
  std::array<uint8_t, 6> bytes{};

  static std::optional<MacAddress> parse(std::string_view text);
  std::string str() const;
  bool isZero() const;
  bool isMulticast() const { return (bytes[0] & 1) != 0; }

  auto operator<=>(const MacAddress&) const = default;
  bool operator==(const MacAddress&) const = default;
};

enum class Protocol : uint8_t { kTcp = LB_PROTO_TCP, kUdp = LB_PROTO_UDP };

std::optional<Protocol> parseProtocol(std::string_view text);
const char* protocolName(Protocol p);

/** "192.0.2.1:80" or "[2001:db8::1]:80". */
std::string formatEndpoint(const IpAddress& addr, uint16_t port);

}  // namespace sluice
