/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Consistent hashing of the balancer: the flow hash, the ring slot, and
 * pick_real() for a new flow (source routing, knob lpm_src_lookup, or the
 * VIP's CH ring; the choice is remembered in the connection table). Uses
 * maps.h and knobs.h.
 */
#ifndef KATRAN_LB_CH_H
#define KATRAN_LB_CH_H

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
#include "lib/call_site.h"
#include "lib/jhash.h"
#include "lb_stats.h"
#include "lb_conntrack.h"

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

			real_idx = bpf_map_lookup_elem_apart(&lpm_src_v4, &k4, 0);
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
			count_pair(CNT_CH_DROP, true); /* v2: slot empty */
			return false;
		}
	}

	pkt->real_index = key;
	if (!bpf_map_lookup_elem(&reals, &key)) {
		count_pair(CNT_CH_DROP, false); /* v1: index not a real */
		return false;
	}
	/* as Katran: a reset does not open a connection */
	if (!(vip_info->flags & VIP_F_LRU_BYPASS) && !flood && !(pkt->flags & PKT_F_RST)) {
		if (pkt->flow.proto == IPPROTO_UDP)
			entry.atime = conn_now();
		entry.pos = key;
		conn_update(lru_map, &pkt->flow, &entry);
	}
	return true;
}

#endif /* KATRAN_LB_CH_H */
