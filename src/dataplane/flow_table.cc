#include "dataplane/flow_table.h"

#include <sys/mman.h>

#include <bit>
#include <new>

namespace sluice {

namespace {

// Flow tables are large and read at random: back them with transparent huge pages where the
// kernel allows it, to spare the TLB (a DPDK deployment with hugetlbfs gets the same for mbufs).
void* allocTable(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    throw std::bad_alloc();
  }
  madvise(p, bytes, MADV_HUGEPAGE);  // advisory: fine if THP is off
  return p;                          // anonymous memory comes zeroed: every slot free
}

}  // namespace

void FlowTable::HugeFree::operator()(void* p) const noexcept { munmap(p, bytes); }

FlowTable::FlowTable(uint32_t capacity) {
  buckets_ = bucketsFor(capacity);
  const size_t n = size_t{buckets_} * kBucketEntries;
  sigs_ = {static_cast<uint32_t*>(allocTable(n * sizeof(uint32_t))), HugeFree{n * sizeof(uint32_t)}};
  entries_ = {static_cast<FlowEntry*>(allocTable(n * sizeof(FlowEntry))), HugeFree{n * sizeof(FlowEntry)}};
}

FlowEntry* FlowTable::place(const lb_flow_key& key, uint32_t hash, uint64_t now_ns,
                            bool unestablished) noexcept {
  // Two-choice placement: a free (or expired) slot in the emptier of the two buckets; if both
  // are full, evict the unestablished entry of the sixteen that expires first, or for an
  // established flow the established one that does.
  const uint32_t bases[2] = {primary(hash), secondary(hash)};
  uint32_t free_slot[2] = {UINT32_MAX, UINT32_MAX};
  uint32_t used[2] = {0, 0};
  uint32_t victim = UINT32_MAX;       // established
  uint64_t victim_expiry = UINT64_MAX;
  uint32_t syn_victim = UINT32_MAX;   // unestablished
  uint64_t syn_victim_expiry = UINT64_MAX;
  for (int b = 0; b < 2; ++b) {
    for (uint32_t i = 0; i < kBucketEntries; ++i) {
      const uint32_t slot = bases[b] + i;
      if (sigs_[slot] != 0 && entries_[slot].expires_ns <= now_ns) {
        sigs_[slot] = 0;  // expired: reclaim it now
        expire(slot);
      }
      if (sigs_[slot] == 0) {
        if (free_slot[b] == UINT32_MAX) {
          free_slot[b] = slot;
        }
        continue;
      }
      ++used[b];
      const FlowEntry& e = entries_[slot];
      if (e.unestablished) {
        if (e.expires_ns < syn_victim_expiry) {
          syn_victim_expiry = e.expires_ns;
          syn_victim = slot;
        }
      } else if (e.expires_ns < victim_expiry) {
        victim_expiry = e.expires_ns;
        victim = slot;
      }
    }
  }
  uint32_t slot;
  if (free_slot[0] != UINT32_MAX && (free_slot[1] == UINT32_MAX || used[0] <= used[1])) {
    slot = free_slot[0];
  } else if (free_slot[1] != UINT32_MAX) {
    slot = free_slot[1];
  } else if (syn_victim != UINT32_MAX) {
    slot = syn_victim;
    ++stats_.evicted;
    ++stats_.syn_evicted;
    removed(slot);
  } else if (!unestablished) {
    slot = victim;
    ++stats_.evicted;
    removed(slot);
  } else {
    return nullptr;  // sixteen established flows: a SYN does not push one out
  }
  sigs_[slot] = signature(hash);
  ++stats_.inserted;
  ++stats_.active;
  FlowEntry& e = entries_[slot];
  e.key = key;
  e.unestablished = unestablished;
  return &e;
}

void FlowTable::sweep(uint32_t buckets, uint64_t now_ns) noexcept {
  for (uint32_t b = 0; b < buckets; ++b) {
    const uint32_t base = sweep_cursor_ * kBucketEntries;
    for (uint32_t i = 0; i < kBucketEntries; ++i) {
      if (sigs_[base + i] != 0 && entries_[base + i].expires_ns <= now_ns) {
        sigs_[base + i] = 0;
        expire(base + i);
      }
    }
    sweep_cursor_ = sweep_cursor_ + 1 == buckets_ ? 0 : sweep_cursor_ + 1;
  }
}

void FlowTable::clear() noexcept {
  for (uint32_t i = 0; i < capacity(); ++i) {
    if (sigs_[i] != 0) {
      sigs_[i] = 0;
      removed(i);
    }
  }
}

}  // namespace sluice
