#include "replay/replay.h"

#include <fmt/format.h>

#include <cstdio>

#include "control/config.h"
#include "replay/dpdk_replay.h"
#include "replay/report.h"
#include "sluice_config.h"
#ifdef SLUICE_HAS_XDP
#include "replay/xdp_replay.h"
#endif

namespace sluice {

int runReplay(const ReplayOptions& opts) {
  Config config;
  uint64_t capture_packets = 0;
  try {
    config = opts.config_path.empty() ? parseConfig(defaultConfigText(), "<built-in default>")
                                      : loadConfigFile(opts.config_path);
    if (opts.dataplane != "dpdk" && opts.dataplane != "xdp") {
      throw ReplayInputError(fmt::format("--dataplane must be dpdk or xdp, not {:?}", opts.dataplane));
    }
    if (opts.dataplane == "xdp" && opts.workers != 1) {
      throw ReplayInputError("--workers applies to the DPDK data path only");
    }
    if (opts.workers < 1 || opts.workers > kMaxReplayWorkers) {
      throw ReplayInputError(fmt::format("--workers must be between 1 and {}, not {}",
                                         kMaxReplayWorkers, opts.workers));
    }
    checkDevargPath("--in", opts.in_pcap);
    checkDevargPath("--out", opts.out_pcap);
    CaptureCut cut;
    capture_packets = checkCapture(opts.in_pcap, &cut);
    checkWritable(opts.out_pcap, opts.in_pcap);
    if (cut.packets != 0) {
      // What the data path sees of such a packet is its first snaplen bytes: it is dropped as
      // truncated or bad_ip_length, and nothing else would say why.
      std::fprintf(stderr,
                   "sluiced replay: warning: %llu of %llu packets of %s were cut to the capture's "
                   "snap length (%u bytes) and count as truncated or bad_ip_length drops; "
                   "capture whole packets (tcpdump -s 0) to replay them\n",
                   static_cast<unsigned long long>(cut.packets),
                   static_cast<unsigned long long>(capture_packets), opts.in_pcap.c_str(),
                   cut.snaplen);
    }
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "sluiced replay: bad configuration: %s\n", e.what());
    return 2;
  } catch (const ReplayInputError& e) {
    std::fprintf(stderr, "sluiced replay: %s\n", e.what());
    return 2;
  }

  if (opts.dataplane == "xdp") {
#ifdef SLUICE_HAS_XDP
    return runXdpReplay(opts, config, capture_packets);
#else
    std::fprintf(stderr, "sluiced replay: this sluiced was built without the XDP data path\n");
    return 2;
#endif
  }
  return runDpdkReplay(opts, config, capture_packets);
}

}  // namespace sluice
