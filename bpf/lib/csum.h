/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * csum.h - incremental one's-complement checksum update (RFC 1624, eqn. 3:
 * HC' = ~(~HC + ~m + m')), the twin of ChecksumDelta in src/dataplane/rewrite.h. The cost does
 * not depend on the payload. One's-complement addition is byte-order independent, so the
 * 16-bit words are summed as they sit in memory. The same update for a partial checksum
 * (CHECKSUM_PARTIAL, generic XDP: P' = fold(P + ~m + m')) and the folded pseudo-header sum that
 * recognises one. And the plain sum of a short header (the Neighbour Advertisement,
 * src/dataplane/host.h's onesSum()/foldComplement()).
 */
#ifndef SLUICE_BPF_CSUM_H
#define SLUICE_BPF_CSUM_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

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

/*
 * A partial checksum (CHECKSUM_PARTIAL) updated by the delta sum: the field holds a folded sum,
 * not its complement, so the update is P' = fold(P + ~m + m'). P is never 0 (a folded sum that
 * includes the protocol), and neither is the result.
 */
static __always_inline __u16 lb_csum_apply_partial(__u32 sum, __u16 p)
{
	__u32 s = sum + p;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/*
 * pseudoHeaderSum() folded: the TCP/UDP pseudo-header sum (RFC 793, RFC 768, RFC 8200 section
 * 8.1) of addr_sum (the two addresses, summed), the upper-layer length l4_len and the protocol,
 * as Linux leaves it in a partial checksum field (~tcp_v4_check(len, s, d, 0) and its twins).
 */
static __always_inline __u16 lb_csum_pseudo_fold(__u32 addr_sum, __u32 l4_len, __u8 proto)
{
	__u32 s = addr_sum + bpf_htons(l4_len >> 16) + bpf_htons(l4_len & 0xffff) +
		  bpf_htons(proto);

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* foldComplement(): the checksum (as stored) of a sum. */
static __always_inline __u16 lb_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

#endif /* SLUICE_BPF_CSUM_H */
