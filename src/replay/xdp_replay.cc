#include "replay/xdp_replay.h"

#include <pcap/pcap.h>
#include <sched.h>

#include <fmt/format.h>

#include <cstdio>

#include "control/snapshot_builder.h"
#include "replay/report.h"
#include "xdp/xdp_dataplane.h"

namespace sluice {

namespace {

// The MAC DPDK's net_pcap gives the replay port: both replays transmit from it, so their
// outputs can be compared byte for byte.
constexpr uint8_t kReplayPortMac[6] = {0x02, 0x70, 0x63, 0x61, 0x70, 0x00};

}  // namespace

int runXdpReplay(const ReplayOptions& opts, const Config& config, uint64_t capture_packets) {
  // The flow table is per CPU: stay on one, as one DPDK worker would.
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(static_cast<unsigned>(sched_getcpu()), &one);
  sched_setaffinity(0, sizeof(one), &one);

  char err[PCAP_ERRBUF_SIZE] = {};
  pcap_t* in = pcap_open_offline_with_tstamp_precision(opts.in_pcap.c_str(),
                                                       PCAP_TSTAMP_PRECISION_NANO, err);
  if (in == nullptr) {
    std::fprintf(stderr, "sluiced replay: cannot read capture %s: %s\n", opts.in_pcap.c_str(), err);
    return 2;
  }
  pcap_t* dead = pcap_open_dead_with_tstamp_precision(DLT_EN10MB, 65535, PCAP_TSTAMP_PRECISION_NANO);
  pcap_dumper_t* out = pcap_dump_open(dead, opts.out_pcap.c_str());
  if (out == nullptr) {
    std::fprintf(stderr, "sluiced replay: cannot write %s: %s\n", opts.out_pcap.c_str(),
                 pcap_geterr(dead));
    pcap_close(dead);
    pcap_close(in);
    return 2;
  }
  int status = 0;
  try {
    XdpDataplane xdp(config.dataplane.flow_table_size);
    xdp.setPortMac(kReplayPortMac);
    xdp.setAcceptAnyMac(true);  // the capture was taken on another host, for its MAC
    IdRegistry ids;
    const SnapshotPtr snap = buildSnapshot(config, ids, 1);
    xdp.apply(*snap);
    pcap_pkthdr* hdr = nullptr;
    const u_char* data = nullptr;
    std::vector<uint8_t> frame;
    while (pcap_next_ex(in, &hdr, &data) == 1) {
      // Capture time as the flow clock (nanosecond precision file handle: tv_usec holds ns).
      xdp.setClock(static_cast<uint64_t>(hdr->ts.tv_sec) * 1'000'000'000ull +
                   static_cast<uint64_t>(hdr->ts.tv_usec));
      if (xdp.run(std::span<const uint8_t>(data, hdr->caplen), frame) == kXdpTx) {
        pcap_pkthdr oh = *hdr;
        oh.caplen = static_cast<bpf_u_int32>(frame.size());
        oh.len = static_cast<bpf_u_int32>(frame.size());
        pcap_dump(reinterpret_cast<u_char*>(out), &oh, frame.data());
      }
    }
    const StatsTotals totals = xdp.totals(*snap);
    std::vector<FlowRow> rows;
    if (opts.list_flows) {
      rows = xdp.flows();
    }
    pcap_dump_close(out);
    out = nullptr;
    printReport(report(*snap, totals, capture_packets, opts.list_flows ? &rows : nullptr),
                opts.json, opts.in_pcap, opts.out_pcap);
  } catch (const XdpError& e) {
    std::fprintf(stderr, "sluiced replay: %s\n", e.what());
    status = 1;
  }
  if (out != nullptr) {
    pcap_dump_close(out);
  }
  pcap_close(dead);
  pcap_close(in);
  return status;
}

}  // namespace sluice
