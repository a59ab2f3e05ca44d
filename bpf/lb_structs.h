/* lb_structs.h: every struct shared between the BPF programs and user space; the single source of
 * truth for map layouts (Python reads them through bcc's generated Key/Leaf types). */
#ifndef EBPFLB_LB_STRUCTS_H
#define EBPFLB_LB_STRUCTS_H

#include <linux/types.h>

/* Frontend identity as it appears on the wire: VIP and port in network order, IP protocol, and
 * who the record is for. */
struct lb4_svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 scope;	/* LB4_SCOPE_* */
};

/* An IPv6 address in network order, as four words: copied whole, compared word by word. */
struct lb6_addr {
	__be32 w[4];
};

/* The IPv6 twin of lb4_svc_key. Both families' frontends map to the same value (struct lb4_svc)
 * and share the id spaces: a service id or backend id names one record whatever its family, so
 * the slots, names and counters maps serve both. */
struct lb6_svc_key {
	struct lb6_addr vip;
	__be16 port;
	__u8 proto;
	__u8 scope;	/* LB4_SCOPE_* */
};

/* Every frontend has a record for every client (scope ALL). A NodePort, LoadBalancer or
 * ExternalIP frontend with externalTrafficPolicy Local has a second one for traffic from outside
 * the cluster (scope EXTERNAL) holding only this node's backends, while pods keep reaching every
 * backend through the first, as with kube-proxy. The ALL record's LB4_SVC_F_ETP_LOCAL flag says
 * the EXTERNAL record exists. */
#define LB4_SCOPE_ALL 0
#define LB4_SCOPE_EXTERNAL 1

/* A programmed frontend. count == 0 means the frontend exists but has no usable backend, which
 * is a verdict of its own (the packet is dropped and counted), not a miss. */
struct lb4_svc {
	__u32 svc_id;	/* names this frontend's slots in lb4_slots and its counters */
	__u32 count;	/* number of slots: the flow hash picks slot = hash % count */
	__u32 flags;	/* LB4_SVC_F_*: how the control plane filled the slots (for display) */
	__u32 affinity_timeout;	/* sessionAffinity ClientIP: seconds since last use; 0 = none */
};

/* The slots hold the backends themselves (hash-mod, "random") or a Maglev table of prime size;
 * the data path is the same, slot = hash % count, so this flag only tells readers which. */
#define LB4_SVC_F_MAGLEV 0x1
/* externalTrafficPolicy Local: traffic from outside the cluster (NodePort, LoadBalancer and
 * ExternalIP frontends) goes only to this node's backends, keeps its source address (no SNAT),
 * and is dropped when the node has none. */
#define LB4_SVC_F_ETP_LOCAL 0x2
/* loadBalancerSourceRanges: a new flow must come from a prefix listed for this frontend in
 * lb4_src_ranges, else it is dropped. */
#define LB4_SVC_F_SRC_RANGES 0x4
/* A removed TCP frontend kept for the flows it translated (ebpflb/draining.py): a packet of one
 * of them goes on as before; anything else is treated as if there were no frontend. */
#define LB4_SVC_F_DRAINING 0x8
/* No usable backend here, but the Service has some elsewhere (left out by a Local traffic
 * policy): a new flow is dropped, not rejected, as kube-proxy does. It rejects (a closed port)
 * only when the Service has no usable endpoint anywhere. */
#define LB4_SVC_F_DROP_EMPTY 0x40
/* Which endpoint hints chose the slots (display only; the programs ignore them): those for
 * this node (trafficDistribution PreferSameNode), or for this node's zone (PreferClose,
 * PreferSameZone, topology-aware routing). Neither: every usable endpoint. */
#define LB4_SVC_F_TOPO_NODE 0x80
#define LB4_SVC_F_TOPO_ZONE 0x100
/* Bits 4-5: the kind of frontend (0 ClusterIP, 1 NodePort, 2 LoadBalancer, 3 ExternalIP). Pods
 * reach every kind alike; on a node device a ClusterIP is refused (not reachable from outside). */
#define LB4_SVC_KIND_SHIFT 4
#define LB4_SVC_KIND_MASK 0x30
#define LB4_SVC_KIND_CLUSTERIP 0x0

/* loadBalancerSourceRanges of one frontend, as an LPM trie: prefixlen counts the 32 bits of
 * svc_id plus the prefix bits of addr, so one trie holds the ranges of every frontend. */
struct lb4_src_range_key {
	__u32 prefixlen;
	__u32 svc_id;
	__be32 addr;
};

struct lb6_src_range_key {
	__u32 prefixlen;	/* 32 (svc_id) + the prefix bits of addr */
	__u32 svc_id;
	struct lb6_addr addr;
};

/* A node device (where traffic from outside the cluster arrives), by ifindex: the address a flow
 * to a backend on another node is SNATed to when it leaves through this device. A route to a
 * backend through a node device means the backend is remote. */
struct lb4_node_if {
	__be32 addr;
	__u32 flags;	/* 0, reserved (kept so the pinned map's value size stays) */
};

/* A node device's IPv6 SNAT address (lb6_node_ifs). */
struct lb6_node_if {
	struct lb6_addr addr;
	__u32 flags;	/* 0, reserved */
};

/* One selection slot of a frontend; the value is a backend id in lb4_backends. */
struct lb4_slot_key {
	__u32 svc_id;
	__u32 slot;
};

/* A backend of one frontend. A pod behind several frontends has one record (and one id) per
 * frontend, so its counters say which Service its traffic came through, and a backend that holds
 * no slot (weight 0, draining) is still listed under its frontend. */
struct lb4_backend {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 flags;	/* LB4_BE_F_* */
	__u32 svc_id;	/* the frontend this record belongs to */
};

/* An IPv6 backend (lb6_backends); its id comes from the same space as IPv4 backends'. */
struct lb6_backend {
	struct lb6_addr addr;
	__be16 port;
	__u8 proto;
	__u8 flags;	/* LB4_BE_F_* */
	__u32 svc_id;
};

/* A draining backend (weight 0): no slot, and session affinity must not send it new flows. */
#define LB4_BE_F_NO_NEW 0x1

/* A slot that holds no backend but the share of new flows to refuse: a Gateway route's
 * backendRefs that do not resolve keep their weight, and the flows it would have taken are
 * rejected (RST, ICMP port unreachable) as the Gateway API asks. Never a backend id: ids are
 * below the size of lb4_backends. */
#define LB4_SLOT_REJECT 0xffffffff

/* Session affinity (ClientIP): the backend a client's last new flow to a frontend went to. */
struct lb4_affinity_key {
	__u32 svc_id;
	__be32 client;
};

struct lb6_affinity_key {
	__u32 svc_id;
	struct lb6_addr client;
};

struct lb4_affinity {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

/* Session affinity of sockets balanced at connect() time (lb4_sock.c): the client is its network
 * namespace, as its address is not chosen yet when the hook runs. */
struct lb4_sock_affinity_key {
	__u32 svc_id;
	__u32 pad;
	__u64 netns_cookie;
};

/* A socket the cgroup hooks sent to a backend instead of a frontend, by its cookie and the
 * backend's address: what getpeername() and a UDP reply's source become (the frontend), and
 * which sockets to close when the backend leaves its Service. */
struct lb4_sock_key {
	__u64 cookie;
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct lb4_sock_nat {
	__be32 vip;
	__be16 port;
	__u16 pad;
	__u32 svc_id;
	__u32 backend_id;
};

/* The IPv6 twins of lb4_sock_key and lb4_sock_nat (lb6_sock_nat). */
struct lb6_sock_key {
	__u64 cookie;
	struct lb6_addr addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
	__u32 pad2;
};

struct lb6_sock_nat {
	struct lb6_addr vip;
	__be16 port;
	__u16 pad;
	__u32 svc_id;
	__u32 backend_id;
};

/* Socket load balancing (lb_sock_cfg[0]): whose sockets the cgroup hooks translate. OFF keeps
 * the hooks attached but idle; HOST_ONLY leaves pods' sockets to the TC programs (service
 * meshes that need to see the frontend address). */
#define LB_SOCK_OFF 0
#define LB_SOCK_ALL 1
#define LB_SOCK_HOST_ONLY 2

struct lb_sock_cfg {
	__u64 host_netns_cookie;	/* the node's network namespace, for HOST_ONLY */
	__u32 mode;		/* LB_SOCK_* */
	__u32 pad;
};

/* The data path's settings (lb_dp_cfg[0]). NETFILTER_GRACE is set while a takeover from
 * kube-proxy is under way: a TCP packet other than a SYN of a flow not known here is one
 * netfilter may still be translating (born before the programs were attached, not imported
 * yet), so it passes to the stack untouched instead of being hashed to a backend. */
#define LB_DP_F_NETFILTER_GRACE 0x1
/* NETFILTER_NEW is set while the node is handed back to kube-proxy (its rules are back): every
 * packet of a flow not known here passes to the stack untouched, new flows included, so that
 * nothing new is translated here that netfilter would not know once the programs are gone. */
#define LB_DP_F_NETFILTER_NEW 0x2

struct lb_dp_cfg {
	__u32 flags;		/* LB_DP_F_* */
	__u32 pad;
};

/* Direction of a conntrack entry: the client's packets, or the backend's replies. */
#define CT_DIR_FWD 0
#define CT_DIR_REPLY 1

/* Conntrack key: the packet's own 5-tuple as it arrives, before any rewrite. */
struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

/* The IPv6 conntrack key and entry: the IPv4 ones with IPv6 addresses, read by the same code. */
struct ct6_key {
	struct lb6_addr saddr;
	struct lb6_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

/* ct4_entry.flags: TCP state as seen in the entry's own direction. */
#define CT_F_ESTABLISHED 0x1	/* sent more than a bare SYN (an ACK) */
#define CT_F_CLOSING 0x2	/* sent FIN or RST: short lifetime, a new SYN starts a new flow */
#define CT_F_HAIRPIN 0x4	/* a pod reaching itself: its source was rewritten to LB4_HAIRPIN_ADDR */
#define CT_F_EXTERNAL 0x8	/* a flow from outside the cluster, created on a node device */
#define CT_F_SNAT 0x10		/* ... to a backend on another node: its source was SNATed (nat2) */
/* A flow to a backend reached by the stack whose reply tuple a live flow already held (one
 * client address and port reaching one backend through two frontends): its source port was
 * rewritten to nat2_port, from the SNAT range, as conntrack would; nat2_addr is the client's. */
#define CT_F_PORT_NAT 0x20
/* Sent a RST (CT_F_CLOSING is set with it): the flow is over in both directions. A FIN ends only
 * its own direction: the other side may still send (a half-closed flow), which the agent's GC
 * keeps for tcp_time_wait instead of tcp_close. */
#define CT_F_RESET 0x40
/* A flow netfilter translates: taken over from kube-proxy, its netfilter conntrack entry imported
 * (ebpflb/takeover/). Its packets go to the stack as they came, where that entry rewrites them
 * (rewritten here as well, they would meet it half-translated and be given a new source port).
 * Forward entries only. */
#define CT_F_NETFILTER 0x80
/* ... being handed over: the agent is deleting netfilter's entry, and clears both flags right
 * after. The client's packets are dropped meanwhile (TCP retransmits): passed, they would reach
 * netfilter with no entry left; rewritten, they would meet the entry still there. */
#define CT_F_HANDOVER 0x100

/* The source a pod sees when it reaches itself through a Service (169.254.42.1): a link-local
 * address no pod owns, so the pod's reply leaves it and comes back to the data path. */
#define LB4_HAIRPIN_ADDR_HOST 0xa9fe2a01

/* The IPv6 hairpin source: the IPv4 one inside the local-use translation prefix 64:ff9b:1::/48
 * (RFC 8215), which no pod owns and which a pod routes by its default route, back to us. */
#define LB6_HAIRPIN_ADDR_W0 0x0064ff9b
#define LB6_HAIRPIN_ADDR_W1 0x00010000
#define LB6_HAIRPIN_ADDR_W2 0x00000000
#define LB6_HAIRPIN_ADDR_W3 LB4_HAIRPIN_ADDR_HOST

/* Conntrack value: where a forward packet is DNATed to (the backend), or what a reply's source
 * is rewritten to (the frontend). Keeping the address here, not a backend id, is what lets an
 * established flow outlive the removal of its backend from the Service.
 * A SNAT flow (CT_F_SNAT) rewrites the other side too: nat2 is the node address and port the
 * forward packets leave with, and in the reply entry the client the replies go back to. Its
 * reply entry is keyed backend -> nat2, which is what makes the SNAT port unique. A flow given a
 * port of its own (CT_F_PORT_NAT) is the same with the client's own address as nat2. */
struct ct4_entry {
	__u64 created_ns;
	__u64 last_seen_ns;	/* refreshed at most once a second, to keep writes off the hot path */
	__be32 nat_addr;
	__be16 nat_port;
	__u16 flags;
	__u32 svc_id;
	__u32 backend_id;
	__be32 nat2_addr;
	__be16 nat2_port;
	__u16 pad;
	__u32 ifindex;		/* the device whose packet created the flow (forward entries) */
	__u32 pad2;
};

struct ct6_entry {
	__u64 created_ns;
	__u64 last_seen_ns;
	struct lb6_addr nat_addr;
	__be16 nat_port;
	__u16 flags;
	__u32 svc_id;
	__u32 backend_id;
	struct lb6_addr nat2_addr;
	__be16 nat2_port;
	__u16 pad;
	__u32 ifindex;
	__u32 pad2;
};

/* Later fragments of a datagram carry no ports: they follow the translation of the first one,
 * remembered per (source, destination, IP id, protocol) as the fragments arrive. */
struct frag4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 hook;	/* FRAG_AT_*: a record serves only the hook that made it */
};

/* The IPv6 twin: the Fragment header's 32-bit identification. */
struct frag6_key {
	struct lb6_addr saddr;
	struct lb6_addr daddr;
	__be32 id;
	__u8 proto;
	__u8 hook;
	__u16 pad;
};

/* Where a first fragment was translated. A backend's fragmented answer crosses its own pod
 * device (lb4_from_pod) before the client's (lb4_to_pod): only the hook that translated the first
 * fragment may translate the others. */
#define FRAG_AT_POD_IN 1
#define FRAG_AT_POD_OUT 2
#define FRAG_AT_NODE_IN 3
#define FRAG_AT_NODE_OUT 4

/* frag4_nat.action: what happens to a later fragment after its addresses are rewritten. */
#define FRAG_ACT_PASS 0		/* on to the stack (or the pod), like its first fragment */
#define FRAG_ACT_REDIRECT 1	/* out of ifindex, TTL decremented (a SNAT flow on a node device) */
#define FRAG_ACT_BOUNCE 2	/* back out of the device it came in on (a pod reaching itself) */

struct frag4_nat {
	__be32 saddr;		/* the addresses the first fragment left with */
	__be32 daddr;
	__u32 svc_id;
	__u32 backend_id;
	__u32 ifindex;		/* FRAG_ACT_REDIRECT */
	__u8 action;
	__u8 reply;		/* counted as a reply (backend to client) */
	__u16 pad;
	__u64 created_ns;	/* a datagram not complete after FRAG4_TIMEOUT is forgotten */
};

struct frag6_nat {
	struct lb6_addr saddr;
	struct lb6_addr daddr;
	__u32 svc_id;
	__u32 backend_id;
	__u32 ifindex;
	__u8 action;
	__u8 reply;
	__u16 pad;
	__u64 created_ns;
};

/* Source validation on a pod device: (ifindex, address) is present for every address the pod
 * behind the device may use, and (ifindex, 0) marks a device whose addresses are known. A packet
 * to a frontend from a marked device with a source not listed is dropped. */
struct lb4_pod_addr_key {
	__u32 ifindex;
	__be32 addr;
};

struct lb6_pod_addr_key {
	__u32 ifindex;
	struct lb6_addr addr;
};

/* Display name of a frontend ("namespace/name:port"), written by the control plane so that
 * `ebpflb service list` can read names from what is programmed. Not read by the programs. */
#define LB4_SVC_NAME_LEN 128
struct lb4_svc_meta {
	char name[LB4_SVC_NAME_LEN];
};

/* Traffic counters of one frontend or one backend, per CPU (summed by user space). "in" is
 * client to backend, "out" is the replies; bytes are frame lengths as TC sees them. */
struct lb_flow_stats {
	__u64 packets_in;
	__u64 bytes_in;
	__u64 packets_out;
	__u64 bytes_out;
	__u64 conns;		/* new flows: conntrack entries created */
};

/* Where a packet decision is made: the first index of the verdict counters (lb_verdicts). */
enum lb_at {
	AT_FROM_POD = 0,	/* lb4_from_pod: TC ingress of a pod device */
	AT_TO_POD,		/* lb4_to_pod: TC egress of a pod device */
	AT_NODE_XDP,		/* lb4_node_xdp, lb4_xdp_generic: XDP on a node device */
	AT_NODE_IN,		/* lb4_node_in: TC ingress of a node device */
	AT_NODE_OUT,		/* lb4_node_out: TC egress of a node device */
	AT_SOCKET,		/* lb4_connect, lb4_sendmsg: the cgroup socket hooks */
	AT_MAX,
};

/* The IPv6 programs (lb6_tc.c) by their index in lb6_progs, the tail calls of lb4_tc.c. */
enum lb6_prog {
	LB6_PROG_FROM_POD = 0,	/* lb6_from_pod */
	LB6_PROG_TO_POD,	/* lb6_to_pod */
	LB6_PROG_NODE_IN,	/* lb6_node_in */
	LB6_PROG_NODE_OUT,	/* lb6_node_out */
	LB6_PROG_MAX,
};

/* The IPv6 XDP programs (lb6_tc.c) by their index in lb6_xdp_progs, the tail calls of the XDP
 * entry points: a program array serves programs of one type only, so XDP has its own. */
enum lb6_xdp_prog {
	LB6_XDP_NATIVE = 0,	/* lb6_node_xdp, from lb4_node_xdp */
	LB6_XDP_GENERIC,	/* lb6_xdp_generic, from lb4_xdp_generic */
	LB6_XDP_MAX,
};

/* What a program did with a packet, or a socket hook with a connect() or a datagram: exactly one
 * per run, counted per CPU at lb_verdicts[at * VERDICT_MAX + verdict]. */
enum lb_verdict {
	VERDICT_PASS = 0,	/* not for a frontend or a flow of ours: left untouched */
	VERDICT_MALFORMED,	/* an IPv4 or L4 header truncated or invalid: left untouched */
	VERDICT_NEW,		/* the first packet (or connect) of a flow, sent to a backend chosen for it */
	VERDICT_ESTABLISHED,	/* a packet of a known flow (or a datagram of a known socket), sent
				 * where the flow goes */
	VERDICT_STATELESS,	/* TCP other than a SYN for an unknown flow: sent by hash, no state */
	VERDICT_REPLY,		/* a backend's reply translated back to come from the frontend */
	VERDICT_ICMP_ERROR,	/* an ICMP error about a flow of ours translated */
	VERDICT_FRAGMENT,	/* a later fragment translated like its first */
	VERDICT_REJECT,		/* answered instead of sent on: TCP RST, ICMP port unreachable or
				 * fragmentation needed (a socket: connect() refused) */
	VERDICT_DROP,		/* dropped; lb_stats says why (one drop reason per drop) */
	VERDICT_TO_TC,		/* XDP: for a frontend, but left to TC to finish */
	VERDICT_MAX,
};

/* Global per-CPU counters (lb_stats): first the reason of each dropped packet (exactly one per
 * VERDICT_DROP), then events on the way, any number per packet. Packets of established flows and
 * replies move none of them: the verdict, frontend and backend counters count those. */
enum lb_stat {
	STAT_NO_BACKEND = 0,	/* drop: frontend hit with no usable backend here, not answered (a
				 * Local policy's backends all elsewhere, a RST, or the answer could
				 * not be built) */
	STAT_NAT_FAIL,		/* drop: a rewrite helper failed */
	STAT_BAD_SOURCE,	/* drop: a new flow from loopback, from a VIP or to itself */
	STAT_EXTERNAL_CLUSTERIP, /* drop: a ClusterIP reached from outside the cluster */
	STAT_SOURCE_DENIED,	/* drop: a new flow from outside the loadBalancerSourceRanges */
	STAT_SNAT_EXHAUSTED,	/* drop: no free SNAT port towards a remote backend */
	STAT_FORWARD_FAIL,	/* drop: no route, TTL exceeded, Local policy with a remote backend,
				 * or too big for the path and no fragmentation-needed sent */
	STAT_CT_COLLISION,	/* drop: a new flow's reply tuple is held by a live flow, no port for it */
	STAT_SPOOFED,		/* drop: a pod's packet to a frontend from an address not its own */
	STAT_TCP_NO_STATE,	/* drop: TCP other than a SYN for an unknown flow to a backend on
				 * another node (no SNAT port for the replies) */
	STAT_HANDOVER,		/* drop: a packet of a flow being handed over from netfilter (the
				 * microseconds its netfilter entry takes to delete) */
	STAT_DROP_REASONS,	/* (not a counter: the number of drop reasons above) */
	STAT_CT_INSERT = STAT_DROP_REASONS, /* event: conntrack flows created (two entries each) */
	STAT_CT_INSERT_FAIL,	/* event: conntrack full or an insert failed; the hash still picked */
	STAT_NODE_FORWARD,	/* event: a packet sent on to another node by TC (redirect) */
	STAT_XDP_FORWARD,	/* event: ... by XDP itself (XDP_TX or redirect) */
	STAT_SNAT_REUSE,	/* event: all probed SNAT ports taken: one in TIME_WAIT reused */
	STAT_FRAG_MISS,		/* event: a later fragment to a frontend, its first not seen (passed) */
	STAT_BACKEND_GONE,	/* event: a half-open flow's backend was removed: a new one chosen */
	STAT_CT_REBUILT,	/* event: a lost forward entry rebuilt from its reply entry */
	STAT_PORT_NAT,		/* event: a new flow whose reply tuple a live flow held got a new
				 * source port */
	STAT_IPV6_UNLOADED,	/* event: an IPv6 packet whose program was not in lb6_progs or
				 * lb6_xdp_progs (passed untouched) */
	STAT_NETFILTER,		/* event: a packet left to netfilter: of a flow it translates, or
				 * during a takeover a TCP packet of a flow not known here */
	STAT_MAX,
};

#endif
