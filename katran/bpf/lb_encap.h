/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Encapsulation of the balancer (XDP): IPIP / IP6IP6 / IPv4-in-IPv6 with
 * Katran's crafted outer source addresses, GUE (UDP) with the incremental
 * outer checksum, and encap_to_real(), the dispatch by knob gue_encap. The
 * header writers are shared with the healthchecker (lib/hdr.h). Uses
 * maps.h (pckt_srcs) and knobs.h.
 */
#ifndef KATRAN_LB_ENCAP_H
#define KATRAN_LB_ENCAP_H

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
#include "knobs.h"
#include "maps.h"
#include "lib/csum.h"
#include "lib/cursor.h"
#include "lib/hdr.h"
#include "parsing.h"

/* What an encapsulation needs to know about the client's flow. */
struct encap_flow {
	__be32 src_word;  /* last 32 bits of the client address (v4: the address) */
	__u16 sport;      /* client source port, network order */
	__u8 tos;         /* inner ToS / traffic class, copied to the outer header */
	__u8 l4_proto;    /* inner L4 protocol (GUE checksum needs TCP or UDP) */
};

/*
 * Grow the frame by `push` bytes in front and write the new Ethernet header
 * (dst = gw_mac, src = the old frame's destination MAC). Returns the new
 * data pointer (start of frame) or NULL; *data_end is refreshed.
 */
static __always_inline void *push_outer(struct xdp_md *xdp, int push, const __u8 *gw_mac,
					__u16 eth_proto_be, void **data_end)
{
	__u8 *data, *old;

	if (bpf_xdp_adjust_head(xdp, -push))
		return NULL;
	data = (void *)(long)xdp->data;
	*data_end = (void *)(long)xdp->data_end;
	if (!pkt_ptr(data, *data_end, 0, push + sizeof(struct ethhdr)))
		return NULL;
	/* struct ethhdr is packed: its fields would be moved a byte at a time */
	old = data + push;
	*(__u32 *)data = *(const __u32 *)gw_mac;
	*(__u16 *)(data + 4) = *(const __u16 *)(gw_mac + 4);
	*(__u32 *)(data + ETH_ALEN) = *(const __u32 *)old; /* the old destination */
	*(__u16 *)(data + ETH_ALEN + 4) = *(const __u16 *)(old + 4);
	*(__u16 *)(data + 2 * ETH_ALEN) = eth_proto_be;
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
 * Encapsulate towards dst with the configured scheme (IPIP family or GUE); f:
 * the client's flow, src_word the last 32 bits of its address.
 */
static __always_inline bool encap_flow_to_real(struct xdp_md *xdp, struct ctl_value *gw,
					       const struct encap_flow *f,
					       struct real_definition *dst, bool is_ipv6,
					       __u16 pkt_bytes)
{
	struct real_definition *src;
	__u32 key;

	if (dst->flags & REAL_F_IPV6) {
		if (gue_encap) {
			key = PCKT_SRC_V6;
			src = bpf_map_lookup_elem(&pckt_srcs, &key);
			if (!src)
				return false;
			return encap_gue_v6(xdp, gw->mac, f, is_ipv6, src->dstv6, dst->dstv6,
					    pkt_bytes, gue_dport);
		}
		return encap_ipip_v6(xdp, gw->mac, f, is_ipv6, dst->dstv6, pkt_bytes);
	}
	if (gue_encap) {
		key = PCKT_SRC_V4;
		src = bpf_map_lookup_elem(&pckt_srcs, &key);
		if (!src)
			return false;
		return encap_gue_v4(xdp, gw->mac, f, src->dst, dst->dst, pkt_bytes, gue_dport);
	}
	return encap_ipip_v4(xdp, gw->mac, f, dst->dst, pkt_bytes);
}

/* encap_flow_to_real of a parsed packet. */
static __always_inline bool encap_to_real(struct xdp_md *xdp, struct ctl_value *gw,
					  struct pkt_meta *pkt, struct real_definition *dst,
					  bool is_ipv6, __u16 pkt_bytes)
{
	struct encap_flow f = {
		.src_word = (dst->flags & REAL_F_IPV6) && is_ipv6 ? pkt->flow.srcv6[3] : pkt->flow.src,
		.sport = pkt->flow.port16[0],
		.tos = pkt->tos,
		.l4_proto = pkt->flow.proto,
	};

	return encap_flow_to_real(xdp, gw, &f, dst, is_ipv6, pkt_bytes);
}

#endif /* KATRAN_LB_ENCAP_H */
