/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * bpf_parse_twin.h - the XDP program's parser (bpf/lib/parse.h) compiled for the host, so that
 * packet_fuzz can hold it against parsePacket() and parseIcmpError() (src/dataplane/) a few
 * million times a second: the two are written to be the same function, check for check.
 */
#ifndef SLUICE_FUZZ_BPF_PARSE_TWIN_H
#define SLUICE_FUZZ_BPF_PARSE_TWIN_H

#include <stdint.h>

#include "common/lb_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * What the twin found, field by field (copied by name from struct lb_parsed and struct
 * lb_icmp_error, so that a change of their layout needs no change here).
 */
struct twin_result {
	int rc;			/* lb_parse() */
	struct lb_flow_key key;
	uint32_t l3_off, l4_off, l3_end;
	uint8_t tcp_flags, fragment;
	int is_icmp_error;	/* lb_is_icmp_error(), after a successful lb_parse() */
	int icmp_rc;		/* lb_parse_icmp_error(), when is_icmp_error */
	struct lb_flow_key icmp_key;
	uint32_t inner_l3, inner_l4;
	int not_a_flow_error;	/* the value of LB_NOT_A_FLOW_ERROR */
};

/* The XDP parser on [data, data + data_len) of a pkt_len-byte frame. */
void twin_parse(const uint8_t *data, uint32_t data_len, uint32_t pkt_len, struct twin_result *out);

#ifdef __cplusplus
}
#endif

#endif /* SLUICE_FUZZ_BPF_PARSE_TWIN_H */
