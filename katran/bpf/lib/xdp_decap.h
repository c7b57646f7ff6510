/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Decapsulation steps shared by the balancer's inline decap and the decap
 * program of the reals (XDP): strip the outer headers keeping the MACs, and
 * the inner TTL / hop-limit decrement. Part of the helper library: no maps,
 * no knobs.
 */
#ifndef KATRAN_LIB_XDP_DECAP_H
#define KATRAN_LIB_XDP_DECAP_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>

#include "addr.h"
#include "cursor.h"

/*
 * Remove `outer` bytes of tunnel headers after the Ethernet header, keeping
 * the MACs; the new EtherType says whether the inner packet is v6. The frame
 * must hold the Ethernet header and the `outer` bytes.
 */
static __always_inline bool xdp_decap_strip(struct xdp_md *xdp, int outer, bool inner_v6)
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
 * adjusted first, as Katran). Returns false when it reaches 0 or the header
 * is truncated (the caller drops the packet).
 */
static __always_inline bool ip_ttl_decrement(void *data, void *data_end, __u64 off, bool is_ipv6)
{
	if (is_ipv6) {
		struct ipv6hdr *ip6h = pkt_ptr(data, data_end, off, sizeof(*ip6h));

		if (!ip6h)
			return false;
		return --ip6h->hop_limit != 0;
	}
	struct iphdr *iph = pkt_ptr(data, data_end, off, sizeof(*iph));
	__u32 sum;

	if (!iph)
		return false;
	sum = (__u32)iph->check + 0x0001;
	iph->check = (sum & 0xffff) + (sum >> 16);
	return --iph->ttl != 0;
}

#endif /* KATRAN_LIB_XDP_DECAP_H */
