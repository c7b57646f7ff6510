/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Ethernet header access by words. struct ethhdr is packed (alignment 1), so
 * clang reads and writes its fields byte by byte: a MAC copy is 6 loads and
 * 6 stores, the EtherType two loads, a shift and an or. Packet access may be
 * unaligned where XDP is JITed for production (x86-64, arm64: the verifier
 * asks for alignment only on architectures without efficient unaligned
 * access), so these move a MAC as 4 + 2 bytes and read the EtherType as one
 * 16-bit load. Byte order is kept (memory to memory). Part of the helper
 * library: no maps, no knobs.
 */
#ifndef KATRAN_LIB_ETH_H
#define KATRAN_LIB_ETH_H

#include <linux/types.h>
#include <linux/if_ether.h>

/* the EtherType (network order) of the header at `eth` */
static __always_inline __be16 eth_proto(const void *eth)
{
	return *(const __be16 *)(eth + 2 * ETH_ALEN);
}

/* copy the 6 bytes of a MAC; `dst` and `src` do not overlap */
static __always_inline void mac_copy(void *dst, const void *src)
{
	*(__u32 *)dst = *(const __u32 *)src;
	*(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

/* write the header: destination, source, EtherType (network order) */
static __always_inline void eth_put(void *eth, const void *dst_mac, const void *src_mac, __be16 proto)
{
	mac_copy(eth, dst_mac);
	mac_copy(eth + ETH_ALEN, src_mac);
	*(__be16 *)(eth + 2 * ETH_ALEN) = proto;
}

#endif /* KATRAN_LIB_ETH_H */
