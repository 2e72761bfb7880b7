/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * maps.h - the maps and runtime globals of the XDP data path.
 *
 * The XDP loader's map programmer (XdpDataplane::apply in src/xdp/xdp_dataplane.cc) fills them
 * from the same Snapshot the DPDK workers read; the map and global names are its interface
 * (bpftool skeleton).
 */
#ifndef SLUICE_BPF_MAPS_H
#define SLUICE_BPF_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"

/* VIP:port/proto -> service (the DPDK Snapshot's service_map). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_endpoint_key);
	__type(value, struct lb_service);
} services SEC(".maps");

/* Service id -> service (Snapshot::services[id]): the VIP that a NAT reply is rewritten back
 * to. table_size == 0 marks a free id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct lb_service);
} service_by_id SEC(".maps");

/* VIP address alone (port 0, proto 0) -> service id: fragments for a VIP, ARP/ND, echo. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_endpoint_key);
	__type(value, __u32);
} vip_addrs SEC(".maps");

/*
 * Sluice's own addresses alone (port 0, proto 0) -> 1 (Snapshot::local_addresses): their ARP
 * requests and Neighbour Solicitations are answered here, everything else for them goes to the
 * kernel (SSH, BGP, ping, health-check answers).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_LOCAL_ADDRS);
	__type(key, struct lb_endpoint_key);
	__type(value, __u32);
} local_addrs SEC(".maps");

/* NAT backend addr:port/proto -> (service, backend): replies to rewrite back to the VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, struct lb_endpoint_key);
	__type(value, struct lb_nat_reply);
} nat_replies SEC(".maps");

/*
 * The source ports a NAT reply can have, one bit per port (network order, as the keys of
 * nat_replies hold it): bit p % 64 of word p / 64. Traffic for no service is looked up in
 * nat_replies by its source, a random bucket of a table sized for every backend, and so a cache
 * miss on almost every such packet; this 8 KiB bitmap stays in cache and lets a packet from a port
 * no NAT backend uses skip that lookup. The loader sets a port's bit before any reply key with
 * that port is written and clears it after the last is removed: always a superset.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_NAT_PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} nat_reply_ports SEC(".maps");

/*
 * The destination addresses a packet may be for, one bit per lb_addr_filter_bit() of each VIP
 * address and each of Sluice's own: a packet whose bit is clear is for neither, so it skips the
 * services and local_addrs lookups (a hash and a bucket each) on its way to the kernel. Like
 * nat_reply_ports, written before the keys it covers and cleared after them: a superset.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_ADDR_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} addr_filter SEC(".maps");

/* Backend id -> backend; epoch 0: no backend has the id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend);
} backends SEC(".maps");

/* Service id -> its Maglev table: table_size slots of backend ids (0: none). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_ARRAY);
		__uint(max_entries, LB_MAX_MAGLEV);
		__type(key, __u32);
		__type(value, __u32);
	});
} maglev SEC(".maps");

/*
 * The flow table: the DPDK workers' FlowTable (src/dataplane/flow_table.h) in two array maps, the
 * same buckets, signatures, two-choice placement and eviction order, so that both paths keep and
 * evict the same flows (bpf/lib/flow_table.h): flow_sigs, each bucket's eight signatures (struct
 * lb_flow_sigs), a dense array that stays in cache, and flows, its eight entries (struct
 * lb_flow_bucket). A lookup reads the bucket's signatures and, on a match, the entry's line, where
 * an LRU hash read a bucket head and an element's two lines and hashed the key once more (jhash),
 * and an insert took the LRU's free-list lock. Indexed by CPU, as Katran keeps its LRUs
 * (lru_mapping): when the NIC keeps a flow on one CPU (RSS), each CPU's slot holds a table of its
 * own, as each DPDK worker has its own; on a virtual interface every slot holds the same table,
 * one for all CPUs (FlowTableScope in src/xdp/xdp_dataplane.h says why). The loader creates the
 * inner maps, flow_buckets buckets each, and sets max_entries here to the number of
 * possible CPUs.
 * BPF_F_MMAPABLE: the values of such an array start on a page, so every entry is on a cache line
 * of its own (a plain array's values start 16 bytes into one), and the loader reads the table
 * through a read-only mapping.
 */
/* (Sized rather than typed: a struct reached only through __array's pointer gets to BTF as a
 * forward declaration, which libbpf cannot size.) */
#define LB_FLOW_ARRAY_DEF(value)                                        \
	struct {                                                        \
		__uint(type, BPF_MAP_TYPE_ARRAY);                       \
		__uint(max_entries, LB_FLOW_DEFAULT_BUCKETS);           \
		__uint(map_flags, BPF_F_MMAPABLE);                      \
		__uint(key_size, sizeof(__u32));                        \
		__uint(value_size, sizeof(value));                      \
	}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, LB_FLOW_ARRAY_DEF(struct lb_flow_sigs));
} flow_sigs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, LB_FLOW_ARRAY_DEF(struct lb_flow_bucket));
} flows SEC(".maps");

/* The new-flow rate guard's one-second window, per CPU (Pipeline::overNewFlowRate). */
struct lb_rate_window {
	__u64 start_ns;
	__u64 flows;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_rate_window);
} new_flow_window SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_cpu_counters);
} cpu_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend_counters);
} backend_counters SEC(".maps");

/* The NAT gateway MAC learned from client packets, packed in the low 48 bits; 0: none. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} learned_gw SEC(".maps");

/*
 * Runtime settings, written by the loader through the skeleton (skel->bss->...) before and
 * after load: deliberately not const volatile, so that they are not frozen at load. They start
 * at zero (.bss): the loader must set the timeouts (LB_DEFAULT_* in consts.h are the config's
 * defaults) and port_mac before traffic arrives.
 */
__u64 tcp_timeout_ns;
__u64 tcp_fin_timeout_ns;
__u64 udp_timeout_ns;
__u64 tcp_syn_timeout_ns;	/* a TCP flow whose handshake has not completed */
__u64 new_flow_rate_limit;	/* new flows per second per CPU inserted at most; 0: no limit */
__u8 port_mac[6];		/* source MAC of everything sent; the frames taken are for it */
__u8 gateway_mac[6];		/* IPv4 NAT replies' next hop, if has_gateway */
__u8 gateway_mac6[6];		/* IPv6 NAT replies' next hop, if has_gateway6 */
__u32 has_gateway;		/* else the learned router MAC (learned_gw) */
__u32 flow_buckets;		/* buckets of each flow table (at least 1) */
__u32 has_gateway6;
__u32 accept_any_mac;		/* non-zero: take frames for any destination MAC (replay) */
__u64 clock_override_ns;	/* non-zero: the flow clock (replay) */
/*
 * Non-zero: a TCP/UDP checksum field may be partial (Linux CHECKSUM_PARTIAL: the folded
 * pseudo-header sum, the rest left to a device), so the NAT rewrites test for it (lb.h,
 * lb_rewrite_l3l4). The loader sets it when the program is attached in generic mode, where frames
 * are a local sender's skbs (a veth peer, a container) and keep their partial state through
 * XDP_TX; it is off in native mode (frames from a NIC are complete) and for BPF_PROG_TEST_RUN
 * (replay), so that both data paths stay byte for byte alike there.
 */
__u32 csum_partial_possible;

#endif /* SLUICE_BPF_MAPS_H */
