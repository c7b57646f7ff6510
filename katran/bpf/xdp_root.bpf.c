// SPDX-License-Identifier: GPL-2.0
/*
 * Root XDP program for shared mode: tail-call the programs registered in
 * root_array in slot order. An empty slot makes the tail call fail, so the next
 * slot is tried; a program that returns ends the chain. Nothing took the packet:
 * XDP_PASS.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "root_maps.h"
#include "lib/abi.h"

KATRAN_ABI_ENUM(root_limit);

/* load-time knob: slots to try (root_array's max_entries, <= ROOT_MAX_SLOTS) */
const volatile __u32 root_slots = 3;

SEC("xdp")
int xdp_root(struct xdp_md *ctx)
{
	for (__u32 slot = 0; slot < ROOT_MAX_SLOTS; slot++) {
		if (slot >= root_slots)
			break;
		bpf_tail_call(ctx, &root_array, slot);
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
