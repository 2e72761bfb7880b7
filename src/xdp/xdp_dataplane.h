// The XDP data path's loader and map programmer: loads bpf/xdp_lb.bpf.c through its bpftool
// skeleton, writes the same Snapshot the DPDK workers read into the BPF maps, reads the per-CPU
// counters back as StatsTotals, and runs single packets through BPF_PROG_TEST_RUN (replay).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dataplane_handle.h"
#include "common/snapshot.h"
#include "common/stats.h"

struct xdp_lb;

namespace sluice {

/** Loading, programming or running the BPF program failed; what() says which and why. */
class XdpError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/** How to attach: native (driver) XDP where the driver has it, else generic (auto); or insist. */
enum class XdpAttachMode : uint8_t { kAuto, kNative, kGeneric };

/** The XDP actions (linux/bpf.h's, which cannot be included beside libpcap's bpf.h). */
enum XdpAction : int { kXdpAborted = 0, kXdpDrop = 1, kXdpPass = 2, kXdpTx = 3 };

/**
 * Where the flow table lives. One table per CPU (as one per DPDK worker) is right when the NIC
 * keeps each flow on one CPU (RSS: a physical NIC, in native or generic mode). A virtual
 * interface has no RSS: generic XDP on a veth runs on whichever CPU sent the frame into it, so
 * one connection's packets meet several CPUs' tables, whose copies disagree once one CPU
 * re-picks (a SYN on a closed or down flow) and another still holds the old choice: the table is
 * then one for all CPUs.
 */
enum class FlowTableScope { kPerCpu, kShared };

class XdpDataplane {
 public:
  /**
   * Open and load the program (the verifier runs here).
   * @param flow_capacity entries of each flow table (each CPU's, when per CPU), rounded up as
   *        the DPDK table rounds (flowBuckets)
   * @param scope one flow table (bpf/lib/flow_table.h) per possible CPU, or one for all
   * @throws XdpError (e.g. no CAP_BPF)
   */
  explicit XdpDataplane(uint32_t flow_capacity, FlowTableScope scope = FlowTableScope::kPerCpu);

  /**
   * What the flow tables of one program take in kernel memory, allocated whole at load: one array
   * of buckets per copy, one copy per possible CPU when per CPU.
   * @param how set to the arithmetic, for messages
   */
  static uint64_t flowTableBytes(uint32_t flow_capacity, FlowTableScope scope, std::string& how);

  /** Buckets of a table of flow_capacity entries: as the DPDK table's (FlowTable::bucketsFor). */
  static uint32_t flowBuckets(uint32_t flow_capacity);

  /** The scope an interface needs: shared on a virtual one (no /sys/class/net/IF/device). */
  static FlowTableScope flowTableScopeFor(const std::string& ifname);
  FlowTableScope flowTableScope() const { return scope_; }
  ~XdpDataplane();
  XdpDataplane(const XdpDataplane&) = delete;
  XdpDataplane& operator=(const XdpDataplane&) = delete;

  /**
   * Write snap into the maps. Order keeps every intermediate state consistent for the program:
   * backends first, then each service's Maglev table (a new inner map swapped in whole), then
   * the lookup maps (services, VIP addresses, NAT replies, the host's own addresses), and last
   * the removal of what is gone.
   *
   * All or nothing: every map entry and .bss global it writes is first recorded in an undo log
   * (the key's previous value, or its absence; for a Maglev table, an fd holding the previous
   * inner map), and on any failure the log is played back in reverse before the error is
   * rethrown, so the program sees the snapshot it had before. Each entry is read (for the log)
   * and written only if it changes, and only the backend ids that were programmed and are gone
   * are cleared: a publish makes O(changed) map writes and O(removed) calls for removals.
   * @throws XdpError (the maps as they were before the call)
   */
  void apply(const Snapshot& snap);

  /**
   * Fault injection for tests: the next apply() makes n map writes (updates and deletes) and then
   * fails the next one with EIO, exactly where a failed bpf syscall would fail, and so takes the
   * real rollback path. Applies once; a negative n disarms it.
   */
  void failAfterWrites(int n) { fail_after_writes_ = n; }

  /** The source MAC of transmitted frames (the interface's, or the replay port's); the program
   * takes only frames for it and for group addresses (others: not_for_us). */
  void setPortMac(const uint8_t mac[6]);

  /** Take frames whatever their destination MAC (replay of captures taken on other hosts), as
   * PortContext::accept_any_mac does on the DPDK path. Off after load. */
  void setAcceptAnyMac(bool on);

  /**
   * Whether TCP/UDP checksums may arrive partial (Linux CHECKSUM_PARTIAL), so that the NAT
   * rewrites recognise such a field and keep it partial (bpf/lib/lb.h, lb_rewrite_l3l4). attach()
   * turns it on for generic mode and off for native mode; detach() turns it off; off after load
   * (BPF_PROG_TEST_RUN, replay). Tests turn it on to run partial-checksum frames through
   * run().
   */
  void setPartialChecksumsPossible(bool on);
  bool partialChecksumsPossible() const;

  /** Replay: the flow clock for the following packets; 0 returns to the kernel's clock. */
  void setClock(uint64_t now_ns);

  /**
   * Run one frame through the program.
   * @param out the frame as the program left it (meaningful for XDP_TX)
   * @return the XDP action
   */
  int run(std::span<const uint8_t> in, std::vector<uint8_t>& out);

  /** Per-CPU counters summed (one "worker" per CPU that saw packets) for snap's backends. */
  StatsTotals totals(const Snapshot& snap) const;

  /**
   * Every flow in the flow table(s), one row per CPU's copy (worker = the CPU; 0 in a shared
   * table), whose expiry is after live_at (the program's clock: CLOCK_MONOTONIC, or setClock()'s);
   * 0 lists every entry the table still holds, expired or not.
   */
  std::vector<FlowRow> flows(uint64_t live_at = 0) const;

  /**
   * Empty every flow table (every signature cleared; the counters stay): a replay or a test that
   * starts from no flows, as a new DPDK pipeline does. Not for a program under live traffic,
   * whose CPUs may write the buckets at the same time. @throws XdpError
   */
  void clearFlows();

  int programFd() const;

  /**
   * Attach the program to an interface and take the interface's MAC as the source MAC; in
   * generic mode partial checksums are taken as possible (setPartialChecksumsPossible).
   * @return "native" or "generic": how it was attached @throws XdpError
   */
  std::string attach(const std::string& ifname, XdpAttachMode how);
  /** Detach from the interface attach() used (also done by the destructor). */
  void detach();

 private:
  int ifindex_ = 0;
  uint32_t attach_flags_ = 0;
  xdp_lb* skel_ = nullptr;
  int ncpus_ = 1;
  FlowTableScope scope_ = FlowTableScope::kPerCpu;
  // The inner maps of `flow_sigs` and `flows`, each with its read-only mapping of flow_buckets_
  // buckets: one table per possible CPU, or when shared one, which every slot of the outer maps
  // holds.
  struct FlowTableCopy {
    int sigs_fd = -1;
    int entries_fd = -1;
    const lb_flow_sigs* sigs = nullptr;
    const lb_flow_bucket* entries = nullptr;
  };
  std::vector<FlowTableCopy> flow_tables_;
  uint32_t flow_buckets_ = 0;
  // nat_reply_ports and addr_filter as programmed: the words a publish compares with the next
  // snapshot's (BitmapUpdate in xdp_dataplane.cc).
  std::vector<uint64_t> programmed_nat_ports_;
  std::vector<uint64_t> programmed_addr_filter_;
  std::vector<uint32_t> programmed_services_;  // service ids with a table in `maglev`
  // Backend ids with a non-zero epoch in `backends`, ascending: the ones a publish must clear
  // when the snapshot no longer has them (any id below LB_MAX_BACKENDS, not only the low ones).
  std::vector<uint32_t> programmed_backends_;
  // The table each service id was last given: a snapshot that shares it (unchanged service) needs
  // no new inner map, so a publish costs O(changed services) here too.
  std::vector<MaglevSlots> programmed_tables_;
  // Frames shorter than an Ethernet header never reach an XDP program (the kernel refuses them,
  // as a NIC drops runts); replay counts them here as the DPDK path does: truncated.
  uint64_t runts_ = 0;
  int fail_after_writes_ = -1;  // failAfterWrites(): armed for the next apply() when >= 0
  /** Close the flow tables and the program (the destructor's, and a failed constructor's). */
  void release();

};

/** The XDP path behind the control plane: one loaded program per interface, all fed the same
 * snapshot. A publish rewrites the maps in the order XdpDataplane::apply() keeps consistent. */
class XdpDataplaneHandle : public DataplaneHandle {
 public:
  explicit XdpDataplaneHandle(std::vector<std::unique_ptr<XdpDataplane>> programs)
      : programs_(std::move(programs)) {}
  /**
   * Apply next to every program, in order. All or nothing: when program k fails (it rolls
   * itself back), programs 0..k-1, which took next already, are given the snapshot in force
   * again (an empty one before the first publish), and current() stays what it was.
   * @throws XdpError
   */
  void publish(SnapshotPtr next) override;
  const Snapshot* current() const override { return current_.get(); }
  StatsTotals totals(const Snapshot& snap) const override;
  size_t workers() const override { return programs_.size(); }

 private:
  std::vector<std::unique_ptr<XdpDataplane>> programs_;
  SnapshotPtr current_;
};

}  // namespace sluice
