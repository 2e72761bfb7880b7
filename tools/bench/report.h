// sluice-bench --json: one JSON object per case and line on stdout, so that runs can be kept and
// compared (jq, a spreadsheet); the human tables then go to stderr. Every line names the
// benchmark, the case, the machine and the time, beside the figures of the runs.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace sluice::bench {

/** Min, median (the middle of the sorted runs) and max of one case's runs. */
struct Spread {
  double min = 0;
  double median = 0;
  double max = 0;
};
Spread spreadOf(const std::vector<double>& samples);

/** The CPU's model as lscpu prints it ("Model name"; /proc/cpuinfo "model name"). */
std::string cpuModel();

/**
 * Turn on JSON output for the rest of the process: file descriptor 1 is kept for the JSON lines
 * and pointed at stderr, so that everything else printed goes there.
 * @param bench the benchmark's name in every line ("dpdk", "publish", "xdp", "flood")
 */
void startJson(const std::string& bench);
bool jsonOn();

/**
 * One case's line: {"bench", "case", "unit", "runs", "min", "median", "max", "samples", "cpu",
 * "time"} and, when ratio_to is given, "ratio" (this median over ratio_to's, in the same run) and
 * "ratio_to"; extra's members are added. Nothing when JSON output is off.
 * @param samples one figure per run, in unit; the median is the middle one of the sorted runs
 */
void jsonCase(const std::string& name, const std::string& unit, const std::vector<double>& samples,
              const std::string& ratio_to = {}, double ratio = 0,
              const nlohmann::json& extra = nlohmann::json::object());

}  // namespace sluice::bench
