/* lb_maps.h: the pinned maps of the data plane. Included by the programs and by lb_maps.c, the
 * maps-only module the CLI compiles to read what is programmed. */
#ifndef EBPFLB_LB_MAPS_H
#define EBPFLB_LB_MAPS_H

#include "lb_structs.h"

/* Tunables: the loader overrides them with -D. */
#ifndef EBPFLB_PIN_DIR
#define EBPFLB_PIN_DIR "/sys/fs/bpf/ebpflb"
#endif
#ifndef LB4_MAX_SERVICES
#define LB4_MAX_SERVICES 65536
#endif
#ifndef LB4_MAX_BACKENDS
#define LB4_MAX_BACKENDS 65536
#endif
#ifndef LB4_MAX_SLOTS
#define LB4_MAX_SLOTS 1048576
#endif
#ifndef CT4_MAX_ENTRIES
#define CT4_MAX_ENTRIES 262144
#endif
#ifndef LB4_AFFINITY_MAX_ENTRIES
#define LB4_AFFINITY_MAX_ENTRIES 65536
#endif
#ifndef LB4_MAX_SRC_RANGES
#define LB4_MAX_SRC_RANGES 16384
#endif
#ifndef LB4_MAX_NODE_IFS
#define LB4_MAX_NODE_IFS 64
#endif
/* Source ports for SNAT towards backends on other nodes: below the NodePort range and the
 * kernel's default ephemeral range (32768-60999), so they never collide with the node's own
 * connections. */
#ifndef LB4_SNAT_PORT_MIN
#define LB4_SNAT_PORT_MIN 1024
#endif
#ifndef LB4_SNAT_PORT_MAX
#define LB4_SNAT_PORT_MAX 29999
#endif
/* Seconds a datagram's fragments may take to arrive (the kernel's ipfrag_time). */
#ifndef FRAG4_TIMEOUT
#define FRAG4_TIMEOUT 30
#endif
/* ... and IPv6's (the kernel's ip6frag_time). */
#ifndef FRAG6_TIMEOUT
#define FRAG6_TIMEOUT 60
#endif
#ifndef FRAG4_MAX_ENTRIES
#define FRAG4_MAX_ENTRIES 16384
#endif
#ifndef LB4_MAX_POD_ADDRS
#define LB4_MAX_POD_ADDRS 65536
#endif
/* Sockets balanced at connect() or sendmsg() time, remembered for getpeername() and replies. */
#ifndef LB4_SOCK_MAX_ENTRIES
#define LB4_SOCK_MAX_ENTRIES 262144
#endif
#ifndef CT4_SYN_MAX_ENTRIES
#define CT4_SYN_MAX_ENTRIES 65536
#endif
/* Conntrack lifetimes since the last packet, by state (the agent's GC uses the same values). */
#ifndef CT_TIMEOUT_TCP_SYN
#define CT_TIMEOUT_TCP_SYN 60
#endif
#ifndef CT_TIMEOUT_TCP_ESTABLISHED
#define CT_TIMEOUT_TCP_ESTABLISHED 21600
#endif
#ifndef CT_TIMEOUT_TCP_CLOSE
#define CT_TIMEOUT_TCP_CLOSE 10
#endif
#ifndef CT_TIMEOUT_TCP_TIME_WAIT
#define CT_TIMEOUT_TCP_TIME_WAIT 60
#endif
#ifndef CT_TIMEOUT_UDP
#define CT_TIMEOUT_UDP 60
#endif

/* The maps the control plane writes allocate entries as they are written (BPF_F_NO_PREALLOC):
 * their limits can be generous (Maglev tables are large) without reserving kernel memory. */

/* Frontends: (VIP, port, protocol) -> service id and slot count. */
BPF_TABLE_PINNED("hash", struct lb4_svc_key, struct lb4_svc, lb4_services, LB4_MAX_SERVICES,
		 EBPFLB_PIN_DIR "/lb4_services", BPF_F_NO_PREALLOC);
/* Selection slots: (service id, slot) -> backend id. */
BPF_TABLE_PINNED("hash", struct lb4_slot_key, __u32, lb4_slots, LB4_MAX_SLOTS,
		 EBPFLB_PIN_DIR "/lb4_slots", BPF_F_NO_PREALLOC);
/* Backends: id -> address, port, protocol. */
BPF_TABLE_PINNED("hash", __u32, struct lb4_backend, lb4_backends, LB4_MAX_BACKENDS,
		 EBPFLB_PIN_DIR "/lb4_backends", BPF_F_NO_PREALLOC);
/* Every VIP address, so a new flow claiming a VIP as its source can be refused. */
BPF_TABLE_PINNED("hash", __be32, __u32, lb4_vips, LB4_MAX_SERVICES, EBPFLB_PIN_DIR "/lb4_vips",
		 BPF_F_NO_PREALLOC);
/* Connection tracking, both directions; LRU so a full table evicts the idlest flows, not new ones.
 * UDP flows and TCP flows whose client completed the handshake live here. */
BPF_TABLE_PINNED("lru_hash", struct ct4_key, struct ct4_entry, ct4, CT4_MAX_ENTRIES,
		 EBPFLB_PIN_DIR "/ct4");
/* Half-open TCP flows (a SYN, no ACK from the client yet), same layout. A SYN flood churns only
 * this table; a flow moves to ct4 when the client's ACK arrives, so established flows are never
 * evicted to make room for a flood. */
BPF_TABLE_PINNED("lru_hash", struct ct4_key, struct ct4_entry, ct4_syn, CT4_SYN_MAX_ENTRIES,
		 EBPFLB_PIN_DIR "/ct4_syn");
/* Frontend display names, for the CLI only. */
BPF_TABLE_PINNED("hash", __u32, struct lb4_svc_meta, lb4_svc_meta, LB4_MAX_SERVICES,
		 EBPFLB_PIN_DIR "/lb4_svc_meta", BPF_F_NO_PREALLOC);
/* Session affinity per (frontend, client address); LRU: the oldest clients are forgotten first. */
BPF_TABLE_PINNED("lru_hash", struct lb4_affinity_key, struct lb4_affinity, lb4_affinity,
		 LB4_AFFINITY_MAX_ENTRIES, EBPFLB_PIN_DIR "/lb4_affinity");
/* loadBalancerSourceRanges per frontend (LPM: see struct lb4_src_range_key). */
BPF_TABLE_PINNED("lpm_trie", struct lb4_src_range_key, __u32, lb4_src_ranges, LB4_MAX_SRC_RANGES,
		 EBPFLB_PIN_DIR "/lb4_src_ranges", BPF_F_NO_PREALLOC);
/* Node devices by ifindex, with their SNAT address; written by the agent when it attaches. */
BPF_TABLE_PINNED("hash", __u32, struct lb4_node_if, lb4_node_ifs, LB4_MAX_NODE_IFS,
		 EBPFLB_PIN_DIR "/lb4_node_ifs");
/* Datagrams in flight in fragments: the translation of each first fragment, for the later ones.
 * LRU: a datagram whose last fragment was lost is forgotten when room is needed. */
BPF_TABLE_PINNED("lru_hash", struct frag4_key, struct frag4_nat, frag4, FRAG4_MAX_ENTRIES,
		 EBPFLB_PIN_DIR "/frag4");
/* The addresses each pod device may send from (struct lb4_pod_addr_key); written by the agent. */
BPF_TABLE_PINNED("hash", struct lb4_pod_addr_key, __u32, lb4_pod_addrs, LB4_MAX_POD_ADDRS,
		 EBPFLB_PIN_DIR "/lb4_pod_addrs", BPF_F_NO_PREALLOC);
/* Sockets the cgroup hooks translated (struct lb4_sock_key). LRU: a socket's cookie is never
 * reused, so the entries of closed sockets only wait to be evicted. */
BPF_TABLE_PINNED("lru_hash", struct lb4_sock_key, struct lb4_sock_nat, lb4_sock_nat,
		 LB4_SOCK_MAX_ENTRIES, EBPFLB_PIN_DIR "/lb4_sock_nat");
/* The same for IPv6 sockets (connect6, sendmsg6). */
BPF_TABLE_PINNED("lru_hash", struct lb6_sock_key, struct lb6_sock_nat, lb6_sock_nat,
		 LB4_SOCK_MAX_ENTRIES, EBPFLB_PIN_DIR "/lb6_sock_nat");
/* Session affinity of the sockets the cgroup hooks balance, per (frontend, network namespace):
 * one map for both families, as service ids are. */
BPF_TABLE_PINNED("lru_hash", struct lb4_sock_affinity_key, struct lb4_affinity, lb4_sock_affinity,
		 LB4_AFFINITY_MAX_ENTRIES, EBPFLB_PIN_DIR "/lb4_sock_affinity");
/* The IPv6 twins of the frontend, backend, VIP, source-range, affinity, conntrack and device
 * maps, of the same sizes (their values and ids are shared with IPv4: see struct lb6_svc_key). */
BPF_TABLE_PINNED("hash", struct lb6_svc_key, struct lb4_svc, lb6_services, LB4_MAX_SERVICES,
		 EBPFLB_PIN_DIR "/lb6_services", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct lb6_backend, lb6_backends, LB4_MAX_BACKENDS,
		 EBPFLB_PIN_DIR "/lb6_backends", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lb6_addr, __u32, lb6_vips, LB4_MAX_SERVICES,
		 EBPFLB_PIN_DIR "/lb6_vips", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ct6_key, struct ct6_entry, ct6, CT4_MAX_ENTRIES,
		 EBPFLB_PIN_DIR "/ct6");
BPF_TABLE_PINNED("lru_hash", struct ct6_key, struct ct6_entry, ct6_syn, CT4_SYN_MAX_ENTRIES,
		 EBPFLB_PIN_DIR "/ct6_syn");
BPF_TABLE_PINNED("lru_hash", struct lb6_affinity_key, struct lb4_affinity, lb6_affinity,
		 LB4_AFFINITY_MAX_ENTRIES, EBPFLB_PIN_DIR "/lb6_affinity");
BPF_TABLE_PINNED("lpm_trie", struct lb6_src_range_key, __u32, lb6_src_ranges, LB4_MAX_SRC_RANGES,
		 EBPFLB_PIN_DIR "/lb6_src_ranges", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct lb6_node_if, lb6_node_ifs, LB4_MAX_NODE_IFS,
		 EBPFLB_PIN_DIR "/lb6_node_ifs");
BPF_TABLE_PINNED("hash", struct lb6_pod_addr_key, __u32, lb6_pod_addrs, LB4_MAX_POD_ADDRS,
		 EBPFLB_PIN_DIR "/lb6_pod_addrs", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct frag6_key, struct frag6_nat, frag6, FRAG4_MAX_ENTRIES,
		 EBPFLB_PIN_DIR "/frag6");
/* The IPv6 programs (enum lb6_prog), which the TC entry points tail-call for IPv6 packets;
 * filled by the loader. Pinned like every map: the kernel empties a program array when no one
 * in user space holds it, and the attached programs outlive the agent. */
BPF_TABLE_PINNED("prog", __u32, __u32, lb6_progs, LB6_PROG_MAX, EBPFLB_PIN_DIR "/lb6_progs");
/* The same for the XDP entry points (enum lb6_xdp_prog). */
BPF_TABLE_PINNED("prog", __u32, __u32, lb6_xdp_progs, LB6_XDP_MAX,
		 EBPFLB_PIN_DIR "/lb6_xdp_progs");
/* Socket load balancing settings, written by the agent before it attaches the cgroup hooks. */
BPF_TABLE_PINNED("array", __u32, struct lb_sock_cfg, lb_sock_cfg, 1, EBPFLB_PIN_DIR "/lb_sock_cfg");
/* The data path's settings (struct lb_dp_cfg), written by the agent: a takeover's grace. */
BPF_TABLE_PINNED("array", __u32, struct lb_dp_cfg, lb_dp_cfg, 1, EBPFLB_PIN_DIR "/lb_dp_cfg");
/* One count per program run: where (enum lb_at) and what it did (enum lb_verdict). */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, lb_verdicts, AT_MAX * VERDICT_MAX,
		 EBPFLB_PIN_DIR "/lb_verdicts");
/* Drop reasons and events (enum lb_stat). */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, lb_stats, STAT_MAX, EBPFLB_PIN_DIR "/lb_stats");
/* Per-frontend and per-backend traffic, indexed by id (ids are below the map limits; 0 unused).
 * The control plane zeroes an id's counters before it gives the id to a new frontend or backend. */
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_flow_stats, lb4_svc_stats, LB4_MAX_SERVICES + 1,
		 EBPFLB_PIN_DIR "/lb4_svc_stats");
BPF_TABLE_PINNED("percpu_array", __u32, struct lb_flow_stats, lb4_backend_stats,
		 LB4_MAX_BACKENDS + 1, EBPFLB_PIN_DIR "/lb4_backend_stats");

#endif
