/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ICMP policy of the balancer: which echo requests are answered (VIP
 * addresses only, vip_addrs), flows of ICMP errors, PTB counters. The packet
 * work is icmp.h. Uses maps.h and knobs.h.
 */
#ifndef KATRAN_LB_ICMP_H
#define KATRAN_LB_ICMP_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parsing.h"
#include "icmp.h"
#include "lb_stats.h"

/*
 * Answer an echo request when its destination is a VIP address; anything else
 * (the host's own addresses, transit) is left to the kernel. A request to a
 * VIP with a bad length or a martian source is dropped (see balance_flow).
 */
static __always_inline int echo_reply_for_vip(void *data, void *data_end, bool is_ipv6)
{
	struct address dst = {};
	const __be32 *src;
	__u16 ip_len;

	if (is_ipv6) {
		struct ipv6hdr *ip6h = pkt_ptr(data, data_end, sizeof(struct ethhdr), sizeof(*ip6h));

		if (!ip6h)
			return XDP_DROP;
		__builtin_memcpy(dst.addrv6, ip6h->daddr.s6_addr32, sizeof(dst.addrv6));
		src = ip6h->saddr.s6_addr32;
		ip_len = bpf_ntohs(ip6h->payload_len);
	} else {
		struct iphdr *iph = pkt_ptr(data, data_end, sizeof(struct ethhdr), sizeof(*iph));

		if (!iph)
			return XDP_DROP;
		dst.addr = iph->daddr;
		src = &iph->saddr;
		ip_len = bpf_ntohs(iph->tot_len);
	}
	if (!bpf_map_lookup_elem(&vip_addrs, &dst))
		return XDP_PASS;
	if (ip_len_malformed(data_end - data, ip_len, is_ipv6))
		return drop_malformed(true);
	if (src_is_martian(src, is_ipv6))
		return drop_malformed(false);
	return is_ipv6 ? icmp6_echo_reply(data, data_end) : icmp4_echo_reply(data, data_end);
}

/*
 * ICMP and ICMPv6 of the balancer: echo replies, flows of errors (into pkt),
 * PTB counters. Returns a verdict or LB_CONTINUE. Out of line: only ICMP
 * packets come here.
 */
LB_OUT_OF_LINE int handle_icmp(void *data, void *data_end, bool is_ipv6, __u8 proto,
				       struct pkt_meta *pkt)
{
	__u64 off = sizeof(struct ethhdr) + (is_ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	struct icmp_seen seen = {};
	struct lb_stats *cnt;
	int verdict;

	if (proto == IPPROTO_ICMPV6 && is_ipv6)
		verdict = icmp6_process(data, data_end, off, pkt, &seen);
	else if (proto == IPPROTO_ICMP && !is_ipv6)
		verdict = icmp4_process(data, data_end, off, pkt, &seen);
	else
		return LB_CONTINUE;
	if (verdict == LB_ECHO_REQUEST)
		return echo_reply_for_vip(data, data_end, is_ipv6);
	if (seen.ptb) {
		cnt = global_cnt(is_ipv6 ? CNT_ICMP_PTB_V6 : CNT_ICMP_PTB_V4);
		if (!cnt)
			return XDP_DROP;
		cnt->v1 += 1;
		if (seen.mtu < PTB_SMALL_MTU)
			cnt->v2 += 1;
	}
	return verdict;
}

#endif /* KATRAN_LB_ICMP_H */
