/* select.tmpl.h: the policy of a new flow (who may start one) and the choice of its backend
 * (session affinity, then the flow hash over the frontend's slots), for one IP family (a template:
 * see family4.tmpl.h). Needs conntrack.h, flow_hash.h and map_access.h. */

/* A new flow must not come from loopback, from a VIP, or from its own destination. */
static __always_inline int LB_(bad_source)(const struct FAM_PKT *p)
{
	FAM_ADDR src = p->saddr;

	if (FAM_ADDR_IS_LOOPBACK(src) || FAM_ADDR_EQ(src, p->daddr))
		return 1;
	return LB_(vip_get)(&src) != 0;
}

/* Source validation on a pod device: an address listed for the device, or any address on a device
 * whose addresses the agent has not listed (struct FAM_POD_ADDR_KEY). */
static __always_inline int LB_(source_valid)(__u32 ifindex, FAM_ADDR saddr)
{
	struct FAM_POD_ADDR_KEY k = { .ifindex = ifindex, .addr = saddr };

	if (LB_(pod_addr_get)(&k))
		return 1;
	FAM_ADDR_SET_ZERO(k.addr);
	return LB_(pod_addr_get)(&k) == 0;
}

/* loadBalancerSourceRanges: is the client inside one of the frontend's prefixes? */
static __always_inline int LB_(source_allowed)(const struct lb4_svc *svc, FAM_ADDR saddr)
{
	struct FAM_SRC_RANGE_KEY k = {
		.prefixlen = 32 + FAM_ADDR_BITS, .svc_id = svc->svc_id, .addr = saddr,
	};

	return LB_(src_range_get)(&k) != 0;
}

/* Whether a client's affinity binding still holds: fresh, and its backend still belongs to the
 * frontend and takes new flows. Returns the backend's id (and *be), or 0. */
static __always_inline __u32 LB_(affinity_check)(const struct lb4_affinity *a,
						const struct lb4_svc *svc, __u64 now,
						struct FAM_BACKEND **be)
{
	__u32 id;

	if (!a || ct_idle(a->last_used_ns, now) > (__u64)svc->affinity_timeout * LB_NSEC_PER_SEC)
		return 0;
	id = a->backend_id;
	*be = LB_(backend_get)(&id);
	if (!*be || (*be)->svc_id != svc->svc_id || ((*be)->flags & LB4_BE_F_NO_NEW))
		return 0;
	return id;
}

/* The backend a client is bound to by session affinity, or 0. */
static __always_inline __u32 LB_(affinity_backend)(const struct FAM_PKT *p, const struct lb4_svc *svc,
						  __u64 now, struct FAM_BACKEND **be)
{
	struct FAM_AFFINITY_KEY key = { .svc_id = svc->svc_id, .client = p->saddr };

	return LB_(affinity_check)(LB_(affinity_get)(&key), svc, now, be);
}

static __always_inline void LB_(affinity_update)(const struct FAM_PKT *p, const struct lb4_svc *svc,
						__u32 backend_id, __u64 now)
{
	struct FAM_AFFINITY_KEY key = { .svc_id = svc->svc_id, .client = p->saddr };
	struct lb4_affinity val = { .last_used_ns = now, .backend_id = backend_id };

	LB_(affinity_put)(&key, &val);
}

/* Picks a backend by a hash over the frontend's slots (the flow hash of a packet, or a socket's
 * at connect() time). Returns its id, or 0 when the frontend has none usable or the slot is the
 * reject share (LB4_SLOT_REJECT). A frontend shrinking while this reads it (its record read with
 * the old count, the slots past the new count already gone) answers from slot 0, which every
 * frontend with backends has, rather than refusing a flow it can serve. */
static __always_inline __u32 LB_(slot_backend)(const struct lb4_svc *svc, __u32 hash,
					      struct FAM_BACKEND **be)
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
	if (*id == LB4_SLOT_REJECT)
		return 0;	/* the reject share: as if there were no backend */
	*be = LB_(backend_get)(id);
	if (!*be)
		return 0;
	return *id;
}

static __always_inline __u32 LB_(select_backend)(const struct FAM_PKT *p, const struct lb4_svc *svc,
						struct FAM_BACKEND **be)
{
	return LB_(slot_backend)(svc, FAM_FLOW_HASH(p), be);
}

/* The backend of a new flow: the client's by session affinity, else the hash's. */
static __always_inline __u32 LB_(choose_backend)(const struct FAM_PKT *p, const struct lb4_svc *svc,
						__u64 now, struct FAM_BACKEND **be)
{
	__u32 id = 0;

	if (svc->affinity_timeout)
		id = LB_(affinity_backend)(p, svc, now, be);
	if (!id)
		id = LB_(select_backend)(p, svc, be);
	return *be ? id : 0;
}

