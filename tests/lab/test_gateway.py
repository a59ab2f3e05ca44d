"""Gateway API L4 in the lab, from outside the cluster: a two-node lab whose node 0 runs the agent
at XDP on its node device, a Gateway of ebpflb's class on 192.168.200.210 (routed by the external
client to node 0), a TCP listener with a TCPRoute splitting between two Services, and a UDP
listener with a UDPRoute. Backends run on both nodes (node 1's are reached by SNAT). Everything
is real: the agent reads the Gateway API objects from its manifest file, as it reads Services.

Scenarios carry the Gateway API conformance test they follow where one exists:
- UDPRoute (gateway-api conformance, udproute-simple) and its TCP twin: a connection and a
  datagram from the external client reach the route's Service, and the reply comes back from the
  Gateway address;
- TCPRouteWeightedRouting: a 90/10 split over 2,000 connections; the share of the canary Service must be
  within 3 percentage points of what the programmed Maglev table gives it (binomial 4.5 sigma
  at n = 2,000), and every connection lands exactly where the control plane's own computation
  (flow hash and Maglev table, as `ebpflb explain` uses them) says;
- shifting 90/10 -> 50/50 while 100 keep-alive connections are open: every one goes on with the
  same pod, and new connections go exactly where the new table says;
- `ebpflb gateway list` reads the running agent: Accepted and Programmed, and the listener's
  attached route; `service list` shows the listener as a frontend named after the Gateway;
  `ebpflb explain --from-outside` names the pod a flow from the external client reaches, and the
  connection does reach it.
"""
from __future__ import annotations

import json
import socket
from typing import Dict, Iterator, List, Tuple

import pytest

from ebpflb.desired import GatewayOwner, cluster_model
from ebpflb.flowhash import packet_hash
from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab import topology as topo
from ebpflb.lab.topology import EXT_ADDRESS, HTTP_PORT, UDP_ECHO_PORT
from ebpflb.manifests import parse_documents
from ebpflb.model import ModelContext
from ebpflb.records import PlanDefaults, frontend_slots

from .agent_harness import RunningAgent, ebpflb, force_cleanup

pytestmark = pytest.mark.lab

NS = "gw"
GW_IP = "192.168.200.210"  # in EXTERNAL_VIP_CIDR: the external client routes it to node 0
TCP_PORT, UDP_PORT = 8000, 5353
# pod -> address; stable on both nodes, canary on both nodes
STABLE = {"web-1": "10.244.0.11", "n1-web-1": "10.244.1.11"}
CANARY = {"web-2": "10.244.0.12", "n1-web-2": "10.244.1.12"}
POD_OF = {ip: pod for pod, ip in {**STABLE, **CANARY}.items()}
N_SPLIT = 2000
TOLERANCE = 0.03


def service(name: str, cluster_ip: str, pods: Dict[str, str], protocol: str = "TCP",
            port: int = 80, target: int = HTTP_PORT) -> List[dict]:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
           "spec": {"clusterIP": cluster_ip, "ports": [{"name": "p", "port": port,
                                                        "protocol": protocol,
                                                        "targetPort": target}]}}
    eslice = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": f"{name}-1", "namespace": NS,
                           "labels": {"kubernetes.io/service-name": name}},
              "addressType": "IPv4", "ports": [{"name": "p", "port": target, "protocol": protocol}],
              "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                             "nodeName": f"node{1 if pod.startswith('n1-') else 0}",
                             "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}
                            for pod, ip in pods.items()]}
    return [svc, eslice]


def manifests(stable: int, canary: int) -> str:
    api = "gateway.networking.k8s.io"
    docs: List[dict] = [
        {"apiVersion": f"{api}/v1", "kind": "GatewayClass", "metadata": {"name": "ebpflb"},
         "spec": {"controllerName": "ebpflb.io/gateway-controller"}},
        {"apiVersion": f"{api}/v1", "kind": "Gateway", "metadata": {"name": "edge", "namespace": NS},
         "spec": {"gatewayClassName": "ebpflb",
                  "addresses": [{"type": "IPAddress", "value": GW_IP}],
                  "listeners": [{"name": "app", "port": TCP_PORT, "protocol": "TCP"},
                                {"name": "dns", "port": UDP_PORT, "protocol": "UDP"}]}},
        {"apiVersion": f"{api}/v1alpha2", "kind": "TCPRoute",
         "metadata": {"name": "app", "namespace": NS},
         "spec": {"parentRefs": [{"name": "edge", "sectionName": "app"}],
                  "rules": [{"backendRefs": [{"name": "stable", "port": 80, "weight": stable},
                                             {"name": "canary", "port": 80, "weight": canary}]}]}},
        {"apiVersion": f"{api}/v1alpha2", "kind": "UDPRoute",
         "metadata": {"name": "dns", "namespace": NS},
         "spec": {"parentRefs": [{"name": "edge", "sectionName": "dns"}],
                  "rules": [{"backendRefs": [{"name": "echo", "port": 53}]}]}},
        *service("stable", "10.96.0.71", STABLE), *service("canary", "10.96.0.72", CANARY),
        *service("echo", "10.96.0.73", STABLE, "UDP", 53, UDP_ECHO_PORT),
    ]
    return "---\n".join(json.dumps(d) + "\n" for d in docs)


def predicted_table(text: str) -> Tuple[Tuple[str, ...], int]:
    """The TCP listener's slots as backend addresses, computed by the control plane's own code
    from the same manifests (the table the agent programs), and the table's size."""
    m = parse_documents(text, "test")
    model = cluster_model(m.services, m.slices,
                          ModelContext(external_ip_allow=(f"{GW_IP}/32",)), m.gateway)
    fe, backends = next((fe, backends) for fe, backends in model.frontends_of(
        GatewayOwner(NS, "edge")) if fe.port == TCP_PORT)
    slots, _ = frontend_slots(fe, backends, PlanDefaults())
    return tuple(backends[i].ip for i in slots), len(slots)


def predicted_pod(table: Tuple[str, ...], sport: int) -> str:
    h = packet_hash(EXT_ADDRESS, sport, GW_IP, TCP_PORT, socket.IPPROTO_TCP)
    return POD_OF[table[h % len(table)]]


@pytest.fixture(scope="module")
def env(lab_names, tmp_path_factory) -> Iterator[Tuple[lablib.Lab, RunningAgent]]:
    name = lab_names.new()
    agent = None
    try:
        the_lab = lablib.lab_up(name, nodes=2)
        agent = RunningAgent(name, tmp_path_factory.mktemp("gateway"), [], node=0,
                             text=manifests(90, 10), extra_args=[
                                 "--node-name", "node0", "--node-device", topo.NODE_UNDERLAY_IFNAME,
                                 "--node-mode", "xdp", "--nodeport-addresses", topo.UNDERLAY_CIDR,
                                 "--external-ip-allow", f"{GW_IP}/32",
                                 # Closed flows keep their SNAT port a while: room for them all.
                                 "--snat-ports", "61000-65535"])
        agent.wait_applied(30)
        yield the_lab, agent
    finally:
        try:
            if agent is not None:
                agent.stop()
            force_cleanup(name)
        finally:
            lablib.lab_down(name)


def ext_socket(the_lab: lablib.Lab, kind: int) -> socket.socket:
    with nsops.in_netns(the_lab.ext_ns):
        return socket.socket(socket.AF_INET, kind)


class KeepAlive:
    """One HTTP/1.1 keep-alive connection from the external client, from a chosen port."""

    def __init__(self, the_lab: lablib.Lab, sport: int) -> None:
        self.sock = ext_socket(the_lab, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.settimeout(5)
        self.sock.bind((EXT_ADDRESS, sport))
        self.sock.connect((GW_IP, TCP_PORT))
        self.file = self.sock.makefile("rb")

    def get(self) -> str:
        self.sock.sendall(f"GET / HTTP/1.1\r\nHost: {GW_IP}\r\n\r\n".encode())
        status = self.file.readline()
        assert status.split()[1] == b"200", status
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode().partition(":")
            if key.lower() == "content-length":
                length = int(value)
        return self.file.read(length).decode().strip()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def one_get(the_lab: lablib.Lab, sport: int) -> str:
    conn = KeepAlive(the_lab, sport)
    try:
        return conn.get()
    finally:
        conn.close()


def test_udp_route_and_tcp_route_simple(env):
    the_lab, _agent = env
    assert one_get(the_lab, 33001) in POD_OF.values()
    with ext_socket(the_lab, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        answered = set()
        for i in range(20):
            sock.sendto(f"q{i}".encode(), (GW_IP, UDP_PORT))
            data, peer = sock.recvfrom(2048)
            assert peer == (GW_IP, UDP_PORT)  # reverse-NATed: the reply is the Gateway's
            pod, _, payload = data.decode().partition(" ")
            assert payload == f"q{i}" and pod in STABLE
            answered.add(pod)
    assert answered  # the echo Service's pods, on either node


def test_tcp_route_weighted_routing_90_10_over_2000_connections(env):
    the_lab, _agent = env
    table, size = predicted_table(manifests(90, 10))
    expected_canary = sum(POD_OF[ip] in CANARY for ip in table) / size
    assert abs(expected_canary - 0.10) < 0.005  # the table itself is 90/10 to its resolution
    counts: Dict[str, int] = {}
    for i in range(N_SPLIT):
        sport = 20000 + i
        pod = one_get(the_lab, sport)
        assert pod == predicted_pod(table, sport), (sport, pod)
        counts[pod] = counts.get(pod, 0) + 1
    canary = sum(n for pod, n in counts.items() if pod in CANARY) / N_SPLIT
    assert abs(canary - expected_canary) < TOLERANCE, counts
    assert set(counts) == set(POD_OF.values())


def test_shifting_weights_keeps_established_connections(env):
    the_lab, agent = env
    conns = [KeepAlive(the_lab, 45000 + i) for i in range(100)]
    try:
        first = [c.get() for c in conns]
        agent.write_manifest(text=manifests(50, 50))
        agent.wait_applied(20)
        table, size = predicted_table(manifests(50, 50))
        assert [c.get() for c in conns] == first  # none moved, none reset
        new = {sport: one_get(the_lab, sport) for sport in range(46000, 46400)}
        assert all(pod == predicted_pod(table, sport) for sport, pod in new.items())
        canary = sum(pod in CANARY for pod in new.values()) / len(new)
        assert abs(canary - 0.5) < 0.1, new
    finally:
        for c in conns:
            c.close()
        agent.write_manifest(text=manifests(90, 10))
        agent.wait_applied(20)


def test_gateway_list_and_service_list_read_the_agent(env):
    _lab, agent = env
    view = json.loads(ebpflb("gateway", "list", "-o", "json", "--pin-dir", agent.pin_dir).stdout)
    (gw,) = view["gateways"]
    assert gw["gateway"] == f"{NS}/edge" and gw["addresses"] == [GW_IP]
    assert {c["type"]: c["status"] for c in gw["conditions"]} == {"Accepted": "True",
                                                                   "Programmed": "True"}
    assert {li["name"]: li["attached_routes"] for li in gw["listeners"]} == {"app": 1, "dns": 1}
    names = {s["frontend"]: s["service"] for s in agent.services()}
    assert names[f"{GW_IP}:{TCP_PORT}/TCP"] == f"Gateway {NS}/edge:app"
    assert names[f"{GW_IP}:{UDP_PORT}/UDP"] == f"Gateway {NS}/edge:dns"


def test_explain_predicts_a_gateway_flow_from_outside(env):
    the_lab, agent = env
    for sport in (47001, 47002, 47003):
        res = ebpflb("explain", f"{EXT_ADDRESS}:{sport}", f"{GW_IP}:{TCP_PORT}", "tcp",
                     "--from-outside", "--device", topo.NODE_UNDERLAY_IFNAME, "-o", "json",
                     "--pin-dir", agent.pin_dir, "--netns", the_lab.node_netns(0))
        e = json.loads(res.stdout)
        assert e["service"] == f"Gateway {NS}/edge:app", e
        backend_ip = e["backend"].rpartition(":")[0]
        assert one_get(the_lab, sport) == POD_OF[backend_ip], e
