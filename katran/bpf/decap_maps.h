/* Decap for the real servers: maps. */
#ifndef KATRAN_DECAP_MAPS_H
#define KATRAN_DECAP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "decap_structs.h"

/* decap_host_addrs slots (a C enum: BTF carries it to katran/contract.py) */
enum decap_host_slot {
	DECAP_HOST_V4 = 0,
	DECAP_HOST_V6 = 1,
};

/* counters, slot 0 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct decap_stats);
	__uint(max_entries, 1);
} decap_counters SEC(".maps");

/* slot 0: this host's TPR server id (0 = no TPR accounting) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} tpr_server_id SEC(".maps");

/* strict-destination mode: outer destination must be 0 = v4 / 1 = v6 address */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct decap_host_addr);
	__uint(max_entries, 2);
} decap_host_addrs SEC(".maps");

#endif
