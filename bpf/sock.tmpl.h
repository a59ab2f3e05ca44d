/* sock.tmpl.h: the cgroup socket hooks' decisions, for one IP family (a template: see
 * family4.tmpl.h): a connect() or a datagram to a frontend sent to a backend, and the frontend
 * given back as the peer. lb4_sock.c instantiates it three times: IPv4, IPv4 named by an IPv6
 * socket (::ffff:a.b.c.d) and IPv6. SOCK_(name) names what it defines and the accessors of the
 * hook's destination it uses (SOCK_(daddr), SOCK_(set_daddr)), which differ between the three;
 * LB_() and the FAM_ types are the family's. */

/* The destination of a connect() or a sendmsg(), rewritten to a backend when it is a frontend.
 * Returns what the hook returns: 1 to go on, 0 (with ECONNREFUSED set) to refuse. Counted: new
 * (a connect, or a datagram to a backend this socket did not send to last), established (a
 * datagram again to the same backend), reject (refused), pass (everything else). */
static __always_inline int SOCK_(translate)(struct bpf_sock_addr *ctx, int datagram)
{
	struct lb4_sock_affinity_key ak = {};
	struct FAM_SVC_KEY sk = {};
	struct FAM_SOCK_KEY nk = {};
	struct FAM_SOCK_NAT nat = {};
	struct FAM_SOCK_NAT *old;
	struct FAM_BACKEND *be = 0;
	struct lb4_svc *svc;
	__u32 proto = ctx->protocol;
	__u32 id = 0;
	__u64 cookie;
	__u64 now;
	int fresh;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return lb_verdict(AT_SOCKET, VERDICT_PASS, 1);
	SOCK_(daddr)(ctx, &sk.vip);
	sk.port = (__be16)ctx->user_port;
	sk.proto = proto;
	svc = LB_(svc_get)(&sk);
	/* The settings are read only for a frontend: every other connect() costs one lookup. */
	if (!svc || !lb4_sock_covered(ctx))
		return lb_verdict(AT_SOCKET, VERDICT_PASS, 1);
	if (svc->flags & (LB4_SVC_F_DRAINING | LB4_SVC_F_SRC_RANGES))
		return lb_verdict(AT_SOCKET, VERDICT_PASS, 1);

	cookie = lb_socket_cookie(ctx);
	now = bpf_ktime_get_ns();
	if (svc->affinity_timeout) {
		ak.svc_id = svc->svc_id;
		ak.netns_cookie = bpf_get_netns_cookie(ctx);
		id = LB_(affinity_check)(lb4_sock_affinity.lookup(&ak), svc, now, &be);
	}
	if (!id)
		id = LB_(slot_backend)(svc, FAM_SOCK_HASH(cookie, sk.vip, sk.port, sk.proto), &be);
	if (!id || !be) {
		/* Backends only on other nodes (a Local policy): kube-proxy drops such traffic, which
		 * a socket cannot be told; its packets go on untranslated and the packet path drops
		 * them. No backend anywhere: refused at once. */
		if (svc->flags & LB4_SVC_F_DROP_EMPTY)
			return lb_verdict(AT_SOCKET, VERDICT_PASS, 1);
		bpf_set_retval(-ECONNREFUSED);
		return lb_verdict(AT_SOCKET, VERDICT_REJECT, 0);
	}
	if (svc->affinity_timeout) {
		struct lb4_affinity a = { .last_used_ns = now, .backend_id = id };

		lb4_sock_affinity.update(&ak, &a);
	}

	nk.cookie = cookie;
	nk.addr = be->addr;
	nk.port = be->port;
	nk.proto = sk.proto;
	/* A connect() has a socket of its own (its cookie is new, but for a reconnect), so it just
	 * writes; a datagram looks first, so a socket sending again to the same backend costs no
	 * write per datagram. */
	old = datagram ? LB_(sock_nat_get)(&nk) : 0;
	fresh = !old || !FAM_ADDR_EQ(old->vip, sk.vip) || old->port != sk.port ||
		old->backend_id != id;
	if (fresh) {
		nat.vip = sk.vip;
		nat.port = sk.port;
		nat.svc_id = svc->svc_id;
		nat.backend_id = id;
		LB_(sock_nat_put)(&nk, &nat);
	}
	SOCK_(set_daddr)(ctx, &be->addr);
	ctx->user_port = (__u32)be->port;
	lb4_sock_count(svc->svc_id, id, fresh, datagram);
	return lb_verdict(AT_SOCKET, fresh ? VERDICT_NEW : VERDICT_ESTABLISHED, 1);
}

/* The peer a socket sees (its reply's source, getpeername()): the frontend it asked for, if the
 * hooks sent it to this backend. */
static __always_inline void SOCK_(reverse)(struct bpf_sock_addr *ctx, __u32 proto)
{
	struct FAM_SOCK_KEY nk = {};
	struct FAM_SOCK_NAT *nat;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return;
	nk.cookie = lb_socket_cookie(ctx);
	SOCK_(daddr)(ctx, &nk.addr);
	nk.port = (__be16)ctx->user_port;
	nk.proto = proto;
	nat = LB_(sock_nat_get)(&nk);
	if (!nat)
		return;
	SOCK_(set_daddr)(ctx, &nat->vip);
	ctx->user_port = (__u32)nat->port;
}

