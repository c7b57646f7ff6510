/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Encapsulation and decapsulation of XDP frames: IPIP / IP6IP6 /
 * IPv4-in-IPv6 with Katran's crafted outer source addresses, GUE (UDP) with
 * the incremental outer checksum, and the matching decap helpers.
 * Reusable: callers pass MACs, addresses and ports; no maps, no knobs.
 */
#ifndef KATRAN_ENCAP_H
#define KATRAN_ENCAP_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "csum.h"
#include "parsing.h"

/* What an encapsulation needs to know about the client's flow. */
struct encap_flow {
	__be32 src_word;  /* last 32 bits of the client address (v4: the address) */
	__u16 sport;      /* client source port, network order */
	__u8 tos;         /* inner ToS / traffic class, copied to the outer header */
	__u8 l4_proto;    /* inner L4 protocol (GUE checksum needs TCP or UDP) */
};

/* IPIP outer source: 172.16.(sp[1]^s[2]).(sp[0]^s[3]). */
static __always_inline __be32 ipip_v4_src(__u16 sport, __be32 src)
{
	__u32 hi = (__u32)bpf_htons(sport) << 16;

	return ((hi ^ src) & 0xFFFF0000) | IPIP_V4_SRC_PREFIX;
}

/* IP6IP6 / 4in6 outer source: 0100::/64 then the client's last word ^ port. */
static __always_inline void ipip_v6_src(__u16 sport, __be32 src_word, __be32 out[4])
{
	out[0] = IPIP_V6_SRC_W0;
	out[1] = 0;
	out[2] = 0;
	out[3] = src_word ^ sport;
}

/* Write a 20-byte IPv4 header with TTL 64, id 0, DF clear, and its checksum. */
static __always_inline void put_ipv4_hdr(struct iphdr *iph, __u8 tos, __be32 saddr, __be32 daddr,
					 __u16 payload_bytes, __u8 proto)
{
	iph->version = 4;
	iph->ihl = 5;
	iph->tos = tos;
	iph->tot_len = bpf_htons(payload_bytes + sizeof(struct iphdr));
	iph->id = 0;
	iph->frag_off = 0;
	iph->ttl = ENCAP_TTL;
	iph->protocol = proto;
	iph->saddr = saddr;
	iph->daddr = daddr;
	iph->check = 0;
	iph->check = iph_csum(iph);
}

/* Write an IPv6 header with hop limit 64 and traffic class `tc`. */
static __always_inline void put_ipv6_hdr(struct ipv6hdr *ip6h, __u8 tc, const __be32 *saddr,
					 const __be32 *daddr, __u16 payload_len, __u8 proto)
{
	ip6h->version = 6;
	ip6h->priority = (tc & 0xF0) >> 4;
	ip6h->flow_lbl[0] = (tc & 0x0F) << 4;
	ip6h->flow_lbl[1] = 0;
	ip6h->flow_lbl[2] = 0;
	ip6h->payload_len = bpf_htons(payload_len);
	ip6h->nexthdr = proto;
	ip6h->hop_limit = ENCAP_TTL;
	__builtin_memcpy(&ip6h->saddr, saddr, 16);
	__builtin_memcpy(&ip6h->daddr, daddr, 16);
}

/* Write a UDP header; sport is stored as given (already in wire order). */
static __always_inline void put_udp_hdr(struct udphdr *udph, __u16 sport_wire, __u16 dport,
					__u16 len)
{
	udph->source = sport_wire;
	udph->dest = bpf_htons(dport);
	udph->len = bpf_htons(len);
	udph->check = 0;
}

/*
 * Grow the frame by `push` bytes in front and write the new Ethernet header
 * (dst = gw_mac, src = the old frame's destination MAC). Returns the new
 * data pointer (start of frame) or NULL; *data_end is refreshed.
 */
static __always_inline void *push_outer(struct xdp_md *xdp, int push, const __u8 *gw_mac,
					__u16 eth_proto_be, void **data_end)
{
	void *data;
	struct ethhdr *eth, *old_eth;

	if (bpf_xdp_adjust_head(xdp, -push))
		return NULL;
	data = (void *)(long)xdp->data;
	*data_end = (void *)(long)xdp->data_end;
	eth = pkt_ptr(data, *data_end, 0, push + sizeof(struct ethhdr));
	if (!eth)
		return NULL;
	old_eth = data + push;
	__builtin_memcpy(eth->h_dest, gw_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, old_eth->h_dest, ETH_ALEN);
	eth->h_proto = eth_proto_be;
	return data;
}

/* IPIP: wrap the IPv4 packet (pkt_bytes = its total length) for a v4 real. */
static __always_inline bool encap_ipip_v4(struct xdp_md *xdp, const __u8 *gw_mac,
					  const struct encap_flow *f, __be32 real,
					  __u16 pkt_bytes)
{
	__be32 src = ipip_v4_src(f->sport, f->src_word);
	void *data, *data_end;

	data = push_outer(xdp, sizeof(struct iphdr), gw_mac, ETH_P_IP_BE, &data_end);
	if (!data)
		return false;
	struct iphdr *iph = pkt_ptr(data, data_end, sizeof(struct ethhdr), sizeof(*iph));

	if (!iph)
		return false;
	put_ipv4_hdr(iph, f->tos, src, real, pkt_bytes, IPPROTO_IPIP);
	return true;
}

/*
 * IP6IP6 (inner_v6) or IPv4-in-IPv6 for a v6 real. pkt_bytes is the inner
 * IPv6 payload length or the inner IPv4 total length.
 */
static __always_inline bool encap_ipip_v6(struct xdp_md *xdp, const __u8 *gw_mac,
					  const struct encap_flow *f, bool inner_v6,
					  const __be32 *real, __u16 pkt_bytes)
{
	__be32 src[4];
	void *data, *data_end;
	__u16 payload_len = inner_v6 ? pkt_bytes + sizeof(struct ipv6hdr) : pkt_bytes;

	ipip_v6_src(f->sport, f->src_word, src);
	data = push_outer(xdp, sizeof(struct ipv6hdr), gw_mac, ETH_P_IPV6_BE, &data_end);
	if (!data)
		return false;
	struct ipv6hdr *ip6h = pkt_ptr(data, data_end, sizeof(struct ethhdr), sizeof(*ip6h));

	if (!ip6h)
		return false;
	put_ipv6_hdr(ip6h, f->tos, src, real, payload_len,
		     inner_v6 ? IPPROTO_IPV6 : IPPROTO_IPIP);
	return true;
}

/*
 * Outer UDP checksum of a freshly built GUE frame, from the inner TCP/UDP
 * checksum. Leaves the checksum at 0 for other inner protocols.
 */
static __always_inline void gue_fill_csum(void *data, void *data_end, bool outer_v6,
					  bool inner_v6, __u8 l4_proto)
{
	__u64 udp_off = sizeof(struct ethhdr) + (outer_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	__u64 in_off = udp_off + sizeof(struct udphdr);
	__u64 l4_off = in_off + (inner_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	struct udphdr *udph = pkt_ptr(data, data_end, udp_off, sizeof(*udph));
	void *outer = pkt_ptr(data, data_end, sizeof(struct ethhdr),
			      outer_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	void *inner = pkt_ptr(data, data_end, in_off,
			      inner_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	__u64 sum;

	if (!udph || !outer || !inner)
		return;
	if (l4_proto == IPPROTO_UDP) {
		struct udphdr *u = pkt_ptr(data, data_end, l4_off, sizeof(*u));

		if (!u)
			return;
		sum = u->check;
	} else if (l4_proto == IPPROTO_TCP) {
		struct tcphdr *t = pkt_ptr(data, data_end, l4_off, sizeof(*t));

		if (!t)
			return;
		sum = t->check;
	} else {
		return;
	}
	if (gue_udp_csum(outer_v6 ? NULL : outer, outer_v6 ? outer : NULL, udph,
			 inner_v6 ? NULL : inner, inner_v6 ? inner : NULL, &sum))
		return;
	udph->check = sum & 0xFFFF;
}

/* GUE over IPv4 for a v4 real (inner IPv4 of pkt_bytes total length). */
static __always_inline bool encap_gue_v4(struct xdp_md *xdp, const __u8 *gw_mac,
					 const struct encap_flow *f, __be32 outer_src,
					 __be32 real, __u16 pkt_bytes, __u16 dport)
{
	/* wire bytes of the source port: [sp[1]^s[2], sp[0]^s[3]] */
	__u16 sport = bpf_htons(f->sport) ^ (__u16)(f->src_word >> 16);
	int push = sizeof(struct iphdr) + sizeof(struct udphdr);
	void *data, *data_end;

	data = push_outer(xdp, push, gw_mac, ETH_P_IP_BE, &data_end);
	if (!data)
		return false;
	struct iphdr *iph = pkt_ptr(data, data_end, sizeof(struct ethhdr), push);

	if (!iph)
		return false;
	struct udphdr *udph = (void *)(iph + 1);

	put_udp_hdr(udph, sport, dport, pkt_bytes + sizeof(struct udphdr));
	put_ipv4_hdr(iph, f->tos, outer_src, real, pkt_bytes + sizeof(struct udphdr), IPPROTO_UDP);
	gue_fill_csum(data, data_end, false, false, f->l4_proto);
	return true;
}

/* GUE over IPv6 for a v6 real; inner IPv6 (payload pkt_bytes) or IPv4. */
static __always_inline bool encap_gue_v6(struct xdp_md *xdp, const __u8 *gw_mac,
					 const struct encap_flow *f, bool inner_v6,
					 const __be32 *outer_src, const __be32 *real,
					 __u16 pkt_bytes, __u16 dport)
{
	int push = sizeof(struct ipv6hdr) + sizeof(struct udphdr);
	void *data, *data_end;
	__u16 sport, len;

	if (inner_v6) {
		sport = (__u16)(f->src_word & 0xFFFF) ^ f->sport;
		len = pkt_bytes + sizeof(struct ipv6hdr) + sizeof(struct udphdr);
	} else {
		sport = (__u16)(f->src_word >> 16) ^ f->sport;
		len = pkt_bytes + sizeof(struct udphdr);
	}
	data = push_outer(xdp, push, gw_mac, ETH_P_IPV6_BE, &data_end);
	if (!data)
		return false;
	struct ipv6hdr *ip6h = pkt_ptr(data, data_end, sizeof(struct ethhdr), push);

	if (!ip6h)
		return false;
	struct udphdr *udph = (void *)(ip6h + 1);

	put_udp_hdr(udph, sport, dport, len);
	put_ipv6_hdr(ip6h, f->tos, outer_src, real, len, IPPROTO_UDP);
	gue_fill_csum(data, data_end, true, inner_v6, f->l4_proto);
	return true;
}

/*
 * Remove `outer` bytes of tunnel headers after the Ethernet header, keeping
 * the MACs; the new EtherType says whether the inner packet is v6.
 */
static __always_inline bool decap_strip(struct xdp_md *xdp, int outer, bool inner_v6)
{
	void *data = (void *)(long)xdp->data;
	void *data_end = (void *)(long)xdp->data_end;
	struct ethhdr *old_eth = pkt_ptr(data, data_end, 0, outer + sizeof(struct ethhdr));
	struct ethhdr *new_eth;

	if (!old_eth)
		return false;
	new_eth = (void *)old_eth + outer;
	__builtin_memcpy(new_eth->h_source, old_eth->h_source, ETH_ALEN);
	__builtin_memcpy(new_eth->h_dest, old_eth->h_dest, ETH_ALEN);
	new_eth->h_proto = inner_v6 ? ETH_P_IPV6_BE : ETH_P_IP_BE;
	return bpf_xdp_adjust_head(xdp, outer) == 0;
}

/*
 * Decrement the TTL / hop limit of the IP header at `off` (IPv4 checksum
 * adjusted first, as Katran). Returns XDP_DROP when it reaches 0 or the
 * header is truncated, LB_CONTINUE otherwise.
 */
static __always_inline int ip_ttl_decrement(void *data, void *data_end, __u64 off, bool is_ipv6)
{
	if (is_ipv6) {
		struct ipv6hdr *ip6h = pkt_ptr(data, data_end, off, sizeof(*ip6h));

		if (!ip6h)
			return XDP_DROP;
		if (!--ip6h->hop_limit)
			return XDP_DROP;
		return LB_CONTINUE;
	}
	struct iphdr *iph = pkt_ptr(data, data_end, off, sizeof(*iph));
	__u32 sum;

	if (!iph)
		return XDP_DROP;
	sum = (__u32)iph->check + 0x0001;
	iph->check = (sum & 0xffff) + (sum >> 16);
	if (!--iph->ttl)
		return XDP_DROP;
	return LB_CONTINUE;
}

#endif /* KATRAN_ENCAP_H */
