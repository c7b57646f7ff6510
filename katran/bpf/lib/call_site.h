/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One map per helper call site. The verifier inlines a map lookup (or calls
 * the map's update directly) only at a call site that sees one map; a call
 * site reached with two maps keeps the generic helper, an indirect call
 * behind a retpoline on this kind of CPU (~20-60 ns a packet for the
 * connection table). Codegen merges calls that differ only in their
 * arguments into one call site (tail merging: `m = a ? &x : &y; lookup(m)`),
 * so where two maps are looked up on two paths, the second path calls these:
 * the same helpers declared with one more, ignored, argument. A call of
 * another shape is never merged. tests/test_bpf_xlated.py checks the loaded
 * balancer for generic lookups.
 */
#ifndef KATRAN_LIB_CALL_SITE_H
#define KATRAN_LIB_CALL_SITE_H

#include <linux/types.h>
#include <linux/bpf.h>

static void *(*const bpf_map_lookup_elem_apart)(void *map, const void *key, __u64 unused) =
	(void *)BPF_FUNC_map_lookup_elem;
static long (*const bpf_map_update_elem_apart)(void *map, const void *key, const void *value,
					       __u64 flags, __u64 unused) =
	(void *)BPF_FUNC_map_update_elem;

#endif /* KATRAN_LIB_CALL_SITE_H */
