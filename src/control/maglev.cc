// Maglev consistent hashing: Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016, section 3.4 ("Consistent Hashing"), Pseudocode 1 ("Populate Maglev
// hashing lookup table"), extended with integer weighted turns in the manner of Envoy's
// MaglevTable.
#include "control/maglev.h"

#include <algorithm>
#include <functional>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "common/lb_abi.h"

namespace sluice {
namespace {

// ---------------------------------------------------------------------------------------------
// The permutation hash. DO NOT CHANGE any of the constants or the algorithm below.
//
// Every host behind the same ECMP group builds its table independently and must arrive at
// exactly the same table, or a flow that ECMP moves from one host to another (host added,
// removed or rehashed) lands on a different backend and is reset. Hosts running different
// Sluice versions must agree too, so the hash is part of the on-the-wire contract: it is fixed,
// unseeded at run time, and independent of the platform (it is not std::hash, whose results
// are implementation-defined). Changing it reshuffles every service on upgrade.
//
// hash64(key, seed) = fmix64(FNV-1a-64 over the key bytes, starting from offset_basis ^ seed)
//  - FNV-1a 64-bit: offset basis 0xcbf29ce484222325, prime 0x100000001b3 (Fowler/Noll/Vo).
//  - fmix64: the 64-bit finalizer of MurmurHash3 (Appleby), which fixes FNV's weak avalanche
//    in the high bits, so that "mod M" sees well-mixed bits.
// h1 (offset) uses seed 0; h2 (skip) uses seed 0x9e3779b97f4a7c15 (2^64 / golden ratio).
// ---------------------------------------------------------------------------------------------
constexpr uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;
constexpr uint64_t kOffsetSeed = 0;
constexpr uint64_t kSkipSeed = 0x9e3779b97f4a7c15ull;

constexpr uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  k ^= k >> 33;
  return k;
}

constexpr uint64_t hash64(std::string_view key, uint64_t seed) {
  uint64_t h = kFnvOffsetBasis ^ seed;
  for (const char c : key) {
    h ^= static_cast<uint8_t>(c);
    h *= kFnvPrime;
  }
  return fmix64(h);
}

// Pin the hash: if one of these fails, the function changed and every deployed table with it.
static_assert(hash64("", kOffsetSeed) == fmix64(kFnvOffsetBasis));
static_assert(hash64("a", kOffsetSeed) == fmix64(0xaf63dc4c8601ec8cull));  // FNV-1a-64("a")

// One backend while the table is being built. The paper's permutation[i][j] = (offset + j * skip)
// mod M is never materialised (that would be N * M entries); each backend only remembers how far
// along its own permutation it has got.
struct BuildEntry {
  uint32_t id = 0;
  uint32_t weight = 0;
  uint32_t offset = 0;  // h1(key) mod M
  uint32_t skip = 0;    // h2(key) mod (M - 1) + 1, in [1, M - 1]: coprime with the prime M
  uint32_t next = 0;    // the paper's next[i]: index j of the next permutation entry to try
  uint32_t slot = 0;    // permutation[next] = (offset + next * skip) mod M, kept incrementally
  uint64_t target = 0;  // credit needed for the next turn; grows by max_weight per turn taken
};

// The turn order of the weighted build, as a min-heap key: (round, index in sorted order).
//
// Conceptually the build runs rounds r = 0, 1, 2, ... and in each round visits the backends in
// sorted order; a backend takes a turn in round r when r * weight >= target (it accumulates
// `weight` credit per round and spends max_weight per turn), then target += max_weight. So every
// backend takes a turn in round 0, a backend of max_weight takes one every round, and one of
// weight w one in every max_weight / w rounds on average. That is Envoy's loop (with rounds
// counted from 0), all in integers so that every host computes the same thing.
//
// Scanning every backend each round would cost O(rounds * N), i.e. O(M * N) when the weights are
// very uneven; instead each backend sits in a heap keyed by the round of its next turn,
// ceil(target / weight), with its sorted index as tie breaker. Popping the heap yields exactly
// the order of the round-by-round scan, in O(M log N).
using Turn = std::pair<uint64_t, uint32_t>;

uint64_t nextRound(const BuildEntry& e) { return (e.target + e.weight - 1) / e.weight; }

}  // namespace

bool isPrime(uint32_t n) {
  if (n < 2) {
    return false;
  }
  if (n % 2 == 0) {
    return n == 2;
  }
  for (uint64_t d = 3; d * d <= n; d += 2) {
    if (n % d == 0) {
      return false;
    }
  }
  return true;
}

std::vector<uint32_t> buildMaglevTable(std::span<const MaglevBackend> backends, uint32_t size) {
  if (size < 1 || !isPrime(size)) {
    throw std::invalid_argument("Maglev table size " + std::to_string(size) + " is not prime");
  }

  // Sort first so that the result does not depend on input order. Keys should be unique; if two
  // backends share one (a caller error) they are still told apart by id, and the weight makes
  // the order total, so even then the table is a function of the set of backends alone.
  std::vector<const MaglevBackend*> sorted;
  sorted.reserve(backends.size());
  for (const MaglevBackend& b : backends) {
    if (b.weight == 0) {
      continue;  // drained: takes no slot
    }
    if (b.id == LB_BACKEND_NONE) {
      throw std::invalid_argument("Maglev backend '" + b.key + "' has the reserved id 0");
    }
    sorted.push_back(&b);
  }
  std::sort(sorted.begin(), sorted.end(), [](const MaglevBackend* a, const MaglevBackend* b) {
    if (a->key != b->key) {
      return a->key < b->key;
    }
    if (a->id != b->id) {
      return a->id < b->id;
    }
    return a->weight < b->weight;
  });

  std::vector<uint32_t> table(size, LB_BACKEND_NONE);
  if (sorted.empty()) {
    return table;
  }
  if (sorted.size() > size) {
    throw std::invalid_argument("Maglev table size " + std::to_string(size) + " is smaller than " +
                                std::to_string(sorted.size()) + " weighted backends");
  }

  // Section 3.4: offset = h1(name) mod M, skip = h2(name) mod (M - 1) + 1. For M = 2 this gives
  // skip = 1; for M = 1 (not prime, rejected above) it would divide by zero.
  const uint32_t m = size;
  std::vector<BuildEntry> entries(sorted.size());
  uint32_t max_weight = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    BuildEntry& e = entries[i];
    e.id = sorted[i]->id;
    e.weight = sorted[i]->weight;
    e.offset = static_cast<uint32_t>(hash64(sorted[i]->key, kOffsetSeed) % m);
    e.skip = m > 1 ? static_cast<uint32_t>(hash64(sorted[i]->key, kSkipSeed) % (m - 1)) + 1 : 1;
    e.slot = e.offset;
    max_weight = std::max(max_weight, e.weight);
  }

  std::priority_queue<Turn, std::vector<Turn>, std::greater<>> turns;
  for (uint32_t i = 0; i < entries.size(); ++i) {
    turns.emplace(nextRound(entries[i]), i);
  }

  // Pseudocode 1: the backend whose turn it is claims the first slot of its permutation that is
  // still free. Since skip is coprime with the prime M, every permutation visits all M slots, so
  // the walk always ends while the table has a free slot. `claimed` is separate from `table`
  // so that the loop never depends on what ids look like.
  std::vector<uint8_t> claimed(m, 0);
  uint32_t filled = 0;
  while (filled < m) {
    const uint32_t i = turns.top().second;
    turns.pop();
    BuildEntry& e = entries[i];
    while (claimed[e.slot] != 0) {
      ++e.next;
      // (offset + next * skip) mod M without a multiply or a modulo; 64-bit so that
      // slot + skip cannot wrap for M close to 2^32.
      uint64_t s = uint64_t{e.slot} + e.skip;
      if (s >= m) {
        s -= m;
      }
      e.slot = static_cast<uint32_t>(s);
    }
    claimed[e.slot] = 1;
    table[e.slot] = e.id;
    ++filled;
    e.target += max_weight;
    turns.emplace(nextRound(e), i);
  }
  return table;
}

}  // namespace sluice
