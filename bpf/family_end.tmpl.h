/* family_end.tmpl.h: ends a round of templates (see family4.h); a .tmpl.h so that the loader
 * inlines it at every include. */
#undef FAM
#undef FAM_PKT
#undef FAM_ADDR
#undef FAM_ADDR_BITS
#undef FAM_CT_KEY
#undef FAM_CT_ENTRY
#undef FAM_BACKEND
#undef FAM_NODE_IF
#undef FAM_NAT
#undef FAM_AFFINITY_KEY
#undef FAM_SRC_RANGE_KEY
#undef FAM_POD_ADDR_KEY
#undef CT_
#undef LB_
#undef FAM_ADDR_EQ
#undef FAM_ADDR_IS_LOOPBACK
#undef FAM_ADDR_SET_ZERO
#undef FAM_ADDR_SET_HAIRPIN
#undef FAM_FLOW_HASH
#undef FAM_ADDR_NONE
#undef FAM_ADDR_COPY
#undef FAM_FRAG_KEY
#undef FAM_FRAG_NAT
#undef FRAG_
#undef FAM_FRAG_ID
