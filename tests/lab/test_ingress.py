"""The Ingress pattern of a cluster, in a two-node lab (issue 19):

  external client (<lab>-ext, 192.168.200.2)
    -> LoadBalancer Service ingress-nginx/ingress-nginx-controller, LB_IP:443 and :80
       (ebpflb at XDP on both nodes' eth0; the client routes LB_IP to node 0, which sends the
       flows for ingress-1 on to node 1 with SNAT)
    -> two nginx Ingress controller pods, ingress-0 (node 0) and ingress-1 (node 1): TLS
       terminated with certificates of a throwaway CA, host and path rules from an Ingress
       object (ebpflb/lab/ingress.py)
    -> ClusterIP Services shop/cart, shop/storefront, shop/api (ebpflb at TC on the ingress
       pods' veths: nginx connects to the ClusterIP, which the node blackholes otherwise; the
       lab's agents leave the socket hooks off)
    -> their pods, two per Service, one on each node (the lab's pod servers: GET / answers the
       pod's name, GET /client the address the pod saw).

What is checked, from the external client, with curl and openssl over real TCP and TLS:
- each host and path reaches the pods of its Service and no other, every one of them over
  enough requests, and the backend sees the ingress pod that served the request as its client
  (the hop to the ClusterIP is DNAT only);
- both ingress pods serve;
- TLS is terminated with the generated certificates: verification against the lab's CA passes,
  each host gets its own certificate (checked against the other host's name it fails), the
  machine's trust store does not accept them, and a name without a rule gets no handshake;
- plain HTTP is redirected to HTTPS;
- the data path's verdict counters: every connection from outside a new flow at XDP on node 0,
  every proxied request a new flow at TC on an ingress pod's veth;
- a controller that fails half-way through its start stops the nginx it started, removes its
  files and leaves the running one alone;
- the same backends through a Gateway API TCPRoute (ebpflb's own GatewayClass, a listener on
  GATEWAY_IP at XDP on node 0) splitting 90/10 between shop/storefront and shop/api: over 1,000
  connections from outside, api's share is 10% within 4 points, and only those pods answer.

Real: everything (kernel, ebpflb's agents and programs, Debian's nginx and openssl, curl, TCP and
TLS). Faked: nothing; the Kubernetes objects are manifests on disk, as in every lab test, and the
Ingress controller is nginx configured by the lab from the Ingress rather than ingress-nginx.

One lab, two agents and the ingress pods' nginx for the whole module (fixture `env`); more
scenarios on the same backends (a Gateway route, say) can add their objects with `apply` and
count answers with `https` and `pods_of`.

Tier: lab (root, real namespaces and traffic). Fixtures are in tests/lab/conftest.py.
"""
from __future__ import annotations

import json
import socket
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from ebpflb.lab import ingress as ingresslib
from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab import topology as topo
from ebpflb.lab.topology import PodSpec

from .agent_harness import RunningAgent, ebpflb, force_cleanup, start_node_agents, wait_until

pytestmark = pytest.mark.lab

# Inside topology.EXTERNAL_VIP_CIDR, which the external client routes to node 0. Other labs may
# use the same address: each lab's underlay and client are namespaces of its own.
LB_IP = "192.168.200.201"
INGRESS_NS, INGRESS_SVC, INGRESS_VIP = "ingress-nginx", "ingress-nginx-controller", "10.96.19.10"
APP_NS = "shop"
# The Gateway of the canary scenario, on the same backends (also routed to node 0).
GATEWAY_IP, GATEWAY_PORT = "192.168.200.202", 9080
CANARY_CONNECTIONS = 1000
CANARY_TOLERANCE = 0.04  # binomial sd at n = 1,000 and p = 0.1 is 0.0095: 4.2 sd
SHOP, API = "shop.example.test", "api.example.test"

# (pod, ip, node)
Pod = Tuple[str, str, int]
INGRESS_PODS: List[Pod] = [("ingress-0", "10.244.0.40", 0), ("ingress-1", "10.244.1.40", 1)]
# ClusterIP Service -> (ClusterIP, its pods). Port 80 -> the pod servers' 8080.
SERVICES: Dict[str, Tuple[str, List[Pod]]] = {
    "cart": ("10.96.19.1", [("cart-0", "10.244.0.11", 0), ("cart-1", "10.244.1.11", 1)]),
    "storefront": ("10.96.19.2", [("front-0", "10.244.0.12", 0), ("front-1", "10.244.1.12", 1)]),
    "api": ("10.96.19.3", [("api-0", "10.244.0.13", 0), ("api-1", "10.244.1.13", 1)]),
}
# (host, path the client asks for, Service that must answer)
ROUTES = [(SHOP, "/cart", "cart"), (SHOP, "/cart/", "cart"), (SHOP, "/", "storefront"),
          (API, "/", "api")]
REQUESTS = 16  # per check: every pod of a two-pod Service answers but with odds of 2^-15


def pod_names(service: str) -> set:
    return {p for p, _, _ in SERVICES[service][1]}


# ------------------------------------------------------------------ manifests

def service_docs(namespace: str, name: str, cluster_ip: str, ports: Sequence[Tuple[str, int, int]],
                 pods: Sequence[Pod], lb_ip: Optional[str] = None,
                 node_ports: Sequence[int] = ()) -> List[dict]:
    """A Service (ClusterIP, or LoadBalancer with `lb_ip`) and its EndpointSlice; ports are
    (name, port, targetPort)."""
    sports = [{"name": n, "port": p, "protocol": "TCP", "targetPort": t} for n, p, t in ports]
    spec: Dict[str, Any] = {"clusterIP": cluster_ip, "ports": sports}
    svc: Dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    if lb_ip:
        spec.update(type="LoadBalancer", externalTrafficPolicy="Cluster")
        for sport, node_port in zip(sports, node_ports):
            sport["nodePort"] = node_port
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}
    eslice = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": f"{name}-x1", "namespace": namespace,
                           "labels": {"kubernetes.io/service-name": name}},
              "addressType": "IPv4",
              "ports": [{"name": n, "port": t, "protocol": "TCP"} for n, _, t in ports],
              "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                             "nodeName": f"node{node}",
                             "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace}}
                            for pod, ip, node in pods]}
    return [svc, eslice]


def ingress_doc() -> dict:
    def path(p: str, service: str) -> dict:
        return {"path": p, "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": 80}}}}

    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "shop", "namespace": APP_NS},
            "spec": {"ingressClassName": "nginx",
                     "tls": [{"hosts": [SHOP, API], "secretName": "shop-tls"}],
                     "rules": [{"host": SHOP, "http": {"paths": [path("/cart", "cart"),
                                                                 path("/", "storefront")]}},
                               {"host": API, "http": {"paths": [path("/", "api")]}}]}}


def ingress_docs() -> List[dict]:
    """The scenario's objects: the controller's LoadBalancer Service, the ClusterIP Services and
    the Ingress."""
    docs = service_docs(INGRESS_NS, INGRESS_SVC, INGRESS_VIP,
                        [("https", 443, ingresslib.HTTPS_PORT), ("http", 80, ingresslib.HTTP_PORT)],
                        INGRESS_PODS, lb_ip=LB_IP, node_ports=(31443, 31080))
    for name, (vip, pods) in SERVICES.items():
        docs += service_docs(APP_NS, name, vip, [("http", 80, topo.HTTP_PORT)], pods)
    return docs + [ingress_doc()]


def expected_frontends(docs: Sequence[dict]) -> Dict[str, List[str]]:
    """ClusterIP and load balancer frontends -> the backend addresses the agents must program
    (NodePorts are left out: this scenario does not use them)."""
    slices = {(d["metadata"]["namespace"], d["metadata"]["labels"]["kubernetes.io/service-name"]):
              sorted(e["addresses"][0] for e in d["endpoints"])
              for d in docs if d["kind"] == "EndpointSlice"}
    want: Dict[str, List[str]] = {}
    for d in docs:
        if d["kind"] != "Service":
            continue
        backends = slices[(d["metadata"]["namespace"], d["metadata"]["name"])]
        lb = d.get("status", {}).get("loadBalancer", {}).get("ingress", [])
        ips = [d["spec"]["clusterIP"]] + [i["ip"] for i in lb]
        for ip in ips:
            for port in d["spec"]["ports"]:
                want[f"{ip}:{port['port']}/TCP"] = backends
    return want


# ------------------------------------------------------------------ the lab, its agents, nginx

@dataclass
class Env:
    lab: lablib.Lab
    agents: List[RunningAgent]
    ingress: ingresslib.IngressController
    docs: List[dict]  # what the agents and nginx were given: more objects go with apply(docs + ...)

    @property
    def ca(self) -> str:
        return self.ingress.ca_path

    def logs(self) -> str:
        agents = "\n".join(f"--- agent node{a.node} (tail):\n"
                           + "\n".join(a.log().splitlines()[-20:]) for a in self.agents)
        return f"{agents}\n{self.ingress.logs()}"


def lab_pods() -> List[PodSpec]:
    pods = INGRESS_PODS + [p for _, members in SERVICES.values() for p in members]
    return [PodSpec(name, ip, node) for name, ip, node in pods]


def start_agents(lab_name: str, workdir: Path) -> List[RunningAgent]:
    """Both nodes' agents at XDP on eth0 (socket hooks off: pods take the packet path), started
    at once (each compiles its programs), on an empty manifest."""
    return start_node_agents(lab_name, workdir, 2, lambda k: [
        "--node-name", f"node{k}", "--node-device", topo.NODE_UNDERLAY_IFNAME,
        "--node-mode", "xdp", "--nodeport-addresses", topo.UNDERLAY_CIDR,
        "--external-ip-allow", f"{GATEWAY_IP}/32"])


def apply(agents: Sequence[RunningAgent], docs: Sequence[dict]) -> None:
    """Every agent gets the manifest; returns once each programmed what expected_frontends says."""
    text = "---\n".join(json.dumps(d) + "\n" for d in docs)  # JSON is YAML: a document each
    want = expected_frontends(docs)
    for agent in agents:
        agent.write_manifest(text=text)
    for agent in agents:
        def programmed() -> bool:
            return all(sorted(agent.backends(f) or []) == b for f, b in want.items())

        try:
            wait_until(programmed, 20, f"node {agent.node}'s agent to program {sorted(want)}",
                       interval=0.2)
        except AssertionError as exc:
            got = {s["frontend"]: [b["address"] for b in s["backends"]] for s in agent.services()}
            raise AssertionError(f"{exc}\nwant {want}\ngot  {got}\n{agent.log()[-3000:]}") from None


@pytest.fixture(scope="module")
def env(lab_names, tmp_path_factory) -> Iterator[Env]:
    name = lab_names.new()
    agents: List[RunningAgent] = []
    controller: Optional[ingresslib.IngressController] = None
    docs = ingress_docs()
    try:
        the_lab = lablib.lab_up(name, lab_pods(), nodes=2)
        agents = start_agents(name, tmp_path_factory.mktemp("ingress"))
        apply(agents, docs)
        controller = ingresslib.IngressController(name, [p for p, _, _ in INGRESS_PODS], docs)
        controller.start()
        yield Env(the_lab, agents, controller, docs)
    finally:
        try:
            if controller is not None:
                controller.stop()
            for agent in agents:
                agent.stop()
            force_cleanup(name)
        finally:
            lablib.lab_down(name)


# ------------------------------------------------------------------ from outside

_MARK = "\n@@ingress@@ "


@dataclass(frozen=True)
class Answer:
    """One HTTPS exchange as curl saw it."""

    status: int  # 0: no HTTP answer
    body: str
    ingress_pod: str  # the X-Ingress-Pod header: which nginx served
    verify: int  # curl's ssl_verify_result: 0 when the certificate chain and name were good


def ext_run(env: Env, argv: List[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return lablib.run_in_ext(env.lab.name, argv, timeout=timeout)


def https(env: Env, host: str, path: str = "/", n: int = 1) -> List[Answer]:
    """n HTTPS GETs of https://host/path from the external client, one curl for all, a new TCP
    connection (a new flow to the load balancer) each, the certificate checked against the lab's
    CA and `host`."""
    w = _MARK + "%{http_code} %{ssl_verify_result} %header{" + ingresslib.POD_HEADER + "}\n"
    r = ext_run(env, ["curl", "-sS", "--connect-timeout", "3", "--max-time", "8",
                      "--resolve", f"{host}:443:{LB_IP}", "--cacert", env.ca,
                      "-H", "Connection: close", "-w", w, *[f"https://{host}{path}"] * n],
                timeout=15 + 2 * n)
    # stdout: body, mark, "status verify pod" line, next body, mark, ...
    parts = r.stdout.split(_MARK)
    bodies = [parts[0]] + [p.partition("\n")[2] for p in parts[1:-1]]
    answers = []
    for body, part in zip(bodies, parts[1:]):
        status, verify, pod = (part.partition("\n")[0].split(" ") + ["", "", ""])[:3]
        answers.append(Answer(int(status), body.strip(), pod, int(verify)))
    assert len(answers) == n and all(a.status == 200 and a.verify == 0 for a in answers), \
        (f"https://{host}{path}: curl exit {r.returncode}, {r.stderr.strip()}\n"
         f"{[a for a in answers if a.status != 200 or a.verify]}\n{env.logs()}")
    return answers


def pods_of(answers: Sequence[Answer]) -> Counter:
    """How often each backend pod answered (the body of GET /)."""
    return Counter(a.body for a in answers)


def counters(env: Env, k: int) -> Dict[str, Any]:
    """Node k's agent's verdicts by hook, drop reasons and events (`ebpflb stats --verdicts`)."""
    return json.loads(ebpflb("stats", "--verdicts", "-o", "json", "--pin-dir",
                             env.agents[k].pin_dir).stdout)


# ------------------------------------------------------------------ the checks

@pytest.mark.parametrize("host,path,service", ROUTES, ids=[f"{h}{p}" for h, p, _ in ROUTES])
def test_host_and_path_reach_only_their_service(env, host, path, service):
    answered = pods_of(https(env, host, path, REQUESTS))
    assert set(answered) == pod_names(service), (host, path, dict(answered))


def test_both_ingress_pods_serve_and_backends_see_them_as_client(env):
    """/cart/client: the cart pod answers with the address it saw, which must be the ingress
    pod that served the request (its X-Ingress-Pod): nginx's connection to the ClusterIP was
    translated to the pod and nothing else (no SNAT on the way)."""
    ingress_ip = {pod: ip for pod, ip, _ in INGRESS_PODS}
    answers = https(env, SHOP, "/cart/client", 2 * REQUESTS)
    assert Counter(a.ingress_pod for a in answers).keys() == ingress_ip.keys(), answers
    for a in answers:
        assert a.body.rpartition(":")[0] == ingress_ip[a.ingress_pod], a


def test_tls_is_terminated_with_the_generated_certificates(env):
    for host in (SHOP, API):
        r = ext_run(env, ["openssl", "s_client", "-connect", f"{LB_IP}:443", "-servername", host,
                          "-CAfile", env.ca, "-verify_hostname", host, "-verify_return_error"],
                    timeout=15)
        assert r.returncode == 0, (host, r.stdout[-2000:], r.stderr)
        assert f"subject=CN = {host}" in r.stdout, r.stdout[-2000:]
        assert "issuer=CN = ebpflb lab ingress CA" in r.stdout, r.stdout[-2000:]
        assert "Verify return code: 0 (ok)" in r.stdout
    # Each host has its own certificate: shop's is not good for api.
    r = ext_run(env, ["openssl", "s_client", "-connect", f"{LB_IP}:443", "-servername", SHOP,
                      "-CAfile", env.ca, "-verify_hostname", API, "-verify_return_error"],
                timeout=15)
    assert r.returncode != 0 and "hostname mismatch" in r.stdout + r.stderr, r.stdout[-2000:]
    # The machine's trust store does not know the lab's CA: curl refuses the certificate.
    r = ext_run(env, ["curl", "-sS", "--max-time", "5", "--resolve", f"{SHOP}:443:{LB_IP}",
                      f"https://{SHOP}/"], timeout=15)
    assert r.returncode == 60, (r.returncode, r.stderr)  # CURLE_PEER_FAILED_VERIFICATION
    # A name no Ingress rule has: nginx's default server has no certificate for it and ends the
    # handshake (unrecognized_name) rather than show another name's certificate.
    r = ext_run(env, ["curl", "-sS", "--max-time", "5", "--resolve",
                      f"other.example.test:443:{LB_IP}", "--cacert", env.ca,
                      "https://other.example.test/"], timeout=15)
    assert r.returncode == 35 and "unrecognized name" in r.stderr, (r.returncode, r.stderr)


def test_plain_http_is_redirected_to_https(env):
    r = ext_run(env, ["curl", "-sS", "--max-time", "5", "--resolve", f"{SHOP}:80:{LB_IP}",
                      "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                      f"http://{SHOP}/cart/client"], timeout=15)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"308 https://{SHOP}/cart/client", r.stdout


def test_datapath_counts_each_hop_as_a_new_flow(env):
    """Each connection from outside is a new flow at XDP on node 0 (where the client sends the
    load balancer IP); each request nginx proxies is a new flow at TC on an ingress pod's veth
    (the pod devices of both nodes)."""
    def news() -> Tuple[int, int]:
        c0, c1 = counters(env, 0), counters(env, 1)
        return (c0["verdicts"]["node_xdp"]["new"],
                c0["verdicts"]["from_pod"]["new"] + c1["verdicts"]["from_pod"]["new"])

    xdp_before, tc_before = news()
    answers = https(env, API, "/", REQUESTS)
    xdp_after, tc_after = news()
    assert xdp_after - xdp_before >= REQUESTS, (xdp_before, xdp_after)
    assert tc_after - tc_before >= REQUESTS, (tc_before, tc_after)
    assert len({a.ingress_pod for a in answers}) == 2, answers


def nginx_in(env: Env, pod: str) -> List[int]:
    """The nginx processes in a pod's network namespace."""
    pids = []
    for pid in nsops.netns_pids(env.lab.pod_ns(pod)):
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() == "nginx":
                    pids.append(pid)
        except OSError:
            continue
    return pids


def test_a_failed_start_leaves_nothing_behind(env, tmp_path):
    """A second controller starts nginx in cart-0, then cannot in ingress-1, whose ports the
    running nginx holds: start() fails with nginx's own words, stops what it started, removes its
    directory, and leaves the running controller's nginx alone."""
    running = nginx_in(env, "ingress-1")
    assert running
    second = ingresslib.IngressController(env.lab.name, ["cart-0", "ingress-1"], env.docs,
                                          parent_dir=str(tmp_path))
    with pytest.raises(ingresslib.IngressRunError, match="Address already in use"):
        second.start()
    assert nginx_in(env, "cart-0") == [] and nginx_in(env, "ingress-1") == running
    assert list(tmp_path.iterdir()) == []
    assert {a.ingress_pod for a in https(env, API, "/", 8)} <= {"ingress-0", "ingress-1"}


def gateway_docs(stable: int, canary: int) -> List[dict]:
    api = "gateway.networking.k8s.io"
    return [
        {"apiVersion": f"{api}/v1", "kind": "GatewayClass", "metadata": {"name": "ebpflb"},
         "spec": {"controllerName": "ebpflb.io/gateway-controller"}},
        {"apiVersion": f"{api}/v1", "kind": "Gateway",
         "metadata": {"name": "edge", "namespace": APP_NS},
         "spec": {"gatewayClassName": "ebpflb",
                  "addresses": [{"type": "IPAddress", "value": GATEWAY_IP}],
                  "listeners": [{"name": "shop", "port": GATEWAY_PORT, "protocol": "TCP"}]}},
        {"apiVersion": f"{api}/v1alpha2", "kind": "TCPRoute",
         "metadata": {"name": "shop-canary", "namespace": APP_NS},
         "spec": {"parentRefs": [{"name": "edge"}],
                  "rules": [{"backendRefs": [
                      {"name": "storefront", "port": 80, "weight": stable},
                      {"name": "api", "port": 80, "weight": canary}]}]}}]


def test_a_gateway_tcp_route_splits_the_same_backends_90_10(env):
    """TCPRouteWeightedRouting (gateway-api conformance) on the Ingress scenario's backends, from the
    external client, one new connection each (plain HTTP: the route is L4, TLS is the
    Ingress's)."""
    apply(env.agents, env.docs + gateway_docs(90, 10))
    frontend = f"{GATEWAY_IP}:{GATEWAY_PORT}/TCP"
    wait_until(lambda: len(env.agents[0].backends(frontend) or []) == 4, 20,
               f"node 0's agent to program {frontend}")
    try:
        answered: Counter = Counter()
        for _ in range(CANARY_CONNECTIONS):
            with nsops.in_netns(env.lab.ext_ns):
                sock = socket.create_connection((GATEWAY_IP, GATEWAY_PORT), timeout=5)
            with sock:
                sock.sendall(f"GET / HTTP/1.0\r\nHost: {GATEWAY_IP}\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            answered[data.partition(b"\r\n\r\n")[2].decode().strip()] += 1
        assert set(answered) == pod_names("storefront") | pod_names("api"), answered
        canary = sum(n for pod, n in answered.items() if pod in pod_names("api"))
        assert abs(canary / CANARY_CONNECTIONS - 0.10) < CANARY_TOLERANCE, answered
    finally:
        apply(env.agents, env.docs)
