/* nat_xdp.h: the XDP side of NAT: rewriting addresses and ports in place with RFC 1624
 * incremental checksum updates (IPv4 and IPv6), the IPv4 TTL and IPv6 hop limit, and the Ethernet
 * addresses of a forwarded frame.
 *
 * XDP sees no skb, so nothing tells it that a checksum is only a CHECKSUM_PARTIAL seed: these
 * updates are right for frames that come from a wire (full checksums), which is all XDP handles
 * here (node devices). Pod traffic is rewritten at TC (nat.h). */
#ifndef EBPFLB_NAT_XDP_H
#define EBPFLB_NAT_XDP_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "parse.h"
#include "addr6.h"

static __always_inline __u16 csum_fold_u32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), over 32 bits of old and new data. */
static __always_inline __u16 csum_update4(__u16 check, __be32 from, __be32 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~(from >> 16) + (__u16)~(from & 0xffff);
	sum += (to >> 16) + (to & 0xffff);
	return ~csum_fold_u32(sum);
}

/* The same over an IPv6 address (four 32-bit words): each word adds at most 2^18 to the sum, so
 * 32 bits hold the four before folding. */
static __always_inline __u16 csum_update16(__u16 check, const struct lb6_addr *from,
					   const struct lb6_addr *to)
{
	__u32 sum = (__u16)~check;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		sum += (__u16)~(from->w[i] >> 16) + (__u16)~(from->w[i] & 0xffff);
		sum += (to->w[i] >> 16) + (to->w[i] & 0xffff);
	}
	return ~csum_fold_u32(sum);
}

static __always_inline __u16 csum_update2(__u16 check, __be16 from, __be16 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~from + to;
	return ~csum_fold_u32(sum);
}

/* The port (source or destination) and checksum fields of the TCP or UDP header at `l4` (an
 * offset the caller bounds for the verifier); -1 when the header is not all in the frame. */
static __always_inline int xdp_l4_fields(void *data, void *data_end, __u32 l4, __u8 proto,
					 int dst, __be16 **port, __u16 **check)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + l4;

		if ((void *)(tcp + 1) > data_end)
			return -1;
		*port = dst ? &tcp->dest : &tcp->source;
		*check = &tcp->check;
	} else {
		struct udphdr *udp = data + l4;

		if ((void *)(udp + 1) > data_end)
			return -1;
		*port = dst ? &udp->dest : &udp->source;
		*check = &udp->check;
	}
	return 0;
}

/* Applies a checksum update to the L4 checksum: a UDP checksum of 0 means "none" and stays 0
 * (invalid over IPv6: the receiver drops it, as it would have); a computed 0 is sent as
 * 0xffff. */
static __always_inline void xdp_l4_csum_set(__u8 proto, __u16 *check, __u16 updated)
{
	if (proto == IPPROTO_UDP && !*check)
		return;
	*check = (proto == IPPROTO_UDP && !updated) ? 0xffff : updated;
}

/* Rewrites the source (dst = 0) or destination (dst = 1) address and port of a parsed frame.
 * Returns 0, or -1 when the headers are not where the parser left them. */
static __always_inline int xdp_rewrite(struct xdp_md *ctx, const struct pkt4 *p, int dst,
				       __be32 new_addr, __be16 new_port)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	/* Bounded offsets (Ethernet + at most 60 bytes of IPv4 header), so the verifier can follow
	 * the pointers. */
	__u32 l3 = p->l3_off & 0x7f;
	__u32 l4 = p->l4_off & 0x7f;
	struct iphdr *ip = data + l3;
	__be32 *addr;
	__be16 *port;
	__u16 *check;
	__be32 old_addr;
	__be16 old_port;

	if ((void *)(ip + 1) > data_end ||
	    xdp_l4_fields(data, data_end, l4, p->proto, dst, &port, &check))
		return -1;
	addr = dst ? &ip->daddr : &ip->saddr;
	old_addr = *addr;
	old_port = *port;
	if (old_addr != new_addr) {
		ip->check = csum_update4(ip->check, old_addr, new_addr);
		xdp_l4_csum_set(p->proto, check, csum_update4(*check, old_addr, new_addr));
		*addr = new_addr;
	}
	if (old_port != new_port) {
		xdp_l4_csum_set(p->proto, check, csum_update2(*check, old_port, new_port));
		*port = new_port;
	}
	return 0;
}

/* Decrements the TTL of a frame this program forwards itself (the kernel's forwarding path, which
 * would do it, is skipped). Returns -1 when the TTL is exhausted: the frame must be dropped. */
static __always_inline int xdp_ttl_dec(struct xdp_md *ctx, const struct pkt4 *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + (p->l3_off & 0x7f);
	__u32 sum;

	if ((void *)(ip + 1) > data_end || ip->ttl <= 1)
		return -1;
	/* TTL is the high byte of its 16-bit word: the checksum gains 0x0100 (RFC 1141). */
	sum = (__u32)ip->check + bpf_htons(0x0100);
	ip->check = (__u16)(sum + (sum >= 0xffff));
	ip->ttl -= 1;
	return 0;
}

/* The largest L4 offset xdp6_rewrite handles: the mask below bounds the offset for the verifier,
 * and lb6_xdp leaves a packet whose extension headers reach further to TC. */
#define LB6_XDP_L4_MAX 2047

/* The IPv6 twin of xdp_rewrite. IPv6 has no header checksum: only the L4 one covers the
 * addresses (its pseudo-header). */
static __always_inline int xdp6_rewrite(struct xdp_md *ctx, const struct pkt6 *p, int dst,
					const struct lb6_addr *new_addr, __be16 new_port)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + (p->l3_off & 0x7f);
	__u32 l4 = p->l4_off & LB6_XDP_L4_MAX;
	struct lb6_addr old_addr;
	struct in6_addr *addr;
	__be16 *port;
	__u16 *check;
	__be16 old_port;

	if ((void *)(ip6 + 1) > data_end ||
	    xdp_l4_fields(data, data_end, l4, p->proto, dst, &port, &check))
		return -1;
	addr = dst ? &ip6->daddr : &ip6->saddr;
	__builtin_memcpy(&old_addr, addr, sizeof(old_addr));
	old_port = *port;
	if (!addr6_eq(&old_addr, new_addr)) {
		xdp_l4_csum_set(p->proto, check, csum_update16(*check, &old_addr, new_addr));
		__builtin_memcpy(addr, new_addr, sizeof(*new_addr));
	}
	if (old_port != new_port) {
		xdp_l4_csum_set(p->proto, check, csum_update2(*check, old_port, new_port));
		*port = new_port;
	}
	return 0;
}

/* The hop limit of an IPv6 frame this program forwards itself; -1 when it is exhausted. */
static __always_inline int xdp6_hop_limit_dec(struct xdp_md *ctx, const struct pkt6 *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + (p->l3_off & 0x7f);

	if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
		return -1;
	ip6->hop_limit -= 1;
	return 0;
}

static __always_inline int xdp_set_macs(struct xdp_md *ctx, const __u8 *src, const __u8 *dst)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	return 0;
}

#endif
