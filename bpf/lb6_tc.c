/* lb6_tc.c: the IPv6 programs, compiled with lb4_tc.c into one object. The entry points of
 * lb4_tc.c hand every IPv6 packet to these by a tail call (TC: skb->protocol, through lb6_progs;
 * XDP: the Ethernet type, through lb6_xdp_progs), so an IPv4 packet pays one comparison for them
 * and each IPv6 program has a stack of its own (its addresses, keys and entries are four times
 * larger). The same hooks, around the same decision core (core.tmpl.h, as lb6_frontend), with
 * IPv6 parsing (extension headers walked), rewriting (no header checksum) and rejects (RST,
 * ICMPv6 port unreachable). Fragments follow their first fragment (fragments.tmpl.h, frag6), and
 * ICMPv6 errors about a flow are translated as its packets are (icmp_nat.tmpl.h). At XDP, as for
 * IPv4, what XDP cannot finish alone (fragments, ICMPv6, rejects, an unresolved neighbour) is
 * left untouched to lb6_node_in behind it. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "lb_maps.h"
#include "parse.h"
#include "addr6.h"
#include "counters.h"
#include "nat.h"
#include "nat_xdp.h"
#include "reject.h"
#include "fragments.h"
#include "lb_core.h"

/* The verdict of a packet the decision core sent on (lb4_sent for lb6_nat). */
static __always_inline __u32 lb6_sent(const struct lb6_nat *n)
{
	if (n->reply)
		return VERDICT_REPLY;
	if (n->new_flow)
		return VERDICT_NEW;
	return n->stateless ? VERDICT_STATELESS : VERDICT_ESTABLISHED;
}

/* A parsed packet that is not one to translate here. */
static __always_inline int lb6_pass(__u32 at, int parse_result)
{
	return lb_verdict(at, parse_result == PARSE_MALFORMED ? VERDICT_MALFORMED : VERDICT_PASS,
			  TC_ACT_OK);
}

static __always_inline int lb6_done(__u32 at, __u32 verdict, int action)
{
	return lb_verdict(at, action == TC_ACT_SHOT ? VERDICT_DROP : verdict, action);
}

static __always_inline int lb6_drop(__u32 at, __u32 reason)
{
	lb_count(reason);
	return lb_verdict(at, VERDICT_DROP, TC_ACT_SHOT);
}

static __always_inline int lb6_send_back(struct __sk_buff *skb)
{
	int r = lb4_bounce(skb);

	if (r == TC_ACT_SHOT)
		lb_count(STAT_NAT_FAIL);
	return r;
}

/* An ICMPv6 error about one of our flows, translated (a verdict >= 0) or not ours (-1). */
static __always_inline int lb6_icmp_done(__u32 at, int r)
{
	if (r < 0)
		return lb6_pass(at, PARSE_NOT_OURS);
	return lb6_done(at, VERDICT_ICMP_ERROR, r);
}

/* A later fragment at TC: it goes where its first fragment went (as lb4_tc_fragment). */
static __always_inline int lb6_tc_fragment(struct __sk_buff *skb, const struct pkt6 *p, __u8 hook,
					   __u32 at, int count_miss)
{
	struct frag6_nat v;
	int r = frag6_translate(skb, p, hook, count_miss, &v);

	if (r < 0)
		return lb_verdict(at, VERDICT_DROP, TC_ACT_SHOT);
	if (r == 0)
		return lb6_pass(at, PARSE_NOT_OURS);
	if (v.action == FRAG_ACT_BOUNCE)
		return lb6_done(at, VERDICT_FRAGMENT, lb6_send_back(skb));
	if (v.action == FRAG_ACT_REDIRECT) {
		if (tc_hop_limit_dec(skb, p->l3_off))
			return lb6_drop(at, STAT_FORWARD_FAIL);
		return lb6_done(at, VERDICT_FRAGMENT, lb_send_out(v.ifindex));
	}
	return lb_verdict(at, VERDICT_FRAGMENT, TC_ACT_OK);
}

/* ---- pod devices ---- */

/* Hairpin (a pod reaching itself through its Service): as lb4_hairpin_out and lb4_hairpin_reply,
 * with the IPv6 hairpin address (LB6_HAIRPIN_ADDR_*). */
static __always_inline int lb6_hairpin_out(struct __sk_buff *skb, const struct pkt6 *p)
{
	struct lb6_addr hairpin;

	addr6_set_hairpin(&hairpin);
	if (lb6_rewrite(skb, p, NAT_SRC, hairpin, p->sport)) {
		lb_count(STAT_NAT_FAIL);
		return TC_ACT_SHOT;
	}
	return lb6_send_back(skb);
}

static __always_inline int lb6_hairpin_reply(struct __sk_buff *skb, const struct pkt6 *p)
{
	struct ct6_key rk;
	struct ct6_entry *ct;

	ct6_key_of(p, CT_DIR_REPLY, &rk);
	ct = ct6_find(&rk);
	if (!ct)
		return lb6_pass(AT_FROM_POD, PARSE_NOT_OURS);
	ct6_track(ct, p, bpf_ktime_get_ns());
	if (lb6_rewrite(skb, p, NAT_SRC, ct->nat_addr, ct->nat_port) ||
	    lb6_rewrite(skb, p, NAT_DST, p->saddr, p->dport))
		return lb6_drop(AT_FROM_POD, STAT_NAT_FAIL);
	frag6_record(p, FRAG_AT_POD_IN, ct->nat_addr, p->saddr, ct->svc_id, ct->backend_id,
		     FRAG_ACT_BOUNCE, 0, 1);
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return lb6_done(AT_FROM_POD, VERDICT_REPLY, lb6_send_back(skb));
}

int lb6_from_pod(struct __sk_buff *skb)
{
	struct lb6_svc_key sk = {};
	struct lb6_nat n = {};
	struct pkt6 p = {};
	struct lb4_svc *svc;
	int r;

	lb_pull_headers(skb, LB6_PULL_LEN);
	r = lb6_parse(skb, &p);
	if (r == PARSE_NOT_OURS)
		return lb6_icmp_done(AT_FROM_POD, lb6_icmp_client(skb, CT_DIR_FWD, 0, 0));
	if (r == PARSE_FRAGMENT)
		return lb6_tc_fragment(skb, &p, FRAG_AT_POD_IN, AT_FROM_POD, 1);
	if (r != PARSE_OK)
		return lb6_pass(AT_FROM_POD, r);
	if (addr6_is_hairpin(&p.daddr))
		return lb6_hairpin_reply(skb, &p);
	sk.vip = p.daddr;
	sk.port = p.dport;
	sk.proto = p.proto;
	svc = lb6_services.lookup(&sk);
	if (!svc)
		return lb6_pass(AT_FROM_POD, PARSE_NOT_OURS);

	r = lb6_frontend(skb, &p, svc, skb->ifindex, HOOK_POD, &n);
	if (r == NV_PASS)
		return lb6_pass(AT_FROM_POD, PARSE_NOT_OURS);
	if (r == NV_DROP)
		return lb_verdict(AT_FROM_POD, VERDICT_DROP, TC_ACT_SHOT);
	if (r == NV_REJECT)
		return lb6_done(AT_FROM_POD, VERDICT_REJECT, lb6_reject(skb, &p));
	if (lb6_rewrite(skb, &p, NAT_DST, n.daddr, n.dport) ||
	    (n.sport != p.sport && lb6_rewrite(skb, &p, NAT_SRC, p.saddr, n.sport)))
		return lb6_drop(AT_FROM_POD, STAT_NAT_FAIL);
	lb_count_flow(n.svc_id, n.backend_id, skb->len, 0, n.new_flow);
	if (addr6_eq(&n.daddr, &p.saddr)) {
		struct lb6_addr hairpin;

		addr6_set_hairpin(&hairpin);
		frag6_record(&p, FRAG_AT_POD_IN, hairpin, n.daddr, n.svc_id, n.backend_id,
			     FRAG_ACT_BOUNCE, 0, 0);
		return lb6_done(AT_FROM_POD, lb6_sent(&n), lb6_hairpin_out(skb, &p));
	}
	frag6_record(&p, FRAG_AT_POD_IN, p.saddr, n.daddr, n.svc_id, n.backend_id, FRAG_ACT_PASS, 0,
		     0);
	return lb_verdict(AT_FROM_POD, lb6_sent(&n), TC_ACT_OK);
}

int lb6_to_pod(struct __sk_buff *skb)
{
	struct ct6_entry *ct;
	struct pkt6 p = {};
	struct ct6_key rk;
	int half_open;
	int r;

	lb_pull_headers(skb, LB6_PULL_LEN);
	r = lb6_parse(skb, &p);
	if (r == PARSE_NOT_OURS)
		return lb6_icmp_done(AT_TO_POD, lb6_icmp_client(skb, CT_DIR_REPLY, 0, 0));
	if (r == PARSE_FRAGMENT)
		return lb6_tc_fragment(skb, &p, FRAG_AT_POD_OUT, AT_TO_POD, 1);
	if (r != PARSE_OK)
		return lb6_pass(AT_TO_POD, r);
	ct6_key_of(&p, CT_DIR_REPLY, &rk);
	ct = ct6_find_half_open(&rk, &half_open);
	if (!ct || ct6_reply_of_closed(&p, &rk, ct, half_open))
		return lb6_pass(AT_TO_POD, PARSE_NOT_OURS);
	ct6_track(ct, &p, bpf_ktime_get_ns());
	if (lb6_rewrite(skb, &p, NAT_SRC, ct->nat_addr, ct->nat_port) ||
	    ((ct->flags & CT_F_PORT_NAT) && lb6_rewrite(skb, &p, NAT_DST, p.daddr, ct->nat2_port)))
		return lb6_drop(AT_TO_POD, STAT_NAT_FAIL);
	frag6_record(&p, FRAG_AT_POD_OUT, ct->nat_addr, p.daddr, ct->svc_id, ct->backend_id,
		     FRAG_ACT_PASS, 0, 1);
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return lb_verdict(AT_TO_POD, VERDICT_REPLY, TC_ACT_OK);
}

/* ---- node devices ---- */

/* A reply of a SNAT flow, as lb4_node_snat_reply. */
static __always_inline int lb6_node_snat_reply(void *ctx, const struct pkt6 *p, __u32 ingress,
					       int hook, struct lb6_nat *n)
{
	__u16 port = bpf_ntohs(p->dport);
	struct ct6_entry *ct;
	struct ct6_key rk;
	int rc;

	if (port < LB4_SNAT_PORT_MIN || port > LB4_SNAT_PORT_MAX)
		return NV_PASS;
	ct6_key_of(p, CT_DIR_REPLY, &rk);
	ct = ct6_find(&rk);
	if (!ct || !(ct->flags & CT_F_SNAT))
		return NV_PASS;
	n->saddr = ct->nat_addr;
	n->sport = ct->nat_port;
	n->daddr = ct->nat2_addr;
	n->dport = ct->nat2_port;
	n->svc_id = ct->svc_id;
	n->backend_id = ct->backend_id;
	n->reply = 1;
	rc = lb6_fib(ctx, p, n->saddr, n->sport, n->daddr, n->dport, ingress, n);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		lb_count(STAT_FORWARD_FAIL);
		return NV_DROP;
	}
	if (HOOK_IS_XDP(hook) && !n->fib_ok)
		return NV_TO_STACK;
	ct6_track(ct, p, bpf_ktime_get_ns());
	return NV_REMOTE;
}

static __always_inline int lb6_node_decide(void *ctx, const struct pkt6 *p, __u32 ingress,
					   int hook, struct lb6_nat *n)
{
	struct lb6_svc_key sk = { .vip = p->daddr, .port = p->dport, .proto = p->proto };
	struct lb4_svc *svc = lb6_services.lookup(&sk);

	if (svc && (svc->flags & LB4_SVC_F_ETP_LOCAL)) {
		sk.scope = LB4_SCOPE_EXTERNAL;
		svc = lb6_services.lookup(&sk);
		if (!svc) {
			lb_count(STAT_NO_BACKEND);
			return NV_DROP;
		}
	}
	if (svc)
		return lb6_frontend(ctx, p, svc, ingress, hook, n);
	return lb6_node_snat_reply(ctx, p, ingress, hook, n);
}

/* The packet and its translation of lb6_node_in and lb6_node_xdp, per CPU: with the route lookup
 * and the SNAT port search on the way, they do not fit in 512 bytes of stack. One slot per hook
 * (enum lb6_scratch), so a program never finds the other's half-written state. */
struct lb6_node_scratch {
	struct pkt6 p;
	struct lb6_nat n;
};

enum lb6_scratch {
	LB6_SCRATCH_TC = 0,
	LB6_SCRATCH_XDP,
	LB6_SCRATCH_MAX,
};

BPF_PERCPU_ARRAY(lb6_node_scratch, struct lb6_node_scratch, LB6_SCRATCH_MAX);

int lb6_node_in(struct __sk_buff *skb)
{
	struct lb6_node_scratch *s;
	struct lb6_nat *n;
	struct pkt6 *p;
	__u32 slot = LB6_SCRATCH_TC;
	int r;

	s = lb6_node_scratch.lookup(&slot);
	if (!s)
		return lb6_pass(AT_NODE_IN, PARSE_NOT_OURS);
	__builtin_memset(s, 0, sizeof(*s));
	p = &s->p;
	n = &s->n;
	lb_pull_headers(skb, LB6_PULL_LEN);
	r = lb6_parse(skb, p);
	if (r == PARSE_NOT_OURS)
		return lb6_icmp_done(AT_NODE_IN, lb6_node_icmp_in(skb));
	if (r == PARSE_FRAGMENT)
		return lb6_tc_fragment(skb, p, FRAG_AT_NODE_IN, AT_NODE_IN, 1);
	if (r != PARSE_OK)
		return lb6_pass(AT_NODE_IN, r);
	r = lb6_node_decide(skb, p, skb->ifindex, HOOK_NODE, n);
	if (r == NV_PASS || r == NV_TO_STACK)
		return lb6_pass(AT_NODE_IN, PARSE_NOT_OURS);
	if (r == NV_DROP)
		return lb_verdict(AT_NODE_IN, VERDICT_DROP, TC_ACT_SHOT);
	if (r == NV_REJECT)
		return lb6_done(AT_NODE_IN, VERDICT_REJECT, lb6_reject(skb, p));
	if (r == NV_TOO_BIG) {
		lb_count_flow(n->svc_id, n->backend_id, skb->len, n->reply, n->new_flow);
		r = lb6_too_big(skb, p, n->mtu);
		if (r == TC_ACT_SHOT)
			lb_count(STAT_FORWARD_FAIL);
		return lb6_done(AT_NODE_IN, VERDICT_REJECT, r);
	}
	if (lb6_rewrite(skb, p, NAT_DST, n->daddr, n->dport))
		return lb6_drop(AT_NODE_IN, STAT_NAT_FAIL);
	if (r == NV_LOCAL) {
		if (n->sport != p->sport && lb6_rewrite(skb, p, NAT_SRC, p->saddr, n->sport))
			return lb6_drop(AT_NODE_IN, STAT_NAT_FAIL);
		frag6_record(p, FRAG_AT_NODE_IN, p->saddr, n->daddr, n->svc_id, n->backend_id,
			     FRAG_ACT_PASS, 0, 0);
		lb_count_flow(n->svc_id, n->backend_id, skb->len, n->reply, n->new_flow);
		return lb_verdict(AT_NODE_IN, lb6_sent(n), TC_ACT_OK);
	}
	if (lb6_rewrite(skb, p, NAT_SRC, n->saddr, n->sport))
		return lb6_drop(AT_NODE_IN, STAT_NAT_FAIL);
	/* From this node's own address now: sent out directly, not handed to the stack. */
	if (tc_hop_limit_dec(skb, p->l3_off))
		return lb6_drop(AT_NODE_IN, STAT_FORWARD_FAIL);
	frag6_record(p, FRAG_AT_NODE_IN, n->saddr, n->daddr, n->svc_id, n->backend_id,
		     FRAG_ACT_REDIRECT, n->ifindex, n->reply);
	lb_count_flow(n->svc_id, n->backend_id, skb->len, n->reply, n->new_flow);
	lb_count(STAT_NODE_FORWARD);
	return lb6_done(AT_NODE_IN, lb6_sent(n), lb_send_out(n->ifindex));
}

/* XDP on a node device (lb4_xdp's twin): a new flow or an established one to a local backend is
 * rewritten and passed up, one to another node rewritten and sent out from here; everything else
 * goes to lb6_node_in untouched, which decides again. */
static __always_inline int lb6_xdp(struct xdp_md *ctx, const int hook)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 slot = LB6_SCRATCH_XDP;
	__u32 len = data_end - data;
	struct lb6_node_scratch *s;
	struct lb6_nat *n;
	struct pkt6 *p;
	int v;

	s = lb6_node_scratch.lookup(&slot);
	if (!s)
		return lb_verdict(AT_NODE_XDP, VERDICT_TO_TC, XDP_PASS);
	__builtin_memset(s, 0, sizeof(*s));
	p = &s->p;
	n = &s->n;
	v = lb6_parse_frame(data, data_end, len, p);
	if (v != PARSE_OK || p->frag)
		return lb_verdict(AT_NODE_XDP, v == PARSE_MALFORMED ? VERDICT_MALFORMED : VERDICT_PASS,
				  XDP_PASS);
	/* xdp6_rewrite reaches the L4 header at a bounded offset: one behind larger extension
	 * headers (never seen in practice) is TC's, which rewrites at any offset. */
	if (p->l4_off > LB6_XDP_L4_MAX)
		return lb_verdict(AT_NODE_XDP, VERDICT_TO_TC, XDP_PASS);
	n->xdp_len = len - p->l3_off;
	v = lb6_node_decide(ctx, p, ctx->ingress_ifindex, hook, n);
	if (v == NV_PASS)
		return lb_verdict(AT_NODE_XDP, VERDICT_PASS, XDP_PASS);
	if (v == NV_DROP)
		return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
	if (v != NV_LOCAL && v != NV_REMOTE)
		return lb_verdict(AT_NODE_XDP, VERDICT_TO_TC, XDP_PASS);
	if (xdp6_rewrite(ctx, p, NAT_DST, &n->daddr, n->dport)) {
		lb_count(STAT_NAT_FAIL);
		return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
	}
	if (v == NV_LOCAL) {
		if (n->sport != p->sport && xdp6_rewrite(ctx, p, NAT_SRC, &p->saddr, n->sport)) {
			lb_count(STAT_NAT_FAIL);
			return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
		}
		lb_count_flow(n->svc_id, n->backend_id, len, n->reply, n->new_flow);
		return lb_verdict(AT_NODE_XDP, lb6_sent(n), XDP_PASS);
	}
	if (xdp6_rewrite(ctx, p, NAT_SRC, &n->saddr, n->sport) ||
	    xdp_set_macs(ctx, n->smac, n->dmac)) {
		lb_count(STAT_NAT_FAIL);
		return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
	}
	if (xdp6_hop_limit_dec(ctx, p)) {
		lb_count(STAT_FORWARD_FAIL);
		return lb_verdict(AT_NODE_XDP, VERDICT_DROP, XDP_DROP);
	}
	lb_count_flow(n->svc_id, n->backend_id, len, n->reply, n->new_flow);
	lb_count(STAT_XDP_FORWARD);
	if (n->ifindex == ctx->ingress_ifindex)
		return lb_verdict(AT_NODE_XDP, lb6_sent(n), XDP_TX);
	return lb_verdict(AT_NODE_XDP, lb6_sent(n), bpf_redirect(n->ifindex, 0));
}

int lb6_node_xdp(struct xdp_md *ctx)
{
	return lb6_xdp(ctx, HOOK_XDP);
}

int lb6_xdp_generic(struct xdp_md *ctx)
{
	return lb6_xdp(ctx, HOOK_XDP_GENERIC);
}

int lb6_node_out(struct __sk_buff *skb)
{
	struct ct6_entry *ct;
	struct pkt6 p = {};
	struct ct6_key rk;
	int half_open;
	int r;

	lb_pull_headers(skb, LB6_PULL_LEN);
	r = lb6_parse(skb, &p);
	if (r == PARSE_NOT_OURS)
		/* A local backend's ICMPv6 error to a client outside: from the frontend again. */
		return lb6_icmp_done(AT_NODE_OUT, lb6_icmp_client(skb, CT_DIR_REPLY,
								  CT_F_EXTERNAL | CT_F_SNAT,
								  CT_F_EXTERNAL));
	if (r == PARSE_FRAGMENT) {
		struct frag6_nat v;

		/* Only fragments whose first one this program translated have a record here. */
		r = frag6_translate(skb, &p, FRAG_AT_NODE_OUT, 0, &v);
		if (r < 0)
			return lb_verdict(AT_NODE_OUT, VERDICT_DROP, TC_ACT_SHOT);
		return lb_verdict(AT_NODE_OUT, r ? VERDICT_FRAGMENT : VERDICT_PASS, TC_ACT_OK);
	}
	if (r != PARSE_OK)
		return lb6_pass(AT_NODE_OUT, r);
	ct6_key_of(&p, CT_DIR_REPLY, &rk);
	ct = ct6_find_half_open(&rk, &half_open);
	if (!ct || (ct->flags & (CT_F_EXTERNAL | CT_F_SNAT)) != CT_F_EXTERNAL ||
	    ct6_reply_of_closed(&p, &rk, ct, half_open))
		return lb6_pass(AT_NODE_OUT, PARSE_NOT_OURS);
	ct6_track(ct, &p, bpf_ktime_get_ns());
	if (lb6_rewrite(skb, &p, NAT_SRC, ct->nat_addr, ct->nat_port) ||
	    ((ct->flags & CT_F_PORT_NAT) && lb6_rewrite(skb, &p, NAT_DST, p.daddr, ct->nat2_port)))
		return lb6_drop(AT_NODE_OUT, STAT_NAT_FAIL);
	frag6_record(&p, FRAG_AT_NODE_OUT, ct->nat_addr, p.daddr, ct->svc_id, ct->backend_id,
		     FRAG_ACT_PASS, 0, 1);
	lb_count_flow(ct->svc_id, ct->backend_id, skb->len, 1, 0);
	return lb_verdict(AT_NODE_OUT, VERDICT_REPLY, TC_ACT_OK);
}

