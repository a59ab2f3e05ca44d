"""An IPv6-only lab (`lab_up(..., ip_family="ipv6")`) with real traffic: two nodes whose pods,
underlay and external client have IPv6 addresses only, the real agent on each node with its node
device (so its node addresses are the IPv6 ones it finds there), and single-stack IPv6 Services
(ipFamilies [IPv6]; a LoadBalancer, with its NodePort and cluster IP, and a UDP ClusterIP) whose
IPv6 EndpointSlices hold one pod per node. Pods reach the cluster IPs and are answered by backend
pods of both nodes; the external client reaches the NodePort on either node and the load
balancer address; nothing but loopback has an IPv4 address; status and down know the family."""
import json
import subprocess
from typing import Iterator, List, Set, Tuple

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import topology as topo

from .agent_harness import RunningAgent, ebpflb, force_cleanup, start_node_agents, wait_until
from .conftest import udp_exchange

VIP6, ECHO6 = "fd00:10:96::10", "fd00:10:96::20"
LB6 = "fd00:200::c8"  # inside topo.EXTERNAL_VIP_CIDR6, which the external client routes to node 0
NODE_PORT = 30080
BACKENDS = {"web-1", "n1-web-1"}


def manifest(lab: lablib.Lab) -> str:
    pods = [(pod, lab.ip(pod), lab.pods[pod].node) for pod in sorted(BACKENDS)]
    docs = []
    for name, vip, port, target, proto in (("web", VIP6, 80, topo.HTTP_PORT, "TCP"),
                                           ("echo", ECHO6, 53, topo.UDP_ECHO_PORT, "UDP")):
        web = name == "web"
        sport = {"name": "p", "port": port, "protocol": proto, "targetPort": target,
                 **({"nodePort": NODE_PORT} if web else {})}
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": name, "namespace": "demo"},
                     "spec": {"type": "LoadBalancer" if web else "ClusterIP",
                              "clusterIP": vip, "clusterIPs": [vip], "ipFamilies": ["IPv6"],
                              "ipFamilyPolicy": "SingleStack", "ports": [sport]},
                     **({"status": {"loadBalancer": {"ingress": [{"ip": LB6}]}}} if web else {})})
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"{name}-ipv6", "namespace": "demo",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "addressType": "IPv6",
                     "ports": [{"name": "p", "port": target, "protocol": proto}],
                     "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                                    "nodeName": f"node-{k}"} for _, ip, k in pods]})
    return "---\n".join(json.dumps(d) + "\n" for d in docs)


def _start_agents(lab: lablib.Lab, workdir) -> List[RunningAgent]:
    """Both nodes' agents at once (each compiles its programs)."""
    return start_node_agents(lab.name, workdir, lab.nodes, lambda k: [
        "--node-name", f"node-{k}", "--node-device", topo.NODE_UNDERLAY_IFNAME,
        "--service-cidr", topo.SERVICE_CIDR6, "--external-ip-allow", topo.EXTERNAL_VIP_CIDR6])


@pytest.fixture(scope="module")
def six(lab_names, tmp_path_factory) -> Iterator[Tuple[lablib.Lab, List[RunningAgent]]]:
    name = lab_names.new()
    agents: List[RunningAgent] = []
    try:
        lab = lablib.lab_up(name, nodes=2, ip_family="ipv6")
        agents = _start_agents(lab, tmp_path_factory.mktemp("ipv6-only"))
        for agent in agents:
            agent.write_manifest(text=manifest(lab))
        for k, agent in enumerate(agents):
            agent.wait_applied()
            want = {f"[{VIP6}]:80/TCP", f"[{ECHO6}]:53/UDP", f"[{LB6}]:80/TCP",
                    f"[{topo.node_address6(k)}]:{NODE_PORT}/TCP"}
            wait_until(lambda: {s["frontend"] for s in agent.services()} >= want, 20,
                       f"node {k}'s agent to program the IPv6 Services")
        yield lab, agents
    finally:
        try:
            for agent in agents:
                agent.stop()
            force_cleanup(name)
        finally:
            lablib.lab_down(name)


def curl(ns: str, url: str, *extra: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "3", *extra, url],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, f"curl {url} in {ns}: {r.stderr}"
    return r.stdout.strip()


def answered_by(ns: str, url: str, n: int = 24) -> Set[str]:
    return {curl(ns, url) for _ in range(n)}


def _addresses(ns: str) -> List[dict]:
    out = subprocess.run(["ip", "-n", ns, "-j", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    return [dict(a, dev=link["ifname"]) for link in json.loads(out) for a in link["addr_info"]]


def test_no_pod_or_node_has_ipv4_outside_loopback(six):
    lab, _agents = six
    namespaces = [lab.pod_ns(p) for p in lab.pods] + lab.node_namespaces + [lab.ext_ns,
                                                                           lab.underlay_ns]
    for ns in namespaces:
        addrs = _addresses(ns)
        assert [a for a in addrs if a["family"] == "inet" and a["dev"] != "lo"] == [], ns
        r = subprocess.run(["ip", "-n", ns, "-4", "route", "show", "table", "all"],
                           capture_output=True, text=True, check=True)
        # The local table's routes of 127.0.0.0/8 on lo are all IPv4 may hold.
        assert all(" dev lo " in f"{line} " for line in r.stdout.splitlines()), (ns, r.stdout)
    for pod, spec in lab.pods.items():
        six_addrs = {a["local"] for a in _addresses(lab.pod_ns(pod))
                     if a["family"] == "inet6" and a["scope"] == "global"}
        assert six_addrs == {spec.ip} == {lab.ip6(pod)} and lab.ip4(pod) is None
    for k in range(lab.nodes):
        eth0 = {a["local"] for a in _addresses(lab.node_netns(k))
                if a["dev"] == topo.NODE_UNDERLAY_IFNAME and a["scope"] == "global"}
        assert eth0 == {topo.node_address6(k)}


def test_pods_reach_the_ipv6_cluster_ip_and_backends_answer(six):
    """From a client pod on each node: the agent of that node balances over both nodes' pods (the
    other's through the node routes), and the backend sees the client pod's own address."""
    lab, _agents = six
    for client in (topo.node_client_pod(0), topo.node_client_pod(1)):
        ns = lab.pod_ns(client)
        assert answered_by(ns, f"http://[{VIP6}]/") == BACKENDS, client
        seen, remote = curl(ns, f"http://[{VIP6}]/client", "-w", " %{remote_ip}").split()
        assert seen.rsplit(":", 1)[0] == f"[{lab.ip(client)}]" and remote == VIP6


def test_udp_over_the_ipv6_cluster_ip_comes_back_from_it(six):
    lab, _agents = six
    pods = set()
    for i in range(16):
        data, peer = udp_exchange(lab.pod_ns("client"), ECHO6, b"ping-%d" % i, port=53)
        assert peer[:2] == (ECHO6, 53)
        pods.add(data.decode().split(" ", 1)[0])
    assert pods == BACKENDS


def test_the_external_client_reaches_node_ports_and_the_load_balancer_over_ipv6(six):
    lab, agents = six
    for k in range(lab.nodes):
        url = f"http://[{topo.node_address6(k)}]:{NODE_PORT}/"
        assert answered_by(lab.ext_ns, url) == BACKENDS, url
    assert answered_by(lab.ext_ns, f"http://[{LB6}]/") == BACKENDS
    # Node 0's own pod sees the external client itself (DNAT only, no SNAT for a local backend).
    seen = {curl(lab.ext_ns, f"http://[{topo.node_address6(0)}]:{NODE_PORT}/client")
            for _ in range(24)}
    assert f"[{topo.EXT_ADDRESS6}]" in {s.rsplit(":", 1)[0] for s in seen}
    out = json.loads(ebpflb("stats", "--verdicts", "-o", "json", "--pin-dir",
                            agents[0].pin_dir).stdout)
    # The node device's XDP program served them (lb6_node_xdp), and nothing was dropped there or
    # behind it at TC.
    node_hooks = [out["verdicts"][hook] for hook in ("node_xdp", "node_in")]
    assert out["verdicts"]["node_xdp"]["new"] > 0 and [v["drop"] for v in node_hooks] == [0, 0]


def test_the_agents_serve_node_ports_on_their_ipv6_addresses_only(six):
    lab, agents = six
    for k, agent in enumerate(agents):
        frontends = {s["frontend"] for s in agent.services()}
        node_ports = {f for f in frontends if f.endswith(f":{NODE_PORT}/TCP")}
        assert node_ports == {f"[{topo.node_address6(k)}]:{NODE_PORT}/TCP"}, frontends
        assert all(f.startswith("[") for f in frontends), frontends  # no IPv4 frontend at all


def test_status_and_the_state_file_know_the_family(six):
    lab, _agents = six
    assert lablib.get_lab(lab.name).ip_family == "ipv6"
    status = lablib.lab_status(lab.name)
    assert status["ip_family"] == "ipv6"
    assert status["ext_address"] == status["ext_address6"] == topo.EXT_ADDRESS6
    assert [(n["address"], n["pod_cidr"]) for n in status["nodes"]] == [
        (topo.node_address6(k), topo.node_pod_cidr6(k)) for k in range(lab.nodes)]
    pods = {p["name"]: p for p in status["pods"]}
    assert {n: (p["ip"], p["ip6"]) for n, p in pods.items()} == {
        n: (lab.ip(n), lab.ip(n)) for n in lab.pods}
    assert all(p["server_alive"] for p in pods.values() if p["server"])
    text = ebpflb("lab", "status", "--name", lab.name).stdout
    assert f"lab {lab.name}: up (ipv6)" in text and lab.ip("web-1") in text


def test_a_pod_added_at_run_time_is_ipv6_only_and_served(six):
    lab, agents = six
    pod = topo.PodSpec("web-9", "fd00:10:244::13")  # the IPv4 plan's 10.244.0.19
    with pytest.raises(lablib.LabConfigError, match="pod web-8: ip '10.244.0.18' is not an IPv6"):
        lablib.add_pod(lab.name, topo.PodSpec("web-8", "10.244.0.18"))
    lablib.add_pod(lab.name, pod)
    try:
        ns = lab.pod_ns(pod.name)
        assert not [a for a in _addresses(ns) if a["family"] == "inet" and a["dev"] != "lo"]
        assert curl(lab.pod_ns("client"), f"http://[{pod.ip}]:{topo.HTTP_PORT}/") == pod.name
    finally:
        lablib.del_pod(lab.name, pod.name)
    assert pod.name not in lablib.get_lab(lab.name).pods


def test_the_cli_brings_an_ipv6_only_lab_up_and_down(lab_names):
    name = lab_names.new()
    try:
        up = ebpflb("lab", "up", "--name", name, "--pods", "1", "--ip-family", "ipv6")
        assert "fd00:10:244::b" in up.stdout and "10.244." not in up.stdout, up.stdout
        lab = lablib.get_lab(name)
        assert lab.ip_family == "ipv6" and lab.ip("web-1") == "fd00:10:244::b"
        assert curl(lab.pod_ns("client"), f"http://[{lab.ip('web-1')}]:{topo.HTTP_PORT}/") == "web-1"
        bad = ebpflb("lab", "up", "--name", name, "--ip-family", "ipv5", check=False)
        assert bad.returncode == 2 and "'ipv5' is not one of 'ipv4', 'ipv6', 'dual'" in bad.stderr
    finally:
        down = ebpflb("lab", "down", "--name", name, check=False)
    assert down.returncode == 0 and f"netns {name}-node" in down.stdout, down.stdout + down.stderr
    assert not [ns for ns in lablib.list_netns() if ns.startswith(f"{name}-")]
