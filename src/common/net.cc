#include "common/net.h"

#include <arpa/inet.h>

#include <cstdio>

namespace sluice {

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  if (text.empty() || text.size() > INET6_ADDRSTRLEN) {
    return std::nullopt;
  }
  const std::string s(text);
  IpAddress a;
  if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
    a.family = LB_FAMILY_IPV4;
    return a;
  }
  if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
    a.family = LB_FAMILY_IPV6;
    return a;
  }
  return std::nullopt;
}

IpAddress IpAddress::v4(uint32_t host_order) {
  IpAddress a;
  a.family = LB_FAMILY_IPV4;
  a.bytes[0] = static_cast<uint8_t>(host_order >> 24);
  a.bytes[1] = static_cast<uint8_t>(host_order >> 16);
  a.bytes[2] = static_cast<uint8_t>(host_order >> 8);
  a.bytes[3] = static_cast<uint8_t>(host_order);
  return a;
}

IpAddress IpAddress::fromWords(uint8_t family, const uint32_t in[4]) {
  IpAddress a;
  a.family = family;
  std::memcpy(a.bytes.data(), in, 16);
  return a;
}

std::string IpAddress::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family == LB_FAMILY_IPV4) {
    inet_ntop(AF_INET, bytes.data(), buf, sizeof(buf));
  } else if (family == LB_FAMILY_IPV6) {
    inet_ntop(AF_INET6, bytes.data(), buf, sizeof(buf));
  } else {
    return "<unset>";
  }
  return buf;
}

std::optional<MacAddress> MacAddress::parse(std::string_view text) {
  // Exactly six two-digit hex groups separated by ':' (or '-'), as ip(8) prints them.
  if (text.size() != 17) {
    return std::nullopt;
  }
  MacAddress m;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') { return c - '0'; }
    if (c >= 'a' && c <= 'f') { return c - 'a' + 10; }
    if (c >= 'A' && c <= 'F') { return c - 'A' + 10; }
    return -1;
  };
  for (size_t i = 0; i < 6; ++i) {
    const int hi = hex(text[i * 3]);
    const int lo = hex(text[i * 3 + 1]);
    if (hi < 0 || lo < 0) {
      return std::nullopt;
    }
    if (i < 5 && text[i * 3 + 2] != ':' && text[i * 3 + 2] != '-') {
      return std::nullopt;
    }
    m.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return m;
}

std::string MacAddress::str() const {
  char buf[18];
  std::snprintf(buf, sizeof(buf), "%02x:%02x:%02x:%02x:%02x:%02x", bytes[0], bytes[1], bytes[2],
                bytes[3], bytes[4], bytes[5]);
  return buf;
}

bool MacAddress::isZero() const {
  for (uint8_t b : bytes) {
    if (b != 0) {
      return false;
    }
  }
  return true;
}

std::optional<Protocol> parseProtocol(std::string_view text) {
  if (text == "tcp") { return Protocol::kTcp; }
  if (text == "udp") { return Protocol::kUdp; }
  return std::nullopt;
}

const char* protocolName(Protocol p) { return p == Protocol::kTcp ? "tcp" : "udp"; }

std::string formatEndpoint(const IpAddress& addr, uint16_t port) {
  if (addr.isV6()) {
    return "[" + addr.str() + "]:" + std::to_string(port);
  }
  return addr.str() + ":" + std::to_string(port);
}

}  // namespace sluice

namespace sluice {

std::optional<IpPrefix> IpPrefix::parse(std::string_view text) {
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos || slash + 1 >= text.size() || text.size() - slash > 4) {
    return std::nullopt;
  }
  const auto addr = IpAddress::parse(text.substr(0, slash));
  if (!addr) {
    return std::nullopt;
  }
  unsigned len = 0;
  for (char c : text.substr(slash + 1)) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    len = len * 10 + static_cast<unsigned>(c - '0');
  }
  if (len > (addr->isV4() ? 32u : 128u)) {
    return std::nullopt;
  }
  return IpPrefix{*addr, static_cast<uint8_t>(len)};
}

std::string IpPrefix::str() const { return address.str() + "/" + std::to_string(length); }

bool IpPrefix::contains(const IpAddress& a) const {
  if (a.family != address.family) {
    return false;
  }
  const unsigned full = length / 8;
  if (std::memcmp(a.bytes.data(), address.bytes.data(), full) != 0) {
    return false;
  }
  const unsigned rest = length % 8;
  if (rest == 0) {
    return true;
  }
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a.bytes[full] & mask) == (address.bytes[full] & mask);
}

}  // namespace sluice
