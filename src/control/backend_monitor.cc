#include "control/backend_monitor.h"

#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include <iterator>

namespace sluice {

namespace {

// Retry an unresolved next hop every tick; ask the kernel to re-validate every known one every
// kRefreshTicks (the data path's traffic does not confirm the kernel's entries, so without it
// they would age to STALE and the kernel would never probe them).
constexpr int kTickMs = 1000;
constexpr uint64_t kRefreshTicks = 15;
// keepalived sends five gratuitous ARPs when it takes a VIP (vrrp_garp_master_repeat); three a
// second apart cover a lost frame and a switch that was slow to learn.
constexpr int kAnnouncements = 3;

std::string targetKey(const BackendRef& r) {
  const auto& [vip, port, proto, addr, bport] = r;
  return fmt::format("{}/{} {}", formatEndpoint(vip, port), proto == LB_PROTO_TCP ? "tcp" : "udp",
                     formatEndpoint(addr, bport));
}

std::string isoTime(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, unix_ms % 1000);
}

}  // namespace

BackendMonitor::BackendMonitor(event_base* base, ControlPlane& control, HostInterface* host,
                               Log log)
    : base_(base),
      control_(control),
      host_(host),
      log_(std::move(log)),
      checker_(base, [this](const std::string& key, const ProbeStatus& status) {
        onHealthChange(key, status);
      }) {
  if (host_ != nullptr) {
    neighbour_event_ =
        event_new(base_, host_->eventFd(), EV_READ | EV_PERSIST, neighbourCallback, this);
    event_add(neighbour_event_, nullptr);
  }
  tick_event_ = event_new(base_, -1, EV_PERSIST, tickCallback, this);
  const timeval tick{kTickMs / 1000, (kTickMs % 1000) * 1000};
  event_add(tick_event_, &tick);
  publish_event_ = event_new(base_, -1, 0, publishCallback, this);
}

BackendMonitor::~BackendMonitor() {
  control_.onApplied(nullptr);
  control_.setBackendAnnotator(nullptr);
  for (event* e : {neighbour_event_, tick_event_, publish_event_}) {
    if (e != nullptr) {
      event_free(e);
    }
  }
}

void BackendMonitor::start() {
  control_.onApplied([this](const Config& c) { follow(c); });
  control_.setBackendAnnotator(
      [this](const BackendRef& ref, nlohmann::json& j) { annotate(ref, j); });
  if (host_ != nullptr) {
    try {
      host_->refreshAll();
    } catch (const std::exception& e) {
      log_(true, e.what());
    }
  }
  follow(control_.config());
  // What the kernel knew before we asked (entries from an earlier run, static ones).
  for (const IpAddress& a : wanted_) {
    learn(a);
  }
  if (!pending_why_.empty()) {
    publishNow();
  }
}

void BackendMonitor::follow(const Config& config) {
  const DataplaneConfig& dp = config.dataplane;
  std::vector<ProbeTarget> probes;
  std::map<std::string, Target> targets;
  std::map<BackendRef, std::string> keys;
  std::set<IpAddress> wanted;
  std::set<IpAddress> vips;
  for (const ServiceConfig& s : config.services) {
    vips.insert(s.vip);
    for (const BackendConfig& b : s.backends) {
      const BackendRef ref = backendRef(s, b);
      if (!b.mac) {
        if (auto hop = nextHopOf(dp, b.address)) {
          wanted.insert(*hop);
        }
      }
      const HealthCheckConfig& check = b.health_check ? *b.health_check : s.health_check;
      if (check.type == HealthCheckType::kNone) {
        continue;
      }
      ProbeTarget t;
      t.key = targetKey(ref);
      t.address = b.address;
      t.port = check.port != 0 ? check.port : b.port;
      t.check = check;
      for (const IpPrefix& a : dp.addresses) {
        if (a.address.family == b.address.family) {
          t.source = a.address;  // probes come from Sluice's own address
          break;
        }
      }
      targets[t.key] = {ref, s.name, formatEndpoint(b.address, b.port)};
      keys[ref] = t.key;
      probes.push_back(std::move(t));
    }
  }
  if (!dp.gateway_mac) {
    for (const IpAddress& g : dp.gateways) {
      wanted.insert(g);
    }
  }
  // A verdict for a backend that is no longer checked must not keep it down.
  bool changed = false;
  for (auto& [ref, health] : control_.runtime().health) {
    if (!health.up && !keys.contains(ref)) {
      health.up = true;
      changed = true;
    }
  }
  checker_.setTargets(std::move(probes));
  targets_ = std::move(targets);
  keys_ = std::move(keys);
  for (const IpAddress& a : wanted) {
    if (!wanted_.contains(a)) {
      resolve(a);
    }
  }
  wanted_ = std::move(wanted);
  for (const IpAddress& v : vips) {
    if (!vips_.contains(v)) {
      announce_[v] = kAnnouncements;
    }
  }
  std::erase_if(announce_, [&](const auto& kv) { return !vips.contains(kv.first); });
  vips_ = std::move(vips);
  if (changed) {
    schedulePublish("health checks changed");
  }
}

void BackendMonitor::annotate(const BackendRef& ref, nlohmann::json& j) const {
  auto it = keys_.find(ref);
  const BackendHealth* h = nullptr;
  if (auto hit = control_.runtime().health.find(ref); hit != control_.runtime().health.end()) {
    h = &hit->second;
  }
  nlohmann::json health = nlohmann::json::object();
  health["maintenance"] = h != nullptr && h->maintenance;
  if (it == keys_.end()) {
    health["check"] = "none";
  } else if (const ProbeStatus* st = checker_.status(it->second)) {
    health["check"] = "on";
    health["up"] = st->up;
    health["probes"] = st->probes;
    health["failures"] = st->failures;
    health["last_result"] = st->last_result;
    health["last_ok"] = st->last_ok;
    health["last_change"] =
        st->last_change_unix_ms != 0 ? nlohmann::json(isoTime(st->last_change_unix_ms)) : nullptr;
  }
  j["health"] = std::move(health);
  if (j.value("state", "") == "unresolved") {
    const auto& [vip, port, proto, addr, bport] = ref;
    const auto hop = nextHopOf(control_.config().dataplane, addr);
    std::string why;
    if (!hop) {
      why = "no on-link address and no gateway to reach it";
    } else if (host_ == nullptr) {
      why = fmt::format("no MAC configured and no kernel interface to resolve {} on", hop->str());
    } else {
      const HostInterface::Neighbour n = host_->neighbour(*hop);
      why = fmt::format("ARP/ND for {} on {}: {}", hop->str(), host_->name(), n.state);
    }
    j["unresolved_because"] = why;
  }
}

void BackendMonitor::onHealthChange(const std::string& key, const ProbeStatus& status) {
  auto it = targets_.find(key);
  if (it == targets_.end()) {
    return;
  }
  control_.runtime().health[it->second.ref].up = status.up;
  log_(!status.up, fmt::format("service {:?} backend {} is {} ({})", it->second.service,
                               it->second.endpoint, status.up ? "up" : "down",
                               status.last_result));
  schedulePublish(fmt::format("backend {} {} {}", it->second.service, it->second.endpoint,
                              status.up ? "up" : "down"));
}

void BackendMonitor::learn(const IpAddress& addr) {
  if (host_ == nullptr) {
    return;
  }
  const HostInterface::Neighbour n = host_->neighbour(addr);
  auto& known = control_.runtime().neighbours;
  auto it = known.find(addr);
  if (n.mac) {
    if (it == known.end() || it->second != *n.mac) {
      log_(false, fmt::format("neighbour {} is at {} ({})", addr.str(), n.mac->str(), n.state));
      known[addr] = *n.mac;
      schedulePublish("neighbour " + addr.str() + " resolved");
    }
  } else if (it != known.end() && n.state == "failed") {
    // Only a failed resolution withdraws a MAC: an entry that is being re-validated (probe,
    // incomplete after a flush) keeps serving the last known one.
    log_(true, fmt::format("neighbour {} no longer answers ARP/ND", addr.str()));
    known.erase(it);
    schedulePublish("neighbour " + addr.str() + " lost");
  }
}

void BackendMonitor::resolve(const IpAddress& addr) {
  if (host_ == nullptr) {
    return;
  }
  try {
    host_->resolve(addr);
  } catch (const std::exception& e) {
    // Said once per address: a refusal repeats every tick (IPv6 disabled on the interface, ...).
    if (resolve_failures_.insert(addr).second) {
      log_(true, fmt::format("cannot resolve {}: {}", addr.str(), e.what()));
    }
    return;
  }
  resolve_failures_.erase(addr);
}

void BackendMonitor::onNeighbourEvents() {
  for (const IpAddress& a : host_->processEvents()) {
    if (wanted_.contains(a)) {
      learn(a);
    }
  }
}

void BackendMonitor::tick() {
  ++ticks_;
  if (host_ != nullptr) {
    const bool refresh = ticks_ % kRefreshTicks == 0;
    const auto& known = control_.runtime().neighbours;
    for (const IpAddress& a : wanted_) {
      if (refresh || !known.contains(a)) {
        resolve(a);
      }
    }
    for (auto it = announce_.begin(); it != announce_.end();) {
      try {
        host_->announce(it->first);
      } catch (const std::exception& e) {
        log_(true, fmt::format("cannot announce VIP {}: {}", it->first.str(), e.what()));
      }
      it = --it->second == 0 ? announce_.erase(it) : std::next(it);
    }
  }
}

void BackendMonitor::schedulePublish(std::string why) {
  if (pending_why_.empty()) {
    pending_why_ = std::move(why);
    event_active(publish_event_, 0, 0);  // after the events already pending: one publish for all
  } else if (pending_why_.find(", ...") == std::string::npos) {
    pending_why_ += ", ...";
  }
}

void BackendMonitor::publishNow() {
  if (pending_why_.empty()) {
    return;  // published already
  }
  const std::string why = std::move(pending_why_);
  pending_why_.clear();
  const nlohmann::json r = control_.republish(why);
  if (!r.value("ok", false)) {
    log_(true, fmt::format("could not publish ({}): {}", why, r.value("error", "")));
  }
}

void BackendMonitor::neighbourCallback(evutil_socket_t, short, void* self) {
  static_cast<BackendMonitor*>(self)->onNeighbourEvents();
}

void BackendMonitor::tickCallback(evutil_socket_t, short, void* self) {
  static_cast<BackendMonitor*>(self)->tick();
}

void BackendMonitor::publishCallback(evutil_socket_t, short, void* self) {
  static_cast<BackendMonitor*>(self)->publishNow();
}

}  // namespace sluice
