/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TCP option scan for Katran's server-id option (TPR: kind 0xB7, length 6,
 * a 4-byte id read in memory order), used by the balancer (routing) and the
 * decap program (misrouting counters). Part of the helper library: no maps,
 * no knobs.
 */
#ifndef KATRAN_LIB_TCP_OPT_H
#define KATRAN_LIB_TCP_OPT_H

#include <linux/types.h>
#include <linux/tcp.h>

#include "cursor.h"

#define TCP_OPT_EOL 0
#define TCP_OPT_NOP 1
#define TPR_OPT_KIND 0xB7
#define TPR_OPT_LEN 6
#define TPR_MAX_OPTS 15 /* options looked at, at most */

/*
 * The server id in option 0xB7 of the TCP header at offset `tcp_off` of the
 * frame, or 0 when there is none (or the options are malformed). The offset
 * is kept in a byte as Katran does: TCP headers start within the first 255
 * bytes (Ethernet + IPv6 + ICMP quote at most).
 */
static __always_inline __u32 tcp_opt_server_id(void *data, void *data_end, __u64 tcp_off)
{
	struct tcphdr *tcp = pkt_ptr(data, data_end, tcp_off, sizeof(*tcp));
	__u8 left, pos, kind, len;
	__u8 *opt;

	if (!tcp)
		return 0;
	left = (__u8)(tcp->doff * 4 - sizeof(*tcp));
	if (left < TPR_OPT_LEN)
		return 0;
	pos = (__u8)(tcp_off + sizeof(*tcp));

	for (int i = 0; i < TPR_MAX_OPTS; i++) {
		opt = pkt_ptr(data, data_end, pos, 1);
		if (!opt)
			return 0;
		kind = opt[0];
		if (kind == TCP_OPT_EOL)
			return 0;
		if (kind == TCP_OPT_NOP) {
			left--;
			pos++;
		} else {
			if (left < 2)
				return 0;
			opt = pkt_ptr(data, data_end, pos, 2);
			if (!opt)
				return 0;
			len = opt[1];
			if (len > left)
				return 0;
			if (kind == TPR_OPT_KIND) {
				if (len != TPR_OPT_LEN)
					return 0;
				opt = pkt_ptr(data, data_end, pos, TPR_OPT_LEN);
				if (!opt)
					return 0;
				return *(__u32 *)(opt + 2);
			}
			left -= len;
			pos += len;
		}
		if (!left)
			return 0;
	}
	return 0;
}

#endif /* KATRAN_LIB_TCP_OPT_H */
