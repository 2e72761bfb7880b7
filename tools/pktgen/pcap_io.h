// Reading and writing classic pcap files (Ethernet link type) through libpcap.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tools/pktgen/packet_builder.h"

namespace pktgen {

struct PcapRecord {
  uint64_t ts_us = 0;  // capture time in microseconds since the epoch
  Bytes data;
};

/** Write records to path (overwriting it). Throws std::runtime_error on failure. */
void writePcap(const std::string& path, const std::vector<PcapRecord>& records);

/** Read every record of path. Throws std::runtime_error on a missing or corrupt file. */
std::vector<PcapRecord> readPcap(const std::string& path);

}  // namespace pktgen
