/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * bpf_parse_twin.c - bpf/lib/parse.h built for the host (see bpf_parse_twin.h). The BPF headers
 * it includes are plain C; the helper declarations they bring are never called here.
 */
#include <string.h>

#include "../../bpf/lib/parse.h"

#include "bpf_parse_twin.h"

void twin_parse(const uint8_t *data, uint32_t data_len, uint32_t pkt_len, struct twin_result *out)
{
	void *begin = (void *)data;
	void *end = (void *)(data + data_len);
	struct lb_parsed p;
	struct lb_icmp_error e;

	memset(out, 0, sizeof(*out));
	memset(&p, 0, sizeof(p));
	out->not_a_flow_error = LB_NOT_A_FLOW_ERROR;
	out->rc = lb_parse(begin, end, pkt_len, &p);
	if (out->rc != LB_PARSE_OK)
		return;
	out->key = p.key;
	out->l3_off = p.l3_off;
	out->l4_off = p.l4_off;
	out->l3_end = p.l3_end;
	out->tcp_flags = p.tcp_flags;
	out->fragment = p.fragment;
	out->is_icmp_error = lb_is_icmp_error(begin, end, &p);
	if (!out->is_icmp_error)
		return;
	out->icmp_rc = lb_parse_icmp_error(begin, end, &p, &e);
	if (out->icmp_rc != LB_PARSE_OK)
		return;
	out->icmp_key = e.key;
	out->inner_l3 = e.inner_l3;
	out->inner_l4 = e.inner_l4;
}
