// sluice-bench --xdp: nanoseconds per packet of the XDP program through BPF_PROG_TEST_RUN.
#pragma once

#include <cstdint>

namespace sluice {

/** @return exit status */
int runXdpBench(uint32_t flows, uint32_t runs);

}  // namespace sluice
