// Writes the seed corpora of the packet targets: real frames built by tools/pktgen (with every
// checksum right) for each kind of traffic fuzz::config() handles, a few frames of the sample
// capture, and short sequences (a TCP connection and its reuse after the FIN linger, NAT replies
// after requests). Run once when the targets' input format or configuration changes:
//   fuzz_seeds SOURCE_ROOT   (writes
//   SOURCE_ROOT/tests/fuzz/corpus/{packet,pipeline,xdp_diff}_fuzz/,
//                             and config_fuzz/'s built-in default and fuzz::config())
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "control/config.h"
#include "tests/fuzz/frames.h"
#include "tests/support/fixtures.h"
#include "tools/pktgen/packet_builder.h"
#include "tools/pktgen/pcap_io.h"

namespace {

using pktgen::Bytes;
using pktgen::PacketSpec;
using testsupport::ip;
using testsupport::mac;

const sluice::MacAddress kRouterMac = mac("02:00:00:00:00:f4");

PacketSpec client(const char* src, const char* dst, uint16_t sport, uint16_t dport, uint8_t proto,
                  uint8_t flags = 0x10) {
  PacketSpec s;
  s.src_mac = kRouterMac;
  s.dst_mac = fuzz::kPortMac;
  s.src = ip(src);
  s.dst = ip(dst);
  s.sport = sport;
  s.dport = dport;
  s.proto = proto;
  s.tcp_flags = flags;
  s.payload = Bytes(24, 0x61);
  return s;
}

Bytes tcp(const char* src, const char* dst, uint16_t sport, uint16_t dport, uint8_t flags) {
  return pktgen::build(client(src, dst, sport, dport, LB_PROTO_TCP, flags));
}

Bytes udp(const char* src, const char* dst, uint16_t sport, uint16_t dport) {
  return pktgen::build(client(src, dst, sport, dport, LB_PROTO_UDP));
}

/** f with the source MAC m: a NAT reply is taken only from its backend's next hop (its MAC in
 * fuzz::config(); the pipeline drops others as nat_reply_mac). */
Bytes from(const char* m, Bytes f) {
  const sluice::MacAddress a = mac(m);
  std::copy(a.bytes.begin(), a.bytes.end(), f.begin() + 6);
  return f;
}

/** One frame, or a sequence: (clock step, frame). */
using Sequence = std::vector<std::pair<uint8_t, Bytes>>;

std::vector<std::pair<std::string, Sequence>> seeds(const std::string& source_root) {
  std::vector<std::pair<std::string, Sequence>> s;
  auto one = [&s](std::string name, Bytes f) {
    s.push_back({std::move(name), {{0, std::move(f)}}});
  };

  one("tcp4-dr-syn", tcp("203.0.113.5", "192.0.2.10", 40000, 80, 0x02));
  s.push_back({"tcp4-dr-connection-reused",
               {{0, tcp("203.0.113.5", "192.0.2.10", 40001, 80, 0x02)},
                {1, tcp("203.0.113.5", "192.0.2.10", 40001, 80, 0x18)},
                {1, tcp("203.0.113.5", "192.0.2.10", 40001, 80, 0x11)},
                {110, tcp("203.0.113.5", "192.0.2.10", 40001, 80, 0x02)},
                {205, tcp("203.0.113.5", "192.0.2.10", 40001, 80, 0x10)}}});
  s.push_back({"udp4-nat-request-reply",
               {{0, udp("203.0.113.7", "192.0.2.53", 5000, 53)},
                {1, from("02:00:00:00:02:21", udp("10.0.1.21", "203.0.113.7", 5353, 5000))},
                {1, from("02:00:00:00:02:22", udp("10.0.1.22", "203.0.113.7", 5353, 5000))}}});
  s.push_back(
      {"udp4-nat-reply-spoofed",  // the backend's address and port, the clients' router's MAC
       {{0, udp("203.0.113.7", "192.0.2.53", 5000, 53)},
        {1, udp("10.0.1.21", "203.0.113.7", 5353, 5000)}}});
  s.push_back({"tcp4-nat-api",
               {{0, tcp("203.0.113.8", "192.0.2.20", 41000, 443, 0x02)},
                {1, from("02:00:00:00:03:02", tcp("10.0.2.2", "203.0.113.8", 8443, 41000, 0x12))},
                {1, tcp("203.0.113.8", "192.0.2.20", 41000, 443, 0x04)}}});
  s.push_back(
      {"tcp6-nat-request-reply",
       {{0, tcp("2001:db8:ff::5", "2001:db8::10", 42000, 443, 0x02)},
        {1, from("02:00:00:00:03:11", tcp("2001:db8:1::11", "2001:db8:ff::5", 8443, 42000, 0x12))},
        {1,
         from("02:00:00:00:03:12", tcp("2001:db8:1::12", "2001:db8:ff::5", 8443, 42000, 0x12))}}});
  s.push_back(
      {"udp6-nat-request-reply",
       {{0, udp("2001:db8:ff::6", "2001:db8::53", 5001, 53)},
        {1, from("02:00:00:00:05:02", udp("2001:db8:2::2", "2001:db8:ff::6", 5300, 5001))}}});
  one("tcp6-dr", tcp("2001:db8:ff::7", "2001:db8::10", 43000, 80, 0x02));

  PacketSpec v = client("203.0.113.9", "192.0.2.10", 44000, 80, LB_PROTO_TCP, 0x02);
  v.vlans = {100};
  one("tcp4-vlan", pktgen::build(v));
  v.vlans = {100, 200};
  one("tcp4-qinq", pktgen::build(v));
  PacketSpec e = client("2001:db8:ff::8", "2001:db8::53", 5002, 53, LB_PROTO_UDP);
  e.ipv6_ext = {0, 60};
  one("udp6-ext-headers", pktgen::build(e));
  PacketSpec z = client("203.0.113.10", "192.0.2.53", 5003, 53, LB_PROTO_UDP);
  z.udp_zero_checksum = true;
  one("udp4-zero-checksum", pktgen::build(z));
  PacketSpec frag = client("203.0.113.11", "192.0.2.10", 44001, 80, LB_PROTO_TCP);
  frag.more_fragments = true;
  one("ipv4-fragment-to-vip", pktgen::build(frag));
  frag.dst = ip("198.51.100.2");
  frag.frag_offset = 8;
  frag.more_fragments = false;
  one("ipv4-fragment-to-host", pktgen::build(frag));
  PacketSpec frag6 = client("2001:db8:ff::9", "2001:db8::10", 44002, 443, LB_PROTO_TCP);
  frag6.ipv6_ext = {44};
  one("ipv6-fragment-to-vip", pktgen::build(frag6));

  one("tcp4-no-service", tcp("203.0.113.12", "192.0.2.99", 45000, 80, 0x02));
  one("tcp4-to-host", tcp("198.51.100.7", "198.51.100.2", 45001, 22, 0x02));
  one("tcp6-to-host", tcp("2001:db8:b::7", "2001:db8:b::2", 45002, 22, 0x02));
  one("tcp4-drained", tcp("203.0.113.13", "192.0.2.30", 45003, 80, 0x02));
  one("udp4-no-backend", udp("203.0.113.14", "192.0.2.31", 45004, 80));
  PacketSpec foreign = client("203.0.113.15", "192.0.2.10", 45005, 80, LB_PROTO_TCP, 0x02);
  foreign.dst_mac = mac("02:00:00:00:00:99");
  one("tcp4-other-host-mac", pktgen::build(foreign));

  for (const char* target : {"192.0.2.10", "198.51.100.2", "198.51.100.77"}) {
    pktgen::ArpSpec a;
    a.src_mac = mac("02:00:00:00:00:aa");
    a.sender_mac = a.src_mac;
    a.sender = ip("198.51.100.7");
    a.target = ip(target);
    a.min_frame = 60;
    one(std::string("arp-request-") + target, pktgen::buildArp(a));
  }
  for (const char* target : {"2001:db8::10", "2001:db8:b::2"}) {
    PacketSpec ns;
    ns.src_mac = mac("02:00:00:00:00:aa");
    ns.src = ip("2001:db8:b::7");
    ns.dst = pktgen::solicitedNode(ip(target));
    ns.dst_mac = pktgen::multicastMac(ns.dst);
    ns.ttl = 255;
    one(std::string("nd-solicit-") + target, pktgen::buildNeighbourSolicit(ns, ip(target)));
  }
  PacketSpec echo = client("203.0.113.16", "192.0.2.10", 0, 0, LB_PROTO_TCP);
  one("echo4-to-vip", pktgen::buildEchoRequest(echo, 7, 1, Bytes(16, 0x5a)));
  echo.src = ip("2001:db8:ff::10");
  echo.dst = ip("2001:db8::10");
  one("echo6-to-vip", pktgen::buildEchoRequest(echo, 7, 1, Bytes(16, 0x5a)));

  // ICMP errors about a flow: to the VIP about a reply from it (to the flow's backend), and from
  // behind NAT about a client's packet to a backend (to the client).
  PacketSpec router = client("198.51.100.1", "192.0.2.10", 0, 0, LB_PROTO_TCP);
  const PacketSpec reply = client("192.0.2.10", "203.0.113.5", 80, 40000, LB_PROTO_TCP);
  s.push_back({"icmp4-frag-needed-about-dr-flow",
               {{0, tcp("203.0.113.5", "192.0.2.10", 40000, 80, 0x02)},
                {1, pktgen::buildIcmpError(router, 3, 4, 1400, reply, 28)}}});
  PacketSpec from_nat = client("10.0.1.21", "203.0.113.7", 0, 0, LB_PROTO_UDP);
  from_nat.src_mac = mac("02:00:00:00:02:21");  // from the backend's next hop
  const PacketSpec to_backend = client("203.0.113.7", "10.0.1.21", 5000, 5353, LB_PROTO_UDP);
  s.push_back({"icmp4-port-unreachable-from-nat-backend",
               {{0, udp("203.0.113.7", "192.0.2.53", 5000, 53)},
                {1, pktgen::buildIcmpError(from_nat, 3, 3, 0, to_backend)}}});
  PacketSpec router6 = client("2001:db8:b::1", "2001:db8::10", 0, 0, LB_PROTO_TCP);
  const PacketSpec reply6 = client("2001:db8::10", "2001:db8:ff::5", 443, 42000, LB_PROTO_TCP);
  s.push_back({"icmp6-packet-too-big-about-nat-flow",
               {{0, tcp("2001:db8:ff::5", "2001:db8::10", 42000, 443, 0x02)},
                {1, pktgen::buildIcmpError(router6, 2, 0, 1280, reply6)}}});

  // A few frames of the sample capture (another host's MACs: kFlagAcceptAnyMac below).
  const std::vector<pktgen::PcapRecord> sample =
      pktgen::readPcap(source_root + "/conf/sample.pcap");
  Sequence from_sample;
  for (size_t i = 0; i < sample.size() && i < 6; ++i) {
    from_sample.push_back({static_cast<uint8_t>(i == 0 ? 0 : 1), sample[i].data});
  }
  s.push_back({"sample-pcap-first-frames", from_sample});
  return s;
}

void writeFile(const std::filesystem::path& p, const Bytes& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SOURCE_ROOT\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  const std::filesystem::path corpus = std::filesystem::path(root) / "tests/fuzz/corpus";
  for (const char* t : {"packet_fuzz", "pipeline_fuzz", "xdp_diff_fuzz", "config_fuzz"}) {
    std::filesystem::create_directories(corpus / t);
  }
  size_t n = 0;
  for (const auto& [name, seq] : seeds(root)) {
    const uint8_t flags = name.starts_with("sample") ? fuzz::kFlagAcceptAnyMac : 0;
    Bytes input = {flags};
    for (const auto& [step, frame] : seq) {
      fuzz::appendFrame(input, step, frame);
    }
    std::string file = name;
    std::replace(file.begin(), file.end(), ':', '_');  // no colons in file names
    writeFile(corpus / "pipeline_fuzz" / file, input);
    writeFile(corpus / "xdp_diff_fuzz" / file, input);
    // The parser's format: two bytes of frame beyond the first segment (none), then the frame.
    for (size_t i = 0; i < seq.size(); ++i) {
      Bytes p = {0, 0};
      p.insert(p.end(), seq[i].second.begin(), seq[i].second.end());
      writeFile(corpus / "packet_fuzz" / (seq.size() == 1 ? file : file + "-" + std::to_string(i)),
                p);
    }
    ++n;
  }
  const std::string_view builtin = sluice::defaultConfigText();
  writeFile(corpus / "config_fuzz" / "builtin-default.toml", Bytes(builtin.begin(), builtin.end()));
  const std::string every_kind = sluice::renderConfig(fuzz::config());
  writeFile(corpus / "config_fuzz" / "every-kind.toml",
            Bytes(every_kind.begin(), every_kind.end()));
  std::printf("fuzz_seeds: %zu seeds written under %s\n", n, corpus.c_str());
  return 0;
}
