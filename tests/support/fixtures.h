// Fixtures shared by the test suites: address literals, and the one three-service configuration
// every suite starts from (the built-in default of `sluiced replay`: web DR/TCP/IPv4, dns
// NAT/UDP/IPv4, web6 NAT/TCP/IPv6), edited per suite as a Config and written out with
// renderConfig, so that no suite carries its own copy of the services.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/net.h"
#include "control/config.h"

namespace testsupport {

/** An address literal of a test; @throws std::invalid_argument when it does not parse */
sluice::IpAddress ip(std::string_view text);
/** A MAC literal of a test; @throws std::invalid_argument when it does not parse */
sluice::MacAddress mac(std::string_view text);

/**
 * The MAC of the n-th net_pcap port a process creates: 02:70:63:61:70:<n>, "locally administered"
 * then "pcap" (DPDK drivers/net/pcap/pcap_ethdev.c, eth_from_pcaps_common). `sluiced run` on
 * `--vdev net_pcap0,...` takes frames for it (and broadcast and 33:33:*, docs/config.md "Frames
 * for other hosts") and sends from it, so a capture fed to `sluiced run` is addressed to it.
 */
sluice::MacAddress pcapPortMac(uint8_t n = 0);

/** The built-in default configuration, parsed (sluice::defaultConfigText()). */
sluice::Config threeServices();

/** The service of c named name; @throws std::invalid_argument when there is none */
sluice::ServiceConfig& service(sluice::Config& c, std::string_view name);

/** A backend with a configured MAC; @throws std::invalid_argument on a bad literal */
sluice::BackendConfig makeBackend(std::string_view addr, uint16_t port, std::string_view mac,
                                  uint32_t weight = 1);
/** A service of the given backends, with the defaults of everything else */
sluice::ServiceConfig makeService(std::string_view name, std::string_view vip, uint16_t port,
                                  sluice::Protocol proto, sluice::Forwarding fwd,
                                  std::vector<sluice::BackendConfig> backends);

/** c as a configuration file (sluice::renderConfig). */
std::string configText(const sluice::Config& c);

}  // namespace testsupport
