/* core.tmpl.h: the one decision for a packet to a frontend, shared by every hook (pod devices at
 * TC, node devices at TC or XDP) and both IP families (a template: see family4.tmpl.h): conntrack ->
 * policy -> select -> record. The hooks (lb4_tc.c, lb6_tc.c) parse, find the frontend, and
 * rewrite what this says into the packet. */

/* Whether a found forward entry still stands for this packet. Returns it, or NULL when the packet
 * starts a new flow (what stood in its way is forgotten) or must go (*drop, counted). */
static __always_inline struct FAM_CT_ENTRY *LB_(flow_check)(const struct FAM_PKT *p, struct FAM_CT_KEY *fk,
							struct FAM_CT_ENTRY *ct, int half_open,
							__u32 ingress, int hook, __u64 now,
							int *drop)
{
	/* A flow is bound to the device it came in on. From a pod device, a packet claiming another
	 * device's flow is taken only when the pod may use that source (its veth was recreated);
	 * a flow from outside the cluster is never a pod's. Node devices are not checked: replies
	 * and retransmissions may come back over another uplink. */
	if (hook == HOOK_POD && ct->ifindex && ct->ifindex != ingress &&
	    ((ct->flags & CT_F_EXTERNAL) || !LB_(source_valid)(ingress, p->saddr))) {
		lb_count(STAT_SPOOFED);
		*drop = 1;
		return 0;
	}
	/* An expired entry, or a SYN reusing the tuple of a closed flow, starts a new flow. A flow
	 * netfilter translates lives as long as netfilter's entry: the agent forgets it then. */
	if ((!(ct->flags & CT_F_NETFILTER) && CT_(expired)(ct, p->proto, now)) ||
	    (LB_(tcp_syn_only)(p) && (ct->flags & CT_F_CLOSING)))
		return CT_(forget)(fk, ct, half_open, 0);
	/* A SYN retransmitted to a backend that is gone (a pod on a dead node never answered) gets a
	 * live one; without it the client would retry there until its connect timeout. An ACK means
	 * the backend answered: that flow stays. */
	if (LB_(tcp_syn_only)(p) && !CT_(backend_alive)(ct)) {
		lb_count(STAT_BACKEND_GONE);
		return CT_(forget)(fk, ct, half_open, 1);
	}
	if (ct_src_nat(ct->flags) && !CT_(snat_owned)(fk, ct))
		return CT_(forget)(fk, ct, half_open, 0);
	return ct;
}

/* A packet of a known flow: it goes where the flow goes. */
static __always_inline int LB_(flow_hit)(void *ctx, const struct FAM_PKT *p, struct FAM_CT_KEY *fk,
					struct FAM_CT_ENTRY *ct, int half_open, __u32 ingress,
					int hook, __u64 now, struct FAM_NAT *n)
{
	int rc;

	if (ct->flags & CT_F_HANDOVER) {
		lb_count(STAT_HANDOVER);
		return NV_DROP;
	}
	if (ct->flags & CT_F_NETFILTER) {
		CT_(track)(ct, p, now);
		lb_count(STAT_NETFILTER);
		return NV_PASS;
	}
	n->daddr = ct->nat_addr;
	n->dport = ct->nat_port;
	n->backend_id = ct->backend_id;
	if (ct->flags & CT_F_SNAT) {
		n->saddr = ct->nat2_addr;
		n->sport = ct->nat2_port;
		rc = LB_(fib)(ctx, p, n->saddr, n->sport, n->daddr, n->dport, ingress, n);
		if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
			CT_(track)(ct, p, now);
			return NV_TOO_BIG;
		}
		if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
			lb_count(STAT_FORWARD_FAIL);
			return NV_DROP;
		}
		if (HOOK_IS_XDP(hook) && !n->fib_ok)
			return NV_TO_STACK;	/* before tracking: TC sees the packet again */
	} else {
		if (hook == HOOK_XDP_GENERIC)
			return NV_TO_STACK;
		if (ct->flags & CT_F_PORT_NAT)
			n->sport = ct->nat2_port;
	}
	CT_(track)(ct, p, now);
	if (half_open && (ct->flags & CT_F_ESTABLISHED) && !(ct->flags & CT_F_CLOSING))
		CT_(promote)(fk, ct);
	return (ct->flags & CT_F_SNAT) ? NV_REMOTE : NV_LOCAL;
}

/* The decision for a packet to the frontend `svc`, arriving on device `ingress`. Fills *n with
 * what the packet becomes and returns an lb4_verdict. */
static __always_inline int LB_(frontend)(void *ctx, const struct FAM_PKT *p, const struct lb4_svc *svc,
					__u32 ingress, int hook, struct FAM_NAT *n)
{
	struct FAM_BACKEND *be = 0;
	struct FAM_NODE_IF *nif = 0;
	struct FAM_CT_ENTRY *ct;
	struct FAM_CT_KEY fk;
	int half_open = 0;
	int drop = 0;
	int rc = 0;
	__u16 flags;
	__u32 dp;
	__u64 now;

	if (hook != HOOK_POD && (svc->flags & LB4_SVC_KIND_MASK) == LB4_SVC_KIND_CLUSTERIP) {
		lb_count(STAT_EXTERNAL_CLUSTERIP);
		return NV_DROP;
	}
	n->svc_id = svc->svc_id;
	n->saddr = p->saddr;
	n->sport = p->sport;
	CT_(key_of)(p, CT_DIR_FWD, &fk);
	ct = CT_(find_half_open)(&fk, &half_open);
	now = bpf_ktime_get_ns();
	if (ct)
		ct = LB_(flow_check)(p, &fk, ct, half_open, ingress, hook, now, &drop);
	if (drop)
		return NV_DROP;
	if (ct)
		return LB_(flow_hit)(ctx, p, &fk, ct, half_open, ingress, hook, now, n);
	/* A removed frontend, kept only for the flows it has: anything new is not ours. */
	if (svc->flags & LB4_SVC_F_DRAINING)
		return NV_PASS;

	/* A takeover from kube-proxy is under way: a TCP flow netfilter translates may not be
	 * imported yet, and hashed to a backend its packets could reach another pod. A hand-back
	 * to it: every flow not known here is netfilter's. */
	dp = lb_dp_flags();
	if ((dp & LB_DP_F_NETFILTER_NEW) ||
	    ((dp & LB_DP_F_NETFILTER_GRACE) && p->proto == IPPROTO_TCP && !LB_(tcp_syn_only)(p))) {
		lb_count(STAT_NETFILTER);
		return NV_PASS;
	}

	/* A new flow (or a TCP packet of a flow we lost). Policy first: nothing is chosen for, or
	 * answered to, a client that may not start one. */
	if ((svc->flags & LB4_SVC_F_SRC_RANGES) && !LB_(source_allowed)(svc, p->saddr)) {
		lb_count(STAT_SOURCE_DENIED);
		return NV_DROP;
	}
	if (hook == HOOK_POD && !LB_(source_valid)(ingress, p->saddr)) {
		lb_count(STAT_SPOOFED);
		return NV_DROP;
	}
	if (LB_(bad_source)(p)) {
		lb_count(STAT_BAD_SOURCE);
		return NV_DROP;
	}
	n->backend_id = LB_(choose_backend)(p, svc, now, &be);
	if (!n->backend_id || !be) {
		if (HOOK_IS_XDP(hook) && !(svc->flags & LB4_SVC_F_DROP_EMPTY))
			return NV_TO_STACK;	/* TC sends the reject */
		/* Backends only elsewhere (a Local policy): dropped, as kube-proxy does; a load
		 * balancer's health check steers clients away from this node. None anywhere: the
		 * port is closed, and the client is told at once (the hook counts no_backend when
		 * it cannot answer, a RST). */
		if (svc->flags & LB4_SVC_F_DROP_EMPTY) {
			lb_count(STAT_NO_BACKEND);
			return NV_DROP;
		}
		return NV_REJECT;
	}
	n->daddr = be->addr;
	n->dport = be->port;
	if (hook != HOOK_POD) {
		/* Local or remote backend: the device the route to it leaves by, whatever else the
		 * FIB says (a packet too big for that device is still a remote flow). */
		rc = LB_(fib)(ctx, p, p->saddr, p->sport, be->addr, be->port, ingress, n);
		if (lb_fib_routed(rc))
			nif = LB_(node_if_get)(&n->ifindex);
	}
	if (!nif) {
		if (hook == HOOK_XDP_GENERIC)
			return NV_TO_STACK;
		flags = hook != HOOK_POD ? CT_F_EXTERNAL :
			(FAM_ADDR_EQ(be->addr, p->saddr) ? CT_F_HAIRPIN : 0);
		if (p->proto == IPPROTO_TCP && !LB_(tcp_syn_only)(p)) {
			ct = CT_(rebuild)(p, &fk, be, n->backend_id, flags, FAM_ADDR_NONE, 0, ingress,
				     now);
			if (ct) {
				lb_count(STAT_CT_REBUILT);
				return LB_(flow_hit)(ctx, p, &fk, ct, 0, ingress, hook, now, n);
			}
			/* Its tuple at the backend is another frontend's live flow's (this one had a
			 * port of its own, now lost): sent on, it would land in that connection. */
			if (CT_(tuple_held)(p, &fk, be, flags, now)) {
				lb_count(STAT_CT_COLLISION);
				return NV_DROP;
			}
			/* Not a connection start: forwarded by hash (right while the backend set is
			 * unchanged) but nothing is created, so a flood of such packets cannot fill
			 * conntrack. */
			n->stateless = 1;
			return NV_LOCAL;
		}
		rc = CT_(create)(p, &fk, be, svc->svc_id, n->backend_id, flags, ingress, now);
		if (rc == CT_CREATE_HELD) {
			/* The same client port already reaches this backend through another frontend:
			 * this flow gets a source port of its own (a hairpin flow has no port to move). */
			if ((flags & CT_F_HAIRPIN) ||
			    CT_(create_snat)(p, &fk, be, svc->svc_id, n->backend_id, p->saddr,
					    flags | CT_F_PORT_NAT, ingress, now, n)) {
				lb_count(STAT_CT_COLLISION);
				return NV_DROP;
			}
			lb_count(STAT_PORT_NAT);
			rc = CT_CREATE_OK;
		}
		lb_count(rc ? STAT_CT_INSERT_FAIL : STAT_CT_INSERT);
	} else {
		if (svc->flags & LB4_SVC_F_ETP_LOCAL) {
			lb_count(STAT_FORWARD_FAIL);	/* Local policy never leaves the node */
			return NV_DROP;
		}
		if (HOOK_IS_XDP(hook) && !n->fib_ok)
			return NV_TO_STACK;
		if (p->proto == IPPROTO_TCP && !LB_(tcp_syn_only)(p)) {
			ct = CT_(rebuild)(p, &fk, be, n->backend_id, CT_F_EXTERNAL | CT_F_SNAT, nif->addr,
					 LB_(snat_first_port)(p), ingress, now);
			if (ct) {
				lb_count(STAT_CT_REBUILT);
				return LB_(flow_hit)(ctx, p, &fk, ct, 0, ingress, hook, now, n);
			}
			/* Without state there is no SNAT port to bring the replies back: drop, the
			 * client's retransmission or a new connection recovers. */
			lb_count(STAT_TCP_NO_STATE);
			return NV_DROP;
		}
		if (CT_(create_snat)(p, &fk, be, svc->svc_id, n->backend_id, nif->addr,
				    CT_F_EXTERNAL | CT_F_SNAT, ingress, now, n)) {
			lb_count(STAT_SNAT_EXHAUSTED);
			return NV_DROP;
		}
		n->saddr = nif->addr;
		lb_count(STAT_CT_INSERT);
	}
	if (svc->affinity_timeout)
		LB_(affinity_update)(p, svc, n->backend_id, now);
	n->new_flow = 1;
	if (!nif)
		return NV_LOCAL;
	return rc == BPF_FIB_LKUP_RET_FRAG_NEEDED ? NV_TOO_BIG : NV_REMOTE;
}

