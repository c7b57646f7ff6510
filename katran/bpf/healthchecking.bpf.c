// SPDX-License-Identifier: GPL-2.0
/*
 * Healthcheck forwarding (tc clsact egress): a locally generated probe whose
 * skb->mark is a configured somark is encapsulated toward its real.
 *
 * direct mode: outer IPv4 / IPv6 header (IPIP, IP6IP6, 4in6; GUE when
 *   hc_gue_dport != 0) built here, MACs rewritten, redirected to the egress of
 *   hc_ctrl_map[3]. Needs no tunnel device.
 * tunnel mode: tunnel key set, redirected to the ipip / ip6tnl device
 *   (hc_ctrl_map[1] / [2]), which builds the outer header.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "hc_structs.h"
#include "hc_maps.h"
#include "hc_knobs.h"
#include "hc_encap.h"
#include "hc_tunnel.h"
#include "lib/abi.h"
#include "lib/cursor.h"
#include "lib/hdr.h"

KATRAN_ABI_ENUM(hc_ctrl_slot);
KATRAN_ABI_ENUM(hc_src_slot);
KATRAN_ABI_ENUM(hc_mac_slot);
KATRAN_ABI_ENUM(hc_real_flag);
KATRAN_ABI_ENUM(hc_encap_mode);

SEC("tc")
int healthcheck_encap(struct __sk_buff *skb)
{
	__u32 key = 0, somark = skb->mark;
	struct hc_real_definition *real, *src;
	struct hc_mac *smac, *dmac;
	struct hc_stats *st;
	struct ethhdr *eth;
	__u32 *out_ifindex;
	bool inner_v6;

	st = bpf_map_lookup_elem(&hc_stats_map, &key);
	if (!st)
		return TC_ACT_UNSPEC;

	eth = pkt_ptr((void *)(long)skb->data, (void *)(long)skb->data_end, 0, sizeof(*eth));
	if (!eth)
		return hc_drop(st);
	inner_v6 = eth->h_proto == ETH_P_IPV6_BE;

	real = somark ? bpf_map_lookup_elem(&hc_reals_map, &somark) : NULL;
	if (!real) {
		st->pckts_skipped += 1;
		return TC_ACT_UNSPEC;
	}
	if (hc_max_pckt_size && skb->len > hc_max_pckt_size) {
		st->pckts_too_big += 1;
		return hc_drop(st);
	}
	if (hc_encap_mode == HC_ENCAP_TUNNEL)
		return hc_tunnel(skb, st, real);

	key = HC_CTRL_MAIN_INTF;
	out_ifindex = bpf_map_lookup_elem(&hc_ctrl_map, &key);
	if (!out_ifindex || !*out_ifindex)
		return hc_drop(st);
	key = HC_MAC_SRC;
	smac = bpf_map_lookup_elem(&hc_pckt_macs, &key);
	key = HC_MAC_DST;
	dmac = bpf_map_lookup_elem(&hc_pckt_macs, &key);
	key = (real->flags & HC_REAL_V6) ? HC_SRC_V6 : HC_SRC_V4;
	src = bpf_map_lookup_elem(&hc_pckt_srcs_map, &key);
	if (!smac || !dmac || !src)
		return hc_drop(st);

	/* the encapsulated packet may pass this hook again: no recursion */
	skb->mark = 0;
	if (!hc_encap(skb, real, src, inner_v6, hc_gue_dport))
		return hc_drop(st);

	eth = pkt_ptr((void *)(long)skb->data, (void *)(long)skb->data_end, 0, sizeof(*eth));
	if (!eth)
		return hc_drop(st);
	__builtin_memcpy(eth->h_source, smac->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, dmac->mac, ETH_ALEN);
	st->pckts_processed += 1;
	return bpf_redirect(*out_ifindex, 0);
}

char _license[] SEC("license") = "GPL";
