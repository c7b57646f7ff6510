/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Packet capture from the data plane (katran-cli -capture, KatranLb.capture).
 *
 * User space sets the filter in the global `capture_filter` (the object's
 * .bss map) and drains the ring buffer `capture_ring`. With no capture
 * running the fast path pays one load and one compare of
 * capture_filter.enabled; everything else is out of line. A balanced packet
 * that matches the filter is recorded as the balancer saw it (direction in,
 * before encapsulation) and as it sends it (direction out, after
 * encapsulation). A record that does not fit the ring is counted as lost
 * (capture_stats[0].v2), never waited for.
 */
#ifndef KATRAN_LB_CAPTURE_H
#define KATRAN_LB_CAPTURE_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "lb_encap.h"

/* Written by user space through the .bss map; zero (off) at load. */
struct capture_filter capture_filter = {};

/* 0 -> capture_record: per-cpu scratch a record is assembled in. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct capture_record);
	__uint(max_entries, 1);
} capture_scratch SEC(".maps");

/* 0 -> lb_stats: v1 records written to the ring, v2 records lost (ring full). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_stats);
	__uint(max_entries, 1);
} capture_stats SEC(".maps");

/* capture_hdr + frame bytes, one record per captured frame (size: bytes, power of 2). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, DEFAULT_CAPTURE_RING_SIZE);
} capture_ring SEC(".maps");

/* Does the balanced packet match the filter (vip number, real index, source prefix)? */
static __always_inline bool capture_match(struct pkt_meta *pkt, __u32 vip_num, bool is_ipv6)
{
	__u32 flags = capture_filter.flags;
	int i;

	if ((flags & CAPTURE_F_VIP) && capture_filter.vip_num != vip_num)
		return false;
	if ((flags & CAPTURE_F_REAL) && capture_filter.real_index != pkt->real_index)
		return false;
	if (flags & CAPTURE_F_SRC_V4) {
		if (is_ipv6 || (pkt->flow.src & capture_filter.src_mask[0]) != capture_filter.src[0])
			return false;
	} else if (flags & CAPTURE_F_SRC_V6) {
		if (!is_ipv6)
			return false;
#pragma unroll
		for (i = 0; i < 4; i++)
			if ((pkt->flow.srcv6[i] & capture_filter.src_mask[i]) != capture_filter.src[i])
				return false;
	}
	return true;
}

/* Copy the frame's first snaplen bytes into a record on the ring (or count it lost). */
static __always_inline void capture_emit(struct xdp_md *xdp, __u8 direction)
{
	__u32 key = 0;
	struct capture_record *rec = bpf_map_lookup_elem(&capture_scratch, &key);
	struct lb_stats *cnt = bpf_map_lookup_elem(&capture_stats, &key);
	__u64 len = bpf_xdp_get_buff_len(xdp);
	__u64 caplen = capture_filter.snaplen;

	if (!rec || !cnt)
		return;
	if (caplen > len)
		caplen = len;
	/* one register for the bounds the verifier checks (snaplen <= max: user space) */
	asm volatile("" : "+r"(caplen));
	if (caplen < 1 || caplen > CAPTURE_MAX_SNAPLEN)
		return;
	if (bpf_xdp_load_bytes(xdp, 0, rec->data, caplen))
		return;
	rec->hdr.tstamp_ns = bpf_ktime_get_ns();
	rec->hdr.ifindex = xdp->ingress_ifindex;
	rec->hdr.orig_len = len;
	rec->hdr.cap_len = caplen;
	rec->hdr.direction = direction;
	if (bpf_ringbuf_output(&capture_ring, rec, sizeof(rec->hdr) + caplen, 0))
		cnt->v2 += 1;
	else
		cnt->v1 += 1;
}

/*
 * The end of balance_flow() while a capture runs: record the packet (in),
 * encapsulate it exactly as the fast path does, record the result (out).
 */
static __always_inline int capture_encap(struct xdp_md *xdp, struct pkt_meta *pkt,
					 struct real_definition *dst, __u32 vip_num,
					 __u16 pkt_bytes, bool is_ipv6)
{
	__u32 key = CTL_DEFAULT_MAC;
	struct ctl_value *gw = bpf_map_lookup_elem(&ctl_array, &key);
	bool hit;

	if (!gw)
		return XDP_DROP;
	hit = capture_match(pkt, vip_num, is_ipv6);
	if (hit)
		capture_emit(xdp, CAPTURE_DIR_IN);
	if (!encap_to_real(xdp, gw, pkt, dst, is_ipv6, pkt_bytes)) {
		count_pair(CNT_ENCAP_FAIL, dst->flags & REAL_F_IPV6); /* v1: v4 real, v2: v6 */
		return XDP_DROP;
	}
	if (hit)
		capture_emit(xdp, CAPTURE_DIR_OUT);
	return XDP_TX;
}

/* Out of line, one per client family (is_ipv6 stays a constant for the verifier). */
LB_OUT_OF_LINE int capture_and_encap_v4(struct xdp_md *xdp, struct pkt_meta *pkt,
					struct real_definition *dst, __u32 vip_num, __u16 pkt_bytes)
{
	return capture_encap(xdp, pkt, dst, vip_num, pkt_bytes, false);
}

LB_OUT_OF_LINE int capture_and_encap_v6(struct xdp_md *xdp, struct pkt_meta *pkt,
					struct real_definition *dst, __u32 vip_num, __u16 pkt_bytes)
{
	return capture_encap(xdp, pkt, dst, vip_num, pkt_bytes, true);
}

/* The fast path's hook: a capture is running when capture_filter.enabled is set. */
static __always_inline int capture_and_encap(struct xdp_md *xdp, struct pkt_meta *pkt,
					     struct real_definition *dst, __u32 vip_num,
					     __u16 pkt_bytes, bool is_ipv6)
{
	if (is_ipv6)
		return capture_and_encap_v6(xdp, pkt, dst, vip_num, pkt_bytes);
	return capture_and_encap_v4(xdp, pkt, dst, vip_num, pkt_bytes);
}

#endif /* KATRAN_LB_CAPTURE_H */
