/* lb4_sock.c: the entry points at the cgroup socket hooks, compiled with lb4_tc.c into one object.
 * A socket that connects, or sends a datagram, to a frontend is sent to a backend there and then:
 * its packets carry the backend's address from the start, so no program translates them on the
 * way (the TC programs see a packet to a pod and let it pass). Translating once per connect()
 * instead of once per packet is the point; it also serves the node's own processes, whose
 * packets never cross a pod device. The choice follows the TC programs' rules (the frontend's
 * slots, Maglev or not, weights, session affinity); only the hash input differs: the source port
 * is not chosen yet, so the socket's cookie stands for the client.
 *
 *   lb4_connect      (connect4)      TCP connect(), UDP connect(): frontend -> backend
 *   lb4_sendmsg      (sendmsg4)      a UDP datagram sent to an address: frontend -> backend
 *   lb4_recvmsg      (recvmsg4)      a UDP datagram received: backend -> frontend as its source
 *   lb4_getpeername  (getpeername4)  getpeername(): backend -> frontend
 *
 * A frontend with no usable backend anywhere refuses the connect() or the send with ECONNREFUSED,
 * at once; one whose backends are all on other nodes (a Local policy) is left to the packet path,
 * which drops, as kube-proxy does.
 * Frontends with loadBalancerSourceRanges are left to the packet path: the client's address is
 * not known before the socket connects. A draining frontend takes no new sockets. */
#include <uapi/linux/bpf.h>
#include <linux/errno.h>
#include <linux/socket.h>

#include "lb_maps.h"
#include "counters.h"
#include "lb_core.h"

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif

/* bcc 0.26 declares bpf_get_socket_cookie as returning 32 bits; the helper returns 64. */
static __u64 (*lb_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* Whether the settings say this socket is balanced here (lb_sock_cfg). */
static __always_inline int lb4_sock_covered(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct lb_sock_cfg *cfg = lb_sock_cfg.lookup(&zero);

	if (!cfg || cfg->mode == LB_SOCK_OFF)
		return 0;
	if (cfg->mode == LB_SOCK_HOST_ONLY)
		return bpf_get_netns_cookie(ctx) == cfg->host_netns_cookie;
	return 1;
}

/* A socket's counters: a connection when it is new to this backend, and a datagram per send. */
static __always_inline void lb4_sock_count(__u32 svc_id, __u32 backend_id, int new_socket,
					   int datagram)
{
#if LB_COUNTERS
	struct lb_flow_stats *c;
	__u32 id = svc_id;

	c = lb4_svc_stats.lookup(&id);
	if (c) {
		c->conns += new_socket;
		c->packets_in += datagram;
	}
	id = backend_id;
	c = lb4_backend_stats.lookup(&id);
	if (c) {
		c->conns += new_socket;
		c->packets_in += datagram;
	}
#endif
}

/* The destination of a connect() or a sendmsg(), rewritten to a backend when it is a frontend.
 * Returns what the hook returns: 1 to go on, 0 (with ECONNREFUSED set) to refuse. Counted: new
 * (a connect, or a datagram to a backend this socket did not send to last), established (a
 * datagram again to the same backend), reject (refused), pass (everything else). */
static __always_inline int lb4_sock_translate(struct bpf_sock_addr *ctx, int datagram)
{
	struct lb4_sock_affinity_key ak = {};
	struct lb4_svc_key sk = {};
	struct lb4_sock_key nk = {};
	struct lb4_sock_nat nat = {};
	struct lb4_sock_nat *old;
	struct lb4_backend *be = 0;
	struct lb4_svc *svc;
	__u32 proto = ctx->protocol;
	__u32 id = 0;
	__u64 cookie;
	__u64 now;
	int fresh;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return lb_verdict(AT_SOCKET, VERDICT_PASS, 1);
	sk.vip = ctx->user_ip4;
	sk.port = (__be16)ctx->user_port;
	sk.proto = proto;
	svc = lb4_services.lookup(&sk);
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
		id = lb4_affinity_check(lb4_sock_affinity.lookup(&ak), svc, now, &be);
	}
	if (!id)
		id = lb4_slot_backend(svc, sock_hash4(cookie, sk.vip, sk.port, sk.proto), &be);
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
	old = datagram ? lb4_sock_nat.lookup(&nk) : 0;
	fresh = !old || old->vip != sk.vip || old->port != sk.port || old->backend_id != id;
	if (fresh) {
		nat.vip = sk.vip;
		nat.port = sk.port;
		nat.svc_id = svc->svc_id;
		nat.backend_id = id;
		lb4_sock_nat.update(&nk, &nat);
	}
	ctx->user_ip4 = be->addr;
	ctx->user_port = (__u32)be->port;
	lb4_sock_count(svc->svc_id, id, fresh, datagram);
	return lb_verdict(AT_SOCKET, fresh ? VERDICT_NEW : VERDICT_ESTABLISHED, 1);
}

/* The peer a socket sees (its reply's source, getpeername()): the frontend it asked for, if the
 * hooks sent it to this backend. */
static __always_inline void lb4_sock_reverse(struct bpf_sock_addr *ctx, __u32 proto)
{
	struct lb4_sock_key nk = {};
	struct lb4_sock_nat *nat;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return;
	nk.cookie = lb_socket_cookie(ctx);
	nk.addr = ctx->user_ip4;
	nk.port = (__be16)ctx->user_port;
	nk.proto = proto;
	nat = lb4_sock_nat.lookup(&nk);
	if (!nat)
		return;
	ctx->user_ip4 = nat->vip;
	ctx->user_port = (__u32)nat->port;
}

int lb4_connect(struct bpf_sock_addr *ctx)
{
	return lb4_sock_translate(ctx, 0);
}

int lb4_sendmsg(struct bpf_sock_addr *ctx)
{
	return lb4_sock_translate(ctx, 1);
}

int lb4_recvmsg(struct bpf_sock_addr *ctx)
{
	lb4_sock_reverse(ctx, IPPROTO_UDP);
	return 1;
}

int lb4_getpeername(struct bpf_sock_addr *ctx)
{
	lb4_sock_reverse(ctx, ctx->protocol);
	return 1;
}
