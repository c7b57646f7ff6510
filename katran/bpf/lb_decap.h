/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Inline decapsulation in the balancer (knobs inline_decap_ipip,
 * inline_decap_gue, decap_strict_destination): packets to a decap_dst
 * address are decapsulated and re-run through the balancer (tail call into
 * subprograms[0]); other tunnelled packets are decapsulated and passed to
 * the kernel. Uses maps.h and knobs.h.
 */
#ifndef KATRAN_LB_DECAP_H
#define KATRAN_LB_DECAP_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "knobs.h"
#include "maps.h"
#include "lib/addr.h"
#include "lib/cursor.h"
#include "lib/xdp_decap.h"
#include "parsing.h"
#include "lb_stats.h"
#include "lb_icmp.h"

/*
 * Is the outer destination one we decapsulate for re-balancing (decap_dst:
 * *pass = false) or, with decap_strict_destination, not ours at all (PASS)?
 */
static __always_inline int decap_dst_check(struct pkt_meta *pkt, bool is_ipv6, bool *pass,
					   __u32 *decap_flags)
{
	struct address addr;
	struct real_definition *host;
	struct lb_stats *cnt;
	__u32 *flags, key;

	__builtin_memset(&addr, 0, sizeof(addr));
	if (is_ipv6)
		__builtin_memcpy(addr.addrv6, pkt->flow.dstv6, 16);
	else
		addr.addr = pkt->flow.dst;
	flags = bpf_map_lookup_elem(&decap_dst, &addr);
	if (flags) {
		*pass = false;
		*decap_flags = *flags;
		cnt = global_cnt(CNT_REMOTE_ENCAP);
		if (!cnt)
			return XDP_DROP;
		cnt->v1 += 1;
		return LB_CONTINUE;
	}
	if (!decap_strict_destination)
		return LB_CONTINUE;
	key = is_ipv6 ? PCKT_SRC_V6 : PCKT_SRC_V4;
	host = bpf_map_lookup_elem(&pckt_srcs, &key);
	if (!host)
		return LB_CONTINUE;
	if (is_ipv6) {
		if (!addr6_eq(host->dstv6, pkt->flow.dstv6))
			return XDP_PASS;
	} else if (host->dst != pkt->flow.dst) {
		return XDP_PASS;
	}
	return LB_CONTINUE;
}

/* Run the decapsulated packet through the balancer again. */
static __always_inline int recirculate(struct xdp_md *xdp)
{
	bpf_tail_call(xdp, &subprograms, RECIRC_SLOT);
	return XDP_PASS; /* nothing registered: let the kernel have it */
}

/* Count a decapsulated-and-passed packet against its inner VIP. */
static __always_inline void decap_vip_count(struct xdp_md *xdp, bool inner_v6)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	struct vip_definition vip;
	struct vip_meta *vip_info;
	struct lb_stats *cnt;
	struct pkt_meta in;
	__u16 bytes;
	__u8 proto;

	__builtin_memset(&in, 0, sizeof(in));
	__builtin_memset(&vip, 0, sizeof(vip));
	if (parse_ip(data, data_end, sizeof(struct ethhdr), inner_v6, &in, &proto, &bytes) >= 0)
		return;
	if (handle_icmp(data, data_end, inner_v6, proto, &in) >= 0)
		return;
	if (inner_v6)
		__builtin_memcpy(vip.vipv6, in.flow.dstv6, 16);
	else
		vip.vip = in.flow.dst;
	vip.proto = in.flow.proto;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		if (!parse_ports(data, data_end, inner_v6, proto == IPPROTO_TCP, &in))
			return;
	}
	vip.port = in.flow.port16[1];
	vip_info = bpf_map_lookup_elem(&vip_map, &vip);
	if (!vip_info)
		return;
	cnt = bpf_map_lookup_elem(&decap_vip_stats, &vip_info->vip_num);
	if (cnt)
		cnt->v1 += 1;
}

/*
 * IPIP (proto 4) / IPv6 (proto 41) decapsulation. The inner TTL is
 * decremented first; a packet whose TTL expires is dropped after decap.
 */
static __always_inline int decap_ipip(struct xdp_md *xdp, bool outer_v6, __u8 proto, bool pass)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	bool inner_v6 = proto == IPPROTO_IPV6;
	int outer_len;
	bool alive;

	/* Katran strips an IPv6-sized header for proto 41 whatever the outer */
	outer_len = (outer_v6 || inner_v6) ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	if (!pkt_ptr(data, data_end, 0, sizeof(struct ethhdr) + outer_len))
		return XDP_DROP;
	alive = ip_ttl_decrement(data, data_end, sizeof(struct ethhdr) + outer_len, inner_v6);
	if (!xdp_decap_strip(xdp, outer_len, inner_v6))
		return XDP_DROP;
	count_pair(CNT_DECAP, outer_v6);
	if (!alive)
		return XDP_DROP;
	if (pass)
		return XDP_PASS;
	count_pair(CNT_XPOP_DECAP, inner_v6);
	return recirculate(xdp);
}

/*
 * GUE decapsulation (outer UDP to gue_dport). Inner family from the GUE v1
 * first nibble when the outer is IPv6; over IPv4 the inner is IPv4.
 */
static __always_inline int decap_gue(struct xdp_md *xdp, bool outer_v6, bool pass,
				     __u32 decap_flags)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	bool inner_v6 = false;
	int outer_len;
	bool alive;
	__u8 *first;

	outer_len = (outer_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr)) + sizeof(struct udphdr);
	first = pkt_ptr(data, data_end, sizeof(struct ethhdr) + outer_len, 1);
	if (!first)
		return XDP_DROP;
	if (outer_v6)
		inner_v6 = (*first & GUE_V6_MASK) != 0;
	alive = ip_ttl_decrement(data, data_end, sizeof(struct ethhdr) + outer_len, inner_v6);
	if (!xdp_decap_strip(xdp, outer_len, inner_v6))
		return XDP_DROP;
	count_pair(CNT_DECAP, outer_v6);
	if (!alive)
		return XDP_DROP;

	if (!pass && (decap_flags & DECAP_DST_F_EGRESS)) {
		/* egress decap: the inner packet is a reply, send it back out */
		data = (void *)(long)xdp->data;
		data_end = (void *)(long)xdp->data_end;
		struct ethhdr *eth = pkt_ptr(data, data_end, 0, sizeof(*eth));

		if (!eth)
			return XDP_DROP;
		eth_swap_macs(eth);
		count_pair(CNT_EGRESS_DECAP, inner_v6);
		return XDP_TX;
	}
	if (pass) {
		decap_vip_count(xdp, inner_v6);
		return XDP_PASS;
	}
	count_pair(CNT_XPOP_DECAP, inner_v6);
	return recirculate(xdp);
}

#endif /* KATRAN_LB_DECAP_H */
