#include "dataplane/dpdk_dataplane.h"

#include <algorithm>

namespace sluice {

StatsTotals collectStats(std::span<const Pipeline* const> pipelines, const Snapshot& snap) {
  const size_t nbackends = snap.backends.size();
  StatsTotals t;
  t.backends.resize(nbackends);
  uint32_t index = 0;
  for (const Pipeline* p : pipelines) {
    WorkerTotals w;
    w.worker = index++;
    const WorkerCounters& c = p->counters();
    w.rx_packets = c.rx_packets;
    w.tx_packets = c.tx_packets;
    for (int r = 0; r < LB_DROP__COUNT; ++r) {
      w.drops[r] = c.drops[r];
      w.dropped += w.drops[r];
    }
    w.flows_rescheduled = c.flows_rescheduled;
    w.passed = c.passed;
    w.answered = c.answered;
    w.icmp_forwarded = c.icmp_forwarded;
    w.host_sent = c.host_sent;
    const FlowTableStats& fs = p->flows().stats();
    w.flows_created = fs.inserted;
    w.flows_expired = fs.expired;
    w.flows_syn_expired = fs.syn_expired;
    w.flows_evicted = fs.evicted;
    w.flows_syn_evicted = fs.syn_evicted;
    w.new_flows_unpinned = c.new_flows_unpinned;
    w.flows_active = fs.active;
    const auto& bc = p->backendCounters();
    for (size_t i = 0; i < std::min(nbackends, bc.size()); ++i) {
      if (!snap.backends[i].present || bc[i].epoch.get() != snap.backends[i].epoch) {
        continue;  // another (earlier) backend's counters, or none yet for this one
      }
      BackendTotals& b = t.backends[i];
      b.packets += bc[i].packets;
      b.bytes += bc[i].bytes;
      b.flows += bc[i].flows;
      b.active += bc[i].active;
      b.reply_packets += bc[i].reply_packets;
      b.reply_bytes += bc[i].reply_bytes;
    }
    for (const BackendCounters& b : bc) {
      w.reply_packets += b.reply_packets;
    }
    addTotals(t.all, w);
    t.workers.push_back(w);
  }
  return t;
}

}  // namespace sluice
