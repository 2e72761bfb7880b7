/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * csum.h - incremental one's-complement checksum update (RFC 1624, eqn. 3:
 * HC' = ~(~HC + ~m + m')), the twin of ChecksumDelta in src/dataplane/rewrite.h. The cost does
 * not depend on the payload. One's-complement addition is byte-order independent, so the
 * 16-bit words are summed as they sit in memory. And the plain sum of a short header (the
 * Neighbour Advertisement, src/dataplane/host.h's onesSum()/foldComplement()).
 */
#ifndef SLUICE_BPF_CSUM_H
#define SLUICE_BPF_CSUM_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/*
 * Account for the n bytes (n even, a constant) at old_p being replaced by those at new_p.
 * sum holds at most 2 * 20 words of 0xffff: no overflow.
 */
static __always_inline __u32 lb_csum_replace(__u32 sum, const void *old_p, const void *new_p,
					     const int n)
{
	const __u16 *o = old_p;
	const __u16 *w = new_p;
	int i;

#pragma unroll
	for (i = 0; i < n / 2; i++) {
		sum += (__u16)~o[i];
		sum += w[i];
	}
	return sum;
}

/* The checksum hc (network order, as stored) updated by the delta sum. */
static __always_inline __u16 lb_csum_apply(__u32 sum, __u16 hc)
{
	__u32 s = sum + (__u16)~hc;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/*
 * onesSum(): add the n bytes at p (n even, a constant) to sum as 16-bit words in memory order.
 * A loop of constant bound, unrolled: every load is at a constant offset from p, so a single
 * check of p + n against data_end covers them all. sum stays far below 2^32 for the 72 bytes the
 * Neighbour Advertisement sums.
 */
static __always_inline __u32 lb_csum_add(__u32 sum, const void *p, const int n)
{
	const __u16 *w = p;
	int i;

#pragma unroll
	for (i = 0; i < n / 2; i++)
		sum += w[i];
	return sum;
}

/* foldComplement(): the checksum (as stored) of a sum. */
static __always_inline __u16 lb_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

#endif /* SLUICE_BPF_CSUM_H */
