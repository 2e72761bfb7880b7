// `sluiced replay --dataplane xdp`: the capture through the XDP program, one BPF_PROG_TEST_RUN
// per packet, with the same output capture and summary as the DPDK replay.
#pragma once

#include <cstdint>

#include "control/config.h"
#include "replay/replay.h"

namespace sluice {

/** @return exit status (0 done, 1 the program could not be loaded or run) */
int runXdpReplay(const ReplayOptions& opts, const Config& config, uint64_t capture_packets);

}  // namespace sluice
