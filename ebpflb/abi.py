"""The C/Python contract, generated from bpf/ by ebpflb/dataplane/abi_gen.py: do not edit;
run `.venv/bin/python -m ebpflb.dataplane.abi_gen` after changing a header. Every name,
flag, enum, default, map, program and struct layout that Python shares with the programs
is here, once (pure core: no imports)."""

# ---- integer #defines of lb_structs.h, node_fwd.h
LB4_SCOPE_ALL = 0
LB4_SCOPE_EXTERNAL = 1
LB4_SVC_F_MAGLEV = 0x1
LB4_SVC_F_ETP_LOCAL = 0x2
LB4_SVC_F_SRC_RANGES = 0x4
LB4_SVC_F_DRAINING = 0x8
LB4_SVC_F_DROP_EMPTY = 0x40
LB4_SVC_F_TOPO_NODE = 0x80
LB4_SVC_F_TOPO_ZONE = 0x100
LB4_SVC_KIND_SHIFT = 4
LB4_SVC_KIND_MASK = 0x30
LB4_SVC_KIND_CLUSTERIP = 0x0
LB4_BE_F_NO_NEW = 0x1
LB4_SLOT_REJECT = 0xffffffff
LB_SOCK_OFF = 0
LB_SOCK_ALL = 1
LB_SOCK_HOST_ONLY = 2
LB_DP_F_NETFILTER_GRACE = 0x1
LB_DP_F_NETFILTER_NEW = 0x2
CT_DIR_FWD = 0
CT_DIR_REPLY = 1
CT_F_ESTABLISHED = 0x1
CT_F_CLOSING = 0x2
CT_F_HAIRPIN = 0x4
CT_F_EXTERNAL = 0x8
CT_F_SNAT = 0x10
CT_F_PORT_NAT = 0x20
CT_F_RESET = 0x40
CT_F_NETFILTER = 0x80
CT_F_HANDOVER = 0x100
LB4_HAIRPIN_ADDR_HOST = 0xa9fe2a01
LB6_HAIRPIN_ADDR_W0 = 0x64ff9b
LB6_HAIRPIN_ADDR_W1 = 0x10000
LB6_HAIRPIN_ADDR_W2 = 0x0
LB6_HAIRPIN_ADDR_W3 = 2852006401
FRAG_AT_POD_IN = 1
FRAG_AT_POD_OUT = 2
FRAG_AT_NODE_IN = 3
FRAG_AT_NODE_OUT = 4
FRAG_ACT_PASS = 0
FRAG_ACT_REDIRECT = 1
FRAG_ACT_BOUNCE = 2
LB4_SVC_NAME_LEN = 128
FIB_AF_INET = 2
FIB_AF_INET6 = 10
LB4_SNAT_TRIES = 16
SNAT_PORT_FREE = 0
SNAT_PORT_BUSY = 1
SNAT_PORT_TIME_WAIT = 2

# ---- tunables of lb_maps.h (the loader overrides them with -D)
LB4_MAX_SERVICES = 65536
LB4_MAX_BACKENDS = 65536
LB4_MAX_SLOTS = 1048576
CT4_MAX_ENTRIES = 262144
LB4_AFFINITY_MAX_ENTRIES = 65536
LB4_MAX_SRC_RANGES = 16384
LB4_MAX_NODE_IFS = 64
LB4_SNAT_PORT_MIN = 1024
LB4_SNAT_PORT_MAX = 29999
FRAG4_TIMEOUT = 30
FRAG6_TIMEOUT = 60
FRAG4_MAX_ENTRIES = 16384
LB4_MAX_POD_ADDRS = 65536
LB4_SOCK_MAX_ENTRIES = 262144
CT4_SYN_MAX_ENTRIES = 65536
CT_TIMEOUT_TCP_SYN = 60
CT_TIMEOUT_TCP_ESTABLISHED = 21600
CT_TIMEOUT_TCP_CLOSE = 10
CT_TIMEOUT_TCP_TIME_WAIT = 60
CT_TIMEOUT_UDP = 60
TUNABLES = (
    'LB4_MAX_SERVICES', 'LB4_MAX_BACKENDS', 'LB4_MAX_SLOTS', 'CT4_MAX_ENTRIES',
    'LB4_AFFINITY_MAX_ENTRIES', 'LB4_MAX_SRC_RANGES', 'LB4_MAX_NODE_IFS', 'LB4_SNAT_PORT_MIN',
    'LB4_SNAT_PORT_MAX', 'FRAG4_TIMEOUT', 'FRAG6_TIMEOUT', 'FRAG4_MAX_ENTRIES',
    'LB4_MAX_POD_ADDRS', 'LB4_SOCK_MAX_ENTRIES', 'CT4_SYN_MAX_ENTRIES', 'CT_TIMEOUT_TCP_SYN',
    'CT_TIMEOUT_TCP_ESTABLISHED', 'CT_TIMEOUT_TCP_CLOSE', 'CT_TIMEOUT_TCP_TIME_WAIT',
    'CT_TIMEOUT_UDP',
)

# ---- enum lb_at
AT_FROM_POD = 0
AT_TO_POD = 1
AT_NODE_XDP = 2
AT_NODE_IN = 3
AT_NODE_OUT = 4
AT_SOCKET = 5
AT_MAX = 6
ENUM_LB_AT = (
    'AT_FROM_POD', 'AT_TO_POD', 'AT_NODE_XDP', 'AT_NODE_IN', 'AT_NODE_OUT', 'AT_SOCKET', 'AT_MAX',
)

# ---- enum lb6_prog
LB6_PROG_FROM_POD = 0
LB6_PROG_TO_POD = 1
LB6_PROG_NODE_IN = 2
LB6_PROG_NODE_OUT = 3
LB6_PROG_MAX = 4
ENUM_LB6_PROG = (
    'LB6_PROG_FROM_POD', 'LB6_PROG_TO_POD', 'LB6_PROG_NODE_IN', 'LB6_PROG_NODE_OUT',
    'LB6_PROG_MAX',
)

# ---- enum lb6_xdp_prog
LB6_XDP_NATIVE = 0
LB6_XDP_GENERIC = 1
LB6_XDP_MAX = 2
ENUM_LB6_XDP_PROG = (
    'LB6_XDP_NATIVE', 'LB6_XDP_GENERIC', 'LB6_XDP_MAX',
)

# ---- enum lb_verdict
VERDICT_PASS = 0
VERDICT_MALFORMED = 1
VERDICT_NEW = 2
VERDICT_ESTABLISHED = 3
VERDICT_STATELESS = 4
VERDICT_REPLY = 5
VERDICT_ICMP_ERROR = 6
VERDICT_FRAGMENT = 7
VERDICT_REJECT = 8
VERDICT_DROP = 9
VERDICT_TO_TC = 10
VERDICT_MAX = 11
ENUM_LB_VERDICT = (
    'VERDICT_PASS', 'VERDICT_MALFORMED', 'VERDICT_NEW', 'VERDICT_ESTABLISHED',
    'VERDICT_STATELESS', 'VERDICT_REPLY', 'VERDICT_ICMP_ERROR', 'VERDICT_FRAGMENT',
    'VERDICT_REJECT', 'VERDICT_DROP', 'VERDICT_TO_TC', 'VERDICT_MAX',
)

# ---- enum lb_stat
STAT_NO_BACKEND = 0
STAT_NAT_FAIL = 1
STAT_BAD_SOURCE = 2
STAT_EXTERNAL_CLUSTERIP = 3
STAT_SOURCE_DENIED = 4
STAT_SNAT_EXHAUSTED = 5
STAT_FORWARD_FAIL = 6
STAT_CT_COLLISION = 7
STAT_SPOOFED = 8
STAT_TCP_NO_STATE = 9
STAT_HANDOVER = 10
STAT_DROP_REASONS = 11
STAT_CT_INSERT = 11
STAT_CT_INSERT_FAIL = 12
STAT_NODE_FORWARD = 13
STAT_XDP_FORWARD = 14
STAT_SNAT_REUSE = 15
STAT_FRAG_MISS = 16
STAT_BACKEND_GONE = 17
STAT_CT_REBUILT = 18
STAT_PORT_NAT = 19
STAT_IPV6_UNLOADED = 20
STAT_NETFILTER = 21
STAT_MAX = 22
ENUM_LB_STAT = (
    'STAT_NO_BACKEND', 'STAT_NAT_FAIL', 'STAT_BAD_SOURCE', 'STAT_EXTERNAL_CLUSTERIP',
    'STAT_SOURCE_DENIED', 'STAT_SNAT_EXHAUSTED', 'STAT_FORWARD_FAIL', 'STAT_CT_COLLISION',
    'STAT_SPOOFED', 'STAT_TCP_NO_STATE', 'STAT_HANDOVER', 'STAT_DROP_REASONS', 'STAT_CT_INSERT',
    'STAT_CT_INSERT_FAIL', 'STAT_NODE_FORWARD', 'STAT_XDP_FORWARD', 'STAT_SNAT_REUSE',
    'STAT_FRAG_MISS', 'STAT_BACKEND_GONE', 'STAT_CT_REBUILT', 'STAT_PORT_NAT',
    'STAT_IPV6_UNLOADED', 'STAT_NETFILTER', 'STAT_MAX',
)

# ---- maps of lb_maps.h: name -> (type, key type, value type, size)
MAPS = {
    'lb4_services': ('hash', 'struct lb4_svc_key', 'struct lb4_svc', 'LB4_MAX_SERVICES'),
    'lb4_slots': ('hash', 'struct lb4_slot_key', '__u32', 'LB4_MAX_SLOTS'),
    'lb4_backends': ('hash', '__u32', 'struct lb4_backend', 'LB4_MAX_BACKENDS'),
    'lb4_vips': ('hash', '__be32', '__u32', 'LB4_MAX_SERVICES'),
    'ct4': ('lru_hash', 'struct ct4_key', 'struct ct4_entry', 'CT4_MAX_ENTRIES'),
    'ct4_syn': ('lru_hash', 'struct ct4_key', 'struct ct4_entry', 'CT4_SYN_MAX_ENTRIES'),
    'lb4_svc_meta': ('hash', '__u32', 'struct lb4_svc_meta', 'LB4_MAX_SERVICES'),
    'lb4_affinity': ('lru_hash', 'struct lb4_affinity_key',
                     'struct lb4_affinity', 'LB4_AFFINITY_MAX_ENTRIES'),
    'lb4_src_ranges': ('lpm_trie', 'struct lb4_src_range_key', '__u32', 'LB4_MAX_SRC_RANGES'),
    'lb4_node_ifs': ('hash', '__u32', 'struct lb4_node_if', 'LB4_MAX_NODE_IFS'),
    'frag4': ('lru_hash', 'struct frag4_key', 'struct frag4_nat', 'FRAG4_MAX_ENTRIES'),
    'lb4_pod_addrs': ('hash', 'struct lb4_pod_addr_key', '__u32', 'LB4_MAX_POD_ADDRS'),
    'lb4_sock_nat': ('lru_hash', 'struct lb4_sock_key',
                     'struct lb4_sock_nat', 'LB4_SOCK_MAX_ENTRIES'),
    'lb6_sock_nat': ('lru_hash', 'struct lb6_sock_key',
                     'struct lb6_sock_nat', 'LB4_SOCK_MAX_ENTRIES'),
    'lb4_sock_affinity': ('lru_hash', 'struct lb4_sock_affinity_key',
                          'struct lb4_affinity', 'LB4_AFFINITY_MAX_ENTRIES'),
    'lb6_services': ('hash', 'struct lb6_svc_key', 'struct lb4_svc', 'LB4_MAX_SERVICES'),
    'lb6_backends': ('hash', '__u32', 'struct lb6_backend', 'LB4_MAX_BACKENDS'),
    'lb6_vips': ('hash', 'struct lb6_addr', '__u32', 'LB4_MAX_SERVICES'),
    'ct6': ('lru_hash', 'struct ct6_key', 'struct ct6_entry', 'CT4_MAX_ENTRIES'),
    'ct6_syn': ('lru_hash', 'struct ct6_key', 'struct ct6_entry', 'CT4_SYN_MAX_ENTRIES'),
    'lb6_affinity': ('lru_hash', 'struct lb6_affinity_key',
                     'struct lb4_affinity', 'LB4_AFFINITY_MAX_ENTRIES'),
    'lb6_src_ranges': ('lpm_trie', 'struct lb6_src_range_key', '__u32', 'LB4_MAX_SRC_RANGES'),
    'lb6_node_ifs': ('hash', '__u32', 'struct lb6_node_if', 'LB4_MAX_NODE_IFS'),
    'lb6_pod_addrs': ('hash', 'struct lb6_pod_addr_key', '__u32', 'LB4_MAX_POD_ADDRS'),
    'frag6': ('lru_hash', 'struct frag6_key', 'struct frag6_nat', 'FRAG4_MAX_ENTRIES'),
    'lb6_progs': ('prog', '__u32', '__u32', 'LB6_PROG_MAX'),
    'lb6_xdp_progs': ('prog', '__u32', '__u32', 'LB6_XDP_MAX'),
    'lb_sock_cfg': ('array', '__u32', 'struct lb_sock_cfg', '1'),
    'lb_dp_cfg': ('array', '__u32', 'struct lb_dp_cfg', '1'),
    'lb_verdicts': ('percpu_array', '__u32', '__u64', 'AT_MAX * VERDICT_MAX'),
    'lb_stats': ('percpu_array', '__u32', '__u64', 'STAT_MAX'),
    'lb4_svc_stats': ('percpu_array', '__u32', 'struct lb_flow_stats', 'LB4_MAX_SERVICES + 1'),
    'lb4_backend_stats': ('percpu_array', '__u32', 'struct lb_flow_stats', 'LB4_MAX_BACKENDS + 1'),
}
MAP_NAMES = tuple(MAPS)

# ---- entry points of lb4_tc.c, lb6_tc.c, lb4_sock.c: name -> context struct
PROGRAMS = {
    'lb4_from_pod': '__sk_buff',
    'lb4_to_pod': '__sk_buff',
    'lb4_node_xdp': 'xdp_md',
    'lb4_xdp_generic': 'xdp_md',
    'lb4_node_in': '__sk_buff',
    'lb4_node_out': '__sk_buff',
    'lb6_from_pod': '__sk_buff',
    'lb6_to_pod': '__sk_buff',
    'lb6_node_in': '__sk_buff',
    'lb6_node_xdp': 'xdp_md',
    'lb6_xdp_generic': 'xdp_md',
    'lb6_node_out': '__sk_buff',
    'lb4_connect': 'bpf_sock_addr',
    'lb4_sendmsg': 'bpf_sock_addr',
    'lb4_recvmsg': 'bpf_sock_addr',
    'lb4_getpeername': 'bpf_sock_addr',
    'lb6_connect': 'bpf_sock_addr',
    'lb6_sendmsg': 'bpf_sock_addr',
    'lb6_recvmsg': 'bpf_sock_addr',
    'lb6_getpeername': 'bpf_sock_addr',
}
PROG_LB4_FROM_POD = 'lb4_from_pod'
PROG_LB4_TO_POD = 'lb4_to_pod'
PROG_LB4_NODE_XDP = 'lb4_node_xdp'
PROG_LB4_XDP_GENERIC = 'lb4_xdp_generic'
PROG_LB4_NODE_IN = 'lb4_node_in'
PROG_LB4_NODE_OUT = 'lb4_node_out'
PROG_LB6_FROM_POD = 'lb6_from_pod'
PROG_LB6_TO_POD = 'lb6_to_pod'
PROG_LB6_NODE_IN = 'lb6_node_in'
PROG_LB6_NODE_XDP = 'lb6_node_xdp'
PROG_LB6_XDP_GENERIC = 'lb6_xdp_generic'
PROG_LB6_NODE_OUT = 'lb6_node_out'
PROG_LB4_CONNECT = 'lb4_connect'
PROG_LB4_SENDMSG = 'lb4_sendmsg'
PROG_LB4_RECVMSG = 'lb4_recvmsg'
PROG_LB4_GETPEERNAME = 'lb4_getpeername'
PROG_LB6_CONNECT = 'lb6_connect'
PROG_LB6_SENDMSG = 'lb6_sendmsg'
PROG_LB6_RECVMSG = 'lb6_recvmsg'
PROG_LB6_GETPEERNAME = 'lb6_getpeername'

# ---- map key and value layouts as compiled: type -> (size, ((field, offset, size), ...))
STRUCTS = {
    '__be32': (4, (
    )),
    '__u32': (4, (
    )),
    '__u64': (8, (
    )),
    'struct ct4_entry': (48, (
        ('created_ns', 0, 8),
        ('last_seen_ns', 8, 8),
        ('nat_addr', 16, 4),
        ('nat_port', 20, 2),
        ('flags', 22, 2),
        ('svc_id', 24, 4),
        ('backend_id', 28, 4),
        ('nat2_addr', 32, 4),
        ('nat2_port', 36, 2),
        ('pad', 38, 2),
        ('ifindex', 40, 4),
        ('pad2', 44, 4),
    )),
    'struct ct4_key': (16, (
        ('saddr', 0, 4),
        ('daddr', 4, 4),
        ('sport', 8, 2),
        ('dport', 10, 2),
        ('proto', 12, 1),
        ('dir', 13, 1),
        ('pad', 14, 2),
    )),
    'struct ct6_entry': (72, (
        ('created_ns', 0, 8),
        ('last_seen_ns', 8, 8),
        ('nat_addr', 16, 16),
        ('nat_port', 32, 2),
        ('flags', 34, 2),
        ('svc_id', 36, 4),
        ('backend_id', 40, 4),
        ('nat2_addr', 44, 16),
        ('nat2_port', 60, 2),
        ('pad', 62, 2),
        ('ifindex', 64, 4),
        ('pad2', 68, 4),
    )),
    'struct ct6_key': (40, (
        ('saddr', 0, 16),
        ('daddr', 16, 16),
        ('sport', 32, 2),
        ('dport', 34, 2),
        ('proto', 36, 1),
        ('dir', 37, 1),
        ('pad', 38, 2),
    )),
    'struct frag4_key': (12, (
        ('saddr', 0, 4),
        ('daddr', 4, 4),
        ('id', 8, 2),
        ('proto', 10, 1),
        ('hook', 11, 1),
    )),
    'struct frag4_nat': (32, (
        ('saddr', 0, 4),
        ('daddr', 4, 4),
        ('svc_id', 8, 4),
        ('backend_id', 12, 4),
        ('ifindex', 16, 4),
        ('action', 20, 1),
        ('reply', 21, 1),
        ('pad', 22, 2),
        ('created_ns', 24, 8),
    )),
    'struct frag6_key': (40, (
        ('saddr', 0, 16),
        ('daddr', 16, 16),
        ('id', 32, 4),
        ('proto', 36, 1),
        ('hook', 37, 1),
        ('pad', 38, 2),
    )),
    'struct frag6_nat': (56, (
        ('saddr', 0, 16),
        ('daddr', 16, 16),
        ('svc_id', 32, 4),
        ('backend_id', 36, 4),
        ('ifindex', 40, 4),
        ('action', 44, 1),
        ('reply', 45, 1),
        ('pad', 46, 2),
        ('created_ns', 48, 8),
    )),
    'struct lb4_affinity': (16, (
        ('last_used_ns', 0, 8),
        ('backend_id', 8, 4),
        ('pad', 12, 4),
    )),
    'struct lb4_affinity_key': (8, (
        ('svc_id', 0, 4),
        ('client', 4, 4),
    )),
    'struct lb4_backend': (12, (
        ('addr', 0, 4),
        ('port', 4, 2),
        ('proto', 6, 1),
        ('flags', 7, 1),
        ('svc_id', 8, 4),
    )),
    'struct lb4_node_if': (8, (
        ('addr', 0, 4),
        ('flags', 4, 4),
    )),
    'struct lb4_pod_addr_key': (8, (
        ('ifindex', 0, 4),
        ('addr', 4, 4),
    )),
    'struct lb4_slot_key': (8, (
        ('svc_id', 0, 4),
        ('slot', 4, 4),
    )),
    'struct lb4_sock_affinity_key': (16, (
        ('svc_id', 0, 4),
        ('pad', 4, 4),
        ('netns_cookie', 8, 8),
    )),
    'struct lb4_sock_key': (16, (
        ('cookie', 0, 8),
        ('addr', 8, 4),
        ('port', 12, 2),
        ('proto', 14, 1),
        ('pad', 15, 1),
    )),
    'struct lb4_sock_nat': (16, (
        ('vip', 0, 4),
        ('port', 4, 2),
        ('pad', 6, 2),
        ('svc_id', 8, 4),
        ('backend_id', 12, 4),
    )),
    'struct lb4_src_range_key': (12, (
        ('prefixlen', 0, 4),
        ('svc_id', 4, 4),
        ('addr', 8, 4),
    )),
    'struct lb4_svc': (16, (
        ('svc_id', 0, 4),
        ('count', 4, 4),
        ('flags', 8, 4),
        ('affinity_timeout', 12, 4),
    )),
    'struct lb4_svc_key': (8, (
        ('vip', 0, 4),
        ('port', 4, 2),
        ('proto', 6, 1),
        ('scope', 7, 1),
    )),
    'struct lb4_svc_meta': (128, (
        ('name', 0, 128),
    )),
    'struct lb6_addr': (16, (
        ('w', 0, 16),
    )),
    'struct lb6_affinity_key': (20, (
        ('svc_id', 0, 4),
        ('client', 4, 16),
    )),
    'struct lb6_backend': (24, (
        ('addr', 0, 16),
        ('port', 16, 2),
        ('proto', 18, 1),
        ('flags', 19, 1),
        ('svc_id', 20, 4),
    )),
    'struct lb6_node_if': (20, (
        ('addr', 0, 16),
        ('flags', 16, 4),
    )),
    'struct lb6_pod_addr_key': (20, (
        ('ifindex', 0, 4),
        ('addr', 4, 16),
    )),
    'struct lb6_sock_key': (32, (
        ('cookie', 0, 8),
        ('addr', 8, 16),
        ('port', 24, 2),
        ('proto', 26, 1),
        ('pad', 27, 1),
        ('pad2', 28, 4),
    )),
    'struct lb6_sock_nat': (28, (
        ('vip', 0, 16),
        ('port', 16, 2),
        ('pad', 18, 2),
        ('svc_id', 20, 4),
        ('backend_id', 24, 4),
    )),
    'struct lb6_src_range_key': (24, (
        ('prefixlen', 0, 4),
        ('svc_id', 4, 4),
        ('addr', 8, 16),
    )),
    'struct lb6_svc_key': (20, (
        ('vip', 0, 16),
        ('port', 16, 2),
        ('proto', 18, 1),
        ('scope', 19, 1),
    )),
    'struct lb_dp_cfg': (8, (
        ('flags', 0, 4),
        ('pad', 4, 4),
    )),
    'struct lb_flow_stats': (40, (
        ('packets_in', 0, 8),
        ('bytes_in', 8, 8),
        ('packets_out', 16, 8),
        ('bytes_out', 24, 8),
        ('conns', 32, 8),
    )),
    'struct lb_sock_cfg': (16, (
        ('host_netns_cookie', 0, 8),
        ('mode', 8, 4),
        ('pad', 12, 4),
    )),
}
