// Golden values of the cross-host contract. Hosts behind one ECMP group run their own control
// planes, possibly of different Sluice versions, and must send every flow to the same backend: a
// flow that ECMP moves to another host (one added, removed or rehashed) must land where it was.
// That holds only while three things stay exactly as they are:
//   - the flow hash, lb_flow_hash (src/common/lb_abi.h), shared by both data paths;
//   - the key that seeds a backend's Maglev permutation, maglevBackendKey
//     (src/control/snapshot_builder.h): the endpoint, never the id;
//   - the Maglev fill itself (src/control/maglev.cc), for a given set of backends and M.
// So the values below are literals, computed once with the code as it was when they were added
// (see the note at the end of this file), and they MUST NEVER CHANGE. A change that makes one of
// these tests fail reshuffles every deployed service on upgrade; it is not fixed by updating the
// literals. The Maglev expectations are in the manner of Envoy's maglev_lb_test.cc
// (expected_assignments), with the dumped tables kept as comments.
#include <arpa/inet.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/lb_abi.h"
#include "common/net.h"
#include "common/snapshot.h"
#include "control/config.h"
#include "control/snapshot_builder.h"
#include "tests/support/fixtures.h"

namespace sluice {
namespace {

using testsupport::ip;

// ---------------------------------------------------------------------------------------------
// The flow hash

/** The key both data paths build from a packet: addresses and ports as on the wire. */
lb_flow_key flowKey(std::string_view src, uint16_t sport, std::string_view dst, uint16_t dport,
                    uint8_t proto) {
  lb_flow_key k;
  std::memset(&k, 0, sizeof(k));
  const IpAddress s = ip(src);
  s.toWords(k.src);
  ip(dst).toWords(k.dst);
  k.sport = htons(sport);
  k.dport = htons(dport);
  k.proto = proto;
  k.family = s.family;
  return k;
}

struct HashCase {
  const char* src;
  uint16_t sport;
  const char* dst;
  uint16_t dport;
  uint8_t proto;
  uint32_t hash;  // lb_flow_hash: must never change
};

// Fixed 5-tuples of both families and protocols, the reverse direction of one, the same tuple
// under the other protocol, and the all-zero and all-ones corners.
constexpr HashCase kHashCases[] = {
    {"198.51.100.7", 40000, "192.0.2.10", 80, LB_PROTO_TCP, 0x31082291u},
    {"192.0.2.10", 80, "198.51.100.7", 40000, LB_PROTO_TCP, 0x9ff0dcc1u},
    {"198.51.100.7", 40000, "192.0.2.10", 80, LB_PROTO_UDP, 0x6e4d67deu},
    {"203.0.113.1", 10000, "192.0.2.53", 53, LB_PROTO_UDP, 0x29d0fdb5u},
    {"0.0.0.0", 0, "0.0.0.0", 0, LB_PROTO_TCP, 0xb49156efu},
    {"255.255.255.255", 65535, "255.255.255.255", 65535, LB_PROTO_UDP, 0xddb0041cu},
    {"2001:db8:ff::1", 50000, "2001:db8::10", 443, LB_PROTO_TCP, 0xb9fa56feu},
    {"2001:db8:ff::2", 5353, "2001:db8::53", 53, LB_PROTO_UDP, 0x1484ba31u},
    {"::", 0, "::", 0, LB_PROTO_UDP, 0xe0b79ed4u},
    {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, "fe80::1", 1, LB_PROTO_TCP, 0xac8e5274u},
};

TEST(GoldenFlowHash, FixedTuplesHashToFixedValues) {
  for (const HashCase& c : kHashCases) {
    const lb_flow_key k = flowKey(c.src, c.sport, c.dst, c.dport, c.proto);
    EXPECT_EQ(lb_flow_hash(&k), c.hash)
        << (c.proto == LB_PROTO_TCP ? "tcp " : "udp ") << c.src << " " << c.sport << " > "
        << c.dst << " " << c.dport << ": lb_flow_hash changed; it must never change";
  }
}

// ---------------------------------------------------------------------------------------------
// The Maglev backend key

TEST(GoldenMaglevKey, IsTheEndpoint) {
  EXPECT_EQ(maglevBackendKey(ip("10.0.0.11"), 80), "10.0.0.11:80");
  EXPECT_EQ(maglevBackendKey(ip("10.0.1.21"), 5353), "10.0.1.21:5353");
  EXPECT_EQ(maglevBackendKey(ip("2001:db8:1::11"), 8443), "[2001:db8:1::11]:8443");
}

// ---------------------------------------------------------------------------------------------
// The Maglev tables of the fixture configuration

/** FNV-1a 64 over the names, each followed by '\n'. */
uint64_t fnv1a64(const std::vector<std::string>& names) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](uint8_t byte) {
    h ^= byte;
    h *= 0x100000001b3ull;
  };
  for (const std::string& n : names) {
    for (const char c : n) {
      mix(static_cast<uint8_t>(c));
    }
    mix('\n');
  }
  return h;
}

/**
 * Each service's table as the backend endpoints its slots name ("-" for an empty slot): what two
 * hosts must agree on. Ids are left out on purpose: each host hands out its own.
 */
std::map<std::string, std::vector<std::string>> endpointTables(const Snapshot& snap) {
  std::map<std::string, std::vector<std::string>> out;
  for (const ServiceEntry& s : snap.services) {
    if (!s.present) {
      continue;
    }
    std::vector<std::string>& names = out[s.name];
    names.reserve(s.maglev.size());
    for (const uint32_t id : s.maglev) {
      names.push_back(id == LB_BACKEND_NONE
                          ? "-"
                          : formatEndpoint(snap.backends[id].address, snap.backends[id].port));
    }
  }
  return out;
}

std::map<std::string, std::vector<std::string>> endpointTables(const Config& c) {
  IdRegistry ids;
  return endpointTables(*buildSnapshot(c, ids, 1));
}

/** The fixture with every service's table size set to m. */
Config fixtureWithTableSize(uint32_t m) {
  Config c = testsupport::threeServices();
  for (ServiceConfig& s : c.services) {
    s.table_size = m;
  }
  return c;
}

// The fixture's backends (sluice::defaultConfigText(): web weights 100, 100, 200; dns and web6
// weight 1 each). Short names rather than kConstants, so that a row of slots below reads like
// Envoy's expected_assignments.
constexpr const char* W1 = "10.0.0.11:80";
constexpr const char* W2 = "10.0.0.12:80";
constexpr const char* W3 = "10.0.0.13:80";
constexpr const char* D1 = "10.0.1.21:5353";
constexpr const char* D2 = "10.0.1.22:5353";
constexpr const char* V1 = "[2001:db8:1::11]:8443";
constexpr const char* V2 = "[2001:db8:1::12]:8443";

struct GoldenTable {
  const char* service;
  std::map<std::string, uint32_t> slots;  // slots per backend endpoint
  uint64_t digest;                        // fnv1a64 over the endpoints of all M slots, in order
  std::vector<std::string> first;         // slots 0..15
};

void expectTables(uint32_t m, const std::vector<GoldenTable>& golden) {
  const auto tables = endpointTables(fixtureWithTableSize(m));
  ASSERT_EQ(tables.size(), golden.size());
  for (const GoldenTable& g : golden) {
    SCOPED_TRACE(std::string("service ") + g.service + ", M = " + std::to_string(m));
    ASSERT_TRUE(tables.contains(g.service));
    const std::vector<std::string>& t = tables.at(g.service);
    ASSERT_EQ(t.size(), m);
    std::map<std::string, uint32_t> slots;
    for (const std::string& e : t) {
      ++slots[e];
    }
    EXPECT_EQ(slots, g.slots);
    EXPECT_EQ(std::vector<std::string>(t.begin(), t.begin() + 16), g.first);
    EXPECT_EQ(fnv1a64(t), g.digest) << "the table changed; it must never change";
  }
}

// The first 64 slots, backends numbered in the order the fixture lists them (web: 1 = W1 ..):
//   web   33321112 33332333 31322223 11113333 33111213 32233332 32223333 21113333
//   dns   21112211 22211221 12221122 11122112 21122211 22112221 11211222 11122122
//   web6  12212212 12112112 22211112 12212211 12112212 22112112 12222111 12212212
TEST(GoldenMaglev, FixtureTablesOfTheDefaultSize) {
  ASSERT_EQ(kDefaultMaglevTableSize, 65537u);
  expectTables(65537, {
      {"web", {{W1, 16385}, {W2, 16384}, {W3, 32768}}, 0x9abf29da1b04fddcull,
       {W3, W3, W3, W2, W1, W1, W1, W2, W3, W3, W3, W3, W2, W3, W3, W3}},
      {"dns", {{D1, 32769}, {D2, 32768}}, 0x12eac4e491f73542ull,
       {D2, D1, D1, D1, D2, D2, D1, D1, D2, D2, D2, D1, D1, D2, D2, D1}},
      {"web6", {{V1, 32769}, {V2, 32768}}, 0x66d515b200e424ccull,
       {V1, V2, V2, V1, V2, V2, V1, V2, V1, V2, V1, V1, V2, V1, V1, V2}},
  });
}

// The whole tables, numbered as above:
//   web   33321313 11133231 23313133 11333312 33231232 13331123 32312121 33231233
//         31131333 23323133 21313212 33231232 13133223 33312332 31232233 22121313
//         13323333 21313311 33331233 23133213 33212332 31232133 22123321 12132333
//         32333321 31331233 23133213 13112332 31233131 23223331 12332312 322
//   dns   22211122 12112221 11222111 22111122 21112212 11212111 22121121 21211212
//         11212121 22121121 21112212 11222111 22111222 11122221 12221212 21211222
//         12122121 22121211 21212212 12122121 12221212 21211222 11122211 12221112
//         22111221 21122212 12212112 12121121 21121212 11212112 12121221 211
//   web6  12211211 22112212 21122122 11221122 12211221 22112212 21122122 21221222
//         12212221 22212212 22122122 21222222 12222221 22222212 22222222 22222222
//         12222222 22222111 11111111 11111111 21111112 11111111 11211111 12111111
//         21111112 11121121 11211211 12112211 21112112 11121122 11211221 121
TEST(GoldenMaglev, FixtureTablesOfASmallPrime) {
  expectTables(251, {
      {"web", {{W1, 63}, {W2, 63}, {W3, 125}}, 0x274b5fc27a5c41edull,
       {W3, W3, W3, W2, W1, W3, W1, W3, W1, W1, W1, W3, W3, W2, W3, W1}},
      {"dns", {{D1, 126}, {D2, 125}}, 0xbfa522f2187b43abull,
       {D2, D2, D2, D1, D1, D1, D2, D2, D1, D2, D1, D1, D2, D2, D2, D1}},
      {"web6", {{V1, 126}, {V2, 125}}, 0x2ed0342a816dd4e3ull,
       {V1, V2, V2, V1, V1, V2, V1, V1, V2, V2, V1, V1, V2, V2, V1, V2}},
  });
}

// A flow of each service, end to end: its hash (pinned above) picks the slot of the pinned table.
TEST(GoldenMaglev, FixedFlowsReachFixedBackends) {
  struct FlowCase {
    const HashCase& flow;
    const char* backend_65537;
    const char* backend_251;
  };
  const FlowCase cases[] = {
      {kHashCases[0], W2, W2},  // tcp 198.51.100.7:40000 > 192.0.2.10:80
      {kHashCases[3], D1, D1},  // udp 203.0.113.1:10000 > 192.0.2.53:53
      {kHashCases[6], V1, V1},  // tcp [2001:db8:ff::1]:50000 > [2001:db8::10]:443
  };
  for (const uint32_t m : {65537u, 251u}) {
    IdRegistry ids;
    const SnapshotPtr snap = buildSnapshot(fixtureWithTableSize(m), ids, 1);
    for (const FlowCase& c : cases) {
      SCOPED_TRACE(std::string(c.flow.src) + " > " + c.flow.dst + ", M = " + std::to_string(m));
      const EndpointMap::Value* svc =
          snap->service_map.find(makeEndpointKey(ip(c.flow.dst), c.flow.dport, c.flow.proto));
      ASSERT_NE(svc, nullptr);
      const ServiceEntry& s = snap->services[svc->service_id];
      const uint32_t id = s.maglev.pick(c.flow.hash);
      ASSERT_NE(id, LB_BACKEND_NONE);
      EXPECT_EQ(formatEndpoint(snap->backends[id].address, snap->backends[id].port),
                m == 65537 ? c.backend_65537 : c.backend_251);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// What the tables must not depend on

TEST(GoldenMaglev, IndependentOfTheOrderBackendsAndServicesAreListedIn) {
  for (const uint32_t m : {65537u, 251u}) {
    const Config listed = fixtureWithTableSize(m);
    Config reordered = listed;
    for (ServiceConfig& s : reordered.services) {
      std::reverse(s.backends.begin(), s.backends.end());
    }
    std::rotate(reordered.services.begin(), reordered.services.begin() + 1,
                reordered.services.end());
    // The backends get other ids in the reordered build, so the check below compares more than
    // the same build twice.
    IdRegistry ids_a;
    IdRegistry ids_b;
    const SnapshotPtr a = buildSnapshot(listed, ids_a, 1);
    const SnapshotPtr b = buildSnapshot(reordered, ids_b, 1);
    ASSERT_NE(ids_a.assign(listed).backend_ids, ids_b.assign(listed).backend_ids);
    EXPECT_EQ(endpointTables(*a), endpointTables(*b)) << "M = " << m;
  }
}

TEST(GoldenMaglev, IndependentOfTheIdsTheRegistryHandsOut) {
  for (const uint32_t m : {65537u, 251u}) {
    const Config fixture = fixtureWithTableSize(m);
    IdRegistry fresh;
    const SnapshotPtr expected = buildSnapshot(fixture, fresh, 1);

    // A host that has seen other services and backends come and go first.
    IdRegistry churned;
    Config other = testsupport::threeServices();
    ServiceConfig api = testsupport::service(other, "dns");
    api.name = "api";
    api.vip = ip("192.0.2.20");
    api.port = 8080;
    api.protocol = Protocol::kTcp;
    api.backends.clear();
    for (int i = 1; i <= 6; ++i) {
      BackendConfig b = testsupport::service(other, "dns").backends[0];
      b.address = ip("10.0.9." + std::to_string(i));
      b.port = 9000;
      api.backends.push_back(b);
    }
    other.services.insert(other.services.begin(), api);
    other.services.pop_back();  // web6 gone for a while
    buildSnapshot(other, churned, 1);
    other.services.erase(other.services.begin());  // api deleted: its ids are freed
    testsupport::service(other, "web").backends.erase(
        testsupport::service(other, "web").backends.begin());  // and 10.0.0.11
    buildSnapshot(other, churned, 2);

    const SnapshotPtr after_churn = buildSnapshot(fixture, churned, 3);
    // Other ids than the fresh registry's (or the test proves nothing) ...
    std::vector<uint32_t> fresh_ids;
    std::vector<uint32_t> churned_ids;
    for (const ServiceEntry& s : expected->services) {
      fresh_ids.insert(fresh_ids.end(), s.backend_ids.begin(), s.backend_ids.end());
    }
    for (const ServiceEntry& s : after_churn->services) {
      churned_ids.insert(churned_ids.end(), s.backend_ids.begin(), s.backend_ids.end());
    }
    ASSERT_NE(fresh_ids, churned_ids);
    // ... and the same tables, endpoint for endpoint.
    EXPECT_EQ(endpointTables(*after_churn), endpointTables(*expected)) << "M = " << m;
  }
}

// How the literals were computed (once, with the code of the commit that added this file): a
// throw-away program linked against sluice_control that printed, for each case above,
// lb_flow_hash(&flowKey(...)), maglevBackendKey(...), and for the fixture built with
// buildSnapshot at M = 65537 and M = 251 the per-backend slot counts, fnv1a64 of the slots'
// endpoints and the first slots, exactly as the helpers of this file compute them.

}  // namespace
}  // namespace sluice
