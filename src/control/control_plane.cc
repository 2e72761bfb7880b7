#include "control/control_plane.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <map>
#include <set>

#include "common/stats.h"
#include "control/memory_budget.h"
#include "control/stats_json.h"
#include "sluice_config.h"

namespace sluice {

namespace {

using nlohmann::json;

constexpr std::string_view kRequestSource = "request";

const json& member(const json& obj, const char* key) {
  if (!obj.is_object() || !obj.contains(key)) {
    throw RequestError(fmt::format("missing {:?}", key));
  }
  return obj.at(key);
}

std::string stringField(const json& obj, const char* key) {
  const json& v = member(obj, key);
  if (!v.is_string()) {
    throw RequestError(fmt::format("{:?} must be a string", key));
  }
  return v.get<std::string>();
}

uint64_t uintField(const json& v, const char* key, uint64_t lo, uint64_t hi) {
  if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() &&
                                 v.get<int64_t>() < 0)) {
    throw RequestError(fmt::format("{:?} must be a whole number", key));
  }
  const uint64_t n = v.get<uint64_t>();
  if (n < lo || n > hi) {
    throw RequestError(fmt::format("{} {} is out of range {}..{}", key, n, lo, hi));
  }
  return n;
}

IpAddress addressField(const json& obj, const char* key) {
  const std::string text = stringField(obj, key);
  auto a = IpAddress::parse(text);
  if (!a) {
    throw RequestError(fmt::format("{} {:?} is not an IPv4 or IPv6 address", key, text));
  }
  return *a;
}

MacAddress macField(const json& obj, const char* key) {
  const std::string text = stringField(obj, key);
  auto m = MacAddress::parse(text);
  if (!m) {
    throw RequestError(
        fmt::format("{} {:?} is not a MAC address (six hex pairs, e.g. 02:00:00:00:01:11)", key,
                    text));
  }
  return *m;
}

Protocol protocolField(const json& obj, const char* key) {
  const std::string text = stringField(obj, key);
  auto p = parseProtocol(text);
  if (!p) {
    throw RequestError(fmt::format("{} {:?} is not tcp or udp", key, text));
  }
  return *p;
}

Forwarding forwardingField(const json& obj, const char* key) {
  const std::string text = stringField(obj, key);
  if (text == "dr") {
    return Forwarding::kDr;
  }
  if (text == "nat") {
    return Forwarding::kNat;
  }
  throw RequestError(fmt::format("{} {:?} is not dr or nat", key, text));
}

Scheduler schedulerField(const json& obj, const char* key) {
  const std::string text = stringField(obj, key);
  if (text == "maglev") {
    return Scheduler::kMaglev;
  }
  throw RequestError(fmt::format("{} {:?} is not a known scheduler (maglev)", key, text));
}

void rejectUnknown(const json& obj, std::initializer_list<std::string_view> known,
                   std::string_view where) {
  if (!obj.is_object()) {
    throw RequestError(fmt::format("{} must be an object", where));
  }
  for (const auto& [key, value] : obj.items()) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      throw RequestError(fmt::format("unknown field {:?} in {}", key, where));
    }
  }
}

ServiceConfig& findService(Config& c, const std::string& name) {
  for (ServiceConfig& s : c.services) {
    if (s.name == name) {
      return s;
    }
  }
  throw RequestError(fmt::format("no service named {:?}", name));
}

/** The backend of s at address (and port, if the request gives one). */
size_t findBackend(const ServiceConfig& s, const json& req) {
  const IpAddress addr = addressField(req, "address");
  std::vector<size_t> matches;
  const bool with_port = req.contains("port");
  const uint16_t port = with_port ? static_cast<uint16_t>(uintField(req.at("port"), "port", 1, 65535)) : 0;
  for (size_t i = 0; i < s.backends.size(); ++i) {
    if (s.backends[i].address == addr && (!with_port || s.backends[i].port == port)) {
      matches.push_back(i);
    }
  }
  if (matches.empty()) {
    throw RequestError(fmt::format("service {:?} has no backend {}", s.name,
                                   with_port ? formatEndpoint(addr, port) : addr.str()));
  }
  if (matches.size() > 1) {
    std::string ports;
    for (size_t i : matches) {
      ports += fmt::format("{}{}", ports.empty() ? "" : ", ", s.backends[i].port);
    }
    throw RequestError(fmt::format("service {:?} has several backends at {} (ports {}); say which port",
                                   s.name, addr.str(), ports));
  }
  return matches[0];
}

BackendConfig backendFromRequest(const json& b, const ServiceConfig& s) {
  rejectUnknown(b, {"address", "port", "mac", "weight"}, "backend");
  BackendConfig out;
  out.address = addressField(b, "address");
  out.port = b.contains("port") ? static_cast<uint16_t>(uintField(b.at("port"), "port", 1, 65535))
                                : s.port;
  if (b.contains("mac")) {
    out.mac = macField(b, "mac");
  }
  out.weight = b.contains("weight")
                   ? static_cast<uint32_t>(uintField(b.at("weight"), "weight", 0, kMaxWeight))
                   : 1;
  return out;
}

/** Apply the service fields of obj (all optional) to s. */
void setServiceFields(ServiceConfig& s, const json& obj) {
  const uint16_t old_port = s.port;
  if (obj.contains("name")) {
    s.name = stringField(obj, "name");
  }
  if (obj.contains("vip")) {
    s.vip = addressField(obj, "vip");
  }
  if (obj.contains("port")) {
    s.port = static_cast<uint16_t>(uintField(obj.at("port"), "port", 1, 65535));
  }
  if (obj.contains("protocol")) {
    s.protocol = protocolField(obj, "protocol");
  }
  if (obj.contains("forwarding")) {
    s.forwarding = forwardingField(obj, "forwarding");
  }
  if (obj.contains("scheduler")) {
    s.scheduler = schedulerField(obj, "scheduler");
  }
  if (obj.contains("table_size")) {
    s.table_size = static_cast<uint32_t>(
        uintField(obj.at("table_size"), "table_size", 1, std::numeric_limits<uint32_t>::max()));
  }
  if (s.forwarding == Forwarding::kDr && s.port != old_port) {
    // In DR a backend listens on the service port: it follows the service's port.
    for (BackendConfig& b : s.backends) {
      if (b.port == old_port) {
        b.port = s.port;
      }
    }
  }
}

/** Each service of config as the file format renders it, by name: what `reload` compares. */
std::map<std::string, std::string> renderedServices(const Config& config) {
  std::map<std::string, std::string> out;
  for (const ServiceConfig& s : config.services) {
    out.emplace(s.name, renderService(s));
  }
  return out;
}

const std::string* find(const std::map<std::string, std::string>& m, const std::string& key) {
  const auto it = m.find(key);
  return it == m.end() ? nullptr : &it->second;
}

bool same(const std::string* a, const std::string* b) {
  return a == nullptr || b == nullptr ? a == b : *a == *b;
}

/** "a; b; c", or the first few and how many more: a reply line must stay readable. */
std::string firstFew(const std::vector<std::string>& items, size_t shown = 5) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < shown; ++i) {
    out += (i == 0 ? "" : "; ") + items[i];
  }
  if (items.size() > shown) {
    out += fmt::format("; and {} more", items.size() - shown);
  }
  return out;
}

}  // namespace

ControlPlane::ControlPlane(Config config, std::string config_path, DataplaneHandle& dataplane)
    : config_(std::move(config)), config_path_(std::move(config_path)), dataplane_(dataplane),
      file_services_(renderedServices(config_)) {}

void ControlPlane::start() {
  const json r = apply(config_, "start");
  if (!r.value("ok", false)) {
    throw ConfigError(r.value("error", "cannot start"));
  }
}

json ControlPlane::apply(Config next, const std::string& what, Change change) {
  try {
    if (change == Change::kConfig) {
      validateConfig(next, kRequestSource);
      // Before building: a configuration whose tables do not fit is refused with their sizes,
      // not allocated until the host runs out.
      checkMemoryBudget(next, flow_tables_, generation_ == 0 ? 0 : maglevTableBytes(config_),
                        false);
    }
  } catch (const ConfigError& e) {
    std::string msg = e.what();
    const std::string prefix = std::string(kRequestSource) + ": ";
    if (msg.rfind(prefix, 0) == 0) {
      msg.erase(0, prefix.size());
    }
    return {{"ok", false}, {"error", msg}};
  }
  const auto t0 = std::chrono::steady_clock::now();
  // The registry is only changed when the build succeeds: build on a copy, keep it on success.
  IdRegistry ids = ids_;
  SnapshotPtr snap;
  try {
    snap = buildSnapshot(next, ids, generation_ + 1, dataplane_.current(), &runtime_);
  } catch (const std::bad_alloc&) {
    return {{"ok", false},
            {"error", "out of memory building the tables; running configuration kept"}};
  } catch (const std::exception& e) {
    return {{"ok", false}, {"error", e.what()}};
  }
  const auto built = std::chrono::steady_clock::now();
  try {
    dataplane_.publish(std::move(snap));  // all or nothing (DataplaneHandle::publish)
  } catch (const std::exception& e) {
    // The data path kept the snapshot in force: so does the control plane (config_, ids_ and
    // generation_ are untouched), and the request is refused like an invalid one.
    return {{"ok", false},
            {"error", fmt::format("the data path did not take the change ({}); running "
                                  "configuration kept",
                                  e.what())}};
  }
  const auto t1 = std::chrono::steady_clock::now();
  last_build_us_ = std::chrono::duration<double, std::micro>(built - t0).count();
  ids_ = std::move(ids);
  config_ = std::move(next);
  // Once running, the configuration is no longer the file's: later messages must not cite lines
  // of a file that may have changed since.
  for (ServiceConfig& s : config_.services) {
    s.line = 0;
    for (BackendConfig& b : s.backends) {
      b.line = 0;
    }
  }
  ++generation_;
  last_publish_us_ = std::chrono::duration<double, std::micro>(t1 - t0).count();
  // A backend that left the configuration takes its run-time state with it: added again, it
  // starts up and out of maintenance, as a new backend.
  std::set<BackendRef> live;
  for (const ServiceConfig& s : config_.services) {
    for (const BackendConfig& b : s.backends) {
      live.insert(backendRef(s, b));
    }
  }
  std::erase_if(runtime_.health, [&](const auto& kv) { return !live.contains(kv.first); });
  // A health verdict's publish leaves the configuration as it was: what follows it (probe
  // targets, neighbours to resolve) has nothing new to see, and at 1,000 backends would be
  // rebuilt for each verdict.
  if (on_applied_ && change == Change::kConfig) {
    on_applied_(config_);
  }
  return {{"ok", true},
          {"generation", generation_},
          {"publish_us", last_publish_us_},
          {"build_us", last_build_us_},
          {"change", what}};
}

json ControlPlane::republish(const std::string& why) noexcept {
  try {
    return apply(config_, why, Change::kRuntime);
  } catch (const std::exception& e) {
    return {{"ok", false}, {"error", e.what()}};
  }
}

json ControlPlane::setMaintenance(const json& req, bool down) {
  rejectUnknown(req, {"command", "service", "address", "port"}, "the request");
  const std::string name = stringField(req, "service");
  Config& running = config_;
  ServiceConfig& s = findService(running, name);
  const BackendConfig& b = s.backends[findBackend(s, req)];
  const BackendRef ref = backendRef(s, b);
  BackendHealth& h = runtime_.health[ref];
  const bool was = h.maintenance;
  h.maintenance = down;
  const std::string what = fmt::format("backend {} {} {}", down ? "down" : "up", name,
                                       formatEndpoint(b.address, b.port));
  json r = apply(config_, what, Change::kRuntime);
  if (!r.value("ok", false)) {
    runtime_.health[ref].maintenance = was;
  }
  return r;
}

std::vector<std::string> ControlPlane::undoneBy(const Config& next) const {
  // A service whose running form differs from the file's as last read was changed with
  // sluicectl; the new file undoes that change unless it holds the service as it runs now (the
  // operator saved it into the file, or made the same edit there).
  const auto running = renderedServices(config_);
  const auto incoming = renderedServices(next);
  std::set<std::string> names;
  for (const auto* m : {&file_services_, &running}) {
    for (const auto& [name, text] : *m) {
      names.insert(name);
    }
  }
  std::set<std::string> undone;
  for (const std::string& name : names) {
    const std::string* now = find(running, name);
    if (!same(now, find(file_services_, name)) && !same(now, find(incoming, name))) {
      undone.insert(name);
    }
  }
  std::vector<std::string> out;
  std::set<std::string> named;
  for (const CliChange& c : cli_changes_) {
    for (const std::string& service : c.services) {
      if (undone.contains(service)) {
        out.push_back(c.what);
        named.insert(service);
        break;
      }
    }
  }
  for (const std::string& name : undone) {
    if (!named.contains(name)) {
      out.push_back(fmt::format("service {:?} as it runs", name));  // not reached: every change is logged
    }
  }
  return out;
}

json ControlPlane::reload(bool force) noexcept {
  try {
    if (config_path_.empty()) {
      return {{"ok", false}, {"error", "sluiced was started without a configuration file"}};
    }
    Config next;
    try {
      next = loadConfigFile(config_path_);
    } catch (const ConfigError& e) {
      return {{"ok", false},
              {"error", fmt::format("reload rejected, running configuration kept: {}", e.what())}};
    }
    const std::vector<std::string> undone = undoneBy(next);
    if (!undone.empty() && !force) {
      return {{"ok", false},
              {"error",
               fmt::format("reload refused, running configuration kept: {} would undo {} "
                           "change{} made with sluicectl since it was read ({}); write them to "
                           "the file first (sluicectl save --out {}), or reload --force to drop "
                           "them",
                           config_path_, undone.size(), undone.size() == 1 ? "" : "s",
                           firstFew(undone), config_path_)},
              {"undone", undone}};
    }
    std::map<std::string, std::string> next_services = renderedServices(next);
    json r = apply(std::move(next), "reload " + config_path_);
    if (r.value("ok", false)) {
      file_services_ = std::move(next_services);
      cli_changes_.clear();
      if (!undone.empty()) {
        r["undone"] = undone;
      }
    }
    return r;
  } catch (const std::exception& e) {
    return {{"ok", false}, {"error", e.what()}};
  }
}

json ControlPlane::applyCli(Config next, const std::string& what,
                            std::vector<std::string> services) {
  json r = apply(std::move(next), what);
  if (r.value("ok", false)) {
    cli_changes_.push_back({what, std::move(services)});
  }
  return r;
}

json ControlPlane::handle(const json& req) noexcept {
  try {
    if (!req.is_object()) {
      throw RequestError("the request must be a JSON object");
    }
    const std::string cmd = stringField(req, "command");
    if (cmd == "version" || cmd == "list" || cmd == "stats" || cmd == "save") {
      // They take no arguments: a field a client expected to matter ("reload" with a "path")
      // must not be silently ignored.
      rejectUnknown(req, {"command"}, "the request");
    }
    if (cmd == "version") {
      return {{"ok", true}, {"version", SLUICE_VERSION}, {"generation", generation_}};
    }
    if (cmd == "list") {
      return list();
    }
    if (cmd == "stats") {
      return stats();
    }
    if (cmd == "save") {
      return {{"ok", true}, {"config", renderConfig(config_)}};
    }
    if (cmd == "reload") {
      rejectUnknown(req, {"command", "force"}, "the request");
      bool force = false;
      if (req.contains("force")) {
        if (!req.at("force").is_boolean()) {
          throw RequestError("\"force\" must be true or false");
        }
        force = req.at("force").get<bool>();
      }
      return reload(force);
    }
    Config next = config_;
    if (cmd == "service.add") {
      rejectUnknown(req, {"command", "service"}, "the request");
      const json& s = member(req, "service");
      rejectUnknown(s, {"name", "vip", "port", "protocol", "forwarding", "scheduler", "table_size",
                        "backends"},
                    "service");
      ServiceConfig sc;
      sc.name = stringField(s, "name");
      for (const ServiceConfig& existing : next.services) {
        if (existing.name == sc.name) {
          throw RequestError(fmt::format("service {:?} exists already", sc.name));
        }
      }
      sc.vip = addressField(s, "vip");
      sc.port = static_cast<uint16_t>(uintField(member(s, "port"), "port", 1, 65535));
      sc.protocol = protocolField(s, "protocol");
      sc.forwarding = forwardingField(s, "forwarding");
      setServiceFields(sc, s);
      if (s.contains("backends")) {
        if (!s.at("backends").is_array()) {
          throw RequestError("\"backends\" must be an array of backends");
        }
        for (const json& b : s.at("backends")) {
          sc.backends.push_back(backendFromRequest(b, sc));
        }
      }
      next.services.push_back(std::move(sc));
      const std::string added = s.at("name").get<std::string>();
      return applyCli(std::move(next), "service add " + added, {added});
    }
    if (cmd == "service.edit") {
      rejectUnknown(req, {"command", "name", "set"}, "the request");
      const std::string name = stringField(req, "name");
      const json& set = member(req, "set");
      rejectUnknown(set, {"name", "vip", "port", "protocol", "forwarding", "scheduler",
                          "table_size"},
                    "set");
      ServiceConfig& edited = findService(next, name);
      setServiceFields(edited, set);
      return applyCli(std::move(next), "service edit " + name, {name, edited.name});
    }
    if (cmd == "service.del") {
      rejectUnknown(req, {"command", "name"}, "the request");
      const std::string name = stringField(req, "name");
      findService(next, name);
      std::erase_if(next.services, [&](const ServiceConfig& s) { return s.name == name; });
      return applyCli(std::move(next), "service del " + name, {name});
    }
    if (cmd == "backend.add") {
      rejectUnknown(req, {"command", "service", "backend"}, "the request");
      const std::string name = stringField(req, "service");
      ServiceConfig& s = findService(next, name);
      BackendConfig b = backendFromRequest(member(req, "backend"), s);
      for (const BackendConfig& existing : s.backends) {
        if (existing.address == b.address && existing.port == b.port) {
          throw RequestError(fmt::format("service {:?} has backend {} already", name,
                                         formatEndpoint(b.address, b.port)));
        }
      }
      const std::string what = fmt::format("backend add {} {}", name, formatEndpoint(b.address, b.port));
      s.backends.push_back(std::move(b));
      return applyCli(std::move(next), what, {name});
    }
    if (cmd == "backend.down" || cmd == "backend.up") {
      return setMaintenance(req, cmd == "backend.down");
    }
    if (cmd == "backend.edit" || cmd == "backend.drain" || cmd == "backend.del") {
      if (cmd == "backend.edit") {
        rejectUnknown(req, {"command", "service", "address", "port", "set"}, "the request");
      } else {
        rejectUnknown(req, {"command", "service", "address", "port"}, "the request");
      }
      const std::string name = stringField(req, "service");
      ServiceConfig& s = findService(next, name);
      const size_t i = findBackend(s, req);
      BackendConfig& b = s.backends[i];
      const std::string what =
          fmt::format("{} {} {}", cmd, name, formatEndpoint(b.address, b.port));
      if (cmd == "backend.del") {
        s.backends.erase(s.backends.begin() + static_cast<std::ptrdiff_t>(i));
      } else if (cmd == "backend.drain") {
        b.weight = 0;
      } else {
        const json& set = member(req, "set");
        rejectUnknown(set, {"mac", "weight"}, "set");
        if (set.contains("mac")) {
          b.mac = macField(set, "mac");
        }
        if (set.contains("weight")) {
          b.weight = static_cast<uint32_t>(uintField(set.at("weight"), "weight", 0, kMaxWeight));
        }
      }
      return applyCli(std::move(next), what, {name});
    }
    throw RequestError(fmt::format("unknown command {:?}", cmd));
  } catch (const RequestError& e) {
    return {{"ok", false}, {"error", e.what()}};
  } catch (const std::exception& e) {
    return {{"ok", false}, {"error", fmt::format("internal error: {}", e.what())}};
  }
}

json ControlPlane::list() const {
  if (dataplane_.current() == nullptr) {
    throw RequestError("nothing is published yet: the control plane has not started");
  }
  const Snapshot& snap = *dataplane_.current();
  return {{"ok", true},
          {"schema", kJsonSchema},
          {"version", SLUICE_VERSION},
          {"generation", generation_},
          {"worker_count", dataplane_.workers()},
          {"services", services(snap, dataplane_.totals(snap))}};
}

json ControlPlane::services(const Snapshot& snap, const StatsTotals& totals) const {
  json out = servicesJson(snap, totals);
  if (!annotate_) {
    return out;
  }
  // A backend's reference is its service's endpoint and its own, all in the listing: no search
  // of the configuration per backend (a list of 1,000 backends stays linear).
  for (json& js : out) {
    const auto vip = IpAddress::parse(js.at("vip").get<std::string>());
    const auto proto = parseProtocol(js.at("protocol").get<std::string>());
    if (!vip || !proto) {
      continue;  // not reached: servicesJson writes both from a valid snapshot
    }
    const uint16_t port = js.at("port").get<uint16_t>();
    for (json& jb : js.at("backends")) {
      if (const auto addr = IpAddress::parse(jb.at("address").get<std::string>())) {
        annotate_(BackendRef{*vip, port, static_cast<uint8_t>(*proto), *addr,
                             jb.at("port").get<uint16_t>()},
                  jb);
      }
    }
  }
  return out;
}

json ControlPlane::stats() const {
  if (dataplane_.current() == nullptr) {
    throw RequestError("nothing is published yet: the control plane has not started");
  }
  const Snapshot& snap = *dataplane_.current();
  const StatsTotals t = dataplane_.totals(snap);
  return {{"ok", true},
          {"schema", kJsonSchema},
          {"generation", generation_},
          {"services", services(snap, t)},
          {"workers", workersJson(t)},
          {"total", workerJson(t.all, false)}};
}

}  // namespace sluice
