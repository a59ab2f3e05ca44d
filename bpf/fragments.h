/* fragments.h: what differs between the families for datagrams in fragments (the rest is
 * fragments.tmpl.h): rewriting one address of a later fragment, which has no L4 header. */
#ifndef EBPFLB_FRAGMENTS_H
#define EBPFLB_FRAGMENTS_H

#include "lb_maps.h"
#include "parse.h"
#include "addr6.h"
#include "counters.h"
#include "nat.h"

/* IPv4: the address and the IP header checksum. */
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

/* IPv6: the address alone (no header checksum); skb->csum of a CHECKSUM_COMPLETE skb follows. */
static __always_inline int frag6_rewrite(struct __sk_buff *skb, __u32 l3_off, int dst,
					 struct lb6_addr old_addr, struct lb6_addr new_addr)
{
	__u32 off = l3_off + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));

	if (addr6_eq(&old_addr, &new_addr))
		return 0;
	return bpf_skb_store_bytes(skb, off, &new_addr, sizeof(new_addr), BPF_F_RECOMPUTE_CSUM);
}

#endif
