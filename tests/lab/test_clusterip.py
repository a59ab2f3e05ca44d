"""ClusterIP load balancing with real traffic: the real agent, real programs on real veths, curl
and UDP sockets in pod namespaces. Every test tears down its agent, pins and lab."""
import http.client
import os
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
        r = ebpflb("cleanup", "--netns", f"{lab.name}-node", "--pin-dir", running.pin_dir)
        assert "removed" in r.stdout
        assert _our_filters(lab.name) == []
        assert not os.path.exists(running.pin_dir)
        # Without the data plane the VIP is blackholed in the node: the request fails.
        r = lablib.run_in_pod(lab.name, "client",
                              ["curl", "-sS", "--max-time", "2", f"http://{WEB_VIP}/"], timeout=10)
        assert r.returncode != 0
    finally:
        force_cleanup(lab.name)
