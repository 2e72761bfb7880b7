// `sluiced replay`: run a capture through a real data path (the DPDK pipeline on a net_pcap
// virtual device, no NIC or hugepages; or the XDP program through BPF_PROG_TEST_RUN), write what
// it transmits to a capture, and report where packets and flows went. An application: it wires
// the control plane's config and snapshot builder to a data path, as sluiced run does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sluice {

inline constexpr uint32_t kMaxReplayWorkers = 16;  // net_pcap's queue limit

struct ReplayOptions {
  std::string config_path;  // empty: the built-in default configuration
  std::string in_pcap;
  std::string out_pcap;
  bool json = false;
  bool list_flows = false;          // also list every flow and the backend it went to
  std::string dataplane = "dpdk";   // dpdk | xdp
  uint32_t workers = 1;             // DPDK worker lcores; more than one splits the capture by flow
                                    // hash, as RSS would
  std::vector<std::string> eal_args;  // extra EAL arguments
};

/**
 * Run the replay and print its summary on stdout.
 * @return the process exit status: 0 done, 2 bad input (config, capture, arguments),
 *         1 DPDK failed to start
 */
int runReplay(const ReplayOptions& opts);

}  // namespace sluice
