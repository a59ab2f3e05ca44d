"""IPv6 from outside the cluster: lb6_node_in and lb6_node_out (tail-called from lb4_node_in and
lb4_node_out) on a node device, run with BPF_PROG_TEST_RUN inside a namespace the module creates
(bpf_fib_lookup and skb->ifindex resolve there: a node device with fd00:200::10/64, a client and
a next hop to node-1's pods behind permanent neighbours, node-1's pods routed through that next
hop, a pod device with a local backend), the node device's IPv6 SNAT address in lb6_node_ifs
written through the agent's device-map path. The namespace and every entry written are removed
at the end.

A NodePort to a backend on this node is DNATed and handed to the stack (the client's address
kept), its replies translated back at node_out; to a backend on another node it is DNATed and
SNATed to the node's address and a port of the SNAT range and sent straight out (hop limit down
by one), its replies translated back and sent to the client; a ClusterIP reached from outside is
dropped. explain predicts each of these.
"""
import socket
import subprocess

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.apply import read_snapshot
from ebpflb.dataplane import testrun
from ebpflb.dataplane.bcc_maps import lookup_conntrack
from ebpflb.dataplane.device_maps import write_device_map
from ebpflb.explain import NODE, Device, Flow, explain
from ebpflb.flowhash import packet_hash
from ebpflb.lab.nsops import create_netns, in_netns, remove_netns, write_sysctls
from ebpflb.manifests import parse_documents
from ebpflb.maps import NODE_IFS6, NodeIfValue
from ebpflb.model import DesiredState, desired_state
from ebpflb.reconcile import reconcile

from ..conftest import unique

pytestmark = pytest.mark.bpf

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
NODE_DEV, POD_DEV = "node0", "pod0"
NODE_IP, NODE_MAC = "fd00:200::10", "02:aa:00:00:00:10"
CLIENT, CLIENT_MAC = "fd00:200::2", "02:aa:00:00:00:02"
GW, GW_MAC = "fd00:200::11", "02:aa:00:00:00:11"
LOCAL_BE, REMOTE_BE = "fd00:10:244::11", "fd00:10:244:1::11"
CLUSTER_IP = "fd00:96::10"

NETNS_SETUP = f"""\
link add {NODE_DEV} type veth peer name {NODE_DEV}p
link set {NODE_DEV} address {NODE_MAC} up
link set {NODE_DEV}p up
addr add {NODE_IP}/64 dev {NODE_DEV} nodad
neigh add {CLIENT} lladdr {CLIENT_MAC} dev {NODE_DEV} nud permanent
neigh add {GW} lladdr {GW_MAC} dev {NODE_DEV} nud permanent
route add fd00:10:244:1::/64 via {GW} dev {NODE_DEV}
link add {POD_DEV} type veth peer name {POD_DEV}p
link set {POD_DEV} up
link set {POD_DEV}p up
route add {LOCAL_BE}/128 dev {POD_DEV}
"""


def manifest(endpoint: str, etp: str = "Cluster") -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web6, namespace: ns6}}
spec:
  type: NodePort
  clusterIP: "{CLUSTER_IP}"
  clusterIPs: ["{CLUSTER_IP}"]
  ipFamilies: [IPv6]
  externalTrafficPolicy: {etp}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web6-a, namespace: ns6, labels: {{kubernetes.io/service-name: web6}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: ["{endpoint}"], nodeName: {"node-0" if endpoint == LOCAL_BE else "node-1"}, conditions: {{ready: true}}}}
"""


class Node:
    def __init__(self, dp, ns, ifindexes):
        self.dp, self.ns, self.ifindexes = dp, ns, ifindexes

    def program(self, endpoint: str, etp: str = "Cluster"):
        m = parse_documents(manifest(endpoint, etp), "<test>")
        state = desired_state(m.services, m.slices, node_name="node-0", node_addresses=[NODE_IP])
        return reconcile(state, self.dp.writer, self.dp.config.map_limits).snapshot

    def run(self, hook: str, pkt, dev: str = NODE_DEV):
        progs = self.dp.progs
        with in_netns(self.ns):
            if hook == "xdp":
                raw = bytes(pkt)
                return testrun.test_run_ctx(progs.node_xdp.fd, raw,
                                            testrun.xdp_ctx(self.ifindexes[dev], len(raw)))
            prog = {"in": progs.node_in, "out": progs.node_out}[hook]
            return testrun.test_run_ctx(prog.fd, bytes(pkt),
                                        testrun.skb_ctx(ifindex=self.ifindexes[dev]))


@pytest.fixture(scope="module")
def node(dataplane):
    ns = unique("ebpflb-ns-ns6-")
    create_netns(ns)
    written = []
    try:
        write_sysctls(ns, {"net.ipv6.conf.all.forwarding": "1",  # fib lookups need it
                           "net.ipv6.conf.all.accept_dad": "0"})
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=NETNS_SETUP, text=True, check=True,
                       capture_output=True)
        with in_netns(ns):
            ifindexes = {dev: socket.if_nametoindex(dev) for dev in (NODE_DEV, POD_DEV)}
        written = [ifindexes[NODE_DEV]]
        write_device_map(dataplane.writer, NODE_IFS6, {ifindexes[NODE_DEV]: NodeIfValue(NODE_IP)},
                         only=lambda key: key in written)
        yield Node(dataplane, ns, ifindexes)
    finally:
        write_device_map(dataplane.writer, NODE_IFS6, {}, only=lambda key: key in written)
        dataplane.clear_conntrack()
        reconcile(DesiredState(frontends={}, skipped=()), dataplane.writer,
                  dataplane.config.map_limits)
        remove_netns(ns)


@pytest.fixture(autouse=True)
def fresh(dataplane):
    dataplane.clear_conntrack()


def tcp6(src, sport, dst, dport, flags="S", mac=(CLIENT_MAC, NODE_MAC), hlim=64):
    return (Ether(src=mac[0], dst=mac[1]) / IPv6(src=src, dst=dst, hlim=hlim)
            / TCP(sport=sport, dport=dport, flags=flags, seq=1000) / Raw(b"hi"))


def rebuilt(raw: bytes) -> bytes:
    p = Ether(raw)
    for layer in (TCP, UDP):
        if layer in p:
            del p[layer].chksum
    return bytes(p)


def moved(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_nodeport_to_a_remote_backend_is_snated_and_sent_out(node):
    node.program(REMOTE_BE)
    snap = read_snapshot(node.dp.writer)
    lo, hi = node.dp.config.snat_ports
    port = lo + packet_hash(CLIENT, 40000, NODE_IP, 30080, 6) % (hi - lo + 1)
    e = explain(snap, Flow(CLIENT, 40000, NODE_IP, 30080, "TCP", "S"),
                device=Device(NODE, node.ifindexes[NODE_DEV], None, {REMOTE_BE: NODE_IP}))
    assert (e.verdict, e.backend, e.source) == ("forward", f"[{REMOTE_BE}]:8080", f"[{NODE_IP}]:{port}")
    before = node.dp.stats()
    res = node.run("in", tcp6(CLIENT, 40000, NODE_IP, 30080))
    assert res.retval == TC_ACT_REDIRECT
    out = Ether(res.data)
    assert (out[IPv6].src, out[TCP].sport, out[IPv6].dst, out[TCP].dport) == (
        NODE_IP, port, REMOTE_BE, 8080)
    assert out[IPv6].hlim == 63 and rebuilt(res.data) == res.data
    assert moved(before, node.dp.stats()) == {e.counted_as: 1, **{c: 1 for c in e.counters}}
    # The backend's answer to the SNAT port goes back to the client, from the node port.
    reply = tcp6(REMOTE_BE, 8080, NODE_IP, port, flags="SA", mac=(GW_MAC, NODE_MAC))
    before = node.dp.stats()
    res = node.run("in", reply)
    assert res.retval == TC_ACT_REDIRECT
    out = Ether(res.data)
    assert (out[IPv6].src, out[TCP].sport, out[IPv6].dst, out[TCP].dport) == (
        NODE_IP, 30080, CLIENT, 40000)
    assert out[IPv6].hlim == 63 and rebuilt(res.data) == res.data
    assert moved(before, node.dp.stats()) == {"node_in/reply": 1, "node_forward": 1}
    fwd = lookup_conntrack(node.dp.progs.bpf, CLIENT, 40000, NODE_IP, 30080, 6)
    assert (fwd.nat_addr, fwd.nat2_addr, fwd.nat2_port) == (REMOTE_BE, NODE_IP, port)


def test_nodeport_to_a_local_backend_keeps_the_client_and_replies_at_node_out(node):
    node.program(LOCAL_BE)
    snap = read_snapshot(node.dp.writer)
    e = explain(snap, Flow(CLIENT, 40001, NODE_IP, 30080, "TCP", "S"),
                device=Device(NODE, node.ifindexes[NODE_DEV], None, {}))
    assert (e.verdict, e.backend) == ("dnat", f"[{LOCAL_BE}]:8080")
    before = node.dp.stats()
    res = node.run("in", tcp6(CLIENT, 40001, NODE_IP, 30080))
    assert res.retval == TC_ACT_OK
    expected = tcp6(CLIENT, 40001, LOCAL_BE, 8080)
    assert res.data == rebuilt(bytes(expected))
    assert moved(before, node.dp.stats()) == {e.counted_as: 1, **{c: 1 for c in e.counters}}
    before = node.dp.stats()
    res = node.run("out", tcp6(LOCAL_BE, 8080, CLIENT, 40001, flags="SA", mac=(NODE_MAC, CLIENT_MAC)))
    assert res.retval == TC_ACT_OK
    out = Ether(res.data)
    assert (out[IPv6].src, out[TCP].sport) == (NODE_IP, 30080) and rebuilt(res.data) == res.data
    assert moved(before, node.dp.stats()) == {"node_out/reply": 1}


def test_outside_ipv6_traffic_the_node_must_not_serve(node):
    """A ClusterIP from outside is dropped; externalTrafficPolicy Local with the only backend on
    another node drops too (kube-proxy's rule); XDP leaves IPv6 to TC (counted as a pass)."""
    node.program(REMOTE_BE)
    before = node.dp.stats()
    res = node.run("in", tcp6(CLIENT, 40002, CLUSTER_IP, 80))
    assert res.retval == TC_ACT_SHOT
    assert moved(before, node.dp.stats()) == {"node_in/drop": 1, "external_clusterip": 1}
    node.program(REMOTE_BE, etp="Local")
    before = node.dp.stats()
    res = node.run("in", tcp6(CLIENT, 40003, NODE_IP, 30080))
    assert res.retval == TC_ACT_SHOT
    assert moved(before, node.dp.stats()) == {"node_in/drop": 1, "no_backend": 1}
    before = node.dp.stats()
    pkt = tcp6(CLIENT, 40004, NODE_IP, 30080)
    res = node.run("xdp", pkt)
    assert (res.retval, res.data) == (2, bytes(pkt))  # XDP_PASS, untouched
    assert moved(before, node.dp.stats()) == {"node_xdp/pass": 1}


def test_packet_too_big_about_a_snat_flow_reaches_the_remote_backend(node):
    """A router on the client's path answers the node's reply (node address:30080 -> client) with
    ICMPv6 packet too big. lb6_node_in turns it into what the remote backend sent (backend ->
    the node's SNAT port), addressed from the node to the backend, and sends it on (hop limit
    down by one), so the backend's path MTU discovery works. The other way, the backend's error
    about a SNATed packet goes back to the client about its own packet."""
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPerror6, TCPerror

    node.program(REMOTE_BE)
    out = Ether(node.run("in", tcp6(CLIENT, 40100, NODE_IP, 30080)).data)
    port = out[TCP].sport
    ptb = bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src="fd00:200::99", dst=NODE_IP)
                / ICMPv6PacketTooBig(mtu=1400) / IPv6(src=NODE_IP, dst=CLIENT, hlim=63)
                / TCP(sport=30080, dport=40100, flags="SA"))
    before = node.dp.stats()
    res = node.run("in", ptb)
    assert res.retval == TC_ACT_REDIRECT
    got = Ether(res.data)
    assert (got[IPv6].src, got[IPv6].dst, got[IPv6].hlim) == (NODE_IP, REMOTE_BE, 63)
    assert (got[IPerror6].src, got[TCPerror].sport, got[IPerror6].dst, got[TCPerror].dport) == (
        REMOTE_BE, 8080, NODE_IP, port)
    fresh = got.copy()
    del fresh[ICMPv6PacketTooBig].cksum
    assert bytes(Ether(bytes(fresh))) == res.data  # the ICMPv6 checksum is right
    assert moved(before, node.dp.stats()) == {"node_in/icmp_error": 1}
    # The remote backend's own "port unreachable" about the SNATed packet: to the client.
    unreach = bytes(Ether(src=GW_MAC, dst=NODE_MAC) / IPv6(src=REMOTE_BE, dst=NODE_IP)
                    / ICMPv6DestUnreach(code=4) / IPv6(src=NODE_IP, dst=REMOTE_BE, hlim=63)
                    / TCP(sport=port, dport=8080, flags="S"))
    res = node.run("in", unreach)
    assert res.retval == TC_ACT_REDIRECT
    got = Ether(res.data)
    assert (got[IPv6].src, got[IPv6].dst) == (NODE_IP, CLIENT)
    assert (got[IPerror6].src, got[TCPerror].sport, got[IPerror6].dst, got[TCPerror].dport) == (
        CLIENT, 40100, NODE_IP, 30080)
    fresh = got.copy()
    del fresh[ICMPv6DestUnreach].cksum
    assert bytes(Ether(bytes(fresh))) == res.data


def test_a_local_backends_icmpv6_error_to_an_outside_client_comes_from_the_node_port(node):
    """lb6_node_out: the local backend's "port unreachable" about the client's packet (quoting
    client -> backend:8080) leaves the node as the node port's (quoting client -> node:30080,
    from the node's address), so the client's socket hears of it."""
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6, TCPerror

    node.program(LOCAL_BE)
    assert node.run("in", tcp6(CLIENT, 40200, NODE_IP, 30080)).retval == TC_ACT_OK
    err = bytes(Ether(src=NODE_MAC, dst=CLIENT_MAC) / IPv6(src=LOCAL_BE, dst=CLIENT)
                / ICMPv6DestUnreach(code=4) / IPv6(src=CLIENT, dst=LOCAL_BE, hlim=63)
                / TCP(sport=40200, dport=8080, flags="S"))
    before = node.dp.stats()
    res = node.run("out", err)
    assert res.retval == TC_ACT_OK
    got = Ether(res.data)
    assert (got[IPv6].src, got[IPv6].dst) == (NODE_IP, CLIENT)
    assert (got[IPerror6].src, got[TCPerror].sport, got[IPerror6].dst, got[TCPerror].dport) == (
        CLIENT, 40200, NODE_IP, 30080)
    fresh = got.copy()
    del fresh[ICMPv6DestUnreach].cksum
    assert bytes(Ether(bytes(fresh))) == res.data
    assert moved(before, node.dp.stats()) == {"node_out/icmp_error": 1}
