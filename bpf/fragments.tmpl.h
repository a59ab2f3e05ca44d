/* fragments.tmpl.h: datagrams in fragments, for one IP family (a template: see family4.tmpl.h). The
 * first fragment carries the ports and is translated by the normal path, which remembers what it
 * did here; the later ones carry no ports, so they get the same addresses from that record (their
 * L4 checksum lives in the first fragment, which the normal path already fixed). Both directions
 * work alike: a backend's fragmented answer is recorded from its first fragment too. A record is
 * keyed by the datagram (addresses, identification, protocol) and the hook that made it. Needs
 * fragments.h (each family's rewrite of a later fragment) and map_access.h. */

static __always_inline void FRAG_(key_of)(const struct FAM_PKT *p, __u8 hook,
					  struct FAM_FRAG_KEY *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->id = FAM_FRAG_ID(p);
	k->proto = FAM_FRAG_PROTO(p);
	k->hook = hook;
}

/* Remembers a first fragment's translation; nothing for a whole datagram (one test on the hot
 * path). */
static __always_inline void FRAG_(record)(const struct FAM_PKT *p, __u8 hook, FAM_ADDR saddr,
					  FAM_ADDR daddr, __u32 svc_id, __u32 backend_id,
					  __u8 action, __u32 ifindex, __u8 reply)
{
	struct FAM_FRAG_KEY k;
	struct FAM_FRAG_NAT v = {
		.saddr = saddr, .daddr = daddr, .svc_id = svc_id, .backend_id = backend_id,
		.ifindex = ifindex, .action = action, .reply = reply,
	};

	if (p->frag != FRAG_FIRST)
		return;
	v.created_ns = bpf_ktime_get_ns();
	FRAG_(key_of)(p, hook, &k);
	FRAG_(put)(&k, &v);
}

/* A later fragment: translated as its first fragment was, with *v saying where it goes next.
 * Returns 1 when translated, 0 when no first fragment was seen, -1 on a rewrite error (counted).
 * With count_miss (the pod devices' hooks and the node's ingress), a miss to a frontend address
 * counts frag_miss: it came before its first fragment, or the first was not ours. */
static __always_inline int FRAG_(translate)(struct __sk_buff *skb, const struct FAM_PKT *p,
					    __u8 hook, int count_miss, struct FAM_FRAG_NAT *out)
{
	struct FAM_FRAG_KEY k;
	struct FAM_FRAG_NAT *v;
	FAM_ADDR d = p->daddr;
	__u64 now = bpf_ktime_get_ns();

	FRAG_(key_of)(p, hook, &k);
	v = FRAG_(get)(&k);
	/* The identification wraps: a record older than the reassembly timeout belongs to another
	 * datagram. */
	if (v && now > v->created_ns && now - v->created_ns > FAM_FRAG_TIMEOUT * 1000000000ULL)
		v = 0;
	if (!v) {
		if (count_miss && LB_(vip_get)(&d))
			lb_count(STAT_FRAG_MISS);
		return 0;
	}
	*out = *v;
	if (FRAG_(rewrite)(skb, p->l3_off, NAT_SRC, p->saddr, out->saddr) ||
	    FRAG_(rewrite)(skb, p->l3_off, NAT_DST, p->daddr, out->daddr)) {
		lb_count(STAT_NAT_FAIL);
		return -1;
	}
	lb_count_flow(out->svc_id, out->backend_id, skb->len, out->reply, 0);
	return 1;
}
