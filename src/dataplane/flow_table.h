// The per-core connection table. One writer and one reader: the lcore that owns it, so there are
// no locks and no atomics. Fixed capacity, allocated once at start; buckets of 8 entries with a
// 32-bit signature per entry. Every key has two candidate buckets (two-choice hashing, as in
// DPDK's cuckoo rte_hash but without moving entries): a new flow goes to the emptier one, which
// keeps buckets from overflowing until the table is nearly full. A lookup reads the two signature
// lines and, on a match, one entry.
// Entries expire lazily (an expired entry is a miss and its slot is reused) and by an incremental
// sweep of a few buckets per poll-loop pass, which keeps the active-flow count honest.
//
// Unestablished entries (created by a SYN, no packet without SYN seen yet) are second-class, so
// that a SYN flood cannot push established flows out (IPVS gives them a short SYN_RECV timeout;
// Katran keeps attack traffic out of its LRU): when both buckets are full, the unestablished
// entry of the two closest to expiry is evicted first, an established one only for an
// established flow, and an unestablished flow that finds only established entries is not
// inserted at all. So 10 million spoofed SYNs churn among themselves and leave every established
// flow where it was. The XDP path's table is this one, step for step (bpf/lib/flow_table.h): a
// change of layout or policy here must be made there too, or the paths stop agreeing (xdp-flood
// compares the tables entry for entry). Evictions are counted, those of unestablished entries apart.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>

#include "common/counter.h"
#include "dataplane/backend_counters.h"
#include "common/lb_abi.h"

namespace sluice {

/**
 * Prefetch a cache line. An asm statement rather than __builtin_prefetch: GCC deletes a loop whose
 * only effect is __builtin_prefetch (it did, for the entry-prefetch stage), as DPDK's rte_prefetch0
 * also avoids by using asm volatile.
 */
inline void prefetchLine(const void* p) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %[p]" : : [p] "m"(*static_cast<const volatile char*>(p)));
#else
  __builtin_prefetch(p);
#endif
}

/** LB_FLOW_* of lb_abi.h: the same states as the XDP path's lb_flow_entry.state. */
enum class FlowState : uint8_t {
  kActive = LB_FLOW_ACTIVE,
  kClosing = LB_FLOW_CLOSING,  // FIN or RST seen: the tcp_fin linger
  kSynRecv = LB_FLOW_SYN_RECV,  // a SYN seen, no packet without SYN yet: the tcp_syn timeout
};

struct FlowEntry {
  lb_flow_key key;
  uint64_t expires_ns;
  uint32_t service_id;
  uint32_t backend_id;
  uint32_t backend_epoch;
  FlowState state;
  // Created by a SYN and no packet without SYN or RST seen since: evicted before any
  // established entry, and never evicts one (lb_flow_entry.unestablished on the XDP path).
  bool unestablished;
  uint8_t pad[2];
};
static_assert(sizeof(FlowEntry) == 64, "one cache line per flow entry");

struct FlowTableStats {
  Counter inserted;
  Counter expired;      // removed by expiry (lazily or by the sweep)
  Counter syn_expired;  // of which unestablished
  Counter evicted;      // removed before expiry because both buckets were full
  Counter syn_evicted;  // of which unestablished
  Counter active;
};

inline bool flowKeyEqual(const lb_flow_key& a, const lb_flow_key& b) noexcept {
  return std::memcmp(&a, &b, sizeof(lb_flow_key)) == 0;
}

class FlowTable {
 public:
  static constexpr uint32_t kBucketEntries = 8;

  /** @param capacity entries wanted; rounded up to whole buckets */
  explicit FlowTable(uint32_t capacity);
  FlowTable(const FlowTable&) = delete;
  FlowTable& operator=(const FlowTable&) = delete;

  uint32_t capacity() const { return buckets_ * kBucketEntries; }

  /** Buckets of a table of capacity entries: whole buckets, any number of them (at least one). */
  static uint32_t bucketsFor(uint32_t capacity) { return lb_flow_buckets_for(capacity); }

  /** What a table of capacity entries maps: signatures and entries (the memory budget). */
  static uint64_t bytesFor(uint32_t capacity) {
    const uint64_t buckets = bucketsFor(capacity);
    return buckets * kBucketEntries * (sizeof(uint32_t) + sizeof(FlowEntry));
  }

  /** Warm both candidate buckets of hash into the cache ahead of lookup(). */
  void prefetch(uint32_t hash) const noexcept {
    prefetchLine(&sigs_[primary(hash)]);
    prefetchLine(&sigs_[secondary(hash)]);
  }

  /**
   * Second prefetch stage: once the buckets' signatures are cached, start fetching the entry
   * whose signature matches, so that lookup() finds the key in cache.
   */
  void prefetchEntry(uint32_t hash) const noexcept {
    const uint32_t sig = signature(hash);
    for (const uint32_t base : {primary(hash), secondary(hash)}) {
      for (uint32_t i = 0; i < kBucketEntries; ++i) {
        if (sigs_[base + i] == sig) {
          prefetchLine(&entries_[base + i]);
          return;
        }
      }
    }
  }

  /** The live entry for key, or nullptr. An expired entry is removed and reported as a miss. */
  FlowEntry* lookup(const lb_flow_key& key, uint32_t hash, uint64_t now_ns) noexcept {
    const uint32_t sig = signature(hash);
    for (const uint32_t base : {primary(hash), secondary(hash)}) {
      for (uint32_t i = 0; i < kBucketEntries; ++i) {
        if (sigs_[base + i] != sig) {
          continue;
        }
        FlowEntry& e = entries_[base + i];
        if (!flowKeyEqual(e.key, key)) {
          continue;
        }
        if (e.expires_ns <= now_ns) {
          sigs_[base + i] = 0;
          expire(base + i);
          return nullptr;
        }
        return &e;
      }
    }
    return nullptr;
  }

  /**
   * A slot for a new established flow (the caller fills everything but the key). Reuses a free
   * or expired slot, else evicts the unestablished entry of the two buckets that expires first,
   * else the established one that does. Never fails.
   */
  FlowEntry& insert(const lb_flow_key& key, uint32_t hash, uint64_t now_ns) noexcept {
    return *place(key, hash, now_ns, false);
  }

  /**
   * A slot for a new unestablished flow (a SYN), marked so: a free or expired slot, else the
   * unestablished entry of the two buckets that expires first. nullptr when both buckets hold
   * established flows only: a SYN never evicts one (the caller forwards it without an entry).
   */
  FlowEntry* insertUnestablished(const lb_flow_key& key, uint32_t hash, uint64_t now_ns) noexcept {
    return place(key, hash, now_ns, true);
  }

  /** Expire the entries of the next `buckets` buckets (round robin). */
  void sweep(uint32_t buckets, uint64_t now_ns) noexcept;

  /** Remove every entry (used by tests and when a worker restarts its table). */
  void clear() noexcept;

  const FlowTableStats& stats() const { return stats_; }

  /**
   * Per-backend counters (indexed by backend id, at least as many as ids): whenever the table
   * removes an entry it decrements the active count of the entry's backend, if the counters are
   * still those of the entry's backend epoch. The owner increments it when it pins an entry.
   */
  void setBackendCounters(BackendCounters* by_backend) { backend_counters_ = by_backend; }

  /** The entry no longer counts as an active flow of its backend (removed or re-pinned). */
  void unpin(const FlowEntry& e) noexcept {
    if (backend_counters_ != nullptr) {
      BackendCounters& c = backend_counters_[e.backend_id];
      if (c.epoch.get() == e.backend_epoch) {
        --c.active;
      }
    }
  }

  /** Visit every live entry (control plane / tests; not for the hot path). */
  template <typename F>
  void forEach(uint64_t now_ns, F&& f) const {
    for (uint32_t i = 0; i < capacity(); ++i) {
      if (sigs_[i] != 0 && entries_[i].expires_ns > now_ns) {
        f(entries_[i]);
      }
    }
  }

 private:
  static uint32_t signature(uint32_t hash) noexcept { return hash | 1u; }  // 0 marks a free slot
  /**
   * hash mapped onto [0, buckets) by its high bits (multiply-shift, Lemire 2019, "Fast Random
   * Integer Generation in an Interval"): no modulo on the hot path, and the table can be sized
   * to what is asked (10 million entries take 680 MB, where a power of two would take 1.1 GB).
   */
  uint32_t bucketOf(uint32_t hash) const noexcept {
    return static_cast<uint32_t>((uint64_t{hash} * buckets_) >> 32);
  }
  /** First slot of the key's first bucket. */
  uint32_t primary(uint32_t hash) const noexcept { return bucketOf(hash) * kBucketEntries; }
  /**
   * First slot of the key's second bucket: from a remix of the hash, so keys that share a first
   * bucket spread over different second ones. Never the first bucket (unless there is only one).
   */
  uint32_t secondary(uint32_t hash) const noexcept {
    uint32_t h = hash * 0x9e3779b1u;
    h ^= h >> 16;
    uint32_t b = bucketOf(h);
    if (b == bucketOf(hash)) {
      b = b + 1 == buckets_ ? 0 : b + 1;
    }
    return b * kBucketEntries;
  }

  uint32_t buckets_;
  uint32_t sweep_cursor_ = 0;
  struct HugeFree {
    size_t bytes;
    void operator()(void* p) const noexcept;
  };
  std::unique_ptr<uint32_t[], HugeFree> sigs_;
  std::unique_ptr<FlowEntry[], HugeFree> entries_;
  /** Account for the removal of the entry in slot (the caller clears its signature). */
  void removed(uint32_t slot) noexcept {
    --stats_.active;
    unpin(entries_[slot]);
  }
  /** The entry in slot expired (the caller clears its signature). */
  void expire(uint32_t slot) noexcept {
    ++stats_.expired;
    if (entries_[slot].unestablished) {
      ++stats_.syn_expired;
    }
    removed(slot);
  }
  FlowEntry* place(const lb_flow_key& key, uint32_t hash, uint64_t now_ns,
                   bool unestablished) noexcept;

  FlowTableStats stats_;
  BackendCounters* backend_counters_ = nullptr;
};

}  // namespace sluice
