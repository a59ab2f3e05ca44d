/* lb_core.h: the decision core and what it stands on, once per IP family: the templates
 * (conntrack, selection, SNAT, the decision itself, fragments, ICMP errors) instantiated for IPv4 (ct4_find,
 * lb4_frontend...) and IPv6 (ct6_find, lb6_frontend...). */
#ifndef EBPFLB_LB_CORE_H
#define EBPFLB_LB_CORE_H

#include "lb_maps.h"
#include "map_access.h"
#include "parse.h"
#include "addr6.h"
#include "flow_hash.h"
#include "counters.h"
#include "conntrack.h"
#include "node_fwd.h"
#include "nat.h"
#include "fragments.h"
#include "icmp.h"

/* Which hook asks: the differences between them are all here, as constants the compiler folds. */
#define HOOK_POD 0	/* TC ingress of a pod device: packets leaving a pod */
#define HOOK_NODE 1	/* TC ingress of a node device: traffic from outside the cluster */
#define HOOK_XDP 2	/* XDP on a node device: as HOOK_NODE, leaving to TC what it cannot finish */
/* Generic (skb) XDP, which leaves skb->csum as it was: on a CHECKSUM_COMPLETE device a packet
 * it rewrote and passed up would reach the stack with a stale sum. It also leaves flows to local
 * backends to TC, whose csum helpers keep skb->csum right (flows it sends back out are fine). */
#define HOOK_XDP_GENERIC 3
#define HOOK_IS_XDP(hook) ((hook) == HOOK_XDP || (hook) == HOOK_XDP_GENERIC)

#include "family4.tmpl.h"
#include "conntrack.tmpl.h"
#include "select.tmpl.h"
#include "snat.tmpl.h"
#include "core.tmpl.h"
#include "fragments.tmpl.h"
#include "icmp_nat.tmpl.h"
#include "family_end.tmpl.h"

#include "family6.tmpl.h"
#include "conntrack.tmpl.h"
#include "select.tmpl.h"
#include "snat.tmpl.h"
#include "core.tmpl.h"
#include "fragments.tmpl.h"
#include "icmp_nat.tmpl.h"
#include "family_end.tmpl.h"

#endif
