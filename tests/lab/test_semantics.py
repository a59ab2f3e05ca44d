"""Kubernetes Service semantics with real traffic, each test named after the Kubernetes e2e
network test it mirrors (test/e2e/network/service.go, conntrack.go, networking.go)."""
import socket
import time

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops

from .agent_harness import (DEFAULT_ENDPOINTS, ECHO_VIP, WEB_VIP, RunningAgent, force_cleanup,
                            wait_until)

READY3 = DEFAULT_ENDPOINTS[:3]


@pytest.fixture
def agent(lab, tmp_path):
    running = RunningAgent(lab.name, tmp_path, READY3)
    try:
        yield running
    finally:
        running.stop()
        force_cleanup(lab.name)


def curl(lab_name, url, timeout=3):
    return lablib.run_in_pod(lab_name, "client", ["curl", "-sS", "--max-time", str(timeout), url],
                             timeout=timeout + 10)


def test_should_be_rejected_when_no_endpoints_exist(lab, agent):
    """TCP gets a reset at once (curl: connection refused), UDP an ICMP port unreachable (the
    connected socket's next receive fails with ECONNREFUSED) — no timeouts."""
    agent.write_manifest([])
    wait_until(lambda: agent.backends(f"{WEB_VIP}:80/TCP") == [], 10, "the endpoints to go")
    with nsops.in_netns(f"{lab.name}-client"):
        tcp = socket.socket()
    with tcp:
        tcp.settimeout(3)
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):  # a reset, not a timeout
            tcp.connect((WEB_VIP, 80))
        assert time.monotonic() - started < 1
    with nsops.in_netns(f"{lab.name}-client"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(2)
        sock.connect((ECHO_VIP, 53))
        sock.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            sock.recv(100)


def test_should_have_session_affinity_work_for_service_with_type_clusterIP(lab, tmp_path):
    """Every connection of one client reaches one pod while the Service has ClientIP affinity;
    switching it back to None spreads new connections again."""
    affinity = ("  sessionAffinity: ClientIP\n"
                "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 10800}}\n")
    agent = RunningAgent(lab.name, tmp_path, READY3)
    try:
        agent.write_manifest(text=agent.manifest_path.read_text().replace(
            f"  clusterIP: {WEB_VIP}\n", f"  clusterIP: {WEB_VIP}\n{affinity}", 1))
        wait_until(lambda: "ClientIP" in agent.log() or agent.services()[0], 5, "the change")
        time.sleep(0.5)
        picks = {curl(lab.name, f"http://{WEB_VIP}/").stdout.strip() for _ in range(20)}
        assert len(picks) == 1 and picks <= {"web-1", "web-2", "web-3"}
        agent.write_manifest(READY3)  # sessionAffinity: None again
        time.sleep(0.5)
        picks = {curl(lab.name, f"http://{WEB_VIP}/").stdout.strip() for _ in range(30)}
        assert len(picks) == 3
    finally:
        agent.stop()
        force_cleanup(lab.name)


def test_should_be_able_to_preserve_UDP_traffic_when_server_pod_cycles_for_a_ClusterIP_service(lab, agent):
    """The same client 5-tuple keeps talking to the Service while the pod it used goes away:
    the next datagram reaches a live pod instead of a dead conntrack entry (kubernetes#19029)."""
    with nsops.in_netns(f"{lab.name}-client"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(2)
        sock.bind(("0.0.0.0", 41234))
        sock.sendto(b"one", (ECHO_VIP, 53))
        first = sock.recvfrom(100)[0].decode().split()[0]
        # The pod that answered leaves the Service (and stops: its server is killed).
        agent.write_manifest([e for e in READY3 if e[0] != first])
        wait_until(lambda: len(agent.backends(f"{ECHO_VIP}:53/UDP")) == 2, 10, "the change")
        lablib.del_pod(lab.name, first)
        time.sleep(0.3)  # the agent removes the stale flow right after programming
        sock.sendto(b"two", (ECHO_VIP, 53))
        second = sock.recvfrom(100)[0].decode().split()[0]
    assert second != first and second in {"web-1", "web-2", "web-3"}


def test_should_preserve_source_pod_IP_for_traffic_thru_service_cluster_IP(lab, agent):
    r = curl(lab.name, f"http://{WEB_VIP}/client")
    assert r.stdout.strip().split(":")[0] == lab.pods["client"].ip


def test_should_serve_endpoints_on_same_port_and_different_protocols(lab, tmp_path):
    """One Service, port 53 over TCP and UDP, as two frontends with their own endpoints."""
    agent = RunningAgent(lab.name, tmp_path, READY3)
    text = f"""
apiVersion: v1
kind: Service
metadata: {{name: dual, namespace: demo}}
spec:
  clusterIP: 10.96.0.53
  ports:
  - {{name: dns-tcp, port: 53, protocol: TCP, targetPort: 8080}}
  - {{name: dns-udp, port: 53, protocol: UDP, targetPort: 9053}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: dual-a, namespace: demo, labels: {{kubernetes.io/service-name: dual}}}}
addressType: IPv4
ports: [{{name: dns-tcp, port: 8080, protocol: TCP}}, {{name: dns-udp, port: 9053, protocol: UDP}}]
endpoints:
- {{addresses: [10.244.0.12], conditions: {{ready: true}}}}
"""
    try:
        agent.write_manifest(text=text)
        wait_until(lambda: len(agent.services()) == 2, 10, "both frontends")
        assert curl(lab.name, "http://10.96.0.53:53/").stdout.strip() == "web-2"
        from .conftest import udp_exchange
        data, peer = udp_exchange(f"{lab.name}-client", "10.96.0.53", b"q", port=53)
        assert data.decode().startswith("web-2") and peer == ("10.96.0.53", 53)
    finally:
        agent.stop()
        force_cleanup(lab.name)


def test_should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints(lab, tmp_path):
    """internalTrafficPolicy=Cluster: no endpoint ready, one serving and terminating: it serves."""
    agent = RunningAgent(lab.name, tmp_path, READY3)
    try:
        text = agent.manifest_path.read_text().replace(
            "- addresses: [10.244.0.11]\n  conditions: {ready: true}",
            "- addresses: [10.244.0.11]\n  conditions: {ready: false, serving: true, terminating: true}"
        ).replace("- addresses: [10.244.0.12]\n  conditions: {ready: true}",
                  "- addresses: [10.244.0.12]\n  conditions: {ready: false, serving: false, terminating: true}"
        ).replace("- addresses: [10.244.0.13]\n  conditions: {ready: true}",
                  "- addresses: [10.244.0.13]\n  conditions: {ready: false}")
        agent.write_manifest(text=text)
        wait_until(lambda: agent.backends(f"{WEB_VIP}:80/TCP") == ["10.244.0.11"], 10, "fallback")
        assert {curl(lab.name, f"http://{WEB_VIP}/").stdout.strip() for _ in range(5)} == {"web-1"}
    finally:
        agent.stop()
        force_cleanup(lab.name)


OTHERS = """
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec: {type: ExternalName, externalName: example.invalid}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: theirs, namespace: demo, labels: {service.kubernetes.io/service-proxy-name: other}}
spec: {clusterIP: 10.96.0.40, ports: [{port: 80}]}
"""


def test_services_that_are_not_ours_are_skipped_and_type_changes_reprogram(lab, agent):
    """ExternalName, headless and another proxy's Services are ignored and listed as skipped;
    a Service switching ClusterIP -> ExternalName -> NodePort is unprogrammed, then programmed."""
    from .agent_harness import ebpflb, manifest
    import json

    agent.write_manifest(text=manifest(READY3) + OTHERS)
    wait_until(lambda: "demo/theirs" in agent.log(), 10, "the skipped services")
    out = json.loads(ebpflb("service", "list", "--all", "-o", "json", "--pin-dir",
                            agent.pin_dir).stdout)
    reasons = {s["service"]: s["reason"] for s in out["skipped"]}
    assert reasons == {"demo/ext": "type ExternalName", "demo/headless": "headless (clusterIP: None)",
                       "demo/theirs": "label service.kubernetes.io/service-proxy-name=other: "
                                      "served by another proxy"}
    assert {s["frontend"] for s in out["services"]} == {f"{WEB_VIP}:80/TCP", f"{ECHO_VIP}:53/UDP"}

    base = manifest(READY3)
    as_external = base.replace(f"spec:\n  clusterIP: {WEB_VIP}\n",
                               "spec:\n  type: ExternalName\n  externalName: example.invalid\n", 1)
    agent.write_manifest(text=as_external)
    wait_until(lambda: f"{WEB_VIP}:80/TCP" not in {s["frontend"] for s in agent.services()}, 10,
               "web to be unprogrammed")
    assert curl(lab.name, f"http://{WEB_VIP}/", timeout=1).returncode != 0
    as_nodeport = base.replace(f"spec:\n  clusterIP: {WEB_VIP}\n",
                               f"spec:\n  type: NodePort\n  clusterIP: {WEB_VIP}\n", 1)
    agent.write_manifest(text=as_nodeport)
    wait_until(lambda: agent.backends(f"{WEB_VIP}:80/TCP") == ["10.244.0.11", "10.244.0.12",
                                                               "10.244.0.13"], 10, "web again")
    assert curl(lab.name, f"http://{WEB_VIP}/").stdout.strip() in {"web-1", "web-2", "web-3"}


def test_should_allow_pods_to_hairpin_back_to_themselves_through_services(lab, agent):
    """A pod behind a Service reaches itself through the Service's VIP."""
    agent.write_manifest([("web-1", "10.244.0.11", True)])
    wait_until(lambda: agent.backends(f"{WEB_VIP}:80/TCP") == ["10.244.0.11"], 10, "web-1 alone")
    for _ in range(3):
        r = lablib.run_in_pod(lab.name, "web-1", ["curl", "-sS", "--max-time", "3",
                                                  f"http://{WEB_VIP}/client"], timeout=10)
        assert r.returncode == 0, r.stderr
        # The pod answered itself; it saw the hairpin address as the client.
        assert r.stdout.strip().startswith("169.254.42.1:")
    from .conftest import udp_exchange
    data, peer = udp_exchange(f"{lab.name}-web-1", ECHO_VIP, b"me?", port=53)
    assert data.decode() == "web-1 me?" and peer == (ECHO_VIP, 53)


def test_icmp_errors_about_a_nated_flow_reach_the_client(lab, agent):
    """UDP to a Service whose pod has nothing listening on the target port: the pod's ICMP port
    unreachable quotes the DNATed packet; translated back, it reaches the client's socket, which
    is connected to the VIP (ECONNREFUSED instead of a timeout)."""
    text = agent.manifest_path.read_text() + """
---
apiVersion: v1
kind: Service
metadata: {name: deaf, namespace: demo}
spec:
  clusterIP: 10.96.0.60
  ports: [{name: u, port: 5000, protocol: UDP, targetPort: 9999}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: deaf-a, namespace: demo, labels: {kubernetes.io/service-name: deaf}}
addressType: IPv4
ports: [{name: u, port: 9999, protocol: UDP}]
endpoints:
- {addresses: [10.244.0.11], conditions: {ready: true}}
"""
    agent.write_manifest(text=text)
    wait_until(lambda: agent.backends("10.96.0.60:5000/UDP") == ["10.244.0.11"], 10, "deaf")
    with nsops.in_netns(f"{lab.name}-client"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(2)
        sock.connect(("10.96.0.60", 5000))
        sock.send(b"anyone listening?")
        with pytest.raises(ConnectionRefusedError):
            sock.recv(100)
