/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Decap for the real servers: the steps of xdp_decap - parse the outer
 * header, the strict-destination check, the TPR misrouting counters after
 * GUE decap. Header access, the strip and the option scan are lib/. Uses
 * decap_maps.h and decap_knobs.h.
 */
#ifndef KATRAN_DECAP_STEPS_H
#define KATRAN_DECAP_STEPS_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>

#include "decap_structs.h"
#include "decap_maps.h"
#include "decap_knobs.h"
#include "lib/addr.h"
#include "lib/cursor.h"
#include "lib/tcp_opt.h"

/* outer header facts gathered before decap */
struct outer_info {
	__u32 hdr_len;     /* bytes to strip after the ethernet header */
	__u8 proto;        /* outer L4 / next header */
	bool v6;
	__be32 dst[4];
};

static __always_inline int pass_untouched(struct decap_stats *st)
{
	st->passed += 1;
	return XDP_PASS;
}

/* parse the outer IP header at c; <0: go on, else an XDP verdict */
static __always_inline int parse_outer(struct cursor *c, __be16 h_proto, struct outer_info *o)
{
	if (h_proto == ETH_P_IP_BE) {
		struct iphdr *iph = CURSOR_PULL(c, struct iphdr);

		if (!iph || iph->ihl != 5)
			return XDP_DROP;
		if (iph->frag_off & IPV4_FRAG_MASK_BE)
			return XDP_DROP;
		o->v6 = false;
		o->proto = iph->protocol;
		o->hdr_len = sizeof(*iph);
		o->dst[0] = iph->daddr;
		return -1;
	}
	if (h_proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6h = CURSOR_PULL(c, struct ipv6hdr);

		if (!ip6h || ip6h->nexthdr == IPPROTO_FRAGMENT)
			return XDP_DROP;
		o->v6 = true;
		o->proto = ip6h->nexthdr;
		o->hdr_len = sizeof(*ip6h);
		__builtin_memcpy(o->dst, ip6h->daddr.s6_addr32, 16);
		return -1;
	}
	return XDP_PASS;
}

/* strict mode: is the outer destination one of this host's addresses? */
static __always_inline bool dst_is_host(const struct outer_info *o)
{
	__u32 key = o->v6 ? DECAP_HOST_V6 : DECAP_HOST_V4;
	struct decap_host_addr *a;

	if (!decap_strict_dst)
		return true;
	a = bpf_map_lookup_elem(&decap_host_addrs, &key);
	if (!a)
		return false;
	if (!o->v6)
		return a->v4 == o->dst[0];
	return addr6_eq(a->v6, o->dst);
}

/* after GUE decap: count inner TCP (non-SYN) packets carrying a TPR server id */
static __always_inline void account_tpr(struct xdp_md *ctx, bool inner_v6, struct decap_stats *st)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 tcp_off = sizeof(struct ethhdr) + (inner_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	__u32 key = 0, *ours, sid;
	struct tcphdr *tcp;
	__u8 proto;

	if (inner_v6) {
		struct ipv6hdr *ip6h = pkt_ptr(data, data_end, sizeof(struct ethhdr), sizeof(*ip6h));

		if (!ip6h)
			return;
		proto = ip6h->nexthdr;
	} else {
		struct iphdr *iph = pkt_ptr(data, data_end, sizeof(struct ethhdr), sizeof(*iph));

		if (!iph || iph->ihl != 5 || (iph->frag_off & IPV4_FRAG_MASK_BE))
			return;
		proto = iph->protocol;
	}
	if (proto != IPPROTO_TCP)
		return;
	tcp = pkt_ptr(data, data_end, tcp_off, sizeof(*tcp));
	if (!tcp || tcp->syn || tcp->doff < 5)
		return;
	ours = bpf_map_lookup_elem(&tpr_server_id, &key);
	if (!ours || !*ours)
		return;
	sid = tcp_opt_server_id(data, data_end, tcp_off);
	if (!sid)
		return;
	st->tpr_total += 1;
	if (sid != *ours)
		st->tpr_misrouted += 1;
}

#endif /* KATRAN_DECAP_STEPS_H */
