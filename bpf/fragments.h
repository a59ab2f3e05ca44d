/* fragments.h: IPv4 datagrams in fragments. The first fragment carries the ports and is translated
 * by the normal path, which remembers what it did here; the later ones carry no ports, so they
 * get the same addresses from that record (their L4 checksum lives in the first fragment, which
 * the normal path already fixed). Both directions work alike: a backend's fragmented answer is
 * recorded from its first fragment too. */
#ifndef EBPFLB_FRAGMENTS_H
#define EBPFLB_FRAGMENTS_H

#include "lb_maps.h"
#include "parse.h"
#include "counters.h"
#include "nat.h"

static __always_inline void frag4_key_of(const struct pkt4 *p, __u8 hook, struct frag4_key *k)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->id = p->ip_id;
	k->proto = p->proto;
	k->hook = hook;
}

/* Remembers a first fragment's translation; nothing for a whole datagram (one test on the hot
 * path). */
static __always_inline void frag4_record(const struct pkt4 *p, __u8 hook, __be32 saddr,
					 __be32 daddr, __u32 svc_id, __u32 backend_id,
					 __u8 action, __u32 ifindex, __u8 reply)
{
	struct frag4_key k;
	struct frag4_nat v = {
		.saddr = saddr, .daddr = daddr, .svc_id = svc_id, .backend_id = backend_id,
		.ifindex = ifindex, .action = action, .reply = reply,
	};

	if (p->frag != FRAG_FIRST)
		return;
	v.created_ns = bpf_ktime_get_ns();
	frag4_key_of(p, hook, &k);
	frag4.update(&k, &v);
}

/* Rewrites one address of a later fragment: the IP checksum only (no L4 header here). */
static __always_inline int frag4_rewrite(struct __sk_buff *skb, __u32 l3_off, int dst,
					 __be32 old_addr, __be32 new_addr)
{
	__u32 off = l3_off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

	if (old_addr == new_addr)
		return 0;
	if (bpf_l3_csum_replace(skb, l3_off + offsetof(struct iphdr, check), old_addr, new_addr,
				sizeof(new_addr)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new_addr, sizeof(new_addr), 0);
}

/* A later fragment: translated as its first fragment was, with *v saying where it goes next.
 * Returns 1 when translated, 0 when no first fragment was seen, -1 on a rewrite error (counted).
 * With count_miss (the pod devices' hooks and lb4_node_in), a miss to a frontend address counts
 * frag_miss: it came before its first fragment, or the first was not ours. */
static __always_inline int frag4_translate(struct __sk_buff *skb, const struct pkt4 *p,
					   __u8 hook, int count_miss, struct frag4_nat *out)
{
	struct frag4_key k;
	struct frag4_nat *v;
	__be32 d = p->daddr;
	__u64 now = bpf_ktime_get_ns();

	frag4_key_of(p, hook, &k);
	v = frag4.lookup(&k);
	/* The IP id wraps: a record older than the reassembly timeout belongs to another datagram. */
	if (v && now > v->created_ns && now - v->created_ns > FRAG4_TIMEOUT * 1000000000ULL)
		v = 0;
	if (!v) {
		if (count_miss && lb4_vips.lookup(&d))
			lb_count(STAT_FRAG_MISS);
		return 0;
	}
	*out = *v;
	if (frag4_rewrite(skb, p->l3_off, NAT_SRC, p->saddr, out->saddr) ||
	    frag4_rewrite(skb, p->l3_off, NAT_DST, p->daddr, out->daddr)) {
		lb_count(STAT_NAT_FAIL);
		return -1;
	}
	lb_count_flow(out->svc_id, out->backend_id, skb->len, out->reply, 0);
	return 1;
}

#endif
