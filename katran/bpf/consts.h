/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Constants of the balancer data plane: wire values, flag bits, counter
 * slots. Values that must match Katran's control plane / fixtures are noted.
 * Tunables that the control plane may change live in knobs.h, not here.
 */
#ifndef KATRAN_CONSTS_H
#define KATRAN_CONSTS_H

#include <linux/types.h>

#include "lib/addr.h" /* ETH_P_IP_BE, ETH_P_IPV6_BE, IPV4_FRAG_MASK_BE */

/* Internal "no verdict yet" return value of helpers (XDP verdicts are >= 0). */
#define LB_CONTINUE (-1)
#define LB_ECHO_REQUEST (-2) /* an ICMP/ICMPv6 echo request: answered only for VIP addresses */
#define LB_ROUTED (-3) /* a router chose pkt->real_index (an existing real) */

/*
 * A rarely taken path compiled as its own BPF-to-BPF function. Inlined, such
 * code shares the hot path's registers and clang spills around it even when
 * the verifier later removes it; out of line, the plain LRU hit stays tight.
 * Static (not global) so the verifier checks it with the caller's argument
 * values and drops it when a load-time knob makes the call unreachable.
 */
#define LB_OUT_OF_LINE static __attribute__((noinline))

#define IPV4_HDR_LEN 20
#define IPV4_VERSION_IHL5 0x45 /* first byte of an IPv4 header without options */

/* Default sizes; the real sizes are set per map at load time. */
#define DEFAULT_RING_SIZE 65537
#define DEFAULT_MAX_VIPS 512
#define DEFAULT_MAX_REALS 4096
#define DEFAULT_LRU_SIZE 1000
#define DEFAULT_GLOBAL_LRU_SIZE 10000
#define DEFAULT_MAX_DECAP_DST 6
#define DEFAULT_MAX_LPM_SRC 3000000
#define MAX_QUIC_REALS 0x00fffffe /* server ids use 24 bits */
#define MAX_SUPPORTED_CPUS 128
#define DEFAULT_CAPTURE_RING_SIZE (1 << 20) /* bytes */
#define CTL_MAP_SIZE 16
#define SUBPROGRAMS_SIZE 1
#define RECIRC_SLOT 0 /* our own position in the subprograms prog array */

#define NSEC_PER_SEC_U64 1000000000ULL

/* Flow cache (lb_flow_cache.h): 1 << FLOW_CACHE_BITS slots per cpu, and how
 * many jiffies (64 ms at HZ 1000 .. 640 ms at HZ 100) a slot routes packets
 * before the flow's connection-table entry is looked up (and refreshed) again. */
#define FLOW_CACHE_BITS 14
#define FLOW_CACHE_SLOTS (1 << FLOW_CACHE_BITS)
#define FLOW_CACHE_REFRESH_JIFFIES 64
/* ways of a flow_cache set: slots 4n .. 4n + 3, a flow's home slot one of them */
#define FLOW_CACHE_WAYS 4
/* the VIP filter (lb_flow_cache.h): 8 ctl_array words from CTL_VIP_FILTER */
#define VIP_FILTER_BITS_LOG 9
#define VIP_FILTER_WORDS ((1 << VIP_FILTER_BITS_LOG) / 64)
/* flow_cache_entry.fast: the flow may take the fast path (bit 31; vip_num below) */
#define FLOW_CACHE_FAST 0x80000000u
/* flow_cache_entry.filled bit 0: the way of its set filled last (replaced after the others);
 * bits 1-2: the way's use count (the second chance): 2 when it is filled and when it routes a
 * packet, one less each time its set keeps a newcomer out, replaceable at 0; the fill tick is
 * the rest (its low 3 bits dropped: a slot may refresh up to 7 jiffies early) */
#define FLOW_CACHE_LAST 1u
#define FLOW_CACHE_USE 6u      /* the use count's bits */
#define FLOW_CACHE_USE_ONE 2u  /* a count of 1 */
#define FLOW_CACHE_USE_MAX 4u  /* a count of 2 */
#define FLOW_CACHE_FILL_FLAGS (FLOW_CACHE_LAST | FLOW_CACHE_USE) /* the bits of filled not the tick */

/*
 * Values the control plane shares are C enums (not #defines) so that the
 * object's BTF carries their names: balancer.bpf.c exports them with
 * KATRAN_ABI_ENUM and katran/contract.py checks them.
 */

/* ctl_array slots */
enum ctl_slot {
	CTL_DEFAULT_MAC = 0,
	CTL_ANY_PORT_VIPS = 1, /* 1 + how many VIPs have port 0; 0: not known (not in Katran) */
	CTL_FLOW_CACHE_EPOCH = 2, /* flow cache generation (low 32 bits, 0: never written) and bit 32:
				   * switched off; either turns the cache off (not in Katran) */
	CTL_VIP_FILTER_DONE = 3,  /* 1: the VIP filter has the bit of every VIP with a port (the
				   * control plane sets a bit before the VIP is in vip_map, clears
				   * it after it is gone); else not known: not in Katran */
	CTL_VIP_FILTER = 8,       /* .. 15: the VIP filter, a bit per hash of a VIP with a port
				   * (vip_filter; 0: none, never written); not in Katran */
};

/* pckt_srcs slots (outer source addresses for GUE, host addresses) */
enum pckt_src_slot {
	PCKT_SRC_V4 = 0,
	PCKT_SRC_V6 = 1,
};

/* real_definition.flags (Katran's values) */
enum real_flag {
	REAL_F_IPV6 = 1 << 0,
	REAL_F_LOCAL = 1 << 1,
};

/* vip_meta.flags (Katran's values; katran.models.VipFlag) */
enum vip_flag {
	VIP_F_NO_SPORT = 1 << 0,
	VIP_F_LRU_BYPASS = 1 << 1,
	VIP_F_QUIC = 1 << 2,
	VIP_F_DPORT_HASH = 1 << 3,
	VIP_F_SRC_ROUTING = 1 << 4,
	VIP_F_LOCAL = 1 << 5,
	VIP_F_GLOBAL_LRU = 1 << 6,
	VIP_F_HASH_SRC_DST_PORT = 1 << 7,
	VIP_F_UDP_STABLE_RT = 1 << 8,
	VIP_F_UDP_FLOW_MIGRATION = 1 << 9,
};

/* pkt_meta.flags */
#define PKT_F_ICMP (1 << 0) /* flow was rebuilt from an ICMP error's quote */
#define PKT_F_SYN (1 << 1)
#define PKT_F_RST (1 << 2) /* a reset never creates a connection-table entry */

/* outer headers: TTL and IPIP source prefixes are in lib/hdr.h */
/* GUE v1: the top nibble of the inner packet tells v4 from v6 */
#define GUE_V6_MASK 0x30

/* ICMP too-big generation: size of the quoted original (with L2 header) */
#define ICMP4_TOOBIG_QUOTE 98
#define ICMP6_TOOBIG_QUOTE 262
/* PTB / frag-needed messages asking for less than this are counted apart */
#define PTB_SMALL_MTU 1280

/* QUIC (draft-22 invariants) and Katran's connection-id schema */
#define QUIC_LONG_HDR 0x80
#define QUIC_PKT_TYPE_MASK 0x30
#define QUIC_PKT_HANDSHAKE 0x20
#define QUIC_MIN_CID_LEN 8
#define QUIC_CID_V1 1
#define QUIC_CID_V2 2
#define QUIC_CID_V3 3

/* UDP stable routing header */
#define STABLE_RT_MARK 0x52
#define STABLE_RT_CID_LEN 8

/* TCP header option carrying a server id (TPR): lib/tcp_opt.h */

/* decap_dst value flags */
enum decap_dst_flag {
	DECAP_DST_F_EGRESS = 0x2,
};

/* LRU comparison results of server-id routing */
#define LRU_DST_MATCH 0
#define LRU_DST_MISMATCH 1
#define LRU_DST_ABSENT 2

/*
 * Global counters: slot max_vips + N of the `stats` map (Katran numbering;
 * Katran's names are in katran/contract.py GLOBAL_COUNTERS).
 */
enum lb_global_counter {
	CNT_LRU = 0,               /* v1 packets to VIPs, v2 LRU misses */
	CNT_LRU_MISS = 1,          /* v1 TCP SYN misses, v2 TCP non-SYN misses */
	CNT_NEW_CONN_RATE = 2,     /* v1 new conns in the window, v2 window start */
	CNT_FALLBACK_LRU = 3,      /* v1 packets that used fallback_cache */
	CNT_ICMP_TOOBIG = 4,       /* v1 v4, v2 v6 too-big replies/drops */
	CNT_LPM_SRC = 5,           /* v1 no match, v2 source-routed */
	CNT_REMOTE_ENCAP = 6,      /* v1 packets to a decap_dst address */
	CNT_ENCAP_FAIL = 7,        /* v1 v4, v2 v6 encapsulation failures */
	CNT_GLOBAL_LRU = 8,        /* v1 no per-cpu global lru, v2 routed by it */
	CNT_CH_DROP = 9,           /* v1 real index invalid, v2 ring slot is 0 */
	CNT_DECAP = 10,            /* v1 outer v4, v2 outer v6 decapsulated */
	CNT_QUIC_ICMP = 11,        /* v1 ICMP to QUIC VIPs, v2 ignorable ones */
	CNT_ICMP_PTB_V6 = 12,      /* v1 all, v2 mtu < 1280 */
	CNT_ICMP_PTB_V4 = 13,      /* v1 all, v2 mtu < 1280 */
	CNT_XPOP_DECAP = 14,       /* v1 inner v4, v2 inner v6 recirculated */
	CNT_UDP_FLOW_MIG = 15,     /* v1 LRU entries dropped for a down real */
	CNT_XDP_TOTAL = 16,        /* v1 packets, v2 bytes seen */
	CNT_XDP_TX = 17,
	CNT_XDP_DROP = 18,
	CNT_XDP_PASS = 19,
	CNT_EGRESS_DECAP = 20,     /* v1 inner v4, v2 inner v6 (decap + TX) */
	CNT_MALFORMED = 21,        /* not in Katran: dropped to a VIP, v1 bad IP length, v2 martian source */
	CNT_FLOW_CACHE = 22,       /* not in Katran: v1 flow-cache hits, v2 slots filled */
};
#define GLOBAL_COUNTERS (CNT_FLOW_CACHE + 1) /* hot_stats holds a pair for each */

/* capture_filter.flags: which filter fields apply (katran/capture.py) */
enum capture_flag {
	CAPTURE_F_VIP = 1 << 0,
	CAPTURE_F_REAL = 1 << 1,
	CAPTURE_F_SRC_V4 = 1 << 2,
	CAPTURE_F_SRC_V6 = 1 << 3,
};

/* capture_hdr.direction */
enum capture_direction {
	CAPTURE_DIR_IN = 0,  /* as the balancer received it */
	CAPTURE_DIR_OUT = 1, /* as the balancer sends it (encapsulated) */
};

#endif /* KATRAN_CONSTS_H */
