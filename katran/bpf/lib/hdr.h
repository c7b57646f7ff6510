/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Outer header writers shared by the balancer (XDP encapsulation) and the
 * healthchecker (tc encapsulation), as Katran shares encap_helpers.h: they
 * fill headers the caller has made room for and bounds-checked, so they work
 * on any context. Also Katran's crafted outer source addresses of IPIP
 * encapsulation. Part of the helper library: no maps, no knobs.
 */
#ifndef KATRAN_LIB_HDR_H
#define KATRAN_LIB_HDR_H

#include <linux/types.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

#include "csum.h"

/* TTL / hop limit of every header we build (Katran's DEFAULT_TTL) */
#define OUTER_TTL 64

/* IPIP outer source prefixes in memory order: 172.16.0.0/16 and 0100::/64 */
#define IPIP_V4_SRC_PREFIX 0x10AC
#define IPIP_V6_SRC_W0 1

/*
 * Write a 20-byte IPv4 header: TTL 64, id 0, no flags, and its checksum. The
 * five 32-bit words are made and summed in registers and stored whole: a
 * header written field by field and summed back from memory stalls on store
 * forwarding (~8 ns a frame here). Words in memory order (little endian).
 */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "header words are little-endian loads");
static __always_inline void put_ipv4_hdr(struct iphdr *iph, __u8 tos, __be32 saddr, __be32 daddr,
					 __u16 payload_bytes, __u8 proto)
{
	__u32 *w = (__u32 *)iph;
	/* version 4, ihl 5 | tos | tot_len */
	__u32 w0 = 0x45 | ((__u32)tos << 8) |
		   ((__u32)bpf_htons(payload_bytes + sizeof(struct iphdr)) << 16);
	__u32 w2 = OUTER_TTL | ((__u32)proto << 8); /* ttl | protocol | check 0 */
	__u64 sum = (__u64)w0 + w2 + saddr + daddr; /* + w1: id 0, frag_off 0 */

	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	w[0] = w0;
	w[1] = 0;
	w[2] = w2 | ((__u32)(__u16)~sum << 16);
	w[3] = saddr;
	w[4] = daddr;
}

/* Write an IPv6 header with hop limit 64, traffic class `tc`, no flow label. */
static __always_inline void put_ipv6_hdr(struct ipv6hdr *ip6h, __u8 tc, const __be32 *saddr,
					 const __be32 *daddr, __u16 payload_len, __u8 proto)
{
	ip6h->version = 6;
	ip6h->priority = (tc & 0xF0) >> 4;
	ip6h->flow_lbl[0] = (tc & 0x0F) << 4;
	ip6h->flow_lbl[1] = 0;
	ip6h->flow_lbl[2] = 0;
	ip6h->payload_len = bpf_htons(payload_len);
	ip6h->nexthdr = proto;
	ip6h->hop_limit = OUTER_TTL;
	__builtin_memcpy(&ip6h->saddr, saddr, 16);
	__builtin_memcpy(&ip6h->daddr, daddr, 16);
}

/* Write a UDP header (GUE); sport is stored as given (already in wire order). */
static __always_inline void put_udp_hdr(struct udphdr *udph, __u16 sport_wire, __u16 dport,
					__u16 len)
{
	udph->source = sport_wire;
	udph->dest = bpf_htons(dport);
	udph->len = bpf_htons(len);
	udph->check = 0;
}

/* IPIP outer source: 172.16.(sp[1]^s[2]).(sp[0]^s[3]) (sport in host order). */
static __always_inline __be32 ipip_v4_src(__u16 sport, __be32 src)
{
	__u32 hi = (__u32)bpf_htons(sport) << 16;

	return ((hi ^ src) & 0xFFFF0000) | IPIP_V4_SRC_PREFIX;
}

/* IP6IP6 / 4in6 outer source: 0100::/64 then the client's last word ^ port. */
static __always_inline void ipip_v6_src(__u16 sport, __be32 src_word, __be32 out[4])
{
	out[0] = IPIP_V6_SRC_W0;
	out[1] = 0;
	out[2] = 0;
	out[3] = src_word ^ sport;
}

#endif /* KATRAN_LIB_HDR_H */
