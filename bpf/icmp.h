/* icmp.h: ICMP and ICMPv6 errors about a load-balanced flow (destination unreachable, including
 * fragmentation needed, packet too big, time exceeded, parameter problem): parsing and rewriting
 * them for each family (icmp_nat.tmpl.h decides what to rewrite). They quote the packet that caused
 * them, as the sender of the error saw it; the quoted header (and the outer address when it is the
 * NATed one) must be translated too, or the client's socket never hears of the error (a broken
 * path MTU discovery is the classic symptom). Checksums: the outer IP header's, the quoted IP
 * header's, and the ICMP checksum over the quoted bytes. */
#ifndef EBPFLB_ICMP_H
#define EBPFLB_ICMP_H

#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>

#include "parse.h"
#include "addr6.h"

/* An ICMP error and the TCP/UDP header it quotes; addresses and ports in network order. */
struct icmp4_err {
	__u32 l3_off;
	__u32 icmp_off;
	__u32 inner_off;	/* the quoted IP header */
	__u32 inner_l4_off;	/* the quoted ports, after the quoted header and its options */
	__be32 saddr;		/* outer */
	__be32 daddr;
	__be32 in_saddr;	/* quoted */
	__be32 in_daddr;
	__be16 in_sport;
	__be16 in_dport;
	__u8 in_proto;
};

/* Returns 0 and fills *e for an IPv4 ICMP error quoting TCP or UDP; -1 for anything else. */
static __always_inline int icmp4_parse_error(struct __sk_buff *skb, struct icmp4_err *e)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor c = { .pos = data };
	struct ethhdr *eth;
	struct iphdr *iph;
	struct icmphdr *icmph;
	struct iphdr *inner;
	__be16 *ports;
	__u32 inner_len;

	if (parse_ethhdr(&c, data_end, &eth) != bpf_htons(ETH_P_IP))
		return -1;
	if (parse_iphdr(&c, data_end, skb->len - ETH_HLEN, &iph) != IPPROTO_ICMP)
		return -1;
	if (bpf_ntohs(iph->frag_off) & (IP_MF | IP_OFFSET_MASK))
		return -1;	/* a fragmented ICMP message: the quote may not be all here */
	icmph = c.pos;
	if ((void *)(icmph + 1) > data_end)
		return -1;
	if (icmph->type != ICMP_DEST_UNREACH && icmph->type != ICMP_TIME_EXCEEDED &&
	    icmph->type != ICMP_PARAMETERPROB)
		return -1;
	inner = (void *)(icmph + 1);
	if ((void *)(inner + 1) > data_end || inner->ihl < 5 || inner->version != 4)
		return -1;
	if (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP)
		return -1;
	/* The quoted header may carry options (a client sending Record Route, a router quoting
	 * it): the ports follow them. */
	inner_len = inner->ihl * 4;
	ports = (void *)inner + inner_len;
	if ((void *)(ports + 2) > data_end)
		return -1;
	e->l3_off = (void *)iph - data;
	e->icmp_off = (void *)icmph - data;
	e->inner_off = (void *)inner - data;
	e->inner_l4_off = e->inner_off + inner_len;
	e->saddr = iph->saddr;
	e->daddr = iph->daddr;
	e->in_saddr = inner->saddr;
	e->in_daddr = inner->daddr;
	e->in_sport = ports[0];
	e->in_dport = ports[1];
	e->in_proto = inner->protocol;
	return 0;
}

/* Rewrites one side (source or destination) of the quoted header, keeping the quoted IP
 * checksum and the ICMP checksum right. */
static __always_inline int icmp4_rewrite_inner(struct __sk_buff *skb, const struct icmp4_err *e,
					       int dst, __be32 new_addr, __be16 new_port)
{
	__u32 addr_off = e->inner_off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
	__u32 port_off = e->inner_l4_off + (dst ? 2 : 0);
	__u32 in_csum_off = e->inner_off + offsetof(struct iphdr, check);
	__u32 icmp_csum_off = e->icmp_off + offsetof(struct icmphdr, checksum);
	__be32 old_addr = dst ? e->in_daddr : e->in_saddr;
	__be16 old_port = dst ? e->in_dport : e->in_sport;
	__be16 old_csum, new_csum;

	if (bpf_skb_load_bytes(skb, in_csum_off, &old_csum, sizeof(old_csum)))
		return -1;
	if (bpf_l3_csum_replace(skb, in_csum_off, old_addr, new_addr, sizeof(new_addr)))
		return -1;
	if (bpf_skb_load_bytes(skb, in_csum_off, &new_csum, sizeof(new_csum)))
		return -1;
	/* The ICMP checksum covers the quoted bytes: the address, the quoted checksum, the port. */
	if (bpf_l4_csum_replace(skb, icmp_csum_off, old_addr, new_addr, sizeof(new_addr)) ||
	    bpf_l4_csum_replace(skb, icmp_csum_off, old_csum, new_csum, sizeof(new_csum)) ||
	    bpf_l4_csum_replace(skb, icmp_csum_off, old_port, new_port, sizeof(new_port)))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0) ||
	    bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
		return -1;
	return 0;
}

/* Rewrites the outer source or destination address (IP checksum only: ICMP has no pseudo
 * header). */
static __always_inline int icmp4_rewrite_outer(struct __sk_buff *skb, const struct icmp4_err *e,
					       int dst, __be32 new_addr)
{
	__be32 old_addr = dst ? e->daddr : e->saddr;
	__u32 off = e->l3_off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

	if (bpf_l3_csum_replace(skb, e->l3_off + offsetof(struct iphdr, check), old_addr, new_addr,
				sizeof(new_addr)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new_addr, sizeof(new_addr), 0);
}

/* ---- ICMPv6 ---- */

/* An ICMPv6 error and the TCP/UDP header it quotes (icmp4_err's twin). */
struct icmp6_err {
	__u32 l3_off;
	__u32 icmp_off;
	__u32 inner_off;	/* the quoted IPv6 header */
	__u32 inner_l4_off;	/* the quoted ports, after its extension headers */
	struct lb6_addr saddr;	/* outer */
	struct lb6_addr daddr;
	struct lb6_addr in_saddr;	/* quoted */
	struct lb6_addr in_daddr;
	__be16 in_sport;
	__be16 in_dport;
	__u8 in_proto;
};

/* Returns 0 and fills *e for an ICMPv6 error (destination unreachable, packet too big, time
 * exceeded, parameter problem) right after the IPv6 header, quoting a TCP or UDP packet, behind
 * at most IPV6_EXT_MAX extension headers (packet too big about a large datagram quotes its first
 * fragment); -1 for anything else: a quoted later fragment has no ports, and a quoted routing
 * header with segments left names a destination that is not the flow's. */
static __always_inline int icmp6_parse_error(struct __sk_buff *skb, struct icmp6_err *e)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor c = { .pos = data };
	struct ethhdr *eth;
	struct ipv6hdr *ip6h;
	struct icmp6hdr *icmph;
	struct ipv6hdr *inner;
	__be16 *ports;
	__u32 size;
	void *pos;
	int proto, i;

	if (parse_ethhdr(&c, data_end, &eth) != bpf_htons(ETH_P_IPV6))
		return -1;
	if (parse_ipv6hdr(&c, data_end, skb->len - ETH_HLEN, &ip6h) < 0)
		return -1;
	if (ip6h->nexthdr != IPPROTO_ICMPV6)
		return -1;
	icmph = c.pos;
	if ((void *)(icmph + 1) > data_end)
		return -1;
	if (icmph->icmp6_type != ICMPV6_DEST_UNREACH && icmph->icmp6_type != ICMPV6_PKT_TOOBIG &&
	    icmph->icmp6_type != ICMPV6_TIME_EXCEED && icmph->icmp6_type != ICMPV6_PARAMPROB)
		return -1;
	inner = (void *)(icmph + 1);
	if ((void *)(inner + 1) > data_end || inner->version != 6)
		return -1;
	proto = inner->nexthdr;
	pos = (void *)(inner + 1);
#pragma unroll
	for (i = 0; i < IPV6_EXT_MAX; i++) {
		struct ipv6_opt_hdr *opt = pos;
		struct ipv6_frag_header *fh = pos;

		if (proto == NEXTHDR_HOP_BY_HOP || proto == NEXTHDR_ROUTING_HDR ||
		    proto == NEXTHDR_DEST_OPTS || proto == NEXTHDR_AUTH_HDR) {
			if (pos + 8 > data_end)
				return -1;
			if (proto == NEXTHDR_ROUTING_HDR && ((__u8 *)opt)[3])
				return -1;
			size = proto == NEXTHDR_AUTH_HDR ? ((__u32)opt->hdrlen + 2) * 4 :
							   ((__u32)opt->hdrlen + 1) * 8;
			proto = opt->nexthdr;
			pos += size;
			continue;
		}
		if (proto != NEXTHDR_FRAGMENT_HDR)
			break;
		if ((void *)(fh + 1) > data_end ||
		    (bpf_ntohs(fh->frag_off) & IP6_FRAG_OFFSET_MASK))
			return -1;
		proto = fh->nexthdr;
		pos = fh + 1;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return -1;
	ports = pos;
	if ((void *)(ports + 2) > data_end)
		return -1;
	e->l3_off = (void *)ip6h - data;
	e->icmp_off = (void *)icmph - data;
	e->inner_off = (void *)inner - data;
	e->inner_l4_off = (void *)ports - data;
	__builtin_memcpy(&e->saddr, &ip6h->saddr, sizeof(e->saddr));
	__builtin_memcpy(&e->daddr, &ip6h->daddr, sizeof(e->daddr));
	__builtin_memcpy(&e->in_saddr, &inner->saddr, sizeof(e->in_saddr));
	__builtin_memcpy(&e->in_daddr, &inner->daddr, sizeof(e->in_daddr));
	e->in_sport = ports[0];
	e->in_dport = ports[1];
	e->in_proto = proto;
	return 0;
}

/* Rewrites one side of the quoted packet: the ICMPv6 checksum covers the quoted bytes (there is
 * no quoted header checksum in IPv6). skb->csum is right as it is: the address and the checksum
 * field change by opposite amounts. */
static __always_inline int icmp6_rewrite_inner(struct __sk_buff *skb, const struct icmp6_err *e,
					       int dst, struct lb6_addr new_addr, __be16 new_port)
{
	__u32 addr_off = e->inner_off + (dst ? offsetof(struct ipv6hdr, daddr) :
					       offsetof(struct ipv6hdr, saddr));
	__u32 port_off = e->inner_l4_off + (dst ? 2 : 0);
	__u32 csum_off = e->icmp_off + offsetof(struct icmp6hdr, icmp6_cksum);
	__be16 old_port = dst ? e->in_dport : e->in_sport;
	struct lb6_addr old_addr;
	__s64 diff;

	if (dst)
		addr6_copy(&old_addr, &e->in_daddr);
	else
		addr6_copy(&old_addr, &e->in_saddr);
	diff = bpf_csum_diff(old_addr.w, sizeof(old_addr), new_addr.w, sizeof(new_addr), 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, 0) ||
	    bpf_l4_csum_replace(skb, csum_off, old_port, new_port, sizeof(new_port)))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0) ||
	    bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
		return -1;
	return 0;
}

/* Rewrites the outer source or destination: the ICMPv6 checksum's pseudo header (stored with
 * BPF_F_RECOMPUTE_CSUM for skb->csum, as lb6_rewrite). */
static __always_inline int icmp6_rewrite_outer(struct __sk_buff *skb, const struct icmp6_err *e,
					       int dst, struct lb6_addr new_addr)
{
	__u32 off = e->l3_off + (dst ? offsetof(struct ipv6hdr, daddr) :
				       offsetof(struct ipv6hdr, saddr));
	__u32 csum_off = e->icmp_off + offsetof(struct icmp6hdr, icmp6_cksum);
	struct lb6_addr old_addr;
	__s64 diff;

	if (dst)
		addr6_copy(&old_addr, &e->daddr);
	else
		addr6_copy(&old_addr, &e->saddr);
	diff = bpf_csum_diff(old_addr.w, sizeof(old_addr), new_addr.w, sizeof(new_addr), 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new_addr, sizeof(new_addr), BPF_F_RECOMPUTE_CSUM);
}

#endif
