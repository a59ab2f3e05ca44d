/* icmp_nat.h: ICMP errors about load-balanced flows, found by the flow they quote (icmp.h parses
 * and rewrites them) and translated the way that flow's packets are. */
#ifndef EBPFLB_ICMP_NAT_H
#define EBPFLB_ICMP_NAT_H

#include "lb_maps.h"
#include "counters.h"
#include "lb_core.h"
#include "icmp.h"
#include "nat.h"

/* The conntrack key of the flow an ICMP error quotes, seen from the other side: the quoted
 * packet went one way, the entry we want is keyed by the way back. */
static __always_inline void ct4_key_of_quoted(const struct icmp4_err *e, __u8 dir,
					      struct ct4_key *k)
{
	k->saddr = e->in_daddr;
	k->daddr = e->in_saddr;
	k->sport = e->in_dport;
	k->dport = e->in_sport;
	k->proto = e->in_proto;
	k->dir = dir;
	k->pad = 0;
}

/* Translates an ICMP error about one of our flows, whose entry `ct` was found from the quoted
 * packet; TC_ACT_SHOT when it cannot (the reason counted). `quoted` is the side of the quoted
 * packet that was NATed: NAT_DST for an error to the client about its request (the quoted destination is the backend, the frontend again), NAT_SRC
 * for an error from the client about a reply (the quoted source is the frontend, the backend
 * again). The outer address on the other side is rewritten too when it is that same address
 * (the backend, or the frontend, sent the error itself). */
static __always_inline int lb4_icmp_nat(struct __sk_buff *skb, const struct icmp4_err *e,
					const struct ct4_entry *ct, int quoted)
{
	__be32 quoted_addr = quoted == NAT_DST ? e->in_daddr : e->in_saddr;
	__be32 outer_addr = quoted == NAT_DST ? e->saddr : e->daddr;

	/* A flow with a new source port: the quoted client side gets its port back too (the reply
	 * entry's nat2 is the client's own), or the one the backend saw (the forward entry's). */
	if ((outer_addr == quoted_addr && icmp4_rewrite_outer(skb, e, !quoted, ct->nat_addr)) ||
	    icmp4_rewrite_inner(skb, e, quoted, ct->nat_addr, ct->nat_port) ||
	    ((ct->flags & CT_F_PORT_NAT) &&
	     icmp4_rewrite_inner(skb, e, !quoted, ct->nat2_addr, ct->nat2_port))) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

/* An ICMP error about a flow whose client is on this side: to the client about its request
 * (dir REPLY: the flow's reply entry, keyed backend -> client), or from the client about a reply
 * (dir FWD: its forward entry). Only entries with (flags & mask) == want. Returns a verdict, or
 * -1 when it is about none of those flows. */
static __always_inline int lb4_icmp_client(struct __sk_buff *skb, __u8 dir, __u16 mask,
					   __u16 want)
{
	struct icmp4_err e = {};
	struct ct4_key k = {};
	struct ct4_entry *ct;

	if (parse_icmp4_error(skb, &e))
		return -1;
	ct4_key_of_quoted(&e, dir, &k);
	ct = ct4_find(&k);
	if (!ct || (ct->flags & mask) != want)
		return -1;
	return lb4_icmp_nat(skb, &e, ct, dir == CT_DIR_REPLY ? NAT_DST : NAT_SRC);
}

/* Sends a translated ICMP error on from a node device: its outer source may now be this node's
 * own address, which the stack would take for a martian. */
static __always_inline int lb4_icmp_send_on(struct __sk_buff *skb, const struct icmp4_err *e,
					    __be32 saddr, __be32 daddr)
{
	struct pkt4 p = { .l3_off = e->l3_off, .proto = IPPROTO_ICMP };
	struct lb4_nat n = {};
	int rc = lb4_fib(skb, &p, saddr, 0, daddr, 0, skb->ifindex, &n);

	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) ||
	    tc_ttl_dec(skb, e->l3_off)) {
		lb_count(STAT_FORWARD_FAIL);
		return TC_ACT_SHOT;
	}
	return lb_send_out(n.ifindex);
}

/* An ICMP error arriving on a node device about a flow from outside. Returns a verdict, or -1
 * when it is about none of ours.
 *  - About a reply the client got (quoting frontend -> client; a router on the client's path
 *    says "fragmentation needed"): to a local backend it goes like the pod path's; to a remote
 *    one it is rewritten to what that backend sent (backend -> SNAT address) and sent on.
 *  - About a packet this node SNATed towards a remote backend (quoting SNAT address -> backend):
 *    rewritten to what the client sent (client -> frontend) and sent back to the client. */
static __always_inline int lb4_node_icmp_in(struct __sk_buff *skb)
{
	struct icmp4_err e = {};
	struct ct4_key k = {};
	struct ct4_entry *ct;
	__be32 saddr;

	if (parse_icmp4_error(skb, &e))
		return -1;
	ct4_key_of_quoted(&e, CT_DIR_FWD, &k);
	ct = ct4_find(&k);
	if (ct && (ct->flags & CT_F_EXTERNAL)) {
		if (!(ct->flags & CT_F_SNAT))
			return lb4_icmp_nat(skb, &e, ct, NAT_SRC);	/* a local backend */
		/* Quoted frontend -> client becomes backend -> SNAT address; the error goes from
		 * this node to the backend. */
		if (icmp4_rewrite_inner(skb, &e, NAT_SRC, ct->nat_addr, ct->nat_port) ||
		    icmp4_rewrite_inner(skb, &e, NAT_DST, ct->nat2_addr, ct->nat2_port) ||
		    icmp4_rewrite_outer(skb, &e, NAT_SRC, ct->nat2_addr) ||
		    icmp4_rewrite_outer(skb, &e, NAT_DST, ct->nat_addr)) {
			lb_count(STAT_NAT_FAIL);
			return TC_ACT_SHOT;
		}
		return lb4_icmp_send_on(skb, &e, ct->nat2_addr, ct->nat_addr);
	}
	k.dir = CT_DIR_REPLY;	/* quoted SNAT address -> backend: the reply entry's reverse */
	ct = ct4_find(&k);
	if (!ct || !(ct->flags & CT_F_SNAT))
		return -1;
	/* Quoted SNAT address -> backend becomes client -> frontend; outer to the client, and
	 * from the frontend when the backend itself sent it. */
	saddr = e.saddr == e.in_daddr ? ct->nat_addr : e.saddr;
	if (icmp4_rewrite_inner(skb, &e, NAT_SRC, ct->nat2_addr, ct->nat2_port) ||
	    icmp4_rewrite_inner(skb, &e, NAT_DST, ct->nat_addr, ct->nat_port) ||
	    icmp4_rewrite_outer(skb, &e, NAT_DST, ct->nat2_addr) ||
	    (saddr != e.saddr && icmp4_rewrite_outer(skb, &e, NAT_SRC, saddr))) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	return lb4_icmp_send_on(skb, &e, saddr, ct->nat2_addr);
}

#endif
