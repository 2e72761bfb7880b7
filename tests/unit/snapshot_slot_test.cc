// RCU publishing (src/dataplane/snapshot_slot.h): readers that hold a snapshot between two
// quiescent reports never see it freed, and every publish returns once the readers moved on.
// A reader/writer stress in the manner of DPDK's test_rcu_qsbr (reader and writer threads).
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/snapshot_slot.h"

namespace sluice {
namespace {

SnapshotPtr makeSnapshot(uint64_t generation) {
  auto s = std::make_unique<Snapshot>();
  s->generation = generation;
  ServiceEntry e;
  e.present = true;
  e.name = "gen-" + std::to_string(generation);  // heap memory the readers check
  s->services.push_back(std::move(e));
  return s;
}

TEST(SnapshotSlot, ReadersNeverSeeAFreedSnapshot) {
  constexpr uint32_t kReaders = 2;
  constexpr uint64_t kPublishes = 500;
  SnapshotSlot slot(kReaders);
  slot.publish(makeSnapshot(1));

  std::atomic<uint64_t> freed_up_to{0};  // every generation <= this has been deleted
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> violations{0};
  std::atomic<uint32_t> online{0};
  std::vector<std::thread> readers;
  for (uint32_t r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      rte_rcu_qsbr_thread_register(slot.qsbr(), r);
      rte_rcu_qsbr_thread_online(slot.qsbr(), r);
      online.fetch_add(1);
      uint64_t last = 0;
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const Snapshot* s = slot.current();
        const uint64_t g = s->generation;
        // Hold the snapshot for a while, as a worker holds it for one pass.
        for (int spin = 0; spin < 50; ++spin) {
          if (s->services[0].name != "gen-" + std::to_string(g)) {
            violations.fetch_add(1);
          }
        }
        if (g <= freed_up_to.load(std::memory_order_acquire) || g < last) {
          violations.fetch_add(1);  // freed under us, or time went backwards
        }
        last = g;
        ++n;
        rte_rcu_qsbr_quiescent(slot.qsbr(), r);
      }
      rte_rcu_qsbr_thread_offline(slot.qsbr(), r);
      rte_rcu_qsbr_thread_unregister(slot.qsbr(), r);
      reads.fetch_add(n);
    });
  }
  while (online.load() < kReaders) {
    std::this_thread::yield();  // every reader holds snapshots before the first publish
  }
  for (uint64_t g = 2; g <= kPublishes; ++g) {
    slot.publish(makeSnapshot(g));  // returns after generation g-1 was deleted
    freed_up_to.store(g - 1, std::memory_order_release);
  }
  stop.store(true);
  for (std::thread& t : readers) {
    t.join();
  }
  EXPECT_EQ(violations.load(), 0u);
  EXPECT_GT(reads.load(), kReaders);
  EXPECT_EQ(slot.current()->generation, kPublishes);
}

TEST(SnapshotSlot, PublishWithNoOnlineReaderDoesNotWait) {
  SnapshotSlot slot(4);
  for (uint64_t g = 1; g <= 100; ++g) {
    slot.publish(makeSnapshot(g));
  }
  EXPECT_EQ(slot.current()->generation, 100u);
}

}  // namespace
}  // namespace sluice
