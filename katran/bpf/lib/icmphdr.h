/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The ICMPv4 header and the message types the balancer handles.
 *
 * <linux/icmp.h> includes <linux/if.h>, which reaches glibc's <sys/socket.h>;
 * with `-target bpf` glibc then asks for the 32-bit <gnu/stubs-32.h>, which a
 * plain Debian machine does not have. The BPF programs therefore build from
 * kernel uapi headers and libbpf only, and declare this one header themselves
 * (same layout as the uapi struct icmphdr, RFC 792).
 */
#ifndef KATRAN_LIB_ICMPHDR_H
#define KATRAN_LIB_ICMPHDR_H

#include <linux/types.h>

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11

/* codes of ICMP_DEST_UNREACH */
#define ICMP_HOST_UNREACH 1
#define ICMP_PORT_UNREACH 3
#define ICMP_FRAG_NEEDED 4

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
		struct {
			__be16 __unused;
			__be16 mtu;
		} frag;
		__u8 reserved[4];
	} un;
};

#endif /* KATRAN_LIB_ICMPHDR_H */
