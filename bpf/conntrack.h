/* conntrack.h: the flow table's rules that do not depend on the IP family: lifetimes by state,
 * idle time, what a flag means. The table itself (conntrack.tmpl.h) is written once for both
 * families: ct4/ct4_syn and ct6/ct6_syn. */
#ifndef EBPFLB_CONNTRACK_H
#define EBPFLB_CONNTRACK_H

#include "lb_maps.h"
#include "parse.h"

#define CT_REFRESH_NS 1000000000ULL
#define LB_NSEC_PER_SEC 1000000000ULL
/* How long a half-closed flow (a FIN from one side only) is kept after either side's last
 * packet: the agent's GC keeps it as long (CtTimeouts.half_closed). */
#define CT_HALF_CLOSED_NS ((CT_TIMEOUT_TCP_TIME_WAIT > CT_TIMEOUT_TCP_CLOSE ?		\
			    CT_TIMEOUT_TCP_TIME_WAIT : CT_TIMEOUT_TCP_CLOSE) * LB_NSEC_PER_SEC)

/* Time since `last`; 0 when another CPU stamped the entry after this packet read the clock (a
 * wrapped difference would read as "expired" and cut a live flow). */
static __always_inline __u64 ct_idle(__u64 last, __u64 now)
{
	return now > last ? now - last : 0;
}

/* Whether a flow's source was rewritten (nat2): SNAT to this node, or a new source port. */
static __always_inline int ct_src_nat(__u16 flags)
{
	return flags & (CT_F_SNAT | CT_F_PORT_NAT);
}

/* How long a flow lives since its last packet, by the state its entries have seen. */
static __always_inline __u64 ct_lifetime_of(__u16 flags, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_TIMEOUT_UDP * LB_NSEC_PER_SEC;
	if (flags & CT_F_CLOSING)
		/* A closed SNAT flow keeps its port while the backend may still hold the connection
		 * in TIME_WAIT: a reused 4-tuple would meet PAWS there. */
		return (ct_src_nat(flags) ? CT_TIMEOUT_TCP_TIME_WAIT : CT_TIMEOUT_TCP_CLOSE) *
		       LB_NSEC_PER_SEC;
	if (flags & CT_F_ESTABLISHED)
		return CT_TIMEOUT_TCP_ESTABLISHED * LB_NSEC_PER_SEC;
	return CT_TIMEOUT_TCP_SYN * LB_NSEC_PER_SEC;
}

#define CT_CREATE_OK 0
#define CT_CREATE_FAIL -1	/* an insert failed: forwarded by hash without state */
#define CT_CREATE_HELD -2	/* the reply key belongs to a live flow of another frontend */

#endif
