/* lb4_tc.c: the entry points of the data plane, one adapter per hook around the decision core
 * (core.tmpl.h, lb_core.h). The loader inlines the headers (bcc rewrites map calls only in the file it
 * compiles), so each header holds one concern and includes what it uses.
 *
 * Pod-facing devices (the host side of each pod's veth), at TC:
 *   lb4_from_pod (ingress: packets leaving a pod): a packet to a frontend is DNATed to a backend,
 *                chosen by conntrack for a known flow, else by the flow hash over the frontend's
 *                slots; a new flow gets conntrack entries for both directions.
 *   lb4_to_pod   (egress: packets entering a pod): a backend's reply is rewritten back to the
 *                frontend's address and port. Doing it here, on the client-facing side, keeps the
 *                node's rp_filter (the reply arrives from the backend's own address) and the
 *                kernel's conntrack view consistent.
 * Node devices (traffic from outside the cluster), at XDP or TC:
 *   lb4_node_xdp (XDP) and lb4_node_in (TC ingress) take traffic from outside the cluster to
 *                NodePort, LoadBalancer and ExternalIP frontends. A backend on this node gets the
 *                packet DNATed and handed to the stack (the client's address is kept); a backend
 *                on another node gets it DNATed and SNATed to this node's address and sent
 *                straight back out, so its replies return here. Replies of those SNAT flows are
 *                translated back to frontend -> client and sent out the same way. A ClusterIP
 *                reached from outside is dropped.
 *   lb4_node_out (TC egress) turns replies of local backends back into frontend -> client.
 * XDP finishes what it can on its own and leaves the rest (no neighbour entry yet, a reject to
 * send, fragments) untouched to lb4_node_in, which is attached behind it in XDP mode.
 * Every hook hands IPv6 to its twin in lb6_tc.c by a tail call.
 * Everything else passes untouched. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "lb_maps.h"
#include "parse.h"
#include "counters.h"
#include "nat.h"
#include "nat_xdp.h"
#include "reject.h"
#include "fragments.h"
#include "lb_core.h"

/* Hands an IPv6 packet to its program of lb6_tc.c (lb6_progs, by enum lb6_prog); returns only
 * when that program is not loaded (the packet then passes untouched, counted). */
static __always_inline int lb4_to_ipv6(struct __sk_buff *skb, __u32 prog, __u32 at)
{
	lb6_progs.call(skb, prog);
	lb_count(STAT_IPV6_UNLOADED);
	return lb_verdict(at, VERDICT_PASS, TC_ACT_OK);
}

/* Every run ends in exactly one verdict (lb_verdict, counters.h); a drop has its reason counted
 * where it was decided. */

/* A packet left untouched. */
static __always_inline int lb4_pass(__u32 at, int parse_result)
{
	return lb_verdict(at, parse_result == PARSE_MALFORMED ? VERDICT_MALFORMED : VERDICT_PASS,
			  TC_ACT_OK);
}

/* A TC action that may be a drop (its reason counted already): `verdict` unless it is. */
static __always_inline int lb4_done(__u32 at, __u32 verdict, int action)
{
	return lb_verdict(at, action == TC_ACT_SHOT ? VERDICT_DROP : verdict, action);
}

static __always_inline int lb4_drop(__u32 at, __u32 reason)
{
	lb_count(reason);
	return lb_verdict(at, VERDICT_DROP, TC_ACT_SHOT);
}

/* What a packet the decision core sent on is: a reply, a new flow's, or a known flow's. */
static __always_inline __u32 lb4_sent(const struct lb4_nat *n)
{
	if (n->reply)
		return VERDICT_REPLY;
	if (n->new_flow)
		return VERDICT_NEW;
	return n->stateless ? VERDICT_STATELESS : VERDICT_ESTABLISHED;
}

/* Sends a packet back out of the device it came in on (lb4_bounce), or drops it counted. */
static __always_inline int lb4_send_back(struct __sk_buff *skb)
{
	int r = lb4_bounce(skb);

	if (r == TC_ACT_SHOT)
		lb_count(STAT_NAT_FAIL);
	return r;
}

/* An ICMP error about one of our flows, translated (a verdict >= 0) or not ours (-1). */
static __always_inline int lb4_icmp_done(__u32 at, int r)
{
	if (r < 0)
		return lb4_pass(at, PARSE_NOT_OURS);
	return lb4_done(at, VERDICT_ICMP_ERROR, r);
}

/* A later fragment at TC: it goes where its first fragment went. */
static __always_inline int lb4_tc_fragment(struct __sk_buff *skb, const struct pkt4 *p, __u8 hook,
					   __u32 at)
{
	struct frag4_nat v;
	int r = frag4_translate(skb, p, hook, 1, &v);

	if (r < 0)
		return lb_verdict(at, VERDICT_DROP, TC_ACT_SHOT);
	if (r == 0)
		return lb4_pass(at, PARSE_NOT_OURS);
	if (v.action == FRAG_ACT_BOUNCE)
		return lb4_done(at, VERDICT_FRAGMENT, lb4_send_back(skb));
	if (v.action == FRAG_ACT_REDIRECT) {
		if (tc_ttl_dec(skb, p->l3_off))
			return lb4_drop(at, STAT_FORWARD_FAIL);
		return lb4_done(at, VERDICT_FRAGMENT, lb_send_out(v.ifindex));
	}
	return lb_verdict(at, VERDICT_FRAGMENT, TC_ACT_OK);
}

/* ---- pod devices ---- */

/* Hairpin, forward: the pod's packet to its own Service, already DNATed to itself, gets the
 * hairpin address as source (a packet from its own address would be dropped as martian) and goes
 * straight back out of the device it came from. */
static __always_inline int lb4_hairpin_out(struct __sk_buff *skb, const struct pkt4 *p)
{
	if (lb4_rewrite(skb, p, NAT_SRC, bpf_htonl(LB4_HAIRPIN_ADDR_HOST), p->sport)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	return lb4_send_back(skb);
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
		return lb4_pass(AT_FROM_POD, PARSE_NOT_OURS);
	ct4_track(ct, p, bpf_ktime_get_ns());
	if (lb4_rewrite(skb, p, NAT_SRC, ct->nat_addr, ct->nat_port) ||
	    lb4_rewrite(skb, p, NAT_DST, p->saddr, p->dport))
		return lb4_drop(AT_FROM_POD, STAT_NAT_FAIL);
	frag4_record(p, FRAG_AT_POD_IN, ct->nat_addr, p->saddr, ct->svc_id, ct->backend_id,
		     FRAG_ACT_BOUNCE, 0, 1);
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return lb4_done(AT_FROM_POD, VERDICT_REPLY, lb4_send_back(skb));
}

int lb4_from_pod(struct __sk_buff *skb)
{
	struct pkt4 p = {};
	struct lb4_svc_key sk = {};
	struct lb4_svc *svc;
	struct lb4_nat n = {};
	int hairpin;
	int r;

	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return lb4_to_ipv6(skb, LB6_PROG_FROM_POD, AT_FROM_POD);
	lb4_pull_headers(skb);
	r = lb4_parse(skb, &p);
	if (r == PARSE_NOT_OURS)
		return lb4_icmp_done(AT_FROM_POD, lb4_icmp_client(skb, CT_DIR_FWD, 0, 0));
	if (r == PARSE_FRAGMENT)
		return lb4_tc_fragment(skb, &p, FRAG_AT_POD_IN, AT_FROM_POD);
	if (r != PARSE_OK)
		return lb4_pass(AT_FROM_POD, r);

	if (p.daddr == bpf_htonl(LB4_HAIRPIN_ADDR_HOST))
		return lb4_hairpin_reply(skb, &p);
	sk.vip = p.daddr;
	sk.port = p.dport;
	sk.proto = p.proto;
	svc = lb4_services.lookup(&sk);
	if (!svc)
		return lb4_pass(AT_FROM_POD, PARSE_NOT_OURS);

	r = lb4_frontend(skb, &p, svc, skb->ifindex, HOOK_POD, &n);
	if (r == NV_PASS)
		return lb4_pass(AT_FROM_POD, PARSE_NOT_OURS);
	if (r == NV_DROP)
		return lb_verdict(AT_FROM_POD, VERDICT_DROP, TC_ACT_SHOT);
	if (r == NV_REJECT)
		return lb4_done(AT_FROM_POD, VERDICT_REJECT, lb4_reject(skb, &p));
	if (lb4_rewrite(skb, &p, NAT_DST, n.daddr, n.dport) ||
	    (n.sport != p.sport && lb4_rewrite(skb, &p, NAT_SRC, p.saddr, n.sport)))
		return lb4_drop(AT_FROM_POD, STAT_NAT_FAIL);
	lb_count_flow(n.svc_id, n.backend_id, skb->len, 0, n.new_flow);
	hairpin = n.daddr == p.saddr;
	frag4_record(&p, FRAG_AT_POD_IN, hairpin ? bpf_htonl(LB4_HAIRPIN_ADDR_HOST) : p.saddr,
		     n.daddr, n.svc_id, n.backend_id, hairpin ? FRAG_ACT_BOUNCE : FRAG_ACT_PASS, 0, 0);
	if (hairpin)
		return lb4_done(AT_FROM_POD, lb4_sent(&n), lb4_hairpin_out(skb, &p));
	return lb_verdict(AT_FROM_POD, lb4_sent(&n), TC_ACT_OK);
}

int lb4_to_pod(struct __sk_buff *skb)
{
	struct pkt4 p = {};
	struct ct4_key rk;
	struct ct4_entry *ct;
	int half_open;
	int r;

	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return lb4_to_ipv6(skb, LB6_PROG_TO_POD, AT_TO_POD);
	lb4_pull_headers(skb);
	r = lb4_parse(skb, &p);
	if (r == PARSE_NOT_OURS)
		return lb4_icmp_done(AT_TO_POD, lb4_icmp_client(skb, CT_DIR_REPLY, 0, 0));
	if (r == PARSE_FRAGMENT)
		return lb4_tc_fragment(skb, &p, FRAG_AT_POD_OUT, AT_TO_POD);
	if (r != PARSE_OK)
		return lb4_pass(AT_TO_POD, r);

	ct4_key_of(&p, CT_DIR_REPLY, &rk);
	ct = ct4_find_half_open(&rk, &half_open);
	if (!ct || ct4_reply_of_closed(&p, &rk, ct, half_open))
		return lb4_pass(AT_TO_POD, PARSE_NOT_OURS);
	/* Replies never expire an entry here: the agent's GC ages a flow by both directions. */
	ct4_track(ct, &p, bpf_ktime_get_ns());
	if (lb4_rewrite(skb, &p, NAT_SRC, ct->nat_addr, ct->nat_port) ||
	    ((ct->flags & CT_F_PORT_NAT) && lb4_rewrite(skb, &p, NAT_DST, p.daddr, ct->nat2_port)))
		return lb4_drop(AT_TO_POD, STAT_NAT_FAIL);
	frag4_record(&p, FRAG_AT_POD_OUT, ct->nat_addr, p.daddr, ct->svc_id, ct->backend_id,
		     FRAG_ACT_PASS, 0, 1);
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return lb_verdict(AT_TO_POD, VERDICT_REPLY, TC_ACT_OK);
}

/* ---- node devices ---- */

/* A reply of a SNAT flow, from the backend on another node to this node's SNAT port: it goes
 * back to the client as coming from the frontend. */
static __always_inline int lb4_node_snat_reply(void *ctx, const struct pkt4 *p, __u32 ingress,
					       int hook, struct lb4_nat *n)
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
	if (HOOK_IS_XDP(hook) && !n->fib_ok)
		return NV_TO_STACK;
	ct4_track(ct, p, bpf_ktime_get_ns());
	return NV_REMOTE;
}

static __always_inline int lb4_node_decide(void *ctx, const struct pkt4 *p, __u32 ingress, int hook,
					   struct lb4_nat *n)
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
		return lb4_frontend(ctx, p, svc, ingress, hook, n);
	return lb4_node_snat_reply(ctx, p, ingress, hook, n);
}

/* Hands an IPv6 frame to its XDP program of lb6_tc.c (lb6_xdp_progs, by enum lb6_xdp_prog). Returns
 * 0 for any other frame, 1 for an IPv6 frame whose program is not loaded (it then passes untouched,
 * counted as a pass, and TC's lb4_node_in hands it to lb6_node_in). */
static __always_inline int lb4_xdp_to_ipv6(struct xdp_md *ctx, const int hook)
{
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return 0;
	lb6_xdp_progs.call(ctx, hook == HOOK_XDP ? LB6_XDP_NATIVE : LB6_XDP_GENERIC);
	lb_count(STAT_IPV6_UNLOADED);
	return 1;
}

static __always_inline int lb4_xdp(struct xdp_md *ctx, const int hook)
{
	struct lb4_nat n = {};
	struct pkt4 p = {};
	__u32 len;
	int v;

	if (lb4_xdp_to_ipv6(ctx, hook))
		return lb_verdict(AT_NODE_XDP, VERDICT_PASS, XDP_PASS);

	/* What XDP does not finish is left to lb4_node_in behind it, which decides again; fragments
	 * are all left to it, so a datagram's pieces are translated in one place. */
	v = lb4_parse_xdp(ctx, &p);
	if (v != PARSE_OK || p.frag)
		return lb_verdict(AT_NODE_XDP, v == PARSE_MALFORMED ? VERDICT_MALFORMED : VERDICT_PASS,
				  XDP_PASS);
	len = (void *)(long)ctx->data_end - (void *)(long)ctx->data;
	n.xdp_len = len - p.l3_off;
	v = lb4_node_decide(ctx, &p, ctx->ingress_ifindex, hook, &n);
	if (v == NV_PASS)
		return lb_verdict(AT_NODE_XDP, VERDICT_PASS, XDP_PASS);
	if (v == NV_DROP)
		return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
	if (v != NV_LOCAL && v != NV_REMOTE)
		return lb_verdict(AT_NODE_XDP, VERDICT_TO_TC, XDP_PASS);
	if (xdp_rewrite(ctx, &p, NAT_DST, n.daddr, n.dport)) {
		lb_count(STAT_NAT_FAIL);
		return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
	}
	if (v == NV_LOCAL) {
		if (n.sport != p.sport && xdp_rewrite(ctx, &p, NAT_SRC, p.saddr, n.sport)) {
			lb_count(STAT_NAT_FAIL);
			return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
		}
		lb_count_flow(n.svc_id, n.backend_id, len, n.reply, n.new_flow);
		return lb_verdict(AT_NODE_XDP, lb4_sent(&n), XDP_PASS);
	}
	if (xdp_rewrite(ctx, &p, NAT_SRC, n.saddr, n.sport) || xdp_set_macs(ctx, n.smac, n.dmac)) {
		lb_count(STAT_NAT_FAIL);
		return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
	}
	if (xdp_ttl_dec(ctx, &p)) {
		lb_count(STAT_FORWARD_FAIL);
		return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
	}
	lb_count_flow(n.svc_id, n.backend_id, len, n.reply, n.new_flow);
	lb_count(STAT_XDP_FORWARD);
	if (n.ifindex == ctx->ingress_ifindex)
		return lb_verdict(AT_NODE_XDP, lb4_sent(&n), XDP_TX);
	return lb_verdict(AT_NODE_XDP, lb4_sent(&n), bpf_redirect(n.ifindex, 0));
}

int lb4_node_xdp(struct xdp_md *ctx)
{
	return lb4_xdp(ctx, HOOK_XDP);
}

/* The same in generic mode (a driver without native XDP): the agent attaches this one there. */
int lb4_xdp_generic(struct xdp_md *ctx)
{
	return lb4_xdp(ctx, HOOK_XDP_GENERIC);
}

int lb4_node_in(struct __sk_buff *skb)
{
	struct lb4_nat n = {};
	struct pkt4 p = {};
	int r;

	if (skb_of_a_vlan(skb))
		return lb4_pass(AT_NODE_IN, PARSE_NOT_OURS);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return lb4_to_ipv6(skb, LB6_PROG_NODE_IN, AT_NODE_IN);
	lb4_pull_headers(skb);
	r = lb4_parse(skb, &p);
	if (r == PARSE_NOT_OURS)
		return lb4_icmp_done(AT_NODE_IN, lb4_node_icmp_in(skb));
	if (r == PARSE_FRAGMENT)
		return lb4_tc_fragment(skb, &p, FRAG_AT_NODE_IN, AT_NODE_IN);
	if (r != PARSE_OK)
		return lb4_pass(AT_NODE_IN, r);
	r = lb4_node_decide(skb, &p, skb->ifindex, HOOK_NODE, &n);
	if (r == NV_PASS || r == NV_TO_STACK)
		return lb4_pass(AT_NODE_IN, PARSE_NOT_OURS);
	if (r == NV_DROP)
		return lb_verdict(AT_NODE_IN, VERDICT_DROP, TC_ACT_SHOT);
	if (r == NV_REJECT)
		return lb4_done(AT_NODE_IN, VERDICT_REJECT, lb4_reject(skb, &p));
	if (r == NV_TOO_BIG) {
		/* The flow stands (its conntrack entries are written); this packet is answered. */
		lb_count_flow(n.svc_id, n.backend_id, skb->len, n.reply, n.new_flow);
		r = lb4_too_big(skb, &p, n.mtu);
		if (r == TC_ACT_SHOT)
			lb_count(STAT_FORWARD_FAIL);
		return lb4_done(AT_NODE_IN, VERDICT_REJECT, r);
	}
	if (lb4_rewrite(skb, &p, NAT_DST, n.daddr, n.dport))
		return lb4_drop(AT_NODE_IN, STAT_NAT_FAIL);
	if (r == NV_LOCAL) {
		if (n.sport != p.sport && lb4_rewrite(skb, &p, NAT_SRC, p.saddr, n.sport))
			return lb4_drop(AT_NODE_IN, STAT_NAT_FAIL);
		frag4_record(&p, FRAG_AT_NODE_IN, p.saddr, n.daddr, n.svc_id, n.backend_id,
			     FRAG_ACT_PASS, 0, 0);
		lb_count_flow(n.svc_id, n.backend_id, skb->len, n.reply, n.new_flow);
		return lb_verdict(AT_NODE_IN, lb4_sent(&n), TC_ACT_OK);
	}
	if (lb4_rewrite(skb, &p, NAT_SRC, n.saddr, n.sport))
		return lb4_drop(AT_NODE_IN, STAT_NAT_FAIL);
	/* The packet now comes from this node's own address: handed to the stack it would be a
	 * martian, so it goes out directly, the neighbour resolved by the kernel. */
	if (tc_ttl_dec(skb, p.l3_off))
		return lb4_drop(AT_NODE_IN, STAT_FORWARD_FAIL);
	frag4_record(&p, FRAG_AT_NODE_IN, n.saddr, n.daddr, n.svc_id, n.backend_id,
		     FRAG_ACT_REDIRECT, n.ifindex, n.reply);
	lb_count_flow(n.svc_id, n.backend_id, skb->len, n.reply, n.new_flow);
	lb_count(STAT_NODE_FORWARD);
	return lb4_done(AT_NODE_IN, lb4_sent(&n), lb_send_out(n.ifindex));
}

int lb4_node_out(struct __sk_buff *skb)
{
	struct ct4_entry *ct;
	struct ct4_key rk;
	struct pkt4 p = {};
	int half_open;
	int r;

	if (skb_of_a_vlan(skb))
		return lb4_pass(AT_NODE_OUT, PARSE_NOT_OURS);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return lb4_to_ipv6(skb, LB6_PROG_NODE_OUT, AT_NODE_OUT);
	lb4_pull_headers(skb);
	r = lb4_parse(skb, &p);
	if (r == PARSE_NOT_OURS)
		/* A local backend's ICMP error to a client outside: from the frontend again. */
		return lb4_icmp_done(AT_NODE_OUT, lb4_icmp_client(skb, CT_DIR_REPLY,
								  CT_F_EXTERNAL | CT_F_SNAT,
								  CT_F_EXTERNAL));
	if (r == PARSE_FRAGMENT) {
		struct frag4_nat v;

		/* Only fragments whose first one this program translated have a record here. */
		r = frag4_translate(skb, &p, FRAG_AT_NODE_OUT, 0, &v);
		if (r < 0)
			return lb_verdict(AT_NODE_OUT, VERDICT_DROP, TC_ACT_SHOT);
		return lb_verdict(AT_NODE_OUT, r ? VERDICT_FRAGMENT : VERDICT_PASS, TC_ACT_OK);
	}
	if (r != PARSE_OK)
		return lb4_pass(AT_NODE_OUT, r);
	ct4_key_of(&p, CT_DIR_REPLY, &rk);
	ct = ct4_find_half_open(&rk, &half_open);
	/* Only replies of flows from outside to this node's backends; a pod's own flows are
	 * translated at its device, and SNAT flows on ingress. */
	if (!ct || (ct->flags & (CT_F_EXTERNAL | CT_F_SNAT)) != CT_F_EXTERNAL ||
	    ct4_reply_of_closed(&p, &rk, ct, half_open))
		return lb4_pass(AT_NODE_OUT, PARSE_NOT_OURS);
	ct4_track(ct, &p, bpf_ktime_get_ns());
	if (lb4_rewrite(skb, &p, NAT_SRC, ct->nat_addr, ct->nat_port) ||
	    ((ct->flags & CT_F_PORT_NAT) && lb4_rewrite(skb, &p, NAT_DST, p.daddr, ct->nat2_port)))
		return lb4_drop(AT_NODE_OUT, STAT_NAT_FAIL);
	frag4_record(&p, FRAG_AT_NODE_OUT, ct->nat_addr, p.daddr, ct->svc_id, ct->backend_id,
		     FRAG_ACT_PASS, 0, 1);
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return lb_verdict(AT_NODE_OUT, VERDICT_REPLY, TC_ACT_OK);
}
