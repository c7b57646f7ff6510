/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Packet parsing for the balancer: L3/L4 parsing into a pkt_meta and the
 * id-carrying UDP headers (QUIC connection id, UDP stable-routing header).
 * Header access: lib/cursor.h; the TCP server-id option: lib/tcp_opt.h.
 * No maps, no knobs.
 */
#ifndef KATRAN_PARSING_H
#define KATRAN_PARSING_H

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
#include "lib/cursor.h"
#include "lib/tcp_opt.h"

/*
 * Offset of the L4 header Katran's way: right after a 20-byte IPv4 header or
 * the fixed IPv6 header, or, for a flow rebuilt from an ICMP error, after the
 * ICMP header and the quoted IP header.
 */
static __always_inline __u64 l4_offset(bool is_ipv6, bool from_icmp)
{
	__u64 off = sizeof(struct ethhdr);

	if (is_ipv6) {
		off += sizeof(struct ipv6hdr);
		if (from_icmp)
			off += sizeof(struct icmp6hdr) + sizeof(struct ipv6hdr);
	} else {
		off += sizeof(struct iphdr);
		if (from_icmp)
			off += sizeof(struct icmphdr) + sizeof(struct iphdr);
	}
	return off;
}

/*
 * Parse the IP header at nh_off into pkt: protocol, ToS/traffic class,
 * addresses (not for ICMP, whose flow comes from the quoted packet).
 * *pkt_bytes gets the IPv4 total length or the IPv6 payload length.
 * Drops IPv4 with options, fragments, truncated headers, and a version field
 * that contradicts the EtherType (Katran reads such headers as v4 / v6).
 * Returns LB_CONTINUE or an XDP verdict.
 */
static __always_inline int parse_ip(void *data, void *data_end, __u64 nh_off, bool is_ipv6,
				    struct pkt_meta *pkt, __u8 *proto, __u16 *pkt_bytes)
{
	if (is_ipv6) {
		struct ipv6hdr *ip6h = pkt_ptr(data, data_end, nh_off, sizeof(*ip6h));

		if (!ip6h)
			return XDP_DROP;
		if (ip6h->version != 6)
			return XDP_DROP;
		*proto = ip6h->nexthdr;
		pkt->flow.proto = ip6h->nexthdr;
		pkt->tos = ((ip6h->priority << 4) & 0xF0) | ((ip6h->flow_lbl[0] >> 4) & 0x0F);
		*pkt_bytes = bpf_ntohs(ip6h->payload_len);
		if (ip6h->nexthdr == IPPROTO_FRAGMENT)
			return XDP_DROP;
		if (ip6h->nexthdr != IPPROTO_ICMPV6) {
			__builtin_memcpy(pkt->flow.srcv6, &ip6h->saddr, 16);
			__builtin_memcpy(pkt->flow.dstv6, &ip6h->daddr, 16);
		}
		return LB_CONTINUE;
	}

	struct iphdr *iph = pkt_ptr(data, data_end, nh_off, sizeof(*iph));

	if (!iph)
		return XDP_DROP;
	if (*(__u8 *)iph != IPV4_VERSION_IHL5) /* version 4; options are not supported */
		return XDP_DROP;
	pkt->tos = iph->tos;
	*proto = iph->protocol;
	pkt->flow.proto = iph->protocol;
	*pkt_bytes = bpf_ntohs(iph->tot_len);
	if (iph->frag_off & IPV4_FRAG_MASK_BE)
		return XDP_DROP;
	if (iph->protocol != IPPROTO_ICMP) {
		pkt->flow.src = iph->saddr;
		pkt->flow.dst = iph->daddr;
	}
	return LB_CONTINUE;
}

/*
 * Does the declared IP length contradict the frame? IPv4: tot_len below the
 * header (ihl * 4, always 20 here: parse_ip drops options) or beyond the bytes
 * after the Ethernet header; IPv6: 40 + payload_len beyond them. Bytes past
 * the declared length (Ethernet padding) are legal. pkt_bytes is what
 * parse_ip stored (tot_len / payload_len); the frame holds the parsed header.
 * One unsigned compare: for tot_len < 20, tot_len - 20 wraps above any room.
 */
static __always_inline bool ip_len_malformed(__u64 frame_len, __u16 pkt_bytes, bool is_ipv6)
{
	__u64 hdr = is_ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u64 room = frame_len - sizeof(struct ethhdr) - hdr;

	if (is_ipv6)
		return (__u64)pkt_bytes > room;
	return (__u64)pkt_bytes - hdr > room;
}

/*
 * A source no client can have (RFC 1122 / 4291 martians): 0.0.0.0/8,
 * 127.0.0.0/8, 224.0.0.0/4 (multicast), 255.255.255.255; ::, ::1, ff00::/8.
 * addr is in wire order (v4: addr[0]). The first byte sorts out common
 * clients; the whole address is read only when that byte is 0xFF (v4) or 0 (v6).
 */
static __always_inline bool src_is_martian(const __be32 *addr, bool is_ipv6)
{
	__u8 first = *(const __u8 *)addr;

	if (is_ipv6) {
		if (first == 0xFF)
			return true;
		return first == 0 && !(addr[0] | addr[1] | addr[2]) && !(addr[3] & ~bpf_htonl(1));
	}
	if (first == 0 || first == 127 || (first & 0xF0) == 0xE0)
		return true;
	return first == 0xFF && addr[0] == 0xFFFFFFFF;
}

/*
 * Read the ports of the TCP (is_tcp) or UDP header into pkt->flow; a flow
 * rebuilt from an ICMP error gets them swapped back to the client's view.
 * Records SYN and RST. Returns false when the header is truncated.
 */
static __always_inline bool parse_ports(void *data, void *data_end, bool is_ipv6, bool is_tcp,
					struct pkt_meta *pkt)
{
	bool from_icmp = pkt->flags & PKT_F_ICMP;
	__u64 off = l4_offset(is_ipv6, from_icmp);
	__u16 sport, dport;

	if (is_tcp) {
		struct tcphdr *tcp = pkt_ptr(data, data_end, off, sizeof(*tcp));

		if (!tcp)
			return false;
		if (tcp->syn)
			pkt->flags |= PKT_F_SYN;
		if (tcp->rst)
			pkt->flags |= PKT_F_RST;
		sport = tcp->source;
		dport = tcp->dest;
	} else {
		struct udphdr *udp = pkt_ptr(data, data_end, off, sizeof(*udp));

		if (!udp)
			return false;
		sport = udp->source;
		dport = udp->dest;
	}
	if (from_icmp) {
		pkt->flow.port16[0] = dport;
		pkt->flow.port16[1] = sport;
	} else {
		pkt->flow.port16[0] = sport;
		pkt->flow.port16[1] = dport;
	}
	return true;
}

/* What a QUIC header tells about routing. */
struct quic_cid_info {
	__s32 server_id;  /* > 0 when a usable server id was found */
	__u8 cid_version; /* 0xFF when there was no connection id */
	bool is_initial;  /* client initial / 0-RTT: the CID is client-chosen */
};

/*
 * Extract Katran's server id from the destination connection id of a QUIC
 * packet (long header: handshake/retry with a CID of at least 8 bytes; short
 * header: the 8 bytes after the first byte). CID versions:
 * v1: 16 bits after the 2 version bits; v2: bytes 1..3; v3: bytes 1..4.
 */
static __always_inline struct quic_cid_info parse_quic_cid(void *data, void *data_end,
							   bool is_ipv6, bool from_icmp)
{
	struct quic_cid_info res = { .server_id = -1, .cid_version = 0xFF, .is_initial = false };
	__u64 off = l4_offset(is_ipv6, from_icmp) + sizeof(struct udphdr);
	__u8 *q = pkt_ptr(data, data_end, off, 1);
	__u8 *cid;

	if (!q)
		return res;
	if (q[0] & QUIC_LONG_HDR) {
		/* flags(1) version(4) dcid_len(1) dcid(>= 8) */
		q = pkt_ptr(data, data_end, off, 6 + QUIC_MIN_CID_LEN);
		if (!q)
			return res;
		if ((q[0] & QUIC_PKT_TYPE_MASK) < QUIC_PKT_HANDSHAKE) {
			res.is_initial = true;
			return res;
		}
		if (q[5] < QUIC_MIN_CID_LEN)
			return res;
		cid = q + 6;
	} else {
		q = pkt_ptr(data, data_end, off, 1 + QUIC_MIN_CID_LEN);
		if (!q)
			return res;
		cid = q + 1;
	}

	res.cid_version = cid[0] >> 6;
	if (res.cid_version == QUIC_CID_V1)
		res.server_id = ((cid[0] & 0x3F) << 10) | (cid[1] << 2) | (cid[2] >> 6);
	else if (res.cid_version == QUIC_CID_V2)
		res.server_id = (cid[1] << 16) | (cid[2] << 8) | cid[3];
	else if (res.cid_version == QUIC_CID_V3)
		res.server_id = (__s32)(((__u32)cid[1] << 24) | (cid[2] << 16) | (cid[3] << 8) | cid[4]);
	return res;
}

/* What a UDP stable-routing header tells. */
struct stable_rt_info {
	__u32 server_id; /* 0: none */
	bool is_stable_rt;
};

/* Server id of a UDP stable-routing packet: 0x52, then a CID (v2 schema). */
static __always_inline struct stable_rt_info parse_stable_rt(void *data, void *data_end,
							    bool is_ipv6, bool from_icmp)
{
	struct stable_rt_info res = { .server_id = 0, .is_stable_rt = false };
	__u64 off = l4_offset(is_ipv6, from_icmp) + sizeof(struct udphdr);
	__u8 *p = pkt_ptr(data, data_end, off, 1);

	if (!p || p[0] != STABLE_RT_MARK)
		return res;
	p = pkt_ptr(data, data_end, off, STABLE_RT_CID_LEN);
	if (!p)
		return res;
	res.is_stable_rt = true;
	res.server_id = (p[1] << 16) | (p[2] << 8) | p[3];
	return res;
}

#endif /* KATRAN_PARSING_H */
