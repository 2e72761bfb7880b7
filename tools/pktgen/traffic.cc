#include "tools/pktgen/traffic.h"

#include <stdexcept>

namespace pktgen {
namespace {

constexpr uint32_t kPortsPerAddress = 50000;
constexpr uint8_t kTcpFin = 0x01;
constexpr uint8_t kTcpSyn = 0x02;
constexpr uint8_t kTcpPsh = 0x08;
constexpr uint8_t kTcpAck = 0x10;

// Client base when the spec leaves it unset: a documentation prefix of the VIP's family.
sluice::IpAddress defaultClientBase(const sluice::IpAddress& vip) {
  return *sluice::IpAddress::parse(vip.isV6() ? "2001:db8:ff::1" : "198.51.100.1");
}

// Deterministic payload: depends only on the flow index, the packet index and the position.
Bytes makePayload(uint32_t flow, uint32_t pkt, uint32_t len) {
  Bytes p(len);
  const uint32_t seed = flow * 2654435761u + pkt * 40503u;
  for (uint32_t j = 0; j < len; ++j) {
    p[j] = static_cast<uint8_t>((seed >> ((j % 4) * 8)) + j);
  }
  return p;
}

// Initial sequence number of flow i, so that flows do not all look alike.
uint32_t clientIsn(uint32_t flow) { return 1000u + flow * 7919u; }

PacketSpec packetFor(const TrafficSpec& spec, uint32_t flow, uint32_t pkt) {
  PacketSpec p;
  p.src_mac = spec.client_mac;
  p.dst_mac = spec.lb_mac;
  p.src = clientAddress(spec, flow);
  p.dst = spec.vip;
  p.proto = spec.proto;
  p.sport = static_cast<uint16_t>(spec.client_port_base + flow % kPortsPerAddress);
  p.dport = spec.vport;
  p.ip_id = static_cast<uint16_t>(flow * spec.packets_per_flow + pkt);
  if (spec.proto == LB_PROTO_TCP) {
    const uint32_t isn = clientIsn(flow);
    const uint32_t server_ack = 5001u + flow;  // pretend server ISN 5000 + flow
    if (pkt == 0) {
      p.tcp_flags = kTcpSyn;
      p.seq = isn;
      p.ack = 0;
    } else {
      p.seq = isn + 1 + (pkt - 1) * spec.payload_bytes;
      p.ack = server_ack;
      if (pkt + 1 == spec.packets_per_flow) {
        p.tcp_flags = kTcpFin | kTcpAck;
      } else {
        p.tcp_flags = kTcpAck | kTcpPsh;
        p.payload = makePayload(flow, pkt, spec.payload_bytes);
      }
    }
  } else {
    p.payload = makePayload(flow, pkt, spec.payload_bytes);
  }
  return p;
}

}  // namespace

sluice::IpAddress clientAddress(const TrafficSpec& spec, uint32_t i) {
  sluice::IpAddress a = spec.client_base.family == 0 ? defaultClientBase(spec.vip)
                                                     : spec.client_base;
  // Add i to the big-endian 32-bit word holding the IPv4 address or the IPv6 low word.
  const size_t at = a.isV4() ? 0 : 12;
  uint32_t w = static_cast<uint32_t>(a.bytes[at]) << 24 |
               static_cast<uint32_t>(a.bytes[at + 1]) << 16 |
               static_cast<uint32_t>(a.bytes[at + 2]) << 8 | a.bytes[at + 3];
  w += i;
  a.bytes[at] = static_cast<uint8_t>(w >> 24);
  a.bytes[at + 1] = static_cast<uint8_t>(w >> 16);
  a.bytes[at + 2] = static_cast<uint8_t>(w >> 8);
  a.bytes[at + 3] = static_cast<uint8_t>(w);
  return a;
}

std::vector<PcapRecord> makeTraffic(const TrafficSpec& spec) {
  if (!spec.vip.isV4() && !spec.vip.isV6()) {
    throw std::invalid_argument("makeTraffic: vip is not set");
  }
  if (spec.client_base.family != 0 && spec.client_base.family != spec.vip.family) {
    throw std::invalid_argument("makeTraffic: client_base and vip are of different families");
  }
  if (spec.proto != LB_PROTO_TCP && spec.proto != LB_PROTO_UDP) {
    throw std::invalid_argument("makeTraffic: proto must be TCP or UDP");
  }
  std::vector<PcapRecord> out;
  out.reserve(static_cast<size_t>(spec.flows) * spec.packets_per_flow);
  auto emit = [&](uint32_t flow, uint32_t pkt) {
    PcapRecord r;
    r.ts_us = spec.start_us + out.size() * spec.gap_us;
    r.data = build(packetFor(spec, flow, pkt));
    out.push_back(std::move(r));
  };
  if (spec.interleave) {
    for (uint32_t pkt = 0; pkt < spec.packets_per_flow; ++pkt) {
      for (uint32_t flow = 0; flow < spec.flows; ++flow) {
        emit(flow, pkt);
      }
    }
  } else {
    for (uint32_t flow = 0; flow < spec.flows; ++flow) {
      for (uint32_t pkt = 0; pkt < spec.packets_per_flow; ++pkt) {
        emit(flow, pkt);
      }
    }
  }
  return out;
}

}  // namespace pktgen
