/* select.h: the policy of a new flow (who may start one) and the choice of its backend (session
 * affinity, then the flow hash over the frontend's slots). */
#ifndef EBPFLB_SELECT_H
#define EBPFLB_SELECT_H

#include "lb_maps.h"
#include "parse.h"
#include "flow_hash.h"
#include "conntrack.h"

/* A new flow must not come from loopback, from a VIP, or from its own destination. */
static __always_inline int lb4_bad_source(const struct pkt4 *p)
{
	__be32 src = p->saddr;

	if ((bpf_ntohl(src) >> 24) == 127 || src == p->daddr)
		return 1;
	return lb4_vips.lookup(&src) != 0;
}

/* Source validation on a pod device: an address listed for the device, or any address on a device
 * whose addresses the agent has not listed (struct lb4_pod_addr_key). */
static __always_inline int lb4_source_valid(__u32 ifindex, __be32 saddr)
{
	struct lb4_pod_addr_key k = { .ifindex = ifindex, .addr = saddr };

	if (lb4_pod_addrs.lookup(&k))
		return 1;
	k.addr = 0;
	return lb4_pod_addrs.lookup(&k) == 0;
}

/* loadBalancerSourceRanges: is the client inside one of the frontend's prefixes? */
static __always_inline int lb4_source_allowed(const struct lb4_svc *svc, __be32 saddr)
{
	struct lb4_src_range_key k = { .prefixlen = 64, .svc_id = svc->svc_id, .addr = saddr };

	return lb4_src_ranges.lookup(&k) != 0;
}

/* Whether a client's affinity binding still holds: fresh, and its backend still belongs to the
 * frontend and takes new flows. Returns the backend's id (and *be), or 0. */
static __always_inline __u32 lb4_affinity_check(const struct lb4_affinity *a,
						const struct lb4_svc *svc, __u64 now,
						struct lb4_backend **be)
{
	__u32 id;

	if (!a || ct4_idle(a->last_used_ns, now) > (__u64)svc->affinity_timeout * LB_NSEC_PER_SEC)
		return 0;
	id = a->backend_id;
	*be = lb4_backends.lookup(&id);
	if (!*be || (*be)->svc_id != svc->svc_id || ((*be)->flags & LB4_BE_F_NO_NEW))
		return 0;
	return id;
}

/* The backend a client is bound to by session affinity, or 0. */
static __always_inline __u32 lb4_affinity_backend(const struct pkt4 *p, const struct lb4_svc *svc,
						  __u64 now, struct lb4_backend **be)
{
	struct lb4_affinity_key key = { .svc_id = svc->svc_id, .client = p->saddr };

	return lb4_affinity_check(lb4_affinity.lookup(&key), svc, now, be);
}

static __always_inline void lb4_affinity_update(const struct pkt4 *p, const struct lb4_svc *svc,
						__u32 backend_id, __u64 now)
{
	struct lb4_affinity_key key = { .svc_id = svc->svc_id, .client = p->saddr };
	struct lb4_affinity val = { .last_used_ns = now, .backend_id = backend_id };

	lb4_affinity.update(&key, &val);
}

/* Picks a backend by a hash over the frontend's slots (the flow hash of a packet, or a socket's
 * at connect() time). Returns its id, or 0 when the frontend has none usable. A frontend
 * shrinking while this reads it (its record read with the old count, the slots past the new count
 * already gone) answers from slot 0, which every frontend with backends has, rather than refusing
 * a flow it can serve. */
static __always_inline __u32 lb4_slot_backend(const struct lb4_svc *svc, __u32 hash,
					      struct lb4_backend **be)
{
	struct lb4_slot_key slot;
	__u32 *id;

	if (svc->count == 0)
		return 0;
	slot.svc_id = svc->svc_id;
	slot.slot = hash % svc->count;
	id = lb4_slots.lookup(&slot);
	if (!id) {
		slot.slot = 0;
		id = lb4_slots.lookup(&slot);
		if (!id)
			return 0;
	}
	*be = lb4_backends.lookup(id);
	if (!*be)
		return 0;
	return *id;
}

static __always_inline __u32 lb4_select_backend(const struct pkt4 *p, const struct lb4_svc *svc,
						struct lb4_backend **be)
{
	return lb4_slot_backend(svc, flow_hash4(p), be);
}

/* The backend of a new flow: the client's by session affinity, else the hash's. */
static __always_inline __u32 lb4_choose_backend(const struct pkt4 *p, const struct lb4_svc *svc,
						__u64 now, struct lb4_backend **be)
{
	__u32 id = 0;

	if (svc->affinity_timeout)
		id = lb4_affinity_backend(p, svc, now, be);
	if (!id)
		id = lb4_select_backend(p, svc, be);
	return *be ? id : 0;
}

#endif
