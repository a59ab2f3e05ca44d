/* parse.h: bounds-checked header parsing for IPv4 and IPv6 TCP/UDP, in the cursor style.
 *
 * Contract of every parse_* function: on success it returns a value >= 0 (the next protocol, or
 * 0), points *hdr at the header and moves the cursor past it; on failure (the header does not fit
 * in [cursor, data_end) or is invalid) it returns a negative PARSE_* code and leaves the cursor
 * where it was. Nothing here writes to the packet. */
#ifndef EBPFLB_PARSE_H
#define EBPFLB_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/in.h>

#include "lb_structs.h"

#define PARSE_OK 0
#define PARSE_NOT_OURS -1	/* well-formed, but nothing a load balancer touches */
#define PARSE_MALFORMED -2	/* truncated or invalid header: never rewritten */
#define PARSE_FRAGMENT -3	/* a fragment after the first: no ports, only addresses and id */

#ifndef IP_DF
#define IP_DF 0x4000		/* Don't Fragment, host order */
#endif
#ifndef IP_MF
#define IP_MF 0x2000		/* More Fragments, host order */
#endif
#define IP_OFFSET_MASK 0x1fff	/* fragment offset, in 8-byte units */

/* pkt4.frag: where a packet sits in a datagram. The first fragment carries the ports and goes
 * through the normal path; the later ones follow its translation (fragments.h). */
#define FRAG_NONE 0
#define FRAG_FIRST 1
#define FRAG_LATER 2

struct hdr_cursor {
	void *pos;
};

/* What the load balancer needs of a packet, copied out so no packet pointer outlives a helper call
 * that may move the data. Addresses and ports stay in network order. */
struct pkt4 {
	__u32 l3_off;
	__u32 l4_off;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;	/* byte 13 of the TCP header (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 for UDP */
	__u8 frag;	/* FRAG_* */
	__u8 pad;
	__be16 ip_id;	/* the datagram's identification, for fragments */
};

/* The IPv6 twin of struct pkt4 (the templates read both alike). l4_off is past the extension
 * headers. */
struct pkt6 {
	__u32 l3_off;
	__u32 l4_off;
	struct lb6_addr saddr;
	struct lb6_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 frag;	/* FRAG_* */
	/* The Fragment header's next header: the L4 protocol, or a header that follows the Fragment
	 * header in the first fragment only; a later fragment knows nothing else, so the record of
	 * the datagram is keyed by this. */
	__u8 frag_nh;
	__be32 frag_id;	/* the Fragment header's identification, for fragments */
};

#define TCP_FL_FIN 0x01
#define TCP_FL_SYN 0x02
#define TCP_FL_RST 0x04
#define TCP_FL_ACK 0x10

static __always_inline int parse_ethhdr(struct hdr_cursor *c, void *data_end, struct ethhdr **eth)
{
	struct ethhdr *h = c->pos;

	if ((void *)(h + 1) > data_end)
		return PARSE_MALFORMED;
	c->pos = h + 1;
	*eth = h;
	return h->h_proto;
}

/* l3_len is the number of bytes from the IP header to the end of the frame (skb->len based), so a
 * total length that claims more than the frame holds is caught even when the frame is non-linear.
 * A total length of 0 is an IPv4 BIG TCP (GSO) packet above 64 KiB: the frame's length stands
 * for it, as the kernel's iph_totlen() does. Fragments parse like any packet; the caller looks at
 * frag_off. */
static __always_inline int parse_iphdr(struct hdr_cursor *c, void *data_end, __u32 l3_len,
				       struct iphdr **iph)
{
	struct iphdr *h = c->pos;
	__u32 hdrsize;
	__u32 tot_len;

	if ((void *)(h + 1) > data_end)
		return PARSE_MALFORMED;
	if (h->version != 4)
		return PARSE_MALFORMED;
	hdrsize = h->ihl * 4;
	if (hdrsize < sizeof(*h))
		return PARSE_MALFORMED;
	if (c->pos + hdrsize > data_end)
		return PARSE_MALFORMED;
	tot_len = bpf_ntohs(h->tot_len);
	if (tot_len == 0 && l3_len > 0xffff)
		tot_len = l3_len;
	if (tot_len < hdrsize || tot_len > l3_len)
		return PARSE_MALFORMED;
	c->pos += hdrsize;
	*iph = h;
	return h->protocol;
}

/* l4_len is the IP payload length from the IP header's total length. */
static __always_inline int parse_tcphdr(struct hdr_cursor *c, void *data_end, __u32 l4_len,
					struct tcphdr **tcph)
{
	struct tcphdr *h = c->pos;
	__u32 doff;

	if ((void *)(h + 1) > data_end)
		return PARSE_MALFORMED;
	doff = h->doff * 4;
	if (doff < sizeof(*h) || doff > l4_len)
		return PARSE_MALFORMED;
	/* Options are not read; the cursor stops after the fixed header on purpose. */
	c->pos = h + 1;
	*tcph = h;
	return 0;
}

/* A first fragment's UDP length is the whole datagram's, longer than what this fragment holds. */
static __always_inline int parse_udphdr(struct hdr_cursor *c, void *data_end, __u32 l4_len,
					int first_fragment, struct udphdr **udph)
{
	struct udphdr *h = c->pos;
	__u32 len;

	if ((void *)(h + 1) > data_end)
		return PARSE_MALFORMED;
	len = bpf_ntohs(h->len);
	if (len < sizeof(*h) || (len > l4_len && !first_fragment))
		return PARSE_MALFORMED;
	c->pos = h + 1;
	*udph = h;
	return 0;
}

#define NEXTHDR_HOP_BY_HOP 0
#define NEXTHDR_ROUTING_HDR 43
#define NEXTHDR_FRAGMENT_HDR 44
#define NEXTHDR_AUTH_HDR 51
#define NEXTHDR_DEST_OPTS 60
/* Extension headers walked before the TCP or UDP header; a packet with more is passed untouched
 * (counted as pass), as no Service traffic carries that many. */
#define IPV6_EXT_MAX 6
#define IP6_FRAG_OFFSET_MASK 0xfff8	/* fragment offset, in bytes (host order) */
#define IP6_FRAG_MORE 0x0001

struct ipv6_frag_header {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

/* The IPv6 header. payload_len is checked against the frame (l3_len bytes from the IPv6 header);
 * 0 with a frame above 64 KiB is a BIG TCP (GSO) packet, whose length the frame gives. Returns
 * the payload's length, or PARSE_MALFORMED. */
static __always_inline int parse_ipv6hdr(struct hdr_cursor *c, void *data_end, __u32 l3_len,
					 struct ipv6hdr **ip6h)
{
	struct ipv6hdr *h = c->pos;
	__u32 payload;

	if ((void *)(h + 1) > data_end)
		return PARSE_MALFORMED;
	if (h->version != 6)
		return PARSE_MALFORMED;
	payload = bpf_ntohs(h->payload_len);
	if (payload == 0 && l3_len > 0xffff + sizeof(*h))
		payload = l3_len - sizeof(*h);
	if (payload + sizeof(*h) > l3_len)
		return PARSE_MALFORMED;
	c->pos = h + 1;
	*ip6h = h;
	return payload;
}

#define VLAN_ID_MASK 0x0fff

/* A frame of a VLAN, its tag taken off into skb->vlan_tci (by the NIC or the stack): it belongs
 * to the VLAN's own device, where it is seen again. An 802.1p priority tag (VLAN id 0) is not a
 * VLAN: the kernel hands that frame to this device itself. */
static __always_inline int skb_of_a_vlan(const struct __sk_buff *skb)
{
	return skb->vlan_present && (skb->vlan_tci & VLAN_ID_MASK);
}

/* Everything up to the L4 ports must be in the linear area for direct access; pull it in when a
 * driver left it in fragments. The common case costs one comparison. */
#define LB4_PULL_LEN (ETH_HLEN + 60 + sizeof(struct tcphdr))
/* The IPv6 header, a few extension headers and the ports (a packet whose headers go further is
 * parsed from what fits, and passed if they do not). */
#define LB6_PULL_LEN (ETH_HLEN + 40 + 64 + sizeof(struct tcphdr))

static __always_inline void lb_pull_headers(struct __sk_buff *skb, __u32 want)
{
	__u32 linear = skb->data_end - skb->data;

	if (linear < want && skb->len > linear)
		bpf_skb_pull_data(skb, skb->len < want ? skb->len : want);
}

static __always_inline void lb4_pull_headers(struct __sk_buff *skb)
{
	lb_pull_headers(skb, LB4_PULL_LEN);
}

/* Parses an Ethernet + IPv4 + TCP/UDP frame of `len` bytes, whose linear part is
 * [data, data_end), into *p. Returns PARSE_OK (a whole datagram or its first fragment, p->frag
 * says which), PARSE_FRAGMENT (a later fragment: p has the addresses, protocol and id, no ports),
 * or another PARSE_* code. */
static __always_inline int lb4_parse_frame(void *data, void *data_end, __u32 len, struct pkt4 *p)
{
	struct hdr_cursor c = { .pos = data };
	struct ethhdr *eth;
	struct iphdr *iph;
	struct tcphdr *tcph;
	struct udphdr *udph;
	__u32 l4_len;
	__u16 frag_off;
	int proto;

	proto = parse_ethhdr(&c, data_end, &eth);
	if (proto < 0)
		return proto;
	if (proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_OURS;
	proto = parse_iphdr(&c, data_end, len - ETH_HLEN, &iph);
	if (proto < 0)
		return proto;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return PARSE_NOT_OURS;
	p->l3_off = (void *)iph - data;
	p->l4_off = c.pos - data;
	p->saddr = iph->saddr;
	p->daddr = iph->daddr;
	p->proto = proto;
	p->ip_id = iph->id;
	frag_off = bpf_ntohs(iph->frag_off);
	if (frag_off & IP_OFFSET_MASK) {
		p->frag = FRAG_LATER;
		return PARSE_FRAGMENT;
	}
	p->frag = (frag_off & IP_MF) ? FRAG_FIRST : FRAG_NONE;
	l4_len = c.pos - (void *)iph;
	l4_len = (iph->tot_len ? bpf_ntohs(iph->tot_len) : len - ETH_HLEN) - l4_len;
	if (proto == IPPROTO_TCP) {
		if (parse_tcphdr(&c, data_end, l4_len, &tcph) < 0)
			return PARSE_MALFORMED;
		p->sport = tcph->source;
		p->dport = tcph->dest;
		p->tcp_flags = ((__u8 *)tcph)[13];
	} else {
		if (parse_udphdr(&c, data_end, l4_len, p->frag == FRAG_FIRST, &udph) < 0)
			return PARSE_MALFORMED;
		p->sport = udph->source;
		p->dport = udph->dest;
		p->tcp_flags = 0;
	}
	return PARSE_OK;
}

/* Parses an Ethernet + IPv6 (+ extension headers) + TCP/UDP frame into *p, as lb4_parse_frame
 * does for IPv4: PARSE_OK (p->frag says whether it is a first fragment), PARSE_FRAGMENT (a later
 * fragment: addresses, protocol and identification), or another PARSE_* code. Each extension
 * header is bounds-checked before it is read; at most IPV6_EXT_MAX are walked. */
static __always_inline int lb6_parse_frame(void *data, void *data_end, __u32 len, struct pkt6 *p)
{
	struct hdr_cursor c = { .pos = data };
	struct ethhdr *eth;
	struct ipv6hdr *ip6h;
	struct tcphdr *tcph;
	struct udphdr *udph;
	__u32 payload, ext;
	__u16 frag_off;
	int proto, r, i;

	proto = parse_ethhdr(&c, data_end, &eth);
	if (proto < 0)
		return proto;
	if (proto != bpf_htons(ETH_P_IPV6))
		return PARSE_NOT_OURS;
	r = parse_ipv6hdr(&c, data_end, len - ETH_HLEN, &ip6h);
	if (r < 0)
		return r;
	payload = r;
	p->l3_off = (void *)ip6h - data;
	__builtin_memcpy(&p->saddr, &ip6h->saddr, sizeof(p->saddr));
	__builtin_memcpy(&p->daddr, &ip6h->daddr, sizeof(p->daddr));
	proto = ip6h->nexthdr;
	p->frag = FRAG_NONE;
#pragma unroll
	for (i = 0; i < IPV6_EXT_MAX; i++) {
		struct ipv6_opt_hdr *opt = c.pos;
		struct ipv6_frag_header *fh = c.pos;

		if (proto == NEXTHDR_HOP_BY_HOP || proto == NEXTHDR_ROUTING_HDR ||
		    proto == NEXTHDR_DEST_OPTS || proto == NEXTHDR_AUTH_HDR) {
			__u32 size;

			if (c.pos + 8 > data_end)
				return PARSE_MALFORMED;
			/* Segments left in a routing header: the destination is not the final one
			 * (which the L4 checksum covers), so the packet is not ours to translate. */
			if (proto == NEXTHDR_ROUTING_HDR && ((__u8 *)opt)[3])
				return PARSE_NOT_OURS;
			size = proto == NEXTHDR_AUTH_HDR ? ((__u32)opt->hdrlen + 2) * 4 :
							   ((__u32)opt->hdrlen + 1) * 8;
			proto = opt->nexthdr;
			c.pos += size;
			continue;
		}
		if (proto != NEXTHDR_FRAGMENT_HDR)
			break;
		if ((void *)(fh + 1) > data_end)
			return PARSE_MALFORMED;
		proto = fh->nexthdr;
		p->frag_id = fh->id;
		p->frag_nh = proto;
		frag_off = bpf_ntohs(fh->frag_off);
		c.pos = fh + 1;
		if (frag_off & IP6_FRAG_OFFSET_MASK) {
			p->proto = proto;
			p->frag = FRAG_LATER;
			return (proto == IPPROTO_TCP || proto == IPPROTO_UDP ||
				proto == NEXTHDR_DEST_OPTS || proto == NEXTHDR_ROUTING_HDR ||
				proto == NEXTHDR_AUTH_HDR) ? PARSE_FRAGMENT : PARSE_NOT_OURS;
		}
		if (frag_off & IP6_FRAG_MORE)
			p->frag = FRAG_FIRST;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return PARSE_NOT_OURS;	/* ICMPv6, another protocol, or too many extension headers */
	ext = c.pos - (void *)(ip6h + 1);
	if (ext > payload)
		return PARSE_MALFORMED;	/* the extension headers claim more than the payload */
	p->proto = proto;
	p->l4_off = c.pos - data;
	payload -= ext;
	if (proto == IPPROTO_TCP) {
		if (parse_tcphdr(&c, data_end, payload, &tcph) < 0)
			return PARSE_MALFORMED;
		p->sport = tcph->source;
		p->dport = tcph->dest;
		p->tcp_flags = ((__u8 *)tcph)[13];
	} else {
		if (parse_udphdr(&c, data_end, payload, p->frag == FRAG_FIRST, &udph) < 0)
			return PARSE_MALFORMED;
		p->sport = udph->source;
		p->dport = udph->dest;
		p->tcp_flags = 0;
	}
	return PARSE_OK;
}

static __always_inline int lb6_parse(struct __sk_buff *skb, struct pkt6 *p)
{
	return lb6_parse_frame((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, p);
}

static __always_inline int lb4_parse(struct __sk_buff *skb, struct pkt4 *p)
{
	return lb4_parse_frame((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, p);
}

/* XDP frames are linear here (no multi-buffer programs), so the length is what the data spans. */
static __always_inline int lb4_parse_xdp(struct xdp_md *ctx, struct pkt4 *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	return lb4_parse_frame(data, data_end, data_end - data, p);
}

#endif
