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

/*
 * Version marker (the model: xdp-tools' dispatcher config in .rodata). A loader
 * reads both from the attached program's .rodata and refuses a root whose magic
 * differs (not ours) or whose version it does not speak. Bump root_version when
 * the slot protocol changes (see docs/shared-mode.md); never set them at load.
 */
const volatile __u32 root_magic = 0x4b524f4f; /* "KROO" */
const volatile __u32 root_version = 1;

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
