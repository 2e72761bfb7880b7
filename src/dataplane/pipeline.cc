#include "dataplane/pipeline.h"

#include <algorithm>
#include <cstring>

#include "dataplane/host.h"
#include "dataplane/rewrite.h"

namespace sluice {

namespace {

uint64_t packMac(const uint8_t* m) noexcept {
  uint64_t v = 0;
  for (int i = 0; i < 6; ++i) {
    v = v << 8 | m[i];
  }
  return v;
}

void unpackMac(uint64_t v, uint8_t* m) noexcept {
  for (int i = 5; i >= 0; --i) {
    m[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}

EndpointKey dstEndpoint(const lb_flow_key& k) noexcept {
  EndpointKey e;
  std::memcpy(e.addr, k.dst, sizeof(e.addr));
  e.port = k.dport;
  e.proto = k.proto;
  e.family = k.family;
  return e;
}

/** The key of an address alone (port 0, protocol 0), as local_addresses and vip_addresses hold. */
EndpointKey addressKey(const uint32_t* addr, uint8_t family) noexcept {
  EndpointKey e{};
  std::memcpy(e.addr, addr, sizeof(e.addr));
  e.family = family;
  return e;
}

EndpointKey srcEndpoint(const lb_flow_key& k) noexcept {
  EndpointKey e;
  std::memcpy(e.addr, k.src, sizeof(e.addr));
  e.port = k.sport;
  e.proto = k.proto;
  e.family = k.family;
  return e;
}

/**
 * Whether a flow entry's backend may still carry it: the same service, the same backend (its id
 * not handed to another), and not down in a service that reschedules its flows.
 */
bool pinnedBackendValid(const FlowEntry& e, const ServiceEntry& svc,
                        const Snapshot& snap) noexcept {
  const uint32_t bid = e.backend_id;
  return e.service_id == svc.id && bid < snap.backends.size() && snap.backends[bid].present &&
         snap.backends[bid].epoch == e.backend_epoch &&
         (snap.backends[bid].flags & LB_BACKEND_F_RESCHEDULE) == 0;
}

/**
 * The MAC a backend's packets are sent to: the backend's own when it is on-link, its gateway's
 * when it is routed (configured, or resolved by the control plane: BackendEntry::mac,
 * snapshot_builder.cc); all zero while unresolved (a configured MAC is never zero). toBackend()
 * and icmpErrorToBackend() address this very value and fromBackendSide() checks it, so the MAC
 * requests go to and the MAC replies are taken from cannot disagree.
 */
const uint8_t* backendNextHop(const BackendEntry& b) noexcept { return b.mac; }

/**
 * Whether a packet from NAT backend b's address and port (a reply, or an ICMP error from behind
 * NAT about a packet sent to b) came from where b's replies come from: its source MAC is b's next
 * hop. The reply rewrite is stateless, so without this check any frame with b's address and port
 * as its source, spoofed on the link or sent in through the clients' router, would leave from the
 * VIP towards any destination: a reflection. Per-flow state cannot decide instead: a reply may
 * reach another worker than the one holding its flow's entry, which is why the rewrite is
 * stateless (docs/architecture.md, "NAT replies on another core"). An unresolved backend is out of
 * the Maglev table and has no MAC to send to; it has no side to come from either, so nothing is
 * taken from it (the zero MAC the snapshot holds for it included). The limit: a routed backend's
 * next hop is its gateway, and a reply spoofed from behind that gateway carries its MAC too
 * (docs/architecture.md says what to filter there). The XDP twin is lb_from_backend_side()
 * (bpf/lib/lb.h).
 */
bool fromBackendSide(const uint8_t* frame, const BackendEntry& b) noexcept {
  const uint64_t hop = packMac(backendNextHop(b));
  return hop != 0 && packMac(frame + 6) == hop;
}

/**
 * The next hop of what goes back to clients (NAT replies, errors from behind NAT): the configured
 * gateway MAC of the family, else the router learned from client packets.
 * @return false when there is neither
 */
bool natNextHop(const Snapshot& snap, bool v4, const PortContext& port,
                uint8_t next_hop[6]) noexcept {
  if (v4 ? snap.has_gateway_mac : snap.has_gateway_mac6) {
    std::memcpy(next_hop, v4 ? snap.gateway_mac : snap.gateway_mac6, 6);
    return true;
  }
  // Relaxed: a hint, published with no other data (toBackend() stores it).
  const uint64_t learned = port.learned_gateway.load(std::memory_order_relaxed);
  if (learned == 0) {
    return false;
  }
  unpackMac(learned, next_hop);
  return true;
}

}  // namespace

Pipeline::Pipeline(uint32_t flow_capacity, uint32_t max_backend_ids)
    : flows_(flow_capacity), backend_counters_(max_backend_ids) {
  flows_.setBackendCounters(backend_counters_.data());  // the table unpins on every removal
}

void Pipeline::process(std::span<PacketRef> burst, const Snapshot& snap,
                       PortContext& port) noexcept {
  // Stage 1: parse and hash; start fetching the flow buckets so that stage 2 finds them cached.
  for (PacketRef& p : burst) {
    p.status = parsePacket(p.data, p.data_len, p.pkt_len, p.parsed);
    if (p.status == kParseOk) [[likely]] {
      p.hash = lb_flow_hash(&p.parsed.key);
      flows_.prefetch(p.hash);
    }
  }
  // Stage 2: with the signatures cached, start fetching the matching entries.
  for (PacketRef& p : burst) {
    if (p.status == kParseOk) [[likely]] {
      flows_.prefetchEntry(p.hash);
    }
  }
  // Stage 3: decide and rewrite.
  counters_.rx_packets += burst.size();
  for (PacketRef& p : burst) {
    p.transmit = forward(p, snap, port);
  }
}

bool Pipeline::forward(PacketRef& p, const Snapshot& snap, PortContext& port) noexcept {
  p.to_kernel = false;
  p.new_len = 0;
  if (p.data_len >= LB_ETH_HLEN && !port.accept_any_mac && !frameIsForPort(p.data, port.mac))
      [[unlikely]] {
    return drop(LB_DROP_NOT_FOR_US);  // flooded by a switch: another host's to forward
  }
  if (p.status != kParseOk) [[unlikely]] {
    if (p.status == LB_DROP_NON_IP) {
      return host(p, snap, port);
    }
    return drop(p.status);
  }
  const lb_flow_key& k = p.parsed.key;
  if (port.complete_partial_checksums &&
      completePartialChecksum(p.data, p.data_len, p.parsed)) [[unlikely]] {
    ++counters_.checksums_completed;
  }
  if (p.parsed.fragment) [[unlikely]] {
    // Without reassembly a non-first fragment has no ports: it cannot be scheduled. Fragments
    // for a VIP are counted as such; the host's own go to its kernel, which reassembles.
    const EndpointKey dst = addressKey(k.dst, k.family);
    if (snap.local_addresses.find(dst) != nullptr) {
      return toKernel(p);
    }
    if (snap.vip_addresses.find(dst) != nullptr) {
      return drop(LB_DROP_FRAGMENT);
    }
    return toKernel(p, LB_DROP_NO_SERVICE);
  }
  if (const EndpointMap::Value* v = snap.service_map.find(dstEndpoint(k)); v != nullptr) {
    return toBackend(p, snap, snap.services[v->service_id], port);
  }
  if (k.proto == LB_IPPROTO_ICMPV6) [[unlikely]] {
    const uint8_t* target =
        solicitTarget(p.data, p.parsed, std::min<uint32_t>(p.parsed.l3_end, p.data_len));
    if (target != nullptr) {
      uint32_t words[4];
      std::memcpy(words, target, 16);
      const EndpointKey t = addressKey(words, LB_FAMILY_IPV6);
      if (snap.local_addresses.find(t) != nullptr || snap.vip_addresses.find(t) != nullptr) {
        p.new_len = answerSolicit(p.data, p.parsed, port.mac);
        return answered();
      }
    }
  }
  const EndpointKey dst = addressKey(k.dst, k.family);
  if (snap.local_addresses.size() != 0 && snap.local_addresses.find(dst) != nullptr) {
    return toKernel(p);  // the host's own: SSH, BGP, ping, health-check answers
  }
  if ((k.proto == LB_IPPROTO_ICMP || k.proto == LB_IPPROTO_ICMPV6) &&
      isEchoRequest(p.data, p.parsed, p.data_len) && snap.vip_addresses.find(dst) != nullptr)
      [[unlikely]] {
    answerEcho(p.data, p.parsed, port.mac);  // a VIP answers ping, as an IPVS host does
    return answered();
  }
  if (isIcmpError(p.data, p.parsed, p.data_len)) [[unlikely]] {
    // To a VIP, a router's error about a backend's reply (PMTU discovery): to that backend.
    // Elsewhere, an error from behind NAT about a client's packet to a NAT backend: to the
    // client. One whose quote names no service of the VIP, or no NAT backend, goes on as before,
    // to the kernel; so does a bad quote not sent to a VIP, which nothing ties to Sluice.
    const bool to_vip = snap.vip_addresses.find(dst) != nullptr;
    IcmpError e;
    const int status = parseIcmpError(p.data, p.parsed, p.data_len, e);
    if (status >= 0 && to_vip) {
      return drop(status);
    }
    if (status == kParseOk) {
      if (to_vip) {
        if (const EndpointMap::Value* v = snap.service_map.find(dstEndpoint(e.key));
            v != nullptr) {
          return icmpErrorToBackend(p, snap, snap.services[v->service_id], e, port);
        }
      } else if (const EndpointMap::Value* v = snap.nat_reply_map.find(srcEndpoint(e.key));
                 v != nullptr) {
        return icmpErrorToClient(p, snap, *v, e, port);
      }
    }
  }
  if (const EndpointMap::Value* v = snap.nat_reply_map.find(srcEndpoint(k)); v != nullptr) {
    return natReply(p, snap, *v, port);
  }
  return toKernel(p, LB_DROP_NO_SERVICE);
}

bool Pipeline::host(PacketRef& p, const Snapshot& snap, PortContext& port) noexcept {
  // Not IPv4 or IPv6: an ARP request for one of the host's addresses or VIPs is answered here,
  // everything else (ARP replies to the kernel's own requests, LLDP, ...) goes to the kernel.
  const uint32_t off = arpOffset(p.data, p.data_len);
  uint32_t target = 0;
  if (off != 0 && off + LB_ARP_LEN <= p.data_len && arpRequestTarget(p.data + off, &target)) {
    const uint32_t words[4] = {target, 0, 0, 0};
    const EndpointKey t = addressKey(words, LB_FAMILY_IPV4);
    if (snap.local_addresses.find(t) != nullptr || snap.vip_addresses.find(t) != nullptr) {
      answerArp(p.data, p.data + off, port.mac);
      return answered();
    }
  }
  return toKernel(p, LB_DROP_NON_IP);
}

bool Pipeline::toBackend(PacketRef& p, const Snapshot& snap, const ServiceEntry& svc,
                         PortContext& port) noexcept {
  const lb_flow_key& k = p.parsed.key;
  const bool tcp = k.proto == LB_PROTO_TCP;
  const uint8_t flags = p.parsed.tcp_flags;
  // A SYN opens a connection whose handshake is still to complete: its entry is unestablished
  // (second-class in the table, flow_table.h) with the short tcp_syn timeout until a packet
  // without SYN or RST (the client's ACK) is seen on it. A SYN-ACK counts as a SYN: no client
  // sends one, so it is attack traffic (or a reflection) as much as a SYN is.
  const bool syn = tcp && (flags & kTcpSyn) != 0;
  FlowEntry* e = flows_.lookup(k, p.hash, p.now_ns);
  bool pick = (e == nullptr);
  if (e != nullptr) {
    const uint32_t bid = e->backend_id;
    if (!pinnedBackendValid(*e, svc, snap)) [[unlikely]] {
      ++counters_.flows_rescheduled;  // its backend is gone: a TCP peer will likely see a reset
      pick = true;
    } else if (tcp && (flags & (kTcpSyn | kTcpAck)) == kTcpSyn &&
               (e->state == FlowState::kClosing ||
                (snap.backends[bid].flags & LB_BACKEND_F_NO_NEW) != 0)) {
      // A new connection reusing the ports of one that closed, or pinned to a backend that
      // cannot serve it (down, in maintenance, unresolved).
      pick = true;
    }
  }
  uint32_t bid = 0;
  if (pick) {
    bid = svc.pick(p.hash);
    if (bid == LB_BACKEND_NONE) [[unlikely]] {
      return drop(LB_DROP_NO_BACKEND);
    }
    if (e == nullptr) {
      // Above the rate, or a SYN with no room but an established flow's: forwarded by the
      // Maglev pick alone, which a later packet of the flow gets again unless the table changes
      // (Katran's LRU bypass; consistent hashing is what makes it safe).
      if (!overNewFlowRate(p.now_ns, snap.new_flow_rate_limit)) [[likely]] {
        e = syn ? flows_.insertUnestablished(k, p.hash, p.now_ns)
                : &flows_.insert(k, p.hash, p.now_ns);
      }
      if (e == nullptr) [[unlikely]] {
        ++counters_.new_flows_unpinned;
      }
    } else {
      flows_.unpin(*e);  // re-pinned: it no longer counts for its old backend
    }
    if (e != nullptr) {
      e->service_id = svc.id;
      e->backend_id = bid;
      e->backend_epoch = snap.backends[bid].epoch;
      e->state = syn ? FlowState::kSynRecv : FlowState::kActive;
      BackendCounters& nc = backend_counters_[bid];
      nc.claim(e->backend_epoch);
      ++nc.flows;
      ++nc.active;
    }
  }
  if (e != nullptr) {
    bid = e->backend_id;
    uint64_t timeout = snap.udp_timeout_ns;
    if (tcp) {
      if ((flags & (kTcpSyn | kTcpRst)) == 0) {
        // The handshake completed (the client's ACK, or data): established from now on.
        e->unestablished = false;
        if (e->state == FlowState::kSynRecv) {
          e->state = FlowState::kActive;
        }
      }
      if (flags & (kTcpFin | kTcpRst)) {
        e->state = FlowState::kClosing;
      }
      timeout = e->state == FlowState::kClosing   ? snap.tcp_fin_timeout_ns
                : e->state == FlowState::kSynRecv ? snap.tcp_syn_timeout_ns
                                                  : snap.tcp_timeout_ns;
    }
    e->expires_ns = p.now_ns + timeout;
  }

  const BackendEntry& b = snap.backends[bid];
  if (svc.forwarding == Forwarding::kNat) {
    if (!(k.family == LB_FAMILY_IPV4 ? snap.has_gateway_mac : snap.has_gateway_mac6)) {
      const uint64_t client_mac = packMac(p.data + 6);
      if (port.learned_gateway.load(std::memory_order_relaxed) != client_mac) [[unlikely]] {
        // Relaxed: the value is a hint for replies; no other data is published with it.
        port.learned_gateway.store(client_mac, std::memory_order_relaxed);
      }
    }
    rewriteL3L4(p.data, p.parsed, true, b.addr, b.port_be);
  }
  rewriteMacs(p.data, backendNextHop(b), port.mac);
  BackendCounters& bc = backend_counters_[bid];
  bc.claim(b.epoch);
  ++bc.packets;
  bc.bytes += p.pkt_len;
  return true;
}

bool Pipeline::icmpErrorToBackend(PacketRef& p, const Snapshot& snap, const ServiceEntry& svc,
                                  const IcmpError& e, PortContext& port) noexcept {
  // The backend the flow's next client packet would reach: its entry's while that is valid, else
  // the Maglev pick a new flow would get. An error is not traffic of the flow: the entry is
  // neither created nor refreshed, and a lookup only expires what has expired.
  const uint32_t hash = lb_flow_hash(&e.key);
  const FlowEntry* f = flows_.lookup(e.key, hash, p.now_ns);
  const uint32_t bid =
      f != nullptr && pinnedBackendValid(*f, svc, snap) ? f->backend_id : svc.pick(hash);
  if (bid == LB_BACKEND_NONE) [[unlikely]] {
    return drop(LB_DROP_NO_BACKEND);
  }
  const BackendEntry& b = snap.backends[bid];
  if (svc.forwarding == Forwarding::kNat) {
    rewriteIcmpError(p.data, p.parsed, e, true, b.addr, b.port_be);
  }
  rewriteMacs(p.data, backendNextHop(b), port.mac);
  ++counters_.icmp_forwarded;
  BackendCounters& bc = backend_counters_[bid];
  bc.claim(b.epoch);
  ++bc.packets;
  bc.bytes += p.pkt_len;
  return true;
}

bool Pipeline::natReply(PacketRef& p, const Snapshot& snap, const EndpointMap::Value& v,
                        PortContext& port) noexcept {
  // Who sent it before where it goes: what is not from the backend's side is no reply at all.
  // accept_any_mac (replay, a promiscuous port) lifts the destination MAC check only: a bump in
  // the wire sees the same spoofed frames, and a replay is to show what live traffic would get.
  if (!fromBackendSide(p.data, snap.backends[v.backend_id])) [[unlikely]] {
    return drop(LB_DROP_NAT_REPLY_MAC);
  }
  uint8_t next_hop[6];
  if (!natNextHop(snap, p.parsed.key.family == LB_FAMILY_IPV4, port, next_hop)) [[unlikely]] {
    return drop(LB_DROP_NO_NEXT_HOP);
  }
  const ServiceEntry& svc = snap.services[v.service_id];
  rewriteL3L4(p.data, p.parsed, false, svc.key.addr, svc.key.port);
  rewriteMacs(p.data, next_hop, port.mac);
  countReply(p, snap, v);
  return true;
}

bool Pipeline::icmpErrorToClient(PacketRef& p, const Snapshot& snap, const EndpointMap::Value& v,
                                 const IcmpError& e, PortContext& port) noexcept {
  // Sent on from the VIP as a reply is, so taken from the backend's side only, as a reply is: the
  // backend itself or a router behind its next hop (the next hop's MAC either way).
  if (!fromBackendSide(p.data, snap.backends[v.backend_id])) [[unlikely]] {
    return drop(LB_DROP_NAT_REPLY_MAC);
  }
  uint8_t next_hop[6];
  if (!natNextHop(snap, p.parsed.key.family == LB_FAMILY_IPV4, port, next_hop)) [[unlikely]] {
    return drop(LB_DROP_NO_NEXT_HOP);
  }
  // The outer source becomes the VIP whoever sent the error, the backend's kernel or a router
  // behind Sluice, as IPVS (ip_vs_nat_icmp() for ip_vs_out_icmp()) and netfilter's NAT
  // (nf_nat_icmp_reply_translation()) do. The client's stack matches an error by its quote
  // alone (RFC 1122 section 3.2.2, RFC 4443 section 2.4), so the VIP costs it nothing; the
  // addresses of the network NAT hides, often private ones, would leak and could be dropped on
  // the way by source address filtering (RFC 1918 section 3, RFC 2827, RFC 6752), and the error
  // lost with them. What is lost: a traceroute sees the VIP for a hop behind Sluice, as behind
  // any NAT.
  const ServiceEntry& svc = snap.services[v.service_id];
  rewriteIcmpError(p.data, p.parsed, e, false, svc.key.addr, svc.key.port);
  rewriteMacs(p.data, next_hop, port.mac);
  ++counters_.icmp_forwarded;
  countReply(p, snap, v);
  return true;
}

void Pipeline::countReply(const PacketRef& p, const Snapshot& snap,
                          const EndpointMap::Value& v) noexcept {
  BackendCounters& bc = backend_counters_[v.backend_id];
  bc.claim(snap.backends[v.backend_id].epoch);
  ++bc.reply_packets;
  bc.reply_bytes += p.pkt_len;
}

}  // namespace sluice
