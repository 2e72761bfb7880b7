// sluice-pcapgen: writes synthetic client -> VIP traffic to a pcap file, or (--sample) the mixed
// capture kept in the repository for replay tests and demos. Output is a pure function of the
// options: there is no random seed, every run writes the same bytes.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "common/net.h"
#include "tools/pktgen/pcap_io.h"
#include "tools/pktgen/traffic.h"

namespace {

constexpr uint64_t kSampleStartUs = 1700000000ull * 1000000ull;

sluice::IpAddress ip(const char* text) { return *sluice::IpAddress::parse(text); }

using pktgen::PcapRecord;

PcapRecord at(uint64_t offset_us, pktgen::Bytes data) {
  return PcapRecord{kSampleStartUs + offset_us, std::move(data)};
}

void append(std::vector<PcapRecord>& all, std::vector<PcapRecord> more) {
  all.insert(all.end(), std::make_move_iterator(more.begin()),
             std::make_move_iterator(more.end()));
}

pktgen::Bytes arpRequest(const sluice::MacAddress& sender_mac, const sluice::IpAddress& sender,
                         const sluice::IpAddress& target) {
  pktgen::Bytes f(6, 0xFF);  // broadcast destination
  f.insert(f.end(), sender_mac.bytes.begin(), sender_mac.bytes.end());
  const uint8_t body_head[] = {0x08, 0x06,              // ethertype ARP
                               0x00, 0x01,              // hardware type Ethernet
                               0x08, 0x00,              // protocol type IPv4
                               6,    4,                 // address lengths
                               0x00, 0x01};             // request
  f.insert(f.end(), std::begin(body_head), std::end(body_head));
  f.insert(f.end(), sender_mac.bytes.begin(), sender_mac.bytes.end());
  f.insert(f.end(), sender.bytes.begin(), sender.bytes.begin() + 4);
  f.insert(f.end(), 6, 0x00);  // target hardware address unknown
  f.insert(f.end(), target.bytes.begin(), target.bytes.begin() + 4);
  return f;
}

pktgen::Bytes icmpEcho(const pktgen::PacketSpec& base) {
  pktgen::PacketSpec p = base;
  p.proto = 1;  // ICMP
  pktgen::Bytes msg = {8, 0, 0, 0, 0x00, 0x01, 0x00, 0x01};  // echo request, id 1, seq 1
  for (uint8_t i = 0; i < 32; ++i) {
    msg.push_back(static_cast<uint8_t>('a' + i % 23));
  }
  const uint16_t csum = static_cast<uint16_t>(~pktgen::onesSum(msg));
  msg[2] = static_cast<uint8_t>(csum >> 8);
  msg[3] = static_cast<uint8_t>(csum);
  p.payload = std::move(msg);
  return pktgen::build(p);
}

std::vector<PcapRecord> sampleCapture() {
  std::vector<PcapRecord> all;

  // (1) 40 TCP flows x 5 packets to 192.0.2.10:80. Time offsets = 0 (mod 10).
  pktgen::TrafficSpec web;
  web.vip = ip("192.0.2.10");
  web.vport = 80;
  web.proto = LB_PROTO_TCP;
  web.flows = 40;
  web.packets_per_flow = 5;
  web.client_base = ip("198.51.100.1");
  web.client_port_base = 10000;
  web.payload_bytes = 64;
  web.start_us = kSampleStartUs;
  web.gap_us = 10;
  append(all, pktgen::makeTraffic(web));

  // (2) 20 UDP flows x 3 datagrams to 192.0.2.53:53. Offsets = 5 (mod 10).
  pktgen::TrafficSpec dns;
  dns.vip = ip("192.0.2.53");
  dns.vport = 53;
  dns.proto = LB_PROTO_UDP;
  dns.flows = 20;
  dns.packets_per_flow = 3;
  dns.client_base = ip("198.51.100.101");
  dns.client_port_base = 20000;
  dns.payload_bytes = 32;
  dns.start_us = kSampleStartUs + 5;
  dns.gap_us = 30;
  append(all, pktgen::makeTraffic(dns));

  // (3) 10 IPv6 TCP flows x 4 packets to [2001:db8::10]:443. Offsets = 7 (mod 10).
  pktgen::TrafficSpec web6;
  web6.vip = ip("2001:db8::10");
  web6.vport = 443;
  web6.proto = LB_PROTO_TCP;
  web6.flows = 10;
  web6.packets_per_flow = 4;
  web6.client_base = ip("2001:db8:ff::1");
  web6.client_port_base = 30000;
  web6.payload_bytes = 64;
  web6.start_us = kSampleStartUs + 7;
  web6.gap_us = 50;
  append(all, pktgen::makeTraffic(web6));

  // Common addressing for the hand-made packets below.
  pktgen::PacketSpec base;
  base.src_mac = web.client_mac;
  base.dst_mac = web.lb_mac;
  base.src = ip("198.51.100.200");
  base.dst = ip("192.0.2.10");
  base.sport = 40000;
  base.dport = 80;
  base.tcp_flags = 0x02;  // SYN
  base.seq = 424242;

  // (4) Traffic for no service. Offsets = 3 (mod 10).
  {
    pktgen::PacketSpec ssh = base;
    ssh.dst = ip("192.0.2.99");
    ssh.dport = 22;
    ssh.ip_id = 1;
    all.push_back(at(103, pktgen::build(ssh)));
    ssh.ip_id = 2;  // SYN retransmission
    all.push_back(at(1103, pktgen::build(ssh)));

    all.push_back(at(303, arpRequest(base.src_mac, base.src, ip("192.0.2.10"))));

    pktgen::PacketSpec ping = base;
    ping.ip_id = 3;
    all.push_back(at(503, icmpEcho(ping)));

    pktgen::PacketSpec other_port = base;  // the web VIP, but a port without a service
    other_port.dport = 8080;
    other_port.ip_id = 4;
    all.push_back(at(703, pktgen::build(other_port)));

    pktgen::PacketSpec udp = base;  // the web VIP, but UDP
    udp.proto = LB_PROTO_UDP;
    udp.dport = 53;
    udp.ip_id = 5;
    udp.payload = pktgen::Bytes(16, 0x5A);
    all.push_back(at(1503, pktgen::build(udp)));
  }

  // (5) Malformed frames. Offsets = 1 (mod 10).
  {
    pktgen::PacketSpec p = base;
    p.ip_id = 6;
    pktgen::Bytes truncated = pktgen::build(p);
    truncated.resize(14 + 10);  // IPv4 header cut after 10 bytes
    all.push_back(at(251, std::move(truncated)));

    p.ip_id = 7;
    pktgen::Bytes short_ihl = pktgen::build(p);
    short_ihl[14] = 0x44;  // version 4, IHL 4 (< 5): invalid
    short_ihl[14 + 10] = 0;
    short_ihl[14 + 11] = 0;
    const uint16_t csum = static_cast<uint16_t>(
        ~pktgen::onesSum(std::span<const uint8_t>(short_ihl).subspan(14, 20)));
    short_ihl[14 + 10] = static_cast<uint8_t>(csum >> 8);
    short_ihl[14 + 11] = static_cast<uint8_t>(csum);
    all.push_back(at(1251, std::move(short_ihl)));
  }

  // (6) First fragment (MF set, offset 0) of a TCP segment to the web service. Offset = 9 (mod 10).
  {
    pktgen::PacketSpec frag = base;
    frag.sport = 40001;
    frag.tcp_flags = 0x18;  // ACK|PSH
    frag.ack = 1;
    frag.ip_id = 0x1234;
    frag.more_fragments = true;
    frag.payload = pktgen::Bytes(64, 0xAB);
    all.push_back(at(809, pktgen::build(frag)));
  }

  std::stable_sort(all.begin(), all.end(),
                   [](const PcapRecord& a, const PcapRecord& b) { return a.ts_us < b.ts_us; });
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sluice-pcapgen: write synthetic client traffic toward a VIP to a pcap file"};
  std::string out;
  bool sample = false;
  std::string vip;
  uint16_t port = 80;
  std::string proto = "tcp";
  uint32_t flows = 100;
  uint32_t packets_per_flow = 4;
  uint32_t payload = 64;
  std::string client_base;
  uint16_t client_port_base = 10000;
  uint64_t start_us = 1700000000ull * 1000000ull;
  uint64_t gap_us = 10;
  bool sequential = false;

  app.add_option("--out", out, "Output pcap file")->required();
  app.add_flag("--sample", sample,
               "Write the repository's sample capture (mixed services, noise, malformed frames); "
               "the traffic options are ignored");
  app.add_option("--vip", vip, "VIP address (IPv4 or IPv6)");
  app.add_option("--port", port, "VIP port")->capture_default_str();
  app.add_option("--proto", proto, "tcp or udp")
      ->check(CLI::IsMember({"tcp", "udp"}))
      ->capture_default_str();
  app.add_option("--flows", flows, "Number of flows")->capture_default_str();
  app.add_option("--packets-per-flow", packets_per_flow,
                 "Packets per flow (TCP: SYN, data..., FIN)")
      ->capture_default_str();
  app.add_option("--payload", payload, "Payload bytes per data packet")
      ->check(CLI::Range(0u, 9000u))
      ->capture_default_str();
  app.add_option("--client-base", client_base,
                 "First client address (default 198.51.100.1 or 2001:db8:ff::1)");
  app.add_option("--client-port-base", client_port_base, "First client port")
      ->capture_default_str();
  app.add_option("--start-us", start_us, "Timestamp of the first packet (us since the epoch)")
      ->capture_default_str();
  app.add_option("--gap-us", gap_us, "Time between packets (us)")->capture_default_str();
  app.add_flag("--sequential", sequential, "Emit flow after flow instead of round-robin");
  CLI11_PARSE(app, argc, argv);

  try {
    std::vector<pktgen::PcapRecord> records;
    if (sample) {
      records = sampleCapture();
    } else {
      if (vip.empty()) {
        fmt::print(stderr, "sluice-pcapgen: --vip is required (or use --sample)\n");
        return 2;
      }
      pktgen::TrafficSpec spec;
      const auto vip_addr = sluice::IpAddress::parse(vip);
      if (!vip_addr) {
        fmt::print(stderr, "sluice-pcapgen: bad --vip address '{}'\n", vip);
        return 2;
      }
      spec.vip = *vip_addr;
      if (!client_base.empty()) {
        const auto base = sluice::IpAddress::parse(client_base);
        if (!base || base->family != vip_addr->family) {
          fmt::print(stderr,
                     "sluice-pcapgen: bad --client-base '{}' (must be an address of the VIP's "
                     "family)\n",
                     client_base);
          return 2;
        }
        spec.client_base = *base;
      }
      spec.vport = port;
      spec.proto = static_cast<uint8_t>(*sluice::parseProtocol(proto));
      spec.flows = flows;
      spec.packets_per_flow = packets_per_flow;
      spec.payload_bytes = payload;
      spec.client_port_base = client_port_base;
      spec.start_us = start_us;
      spec.gap_us = gap_us;
      spec.interleave = !sequential;
      records = pktgen::makeTraffic(spec);
    }
    pktgen::writePcap(out, records);
    fmt::print("wrote {} packets to {}\n", records.size(), out);
  } catch (const std::exception& e) {
    fmt::print(stderr, "sluice-pcapgen: {}\n", e.what());
    return 1;
  }
  return 0;
}
