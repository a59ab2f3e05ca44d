/* nat.h: rewriting one side (destination or source) of an IPv4 or IPv6 TCP/UDP packet at TC, with
 * the IPv4 header checksum and the L4 checksum (pseudo-header address, then port) kept correct. The csum helpers
 * know about CHECKSUM_PARTIAL skbs, which is why DNAT of pod traffic lives at TC, not XDP. */
#ifndef EBPFLB_NAT_H
#define EBPFLB_NAT_H

#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "parse.h"
#include "addr6.h"

#define NAT_DST 1
#define NAT_SRC 0

static __always_inline int lb4_rewrite(struct __sk_buff *skb, const struct pkt4 *p, int dst,
				       __be32 new_addr, __be16 new_port)
{
	__be32 old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u32 addr_off = p->l3_off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
	__u32 port_off = p->l4_off + (dst ? offsetof(struct tcphdr, dest) : offsetof(struct tcphdr, source));
	__u32 csum_off;
	__u64 mangled = 0;

	if (p->proto == IPPROTO_TCP) {
		csum_off = p->l4_off + offsetof(struct tcphdr, check);
	} else {
		csum_off = p->l4_off + offsetof(struct udphdr, check);
		/* A UDP checksum of 0 means "none" and must stay 0; a computed 0 becomes 0xffff. */
		mangled = BPF_F_MARK_MANGLED_0;
	}
	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
					BPF_F_PSEUDO_HDR | mangled | sizeof(new_addr)))
			return -1;
		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old_addr,
					new_addr, sizeof(new_addr)))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0))
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | sizeof(new_port)))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
			return -1;
	}
	return 0;
}

/* The L4 checksum's field and flags of a TCP or UDP header at l4_off. */
static __always_inline __u32 l4_csum_off(__u8 proto, __u32 l4_off, __u64 *mangled)
{
	if (proto == IPPROTO_TCP) {
		*mangled = 0;
		return l4_off + offsetof(struct tcphdr, check);
	}
	/* A UDP checksum of 0 means "none" and must stay 0; a computed 0 becomes 0xffff. */
	*mangled = BPF_F_MARK_MANGLED_0;
	return l4_off + offsetof(struct udphdr, check);
}

/* IPv6 has no header checksum: only the L4 one changes, by the difference of the two addresses
 * (bpf_csum_diff), given to the helper as a ready difference (size 0). On a CHECKSUM_COMPLETE
 * skb the helper also takes the difference off skb->csum, as for IPv4, where the header
 * checksum's change makes that right; here the address itself must add it back, so it is stored
 * with BPF_F_RECOMPUTE_CSUM (BPF_F_IPV6, which says the same to the helper, is Linux 6.16+). */
static __always_inline int lb6_rewrite(struct __sk_buff *skb, const struct pkt6 *p, int dst,
				       struct lb6_addr new_addr, __be16 new_port)
{
	struct lb6_addr old_addr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u32 addr_off = p->l3_off + (dst ? offsetof(struct ipv6hdr, daddr) :
					    offsetof(struct ipv6hdr, saddr));
	__u32 port_off = p->l4_off + (dst ? offsetof(struct tcphdr, dest) :
					    offsetof(struct tcphdr, source));
	__u64 mangled;
	__u32 csum_off = l4_csum_off(p->proto, p->l4_off, &mangled);
	__s64 diff;

	if (dst)
		addr6_copy(&old_addr, &p->daddr);
	else
		addr6_copy(&old_addr, &p->saddr);
	if (!addr6_eq(&old_addr, &new_addr)) {
		diff = bpf_csum_diff(old_addr.w, sizeof(old_addr), new_addr.w, sizeof(new_addr), 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr),
					BPF_F_RECOMPUTE_CSUM))
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | sizeof(new_port)))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
			return -1;
	}
	return 0;
}

#endif
