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
#include "reject.h"
#include "icmp.h"

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

#define NSEC_PER_SEC 1000000000ULL

/* A flow's entry wherever it lives: the main table, else (TCP only) the half-open one. */
static __always_inline struct ct4_entry *ct4_find(struct ct4_key *key)
{
	struct ct4_entry *e = ct4.lookup(key);

	if (!e && key->proto == IPPROTO_TCP)
		e = ct4_syn.lookup(key);
	return e;
}

/* How long an entry lives since its last packet, by what its direction has seen. */
static __always_inline __u64 ct4_lifetime(const struct ct4_entry *e, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_TIMEOUT_UDP * NSEC_PER_SEC;
	if (e->flags & CT_F_CLOSING)
		return CT_TIMEOUT_TCP_CLOSE * NSEC_PER_SEC;
	if (e->flags & CT_F_ESTABLISHED)
		return CT_TIMEOUT_TCP_ESTABLISHED * NSEC_PER_SEC;
	return CT_TIMEOUT_TCP_SYN * NSEC_PER_SEC;
}

/* Records a packet of a known flow: last-seen time (at most one write a second) and the TCP
 * state bits of this direction (written only when they change). */
static __always_inline void ct4_track(struct ct4_entry *e, const struct pkt4 *p, __u64 now)
{
	__u16 flags = e->flags;

	if (now - e->last_seen_ns > CT_REFRESH_NS)
		e->last_seen_ns = now;
	if (p->proto != IPPROTO_TCP)
		return;
	if (p->tcp_flags & (TCP_FL_FIN | TCP_FL_RST))
		flags |= CT_F_CLOSING;
	if (p->tcp_flags & TCP_FL_ACK)
		flags |= CT_F_ESTABLISHED;
	if (flags != e->flags)
		e->flags = flags;
}

/* A bare SYN: the only TCP packet allowed to create state. */
static __always_inline int tcp_syn_only(const struct pkt4 *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) == TCP_FL_SYN;
}

/* A new flow must not come from loopback, from a VIP, or from its own destination. */
static __always_inline int lb4_bad_source(const struct pkt4 *p)
{
	__be32 src = p->saddr;

	if ((bpf_ntohl(src) >> 24) == 127 || src == p->daddr)
		return 1;
	return lb4_vips.lookup(&src) != 0;
}

/* The reply key of a flow, from its forward key and where it was DNATed to. A hairpin flow's
 * replies are addressed to the hairpin address, not to the client. */
static __always_inline void ct4_reply_key(const struct ct4_key *fwd, __be32 nat_addr,
					  __be16 nat_port, __u16 flags, struct ct4_key *rev)
{
	rev->saddr = nat_addr;
	rev->daddr = (flags & CT_F_HAIRPIN) ? bpf_htonl(LB4_HAIRPIN_ADDR_HOST) : fwd->saddr;
	rev->sport = nat_port;
	rev->dport = fwd->sport;
	rev->proto = fwd->proto;
	rev->dir = CT_DIR_REPLY;
	rev->pad = 0;
}

/* Moves a half-open flow's two entries from ct4_syn to ct4 once its client has ACKed. */
static __always_inline void ct4_promote(struct ct4_key *fwd, struct ct4_entry *e)
{
	struct ct4_entry copy = *e;
	struct ct4_key rev;
	struct ct4_entry *r;

	ct4_reply_key(fwd, copy.nat_addr, copy.nat_port, copy.flags, &rev);
	r = ct4_syn.lookup(&rev);
	if (r) {
		struct ct4_entry rcopy = *r;

		if (ct4.update(&rev, &rcopy) == 0)
			ct4_syn.delete(&rev);
	}
	if (ct4.update(fwd, &copy) == 0)
		ct4_syn.delete(fwd);
}

/* Creates both entries of a new flow, TCP in ct4_syn and UDP in ct4. Returns 0, or -1 when an
 * insert failed (the packet is still forwarded: the hash picks the same backend again while the
 * backend set is unchanged). */
static __always_inline int ct4_create(const struct pkt4 *p, struct ct4_key *fwd,
				      const struct lb4_backend *be, __u32 svc_id, __u32 backend_id,
				      __u16 flags)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct4_key rev;
	struct ct4_entry e = {
		.created_ns = now, .last_seen_ns = now, .nat_addr = be->addr, .nat_port = be->port,
		.flags = flags, .svc_id = svc_id, .backend_id = backend_id,
	};
	struct ct4_entry r = e;

	ct4_reply_key(fwd, be->addr, be->port, flags, &rev);
	/* Reply entry first: a flow whose forward entry is missing is re-hashed to the same backend,
	 * but replies without a reply entry would reach the client from the backend's address. */
	r.nat_addr = p->daddr;
	r.nat_port = p->dport;
	if (p->proto == IPPROTO_TCP) {
		if (ct4_syn.update(&rev, &r) || ct4_syn.update(fwd, &e))
			return -1;
		return 0;
	}
	if (ct4.update(&rev, &r) || ct4.update(fwd, &e))
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

/* The backend a client is bound to by session affinity, if the binding is fresh and the backend
 * still belongs to the frontend and takes new flows. Returns its id, or 0. */
static __always_inline __u32 lb4_affinity_backend(const struct pkt4 *p, const struct lb4_svc *svc,
						  __u64 now, struct lb4_backend **be)
{
	struct lb4_affinity_key key = { .svc_id = svc->svc_id, .client = p->saddr };
	struct lb4_affinity *a = lb4_affinity.lookup(&key);
	__u32 id;

	if (!a || now - a->last_used_ns > (__u64)svc->affinity_timeout * NSEC_PER_SEC)
		return 0;
	id = a->backend_id;
	*be = lb4_backends.lookup(&id);
	if (!*be || (*be)->svc_id != svc->svc_id || ((*be)->flags & LB4_BE_F_NO_NEW))
		return 0;
	return id;
}

static __always_inline void lb4_affinity_update(const struct pkt4 *p, const struct lb4_svc *svc,
						__u32 backend_id, __u64 now)
{
	struct lb4_affinity_key key = { .svc_id = svc->svc_id, .client = p->saddr };
	struct lb4_affinity val = { .last_used_ns = now, .backend_id = backend_id };

	lb4_affinity.update(&key, &val);
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

/* Hairpin, forward: the pod's packet to its own Service, already DNATed to itself, gets the
 * hairpin address as source (a packet from its own address would be dropped as martian) and goes
 * straight back out of the device it came from. */
static __always_inline int lb4_hairpin_out(struct __sk_buff *skb, const struct pkt4 *p)
{
	if (lb4_rewrite(skb, p, NAT_SRC, bpf_htonl(LB4_HAIRPIN_ADDR_HOST), p->sport)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	return lb4_bounce(skb);
}

/* Hairpin, reply: the pod answering the hairpin address gets the frontend as source and itself
 * as destination again, and goes back out of its device. */
static __always_inline int lb4_hairpin_reply(struct __sk_buff *skb, const struct pkt4 *p)
{
	struct ct4_key rk;
	struct ct4_entry *ct;

	ct4_key_of(p, CT_DIR_REPLY, &rk);
	ct = ct4_find(&rk);
	if (!ct)
		return lb4_pass_verdict(PARSE_NOT_OURS);
	ct4_track(ct, p, bpf_ktime_get_ns());
	if (lb4_rewrite(skb, p, NAT_SRC, ct->nat_addr, ct->nat_port) ||
	    lb4_rewrite(skb, p, NAT_DST, p->saddr, p->dport)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return lb4_bounce(skb);
}

/* An ICMP error to a pod about a flow it started to a frontend: the quoted packet went to the
 * backend, so its destination (and the outer source, when the backend sent the error) becomes
 * the frontend again. Returns a verdict, or -1 when it is not about one of our flows. */
static __always_inline int lb4_icmp_to_pod(struct __sk_buff *skb)
{
	struct icmp4_err e = {};
	struct ct4_key rk = {};
	struct ct4_entry *ct;

	if (parse_icmp4_error(skb, &e))
		return -1;
	/* The quoted packet is client -> backend; the flow's reply entry is keyed backend -> client. */
	rk.saddr = e.in_daddr;
	rk.daddr = e.in_saddr;
	rk.sport = e.in_dport;
	rk.dport = e.in_sport;
	rk.proto = e.in_proto;
	rk.dir = CT_DIR_REPLY;
	ct = ct4_find(&rk);
	if (!ct)
		return -1;
	if ((e.saddr == e.in_daddr && icmp4_rewrite_outer(skb, &e, NAT_SRC, ct->nat_addr)) ||
	    icmp4_rewrite_inner(skb, &e, NAT_DST, ct->nat_addr, ct->nat_port)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	lb_count(STAT_ICMP_NAT);
	return TC_ACT_OK;
}

/* An ICMP error from a pod about a reply it got from a frontend: the quoted packet came from the
 * frontend, so its source (and the outer destination) becomes the backend the flow uses. */
static __always_inline int lb4_icmp_from_pod(struct __sk_buff *skb)
{
	struct icmp4_err e = {};
	struct ct4_key fk = {};
	struct ct4_entry *ct;

	if (parse_icmp4_error(skb, &e))
		return -1;
	/* The quoted packet is frontend -> client; the flow's forward entry is client -> frontend. */
	fk.saddr = e.in_daddr;
	fk.daddr = e.in_saddr;
	fk.sport = e.in_dport;
	fk.dport = e.in_sport;
	fk.proto = e.in_proto;
	fk.dir = CT_DIR_FWD;
	ct = ct4_find(&fk);
	if (!ct)
		return -1;
	if ((e.daddr == e.in_saddr && icmp4_rewrite_outer(skb, &e, NAT_DST, ct->nat_addr)) ||
	    icmp4_rewrite_inner(skb, &e, NAT_SRC, ct->nat_addr, ct->nat_port)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	lb_count(STAT_ICMP_NAT);
	return TC_ACT_OK;
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
	int half_open;
	__u64 now;
	int r;

	lb4_pull_headers(skb);
	r = lb4_parse(skb, &p);
	if (r == PARSE_NOT_OURS) {
		r = lb4_icmp_from_pod(skb);
		return r >= 0 ? r : lb4_pass_verdict(PARSE_NOT_OURS);
	}
	if (r != PARSE_OK)
		return lb4_pass_verdict(r);

	if (p.daddr == bpf_htonl(LB4_HAIRPIN_ADDR_HOST))
		return lb4_hairpin_reply(skb, &p);
	sk.vip = p.daddr;
	sk.port = p.dport;
	sk.proto = p.proto;
	svc = lb4_services.lookup(&sk);
	if (!svc)
		return lb4_pass_verdict(PARSE_NOT_OURS);

	ct4_key_of(&p, CT_DIR_FWD, &fk);
	ct = ct4.lookup(&fk);
	half_open = 0;
	if (!ct && p.proto == IPPROTO_TCP) {
		ct = ct4_syn.lookup(&fk);
		half_open = ct != 0;
	}
	now = bpf_ktime_get_ns();
	/* An expired entry, or a SYN reusing the tuple of a closed flow, starts a new flow. */
	if (ct && (now - ct->last_seen_ns > ct4_lifetime(ct, p.proto) ||
		   (tcp_syn_only(&p) && (ct->flags & CT_F_CLOSING))))
		ct = 0;
	if (ct) {
		ct4_track(ct, &p, now);
		new_addr = ct->nat_addr;
		new_port = ct->nat_port;
		backend_id = ct->backend_id;
		if (half_open && (ct->flags & CT_F_ESTABLISHED) && !(ct->flags & CT_F_CLOSING))
			ct4_promote(&fk, ct);
	} else {
		backend_id = 0;
		if (svc->affinity_timeout)
			backend_id = lb4_affinity_backend(&p, svc, now, &be);
		if (!backend_id)
			backend_id = lb4_select_backend(&p, svc, &be);
		if (!backend_id || !be) {
			lb_count(STAT_NO_BACKEND);
			return lb4_reject(skb, &p);
		}
		new_addr = be->addr;
		new_port = be->port;
		if (p.proto == IPPROTO_TCP && !tcp_syn_only(&p)) {
			/* Not a connection start: forward by hash (right while the backend set is unchanged,
			 * e.g. after an LRU eviction) but create nothing, so a flood of such packets cannot
			 * fill conntrack. */
			lb_count(STAT_TCP_NO_STATE);
		} else if (lb4_bad_source(&p)) {
			lb_count(STAT_BAD_SOURCE);
			return TC_ACT_SHOT;
		} else {
			if (ct4_create(&p, &fk, be, svc->svc_id, backend_id,
				       new_addr == p.saddr ? CT_F_HAIRPIN : 0))
				lb_count(STAT_CT_INSERT_FAIL);
			else
				lb_count(STAT_CT_INSERT);
			if (svc->affinity_timeout)
				lb4_affinity_update(&p, svc, backend_id, now);
			new_flow = 1;
		}
	}
	if (lb4_rewrite(skb, &p, NAT_DST, new_addr, new_port)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	if (new_flow)
		lb_count(STAT_DNAT_NEW);
	lb_count_flow(svc->svc_id, backend_id, skb->len, 0, new_flow);
	if (new_addr == p.saddr)
		return lb4_hairpin_out(skb, &p);
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
	if (r == PARSE_NOT_OURS) {
		r = lb4_icmp_to_pod(skb);
		return r >= 0 ? r : lb4_pass_verdict(PARSE_NOT_OURS);
	}
	if (r != PARSE_OK)
		return lb4_pass_verdict(r);

	ct4_key_of(&p, CT_DIR_REPLY, &rk);
	ct = ct4_find(&rk);
	if (!ct)
		return lb4_pass_verdict(PARSE_NOT_OURS);
	/* Replies never expire an entry here: the agent's GC ages a flow by both directions. */
	ct4_track(ct, &p, bpf_ktime_get_ns());
	if (lb4_rewrite(skb, &p, NAT_SRC, ct->nat_addr, ct->nat_port)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return TC_ACT_OK;
}
