"""North-south data path: lb4_node_xdp (XDP) and lb4_node_in / lb4_node_out (TC) on a node device,
run with BPF_PROG_TEST_RUN on the real programs, provisioned through the real control-plane path
(manifest -> model with node addresses -> plan -> apply).

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
  it to TC), traffic that is not ours and malformed frames, and XDP without a neighbour entry
  (left untouched to TC, which resolves it);
- the edges of the remote path: a second node device (XDP redirect instead of TX), IP options,
  a UDP checksum that must become 0xffff, the TTL decrement's checksum carry, TTL exhausted,
  TCP without state, spoofed sources, strangers on a SNAT port, a lost route, SNAT port probing
  and exhaustion; ExternalIP frontends; ICMP errors about flows from outside, both directions,
  local and remote backends; the per-frontend and per-backend counters; and a seeded sweep of
  varied flows through SNAT and back.
Outputs are compared byte for byte with packets built independently by scapy, and every checksum
is verified by recomputing it.

The programs decide "local or remote backend" with bpf_fib_lookup, which runs in the network
namespace of the calling thread (the test-run device is looked up there too), so every run here
happens inside a namespace the module creates: a node device with 192.168.200.10/24, permanent
neighbours for the client and the next hop towards another node's pods, a second node device on
192.168.201.0/24, and a pod device with a /32 route to a local backend; both node devices are
entered in lb4_node_ifs as the agent would. The namespace and those entries are removed at the
end, and the module leaves the shared data plane without frontends or conntrack entries.
"""
import socket
import subprocess
import sys
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from ebpflb.dataplane import testrun
from ebpflb.dataplane.bcc_maps import ip_to_be32, lookup_conntrack, read_conntrack
from ebpflb.flowhash import FLOW_HASH_SEED, flow_hash
from ebpflb.lab.nsops import create_netns, in_netns, remove_netns, write_sysctls
from ebpflb.manifests import parse_documents
from ebpflb.maps import (SERVICES, SVC_F_DRAINING, SVC_F_DROP_EMPTY, SVC_F_ETP_LOCAL,
                         SVC_F_SRC_RANGES, SvcKey)
from ebpflb.model import DesiredState, desired_state
from ebpflb.reconcile import reconcile

from ..conftest import unique

pytestmark = pytest.mark.bpf

XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 1, 2, 3, 4
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
HOOKS = ("xdp", "tc")
PASS = {"xdp": XDP_PASS, "tc": TC_ACT_OK}
DROP = {"xdp": XDP_DROP, "tc": TC_ACT_SHOT}
FORWARD = {"xdp": XDP_TX, "tc": TC_ACT_REDIRECT}  # sent on out of the node device itself

CT_F_ESTABLISHED, CT_F_EXTERNAL, CT_F_SNAT = 0x1, 0x8, 0x10

# The node and its underlay (192.168.200.0/24); the client and a next hop to node-1's pods sit
# behind permanent neighbours, so XDP can finish frames with exact MAC addresses.
NODE_DEV, POD_DEV = "node0", "pod0"
NODE2_DEV = "node1"  # a second node device, on another subnet
NODE2_IP, NODE2_MAC = "192.168.201.10", "02:cc:00:00:00:10"
CLIENT2, CLIENT2_MAC = "192.168.201.2", "02:cc:00:00:00:02"  # a client behind it
NODE_IP, NODE_MAC = "192.168.200.10", "02:aa:00:00:00:10"
CLIENT, CLIENT_MAC = "192.168.200.2", "02:aa:00:00:00:02"
CLIENT_NO_NEIGH = "192.168.200.3"  # on the node's subnet, no neighbour entry
DENIED_CLIENT = "192.168.200.9"  # outside the source ranges below
GW, GW_MAC = "192.168.200.11", "02:aa:00:00:00:11"  # next hop to 10.244.1.0/24 (node-1)
GW_NO_NEIGH = "192.168.200.12"  # next hop to 10.244.2.0/24, no neighbour entry
LB_IP = "192.168.200.200"
CLUSTER_IP = "10.96.0.10"
LOCAL_BE, POD_MAC = "10.244.0.11", "02:bb:00:00:00:11"  # a pod on this node (route via pod0)
REMOTE_BE = "10.244.1.11"  # a pod on node-1
REMOTE_BE_NO_NEIGH = "10.244.2.11"  # a pod on node-2, whose next hop has no neighbour entry
POD_CLIENT = "10.244.0.2"

NODEPORT = (NODE_IP, 30080)
LOADBALANCER = (LB_IP, 80)
FRONTENDS = {"nodeport": NODEPORT, "loadbalancer": LOADBALANCER}
UDP_NODEPORT = (NODE_IP, 30053)


# ---------------------------------------------------------------- provisioning

def manifest(endpoints=(), etp="Cluster", ranges=(), itp="Cluster"):
    """One LoadBalancer Service (TCP 80 -> 8080 on node port 30080, UDP 53 -> 5353 on node port
    30053, ingress IP 192.168.200.200) with the given (address, nodeName) endpoints."""
    extra = f"  loadBalancerSourceRanges: [{', '.join(ranges)}]\n" if ranges else ""
    extra += f"  internalTrafficPolicy: {itp}\n"
    eps = "".join(f"- {{addresses: [{a}], nodeName: {n}, conditions: {{ready: true}}}}\n"
                  for a, n in endpoints)
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  type: LoadBalancer
  clusterIP: {CLUSTER_IP}
  externalTrafficPolicy: {etp}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}}
{extra}status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:{(chr(10) + eps) if eps else " []"}
"""


NETNS_SETUP = f"""\
link add {NODE_DEV} type veth peer name {NODE_DEV}p
link set {NODE_DEV} address {NODE_MAC} up
link set {NODE_DEV}p up
addr add {NODE_IP}/24 dev {NODE_DEV}
neigh add {CLIENT} lladdr {CLIENT_MAC} dev {NODE_DEV} nud permanent
neigh add {GW} lladdr {GW_MAC} dev {NODE_DEV} nud permanent
route add 10.244.1.0/24 via {GW} dev {NODE_DEV}
route add 10.244.2.0/24 via {GW_NO_NEIGH} dev {NODE_DEV}
link add {POD_DEV} type veth peer name {POD_DEV}p
link set {POD_DEV} up
link set {POD_DEV}p up
route add {LOCAL_BE}/32 dev {POD_DEV}
neigh add {LOCAL_BE} lladdr {POD_MAC} dev {POD_DEV} nud permanent
link add {NODE2_DEV} type veth peer name {NODE2_DEV}p
link set {NODE2_DEV} address {NODE2_MAC} up
link set {NODE2_DEV}p up
addr add {NODE2_IP}/24 dev {NODE2_DEV}
neigh add {CLIENT2} lladdr {CLIENT2_MAC} dev {NODE2_DEV} nud permanent
"""


class Node:
    """The namespace standing for a node, the programs, and how to run them there."""

    def __init__(self, dp, ns: str, ifindexes):
        self.dp = dp
        self.ns = ns
        self.ifindexes = ifindexes  # device name -> ifindex in the namespace
        self.ifindex = ifindexes[NODE_DEV]
        self.bpf = dp.progs.bpf
        self.snat_min, self.snat_max = dp.config.snat_ports

    def program(self, **kwargs):
        """Programs the maps from manifest(**kwargs) as the agent of node-0 would."""
        m = parse_documents(manifest(**kwargs), "<test>")
        state = desired_state(m.services, m.slices, node_name="node-0", node_addresses=[NODE_IP])
        return reconcile(state, self.dp.writer, self.dp.config.map_limits).snapshot

    def run(self, hook: str, pkt, dev: str = NODE_DEV) -> testrun.TestRunCtxResult:
        """Runs a frame through lb4_node_xdp ("xdp"; "xdp-generic": lb4_xdp_generic), lb4_node_in
        ("tc") or lb4_node_out ("out")
        as if it crossed the node device `dev`, inside the node's namespace."""
        raw = bytes(pkt)
        progs = self.dp.progs
        ifindex = self.ifindexes[dev]
        with in_netns(self.ns):
            if hook in ("xdp", "xdp-generic"):
                fd = (progs.node_xdp if hook == "xdp" else progs.node_xdp_generic).fd
                return testrun.test_run_ctx(fd, raw, testrun.xdp_ctx(ifindex, len(raw)))
            prog = {"tc": progs.node_in, "out": progs.node_out}[hook]
            return testrun.test_run_ctx(prog.fd, raw, testrun.skb_ctx(ifindex=ifindex))

    def snat_port(self, src, sport, dst, dport, proto) -> int:
        """The SNAT port a new flow gets when the range is free: its flow hash picks the start."""
        h = flow_hash(int(IPv4Address(src)), int(IPv4Address(dst)), sport, dport, proto,
                      FLOW_HASH_SEED)
        return self.snat_min + h % (self.snat_max - self.snat_min + 1)

    def ct(self, src, sport, dst, dport, proto, reply=False):
        return lookup_conntrack(self.bpf, src, sport, dst, dport, proto, reply=reply)

    def ct_count(self) -> int:
        return self.dp.ct_entries()

    def stats(self):
        return self.dp.stats()


def delta(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


# The verdict counter each node.run hook moves ("hook/verdict").
AT = {"xdp": "node_xdp", "xdp-generic": "node_xdp", "tc": "node_in", "out": "node_out"}


def v(hook: str, verdict: str) -> str:
    return f"{AT.get(hook, hook)}/{verdict}"


@pytest.fixture(scope="module")
def node(dataplane):
    ns = unique("ebpflb-ns-test-")
    create_netns(ns)
    table = dataplane.progs.bpf[b"lb4_node_ifs"]
    keys = []
    try:
        write_sysctls(ns, {"net.ipv4.ip_forward": "1"})  # fib lookups need forwarding on
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=NETNS_SETUP, text=True, check=True,
                       capture_output=True)
        with in_netns(ns):  # (/sys shows the namespace it was mounted in, not this one)
            ifindexes = {dev: socket.if_nametoindex(dev) for dev in (NODE_DEV, NODE2_DEV, POD_DEV)}
        # What the agent's NodeAttacher writes for a node device: its ifindex -> its address.
        for dev, addr in ((NODE_DEV, NODE_IP), (NODE2_DEV, NODE2_IP)):
            keys.append(table.Key(ifindexes[dev]))
            table[keys[-1]] = table.Leaf(addr=ip_to_be32(addr), flags=0)
        yield Node(dataplane, ns, ifindexes)
    finally:
        for key in keys:
            table.pop(key, None)
        # Leave the shared session data plane without this module's frontends or flows.
        dataplane.clear_conntrack()  # first: frontends with flows would drain
        reconcile(DesiredState(frontends={}, skipped=()), dataplane.writer,
                  dataplane.config.map_limits)
        remove_netns(ns)


@pytest.fixture(autouse=True)
def fresh_conntrack(dataplane):
    dataplane.clear_conntrack()


# ---------------------------------------------------------------- packets

def rebuilt(pkt):
    """The frame with every checksum recomputed by scapy (a UDP checksum of 0 stays 0)."""
    p = Ether(bytes(pkt))
    for layer in (IP, TCP, UDP, ICMP):
        if layer in p and not (layer is UDP and p[UDP].chksum == 0):
            del p[layer].chksum
    return bytes(p)


def tcp(src, sport, dst, dport, flags="S", seq=1000, ack=0, payload=b"", ttl=64,
        mac=(CLIENT_MAC, NODE_MAC)):
    return (Ether(src=mac[0], dst=mac[1]) / IP(src=src, dst=dst, ttl=ttl, id=7)
            / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) / Raw(payload))


def udp(src, sport, dst, dport, chksum=None, payload=b"query", ttl=64, mac=(CLIENT_MAC, NODE_MAC)):
    u = UDP(sport=sport, dport=dport)
    if chksum is not None:
        u.chksum = chksum
    return Ether(src=mac[0], dst=mac[1]) / IP(src=src, dst=dst, ttl=ttl, id=7) / u / Raw(payload)


def l4(pkt):
    return pkt[TCP] if TCP in pkt else pkt[UDP]


def rewritten(pkt, src=None, sport=None, dst=None, dport=None, ttl_dec=0, macs=None):
    """The expected output: pkt with the given fields changed, checksums recomputed (except a
    UDP checksum of 0, which means none and must stay 0)."""
    exp = Ether(bytes(pkt))
    if src is not None:
        exp[IP].src = src
    if dst is not None:
        exp[IP].dst = dst
    if sport is not None:
        l4(exp).sport = sport
    if dport is not None:
        l4(exp).dport = dport
    exp[IP].ttl -= ttl_dec
    if macs is not None:
        exp[Ether].src, exp[Ether].dst = macs
    return rebuilt(exp)


def assert_checksums_valid(data: bytes):
    assert rebuilt(data) == data, Ether(data).show2(dump=True)


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


# ---------------------------------------------------------------- 7. not ours, malformed

def _bad_ip(**fields):
    return bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=NODE_IP, **fields)
                 / TCP(sport=40000, dport=30080))


_SYN = bytes(tcp(CLIENT, 40000, *NODEPORT))
_E = Ether(src=CLIENT_MAC, dst=NODE_MAC)

# (description, frame, the verdict each hook counts [+ an event lb4_node_in counts])
PASS_CASES = [
    ("TCP to the node address on a port that is no frontend", tcp(CLIENT, 40000, NODE_IP, 22), "pass"),
    ("UDP to a TCP node port", udp(CLIENT, 40000, NODE_IP, 30080), "pass"),
    ("TCP to the LB address on a port that is no frontend", tcp(CLIENT, 40000, LB_IP, 443), "pass"),
    ("TCP to a pod address (already DNATed by XDP)", tcp(CLIENT, 40000, LOCAL_BE, 8080), "pass"),
    ("TCP into the SNAT range without a conntrack entry",
     tcp(REMOTE_BE, 8080, NODE_IP, 12000, "SA", mac=(GW_MAC, NODE_MAC)), "pass"),
    ("TCP from a client into the SNAT range", tcp(CLIENT, 40000, NODE_IP, 1024), "pass"),
    ("UDP to the top of the SNAT range without a conntrack entry",
     udp(REMOTE_BE, 5353, NODE_IP, 29999, mac=(GW_MAC, NODE_MAC)), "pass"),
    ("TCP just below the SNAT range", tcp(REMOTE_BE, 8080, NODE_IP, 1023, "SA"), "pass"),
    ("TCP just above the SNAT range", tcp(REMOTE_BE, 8080, NODE_IP, 30000, "SA"), "pass"),
    ("ICMP echo to the node port address", _E / IP(src=CLIENT, dst=NODE_IP) / ICMP(), "pass"),
    ("ARP for the LB address", _E / ARP(psrc=CLIENT, pdst=LB_IP), "pass"),
    ("IPv6", _E / IPv6(dst="fd00::1") / TCP(dport=30080), "pass"),
    ("non-first fragment to a frontend, its first never seen",
     _E / IP(src=CLIENT, dst=NODE_IP, frag=10, proto=6) / Raw(b"x" * 16), "pass+frag_miss"),
    ("IPv4 header only, no L4 header", _SYN[:14 + 20], "malformed"),
    ("TCP header cut after 10 bytes", _SYN[:14 + 20 + 10], "malformed"),
    ("IPv4 options past the end of the frame",
     bytes(_E / IP(src=CLIENT, dst=NODE_IP, ihl=15, proto=6))[:14 + 20] + b"\0" * 4, "malformed"),
    ("IHL below 5", _bad_ip(ihl=4), "malformed"),
    ("total length larger than the frame", _bad_ip(len=400), "malformed"),
    ("IPv4 version 6 in an IPv4 frame", _bad_ip(version=6), "malformed"),
    ("TCP data offset below 5",
     _E / IP(src=CLIENT, dst=NODE_IP) / TCP(sport=40000, dport=30080, dataofs=4), "malformed"),
    ("UDP length below 8", _E / IP(src=CLIENT, dst=NODE_IP) / UDP(sport=40000, dport=30053, len=4),
     "malformed"),
]


@pytest.mark.parametrize("desc,pkt,counter", PASS_CASES, ids=[c[0] for c in PASS_CASES])
@pytest.mark.parametrize("hook", HOOKS)
def test_not_ours_and_malformed_pass_untouched(node, hook, desc, pkt, counter):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    raw = bytes(pkt)
    verdict, _, event = counter.partition("+")
    before = node.stats()
    res = node.run(hook, raw)
    assert (res.retval, res.data) == (PASS[hook], raw)
    events = {event: 1} if event and hook == "tc" else {}
    assert delta(before, node.stats()) == {v(hook, verdict): 1, **events}
    before = node.stats()
    res = node.run("out", raw)
    assert (res.retval, res.data) == (TC_ACT_OK, raw)
    assert delta(before, node.stats()) == {v("out", verdict): 1}
    assert node.ct_count() == 0


@pytest.mark.parametrize("raw", [_SYN[:14], _SYN[:14 + 10], _SYN[:14 + 19]],
                         ids=["Ethernet header only", "10 bytes of IPv4", "19 bytes of IPv4"])
def test_xdp_short_frames_pass_untouched(node, raw):
    # TC cannot be fed these (the kernel refuses an IPv4 skb shorter than its header); XDP can.
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    res = node.run("xdp", raw)
    assert (res.retval, res.data) == (XDP_PASS, raw)


# ---------------------------------------------------------------- 8. no neighbour entry

def test_xdp_without_a_neighbour_leaves_the_flow_to_tc(node):
    node.program(endpoints=[(REMOTE_BE_NO_NEIGH, "node-2")])
    syn = tcp(CLIENT, 40000, *NODEPORT)
    before = node.stats()
    res = node.run("xdp", syn)
    assert (res.retval, res.data) == (XDP_PASS, bytes(syn))
    assert delta(before, node.stats()) == {"node_xdp/to_tc": 1}
    assert node.ct_count() == 0  # TC creates the flow, once

    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    res = node.run("tc", syn)
    assert res.retval == TC_ACT_REDIRECT  # redirect_neigh resolves the next hop
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE_NO_NEIGH,
                                 dport=8080, ttl_dec=1)
    assert_checksums_valid(res.data)
    assert node.ct(CLIENT, 40000, *NODEPORT, 6).nat2_port == port

    # Later packets of the flow: still no neighbour for XDP, untouched and not tracked there.
    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001)
    res = node.run("xdp", ack)
    assert (res.retval, res.data) == (XDP_PASS, bytes(ack))
    assert node.ct(CLIENT, 40000, *NODEPORT, 6).flags == CT_F_EXTERNAL | CT_F_SNAT
    res = node.run("tc", ack)
    assert res.retval == TC_ACT_REDIRECT
    assert res.data == rewritten(ack, src=NODE_IP, sport=port, dst=REMOTE_BE_NO_NEIGH,
                                 dport=8080, ttl_dec=1)


def test_xdp_without_a_neighbour_for_the_client_leaves_the_reply_to_tc(node):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    syn = tcp(CLIENT_NO_NEIGH, 40000, *NODEPORT)
    port = node.snat_port(CLIENT_NO_NEIGH, 40000, *NODEPORT, 6)
    res = node.run("xdp", syn)  # towards the backend the neighbour is known
    assert res.retval == XDP_TX
    assert Ether(res.data)[TCP].sport == port
    synack = tcp(REMOTE_BE, 8080, NODE_IP, port, "SA", seq=5000, ack=1001, ttl=63,
                 mac=(GW_MAC, NODE_MAC))
    before = node.stats()
    res = node.run("xdp", synack)
    assert (res.retval, res.data) == (XDP_PASS, bytes(synack))
    assert delta(before, node.stats()) == {"node_xdp/to_tc": 1}
    res = node.run("tc", synack)
    assert res.retval == TC_ACT_REDIRECT
    assert res.data == rewritten(synack, src=NODE_IP, sport=30080, dst=CLIENT_NO_NEIGH,
                                 dport=40000, ttl_dec=1)
    assert_checksums_valid(res.data)


# ---------------------------------------------------------------- 9. generic XDP

def test_generic_xdp_leaves_local_flows_to_tc(node):
    """Generic XDP cannot update skb->csum, so a packet it rewrote and passed up would reach a
    CHECKSUM_COMPLETE device's stack with a stale sum. Its build of the program (lb4_xdp_generic)
    leaves flows to local backends untouched to TC (new ones before conntrack, known ones before
    tracking), and TC translates them once, with its csum helpers."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    syn = tcp(CLIENT, 40000, *NODEPORT)
    before = node.stats()
    res = node.run("xdp-generic", syn)
    assert (res.retval, res.data) == (XDP_PASS, bytes(syn))
    assert delta(before, node.stats()) == {"node_xdp/to_tc": 1}
    assert node.ct_count() == 0
    res = node.run("tc", syn)
    assert (res.retval, res.data) == (TC_ACT_OK, rewritten(syn, dst=LOCAL_BE, dport=8080))
    assert node.ct_count() == 2

    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001)
    res = node.run("xdp-generic", ack)
    assert (res.retval, res.data) == (XDP_PASS, bytes(ack))
    assert node.ct(CLIENT, 40000, *NODEPORT, 6).half_open  # not tracked by XDP
    res = node.run("tc", ack)
    assert (res.retval, res.data) == (TC_ACT_OK, rewritten(ack, dst=LOCAL_BE, dport=8080))
    assert not node.ct(CLIENT, 40000, *NODEPORT, 6).half_open


def test_generic_xdp_still_finishes_remote_flows(node):
    """A flow XDP sends back out (XDP_TX) never goes up the stack, so generic XDP keeps it."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    syn = tcp(CLIENT, 40000, *NODEPORT)
    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    res = node.run("xdp-generic", syn)
    assert res.retval == XDP_TX
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080,
                                 ttl_dec=1, macs=(NODE_MAC, GW_MAC))


@pytest.mark.parametrize("hook", HOOKS)
def test_a_removed_node_port_drains(node, hook):
    """The Service goes while a connection from outside is open: the NodePort drains, so the
    connection goes on at XDP and TC, and a new one passes untouched (the node's own stack
    answers it, as for any port without a frontend). Fails on 8c0200c."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    syn = tcp(CLIENT, 40000, *NODEPORT)
    assert node.run(hook, syn).retval == PASS[hook]
    reconcile(DesiredState(frontends={}, skipped=()), node.dp.writer, node.dp.config.map_limits)
    draining = {k for k, v in node.dp.writer.dump(SERVICES).items() if v.flags & SVC_F_DRAINING}
    assert draining == {SvcKey(*NODEPORT, 6)}  # the only frontend with a flow
    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001)
    res = node.run(hook, ack)
    assert (res.retval, res.data) == (PASS[hook], rewritten(ack, dst=LOCAL_BE, dport=8080))
    other = tcp(CLIENT, 40001, *NODEPORT)
    res = node.run(hook, other)
    assert (res.retval, res.data) == (PASS[hook], bytes(other))


def test_no_route_to_the_backend_is_not_remote(node):
    """The FIB decides: a backend the node has no route for is not behind a node device, so it
    is DNATed (no SNAT) and handed to the stack, like a local one."""
    node.program(endpoints=[("10.244.9.11", "node-9")])
    pkt = tcp(CLIENT, 40000, *NODEPORT)
    for hook in HOOKS:
        node.dp.clear_conntrack()
        res = node.run(hook, pkt)
        assert res.retval == PASS[hook]
        assert res.data == rewritten(pkt, dst="10.244.9.11", dport=8080)
        assert node.ct(CLIENT, 40000, *NODEPORT, 6).flags == CT_F_EXTERNAL


def test_conntrack_view_of_a_snat_flow(node):
    """read_conntrack (what `ebpflb conntrack` shows) lists both entries of a SNAT flow."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    node.run("tc", tcp(CLIENT, 40000, *NODEPORT))
    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    entries = {(e.direction, e.saddr, e.sport, e.daddr, e.dport, e.nat_addr, e.nat_port,
                e.nat2_addr, e.nat2_port) for e in read_conntrack(node.bpf)}
    assert entries == {
        ("forward", CLIENT, 40000, NODE_IP, 30080, REMOTE_BE, 8080, NODE_IP, port),
        ("reply", REMOTE_BE, 8080, NODE_IP, port, NODE_IP, 30080, CLIENT, 40000),
    }


def explain_cli(node, *args):
    """`ebpflb explain ... -o json` in the node's namespace (its routes and devices)."""
    import json

    r = subprocess.run([sys.executable, "-m", "ebpflb.cli", "explain", *args, "-o", "json",
                        "--netns", node.ns, "--pin-dir", node.dp.config.pin_dir],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_explain_cli_follows_the_program_on_a_node_device(node):
    """`ebpflb explain --from-outside` looks up the route to each backend as the program does: a
    backend on another node is shown SNATed to the node device's address and forwarded, with the
    port the program will take; `--tcp-flags A` explains a packet without state (dropped: no
    SNAT port for the replies); an existing flow is shown as the program will treat it."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    flow = (f"{CLIENT}:40000", f"{NODE_IP}:30080", "tcp", "--from-outside", "--device", NODE_DEV)
    e = explain_cli(node, *flow)
    assert (e["verdict"], e["backend"], e["source"]) == ("forward", f"{REMOTE_BE}:8080",
                                                         f"{NODE_IP}:{port}"), e["reason"]
    assert explain_cli(node, *flow, "--tcp-flags", "A")["verdict"] == "drop"
    node.run("tc", tcp(CLIENT, 40000, *NODEPORT))
    e = explain_cli(node, *flow, "--tcp-flags", "A")
    assert (e["verdict"], e["source"]) == ("forward", f"{NODE_IP}:{port}"), e["reason"]
    r = subprocess.run([sys.executable, "-m", "ebpflb.cli", "explain", *flow[:3], "--device",
                        "nosuch0", "--netns", node.ns, "--pin-dir", node.dp.config.pin_dir],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--device" in r.stderr and "nosuch0" in r.stderr, r.stderr


# ---------------------------------------------------------------- more edges of the remote path

@pytest.mark.parametrize("hook", HOOKS)
def test_backend_behind_another_node_device_leaves_through_it(node, hook):
    """Client behind node1, backend routed through node0: SNAT to node0's address, out of node0
    (XDP: redirect, not TX); the reply goes back out of node1 with node1's MAC."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    syn = tcp(CLIENT2, 40000, *NODEPORT, mac=(CLIENT2_MAC, NODE2_MAC))
    port = node.snat_port(CLIENT2, 40000, *NODEPORT, 6)
    res = node.run(hook, syn, dev=NODE2_DEV)
    assert res.retval == (XDP_REDIRECT if hook == "xdp" else TC_ACT_REDIRECT)
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080, ttl_dec=1,
                                 macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
    synack = tcp(REMOTE_BE, 8080, NODE_IP, port, "SA", ack=1001, mac=(GW_MAC, NODE_MAC))
    res = node.run(hook, synack)
    assert res.retval == (XDP_REDIRECT if hook == "xdp" else TC_ACT_REDIRECT)
    assert res.data == rewritten(synack, src=NODE_IP, sport=30080, dst=CLIENT2, dport=40000,
                                 ttl_dec=1, macs=(NODE2_MAC, CLIENT2_MAC) if hook == "xdp" else None)
    assert_checksums_valid(res.data)


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("hook", HOOKS)
def test_ip_options_are_kept_and_checksums_stay_valid(node, hook, where):
    backend = LOCAL_BE if where == "local" else REMOTE_BE
    node.program(endpoints=[(backend, "node-0" if where == "local" else "node-1")])
    syn = (Ether(src=CLIENT_MAC, dst=NODE_MAC)
           / IP(src=CLIENT, dst=NODE_IP, ttl=64, id=7,
                options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_EOL()])
           / TCP(sport=40000, dport=30080, flags="S", seq=1000) / Raw(b"data"))
    syn = Ether(bytes(syn))
    assert syn[IP].ihl == 6
    res = node.run(hook, syn)
    if where == "local":
        assert res.retval == PASS[hook]
        assert res.data == rewritten(syn, dst=LOCAL_BE, dport=8080)
    else:
        port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
        assert res.retval == FORWARD[hook]
        assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080,
                                     ttl_dec=1, macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
    assert_checksums_valid(res.data)


def _udp_summing_to_zero(src, sport, dst, dport, out_src, out_sport, out_dst, out_dport, mac):
    """A datagram whose checksum, once rewritten to the out_* addresses and ports, computes to 0
    and must be sent as 0xffff (0 would mean "no checksum"). Its first payload word is the
    checksum the rewritten datagram has with that word 0: adding ~sum to sum makes 0xffff."""
    def out(word):
        return IP(bytes(IP(src=out_src, dst=out_dst) / UDP(sport=out_sport, dport=out_dport)
                        / Raw(word.to_bytes(2, "big") + b"zero")))[UDP].chksum
    word = out(0)
    assert out(word) == 0xffff  # scapy sends a computed 0 as 0xffff
    return udp(src, sport, dst, dport, payload=word.to_bytes(2, "big") + b"zero", mac=mac)


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("hook", HOOKS)
def test_udp_checksum_that_becomes_zero_is_sent_as_ffff(node, hook, where):
    fe_ip, fe_port = UDP_NODEPORT
    if where == "local":
        node.program(endpoints=[(LOCAL_BE, "node-0")])
        dgram = _udp_summing_to_zero(CLIENT, 40002, fe_ip, fe_port, CLIENT, 40002, LOCAL_BE, 5353,
                                     (CLIENT_MAC, NODE_MAC))
    else:
        node.program(endpoints=[(REMOTE_BE, "node-1")])
        port = node.snat_port(CLIENT, 40002, fe_ip, fe_port, 17)
        dgram = _udp_summing_to_zero(CLIENT, 40002, fe_ip, fe_port, NODE_IP, port, REMOTE_BE, 5353,
                                     (CLIENT_MAC, NODE_MAC))
    assert dgram[UDP].chksum is None and Ether(bytes(dgram))[UDP].chksum not in (0, 0xffff)
    res = node.run(hook, dgram)
    assert res.retval == (PASS if where == "local" else FORWARD)[hook]
    assert Ether(res.data)[UDP].chksum == 0xffff
    assert_checksums_valid(res.data)


@pytest.mark.parametrize("hook", HOOKS)
def test_ttl_exhausted_on_the_way_to_another_node_is_dropped(node, hook):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    before = node.stats()
    res = node.run(hook, tcp(CLIENT, 40000, *NODEPORT, ttl=1))
    assert res.retval == DROP[hook]
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "forward_fail": 1,
                                           "conntrack_insert": 1}


@pytest.mark.parametrize("hook", HOOKS)
def test_tcp_without_state_local_is_forwarded_remote_is_dropped(node, hook):
    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001)
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    before = node.stats()
    res = node.run(hook, ack)
    assert res.retval == PASS[hook]
    assert res.data == rewritten(ack, dst=LOCAL_BE, dport=8080)
    assert delta(before, node.stats()) == {v(hook, "stateless"): 1}
    assert node.ct_count() == 0
    # Towards another node there is no SNAT port without state: dropped.
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    before = node.stats()
    res = node.run(hook, ack)
    assert res.retval == DROP[hook]
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "tcp_no_state": 1}
    assert node.ct_count() == 0


@pytest.mark.parametrize("src", ["127.0.0.1", CLUSTER_IP, NODE_IP],
                         ids=["loopback", "a VIP", "the frontend itself"])
@pytest.mark.parametrize("hook", HOOKS)
def test_new_flows_from_bad_sources_are_dropped(node, hook, src):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    before = node.stats()
    res = node.run(hook, tcp(src, 40000, *NODEPORT))
    assert res.retval == DROP[hook]
    assert delta(before, node.stats()) == {v(hook, "drop"): 1, "bad_source": 1}
    assert node.ct_count() == 0


@pytest.mark.parametrize("hook", HOOKS)
def test_only_the_backend_reaches_a_snat_port(node, hook):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    node.run(hook, tcp(CLIENT, 40000, *NODEPORT))
    port = node.ct(CLIENT, 40000, *NODEPORT, 6).nat2_port
    for stranger in (tcp(CLIENT, 8080, NODE_IP, port, "SA"),  # someone else, same ports
                     tcp(REMOTE_BE, 8081, NODE_IP, port, "SA", mac=(GW_MAC, NODE_MAC)),
                     udp(REMOTE_BE, 8080, NODE_IP, port, mac=(GW_MAC, NODE_MAC))):
        res = node.run(hook, stranger)
        assert (res.retval, res.data) == (PASS[hook], bytes(stranger))


@pytest.mark.parametrize("hook", HOOKS)
def test_established_snat_flow_without_a_route_is_dropped(node, hook):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    assert node.run(hook, tcp(CLIENT, 40000, *NODEPORT)).retval == FORWARD[hook]
    route = ["route", "10.244.1.0/24", "via", GW, "dev", NODE_DEV]
    subprocess.run(["ip", "-n", node.ns, *route[:1], "del", *route[1:]], check=True)
    try:
        before = node.stats()
        res = node.run(hook, tcp(CLIENT, 40000, *NODEPORT, "A", seq=1001, ack=5001))
        assert res.retval == DROP[hook]
        assert delta(before, node.stats()) == {v(hook, "drop"): 1, "forward_fail": 1}
    finally:
        subprocess.run(["ip", "-n", node.ns, *route[:1], "add", *route[1:]], check=True)


@pytest.mark.parametrize("hook", HOOKS)
def test_external_ip_frontend_is_reachable_from_outside(node, hook):
    text = manifest(endpoints=[(REMOTE_BE, "node-1")]).replace(
        "  externalTrafficPolicy:", "  externalIPs: [192.168.200.201]\n  externalTrafficPolicy:")
    m = parse_documents(text, "<test>")
    state = desired_state(m.services, m.slices, node_name="node-0", node_addresses=[NODE_IP],
                          external_ip_allow=["192.168.200.192/26"])
    reconcile(state, node.dp.writer, node.dp.config.map_limits)
    syn = tcp(CLIENT, 40000, "192.168.200.201", 80)
    port = node.snat_port(CLIENT, 40000, "192.168.200.201", 80, 6)
    res = node.run(hook, syn)
    assert res.retval == FORWARD[hook]
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080,
                                 ttl_dec=1, macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)


# ---------------------------------------------------------------- ICMP errors on node devices

ROUTER = "192.168.200.1"  # a router on the client's side
POD_ROUTER = "10.244.1.1"  # a router on the way to node-1's pods


def quoted(src, sport, dst, dport, proto):
    """The first 28 bytes of a packet as an ICMP error quotes it: its IP header (checksum
    computed for these addresses) and 8 bytes of TCP/UDP header. The quoted UDP checksum is a
    constant: nobody can check it from 8 bytes, and translation leaves it alone."""
    l4 = (TCP(sport=sport, dport=dport, seq=1000) if proto == 6
          else UDP(sport=sport, dport=dport, chksum=0x1234))
    return bytes(IP(src=src, dst=dst, ttl=63, id=77) / l4 / Raw(b"hello"))[:28]


def icmp_error(src, dst, inner, icmp_type=3, code=3, ttl=64, mac=(CLIENT_MAC, NODE_MAC)):
    """An ICMP error frame, every checksum (outer IP, ICMP) computed by scapy."""
    return Ether(rebuilt(Ether(src=mac[0], dst=mac[1]) / IP(src=src, dst=dst, ttl=ttl, id=9)
                         / ICMP(type=icmp_type, code=code) / Raw(inner)))


def assert_icmp_checksums_valid(data: bytes):
    """Outer IP, ICMP and quoted IP header checksums, each recomputed by scapy."""
    assert rebuilt(data) == data
    inner = bytes(Ether(data)[ICMP].payload)[:20]
    fresh = IP(inner)
    del fresh.chksum
    assert bytes(fresh)[:20] == inner


@pytest.mark.parametrize("sender", ["backend", "router"])
def test_icmp_error_from_a_local_backend_reaches_the_client_from_the_frontend(node, sender):
    """node_out: a local backend's port unreachable about the client's datagram (or a router's
    between them) leaves the node quoting the frontend, and from it when the backend sent it."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    fe_ip, fe_port = UDP_NODEPORT
    assert node.run("tc", udp(CLIENT, 40001, fe_ip, fe_port)).retval == TC_ACT_OK
    src = LOCAL_BE if sender == "backend" else "10.244.0.1"
    err = icmp_error(src, CLIENT, quoted(CLIENT, 40001, LOCAL_BE, 5353, 17),
                     mac=(NODE_MAC, CLIENT_MAC))
    before = node.stats()
    res = node.run("out", err)
    assert res.retval == TC_ACT_OK
    exp = icmp_error(fe_ip if sender == "backend" else src, CLIENT,
                     quoted(CLIENT, 40001, fe_ip, fe_port, 17), mac=(NODE_MAC, CLIENT_MAC))
    assert res.data == bytes(exp), Ether(res.data).show2(dump=True)
    assert_icmp_checksums_valid(res.data)
    assert delta(before, node.stats()) == {"node_out/icmp_error": 1}


def test_icmp_error_about_a_reply_reaches_the_local_backend(node):
    """node_in: a router on the client's side answers the frontend's reply with "fragmentation
    needed"; the backend must hear of it about its own packet."""
    node.program(endpoints=[(LOCAL_BE, "node-0")])
    assert node.run("tc", tcp(CLIENT, 40000, *NODEPORT)).retval == TC_ACT_OK
    err = icmp_error(ROUTER, NODE_IP, quoted(NODE_IP, 30080, CLIENT, 40000, 6), code=4)
    res = node.run("tc", err)
    assert res.retval == TC_ACT_OK  # to the stack, routed to the pod
    exp = icmp_error(ROUTER, LOCAL_BE, quoted(LOCAL_BE, 8080, CLIENT, 40000, 6), code=4)
    assert res.data == bytes(exp), Ether(res.data).show2(dump=True)
    assert_icmp_checksums_valid(res.data)


@pytest.mark.parametrize("frontend", FRONTENDS, ids=list(FRONTENDS))
def test_icmp_error_about_a_reply_reaches_the_remote_backend(node, frontend):
    """node_in, SNAT flow: the error about the frontend's reply to the client becomes an error
    from this node about what the backend sent (backend -> SNAT port), sent on to the backend."""
    fe_ip, fe_port = FRONTENDS[frontend]
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    assert node.run("tc", tcp(CLIENT, 40000, fe_ip, fe_port)).retval == TC_ACT_REDIRECT
    port = node.ct(CLIENT, 40000, fe_ip, fe_port, 6).nat2_port
    err = icmp_error(ROUTER, fe_ip, quoted(fe_ip, fe_port, CLIENT, 40000, 6), code=4)
    before = node.stats()
    res = node.run("tc", err)
    assert res.retval == TC_ACT_REDIRECT
    exp = icmp_error(NODE_IP, REMOTE_BE, quoted(REMOTE_BE, 8080, NODE_IP, port, 6), code=4, ttl=63)
    assert res.data == bytes(exp), Ether(res.data).show2(dump=True)
    assert_icmp_checksums_valid(res.data)
    assert delta(before, node.stats()) == {"node_in/icmp_error": 1}


@pytest.mark.parametrize("sender", ["backend", "router"])
@pytest.mark.parametrize("frontend", FRONTENDS, ids=list(FRONTENDS))
def test_icmp_error_from_the_remote_side_reaches_the_client(node, frontend, sender):
    """node_in, SNAT flow: the backend's port unreachable (or a router's error on the way to it)
    about the node's packet becomes an error about the client's own datagram to the frontend,
    from the frontend when the backend sent it, sent on to the client."""
    fe_ip, fe_port = {"nodeport": UDP_NODEPORT, "loadbalancer": (LB_IP, 53)}[frontend]
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    assert node.run("tc", udp(CLIENT, 40001, fe_ip, fe_port)).retval == TC_ACT_REDIRECT
    port = node.ct(CLIENT, 40001, fe_ip, fe_port, 17).nat2_port
    src = REMOTE_BE if sender == "backend" else POD_ROUTER
    err = icmp_error(src, NODE_IP, quoted(NODE_IP, port, REMOTE_BE, 5353, 17),
                     mac=(GW_MAC, NODE_MAC))
    res = node.run("tc", err)
    assert res.retval == TC_ACT_REDIRECT
    exp = icmp_error(fe_ip if sender == "backend" else src, CLIENT,
                     quoted(CLIENT, 40001, fe_ip, fe_port, 17), ttl=63, mac=(GW_MAC, NODE_MAC))
    assert res.data == bytes(exp), Ether(res.data).show2(dump=True)
    assert_icmp_checksums_valid(res.data)


def test_icmp_errors_pass_xdp_untouched_and_unknown_ones_tc_too(node):
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    assert node.run("tc", udp(CLIENT, 40001, *UDP_NODEPORT)).retval == TC_ACT_REDIRECT
    port = node.ct(CLIENT, 40001, *UDP_NODEPORT, 17).nat2_port
    known = icmp_error(REMOTE_BE, NODE_IP, quoted(NODE_IP, port, REMOTE_BE, 5353, 17))
    res = node.run("xdp", known)  # XDP leaves every ICMP error to TC
    assert (res.retval, res.data) == (XDP_PASS, bytes(known))
    for unknown in (icmp_error(REMOTE_BE, NODE_IP, quoted(NODE_IP, port + 1, REMOTE_BE, 5353, 17)),
                    icmp_error(ROUTER, NODE_IP, quoted(NODE_IP, 30080, CLIENT, 40999, 6), code=4),
                    icmp_error(ROUTER, CLIENT, quoted(CLIENT, 40001, NODE_IP, 30053, 17))):
        for hook in ("xdp", "tc", "out"):
            res = node.run(hook, unknown)
            assert (res.retval, res.data) == ({"xdp": XDP_PASS, "tc": TC_ACT_OK, "out": TC_ACT_OK}[hook],
                                              bytes(unknown))


# ---------------------------------------------------------------- counters, and a sweep

def test_frontend_and_backend_counters_of_flows_from_outside(node):
    from ebpflb.dataplane.percpu import read_flow_stats

    def counters():
        return (read_flow_stats(node.bpf, "lb4_svc_stats").get(svc_id),
                read_flow_stats(node.bpf, "lb4_backend_stats").get(backend_id))

    snap = node.program(endpoints=[(REMOTE_BE, "node-1")])
    svc_id = snap[SERVICES][SvcKey(*NODEPORT, 6)].svc_id
    syn = tcp(CLIENT, 40000, *NODEPORT, payload=b"x" * 10)
    assert node.run("xdp", syn).retval == XDP_TX
    backend_id = node.ct(CLIENT, 40000, *NODEPORT, 6).backend_id
    port = node.ct(CLIENT, 40000, *NODEPORT, 6).nat2_port
    before = counters()
    synack = tcp(REMOTE_BE, 8080, NODE_IP, port, "SA", ack=1011, payload=b"y" * 30,
                 mac=(GW_MAC, NODE_MAC))
    assert node.run("xdp", synack).retval == XDP_TX
    ack = tcp(CLIENT, 40000, *NODEPORT, "A", seq=1011, ack=5001)
    assert node.run("tc", ack).retval == TC_ACT_REDIRECT
    after = counters()
    for b, a in zip(before, after):
        assert (a.packets_in - b.packets_in, a.bytes_in - b.bytes_in, a.packets_out - b.packets_out,
                a.bytes_out - b.bytes_out, a.conns - b.conns) == (1, len(ack), 1, len(synack), 0)
    assert before[0].conns >= 1 and before[0].bytes_in >= len(syn)


@pytest.mark.parametrize("hook", HOOKS)
def test_sweep_of_remote_flows_keeps_every_checksum_right(node, hook):
    """Many flows with varied addresses, ports, IP ids, TTLs, TOS and payloads (so the checksums
    take many values, carries included) through SNAT and back: exact bytes every time."""
    import random

    rnd = random.Random(5)
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    for _ in range(150):
        node.dp.clear_conntrack()
        fe_ip, fe_port, proto = rnd.choice([(*NODEPORT, 6), (*LOADBALANCER, 6), (*UDP_NODEPORT, 17),
                                            (LB_IP, 53, 17)])
        client = CLIENT if rnd.random() < 0.5 else CLIENT_NO_NEIGH
        sport = rnd.randrange(1, 65536)
        payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 41)))
        ip = dict(ttl=rnd.randrange(2, 256), id=rnd.randrange(65536), tos=rnd.randrange(256))
        if proto == 6:
            l4 = TCP(sport=sport, dport=fe_port, flags="S", seq=rnd.randrange(1 << 32))
        else:
            l4 = UDP(sport=sport, dport=fe_port, chksum=0 if rnd.random() < 0.2 else None)
        fwd = Ether(bytes(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=client, dst=fe_ip, **ip)
                          / l4 / Raw(payload)))
        port = node.snat_port(client, sport, fe_ip, fe_port, proto)
        res = node.run(hook, fwd)
        assert res.retval == FORWARD[hook]
        assert res.data == rewritten(fwd, src=NODE_IP, sport=port, dst=REMOTE_BE, ttl_dec=1,
                                     dport=8080 if proto == 6 else 5353,
                                     macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
        # The reply, to a client with no neighbour at XDP: TC finishes it.
        ip = dict(ttl=rnd.randrange(2, 256), id=rnd.randrange(65536), tos=rnd.randrange(256))
        back = l4.copy()
        back.sport, back.dport = (8080 if proto == 6 else 5353), port
        if proto == 6:
            back.flags, back.ack = "SA", l4.seq + 1
        reply = Ether(bytes(Ether(src=GW_MAC, dst=NODE_MAC) / IP(src=REMOTE_BE, dst=NODE_IP, **ip)
                            / back / Raw(payload[::-1])))
        res = node.run(hook, reply)
        if hook == "xdp" and client == CLIENT_NO_NEIGH:
            assert (res.retval, res.data) == (XDP_PASS, bytes(reply))
            continue
        assert res.retval == FORWARD[hook]
        assert res.data == rewritten(reply, src=fe_ip, sport=fe_port, dst=client, dport=sport,
                                     ttl_dec=1, macs=(NODE_MAC, CLIENT_MAC) if hook == "xdp" else None)


def _id_for_output_ip_checksum(want, src, dst, ttl, tot_len, proto):
    """The IP id that gives the rewritten header (these addresses, this TTL) checksum `want`:
    the checksum is ~(S + id) in one's complement, S the sum of the header with id 0."""
    from scapy.utils import checksum

    def header(ident):
        return bytes(IP(src=src, dst=dst, ttl=ttl, id=ident, len=tot_len, proto=proto, chksum=0))

    s0 = 0xffff ^ checksum(header(0))
    target = 0xffff ^ want
    ident = target - s0 if target >= s0 else target - s0 + 0xffff
    assert checksum(header(ident)) == want
    return ident


@pytest.mark.parametrize("want", [0x0000, 0x0001, 0x0080, 0x0100], ids=lambda w: f"{w:#06x}")
@pytest.mark.parametrize("hook", HOOKS)
def test_ttl_decrement_where_the_ip_checksum_carries(node, hook, want):
    """The TTL decrement adds 0x0100 to the header checksum; for checksums from 0xfeff up the
    addition wraps and needs the end-around carry (RFC 1141). The ids are chosen so the output's
    checksum lands on each side of that edge."""
    node.program(endpoints=[(REMOTE_BE, "node-1")])
    tot_len = 20 + 20
    ident = _id_for_output_ip_checksum(want, NODE_IP, REMOTE_BE, 63, tot_len, 6)
    syn = tcp(CLIENT, 40000, *NODEPORT)
    syn[IP].id = ident
    port = node.snat_port(CLIENT, 40000, *NODEPORT, 6)
    res = node.run(hook, syn)
    assert res.retval == FORWARD[hook]
    assert Ether(res.data)[IP].chksum == want
    assert res.data == rewritten(syn, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=8080, ttl_dec=1,
                                 macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)


def test_snat_ports_in_use_are_skipped_up_to_the_probe_limit(node):
    """Sixteen probes from the flow's hash: all taken by live flows to the same backend -> the
    flow is dropped (snat_exhausted); once the first one has expired, its port is taken again."""
    import time

    from ebpflb.dataplane.bcc_maps import port_to_be16

    node.program(endpoints=[(REMOTE_BE, "node-1")])
    ct4 = node.bpf[b"ct4"]
    start = node.snat_port(CLIENT, 40001, *UDP_NODEPORT, 17)
    span = node.snat_max - node.snat_min + 1
    ports = [node.snat_min + (start - node.snat_min + i) % span for i in range(16)]

    def occupy(port, last_seen_ns):
        # The reply entry of another client's flow through this port (what ct4_create_snat writes).
        key = ct4.Key(saddr=ip_to_be32(REMOTE_BE), daddr=ip_to_be32(NODE_IP), sport=port_to_be16(5353),
                      dport=port_to_be16(port), proto=17, dir=1, pad=0)
        ct4[key] = ct4.Leaf(created_ns=last_seen_ns, last_seen_ns=last_seen_ns,
                            nat_addr=ip_to_be32(NODE_IP), nat_port=port_to_be16(30053),
                            flags=CT_F_EXTERNAL | CT_F_SNAT, nat2_addr=ip_to_be32("192.168.200.99"),
                            nat2_port=port_to_be16(port))

    now = time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
    for port in ports:
        occupy(port, now)
    dgram = udp(CLIENT, 40001, *UDP_NODEPORT)
    for hook in HOOKS:
        before = node.stats()
        res = node.run(hook, dgram)
        assert res.retval == DROP[hook]
        assert delta(before, node.stats()) == {v(hook, "drop"): 1, "snat_exhausted": 1}
        assert node.ct(CLIENT, 40001, *UDP_NODEPORT, 17) is None
    occupy(ports[0], 1)  # idle since boot: expired
    res = node.run("tc", dgram)
    assert res.retval == TC_ACT_REDIRECT
    assert Ether(res.data)[UDP].sport == ports[0]
    assert node.ct(REMOTE_BE, 5353, NODE_IP, ports[0], 17, reply=True).nat2_addr == CLIENT



@pytest.mark.parametrize("frontend", FRONTENDS, ids=list(FRONTENDS))
def test_pods_reach_a_local_policy_frontend_as_a_cluster_one(node, frontend):
    """kube-proxy: a pod's traffic to the NodePort or load balancer IP of an
    externalTrafficPolicy Local Service goes to every endpoint ("pod traffic for ... external
    destinations" -> the cluster chain); only traffic from outside stays on the node."""
    node.program(endpoints=[(REMOTE_BE, "node-1")], etp="Local")
    pkt = tcp(POD_CLIENT, 40000, *FRONTENDS[frontend])
    res = testrun.test_run(node.dp.progs.from_pod.fd, bytes(pkt))
    assert res.retval == TC_ACT_OK, Ether(res.data).summary()
    assert res.data == rewritten(pkt, dst=REMOTE_BE, dport=8080)


@pytest.mark.parametrize("where", ["local", "remote"])
@pytest.mark.parametrize("hook", HOOKS)
def test_ethernet_padding_is_kept_and_ignored(node, hook, where):
    """A minimum-size frame carries padding after the IP packet: it is no part of the packet, so
    the rewrite leaves it as it was and the checksums stay those of the packet alone."""
    backend = LOCAL_BE if where == "local" else REMOTE_BE
    node.program(endpoints=[(backend, "node-0" if where == "local" else "node-1")])
    dgram = udp(CLIENT, 40001, *UDP_NODEPORT, payload=b"q")
    padding = b"\xaa" * (60 - len(dgram))
    res = node.run(hook, bytes(dgram) + padding)
    if where == "local":
        exp = rewritten(dgram, dst=LOCAL_BE, dport=5353)
        assert res.retval == PASS[hook]
    else:
        port = node.snat_port(CLIENT, 40001, *UDP_NODEPORT, 17)
        exp = rewritten(dgram, src=NODE_IP, sport=port, dst=REMOTE_BE, dport=5353, ttl_dec=1,
                        macs=(NODE_MAC, GW_MAC) if hook == "xdp" else None)
        assert res.retval == FORWARD[hook]
    assert res.data == exp + padding


def test_snat_ports_of_closed_flows_are_held_then_reused_when_nothing_else_is_free(node):
    """A closed TCP flow keeps its SNAT port through the backend's TIME_WAIT (tcp_time_wait),
    past tcp_close: a new flow probes on to a free port. Only when all sixteen probes find a
    taken port is the first port held by a closed flow past tcp_close reused (snat_reuse), rather
    than dropping the flow; a closed flow younger than tcp_close is never taken."""
    import time

    from ebpflb.dataplane.bcc_maps import port_to_be16

    node.program(endpoints=[(REMOTE_BE, "node-1")])
    ct4 = node.bpf[b"ct4"]
    start = node.snat_port(CLIENT, 40002, *NODEPORT, 6)
    span = node.snat_max - node.snat_min + 1
    ports = [node.snat_min + (start - node.snat_min + i) % span for i in range(16)]
    timeouts = node.dp.config.ct_timeouts

    def occupy(port, idle_s, closing):
        key = ct4.Key(saddr=ip_to_be32(REMOTE_BE), daddr=ip_to_be32(NODE_IP), sport=port_to_be16(8080),
                      dport=port_to_be16(port), proto=6, dir=1, pad=0)
        seen = time.monotonic_ns() - int(idle_s * 1e9)
        ct4[key] = ct4.Leaf(created_ns=seen, last_seen_ns=seen, nat_addr=ip_to_be32(NODE_IP),
                            nat_port=port_to_be16(30080),
                            flags=CT_F_EXTERNAL | CT_F_SNAT | 0x1 | (0x2 if closing else 0),
                            nat2_addr=ip_to_be32("192.168.200.99"), nat2_port=port_to_be16(port))

    in_time_wait = timeouts.tcp_close + 5  # past tcp_close, well within tcp_time_wait
    assert in_time_wait < timeouts.tcp_time_wait
    occupy(ports[0], in_time_wait, closing=True)
    syn = tcp(CLIENT, 40002, *NODEPORT)
    res = node.run("tc", syn)
    assert res.retval == FORWARD["tc"]
    assert Ether(res.data)[TCP].sport == ports[1], "the port in TIME_WAIT was not skipped"
    node.dp.clear_conntrack()
    occupy(ports[0], timeouts.tcp_close / 2, closing=True)  # too fresh to reuse
    occupy(ports[1], in_time_wait, closing=True)
    for port in ports[2:]:
        occupy(port, 0, closing=False)
    before = node.stats()
    res = node.run("tc", syn)
    assert res.retval == FORWARD["tc"]
    assert Ether(res.data)[TCP].sport == ports[1]
    assert delta(before, node.stats()) == {"snat_reuse": 1, "node_in/new": 1,
                                           "conntrack_insert": 1, "node_forward": 1}
    reply = node.ct(REMOTE_BE, 8080, NODE_IP, ports[1], 6, reply=True)
    assert reply.nat2_addr == CLIENT, "the old flow's reply entry was not replaced"


def test_stats_verdicts_shows_the_global_counters(node):
    """`ebpflb stats --verdicts` reads the same per-CPU verdict counters the programs bump."""
    import json
    import subprocess
    import sys

    node.program(endpoints=[(LOCAL_BE, "node-0")])
    node.run("tc", tcp(CLIENT, 40000, CLUSTER_IP, 80))  # a ClusterIP from outside: dropped
    out = subprocess.run([sys.executable, "-m", "ebpflb.cli", "stats", "--verdicts", "-o", "json",
                          "--pin-dir", node.dp.config.pin_dir], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    counters = json.loads(out)
    flat = {**counters["drops"], **counters["events"],
            **{f"{hook}/{verdict}": n for hook, verdicts in counters["verdicts"].items()
               for verdict, n in verdicts.items()}}
    assert flat == node.stats() and counters["drops"]["external_clusterip"] >= 1
    assert counters["verdicts"]["node_in"]["drop"] >= 1
