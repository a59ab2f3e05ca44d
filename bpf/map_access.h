/* map_access.h: every map operation of the templates (*.tmpl.h), one small function per map,
 * operation and family. bcc rewrites `map.lookup()` only where the map's name is written out, never
 * through a macro, so a template reaches ct4 or ct6 as CT_(get) (ct4_get or ct6_get), not as a
 * map named by its family header. */
#ifndef EBPFLB_MAP_ACCESS_H
#define EBPFLB_MAP_ACCESS_H

#include "lb_maps.h"

/* ---- both families ---- */

/* The data path's settings (struct lb_dp_cfg): LB_DP_F_*. */
static __always_inline __u32 lb_dp_flags(void)
{
	__u32 zero = 0;
	struct lb_dp_cfg *cfg = lb_dp_cfg.lookup(&zero);

	return cfg ? cfg->flags : 0;
}

/* ---- IPv4 ---- */

static __always_inline struct ct4_entry *ct4_get(struct ct4_key *k)
{
	return ct4.lookup(k);
}

static __always_inline int ct4_put(struct ct4_key *k, struct ct4_entry *v)
{
	return ct4.update(k, v);
}

static __always_inline int ct4_add(struct ct4_key *k, struct ct4_entry *v)
{
	return ct4.insert(k, v);
}

static __always_inline int ct4_del(struct ct4_key *k)
{
	return ct4.delete(k);
}

static __always_inline struct ct4_entry *ct4_syn_get(struct ct4_key *k)
{
	return ct4_syn.lookup(k);
}

static __always_inline int ct4_syn_put(struct ct4_key *k, struct ct4_entry *v)
{
	return ct4_syn.update(k, v);
}

static __always_inline int ct4_syn_add(struct ct4_key *k, struct ct4_entry *v)
{
	return ct4_syn.insert(k, v);
}

static __always_inline int ct4_syn_del(struct ct4_key *k)
{
	return ct4_syn.delete(k);
}

static __always_inline struct lb4_backend *lb4_backend_get(__u32 *k)
{
	return lb4_backends.lookup(k);
}

static __always_inline __u32 *lb4_vip_get(__be32 *k)
{
	return lb4_vips.lookup(k);
}

static __always_inline __u32 *lb4_pod_addr_get(struct lb4_pod_addr_key *k)
{
	return lb4_pod_addrs.lookup(k);
}

static __always_inline __u32 *lb4_src_range_get(struct lb4_src_range_key *k)
{
	return lb4_src_ranges.lookup(k);
}

static __always_inline struct lb4_affinity *lb4_affinity_get(struct lb4_affinity_key *k)
{
	return lb4_affinity.lookup(k);
}

static __always_inline int lb4_affinity_put(struct lb4_affinity_key *k, struct lb4_affinity *v)
{
	return lb4_affinity.update(k, v);
}

static __always_inline struct lb4_node_if *lb4_node_if_get(__u32 *k)
{
	return lb4_node_ifs.lookup(k);
}

static __always_inline struct frag4_nat *frag4_get(struct frag4_key *k)
{
	return frag4.lookup(k);
}

static __always_inline int frag4_put(struct frag4_key *k, struct frag4_nat *v)
{
	return frag4.update(k, v);
}

static __always_inline struct lb4_svc *lb4_svc_get(struct lb4_svc_key *k)
{
	return lb4_services.lookup(k);
}

static __always_inline struct lb4_sock_nat *lb4_sock_nat_get(struct lb4_sock_key *k)
{
	return lb4_sock_nat.lookup(k);
}

static __always_inline int lb4_sock_nat_put(struct lb4_sock_key *k, struct lb4_sock_nat *v)
{
	return lb4_sock_nat.update(k, v);
}

/* ---- IPv6 ---- */

static __always_inline struct ct6_entry *ct6_get(struct ct6_key *k)
{
	return ct6.lookup(k);
}

static __always_inline int ct6_put(struct ct6_key *k, struct ct6_entry *v)
{
	return ct6.update(k, v);
}

static __always_inline int ct6_add(struct ct6_key *k, struct ct6_entry *v)
{
	return ct6.insert(k, v);
}

static __always_inline int ct6_del(struct ct6_key *k)
{
	return ct6.delete(k);
}

static __always_inline struct ct6_entry *ct6_syn_get(struct ct6_key *k)
{
	return ct6_syn.lookup(k);
}

static __always_inline int ct6_syn_put(struct ct6_key *k, struct ct6_entry *v)
{
	return ct6_syn.update(k, v);
}

static __always_inline int ct6_syn_add(struct ct6_key *k, struct ct6_entry *v)
{
	return ct6_syn.insert(k, v);
}

static __always_inline int ct6_syn_del(struct ct6_key *k)
{
	return ct6_syn.delete(k);
}

static __always_inline struct lb6_backend *lb6_backend_get(__u32 *k)
{
	return lb6_backends.lookup(k);
}

static __always_inline __u32 *lb6_vip_get(struct lb6_addr *k)
{
	return lb6_vips.lookup(k);
}

static __always_inline __u32 *lb6_pod_addr_get(struct lb6_pod_addr_key *k)
{
	return lb6_pod_addrs.lookup(k);
}

static __always_inline __u32 *lb6_src_range_get(struct lb6_src_range_key *k)
{
	return lb6_src_ranges.lookup(k);
}

static __always_inline struct lb4_affinity *lb6_affinity_get(struct lb6_affinity_key *k)
{
	return lb6_affinity.lookup(k);
}

static __always_inline int lb6_affinity_put(struct lb6_affinity_key *k, struct lb4_affinity *v)
{
	return lb6_affinity.update(k, v);
}

static __always_inline struct lb6_node_if *lb6_node_if_get(__u32 *k)
{
	return lb6_node_ifs.lookup(k);
}

static __always_inline struct frag6_nat *frag6_get(struct frag6_key *k)
{
	return frag6.lookup(k);
}

static __always_inline int frag6_put(struct frag6_key *k, struct frag6_nat *v)
{
	return frag6.update(k, v);
}

static __always_inline struct lb4_svc *lb6_svc_get(struct lb6_svc_key *k)
{
	return lb6_services.lookup(k);
}

static __always_inline struct lb6_sock_nat *lb6_sock_nat_get(struct lb6_sock_key *k)
{
	return lb6_sock_nat.lookup(k);
}

static __always_inline int lb6_sock_nat_put(struct lb6_sock_key *k, struct lb6_sock_nat *v)
{
	return lb6_sock_nat.update(k, v);
}

#endif
