/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Structures shared between the data plane and the control plane.
 * This header is the source of truth for katran/structs.py; the layouts are
 * Katran's (same sizes, offsets and padding), so maps stay interchangeable.
 * Every key struct must be zeroed before it is filled (padding is hashed).
 */
#ifndef KATRAN_STRUCTS_H
#define KATRAN_STRUCTS_H

#include <linux/types.h>

/* 5-tuple of a flow; key of the connection tables (40 bytes). */
struct flow_key {
	union {
		__be32 src;
		__be32 srcv6[4];
	};
	union {
		__be32 dst;
		__be32 dstv6[4];
	};
	union {
		__u32 ports;     /* both ports, wire order: sport then dport */
		__u16 port16[2]; /* [0] source port, [1] destination port */
	};
	__u8 proto;
};

/* ctl_array value: a MAC address (slot 0) or another scalar (8 bytes). */
struct ctl_value {
	union {
		__u64 value;
		__u32 ifindex;
		__u8 mac[6];
	};
};

/* vip_map key: address, port (network order) and L4 protocol (20 bytes). */
struct vip_definition {
	union {
		__be32 vip;
		__be32 vipv6[4];
	};
	__u16 port;
	__u8 proto;
};

/* vip_map value (8 bytes). */
struct vip_meta {
	__u32 flags;
	__u32 vip_num;
};

/* Connection table value: chosen real and last-seen time for UDP (16 bytes). */
struct real_pos_lru {
	__u32 pos;
	__u64 atime;
};

/*
 * flow_cache value (not in Katran; lb_flow_cache.h): a flow whose
 * connection-table entry was found a moment ago (64 bytes, one cache line).
 */
struct flow_cache_entry {
	struct flow_key key;
	__u32 real_index; /* the connection-table entry's pos */
	__u32 epoch;      /* ctl_array[CTL_FLOW_CACHE_EPOCH] when filled; 0: empty */
	__u32 filled;     /* bpf_jiffies64() (low 32 bits) of the lookup that filled the slot;
			   * bit 0 set: the way of its set filled last (FLOW_CACHE_LAST);
			   * bits 1-2: the use count, 0 .. 2 (FLOW_CACHE_USE, the second
			   * chance); the tick's low 3 bits are dropped */
	__u32 fast;       /* FLOW_CACHE_FAST | the VIP's vip_num: forward_cached() may route
			   * the flow without the VIP lookup; 0: only the connection-table step.
			   * (A build before it kept 64-bit jiffies here: their high word never
			   * has bit 31 set, so its slots are never fast.) */
	__u64 seen;       /* UDP: conn_now() of the flow's last packet */
};

/* flow_cache_stale value: one bit per flow_cache slot (2 KiB, hot in cache). */
struct flow_cache_marks {
	__u64 stale[256]; /* FLOW_CACHE_SLOTS / 64 */
};

/* reals value: the real's address and REAL_F_* flags (20 bytes). */
struct real_definition {
	union {
		__be32 dst;
		__be32 dstv6[4];
	};
	__u8 flags;
};

/* Generic pair of counters (packets/bytes or two event kinds). */
struct lb_stats {
	__u64 v1;
	__u64 v2;
};

/*
 * hot_stats value (not in Katran): this cpu's share of every global counter,
 * indexed by enum lb_global_counter, that the per-packet path counts with one
 * lookup a frame (the XDP verdicts; the fast path's LRU and flow-cache hits).
 * A global counter is its stats slot plus this pair (katran/dataplane.py).
 */
struct hot_stats {
	struct lb_stats c[GLOBAL_COUNTERS];
};

/* LPM trie keys for source routing. */
struct v4_lpm_key {
	__u32 prefixlen;
	__be32 addr;
};

struct v6_lpm_key {
	__u32 prefixlen;
	__be32 addr[4];
};

/* decap_dst key: a v4 or v6 address (16 bytes, v4 in the first word). */
struct address {
	union {
		__be32 addr;
		__be32 addrv6[4];
	};
};

/* quic_stats_map value */
struct lb_quic_packets_stats {
	__u64 ch_routed;
	__u64 cid_initial;
	__u64 cid_invalid_server_id;
	__u64 cid_invalid_server_id_sample;
	__u64 cid_routed;
	__u64 cid_unknown_real_dropped;
	__u64 cid_v0;
	__u64 cid_v1;
	__u64 cid_v2;
	__u64 cid_v3;
	__u64 dst_match_in_lru;
	__u64 dst_mismatch_in_lru;
	__u64 dst_not_found_in_lru;
};

/* tpr_stats_map value */
struct lb_tpr_packets_stats {
	__u64 ch_routed;
	__u64 dst_mismatch_in_lru;
	__u64 sid_routed;
	__u64 tcp_syn;
};

/* stable_rt_stats value */
struct lb_stable_rt_packets_stats {
	__u64 ch_routed;
	__u64 cid_routed;
	__u64 cid_invalid_server_id;
	__u64 cid_unknown_real_dropped;
	__u64 invalid_packet_type;
};

/* Data-plane only: what the balancer knows about the packet being handled. */
struct pkt_meta {
	struct flow_key flow;
	__u32 real_index;
	__u8 flags; /* PKT_F_* */
	__u8 tos;   /* IPv4 ToS or IPv6 traffic class of the client packet */
};

#define CAPTURE_MAX_SNAPLEN 4096 /* bytes of a frame a capture record keeps at most */

/* The capture filter (global capture_filter, .bss): set by user space. */
struct capture_filter {
	__u32 enabled;    /* 0: no capture (the only word the fast path reads) */
	__u32 flags;      /* CAPTURE_F_*: which of the fields below apply */
	__u32 vip_num;    /* CAPTURE_F_VIP: the VIP's number */
	__u32 real_index; /* CAPTURE_F_REAL: the real's index */
	__u32 snaplen;    /* bytes kept of each frame (at most CAPTURE_MAX_SNAPLEN) */
	__be32 src[4];    /* CAPTURE_F_SRC_V4/V6: source prefix, already masked */
	__be32 src_mask[4];
};

/* Head of a capture_ring record; cap_len frame bytes follow. */
struct capture_hdr {
	__u64 tstamp_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u32 ifindex;   /* interface the frame came in on (and leaves by, XDP_TX) */
	__u32 orig_len;  /* frame length */
	__u32 cap_len;   /* bytes captured */
	__u8 direction;  /* CAPTURE_DIR_IN / CAPTURE_DIR_OUT */
	__u8 pad[3];
};

struct capture_record {
	struct capture_hdr hdr;
	__u8 data[CAPTURE_MAX_SNAPLEN];
};

#endif /* KATRAN_STRUCTS_H */
