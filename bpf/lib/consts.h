/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * consts.h - constants and defaults of the XDP data path.
 *
 * The wire constants repeat src/dataplane/packet.h; the timeout defaults repeat the
 * [timeouts] defaults of src/control/config.h, for loaders and tests (the runtime globals in
 * maps.h live in .bss and start at zero: the loader writes the configured values).
 */
#ifndef SLUICE_BPF_CONSTS_H
#define SLUICE_BPF_CONSTS_H

#include <linux/types.h>

#include "common/lb_abi.h"

#define LB_ETH_HLEN		14
#define LB_ETH_P_IPV4		0x0800
#define LB_ETH_P_IPV6		0x86DD
#define LB_ETH_P_VLAN		0x8100
#define LB_ETH_P_QINQ		0x88A8
#define LB_MAX_VLAN_TAGS	2
#define LB_MAX_IPV6_EXT_HDRS	6

#define LB_IPV4_HLEN		20
#define LB_IPV6_HLEN		40
#define LB_TCP_HLEN		20
#define LB_UDP_HLEN		8

/* IPv6 extension headers the parser walks (as packet.h: hop-by-hop, routing, dest opts,
 * fragment, AH). */
#define LB_IPPROTO_HOPOPTS	0
#define LB_IPPROTO_ROUTING	43
#define LB_IPPROTO_DSTOPTS	60
#define LB_IPPROTO_FRAGMENT	44
#define LB_IPPROTO_AH		51

#define LB_TCP_FIN		0x01
#define LB_TCP_SYN		0x02
#define LB_TCP_RST		0x04
#define LB_TCP_ACK		0x10

/*
 * Bound of the header offsets the parser returns: at most 22 (Ethernet, two tags) + 40 (IPv6)
 * + 6 * 2048 (extension headers) = 12350. Masking a stored offset with it changes nothing and
 * tells the verifier that offset + header size stays below its 64 KiB packet limit.
 */
#define LB_HDR_OFF_MASK		0x3fff

/* lb_parse() result when the packet is fine (as kParseOk). */
#define LB_PARSE_OK		(-1)

#define LB_NSEC_PER_SEC		1000000000ULL
#define LB_DEFAULT_TCP_TIMEOUT_NS	(900 * LB_NSEC_PER_SEC)
#define LB_DEFAULT_TCP_FIN_TIMEOUT_NS	(10 * LB_NSEC_PER_SEC)
#define LB_DEFAULT_UDP_TIMEOUT_NS	(300 * LB_NSEC_PER_SEC)

/* Default size of the flow map; the loader resizes it (flow_table_size) before load. */
#define LB_FLOWS_DEFAULT_ENTRIES	65536

#endif /* SLUICE_BPF_CONSTS_H */
