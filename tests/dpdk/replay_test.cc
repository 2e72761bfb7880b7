// End-to-end tests of `sluiced replay`: every test writes a capture (tools/pktgen) and a
// configuration into a fresh temporary directory, runs the real sluiced binary (DPDK EAL,
// net_pcap virtual device, --no-huge), and checks its JSON report and the packets it wrote.
//
// Expected output frames are rebuilt from scratch with pktgen::build (which computes every
// checksum over the whole header and payload), so the data plane's incremental checksum updates
// are checked against an independent computation, byte for byte.
//
// Set SLUICE_KEEP_TEST_DIRS=1 to keep the temporary directories for inspection.
#include <fcntl.h>
#include <pcap/pcap.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/lb_abi.h"
#include "common/net.h"
#include "tests/support/fixtures.h"
#include "tests/support/run.h"
#include "tools/pktgen/packet_builder.h"
#include "tools/pktgen/pcap_io.h"
#include "tools/pktgen/traffic.h"

#ifndef SLUICED_PATH
#error "SLUICED_PATH must name the sluiced binary under test"
#endif
#ifndef SOURCE_ROOT
#error "SOURCE_ROOT must name the repository root"
#endif

namespace {

using json = nlohmann::json;
using testsupport::readFile;
using testsupport::RunResult;
using testsupport::writeFile;

/** A fresh directory under /tmp for one test, removed at its end. */
class TempDir : public testsupport::TempDir {
 public:
  TempDir() : testsupport::TempDir("sluice-replay-test") {}
};
using pktgen::Bytes;
using pktgen::PacketSpec;
using pktgen::PcapRecord;
using sluice::IpAddress;
using sluice::MacAddress;
using testsupport::ip;
using testsupport::mac;

constexpr uint64_t kSecondUs = 1'000'000;
constexpr uint64_t kStartUs = 1700000000ull * kSecondUs;

// ---------------------------------------------------------------------------------------------
// Small helpers

MacAddress dstMacOf(const Bytes& frame) {
  MacAddress m;
  std::copy_n(frame.begin(), 6, m.bytes.begin());
  return m;
}

MacAddress srcMacOf(const Bytes& frame) {
  MacAddress m;
  std::copy_n(frame.begin() + 6, 6, m.bytes.begin());
  return m;
}

// The frame without its Ethernet addresses: what DR must leave untouched.
Bytes afterMacs(const Bytes& frame) {
  return frame.size() > 12 ? Bytes(frame.begin() + 12, frame.end()) : Bytes{};
}

void set16(Bytes& b, size_t at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v >> 8);
  b[at + 1] = static_cast<uint8_t>(v);
}

uint16_t get16(const Bytes& b, size_t at) { return static_cast<uint16_t>(b[at] << 8 | b[at + 1]); }

// Recompute the IPv4 header checksum of the header at l3 (after a deliberate corruption), so that
// a malformed packet is malformed only in the way the test intends.
void fixIpv4Checksum(Bytes& frame, size_t l3 = 14) {
  const size_t ihl = std::max<size_t>(20, (frame[l3] & 0x0f) * 4u);
  if (l3 + ihl > frame.size()) {
    return;
  }
  set16(frame, l3 + 10, 0);
  const uint16_t sum = pktgen::onesSum(std::span<const uint8_t>(frame).subspan(l3, ihl));
  set16(frame, l3 + 10, static_cast<uint16_t>(~sum));
}

// ---------------------------------------------------------------------------------------------
// Running sluiced

/** Run sluiced with args; stdout and stderr are captured through files in dir. */
RunResult runSluiced(const std::vector<std::string>& args, const TempDir& dir,
                     int timeout_s = 120) {
  testsupport::RunOptions opts;
  opts.timeout_s = timeout_s;
  return testsupport::runProgram(SLUICED_PATH, args, dir.path(), opts);
}

struct ReplayResult {
  RunResult run;
  json report;                    // the --json summary
  std::vector<PcapRecord> out;    // what sluiced transmitted
  std::string in_path, out_path;  // the capture files
  std::string error;              // empty when the replay succeeded and its output was read

  bool ok() const { return error.empty(); }
};

/**
 * Write `in` (and `config`, unless nullopt: the built-in default) into dir under `tag`, replay
 * it with --json (and --flows), and read the report and the output capture.
 */
ReplayResult replay(const TempDir& dir, std::string_view tag,
                    const std::optional<std::string>& config, const std::vector<PcapRecord>& in,
                    bool list_flows = false) {
  ReplayResult r;
  r.in_path = dir.file(fmt::format("{}-in.pcap", tag));
  r.out_path = dir.file(fmt::format("{}-out.pcap", tag));
  pktgen::writePcap(r.in_path, in);
  std::vector<std::string> args = {"replay", "--in", r.in_path, "--out", r.out_path, "--json"};
  if (config) {
    const std::string cfg = dir.file(fmt::format("{}.toml", tag));
    writeFile(cfg, *config);
    args.insert(args.begin() + 1, {"--config", cfg});
  }
  if (list_flows) {
    args.push_back("--flows");
  }
  r.run = runSluiced(args, dir);
  if (r.run.status != 0) {
    r.error = "replay failed\n" + r.run.describe();
    return r;
  }
  try {
    r.report = json::parse(r.run.out);
  } catch (const std::exception& e) {
    r.error = fmt::format("stdout is not one JSON object ({})\n{}", e.what(), r.run.describe());
    return r;
  }
  try {
    r.out = pktgen::readPcap(r.out_path);
  } catch (const std::exception& e) {
    r.error = fmt::format("cannot read the output capture: {}", e.what());
  }
  return r;
}

uint64_t num(const json& j, std::string_view key) { return j.at(std::string(key)).get<uint64_t>(); }

uint64_t dropped(const json& report, std::string_view reason) {
  return num(report.at("total").at("drops"), reason);
}

/** Every backend of every service of a report, each with its service's name as "service". */
json allBackends(const json& report) {
  json all = json::array();
  for (const json& s : report.at("services")) {
    for (json b : s.at("backends")) {
      b["service"] = s.at("name");
      all.push_back(std::move(b));
    }
  }
  return all;
}

/** The service endpoint of a flow_list row: "192.0.2.10:80" or "[2001:db8::10]:443". */
std::string vipEndpoint(const json& flow) {
  return sluice::formatEndpoint(*IpAddress::parse(flow.at("vip").get<std::string>()),
                                flow.at("port").get<uint16_t>());
}

/** The reasons a replay may count, in lb_abi.h order. */
std::vector<std::string> dropReasonNames() {
  std::vector<std::string> names;
  for (unsigned r = 0; r < LB_DROP__COUNT; ++r) {
    names.emplace_back(lb_drop_reason_name(r));
  }
  return names;
}

/**
 * Checks every report must pass: counts add up, every drop reason is present, the transmitted
 * packets are accounted for by the backends' counters, services sum their backends.
 */
void checkReportInvariants(const json& j, size_t capture_packets, size_t out_records) {
  SCOPED_TRACE("report invariants");
  EXPECT_EQ(num(j, "schema"), 1u);
  EXPECT_EQ(num(j, "capture_packets"), capture_packets);
  const json& t = j.at("total");
  EXPECT_EQ(num(t, "packets_in"), capture_packets);
  EXPECT_EQ(num(t, "packets_out"), out_records) << "packets_out must match the output capture";
  ASSERT_TRUE(t.at("drops").is_object());
  std::set<std::string> keys;
  uint64_t total = 0;
  for (const auto& [reason, count] : t.at("drops").items()) {
    keys.insert(reason);
    total += count.get<uint64_t>();
  }
  const std::vector<std::string> names = dropReasonNames();
  EXPECT_EQ(keys, std::set<std::string>(names.begin(), names.end()))
      << "\"drops\" must list every reason of lb_abi.h";
  EXPECT_EQ(num(t, "dropped"), total);
  // What is for no service or not IP is handed to the kernel (passed) as well as counted as a
  // drop; the host's own traffic is only passed (docs/json.md, "Worker, and the total").
  const uint64_t for_kernel = dropped(j, "non_ip") + dropped(j, "no_service");
  EXPECT_GE(num(t, "passed"), for_kernel);
  EXPECT_EQ(num(t, "packets_out") + num(t, "dropped") + num(t, "passed") - for_kernel,
            num(t, "packets_in"));

  uint64_t forwarded = 0;
  uint64_t replies = 0;
  uint64_t flows = 0;
  std::map<std::string, std::array<uint64_t, 3>> per_service;  // packets, flows, replies
  for (const json& b : allBackends(j)) {
    forwarded += num(b, "packets");
    replies += num(b, "reply_packets");
    flows += num(b, "new_flows");
    auto& s = per_service[b.at("service").get<std::string>()];
    s[0] += num(b, "packets");
    s[1] += num(b, "new_flows");
    s[2] += num(b, "reply_packets");
  }
  EXPECT_EQ(forwarded + replies + num(t, "answered"), num(t, "packets_out"))
      << "every transmitted packet is a forward or a NAT reply of some backend, or an answer "
         "(ARP, ND, echo) of the host";
  for (const json& s : j.at("services")) {
    const auto& sum = per_service[s.at("name").get<std::string>()];
    EXPECT_EQ(num(s, "packets"), sum[0]) << s.dump();
    EXPECT_EQ(num(s, "new_flows"), sum[1]) << s.dump();
    EXPECT_EQ(num(s, "reply_packets"), sum[2]) << s.dump();
  }
  const json& f = j.at("total");
  for (const char* k : {"flows_created", "flows_expired", "flows_evicted", "flows_active",
                        "flows_rescheduled"}) {
    EXPECT_TRUE(f.contains(k)) << "total." << k << " missing";
  }
  // Every flow created was scheduled to a backend (re-picks of closing TCP flows add more).
  EXPECT_GE(flows, num(f, "flows_created"));
  EXPECT_EQ(num(f, "flows_created"),
            num(f, "flows_active") + num(f, "flows_expired") + num(f, "flows_evicted"));
  // A worker object is the total's object plus its index (docs/json.md).
  for (const json& w : j.at("workers")) {
    json fields = w;
    EXPECT_EQ(fields.erase("worker"), 1u) << w.dump();
    std::set<std::string> wk;
    std::set<std::string> tk;
    for (const auto& [k, v] : fields.items()) {
      wk.insert(k);
    }
    for (const auto& [k, v] : t.items()) {
      tk.insert(k);
    }
    EXPECT_EQ(wk, tk);
  }
}

/** The one source MAC of all output frames (the replay port's MAC). */
std::optional<MacAddress> portMacOf(const std::vector<PcapRecord>& out) {
  if (out.empty()) {
    return std::nullopt;
  }
  const MacAddress m = srcMacOf(out.front().data);
  for (const PcapRecord& r : out) {
    if (srcMacOf(r.data) != m) {
      return std::nullopt;
    }
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Configurations

struct BackendDef {
  std::string address;
  std::string mac;
  uint32_t weight = 1;
  uint16_t port = 0;  // 0: leave it out (the service port)

  IpAddress ipAddr() const { return ip(address); }
  // Qualified: the member `mac` hides the function of that name here.
  MacAddress macAddr() const { return testsupport::mac(mac); }
};

struct ServiceDef {
  std::string name;
  std::string vip;
  uint16_t port = 0;
  std::string protocol;    // "tcp" / "udp"
  std::string forwarding;  // "dr" / "nat"
  std::vector<BackendDef> backends;

  uint8_t proto() const { return protocol == "tcp" ? LB_PROTO_TCP : LB_PROTO_UDP; }
  uint16_t backendPort(const BackendDef& b) const { return b.port != 0 ? b.port : port; }
  const BackendDef* backendByMac(const MacAddress& m) const {
    for (const BackendDef& b : backends) {
      if (b.macAddr() == m) {
        return &b;
      }
    }
    return nullptr;
  }
  const BackendDef* backendByEndpoint(const IpAddress& a, uint16_t p) const {
    for (const BackendDef& b : backends) {
      if (b.ipAddr() == a && backendPort(b) == p) {
        return &b;
      }
    }
    return nullptr;
  }
};

std::string serviceToml(const ServiceDef& s) {
  std::string t = fmt::format(
      "\n[[service]]\nname = \"{}\"\nvip = \"{}\"\nport = {}\nprotocol = \"{}\"\n"
      "forwarding = \"{}\"\n",
      s.name, s.vip, s.port, s.protocol, s.forwarding);
  for (const BackendDef& b : s.backends) {
    t += fmt::format("\n[[service.backend]]\naddress = \"{}\"\nmac = \"{}\"\nweight = {}\n",
                     b.address, b.mac, b.weight);
    if (b.port != 0) {
      t += fmt::format("port = {}\n", b.port);
    }
  }
  return t;
}

std::string configText(const std::vector<ServiceDef>& services, std::string_view header) {
  std::string t(header);
  for (const ServiceDef& s : services) {
    t += serviceToml(s);
  }
  return t;
}

constexpr std::string_view kGatewayHeader = R"([dataplane]
gateway_mac = "02:00:00:00:00:fe"

[timeouts]
tcp = 900
tcp_fin = 10
udp = 300
)";

const MacAddress kGatewayMac = mac("02:00:00:00:00:fe");
const MacAddress kClientMac = mac("02:00:00:00:00:aa");
const MacAddress kLbMac = mac("02:00:00:00:00:bb");

/** A JSON backend entry, or nullptr. */
const json* findBackend(const json& report, std::string_view service, const IpAddress& addr,
                        uint16_t port) {
  for (const json& s : report.at("services")) {
    if (s.at("name").get<std::string>() != service) {
      continue;
    }
    for (const json& b : s.at("backends")) {
      if (IpAddress::parse(b.at("address").get<std::string>()) == addr &&
          b.at("port").get<uint16_t>() == port) {
        return &b;
      }
    }
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Flows as seen in output frames

struct FlowId {
  IpAddress src, dst;
  uint8_t proto = 0;
  uint16_t sport = 0, dport = 0;
  auto operator<=>(const FlowId&) const = default;
};

FlowId flowOf(const pktgen::Decoded& d) { return {d.src, d.dst, d.proto, d.sport, d.dport}; }

std::string str(const FlowId& f) {
  return fmt::format("{} {} -> {}", f.proto == LB_PROTO_TCP ? "tcp" : "udp",
                     sluice::formatEndpoint(f.src, f.sport), sluice::formatEndpoint(f.dst, f.dport));
}

/** Stable merge of several captures by timestamp, then renumbered 1 us apart. */
std::vector<PcapRecord> mergeByTime(std::vector<std::vector<PcapRecord>> parts) {
  std::vector<PcapRecord> all;
  for (auto& p : parts) {
    all.insert(all.end(), std::make_move_iterator(p.begin()), std::make_move_iterator(p.end()));
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const PcapRecord& a, const PcapRecord& b) { return a.ts_us < b.ts_us; });
  return all;
}

/** Records from frames, one microsecond apart from `start`. */
std::vector<PcapRecord> records(const std::vector<Bytes>& frames, uint64_t start = kStartUs) {
  std::vector<PcapRecord> out;
  out.reserve(frames.size());
  for (size_t i = 0; i < frames.size(); ++i) {
    out.push_back({start + i, frames[i]});
  }
  return out;
}

// =============================================================================================
// 1. DR: per-flow stickiness, byte-identical frames except the MACs, counters add up.

const std::vector<ServiceDef> kDrServices = {
    {"web", "192.0.2.10", 80, "tcp", "dr",
     {{"10.0.0.11", "02:00:00:00:01:11", 100},
      {"10.0.0.12", "02:00:00:00:01:12", 100},
      {"10.0.0.13", "02:00:00:00:01:13", 200}}},
    {"dns", "192.0.2.20", 53, "udp", "dr",
     {{"10.0.0.21", "02:00:00:00:01:21", 1}, {"10.0.0.22", "02:00:00:00:01:22", 1}}},
    {"web6", "2001:db8::20", 80, "tcp", "dr",
     {{"2001:db8:1::21", "02:00:00:00:03:21", 1}, {"2001:db8:1::22", "02:00:00:00:03:22", 3}}},
};

const ServiceDef* serviceFor(const std::vector<ServiceDef>& services, const IpAddress& vip,
                             uint16_t port, uint8_t proto) {
  for (const ServiceDef& s : services) {
    if (ip(s.vip) == vip && s.port == port && s.proto() == proto) {
      return &s;
    }
  }
  return nullptr;
}

TEST(ReplayDr, EveryFlowSticksToOneBackendAndFramesAreUnchangedButTheMacs) {
  TempDir dir;
  pktgen::TrafficSpec tcp;
  tcp.vip = ip("192.0.2.10");
  tcp.vport = 80;
  tcp.proto = LB_PROTO_TCP;
  tcp.flows = 300;
  tcp.packets_per_flow = 4;  // SYN, 2 data, FIN
  pktgen::TrafficSpec udp;
  udp.vip = ip("192.0.2.20");
  udp.vport = 53;
  udp.proto = LB_PROTO_UDP;
  udp.flows = 200;
  udp.packets_per_flow = 3;
  udp.client_base = ip("203.0.113.1");
  udp.payload_bytes = 37;  // odd
  pktgen::TrafficSpec tcp6;
  tcp6.vip = ip("2001:db8::20");
  tcp6.vport = 80;
  tcp6.proto = LB_PROTO_TCP;
  tcp6.flows = 50;
  tcp6.packets_per_flow = 3;
  tcp6.start_us = kStartUs + 3;

  // VLAN-tagged UDP flows (one and two 802.1Q tags): DR must keep the tags.
  std::vector<PcapRecord> vlan;
  constexpr uint32_t kVlanFlows = 30;
  for (uint32_t pkt = 0; pkt < 2; ++pkt) {
    for (uint32_t f = 0; f < kVlanFlows; ++f) {
      PacketSpec s;
      s.src_mac = kClientMac;
      s.dst_mac = kLbMac;
      s.vlans = f % 2 == 0 ? std::vector<uint16_t>{100} : std::vector<uint16_t>{100, 200};
      s.src = IpAddress::v4(0xc6336400u + 100 + f);  // 198.51.100.(100 + f)
      s.dst = ip("192.0.2.20");
      s.proto = LB_PROTO_UDP;
      s.sport = static_cast<uint16_t>(40000 + f);
      s.dport = 53;
      s.payload = Bytes(20 + f, static_cast<uint8_t>(f));
      vlan.push_back({kStartUs + 5 + pkt * 100 + f, pktgen::build(s)});
    }
  }

  const size_t n_flows = tcp.flows + udp.flows + tcp6.flows + kVlanFlows;
  const std::vector<PcapRecord> in = mergeByTime(
      {pktgen::makeTraffic(tcp), pktgen::makeTraffic(udp), pktgen::makeTraffic(tcp6), vlan});
  ASSERT_EQ(in.size(), 300u * 4 + 200u * 3 + 50u * 3 + kVlanFlows * 2);

  const ReplayResult r = replay(dir, "dr", configText(kDrServices, kGatewayHeader), in, true);
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, in.size(), r.out.size());
  EXPECT_EQ(num(r.report.at("total"), "packets_out"), in.size());
  EXPECT_EQ(num(r.report.at("total"), "dropped"), 0u);
  ASSERT_EQ(r.out.size(), in.size()) << "every packet of a service with backends is forwarded";

  const auto port_mac = portMacOf(r.out);
  ASSERT_TRUE(port_mac.has_value()) << "all output frames must carry the same source MAC";
  EXPECT_FALSE(port_mac->isZero());
  EXPECT_FALSE(port_mac->isMulticast());
  // A replay takes frames for any MAC (the capture was taken on another host): kLbMac is not
  // the replay port's, and nothing was not_for_us.
  EXPECT_NE(*port_mac, kLbMac);
  EXPECT_EQ(dropped(r.report, "not_for_us"), 0u);

  // Byte identity after the MACs: match output frames to input frames as a multiset.
  std::map<Bytes, int> unmatched;
  std::map<FlowId, size_t> in_packets_per_flow;
  for (const PcapRecord& rec : in) {
    ++unmatched[afterMacs(rec.data)];
    const auto d = pktgen::decode(rec.data);
    ASSERT_TRUE(d.has_value());
    ++in_packets_per_flow[flowOf(*d)];
  }
  ASSERT_EQ(in_packets_per_flow.size(), n_flows);

  std::map<FlowId, std::set<MacAddress>> macs_per_flow;
  std::map<FlowId, size_t> out_packets_per_flow;
  std::map<MacAddress, std::array<uint64_t, 2>> per_mac;  // packets, bytes
  for (size_t i = 0; i < r.out.size(); ++i) {
    const Bytes& frame = r.out[i].data;
    auto it = unmatched.find(afterMacs(frame));
    ASSERT_TRUE(it != unmatched.end() && it->second > 0)
        << "output frame " << i << " differs from every input frame beyond bytes 0..11";
    --it->second;
    const auto d = pktgen::decode(frame);
    ASSERT_TRUE(d.has_value()) << "output frame " << i;
    EXPECT_TRUE(d->ip_checksum_ok && d->l4_checksum_ok) << "output frame " << i;
    const ServiceDef* svc = serviceFor(kDrServices, d->dst, d->dport, d->proto);
    ASSERT_NE(svc, nullptr) << "output frame " << i << " is not for a VIP: DR keeps the VIP";
    const MacAddress dst = dstMacOf(frame);
    EXPECT_NE(svc->backendByMac(dst), nullptr)
        << "output frame " << i << " goes to " << dst.str() << ", not a backend of " << svc->name;
    macs_per_flow[flowOf(*d)].insert(dst);
    ++out_packets_per_flow[flowOf(*d)];
    per_mac[dst][0] += 1;
    per_mac[dst][1] += frame.size();
  }
  EXPECT_EQ(out_packets_per_flow, in_packets_per_flow);
  std::map<MacAddress, uint64_t> flows_per_mac;
  for (const auto& [flow, macs] : macs_per_flow) {
    EXPECT_EQ(macs.size(), 1u) << str(flow) << " was sent to " << macs.size() << " backends";
    ++flows_per_mac[*macs.begin()];
  }

  // JSON backends agree with what was seen on the wire, and sum to the totals.
  uint64_t sum_packets = 0;
  uint64_t sum_flows = 0;
  for (const ServiceDef& s : kDrServices) {
    for (const BackendDef& b : s.backends) {
      const json* jb = findBackend(r.report, s.name, b.ipAddr(), s.port);
      ASSERT_NE(jb, nullptr) << s.name << " " << b.address;
      EXPECT_EQ(num(*jb, "packets"), per_mac[b.macAddr()][0]) << b.address;
      EXPECT_EQ(num(*jb, "bytes"), per_mac[b.macAddr()][1]) << b.address;
      EXPECT_EQ(num(*jb, "new_flows"), flows_per_mac[b.macAddr()]) << b.address;
      EXPECT_EQ(num(*jb, "reply_packets"), 0u);
      sum_packets += num(*jb, "packets");
      sum_flows += num(*jb, "new_flows");
    }
  }
  EXPECT_EQ(sum_packets, in.size());
  EXPECT_EQ(sum_flows, n_flows);
  EXPECT_EQ(num(r.report.at("total"), "flows_created"), n_flows);
  EXPECT_EQ(num(r.report.at("total"), "flows_evicted"), 0u);
  EXPECT_EQ(num(r.report.at("total"), "flows_rescheduled"), 0u);

  // --flows: one entry per flow, naming the backend its packets went to.
  ASSERT_TRUE(r.report.contains("flow_list"));
  const json& fl = r.report.at("flow_list");
  EXPECT_EQ(fl.size(), n_flows);
  std::map<std::pair<std::string, std::string>, const json*> listed;
  for (const json& e : fl) {
    listed[{e.at("client").get<std::string>(), vipEndpoint(e)}] = &e;
  }
  for (const auto& [flow, macs] : macs_per_flow) {
    const auto it = listed.find({sluice::formatEndpoint(flow.src, flow.sport),
                                 sluice::formatEndpoint(flow.dst, flow.dport)});
    ASSERT_NE(it, listed.end()) << str(flow) << " missing from flow_list";
    const json& e = *it->second;
    const ServiceDef* svc = serviceFor(kDrServices, flow.dst, flow.dport, flow.proto);
    ASSERT_NE(svc, nullptr);
    EXPECT_EQ(e.at("service").get<std::string>(), svc->name);
    EXPECT_EQ(e.at("protocol").get<std::string>(), svc->protocol);
    const BackendDef* b = svc->backendByMac(*macs.begin());
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(e.at("backend").get<std::string>(),
              sluice::formatEndpoint(b->ipAddr(), svc->port))
        << str(flow);
  }
}

// =============================================================================================
// 2. NAT: forward rewrite to backend address/port, replies rewritten back to the VIP, checksums
//    valid (and equal to a from-scratch computation), IPv4 UDP zero checksum kept.

const std::vector<ServiceDef> kNatServices = {
    {"dns", "192.0.2.53", 53, "udp", "nat",
     {{"10.0.1.21", "02:00:00:00:02:21", 1, 5353}, {"10.0.1.22", "02:00:00:00:02:22", 1, 5353}}},
    {"app", "192.0.2.80", 80, "tcp", "nat",
     {{"10.0.2.1", "02:00:00:00:04:01", 1, 8080},
      {"10.0.2.2", "02:00:00:00:04:02", 1, 8080},
      {"10.0.2.3", "02:00:00:00:04:03", 2, 8081}}},
    {"web6", "2001:db8::10", 443, "tcp", "nat",
     {{"2001:db8:1::11", "02:00:00:00:03:11", 1, 8443},
      {"2001:db8:1::12", "02:00:00:00:03:12", 1, 8443}}},
    {"dns6", "2001:db8::53", 53, "udp", "nat",
     {{"2001:db8:2::1", "02:00:00:00:05:01", 1, 5353},
      {"2001:db8:2::2", "02:00:00:00:05:02", 1, 5353}}},
};

struct ClientPacket {
  PacketSpec spec;
  size_t service = 0;  // index into the service list
  size_t flow = 0;     // index into the flow list
};

/** Client packets of `flows_per_service` flows for every service, interleaved. */
std::vector<ClientPacket> natClientPackets(const std::vector<ServiceDef>& services,
                                           uint32_t flows_per_service, uint32_t zero_csum_flows) {
  std::vector<std::vector<ClientPacket>> per_flow;
  size_t flow_index = 0;
  for (size_t si = 0; si < services.size(); ++si) {
    const ServiceDef& s = services[si];
    const IpAddress vip = ip(s.vip);
    for (uint32_t f = 0; f < flows_per_service; ++f) {
      IpAddress client;
      if (vip.isV4()) {
        client = IpAddress::v4(0xc6336400u + static_cast<uint32_t>(si) * 256 / 4 + f);
      } else {
        client = ip(fmt::format("2001:db8:ff::{:x}", 0x100 * (si + 1) + f));
      }
      const bool zero_csum = s.proto() == LB_PROTO_UDP && vip.isV4() && f < zero_csum_flows;
      std::vector<ClientPacket> pkts;
      const uint32_t count = s.proto() == LB_PROTO_TCP ? 3 : 2;
      for (uint32_t p = 0; p < count; ++p) {
        ClientPacket cp;
        cp.service = si;
        cp.flow = flow_index;
        PacketSpec& sp = cp.spec;
        sp.src_mac = kClientMac;
        sp.dst_mac = kLbMac;
        sp.src = client;
        sp.dst = vip;
        sp.proto = s.proto();
        sp.sport = static_cast<uint16_t>(20000 + 37 * f + si);
        sp.dport = s.port;
        sp.ip_id = static_cast<uint16_t>(f * 10 + p);
        sp.udp_zero_checksum = zero_csum;
        // Payload lengths vary, odd and even, so the checksums cover trailing odd bytes.
        const size_t len = (p == 0 && sp.proto == LB_PROTO_TCP) ? 0 : 1 + (f * 13 + p * 7) % 200;
        sp.payload.resize(len);
        for (size_t k = 0; k < len; ++k) {
          sp.payload[k] = static_cast<uint8_t>(f * 31 + p * 17 + k * 3);
        }
        if (sp.proto == LB_PROTO_TCP) {
          sp.tcp_flags = p == 0 ? 0x02 : (p + 1 == count ? 0x11 : 0x18);
          sp.seq = 1000 + f * 7919 + p;
          sp.ack = p == 0 ? 0 : 5000 + f;
        }
        pkts.push_back(std::move(cp));
      }
      per_flow.push_back(std::move(pkts));
      ++flow_index;
    }
  }
  std::vector<ClientPacket> out;
  for (size_t p = 0;; ++p) {
    bool any = false;
    for (const auto& f : per_flow) {
      if (p < f.size()) {
        out.push_back(f[p]);
        any = true;
      }
    }
    if (!any) {
      break;
    }
  }
  return out;
}

struct NatFlowState {
  const BackendDef* backend = nullptr;
  size_t service = 0;
  PacketSpec first;  // the client's first packet
};

TEST(ReplayNat, ForwardAndReplyRewritesWithValidChecksums) {
  TempDir dir;
  const std::string config = configText(kNatServices, kGatewayHeader);
  const std::vector<ClientPacket> clients = natClientPackets(kNatServices, 25, 6);
  std::vector<Bytes> client_frames;
  for (const ClientPacket& c : clients) {
    client_frames.push_back(pktgen::build(c.spec));
  }

  // Run 1: client packets only. Every one is forwarded, rewritten to its flow's backend.
  const ReplayResult fwd = replay(dir, "nat-fwd", config, records(client_frames), true);
  ASSERT_TRUE(fwd.ok()) << fwd.error;
  checkReportInvariants(fwd.report, client_frames.size(), fwd.out.size());
  ASSERT_EQ(fwd.out.size(), client_frames.size()) << fwd.report.dump(1);
  const auto port_mac = portMacOf(fwd.out);
  ASSERT_TRUE(port_mac.has_value());

  std::map<size_t, NatFlowState> flows;
  std::map<const BackendDef*, uint64_t> forwards_per_backend;
  size_t zero_checked = 0;
  for (size_t i = 0; i < clients.size(); ++i) {
    SCOPED_TRACE(fmt::format("client packet {}", i));
    const ClientPacket& c = clients[i];
    const ServiceDef& svc = kNatServices[c.service];
    const Bytes& frame = fwd.out[i].data;  // one queue, one worker: order is kept
    const auto d = pktgen::decode(frame);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->src, c.spec.src);
    EXPECT_EQ(d->sport, c.spec.sport);
    const BackendDef* b = svc.backendByEndpoint(d->dst, d->dport);
    ASSERT_NE(b, nullptr) << "forwarded to " << sluice::formatEndpoint(d->dst, d->dport)
                          << ", not a backend of " << svc.name;
    EXPECT_EQ(dstMacOf(frame), b->macAddr());
    EXPECT_EQ(srcMacOf(frame), *port_mac);
    EXPECT_TRUE(d->ip_checksum_ok) << "IPv4 header checksum";
    EXPECT_TRUE(d->l4_checksum_ok) << "TCP/UDP checksum";
    if (c.spec.udp_zero_checksum) {
      EXPECT_TRUE(d->udp_checksum_zero) << "an IPv4 UDP checksum of 0 (none) must stay 0";
      ++zero_checked;
    } else {
      EXPECT_FALSE(d->udp_checksum_zero);
    }
    // Byte for byte what a from-scratch build of the rewritten packet gives.
    PacketSpec want = c.spec;
    want.dst = b->ipAddr();
    want.dport = svc.backendPort(*b);
    want.dst_mac = b->macAddr();
    want.src_mac = *port_mac;
    EXPECT_EQ(frame, pktgen::build(want));

    auto [it, fresh] = flows.try_emplace(c.flow, NatFlowState{b, c.service, c.spec});
    EXPECT_EQ(it->second.backend, b) << "a flow changed backend";
    ++forwards_per_backend[b];
  }
  EXPECT_GT(zero_checked, 0u);
  for (size_t si = 0; si < kNatServices.size(); ++si) {
    std::set<const BackendDef*> used;
    for (const auto& [f, st] : flows) {
      if (st.service == si) {
        used.insert(st.backend);
      }
    }
    EXPECT_GT(used.size(), 1u) << kNatServices[si].name << ": 25 flows all on one backend";
  }

  // Run 2: the same client packets, then replies from each flow's backend (two per flow), then a
  // reply from a port that no NAT service uses.
  std::vector<PacketSpec> replies;
  for (const auto& [f, st] : flows) {
    const ServiceDef& svc = kNatServices[st.service];
    for (int k = 0; k < 2; ++k) {
      PacketSpec sp;
      sp.src_mac = st.backend->macAddr();
      sp.dst_mac = kLbMac;
      sp.src = st.backend->ipAddr();
      sp.sport = svc.backendPort(*st.backend);
      sp.dst = st.first.src;
      sp.dport = st.first.sport;
      sp.proto = svc.proto();
      sp.udp_zero_checksum = st.first.udp_zero_checksum;
      sp.ip_id = static_cast<uint16_t>(f * 2 + k);
      sp.payload.resize(k == 0 && sp.proto == LB_PROTO_TCP ? 0 : 3 + (f * 29 + k) % 300);
      for (size_t i = 0; i < sp.payload.size(); ++i) {
        sp.payload[i] = static_cast<uint8_t>(f + i * 7 + k);
      }
      if (sp.proto == LB_PROTO_TCP) {
        sp.tcp_flags = k == 0 ? 0x12 : 0x18;  // SYN+ACK, then PSH+ACK with data
        sp.seq = 5000 + static_cast<uint32_t>(f) + k;
        sp.ack = st.first.seq + 1;
      }
      replies.push_back(std::move(sp));
    }
  }
  PacketSpec stray;  // a backend address, but a port no service maps: not a NAT reply
  stray.src = ip("10.0.1.21");
  stray.sport = 9999;
  stray.dst = IpAddress::v4(0xc6336401u);
  stray.dport = 20000;
  stray.proto = LB_PROTO_UDP;
  stray.payload = Bytes(10, 1);

  std::vector<Bytes> frames = client_frames;
  for (const PacketSpec& sp : replies) {
    frames.push_back(pktgen::build(sp));
  }
  frames.push_back(pktgen::build(stray));

  const ReplayResult both = replay(dir, "nat-both", config, records(frames));
  ASSERT_TRUE(both.ok()) << both.error;
  checkReportInvariants(both.report, frames.size(), both.out.size());
  EXPECT_EQ(dropped(both.report, "no_service"), 1u);
  EXPECT_EQ(num(both.report.at("total"), "dropped"), 1u);
  ASSERT_EQ(both.out.size(), frames.size() - 1);
  for (size_t i = 0; i < client_frames.size(); ++i) {
    EXPECT_EQ(both.out[i].data, fwd.out[i].data) << "client packet " << i << " changed between runs";
  }
  std::map<const BackendDef*, uint64_t> replies_per_backend;
  size_t ri = 0;
  for (const auto& [f, st] : flows) {
    const ServiceDef& svc = kNatServices[st.service];
    for (int k = 0; k < 2; ++k, ++ri) {
      SCOPED_TRACE(fmt::format("reply {} of flow {} ({})", k, f, svc.name));
      const Bytes& frame = both.out[client_frames.size() + ri].data;
      const auto d = pktgen::decode(frame);
      ASSERT_TRUE(d.has_value());
      EXPECT_EQ(d->src, ip(svc.vip)) << "reply source must be the VIP";
      EXPECT_EQ(d->sport, svc.port) << "reply source port must be the service port";
      EXPECT_EQ(d->dst, st.first.src);
      EXPECT_EQ(d->dport, st.first.sport);
      EXPECT_EQ(dstMacOf(frame), kGatewayMac) << "replies go to the configured gateway_mac";
      EXPECT_EQ(srcMacOf(frame), *port_mac);
      EXPECT_TRUE(d->ip_checksum_ok);
      EXPECT_TRUE(d->l4_checksum_ok);
      EXPECT_EQ(d->udp_checksum_zero, replies[ri].udp_zero_checksum);
      PacketSpec want = replies[ri];
      want.src = ip(svc.vip);
      want.sport = svc.port;
      want.dst_mac = kGatewayMac;
      want.src_mac = *port_mac;
      EXPECT_EQ(frame, pktgen::build(want));
      ++replies_per_backend[st.backend];
    }
  }
  for (const ServiceDef& s : kNatServices) {
    for (const BackendDef& b : s.backends) {
      const json* jb = findBackend(both.report, s.name, b.ipAddr(), s.backendPort(b));
      ASSERT_NE(jb, nullptr) << s.name << " " << b.address;
      EXPECT_EQ(num(*jb, "packets"), forwards_per_backend[&b]) << b.address;
      EXPECT_EQ(num(*jb, "reply_packets"), replies_per_backend[&b]) << b.address;
    }
  }
}

TEST(ReplayNat, WithoutGatewayMacRepliesGoToTheLastNatClientsMac) {
  TempDir dir;
  // Two NAT services and one DR service, no [dataplane] gateway_mac.
  std::vector<ServiceDef> services = {kNatServices[0], kNatServices[1], kDrServices[0]};
  const std::string config = configText(services, "[timeouts]\nudp = 300\n");
  const ServiceDef& dns = services[0];
  const ServiceDef& app = services[1];

  const MacAddress mac_x = mac("02:00:00:00:aa:01");
  const MacAddress mac_y = mac("02:00:00:00:aa:02");
  const MacAddress mac_z = mac("02:00:00:00:aa:03");
  const IpAddress client_x = ip("198.51.100.7");
  const IpAddress client_y = ip("198.51.100.8");
  const IpAddress client_z = ip("198.51.100.9");

  auto client = [&](const MacAddress& m, const IpAddress& a, const ServiceDef& s) {
    PacketSpec sp;
    sp.src_mac = m;
    sp.dst_mac = kLbMac;
    sp.src = a;
    sp.sport = 33333;
    sp.dst = ip(s.vip);
    sp.dport = s.port;
    sp.proto = s.proto();
    sp.tcp_flags = 0x02;
    sp.payload = s.proto() == LB_PROTO_UDP ? Bytes(21, 0x5a) : Bytes{};
    return sp;
  };
  // Replies are rewritten statelessly (by backend endpoint), so any backend of the service will
  // do; the first one is used.
  auto reply = [&](const IpAddress& to, const ServiceDef& s, uint8_t tag) {
    PacketSpec sp;
    sp.src_mac = s.backends[0].macAddr();
    sp.dst_mac = kLbMac;
    sp.src = s.backends[0].ipAddr();
    sp.sport = s.backendPort(s.backends[0]);
    sp.dst = to;
    sp.dport = 33333;
    sp.proto = s.proto();
    sp.tcp_flags = 0x12;
    sp.ip_id = tag;
    sp.payload = s.proto() == LB_PROTO_UDP ? Bytes(15, tag) : Bytes{};
    return sp;
  };

  struct Step {
    PacketSpec spec;
    std::optional<MacAddress> want_dst;  // nullopt: dropped
    bool is_reply;
  };
  const std::vector<Step> steps = {
      {reply(client_x, dns, 1), std::nullopt, true},  // nothing learned yet: no_next_hop
      {client(mac_x, client_x, dns), dns.backends[0].macAddr(), false},
      {reply(client_x, dns, 2), mac_x, true},
      {client(mac_y, client_y, services[2]), std::nullopt, false},  // DR client: learns nothing
      {reply(client_x, dns, 3), mac_x, true},
      {client(mac_z, client_z, app), std::nullopt, false},
      {reply(client_z, app, 4), mac_z, true},
      {reply(client_x, dns, 5), mac_z, true},  // the last NAT client's MAC, whatever the service
  };
  std::vector<Bytes> frames;
  for (const Step& s : steps) {
    frames.push_back(pktgen::build(s.spec));
  }
  const ReplayResult r = replay(dir, "nat-nogw", config, records(frames));
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, frames.size(), r.out.size());
  EXPECT_EQ(dropped(r.report, "no_next_hop"), 1u);
  EXPECT_EQ(num(r.report.at("total"), "dropped"), 1u);
  ASSERT_EQ(r.out.size(), frames.size() - 1);
  for (size_t i = 1; i < steps.size(); ++i) {
    SCOPED_TRACE(fmt::format("step {}", i));
    const Bytes& frame = r.out[i - 1].data;
    const auto d = pktgen::decode(frame);
    ASSERT_TRUE(d.has_value());
    EXPECT_TRUE(d->ip_checksum_ok && d->l4_checksum_ok);
    if (steps[i].is_reply) {
      EXPECT_EQ(dstMacOf(frame), *steps[i].want_dst);
      const ServiceDef& s = d->proto == LB_PROTO_UDP ? dns : app;
      EXPECT_EQ(d->src, ip(s.vip));
      EXPECT_EQ(d->sport, s.port);
    } else if (steps[i].want_dst) {
      // Client packets go to a backend of their service (which one is Maglev's choice).
      EXPECT_EQ(d->src, steps[i].spec.src);
    }
  }
}

TEST(ReplayNat, JumboFramesSpanningSeveralMbufsAreRewrittenCorrectly) {
  // Frames bigger than one mbuf's data room (2 KiB) arrive as mbuf chains: the headers are in
  // the first segment and the checksums cover all of them.
  //
  // DPDK's net_pcap writes a multi-segment mbuf through a bounce buffer of RTE_ETH_PCAP_SNAPLEN
  // (16128 bytes in DPDK 22.11) and records longer frames truncated to it (caplen 16128, len
  // the full length). That is the capture device, not Sluice: for such frames the output is
  // checked as a prefix of the expected frame (all headers and checksums are in the prefix).
  TempDir dir;
  std::vector<ServiceDef> services = kNatServices;
  services.push_back(kDrServices[0]);
  const std::string config = configText(services, kGatewayHeader);
  std::vector<PacketSpec> specs;
  for (uint32_t i = 0; i < 6; ++i) {
    const ServiceDef& s = services[i % services.size()];
    PacketSpec sp;
    sp.src_mac = kClientMac;
    sp.dst_mac = kLbMac;
    sp.dst = ip(s.vip);
    sp.src = ip(sp.dst.isV4() ? "198.51.100.200" : "2001:db8:ff::200");
    sp.sport = static_cast<uint16_t>(50000 + i);
    sp.dport = s.port;
    sp.proto = s.proto();
    sp.tcp_flags = 0x18;
    // Up to 60,000 bytes: an mbuf chain of ~30 segments.
    const size_t sizes[] = {2500, 4001, 9000, 16000, 33333, 60000};
    sp.payload.resize(sizes[i]);
    for (size_t k = 0; k < sp.payload.size(); ++k) {
      sp.payload[k] = static_cast<uint8_t>(k * 11 + i);
    }
    specs.push_back(sp);
  }
  std::vector<Bytes> frames;
  for (const PacketSpec& sp : specs) {
    frames.push_back(pktgen::build(sp));
  }
  const ReplayResult r = replay(dir, "jumbo", config, records(frames));
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, frames.size(), r.out.size());
  ASSERT_EQ(r.out.size(), frames.size()) << r.report.dump(1);
  constexpr size_t kPcapTxLimit = 16128;  // RTE_ETH_PCAP_SNAPLEN
  // out is the whole of want, or (for frames past the net_pcap limit) at least its first
  // kPcapTxLimit bytes.
  auto matches = [&](const Bytes& out, const Bytes& want) {
    if (out.size() == want.size()) {
      return out == want;
    }
    return want.size() > kPcapTxLimit && out.size() >= kPcapTxLimit && out.size() < want.size() &&
           std::equal(out.begin(), out.end(), want.begin());
  };
  for (size_t i = 0; i < specs.size(); ++i) {
    SCOPED_TRACE(fmt::format("jumbo frame {} ({} bytes)", i, frames[i].size()));
    const Bytes& frame = r.out[i].data;
    if (frames[i].size() <= kPcapTxLimit) {
      ASSERT_EQ(frame.size(), frames[i].size());
      const auto d = pktgen::decode(frame);
      ASSERT_TRUE(d.has_value());
      EXPECT_TRUE(d->ip_checksum_ok);
      EXPECT_TRUE(d->l4_checksum_ok);
    }
    const ServiceDef& s = services[i % services.size()];
    if (s.forwarding == "dr") {
      Bytes want = frames[i];
      std::copy_n(frame.begin(), 12, want.begin());
      EXPECT_TRUE(matches(frame, want)) << "DR changed the frame beyond its MACs";
      EXPECT_NE(s.backendByMac(dstMacOf(frame)), nullptr);
    } else {
      // Which backend is Maglev's choice: accept the one whose rewrite matches.
      const BackendDef* hit = nullptr;
      for (const BackendDef& b : s.backends) {
        PacketSpec want = specs[i];
        want.dst = b.ipAddr();
        want.dport = s.backendPort(b);
        want.dst_mac = b.macAddr();
        want.src_mac = srcMacOf(frame);
        if (matches(frame, pktgen::build(want))) {
          hit = &b;
        }
      }
      EXPECT_NE(hit, nullptr) << "the output is no backend's correctly rewritten frame";
    }
  }
}

// NAT on frames whose layout differs from the plain case, and checksums that land on the values
// one's-complement arithmetic treats specially. Single-backend services, so the rewritten
// packet is known before the replay and can be built from scratch for a byte comparison.
const std::vector<ServiceDef> kSoloServices = {
    {"solo-udp", "192.0.2.61", 53, "udp", "nat", {{"10.0.7.1", "02:00:00:00:07:01", 1, 5353}}},
    {"solo-tcp", "192.0.2.61", 80, "tcp", "nat", {{"10.0.7.1", "02:00:00:00:07:01", 1, 8080}}},
    {"solo6", "2001:db8::61", 443, "tcp", "nat",
     {{"2001:db8:7::1", "02:00:00:00:07:06", 1, 8443}}},
};

/** Insert 4 bytes of IPv4 options (NOP NOP NOP EOL) after the IPv4 header at l3. */
void addIpv4Options(Bytes& f, size_t l3 = 14) {
  const uint8_t opts[] = {1, 1, 1, 0};
  f.insert(f.begin() + static_cast<std::ptrdiff_t>(l3 + 20), std::begin(opts), std::end(opts));
  f[l3] = 0x46;
  set16(f, l3 + 2, static_cast<uint16_t>(get16(f, l3 + 2) + 4));
  fixIpv4Checksum(f, l3);
}

/** Set payload bytes 0..1 to the first value for which pred(spec) holds. */
bool craftPayload(PacketSpec& s, const std::function<bool(const PacketSpec&)>& pred) {
  if (s.payload.size() < 2) {
    s.payload.resize(2);
  }
  for (uint32_t v = 0; v < 65536; ++v) {
    s.payload[0] = static_cast<uint8_t>(v >> 8);
    s.payload[1] = static_cast<uint8_t>(v);
    if (pred(s)) {
      return true;
    }
  }
  return false;
}

TEST(ReplayNat, VlanOptionsPaddingExtensionHeadersAndChecksumCornerValues) {
  TempDir dir;
  const std::string config = configText(kSoloServices, kGatewayHeader);
  const ServiceDef& su = kSoloServices[0];
  const ServiceDef& st = kSoloServices[1];
  const ServiceDef& s6 = kSoloServices[2];

  auto toVip = [](const ServiceDef& s, uint16_t sport) {
    PacketSpec sp;
    sp.src_mac = kClientMac;
    sp.dst_mac = kLbMac;
    sp.dst = ip(s.vip);
    sp.src = ip(sp.dst.isV4() ? "198.51.100.61" : "2001:db8:ff::61");
    sp.sport = sport;
    sp.dport = s.port;
    sp.proto = s.proto();
    sp.tcp_flags = 0x18;
    sp.seq = 77;
    sp.payload = Bytes(19, 0x3c);
    return sp;
  };
  auto fromBackend = [](const ServiceDef& s, uint16_t dport) {
    const BackendDef& b = s.backends[0];
    PacketSpec sp;
    sp.src_mac = b.macAddr();
    sp.dst_mac = kLbMac;
    sp.src = b.ipAddr();
    sp.sport = s.backendPort(b);
    sp.dst = ip(b.ipAddr().isV4() ? "198.51.100.61" : "2001:db8:ff::61");
    sp.dport = dport;
    sp.proto = s.proto();
    sp.tcp_flags = 0x18;
    sp.seq = 99;
    sp.payload = Bytes(23, 0xc3);
    return sp;
  };
  // What Sluice should make of a packet: forward to the backend, or reply from the VIP. The
  // source MAC (the port's) is filled in after the replay.
  auto forwarded = [](const ServiceDef& s, PacketSpec sp) {
    const BackendDef& b = s.backends[0];
    sp.dst = b.ipAddr();
    sp.dport = s.backendPort(b);
    sp.dst_mac = b.macAddr();
    return sp;
  };
  auto replied = [](const ServiceDef& s, PacketSpec sp) {
    sp.src = ip(s.vip);
    sp.sport = s.port;
    sp.dst_mac = kGatewayMac;
    return sp;
  };
  auto l4Csum = [](const PacketSpec& sp) {
    const Bytes f = pktgen::build(sp);
    const size_t l4 = 14 + 4 * sp.vlans.size() + (sp.src.isV4() ? 20 : 40 + 8 * sp.ipv6_ext.size());
    return get16(f, l4 + (sp.proto == LB_PROTO_TCP ? 16 : 6));
  };

  struct Case {
    std::string what;
    PacketSpec in;
    PacketSpec want;
    std::function<void(Bytes&)> post = [](Bytes&) {};  // applied to input and expectation
  };
  std::vector<Case> cases;
  uint16_t port = 41000;
  auto fwd = [&](std::string what, const ServiceDef& s, std::function<void(PacketSpec&)> edit,
                 std::function<void(Bytes&)> post = [](Bytes&) {}) {
    PacketSpec in = toVip(s, port++);
    edit(in);
    cases.push_back({std::move(what), in, forwarded(s, in), std::move(post)});
  };
  auto rep = [&](std::string what, const ServiceDef& s, std::function<void(PacketSpec&)> edit,
                 std::function<void(Bytes&)> post = [](Bytes&) {}) {
    PacketSpec in = fromBackend(s, port++);
    edit(in);
    cases.push_back({std::move(what), in, replied(s, in), std::move(post)});
  };
  auto none = [](PacketSpec&) {};

  fwd("UDP forward, 802.1Q tagged", su, [](PacketSpec& p) { p.vlans = {42}; });
  fwd("TCP forward, two 802.1Q tags", st, [](PacketSpec& p) { p.vlans = {42, 43}; });
  rep("UDP reply, 802.1Q tagged", su, [](PacketSpec& p) { p.vlans = {42}; });
  fwd("TCP forward, IPv4 options", st, none, [](Bytes& f) { addIpv4Options(f); });
  rep("TCP reply, IPv4 options", st, none, [](Bytes& f) { addIpv4Options(f); });
  fwd("UDP forward, IPv4 options", su, none, [](Bytes& f) { addIpv4Options(f); });
  fwd("TCP SYN forward, Ethernet padding", st,
      [](PacketSpec& p) {
        p.payload.clear();
        p.tcp_flags = 0x02;
      },
      [](Bytes& f) { f.resize(60, 0); });
  rep("UDP reply, Ethernet padding", su, [](PacketSpec& p) { p.payload = Bytes(3, 7); },
      [](Bytes& f) { f.resize(60, 0); });
  fwd("IPv6 TCP forward, destination-options header", s6,
      [](PacketSpec& p) { p.ipv6_ext = {60}; });
  rep("IPv6 TCP reply, hop-by-hop header", s6, [](PacketSpec& p) { p.ipv6_ext = {0}; });

  // Checksum corner values. UDP: a computed 0 is sent as 0xFFFF (RFC 768), and 0xFFFF in the
  // input is a valid checksum to update. TCP: 0x0000 is an ordinary value.
  auto craftFwd = [&](std::string what, const ServiceDef& s,
                      std::function<bool(const PacketSpec& in, const PacketSpec& out)> pred) {
    PacketSpec in = toVip(s, port++);
    const bool found = craftPayload(in, [&](const PacketSpec& p) { return pred(p, forwarded(s, p)); });
    ASSERT_TRUE(found) << what;
    cases.push_back({std::move(what), in, forwarded(s, in)});
  };
  auto craftRep = [&](std::string what, const ServiceDef& s,
                      std::function<bool(const PacketSpec& in, const PacketSpec& out)> pred) {
    PacketSpec in = fromBackend(s, port++);
    const bool found = craftPayload(in, [&](const PacketSpec& p) { return pred(p, replied(s, p)); });
    ASSERT_TRUE(found) << what;
    cases.push_back({std::move(what), in, replied(s, in)});
  };
  craftFwd("UDP forward whose new checksum computes to 0 (sent as 0xFFFF)", su,
           [&](const PacketSpec&, const PacketSpec& o) { return l4Csum(o) == 0xffff; });
  craftFwd("UDP forward whose input checksum is 0xFFFF", su,
           [&](const PacketSpec& i, const PacketSpec&) { return l4Csum(i) == 0xffff; });
  craftRep("UDP reply whose new checksum computes to 0 (sent as 0xFFFF)", su,
           [&](const PacketSpec&, const PacketSpec& o) { return l4Csum(o) == 0xffff; });
  craftFwd("TCP forward whose new checksum is 0x0000", st,
           [&](const PacketSpec&, const PacketSpec& o) { return l4Csum(o) == 0x0000; });
  craftFwd("TCP forward whose input checksum is 0x0000", st,
           [&](const PacketSpec& i, const PacketSpec&) { return l4Csum(i) == 0x0000; });
  craftRep("TCP reply whose new checksum is 0x0000", st,
           [&](const PacketSpec&, const PacketSpec& o) { return l4Csum(o) == 0x0000; });
  craftFwd("IPv6 TCP forward whose new checksum is 0x0000", s6,
           [&](const PacketSpec&, const PacketSpec& o) { return l4Csum(o) == 0x0000; });
  {
    PacketSpec in = toVip(su, port++);
    in.udp_zero_checksum = true;
    in.vlans = {5};
    cases.push_back({"UDP forward, no checksum (0), tagged", in, forwarded(su, in)});
    PacketSpec r = fromBackend(su, port++);
    r.udp_zero_checksum = true;
    cases.push_back({"UDP reply, no checksum (0)", r, replied(su, r)});
  }

  std::vector<Bytes> frames;
  for (const Case& c : cases) {
    Bytes f = pktgen::build(c.in);
    c.post(f);
    frames.push_back(std::move(f));
  }
  const ReplayResult r = replay(dir, "nat-edge", config, records(frames));
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, frames.size(), r.out.size());
  ASSERT_EQ(r.out.size(), frames.size()) << r.report.at("total").at("drops").dump();
  const auto port_mac = portMacOf(r.out);
  ASSERT_TRUE(port_mac.has_value());
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].what);
    PacketSpec want = cases[i].want;
    want.src_mac = *port_mac;
    Bytes expected = pktgen::build(want);
    cases[i].post(expected);
    EXPECT_EQ(r.out[i].data, expected);
    const auto d = pktgen::decode(r.out[i].data);
    ASSERT_TRUE(d.has_value());
    EXPECT_TRUE(d->ip_checksum_ok);
    EXPECT_TRUE(d->l4_checksum_ok);
  }
}

// =============================================================================================
// 3. Weights.

TEST(ReplayWeights, FlowsSplitInProportionToWeights) {
  // 60,000 single-packet UDP flows over backends of weight 1:2:3 (and one drained, weight 0).
  //
  // Bound: Maglev (M = 65537) hands out table slots in weighted turns, so each backend's share
  // of the table equals its weight share to within a few slots (< 0.01%). Each flow then lands
  // on a slot chosen by the flow hash; for a well-mixed hash the per-backend flow count is
  // binomial(n, p), sigma = sqrt(n p (1 - p)): 91, 115, 122 flows for p = 1/6, 1/3, 1/2. The
  // test allows 4 sigma + 0.1% of n, i.e. at most 4.3%, 2.6%, 1.8% relative error. The hash
  // is deterministic (fixed seed), so the outcome never varies from run to run: a failure
  // means the hash or the table is skewed, not bad luck.
  TempDir dir;
  const std::vector<ServiceDef> services = {
      {"weighted", "192.0.2.30", 5000, "udp", "dr",
       {{"10.0.3.1", "02:00:00:00:06:01", 1},
        {"10.0.3.2", "02:00:00:00:06:02", 2},
        {"10.0.3.3", "02:00:00:00:06:03", 3},
        {"10.0.3.4", "02:00:00:00:06:04", 0}}},
  };
  pktgen::TrafficSpec t;
  t.vip = ip("192.0.2.30");
  t.vport = 5000;
  t.proto = LB_PROTO_UDP;
  t.flows = 60000;
  t.packets_per_flow = 1;
  t.payload_bytes = 16;
  t.gap_us = 1;
  const std::vector<PcapRecord> in = pktgen::makeTraffic(t);
  const ReplayResult r = replay(dir, "weights", configText(services, kGatewayHeader), in);
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, in.size(), r.out.size());
  ASSERT_EQ(r.out.size(), in.size());

  std::map<MacAddress, uint64_t> seen;
  for (const PcapRecord& rec : r.out) {
    ++seen[dstMacOf(rec.data)];
  }
  const double n = static_cast<double>(t.flows);
  const double total_weight = 6;
  for (const BackendDef& b : services[0].backends) {
    const json* jb = findBackend(r.report, "weighted", b.ipAddr(), 5000);
    ASSERT_NE(jb, nullptr);
    const uint64_t flows = num(*jb, "new_flows");
    EXPECT_EQ(flows, seen[b.macAddr()]) << b.address << ": JSON and wire disagree";
    if (b.weight == 0) {
      EXPECT_EQ(flows, 0u) << "a drained backend (weight 0) must get no new flows";
      continue;
    }
    const double p = b.weight / total_weight;
    const double expected = n * p;
    const double bound = 4 * std::sqrt(n * p * (1 - p)) + 0.001 * n;
    EXPECT_NEAR(static_cast<double>(flows), expected, bound)
        << b.address << " weight " << b.weight << ": " << flows << " flows, expected "
        << expected << " +- " << bound;
  }
}

// =============================================================================================
// 4. Malformed packets: each counted under its reason, none transmitted, valid ones still go.

struct Malformed {
  std::string what;
  Bytes frame;
  std::string reason;
};

PacketSpec tcp4(uint32_t n, uint16_t dport = 80) {
  PacketSpec s;
  s.src_mac = kClientMac;
  s.dst_mac = kLbMac;
  s.src = IpAddress::v4(0xc6336400u + 1 + n % 200);
  s.dst = ip("192.0.2.10");
  s.proto = LB_PROTO_TCP;
  s.sport = static_cast<uint16_t>(30000 + n);
  s.dport = dport;
  s.tcp_flags = 0x02;
  return s;
}

PacketSpec udp4(uint32_t n, size_t payload = 12) {
  PacketSpec s = tcp4(n, 53);
  s.dst = ip("192.0.2.20");
  s.proto = LB_PROTO_UDP;
  s.payload = Bytes(payload, static_cast<uint8_t>(n));
  return s;
}

PacketSpec tcp6(uint32_t n, uint16_t dport = 80) {
  PacketSpec s = tcp4(n, dport);
  s.src = ip(fmt::format("2001:db8:ff::{:x}", 0x1000 + n));
  s.dst = ip("2001:db8::20");
  return s;
}

std::vector<Malformed> malformedFrames() {
  std::vector<Malformed> m;
  uint32_t n = 0;
  auto add = [&](std::string what, Bytes frame, std::string reason) {
    m.push_back({std::move(what), std::move(frame), std::move(reason)});
  };
  constexpr size_t l3 = 14;
  constexpr size_t l4 = 34;  // IPv4 without options
  {
    Bytes f = pktgen::build(tcp4(++n));
    f.resize(10);
    add("Ethernet header cut to 10 bytes", f, "truncated");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));
    f.resize(14);
    add("Ethernet header only, IPv4 ethertype", f, "truncated");
  }
  {
    PacketSpec s = tcp4(++n);
    s.vlans = {7};
    Bytes f = pktgen::build(s);
    f.resize(16);
    add("802.1Q tag cut in half", f, "truncated");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));
    f.resize(l3 + 10);
    add("IPv4 header cut to 10 bytes", f, "truncated");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));
    f[l3] = 0x44;
    fixIpv4Checksum(f);
    add("IPv4 IHL 4 (< 5)", f, "bad_ip_header");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));
    f[l3] = 0x40;
    add("IPv4 IHL 0", f, "bad_ip_header");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));
    f[l3] = 0x65;
    add("version 6 in an IPv4 ethertype frame", f, "bad_ip_header");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));  // 54 bytes: IHL 15 (60 bytes) runs past the frame
    f[l3] = 0x4f;
    fixIpv4Checksum(f);
    add("IPv4 IHL 15 past the end of the frame", f, "truncated");
  }
  {
    PacketSpec s = tcp4(++n);
    s.payload = Bytes(30, 1);
    Bytes f = pktgen::build(s);
    set16(f, l3 + 2, static_cast<uint16_t>(f.size() - l3 + 1));
    fixIpv4Checksum(f);
    add("IPv4 total length one byte past the frame", f, "bad_ip_length");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));
    set16(f, l3 + 2, 16);
    fixIpv4Checksum(f);
    add("IPv4 total length 16 < IHL 20", f, "bad_ip_length");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));
    f[l4 + 12] = 0x40;
    add("TCP data offset 4 (< 5)", f, "bad_l4_header");
  }
  {
    PacketSpec s = tcp4(++n);
    s.payload = Bytes(10, 2);
    Bytes f = pktgen::build(s);
    f[l4 + 12] = 0xf0;  // 60 bytes of header in a 30-byte segment
    add("TCP data offset past the segment", f, "bad_l4_header");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));
    f.resize(l4 + 12);
    set16(f, l3 + 2, 20 + 12);
    fixIpv4Checksum(f);
    add("TCP header cut to 12 bytes (IP length consistent)", f, "truncated");
  }
  {
    Bytes f = pktgen::build(udp4(++n, 20));
    set16(f, l4 + 4, static_cast<uint16_t>(8 + 20 + 1));
    add("UDP length one past the IP payload", f, "bad_l4_header");
  }
  {
    Bytes f = pktgen::build(udp4(++n, 20));
    set16(f, l4 + 4, 7);
    add("UDP length 7 (< 8)", f, "bad_l4_header");
  }
  {
    Bytes f = pktgen::build(udp4(++n, 0));
    f.resize(l4 + 4);
    set16(f, l3 + 2, 24);
    fixIpv4Checksum(f);
    add("UDP header cut to 4 bytes (IP length consistent)", f, "truncated");
  }
  {
    PacketSpec s = tcp6(++n);
    s.payload = Bytes(10, 3);
    Bytes f = pktgen::build(s);
    set16(f, l3 + 4, static_cast<uint16_t>(f.size() - l3 - 40 + 1));
    add("IPv6 payload length one past the frame", f, "bad_ip_length");
  }
  {
    Bytes f = pktgen::build(tcp6(++n));
    f.resize(l3 + 30);
    add("IPv6 header cut to 30 bytes", f, "truncated");
  }
  {
    Bytes f = pktgen::build(tcp6(++n));
    f[l3] = 0x45;
    add("version 4 in an IPv6 ethertype frame", f, "bad_ip_header");
  }
  {
    PacketSpec s = tcp6(++n);
    s.ipv6_ext = std::vector<uint8_t>(7, 60);
    add("IPv6 with 7 destination-options headers", pktgen::build(s), "ipv6_ext_limit");
  }
  {
    PacketSpec s = tcp6(++n);
    s.ipv6_ext = {60};
    Bytes f = pktgen::build(s);
    f[l3 + 40 + 1] = 20;  // 168-byte extension header in a 28-byte payload
    add("IPv6 extension header longer than the payload", f, "bad_ip_length");
  }
  {
    Bytes f = pktgen::build(tcp6(++n));
    f[l3 + 40 + 12] = 0x30;
    add("IPv6 TCP data offset 3", f, "bad_l4_header");
  }
  {
    // ARP request: who has 192.0.2.99, tell 198.51.100.1. No VIP (and the replay has no address
    // of its own): not the data plane's to answer, the kernel's (ReplayHost answers a VIP's).
    Bytes f(42, 0);
    std::fill_n(f.begin(), 6, 0xff);
    std::copy(kClientMac.bytes.begin(), kClientMac.bytes.end(), f.begin() + 6);
    set16(f, 12, 0x0806);
    const uint8_t arp[] = {0, 1, 8, 0, 6, 4, 0, 1};
    std::copy(std::begin(arp), std::end(arp), f.begin() + 14);
    std::copy(kClientMac.bytes.begin(), kClientMac.bytes.end(), f.begin() + 22);
    const uint8_t spa[] = {198, 51, 100, 1};
    const uint8_t tpa[] = {192, 0, 2, 99};
    std::copy(std::begin(spa), std::end(spa), f.begin() + 28);
    std::copy(std::begin(tpa), std::end(tpa), f.begin() + 38);
    add("ARP request for an address that is no VIP", f, "non_ip");
  }
  {
    Bytes f = pktgen::build(tcp4(++n));
    set16(f, 12, 0x88cc);
    add("LLDP ethertype", f, "non_ip");
  }
  {
    PacketSpec s = udp4(++n, 64);
    s.more_fragments = true;
    add("IPv4 first fragment (MF) to a VIP", pktgen::build(s), "fragment");
  }
  {
    PacketSpec s = udp4(++n, 64);
    s.frag_offset = 9;
    s.more_fragments = true;
    add("IPv4 middle fragment to a VIP", pktgen::build(s), "fragment");
  }
  {
    PacketSpec s = tcp4(++n);
    s.payload = Bytes(40, 4);
    s.frag_offset = 185;
    add("IPv4 last fragment (offset, no MF) to a VIP", pktgen::build(s), "fragment");
  }
  {
    PacketSpec s = tcp6(++n);
    s.ipv6_ext = {44};
    s.more_fragments = true;
    s.payload = Bytes(32, 5);
    add("IPv6 first fragment to a VIP", pktgen::build(s), "fragment");
  }
  {
    PacketSpec s = tcp6(++n);
    s.ipv6_ext = {60, 44};
    s.frag_offset = 100;
    s.payload = Bytes(32, 6);
    add("IPv6 later fragment after a destination-options header", pktgen::build(s), "fragment");
  }
  {
    PacketSpec s = udp4(++n, 64);
    s.dst = ip("192.0.2.99");
    s.more_fragments = true;
    add("IPv4 fragment to no VIP", pktgen::build(s), "no_service");
  }
  {
    add("TCP to a VIP on a port no service uses", pktgen::build(tcp4(++n, 8080)), "no_service");
  }
  {
    PacketSpec s = udp4(++n);
    s.dst = ip("192.0.2.10");
    s.dport = 80;
    add("UDP to a TCP-only VIP:port", pktgen::build(s), "no_service");
  }
  {
    PacketSpec s = tcp4(++n);
    s.dst = ip("203.0.113.77");
    add("TCP to an address that is no VIP", pktgen::build(s), "no_service");
  }
  {
    PacketSpec s = tcp4(++n);
    s.proto = 1;  // ICMP echo reply, as raw bytes: only a request is answered (ReplayHost)
    s.payload = {0, 0, 0xff, 0xff, 0, 0, 0, 0};
    add("ICMP echo reply to a VIP", pktgen::build(s), "no_service");
  }
  {
    add("IPv6 TCP to a VIP on another port", pktgen::build(tcp6(++n, 443)), "no_service");
  }
  return m;
}

struct ValidFrame {
  std::string what;
  Bytes frame;
};

std::vector<ValidFrame> validFrames(size_t count) {
  std::vector<ValidFrame> v;
  for (uint32_t i = 0; i < count; ++i) {
    PacketSpec s;
    switch (i % 3) {
    case 0:
      s = tcp4(1000 + i);
      s.payload = Bytes(i % 50, static_cast<uint8_t>(i));
      break;
    case 1:
      s = udp4(1000 + i, 1 + i % 40);
      break;
    default:
      s = tcp6(1000 + i);
      break;
    }
    v.push_back({fmt::format("plain valid packet {}", i), pktgen::build(s)});
  }
  {
    PacketSpec s = udp4(2001);
    s.vlans = {10};
    v.push_back({"802.1Q tagged", pktgen::build(s)});
    s = tcp4(2002);
    s.vlans = {10, 20};
    v.push_back({"two 802.1Q tags", pktgen::build(s)});
  }
  {
    Bytes f = pktgen::build(tcp4(2003));
    f.resize(60, 0);  // Ethernet minimum-size padding after the IP packet
    v.push_back({"SYN padded to 60 bytes", f});
  }
  {
    // IPv4 with 4 bytes of options (NOP, NOP, NOP, EOL): IHL 6.
    PacketSpec s = tcp4(2004);
    s.payload = Bytes(9, 9);
    Bytes f = pktgen::build(s);
    const uint8_t opts[] = {1, 1, 1, 0};
    f.insert(f.begin() + 34, std::begin(opts), std::end(opts));
    f[14] = 0x46;
    set16(f, 16, static_cast<uint16_t>(get16(f, 16) + 4));
    fixIpv4Checksum(f);
    v.push_back({"IPv4 with options (IHL 6)", f});
  }
  {
    PacketSpec s = tcp6(2005);
    s.ipv6_ext = {0, 60};
    v.push_back({"IPv6 hop-by-hop + destination options", pktgen::build(s)});
    s = tcp6(2006);
    s.ipv6_ext = std::vector<uint8_t>(6, 60);
    v.push_back({"IPv6 with 6 extension headers (the most walked)", pktgen::build(s)});
  }
  return v;
}

TEST(ReplayMalformed, EachIsCountedUnderItsReasonAndNeverTransmitted) {
  TempDir dir;
  const std::vector<Malformed> bad = malformedFrames();
  const std::vector<ValidFrame> good = validFrames(bad.size() + 4);

  // Alternate valid and malformed frames, so every burst mixes both.
  std::vector<Bytes> frames;
  std::map<std::string, uint64_t> expected;
  for (const std::string& reason : dropReasonNames()) {
    expected[reason] = 0;
  }
  for (size_t i = 0; i < std::max(bad.size(), good.size()); ++i) {
    if (i < good.size()) {
      frames.push_back(good[i].frame);
    }
    if (i < bad.size()) {
      frames.push_back(bad[i].frame);
      ASSERT_TRUE(expected.contains(bad[i].reason)) << bad[i].reason;
      ++expected[bad[i].reason];
    }
  }
  const ReplayResult r = replay(dir, "malformed", configText(kDrServices, kGatewayHeader),
                                records(frames));
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, frames.size(), r.out.size());
  std::map<std::string, uint64_t> got;
  for (const auto& [reason, count] : r.report.at("total").at("drops").items()) {
    got[reason] = count.get<uint64_t>();
  }
  EXPECT_EQ(got, expected) << r.report.at("total").at("drops").dump(1);
  EXPECT_EQ(num(r.report.at("total"), "dropped"), bad.size());
  // Those for no service or not IP would have gone to the kernel; nothing was answered.
  EXPECT_EQ(num(r.report.at("total"), "passed"), expected.at("non_ip") + expected.at("no_service"));
  EXPECT_EQ(num(r.report.at("total"), "answered"), 0u);

  // On a miscount, replay each malformed frame alone so that the failure names the frame (a
  // DPDK start per frame is too slow to do every time).
  if (got != expected) {
    for (size_t i = 0; i < bad.size(); ++i) {
      const ReplayResult one = replay(dir, fmt::format("bad{}", i),
                                      configText(kDrServices, kGatewayHeader),
                                      records({bad[i].frame}));
      ASSERT_TRUE(one.ok()) << bad[i].what << ": " << one.error;
      EXPECT_EQ(dropped(one.report, bad[i].reason), 1u)
          << bad[i].what << ": dropped " << one.report.at("total").at("drops").dump();
    }
  }

  // The output holds exactly the valid frames, unchanged but for the MACs, in order.
  ASSERT_EQ(r.out.size(), good.size());
  for (size_t i = 0; i < good.size(); ++i) {
    EXPECT_EQ(afterMacs(r.out[i].data), afterMacs(good[i].frame)) << good[i].what;
  }
  std::set<Bytes> bad_tails;
  for (const Malformed& m : bad) {
    bad_tails.insert(afterMacs(m.frame));
  }
  for (const PcapRecord& rec : r.out) {
    EXPECT_FALSE(bad_tails.contains(afterMacs(rec.data))) << "a malformed frame was transmitted";
  }
}

// =============================================================================================
// 4b. The host's answers: ARP requests, Neighbour Solicitations and echo requests for a VIP are
// answered in place (counted answered, sent back from the port's MAC); the rest goes to the
// kernel. Each answer is read back with pktgen's own decoders and checksums.

TEST(ReplayHost, ArpNdAndEchoForAVipAreAnsweredInPlace) {
  TempDir dir;
  const IpAddress client = ip("198.51.100.1");
  const IpAddress client6 = ip("2001:db8:ff::1");
  const IpAddress vip6 = ip("2001:db8::20");
  std::vector<Bytes> frames;
  auto arpRequest = [&](const IpAddress& sender, const IpAddress& target,
                        std::vector<uint16_t> vlans) {
    pktgen::ArpSpec a;
    a.src_mac = kClientMac;
    a.sender_mac = kClientMac;
    a.sender = sender;
    a.target = target;
    a.vlans = std::move(vlans);
    a.min_frame = 60;
    return pktgen::buildArp(a);
  };
  auto echoSpec = [&](const IpAddress& src, const IpAddress& dst) {
    PacketSpec s;
    s.src_mac = kClientMac;
    s.dst_mac = kLbMac;
    s.src = src;
    s.dst = dst;
    return s;
  };
  const std::vector<uint8_t> data = {'s', 'l', 'u', 'i', 'c', 'e', 0, 1, 2, 3};
  // Answered:
  frames.push_back(arpRequest(client, ip("192.0.2.10"), {}));
  frames.push_back(arpRequest(client, ip("192.0.2.20"), {100}));  // tagged: the tag stays
  frames.push_back(pktgen::buildEchoRequest(echoSpec(client, ip("192.0.2.20")), 0x1234, 7, data));
  frames.push_back(pktgen::buildEchoRequest(echoSpec(client6, vip6), 0x4321, 9, data));
  PacketSpec ns = echoSpec(client6, pktgen::solicitedNode(vip6));
  ns.dst_mac = pktgen::multicastMac(ns.dst);
  ns.ttl = 255;
  frames.push_back(pktgen::buildNeighbourSolicit(ns, vip6));
  constexpr size_t kAnswered = 5;
  // Not answered: a gratuitous ARP (an announcement, not a question), an echo request for no
  // VIP, and a solicitation whose hop limit shows it was routed (RFC 4861 section 7.1.1).
  frames.push_back(arpRequest(client, client, {}));
  frames.push_back(pktgen::buildEchoRequest(echoSpec(client, ip("192.0.2.99")), 1, 1, data));
  PacketSpec routed = ns;
  routed.ttl = 64;
  frames.push_back(pktgen::buildNeighbourSolicit(routed, vip6));

  const ReplayResult r = replay(dir, "host", configText(kDrServices, kGatewayHeader),
                                records(frames));
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, frames.size(), r.out.size());
  const json& t = r.report.at("total");
  EXPECT_EQ(num(t, "answered"), kAnswered) << t.dump();
  EXPECT_EQ(num(t, "packets_out"), kAnswered);
  EXPECT_EQ(dropped(r.report, "non_ip"), 1u) << "the gratuitous ARP, for the kernel";
  EXPECT_EQ(dropped(r.report, "no_service"), 2u) << "the echo for no VIP and the routed NS";
  EXPECT_EQ(num(t, "dropped"), 3u) << t.dump();
  EXPECT_EQ(num(t, "passed"), 3u) << "what is not answered goes to the kernel";
  ASSERT_EQ(r.out.size(), kAnswered);
  const auto port_mac = portMacOf(r.out);
  ASSERT_TRUE(port_mac.has_value()) << "every answer leaves from the port's MAC";

  // ARP: "the VIP is at the port's MAC", to the asker.
  for (size_t i : {0u, 1u}) {
    SCOPED_TRACE(fmt::format("ARP answer {}", i));
    const auto a = pktgen::decodeArp(r.out[i].data);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->op, 2);
    EXPECT_EQ(a->dst_mac, kClientMac);
    EXPECT_EQ(a->sender_mac, *port_mac);
    EXPECT_EQ(a->sender, ip(i == 0 ? "192.0.2.10" : "192.0.2.20"));
    EXPECT_EQ(a->target_mac, kClientMac);
    EXPECT_EQ(a->target, client);
    EXPECT_EQ(a->vlans, (i == 0 ? std::vector<uint16_t>{} : std::vector<uint16_t>{100}));
  }
  // Echo: from the VIP to the client, same identifier, sequence and data.
  for (size_t i : {2u, 3u}) {
    SCOPED_TRACE(fmt::format("echo answer {}", i));
    const auto e = pktgen::decodeIcmp(r.out[i].data);
    const auto q = pktgen::decodeIcmp(frames[i]);
    ASSERT_TRUE(e.has_value() && q.has_value());
    EXPECT_EQ(e->dst_mac, kClientMac);
    EXPECT_EQ(e->src, q->dst);
    EXPECT_EQ(e->dst, q->src);
    EXPECT_EQ(e->type, i == 2 ? 0 : 129) << "echo reply";
    EXPECT_EQ(e->code, 0);
    EXPECT_EQ(e->ttl, LB_REPLY_HOP_LIMIT);
    EXPECT_TRUE(e->ip_checksum_ok);
    EXPECT_TRUE(e->icmp_checksum_ok);
    ASSERT_EQ(e->message.size(), q->message.size());
    EXPECT_TRUE(std::equal(e->message.begin() + 4, e->message.end(), q->message.begin() + 4))
        << "identifier, sequence number and data are echoed";
  }
  // Neighbour Advertisement: solicited and override, from the VIP, with the port's MAC.
  {
    const auto a = pktgen::decodeIcmp(r.out[4].data);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->dst_mac, kClientMac);
    EXPECT_EQ(a->src, vip6);
    EXPECT_EQ(a->dst, client6);
    EXPECT_EQ(a->ttl, 255);
    EXPECT_EQ(a->type, LB_ICMPV6_NEIGH_ADVERT);
    EXPECT_TRUE(a->icmp_checksum_ok);
    ASSERT_EQ(a->message.size(), size_t{LB_ND_NA_LEN});
    EXPECT_EQ(a->message[4], 0x60) << "flags Solicited and Override, not Router";
    EXPECT_TRUE(std::equal(vip6.bytes.begin(), vip6.bytes.end(), a->message.begin() + 8))
        << "target";
    EXPECT_EQ(a->message[24], 2) << "target link-layer address option";
    EXPECT_EQ(a->message[25], 1);
    EXPECT_TRUE(std::equal(port_mac->bytes.begin(), port_mac->bytes.end(),
                           a->message.begin() + 26));
  }
}

// =============================================================================================
// 5. Errors: exit 2 with a message that says what is wrong; no output file required.

std::vector<PcapRecord> smallCapture(uint32_t flows = 10) {
  pktgen::TrafficSpec t;
  t.vip = ip("192.0.2.10");
  t.flows = flows;
  t.packets_per_flow = 2;
  return pktgen::makeTraffic(t);
}

TEST(ReplayErrors, MissingInputFile) {
  TempDir dir;
  const std::string in = dir.file("does-not-exist.pcap");
  const RunResult r = runSluiced({"replay", "--in", in, "--out", dir.file("out.pcap")}, dir);
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_NE(r.err.find(in), std::string::npos) << "stderr must name the file\n" << r.describe();
}

TEST(ReplayErrors, CorruptCaptures) {
  TempDir dir;
  // Random bytes (the first four are not a pcap magic number).
  std::mt19937 rng(42);
  std::string junk(4096, '\0');
  for (char& c : junk) {
    c = static_cast<char>(rng());
  }
  junk[0] = 'J';
  const std::string random_path = dir.file("random.pcap");
  writeFile(random_path, junk);

  // A valid capture cut in the middle of the last record's data, and one cut inside a record
  // header.
  const std::string valid_path = dir.file("valid.pcap");
  pktgen::writePcap(valid_path, smallCapture());
  const std::string valid = readFile(valid_path);
  const std::string cut_data_path = dir.file("cut-data.pcap");
  writeFile(cut_data_path, std::string_view(valid).substr(0, valid.size() - 20));
  const size_t first_record = 24 + 16 + smallCapture()[0].data.size();
  const std::string cut_header_path = dir.file("cut-header.pcap");
  writeFile(cut_header_path, std::string_view(valid).substr(0, first_record + 8));
  const std::string empty_path = dir.file("empty.pcap");
  writeFile(empty_path, "");

  struct Case {
    std::string path;
    std::vector<std::string> any_of;  // the message mentions one of these
  };
  const std::vector<Case> cases = {
      {random_path, {"corrupt", "unknown file format", "bad dump file format"}},
      {cut_data_path, {"corrupt", "truncated"}},
      {cut_header_path, {"corrupt", "truncated"}},
      {empty_path, {"corrupt", "truncated", "unknown file format"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.path);
    const RunResult r = runSluiced({"replay", "--in", c.path, "--out", dir.file("out.pcap")}, dir);
    EXPECT_EQ(r.status, 2) << r.describe();
    EXPECT_NE(r.err.find(c.path), std::string::npos) << r.describe();
    const bool mentioned = std::any_of(c.any_of.begin(), c.any_of.end(), [&](const auto& w) {
      return r.err.find(w) != std::string::npos;
    });
    EXPECT_TRUE(mentioned) << r.describe();
  }

  // A capture of another link type (raw IP) is refused too.
  const std::string raw_path = dir.file("raw-ip.pcap");
  {
    pcap_t* dead = pcap_open_dead(DLT_RAW, 65535);
    ASSERT_NE(dead, nullptr);
    pcap_dumper_t* d = pcap_dump_open(dead, raw_path.c_str());
    ASSERT_NE(d, nullptr);
    const Bytes f = pktgen::build(tcp4(1));
    pcap_pkthdr h{};
    h.caplen = h.len = static_cast<bpf_u_int32>(f.size() - 14);
    pcap_dump(reinterpret_cast<u_char*>(d), &h, f.data() + 14);
    pcap_dump_close(d);
    pcap_close(dead);
  }
  const RunResult r = runSluiced({"replay", "--in", raw_path, "--out", dir.file("out.pcap")}, dir);
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_NE(r.err.find("link type"), std::string::npos) << r.describe();
}

TEST(ReplayErrors, BadConfigurationNamesTheLine) {
  TempDir dir;
  const std::string in = dir.file("in.pcap");
  pktgen::writePcap(in, smallCapture());
  struct Case {
    std::string what;
    std::string text;
    int line;
    std::string mentions;
  };
  const std::vector<Case> cases = {
      {"unknown key",
       "[timeouts]\ntcp = 900\n\n[[service]]\nname = \"web\"\nvip = \"192.0.2.10\"\n"
       "colour = \"blue\"\nport = 80\nprotocol = \"tcp\"\nforwarding = \"dr\"\n",
       7, "colour"},
      {"bad VIP address",
       "[[service]]\nname = \"web\"\nvip = \"192.0.2.300\"\nport = 80\nprotocol = \"tcp\"\n"
       "forwarding = \"dr\"\n",
       3, "192.0.2.300"},
      {"bad backend address",
       "[[service]]\nname = \"web\"\nvip = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\n"
       "forwarding = \"dr\"\n\n[[service.backend]]\naddress = \"10.0.0.x\"\n"
       "mac = \"02:00:00:00:01:11\"\n",
       9, "10.0.0.x"},
      {"unknown top-level table", "[dataplane]\nflow_table_size = 65536\n\n[extra]\nx = 1\n", 4,
       "extra"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(c.what);
    const std::string cfg = dir.file(fmt::format("bad{}.toml", i));
    writeFile(cfg, c.text);
    const RunResult r = runSluiced(
        {"replay", "--config", cfg, "--in", in, "--out", dir.file("out.pcap"), "--json"}, dir);
    EXPECT_EQ(r.status, 2) << r.describe();
    EXPECT_NE(r.err.find(fmt::format("{}:{}", cfg, c.line)), std::string::npos)
        << "the message must name " << cfg << ":" << c.line << "\n"
        << r.describe();
    EXPECT_NE(r.err.find(c.mentions), std::string::npos) << r.describe();
  }
  // A configuration file that does not exist.
  const std::string missing = dir.file("missing.toml");
  const RunResult r =
      runSluiced({"replay", "--config", missing, "--in", in, "--out", dir.file("out.pcap")}, dir);
  EXPECT_EQ(r.status, 2) << r.describe();
  EXPECT_NE(r.err.find(missing), std::string::npos) << r.describe();
}

TEST(ReplayErrors, UnwritableOutputAndBadArguments) {
  TempDir dir;
  const std::string in = dir.file("in.pcap");
  pktgen::writePcap(in, smallCapture());
  for (const std::string& out : {std::string("/nonexistent/dir/out.pcap"), dir.path()}) {
    SCOPED_TRACE(out);
    const RunResult r = runSluiced({"replay", "--in", in, "--out", out}, dir);
    EXPECT_EQ(r.status, 2) << r.describe();
    EXPECT_NE(r.err.find(out), std::string::npos) << r.describe();
  }
  {
    // Paths DPDK device arguments cannot carry.
    const std::string odd = dir.file("a,b.pcap");
    pktgen::writePcap(odd, smallCapture());
    const RunResult r = runSluiced({"replay", "--in", odd, "--out", dir.file("out.pcap")}, dir);
    EXPECT_EQ(r.status, 2) << r.describe();
  }
  {
    const RunResult r = runSluiced({"replay", "--out", dir.file("out.pcap")}, dir);
    EXPECT_EQ(r.status, 2) << "--in is required\n" << r.describe();
  }
}

TEST(ReplayErrors, OutputPathThatIsTheInputCaptureIsRefusedAndTheInputKept) {
  // --out naming the input (or a link to it) must not truncate the capture before it is read.
  TempDir dir;
  const std::string in = dir.file("in.pcap");
  const std::vector<PcapRecord> capture = smallCapture();
  pktgen::writePcap(in, capture);
  const std::string before = readFile(in);
  const std::string link = dir.file("link-to-in.pcap");
  ASSERT_EQ(::symlink(in.c_str(), link.c_str()), 0);
  for (const std::string& out : {in, link}) {
    SCOPED_TRACE("--out " + out);
    const RunResult r = runSluiced({"replay", "--in", in, "--out", out, "--json"}, dir);
    EXPECT_EQ(r.status, 2) << r.describe();
    const std::string after = readFile(in);
    EXPECT_TRUE(after == before) << "the input capture was modified: " << before.size()
                                 << " bytes before, " << after.size() << " after";
    pktgen::writePcap(in, capture);  // restore for the next case
  }
}

TEST(ReplayErrors, OddButReadableCaptureRecords) {
  // Zero- and one-byte records, and a record cut short by the capture's snap length
  // (caplen < len): counted as drops, not transmitted, and the rest still forwarded.
  TempDir dir;
  const std::string in = dir.file("odd.pcap");
  const Bytes good = pktgen::build(tcp4(1));
  {
    pcap_t* dead = pcap_open_dead(DLT_EN10MB, 65535);
    ASSERT_NE(dead, nullptr);
    pcap_dumper_t* d = pcap_dump_open(dead, in.c_str());
    ASSERT_NE(d, nullptr);
    auto put = [&](const Bytes& data, uint32_t caplen, uint32_t len) {
      pcap_pkthdr h{};
      h.ts.tv_sec = 1700000000;
      h.caplen = caplen;
      h.len = len;
      pcap_dump(reinterpret_cast<u_char*>(d), &h, data.data());
    };
    put(good, 0, 0);
    put(good, 0, static_cast<uint32_t>(good.size()));
    put(good, 1, 1);
    put(good, 40, static_cast<uint32_t>(good.size()));  // snap length 40 < 54
    put(good, static_cast<uint32_t>(good.size()), static_cast<uint32_t>(good.size()));
    pcap_dump_close(d);
    pcap_close(dead);
  }
  const std::string out = dir.file("odd-out.pcap");
  writeFile(dir.file("c.toml"), configText(kDrServices, kGatewayHeader));
  const RunResult r2 = runSluiced(
      {"replay", "--config", dir.file("c.toml"), "--in", in, "--out", out, "--json"}, dir);
  ASSERT_EQ(r2.status, 0) << r2.describe();
  const json j = json::parse(r2.out);
  const std::vector<PcapRecord> written = pktgen::readPcap(out);
  checkReportInvariants(j, 5, written.size());
  EXPECT_EQ(dropped(j, "truncated"), 3u) << j.at("total").at("drops").dump();
  EXPECT_EQ(dropped(j, "bad_ip_length"), 1u) << j.at("total").at("drops").dump();
  ASSERT_EQ(written.size(), 1u);
  EXPECT_EQ(afterMacs(written[0].data), afterMacs(good));
  // The drops of cut packets used to come without a word that the capture was cut.
  EXPECT_NE(r2.err.find(fmt::format("warning: 2 of 5 packets of {} were cut to the capture's snap "
                                    "length (65535 bytes)",
                                    in)),
            std::string::npos)
      << r2.describe();
}

// =============================================================================================
// 6. Idle expiry follows the capture's clock.

const std::vector<ServiceDef> kExpiryServices = {kDrServices[0], kDrServices[1]};

std::string expiryConfig() {
  return configText(kExpiryServices, "[timeouts]\ntcp = 900\ntcp_fin = 10\nudp = 300\n");
}

/** Frames of one 5-tuple at the given capture times (us). */
std::vector<PcapRecord> at(const std::vector<std::pair<uint64_t, PacketSpec>>& pkts) {
  std::vector<PcapRecord> out;
  for (const auto& [ts, s] : pkts) {
    out.push_back({ts, pktgen::build(s)});
  }
  return out;
}

PacketSpec withFlags(PacketSpec s, uint8_t flags, uint32_t seq) {
  s.tcp_flags = flags;
  s.seq = seq;
  return s;
}

uint64_t backendFlows(const json& report) {
  uint64_t n = 0;
  for (const json& b : allBackends(report)) {
    n += num(b, "new_flows");
  }
  return n;
}

TEST(ReplayExpiry, UdpFlowExpiresAfterIdleTimeoutInCaptureTime) {
  TempDir dir;
  const PacketSpec u = udp4(1, 30);
  {
    const ReplayResult r =
        replay(dir, "udp-400s", expiryConfig(), at({{kStartUs, u}, {kStartUs + 400 * kSecondUs, u}}));
    ASSERT_TRUE(r.ok()) << r.error;
    checkReportInvariants(r.report, 2, r.out.size());
    EXPECT_EQ(r.out.size(), 2u);
    const json& f = r.report.at("total");
    EXPECT_EQ(num(f, "flows_created"), 2u) << "400 s idle > udp timeout 300 s: a new flow\n" << f.dump();
    EXPECT_GE(num(f, "flows_expired"), 1u) << f.dump();
    EXPECT_EQ(backendFlows(r.report), 2u);
  }
  {
    const ReplayResult r =
        replay(dir, "udp-10s", expiryConfig(), at({{kStartUs, u}, {kStartUs + 10 * kSecondUs, u}}));
    ASSERT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(r.out.size(), 2u);
    const json& f = r.report.at("total");
    EXPECT_EQ(num(f, "flows_created"), 1u) << f.dump();
    EXPECT_EQ(num(f, "flows_expired"), 0u) << f.dump();
    EXPECT_EQ(num(f, "flows_active"), 1u) << f.dump();
  }
  {
    // Just inside and just past the timeout: 299 s keeps the flow, 301 s does not.
    const ReplayResult r = replay(
        dir, "udp-edges", expiryConfig(),
        at({{kStartUs, u}, {kStartUs + 299 * kSecondUs, u}, {kStartUs + 600 * kSecondUs, u}}));
    ASSERT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(num(r.report.at("total"), "flows_created"), 2u) << r.report.at("total").dump();
  }
}

TEST(ReplayExpiry, OldCaptureTimestampsDoNotExpireFlowsByWallClock) {
  // A capture from 2001: if any part of the flow clock were the host's time, every flow would
  // look decades idle.
  TempDir dir;
  pktgen::TrafficSpec t;
  t.vip = ip("192.0.2.20");
  t.vport = 53;
  t.proto = LB_PROTO_UDP;
  t.flows = 500;
  t.packets_per_flow = 3;
  t.start_us = 1000000000ull * kSecondUs;
  t.gap_us = 100000;  // the capture spans 150 s
  const std::vector<PcapRecord> in = pktgen::makeTraffic(t);
  const ReplayResult r = replay(dir, "old", expiryConfig(), in);
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, in.size(), r.out.size());
  EXPECT_EQ(num(r.report.at("total"), "flows_created"), 500u) << r.report.at("total").dump();
  EXPECT_EQ(num(r.report.at("total"), "flows_expired"), 0u) << r.report.at("total").dump();
  EXPECT_EQ(num(r.report.at("total"), "flows_active"), 500u) << r.report.at("total").dump();
}

TEST(ReplayExpiry, TcpFinLingerAndIdleTimeout) {
  TempDir dir;
  const PacketSpec t = tcp4(7);
  {
    // SYN, data, FIN, then a new SYN on the same 5-tuple 20 s later (tcp_fin = 10): new flow.
    PacketSpec data = withFlags(t, 0x18, 101);
    data.payload = Bytes(100, 1);
    const ReplayResult r = replay(dir, "tcp-fin-20s", expiryConfig(),
                                  at({{kStartUs, withFlags(t, 0x02, 100)},
                                      {kStartUs + 1000, data},
                                      {kStartUs + 2000, withFlags(t, 0x11, 201)},
                                      {kStartUs + 20 * kSecondUs, withFlags(t, 0x02, 9000)}}));
    ASSERT_TRUE(r.ok()) << r.error;
    checkReportInvariants(r.report, 4, r.out.size());
    EXPECT_EQ(r.out.size(), 4u);
    const json& f = r.report.at("total");
    EXPECT_EQ(num(f, "flows_created"), 2u) << f.dump();
    EXPECT_GE(num(f, "flows_expired"), 1u) << f.dump();
    EXPECT_EQ(backendFlows(r.report), 2u);
  }
  {
    // The same, but the new SYN comes 5 s after the FIN (within the linger): still scheduled as
    // a new connection (the entry is reused, so flows.created stays 1).
    const ReplayResult r = replay(dir, "tcp-fin-5s", expiryConfig(),
                                  at({{kStartUs, withFlags(t, 0x02, 100)},
                                      {kStartUs + 2000, withFlags(t, 0x11, 101)},
                                      {kStartUs + 5 * kSecondUs, withFlags(t, 0x02, 9000)}}));
    ASSERT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(r.out.size(), 3u);
    EXPECT_EQ(num(r.report.at("total"), "flows_expired"), 0u) << r.report.at("total").dump();
    EXPECT_EQ(backendFlows(r.report), 2u) << "a SYN after FIN is a new connection";
  }
  {
    // An ACK 9 s after the FIN still belongs to the closing flow (no new flow); one 11 s after
    // it does not.
    const ReplayResult r = replay(dir, "tcp-fin-ack", expiryConfig(),
                                  at({{kStartUs, withFlags(t, 0x02, 100)},
                                      {kStartUs + 2000, withFlags(t, 0x11, 101)},
                                      {kStartUs + 9 * kSecondUs, withFlags(t, 0x10, 102)},
                                      {kStartUs + 20 * kSecondUs + 3000, withFlags(t, 0x10, 103)}}));
    ASSERT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(num(r.report.at("total"), "flows_created"), 2u) << r.report.at("total").dump();
  }
  {
    // Established flow (SYN, then the handshake's ACK) idle 1000 s (tcp = 900): the next packet
    // starts a new flow; 800 s: not.
    const ReplayResult r = replay(dir, "tcp-idle", expiryConfig(),
                                  at({{kStartUs, withFlags(t, 0x02, 100)},
                                      {kStartUs + 1000, withFlags(t, 0x10, 101)},
                                      {kStartUs + 800 * kSecondUs, withFlags(t, 0x10, 102)},
                                      {kStartUs + 1800 * kSecondUs, withFlags(t, 0x10, 103)}}));
    ASSERT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(r.out.size(), 4u);
    EXPECT_EQ(num(r.report.at("total"), "flows_created"), 2u) << r.report.at("total").dump();
    EXPECT_EQ(num(r.report.at("total"), "flows_expired"), 1u) << r.report.at("total").dump();
  }
  {
    // A SYN whose handshake does not complete is kept tcp_syn (30 s), not tcp: its
    // retransmission 20 s later still finds it, an ACK 40 s after that is a new flow.
    const ReplayResult r = replay(dir, "tcp-syn", expiryConfig(),
                                  at({{kStartUs, withFlags(t, 0x02, 100)},
                                      {kStartUs + 20 * kSecondUs, withFlags(t, 0x02, 100)},
                                      {kStartUs + 60 * kSecondUs, withFlags(t, 0x10, 101)}}));
    ASSERT_TRUE(r.ok()) << r.error;
    EXPECT_EQ(num(r.report.at("total"), "flows_created"), 2u) << r.report.at("total").dump();
    EXPECT_EQ(num(r.report.at("total"), "flows_syn_expired"), 1u) << r.report.at("total").dump();
  }
}

TEST(ReplayExpiry, NanosecondCapturesUseTheSameClock) {
  // Captures with nanosecond timestamps (tcpdump --time-stamp-precision=nano): the flow clock
  // must read them as such, not as microseconds.
  TempDir dir;
  const Bytes u = pktgen::build(udp4(3, 20));
  auto write = [&](const std::string& path, const std::vector<uint64_t>& ts_ns) {
    pcap_t* dead = pcap_open_dead_with_tstamp_precision(DLT_EN10MB, 65535,
                                                        PCAP_TSTAMP_PRECISION_NANO);
    ASSERT_NE(dead, nullptr);
    pcap_dumper_t* d = pcap_dump_open(dead, path.c_str());
    ASSERT_NE(d, nullptr);
    for (uint64_t t : ts_ns) {
      pcap_pkthdr h{};
      h.ts.tv_sec = static_cast<time_t>(t / 1000000000ull);
      h.ts.tv_usec = static_cast<suseconds_t>(t % 1000000000ull);  // nanoseconds in this format
      h.caplen = h.len = static_cast<bpf_u_int32>(u.size());
      pcap_dump(reinterpret_cast<u_char*>(d), &h, u.data());
    }
    pcap_dump_close(d);
    pcap_close(dead);
  };
  const uint64_t t0 = 1700000000ull * 1000000000ull + 123456789;
  const std::string cfg = dir.file("c.toml");
  writeFile(cfg, expiryConfig());
  struct Case {
    uint64_t gap_ns;
    uint64_t created;
  };
  for (const Case& c : {Case{400ull * 1000000000ull, 2}, Case{299ull * 1000000000ull, 1},
                        Case{10ull * 1000000000ull, 1}}) {
    SCOPED_TRACE(fmt::format("gap {} ns", c.gap_ns));
    const std::string in = dir.file(fmt::format("nano-{}.pcap", c.gap_ns));
    write(in, {t0, t0 + c.gap_ns});
    const RunResult r = runSluiced(
        {"replay", "--config", cfg, "--in", in, "--out", dir.file("nano-out.pcap"), "--json"},
        dir);
    ASSERT_EQ(r.status, 0) << r.describe();
    const json j = json::parse(r.out);
    EXPECT_EQ(num(j.at("total"), "packets_out"), 2u);
    EXPECT_EQ(num(j.at("total"), "flows_created"), c.created) << j.at("total").dump();
  }
}

// =============================================================================================
// 7. Determinism.

std::vector<PcapRecord> mixedCapture() {
  pktgen::TrafficSpec a;
  a.vip = ip("192.0.2.10");
  a.flows = 400;
  a.packets_per_flow = 4;
  pktgen::TrafficSpec b;
  b.vip = ip("192.0.2.53");
  b.vport = 53;
  b.proto = LB_PROTO_UDP;
  b.flows = 300;
  b.packets_per_flow = 2;
  b.client_base = ip("203.0.113.1");
  pktgen::TrafficSpec c;
  c.vip = ip("2001:db8::10");
  c.vport = 443;
  c.flows = 200;
  c.packets_per_flow = 3;
  std::vector<PcapRecord> junk;
  for (const Malformed& m : malformedFrames()) {
    junk.push_back({kStartUs + 7 * junk.size(), m.frame});
  }
  return mergeByTime({pktgen::makeTraffic(a), pktgen::makeTraffic(b), pktgen::makeTraffic(c),
                      std::move(junk)});
}

std::vector<ServiceDef> mixedServices() {
  return {kDrServices[0], kNatServices[0], kNatServices[2]};
}

TEST(ReplayDeterminism, SameCaptureTwiceGivesTheSameOutput) {
  TempDir dir;
  const std::vector<PcapRecord> in = mixedCapture();
  const std::string config = configText(mixedServices(), kGatewayHeader);
  const ReplayResult a = replay(dir, "det-a", config, in, true);
  ASSERT_TRUE(a.ok()) << a.error;
  const ReplayResult b = replay(dir, "det-b", config, in, true);
  ASSERT_TRUE(b.ok()) << b.error;
  checkReportInvariants(a.report, in.size(), a.out.size());
  EXPECT_GT(a.out.size(), in.size() / 2);
  ASSERT_EQ(a.out.size(), b.out.size());
  for (size_t i = 0; i < a.out.size(); ++i) {
    ASSERT_EQ(a.out[i].data, b.out[i].data) << "output packet " << i << " differs";
  }
  EXPECT_EQ(allBackends(a.report), allBackends(b.report));
  EXPECT_EQ(a.report.at("total").at("drops"), b.report.at("total").at("drops"));
  EXPECT_EQ(a.report.at("total"), b.report.at("total"));
  EXPECT_EQ(a.report.at("flow_list"), b.report.at("flow_list"));
}

TEST(ReplayDeterminism, BackendChoiceDoesNotDependOnBackendOrderInConfig) {
  TempDir dir;
  const std::vector<PcapRecord> in = mixedCapture();
  std::vector<ServiceDef> forward = mixedServices();
  forward[0].backends.push_back({"10.0.0.14", "02:00:00:00:01:14", 50});
  forward[0].backends.push_back({"10.0.0.15", "02:00:00:00:01:15", 300});
  std::vector<ServiceDef> shuffled = forward;
  std::reverse(shuffled.begin(), shuffled.end());  // services in another order too
  for (ServiceDef& s : shuffled) {
    std::reverse(s.backends.begin(), s.backends.end());
    std::rotate(s.backends.begin(), s.backends.begin() + 1, s.backends.end());
  }
  ASSERT_NE(forward[0].backends[0].address, shuffled[2].backends[0].address);

  const ReplayResult a = replay(dir, "order-a", configText(forward, kGatewayHeader), in, true);
  ASSERT_TRUE(a.ok()) << a.error;
  const ReplayResult b = replay(dir, "order-b", configText(shuffled, kGatewayHeader), in, true);
  ASSERT_TRUE(b.ok()) << b.error;

  auto backendPerFlow = [](const json& report) {
    std::map<std::string, std::string> m;
    for (const json& e : report.at("flow_list")) {
      m[e.at("protocol").get<std::string>() + " " + e.at("client").get<std::string>() + " -> " +
        vipEndpoint(e)] = e.at("backend").get<std::string>();
    }
    return m;
  };
  const auto fa = backendPerFlow(a.report);
  const auto fb = backendPerFlow(b.report);
  EXPECT_EQ(fa.size(), 900u);
  EXPECT_EQ(fa, fb);
  std::set<std::string> used;
  for (const auto& [flow, backend] : fa) {
    used.insert(backend);
  }
  EXPECT_EQ(used.size(), 5u + 2 + 2) << "every backend should get some of 900 flows";
  // And the frames on the wire agree (the VIPs' MACs and NAT addresses per flow).
  ASSERT_EQ(a.out.size(), b.out.size());
  for (size_t i = 0; i < a.out.size(); ++i) {
    ASSERT_EQ(a.out[i].data, b.out[i].data) << "output packet " << i << " differs";
  }
}

// =============================================================================================
// 8. The built-in default configuration, and the repository's sample capture.

TEST(ReplayDefaults, SampleCaptureWithDefaultConfig) {
  const std::string sample = std::string(SOURCE_ROOT) + "/conf/sample.pcap";
  if (::access(sample.c_str(), R_OK) != 0) {
    GTEST_SKIP() << sample << " is not there (yet)";
  }
  TempDir dir;
  const std::vector<PcapRecord> in = pktgen::readPcap(sample);
  const std::string out = dir.file("sample-out.pcap");
  const RunResult r = runSluiced({"replay", "--in", sample, "--out", out, "--json"}, dir);
  ASSERT_EQ(r.status, 0) << r.describe();
  const json j = json::parse(r.out);
  const std::vector<PcapRecord> written = pktgen::readPcap(out);
  checkReportInvariants(j, in.size(), written.size());
  EXPECT_EQ(num(j.at("total"), "packets_in"), in.size());
  EXPECT_GT(num(j.at("total"), "packets_out"), 0u);
}

TEST(ReplayDefaults, BuiltInConfigServesItsThreeServices) {
  // Without --config: web (192.0.2.10:80 tcp DR), dns (192.0.2.53:53 udp NAT), web6
  // ([2001:db8::10]:443 tcp NAT).
  TempDir dir;
  pktgen::TrafficSpec a;
  a.vip = ip("192.0.2.10");
  a.flows = 30;
  pktgen::TrafficSpec b;
  b.vip = ip("192.0.2.53");
  b.vport = 53;
  b.proto = LB_PROTO_UDP;
  b.flows = 30;
  b.packets_per_flow = 2;
  pktgen::TrafficSpec c;
  c.vip = ip("2001:db8::10");
  c.vport = 443;
  c.flows = 30;
  const std::vector<PcapRecord> in =
      mergeByTime({pktgen::makeTraffic(a), pktgen::makeTraffic(b), pktgen::makeTraffic(c)});
  const ReplayResult r = replay(dir, "default", std::nullopt, in);
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, in.size(), r.out.size());
  EXPECT_EQ(r.out.size(), in.size());
  std::set<std::string> names;
  for (const json& s : r.report.at("services")) {
    names.insert(s.at("name").get<std::string>());
    EXPECT_GT(num(s, "packets"), 0u) << s.dump();
  }
  EXPECT_EQ(names, (std::set<std::string>{"web", "dns", "web6"}));
  for (const PcapRecord& rec : r.out) {
    const auto d = pktgen::decode(rec.data);
    ASSERT_TRUE(d.has_value());
    EXPECT_TRUE(d->ip_checksum_ok && d->l4_checksum_ok);
  }
}

// =============================================================================================
// 9. A larger run: many bursts, far more packets than the mbuf pool holds.

TEST(ReplayLarge, FiftyThousandUdpFlowsTwoPacketsEach) {
  TempDir dir;
  const std::vector<ServiceDef> services = {kDrServices[1]};
  pktgen::TrafficSpec t;
  t.vip = ip("192.0.2.20");
  t.vport = 53;
  t.proto = LB_PROTO_UDP;
  t.flows = 50000;
  t.packets_per_flow = 2;
  t.payload_bytes = 32;
  t.gap_us = 1;
  const std::vector<PcapRecord> in = pktgen::makeTraffic(t);
  // The default flow table (2^20 entries per worker) holds every flow without eviction.
  const ReplayResult r = replay(dir, "large", configText(services, kGatewayHeader), in);
  ASSERT_TRUE(r.ok()) << r.error;
  checkReportInvariants(r.report, in.size(), r.out.size());
  EXPECT_EQ(num(r.report.at("total"), "packets_in"), 100000u);
  EXPECT_EQ(num(r.report.at("total"), "packets_out"), num(r.report.at("total"), "packets_in"));
  EXPECT_EQ(num(r.report.at("total"), "dropped"), 0u);
  ASSERT_EQ(r.out.size(), in.size());
  EXPECT_EQ(num(r.report.at("total"), "flows_created"), 50000u) << r.report.at("total").dump();
  EXPECT_EQ(num(r.report.at("total"), "flows_evicted"), 0u);

  std::map<std::pair<IpAddress, uint16_t>, MacAddress> backend_of;
  size_t mismatched = 0;
  for (size_t i = 0; i < r.out.size(); ++i) {
    const Bytes& f = r.out[i].data;
    ASSERT_EQ(afterMacs(f), afterMacs(in[i].data)) << "output packet " << i;
    const auto d = pktgen::decode(f);
    ASSERT_TRUE(d.has_value());
    auto [it, fresh] = backend_of.try_emplace({d->src, d->sport}, dstMacOf(f));
    if (!fresh && it->second != dstMacOf(f)) {
      ++mismatched;
    }
  }
  EXPECT_EQ(backend_of.size(), 50000u);
  EXPECT_EQ(mismatched, 0u) << "flows whose second packet went to another backend";
}

// ---------------------------------------------------------------------------------------------
// Several workers

TEST(ReplayWorkers, ThreeWorkersScheduleLikeOneAndRewriteRepliesOnAnyWorker) {
  // With --workers 3 the capture is spread over three lcores by flow hash, as RSS would spread
  // it; NAT replies (not symmetric to their client's packets) land on other workers than the
  // client's flow. Every flow must get the same backend as with one worker, and every reply must
  // be rewritten back to its VIP whatever worker sees it.
  TempDir dir;
  std::vector<PcapRecord> in = mixedCapture();
  // Replies from each NAT DNS backend to 60 clients, after the client traffic.
  const ServiceDef& dns = kNatServices[0];
  std::vector<Bytes> replies;
  for (uint32_t i = 0; i < 60; ++i) {
    const BackendDef& b = dns.backends[i % dns.backends.size()];
    PacketSpec r;
    r.src_mac = b.macAddr();
    r.dst_mac = kLbMac;
    r.src = b.ipAddr();
    r.dst = IpAddress::v4(0xcb007101 + i);  // 203.0.113.1 + i
    r.proto = LB_PROTO_UDP;
    r.sport = dns.backendPort(b);
    r.dport = static_cast<uint16_t>(10000 + i);
    r.payload = Bytes(20, static_cast<uint8_t>(i));
    replies.push_back(pktgen::build(r));
  }
  const uint64_t after = in.back().ts_us + kSecondUs;
  for (size_t i = 0; i < replies.size(); ++i) {
    in.push_back({after + i, replies[i]});
  }
  const std::string config = configText(mixedServices(), kGatewayHeader);
  const std::string cfg = dir.file("workers.toml");
  writeFile(cfg, config);
  const std::string in_path = dir.file("workers-in.pcap");
  pktgen::writePcap(in_path, in);

  auto run = [&](const char* workers) {
    const std::string out = dir.file(fmt::format("workers-{}-out.pcap", workers));
    const RunResult r = runSluiced({"replay", "--config", cfg, "--in", in_path, "--out", out,
                                    "--json", "--flows", "--workers", workers},
                                   dir);
    EXPECT_EQ(r.status, 0) << r.describe();
    return std::make_pair(json::parse(r.out), pktgen::readPcap(out));
  };
  const auto [one, one_out] = run("1");
  const auto [three, three_out] = run("3");

  EXPECT_EQ(num(three.at("total"), "packets_in"), in.size());
  EXPECT_EQ(num(three.at("total"), "packets_out"), num(one.at("total"), "packets_out"));
  EXPECT_EQ(three.at("total").at("drops"), one.at("total").at("drops"));
  EXPECT_EQ(allBackends(three), allBackends(one));
  // Each flow's backend is the same; only the worker that holds it differs.
  auto flowBackends = [](const json& report) {
    std::map<std::string, std::string> m;
    for (const json& f : report.at("flow_list")) {
      m[f.at("client").get<std::string>() + ">" + vipEndpoint(f)] =
          f.at("backend").get<std::string>();
    }
    return m;
  };
  EXPECT_EQ(flowBackends(three), flowBackends(one));
  ASSERT_EQ(three.at("workers").size(), 3u);
  size_t workers_with_replies = 0;
  uint64_t replies_seen = 0;
  for (const json& w : three.at("workers")) {
    EXPECT_GT(num(w, "packets_in"), 0u) << w.dump();
    workers_with_replies += num(w, "reply_packets") > 0 ? 1 : 0;
    replies_seen += num(w, "reply_packets");
  }
  EXPECT_EQ(replies_seen, replies.size());
  EXPECT_GE(workers_with_replies, 2u) << "replies should spread over workers";

  // The same packets come out (the order across workers may differ).
  auto sorted = [](const std::vector<PcapRecord>& recs) {
    std::vector<Bytes> v;
    for (const PcapRecord& r : recs) {
      v.push_back(r.data);
    }
    std::sort(v.begin(), v.end());
    return v;
  };
  EXPECT_EQ(sorted(three_out), sorted(one_out));
  // Every reply left with the VIP as its source, towards the gateway, with valid checksums.
  size_t rewritten = 0;
  for (const PcapRecord& r : three_out) {
    const auto d = pktgen::decode(r.data);
    if (d && d->proto == LB_PROTO_UDP &&
        d->src == ip(dns.vip) && d->sport == dns.port) {
      EXPECT_EQ(d->dst_mac, kGatewayMac);
      EXPECT_TRUE(d->ip_checksum_ok && d->l4_checksum_ok);
      ++rewritten;
    }
  }
  EXPECT_EQ(rewritten, replies.size());
}

}  // namespace
