/* conntrack.h: the flow table. A new flow gets two entries, the forward one (client 5-tuple ->
 * backend) and the reply one (backend 5-tuple -> frontend), so an established flow keeps its
 * backend whatever happens to the Service's backend set. Half-open TCP flows live in ct4_syn
 * until the client's ACK moves them to ct4. */
#ifndef EBPFLB_CONNTRACK_H
#define EBPFLB_CONNTRACK_H

#include "lb_maps.h"
#include "parse.h"
#include "icmp.h"

#define CT_REFRESH_NS 1000000000ULL
#define LB_NSEC_PER_SEC 1000000000ULL
/* How long a half-closed flow (a FIN from one side only) is kept after either side's last
 * packet: the agent's GC keeps it as long (CtTimeouts.half_closed). */
#define CT_HALF_CLOSED_NS ((CT_TIMEOUT_TCP_TIME_WAIT > CT_TIMEOUT_TCP_CLOSE ?		\
			    CT_TIMEOUT_TCP_TIME_WAIT : CT_TIMEOUT_TCP_CLOSE) * LB_NSEC_PER_SEC)

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

/* Time since `last`; 0 when another CPU stamped the entry after this packet read the clock (a
 * wrapped difference would read as "expired" and cut a live flow). */
static __always_inline __u64 ct4_idle(__u64 last, __u64 now)
{
	return now > last ? now - last : 0;
}

/* A flow's entry wherever it lives: the main table, else (TCP only) the half-open one. */
static __always_inline struct ct4_entry *ct4_find_half_open(struct ct4_key *key, int *half_open)
{
	struct ct4_entry *e = ct4.lookup(key);

	*half_open = 0;
	if (e || key->proto != IPPROTO_TCP)
		return e;
	e = ct4_syn.lookup(key);
	if (e) {
		*half_open = 1;
		return e;
	}
	/* Another CPU may have moved the flow from ct4_syn to ct4 (the client's ACK) between the two
	 * lookups: look once more where it went. */
	return ct4.lookup(key);
}

static __always_inline struct ct4_entry *ct4_find(struct ct4_key *key)
{
	int half_open;

	return ct4_find_half_open(key, &half_open);
}

/* Whether a flow's source was rewritten (nat2): SNAT to this node, or a new source port. */
static __always_inline int ct4_src_nat(__u16 flags)
{
	return flags & (CT_F_SNAT | CT_F_PORT_NAT);
}

/* How long a flow lives since its last packet, by the state its entries have seen. */
static __always_inline __u64 ct4_lifetime_of(__u16 flags, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_TIMEOUT_UDP * LB_NSEC_PER_SEC;
	if (flags & CT_F_CLOSING)
		/* A closed SNAT flow keeps its port while the backend may still hold the connection
		 * in TIME_WAIT: a reused 4-tuple would meet PAWS there. */
		return (ct4_src_nat(flags) ? CT_TIMEOUT_TCP_TIME_WAIT : CT_TIMEOUT_TCP_CLOSE) *
		       LB_NSEC_PER_SEC;
	if (flags & CT_F_ESTABLISHED)
		return CT_TIMEOUT_TCP_ESTABLISHED * LB_NSEC_PER_SEC;
	return CT_TIMEOUT_TCP_SYN * LB_NSEC_PER_SEC;
}

static __always_inline int ct4_expired(const struct ct4_entry *e, __u8 proto, __u64 now)
{
	return ct4_idle(e->last_seen_ns, now) > ct4_lifetime_of(e->flags, proto);
}

/* Records a packet of a known flow: last-seen time (at most one write a second) and the TCP
 * state bits of this direction (written only when they change). */
static __always_inline void ct4_track(struct ct4_entry *e, const struct pkt4 *p, __u64 now)
{
	__u16 flags = e->flags;

	if (ct4_idle(e->last_seen_ns, now) > CT_REFRESH_NS)
		e->last_seen_ns = now;
	if (p->proto != IPPROTO_TCP)
		return;
	if (p->tcp_flags & (TCP_FL_FIN | TCP_FL_RST))
		flags |= CT_F_CLOSING;
	if (p->tcp_flags & TCP_FL_RST)
		flags |= CT_F_RESET;
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

/* The reply key of a flow, from its forward key and entry: replies come from the backend, to the
 * client, or to the hairpin address (a pod reaching itself), or to the SNAT address and port (or
 * the client's new port). */
static __always_inline void ct4_reply_key(const struct ct4_key *fwd, const struct ct4_entry *e,
					  struct ct4_key *rev)
{
	rev->saddr = e->nat_addr;
	rev->sport = e->nat_port;
	if (ct4_src_nat(e->flags)) {
		rev->daddr = e->nat2_addr;
		rev->dport = e->nat2_port;
	} else {
		rev->daddr = (e->flags & CT_F_HAIRPIN) ? bpf_htonl(LB4_HAIRPIN_ADDR_HOST) : fwd->saddr;
		rev->dport = fwd->sport;
	}
	rev->proto = fwd->proto;
	rev->dir = CT_DIR_REPLY;
	rev->pad = 0;
}

/* The forward key of a flow from its reply key and reply entry: the client to the frontend. The
 * client is where the replies go, unless its source was rewritten (then nat2 keeps it) or it
 * reached itself (the replies go to the hairpin address, from its own). */
static __always_inline void ct4_fwd_key_of(const struct ct4_key *rk, const struct ct4_entry *r,
					   struct ct4_key *fk)
{
	if (ct4_src_nat(r->flags)) {
		fk->saddr = r->nat2_addr;
		fk->sport = r->nat2_port;
	} else {
		fk->saddr = (r->flags & CT_F_HAIRPIN) ? rk->saddr : rk->daddr;
		fk->sport = rk->dport;
	}
	fk->daddr = r->nat_addr;
	fk->dport = r->nat_port;
	fk->proto = rk->proto;
	fk->dir = CT_DIR_FWD;
	fk->pad = 0;
}

/* Whether a forward entry's backend is still the one its id names. A half-open flow to a removed
 * backend (a pod on a dead node) would otherwise keep every retransmitted SYN going there. */
static __always_inline int ct4_backend_alive(const struct ct4_entry *e)
{
	__u32 id = e->backend_id;
	struct lb4_backend *be = lb4_backends.lookup(&id);

	return be && be->addr == e->nat_addr && be->port == e->nat_port;
}

/* A dead flow's entries, before its tuple starts a new flow: a new TCP flow is written to
 * ct4_syn, and a stale entry left in ct4 would be found first by the flow's next packet (with
 * the old backend, or the old SNAT port). The reply entry goes too when `reply` is set; a closed
 * flow keeps it (a SNAT port stays held through the backend's TIME_WAIT). Returns NULL for the
 * caller's entry pointer. */
static __always_inline struct ct4_entry *ct4_forget(struct ct4_key *fwd, struct ct4_entry *e,
						     int half_open, int reply)
{
	struct ct4_key rev;
	struct ct4_entry *r;

	if (reply) {
		/* Only this flow's own reply entry: the key may have passed to another flow since. */
		ct4_reply_key(fwd, e, &rev);
		r = ct4_find(&rev);
		if (r && r->nat_addr == fwd->daddr && r->nat_port == fwd->dport &&
		    (!ct4_src_nat(e->flags) ||
		     (r->nat2_addr == fwd->saddr && r->nat2_port == fwd->sport))) {
			ct4.delete(&rev);
			ct4_syn.delete(&rev);
		}
	}
	if (fwd->proto == IPPROTO_TCP && !half_open)
		ct4.delete(fwd);
	return 0;
}

/* Moves a half-open flow's two entries from ct4_syn to ct4 once its client has ACKed. */
static __always_inline void ct4_promote(struct ct4_key *fwd, struct ct4_entry *e)
{
	struct ct4_entry copy = *e;
	struct ct4_key rev;
	struct ct4_entry *r;

	ct4_reply_key(fwd, &copy, &rev);
	r = ct4_syn.lookup(&rev);
	if (r) {
		struct ct4_entry rcopy = *r;

		if (ct4.update(&rev, &rcopy) == 0)
			ct4_syn.delete(&rev);
	}
	if (ct4.update(fwd, &copy) == 0)
		ct4_syn.delete(fwd);
}

/* Whether a live flow of another frontend holds the reply key `rev` (the same client address and
 * port reaching the same backend through two VIPs). A closed holder (a RST, a FIN from both
 * sides, or a FIN from its backend with no forward entry left) or an expired one gives it up; a
 * half-closed one (a FIN from one side) does not: its other side may still send, for as long
 * as the agent's GC keeps it (tcp_time_wait). A holder of the same frontend is this flow's own
 * earlier attempt. */
static __always_inline int ct4_reply_held(struct ct4_key *rev, const struct pkt4 *p, __u64 now)
{
	struct ct4_entry *r = ct4_find(rev);
	struct ct4_entry *f;
	struct ct4_key fk;
	__u16 fflags = 0;
	__u64 last;

	if (!r || (r->nat_addr == p->daddr && r->nat_port == p->dport))
		return 0;
	/* Aged by both entries: a one-way flow (UDP to a server that never answers) refreshes only
	 * its forward entry, keyed client -> its frontend. */
	last = r->last_seen_ns;
	ct4_fwd_key_of(rev, r, &fk);
	f = ct4_find(&fk);
	if (f && f->nat_addr == rev->saddr && f->nat_port == rev->sport) {
		fflags = f->flags;
		if (f->last_seen_ns > last)
			last = f->last_seen_ns;
	} else {
		fflags = r->flags & CT_F_CLOSING;	/* no other side left: closed as this one is */
	}
	if ((r->flags | fflags) & CT_F_RESET)
		return 0;
	if (r->flags & fflags & CT_F_CLOSING)
		return 0;
	if ((r->flags | fflags) & CT_F_CLOSING)	/* half-closed */
		return ct4_idle(last, now) <= CT_HALF_CLOSED_NS;
	return ct4_idle(last, now) <= ct4_lifetime_of(r->flags, p->proto);
}

/* A backend's SYN-ACK on the reply tuple of a flow whose client closed it: the client now talks
 * to the backend directly from the same port (no frontend), so this is not a reply to translate.
 * Judged by the forward entry: a new flow through the frontend on that tuple would have replaced
 * it (and put both entries in ct4_syn, `half_open`: a new flow's SYN-ACK costs nothing more), and
 * a client reusing its port after the backend's RST keeps the old, still live, forward entry. */
static __always_inline int ct4_reply_of_closed(const struct pkt4 *p, const struct ct4_key *rk,
					       const struct ct4_entry *r, int half_open)
{
	struct ct4_entry *f;
	struct ct4_key fk;

	if (half_open || p->proto != IPPROTO_TCP || !(p->tcp_flags & TCP_FL_SYN))
		return 0;
	ct4_fwd_key_of(rk, r, &fk);
	f = ct4_find(&fk);
	return f && (f->flags & CT_F_CLOSING);
}

/* Whether the tuple a packet would reach backend `be` with (no state, no new port) is held by
 * a live flow of another frontend. */
static __always_inline int ct4_tuple_held(const struct pkt4 *p, struct ct4_key *fwd,
					  const struct lb4_backend *be, __u16 flags, __u64 now)
{
	struct ct4_entry e = { .nat_addr = be->addr, .nat_port = be->port, .flags = flags };
	struct ct4_key rev;

	ct4_reply_key(fwd, &e, &rev);
	return ct4_reply_held(&rev, p, now);
}

#define CT_CREATE_OK 0
#define CT_CREATE_FAIL -1	/* an insert failed: forwarded by hash without state */
#define CT_CREATE_HELD -2	/* the reply key belongs to a live flow of another frontend */

/* Creates both entries of a new flow, TCP in ct4_syn and UDP in ct4. `ifindex` is the device
 * the flow came in on: a later packet of the flow from another device is not taken on trust. */
static __always_inline int ct4_create(const struct pkt4 *p, struct ct4_key *fwd,
				      const struct lb4_backend *be, __u32 svc_id, __u32 backend_id,
				      __u16 flags, __u32 ifindex, __u64 now)
{
	struct ct4_key rev;
	struct ct4_entry e = {
		.created_ns = now, .last_seen_ns = now, .nat_addr = be->addr, .nat_port = be->port,
		.flags = flags, .svc_id = svc_id, .backend_id = backend_id, .ifindex = ifindex,
	};
	struct ct4_entry r = e;

	ct4_reply_key(fwd, &e, &rev);
	if (ct4_reply_held(&rev, p, now))
		return CT_CREATE_HELD;
	/* Reply entry first: a flow whose forward entry is missing is re-hashed to the same backend,
	 * but replies without a reply entry would reach the client from the backend's address. */
	r.nat_addr = p->daddr;
	r.nat_port = p->dport;
	r.ifindex = 0;
	if (p->proto == IPPROTO_TCP) {
		/* A dead flow's reply entry under the same key sits in ct4, which replies look up
		 * first: the new flow takes the key over. */
		ct4.delete(&rev);
		if (ct4_syn.update(&rev, &r) || ct4_syn.update(fwd, &e))
			return CT_CREATE_FAIL;
		return CT_CREATE_OK;
	}
	if (ct4.update(&rev, &r) || ct4.update(fwd, &e))
		return CT_CREATE_FAIL;
	return CT_CREATE_OK;
}

/* The forward entry of a TCP flow that lost it while its reply entry lives: a SYN flood evicted
 * the half-open forward entry, the backend answered, and now the client's ACK finds nothing. The
 * hash picked `be` again (the backend set is unchanged, or the reply entry would not match); the
 * reply entry (keyed backend -> client, or -> the SNAT address and port) says which frontend and
 * client the flow belongs to. Both entries go to ct4, as a promotion would. Returns the new
 * forward entry, or NULL when no reply entry matches. */
static __always_inline struct ct4_entry *ct4_rebuild(const struct pkt4 *p, struct ct4_key *fwd,
						     const struct lb4_backend *be,
						     __u32 backend_id, __u16 flags,
						     __be32 snat_addr, __be16 snat_port,
						     __u32 ifindex, __u64 now)
{
	struct ct4_entry e = {
		.created_ns = now, .last_seen_ns = now, .nat_addr = be->addr, .nat_port = be->port,
		.flags = flags, .backend_id = backend_id, .nat2_addr = snat_addr,
		.nat2_port = snat_port, .ifindex = ifindex,
	};
	struct ct4_entry r;
	struct ct4_entry *found;
	struct ct4_key rev;

	ct4_reply_key(fwd, &e, &rev);
	found = ct4_find(&rev);
	if (!found || found->nat_addr != p->daddr || found->nat_port != p->dport ||
	    found->backend_id != backend_id || (found->flags & CT_F_CLOSING) ||
	    ct4_expired(found, p->proto, now))
		return 0;
	if ((found->flags & (CT_F_HAIRPIN | CT_F_SNAT | CT_F_EXTERNAL)) !=
	    (flags & (CT_F_HAIRPIN | CT_F_SNAT | CT_F_EXTERNAL)))
		return 0;
	if ((flags & CT_F_SNAT) && (found->nat2_addr != p->saddr || found->nat2_port != p->sport))
		return 0;
	r = *found;
	e.svc_id = r.svc_id;
	e.created_ns = r.created_ns;
	e.flags = (r.flags & (CT_F_HAIRPIN | CT_F_EXTERNAL | CT_F_SNAT)) | CT_F_ESTABLISHED;
	if (ct4.update(&rev, &r))
		return 0;
	ct4_syn.delete(&rev);
	if (ct4.update(fwd, &e))
		return 0;
	ct4_syn.delete(fwd);	/* a stale half-open copy, if one was left */
	return ct4.lookup(fwd);
}

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

#endif
