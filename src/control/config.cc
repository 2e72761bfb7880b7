#include "control/config.h"

#include "control/maglev.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <initializer_list>
#include <limits>
#include <map>
#include <system_error>
#include <tuple>
#include <utility>

#include <fmt/format.h>
#include <toml++/toml.h>

namespace sluice {
namespace {

// Bounds of the numeric settings. docs/config.md lists the same values; keep them in step.
constexpr int64_t kMinFlowTableSize = 1024;
constexpr int64_t kMaxFlowTableSize = int64_t{1} << 26;  // 67108864
constexpr int64_t kMaxIdleTimeout = 604800;              // one week
constexpr int64_t kMaxFinTimeout = 3600;
constexpr int64_t kMaxSynTimeout = 3600;
constexpr int64_t kMaxNewFlowRate = 100'000'000;  // per second per core: far above any core's
constexpr int64_t kMinTableSize = 7;
constexpr int64_t kMaxTableSize = 1048573;  // the largest prime below 2^20
constexpr size_t kMaxBackendsPerService = 65535;
constexpr uint64_t kMinMemoryLimit = uint64_t{16} << 20;
// Backend ids are 16 bits in the data planes' tables (LB_MAX_BACKENDS, id 0 unused).
constexpr size_t kMaxBackendsInAll = 65535;
constexpr size_t kMaxNameLength = 64;

// Error reporting

// An error is one line of the log and of sluicectl's answer, but what it quotes may hold newlines
// or control characters (toml++ quotes the offending input as it is, a quoted key may be "a\nb"):
// each is written as its escape.
std::string oneLine(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto b = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (b < 0x20 || b == 0x7f) {
      out += fmt::format("\\x{:02x}", b);
    } else {
      out += c;
    }
  }
  return out;
}

[[noreturn]] void fail(std::string_view source, int line, std::string_view message) {
  if (line > 0) {
    throw ConfigError(fmt::format("{}:{}: {}", source, line, oneLine(message)));
  }
  throw ConfigError(fmt::format("{}: {}", source, oneLine(message)));
}

// " (line 12)" when the line is known, "" for configurations that were not read from a file.
std::string atLine(int line) { return line > 0 ? fmt::format(" (line {})", line) : std::string(); }

int lineOf(const toml::node& node) { return static_cast<int>(node.source().begin.line); }

const char* typeName(toml::node_type type) {
  switch (type) {
  case toml::node_type::table:
    return "a table";
  case toml::node_type::array:
    return "an array";
  case toml::node_type::string:
    return "a string";
  case toml::node_type::integer:
    return "an integer";
  case toml::node_type::floating_point:
    return "a float";
  case toml::node_type::boolean:
    return "a boolean";
  case toml::node_type::date:
    return "a date";
  case toml::node_type::time:
    return "a time";
  case toml::node_type::date_time:
    return "a date-time";
  case toml::node_type::none:
    break;
  }
  return "nothing";
}

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// Value checks shared by the parser (which reports the line of the key) and validateConfig (which
// reports the line of the enclosing table, or none for configurations built in memory). Each
// returns the problem, or nothing when the value is acceptable.

std::optional<std::string> nameProblem(std::string_view name) {
  const bool good_chars = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
  });
  if (name.empty() || name.size() > kMaxNameLength || !good_chars) {
    return fmt::format("service name {:?} is invalid: use 1 to {} letters, digits, '_', '.' or '-'",
                       name, kMaxNameLength);
  }
  return std::nullopt;
}

bool isUsableUnicast(const IpAddress& a) {
  if (a.isV4()) {
    // Not 0.0.0.0/8 ("this network"), nor multicast 224/4, nor reserved 240/4 and broadcast.
    return a.bytes[0] != 0 && a.bytes[0] < 224;
  }
  if (a.isV6()) {
    const bool all_zero =
        std::all_of(a.bytes.begin(), a.bytes.end(), [](uint8_t b) { return b == 0; });
    return !all_zero && a.bytes[0] != 0xff;  // not ::, not multicast ff00::/8
  }
  return false;
}

std::optional<std::string> addressProblem(std::string_view what, const IpAddress& a) {
  if (a.family != LB_FAMILY_IPV4 && a.family != LB_FAMILY_IPV6) {
    return fmt::format("{} is not set", what);
  }
  if (!isUsableUnicast(a)) {
    return fmt::format("{} {} is not a usable unicast address", what, a.str());
  }
  return std::nullopt;
}

std::optional<std::string> macProblem(std::string_view what, const MacAddress& mac) {
  if (mac.isZero()) {
    return fmt::format("{} {} is all zeros; it must be a unicast MAC", what, mac.str());
  }
  if (mac.isMulticast()) {
    return fmt::format("{} {} is a multicast address; it must be a unicast MAC", what, mac.str());
  }
  return std::nullopt;
}

std::optional<std::string> tableSizeProblem(int64_t size) {
  if (size < kMinTableSize || size > kMaxTableSize) {
    return fmt::format("table_size {} is out of range {}..{}", size, kMinTableSize, kMaxTableSize);
  }
  if (!isPrime(static_cast<uint32_t>(size))) {
    int64_t next = size + 1;
    while (!isPrime(static_cast<uint32_t>(next))) {
      ++next;  // terminates: kMaxTableSize itself is prime
    }
    return fmt::format("table_size {} is not prime (Maglev needs a prime; the next one is {})",
                       size, next);
  }
  return std::nullopt;
}

std::optional<std::string> rangeProblem(std::string_view what, int64_t value, int64_t lo,
                                        int64_t hi) {
  if (value < lo || value > hi) {
    return fmt::format("{} {} is out of range {}..{}", what, value, lo, hi);
  }
  return std::nullopt;
}

std::string familyName(const IpAddress& a) { return a.isV6() ? "IPv6" : "IPv4"; }

std::string familyMismatch(const IpAddress& backend, const IpAddress& vip) {
  return fmt::format("backend {} is {} but the VIP is {}", backend.str(), familyName(backend),
                     familyName(vip));
}

std::string drPortMismatch(const IpAddress& backend, uint32_t backend_port, uint16_t vip_port) {
  return fmt::format("backend {}: DR cannot change the port (backend port {}, service port {}); "
                     "DR forwards the frame with the VIP and port unchanged, use forwarding = "
                     "\"nat\" to rewrite them",
                     backend.str(), backend_port, vip_port);
}

std::string endpointProto(const IpAddress& a, uint16_t port, Protocol proto) {
  return fmt::format("{}/{}", formatEndpoint(a, port), protocolName(proto));
}

// TOML access

// One table of the document, with what is needed to phrase errors about its keys.
class Scope {
public:
  Scope(std::string_view source, const toml::table& table, std::string where,
        std::string key_prefix = {})
      : source_(source), table_(table), where_(std::move(where)),
        key_prefix_(std::move(key_prefix)) {}

  // Messages after this call start with `prefix`, e.g. "service \"web\": ".
  void setPrefix(std::string prefix) { prefix_ = std::move(prefix); }

  int line() const { return sluice::lineOf(table_); }

  int lineOf(std::string_view key) const {
    const toml::node* node = table_.get(key);
    return node != nullptr ? sluice::lineOf(*node) : line();
  }

  [[noreturn]] void fail(int line, std::string_view message) const {
    sluice::fail(source_, line, prefix_ + std::string(message));
  }

  void rejectUnknownKeys(std::initializer_list<std::string_view> known) const {
    // Tables are ordered by key, not by position: report the unknown key that comes first.
    const toml::key* first = nullptr;
    for (auto&& [key, node] : table_) {
      (void)node;
      if (std::find(known.begin(), known.end(), key.str()) != known.end()) {
        continue;
      }
      if (first == nullptr || key.source().begin.line < first->source().begin.line) {
        first = &key;
      }
    }
    if (first == nullptr) {
      return;
    }
    std::string message = fmt::format("unknown key {:?} in {}", first->str(), where_);
    std::string_view best;
    size_t best_distance = 3;  // suggest only close misspellings
    for (std::string_view candidate : known) {
      const size_t d = editDistance(first->str(), candidate);
      if (d < best_distance && d < candidate.size()) {
        best = candidate;
        best_distance = d;
      }
    }
    if (!best.empty()) {
      message += fmt::format(" (did you mean {:?}?)", best);
    }
    fail(static_cast<int>(first->source().begin.line), message);
  }

  const toml::node* find(std::string_view key) const { return table_.get(key); }

  std::optional<std::string_view> optString(std::string_view key) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
      return std::nullopt;
    }
    if (const auto* s = node->as_string()) {
      return std::string_view(s->get());
    }
    failType(key, *node, "a string");
  }

  std::string_view reqString(std::string_view key) const {
    if (auto s = optString(key)) {
      return *s;
    }
    failMissing(key);
  }

  std::optional<int64_t> optInteger(std::string_view key, int64_t lo, int64_t hi) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
      return std::nullopt;
    }
    const auto* i = node->as_integer();
    if (i == nullptr) {
      failType(key, *node, "an integer");
    }
    if (auto problem = rangeProblem(keyName(key), i->get(), lo, hi)) {
      fail(sluice::lineOf(*node), *problem);
    }
    return i->get();
  }

  int64_t reqInteger(std::string_view key, int64_t lo, int64_t hi) const {
    if (auto i = optInteger(key, lo, hi)) {
      return *i;
    }
    failMissing(key);
  }

  const toml::table* optTable(std::string_view key) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
      return nullptr;
    }
    if (const auto* t = node->as_table()) {
      return t;
    }
    failType(key, *node, fmt::format("a table ([{}])", keyName(key)));
  }

  // An array of tables, as written with [[key]] (or key = [{...}, {...}]).
  const toml::array* optTableArray(std::string_view key, std::string_view header) const {
    const toml::node* node = find(key);
    if (node == nullptr) {
      return nullptr;
    }
    const std::string expected = fmt::format("an array of tables ({})", header);
    const auto* array = node->as_array();
    if (array == nullptr) {
      failType(key, *node, expected);
    }
    for (const toml::node& element : *array) {
      if (!element.is_table()) {
        fail(sluice::lineOf(element),
             fmt::format("{} must be {}, but it holds {}", keyName(key), expected,
                         typeName(element.type())));
      }
    }
    return array;
  }

private:
  std::string keyName(std::string_view key) const { return key_prefix_ + std::string(key); }

  [[noreturn]] void failType(std::string_view key, const toml::node& node,
                             std::string_view expected) const {
    fail(sluice::lineOf(node),
         fmt::format("{} must be {}, not {}", keyName(key), expected, typeName(node.type())));
  }

  [[noreturn]] void failMissing(std::string_view key) const {
    fail(line(), fmt::format("missing required key {:?} in {}", key, where_));
  }

  std::string_view source_;
  const toml::table& table_;
  std::string where_;
  std::string key_prefix_;
  std::string prefix_;
};

MacAddress parseMac(const Scope& scope, std::string_view key, std::string_view text,
                    std::string_view what) {
  const auto mac = MacAddress::parse(text);
  if (!mac) {
    scope.fail(scope.lineOf(key), fmt::format("{} {:?} is not a MAC address (expected six "
                                              "hex pairs like 02:00:00:00:01:11)",
                                              what, text));
  }
  if (auto problem = macProblem(what, *mac)) {
    scope.fail(scope.lineOf(key), *problem);
  }
  return *mac;
}

IpAddress parseAddress(const Scope& scope, std::string_view key, std::string_view text,
                       std::string_view what) {
  const auto address = IpAddress::parse(text);
  if (!address) {
    scope.fail(scope.lineOf(key),
               fmt::format("{} {:?} is not an IPv4 or IPv6 address", what, text));
  }
  if (auto problem = addressProblem(what, *address)) {
    scope.fail(scope.lineOf(key), *problem);
  }
  return *address;
}

/** "512M", "4G", "1048576": K, M, G and T are powers of 1024 (as systemd's MemoryMax). */
std::optional<uint64_t> parseByteSize(std::string_view text) {
  uint64_t value = 0;
  size_t i = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    if (value > (UINT64_MAX - 9) / 10) {
      return std::nullopt;
    }
    value = value * 10 + static_cast<uint64_t>(text[i] - '0');
  }
  if (i == 0) {
    return std::nullopt;
  }
  const std::string_view suffix = text.substr(i);
  int shift = 0;
  if (suffix.empty()) {
    shift = 0;
  } else if (suffix == "K" || suffix == "k") {
    shift = 10;
  } else if (suffix == "M") {
    shift = 20;
  } else if (suffix == "G") {
    shift = 30;
  } else if (suffix == "T") {
    shift = 40;
  } else {
    return std::nullopt;
  }
  if (shift > 0 && value > (UINT64_MAX >> shift)) {
    return std::nullopt;
  }
  return value << shift;
}

std::optional<std::string> memoryLimitProblem(uint64_t bytes) {
  if (bytes != 0 && bytes < kMinMemoryLimit) {
    return fmt::format("dataplane.memory_limit {} is below {} (16M): too small for any flow table",
                       bytes, kMinMemoryLimit);
  }
  return std::nullopt;
}

void parseDataplane(std::string_view source, const toml::table& table, DataplaneConfig& out) {
  Scope scope(source, table, "[dataplane]", "dataplane.");
  scope.rejectUnknownKeys({"flow_table_size", "gateway_mac", "mode", "interfaces", "xdp_attach",
                           "addresses", "gateway", "exception_interface", "promiscuous",
                           "memory_limit"});
  if (auto mode = scope.optString("mode")) {
    if (*mode == "dpdk") {
      out.mode = DataplaneMode::kDpdk;
    } else if (*mode == "xdp") {
      out.mode = DataplaneMode::kXdp;
    } else {
      scope.fail(scope.lineOf("mode"), fmt::format("mode {:?} is not dpdk or xdp", *mode));
    }
  }
  if (auto attach = scope.optString("xdp_attach")) {
    if (*attach == "auto") {
      out.xdp_attach = XdpAttach::kAuto;
    } else if (*attach == "native") {
      out.xdp_attach = XdpAttach::kNative;
    } else if (*attach == "generic") {
      out.xdp_attach = XdpAttach::kGeneric;
    } else {
      scope.fail(scope.lineOf("xdp_attach"),
                 fmt::format("xdp_attach {:?} is not auto, native or generic", *attach));
    }
  }
  if (const toml::node* node = scope.find("interfaces")) {
    const toml::array* list = node->as_array();
    if (list == nullptr) {
      scope.fail(lineOf(*node), "interfaces must be an array of interface names");
    }
    for (const toml::node& item : *list) {
      const auto* name = item.as_string();
      if (name == nullptr || name->get().empty() || name->get().size() > 15 ||
          name->get().find_first_of("/ \t") != std::string::npos) {
        scope.fail(lineOf(item), "interfaces must hold interface names (1..15 characters)");
      }
      out.interfaces.push_back(name->get());
    }
  }
  if (auto size = scope.optInteger("flow_table_size", kMinFlowTableSize, kMaxFlowTableSize)) {
    out.flow_table_size = static_cast<uint32_t>(*size);
  }
  if (auto text = scope.optString("gateway_mac")) {
    out.gateway_mac = parseMac(scope, "gateway_mac", *text, "dataplane.gateway_mac");
  }
  if (const toml::node* node = scope.find("memory_limit")) {
    std::optional<uint64_t> bytes;
    if (const auto* i = node->as_integer(); i != nullptr && i->get() >= 0) {
      bytes = static_cast<uint64_t>(i->get());
    } else if (const auto* text = node->as_string()) {
      bytes = parseByteSize(text->get());
    }
    if (!bytes) {
      scope.fail(lineOf(*node), "dataplane.memory_limit must be a number of bytes, or a string "
                                "such as \"512M\" or \"4G\" (K, M, G, T: powers of 1024)");
    }
    if (auto p = memoryLimitProblem(*bytes)) {
      scope.fail(lineOf(*node), *p);
    }
    out.memory_limit = *bytes;
  }
  if (const toml::node* node = scope.find("addresses")) {
    const toml::array* list = node->as_array();
    if (list == nullptr) {
      scope.fail(lineOf(*node), "dataplane.addresses must be an array of address/prefix strings "
                                "like \"198.51.100.2/24\"");
    }
    for (const toml::node& item : *list) {
      const auto* text = item.as_string();
      const auto prefix = text != nullptr ? IpPrefix::parse(text->get()) : std::nullopt;
      if (!prefix) {
        scope.fail(lineOf(item),
                   fmt::format("dataplane.addresses: {} is not an address with a prefix length "
                               "(like \"198.51.100.2/24\" or \"2001:db8:b::2/64\")",
                               text != nullptr ? fmt::format("{:?}", text->get())
                                               : std::string(typeName(item.type()))));
      }
      out.addresses.push_back(*prefix);
    }
  }
  if (const toml::node* node = scope.find("gateway")) {
    // One address, or one per family.
    std::vector<const toml::node*> items;
    if (const toml::array* list = node->as_array()) {
      for (const toml::node& item : *list) {
        items.push_back(&item);
      }
    } else {
      items.push_back(node);
    }
    for (const toml::node* item : items) {
      const auto* text = item->as_string();
      if (text == nullptr) {
        scope.fail(lineOf(*item), "dataplane.gateway must be an address, or an array of one "
                                  "IPv4 and one IPv6 address");
      }
      out.gateways.push_back(
          parseAddress(scope, "gateway", text->get(), "dataplane.gateway"));
    }
  }
  bool exception_given = false;
  if (auto name = scope.optString("exception_interface")) {
    if (name->size() > 15 || name->find_first_of("/ \t") != std::string_view::npos) {
      scope.fail(scope.lineOf("exception_interface"),
                 "dataplane.exception_interface must be an interface name (1..15 characters) "
                 "or \"\" for none");
    }
    out.exception_interface = std::string(*name);
    exception_given = true;
  }
  if (!exception_given && !out.addresses.empty()) {
    out.exception_interface = "sluice0";
  }
  if (const toml::node* node = scope.find("promiscuous")) {
    const auto* b = node->as_boolean();
    if (b == nullptr) {
      scope.fail(lineOf(*node), fmt::format("dataplane.promiscuous must be true or false, not {}",
                                            typeName(node->type())));
    }
    out.promiscuous = b->get();
  }
}

// keepalived's and Envoy's ranges, roughly: probes at least every hour, at most 100 per second.
constexpr int64_t kMinProbeInterval = 10;
constexpr int64_t kMaxProbeInterval = 3'600'000;
constexpr int64_t kMaxThreshold = 100;

std::optional<std::string> healthCheckProblem(const HealthCheckConfig& h) {
  if (auto p = rangeProblem("health_check.interval_ms", h.interval_ms, kMinProbeInterval,
                            kMaxProbeInterval)) {
    return p;
  }
  if (auto p = rangeProblem("health_check.timeout_ms", h.timeout_ms, 1, h.interval_ms)) {
    return *p + " (a probe must end before the next one is due)";
  }
  if (auto p = rangeProblem("health_check.rise", h.rise, 1, kMaxThreshold)) {
    return p;
  }
  if (auto p = rangeProblem("health_check.fall", h.fall, 1, kMaxThreshold)) {
    return p;
  }
  if (h.path.empty() || h.path[0] != '/' || h.path.size() > 1024 ||
      std::any_of(h.path.begin(), h.path.end(),
                  [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == 0x7f; })) {
    return fmt::format("health_check.path {:?} must start with / and hold no spaces or control "
                       "characters (at most 1024 bytes)",
                       h.path);
  }
  if (auto p = rangeProblem("health_check.expect_status", h.expect_status, 100, 599)) {
    return p;
  }
  return std::nullopt;
}

/** A [service.health_check] or [service.backend.health_check] table over base (the defaults). */
HealthCheckConfig parseHealthCheck(std::string_view source, const toml::table& table,
                                   const std::string& where, const std::string& prefix,
                                   HealthCheckConfig base) {
  Scope scope(source, table, where, "health_check.");
  scope.setPrefix(prefix);
  scope.rejectUnknownKeys({"type", "interval_ms", "timeout_ms", "rise", "fall", "port", "path",
                           "expect_status"});
  HealthCheckConfig h = std::move(base);
  if (auto type = scope.optString("type")) {
    if (*type == "none") {
      h.type = HealthCheckType::kNone;
    } else if (*type == "tcp") {
      h.type = HealthCheckType::kTcp;
    } else if (*type == "http") {
      h.type = HealthCheckType::kHttp;
    } else {
      scope.fail(scope.lineOf("type"),
                 fmt::format("health_check.type {:?} is not tcp, http or none", *type));
    }
  }
  if (auto v = scope.optInteger("interval_ms", kMinProbeInterval, kMaxProbeInterval)) {
    h.interval_ms = static_cast<uint32_t>(*v);
  }
  if (auto v = scope.optInteger("timeout_ms", 1, kMaxProbeInterval)) {
    h.timeout_ms = static_cast<uint32_t>(*v);
  }
  if (auto v = scope.optInteger("rise", 1, kMaxThreshold)) {
    h.rise = static_cast<uint32_t>(*v);
  }
  if (auto v = scope.optInteger("fall", 1, kMaxThreshold)) {
    h.fall = static_cast<uint32_t>(*v);
  }
  if (auto v = scope.optInteger("port", 1, 65535)) {
    h.port = static_cast<uint16_t>(*v);
  }
  if (auto v = scope.optString("path")) {
    h.path = std::string(*v);
  }
  if (auto v = scope.optInteger("expect_status", 100, 599)) {
    h.expect_status = static_cast<uint16_t>(*v);
  }
  if (auto p = healthCheckProblem(h)) {
    scope.fail(scope.line(), *p);
  }
  return h;
}

/** A handshake that would be allowed to outlive an established connection is a mistake. */
std::string synTimeoutProblem(const TimeoutConfig& t) {
  return fmt::format("timeouts.tcp_syn {} is longer than timeouts.tcp {}: a connection still "
                     "in its handshake would be kept longer than an established one",
                     t.tcp_syn_s, t.tcp_s);
}

void parseTimeouts(std::string_view source, const toml::table& table, TimeoutConfig& out) {
  Scope scope(source, table, "[timeouts]", "timeouts.");
  scope.rejectUnknownKeys({"tcp", "tcp_fin", "udp", "tcp_syn"});
  if (auto v = scope.optInteger("tcp", 1, kMaxIdleTimeout)) {
    out.tcp_s = static_cast<uint32_t>(*v);
  }
  if (auto v = scope.optInteger("tcp_fin", 1, kMaxFinTimeout)) {
    out.tcp_fin_s = static_cast<uint32_t>(*v);
  }
  if (auto v = scope.optInteger("udp", 1, kMaxIdleTimeout)) {
    out.udp_s = static_cast<uint32_t>(*v);
  }
  if (auto v = scope.optInteger("tcp_syn", 1, kMaxSynTimeout)) {
    out.tcp_syn_s = static_cast<uint32_t>(*v);
    if (out.tcp_syn_s > out.tcp_s) {
      scope.fail(scope.lineOf("tcp_syn"), synTimeoutProblem(out));
    }
  } else {
    out.tcp_syn_s = std::min(out.tcp_syn_s, out.tcp_s);  // a short tcp shortens the default
  }
}

void parseFlood(std::string_view source, const toml::table& table, FloodConfig& out) {
  Scope scope(source, table, "[flood]", "flood.");
  scope.rejectUnknownKeys({"new_flow_rate_limit"});
  if (auto v = scope.optInteger("new_flow_rate_limit", 0, kMaxNewFlowRate)) {
    out.new_flow_rate_limit = static_cast<uint32_t>(*v);
  }
}

BackendConfig parseBackend(std::string_view source, const toml::table& table,
                           const ServiceConfig& service) {
  const std::string service_prefix = fmt::format("service {:?}: ", service.name);
  Scope scope(source, table, "[[service.backend]]");
  scope.setPrefix(service_prefix);
  scope.rejectUnknownKeys({"address", "port", "mac", "weight", "health_check"});

  BackendConfig backend;
  backend.line = scope.line();
  backend.address =
      parseAddress(scope, "address", scope.reqString("address"), "backend address");
  if (backend.address.family != service.vip.family) {
    scope.fail(scope.lineOf("address"), familyMismatch(backend.address, service.vip));
  }
  scope.setPrefix(fmt::format("{}backend {}: ", service_prefix, backend.address.str()));

  backend.port = service.port;
  if (auto port = scope.optInteger("port", 1, 65535)) {
    if (service.forwarding == Forwarding::kDr && *port != service.port) {
      scope.setPrefix(service_prefix);
      scope.fail(scope.lineOf("port"),
                 drPortMismatch(backend.address, static_cast<uint32_t>(*port), service.port));
    }
    backend.port = static_cast<uint16_t>(*port);
  }
  if (auto text = scope.optString("mac")) {
    backend.mac = parseMac(scope, "mac", *text, "mac");
  }
  if (auto weight = scope.optInteger("weight", 0, kMaxWeight)) {
    backend.weight = static_cast<uint32_t>(*weight);
  }
  if (const toml::table* hc = scope.optTable("health_check")) {
    backend.health_check =
        parseHealthCheck(source, *hc, "[service.backend.health_check]",
                         fmt::format("{}backend {}: ", service_prefix, backend.address.str()),
                         service.health_check);
    if (*backend.health_check == service.health_check) {
      backend.health_check.reset();  // says nothing the service does not
    }
  }
  return backend;
}

ServiceConfig parseService(std::string_view source, const toml::table& table) {
  Scope scope(source, table, "[[service]]");
  scope.rejectUnknownKeys(
      {"name", "vip", "port", "protocol", "forwarding", "scheduler", "table_size", "backend",
       "health_check", "on_backend_down"});

  ServiceConfig service;
  service.line = scope.line();
  service.name = std::string(scope.reqString("name"));
  if (auto problem = nameProblem(service.name)) {
    scope.fail(scope.lineOf("name"), *problem);
  }
  scope.setPrefix(fmt::format("service {:?}: ", service.name));

  service.vip = parseAddress(scope, "vip", scope.reqString("vip"), "vip");
  service.port = static_cast<uint16_t>(scope.reqInteger("port", 1, 65535));

  const std::string_view protocol = scope.reqString("protocol");
  if (auto p = parseProtocol(protocol)) {
    service.protocol = *p;
  } else {
    scope.fail(scope.lineOf("protocol"),
               fmt::format("unknown protocol {:?} (expected \"tcp\" or \"udp\")", protocol));
  }

  const std::string_view forwarding = scope.reqString("forwarding");
  if (forwarding == "dr") {
    service.forwarding = Forwarding::kDr;
  } else if (forwarding == "nat") {
    service.forwarding = Forwarding::kNat;
  } else {
    scope.fail(scope.lineOf("forwarding"),
               fmt::format("unknown forwarding {:?} (expected \"dr\" or \"nat\")", forwarding));
  }

  if (auto scheduler = scope.optString("scheduler")) {
    if (*scheduler != "maglev") {
      scope.fail(scope.lineOf("scheduler"),
                 fmt::format("unknown scheduler {:?} (only \"maglev\" is supported)", *scheduler));
    }
    service.scheduler = Scheduler::kMaglev;
  }

  if (const toml::node* node = scope.find("table_size")) {
    const auto* size = node->as_integer();
    if (size == nullptr) {
      scope.fail(lineOf(*node),
                 fmt::format("table_size must be an integer, not {}", typeName(node->type())));
    }
    if (auto problem = tableSizeProblem(size->get())) {
      scope.fail(lineOf(*node), *problem);
    }
    service.table_size = static_cast<uint32_t>(size->get());
  }

  // Before the backends: their health_check tables start from this one.
  if (const toml::table* hc = scope.optTable("health_check")) {
    service.health_check = parseHealthCheck(source, *hc, "[service.health_check]",
                                            fmt::format("service {:?}: ", service.name), {});
  }
  if (auto policy = scope.optString("on_backend_down")) {
    if (*policy == "keep") {
      service.on_backend_down = DownPolicy::kKeep;
    } else if (*policy == "reschedule") {
      service.on_backend_down = DownPolicy::kReschedule;
    } else {
      scope.fail(scope.lineOf("on_backend_down"),
                 fmt::format("on_backend_down {:?} is not keep or reschedule", *policy));
    }
  }

  if (const toml::array* backends = scope.optTableArray("backend", "[[service.backend]]")) {
    if (backends->size() > kMaxBackendsPerService) {
      scope.fail(lineOf(*backends->get(kMaxBackendsPerService)),
                 fmt::format("{} backends; a service has at most {}", backends->size(),
                             kMaxBackendsPerService));
    }
    service.backends.reserve(backends->size());
    for (const toml::node& element : *backends) {
      service.backends.push_back(parseBackend(source, *element.as_table(), service));
    }
  }
  return service;
}

// Semantic checks on the structure, for validateConfig

void validateGlobals(const Config& config, std::string_view source) {
  const DataplaneConfig& dp = config.dataplane;
  if (auto p = rangeProblem("dataplane.flow_table_size", dp.flow_table_size, kMinFlowTableSize,
                            kMaxFlowTableSize)) {
    fail(source, 0, *p);
  }
  if (dp.gateway_mac) {
    if (auto p = macProblem("dataplane.gateway_mac", *dp.gateway_mac)) {
      fail(source, 0, *p);
    }
  }
  if (auto p = memoryLimitProblem(dp.memory_limit)) {
    fail(source, 0, *p);
  }
  for (size_t i = 0; i < dp.addresses.size(); ++i) {
    const IpPrefix& a = dp.addresses[i];
    if (auto p = addressProblem("dataplane.addresses", a.address)) {
      fail(source, 0, *p);
    }
    if (a.length > (a.address.isV4() ? 32 : 128) || a.length == 0) {
      fail(source, 0, fmt::format("dataplane.addresses: {} has prefix length {}; it must be "
                                  "1..{}", a.address.str(), a.length, a.address.isV4() ? 32 : 128));
    }
    for (size_t j = 0; j < i; ++j) {
      if (dp.addresses[j].address == a.address) {
        fail(source, 0, fmt::format("dataplane.addresses: {} is given twice", a.address.str()));
      }
    }
  }
  bool seen_family[2] = {false, false};
  for (const IpAddress& g : dp.gateways) {
    if (auto p = addressProblem("dataplane.gateway", g)) {
      fail(source, 0, *p);
    }
    bool& seen = seen_family[g.isV4() ? 0 : 1];
    if (seen) {
      fail(source, 0, fmt::format("dataplane.gateway: two {} gateways; give at most one per "
                                  "family", g.isV4() ? "IPv4" : "IPv6"));
    }
    seen = true;
    if (onLinkPrefix(dp, g) == nullptr) {
      fail(source, 0, fmt::format("dataplane.gateway {} is on none of the subnets of "
                                  "dataplane.addresses; a gateway must be on-link",
                                  g.str()));
    }
    for (const IpPrefix& a : dp.addresses) {
      if (a.address == g) {
        fail(source, 0, fmt::format("dataplane.gateway {} is one of Sluice's own addresses",
                                    g.str()));
      }
    }
  }
  const TimeoutConfig& t = config.timeouts;
  for (auto [what, value, hi] : {std::tuple{"timeouts.tcp", t.tcp_s, kMaxIdleTimeout},
                                 std::tuple{"timeouts.tcp_fin", t.tcp_fin_s, kMaxFinTimeout},
                                 std::tuple{"timeouts.udp", t.udp_s, kMaxIdleTimeout},
                                 std::tuple{"timeouts.tcp_syn", t.tcp_syn_s, kMaxSynTimeout}}) {
    if (auto p = rangeProblem(what, value, 1, hi)) {
      fail(source, 0, *p);
    }
  }
  if (t.tcp_syn_s > t.tcp_s) {
    fail(source, 0, synTimeoutProblem(t));
  }
  if (auto p = rangeProblem("flood.new_flow_rate_limit", config.flood.new_flow_rate_limit, 0,
                            kMaxNewFlowRate)) {
    fail(source, 0, *p);
  }
}

void validateService(const ServiceConfig& s, std::string_view source) {
  if (auto p = nameProblem(s.name)) {
    fail(source, s.line, *p);
  }
  const std::string prefix = fmt::format("service {:?}: ", s.name);
  auto failService = [&](int line, std::string_view message) {
    fail(source, line, prefix + std::string(message));
  };
  if (auto p = addressProblem("vip", s.vip)) {
    failService(s.line, *p);
  }
  if (s.port == 0) {
    failService(s.line, "port 0 is out of range 1..65535");
  }
  if (auto p = tableSizeProblem(s.table_size)) {
    failService(s.line, *p);
  }
  if (s.backends.size() > kMaxBackendsPerService) {
    failService(s.backends[kMaxBackendsPerService].line,
                fmt::format("{} backends; a service has at most {}", s.backends.size(),
                            kMaxBackendsPerService));
  }

  std::map<std::pair<IpAddress, uint16_t>, const BackendConfig*> seen;
  size_t weighted = 0;
  for (const BackendConfig& b : s.backends) {
    if (auto p = addressProblem("backend address", b.address)) {
      failService(b.line, *p);
    }
    if (b.address.family != s.vip.family) {
      failService(b.line, familyMismatch(b.address, s.vip));
    }
    const std::string backend_prefix = fmt::format("backend {}: ", b.address.str());
    if (b.port == 0) {
      failService(b.line, backend_prefix + "port 0 is out of range 1..65535");
    }
    if (s.forwarding == Forwarding::kDr && b.port != s.port) {
      failService(b.line, drPortMismatch(b.address, b.port, s.port));
    }
    if (b.mac) {
      if (auto p = macProblem("mac", *b.mac)) {
        failService(b.line, backend_prefix + *p);
      }
    }
    if (auto p = rangeProblem("weight", b.weight, 0, kMaxWeight)) {
      failService(b.line, backend_prefix + *p);
    }
    if (!seen.emplace(std::pair{b.address, b.port}, &b).second) {
      failService(b.line,
                  fmt::format("backend {} appears twice", formatEndpoint(b.address, b.port)));
    }
    if (b.weight > 0) {
      ++weighted;
    }
  }
  if (auto p = healthCheckProblem(s.health_check)) {
    failService(s.line, *p);
  }
  for (const BackendConfig& b : s.backends) {
    if (b.health_check) {
      if (auto p = healthCheckProblem(*b.health_check)) {
        failService(b.line, fmt::format("backend {}: {}", b.address.str(), *p));
      }
    }
  }
  if (weighted > s.table_size) {
    failService(s.line, fmt::format("table_size {} is smaller than the number of backends with "
                                    "weight > 0 ({}); each needs at least one slot",
                                    s.table_size, weighted));
  }
}

}  // namespace

const char* healthCheckTypeName(HealthCheckType t) {
  switch (t) {
  case HealthCheckType::kNone:
    return "none";
  case HealthCheckType::kTcp:
    return "tcp";
  case HealthCheckType::kHttp:
    return "http";
  }
  return "unknown";
}

const char* downPolicyName(DownPolicy p) {
  return p == DownPolicy::kReschedule ? "reschedule" : "keep";
}

const IpAddress* gatewayFor(const DataplaneConfig& dp, uint8_t family) {
  for (const IpAddress& g : dp.gateways) {
    if (g.family == family) {
      return &g;
    }
  }
  return nullptr;
}

const IpPrefix* onLinkPrefix(const DataplaneConfig& dp, const IpAddress& a) {
  for (const IpPrefix& p : dp.addresses) {
    if (p.contains(a)) {
      return &p;
    }
  }
  return nullptr;
}

const char* schedulerName(Scheduler s) {
  switch (s) {
  case Scheduler::kMaglev:
    return "maglev";
  }
  return "unknown";
}

Config parseConfig(std::string_view text, std::string_view source_name) {
  toml::table root;
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& e) {
    fail(source_name, static_cast<int>(e.source().begin.line), e.description());
  }

  Config config;
  for (auto&& [key, node] : root) {
    if (key.str() == "dataplane" || key.str() == "timeouts" || key.str() == "flood" ||
        key.str() == "service") {
      continue;
    }
    const int line = static_cast<int>(key.source().begin.line);
    if (node.is_table()) {
      fail(source_name, line,
           fmt::format("unknown table [{}] (expected [dataplane], [timeouts], [flood] or "
                       "[[service]])",
                       key.str()));
    }
    fail(source_name, line,
         fmt::format("unknown key {:?} at the top level (expected [dataplane], [timeouts], "
                     "[flood] or [[service]])",
                     key.str()));
  }

  Scope top(source_name, root, "the top level");
  if (const toml::table* dataplane = top.optTable("dataplane")) {
    parseDataplane(source_name, *dataplane, config.dataplane);
  }
  if (const toml::table* timeouts = top.optTable("timeouts")) {
    parseTimeouts(source_name, *timeouts, config.timeouts);
  }
  if (const toml::table* flood = top.optTable("flood")) {
    parseFlood(source_name, *flood, config.flood);
  }
  if (const toml::array* services = top.optTableArray("service", "[[service]]")) {
    config.services.reserve(services->size());
    for (const toml::node& element : *services) {
      config.services.push_back(parseService(source_name, *element.as_table()));
    }
  }

  validateConfig(config, source_name);
  return config;
}

Config loadConfigFile(const std::string& path) {
  auto cannotRead = [&path](int err) {
    throw ConfigError(
        fmt::format("{}: cannot read: {}", path, std::generic_category().message(err)));
  };
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer, with the daemon's control loop
  // (reload) stuck in it. The fstat below refuses every such file before a read could block.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    cannotRead(errno);
  }
  // What is checked is what is read: the same fd, so the path cannot be swapped in between.
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    cannotRead(err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    const char* kind = S_ISFIFO(st.st_mode)  ? "a FIFO"
                       : S_ISCHR(st.st_mode) ? "a character device"
                       : S_ISDIR(st.st_mode) ? "a directory"
                       : S_ISBLK(st.st_mode) ? "a block device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a file";
    throw ConfigError(fmt::format("{}: not a regular file ({})", path, kind));
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxConfigFileBytes) {
    ::close(fd);
    throw ConfigError(fmt::format("{}: {} bytes, more than the {} bytes a configuration file may have",
                                  path, st.st_size, kMaxConfigFileBytes));
  }
  std::string text;
  text.reserve(static_cast<size_t>(st.st_size));
  char buffer[16384];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n > 0) {
      text.append(buffer, static_cast<size_t>(n));
      // A file that grows while it is read is held to the same cap.
      if (text.size() > kMaxConfigFileBytes) {
        ::close(fd);
        throw ConfigError(fmt::format("{}: more than the {} bytes a configuration file may have",
                                      path, kMaxConfigFileBytes));
      }
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      const int err = errno;
      ::close(fd);
      cannotRead(err);
    }
  }
  ::close(fd);
  return parseConfig(text, path);
}

void validateConfig(const Config& config, std::string_view source_name) {
  validateGlobals(config, source_name);

  using Endpoint = std::tuple<IpAddress, uint16_t, Protocol>;
  std::map<std::string_view, const ServiceConfig*> names;
  std::map<Endpoint, const ServiceConfig*> vips;
  for (const ServiceConfig& s : config.services) {
    validateService(s, source_name);
    if (auto [it, fresh] = names.emplace(s.name, &s); !fresh) {
      fail(source_name, s.line,
           fmt::format("service name {:?} is used twice{}", s.name, atLine(it->second->line)));
    }
    const Endpoint vip{s.vip, s.port, s.protocol};
    if (auto [it, fresh] = vips.emplace(vip, &s); !fresh) {
      fail(source_name, s.line,
           fmt::format("service {:?} has the same VIP, port and protocol ({}) as service {:?}{}",
                       s.name, endpointProto(s.vip, s.port, s.protocol), it->second->name,
                       atLine(it->second->line)));
    }
  }

  size_t backends_in_all = 0;
  for (const ServiceConfig& s : config.services) {
    if (backends_in_all + s.backends.size() > kMaxBackendsInAll) {
      const BackendConfig& over = s.backends[kMaxBackendsInAll - backends_in_all];
      fail(source_name, over.line,
           fmt::format("service {:?}: backend {} is one more than the {} backends all services "
                       "may have together",
                       s.name, endpointProto(over.address, over.port, s.protocol),
                       kMaxBackendsInAll));
    }
    backends_in_all += s.backends.size();
  }

  // A backend without a MAC is resolved by ARP/ND: itself when it is on one of Sluice's subnets,
  // the gateway of its family otherwise. One that neither way could reach is a mistake.
  const DataplaneConfig& dp = config.dataplane;
  for (const ServiceConfig& s : config.services) {
    for (const BackendConfig& b : s.backends) {
      for (const IpPrefix& a : dp.addresses) {
        if (a.address == b.address) {
          fail(source_name, b.line,
               fmt::format("service {:?}: backend {} is one of Sluice's own addresses", s.name,
                           b.address.str()));
        }
      }
      if (b.mac || onLinkPrefix(dp, b.address) != nullptr ||
          gatewayFor(dp, b.address.family) != nullptr) {
        continue;
      }
      fail(source_name, b.line,
           fmt::format("service {:?}: backend {} has no mac, is on none of the subnets of "
                       "dataplane.addresses, and there is no {} dataplane.gateway: its MAC "
                       "could never be resolved (give its mac, or Sluice's address on its "
                       "subnet)",
                       s.name, b.address.str(), b.address.isV4() ? "IPv4" : "IPv6"));
    }
    for (const IpPrefix& a : dp.addresses) {
      if (a.address == s.vip) {
        fail(source_name, s.line,
             fmt::format("service {:?}: the VIP {} is one of dataplane.addresses; the host's own "
                         "address cannot be a VIP",
                         s.name, s.vip.str()));
      }
    }
  }

  // Replies from NAT backends are rewritten statelessly: the data plane looks up the reply's
  // source (backend address, port, protocol) and restores the VIP:port of the one service that
  // uses that backend. So the triple must identify exactly one NAT service, and must not be
  // mistaken for traffic to a VIP.
  std::map<Endpoint, const ServiceConfig*> nat_backends;
  for (const ServiceConfig& s : config.services) {
    if (s.forwarding != Forwarding::kNat) {
      continue;
    }
    for (const BackendConfig& b : s.backends) {
      const Endpoint endpoint{b.address, b.port, s.protocol};
      if (auto it = vips.find(endpoint); it != vips.end()) {
        fail(source_name, b.line,
             fmt::format("service {:?}: NAT backend {} is the VIP of service {:?}; its replies "
                         "could not be told from client traffic",
                         s.name, endpointProto(b.address, b.port, s.protocol), it->second->name));
      }
      if (auto [it, fresh] = nat_backends.emplace(endpoint, &s); !fresh) {
        fail(source_name, b.line,
             fmt::format("backend {} is used by NAT services {:?} and {:?}; replies could not "
                         "be told apart",
                         endpointProto(b.address, b.port, s.protocol), it->second->name, s.name));
      }
    }
  }
}

std::string renderService(const ServiceConfig& s) {
  auto quoted = [](const std::string& v) { return fmt::format("{:?}", v); };
  std::string out;
  out += fmt::format(
      "\n[[service]]\nname = {}\nvip = {}\nport = {}\nprotocol = {}\nforwarding = {}\n"
      "scheduler = {}\ntable_size = {}\n",
      quoted(s.name), quoted(s.vip.str()), s.port, quoted(protocolName(s.protocol)),
      quoted(forwardingName(s.forwarding)), quoted(schedulerName(s.scheduler)), s.table_size);
  out += fmt::format("on_backend_down = {}\n", quoted(downPolicyName(s.on_backend_down)));
  auto renderCheck = [&](const HealthCheckConfig& h, std::string_view header) {
    out += fmt::format(
        "\n[{}]\ntype = {}\ninterval_ms = {}\ntimeout_ms = {}\nrise = {}\nfall = {}\n", header,
        quoted(healthCheckTypeName(h.type)), h.interval_ms, h.timeout_ms, h.rise, h.fall);
    if (h.port != 0) {
      out += fmt::format("port = {}\n", h.port);
    }
    out += fmt::format("path = {}\nexpect_status = {}\n", quoted(h.path), h.expect_status);
  };
  if (s.health_check != HealthCheckConfig{}) {
    renderCheck(s.health_check, "service.health_check");
  }
  for (const BackendConfig& b : s.backends) {
    out += fmt::format("\n[[service.backend]]\naddress = {}\n", quoted(b.address.str()));
    if (s.forwarding == Forwarding::kNat || b.port != s.port) {
      out += fmt::format("port = {}\n", b.port);
    }
    if (b.mac) {
      out += fmt::format("mac = {}\n", quoted(b.mac->str()));
    }
    out += fmt::format("weight = {}\n", b.weight);
    if (b.health_check && *b.health_check != s.health_check) {
      renderCheck(*b.health_check, "service.backend.health_check");
    }
  }
  return out;
}

std::string renderConfig(const Config& config) {
  auto quoted = [](const std::string& v) { return fmt::format("{:?}", v); };
  std::string out = "# Written by sluicectl save.\n\n[dataplane]\n";
  if (config.dataplane.mode == DataplaneMode::kXdp) {
    out += "mode = \"xdp\"\n";
    const XdpAttach a = config.dataplane.xdp_attach;
    out += fmt::format("xdp_attach = {}\n",
                       quoted(a == XdpAttach::kNative ? "native" : a == XdpAttach::kGeneric ? "generic" : "auto"));
  }
  if (!config.dataplane.interfaces.empty()) {
    std::string list;
    for (const std::string& i : config.dataplane.interfaces) {
      list += fmt::format("{}{}", list.empty() ? "" : ", ", quoted(i));
    }
    out += fmt::format("interfaces = [{}]\n", list);
  }
  out += fmt::format("flow_table_size = {}\n", config.dataplane.flow_table_size);
  if (config.dataplane.memory_limit != 0) {
    out += fmt::format("memory_limit = {}\n", config.dataplane.memory_limit);
  }
  if (config.dataplane.gateway_mac) {
    out += fmt::format("gateway_mac = {}\n", quoted(config.dataplane.gateway_mac->str()));
  }
  const DataplaneConfig& dp = config.dataplane;
  if (!dp.addresses.empty()) {
    std::string list;
    for (const IpPrefix& a : dp.addresses) {
      list += fmt::format("{}{}", list.empty() ? "" : ", ", quoted(a.str()));
    }
    out += fmt::format("addresses = [{}]\n", list);
  }
  if (!dp.gateways.empty()) {
    std::string list;
    for (const IpAddress& g : dp.gateways) {
      list += fmt::format("{}{}", list.empty() ? "" : ", ", quoted(g.str()));
    }
    out += fmt::format("gateway = [{}]\n", list);
  }
  out += fmt::format("exception_interface = {}\n", quoted(dp.exception_interface));
  if (dp.promiscuous) {
    out += "promiscuous = true\n";
  }
  out += fmt::format("\n[timeouts]\ntcp = {}\ntcp_fin = {}\nudp = {}\ntcp_syn = {}\n",
                     config.timeouts.tcp_s, config.timeouts.tcp_fin_s, config.timeouts.udp_s,
                     config.timeouts.tcp_syn_s);
  if (config.flood.new_flow_rate_limit != 0) {
    out += fmt::format("\n[flood]\nnew_flow_rate_limit = {}\n", config.flood.new_flow_rate_limit);
  }
  for (const ServiceConfig& s : config.services) {
    out += renderService(s);
  }
  return out;
}

std::string_view defaultConfigText() {
  // Must stay in step with the sample capture and its expected results (tests/dpdk, tools/pktgen)
  // and with conf/example.toml, which is the same configuration with every key spelled out.
  static constexpr std::string_view kText = R"(# Sluice built-in default configuration (sluiced replay without --config).
# conf/example.toml is the same configuration with every key shown and explained.

[dataplane]
flow_table_size = 65536
gateway_mac = "02:00:00:00:00:fe"

[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
forwarding = "dr"
scheduler = "maglev"

[[service.backend]]
address = "10.0.0.11"
mac = "02:00:00:00:01:11"
weight = 100

[[service.backend]]
address = "10.0.0.12"
mac = "02:00:00:00:01:12"
weight = 100

[[service.backend]]
address = "10.0.0.13"
mac = "02:00:00:00:01:13"
weight = 200

[[service]]
name = "dns"
vip = "192.0.2.53"
port = 53
protocol = "udp"
forwarding = "nat"
scheduler = "maglev"

[[service.backend]]
address = "10.0.1.21"
port = 5353
mac = "02:00:00:00:02:21"
weight = 1

[[service.backend]]
address = "10.0.1.22"
port = 5353
mac = "02:00:00:00:02:22"
weight = 1

[[service]]
name = "web6"
vip = "2001:db8::10"
port = 443
protocol = "tcp"
forwarding = "nat"
scheduler = "maglev"

[[service.backend]]
address = "2001:db8:1::11"
port = 8443
mac = "02:00:00:00:03:11"
weight = 1

[[service.backend]]
address = "2001:db8:1::12"
port = 8443
mac = "02:00:00:00:03:12"
weight = 1
)";
  return kText;
}

}  // namespace sluice
