/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * xdp_lb.bpf.c - Sluice's XDP data path: the twin of the DPDK pipeline, packet for packet
 * (src/dataplane/pipeline.cc, Pipeline::forward and Pipeline::host), decision for decision in the
 * same order. Forwarded packets, ICMP errors about a flow (sent on to its backend, or from behind
 * NAT to its client) and the answers to ARP, Neighbour Solicitations and echo requests leave
 * through the port they came in on (XDP_TX); frames for another MAC, malformed packets (and ICMP
 * errors to a VIP with a malformed quote), fragments for a VIP, and packets with no backend or no
 * next hop are dropped; the host's own
 * traffic, traffic for no service and non-IP frames go to the kernel (XDP_PASS). Every outcome is
 * counted as the DPDK workers count it.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "lib/consts.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/stats.h"
#include "lib/lb.h"
#include "lib/host.h"

/*
 * xdp.frags: the program takes multi-buffer frames (jumbo frames, and BPF_PROG_TEST_RUN input
 * beyond a page), whose headers are in the linear part [data, data_end) and the rest in
 * fragments. Without it a frame longer than the linear part would be checked against the
 * linear part's length and dropped as bad_ip_length, where the DPDK path, which checks headers
 * against the first segment and IP lengths against the whole packet, forwards it.
 */
SEC("xdp.frags")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_cpu_counters *cc = lb_cpu_stats();
	const struct lb_nat_reply *reply;
	struct lb_endpoint_key ek = {};
	struct lb_parsed p;
	int ours;		/* the destination may be a VIP or Sluice's own (addr_filter) */
	int ret;

	if (!cc)
		return XDP_PASS;	/* not reached: a one-entry array */
	cc->rx_packets++;

	/* 1. Flooded by a switch: another host's to forward. (A frame shorter than an Ethernet
	 * header never reaches an XDP program.) */
	if (!accept_any_mac && data + LB_ETH_HLEN <= data_end && !lb_frame_is_for_port(data))
		return lb_drop(cc, LB_DROP_NOT_FOR_US);

	/* The whole frame's length, as the DPDK path's pkt_len (data_len: data_end - data). */
	ret = lb_parse(data, data_end, bpf_xdp_get_buff_len(ctx), &p);
	if (ret != LB_PARSE_OK) {
		if (ret == LB_DROP_NON_IP)
			return lb_host(ctx, cc);	/* 2. ARP answered, the rest to the kernel */
		return lb_drop(cc, ret);		/* 3. */
	}
	if (p.fragment)
		return lb_fragment(&p, cc);		/* 4. */

	ours = lb_may_be_ours(p.key.dst);
	if (ours) {
		ret = lb_to_service(ctx, &p, cc);	/* 5. */
		if (ret >= 0)
			return ret;
	}

	if (p.key.proto == LB_IPPROTO_ICMPV6) {		/* 6. */
		ret = lb_solicit(ctx, &p, cc);
		if (ret >= 0)
			return ret;
	}

	lb_address_key(p.key.dst, p.key.family, &ek);	/* 7. the host's own */
	if (ours && bpf_map_lookup_elem(&local_addrs, &ek))
		return lb_pass(cc);

	if (p.key.proto == LB_IPPROTO_ICMP || p.key.proto == LB_IPPROTO_ICMPV6) {	/* 8. */
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (lb_is_echo_request(data, data_end, &p) && bpf_map_lookup_elem(&vip_addrs, &ek)) {
			/* A VIP answers ping, as an IPVS host does. */
			if (lb_answer_echo(data, data_end, &p) != 0)
				return lb_drop(cc, LB_DROP_TRUNCATED);	/* not reached */
			return lb_answered(cc);
		}
	}

	ret = lb_icmp_error(ctx, &p, &ek, cc);		/* 9. an error about a flow */
	if (ret >= 0)
		return ret;

	if (lb_may_be_nat_reply(p.key.sport)) {		/* 10. */
		lb_src_endpoint(&p.key, &ek);
		reply = bpf_map_lookup_elem(&nat_replies, &ek);
		if (reply)
			return lb_forward_nat_reply(ctx, &p, reply, cc);
	}

	return lb_drop(cc, LB_DROP_NO_SERVICE);		/* 11. */
}

char LICENSE[] SEC("license") = "BSD";
