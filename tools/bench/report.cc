#include "tools/bench/report.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <fstream>

namespace sluice::bench {

namespace {

FILE* json_out = nullptr;  // the original stdout, once startJson() ran
std::string json_bench;

}  // namespace

Spread spreadOf(const std::vector<double>& samples) {
  if (samples.empty()) {
    return {};
  }
  std::vector<double> sorted = samples;
  std::sort(sorted.begin(), sorted.end());
  return {sorted.front(), sorted[sorted.size() / 2], sorted.back()};
}

std::string cpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    const size_t colon = line.find(':');
    if (line.rfind("model name", 0) == 0 && colon != std::string::npos) {
      const size_t start = line.find_first_not_of(" \t", colon + 1);
      return start == std::string::npos ? "unknown" : line.substr(start);
    }
  }
  return "unknown";
}

void startJson(const std::string& bench) {
  json_bench = bench;
  if (json_out != nullptr) {
    return;
  }
  std::fflush(stdout);
  const int keep = dup(STDOUT_FILENO);
  if (keep < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
    return;  // stays off: the tables still go to stdout
  }
  json_out = fdopen(keep, "w");
}

bool jsonOn() { return json_out != nullptr; }

void jsonCase(const std::string& name, const std::string& unit, const std::vector<double>& samples,
              const std::string& ratio_to, double ratio, const nlohmann::json& extra) {
  if (json_out == nullptr || samples.empty()) {
    return;
  }
  const Spread spread = spreadOf(samples);
  char when[32];
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &utc);
  nlohmann::json line = {{"bench", json_bench},
                         {"case", name},
                         {"unit", unit},
                         {"runs", samples.size()},
                         {"min", spread.min},
                         {"median", spread.median},
                         {"max", spread.max},
                         {"samples", samples},
                         {"cpu", cpuModel()},
                         {"time", when}};
  if (!ratio_to.empty()) {
    line["ratio"] = ratio;
    line["ratio_to"] = ratio_to;
  }
  for (const auto& [k, v] : extra.items()) {
    line[k] = v;
  }
  std::fprintf(json_out, "%s\n", line.dump().c_str());
  std::fflush(json_out);
}

}  // namespace sluice::bench
