// sluice-bench --xdp: nanoseconds per packet of the XDP program through BPF_PROG_TEST_RUN.
#pragma once

#include <cstdint>
#include <string>

namespace sluice {

/**
 * @param flows distinct frames per pass
 * @param runs passes
 * @param katran_object empty, or Katran's balancer.bpf.o (tools/bench/build-katran.sh) to time
 *        in the same passes on the same frames
 * @return exit status
 */
int runXdpBench(uint32_t flows, uint32_t runs, const std::string& katran_object = {});

}  // namespace sluice
