// ControlPlane::handle, command by command and refusal by refusal, over a fake data path. Only the
// data path is faked: the validation (validateConfig), the snapshot builder and the id registry
// are the real ones, so a test sees what a running sluiced would publish.
//
// Every refusal must leave everything as it was: no publish, the same generation, the same
// running configuration (compared as renderConfig text). Every success publishes exactly once and
// raises the generation by one. The list and stats replies are checked here on "ok", "generation",
// services[].name and services[].backends[].address/port/weight, with counters looked for by
// value; their field-by-field layout (docs/json.md) is checked end to end in tests/e2e/cli_test.cc.
#include "control/control_plane.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/dataplane_handle.h"
#include "common/snapshot.h"
#include "common/stats.h"
#include "control/config.h"
#include "control/memory_budget.h"
#include "sluice_config.h"
#include "tests/support/fixtures.h"

namespace sluice {
namespace {

using nlohmann::json;
using testsupport::configText;
using testsupport::ip;
using testsupport::mac;
using testsupport::threeServices;

// ---------------------------------------------------------------------------------------------
// The fake data path

/**
 * Stands in for the DPDK or XDP path. It keeps every snapshot published to it: the last one is in
 * force, and the older ones stay alive (a real data path frees them after the grace period) so
 * that a test can compare a snapshot with its predecessor, e.g. that an unchanged service's Maglev
 * table is shared rather than rebuilt. It serves the counters the test sets, and can be told to
 * fail the next publish, which it then does all or nothing, as DataplaneHandle requires.
 */
class FakeDataplane final : public DataplaneHandle {
 public:
  void publish(SnapshotPtr next) override {
    if (next == nullptr) {
      ADD_FAILURE() << "the control plane published a null snapshot";
    }
    if (fail_next_publish_) {
      fail_next_publish_ = false;
      ++failed_publishes_;
      throw std::runtime_error("fake publish failure");  // next is dropped; current() stays
    }
    published_.push_back(std::move(next));
  }

  const Snapshot* current() const override {
    return published_.empty() ? nullptr : published_.back().get();
  }

  StatsTotals totals(const Snapshot& snap) const override {
    totals_asked_for_ = &snap;
    return totals_;
  }

  size_t workers() const override { return totals_.workers.size(); }

  /** Publishes that took effect. */
  size_t publishes() const { return published_.size(); }
  size_t failedPublishes() const { return failed_publishes_; }
  /** The snapshot in force before the current one. */
  const Snapshot& previous() const { return *published_.at(published_.size() - 2); }
  void failNextPublish() { fail_next_publish_ = true; }
  void setTotals(StatsTotals t) { totals_ = std::move(t); }
  /** The snapshot the last totals() call was asked about. */
  const Snapshot* totalsAskedFor() const { return totals_asked_for_; }

 private:
  std::vector<SnapshotPtr> published_;
  bool fail_next_publish_ = false;
  size_t failed_publishes_ = 0;
  StatsTotals totals_;
  mutable const Snapshot* totals_asked_for_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Reading snapshots and replies

std::string backendKey(const std::string& service, const IpAddress& a, uint16_t port) {
  return service + " " + formatEndpoint(a, port);
}

const ServiceEntry* serviceEntry(const Snapshot& snap, std::string_view name) {
  for (const ServiceEntry& s : snap.services) {
    if (s.present && s.name == name) {
      return &s;
    }
  }
  return nullptr;
}

/** name -> service id, for every present service. */
std::map<std::string, uint32_t> serviceIds(const Snapshot& snap) {
  std::map<std::string, uint32_t> out;
  for (const ServiceEntry& s : snap.services) {
    if (s.present) {
      out[s.name] = s.id;
    }
  }
  return out;
}

/** "web 10.0.0.11:80" -> (backend id, epoch), for every backend of every present service. */
std::map<std::string, std::pair<uint32_t, uint32_t>> backendIds(const Snapshot& snap) {
  std::map<std::string, std::pair<uint32_t, uint32_t>> out;
  for (const ServiceEntry& s : snap.services) {
    if (!s.present) {
      continue;
    }
    for (uint32_t id : s.backend_ids) {
      const BackendEntry& b = snap.backends.at(id);
      EXPECT_TRUE(b.present) << s.name << " lists backend id " << id << ", which is not present";
      EXPECT_EQ(b.service_id, s.id) << s.name << " backend id " << id;
      out[backendKey(s.name, b.address, b.port)] = {id, b.epoch};
    }
  }
  return out;
}

/** "web 10.0.0.11:80" -> weight. */
std::map<std::string, uint32_t> backendWeights(const Snapshot& snap) {
  std::map<std::string, uint32_t> out;
  for (const ServiceEntry& s : snap.services) {
    if (s.present) {
      for (uint32_t id : s.backend_ids) {
        const BackendEntry& b = snap.backends.at(id);
        out[backendKey(s.name, b.address, b.port)] = b.weight;
      }
    }
  }
  return out;
}

const BackendEntry* backendEntry(const Snapshot& snap, std::string_view key) {
  for (const ServiceEntry& s : snap.services) {
    if (s.present) {
      for (uint32_t id : s.backend_ids) {
        const BackendEntry& b = snap.backends.at(id);
        if (backendKey(s.name, b.address, b.port) == key) {
          return &b;
        }
      }
    }
  }
  return nullptr;
}

/** The id of the backend named key ("web 10.0.0.11:80"); @throws when there is none. */
uint32_t backendId(const Snapshot& snap, std::string_view key) {
  const BackendEntry* b = backendEntry(snap, key);
  if (b == nullptr) {
    throw std::invalid_argument(fmt::format("no backend {} in the snapshot", key));
  }
  return static_cast<uint32_t>(b - snap.backends.data());
}

const ServiceConfig& serviceConfig(const Config& c, std::string_view name) {
  for (const ServiceConfig& s : c.services) {
    if (s.name == name) {
      return s;
    }
  }
  throw std::invalid_argument(fmt::format("no service {} in the configuration", name));
}

/** The service map's answer for VIP:port/proto, or nullopt when it has none. */
std::optional<uint32_t> serviceAt(const Snapshot& snap, std::string_view vip, uint16_t port,
                                  Protocol proto) {
  const EndpointMap::Value* v =
      snap.service_map.find(makeEndpointKey(ip(vip), port, static_cast<uint8_t>(proto)));
  if (v == nullptr) {
    return std::nullopt;
  }
  return v->service_id;
}

/** Whether service `name` uses the same Maglev table in both snapshots (shared, not rebuilt). */
bool sameTable(const Snapshot& a, const Snapshot& b, std::string_view name) {
  const ServiceEntry* sa = serviceEntry(a, name);
  const ServiceEntry* sb = serviceEntry(b, name);
  return sa != nullptr && sb != nullptr && sa->maglev.begin() == sb->maglev.begin();
}

/** Whether the number v appears anywhere in j (counters are found whatever the layout). */
bool holdsNumber(const json& j, uint64_t v) {
  if (j.is_number_unsigned()) {
    return j.get<uint64_t>() == v;
  }
  if (j.is_number_integer()) {
    return j.get<int64_t>() >= 0 && static_cast<uint64_t>(j.get<int64_t>()) == v;
  }
  if (j.is_structured()) {
    for (const json& e : j) {
      if (holdsNumber(e, v)) {
        return true;
      }
    }
  }
  return false;
}

/** The stable fields of a list or stats reply: "service address:port" -> weight. */
std::map<std::string, uint32_t> replyWeights(const json& reply) {
  std::map<std::string, uint32_t> out;
  for (const json& s : reply.at("services")) {
    for (const json& b : s.at("backends")) {
      out[backendKey(s.at("name").get<std::string>(), ip(b.at("address").get<std::string>()),
                     b.at("port").get<uint16_t>())] = b.at("weight").get<uint32_t>();
    }
  }
  return out;
}

const json& replyBackend(const json& reply, std::string_view service, std::string_view address) {
  for (const json& s : reply.at("services")) {
    if (s.at("name").get<std::string>() == service) {
      for (const json& b : s.at("backends")) {
        if (b.at("address").get<std::string>() == address) {
          return b;
        }
      }
    }
  }
  throw std::invalid_argument(fmt::format("no backend {} {} in the reply", service, address));
}

/** text as a request; the literals below are what sluicectl would send. */
json request(std::string_view text) { return json::parse(text); }

/** base with patch applied as an RFC 7386 merge patch: a key set to null is removed. */
json patched(const json& base, std::string_view patch) {
  json j = base;
  j.merge_patch(json::parse(patch));
  return j;
}

/** base with key set to value, which may be null (a merge patch cannot say that). */
json withKey(json base, const char* key, json value) {
  base[key] = std::move(value);
  return base;
}

// One valid request of each changing command. Each is accepted on the starting configuration
// (ControlPlaneTest.BaseRequestsAreAccepted); the refusals below change one thing in one of them.
const json& addService() {
  static const json j = request(R"({"command": "service.add", "service": {
      "name": "api", "vip": "192.0.2.20", "port": 8080, "protocol": "tcp", "forwarding": "dr",
      "backends": [{"address": "10.0.0.31", "mac": "02:00:00:00:04:31", "weight": 5}]}})");
  return j;
}
const json& editService() {
  static const json j =
      request(R"({"command": "service.edit", "name": "web", "set": {"table_size": 7}})");
  return j;
}
const json& delService() {
  static const json j = request(R"({"command": "service.del", "name": "web"})");
  return j;
}
const json& addBackend() {
  static const json j = request(R"({"command": "backend.add", "service": "web",
      "backend": {"address": "10.0.0.14", "mac": "02:00:00:00:01:14", "weight": 50}})");
  return j;
}
const json& editBackend() {
  static const json j = request(R"({"command": "backend.edit", "service": "dns",
      "address": "10.0.1.21", "port": 5353, "set": {"weight": 7}})");
  return j;
}
const json& drainBackend() {
  static const json j =
      request(R"({"command": "backend.drain", "service": "web", "address": "10.0.0.11"})");
  return j;
}
const json& delBackend() {
  static const json j = request(R"({"command": "backend.del", "service": "web6",
      "address": "2001:db8:1::12", "port": 8443})");
  return j;
}

// ---------------------------------------------------------------------------------------------
// The fixture

enum class Match { kWhole, kPart };

class ControlPlaneTest : public ::testing::Test {
 protected:
  void SetUp() override { startWith(""); }

  void startWith(const std::string& config_path) {
    cp_ = std::make_unique<ControlPlane>(threeServices(), config_path, fake_);
    cp_->start();
    ASSERT_EQ(fake_.publishes(), 1u);
    ASSERT_EQ(cp_->generation(), 1u);
  }

  const Snapshot& snap() const { return *fake_.current(); }

  /** Runs req, which must be refused with error (the whole message, or a part of it). */
  json expectRefused(const json& req, std::string_view error, Match match = Match::kWhole) {
    return expectRefusedBy([&] { return cp_->handle(req); }, error, match);
  }

  template <typename Call>
  json expectRefusedBy(Call call, std::string_view error, Match match) {
    const size_t publishes = fake_.publishes();
    const uint64_t generation = cp_->generation();
    const std::string config = renderConfig(cp_->config());
    const Snapshot* current = fake_.current();
    const json reply = call();
    EXPECT_EQ(reply.value("ok", true), false) << reply.dump();
    const std::string got = reply.value("error", "<no error>");
    if (match == Match::kWhole) {
      EXPECT_EQ(got, error);
    } else {
      EXPECT_NE(got.find(error), std::string::npos) << "error: " << got << "\nwanted: " << error;
    }
    EXPECT_EQ(fake_.publishes(), publishes) << "a refused request published";
    EXPECT_EQ(fake_.current(), current);
    EXPECT_EQ(cp_->generation(), generation);
    EXPECT_EQ(renderConfig(cp_->config()), config) << "a refused request changed the config";
    return reply;
  }

  /** Runs req, which must be applied: one publish, the generation up by one. */
  json expectApplied(const json& req) {
    return expectAppliedBy([&] { return cp_->handle(req); });
  }

  template <typename Call>
  json expectAppliedBy(Call call) {
    const size_t publishes = fake_.publishes();
    const uint64_t generation = cp_->generation();
    const json reply = call();
    EXPECT_EQ(reply.value("ok", false), true) << reply.dump();
    EXPECT_EQ(reply.value("generation", uint64_t{0}), generation + 1) << reply.dump();
    EXPECT_EQ(fake_.publishes(), publishes + 1);
    EXPECT_EQ(cp_->generation(), generation + 1);
    EXPECT_EQ(fake_.current()->generation, cp_->generation());
    return reply;
  }

  /** A read-only command: answered, nothing published, nothing changed. */
  json expectRead(const json& req) {
    const size_t publishes = fake_.publishes();
    const uint64_t generation = cp_->generation();
    const std::string config = renderConfig(cp_->config());
    const json reply = cp_->handle(req);
    EXPECT_EQ(reply.value("ok", false), true) << reply.dump();
    EXPECT_EQ(fake_.publishes(), publishes);
    EXPECT_EQ(cp_->generation(), generation);
    EXPECT_EQ(renderConfig(cp_->config()), config);
    return reply;
  }

  FakeDataplane fake_;
  std::unique_ptr<ControlPlane> cp_;
};

// The backends of testsupport::threeServices() with their weights.
const std::map<std::string, uint32_t> kStartWeights = {
    {"web 10.0.0.11:80", 100},
    {"web 10.0.0.12:80", 100},
    {"web 10.0.0.13:80", 200},
    {"dns 10.0.1.21:5353", 1},
    {"dns 10.0.1.22:5353", 1},
    {"web6 [2001:db8:1::11]:8443", 1},
    {"web6 [2001:db8:1::12]:8443", 1}};

// ---------------------------------------------------------------------------------------------
// start, version, list, stats, save

TEST_F(ControlPlaneTest, StartPublishesTheConfiguration) {
  EXPECT_EQ(snap().generation, 1u);
  const auto ids = serviceIds(snap());
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_TRUE(ids.contains("web") && ids.contains("dns") && ids.contains("web6"));
  EXPECT_EQ(backendWeights(snap()), kStartWeights);
  for (const auto& [key, id_epoch] : backendIds(snap())) {
    EXPECT_EQ(id_epoch.second, 1u) << key;
  }
  EXPECT_EQ(serviceAt(snap(), "192.0.2.10", 80, Protocol::kTcp), ids.at("web"));
  EXPECT_EQ(serviceAt(snap(), "192.0.2.53", 53, Protocol::kUdp), ids.at("dns"));
  EXPECT_EQ(serviceAt(snap(), "2001:db8::10", 443, Protocol::kTcp), ids.at("web6"));
  // The running configuration no longer cites lines of the file it came from.
  for (const ServiceConfig& s : cp_->config().services) {
    EXPECT_EQ(s.line, 0) << s.name;
    for (const BackendConfig& b : s.backends) {
      EXPECT_EQ(b.line, 0) << s.name << " " << b.address.str();
    }
  }
}

TEST_F(ControlPlaneTest, Version) {
  const json r = expectRead(request(R"({"command": "version"})"));
  EXPECT_EQ(r.at("version"), SLUICE_VERSION);
  EXPECT_EQ(r.at("generation"), 1u);
}

// Before start() nothing is published: list and stats answer with an error, not a crash.
TEST(ControlPlaneBeforeStart, ListAndStatsRefuseWithoutASnapshot) {
  FakeDataplane fake;
  ControlPlane cp(threeServices(), "", fake);
  for (const char* cmd : {"list", "stats"}) {
    const json r = cp.handle({{"command", cmd}});
    EXPECT_EQ(r.value("ok", true), false) << cmd;
    EXPECT_EQ(r.value("error", ""), "nothing is published yet: the control plane has not started");
  }
  EXPECT_EQ(fake.publishes(), 0u);
}

TEST_F(ControlPlaneTest, ListShowsTheSnapshotInForce) {
  StatsTotals t;
  t.workers.resize(2);
  t.backends.resize(snap().backends.size());
  // Every counter of one backend of web and one of dns gets a value seen nowhere else, so that
  // the reply can be searched for it whatever the counters are called.
  const uint32_t web12 = backendId(snap(), "web 10.0.0.12:80");
  const uint32_t dns22 = backendId(snap(), "dns 10.0.1.22:5353");
  t.backends[web12] = {7001, 7001, 7001, 7001, 7001, 7001};
  t.backends[dns22] = {7002, 7002, 7002, 7002, 7002, 7002};
  fake_.setTotals(t);

  const json r = expectRead(request(R"({"command": "list"})"));
  EXPECT_EQ(fake_.totalsAskedFor(), fake_.current());
  EXPECT_EQ(r.at("generation"), 1u);
  std::vector<std::string> names;
  for (const json& s : r.at("services")) {
    names.push_back(s.at("name").get<std::string>());
  }
  EXPECT_EQ(names, (std::vector<std::string>{"web", "dns", "web6"}));  // service-id order
  EXPECT_EQ(replyWeights(r), kStartWeights);
  EXPECT_TRUE(holdsNumber(replyBackend(r, "web", "10.0.0.12"), 7001)) << r.dump();
  EXPECT_FALSE(holdsNumber(replyBackend(r, "web", "10.0.0.12"), 7002)) << r.dump();
  EXPECT_FALSE(holdsNumber(replyBackend(r, "web", "10.0.0.11"), 7001)) << r.dump();
  EXPECT_TRUE(holdsNumber(replyBackend(r, "dns", "10.0.1.22"), 7002)) << r.dump();
}

TEST_F(ControlPlaneTest, StatsCarriesTheDataPathCounters) {
  StatsTotals t;
  t.workers.resize(2);
  t.workers[0].worker = 0;
  t.workers[1].worker = 1;
  // Fewer totals than backend ids: the data path may know fewer backends than the snapshot.
  t.backends.resize(snap().backends.size() - 1);
  const uint32_t web13 = backendId(snap(), "web 10.0.0.13:80");
  const uint32_t v6_11 = backendId(snap(), "web6 [2001:db8:1::11]:8443");
  ASSERT_LT(web13, t.backends.size());
  ASSERT_LT(v6_11, t.backends.size());
  t.backends[web13] = {8001, 8002, 8003, 8004, 8005, 8006};
  t.backends[v6_11] = {9001, 9002, 9003, 9004, 9005, 9006};
  fake_.setTotals(t);

  ASSERT_EQ(expectApplied(drainBackend()).value("ok", false), true);
  const json r = expectRead(request(R"({"command": "stats"})"));
  EXPECT_EQ(fake_.totalsAskedFor(), fake_.current());
  EXPECT_EQ(r.at("generation"), 2u);
  std::map<std::string, uint32_t> weights = kStartWeights;
  weights["web 10.0.0.11:80"] = 0;
  EXPECT_EQ(replyWeights(r), weights);
  for (uint64_t v : {8001, 8002, 8003, 8005, 8006}) {  // active flows (8004) may go unshown
    EXPECT_TRUE(holdsNumber(replyBackend(r, "web", "10.0.0.13"), v)) << v << " " << r.dump();
  }
  EXPECT_TRUE(holdsNumber(replyBackend(r, "web6", "2001:db8:1::11"), 9001)) << r.dump();
  EXPECT_FALSE(holdsNumber(replyBackend(r, "web6", "2001:db8:1::12"), 9001)) << r.dump();
  EXPECT_FALSE(holdsNumber(replyBackend(r, "web", "10.0.0.12"), 8001)) << r.dump();
}

TEST_F(ControlPlaneTest, ReadCommandsChangeNothing) {
  for (const char* cmd : {"version", "list", "stats", "save"}) {
    SCOPED_TRACE(cmd);
    expectRead(json{{"command", cmd}});
  }
}

TEST_F(ControlPlaneTest, SaveParsesBackToTheRunningConfiguration) {
  const json r = expectRead(request(R"({"command": "save"})"));
  const Config back = parseConfig(r.at("config").get<std::string>(), "saved");
  EXPECT_EQ(renderConfig(back), renderConfig(cp_->config()));
  EXPECT_EQ(renderConfig(back), configText(threeServices()));
}

TEST_F(ControlPlaneTest, SaveShowsEdits) {
  expectApplied(addService());
  expectApplied(drainBackend());
  expectApplied(request(R"({"command": "service.edit", "name": "web", "set": {"port": 8080}})"));
  const json r = expectRead(request(R"({"command": "save"})"));
  const Config back = parseConfig(r.at("config").get<std::string>(), "saved");
  EXPECT_EQ(renderConfig(back), renderConfig(cp_->config()));

  Config expected = threeServices();
  ServiceConfig& web = testsupport::service(expected, "web");
  web.port = 8080;
  for (BackendConfig& b : web.backends) {
    b.port = 8080;
  }
  web.backends[0].weight = 0;
  ServiceConfig api;
  api.name = "api";
  api.vip = ip("192.0.2.20");
  api.port = 8080;
  api.backends.push_back({ip("10.0.0.31"), 8080, mac("02:00:00:00:04:31"), 5, {}, 0});
  expected.services.push_back(api);
  EXPECT_EQ(renderConfig(back), configText(expected));
}

// ---------------------------------------------------------------------------------------------
// Successful changes

TEST_F(ControlPlaneTest, BaseRequestsAreAccepted) {
  for (const json* req : {&addService(), &editService(), &delService(), &addBackend(),
                          &editBackend(), &drainBackend(), &delBackend()}) {
    SCOPED_TRACE(req->dump());
    FakeDataplane fake;
    ControlPlane cp(threeServices(), "", fake);
    cp.start();
    const json r = cp.handle(*req);
    EXPECT_EQ(r.value("ok", false), true) << r.dump();
    EXPECT_EQ(cp.generation(), 2u);
    EXPECT_EQ(fake.publishes(), 2u);
  }
}

TEST_F(ControlPlaneTest, ServiceAdd) {
  const auto ids = backendIds(snap());
  const auto sids = serviceIds(snap());
  const json r = expectApplied(addService());
  EXPECT_EQ(r.at("change"), "service add api");

  const ServiceEntry* api = serviceEntry(snap(), "api");
  ASSERT_NE(api, nullptr);
  EXPECT_EQ(api->vip, ip("192.0.2.20"));
  EXPECT_EQ(api->port, 8080);
  EXPECT_EQ(api->protocol, Protocol::kTcp);
  EXPECT_EQ(api->forwarding, Forwarding::kDr);
  EXPECT_EQ(api->maglev.size(), kDefaultMaglevTableSize);
  EXPECT_EQ(serviceAt(snap(), "192.0.2.20", 8080, Protocol::kTcp), api->id);

  // The others keep their ids and their Maglev tables; the new backend has a fresh id.
  auto expected = ids;
  const BackendEntry* b = backendEntry(snap(), "api 10.0.0.31:8080");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->weight, 5u);
  EXPECT_EQ(b->epoch, 1u);
  expected["api 10.0.0.31:8080"] = {api->backend_ids.at(0), 1};
  EXPECT_EQ(backendIds(snap()), expected);
  auto expected_sids = sids;
  expected_sids["api"] = api->id;
  EXPECT_EQ(serviceIds(snap()), expected_sids);
  for (const char* name : {"web", "dns", "web6"}) {
    EXPECT_TRUE(sameTable(fake_.previous(), snap(), name)) << name;
  }

  ASSERT_EQ(cp_->config().services.size(), 4u);
  const ServiceConfig& sc = cp_->config().services.back();
  EXPECT_EQ(sc.name, "api");
  EXPECT_EQ(sc.scheduler, Scheduler::kMaglev);
  EXPECT_EQ(sc.table_size, kDefaultMaglevTableSize);
  ASSERT_EQ(sc.backends.size(), 1u);
  EXPECT_EQ(sc.backends[0].port, 8080);  // a backend without a port takes the service's
  EXPECT_EQ(sc.backends[0].mac, mac("02:00:00:00:04:31"));
}

TEST_F(ControlPlaneTest, ServiceAddWithEveryFieldAndNoBackends) {
  expectApplied(request(R"({"command": "service.add", "service": {
      "name": "dns6", "vip": "2001:db8::53", "port": 53, "protocol": "udp", "forwarding": "nat",
      "scheduler": "maglev", "table_size": 251, "backends": []}})"));
  const ServiceEntry* s = serviceEntry(snap(), "dns6");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->forwarding, Forwarding::kNat);
  EXPECT_EQ(s->protocol, Protocol::kUdp);
  EXPECT_EQ(s->maglev.size(), 251u);
  EXPECT_TRUE(s->backend_ids.empty());
  EXPECT_EQ(serviceAt(snap(), "2001:db8::53", 53, Protocol::kUdp), s->id);
}

TEST_F(ControlPlaneTest, ServiceAddSameVipAndPortOtherProtocol) {
  expectApplied(request(R"({"command": "service.add", "service": {
      "name": "web-udp", "vip": "192.0.2.10", "port": 80, "protocol": "udp", "forwarding": "dr",
      "backends": [{"address": "10.0.0.11", "mac": "02:00:00:00:01:11", "weight": 1}]}})"));
  const auto sids = serviceIds(snap());
  EXPECT_EQ(serviceAt(snap(), "192.0.2.10", 80, Protocol::kUdp), sids.at("web-udp"));
  EXPECT_EQ(serviceAt(snap(), "192.0.2.10", 80, Protocol::kTcp), sids.at("web"));
  // Same address and port under two services: two backends, two ids.
  EXPECT_NE(backendIds(snap()).at("web-udp 10.0.0.11:80").first,
            backendIds(snap()).at("web 10.0.0.11:80").first);
}

TEST_F(ControlPlaneTest, ServiceEditTableSizeKeepsIds) {
  const auto ids = backendIds(snap());
  const auto sids = serviceIds(snap());
  const json r = expectApplied(editService());
  EXPECT_EQ(r.at("change"), "service edit web");
  EXPECT_EQ(serviceEntry(snap(), "web")->maglev.size(), 7u);
  EXPECT_EQ(backendIds(snap()), ids);
  EXPECT_EQ(serviceIds(snap()), sids);
  EXPECT_EQ(backendWeights(snap()), kStartWeights);
  EXPECT_FALSE(sameTable(fake_.previous(), snap(), "web"));
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "dns"));
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "web6"));
  EXPECT_EQ(serviceConfig(cp_->config(), "web").table_size, 7u);
}

TEST_F(ControlPlaneTest, ServiceEditRenameKeepsIds) {
  const auto before = backendIds(snap());
  const uint32_t web = serviceIds(snap()).at("web");
  expectApplied(request(R"({"command": "service.edit", "name": "web", "set": {"name": "www"}})"));
  EXPECT_EQ(serviceEntry(snap(), "web"), nullptr);
  ASSERT_NE(serviceEntry(snap(), "www"), nullptr);
  EXPECT_EQ(serviceEntry(snap(), "www")->id, web);
  const auto after = backendIds(snap());
  for (const char* a : {"10.0.0.11:80", "10.0.0.12:80", "10.0.0.13:80"}) {
    EXPECT_EQ(after.at(std::string("www ") + a), before.at(std::string("web ") + a)) << a;
  }
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "dns"));
}

TEST_F(ControlPlaneTest, DrServicePortEditMovesItsBackends) {
  const auto before = backendIds(snap());
  expectApplied(request(R"({"command": "service.edit", "name": "web", "set": {"port": 8080}})"));
  for (const BackendConfig& b : serviceConfig(cp_->config(), "web").backends) {
    EXPECT_EQ(b.port, 8080) << b.address.str();
  }
  const ServiceEntry* web = serviceEntry(snap(), "web");
  ASSERT_NE(web, nullptr);
  EXPECT_EQ(web->port, 8080);
  EXPECT_EQ(serviceAt(snap(), "192.0.2.10", 8080, Protocol::kTcp), web->id);
  EXPECT_EQ(serviceAt(snap(), "192.0.2.10", 80, Protocol::kTcp), std::nullopt);
  std::map<std::string, uint32_t> weights = kStartWeights;
  for (const char* a : {"10.0.0.11", "10.0.0.12", "10.0.0.13"}) {
    weights[fmt::format("web {}:8080", a)] = weights.at(fmt::format("web {}:80", a));
    weights.erase(fmt::format("web {}:80", a));
  }
  EXPECT_EQ(backendWeights(snap()), weights);
  for (const BackendEntry& b : snap().backends) {
    if (b.present && b.service_id == web->id) {
      EXPECT_EQ(b.port_be, makeEndpointKey(b.address, 8080, LB_PROTO_TCP).port);
    }
  }
  // The untouched services keep their ids.
  const auto after = backendIds(snap());
  for (const auto& [key, id] : before) {
    if (key.starts_with("dns ") || key.starts_with("web6 ")) {
      EXPECT_EQ(after.at(key), id) << key;
    }
  }
  // A backend added later takes the new port.
  expectApplied(addBackend());
  EXPECT_NE(backendEntry(snap(), "web 10.0.0.14:8080"), nullptr);
}

TEST_F(ControlPlaneTest, NatServicePortEditKeepsBackendPorts) {
  const auto before = backendIds(snap());
  expectApplied(request(R"({"command": "service.edit", "name": "web6", "set": {"port": 4443}})"));
  EXPECT_EQ(serviceEntry(snap(), "web6")->port, 4443);
  EXPECT_EQ(serviceAt(snap(), "2001:db8::10", 4443, Protocol::kTcp),
            serviceEntry(snap(), "web6")->id);
  EXPECT_EQ(backendWeights(snap()), kStartWeights);  // still at 8443
  const auto after = backendIds(snap());
  for (const auto& [key, id] : before) {
    if (!key.starts_with("web6 ")) {
      EXPECT_EQ(after.at(key), id) << key;
    }
  }
}

TEST_F(ControlPlaneTest, ServiceEditEveryField) {
  // dns becomes a DR/TCP service on another VIP whose port is that of its backends.
  expectApplied(request(R"({"command": "service.edit", "name": "dns", "set": {
      "name": "dns-tcp", "vip": "192.0.2.54", "port": 5353, "protocol": "tcp",
      "forwarding": "dr", "scheduler": "maglev", "table_size": 101}})"));
  const ServiceEntry* s = serviceEntry(snap(), "dns-tcp");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->vip, ip("192.0.2.54"));
  EXPECT_EQ(s->port, 5353);
  EXPECT_EQ(s->protocol, Protocol::kTcp);
  EXPECT_EQ(s->forwarding, Forwarding::kDr);
  EXPECT_EQ(s->maglev.size(), 101u);
  EXPECT_EQ(serviceAt(snap(), "192.0.2.53", 53, Protocol::kUdp), std::nullopt);
  // Not NAT any more: its backends' replies are not rewritten.
  EXPECT_EQ(snap().nat_reply_map.find(makeEndpointKey(ip("10.0.1.21"), 5353, LB_PROTO_UDP)),
            nullptr);
  EXPECT_EQ(snap().nat_reply_map.find(makeEndpointKey(ip("10.0.1.21"), 5353, LB_PROTO_TCP)),
            nullptr);
}

TEST_F(ControlPlaneTest, ServiceDel) {
  const auto before = backendIds(snap());
  const auto sids = serviceIds(snap());
  const json r = expectApplied(delService());
  EXPECT_EQ(r.at("change"), "service del web");
  EXPECT_EQ(serviceEntry(snap(), "web"), nullptr);
  EXPECT_EQ(serviceAt(snap(), "192.0.2.10", 80, Protocol::kTcp), std::nullopt);
  auto expected = before;
  for (auto it = expected.begin(); it != expected.end();) {
    if (it->first.starts_with("web ")) {
      EXPECT_FALSE(snap().backends.size() > it->second.first &&
                   snap().backends[it->second.first].present)
          << it->first;
      it = expected.erase(it);
    } else {
      ++it;
    }
  }
  EXPECT_EQ(backendIds(snap()), expected);
  EXPECT_EQ(serviceIds(snap()),
            (std::map<std::string, uint32_t>{{"dns", sids.at("dns")}, {"web6", sids.at("web6")}}));
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "dns"));
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "web6"));
  EXPECT_EQ(cp_->config().services.size(), 2u);
}

TEST_F(ControlPlaneTest, BackendAdd) {
  const auto before = backendIds(snap());
  const json r = expectApplied(addBackend());
  EXPECT_EQ(r.at("change"), "backend add web 10.0.0.14:80");
  const BackendEntry* b = backendEntry(snap(), "web 10.0.0.14:80");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->weight, 50u);
  EXPECT_EQ(b->mac[5], 0x14);
  auto expected = before;
  const uint32_t id = backendId(snap(), "web 10.0.0.14:80");
  for (const auto& [key, id_epoch] : before) {
    EXPECT_NE(id_epoch.first, id) << "the new backend took the id of " << key;
  }
  expected["web 10.0.0.14:80"] = {id, 1};
  EXPECT_EQ(backendIds(snap()), expected);
  const ServiceEntry* web = serviceEntry(snap(), "web");
  EXPECT_NE(std::find(web->maglev.begin(), web->maglev.end(), id), web->maglev.end());
  EXPECT_FALSE(sameTable(fake_.previous(), snap(), "web"));
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "dns"));
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "web6"));
}

TEST_F(ControlPlaneTest, BackendAddToNatServiceWithAndWithoutPort) {
  expectApplied(request(R"({"command": "backend.add", "service": "dns",
      "backend": {"address": "10.0.1.23", "port": 5354, "mac": "02:00:00:00:02:23"}})"));
  const BackendEntry* b = backendEntry(snap(), "dns 10.0.1.23:5354");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->weight, 1u);  // the default
  const EndpointMap::Value* reply =
      snap().nat_reply_map.find(makeEndpointKey(ip("10.0.1.23"), 5354, LB_PROTO_UDP));
  ASSERT_NE(reply, nullptr);
  EXPECT_EQ(reply->backend_id, backendId(snap(), "dns 10.0.1.23:5354"));
  // Without a port a NAT backend listens on the service port.
  expectApplied(request(R"({"command": "backend.add", "service": "dns",
      "backend": {"address": "10.0.1.24", "mac": "02:00:00:00:02:24", "weight": 0}})"));
  ASSERT_NE(backendEntry(snap(), "dns 10.0.1.24:53"), nullptr);
  EXPECT_EQ(backendEntry(snap(), "dns 10.0.1.24:53")->weight, 0u);
}

TEST_F(ControlPlaneTest, BackendEditWeightAndMacKeepIds) {
  const auto before = backendIds(snap());
  const json r = expectApplied(editBackend());
  EXPECT_EQ(r.at("change"), "backend.edit dns 10.0.1.21:5353");
  auto weights = kStartWeights;
  weights["dns 10.0.1.21:5353"] = 7;
  EXPECT_EQ(backendWeights(snap()), weights);
  EXPECT_EQ(backendIds(snap()), before);
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "web"));
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "web6"));

  expectApplied(request(R"({"command": "backend.edit", "service": "web",
      "address": "10.0.0.12", "set": {"mac": "02:00:00:00:0a:12", "weight": 65535}})"));
  const BackendEntry* b = backendEntry(snap(), "web 10.0.0.12:80");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->weight, 65535u);
  MacAddress m;
  std::copy(b->mac, b->mac + 6, m.bytes.begin());
  EXPECT_EQ(m, mac("02:00:00:00:0a:12"));
  EXPECT_EQ(backendIds(snap()), before);
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "dns"));
}

TEST_F(ControlPlaneTest, BackendDrainKeepsTheBackendWithoutSlots) {
  const auto before = backendIds(snap());
  const json r = expectApplied(drainBackend());
  EXPECT_EQ(r.at("change"), "backend.drain web 10.0.0.11:80");
  const BackendEntry* b = backendEntry(snap(), "web 10.0.0.11:80");
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(b->present);
  EXPECT_EQ(b->weight, 0u);
  EXPECT_EQ(backendIds(snap()), before);  // same id and epoch: its flows stay pinned to it
  const uint32_t id = before.at("web 10.0.0.11:80").first;
  const ServiceEntry* web = serviceEntry(snap(), "web");
  EXPECT_EQ(std::find(web->maglev.begin(), web->maglev.end(), id), web->maglev.end());
  const json list = expectRead(request(R"({"command": "list"})"));
  EXPECT_EQ(replyBackend(list, "web", "10.0.0.11").at("weight"), 0);
  EXPECT_EQ(list.at("generation"), 2u);
}

TEST_F(ControlPlaneTest, BackendDelAndReAddGetsANewEpoch) {
  const auto before = backendIds(snap());
  const json r = expectApplied(delBackend());
  EXPECT_EQ(r.at("change"), "backend.del web6 [2001:db8:1::12]:8443");
  const auto [id, epoch] = before.at("web6 [2001:db8:1::12]:8443");
  EXPECT_FALSE(snap().backends.size() > id && snap().backends[id].present);
  auto expected = before;
  expected.erase("web6 [2001:db8:1::12]:8443");
  EXPECT_EQ(backendIds(snap()), expected);
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "web"));
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "dns"));

  expectApplied(request(R"({"command": "backend.add", "service": "web6", "backend": {
      "address": "2001:db8:1::12", "port": 8443, "mac": "02:00:00:00:03:12"}})"));
  const auto [new_id, new_epoch] = backendIds(snap()).at("web6 [2001:db8:1::12]:8443");
  EXPECT_EQ(new_id, id);  // the only free id, handed out again...
  EXPECT_GT(new_epoch, epoch);  // ...under a new epoch: flows of the old owner are rescheduled
  expected["web6 [2001:db8:1::12]:8443"] = {new_id, new_epoch};
  EXPECT_EQ(backendIds(snap()), expected);
}

TEST_F(ControlPlaneTest, SeveralBackendsAtOneAddressNeedAPort) {
  expectApplied(request(R"({"command": "backend.add", "service": "dns",
      "backend": {"address": "10.0.1.21", "port": 5354, "mac": "02:00:00:00:02:21"}})"));
  for (const char* cmd : {"backend.edit", "backend.drain", "backend.del"}) {
    SCOPED_TRACE(cmd);
    json req = {{"command", cmd}, {"service", "dns"}, {"address", "10.0.1.21"}};
    if (std::string_view(cmd) == "backend.edit") {
      req["set"] = {{"weight", 3}};
    }
    expectRefused(req, "service \"dns\" has several backends at 10.0.1.21 (ports 5353, 5354); "
                       "say which port");
  }
  expectApplied(request(R"({"command": "backend.drain", "service": "dns",
      "address": "10.0.1.21", "port": 5354})"));
  EXPECT_EQ(backendEntry(snap(), "dns 10.0.1.21:5354")->weight, 0u);
  EXPECT_EQ(backendEntry(snap(), "dns 10.0.1.21:5353")->weight, 1u);
}

TEST_F(ControlPlaneTest, IdsStayStableAcrossASeriesOfUnrelatedEdits) {
  const auto before = backendIds(snap());
  const auto sids = serviceIds(snap());
  expectApplied(addService());
  expectApplied(editBackend());
  expectApplied(drainBackend());
  expectApplied(request(R"({"command": "service.del", "name": "api"})"));
  EXPECT_EQ(backendIds(snap()), before);
  EXPECT_EQ(serviceIds(snap()), sids);
  EXPECT_EQ(cp_->generation(), 5u);
}

// ---------------------------------------------------------------------------------------------
// Refusals: one row per error path of handle() and of validateConfig.

struct Refusal {
  std::string name;  // the test name
  json request;
  std::string error;
  Match match = Match::kWhole;
};

std::ostream& operator<<(std::ostream& os, const Refusal& r) { return os << r.request.dump(); }

std::vector<Refusal> refusals() {
  const json& as = addService();
  const json& es = editService();
  const json& ds = delService();
  const json& ab = addBackend();
  const json& eb = editBackend();
  const json& nb = drainBackend();
  const json& db = delBackend();
  constexpr Match kPart = Match::kPart;
  return {
      // The request itself
      {"MissingCommand", request(R"({})"), R"(missing "command")"},
      {"RequestIsAnArray", request(R"(["version"])"), "the request must be a JSON object"},
      {"RequestIsAString", request(R"("version")"), "the request must be a JSON object"},
      {"RequestIsNull", json(), "the request must be a JSON object"},
      {"ReloadTakesNoPath", request(R"({"command": "reload", "path": "/other.toml"})"),
       R"(unknown field "path" in the request)"},
      {"ListTakesNoArguments", request(R"({"command": "list", "service": "web"})"),
       R"(unknown field "service" in the request)"},
      {"StatsTakesNoArguments", request(R"({"command": "stats", "rate": true})"),
       R"(unknown field "rate" in the request)"},
      {"SaveTakesNoArguments", request(R"({"command": "save", "file": "x"})"),
       R"(unknown field "file" in the request)"},
      {"VersionTakesNoArguments", request(R"({"command": "version", "v": 1})"),
       R"(unknown field "v" in the request)"},
      {"CommandNotAString", request(R"({"command": 7})"), R"("command" must be a string)"},
      {"CommandNull", request(R"({"command": null})"), R"("command" must be a string)"},
      {"UnknownCommand", request(R"({"command": "service.rename"})"),
       R"(unknown command "service.rename")"},
      {"CommandCaseMatters", request(R"({"command": "LIST"})"), R"(unknown command "LIST")"},

      // service.add: the request
      {"ServiceAddUnknownField", patched(as, R"({"force": true})"),
       R"(unknown field "force" in the request)"},
      {"ServiceAddMissingService", patched(as, R"({"service": null})"), R"(missing "service")"},
      {"ServiceAddServiceNotObject", patched(as, R"({"service": "api"})"),
       "service must be an object"},
      {"ServiceAddUnknownServiceField", patched(as, R"({"service": {"weight": 3}})"),
       R"(unknown field "weight" in service)"},
      {"ServiceAddBackendsSpelledAsInToml", patched(as, R"({"service": {"backend": []}})"),
       R"(unknown field "backend" in service)"},
      {"ServiceAddMissingName", patched(as, R"({"service": {"name": null}})"),
       R"(missing "name")"},
      {"ServiceAddNameNotString", patched(as, R"({"service": {"name": 5}})"),
       R"("name" must be a string)"},
      {"ServiceAddDuplicateName", patched(as, R"({"service": {"name": "web"}})"),
       R"(service "web" exists already)"},
      {"ServiceAddMissingVip", patched(as, R"({"service": {"vip": null}})"), R"(missing "vip")"},
      {"ServiceAddVipNotString", patched(as, R"({"service": {"vip": 3221225994}})"),
       R"("vip" must be a string)"},
      {"ServiceAddBadVip", patched(as, R"({"service": {"vip": "192.0.2.300"}})"),
       R"(vip "192.0.2.300" is not an IPv4 or IPv6 address)"},
      {"ServiceAddVipWithPort", patched(as, R"({"service": {"vip": "192.0.2.20:80"}})"),
       R"(vip "192.0.2.20:80" is not an IPv4 or IPv6 address)"},
      {"ServiceAddMissingPort", patched(as, R"({"service": {"port": null}})"),
       R"(missing "port")"},
      {"ServiceAddPortZero", patched(as, R"({"service": {"port": 0}})"),
       "port 0 is out of range 1..65535"},
      {"ServiceAddPortTooBig", patched(as, R"({"service": {"port": 65536}})"),
       "port 65536 is out of range 1..65535"},
      {"ServiceAddPortNegative", patched(as, R"({"service": {"port": -80}})"),
       R"("port" must be a whole number)"},
      {"ServiceAddPortFraction", patched(as, R"({"service": {"port": 80.5}})"),
       R"("port" must be a whole number)"},
      {"ServiceAddPortWholeFloat", patched(as, R"({"service": {"port": 80.0}})"),
       R"("port" must be a whole number)"},
      {"ServiceAddPortString", patched(as, R"({"service": {"port": "80"}})"),
       R"("port" must be a whole number)"},
      {"ServiceAddPortBool", patched(as, R"({"service": {"port": true}})"),
       R"("port" must be a whole number)"},
      {"ServiceAddMissingProtocol", patched(as, R"({"service": {"protocol": null}})"),
       R"(missing "protocol")"},
      {"ServiceAddBadProtocol", patched(as, R"({"service": {"protocol": "sctp"}})"),
       R"(protocol "sctp" is not tcp or udp)"},
      {"ServiceAddProtocolNumber", patched(as, R"({"service": {"protocol": 6}})"),
       R"("protocol" must be a string)"},
      {"ServiceAddMissingForwarding", patched(as, R"({"service": {"forwarding": null}})"),
       R"(missing "forwarding")"},
      {"ServiceAddBadForwarding", patched(as, R"({"service": {"forwarding": "tun"}})"),
       R"(forwarding "tun" is not dr or nat)"},
      {"ServiceAddBadScheduler", patched(as, R"({"service": {"scheduler": "wrr"}})"),
       R"(scheduler "wrr" is not a known scheduler (maglev))"},
      {"ServiceAddSchedulerNotString", patched(as, R"({"service": {"scheduler": 1}})"),
       R"("scheduler" must be a string)"},
      {"ServiceAddTableSizeZero", patched(as, R"({"service": {"table_size": 0}})"),
       "table_size 0 is out of range 1..4294967295"},
      {"ServiceAddTableSizeOver32Bits",
       patched(as, R"({"service": {"table_size": 4294967296}})"),
       "table_size 4294967296 is out of range 1..4294967295"},
      {"ServiceAddTableSizeNegative", patched(as, R"({"service": {"table_size": -7}})"),
       R"("table_size" must be a whole number)"},

      // service.add: its backends
      {"ServiceAddBackendNotObject", patched(as, R"({"service": {"backends": ["10.0.0.31"]}})"),
       "backend must be an object"},
      {"ServiceAddBackendUnknownField",
       patched(as, R"({"service": {"backends": [{"address": "10.0.0.31",
           "mac": "02:00:00:00:04:31", "state": "active"}]}})"),
       R"(unknown field "state" in backend)"},
      {"ServiceAddBackendMissingAddress",
       patched(as, R"({"service": {"backends": [{"mac": "02:00:00:00:04:31"}]}})"),
       R"(missing "address")"},
      {"ServiceAddBackendBadAddress",
       patched(as, R"({"service": {"backends": [{"address": "10.0.0",
           "mac": "02:00:00:00:04:31"}]}})"),
       R"(address "10.0.0" is not an IPv4 or IPv6 address)"},
      {"ServiceAddBackendMacUnresolvable",
       patched(as, R"({"service": {"backends": [{"address": "10.0.0.31"}]}})"),
       "service \"api\": backend 10.0.0.31 has no mac, is on none of the subnets of "
       "dataplane.addresses, and there is no IPv4 dataplane.gateway: its MAC could never be "
       "resolved (give its mac, or Sluice's address on its subnet)"},
      {"ServiceAddBackendBadMac",
       patched(as, R"({"service": {"backends": [{"address": "10.0.0.31",
           "mac": "02:00:00:00:04"}]}})"),
       R"(mac "02:00:00:00:04" is not a MAC address (six hex pairs, e.g. 02:00:00:00:01:11))"},
      {"ServiceAddBackendWeightTooBig",
       patched(as, R"({"service": {"backends": [{"address": "10.0.0.31",
           "mac": "02:00:00:00:04:31", "weight": 65536}]}})"),
       "weight 65536 is out of range 0..65535"},
      {"ServiceAddBackendWeightNegative",
       patched(as, R"({"service": {"backends": [{"address": "10.0.0.31",
           "mac": "02:00:00:00:04:31", "weight": -1}]}})"),
       R"("weight" must be a whole number)"},
      {"ServiceAddBackendPortZero",
       patched(as, R"({"service": {"backends": [{"address": "10.0.0.31", "port": 0,
           "mac": "02:00:00:00:04:31"}]}})"),
       "port 0 is out of range 1..65535"},
      {"ServiceAddSecondBackendBad",
       patched(as, R"({"service": {"backends": [
           {"address": "10.0.0.31", "mac": "02:00:00:00:04:31"},
           {"address": "10.0.0.32", "mac": "02:00:00:00:04:32", "weight": 1.5}]}})"),
       R"("weight" must be a whole number)"},

      // service.add: refused by validateConfig
      {"ServiceAddDuplicateVipPortProtocol",
       patched(as, R"({"service": {"name": "web2", "vip": "192.0.2.10", "port": 80,
           "backends": []}})"),
       R"(service "web2" has the same VIP, port and protocol (192.0.2.10:80/tcp) as service "web")"},
      {"ServiceAddTableSizeNotPrime", patched(as, R"({"service": {"table_size": 65536}})"),
       R"(service "api": table_size 65536 is not prime (Maglev needs a prime; the next one is 65537))"},
      {"ServiceAddTableSizeBelowMinimum", patched(as, R"({"service": {"table_size": 5}})"),
       R"(service "api": table_size 5 is out of range 7..1048573)"},
      {"ServiceAddTableSizeAboveMaximum",
       patched(as, R"({"service": {"table_size": 1048583}})"),
       R"(service "api": table_size 1048583 is out of range 7..1048573)"},
      {"ServiceAddInvalidName", patched(as, R"({"service": {"name": "my api"}})"),
       R"(service name "my api" is invalid: use 1 to 64 letters, digits, '_', '.' or '-')"},
      {"ServiceAddEmptyName", patched(as, R"({"service": {"name": ""}})"),
       R"(service name "" is invalid)", kPart},
      {"ServiceAddMulticastVip", patched(as, R"({"service": {"vip": "224.0.0.1"}})"),
       R"(service "api": vip 224.0.0.1 is not a usable unicast address)"},
      {"ServiceAddUnspecifiedVip6",
       patched(as, R"({"service": {"vip": "::", "backends": []}})"),
       R"(service "api": vip :: is not a usable unicast address)"},
      {"ServiceAddBackendFamilyMismatch",
       patched(as, R"({"service": {"backends": [{"address": "2001:db8:1::31",
           "mac": "02:00:00:00:04:31"}]}})"),
       R"(service "api": backend 2001:db8:1::31 is IPv6 but the VIP is IPv4)"},
      {"ServiceAddDrBackendOnOtherPort",
       patched(as, R"({"service": {"backends": [{"address": "10.0.0.31", "port": 9090,
           "mac": "02:00:00:00:04:31"}]}})"),
       R"(service "api": backend 10.0.0.31: DR cannot change the port (backend port 9090, service port 8080))",
       kPart},
      {"ServiceAddDuplicateBackend",
       patched(as, R"({"service": {"backends": [
           {"address": "10.0.0.31", "mac": "02:00:00:00:04:31"},
           {"address": "10.0.0.31", "mac": "02:00:00:00:04:32"}]}})"),
       R"(service "api": backend 10.0.0.31:8080 appears twice)"},
      {"ServiceAddNatBackendOfAnotherNatService",
       request(R"({"command": "service.add", "service": {"name": "web6b",
           "vip": "2001:db8::20", "port": 443, "protocol": "tcp", "forwarding": "nat",
           "backends": [{"address": "2001:db8:1::11", "port": 8443,
                         "mac": "02:00:00:00:03:11"}]}})"),
       R"(backend [2001:db8:1::11]:8443/tcp is used by NAT services "web6" and "web6b"; replies could not be told apart)"},
      {"ServiceAddTableSmallerThanBackends",
       patched(as, R"({"service": {"table_size": 7, "backends": [
           {"address": "10.0.0.31", "mac": "02:00:00:00:04:31"},
           {"address": "10.0.0.32", "mac": "02:00:00:00:04:32"},
           {"address": "10.0.0.33", "mac": "02:00:00:00:04:33"},
           {"address": "10.0.0.34", "mac": "02:00:00:00:04:34"},
           {"address": "10.0.0.35", "mac": "02:00:00:00:04:35"},
           {"address": "10.0.0.36", "mac": "02:00:00:00:04:36"},
           {"address": "10.0.0.37", "mac": "02:00:00:00:04:37"},
           {"address": "10.0.0.38", "mac": "02:00:00:00:04:38"}]}})"),
       R"(service "api": table_size 7 is smaller than the number of backends with weight > 0 (8))",
       kPart},

      // service.edit
      {"ServiceEditUnknownField", patched(es, R"({"service": "web"})"),
       R"(unknown field "service" in the request)"},
      {"ServiceEditMissingName", patched(es, R"({"name": null})"), R"(missing "name")"},
      {"ServiceEditNameNotString", patched(es, R"({"name": ["web"]})"),
       R"("name" must be a string)"},
      {"ServiceEditMissingSet", patched(es, R"({"set": null})"), R"(missing "set")"},
      {"ServiceEditSetNotObject", request(R"({"command": "service.edit", "name": "web",
           "set": [["port", 81]]})"),
       "set must be an object"},
      {"ServiceEditUnknownSetField", patched(es, R"({"set": {"backends": []}})"),
       R"(unknown field "backends" in set)"},
      {"ServiceEditNoSuchService", patched(es, R"({"name": "api"})"),
       R"(no service named "api")"},
      {"ServiceEditSetNameNotString", patched(es, R"({"set": {"name": 1}})"),
       R"("name" must be a string)"},
      {"ServiceEditBadVip", patched(es, R"({"set": {"vip": "web.example"}})"),
       R"(vip "web.example" is not an IPv4 or IPv6 address)"},
      {"ServiceEditPortZero", patched(es, R"({"set": {"port": 0}})"),
       "port 0 is out of range 1..65535"},
      {"ServiceEditPortNegative", patched(es, R"({"set": {"port": -1}})"),
       R"("port" must be a whole number)"},
      {"ServiceEditBadProtocol", patched(es, R"({"set": {"protocol": "icmp"}})"),
       R"(protocol "icmp" is not tcp or udp)"},
      {"ServiceEditBadForwarding", patched(es, R"({"set": {"forwarding": "DR"}})"),
       R"(forwarding "DR" is not dr or nat)"},
      {"ServiceEditBadScheduler", patched(es, R"({"set": {"scheduler": "rr"}})"),
       R"(scheduler "rr" is not a known scheduler (maglev))"},
      {"ServiceEditTableSizeFloat", patched(es, R"({"set": {"table_size": 65537.0}})"),
       R"("table_size" must be a whole number)"},
      {"ServiceEditTableSizeNotPrime", patched(es, R"({"set": {"table_size": 8}})"),
       R"(service "web": table_size 8 is not prime (Maglev needs a prime; the next one is 11))"},
      {"ServiceEditRenameToTakenName", patched(es, R"({"set": {"name": "dns"}})"),
       R"(service name "dns" is used twice)"},
      {"ServiceEditInvalidName", patched(es, R"({"set": {"name": "web/1"}})"),
       R"(service name "web/1" is invalid)", kPart},
      {"ServiceEditDuplicateVipPortProtocol",
       request(R"({"command": "service.edit", "name": "dns",
           "set": {"vip": "192.0.2.10", "port": 80, "protocol": "tcp"}})"),
       R"(service "dns" has the same VIP, port and protocol (192.0.2.10:80/tcp) as service "web")"},
      {"ServiceEditNatToDrKeepsBackendPorts", patched(es, R"({"name": "dns",
           "set": {"forwarding": "dr"}})"),
       R"(service "dns": backend 10.0.1.21: DR cannot change the port (backend port 5353, service port 53))",
       kPart},
      {"ServiceEditVipFamily", patched(es, R"({"set": {"vip": "2001:db8::80"}})"),
       R"(service "web": backend 10.0.0.11 is IPv4 but the VIP is IPv6)"},
      {"ServiceEditVipOntoANatBackend",
       request(R"({"command": "service.edit", "name": "web",
           "set": {"vip": "10.0.1.21", "port": 5353, "protocol": "udp"}})"),
       R"(service "dns": NAT backend 10.0.1.21:5353/udp is the VIP of service "web"; its replies could not be told from client traffic)"},

      // service.del
      {"ServiceDelUnknownField", patched(ds, R"({"force": true})"),
       R"(unknown field "force" in the request)"},
      {"ServiceDelMissingName", patched(ds, R"({"name": null})"), R"(missing "name")"},
      {"ServiceDelNameNotString", patched(ds, R"({"name": 0})"), R"("name" must be a string)"},
      {"ServiceDelNoSuchService", patched(ds, R"({"name": "Web"})"),
       R"(no service named "Web")"},

      // backend.add
      {"BackendAddUnknownField", patched(ab, R"({"weight": 3})"),
       R"(unknown field "weight" in the request)"},
      {"BackendAddMissingService", patched(ab, R"({"service": null})"), R"(missing "service")"},
      {"BackendAddServiceNotString", patched(ab, R"({"service": {"name": "web"}})"),
       R"("service" must be a string)"},
      {"BackendAddNoSuchService", patched(ab, R"({"service": "api"})"),
       R"(no service named "api")"},
      {"BackendAddMissingBackend", patched(ab, R"({"backend": null})"), R"(missing "backend")"},
      {"BackendAddBackendNotObject", patched(ab, R"({"backend": "10.0.0.14"})"),
       "backend must be an object"},
      {"BackendAddUnknownBackendField", patched(ab, R"({"backend": {"service": "web"}})"),
       R"(unknown field "service" in backend)"},
      {"BackendAddMissingAddress", patched(ab, R"({"backend": {"address": null}})"),
       R"(missing "address")"},
      {"BackendAddAddressNotString", patched(ab, R"({"backend": {"address": 167772174}})"),
       R"("address" must be a string)"},
      {"BackendAddBadAddress", patched(ab, R"({"backend": {"address": "10.0.0.256"}})"),
       R"(address "10.0.0.256" is not an IPv4 or IPv6 address)"},
      {"BackendAddMacUnresolvable", patched(ab, R"({"backend": {"mac": null}})"),
       "service \"web\": backend 10.0.0.14 has no mac, is on none of the subnets of "
       "dataplane.addresses, and there is no IPv4 dataplane.gateway: its MAC could never be "
       "resolved (give its mac, or Sluice's address on its subnet)"},
      {"BackendAddMacNotString", patched(ab, R"({"backend": {"mac": 2199023255828}})"),
       R"("mac" must be a string)"},
      {"BackendAddBadMac", patched(ab, R"({"backend": {"mac": "02:00:00:00:01:1g"}})"),
       R"(mac "02:00:00:00:01:1g" is not a MAC address (six hex pairs, e.g. 02:00:00:00:01:11))"},
      {"BackendAddWeightTooBig", patched(ab, R"({"backend": {"weight": 65536}})"),
       "weight 65536 is out of range 0..65535"},
      {"BackendAddWeightFraction", patched(ab, R"({"backend": {"weight": 1.5}})"),
       R"("weight" must be a whole number)"},
      {"BackendAddWeightString", patched(ab, R"({"backend": {"weight": "100"}})"),
       R"("weight" must be a whole number)"},
      {"BackendAddPortTooBig", patched(ab, R"({"service": "dns", "backend": {"port": 70000}})"),
       "port 70000 is out of range 1..65535"},
      {"BackendAddDuplicate", patched(ab, R"({"backend": {"address": "10.0.0.11"}})"),
       R"(service "web" has backend 10.0.0.11:80 already)"},
      {"BackendAddDuplicateWithPort",
       patched(ab, R"({"service": "dns", "backend": {"address": "10.0.1.21", "port": 5353}})"),
       R"(service "dns" has backend 10.0.1.21:5353 already)"},
      {"BackendAddDuplicateIpv6",
       patched(ab, R"({"service": "web6", "backend": {"address": "2001:db8:1::11",
           "port": 8443}})"),
       R"(service "web6" has backend [2001:db8:1::11]:8443 already)"},
      {"BackendAddDrOnOtherPort", patched(ab, R"({"backend": {"port": 8080}})"),
       R"(service "web": backend 10.0.0.14: DR cannot change the port (backend port 8080, service port 80))",
       kPart},
      {"BackendAddFamilyMismatch", patched(ab, R"({"backend": {"address": "2001:db8::14"}})"),
       R"(service "web": backend 2001:db8::14 is IPv6 but the VIP is IPv4)"},
      {"BackendAddMulticastMac", patched(ab, R"({"backend": {"mac": "01:00:5e:00:00:01"}})"),
       R"(service "web": backend 10.0.0.14: mac 01:00:5e:00:00:01 is a multicast address; it must be a unicast MAC)"},
      {"BackendAddZeroMac", patched(ab, R"({"backend": {"mac": "00:00:00:00:00:00"}})"),
       R"(service "web": backend 10.0.0.14: mac 00:00:00:00:00:00 is all zeros; it must be a unicast MAC)"},
      {"BackendAddNotUnicast", patched(ab, R"({"backend": {"address": "0.0.0.1"}})"),
       R"(service "web": backend address 0.0.0.1 is not a usable unicast address)"},
      {"BackendAddNatBackendIsAVip",
       patched(ab, R"({"service": "dns", "backend": {"address": "192.0.2.53", "port": 53}})"),
       R"(service "dns": NAT backend 192.0.2.53:53/udp is the VIP of service "dns"; its replies could not be told from client traffic)"},

      // backend.edit, backend.drain, backend.del
      {"BackendEditUnknownField", patched(eb, R"({"weight": 3})"),
       R"(unknown field "weight" in the request)"},
      {"BackendDrainTakesNoSet", patched(nb, R"({"set": {"weight": 0}})"),
       R"(unknown field "set" in the request)"},
      {"BackendDelUnknownField", patched(db, R"({"mac": "02:00:00:00:03:12"})"),
       R"(unknown field "mac" in the request)"},
      {"BackendEditMissingService", patched(eb, R"({"service": null})"), R"(missing "service")"},
      {"BackendDrainServiceNotString", patched(nb, R"({"service": 1})"),
       R"("service" must be a string)"},
      {"BackendDrainNoSuchService", patched(nb, R"({"service": "api"})"),
       R"(no service named "api")"},
      {"BackendDelMissingAddress", patched(db, R"({"address": null})"), R"(missing "address")"},
      {"BackendEditBadAddress", patched(eb, R"({"address": "10.0.1.x"})"),
       R"(address "10.0.1.x" is not an IPv4 or IPv6 address)"},
      {"BackendDrainAddressNotString", patched(nb, R"({"address": ["10.0.0.11"]})"),
       R"("address" must be a string)"},
      {"BackendEditPortString", patched(eb, R"({"port": "5353"})"),
       R"("port" must be a whole number)"},
      {"BackendDelPortZero", patched(db, R"({"port": 0})"), "port 0 is out of range 1..65535"},
      {"BackendDrainPortNull", withKey(nb, "port", nullptr), R"("port" must be a whole number)"},
      {"BackendEditWeightNull", withKey(eb, "set", {{"weight", nullptr}}),
       R"("weight" must be a whole number)"},
      {"ServiceAddTableSizeNull",
       withKey(as, "service", withKey(as.at("service"), "table_size", nullptr)),
       R"("table_size" must be a whole number)"},
      {"BackendDrainNoSuchBackend", patched(nb, R"({"address": "10.0.0.99"})"),
       R"(service "web" has no backend 10.0.0.99)"},
      {"BackendDelNoSuchBackendPort",
       patched(db, R"({"service": "web", "address": "10.0.0.11", "port": 81})"),
       R"(service "web" has no backend 10.0.0.11:81)"},
      {"BackendDelNoSuchBackendIpv6", patched(db, R"({"address": "2001:db8:1::99"})"),
       R"(service "web6" has no backend [2001:db8:1::99]:8443)"},
      {"BackendEditBackendOfAnotherService",
       patched(eb, R"({"address": "10.0.0.11", "port": null})"),
       R"(service "dns" has no backend 10.0.0.11)"},
      {"BackendEditMissingSet", patched(eb, R"({"set": null})"), R"(missing "set")"},
      {"BackendEditSetNotObject", patched(eb, R"({"set": 5})"), "set must be an object"},
      {"BackendEditUnknownSetField", patched(eb, R"({"set": {"port": 5354}})"),
       R"(unknown field "port" in set)"},
      {"BackendEditBadMac", patched(eb, R"({"set": {"mac": "0200.0000.0221"}})"),
       R"(mac "0200.0000.0221" is not a MAC address (six hex pairs, e.g. 02:00:00:00:01:11))"},
      {"BackendEditWeightTooBig", patched(eb, R"({"set": {"weight": 100000}})"),
       "weight 100000 is out of range 0..65535"},
      {"BackendEditWeightNegative", patched(eb, R"({"set": {"weight": -5}})"),
       R"("weight" must be a whole number)"},
      {"BackendEditMulticastMac", patched(eb, R"({"set": {"mac": "03:00:00:00:02:21"}})"),
       R"(service "dns": backend 10.0.1.21: mac 03:00:00:00:02:21 is a multicast address; it must be a unicast MAC)"},
  };
}

class ControlPlaneRefusalTest : public ControlPlaneTest,
                                public ::testing::WithParamInterface<Refusal> {};

TEST_P(ControlPlaneRefusalTest, ChangesNothing) {
  const Refusal& r = GetParam();
  expectRefused(r.request, r.error, r.match);
}

INSTANTIATE_TEST_SUITE_P(ControlPlaneAll, ControlPlaneRefusalTest, ::testing::ValuesIn(refusals()),
                         [](const ::testing::TestParamInfo<Refusal>& info) {
                           return info.param.name;
                         });

// ---------------------------------------------------------------------------------------------
// A publish that throws

TEST_F(ControlPlaneTest, FailedPublishKeepsTheRunningConfiguration) {
  const auto ids = backendIds(snap());
  fake_.failNextPublish();
  // The data path's reason reaches the client, whatever the wording around it.
  expectRefused(delService(), "fake publish failure", Match::kPart);
  EXPECT_EQ(fake_.failedPublishes(), 1u);
  EXPECT_EQ(backendIds(snap()), ids);

  // The id registry is as before the failed change: web was not deleted, so an unrelated change
  // keeps web's service and backend ids and epochs.
  expectApplied(editBackend());
  EXPECT_EQ(backendIds(snap()), ids);
  EXPECT_EQ(cp_->generation(), 2u);
  EXPECT_EQ(snap().generation, 2u);

  // And the change that failed can be made once the data path takes it.
  expectApplied(delService());
  EXPECT_EQ(serviceEntry(snap(), "web"), nullptr);
}

TEST_F(ControlPlaneTest, TooManyBackendsInAllKeepsTheRunningConfiguration) {
  // A service of 65535 drained backends (a service may have that many, and a drained one needs
  // no Maglev slot), but with the 7 running ones there are more backends than backend ids: the
  // validation refuses it, naming the first one over, and no id is given out.
  json backends = json::array();
  for (uint32_t i = 0; i < 65535; ++i) {
    backends.push_back({{"address", fmt::format("10.1.{}.{}", i >> 8, i & 0xff)},
                        {"mac", fmt::format("02:00:00:01:{:02x}:{:02x}", i >> 8, i & 0xff)},
                        {"weight", 0}});
  }
  json req = addService();
  req["service"]["table_size"] = 7;
  req["service"]["backends"] = std::move(backends);
  expectRefused(req, "service \"api\": backend 10.1.255.248:8080/tcp is one more than the 65535 "
                     "backends all services may have together");

  const auto before = backendIds(snap());
  expectApplied(addBackend());
  uint32_t highest = 0;
  for (const auto& [key, id_epoch] : before) {
    highest = std::max(highest, id_epoch.first);
  }
  auto expected = before;
  expected["web 10.0.0.14:80"] = {highest + 1, 1};  // as if the refused service never was
  EXPECT_EQ(backendIds(snap()), expected);
}

TEST_F(ControlPlaneTest, FailedPublishOfEveryKindOfChange) {
  for (const json* req : {&addService(), &editService(), &delService(), &addBackend(),
                          &editBackend(), &drainBackend(), &delBackend()}) {
    SCOPED_TRACE(req->dump());
    fake_.failNextPublish();
    expectRefused(*req, "fake publish failure", Match::kPart);
  }
  EXPECT_EQ(fake_.failedPublishes(), 7u);
  const json list = expectRead(request(R"({"command": "list"})"));
  EXPECT_EQ(replyWeights(list), kStartWeights);
  EXPECT_EQ(list.at("generation"), 1u);
}

// ---------------------------------------------------------------------------------------------
// The memory budget

// Tables were built whatever their size: many services with a large table_size allocated until
// the host ran out of memory.
TEST_F(ControlPlaneTest, AChangeWhoseTablesDoNotFitTheMemoryLimitIsRefused) {
  Config small = threeServices();
  small.dataplane.memory_limit = uint64_t{16} << 20;
  cp_ = std::make_unique<ControlPlane>(small, "", fake_);
  cp_->setFlowTableMemory({uint64_t{4} << 20, "1 worker x 61680 entries x 68 B"});
  cp_->start();
  // 1048573 slots x 4 B = 4 MiB a table. Two fit beside the 4 MiB of flow tables; the third
  // would need the two in force, the three new and the flow tables: 24 MiB.
  auto add = [&](int i) {
    return cp_->handle(request(fmt::format(
        R"({{"command": "service.add", "service": {{"name": "big{}", "vip": "192.0.2.{}",
            "port": 80, "protocol": "tcp", "forwarding": "dr", "table_size": 1048573}}}})",
        i, 100 + i)));
  };
  EXPECT_TRUE(add(1).value("ok", false));
  const json r = add(2);
  ASSERT_FALSE(r.value("ok", true)) << r.dump();
  const std::string error = r.at("error").get<std::string>();
  EXPECT_TRUE(error.starts_with("the tables need ")) << error;
  EXPECT_TRUE(error.find("more than dataplane.memory_limit 16.0 MiB") != std::string::npos)
      << error;
  uint64_t slots = 2 * 1048573;
  for (const ServiceConfig& s : threeServices().services) {
    slots += s.table_size;
  }
  EXPECT_TRUE(error.find(fmt::format("5 services, {} slots in all x 4 B", slots)) !=
              std::string::npos)
      << error;
  EXPECT_TRUE(error.find("flow tables 4.0 MiB (1 worker x 61680 entries x 68 B)") !=
              std::string::npos)
      << error;
  EXPECT_EQ(serviceEntry(snap(), "big2"), nullptr);
  EXPECT_NE(serviceEntry(snap(), "big1"), nullptr);
}

TEST(MemoryBudget, WithoutALimitTheTablesMustFitWhatTheHostHasAvailable) {
  const std::optional<uint64_t> available = availableMemory();
  if (!available) {
    GTEST_SKIP() << "no MemAvailable in /proc/meminfo";
  }
  // Services of 1048573 slots (4 MiB) each, enough of them to need more than the host has.
  Config next;
  const uint64_t count = *available / (1048573 * 4) + 8;
  for (uint64_t i = 0; i < count; ++i) {
    ServiceConfig s;
    s.name = fmt::format("big{}", i);
    s.table_size = 1048573;
    next.services.push_back(std::move(s));
  }
  try {
    checkMemoryBudget(next, {}, 0, false);
    ADD_FAILURE() << "accepted " << count << " tables of 4 MiB";
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_TRUE(m.find(fmt::format("({} services, {} slots in all x 4 B)", count,
                                   count * 1048573)) != std::string::npos)
        << m;
    EXPECT_TRUE(m.find("this host has available (MemAvailable)") != std::string::npos) << m;
  }
  // A tenth of what is available goes through.
  next.services.resize(count / 10);
  EXPECT_NO_THROW(checkMemoryBudget(next, {}, 0, false));
}

// ---------------------------------------------------------------------------------------------
// reload

class ControlPlaneReloadTest : public ControlPlaneTest {
 protected:
  ControlPlaneReloadTest() {
    char pattern[] = "/tmp/sluice-control-plane-XXXXXX";
    const char* dir = ::mkdtemp(pattern);
    if (dir == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    dir_ = dir;
    path_ = dir_ + "/sluice.toml";
  }
  ~ControlPlaneReloadTest() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void SetUp() override {
    write(configText(threeServices()));
    startWith(path_);
  }

  void write(const std::string& text) const {
    std::ofstream out(path_, std::ios::trunc);
    out << text;
    ASSERT_TRUE(out.good()) << path_;
  }

  std::string prefix() const { return "reload rejected, running configuration kept: " + path_; }

  std::string dir_;
  std::string path_;
};

TEST_F(ControlPlaneReloadTest, AppliesTheFile) {
  const auto before = backendIds(snap());
  expectApplied(addBackend());  // a runtime edit the file does not have: reload --force drops it

  Config next = threeServices();
  testsupport::service(next, "web").backends[2].weight = 50;
  next.services.erase(next.services.begin() + 1);  // dns
  ServiceConfig api;
  api.name = "api";
  api.vip = ip("192.0.2.20");
  api.port = 8080;
  api.forwarding = Forwarding::kNat;
  api.table_size = 11;
  api.backends.push_back({ip("10.0.2.1"), 9000, mac("02:00:00:00:05:01"), 3, {}, 0});
  next.services.push_back(api);
  write(configText(next));

  const json r = expectApplied(request(R"({"command": "reload", "force": true})"));
  EXPECT_EQ(r.at("change"), "reload " + path_);
  EXPECT_EQ(r.at("undone"), json({"backend add web 10.0.0.14:80"}));
  EXPECT_EQ(renderConfig(cp_->config()), configText(next));
  EXPECT_EQ(cp_->config().services.at(0).line, 0);
  EXPECT_EQ(backendWeights(snap()),
            (std::map<std::string, uint32_t>{{"web 10.0.0.11:80", 100},
                                             {"web 10.0.0.12:80", 100},
                                             {"web 10.0.0.13:80", 50},
                                             {"web6 [2001:db8:1::11]:8443", 1},
                                             {"web6 [2001:db8:1::12]:8443", 1},
                                             {"api 10.0.2.1:9000", 3}}));
  EXPECT_EQ(serviceEntry(snap(), "api")->maglev.size(), 11u);
  const auto after = backendIds(snap());
  for (const auto& [key, id] : before) {
    if (key.starts_with("web ") || key.starts_with("web6 ")) {
      EXPECT_EQ(after.at(key), id) << key;
    }
  }
  EXPECT_TRUE(sameTable(fake_.previous(), snap(), "web6"));
}

// A reload used to replace the running configuration silently, changes made with sluicectl
// since the file was read included: 60 backends became 46 without a word.
TEST_F(ControlPlaneReloadTest, RefusesToUndoSluicectlChangesWithoutForce) {
  expectApplied(addBackend());
  expectApplied(drainBackend());
  const std::string running = renderConfig(cp_->config());
  const uint64_t generation = cp_->generation();

  const json r = expectRefused(request(R"({"command": "reload"})"),
                               "reload refused, running configuration kept: " + path_ +
                                   " would undo 2 changes made with sluicectl since it was read "
                                   "(backend add web 10.0.0.14:80; backend.drain web "
                                   "10.0.0.11:80); write them to the file first (sluicectl save "
                                   "--out " + path_ + "), or reload --force to drop them");
  EXPECT_EQ(r.at("undone"), json({"backend add web 10.0.0.14:80", "backend.drain web 10.0.0.11:80"}));
  EXPECT_EQ(renderConfig(cp_->config()), running);
  EXPECT_EQ(cp_->generation(), generation);
  expectRefused(request(R"({"command": "reload", "force": 1})"),
                R"("force" must be true or false)");

  const json forced = expectApplied(request(R"({"command": "reload", "force": true})"));
  EXPECT_EQ(forced.at("undone").size(), 2u) << forced.dump();
  EXPECT_EQ(renderConfig(cp_->config()), configText(threeServices()));
  // Nothing left to undo: the next reload goes through, and says nothing was dropped.
  const json again = expectApplied(request(R"({"command": "reload"})"));
  EXPECT_FALSE(again.contains("undone")) << again.dump();
}

TEST_F(ControlPlaneReloadTest, TakesAFileThatHoldsTheSluicectlChanges) {
  expectApplied(addBackend());
  // As `sluicectl save --out` would leave it, with an edit of another service on top.
  Config saved = cp_->config();
  testsupport::service(saved, "dns").backends[0].weight = 9;
  write(renderConfig(saved));
  const json r = expectApplied(request(R"({"command": "reload"})"));
  EXPECT_FALSE(r.contains("undone")) << r.dump();
  EXPECT_NE(backendEntry(snap(), "web 10.0.0.14:80"), nullptr);
  EXPECT_EQ(backendEntry(snap(), "dns 10.0.1.21:5353")->weight, 9u);

  // A file that changes only what sluicectl did not touch still undoes what it did.
  expectApplied(delService());
  Config other = saved;
  testsupport::service(other, "dns").backends[0].weight = 8;
  write(renderConfig(other));
  const json refused = expectRefused(request(R"({"command": "reload"})"), "would undo 1 change",
                                     Match::kPart);
  EXPECT_EQ(refused.at("undone").size(), 1u) << refused.dump();
  EXPECT_TRUE(refused.at("undone").at(0).get<std::string>().starts_with("service del "))
      << refused.dump();
}

// Old and new backend ids used to coexist during a reload: replacing 40,000 backends by 40,000
// others failed with "more than 65535 backends in all", though the new file loaded alone.
TEST_F(ControlPlaneReloadTest, ReplacesEveryBackendOfALargeConfiguration) {
  auto large = [](uint8_t third_octet) {
    Config c;
    for (int s = 0; s < 40; ++s) {
      ServiceConfig svc;
      svc.name = fmt::format("svc{}", s);
      svc.vip = ip(fmt::format("192.0.2.{}", s + 1));
      svc.port = 80;
      svc.table_size = 1009;
      for (int b = 0; b < 1000; ++b) {
        svc.backends.push_back({ip(fmt::format("10.{}.{}.{}", third_octet + s, b / 250, b % 250 + 1)),
                                80, mac("02:00:00:00:00:01"), 1, {}, 0});
      }
      c.services.push_back(std::move(svc));
    }
    return c;
  };
  write(renderConfig(large(0)));
  cp_ = std::make_unique<ControlPlane>(loadConfigFile(path_), path_, fake_);
  cp_->start();
  write(renderConfig(large(100)));
  const json r = expectApplied(request(R"({"command": "reload"})"));
  EXPECT_EQ(backendIds(snap()).size(), 40000u);
  EXPECT_NE(backendEntry(snap(), "svc39 10.139.3.250:80"), nullptr);
  EXPECT_EQ(backendEntry(snap(), "svc0 10.0.0.1:80"), nullptr);
}

TEST_F(ControlPlaneReloadTest, DirectCallAppliesTheFile) {
  Config next = threeServices();
  testsupport::service(next, "dns").backends[0].weight = 9;
  write(configText(next));
  expectAppliedBy([&] { return cp_->reload(); });
  EXPECT_EQ(backendEntry(snap(), "dns 10.0.1.21:5353")->weight, 9u);
}

TEST_F(ControlPlaneReloadTest, SyntaxErrorKeepsTheRunningConfiguration) {
  expectApplied(drainBackend());  // the running configuration is not the file's any more
  write("[[service]\nname = \"web\"\n");
  const json r = expectRefused(request(R"({"command": "reload"})"), prefix() + ":1:", Match::kPart);
  EXPECT_EQ(r.at("error").get<std::string>().rfind(prefix() + ":1: ", 0), 0u) << r.dump();
  EXPECT_EQ(backendEntry(snap(), "web 10.0.0.11:80")->weight, 0u);
}

TEST_F(ControlPlaneReloadTest, InvalidServiceKeepsTheRunningConfiguration) {
  Config bad = threeServices();
  testsupport::service(bad, "web").table_size = 8;
  write(configText(bad));
  const json r = expectRefused(request(R"({"command": "reload"})"),
                               R"(service "web": table_size 8 is not prime)", Match::kPart);
  EXPECT_EQ(r.at("error").get<std::string>().rfind(prefix() + ":", 0), 0u) << r.dump();

  Config clash = threeServices();
  testsupport::service(clash, "dns").backends[0].address = ip("2001:db8:1::21");
  write(configText(clash));
  expectRefusedBy([&] { return cp_->reload(); },
                  R"(service "dns": backend 2001:db8:1::21 is IPv6 but the VIP is IPv4)",
                  Match::kPart);
}

TEST_F(ControlPlaneReloadTest, MissingFileKeepsTheRunningConfiguration) {
  std::filesystem::remove(path_);
  expectRefused(request(R"({"command": "reload"})"),
                prefix() + ": cannot read: No such file or directory");
  expectRefusedBy([&] { return cp_->reload(); },
                  prefix() + ": cannot read: No such file or directory", Match::kWhole);
}

TEST_F(ControlPlaneReloadTest, FailedPublishKeepsTheRunningConfiguration) {
  Config next = threeServices();
  testsupport::service(next, "web").backends[0].weight = 1;
  write(configText(next));
  fake_.failNextPublish();
  expectRefusedBy([&] { return cp_->reload(); }, "fake publish failure", Match::kPart);
  fake_.failNextPublish();
  expectRefused(request(R"({"command": "reload"})"), "fake publish failure", Match::kPart);
  expectApplied(request(R"({"command": "reload"})"));
  EXPECT_EQ(backendEntry(snap(), "web 10.0.0.11:80")->weight, 1u);
}

TEST_F(ControlPlaneTest, ReloadWithoutAFile) {
  expectRefused(request(R"({"command": "reload"})"),
                "sluiced was started without a configuration file");
  expectRefusedBy([&] { return cp_->reload(); },
                  "sluiced was started without a configuration file", Match::kWhole);
}

// ---------------------------------------------------------------------------------------------
// Requests of the wrong shape

// "backends" of service.add was once iterated whatever its type: an object was taken as a list of
// its values and null as no backends. A wrong type is refused, as it is for every other field.
TEST_F(ControlPlaneTest, ServiceAddBackendsMustBeAnArray) {
  const json& as = addService();
  const json one = as.at("service").at("backends").at(0);
  expectRefused(withKey(as, "service", withKey(as.at("service"), "backends", {{"first", one}})),
                "backends", Match::kPart);
  expectRefused(patched(withKey(as, "service", withKey(as.at("service"), "backends", nullptr)),
                        R"({"service": {"name": "api2", "vip": "192.0.2.21"}})"),
                "backends", Match::kPart);
}

}  // namespace
}  // namespace sluice
