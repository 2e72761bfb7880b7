// `sluiced run`: the long-lived daemon. Workers on every lcore but the first poll every port;
// the first lcore serves the control socket and signals (SIGINT/SIGTERM stop, SIGHUP reloads).
#pragma once

#include <string>
#include <vector>

#include "control/control_socket.h"

namespace sluice {

struct RunOptions {
  std::string config_path;
  std::string socket_path = kDefaultControlSocket;
  std::vector<std::string> eal_args;  // passed to rte_eal_init (ports, lcores, memory)
  std::string dataplane;               // "dpdk" or "xdp" to override [dataplane] mode
  std::vector<std::string> interfaces; // XDP: override [dataplane] interfaces
};

/** Run until SIGINT/SIGTERM. @return exit status: 0 clean stop, 2 bad config, 1 start failure */
int runDaemon(const RunOptions& opts);

}  // namespace sluice
