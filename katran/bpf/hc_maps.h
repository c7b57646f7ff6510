/* Healthcheck forwarding: maps (sizes may be changed by the loader). */
#ifndef KATRAN_HC_MAPS_H
#define KATRAN_HC_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "hc_structs.h"

/* hc_ctrl_map slots: ifindexes (C enums: BTF carries them to katran/contract.py) */
enum hc_ctrl_slot {
	HC_CTRL_V4_TUN = 1,
	HC_CTRL_V6_TUN = 2,
	HC_CTRL_MAIN_INTF = 3,
};
/* hc_pckt_srcs_map slots */
enum hc_src_slot {
	HC_SRC_V4 = 0,
	HC_SRC_V6 = 1,
};
/* hc_pckt_macs slots */
enum hc_mac_slot {
	HC_MAC_SRC = 0,
	HC_MAC_DST = 1,
};

/* ifindexes: 1 = v4 tunnel, 2 = v6 tunnel, 3 = interface probes leave by */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 4);
} hc_ctrl_map SEC(".maps");

/* socket mark (somark) -> real the probe is encapsulated toward */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct hc_real_definition);
	__uint(max_entries, 4096);
} hc_reals_map SEC(".maps");

/* outer source addresses: 0 = v4, 1 = v6 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct hc_real_definition);
	__uint(max_entries, 2);
} hc_pckt_srcs_map SEC(".maps");

/* ethernet addresses of encapsulated probes: 0 = source, 1 = destination (gateway) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct hc_mac);
	__uint(max_entries, 2);
} hc_pckt_macs SEC(".maps");

/* program counters, slot 0 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct hc_stats);
	__uint(max_entries, 1);
} hc_stats_map SEC(".maps");

#endif
