// Tests of the per-core flow table (src/dataplane/flow_table.h): insert and lookup, lazy expiry
// and the incremental sweep, eviction from a full bucket (unestablished entries first, and a SYN
// flood that leaves established flows alone), capacity rounding, forEach, and a randomized
// comparison against a plain map.
#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "common/lb_abi.h"
#include "dataplane/flow_table.h"

namespace sluice {
namespace {

// A distinct IPv4 TCP key per n.
lb_flow_key keyOf(uint32_t n) {
  lb_flow_key k;
  std::memset(&k, 0, sizeof(k));
  k.src[0] = htonl(0xc6336400u + n);  // 198.51.100.0 + n
  k.dst[0] = htonl(0xc000020au);      // 192.0.2.10
  k.sport = htons(static_cast<uint16_t>(1024 + n % 60000));
  k.dport = htons(80);
  k.proto = LB_PROTO_TCP;
  k.family = LB_FAMILY_IPV4;
  return k;
}

// Insert a flow and fill the entry as the pipeline does.
FlowEntry& add(FlowTable& t, const lb_flow_key& k, uint32_t hash, uint64_t now,
               uint64_t expires, uint32_t backend = 7) {
  FlowEntry& e = t.insert(k, hash, now);
  e.expires_ns = expires;
  e.service_id = 3;
  e.backend_id = backend;
  e.backend_epoch = 1;
  e.state = FlowState::kActive;
  return e;
}

size_t countLive(const FlowTable& t, uint64_t now) {
  size_t n = 0;
  t.forEach(now, [&](const FlowEntry&) { ++n; });
  return n;
}

TEST(FlowTable, CapacityIsRoundedUpToWholeBuckets) {
  const std::vector<std::pair<uint32_t, uint32_t>> cases = {
      {0, 8},        {1, 8},         {7, 8},           {8, 8},           {9, 16},
      {16, 16},      {17, 24},       {24, 24},         {25, 32},         {33, 40},
      {1000, 1000},  {1025, 1032},   {100000, 100000}, {1u << 20, 1u << 20}};
  for (const auto& [asked, expected] : cases) {
    FlowTable t(asked);
    EXPECT_EQ(t.capacity(), expected) << "asked " << asked;
    EXPECT_EQ(FlowTable::bytesFor(asked), uint64_t{expected} * 68) << "asked " << asked;
  }
  // The target: 10 million flows of one core in at most 1 GiB.
  EXPECT_EQ(FlowTable::bytesFor(10'000'000), 680'000'000u);
}

TEST(FlowTable, ATableOfAnyBucketCountFillsEveryBucket) {
  // 125 buckets: not a power of two. Two-choice placement must fill most of the table before it
  // evicts (the first eviction comes at 73-84 % full, as with a power of two of buckets),
  // and multiply-shift must reach every bucket, the last one included: once the inserts have
  // gone on evicting long enough, every one of the 1000 slots holds a flow.
  FlowTable t(1000);
  ASSERT_EQ(t.capacity(), 1000u);
  uint32_t i = 0;
  for (; t.stats().evicted.get() == 0; ++i) {
    const lb_flow_key k = keyOf(i);
    add(t, k, lb_flow_hash(&k), 0, 1000 + i, 1);
  }
  EXPECT_GT(i, 700u) << "the first eviction came at insert " << i;
  for (; i < 20000; ++i) {
    const lb_flow_key k = keyOf(i);
    add(t, k, lb_flow_hash(&k), 0, 1000 + i, 1);
  }
  EXPECT_EQ(t.stats().active.get(), 1000u);
  EXPECT_EQ(countLive(t, 0), 1000u);
}

TEST(FlowTable, InsertThenLookup) {
  FlowTable t(1024);
  const lb_flow_key k = keyOf(1);
  const uint32_t h = lb_flow_hash(&k);
  EXPECT_EQ(t.lookup(k, h, 0), nullptr);
  FlowEntry& e = add(t, k, h, 100, 1000, 42);
  EXPECT_TRUE(flowKeyEqual(e.key, k));
  FlowEntry* found = t.lookup(k, h, 500);
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found, &e);
  EXPECT_EQ(found->backend_id, 42u);
  EXPECT_EQ(found->service_id, 3u);
  EXPECT_EQ(t.stats().inserted, 1u);
  EXPECT_EQ(t.stats().active, 1u);
  EXPECT_EQ(t.stats().expired, 0u);
  EXPECT_EQ(t.stats().evicted, 0u);
  // Another key misses.
  const lb_flow_key other = keyOf(2);
  EXPECT_EQ(t.lookup(other, lb_flow_hash(&other), 500), nullptr);
  // Writes through the returned pointer stick.
  found->backend_id = 43;
  EXPECT_EQ(t.lookup(k, h, 600)->backend_id, 43u);
}

TEST(FlowTable, ManyFlowsAllFound) {
  FlowTable t(1u << 14);
  constexpr uint32_t kFlows = 4000;  // a quarter full: no bucket overflows with a good hash
  for (uint32_t i = 0; i < kFlows; ++i) {
    const lb_flow_key k = keyOf(i);
    add(t, k, lb_flow_hash(&k), 0, 1000, i + 1);
  }
  ASSERT_EQ(t.stats().evicted, 0u);
  EXPECT_EQ(t.stats().active, kFlows);
  for (uint32_t i = 0; i < kFlows; ++i) {
    const lb_flow_key k = keyOf(i);
    const FlowEntry* e = t.lookup(k, lb_flow_hash(&k), 10);
    ASSERT_NE(e, nullptr) << i;
    EXPECT_EQ(e->backend_id, i + 1);
    EXPECT_TRUE(flowKeyEqual(e->key, k));
  }
  EXPECT_EQ(countLive(t, 10), kFlows);
}

TEST(FlowTable, LookupAtExpiryMisses) {
  FlowTable t(64);
  const lb_flow_key k = keyOf(5);
  const uint32_t h = lb_flow_hash(&k);
  add(t, k, h, 0, 1000);
  EXPECT_NE(t.lookup(k, h, 999), nullptr);
  EXPECT_EQ(t.stats().expired, 0u);
  EXPECT_EQ(t.lookup(k, h, 1000), nullptr);  // now == expires_ns is expired
  EXPECT_EQ(t.stats().expired, 1u);
  EXPECT_EQ(t.stats().active, 0u);
  // The entry is gone, not just hidden: even an earlier clock does not find it, and a second
  // lookup does not count it twice.
  EXPECT_EQ(t.lookup(k, h, 10), nullptr);
  EXPECT_EQ(t.lookup(k, h, 5000), nullptr);
  EXPECT_EQ(t.stats().expired, 1u);
  EXPECT_EQ(t.stats().active, 0u);
  EXPECT_EQ(countLive(t, 0), 0u);
}

TEST(FlowTable, ExpiredFlowCanBeReinserted) {
  FlowTable t(64);
  const lb_flow_key k = keyOf(5);
  const uint32_t h = lb_flow_hash(&k);
  add(t, k, h, 0, 1000, 1);
  ASSERT_EQ(t.lookup(k, h, 2000), nullptr);
  add(t, k, h, 2000, 3000, 2);
  const FlowEntry* e = t.lookup(k, h, 2500);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->backend_id, 2u);
  EXPECT_EQ(t.stats().inserted, 2u);
  EXPECT_EQ(t.stats().active, 1u);
  EXPECT_EQ(t.stats().expired, 1u);
}

TEST(FlowTable, SameHashDifferentKeyMisses) {
  // The signature is derived from the hash, so a key with the same hash reaches the same slot
  // and signature; only the full key comparison tells them apart.
  FlowTable t(64);
  const lb_flow_key a = keyOf(1);
  lb_flow_key b = a;
  b.dport = htons(81);
  const uint32_t h = 0x12345678;
  add(t, a, h, 0, 1000, 11);
  EXPECT_EQ(t.lookup(b, h, 10), nullptr);
  EXPECT_EQ(t.stats().active, 1u);
  // Both can live side by side with the same hash.
  add(t, b, h, 0, 1000, 12);
  ASSERT_NE(t.lookup(a, h, 10), nullptr);
  ASSERT_NE(t.lookup(b, h, 10), nullptr);
  EXPECT_EQ(t.lookup(a, h, 10)->backend_id, 11u);
  EXPECT_EQ(t.lookup(b, h, 10)->backend_id, 12u);
  // Every byte of the key counts, including the family and the upper address words.
  lb_flow_key c = a;
  c.family = LB_FAMILY_IPV6;
  EXPECT_EQ(t.lookup(c, h, 10), nullptr);
  c = a;
  c.src[3] = 1;
  EXPECT_EQ(t.lookup(c, h, 10), nullptr);
  c = a;
  c.proto = LB_PROTO_UDP;
  EXPECT_EQ(t.lookup(c, h, 10), nullptr);
}

TEST(FlowTable, HashesDifferingOnlyInLowBitShareSignature) {
  // signature(h) = h | 1, so hashes 2n and 2n+1 have the same signature; with one bucket they
  // also share it. The key comparison keeps them apart.
  FlowTable t(8);
  ASSERT_EQ(t.capacity(), 8u);
  const lb_flow_key a = keyOf(1);
  const lb_flow_key b = keyOf(2);
  add(t, a, 0x100, 0, 1000, 1);
  add(t, b, 0x101, 0, 1000, 2);
  ASSERT_NE(t.lookup(a, 0x100, 1), nullptr);
  ASSERT_NE(t.lookup(b, 0x101, 1), nullptr);
  EXPECT_EQ(t.lookup(a, 0x100, 1)->backend_id, 1u);
  EXPECT_EQ(t.lookup(b, 0x101, 1)->backend_id, 2u);
  // Hash 0 has a non-zero signature (0 marks a free slot).
  const lb_flow_key c = keyOf(3);
  add(t, c, 0, 0, 1000, 3);
  ASSERT_NE(t.lookup(c, 0, 1), nullptr);
  EXPECT_EQ(t.lookup(c, 0, 1)->backend_id, 3u);
}

TEST(FlowTable, FullBucketEvictsSoonestToExpire) {
  // A one-bucket table, so every key's candidate slots (whatever the placement scheme) are the
  // same eight: the ninth flow must evict the live entry that expires first.
  FlowTable t(8);
  ASSERT_EQ(t.capacity(), 8u);
  const std::vector<uint64_t> expiry = {900, 800, 700, 950, 300, 600, 1000, 400};
  auto hashOf = [](uint32_t i) { return 0x1000u * (i + 1) + 0x10u; };
  for (uint32_t i = 0; i < 8; ++i) {
    add(t, keyOf(i), hashOf(i), 0, expiry[i], i + 1);
  }
  EXPECT_EQ(t.stats().active, 8u);
  EXPECT_EQ(t.stats().evicted, 0u);

  // The ninth flow evicts flow 4 (expires at 300).
  add(t, keyOf(8), hashOf(8), 10, 2000, 9);
  EXPECT_EQ(t.stats().evicted, 1u);
  EXPECT_EQ(t.stats().expired, 0u);
  EXPECT_EQ(t.stats().active, 8u);
  EXPECT_EQ(t.stats().inserted, 9u);
  EXPECT_EQ(t.lookup(keyOf(4), hashOf(4), 20), nullptr);
  for (uint32_t i = 0; i < 9; ++i) {
    if (i == 4) {
      continue;
    }
    const FlowEntry* e = t.lookup(keyOf(i), hashOf(i), 20);
    ASSERT_NE(e, nullptr) << i;
    EXPECT_EQ(e->backend_id, i + 1);
  }
  // The next one evicts flow 7 (400), then flow 5 (600).
  add(t, keyOf(9), hashOf(9), 20, 2000, 10);
  EXPECT_EQ(t.lookup(keyOf(7), hashOf(7), 30), nullptr);
  EXPECT_NE(t.lookup(keyOf(5), hashOf(5), 30), nullptr);
  add(t, keyOf(10), hashOf(10), 30, 2000, 11);
  EXPECT_EQ(t.lookup(keyOf(5), hashOf(5), 40), nullptr);
  EXPECT_EQ(t.stats().evicted, 3u);
  EXPECT_EQ(t.stats().expired, 0u);
  EXPECT_EQ(t.stats().active, 8u);
  EXPECT_EQ(countLive(t, 40), 8u);
}

TEST(FlowTable, OverfullTableStaysConsistent) {
  // Ten times more live flows than slots: evictions must keep the counters, forEach and lookup
  // in agreement, and a flow just inserted must always be found.
  FlowTable t(64);
  ASSERT_EQ(t.capacity(), 64u);
  constexpr uint32_t kFlows = 640;
  for (uint32_t i = 0; i < kFlows; ++i) {
    const lb_flow_key k = keyOf(i);
    add(t, k, lb_flow_hash(&k), i, 100000 + i, i + 1);
    const FlowEntry* e = t.lookup(k, lb_flow_hash(&k), i);
    ASSERT_NE(e, nullptr) << i;
    ASSERT_EQ(e->backend_id, i + 1);
    ASSERT_LE(t.stats().active, t.capacity());
  }
  const FlowTableStats st = t.stats();
  EXPECT_EQ(st.inserted, kFlows);
  EXPECT_EQ(st.expired, 0u);
  EXPECT_GE(st.evicted, kFlows - t.capacity());
  EXPECT_EQ(st.inserted - st.evicted, st.active);
  uint64_t found = 0;
  for (uint32_t i = 0; i < kFlows; ++i) {
    const lb_flow_key k = keyOf(i);
    const FlowEntry* e = t.lookup(k, lb_flow_hash(&k), kFlows);
    if (e != nullptr) {
      ++found;
      EXPECT_EQ(e->backend_id, i + 1);
    }
  }
  EXPECT_EQ(found, st.active);
  EXPECT_EQ(countLive(t, kFlows), st.active);
}

TEST(FlowTable, FullBucketReusesExpiredSlotWithoutEvicting) {
  FlowTable t(8);  // one bucket
  for (uint32_t i = 0; i < 8; ++i) {
    add(t, keyOf(i), 0x10 * (i + 1), 0, i == 5 ? 100 : 1000, i + 1);
  }
  // At 100 flow 5 has expired (expires_ns <= now): its slot is taken without evicting a live
  // flow.
  add(t, keyOf(8), 0x90, 100, 1000, 9);
  EXPECT_EQ(t.stats().evicted, 0u);
  EXPECT_EQ(t.stats().expired, 1u);
  EXPECT_EQ(t.stats().active, 8u);
  for (uint32_t i = 0; i < 9; ++i) {
    const FlowEntry* e = t.lookup(keyOf(i), 0x10 * (i + 1), 300);
    if (i == 5) {
      EXPECT_EQ(e, nullptr);
    } else {
      ASSERT_NE(e, nullptr) << i;
      EXPECT_EQ(e->backend_id, i + 1);
    }
  }
}

TEST(FlowTable, SweepRemovesExpiredAndKeepsLive) {
  FlowTable t(1024);  // 128 buckets
  const uint32_t buckets = t.capacity() / FlowTable::kBucketEntries;
  ASSERT_EQ(buckets, 128u);
  constexpr uint32_t kFlows = 300;
  std::set<uint32_t> live;
  for (uint32_t i = 0; i < kFlows; ++i) {
    const lb_flow_key k = keyOf(i);
    const bool stays = i % 3 == 0;
    add(t, k, lb_flow_hash(&k), 0, stays ? 5000 : 1000, i + 1);
    if (stays) {
      live.insert(i);
    }
  }
  ASSERT_EQ(t.stats().evicted, 0u);
  ASSERT_EQ(t.stats().active, kFlows);
  // forEach already hides the expired ones; the counters do not know yet.
  EXPECT_EQ(countLive(t, 2000), live.size());
  EXPECT_EQ(t.stats().active, kFlows);

  // Sweeping a few buckets at a time: after every bucket is covered, exactly the expired ones
  // are gone, and not before.
  uint32_t swept = 0;
  while (swept + 8 < buckets) {
    t.sweep(8, 2000);
    swept += 8;
    EXPECT_GT(t.stats().active, live.size()) << "after " << swept << " buckets";
  }
  t.sweep(buckets - swept, 2000);
  EXPECT_EQ(t.stats().active, live.size());
  EXPECT_EQ(t.stats().expired, kFlows - live.size());
  // Sweeping again changes nothing.
  t.sweep(buckets, 2000);
  EXPECT_EQ(t.stats().expired, kFlows - live.size());
  for (uint32_t i = 0; i < kFlows; ++i) {
    const lb_flow_key k = keyOf(i);
    const FlowEntry* e = t.lookup(k, lb_flow_hash(&k), 2000);
    if (live.contains(i)) {
      ASSERT_NE(e, nullptr) << i;
      EXPECT_EQ(e->backend_id, i + 1);
    } else {
      EXPECT_EQ(e, nullptr) << i;
    }
  }
  // The lookups of swept flows did not count them again.
  EXPECT_EQ(t.stats().expired, kFlows - live.size());
  EXPECT_EQ(countLive(t, 2000), live.size());
}

TEST(FlowTable, SweepIsRoundRobinOverBuckets) {
  FlowTable t(32);  // 4 buckets
  ASSERT_EQ(t.capacity(), 32u);
  // One expired flow per bucket; hashes 0..3 select buckets 0..3.
  for (uint32_t b = 0; b < 4; ++b) {
    add(t, keyOf(b), b, 0, 10, b + 1);
  }
  t.sweep(1, 100);  // bucket 0
  EXPECT_EQ(t.stats().expired, 1u);
  t.sweep(2, 100);  // buckets 1, 2
  EXPECT_EQ(t.stats().expired, 3u);
  t.sweep(1, 100);  // bucket 3
  EXPECT_EQ(t.stats().expired, 4u);
  EXPECT_EQ(t.stats().active, 0u);
  // The cursor wraps: a new expired flow in bucket 0 goes with the next single-bucket sweep.
  add(t, keyOf(10), 0, 100, 110, 1);
  t.sweep(1, 200);
  EXPECT_EQ(t.stats().expired, 5u);
  EXPECT_EQ(t.stats().active, 0u);
  // Sweeping at a time before expiry removes nothing.
  add(t, keyOf(11), 1, 200, 300, 1);
  t.sweep(4, 250);
  EXPECT_EQ(t.stats().active, 1u);
  EXPECT_NE(t.lookup(keyOf(11), 1, 250), nullptr);
  t.sweep(4, 299);
  EXPECT_EQ(t.stats().active, 1u);
  // now == expires_ns is expired for the sweep too.
  t.sweep(4, 300);
  EXPECT_EQ(t.stats().active, 0u);
  EXPECT_EQ(t.stats().expired, 6u);
}

TEST(FlowTable, ForEachVisitsLiveEntriesOnly) {
  FlowTable t(256);
  std::set<uint32_t> expect_live;
  for (uint32_t i = 0; i < 40; ++i) {
    const lb_flow_key k = keyOf(i);
    add(t, k, lb_flow_hash(&k), 0, 100 + 10 * i, i + 1);
    if (100 + 10 * i > 400) {
      expect_live.insert(i + 1);
    }
  }
  // Some expired entries are removed (lazily by a lookup), the others still sit in their slots:
  // neither kind is visited.
  for (uint32_t i = 0; i < 10; ++i) {
    const lb_flow_key k = keyOf(i);
    EXPECT_EQ(t.lookup(k, lb_flow_hash(&k), 400), nullptr);
  }
  EXPECT_EQ(countLive(t, 0), 30u);  // at time 0 the ten removed ones are gone, the rest shown
  std::set<uint32_t> seen;
  t.forEach(400, [&](const FlowEntry& e) {
    EXPECT_GT(e.expires_ns, 400u);
    EXPECT_TRUE(seen.insert(e.backend_id).second) << "visited twice";
  });
  EXPECT_EQ(seen, expect_live);
  // After clear() nothing is visited and nothing is found.
  t.clear();
  EXPECT_EQ(countLive(t, 0), 0u);
  EXPECT_EQ(t.stats().active, 0u);
  const lb_flow_key k = keyOf(39);
  EXPECT_EQ(t.lookup(k, lb_flow_hash(&k), 0), nullptr);
}

TEST(FlowTable, RandomOperationsMatchAMap) {
  // A large table (no bucket ever fills), random inserts, lookups and sweeps at an advancing
  // clock, compared with a std::map of key -> (expiry, backend).
  FlowTable t(1u << 16);
  std::mt19937_64 rng(12345);
  std::map<uint32_t, std::pair<uint64_t, uint32_t>> model;  // key index -> expiry, backend
  uint64_t now = 1;
  for (int step = 0; step < 200000; ++step) {
    now += rng() % 3;
    const uint32_t n = static_cast<uint32_t>(rng() % 3000);
    const lb_flow_key k = keyOf(n);
    const uint32_t h = lb_flow_hash(&k);
    const int op = static_cast<int>(rng() % 10);
    if (op < 8) {
      FlowEntry* e = t.lookup(k, h, now);
      auto it = model.find(n);
      const bool model_live = it != model.end() && it->second.first > now;
      ASSERT_EQ(e != nullptr, model_live) << "step " << step << " key " << n;
      if (e != nullptr) {
        ASSERT_EQ(e->backend_id, it->second.second);
        e->expires_ns = now + 50 + rng() % 200;  // refresh, as the pipeline does
        it->second.first = e->expires_ns;
      } else {
        const auto backend = static_cast<uint32_t>(rng());
        const uint64_t expires = now + 1 + rng() % 300;
        add(t, k, h, now, expires, backend);
        model[n] = {expires, backend};
      }
    } else {
      t.sweep(1 + static_cast<uint32_t>(rng() % 64), now);
    }
  }
  ASSERT_EQ(t.stats().evicted, 0u);
  // Sweep everything; active must then equal the live flows of the model.
  t.sweep(t.capacity() / FlowTable::kBucketEntries, now);
  size_t model_live = 0;
  for (const auto& [n, v] : model) {
    model_live += v.first > now ? 1 : 0;
  }
  EXPECT_EQ(t.stats().active, model_live);
  EXPECT_EQ(countLive(t, now), model_live);
  EXPECT_EQ(t.stats().inserted - t.stats().expired, model_live);
}

// Unestablished entries (a SYN's, flow_table.h): evicted before any established one, and a SYN
// never evicts an established flow.

// Insert an unestablished flow (a SYN's) as the pipeline does; nullptr when not inserted.
FlowEntry* addSyn(FlowTable& t, const lb_flow_key& k, uint32_t hash, uint64_t now,
                  uint64_t expires, uint32_t backend = 7) {
  FlowEntry* e = t.insertUnestablished(k, hash, now);
  if (e != nullptr) {
    e->expires_ns = expires;
    e->service_id = 3;
    e->backend_id = backend;
    e->backend_epoch = 1;
    e->state = FlowState::kSynRecv;
  }
  return e;
}

TEST(FlowTable, FullBucketEvictsUnestablishedFirst) {
  FlowTable t(8);  // one bucket: every key's sixteen candidate slots are the same eight
  auto hashOf = [](uint32_t i) { return 0x1000u * (i + 1) + 0x10u; };
  // Six established flows expiring soon, two unestablished expiring late.
  for (uint32_t i = 0; i < 6; ++i) {
    add(t, keyOf(i), hashOf(i), 0, 100 + i, i + 1);
  }
  ASSERT_NE(addSyn(t, keyOf(6), hashOf(6), 0, 5000, 7), nullptr);
  ASSERT_NE(addSyn(t, keyOf(7), hashOf(7), 0, 4000, 8), nullptr);
  // An established flow takes the unestablished entry that expires first (7), not the
  // established one that does (0).
  add(t, keyOf(8), hashOf(8), 10, 9000, 9);
  EXPECT_EQ(t.stats().evicted, 1u);
  EXPECT_EQ(t.stats().syn_evicted, 1u);
  EXPECT_EQ(t.lookup(keyOf(7), hashOf(7), 20), nullptr);
  EXPECT_NE(t.lookup(keyOf(0), hashOf(0), 20), nullptr);
  // A SYN takes the last unestablished entry (6)...
  FlowEntry* e = addSyn(t, keyOf(9), hashOf(9), 20, 9000, 10);
  ASSERT_NE(e, nullptr);
  EXPECT_TRUE(e->unestablished);
  EXPECT_EQ(t.lookup(keyOf(6), hashOf(6), 30), nullptr);
  EXPECT_EQ(t.stats().syn_evicted, 2u);
  // ... and the next one, whose bucket holds it alone among seven established flows, takes it.
  ASSERT_NE(addSyn(t, keyOf(10), hashOf(10), 30, 9000, 11), nullptr);
  EXPECT_EQ(t.lookup(keyOf(9), hashOf(9), 40), nullptr);
  // Established now: keyOf(10) is promoted, as the pipeline does on its ACK.
  t.lookup(keyOf(10), hashOf(10), 40)->unestablished = false;
  // Eight established flows: a SYN is not inserted, and evicts nothing.
  EXPECT_EQ(addSyn(t, keyOf(11), hashOf(11), 40, 9000, 12), nullptr);
  EXPECT_EQ(t.stats().evicted, 3u);
  EXPECT_EQ(t.stats().active, 8u);
  for (uint32_t i : {0u, 1u, 2u, 3u, 4u, 5u, 8u, 10u}) {
    EXPECT_NE(t.lookup(keyOf(i), hashOf(i), 50), nullptr) << i;
  }
  // An established flow still evicts the established entry that expires first (0, at 100).
  add(t, keyOf(12), hashOf(12), 50, 9000, 13);
  EXPECT_EQ(t.stats().evicted, 4u);
  EXPECT_EQ(t.stats().syn_evicted, 3u);
  EXPECT_EQ(t.lookup(keyOf(0), hashOf(0), 60), nullptr);
}

TEST(FlowTable, SynFloodLeavesEstablishedFlows) {
  // 1,000 established flows, then ten times the table's size in SYNs from random sources:
  // every established flow is still there, and the flood only churned its own entries.
  FlowTable t(4096);
  constexpr uint32_t kEstablished = 1000;
  for (uint32_t i = 0; i < kEstablished; ++i) {
    const lb_flow_key k = keyOf(i);
    add(t, k, lb_flow_hash(&k), 0, 900'000, i + 1);
  }
  std::mt19937 rng(7);
  const uint32_t flood = 10 * t.capacity();
  uint32_t not_inserted = 0;
  for (uint32_t n = 0; n < flood; ++n) {
    lb_flow_key k = keyOf(0);
    k.src[0] = static_cast<uint32_t>(rng());
    k.sport = static_cast<uint16_t>(rng());
    not_inserted += addSyn(t, k, lb_flow_hash(&k), 10 + n / 1000, 30'000 + n / 1000) == nullptr;
  }
  for (uint32_t i = 0; i < kEstablished; ++i) {
    const lb_flow_key k = keyOf(i);
    const FlowEntry* e = t.lookup(k, lb_flow_hash(&k), 1000);
    ASSERT_NE(e, nullptr) << "established flow " << i << " was evicted by the flood";
    EXPECT_EQ(e->backend_id, i + 1);
  }
  const FlowTableStats& st = t.stats();
  EXPECT_EQ(st.evicted.get(), st.syn_evicted.get()) << "only unestablished entries were evicted";
  EXPECT_GT(st.syn_evicted, flood - t.capacity() - not_inserted - 1);
  EXPECT_EQ(st.inserted, kEstablished + flood - not_inserted);
  EXPECT_EQ(st.active, t.capacity()) << "the flood filled every free entry";
  // Unestablished entries expire as any other, counted apart.
  t.sweep(t.capacity() / FlowTable::kBucketEntries, 100'000);
  EXPECT_EQ(st.active, kEstablished);
  EXPECT_EQ(st.expired.get(), st.syn_expired.get());
  EXPECT_EQ(st.syn_expired, t.capacity() - kEstablished);
}

}  // namespace
}  // namespace sluice
