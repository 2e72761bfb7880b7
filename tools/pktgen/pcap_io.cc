#include "tools/pktgen/pcap_io.h"

#include <pcap/pcap.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace pktgen {
namespace {

constexpr int kSnapLen = 65535;

struct PcapCloser {
  void operator()(pcap_t* p) const { pcap_close(p); }
};
using PcapHandle = std::unique_ptr<pcap_t, PcapCloser>;

// "path: message", unless libpcap already named the file in its message.
std::runtime_error pcapError(const std::string& path, const char* message) {
  const std::string msg = message != nullptr ? message : "unknown libpcap error";
  if (msg.find(path) != std::string::npos) {
    return std::runtime_error(msg);
  }
  return std::runtime_error(fmt::format("{}: {}", path, msg));
}

}  // namespace

void writePcap(const std::string& path, const std::vector<PcapRecord>& records) {
  PcapHandle dead(
      pcap_open_dead_with_tstamp_precision(DLT_EN10MB, kSnapLen, PCAP_TSTAMP_PRECISION_MICRO));
  if (!dead) {
    throw std::runtime_error(fmt::format("{}: pcap_open_dead failed", path));
  }
  pcap_dumper_t* dumper = pcap_dump_open(dead.get(), path.c_str());
  if (dumper == nullptr) {
    throw pcapError(path, pcap_geterr(dead.get()));
  }
  for (const PcapRecord& r : records) {
    pcap_pkthdr hdr{};
    hdr.ts.tv_sec = static_cast<time_t>(r.ts_us / 1000000);
    hdr.ts.tv_usec = static_cast<suseconds_t>(r.ts_us % 1000000);
    hdr.len = static_cast<bpf_u_int32>(r.data.size());
    hdr.caplen = static_cast<bpf_u_int32>(std::min<size_t>(r.data.size(), kSnapLen));
    pcap_dump(reinterpret_cast<u_char*>(dumper), &hdr, r.data.data());
  }
  // pcap_dump() reports nothing; a failed write shows up as an error on flush.
  const bool failed = pcap_dump_flush(dumper) != 0 || ferror(pcap_dump_file(dumper)) != 0;
  pcap_dump_close(dumper);
  if (failed) {
    throw std::runtime_error(fmt::format("{}: error writing capture", path));
  }
}

std::vector<PcapRecord> readPcap(const std::string& path) {
  char errbuf[PCAP_ERRBUF_SIZE] = {};
  // Asking for microseconds makes libpcap scale nanosecond captures for us.
  PcapHandle p(pcap_open_offline_with_tstamp_precision(path.c_str(), PCAP_TSTAMP_PRECISION_MICRO,
                                                       errbuf));
  if (!p) {
    throw pcapError(path, errbuf);
  }
  if (const int dlt = pcap_datalink(p.get()); dlt != DLT_EN10MB) {
    const char* name = pcap_datalink_val_to_name(dlt);
    throw std::runtime_error(
        fmt::format("{}: link type {} is not Ethernet", path, name ? name : std::to_string(dlt)));
  }
  std::vector<PcapRecord> out;
  for (;;) {
    pcap_pkthdr* hdr = nullptr;
    const u_char* data = nullptr;
    const int rc = pcap_next_ex(p.get(), &hdr, &data);
    if (rc == PCAP_ERROR_BREAK) {
      break;  // end of file
    }
    if (rc != 1) {
      throw pcapError(path, pcap_geterr(p.get()));
    }
    PcapRecord r;
    r.ts_us = static_cast<uint64_t>(hdr->ts.tv_sec) * 1000000u +
              static_cast<uint64_t>(hdr->ts.tv_usec);
    r.data.assign(data, data + hdr->caplen);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace pktgen
