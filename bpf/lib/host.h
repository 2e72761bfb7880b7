/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * host.h - what the XDP path answers itself, as the host of its addresses and VIPs: ARP requests
 * (RFC 826), IPv6 Neighbour Solicitations (RFC 4861 section 7.2.4) and, for VIPs, ICMP echo
 * requests (RFC 792, RFC 4443). The twin of src/dataplane/host.h (the answers, byte for byte) and
 * of Pipeline::host() and the ND and echo steps of Pipeline::forward() (the decisions and their
 * counters). Each answer is written over the request in place and leaves by XDP_TX.
 */
#ifndef SLUICE_BPF_HOST_H
#define SLUICE_BPF_HOST_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "maps.h"
#include "parse.h"
#include "csum.h"
#include "stats.h"

/*
 * Copy n bytes (n a constant multiple of the word size) as 16-bit or 32-bit words: clang copies
 * a __u8 * byte by byte. Every field copied here starts at an offset of its size's multiple from
 * the IP header (or the Ethernet/ARP header, for 16-bit words).
 */
static __always_inline void lb_copy16(void *dst, const void *src, const int n)
{
	const __u16 *s = src;
	__u16 *d = dst;
	int i;

#pragma unroll
	for (i = 0; i < n / 2; i++)
		d[i] = s[i];
}

static __always_inline void lb_copy32(void *dst, const void *src, const int n)
{
	const __u32 *s = src;
	__u32 *d = dst;
	int i;

#pragma unroll
	for (i = 0; i < n / 4; i++)
		d[i] = s[i];
}

/*
 * frameIsForPort(): the frame's destination MAC is the port's, or a group address (broadcast,
 * 33:33:* for Neighbour Discovery, IPv4 multicast, link-local protocols: the kernel filters
 * those). eth: LB_ETH_HLEN bytes the caller checked.
 */
static __always_inline int lb_frame_is_for_port(const __u8 *eth)
{
	const __u16 *d = (const __u16 *)eth;
	const __u16 *m = (const __u16 *)port_mac;

	if (d[0] == m[0] && d[1] == m[1] && d[2] == m[2])
		return 1;
	return eth[0] & 1;
}

/* arpOffset(): the offset of the ARP payload after up to two VLAN tags, or 0: not ARP. */
static __always_inline __u32 lb_arp_offset(void *data, void *data_end)
{
	__u32 off = LB_ETH_HLEN;
	__u16 type;
	int i;

	if (data + LB_ETH_HLEN > data_end)
		return 0;
	type = lb_load_be16(data + 12);
#pragma unroll
	for (i = 0; i < LB_MAX_VLAN_TAGS; i++) {
		__u8 *tag;

		if (type != LB_ETH_P_VLAN && type != LB_ETH_P_QINQ)
			break;
		tag = data + off;
		if ((void *)(tag + 4) > data_end)
			return 0;
		type = lb_load_be16(tag + 2);
		off += 4;
	}
	return type == LB_ETH_P_ARP ? off : 0;
}

/*
 * arpRequestTarget(): whether the LB_ARP_LEN bytes at arp are an Ethernet/IPv4 request (htype 1,
 * ptype 0x0800, hlen 6, plen 4, op 1) that is not a gratuitous announcement (sender == target);
 * if so the address asked for (network order) is copied to *target.
 */
static __always_inline int lb_arp_request_target(const __u8 *arp, __u32 *target)
{
	if (arp[0] != 0 || arp[1] != 1 || arp[2] != 8 || arp[3] != 0 || arp[4] != 6 ||
	    arp[5] != 4 || arp[6] != 0 || arp[7] != 1)
		return 0;
	if (*(const __u16 *)(arp + 14) == *(const __u16 *)(arp + 24) &&
	    *(const __u16 *)(arp + 16) == *(const __u16 *)(arp + 26))
		return 0;
	lb_copy16(target, arp + 24, 4);
	return 1;
}

/* rewriteMacs(frame, dst, port_mac): every answer goes back to its asker from the port's MAC. */
static __always_inline void lb_reply_macs(__u8 *eth, const __u8 *dst)
{
	lb_copy16(eth, dst, 6);
	lb_copy16(eth + 6, port_mac, 6);
}

/* answerArp(): the request at arp (LB_ARP_LEN bytes, in the frame at eth) becomes the reply
 * "target is at port_mac", sent to the requester's hardware address. */
static __always_inline void lb_answer_arp(__u8 *eth, __u8 *arp)
{
	__u16 requester_mac[3];
	__u16 requester_ip[2];
	__u16 target_ip[2];

	lb_copy16(requester_mac, arp + 8, 6);
	lb_copy16(requester_ip, arp + 14, 4);
	lb_copy16(target_ip, arp + 24, 4);
	arp[7] = 2;	/* reply */
	lb_copy16(arp + 8, port_mac, 6);
	lb_copy16(arp + 14, target_ip, 4);
	lb_copy16(arp + 18, requester_mac, 6);
	lb_copy16(arp + 24, requester_ip, 4);
	lb_reply_macs(eth, (const __u8 *)requester_mac);
}

/* The key of an address alone (port 0, protocol 0), as local_addrs and vip_addrs hold. */
static __always_inline void lb_address_key(const __u32 *addr, __u8 family,
					   struct lb_endpoint_key *e)
{
	__builtin_memset(e, 0, sizeof(*e));
	__builtin_memcpy(e->addr, addr, sizeof(e->addr));
	e->family = family;
}

/* One of Sluice's own addresses, or a VIP address: the ones ARP and ND are answered for. */
static __always_inline int lb_is_host_address(const struct lb_endpoint_key *e)
{
	return bpf_map_lookup_elem(&local_addrs, e) || bpf_map_lookup_elem(&vip_addrs, e);
}

/*
 * Pipeline::host(): a frame that is neither IPv4 nor IPv6. An ARP request for one of the host's
 * addresses or VIPs is answered; everything else (ARP replies to the kernel's own requests,
 * LLDP, ...) goes to the kernel, counted as non_ip.
 */
static __always_inline int lb_host(struct xdp_md *ctx, struct lb_cpu_counters *cc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = lb_arp_offset(data, data_end);
	struct lb_endpoint_key t;
	__u32 words[4] = {};
	__u8 *arp;

	if (off == 0 || data + LB_ETH_HLEN > data_end)
		return lb_drop(cc, LB_DROP_NON_IP);
	arp = data + (off & LB_HDR_OFF_MASK);
	if ((void *)(arp + LB_ARP_LEN) > data_end || !lb_arp_request_target(arp, &words[0]))
		return lb_drop(cc, LB_DROP_NON_IP);
	lb_address_key(words, LB_FAMILY_IPV4, &t);
	if (!lb_is_host_address(&t))
		return lb_drop(cc, LB_DROP_NON_IP);
	lb_answer_arp(data, arp);
	return lb_answered(cc);
}

/*
 * solicitTarget(): the ICMPv6 header of a Neighbour Solicitation that can be answered: type 135
 * code 0, no extension header, hop limit 255 (RFC 4861 section 7.1.1), a source that is not the
 * unspecified address (duplicate address detection is the kernel's), and at least one option (so
 * the advertisement fits in place). NULL otherwise. The target is at + 8.
 */
static __always_inline __u8 *lb_solicit_target(void *data, void *data_end,
					       const struct lb_parsed *p)
{
	__u8 *ip;
	__u8 *icmp;

	if (p->key.family != LB_FAMILY_IPV6 || p->key.proto != LB_IPPROTO_ICMPV6 ||
	    p->fragment || p->l4_off != p->l3_off + LB_IPV6_HLEN ||
	    p->l4_off + LB_ND_NA_LEN > p->l3_end)
		return NULL;
	ip = data + (p->l3_off & LB_HDR_OFF_MASK);
	icmp = ip + LB_IPV6_HLEN;
	if ((void *)(icmp + LB_ND_NA_LEN) > data_end)
		return NULL;	/* not reached: l3_end is inside the frame */
	if (icmp[0] != LB_ICMPV6_NEIGH_SOLICIT || icmp[1] != 0 || ip[7] != 255 ||
	    (p->key.src[0] | p->key.src[1] | p->key.src[2] | p->key.src[3]) == 0)
		return NULL;
	return icmp;
}

/*
 * answerSolicit(): the Neighbour Solicitation becomes the solicited advertisement "target is at
 * port_mac" (flags Solicited and Override, RFC 4861 section 7.2.4) from the target to the
 * solicitor: LB_ND_NA_LEN bytes of ICMPv6, the frame cut after them. The checksum is computed
 * from scratch over the pseudo-header (RFC 8200 section 8.1) and the 32 bytes.
 * Returns 0, or -1 if the frame could not be cut (not reached).
 */
static __always_inline int lb_answer_solicit(struct xdp_md *ctx, const struct lb_parsed *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *ip = data + (p->l3_off & LB_HDR_OFF_MASK);
	__u8 *icmp = ip + LB_IPV6_HLEN;
	__u16 solicitor_mac[3];
	__u32 target[4];
	__u32 sum;
	int cut;

	if ((void *)(icmp + LB_ND_NA_LEN) > data_end || data + LB_ETH_HLEN > data_end)
		return -1;
	lb_copy32(target, icmp + 8, 16);
	lb_copy32(ip + 24, ip + 8, 16);	/* to the solicitor */
	lb_copy32(ip + 8, target, 16);	/* from the address asked for */
	ip[4] = 0;
	ip[5] = LB_ND_NA_LEN;
	ip[7] = 255;
	icmp[0] = LB_ICMPV6_NEIGH_ADVERT;
	icmp[1] = 0;
	*(__u16 *)(icmp + 2) = 0;	/* the checksum, while it is summed */
	*(__u32 *)(icmp + 4) = bpf_htonl(0x60000000);	/* Solicited, Override; not a router */
	icmp[24] = LB_ND_OPT_TARGET_LLADDR;
	icmp[25] = 1;	/* 8 bytes */
	lb_copy16(icmp + 26, port_mac, 6);
	/* Pseudo-header: the addresses, the upper-layer length and next header as 32-bit words. */
	sum = lb_csum_add(0, ip + 8, 32);
	sum += bpf_htons(LB_ND_NA_LEN) + bpf_htons(LB_IPPROTO_ICMPV6);
	sum = lb_csum_add(sum, icmp, LB_ND_NA_LEN);
	*(__u16 *)(icmp + 2) = lb_csum_fold(sum);
	lb_copy16(solicitor_mac, data + 6, 6);
	lb_reply_macs(data, (const __u8 *)solicitor_mac);
	/* The worker trims the mbuf to l4 + LB_ND_NA_LEN; here the tail moves back (never grows:
	 * the solicitation ended at l3_end >= that). */
	cut = (int)(p->l4_off + LB_ND_NA_LEN) - (int)p->pkt_len;
	if (cut < 0 && bpf_xdp_adjust_tail(ctx, cut) != 0)
		return -1;
	return 0;
}

/*
 * Step 6 of Pipeline::forward(): a Neighbour Solicitation for one of the host's addresses or a
 * VIP is answered. Returns the XDP action, or -1 when the packet is not such a solicitation (the
 * caller goes on).
 */
static __always_inline int lb_solicit(struct xdp_md *ctx, const struct lb_parsed *p,
				      struct lb_cpu_counters *cc)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_endpoint_key t;
	__u32 words[4];
	__u8 *icmp;

	icmp = lb_solicit_target(data, data_end, p);
	if (!icmp)
		return -1;
	lb_copy32(words, icmp + 8, 16);
	lb_address_key(words, LB_FAMILY_IPV6, &t);
	if (!lb_is_host_address(&t))
		return -1;
	if (lb_answer_solicit(ctx, p) != 0)
		return lb_drop(cc, LB_DROP_TRUNCATED);	/* not reached */
	return lb_answered(cc);
}

/* isEchoRequest(): an ICMP or ICMPv6 echo request (not a fragment) with its 8-byte header. */
static __always_inline int lb_is_echo_request(void *data, void *data_end,
					      const struct lb_parsed *p)
{
	__u8 *icmp;

	/* The 8-byte header within the IP packet too (isEchoRequest()): a frame's padding past
	 * the IP length is no ICMP message. */
	if (p->fragment || p->l4_off + 8 > p->l3_end)
		return 0;
	icmp = data + (p->l4_off & LB_HDR_OFF_MASK);
	if ((void *)(icmp + 8) > data_end)
		return 0;
	if (p->key.family == LB_FAMILY_IPV4)
		return p->key.proto == LB_IPPROTO_ICMP && icmp[0] == LB_ICMP_ECHO_REQUEST &&
		       icmp[1] == 0;
	return p->key.proto == LB_IPPROTO_ICMPV6 && icmp[0] == LB_ICMPV6_ECHO_REQUEST &&
	       icmp[1] == 0;
}

/*
 * answerEcho(): the echo request becomes its reply in place: addresses swapped, type 0 / 129, TTL
 * or hop limit LB_REPLY_HOP_LIMIT, the IPv4 header and ICMP checksums updated incrementally
 * (swapping the addresses changes neither the IPv4 header sum nor the ICMPv6 pseudo-header sum).
 * Returns 0, or -1 if a header the parser checked is not there (never: for the verifier).
 */
static __always_inline int lb_answer_echo(void *data, void *data_end, const struct lb_parsed *p)
{
	__u8 *ip = data + (p->l3_off & LB_HDR_OFF_MASK);
	__u8 *icmp = data + (p->l4_off & LB_HDR_OFF_MASK);
	__u16 peer_mac[3];
	__u32 tmp[4];
	__u16 word;
	__u32 delta;
	__u8 type;

	if ((void *)(icmp + 8) > data_end || data + LB_ETH_HLEN > data_end)
		return -1;
	if (p->key.family == LB_FAMILY_IPV4) {
		if ((void *)(ip + LB_IPV4_HLEN) > data_end)
			return -1;
		tmp[0] = *(__u32 *)(ip + 12);
		*(__u32 *)(ip + 12) = *(__u32 *)(ip + 16);
		*(__u32 *)(ip + 16) = tmp[0];
		/* TTL and protocol share a header word. */
		word = bpf_htons(LB_REPLY_HOP_LIMIT << 8 | ip[9]);
		delta = lb_csum_replace(0, ip + 8, &word, 2);
		*(__u16 *)(ip + 10) = lb_csum_apply(delta, *(__u16 *)(ip + 10));
		ip[8] = LB_REPLY_HOP_LIMIT;
		type = LB_ICMP_ECHO_REPLY;
	} else {
		if ((void *)(ip + LB_IPV6_HLEN) > data_end)
			return -1;
		lb_copy32(tmp, ip + 8, 16);
		lb_copy32(ip + 8, ip + 24, 16);
		lb_copy32(ip + 24, tmp, 16);
		ip[7] = LB_REPLY_HOP_LIMIT;	/* the IPv6 header has no checksum */
		type = LB_ICMPV6_ECHO_REPLY;
	}
	/* Type and code share a word; the code is 0 already. */
	word = bpf_htons(type << 8);
	delta = lb_csum_replace(0, icmp, &word, 2);
	*(__u16 *)(icmp + 2) = lb_csum_apply(delta, *(__u16 *)(icmp + 2));
	if (*(__u16 *)(icmp + 2) == 0)
		*(__u16 *)(icmp + 2) = 0xffff;	/* -0: only all ones verifies (RFC 1624) */
	icmp[0] = type;
	lb_copy16(peer_mac, data + 6, 6);
	lb_reply_macs(data, (const __u8 *)peer_mac);
	return 0;
}

#endif /* SLUICE_BPF_HOST_H */
