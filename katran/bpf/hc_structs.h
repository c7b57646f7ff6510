/* Healthcheck forwarding: value layouts shared with katran/healthcheck.py. */
#ifndef KATRAN_HC_STRUCTS_H
#define KATRAN_HC_STRUCTS_H

#include <linux/types.h>

/* hc_real_definition.flags bit: the address is IPv6 */
enum hc_real_flag {
	HC_REAL_V6 = 1 << 0,
};

/* knob hc_encap_mode */
enum hc_encap_mode {
	HC_ENCAP_DIRECT = 0, /* build the outer header, redirect to the main interface */
	HC_ENCAP_TUNNEL = 1, /* set the tunnel key, redirect to the ipip/ip6tnl device */
};

/* where a probe goes: 20 bytes, addresses in network order */
struct hc_real_definition {
	union {
		__be32 daddr;
		__be32 v6daddr[4];
	};
	__u8 flags;
};

/* program counters (hc_stats_map[0], per cpu) */
struct hc_stats {
	__u64 pckts_processed;
	__u64 pckts_dropped;
	__u64 pckts_skipped;
	__u64 pckts_too_big;
	__u64 pckts_dst_matched;
	__u64 pckts_src_matched;
};

struct hc_mac {
	__u8 mac[6];
};

#endif
