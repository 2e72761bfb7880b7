// What every replay shares, whichever data path ran the capture: checking the input, and the
// summary (text or JSON) of packets, drops, services, backends and flows.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/snapshot.h"
#include "common/stats.h"

namespace sluice {

/** Bad replay input (capture, output path, arguments): exit status 2. */
class ReplayInputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/** The packets of a capture cut short by its snap length (tcpdump -s N). */
struct CaptureCut {
  uint64_t packets = 0;   // captured shorter than they were on the wire
  uint32_t snaplen = 0;   // the file header's snap length
};

/**
 * Read the whole capture once; @return its packet count @throws ReplayInputError
 * @param cut where to count the packets the snap length cut, when not null
 */
uint64_t checkCapture(const std::string& path, CaptureCut* cut = nullptr);

/** A path DPDK device arguments can carry (no ',' or '='). @throws ReplayInputError */
void checkDevargPath(const std::string& what, const std::string& path);

/** Create or truncate path, refusing the input capture itself. @throws ReplayInputError */
void checkWritable(const std::string& path, const std::string& in);

/** The summary object (see docs/replay.md); flow_rows nullptr: no flow_list. */
nlohmann::json report(const Snapshot& snap, const StatsTotals& t, uint64_t capture_packets,
                      const std::vector<FlowRow>* flow_rows);

/** Print the summary as JSON or as text. */
void printReport(const nlohmann::json& j, bool as_json, const std::string& in,
                 const std::string& out);

}  // namespace sluice
