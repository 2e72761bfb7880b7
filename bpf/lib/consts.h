/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * consts.h - constants and defaults of the XDP data path.
 *
 * The wire constants both parsers share are in src/common/lb_abi.h; these are the XDP path's
 * own. The runtime timeout globals in maps.h live in .bss and start at zero: the loader writes
 * the configured values.
 */
#ifndef SLUICE_BPF_CONSTS_H
#define SLUICE_BPF_CONSTS_H

#include <linux/types.h>

#include "common/lb_abi.h"

#define LB_IPV4_HLEN		20
#define LB_IPV6_HLEN		40
#define LB_TCP_HLEN		20
#define LB_UDP_HLEN		8

/*
 * Bound of the header offsets the parser returns: at most 22 (Ethernet, two tags) + 40 (IPv6)
 * + 6 * 2048 (extension headers) = 12350. Masking a stored offset with it changes nothing and
 * tells the verifier that offset + header size stays below its 64 KiB packet limit.
 */
#define LB_HDR_OFF_MASK		0x3fff

#define LB_NSEC_PER_SEC		1000000000ULL
#define LB_DEFAULT_TCP_TIMEOUT_NS	(LB_DEFAULT_TCP_TIMEOUT_S * LB_NSEC_PER_SEC)
#define LB_DEFAULT_TCP_FIN_TIMEOUT_NS	(LB_DEFAULT_TCP_FIN_TIMEOUT_S * LB_NSEC_PER_SEC)
#define LB_DEFAULT_UDP_TIMEOUT_NS	(LB_DEFAULT_UDP_TIMEOUT_S * LB_NSEC_PER_SEC)

/* Entries of local_addrs: Sluice's own addresses (the loader refuses a snapshot with more). */
#define LB_MAX_LOCAL_ADDRS	1024

/* Buckets of the flow map as declared; the loader sizes it (flow_table_size) before load. */
#define LB_FLOW_DEFAULT_BUCKETS	8192

#endif /* SLUICE_BPF_CONSTS_H */
