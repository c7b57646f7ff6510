/* Decap for the real servers: bounds-checked cursor and header helpers (XDP). */
#ifndef KATRAN_DECAP_PARSE_H
#define KATRAN_DECAP_PARSE_H

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DECAP_IP_MF_OFFSET 0x3fff /* more-fragments flag | fragment offset */
#define DECAP_TCPOPT_EOL 0
#define DECAP_TCPOPT_NOP 1
#define DECAP_TCPOPT_TPR 0xb7
#define DECAP_TCPOPT_TPR_LEN 6
#define DECAP_TCPOPT_MAX_STEPS 15

/* a read position inside [pos, end) */
struct cursor {
	void *pos;
	void *end;
};

/* return a pointer to the next `len` bytes and advance, or NULL if the packet is shorter */
static __always_inline void *cursor_pull(struct cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

#define CURSOR_PULL(c, type) ((type *)cursor_pull((c), sizeof(type)))

/*
 * Look for Katran's TPR option (kind 0xb7, length 6) in a TCP header whose
 * options start at c->pos; returns the 4-byte server id read as-is, or 0.
 */
static __always_inline __u32 decap_tcp_server_id(struct cursor *c, __u32 opts_len)
{
	__u32 server_id = 0;

	for (int i = 0; i < DECAP_TCPOPT_MAX_STEPS; i++) {
		__u8 *kind, *len;

		if (!opts_len)
			break;
		kind = CURSOR_PULL(c, __u8);
		if (!kind || *kind == DECAP_TCPOPT_EOL)
			break;
		if (*kind == DECAP_TCPOPT_NOP) {
			opts_len -= 1;
			continue;
		}
		len = CURSOR_PULL(c, __u8);
		if (!len || opts_len < 2 || *len < 2 || *len > opts_len)
			break;
		if (*kind == DECAP_TCPOPT_TPR) {
			__u32 *id;

			if (*len != DECAP_TCPOPT_TPR_LEN)
				break;
			id = CURSOR_PULL(c, __u32);
			if (id)
				server_id = *id;
			break;
		}
		if (!cursor_pull(c, *len - 2))
			break;
		opts_len -= *len;
	}
	return server_id;
}

#endif
