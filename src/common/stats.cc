#include "common/stats.h"

namespace sluice {

void addTotals(WorkerTotals& into, const WorkerTotals& w) {
  into.rx_packets += w.rx_packets;
  into.tx_packets += w.tx_packets;
  for (int r = 0; r < LB_DROP__COUNT; ++r) {
    into.drops[r] += w.drops[r];
  }
  into.dropped += w.dropped;
  into.reply_packets += w.reply_packets;
  into.flows_created += w.flows_created;
  into.flows_expired += w.flows_expired;
  into.flows_syn_expired += w.flows_syn_expired;
  into.flows_evicted += w.flows_evicted;
  into.flows_syn_evicted += w.flows_syn_evicted;
  into.new_flows_unpinned += w.new_flows_unpinned;
  into.flows_active += w.flows_active;
  into.flows_rescheduled += w.flows_rescheduled;
  into.passed += w.passed;
  into.answered += w.answered;
  into.icmp_forwarded += w.icmp_forwarded;
  into.host_sent += w.host_sent;
}

void addTotals(BackendTotals& into, const BackendTotals& b) {
  into.packets += b.packets;
  into.bytes += b.bytes;
  into.flows += b.flows;
  into.active += b.active;
  into.reply_packets += b.reply_packets;
  into.reply_bytes += b.reply_bytes;
}

std::vector<ServiceStats> perService(const Snapshot& snap, const StatsTotals& totals) {
  std::vector<ServiceStats> out;
  for (const ServiceEntry& s : snap.services) {
    if (!s.present) {
      continue;
    }
    ServiceStats ss;
    ss.service = &s;
    for (uint32_t id : s.backend_ids) {
      const BackendTotals& c = id < totals.backends.size() ? totals.backends[id] : BackendTotals{};
      addTotals(ss.total, c);
      ss.backends.emplace_back(&snap.backends[id], c);
    }
    out.push_back(std::move(ss));
  }
  return out;
}

}  // namespace sluice
