#include "control/memory_budget.h"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

namespace sluice {

uint64_t maglevTableBytes(const Config& config) {
  uint64_t slots = 0;
  for (const ServiceConfig& s : config.services) {
    slots += s.table_size;
  }
  return slots * sizeof(uint32_t);  // MaglevSlots: one backend id per slot
}

std::optional<uint64_t> availableMemory() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    uint64_t kib = 0;
    if (fields >> key >> kib && key == "MemAvailable:") {
      return kib * 1024;
    }
  }
  return std::nullopt;
}

std::string formatBytes(uint64_t bytes) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, kUnits[unit]);
}

void checkMemoryBudget(const Config& next, const FlowTableMemory& flows, uint64_t running_maglev,
                       bool at_start) {
  const uint64_t maglev = maglevTableBytes(next);
  uint64_t slots = 0;
  for (const ServiceConfig& s : next.services) {
    slots += s.table_size;
  }
  const std::string maglev_how =
      fmt::format("Maglev tables {} ({} service{}, {} slots in all x 4 B)", formatBytes(maglev),
                  next.services.size(), next.services.size() == 1 ? "" : "s", slots);
  const std::string flows_how = fmt::format("flow tables {} ({})", formatBytes(flows.bytes), flows.how);

  if (const uint64_t limit = next.dataplane.memory_limit; limit != 0) {
    const uint64_t need = flows.bytes + running_maglev + maglev;
    if (need > limit) {
      const std::string held =
          running_maglev == 0
              ? std::string()
              : fmt::format(", the Maglev tables in force until the swap {}",
                            formatBytes(running_maglev));
      throw ConfigError(fmt::format(
          "the tables need {} ({}, {}{}), more than dataplane.memory_limit {}: give the services "
          "smaller table_size, or fewer services, or raise memory_limit",
          formatBytes(need), maglev_how, flows_how, held, formatBytes(limit)));
    }
    return;
  }
  const std::optional<uint64_t> available = availableMemory();
  if (!available) {
    return;  // no /proc/meminfo (a container without /proc): nothing to compare with
  }
  const uint64_t need = maglev + (at_start ? flows.bytes : 0);
  if (need > *available) {
    throw ConfigError(fmt::format(
        "the tables need {} ({}{}), more than the {} this host has available (MemAvailable): "
        "give the services smaller table_size, fewer services{}, or set dataplane.memory_limit",
        formatBytes(need), maglev_how, at_start ? ", " + flows_how : std::string(),
        formatBytes(*available), at_start ? ", a smaller dataplane.flow_table_size" : ""));
  }
}

}  // namespace sluice
