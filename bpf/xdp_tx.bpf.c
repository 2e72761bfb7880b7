/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * xdp_tx.bpf.c - bounce every frame back out of its port untouched: the floor that xdp_lb's
 * throughput is measured against.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

char LICENSE[] SEC("license") = "BSD";
