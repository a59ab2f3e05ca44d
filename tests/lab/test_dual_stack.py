"""A dual-stack Service with real traffic over both families: a two-node dual-stack lab (every pod
and node has an IPv6 address too), the real agent on node 0 with its node device, a Service with
an IPv4 and an IPv6 cluster IP and a NodePort, each family with its own EndpointSlice of one pod
per node. Pods reach both cluster IPs (the remote backend through the node routes), the external
client reaches the NodePort on the node's IPv6 address (the remote backend through SNAT), and
the backends see the client's own address on the pod path."""
import json
import subprocess
from typing import Set

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import topology as topo

from .agent_harness import RunningAgent, ebpflb, force_cleanup, wait_until
from .conftest import udp_exchange

VIP4, VIP6 = "10.96.0.10", "fd00:10:96::10"
ECHO4, ECHO6 = "10.96.0.20", "fd00:10:96::20"
NODE_PORT = 30080


def manifest() -> str:
    pods = [("web-1", "10.244.0.11", 0), ("n1-web-1", "10.244.1.11", 1)]
    docs = []
    for name, vips, port, target, proto, node_port in (
            ("web", (VIP4, VIP6), 80, 8080, "TCP", NODE_PORT),
            ("echo", (ECHO4, ECHO6), 53, topo.UDP_ECHO_PORT, "UDP", None)):
        sport = {"name": "p", "port": port, "protocol": proto, "targetPort": target}
        if node_port:
            sport["nodePort"] = node_port
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": name, "namespace": "demo"},
                     "spec": {"type": "NodePort" if node_port else "ClusterIP",
                              "clusterIP": vips[0], "clusterIPs": list(vips),
                              "ipFamilies": ["IPv4", "IPv6"],
                              "ipFamilyPolicy": "RequireDualStack", "ports": [sport]}})
        for family, addr in (("IPv4", lambda ip: ip), ("IPv6", topo.pod_ip6)):
            docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": {"name": f"{name}-{family.lower()}", "namespace": "demo",
                                      "labels": {"kubernetes.io/service-name": name}},
                         "addressType": family,
                         "ports": [{"name": "p", "port": target, "protocol": proto}],
                         "endpoints": [{"addresses": [addr(ip)], "conditions": {"ready": True},
                                        "nodeName": f"node-{k}"} for _, ip, k in pods]})
    return "---\n".join(json.dumps(d) + "\n" for d in docs)


@pytest.fixture(scope="module")
def dual(lab_names, tmp_path_factory):
    name = lab_names.new()
    lab = lablib.lab_up(name, nodes=2, ip_family="dual")
    agent = None
    try:
        agent = RunningAgent(name, tmp_path_factory.mktemp("dual"), [], extra_args=[
            "--node-name", "node-0", "--node-device", topo.NODE_UNDERLAY_IFNAME,
            "--service-cidr", "10.96.0.0/16", "--service-cidr", topo.SERVICE_CIDR6])
        agent.write_manifest(text=manifest())
        agent.wait_applied()
        wait_until(lambda: {s["frontend"] for s in agent.services()} >= {
            f"[{VIP6}]:80/TCP", f"{VIP4}:80/TCP", f"[{topo.node_address6(0)}]:{NODE_PORT}/TCP"},
            20, "both families programmed")
        yield lab, agent
    finally:
        if agent is not None:
            agent.stop()
        force_cleanup(name)
        lablib.lab_down(name)


def curl(ns: str, url: str, *extra: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "3", *extra, url],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, f"curl {url} in {ns}: {r.stderr}"
    return r.stdout.strip()


def answered_by(ns: str, url: str, n: int = 24) -> Set[str]:
    return {curl(ns, url) for _ in range(n)}


def test_pods_reach_both_cluster_ips_and_backends_see_the_client(dual):
    lab, _agent = dual
    client = f"{lab.name}-client"
    for url in (f"http://[{VIP6}]/", f"http://{VIP4}/"):
        assert answered_by(client, url) == {"web-1", "n1-web-1"}, url
    # No SNAT on the pod path: the backend sees the client pod's own IPv6 address; the reply
    # comes from the frontend (curl checks the peer it connected to).
    seen, remote = curl(client, f"http://[{VIP6}]/client", "-w", " %{remote_ip}").split()
    assert seen.rsplit(":", 1)[0] == f"[{lab.ip6('client')}]" and remote == VIP6


def test_udp_over_the_ipv6_cluster_ip_comes_back_from_it(dual):
    lab, _agent = dual
    pods = set()
    for i in range(16):
        data, peer = udp_exchange(f"{lab.name}-client", ECHO6, b"ping-%d" % i, port=53)
        assert peer[:2] == (ECHO6, 53)
        pods.add(data.decode().split(" ", 1)[0])
    assert pods == {"web-1", "n1-web-1"}


def test_the_external_client_reaches_the_ipv6_node_port(dual):
    """From outside the cluster to node 0's IPv6 address: its own backend by DNAT, the other
    node's by DNAT and SNAT to node 0's address (replies come back through node 0)."""
    lab, agent = dual
    node6 = topo.node_address6(0)
    url = f"http://[{node6}]:{NODE_PORT}/"
    assert answered_by(lab.ext_ns, url) == {"web-1", "n1-web-1"}
    out = json.loads(ebpflb("stats", "--verdicts", "-o", "json", "--pin-dir", agent.pin_dir).stdout)
    # The node device's XDP program serves IPv6 as it does IPv4 (lb6_node_xdp): new flows are
    # counted there, and nothing is dropped at XDP or behind it at TC.
    assert out["verdicts"]["node_xdp"]["new"] > 0
    assert out["verdicts"]["node_xdp"]["drop"] == out["verdicts"]["node_in"]["drop"] == 0

