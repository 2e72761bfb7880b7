// Maglev consistent hashing: Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016, section 3.4 ("Consistent Hashing"), Pseudocode 1 ("Populate Maglev
// hashing lookup table"), extended with integer weighted turns in the manner of Envoy's
// MaglevTable.
#include "control/maglev.h"

#include <algorithm>
#include <bit>
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
// mod M is never materialised (that would be N * M entries); each backend only remembers where
// along its own permutation it has got.
struct BuildEntry {
  uint32_t id = 0;
  uint32_t weight = 0;
  uint32_t offset = 0;  // h1(key) mod M
  uint32_t skip = 0;    // h2(key) mod (M - 1) + 1, in [1, M - 1]: coprime with the prime M
  uint32_t slot = 0;    // permutation[next], the paper's next[i] kept as the slot it points at
  uint32_t skip4 = 0;   // 4 * skip mod M: the stride of the four-wide walk
  uint32_t inverse = 0; // skip^-1 mod M, once the endgame needs it (0 = not yet computed)
  uint64_t target = 0;  // credit needed for the next turn; grows by max_weight per turn taken
};

// The turn order of the weighted build.
//
// Conceptually the build runs rounds r = 0, 1, 2, ... and in each round visits the backends in
// sorted order; a backend takes a turn in round r when r * weight >= target (it accumulates
// `weight` credit per round and spends max_weight per turn), then target += max_weight. So every
// backend takes a turn in round 0, a backend of max_weight takes one every round, and one of
// weight w one in every max_weight / w rounds on average. That is Envoy's loop (with rounds
// counted from 0), all in integers so that every host computes the same thing. A backend takes
// at most one turn per round (its target grows by max_weight >= weight per turn).
//
// Scanning every backend each round costs rounds * N = M * max_weight / mean_weight visits: M
// when the weights are equal or close, but M * N when one weight dwarfs the rest. In that case
// each backend sits in a min-heap keyed by (round of its next turn, sorted index) instead;
// popping it yields exactly the order of the scan, in O(M log N). A heap operation costs tens of
// scan visits, so the heap pays only when max_weight / mean_weight is large.
using Turn = std::pair<uint64_t, uint32_t>;
constexpr uint64_t kScanWhileWeightRatioBelow = 64;

uint64_t nextRound(const BuildEntry& e) { return (e.target + e.weight - 1) / e.weight; }

// The endgame. Pseudocode 1 walks a backend's permutation until it meets a free slot, which
// costs about M / F probes when F slots are free: the last few hundred slots cost as many
// probes as all the rest together (M ln M probes in all). With few slots free it is cheaper to
// ask, of each free slot f, where it sits in the backend's permutation, j = (f - offset) *
// skip^-1 mod M, and take the free slot of least j: every slot before the backend's current
// position is taken (the walk went past it, and claims are never undone), so that is the slot
// the walk would have stopped at. Same table, F multiplications instead of M / F probes.
constexpr uint32_t kEndgameFreeSlots = 128;

// a^-1 mod m for a prime m and 0 < a < m (extended Euclid).
uint32_t inverseMod(uint32_t a, uint32_t m) {
  int64_t r0 = m;
  int64_t r1 = a;
  int64_t t0 = 0;
  int64_t t1 = 1;
  while (r1 != 0) {
    const int64_t q = r0 / r1;
    r0 -= q * r1;
    std::swap(r0, r1);
    t0 -= q * t1;
    std::swap(t0, t1);
  }
  return static_cast<uint32_t>(t0 < 0 ? t0 + m : t0);
}

// The slots, and which are taken, as the build goes. `taken` is a bitmap (8 KiB at M = 65,537,
// so the walks stay in L1) kept apart from the table, so that the loop never depends on what
// ids look like.
class Filling {
 public:
  explicit Filling(uint32_t m) : m_(m), taken_((m + 63) / 64, 0), table_(m, LB_BACKEND_NONE) {}

  bool full() const { return filled_ == m_; }

  // One turn of backend e: it claims the first free slot of its permutation.
  void turn(BuildEntry& e) {
    const uint32_t slot = m_ - filled_ > kEndgameFreeSlots ? walk(e) : endgameSlot(e);
    taken_[slot / 64] |= uint64_t{1} << (slot % 64);
    table_[slot] = e.id;
    ++filled_;
    e.slot = slot;
  }

  std::vector<uint32_t> release() { return std::move(table_); }

 private:
  bool isTaken(uint32_t slot) const { return (taken_[slot / 64] >> (slot % 64) & 1) != 0; }

  // (slot + step) mod M without a multiply or a modulo; 64-bit so that slot + step cannot wrap
  // for M close to 2^32.
  uint32_t advance(uint32_t slot, uint32_t step) const {
    const uint64_t s = uint64_t{slot} + step;
    return static_cast<uint32_t>(s >= m_ ? s - m_ : s);
  }

  // Pseudocode 1's walk, four permutation entries at a time: they are four independent chains
  // (each steps by 4 * skip), so their loads overlap, and there is one branch per four probes,
  // which the predictor gets right while the table is mostly free or mostly full.
  uint32_t walk(const BuildEntry& e) const {
    uint32_t s[4];
    s[0] = e.slot;
    s[1] = advance(s[0], e.skip);
    s[2] = advance(s[1], e.skip);
    s[3] = advance(s[2], e.skip);
    for (;;) {
      const unsigned free_mask = static_cast<unsigned>(!isTaken(s[0])) |
                                 static_cast<unsigned>(!isTaken(s[1])) << 1 |
                                 static_cast<unsigned>(!isTaken(s[2])) << 2 |
                                 static_cast<unsigned>(!isTaken(s[3])) << 3;
      if (free_mask != 0) {
        return s[std::countr_zero(free_mask)];  // the first free one in permutation order
      }
      for (uint32_t& slot : s) {
        slot = advance(slot, e.skip4);
      }
    }
  }

  uint32_t endgameSlot(BuildEntry& e) {
    if (free_.empty()) {
      for (uint32_t s = 0; s < m_; ++s) {
        if (!isTaken(s)) {
          free_.push_back(s);
        }
      }
    }
    if (e.inverse == 0) {
      e.inverse = inverseMod(e.skip, m_);
    }
    size_t best = 0;
    uint64_t best_j = UINT64_MAX;
    for (size_t k = 0; k < free_.size(); ++k) {
      const uint64_t d = free_[k] >= e.offset ? free_[k] - e.offset : uint64_t{free_[k]} + m_ - e.offset;
      const uint64_t j = d * e.inverse % m_;
      if (j < best_j) {
        best_j = j;
        best = k;
      }
    }
    const uint32_t slot = free_[best];
    free_[best] = free_.back();
    free_.pop_back();
    return slot;
  }

  uint32_t m_;
  uint32_t filled_ = 0;
  std::vector<uint64_t> taken_;
  std::vector<uint32_t> table_;
  std::vector<uint32_t> free_;  // the free slots, once the endgame starts
};

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

  if (sorted.empty()) {
    return std::vector<uint32_t>(size, LB_BACKEND_NONE);
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
    e.skip4 = static_cast<uint32_t>(uint64_t{e.skip} * 4 % m);
    e.slot = e.offset;
    max_weight = std::max(max_weight, e.weight);
  }

  // Pseudocode 1: the backend whose turn it is claims the first slot of its permutation that is
  // still free. Since skip is coprime with the prime M, every permutation visits all M slots, so
  // a turn always finds a free slot while the table has one.
  Filling filling(m);
  uint64_t weight_sum = 0;
  for (const BuildEntry& e : entries) {
    weight_sum += e.weight;
  }
  if (uint64_t{max_weight} * entries.size() < kScanWhileWeightRatioBelow * weight_sum) {
    for (uint64_t round = 0; !filling.full(); ++round) {
      for (BuildEntry& e : entries) {
        if (round * e.weight >= e.target) {
          filling.turn(e);
          if (filling.full()) {
            break;
          }
          e.target += max_weight;
        }
      }
    }
  } else {
    std::priority_queue<Turn, std::vector<Turn>, std::greater<>> turns;
    for (uint32_t i = 0; i < entries.size(); ++i) {
      turns.emplace(nextRound(entries[i]), i);
    }
    while (!filling.full()) {
      const uint32_t i = turns.top().second;
      turns.pop();
      BuildEntry& e = entries[i];
      filling.turn(e);
      e.target += max_weight;
      turns.emplace(nextRound(e), i);
    }
  }
  return filling.release();
}

}  // namespace sluice
