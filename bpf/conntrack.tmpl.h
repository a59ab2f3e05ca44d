/* conntrack.tmpl.h: the flow table, for one IP family (a template: see family4.tmpl.h). A new flow gets
 * two entries, the forward one (client 5-tuple -> backend) and the reply one (backend 5-tuple ->
 * frontend), so an established flow keeps its backend whatever happens to the Service's backend
 * set. Half-open TCP flows live in ct4_syn (ct6_syn) until the client's ACK moves them to ct4
 * (ct6); the comments name the IPv4 maps. Needs conntrack.h, map_access.h and parse.h. */

/* The conntrack key of a packet as it arrives, before any rewrite. */
static __always_inline void CT_(key_of)(const struct FAM_PKT *p, __u8 dir, struct FAM_CT_KEY *k)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->dir = dir;
	k->pad = 0;
}

/* A flow's entry wherever it lives: the main table, else (TCP only) the half-open one. */
static __always_inline struct FAM_CT_ENTRY *CT_(find_half_open)(struct FAM_CT_KEY *key, int *half_open)
{
	struct FAM_CT_ENTRY *e = CT_(get)(key);

	*half_open = 0;
	if (e || key->proto != IPPROTO_TCP)
		return e;
	e = CT_(syn_get)(key);
	if (e) {
		*half_open = 1;
		return e;
	}
	/* Another CPU may have moved the flow from ct4_syn to ct4 (the client's ACK) between the two
	 * lookups: look once more where it went. */
	return CT_(get)(key);
}

static __always_inline struct FAM_CT_ENTRY *CT_(find)(struct FAM_CT_KEY *key)
{
	int half_open;

	return CT_(find_half_open)(key, &half_open);
}

static __always_inline int CT_(expired)(const struct FAM_CT_ENTRY *e, __u8 proto, __u64 now)
{
	return ct_idle(e->last_seen_ns, now) > ct_lifetime_of(e->flags, proto);
}

/* Records a packet of a known flow: last-seen time (at most one write a second) and the TCP
 * state bits of this direction (written only when they change). */
static __always_inline void CT_(track)(struct FAM_CT_ENTRY *e, const struct FAM_PKT *p, __u64 now)
{
	__u16 flags = e->flags;

	if (ct_idle(e->last_seen_ns, now) > CT_REFRESH_NS)
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
static __always_inline int LB_(tcp_syn_only)(const struct FAM_PKT *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) == TCP_FL_SYN;
}

/* The reply key of a flow, from its forward key and entry: replies come from the backend, to the
 * client, or to the hairpin address (a pod reaching itself), or to the SNAT address and port (or
 * the client's new port). */
static __always_inline void CT_(reply_key)(const struct FAM_CT_KEY *fwd, const struct FAM_CT_ENTRY *e,
					  struct FAM_CT_KEY *rev)
{
	rev->saddr = e->nat_addr;
	rev->sport = e->nat_port;
	if (ct_src_nat(e->flags)) {
		rev->daddr = e->nat2_addr;
		rev->dport = e->nat2_port;
	} else {
		if (e->flags & CT_F_HAIRPIN)
			FAM_ADDR_SET_HAIRPIN(rev->daddr);
		else
			rev->daddr = fwd->saddr;
		rev->dport = fwd->sport;
	}
	rev->proto = fwd->proto;
	rev->dir = CT_DIR_REPLY;
	rev->pad = 0;
}

/* The forward key of a flow from its reply key and reply entry: the client to the frontend. The
 * client is where the replies go, unless its source was rewritten (then nat2 keeps it) or it
 * reached itself (the replies go to the hairpin address, from its own). */
static __always_inline void CT_(fwd_key_of)(const struct FAM_CT_KEY *rk, const struct FAM_CT_ENTRY *r,
					   struct FAM_CT_KEY *fk)
{
	if (ct_src_nat(r->flags)) {
		fk->saddr = r->nat2_addr;
		fk->sport = r->nat2_port;
	} else {
		if (r->flags & CT_F_HAIRPIN)
			FAM_ADDR_COPY(fk->saddr, rk->saddr);
		else
			FAM_ADDR_COPY(fk->saddr, rk->daddr);
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
static __always_inline int CT_(backend_alive)(const struct FAM_CT_ENTRY *e)
{
	__u32 id = e->backend_id;
	struct FAM_BACKEND *be = LB_(backend_get)(&id);

	return be && FAM_ADDR_EQ(be->addr, e->nat_addr) && be->port == e->nat_port;
}

/* A dead flow's entries, before its tuple starts a new flow: a new TCP flow is written to
 * ct4_syn, and a stale entry left in ct4 would be found first by the flow's next packet (with
 * the old backend, or the old SNAT port). The reply entry goes too when `reply` is set; a closed
 * flow keeps it (a SNAT port stays held through the backend's TIME_WAIT). Returns NULL for the
 * caller's entry pointer. */
static __always_inline struct FAM_CT_ENTRY *CT_(forget)(struct FAM_CT_KEY *fwd, struct FAM_CT_ENTRY *e,
						     int half_open, int reply)
{
	struct FAM_CT_KEY rev;
	struct FAM_CT_ENTRY *r;

	if (reply) {
		/* Only this flow's own reply entry: the key may have passed to another flow since. */
		CT_(reply_key)(fwd, e, &rev);
		r = CT_(find)(&rev);
		if (r && FAM_ADDR_EQ(r->nat_addr, fwd->daddr) && r->nat_port == fwd->dport &&
		    (!ct_src_nat(e->flags) ||
		     (FAM_ADDR_EQ(r->nat2_addr, fwd->saddr) && r->nat2_port == fwd->sport))) {
			CT_(del)(&rev);
			CT_(syn_del)(&rev);
		}
	}
	if (fwd->proto == IPPROTO_TCP && !half_open)
		CT_(del)(fwd);
	return 0;
}

/* Moves a half-open flow's two entries from ct4_syn to ct4 once its client has ACKed. */
static __always_inline void CT_(promote)(struct FAM_CT_KEY *fwd, struct FAM_CT_ENTRY *e)
{
	struct FAM_CT_KEY rev;
	struct FAM_CT_ENTRY *r;

	/* The entries go over as they are: an update copies the value it is given (no copy on
	 * the stack, which IPv6 entries would not leave room for). */
	CT_(reply_key)(fwd, e, &rev);
	r = CT_(syn_get)(&rev);
	if (r && CT_(put)(&rev, r) == 0)
		CT_(syn_del)(&rev);
	if (CT_(put)(fwd, e) == 0)
		CT_(syn_del)(fwd);
}

/* Whether a live flow of another frontend holds the reply key `rev` (the same client address and
 * port reaching the same backend through two VIPs). A closed holder (a RST, a FIN from both
 * sides, or a FIN from its backend with no forward entry left) or an expired one gives it up; a
 * half-closed one (a FIN from one side) does not: its other side may still send, for as long
 * as the agent's GC keeps it (tcp_time_wait). A holder of the same frontend is this flow's own
 * earlier attempt. */
static __always_inline int CT_(reply_held)(struct FAM_CT_KEY *rev, const struct FAM_PKT *p, __u64 now)
{
	struct FAM_CT_ENTRY *r = CT_(find)(rev);
	struct FAM_CT_ENTRY *f;
	struct FAM_CT_KEY fk;
	__u16 fflags = 0;
	__u64 last;

	if (!r || (FAM_ADDR_EQ(r->nat_addr, p->daddr) && r->nat_port == p->dport))
		return 0;
	/* Aged by both entries: a one-way flow (UDP to a server that never answers) refreshes only
	 * its forward entry, keyed client -> its frontend. */
	last = r->last_seen_ns;
	CT_(fwd_key_of)(rev, r, &fk);
	f = CT_(find)(&fk);
	if (f && FAM_ADDR_EQ(f->nat_addr, rev->saddr) && f->nat_port == rev->sport) {
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
		return ct_idle(last, now) <= CT_HALF_CLOSED_NS;
	return ct_idle(last, now) <= ct_lifetime_of(r->flags, p->proto);
}

/* A backend's SYN-ACK on the reply tuple of a flow whose client closed it: the client now talks
 * to the backend directly from the same port (no frontend), so this is not a reply to translate.
 * Judged by the forward entry: a new flow through the frontend on that tuple would have replaced
 * it (and put both entries in ct4_syn, `half_open`: a new flow's SYN-ACK costs nothing more), and
 * a client reusing its port after the backend's RST keeps the old, still live, forward entry. */
static __always_inline int CT_(reply_of_closed)(const struct FAM_PKT *p, const struct FAM_CT_KEY *rk,
					       const struct FAM_CT_ENTRY *r, int half_open)
{
	struct FAM_CT_ENTRY *f;
	struct FAM_CT_KEY fk;

	if (half_open || p->proto != IPPROTO_TCP || !(p->tcp_flags & TCP_FL_SYN))
		return 0;
	CT_(fwd_key_of)(rk, r, &fk);
	f = CT_(find)(&fk);
	return f && (f->flags & CT_F_CLOSING);
}

/* Whether the tuple a packet would reach backend `be` with (no state, no new port) is held by
 * a live flow of another frontend. */
static __always_inline int CT_(tuple_held)(const struct FAM_PKT *p, struct FAM_CT_KEY *fwd,
					  const struct FAM_BACKEND *be, __u16 flags, __u64 now)
{
	struct FAM_CT_ENTRY e = { .nat_addr = be->addr, .nat_port = be->port, .flags = flags };
	struct FAM_CT_KEY rev;

	CT_(reply_key)(fwd, &e, &rev);
	return CT_(reply_held)(&rev, p, now);
}

/* Creates both entries of a new flow, TCP in ct4_syn and UDP in ct4. `ifindex` is the device
 * the flow came in on: a later packet of the flow from another device is not taken on trust. */
static __always_inline int CT_(create)(const struct FAM_PKT *p, struct FAM_CT_KEY *fwd,
				      const struct FAM_BACKEND *be, __u32 svc_id, __u32 backend_id,
				      __u16 flags, __u32 ifindex, __u64 now)
{
	struct FAM_CT_KEY rev;
	struct FAM_CT_ENTRY e = {
		.created_ns = now, .last_seen_ns = now, .nat_addr = be->addr, .nat_port = be->port,
		.flags = flags, .svc_id = svc_id, .backend_id = backend_id, .ifindex = ifindex,
	};
	int err;

	CT_(reply_key)(fwd, &e, &rev);
	if (CT_(reply_held)(&rev, p, now))
		return CT_CREATE_HELD;
	/* Reply entry first: a flow whose forward entry is missing is re-hashed to the same backend,
	 * but replies without a reply entry would reach the client from the backend's address. One
	 * entry on the stack serves both (the reply's fields, then the forward's). */
	e.nat_addr = p->daddr;
	e.nat_port = p->dport;
	e.ifindex = 0;
	if (p->proto == IPPROTO_TCP) {
		/* A dead flow's reply entry under the same key sits in ct4, which replies look up
		 * first: the new flow takes the key over. */
		CT_(del)(&rev);
		err = CT_(syn_put)(&rev, &e);
	} else {
		err = CT_(put)(&rev, &e);
	}
	if (err)
		return CT_CREATE_FAIL;
	e.nat_addr = be->addr;
	e.nat_port = be->port;
	e.ifindex = ifindex;
	err = p->proto == IPPROTO_TCP ? CT_(syn_put)(fwd, &e) : CT_(put)(fwd, &e);
	return err ? CT_CREATE_FAIL : CT_CREATE_OK;
}

/* The forward entry of a TCP flow that lost it while its reply entry lives: a SYN flood evicted
 * the half-open forward entry, the backend answered, and now the client's ACK finds nothing. The
 * hash picked `be` again (the backend set is unchanged, or the reply entry would not match); the
 * reply entry (keyed backend -> client, or -> the SNAT address and port) says which frontend and
 * client the flow belongs to. Both entries go to ct4, as a promotion would. Returns the new
 * forward entry, or NULL when no reply entry matches. */
static __always_inline struct FAM_CT_ENTRY *CT_(rebuild)(const struct FAM_PKT *p, struct FAM_CT_KEY *fwd,
						     const struct FAM_BACKEND *be,
						     __u32 backend_id, __u16 flags,
						     FAM_ADDR snat_addr, __be16 snat_port,
						     __u32 ifindex, __u64 now)
{
	struct FAM_CT_ENTRY e = {
		.created_ns = now, .last_seen_ns = now, .nat_addr = be->addr, .nat_port = be->port,
		.flags = flags, .backend_id = backend_id, .nat2_addr = snat_addr,
		.nat2_port = snat_port, .ifindex = ifindex,
	};
	struct FAM_CT_ENTRY *found;
	struct FAM_CT_KEY rev;

	CT_(reply_key)(fwd, &e, &rev);
	found = CT_(find)(&rev);
	if (!found || !FAM_ADDR_EQ(found->nat_addr, p->daddr) || found->nat_port != p->dport ||
	    found->backend_id != backend_id || (found->flags & CT_F_CLOSING) ||
	    CT_(expired)(found, p->proto, now))
		return 0;
	if ((found->flags & (CT_F_HAIRPIN | CT_F_SNAT | CT_F_EXTERNAL)) !=
	    (flags & (CT_F_HAIRPIN | CT_F_SNAT | CT_F_EXTERNAL)))
		return 0;
	if ((flags & CT_F_SNAT) &&
	    (!FAM_ADDR_EQ(found->nat2_addr, p->saddr) || found->nat2_port != p->sport))
		return 0;
	e.svc_id = found->svc_id;
	e.created_ns = found->created_ns;
	e.flags = (found->flags & (CT_F_HAIRPIN | CT_F_EXTERNAL | CT_F_SNAT)) | CT_F_ESTABLISHED;
	if (CT_(put)(&rev, found))
		return 0;
	CT_(syn_del)(&rev);
	if (CT_(put)(fwd, &e))
		return 0;
	CT_(syn_del)(fwd);	/* a stale half-open copy, if one was left */
	return CT_(get)(fwd);
}

