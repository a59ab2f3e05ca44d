/* lb4_tc.c: every program of the data plane (bcc compiles one main file; see below).
 *
 * Pod-facing devices (the host side of each pod's veth), at TC:
 *   lb4_from_pod (ingress: packets leaving a pod): a packet to a frontend is DNATed to a backend,
 *                chosen by conntrack for a known flow, else by the flow hash over the frontend's
 *                slots; a new flow gets conntrack entries for both directions.
 *   lb4_to_pod   (egress: packets entering a pod): a backend's reply is rewritten back to the
 *                frontend's address and port. Doing it here, on the client-facing side, keeps the
 *                node's rp_filter (the reply arrives from the backend's own address) and the
 *                kernel's conntrack view consistent.
 * Node devices (traffic from outside the cluster), at XDP or TC: lb4_node_xdp, lb4_node_in and
 * lb4_node_out, described at their section below.
 * Everything else passes untouched. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "lb_maps.h"
#include "parse.h"
#include "flow_hash.h"
#include "nat.h"
#include "reject.h"
#include "icmp.h"
#include "nat_xdp.h"

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

#define LB_NSEC_PER_SEC 1000000000ULL

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

/* How long an entry lives since its last packet, by what its direction has seen. */
static __always_inline __u64 ct4_lifetime(const struct ct4_entry *e, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_TIMEOUT_UDP * LB_NSEC_PER_SEC;
	if (e->flags & CT_F_CLOSING)
		/* A closed SNAT flow keeps its port while the backend may still hold the connection
		 * in TIME_WAIT: a reused 4-tuple would meet PAWS there. */
		return ((e->flags & CT_F_SNAT) ? CT_TIMEOUT_TCP_TIME_WAIT : CT_TIMEOUT_TCP_CLOSE) *
		       LB_NSEC_PER_SEC;
	if (e->flags & CT_F_ESTABLISHED)
		return CT_TIMEOUT_TCP_ESTABLISHED * LB_NSEC_PER_SEC;
	return CT_TIMEOUT_TCP_SYN * LB_NSEC_PER_SEC;
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

/* The reply key of a flow, from its forward key and entry: replies come from the backend, to the
 * client, or to the hairpin address (a pod reaching itself), or to the SNAT address and port. */
static __always_inline void ct4_reply_key(const struct ct4_key *fwd, const struct ct4_entry *e,
					  struct ct4_key *rev)
{
	rev->saddr = e->nat_addr;
	rev->sport = e->nat_port;
	if (e->flags & CT_F_SNAT) {
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

/* A dead flow's forward entry, before its tuple starts a new flow: a new TCP flow is written to
 * ct4_syn, and a stale entry left in ct4 would be found first by the flow's next packet (with
 * the old backend, or the old SNAT port). Returns NULL for the caller's entry pointer. */
static __always_inline struct ct4_entry *ct4_forget(struct ct4_key *fwd, int half_open)
{
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

	ct4_reply_key(fwd, &e, &rev);
	/* Reply entry first: a flow whose forward entry is missing is re-hashed to the same backend,
	 * but replies without a reply entry would reach the client from the backend's address. */
	r.nat_addr = p->daddr;
	r.nat_port = p->dport;
	if (p->proto == IPPROTO_TCP) {
		/* A closed flow's reply entry under the same key (the client reused its port towards
		 * another frontend of the same backend) sits in ct4, which replies look up first: the
		 * new flow takes the key over. */
		if (ct4.lookup(&rev))
			ct4.delete(&rev);
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

	if (!a || now - a->last_used_ns > (__u64)svc->affinity_timeout * LB_NSEC_PER_SEC)
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

/* loadBalancerSourceRanges: is the client inside one of the frontend's prefixes? */
static __always_inline int lb4_source_allowed(const struct lb4_svc *svc, __be32 saddr)
{
	struct lb4_src_range_key k = { .prefixlen = 64, .svc_id = svc->svc_id, .addr = saddr };

	return lb4_src_ranges.lookup(&k) != 0;
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
 * packet. `quoted` is the side of the quoted packet that was NATed: NAT_DST for an error to the
 * client about its request (the quoted destination is the backend, the frontend again), NAT_SRC
 * for an error from the client about a reply (the quoted source is the frontend, the backend
 * again). The outer address on the other side is rewritten too when it is that same address
 * (the backend, or the frontend, sent the error itself). */
static __always_inline int lb4_icmp_nat(struct __sk_buff *skb, const struct icmp4_err *e,
					const struct ct4_entry *ct, int quoted)
{
	__be32 quoted_addr = quoted == NAT_DST ? e->in_daddr : e->in_saddr;
	__be32 outer_addr = quoted == NAT_DST ? e->saddr : e->daddr;

	if ((outer_addr == quoted_addr && icmp4_rewrite_outer(skb, e, !quoted, ct->nat_addr)) ||
	    icmp4_rewrite_inner(skb, e, quoted, ct->nat_addr, ct->nat_port)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	lb_count(STAT_ICMP_NAT);
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
		r = lb4_icmp_client(skb, CT_DIR_FWD, 0, 0);
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
	ct = ct4_find_half_open(&fk, &half_open);
	now = bpf_ktime_get_ns();
	/* An expired entry, or a SYN reusing the tuple of a closed flow, starts a new flow. */
	if (ct && (now - ct->last_seen_ns > ct4_lifetime(ct, p.proto) ||
		   (tcp_syn_only(&p) && (ct->flags & CT_F_CLOSING))))
		ct = ct4_forget(&fk, half_open);
	if (ct) {
		ct4_track(ct, &p, now);
		new_addr = ct->nat_addr;
		new_port = ct->nat_port;
		backend_id = ct->backend_id;
		if (half_open && (ct->flags & CT_F_ESTABLISHED) && !(ct->flags & CT_F_CLOSING))
			ct4_promote(&fk, ct);
	} else {
		if ((svc->flags & LB4_SVC_F_SRC_RANGES) && !lb4_source_allowed(svc, p.saddr)) {
			lb_count(STAT_SOURCE_DENIED);
			return TC_ACT_SHOT;
		}
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
		r = lb4_icmp_client(skb, CT_DIR_REPLY, 0, 0);
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


/* ==== north-south: node devices ====
 *
 *   lb4_node_xdp (XDP on a node device) and lb4_node_in (TC ingress) take traffic from outside the
 *                cluster to NodePort, LoadBalancer and ExternalIP frontends. A backend on this
 *                node gets the packet DNATed and handed to the stack (the client's address is
 *                kept); a backend on another node gets it DNATed and SNATed to this node's address
 *                and sent straight back out, so its replies return here. Replies of those SNAT
 *                flows are translated back to frontend -> client and sent out the same way.
 *                A ClusterIP reached from outside is dropped.
 *   lb4_node_out (TC egress) turns replies of local backends back into frontend -> client.
 *
 * XDP finishes what it can on its own and leaves the rest (no neighbour entry yet, a reject to
 * send) untouched to lb4_node_in, which is attached behind it in XDP mode. */

#define FIB_AF_INET 2
#define LB4_SNAT_TRIES 16

/* bcc 0.26 declares bpf_redirect_neigh with two arguments; the kernel's helper takes four. */
static long (*lb_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				 __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

enum node_verdict {
	NV_PASS,	/* not ours */
	NV_DROP,	/* counted already */
	NV_LOCAL,	/* DNAT to a backend on this node, then the stack */
	NV_REMOTE,	/* DNAT + SNAT (or a reply's reverse), then out of n->ifindex */
	NV_REJECT,	/* no backend: answer with RST / ICMP unreachable (TC only) */
	NV_TO_STACK,	/* XDP cannot finish: leave the packet untouched to TC */
};

/* What a node-device packet is rewritten to, and where it goes. */
struct node_nat {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;
	__be16 sport;
	__u32 svc_id;
	__u32 backend_id;
	__u32 ifindex;		/* NV_REMOTE: the device the FIB chose */
	__u8 smac[ETH_ALEN];	/* NV_REMOTE with fib_ok: the Ethernet header to send with */
	__u8 dmac[ETH_ALEN];
	__u8 fib_ok;
	__u8 new_flow;
	__u8 reply;
};

/* The route of a rewritten packet. Returns BPF_FIB_LKUP_RET_*; the out device is in n->ifindex
 * (also for NO_NEIGH), the Ethernet addresses on success. */
static __always_inline int lb4_fib(void *ctx, const struct pkt4 *p, __be32 saddr, __be16 sport,
				   __be32 daddr, __be16 dport, __u32 ifindex, struct node_nat *n)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	fib.family = FIB_AF_INET;
	fib.l4_protocol = p->proto;
	fib.sport = sport;
	fib.dport = dport;
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	n->ifindex = fib.ifindex;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(n->smac, fib.smac, ETH_ALEN);
		__builtin_memcpy(n->dmac, fib.dmac, ETH_ALEN);
		n->fib_ok = 1;
	}
	return rc;
}

#define SNAT_PORT_FREE 0
#define SNAT_PORT_BUSY 1
#define SNAT_PORT_TIME_WAIT 2	/* a closed flow past tcp_close, still in the backend's TIME_WAIT */

/* Whether a SNAT port (the reply key k) is taken, in either conntrack table. An expired entry is
 * deleted, so the port can be taken again. */
static __always_inline int snat_port_state(struct ct4_key *k, __u64 now)
{
	struct ct4_entry *e = ct4.lookup(k);
	__u64 idle;

	if (!e)
		e = ct4_syn.lookup(k);
	if (!e)
		return SNAT_PORT_FREE;
	idle = now - e->last_seen_ns;
	if (idle > ct4_lifetime(e, k->proto)) {
		ct4.delete(k);
		ct4_syn.delete(k);
		return SNAT_PORT_FREE;
	}
	if ((e->flags & CT_F_CLOSING) && idle > CT_TIMEOUT_TCP_CLOSE * LB_NSEC_PER_SEC)
		return SNAT_PORT_TIME_WAIT;
	return SNAT_PORT_BUSY;
}

/* Writes both entries of a SNAT flow with the reply key `rev` (its port chosen). 0, or -1 when
 * the port was taken meanwhile (insert, not update: another CPU may race for it). */
static __always_inline int ct4_insert_snat(const struct pkt4 *p, struct ct4_key *fwd,
					   struct ct4_key *rev, struct ct4_entry *e,
					   struct ct4_entry *r)
{
	e->nat2_port = rev->dport;
	if (p->proto == IPPROTO_TCP) {
		if (ct4_syn.insert(rev, r))
			return -1;
		if (ct4_syn.update(fwd, e)) {
			ct4_syn.delete(rev);
			return -1;
		}
		return 0;
	}
	if (ct4.insert(rev, r))
		return -1;
	if (ct4.update(fwd, e)) {
		ct4.delete(rev);
		return -1;
	}
	return 0;
}

/* Creates both entries of a new flow to a backend on another node, with a source port of
 * snat_addr that no live flow to the same backend uses. Returns 0 with the port in n->sport,
 * or -1 when none was free within LB4_SNAT_TRIES probes. The first probe is the flow's hash, so
 * the choice is spread and repeatable. A closed flow keeps its port through the backend's
 * TIME_WAIT; only when every probe finds a port taken is the first such one reused (counted:
 * the range is too small for the rate), rather than dropping the new flow. */
static __always_inline int ct4_create_snat(const struct pkt4 *p, struct ct4_key *fwd,
					   const struct lb4_backend *be, __u32 svc_id,
					   __u32 backend_id, __be32 snat_addr, struct node_nat *n)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 range = LB4_SNAT_PORT_MAX - LB4_SNAT_PORT_MIN + 1;
	__u32 start = flow_hash4(p);
	struct ct4_entry e = {
		.created_ns = now, .last_seen_ns = now, .nat_addr = be->addr, .nat_port = be->port,
		.flags = CT_F_EXTERNAL | CT_F_SNAT, .svc_id = svc_id, .backend_id = backend_id,
		.nat2_addr = snat_addr,
	};
	struct ct4_entry r = e;
	struct ct4_key rev = {
		.saddr = be->addr, .daddr = snat_addr, .sport = be->port, .proto = p->proto,
		.dir = CT_DIR_REPLY,
	};
	__be16 time_wait = 0;
	int i, state;

	r.nat_addr = p->daddr;
	r.nat_port = p->dport;
	r.nat2_addr = p->saddr;
	r.nat2_port = p->sport;
	for (i = 0; i < LB4_SNAT_TRIES; i++) {
		rev.dport = bpf_htons(LB4_SNAT_PORT_MIN + (start + i) % range);
		state = snat_port_state(&rev, now);
		if (state == SNAT_PORT_TIME_WAIT && !time_wait)
			time_wait = rev.dport;
		if (state != SNAT_PORT_FREE)
			continue;
		if (ct4_insert_snat(p, fwd, &rev, &e, &r) == 0) {
			n->sport = rev.dport;
			return 0;
		}
	}
	if (!time_wait)
		return -1;
	rev.dport = time_wait;
	ct4.delete(&rev);
	ct4_syn.delete(&rev);
	if (ct4_insert_snat(p, fwd, &rev, &e, &r))
		return -1;
	lb_count(STAT_SNAT_REUSE);
	n->sport = rev.dport;
	return 0;
}

/* A packet from outside to a frontend. */
static __always_inline int lb4_node_frontend(void *ctx, const struct pkt4 *p,
					     const struct lb4_svc *svc, __u32 ingress, int xdp,
					     struct node_nat *n)
{
	struct lb4_backend *be = 0;
	struct lb4_node_if *nif;
	struct ct4_entry *ct;
	struct ct4_key fk;
	int half_open = 0;
	int remote;
	__u64 now;
	int rc;

	if ((svc->flags & LB4_SVC_KIND_MASK) == LB4_SVC_KIND_CLUSTERIP) {
		lb_count(STAT_EXTERNAL_CLUSTERIP);
		return NV_DROP;
	}
	n->svc_id = svc->svc_id;
	n->saddr = p->saddr;
	n->sport = p->sport;
	ct4_key_of(p, CT_DIR_FWD, &fk);
	ct = ct4_find_half_open(&fk, &half_open);
	now = bpf_ktime_get_ns();
	if (ct && (now - ct->last_seen_ns > ct4_lifetime(ct, p->proto) ||
		   (tcp_syn_only(p) && (ct->flags & CT_F_CLOSING))))
		ct = ct4_forget(&fk, half_open);
	if (ct) {
		n->daddr = ct->nat_addr;
		n->dport = ct->nat_port;
		n->backend_id = ct->backend_id;
		if (ct->flags & CT_F_SNAT) {
			n->saddr = ct->nat2_addr;
			n->sport = ct->nat2_port;
			rc = lb4_fib(ctx, p, n->saddr, n->sport, n->daddr, n->dport, ingress, n);
			if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
				lb_count(STAT_FORWARD_FAIL);
				return NV_DROP;
			}
			if (xdp && !n->fib_ok)
				return NV_TO_STACK;	/* before tracking: TC sees the packet again */
		}
		ct4_track(ct, p, now);
		if (half_open && (ct->flags & CT_F_ESTABLISHED) && !(ct->flags & CT_F_CLOSING))
			ct4_promote(&fk, ct);
		return (ct->flags & CT_F_SNAT) ? NV_REMOTE : NV_LOCAL;
	}

	/* A new flow. */
	if ((svc->flags & LB4_SVC_F_SRC_RANGES) && !lb4_source_allowed(svc, p->saddr)) {
		lb_count(STAT_SOURCE_DENIED);
		return NV_DROP;
	}
	n->backend_id = 0;
	if (svc->affinity_timeout)
		n->backend_id = lb4_affinity_backend(p, svc, now, &be);
	if (!n->backend_id)
		n->backend_id = lb4_select_backend(p, svc, &be);
	if (!n->backend_id || !be) {
		if (xdp && !(svc->flags & LB4_SVC_F_ETP_LOCAL))
			return NV_TO_STACK;	/* TC sends the reject */
		lb_count(STAT_NO_BACKEND);
		/* Local policy and no backend here: the load balancer's health check already steers
		 * clients away from this node, so the packet is dropped, as kube-proxy does. */
		return (svc->flags & LB4_SVC_F_ETP_LOCAL) ? NV_DROP : NV_REJECT;
	}
	n->daddr = be->addr;
	n->dport = be->port;
	if (lb4_bad_source(p)) {
		lb_count(STAT_BAD_SOURCE);
		return NV_DROP;
	}
	rc = lb4_fib(ctx, p, p->saddr, p->sport, be->addr, be->port, ingress, n);
	nif = 0;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		nif = lb4_node_ifs.lookup(&n->ifindex);
	remote = nif != 0;
	if (!remote) {
		if (p->proto == IPPROTO_TCP && !tcp_syn_only(p)) {
			lb_count(STAT_TCP_NO_STATE);	/* forwarded by hash, no state (as for pods) */
			return NV_LOCAL;
		}
		if (ct4_create(p, &fk, be, svc->svc_id, n->backend_id, CT_F_EXTERNAL))
			lb_count(STAT_CT_INSERT_FAIL);
		else
			lb_count(STAT_CT_INSERT);
	} else {
		if (svc->flags & LB4_SVC_F_ETP_LOCAL) {
			lb_count(STAT_FORWARD_FAIL);	/* Local policy never leaves the node */
			return NV_DROP;
		}
		if (xdp && !n->fib_ok)
			return NV_TO_STACK;
		if (p->proto == IPPROTO_TCP && !tcp_syn_only(p)) {
			/* Without state there is no SNAT port to bring the replies back: drop, the
			 * client's retransmission or a new connection recovers. */
			lb_count(STAT_TCP_NO_STATE);
			return NV_DROP;
		}
		if (ct4_create_snat(p, &fk, be, svc->svc_id, n->backend_id, nif->addr, n)) {
			lb_count(STAT_SNAT_EXHAUSTED);
			return NV_DROP;
		}
		n->saddr = nif->addr;
		lb_count(STAT_CT_INSERT);
	}
	if (svc->affinity_timeout)
		lb4_affinity_update(p, svc, n->backend_id, now);
	n->new_flow = 1;
	return remote ? NV_REMOTE : NV_LOCAL;
}

/* A reply of a SNAT flow, from the backend on another node to this node's SNAT port: it goes
 * back to the client as coming from the frontend. */
static __always_inline int lb4_node_snat_reply(void *ctx, const struct pkt4 *p, __u32 ingress,
					       int xdp, struct node_nat *n)
{
	__u16 port = bpf_ntohs(p->dport);
	struct ct4_entry *ct;
	struct ct4_key rk;
	int rc;

	if (port < LB4_SNAT_PORT_MIN || port > LB4_SNAT_PORT_MAX)
		return NV_PASS;
	ct4_key_of(p, CT_DIR_REPLY, &rk);
	ct = ct4_find(&rk);
	if (!ct || !(ct->flags & CT_F_SNAT))
		return NV_PASS;
	n->saddr = ct->nat_addr;
	n->sport = ct->nat_port;
	n->daddr = ct->nat2_addr;
	n->dport = ct->nat2_port;
	n->svc_id = ct->svc_id;
	n->backend_id = ct->backend_id;
	n->reply = 1;
	rc = lb4_fib(ctx, p, n->saddr, n->sport, n->daddr, n->dport, ingress, n);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		lb_count(STAT_FORWARD_FAIL);
		return NV_DROP;
	}
	if (xdp && !n->fib_ok)
		return NV_TO_STACK;
	ct4_track(ct, p, bpf_ktime_get_ns());
	return NV_REMOTE;
}

static __always_inline int lb4_node_decide(void *ctx, const struct pkt4 *p, __u32 ingress, int xdp,
					   struct node_nat *n)
{
	struct lb4_svc_key sk = { .vip = p->daddr, .port = p->dport, .proto = p->proto };
	struct lb4_svc *svc = lb4_services.lookup(&sk);

	if (svc && (svc->flags & LB4_SVC_F_ETP_LOCAL)) {
		/* externalTrafficPolicy Local: traffic from outside uses this node's backends. */
		sk.scope = LB4_SCOPE_EXTERNAL;
		svc = lb4_services.lookup(&sk);
		if (!svc) {
			lb_count(STAT_NO_BACKEND);
			return NV_DROP;
		}
	}
	if (svc)
		return lb4_node_frontend(ctx, p, svc, ingress, xdp, n);
	return lb4_node_snat_reply(ctx, p, ingress, xdp, n);
}

static __always_inline void lb4_node_count(const struct node_nat *n, __u32 len)
{
	if (n->new_flow)
		lb_count(STAT_DNAT_NEW);
	lb_count_flow(n->svc_id, n->backend_id, len, n->reply, n->new_flow);
}

int lb4_node_xdp(struct xdp_md *ctx)
{
	struct node_nat n = {};
	struct pkt4 p = {};
	__u32 len;
	int v;

	/* Anything XDP does not finish is counted once, by lb4_node_in behind it. */
	if (lb4_parse_xdp(ctx, &p) != PARSE_OK)
		return XDP_PASS;
	v = lb4_node_decide(ctx, &p, ctx->ingress_ifindex, 1, &n);
	if (v == NV_PASS)
		return XDP_PASS;
	if (v == NV_DROP)
		return XDP_DROP;
	if (v != NV_LOCAL && v != NV_REMOTE) {
		lb_count(STAT_XDP_TO_TC);
		return XDP_PASS;
	}
	len = (void *)(long)ctx->data_end - (void *)(long)ctx->data;
	if (xdp_rewrite(ctx, &p, NAT_DST, n.daddr, n.dport)) {
		lb_count(STAT_NAT_FAIL);
		return XDP_DROP;
	}
	if (v == NV_LOCAL) {
		lb4_node_count(&n, len);
		return XDP_PASS;
	}
	if (xdp_rewrite(ctx, &p, NAT_SRC, n.saddr, n.sport) || xdp_set_macs(ctx, n.smac, n.dmac)) {
		lb_count(STAT_NAT_FAIL);
		return XDP_DROP;
	}
	if (xdp_ttl_dec(ctx, &p)) {
		lb_count(STAT_FORWARD_FAIL);
		return XDP_DROP;
	}
	lb4_node_count(&n, len);
	lb_count(STAT_XDP_FORWARD);
	if (n.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(n.ifindex, 0);
}

/* TTL decrement for a packet TC sends on itself; -1 when it is exhausted. */
static __always_inline int tc_ttl_dec(struct __sk_buff *skb, const struct pkt4 *p)
{
	__u32 off = p->l3_off + offsetof(struct iphdr, ttl);
	__u16 old, new;
	__u8 *ttl = (__u8 *)&new;

	if (bpf_skb_load_bytes(skb, off, &old, sizeof(old)))
		return -1;
	new = old;
	if (*ttl <= 1)
		return -1;
	*ttl -= 1;	/* TTL is the first byte of the TTL/protocol word */
	if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old, new, sizeof(new)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) ? -1 : 0;
}

/* Sends a translated ICMP error on from a node device: its outer source may now be this node's
 * own address, which the stack would take for a martian. */
static __always_inline int lb4_icmp_send_on(struct __sk_buff *skb, const struct icmp4_err *e,
					    __be32 saddr, __be32 daddr)
{
	struct pkt4 p = { .l3_off = e->l3_off, .proto = IPPROTO_ICMP };
	struct node_nat n = {};
	int rc = lb4_fib(skb, &p, saddr, 0, daddr, 0, skb->ifindex, &n);

	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) ||
	    tc_ttl_dec(skb, &p)) {
		lb_count(STAT_FORWARD_FAIL);
		return TC_ACT_SHOT;
	}
	lb_count(STAT_ICMP_NAT);
	return lb_redirect_neigh(n.ifindex, 0, 0, 0);
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

int lb4_node_in(struct __sk_buff *skb)
{
	struct node_nat n = {};
	struct pkt4 p = {};
	int r;

	lb4_pull_headers(skb);
	r = lb4_parse(skb, &p);
	if (r == PARSE_NOT_OURS) {
		r = lb4_node_icmp_in(skb);
		return r >= 0 ? r : lb4_pass_verdict(PARSE_NOT_OURS);
	}
	if (r != PARSE_OK)
		return lb4_pass_verdict(r);
	r = lb4_node_decide(skb, &p, skb->ifindex, 0, &n);
	if (r == NV_PASS || r == NV_TO_STACK)
		return lb4_pass_verdict(PARSE_NOT_OURS);
	if (r == NV_DROP)
		return TC_ACT_SHOT;
	if (r == NV_REJECT)
		return lb4_reject(skb, &p);
	if (lb4_rewrite(skb, &p, NAT_DST, n.daddr, n.dport)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	if (r == NV_LOCAL) {
		lb4_node_count(&n, skb->len);
		return TC_ACT_OK;
	}
	if (lb4_rewrite(skb, &p, NAT_SRC, n.saddr, n.sport)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	/* The packet now comes from this node's own address: handed to the stack it would be a
	 * martian, so it goes out directly, the neighbour resolved by the kernel. */
	if (tc_ttl_dec(skb, &p)) {
		lb_count(STAT_FORWARD_FAIL);
		return TC_ACT_SHOT;
	}
	lb4_node_count(&n, skb->len);
	lb_count(STAT_NODE_FORWARD);
	return lb_redirect_neigh(n.ifindex, 0, 0, 0);
}

int lb4_node_out(struct __sk_buff *skb)
{
	struct ct4_entry *ct;
	struct ct4_key rk;
	struct pkt4 p = {};
	int r;

	lb4_pull_headers(skb);
	r = lb4_parse(skb, &p);
	if (r == PARSE_NOT_OURS) {
		/* A local backend's ICMP error to a client outside: from the frontend again. */
		r = lb4_icmp_client(skb, CT_DIR_REPLY, CT_F_EXTERNAL | CT_F_SNAT, CT_F_EXTERNAL);
		return r >= 0 ? r : TC_ACT_OK;
	}
	if (r != PARSE_OK)
		return TC_ACT_OK;
	ct4_key_of(&p, CT_DIR_REPLY, &rk);
	ct = ct4_find(&rk);
	/* Only replies of flows from outside to this node's backends; a pod's own flows are
	 * translated at its device, and SNAT flows on ingress. */
	if (!ct || (ct->flags & (CT_F_EXTERNAL | CT_F_SNAT)) != CT_F_EXTERNAL)
		return TC_ACT_OK;
	ct4_track(ct, &p, bpf_ktime_get_ns());
	if (lb4_rewrite(skb, &p, NAT_SRC, ct->nat_addr, ct->nat_port)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return TC_ACT_OK;
}
