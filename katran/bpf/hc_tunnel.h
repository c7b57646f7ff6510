/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Healthcheck forwarding: tunnel mode (Katran's tunnelBasedHCEncap) - set the
 * tunnel key and redirect to the ipip / ip6tnl device - and the drop counter.
 * Uses hc_maps.h.
 */
#ifndef KATRAN_HC_TUNNEL_H
#define KATRAN_HC_TUNNEL_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "hc_structs.h"
#include "hc_maps.h"
#include "lib/hdr.h"

static __always_inline int hc_drop(struct hc_stats *st)
{
	st->pckts_dropped += 1;
	return TC_ACT_SHOT;
}

static __always_inline int hc_tunnel(struct __sk_buff *skb, struct hc_stats *st,
				     const struct hc_real_definition *real)
{
	struct bpf_tunnel_key tkey = {};
	__u32 pos = (real->flags & HC_REAL_V6) ? HC_CTRL_V6_TUN : HC_CTRL_V4_TUN;
	__u64 tflags = 0;
	__u32 *ifindex;

	ifindex = bpf_map_lookup_elem(&hc_ctrl_map, &pos);
	if (!ifindex || !*ifindex)
		return hc_drop(st);
	tkey.tunnel_ttl = OUTER_TTL;
	if (real->flags & HC_REAL_V6) {
		tflags = BPF_F_TUNINFO_IPV6;
		__builtin_memcpy(tkey.remote_ipv6, real->v6daddr, 16);
	} else {
		tkey.remote_ipv4 = bpf_ntohl(real->daddr); /* host order for the tunnel key */
	}
	skb->mark = 0;
	if (bpf_skb_set_tunnel_key(skb, &tkey, sizeof(tkey), tflags))
		return hc_drop(st);
	st->pckts_processed += 1;
	return bpf_redirect(*ifindex, 0);
}

#endif /* KATRAN_HC_TUNNEL_H */
