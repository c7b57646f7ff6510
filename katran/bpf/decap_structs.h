/* Decap for the real servers: value layouts shared with katran/decap.py. */
#ifndef KATRAN_DECAP_STRUCTS_H
#define KATRAN_DECAP_STRUCTS_H

#include <linux/types.h>

/* decap_counters[0], per cpu; Katran's five counters, then ours */
struct decap_stats {
	__u64 decap_v4;      /* outer IPv4 packets decapsulated */
	__u64 decap_v6;      /* outer IPv6 packets decapsulated */
	__u64 total;         /* all packets decapsulated */
	__u64 tpr_misrouted; /* inner TCP server id != ours */
	__u64 tpr_total;     /* inner TCP packets carrying a server id */
	__u64 passed;        /* packets passed untouched */
};

/* a host address for strict-destination mode, network order */
struct decap_host_addr {
	union {
		__be32 v4;
		__be32 v6[4];
	};
};

#endif
