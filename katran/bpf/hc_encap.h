/* Healthcheck forwarding: outer header builders for tc (skb) encapsulation. */
#ifndef KATRAN_HC_ENCAP_H
#define KATRAN_HC_ENCAP_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "hc_structs.h"

#define HC_TTL 64

/* one's complement checksum of a 20-byte IPv4 header */
static __always_inline __u16 hc_ipv4_csum(const struct iphdr *iph)
{
	const __u16 *w = (const __u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

static __always_inline void hc_fill_v4(struct iphdr *iph, __be32 saddr, __be32 daddr,
				       __u16 payload_len, __u8 proto)
{
	iph->version = 4;
	iph->ihl = 5;
	iph->tos = 0;
	iph->tot_len = bpf_htons(payload_len + sizeof(*iph));
	iph->id = 0;
	iph->frag_off = 0;
	iph->ttl = HC_TTL;
	iph->protocol = proto;
	iph->check = 0;
	iph->saddr = saddr;
	iph->daddr = daddr;
	iph->check = hc_ipv4_csum(iph);
}

static __always_inline void hc_fill_v6(struct ipv6hdr *ip6h, const __be32 *saddr,
				       const __be32 *daddr, __u16 payload_len, __u8 proto)
{
	ip6h->version = 6;
	ip6h->priority = 0;
	ip6h->flow_lbl[0] = 0;
	ip6h->flow_lbl[1] = 0;
	ip6h->flow_lbl[2] = 0;
	ip6h->payload_len = bpf_htons(payload_len);
	ip6h->nexthdr = proto;
	ip6h->hop_limit = HC_TTL;
	__builtin_memcpy(ip6h->saddr.s6_addr32, saddr, 16);
	__builtin_memcpy(ip6h->daddr.s6_addr32, daddr, 16);
}

/* a GUE source port outside the well-known range */
static __always_inline __u16 hc_gue_sport(void)
{
	return (__u16)bpf_get_prandom_u32() | 0x400;
}

/*
 * Insert an outer IPv4/IPv6 header (plus a UDP header when gue_dport != 0) between
 * the ethernet header and the probe, toward `real`, from `src`.
 * inner_v6 tells what the probe is. Returns false when the skb cannot grow.
 */
static __always_inline bool hc_encap(struct __sk_buff *skb, const struct hc_real_definition *real,
				     const struct hc_real_definition *src, bool inner_v6,
				     __u16 gue_dport)
{
	__u32 inner_len = skb->len - sizeof(struct ethhdr);
	__u8 inner_proto = inner_v6 ? IPPROTO_IPV6 : IPPROTO_IPIP;
	bool outer_v6 = real->flags & HC_REAL_V6;
	__u32 l3_len = outer_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u32 l4_len = gue_dport ? sizeof(struct udphdr) : 0;
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO;
	void *data, *data_end;
	struct ethhdr *eth;
	__u16 payload;

	flags |= outer_v6 ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV4;
	if (gue_dport)
		flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
	if (bpf_skb_adjust_room(skb, l3_len + l4_len, BPF_ADJ_ROOM_MAC, flags))
		return false;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return false;
	eth->h_proto = bpf_htons(outer_v6 ? ETH_P_IPV6 : ETH_P_IP);
	payload = inner_len + l4_len;

	if (gue_dport) {
		struct udphdr *udp = data + sizeof(*eth) + l3_len;

		if ((void *)(udp + 1) > data_end)
			return false;
		udp->source = bpf_htons(hc_gue_sport());
		udp->dest = bpf_htons(gue_dport);
		udp->len = bpf_htons(payload);
		udp->check = 0;
		inner_proto = IPPROTO_UDP;
	}
	if (outer_v6) {
		struct ipv6hdr *ip6h = data + sizeof(*eth);

		if ((void *)(ip6h + 1) > data_end)
			return false;
		hc_fill_v6(ip6h, src->v6daddr, real->v6daddr, payload, inner_proto);
	} else {
		struct iphdr *iph = data + sizeof(*eth);

		if ((void *)(iph + 1) > data_end)
			return false;
		hc_fill_v4(iph, src->daddr, real->daddr, payload, inner_proto);
	}
	return true;
}

#endif
