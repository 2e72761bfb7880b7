// The memory budget: what the data plane's tables for a configuration take, checked before they
// are built. A configuration whose tables do not fit is refused with the sizes named, rather than
// allocated until the host runs out of memory or the daemon dies of std::bad_alloc.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "control/config.h"

namespace sluice {

/** The flow tables of a running data plane: allocated once at start, for its whole life. */
struct FlowTableMemory {
  uint64_t bytes = 0;
  std::string how;  // "2 workers x 1048576 entries x 68 B"
};

/** Bytes of every service's Maglev table (4 per slot), as one snapshot holds them. */
uint64_t maglevTableBytes(const Config& config);

/** MemAvailable of /proc/meminfo, in bytes; nullopt when it cannot be read. */
std::optional<uint64_t> availableMemory();

/** "1.5 GiB", "68 B": sizes as the messages give them. */
std::string formatBytes(uint64_t bytes);

/**
 * Refuse next when its tables do not fit. With dataplane.memory_limit, everything must fit in it:
 * the flow tables, the Maglev tables in force (running_maglev: a publish holds them until the
 * swap) and next's. Without, the tables still to be allocated must fit in what the host has
 * available: at start the flow tables and next's Maglev tables, later next's Maglev tables.
 * @param flows the flow tables (at start: those about to be allocated)
 * @param running_maglev maglevTableBytes of the configuration in force (0 at start)
 * @param at_start whether the flow tables are still to be allocated
 * @throws ConfigError naming what takes the memory and the budget
 */
void checkMemoryBudget(const Config& next, const FlowTableMemory& flows, uint64_t running_maglev,
                       bool at_start);

}  // namespace sluice
