// sluice-bench --maglev: what the control plane's table building costs as the work grows.
#pragma once

#include <cstdint>

namespace sluice {

struct MaglevBenchOptions {
  uint32_t runs = 20;          // timed builds per case
  uint32_t services = 1000;    // services of the start-up case
  uint32_t table_size = 65537;  // M
};

/** @return exit status: 0 when every build gave a full table */
int runMaglevBench(const MaglevBenchOptions& opts);

}  // namespace sluice
