/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * flow_table.h - the XDP path's flow table, the DPDK workers' FlowTable (src/dataplane/
 * flow_table.h and flow_table.cc) step for step: buckets of eight entries with a signature each,
 * two candidate buckets per key (two-choice hashing), a new flow in the emptier one; when both are
 * full the unestablished entry of the sixteen closest to expiry is evicted, an established one
 * only for an established flow, and a SYN that finds sixteen established entries gets none. The
 * same hash (lb_flow_hash, also the Maglev pick's), the same bucket functions and the same slot
 * order: fed the same packets, both tables hold the same flows in the same slots and evict the
 * same ones. What the DPDK table has and this has not is the sweep (a poll loop's background
 * work): here an expired entry is reclaimed when a lookup or an insert meets it.
 *
 * When one table serves every CPU (FlowTableScope::kShared: a virtual interface), two CPUs may
 * write one bucket at once, as they wrote one LRU value in place before: a flow may then lose its
 * entry or read another's half-written one. Either way the validity checks (service, backend id
 * and epoch) or the key comparison turn it into a miss, and the flow's next packet takes the
 * Maglev pick, the same backend unless the table changed; no lock is taken on the hot path.
 */
#ifndef SLUICE_BPF_FLOW_TABLE_H
#define SLUICE_BPF_FLOW_TABLE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "stats.h"

/* FlowTable::signature(): 0 marks a free slot. */
static __always_inline __u32 lb_flow_signature(__u32 hash)
{
	return hash | 1u;
}

/* FlowTable::primary(): the key's first bucket, from the hash's low bits. */
static __always_inline __u32 lb_flow_primary(__u32 hash)
{
	return hash & flow_bucket_mask;
}

/* FlowTable::secondary(): the second, from a remix of the hash (never the first, unless the
 * table has one bucket). */
static __always_inline __u32 lb_flow_secondary(__u32 hash)
{
	__u32 mask = flow_bucket_mask;
	__u32 h = hash * 0x9e3779b1u;
	__u32 b;

	h ^= h >> 16;
	b = h & mask;
	if (b == (hash & mask))
		b ^= 1u & mask;
	return b;
}

/* flowKeyEqual(): the 40 bytes of the key, as ten words (the stack copy is 4-aligned). */
static __always_inline int lb_flow_key_equal(const struct lb_flow_key *a,
					     const struct lb_flow_key *b)
{
	const __u32 *x = (const __u32 *)a;
	const __u32 *y = (const __u32 *)b;
	__u32 diff = 0;
	int i;

#pragma unroll
	for (i = 0; i < (int)(sizeof(*a) / sizeof(__u32)); i++)
		diff |= x[i] ^ y[i];
	return diff == 0;
}

/* FlowTable::expire(): the entry in slot i of bk has expired; its slot is free again. */
static __always_inline void lb_flow_expire(struct lb_flow_bucket *bk, __u32 i,
					   struct lb_cpu_counters *cc)
{
	i &= LB_FLOW_BUCKET_ENTRIES - 1;
	bk->sig[i] = 0;
	cc->flows_expired++;
	if (bk->entry[i].unestablished)
		cc->flows_syn_expired++;
}

/*
 * The entry of key in bucket bk (NULL: none). An entry found expired is reclaimed and reported as
 * none, after which the DPDK table looks no further either. *stop is set when the search ends
 * here, found or expired.
 */
static __always_inline struct lb_flow_entry *lb_flow_find(struct lb_flow_bucket *bk,
							  const struct lb_flow_key *key, __u32 sig,
							  __u64 now, struct lb_cpu_counters *cc,
							  int *stop)
{
	struct lb_flow_entry *e;
	__u32 i;

	for (i = 0; i < LB_FLOW_BUCKET_ENTRIES; i++) {
		if (bk->sig[i] != sig)
			continue;
		e = &bk->entry[i];
		if (!lb_flow_key_equal(&e->key, key))
			continue;
		*stop = 1;
		if (e->expires_ns <= now) {
			lb_flow_expire(bk, i, cc);
			return NULL;
		}
		return e;
	}
	return NULL;
}

/* The entry of key in bucket bk, live or expired, or NULL; nothing is changed. */
static __always_inline struct lb_flow_entry *lb_flow_peek_in(struct lb_flow_bucket *bk,
							     const struct lb_flow_key *key,
							     __u32 sig)
{
	__u32 i;

	for (i = 0; i < LB_FLOW_BUCKET_ENTRIES; i++) {
		if (bk->sig[i] == sig && lb_flow_key_equal(&bk->entry[i].key, key))
			return &bk->entry[i];
	}
	return NULL;
}

/* The bucket with index b of table, or NULL (never: b is masked to the table's size). */
static __always_inline struct lb_flow_bucket *lb_flow_bucket_at(void *table, __u32 b)
{
	return bpf_map_lookup_elem(table, &b);
}

/* FlowTable::lookup(): the live entry of key (whose flow hash is hash), or NULL. */
static __always_inline struct lb_flow_entry *lb_flow_lookup(void *table,
							    const struct lb_flow_key *key,
							    __u32 hash, __u64 now,
							    struct lb_cpu_counters *cc)
{
	__u32 sig = lb_flow_signature(hash);
	struct lb_flow_bucket *bk;
	struct lb_flow_entry *e;
	int stop = 0;

	bk = lb_flow_bucket_at(table, lb_flow_primary(hash));
	if (!bk)
		return NULL;
	e = lb_flow_find(bk, key, sig, now, cc, &stop);
	if (stop)
		return e;
	bk = lb_flow_bucket_at(table, lb_flow_secondary(hash));
	if (!bk)
		return NULL;
	return lb_flow_find(bk, key, sig, now, cc, &stop);
}

/*
 * The entry lb_flow_lookup() would look at for key, live or expired (the caller tells), or NULL;
 * unlike lb_flow_lookup() it reclaims nothing, so that looking before the service is known
 * changes nothing the DPDK path, which looks after, would not change.
 */
static __always_inline struct lb_flow_entry *lb_flow_peek(void *table,
							  const struct lb_flow_key *key,
							  __u32 hash)
{
	__u32 sig = lb_flow_signature(hash);
	struct lb_flow_bucket *bk;
	struct lb_flow_entry *e;

	bk = lb_flow_bucket_at(table, lb_flow_primary(hash));
	if (!bk)
		return NULL;
	e = lb_flow_peek_in(bk, key, sig);
	if (e)
		return e;
	bk = lb_flow_bucket_at(table, lb_flow_secondary(hash));
	if (!bk)
		return NULL;
	return lb_flow_peek_in(bk, key, sig);
}

/* What FlowTable::place() learns of the two buckets; a slot is 8 * bucket + index. */
struct lb_flow_scan {
	__u32 free_slot[2];	/* the first free (or reclaimed) slot of each bucket; ~0: none */
	__u32 used[2];
	__u32 victim;		/* the established entry that expires first; ~0: none */
	__u64 victim_expiry;
	__u32 syn_victim;	/* the unestablished one */
	__u64 syn_victim_expiry;
};

/*
 * place()'s look at bucket which (0 or 1) of the two: expired entries reclaimed, the rest ranked.
 * A global function, so that the verifier checks it once on its own: inlined twice, the ranking's
 * branches multiply the states it walks past its limit of a million instructions.
 */
__attribute__((noinline)) int lb_flow_scan_bucket(struct lb_flow_bucket *bk, __u32 which,
						  __u64 now, struct lb_cpu_counters *cc,
						  struct lb_flow_scan *s)
{
	struct lb_flow_entry *e;
	__u32 i;

	if (!bk || !cc || !s)
		return -1;
	which &= 1;
	for (i = 0; i < LB_FLOW_BUCKET_ENTRIES; i++) {
		e = &bk->entry[i];
		if (bk->sig[i] != 0 && e->expires_ns <= now)
			lb_flow_expire(bk, i, cc);	/* expired: reclaim it now */
		if (bk->sig[i] == 0) {
			if (s->free_slot[which] == ~0u)
				s->free_slot[which] = which * LB_FLOW_BUCKET_ENTRIES + i;
			continue;
		}
		s->used[which]++;
		if (e->unestablished) {
			if (e->expires_ns < s->syn_victim_expiry) {
				s->syn_victim_expiry = e->expires_ns;
				s->syn_victim = which * LB_FLOW_BUCKET_ENTRIES + i;
			}
		} else if (e->expires_ns < s->victim_expiry) {
			s->victim_expiry = e->expires_ns;
			s->victim = which * LB_FLOW_BUCKET_ENTRIES + i;
		}
	}
	return 0;
}

/*
 * FlowTable::insert() (unestablished 0) and insertUnestablished() (1): a slot for a new flow of
 * key, which the caller fills but for the key and the unestablished mark. A free or expired slot
 * in the emptier bucket, else the unestablished entry of the two buckets that expires first, else
 * for an established flow the established one that does (evictions counted). NULL when a SYN finds
 * sixteen established entries: it does not push one out (the caller forwards it without an entry).
 */
static __always_inline struct lb_flow_entry *lb_flow_place(void *table,
							   const struct lb_flow_key *key,
							   __u32 hash, __u64 now,
							   const int unestablished,
							   struct lb_cpu_counters *cc)
{
	struct lb_flow_scan s = {
		.free_slot = {~0u, ~0u},
		.victim = ~0u,
		.victim_expiry = ~0ull,
		.syn_victim = ~0u,
		.syn_victim_expiry = ~0ull,
	};
	struct lb_flow_bucket *b0 = lb_flow_bucket_at(table, lb_flow_primary(hash));
	struct lb_flow_bucket *b1 = lb_flow_bucket_at(table, lb_flow_secondary(hash));
	struct lb_flow_bucket *bk;
	struct lb_flow_entry *e;
	__u32 slot;
	__u32 i;

	if (!b0 || !b1)
		return NULL;
	lb_flow_scan_bucket(b0, 0, now, cc, &s);
	lb_flow_scan_bucket(b1, 1, now, cc, &s);
	if (s.free_slot[0] != ~0u && (s.free_slot[1] == ~0u || s.used[0] <= s.used[1])) {
		slot = s.free_slot[0];
	} else if (s.free_slot[1] != ~0u) {
		slot = s.free_slot[1];
	} else if (s.syn_victim != ~0u) {
		slot = s.syn_victim;
		cc->flows_evicted++;
		cc->flows_syn_evicted++;
	} else if (!unestablished && s.victim != ~0u) {
		slot = s.victim;
		cc->flows_evicted++;
	} else {
		return NULL;	/* sixteen established flows: a SYN does not push one out */
	}
	bk = slot < LB_FLOW_BUCKET_ENTRIES ? b0 : b1;
	i = slot & (LB_FLOW_BUCKET_ENTRIES - 1);
	bk->sig[i] = lb_flow_signature(hash);
	e = &bk->entry[i];
	e->key = *key;
	e->unestablished = unestablished;
	return e;
}

#endif /* SLUICE_BPF_FLOW_TABLE_H */
