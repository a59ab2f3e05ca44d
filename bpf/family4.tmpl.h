/* family4.tmpl.h: what the templates (*.tmpl.h) are for IPv4: their types, the prefix of their
 * function names (CT_(find) is ct4_find, LB_(frontend) is lb4_frontend), and the few address
 * operations that differ between families. bpf/lb_core.h includes it before a round of
 * templates, then family_end.tmpl.h. */
#define FAM 4
#define FAM_PKT pkt4
#define FAM_ADDR __be32
#define FAM_ADDR_BITS 32
#define FAM_CT_KEY ct4_key
#define FAM_CT_ENTRY ct4_entry
#define FAM_BACKEND lb4_backend
#define FAM_NODE_IF lb4_node_if
#define FAM_NAT lb4_nat
#define FAM_AFFINITY_KEY lb4_affinity_key
#define FAM_SRC_RANGE_KEY lb4_src_range_key
#define FAM_POD_ADDR_KEY lb4_pod_addr_key
#define CT_(name) ct4_##name
#define LB_(name) lb4_##name
#define FAM_ADDR_EQ(a, b) ((a) == (b))
#define FAM_ADDR_IS_LOOPBACK(a) ((bpf_ntohl(a) >> 24) == 127)
#define FAM_ADDR_SET_ZERO(a) ((a) = 0)
#define FAM_ADDR_SET_HAIRPIN(a) ((a) = bpf_htonl(LB4_HAIRPIN_ADDR_HOST))
#define FAM_FLOW_HASH(p) flow_hash4(p)
#define FAM_ADDR_NONE 0
#define FAM_ADDR_COPY(dst, src) ((dst) = (src))
#define FAM_FRAG_KEY frag4_key
#define FAM_FRAG_NAT frag4_nat
#define FRAG_(name) frag4_##name
#define FAM_FRAG_ID(p) ((p)->ip_id)
#define FAM_FRAG_PROTO(p) ((p)->proto)
#define FAM_ICMP_ERR icmp4_err
#define ICMP_(name) icmp4_##name
#define FAM_TTL_DEC(skb, l3_off) tc_ttl_dec(skb, l3_off)
#define FAM_ICMP_PROTO IPPROTO_ICMP
#define FAM_FRAG_TIMEOUT FRAG4_TIMEOUT
#define FAM_SVC_KEY lb4_svc_key
#define FAM_SOCK_KEY lb4_sock_key
#define FAM_SOCK_NAT lb4_sock_nat
#define FAM_SOCK_HASH(cookie, a, port, proto) sock_hash4(cookie, a, port, proto)
