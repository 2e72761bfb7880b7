// How the XDP loader programs the BPF maps (XdpDataplane::apply, src/xdp/xdp_dataplane.cc), with
// the DPDK pipeline (src/dataplane/pipeline.h, on plain byte buffers) as the reference for every
// packet:
//  - a shrink from 5,000 backends to 100 clears every removed id wherever it is in the id space,
//    and both paths reschedule the flows of removed backends to the same live ones, byte for byte;
//  - a publish that fails part-way (failAfterWrites(n): the write after the first n fails as a
//    failed bpf syscall would, for every n that falls inside the publish, updates and deletes
//    alike) leaves every map and .bss global byte for byte as it was, and packets go as before;
//    for one program, for the handle of several (the programs that took the new snapshot are
//    put back), and through the control plane, which keeps its running configuration;
//  - Sluice's own addresses (local_addrs) follow the snapshot: added, removed, refused whole when
//    they are more than the map holds, and rolled back with the rest.
// Needs root (CAP_BPF for BPF_PROG_TEST_RUN): every test skips when the program cannot be loaded.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/lb_abi.h"
#include "common/net.h"
#include "common/snapshot.h"
#include "control/config.h"
#include "control/control_plane.h"
#include "control/snapshot_builder.h"
#include "dataplane/pipeline.h"
#include "tests/bpf/xdp_harness.h"
#include "tests/support/fixtures.h"
#include "tools/pktgen/packet_builder.h"
#include "xdp/xdp_dataplane.h"

namespace sluice {
namespace {

using bpftest::runXdp;
using bpftest::show;
using pktgen::Bytes;
using pktgen::PacketSpec;
using testsupport::ip;
using testsupport::mac;

constexpr uint64_t kSec = 1'000'000'000ull;
constexpr uint64_t kT0 = 1000 * kSec;
constexpr uint32_t kFlowCapacity = 1u << 16;

const MacAddress kPortMac = mac("02:00:00:00:00:bb");
const MacAddress kRouterMac = mac("02:00:00:00:00:ac");

// ---------------------------------------------------------------------------------------------
// The two paths.

/** One DPDK worker, on the replay port's MAC: the reference. */
struct Reference : bpftest::Reference {
  Reference() : bpftest::Reference(kFlowCapacity, kPortMac) {}
};

/** A client packet of flow `client` to service s. */
Bytes clientFrame(const ServiceEntry& s, uint32_t client, uint8_t tcp_flags = 0x10) {
  PacketSpec p;
  p.src_mac = kRouterMac;
  p.dst_mac = kPortMac;
  p.dst = s.vip;
  if (s.vip.isV4()) {
    p.src = IpAddress::v4(0xc6330000u + client / 64);  // 198.51.x.y
  } else {
    p.src = ip("2001:db8:ff::");
    p.src.bytes[13] = static_cast<uint8_t>(client >> 16);
    p.src.bytes[14] = static_cast<uint8_t>(client >> 8);
    p.src.bytes[15] = static_cast<uint8_t>(client);
  }
  p.sport = static_cast<uint16_t>(20000 + client % 64 * 13);
  p.dport = s.port;
  p.proto = static_cast<uint8_t>(s.protocol);
  p.tcp_flags = tcp_flags;
  p.seq = 1000 + client;
  p.payload.assign(client % 5 + 8, static_cast<uint8_t>(client));
  return pktgen::build(p);
}

/** c with Sluice's own addresses (address/prefix). */
Config withAddresses(Config c, std::initializer_list<const char*> addresses) {
  c.dataplane.addresses.clear();
  for (const char* a : addresses) {
    c.dataplane.addresses.push_back(*IpPrefix::parse(a));
  }
  validateConfig(c, "test");
  return c;
}

/** Frames for a host address: an ARP request or a Neighbour Solicitation, and a TCP packet. */
std::vector<Bytes> hostFrames(const IpAddress& a) {
  std::vector<Bytes> out;
  if (a.isV4()) {
    pktgen::ArpSpec arp;
    arp.src_mac = kRouterMac;
    arp.sender_mac = kRouterMac;
    arp.sender = IpAddress::v4(a.bytes[0] << 24 | a.bytes[1] << 16 | a.bytes[2] << 8 | 250);
    arp.target = a;
    out.push_back(pktgen::buildArp(arp));
  } else {
    PacketSpec ns;
    ns.src_mac = kRouterMac;
    ns.src = ip("fe80::ac");
    ns.dst = pktgen::solicitedNode(a);
    ns.dst_mac = pktgen::multicastMac(ns.dst);
    ns.ttl = 255;
    out.push_back(pktgen::buildNeighbourSolicit(ns, a));
  }
  PacketSpec ssh;
  ssh.src_mac = kRouterMac;
  ssh.dst_mac = kPortMac;
  ssh.src = a.isV4() ? ip("203.0.113.22") : ip("2001:db8:ff::22");
  ssh.dst = a;
  ssh.dport = 22;
  out.push_back(pktgen::build(ssh));
  return out;
}

/** A reply of NAT backend b (of a service with protocol proto) to a client, from b's next hop
 * (the only MAC a NAT reply is taken from). */
Bytes replyFrame(const BackendEntry& b, Protocol proto, uint32_t client) {
  PacketSpec p;
  std::copy(b.mac, b.mac + 6, p.src_mac.bytes.begin());
  p.dst_mac = kPortMac;
  p.src = b.address;
  p.dst = b.address.isV4() ? IpAddress::v4(0xcb007100u + client % 200) : ip("2001:db8:ff::77");
  p.sport = b.port;
  p.dport = static_cast<uint16_t>(30000 + client);
  p.proto = static_cast<uint8_t>(proto);
  p.tcp_flags = 0x18;
  p.payload.assign(20, 0x5a);
  return pktgen::build(p);
}

// ---------------------------------------------------------------------------------------------
// The maps, read from outside: every map the loaded program uses, found through its map ids
// (as `bpftool prog show` does), so that nothing is missed and nothing is read through the code
// under test.

/** One map's entries: arrays in index order, hashes sorted by key. */
struct MapImage {
  uint32_t type = 0;
  uint32_t key_size = 0;
  uint32_t value_size = 0;  // per entry as read: all CPUs' values for a per-CPU map
  Bytes keys;
  Bytes values;
  bool operator==(const MapImage&) const = default;
  size_t entries() const { return key_size == 0 ? 0 : keys.size() / key_size; }
};

/** Map name -> contents; a Maglev inner table appears as "maglev[<service id>]". */
using Dump = std::map<std::string, MapImage>;

bool perCpu(uint32_t type) {
  return type == BPF_MAP_TYPE_PERCPU_ARRAY || type == BPF_MAP_TYPE_PERCPU_HASH ||
         type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}

bool isArray(uint32_t type) {
  return type == BPF_MAP_TYPE_ARRAY || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
         type == BPF_MAP_TYPE_ARRAY_OF_MAPS;
}

MapImage readMap(int fd) {
  bpf_map_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) {
    throw std::runtime_error(fmt::format("map info: {}", std::strerror(errno)));
  }
  MapImage m;
  m.type = info.type;
  m.key_size = info.key_size;
  const bool in_maps =
      info.type == BPF_MAP_TYPE_ARRAY_OF_MAPS || info.type == BPF_MAP_TYPE_HASH_OF_MAPS;
  m.value_size = in_maps ? sizeof(uint32_t)  // a userspace lookup gives the inner map's id
                         : perCpu(info.type)
                               ? ((info.value_size + 7) / 8 * 8) *
                                     static_cast<uint32_t>(libbpf_num_possible_cpus())
                               : info.value_size;
  bool done = false;
  if (!in_maps) {
    // Batched: the arrays have tens of thousands of entries. (Not for map-in-map arrays, whose
    // empty slots the generic batch lookup reports as EINTR.)
    constexpr uint32_t kChunk = 8192;
    Bytes in_batch(std::max<size_t>(m.key_size, 8));
    Bytes out_batch(in_batch.size());
    bool first = true;
    for (;;) {
      const size_t at = m.entries();
      m.keys.resize((at + kChunk) * m.key_size);
      m.values.resize((at + kChunk) * m.value_size);
      uint32_t count = kChunk;
      const int rc = bpf_map_lookup_batch(fd, first ? nullptr : in_batch.data(), out_batch.data(),
                                          m.keys.data() + at * m.key_size,
                                          m.values.data() + at * m.value_size, &count, nullptr);
      const int err = errno;
      if (rc != 0 && err != ENOENT) {
        count = 0;
      }
      m.keys.resize((at + count) * m.key_size);
      m.values.resize((at + count) * m.value_size);
      if (rc != 0) {
        if (err == ENOENT) {
          done = true;
        } else if (!first || (err != EINVAL && err != EOPNOTSUPP && err != 524)) {
          throw std::runtime_error(fmt::format("batch lookup: {}", std::strerror(err)));
        }
        break;  // done, or no batch ops for this map type: the loop below
      }
      in_batch = out_batch;
      first = false;
    }
  }
  if (!done && isArray(m.type)) {
    m.keys.clear();
    m.values.clear();
    Bytes value(m.value_size);
    for (uint32_t i = 0; i < info.max_entries; ++i) {
      if (bpf_map_lookup_elem(fd, &i, value.data()) == 0) {
        const auto* k = reinterpret_cast<const uint8_t*>(&i);
        m.keys.insert(m.keys.end(), k, k + sizeof(i));
        m.values.insert(m.values.end(), value.begin(), value.end());
      } else if (errno != ENOENT) {
        throw std::runtime_error(fmt::format("lookup: {}", std::strerror(errno)));
      }
    }
    done = true;
  }
  if (!done) {
    m.keys.clear();
    m.values.clear();
    Bytes key(m.key_size);
    Bytes next(m.key_size);
    Bytes value(m.value_size);
    bool first = true;
    while (bpf_map_get_next_key(fd, first ? nullptr : key.data(), next.data()) == 0) {
      if (bpf_map_lookup_elem(fd, next.data(), value.data()) == 0) {
        m.keys.insert(m.keys.end(), next.begin(), next.end());
        m.values.insert(m.values.end(), value.begin(), value.end());
      } else if (errno != ENOENT) {
        throw std::runtime_error(fmt::format("lookup: {}", std::strerror(errno)));
      }
      key = next;
      first = false;
    }
  }
  if (!isArray(m.type)) {
    // A hash map lists its keys in bucket order, which a delete and re-insert may change.
    std::vector<std::pair<Bytes, Bytes>> rows;
    for (size_t i = 0; i < m.entries(); ++i) {
      rows.emplace_back(Bytes(m.keys.begin() + i * m.key_size,
                              m.keys.begin() + (i + 1) * m.key_size),
                        Bytes(m.values.begin() + i * m.value_size,
                              m.values.begin() + (i + 1) * m.value_size));
    }
    std::sort(rows.begin(), rows.end());
    m.keys.clear();
    m.values.clear();
    for (const auto& [k, v] : rows) {
      m.keys.insert(m.keys.end(), k.begin(), k.end());
      m.values.insert(m.values.end(), v.begin(), v.end());
    }
  }
  return m;
}

/** The per-CPU backend counters: 65,536 entries (the kernel keeps 15 characters of a name). */
bool bigPacketMap(const std::string& name) { return name.rfind("backend_counte", 0) == 0; }

/** The maps the program itself writes for packets (flow tables, counters, learned gateway). The
 * flow tables are maps of maps whose values are the ids of each program's own inner maps. */
bool packetsWrite(const std::string& name) {
  return name == "flows" || name == "flow_sigs" || name == "cpu_counters" ||
         name == "learned_gw" || bigPacketMap(name);
}

/** The maps of a loaded program, held open. */
class ProgramMaps {
 public:
  explicit ProgramMaps(int prog_fd) {
    bpf_prog_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) {
      throw std::runtime_error(fmt::format("program info: {}", std::strerror(errno)));
    }
    std::vector<uint32_t> ids(info.nr_map_ids);
    const uint32_t n = info.nr_map_ids;
    info = bpf_prog_info{};
    info.nr_map_ids = n;
    info.map_ids = reinterpret_cast<uint64_t>(ids.data());
    len = sizeof(info);
    if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) {
      throw std::runtime_error(fmt::format("program map ids: {}", std::strerror(errno)));
    }
    for (uint32_t id : ids) {
      const int fd = bpf_map_get_fd_by_id(id);
      if (fd < 0) {
        throw std::runtime_error(fmt::format("map {}: {}", id, std::strerror(errno)));
      }
      bpf_map_info mi{};
      uint32_t mlen = sizeof(mi);
      bpf_obj_get_info_by_fd(fd, &mi, &mlen);
      fds_[mi.name] = fd;
    }
  }
  ~ProgramMaps() {
    for (const auto& [name, fd] : fds_) {
      close(fd);
    }
  }
  ProgramMaps(const ProgramMaps&) = delete;
  ProgramMaps& operator=(const ProgramMaps&) = delete;

  int fd(const std::string& name) const { return fds_.at(name); }

  /** Every map's full contents, and each Maglev inner table's. */
  Dump dump() const {
    return read([](const std::string&) { return true; }, true);
  }

  /**
   * The maps the control plane writes.
   * @param inner_tables with the Maglev tables' contents (3 x 65,537 entries: slow to read), or
   *        only the ids of the inner maps in `maglev`
   */
  Dump controlPart(bool inner_tables = true) const {
    return read([](const std::string& n) { return !packetsWrite(n); }, inner_tables);
  }

  /** The small maps the program writes for packets: all but the 65,536 backend counters. */
  Dump smallPacketMaps() const {
    return read([](const std::string& n) { return packetsWrite(n) && !bigPacketMap(n); }, false);
  }

 private:
  template <class Which>
  Dump read(Which which, bool inner_tables) const {
    Dump d;
    for (const auto& [name, fd] : fds_) {
      if (which(name)) {
        d[name] = readMap(fd);
      }
    }
    if (!inner_tables || !d.contains("maglev")) {
      return d;
    }
    const MapImage& outer = d.at("maglev");
    for (size_t i = 0; i < outer.entries(); ++i) {
      uint32_t sid;
      uint32_t id;
      std::memcpy(&sid, outer.keys.data() + i * sizeof(sid), sizeof(sid));
      std::memcpy(&id, outer.values.data() + i * sizeof(id), sizeof(id));
      const int inner = bpf_map_get_fd_by_id(id);
      if (inner < 0) {
        throw std::runtime_error(fmt::format("Maglev table map {}: {}", id, std::strerror(errno)));
      }
      d[fmt::format("maglev[{}]", sid)] = readMap(inner);
      close(inner);
    }
    return d;
  }

  std::map<std::string, int> fds_;
};

/** d less the maps the program writes for packets, which the packet checks change. */
Dump controlPart(Dump d) {
  std::erase_if(d, [](const auto& entry) { return packetsWrite(entry.first); });
  return d;
}

/** The same without the ids of the Maglev inner maps (another program made its own). */
Dump withoutInnerIds(Dump d) {
  d.erase("maglev");
  return d;
}

/** The same without the Maglev inner maps' contents (their ids stay, in "maglev"). */
Dump withoutInnerTables(Dump d) {
  std::erase_if(d, [](const auto& entry) { return entry.first.starts_with("maglev["); });
  return d;
}

/** Which maps differ, and where first. */
std::string diff(const Dump& a, const Dump& b) {
  std::string out;
  std::set<std::string> names;
  for (const auto& [n, m] : a) {
    names.insert(n);
  }
  for (const auto& [n, m] : b) {
    names.insert(n);
  }
  for (const std::string& n : names) {
    const auto ia = a.find(n);
    const auto ib = b.find(n);
    if (ia == a.end() || ib == b.end()) {
      out += fmt::format("\n  {}: only in the {}", n, ia == a.end() ? "second" : "first");
      continue;
    }
    const MapImage& x = ia->second;
    const MapImage& y = ib->second;
    if (x == y) {
      continue;
    }
    out += fmt::format("\n  {}: {} vs {} entries", n, x.entries(), y.entries());
    for (size_t i = 0; i < std::min(x.entries(), y.entries()); ++i) {
      const bool same_key = std::equal(x.keys.begin() + i * x.key_size,
                                       x.keys.begin() + (i + 1) * x.key_size,
                                       y.keys.begin() + i * y.key_size);
      const bool same_value = x.value_size == y.value_size &&
                              std::equal(x.values.begin() + i * x.value_size,
                                         x.values.begin() + (i + 1) * x.value_size,
                                         y.values.begin() + i * y.value_size);
      if (!same_key || !same_value) {
        out += fmt::format(", first difference at entry {}", i);
        break;
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

class XdpMaps : public ::testing::Test {
 protected:
  void SetUp() override { bpftest::stayOnThisCpu(); }

  /** Load a program (replay port's MAC, test clock) into xdp, or tell the caller to skip. */
  bool load(std::unique_ptr<XdpDataplane>& xdp) {
    std::string why;
    xdp = bpftest::loadProgram(kFlowCapacity, kPortMac, kT0, why);
    if (!xdp) {
      skip_reason_ = why;
    }
    return xdp != nullptr;
  }
  std::string skip_reason_;
};

#define LOAD_OR_SKIP(var)                                                            \
  std::unique_ptr<XdpDataplane> var;                                                 \
  if (!load(var)) {                                                                  \
    GTEST_SKIP() << "cannot load the XDP program (needs CAP_BPF): " << skip_reason_; \
  }

// ---------------------------------------------------------------------------------------------
// Fault 1: a shrink must clear every removed backend id, above 4096 too.

BackendConfig numberedBackend(uint32_t service, uint32_t k, uint16_t port) {
  BackendConfig b;
  b.address = IpAddress::v4((10u << 24) | (service << 16) | (k + 1));
  b.port = port;
  b.mac = mac(fmt::format("02:00:{:02x}:00:{:02x}:{:02x}", service, (k + 1) >> 8, (k + 1) & 0xff));
  return b;
}

/** web (DR, TCP) with web_n backends, ids 1..web_n; api (NAT, TCP) with api_n, the ids after. */
Config twoBigServices(uint32_t web_n, uint32_t api_n) {
  Config c;
  c.dataplane.flow_table_size = kFlowCapacity;
  c.dataplane.gateway_mac = mac("02:00:00:00:00:fe");
  ServiceConfig web;
  web.name = "web";
  web.vip = ip("192.0.2.10");
  web.port = 80;
  web.forwarding = Forwarding::kDr;
  for (uint32_t k = 0; k < web_n; ++k) {
    web.backends.push_back(numberedBackend(1, k, 80));
  }
  ServiceConfig api;
  api.name = "api";
  api.vip = ip("192.0.2.20");
  api.port = 443;
  api.forwarding = Forwarding::kNat;
  for (uint32_t k = 0; k < api_n; ++k) {
    api.backends.push_back(numberedBackend(2, k, 8443));
  }
  c.services = {web, api};
  validateConfig(c, "test");
  return c;
}

TEST_F(XdpMaps, ShrinkFrom5000To100BackendsClearsEveryRemovedIdOnBothPaths) {
  LOAD_OR_SKIP(xdp);
  constexpr uint32_t kEach = 2500;  // ids 1..2500 web, 2501..5000 api
  constexpr uint32_t kKeep = 50;    // of each: ids 1..50 and 2501..2550 stay
  IdRegistry ids;
  const SnapshotPtr big = buildSnapshot(twoBigServices(kEach, kEach), ids, 1);
  ASSERT_EQ(big->backends.size(), 2 * kEach + 1);
  const SnapshotPtr small = buildSnapshot(twoBigServices(kKeep, kKeep), ids, 2, big.get());
  ASSERT_EQ(small->backends.size(), kEach + kKeep + 1);  // the api ids keep their numbers

  std::map<MacAddress, uint32_t> by_mac;  // every backend has its own MAC
  for (uint32_t id = 1; id < big->backends.size(); ++id) {
    MacAddress m;
    std::copy(big->backends[id].mac, big->backends[id].mac + 6, m.bytes.begin());
    by_mac[m] = id;
  }
  auto backendOf = [&by_mac](const Bytes& out) {
    MacAddress m;
    std::copy(out.begin(), out.begin() + 6, m.bytes.begin());
    const auto it = by_mac.find(m);
    return it == by_mac.end() ? 0u : it->second;
  };
  auto live = [&small](uint32_t id) {
    return id != 0 && id < small->backends.size() && small->backends[id].present;
  };

  xdp->apply(*big);
  Reference dpdk;
  constexpr uint32_t kFlows = 1200;  // per service
  std::vector<Bytes> flows;
  for (const ServiceEntry& s : big->services) {
    for (uint32_t i = 0; i < kFlows; ++i) {
      flows.push_back(clientFrame(s, i));
    }
  }
  std::vector<uint32_t> pinned;
  size_t above_4096 = 0;
  for (const Bytes& f : flows) {
    const auto x = runXdp(*xdp, f, kT0);
    const auto d = dpdk.run(f, *big, kT0);
    ASSERT_TRUE(d.has_value());
    ASSERT_EQ(show(x), show(d)) << "before the shrink";
    pinned.push_back(backendOf(*d));
    above_4096 += pinned.back() > 4096 ? 1 : 0;
  }
  ASSERT_GE(above_4096, 100u) << "flows must be pinned to backend ids above 4096";

  xdp->apply(*small);

  size_t moved = 0;
  size_t moved_above_4096 = 0;
  std::vector<std::string> differ;     // the two paths sent different frames
  std::vector<std::string> left;       // left a backend that stayed
  std::vector<std::string> not_moved;  // of a removed backend, and not sent to a live one
  const uint64_t later = kT0 + kSec;
  for (size_t i = 0; i < flows.size(); ++i) {
    const auto x = runXdp(*xdp, flows[i], later);
    const auto d = dpdk.run(flows[i], *small, later);
    ASSERT_TRUE(d.has_value());
    ASSERT_TRUE(x.has_value()) << "flow " << i;
    const uint32_t now_at = backendOf(*x);
    const std::string what =
        fmt::format("flow {} (backend {}, now {}): xdp {} dpdk {}", i, pinned[i], now_at,
                    show(x), show(d));
    if (x != d) {
      differ.push_back(what);
    }
    if (live(pinned[i])) {
      if (now_at != pinned[i]) {
        left.push_back(what);
      }
    } else {
      if (!live(now_at)) {
        not_moved.push_back(what);
      }
      ++moved;
      moved_above_4096 += pinned[i] > 4096 ? 1 : 0;
    }
  }
  EXPECT_EQ(differ.size(), 0u) << "of " << flows.size() << " flows; the first: " << differ[0];
  EXPECT_EQ(left.size(), 0u) << "the first: " << left[0];
  EXPECT_EQ(not_moved.size(), 0u) << "the first: " << not_moved[0];
  EXPECT_GT(moved, flows.size() / 2);
  EXPECT_EQ(moved_above_4096, above_4096);

  // Rescheduled as often on both paths.
  const StatsTotals t = xdp->totals(*small);
  uint64_t rescheduled = 0;
  for (const WorkerTotals& w : t.workers) {
    rescheduled += w.flows_rescheduled;
  }
  EXPECT_EQ(rescheduled, moved);
  EXPECT_EQ(dpdk.pipe.counters().flows_rescheduled.get(), moved);

  // Epoch 0 for every removed id, and every other id as the snapshot says.
  const ProgramMaps maps(xdp->programFd());
  const MapImage backends = readMap(maps.fd("backends"));
  ASSERT_EQ(backends.entries(), size_t{LB_MAX_BACKENDS});
  ASSERT_EQ(backends.value_size, sizeof(lb_backend));
  size_t cleared = 0;
  std::vector<uint32_t> still_there;
  for (uint32_t id = 1; id < LB_MAX_BACKENDS; ++id) {
    lb_backend v;
    std::memcpy(&v, backends.values.data() + size_t{id} * sizeof(v), sizeof(v));
    if (live(id)) {
      EXPECT_EQ(v.epoch, small->backends[id].epoch) << "backend " << id;
    } else if (v.epoch != 0) {
      still_there.push_back(id);
    } else {
      cleared += id < big->backends.size() ? 1 : 0;
    }
  }
  EXPECT_TRUE(still_there.empty()) << still_there.size() << " removed backends are still in the "
                                   << "backends map, ids " << still_there.front() << ".."
                                   << still_there.back();
  EXPECT_EQ(cleared, 2 * (kEach - kKeep));
}

// ---------------------------------------------------------------------------------------------
// Faults 2 and 3: a publish that fails part-way changes nothing.

/**
 * From the three-service default, a change that goes through every phase of apply: web loses a
 * backend, gains two and reweights one (backend writes, a replaced Maglev table); dns goes away
 * (lookup keys pruned, its table removed, its backends cleared); api is new (a new table, new
 * lookup keys and NAT replies); web6 stays as it is (its table shared); new timeouts and gateway
 * MAC (both families); one of Sluice's own addresses stays, one goes, one is new.
 */
const char* const kAddressesA[] = {"198.51.100.2/24", "2001:db8:b::2/64"};
const char* const kAddressesB[] = {"198.51.100.2/24", "100.64.0.2/24"};

Config changedServices() {
  Config c = testsupport::threeServices();
  ServiceConfig& web = testsupport::service(c, "web");
  std::erase_if(web.backends,
                [](const BackendConfig& b) { return b.address == ip("10.0.0.12"); });
  web.backends[1].weight = 300;
  BackendConfig extra = web.backends[0];
  extra.address = ip("10.0.0.14");
  extra.mac = mac("02:00:00:00:01:14");
  web.backends.push_back(extra);
  extra.address = ip("10.0.0.15");
  extra.mac = mac("02:00:00:00:01:15");
  web.backends.push_back(extra);
  std::erase_if(c.services, [](const ServiceConfig& s) { return s.name == "dns"; });
  ServiceConfig api;
  api.name = "api";
  api.vip = ip("192.0.2.20");
  api.port = 443;
  api.forwarding = Forwarding::kNat;
  for (uint32_t k = 0; k < 2; ++k) {
    api.backends.push_back(numberedBackend(3, k, 8443));
  }
  c.services.push_back(api);
  c.timeouts.tcp_s = 600;
  c.timeouts.udp_s = 100;
  c.dataplane.gateway_mac = mac("02:00:00:00:00:fd");
  return withAddresses(c, {kAddressesB[0], kAddressesB[1]});
}

/** A and B (B built from A, sharing its unchanged tables). */
/** c with Maglev tables of M slots: filling a 65,537-slot table costs tens of milliseconds. */
Config withTableSize(Config c, uint32_t m) {
  for (ServiceConfig& s : c.services) {
    s.table_size = m;
  }
  validateConfig(c, "test");
  return c;
}

struct TwoSnapshots {
  TwoSnapshots()
      : a(buildSnapshot(withTableSize(withAddresses(testsupport::threeServices(),
                                                    {kAddressesA[0], kAddressesA[1]}),
                                      1021),
                        ids, 1)),
        b(buildSnapshot(withTableSize(changedServices(), 1021), ids, 2, a.get())) {}
  IdRegistry ids;
  SnapshotPtr a;
  SnapshotPtr b;
};

/**
 * Packets to every service of a and b and replies from every NAT backend of both, through the
 * program and through the pipeline under `under`: the program must do what the pipeline does.
 * Round r uses new clients (new flows) and round 0's again (flows pinned under A).
 */
void expectPacketsAsUnder(XdpDataplane& xdp, Reference& dpdk, const Snapshot& under,
                          const TwoSnapshots& s, uint32_t round, const std::string& when) {
  std::vector<Bytes> frames;
  for (const Snapshot* snap : {s.a.get(), s.b.get()}) {
    for (const ServiceEntry& svc : snap->services) {
      if (!svc.present) {
        continue;
      }
      for (uint32_t i = 0; i < 4; ++i) {
        frames.push_back(clientFrame(svc, i));               // pinned in round 0
        frames.push_back(clientFrame(svc, 100 + round * 4 + i));  // new
      }
      if (svc.forwarding == Forwarding::kNat) {
        for (uint32_t bid : svc.backend_ids) {
          frames.push_back(replyFrame(snap->backends[bid], svc.protocol, round));
        }
      }
    }
  }
  // The host's own addresses of either snapshot: answered, or passed to the kernel.
  for (const auto* list : {&kAddressesA, &kAddressesB}) {
    for (const char* a : *list) {
      for (Bytes& f : hostFrames(IpPrefix::parse(a)->address)) {
        frames.push_back(std::move(f));
      }
    }
  }
  const uint64_t now = kT0 + round * kSec;
  for (size_t i = 0; i < frames.size(); ++i) {
    const auto x = runXdp(xdp, frames[i], now);
    const auto d = dpdk.run(frames[i], under, now);
    EXPECT_EQ(show(x), show(d)) << when << ": packet " << i;
  }
  xdp.setClock(kT0);  // the clock is a .bss global too: as it was for the map dumps
}

TEST_F(XdpMaps, FailedApplyAtEveryWriteLeavesEveryMapAsItWas) {
  LOAD_OR_SKIP(xdp);
  const TwoSnapshots s;
  const ProgramMaps maps(xdp->programFd());
  xdp->apply(*s.a);
  const Dump a_state = maps.controlPart();
  ASSERT_TRUE(a_state.contains("xdp_lb.bss")) << "the .bss globals are a map too";
  ASSERT_TRUE(a_state.contains("maglev[0]"));
  Reference dpdk;
  expectPacketsAsUnder(*xdp, dpdk, *s.a, s, 0, "under A");

  std::vector<std::string> failures;
  for (int n = 0;; ++n) {
    ASSERT_LT(n, 1000) << "a publish of a few services makes a few dozen writes";
    // Every map in full around every twelfth injection point. Around the others, all but the
    // largest maps: the Maglev tables' contents (their inner map ids are still compared, and
    // apply writes only into a table it has just created) and the per-CPU backend counters,
    // which only packets write. Reading 65,537 entries takes tens of milliseconds.
    const bool full = n % 12 == 0;
    const Dump before = full ? maps.dump() : maps.smallPacketMaps();
    xdp->failAfterWrites(n);
    try {
      xdp->apply(*s.b);
      break;  // n is past the last write: B is in force
    } catch (const XdpError& e) {
      failures.push_back(e.what());
    }
    const Dump after = full ? maps.dump() : maps.smallPacketMaps();
    ASSERT_TRUE(after == before) << "write " << n << " failed (" << failures.back()
                                 << "); the maps changed:" << diff(before, after);
    if (full) {
      ASSERT_TRUE(controlPart(after) == a_state)
          << "write " << n << ":" << diff(a_state, controlPart(after));
    } else {
      const Dump control = maps.controlPart(false);
      ASSERT_TRUE(control == withoutInnerTables(a_state))
          << "write " << n << ":" << diff(withoutInnerTables(a_state), control);
    }
    expectPacketsAsUnder(*xdp, dpdk, *s.a, s, static_cast<uint32_t>(n) + 1,
                         fmt::format("after write {} failed", n));
  }

  RecordProperty("injection_points", static_cast<int>(failures.size()));
  // Every phase of apply was hit, in order, and the last write is the clearing of a backend.
  auto first = [&failures](const std::string& what) {
    for (size_t i = 0; i < failures.size(); ++i) {
      if (failures[i].find(what) != std::string::npos) {
        return static_cast<int>(i);
      }
    }
    ADD_FAILURE() << "no injected failure in " << what;
    return -1;
  };
  const std::vector<int> phases = {
      first("write the backends map"),         first("fill a Maglev table"),
      first("install the Maglev table"),       first("write the service_by_id map"),
      first("write the services map"),         first("write the vip_addrs map"),
      first("write the nat_replies map"),      first("write the local_addrs map"),
      first("delete from the services map"),   first("delete from the vip_addrs map"),
      first("delete from the nat_replies map"), first("delete from the local_addrs map"),
      first("remove the Maglev table"),
  };
  EXPECT_TRUE(std::is_sorted(phases.begin(), phases.end()));
  ASSERT_FALSE(failures.empty());
  EXPECT_NE(failures.back().find("write the backends map"), std::string::npos) << failures.back();
  for (const std::string& f : failures) {
    EXPECT_NE(f.find("Input/output error"), std::string::npos) << f;
  }

  // B is in force now, and the packets go as under B.
  EXPECT_FALSE(maps.controlPart() == a_state);
  expectPacketsAsUnder(*xdp, dpdk, *s.b, s, 1000, "under B");

  // Publishing the snapshot in force again writes nothing: an armed first write is never made.
  const Dump b_state = maps.controlPart(false);
  xdp->failAfterWrites(0);
  EXPECT_NO_THROW(xdp->apply(*s.b));
  xdp->failAfterWrites(-1);
  EXPECT_TRUE(maps.controlPart(false) == b_state);

  // A delete that fails is a failed publish, not ignored: without api, the publish first clears
  // api's service_by_id entry, then deletes api's key from `services` (nothing else changes
  // before them).
  Config without_api = changedServices();
  std::erase_if(without_api.services, [](const ServiceConfig& c) { return c.name == "api"; });
  IdRegistry ids = s.ids;
  const SnapshotPtr c = buildSnapshot(withTableSize(without_api, 1021), ids, 3, s.b.get());
  xdp->failAfterWrites(1);
  try {
    xdp->apply(*c);
    ADD_FAILURE() << "the failed delete was ignored";
  } catch (const XdpError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot delete from the services map"), std::string::npos)
        << e.what();
  }
  const Dump after_delete = maps.controlPart(false);
  EXPECT_TRUE(after_delete == b_state) << diff(b_state, after_delete);
  expectPacketsAsUnder(*xdp, dpdk, *s.b, s, 1001, "after a failed delete");
}

TEST_F(XdpMaps, HandlePutsTheProgramsThatTookTheSnapshotBack) {
  LOAD_OR_SKIP(first);
  LOAD_OR_SKIP(second);
  XdpDataplane* p0 = first.get();
  XdpDataplane* p1 = second.get();
  const TwoSnapshots s;
  const ProgramMaps maps0(p0->programFd());
  const ProgramMaps maps1(p1->programFd());
  const Dump loaded = maps0.controlPart();
  std::vector<std::unique_ptr<XdpDataplane>> programs;
  programs.push_back(std::move(first));
  programs.push_back(std::move(second));
  XdpDataplaneHandle handle(std::move(programs));

  // The first publish fails on the second program: it rolls back to the maps as loaded (the
  // keys it added are deleted again), and the first, which took the snapshot, is emptied.
  for (int n : {0, 9}) {
    p1->failAfterWrites(n);
    EXPECT_THROW(handle.publish(std::make_unique<Snapshot>(*s.a)), XdpError);
    EXPECT_EQ(handle.current(), nullptr);
    const Dump now0 = maps0.controlPart();  // no Maglev table: cheap to read in full
    const Dump now1 = maps1.controlPart();
    ASSERT_TRUE(now0 == loaded) << "write " << n << ", first program:" << diff(loaded, now0);
    ASSERT_TRUE(now1 == loaded) << "write " << n << ", second program:" << diff(loaded, now1);
  }

  auto a = std::make_unique<Snapshot>(*s.a);
  const Snapshot* a_ptr = a.get();
  handle.publish(std::move(a));
  ASSERT_EQ(handle.current(), a_ptr);
  const Dump a0 = withoutInnerIds(maps0.controlPart());
  const Dump a1 = maps1.controlPart(false);  // its own inner maps: their ids are compared

  int failed = 0;
  for (int n = 0;; n += 8) {
    ASSERT_LT(n, 1000);
    p1->failAfterWrites(n);
    try {
      handle.publish(std::make_unique<Snapshot>(*s.b));
      break;
    } catch (const XdpError&) {
      ++failed;
    }
    EXPECT_EQ(handle.current(), a_ptr);
    // The program that had taken B was given A again (new inner maps of A's tables); the one
    // that failed rolled itself back (its very inner maps).
    const Dump now0 = withoutInnerIds(maps0.controlPart());
    const Dump now1 = maps1.controlPart(false);
    ASSERT_TRUE(now0 == a0) << "write " << n << ", first program:" << diff(a0, now0);
    ASSERT_TRUE(now1 == a1) << "write " << n << ", second program:" << diff(a1, now1);
  }
  EXPECT_GE(failed, 3);
  ASSERT_NE(handle.current(), a_ptr);
  EXPECT_EQ(handle.current()->generation, s.b->generation);
  EXPECT_TRUE(withoutInnerIds(maps0.controlPart()) ==
              withoutInnerIds(maps1.controlPart()));
}

TEST_F(XdpMaps, ControlPlaneKeepsItsConfigurationWhenThePublishFails) {
  LOAD_OR_SKIP(program);
  XdpDataplane* xdp = program.get();
  const ProgramMaps maps(xdp->programFd());
  std::vector<std::unique_ptr<XdpDataplane>> programs;
  programs.push_back(std::move(program));
  XdpDataplaneHandle handle(std::move(programs));
  ControlPlane cp(testsupport::threeServices(), "", handle);
  cp.start();
  const uint64_t generation = cp.generation();
  const Snapshot* in_force = handle.current();
  const size_t ids = in_force->backends.size();
  const Dump before = maps.controlPart(false);  // the inner maps' ids: no table is replaced

  const nlohmann::json add = {
      {"command", "backend.add"},
      {"service", "web"},
      {"backend", {{"address", "10.0.0.14"}, {"mac", "02:00:00:00:01:14"}}}};
  xdp->failAfterWrites(0);
  const nlohmann::json r = cp.handle(add);
  EXPECT_FALSE(r.value("ok", true)) << r.dump();
  const std::string error = r.value("error", "");
  EXPECT_EQ(error.rfind("the data path did not take the change (", 0), 0u) << error;
  EXPECT_NE(error.find("Input/output error"), std::string::npos) << error;
  EXPECT_TRUE(error.ends_with("); running configuration kept")) << error;
  EXPECT_EQ(cp.generation(), generation);
  EXPECT_EQ(handle.current(), in_force);
  for (const ServiceConfig& sc : cp.config().services) {
    if (sc.name == "web") {
      EXPECT_EQ(sc.backends.size(), 3u);
    }
  }
  const Dump after = maps.controlPart(false);
  EXPECT_TRUE(after == before) << diff(before, after);

  // The same change again, without the fault: it goes through, and the backend gets the id the
  // failed attempt would have had (the id registry was not advanced by it).
  const nlohmann::json ok = cp.handle(add);
  EXPECT_TRUE(ok.value("ok", false)) << ok.dump();
  EXPECT_EQ(cp.generation(), generation + 1);
  ASSERT_NE(handle.current(), in_force);
  EXPECT_EQ(handle.current()->backends.size(), ids + 1);
  EXPECT_TRUE(handle.current()->backends[ids].present);
}

// ---------------------------------------------------------------------------------------------
// Sluice's own addresses.

/** An address key as text: "addr port proto" (an address alone has port 0, proto 0). */
std::string keyText(const EndpointKey& k) {
  return fmt::format("{} {} {}", IpAddress::fromWords(k.family, k.addr).str(), k.port, k.proto);
}

/** The keys of local_addrs, sorted, and whether every value is the loader's 1. */
std::vector<std::string> localAddrKeys(const ProgramMaps& maps, bool& values_ok) {
  const MapImage m = readMap(maps.fd("local_addrs"));
  std::vector<std::string> keys;
  values_ok = m.value_size == sizeof(uint32_t);
  for (size_t i = 0; i < m.entries(); ++i) {
    EndpointKey k;
    std::memcpy(&k, m.keys.data() + i * m.key_size, sizeof(k));
    keys.push_back(keyText(k));
    uint32_t v = 0;
    std::memcpy(&v, m.values.data() + i * m.value_size, sizeof(v));
    values_ok = values_ok && v == 1;
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

std::vector<std::string> addressKeys(std::initializer_list<const char*> prefixes) {
  std::vector<std::string> keys;
  for (const char* p : prefixes) {
    keys.push_back(keyText(makeEndpointKey(IpPrefix::parse(p)->address, 0, 0)));
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

TEST_F(XdpMaps, LocalAddressesFollowTheSnapshotAndAreRefusedWholeWhenTooMany) {
  LOAD_OR_SKIP(xdp);
  const TwoSnapshots s;
  const ProgramMaps maps(xdp->programFd());
  bool values_ok = false;
  xdp->apply(*s.a);
  EXPECT_EQ(localAddrKeys(maps, values_ok), addressKeys({kAddressesA[0], kAddressesA[1]}));
  EXPECT_TRUE(values_ok);
  xdp->apply(*s.b);
  EXPECT_EQ(localAddrKeys(maps, values_ok), addressKeys({kAddressesB[0], kAddressesB[1]}));
  EXPECT_TRUE(values_ok);

  // One more address than the map holds: refused before anything is written.
  const Dump before = maps.controlPart(false);
  Snapshot too_many = *s.a;
  bpf_map_info info{};
  uint32_t len = sizeof(info);
  ASSERT_EQ(bpf_obj_get_info_by_fd(maps.fd("local_addrs"), &info, &len), 0);
  for (uint32_t i = 0; i <= info.max_entries; ++i) {
    too_many.local_addresses.insert(makeEndpointKey(IpAddress::v4(0x64400000u + i), 0, 0), {});
  }
  xdp->failAfterWrites(0);  // were anything written, the first write would fail: not the message
  try {
    xdp->apply(too_many);
    ADD_FAILURE() << "a snapshot with " << too_many.local_addresses.size()
                  << " local addresses was taken";
  } catch (const XdpError& e) {
    EXPECT_NE(std::string(e.what()).find("local addresses are more than"), std::string::npos)
        << e.what();
  }
  xdp->failAfterWrites(-1);
  const Dump after = maps.controlPart(false);
  EXPECT_TRUE(after == before) << diff(before, after);

  // None: the map is emptied, and their traffic is no_service again (passed).
  xdp->apply(Snapshot{});
  EXPECT_TRUE(localAddrKeys(maps, values_ok).empty());
}

}  // namespace
}  // namespace sluice
