// The snapshot the workers read: lookup maps, Maglev slot selection, and the id registry that keeps
// flows meaningful across configuration changes.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "control/config.h"
#include "control/maglev.h"
#include "control/snapshot_builder.h"
#include "common/snapshot.h"

namespace sluice {
namespace {

Config twoServices() {
  return parseConfig(R"(
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
[[service.backend]]
address = "10.0.0.1"
mac = "02:00:00:00:00:01"
[[service.backend]]
address = "10.0.0.2"
mac = "02:00:00:00:00:02"
[[service.backend]]
address = "10.0.0.3"
mac = "02:00:00:00:00:03"

[[service]]
name = "v6"
vip = "2001:db8::10"
port = 443
protocol = "tcp"
forwarding = "nat"
[[service.backend]]
address = "2001:db8:1::1"
port = 8443
mac = "02:00:00:00:01:01"
)",
                     "test");
}

TEST(EndpointMap, FindsEveryInsertedKeyAndNothingElse) {
  EndpointMap m;
  std::vector<EndpointKey> keys;
  for (uint32_t i = 0; i < 5000; ++i) {
    const IpAddress a = (i % 2 == 0) ? IpAddress::v4(0x0a000000 + i)
                                      : *IpAddress::parse("2001:db8::" + std::to_string(i % 9999));
    keys.push_back(makeEndpointKey(a, static_cast<uint16_t>(i % 65000 + 1), i % 3 == 0 ? 17 : 6));
  }
  for (uint32_t i = 0; i < keys.size(); ++i) {
    m.insert(keys[i], {i, i + 1});
  }
  ASSERT_EQ(m.size(), keys.size());
  for (uint32_t i = 0; i < keys.size(); ++i) {
    const EndpointMap::Value* v = m.find(keys[i]);
    ASSERT_NE(v, nullptr) << i;
    EXPECT_EQ(v->service_id, i);
    EXPECT_EQ(v->backend_id, i + 1);
  }
  EndpointKey other = keys[0];
  other.port ^= 0x0100;
  EXPECT_EQ(m.find(other), nullptr);
  other = keys[0];
  other.proto = 132;
  EXPECT_EQ(m.find(other), nullptr);
  EXPECT_EQ(EndpointMap().find(keys[0]), nullptr);
}

TEST(ServiceEntry, PickEqualsHashModuloTableSize) {
  // The XDP path will compute hash % M directly: the division-free pick must agree exactly.
  std::mt19937 rng(7);
  for (uint32_t m : {7u, 13u, 251u, 16381u, 65537u, 1048573u}) {
    ServiceEntry se;
    std::vector<uint32_t> identity(m);
    for (uint32_t i = 0; i < m; ++i) {
      identity[i] = i;
    }
    se.maglev = MaglevSlots(std::move(identity));
    for (uint32_t h : {0u, 1u, m - 1, m, m + 1, 0xffffffffu, 0xfffffffeu, 0x80000000u}) {
      ASSERT_EQ(se.pick(h), h % m) << "m=" << m << " h=" << h;
    }
    for (int i = 0; i < 200000; ++i) {
      const uint32_t h = static_cast<uint32_t>(rng());
      ASSERT_EQ(se.pick(h), h % m) << "m=" << m << " h=" << h;
    }
  }
}

TEST(SnapshotBuilder, MapsServicesRepliesAndVipAddresses) {
  IdRegistry ids;
  SnapshotPtr s = buildSnapshot(twoServices(), ids, 7);
  EXPECT_EQ(s->generation, 7u);
  const EndpointMap::Value* web =
      s->service_map.find(makeEndpointKey(*IpAddress::parse("192.0.2.10"), 80, 6));
  ASSERT_NE(web, nullptr);
  EXPECT_EQ(s->services[web->service_id].name, "web");
  EXPECT_EQ(s->service_map.find(makeEndpointKey(*IpAddress::parse("192.0.2.10"), 80, 17)), nullptr);
  // DR backends are not in the reply map; NAT backends are, with their service.
  EXPECT_EQ(s->nat_reply_map.find(makeEndpointKey(*IpAddress::parse("10.0.0.1"), 80, 6)), nullptr);
  const EndpointMap::Value* rep =
      s->nat_reply_map.find(makeEndpointKey(*IpAddress::parse("2001:db8:1::1"), 8443, 6));
  ASSERT_NE(rep, nullptr);
  EXPECT_EQ(s->services[rep->service_id].name, "v6");
  EXPECT_TRUE(s->backends[rep->backend_id].present);
  EXPECT_NE(s->vip_addresses.find(makeEndpointKey(*IpAddress::parse("2001:db8::10"), 0, 0)), nullptr);
  EXPECT_EQ(s->tcp_timeout_ns, 900ull * 1000000000ull);
  // Every slot of a service's table names one of its own backends.
  const ServiceEntry& se = s->services[web->service_id];
  ASSERT_EQ(se.maglev.size(), kDefaultMaglevTableSize);
  for (uint32_t id : se.maglev) {
    ASSERT_TRUE(s->backends[id].present);
    ASSERT_EQ(s->backends[id].service_id, se.id);
  }
}

TEST(IdRegistry, IdsStayWhileBackendsExistAndReusedIdsGetANewEpoch) {
  IdRegistry ids;
  Config c = twoServices();
  SnapshotPtr a = buildSnapshot(c, ids, 1);
  auto idOf = [](const Snapshot& s, const char* addr) {
    for (uint32_t i = 1; i < s.backends.size(); ++i) {
      if (s.backends[i].present && s.backends[i].address == *IpAddress::parse(addr)) {
        return i;
      }
    }
    return 0u;
  };
  const uint32_t id1 = idOf(*a, "10.0.0.1");
  const uint32_t id3 = idOf(*a, "10.0.0.3");
  ASSERT_NE(id1, 0u);
  ASSERT_NE(id3, 0u);

  // Remove 10.0.0.3: the others keep their ids.
  c.services[0].backends.pop_back();
  SnapshotPtr b = buildSnapshot(c, ids, 2);
  EXPECT_EQ(idOf(*b, "10.0.0.1"), id1);
  EXPECT_EQ(idOf(*b, "10.0.0.3"), 0u);

  // A new backend takes the freed id, with a new epoch: a flow pinned to 10.0.0.3 sees the change.
  BackendConfig nb;
  nb.address = *IpAddress::parse("10.0.0.9");
  nb.port = 80;
  nb.mac = *MacAddress::parse("02:00:00:00:00:09");
  nb.weight = 1;
  c.services[0].backends.push_back(nb);
  SnapshotPtr d = buildSnapshot(c, ids, 3);
  EXPECT_EQ(idOf(*d, "10.0.0.9"), id3);
  EXPECT_NE(d->backends[id3].epoch, a->backends[id3].epoch);
  EXPECT_EQ(d->backends[id1].epoch, a->backends[id1].epoch);
}

TEST(SnapshotBuilder, BackendChoiceDoesNotDependOnIdsOrOrder) {
  // Two hosts that handed out different ids (one saw another service first) and list the
  // backends in another order must still send every hash to the same backend endpoint.
  Config c1 = twoServices();
  Config c2 = twoServices();
  std::swap(c2.services[0], c2.services[1]);
  std::reverse(c2.services[1].backends.begin(), c2.services[1].backends.end());
  IdRegistry r1;
  IdRegistry r2;
  SnapshotPtr s1 = buildSnapshot(c1, r1, 1);
  SnapshotPtr s2 = buildSnapshot(c2, r2, 1);
  const EndpointKey k = makeEndpointKey(*IpAddress::parse("192.0.2.10"), 80, 6);
  const ServiceEntry& w1 = s1->services[s1->service_map.find(k)->service_id];
  const ServiceEntry& w2 = s2->services[s2->service_map.find(k)->service_id];
  for (uint32_t h = 0; h < 100000; h += 7) {
    ASSERT_EQ(s1->backends[w1.pick(h)].address, s2->backends[w2.pick(h)].address) << h;
  }
}

TEST(SnapshotBuilder, UnchangedServicesShareTheirMaglevTableWithThePreviousSnapshot) {
  IdRegistry ids;
  Config c = twoServices();
  SnapshotPtr a = buildSnapshot(c, ids, 1);
  // Change only the web service (a weight): v6's table is shared, web's is rebuilt.
  c.services[0].backends[1].weight = 5;
  SnapshotPtr b = buildSnapshot(c, ids, 2, a.get());
  auto serviceOf = [](const Snapshot& s, const char* name) -> const ServiceEntry& {
    for (const ServiceEntry& e : s.services) {
      if (e.present && e.name == name) {
        return e;
      }
    }
    throw std::runtime_error("no service");
  };
  EXPECT_EQ(serviceOf(*a, "v6").maglev.begin(), serviceOf(*b, "v6").maglev.begin());
  EXPECT_NE(serviceOf(*a, "web").maglev.begin(), serviceOf(*b, "web").maglev.begin());
  // The shared table is the one a fresh build gives; so is the rebuilt one.
  IdRegistry fresh_ids;
  SnapshotPtr fresh = buildSnapshot(c, fresh_ids, 1);
  for (const char* name : {"web", "v6"}) {
    const ServiceEntry& got = serviceOf(*b, name);
    const ServiceEntry& want = serviceOf(*fresh, name);
    ASSERT_EQ(got.maglev.size(), want.maglev.size());
    for (size_t i = 0; i < got.maglev.size(); ++i) {
      ASSERT_EQ(b->backends[got.maglev[i]].address, fresh->backends[want.maglev[i]].address) << i;
    }
  }
  // Removing a backend and adding another one that takes its id (new epoch) rebuilds the table.
  c.services[1].backends[0].address = *IpAddress::parse("2001:db8:1::9");
  SnapshotPtr d = buildSnapshot(c, ids, 3, b.get());
  EXPECT_NE(serviceOf(*b, "v6").maglev.begin(), serviceOf(*d, "v6").maglev.begin());
}

// Services of 1 to 40 backends, some weighted, at three table sizes.
Config manyServices(uint32_t services) {
  std::mt19937 rng(42);
  const uint32_t sizes[] = {251, 4093, 65537};
  std::string text = "[dataplane]\ngateway_mac = \"02:00:00:00:00:fe\"\n";
  for (uint32_t v = 0; v < services; ++v) {
    text += "[[service]]\nname = \"s" + std::to_string(v) + "\"\nvip = \"192.0.2." +
            std::to_string(v + 1) + "\"\nport = 80\nprotocol = \"tcp\"\nforwarding = \"dr\"\n" +
            "table_size = " + std::to_string(sizes[v % 3]) + "\n";
    const uint32_t backends = rng() % 40 + 1;
    for (uint32_t b = 0; b < backends; ++b) {
      text += "[[service.backend]]\naddress = \"10." + std::to_string(v) + ".0." +
              std::to_string(b + 1) + "\"\nmac = \"02:00:00:00:00:01\"\n";
      if (v % 2 == 1) {
        text += "weight = " + std::to_string(rng() % 10) + "\n";  // 0 drains it
      }
    }
  }
  return parseConfig(text, "many.toml");
}

TEST(SnapshotBuilder, TablesBuiltOnSeveralThreadsEqualTheSerialBuild) {
  const Config c = manyServices(24);
  IdRegistry serial_ids;
  const SnapshotPtr serial = buildSnapshot(c, serial_ids, 1, nullptr, nullptr, 1);
  for (const unsigned threads : {2u, 3u, 8u, 0u}) {
    IdRegistry ids;
    const SnapshotPtr parallel = buildSnapshot(c, ids, 1, nullptr, nullptr, threads);
    ASSERT_EQ(parallel->services.size(), serial->services.size());
    for (size_t sid = 0; sid < serial->services.size(); ++sid) {
      const ServiceEntry& want = serial->services[sid];
      const ServiceEntry& got = parallel->services[sid];
      ASSERT_EQ(got.present, want.present) << sid;
      EXPECT_EQ(got.name, want.name);
      EXPECT_EQ(got.maglev_inputs, want.maglev_inputs) << want.name;
      ASSERT_EQ(std::vector<uint32_t>(got.maglev.begin(), got.maglev.end()),
                std::vector<uint32_t>(want.maglev.begin(), want.maglev.end()))
          << want.name << " on " << threads << " threads";
    }
  }
  // And each table is the one its service's backends give on their own.
  size_t checked = 0;
  for (const ServiceEntry& se : serial->services) {
    if (!se.present) {
      continue;
    }
    std::vector<MaglevBackend> backends;
    for (const uint32_t id : se.backend_ids) {
      const BackendEntry& be = serial->backends[id];
      backends.push_back({id, maglevBackendKey(be.address, be.port), be.weight});
    }
    const std::vector<uint32_t> own = buildMaglevTable(backends, se.maglev.size());
    EXPECT_EQ(std::vector<uint32_t>(se.maglev.begin(), se.maglev.end()), own) << se.name;
    ++checked;
  }
  EXPECT_EQ(checked, 24u);
}

TEST(SnapshotBuilder, ATableThatCannotBeBuiltThrowsTheFirstServicesErrorOnAnyThreadCount) {
  Config c = manyServices(12);
  c.services[3].table_size = 1000;  // not prime: config validation would have refused both
  c.services[8].table_size = 1001;
  for (const unsigned threads : {1u, 2u, 4u}) {
    IdRegistry ids;
    try {
      buildSnapshot(c, ids, 1, nullptr, nullptr, threads);
      ADD_FAILURE() << "no exception on " << threads << " threads";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("1000"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

// A gateway host: backends on-link (resolved), one off-link through the gateway, one with a MAC.
Config hostServices() {
  return parseConfig(R"(
[dataplane]
addresses = ["198.51.100.2/24", "2001:db8:b::2/64"]
gateway = ["198.51.100.1", "2001:db8:b::1"]

[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
on_backend_down = "reschedule"
[[service.backend]]
address = "198.51.100.11"
[[service.backend]]
address = "198.51.100.12"
weight = 0
[[service.backend]]
address = "10.9.0.1"
[[service.backend]]
address = "10.9.0.2"
mac = "02:00:00:00:09:02"

[[service]]
name = "nat6"
vip = "2001:db8::10"
port = 443
protocol = "tcp"
forwarding = "nat"
[[service.backend]]
address = "2001:db8:b::11"
port = 8443
)",
                     "t.toml");
}

const BackendEntry& entryOf(const Snapshot& s, const char* service, const char* addr) {
  for (const ServiceEntry& svc : s.services) {
    if (svc.present && svc.name == service) {
      for (uint32_t id : svc.backend_ids) {
        if (s.backends[id].address == *IpAddress::parse(addr)) {
          return s.backends[id];
        }
      }
    }
  }
  throw std::runtime_error("no such backend");
}

std::set<uint32_t> inTable(const ServiceEntry& s) {
  return std::set<uint32_t>(s.maglev.begin(), s.maglev.end());
}

TEST(SnapshotRuntime, StatesFromResolutionHealthAndMaintenance) {
  const Config c = hostServices();
  IdRegistry ids;
  RuntimeState rt;
  SnapshotPtr s = buildSnapshot(c, ids, 1, nullptr, &rt);
  EXPECT_EQ(entryOf(*s, "web", "198.51.100.11").state, BackendState::kUnresolved);
  EXPECT_EQ(entryOf(*s, "web", "198.51.100.11").flags, LB_BACKEND_F_NO_NEW);
  EXPECT_EQ(entryOf(*s, "web", "198.51.100.12").state, BackendState::kUnresolved);
  EXPECT_EQ(entryOf(*s, "web", "10.9.0.1").state, BackendState::kUnresolved);  // gateway unknown
  EXPECT_EQ(entryOf(*s, "web", "10.9.0.2").state, BackendState::kUp);          // configured MAC
  EXPECT_FALSE(s->has_gateway_mac);
  EXPECT_EQ(s->local_addresses.size(), 2u);
  EXPECT_NE(s->local_addresses.find(makeEndpointKey(*IpAddress::parse("198.51.100.2"), 0, 0)),
            nullptr);

  // The kernel resolves the on-link backends and the gateway: the off-link backend gets the
  // gateway's MAC, and NAT replies of each family their gateway.
  rt.neighbours[*IpAddress::parse("198.51.100.11")] = *MacAddress::parse("02:00:00:00:01:11");
  rt.neighbours[*IpAddress::parse("198.51.100.12")] = *MacAddress::parse("02:00:00:00:01:12");
  rt.neighbours[*IpAddress::parse("198.51.100.1")] = *MacAddress::parse("02:00:00:00:00:01");
  rt.neighbours[*IpAddress::parse("2001:db8:b::1")] = *MacAddress::parse("02:00:00:00:00:61");
  rt.neighbours[*IpAddress::parse("2001:db8:b::11")] = *MacAddress::parse("02:00:00:00:06:11");
  s = buildSnapshot(c, ids, 2, s.get(), &rt);
  const BackendEntry& a = entryOf(*s, "web", "198.51.100.11");
  EXPECT_EQ(a.state, BackendState::kUp);
  EXPECT_EQ(MacAddress({a.mac[0], a.mac[1], a.mac[2], a.mac[3], a.mac[4], a.mac[5]}),
            *MacAddress::parse("02:00:00:00:01:11"));
  EXPECT_EQ(entryOf(*s, "web", "198.51.100.12").state, BackendState::kDrained);
  EXPECT_EQ(entryOf(*s, "web", "198.51.100.12").flags, 0u) << "a drained backend still serves";
  const BackendEntry& off = entryOf(*s, "web", "10.9.0.1");
  EXPECT_EQ(off.state, BackendState::kUp);
  EXPECT_EQ(off.mac[5], 0x01);  // the gateway's
  EXPECT_TRUE(s->has_gateway_mac);
  EXPECT_EQ(s->gateway_mac[5], 0x01);
  EXPECT_TRUE(s->has_gateway_mac6);
  EXPECT_EQ(s->gateway_mac6[5], 0x61);

  // Down by its check, then in maintenance: out of the table, flows rescheduled (the service
  // says so), the id kept.
  const ServiceConfig& web = c.services[0];
  rt.health[backendRef(web, web.backends[0])].up = false;
  s = buildSnapshot(c, ids, 3, s.get(), &rt);
  const BackendEntry& down = entryOf(*s, "web", "198.51.100.11");
  EXPECT_EQ(down.state, BackendState::kDown);
  EXPECT_TRUE(down.present);
  EXPECT_NE(down.flags & LB_BACKEND_F_RESCHEDULE, 0u);
  EXPECT_NE(down.flags & LB_BACKEND_F_NO_NEW, 0u);
  const ServiceEntry& svc = s->services[s->service_map.find(makeEndpointKey(web.vip, 80, 6))->service_id];
  const std::set<uint32_t> ids_in_table = inTable(svc);
  for (uint32_t id : svc.backend_ids) {
    EXPECT_EQ(ids_in_table.contains(id), s->backends[id].state == BackendState::kUp)
        << backendStateName(s->backends[id].state);
  }
  rt.health[backendRef(web, web.backends[0])] = {true, true};
  s = buildSnapshot(c, ids, 4, s.get(), &rt);
  EXPECT_EQ(entryOf(*s, "web", "198.51.100.11").state, BackendState::kMaintenance);
  EXPECT_EQ(entryOf(*s, "web", "198.51.100.11").flags,
            LB_BACKEND_F_RESCHEDULE | LB_BACKEND_F_NO_NEW);
  // Back up: in the table again, the flag cleared.
  rt.health[backendRef(web, web.backends[0])] = {};
  SnapshotPtr back = buildSnapshot(c, ids, 5, s.get(), &rt);
  EXPECT_EQ(entryOf(*back, "web", "198.51.100.11").state, BackendState::kUp);
  EXPECT_EQ(entryOf(*back, "web", "198.51.100.11").flags, 0u);
}

TEST(SnapshotRuntime, KeepPolicyLeavesFlowsOnADownBackend) {
  Config c = hostServices();
  c.services[0].on_backend_down = DownPolicy::kKeep;
  IdRegistry ids;
  RuntimeState rt;
  rt.neighbours[*IpAddress::parse("198.51.100.11")] = *MacAddress::parse("02:00:00:00:01:11");
  rt.health[backendRef(c.services[0], c.services[0].backends[0])].up = false;
  SnapshotPtr s = buildSnapshot(c, ids, 1, nullptr, &rt);
  EXPECT_EQ(entryOf(*s, "web", "198.51.100.11").state, BackendState::kDown);
  // Its flows stay; only a new connection (a SYN) pinned to it picks again.
  EXPECT_EQ(entryOf(*s, "web", "198.51.100.11").flags, LB_BACKEND_F_NO_NEW);
}

}  // namespace
}  // namespace sluice
