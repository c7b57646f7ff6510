/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Connection tables of the balancer: the new-connection rate limiter that
 * guards LRU writes, per-cpu / fallback LRU lookup, the global LRU, keeping
 * the LRU in step with server-id routing, UDP flow migration and the per-real
 * LRU miss counter. Uses maps.h and knobs.h.
 */
#ifndef KATRAN_LB_CONNTRACK_H
#define KATRAN_LB_CONNTRACK_H

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
#include "lib/addr.h"
#include "lib/call_site.h"
#include "lb_stats.h"
#include "lb_flow_cache.h"

/*
 * Connection-table time of now (UDP entries' atime): the coarse monotonic
 * clock. A tick (<= 4 ms) of precision is plenty against a timeout of
 * seconds, and it needs no clock-source read (bpf_ktime_get_ns costs ~25 ns
 * a packet here). Katran uses the precise clock; the control plane reads both
 * as CLOCK_MONOTONIC nanoseconds.
 */
static __always_inline __u64 conn_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/*
 * New-connection rate limiter (per cpu, one-second windows). True when the
 * rate is above max_conn_rate: then the LRU and source routing are skipped.
 * The window runs on the coarse clock (conn_now): tick precision is plenty
 * for a per-second budget.
 */
static __always_inline bool under_flood(void)
{
	struct lb_stats *rate = global_cnt(CNT_NEW_CONN_RATE);
	__u64 now;

	if (!rate)
		return true;
	now = conn_now();
	if (now - rate->v2 > NSEC_PER_SEC_U64) {
		rate->v1 = 1;
		rate->v2 = now;
		return false;
	}
	rate->v1 += 1;
	return rate->v1 > max_conn_rate;
}

/*
 * This cpu's connection table: `own` is its inner map of lru_mapping, NULL
 * when the cpu has none (then fallback_cache). The two tables are used from
 * call sites apart (lib/call_site.h), so both lookups are inlined.
 */
static __always_inline void *conn_lookup(void *own, const struct flow_key *key)
{
	if (own)
		return bpf_map_lookup_elem(own, key);
	return bpf_map_lookup_elem_apart(&fallback_cache, key, 0);
}

static __always_inline void conn_update(void *own, const struct flow_key *key,
					const struct real_pos_lru *entry)
{
	if (own) {
		bpf_map_update_elem(own, key, entry, BPF_ANY);
		flow_cache_forget(key);
	} else
		bpf_map_update_elem_apart(&fallback_cache, key, entry, BPF_ANY, 0);
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
 * Connection-table lookup (lru_map: see conn_lookup). UDP entries idle for
 * more than lru_udp_timeout_ns are ignored (and refreshed on use); `seen`, the
 * flow cache's last-seen time of the flow (0: none), counts as a use. Returns
 * the UDP entry's new atime (0 otherwise).
 */
static __always_inline __u64 lru_lookup(struct pkt_meta *pkt, void *lru_map, __u64 seen,
					struct real_definition **dst)
{
	struct real_pos_lru *entry = conn_lookup(lru_map, &pkt->flow);
	__u64 now = 0;
	__u32 key;

	if (!entry)
		return 0;
	if (pkt->flow.proto == IPPROTO_UDP) {
		now = conn_now();
		if (seen > entry->atime)
			entry->atime = seen;
		/* an atime ahead of now is fresh: the precise clock of an older build
		 * (hitless upgrade) runs up to a tick ahead of the coarse one */
		if (now > entry->atime && now - entry->atime > lru_udp_timeout_ns)
			return 0;
		entry->atime = now;
	}
	key = entry->pos;
	pkt->real_index = key;
	*dst = bpf_map_lookup_elem(&reals, &key);
	return now;
}

/*
 * The connection table through the flow cache (lb_flow_cache.h): the real of
 * the slot that holds this flow while it is not stale and is fresh (UDP: and
 * the flow not idle); else lru_lookup, given the slot's last-seen time, whose
 * hit fills that slot or the way flow_cache_find chose (fast: see
 * flow_cache_fill). ref: the flow's slot when the caller
 * has found it (ref->found), else found here. Counts hits (v1) and fills (v2)
 * in CNT_FLOW_CACHE.
 */
static __always_inline void cached_lru_lookup(struct pkt_meta *pkt, void *lru_map, __u32 fast,
					      struct flow_cache_ref *ref,
					      struct real_definition **dst)
{
	struct flow_cache_entry *fc = NULL;
	__u64 seen = 0, now;
	__u32 key;

	if (lru_map) {
		if (!ref->found)
			flow_cache_find(&pkt->flow, ref);
		fc = ref->fc;
	}
	if (fc && ref->held) {
		if (flow_cache_live(fc, ref->stale, ref->slot)) {
			bool hit = true;

			if (pkt->flow.proto == IPPROTO_UDP) {
				now = conn_now();
				hit = now - fc->seen <= lru_udp_timeout_ns;
				if (hit)
					fc->seen = now;
			}
			if (hit) {
				key = fc->real_index;
				pkt->real_index = key;
				*dst = bpf_map_lookup_elem(&reals, &key);
				if (*dst) {
					flow_cache_touch(fc);
					count_pair(CNT_FLOW_CACHE, false);
					return;
				}
			}
		}
		seen = fc->seen;
		fc->epoch = 0;
	}
	now = lru_lookup(pkt, lru_map, seen, dst);
	if (fc && *dst) {
		flow_cache_fill(ref, pkt, now, fast);
		count_pair(CNT_FLOW_CACHE, true);
	}
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
		pos = bpf_map_lookup_elem_apart(&fallback_glru, &pkt->flow, 0);
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
	struct real_pos_lru *entry = conn_lookup(lru_map, &pkt->flow);
	struct real_pos_lru fresh = {};

	if (entry) {
		if (entry->pos == pkt->real_index)
			return LRU_DST_MATCH;
		entry->pos = pkt->real_index;
		flow_cache_forget(&pkt->flow);
		return LRU_DST_MISMATCH;
	}
	if (under_flood())
		return LRU_DST_ABSENT;
	fresh.pos = pkt->real_index;
	conn_update(lru_map, &pkt->flow, &fresh);
	return LRU_DST_ABSENT;
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
		same = addr6_eq(watched->vipv6, vip->vipv6);
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

#endif /* KATRAN_LB_CONNTRACK_H */
