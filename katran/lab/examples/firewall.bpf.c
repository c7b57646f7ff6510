// SPDX-License-Identifier: GPL-2.0
/*
 * Example program for a shared-mode slot in front of the balancer (slot 0 or 1).
 *
 * Drops packets whose source is in fw_blocked_v4 / fw_blocked_v6; everything else
 * is handed on to the later slots of the root array. A tail call never returns, so
 * "handing on" means tail-calling slots fw_slot+1 .. fw_slots-1 ourselves (root_array
 * is the root program's pinned array, shared by reusing its fd at load time). When
 * none of them takes the packet: XDP_PASS, as the root program would.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FW_MAX_SLOTS 32

/* load-time knobs */
const volatile __u32 fw_slot = 0;   /* our position in root_array */
const volatile __u32 fw_slots = 3;  /* root_array size */

struct lpm_v4 {
	__u32 prefixlen;
	__be32 addr;
};

struct lpm_v6 {
	__u32 prefixlen;
	__be32 addr[4];
};

/* the root program's array (fd reused from the pin) */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 3);
} root_array SEC(".maps");

/* blocked IPv4 source prefixes */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v4);
	__type(value, __u32);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fw_blocked_v4 SEC(".maps");

/* blocked IPv6 source prefixes */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v6);
	__type(value, __u32);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} fw_blocked_v6 SEC(".maps");

/* 0: dropped, 1: handed on */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} fw_counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&fw_counters, &idx);

	if (c)
		*c += 1;
}

static __always_inline int blocked(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		struct lpm_v4 key = {.prefixlen = 32};

		if ((void *)(iph + 1) > end)
			return 0;
		key.addr = iph->saddr;
		return bpf_map_lookup_elem(&fw_blocked_v4, &key) != NULL;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);
		struct lpm_v6 key = {.prefixlen = 128};

		if ((void *)(ip6h + 1) > end)
			return 0;
		__builtin_memcpy(key.addr, ip6h->saddr.s6_addr32, 16);
		return bpf_map_lookup_elem(&fw_blocked_v6, &key) != NULL;
	}
	return 0;
}

SEC("xdp")
int xdp_firewall(struct xdp_md *ctx)
{
	if (blocked(ctx)) {
		count(0);
		return XDP_DROP;
	}
	count(1);
	for (__u32 slot = 0; slot < FW_MAX_SLOTS; slot++) {
		if (slot >= fw_slots)
			break;
		if (slot > fw_slot)
			bpf_tail_call(ctx, &root_array, slot);
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
