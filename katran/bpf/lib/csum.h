/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Internet checksum helpers (RFC 1071 / RFC 1624), usable from XDP and tc:
 * they work on header pointers, never on the context. Sums are kept in a
 * __u64 accumulator and folded at the end. Part of the helper library: no
 * maps, no knobs.
 */
#ifndef KATRAN_LIB_CSUM_H
#define KATRAN_LIB_CSUM_H

#include <linux/types.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Fold a 64-bit one's-complement accumulator to 16 bits and invert it. */
static __always_inline __u16 csum_fold_u64(__u64 sum)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (sum >> 16)
			sum = (sum & 0xffff) + (sum >> 16);
	}
	return (__u16)~sum;
}

/*
 * Checksum of an IPv4 header without options; iph->check must be 0.
 * Summed as five 32-bit words (a one's-complement sum folds to the same
 * 16 bits at any word width), then folded without branches: the sum is
 * below 2^35, so four folds always finish.
 */
static __always_inline __u16 iph_csum(const struct iphdr *iph)
{
	const __u32 *w = (const __u32 *)iph;
	__u64 sum = (__u64)w[0] + w[1] + w[2] + w[3] + w[4];

	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Checksum of a buffer of `len` bytes (multiple of 4) through the helper. */
static __always_inline __u16 buf_csum(void *buf, int len)
{
	__s64 sum = bpf_csum_diff(0, 0, buf, len, 0);

	return csum_fold_u64((__u64)sum);
}

/* Add a __be32 word (or remove it when `sub`) to a running csum_diff value. */
static __always_inline __s64 csum_word(__u32 word, __u64 sum, int sub)
{
	if (sub)
		return bpf_csum_diff(&word, sizeof(word), 0, 0, sum);
	return bpf_csum_diff(0, 0, &word, sizeof(word), sum);
}

/* ICMPv6-style checksum: IPv6 pseudo header + `len` bytes at `l4`. */
static __always_inline __u16 ip6_l4_csum(struct ipv6hdr *ip6h, void *l4, int len)
{
	__s64 sum;

	sum = bpf_csum_diff(0, 0, (__be32 *)&ip6h->saddr, sizeof(struct in6_addr), 0);
	sum = bpf_csum_diff(0, 0, (__be32 *)&ip6h->daddr, sizeof(struct in6_addr), sum);
	sum = csum_word(bpf_htonl((__u32)len), sum, 0);
	sum = csum_word(bpf_htonl((__u32)ip6h->nexthdr), sum, 0);
	sum = bpf_csum_diff(0, 0, l4, len, sum);
	return csum_fold_u64((__u64)sum);
}

/* Add (sub=0) or remove (sub=1) the IPv6 pseudo header of ip6h. */
static __always_inline int csum_pseudo6(struct ipv6hdr *ip6h, __u64 *sum, int sub)
{
	__be32 *s = (__be32 *)&ip6h->saddr, *d = (__be32 *)&ip6h->daddr;
	__s64 r;

	if (sub) {
		r = bpf_csum_diff(s, 16, 0, 0, *sum);
		if (r < 0)
			return -1;
		r = bpf_csum_diff(d, 16, 0, 0, r);
	} else {
		r = bpf_csum_diff(0, 0, s, 16, *sum);
		if (r < 0)
			return -1;
		r = bpf_csum_diff(0, 0, d, 16, r);
	}
	if (r < 0)
		return -1;
	r = csum_word(bpf_htonl((__u32)bpf_ntohs(ip6h->payload_len)), r, sub);
	if (r < 0)
		return -1;
	r = csum_word(bpf_htonl((__u32)ip6h->nexthdr), r, sub);
	if (r < 0)
		return -1;
	*sum = r;
	return 0;
}

/* Add (sub=0) or remove (sub=1) the IPv4 pseudo header of iph. */
static __always_inline int csum_pseudo4(struct iphdr *iph, __u64 *sum, int sub)
{
	__s64 r;

	r = csum_word(iph->saddr, *sum, sub);
	if (r < 0)
		return -1;
	r = csum_word(iph->daddr, r, sub);
	if (r < 0)
		return -1;
	r = csum_word(bpf_htonl((__u32)bpf_ntohs(iph->tot_len) - sizeof(struct iphdr)), r, sub);
	if (r < 0)
		return -1;
	r = csum_word(bpf_htonl((__u32)iph->protocol), r, sub);
	if (r < 0)
		return -1;
	*sum = r;
	return 0;
}

/*
 * Outer UDP checksum of a GUE packet, derived from the inner L4 checksum
 * without touching the payload (RFC 1624: HC' = ~(~HC + ~m + m')).
 * `l4_csum` holds the inner TCP/UDP checksum (as read from the packet).
 * The inner pseudo header is taken out, then the inner IP header, the outer
 * UDP header and the outer pseudo header are added. One of inner4/inner6
 * and one of outer4/outer6 is non-NULL. Returns 0 and the folded value.
 */
static __always_inline int gue_udp_csum(void *outer4, void *outer6, struct udphdr *udph,
					void *inner4, void *inner6, __u64 *l4_csum)
{
	__u32 orig = (__u32)*l4_csum;
	__u64 sum;
	__s64 r;

	r = bpf_csum_diff(0, 0, &orig, sizeof(orig), (~orig) & 0xffff);
	if (r < 0)
		return -1;
	sum = r;
	if (inner6) {
		if (csum_pseudo6(inner6, &sum, 1))
			return -1;
		r = bpf_csum_diff(0, 0, inner6, sizeof(struct ipv6hdr), sum);
	} else {
		if (csum_pseudo4(inner4, &sum, 1))
			return -1;
		r = bpf_csum_diff(0, 0, inner4, sizeof(struct iphdr), sum);
	}
	if (r < 0)
		return -1;
	r = bpf_csum_diff(0, 0, (__be32 *)udph, sizeof(*udph), r);
	if (r < 0)
		return -1;
	sum = r;
	if (outer6) {
		if (csum_pseudo6(outer6, &sum, 0))
			return -1;
	} else {
		if (csum_pseudo4(outer4, &sum, 0))
			return -1;
	}
	*l4_csum = csum_fold_u64(sum);
	return 0;
}

#endif /* KATRAN_LIB_CSUM_H */
