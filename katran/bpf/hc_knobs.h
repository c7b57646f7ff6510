/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Healthcheck forwarding: load-time knobs (`const volatile` in .rodata,
 * written by katran/healthcheck.py before load). Include from
 * healthchecking.bpf.c only.
 */
#ifndef KATRAN_HC_KNOBS_H
#define KATRAN_HC_KNOBS_H

#include <linux/types.h>

#include "hc_structs.h"

/* load-time knobs */
const volatile __u32 hc_encap_mode = HC_ENCAP_DIRECT; /* direct / tunnel */
const volatile __u32 hc_max_pckt_size = 0;            /* 0: no length check */
const volatile __u16 hc_gue_dport = 0;                /* direct mode: GUE when != 0 */

#endif /* KATRAN_HC_KNOBS_H */
