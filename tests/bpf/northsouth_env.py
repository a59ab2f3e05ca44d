"""The north-south test bench shared by tests/bpf/test_northsouth*.py (and borrowed by the
hardening and real-frame tests): a namespace with a node device, a second node device and a pod
device, the node's entries in lb4_node_ifs, the programs run as XDP or TC on them, the Service
manifests, packet builders and the expected-output helpers. The namespace and those entries are
removed at the end of each module that uses the `node` fixture."""
import socket
import subprocess
from ipaddress import IPv4Address
from typing import Dict

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.dataplane import testrun
from ebpflb.dataplane.bcc_maps import lookup_conntrack
from ebpflb.dataplane.device_maps import write_device_map
from ebpflb.flowhash import FLOW_HASH_SEED, flow_hash
from ebpflb.lab.nsops import create_netns, in_netns, remove_netns, write_sysctls
from ebpflb.manifests import parse_documents
from ebpflb.maps import NODE_IFS, NodeIfValue
from ebpflb.model import DesiredState, desired_state
from ebpflb.reconcile import reconcile

from ..conftest import unique

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


def set_node_devices(dataplane, addresses: Dict[int, str], ifindexes) -> None:
    """lb4_node_ifs for the node devices `ifindexes` as the agent's NodeAttacher writes it, through
    the same plan and apply: ifindex -> its address (`addresses`; none: the entries go)."""
    write_device_map(dataplane.writer, NODE_IFS,
                     {i: NodeIfValue(a) for i, a in addresses.items()},
                     only=lambda key: key in set(ifindexes))


@pytest.fixture(scope="module")
def node(dataplane):
    ns = unique("ebpflb-ns-test-")
    create_netns(ns)
    entered: Dict[int, str] = {}
    try:
        write_sysctls(ns, {"net.ipv4.ip_forward": "1"})  # fib lookups need forwarding on
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=NETNS_SETUP, text=True, check=True,
                       capture_output=True)
        with in_netns(ns):  # (/sys shows the namespace it was mounted in, not this one)
            ifindexes = {dev: socket.if_nametoindex(dev) for dev in (NODE_DEV, NODE2_DEV, POD_DEV)}
        entered = {ifindexes[NODE_DEV]: NODE_IP, ifindexes[NODE2_DEV]: NODE2_IP}
        set_node_devices(dataplane, entered, entered)
        yield Node(dataplane, ns, ifindexes)
    finally:
        set_node_devices(dataplane, {}, entered)
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


