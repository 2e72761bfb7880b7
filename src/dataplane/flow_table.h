// The per-core connection table. One writer and one reader: the lcore that owns it, so there are
// no locks and no atomics. Fixed capacity, allocated once at start; buckets of 8 entries with a
// 32-bit signature per entry. Every key has two candidate buckets (two-choice hashing, as in
// DPDK's cuckoo rte_hash but without moving entries): a new flow goes to the emptier one, which
// keeps buckets from overflowing until the table is nearly full. A lookup reads the two signature
// lines and, on a match, one entry.
// Entries expire lazily (an expired entry is a miss and its slot is reused) and by an incremental
// sweep of a few buckets per poll-loop pass, which keeps the active-flow count honest.
// When both buckets are full, the entry of the two closest to expiry is evicted and counted.
#pragma once

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

enum class FlowState : uint8_t { kActive = 0, kClosing = 1 };

struct FlowEntry {
  lb_flow_key key;
  uint64_t expires_ns;
  uint32_t service_id;
  uint32_t backend_id;
  uint32_t backend_epoch;
  FlowState state;
  uint8_t pad[3];
};
static_assert(sizeof(FlowEntry) == 64, "one cache line per flow entry");

struct FlowTableStats {
  Counter inserted;
  Counter expired;  // removed by expiry (lazily or by the sweep)
  Counter evicted;  // removed before expiry because both buckets were full
  Counter active;
};

inline bool flowKeyEqual(const lb_flow_key& a, const lb_flow_key& b) noexcept {
  return std::memcmp(&a, &b, sizeof(lb_flow_key)) == 0;
}

class FlowTable {
 public:
  static constexpr uint32_t kBucketEntries = 8;

  /** @param capacity entries wanted; rounded up to a power-of-two number of buckets */
  explicit FlowTable(uint32_t capacity);
  FlowTable(const FlowTable&) = delete;
  FlowTable& operator=(const FlowTable&) = delete;

  uint32_t capacity() const { return (mask_ + 1) * kBucketEntries; }

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
          ++stats_.expired;
          removed(base + i);
          return nullptr;
        }
        return &e;
      }
    }
    return nullptr;
  }

  /**
   * A slot for a new flow (the caller fills everything but the key). Reuses a free or expired
   * slot, or evicts the entry of the bucket that expires first. Never fails.
   */
  FlowEntry& insert(const lb_flow_key& key, uint32_t hash, uint64_t now_ns) noexcept;

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
  /** First slot of the key's first bucket: from the hash's low bits. */
  uint32_t primary(uint32_t hash) const noexcept { return (hash & mask_) * kBucketEntries; }
  /**
   * First slot of the key's second bucket: from a remix of the hash, so keys that share a first
   * bucket spread over different second ones. Never the first bucket (unless there is only one).
   */
  uint32_t secondary(uint32_t hash) const noexcept {
    uint32_t h = hash * 0x9e3779b1u;
    h ^= h >> 16;
    uint32_t b = h & mask_;
    if (b == (hash & mask_)) {
      b ^= 1u & mask_;
    }
    return b * kBucketEntries;
  }

  uint32_t mask_;
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

  FlowTableStats stats_;
  BackendCounters* backend_counters_ = nullptr;
};

}  // namespace sluice
