// SPDX-License-Identifier: GPL-2.0
/*
 * katran for Python: the XDP load balancer (program `balancer_ingress`).
 *
 * Per packet: parse L2/L3/L4, answer ICMP echo, rebuild the flow of ICMP
 * errors, optionally decapsulate tunnelled traffic, find the VIP, pick a
 * real (server id, connection table, consistent-hashing ring), count, and
 * encapsulate towards the real (IPIP family or GUE) with XDP_TX.
 * Behaviour follows Katran's balancer; features are load-time knobs.
 *
 * This file is the entry point only: the pipeline is lb_pipeline.h, each
 * concern its own lb_*.h, the shared helpers lib/ (see docs/internals.md).
 */
#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "lib/icmphdr.h"
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "structs.h"
#include "knobs.h"
#include "maps.h"
#include "lib/abi.h"
#include "lib/cursor.h"
#include "parsing.h"
#include "lb_stats.h"     /* global counters */
#include "lb_icmp.h"      /* echo replies, ICMP errors (icmp.h: the packet work) */
#include "lb_conntrack.h" /* rate limiter, connection tables, UDP flow migration */
#include "lb_ch.h"        /* consistent hashing: pick_real */
#include "lb_server_id.h" /* QUIC / TPR / stable routing */
#include "lb_encap.h"     /* IPIP / GUE towards the real */
#include "lb_decap.h"     /* inline decapsulation */
#include "lb_capture.h"   /* packet capture to a ring buffer (off: one branch) */
#include "lb_pipeline.h"  /* per packet: parse, VIP, pick a real, count, encapsulate */

/* the enums the control plane shares (katran/contract.py checks them via BTF) */
KATRAN_ABI_ENUM(lb_global_counter);
KATRAN_ABI_ENUM(vip_flag);
KATRAN_ABI_ENUM(real_flag);
KATRAN_ABI_ENUM(ctl_slot);
KATRAN_ABI_ENUM(pckt_src_slot);
KATRAN_ABI_ENUM(decap_dst_flag);
KATRAN_ABI_ENUM(capture_flag);
KATRAN_ABI_ENUM(capture_direction);

SEC("xdp")
int balancer_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 frame_len = data_end - data;
	struct ethhdr *eth = pkt_ptr(data, data_end, 0, sizeof(struct ethhdr));
	__u32 zero = 0, which;
	struct hot_stats *hot;
	__be16 h_proto;
	int verdict;

	if (!eth)
		return XDP_DROP; /* shorter than an Ethernet header */

	hot = bpf_map_lookup_elem(&hot_stats, &zero);
	if (!hot)
		return XDP_DROP;
	hot->c[CNT_XDP_TOTAL].v1 += 1;
	hot->c[CNT_XDP_TOTAL].v2 += frame_len;

	/* struct ethhdr is packed: one 16-bit load, not two bytes */
	h_proto = *(const __be16 *)((const __u8 *)eth + 2 * ETH_ALEN);
	if (h_proto == ETH_P_IP_BE)
		verdict = process_packet(ctx, false, hot);
	else if (h_proto == ETH_P_IPV6_BE)
		verdict = process_packet(ctx, true, hot);
	else
		verdict = XDP_PASS;

	if (verdict == XDP_TX)
		which = CNT_XDP_TX;
	else if (verdict == XDP_DROP)
		which = CNT_XDP_DROP;
	else if (verdict == XDP_PASS)
		which = CNT_XDP_PASS;
	else
		return verdict;
	hot->c[which].v1 += 1;
	hot->c[which].v2 += frame_len;
	return verdict;
}

char _license[] SEC("license") = "GPL";
