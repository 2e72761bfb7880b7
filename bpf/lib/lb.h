/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * lb.h - the decisions and rewrites of the XDP data path, the twin of Pipeline::forward(),
 * toBackend() and natReply() in src/dataplane/pipeline.cc and of src/dataplane/rewrite.h. What
 * the host answers itself (ARP, ND, echo) is in host.h. ICMP errors about a flow go to its
 * other end as icmpErrorToBackend(), icmpErrorToClient() and src/dataplane/icmp_error.h send them.
 */
#ifndef SLUICE_BPF_LB_H
#define SLUICE_BPF_LB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "parse.h"
#include "csum.h"
#include "stats.h"
#include "flow_table.h"

/* The flow clock: the replay's capture time when set, else the monotonic clock. */
static __always_inline __u64 lb_now(void)
{
	__u64 t = clock_override_ns;

	return t ? t : bpf_ktime_get_ns();
}

static __always_inline __u64 lb_pack_mac(const __u8 *m)
{
	__u64 v = 0;
	int i;

#pragma unroll
	for (i = 0; i < 6; i++)
		v = v << 8 | m[i];
	return v;
}

static __always_inline void lb_unpack_mac(__u64 v, __u8 *m)
{
	int i;

#pragma unroll
	for (i = 5; i >= 0; i--) {
		m[i] = (__u8)v;
		v >>= 8;
	}
}

/* (destination address, port, protocol): the service the packet is for. */
static __always_inline void lb_dst_endpoint(const struct lb_flow_key *k,
					    struct lb_endpoint_key *e)
{
	__builtin_memcpy(e->addr, k->dst, sizeof(e->addr));
	e->port = k->dport;
	e->proto = k->proto;
	e->family = k->family;
}

/* (source address, port, protocol): the NAT backend a reply comes from. */
static __always_inline void lb_src_endpoint(const struct lb_flow_key *k,
					    struct lb_endpoint_key *e)
{
	__builtin_memcpy(e->addr, k->src, sizeof(e->addr));
	e->port = k->sport;
	e->proto = k->proto;
	e->family = k->family;
}

/* The backend with id bid, or NULL past the end of the array (epoch 0: no such backend). */
static __always_inline const struct lb_backend *lb_backend_get(__u32 bid)
{
	return bpf_map_lookup_elem(&backends, &bid);
}

/*
 * backendNextHop(): the MAC a backend's packets are sent to (its own on-link, its gateway's when
 * routed, all zero while unresolved). lb_forward_to_backend() and lb_forward_icmp_error() address
 * it and lb_from_backend_side() checks it: one value, so requests and the replies taken back
 * cannot disagree.
 */
static __always_inline const __u8 *lb_backend_next_hop(const struct lb_backend *b)
{
	return b->mac;
}

/*
 * fromBackendSide(): whether a packet from NAT backend bid's address and port (a reply, or an
 * ICMP error from behind NAT) came from that backend's next hop, its source MAC. The reply
 * rewrite is stateless, so anything else would leave from the VIP towards any destination: a
 * reflection (why, and the limit of a routed backend: Pipeline's fromBackendSide()). Nothing is
 * taken from an unresolved backend (next hop zero), nor from an id whose backend is not in the
 * map (epoch 0: a publish in progress).
 */
static __always_inline int lb_from_backend_side(void *data, void *data_end, __u32 bid)
{
	const struct lb_backend *b = lb_backend_get(bid);
	__u64 hop;

	if (!b || b->epoch == 0 || data + LB_ETH_HLEN > data_end)
		return 0;
	hop = lb_pack_mac(lb_backend_next_hop(b));
	return hop != 0 && lb_pack_mac(data + 6) == hop;
}

/* The Maglev pick: maglev[service id][hash % M], or LB_BACKEND_NONE. */
static __always_inline __u32 lb_maglev_pick(const struct lb_service *svc, __u32 hash)
{
	__u32 id = svc->id;
	__u32 m = svc->table_size;
	__u32 slot;
	__u32 *bid;
	void *table;

	if (m == 0)
		return LB_BACKEND_NONE;
	table = bpf_map_lookup_elem(&maglev, &id);
	if (!table)
		return LB_BACKEND_NONE;
	slot = hash % m;
	bid = bpf_map_lookup_elem(table, &slot);
	return bid ? *bid : LB_BACKEND_NONE;
}

/*
 * pinnedBackendValid(): whether flow f's backend b (NULL past the array) may still carry it: the
 * same service, the same backend (its id not handed to another), and not down in a service that
 * reschedules its flows.
 */
static __always_inline int lb_pinned_backend_valid(const struct lb_flow_entry *f,
						   const struct lb_service *svc,
						   const struct lb_backend *b)
{
	return f->service_id == svc->id && b && b->epoch != 0 && b->epoch == f->backend_epoch &&
	       !(b->flags & LB_BACKEND_F_RESCHEDULE);
}

/* Record the NAT client's router (the source MAC) if it changed. */
static __always_inline void lb_learn_gateway(void *data, void *data_end)
{
	__u32 zero = 0;
	__u64 *gw;
	__u64 mac;

	if (data + LB_ETH_HLEN > data_end)
		return;
	gw = bpf_map_lookup_elem(&learned_gw, &zero);
	if (!gw)
		return;
	mac = lb_pack_mac(data + 6);
	if (*gw != mac)
		*gw = mac;
}

/* rewriteMacs(): new destination and source MAC. */
static __always_inline int lb_rewrite_macs(void *data, void *data_end, const __u8 *dst,
					   const __u8 *src)
{
	if (data + LB_ETH_HLEN > data_end)
		return -1;
	__builtin_memcpy(data, dst, 6);
	__builtin_memcpy(data + 6, src, 6);
	return 0;
}

/*
 * rewriteL3L4(): replace one address and one port of a parsed TCP/UDP packet and fix the
 * checksums incrementally. which_dst: destination (NAT forward) or source (NAT reply).
 * addr: 4 or 16 bytes in network order; port_be: network order.
 *
 * Where partial checksums can occur (csum_partial_possible: generic XDP), a TCP/UDP checksum
 * field equal to the folded pseudo-header sum of the packet as received is taken as partial
 * (CHECKSUM_PARTIAL). The skb keeps that state through XDP_TX, and whoever completes it later (a
 * NIC, or skb_checksum_help on a router's egress device without offload) sums the segment from
 * csum_start with the field as the seed. So the field must stay partial: only the address enters
 * the update (P' = fold(P + ~m + m') over the pseudo-header words); the port is in the segment
 * that is summed later. The DPDK pipeline completes such checksums instead (rewrite.h,
 * completePartialChecksum), because its packet socket transmissions are taken as complete; here
 * a completed field would be summed again as a seed, and be wrong.
 * The residual risk: a complete checksum that happens to equal the pseudo-header sum (1 in 65536
 * of the complete checksums seen in generic mode, e.g. generic XDP on a NIC) is updated as a
 * partial one, and that packet leaves with a bad checksum. The program cannot see skb->ip_summed.
 *
 * Returns -1 only if a header the parser checked is not there (never: for the verifier).
 */
static __always_inline int lb_rewrite_l3l4(void *data, void *data_end, const struct lb_parsed *p,
					   int which_dst, const __u32 *addr, __u16 port_be)
{
	__u8 *ip = data + (p->l3_off & LB_HDR_OFF_MASK);
	__u8 *l4 = data + (p->l4_off & LB_HDR_OFF_MASK);
	int tcp = p->key.proto == LB_PROTO_TCP;
	int v4 = p->key.family == LB_FAMILY_IPV4;
	__u32 received = 0;	/* the addresses as received, summed (for the partial test) */
	__u8 *addr_at;
	__u8 *port_at;
	__u16 *csum_at;
	__u32 pseudo;
	__u32 l4sum;
	__u16 cur;

	if (tcp) {
		if ((void *)(l4 + LB_TCP_HLEN) > data_end)
			return -1;
		csum_at = (__u16 *)(l4 + 16);
	} else {
		if ((void *)(l4 + LB_UDP_HLEN) > data_end)
			return -1;
		csum_at = (__u16 *)(l4 + 6);
	}
	port_at = l4 + (which_dst ? 2 : 0);

	/* The address is in the IPv4 header sum and in the L4 pseudo-header. It is written in the
	 * branch that checked its header: the verifier cannot tell that a second test of the
	 * family takes the same way. */
	if (v4) {
		if ((void *)(ip + LB_IPV4_HLEN) > data_end)
			return -1;
		addr_at = ip + (which_dst ? 16 : 12);
		if (csum_partial_possible)
			received = lb_csum_add(0, ip + 12, 8);
		pseudo = lb_csum_replace(0, addr_at, addr, 4);
		*(__u16 *)(ip + 10) = lb_csum_apply(pseudo, *(__u16 *)(ip + 10));
		__builtin_memcpy(addr_at, addr, 4);
	} else {
		if ((void *)(ip + LB_IPV6_HLEN) > data_end)
			return -1;
		addr_at = ip + (which_dst ? 24 : 8);
		if (csum_partial_possible)
			received = lb_csum_add(0, ip + 8, 32);
		pseudo = lb_csum_replace(0, addr_at, addr, 16);
		__builtin_memcpy(addr_at, addr, 16);
	}
	cur = *csum_at;
	if (!tcp && v4 && cur == 0) {
		/* An IPv4 UDP checksum 0 means "none" and stays so. */
	} else if (csum_partial_possible &&
		   cur == lb_csum_pseudo_fold(received, p->l3_end - p->l4_off, p->key.proto)) {
		/* Partial: the pseudo-header words alone, and never 0 (so no 0xffff case). */
		*csum_at = lb_csum_apply_partial(pseudo, cur);
	} else {
		l4sum = lb_csum_replace(pseudo, port_at, &port_be, 2);
		cur = lb_csum_apply(l4sum, cur);
		if (cur == 0 && !tcp)
			cur = 0xffff;	/* a computed UDP 0 is sent as all ones (RFC 768) */
		*csum_at = cur;
	}
	*(__u16 *)port_at = port_be;
	return 0;
}

/*
 * A fragment has no ports and cannot be scheduled without reassembly: the host's own go to its
 * kernel, which reassembles (passed, no drop reason); for a VIP address it counts as a fragment
 * drop; otherwise as traffic for no service.
 */
static __always_inline int lb_fragment(const struct lb_parsed *p, struct lb_cpu_counters *cc)
{
	struct lb_endpoint_key dst = {};

	__builtin_memcpy(dst.addr, p->key.dst, sizeof(dst.addr));
	dst.family = p->key.family;	/* port 0, proto 0: the address alone */
	if (bpf_map_lookup_elem(&local_addrs, &dst))
		return lb_pass(cc);
	if (bpf_map_lookup_elem(&vip_addrs, &dst))
		return lb_drop(cc, LB_DROP_FRAGMENT);
	return lb_drop(cc, LB_DROP_NO_SERVICE);
}

/*
 * This CPU's flow table (flow_sigs and flows): its own, or on a virtual interface the one all
 * slots hold. 0 when found; -1 only if the loader left a slot empty (it fills every possible CPU's).
 */
static __always_inline int lb_flow_table(struct lb_flow_table *t)
{
	__u32 cpu = bpf_get_smp_processor_id();

	t->sigs = bpf_map_lookup_elem(&flow_sigs, &cpu);
	t->entries = bpf_map_lookup_elem(&flows, &cpu);
	return t->sigs && t->entries ? 0 : -1;
}

/* Whether addr may be a VIP address or one of Sluice's own (addr_filter): else neither. */
static __always_inline int lb_may_be_ours(const __u32 *addr)
{
	__u32 bit = lb_addr_filter_bit(addr);
	__u32 word = bit >> 6;
	__u64 *bits = bpf_map_lookup_elem(&addr_filter, &word);

	return bits && (*bits >> (bit & 63)) & 1;
}

/* Whether a NAT backend has source port port_be (nat_reply_ports): else no reply lookup. */
static __always_inline int lb_may_be_nat_reply(__u16 port_be)
{
	__u32 word = port_be >> 6;
	__u64 *bits = bpf_map_lookup_elem(&nat_reply_ports, &word);

	return bits && (*bits >> (port_be & 63)) & 1;
}

/*
 * Pipeline::overNewFlowRate(): the per-CPU new-flow rate guard (Katran's is_under_flood(), a
 * one-second window): whether a new flow at now exceeds new_flow_rate_limit flows per second,
 * and so is forwarded by its Maglev pick alone, without an entry.
 */
static __always_inline int lb_over_new_flow_rate(__u64 now)
{
	__u64 limit = new_flow_rate_limit;
	struct lb_rate_window *w;
	__u32 zero = 0;

	if (limit == 0)
		return 0;
	w = bpf_map_lookup_elem(&new_flow_window, &zero);
	if (!w)
		return 0;	/* not reached: a one-entry array */
	if (now - w->start_ns >= LB_NSEC_PER_SEC) {	/* also when the clock went back */
		w->start_ns = now;
		w->flows = 0;
	}
	if (w->flows >= limit)
		return 1;
	w->flows++;
	return 0;
}

/*
 * toBackend(): a client packet for service svc, whose flow's live entry (lb_flow_lookup() in
 * table, the flow hash hash, the clock now) is e or none. Keep the flow's backend while it is valid,
 * else pick one with Maglev; update the flow's entry (in place) and its expiry; rewrite; transmit.
 * A SYN's entry is unestablished, second-class in the table (flow_table.h), with the tcp_syn
 * timeout, until a packet without SYN or RST (the client's ACK) is seen on it: a SYN flood churns
 * its own entries only, as on the DPDK path, whose table this one is.
 */
static __always_inline int lb_forward_to_backend(struct xdp_md *ctx, const struct lb_parsed *p,
						 const struct lb_service *svc,
						 struct lb_cpu_counters *cc,
						 const struct lb_flow_table *table, __u32 hash,
						 __u64 now, struct lb_flow_entry *e)
{
	const int tcp = p->key.proto == LB_PROTO_TCP;
	const __u8 flags = p->tcp_flags;
	const int syn = tcp && (flags & LB_TCP_SYN);
	const struct lb_backend *b = NULL;
	struct lb_backend_counters *bc;
	void *data_end;
	void *data;
	__u32 bid = LB_BACKEND_NONE;
	__u64 timeout;
	int pick = !e;

	if (e) {
		bid = e->backend_id;
		b = lb_backend_get(bid);
		if (!lb_pinned_backend_valid(e, svc, b)) {
			/* its backend is gone, or down in a service that reschedules */
			cc->flows_rescheduled++;
			pick = 1;
		} else if (tcp && (flags & (LB_TCP_SYN | LB_TCP_ACK)) == LB_TCP_SYN &&
			   (e->state == LB_FLOW_CLOSING || (b->flags & LB_BACKEND_F_NO_NEW))) {
			/* a new connection on the ports of one that closed, or pinned to a
			 * backend that cannot serve it (down, maintenance, unresolved) */
			pick = 1;
		}
	}
	if (pick) {
		bid = lb_maglev_pick(svc, hash);
		if (bid == LB_BACKEND_NONE)
			return lb_drop(cc, LB_DROP_NO_BACKEND);
		b = lb_backend_get(bid);
		if (!b || b->epoch == 0)	/* a slot ahead of its backend (map update) */
			return lb_drop(cc, LB_DROP_NO_BACKEND);
		if (!e) {
			/* Above the rate, or a SYN with no room but an established flow's: forwarded
			 * by the Maglev pick alone, which a later packet of the flow gets again
			 * unless the table changes (Katran's LRU bypass). */
			if (!lb_over_new_flow_rate(now))
				e = lb_flow_place(table, &p->key, hash, now, syn, cc);
			if (e)
				cc->flows_created++;
			else
				cc->new_flows_unpinned++;
		}
		if (e) {
			e->service_id = svc->id;
			e->backend_id = bid;
			e->backend_epoch = b->epoch;
			e->state = syn ? LB_FLOW_SYN_RECV : LB_FLOW_ACTIVE;
			bc = lb_backend_stats(bid, b->epoch);
			if (bc)
				bc->flows++;
		}
	}
	if (!b)
		return lb_drop(cc, LB_DROP_NO_BACKEND);	/* not reached */

	if (e) {
		timeout = udp_timeout_ns;
		if (tcp) {
			if (!(flags & (LB_TCP_SYN | LB_TCP_RST))) {
				/* the handshake completed (the client's ACK, or data) */
				e->unestablished = 0;
				if (e->state == LB_FLOW_SYN_RECV)
					e->state = LB_FLOW_ACTIVE;
			}
			if (flags & (LB_TCP_FIN | LB_TCP_RST))
				e->state = LB_FLOW_CLOSING;
			timeout = e->state == LB_FLOW_CLOSING	   ? tcp_fin_timeout_ns
				  : e->state == LB_FLOW_SYN_RECV ? tcp_syn_timeout_ns
								   : tcp_timeout_ns;
		}
		e->expires_ns = now + timeout;
	}

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (svc->forwarding == LB_FWD_NAT) {
		/* Learned only for a family without a gateway MAC: the one its replies use. */
		if (!(p->key.family == LB_FAMILY_IPV4 ? has_gateway : has_gateway6))
			lb_learn_gateway(data, data_end);
		if (lb_rewrite_l3l4(data, data_end, p, 1, b->addr, b->port))
			return lb_drop(cc, LB_DROP_TRUNCATED);
	}
	if (lb_rewrite_macs(data, data_end, lb_backend_next_hop(b), port_mac))
		return lb_drop(cc, LB_DROP_TRUNCATED);
	bc = lb_backend_stats(bid, b->epoch);
	if (bc) {
		bc->packets++;
		bc->bytes += p->pkt_len;
	}
	return lb_transmit(cc);
}

/* Whether svc (of service_by_id) is the service of key's destination address, port and protocol. */
static __always_inline int lb_service_is_for(const struct lb_service *svc,
					     const struct lb_flow_key *key)
{
	return svc->table_size != 0 && svc->port == key->dport && svc->proto == key->proto &&
	       svc->family == key->family &&
	       ((svc->addr[0] ^ key->dst[0]) | (svc->addr[1] ^ key->dst[1]) |
		(svc->addr[2] ^ key->dst[2]) | (svc->addr[3] ^ key->dst[3])) == 0;
}

/*
 * Step 5 of Pipeline::forward(): a packet for a service goes to its backend; returns the XDP
 * action, or -1 when it is for no service. The DPDK path looks the service up, then the flow.
 * Here a flow with a live entry comes first, its service taken from the entry's id and checked
 * against the packet's destination (the same service the lookup would find: one id per service
 * key), which spares an established flow the services hash lookup; anything else (no entry, an
 * expired one, a service gone or changed) takes the DPDK path's order. The first look changes
 * nothing (lb_flow_peek), so both orders count and reclaim alike. What it costs: a packet that
 * passes addr_filter but is for no service (the host's own, a VIP's other ports) pays the flow hash
 * and the look before its lookups. The loader clears a removed service's service_by_id entry
 * before its `services` key (XdpDataplane::apply), so that the two orders agree during a publish.
 */
static __always_inline int lb_to_service(struct xdp_md *ctx, const struct lb_parsed *p,
					 struct lb_cpu_counters *cc)
{
	struct lb_endpoint_key ek = {};
	const struct lb_service *svc = NULL;
	struct lb_flow_entry *e = NULL;
	__u64 now = lb_now();
	__u32 hash = lb_flow_hash(&p->key);
	struct lb_flow_table table;
	int have_table = lb_flow_table(&table) == 0;
	__u32 sid;

	if (have_table) {
		e = lb_flow_peek(&table, &p->key, hash);
		if (e && e->expires_ns > now) {
			sid = e->service_id;
			svc = bpf_map_lookup_elem(&service_by_id, &sid);
			if (svc && !lb_service_is_for(svc, &p->key))
				svc = NULL;
		}
	}
	if (!svc) {
		lb_dst_endpoint(&p->key, &ek);
		svc = bpf_map_lookup_elem(&services, &ek);
		if (!svc)
			return -1;
		if (!have_table)
			return lb_drop(cc, LB_DROP_NO_BACKEND);	/* not reached: every slot is filled */
		/* The look found no entry of the key: nor would the lookup (a new flow). */
		if (e)
			e = lb_flow_lookup(&table, &p->key, hash, now, cc);
	}
	return lb_forward_to_backend(ctx, p, svc, cc, &table, hash, now, e);
}

/*
 * natNextHop(): the next hop of what goes back to clients (NAT replies, errors from behind NAT):
 * the configured gateway MAC of the family, else the router learned from client packets. Returns
 * -1 when there is neither.
 */
static __always_inline int lb_nat_next_hop(__u8 family, __u8 *next_hop)
{
	__u32 zero = 0;
	__u64 *gw;
	__u64 learned;

	if (family == LB_FAMILY_IPV4 && has_gateway) {
		__builtin_memcpy(next_hop, gateway_mac, 6);
		return 0;
	}
	if (family != LB_FAMILY_IPV4 && has_gateway6) {
		__builtin_memcpy(next_hop, gateway_mac6, 6);
		return 0;
	}
	gw = bpf_map_lookup_elem(&learned_gw, &zero);
	learned = gw ? *gw : 0;
	if (learned == 0)
		return -1;
	lb_unpack_mac(learned, next_hop);
	return 0;
}

/* countReply(): a packet of len bytes sent back to a client for v's backend. */
static __always_inline void lb_count_reply(const struct lb_nat_reply *v, __u64 len)
{
	__u32 bid = v->backend_id;
	const struct lb_backend *b = lb_backend_get(bid);
	struct lb_backend_counters *bc = lb_backend_stats(bid, b ? b->epoch : 0);

	if (bc) {
		bc->reply_packets++;
		bc->reply_bytes += len;
	}
}

/*
 * natReply(): a NAT backend's reply, taken only from the backend's next hop (else
 * nat_reply_mac, whatever accept_any_mac says: it concerns the destination MAC). Stateless:
 * rewrite the source back to the VIP and send it to the gateway of its family (configured or
 * resolved), else to the router learned from client packets.
 */
static __always_inline int lb_forward_nat_reply(struct xdp_md *ctx, const struct lb_parsed *p,
						const struct lb_nat_reply *v,
						struct lb_cpu_counters *cc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct lb_service *svc;
	__u32 sid = v->service_id;
	__u8 next_hop[6];

	if (!lb_from_backend_side(data, data_end, v->backend_id))
		return lb_drop(cc, LB_DROP_NAT_REPLY_MAC);
	if (lb_nat_next_hop(p->key.family, next_hop))
		return lb_drop(cc, LB_DROP_NO_NEXT_HOP);
	svc = bpf_map_lookup_elem(&service_by_id, &sid);
	if (!svc || svc->table_size == 0)	/* a reply ahead of its service (map update) */
		return lb_drop(cc, LB_DROP_NO_SERVICE);

	if (lb_rewrite_l3l4(data, data_end, p, 0, svc->addr, svc->port))
		return lb_drop(cc, LB_DROP_TRUNCATED);
	if (lb_rewrite_macs(data, data_end, next_hop, port_mac))
		return lb_drop(cc, LB_DROP_TRUNCATED);
	lb_count_reply(v, p->pkt_len);
	return lb_transmit(cc);
}

/*
 * rewriteIcmpError(), NAT: the error rewritten as the other end of the flow must see it, as if
 * the packet it quotes had not been translated. to_backend (a constant): an error to the VIP
 * about a reply, for the backend; the outer destination VIP becomes addr, and in the quote the
 * source VIP:vport becomes addr:port_be. Else an error from behind NAT about a client packet, for
 * the client; the outer source becomes addr, and in the quote the destination backend:bport
 * becomes addr:port_be (the VIP:vport). Updated incrementally (RFC 1624): the outer IPv4 header
 * checksum, the quoted IPv4 header checksum, and the ICMP checksum, which covers the whole
 * message and so the quote's address, port and header checksum (RFC 792), and for ICMPv6 the
 * pseudo-header with the outer addresses too (RFC 4443 section 2.3). The quoted TCP/UDP checksum
 * is left as it is: the quote is usually cut short of the segment it sums, and the receiving
 * stack does not check it (IPVS's ip_vs_nat_icmp() leaves it too).
 * Returns -1 only if a header the parser checked is not there (never: for the verifier).
 */
static __always_inline int lb_rewrite_icmp_error(void *data, void *data_end,
						 const struct lb_parsed *p,
						 const struct lb_icmp_error *e,
						 const int to_backend, const __u32 *addr,
						 __u16 port_be)
{
	__u8 *ip = data + (p->l3_off & LB_HDR_OFF_MASK);
	__u8 *icmp = data + (p->l4_off & LB_HDR_OFF_MASK);
	__u8 *inner = data + (e->inner_l3 & LB_HDR_OFF_MASK);
	__u8 *th = data + (e->inner_l4 & LB_HDR_OFF_MASK);
	__u8 *port_at = th + (to_backend ? 0 : 2);
	__u8 *outer_addr;
	__u8 *inner_addr;
	__u16 old_csum;
	__u16 new_csum;
	__u32 quoted;
	__u32 msg;

	if ((void *)(icmp + LB_ICMP_HLEN) > data_end || (void *)(th + 4) > data_end)
		return -1;
	if (p->key.family == LB_FAMILY_IPV4) {
		if ((void *)(ip + LB_IPV4_HLEN) > data_end ||
		    (void *)(inner + LB_IPV4_HLEN) > data_end)
			return -1;
		outer_addr = ip + (to_backend ? 16 : 12);
		inner_addr = inner + (to_backend ? 12 : 16);
		msg = lb_csum_replace(0, outer_addr, addr, 4);
		*(__u16 *)(ip + 10) = lb_csum_apply(msg, *(__u16 *)(ip + 10));
		__builtin_memcpy(outer_addr, addr, 4);
		quoted = lb_csum_replace(0, inner_addr, addr, 4);
		old_csum = *(__u16 *)(inner + 10);
		new_csum = lb_csum_apply(quoted, old_csum);
		msg = lb_csum_replace(quoted, &old_csum, &new_csum, 2);
		*(__u16 *)(inner + 10) = new_csum;
		__builtin_memcpy(inner_addr, addr, 4);
	} else {
		if ((void *)(ip + LB_IPV6_HLEN) > data_end ||
		    (void *)(inner + LB_IPV6_HLEN) > data_end)
			return -1;
		outer_addr = ip + (to_backend ? 24 : 8);
		inner_addr = inner + (to_backend ? 8 : 24);
		msg = lb_csum_replace(0, outer_addr, addr, 16);	/* in the pseudo-header */
		msg = lb_csum_replace(msg, inner_addr, addr, 16);
		__builtin_memcpy(outer_addr, addr, 16);
		__builtin_memcpy(inner_addr, addr, 16);
	}
	msg = lb_csum_replace(msg, port_at, &port_be, 2);
	*(__u16 *)(icmp + 2) = lb_csum_apply(msg, *(__u16 *)(icmp + 2));
	*(__u16 *)port_at = port_be;
	return 0;
}

/*
 * icmpErrorToBackend(): an ICMP error about a flow of svc goes to the backend the flow's next
 * client packet would reach: this CPU's entry's while it is live and valid, else the Maglev pick
 * a new flow would get. An error is not traffic of the flow: the entry is neither created nor
 * refreshed.
 */
static __always_inline int lb_forward_icmp_error(struct xdp_md *ctx, const struct lb_parsed *p,
						 const struct lb_icmp_error *e,
						 const struct lb_service *svc,
						 struct lb_cpu_counters *cc)
{
	const struct lb_backend *b = NULL;
	struct lb_backend_counters *bc;
	struct lb_flow_entry *f;
	__u32 bid = LB_BACKEND_NONE;
	void *data_end;
	void *data;
	__u64 now = lb_now();
	__u32 hash = lb_flow_hash(&e->key);
	struct lb_flow_table table;

	if (lb_flow_table(&table) != 0)
		return lb_drop(cc, LB_DROP_NO_BACKEND);	/* not reached: every slot is filled */
	f = lb_flow_lookup(&table, &e->key, hash, now, cc);
	if (f) {
		b = lb_backend_get(f->backend_id);
		if (lb_pinned_backend_valid(f, svc, b))
			bid = f->backend_id;
		else
			b = NULL;
	}
	if (!b) {
		bid = lb_maglev_pick(svc, hash);
		if (bid == LB_BACKEND_NONE)
			return lb_drop(cc, LB_DROP_NO_BACKEND);
		b = lb_backend_get(bid);
		if (!b || b->epoch == 0)	/* a slot ahead of its backend (map update) */
			return lb_drop(cc, LB_DROP_NO_BACKEND);
	}

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (svc->forwarding == LB_FWD_NAT &&
	    lb_rewrite_icmp_error(data, data_end, p, e, 1, b->addr, b->port))
		return lb_drop(cc, LB_DROP_TRUNCATED);
	if (lb_rewrite_macs(data, data_end, lb_backend_next_hop(b), port_mac))
		return lb_drop(cc, LB_DROP_TRUNCATED);
	cc->icmp_forwarded++;
	bc = lb_backend_stats(bid, b->epoch);
	if (bc) {
		bc->packets++;
		bc->bytes += p->pkt_len;
	}
	return lb_transmit(cc);
}

/*
 * icmpErrorToClient(): an ICMP error from behind NAT about a client's packet to the NAT backend
 * of v goes to the client, as if about its packet to the VIP: stateless, as a NAT reply, and so
 * taken from the backend's next hop only, as a NAT reply is. The outer source becomes the VIP
 * whoever sent the error, the backend or a router behind Sluice, as IPVS and netfilter's NAT do
 * (why: Pipeline::icmpErrorToClient()).
 */
static __always_inline int lb_forward_icmp_reply(struct xdp_md *ctx, const struct lb_parsed *p,
						 const struct lb_icmp_error *e,
						 const struct lb_nat_reply *v,
						 struct lb_cpu_counters *cc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct lb_service *svc;
	__u32 sid = v->service_id;
	__u8 next_hop[6];

	if (!lb_from_backend_side(data, data_end, v->backend_id))
		return lb_drop(cc, LB_DROP_NAT_REPLY_MAC);
	if (lb_nat_next_hop(p->key.family, next_hop))
		return lb_drop(cc, LB_DROP_NO_NEXT_HOP);
	svc = bpf_map_lookup_elem(&service_by_id, &sid);
	if (!svc || svc->table_size == 0)	/* ahead of its service (map update) */
		return lb_drop(cc, LB_DROP_NO_SERVICE);

	if (lb_rewrite_icmp_error(data, data_end, p, e, 0, svc->addr, svc->port))
		return lb_drop(cc, LB_DROP_TRUNCATED);
	if (lb_rewrite_macs(data, data_end, next_hop, port_mac))
		return lb_drop(cc, LB_DROP_TRUNCATED);
	cc->icmp_forwarded++;
	lb_count_reply(v, p->pkt_len);
	return lb_transmit(cc);
}

/*
 * The ICMP error step of Pipeline::forward(). To a VIP (dst, the outer destination's address
 * key), an error about a flow of one of its services goes to the flow's backend, and a quote cut
 * short or malformed is dropped. To another address, an error about a client's packet to a NAT
 * backend goes to the client; a bad quote there goes on as before, nothing tying it to Sluice.
 * Returns the XDP action, or -1 when the packet is no such error (the caller goes on).
 */
static __always_inline int lb_icmp_error(struct xdp_md *ctx, const struct lb_parsed *p,
					 const struct lb_endpoint_key *dst,
					 struct lb_cpu_counters *cc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct lb_nat_reply *reply;
	const struct lb_service *svc;
	struct lb_endpoint_key ek;
	struct lb_icmp_error e;
	int to_vip;
	int ret;

	if (!lb_is_icmp_error(data, data_end, p))
		return -1;
	to_vip = bpf_map_lookup_elem(&vip_addrs, dst) != NULL;
	ret = lb_parse_icmp_error(data, data_end, p, &e);
	if (ret >= 0 && to_vip)
		return lb_drop(cc, ret);
	if (ret != LB_PARSE_OK)
		return -1;
	if (to_vip) {
		lb_dst_endpoint(&e.key, &ek);
		svc = bpf_map_lookup_elem(&services, &ek);
		if (!svc)
			return -1;
		return lb_forward_icmp_error(ctx, p, &e, svc, cc);
	}
	lb_src_endpoint(&e.key, &ek);
	reply = bpf_map_lookup_elem(&nat_replies, &ek);
	if (!reply)
		return -1;
	return lb_forward_icmp_reply(ctx, p, &e, reply, cc);
}

#endif /* SLUICE_BPF_LB_H */
