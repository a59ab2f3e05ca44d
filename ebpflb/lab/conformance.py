"""The conformance matrix (`ebpflb lab conformance`, and the lab test tier): one scenario per
Kubernetes Service behaviour, with real TCP and UDP traffic in a fresh lab and the real agent, each
named after the Kubernetes e2e network test it mirrors (test/e2e/network/service.go,
conntrack.go, networking.go). Users can run it on their own kernels.

A scenario is a function of a Ctx that raises AssertionError when the behaviour is wrong.
Scenarios about traffic from outside the cluster (NodePort, LoadBalancer, externalTrafficPolicy)
run on a two-node lab with an agent per node on its eth0 (`--node-mode` xdp or tc), and send
from the lab's external client.

Every scenario also has an IPv6 twin: the same code in a dual-stack lab, through the lens of
ebpflb/lab/family.py, which gives every address the scenario writes (manifests, URLs, socket
addresses) its IPv6 twin and maps every address it reads back to the IPv4 one it expects.
"""
import json
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import lab as lablib
from . import nsops
from .agent_runner import RunningAgent, ebpflb, force_cleanup, wait_until
from .family import Family
from .topology import PodSpec, default_pods

NODE = "node-0"  # the lab node's name, given to the agent with --node-name
NODE1 = "node-1"  # the second node of the multi-node scenarios
NODE_ADDRS = ("192.168.200.10", "192.168.200.11")  # eth0 of node 0 and node 1 (topology)
LB_IP = "192.168.200.200"  # inside topology.EXTERNAL_VIP_CIDR, routed to node 0 by the client
Ports = Sequence[Tuple[str, int, str, int]]  # (name, port, protocol, target port)
Endpoints = Sequence[tuple]  # (address, conditions, nodeName[, more endpoint fields as YAML])

WEB = [("http", 80, "TCP", 8080)]
ECHO = [("udp-echo", 53, "UDP", 9053)]
READY = {"ready": True}


def service_yaml(name: str, vip: str, ports: Ports, endpoints: Endpoints, spec_extra: str = "",
                 labels: Optional[Dict[str, str]] = None) -> str:
    """A Service and its EndpointSlice in namespace `conf`, as the API server would hold them."""
    label_text = (", labels: " + json.dumps(labels)) if labels else ""
    svc_ports = ", ".join(f"{{name: {n}, port: {p}, protocol: {proto}, targetPort: {t}}}"
                          for n, p, proto, t in ports)
    slice_ports = ", ".join(f"{{name: {n}, port: {t}, protocol: {proto}}}" for n, _, proto, t in ports)
    # An endpoint is (address, conditions, node) or (address, conditions, node, more fields).
    eps = "".join(f"- {{addresses: [{e[0]}], conditions: {json.dumps(e[1])}, nodeName: {e[2]}"
                  f"{', ' + e[3] if len(e) > 3 else ''}}}\n" for e in endpoints)
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: conf{label_text}}}
spec:
  clusterIP: {vip}
  ports: [{svc_ports}]
{spec_extra}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-x, namespace: conf, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{slice_ports}]
endpoints:{(chr(10) + eps) if eps else " []" + chr(10)}"""


def pods(*numbers: int) -> Endpoints:
    return [(f"10.244.0.{10 + n}", READY, NODE) for n in numbers]


def node1_pods(*numbers: int) -> Endpoints:
    return [(f"10.244.1.{10 + n}", READY, NODE1) for n in numbers]


class AgentView:
    """An agent as a scenario sees it, through the run's family: manifests written with the
    IPv6 twins of their addresses, frontends and backends read back as the IPv4 ones."""

    def __init__(self, agent: RunningAgent, family: Family) -> None:
        self.agent = agent
        self.family = family
        self.pin_dir = agent.pin_dir
        self.node = agent.node

    def write_manifest(self, text: str) -> None:
        self.agent.write_manifest(text=self.family.manifest(text))

    def services(self, draining: bool = False) -> list:
        back = self.family.back
        return [dict(s, frontend=back(s["frontend"]),
                     backends=[dict(b, address=back(b["address"])) for b in s["backends"]])
                for s in self.agent.services(draining)]

    def backends(self, frontend: str) -> Optional[List[str]]:
        for svc in self.services():
            if svc["frontend"] == frontend:
                return [b["address"] for b in svc["backends"]]
        return None


class LensSocket:
    """A socket of the run's family that takes and gives IPv4 addresses (the scenario's)."""

    def __init__(self, sock: socket.socket, family: Family) -> None:
        self._s, self._f = sock, family

    def __enter__(self) -> "LensSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self._s.close()

    def settimeout(self, t: float) -> None:
        self._s.settimeout(t)

    def bind(self, addr: tuple) -> None:
        self._s.bind(self._f.sockaddr(addr))

    def connect(self, addr: tuple) -> None:
        self._s.connect(self._f.sockaddr(addr))

    def send(self, data: bytes) -> int:
        return self._s.send(data)

    def sendto(self, data: bytes, addr: tuple) -> int:
        return self._s.sendto(data, self._f.sockaddr(addr))

    def recv(self, n: int) -> bytes:
        return self._s.recv(n)

    def recvfrom(self, n: int) -> Tuple[bytes, tuple]:
        data, addr = self._s.recvfrom(n)
        return data, self._f.back_addr(addr)


@dataclass
class Ctx:
    lab: str
    agent: AgentView
    agents: List[AgentView] = field(default_factory=list)  # one per node; [agent] on one node
    family: Family = field(default_factory=Family)

    def apply(self, text: str, ready: Callable[[], bool], what: str) -> None:
        for agent in self.agents or [self.agent]:
            agent.write_manifest(text=text)
        wait_until(ready, 15, what)

    def everywhere(self, frontend: str) -> Callable[[], bool]:
        """Readiness: every node's agent programmed the frontend."""
        return lambda: all(frontend in {s["frontend"] for s in a.services()}
                           for a in self.agents or [self.agent])

    def nodeports(self, port: int, proto: str = "TCP") -> Callable[[], bool]:
        """Readiness: each node's agent programmed the NodePort on its own address."""
        return lambda: all(f"{NODE_ADDRS[k]}:{port}/{proto}" in {s["frontend"] for s in a.services()}
                           for k, a in enumerate(self.agents))

    def _read_back(self, r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(r.args, r.returncode, self.family.back(r.stdout),
                                           r.stderr)

    def ext(self, url: str, timeout: float = 3, *extra: str):
        return self._read_back(lablib.run_in_ext(
            self.lab, ["curl", "-sS", "--max-time", str(timeout), *extra, self.family.url(url)],
            timeout=timeout + 10))

    def ext_who(self, url: str) -> str:
        r = self.ext(url)
        assert r.returncode == 0, f"curl {url} from the external client: {r.stderr.strip()}"
        return r.stdout.strip()

    def curl(self, url: str, pod: str = "client", timeout: float = 3):
        return self._read_back(lablib.run_in_pod(
            self.lab, pod, ["curl", "-sS", "--max-time", str(timeout), self.family.url(url)],
            timeout=timeout + 10))

    def who(self, url: str, pod: str = "client") -> str:
        r = self.curl(url, pod)
        assert r.returncode == 0, f"curl {url} from {pod}: {r.stderr.strip()}"
        return r.stdout.strip()

    def socket(self, kind: int, pod: str = "client") -> LensSocket:
        """A socket made in a pod's namespace (`pod` "ext": the external client's)."""
        with nsops.in_netns(f"{self.lab}-{pod}"):
            return LensSocket(socket.socket(self.family.socket_family(), kind), self.family)

    def udp(self, vip: str, port: int, payload: bytes, pod: str = "client") -> Tuple[str, tuple]:
        with self.socket(socket.SOCK_DGRAM, pod) as s:
            s.settimeout(3)
            s.sendto(payload, (vip, port))
            data, peer = s.recvfrom(2048)
        return data.decode(), peer

    def frontends(self) -> set:
        return {s["frontend"] for s in self.agent.services()}

    def node_drops(self, k: int = 0) -> int:
        """Packets node k's node-device programs dropped (XDP and TC): what tells a drop by the
        data plane from a timeout for any other reason."""
        out = json.loads(ebpflb("stats", "--verdicts", "-o", "json", "--pin-dir",
                                self.agents[k].pin_dir).stdout)
        return sum(out["verdicts"][hook]["drop"] for hook in ("node_xdp", "node_in"))


# ---- scenarios -------------------------------------------------------------------------------

def session_affinity(c: Ctx) -> None:
    c.apply(service_yaml("web", "10.96.1.1", WEB, pods(1, 2, 3), "  sessionAffinity: ClientIP\n"),
            lambda: "10.96.1.1:80/TCP" in c.frontends(), "the Service")
    picks = {c.who("http://10.96.1.1/") for _ in range(20)}
    assert len(picks) == 1, f"one client reached {sorted(picks)}"


def session_affinity_timeout(c: Ctx) -> None:
    timeout = ("  sessionAffinity: ClientIP\n"
               "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n")
    c.apply(service_yaml("web", "10.96.1.1", WEB, pods(1, 2, 3), timeout),
            lambda: "10.96.1.1:80/TCP" in c.frontends(), "the Service")
    bound = c.who("http://10.96.1.1/")
    assert all(c.who("http://10.96.1.1/") == bound for _ in range(5)), "not sticky within timeout"
    for _ in range(12):  # after 1 s idle a new flow is hashed again: 2 in 3 leave the old pod
        time.sleep(1.3)
        if c.who("http://10.96.1.1/") != bound:
            return
    raise AssertionError(f"every flow after the timeout still went to {bound}")


def switch_session_affinity(c: Ctx) -> None:
    base = service_yaml("web", "10.96.1.1", WEB, pods(1, 2, 3))
    sticky = service_yaml("web", "10.96.1.1", WEB, pods(1, 2, 3), "  sessionAffinity: ClientIP\n")
    c.apply(sticky, lambda: "10.96.1.1:80/TCP" in c.frontends(), "ClientIP")
    assert len({c.who("http://10.96.1.1/") for _ in range(15)}) == 1
    c.agent.write_manifest(text=base)
    time.sleep(0.6)
    assert len({c.who("http://10.96.1.1/") for _ in range(30)}) == 3, "None did not spread again"
    c.agent.write_manifest(text=sticky)
    time.sleep(0.6)
    assert len({c.who("http://10.96.1.1/") for _ in range(15)}) == 1, "ClientIP did not stick again"


def rejected_without_endpoints(c: Ctx) -> None:
    c.apply(service_yaml("web", "10.96.1.1", WEB, []) + service_yaml("dns", "10.96.1.2", ECHO, []),
            lambda: c.frontends() == {"10.96.1.1:80/TCP", "10.96.1.2:53/UDP"}, "the Services")
    with c.socket(socket.SOCK_STREAM) as s:
        s.settimeout(3)
        started = time.monotonic()
        try:
            s.connect(("10.96.1.1", 80))
            raise AssertionError("TCP connected to a Service without endpoints")
        except ConnectionRefusedError:
            pass
        assert time.monotonic() - started < 1, "TCP was not refused at once"
    with c.socket(socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect(("10.96.1.2", 53))
        s.send(b"anyone?")
        try:
            s.recv(100)
            raise AssertionError("UDP got an answer from a Service without endpoints")
        except ConnectionRefusedError:
            pass


def fallback_terminating_cluster(c: Ctx) -> None:
    eps = [("10.244.0.11", {"ready": False, "serving": True, "terminating": True}, NODE),
           ("10.244.0.12", {"ready": False, "serving": False, "terminating": True}, NODE),
           ("10.244.0.13", {"ready": False}, NODE)]
    c.apply(service_yaml("web", "10.96.1.1", WEB, eps),
            lambda: c.agent.backends("10.96.1.1:80/TCP") == ["10.244.0.11"], "the fallback")
    assert {c.who("http://10.96.1.1/") for _ in range(5)} == {"web-1"}


def fallback_terminating_local(c: Ctx) -> None:
    eps = [("10.244.0.11", {"ready": False, "serving": True, "terminating": True}, NODE),
           ("10.244.0.12", READY, "node-1"),  # ready, but on another node
           ("10.244.0.13", {"ready": False, "serving": False, "terminating": True}, NODE)]
    c.apply(service_yaml("web", "10.96.1.1", WEB, eps, "  internalTrafficPolicy: Local\n"),
            lambda: c.agent.backends("10.96.1.1:80/TCP") == ["10.244.0.11"], "the local fallback")
    assert {c.who("http://10.96.1.1/") for _ in range(5)} == {"web-1"}


def internal_traffic_policy_local(c: Ctx) -> None:
    eps = [("10.244.0.11", READY, NODE), ("10.244.0.12", READY, "node-1"),
           ("10.244.0.13", READY, NODE)]
    c.apply(service_yaml("web", "10.96.1.1", WEB, eps, "  internalTrafficPolicy: Local\n"),
            lambda: c.agent.backends("10.96.1.1:80/TCP") == ["10.244.0.11", "10.244.0.13"],
            "local endpoints only")
    assert {c.who("http://10.96.1.1/") for _ in range(20)} == {"web-1", "web-3"}


def _hinted(zones: Dict[str, str], nodes: Optional[Dict[str, str]] = None) -> Endpoints:
    """web-1..3 (all on this node, as the lab has them) with hints: zones[pod] for forZones,
    nodes[pod] for forNodes; a pod missing from `zones` has no hints at all."""
    out = []
    for n in (1, 2, 3):
        pod = f"web-{n}"
        hints = []
        if pod in zones:
            hints.append(f"forZones: [{{name: {zones[pod]}}}]")
        if nodes and pod in nodes:
            hints.append(f"forNodes: [{{name: {nodes[pod]}}}]")
        more = f"zone: {zones.get(pod, 'zone-b')}" + (f", hints: {{{', '.join(hints)}}}" if hints else "")
        out.append((f"10.244.0.{10 + n}", READY, NODE, more))
    return out


def prefer_close(c: Ctx) -> None:
    """The agent's node is in zone-a (--node-zone): with every endpoint hinted, only those
    hinted for zone-a get traffic; with one endpoint unhinted, the hints are ignored."""
    spec = "  trafficDistribution: PreferClose\n"
    c.apply(service_yaml("near", "10.96.1.7", WEB,
                         _hinted({"web-1": "zone-a", "web-2": "zone-a", "web-3": "zone-b"}), spec),
            lambda: c.agent.backends("10.96.1.7:80/TCP") == ["10.244.0.11", "10.244.0.12"],
            "the zone's endpoints")
    (view,) = [s for s in c.agent.services() if s["frontend"] == "10.96.1.7:80/TCP"]
    assert view["topology"] == "PreferSameZone", view
    assert {c.who("http://10.96.1.7/") for _ in range(20)} == {"web-1", "web-2"}
    c.apply(service_yaml("near", "10.96.1.7", WEB, _hinted({"web-1": "zone-a", "web-2": "zone-a"}),
                         spec),
            lambda: len(c.agent.backends("10.96.1.7:80/TCP") or []) == 3, "every endpoint")
    assert {c.who("http://10.96.1.7/") for _ in range(25)} == {"web-1", "web-2", "web-3"}


def prefer_same_node(c: Ctx) -> None:
    """Every endpoint hinted for a node, one for this one: only that one gets traffic."""
    hinted = _hinted({"web-1": "zone-a", "web-2": "zone-a", "web-3": "zone-b"},
                     {"web-1": "node-1", "web-2": NODE, "web-3": "node-1"})
    c.apply(service_yaml("same", "10.96.1.8", WEB, hinted, "  trafficDistribution: PreferSameNode\n"),
            lambda: c.agent.backends("10.96.1.8:80/TCP") == ["10.244.0.12"], "this node's endpoint")
    assert {c.who("http://10.96.1.8/") for _ in range(10)} == {"web-2"}


def same_port_different_protocols(c: Ctx) -> None:
    ports = [("dns-tcp", 53, "TCP", 8080), ("dns-udp", 53, "UDP", 9053)]
    c.apply(service_yaml("dual", "10.96.1.53", ports, pods(2)),
            lambda: c.frontends() == {"10.96.1.53:53/TCP", "10.96.1.53:53/UDP"}, "both frontends")
    assert c.who("http://10.96.1.53:53/") == "web-2"
    data, peer = c.udp("10.96.1.53", 53, b"q")
    assert data == "web-2 q" and peer == ("10.96.1.53", 53)


def multiport(c: Ctx) -> None:
    ports = [("http", 80, "TCP", 8080), ("alt", 8081, "TCP", 8080), ("udp", 5353, "UDP", 9053)]
    c.apply(service_yaml("multi", "10.96.1.5", ports, pods(1, 2)),
            lambda: c.frontends() == {"10.96.1.5:80/TCP", "10.96.1.5:8081/TCP",
                                      "10.96.1.5:5353/UDP"}, "three frontends")
    assert {c.who("http://10.96.1.5/") for _ in range(15)} == {"web-1", "web-2"}
    assert c.who("http://10.96.1.5:8081/") in {"web-1", "web-2"}
    assert c.udp("10.96.1.5", 5353, b"m")[0].split()[0] in {"web-1", "web-2"}


def hairpin(c: Ctx) -> None:
    c.apply(service_yaml("self", "10.96.1.1", WEB + ECHO, pods(1)),
            lambda: c.frontends() == {"10.96.1.1:80/TCP", "10.96.1.1:53/UDP"}, "the Service")
    assert c.who("http://10.96.1.1/client", pod="web-1").startswith("169.254.42.1:")
    assert c.udp("10.96.1.1", 53, b"me", pod="web-1") == ("web-1 me", ("10.96.1.1", 53))


def preserve_udp_when_pod_cycles(c: Ctx) -> None:
    c.apply(service_yaml("dns", "10.96.1.2", ECHO, pods(1, 2)),
            lambda: c.agent.backends("10.96.1.2:53/UDP") == ["10.244.0.11", "10.244.0.12"], "dns")
    with c.socket(socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind(("0.0.0.0", 41234))
        s.sendto(b"one", ("10.96.1.2", 53))
        first = s.recvfrom(100)[0].decode().split()[0]
        left = [e for e in pods(1, 2) if e[0] != f"10.244.0.{10 + int(first[-1])}"]
        c.apply(service_yaml("dns", "10.96.1.2", ECHO, left),
                lambda: len(c.agent.backends("10.96.1.2:53/UDP")) == 1, "the pod to leave")
        lablib.del_pod(c.lab, first)
        time.sleep(0.3)
        s.sendto(b"two", ("10.96.1.2", 53))
        second = s.recvfrom(100)[0].decode().split()[0]
    assert second != first, "the same 5-tuple still went to the removed pod"


def preserve_source_ip(c: Ctx) -> None:
    c.apply(service_yaml("web", "10.96.1.1", WEB, pods(1)),
            lambda: "10.96.1.1:80/TCP" in c.frontends(), "the Service")
    seen = c.who("http://10.96.1.1/client").split(":")[0]
    assert seen == "10.244.0.2", f"the pod saw {seen}, not the client pod's address"


def service_proxy_name(c: Ctx) -> None:
    mine = service_yaml("mine", "10.96.1.1", WEB, pods(1))
    theirs = service_yaml("theirs", "10.96.1.2", WEB, pods(2),
                          labels={"service.kubernetes.io/service-proxy-name": "other"})
    c.apply(mine + theirs, lambda: "10.96.1.1:80/TCP" in c.frontends(), "mine")
    assert c.frontends() == {"10.96.1.1:80/TCP"}, "another proxy's Service was programmed"
    assert c.curl("http://10.96.1.2/", timeout=1).returncode != 0


def externalname_clusterip_changes(c: Ctx) -> None:
    external = ("---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: conf}\n"
                "spec: {type: ExternalName, externalName: example.invalid}\n")
    clusterip = service_yaml("web", "10.96.1.1", WEB, pods(1, 2))
    c.apply(external, lambda: c.frontends() == set(), "ExternalName (nothing programmed)")
    c.apply(clusterip, lambda: "10.96.1.1:80/TCP" in c.frontends(), "ExternalName -> ClusterIP")
    assert c.who("http://10.96.1.1/") in {"web-1", "web-2"}
    c.apply(external, lambda: c.frontends() == set(), "ClusterIP -> ExternalName")
    assert c.curl("http://10.96.1.1/", timeout=1).returncode != 0


def publish_not_ready(c: Ctx) -> None:
    eps = [("10.244.0.11", {"ready": False}, NODE), ("10.244.0.12", {"ready": False}, NODE)]
    c.apply(service_yaml("web", "10.96.1.1", WEB, eps, "  publishNotReadyAddresses: true\n"),
            lambda: len(c.agent.backends("10.96.1.1:80/TCP") or []) == 2, "unready endpoints")
    assert {c.who("http://10.96.1.1/") for _ in range(15)} == {"web-1", "web-2"}


def icmp_errors_translated(c: Ctx) -> None:
    c.apply(service_yaml("deaf", "10.96.1.60", [("u", 5000, "UDP", 9999)], pods(1)),
            lambda: "10.96.1.60:5000/UDP" in c.frontends(), "the Service")
    with c.socket(socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect(("10.96.1.60", 5000))
        s.send(b"anyone listening?")
        try:
            s.recv(100)
            raise AssertionError("an answer from a port nobody listens on")
        except ConnectionRefusedError:
            pass  # the pod's port unreachable reached the socket connected to the VIP


# ---- traffic from outside the cluster (two nodes) -----------------------------------------------

def np_service(name: str, vip: str, node_port: int, endpoints: Endpoints, extra: str = "",
               lb: bool = False, ports: Ports = WEB) -> str:
    """A NodePort (or LoadBalancer) Service with nodePort on its one port."""
    kind = "LoadBalancer" if lb else "NodePort"
    text = service_yaml(name, vip, ports, endpoints, f"  type: {kind}\n{extra}")
    n, p, proto, t = ports[0]
    return text.replace(f"{{name: {n}, port: {p}, protocol: {proto}, targetPort: {t}}}",
                        f"{{name: {n}, port: {p}, protocol: {proto}, targetPort: {t}, "
                        f"nodePort: {node_port}}}", 1)


def lb_status(ip: str) -> str:
    return f"status: {{loadBalancer: {{ingress: [{{ip: {ip}}}]}}}}\n"


def with_status(text: str, status: str) -> str:
    """Puts `status` into the Service document (the first one of `text`)."""
    head, sep, rest = text.partition("---\napiVersion: discovery.k8s.io/v1")
    return head + status + sep + rest


def nodeport_functioning(c: Ctx) -> None:
    c.apply(np_service("web", "10.96.1.1", 30080, pods(1, 2) + node1_pods(1)),
            c.nodeports(30080), "the NodePort on both nodes")
    for addr in NODE_ADDRS:
        seen = {c.ext_who(f"http://{addr}:30080/") for _ in range(24)}
        assert seen == {"web-1", "web-2", "n1-web-1"}, f"via {addr}: {sorted(seen)}"


def etp_local_source_ip(c: Ctx) -> None:
    local = "  externalTrafficPolicy: Local\n"
    c.apply(np_service("web", "10.96.1.1", 30080, pods(1) + node1_pods(1), local),
            c.nodeports(30080), "the NodePort")
    for addr in NODE_ADDRS:
        seen = c.ext_who(f"http://{addr}:30080/client").split(":")[0]
        assert seen == "192.168.200.2", f"via {addr} the pod saw {seen}, not the client"
    # Cluster policy, a backend on the other node: the client is SNATed to the node's address.
    c.apply(np_service("web", "10.96.1.1", 30080, node1_pods(1)),
            lambda: all(a.backends(f"{NODE_ADDRS[0]}:30080/TCP") == ["10.244.1.11"]
                        for a in c.agents[:1]), "the remote backend")
    seen = c.ext_who(f"http://{NODE_ADDRS[0]}:30080/client").split(":")[0]
    assert seen == NODE_ADDRS[0], f"the remote pod saw {seen}, not node 0's address"


def etp_local_only_nodes_with_endpoints(c: Ctx) -> None:
    local = "  externalTrafficPolicy: Local\n"
    c.apply(np_service("web", "10.96.1.1", 30080, node1_pods(1, 2), local),
            c.nodeports(30080), "the NodePort")
    assert {c.ext_who(f"http://{NODE_ADDRS[1]}:30080/") for _ in range(12)} == {"n1-web-1",
                                                                              "n1-web-2"}
    before = c.node_drops(0)
    r = c.ext(f"http://{NODE_ADDRS[0]}:30080/", timeout=1.5)
    # Dropped, not refused: curl times out (28) instead of failing to connect (7); by node 0's
    # programs, not lost on the way.
    assert r.returncode == 28, f"node 0 without local endpoints: curl exit {r.returncode}"
    assert c.node_drops(0) > before, "the timeout was not node 0's drop"


def etp_local_terminating_fallback(c: Ctx) -> None:
    """Node 0's only endpoint is terminating (still serving), node 1's is ready: from outside,
    node 0's NodePort reaches its own terminating endpoint rather than dropping, node 1's its
    ready one; pods reach the ready one (ready endpoints win cluster-wide)."""
    terminating = {"ready": False, "serving": True, "terminating": True}
    eps = [("10.244.0.11", terminating, NODE), ("10.244.1.11", READY, NODE1)]
    c.apply(np_service("web", "10.96.1.1", 30080, eps, "  externalTrafficPolicy: Local\n"),
            c.nodeports(30080), "the NodePort")
    assert {c.ext_who(f"http://{NODE_ADDRS[0]}:30080/") for _ in range(6)} == {"web-1"}
    assert {c.ext_who(f"http://{NODE_ADDRS[1]}:30080/") for _ in range(6)} == {"n1-web-1"}
    assert {c.who("http://10.96.1.1/") for _ in range(6)} == {"n1-web-1"}


def lb_ip_mode_proxy(c: Ctx) -> None:
    """An ingress address with ipMode Proxy is the load balancer's to proxy (PROXY protocol,
    hairpin through it): not programmed, and listed as skipped; with ipMode VIP it is."""
    ingress = f"status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}, ipMode: Proxy}}]}}}}\n"
    c.apply(with_status(np_service("web", "10.96.1.1", 30080, node1_pods(1), lb=True), ingress),
            c.nodeports(30080), "the LoadBalancer Service")
    assert all(f"{LB_IP}:80/TCP" not in {s["frontend"] for s in a.services()} for a in c.agents)
    r = c.ext(f"http://{LB_IP}/", timeout=1.5)
    assert r.returncode != 0, "a Proxy-mode ingress address answered"
    skipped = json.loads(ebpflb("service", "list", "--all", "-o", "json", "--pin-dir",
                                c.agent.pin_dir).stdout)["skipped"]
    assert any("ipMode Proxy" in s["reason"] for s in skipped), skipped
    vip = f"status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}, ipMode: VIP}}]}}}}\n"
    c.apply(with_status(np_service("web", "10.96.1.1", 30080, node1_pods(1), lb=True), vip),
            c.everywhere(f"{LB_IP}:80/TCP"), "the load balancer address")
    assert c.ext_who(f"http://{LB_IP}/") == "n1-web-1"


def etp_local_health_check(c: Ctx) -> None:
    local = "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n"
    text = with_status(np_service("web", "10.96.1.1", 30080, node1_pods(1, 2), local, lb=True),
                       lb_status(LB_IP))
    c.apply(text, c.nodeports(30080), "the LoadBalancer Service")

    def health(addr: str) -> Tuple[int, dict]:
        r = c.ext(f"http://{addr}:32000/healthz", 3, "-w", "\n%{http_code}")
        assert r.returncode == 0, f"health check on {addr}: {r.stderr.strip()}"
        body, _, code = r.stdout.rpartition("\n")
        return int(code), json.loads(body)

    wait_until(lambda: health(NODE_ADDRS[1])[0] == 200, 10, "node 1 healthy")
    code, body = health(NODE_ADDRS[1])
    assert body["localEndpoints"] == 2 and body["service"] == {"namespace": "conf", "name": "web"}
    assert health(NODE_ADDRS[0])[0] == 503, "node 0 has no local endpoint"
    # The endpoints move to node 0: the answers follow.
    c.apply(with_status(np_service("web", "10.96.1.1", 30080, pods(1), local, lb=True),
                        lb_status(LB_IP)),
            lambda: health(NODE_ADDRS[0])[0] == 200 and health(NODE_ADDRS[1])[0] == 503,
            "the health checks to follow the endpoints")


def lb_source_ranges(c: Ctx) -> None:
    def service(ranges: str) -> str:
        extra = f"  loadBalancerSourceRanges: [{ranges}]\n"
        return with_status(np_service("web", "10.96.1.1", 30080, pods(1), extra, lb=True),
                           lb_status(LB_IP))

    c.apply(service("192.168.200.0/30"), c.everywhere(f"{LB_IP}:80/TCP"), "the LoadBalancer")
    assert c.ext_who(f"http://{LB_IP}/") == "web-1", "an allowed client was refused"
    c.apply(service("192.168.200.8/29"), lambda: c.ext(f"http://{LB_IP}/", 1).returncode == 28,
            "the client to be denied")
    assert c.ext_who(f"http://{NODE_ADDRS[0]}:30080/") == "web-1", \
        "source ranges restrict the load balancer IP only, not the NodePort"


def nodeport_session_affinity(c: Ctx) -> None:
    c.apply(np_service("web", "10.96.1.1", 30080, pods(1, 2) + node1_pods(1, 2),
                       "  sessionAffinity: ClientIP\n"),
            c.nodeports(30080), "the NodePort")
    picks = {c.ext_who(f"http://{NODE_ADDRS[0]}:30080/") for _ in range(15)}
    assert len(picks) == 1, f"one client reached {sorted(picks)}"


def nodeport_udp_pod_cycles(c: Ctx) -> None:
    c.apply(np_service("dns", "10.96.1.2", 30053, pods(1) + node1_pods(1), ports=ECHO),
            c.nodeports(30053, "UDP"), "the UDP NodePort")
    with c.socket(socket.SOCK_DGRAM, "ext") as s:
        s.settimeout(3)
        s.bind(("0.0.0.0", 41235))
        s.sendto(b"one", (NODE_ADDRS[0], 30053))
        data, peer = s.recvfrom(100)
        assert peer == (NODE_ADDRS[0], 30053), f"the reply came from {peer}"
        first = data.decode().split()[0]
        left = node1_pods(1) if first == "web-1" else pods(1)
        c.apply(np_service("dns", "10.96.1.2", 30053, left, ports=ECHO),
                lambda: len(c.agents[0].backends(f"{NODE_ADDRS[0]}:30053/UDP") or []) == 1,
                "the pod to leave")
        lablib.del_pod(c.lab, first)
        time.sleep(0.3)
        s.sendto(b"two", (NODE_ADDRS[0], 30053))
        second = s.recvfrom(100)[0].decode().split()[0]
    assert second != first, "the same 5-tuple still went to the removed pod"


def etp_local_from_pods(c: Ctx) -> None:
    """Pods are inside the cluster: through the load balancer IP or a node port of a Local-policy
    Service they reach every endpoint, also where their node has none, with their own address."""
    local = "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n"
    c.apply(with_status(np_service("web", "10.96.1.1", 30080, node1_pods(1), local, lb=True),
                        lb_status(LB_IP)),
            c.everywhere(f"{LB_IP}:80/TCP"), "the LoadBalancer Service")
    before = c.node_drops(0)
    assert c.ext(f"http://{LB_IP}/", timeout=1.5).returncode == 28, \
        "from outside, node 0 (no local endpoint) must drop"
    assert c.node_drops(0) > before, "the timeout was not node 0's drop"
    for url in (f"http://{LB_IP}/client", f"http://{NODE_ADDRS[0]}:30080/client"):
        r = c.curl(url)
        assert r.returncode == 0, f"a pod on node 0 through {url}: {r.stderr.strip()}"
        assert r.stdout.split(":")[0] == "10.244.0.2", f"the pod saw {r.stdout.strip()}"


def nodeport_icmp_errors(c: Ctx) -> None:
    """A UDP port nobody listens on behind a NodePort: the pod's port unreachable must reach the
    client's socket, connected to the node's address, both from a local pod (rewritten on the way
    out) and from a remote one (it arrives at this node about the SNATed packet)."""
    deaf = [("u", 5000, "UDP", 9999)]
    for name, eps in (("local", pods(1)), ("remote", node1_pods(1))):
        c.apply(np_service("deaf", "10.96.1.60", 30500, eps, ports=deaf),
                lambda: all(a.backends(f"{NODE_ADDRS[0]}:30500/UDP") == [eps[0][0]]
                            for a in c.agents[:1]), f"the {name} backend")
        with c.socket(socket.SOCK_DGRAM, "ext") as s:
            s.settimeout(3)
            s.connect((NODE_ADDRS[0], 30500))
            s.send(b"anyone listening?")
            try:
                s.recv(100)
                raise AssertionError(f"an answer from a port nobody listens on ({name})")
            except ConnectionRefusedError:
                pass
            except socket.timeout:
                raise AssertionError(f"the {name} pod's port unreachable never reached the "
                                     "client") from None


def sockclient(c: Ctx, where: str, *ops: dict) -> list:
    """Socket operations (ebpflb.lab.sockclient) by a process of `where`: a pod, or "node" (a
    host-network process), in its node's cgroup, where the socket hooks act."""
    ops = [dict(op, addr=c.family.ip(op["addr"])) if "addr" in op else op for op in ops]
    r = lablib.run_in_pod(c.lab, where, [sys.executable, "-m", "ebpflb.lab.sockclient",
                                         json.dumps(list(ops))], timeout=60)
    assert r.returncode == 0, f"sockclient in {where}: {r.stderr.strip()}"
    return json.loads(c.family.back(r.stdout))


def node_service(c: Ctx) -> None:
    """A host-network process (the node's own namespace, where no pod device sees its packets)
    reaches a ClusterIP over TCP and UDP and its node's NodePort: only the socket hooks serve it,
    as kube-proxy's OUTPUT chains do."""
    c.apply(np_service("web", "10.96.1.1", 30080, pods(1, 2) + node1_pods(1), ports=WEB + ECHO),
            c.nodeports(30080), "the NodePort on both nodes")
    ops = [{"op": "http", "addr": "10.96.1.1", "port": 80}] * 30
    served = {r["body"] for r in sockclient(c, "node", *ops)}
    assert served == {"web-1", "web-2", "n1-web-1"}, f"served by {served}"
    (udp,) = sockclient(c, "node", {"op": "udp", "addr": "10.96.1.1", "port": 53})
    assert udp["errno"] is None and udp["source"] == "10.96.1.1:53", udp
    (r,) = sockclient(c, "node", {"op": "http", "addr": NODE_ADDRS[0], "port": 30080})
    assert r["body"] in {"web-1", "web-2", "n1-web-1"}, r


def connected_udp_moves_off_a_removed_backend(c: Ctx) -> None:
    """A DNS client keeps one connected UDP socket; its backend leaves the Service (the pod still
    runs). The agent closes the socket; the client's next one reaches a live backend within a
    second of the change."""
    c.apply(service_yaml("dns", "10.96.1.2", ECHO, pods(1)),
            lambda: c.agent.backends("10.96.1.2:53/UDP") == ["10.244.0.11"], "dns")
    loop = {"op": "udp-loop", "addr": "10.96.1.2", "port": 53, "count": 60, "interval": 0.05,
            "reconnect": True}
    loop = dict(loop, addr=c.family.ip(loop["addr"]))
    proc = subprocess.Popen(nsops.in_cgroup(lablib.get_lab(c.lab).cgroup(0), [
        "ip", "netns", "exec", f"{c.lab}-client", sys.executable, "-m", "ebpflb.lab.sockclient",
        json.dumps([loop])]), stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # the socket is connected to web-1, the only backend
        changed = time.time()
        c.apply(service_yaml("dns", "10.96.1.2", ECHO, pods(2)),
                lambda: c.agent.backends("10.96.1.2:53/UDP") == ["10.244.0.12"], "web-1 to leave")
        (result,) = json.loads(proc.communicate(timeout=30)[0])
    finally:
        if proc.poll() is None:
            proc.kill()
    answers = [(result["started"] + t, a) for t, a in result["answers"]]
    assert any(a and a.startswith("web-1 ") for at, a in answers if at < changed), answers
    late = [a for at, a in answers if at > changed + 1.0]
    assert late and all(a is not None and a.startswith("web-2 ") for a in late), \
        f"answers more than 1 s after the change: {late}"


@dataclass(frozen=True)
class Scenario:
    name: str  # the e2e test's name ("[ebpflb]" when the e2e suite has none)
    behaviour: str
    run: Callable[[Ctx], None]
    extra_pods: Tuple[PodSpec, ...] = ()
    nodes: int = 1  # 2: traffic from outside, an agent per node on its eth0
    socket_lb: str = "off"  # the agents' --socket-lb: most scenarios are about the packet path
    agent_args: Tuple[str, ...] = ()  # more flags for the agents
    # It deletes pods: its IPv4 run and IPv6 twin cannot share one lab (run_families).
    changes_pods: bool = False


SCENARIOS: Tuple[Scenario, ...] = (
    Scenario("should have session affinity work for service with type clusterIP",
             "sessionAffinity ClientIP", session_affinity),
    Scenario("should have session affinity timeout work for service with type clusterIP",
             "affinity timeout since last use", session_affinity_timeout),
    Scenario("should be able to switch session affinity for service with type clusterIP",
             "switching None <-> ClientIP", switch_session_affinity),
    Scenario("should serve multiport endpoints from pods", "multi-port Services", multiport),
    Scenario("should serve endpoints on same port and different protocols",
             "same port, TCP and UDP", same_port_different_protocols),
    Scenario("should create endpoints for unready pods", "publishNotReadyAddresses",
             publish_not_ready),
    Scenario("should fallback to terminating endpoints when there are no ready endpoints with "
             "internalTrafficPolicy=Cluster", "serving+terminating fallback",
             fallback_terminating_cluster),
    Scenario("should fallback to local terminating endpoints when there are no ready endpoints "
             "with internalTrafficPolicy=Local", "local fallback", fallback_terminating_local),
    Scenario("should respect internalTrafficPolicy=Local Pod to Pod", "internalTrafficPolicy Local",
             internal_traffic_policy_local),
    Scenario("should be rejected when no endpoints exist", "TCP RST / ICMP unreachable",
             rejected_without_endpoints),
    Scenario("[Feature:Traffic Distribution] when Service has trafficDistribution=PreferClose "
             "should route traffic to an endpoint that is close to the client",
             "zone hints; ignored unless every endpoint has one", prefer_close,
             agent_args=("--node-zone", "zone-a")),
    Scenario("[ebpflb] trafficDistribution=PreferSameNode routes to the endpoint hinted for this "
             "node", "node hints before zone hints", prefer_same_node,
             agent_args=("--node-zone", "zone-a")),
    Scenario("should implement service.kubernetes.io/service-proxy-name", "another proxy's Service",
             service_proxy_name),
    Scenario("should be able to change the type from ExternalName to ClusterIP (and back)",
             "type changes", externalname_clusterip_changes),
    Scenario("should allow pods to hairpin back to themselves through services", "hairpin", hairpin),
    Scenario("should be able to preserve UDP traffic when server pod cycles for a ClusterIP service",
             "stale UDP conntrack", preserve_udp_when_pod_cycles, changes_pods=True),
    Scenario("should preserve source pod IP for traffic thru service cluster IP",
             "source IP preserved", preserve_source_ip),
    Scenario("Granular Checks: Services should function for node-Service: http",
             "host-network client (socket hooks)", node_service, nodes=2, socket_lb="all"),
    Scenario("[ebpflb] should move a connected UDP socket off a removed backend",
             "stale connected UDP socket closed", connected_udp_moves_off_a_removed_backend,
             socket_lb="all"),
    Scenario("[ebpflb] should translate ICMP errors about load-balanced flows",
             "ICMP error translation", icmp_errors_translated),
    Scenario("should be able to create a functioning NodePort service",
             "NodePort on every node, backends on both", nodeport_functioning, nodes=2),
    Scenario("[Feature:ExternalTrafficPolicy] should work for type=NodePort",
             "Local keeps the client IP; Cluster SNATs to a remote node", etp_local_source_ip,
             nodes=2),
    Scenario("[Feature:ExternalTrafficPolicy] should only target nodes with endpoints",
             "Local drops on nodes without endpoints", etp_local_only_nodes_with_endpoints,
             nodes=2),
    Scenario("[Feature:ExternalTrafficPolicy] should work for type=LoadBalancer",
             "healthCheckNodePort 200/503 follows endpoints", etp_local_health_check, nodes=2),
    Scenario("should only allow access from service loadbalancer source ranges",
             "loadBalancerSourceRanges", lb_source_ranges, nodes=2),
    Scenario("should have session affinity work for NodePort service",
             "sessionAffinity ClientIP from outside", nodeport_session_affinity, nodes=2),
    Scenario("should be able to preserve UDP traffic when server pod cycles for a NodePort service",
             "stale UDP conntrack from outside", nodeport_udp_pod_cycles, nodes=2,
             changes_pods=True),
    Scenario("[Feature:ExternalTrafficPolicy] should work from pods",
             "pods reach every endpoint of a Local Service", etp_local_from_pods, nodes=2),
    Scenario("should fallback to local terminating endpoints when there are no ready endpoints "
             "with externalTrafficPolicy=Local", "local terminating fallback from outside",
             etp_local_terminating_fallback, nodes=2),
    Scenario("[ebpflb] a LoadBalancer ingress address with ipMode Proxy is left to the load "
             "balancer", "ipMode Proxy not programmed, VIP programmed", lb_ip_mode_proxy, nodes=2),
    Scenario("[ebpflb] should translate ICMP errors about flows from outside",
             "ICMP errors from local and remote backends", nodeport_icmp_errors, nodes=2),
)


@dataclass
class Result:
    name: str
    behaviour: str
    outcome: str  # "pass" | "fail"
    seconds: float
    detail: str = ""
    family: str = "ipv4"  # "ipv6": the scenario's IPv6 twin (ebpflb/lab/family.py)


NODE_MODES = ("xdp", "tc")


def run_scenario(scenario: Scenario, lab_name: Optional[str] = None,
                 node_mode: str = "xdp", family: str = "ipv4") -> Result:
    """A fresh lab and agent(s) for one scenario, removed afterwards whatever happens; with
    `family` "ipv6", its IPv6 twin in a dual-stack lab."""
    return _run(scenario, lab_name, node_mode, (family,))[0]


def run_families(scenario: Scenario, lab_names: Sequence[str], node_mode: str = "xdp",
                 families: Sequence[str] = ("ipv4", "ipv6")) -> List[Result]:
    """The scenario once per family: one after the other in one dual-stack lab with the same
    agents (the IPv6 twin after the IPv4 run, each from its own manifest), which costs one lab
    and one set of agents instead of two; in a lab each (from `lab_names`) for a scenario that
    deletes pods."""
    if len(families) > 1 and scenario.changes_pods:
        return [_run(scenario, name, node_mode, (family,))[0]
                for name, family in zip(lab_names, families)]
    return _run(scenario, lab_names[0] if lab_names else None, node_mode, tuple(families))


def _clear(views: List["AgentView"]) -> None:
    """Every agent back to no Service, between one family's run and the next's."""
    for view in views:
        view.agent.write_manifest(text="")
    for view in views:
        wait_until(lambda v=view: not v.agent.services(), 15,
                   f"node {view.node}'s agent to drop the last run's Services")


def _run(scenario: Scenario, lab_name: Optional[str], node_mode: str,
         families: Tuple[str, ...]) -> List[Result]:
    name = lab_name or "cf" + secrets.token_hex(3)[:5]
    lenses = [Family(f) for f in families]
    results: List[Result] = []
    started = time.monotonic()
    try:
        lablib.lab_up(name, default_pods(4, nodes=scenario.nodes) + list(scenario.extra_pods),
                      nodes=scenario.nodes,
                      ip_family="dual" if any(l.ipv6 for l in lenses) else "ipv4")
        with tempfile.TemporaryDirectory(prefix="ebpflb-conformance-") as work:
            agents: List[RunningAgent] = []
            try:
                for k in range(scenario.nodes):
                    north_south = (["--node-device", "eth0", "--node-mode", node_mode]
                                   if scenario.nodes > 1 else [])
                    agents.append(RunningAgent(name, Path(work), [], node=k, extra_args=[
                        "--node-name", f"node-{k}", "--metrics-address", "",
                        "--health-address", "", "--socket-lb", scenario.socket_lb,
                        *north_south, *scenario.agent_args]))
                for i, lens in enumerate(lenses):
                    views = [AgentView(a, lens) for a in agents]
                    if i:
                        _clear(views)
                        started = time.monotonic()
                    try:
                        scenario.run(Ctx(name, views[0], views, lens))
                    except Exception as exc:  # noqa: BLE001 - this family's failure
                        results.append(_failed(scenario, started, exc, lens.name))
                    else:
                        results.append(Result(scenario.name, scenario.behaviour, "pass",
                                              time.monotonic() - started, family=lens.name))
            finally:
                for agent in agents:
                    agent.stop()
    except Exception as exc:  # noqa: BLE001 - any error is this scenario's failure, not the run's
        done = {r.family for r in results}
        results += [_failed(scenario, started, exc, lens.name) for lens in lenses
                    if lens.name not in done]
    finally:
        force_cleanup(name)
        lablib.lab_down(name)
    return results


def _failed(scenario: Scenario, started: float, exc: Exception, family: str) -> Result:
    detail = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
    return Result(scenario.name, scenario.behaviour, "fail", time.monotonic() - started,
                  detail or "assertion failed", family)


def run_conformance(names: Optional[List[str]] = None,
                    progress: Optional[Callable[[Result], None]] = None,
                    node_mode: str = "xdp", families: Sequence[str] = ("ipv4",)) -> List[Result]:
    results = []
    for scenario in SCENARIOS:
        if names and not any(n in scenario.name for n in names):
            continue
        lab_names = ["cf" + secrets.token_hex(3)[:5] for _ in families]
        for result in run_families(scenario, lab_names, node_mode, families):
            results.append(result)
            if progress:
                progress(result)
    return results


def to_json(results: List[Result]) -> List[dict]:
    return [asdict(r) for r in results]
