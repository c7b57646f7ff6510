/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Real selection of the balancer: connection tables (per-cpu LRU, fallback,
 * global LRU), consistent-hashing ring lookup, server-id routing (QUIC CID,
 * TCP option, UDP stable routing), source routing, UDP flow migration, and
 * the dispatch to the configured encapsulation. Uses maps.h and knobs.h.
 */
#ifndef KATRAN_LB_ROUTE_H
#define KATRAN_LB_ROUTE_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "knobs.h"
#include "maps.h"
#include "jhash.h"
#include "parsing.h"
#include "icmp.h"
#include "encap.h"

/* Global counter max_vips + which of the `stats` map. */
static __always_inline struct lb_stats *global_cnt(__u32 which)
{
	__u32 key = max_vips + which;

	return bpf_map_lookup_elem(&stats, &key);
}

/*
 * Drop a packet to a VIP that is malformed (bad_len: its IP length field
 * contradicts the frame) or comes from a martian source, and count it.
 * Out of line: such packets are rare.
 */
LB_OUT_OF_LINE int drop_malformed(bool bad_len)
{
	struct lb_stats *cnt = global_cnt(CNT_MALFORMED);

	if (cnt) {
		if (bad_len)
			cnt->v1 += 1;
		else
			cnt->v2 += 1;
	}
	return XDP_DROP;
}

/*
 * Answer an echo request when its destination is a VIP address; anything else
 * (the host's own addresses, transit) is left to the kernel. A request to a
 * VIP with a bad length or a martian source is dropped (see balance_flow).
 */
static __always_inline int echo_reply_for_vip(void *data, void *data_end, bool is_ipv6)
{
	struct address dst = {};
	const __be32 *src;
	__u16 ip_len;

	if (is_ipv6) {
		struct ipv6hdr *ip6h = pkt_ptr(data, data_end, sizeof(struct ethhdr), sizeof(*ip6h));

		if (!ip6h)
			return XDP_DROP;
		__builtin_memcpy(dst.addrv6, ip6h->daddr.s6_addr32, sizeof(dst.addrv6));
		src = ip6h->saddr.s6_addr32;
		ip_len = bpf_ntohs(ip6h->payload_len);
	} else {
		struct iphdr *iph = pkt_ptr(data, data_end, sizeof(struct ethhdr), sizeof(*iph));

		if (!iph)
			return XDP_DROP;
		dst.addr = iph->daddr;
		src = &iph->saddr;
		ip_len = bpf_ntohs(iph->tot_len);
	}
	if (!bpf_map_lookup_elem(&vip_addrs, &dst))
		return XDP_PASS;
	if (ip_len_malformed(data_end - data, ip_len, is_ipv6))
		return drop_malformed(true);
	if (src_is_martian(src, is_ipv6))
		return drop_malformed(false);
	return is_ipv6 ? icmp6_echo_reply(data, data_end) : icmp4_echo_reply(data, data_end);
}

/*
 * ICMP and ICMPv6 of the balancer: echo replies, flows of errors (into pkt),
 * PTB counters. Returns a verdict or LB_CONTINUE. Out of line: only ICMP
 * packets come here.
 */
LB_OUT_OF_LINE int handle_icmp(void *data, void *data_end, bool is_ipv6, __u8 proto,
				       struct pkt_meta *pkt)
{
	__u64 off = sizeof(struct ethhdr) + (is_ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	struct icmp_seen seen = {};
	struct lb_stats *cnt;
	int verdict;

	if (proto == IPPROTO_ICMPV6 && is_ipv6)
		verdict = icmp6_process(data, data_end, off, pkt, &seen);
	else if (proto == IPPROTO_ICMP && !is_ipv6)
		verdict = icmp4_process(data, data_end, off, pkt, &seen);
	else
		return LB_CONTINUE;
	if (verdict == LB_ECHO_REQUEST)
		return echo_reply_for_vip(data, data_end, is_ipv6);
	if (seen.ptb) {
		cnt = global_cnt(is_ipv6 ? CNT_ICMP_PTB_V6 : CNT_ICMP_PTB_V4);
		if (!cnt)
			return XDP_DROP;
		cnt->v1 += 1;
		if (seen.mtu < PTB_SMALL_MTU)
			cnt->v2 += 1;
	}
	return verdict;
}

/*
 * New-connection rate limiter (per cpu, one-second windows). True when the
 * rate is above max_conn_rate: then the LRU and source routing are skipped.
 * The window runs on the coarse clock: tick precision is plenty for a
 * per-second budget and it needs no clock-source read (only UDP connection
 * table entries need the precise time, see pick_real).
 */
static __always_inline bool under_flood(void)
{
	struct lb_stats *rate = global_cnt(CNT_NEW_CONN_RATE);
	__u64 now;

	if (!rate)
		return true;
	now = bpf_ktime_get_coarse_ns();
	if (now - rate->v2 > NSEC_PER_SEC_U64) {
		rate->v1 = 1;
		rate->v2 = now;
		return false;
	}
	rate->v1 += 1;
	return rate->v1 > max_conn_rate;
}

/* Flow hash: jhash of (source, ports); IPv6 sources are hashed first. */
static __always_inline __u32 flow_hash(const struct pkt_meta *pkt, bool is_ipv6)
{
	__u32 seed = ring_size * max_vips;

	if (is_ipv6)
		return jhash_two_words(jhash_16bytes(pkt->flow.srcv6, max_vips), pkt->flow.ports, seed);
	return jhash_two_words(pkt->flow.src, pkt->flow.ports, seed);
}

/*
 * Slot of a flow hash in a CH ring: hash % ring_size. A modulo by the knob
 * is a division at run time (tens of cycles); for the default size 65537 =
 * 2^16 + 1 it is a subtraction, as 2^16 = -1 (mod 65537): the hash
 * hi * 2^16 + lo leaves lo - hi. The verifier keeps only the branch that
 * matches the loaded ring_size.
 */
static __always_inline __u32 ring_slot(__u32 hash)
{
	__s32 r;

	if (ring_size != DEFAULT_RING_SIZE)
		return hash % ring_size;
	r = (__s32)(hash & 0xffff) - (__s32)(hash >> 16);
	return r < 0 ? r + DEFAULT_RING_SIZE : r;
}

static __always_inline void ch_drop_count(bool slot_empty)
{
	struct lb_stats *cnt = global_cnt(CNT_CH_DROP);

	if (!cnt)
		return;
	if (slot_empty)
		cnt->v2 += 1;
	else
		cnt->v1 += 1;
}

/*
 * Pick a real for a new flow: source routing (knob lpm_src_lookup) or the
 * VIP's CH ring, then remember the choice in the connection table. Sets
 * pkt->real_index to an existing real or returns false. Out of line: the
 * hashing and ring walk would crowd the registers of the LRU hit path.
 */
LB_OUT_OF_LINE bool pick_real(struct pkt_meta *pkt, struct vip_meta *vip_info, bool is_ipv6,
			      void *lru_map)
{
	struct real_pos_lru entry = {};
	bool flood, routed = false;
	__u32 key = 0, *slot;

	flood = under_flood();

	if (lpm_src_lookup && (vip_info->flags & VIP_F_SRC_ROUTING) && !flood) {
		struct lb_stats *cnt;
		__u32 *real_idx;

		if (is_ipv6) {
			struct v6_lpm_key k6 = { .prefixlen = 128 };

			__builtin_memcpy(k6.addr, pkt->flow.srcv6, 16);
			real_idx = bpf_map_lookup_elem(&lpm_src_v6, &k6);
		} else {
			struct v4_lpm_key k4 = { .prefixlen = 32, .addr = pkt->flow.src };

			real_idx = bpf_map_lookup_elem(&lpm_src_v4, &k4);
		}
		if (real_idx) {
			routed = true;
			key = *real_idx;
		}
		cnt = global_cnt(CNT_LPM_SRC);
		if (cnt) {
			if (routed)
				cnt->v2 += 1;
			else
				cnt->v1 += 1;
		}
	}

	if (!routed) {
		if (vip_info->flags & VIP_F_DPORT_HASH) {
			/* all clients of a destination port share one real */
			pkt->flow.port16[0] = pkt->flow.port16[1];
			__builtin_memset(pkt->flow.srcv6, 0, 16);
		}
		key = ring_size * vip_info->vip_num + ring_slot(flow_hash(pkt, is_ipv6));
		slot = bpf_map_lookup_elem(&ch_rings, &key);
		if (!slot)
			return false;
		key = *slot;
		if (!key) {
			/* real indexes start at 1: an empty (uninitialised) ring */
			ch_drop_count(true);
			return false;
		}
	}

	pkt->real_index = key;
	if (!bpf_map_lookup_elem(&reals, &key)) {
		ch_drop_count(false);
		return false;
	}
	/* as Katran: a reset does not open a connection */
	if (!(vip_info->flags & VIP_F_LRU_BYPASS) && !flood && !(pkt->flags & PKT_F_RST)) {
		if (pkt->flow.proto == IPPROTO_UDP)
			entry.atime = bpf_ktime_get_ns();
		entry.pos = key;
		bpf_map_update_elem(lru_map, &pkt->flow, &entry, BPF_ANY);
	}
	return true;
}

/*
 * Connection-table lookup. UDP entries idle for more than lru_udp_timeout_ns
 * are ignored (and refreshed on use); `global` tables hold a bare index.
 */
static __always_inline void lru_lookup(struct pkt_meta *pkt, void *lru_map, bool global,
				       struct real_definition **dst)
{
	struct real_pos_lru *entry = bpf_map_lookup_elem(lru_map, &pkt->flow);
	__u32 key;

	if (!entry)
		return;
	if (!global && pkt->flow.proto == IPPROTO_UDP) {
		__u64 now = bpf_ktime_get_ns();

		if (now - entry->atime > lru_udp_timeout_ns)
			return;
		entry->atime = now;
	}
	key = entry->pos;
	pkt->real_index = key;
	*dst = bpf_map_lookup_elem(&reals, &key);
}

/*
 * Global LRU (knob global_lru): per-cpu table or fallback_glru. Returns
 * XDP_DROP, LB_CONTINUE or LB_ROUTED. Out of line: a knob-gated feature.
 */
LB_OUT_OF_LINE int global_lru_lookup(struct pkt_meta *pkt, __u32 cpu)
{
	struct lb_stats *cnt = global_cnt(CNT_GLOBAL_LRU);
	void *glru = bpf_map_lookup_elem(&global_lru_maps, &cpu);
	__u32 *pos, key;

	if (!cnt)
		return XDP_DROP;
	if (glru) {
		pos = bpf_map_lookup_elem(glru, &pkt->flow);
	} else {
		cnt->v1 += 1; /* no global LRU for this cpu */
		pos = bpf_map_lookup_elem(&fallback_glru, &pkt->flow);
	}
	if (!pos)
		return LB_CONTINUE;
	key = *pos;
	pkt->real_index = key;
	if (!bpf_map_lookup_elem(&reals, &key))
		return LB_CONTINUE;
	cnt->v2 += 1;
	return LB_ROUTED;
}

/*
 * After server-id routing: make the connection table agree with the real
 * that was picked. Returns LRU_DST_MATCH / MISMATCH (entry fixed) / ABSENT
 * (entry created unless under flood).
 */
static __always_inline int lru_sync(struct pkt_meta *pkt, void *lru_map)
{
	struct real_pos_lru *entry = bpf_map_lookup_elem(lru_map, &pkt->flow);
	struct real_pos_lru fresh = {};

	if (entry) {
		if (entry->pos == pkt->real_index)
			return LRU_DST_MATCH;
		entry->pos = pkt->real_index;
		return LRU_DST_MISMATCH;
	}
	if (under_flood())
		return LRU_DST_ABSENT;
	fresh.pos = pkt->real_index;
	bpf_map_update_elem(lru_map, &pkt->flow, &fresh, BPF_ANY);
	return LRU_DST_ABSENT;
}

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
 * The real a router chose (it returned LB_ROUTED, so it exists). Routers
 * run out of line and hand back the index only: a map value pointer cannot
 * be returned from a BPF-to-BPF call.
 */
static __always_inline struct real_definition *routed_real(struct pkt_meta *pkt)
{
	return bpf_map_lookup_elem(&reals, &pkt->real_index);
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
	sid = tcp_opt_server_id(data, data_end, is_ipv6);
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

/*
 * Is the remembered real of this UDP flow marked down for its VIP
 * (vip_to_down_reals_map)? Then the flow is re-hashed. Out of line: only
 * VIPs with UDP_FLOW_MIGRATION come here.
 */
LB_OUT_OF_LINE bool udp_real_is_down(struct pkt_meta *pkt, struct vip_definition *vip)
{
	struct lb_stats *cnt;
	void *down;

	if (under_flood())
		return false;
	down = bpf_map_lookup_elem(&vip_to_down_reals_map, vip);
	if (!down)
		return false;
	if (!bpf_map_lookup_elem(down, &pkt->real_index))
		return false;
	cnt = global_cnt(CNT_UDP_FLOW_MIG);
	if (cnt)
		cnt->v1 += 1;
	return true;
}

/* UDP flow migration: forget dst when its real is down (see above). */
static __always_inline void udp_flow_migration_check(struct pkt_meta *pkt,
						     struct vip_meta *vip_info,
						     struct vip_definition *vip,
						     struct real_definition **dst)
{
	if (!*dst || pkt->flow.proto != IPPROTO_UDP || !(vip_info->flags & VIP_F_UDP_FLOW_MIGRATION))
		return;
	if (udp_real_is_down(pkt, vip))
		*dst = NULL;
}

/*
 * Per-real LRU miss counter for the single VIP selected in vip_miss_stats.
 * Returns -1 when a map lookup fails.
 */
static __always_inline int count_vip_lru_miss(struct vip_definition *vip, struct pkt_meta *pkt,
					      bool is_ipv6)
{
	__u32 key = 0;
	struct vip_definition *watched = bpf_map_lookup_elem(&vip_miss_stats, &key);
	bool same;
	__u32 *cnt;

	if (!watched)
		return -1;
	if (is_ipv6)
		same = watched->vipv6[0] == vip->vipv6[0] && watched->vipv6[1] == vip->vipv6[1] &&
		       watched->vipv6[2] == vip->vipv6[2] && watched->vipv6[3] == vip->vipv6[3];
	else
		same = watched->vip == vip->vip;
	if (!same || watched->port != vip->port || watched->proto != vip->proto)
		return 0;
	cnt = bpf_map_lookup_elem(&lru_miss_stats, &pkt->real_index);
	if (!cnt)
		return -1;
	*cnt += 1;
	return 0;
}

/* Encapsulate towards dst with the configured scheme (IPIP family or GUE). */
static __always_inline bool encap_to_real(struct xdp_md *xdp, struct ctl_value *gw,
					  struct pkt_meta *pkt, struct real_definition *dst,
					  bool is_ipv6, __u16 pkt_bytes)
{
	struct encap_flow f = {
		.sport = pkt->flow.port16[0],
		.tos = pkt->tos,
		.l4_proto = pkt->flow.proto,
	};
	struct real_definition *src;
	__u32 key;

	if (dst->flags & REAL_F_IPV6) {
		f.src_word = is_ipv6 ? pkt->flow.srcv6[3] : pkt->flow.src;
		if (gue_encap) {
			key = PCKT_SRC_V6;
			src = bpf_map_lookup_elem(&pckt_srcs, &key);
			if (!src)
				return false;
			return encap_gue_v6(xdp, gw->mac, &f, is_ipv6, src->dstv6, dst->dstv6,
					    pkt_bytes, gue_dport);
		}
		return encap_ipip_v6(xdp, gw->mac, &f, is_ipv6, dst->dstv6, pkt_bytes);
	}
	f.src_word = pkt->flow.src;
	if (gue_encap) {
		key = PCKT_SRC_V4;
		src = bpf_map_lookup_elem(&pckt_srcs, &key);
		if (!src)
			return false;
		return encap_gue_v4(xdp, gw->mac, &f, src->dst, dst->dst, pkt_bytes, gue_dport);
	}
	return encap_ipip_v4(xdp, gw->mac, &f, dst->dst, pkt_bytes);
}

#endif /* KATRAN_LB_ROUTE_H */
