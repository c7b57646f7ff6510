/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The balancer's per-packet pipeline: process_packet() parses the IP header,
 * hands ICMP to lb_icmp.h and tunnelled packets to lb_decap.h; forward_cached()
 * routes a flow held in a fast flow-cache slot (lb_flow_cache.h) without the
 * VIP lookup; else balance_flow() finds the VIP, picks a real (lb_server_id.h, lb_conntrack.h,
 * lb_ch.h), counts (lb_stats.h) and encapsulates (lb_encap.h). Uses maps.h and
 * knobs.h.
 */
#ifndef KATRAN_LB_PIPELINE_H
#define KATRAN_LB_PIPELINE_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "knobs.h"
#include "maps.h"
#include "lib/cursor.h"
#include "parsing.h"
#include "icmp.h"
#include "lb_stats.h"
#include "lb_icmp.h"
#include "lb_conntrack.h"
#include "lb_ch.h"
#include "lb_server_id.h"
#include "lb_encap.h"
#include "lb_decap.h"
#include "lb_capture.h"

/*
 * A frame to a VIP above max_pckt_size (knob icmp_toobig_generation): count
 * it and answer with frag-needed / packet-too-big. Out of line: rare.
 */
LB_OUT_OF_LINE int answer_too_big(struct xdp_md *xdp, bool is_ipv6, __u64 frame_len)
{
	struct lb_stats *cnt = global_cnt(CNT_ICMP_TOOBIG);

	if (!cnt)
		return XDP_DROP;
	if (is_ipv6)
		cnt->v2 += 1;
	else
		cnt->v1 += 1;
	return icmp_send_too_big(xdp, is_ipv6, frame_len, max_pckt_size - sizeof(struct ethhdr));
}

/*
 * May there be VIPs without a port? ctl_array[CTL_ANY_PORT_VIPS] holds 1 + how
 * many there are, kept by the control plane; 0 (never written: another control
 * plane, or the moment between a hitless upgrade from an older build and the
 * first write) means not known, and the port-0 lookup is made, as in Katran.
 * Not in Katran: with none, a packet whose address and port are no VIP is
 * passed after one vip_map lookup, not two.
 */
static __always_inline bool any_port_vips(void)
{
	__u32 key = CTL_ANY_PORT_VIPS;
	struct ctl_value *v = bpf_map_lookup_elem(&ctl_array, &key);

	return !v || v->value != 1;
}

/*
 * VIP flags whose flows never take forward_cached(): their packets are routed
 * or counted from more than the 5-tuple (a port left out of the flow, QUIC and
 * stable-routing ids, the down-reals check, local delivery).
 */
#define FLOW_CACHE_SLOW_VIP_FLAGS                                                                  \
	(VIP_F_NO_SPORT | VIP_F_QUIC | VIP_F_UDP_STABLE_RT | VIP_F_UDP_FLOW_MIGRATION | VIP_F_LOCAL)

/* Packets forward_cached() may take: no SYN (never routed from the connection
 * table), no ICMP error, no TCP while server-id routing reads every segment. */
static __always_inline bool may_forward_cached(const struct pkt_meta *pkt)
{
	if (pkt->flags & (PKT_F_SYN | PKT_F_ICMP))
		return false;
	return !(tcp_server_id_routing && pkt->flow.proto == IPPROTO_TCP);
}

/*
 * Not in Katran: the fast path. A packet whose flow holds a live fast slot of
 * the flow cache (filled by balance_flow from a connection-table hit of an
 * exact-port VIP without FLOW_CACHE_SLOW_VIP_FLAGS) is counted and
 * encapsulated as balance_flow would, without the VIP lookup: the slot keeps
 * the VIP's vip_num, and the control plane makes a new epoch whenever a VIP is
 * deleted or its flags change. Anything else, and a packet balance_flow would
 * not route from the slot (too big, a length field that lies, capture on),
 * returns LB_CONTINUE: balance_flow decides.
 */
static __always_inline int forward_cached(struct xdp_md *xdp, struct pkt_meta *pkt, bool is_ipv6,
					  __u16 pkt_bytes, struct flow_cache_ref *ref)
{
	__u64 frame_len = (__u64)((long)xdp->data_end - (long)xdp->data);
	struct real_definition *dst;
	struct flow_cache_entry *fc;
	struct ctl_value *gw;
	__u32 key;
	__u64 now;

	if (!may_forward_cached(pkt) || __builtin_expect(capture_filter.enabled, 0))
		return LB_CONTINUE;
	if (!ref->found) /* forward_cached_v4 may have found it */
		flow_cache_find(&pkt->flow, ref);
	fc = ref->fc;
	if (!ref->held || !(fc->fast & FLOW_CACHE_FAST) || !flow_cache_live(fc, ref->stale, ref->slot))
		return LB_CONTINUE;
	if (ip_len_malformed(frame_len, pkt_bytes, is_ipv6) || frame_len > max_pckt_size)
		return LB_CONTINUE;
	if (pkt->flow.proto == IPPROTO_UDP) {
		now = conn_now();
		if (now - fc->seen > lru_udp_timeout_ns)
			return LB_CONTINUE;
		fc->seen = now;
	}
	key = fc->real_index;
	dst = bpf_map_lookup_elem(&reals, &key);
	if (!dst)
		return LB_CONTINUE;
	pkt->real_index = key;
	flow_cache_touch(fc);

	count_pair(CNT_LRU, false);
	count_pair(CNT_FLOW_CACHE, false);
	if (!count_vip_and_real(fc->fast & ~FLOW_CACHE_FAST, key, pkt_bytes))
		return XDP_DROP;

	key = CTL_DEFAULT_MAC;
	gw = bpf_map_lookup_elem(&ctl_array, &key);
	if (!gw)
		return XDP_DROP;
	if (!encap_to_real(xdp, gw, pkt, dst, is_ipv6, pkt_bytes)) {
		count_pair(CNT_ENCAP_FAIL, dst->flags & REAL_F_IPV6);
		return XDP_DROP;
	}
	return XDP_TX;
}

/*
 * Not in Katran: forward_cached() for an IPv4 TCP / UDP frame read straight from
 * its headers, before parse_ip fills a pkt_meta: the 5-tuple stays in registers
 * (no 48-byte flow key zeroed, written, read back for the hashes and compared
 * from the stack). Only a flow held in its set, and only a frame the
 * whole pipeline would hand to forward_cached() (no IP options, no fragment, no
 * SYN, no GUE to decapsulate, the VIP filter's bit set) with the same checks;
 * anything else returns LB_CONTINUE and takes the whole pipeline, which parses
 * the frame itself and decides as if this had not run. One more shortcut: a
 * frame the filter is sure no VIP with its port has, while no VIP without a port
 * exists, is passed here, as balance_flow would pass it. The checks and the
 * counting after the slot repeat forward_cached()'s on purpose: the two through
 * one shared inline tail cost 4-19 % a packet (bench_packets, paired).
 */
static __always_inline int forward_cached_v4(struct xdp_md *xdp, struct hot_stats *hot,
					     struct flow_cache_ref *ref)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	__u64 frame_len = data_end - data;
	struct iphdr *iph = pkt_ptr(data, data_end, sizeof(struct ethhdr), sizeof(*iph));
	__u64 l4 = sizeof(struct ethhdr) + sizeof(struct iphdr);
	struct real_definition *dst;
	struct flow_cache_entry *fc;
	struct encap_flow f;
	struct ctl_value *gw;
	__u32 ports, slot, epoch, key;
	__be32 saddr, daddr;
	__u16 pkt_bytes;
	__u64 *stale;
	__u8 proto;
	__u64 now;

	if (!iph || *(__u8 *)iph != IPV4_VERSION_IHL5 || (iph->frag_off & IPV4_FRAG_MASK_BE))
		return LB_CONTINUE;
	proto = iph->protocol;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = pkt_ptr(data, data_end, l4, sizeof(*tcp));

		if (!tcp || tcp->syn || tcp_server_id_routing)
			return LB_CONTINUE;
		ports = *(__u32 *)tcp;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *udp = pkt_ptr(data, data_end, l4, sizeof(*udp));

		if (!udp)
			return LB_CONTINUE;
		ports = *(__u32 *)udp;
		if (inline_decap_gue && udp->dest == bpf_htons(gue_dport))
			return LB_CONTINUE;
	} else {
		return LB_CONTINUE;
	}
	if (__builtin_expect(capture_filter.enabled, 0))
		return LB_CONTINUE;
	saddr = iph->saddr;
	daddr = iph->daddr;
	switch (vip_filter_of(daddr, ports >> 16, proto)) {
	case VIP_FILTER_SET:
		break;
	case VIP_FILTER_NONE: /* no VIP with this port: what balance_flow decides */
		return any_port_vips() ? LB_CONTINUE : XDP_PASS;
	default:
		return LB_CONTINUE;
	}

	epoch = flow_cache_epoch();
	if (!epoch)
		return LB_CONTINUE;
	slot = flow_cache_slot_of(saddr ^ daddr ^ ports ^ proto);
	stale = flow_cache_stale_word(slot);
	if (!stale)
		return LB_CONTINUE;
	fc = flow_cache_at(slot);
	if (!fc)
		return LB_CONTINUE;
	if (fc->epoch != epoch || !flow_key_is_v4(&fc->key, saddr, daddr, ports, proto)) {
		/* not in its home slot: another way, else hand the pipeline what
		 * flow_cache_find would find */
		struct flow_key k = {};

		k.src = saddr;
		k.dst = daddr;
		k.ports = ports;
		k.proto = proto;
		flow_cache_find_other(&k, ref, fc, slot, epoch, stale);
		if (!ref->held || !ref->fc)
			return LB_CONTINUE;
		fc = ref->fc; /* another way of the set holds it: routed from there */
		slot = ref->slot;
	}
	if (!(fc->fast & FLOW_CACHE_FAST) || !flow_cache_live(fc, stale, slot))
		return LB_CONTINUE;
	pkt_bytes = bpf_ntohs(iph->tot_len);
	if (ip_len_malformed(frame_len, pkt_bytes, false) || frame_len > max_pckt_size)
		return LB_CONTINUE;
	if (proto == IPPROTO_UDP) {
		now = conn_now();
		if (now - fc->seen > lru_udp_timeout_ns)
			return LB_CONTINUE;
		fc->seen = now;
	}
	key = fc->real_index;
	dst = bpf_map_lookup_elem(&reals, &key);
	if (!dst)
		return LB_CONTINUE;
	flow_cache_touch(fc);

	hot->c[CNT_LRU].v1 += 1;
	hot->c[CNT_FLOW_CACHE].v1 += 1;
	if (!count_vip_and_real(fc->fast & ~FLOW_CACHE_FAST, key, pkt_bytes))
		return XDP_DROP;

	key = CTL_DEFAULT_MAC;
	gw = bpf_map_lookup_elem(&ctl_array, &key);
	if (!gw)
		return XDP_DROP;
	f.src_word = saddr;
	f.sport = (__u16)ports;
	f.tos = iph->tos;
	f.l4_proto = proto;
	if (!encap_flow_to_real(xdp, gw, &f, dst, false, pkt_bytes)) {
		count_pair(CNT_ENCAP_FAIL, dst->flags & REAL_F_IPV6);
		return XDP_DROP;
	}
	return XDP_TX;
}

/* The L4 part of the pipeline: from a parsed TCP/UDP flow to a verdict. */
static __always_inline int balance_flow(struct xdp_md *xdp, struct pkt_meta *pkt, bool is_ipv6,
					__u16 pkt_bytes, bool no_port_vip, struct flow_cache_ref *ref)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	struct real_definition *dst = NULL;
	struct vip_definition vip;
	struct vip_meta *vip_info;
	struct lb_stats *lru_cnt, *cnt;
	struct ctl_value *gw;
	__u32 key, vip_num, cpu;
	__u64 frame_len;
	__u16 client_sport;
	bool exact = true; /* the VIP was found with the packet's own port */
	__u32 fast = 0;
	void *lru_map;

	__builtin_memset(&vip, 0, sizeof(vip));
	if (is_ipv6)
		__builtin_memcpy(vip.vipv6, pkt->flow.dstv6, 16);
	else
		vip.vip = pkt->flow.dst;
	vip.port = pkt->flow.port16[1];
	vip.proto = pkt->flow.proto;
	/* no_port_vip: the VIP filter is sure no VIP has this port (lb_flow_cache.h) */
	vip_info = no_port_vip ? NULL : bpf_map_lookup_elem(&vip_map, &vip);
	if (!vip_info) {
		if (!any_port_vips())
			return XDP_PASS;
		vip.port = 0;
		vip_info = bpf_map_lookup_elem(&vip_map, &vip);
		if (!vip_info)
			return XDP_PASS;
		exact = false;
		/* any-port VIP: the destination port is not part of the flow */
		if (!(vip_info->flags & (VIP_F_DPORT_HASH | VIP_F_HASH_SRC_DST_PORT)))
			pkt->flow.port16[1] = 0;
	}

	/* not in Katran: a length field that lies about the frame (the outer
	 * header would carry it) or a martian source is dropped and counted */
	frame_len = data_end - data;
	if (ip_len_malformed(frame_len, pkt_bytes, is_ipv6))
		return drop_malformed(true);
	if (src_is_martian(pkt->flow.srcv6, is_ipv6))
		return drop_malformed(false);

	if (frame_len > max_pckt_size) {
		if (icmp_toobig_generation)
			return answer_too_big(xdp, is_ipv6, frame_len);
		return XDP_DROP;
	}

	lru_cnt = global_cnt(CNT_LRU);
	if (!lru_cnt)
		return XDP_DROP;
	lru_cnt->v1 += 1;

	if (vip_info->flags & VIP_F_NO_SPORT)
		pkt->flow.port16[0] = 0;

	vip_num = vip_info->vip_num;
	cpu = bpf_get_smp_processor_id();
	/* this cpu's connection table; NULL: fallback_cache (see conn_lookup) */
	lru_map = bpf_map_lookup_elem(&lru_mapping, &cpu);
	if (!lru_map) {
		cnt = global_cnt(CNT_FALLBACK_LRU);
		if (!cnt)
			return XDP_DROP;
		cnt->v1 += 1;
	}

	if (vip_info->flags & VIP_F_QUIC) {
		int verdict = route_quic(xdp, pkt, is_ipv6, vip_info, lru_map);

		if (verdict >= 0)
			return verdict;
		if (verdict == LB_ROUTED)
			dst = routed_real(pkt);
	}

	if (udp_stable_routing && pkt->flow.proto == IPPROTO_UDP &&
	    (vip_info->flags & VIP_F_UDP_STABLE_RT)) {
		if (route_stable_rt(xdp, pkt, is_ipv6) == LB_ROUTED)
			dst = routed_real(pkt);
	}

	/* the client's source port seeds the outer source, keep it */
	client_sport = pkt->flow.port16[0];

	if (!dst) {
		if (tcp_server_id_routing && pkt->flow.proto == IPPROTO_TCP) {
			int verdict = route_tpr(xdp, pkt, is_ipv6, vip_info, lru_map);

			if (verdict >= 0)
				return verdict;
			if (verdict == LB_ROUTED)
				dst = routed_real(pkt);
		}

		if (!dst && !(pkt->flags & PKT_F_SYN) && !(vip_info->flags & VIP_F_LRU_BYPASS)) {
			if (exact && may_forward_cached(pkt) && !(vip_info->flags & FLOW_CACHE_SLOW_VIP_FLAGS))
				fast = FLOW_CACHE_FAST | vip_num;
			if (!exact || (vip_info->flags & VIP_F_NO_SPORT))
				ref->found = false; /* a port left out: another slot */
			cached_lru_lookup(pkt, lru_map, fast, ref, &dst);
		}

		if (global_lru && !dst && !(pkt->flags & PKT_F_SYN) &&
		    (vip_info->flags & VIP_F_GLOBAL_LRU)) {
			int verdict = global_lru_lookup(pkt, cpu);

			if (verdict >= 0)
				return verdict;
			if (verdict == LB_ROUTED)
				dst = routed_real(pkt);
		}

		udp_flow_migration_check(pkt, vip_info, &vip, &dst);

		if (!dst) {
			if (pkt->flow.proto == IPPROTO_TCP) {
				cnt = global_cnt(CNT_LRU_MISS);
				if (!cnt)
					return XDP_DROP;
				if (pkt->flags & PKT_F_SYN)
					cnt->v1 += 1;
				else
					cnt->v2 += 1;
			}
			if (!pick_real(pkt, vip_info, is_ipv6, lru_map))
				return XDP_DROP;
			dst = routed_real(pkt);
			if (!dst)
				return XDP_DROP;
			if (count_vip_lru_miss(&vip, pkt, is_ipv6) < 0)
				return XDP_DROP;
			lru_cnt->v2 += 1;
		}
	}

	key = CTL_DEFAULT_MAC;
	gw = bpf_map_lookup_elem(&ctl_array, &key);
	if (!gw)
		return XDP_DROP;

	if (!count_vip_and_real(vip_num, pkt->real_index, pkt_bytes))
		return XDP_DROP;

	if (local_delivery && (vip_info->flags & VIP_F_LOCAL) && (dst->flags & REAL_F_LOCAL))
		return XDP_PASS;

	pkt->flow.port16[0] = client_sport;
	/* the only cost of packet capture while none runs: one load, one compare */
	if (__builtin_expect(capture_filter.enabled, 0))
		return capture_and_encap(xdp, pkt, dst, vip_num, pkt_bytes, is_ipv6);
	if (!encap_to_real(xdp, gw, pkt, dst, is_ipv6, pkt_bytes)) {
		count_pair(CNT_ENCAP_FAIL, dst->flags & REAL_F_IPV6); /* v1: v4 real, v2: v6 */
		return XDP_DROP;
	}
	return XDP_TX;
}

static __always_inline int process_packet(struct xdp_md *xdp, bool is_ipv6, struct hot_stats *hot)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	__u64 nh_off = sizeof(struct ethhdr);
	struct flow_cache_ref ref;
	struct pkt_meta pkt;
	int filter;
	__u16 pkt_bytes = 0;
	__u8 proto = 0;
	int verdict;

	ref.found = false;
	if (!is_ipv6) {
		verdict = forward_cached_v4(xdp, hot, &ref);
		if (verdict >= 0)
			return verdict;
	}
	__builtin_memset(&pkt, 0, sizeof(pkt));
	verdict = parse_ip(data, data_end, nh_off, is_ipv6, &pkt, &proto, &pkt_bytes);
	if (verdict >= 0)
		return verdict;

	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		verdict = handle_icmp(data, data_end, is_ipv6, proto, &pkt);
		if (verdict >= 0)
			return verdict;
	}
	proto = pkt.flow.proto;

	if (inline_decap_ipip && (proto == IPPROTO_IPIP || proto == IPPROTO_IPV6)) {
		__u32 decap_flags = 0;
		bool pass = true;

		verdict = decap_dst_check(&pkt, is_ipv6, &pass, &decap_flags);
		if (verdict >= 0)
			return verdict;
		return decap_ipip(xdp, is_ipv6, proto, pass);
	}

	if (proto == IPPROTO_TCP) {
		if (!parse_ports(data, data_end, is_ipv6, true, &pkt))
			return XDP_DROP;
	} else if (proto == IPPROTO_UDP) {
		if (!parse_ports(data, data_end, is_ipv6, false, &pkt))
			return XDP_DROP;
		if (inline_decap_gue && pkt.flow.port16[1] == bpf_htons(gue_dport)) {
			__u32 decap_flags = 0;
			bool pass = true;

			verdict = decap_dst_check(&pkt, is_ipv6, &pass, &decap_flags);
			if (verdict >= 0)
				return verdict;
			return decap_gue(xdp, is_ipv6, pass, decap_flags);
		}
	} else {
		return XDP_PASS;
	}

	filter = vip_filter(&pkt.flow);
	if (filter == VIP_FILTER_SET) {
		verdict = forward_cached(xdp, &pkt, is_ipv6, pkt_bytes, &ref);
		if (verdict >= 0)
			return verdict;
	}
	return balance_flow(xdp, &pkt, is_ipv6, pkt_bytes, filter == VIP_FILTER_NONE, &ref);
}

#endif /* KATRAN_LB_PIPELINE_H */
