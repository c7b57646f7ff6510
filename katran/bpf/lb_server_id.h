/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Server-id routing of the balancer: QUIC connection ids (VIP flag QUIC),
 * TCP option 0xB7 (knob tcp_server_id_routing) and UDP stable routing (knob
 * udp_stable_routing); the id -> real table is server_id_map. Uses maps.h
 * and knobs.h.
 */
#ifndef KATRAN_LB_SERVER_ID_H
#define KATRAN_LB_SERVER_ID_H

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
#include "parsing.h"
#include "icmp.h"
#include "lb_stats.h"
#include "lb_conntrack.h"

static __always_inline void server_id_stats_count(__u32 vip_num, bool new_conn, bool mismatch)
{
	struct lb_stats *cnt = bpf_map_lookup_elem(&server_id_stats, &vip_num);

	if (!cnt)
		return;
	if (new_conn)
		cnt->v1 += 1;
	if (mismatch)
		cnt->v2 += 1;
}

/* Real index registered for a server id, 0 when unknown / uninitialised. */
static __always_inline __u32 server_id_to_real(__u32 server_id, bool *known)
{
	__u32 *idx = bpf_map_lookup_elem(&server_id_map, &server_id);

	*known = idx != NULL;
	return idx ? *idx : 0;
}

/*
 * QUIC VIPs: route by the server id in the connection id. ICMP errors and
 * initial packets fall back to CH. Returns XDP_DROP, LB_CONTINUE or
 * LB_ROUTED. Out of line: only QUIC VIPs come here.
 */
LB_OUT_OF_LINE int route_quic(struct xdp_md *xdp, struct pkt_meta *pkt, bool is_ipv6,
			      struct vip_meta *vip_info, void *lru_map)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	__u32 vip_num = vip_info->vip_num;
	struct lb_quic_packets_stats *qs;
	struct quic_cid_info cid;
	__u32 key = 0, idx;
	bool known;

	if (pkt->flags & PKT_F_ICMP) {
		/* the quote may not hold the CID: use CH, just count */
		struct lb_stats *cnt = global_cnt(CNT_QUIC_ICMP);

		if (!cnt)
			return XDP_DROP;
		cnt->v1 += 1;
		if (quic_ignorable_icmp(data, data_end, is_ipv6))
			cnt->v2 += 1;
		return LB_CONTINUE;
	}

	qs = bpf_map_lookup_elem(&quic_stats_map, &key);
	if (!qs)
		return XDP_DROP;
	cid = parse_quic_cid(data, data_end, is_ipv6, false);
	if (cid.server_id > 0) {
		if (cid.cid_version == QUIC_CID_V1)
			qs->cid_v1 += 1;
		else if (cid.cid_version == QUIC_CID_V2)
			qs->cid_v2 += 1;
		else if (cid.cid_version == QUIC_CID_V3)
			qs->cid_v3 += 1;
		else
			qs->cid_v0 += 1;

		idx = server_id_to_real(cid.server_id, &known);
		if (!idx) {
			qs->cid_invalid_server_id += 1;
			qs->cid_invalid_server_id_sample = cid.server_id;
			qs->ch_routed += 1;
			return LB_CONTINUE;
		}
		pkt->real_index = idx;
		if (!bpf_map_lookup_elem(&reals, &idx)) {
			qs->cid_unknown_real_dropped += 1;
			return XDP_DROP;
		}
		switch (lru_sync(pkt, lru_map)) {
		case LRU_DST_MATCH:
			qs->dst_match_in_lru += 1;
			break;
		case LRU_DST_MISMATCH:
			qs->dst_mismatch_in_lru += 1;
			server_id_stats_count(vip_num, false, true);
			break;
		default:
			qs->dst_not_found_in_lru += 1;
		}
		qs->cid_routed += 1;
		return LB_ROUTED;
	} else if (!cid.is_initial) {
		qs->ch_routed += 1;
	} else {
		qs->cid_initial += 1;
		server_id_stats_count(vip_num, true, false);
	}
	return LB_CONTINUE;
}

/*
 * UDP stable routing (knob udp_stable_routing): route by the server id of
 * the 0x52 header. A failed real lookup only counts (the flow goes to CH).
 * Returns LB_ROUTED or LB_CONTINUE. Out of line: a knob-gated feature.
 */
LB_OUT_OF_LINE int route_stable_rt(struct xdp_md *xdp, struct pkt_meta *pkt, bool is_ipv6)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	struct lb_stable_rt_packets_stats *ss;
	struct stable_rt_info hdr;
	__u32 key = 0, idx;
	bool known;

	ss = bpf_map_lookup_elem(&stable_rt_stats, &key);
	if (!ss)
		return LB_CONTINUE;
	hdr = parse_stable_rt(data, data_end, is_ipv6, pkt->flags & PKT_F_ICMP);
	if (hdr.server_id > 0) {
		idx = server_id_to_real(hdr.server_id, &known);
		if (!known) {
			ss->cid_invalid_server_id += 1;
			ss->ch_routed += 1;
			return LB_CONTINUE;
		}
		if (!idx)
			return LB_CONTINUE;
		pkt->real_index = idx;
		if (!bpf_map_lookup_elem(&reals, &idx)) {
			ss->cid_unknown_real_dropped += 1;
			return LB_CONTINUE;
		}
		ss->cid_routed += 1;
		return LB_ROUTED;
	}
	if (!hdr.is_stable_rt)
		ss->invalid_packet_type += 1;
	ss->ch_routed += 1;
	return LB_CONTINUE;
}

/*
 * TCP server-id routing (knob tcp_server_id_routing): non-SYN packets
 * carrying option 0xB7 with a known server id go to that real, and the
 * connection table is updated. Returns XDP_DROP, LB_CONTINUE or LB_ROUTED.
 * Out of line: a knob-gated feature.
 */
LB_OUT_OF_LINE int route_tpr(struct xdp_md *xdp, struct pkt_meta *pkt, bool is_ipv6,
			     struct vip_meta *vip_info, void *lru_map)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	struct lb_tpr_packets_stats *ts;
	__u32 key = 0, sid, idx;
	bool known, found = false;

	ts = bpf_map_lookup_elem(&tpr_stats_map, &key);
	if (!ts)
		return XDP_DROP;
	if (pkt->flags & PKT_F_SYN) {
		ts->tcp_syn += 1;
		server_id_stats_count(vip_info->vip_num, true, false);
		return LB_CONTINUE;
	}
	sid = tcp_opt_server_id(data, data_end, l4_offset(is_ipv6, false));
	idx = sid ? server_id_to_real(sid, &known) : 0;
	if (idx) {
		pkt->real_index = idx;
		found = bpf_map_lookup_elem(&reals, &idx) != NULL;
	}
	if (!found) {
		ts->ch_routed += 1;
		return LB_CONTINUE;
	}
	if (!(vip_info->flags & VIP_F_LRU_BYPASS)) {
		if (lru_sync(pkt, lru_map) == LRU_DST_MISMATCH) {
			ts->dst_mismatch_in_lru += 1;
			server_id_stats_count(vip_info->vip_num, false, true);
		}
	}
	ts->sid_routed += 1;
	return LB_ROUTED;
}

#endif /* KATRAN_LB_SERVER_ID_H */
