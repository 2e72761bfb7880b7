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
 * write one bucket at once (no lock is taken on the hot path): two new flows may take one free
 * slot, one losing its entry, or a CPU may meet an entry another is still filling in, which
 * lb_flow_place() leaves expired until its caller writes the expiry last. The loser and the
 * half-written entry turn into a miss, and such a flow's next packet takes the Maglev pick, the
 * same backend unless the table changed; the counters of a shared table may then count a flow
 * twice or reclaim one early (docs/json.md). With RSS (a table per CPU) none of this can happen.
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

/* FlowTable::bucketOf(): hash onto [0, flow_buckets) by its high bits (multiply-shift). */
static __always_inline __u32 lb_flow_bucket_of(__u32 hash)
{
	return (__u32)(((__u64)hash * flow_buckets) >> 32);
}

/* FlowTable::primary(): the key's first bucket. */
static __always_inline __u32 lb_flow_primary(__u32 hash)
{
	return lb_flow_bucket_of(hash);
}

/* FlowTable::secondary(): the second, from a remix of the hash (never the first, unless the
 * table has one bucket). */
static __always_inline __u32 lb_flow_secondary(__u32 hash)
{
	__u32 h = hash * 0x9e3779b1u;
	__u32 b;

	h ^= h >> 16;
	b = lb_flow_bucket_of(h);
	if (b == lb_flow_bucket_of(hash))
		b = b + 1 == flow_buckets ? 0 : b + 1;
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

/* This CPU's flow table: its own, or on a virtual interface the one every CPU's slot holds. */
struct lb_flow_table {
	void *sigs;	/* inner map of flow_sigs: struct lb_flow_sigs per bucket */
	void *entries;	/* inner map of flows: struct lb_flow_bucket per bucket */
};

/* Bucket b of the table: its signatures and its entries (NULL: never, b is below flow_buckets). */
static __always_inline struct lb_flow_sigs *lb_flow_sigs_at(const struct lb_flow_table *t, __u32 b)
{
	return bpf_map_lookup_elem(t->sigs, &b);
}

static __always_inline struct lb_flow_bucket *lb_flow_entries_at(const struct lb_flow_table *t,
								 __u32 b)
{
	return bpf_map_lookup_elem(t->entries, &b);
}

/* FlowTable::expire(): entry i of a bucket has expired; its slot is free again. */
static __always_inline void lb_flow_expire(struct lb_flow_sigs *sg, struct lb_flow_bucket *bk,
					   __u32 i, struct lb_cpu_counters *cc)
{
	i &= LB_FLOW_BUCKET_ENTRIES - 1;
	sg->sig[i] = 0;
	cc->flows_expired++;
	if (bk->entry[i].unestablished)
		cc->flows_syn_expired++;
}

/*
 * The slot of key in bucket b (its entry found through its signature, live or expired), or -1.
 * *bk is set to the bucket's entries when a signature matched.
 */
static __always_inline int lb_flow_find(const struct lb_flow_table *t, __u32 b,
					const struct lb_flow_key *key, __u32 sig,
					struct lb_flow_sigs **sgp, struct lb_flow_bucket **bkp)
{
	struct lb_flow_sigs *sg = lb_flow_sigs_at(t, b);
	struct lb_flow_bucket *bk = NULL;
	__u32 i;

	*sgp = sg;
	if (!sg)
		return -1;
	for (i = 0; i < LB_FLOW_BUCKET_ENTRIES; i++) {
		if (sg->sig[i] != sig)
			continue;
		if (!bk) {
			bk = lb_flow_entries_at(t, b);
			if (!bk)
				return -1;
		}
		if (lb_flow_key_equal(&bk->entry[i].key, key)) {
			*bkp = bk;
			return (int)i;
		}
	}
	return -1;
}

/*
 * The entry of key that FlowTable::lookup() looks at (the first whose signature and key match, in
 * the first bucket, then the second), live or expired, or NULL; *sgp, *bkp and *slot say where.
 */
static __always_inline struct lb_flow_entry *lb_flow_locate(const struct lb_flow_table *t,
							    const struct lb_flow_key *key,
							    __u32 hash, struct lb_flow_sigs **sgp,
							    struct lb_flow_bucket **bkp, __u32 *slot)
{
	__u32 sig = lb_flow_signature(hash);
	struct lb_flow_bucket *bk = NULL;
	int i;

	i = lb_flow_find(t, lb_flow_primary(hash), key, sig, sgp, &bk);
	if (i < 0)
		i = lb_flow_find(t, lb_flow_secondary(hash), key, sig, sgp, &bk);
	if (i < 0 || !bk || !*sgp)
		return NULL;
	*bkp = bk;
	*slot = (__u32)i & (LB_FLOW_BUCKET_ENTRIES - 1);
	return &bk->entry[*slot];
}

/*
 * The entry lb_flow_lookup() would look at for key, live or expired (the caller tells), or NULL;
 * unlike lb_flow_lookup() it reclaims nothing, so that looking before the service is known
 * changes nothing the DPDK path, which looks after, would not change.
 */
static __always_inline struct lb_flow_entry *lb_flow_peek(const struct lb_flow_table *t,
							  const struct lb_flow_key *key,
							  __u32 hash)
{
	struct lb_flow_sigs *sg = NULL;
	struct lb_flow_bucket *bk = NULL;
	__u32 slot = 0;

	return lb_flow_locate(t, key, hash, &sg, &bk, &slot);
}

/* FlowTable::lookup(): the live entry of key (whose flow hash is hash), or NULL. An entry found
 * expired is reclaimed and reported as none. */
static __always_inline struct lb_flow_entry *lb_flow_lookup(const struct lb_flow_table *t,
							    const struct lb_flow_key *key,
							    __u32 hash, __u64 now,
							    struct lb_cpu_counters *cc)
{
	struct lb_flow_sigs *sg = NULL;
	struct lb_flow_bucket *bk = NULL;
	struct lb_flow_entry *e;
	__u32 slot = 0;

	e = lb_flow_locate(t, key, hash, &sg, &bk, &slot);
	if (!e || !sg || !bk)
		return NULL;
	if (e->expires_ns <= now) {
		lb_flow_expire(sg, bk, slot, cc);
		return NULL;
	}
	return e;
}

/* What FlowTable::place() learns of the two buckets; a slot is 8 * bucket + index. */
/* (No padding: a global function's stack argument must be initialised to the last byte.) */
struct lb_flow_scan {
	__u64 now;		/* (here: a BPF function takes five arguments at most) */
	__u64 victim_expiry;
	__u64 syn_victim_expiry;
	__u32 free_slot[2];	/* the first free (or reclaimed) slot of each bucket; ~0: none */
	__u32 used[2];
	__u32 victim;		/* the established entry that expires first; ~0: none */
	__u32 syn_victim;	/* the unestablished one */
};

/*
 * place()'s look at bucket which (0 or 1) of the two: expired entries reclaimed, the rest ranked.
 * A global function, so that the verifier checks it once on its own: inlined twice, the ranking's
 * branches multiply the states it walks past its limit of a million instructions.
 */
__attribute__((noinline)) int lb_flow_scan_bucket(struct lb_flow_sigs *sg,
						  struct lb_flow_bucket *bk, __u32 which,
						  struct lb_cpu_counters *cc, struct lb_flow_scan *s)
{
	struct lb_flow_entry *e;
	__u32 i;

	if (!sg || !bk || !cc || !s)
		return -1;
	which &= 1;
	for (i = 0; i < LB_FLOW_BUCKET_ENTRIES; i++) {
		e = &bk->entry[i];
		if (sg->sig[i] != 0 && e->expires_ns <= s->now)
			lb_flow_expire(sg, bk, i, cc);	/* expired: reclaim it now */
		if (sg->sig[i] == 0) {
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
static __always_inline struct lb_flow_entry *lb_flow_place(const struct lb_flow_table *t,
							   const struct lb_flow_key *key,
							   __u32 hash, __u64 now,
							   const int unestablished,
							   struct lb_cpu_counters *cc)
{
	struct lb_flow_scan s = {
		.now = now,
		.free_slot = {~0u, ~0u},
		.victim = ~0u,
		.victim_expiry = ~0ull,
		.syn_victim = ~0u,
		.syn_victim_expiry = ~0ull,
	};
	__u32 b0 = lb_flow_primary(hash);
	__u32 b1 = lb_flow_secondary(hash);
	struct lb_flow_sigs *sg0 = lb_flow_sigs_at(t, b0);
	struct lb_flow_sigs *sg1 = lb_flow_sigs_at(t, b1);
	struct lb_flow_bucket *bk0 = lb_flow_entries_at(t, b0);
	struct lb_flow_bucket *bk1 = lb_flow_entries_at(t, b1);
	struct lb_flow_sigs *sg;
	struct lb_flow_bucket *bk;
	struct lb_flow_entry *e;
	__u32 slot;
	__u32 i;

	if (!sg0 || !sg1 || !bk0 || !bk1)
		return NULL;
	lb_flow_scan_bucket(sg0, bk0, 0, cc, &s);
	lb_flow_scan_bucket(sg1, bk1, 1, cc, &s);
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
	sg = slot < LB_FLOW_BUCKET_ENTRIES ? sg0 : sg1;
	bk = slot < LB_FLOW_BUCKET_ENTRIES ? bk0 : bk1;
	i = slot & (LB_FLOW_BUCKET_ENTRIES - 1);
	e = &bk->entry[i];
	/* The key and an expiry in the past before the signature: on a shared table another CPU
	 * that finds the signature and the key before the caller has filled the entry in takes it
	 * for an expired one, never for a live one holding the evicted flow's backend. (x86 keeps
	 * stores in order; the barrier keeps the compiler from reordering them.) */
	e->key = *key;
	e->expires_ns = 0;
	e->unestablished = unestablished;
	asm volatile("" ::: "memory");
	sg->sig[i] = lb_flow_signature(hash);
	return e;
}

#endif /* SLUICE_BPF_FLOW_TABLE_H */
