"""IPv6 from outside the cluster: lb6_node_xdp, lb6_xdp_generic, lb6_node_in and lb6_node_out
(tail-called from lb4_node_xdp, lb4_xdp_generic, lb4_node_in and lb4_node_out) on a node device, run with BPF_PROG_TEST_RUN inside a namespace the module creates
(bpf_fib_lookup and skb->ifindex resolve there: a node device with fd00:200::10/64, a client and
a next hop to node-1's pods behind permanent neighbours, node-1's pods routed through that next
hop, a pod device with a local backend), the node device's IPv6 SNAT address in lb6_node_ifs
written through the agent's device-map path. The namespace and every entry written are removed
at the end.

A NodePort to a backend on this node is DNATed and handed to the stack (the client's address
kept), its replies translated back at node_out; to a backend on another node it is DNATed and
SNATed to the node's address and a port of the SNAT range and sent straight out (hop limit down
by one), its replies translated back and sent to the client; a ClusterIP reached from outside is
dropped. XDP does the same for what it can finish alone (generic XDP leaves local backends to
TC). explain predicts each of these (at TC; XDP counts the same verdict at node_xdp).
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
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
# What each node.run hook returns for a packet handed to the stack, dropped, or sent back out
# of the device it came in on; the verdict counter it moves; the event of a forward.
PASS = {"in": TC_ACT_OK, "xdp": XDP_PASS, "xdp-generic": XDP_PASS}
DROP = {"in": TC_ACT_SHOT, "xdp": XDP_DROP, "xdp-generic": XDP_DROP}
FORWARD = {"in": TC_ACT_REDIRECT, "xdp": XDP_TX, "xdp-generic": XDP_TX}
AT = {"in": "node_in", "xdp": "node_xdp", "xdp-generic": "node_xdp"}
SENT = {"in": "node_forward", "xdp": "xdp_forward", "xdp-generic": "xdp_forward"}
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


def manifest(endpoint: str, etp: str = "Cluster", ready: bool = True) -> str:
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
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}},
          {{name: dns, port: 53, protocol: UDP, targetPort: 9053, nodePort: 30053}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web6-a, namespace: ns6, labels: {{kubernetes.io/service-name: web6}}}}
addressType: IPv6
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 9053, protocol: UDP}}]
endpoints:
- {{addresses: ["{endpoint}"], nodeName: {"node-0" if endpoint == LOCAL_BE else "node-1"}, conditions: {{ready: {"true" if ready else "false"}}}}}
"""


class Node:
    def __init__(self, dp, ns, ifindexes):
        self.dp, self.ns, self.ifindexes = dp, ns, ifindexes

    def program(self, endpoint: str, etp: str = "Cluster", ready: bool = True):
        m = parse_documents(manifest(endpoint, etp, ready), "<test>")
        state = desired_state(m.services, m.slices, node_name="node-0", node_addresses=[NODE_IP])
        return reconcile(state, self.dp.writer, self.dp.config.map_limits).snapshot

    def run(self, hook: str, pkt, dev: str = NODE_DEV):
        progs = self.dp.progs
        with in_netns(self.ns):
            if hook in ("xdp", "xdp-generic"):
                raw = bytes(pkt)
                fd = (progs.node_xdp if hook == "xdp" else progs.node_xdp_generic).fd
                return testrun.test_run_ctx(fd, raw, testrun.xdp_ctx(self.ifindexes[dev], len(raw)))
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


@pytest.mark.parametrize("hook", ["in", "xdp", "xdp-generic"])
def test_nodeport_to_a_remote_backend_is_snated_and_sent_out(node, hook):
    node.program(REMOTE_BE)
    snap = read_snapshot(node.dp.writer)
    lo, hi = node.dp.config.snat_ports
    port = lo + packet_hash(CLIENT, 40000, NODE_IP, 30080, 6) % (hi - lo + 1)
    e = explain(snap, Flow(CLIENT, 40000, NODE_IP, 30080, "TCP", "S"),
                device=Device(NODE, node.ifindexes[NODE_DEV], None, {REMOTE_BE: NODE_IP}))
    assert (e.verdict, e.backend, e.source) == ("forward", f"[{REMOTE_BE}]:8080", f"[{NODE_IP}]:{port}")
    before = node.dp.stats()
    res = node.run(hook, tcp6(CLIENT, 40000, NODE_IP, 30080))
    assert res.retval == FORWARD[hook]
    out = Ether(res.data)
    assert (out[IPv6].src, out[TCP].sport, out[IPv6].dst, out[TCP].dport) == (
        NODE_IP, port, REMOTE_BE, 8080)
    assert out[IPv6].hlim == 63 and rebuilt(res.data) == res.data
    if hook != "in":  # XDP sends the frame itself: the next hop's Ethernet addresses
        assert (out.src, out.dst) == (NODE_MAC, GW_MAC)
    counters = [SENT[hook] if c == "node_forward" else c for c in e.counters]
    assert moved(before, node.dp.stats()) == {
        e.counted_as.replace("node_in/", AT[hook] + "/"): 1, **{c: 1 for c in counters}}
    # The backend's answer to the SNAT port goes back to the client, from the node port.
    reply = tcp6(REMOTE_BE, 8080, NODE_IP, port, flags="SA", mac=(GW_MAC, NODE_MAC))
    before = node.dp.stats()
    res = node.run(hook, reply)
    assert res.retval == FORWARD[hook]
    out = Ether(res.data)
    assert (out[IPv6].src, out[TCP].sport, out[IPv6].dst, out[TCP].dport) == (
        NODE_IP, 30080, CLIENT, 40000)
    assert out[IPv6].hlim == 63 and rebuilt(res.data) == res.data
    if hook != "in":
        assert (out.src, out.dst) == (NODE_MAC, CLIENT_MAC)
    assert moved(before, node.dp.stats()) == {f"{AT[hook]}/reply": 1, SENT[hook]: 1}
    fwd = lookup_conntrack(node.dp.progs.bpf, CLIENT, 40000, NODE_IP, 30080, 6)
    assert (fwd.nat_addr, fwd.nat2_addr, fwd.nat2_port) == (REMOTE_BE, NODE_IP, port)


def test_xdp_leaves_a_remote_flow_without_a_resolved_neighbour_to_tc(node):
    """No neighbour entry for the next hop: XDP cannot build the frame, so it leaves the packet
    untouched (to_tc) and creates nothing; lb6_node_in behind it forwards it."""
    node.program(REMOTE_BE)
    subprocess.run(["ip", "-n", node.ns, "-6", "neigh", "del", GW, "dev", NODE_DEV], check=True)
    try:
        pkt = tcp6(CLIENT, 40010, NODE_IP, 30080)
        before = node.dp.stats()
        res = node.run("xdp", pkt)
        assert (res.retval, res.data) == (XDP_PASS, bytes(pkt))
        assert moved(before, node.dp.stats()) == {"node_xdp/to_tc": 1}
        assert lookup_conntrack(node.dp.progs.bpf, CLIENT, 40010, NODE_IP, 30080, 6) is None
    finally:
        subprocess.run(["ip", "-n", node.ns, "-6", "neigh", "replace", GW, "lladdr", GW_MAC,
                        "dev", NODE_DEV, "nud", "permanent"], check=True)


@pytest.mark.parametrize("hook", ["in", "xdp"])
def test_nodeport_to_a_local_backend_keeps_the_client_and_replies_at_node_out(node, hook):
    node.program(LOCAL_BE)
    snap = read_snapshot(node.dp.writer)
    e = explain(snap, Flow(CLIENT, 40001, NODE_IP, 30080, "TCP", "S"),
                device=Device(NODE, node.ifindexes[NODE_DEV], None, {}))
    assert (e.verdict, e.backend) == ("dnat", f"[{LOCAL_BE}]:8080")
    before = node.dp.stats()
    res = node.run(hook, tcp6(CLIENT, 40001, NODE_IP, 30080))
    assert res.retval == PASS[hook]
    expected = tcp6(CLIENT, 40001, LOCAL_BE, 8080)
    assert res.data == rebuilt(bytes(expected))
    assert moved(before, node.dp.stats()) == {
        e.counted_as.replace("node_in/", AT[hook] + "/"): 1, **{c: 1 for c in e.counters}}
    before = node.dp.stats()
    res = node.run("out", tcp6(LOCAL_BE, 8080, CLIENT, 40001, flags="SA", mac=(NODE_MAC, CLIENT_MAC)))
    assert res.retval == TC_ACT_OK
    out = Ether(res.data)
    assert (out[IPv6].src, out[TCP].sport) == (NODE_IP, 30080) and rebuilt(res.data) == res.data
    assert moved(before, node.dp.stats()) == {"node_out/reply": 1}


def test_generic_xdp_leaves_a_local_backend_to_tc(node):
    """Generic XDP runs before the stack would allocate anything anyway: a flow to a backend on
    this node is left to lb6_node_in, untouched and not tracked."""
    node.program(LOCAL_BE)
    pkt = tcp6(CLIENT, 40011, NODE_IP, 30080)
    before = node.dp.stats()
    res = node.run("xdp-generic", pkt)
    assert (res.retval, res.data) == (XDP_PASS, bytes(pkt))
    assert moved(before, node.dp.stats()) == {"node_xdp/to_tc": 1}
    assert node.run("in", pkt).retval == TC_ACT_OK


def test_xdp_leaves_what_it_cannot_answer_to_tc(node):
    """A frontend without backends is answered with a RST by TC (XDP sends no reject); an
    ICMPv6 error and a later fragment are TC's to translate."""
    from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6ExtHdrFragment

    node.program(REMOTE_BE)
    for pkt, verdict in (
            (Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src=CLIENT, dst=NODE_IP)
             / ICMPv6PacketTooBig(mtu=1400) / IPv6(src=NODE_IP, dst=CLIENT)
             / TCP(sport=30080, dport=40300), "pass"),
            (Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src=CLIENT, dst=NODE_IP)
             / IPv6ExtHdrFragment(id=7, offset=10, nh=17) / Raw(b"x" * 16), "pass"),
            (Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src=CLIENT, dst=NODE_IP)
             / IPv6ExtHdrFragment(id=8, offset=0, m=1) / TCP(sport=40302, dport=30080, flags="S")
             / Raw(b"y" * 16), "pass")):
        raw = bytes(pkt)
        before = node.dp.stats()
        res = node.run("xdp", raw)
        assert (res.retval, res.data) == (XDP_PASS, raw)
        assert moved(before, node.dp.stats()) == {f"node_xdp/{verdict}": 1}
    node.program(REMOTE_BE, ready=False)
    pkt = tcp6(CLIENT, 40301, NODE_IP, 30080)
    before = node.dp.stats()
    res = node.run("xdp", pkt)
    assert (res.retval, res.data) == (XDP_PASS, bytes(pkt))
    assert moved(before, node.dp.stats()) == {"node_xdp/to_tc": 1}
    res = node.run("in", pkt)
    assert res.retval == TC_ACT_REDIRECT and Ether(res.data)[TCP].flags == "RA"
    # The first fragment XDP left alone is translated by TC behind it.
    node.program(REMOTE_BE)
    first = (Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src=CLIENT, dst=NODE_IP)
             / IPv6ExtHdrFragment(id=9, offset=0, m=1) / TCP(sport=40303, dport=30080, flags="S"))
    assert node.run("xdp", first).retval == XDP_PASS
    res = node.run("in", first)
    assert res.retval == TC_ACT_REDIRECT and Ether(res.data)[IPv6].dst == REMOTE_BE


@pytest.mark.parametrize("hook", ["xdp", "xdp-generic"])
def test_xdp_leaves_a_packet_too_big_for_the_route_to_the_backend_to_tc(node, hook):
    """The node device's MTU is 1280 now; a 1400-byte segment to a NodePort whose backend is on
    another node must not be sent out by XDP (the kernel checks no MTU for it there: it would be
    lost on the way). XDP leaves it to TC, creating nothing, and TC answers the client with
    packet too big (MTU 1280) from the node port, quoting its own packet."""
    from scapy.layers.inet6 import ICMPv6PacketTooBig, IPerror6

    node.program(REMOTE_BE)
    subprocess.run(["ip", "-n", node.ns, "link", "set", NODE_DEV, "mtu", "1280"], check=True)
    try:
        big = (Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src=CLIENT, dst=NODE_IP)
               / TCP(sport=40320, dport=30080, flags="S") / Raw(b"x" * 1340))
        raw = bytes(big)
        before = node.dp.stats()
        res = node.run(hook, raw)
        assert (res.retval, res.data) == (XDP_PASS, raw)
        assert moved(before, node.dp.stats()) == {"node_xdp/to_tc": 1}
        assert lookup_conntrack(node.dp.progs.bpf, CLIENT, 40320, NODE_IP, 30080, 6) is None
        res = node.run("in", raw)
        assert res.retval == TC_ACT_REDIRECT
        out = Ether(res.data)
        assert ICMPv6PacketTooBig in out and out[ICMPv6PacketTooBig].mtu == 1280
        assert (out[IPv6].src, out[IPv6].dst) == (NODE_IP, CLIENT)
        assert (out[IPerror6].src, out[IPerror6].dst) == (CLIENT, NODE_IP)
        # A segment that fits still goes out at XDP.
        res = node.run(hook, tcp6(CLIENT, 40321, NODE_IP, 30080))
        assert res.retval == XDP_TX and Ether(res.data)[IPv6].dst == REMOTE_BE
    finally:
        subprocess.run(["ip", "-n", node.ns, "link", "set", NODE_DEV, "mtu", "1500"], check=True)


def test_xdp_leaves_a_tcp_header_behind_2_kib_of_extension_headers_to_tc(node, request):
    """XDP rewrites the L4 header at a bounded offset (2 KiB): a packet whose destination
    options push it further is left to TC untouched, and TC translates it correctly (the
    devices' MTU raised so that the packet fits the way to the backend)."""
    from scapy.layers.inet6 import HBHOptUnknown, IPv6ExtHdrDestOpt

    node.program(REMOTE_BE)
    for dev in (NODE_DEV, NODE_DEV + "p"):
        subprocess.run(["ip", "-n", node.ns, "link", "set", dev, "mtu", "4000"], check=True)
    request.addfinalizer(lambda: [subprocess.run(["ip", "-n", node.ns, "link", "set", dev, "mtu",
                                                  "1500"], check=True)
                                  for dev in (NODE_DEV, NODE_DEV + "p")])
    opts = IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1e, optdata=b"o" * 250)] * 4)
    pkt = (Ether(src=CLIENT_MAC, dst=NODE_MAC) / IPv6(src=CLIENT, dst=NODE_IP)
           / opts / opts / TCP(sport=40330, dport=30080, flags="S"))
    raw = bytes(pkt)
    l4_off = len(raw) - 20
    assert l4_off > 2047
    before = node.dp.stats()
    res = node.run("xdp", raw)
    assert (res.retval, res.data) == (XDP_PASS, raw)
    assert moved(before, node.dp.stats()) == {"node_xdp/to_tc": 1}
    res = node.run("in", raw)
    assert res.retval == TC_ACT_REDIRECT
    out = Ether(res.data)
    assert (out[IPv6].dst, out[TCP].dport) == (REMOTE_BE, 8080)
    assert res.data[14:21] == raw[14:21] and res.data[54:l4_off] == raw[54:l4_off]
    assert rebuilt(res.data) == res.data


def test_an_ipv6_frame_whose_program_is_missing_passes_and_is_counted(node):
    """With lb6_xdp_progs or lb6_progs emptied (an agent that failed half-way), the entry points
    leave IPv6 untouched, as a pass, and count ipv6_unloaded: nothing is dropped or mangled."""
    import ctypes

    node.program(REMOTE_BE)
    progs = node.dp.progs
    pkt = tcp6(CLIENT, 40340, NODE_IP, 30080)
    arrays = (("lb6_xdp_progs", 0, progs.ipv6["lb6_node_xdp"], "xdp", XDP_PASS, "node_xdp"),
              ("lb6_progs", 2, progs.ipv6["lb6_node_in"], "in", TC_ACT_OK, "node_in"))
    for array, index, fn, hook, passed, at in arrays:
        table = progs.bpf[array.encode()]
        del table[ctypes.c_int(index)]
        try:
            before = node.dp.stats()
            res = node.run(hook, pkt)
            assert (res.retval, res.data) == (passed, bytes(pkt))
            assert moved(before, node.dp.stats()) == {f"{at}/pass": 1, "ipv6_unloaded": 1}
        finally:
            table[ctypes.c_int(index)] = ctypes.c_int(fn.fd)
        assert node.run(hook, pkt).retval != passed  # served again


def test_outside_ipv6_traffic_the_node_must_not_serve(node):
    """A ClusterIP from outside is dropped; externalTrafficPolicy Local with the only backend on
    another node drops too (kube-proxy's rule), at TC and at XDP."""
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
    res = node.run("xdp", tcp6(CLIENT, 40004, NODE_IP, 30080))
    assert res.retval == XDP_DROP
    assert moved(before, node.dp.stats()) == {"node_xdp/drop": 1, "no_backend": 1}
    node.program(REMOTE_BE)
    before = node.dp.stats()
    res = node.run("xdp", tcp6(CLIENT, 40005, CLUSTER_IP, 80))
    assert res.retval == XDP_DROP
    assert moved(before, node.dp.stats()) == {"node_xdp/drop": 1, "external_clusterip": 1}


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


# The NodePorts of manifest(): protocol number -> (node port, the backends' port).
NODE_PORTS = {6: (30080, 8080), 17: (30053, 9053)}


def _to_nodeport(frame: bytes):
    """(L4 offset, protocol) of a frame lb6_node_xdp may translate: TCP or UDP to one of the
    node's ports, after at most six extension headers walked as the parser walks them (a
    routing header with segments left, or a fragment other than an atomic one, is not XDP's to
    translate); None for anything else. An upper bound: the program may refuse more."""
    if len(frame) < 54 or frame[12:14] != b"\x86\xdd" or frame[14] >> 4 != 6:
        return None
    plen = int.from_bytes(frame[18:20], "big")
    if 54 + plen > len(frame):
        return None
    nh, off = frame[20], 54
    for _ in range(6):
        if nh in (0, 43, 60, 51):
            if off + 8 > len(frame) or (nh == 43 and frame[off + 3]):
                return None
            size = (frame[off + 1] + 2) * 4 if nh == 51 else (frame[off + 1] + 1) * 8
            nh, off = frame[off], off + size
            continue
        if nh != 44:
            break
        if off + 8 > len(frame) or int.from_bytes(frame[off + 2:off + 4], "big") & 0xfff9:
            return None  # a fragment (offset or more-fragments set): left to TC
        nh, off = frame[off], off + 8
    if nh not in NODE_PORTS or off + (20 if nh == 6 else 8) > min(len(frame), 54 + plen):
        return None
    if frame[38:54] != socket.inet_pton(socket.AF_INET6, NODE_IP) or \
            int.from_bytes(frame[off + 2:off + 4], "big") != NODE_PORTS[nh][0]:
        return None
    return off, nh


def test_fuzz_ipv6_at_xdp(node):
    """8,000 mutated IPv6 frames (bounded to 20 s) through lb6_node_xdp with NodePorts (TCP and
    UDP) whose backend is on another node: XDP only passes, drops or sends back out; it changes
    no frame but a well-formed packet to a node port, and that one only into the same packet
    from the node's address and a SNAT port to the backend's port, hop limit down by one, every
    other header byte (extension headers included) as it was, with a checksum still right when
    it was right and a UDP checksum of 0 left 0."""
    import random
    import time

    node.program(REMOTE_BE)
    lo, hi = node.dp.config.snat_ports
    a6 = lambda ip: socket.inet_pton(socket.AF_INET6, ip)  # noqa: E731
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrFragment

    eth = Ether(src=CLIENT_MAC, dst=NODE_MAC)
    templates = [bytes(tcp6(CLIENT, 41000, NODE_IP, 30080)),
                 bytes(tcp6(CLIENT, 41000, NODE_IP, 30080, flags="A")),
                 bytes(eth / IPv6(src=CLIENT, dst=NODE_IP) / IPv6ExtHdrDestOpt()
                       / TCP(sport=41001, dport=30080, flags="S")),
                 bytes(eth / IPv6(src=CLIENT, dst=NODE_IP) / IPv6ExtHdrFragment(m=1, id=3)
                       / TCP(sport=41002, dport=30080)),
                 bytes(eth / IPv6(src=CLIENT, dst=NODE_IP) / IPv6ExtHdrFragment(m=0, id=4)
                       / TCP(sport=41004, dport=30080, flags="S")),  # atomic: XDP's
                 bytes(eth / IPv6(src=CLIENT, dst=NODE_IP) / UDP(sport=41003, dport=30053)
                       / Raw(b"u" * 12)),
                 bytes(eth / IPv6(src=CLIENT, dst=NODE_IP) / UDP(sport=41005, dport=30053,
                                                                  chksum=0) / Raw(b"z" * 12))]
    rng = random.Random(20261206)
    started = time.monotonic()
    checked = 0
    rewritten = {6: 0, 17: 0}
    for i in range(8_000):
        frame = bytearray(rng.choice(templates))
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(14, len(frame))] = rng.randrange(256)
        if rng.random() < 0.2:
            frame = frame[:rng.randrange(54, len(frame) + 1)]
        if rng.random() < 0.5:
            frame[38:54] = a6(NODE_IP)
        frame = bytes(frame)
        res = node.run("xdp", frame)
        assert res.retval in (XDP_DROP, XDP_PASS, XDP_TX), frame.hex()
        if res.data != frame and res.retval != XDP_DROP:  # (what a drop leaves is lost anyway)
            found = _to_nodeport(frame)
            assert found is not None and res.retval == XDP_TX, f"rewrote {frame.hex()}"
            off, proto = found
            out = res.data
            csum = off + (16 if proto == 6 else 6)
            assert out[14:21] == frame[14:21] and out[21] == frame[21] - 1, frame.hex()
            assert out[38:54] == a6(REMOTE_BE) and out[22:38] == a6(NODE_IP), frame.hex()
            assert out[54:off] == frame[54:off], f"extension headers changed: {frame.hex()}"
            assert lo <= int.from_bytes(out[off:off + 2], "big") <= hi, frame.hex()
            assert int.from_bytes(out[off + 2:off + 4], "big") == NODE_PORTS[proto][1]
            assert out[off + 4:csum] + out[csum + 2:] == frame[off + 4:csum] + frame[csum + 2:]
            if proto == 17 and frame[csum:csum + 2] == b"\0\0":
                assert out[csum:csum + 2] == b"\0\0", frame.hex()
            elif rebuilt(frame) == frame:
                assert rebuilt(out) == out, f"checksum broken for {frame.hex()}"
            rewritten[proto] += 1
        if i % 2_000 == 0:
            node.dp.clear_conntrack()
        checked += 1
        if time.monotonic() - started > 20:
            break
    print(f"\nipv6 xdp fuzz: {checked} frames, {rewritten} rewritten")
    assert checked >= 2_000, f"only {checked} frames in the time bound"
    assert rewritten[6] > 100 and rewritten[17] > 50
