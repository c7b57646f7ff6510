// SPDX-License-Identifier: GPL-2.0
/*
 * Decap for the real servers (XDP): IPIP, IP6IP6 and IPv4-in-IPv6 packets (and
 * GUE when decap_gue_dport != 0) lose their outer header and go to the stack;
 * fragments and IPv4 with options are dropped; everything else passes untouched.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "decap_structs.h"
#include "decap_maps.h"
#include "decap_parse.h"
#include "lib/abi.h"

KATRAN_ABI_ENUM(decap_host_slot);

/* load-time knobs */
const volatile __u16 decap_gue_dport = 0;     /* GUE decap on this UDP port; 0 = off */
const volatile __u32 decap_strict_dst = 0;    /* only decap packets to decap_host_addrs */

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
	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = CURSOR_PULL(c, struct iphdr);

		if (!iph || iph->ihl != 5)
			return XDP_DROP;
		if (bpf_ntohs(iph->frag_off) & DECAP_IP_MF_OFFSET)
			return XDP_DROP;
		o->v6 = false;
		o->proto = iph->protocol;
		o->hdr_len = sizeof(*iph);
		o->dst[0] = iph->daddr;
		return -1;
	}
	if (h_proto == bpf_htons(ETH_P_IPV6)) {
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
	return a->v6[0] == o->dst[0] && a->v6[1] == o->dst[1] &&
	       a->v6[2] == o->dst[2] && a->v6[3] == o->dst[3];
}

/* drop `len` bytes after the ethernet header; the new ethernet type says inner_v6 */
static __always_inline bool strip_outer(struct xdp_md *ctx, __u32 len, bool inner_v6)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u8 macs[2 * ETH_ALEN];

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return false;
	__builtin_memcpy(macs, eth, sizeof(macs));
	if (bpf_xdp_adjust_head(ctx, (int)len))
		return false;
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return false;
	__builtin_memcpy(eth, macs, sizeof(macs));
	eth->h_proto = bpf_htons(inner_v6 ? ETH_P_IPV6 : ETH_P_IP);
	return true;
}

/* after GUE decap: count inner TCP (non-SYN) packets carrying a TPR server id */
static __always_inline void account_tpr(struct xdp_md *ctx, bool inner_v6, struct decap_stats *st)
{
	struct cursor c = {(void *)(long)ctx->data, (void *)(long)ctx->data_end};
	__u32 key = 0, *ours, sid, opts;
	struct tcphdr *tcp;
	__u8 proto;

	if (!cursor_pull(&c, sizeof(struct ethhdr)))
		return;
	if (inner_v6) {
		struct ipv6hdr *ip6h = CURSOR_PULL(&c, struct ipv6hdr);

		if (!ip6h)
			return;
		proto = ip6h->nexthdr;
	} else {
		struct iphdr *iph = CURSOR_PULL(&c, struct iphdr);

		if (!iph || iph->ihl != 5 || (bpf_ntohs(iph->frag_off) & DECAP_IP_MF_OFFSET))
			return;
		proto = iph->protocol;
	}
	if (proto != IPPROTO_TCP)
		return;
	tcp = CURSOR_PULL(&c, struct tcphdr);
	if (!tcp || tcp->syn || tcp->doff < 5)
		return;
	ours = bpf_map_lookup_elem(&tpr_server_id, &key);
	if (!ours || !*ours)
		return;
	opts = tcp->doff * 4 - sizeof(*tcp);
	if (opts < DECAP_TCPOPT_TPR_LEN)
		return;
	sid = decap_tcp_server_id(&c, opts);
	if (!sid)
		return;
	st->tpr_total += 1;
	if (sid != *ours)
		st->tpr_misrouted += 1;
}

SEC("xdp")
int xdp_decap(struct xdp_md *ctx)
{
	struct cursor c = {(void *)(long)ctx->data, (void *)(long)ctx->data_end};
	struct outer_info o = {};
	struct decap_stats *st;
	struct ethhdr *eth;
	bool inner_v6, gue = false;
	__u32 key = 0;
	int verdict;

	eth = CURSOR_PULL(&c, struct ethhdr);
	if (!eth)
		return XDP_DROP;
	st = bpf_map_lookup_elem(&decap_counters, &key);
	if (!st)
		return XDP_PASS;
	verdict = parse_outer(&c, eth->h_proto, &o);
	if (verdict == XDP_PASS)
		return pass_untouched(st);
	if (verdict >= 0)
		return verdict;

	if (o.proto == IPPROTO_IPIP || o.proto == IPPROTO_IPV6) {
		inner_v6 = o.proto == IPPROTO_IPV6;
	} else if (o.proto == IPPROTO_UDP && decap_gue_dport) {
		struct udphdr *udp = CURSOR_PULL(&c, struct udphdr);
		__u8 *first;

		if (!udp || udp->dest != bpf_htons(decap_gue_dport))
			return pass_untouched(st);
		first = CURSOR_PULL(&c, __u8);
		if (!first)
			return XDP_DROP;
		inner_v6 = (*first >> 4) == 6; /* GUE v1: the payload is the inner IP packet */
		o.hdr_len += sizeof(*udp);
		gue = true;
	} else {
		return pass_untouched(st);
	}
	if (!dst_is_host(&o))
		return pass_untouched(st);

	if (o.v6)
		st->decap_v6 += 1;
	else
		st->decap_v4 += 1;
	st->total += 1;
	if (!strip_outer(ctx, o.hdr_len, inner_v6))
		return XDP_DROP;
	if (gue)
		account_tpr(ctx, inner_v6, st);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
