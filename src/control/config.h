// The Sluice configuration: what the TOML file says, validated. Loading never half-succeeds: a
// file is either returned whole and valid, or rejected with a ConfigError naming the line and the
// problem, and the caller's running configuration stays as it was.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/lb_abi.h"
#include "common/net.h"
#include "common/snapshot.h"

namespace sluice {

enum class Scheduler : uint8_t { kMaglev };

const char* schedulerName(Scheduler s);

inline constexpr uint32_t kDefaultMaglevTableSize = 65537;
inline constexpr uint32_t kMaxWeight = 65535;  // as ipvsadm: 0 (drain) .. 65535

enum class HealthCheckType : uint8_t { kNone, kTcp, kHttp };
const char* healthCheckTypeName(HealthCheckType t);

/**
 * How the daemon probes a backend (keepalived's TCP_CHECK / HTTP_GET; Envoy's thresholds): a
 * probe every interval_ms, failed after timeout_ms; rise consecutive successes bring a backend
 * up, fall consecutive failures take it down.
 */
struct HealthCheckConfig {
  HealthCheckType type = HealthCheckType::kNone;
  uint32_t interval_ms = 1000;
  uint32_t timeout_ms = 500;
  uint32_t rise = 2;
  uint32_t fall = 2;
  uint16_t port = 0;             // 0: the backend's port
  std::string path = "/";        // http: the request target
  uint16_t expect_status = 200;  // http: the status a healthy backend answers with

  bool operator==(const HealthCheckConfig&) const = default;
};

/** What happens to a backend's established flows when it goes down (health check or admin). */
enum class DownPolicy : uint8_t {
  kKeep,        // they stay on it until they end or time out (IPVS expire_nodest_conn = 0)
  kReschedule,  // their next packet picks a live backend (IPVS expire_nodest_conn = 1)
};
const char* downPolicyName(DownPolicy p);

struct BackendConfig {
  IpAddress address;
  uint16_t port = 0;  // DR: always the service port; NAT: the port the backend listens on
  // Next-hop MAC for this backend. Unset: resolved by ARP/ND (the backend's own MAC when it is on
  // a subnet of [dataplane] addresses, the gateway's otherwise).
  std::optional<MacAddress> mac;
  uint32_t weight = 1;
  std::optional<HealthCheckConfig> health_check;  // overrides the service's
  int line = 0;       // where it was defined, for later messages; 0 when not from a file
};

struct ServiceConfig {
  std::string name;
  IpAddress vip;
  uint16_t port = 0;
  Protocol protocol = Protocol::kTcp;
  Forwarding forwarding = Forwarding::kDr;
  Scheduler scheduler = Scheduler::kMaglev;
  uint32_t table_size = kDefaultMaglevTableSize;  // Maglev lookup table size M, prime
  HealthCheckConfig health_check;                 // type kNone: backends are taken as up
  DownPolicy on_backend_down = DownPolicy::kKeep;
  std::vector<BackendConfig> backends;
  int line = 0;
};

struct TimeoutConfig {
  uint32_t tcp_s = LB_DEFAULT_TCP_TIMEOUT_S;         // idle timeout of an established TCP flow
  uint32_t tcp_fin_s = LB_DEFAULT_TCP_FIN_TIMEOUT_S;  // linger after FIN or RST
  uint32_t udp_s = LB_DEFAULT_UDP_TIMEOUT_S;          // idle timeout of a UDP flow
  // A TCP flow that has seen a SYN and no packet without SYN yet (IPVS's SYN_RECV): short, so
  // that a SYN flood's entries do not outlive their usefulness.
  uint32_t tcp_syn_s = LB_DEFAULT_TCP_SYN_TIMEOUT_S;
};

/** [flood]: what protects the flow tables from floods of new flows. */
struct FloodConfig {
  // New flows per second per worker core (per CPU on XDP) above which a new flow is forwarded
  // by its Maglev pick alone and not inserted (Katran's LRU bypass); 0 = no limit.
  uint32_t new_flow_rate_limit = 0;
};

enum class DataplaneMode : uint8_t { kDpdk, kXdp };
enum class XdpAttach : uint8_t { kAuto, kNative, kGeneric };

struct DataplaneConfig {
  DataplaneMode mode = DataplaneMode::kDpdk;
  std::vector<std::string> interfaces;  // XDP: the interfaces to attach to
  XdpAttach xdp_attach = XdpAttach::kAuto;  // auto: native where the driver has it, else generic
  uint32_t flow_table_size = 1u << 20;  // flow entries per worker core
  // Sluice's own addresses (one-port form): answered for ARP/ND, the source of health probes, the
  // gateway of NAT backends; their prefixes say which backends are on-link.
  std::vector<IpPrefix> addresses;
  // The upstream routers, at most one per family: where NAT replies go and through which
  // off-link backends are reached. Resolved by ARP/ND like a backend; gateway_mac is the static
  // alternative.
  std::vector<IpAddress> gateways;
  // DPDK: the kernel exception interface (a net_tap with the port's MAC and `addresses`) that
  // carries traffic for no service to the host's kernel and back. "" = none. Unset in the file:
  // "sluice0" when addresses are given, none otherwise.
  std::string exception_interface;
  // Take frames for any destination MAC as the port's (the NIC in promiscuous mode, and no
  // not_for_us drop): a mirror port, a bump in the wire. Off: a switch flooding unknown unicast
  // must not make two hosts forward the same frame.
  bool promiscuous = false;
  // Where NAT replies (backend -> client) are sent. When neither this nor gateway is set, each
  // port uses the source MAC of the last client packet it received for a NAT service.
  std::optional<MacAddress> gateway_mac;
  // The most memory the data plane's tables (flow tables, Maglev tables) may take, in bytes;
  // 0 = what the host has available (MemAvailable) when a configuration is applied.
  uint64_t memory_limit = 0;
};

/** The gateway of a family, if configured. */
const IpAddress* gatewayFor(const DataplaneConfig& dp, uint8_t family);
/** The first of `addresses` whose subnet holds a (an on-link peer), if any. */
const IpPrefix* onLinkPrefix(const DataplaneConfig& dp, const IpAddress& a);

struct Config {
  DataplaneConfig dataplane;
  TimeoutConfig timeouts;
  FloodConfig flood;
  std::vector<ServiceConfig> services;
};

/** A configuration that was rejected; what() reads "FILE:LINE: problem". */
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/**
 * Parse and validate a TOML configuration.
 * @param text the TOML document
 * @param source_name the name used in error messages (usually the file path)
 * @return the validated configuration
 * @throws ConfigError on a syntax error, unknown key, bad value or inconsistent services
 */
Config parseConfig(std::string_view text, std::string_view source_name);

/**
 * The largest configuration file loadConfigFile reads. Generous on purpose: 40,000 backends,
 * about the most one daemon holds, take a few MB of TOML. The cap is there so that a mistaken
 * path (a disk image, a log) is refused at once instead of being read whole into memory.
 */
inline constexpr size_t kMaxConfigFileBytes = size_t{64} << 20;

/**
 * Read and parse a file. What is not a regular file (a FIFO, a device, a directory), a file
 * larger than kMaxConfigFileBytes, and a missing or unreadable file are ConfigErrors too,
 * raised without blocking and without reading such a file.
 * @param path the file; also the source name of the messages
 * @return the validated configuration
 * @throws ConfigError
 */
Config loadConfigFile(const std::string& path);

/**
 * Check the rules that span services (duplicate VIP:port/proto, NAT reply uniqueness, ...).
 * parseConfig calls it; the control plane calls it again before applying an edit.
 * @throws ConfigError
 */
void validateConfig(const Config& config, std::string_view source_name);

/**
 * The configuration in the file format, such that parseConfig(renderConfig(c)) equals c (but for
 * the recorded line numbers). Used by `sluicectl save`.
 */
std::string renderConfig(const Config& config);

/** One [[service]] table of renderConfig, with its backends: what `reload` compares. */
std::string renderService(const ServiceConfig& service);

/** The built-in default used by `sluiced replay` with no --config: one DR and one NAT service. */
std::string_view defaultConfigText();

}  // namespace sluice
