/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Maps of the balancer. Names and key/value layouts are Katran's so the
 * control plane can address them the same way. max_entries below are the
 * defaults; the control plane resizes them before load (set_max_entries).
 */
#ifndef KATRAN_MAPS_H
#define KATRAN_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"

/* vip_definition -> vip_meta: the VIPs we balance (flags, vip number). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct vip_definition);
	__type(value, struct vip_meta);
	__uint(max_entries, DEFAULT_MAX_VIPS);
} vip_map SEC(".maps");

/* flow_key -> real_pos_lru: connection table used when the cpu has none. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct real_pos_lru);
	__uint(max_entries, DEFAULT_LRU_SIZE);
} fallback_cache SEC(".maps");

/* cpu id -> per-cpu connection table (LRU_HASH flow_key -> real_pos_lru). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_SUPPORTED_CPUS);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LRU_HASH);
		__type(key, struct flow_key);
		__type(value, struct real_pos_lru);
		__uint(max_entries, DEFAULT_LRU_SIZE);
	});
} lru_mapping SEC(".maps");

/*
 * vip_num * ring_size + slot -> real index: the consistent-hashing rings.
 * BPF_F_MMAPABLE (ours, not Katran's): the control plane maps the values into its
 * memory and writes a rebuild's changed slots there, no syscall per batch (the
 * slots are 8 bytes apart: round_up(value_size, 8)). Lookups stay inlined array
 * accesses. An older ch_rings without the flag (reused by an upgrade or adopted)
 * is written with batch updates as before.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, DEFAULT_MAX_VIPS * DEFAULT_RING_SIZE);
} ch_rings SEC(".maps");

/* real index -> real_definition: backend addresses (index 0 is unused). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct real_definition);
	__uint(max_entries, DEFAULT_MAX_REALS);
} reals SEC(".maps");

/* real index -> lb_stats: packets/bytes sent to each real, per cpu. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_stats);
	__uint(max_entries, DEFAULT_MAX_REALS);
} reals_stats SEC(".maps");

/* real index -> u32: LRU misses that landed on the real (vip_miss_stats VIP). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, DEFAULT_MAX_REALS);
} lru_miss_stats SEC(".maps");

/* 0 -> vip_definition: the VIP whose LRU misses lru_miss_stats tracks. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct vip_definition);
	__uint(max_entries, 1);
} vip_miss_stats SEC(".maps");

/* vip_num, or max_vips + CNT_* -> lb_stats: per-VIP and global counters. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_stats);
	__uint(max_entries, DEFAULT_MAX_VIPS * 2);
} stats SEC(".maps");

/* 0 -> lb_quic_packets_stats: QUIC routing counters, per cpu. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_quic_packets_stats);
	__uint(max_entries, 1);
} quic_stats_map SEC(".maps");

/* 0 -> lb_stable_rt_packets_stats: UDP stable routing counters, per cpu. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_stable_rt_packets_stats);
	__uint(max_entries, 1);
} stable_rt_stats SEC(".maps");

/* 0 -> lb_tpr_packets_stats: TCP server-id routing counters, per cpu. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_tpr_packets_stats);
	__uint(max_entries, 1);
} tpr_stats_map SEC(".maps");

/* vip_num -> lb_stats: v1 new server-id-routed conns, v2 LRU mismatches. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_stats);
	__uint(max_entries, DEFAULT_MAX_VIPS);
} server_id_stats SEC(".maps");

/* vip_num -> lb_stats: v1 packets decapsulated (and passed) per inner VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_stats);
	__uint(max_entries, DEFAULT_MAX_VIPS);
} decap_vip_stats SEC(".maps");

/* server id (QUIC CID / TPR option / stable-rt CID) -> real index. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, MAX_QUIC_REALS);
} server_id_map SEC(".maps");

/* v4 source prefix -> real index: source routing (knob lpm_src_lookup). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct v4_lpm_key);
	__type(value, __u32);
	__uint(max_entries, DEFAULT_MAX_LPM_SRC);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lpm_src_v4 SEC(".maps");

/* v6 source prefix -> real index: source routing (knob lpm_src_lookup). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct v6_lpm_key);
	__type(value, __u32);
	__uint(max_entries, DEFAULT_MAX_LPM_SRC);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lpm_src_v6 SEC(".maps");

/* cpu id -> per-cpu global LRU (LRU_PERCPU_HASH flow_key -> real index). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_SUPPORTED_CPUS);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
		__type(key, struct flow_key);
		__type(value, __u32);
		__uint(max_entries, DEFAULT_LRU_SIZE);
	});
} global_lru_maps SEC(".maps");

/* flow_key -> real index: global LRU used when the cpu has none. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, __u32);
	__uint(max_entries, DEFAULT_GLOBAL_LRU_SIZE);
} fallback_glru SEC(".maps");

/* vip_definition -> (real index -> u8) map: reals of a VIP marked down. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, DEFAULT_MAX_VIPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vip_definition);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__type(key, __u32);
		__type(value, __u8);
		__uint(max_entries, DEFAULT_MAX_REALS);
		__uint(map_flags, BPF_F_NO_PREALLOC);
	});
} vip_to_down_reals_map SEC(".maps");

/* slot (0 = default gateway MAC) -> ctl_value: control data. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ctl_value);
	__uint(max_entries, CTL_MAP_SIZE);
} ctl_array SEC(".maps");

/*
 * cpu * FLOW_CACHE_SLOTS + slot (a hash of the flow) -> a flow recently found
 * in that cpu's connection table and its real. Not in Katran: lb_flow_cache.h.
 * An array, not a per-cpu one: the value is one load away (a per-cpu array
 * goes through a table of per-cpu pointers: ~5 % of an LRU hit). Sized at
 * load to the highest cpu with a connection table of its own; a cpu beyond
 * finds no slot and looks the connection table up.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct flow_cache_entry);
	__uint(max_entries, FLOW_CACHE_SLOTS);
} flow_cache SEC(".maps");

/*
 * Per cpu: 0 -> a bit per flow_cache slot, set when a connection-table entry
 * of a flow of that slot is written, cleared when the slot is filled; a set
 * bit keeps the slot from routing. A write marks 2 KiB that stay in cache,
 * not a line of the 1 MiB flow_cache (a new flow's slot is cold: ~90 ns).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct flow_cache_marks);
	__uint(max_entries, 1);
} flow_cache_stale SEC(".maps");

/*
 * Not in Katran: 0 -> this cpu's hot_stats, the global counters of every frame
 * (XDP total and verdicts) and of the IPv4 fast path (LRU total, flow-cache
 * hits) in one per-cpu value, found once a frame; added to the stats slots by
 * the control plane.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct hot_stats);
	__uint(max_entries, 1);
} hot_stats SEC(".maps");

/* VIP address -> number of VIPs (ports/protocols) on it: echo requests answered. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct address);
	__type(value, __u32);
	__uint(max_entries, DEFAULT_MAX_VIPS);
} vip_addrs SEC(".maps");

/* outer destination address -> flags: addresses we decapsulate and re-balance. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct address);
	__type(value, __u32);
	__uint(max_entries, DEFAULT_MAX_DECAP_DST);
} decap_dst SEC(".maps");

/* 0 -> balancer program: tail call target to re-run a decapsulated packet. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, SUBPROGRAMS_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} subprograms SEC(".maps");

/* 0 = v4, 1 = v6 -> real_definition: GUE outer source / host address. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct real_definition);
	__uint(max_entries, 2);
} pckt_srcs SEC(".maps");

#endif /* KATRAN_MAPS_H */
