/* lb4_tc.c: TC entry points on pod-facing devices (the host side of each pod's veth).
 *
 *   lb4_from_pod (ingress: packets leaving a pod): a packet to a frontend is DNATed to a backend,
 *                chosen by conntrack for a known flow, else by the flow hash over the frontend's
 *                slots; a new flow gets conntrack entries for both directions.
 *   lb4_to_pod   (egress: packets entering a pod): a backend's reply is rewritten back to the
 *                frontend's address and port. Doing it here, on the client-facing side, keeps the
 *                node's rp_filter (the reply arrives from the backend's own address) and the
 *                kernel's conntrack view consistent.
 * Everything else passes untouched. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "lb_maps.h"
#include "parse.h"
#include "flow_hash.h"
#include "nat.h"

/* bcc rewrites map method calls (map.lookup(), map.update()) only in the main source file, so
 * every helper that touches a map lives here; the headers hold what needs no map. */

/* ---- counters: per-CPU, one increment per packet, no atomics ---- */

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

/* ---- conntrack: a new flow gets two entries, the forward one (client 5-tuple -> backend) and
 * the reply one (backend 5-tuple -> frontend), so established flows keep their backend whatever
 * happens to the Service's backend set ---- */

#define CT_REFRESH_NS 1000000000ULL

/* The conntrack key of a packet as it arrives, before any rewrite. */
static __always_inline void ct4_key_of(const struct pkt4 *p, __u8 dir, struct ct4_key *k)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->dir = dir;
	k->pad = 0;
}

/* Looks a flow up and refreshes its last-seen time, at most once a second per entry. */
static __always_inline struct ct4_entry *ct4_lookup(struct ct4_key *key)
{
	struct ct4_entry *e = ct4.lookup(key);
	__u64 now;

	if (!e)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - e->last_seen_ns > CT_REFRESH_NS)
		e->last_seen_ns = now;
	return e;
}

/* Creates both entries of a new flow. Returns 0, or -1 when either insert failed (the packet is
 * still forwarded: the hash picks the same backend again while the backend set is unchanged). */
static __always_inline int ct4_create(const struct pkt4 *p, struct ct4_key *fwd,
				      const struct lb4_backend *be, __u32 svc_id, __u32 backend_id)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct4_key rev = {
		.saddr = be->addr, .daddr = p->saddr, .sport = be->port, .dport = p->sport,
		.proto = p->proto, .dir = CT_DIR_REPLY,
	};
	struct ct4_entry e = {
		.created_ns = now, .last_seen_ns = now, .nat_addr = be->addr, .nat_port = be->port,
		.svc_id = svc_id, .backend_id = backend_id,
	};
	struct ct4_entry r = e;

	/* Reply entry first: a flow whose forward entry is missing is re-hashed to the same backend,
	 * but replies without a reply entry would reach the client from the backend's address. */
	r.nat_addr = p->daddr;
	r.nat_port = p->dport;
	if (ct4.update(&rev, &r))
		return -1;
	if (ct4.update(fwd, &e))
		return -1;
	return 0;
}

/* ---- entry points ---- */

static __always_inline int lb4_pass_verdict(int parse_result)
{
	if (parse_result == PARSE_MALFORMED)
		lb_count(STAT_MALFORMED);
	else if (parse_result == PARSE_FRAGMENT)
		lb_count(STAT_FRAGMENT);
	else
		lb_count(STAT_PASS);
	return TC_ACT_OK;
}

/* Picks a backend for a new flow. Returns its id, or 0 when the frontend has none usable. */
static __always_inline __u32 lb4_select_backend(const struct pkt4 *p, const struct lb4_svc *svc,
						struct lb4_backend **be)
{
	struct lb4_slot_key slot;
	__u32 *id;

	if (svc->count == 0)
		return 0;
	slot.svc_id = svc->svc_id;
	slot.slot = flow_hash4(p) % svc->count;
	id = lb4_slots.lookup(&slot);
	if (!id)
		return 0;
	*be = lb4_backends.lookup(id);
	if (!*be)
		return 0;
	return *id;
}

int lb4_from_pod(struct __sk_buff *skb)
{
	struct pkt4 p = {};
	struct lb4_svc_key sk = {};
	struct lb4_svc *svc;
	struct ct4_key fk;
	struct ct4_entry *ct;
	struct lb4_backend *be = 0;
	__be32 new_addr;
	__be16 new_port;
	__u32 backend_id;
	int new_flow = 0;
	int r;

	lb4_pull_headers(skb);
	r = lb4_parse(skb, &p);
	if (r != PARSE_OK)
		return lb4_pass_verdict(r);

	sk.vip = p.daddr;
	sk.port = p.dport;
	sk.proto = p.proto;
	svc = lb4_services.lookup(&sk);
	if (!svc)
		return lb4_pass_verdict(PARSE_NOT_OURS);

	ct4_key_of(&p, CT_DIR_FWD, &fk);
	ct = ct4_lookup(&fk);
	if (ct) {
		new_addr = ct->nat_addr;
		new_port = ct->nat_port;
		backend_id = ct->backend_id;
	} else {
		backend_id = lb4_select_backend(&p, svc, &be);
		if (!backend_id || !be) {
			lb_count(STAT_NO_BACKEND);
			return TC_ACT_SHOT;
		}
		new_addr = be->addr;
		new_port = be->port;
		if (ct4_create(&p, &fk, be, svc->svc_id, backend_id))
			lb_count(STAT_CT_INSERT_FAIL);
		else
			lb_count(STAT_CT_INSERT);
		new_flow = 1;
	}
	if (lb4_rewrite(skb, &p, NAT_DST, new_addr, new_port)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	if (new_flow)
		lb_count(STAT_DNAT_NEW);
	lb_count_flow(svc->svc_id, backend_id, skb->len, 0, new_flow);
	return TC_ACT_OK;
}

int lb4_to_pod(struct __sk_buff *skb)
{
	struct pkt4 p = {};
	struct ct4_key rk;
	struct ct4_entry *ct;
	int r;

	lb4_pull_headers(skb);
	r = lb4_parse(skb, &p);
	if (r != PARSE_OK)
		return lb4_pass_verdict(r);

	ct4_key_of(&p, CT_DIR_REPLY, &rk);
	ct = ct4_lookup(&rk);
	if (!ct)
		return lb4_pass_verdict(PARSE_NOT_OURS);
	if (lb4_rewrite(skb, &p, NAT_SRC, ct->nat_addr, ct->nat_port)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return TC_ACT_OK;
}
