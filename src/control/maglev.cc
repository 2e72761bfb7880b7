// Maglev consistent hashing: Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
// Balancer", NSDI 2016, section 3.4 ("Consistent Hashing"), Pseudocode 1 ("Populate Maglev
// hashing lookup table"), extended with integer weighted turns in the manner of Envoy's
// MaglevTable.
#include "control/maglev.h"

#include <algorithm>
#include <cstddef>
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
  uint32_t slot = 0;    // permutation[next]: the paper's next[i] kept as the slot it points at,
                        // one past the slot the backend claimed last
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

// While more than this share of the slots is free (in eighths), a turn first probes its
// backend's next slot alone, which is then usually free: one probe instead of four.
constexpr uint64_t kSingleProbeWhileFreeEighths = 6;

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

// x mod m for any 64-bit x without a division (Barrett reduction): q = floor(x * floor(2^64 / m)
// / 2^64) falls at most 2 short of floor(x / m), so x - q * m < 3m needs at most two subtractions.
class Modulus {
 public:
  explicit Modulus(uint32_t m) : m_(m), magic_(UINT64_MAX / m) {}

  uint32_t reduce(uint64_t x) const {
    const auto q = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * magic_) >> 64);
    uint64_t r = x - q * m_;
    r = r >= m_ ? r - m_ : r;
    r = r >= m_ ? r - m_ : r;
    return static_cast<uint32_t>(r);
  }

 private:
  uint64_t m_;
  uint64_t magic_;
};

// The slots as the build goes. A slot holds 0 while it is free and kTaken | i once the backend of
// sorted index i has claimed it, so the table is also the map of taken slots and a walk tests
// four slots with three ANDs. Slot is the narrowest type with room for the tag bit and the index
// (uint8_t up to 128 backends, uint16_t up to 32,768): 64 or 128 KiB at M = 65,537 instead of
// 256 KiB for ids plus a map. The ids are written once the table is full.
template <typename Slot>
class Filling {
 public:
  static constexpr Slot kTaken = static_cast<Slot>(Slot{1} << (8 * sizeof(Slot) - 1));
  static constexpr size_t kMaxEntries = kTaken;

  Filling(std::span<BuildEntry> entries, uint32_t m)
      : entries_(entries),
        m_(m),
        free_count_(m),
        // The endgame's list of free slots must see every claim, so single probes stop first.
        single_probe_above_(std::max(
            static_cast<uint32_t>(uint64_t{m} * kSingleProbeWhileFreeEighths / 8),
            kEndgameFreeSlots)),
        modulus_(m),
        table_(m, 0),
        end_(table_.data() + m) {}

  uint32_t freeCount() const { return free_count_; }

  // The turns of the entries due[0], due[1], ... in that order, count <= freeCount() of them:
  // each claims the first free slot of its permutation. Each stretch of turns runs in a loop of
  // its own kind, so that no turn tests which kind it is.
  void turns(const uint32_t* due, uint32_t count, uint64_t max_weight) {
    while (count > 0) {
      uint32_t run;
      if (free_count_ > single_probe_above_) {
        run = std::min(count, free_count_ - single_probe_above_);
        runTurns(due, run, max_weight, [this](const BuildEntry& e) {
          return end_[int64_t{e.slot} - m_] == 0 ? e.slot : walk(e);
        });
      } else if (free_count_ > kEndgameFreeSlots) {
        run = std::min(count, free_count_ - kEndgameFreeSlots);
        runTurns(due, run, max_weight, [this](const BuildEntry& e) { return walk(e); });
      } else {
        run = count;
        runTurns(due, run, max_weight, [this](BuildEntry& e) { return endgameSlot(e); });
      }
      due += run;
      count -= run;
    }
  }

  std::vector<uint32_t> release() const {
    std::vector<uint32_t> ids(entries_.size());
    for (size_t i = 0; i < entries_.size(); ++i) {
      ids[i] = entries_[i].id;
    }
    std::vector<uint32_t> out(m_);
    for (uint32_t s = 0; s < m_; ++s) {
      out[s] = ids[static_cast<Slot>(table_[s] & ~kTaken)];
    }
    return out;
  }

 private:
  template <typename Find>
  void runTurns(const uint32_t* due, uint32_t count, uint64_t max_weight, Find find) {
    Slot* const table = table_.data();
    for (uint32_t k = 0; k < count; ++k) {
      const uint32_t i = due[k];
      BuildEntry& e = entries_[i];
      const uint32_t slot = find(e);
      table[slot] = static_cast<Slot>(kTaken | i);
      // The walk goes on from the next entry of the permutation: (slot + skip) mod M, in
      // arithmetic (GCC makes the plain select a branch, taken with probability skip / M: one
      // the predictor cannot learn).
      const int64_t t = int64_t{slot} + e.skip - m_;
      e.slot = static_cast<uint32_t>(t + (int64_t{m_} & (t >> 63)));
      e.target += max_weight;
    }
    free_count_ -= count;
  }

  // Pseudocode 1's walk, four permutation entries at a time: they are four independent chains
  // (each steps by 4 * skip), so their loads overlap, and there is one branch per four probes.
  // A chain is kept as q = slot - M, in [-M, 0), so that a step is q += step and, if that
  // reached 0, q -= M; the slot's entry is end_[q].
  uint32_t walk(const BuildEntry& e) const {
    const int64_t m = m_;
    const auto step = [m](int64_t q, int64_t by) {
#if defined(__x86_64__) && defined(__GNUC__)
      // The portable lines below in the three instructions they need: GCC emits five (it tests
      // the sign again instead of using the add's flags), and this is most of a walk.
      int64_t wrapped;
      asm("add %[by], %[q]\n\t"
          "lea (%[q], %[neg_m]), %[wrapped]\n\t"
          "cmovns %[wrapped], %[q]"
          : [q] "+r"(q), [wrapped] "=&r"(wrapped)
          : [by] "r"(by), [neg_m] "r"(-m)
          : "cc");
      return q;
#else
      q += by;
      return q >= 0 ? q - m : q;
#endif
    };
    int64_t q0 = int64_t{e.slot} - m;
    int64_t q1 = step(q0, e.skip);
    int64_t q2 = step(q1, e.skip);
    int64_t q3 = step(q2, e.skip);
    const int64_t by = e.skip4;
    while ((end_[q0] & end_[q1] & end_[q2] & end_[q3] & kTaken) != 0) {
      q0 = step(q0, by);
      q1 = step(q1, by);
      q2 = step(q2, by);
      q3 = step(q3, by);
    }
    // The first free one in permutation order.
    int64_t q = q3;
    q = end_[q2] == 0 ? q2 : q;
    q = end_[q1] == 0 ? q1 : q;
    q = end_[q0] == 0 ? q0 : q;
    return static_cast<uint32_t>(q + m);
  }

  uint32_t endgameSlot(BuildEntry& e) {
    if (free_.empty()) {
      // Sixteen slots at a time, which the compiler turns into a few vector instructions; only
      // a group with a free slot is looked at one by one.
      free_.reserve(free_count_);
      uint32_t s = 0;
      for (; s + 16 <= m_; s += 16) {
        bool any = false;
        for (uint32_t i = 0; i < 16; ++i) {
          any |= table_[s + i] == 0;
        }
        if (any) {
          for (uint32_t i = 0; i < 16; ++i) {
            if (table_[s + i] == 0) {
              free_.push_back(s + i);
            }
          }
        }
      }
      for (; s < m_; ++s) {
        if (table_[s] == 0) {
          free_.push_back(s);
        }
      }
    }
    if (e.inverse == 0) {
      e.inverse = inverseMod(e.skip, m_);
    }
    // j(f) = (f - offset) * inverse mod M = (f * inverse + c) mod M with c = (M - offset) *
    // inverse mod M; f * inverse + c < M^2 + M fits in 64 bits.
    const uint64_t inverse = e.inverse;
    const uint64_t c = modulus_.reduce(uint64_t{m_ - e.offset} * inverse);
    size_t best = 0;
    uint32_t best_j = UINT32_MAX;
    for (size_t k = 0; k < free_.size(); ++k) {
      const uint32_t j = modulus_.reduce(free_[k] * inverse + c);
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

  std::span<BuildEntry> entries_;
  uint32_t m_;
  uint32_t free_count_;
  uint32_t single_probe_above_;  // free_count_ above which a turn probes one slot first
  Modulus modulus_;
  std::vector<Slot> table_;
  const Slot* end_;             // table_.data() + M: end_[q] is slot q + M
  std::vector<uint32_t> free_;  // the free slots, once the endgame starts
};

// Pseudocode 1: the backend whose turn it is claims the first slot of its permutation that is
// still free. Since skip is coprime with the prime M, every permutation visits all M slots, so
// a turn always finds a free slot while the table has one.
template <typename Slot>
std::vector<uint32_t> fill(std::vector<BuildEntry>& entries, uint32_t m, uint32_t max_weight) {
  Filling<Slot> filling(entries, m);
  uint64_t weight_sum = 0;
  for (const BuildEntry& e : entries) {
    weight_sum += e.weight;
  }
  const auto n = static_cast<uint32_t>(entries.size());
  if (uint64_t{max_weight} * n < kScanWhileWeightRatioBelow * weight_sum) {
    // Whether a backend is due in a round depends on its own credit alone, so the round's turns
    // are listed first, without a branch (with uneven weights that test is a coin flip for the
    // branch predictor), then taken in order. With equal weights every backend is due in every
    // round.
    const bool equal = std::all_of(entries.begin(), entries.end(),
                                   [&](const BuildEntry& e) { return e.weight == max_weight; });
    // With equal weights the list holds several rounds (every backend once per round), so that
    // a few backends do not pay a round's overhead every few turns.
    const uint32_t rounds_per_list = equal ? std::max(1u, 1024 / n) : 1;
    std::vector<uint32_t> due(size_t{n} * rounds_per_list);
    for (size_t k = 0; k < due.size(); ++k) {
      due[k] = static_cast<uint32_t>(k % n);
    }
    for (uint64_t round = 0; filling.freeCount() > 0; round += rounds_per_list) {
      auto count = static_cast<uint32_t>(due.size());
      if (!equal) {
        count = 0;
        for (uint32_t i = 0; i < n; ++i) {
          due[count] = i;
          count += round * entries[i].weight >= entries[i].target ? 1 : 0;
        }
      }
      filling.turns(due.data(), std::min(count, filling.freeCount()), max_weight);
    }
  } else {
    std::priority_queue<Turn, std::vector<Turn>, std::greater<>> turns;
    for (uint32_t i = 0; i < n; ++i) {
      turns.emplace(nextRound(entries[i]), i);
    }
    while (filling.freeCount() > 0) {
      const uint32_t i = turns.top().second;
      turns.pop();
      filling.turns(&i, 1, max_weight);
      turns.emplace(nextRound(entries[i]), i);
    }
  }
  return filling.release();
}

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

  if (entries.size() <= Filling<uint8_t>::kMaxEntries) {
    return fill<uint8_t>(entries, m, max_weight);
  }
  if (entries.size() <= Filling<uint16_t>::kMaxEntries) {
    return fill<uint16_t>(entries, m, max_weight);
  }
  if (entries.size() > Filling<uint32_t>::kMaxEntries) {
    throw std::invalid_argument("more than 2^31 weighted Maglev backends");
  }
  return fill<uint32_t>(entries, m, max_weight);
}

}  // namespace sluice
