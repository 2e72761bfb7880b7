/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * parse.h - the packet parser, check for check the twin of parsePacket() in
 * src/dataplane/packet.h: Ethernet, up to two VLAN tags, IPv4 with options or IPv6 with a
 * bounded walk of extension headers, TCP or UDP. The checks are made in the same order and
 * return the same drop reasons, so both data paths count every malformed frame alike.
 *
 * packet.h checks headers against data_len (bytes of the first segment) and IP lengths against
 * pkt_len (the whole frame). Here every header check is a pointer check against data_end,
 * which is the same as "offset + size > data_len"; pkt_len is passed by the caller.
 */
#ifndef SLUICE_BPF_PARSE_H
#define SLUICE_BPF_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"

/* What the parser learned of a frame (ParsedPacket). Offsets are from the start of the frame. */
struct lb_parsed {
	struct lb_flow_key key;	/* as on the wire; ports 0 for fragments and other protocols */
	__u16 l3_off;		/* start of the IP header */
	__u16 l4_off;		/* start of the TCP/UDP header */
	__u8 tcp_flags;		/* TCP only */
	__u8 fragment;		/* IPv4 MF or offset != 0, or an IPv6 fragment header */
	/* One past the last byte of the IP packet (frames may carry padding). 32 bits: behind
	 * tags, an IPv4 total length or an IPv6 payload length of 65535 ends past 65535. */
	__u32 l3_end;
	__u32 pkt_len;		/* the whole frame, its fragments (xdp.frags) included */
};

static __always_inline __u16 lb_load_be16(const void *p)
{
	return bpf_ntohs(*(const __u16 *)p);
}

static __always_inline int lb_ipv6_is_ext(__u8 proto)
{
	return proto == LB_IPPROTO_HOPOPTS || proto == LB_IPPROTO_ROUTING ||
	       proto == LB_IPPROTO_DSTOPTS || proto == LB_IPPROTO_FRAGMENT ||
	       proto == LB_IPPROTO_AH;
}

/*
 * Parse the frame [data, data_end) whose whole length is pkt_len.
 * Returns LB_PARSE_OK, or the lb_drop_reason to count (out is then partly filled).
 */
static __always_inline int lb_parse(void *data, void *data_end, __u32 pkt_len,
				    struct lb_parsed *out)
{
	__u32 off = LB_ETH_HLEN;
	__u32 l4 = 0;
	__u32 l3_end = 0;	/* one past the last byte the IP header says is the packet's */
	__u32 l4_len;
	__u16 ether_type;
	__u8 proto = 0;
	__u8 *ip;
	int i;

	__builtin_memset(&out->key, 0, sizeof(out->key));
	out->tcp_flags = 0;
	out->fragment = 0;
	out->pkt_len = pkt_len;
	if (data + LB_ETH_HLEN > data_end)
		return LB_DROP_TRUNCATED;
	ether_type = lb_load_be16(data + 12);

#pragma unroll
	for (i = 0; i < LB_MAX_VLAN_TAGS; i++) {
		__u8 *tag;

		if (ether_type != LB_ETH_P_VLAN && ether_type != LB_ETH_P_QINQ)
			break;
		tag = data + off;
		if ((void *)(tag + 4) > data_end)
			return LB_DROP_TRUNCATED;
		ether_type = lb_load_be16(tag + 2);
		off += 4;
	}

	ip = data + off;
	if (ether_type == LB_ETH_P_IPV4) {
		__u32 ihl, total;

		if ((void *)(ip + LB_IPV4_HLEN) > data_end)
			return LB_DROP_TRUNCATED;
		ihl = (ip[0] & 0x0f) * 4;
		if ((ip[0] >> 4) != 4 || ihl < LB_IPV4_HLEN)
			return LB_DROP_BAD_IP_HEADER;
		if ((void *)(ip + ihl) > data_end)
			return LB_DROP_TRUNCATED;
		total = lb_load_be16(ip + 2);
		if (total < ihl || off + total > pkt_len)
			return LB_DROP_BAD_IP_LENGTH;
		proto = ip[9];
		out->key.family = LB_FAMILY_IPV4;
		__builtin_memcpy(&out->key.src[0], ip + 12, 4);
		__builtin_memcpy(&out->key.dst[0], ip + 16, 4);
		/* MF flag or a fragment offset */
		out->fragment = (lb_load_be16(ip + 6) & 0x3fff) != 0;
		l4 = off + ihl;
		l3_end = off + total;
	} else if (ether_type == LB_ETH_P_IPV6) {
		int ext;

		if ((void *)(ip + LB_IPV6_HLEN) > data_end)
			return LB_DROP_TRUNCATED;
		if ((ip[0] >> 4) != 6)
			return LB_DROP_BAD_IP_HEADER;
		l3_end = off + LB_IPV6_HLEN + lb_load_be16(ip + 4);
		if (l3_end > pkt_len)
			return LB_DROP_BAD_IP_LENGTH;
		out->key.family = LB_FAMILY_IPV6;
		__builtin_memcpy(out->key.src, ip + 8, 16);
		__builtin_memcpy(out->key.dst, ip + 24, 16);
		proto = ip[6];
		l4 = off + LB_IPV6_HLEN;
		for (ext = 0; ext < LB_MAX_IPV6_EXT_HDRS; ext++) {
			__u8 *eh;
			__u32 len;

			if (!lb_ipv6_is_ext(proto))
				break;
			eh = data + l4;
			if ((void *)(eh + 8) > data_end)
				return LB_DROP_TRUNCATED;
			if (proto == LB_IPPROTO_FRAGMENT) {
				out->fragment = 1;
				len = 8;
			} else if (proto == LB_IPPROTO_AH) {
				len = (eh[1] + 2) * 4;	/* AH counts 4-byte words (RFC 4302) */
			} else {
				len = (eh[1] + 1) * 8;
			}
			proto = eh[0];
			l4 += len;
			if (l4 > l3_end)
				return LB_DROP_BAD_IP_LENGTH;
		}
		if (ext == LB_MAX_IPV6_EXT_HDRS && lb_ipv6_is_ext(proto))
			return LB_DROP_IPV6_EXT_LIMIT;
	} else {
		return LB_DROP_NON_IP;
	}

	out->key.proto = proto;
	out->l3_off = off;
	out->l4_off = l4;
	out->l3_end = l3_end;
	if (out->fragment)
		return LB_PARSE_OK;	/* no L4 header to read; the caller decides */
	l4_len = l3_end - l4;
	if (proto == LB_PROTO_TCP) {
		__u8 *th = data + l4;
		__u32 doff;

		if ((void *)(th + LB_TCP_HLEN) > data_end)
			return LB_DROP_TRUNCATED;
		doff = (th[12] >> 4) * 4;
		if (l4_len < LB_TCP_HLEN || doff < LB_TCP_HLEN || doff > l4_len)
			return LB_DROP_BAD_L4_HEADER;
		__builtin_memcpy(&out->key.sport, th, 2);
		__builtin_memcpy(&out->key.dport, th + 2, 2);
		out->tcp_flags = th[13];
	} else if (proto == LB_PROTO_UDP) {
		__u8 *uh = data + l4;
		__u32 ulen;

		if ((void *)(uh + LB_UDP_HLEN) > data_end)
			return LB_DROP_TRUNCATED;
		ulen = lb_load_be16(uh + 4);
		if (l4_len < LB_UDP_HLEN || ulen < LB_UDP_HLEN || ulen > l4_len)
			return LB_DROP_BAD_L4_HEADER;
		__builtin_memcpy(&out->key.sport, uh, 2);
		__builtin_memcpy(&out->key.dport, uh + 2, 2);
	}
	return LB_PARSE_OK;
}

/*
 * An ICMP error about a flow (IcmpError, src/dataplane/icmp_error.h): the quoted tuple reversed,
 * the key of the flow's packets going the other way (the client's for a quoted reply from
 * VIP:vport; a NAT backend's replies for a quoted client packet to backend:bport, so that its
 * source endpoint is nat_replies' key), and where the quote lies in the frame.
 */
struct lb_icmp_error {
	struct lb_flow_key key;
	__u16 inner_l3;		/* the quoted IP header */
	__u16 inner_l4;		/* the quoted TCP/UDP header (its first 8 bytes are present) */
};

/* lb_parse_icmp_error(): not an error about a TCP/UDP flow (kNotAFlowError). */
#define LB_NOT_A_FLOW_ERROR (-2)

/*
 * isIcmpError(): one of the ICMP errors about a flow that are forwarded (LB_ICMP_* and
 * LB_ICMPV6_* in lb_abi.h, every code), with its 8-byte ICMP header present.
 */
static __always_inline int lb_is_icmp_error(void *data, void *data_end,
					    const struct lb_parsed *p)
{
	__u8 *icmp;
	__u8 type;

	if (p->fragment || p->l4_off + LB_ICMP_HLEN > p->l3_end)
		return 0;
	icmp = data + (p->l4_off & LB_HDR_OFF_MASK);
	if ((void *)(icmp + LB_ICMP_HLEN) > data_end)
		return 0;
	type = icmp[0];
	if (p->key.family == LB_FAMILY_IPV4)
		return p->key.proto == LB_IPPROTO_ICMP &&
		       (type == LB_ICMP_DEST_UNREACH || type == LB_ICMP_TIME_EXCEEDED);
	return p->key.proto == LB_IPPROTO_ICMPV6 &&
	       (type == LB_ICMPV6_DEST_UNREACH || type == LB_ICMPV6_PACKET_TOO_BIG ||
		type == LB_ICMPV6_TIME_EXCEEDED);
}

/*
 * parseIcmpError(): the packet an ICMP error (lb_is_icmp_error()) quotes: an IPv4 header with
 * options or an IPv6 header without extension headers, of the outer family, then the first 8
 * bytes of its TCP/UDP header. Each check against p->l3_end (a frame's padding is no quote) has
 * its twin against data_end (the bytes present), in packet.h's order.
 * Returns LB_PARSE_OK with out filled; LB_NOT_A_FLOW_ERROR when the quote is no TCP/UDP packet
 * from the address the error is sent to (another protocol, an IPv6 extension header, a
 * non-first fragment, another source); or the drop reason of a quoted header cut short
 * (truncated) or malformed (bad_ip_header).
 */
static __always_inline int lb_parse_icmp_error(void *data, void *data_end,
					       const struct lb_parsed *p,
					       struct lb_icmp_error *out)
{
	__u32 l3 = p->l4_off + LB_ICMP_HLEN;
	__u32 end = p->l3_end;
	__u8 *ip = data + (l3 & LB_HDR_OFF_MASK);
	__u8 *th;
	__u32 l4;
	__u8 proto;

	__builtin_memset(&out->key, 0, sizeof(out->key));
	if (p->key.family == LB_FAMILY_IPV4) {
		__u32 ihl;

		if (l3 + LB_IPV4_HLEN > end || (void *)(ip + LB_IPV4_HLEN) > data_end)
			return LB_DROP_TRUNCATED;
		ihl = (ip[0] & 0x0f) * 4;
		if ((ip[0] >> 4) != 4 || ihl < LB_IPV4_HLEN)
			return LB_DROP_BAD_IP_HEADER;
		l4 = l3 + ihl;
		th = ip + ihl;
		if (l4 + 8 > end || (void *)(th + 8) > data_end)
			return LB_DROP_TRUNCATED;
		if ((lb_load_be16(ip + 6) & 0x1fff) != 0)
			return LB_NOT_A_FLOW_ERROR;	/* a later fragment has no ports */
		proto = ip[9];
		__builtin_memcpy(&out->key.dst[0], ip + 12, 4);
		__builtin_memcpy(&out->key.src[0], ip + 16, 4);
	} else {
		if (l3 + LB_IPV6_HLEN > end || (void *)(ip + LB_IPV6_HLEN) > data_end)
			return LB_DROP_TRUNCATED;
		if ((ip[0] >> 4) != 6)
			return LB_DROP_BAD_IP_HEADER;
		l4 = l3 + LB_IPV6_HLEN;
		th = ip + LB_IPV6_HLEN;
		if (l4 + 8 > end || (void *)(th + 8) > data_end)
			return LB_DROP_TRUNCATED;
		proto = ip[6];
		__builtin_memcpy(out->key.dst, ip + 8, 16);
		__builtin_memcpy(out->key.src, ip + 24, 16);
	}
	if ((proto != LB_PROTO_TCP && proto != LB_PROTO_UDP) ||
	    out->key.dst[0] != p->key.dst[0] || out->key.dst[1] != p->key.dst[1] ||
	    out->key.dst[2] != p->key.dst[2] || out->key.dst[3] != p->key.dst[3])
		return LB_NOT_A_FLOW_ERROR;
	/* The quote is the packet the error is about; the key is that of the packets going the
	 * other way. */
	__builtin_memcpy(&out->key.dport, th, 2);
	__builtin_memcpy(&out->key.sport, th + 2, 2);
	out->key.proto = proto;
	out->key.family = p->key.family;
	out->inner_l3 = l3;
	out->inner_l4 = l4;
	return LB_PARSE_OK;
}

#endif /* SLUICE_BPF_PARSE_H */
