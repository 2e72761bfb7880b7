// A statistics counter with one writer (the worker that owns it) and any number of readers (the
// control plane summing workers). Relaxed atomic load and store, no read-modify-write: on x86 an
// increment compiles to the same plain add as a uint64_t, yet a concurrent read is well defined and
// never torn. This is the per-lcore counter idiom of DPDK and Katran's per-CPU maps.
#pragma once

#include <atomic>
#include <cstdint>

namespace sluice {

class Counter {
 public:
  Counter() = default;
  Counter(const Counter& o) noexcept : v_(o.get()) {}
  Counter& operator=(const Counter& o) noexcept {
    set(o.get());
    return *this;
  }

  uint64_t get() const noexcept { return v_.load(std::memory_order_relaxed); }
  operator uint64_t() const noexcept { return get(); }  // NOLINT: reads like the number it counts
  void set(uint64_t v) noexcept { v_.store(v, std::memory_order_relaxed); }
  Counter& operator+=(uint64_t n) noexcept {
    set(get() + n);  // only the owning worker writes: no lost update
    return *this;
  }
  Counter& operator-=(uint64_t n) noexcept {
    set(get() - n);
    return *this;
  }
  Counter& operator++() noexcept { return *this += 1; }
  Counter& operator--() noexcept { return *this -= 1; }

 private:
  std::atomic<uint64_t> v_{0};
};

}  // namespace sluice
