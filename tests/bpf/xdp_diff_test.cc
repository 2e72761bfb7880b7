// One behaviour, two paths: the same generated captures through `sluiced replay` on the DPDK
// pipeline and on the XDP program (BPF_PROG_TEST_RUN) must give the same output packets, byte for
// byte and in the same order, the same backend for every flow and the same drops by reason.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "common/lb_abi.h"
#include "common/net.h"
#include "control/config.h"
#include "tests/support/fixtures.h"
#include "tests/support/run.h"
#include "tools/pktgen/packet_builder.h"
#include "tools/pktgen/pcap_io.h"
#include "tools/pktgen/traffic.h"

namespace {

using json = nlohmann::json;
using pktgen::Bytes;
using pktgen::PacketSpec;
using pktgen::PcapRecord;
using sluice::IpAddress;
using sluice::MacAddress;
using testsupport::ip;
using testsupport::mac;

constexpr uint64_t kStartUs = 1700000000ull * 1'000'000ull;

/**
 * The fixture's three services, with the timeouts the late packets of the capture rely on (a UDP
 * flow idle for longer than udp, a SYN after FIN + tcp_fin), and one more service whose only
 * backend is drained.
 */
std::string diffConfigText() {
  sluice::Config c = testsupport::threeServices();
  c.timeouts.tcp_s = 900;
  c.timeouts.tcp_fin_s = 10;
  c.timeouts.udp_s = 300;
  sluice::ServiceConfig drained;
  drained.name = "drained";
  drained.vip = ip("192.0.2.30");
  drained.port = 80;
  drained.protocol = sluice::Protocol::kUdp;
  drained.forwarding = sluice::Forwarding::kDr;
  sluice::BackendConfig b;
  b.address = ip("10.0.3.1");
  b.port = 80;
  b.mac = mac("02:00:00:00:07:01");
  b.weight = 0;
  drained.backends.push_back(b);
  c.services.push_back(drained);
  return testsupport::configText(c);
}

/** Client traffic to every service, NAT replies, malformed frames and traffic for nothing. */
std::vector<PcapRecord> capture() {
  std::vector<PcapRecord> all;
  auto add = [&all](std::vector<PcapRecord> part) {
    all.insert(all.end(), part.begin(), part.end());
  };
  pktgen::TrafficSpec web;
  web.vip = ip("192.0.2.10");
  web.flows = 300;
  web.packets_per_flow = 4;
  add(pktgen::makeTraffic(web));
  pktgen::TrafficSpec dns;
  dns.vip = ip("192.0.2.53");
  dns.vport = 53;
  dns.proto = LB_PROTO_UDP;
  dns.flows = 200;
  dns.packets_per_flow = 2;
  dns.client_base = ip("203.0.113.1");
  dns.start_us = kStartUs + 1;
  add(pktgen::makeTraffic(dns));
  pktgen::TrafficSpec web6;
  web6.vip = ip("2001:db8::10");
  web6.vport = 443;
  web6.flows = 100;
  web6.packets_per_flow = 3;
  web6.start_us = kStartUs + 2;
  add(pktgen::makeTraffic(web6));
  pktgen::TrafficSpec drained;
  drained.vip = ip("192.0.2.30");
  drained.proto = LB_PROTO_UDP;
  drained.flows = 5;
  drained.packets_per_flow = 1;
  drained.start_us = kStartUs + 3;
  add(pktgen::makeTraffic(drained));
  std::stable_sort(all.begin(), all.end(),
                   [](const PcapRecord& a, const PcapRecord& b) { return a.ts_us < b.ts_us; });

  uint64_t t = all.back().ts_us + 1000;
  // NAT replies from both DNS backends and an IPv6 backend.
  for (uint32_t i = 0; i < 40; ++i) {
    PacketSpec r;
    r.src_mac = mac(i % 2 ? "02:00:00:00:02:21" : "02:00:00:00:02:22");
    r.dst_mac = mac("02:00:00:00:00:bb");
    r.src = ip(i % 2 ? "10.0.1.21" : "10.0.1.22");
    r.dst = IpAddress::v4(0xcb007101 + i);
    r.proto = LB_PROTO_UDP;
    r.sport = 5353;
    r.dport = static_cast<uint16_t>(10000 + i);
    r.payload = Bytes(30 + i, static_cast<uint8_t>(i));
    all.push_back({t++, pktgen::build(r)});
  }
  for (uint32_t i = 0; i < 10; ++i) {
    PacketSpec r;
    r.src = ip("2001:db8:1::12");
    r.dst = ip("2001:db8:ff::5");
    r.proto = LB_PROTO_TCP;
    r.sport = 8443;
    r.dport = static_cast<uint16_t>(30000 + i);
    r.tcp_flags = 0x18;
    r.payload = Bytes(100, 0x5a);
    all.push_back({t++, pktgen::build(r)});
  }
  // Malformed and foreign frames.
  PacketSpec base;
  base.src = ip("198.51.100.7");
  base.dst = ip("192.0.2.10");
  base.sport = 4444;
  Bytes good = pktgen::build(base);
  all.push_back({t++, Bytes(good.begin(), good.begin() + 10)});              // truncated Ethernet
  all.push_back({t++, Bytes(good.begin(), good.begin() + 14 + 12)});         // truncated IPv4
  Bytes ihl = good;
  ihl[14] = 0x44;  // IHL 4
  all.push_back({t++, ihl});
  Bytes longer = good;
  longer[16] = 0x0f;  // total length far past the frame
  all.push_back({t++, longer});
  Bytes doff = good;
  doff[14 + 20 + 12] = 0x30;  // TCP data offset 3
  all.push_back({t++, doff});
  PacketSpec frag = base;
  frag.more_fragments = true;
  all.push_back({t++, pktgen::build(frag)});
  PacketSpec other = base;
  other.dst = ip("192.0.2.99");
  all.push_back({t++, pktgen::build(other)});  // no service
  Bytes arp(42, 0);
  arp[12] = 0x08;
  arp[13] = 0x06;
  all.push_back({t++, arp});
  // Late packets: a UDP flow after its idle timeout, a TCP SYN after FIN + linger.
  PacketSpec late;
  late.src = ip("203.0.113.1");
  late.dst = ip("192.0.2.53");
  late.proto = LB_PROTO_UDP;
  late.sport = 10000;
  late.dport = 53;
  late.payload = Bytes(12, 1);
  all.push_back({t + 400'000'000ull, pktgen::build(late)});
  return all;
}

struct Replay {
  testsupport::RunResult run;
  json report;
  std::vector<PcapRecord> out;
};

Replay replay(const testsupport::TempDir& dir, const std::string& dataplane,
              const std::vector<PcapRecord>& in) {
  const std::string in_path = dir.file("in.pcap");
  const std::string cfg = dir.file("sluice.toml");
  pktgen::writePcap(in_path, in);
  testsupport::writeFile(cfg, diffConfigText());
  Replay r;
  const std::string out_path = dir.file(dataplane + "-out.pcap");
  r.run = testsupport::runProgram(
      SLUICED_PATH,
      {"replay", "--config", cfg, "--in", in_path, "--out", out_path, "--json", "--flows",
       "--dataplane", dataplane},
      dir.path());
  if (r.run.status == 0) {
    r.report = json::parse(r.run.out);
    r.out = pktgen::readPcap(out_path);
  }
  return r;
}

TEST(XdpDifferential, SameCaptureSameOutputBothPaths) {
  testsupport::TempDir dir("sluice-xdp-diff");
  const std::vector<PcapRecord> in = capture();
  const Replay dpdk = replay(dir, "dpdk", in);
  ASSERT_EQ(dpdk.run.status, 0) << dpdk.run.describe();
  const Replay xdp = replay(dir, "xdp", in);
  if (xdp.run.status != 0 &&
      xdp.run.err.find("built without the XDP data path") != std::string::npos) {
    GTEST_SKIP() << "sluiced was built without the XDP data path";
  }
  ASSERT_EQ(xdp.run.status, 0) << xdp.run.describe();

  const json& dt = dpdk.report.at("total");
  const json& xt = xdp.report.at("total");
  EXPECT_EQ(xt.at("packets_in"), dt.at("packets_in"));
  EXPECT_EQ(xt.at("packets_out"), dt.at("packets_out"));
  EXPECT_EQ(xt.at("drops"), dt.at("drops"))
      << "dpdk " << dt.at("drops").dump() << "\nxdp  " << xt.at("drops").dump();
  // Every forwarded packet, byte for byte and in order.
  ASSERT_EQ(xdp.out.size(), dpdk.out.size());
  size_t differing = 0;
  for (size_t i = 0; i < dpdk.out.size(); ++i) {
    if (xdp.out[i].data != dpdk.out[i].data) {
      ADD_FAILURE_AT(__FILE__, __LINE__) << "output packet " << i << " differs";
      if (++differing > 10) {
        break;
      }
    }
  }
  // The same backend for every flow and the same per-service and per-backend counts.
  EXPECT_EQ(xdp.report.at("services"), dpdk.report.at("services"))
      << "dpdk " << dpdk.report.at("services").dump() << "\nxdp  "
      << xdp.report.at("services").dump();
  auto flowMap = [](const json& report) {
    std::map<std::string, std::string> m;
    for (const json& f : report.at("flow_list")) {
      m[f.at("protocol").get<std::string>() + " " + f.at("client").get<std::string>() + " > " +
        f.at("vip").get<std::string>() + " " + f.at("port").dump()] =
          f.at("backend").get<std::string>();
    }
    return m;
  };
  EXPECT_EQ(flowMap(xdp.report), flowMap(dpdk.report));
  EXPECT_GT(dpdk.out.size(), in.size() / 2);
  const uint64_t replies = dpdk.report.at("services")[1].at("reply_packets").get<uint64_t>();
  EXPECT_EQ(replies, 40u);
}

}  // namespace
