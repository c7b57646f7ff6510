/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Healthcheck forwarding: encapsulation of a probe in the skb (tc). Room is
 * made with bpf_skb_adjust_room; the headers are written by the writers the
 * balancer uses too (lib/hdr.h), as Katran shares encap_helpers.h between
 * its balancer and healthchecker. No maps, no knobs.
 */
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
#include "lib/addr.h"
#include "lib/cursor.h"
#include "lib/hdr.h"

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
	eth = pkt_ptr(data, data_end, 0, sizeof(*eth));
	if (!eth)
		return false;
	eth->h_proto = outer_v6 ? ETH_P_IPV6_BE : ETH_P_IP_BE;
	payload = inner_len + l4_len;

	if (gue_dport) {
		struct udphdr *udp = pkt_ptr(data, data_end, sizeof(*eth) + l3_len, sizeof(*udp));

		if (!udp)
			return false;
		put_udp_hdr(udp, bpf_htons(hc_gue_sport()), gue_dport, payload);
		inner_proto = IPPROTO_UDP;
	}
	if (outer_v6) {
		struct ipv6hdr *ip6h = pkt_ptr(data, data_end, sizeof(*eth), sizeof(*ip6h));

		if (!ip6h)
			return false;
		put_ipv6_hdr(ip6h, 0, src->v6daddr, real->v6daddr, payload, inner_proto);
	} else {
		struct iphdr *iph = pkt_ptr(data, data_end, sizeof(*eth), sizeof(*iph));

		if (!iph)
			return false;
		put_ipv4_hdr(iph, 0, src->daddr, real->daddr, payload, inner_proto);
	}
	return true;
}

#endif /* KATRAN_HC_ENCAP_H */
