/* SPDX-License-Identifier: BSD-3-Clause
 *
 * lb_abi.h - the data shared by every Sluice data path.
 *
 * Plain C with fixed-width types and explicit padding, so that the DPDK path (C++) and the
 * XDP path (BPF C) include the same definitions: the flow key, the flow hash and the drop
 * reasons. C++ checks the layout with static_assert in src/common/lb_abi_check.cc.
 */
#ifndef SLUICE_LB_ABI_H
#define SLUICE_LB_ABI_H

#ifdef __cplusplus
#include <cstdint>
extern "C" {
#else
#include <linux/types.h>
#endif

#ifndef __cplusplus
typedef __u8 lb_u8;
typedef __u16 lb_u16;
typedef __u32 lb_u32;
typedef __u64 lb_u64;
#else
typedef uint8_t lb_u8;
typedef uint16_t lb_u16;
typedef uint32_t lb_u32;
typedef uint64_t lb_u64;
#endif

#define LB_FAMILY_IPV4 4
#define LB_FAMILY_IPV6 6

#define LB_PROTO_TCP 6
#define LB_PROTO_UDP 17

/*
 * Wire constants of the two parsers (src/dataplane/packet.h and bpf/lib/parse.h), defined once so
 * that both walk the same headers with the same bounds.
 */
#define LB_ETH_HLEN 14
#define LB_ETH_P_IPV4 0x0800
#define LB_ETH_P_IPV6 0x86DD
#define LB_ETH_P_VLAN 0x8100   /* 802.1Q */
#define LB_ETH_P_QINQ 0x88A8   /* 802.1ad */
#define LB_ETH_P_ARP 0x0806
#define LB_MAX_VLAN_TAGS 2
#define LB_MAX_IPV6_EXT_HDRS 6

/* IPv6 extension headers the parsers walk (RFC 8200 section 4; AH: RFC 4302). */
#define LB_IPPROTO_HOPOPTS 0
#define LB_IPPROTO_ROUTING 43
#define LB_IPPROTO_FRAGMENT 44
#define LB_IPPROTO_AH 51
#define LB_IPPROTO_DSTOPTS 60
#define LB_IPPROTO_ICMP 1
#define LB_IPPROTO_ICMPV6 58

/* The ICMP messages the data paths answer themselves (RFC 792, RFC 4443, RFC 4861). */
#define LB_ICMP_ECHO_REPLY 0
#define LB_ICMP_ECHO_REQUEST 8
#define LB_ICMPV6_ECHO_REQUEST 128
#define LB_ICMPV6_ECHO_REPLY 129
#define LB_ICMPV6_NEIGH_SOLICIT 135
#define LB_ICMPV6_NEIGH_ADVERT 136
#define LB_ND_OPT_SOURCE_LLADDR 1
#define LB_ND_OPT_TARGET_LLADDR 2
/* An answered Neighbour Solicitation becomes an advertisement of this size (ICMPv6 header,
 * flags, target, one target link-layer address option). */
#define LB_ND_NA_LEN 32
#define LB_ARP_LEN 28             /* Ethernet/IPv4 ARP (RFC 826) */
#define LB_REPLY_HOP_LIMIT 64     /* TTL / hop limit of an answered echo */

/*
 * The ICMP errors about a flow that are forwarded to its backend (RFC 792, RFC 1191 section 4,
 * RFC 4443 sections 3.1-3.3): the quoted packet is a backend's reply, so the error belongs to the
 * backend that sent it, as IPVS (ip_vs_in_icmp) and Katran forward it.
 */
#define LB_ICMP_DEST_UNREACH 3    /* code 4: fragmentation needed (PMTU discovery, RFC 1191) */
#define LB_ICMP_TIME_EXCEEDED 11
#define LB_ICMPV6_DEST_UNREACH 1
#define LB_ICMPV6_PACKET_TOO_BIG 2 /* PMTU discovery for IPv6 (RFC 8201) */
#define LB_ICMPV6_TIME_EXCEEDED 3
/* An ICMP error's header: type, code, checksum and 4 bytes (unused, or the next-hop MTU). */
#define LB_ICMP_HLEN 8

#define LB_TCP_FIN 0x01
#define LB_TCP_SYN 0x02
#define LB_TCP_RST 0x04
#define LB_TCP_ACK 0x10

/* What a parser returns for a packet it accepts; otherwise it returns an lb_drop_reason. */
#define LB_PARSE_OK (-1)

/* The [timeouts] defaults of the configuration (IPVS's), in seconds. */
#define LB_DEFAULT_TCP_TIMEOUT_S 900
#define LB_DEFAULT_TCP_FIN_TIMEOUT_S 10
#define LB_DEFAULT_UDP_TIMEOUT_S 300
/*
 * A TCP flow whose handshake has not completed (a SYN seen, no packet without SYN yet): IPVS
 * gives SYN_RECV 60 s. Half that still spans the gaps between a client's first five SYN
 * retransmissions (1, 2, 4, 8, 16 s: an initial RTO of 1 s doubled each time, RFC 6298), each
 * of which refreshes the entry, and a SYN flood's entries leave the table twice as fast.
 */
#define LB_DEFAULT_TCP_SYN_TIMEOUT_S 30

/* Backend id 0 means "no backend" (Maglev table slots of an empty service). */
#define LB_BACKEND_NONE 0u

/*
 * The 5-tuple of a packet as it was on the wire. Addresses and ports are kept in network byte
 * order exactly as read from the headers; an IPv4 address occupies addr[0] and the other three
 * words are zero, so one key type serves both families.
 */
struct lb_flow_key {
	lb_u32 src[4];
	lb_u32 dst[4];
	lb_u16 sport;
	lb_u16 dport;
	lb_u8 proto;
	lb_u8 family;
	lb_u8 pad[2];
};

/*
 * Why a packet was dropped. The numbering is part of the ABI: both data paths count into arrays
 * indexed by it, and the names below are what operators see in stats and replay summaries.
 */
enum lb_drop_reason {
	LB_DROP_NON_IP = 0,        /* not IPv4/IPv6 (ARP, LLDP, ...) */
	LB_DROP_TRUNCATED,         /* a header runs past the end of the frame */
	LB_DROP_BAD_IP_HEADER,     /* IPv4 version/IHL < 5, IPv6 version */
	LB_DROP_BAD_IP_LENGTH,     /* IP total/payload length disagrees with the frame */
	LB_DROP_BAD_L4_HEADER,     /* TCP data offset < 5, UDP length < 8 or past the IP payload */
	LB_DROP_IPV6_EXT_LIMIT,    /* too many IPv6 extension headers to walk */
	LB_DROP_FRAGMENT,          /* IP fragment for a service (not forwarded yet) */
	LB_DROP_NO_SERVICE,        /* matches no service and no NAT backend */
	LB_DROP_NO_BACKEND,        /* service has no backend with weight > 0 */
	LB_DROP_NO_NEXT_HOP,       /* NAT reply, but no gateway MAC configured or learned yet */
	LB_DROP_TX_FULL,           /* transmit queue did not take the packet */
	LB_DROP_NOT_FOR_US,        /* destination MAC is not the port's, broadcast, or ND multicast */
	/* A NAT reply (or an ICMP error from behind NAT) from a NAT backend's address and port whose
	 * source MAC is not that backend's next hop (the MAC its requests are sent to), or whose
	 * backend has no resolved next hop: not from the backend side, so not rewritten to the VIP
	 * (a reflection through Sluice otherwise). Last, so the numbers above keep their values. */
	LB_DROP_NAT_REPLY_MAC,
	LB_DROP__COUNT
};

static inline const char *lb_drop_reason_name(unsigned int reason)
{
	switch (reason) {
	case LB_DROP_NON_IP: return "non_ip";
	case LB_DROP_TRUNCATED: return "truncated";
	case LB_DROP_BAD_IP_HEADER: return "bad_ip_header";
	case LB_DROP_BAD_IP_LENGTH: return "bad_ip_length";
	case LB_DROP_BAD_L4_HEADER: return "bad_l4_header";
	case LB_DROP_IPV6_EXT_LIMIT: return "ipv6_ext_limit";
	case LB_DROP_FRAGMENT: return "fragment";
	case LB_DROP_NO_SERVICE: return "no_service";
	case LB_DROP_NO_BACKEND: return "no_backend";
	case LB_DROP_NO_NEXT_HOP: return "no_next_hop";
	case LB_DROP_TX_FULL: return "tx_full";
	case LB_DROP_NOT_FOR_US: return "not_for_us";
	case LB_DROP_NAT_REPLY_MAC: return "nat_reply_mac";
	default: return "unknown";
	}
}

/*
 * The flow hash: a pure function of the 5-tuple with a fixed seed, so every core, every process
 * and every Sluice host (behind ECMP, or after a restart) maps a flow to the same Maglev slot.
 * MurmurHash3's 32-bit mixing (Austin Appleby, public domain) over the ten words of the key, each
 * read as a big-endian number so that the result does not depend on the host's byte order.
 * Straight-line code with no data-dependent loop, so the BPF verifier accepts it as it is.
 */
#define LB_FLOW_HASH_SEED 0x5a17c3e1u

static inline lb_u32 lb_rotl32(lb_u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static inline lb_u32 lb_be32_to_host(lb_u32 v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return __builtin_bswap32(v);
#else
	return v;
#endif
}

static inline lb_u32 lb_be16_to_host(lb_u16 v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return __builtin_bswap16(v);
#else
	return v;
#endif
}

static inline lb_u32 lb_hash_mix(lb_u32 h, lb_u32 k)
{
	k *= 0xcc9e2d51u;
	k = lb_rotl32(k, 15);
	k *= 0x1b873593u;
	h ^= k;
	h = lb_rotl32(h, 13);
	return h * 5u + 0xe6546b64u;
}

static inline lb_u32 lb_hash_final(lb_u32 h, lb_u32 len)
{
	h ^= len;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

static inline lb_u32 lb_flow_hash(const struct lb_flow_key *k)
{
	lb_u32 h = LB_FLOW_HASH_SEED;

	h = lb_hash_mix(h, lb_be32_to_host(k->src[0]));
	h = lb_hash_mix(h, lb_be32_to_host(k->src[1]));
	h = lb_hash_mix(h, lb_be32_to_host(k->src[2]));
	h = lb_hash_mix(h, lb_be32_to_host(k->src[3]));
	h = lb_hash_mix(h, lb_be32_to_host(k->dst[0]));
	h = lb_hash_mix(h, lb_be32_to_host(k->dst[1]));
	h = lb_hash_mix(h, lb_be32_to_host(k->dst[2]));
	h = lb_hash_mix(h, lb_be32_to_host(k->dst[3]));
	h = lb_hash_mix(h, (lb_be16_to_host(k->sport) << 16) | lb_be16_to_host(k->dport));
	h = lb_hash_mix(h, ((lb_u32)k->proto << 8) | k->family);
	return lb_hash_final(h, 40);
}

/*
 * The XDP data path's maps (bpf/lib/maps.h), written from the same Snapshot the DPDK workers
 * read by the XDP loader's map programmer (XdpDataplane::apply in src/xdp/xdp_dataplane.cc).
 * Values mirror the Snapshot's entries.
 */
#define LB_MAX_SERVICES 4096
#define LB_MAX_BACKENDS 65536      /* backend ids 1..65535, as kMaxBackendIds */
#define LB_MAX_MAGLEV 65537        /* largest Maglev table the XDP path holds per service */
#define LB_NAT_PORT_WORDS 1024     /* nat_reply_ports: 65,536 bits, one per port */
#define LB_ADDR_FILTER_WORDS 1024  /* addr_filter: 65,536 bits */

/*
 * The bit of addr_filter (bpf/lib/maps.h) an address (4 words as on the wire; an IPv4 address
 * in the first) sets: the words folded, then Fibonacci hashing (Knuth, TAOCP vol. 3, 6.4) to 16
 * bits. The family is left out: a filter that also lets the other family's twin through is still
 * a superset.
 */
static inline lb_u32 lb_addr_filter_bit(const lb_u32 *addr)
{
	return ((addr[0] ^ addr[1] ^ addr[2] ^ addr[3]) * 0x9e3779b1u) >> 16;
}
#define LB_FWD_DR 0
#define LB_FWD_NAT 1

/* (address, port, protocol): a VIP, a NAT backend, or (port 0, proto 0) a VIP address alone. */
struct lb_endpoint_key {
	lb_u32 addr[4];
	lb_u16 port;     /* network order */
	lb_u8 proto;
	lb_u8 family;
};

struct lb_service {
	lb_u32 id;
	lb_u32 forwarding;  /* LB_FWD_DR or LB_FWD_NAT */
	lb_u32 table_size;  /* Maglev M: slots used in the service's table */
	lb_u32 addr[4];     /* the VIP, for the NAT reply rewrite */
	lb_u16 port;        /* network order */
	/* With addr and port, the service's key (lb_endpoint_key): what a flow entry's service id
	 * is checked against when the XDP path finds the flow before the service. */
	lb_u8 proto;
	lb_u8 family;
};

/* lb_backend.flags */
#define LB_BACKEND_F_RESCHEDULE 1u  /* down: its flows pick a live backend on their next packet */
#define LB_BACKEND_F_NO_NEW 2u      /* down, maintenance, unresolved: a SYN pinned to it picks again */

struct lb_backend {
	lb_u32 addr[4];
	lb_u16 port;        /* network order */
	lb_u8 mac[6];
	lb_u32 epoch;       /* 0: no backend has this id */
	lb_u32 service_id;
	lb_u32 weight;
	lb_u32 flags;       /* LB_BACKEND_F_* */
};

struct lb_nat_reply {
	lb_u32 service_id;
	lb_u32 backend_id;
};

#define LB_FLOW_ACTIVE 0
#define LB_FLOW_CLOSING 1
#define LB_FLOW_SYN_RECV 2  /* a SYN seen, no packet without SYN yet (IPVS's SYN_RECV) */

/*
 * One flow of the XDP path's flow table (bpf/lib/flow_table.h): the DPDK table's FlowEntry
 * (src/dataplane/flow_table.h) field for field, one cache line.
 */
struct lb_flow_entry {
	struct lb_flow_key key;
	lb_u64 expires_ns;
	lb_u32 service_id;
	lb_u32 backend_id;
	lb_u32 backend_epoch;
	lb_u8 state;         /* LB_FLOW_ACTIVE, LB_FLOW_CLOSING or LB_FLOW_SYN_RECV */
	/* Created by a SYN, no packet without SYN or RST seen since: evicted first, and never
	 * evicts an established entry. */
	lb_u8 unestablished;
	lb_u8 pad[2];
};

/*
 * A bucket of the XDP flow table, in two arrays as the DPDK table keeps it: the eight signatures
 * (the flow hash with its low bit set; 0 marks a free slot), 32 bytes, and the eight entries they
 * stand for, one cache line each. The signatures of every bucket are a dense array (a quarter of a
 * megabyte for a million flows) that stays in cache, so that a lookup's one likely miss is the
 * entry's line.
 */
#define LB_FLOW_BUCKET_ENTRIES 8

/* Buckets of a flow table of capacity entries, on both paths: whole buckets, at least one. */
static inline lb_u32 lb_flow_buckets_for(lb_u32 capacity)
{
	lb_u32 b = (lb_u32)(((lb_u64)capacity + LB_FLOW_BUCKET_ENTRIES - 1) / LB_FLOW_BUCKET_ENTRIES);

	return b != 0 ? b : 1;
}

struct lb_flow_sigs {
	lb_u32 sig[LB_FLOW_BUCKET_ENTRIES];
};

struct lb_flow_bucket {
	struct lb_flow_entry entry[LB_FLOW_BUCKET_ENTRIES];
};

/* Per-CPU counters of the XDP path, the same meaning as the DPDK workers' counters. */
struct lb_cpu_counters {
	lb_u64 rx_packets;
	lb_u64 tx_packets;
	lb_u64 passed;      /* handed to the kernel: the host's own traffic, no service, non-IP */
	lb_u64 flows_created;
	lb_u64 flows_rescheduled;
	lb_u64 answered;    /* ARP, Neighbour Solicitations and echo requests answered in place */
	lb_u64 icmp_forwarded; /* ICMP errors about a flow sent on to its backend or client */
	lb_u64 drops[LB_DROP__COUNT];
	lb_u64 flows_expired;      /* this CPU's entries found expired and reclaimed */
	lb_u64 flows_syn_expired;  /* of which unestablished */
	lb_u64 new_flows_unpinned; /* new flows forwarded without an entry: the rate guard */
	/* Flows this CPU's inserts evicted from a full pair of buckets before they expired (the
	 * DPDK table's evicted), and of those the unestablished ones (syn_evicted). */
	lb_u64 flows_evicted;
	lb_u64 flows_syn_evicted;
};

struct lb_backend_counters {
	lb_u64 epoch;
	lb_u64 packets;
	lb_u64 bytes;
	lb_u64 flows;
	lb_u64 reply_packets;
	lb_u64 reply_bytes;
};

#ifdef __cplusplus
}
#endif

#endif /* SLUICE_LB_ABI_H */
