// Unit tests for the Maglev lookup table (Eisenbud et al., NSDI 2016, section 3.4).
#include "control/maglev.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "common/lb_abi.h"

namespace sluice {
namespace {

constexpr uint32_t kBigTable = 65537;

// Backend i (from 0) gets id i + 1 and key "10.<i / 250>.<i % 250>.1:8080".
std::vector<MaglevBackend> makeBackends(uint32_t n, uint32_t weight = 1) {
  std::vector<MaglevBackend> out;
  out.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    out.push_back({i + 1,
                   "10." + std::to_string(i / 250) + "." + std::to_string(i % 250) + ".1:8080",
                   weight});
  }
  return out;
}

// Slot count per backend id.
std::map<uint32_t, uint32_t> countSlots(const std::vector<uint32_t>& table) {
  std::map<uint32_t, uint32_t> counts;
  for (const uint32_t id : table) {
    ++counts[id];
  }
  return counts;
}

std::string percent(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f%%", fraction * 100.0);
  return buf;
}

// The three backends of the golden tables, with the offsets and skips the fixed hash gives them:
//
//   key            h1 (offset seed)    h2 (skip seed)      M=7: offset skip  M=13: offset skip
//   10.0.0.1:80    5ed8f8275e47a14a    7d8fbbfc6bafe1f9          0      6           9      6
//   10.0.0.2:80    4bd0376ea9f7f75e    734d003ea1881c87          3      4           0      4
//   10.0.0.3:80    d66aba411cd41bb3    4cb1343b4fd911be          2      1          10      7
//
// (offset = h1 mod M, skip = h2 mod (M - 1) + 1.) If these tests fail, the hash or the fill
// order changed, and hosts running different versions would no longer agree on the tables.
std::vector<MaglevBackend> goldenBackends(uint32_t w1 = 1, uint32_t w2 = 1, uint32_t w3 = 1) {
  return {{1, "10.0.0.1:80", w1}, {2, "10.0.0.2:80", w2}, {3, "10.0.0.3:80", w3}};
}

TEST(MaglevTest, GoldenTableSize7) {
  // Permutations (offset + j * skip) mod 7:
  //   B1: 0 6 5 4 3 2 1     B2: 3 0 4 1 5 2 6     B3: 2 3 4 5 6 0 1
  // Turns, B1 B2 B3 in each round:
  //   round 0: B1 -> 0, B2 -> 3, B3 -> 2
  //   round 1: B1 -> 6, B2 -> 4 (0 taken), B3 -> 5 (3, 4 taken)
  //   round 2: B1 -> 1 (5, 4, 3, 2 taken); table full
  const std::vector<uint32_t> expected = {1, 1, 3, 2, 2, 3, 1};
  EXPECT_EQ(buildMaglevTable(goldenBackends(), 7), expected);
}

TEST(MaglevTest, GoldenTableSize13) {
  // Permutations (offset + j * skip) mod 13:
  //   B1: 9 2 8 1 7 0 6 12 5 11 4 10 3
  //   B2: 0 4 8 12 3 7 11 2 6 10 1 5 9
  //   B3: 10 4 11 5 12 6 0 7 1 8 2 9 3
  // Turns:
  //   round 0: B1 -> 9, B2 -> 0, B3 -> 10
  //   round 1: B1 -> 2, B2 -> 4, B3 -> 11 (4 taken)
  //   round 2: B1 -> 8, B2 -> 12 (8 taken), B3 -> 5
  //   round 3: B1 -> 1, B2 -> 3, B3 -> 6 (12 taken)
  //   round 4: B1 -> 7; table full
  const std::vector<uint32_t> expected = {2, 1, 1, 2, 2, 3, 3, 1, 1, 1, 3, 3, 2};
  EXPECT_EQ(buildMaglevTable(goldenBackends(), 13), expected);
}

TEST(MaglevTest, GoldenWeightedTableSize13) {
  // Weights 2:1:1, max weight 2: B1 takes a turn every round, B2 and B3 every other round
  // (round r when r * 1 >= target, target = 0, 2, 4, ...). Same permutations as above.
  //   round 0: B1 -> 9, B2 -> 0, B3 -> 10
  //   round 1: B1 -> 2
  //   round 2: B1 -> 8, B2 -> 4, B3 -> 11 (4 taken)
  //   round 3: B1 -> 1
  //   round 4: B1 -> 7, B2 -> 12 (8 taken), B3 -> 5
  //   round 5: B1 -> 6 (0 taken)
  //   round 6: B1 -> 3 (12, 5, 11, 4, 10 taken); table full
  // B1 ends up with 7 slots, B2 and B3 with 3 each.
  const std::vector<uint32_t> expected = {2, 1, 1, 1, 2, 3, 1, 1, 1, 1, 3, 3, 2};
  EXPECT_EQ(buildMaglevTable(goldenBackends(2, 1, 1), 13), expected);
}

TEST(MaglevTest, IndependentOfInputOrder) {
  auto small = goldenBackends();
  const auto first = buildMaglevTable(small, 13);
  EXPECT_EQ(buildMaglevTable(small, 13), first);  // built twice
  std::reverse(small.begin(), small.end());
  EXPECT_EQ(buildMaglevTable(small, 13), first);
  std::rotate(small.begin(), small.begin() + 1, small.end());
  EXPECT_EQ(buildMaglevTable(small, 13), first);

  auto big = makeBackends(100);
  for (uint32_t i = 0; i < big.size(); ++i) {
    big[i].weight = 1 + i % 7;
  }
  const auto reference = buildMaglevTable(big, kBigTable);
  std::mt19937 rng(12345);
  for (int round = 0; round < 3; ++round) {
    std::shuffle(big.begin(), big.end(), rng);
    EXPECT_EQ(buildMaglevTable(big, kBigTable), reference);
  }
}

TEST(MaglevTest, ChangeDetector) {
  // FNV-1a-64 over a big weighted table. Not derived by hand like the golden tables above; it
  // pins the whole build (hash, weighted turn order, fill) so that an accidental change shows.
  auto backends = makeBackends(100);
  for (uint32_t i = 0; i < backends.size(); ++i) {
    backends[i].weight = 1 + i % 5;
  }
  const auto table = buildMaglevTable(backends, kBigTable);
  uint64_t h = 0xcbf29ce484222325ull;
  for (const uint32_t id : table) {
    for (int shift = 0; shift < 32; shift += 8) {
      h ^= (id >> shift) & 0xff;
      h *= 0x100000001b3ull;
    }
  }
  EXPECT_EQ(h, 0x2b65f7f6fe062cf2ull) << std::hex << "fingerprint 0x" << h;
}

TEST(MaglevTest, EqualWeightsBalance) {
  for (const uint32_t n : {10u, 100u, 1000u}) {
    const auto table = buildMaglevTable(makeBackends(n), kBigTable);
    const auto counts = countSlots(table);
    ASSERT_EQ(counts.size(), n);
    const double ideal = static_cast<double>(kBigTable) / n;
    uint32_t lo = UINT32_MAX;
    uint32_t hi = 0;
    for (const auto& [id, count] : counts) {
      ASSERT_NE(id, LB_BACKEND_NONE);
      lo = std::min(lo, count);
      hi = std::max(hi, count);
    }
    const double dev = std::max(hi - ideal, ideal - lo) / ideal;
    std::cout << "balance N=" << n << " M=" << kBigTable << ": ideal " << ideal << " min " << lo
              << " max " << hi << ", max deviation " << percent(dev) << "\n";
    RecordProperty("balance_max_deviation_n" + std::to_string(n), percent(dev));
    // With equal weights every backend takes exactly one slot per round, so the shares are
    // floor(M / N) or ceil(M / N): far inside the paper's ~1% for M > 100 N.
    EXPECT_LE(hi - lo, 1u);
    if (n <= 100) {
      EXPECT_LT(dev, 0.01);
    }
  }
}

TEST(MaglevTest, WeightsAreProportional) {
  const auto table = buildMaglevTable(goldenBackends(1, 2, 3), kBigTable);
  const auto counts = countSlots(table);
  ASSERT_EQ(counts.size(), 3u);
  for (uint32_t id = 1; id <= 3; ++id) {
    const double ideal = kBigTable * id / 6.0;
    const double dev = (counts.at(id) - ideal) / ideal;
    std::cout << "weight " << id << ": " << counts.at(id) << " slots, ideal " << ideal
              << ", deviation " << percent(dev) << "\n";
    // Integer credit gives the exact ratio per 3 rounds; only the last round is partial.
    EXPECT_LE(std::abs(counts.at(id) - ideal), 3.0);
  }
}

TEST(MaglevTest, ManyUnevenWeights) {
  auto backends = makeBackends(50);
  uint64_t total = 0;
  for (uint32_t i = 0; i < backends.size(); ++i) {
    backends[i].weight = 1 + (i * 37) % 100;
    total += backends[i].weight;
  }
  const auto counts = countSlots(buildMaglevTable(backends, kBigTable));
  double worst = 0;
  for (const auto& b : backends) {
    const double ideal = static_cast<double>(kBigTable) * b.weight / static_cast<double>(total);
    worst = std::max(worst, std::abs(counts.at(b.id) - ideal) / ideal);
  }
  std::cout << "50 weights 1..100: worst share deviation " << percent(worst) << "\n";
  EXPECT_LT(worst, 0.05);
}

TEST(MaglevTest, EveryWeightedBackendGetsASlot) {
  // Everyone takes a turn in round 0, however small its weight.
  const auto table = buildMaglevTable(goldenBackends(1, 65535, 1), 13);
  const auto counts = countSlots(table);
  EXPECT_EQ(counts.at(1), 1u);
  EXPECT_EQ(counts.at(2), 11u);
  EXPECT_EQ(counts.at(3), 1u);

  // As many backends as slots: exactly one slot each.
  const auto full = buildMaglevTable(makeBackends(13), 13);
  auto sorted = full;
  std::sort(sorted.begin(), sorted.end());
  for (uint32_t i = 0; i < 13; ++i) {
    EXPECT_EQ(sorted[i], i + 1);
  }
}

// Fraction of slots whose owner changes when backend `removed` is taken out (weight 0), and the
// same among the slots that the removed backend did not own.
struct Disruption {
  double changed = 0;
  double others_changed = 0;
};

Disruption measureRemoval(uint32_t n, uint32_t removed_index) {
  auto backends = makeBackends(n);
  const auto before = buildMaglevTable(backends, kBigTable);
  const uint32_t removed_id = backends[removed_index].id;
  backends.erase(backends.begin() + removed_index);
  const auto after = buildMaglevTable(backends, kBigTable);
  uint32_t changed = 0;
  uint32_t others = 0;
  uint32_t others_changed = 0;
  for (uint32_t s = 0; s < kBigTable; ++s) {
    EXPECT_NE(after[s], removed_id);
    changed += before[s] != after[s] ? 1 : 0;
    if (before[s] != removed_id) {
      ++others;
      others_changed += before[s] != after[s] ? 1 : 0;
    }
  }
  return {static_cast<double>(changed) / kBigTable, static_cast<double>(others_changed) / others};
}

TEST(MaglevTest, RemovingABackendDisruptsLittle) {
  for (const uint32_t n : {10u, 100u, 1000u}) {
    double worst = 0;
    double worst_others = 0;
    for (const uint32_t removed : {0u, n / 2, n - 1}) {
      const Disruption d = measureRemoval(n, removed);
      worst = std::max(worst, d.changed);
      worst_others = std::max(worst_others, d.others_changed);
    }
    const double ideal = 1.0 / n;
    std::cout << "disruption N=" << n << " M=" << kBigTable << ": ideal " << percent(ideal)
              << ", worst changed " << percent(worst) << ", worst changed among slots of "
              << "remaining backends " << percent(worst_others) << "\n";
    RecordProperty("disruption_n" + std::to_string(n), percent(worst));
    EXPECT_GE(worst, ideal * 0.9);  // at least the removed backend's slots move
    EXPECT_LE(worst, 2 * ideal + 0.01);
    // Slots of the remaining backends mostly keep their owner.
    EXPECT_LE(worst_others, ideal + 0.01);
  }
}

TEST(MaglevTest, AddingABackendDisruptsLittle) {
  auto backends = makeBackends(101);
  const auto with = buildMaglevTable(backends, kBigTable);
  backends.pop_back();
  const auto without = buildMaglevTable(backends, kBigTable);
  uint32_t changed = 0;
  for (uint32_t s = 0; s < kBigTable; ++s) {
    changed += with[s] != without[s] ? 1 : 0;
  }
  const double fraction = static_cast<double>(changed) / kBigTable;
  std::cout << "adding backend 101 to 100: changed " << percent(fraction) << "\n";
  EXPECT_LE(fraction, 2.0 / 101 + 0.01);
}

TEST(MaglevTest, ZeroWeightNeverAppears) {
  auto backends = makeBackends(20);
  for (uint32_t i = 0; i < backends.size(); i += 3) {
    backends[i].weight = 0;
  }
  const auto table = buildMaglevTable(backends, kBigTable);
  const auto counts = countSlots(table);
  for (const auto& b : backends) {
    if (b.weight == 0) {
      EXPECT_EQ(counts.count(b.id), 0u) << b.key;
    } else {
      EXPECT_GT(counts.count(b.id), 0u) << b.key;
    }
  }
  EXPECT_EQ(counts.count(LB_BACKEND_NONE), 0u);

  // A drained backend is the same as an absent one.
  std::vector<MaglevBackend> present;
  for (const auto& b : backends) {
    if (b.weight != 0) {
      present.push_back(b);
    }
  }
  EXPECT_EQ(buildMaglevTable(present, kBigTable), table);
}

TEST(MaglevTest, NoWeightedBackendGivesEmptyTable) {
  auto backends = makeBackends(5, 0);
  EXPECT_EQ(buildMaglevTable(backends, 13), std::vector<uint32_t>(13, LB_BACKEND_NONE));
  EXPECT_EQ(buildMaglevTable({}, 7), std::vector<uint32_t>(7, LB_BACKEND_NONE));
  // A drained backend with the reserved id is not an error: it takes no slot anyway.
  const std::vector<MaglevBackend> zero = {{0, "x", 0}};
  EXPECT_EQ(buildMaglevTable(zero, 7), std::vector<uint32_t>(7, LB_BACKEND_NONE));
}

TEST(MaglevTest, InvalidInputThrows) {
  const auto backends = goldenBackends();
  for (const uint32_t size : {0u, 1u, 4u, 9u, 65536u, 65535u}) {
    EXPECT_THROW(buildMaglevTable(backends, size), std::invalid_argument) << size;
  }
  EXPECT_NO_THROW(buildMaglevTable(backends, 3));
  // More weighted backends than slots.
  EXPECT_THROW(buildMaglevTable(makeBackends(8), 7), std::invalid_argument);
  // ...but drained ones do not count.
  auto drained = makeBackends(8);
  drained[0].weight = 0;
  EXPECT_NO_THROW(buildMaglevTable(drained, 7));
  // A weighted backend with the reserved id 0.
  const std::vector<MaglevBackend> reserved = {{0, "10.0.0.1:80", 1}};
  EXPECT_THROW(buildMaglevTable(reserved, 7), std::invalid_argument);
}

TEST(MaglevTest, TinyTables) {
  EXPECT_EQ(buildMaglevTable(goldenBackends(1, 0, 0), 2), (std::vector<uint32_t>{1, 1}));
  const auto two = buildMaglevTable(goldenBackends(1, 1, 0), 2);
  EXPECT_EQ(countSlots(two).size(), 2u);
  EXPECT_EQ(buildMaglevTable(goldenBackends(0, 5, 0), 3), (std::vector<uint32_t>{2, 2, 2}));
}

TEST(MaglevTest, DuplicateKeysAreHandled) {
  std::vector<MaglevBackend> dup = {
      {1, "10.0.0.1:80", 1}, {2, "10.0.0.1:80", 1}, {3, "10.0.0.2:80", 1}, {2, "10.0.0.1:80", 2}};
  const auto table = buildMaglevTable(dup, 13);
  const auto counts = countSlots(table);
  EXPECT_EQ(counts.count(LB_BACKEND_NONE), 0u);
  EXPECT_EQ(counts.size(), 3u);
  std::reverse(dup.begin(), dup.end());
  EXPECT_EQ(buildMaglevTable(dup, 13), table);
  std::swap(dup[0], dup[2]);
  EXPECT_EQ(buildMaglevTable(dup, 13), table);
}

TEST(MaglevTest, IsPrime) {
  for (const uint32_t p :
       {2u, 3u, 5u, 7u, 13u, 251u, 16381u, 65521u, 65537u, 65539u, 131071u, 4294967291u}) {
    EXPECT_TRUE(isPrime(p)) << p;
  }
  for (const uint32_t c : {0u, 1u, 4u, 9u, 15u, 25u, 65535u, 65536u, 16383u, 4294967295u,
                           4292870399u /* 65521 * 65519 */}) {
    EXPECT_FALSE(isPrime(c)) << c;
  }
}

// The build against a plain reading of the algorithm it implements: Envoy's round-by-round scan
// of the weighted turns and the paper's Pseudocode 1 walk with a modulo per step. The build
// takes shortcuts (a heap of turns for very uneven weights, a four-wide walk, the endgame over
// the last free slots); they must not change a single slot.
std::vector<uint32_t> referenceTable(std::vector<MaglevBackend> backends, uint32_t m) {
  std::erase_if(backends, [](const MaglevBackend& b) { return b.weight == 0; });
  std::sort(backends.begin(), backends.end(), [](const MaglevBackend& a, const MaglevBackend& b) {
    return std::tie(a.key, a.id, a.weight) < std::tie(b.key, b.id, b.weight);
  });
  auto hash = [](const std::string& key, uint64_t seed) {
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (const char c : key) {
      h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
  };
  uint32_t max_weight = 0;
  for (const MaglevBackend& b : backends) {
    max_weight = std::max(max_weight, b.weight);
  }
  std::vector<uint64_t> offset, skip, next, target(backends.size(), 0);
  for (const MaglevBackend& b : backends) {
    offset.push_back(hash(b.key, 0) % m);
    skip.push_back(hash(b.key, 0x9e3779b97f4a7c15ull) % (m - 1) + 1);
    next.push_back(0);
  }
  std::vector<uint32_t> table(m, LB_BACKEND_NONE);
  uint32_t filled = 0;
  for (uint64_t round = 0; filled < m; ++round) {
    for (size_t i = 0; i < backends.size() && filled < m; ++i) {
      if (round * backends[i].weight < target[i]) {
        continue;
      }
      uint64_t slot = (offset[i] + next[i] * skip[i]) % m;
      while (table[slot] != LB_BACKEND_NONE) {
        ++next[i];
        slot = (offset[i] + next[i] * skip[i]) % m;
      }
      table[slot] = backends[i].id;
      ++filled;
      target[i] += max_weight;
    }
  }
  return table;
}

TEST(MaglevTest, EqualsAPlainReadingOfTheAlgorithm) {
  std::mt19937 rng(20261202);
  for (const uint32_t m : {13u, 251u, 4099u, kBigTable}) {
    for (int trial = 0; trial < 4; ++trial) {
      const uint32_t n = std::min<uint32_t>(m, std::uniform_int_distribution<uint32_t>(1, 300)(rng));
      std::vector<MaglevBackend> backends = makeBackends(n);
      for (MaglevBackend& b : backends) {
        switch (trial) {
          case 0: b.weight = 1; break;                                                     // equal
          case 1: b.weight = std::uniform_int_distribution<uint32_t>(0, 100)(rng); break;  // uneven
          case 2: b.weight = b.id == 1 ? 100000 : 1; break;  // one dwarfs the rest: the heap
          default: b.weight = std::uniform_int_distribution<uint32_t>(1, 3)(rng); break;
        }
      }
      if (std::none_of(backends.begin(), backends.end(), [](auto& b) { return b.weight > 0; })) {
        continue;
      }
      EXPECT_EQ(buildMaglevTable(backends, m), referenceTable(backends, m))
          << "M = " << m << ", " << n << " backends, trial " << trial;
    }
  }
}

}  // namespace
}  // namespace sluice
