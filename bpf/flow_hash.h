/* flow_hash.h: the flow hash that picks a backend. MurmurHash3 x86_32 over four 32-bit words
 * (saddr, daddr, sport << 16 | dport, proto), all in host order; an IPv6 address is folded to
 * one word first. The control plane computes the
 * same value (ext/flowhash.pyx, ebpflb/_flowhash_py.py) and passes FLOW_HASH_SEED with -D. */
#ifndef EBPFLB_FLOW_HASH_H
#define EBPFLB_FLOW_HASH_H

#include "parse.h"

#ifndef FLOW_HASH_SEED
#error "FLOW_HASH_SEED must be passed by the loader so the control plane can predict the hash"
#endif

static __always_inline __u32 fh_rotl(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 fh_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = fh_rotl(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = fh_rotl(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 fh_fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 flow_hash4(const struct pkt4 *p)
{
	__u32 h = FLOW_HASH_SEED;

	h = fh_mix(h, bpf_ntohl(p->saddr));
	h = fh_mix(h, bpf_ntohl(p->daddr));
	h = fh_mix(h, ((__u32)bpf_ntohs(p->sport) << 16) | bpf_ntohs(p->dport));
	h = fh_mix(h, p->proto);
	return fh_fmix(h ^ 16);
}

/* An IPv6 address folded to one word (the XOR of its four), so that the IPv6 hash is the IPv4
 * one over folded addresses and the control plane predicts both with one function. */
static __always_inline __u32 fh_fold6(const struct lb6_addr *a)
{
	return bpf_ntohl(a->w[0]) ^ bpf_ntohl(a->w[1]) ^ bpf_ntohl(a->w[2]) ^ bpf_ntohl(a->w[3]);
}

static __always_inline __u32 flow_hash6(const struct pkt6 *p)
{
	__u32 h = FLOW_HASH_SEED;

	h = fh_mix(h, fh_fold6(&p->saddr));
	h = fh_mix(h, fh_fold6(&p->daddr));
	h = fh_mix(h, ((__u32)bpf_ntohs(p->sport) << 16) | bpf_ntohs(p->dport));
	h = fh_mix(h, p->proto);
	return fh_fmix(h ^ 16);
}

/* The hash of a socket balanced at connect() time, whose source port is not chosen yet: its
 * cookie (unique per socket) stands for the client's address and port. */
static __always_inline __u32 sock_hash4(__u64 cookie, __be32 daddr, __be16 dport, __u8 proto)
{
	__u32 h = FLOW_HASH_SEED;

	h = fh_mix(h, (__u32)cookie);
	h = fh_mix(h, (__u32)(cookie >> 32));
	h = fh_mix(h, bpf_ntohl(daddr));
	h = fh_mix(h, ((__u32)bpf_ntohs(dport) << 16) | proto);
	return fh_fmix(h ^ 16);
}

/* ... and of an IPv6 socket: the destination folded as flow_hash6 folds it. */
static __always_inline __u32 sock_hash6(__u64 cookie, const struct lb6_addr *daddr, __be16 dport,
				       __u8 proto)
{
	__u32 h = FLOW_HASH_SEED;

	h = fh_mix(h, (__u32)cookie);
	h = fh_mix(h, (__u32)(cookie >> 32));
	h = fh_mix(h, fh_fold6(daddr));
	h = fh_mix(h, ((__u32)bpf_ntohs(dport) << 16) | proto);
	return fh_fmix(h ^ 16);
}

#endif
