// The Sluice configuration: what the TOML file says, validated. Loading never half-succeeds: a
// file is either returned whole and valid, or rejected with a ConfigError naming the line and the
// problem, and the caller's running configuration stays as it was.
#pragma once

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

struct BackendConfig {
  IpAddress address;
  uint16_t port = 0;  // DR: always the service port; NAT: the port the backend listens on
  MacAddress mac;     // next-hop MAC for this backend
  uint32_t weight = 1;
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
  std::vector<BackendConfig> backends;
  int line = 0;
};

struct TimeoutConfig {
  uint32_t tcp_s = LB_DEFAULT_TCP_TIMEOUT_S;         // idle timeout of an established TCP flow
  uint32_t tcp_fin_s = LB_DEFAULT_TCP_FIN_TIMEOUT_S;  // linger after FIN or RST
  uint32_t udp_s = LB_DEFAULT_UDP_TIMEOUT_S;          // idle timeout of a UDP flow
};

enum class DataplaneMode : uint8_t { kDpdk, kXdp };
enum class XdpAttach : uint8_t { kAuto, kNative, kGeneric };

struct DataplaneConfig {
  DataplaneMode mode = DataplaneMode::kDpdk;
  std::vector<std::string> interfaces;  // XDP: the interfaces to attach to
  XdpAttach xdp_attach = XdpAttach::kAuto;  // auto: native where the driver has it, else generic
  uint32_t flow_table_size = 1u << 20;  // flow entries per worker core
  // Where NAT replies (backend -> client) are sent. When unset, each port uses the source MAC of
  // the last client packet it received for a NAT service (the upstream router, in practice).
  std::optional<MacAddress> gateway_mac;
};

struct Config {
  DataplaneConfig dataplane;
  TimeoutConfig timeouts;
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

/** Read and parse a file; a missing or unreadable file is a ConfigError too. */
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

/** The built-in default used by `sluiced replay` with no --config: one DR and one NAT service. */
std::string_view defaultConfigText();

}  // namespace sluice
