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
  const uint32_t buckets =
      std::bit_ceil(std::max<uint32_t>(1, (capacity + kBucketEntries - 1) / kBucketEntries));
  mask_ = buckets - 1;
  const size_t n = size_t{buckets} * kBucketEntries;
  sigs_ = {static_cast<uint32_t*>(allocTable(n * sizeof(uint32_t))), HugeFree{n * sizeof(uint32_t)}};
  entries_ = {static_cast<FlowEntry*>(allocTable(n * sizeof(FlowEntry))), HugeFree{n * sizeof(FlowEntry)}};
}

FlowEntry& FlowTable::insert(const lb_flow_key& key, uint32_t hash, uint64_t now_ns) noexcept {
  const uint32_t base = (hash & mask_) * kBucketEntries;
  uint32_t victim = kBucketEntries;
  uint64_t victim_expiry = UINT64_MAX;
  for (uint32_t i = 0; i < kBucketEntries; ++i) {
    if (sigs_[base + i] == 0) {
      victim = i;
      break;
    }
    const FlowEntry& e = entries_[base + i];
    if (e.expires_ns <= now_ns) {
      ++stats_.expired;
      --stats_.active;
      sigs_[base + i] = 0;
      victim = i;
      break;
    }
    if (e.expires_ns < victim_expiry) {
      victim_expiry = e.expires_ns;
      victim = i;
    }
  }
  if (sigs_[base + victim] != 0) {
    ++stats_.evicted;
    --stats_.active;
  }
  sigs_[base + victim] = signature(hash);
  ++stats_.inserted;
  ++stats_.active;
  FlowEntry& e = entries_[base + victim];
  e.key = key;
  return e;
}

void FlowTable::sweep(uint32_t buckets, uint64_t now_ns) noexcept {
  for (uint32_t b = 0; b < buckets; ++b) {
    const uint32_t base = sweep_cursor_ * kBucketEntries;
    for (uint32_t i = 0; i < kBucketEntries; ++i) {
      if (sigs_[base + i] != 0 && entries_[base + i].expires_ns <= now_ns) {
        sigs_[base + i] = 0;
        ++stats_.expired;
        --stats_.active;
      }
    }
    sweep_cursor_ = (sweep_cursor_ + 1) & mask_;
  }
}

void FlowTable::clear() noexcept {
  std::fill_n(sigs_.get(), capacity(), 0u);
  stats_.active = 0;
}

}  // namespace sluice
