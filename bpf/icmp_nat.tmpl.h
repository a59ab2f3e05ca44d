/* icmp_nat.tmpl.h: ICMP (ICMPv6) errors about load-balanced flows, for one IP family (a template:
 * see family4.tmpl.h), found by the flow they quote (icmp.h parses and rewrites them) and translated
 * the way that flow's packets are. Needs icmp.h, nat.h and the conntrack and SNAT templates. */

/* The conntrack key of the flow an ICMP error quotes, seen from the other side: the quoted
 * packet went one way, the entry we want is keyed by the way back. */
static __always_inline void CT_(key_of_quoted)(const struct FAM_ICMP_ERR *e, __u8 dir,
					      struct FAM_CT_KEY *k)
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
 * packet; TC_ACT_SHOT when it cannot (the reason counted). `quoted` is the side of the quoted
 * packet that was NATed: NAT_DST for an error to the client about its request (the quoted destination is the backend, the frontend again), NAT_SRC
 * for an error from the client about a reply (the quoted source is the frontend, the backend
 * again). The outer address on the other side is rewritten too when it is that same address
 * (the backend, or the frontend, sent the error itself). */
static __always_inline int LB_(icmp_nat)(struct __sk_buff *skb, const struct FAM_ICMP_ERR *e,
					const struct FAM_CT_ENTRY *ct, int quoted)
{
	/* Whether the outer address on the other side is the quoted NATed one (compared in place:
	 * no address is chosen by ?: here, see addr6_copy). */
	int same = quoted == NAT_DST ? FAM_ADDR_EQ(e->saddr, e->in_daddr) :
				       FAM_ADDR_EQ(e->daddr, e->in_saddr);

	/* A flow with a new source port: the quoted client side gets its port back too (the reply
	 * entry's nat2 is the client's own), or the one the backend saw (the forward entry's). */
	if ((same && ICMP_(rewrite_outer)(skb, e, !quoted, ct->nat_addr)) ||
	    ICMP_(rewrite_inner)(skb, e, quoted, ct->nat_addr, ct->nat_port) ||
	    ((ct->flags & CT_F_PORT_NAT) &&
	     ICMP_(rewrite_inner)(skb, e, !quoted, ct->nat2_addr, ct->nat2_port))) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

/* An ICMP error about a flow whose client is on this side: to the client about its request
 * (dir REPLY: the flow's reply entry, keyed backend -> client), or from the client about a reply
 * (dir FWD: its forward entry). Only entries with (flags & mask) == want. Returns a verdict, or
 * -1 when it is about none of those flows. */
static __always_inline int LB_(icmp_client)(struct __sk_buff *skb, __u8 dir, __u16 mask,
					   __u16 want)
{
	struct FAM_ICMP_ERR e = {};
	struct FAM_CT_KEY k = {};
	struct FAM_CT_ENTRY *ct;

	if (ICMP_(parse_error)(skb, &e))
		return -1;
	CT_(key_of_quoted)(&e, dir, &k);
	ct = CT_(find)(&k);
	if (!ct || (ct->flags & mask) != want)
		return -1;
	return LB_(icmp_nat)(skb, &e, ct, dir == CT_DIR_REPLY ? NAT_DST : NAT_SRC);
}

/* Sends a translated ICMP error on from a node device: its outer source may now be this node's
 * own address, which the stack would take for a martian. */
static __always_inline int LB_(icmp_send_on)(struct __sk_buff *skb, const struct FAM_ICMP_ERR *e,
					    FAM_ADDR saddr, FAM_ADDR daddr)
{
	struct FAM_PKT p = { .l3_off = e->l3_off, .proto = FAM_ICMP_PROTO };
	struct FAM_NAT n = {};
	int rc = LB_(fib)(skb, &p, saddr, 0, daddr, 0, skb->ifindex, &n);

	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) ||
	    FAM_TTL_DEC(skb, e->l3_off)) {
		lb_count(STAT_FORWARD_FAIL);
		return TC_ACT_SHOT;
	}
	return lb_send_out(n.ifindex);
}

/* An ICMP error arriving on a node device about a flow from outside. Returns a verdict, or -1
 * when it is about none of ours.
 *  - About a reply the client got (quoting frontend -> client; a router on the client's path
 *    says "fragmentation needed"): to a local backend it goes like the pod path's; to a remote
 *    one it is rewritten to what that backend sent (backend -> SNAT address) and sent on.
 *  - About a packet this node SNATed towards a remote backend (quoting SNAT address -> backend):
 *    rewritten to what the client sent (client -> frontend) and sent back to the client. */
static __always_inline int LB_(node_icmp_in)(struct __sk_buff *skb)
{
	struct FAM_ICMP_ERR e = {};
	struct FAM_CT_KEY k = {};
	struct FAM_CT_ENTRY *ct;
	FAM_ADDR saddr;
	int from_backend;

	if (ICMP_(parse_error)(skb, &e))
		return -1;
	CT_(key_of_quoted)(&e, CT_DIR_FWD, &k);
	ct = CT_(find)(&k);
	if (ct && (ct->flags & CT_F_EXTERNAL)) {
		if (!(ct->flags & CT_F_SNAT))
			return LB_(icmp_nat)(skb, &e, ct, NAT_SRC);	/* a local backend */
		/* Quoted frontend -> client becomes backend -> SNAT address; the error goes from
		 * this node to the backend. */
		if (ICMP_(rewrite_inner)(skb, &e, NAT_SRC, ct->nat_addr, ct->nat_port) ||
		    ICMP_(rewrite_inner)(skb, &e, NAT_DST, ct->nat2_addr, ct->nat2_port) ||
		    ICMP_(rewrite_outer)(skb, &e, NAT_SRC, ct->nat2_addr) ||
		    ICMP_(rewrite_outer)(skb, &e, NAT_DST, ct->nat_addr)) {
			lb_count(STAT_NAT_FAIL);
			return TC_ACT_SHOT;
		}
		return LB_(icmp_send_on)(skb, &e, ct->nat2_addr, ct->nat_addr);
	}
	k.dir = CT_DIR_REPLY;	/* quoted SNAT address -> backend: the reply entry's reverse */
	ct = CT_(find)(&k);
	if (!ct || !(ct->flags & CT_F_SNAT))
		return -1;
	/* Quoted SNAT address -> backend becomes client -> frontend; outer to the client, and
	 * from the frontend when the backend itself sent it. */
	from_backend = FAM_ADDR_EQ(e.saddr, e.in_daddr);
	if (from_backend)
		saddr = ct->nat_addr;
	else
		saddr = e.saddr;
	if (ICMP_(rewrite_inner)(skb, &e, NAT_SRC, ct->nat2_addr, ct->nat2_port) ||
	    ICMP_(rewrite_inner)(skb, &e, NAT_DST, ct->nat_addr, ct->nat_port) ||
	    ICMP_(rewrite_outer)(skb, &e, NAT_DST, ct->nat2_addr) ||
	    (from_backend && ICMP_(rewrite_outer)(skb, &e, NAT_SRC, saddr))) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	return LB_(icmp_send_on)(skb, &e, saddr, ct->nat2_addr);
}

