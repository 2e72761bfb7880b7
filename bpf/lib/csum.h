/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * csum.h - incremental one's-complement checksum update (RFC 1624, eqn. 3:
 * HC' = ~(~HC + ~m + m')), the twin of ChecksumDelta in src/dataplane/rewrite.h. The cost does
 * not depend on the payload. One's-complement addition is byte-order independent, so the
 * 16-bit words are summed as they sit in memory.
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

#endif /* SLUICE_BPF_CSUM_H */
