#include "dataplane/worker.h"

#include <rte_cycles.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>

#include <fmt/format.h>

#include <array>

#include "dataplane/eal.h"

namespace sluice {

Worker::Worker(uint32_t index, const WorkerOptions& opts, std::vector<RxQueueRef> queues,
               SnapshotSlot& slot, const std::atomic<bool>& stop)
    : index_(index),
      opts_(opts),
      queues_(std::move(queues)),
      slot_(slot),
      stop_(stop),
      pipeline_(opts.flow_capacity, opts.max_backend_ids) {
  const unsigned __int128 scaled = static_cast<unsigned __int128>(1'000'000'000ull) << 32;
  ns_mult_ = static_cast<uint64_t>(scaled / rte_get_tsc_hz());
}

uint64_t Worker::clockNs() const noexcept {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(rte_rdtsc()) * ns_mult_) >> 32);
}

uint16_t Worker::transmit(uint16_t port, rte_mbuf** pkts, uint16_t n,
                          WorkerCounters& counters) noexcept {
  uint16_t sent = 0;
  for (int attempt = 0; attempt < 4 && sent < n; ++attempt) {
    sent += rte_eth_tx_burst(port, static_cast<uint16_t>(index_), pkts + sent, n - sent);
  }
  if (sent < n) [[unlikely]] {
    counters.drops[LB_DROP_TX_FULL] += n - sent;
    for (uint16_t i = sent; i < n; ++i) {
      rte_pktmbuf_free(pkts[i]);
    }
  }
  return sent;
}

int Worker::run() noexcept {
  if (queues_.empty()) {
    return 0;  // this lcore has nothing to do
  }
  if (opts_.packet_clock) {
    ts_offset_ = rte_mbuf_dynfield_lookup(RTE_MBUF_DYNFIELD_TIMESTAMP_NAME, nullptr);
    const int bit = rte_mbuf_dynflag_lookup(RTE_MBUF_DYNFLAG_RX_TIMESTAMP_NAME, nullptr);
    ts_flag_ = bit >= 0 ? (1ull << bit) : 0;
  }
  rte_rcu_qsbr* qsv = slot_.qsbr();
  rte_rcu_qsbr_thread_register(qsv, index_);
  rte_rcu_qsbr_thread_online(qsv, index_);

  std::array<rte_mbuf*, kBurst> mbufs;
  std::array<PacketRef, kBurst> refs;
  std::array<rte_mbuf*, kBurst> out;
  std::array<rte_mbuf*, kBurst> kernel;
  WorkerCounters& counters = pipeline_.counters();
  uint64_t last_now = 0;
  uint32_t idle_passes = 0;

  while (!stop_.load(std::memory_order_relaxed)) {
    const Snapshot& snap = *slot_.current();  // once per pass: stays valid until quiescent()
    const uint64_t now = clockNs();
    if (!opts_.packet_clock) {
      last_now = now;
    }
    uint32_t got = 0;
    for (const RxQueueRef& q : queues_) {
      const uint16_t n = rte_eth_rx_burst(q.port, q.queue, mbufs.data(), kBurst);
      if (n == 0) {
        continue;
      }
      got += n;
      for (uint16_t i = 0; i < n; ++i) {
        rte_mbuf* m = mbufs[i];
        PacketRef& r = refs[i];
        r.data = rte_pktmbuf_mtod(m, uint8_t*);
        r.data_len = m->data_len;
        r.pkt_len = m->pkt_len;
        r.now_ns = now;
        if (opts_.packet_clock && ts_offset_ >= 0 && (m->ol_flags & ts_flag_) != 0) {
          r.now_ns = *RTE_MBUF_DYNFIELD(m, ts_offset_, rte_mbuf_timestamp_t*) * 1000ull;
          last_now = r.now_ns;
        }
      }
      pipeline_.process(std::span(refs.data(), n), snap, *q.ctx);

      uint16_t nout = 0;
      uint16_t nkernel = 0;
      for (uint16_t i = 0; i < n; ++i) {
        if (refs[i].transmit) {
          if (refs[i].new_len != 0 && refs[i].new_len < mbufs[i]->pkt_len) [[unlikely]] {
            rte_pktmbuf_trim(mbufs[i], static_cast<uint16_t>(mbufs[i]->pkt_len - refs[i].new_len));
          }
          out[nout++] = mbufs[i];
        } else if (refs[i].to_kernel && q.kernel_port != kNoPort) {
          kernel[nkernel++] = mbufs[i];
        } else {
          rte_pktmbuf_free(mbufs[i]);
        }
      }
      counters.tx_packets += transmit(q.port, out.data(), nout, counters);
      if (nkernel != 0) {
        transmit(q.kernel_port, kernel.data(), nkernel, counters);
      }
    }
    // What the host's kernel sends (ARP and ND of its own, SSH, BGP, health probes) leaves
    // through the NIC as it is.
    for (const RxQueueRef& q : queues_) {
      if (q.kernel_port == kNoPort) {
        continue;
      }
      const uint16_t n = rte_eth_rx_burst(q.kernel_port, q.queue, mbufs.data(), kBurst);
      if (n != 0) {
        got += n;
        counters.host_sent += transmit(q.port, mbufs.data(), n, counters);
      }
    }
    pipeline_.sweep(last_now);
    rte_rcu_qsbr_quiescent(qsv, index_);  // no Snapshot reference lives past here
    if (opts_.stop_when_idle) {
      idle_passes = got == 0 ? idle_passes + 1 : 0;
      if (idle_passes >= 4) {
        break;
      }
    }
  }
  rte_rcu_qsbr_thread_offline(qsv, index_);
  rte_rcu_qsbr_thread_unregister(qsv, index_);
  return 0;
}

}  // namespace sluice
