/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * xdp_lb.bpf.c - Sluice's XDP data path: the twin of the DPDK pipeline, packet for packet
 * (src/dataplane/pipeline.cc). Forwarded packets leave through the port they came in on
 * (XDP_TX); malformed packets, fragments for a VIP, and packets with no backend or no next hop
 * are dropped; traffic for no service and non-IP frames go to the kernel (XDP_PASS). Every
 * outcome is counted as the DPDK workers count it.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "lib/consts.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/stats.h"
#include "lib/lb.h"

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_cpu_counters *cc = lb_cpu_stats();
	const struct lb_nat_reply *reply;
	const struct lb_service *svc;
	struct lb_endpoint_key ek = {};
	struct lb_parsed p;
	int ret;

	if (!cc)
		return XDP_PASS;	/* not reached: a one-entry array */
	cc->rx_packets++;

	/* Without frags support the frame is linear: pkt_len == data_len. */
	ret = lb_parse(data, data_end, data_end - data, &p);
	if (ret != LB_PARSE_OK)
		return lb_drop(cc, ret);
	if (p.fragment)
		return lb_fragment(&p, cc);

	lb_dst_endpoint(&p.key, &ek);
	svc = bpf_map_lookup_elem(&services, &ek);
	if (svc)
		return lb_forward_to_backend(ctx, &p, svc, cc);

	lb_src_endpoint(&p.key, &ek);
	reply = bpf_map_lookup_elem(&nat_replies, &ek);
	if (reply)
		return lb_forward_nat_reply(ctx, &p, reply, cc);

	return lb_drop(cc, LB_DROP_NO_SERVICE);
}

char LICENSE[] SEC("license") = "BSD";
