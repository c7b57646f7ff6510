/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Counters of the balancer: the global counters at stats[max_vips + CNT_*]
 * (enum lb_global_counter, consts.h). Uses maps.h and knobs.h.
 */
#ifndef KATRAN_LB_STATS_H
#define KATRAN_LB_STATS_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "knobs.h"
#include "maps.h"

/* Global counter max_vips + which of the `stats` map. */
static __always_inline struct lb_stats *global_cnt(__u32 which)
{
	__u32 key = max_vips + which;

	return bpf_map_lookup_elem(&stats, &key);
}

/* Count one event in v1 of a global counter, or in v2 when `second`. */
static __always_inline void count_pair(__u32 which, bool second)
{
	struct lb_stats *cnt = global_cnt(which);

	if (!cnt)
		return;
	if (second)
		cnt->v2 += 1;
	else
		cnt->v1 += 1;
}

/* A routed packet: its VIP's (stats[vip_num]) and its real's packets and
 * bytes. False when a lookup failed (the caller drops). */
static __always_inline bool count_vip_and_real(__u32 vip_num, __u32 real_index, __u16 pkt_bytes)
{
	struct lb_stats *cnt = bpf_map_lookup_elem(&stats, &vip_num);

	if (!cnt)
		return false;
	cnt->v1 += 1;
	cnt->v2 += pkt_bytes;
	cnt = bpf_map_lookup_elem(&reals_stats, &real_index);
	if (!cnt)
		return false;
	cnt->v1 += 1;
	cnt->v2 += pkt_bytes;
	return true;
}

/*
 * Drop a packet to a VIP that is malformed (bad_len: its IP length field
 * contradicts the frame) or comes from a martian source, and count it in
 * CNT_MALFORMED (not in Katran). Out of line: such packets are rare.
 */
LB_OUT_OF_LINE int drop_malformed(bool bad_len)
{
	count_pair(CNT_MALFORMED, !bad_len);
	return XDP_DROP;
}

#endif /* KATRAN_LB_STATS_H */
