/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Address and L2/L3 constants shared by all programs: EtherTypes and the IPv4
 * fragment mask in memory order (little-endian host), IPv6 address compare,
 * MAC swap. Part of the helper library: no maps, no knobs.
 */
#ifndef KATRAN_LIB_ADDR_H
#define KATRAN_LIB_ADDR_H

#include <stdbool.h>
#include <linux/types.h>
#include <linux/if_ether.h>

/* EtherType values as they sit in memory on a little-endian host. */
#define ETH_P_IP_BE 0x0008
#define ETH_P_IPV6_BE 0xDD86

/* IPv4 frag_off mask (MF flag + offset), as read from the wire on LE hosts. */
#define IPV4_FRAG_MASK_BE 0xFF3F

/* Two IPv6 addresses as four 32-bit words each. */
static __always_inline bool addr6_eq(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void eth_swap_macs(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

#endif /* KATRAN_LIB_ADDR_H */
