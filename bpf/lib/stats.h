/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * stats.h - counter helpers. Every counter is per CPU: plain increments, no atomics.
 */
#ifndef SLUICE_BPF_STATS_H
#define SLUICE_BPF_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"

static __always_inline struct lb_cpu_counters *lb_cpu_stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&cpu_counters, &zero);
}

/*
 * Count a drop reason and return the XDP action for it. NON_IP and NO_SERVICE are counted as
 * drops, so that the counts equal the DPDK path's, but the packet goes to the kernel (ARP,
 * the host's own traffic): XDP_PASS, counted in `passed`.
 */
static __always_inline int lb_drop(struct lb_cpu_counters *cc, int reason)
{
	if ((__u32)reason < LB_DROP__COUNT)
		cc->drops[reason]++;
	if (reason == LB_DROP_NON_IP || reason == LB_DROP_NO_SERVICE) {
		cc->passed++;
		return XDP_PASS;
	}
	return XDP_DROP;
}

static __always_inline int lb_transmit(struct lb_cpu_counters *cc)
{
	cc->tx_packets++;
	return XDP_TX;
}

/* The host's own traffic, for its kernel: `passed` alone, no drop reason (toKernel()). */
static __always_inline int lb_pass(struct lb_cpu_counters *cc)
{
	cc->passed++;
	return XDP_PASS;
}

/* A request answered in place (ARP, Neighbour Solicitation, echo): sent back out of the port. */
static __always_inline int lb_answered(struct lb_cpu_counters *cc)
{
	cc->answered++;
	return lb_transmit(cc);
}

/*
 * This CPU's counters of backend id bid, made the counters of epoch if they are not yet
 * (BackendCounters::claim): a reused id starts from zero. NULL if bid is out of range.
 */
static __always_inline struct lb_backend_counters *lb_backend_stats(__u32 bid, __u32 epoch)
{
	struct lb_backend_counters *bc;

	bc = bpf_map_lookup_elem(&backend_counters, &bid);
	if (!bc)
		return NULL;
	if (bc->epoch != epoch) {
		bc->packets = 0;
		bc->bytes = 0;
		bc->flows = 0;
		bc->reply_packets = 0;
		bc->reply_bytes = 0;
		bc->epoch = epoch;
	}
	return bc;
}

#endif /* SLUICE_BPF_STATS_H */
