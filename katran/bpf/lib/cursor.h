/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Bounds-checked packet access, the only way our programs read a header.
 *
 * pkt_ptr():  `len` bytes at offset `off` of the frame (random access by
 *             offset; the balancer computes offsets from what it parsed).
 * cursor:     a read position that advances header by header (sequential
 *             parsing; the decap program walks outer -> inner this way).
 * Both return NULL when the bytes are not all inside [data, data_end), so the
 * verifier sees one check per access. Usable from XDP and tc (pass the
 * context's data / data_end). Part of the helper library: no maps, no knobs.
 */
#ifndef KATRAN_LIB_CURSOR_H
#define KATRAN_LIB_CURSOR_H

#include <linux/types.h>

static __always_inline void *pkt_ptr(void *data, void *data_end, __u64 off, __u64 len)
{
	void *p = data + off;

	if (p + len > data_end)
		return NULL;
	return p;
}

/* a read position inside [pos, end) */
struct cursor {
	void *pos;
	void *end;
};

/* the next `len` bytes, advancing past them, or NULL if the packet is shorter */
static __always_inline void *cursor_pull(struct cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

#define CURSOR_PULL(c, type) ((type *)cursor_pull((c), sizeof(type)))

#endif /* KATRAN_LIB_CURSOR_H */
