/* counters.h: the verdict counters (one per program run), the drop reasons and events, and the
 * per-frontend / per-backend traffic counters; per CPU, no atomics. */
#ifndef EBPFLB_COUNTERS_H
#define EBPFLB_COUNTERS_H

#include "lb_maps.h"

/* Built without counters only to measure what counting costs (benchmarks/datapath.py). */
#ifndef LB_COUNTERS
#define LB_COUNTERS 1
#endif

static __always_inline void lb_count(__u32 stat)
{
#if LB_COUNTERS
	__u64 *v = lb_stats.lookup(&stat);

	if (v)
		*v += 1;
#endif
}

/* Counts the one verdict of a program run and returns `action`, so that an entry point ends in
 * `return lb_verdict(AT_..., VERDICT_..., action)`. */
static __always_inline int lb_verdict(__u32 at, __u32 verdict, int action)
{
#if LB_COUNTERS
	__u32 k = at * VERDICT_MAX + verdict;
	__u64 *v = lb_verdicts.lookup(&k);

	if (v)
		*v += 1;
#endif
	return action;
}

/* Counts a packet of a flow against its frontend and its backend. The frontend's and backend's
 * counters sit in the same slot layout, so both updates are the same few stores. */
static __always_inline void lb_flow_add(struct lb_flow_stats *c, __u32 len, int reply, int new_flow)
{
	if (reply) {
		c->packets_out += 1;
		c->bytes_out += len;
	} else {
		c->packets_in += 1;
		c->bytes_in += len;
		if (new_flow)
			c->conns += 1;
	}
}

static __always_inline void lb_count_flow(__u32 svc_id, __u32 backend_id, __u32 len, int reply,
					  int new_flow)
{
#if LB_COUNTERS
	struct lb_flow_stats *c = lb4_svc_stats.lookup(&svc_id);

	if (c)
		lb_flow_add(c, len, reply, new_flow);
	c = lb4_backend_stats.lookup(&backend_id);
	if (c)
		lb_flow_add(c, len, reply, new_flow);
#endif
}

#endif
