/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Decap for the real servers: load-time knobs (`const volatile` in .rodata,
 * written by katran/decap.py before load). Include from decap.bpf.c only.
 */
#ifndef KATRAN_DECAP_KNOBS_H
#define KATRAN_DECAP_KNOBS_H

#include <linux/types.h>

/* load-time knobs */
const volatile __u16 decap_gue_dport = 0;     /* GUE decap on this UDP port; 0 = off */
const volatile __u32 decap_strict_dst = 0;    /* only decap packets to decap_host_addrs */

#endif /* KATRAN_DECAP_KNOBS_H */
