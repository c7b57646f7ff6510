/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ICMP / ICMPv6 handling of the balancer: echo replies, flows rebuilt from
 * the quote of "fragmentation needed" / "packet too big" / "unreachable"
 * errors, and generation of too-big errors for oversized frames.
 * Counting is left to the caller through struct icmp_seen; the balancer's
 * ICMP policy (which echo requests to answer, counters) is lb_icmp.h.
 * No maps, no knobs.
 */
#ifndef KATRAN_ICMP_H
#define KATRAN_ICMP_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include "lib/icmphdr.h"
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "lib/addr.h"
#include "lib/csum.h"
#include "lib/hdr.h"
#include "parsing.h"

/* Side information for the caller's counters. */
struct icmp_seen {
	bool ptb;     /* a frag-needed / packet-too-big message was seen */
	__u32 mtu;    /* the MTU it asked for */
};

/* Turn an IPv4 echo request into the reply, in place. */
static __always_inline int icmp4_echo_reply(void *data, void *data_end)
{
	struct ethhdr *eth = pkt_ptr(data, data_end, 0,
				     sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct icmphdr));
	struct iphdr *iph;
	struct icmphdr *icmp;
	__be32 addr;

	if (!eth)
		return XDP_DROP;
	iph = (void *)(eth + 1);
	icmp = (void *)(iph + 1);
	icmp->type = ICMP_ECHOREPLY;
	/* type 8 -> 0 lowers the first word by 0x0800 (network order): patch
	 * the checksum the same way Katran does, without end-around carry */
	icmp->checksum += 0x0008;
	iph->ttl = OUTER_TTL;
	addr = iph->daddr;
	iph->daddr = iph->saddr;
	iph->saddr = addr;
	iph->check = 0;
	iph->check = iph_csum(iph);
	eth_swap_macs(eth);
	return XDP_TX;
}

/* Turn an ICMPv6 echo request into the reply, in place. */
static __always_inline int icmp6_echo_reply(void *data, void *data_end)
{
	struct ethhdr *eth = pkt_ptr(data, data_end, 0,
				     sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct icmp6hdr));
	struct ipv6hdr *ip6h;
	struct icmp6hdr *icmp6;
	struct in6_addr addr;

	if (!eth)
		return XDP_DROP;
	ip6h = (void *)(eth + 1);
	icmp6 = (void *)(ip6h + 1);
	icmp6->icmp6_type = ICMPV6_ECHO_REPLY;
	/* type 128 -> 129: adjust the checksum in memory order, as Katran */
	icmp6->icmp6_cksum -= 0x0001;
	ip6h->hop_limit = OUTER_TTL;
	addr = ip6h->saddr;
	ip6h->saddr = ip6h->daddr;
	ip6h->daddr = addr;
	eth_swap_macs(eth);
	return XDP_TX;
}

/*
 * ICMPv4 at `off`: echo request -> LB_ECHO_REQUEST; destination unreachable -> the
 * flow of the quoted packet (seen from the client) in pkt; others -> PASS.
 */
static __always_inline int icmp4_process(void *data, void *data_end, __u64 off,
					 struct pkt_meta *pkt, struct icmp_seen *seen)
{
	struct icmphdr *icmp = pkt_ptr(data, data_end, off, sizeof(*icmp));
	struct iphdr *quoted;

	if (!icmp)
		return XDP_DROP;
	if (icmp->type == ICMP_ECHO)
		return LB_ECHO_REQUEST;
	if (icmp->type != ICMP_DEST_UNREACH)
		return XDP_PASS;
	if (icmp->code == ICMP_FRAG_NEEDED) {
		seen->ptb = true;
		seen->mtu = bpf_ntohs(icmp->un.frag.mtu);
	}
	quoted = pkt_ptr(data, data_end, off + sizeof(*icmp), sizeof(*quoted));
	if (!quoted)
		return XDP_DROP;
	if (quoted->ihl != 5)
		return XDP_DROP;
	pkt->flow.proto = quoted->protocol;
	pkt->flags |= PKT_F_ICMP;
	pkt->flow.src = quoted->daddr;
	pkt->flow.dst = quoted->saddr;
	return LB_CONTINUE;
}

/* ICMPv6 counterpart of icmp4_process (packet too big / unreachable). */
static __always_inline int icmp6_process(void *data, void *data_end, __u64 off,
					 struct pkt_meta *pkt, struct icmp_seen *seen)
{
	struct icmp6hdr *icmp6 = pkt_ptr(data, data_end, off, sizeof(*icmp6));
	struct ipv6hdr *quoted;

	if (!icmp6)
		return XDP_DROP;
	if (icmp6->icmp6_type == ICMPV6_ECHO_REQUEST)
		return LB_ECHO_REQUEST;
	if (icmp6->icmp6_type != ICMPV6_PKT_TOOBIG && icmp6->icmp6_type != ICMPV6_DEST_UNREACH)
		return XDP_PASS;
	if (icmp6->icmp6_type == ICMPV6_PKT_TOOBIG) {
		seen->ptb = true;
		seen->mtu = bpf_ntohl(icmp6->icmp6_mtu);
	}
	quoted = pkt_ptr(data, data_end, off + sizeof(*icmp6), sizeof(*quoted));
	if (!quoted)
		return XDP_DROP;
	pkt->flow.proto = quoted->nexthdr;
	pkt->flags |= PKT_F_ICMP;
	__builtin_memcpy(pkt->flow.srcv6, &quoted->daddr, 16);
	__builtin_memcpy(pkt->flow.dstv6, &quoted->saddr, 16);
	return LB_CONTINUE;
}

/* ICMP codes a QUIC server ignores (port / host or address unreachable). */
static __always_inline bool quic_ignorable_icmp(void *data, void *data_end, bool is_ipv6)
{
	if (is_ipv6) {
		struct icmp6hdr *icmp6 = pkt_ptr(data, data_end, l4_offset(true, false), sizeof(*icmp6));

		return icmp6 && (icmp6->icmp6_code == ICMPV6_ADDR_UNREACH ||
				 icmp6->icmp6_code == ICMPV6_PORT_UNREACH);
	}
	struct icmphdr *icmp = pkt_ptr(data, data_end, l4_offset(false, false), sizeof(*icmp));

	return icmp && (icmp->code == ICMP_PORT_UNREACH || icmp->code == ICMP_HOST_UNREACH);
}

/*
 * Reply to an oversized frame with ICMP "fragmentation needed" (v4) or
 * "packet too big" (v6) advertising `mtu`: the frame is cut to the quote
 * size, new headers are pushed in front, addresses and MACs are reversed.
 */
static __always_inline int icmp_send_too_big(struct xdp_md *xdp, bool is_ipv6, __u64 frame_len,
					     __u32 mtu)
{
	void *data, *data_end;
	struct ethhdr *eth, *orig_eth;
	int push;

	if (is_ipv6) {
		push = sizeof(struct ipv6hdr) + sizeof(struct icmp6hdr);
		if (bpf_xdp_adjust_tail(xdp, (int)ICMP6_TOOBIG_QUOTE - (int)frame_len))
			return XDP_DROP;
		if (bpf_xdp_adjust_head(xdp, -push))
			return XDP_DROP;
		data = (void *)(long)xdp->data;
		data_end = (void *)(long)xdp->data_end;
		eth = pkt_ptr(data, data_end, 0, ICMP6_TOOBIG_QUOTE + push);
		if (!eth)
			return XDP_DROP;
		orig_eth = (void *)eth + push;
		struct ipv6hdr *ip6h = (void *)(eth + 1);
		struct icmp6hdr *icmp6 = (void *)(ip6h + 1);
		struct ipv6hdr *orig = (void *)(icmp6 + 1);

		__builtin_memcpy(eth->h_source, orig_eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, orig_eth->h_source, ETH_ALEN);
		eth->h_proto = orig_eth->h_proto;
		ip6h->version = 6;
		ip6h->priority = 0;
		__builtin_memset(ip6h->flow_lbl, 0, sizeof(ip6h->flow_lbl));
		ip6h->nexthdr = IPPROTO_ICMPV6;
		ip6h->hop_limit = OUTER_TTL;
		ip6h->payload_len = bpf_htons(ICMP6_TOOBIG_QUOTE - 6);
		ip6h->daddr = orig->saddr;
		ip6h->saddr = orig->daddr;
		icmp6->icmp6_type = ICMPV6_PKT_TOOBIG;
		icmp6->icmp6_code = 0;
		icmp6->icmp6_mtu = bpf_htonl(mtu);
		icmp6->icmp6_cksum = 0;
		icmp6->icmp6_cksum = ip6_l4_csum(ip6h, icmp6, ICMP6_TOOBIG_QUOTE - 6);
		return XDP_TX;
	}

	push = sizeof(struct iphdr) + sizeof(struct icmphdr);
	if (bpf_xdp_adjust_tail(xdp, (int)ICMP4_TOOBIG_QUOTE - (int)frame_len))
		return XDP_DROP;
	if (bpf_xdp_adjust_head(xdp, -push))
		return XDP_DROP;
	data = (void *)(long)xdp->data;
	data_end = (void *)(long)xdp->data_end;
	eth = pkt_ptr(data, data_end, 0, ICMP4_TOOBIG_QUOTE + push);
	if (!eth)
		return XDP_DROP;
	orig_eth = (void *)eth + push;
	struct iphdr *iph = (void *)(eth + 1);
	struct icmphdr *icmp = (void *)(iph + 1);
	struct iphdr *orig = (void *)(icmp + 1);

	__builtin_memcpy(eth->h_source, orig_eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, orig_eth->h_source, ETH_ALEN);
	eth->h_proto = orig_eth->h_proto;
	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->un.frag.mtu = bpf_htons((__u16)mtu);
	icmp->un.frag.__unused = 0;
	icmp->checksum = 0;
	icmp->checksum = buf_csum(icmp, ICMP4_TOOBIG_QUOTE - 6);
	iph->ttl = OUTER_TTL;
	iph->daddr = orig->saddr;
	iph->saddr = orig->daddr;
	iph->frag_off = 0;
	iph->version = 4;
	iph->ihl = 5;
	iph->protocol = IPPROTO_ICMP;
	iph->tos = 0;
	iph->tot_len = bpf_htons(ICMP4_TOOBIG_QUOTE + push - sizeof(struct ethhdr));
	iph->id = 0;
	iph->check = 0;
	iph->check = iph_csum(iph);
	return XDP_TX;
}

#endif /* KATRAN_ICMP_H */
