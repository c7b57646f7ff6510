/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Flow cache (not in Katran): a four-way set-associative table per cpu
 * (flow_cache) in front of this cpu's connection table. A flow whose
 * connection-table entry was found a moment ago is routed from its slot: one
 * inlined array lookup and a 40-byte compare instead of an LRU hash lookup
 * (~26 ns here).
 *
 * Sets: slots 4n .. 4n + 3 (FLOW_CACHE_WAYS adjacent cache lines). A flow's
 * hash names its home slot, looked at first (the hit path reads one line);
 * then, out of line, slot ^ 1, slot ^ 2, slot ^ 3. A flow in none is filled
 * into the first way that does not route (empty, an older epoch, stale or past
 * its refresh), home first. With every way routing, a second chance (CLOCK
 * with two chances): each slot has a use count (bits 1-2 of `filled`,
 * FLOW_CACHE_USE, on the line a hit reads anyway), set to 2 when the slot is
 * filled and when it routes a packet. A newcomer that finds no way at 0 takes
 * one from each and is not filled (the connection table serves it); one that
 * finds ways at 0 replaces the first of them from home that was not filled
 * last (bit 0 of `filled`, FLOW_CACHE_LAST, marks the way of its set filled
 * last), that one only when it alone is at 0.
 * So up to six flows of one set sent in turn keep four in the cache instead of
 * evicting each other on every packet (with one chance, six kept none), and a
 * way whose flow stopped sending goes to a newcomer's third packet. A
 * direct-mapped table of the same size lost a quarter of 10,000 flows to slot
 * collisions; with hashed clients two ways with one chance miss 20.6 % of the
 * frames, four ways 10.2 %, with two chances 7.5 % (benchmarks/README.md).
 *
 * The slot mirrors the connection table, never more:
 * - it is filled only from a connection-table hit, with that entry's real;
 * - every data-plane write of a connection-table entry (conn_update,
 *   lru_sync) marks every slot of its flow's set stale (flow_cache_stale)
 *   until each is filled again;
 * - the control plane bumps ctl_array[CTL_FLOW_CACHE_EPOCH] after it deletes
 *   connection-table entries, at start and when it switches the cache on,
 *   which empties every slot at once; 0 (never written: another control
 *   plane, or one that does not keep the epoch) or bit 32 (switched off; the
 *   epoch keeps counting, so slots from before are dead when it is back on)
 *   turns the cache off;
 * - a slot routes for FLOW_CACHE_REFRESH_JIFFIES, then the entry is looked up
 *   again, which keeps it recent in its LRU;
 * - UDP: the slot keeps the flow's last-seen time, checks the idle timeout
 *   against it and hands it to the entry when it is looked up again, so
 *   ageing is Katran's to the clock tick.
 * Only for cpus with their own connection table (not fallback_cache, which
 * cpus share) and only where the connection table would be looked up.
 *
 * A slot of a flow whose VIP may be skipped (see balance_flow) is "fast": it
 * keeps the VIP's vip_num, and forward_cached() (lb_pipeline.h) routes the
 * flow's next packets from it before any VIP lookup; the control plane makes a
 * new epoch when a VIP is deleted or its flags change. The VIP filter, a bit
 * per VIP with a port, keeps packets to no VIP away from the slots' cold lines.
 * Uses maps.h.
 */
#ifndef KATRAN_LB_FLOW_CACHE_H
#define KATRAN_LB_FLOW_CACHE_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"

/* The current epoch; 0: the cache is off (never written, or switched off:
 * bit 32, which keeps the epoch counting while off). */
static __always_inline __u32 flow_cache_epoch(void)
{
	__u32 key = CTL_FLOW_CACHE_EPOCH;
	struct ctl_value *v = bpf_map_lookup_elem(&ctl_array, &key);

	if (!v || (v->value >> 32))
		return 0;
	return (__u32)v->value;
}

_Static_assert(sizeof(struct flow_cache_marks) * 8 == FLOW_CACHE_SLOTS, "a stale bit per slot");

/* The home slot of the flow whose key words XOR to h (multiplicative hash). */
static __always_inline __u32 flow_cache_slot_of(__u32 h)
{
	return (h * 0x9e3779b1u) >> (32 - FLOW_CACHE_BITS);
}

/* The home slot of a flow: the hash of the XOR of its 5-tuple words (an IPv4
 * flow's: saddr ^ daddr ^ ports ^ proto, the other words being zero). */
static __always_inline __u32 flow_cache_index(const struct flow_key *k)
{
	__u32 h = k->srcv6[0] ^ k->srcv6[1] ^ k->srcv6[2] ^ k->srcv6[3];

	h ^= k->dstv6[0] ^ k->dstv6[1] ^ k->dstv6[2] ^ k->dstv6[3];
	h ^= k->ports ^ k->proto;
	return flow_cache_slot_of(h);
}

/* This cpu's word of flow_cache_stale holding the bit of `slot`. */
static __always_inline __u64 *flow_cache_stale_word(__u32 slot)
{
	__u32 zero = 0;
	struct flow_cache_marks *marks = bpf_map_lookup_elem(&flow_cache_stale, &zero);

	if (!marks)
		return NULL;
	return &marks->stale[(slot >> 6) & (FLOW_CACHE_SLOTS / 64 - 1)];
}

static __always_inline __u64 flow_cache_bit(__u32 slot)
{
	return 1ULL << (slot & 63);
}

/* This cpu's entry of `slot` (NULL: the cpu is beyond the table). */
static __always_inline struct flow_cache_entry *flow_cache_at(__u32 slot)
{
	__u32 key = bpf_get_smp_processor_id() * FLOW_CACHE_SLOTS + slot;

	return bpf_map_lookup_elem(&flow_cache, &key);
}

/* Same flow (flow keys are zeroed before they are filled: padding compares). */
static __always_inline bool flow_key_same(const struct flow_key *a, const struct flow_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4]));
}

/* Is `a` the key of the IPv4 flow (saddr, daddr, the ports word as on the wire,
 * proto)? Its words: saddr, 0, daddr, 0, ports | proto << 32 (padding zero). */
_Static_assert(sizeof(struct flow_key) == 40, "five 64-bit words");
static __always_inline bool flow_key_is_v4(const struct flow_key *a, __be32 saddr, __be32 daddr,
					   __u32 ports, __u8 proto)
{
	const __u64 *x = (const __u64 *)a;

	return !((x[0] ^ saddr) | x[1] | (x[2] ^ daddr) | x[3] |
		 (x[4] ^ (ports | ((__u64)proto << 32))));
}

/* The slots of the set of `slot` (their bits are neighbours in one word). */
static __always_inline __u64 flow_cache_set_bits(__u32 slot)
{
	return ((1ULL << FLOW_CACHE_WAYS) - 1) << (slot & (64 - FLOW_CACHE_WAYS));
}

/*
 * A connection-table entry of this flow is written: no slot of its set may
 * route it (the flow may be in any; the other ways' flows are looked up again
 * once, which is cheaper than reading the set's lines to find out).
 */
static __always_inline void flow_cache_forget(const struct flow_key *k)
{
	__u32 slot = flow_cache_index(k);
	__u64 *stale = flow_cache_stale_word(slot);

	if (stale)
		*stale |= flow_cache_set_bits(slot);
}

_Static_assert(CTL_VIP_FILTER + VIP_FILTER_WORDS <= CTL_MAP_SIZE, "the VIP filter fits ctl_array");

/* What the VIP filter says of a flow's destination, port and protocol. */
#define VIP_FILTER_CLEAR 0 /* no bit, and the filter is not known complete: look it up */
#define VIP_FILTER_SET 1   /* its bit is set: it may be a VIP with a port */
#define VIP_FILTER_NONE 2  /* no bit, and the filter is complete: no VIP has that port */

/*
 * The flow's bit in the VIP filter: 512 bits in ctl_array[CTL_VIP_FILTER ..],
 * a bit per hash of the address, port and protocol of each VIP with a port
 * (katran/structs.py vip_filter_bit mirrors the hash). The control plane sets
 * a VIP's bit before the VIP is in vip_map and clears it after the VIP is gone,
 * and says so in ctl_array[CTL_VIP_FILTER_DONE] (1) once the filter is whole
 * (cleared before a hitless upgrade, so a build that kept no filter never
 * leaves it claimed). Set: the fast path may look the flow's flow-cache slot
 * up (a packet to no VIP does not read a cold line of the 1 MiB flow_cache).
 * NONE: balance_flow skips the vip_map lookup with the packet's own port.
 */
static __always_inline int vip_filter_of(__u32 dst_words, __u16 dport, __u8 proto)
{
	struct ctl_value *v;
	__u32 h, key;

	h = dst_words ^ ((__u32)dport << 8) ^ proto;
	h = (h * 0x9e3779b1u) >> (32 - VIP_FILTER_BITS_LOG);
	key = CTL_VIP_FILTER + ((h >> 6) & (VIP_FILTER_WORDS - 1));
	v = bpf_map_lookup_elem(&ctl_array, &key);
	if (v && (v->value & (1ULL << (h & 63))))
		return VIP_FILTER_SET;
	key = CTL_VIP_FILTER_DONE;
	v = bpf_map_lookup_elem(&ctl_array, &key);
	return v && v->value == 1 ? VIP_FILTER_NONE : VIP_FILTER_CLEAR;
}

/* vip_filter_of the flow's destination words (XORed), port and protocol. */
static __always_inline int vip_filter(const struct flow_key *k)
{
	return vip_filter_of(k->dstv6[0] ^ k->dstv6[1] ^ k->dstv6[2] ^ k->dstv6[3], k->port16[1],
			     k->proto);
}

/* A flow's slot, looked up once a packet (flow_cache_find). */
struct flow_cache_ref {
	struct flow_cache_entry *fc; /* the way holding the flow (held), else the way to fill;
				      * NULL: the cache is off, no slot for this cpu, or every
				      * way keeps its flow (FLOW_CACHE_KEEP_ALL) */
	__u64 *stale;                /* this cpu's stale word of the set */
	__u32 slot;                  /* fc's slot */
	__u32 epoch;                 /* the current epoch (0: off) */
	bool held;                   /* fc holds the flow, filled in this epoch (it may still be
				      * stale or past its refresh: flow_cache_live) */
	bool found;                  /* the fields are the slot of the packet's flow as it is */
};

/* Does the slot hold this flow, filled in this epoch? */
static __always_inline bool flow_cache_holds(const struct flow_cache_entry *fc,
					     const struct flow_key *k, __u32 epoch)
{
	return fc->epoch == epoch && flow_key_same(&fc->key, k);
}

/* Does a slot that holds its flow route it (not stale, fresh)? */
static __always_inline bool flow_cache_live(const struct flow_cache_entry *fc, const __u64 *stale,
					    __u32 slot)
{
	return !(*stale & flow_cache_bit(slot)) &&
	       (__u32)bpf_jiffies64() - (fc->filled & ~FLOW_CACHE_FILL_FLAGS) < FLOW_CACHE_REFRESH_JIFFIES;
}

/* The slot routed a packet: its use count back to 2 (written only when it was lower). */
static __always_inline void flow_cache_touch(struct flow_cache_entry *fc)
{
	if ((fc->filled & FLOW_CACHE_USE) != FLOW_CACHE_USE_MAX)
		fc->filled = (fc->filled & ~FLOW_CACHE_USE) | FLOW_CACHE_USE_MAX;
}

/* Does the slot route some flow (this epoch, not stale, fresh)? */
static __always_inline bool flow_cache_busy(const struct flow_cache_entry *fc, const __u64 *stale,
					    __u32 slot, __u32 epoch)
{
	return fc->epoch == epoch && flow_cache_live(fc, stale, slot);
}

/* flow_cache_other_way's answers: the kind, and in bits 2-3 the way (its slot: slot ^ way) */
#define FLOW_CACHE_FILL 0     /* fill that way */
#define FLOW_CACHE_HELD 1     /* that way holds the flow */
#define FLOW_CACHE_KEEP_ALL 2 /* every way routes and its use count is above 0: fill none */
#define FLOW_CACHE_ANSWER(kind, way) ((kind) | ((way) << 2))
#define FLOW_CACHE_ANSWER_KIND(answer) ((answer) & 3)
#define FLOW_CACHE_ANSWER_WAY(answer) (((answer) >> 2) & 3)

/*
 * The home slot (`home`, of `slot`) does not hold the flow: which other way of
 * the set does (slot ^ 1, then slot ^ 2, slot ^ 3), else which way to fill, in
 * that order from home: the first that does not route; else the first whose
 * use count is 0 (the second chance) that was not filled last, the one filled
 * last only when it alone is at 0; none when no count is 0 (each count is
 * taken one from). Out of line: only a flow that is not in its home slot comes
 * here, and the hit path stays short.
 */
_Static_assert(FLOW_CACHE_WAYS >= 2 && FLOW_CACHE_WAYS <= 4, "a way fits bits 2-3 of an answer");
LB_OUT_OF_LINE int flow_cache_other_way(const struct flow_key *k, __u32 slot, __u32 epoch,
					const __u64 *stale, struct flow_cache_entry *home)
{
	struct flow_cache_entry *w[FLOW_CACHE_WAYS];
	int i;

	w[0] = home;
#pragma unroll
	for (i = 1; i < FLOW_CACHE_WAYS; i++) {
		w[i] = flow_cache_at(slot ^ i);
		if (!w[i])
			return FLOW_CACHE_ANSWER(FLOW_CACHE_FILL, 0);
	}
#pragma unroll
	for (i = 1; i < FLOW_CACHE_WAYS; i++)
		if (flow_cache_holds(w[i], k, epoch))
			return FLOW_CACHE_ANSWER(FLOW_CACHE_HELD, i);
#pragma unroll
	for (i = 0; i < FLOW_CACHE_WAYS; i++)
		if (!flow_cache_busy(w[i], stale, slot ^ i, epoch))
			return FLOW_CACHE_ANSWER(FLOW_CACHE_FILL, i);
	/* every way routes: the first at 0 and not filled last, else (only the way filled
	 * last can then be at 0) the first at 0 */
#pragma unroll
	for (i = 0; i < FLOW_CACHE_WAYS; i++)
		if (!(w[i]->filled & FLOW_CACHE_FILL_FLAGS))
			return FLOW_CACHE_ANSWER(FLOW_CACHE_FILL, i);
#pragma unroll
	for (i = 0; i < FLOW_CACHE_WAYS; i++)
		if (!(w[i]->filled & FLOW_CACHE_USE))
			return FLOW_CACHE_ANSWER(FLOW_CACHE_FILL, i);
#pragma unroll
	for (i = 0; i < FLOW_CACHE_WAYS; i++)
		w[i]->filled -= FLOW_CACHE_USE_ONE; /* every count is 1 or 2 here */
	return FLOW_CACHE_ANSWER(FLOW_CACHE_KEEP_ALL, 0);
}

/*
 * flow_cache_find for a flow its home slot (`home`, of `slot`, looked up in
 * `epoch` with stale word `stale`) does not hold: the other way that holds it,
 * or the way to fill.
 */
static __always_inline void flow_cache_find_other(const struct flow_key *k, struct flow_cache_ref *ref,
						  struct flow_cache_entry *home, __u32 slot, __u32 epoch,
						  __u64 *stale)
{
	struct flow_cache_entry *other;
	int answer, way;

	ref->fc = home;
	ref->slot = slot;
	ref->epoch = epoch;
	ref->stale = stale;
	ref->held = false;
	ref->found = true;
	answer = flow_cache_other_way(k, slot, epoch, stale, home);
	if (FLOW_CACHE_ANSWER_KIND(answer) == FLOW_CACHE_KEEP_ALL) {
		ref->fc = NULL; /* the connection table serves it; no slot is filled */
		return;
	}
	way = FLOW_CACHE_ANSWER_WAY(answer);
	if (!way)
		return;
	other = flow_cache_at(slot ^ way);
	if (!other)
		return;
	ref->fc = other;
	ref->slot = slot ^ way;
	ref->held = FLOW_CACHE_ANSWER_KIND(answer) == FLOW_CACHE_HELD;
}

static __always_inline void flow_cache_find(const struct flow_key *k, struct flow_cache_ref *ref)
{
	struct flow_cache_entry *home;
	__u32 slot;

	ref->fc = NULL;
	ref->held = false;
	ref->found = true;
	ref->epoch = flow_cache_epoch();
	if (!ref->epoch)
		return;
	slot = flow_cache_index(k);
	ref->stale = flow_cache_stale_word(slot);
	if (!ref->stale)
		return;
	home = flow_cache_at(slot);
	if (!home)
		return;
	if (flow_cache_holds(home, k, ref->epoch)) {
		ref->fc = home;
		ref->slot = slot;
		ref->held = true;
		return;
	}
	flow_cache_find_other(k, ref, home, slot, ref->epoch, ref->stale);
}

/*
 * Remember a connection-table hit in ref's slot (real pkt->real_index, UDP last
 * seen `seen`); fast: FLOW_CACHE_FAST | vip_num when forward_cached() may route
 * the flow. The slot becomes its set's last filled way (the others' bit is
 * cleared where set: fills are rare, and their lines were just read), its use
 * count 2.
 */
static __always_inline void flow_cache_fill(const struct flow_cache_ref *ref,
					    const struct pkt_meta *pkt, __u64 seen, __u32 fast)
{
	struct flow_cache_entry *fc = ref->fc, *o;
	int i;

	__builtin_memcpy(&fc->key, &pkt->flow, sizeof(fc->key));
	fc->real_index = pkt->real_index;
	fc->filled = ((__u32)bpf_jiffies64() & ~FLOW_CACHE_FILL_FLAGS) | FLOW_CACHE_LAST | FLOW_CACHE_USE_MAX;
	fc->fast = fast;
	fc->seen = seen;
	fc->epoch = ref->epoch;
	*ref->stale &= ~flow_cache_bit(ref->slot);
#pragma unroll
	for (i = 1; i < FLOW_CACHE_WAYS; i++) {
		o = flow_cache_at(ref->slot ^ i);
		if (o && (o->filled & FLOW_CACHE_LAST))
			o->filled &= ~FLOW_CACHE_LAST;
	}
}

#endif /* KATRAN_LB_FLOW_CACHE_H */
