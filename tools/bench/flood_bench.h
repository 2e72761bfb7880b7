// sluice-bench --flood: a SYN flood against established flows on both data paths.
#pragma once

#include <cstdint>

namespace sluice {

struct FloodBenchOptions {
  uint32_t table = 65536;      // flow table entries ([dataplane] flow_table_size)
  uint32_t established = 1000;  // established flows before the flood
  uint32_t factor = 10;        // the flood sends factor * table SYNs
  uint32_t runs = 3;
  uint32_t rate_limit = 125000;  // flood.new_flow_rate_limit of the guarded case
  uint32_t flood_pps = 1000000;  // the flood's packet clock: SYNs per second (guarded case)
};

/** @return exit status: 0 when every established flow kept its entry on every path measured */
int runFloodBench(const FloodBenchOptions& opts);

}  // namespace sluice
