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
 *   lb6_connect, lb6_sendmsg, lb6_recvmsg, lb6_getpeername: the same for IPv6 sockets
 *   (connect6...). The decisions are one template for both families (sock.tmpl.h).
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

/* The destination of a hook's socket address, per family (struct bpf_sock_addr keeps an IPv6 one
 * as four words). */
static __always_inline void lb4_sock_daddr(struct bpf_sock_addr *ctx, __be32 *a)
{
	*a = ctx->user_ip4;
}

static __always_inline void lb4_sock_set_daddr(struct bpf_sock_addr *ctx, const __be32 *a)
{
	ctx->user_ip4 = *a;
}

/* An IPv6 socket naming an IPv4 address (::ffff:a.b.c.d): the IPv4 one is the last word, and the
 * frontend and backend records are IPv4's. */
static __always_inline int lb6_sock_mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0xffff);
}

static __always_inline void lb4m_sock_daddr(struct bpf_sock_addr *ctx, __be32 *a)
{
	*a = ctx->user_ip6[3];
}

static __always_inline void lb4m_sock_set_daddr(struct bpf_sock_addr *ctx, const __be32 *a)
{
	ctx->user_ip6[3] = *a;
}

static __always_inline void lb6_sock_daddr(struct bpf_sock_addr *ctx, struct lb6_addr *a)
{
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
}

static __always_inline void lb6_sock_set_daddr(struct bpf_sock_addr *ctx, const struct lb6_addr *a)
{
	ctx->user_ip6[0] = a->w[0];
	ctx->user_ip6[1] = a->w[1];
	ctx->user_ip6[2] = a->w[2];
	ctx->user_ip6[3] = a->w[3];
}

#define SOCK_(name) lb4_sock_##name
#include "family4.tmpl.h"
#include "sock.tmpl.h"
#include "family_end.tmpl.h"
#undef SOCK_

#define SOCK_(name) lb4m_sock_##name
#include "family4.tmpl.h"
#include "sock.tmpl.h"
#include "family_end.tmpl.h"
#undef SOCK_

#define SOCK_(name) lb6_sock_##name
#include "family6.tmpl.h"
#include "sock.tmpl.h"
#include "family_end.tmpl.h"
#undef SOCK_

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

/* The IPv6 hooks (connect6, sendmsg6, recvmsg6, getpeername6). An IPv6 socket naming an IPv4
 * address (::ffff:a.b.c.d: a dual-stack socket, Java's and Go's by default) is balanced over the
 * IPv4 frontends, its records in lb4_sock_nat; the kernel sends its packets as IPv4. */
int lb6_connect(struct bpf_sock_addr *ctx)
{
	if (lb6_sock_mapped(ctx))
		return lb4m_sock_translate(ctx, 0);
	return lb6_sock_translate(ctx, 0);
}

int lb6_sendmsg(struct bpf_sock_addr *ctx)
{
	if (lb6_sock_mapped(ctx))
		return lb4m_sock_translate(ctx, 1);
	return lb6_sock_translate(ctx, 1);
}

int lb6_recvmsg(struct bpf_sock_addr *ctx)
{
	if (lb6_sock_mapped(ctx))
		lb4m_sock_reverse(ctx, IPPROTO_UDP);
	else
		lb6_sock_reverse(ctx, IPPROTO_UDP);
	return 1;
}

int lb6_getpeername(struct bpf_sock_addr *ctx)
{
	if (lb6_sock_mapped(ctx))
		lb4m_sock_reverse(ctx, ctx->protocol);
	else
		lb6_sock_reverse(ctx, ctx->protocol);
	return 1;
}
