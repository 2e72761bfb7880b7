// Synthetic traffic: many flows of TCP (SYN, data, FIN) or UDP packets toward a VIP, used for the
// sample capture, the replay tests and the benchmark.
#pragma once

#include <cstdint>
#include <vector>

#include "tools/pktgen/pcap_io.h"

namespace pktgen {

struct TrafficSpec {
  sluice::IpAddress vip;
  uint16_t vport = 80;
  uint8_t proto = LB_PROTO_TCP;
  uint32_t flows = 100;
  uint32_t packets_per_flow = 4;  // TCP: SYN, (n-2) data, FIN; UDP: n datagrams
  sluice::IpAddress client_base;  // clients are client_base + i (IPv4) or + i in the last word;
                                  // unset: 198.51.100.1 or 2001:db8:ff::1 (the VIP's family)
  uint16_t client_port_base = 10000;
  uint32_t payload_bytes = 64;
  uint64_t start_us = 1700000000ull * 1000000ull;
  uint64_t gap_us = 10;  // time between consecutive packets
  sluice::MacAddress client_mac = *sluice::MacAddress::parse("02:00:00:00:00:aa");
  sluice::MacAddress lb_mac = *sluice::MacAddress::parse("02:00:00:00:00:bb");
  bool interleave = true;  // round-robin the flows' packets rather than one flow after another
};

/** Client -> VIP packets of every flow, in time order. */
std::vector<PcapRecord> makeTraffic(const TrafficSpec& spec);

/** The client address of flow i, as makeTraffic uses it. */
sluice::IpAddress clientAddress(const TrafficSpec& spec, uint32_t i);

}  // namespace pktgen
