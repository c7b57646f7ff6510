// SPDX-License-Identifier: GPL-2.0
/* The helper programs of bench_forwarding.py.
 *
 * xdp_reflect: the forwarding ceiling: swap the Ethernet addresses, XDP_TX.
 * xdp_encap:   the fair ceiling of an IPIP balancer: what an encapsulating program must at
 *              least do: bpf_xdp_adjust_head(-20), write the outer Ethernet header (the
 *              addresses swapped) and an outer IPv4 header (IPIP, the inner ToS and length,
 *              fixed addresses, header checksum), XDP_TX. No lookup, no counter.
 * xdp_state:   the fair ceiling of a balancer that keeps per-flow state: xdp_encap after one
 *              read of the flow's 64-byte line in a 1 MiB table (state_slots, the size of
 *              the flow cache's block of one cpu, slot = the same hash of the 5-tuple), the
 *              outer destination taken from it; a flow not in its slot is written there.
 *              No other lookup, no counter, no ageing.
 * xdp_flows:   the driver of every timed run: rewrites the TCP/UDP source port of an
 *              IPv4 frame to base + i, i = seq++ % flows (with `hashed` also the low 16 bits
 *              of the client address to a hash of i, the header checksum updated) and
 *              tail-calls the program under test (slot 0 of `target`), so one live-frames run
 *              carries many flows.
 * xdp_sink:    the veth peer: counts the IPv4 TCP or IPIP frames that arrive (XDP_TX really
 *              transmitted; the kernel's own IPv6 chatter on the link is not counted), drops all.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

/* [0] flows, [1] base source port, [2] sequence number, [3] 1: hashed client addresses */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} flow_cfg SEC(".maps");

/* [0] frames the sink saw */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

SEC("xdp")
int xdp_reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	unsigned char tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

/* the outer addresses of xdp_encap; the destination ends in .8.0 like the balancer's reals
 * (bench_forwarding.py: the recycled frame's ethertype stays IPv4) */
#define ENCAP_SRC 0x0a000d25 /* 10.0.13.37 */
#define ENCAP_DST 0x0a010800 /* 10.1.8.0 */

static __always_inline __u16 ipv4_csum(const __u16 *words)
{
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
		sum += words[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* xdp_state's table: a flow's 5-tuple words as the flow cache keeps an IPv4 key (saddr, 0,
 * daddr, 0, ports | proto << 32) and the outer destination of its frames (64 bytes). */
struct state_slot {
	__u64 key[5];
	__be32 daddr;
	__u32 pad[5];
};

#define STATE_BITS 14

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << STATE_BITS);
	__type(key, __u32);
	__type(value, struct state_slot);
} state_slots SEC(".maps");

/* Encapsulate the frame in IPIP to `daddr` (network order) and send it back out. */
static __always_inline int encap_tx(struct xdp_md *ctx, __be32 daddr)
{
	void *data, *data_end;
	struct ethhdr *eth, *old_eth;
	struct iphdr *outer, *inner;

	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr)))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	outer = data + sizeof(struct ethhdr);
	old_eth = data + sizeof(struct iphdr);
	inner = (void *)(outer + 1);
	if ((void *)(inner + 1) > data_end)
		return XDP_DROP;
	/* the new Ethernet header (bytes 0-13) does not overlap the old one (20-33) */
	__builtin_memcpy(eth->h_dest, old_eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, old_eth->h_dest, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = inner->tos;
	outer->tot_len = bpf_htons(bpf_ntohs(inner->tot_len) + sizeof(struct iphdr));
	outer->id = 0;
	outer->frag_off = 0;
	outer->ttl = 64;
	outer->protocol = IPPROTO_IPIP;
	outer->saddr = bpf_htonl(ENCAP_SRC);
	outer->daddr = daddr;
	outer->check = 0;
	outer->check = ipv4_csum((const __u16 *)outer);
	return XDP_TX;
}

SEC("xdp")
int xdp_encap(struct xdp_md *ctx)
{
	return encap_tx(ctx, bpf_htonl(ENCAP_DST));
}

/* The frame's IPv4 header, without options and followed by the 4 bytes of the ports;
 * NULL: the frame is shorter or has options. */
static __always_inline struct iphdr *ipv4_ports(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);

	if ((void *)(ip + 1) + sizeof(__u32) > data_end || ip->ihl != 5)
		return NULL;
	return ip;
}

SEC("xdp")
int xdp_state(struct xdp_md *ctx)
{
	struct iphdr *ip = ipv4_ports(ctx);
	struct state_slot *s;
	__u32 *ports, h;
	__u64 l4;

	if (!ip)
		return XDP_DROP;
	ports = (void *)(ip + 1);
	l4 = *ports | ((__u64)ip->protocol << 32);
	h = ip->saddr ^ ip->daddr ^ *ports ^ ip->protocol;
	h = (h * 0x9e3779b1u) >> (32 - STATE_BITS);
	s = bpf_map_lookup_elem(&state_slots, &h);
	if (!s)
		return XDP_DROP;
	if (s->key[0] != ip->saddr || s->key[2] != ip->daddr || s->key[4] != l4) {
		s->key[0] = ip->saddr;
		s->key[2] = ip->daddr;
		s->key[4] = l4;
		s->daddr = bpf_htonl(ENCAP_DST);
	}
	return encap_tx(ctx, s->daddr);
}

/* The low 16 bits of flow i's client address with `hashed` (bench_forwarding.py client_of
 * mirrors it): murmur3's 32-bit finalizer of i, its top half. */
static __always_inline __u16 client_word(__u32 i)
{
	i ^= i >> 16;
	i *= 0x85ebca6bu;
	i ^= i >> 13;
	i *= 0xc2b2ae35u;
	i ^= i >> 16;
	return i >> 16;
}

SEC("xdp")
int xdp_flows(struct xdp_md *ctx)
{
	struct iphdr *ip = ipv4_ports(ctx);
	__u32 k0 = 0, k1 = 1, k2 = 2, k3 = 3;
	__u32 *flows, *base, *seq, *hashed, i, sum;
	__u16 *client, word;
	__be16 *sport;

	if (!ip)
		return XDP_DROP;
	sport = (void *)(ip + 1);
	flows = bpf_map_lookup_elem(&flow_cfg, &k0);
	base = bpf_map_lookup_elem(&flow_cfg, &k1);
	seq = bpf_map_lookup_elem(&flow_cfg, &k2);
	hashed = bpf_map_lookup_elem(&flow_cfg, &k3);
	if (!flows || !base || !seq || !hashed || *flows == 0)
		return XDP_DROP;
	i = *seq % *flows;
	*sport = bpf_htons((__u16)(*base + i));
	*seq += 1;
	if (*hashed) {
		/* the last two bytes of saddr; the checksum updated as RFC 1624 says */
		client = (__u16 *)&ip->saddr + 1;
		word = bpf_htons(client_word(i));
		sum = (__u16)~ip->check + (__u16)~*client + word;
		sum = (sum & 0xffff) + (sum >> 16);
		sum = (sum & 0xffff) + (sum >> 16);
		*client = word;
		ip->check = (__u16)~sum;
	}
	bpf_tail_call(ctx, &target, 0);
	return XDP_DROP;
}

SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u32 k = 0;
	__u64 *n;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_IPIP))
		return XDP_DROP;
	n = bpf_map_lookup_elem(&sink_count, &k);
	if (n)
		__sync_fetch_and_add(n, 1);
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
