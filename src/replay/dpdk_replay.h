// `sluiced replay` on the DPDK path: the capture through the real pipeline on a net_pcap port
// (no NIC, no hugepages), one queue pair per worker; with several workers the capture is split by
// flow hash, as a NIC's RSS would, and the outputs merged in transmit order.
#pragma once

#include <cstdint>

#include "control/config.h"
#include "replay/replay.h"

namespace sluice {

/** @return exit status (0 done, 2 bad input, 1 DPDK failed to start) */
int runDpdkReplay(const ReplayOptions& opts, const Config& config, uint64_t capture_packets);

}  // namespace sluice
