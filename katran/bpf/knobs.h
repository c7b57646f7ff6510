/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Load-time knobs of the balancer: `const volatile` globals placed in
 * .rodata. The control plane writes them before load
 * (ObjectSpec.set_rodata(name, bytes)); once the map is frozen the verifier
 * treats them as constants and prunes the code of disabled features.
 * Include from balancer.bpf.c only (each object owns its own knobs).
 *
 * Feature switches are __u32 0/1 and all default to off.
 */
#ifndef KATRAN_KNOBS_H
#define KATRAN_KNOBS_H

#include <linux/types.h>

/* --- sizes and limits ---------------------------------------------------- */

/* CH ring size per VIP; ch_rings index is vip_num * ring_size + slot. */
const volatile __u32 ring_size = 65537;
/* VIP count: stats base for global counters; jhash seeds derive from it. */
const volatile __u32 max_vips = 512;
/* Idle time after which a UDP connection-table entry is ignored. */
const volatile __u64 lru_udp_timeout_ns = 30000000000ULL;
/* Frames to a VIP longer than this are dropped (or answered, see below). */
const volatile __u32 max_pckt_size = 1514;
/* New connections per second per cpu beyond which the LRU is not updated. */
const volatile __u32 max_conn_rate = 125000;

/* --- encapsulation -------------------------------------------------------- */

/* 1: encapsulate in GUE (UDP) instead of IPIP/IP6IP6; sources from pckt_srcs. */
const volatile __u32 gue_encap = 0;
/* UDP destination port of GUE packets (encap and inline decap). */
const volatile __u16 gue_dport = 6080;

/* --- routing features ----------------------------------------------------- */

/* 1: TCP server-id routing (TPR): server id from TCP option 0xB7. */
const volatile __u32 tcp_server_id_routing = 0;
/* 1: UDP stable routing for VIPs with flag UDP_STABLE_ROUTING_VIP. */
const volatile __u32 udp_stable_routing = 0;
/* 1: source-prefix routing (lpm_src_v4/v6) for VIPs with flag SRC_ROUTING. */
const volatile __u32 lpm_src_lookup = 0;
/* 1: global LRU lookup (global_lru_maps) for VIPs with flag GLOBAL_LRU. */
const volatile __u32 global_lru = 0;
/* 1: pass packets of LOCAL_VIP VIPs picked to a LOCAL_REAL real. */
const volatile __u32 local_delivery = 0;
/* 1: answer oversized frames with ICMP frag-needed / packet-too-big. */
const volatile __u32 icmp_toobig_generation = 0;

/* --- inline decapsulation ------------------------------------------------- */

/* 1: decapsulate IPIP / IP6IP6 / IPv4-in-IPv6 packets. */
const volatile __u32 inline_decap_ipip = 0;
/* 1: decapsulate GUE packets sent to gue_dport. */
const volatile __u32 inline_decap_gue = 0;
/* 1: a tunnelled packet whose outer destination is not in decap_dst is only
 * decapsulated (and passed) when that destination is the host address in
 * pckt_srcs; otherwise it is passed untouched. */
const volatile __u32 decap_strict_destination = 0;

#endif /* KATRAN_KNOBS_H */
