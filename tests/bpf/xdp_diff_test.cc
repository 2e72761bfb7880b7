// One behaviour, two paths: the same generated captures through `sluiced replay` on the DPDK
// pipeline and on the XDP program (BPF_PROG_TEST_RUN) must give the same output packets, byte for
// byte and in the same order, the same backend for every flow and the same drops by reason.
//
// And in process (XdpHost below), table-driven fixtures of what a host answers itself (ARP,
// Neighbour Solicitations, echo requests), its own traffic, frames for other MACs, rescheduling
// of a down backend's flows, per-family NAT gateways and ICMP errors about a flow sent on to its
// backend (XdpIcmpError) or from behind NAT to its client (XdpIcmpFromNat): each frame through
// the DPDK pipeline
// (src/dataplane/pipeline.h on a byte buffer, trimmed as the worker trims) and through the loaded
// XDP program, with the expected action, counters and output bytes. The expected answers are
// built from scratch by tools/pktgen, checksums included, so they check both paths against an
// independent computation and not only against each other.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "common/lb_abi.h"
#include "common/net.h"
#include "control/config.h"
#include "common/snapshot.h"
#include "sluice_config.h"
#if SLUICE_HAS_XDP
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include "control/snapshot_builder.h"
#include "dataplane/pipeline.h"
#include "xdp/xdp_dataplane.h"
#endif
#include "tests/support/fixtures.h"
#include "tests/support/program_maps.h"
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
constexpr uint32_t kSpoofedReplies = 6;  // capture(): NAT replies not from their backend's side

/**
 * The fixture's three services, with the timeouts the late packets of the capture rely on (a UDP
 * flow idle for longer than udp, a SYN after FIN + tcp_fin), one more service whose only
 * backend is drained, and Sluice's own addresses (answered for ARP/ND, their traffic passed).
 */
std::string diffConfigText() {
  sluice::Config c = testsupport::threeServices();
  c.dataplane.addresses = {*sluice::IpPrefix::parse("192.0.2.1/24"),
                           *sluice::IpPrefix::parse("2001:db8::1/64")};
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
    r.src_mac = mac("02:00:00:00:03:12");  // its next hop: the backend's configured MAC
    r.dst_mac = mac("02:00:00:00:00:bb");
    r.src = ip("2001:db8:1::12");
    r.dst = ip("2001:db8:ff::5");
    r.proto = LB_PROTO_TCP;
    r.sport = 8443;
    r.dport = static_cast<uint16_t>(30000 + i);
    r.tcp_flags = 0x18;
    r.payload = Bytes(100, 0x5a);
    all.push_back({t++, pktgen::build(r)});
  }
  // Spoofed NAT replies: a backend's address and port, but not from its next hop (from the
  // clients' side, from the other backend): dropped as nat_reply_mac by both.
  for (uint32_t i = 0; i < kSpoofedReplies; ++i) {
    PacketSpec r;
    r.src_mac = mac(i % 2 ? "02:00:00:00:00:aa" : "02:00:00:00:02:22");
    r.dst_mac = mac("02:00:00:00:00:bb");
    r.src = i < 3 ? ip("10.0.1.21") : ip("2001:db8:1::11");
    r.dst = i < 3 ? ip("198.51.100.99") : ip("2001:db8:ff::99");
    r.proto = i < 3 ? LB_PROTO_UDP : LB_PROTO_TCP;
    r.sport = i < 3 ? 5353 : 8443;
    r.dport = static_cast<uint16_t>(50000 + i);
    r.payload = Bytes(64, 0x99);
    all.push_back({t++, pktgen::build(r)});
  }
  // A dns backend's port unreachable about a client's datagram to it: from the backend's MAC
  // sent to the client from the VIP, from another MAC dropped as a spoofed reply would be.
  for (const char* from : {"02:00:00:00:02:21", "02:00:00:00:00:aa"}) {
    PacketSpec sent;
    sent.src = ip("203.0.113.80");
    sent.dst = ip("10.0.1.21");
    sent.proto = LB_PROTO_UDP;
    sent.sport = 40080;
    sent.dport = 5353;
    sent.payload = Bytes(40, 0x80);
    PacketSpec o;
    o.src_mac = mac(from);
    o.dst_mac = mac("02:00:00:00:00:bb");
    o.src = sent.dst;
    o.dst = sent.src;
    all.push_back({t++, pktgen::buildIcmpError(o, 3, 3, 0, sent, 548)});
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
  // What the host answers itself, and its own traffic (the captures' MACs are another host's:
  // both replays take every frame).
  // 192.0.2.77 is nobody's: to the kernel.
  for (const IpAddress& target :
       {ip("192.0.2.10"), ip("192.0.2.53"), ip("192.0.2.1"), ip("192.0.2.77")}) {
    pktgen::ArpSpec a;
    a.sender = ip("192.0.2.200");
    a.target = target;
    all.push_back({t++, pktgen::buildArp(a)});
    a.sender = target;  // gratuitous: to the kernel
    all.push_back({t++, pktgen::buildArp(a)});
  }
  for (const IpAddress& target : {ip("2001:db8::10"), ip("2001:db8::1"), ip("2001:db8::77")}) {
    PacketSpec ns;
    ns.src = ip("2001:db8::200");
    ns.dst = pktgen::solicitedNode(target);
    ns.dst_mac = pktgen::multicastMac(ns.dst);
    ns.ttl = 255;
    all.push_back({t++, pktgen::buildNeighbourSolicit(ns, target)});
    all.push_back({t++, pktgen::buildNeighbourSolicit(ns, target, false)});  // no option
    ns.src = ip("::");
    all.push_back({t++, pktgen::buildNeighbourSolicit(ns, target, false)});  // DAD
  }
  const std::vector<std::pair<IpAddress, IpAddress>> pinged = {
      {ip("198.51.100.7"), ip("192.0.2.10")}, {ip("2001:db8:ff::7"), ip("2001:db8::10")},
      {ip("198.51.100.7"), ip("192.0.2.99")}, {ip("198.51.100.7"), ip("192.0.2.1")},
      {ip("2001:db8:ff::7"), ip("2001:db8::1")}};
  for (const auto& [from, to] : pinged) {
    PacketSpec e;
    e.src = from;
    e.dst = to;
    all.push_back({t++, pktgen::buildEchoRequest(e, 77, static_cast<uint16_t>(t), Bytes(56, 7))});
  }
  // ICMP errors about replies of DR and NAT services, IPv4 and IPv6 (forwarded to the backend),
  // and one quoting a port that is no service (to the kernel).
  const std::vector<std::tuple<IpAddress, uint16_t, uint8_t, IpAddress>> quoted = {
      {ip("192.0.2.10"), 80, LB_PROTO_TCP, ip("198.51.100.70")},
      {ip("192.0.2.53"), 53, LB_PROTO_UDP, ip("203.0.113.70")},
      {ip("2001:db8::10"), 443, LB_PROTO_TCP, ip("2001:db8:ff::70")},
      {ip("192.0.2.10"), 81, LB_PROTO_TCP, ip("198.51.100.70")}};
  for (const auto& [vip, vport, proto, client] : quoted) {
    PacketSpec r;
    r.src = vip;
    r.dst = client;
    r.proto = proto;
    r.sport = vport;
    r.dport = 33333;
    r.payload = Bytes(1400, 0x21);
    PacketSpec o;
    o.src = vip.isV4() ? ip("198.51.100.254") : ip("2001:db8:ff::fe");
    o.dst = vip;
    all.push_back({t++, vip.isV4() ? pktgen::buildIcmpError(o, 3, 4, 1300, r, 548)
                                   : pktgen::buildIcmpError(o, 2, 0, 1280, r, 1232)});
  }
  PacketSpec ssh = base;
  ssh.dst = ip("192.0.2.1");
  ssh.dport = 22;
  all.push_back({t++, pktgen::build(ssh)});
  // Jumbo frames, one segment chain on DPDK (net_pcap's 2 KiB mbufs), a multi-buffer frame on XDP
  // (xdp.frags): 9000 bytes to a service of each kind and family, and 16,000. (net_pcap writes at
  // most 16,128 bytes of a segment chain, RTE_ETHER_MAX_JUMBO_FRAME_LEN, so the largest IP
  // packets are compared in process: XdpHost.JumboAndLargestFramesAreForwardedAlikeOnBothPaths.)
  for (const auto& [dst, dport, proto, size] :
       std::vector<std::tuple<IpAddress, uint16_t, uint8_t, size_t>>{
           {ip("192.0.2.10"), 80, LB_PROTO_TCP, 9000},     // DR
           {ip("192.0.2.53"), 53, LB_PROTO_UDP, 9000},     // NAT
           {ip("2001:db8::10"), 443, LB_PROTO_TCP, 9000},  // NAT, IPv6
           {ip("192.0.2.10"), 80, LB_PROTO_TCP, 16000}}) {
    PacketSpec j;
    j.src = dst.isV4() ? ip("198.51.100.201") : ip("2001:db8:ff::201");
    j.dst = dst;
    j.proto = proto;
    j.sport = static_cast<uint16_t>(5000 + size % 1000);
    j.dport = dport;
    j.tcp_flags = 0x18;
    const size_t headers = 14 + (dst.isV4() ? 20 : 40) + (proto == LB_PROTO_TCP ? 20 : 8);
    j.payload = Bytes(size - headers, static_cast<uint8_t>(size));
    all.push_back({t++, pktgen::build(j)});
  }
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
  EXPECT_EQ(xt.at("passed"), dt.at("passed"));
  EXPECT_EQ(xt.at("answered"), dt.at("answered"));
  // ARP requests for the two IPv4 VIPs and the local address, the NSs with an option for the
  // IPv6 VIP and the local address, an echo request to a VIP of each family.
  EXPECT_EQ(dt.at("answered").get<uint64_t>(), 7u);
  // The three ICMP errors about a flow of a service and the one from behind NAT from its
  // backend (the outputs below compare their bytes).
  EXPECT_EQ(dt.at("icmp_forwarded").get<uint64_t>(), 4u);
  // The spoofed replies and the spoofed error from behind NAT, on both (drops compared above).
  EXPECT_EQ(dt.at("drops").at("nat_reply_mac").get<uint64_t>(), kSpoofedReplies + 1u);
  // Every forwarded packet, byte for byte and in order.
  ASSERT_EQ(xdp.out.size(), dpdk.out.size());
  size_t differing = 0;
  for (size_t i = 0; i < dpdk.out.size(); ++i) {
    if (xdp.out[i].data != dpdk.out[i].data) {
      ADD_FAILURE_AT(__FILE__, __LINE__)
          << "output packet " << i << " differs: dpdk " << dpdk.out[i].data.size()
          << " bytes, xdp " << xdp.out[i].data.size() << " bytes";
      if (++differing > 10) {
        break;
      }
    }
  }
  // The same backend for every flow and the same per-service and per-backend counts, but for
  // the one difference the paths are allowed (docs/architecture.md): the DPDK worker's sweep
  // expires a few buckets per poll pass, the XDP table frees an expired entry only when a
  // packet meets it. After the late packet (400 s on) every flow of the generated traffic has
  // expired (web and web6 closed by a FIN, dns idle past udp), so the sweep of the passes after
  // it may remove some of them. Those, and only those, XDP may still hold: each must be such a
  // flow, on the same backend, and they account exactly for the differing counters.
  auto flowMap = [](const json& report) {
    std::map<std::string, json> m;
    for (const json& f : report.at("flow_list")) {
      m[f.at("protocol").get<std::string>() + " " + f.at("client").get<std::string>() + " > " +
        f.at("vip").get<std::string>() + " " + f.at("port").dump()] = f;
    }
    return m;
  };
  const std::map<std::string, json> xdp_flows = flowMap(xdp.report);
  const std::map<std::string, json> dpdk_flows = flowMap(dpdk.report);
  for (const auto& [key, f] : dpdk_flows) {
    ASSERT_TRUE(xdp_flows.contains(key)) << "only the DPDK path holds " << key;
    EXPECT_EQ(xdp_flows.at(key).at("backend"), f.at("backend")) << key;
  }
  json xdp_services = xdp.report.at("services");
  uint64_t swept = 0;
  for (const auto& [key, f] : xdp_flows) {
    if (dpdk_flows.contains(key)) {
      continue;
    }
    const std::string client = f.at("client").get<std::string>();
    const bool generated = f.at("service") == "web" || f.at("service") == "web6" ||
                           f.at("service") == "dns";
    EXPECT_TRUE(generated && client != "203.0.113.1:10000" &&
                client.rfind("198.51.100.201:", 0) != 0 && client.rfind("[2001:db8:ff::201]", 0) != 0)
        << "only the XDP path holds " << key << ", which is not an expired flow";
    ++swept;
    for (json& svc : xdp_services) {
      if (svc.at("name") != f.at("service")) {
        continue;
      }
      svc["active_flows"] = svc.at("active_flows").get<uint64_t>() - 1;
      for (json& b : svc["backends"]) {
        if (b.at("address").get<std::string>() + ":" + b.at("port").dump() == f.at("backend")) {
          b["active_flows"] = b.at("active_flows").get<uint64_t>() - 1;
        }
      }
    }
  }
  EXPECT_EQ(xdp_services, dpdk.report.at("services"))
      << "dpdk " << dpdk.report.at("services").dump() << "\nxdp  " << xdp_services.dump();
  EXPECT_EQ(xt.at("flows_created"), dt.at("flows_created"));
  EXPECT_EQ(xt.at("flows_active").get<uint64_t>() - swept, dt.at("flows_active").get<uint64_t>());
  EXPECT_EQ(xt.at("flows_expired").get<uint64_t>() + swept, dt.at("flows_expired").get<uint64_t>());
  EXPECT_GT(dpdk.out.size(), in.size() / 2);
  // dns: 40 replies and the error from behind NAT; web6: 10 replies.
  const uint64_t replies = dpdk.report.at("services")[1].at("reply_packets").get<uint64_t>();
  EXPECT_EQ(replies, 41u);
  EXPECT_EQ(dpdk.report.at("services")[2].at("reply_packets").get<uint64_t>(), 10u);
}

#if SLUICE_HAS_XDP
// ---------------------------------------------------------------------------------------------
// In process: the DPDK pipeline and the loaded XDP program, frame by frame.

using sluice::BackendRef;
using sluice::DownPolicy;
using sluice::Pipeline;
using sluice::PacketRef;
using sluice::PortContext;
using sluice::Snapshot;
using sluice::SnapshotPtr;
using sluice::XdpDataplane;
using sluice::XdpError;

constexpr uint64_t kSec = 1'000'000'000ull;
constexpr uint64_t kT0 = 1000 * kSec;
constexpr uint32_t kFlowCapacity = 1u << 12;

const MacAddress kPortMac = mac("02:00:00:00:00:bb");
const MacAddress kOtherHostMac = mac("02:00:00:00:00:99");  // another balancer on the segment
const MacAddress kGateway4Mac = mac("02:00:00:00:00:f4");
const MacAddress kGateway6Mac = mac("02:00:00:00:00:f6");
const MacAddress kPeerMac = mac("02:00:00:00:00:aa");       // an on-link host asking
const IpAddress kLocal4 = ip("198.51.100.2");
const IpAddress kLocal6 = ip("2001:db8:b::2");
const IpAddress kGateway4 = ip("198.51.100.1");
const IpAddress kGateway6 = ip("2001:db8:b::1");
const IpAddress kPeer4 = ip("198.51.100.7");
const IpAddress kPeer6 = ip("2001:db8:b::7");
const IpAddress kVip4 = ip("192.0.2.10");   // web, DR
const IpAddress kVip6 = ip("2001:db8::10");  // web6, NAT

/**
 * The three services with Sluice's own addresses and per-family gateways on 198.51.100.0/24 and
 * 2001:db8:b::/64, web rescheduling the flows of a down backend.
 */
sluice::Config hostConfig(DownPolicy web_policy = DownPolicy::kReschedule) {
  sluice::Config c = testsupport::threeServices();
  c.dataplane.flow_table_size = kFlowCapacity;
  c.dataplane.gateway_mac.reset();
  c.dataplane.addresses = {*sluice::IpPrefix::parse("198.51.100.2/24"),
                           *sluice::IpPrefix::parse("2001:db8:b::2/64")};
  c.dataplane.gateways = {kGateway4, kGateway6};
  testsupport::service(c, "web").on_backend_down = web_policy;
  sluice::validateConfig(c, "test");
  return c;
}

/**
 * hostConfig()'s snapshot with the gateways resolved (as the daemon's neighbour table would).
 * @param gateway6 whether the IPv6 gateway's MAC is known (else NAT replies use the learned one)
 * @param down a backend whose health check failed
 * @param web_policy what web's flows do when their backend is down
 */
SnapshotPtr hostSnapshot(sluice::IdRegistry& ids, bool gateway6 = true,
                         const BackendRef* down = nullptr,
                         DownPolicy web_policy = DownPolicy::kReschedule) {
  sluice::RuntimeState rt;
  rt.neighbours[kGateway4] = kGateway4Mac;
  if (gateway6) {
    rt.neighbours[kGateway6] = kGateway6Mac;
  }
  if (down != nullptr) {
    rt.health[*down].up = false;
  }
  return sluice::buildSnapshot(hostConfig(web_policy), ids, 1, nullptr, &rt);
}

enum class Action { kTx, kPass, kDrop };

const char* actionName(Action a) {
  return a == Action::kTx ? "tx" : a == Action::kPass ? "pass" : "drop";
}

struct Outcome {
  Action action = Action::kDrop;
  Bytes frame;  // as sent, for kTx
};

/** Every counter both paths keep per worker / CPU. */
struct Counts {
  uint64_t rx = 0, tx = 0, passed = 0, answered = 0, rescheduled = 0, icmp_forwarded = 0;
  std::array<uint64_t, LB_DROP__COUNT> drops{};
  bool operator==(const Counts&) const = default;
  std::string str() const {
    std::string s = fmt::format("rx {} tx {} passed {} answered {} rescheduled {} icmp {} drops",
                                rx, tx, passed, answered, rescheduled, icmp_forwarded);
    for (int r = 0; r < LB_DROP__COUNT; ++r) {
      if (drops[r] != 0) {
        s += fmt::format(" {}={}", lb_drop_reason_name(r), drops[r]);
      }
    }
    return s;
  }
};

void PrintTo(const Counts& c, std::ostream* os) { *os << c.str(); }

/** The reference: one DPDK worker on byte buffers, with the worker's trim of answered frames. */
class DpdkPath {
 public:
  DpdkPath() { std::copy(kPortMac.bytes.begin(), kPortMac.bytes.end(), port_.mac); }

  Outcome run(const Bytes& in, const Snapshot& snap, bool accept_any, uint64_t now) {
    port_.accept_any_mac = accept_any;
    Outcome o;
    o.frame = in;
    PacketRef p;
    p.data = o.frame.data();
    p.data_len = static_cast<uint32_t>(o.frame.size());
    p.pkt_len = p.data_len;
    p.now_ns = now;
    pipe_.process(std::span<PacketRef>(&p, 1), snap, port_);
    if (p.transmit) {
      o.action = Action::kTx;
      if (p.new_len != 0 && p.new_len < o.frame.size()) {
        o.frame.resize(p.new_len);  // LcoreWorker: rte_pktmbuf_trim
      }
      ++pipe_.counters().tx_packets;  // the worker counts what the port takes
    } else {
      o.action = p.to_kernel ? Action::kPass : Action::kDrop;
      o.frame.clear();
    }
    return o;
  }

  Counts counts() const {
    const sluice::WorkerCounters& c = pipe_.counters();
    Counts n;
    n.rx = c.rx_packets;
    n.tx = c.tx_packets;
    n.passed = c.passed;
    n.answered = c.answered;
    n.rescheduled = c.flows_rescheduled;
    n.icmp_forwarded = c.icmp_forwarded;
    for (int r = 0; r < LB_DROP__COUNT; ++r) {
      n.drops[r] = c.drops[r];
    }
    return n;
  }

  uint64_t flowsCreated() const { return pipe_.flows().stats().inserted; }
  uint64_t backendPackets(uint32_t id) const { return pipe_.backendCounters()[id].packets; }
  uint64_t backendReplyPackets(uint32_t id) const {
    return pipe_.backendCounters()[id].reply_packets;
  }

 private:
  Pipeline pipe_{kFlowCapacity, sluice::kMaxBackendIds};
  PortContext port_;
};

/** The loaded program, with the snapshot it was last given. */
class XdpPath {
 public:
  explicit XdpPath(std::unique_ptr<XdpDataplane> xdp) : xdp_(std::move(xdp)) {
    xdp_->setPortMac(kPortMac.bytes.data());
    cpu_counters_fd_ = mapOfProgram(xdp_->programFd(), "cpu_counters");
  }
  ~XdpPath() {
    if (cpu_counters_fd_ >= 0) {
      close(cpu_counters_fd_);
    }
  }
  XdpPath(const XdpPath&) = delete;
  XdpPath& operator=(const XdpPath&) = delete;

  Outcome run(const Bytes& in, const Snapshot& snap, bool accept_any, uint64_t now) {
    if (&snap != applied_) {
      xdp_->apply(snap);
      applied_ = &snap;
    }
    xdp_->setAcceptAnyMac(accept_any);
    xdp_->setClock(now);
    Outcome o;
    const int action = xdp_->run(in, o.frame);
    o.action = action == sluice::kXdpTx     ? Action::kTx
               : action == sluice::kXdpPass ? Action::kPass
                                            : Action::kDrop;
    if (o.action != Action::kTx) {
      o.frame.clear();
    }
    return o;
  }

  Counts counts(const Snapshot& snap) const {
    const sluice::WorkerTotals t = xdp_->totals(snap).all;
    Counts n;
    n.rx = t.rx_packets;
    n.tx = t.tx_packets;
    n.passed = t.passed;
    n.answered = t.answered;
    n.rescheduled = t.flows_rescheduled;
    n.icmp_forwarded = icmpForwarded();
    for (int r = 0; r < LB_DROP__COUNT; ++r) {
      n.drops[r] = t.drops[r];
    }
    return n;
  }

  uint64_t flowsCreated(const Snapshot& snap) const {
    return xdp_->totals(snap).all.flows_created;
  }
  uint64_t backendReplyPackets(const Snapshot& snap, uint32_t id) const {
    return xdp_->totals(snap).backends.at(id).reply_packets;
  }

 private:
  /** A map of a loaded program by name, opened (-1: none of that name). */
  static int mapOfProgram(int prog_fd, const std::string& name) {
    int found = -1;
    for (const testsupport::ProgramMap& m : testsupport::openProgramMaps(prog_fd)) {
      if (found < 0 && name == m.info.name) {
        found = m.fd;
      } else {
        close(m.fd);
      }
    }
    return found;
  }

  /**
   * icmp_forwarded summed over the CPUs, read from the program's counters map: the counter the
   * program keeps, whether or not XdpDataplane::totals() reports it yet.
   */
  uint64_t icmpForwarded() const {
    std::vector<lb_cpu_counters> cpus(static_cast<size_t>(libbpf_num_possible_cpus()));
    const uint32_t zero = 0;
    if (cpu_counters_fd_ < 0 ||
        bpf_map_lookup_elem(cpu_counters_fd_, &zero, cpus.data()) != 0) {
      ADD_FAILURE() << "cannot read the program's cpu_counters";
      return 0;
    }
    uint64_t n = 0;
    for (const lb_cpu_counters& c : cpus) {
      n += c.icmp_forwarded;
    }
    return n;
  }

  std::unique_ptr<XdpDataplane> xdp_;
  int cpu_counters_fd_ = -1;
  const Snapshot* applied_ = nullptr;
};

std::string hex(const Bytes& f) {
  std::string s;
  for (uint8_t b : f) {
    s += fmt::format("{:02x}", b);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Frames, and the answers expected for them (built from scratch, not by rewriting the request).

/** An ARP request "who has target? tell sender" from kPeerMac, broadcast. */
pktgen::ArpSpec arpRequest(const IpAddress& target, const IpAddress& sender = kPeer4) {
  pktgen::ArpSpec a;
  a.src_mac = kPeerMac;
  a.sender_mac = kPeerMac;
  a.sender = sender;
  a.target = target;
  return a;
}

/** The reply to request: "target is at kPortMac", to the requester's hardware address. */
Bytes arpReply(const pktgen::ArpSpec& request) {
  pktgen::ArpSpec r = request;
  r.dst_mac = request.sender_mac;
  r.src_mac = kPortMac;
  r.op = 2;
  r.sender_mac = kPortMac;
  r.sender = request.target;
  r.target_mac = request.sender_mac;
  r.target = request.sender;
  return pktgen::buildArp(r);
}

/** The IPv6 packet of a Neighbour Solicitation from kPeer6 for target, to its solicited-node group.
 */
PacketSpec solicitSpec(const IpAddress& target) {
  PacketSpec s;
  s.src_mac = kPeerMac;
  s.src = kPeer6;
  s.dst = pktgen::solicitedNode(target);
  s.dst_mac = pktgen::multicastMac(s.dst);
  s.ttl = 255;
  return s;
}

/**
 * The solicited advertisement for a solicitation with IPv6 packet `ns` (its VLAN tags kept):
 * target -> solicitor, flags S and O, a target link-layer address option with kPortMac.
 */
Bytes advertisement(const PacketSpec& ns, const IpAddress& target) {
  PacketSpec na;
  na.vlans = ns.vlans;
  na.src_mac = kPortMac;
  na.dst_mac = ns.src_mac;
  na.src = target;
  na.dst = ns.src;
  na.ttl = 255;
  Bytes body(target.bytes.begin(), target.bytes.end());
  body.push_back(2);  // target link-layer address
  body.push_back(1);
  body.insert(body.end(), kPortMac.bytes.begin(), kPortMac.bytes.end());
  return pktgen::buildIcmp(na, 136, 0, 0x60000000u, body);
}

/** An echo request from a peer (src) to dst; its id, sequence and data. */
PacketSpec echoSpec(const IpAddress& src, const IpAddress& dst) {
  PacketSpec e;
  e.src_mac = kGateway4Mac;
  e.dst_mac = kPortMac;
  e.src = src;
  e.dst = dst;
  e.ip_id = 0x1234;
  e.ttl = 57;
  return e;
}

const Bytes kEchoData = {'s', 'l', 'u', 'i', 'c', 'e', 0, 1, 2, 3, 0xfe, 0xff, 0x80};

/**
 * The echo reply to request: dst -> src, type 0 / 129, TTL 64, the same id, sequence, data. A
 * checksum that comes out 0x0000 from scratch (the rest of the message sums to -0) is sent as
 * 0xffff, as answerEcho() sends a computed 0x0000: the two verify alike there, and only 0xffff
 * does where the rest sums to +0 (EchoReplyOfAnAllZeroMessageHasAValidChecksum).
 */
Bytes echoReply(const PacketSpec& request, uint16_t id, uint16_t seq, const Bytes& data) {
  PacketSpec r = request;
  r.src_mac = kPortMac;
  r.dst_mac = request.src_mac;
  r.src = request.dst;
  r.dst = request.src;
  r.ttl = LB_REPLY_HOP_LIMIT;
  Bytes f = pktgen::buildIcmp(r, request.src.isV4() ? 0 : 129, 0, uint32_t{id} << 16 | seq, data);
  const auto icmp = pktgen::decodeIcmp(f);
  if (icmp && f[icmp->l4_offset + 2] == 0 && f[icmp->l4_offset + 3] == 0) {
    f[icmp->l4_offset + 2] = f[icmp->l4_offset + 3] = 0xff;
  }
  return f;
}

/**
 * An LLDP frame (IEEE 802.1AB) from kPeerMac to the nearest-bridge group: chassis ID and port ID
 * (MAC address subtypes), TTL 120 and the end TLV, padded to the Ethernet minimum.
 */
Bytes lldpFrame() {
  const MacAddress group = mac("01:80:c2:00:00:0e");
  Bytes f(group.bytes.begin(), group.bytes.end());
  f.insert(f.end(), kPeerMac.bytes.begin(), kPeerMac.bytes.end());
  f.insert(f.end(), {0x88, 0xcc});
  f.insert(f.end(), {0x02, 0x07, 4});  // chassis ID, 7 bytes: subtype MAC address
  f.insert(f.end(), kPeerMac.bytes.begin(), kPeerMac.bytes.end());
  f.insert(f.end(), {0x04, 0x07, 3});  // port ID, 7 bytes: subtype MAC address
  f.insert(f.end(), kPeerMac.bytes.begin(), kPeerMac.bytes.end());
  f.insert(f.end(), {0x06, 0x02, 0x00, 120});  // TTL 120 s
  f.insert(f.end(), {0x00, 0x00});             // end of LLDPDU
  f.resize(60, 0);
  return f;
}

/** A TCP packet from a peer to dst:dport. */
Bytes tcpTo(const IpAddress& src, const IpAddress& dst, uint16_t dport,
            const MacAddress& dst_mac = kPortMac) {
  PacketSpec t;
  t.src_mac = kGateway4Mac;
  t.dst_mac = dst_mac;
  t.src = src;
  t.dst = dst;
  t.sport = 40000;
  t.dport = dport;
  t.tcp_flags = 0x02;
  t.payload = Bytes(20, 0x42);
  return pktgen::build(t);
}

/** One frame, what both paths must do with it, and what it must leave as. */
struct HostCase {
  std::string description;
  Bytes input;
  Action action;
  std::optional<Bytes> output;  // the expected frame, for kTx (nullopt: not checked alone)
  int reason = -1;              // the drop reason counted (also for a pass: non_ip, no_service)
  bool answered = false;
  bool accept_any = false;      // the port takes frames for any MAC (replay)
};

std::vector<HostCase> hostCases() {
  std::vector<HostCase> cases;
  auto add = [&cases](HostCase c) { cases.push_back(std::move(c)); };

  // ARP.
  {
    const pktgen::ArpSpec a = arpRequest(kLocal4);
    add({"ARP request for a local address", pktgen::buildArp(a), Action::kTx, arpReply(a), -1,
         true});
  }
  {
    const pktgen::ArpSpec a = arpRequest(kVip4);
    add({"ARP request for a VIP", pktgen::buildArp(a), Action::kTx, arpReply(a), -1, true});
  }
  {
    pktgen::ArpSpec a = arpRequest(ip("192.0.2.53"));
    a.vlans = {100};
    a.min_frame = 64;  // padded with its tag to the Ethernet minimum: the padding stays
    add({"ARP request for a VIP, VLAN-tagged and padded", pktgen::buildArp(a), Action::kTx,
         arpReply(a), -1, true});
  }
  {
    pktgen::ArpSpec a = arpRequest(kLocal4);
    a.dst_mac = kPortMac;  // a unicast refresh of a cached entry
    add({"ARP request for a local address, unicast", pktgen::buildArp(a), Action::kTx,
         arpReply(a), -1, true});
  }
  add({"ARP request for another address", pktgen::buildArp(arpRequest(ip("198.51.100.77"))),
       Action::kPass, std::nullopt, LB_DROP_NON_IP});
  add({"gratuitous ARP for a local address (sender == target)",
       pktgen::buildArp(arpRequest(kLocal4, kLocal4)), Action::kPass, std::nullopt,
       LB_DROP_NON_IP});
  {
    const Bytes full = pktgen::buildArp(arpRequest(kVip4));
    add({"truncated ARP request for a VIP", Bytes(full.begin(), full.begin() + 14 + 27),
         Action::kPass, std::nullopt, LB_DROP_NON_IP});  // one byte short of its target
  }
  {
    pktgen::ArpSpec a = arpRequest(kLocal4);
    a.op = 2;
    add({"ARP reply about a local address", pktgen::buildArp(a), Action::kPass, std::nullopt,
         LB_DROP_NON_IP});
  }

  // Neighbour Solicitations.
  {
    const PacketSpec ns = solicitSpec(kLocal6);
    add({"NS for a local address", pktgen::buildNeighbourSolicit(ns, kLocal6), Action::kTx,
         advertisement(ns, kLocal6), -1, true});
  }
  {
    const PacketSpec ns = solicitSpec(kVip6);
    add({"NS for a VIP", pktgen::buildNeighbourSolicit(ns, kVip6), Action::kTx,
         advertisement(ns, kVip6), -1, true});
  }
  {
    PacketSpec ns = solicitSpec(kVip6);
    ns.vlans = {7, 300};
    add({"NS for a VIP, two VLAN tags", pktgen::buildNeighbourSolicit(ns, kVip6), Action::kTx,
         advertisement(ns, kVip6), -1, true});
  }
  {
    // A nonce option (type 14, RFC 3971) after the source address: the answer is shorter than
    // the solicitation, and so is a frame with a trailer past the IPv6 payload.
    const PacketSpec ns = solicitSpec(kVip6);
    Bytes f = pktgen::buildNeighbourSolicit(ns, kVip6);
    const Bytes nonce = {14, 1, 1, 2, 3, 4, 5, 6};
    f.insert(f.end(), nonce.begin(), nonce.end());
    f[14 + 5] = static_cast<uint8_t>(f[14 + 5] + 8);  // payload length
    // The solicitation's checksum does not matter to either path (the kernel would check it).
    add({"NS for a VIP with two options (cut to the advertisement)", f, Action::kTx,
         advertisement(ns, kVip6), -1, true});
    Bytes trailer = pktgen::buildNeighbourSolicit(ns, kVip6);
    trailer.insert(trailer.end(), 10, 0xee);
    add({"NS for a VIP with an Ethernet trailer", trailer, Action::kTx,
         advertisement(ns, kVip6), -1, true});
  }
  add({"NS for another address",
       pktgen::buildNeighbourSolicit(solicitSpec(kPeer6), ip("2001:db8:b::77")), Action::kPass,
       std::nullopt, LB_DROP_NO_SERVICE});
  {
    PacketSpec ns = solicitSpec(kLocal6);
    ns.src = ip("::");  // duplicate address detection: the kernel's business
    add({"NS for a local address from :: (DAD)",
         pktgen::buildNeighbourSolicit(ns, kLocal6, false), Action::kPass, std::nullopt,
         LB_DROP_NO_SERVICE});
  }
  {
    PacketSpec ns = solicitSpec(kVip6);
    add({"NS for a VIP without options", pktgen::buildNeighbourSolicit(ns, kVip6, false),
         Action::kPass, std::nullopt, LB_DROP_NO_SERVICE});
    ns.dst = kLocal6;  // a unicast reachability probe: the host's own traffic
    ns.dst_mac = kPortMac;
    add({"NS for a local address without options, unicast",
         pktgen::buildNeighbourSolicit(ns, kLocal6, false), Action::kPass, std::nullopt});
  }
  {
    PacketSpec ns = solicitSpec(kVip6);
    ns.ttl = 64;  // not from the link (RFC 4861 section 7.1.1)
    add({"NS for a VIP with hop limit 64", pktgen::buildNeighbourSolicit(ns, kVip6),
         Action::kPass, std::nullopt, LB_DROP_NO_SERVICE});
  }

  // Echo requests: a VIP answers, the host's own go to its kernel.
  {
    const PacketSpec e = echoSpec(ip("203.0.113.9"), kVip4);
    add({"echo request to a VIP", pktgen::buildEchoRequest(e, 0x4242, 7, kEchoData),
         Action::kTx, echoReply(e, 0x4242, 7, kEchoData), -1, true});
  }
  {
    // Identifier and sequence words that make the reply's checksum end on a carry, on 0x0000
    // (id 0xffff: the message sums to -0) and next to the all-zero message (see
    // EchoReplyOfAnAllZeroMessageHasAValidChecksum).
    for (const auto& [id, seq] : {std::pair<uint16_t, uint16_t>{0xf7ff, 0}, {0xffff, 0}, {0, 1},
                                  {0x0800, 0xffff}}) {
      const PacketSpec e = echoSpec(ip("203.0.113.10"), ip("192.0.2.53"));
      add({fmt::format("echo request to a VIP, id {:#06x} seq {:#06x}", id, seq),
           pktgen::buildEchoRequest(e, id, seq, {}), Action::kTx, echoReply(e, id, seq, {}), -1,
           true});
    }
  }
  {
    const PacketSpec e = echoSpec(ip("2001:db8:ff::9"), kVip6);
    add({"echo request (ICMPv6) to a VIP", pktgen::buildEchoRequest(e, 0x0101, 65535, kEchoData),
         Action::kTx, echoReply(e, 0x0101, 65535, kEchoData), -1, true});
  }
  {
    PacketSpec e = echoSpec(ip("2001:db8:ff::9"), kVip6);
    e.vlans = {42};
    e.ipv6_ext = {60};  // destination options: kept
    add({"echo request (ICMPv6) to a VIP, VLAN and destination options",
         pktgen::buildEchoRequest(e, 9, 9, kEchoData), Action::kTx, echoReply(e, 9, 9, kEchoData),
         -1, true});
  }
  add({"echo request to a local address",
       pktgen::buildEchoRequest(echoSpec(kPeer4, kLocal4), 1, 1, kEchoData), Action::kPass,
       std::nullopt});
  add({"echo request (ICMPv6) to a local address",
       pktgen::buildEchoRequest(echoSpec(kPeer6, kLocal6), 1, 1, kEchoData), Action::kPass,
       std::nullopt});
  add({"echo request to another address",
       pktgen::buildEchoRequest(echoSpec(kPeer4, ip("192.0.2.99")), 1, 1, kEchoData),
       Action::kPass, std::nullopt, LB_DROP_NO_SERVICE});
  add({"echo reply to a VIP", pktgen::buildIcmp(echoSpec(kPeer4, kVip4), 0, 0, 0x00010001),
       Action::kPass, std::nullopt, LB_DROP_NO_SERVICE});
  {
    PacketSpec e = echoSpec(kPeer4, kVip4);
    e.more_fragments = true;
    add({"first fragment of an echo request to a VIP", pktgen::buildEchoRequest(e, 1, 1),
         Action::kDrop, std::nullopt, LB_DROP_FRAGMENT});
  }

  // The host's own traffic.
  add({"TCP to a local address (SSH)", tcpTo(kPeer4, kLocal4, 22), Action::kPass, std::nullopt});
  add({"TCP to a local IPv6 address (BGP)", tcpTo(kPeer6, kLocal6, 179), Action::kPass,
       std::nullopt});
  {
    PacketSpec f;
    f.dst_mac = kPortMac;
    f.src = kPeer4;
    f.dst = kLocal4;
    f.proto = LB_PROTO_UDP;
    f.frag_offset = 100;
    f.payload = Bytes(16, 1);
    add({"fragment to a local address", pktgen::build(f), Action::kPass, std::nullopt});
  }
  add({"TCP to nothing", tcpTo(kPeer4, ip("192.0.2.99"), 80), Action::kPass, std::nullopt,
       LB_DROP_NO_SERVICE});

  // Frames for other MACs: flooded by a switch; replay takes them all.
  add({"TCP to a VIP for another host's MAC", tcpTo(kPeer4, kVip4, 80, kOtherHostMac),
       Action::kDrop, std::nullopt, LB_DROP_NOT_FOR_US});
  add({"TCP to a VIP for another host's MAC, any MAC accepted",
       tcpTo(kPeer4, kVip4, 80, kOtherHostMac), Action::kTx, std::nullopt, -1, false, true});
  // Any group address (the first byte's low bit) is taken as the port's, as a NIC's multicast
  // filter would pass it: the kernel filters the groups it has not joined.
  add({"TCP to a VIP for an IPv4 multicast MAC",
       tcpTo(kPeer4, kVip4, 80, mac("01:00:5e:00:00:01")), Action::kTx, std::nullopt});
  add({"TCP to a VIP for a 33:01 group MAC (not IPv6 multicast)",
       tcpTo(kPeer4, kVip4, 80, mac("33:01:00:00:00:01")), Action::kTx, std::nullopt});
  {
    // IPv4 multicast for the host's routing and discovery daemons: no service, to the kernel.
    PacketSpec mdns;
    mdns.src_mac = kPeerMac;
    mdns.dst_mac = mac("01:00:5e:00:00:fb");
    mdns.src = kPeer4;
    mdns.dst = ip("224.0.0.251");
    mdns.proto = LB_PROTO_UDP;
    mdns.sport = 5353;
    mdns.dport = 5353;
    mdns.ttl = 255;
    mdns.payload = Bytes(24, 0);
    add({"mDNS query to 224.0.0.251 (IPv4 multicast)", pktgen::build(mdns), Action::kPass,
         std::nullopt, LB_DROP_NO_SERVICE});
    PacketSpec ospf = mdns;
    ospf.dst_mac = mac("01:00:5e:00:00:05");
    ospf.dst = ip("224.0.0.5");
    ospf.proto = 89;  // OSPF Hello to AllSPFRouters
    ospf.ttl = 1;
    ospf.payload = Bytes(44, 0x11);
    add({"OSPF Hello to 224.0.0.5 (IPv4 multicast)", pktgen::build(ospf), Action::kPass,
         std::nullopt, LB_DROP_NO_SERVICE});
  }
  add({"LLDP to the nearest bridge (01:80:c2:00:00:0e)", lldpFrame(), Action::kPass,
       std::nullopt, LB_DROP_NON_IP});
  add({"TCP to a VIP, broadcast", tcpTo(kPeer4, kVip4, 80, mac("ff:ff:ff:ff:ff:ff")), Action::kTx,
       std::nullopt});
  {
    pktgen::ArpSpec a = arpRequest(kLocal4);
    a.dst_mac = kOtherHostMac;
    add({"ARP request for a local address to another host's MAC", pktgen::buildArp(a),
         Action::kDrop, std::nullopt, LB_DROP_NOT_FOR_US});
    add({"ARP request for a local address to another host's MAC, any MAC accepted",
         pktgen::buildArp(a), Action::kTx, arpReply(a), -1, true, true});
  }
  {
    PacketSpec ns = solicitSpec(kVip6);
    ns.dst_mac = mac("33:33:00:00:00:02");  // another group: still IPv6 multicast, taken
    add({"NS for a VIP to another 33:33 group", pktgen::buildNeighbourSolicit(ns, kVip6),
         Action::kTx, advertisement(ns, kVip6), -1, true});
  }
  auto head = [](Bytes f, size_t n) {
    f.resize(n);
    return f;
  };
  add({"truncated IPv4 for another MAC", head(tcpTo(kPeer4, kVip4, 80, kOtherHostMac), 20),
       Action::kDrop, std::nullopt, LB_DROP_NOT_FOR_US});
  add({"truncated IPv4 for the port", head(tcpTo(kPeer4, kVip4, 80), 20), Action::kDrop,
       std::nullopt, LB_DROP_TRUNCATED});
  return cases;
}

const sluice::ServiceEntry& serviceNamed(const Snapshot& snap, const std::string& name) {
  for (const sluice::ServiceEntry& s : snap.services) {
    if (s.present && s.name == name) {
      return s;
    }
  }
  throw std::invalid_argument("no service " + name);
}

class XdpHost : public ::testing::Test {
 protected:
  void SetUp() override {
    // The flow tables are per CPU: stay on one, as one DPDK worker would (and as replay does).
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(static_cast<unsigned>(sched_getcpu()), &one);
    sched_setaffinity(0, sizeof(one), &one);
    try {
      xdp_ = std::make_unique<XdpPath>(std::make_unique<XdpDataplane>(kFlowCapacity));
    } catch (const XdpError& e) {
      skip_ = e.what();
    }
  }

  /** Both paths on one frame: the same action and bytes, and after it the same counters. */
  struct Both {
    Outcome dpdk;
    Outcome xdp;
  };
  Both run(const Bytes& in, const Snapshot& snap, bool accept_any, uint64_t now,
           const std::string& what) {
    Both b{dpdk_.run(in, snap, accept_any, now), xdp_->run(in, snap, accept_any, now)};
    EXPECT_EQ(actionName(b.xdp.action), std::string(actionName(b.dpdk.action))) << what;
    EXPECT_EQ(hex(b.xdp.frame), hex(b.dpdk.frame)) << what << ": output bytes";
    const Counts d = dpdk_.counts();
    const Counts x = xdp_->counts(snap);
    EXPECT_EQ(x, d) << what << ":\n  dpdk " << d.str() << "\n  xdp  " << x.str();
    return b;
  }

  /** The backend a frame was sent to (by destination MAC), or 0. */
  static uint32_t backendOf(const Snapshot& snap, const Bytes& out) {
    for (uint32_t id = 1; id < snap.backends.size(); ++id) {
      if (snap.backends[id].present && out.size() >= 6 &&
          std::equal(out.begin(), out.begin() + 6, snap.backends[id].mac)) {
        return id;
      }
    }
    return 0;
  }

  DpdkPath dpdk_;
  std::unique_ptr<XdpPath> xdp_;
  std::string skip_;
};

#define XDP_OR_SKIP()                                                                      \
  if (!xdp_) {                                                                             \
    GTEST_SKIP() << "cannot load the XDP program (needs root or CAP_BPF): " << skip_;      \
  }

TEST_F(XdpHost, AnswersAndPassesAsThePipeline) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr snap = hostSnapshot(ids);
  ASSERT_TRUE(snap->has_gateway_mac && snap->has_gateway_mac6);
  for (const HostCase& c : hostCases()) {
    SCOPED_TRACE(c.description);
    const Counts before = dpdk_.counts();
    const Both b = run(c.input, *snap, c.accept_any, kT0, c.description);
    // What it must be, on the reference (the XDP path equals it, checked above).
    EXPECT_EQ(actionName(b.dpdk.action), std::string(actionName(c.action)));
    if (c.output) {
      EXPECT_EQ(hex(b.dpdk.frame), hex(*c.output)) << "the expected answer, built from scratch";
    }
    const Counts after = dpdk_.counts();
    Counts delta;
    delta.rx = 1;
    delta.tx = c.action == Action::kTx ? 1 : 0;
    delta.passed = c.action == Action::kPass ? 1 : 0;
    delta.answered = c.answered ? 1 : 0;
    if (c.reason >= 0) {
      delta.drops[c.reason] = 1;
    }
    Counts got;
    got.rx = after.rx - before.rx;
    got.tx = after.tx - before.tx;
    got.passed = after.passed - before.passed;
    got.answered = after.answered - before.answered;
    got.rescheduled = after.rescheduled - before.rescheduled;
    for (int r = 0; r < LB_DROP__COUNT; ++r) {
      got.drops[r] = after.drops[r] - before.drops[r];
    }
    EXPECT_EQ(got, delta) << "counted: " << got.str() << "\nexpected: " << delta.str();
    // The answers verify on their own: checksums summed over the whole message.
    if (b.xdp.action == Action::kTx && c.answered) {
      if (const auto icmp = pktgen::decodeIcmp(b.xdp.frame)) {
        EXPECT_TRUE(icmp->ip_checksum_ok);
        EXPECT_TRUE(icmp->icmp_checksum_ok);
        EXPECT_TRUE(std::equal(icmp->dst_mac.bytes.begin(), icmp->dst_mac.bytes.end(),
                               c.input.begin() + 6))
            << "to the asker's MAC";
        EXPECT_EQ(icmp->src_mac, kPortMac);
      } else {
        const auto arp = pktgen::decodeArp(b.xdp.frame);
        ASSERT_TRUE(arp.has_value()) << "an answer is ICMP, ICMPv6 or ARP";
        EXPECT_EQ(arp->op, 2);
        EXPECT_EQ(arp->sender_mac, kPortMac);
      }
    }
  }
}

// An IPv4 echo request whose reply is all zeros but for its checksum (id 0, sequence 0, no data):
// the RFC 1624 eqn. 3 update gives 0x0000 there, where the sum of the reply is +0 and only 0xffff
// verifies (a Linux receiver would drop it: csum_fold(0) != 0). answerEcho() (src/dataplane/
// host.h) and its twin send a computed 0x0000 as 0xffff, valid whenever 0x0000 is.
TEST_F(XdpHost, EchoReplyOfAnAllZeroMessageHasAValidChecksum) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr snap = hostSnapshot(ids);
  const PacketSpec e = echoSpec(ip("203.0.113.10"), kVip4);
  const Both b = run(pktgen::buildEchoRequest(e, 0, 0, {}), *snap, false, kT0, "all-zero echo");
  ASSERT_EQ(b.dpdk.action, Action::kTx);
  EXPECT_EQ(hex(b.dpdk.frame), hex(echoReply(e, 0, 0, {})));
  const auto icmp = pktgen::decodeIcmp(b.xdp.frame);
  ASSERT_TRUE(icmp.has_value());
  EXPECT_TRUE(icmp->icmp_checksum_ok);
}

// An echo request whose ICMP header lies past the IP length (IPv6 payload length 0, IPv4 total
// length 20: the message is the frame's padding) is no echo request: both paths pass it on as
// traffic for no service. The XDP path answered it once (xdp_diff_fuzz found it), its test of the
// header against the IP length missing from lb_is_echo_request().
TEST_F(XdpHost, AnEchoRequestPastTheIpLengthIsNotAnswered) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr snap = hostSnapshot(ids);
  for (const IpAddress& vip : {kVip4, kVip6}) {
    const bool v6 = vip.isV6();
    const PacketSpec e = echoSpec(v6 ? ip("2001:db8:ff::10") : ip("203.0.113.10"), vip);
    std::vector<uint8_t> f = pktgen::buildEchoRequest(e, 7, 1, std::vector<uint8_t>(16, 'Z'));
    if (v6) {
      f[18] = 0;  // payload length 0
      f[19] = 0;
    } else {
      f[16] = 0;  // total length 20, and the header checksum to match
      f[17] = 20;
      f[24] = 0;
      f[25] = 0;
      uint32_t sum = 0;
      for (int i = 14; i < 34; i += 2) {
        sum += static_cast<uint32_t>(f[i] << 8 | f[i + 1]);
      }
      sum = (sum & 0xffff) + (sum >> 16);
      sum = (sum & 0xffff) + (sum >> 16);
      f[24] = static_cast<uint8_t>(~sum >> 8);
      f[25] = static_cast<uint8_t>(~sum);
    }
    const Both b = run(f, *snap, false, kT0, v6 ? "IPv6 echo past the IP length" : "IPv4 echo");
    EXPECT_EQ(actionName(b.dpdk.action), std::string(actionName(Action::kPass))) << vip.str();
    EXPECT_EQ(actionName(b.xdp.action), std::string(actionName(Action::kPass))) << vip.str();
  }
}

TEST_F(XdpHost, AFlowOfABackendMarkedRescheduleMovesOnBothPaths) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr up = hostSnapshot(ids);
  // Flows of web (DR): find one pinned to each backend.
  const sluice::ServiceEntry* web = &serviceNamed(*up, "web");
  auto backendOf = [&up](const Bytes& out) { return XdpHost::backendOf(*up, out); };
  std::vector<Bytes> flows;
  std::vector<uint32_t> pinned;
  for (uint32_t i = 0; i < 40; ++i) {
    PacketSpec p;
    p.src_mac = kGateway4Mac;
    p.dst_mac = kPortMac;
    p.src = IpAddress::v4(0xcb007100u + i);
    p.dst = kVip4;
    p.sport = static_cast<uint16_t>(30000 + i);
    p.tcp_flags = 0x02;
    flows.push_back(pktgen::build(p));
    const Both b = run(flows.back(), *up, false, kT0, fmt::format("flow {} under up", i));
    ASSERT_EQ(b.dpdk.action, Action::kTx);
    pinned.push_back(backendOf(b.dpdk.frame));
  }
  // The first flow's backend goes down: web reschedules, so the snapshot marks it.
  const uint32_t gone = pinned[0];
  const sluice::BackendEntry& g = up->backends[gone];
  const BackendRef ref{web->vip, web->port, static_cast<uint8_t>(web->protocol), g.address,
                       g.port};
  const SnapshotPtr down = hostSnapshot(ids, true, &ref);
  ASSERT_TRUE(down->backends[gone].present);
  ASSERT_EQ(down->backends[gone].epoch, g.epoch) << "the same backend, not a new one";
  ASSERT_NE(down->backends[gone].flags & LB_BACKEND_F_RESCHEDULE, 0u);
  size_t moved = 0;
  for (size_t i = 0; i < flows.size(); ++i) {
    const std::string what = fmt::format("flow {} (backend {}) under down", i, pinned[i]);
    PacketSpec p;  // the flow's next packet: an ACK, no new connection
    p.src_mac = kGateway4Mac;
    p.dst_mac = kPortMac;
    p.src = IpAddress::v4(0xcb007100u + static_cast<uint32_t>(i));
    p.dst = kVip4;
    p.sport = static_cast<uint16_t>(30000 + i);
    p.tcp_flags = 0x10;
    const Both b = run(pktgen::build(p), *down, false, kT0 + kSec, what);
    ASSERT_EQ(b.dpdk.action, Action::kTx) << what;
    const uint32_t now_at = backendOf(b.dpdk.frame);
    if (pinned[i] == gone) {
      EXPECT_NE(now_at, gone) << what;
      ++moved;
    } else {
      EXPECT_EQ(now_at, pinned[i]) << what << ": a flow of a live backend stays";
    }
  }
  EXPECT_GT(moved, 0u);
  EXPECT_EQ(dpdk_.counts().rescheduled, moved);
  EXPECT_EQ(xdp_->counts(*down).rescheduled, moved);
}

// Under "keep" a down backend's flows stay, but a SYN is a new connection: one on ports whose
// flow is pinned to the down backend is scheduled afresh on both paths (else the client is
// refused until the entry expires), and a SYN of a flow of a live backend stays.
TEST_F(XdpHost, ASynPinnedToADownBackendPicksAgainUnderKeep) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr up = hostSnapshot(ids, true, nullptr, DownPolicy::kKeep);
  const sluice::ServiceEntry* web = &serviceNamed(*up, "web");
  auto backendOf = [&up](const Bytes& out) { return XdpHost::backendOf(*up, out); };
  auto packet = [](uint32_t i, uint8_t flags) {
    PacketSpec p;
    p.src_mac = kGateway4Mac;
    p.dst_mac = kPortMac;
    p.src = IpAddress::v4(0xcb007200u + i);
    p.dst = kVip4;
    p.sport = static_cast<uint16_t>(31000 + i);
    p.tcp_flags = flags;
    return pktgen::build(p);
  };
  constexpr uint32_t kFlows = 40;
  std::vector<uint32_t> pinned;
  for (uint32_t i = 0; i < kFlows; ++i) {
    const Both b = run(packet(i, 0x02), *up, false, kT0, fmt::format("SYN {} under up", i));
    ASSERT_EQ(b.dpdk.action, Action::kTx);
    pinned.push_back(backendOf(b.dpdk.frame));
  }
  const uint32_t gone = pinned[0];
  const sluice::BackendEntry& g = up->backends[gone];
  const BackendRef ref{web->vip, web->port, static_cast<uint8_t>(web->protocol), g.address,
                       g.port};
  const SnapshotPtr down = hostSnapshot(ids, true, &ref, DownPolicy::kKeep);
  ASSERT_EQ(down->backends[gone].flags & LB_BACKEND_F_RESCHEDULE, 0u) << "web keeps";
  ASSERT_NE(down->backends[gone].flags & LB_BACKEND_F_NO_NEW, 0u);
  // The open connections' next packets (ACKs) stay where they are, the down backend's too.
  for (uint32_t i = 0; i < kFlows; ++i) {
    const std::string what = fmt::format("ACK {} (backend {}) under down", i, pinned[i]);
    const Both b = run(packet(i, 0x10), *down, false, kT0 + kSec, what);
    ASSERT_EQ(b.dpdk.action, Action::kTx) << what;
    EXPECT_EQ(backendOf(b.dpdk.frame), pinned[i]) << what << ": kept";
  }
  // New connections on the same ports: those pinned to the down backend move.
  size_t moved = 0;
  for (uint32_t i = 0; i < kFlows; ++i) {
    const std::string what = fmt::format("SYN {} (backend {}) under down", i, pinned[i]);
    const Both b = run(packet(i, 0x02), *down, false, kT0 + 2 * kSec, what);
    ASSERT_EQ(b.dpdk.action, Action::kTx) << what;
    const uint32_t now_at = backendOf(b.dpdk.frame);
    if (pinned[i] == gone) {
      EXPECT_NE(now_at, gone) << what;
      ++moved;
    } else {
      EXPECT_EQ(now_at, pinned[i]) << what << ": a SYN of a live backend's flow stays";
    }
  }
  EXPECT_GT(moved, 0u);
  EXPECT_EQ(dpdk_.counts().rescheduled, 0u) << "a new connection, not a moved flow";
  EXPECT_EQ(xdp_->counts(*down).rescheduled, 0u);
}

// Jumbo frames and the largest IP packets. The XDP program is a multi-buffer one (xdp.frags):
// BPF_PROG_TEST_RUN puts what does not fit in the linear part (a page less headroom and
// skb_shared_info, about 3.5 KiB) into page fragments, as a NIC's multi-buffer receive does.
// Headers are read from the linear part and IP lengths checked against the whole frame, as the
// DPDK path checks headers against the first segment and lengths against pkt_len. Before, the
// program checked lengths against the linear part and dropped these as bad_ip_length.
TEST_F(XdpHost, JumboAndLargestFramesAreForwardedAlikeOnBothPaths) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr snap = hostSnapshot(ids);
  struct Jumbo {
    const char* what;
    IpAddress dst;
    uint16_t dport;
    uint8_t proto;
    size_t size;
  };
  const Jumbo cases[] = {
      {"9000-byte IPv4 TCP, DR", kVip4, 80, LB_PROTO_TCP, 9000},
      {"9000-byte IPv4 UDP, NAT", ip("192.0.2.53"), 53, LB_PROTO_UDP, 9000},
      {"9000-byte IPv6 TCP, NAT", kVip6, 443, LB_PROTO_TCP, 9000},
      {"65535-byte IPv4 TCP (total length 65521), DR", kVip4, 80, LB_PROTO_TCP, 65535},
      {"65535-byte IPv6 TCP, NAT", kVip6, 443, LB_PROTO_TCP, 65535},
      // The largest IPv6 packet without a jumbogram: payload length 65535, a frame of 65589,
      // whose end is past 65535 (l3_end is 32 bits on both paths for it).
      {"IPv6 payload length 65535 (a 65589-byte frame), NAT TCP", kVip6, 443, LB_PROTO_TCP,
       14 + 40 + 65535},
  };
  uint32_t n = 0;
  for (const Jumbo& c : cases) {
    SCOPED_TRACE(c.what);
    PacketSpec j;
    j.src_mac = kGateway4Mac;
    j.dst_mac = kPortMac;
    j.src = c.dst.isV4() ? IpAddress::v4(0xcb007180u + n) : ip("2001:db8:ff::180");
    j.dst = c.dst;
    j.proto = c.proto;
    j.sport = static_cast<uint16_t>(41000 + n++);
    j.dport = c.dport;
    j.tcp_flags = 0x18;
    const size_t headers = 14 + (c.dst.isV4() ? 20 : 40) + (c.proto == LB_PROTO_TCP ? 20 : 8);
    j.payload = Bytes(c.size - headers, static_cast<uint8_t>(n * 37));
    const Bytes in = pktgen::build(j);
    ASSERT_EQ(in.size(), c.size);
    const Both b = run(in, *snap, false, kT0, c.what);
    ASSERT_EQ(b.dpdk.action, Action::kTx) << "the DPDK path forwards it";
    ASSERT_EQ(b.xdp.frame.size(), c.size) << "the whole frame, its fragments included";
    const auto out = pktgen::decode(b.xdp.frame);
    ASSERT_TRUE(out.has_value());
    EXPECT_TRUE(out->ip_checksum_ok);
    EXPECT_TRUE(out->l4_checksum_ok) << "summed over the whole frame from scratch";
    EXPECT_NE(backendOf(*snap, b.xdp.frame), 0u);
  }
  EXPECT_EQ(dpdk_.counts().drops[LB_DROP_BAD_IP_LENGTH], 0u);
}

TEST_F(XdpHost, NatRepliesGoToTheGatewayOfTheirFamily) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr both = hostSnapshot(ids);
  const SnapshotPtr only4 = hostSnapshot(ids, false);
  ASSERT_TRUE(only4->has_gateway_mac);
  ASSERT_FALSE(only4->has_gateway_mac6);
  auto reply = [&both](const IpAddress& backend, uint16_t port, uint8_t proto,
                      const IpAddress& client) {
    PacketSpec r;
    for (const sluice::BackendEntry& b : both->backends) {  // from its next hop, as replies come
      if (b.present && b.address == backend && b.port == port) {
        std::copy(b.mac, b.mac + 6, r.src_mac.bytes.begin());
      }
    }
    r.dst_mac = kPortMac;
    r.src = backend;
    r.dst = client;
    r.proto = proto;
    r.sport = port;
    r.dport = 33000;
    r.tcp_flags = 0x18;
    r.payload = Bytes(24, 0x33);
    return r;
  };
  const PacketSpec r4 = reply(ip("10.0.1.21"), 5353, LB_PROTO_UDP, ip("203.0.113.5"));
  const PacketSpec r6 = reply(ip("2001:db8:1::12"), 8443, LB_PROTO_TCP, ip("2001:db8:ff::5"));
  // The reply as it must leave, from scratch: the VIP:port as source, to the gateway.
  auto rewritten = [](PacketSpec r, const IpAddress& vip, uint16_t port, const MacAddress& to) {
    r.src = vip;
    r.sport = port;
    r.src_mac = kPortMac;
    r.dst_mac = to;
    return pktgen::build(r);
  };
  const Bytes out4 = rewritten(r4, ip("192.0.2.53"), 53, kGateway4Mac);
  const Bytes out6 = rewritten(r6, kVip6, 443, kGateway6Mac);

  Both b = run(pktgen::build(r4), *both, false, kT0, "IPv4 NAT reply, both gateways known");
  EXPECT_EQ(hex(b.dpdk.frame), hex(out4));
  b = run(pktgen::build(r6), *both, false, kT0, "IPv6 NAT reply, both gateways known");
  EXPECT_EQ(hex(b.dpdk.frame), hex(out6));

  // Without the IPv6 gateway's MAC: the router learned from IPv6 client packets only.
  b = run(pktgen::build(r6), *only4, false, kT0, "IPv6 NAT reply, nothing learned");
  EXPECT_EQ(b.dpdk.action, Action::kDrop);
  PacketSpec c4;
  c4.src_mac = mac("02:00:00:00:0c:04");
  c4.dst_mac = kPortMac;
  c4.src = ip("203.0.113.5");
  c4.dst = ip("192.0.2.53");
  c4.proto = LB_PROTO_UDP;
  c4.sport = 33000;
  c4.dport = 53;
  c4.payload = Bytes(12, 1);
  run(pktgen::build(c4), *only4, false, kT0, "IPv4 NAT client packet (its family has a gateway)");
  b = run(pktgen::build(r6), *only4, false, kT0, "IPv6 NAT reply after an IPv4 client packet");
  EXPECT_EQ(b.dpdk.action, Action::kDrop) << "an IPv4 client's router is not learned";
  PacketSpec c6;
  c6.src_mac = mac("02:00:00:00:0c:06");
  c6.dst_mac = kPortMac;
  c6.src = ip("2001:db8:ff::5");
  c6.dst = kVip6;
  c6.sport = 33000;
  c6.dport = 443;
  c6.tcp_flags = 0x02;
  run(pktgen::build(c6), *only4, false, kT0, "IPv6 NAT client packet");
  b = run(pktgen::build(r6), *only4, false, kT0, "IPv6 NAT reply, router learned");
  EXPECT_EQ(hex(b.dpdk.frame), hex(rewritten(r6, kVip6, 443, c6.src_mac)));
  b = run(pktgen::build(r4), *only4, false, kT0, "IPv4 NAT reply, its gateway known");
  EXPECT_EQ(hex(b.dpdk.frame), hex(out4));
  EXPECT_EQ(dpdk_.counts().drops[LB_DROP_NO_NEXT_HOP], 2u);
}
// ---------------------------------------------------------------------------------------------
// ICMP errors about a flow (src/dataplane/icmp_error.h): a router that cannot pass a backend's
// reply (too big for a link: PMTU discovery, RFC 1191 / RFC 8201) sends the error to the VIP,
// quoting the reply. Both paths send it on to the flow's backend, DR as a forward (MACs only),
// NAT with the VIP rewritten to the backend in the outer header and the quote.

const IpAddress kRouter4 = ip("198.51.100.254");
const IpAddress kRouter6 = ip("2001:db8:b::fe");

/**
 * hostConfig() and a service of each kind it lacks: DR/UDP/IPv4, NAT/TCP/IPv4, DR/TCP/IPv6,
 * NAT/UDP/IPv6, and one whose only backend is drained. reweighted: the first backend of every
 * service weighs ten times as much (the same backends, ids and epochs: other Maglev tables).
 */
sluice::Config icmpConfig(bool reweighted = false) {
  using sluice::Forwarding;
  using sluice::Protocol;
  sluice::Config c = hostConfig();
  c.services.push_back(
      testsupport::makeService("dnsdr", "192.0.2.54", 53, Protocol::kUdp, Forwarding::kDr,
                               {testsupport::makeBackend("10.0.4.1", 53, "02:00:00:00:04:01"),
                                testsupport::makeBackend("10.0.4.2", 53, "02:00:00:00:04:02")}));
  c.services.push_back(testsupport::makeService(
      "api", "192.0.2.20", 443, Protocol::kTcp, Forwarding::kNat,
      {testsupport::makeBackend("10.0.2.1", 8443, "02:00:00:00:03:01"),
       testsupport::makeBackend("10.0.2.2", 8443, "02:00:00:00:03:02", 3)}));
  c.services.push_back(testsupport::makeService(
      "web6dr", "2001:db8::10", 80, Protocol::kTcp, Forwarding::kDr,
      {testsupport::makeBackend("2001:db8:3::1", 80, "02:00:00:00:06:01"),
       testsupport::makeBackend("2001:db8:3::2", 80, "02:00:00:00:06:02")}));
  c.services.push_back(testsupport::makeService(
      "dns6", "2001:db8::53", 53, Protocol::kUdp, Forwarding::kNat,
      {testsupport::makeBackend("2001:db8:2::1", 53, "02:00:00:00:05:01"),
       testsupport::makeBackend("2001:db8:2::2", 5300, "02:00:00:00:05:02")}));
  c.services.push_back(
      testsupport::makeService("drained", "192.0.2.30", 80, Protocol::kUdp, Forwarding::kDr,
                               {testsupport::makeBackend("10.0.3.1", 80, "02:00:00:00:07:01", 0)}));
  if (reweighted) {
    for (sluice::ServiceConfig& s : c.services) {
      if (!s.backends.empty() && s.backends[0].weight != 0) {
        s.backends[0].weight *= 10;
      }
    }
  }
  sluice::validateConfig(c, "test");
  return c;
}

SnapshotPtr icmpSnapshot(sluice::IdRegistry& ids, bool reweighted = false, uint64_t gen = 1) {
  sluice::RuntimeState rt;
  rt.neighbours[kGateway4] = kGateway4Mac;
  rt.neighbours[kGateway6] = kGateway6Mac;
  return sluice::buildSnapshot(icmpConfig(reweighted), ids, gen, nullptr, &rt);
}

/** One connection of a service: the client's packets and the (rewritten) replies it gets. */
struct IcmpFlow {
  std::string service;
  IpAddress vip;
  uint16_t vport = 0;
  uint8_t proto = LB_PROTO_TCP;
  IpAddress client;
  uint16_t cport = 0;

  /** The flow key of the client's packets (what the flow table and the hash are keyed by). */
  lb_flow_key key() const {
    lb_flow_key k{};
    const size_t n = vip.isV4() ? 4 : 16;
    std::memcpy(k.src, client.bytes.data(), n);
    std::memcpy(k.dst, vip.bytes.data(), n);
    k.sport = htons(cport);
    k.dport = htons(vport);
    k.proto = proto;
    k.family = vip.isV4() ? LB_FAMILY_IPV4 : LB_FAMILY_IPV6;
    return k;
  }

  /** A packet of the client's: a SYN (TCP) or a datagram (UDP). */
  Bytes clientPacket() const {
    PacketSpec p;
    p.src_mac = vip.isV4() ? kGateway4Mac : kGateway6Mac;
    p.dst_mac = kPortMac;
    p.src = client;
    p.dst = vip;
    p.proto = proto;
    p.sport = cport;
    p.dport = vport;
    p.tcp_flags = 0x02;
    p.payload = Bytes(16, 0x51);
    return pktgen::build(p);
  }

  /** The reply as it left Sluice (or, DR, the backend): from VIP:vport, a full-sized segment. */
  PacketSpec reply() const {
    PacketSpec r;
    r.src = vip;
    r.dst = client;
    r.proto = proto;
    r.sport = vport;
    r.dport = cport;
    r.tcp_flags = 0x18;
    r.seq = 0x01020304;
    r.ack = 0x0a0b0c0d;
    r.ttl = 61;
    r.ip_id = 0x4d2;
    r.payload = Bytes(1452, 0x77);
    return r;
  }
};

/** An ICMP error from a router to the VIP about the flow's reply, and how much of it is quoted. */
struct IcmpErrorSpec {
  uint8_t type = 0;
  uint8_t code = 0;
  uint32_t rest = 0;
  size_t quote_len = 0;
};

/** IPv4 fragmentation needed (RFC 1191: next-hop MTU 1400), IPv6 packet too big (MTU 1280). */
IcmpErrorSpec pmtuError(bool v4, size_t quote_len) {
  return v4 ? IcmpErrorSpec{3, 4, 1400, quote_len} : IcmpErrorSpec{2, 0, 1280, quote_len};
}

PacketSpec routerSpec(const IcmpFlow& f) {
  PacketSpec o;
  const bool v4 = f.vip.isV4();
  o.src_mac = v4 ? kGateway4Mac : kGateway6Mac;
  o.dst_mac = kPortMac;
  o.src = v4 ? kRouter4 : kRouter6;
  o.dst = f.vip;
  o.ttl = 254;
  o.ip_id = 0x77;
  return o;
}

Bytes icmpErrorFrame(const IcmpFlow& f, const IcmpErrorSpec& e) {
  return pktgen::buildIcmpError(routerSpec(f), e.type, e.code, e.rest, f.reply(), e.quote_len);
}

/**
 * What the error must leave as towards backend b, built from scratch: DR, the same message
 * from the port's MAC to b's; NAT, the outer destination b's address and the quote's source
 * b:port, every checksum computed anew but the quoted TCP/UDP checksum, which keeps the value
 * the router quoted (neither path fixes it: see rewriteIcmpError()).
 */
Bytes expectedIcmpForward(const IcmpFlow& f, const IcmpErrorSpec& e, const sluice::BackendEntry& b,
                          bool nat) {
  PacketSpec o = routerSpec(f);
  o.src_mac = kPortMac;
  std::copy(b.mac, b.mac + 6, o.dst_mac.bytes.begin());
  const PacketSpec r = f.reply();
  Bytes quote = pktgen::ipPacket(r);
  if (nat) {
    PacketSpec moved = r;
    moved.src = b.address;
    moved.sport = b.port;
    const Bytes rewritten = pktgen::ipPacket(moved);
    const size_t l4 = r.src.isV4() ? 20 : 40;
    const size_t csum = l4 + (f.proto == LB_PROTO_TCP ? 16 : 6);
    Bytes patched = rewritten;
    patched[csum] = quote[csum];
    patched[csum + 1] = quote[csum + 1];
    quote = patched;
    o.dst = b.address;
  }
  quote.resize(std::min(quote.size(), e.quote_len));
  return pktgen::buildIcmp(o, e.type, e.code, e.rest, quote);
}

class XdpIcmpError : public XdpHost {
 protected:
  /**
   * The error through both paths: forwarded to backend `to`, exactly as built from scratch,
   * its checksums valid, counted once as icmp_forwarded and in tx and the backend's packets,
   * and no flow created.
   */
  void expectForwarded(const IcmpFlow& f, const IcmpErrorSpec& e, const Snapshot& snap,
                       uint32_t to, uint64_t now, const std::string& what) {
    const sluice::ServiceEntry& svc = serviceNamed(snap, f.service);
    const bool nat = svc.forwarding == sluice::Forwarding::kNat;
    const Counts before = dpdk_.counts();
    const uint64_t dpdk_flows = dpdk_.flowsCreated();
    const uint64_t xdp_flows = xdp_->flowsCreated(snap);
    const uint64_t packets_before = backendPackets(to);
    const Bytes in = icmpErrorFrame(f, e);
    const Both b = run(in, snap, false, now, what);
    ASSERT_EQ(b.dpdk.action, Action::kTx) << what;
    EXPECT_EQ(backendOf(snap, b.dpdk.frame), to) << what;
    EXPECT_EQ(hex(b.dpdk.frame), hex(expectedIcmpForward(f, e, snap.backends[to], nat)))
        << what << ": the rewritten message, built from scratch";
    const auto icmp = pktgen::decodeIcmp(b.xdp.frame);
    ASSERT_TRUE(icmp.has_value()) << what;
    EXPECT_TRUE(icmp->ip_checksum_ok) << what;
    EXPECT_TRUE(icmp->icmp_checksum_ok) << what;
    EXPECT_EQ(icmp->type, e.type);
    EXPECT_EQ(icmp->dst, nat ? snap.backends[to].address : f.vip) << what;
    // The quote's source: the backend (NAT) or the VIP (DR), and its port.
    const Bytes& m = icmp->message;
    const bool v4 = f.vip.isV4();
    const size_t src_at = 8 + (v4 ? 12 : 8);
    const size_t port_at = 8 + (v4 ? 20 : 40);
    const IpAddress& src = nat ? snap.backends[to].address : f.vip;
    EXPECT_TRUE(std::equal(m.begin() + src_at, m.begin() + src_at + (v4 ? 4 : 16),
                           src.bytes.begin()))
        << what;
    EXPECT_EQ(m[port_at] << 8 | m[port_at + 1], nat ? snap.backends[to].port : f.vport) << what;
    if (v4) {
      EXPECT_EQ(pktgen::onesSum(std::span<const uint8_t>(m).subspan(8, 20)), 0xffff)
          << what << ": the quoted IPv4 header's checksum";
    }
    const Counts after = dpdk_.counts();
    EXPECT_EQ(after.icmp_forwarded - before.icmp_forwarded, 1u) << what;
    EXPECT_EQ(after.tx - before.tx, 1u) << what;
    EXPECT_EQ(after.drops, before.drops) << what;
    EXPECT_EQ(after.rescheduled, before.rescheduled) << what;
    EXPECT_EQ(dpdk_.flowsCreated(), dpdk_flows) << what << ": an error creates no flow";
    EXPECT_EQ(xdp_->flowsCreated(snap), xdp_flows) << what << ": an error creates no flow";
    EXPECT_EQ(backendPackets(to), packets_before + 1) << what;
  }

  uint64_t backendPackets(uint32_t id) const { return dpdk_.backendPackets(id); }

  /** The Maglev pick of the flow under snap: where a new flow of that key goes. */
  static uint32_t maglevPick(const IcmpFlow& f, const Snapshot& snap) {
    const lb_flow_key k = f.key();
    return serviceNamed(snap, f.service).pick(lb_flow_hash(&k));
  }
};

/** A flow of each kind (family, protocol, forwarding mode). */
std::vector<IcmpFlow> icmpFlows() {
  return {
      {"web", kVip4, 80, LB_PROTO_TCP, ip("203.0.113.21"), 41001},            // DR TCP
      {"dnsdr", ip("192.0.2.54"), 53, LB_PROTO_UDP, ip("203.0.113.22"), 41002},  // DR UDP
      {"api", ip("192.0.2.20"), 443, LB_PROTO_TCP, ip("203.0.113.23"), 41003},   // NAT TCP
      {"dns", ip("192.0.2.53"), 53, LB_PROTO_UDP, ip("203.0.113.24"), 41004},    // NAT UDP
      {"web6dr", kVip6, 80, LB_PROTO_TCP, ip("2001:db8:ff::21"), 42001},         // DR TCP
      {"web6", kVip6, 443, LB_PROTO_TCP, ip("2001:db8:ff::22"), 42002},          // NAT TCP
      {"dns6", ip("2001:db8::53"), 53, LB_PROTO_UDP, ip("2001:db8:ff::23"), 42003},  // NAT UDP
  };
}

// Without a flow entry the error goes where a new flow of that key would (the Maglev pick);
// after the client's first packet, to the flow's backend (the same one: nothing changed). Quotes
// of the RFC 792 minimum (header + 8), of Linux's 576-byte limit, and of a whole 1280 bytes.
TEST_F(XdpIcmpError, PmtuErrorsGoToTheFlowsBackendBothPaths) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr snap = icmpSnapshot(ids);
  for (const IcmpFlow& base : icmpFlows()) {
    const bool v4 = base.vip.isV4();
    for (const size_t quote : {v4 ? size_t{28} : size_t{48}, v4 ? size_t{548} : size_t{1232}}) {
      IcmpFlow f = base;
      f.cport = static_cast<uint16_t>(f.cport + quote);  // a flow of its own per quote
      const IcmpErrorSpec e = pmtuError(v4, quote);
      const std::string what = fmt::format("{} {} quote {}", f.service, v4 ? "frag-needed" : "ptb",
                                           quote);
      const uint32_t pick = maglevPick(f, *snap);
      ASSERT_NE(pick, LB_BACKEND_NONE) << what;
      expectForwarded(f, e, *snap, pick, kT0, what + ", no flow");
      const Both c = run(f.clientPacket(), *snap, false, kT0 + kSec, what + ": client packet");
      ASSERT_EQ(c.dpdk.action, Action::kTx) << what;
      ASSERT_EQ(backendOf(*snap, c.dpdk.frame), pick) << what << ": the flow is pinned there";
      expectForwarded(f, e, *snap, pick, kT0 + 2 * kSec, what + ", pinned flow");
    }
  }
  EXPECT_EQ(dpdk_.counts().icmp_forwarded, 2u * 2u * icmpFlows().size());
}

// Weights change: flows stay where they are pinned, and so do the errors about them, even where
// the Maglev pick of their key is now another backend; a flow without an entry takes the pick.
TEST_F(XdpIcmpError, APinnedFlowsErrorsStayWithItAfterAWeightChange) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr before = icmpSnapshot(ids);
  const SnapshotPtr after = icmpSnapshot(ids, true, 2);
  for (const IcmpFlow& base : icmpFlows()) {
    const bool v4 = base.vip.isV4();
    const IcmpErrorSpec e = pmtuError(v4, v4 ? 548 : 1232);
    bool found = false;
    for (uint16_t i = 0; i < 200 && !found; ++i) {
      IcmpFlow f = base;
      f.cport = static_cast<uint16_t>(50000 + i);
      const uint32_t pinned = maglevPick(f, *before);
      const uint32_t now_pick = maglevPick(f, *after);
      if (pinned == now_pick) {
        continue;
      }
      found = true;
      const std::string what = fmt::format("{} port {}: pinned {}, now picked {}", f.service,
                                           f.cport, pinned, now_pick);
      ASSERT_EQ(after->backends[pinned].epoch, before->backends[pinned].epoch) << what;
      const Both c = run(f.clientPacket(), *before, false, kT0, what + ": client packet");
      ASSERT_EQ(backendOf(*before, c.dpdk.frame), pinned) << what;
      expectForwarded(f, e, *after, pinned, kT0 + kSec, what + ": error, pinned");
      // The same connection's error from another client port has no entry: the new pick.
      IcmpFlow fresh = f;
      fresh.client = v4 ? ip("203.0.113.99") : ip("2001:db8:ff::99");
      expectForwarded(fresh, e, *after, maglevPick(fresh, *after), kT0 + kSec,
                      what + ": error, no flow");
    }
    EXPECT_TRUE(found) << base.service << ": no flow moved by the weight change";
  }
}

// What is not an error about a flow of a service goes on as before; a quote cut short or
// malformed is dropped; an error about a service without backends is no_backend.
TEST_F(XdpIcmpError, OtherErrorsAndMalformedQuotes) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr snap = icmpSnapshot(ids);
  const IcmpFlow web = icmpFlows()[0];
  const IcmpFlow web6 = icmpFlows()[5];
  struct Case {
    std::string description;
    Bytes input;
    Action action;
    int reason;
  };
  std::vector<Case> cases;
  {
    IcmpFlow f = web;
    f.vport = 8080;  // the VIP, another port: no service
    cases.push_back({"quote of VIP:8080 (no service)", icmpErrorFrame(f, pmtuError(true, 28)),
                     Action::kPass, LB_DROP_NO_SERVICE});
    IcmpFlow u = web;
    u.proto = LB_PROTO_UDP;  // web is TCP
    cases.push_back({"quote of a UDP reply from a TCP service's VIP:port",
                     icmpErrorFrame(u, pmtuError(true, 28)), Action::kPass, LB_DROP_NO_SERVICE});
    IcmpFlow v6 = web6;
    v6.vport = 8443;
    cases.push_back({"IPv6 quote of VIP:8443 (no service)",
                     icmpErrorFrame(v6, pmtuError(false, 1232)), Action::kPass,
                     LB_DROP_NO_SERVICE});
  }
  {
    PacketSpec o = routerSpec(web);
    o.dst = ip("192.0.2.99");  // no VIP: as before
    cases.push_back({"error to an address that is no VIP",
                     pktgen::buildIcmpError(o, 3, 4, 1400, web.reply(), 28), Action::kPass,
                     LB_DROP_NO_SERVICE});
    PacketSpec local = routerSpec(web);
    local.dst = kLocal4;  // the host's own: its kernel's
    PacketSpec r = web.reply();
    r.src = kLocal4;
    cases.push_back({"error to a local address", pktgen::buildIcmpError(local, 3, 4, 1400, r, 28),
                     Action::kPass, -1});
  }
  {
    PacketSpec r = web.reply();
    r.src = ip("192.0.2.54");  // another VIP than the error's destination
    cases.push_back({"quote from another VIP",
                     pktgen::buildIcmpError(routerSpec(web), 3, 4, 1400, r, 28), Action::kPass,
                     LB_DROP_NO_SERVICE});
    PacketSpec echo = web.reply();
    echo.proto = LB_IPPROTO_ICMP;
    echo.payload = {8, 0, 0, 0, 0, 1, 0, 1};
    cases.push_back({"quote of an ICMP packet",
                     pktgen::buildIcmpError(routerSpec(web), 3, 1, 0, echo, 28), Action::kPass,
                     LB_DROP_NO_SERVICE});
    PacketSpec frag = web.reply();
    frag.frag_offset = 100;
    frag.payload = Bytes(64, 0x66);
    cases.push_back({"quote of a later fragment",
                     pktgen::buildIcmpError(routerSpec(web), 3, 4, 1400, frag, 28), Action::kPass,
                     LB_DROP_NO_SERVICE});
  }
  {
    PacketSpec o = routerSpec(web);
    cases.push_back({"other ICMP to a VIP (timestamp request)",
                     pktgen::buildIcmp(o, 13, 0, 0, Bytes(12, 0)), Action::kPass,
                     LB_DROP_NO_SERVICE});
  }
  for (const size_t cut : {size_t{0}, size_t{10}, size_t{20}, size_t{27}}) {
    cases.push_back({fmt::format("IPv4 quote cut to {} bytes", cut),
                     icmpErrorFrame(web, pmtuError(true, cut)), Action::kDrop,
                     LB_DROP_TRUNCATED});
  }
  for (const size_t cut : {size_t{39}, size_t{47}}) {
    cases.push_back({fmt::format("IPv6 quote cut to {} bytes", cut),
                     icmpErrorFrame(web6, pmtuError(false, cut)), Action::kDrop,
                     LB_DROP_TRUNCATED});
  }
  {
    // Options in the quoted header (IHL 15): its ports lie past the 28 bytes quoted.
    Bytes q = pktgen::ipPacket(web.reply());
    q.resize(28);
    q[0] = 0x4f;
    cases.push_back({"IPv4 quote with IHL 15 cut to 28 bytes",
                     pktgen::buildIcmp(routerSpec(web), 3, 4, 1400, q), Action::kDrop,
                     LB_DROP_TRUNCATED});
    q[0] = 0x44;
    cases.push_back({"IPv4 quote with IHL 4", pktgen::buildIcmp(routerSpec(web), 3, 4, 1400, q),
                     Action::kDrop, LB_DROP_BAD_IP_HEADER});
    q[0] = 0x65;
    cases.push_back({"IPv4 error quoting version 6",
                     pktgen::buildIcmp(routerSpec(web), 3, 4, 1400, q), Action::kDrop,
                     LB_DROP_BAD_IP_HEADER});
    Bytes q6 = pktgen::ipPacket(web6.reply());
    q6.resize(48);
    q6[0] = 0x45;
    cases.push_back({"IPv6 error quoting version 4",
                     pktgen::buildIcmp(routerSpec(web6), 2, 0, 1280, q6), Action::kDrop,
                     LB_DROP_BAD_IP_HEADER});
  }
  {
    // The quote only in the Ethernet trailer: the IP packet ends after the ICMP header.
    Bytes f = icmpErrorFrame(web, pmtuError(true, 28));
    f[14 + 2] = 0;
    f[14 + 3] = 20 + 8;  // IPv4 total length
    f[14 + 10] = f[14 + 11] = 0;
    const uint16_t sum = pktgen::onesSum(std::span<const uint8_t>(f).subspan(14, 20));
    f[14 + 10] = static_cast<uint8_t>(~sum >> 8);
    f[14 + 11] = static_cast<uint8_t>(~sum);
    cases.push_back({"quote in the frame's padding, past the IP packet", f, Action::kDrop,
                     LB_DROP_TRUNCATED});
  }
  {
    PacketSpec ext = web6.reply();
    ext.ipv6_ext = {60};  // a destination options header: not walked in a quote
    cases.push_back({"IPv6 quote with an extension header",
                     pktgen::buildIcmpError(routerSpec(web6), 2, 0, 1280, ext, 1232),
                     Action::kPass, LB_DROP_NO_SERVICE});
  }
  {
    IcmpFlow d{"drained", ip("192.0.2.30"), 80, LB_PROTO_UDP, ip("203.0.113.40"), 40000};
    cases.push_back({"error about a service without backends",
                     icmpErrorFrame(d, pmtuError(true, 28)), Action::kDrop, LB_DROP_NO_BACKEND});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.description);
    const Counts before = dpdk_.counts();
    const Both b = run(c.input, *snap, false, kT0, c.description);
    EXPECT_EQ(actionName(b.dpdk.action), std::string(actionName(c.action)));
    const Counts after = dpdk_.counts();
    EXPECT_EQ(after.icmp_forwarded, before.icmp_forwarded);
    for (int r = 0; r < LB_DROP__COUNT; ++r) {
      EXPECT_EQ(after.drops[r] - before.drops[r], r == c.reason ? 1u : 0u)
          << lb_drop_reason_name(r);
    }
  }
  // And the other error types of the list: time exceeded (both families), IPv6 unreachable.
  const IcmpErrorSpec others[] = {{11, 0, 0, 28}, {3, 1, 0, 548}, {3, 0, 0, 1232},
                                  {1, 4, 0, 1232}};
  const IcmpFlow flows[] = {web, icmpFlows()[2], web6, icmpFlows()[6]};
  for (size_t i = 0; i < std::size(others); ++i) {
    expectForwarded(flows[i], others[i], *snap, maglevPick(flows[i], *snap), kT0,
                    fmt::format("{} type {} code {}", flows[i].service, others[i].type,
                                others[i].code));
  }
}
// ---------------------------------------------------------------------------------------------
// ICMP errors from behind NAT (src/dataplane/icmp_error.h): a NAT backend's kernel (port
// unreachable: a UDP port that is closed) or a router between Sluice and the backend sends the
// error to the client, quoting the client's packet as Sluice rewrote it (client:cport ->
// backend:bport). Both paths send it to the client's next hop as an error about its packet to
// the VIP: the outer source and the quote's destination become the VIP and VIP:vport.

const IpAddress kBehind4 = ip("10.0.2.254");      // a router between Sluice and the backends
const IpAddress kBehind6 = ip("2001:db8:1::fe");
const MacAddress kBehindMac = mac("02:00:00:00:0b:fe");

/**
 * c with api's backends (10.0.2.0/24) and web6's (2001:db8:1::/64) reached through the router
 * kBehind4 / kBehind6: their next hop, the MAC Sluice sends their requests to and so the only
 * one their replies and that router's errors are taken from, is kBehindMac.
 */
sluice::Config behindRouter(sluice::Config c) {
  for (const char* name : {"api", "web6"}) {
    for (sluice::BackendConfig& b : testsupport::service(c, name).backends) {
      b.mac = kBehindMac;
    }
  }
  sluice::validateConfig(c, "test");
  return c;
}

/** icmpSnapshot() with behindRouter(). */
SnapshotPtr behindRouterSnapshot(sluice::IdRegistry& ids, bool gateway6 = true) {
  sluice::RuntimeState rt;
  rt.neighbours[kGateway4] = kGateway4Mac;
  if (gateway6) {
    rt.neighbours[kGateway6] = kGateway6Mac;
  }
  return sluice::buildSnapshot(behindRouter(icmpConfig()), ids, 1, nullptr, &rt);
}

/** IPv4 port unreachable (type 3 code 3), ICMPv6 port unreachable (type 1 code 4). */
IcmpErrorSpec portUnreachable(bool v4, size_t quote_len) {
  return v4 ? IcmpErrorSpec{3, 3, 0, quote_len} : IcmpErrorSpec{1, 4, 0, quote_len};
}

/** The client's packet of f as Sluice sent it on to backend address:port: what the error quotes. */
PacketSpec sentToBackend(const IcmpFlow& f, const IpAddress& address, uint16_t port) {
  PacketSpec q;
  q.src = f.client;
  q.dst = address;
  q.proto = f.proto;
  q.sport = f.cport;
  q.dport = port;
  q.tcp_flags = 0x18;
  q.seq = 0x11223344;
  q.ack = 0x55667788;
  q.ttl = 57;
  q.ip_id = 0x2bad;
  q.payload = Bytes(f.proto == LB_PROTO_TCP ? 1452 : 61, 0x6e);
  return q;
}

/** The error from `from` (the backend, or a router behind Sluice) to f's client about quoted. */
PacketSpec fromBehind(const IcmpFlow& f, const IpAddress& from, const MacAddress& from_mac) {
  PacketSpec o;
  o.src_mac = from_mac;
  o.dst_mac = kPortMac;
  o.src = from;
  o.dst = f.client;
  o.ttl = 64;
  o.ip_id = 0x3c3c;
  return o;
}

/**
 * What the error must leave as, built from scratch: from the port's MAC to next_hop, from the
 * VIP, quoting the client's packet as it was sent to VIP:vport, every checksum computed anew but
 * the quoted TCP/UDP checksum, which keeps the value quoted (see rewriteIcmpError()).
 */
Bytes expectedToClient(const IcmpFlow& f, const PacketSpec& outer, const IcmpErrorSpec& e,
                       const PacketSpec& quoted, const MacAddress& next_hop) {
  PacketSpec o = outer;
  o.src_mac = kPortMac;
  o.dst_mac = next_hop;
  o.src = f.vip;
  PacketSpec sent = quoted;
  sent.dst = f.vip;
  sent.dport = f.vport;
  const Bytes was = pktgen::ipPacket(quoted);
  Bytes quote = pktgen::ipPacket(sent);
  const size_t csum = (f.vip.isV4() ? 20 : 40) + (f.proto == LB_PROTO_TCP ? 16 : 6);
  quote[csum] = was[csum];
  quote[csum + 1] = was[csum + 1];
  quote.resize(std::min(quote.size(), e.quote_len));
  return pktgen::buildIcmp(o, e.type, e.code, e.rest, quote);
}

class XdpIcmpFromNat : public XdpIcmpError {
 protected:
  /** The id of the backend address:port of a snapshot. */
  static uint32_t backendAt(const Snapshot& snap, const IpAddress& address, uint16_t port) {
    for (uint32_t id = 1; id < snap.backends.size(); ++id) {
      if (snap.backends[id].present && snap.backends[id].address == address &&
          snap.backends[id].port == port) {
        return id;
      }
    }
    throw std::invalid_argument("no backend " + address.str());
  }

  /**
   * An error from `from` about f's packet to backend `to`, through both paths: sent to the
   * client's gateway exactly as built from scratch, its checksums valid, counted once as
   * icmp_forwarded, in tx and in the backend's reply packets (not its packets), no flow created.
   */
  void expectToClient(const IcmpFlow& f, const IcmpErrorSpec& e, const Snapshot& snap,
                      uint32_t to, const IpAddress& from, const MacAddress& from_mac,
                      const MacAddress& next_hop, const std::string& what) {
    const sluice::BackendEntry& b = snap.backends.at(to);
    const PacketSpec quoted = sentToBackend(f, b.address, b.port);
    const PacketSpec outer = fromBehind(f, from, from_mac);
    const Counts before = dpdk_.counts();
    const uint64_t dpdk_flows = dpdk_.flowsCreated();
    const uint64_t xdp_flows = xdp_->flowsCreated(snap);
    const uint64_t packets = backendPackets(to);
    const uint64_t dpdk_replies = dpdk_.backendReplyPackets(to);
    const uint64_t xdp_replies = xdp_->backendReplyPackets(snap, to);
    const Both r =
        run(pktgen::buildIcmpError(outer, e.type, e.code, e.rest, quoted, e.quote_len), snap,
            false, kT0, what);
    ASSERT_EQ(r.dpdk.action, Action::kTx) << what;
    EXPECT_EQ(hex(r.dpdk.frame), hex(expectedToClient(f, outer, e, quoted, next_hop)))
        << what << ": the rewritten message, built from scratch";
    const auto icmp = pktgen::decodeIcmp(r.xdp.frame);
    ASSERT_TRUE(icmp.has_value()) << what;
    EXPECT_TRUE(icmp->ip_checksum_ok) << what;
    EXPECT_TRUE(icmp->icmp_checksum_ok) << what;
    EXPECT_EQ(icmp->src, f.vip) << what;
    EXPECT_EQ(icmp->dst, f.client) << what;
    // The quote's destination: VIP:vport.
    const Bytes& m = icmp->message;
    const bool v4 = f.vip.isV4();
    const size_t dst_at = 8 + (v4 ? 16 : 24);
    const size_t port_at = 8 + (v4 ? 20 : 40) + 2;
    EXPECT_TRUE(std::equal(f.vip.bytes.begin(), f.vip.bytes.begin() + (v4 ? 4 : 16),
                           m.begin() + dst_at))
        << what;
    EXPECT_EQ(m[port_at] << 8 | m[port_at + 1], f.vport) << what;
    if (v4) {
      EXPECT_EQ(pktgen::onesSum(std::span<const uint8_t>(m).subspan(8, 20)), 0xffff)
          << what << ": the quoted IPv4 header's checksum";
    }
    const Counts after = dpdk_.counts();
    EXPECT_EQ(after.icmp_forwarded - before.icmp_forwarded, 1u) << what;
    EXPECT_EQ(after.tx - before.tx, 1u) << what;
    EXPECT_EQ(after.drops, before.drops) << what;
    EXPECT_EQ(dpdk_.flowsCreated(), dpdk_flows) << what << ": an error creates no flow";
    EXPECT_EQ(xdp_->flowsCreated(snap), xdp_flows) << what << ": an error creates no flow";
    EXPECT_EQ(backendPackets(to), packets) << what;
    EXPECT_EQ(dpdk_.backendReplyPackets(to), dpdk_replies + 1) << what;
    EXPECT_EQ(xdp_->backendReplyPackets(snap, to), xdp_replies + 1) << what;
  }
};

// The common case: a UDP service's backend has the port closed, and its kernel answers the
// client's datagram with port unreachable. Quotes of the RFC 792 minimum (header + 8), of
// Linux's 576-byte limit (IPv4) and of the whole datagram (IPv6: RFC 4443's 1280 bytes).
TEST_F(XdpIcmpFromNat, ABackendsPortUnreachableReachesTheClientFromTheVip) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr snap = icmpSnapshot(ids);
  const IcmpFlow dns{"dns", ip("192.0.2.53"), 53, LB_PROTO_UDP, ip("203.0.113.61"), 43001};
  const IcmpFlow dns6{"dns6", ip("2001:db8::53"), 53, LB_PROTO_UDP, ip("2001:db8:ff::61"), 43002};
  const std::tuple<IcmpFlow, const char*, uint16_t> cases[] = {
      {dns, "10.0.1.21", 5353}, {dns, "10.0.1.22", 5353},
      {dns6, "2001:db8:2::1", 53}, {dns6, "2001:db8:2::2", 5300}};
  for (const auto& [f, backend, port] : cases) {
    const bool v4 = f.vip.isV4();
    const uint32_t to = backendAt(*snap, ip(backend), port);
    for (const size_t quote : {v4 ? size_t{28} : size_t{48}, v4 ? size_t{548} : size_t{1232}}) {
      MacAddress from_mac;
      std::copy(snap->backends[to].mac, snap->backends[to].mac + 6, from_mac.bytes.begin());
      expectToClient(f, portUnreachable(v4, quote), *snap, to, ip(backend), from_mac,
                     v4 ? kGateway4Mac : kGateway6Mac,
                     fmt::format("{} port unreachable from {} quote {}", f.service, backend,
                                 quote));
    }
  }
  EXPECT_EQ(dpdk_.counts().icmp_forwarded, 8u);
}

// A router between Sluice and a NAT backend cannot pass the client's packet (a link of MTU 1400
// for a 1500-byte TCP segment; 1280 for IPv6), or its TTL ran out: the error, from the router,
// goes to the client from the VIP too (why the router's address is not kept:
// Pipeline::icmpErrorToClient()).
TEST_F(XdpIcmpFromNat, ARoutersErrorAboutAPacketToABackendReachesTheClientFromTheVip) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr snap = behindRouterSnapshot(ids);  // the router is the backends' next hop
  const IcmpFlow api{"api", ip("192.0.2.20"), 443, LB_PROTO_TCP, ip("203.0.113.62"), 43003};
  const IcmpFlow web6{"web6", kVip6, 443, LB_PROTO_TCP, ip("2001:db8:ff::62"), 43004};
  expectToClient(api, pmtuError(true, 548), *snap, backendAt(*snap, ip("10.0.2.2"), 8443),
                 kBehind4, kBehindMac, kGateway4Mac, "api frag-needed from a router");
  expectToClient(api, pmtuError(true, 28), *snap, backendAt(*snap, ip("10.0.2.1"), 8443),
                 kBehind4, kBehindMac, kGateway4Mac, "api frag-needed from a router, quote 28");
  expectToClient(api, IcmpErrorSpec{11, 0, 0, 28}, *snap,
                 backendAt(*snap, ip("10.0.2.1"), 8443), kBehind4, kBehindMac, kGateway4Mac,
                 "api time exceeded from a router");
  expectToClient(web6, pmtuError(false, 1232), *snap,
                 backendAt(*snap, ip("2001:db8:1::12"), 8443), kBehind6, kBehindMac,
                 kGateway6Mac, "web6 packet too big from a router");
  expectToClient(web6, IcmpErrorSpec{3, 0, 0, 1232}, *snap,
                 backendAt(*snap, ip("2001:db8:1::11"), 8443), kBehind6, kBehindMac,
                 kGateway6Mac, "web6 time exceeded from a router");
}

// Without a gateway MAC for IPv6 the error goes, as a NAT reply does, to the router learned from
// IPv6 client packets, and is dropped (no_next_hop) while there is none.
TEST_F(XdpIcmpFromNat, WithoutAGatewayMacTheLearnedRouterIsTheNextHop) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr only4 = behindRouterSnapshot(ids, false);
  ASSERT_FALSE(only4->has_gateway_mac6);
  const IcmpFlow web6{"web6", kVip6, 443, LB_PROTO_TCP, ip("2001:db8:ff::63"), 43005};
  const uint32_t to = backendAt(*only4, ip("2001:db8:1::11"), 8443);
  const Bytes error = pktgen::buildIcmpError(fromBehind(web6, kBehind6, kBehindMac), 2, 0, 1280,
                                             sentToBackend(web6, ip("2001:db8:1::11"), 8443), 1232);
  const Both r = run(error, *only4, false, kT0, "IPv6 error from behind NAT, nothing learned");
  EXPECT_EQ(r.dpdk.action, Action::kDrop);
  EXPECT_EQ(dpdk_.counts().drops[LB_DROP_NO_NEXT_HOP], 1u);
  EXPECT_EQ(dpdk_.counts().icmp_forwarded, 0u);
  IcmpFlow learned_from = web6;
  learned_from.cport = 43006;
  Bytes syn = learned_from.clientPacket();
  const MacAddress router = mac("02:00:00:00:0c:66");
  std::copy(router.bytes.begin(), router.bytes.end(), syn.begin() + 6);
  run(syn, *only4, false, kT0, "IPv6 NAT client packet");
  expectToClient(web6, pmtuError(false, 1232), *only4, to, kBehind6, kBehindMac, router,
                 "IPv6 error from behind NAT, router learned");
}

// What is not an error about a packet Sluice sent to a NAT backend goes on as before, to the
// kernel as no_service; and so does a quote cut short or malformed: not sent to a VIP, nothing
// ties it to Sluice.
TEST_F(XdpIcmpFromNat, WhatIsNotAboutANatBackendGoesOnAsBefore) {
  XDP_OR_SKIP();
  sluice::IdRegistry ids;
  const SnapshotPtr snap = icmpSnapshot(ids);
  const IcmpFlow dns{"dns", ip("192.0.2.53"), 53, LB_PROTO_UDP, ip("203.0.113.64"), 43007};
  const IcmpFlow dns6{"dns6", ip("2001:db8::53"), 53, LB_PROTO_UDP, ip("2001:db8:ff::64"), 43008};
  const IcmpFlow dnsdr{"dnsdr", ip("192.0.2.54"), 53, LB_PROTO_UDP, ip("203.0.113.65"), 43009};
  const IpAddress dns_backend = ip("10.0.1.21");
  const MacAddress dns_mac = mac("02:00:00:00:02:21");
  auto error = [](const IcmpFlow& f, const IpAddress& from, const PacketSpec& quoted,
                  size_t quote_len, bool v4 = true) {
    const IcmpErrorSpec e = portUnreachable(v4, quote_len);
    return pktgen::buildIcmpError(fromBehind(f, from, kBehindMac), e.type, e.code, e.rest,
                                  quoted, quote_len);
  };
  struct Case {
    std::string description;
    Bytes input;
  };
  std::vector<Case> cases;
  // A DR backend's error: the quote is the client's packet as DR forwarded it, to the VIP; nor
  // is a DR backend's own address a NAT reply's key.
  cases.push_back({"DR backend, quote to the VIP",
                   error(dnsdr, ip("10.0.4.1"), sentToBackend(dnsdr, dnsdr.vip, 53), 548)});
  cases.push_back({"DR backend, quote to its own address",
                   error(dnsdr, ip("10.0.4.1"), sentToBackend(dnsdr, ip("10.0.4.1"), 53), 548)});
  cases.push_back({"NAT backend's address, another port",
                   error(dns, dns_backend, sentToBackend(dns, dns_backend, 5354), 548)});
  {
    IcmpFlow tcp = dns;
    tcp.proto = LB_PROTO_TCP;  // dns is UDP
    cases.push_back({"NAT backend's address and port, another protocol",
                     error(tcp, dns_backend, sentToBackend(tcp, dns_backend, 5353), 548)});
  }
  {
    PacketSpec other = sentToBackend(dns, dns_backend, 5353);
    other.src = ip("203.0.113.66");  // not the client the error is sent to
    cases.push_back({"quote from another source than the error's destination",
                     error(dns, dns_backend, other, 548)});
    PacketSpec other6 = sentToBackend(dns6, ip("2001:db8:2::1"), 53);
    other6.src = ip("2001:db8:ff::66");
    cases.push_back({"IPv6 quote from another source than the error's destination",
                     error(dns6, ip("2001:db8:2::1"), other6, 1232, false)});
  }
  for (const size_t cut : {size_t{0}, size_t{10}, size_t{20}, size_t{27}}) {
    cases.push_back({fmt::format("IPv4 quote cut to {} bytes", cut),
                     error(dns, dns_backend, sentToBackend(dns, dns_backend, 5353), cut)});
  }
  for (const size_t cut : {size_t{39}, size_t{47}}) {
    cases.push_back({fmt::format("IPv6 quote cut to {} bytes", cut),
                     error(dns6, ip("2001:db8:2::1"), sentToBackend(dns6, ip("2001:db8:2::1"), 53),
                           cut, false)});
  }
  {
    Bytes q = pktgen::ipPacket(sentToBackend(dns, dns_backend, 5353));
    q.resize(28);
    q[0] = 0x44;
    cases.push_back({"IPv4 quote with IHL 4",
                     pktgen::buildIcmp(fromBehind(dns, dns_backend, dns_mac), 3, 3, 0, q)});
    PacketSpec frag = sentToBackend(dns, dns_backend, 5353);
    frag.frag_offset = 100;
    cases.push_back({"quote of a later fragment", error(dns, dns_backend, frag, 28)});
  }
  {
    PacketSpec o = fromBehind(dns, dns_backend, dns_mac);
    cases.push_back({"echo reply from a NAT backend to a client",
                     pktgen::buildIcmp(o, 0, 0, 0x00010001)});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.description);
    const Counts before = dpdk_.counts();
    const Both b = run(c.input, *snap, false, kT0, c.description);
    EXPECT_EQ(actionName(b.dpdk.action), std::string(actionName(Action::kPass)));
    const Counts after = dpdk_.counts();
    EXPECT_EQ(after.icmp_forwarded, before.icmp_forwarded);
    for (int r = 0; r < LB_DROP__COUNT; ++r) {
      EXPECT_EQ(after.drops[r] - before.drops[r], r == LB_DROP_NO_SERVICE ? 1u : 0u)
          << lb_drop_reason_name(r);
    }
  }
}

// A NAT reply or an error from behind NAT is taken only from the backend's next hop, the MAC the
// backend's requests are sent to: from anywhere else (the clients' gateway, another backend)
// both paths drop it as nat_reply_mac, untouched, on a port that takes any destination MAC too.
// A routed backend's next hop is its gateway; an unresolved backend has none, and nothing is
// taken from it.
TEST_F(XdpIcmpFromNat, RepliesAndErrorsAreTakenOnlyFromTheBackendsNextHop) {
  XDP_OR_SKIP();
  sluice::Config c = icmpConfig();
  for (sluice::BackendConfig& b : testsupport::service(c, "dns").backends) {
    if (b.address == ip("10.0.1.22")) {
      b.mac.reset();  // off-link: through the IPv4 gateway
    }
  }
  sluice::BackendConfig unresolved =
      testsupport::makeBackend("198.51.100.21", 5353, "02:00:00:00:02:77");
  unresolved.mac.reset();  // on-link, and nothing resolved it
  testsupport::service(c, "dns").backends.push_back(unresolved);
  sluice::validateConfig(c, "test");
  sluice::RuntimeState rt;
  rt.neighbours[kGateway4] = kGateway4Mac;
  rt.neighbours[kGateway6] = kGateway6Mac;
  sluice::IdRegistry ids;
  const SnapshotPtr snap = sluice::buildSnapshot(c, ids, 1, nullptr, &rt);
  ASSERT_EQ(snap->backends[backendAt(*snap, ip("10.0.1.22"), 5353)].state,
            sluice::BackendState::kUp);
  ASSERT_EQ(snap->backends[backendAt(*snap, ip("198.51.100.21"), 5353)].state,
            sluice::BackendState::kUnresolved);

  auto reply = [](const char* backend, uint16_t port, uint8_t proto, const MacAddress& from) {
    PacketSpec r;
    r.src_mac = from;
    r.dst_mac = kPortMac;
    r.src = ip(backend);
    r.dst = r.src.isV4() ? ip("203.0.113.90") : ip("2001:db8:ff::90");
    r.proto = proto;
    r.sport = port;
    r.dport = 33090;
    r.tcp_flags = 0x18;
    r.payload = Bytes(33, 0x90);
    return r;
  };
  struct Case {
    std::string description;
    PacketSpec reply;
    const char* vip;
    uint16_t vport;
    MacAddress to;
    bool taken;
  };
  const MacAddress zero{};
  const std::vector<Case> cases = {
      {"from the backend", reply("10.0.1.21", 5353, LB_PROTO_UDP, mac("02:00:00:00:02:21")),
       "192.0.2.53", 53, kGateway4Mac, true},
      {"from the clients' gateway", reply("10.0.1.21", 5353, LB_PROTO_UDP, kGateway4Mac),
       "192.0.2.53", 53, kGateway4Mac, false},
      {"from the other backend", reply("10.0.1.21", 5353, LB_PROTO_UDP, mac("02:00:00:00:02:22")),
       "192.0.2.53", 53, kGateway4Mac, false},
      {"routed, from its gateway", reply("10.0.1.22", 5353, LB_PROTO_UDP, kGateway4Mac),
       "192.0.2.53", 53, kGateway4Mac, true},
      {"routed, from its own MAC", reply("10.0.1.22", 5353, LB_PROTO_UDP, mac("02:00:00:00:02:22")),
       "192.0.2.53", 53, kGateway4Mac, false},
      {"unresolved, from its would-be MAC",
       reply("198.51.100.21", 5353, LB_PROTO_UDP, mac("02:00:00:00:02:77")), "192.0.2.53", 53,
       kGateway4Mac, false},
      {"unresolved, from the zero MAC", reply("198.51.100.21", 5353, LB_PROTO_UDP, zero),
       "192.0.2.53", 53, kGateway4Mac, false},
      {"IPv6 TCP, from the backend",
       reply("2001:db8:1::11", 8443, LB_PROTO_TCP, mac("02:00:00:00:03:11")), "2001:db8::10", 443,
       kGateway6Mac, true},
      {"IPv6 TCP, from the clients' gateway",
       reply("2001:db8:1::11", 8443, LB_PROTO_TCP, kGateway6Mac), "2001:db8::10", 443, kGateway6Mac,
       false},
      {"IPv6 UDP, from another host",
       reply("2001:db8:2::2", 5300, LB_PROTO_UDP, mac("02:00:00:00:05:01")), "2001:db8::53", 53,
       kGateway6Mac, false},
  };
  uint64_t dropped = 0;
  for (const bool any_mac : {false, true}) {
    for (const Case& k : cases) {
      const std::string what = k.description + (any_mac ? ", any MAC accepted" : "");
      const Bytes in = pktgen::build(k.reply);
      const Both b = run(in, *snap, any_mac, kT0, what);
      if (k.taken) {
        PacketSpec want = k.reply;
        want.src = ip(k.vip);
        want.sport = k.vport;
        want.src_mac = kPortMac;
        want.dst_mac = k.to;
        EXPECT_EQ(actionName(b.dpdk.action), std::string("tx")) << what;
        EXPECT_EQ(hex(b.dpdk.frame), hex(pktgen::build(want))) << what;
      } else {
        ++dropped;
        EXPECT_EQ(actionName(b.dpdk.action), std::string("drop")) << what;
      }
      EXPECT_EQ(dpdk_.counts().drops[LB_DROP_NAT_REPLY_MAC], dropped) << what;
    }
  }

  // Errors from behind NAT: port unreachable about a client's datagram to 10.0.1.21.
  const IcmpFlow dns{"dns", ip("192.0.2.53"), 53, LB_PROTO_UDP, ip("203.0.113.91"), 43091};
  const uint32_t to = backendAt(*snap, ip("10.0.1.21"), 5353);
  expectToClient(dns, portUnreachable(true, 548), *snap, to, ip("10.0.1.21"),
                 mac("02:00:00:00:02:21"), kGateway4Mac, "port unreachable from the backend");
  for (const MacAddress& from : {kGateway4Mac, mac("02:00:00:00:02:22"), kBehindMac}) {
    const std::string what = "port unreachable from " + from.str();
    const Bytes error =
        pktgen::buildIcmpError(fromBehind(dns, ip("10.0.1.21"), from), 3, 3, 0,
                               sentToBackend(dns, ip("10.0.1.21"), 5353), 548);
    const Both b = run(error, *snap, false, kT0, what);
    EXPECT_EQ(actionName(b.dpdk.action), std::string("drop")) << what;
    EXPECT_EQ(dpdk_.counts().drops[LB_DROP_NAT_REPLY_MAC], ++dropped) << what;
  }
  EXPECT_EQ(dpdk_.counts().icmp_forwarded, 1u);
  EXPECT_EQ(dpdk_.backendReplyPackets(to), 3u) << "two replies (once per port kind), one error";
}
#endif  // SLUICE_HAS_XDP

}  // namespace
