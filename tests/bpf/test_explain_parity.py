"""`ebpflb explain` predicts what the programs do, checked against the real programs run with
BPF_PROG_TEST_RUN, maps programmed through the real apply path.

- Selection: 10,000 random new flows per algorithm (hash-mod "random", Maglev, weighted Maglev)
  through lb4_from_pod: explain names the backend the program picks.
- Every other decision, on pod devices (lb4_from_pod) and a node device (lb4_node_in): a table of
  named cases, then a seeded random sweep over devices, sources, frontends, TCP flags and the
  conntrack state a flow finds (none, half-open, established, closed, expired, its forward entry
  lost, created on another device, a live flow of another frontend on its reply tuple, a sibling
  flow's affinity binding, the reply of a translated flow). Each case runs the packets that make
  the state, then gives explain the snapshot, the conntrack entries and the device and compares,
  for the packet under test: the program's action (TC_ACT_OK / SHOT / REDIRECT), the addresses
  and ports it leaves with (a reject: the RST or ICMP error, from the frontend), and which global
  counters moved (its one verdict counter, its drop reason and events), with what explain says.

The programs run inside a namespace the module creates (skb->ifindex and bpf_fib_lookup resolve
there): a node device with 192.168.200.10/24 whose route to 10.244.1.0/24 (node-1's pods) makes
those backends remote, and three pod devices: pod0 (the client pod 10.244.0.2, its address listed
in lb4_pod_addrs), pod1 (not listed: any source passes; this node's pod range routes to it, so
every address the sweep uses has a route) and pod2 (the backend pod 10.244.0.11, listed). The
namespace and every entry the module wrote are removed at the end.
"""
import collections
import random
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Dict, List, Optional, Tuple

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from ebpflb.apply import read_snapshot
from ebpflb.dataplane import testrun
from ebpflb.dataplane.bcc_maps import (be16_to_port, be32_to_ip, ip_to_be32, lookup_affinity,
                                       lookup_conntrack, port_to_be16)
from ebpflb.explain import (HAIRPIN_ADDR, NODE, POD, AffinityView, ConntrackView, CtKey, Device,
                            Explanation, Flow, explain)
from ebpflb.lab.nsops import create_netns, in_netns, remove_netns, write_sysctls
from ebpflb.dataplane.device_maps import write_device_map
from ebpflb.manifests import parse_documents
from ebpflb.maps import (BACKENDS, NODE_IFS, POD_ADDR_MARKER, POD_ADDRS, SERVICES, SVC_F_ETP_LOCAL,
                         NodeIfValue, PodAddrKey, SvcKey)
from ebpflb.model import DesiredState, desired_state
from ebpflb.reconcile import reconcile

from ..conftest import unique

pytestmark = pytest.mark.bpf

N_FLOWS = 10_000
BACKENDS_7 = [f"10.244.1.{i}" for i in range(1, 8)]


# ================================================================ selection

def manifest(algorithm: str, vip: str, weights: str = "") -> str:
    eps = "\n".join(f"- {{addresses: [{ip}], conditions: {{ready: true}}}}" for ip in BACKENDS_7)
    return f"""
apiVersion: v1
kind: Service
metadata:
  name: svc-{algorithm}
  namespace: parity
  annotations:
    lb.ebpflb.io/algorithm: {algorithm}
    lb.ebpflb.io/maglev-table-size: "4099"
    lb.ebpflb.io/backend-weights: "{weights}"
spec:
  clusterIP: {vip}
  ports: [{{name: p, port: 443, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-{algorithm}-a, namespace: parity, labels: {{kubernetes.io/service-name: svc-{algorithm}}}}}
addressType: IPv4
ports: [{{name: p, port: 8443, protocol: TCP}}]
endpoints:
{eps}
"""


def syn(src: str, sport: int, dst: str, dport: int) -> bytes:
    """A minimal Ethernet/IPv4/TCP SYN; checksums are irrelevant to backend selection."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp


@pytest.mark.parametrize("algorithm,weights", [("random", ""), ("maglev", ""),
                                               ("maglev", "10.244.1.3=0,10.244.1.5=3")],
                         ids=["random", "maglev", "maglev-weighted"])
def test_explain_predicts_the_program(dataplane, algorithm, weights):
    vip = "10.96.7.1"
    dataplane.program(manifest(algorithm, vip, weights))
    dataplane.clear_conntrack()
    snapshot = read_snapshot(dataplane.writer)
    rng = random.Random(f"{algorithm}{weights}")
    picks = {}
    try:
        for _ in range(N_FLOWS):
            src = f"10.{rng.randrange(244, 246)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            sport = rng.randrange(1024, 65536)
            out = testrun.test_run(dataplane.progs.from_pod.fd, syn(src, sport, vip, 443)).data
            got = f"{socket.inet_ntoa(out[30:34])}:{struct.unpack('!H', out[36:38])[0]}"
            predicted = explain(snapshot, Flow(src, sport, vip, 443, "TCP"))
            # A source that is one of the backends may reach itself: the destination is the same.
            assert predicted.verdict in ("dnat", "hairpin")
            assert got == predicted.backend, (src, sport, predicted)
            picks[got] = picks.get(got, 0) + 1
    finally:
        dataplane.clear_conntrack()
    # Every backend of positive weight is used; a weight-0 backend never is.
    expected = {f"{ip}:8443" for ip in BACKENDS_7} - ({"10.244.1.3:8443"} if weights else set())
    assert set(picks) == expected
    if weights:
        # weight 3 against weight 1: about three times the flows (loose bounds, 10k samples)
        assert 2.4 < picks["10.244.1.5:8443"] / picks["10.244.1.1:8443"] < 3.6


def test_explain_reports_the_conntrack_entry_and_a_pass(dataplane):
    vip = "10.96.7.1"
    dataplane.program(manifest("maglev", vip))
    dataplane.clear_conntrack()
    out = testrun.test_run(dataplane.progs.from_pod.fd, syn("10.244.9.9", 40000, vip, 443)).data
    entry = lookup_conntrack(dataplane.progs.bpf, "10.244.9.9", 40000, vip, 443, 6)
    assert entry is not None and entry.nat_addr == socket.inet_ntoa(out[30:34])
    snap = read_snapshot(dataplane.writer)
    e = explain(snap, Flow("10.244.9.9", 40000, vip, 443, "TCP"),
                ConntrackView(f"{entry.nat_addr}:{entry.nat_port}", entry.backend_id, 0.0, 0.0))
    assert e.reason.startswith("an established flow") and e.backend == e.hashed_backend
    assert explain(snap, Flow("10.244.9.9", 40000, vip, 444, "TCP")).verdict == "pass"
    dataplane.clear_conntrack()


# ================================================================ every decision: the world

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
ACTIONS = {TC_ACT_OK: "ok", TC_ACT_SHOT: "shot", TC_ACT_REDIRECT: "redirect"}

NODE_DEV, NODE_IP, NODE_MAC = "node0", "192.168.200.10", "02:aa:00:00:00:10"
CLIENT, CLIENT_MAC = "192.168.200.2", "02:aa:00:00:00:02"  # inside the source ranges
DENIED = "192.168.200.100"  # outside them
GW, GW_MAC = "192.168.200.11", "02:aa:00:00:00:11"  # next hop to node-1's pods
LB_IP = "192.168.200.200"
REMOTE_NET = IPv4Network("10.244.1.0/24")  # node-1's pods: routed out of the node device
POD_CLIENT = "10.244.0.2"  # the pod behind pod0
BACKEND_POD = "10.244.0.11"  # a backend pod, behind pod2
STRANGER = "10.244.0.50"  # nobody's address
POD_MACS = ("02:bb:00:00:00:02", "02:bb:00:00:00:01")
# pod device -> the addresses lb4_pod_addrs lists for it (None: the device is not listed)
POD_DEVS: Dict[str, Optional[frozenset]] = {
    "pod0": frozenset({POD_CLIENT}), "pod1": None, "pod2": frozenset({BACKEND_POD})}

NETNS_SETUP = f"""\
link add {NODE_DEV} type veth peer name {NODE_DEV}p
link set {NODE_DEV} address {NODE_MAC} up
link set {NODE_DEV}p up
addr add {NODE_IP}/24 dev {NODE_DEV}
neigh add {CLIENT} lladdr {CLIENT_MAC} dev {NODE_DEV} nud permanent
neigh add {GW} lladdr {GW_MAC} dev {NODE_DEV} nud permanent
route add {REMOTE_NET} via {GW} dev {NODE_DEV}
""" + "".join(f"link add {d} type veth peer name {d}p\nlink set {d} up\nlink set {d}p up\n"
              for d in POD_DEVS) + "route add 10.244.0.0/24 dev pod1\n"


def service(name: str, endpoints, spec: str, ports=(("http", 80, "TCP", 8080),),
            status: str = "") -> str:
    """A Service and its EndpointSlice; endpoints as (address, node name); each port as
    (name, port, protocol, targetPort[, nodePort]); `status`: the Service's status lines."""
    port_lines = "".join(
        f"  - {{name: {p[0]}, port: {p[1]}, protocol: {p[2]}, targetPort: {p[3]}"
        + (f", nodePort: {p[4]}" if len(p) > 4 else "") + "}\n" for p in ports)
    eps = "".join(f"- {{addresses: [{a}], nodeName: {n}, conditions: {{ready: true}}}}\n"
                  for a, n in endpoints)
    slice_ports = ", ".join(f"{{name: {p[0]}, port: {p[3]}, protocol: {p[2]}}}" for p in ports)
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: parity}}
spec:
{spec}  ports:
{port_lines}{status}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-a, namespace: parity, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{slice_ports}]
endpoints:{(chr(10) + eps) if eps else " []"}
"""


HTTP_DNS = (("http", 80, "TCP", 8080), ("dns", 53, "UDP", 5353))


def world(removed: Tuple[str, ...] = (), without: Tuple[str, ...] = ()) -> str:
    """Every kind of frontend a decision depends on; `removed`: backends left out of `web`;
    `without`: Services left out (deleted)."""
    web = [(a, n) for a, n in ((BACKEND_POD, "node-0"), ("10.244.0.12", "node-0"),
                               ("10.244.1.11", "node-1")) if a not in removed]
    return "".join(text for text in [
        service("web", web, "  clusterIP: 10.96.1.1\n", HTTP_DNS),
        service("edge", [(BACKEND_POD, "node-0"), ("10.244.1.11", "node-1"),
                         ("10.244.1.12", "node-1")],
                "  type: LoadBalancer\n  clusterIP: 10.96.1.2\n"
                "  loadBalancerSourceRanges: [192.168.200.0/28]\n",
                (("http", 80, "TCP", 8080, 30080), ("dns", 53, "UDP", 5353, 30053)),
                f"status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}\n"),
        service("local", [("10.244.0.12", "node-0"), ("10.244.1.12", "node-1")],
                "  type: NodePort\n  clusterIP: 10.96.1.3\n  externalTrafficPolicy: Local\n",
                (("http", 80, "TCP", 8080, 30081), ("dns", 53, "UDP", 5353, 30054))),
        service("faraway", [("10.244.1.13", "node-1")],
                "  type: NodePort\n  clusterIP: 10.96.1.4\n  externalTrafficPolicy: Local\n",
                (("http", 80, "TCP", 8080, 30082),)),
        service("empty", [], "  type: NodePort\n  clusterIP: 10.96.1.5\n",
                (("http", 80, "TCP", 8080, 30083), ("dns", 53, "UDP", 5353, 30055))),
        service("self", [(POD_CLIENT, "node-0")], "  clusterIP: 10.96.1.6\n"),
        service("self-b", [(POD_CLIENT, "node-0")], "  clusterIP: 10.96.1.10\n"),
        service("sticky", [(BACKEND_POD, "node-0"), ("10.244.0.12", "node-0"),
                           ("10.244.1.11", "node-1")],
                "  clusterIP: 10.96.1.7\n  sessionAffinity: ClientIP\n"
                "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}\n"),
        service("solo-a", [("10.244.0.12", "node-0")], "  type: NodePort\n  clusterIP: 10.96.1.8\n",
                (("http", 80, "TCP", 8080, 30084),)),
        service("solo-b", [("10.244.0.12", "node-0")], "  type: NodePort\n  clusterIP: 10.96.1.9\n",
                (("http", 80, "TCP", 8080, 30085),)),
    ] if not any(f"metadata: {{name: {name}, namespace" in text for name in without))


def frontends(snapshot) -> List[Tuple[str, int, str]]:
    return sorted({(k.vip, k.port, "TCP" if k.proto == 6 else "UDP")
                   for k in snapshot[SERVICES]})


class World:
    """The namespace, the programs, and how a packet runs through them there."""

    def __init__(self, dp, ns: str, ifindexes: Dict[str, int]):
        self.dp, self.ns, self.ifindexes = dp, ns, ifindexes
        self.bpf = dp.progs.bpf
        self.snapshot = None

    def fresh(self) -> "World":
        """The whole world programmed anew, with no flow of an earlier one left to drain."""
        self.dp.clear_conntrack()
        self.program(world())
        return self

    def program(self, text: str) -> None:
        m = parse_documents(text, "<parity>")  # raises on any manifest error
        state = desired_state(m.services, m.slices, node_name="node-0", node_addresses=[NODE_IP])
        reconcile(state, self.dp.writer, self.dp.config.map_limits)
        self.snapshot = read_snapshot(self.dp.writer)

    def run(self, dev: str, frame: bytes):
        prog = self.dp.progs.node_in if dev == NODE_DEV else self.dp.progs.from_pod
        with in_netns(self.ns):
            return testrun.test_run_ctx(prog.fd, frame,
                                        testrun.skb_ctx(ifindex=self.ifindexes[dev]))

    def device(self, dev: str) -> Device:
        if dev == NODE_DEV:
            remote = {b.addr: NODE_IP for b in self.snapshot[BACKENDS].values()
                      if IPv4Address(b.addr) in REMOTE_NET}
            return Device(NODE, self.ifindexes[dev], remote=remote)
        return Device(POD, self.ifindexes[dev], POD_DEVS[dev])

    def conntrack(self) -> Dict[CtKey, ConntrackView]:
        """Both conntrack tables as explain reads them (ct4 found first, as the programs do)."""
        now = time.monotonic_ns()
        out: Dict[CtKey, ConntrackView] = {}
        for name, half_open in ((b"ct4_syn", True), (b"ct4", False)):
            for k, v in self.bpf[name].items():
                key = CtKey(be32_to_ip(k.saddr), be16_to_port(k.sport), be32_to_ip(k.daddr),
                            be16_to_port(k.dport), k.proto, bool(k.dir))
                nat2 = (f"{be32_to_ip(v.nat2_addr)}:{be16_to_port(v.nat2_port)}"
                        if v.nat2_addr else None)
                out[key] = ConntrackView(
                    f"{be32_to_ip(v.nat_addr)}:{be16_to_port(v.nat_port)}", v.backend_id,
                    max(0, now - v.created_ns) / 1e9, max(0, now - v.last_seen_ns) / 1e9,
                    nat2, v.flags, half_open, v.ifindex)
        return out

    def age_all(self, seconds: int) -> None:
        """Moves every conntrack entry's last packet `seconds` into the past."""
        past = time.monotonic_ns() - seconds * 1_000_000_000
        for name in (b"ct4", b"ct4_syn"):
            t = self.bpf[name]
            for k, v in list(t.items()):
                v.last_seen_ns = past
                t[k] = v

    def forget(self, flow: Flow) -> None:
        """Deletes a flow's forward entry (an LRU eviction)."""
        for name in (b"ct4", b"ct4_syn"):
            t = self.bpf[name]
            t.pop(t.Key(saddr=ip_to_be32(flow.saddr), daddr=ip_to_be32(flow.daddr),
                        sport=port_to_be16(flow.sport), dport=port_to_be16(flow.dport),
                        proto=flow.proto, dir=0, pad=0), None)

    def affinity(self, dev: str, flow: Flow) -> Optional[AffinityView]:
        key = SvcKey(flow.daddr, flow.dport, flow.proto)
        svc = self.snapshot[SERVICES].get(key)
        if svc is not None and dev == NODE_DEV and svc.flags & SVC_F_ETP_LOCAL:
            svc = self.snapshot[SERVICES].get(key._replace(scope=1))
        bound = lookup_affinity(self.bpf, svc.svc_id, flow.saddr) if svc else None
        if bound is None:
            return None
        return AffinityView(bound[0], max(0, time.monotonic_ns() - bound[1]) / 1e9)


@pytest.fixture(scope="module")
def parity_world(dataplane):
    ns = unique("ebpflb-ns-parity-")
    create_netns(ns)
    ifindexes = {}
    try:
        write_sysctls(ns, {"net.ipv4.ip_forward": "1"})  # fib lookups need forwarding on
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=NETNS_SETUP, text=True, check=True,
                       capture_output=True)
        with in_netns(ns):
            ifindexes = {d: socket.if_nametoindex(d) for d in (NODE_DEV, *POD_DEVS)}
        # What the agent writes, through the same plan and apply: the node device's SNAT address,
        # each listed pod device's addresses with its marker.
        write_device_map(dataplane.writer, NODE_IFS, {ifindexes[NODE_DEV]: NodeIfValue(NODE_IP)},
                         only=lambda key: key == ifindexes[NODE_DEV])
        write_device_map(dataplane.writer, POD_ADDRS,
                         {PodAddrKey(ifindexes[dev], a): 1 for dev, addrs in POD_DEVS.items()
                          if addrs for a in set(addrs) | {POD_ADDR_MARKER}})
        yield World(dataplane, ns, ifindexes)
    finally:
        if NODE_DEV in ifindexes:
            write_device_map(dataplane.writer, NODE_IFS, {},
                             only=lambda key: key == ifindexes[NODE_DEV])
        write_device_map(dataplane.writer, POD_ADDRS, {})
        dataplane.progs.bpf[b"lb4_affinity"].clear()
        dataplane.clear_conntrack()  # first: frontends with no flows go at once, none drains
        reconcile(DesiredState(frontends={}, skipped=()), dataplane.writer,
                  dataplane.config.map_limits)
        remove_netns(ns)


# ================================================================ every decision: cases

@dataclass(frozen=True)
class Case:
    """A packet on a device, after the packets that give its flow a state (`pre`)."""
    dev: str
    src: str
    sport: int
    dst: str
    dport: int
    proto: str = "TCP"
    flags: str = "S"
    pre: str = "none"  # see PRE_STATES
    note: str = ""
    # The verdict a new flow's SYN gets on the device: the source port is moved up from `sport`
    # until it does (to reach a remote backend, or a pod's own address, by the hash).
    want: str = ""

    @property
    def flow(self) -> Flow:
        return Flow(self.src, self.sport, self.dst, self.dport, self.proto,
                    self.flags if self.proto == "TCP" else "")


PRE_STATES = {
    "none": "no state",
    "syn": "its SYN went first (half-open)",
    "est": "SYN, then ACK (established)",
    "closed": "SYN, ACK, then RST (closing)",
    "expired": "its first packet went 5 minutes ago",
    "lost": "SYN, then its forward entry evicted (the reply entry lives)",
    "lost-est": "SYN, ACK, then its forward entry evicted",
    "other-dev": "its SYN went first through another device",
    "other-fe": "the same client and port went first to another frontend",
    "sibling": "another flow of the same client to the frontend went first",
    "reply": "its first packet went; the packet is the reply to what the program made of it",
    "removed": "its SYN went; then the backend it got was removed from the Service",
    "port-nat": "the same client and port went to another frontend, then its SYN (a new port)",
    "port-nat-reply": "as port-nat; the packet is the reply to what the program made of it",
    "port-nat-lost": "as port-nat, then its forward entry evicted",
    "drained": "SYN, ACK, then its Service was deleted (a TCP frontend drains)",
}

OTHER_DEV = {"pod0": "pod1", "pod1": "pod0", "pod2": "pod1", NODE_DEV: "pod1"}
# Frontends sharing a backend: one client port reaching it through both holds one reply tuple.
OTHER_FE = {("10.96.1.9", 80): ("10.96.1.8", 80), ("10.96.1.8", 80): ("10.96.1.9", 80),
            (NODE_IP, 30085): (NODE_IP, 30084), (NODE_IP, 30084): (NODE_IP, 30085),
            ("10.96.1.10", 80): ("10.96.1.6", 80), ("10.96.1.6", 80): ("10.96.1.10", 80)}

WEB, WEB_DNS = ("10.96.1.1", 80), ("10.96.1.1", 53)
LB, LB_DNS = (LB_IP, 80), (LB_IP, 53)
NODEPORT = (NODE_IP, 30080)
LOCAL_NP, LOCAL_DNS = (NODE_IP, 30081), (NODE_IP, 30054)
FARAWAY_NP = (NODE_IP, 30082)
EMPTY, EMPTY_DNS = ("10.96.1.5", 80), ("10.96.1.5", 53)
EMPTY_NP = (NODE_IP, 30083)
SELF = ("10.96.1.6", 80)
STICKY = ("10.96.1.7", 80)
SOLO_B = ("10.96.1.9", 80)
SOLO_B_NP = (NODE_IP, 30085)
SELF_B = ("10.96.1.10", 80)


def case(dev, src, sport, dst, proto="TCP", flags="S", pre="none", note="", want=""):
    return Case(dev, src, sport, dst[0], dst[1], proto, flags, pre, note, want)


# Each decision the issue names, at least once, by name (the sweep below mixes them further).
CASES = [
    case("pod0", POD_CLIENT, 40000, WEB, note="new flow: the hash picks the backend"),
    case("pod0", POD_CLIENT, 40001, WEB_DNS, "UDP", note="new UDP flow"),
    case("pod0", POD_CLIENT, 40002, ("10.96.1.1", 81), note="not a frontend: pass"),
    case("pod0", POD_CLIENT, 40003, ("10.96.200.1", 80), "UDP", note="not a VIP: pass"),
    case("pod0", POD_CLIENT, 40004, SELF, note="hairpin: a pod reaching itself"),
    case("pod0", POD_CLIENT, 40005, SELF, "TCP", "A", note="hairpin without state"),
    case("pod0", POD_CLIENT, 40006, SELF, "TCP", "A", "est", note="hairpin, established"),
    case("pod0", POD_CLIENT, 40007, SELF, "TCP", "SA", "reply", note="hairpin reply"),
    case("pod0", POD_CLIENT, 40008, (HAIRPIN_ADDR, 40008), note="to the hairpin address, no flow"),
    case("pod1", "127.0.0.1", 40009, WEB, note="bad source: loopback"),
    case("pod1", "10.96.1.2", 40010, WEB, note="bad source: a VIP"),
    case("pod1", "10.96.1.1", 40011, WEB_DNS, "UDP", note="bad source: its own destination"),
    case("pod1", "127.0.0.1", 40012, WEB, "TCP", "A", note="bad source, not a SYN"),
    case("pod0", "127.0.0.1", 40034, WEB, note="a listed device: spoofed before bad source"),
    case("pod2", BACKEND_POD, 40035, WEB, note="hairpin through a Service of many backends",
         want="hairpin"),
    case("pod1", STRANGER, 40036, LB, note="from a pod, outside the source ranges"),
    case("pod0", STRANGER, 40013, WEB, note="spoofed: not the pod's address"),
    case("pod2", POD_CLIENT, 40014, WEB_DNS, "UDP", note="spoofed: another pod's address"),
    case("pod1", STRANGER, 40015, WEB, note="an unlisted device: any source"),
    case("pod0", POD_CLIENT, 40016, WEB, "TCP", "A", "other-dev",
         note="a flow of another device, continued by the pod owning its source: taken"),
    case("pod2", POD_CLIENT, 40017, WEB, "TCP", "A", "other-dev",
         note="a flow of another device, from a source this device may not use: spoofed"),
    case("pod0", POD_CLIENT, 40018, WEB, "TCP", "A", note="no state: forwarded by hash"),
    case("pod0", POD_CLIENT, 40019, WEB, "TCP", "PA", "lost", note="rebuilt from the reply entry"),
    case("pod0", POD_CLIENT, 40020, WEB, "TCP", "A", "lost-est", note="rebuilt, established"),
    case("pod0", POD_CLIENT, 40021, WEB, "TCP", "A", "est", note="established: conntrack decides"),
    case("pod0", POD_CLIENT, 40022, WEB, "TCP", "S", "closed", note="a SYN on a closed flow"),
    case("pod0", POD_CLIENT, 40023, WEB, "TCP", "S", "expired", note="an expired flow"),
    case("pod0", POD_CLIENT, 40024, WEB, "TCP", "S", "removed", note="SYN to a removed backend"),
    case("pod0", POD_CLIENT, 40025, WEB, "TCP", "A", "removed", note="ACK to a removed backend"),
    case("pod0", POD_CLIENT, 40026, SOLO_B, "TCP", "S", "other-fe",
         note="a live flow of another frontend holds the reply tuple: a new source port"),
    case("pod0", POD_CLIENT, 40037, SOLO_B, "TCP", "A", "port-nat",
         note="a flow with a source port of its own, established"),
    case("pod0", POD_CLIENT, 40090, SOLO_B, "TCP", "A", "port-nat-lost",
         note="a flow with a port of its own lost its state: not sent on the other's tuple"),
    case("pod0", POD_CLIENT, 40038, SELF_B, "TCP", "S", "other-fe",
         note="a pod reaching itself, its reply tuple held: no port to move, dropped"),
    case(NODE_DEV, CLIENT, 40127, SOLO_B_NP, "TCP", "S", "other-fe",
         note="the reply tuple held, from outside: a new source port"),
    case(NODE_DEV, CLIENT, 40128, SOLO_B_NP, "TCP", "PA", "port-nat",
         note="a flow from outside with a source port of its own"),
    case(NODE_DEV, CLIENT, 40129, SOLO_B_NP, "TCP", "SA", "port-nat-reply",
         note="the backend's reply to a flow with a source port of its own: not ours here"),
    case("pod0", POD_CLIENT, 40039, WEB, "TCP", "A", "drained",
         note="an open flow of a deleted Service: its draining frontend goes on"),
    case("pod0", POD_CLIENT, 40040, WEB, "TCP", "S", "drained",
         note="a SYN to a draining frontend (its backends gone): not ours, passes"),
    case("pod0", POD_CLIENT, 40041, WEB_DNS, "UDP", "", "drained",
         note="a deleted Service's UDP frontend goes at once"),
    case("pod0", POD_CLIENT, 40027, EMPTY, note="no backend: RST"),
    case("pod0", POD_CLIENT, 40028, EMPTY_DNS, "UDP", note="no backend: ICMP unreachable"),
    case("pod0", POD_CLIENT, 40029, EMPTY, "TCP", "R", note="no backend, a RST: not answered"),
    case("pod0", POD_CLIENT, 40030, STICKY, "TCP", "S", "sibling", note="affinity decides",
         want="affinity"),
    case("pod0", POD_CLIENT, 40031, NODEPORT, note="a NodePort from a pod: every backend"),
    case("pod0", POD_CLIENT, 40032, FARAWAY_NP, note="Local policy from a pod: every backend"),
    case("pod0", POD_CLIENT, 40033, LB, note="source ranges apply to pods too"),
    case(NODE_DEV, CLIENT, 40100, NODEPORT, note="NodePort: a remote backend", want="forward"),
    case(NODE_DEV, CLIENT, 40120, NODEPORT, note="NodePort: a local backend", want="dnat"),
    case(NODE_DEV, CLIENT, 40101, NODEPORT, "TCP", "A", "est", note="established, remote",
         want="forward"),
    case(NODE_DEV, CLIENT, 40121, NODEPORT, "TCP", "A", "est", note="established, local",
         want="dnat"),
    case(NODE_DEV, CLIENT, 40102, NODEPORT, "TCP", "SA", "reply", note="a SNAT flow's reply",
         want="forward"),
    case(NODE_DEV, CLIENT, 40122, (NODE_IP, 30053), "UDP", "", "reply",
         note="a SNAT flow's reply, UDP", want="forward"),
    case(NODE_DEV, CLIENT, 40123, NODEPORT, "TCP", "SA", "reply", note="a local flow's reply",
         want="dnat"),
    case(NODE_DEV, CLIENT, 40103, ("10.96.1.1", 80), note="a ClusterIP from outside: dropped"),
    case(NODE_DEV, CLIENT, 40104, LB, note="inside the source ranges"),
    case(NODE_DEV, DENIED, 40105, LB, note="outside the source ranges"),
    case(NODE_DEV, DENIED, 40106, LB_DNS, "UDP", note="outside the source ranges, UDP"),
    case(NODE_DEV, DENIED, 40107, (NODE_IP, 30053), "UDP", note="the node port has no ranges"),
    case(NODE_DEV, CLIENT, 40108, LOCAL_NP, note="Local policy: the external record"),
    case(NODE_DEV, CLIENT, 40109, FARAWAY_NP, note="Local policy, no local backend: dropped"),
    case(NODE_DEV, CLIENT, 40110, EMPTY_NP, note="no backend from outside: RST"),
    case(NODE_DEV, CLIENT, 40111, (NODE_IP, 30055), "UDP", note="no backend: ICMP"),
    case(NODE_DEV, CLIENT, 40112, NODEPORT, "TCP", "A", note="no state, remote: dropped",
         want="forward"),
    case(NODE_DEV, CLIENT, 40124, NODEPORT, "TCP", "A", note="no state, local: forwarded",
         want="dnat"),
    case(NODE_DEV, CLIENT, 40113, NODEPORT, "TCP", "A", "lost", note="rebuilt, remote",
         want="forward"),
    case(NODE_DEV, CLIENT, 40125, NODEPORT, "TCP", "A", "lost", note="rebuilt, local",
         want="dnat"),
    case(NODE_DEV, CLIENT, 40126, NODEPORT, "TCP", "S", "closed", note="closed, then a SYN",
         want="forward"),
    case(NODE_DEV, "127.0.0.1", 40114, NODEPORT, note="bad source from outside"),
    case(NODE_DEV, NODE_IP, 40115, LB, note="the node's address is a VIP (its node ports)"),
    case(NODE_DEV, CLIENT, 40116, (NODE_IP, 22), note="the node's own port: pass"),
    case(NODE_DEV, CLIENT, 40117, NODEPORT, "TCP", "A", "other-dev",
         note="a pod's flow, met on the node device"),
]


def frame(c: Case, flow: Flow) -> bytes:
    if c.dev == NODE_DEV:
        macs = (CLIENT_MAC, NODE_MAC)
    else:
        macs = POD_MACS
    l4 = (TCP(sport=flow.sport, dport=flow.dport, flags=flow.tcp_flags, seq=1000,
              ack=1 if "A" in flow.tcp_flags else 0)
          if flow.protocol == "TCP" else UDP(sport=flow.sport, dport=flow.dport) / Raw(b"q"))
    return bytes(Ether(src=macs[0], dst=macs[1]) / IP(src=flow.saddr, dst=flow.daddr, id=9) / l4)


def outcome(res, sent: bytes) -> Tuple:
    """What the program did with the packet: its action, the addresses it left with."""
    action = ACTIONS.get(res.retval, res.retval)
    if action == "shot":
        return ("shot",)
    if action == "ok" and res.data == sent:
        return ("ok", "untouched")
    out = Ether(res.data)
    if ICMP in out:
        icmp = out[ICMP]
        return (action, out[IP].src, out[IP].dst, f"icmp {icmp.type}/{icmp.code}")
    l4 = out[TCP] if TCP in out else out[UDP]
    kind = "rst" if TCP in out and out[TCP].flags.R else "l4"
    return (action, f"{out[IP].src}:{l4.sport}", f"{out[IP].dst}:{l4.dport}", kind)


def predicted(e: Explanation) -> Tuple:
    """What explain's verdict means the program does with the packet."""
    f = e.flow
    rst = "rst" if f.protocol == "TCP" and "R" in f.tcp_flags else "l4"
    if e.verdict == "pass":
        return ("ok", "untouched")
    if e.verdict == "drop":
        return ("shot",)
    if e.verdict == "dnat":  # a new source port too, for a flow given one
        return ("ok", e.source or f"{f.saddr}:{f.sport}", e.backend, rst)
    if e.verdict in ("hairpin", "forward"):
        return ("redirect", e.source, e.backend, rst)
    if e.verdict == "reject":
        if f.protocol == "UDP":
            return ("redirect", f.daddr, f.saddr, "icmp 3/3")
        return ("redirect", f"{f.daddr}:{f.dport}", f"{f.saddr}:{f.sport}", "rst")
    raise AssertionError(f"unknown verdict {e.verdict!r}")


def reversed_flow(res, dev: str, sent: bytes) -> Optional[Tuple[str, Flow]]:
    """The reply to what the program made of a packet, and the device it arrives on: a SNAT
    flow's reply comes back on the node device, a hairpin's from the pod itself, any other
    from the backend's own pod device (pod2 for its address, else unlisted pod1). None when
    the packet was not translated (dropped, untouched, rejected)."""
    if res.retval == TC_ACT_SHOT or res.data == sent:
        return None
    out, was = Ether(res.data), Ether(sent)
    if ICMP in out or (out[IP].src, out[IP].dst) == (was[IP].dst, was[IP].src):
        return None
    l4 = out[TCP] if TCP in out else out[UDP]
    proto = "TCP" if TCP in out else "UDP"
    flow = Flow(out[IP].dst, l4.dport, out[IP].src, l4.sport, proto, "SA" if proto == "TCP" else "")
    if res.retval == TC_ACT_REDIRECT:
        return dev, flow  # forward: back on the node device; hairpin: back from the pod
    return ("pod2" if flow.saddr == BACKEND_POD else "pod1"), flow


def with_port_for(w: World, c: Case) -> Case:
    """The case with the first source port from its own whose new flow gets `c.want`."""
    def new(sport: int) -> Explanation:
        flow = Flow(c.src, sport, c.dst, c.dport, c.proto, "S" if c.proto == "TCP" else "")
        return explain(w.snapshot, flow, device=w.device(c.dev))

    for sport in range(c.sport, c.sport + 1000):
        if c.want == "affinity":  # the sibling's hash picks another backend than this flow's
            if new(sport).backend != new(sport ^ 1).backend:
                return replace(c, sport=sport)
        elif new(sport).verdict == c.want:
            return replace(c, sport=sport)
    raise AssertionError(f"no source port gives {c} a {c.want!r} verdict")


def check(w: World, c: Case) -> Explanation:
    """Runs the case on the programs and asserts explain's verdict matches; returns it."""
    dp = w.dp
    dp.clear_conntrack()
    w.bpf[b"lb4_affinity"].clear()
    if c.want:
        c = with_port_for(w, c)
    flow, dev = c.flow, c.dev
    restore = False
    try:
        first = replace(flow, tcp_flags="S") if flow.protocol == "TCP" else flow
        if c.pre == "other-dev":
            w.run(OTHER_DEV[dev], frame(replace(c, dev=OTHER_DEV[dev]), first))
        if c.pre in ("other-fe", "port-nat", "port-nat-reply", "port-nat-lost"):
            other = OTHER_FE.get((c.dst, c.dport), WEB_DNS if c.proto == "UDP" else WEB)
            w.run(dev, frame(c, replace(first, daddr=other[0], dport=other[1])))
        if c.pre == "sibling":
            w.run(dev, frame(c, replace(first, sport=first.sport ^ 1)))
        if c.pre not in ("none", "other-dev", "other-fe", "sibling"):
            res = w.run(dev, frame(c, first))
            if c.pre in ("est", "closed", "lost-est", "drained"):
                w.run(dev, frame(c, replace(flow, tcp_flags="A")))
            if c.pre == "closed":
                w.run(dev, frame(c, replace(flow, tcp_flags="R")))
            if c.pre == "expired":
                w.age_all(300)
            if c.pre in ("lost", "lost-est", "port-nat-lost"):
                w.forget(flow)
            # Nothing to answer or remove when the first packet went nowhere: the packet under
            # test is then the flow's own, on a world unchanged.
            if c.pre in ("reply", "port-nat-reply"):
                replied = reversed_flow(res, dev, frame(c, first))
                if replied:
                    dev, flow = replied
            if c.pre == "removed" and res.retval != TC_ACT_SHOT:
                w.program(world(removed=(Ether(res.data)[IP].dst,)))
                restore = True
            if c.pre == "drained":
                w.program(world(without=("web",)))
                restore = True
        packet = frame(replace(c, dev=dev), flow)
        table = w.conntrack()
        affinity = w.affinity(dev, flow)
        e = explain(w.snapshot, flow, affinity=affinity, device=w.device(dev), ct_table=table)
        before = dp.stats()
        res = w.run(dev, packet)
        after = dp.stats()
        moved = collections.Counter({k: after[k] - before[k] for k in after
                                     if after[k] != before[k]})
        got = (outcome(res, packet), moved)
        want = (predicted(e), collections.Counter(e.counters) + collections.Counter([e.counted_as]))
        assert got == want, (f"{c} ({PRE_STATES[c.pre]}; {c.note}) on {dev}: {flow}\n"
                             f"program {got}\nexplain {want}: {e.verdict}, {e.reason}")
        return e
    finally:
        if restore:
            w.program(world())


def test_explain_matches_every_decision_of_the_programs(parity_world):
    """The named cases: each decision of the issue, on the device it happens on."""
    parity_world.fresh()
    seen = collections.Counter()
    for c in CASES:
        e = check(parity_world, c)
        seen[e.verdict] += 1
        seen.update(e.counters)
        seen[e.counted_as] += 1
        seen["affinity"] += bool(e.affinity_backend and e.affinity_backend != e.hashed_backend)
        seen["draining"] += "removed frontend" in e.reason
    # The table keeps covering what it is meant to (a world change must not hollow it out).
    for what in ("pass", "dnat", "hairpin", "forward", "drop", "reject", "spoofed", "bad_source",
                 "external_clusterip", "source_denied", "no_backend", "tcp_no_state",
                 "conntrack_rebuilt", "conntrack_collision", "backend_gone", "node_forward",
                 "conntrack_insert", "affinity", "port_nat", "draining", "from_pod/new",
                 "from_pod/established", "from_pod/stateless", "from_pod/reply", "from_pod/drop",
                 "from_pod/reject", "from_pod/pass", "node_in/new", "node_in/established",
                 "node_in/reply", "node_in/drop", "node_in/pass"):
        assert seen[what], f"no case covers {what}: {dict(seen)}"


N_SWEEP = 2000
SWEEP_FLAGS = ["S"] * 4 + ["A"] * 3 + ["PA", "SA", "R", "F", "FA"]
SWEEP_PRE = ["none"] * 3 + ["syn", "est", "closed", "expired", "lost", "lost-est", "other-dev",
                            "other-fe", "sibling", "reply", "port-nat", "port-nat-reply",
                            "port-nat-lost"]


def sweep_cases(snapshot, n: int, seed: str) -> List[Case]:
    rng = random.Random(seed)
    fes = frontends(snapshot)
    misses = [("10.96.1.1", 81, "TCP"), ("10.96.200.1", 80, "UDP"), (NODE_IP, 22, "TCP"),
              (LB_IP, 443, "TCP"), ("169.254.42.1", 40000, "TCP")]
    sources = {
        "pod0": [POD_CLIENT] * 6 + [STRANGER, "127.0.0.1", "10.96.1.1", CLIENT, None],
        "pod1": [STRANGER] * 4 + [POD_CLIENT, "127.0.0.9", "10.96.1.7", None],
        "pod2": [BACKEND_POD] * 6 + [POD_CLIENT, "127.0.0.1", None],
        NODE_DEV: [CLIENT] * 5 + [DENIED] * 2 + ["127.0.0.1", LB_IP, NODE_IP, STRANGER, None],
    }
    out = []
    for _ in range(n):
        dev = rng.choice(list(sources))
        dst, dport, proto = rng.choice(fes + misses) if rng.random() < 0.9 else rng.choice(misses)
        src = rng.choice(sources[dev]) or dst  # None: from its own destination
        out.append(Case(dev, src, rng.randrange(1024, 65536), dst, dport, proto,
                        rng.choice(SWEEP_FLAGS), rng.choice(SWEEP_PRE)))
    return out


def test_explain_matches_a_random_sweep(parity_world):
    """Seeded random cases over devices, sources, frontends, TCP flags and prior state."""
    parity_world.fresh()
    seen = collections.Counter()
    for c in sweep_cases(parity_world.snapshot, N_SWEEP, "explain-parity"):
        e = check(parity_world, c)
        seen[e.verdict] += 1
        seen.update(e.counters)
        seen[e.counted_as] += 1
    for what in ("pass", "dnat", "hairpin", "forward", "drop", "reject", "spoofed", "bad_source",
                 "external_clusterip", "source_denied", "from_pod/stateless", "conntrack_rebuilt",
                 "from_pod/established", "node_in/new", "node_in/drop"):
        assert seen[what] >= 3, f"the sweep covers {what} too rarely: {dict(seen)}"


def test_explain_matches_a_frontend_read_while_it_shrinks(parity_world):
    """A frontend record read with more slots than remain (the control plane shrinking it
    between the two writes): a packet hashed past the live slots is served from slot 0. The only
    case here whose maps are written by hand: no apply leaves them so."""
    w = parity_world.fresh()
    t = w.bpf[b"lb4_services"]
    key = t.Key(vip=ip_to_be32(WEB[0]), port=port_to_be16(WEB[1]), proto=6, scope=0)
    value = t[key]
    count = value.count
    value.count = 8
    t[key] = value
    try:
        w.snapshot = read_snapshot(w.dp.writer)
        fallback = 0
        for sport in range(42000, 42048):
            e = check(w, Case("pod0", POD_CLIENT, sport, *WEB))
            fallback += e.slot >= count
        assert fallback  # some flows hashed past the live slots
    finally:
        value.count = count
        t[key] = value
        w.snapshot = read_snapshot(w.dp.writer)
