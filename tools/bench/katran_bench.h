// sluice-bench --xdp --katran: Katran's XDP balancer (katran/lib/bpf/balancer.bpf.c, built from
// the user's Katran tree by tools/bench/build-katran.sh), loaded with libbpf and programmed by
// our own code, so that the bench can time it beside Sluice's program in the same run.
//
// Katran is GPL-2.0: none of its code is here. What this needs of it is the layout of its maps,
// written down in katran_bench.cc from katran/lib/bpf/balancer_{maps,structs,consts}.h, and the
// order in which its userspace (katran/lib/KatranLb.cpp) sets them up.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/net.h"

struct bpf_object;

namespace sluice {

/** One IPv4 VIP of Katran's and its reals. */
struct KatranService {
  IpAddress vip;                 // IPv4
  uint16_t port = 0;
  Protocol proto = Protocol::kUdp;
  std::vector<IpAddress> reals;  // IPv4; real ids 1..n in this order (Katran's id 0 is "none")
  MacAddress router_mac;         // ctl_array[0]: the destination MAC of every forwarded frame
};

/**
 * Katran's balancer, loaded and programmed as KatranLb::loadBpfProgs and addVip/modifyReals
 * leave it with Katran's default features: one LRU_HASH per possible CPU behind the
 * ARRAY_OF_MAPS lru_mapping, the VIP in vip_map (vip_num 0, no flags), its reals in reals,
 * its ring in ch_rings[0 .. RING_SIZE), and the default router's MAC in ctl_array[0].
 * Not copyable: it owns the object and the LRU fds.
 */
class KatranBalancer {
 public:
  /**
   * Open and load the object (the verifier runs here), then program it.
   * @param object_path balancer.bpf.o as build-katran.sh builds it
   * @param service the VIP and its reals
   * @param lru_entries entries of each CPU's LRU (Katran: KatranConfig::LruSize / forwarding cores)
   * @throws std::runtime_error when the object is not Katran's balancer with the layout and the
   *         65,537-slot ring this expects, or a load or map write fails (needs root or CAP_BPF)
   */
  KatranBalancer(const std::string& object_path, const KatranService& service,
                 uint32_t lru_entries);
  ~KatranBalancer();
  KatranBalancer(const KatranBalancer&) = delete;
  KatranBalancer& operator=(const KatranBalancer&) = delete;

  /** The XDP program (balancer_ingress). */
  int programFd() const { return prog_fd_; }

  /**
   * Whether out is in as Katran forwards it to one of the reals: IPIP (pckt_encap.h encap_v4),
   * i.e. a new Ethernet header to the router MAC from in's destination MAC, an outer IPv4 header
   * with a valid checksum, protocol 4 and a real as destination, then in's IP packet unchanged.
   */
  bool isEncapsulatedToReal(std::span<const uint8_t> in, std::span<const uint8_t> out) const;

  /** Katran's own LRU counters, summed over the CPUs (stats[MAX_VIPS + ...]). */
  struct LruCounters {
    uint64_t vip_packets = 0;  // LRU_CNTRS v1: packets to a VIP
    uint64_t misses = 0;       // LRU_CNTRS v2: of which not found in the LRU (ring lookups)
    uint64_t fallback = 0;     // FALLBACK_LRU_CNTR v1: no per-CPU LRU, the 1,000-entry fallback
  };
  LruCounters lruCounters() const;

 private:
  void program(const KatranService& service);

  bpf_object* obj_ = nullptr;
  int prog_fd_ = -1;
  std::vector<int> lru_fds_;  // one per possible CPU, index = CPU
  uint32_t max_vips_ = 0;     // MAX_VIPS of the build: the size of vip_map
  std::vector<uint32_t> reals_;  // network byte order
  std::array<uint8_t, 6> router_mac_{};
  int stats_fd_ = -1;
  int ncpus_ = 1;
};

}  // namespace sluice
