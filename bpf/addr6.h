/* addr6.h: IPv6 addresses as the templates need them (struct lb6_addr: four network-order
 * words): compare, test, set. */
#ifndef EBPFLB_ADDR6_H
#define EBPFLB_ADDR6_H

#include "lb_structs.h"

static __always_inline int addr6_eq(const struct lb6_addr *a, const struct lb6_addr *b)
{
	return ((a->w[0] ^ b->w[0]) | (a->w[1] ^ b->w[1]) | (a->w[2] ^ b->w[2]) |
		(a->w[3] ^ b->w[3])) == 0;
}

/* *dst = *src, where the compiler may have chosen src between two addresses: it would reach the
 * words past the first by OR-ing the offset into the (aligned) pointer, which the verifier
 * refuses. The empty asm hides the alignment. */
static __always_inline void addr6_copy(struct lb6_addr *dst, const struct lb6_addr *src)
{
	asm volatile("" : "+r"(src));
	*dst = *src;
}

/* ::1, and the IPv4-mapped loopback ::ffff:127.0.0.0/104. */
static __always_inline int addr6_is_loopback(const struct lb6_addr *a)
{
	if (a->w[0] || a->w[1])
		return 0;
	if (a->w[2] == 0)
		return a->w[3] == bpf_htonl(1);
	return a->w[2] == bpf_htonl(0xffff) && (bpf_ntohl(a->w[3]) >> 24) == 127;
}

static __always_inline void addr6_set_hairpin(struct lb6_addr *a)
{
	a->w[0] = bpf_htonl(LB6_HAIRPIN_ADDR_W0);
	a->w[1] = bpf_htonl(LB6_HAIRPIN_ADDR_W1);
	a->w[2] = bpf_htonl(LB6_HAIRPIN_ADDR_W2);
	a->w[3] = bpf_htonl(LB6_HAIRPIN_ADDR_W3);
}

static __always_inline int addr6_is_hairpin(const struct lb6_addr *a)
{
	struct lb6_addr h;

	addr6_set_hairpin(&h);
	return addr6_eq(a, &h);
}

#endif
