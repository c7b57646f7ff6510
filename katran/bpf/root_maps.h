/* Root XDP program for shared mode: the program array. */
#ifndef KATRAN_ROOT_MAPS_H
#define KATRAN_ROOT_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* upper bound of root_slots, so the verifier sees a bounded loop (a C enum:
 * BTF carries it to katran/contract.py; katran.shared.MAX_SLOTS follows it) */
enum root_limit {
	ROOT_MAX_SLOTS = 32,
};

/* slot -> XDP program, tried in slot order; max_entries is set at load */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 3);
} root_array SEC(".maps");

#endif
