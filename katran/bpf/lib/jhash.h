/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Bob Jenkins' lookup3 hash as used by the Linux kernel's jhash.h, restricted
 * to the two shapes the balancer needs: two 32-bit words, and a 16-byte key
 * (an IPv6 address). Results are bit-identical to the kernel/Katran versions.
 * Part of the helper library: no maps, no knobs.
 */
#ifndef KATRAN_LIB_JHASH_H
#define KATRAN_LIB_JHASH_H

#include <linux/types.h>

#define JH_GOLDEN 0xdeadbeef

static __always_inline __u32 jh_rol(__u32 w, unsigned int s)
{
	return (w << s) | (w >> ((32 - s) & 31));
}

/* lookup3 "mix": reversible mixing of three words. */
static __always_inline void jh_mix(__u32 *a, __u32 *b, __u32 *c)
{
	*a -= *c; *a ^= jh_rol(*c, 4);  *c += *b;
	*b -= *a; *b ^= jh_rol(*a, 6);  *a += *c;
	*c -= *b; *c ^= jh_rol(*b, 8);  *b += *a;
	*a -= *c; *a ^= jh_rol(*c, 16); *c += *b;
	*b -= *a; *b ^= jh_rol(*a, 19); *a += *c;
	*c -= *b; *c ^= jh_rol(*b, 4);  *b += *a;
}

/* lookup3 "final": last avalanche, result in c. */
static __always_inline void jh_final(__u32 *a, __u32 *b, __u32 *c)
{
	*c ^= *b; *c -= jh_rol(*b, 14);
	*a ^= *c; *a -= jh_rol(*c, 11);
	*b ^= *a; *b -= jh_rol(*a, 25);
	*c ^= *b; *c -= jh_rol(*b, 16);
	*a ^= *c; *a -= jh_rol(*c, 4);
	*b ^= *a; *b -= jh_rol(*a, 14);
	*c ^= *b; *c -= jh_rol(*b, 24);
}

/* jhash_2words(w1, w2, seed) */
static __always_inline __u32 jhash_two_words(__u32 w1, __u32 w2, __u32 seed)
{
	__u32 init = seed + JH_GOLDEN + 8;
	__u32 a = w1 + init, b = w2 + init, c = init;

	jh_final(&a, &b, &c);
	return c;
}

/* jhash(key, 16, seed) on four native-endian words read from memory. */
static __always_inline __u32 jhash_16bytes(const __u32 *k, __u32 seed)
{
	__u32 a, b, c;

	a = b = c = JH_GOLDEN + 16 + seed;
	a += k[0];
	b += k[1];
	c += k[2];
	jh_mix(&a, &b, &c);
	a += k[3];
	jh_final(&a, &b, &c);
	return c;
}

#endif /* KATRAN_LIB_JHASH_H */
