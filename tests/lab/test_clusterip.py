"""ClusterIP load balancing with real traffic: the real agent, real programs on real veths, curl
and UDP sockets in pod namespaces. Every test tears down its agent, pins and lab."""
import http.client
import json
import os
import socket
import subprocess

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab.topology import PodSpec

from .agent_harness import (DEFAULT_ENDPOINTS, ECHO_VIP, WEB_VIP, RunningAgent, ebpflb,
                            force_cleanup, wait_until)
from .conftest import udp_exchange


@pytest.fixture
def agent(lab, tmp_path):
    running = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS)
    try:
        yield running
    finally:
        running.stop()
        force_cleanup(lab.name)


def who(lab_name, pod, url=f"http://{WEB_VIP}/"):
    r = lablib.run_in_pod(lab_name, pod, ["curl", "-sS", "--max-time", "3", url], timeout=10)
    assert r.returncode == 0, f"curl {url} from {pod} failed: {r.stderr}"
    return r.stdout.strip()


def test_vip_reaches_every_ready_backend_and_never_a_not_ready_one(lab, agent):
    seen = [who(lab.name, "client") for _ in range(60)]
    assert set(seen) == {"web-1", "web-2", "web-3"}, sorted(seen)
    assert agent.backends(f"{WEB_VIP}:80/TCP") == ["10.244.0.11", "10.244.0.12", "10.244.0.13"]


def test_client_sees_only_the_vip_and_the_backend_sees_the_client(lab, agent):
    """Reverse NAT: the reply comes from VIP:80 (curl checks the peer); no source NAT: the pod
    sees the client pod's own address."""
    r = lablib.run_in_pod(lab.name, "client", [
        "curl", "-sS", "--max-time", "3", "-w", " %{remote_ip}:%{remote_port}",
        f"http://{WEB_VIP}/client"], timeout=10)
    assert r.returncode == 0, r.stderr
    client_addr, remote = r.stdout.split()
    assert client_addr.split(":")[0] == lab.pods["client"].ip
    assert remote == f"{WEB_VIP}:80"


def test_udp_through_the_vip(lab, agent):
    replies = set()
    for i in range(20):
        data, peer = udp_exchange(f"{lab.name}-client", ECHO_VIP, b"ping-%d" % i, port=53)
        assert peer == (ECHO_VIP, 53)
        pod, payload = data.decode().split(" ", 1)
        assert payload == f"ping-{i}"
        replies.add(pod)
    assert replies <= {"web-1", "web-2", "web-3"} and replies


def test_rp_filter_is_strict_on_the_node(lab, agent):
    """The reverse-NAT placement is meant to work with rp_filter=1; make sure that is what ran."""
    assert nsops.read_sysctl(f"{lab.name}-node", "net.ipv4.conf.all.rp_filter") == "1"
    assert who(lab.name, "client") in {"web-1", "web-2", "web-3"}


def test_pod_added_while_the_agent_runs_is_served(lab, agent):
    """A new backend pod is used once its endpoint appears; a new client pod's veth, created after
    the agent started, gets the programs attached as it appears."""
    lablib.add_pod(lab.name, PodSpec("web-5", "10.244.0.15"))
    lablib.add_pod(lab.name, PodSpec("client-2", "10.244.0.3"))
    agent.write_manifest(DEFAULT_ENDPOINTS + [("web-5", "10.244.0.15", True)])
    wait_until(lambda: "10.244.0.15" in agent.backends(f"{WEB_VIP}:80/TCP"), 10,
               "web-5 to be programmed")
    seen = {who(lab.name, "client-2") for _ in range(60)}
    assert seen == {"web-1", "web-2", "web-3", "web-5"}


def test_removed_backend_gets_no_new_flows_but_keeps_its_connection(lab, agent):
    with nsops.in_netns(f"{lab.name}-client"):
        conn = http.client.HTTPConnection(WEB_VIP, 80, timeout=5)
        conn.connect()
    try:
        conn.request("GET", "/")
        first = conn.getresponse().read().decode().strip()
        agent.write_manifest([e for e in DEFAULT_ENDPOINTS if e[0] != first])
        removed_ip = next(ip for pod, ip, _ in DEFAULT_ENDPOINTS if pod == first)
        wait_until(lambda: removed_ip not in agent.backends(f"{WEB_VIP}:80/TCP"), 10,
                   f"{first} to be removed from the maps")
        new = [who(lab.name, "client") for _ in range(30)]
        assert first not in new
        # The established connection still reaches the removed backend, through the VIP.
        for _ in range(5):
            conn.request("GET", "/")
            assert conn.getresponse().read().decode().strip() == first
        assert conn.sock.getpeername() == (WEB_VIP, 80)
    finally:
        conn.close()


def test_port_change_keeps_open_connections_until_they_close(lab, tmp_path):
    """The Service's port changes 80 -> 8081 while a keep-alive connection to port 80 is open:
    the connection goes on with the backend it has (as kube-proxy's conntrack keeps it), a new
    connection to port 80 is not served, port 8081 is. Once the connection closes, the agent's
    conntrack GC finds no flow of the old frontend and its draining record goes. On 8c0200c the
    open connection hung after the change (the frontend and its flows went at once)."""
    agent = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS,
                         extra_args=["--ct-gc-interval", "0.5", "--ct-timeouts", "tcp_close=1"])
    try:
        with nsops.in_netns(f"{lab.name}-client"):
            conn = http.client.HTTPConnection(WEB_VIP, 80, timeout=5)
            conn.connect()
        try:
            conn.request("GET", "/")
            first = conn.getresponse().read().decode().strip()
            agent.write_manifest(text=agent.manifest_path.read_text().replace(
                "port: 80, protocol: TCP", "port: 8081, protocol: TCP"))
            wait_until(lambda: agent.backends(f"{WEB_VIP}:8081/TCP"), 10, "port 8081")
            for _ in range(5):
                conn.request("GET", "/")
                assert conn.getresponse().read().decode().strip() == first
            old = [s for s in agent.services(draining=True)
                   if s["frontend"] == f"{WEB_VIP}:80/TCP"]
            assert [(s["draining"], s["backends"]) for s in old] == [(True, [])]
            refused = lablib.run_in_pod(lab.name, "client", [
                "curl", "-sS", "--max-time", "2", f"http://{WEB_VIP}:80/"], timeout=10)
            assert refused.returncode != 0, refused.stdout
            assert who(lab.name, "client", f"http://{WEB_VIP}:8081/") in {"web-1", "web-2", "web-3"}
        finally:
            conn.close()
        wait_until(lambda: f"{WEB_VIP}:80/TCP" not in {
            s["frontend"] for s in agent.services(draining=True)}, 15,
            "the drained frontend to be released")
        assert "draining frontends released" in agent.log()
    finally:
        agent.stop()
        force_cleanup(lab.name)


SECOND_VIP = "10.96.0.21"
# A second Service, both protocols, on the same pods as demo/web and demo/echo.
SECOND_SERVICE = f"""
---
apiVersion: v1
kind: Service
metadata: {{name: both, namespace: demo}}
spec:
  clusterIP: {SECOND_VIP}
  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}},
          {{name: dns, port: 53, protocol: UDP, targetPort: 9053}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: both-a, namespace: demo, labels: {{kubernetes.io/service-name: both}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 9053, protocol: UDP}}]
endpoints:
- {{addresses: [10.244.0.11], conditions: {{ready: true}}}}
"""


def test_one_client_port_reaches_two_frontends_of_one_backend(lab, tmp_path):
    """A pod's one UDP socket asks two Services whose only backend is the same pod, and two TCP
    sockets bound to one port (SO_REUSEADDR) connect to the two Services: each pair of flows
    would share the reply tuple backend -> client:port. The second flow of each gets a source
    port of its own from the data plane, so every answer comes back from the address asked, to
    the socket that asked. On 8c0200c the second flow was dropped (conntrack_collision)."""
    one = [("web-1", "10.244.0.11", True)]
    agent = RunningAgent(lab.name, tmp_path, one)
    try:
        agent.write_manifest(text=agent.manifest_path.read_text() + SECOND_SERVICE)
        wait_until(lambda: agent.backends(f"{SECOND_VIP}:53/UDP"), 10, "the second Service")
        with nsops.in_netns(f"{lab.name}-client"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(2)
            sock.bind(("0.0.0.0", 0))
            for i in range(3):
                for vip in (ECHO_VIP, SECOND_VIP):
                    sock.sendto(f"q{i}".encode(), (vip, 53))
                    data, peer = sock.recvfrom(65535)
                    assert (data, peer) == (f"web-1 q{i}".encode(), (vip, 53))
        with nsops.in_netns(f"{lab.name}-client"):
            conns = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
        try:
            for c in conns:
                c.settimeout(3)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            conns[0].bind(("0.0.0.0", 0))
            conns[1].bind(conns[0].getsockname())
            for c, vip in zip(conns, (WEB_VIP, SECOND_VIP)):
                c.connect((vip, 80))
                c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            for c, vip in zip(conns, (WEB_VIP, SECOND_VIP)):
                reply = b""
                while chunk := c.recv(4096):
                    reply += chunk
                assert reply.startswith(b"HTTP/1.") and reply.rstrip().endswith(b"web-1"), reply
                assert c.getpeername() == (vip, 80)
        finally:
            for c in conns:
                c.close()
        stats = json.loads(ebpflb("stats", "--verdicts", "-o", "json", "--pin-dir",
                                  agent.pin_dir).stdout)
        if stats["events"]["port_nat"] < 2 or stats["drops"]["conntrack_collision"]:
            flows = ebpflb("ct", "list", "--pin-dir", agent.pin_dir).stdout
            raise AssertionError(f"events {stats['events']}, drops {stats['drops']}, from_pod "
                                 f"{stats['verdicts']['from_pod']}\nflows:\n{flows}\n"
                                 f"{agent.log()}")
    finally:
        agent.stop()
        force_cleanup(lab.name)


@pytest.mark.parametrize("mutate,expected_error", [
    (lambda text: text.replace("port: 80,", "port: 70000,"),
     "Service demo/web: spec.ports[0].port: 70000 is not a valid port"),
    (lambda text: text + "\n  - : [unclosed\n", "invalid YAML"),
], ids=["port out of range", "YAML syntax error"])
def test_bad_manifest_edit_keeps_the_last_good_state(lab, agent, mutate, expected_error):
    before = agent.services()
    agent.write_manifest(text=mutate(agent.manifest_path.read_text()))
    wait_until(lambda: expected_error in agent.log(), 10, "the agent to reject the edit")
    assert "stay programmed" in agent.log() or "last good version stays programmed" in agent.log()
    assert agent.services() == before
    assert {who(lab.name, "client") for _ in range(10)} <= {"web-1", "web-2", "web-3"}
    # The agent keeps following the file: the next good edit is applied.
    agent.write_manifest(DEFAULT_ENDPOINTS[:1])
    wait_until(lambda: agent.backends(f"{WEB_VIP}:80/TCP") == ["10.244.0.11"], 10,
               "the next good edit")
    assert {who(lab.name, "client") for _ in range(5)} == {"web-1"}


def _our_filters(lab_name):
    out = []
    for dev in nsops.run_cmd(["ip", "-n", f"{lab_name}-node", "-o", "link", "show"]).stdout.splitlines():
        name = dev.split(":")[1].strip().split("@")[0]
        for hook in ("ingress", "egress"):
            r = subprocess.run(["tc", "-n", f"{lab_name}-node", "filter", "show", "dev", name, hook],
                               capture_output=True, text=True)
            if "ebpflb_" in r.stdout:
                out.append((name, hook))
    return out


def test_agent_exit_remove_leaves_nothing(lab, tmp_path):
    running = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS, on_exit="remove")
    try:
        assert len(_our_filters(lab.name)) == 2 * len(lab.pods)
    finally:
        assert running.stop() == 0
        force_cleanup(lab.name)
    assert _our_filters(lab.name) == []
    assert not os.path.exists(running.pin_dir)


def test_data_plane_survives_the_agent_and_cleanup_removes_it(lab, tmp_path):
    running = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS, on_exit="keep")
    try:
        assert running.stop() == 0
        # No agent process: the pinned maps and attached programs keep serving.
        assert {who(lab.name, "client") for _ in range(20)} <= {"web-1", "web-2", "web-3"}
        r = ebpflb("cleanup", "--yes", "--netns", f"{lab.name}-node", "--pin-dir", running.pin_dir)
        assert "removed" in r.stdout
        assert _our_filters(lab.name) == []
        assert not os.path.exists(running.pin_dir)
        # Without the data plane the VIP is blackholed in the node: the request fails.
        r = lablib.run_in_pod(lab.name, "client",
                              ["curl", "-sS", "--max-time", "2", f"http://{WEB_VIP}/"], timeout=10)
        assert r.returncode != 0
    finally:
        force_cleanup(lab.name)
