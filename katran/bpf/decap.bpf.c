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
#include "decap_knobs.h"
#include "decap_steps.h"
#include "lib/abi.h"
#include "lib/addr.h"
#include "lib/cursor.h"
#include "lib/tcp_opt.h"
#include "lib/xdp_decap.h"

KATRAN_ABI_ENUM(decap_host_slot);

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
	if (!xdp_decap_strip(ctx, o.hdr_len, inner_v6))
		return XDP_DROP;
	if (gue)
		account_tpr(ctx, inner_v6, st);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
