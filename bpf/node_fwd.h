/* node_fwd.h: sending a flow on from a node device to a backend on another node: the route
 * (bpf_fib_lookup), the SNAT port that brings the replies back here, and the TTL of a packet
 * this node forwards itself. */
#ifndef EBPFLB_NODE_FWD_H
#define EBPFLB_NODE_FWD_H

#include <uapi/linux/if_ether.h>

#include "lb_maps.h"
#include "parse.h"
#include "flow_hash.h"
#include "counters.h"
#include "conntrack.h"

#define FIB_AF_INET 2
#define LB4_SNAT_TRIES 16

/* bcc 0.26 declares bpf_redirect_neigh with two arguments; the kernel's helper takes four. */
static long (*lb_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				 __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/* Sends the packet out of `ifindex`, the next hop resolved by the kernel; a refusal (TC_ACT_SHOT,
 * only for flags the helper does not know) is a drop counted as forward_fail. */
static __always_inline int lb_send_out(__u32 ifindex)
{
	int r = lb_redirect_neigh(ifindex, 0, 0, 0);

	if (r == TC_ACT_SHOT)
		lb_count(STAT_FORWARD_FAIL);
	return r;
}

/* What the decision core (lb4_core.h) says of a packet to a frontend. */
enum lb4_verdict {
	NV_PASS,	/* not ours */
	NV_DROP,	/* counted already */
	NV_LOCAL,	/* DNAT to a backend reached by the stack (this node's, or a pod's route) */
	NV_REMOTE,	/* DNAT + SNAT (or a reply's reverse), then out of n->ifindex */
	NV_REJECT,	/* no backend: answer with RST / ICMP unreachable (TC only) */
	NV_TO_STACK,	/* XDP cannot finish: leave the packet untouched to TC */
	NV_TOO_BIG,	/* does not fit the device towards the backend: ICMP fragmentation needed */
};

/* What a packet is rewritten to, and where it goes. */
struct lb4_nat {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;
	__be16 sport;
	__u32 svc_id;
	__u32 backend_id;
	__u32 ifindex;		/* NV_REMOTE: the device the FIB chose */
	__u8 smac[ETH_ALEN];	/* NV_REMOTE with fib_ok: the Ethernet header to send with */
	__u8 dmac[ETH_ALEN];
	__u16 mtu;		/* NV_TOO_BIG: the MTU of the device towards the backend */
	__u8 fib_ok;
	__u8 new_flow;
	__u8 reply;
	__u8 stateless;	/* TCP of an unknown flow sent by hash, no state (NV_LOCAL) */
};

/* The route of a rewritten packet. Returns BPF_FIB_LKUP_RET_*; the out device is in n->ifindex
 * (also for NO_NEIGH and FRAG_NEEDED), the Ethernet addresses on success. At TC the kernel also
 * checks the packet against the out device's MTU (FRAG_NEEDED, with the MTU in n->mtu); at XDP
 * it does not. */
static __always_inline int lb4_fib(void *ctx, const struct pkt4 *p, __be32 saddr, __be16 sport,
				   __be32 daddr, __be16 dport, __u32 ifindex, struct lb4_nat *n)
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
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		n->mtu = fib.mtu_result;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(n->smac, fib.smac, ETH_ALEN);
		__builtin_memcpy(n->dmac, fib.dmac, ETH_ALEN);
		n->fib_ok = 1;
	}
	return rc;
}

/* A route was found (the neighbour may still be unresolved, or the packet too big for the
 * device): n->ifindex is the device it leaves by. */
static __always_inline int lb4_fib_routed(int rc)
{
	return rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH ||
	       rc == BPF_FIB_LKUP_RET_FRAG_NEEDED;
}

#define SNAT_PORT_FREE 0
#define SNAT_PORT_BUSY 1
#define SNAT_PORT_TIME_WAIT 2	/* a closed flow past tcp_close, still in the backend's TIME_WAIT */

/* Whether a SNAT port (the reply key k) is taken, in either conntrack table. The flow holding it
 * is aged by both of its entries, as the agent's GC does: one-way traffic (UDP from a client
 * that expects no answer) refreshes only the forward entry, and the port must stay its own. An
 * expired flow's reply entry is deleted, so the port can be taken again. */
static __always_inline int snat_port_state(struct ct4_key *k, __u64 now)
{
	struct ct4_entry *e = ct4.lookup(k);
	struct ct4_entry *f;
	struct ct4_key fk;
	__u64 last, idle;
	__u16 flags;

	if (!e)
		e = ct4_syn.lookup(k);
	if (!e)
		return SNAT_PORT_FREE;
	last = e->last_seen_ns;
	flags = e->flags;
	ct4_fwd_key_of(k, e, &fk);
	f = ct4_find(&fk);
	if (f && ct4_src_nat(f->flags) && f->nat2_addr == k->daddr && f->nat2_port == k->dport &&
	    f->nat_addr == k->saddr && f->nat_port == k->sport) {
		if (f->last_seen_ns > last)
			last = f->last_seen_ns;
		flags |= f->flags;
	}
	idle = ct4_idle(last, now);
	if (idle > ct4_lifetime_of(flags, k->proto)) {
		ct4.delete(k);
		ct4_syn.delete(k);
		return SNAT_PORT_FREE;
	}
	if ((flags & CT_F_CLOSING) && idle > CT_TIMEOUT_TCP_CLOSE * LB_NSEC_PER_SEC)
		return SNAT_PORT_TIME_WAIT;
	return SNAT_PORT_BUSY;
}

/* Whether a SNAT flow still owns its port: the reply entry under it names this client. An LRU
 * eviction (or an older agent's aging) may have handed the port to another flow; this flow's
 * packets must not go on with a tuple whose replies reach someone else. */
static __always_inline int ct4_snat_owned(struct ct4_key *fwd, const struct ct4_entry *e)
{
	struct ct4_key rev;
	struct ct4_entry *r;

	ct4_reply_key(fwd, e, &rev);
	r = ct4_find(&rev);
	return r && r->nat2_addr == fwd->saddr && r->nat2_port == fwd->sport &&
	       r->nat_addr == fwd->daddr && r->nat_port == fwd->dport;
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

/* The first SNAT port probed for a flow: spread by the flow hash, and repeatable (a lost forward
 * entry is rebuilt from it, ct4_rebuild). */
static __always_inline __be16 snat_first_port(const struct pkt4 *p)
{
	return bpf_htons(LB4_SNAT_PORT_MIN + flow_hash4(p) % (LB4_SNAT_PORT_MAX - LB4_SNAT_PORT_MIN + 1));
}

/* Creates both entries of a new flow whose source becomes snat_addr and a port of the SNAT
 * range that no live flow to the same backend uses: to a backend on another node (flags
 * CT_F_EXTERNAL | CT_F_SNAT, snat_addr this node's), or with only a new port (CT_F_PORT_NAT,
 * snat_addr the client's own). Returns 0 with the port in n->sport, or -1 when none was free
 * within LB4_SNAT_TRIES probes. The first probe is the flow's hash, so the choice is spread and
 * repeatable. A closed flow keeps its port through the backend's TIME_WAIT; only when every
 * probe finds a port taken is the first such one reused (counted: the range is too small for the
 * rate), rather than dropping the new flow. */
static __always_inline int ct4_create_snat(const struct pkt4 *p, struct ct4_key *fwd,
					   const struct lb4_backend *be, __u32 svc_id,
					   __u32 backend_id, __be32 snat_addr, __u16 flags,
					   __u32 ifindex, __u64 now, struct lb4_nat *n)
{
	__u32 range = LB4_SNAT_PORT_MAX - LB4_SNAT_PORT_MIN + 1;
	__u32 start = flow_hash4(p);
	struct ct4_entry e = {
		.created_ns = now, .last_seen_ns = now, .nat_addr = be->addr, .nat_port = be->port,
		.flags = flags, .svc_id = svc_id, .backend_id = backend_id,
		.nat2_addr = snat_addr, .ifindex = ifindex,
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
	r.ifindex = 0;
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

/* TTL decrement for a packet TC sends on itself; -1 when it is exhausted. */
static __always_inline int tc_ttl_dec(struct __sk_buff *skb, __u32 l3_off)
{
	__u32 off = l3_off + offsetof(struct iphdr, ttl);
	__u16 old, new;
	__u8 *ttl = (__u8 *)&new;

	if (bpf_skb_load_bytes(skb, off, &old, sizeof(old)))
		return -1;
	new = old;
	if (*ttl <= 1)
		return -1;
	*ttl -= 1;	/* TTL is the first byte of the TTL/protocol word */
	if (bpf_l3_csum_replace(skb, l3_off + offsetof(struct iphdr, check), old, new, sizeof(new)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) ? -1 : 0;
}

#endif
