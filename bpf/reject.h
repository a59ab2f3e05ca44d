/* reject.h: answering a packet to a frontend with no usable backend at once, the way a closed port
 * answers (kube-proxy's REJECT): a TCP RST, or an ICMP (ICMPv6) port unreachable for UDP. The packet itself
 * is turned into the answer (headers rebuilt from what was read, length set with
 * bpf_skb_change_tail) and sent back out of the device it came in on. */
#ifndef EBPFLB_REJECT_H
#define EBPFLB_REJECT_H

#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>

#include "parse.h"
#include "counters.h"
#include "addr6.h"

static __always_inline __u16 csum_fold32(__u64 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return ~csum;
}

/* The one's complement sum of an IPv4 pseudo header, for L4 checksums. */
static __always_inline __s64 csum_pseudo4(__be32 saddr, __be32 daddr, __u8 proto, __u16 len)
{
	__be32 pseudo[3] = { saddr, daddr, bpf_htonl(((__u32)proto << 16) | len) };

	return bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), 0);
}

static __always_inline void ip4_reply_header(struct iphdr *ip, const struct pkt4 *p, __u8 proto,
					     __u16 tot_len)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(tot_len);
	ip->ttl = 64;
	ip->protocol = proto;
	ip->saddr = p->daddr;	/* the VIP the client asked for */
	ip->daddr = p->saddr;
	ip->check = csum_fold32(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
}

struct tcp_reject {
	struct iphdr ip;
	struct tcphdr tcp;
};

/* RST for a TCP packet (never for a RST): RFC 793 reset generation. */
static __always_inline int lb4_reject_tcp(struct __sk_buff *skb, const struct pkt4 *p)
{
	struct tcp_reject r = {};
	struct tcphdr orig;
	__u16 tot_len;
	__u32 seglen;
	__s64 sum;

	if (bpf_skb_load_bytes(skb, p->l4_off, &orig, sizeof(orig)))
		return -1;
	if (orig.rst)
		return -1;
	if (bpf_skb_load_bytes(skb, p->l3_off + offsetof(struct iphdr, tot_len), &tot_len,
			       sizeof(tot_len)))
		return -1;
	seglen = bpf_ntohs(tot_len) - (p->l4_off - p->l3_off) - orig.doff * 4 + orig.syn + orig.fin;
	r.tcp.source = p->dport;
	r.tcp.dest = p->sport;
	r.tcp.doff = 5;
	r.tcp.rst = 1;
	if (orig.ack) {
		r.tcp.seq = orig.ack_seq;
	} else {
		r.tcp.ack = 1;
		r.tcp.ack_seq = bpf_htonl(bpf_ntohl(orig.seq) + seglen);
	}
	sum = csum_pseudo4(p->daddr, p->saddr, IPPROTO_TCP, sizeof(r.tcp));
	if (sum < 0)
		return -1;
	sum = bpf_csum_diff(0, 0, (__be32 *)&r.tcp, sizeof(r.tcp), sum);
	if (sum < 0)
		return -1;
	r.tcp.check = csum_fold32(sum);
	ip4_reply_header(&r.ip, p, IPPROTO_TCP, sizeof(r));
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0);
}

struct icmp_reject {
	struct iphdr ip;
	struct icmphdr icmp;
	struct iphdr inner;	/* the client's IP header (without options) and... */
	__u8 inner_l4[8];	/* ...the first 8 bytes of its UDP header, as RFC 792 asks */
};

/* Turns the packet into an ICMP error about it (its IP header, without options, and the first 8
 * bytes after it, as RFC 792 asks). `mtu` is the next-hop MTU of a fragmentation-needed error. */
static __always_inline int lb4_icmp_reply(struct __sk_buff *skb, const struct pkt4 *p, __u8 type,
					  __u8 code, __u16 mtu)
{
	struct icmp_reject r = {};
	__s64 sum;

	if (bpf_skb_load_bytes(skb, p->l3_off, &r.inner, sizeof(r.inner)))
		return -1;
	if (bpf_skb_load_bytes(skb, p->l4_off, r.inner_l4, sizeof(r.inner_l4)))
		return -1;
	/* The quoted header must be the one the client sent; options are left out, so fix ihl. */
	if (r.inner.ihl != 5)
		return -1;
	r.icmp.type = type;
	r.icmp.code = code;
	r.icmp.un.frag.mtu = bpf_htons(mtu);
	sum = bpf_csum_diff(0, 0, (__be32 *)&r.icmp, sizeof(r) - sizeof(r.ip), 0);
	if (sum < 0)
		return -1;
	r.icmp.checksum = csum_fold32(sum);
	ip4_reply_header(&r.ip, p, IPPROTO_ICMP, sizeof(r));
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0);
}

/* ICMP port unreachable for a UDP datagram. */
static __always_inline int lb4_reject_udp(struct __sk_buff *skb, const struct pkt4 *p)
{
	return lb4_icmp_reply(skb, p, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0);
}

/* Sends a packet that arrived from a pod straight back to it, out of the same device: the MAC
 * addresses are swapped so the pod accepts the frame as addressed to it. */
static __always_inline int lb4_bounce(struct __sk_buff *skb)
{
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* Turns the packet into its rejection and returns the verdict that sends it back; TC_ACT_SHOT,
 * the reason counted, when it must not (a RST) or cannot be answered. */
static __always_inline int lb4_reject(struct __sk_buff *skb, const struct pkt4 *p)
{
	int err = p->proto == IPPROTO_TCP ? lb4_reject_tcp(skb, p) : lb4_reject_udp(skb, p);

	if (err) {
		lb_count(STAT_NO_BACKEND);
		return TC_ACT_SHOT;
	}
	err = lb4_bounce(skb);
	if (err == TC_ACT_SHOT)
		lb_count(STAT_NAT_FAIL);
	return err;
}

/* A packet that does not fit the device towards its backend: with Don't Fragment set, the client
 * hears "fragmentation needed" with that device's MTU, from the address it sent to, so its path
 * MTU discovery works; without it (it cannot be fragmented here) it is dropped. */
static __always_inline int lb4_too_big(struct __sk_buff *skb, const struct pkt4 *p, __u16 mtu)
{
	__be16 frag_off;

	if (bpf_skb_load_bytes(skb, p->l3_off + offsetof(struct iphdr, frag_off), &frag_off,
			       sizeof(frag_off)) ||
	    !(frag_off & bpf_htons(IP_DF)) ||
	    lb4_icmp_reply(skb, p, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu))
		return TC_ACT_SHOT;
	return lb4_bounce(skb);
}

/* ---- IPv6 ---- */

/* The one's complement sum of an IPv6 pseudo header (RFC 8200, 8.1), for L4 checksums. */
static __always_inline __s64 csum_pseudo6(const struct lb6_addr *saddr,
					  const struct lb6_addr *daddr, __u8 proto, __u32 len)
{
	__be32 pseudo[10];

	__builtin_memcpy(pseudo, saddr, sizeof(*saddr));
	__builtin_memcpy(pseudo + 4, daddr, sizeof(*daddr));
	pseudo[8] = bpf_htonl(len);
	pseudo[9] = bpf_htonl(proto);
	return bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), 0);
}

static __always_inline void ip6_reply_header(struct ipv6hdr *ip, const struct pkt6 *p, __u8 proto,
					     __u16 payload_len)
{
	ip->version = 6;
	ip->payload_len = bpf_htons(payload_len);
	ip->nexthdr = proto;
	ip->hop_limit = 64;
	__builtin_memcpy(&ip->saddr, &p->daddr, sizeof(p->daddr));	/* the VIP asked for */
	__builtin_memcpy(&ip->daddr, &p->saddr, sizeof(p->saddr));
}

struct tcp6_reject {
	struct ipv6hdr ip;
	struct tcphdr tcp;
};

/* RST for an IPv6 TCP packet (never for a RST), as lb4_reject_tcp. */
static __always_inline int lb6_reject_tcp(struct __sk_buff *skb, const struct pkt6 *p)
{
	struct tcp6_reject r = {};
	struct tcphdr orig;
	__u32 seglen;
	__s64 sum;

	if (bpf_skb_load_bytes(skb, p->l4_off, &orig, sizeof(orig)))
		return -1;
	if (orig.rst)
		return -1;
	/* The frame's own length: an IPv6 frame is never padded (the smallest TCP one is 74
	 * bytes), and a BIG TCP packet's payload length reads 0. */
	seglen = skb->len - p->l4_off - orig.doff * 4 + orig.syn + orig.fin;
	r.tcp.source = p->dport;
	r.tcp.dest = p->sport;
	r.tcp.doff = 5;
	r.tcp.rst = 1;
	if (orig.ack) {
		r.tcp.seq = orig.ack_seq;
	} else {
		r.tcp.ack = 1;
		r.tcp.ack_seq = bpf_htonl(bpf_ntohl(orig.seq) + seglen);
	}
	sum = csum_pseudo6(&p->daddr, &p->saddr, IPPROTO_TCP, sizeof(r.tcp));
	if (sum < 0)
		return -1;
	sum = bpf_csum_diff(0, 0, (__be32 *)&r.tcp, sizeof(r.tcp), sum);
	if (sum < 0)
		return -1;
	r.tcp.check = csum_fold32(sum);
	ip6_reply_header(&r.ip, p, IPPROTO_TCP, sizeof(r.tcp));
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0);
}

struct icmp6_reject {
	struct ipv6hdr ip;
	struct icmp6hdr icmp;
	struct ipv6hdr inner;	/* the client's IPv6 header and... */
	__u8 inner_l4[8];	/* ...the first 8 bytes of its TCP or UDP header */
};

/* Turns the packet into an ICMPv6 error about it, quoting its IPv6 header and the first 8 bytes
 * of its TCP or UDP header: what the client's stack needs to find the socket (RFC 4443 allows
 * more; a packet with extension headers is not answered). `mtu`: of a packet too big. */
static __always_inline int lb6_icmp_reply(struct __sk_buff *skb, const struct pkt6 *p, __u8 type,
					  __u8 code, __u32 mtu)
{
	struct icmp6_reject r = {};
	__u32 len = sizeof(r) - sizeof(r.ip);
	__s64 sum;

	if (p->l4_off != p->l3_off + sizeof(struct ipv6hdr))
		return -1;
	if (bpf_skb_load_bytes(skb, p->l3_off, &r.inner, sizeof(r.inner)))
		return -1;
	if (bpf_skb_load_bytes(skb, p->l4_off, r.inner_l4, sizeof(r.inner_l4)))
		return -1;
	r.icmp.icmp6_type = type;
	r.icmp.icmp6_code = code;
	r.icmp.icmp6_mtu = bpf_htonl(mtu);
	sum = csum_pseudo6(&p->daddr, &p->saddr, IPPROTO_ICMPV6, len);
	if (sum < 0)
		return -1;
	sum = bpf_csum_diff(0, 0, (__be32 *)&r.icmp, len, sum);
	if (sum < 0)
		return -1;
	r.icmp.icmp6_cksum = csum_fold32(sum);
	ip6_reply_header(&r.ip, p, IPPROTO_ICMPV6, len);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0);
}

/* Turns the packet into its rejection (RST, or ICMPv6 port unreachable) and returns the verdict
 * that sends it back, as lb4_reject. */
static __always_inline int lb6_reject(struct __sk_buff *skb, const struct pkt6 *p)
{
	int err = p->proto == IPPROTO_TCP ? lb6_reject_tcp(skb, p) :
		  lb6_icmp_reply(skb, p, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0);

	if (err) {
		lb_count(STAT_NO_BACKEND);
		return TC_ACT_SHOT;
	}
	err = lb4_bounce(skb);
	if (err == TC_ACT_SHOT)
		lb_count(STAT_NAT_FAIL);
	return err;
}

/* An IPv6 packet too big for the device towards its backend: IPv6 is never fragmented on the
 * way, so the client always hears "packet too big" with that device's MTU. */
static __always_inline int lb6_too_big(struct __sk_buff *skb, const struct pkt6 *p, __u16 mtu)
{
	if (lb6_icmp_reply(skb, p, ICMPV6_PKT_TOOBIG, 0, mtu))
		return TC_ACT_SHOT;
	return lb4_bounce(skb);
}

#endif
