/* snat.tmpl.h: the SNAT port of a flow sent on to a backend on another node, or of a flow given a
 * source port of its own, for one IP family (a template: see family4.tmpl.h). Needs node_fwd.h and
 * conntrack.tmpl.h. */

/* Whether a SNAT port (the reply key k) is taken, in either conntrack table. The flow holding it
 * is aged by both of its entries, as the agent's GC does: one-way traffic (UDP from a client
 * that expects no answer) refreshes only the forward entry, and the port must stay its own. An
 * expired flow's reply entry is deleted, so the port can be taken again. */
static __always_inline int CT_(snat_port_state)(struct FAM_CT_KEY *k, __u64 now)
{
	struct FAM_CT_ENTRY *e = CT_(get)(k);
	struct FAM_CT_ENTRY *f;
	struct FAM_CT_KEY fk;
	__u64 last, idle;
	__u16 flags;

	if (!e)
		e = CT_(syn_get)(k);
	if (!e)
		return SNAT_PORT_FREE;
	last = e->last_seen_ns;
	flags = e->flags;
	CT_(fwd_key_of)(k, e, &fk);
	f = CT_(find)(&fk);
	if (f && ct_src_nat(f->flags) && FAM_ADDR_EQ(f->nat2_addr, k->daddr) &&
	    f->nat2_port == k->dport && FAM_ADDR_EQ(f->nat_addr, k->saddr) &&
	    f->nat_port == k->sport) {
		if (f->last_seen_ns > last)
			last = f->last_seen_ns;
		flags |= f->flags;
	}
	idle = ct_idle(last, now);
	if (idle > ct_lifetime_of(flags, k->proto)) {
		CT_(del)(k);
		CT_(syn_del)(k);
		return SNAT_PORT_FREE;
	}
	if ((flags & CT_F_CLOSING) && idle > CT_TIMEOUT_TCP_CLOSE * LB_NSEC_PER_SEC)
		return SNAT_PORT_TIME_WAIT;
	return SNAT_PORT_BUSY;
}

/* Whether a SNAT flow still owns its port: the reply entry under it names this client. An LRU
 * eviction (or an older agent's aging) may have handed the port to another flow; this flow's
 * packets must not go on with a tuple whose replies reach someone else. */
static __always_inline int CT_(snat_owned)(struct FAM_CT_KEY *fwd, const struct FAM_CT_ENTRY *e)
{
	struct FAM_CT_KEY rev;
	struct FAM_CT_ENTRY *r;

	CT_(reply_key)(fwd, e, &rev);
	r = CT_(find)(&rev);
	return r && FAM_ADDR_EQ(r->nat2_addr, fwd->saddr) && r->nat2_port == fwd->sport &&
	       FAM_ADDR_EQ(r->nat_addr, fwd->daddr) && r->nat_port == fwd->dport;
}

/* Writes both entries of a SNAT flow with the reply key `rev` (its port chosen), from one entry on
 * the stack: the reply's fields (the frontend, the client), then the forward's (the backend and
 * the SNAT address and port, which are rev's). 0, or -1 when the port was taken meanwhile
 * (insert, not update: another CPU may race for it). */
static __always_inline int CT_(insert_snat)(const struct FAM_PKT *p, struct FAM_CT_KEY *fwd,
					    struct FAM_CT_KEY *rev, struct FAM_CT_ENTRY *e,
					    __u32 ifindex)
{
	int tcp = p->proto == IPPROTO_TCP;

	e->nat_addr = p->daddr;
	e->nat_port = p->dport;
	e->nat2_addr = p->saddr;
	e->nat2_port = p->sport;
	e->ifindex = 0;
	if (tcp ? CT_(syn_add)(rev, e) : CT_(add)(rev, e))
		return -1;
	e->nat_addr = rev->saddr;
	e->nat_port = rev->sport;
	e->nat2_addr = rev->daddr;
	e->nat2_port = rev->dport;
	e->ifindex = ifindex;
	if (tcp ? CT_(syn_put)(fwd, e) : CT_(put)(fwd, e)) {
		if (tcp)
			CT_(syn_del)(rev);
		else
			CT_(del)(rev);
		return -1;
	}
	return 0;
}

/* The first SNAT port probed for a flow: spread by the flow hash, and repeatable (a lost forward
 * entry is rebuilt from it, ct4_rebuild). */
static __always_inline __be16 LB_(snat_first_port)(const struct FAM_PKT *p)
{
	return bpf_htons(LB4_SNAT_PORT_MIN + FAM_FLOW_HASH(p) % (LB4_SNAT_PORT_MAX - LB4_SNAT_PORT_MIN + 1));
}

/* Creates both entries of a new flow whose source becomes snat_addr and a port of the SNAT
 * range that no live flow to the same backend uses: to a backend on another node (flags
 * CT_F_EXTERNAL | CT_F_SNAT, snat_addr this node's), or with only a new port (CT_F_PORT_NAT,
 * snat_addr the client's own). Returns 0 with the port in n->sport, or -1 when none was free
 * within LB4_SNAT_TRIES probes. The first probe is the flow's hash, so the choice is spread and
 * repeatable. A closed flow keeps its port through the backend's TIME_WAIT; only when every
 * probe finds a port taken is the first such one reused (counted: the range is too small for the
 * rate), rather than dropping the new flow. */
static __always_inline int CT_(create_snat)(const struct FAM_PKT *p, struct FAM_CT_KEY *fwd,
					   const struct FAM_BACKEND *be, __u32 svc_id,
					   __u32 backend_id, FAM_ADDR snat_addr, __u16 flags,
					   __u32 ifindex, __u64 now, struct FAM_NAT *n)
{
	__u32 range = LB4_SNAT_PORT_MAX - LB4_SNAT_PORT_MIN + 1;
	__u32 start = FAM_FLOW_HASH(p);
	struct FAM_CT_ENTRY e = {
		.created_ns = now, .last_seen_ns = now, .flags = flags, .svc_id = svc_id,
		.backend_id = backend_id,
	};
	struct FAM_CT_KEY rev = {
		.saddr = be->addr, .daddr = snat_addr, .sport = be->port, .proto = p->proto,
		.dir = CT_DIR_REPLY,
	};
	__be16 time_wait = 0;
	int i, state;

	for (i = 0; i < LB4_SNAT_TRIES; i++) {
		rev.dport = bpf_htons(LB4_SNAT_PORT_MIN + (start + i) % range);
		state = CT_(snat_port_state)(&rev, now);
		if (state == SNAT_PORT_TIME_WAIT && !time_wait)
			time_wait = rev.dport;
		if (state != SNAT_PORT_FREE)
			continue;
		if (CT_(insert_snat)(p, fwd, &rev, &e, ifindex) == 0) {
			n->sport = rev.dport;
			return 0;
		}
	}
	if (!time_wait)
		return -1;
	rev.dport = time_wait;
	CT_(del)(&rev);
	CT_(syn_del)(&rev);
	if (CT_(insert_snat)(p, fwd, &rev, &e, ifindex))
		return -1;
	lb_count(STAT_SNAT_REUSE);
	n->sport = rev.dport;
	return 0;
}

