"""North-south data path: lb4_node_xdp (XDP) and lb4_node_in / lb4_node_out (TC) on a node device,
run with BPF_PROG_TEST_RUN on the real programs, provisioned through the real control-plane path
(manifest -> model with node addresses -> plan -> apply). The bench (namespace, devices, packet
builders) is tests/bpf/northsouth_env.py; the edges are in test_northsouth_edges.py, ICMP errors,
counters and SNAT ports in test_northsouth_icmp.py.

What it proves, for both ingress hooks wherever the behaviour applies:
- NodePort / LoadBalancer DNAT to a backend on this node keeps the client's address, records
  conntrack entries flagged external, and lb4_node_out turns the backend's reply back into
  frontend -> client;
- a backend on another node gets DNAT + SNAT to the node address and a port of the SNAT range
  (the one conntrack recorded, predicted from the flow hash), the TTL decremented, and the frame
  sent on (TC: redirect_neigh; XDP: XDP_TX with the neighbour's MAC); its reply is translated
  back to frontend -> client and sent on the same way;
- UDP with and without a checksum, loadBalancerSourceRanges (also from pods), a ClusterIP reached
  from outside, externalTrafficPolicy Local, frontends without backends (TC rejects, XDP leaves
  it to TC).
Outputs are compared byte for byte with packets built independently by scapy, and every checksum
is verified by recomputing it. Every run moves exactly one verdict counter (tests/bpf/conftest.py).
"""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from ebpflb.dataplane import testrun
from ebpflb.maps import SERVICES, SVC_F_DROP_EMPTY, SVC_F_ETP_LOCAL, SVC_F_SRC_RANGES, SvcKey

from .northsouth_env import (assert_checksums_valid, CLIENT, CLIENT_MAC, CLUSTER_IP,
                             CT_F_ESTABLISHED, CT_F_EXTERNAL, CT_F_SNAT, delta, DENIED_CLIENT,
                             DROP, FORWARD, FRONTENDS, GW_MAC, HOOKS, LB_IP, LOADBALANCER,
                             LOCAL_BE, NODE_IP, NODE_MAC, NODEPORT, PASS, POD_CLIENT, REMOTE_BE,
                             rewritten, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, tcp, udp,
                             UDP_NODEPORT, v, XDP_PASS)
# The bench's fixtures, used as test arguments.
from .northsouth_env import fresh_conntrack, node  # noqa: F401

pytestmark = pytest.mark.bpf


# ---------------------------------------------------------------- 1. local backend

@pytest.mark.parametrize("frontend", FRONTENDS, ids=list(FRONTENDS))
@pytest.mark.parametrize("hook", HOOKS)
def test_local_backend_dnat_keeps_client_and_reply_is_rewritten_at_egress(node, hook, frontend):
    fe_ip, fe_port = FRONTENDS[frontend]
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    syn = tcp(CLIENT, 40000, fe_ip, fe_port)
    before = node.stats()
    res = node.run(hook, syn)
    assert res.retval == PASS[hook]  # to the stack, which routes it to the pod
    assert res.data == rewritten(syn, dst=LOCAL_BE, dport=8080), Ether(res.data).show2(dump=True)
    assert_checksums_valid(res.data)
    assert delta(before, node.stats()) == {v(hook, "new"): 1, "conntrack_insert": 1}

    fwd = node.ct(CLIENT, 40000, fe_ip, fe_port, 6)
    rev = node.ct(LOCAL_BE, 8080, CLIENT, 40000, 6, reply=True)
    assert (fwd.nat_addr, fwd.nat_port, fwd.flags, fwd.half_open) == (LOCAL_BE, 8080, CT_F_EXTERNAL, True)
    assert (rev.nat_addr, rev.nat_port, rev.flags) == (fe_ip, fe_port, CT_F_EXTERNAL)
    assert node.ct_count() == 2

    # The pod's SYN-ACK leaves through the node device: its source becomes the frontend again.
    synack = tcp(LOCAL_BE, 8080, CLIENT, 40000, "SA", seq=5000, ack=1001, ttl=63,
                 mac=(NODE_MAC, CLIENT_MAC))
    before = node.stats()
    res = node.run("out", synack)
    assert res.retval == TC_ACT_OK
    assert res.data == rewritten(synack, src=fe_ip, sport=fe_port)
    assert_checksums_valid(res.data)
    assert delta(before, node.stats()) == {v("out", "reply"): 1}

    # The client's ACK finds the flow in conntrack: same backend, and the flow is established.
    ack = tcp(CLIENT, 40000, fe_ip, fe_port, "A", seq=1001, ack=5001)
    before = node.stats()
    res = node.run(hook, ack)
    assert res.retval == PASS[hook]
    assert res.data == rewritten(ack, dst=LOCAL_BE, dport=8080)
    assert delta(before, node.stats()) == {v(hook, "established"): 1}
    fwd = node.ct(CLIENT, 40000, fe_ip, fe_port, 6)
    assert fwd.flags == CT_F_EXTERNAL | CT_F_ESTABLISHED and not fwd.half_open


def test_node_out_leaves_other_replies_alone(node):
    """lb4_node_out rewrites only replies of external flows to local backends: a pod's own flow
    through a ClusterIP (translated at the pod's device) and unknown flows pass untouched."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    out = testrun.test_run(node.dp.progs.from_pod.fd, bytes(tcp(POD_CLIENT, 41000, CLUSTER_IP, 80)))
    assert Ether(out.data)[IP].dst == LOCAL_BE
    for reply in (tcp(LOCAL_BE, 8080, POD_CLIENT, 41000, "SA", mac=(NODE_MAC, CLIENT_MAC)),
                  tcp(LOCAL_BE, 8080, CLIENT, 40999, "SA", mac=(NODE_MAC, CLIENT_MAC))):
        res = node.run("out", reply)
        assert (res.retval, res.data) == (TC_ACT_OK, bytes(reply))


# ---------------------------------------------------------------- 2. remote backend (SNAT)

@pytest.mark.parametrize("frontend", FRONTENDS, ids=list(FRONTENDS))
@pytest.mark.parametrize("hook", HOOKS)
def test_remote_backend_is_snated_and_its_reply_translated_back(node, hook, frontend):
    fe_ip, fe_port = FRONTENDS[frontend]
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    syn = tcp(CLIENT, 40000, fe_ip, fe_port)
    port = node.snat_port(CLIENT, 40000, fe_ip, fe_port, 6)
    assert node.snat_min <= port <= node.snat_max
    before = node.stats()
    res = node.run(hook, syn)
    assert res.retval == FORWARD[hook]
    # TC leaves the MACs to redirect_neigh; XDP writes the next hop's (FIB SUCCESS).
    macs = (NODE_MAC, GW_MAC) if hook == "xdp" else None
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080,
                                 ttl_dec=1, macs=macs), Ether(res.data).show2(dump=True)
    assert_checksums_valid(res.data)
    sent = {"xdp": "xdp_forward", "tc": "node_forward"}[hook]
    assert delta(before, node.stats()) == {v(hook, "new"): 1, "conntrack_insert": 1, sent: 1}

    fwd = node.ct(CLIENT, 40000, fe_ip, fe_port, 6)
    assert (fwd.nat_addr, fwd.nat_port, fwd.nat2_addr, fwd.nat2_port, fwd.flags) == \
        (REMOTE_BE, 8080, NODE_IP, port, CT_F_EXTERNAL | CT_F_SNAT)
    rev = node.ct(REMOTE_BE, 8080, NODE_IP, port, 6, reply=True)
    assert (rev.nat_addr, rev.nat_port, rev.nat2_addr, rev.nat2_port, rev.flags) == \
        (fe_ip, fe_port, CLIENT, 40000, CT_F_EXTERNAL | CT_F_SNAT)
    assert node.ct_count() == 2

    # The backend's SYN-ACK comes back to the node's SNAT port from the next hop.
    synack = tcp(REMOTE_BE, 8080, NODE_IP, port, "SA", seq=5000, ack=1001, ttl=63,
                 mac=(GW_MAC, NODE_MAC))
    before = node.stats()
    res = node.run(hook, synack)
    assert res.retval == FORWARD[hook]
    macs = (NODE_MAC, CLIENT_MAC) if hook == "xdp" else None
    assert res.data == rewritten(synack, src=fe_ip, sport=fe_port, dst=CLIENT, dport=40000,
                                 ttl_dec=1, macs=macs), Ether(res.data).show2(dump=True)
    assert_checksums_valid(res.data)
    assert delta(before, node.stats()) == {v(hook, "reply"): 1, sent: 1}

    # The client's ACK keeps its SNAT port and moves the flow to the established table.
    ack = tcp(CLIENT, 40000, fe_ip, fe_port, "A", seq=1001, ack=5001)
    res = node.run(hook, ack)
    assert res.retval == FORWARD[hook]
    assert res.data == rewritten(ack, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080,
                                 ttl_dec=1, macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
    fwd = node.ct(CLIENT, 40000, fe_ip, fe_port, 6)
    assert fwd.flags == CT_F_EXTERNAL | CT_F_SNAT | CT_F_ESTABLISHED and not fwd.half_open
    assert not node.ct(REMOTE_BE, 8080, NODE_IP, port, 6, reply=True).half_open


def test_snat_port_probes_past_a_port_in_use(node):
    """Two clients whose flows hash to the same first SNAT port towards the same backend: the
    second takes the next port up."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    first = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    other = next(sport for sport in range(1024, 65536)
                 if sport != 40000 and node.snat_port(CLIENT, sport, *NODEPORT, 6) == first)
    for sport, want in ((40000, first), (other, first + 1 if first < node.snat_max else node.snat_min)):
        res = node.run("tc", tcp(CLIENT, sport, *NODEPORT))
        assert res.retval == TC_ACT_REDIRECT
        assert Ether(res.data)[TCP].sport == want
        assert node.ct(CLIENT, sport, *NODEPORT, 6).nat2_port == want


# ---------------------------------------------------------------- 3. UDP

@pytest.mark.parametrize("chksum", ["none", "set"])
@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("hook", HOOKS)
def test_udp_local_and_remote(node, hook, where, chksum):
    cs = 0 if chksum == "none" else None
    fe_ip, fe_port = UDP_NODEPORT
    backend = LOCAL_BE if where == "local" else REMOTE_BE
    node.program(endpoints=[(backend, "node-0" if where == "local" else "node-1")])
    dgram = udp(CLIENT, 40001, fe_ip, fe_port, chksum=cs)
    res = node.run(hook, dgram)
    if where == "local":
        assert res.retval == PASS[hook]
        assert res.data == rewritten(dgram, dst=LOCAL_BE, dport=5353)
        reply = udp(LOCAL_BE, 5353, CLIENT, 40001, chksum=cs, payload=b"answer", ttl=63,
                    mac=(NODE_MAC, CLIENT_MAC))
        out = node.run("out", reply)
        assert out.retval == TC_ACT_OK
        assert out.data == rewritten(reply, src=fe_ip, sport=fe_port)
        flags = CT_F_EXTERNAL
    else:
        port = node.snat_port(CLIENT, 40001, fe_ip, fe_port, 17)
        assert res.retval == FORWARD[hook]
        assert res.data == rewritten(dgram, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=5353,
                                     ttl_dec=1, macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
        assert node.ct(CLIENT, 40001, fe_ip, fe_port, 17).nat2_port == port
        reply = udp(REMOTE_BE, 5353, NODE_IP, port, chksum=cs, payload=b"answer", ttl=63,
                    mac=(GW_MAC, NODE_MAC))
        out = node.run(hook, reply)
        assert out.retval == FORWARD[hook]
        assert out.data == rewritten(reply, src=fe_ip, sport=fe_port, dst=CLIENT, dport=40001,
                                     ttl_dec=1, macs=(NODE_MAC, CLIENT_MAC) if hook == "xdp" else None)
        flags = CT_F_EXTERNAL | CT_F_SNAT
    for data in (res.data, out.data):
        assert_checksums_valid(data)
        if chksum == "none":
            assert Ether(data)[UDP].chksum == 0
        else:
            assert Ether(data)[UDP].chksum != 0
    fwd = node.ct(CLIENT, 40001, fe_ip, fe_port, 17)
    assert fwd.flags == flags and not fwd.half_open  # UDP lives in ct4 from the start


# ---------------------------------------------------------------- 4. source ranges

RANGES = ["192.168.200.0/30"]


@pytest.mark.parametrize("hook", HOOKS)
def test_source_ranges_restrict_the_load_balancer_frontend_only(node, hook):
    snap = node.program(endpoints=[(LOCAL_BE, "node-0")], ranges=RANGES)
    assert snap[SERVICES][SvcKey(LB_IP, 80, 6)].flags & SVC_F_SRC_RANGES
    assert not snap[SERVICES][SvcKey(*NODEPORT, 6)].flags & SVC_F_SRC_RANGES

    allowed = tcp(CLIENT, 40000, *LOADBALANCER)
    res = node.run(hook, allowed)
    assert res.retval == PASS[hook]
    assert res.data == rewritten(allowed, dst=LOCAL_BE, dport=8080)

    denied = tcp(DENIED_CLIENT, 40000, *LOADBALANCER)
    before = node.stats()
    res = node.run(hook, denied)
    assert res.retval == DROP[hook]
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "source_denied": 1}
    assert node.ct(DENIED_CLIENT, 40000, *LOADBALANCER, 6) is None
    assert node.ct_count() == 2  # the allowed flow's entries only

    # The node port of the same Service is open to everyone, as in kube-proxy.
    via_nodeport = tcp(DENIED_CLIENT, 40000, *NODEPORT)
    res = node.run(hook, via_nodeport)
    assert res.retval == PASS[hook]
    assert res.data == rewritten(via_nodeport, dst=LOCAL_BE, dport=8080)


@pytest.mark.parametrize("hook", HOOKS)
def test_ipv6_source_ranges_leave_ipv4_clients_alone(node, hook):
    """Each family is judged by its own ranges: IPv6 ranges do not shut IPv4 clients out of an
    IPv4 load balancer address (they did before issue 16's first step: source_denied)."""
    node.program(endpoints=[(LOCAL_BE, "node-0")], ranges=['"2001:db8::/32"'])
    pkt = tcp(DENIED_CLIENT, 40000, *LOADBALANCER)
    before = node.stats()
    res = node.run(hook, pkt)
    assert res.retval == PASS[hook]
    assert res.data == rewritten(pkt, dst=LOCAL_BE, dport=8080)
    assert "source_denied" not in delta(before, node.stats())


def test_source_ranges_apply_to_pods_too(node):
    node.program(endpoints=[(LOCAL_BE, "node-0")], ranges=RANGES)
    from_pod = node.dp.progs.from_pod
    pkt = tcp(POD_CLIENT, 40000, *LOADBALANCER)
    before = node.stats()
    res = testrun.test_run(from_pod.fd, bytes(pkt))
    assert res.retval == TC_ACT_SHOT
    assert delta(before, node.stats()) == {"from_pod/drop": 1, "source_denied": 1}
    assert node.ct_count() == 0
    # The pod may still use the node port and the cluster IP (from two source ports: one client
    # port to two frontends of one backend is one reply tuple, test_conntrack_reuse).
    for sport, (fe_ip, fe_port) in ((40001, NODEPORT), (40002, (CLUSTER_IP, 80))):
        pkt = tcp(POD_CLIENT, sport, fe_ip, fe_port)
        res = testrun.test_run(from_pod.fd, bytes(pkt))
        assert res.retval == TC_ACT_OK
        assert res.data == rewritten(pkt, dst=LOCAL_BE, dport=8080)


# ---------------------------------------------------------------- 5. ClusterIP from outside

@pytest.mark.parametrize("hook", HOOKS)
def test_cluster_ip_from_outside_is_dropped(node, hook):
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    pkt = tcp(CLIENT, 40000, CLUSTER_IP, 80)
    before = node.stats()
    res = node.run(hook, pkt)
    assert res.retval == DROP[hook]
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "external_clusterip": 1}
    assert node.ct_count() == 0
    # From a pod's device the same packet is load-balanced.
    res = testrun.test_run(node.dp.progs.from_pod.fd, bytes(pkt))
    assert res.retval == TC_ACT_OK
    assert res.data == rewritten(pkt, dst=LOCAL_BE, dport=8080)


# ---------------------------------------------------------------- 6. traffic policy, no backend

@pytest.mark.parametrize("frontend", FRONTENDS, ids=list(FRONTENDS))
@pytest.mark.parametrize("hook", HOOKS)
def test_local_policy_without_a_local_backend_drops(node, hook, frontend):
    snap = node.program(endpoints=[(REMOTE_BE, "node-1")], etp="Local")
    outside = SvcKey(*FRONTENDS[frontend], 6, 1)  # the record for traffic from outside
    assert snap[SERVICES][outside].flags & SVC_F_ETP_LOCAL and snap[SERVICES][outside].count == 0
    # Pods still reach node-1's pod, through the cluster IP and the external addresses alike.
    assert snap[SERVICES][SvcKey(CLUSTER_IP, 80, 6)].count == 1
    assert snap[SERVICES][SvcKey(*FRONTENDS[frontend], 6)].count == 1
    pkt = tcp(CLIENT, 40000, *FRONTENDS[frontend])
    before = node.stats()
    res = node.run(hook, pkt)
    assert res.retval == DROP[hook]  # dropped, not rejected: the LB's health check steers away
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "no_backend": 1}
    assert node.ct_count() == 0


@pytest.mark.parametrize("hook", HOOKS)
def test_local_policy_without_endpoints_anywhere_rejects(node, hook):
    """kube-proxy drops for a Local policy only when the Service has endpoints elsewhere; with
    none anywhere the port is closed, and the client is told (on 6d3bf73 it was dropped)."""
    snap = node.program(endpoints=[], etp="Local")
    outside = SvcKey(*NODEPORT, 6, 1)
    assert not snap[SERVICES][outside].flags & SVC_F_DROP_EMPTY
    syn = tcp(CLIENT, 40000, *NODEPORT, seq=1000)
    before = node.stats()
    res = node.run(hook, syn)
    if hook == "xdp":  # left to TC, which sends the reject
        assert (res.retval, res.data) == (XDP_PASS, bytes(syn))
        assert delta(before, node.stats()) == {v(hook, "to_tc"): 1}
        return
    assert res.retval == TC_ACT_REDIRECT
    rst = Ether(res.data)
    assert str(rst[TCP].flags) == "RA" and rst[TCP].ack == 1001
    assert delta(before, node.stats()) == {v(hook, "reject"): 1}  # answered: no drop reason


def test_internal_local_policy_drops_with_remote_endpoints_and_rejects_without(node):
    """internalTrafficPolicy Local, kube-proxy's rule from a pod: endpoints on other nodes only
    -> dropped; none anywhere -> rejected (on 6d3bf73 both were rejected)."""
    from_pod = node.dp.progs.from_pod
    snap = node.program(endpoints=[(REMOTE_BE, "node-1")], itp="Local")
    assert snap[SERVICES][SvcKey(CLUSTER_IP, 80, 6)].flags & SVC_F_DROP_EMPTY
    pkt = tcp(POD_CLIENT, 40000, CLUSTER_IP, 80)
    before = node.stats()
    res = testrun.test_run(from_pod.fd, bytes(pkt))
    assert res.retval == TC_ACT_SHOT
    assert delta(before, node.stats()) == {"from_pod/drop": 1, "no_backend": 1}
    # The load balancer address is not under the internal policy: pods reach node-1's pod.
    assert snap[SERVICES][SvcKey(LB_IP, 80, 6)].count == 1
    node.program(endpoints=[], itp="Local")
    res = testrun.test_run(from_pod.fd, bytes(pkt))
    assert res.retval != TC_ACT_SHOT  # the RST goes back out of the pod's device
    assert str(Ether(res.data)[TCP].flags) == "RA"


@pytest.mark.parametrize("hook", HOOKS)
def test_local_policy_never_sends_a_flow_to_another_node(node, hook):
    """A backend the control plane believes local (nodeName node-0) but that routes through the
    node device: Local policy must not SNAT it elsewhere; the packet is dropped."""
    node.program(endpoints=[(REMOTE_BE, "node-0")], etp="Local")
    pkt = tcp(CLIENT, 40000, *NODEPORT)
    before = node.stats()
    res = node.run(hook, pkt)
    assert res.retval == DROP[hook]
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "forward_fail": 1}
    assert node.ct_count() == 0


@pytest.mark.parametrize("hook", HOOKS)
def test_local_policy_with_a_local_backend_keeps_the_client(node, hook):
    node.program(endpoints=[(LOCAL_BE, "node-0"), (REMOTE_BE, "node-1")], etp="Local")
    for sport in range(40000, 40010):  # whatever the hash: node-1's pod is not a candidate
        pkt = tcp(CLIENT, sport, *LOADBALANCER)
        res = node.run(hook, pkt)
        assert res.retval == PASS[hook]
        assert res.data == rewritten(pkt, dst=LOCAL_BE, dport=8080)
        assert node.ct(CLIENT, sport, *LOADBALANCER, 6).flags == CT_F_EXTERNAL


def test_cluster_policy_without_backends_tc_rejects(node):
    node.program(endpoints=[])
    syn = tcp(CLIENT, 40000, *NODEPORT, seq=1000)
    before = node.stats()
    res = node.run("tc", syn)
    assert res.retval == TC_ACT_REDIRECT  # bounced back out of the node device
    rst = Ether(res.data)
    assert (rst.src, rst.dst) == (NODE_MAC, CLIENT_MAC)
    assert (rst[IP].src, rst[IP].dst, rst[TCP].sport, rst[TCP].dport) == (NODE_IP, CLIENT, 30080, 40000)
    assert str(rst[TCP].flags) == "RA" and rst[TCP].seq == 0 and rst[TCP].ack == 1001
    assert len(res.data) == 14 + 40
    assert_checksums_valid(res.data)
    assert delta(before, node.stats()) == {"node_in/reject": 1}
    assert node.ct_count() == 0

    dgram = udp(CLIENT, 40001, *UDP_NODEPORT)
    res = node.run("tc", dgram)
    assert res.retval == TC_ACT_REDIRECT
    err = Ether(res.data)
    assert (err[IP].src, err[IP].dst, err[ICMP].type, err[ICMP].code) == (NODE_IP, CLIENT, 3, 3)
    assert bytes(err[ICMP].payload) == bytes(dgram[IP])[:28]
    assert_checksums_valid(res.data)


@pytest.mark.parametrize("pkt", [tcp(CLIENT, 40000, *NODEPORT), udp(CLIENT, 40001, *UDP_NODEPORT)],
                         ids=["tcp", "udp"])
def test_cluster_policy_without_backends_xdp_leaves_it_to_tc(node, pkt):
    node.program(endpoints=[])
    before = node.stats()
    res = node.run("xdp", pkt)
    assert (res.retval, res.data) == (XDP_PASS, bytes(pkt))
    assert delta(before, node.stats()) == {"node_xdp/to_tc": 1}  # TC counts the reject itself
    assert node.ct_count() == 0


