"""North-south traffic on a two-node lab: NodePort, LoadBalancer and external IPs reached from the
external client (<lab>-ext, 192.168.200.2), with one agent per node attached to the node device
eth0, in both node modes (XDP in front of TC, and TC only): the same suite runs for each.

What is checked, from outside the cluster, with real connections:
- NodePort with externalTrafficPolicy Cluster reaches every ready pod of both nodes via either
  node; a backend on the other node sees the node's address (SNAT, from --snat-ports), a local
  one the client's own address;
- externalTrafficPolicy Local: only the node's own endpoints, the client's address kept, and a
  node without one drops (the connect times out: no RST); pods still reach every endpoint;
- healthCheckNodePort answers 200/503 with the local endpoint count and follows endpoint moves;
- loadBalancerSourceRanges allow and deny on the LoadBalancer IP, not on the NodePort;
- LoadBalancer ingress IPs, externalIPs inside --external-ip-allow (and those outside it are not
  programmed, listed as skipped, unreachable); a ClusterIP is not reachable from outside;
- `service list -o json` kinds; UDP over a NodePort to local and remote backends;
- one client ip:port used for two frontends of the same backend, one flow after the other: each
  flow's replies come back from the frontend that flow used;
- the data path's verdict counters afterwards: no NAT failure, and in XDP mode XDP forwarded.

One lab and two agents per node mode (module-scoped fixture); each test rewrites both agents'
manifests and waits until `ebpflb service list` shows exactly what it should before sending.

Tier: lab (root, real namespaces and traffic). Fixtures are in tests/lab/conftest.py.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab import topology as topo
from ebpflb.lab.topology import EXT_ADDRESS, HTTP_PORT, UDP_ECHO_PORT

from .agent_harness import (RunningAgent, ebpflb, force_cleanup, scrape_metrics,
                            start_node_agents, wait_until)

pytestmark = pytest.mark.lab

NS = "demo"
N0 = topo.node_address(0)  # 192.168.200.10
N1 = topo.node_address(1)  # 192.168.200.11
# The external client routes EXTERNAL_VIP_CIDR (192.168.200.192/26) via node 0. The upper half is
# the agents' --external-ip-allow; the lower half holds the LoadBalancer IPs and a disallowed
# external IP (routed to node 0 all the same, so only the agent's refusal keeps it dark).
EXTERNAL_IP_ALLOW = "192.168.200.224/27"
LB_IP = "192.168.200.193"
LB_IP_RANGES = "192.168.200.194"
LB_IP_LOCAL = "192.168.200.195"
LB_IP_KINDS = "192.168.200.196"
EXTERNAL_IP_OK = "192.168.200.230"
EXTERNAL_IP_DENIED = "192.168.200.200"
SNAT_PORTS = (62000, 62999)  # outside the nodes' ip_local_port_range (32768-60999)
METRICS_PORT = 9402  # per node namespace, so both agents can use it

# (pod, ip, node, ready)
Ep = Tuple[str, str, int, bool]
NODE0_EPS: List[Ep] = [("web-1", "10.244.0.11", 0, True), ("web-2", "10.244.0.12", 0, True)]
NODE1_EPS: List[Ep] = [("n1-web-1", "10.244.1.11", 1, True), ("n1-web-2", "10.244.1.12", 1, True)]
NOT_READY: Ep = ("web-4", "10.244.0.14", 0, False)
BOTH = NODE0_EPS + NODE1_EPS
NODE0_PODS = {p for p, _, _, _ in NODE0_EPS}
NODE1_PODS = {p for p, _, _, _ in NODE1_EPS}


def node_name(k: int) -> str:
    """The Kubernetes node name of lab node k: the agents' --node-name and endpoints' nodeName."""
    return f"node{k}"


# ------------------------------------------------------------------ manifests

@dataclass
class Svc:
    """One single-port Service and its EndpointSlice."""

    name: str
    cluster_ip: str
    node_port: Optional[int] = None
    type: str = "NodePort"
    protocol: str = "TCP"
    port: int = 80
    target: int = HTTP_PORT
    etp: str = "Cluster"
    lb_ips: Sequence[str] = ()
    external_ips: Sequence[str] = ()
    hc_port: Optional[int] = None
    source_ranges: Optional[Sequence[str]] = None
    endpoints: Sequence[Ep] = field(default_factory=list)

    @property
    def port_name(self) -> str:
        return "p-" + self.protocol.lower()

    def docs(self) -> List[dict]:
        sport: dict = {"name": self.port_name, "port": self.port, "protocol": self.protocol,
                       "targetPort": self.target}
        if self.node_port is not None:
            sport["nodePort"] = self.node_port
        spec: dict = {"type": self.type, "clusterIP": self.cluster_ip, "ports": [sport]}
        if self.type != "ClusterIP":
            spec["externalTrafficPolicy"] = self.etp
        if self.external_ips:
            spec["externalIPs"] = list(self.external_ips)
        if self.hc_port is not None:
            spec["healthCheckNodePort"] = self.hc_port
        if self.source_ranges is not None:
            spec["loadBalancerSourceRanges"] = list(self.source_ranges)
        svc: dict = {"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": self.name, "namespace": NS}, "spec": spec}
        if self.lb_ips:
            svc["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in self.lb_ips]}}
        eps = [{"addresses": [ip], "conditions": {"ready": ready}, "nodeName": node_name(node),
                "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}
               for pod, ip, node, ready in self.endpoints]
        eslice = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": f"{self.name}-abcde", "namespace": NS,
                               "labels": {"kubernetes.io/service-name": self.name}},
                  "addressType": "IPv4",
                  "ports": [{"name": self.port_name, "port": self.target, "protocol": self.protocol}],
                  "endpoints": eps}
        return [svc, eslice]

    def expected(self, k: int) -> Dict[str, tuple]:
        """What node k's agent must program: frontend -> (kind, backends, ETP-Local flag,
        source ranges or None). With externalTrafficPolicy Local an external address has two
        records, as kube-proxy has two chains: every ready endpoint for pods, and
        "<frontend>@external" with node k's own endpoints for traffic from outside."""
        ready = frozenset(f"{ip}:{self.target}" for _, ip, _, r in self.endpoints if r)
        local = frozenset(f"{ip}:{self.target}" for _, ip, node, r in self.endpoints
                          if r and node == k)
        is_local = self.etp == "Local"
        proto = self.protocol
        out = {f"{self.cluster_ip}:{self.port}/{proto}": ("ClusterIP", ready, False, None)}
        external = []
        if self.node_port is not None:
            external.append(("NodePort", f"{topo.node_address(k)}:{self.node_port}/{proto}", None))
        if self.type == "LoadBalancer":
            ranges = tuple(self.source_ranges) if self.source_ranges else None
            external += [("LoadBalancer", f"{ip}:{self.port}/{proto}", ranges) for ip in self.lb_ips]
        external += [("ExternalIP", f"{ip}:{self.port}/{proto}", None) for ip in self.external_ips
                     if ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(EXTERNAL_IP_ALLOW)]
        for kind, frontend, ranges in external:
            out[frontend] = (kind, ready, is_local, ranges)
            if is_local:
                out[frontend + "@external"] = (kind, local, True, ranges)
        return out


def manifest_text(*svcs: Svc) -> str:
    # JSON is YAML: one document per object.
    return "---\n".join(json.dumps(doc) + "\n" for svc in svcs for doc in svc.docs())


# ------------------------------------------------------------------ the lab and its agents

@dataclass
class Env:
    mode: str
    lab: lablib.Lab
    agents: List[RunningAgent]

    @property
    def ext(self) -> str:
        return self.lab.ext_ns

    def logs(self) -> str:
        return "\n".join(f"--- agent node{a.node} (tail):\n" + "\n".join(a.log().splitlines()[-25:])
                         for a in self.agents)


def _start_agents(lab_name: str, workdir, mode: str) -> List[RunningAgent]:
    """Both nodes' agents, started at once (each compiles its programs)."""
    return start_node_agents(lab_name, workdir, 2, lambda k: [
        "--node-name", node_name(k), "--node-device", topo.NODE_UNDERLAY_IFNAME,
        "--node-mode", mode, "--nodeport-addresses", topo.UNDERLAY_CIDR,
        "--external-ip-allow", EXTERNAL_IP_ALLOW,
        "--snat-ports", f"{SNAT_PORTS[0]}-{SNAT_PORTS[1]}",
        "--healthcheck-address", topo.node_address(k),
        "--metrics-address", f"127.0.0.1:{METRICS_PORT}"])


@pytest.fixture(scope="module", params=["xdp", "tc"])
def env(request, lab_names, tmp_path_factory) -> Iterator[Env]:
    mode = request.param
    name = lab_names.new()
    agents: List[RunningAgent] = []
    try:
        the_lab = lablib.lab_up(name, nodes=2)
        agents = _start_agents(name, tmp_path_factory.mktemp(f"ns-{mode}"), mode)
        yield Env(mode, the_lab, agents)
    finally:
        try:
            for agent in agents:
                agent.stop()
            force_cleanup(name)
        finally:
            lablib.lab_down(name)


def programmed(agent: RunningAgent) -> Dict[str, tuple]:
    out = {}
    for s in agent.services():
        ranges = s.get("source_ranges")
        out[s["frontend"]] = (s["kind"], frozenset(f"{b['address']}:{b['port']}" for b in s["backends"]),
                              bool(s.get("external_local")),
                              tuple(ranges) if ranges is not None else None)
    return out


def apply(env: Env, *svcs: Svc) -> None:
    """Both agents get the manifest; returns once each programmed exactly what it should."""
    text = manifest_text(*svcs)
    for agent in env.agents:
        agent.write_manifest(text=text)
    for agent in env.agents:
        want: Dict[str, tuple] = {}
        for svc in svcs:
            want.update(svc.expected(agent.node))
        seen: List[Dict[str, tuple]] = []

        def done() -> bool:
            seen[:] = [programmed(agent)]
            return seen[0] == want

        try:
            wait_until(done, 20, f"node {agent.node}'s agent to program {[s.name for s in svcs]}",
                       interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nwant {want}\ngot  {seen[0] if seen else None}\n"
                                 f"{env.logs()}") from None


# ------------------------------------------------------------------ traffic from outside

class Failed(Exception):
    """A request from outside did not complete; .how is "timeout", "refused" or an errno name."""

    def __init__(self, how: str, where: str):
        super().__init__(f"{where}: {how}")
        self.how = how


def _ext_socket(env: Env, kind: int, netns: Optional[str] = None) -> socket.socket:
    with nsops.in_netns(netns or env.ext):
        return socket.socket(socket.AF_INET, kind)


def http_get(env: Env, ip: str, port: int, path: str = "/", timeout: float = 3.0,
             netns: Optional[str] = None) -> Tuple[int, str]:
    """One HTTP/1.0 GET from the external client (or from `netns`): (status, body)."""
    where = f"GET http://{ip}:{port}{path} from {netns or EXT_ADDRESS}"
    with _ext_socket(env, socket.SOCK_STREAM, netns) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except socket.timeout:
            raise Failed("timeout", where) from None
        except ConnectionRefusedError:
            raise Failed("refused", where) from None
        except OSError as exc:
            raise Failed(errno.errorcode.get(exc.errno or 0, str(exc)), where) from None
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def get_ok(env: Env, ip: str, port: int, path: str = "/", netns: Optional[str] = None) -> str:
    status, body = http_get(env, ip, port, path, netns=netns)
    assert status == 200, (ip, port, path, status, body)
    return body.strip()


def pods_answering(env: Env, ip: str, port: int, n: int = 40,
                   netns: Optional[str] = None) -> Dict[str, int]:
    """n requests (from outside, or from `netns`), every one must succeed: how often each pod
    answered."""
    counts: Dict[str, int] = {}
    for _ in range(n):
        try:
            pod = get_ok(env, ip, port, netns=netns)
        except Failed as exc:
            raise AssertionError(f"{exc} (after {sum(counts.values())} good)\n{env.logs()}") from None
        counts[pod] = counts.get(pod, 0) + 1
    return counts


def client_seen(env: Env, ip: str, port: int) -> Tuple[str, int]:
    """The client address the backend pod saw for a request from outside."""
    addr, _, sport = get_ok(env, ip, port, "/client").partition(":")
    return addr, int(sport)


def connect_outcome(env: Env, ip: str, port: int, timeout: float = 2.0) -> str:
    """"connected", "timeout", "refused" or an errno name, for one TCP connect from outside."""
    with _ext_socket(env, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
        except socket.timeout:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))
    return "connected"


def ext_curl_exit(env: Env, url: str) -> subprocess.CompletedProcess:
    return lablib.run_in_ext(env.lab.name, ["curl", "-sS", "--connect-timeout", "2",
                                            "--max-time", "3", url], timeout=15)


def udp_from_ext(env: Env, ip: str, port: int, payload: bytes) -> Tuple[str, Tuple[str, int]]:
    """One datagram from a fresh socket (a new flow): (replying pod, reply's source)."""
    with _ext_socket(env, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(payload, (ip, port))
        try:
            data, peer = sock.recvfrom(65535)
        except socket.timeout:
            raise AssertionError(f"no UDP reply from {ip}:{port}\n{env.logs()}") from None
    pod, _, echoed = data.decode().partition(" ")
    assert echoed == payload.decode()
    return pod, peer


def datapath_counters(env: Env, k: int) -> Dict[str, int]:
    """The drop reasons and events, scraped from node k's agent."""
    samples = scrape_metrics(env.lab.node_netns(k), METRICS_PORT)
    out = {}
    for (name, labels), v in samples.items():
        if name == "ebpflb_drops_total":
            out[dict(labels)["reason"]] = int(v)
        elif name == "ebpflb_datapath_events_total":
            out[dict(labels)["event"]] = int(v)
    return out


# ------------------------------------------------------------------ 1. NodePort, Cluster policy

def test_nodeport_cluster_reaches_every_ready_pod_via_either_node(env):
    svc = Svc("np", "10.96.5.1", node_port=30080, endpoints=BOTH + [NOT_READY])
    apply(env, svc)
    for node_ip in (N0, N1):
        counts = pods_answering(env, node_ip, 30080, 40)
        assert set(counts) == NODE0_PODS | NODE1_PODS, (node_ip, counts)


# ------------------------------------------------------------------ 2. SNAT to remote backends

def test_remote_backend_sees_the_node_address_and_a_local_one_the_client(env):
    snat = range(SNAT_PORTS[0], SNAT_PORTS[1] + 1)
    apply(env, Svc("snat", "10.96.5.2", node_port=30081, endpoints=NODE1_EPS))
    assert set(pods_answering(env, N0, 30081, 10)) <= NODE1_PODS
    for _ in range(5):
        addr, port = client_seen(env, N0, 30081)  # node 0 -> backend on node 1: SNAT
        assert addr == N0 and port in snat, (addr, port)
        assert client_seen(env, N1, 30081)[0] == EXT_ADDRESS  # local backend: client kept

    apply(env, Svc("snat", "10.96.5.2", node_port=30081, endpoints=NODE0_EPS))
    assert set(pods_answering(env, N1, 30081, 10)) <= NODE0_PODS
    for _ in range(5):
        assert client_seen(env, N0, 30081)[0] == EXT_ADDRESS
        addr, port = client_seen(env, N1, 30081)
        assert addr == N1 and port in snat, (addr, port)


# ------------------------------------------------------------------ 3. externalTrafficPolicy Local

def test_etp_local_serves_local_pods_with_the_client_address_and_drops_elsewhere(env):
    apply(env, Svc("local", "10.96.5.3", node_port=30082, etp="Local", endpoints=BOTH))
    assert set(pods_answering(env, N0, 30082, 20)) == NODE0_PODS
    assert set(pods_answering(env, N1, 30082, 20)) == NODE1_PODS
    for node_ip in (N0, N1):
        for _ in range(3):
            assert client_seen(env, node_ip, 30082)[0] == EXT_ADDRESS
    # From a pod, the node port of a Local Service reaches every endpoint (as with kube-proxy).
    assert set(pods_answering(env, N0, 30082, 40, netns=env.lab.pod_ns("client"))) == \
        NODE0_PODS | NODE1_PODS

    # Node 0 has no endpoint left: it drops (no RST, no hop to node 1).
    apply(env, Svc("local", "10.96.5.3", node_port=30082, etp="Local", endpoints=NODE1_EPS))
    r = ext_curl_exit(env, f"http://{N0}:30082/")
    assert r.returncode == 28, f"curl exit {r.returncode} (28 = timeout, 7 = refused): {r.stderr}"
    assert connect_outcome(env, N0, 30082) == "timeout"
    assert set(pods_answering(env, N1, 30082, 24)) == NODE1_PODS  # 10 missed one in 500


# ------------------------------------------------------------------ 4. healthCheckNodePort

def _health(env: Env, node_ip: str, port: int) -> Tuple[int, dict]:
    status, body = http_get(env, node_ip, port, "/")
    return status, json.loads(body)


def test_health_check_node_port_follows_local_endpoints(env):
    hc = 32101
    svc = Svc("hc", "10.96.5.4", node_port=30083, type="LoadBalancer", etp="Local",
              lb_ips=[LB_IP_LOCAL], hc_port=hc, endpoints=NODE0_EPS + [NOT_READY])
    apply(env, svc)
    want_service = {"namespace": NS, "name": "hc"}

    def health_is(node_ip: str, status: int, count: int) -> bool:
        try:
            got = _health(env, node_ip, hc)
        except (Failed, ValueError):
            return False
        return got[0] == status and got[1]["localEndpoints"] == count \
            and got[1]["service"] == want_service

    for node_ip, status, count in ((N0, 200, 2), (N1, 503, 0)):
        wait_until(lambda: health_is(node_ip, status, count), 5,
                   f"health check of {node_ip}: {status} with {count} local endpoints")
    # The LoadBalancer IP (routed to node 0) keeps the client address and stays on node 0.
    assert set(pods_answering(env, LB_IP_LOCAL, 80, 24)) == NODE0_PODS  # 10 missed one in 500
    assert client_seen(env, LB_IP_LOCAL, 80)[0] == EXT_ADDRESS
    # --healthcheck-address: only on the node address, not on loopback.
    with nsops.in_netns(env.lab.node_netns(0)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.1", hc)) == errno.ECONNREFUSED

    # The endpoints move to node 1: node 0 fails its check, node 1 passes it.
    svc.endpoints = NODE1_EPS[:1]
    apply(env, svc)
    for node_ip, status, count in ((N0, 503, 0), (N1, 200, 1)):
        wait_until(lambda: health_is(node_ip, status, count), 5,
                   f"health check of {node_ip}: {status} with {count} local endpoints")

    # Policy Cluster: no health check port any more.
    apply(env, Svc("hc", "10.96.5.4", node_port=30083, type="LoadBalancer", lb_ips=[LB_IP_LOCAL],
                   endpoints=NODE1_EPS))
    wait_until(lambda: connect_outcome(env, N0, hc) == "refused", 5,
               "the health check server to close")


# ------------------------------------------------------------------ 5. loadBalancerSourceRanges

def test_source_ranges_restrict_the_load_balancer_ip_not_the_node_port(env):
    def svc(ranges: List[str]) -> Svc:
        return Svc("ranges", "10.96.5.5", node_port=30084, type="LoadBalancer",
                   lb_ips=[LB_IP_RANGES], source_ranges=ranges, endpoints=BOTH)

    apply(env, svc(["192.168.200.0/30"]))  # 192.168.200.0-3: the external client is in it
    assert set(pods_answering(env, LB_IP_RANGES, 80, 40)) == NODE0_PODS | NODE1_PODS

    before = datapath_counters(env, 0)["source_denied"]
    apply(env, svc(["192.168.200.8/29"]))  # .8-.15: not the client
    assert connect_outcome(env, LB_IP_RANGES, 80) == "timeout"
    assert datapath_counters(env, 0)["source_denied"] > before
    for node_ip in (N0, N1):
        assert set(pods_answering(env, node_ip, 30084, 40)) == NODE0_PODS | NODE1_PODS


# ------------------------------------------------------------------ 6. LoadBalancer and external IPs

def test_load_balancer_ip_and_allowed_external_ip_work_a_disallowed_one_is_not_programmed(env):
    svc = Svc("lbx", "10.96.5.6", node_port=30085, type="LoadBalancer", lb_ips=[LB_IP],
              external_ips=[EXTERNAL_IP_OK, EXTERNAL_IP_DENIED], endpoints=BOTH)
    apply(env, svc)  # expected() leaves EXTERNAL_IP_DENIED out: programmed would show it
    for ip in (LB_IP, EXTERNAL_IP_OK):
        assert set(pods_answering(env, ip, 80, 40)) == NODE0_PODS | NODE1_PODS, ip
    for agent in env.agents:
        assert agent.backends(f"{EXTERNAL_IP_DENIED}:80/TCP") is None
        listed = json.loads(ebpflb("service", "list", "--all", "-o", "json",
                                   "--pin-dir", agent.pin_dir).stdout)
        reasons = [s["reason"] for s in listed["skipped"] if s["service"] == f"{NS}/lbx"]
        assert any(EXTERNAL_IP_DENIED in r for r in reasons), listed["skipped"]
        assert not any(EXTERNAL_IP_OK in r for r in reasons)
    assert connect_outcome(env, EXTERNAL_IP_DENIED, 80) != "connected"


# ------------------------------------------------------------------ 7. ClusterIP from outside

def test_cluster_ip_is_not_reachable_from_outside(env):
    vip = "10.96.5.7"
    apply(env, Svc("cip", vip, node_port=30086, endpoints=BOTH))
    route = ["ip", "route", "add", topo.SERVICE_CIDR, "via", N0]
    r = lablib.run_in_ext(env.lab.name, route)
    assert r.returncode == 0, r.stderr
    try:
        before = datapath_counters(env, 0)["external_clusterip"]
        assert connect_outcome(env, vip, 80) == "timeout"
        assert datapath_counters(env, 0)["external_clusterip"] > before
        assert set(pods_answering(env, N0, 30086, 10)) <= NODE0_PODS | NODE1_PODS
    finally:
        lablib.run_in_ext(env.lab.name, ["ip", "route", "del", topo.SERVICE_CIDR, "via", N0])
    r = lablib.run_in_pod(env.lab.name, "client",
                          ["curl", "-sS", "--max-time", "3", f"http://{vip}/"], timeout=10)
    assert r.returncode == 0 and r.stdout.strip() in NODE0_PODS | NODE1_PODS, r.stderr


# ------------------------------------------------------------------ 8. service list kinds

def test_service_list_shows_every_frontend_kind_with_backends(env):
    vip = "10.96.5.8"
    apply(env, Svc("kinds", vip, node_port=30087, type="LoadBalancer", lb_ips=[LB_IP_KINDS],
                   external_ips=[EXTERNAL_IP_OK], endpoints=BOTH))
    all_backends = sorted(f"{ip}:{HTTP_PORT}" for _, ip, _, _ in BOTH)
    for agent in env.agents:
        rows = json.loads(ebpflb("service", "list", "-o", "json", "--pin-dir",
                                 agent.pin_dir).stdout)["services"]
        mine = [r for r in rows if r["service"].startswith(f"{NS}/kinds")]
        kinds = {r["frontend"]: r["kind"] for r in mine}
        assert kinds == {f"{vip}:80/TCP": "ClusterIP",
                         f"{topo.node_address(agent.node)}:30087/TCP": "NodePort",
                         f"{LB_IP_KINDS}:80/TCP": "LoadBalancer",
                         f"{EXTERNAL_IP_OK}:80/TCP": "ExternalIP"}, kinds
        for r in mine:
            assert sorted(f"{b['address']}:{b['port']}" for b in r["backends"]) == all_backends, r
        table = ebpflb("service", "list", "--pin-dir", agent.pin_dir).stdout
        for kind in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalIP"):
            assert kind in table


# ------------------------------------------------------------------ 9. UDP NodePort

def test_udp_node_port_reaches_local_and_remote_backends(env):
    apply(env, Svc("echo", "10.96.5.9", node_port=30053, protocol="UDP", port=53,
                   target=UDP_ECHO_PORT, endpoints=BOTH))
    for node_ip in (N0, N1):
        seen = set()
        for i in range(40):
            pod, peer = udp_from_ext(env, node_ip, 30053, f"u{i}".encode())
            assert peer == (node_ip, 30053)
            seen.add(pod)
        assert seen == NODE0_PODS | NODE1_PODS, (node_ip, seen)


# ------------------------------------------------------------------ one client port, two frontends

def get_from_port(env: Env, sport: int, ip: str, port: int, timeout: float = 3.0) -> str:
    """GET / with HTTP/1.1 from the external client's port `sport`; the client closes first, so
    neither end keeps the connection (no TIME_WAIT in the pod) and the port is free again."""
    where = f"GET http://{ip}:{port}/ from {EXT_ADDRESS}:{sport}"
    with _ext_socket(env, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((EXT_ADDRESS, sport))
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {ip}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk, f"{where}: closed before the headers: {data!r}"
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                chunk = sock.recv(65536)
                assert chunk, f"{where}: closed mid-body"
                body += chunk
        except socket.timeout:
            raise Failed("timeout", where) from None
        except OSError as exc:
            raise Failed(errno.errorcode.get(exc.errno or 0, str(exc)), where) from None
    assert head.split()[1] == b"200", head
    return body.decode().strip()


def test_a_client_port_reused_for_another_frontend_of_the_same_backend(env):
    """One client ip:port to the LoadBalancer IP, then (the first flow closed, seconds later) to
    the NodePort and the external IP of the same Service, all DNATed to the same local pod: the
    backend sees the same 4-tuple each time, and each flow's replies must be translated back to
    the frontend that flow used (a client port is routinely reused for another destination)."""
    apply(env, Svc("reuse", "10.96.5.11", node_port=30089, type="LoadBalancer", lb_ips=[LB_IP],
                   external_ips=[EXTERNAL_IP_OK], endpoints=NODE0_EPS[:1]))
    sport = 23456  # below the client's ephemeral range: nothing else takes it
    # Each destination once: the client keeps TIME_WAIT for the 4-tuples it used.
    for ip, port in ((LB_IP, 80), (N0, 30089), (EXTERNAL_IP_OK, 80)):
        try:
            assert get_from_port(env, sport, ip, port) == "web-1"
        except Failed as exc:
            raise AssertionError(f"{exc}\n{env.logs()}") from None


# ------------------------------------------------------------------ counters (last of each mode)

def _xdp_on_eth0(env: Env, k: int) -> Optional[int]:
    """XDP attach mode of node k's eth0 (1 native, 2 generic), None without XDP."""
    out = subprocess.run(["ip", "-n", env.lab.node_netns(k), "-j", "-d", "link", "show", "dev",
                          topo.NODE_UNDERLAY_IFNAME], capture_output=True, text=True, check=True)
    xdp = json.loads(out.stdout)[0].get("xdp")
    return xdp.get("mode") if xdp else None


def test_datapath_counters_show_no_nat_failure_and_xdp_forwarding(env):
    # A few flows to a remote backend through node 0, so XDP has something to forward.
    apply(env, Svc("count", "10.96.5.10", node_port=30088, endpoints=NODE1_EPS))
    assert set(pods_answering(env, N0, 30088, 10)) <= NODE1_PODS
    for k in range(2):
        counters = datapath_counters(env, k)
        assert counters["nat_fail"] == 0 and counters["snat_exhausted"] == 0, (k, counters)
        if env.mode == "xdp":
            assert _xdp_on_eth0(env, k) == 1  # native on the lab's veth
        else:
            assert _xdp_on_eth0(env, k) is None
            assert counters["xdp_forward"] == 0, (k, counters)
    node0 = datapath_counters(env, 0)
    assert node0["xdp_forward" if env.mode == "xdp" else "node_forward"] > 0, node0
