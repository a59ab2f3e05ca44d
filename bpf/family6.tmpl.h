/* family6.tmpl.h: what the templates (*.tmpl.h) are for IPv6 (see family4.tmpl.h). */
#define FAM 6
#define FAM_PKT pkt6
#define FAM_ADDR struct lb6_addr
#define FAM_ADDR_BITS 128
#define FAM_CT_KEY ct6_key
#define FAM_CT_ENTRY ct6_entry
#define FAM_BACKEND lb6_backend
#define FAM_NODE_IF lb6_node_if
#define FAM_NAT lb6_nat
#define FAM_AFFINITY_KEY lb6_affinity_key
#define FAM_SRC_RANGE_KEY lb6_src_range_key
#define FAM_POD_ADDR_KEY lb6_pod_addr_key
#define CT_(name) ct6_##name
#define LB_(name) lb6_##name
#define FAM_ADDR_EQ(a, b) addr6_eq(&(a), &(b))
#define FAM_ADDR_IS_LOOPBACK(a) addr6_is_loopback(&(a))
#define FAM_ADDR_SET_ZERO(a) __builtin_memset(&(a), 0, sizeof(a))
#define FAM_ADDR_SET_HAIRPIN(a) addr6_set_hairpin(&(a))
#define FAM_FLOW_HASH(p) flow_hash6(p)
#define FAM_ADDR_NONE ((struct lb6_addr){})
#define FAM_ADDR_COPY(dst, src) addr6_copy(&(dst), &(src))
#define FAM_FRAG_KEY frag6_key
#define FAM_FRAG_NAT frag6_nat
#define FRAG_(name) frag6_##name
#define FAM_FRAG_ID(p) ((p)->frag_id)
#define FAM_FRAG_PROTO(p) ((p)->frag_nh)	/* what a later fragment's Fragment header names */
#define FAM_ICMP_ERR icmp6_err
#define ICMP_(name) icmp6_##name
#define FAM_TTL_DEC(skb, l3_off) tc_hop_limit_dec(skb, l3_off)
#define FAM_ICMP_PROTO IPPROTO_ICMPV6
#define FAM_FRAG_TIMEOUT FRAG6_TIMEOUT
#define FAM_SVC_KEY lb6_svc_key
#define FAM_SOCK_KEY lb6_sock_key
#define FAM_SOCK_NAT lb6_sock_nat
#define FAM_SOCK_HASH(cookie, a, port, proto) sock_hash6(cookie, &(a), port, proto)
