/* node_fwd.h: sending a flow on from a node device to a backend on another node: what a packet
 * becomes (lb4_nat, lb6_nat), the route (bpf_fib_lookup), and the TTL or hop limit of a packet
 * this node forwards itself. The SNAT port that brings the replies back is in snat.tmpl.h. */
#ifndef EBPFLB_NODE_FWD_H
#define EBPFLB_NODE_FWD_H

#include <uapi/linux/if_ether.h>

#include "lb_maps.h"
#include "parse.h"
#include "addr6.h"
#include "flow_hash.h"
#include "counters.h"

#define FIB_AF_INET 2
#define FIB_AF_INET6 10
#define LB4_SNAT_TRIES 16

/* bcc 0.26 declares bpf_redirect_neigh with two arguments; the kernel's helper takes four. */
static long (*lb_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				 __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/* Sends the packet out of `ifindex`, the next hop resolved by the kernel; a refusal (TC_ACT_SHOT,
 * only for flags the helper does not know) is a drop counted as forward_fail. */
static __always_inline int lb_send_out(__u32 ifindex)
{
	int r = lb_redirect_neigh(ifindex, 0, 0, 0);

	if (r == TC_ACT_SHOT)
		lb_count(STAT_FORWARD_FAIL);
	return r;
}

/* What the decision core (core.tmpl.h) says of a packet to a frontend. */
enum lb4_verdict {
	NV_PASS,	/* not ours */
	NV_DROP,	/* counted already */
	NV_LOCAL,	/* DNAT to a backend reached by the stack (this node's, or a pod's route) */
	NV_REMOTE,	/* DNAT + SNAT (or a reply's reverse), then out of n->ifindex */
	NV_REJECT,	/* no backend: answer with RST / ICMP unreachable (TC only) */
	NV_TO_STACK,	/* XDP cannot finish: leave the packet untouched to TC */
	NV_TOO_BIG,	/* does not fit the device towards the backend: ICMP fragmentation needed */
};

/* What a packet is rewritten to, and where it goes. */
struct lb4_nat {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;
	__be16 sport;
	__u32 svc_id;
	__u32 backend_id;
	__u32 ifindex;		/* NV_REMOTE: the device the FIB chose */
	__u8 smac[ETH_ALEN];	/* NV_REMOTE with fib_ok: the Ethernet header to send with */
	__u8 dmac[ETH_ALEN];
	__u16 mtu;		/* NV_TOO_BIG: the MTU of the device towards the backend */
	__u8 fib_ok;
	__u8 new_flow;
	__u8 reply;
	__u8 stateless;	/* TCP of an unknown flow sent by hash, no state (NV_LOCAL) */
	__u16 xdp_len;	/* set by the XDP hooks: the IP packet's length (see lb4_fib) */
};

/* The route of a rewritten packet. Returns BPF_FIB_LKUP_RET_*; the out device is in n->ifindex
 * (also for NO_NEIGH and FRAG_NEEDED), the Ethernet addresses on success. The packet is checked
 * against the route's MTU (FRAG_NEEDED, with the MTU in n->mtu): at TC by the kernel, from the
 * skb (GSO aware); at XDP, which has no skb, from the length the XDP hook puts in n->xdp_len
 * (without it a packet too big for the way to the backend was sent on and lost there). */
static __always_inline int lb4_fib(void *ctx, const struct pkt4 *p, __be32 saddr, __be16 sport,
				   __be32 daddr, __be16 dport, __u32 ifindex, struct lb4_nat *n)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	fib.family = FIB_AF_INET;
	fib.l4_protocol = p->proto;
	fib.sport = sport;
	fib.dport = dport;
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = ifindex;
	fib.tot_len = n->xdp_len;	/* 0 at TC: the kernel checks the skb instead */
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	n->ifindex = fib.ifindex;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		n->mtu = fib.mtu_result;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(n->smac, fib.smac, ETH_ALEN);
		__builtin_memcpy(n->dmac, fib.dmac, ETH_ALEN);
		n->fib_ok = 1;
	}
	return rc;
}

/* The IPv6 twin of struct lb4_nat. */
struct lb6_nat {
	struct lb6_addr daddr;
	struct lb6_addr saddr;
	__be16 dport;
	__be16 sport;
	__u32 svc_id;
	__u32 backend_id;
	__u32 ifindex;
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
	__u16 mtu;
	__u8 fib_ok;
	__u8 new_flow;
	__u8 reply;
	__u8 stateless;
	__u16 xdp_len;
};

static __always_inline int lb6_fib(void *ctx, const struct pkt6 *p, struct lb6_addr saddr,
				   __be16 sport, struct lb6_addr daddr, __be16 dport, __u32 ifindex,
				   struct lb6_nat *n)
{
	struct bpf_fib_lookup fib = {};
	int rc;

	fib.family = FIB_AF_INET6;
	fib.l4_protocol = p->proto;
	fib.sport = sport;
	fib.dport = dport;
	__builtin_memcpy(fib.ipv6_src, &saddr, sizeof(saddr));
	__builtin_memcpy(fib.ipv6_dst, &daddr, sizeof(daddr));
	fib.ifindex = ifindex;
	fib.tot_len = n->xdp_len;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	n->ifindex = fib.ifindex;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		n->mtu = fib.mtu_result;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__builtin_memcpy(n->smac, fib.smac, ETH_ALEN);
		__builtin_memcpy(n->dmac, fib.dmac, ETH_ALEN);
		n->fib_ok = 1;
	}
	return rc;
}

/* A route was found (the neighbour may still be unresolved, or the packet too big for the
 * device): n->ifindex is the device it leaves by. */
static __always_inline int lb_fib_routed(int rc)
{
	return rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH ||
	       rc == BPF_FIB_LKUP_RET_FRAG_NEEDED;
}

#define SNAT_PORT_FREE 0
#define SNAT_PORT_BUSY 1
#define SNAT_PORT_TIME_WAIT 2	/* a closed flow past tcp_close, still in the backend's TIME_WAIT */

/* TTL decrement for a packet TC sends on itself; -1 when it is exhausted. */
static __always_inline int tc_ttl_dec(struct __sk_buff *skb, __u32 l3_off)
{
	__u32 off = l3_off + offsetof(struct iphdr, ttl);
	__u16 old, new;
	__u8 *ttl = (__u8 *)&new;

	if (bpf_skb_load_bytes(skb, off, &old, sizeof(old)))
		return -1;
	new = old;
	if (*ttl <= 1)
		return -1;
	*ttl -= 1;	/* TTL is the first byte of the TTL/protocol word */
	if (bpf_l3_csum_replace(skb, l3_off + offsetof(struct iphdr, check), old, new, sizeof(new)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) ? -1 : 0;
}

/* Hop limit decrement for an IPv6 packet TC sends on itself (no header checksum to fix, but
 * skb->csum of a CHECKSUM_COMPLETE skb covers the byte); -1 when it is exhausted. */
static __always_inline int tc_hop_limit_dec(struct __sk_buff *skb, __u32 l3_off)
{
	__u32 off = l3_off + offsetof(struct ipv6hdr, hop_limit);
	__u8 hops;

	if (bpf_skb_load_bytes(skb, off, &hops, sizeof(hops)) || hops <= 1)
		return -1;
	hops -= 1;
	return bpf_skb_store_bytes(skb, off, &hops, sizeof(hops), BPF_F_RECOMPUTE_CSUM) ? -1 : 0;
}

#endif
