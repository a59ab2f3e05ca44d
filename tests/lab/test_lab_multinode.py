"""The multi-node lab (`lab_up(..., nodes=N)`, `ebpflb lab up --nodes N`): node namespaces joined
by an underlay bridge, pod CIDRs routed between nodes, an external client that reaches node
addresses and nothing else, one agent per node with its own pins, and a teardown that leaves
nothing of any of it.

Tier: lab (root, real namespaces and traffic). Fixtures are in tests/lab/conftest.py.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import time
from typing import Iterator

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab import topology as topo
from ebpflb.lab.lab import add_pod, del_pod, get_lab, in_netns, lab_down, lab_status, lab_up
from ebpflb.lab.topology import HTTP_PORT, UDP_ECHO_PORT, PodSpec

from .agent_harness import ECHO_VIP, WEB_VIP, RunningAgent, ebpflb, force_cleanup, wait_until
from .conftest import udp_exchange

pytestmark = pytest.mark.lab

NODE0_PODS = {"client", "web-1", "web-2", "web-3", "web-4"}
NODE1_PODS = {"n1-client", "n1-web-1", "n1-web-2"}


def _lab_netns(name: str) -> list:
    return [ns for ns in nsops.list_netns() if ns.startswith(name + "-")]


@pytest.fixture
def lab2(lab_names) -> Iterator[lablib.Lab]:
    """A two-node lab with the default pods, removed after the test."""
    name = lab_names.new()
    the_lab = lab_up(name, nodes=2)
    try:
        yield the_lab
    finally:
        lab_down(name)


def _curl(lab_name: str, pod: str, url: str, max_time: float = 3) -> str:
    r = lablib.run_in_pod(lab_name, pod, ["curl", "-sS", "--max-time", str(max_time), url],
                          timeout=max_time + 10)
    assert r.returncode == 0, f"curl {url} from {pod}: {r.stderr}"
    return r.stdout.strip()


def _connect_errno(netns: str, addr: str, port: int, timeout: float = 2.0) -> int:
    """errno of a TCP connect from `netns` (0 if it connected)."""
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        return sock.connect_ex((addr, port))


# ------------------------------------------------------------------ names (no kernel)

def test_multinode_names_and_addresses():
    assert topo.node_netns("ebpflb") == topo.node_netns("ebpflb", 0) == "ebpflb-node"
    assert topo.node_netns("ebpflb", 2) == "ebpflb-node2"
    assert [topo.node_address(k) for k in range(3)] == ["192.168.200.10", "192.168.200.11",
                                                        "192.168.200.12"]
    assert topo.node_pod_cidr(3) == "10.244.3.0/24"
    assert topo.ext_netns("ebpflb") == "ebpflb-ext" and topo.EXT_ADDRESS == "192.168.200.2"
    assert topo.default_pods() == topo.default_pods(nodes=1)  # one node: today's pods
    pods = topo.default_pods(n_web=1, nodes=3, n_web_per_node=3)
    assert [(p.name, p.ip, p.node) for p in pods] == [
        ("client", "10.244.0.2", 0), ("web-1", "10.244.0.11", 0),
        ("n1-client", "10.244.1.2", 1), ("n1-web-1", "10.244.1.11", 1),
        ("n1-web-2", "10.244.1.12", 1), ("n1-web-3", "10.244.1.13", 1),
        ("n2-client", "10.244.2.2", 2), ("n2-web-1", "10.244.2.11", 2),
        ("n2-web-2", "10.244.2.12", 2), ("n2-web-3", "10.244.2.13", 2)]
    assert [topo.runs_server(p) for p in pods[:3]] == [False, True, False]
    assert topo.validate_pods(pods, 3) == pods
    with pytest.raises(ValueError, match="not a node"):
        topo.validate_pods(pods, 2)
    with pytest.raises(ValueError, match="pod CIDR"):
        topo.validate_pods([PodSpec("x", "10.244.0.5", 1)], 2)
    for reserved in ("node", "node1", "underlay", "ext"):
        with pytest.raises(ValueError, match="reserved"):
            topo.validate_pod(PodSpec(reserved, "10.244.0.5"))
    for bad in (0, 33, True, "2"):
        with pytest.raises(ValueError, match="node count"):
            topo.validate_nodes(bad)
    with pytest.raises(ValueError, match="-node"):
        topo.validate_lab_name("a-node1")


def test_bad_node_counts_and_pods_are_refused_before_anything_is_built(lab_names):
    name = lab_names.new()
    for kwargs in ({"nodes": 0}, {"nodes": 33},
                   {"nodes": 2, "pods": [PodSpec("a", "10.244.0.5", 2)]},
                   {"nodes": 2, "pods": [PodSpec("a", "10.244.1.5", 0)]},
                   {"nodes": 1, "pods": [PodSpec("a", "10.244.1.5", 1)]}):
        with pytest.raises(lablib.LabConfigError):
            lab_up(name, **kwargs)
    assert _lab_netns(name) == []


# ------------------------------------------------------------------ traffic between nodes

def test_pods_reach_pods_on_the_other_node_over_http_and_udp(lab2):
    for src, dst in (("client", "n1-web-1"), ("client", "n1-web-2"), ("n1-client", "web-1"),
                     ("n1-client", "n1-web-2"), ("client", "web-2")):
        assert _curl(lab2.name, src, f"http://{lab2.ip(dst)}:{HTTP_PORT}/") == dst
        reply, peer = udp_exchange(lab2.pod_ns(src), lab2.ip(dst), b"hello")
        assert reply == f"{dst} hello".encode()
        assert peer == (lab2.ip(dst), UDP_ECHO_PORT)


def test_pod_sees_the_other_nodes_pod_source_address(lab2):
    ip, port = _curl(lab2.name, "client", f"http://{lab2.ip('n1-web-2')}:{HTTP_PORT}/client").split(":")
    assert ip == "10.244.0.2" and 1024 <= int(port) <= 65535
    ip, _ = _curl(lab2.name, "n1-client", f"http://{lab2.ip('web-3')}:{HTTP_PORT}/client").split(":")
    assert ip == "10.244.1.2"


def test_pod_routes_go_over_the_underlay(lab2):
    r = lablib.run_in_pod(lab2.name, "node", ["ip", "route", "get", lab2.ip("n1-web-1")])
    assert r.returncode == 0, r.stderr
    assert "via 192.168.200.11 dev eth0" in r.stdout
    r = lablib.run_in_pod(lab2.name, "node1", ["ip", "route", "get", lab2.ip("web-1")])
    assert "via 192.168.200.10 dev eth0" in r.stdout


def test_external_client_reaches_node_addresses_but_not_pods_or_vips(lab2):
    ext = lab2.ext_ns
    assert ext == topo.ext_netns(lab2.name)
    for k in range(2):
        t0 = time.monotonic()
        # Nothing listens on port 1 of a node: refused at once proves the address answers.
        assert _connect_errno(ext, topo.node_address(k), 1) == errno.ECONNREFUSED
        assert time.monotonic() - t0 < 1.5
    for pod_ip in (lab2.ip("web-1"), lab2.ip("n1-web-1")):
        assert _connect_errno(ext, pod_ip, HTTP_PORT) == errno.ENETUNREACH
    assert _connect_errno(ext, WEB_VIP, 80) == errno.ENETUNREACH
    r = lablib.run_in_ext(lab2.name, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
    assert f"{topo.EXT_ADDRESS}/24" in r.stdout
    r = lablib.run_in_ext(lab2.name, ["curl", "-sS", "--max-time", "2",
                                      f"http://{lab2.ip('web-1')}:{HTTP_PORT}/"])
    assert r.returncode != 0


def test_every_node_forwards_with_strict_rp_filter_and_blackholes_vips(lab2):
    for k, ns in enumerate(lab2.node_namespaces):
        assert ns == topo.node_netns(lab2.name, k)
        assert nsops.read_sysctl(ns, "net.ipv4.ip_forward") == "1"
        for dev in ("all", "default", "eth0"):
            assert nsops.read_sysctl(ns, f"net.ipv4.conf.{dev}.rp_filter") == "1"
        for pod in (p for p in lab2.pods.values() if p.node == k):
            assert nsops.read_sysctl(ns, f"net.ipv4.conf.{topo.host_ifname(pod.name)}.rp_filter") == "1"
        short = "node" if k == 0 else f"node{k}"  # run_in_pod reaches "<lab>-<short>"
        routes = lablib.run_in_pod(lab2.name, short, ["ip", "route", "show", "match", "10.96.0.99"])
        assert [r.split()[:2] for r in routes.stdout.splitlines()] == [["blackhole", topo.SERVICE_CIDR]]
        addr = lablib.run_in_pod(lab2.name, short, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        assert f"{topo.node_address(k)}/24" in addr.stdout


# ------------------------------------------------------------------ life cycle

def test_status_reports_nodes_and_each_pods_node(lab2):
    for state_file in (True, False):
        if not state_file:
            os.unlink(topo.state_file(lab2.name))  # rebuilt from the namespaces, as after a crash
        status = lab_status(lab2.name)
        json.dumps(status)
        assert status["exists"] and status["node_ns"] == f"{lab2.name}-node"
        assert [(n["index"], n["netns"], n["netns_exists"], n["address"], n["pod_cidr"])
                for n in status["nodes"]] == [
            (0, f"{lab2.name}-node", True, "192.168.200.10", "10.244.0.0/24"),
            (1, f"{lab2.name}-node1", True, "192.168.200.11", "10.244.1.0/24")]
        assert status["ext_ns"] == f"{lab2.name}-ext" and status["ext_address"] == "192.168.200.2"
        assert status["underlay_ns"] == f"{lab2.name}-underlay"
        pods = {p["name"]: p for p in status["pods"]}
        assert set(pods) == NODE0_PODS | NODE1_PODS
        assert {n for n, p in pods.items() if p["node"] == 1} == NODE1_PODS
        assert pods["n1-client"]["server"] is False and pods["n1-web-1"]["server_alive"] is True
        assert set(status["namespaces"]) == (
            {lab2.pod_ns(p) for p in pods} | set(lab2.node_namespaces) | {lab2.ext_ns, lab2.underlay_ns})


def test_add_and_delete_a_pod_on_node_1(lab2):
    add_pod(lab2.name, PodSpec("n1-web-9", "10.244.1.99", 1))
    assert get_lab(lab2.name).pods["n1-web-9"].node == 1
    assert _curl(lab2.name, "client", f"http://10.244.1.99:{HTTP_PORT}/") == "n1-web-9"
    with pytest.raises(ValueError, match="pod CIDR"):
        add_pod(lab2.name, PodSpec("n1-web-10", "10.244.0.77", 1))
    links = subprocess.run(["ip", "-n", lab2.node_netns(1), "-o", "link"], capture_output=True,
                           text=True, check=True).stdout
    assert "lxcn1-web-9@" in links
    del_pod(lab2.name, "n1-web-9")
    links = subprocess.run(["ip", "-n", lab2.node_netns(1), "-o", "link"], capture_output=True,
                           text=True, check=True).stdout
    assert "lxcn1-web-9" not in links
    assert lab2.pod_ns("n1-web-9") not in nsops.list_netns()


def test_lab_down_removes_every_namespace_and_is_idempotent(lab2):
    pids = list(lab2.pids.values())
    # A process in node 1 (where an agent would run) and one in the external client must go too.
    extras = [subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "300"])
              for ns in (lab2.node_netns(1), lab2.ext_ns)]
    try:
        wait_until(lambda: all(p.pid in nsops.netns_pids(ns) for p, ns in
                               zip(extras, (lab2.node_netns(1), lab2.ext_ns))), 5, "sleepers")
        removed = lab_down(lab2.name)
        for p in extras:
            assert p.wait(timeout=5) != 0
    finally:
        for p in extras:
            if p.poll() is None:
                p.kill()
                p.wait()
    for ns in (lab2.node_ns, lab2.node_netns(1), lab2.ext_ns, lab2.underlay_ns):
        assert f"netns {ns}" in removed
    assert _lab_netns(lab2.name) == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert lab2.name not in listed
    assert not any(nsops.pid_alive(p) for p in pids)
    assert not os.path.exists(topo.state_file(lab2.name))
    assert lab_down(lab2.name) == []
    assert lab_status(lab2.name)["exists"] is False


def test_lab_down_after_a_crash_without_state_file(lab2, make_lab):
    other = make_lab(name=lab2.name + "-x", pods=[PodSpec("web-1", "10.244.0.11")])
    os.unlink(topo.state_file(lab2.name))
    lab_down(lab2.name)
    assert _lab_netns(lab2.name) == sorted(lab_status(other.name)["namespaces"])
    assert not any(nsops.pid_alive(p) for p in lab2.pids.values())


def test_single_node_lab_has_no_underlay(lab):
    status = lab_status(lab.name)
    assert [n["index"] for n in status["nodes"]] == [0]
    assert status["nodes"][0]["address"] is None
    assert status["ext_ns"] is None and status["underlay_ns"] is None
    assert all(p["node"] == 0 for p in status["pods"])
    assert set(_lab_netns(lab.name)) == {lab.node_ns} | {lab.pod_ns(p) for p in lab.pods}
    links = subprocess.run(["ip", "-n", lab.node_ns, "-o", "link"], capture_output=True,
                           text=True, check=True).stdout
    assert " eth0" not in links


def test_cli_lab_up_with_nodes(lab_names):
    name = lab_names.new()
    try:
        r = ebpflb("lab", "up", "--name", name, "--nodes", "2", "--pods", "1")
        assert f"{name}-node, {name}-node1" in r.stdout
        status = json.loads(ebpflb("lab", "status", "--name", name, "-o", "json").stdout)
        assert {(p["name"], p["node"]) for p in status["pods"]} == {
            ("client", 0), ("web-1", 0), ("n1-client", 1), ("n1-web-1", 1), ("n1-web-2", 1)}
        assert "node 1" in ebpflb("lab", "status", "--name", name).stdout
    finally:
        ebpflb("lab", "down", "--name", name)
    assert _lab_netns(name) == []


# ------------------------------------------------------------------ one agent per node

BOTH_NODES = [("web-1", "10.244.0.11", True), ("web-2", "10.244.0.12", True),
              ("n1-web-1", "10.244.1.11", True), ("n1-web-2", "10.244.1.12", True)]


@pytest.fixture
def agents(lab2, tmp_path):
    started = []
    try:
        for k in range(2):
            started.append(RunningAgent(lab2.name, tmp_path, BOTH_NODES, node=k))
        yield started
    finally:
        for agent in started:
            agent.stop()
        force_cleanup(lab2.name)


def test_an_agent_per_node_each_serving_its_own_clients(lab2, agents, tmp_path):
    a0, a1 = agents
    assert (a0.node, a1.node) == (0, 1)
    assert a0.pin_dir != a1.pin_dir and a1.pin_dir == a0.pin_dir + "-node1"
    assert os.path.isdir(a0.pin_dir) and os.path.isdir(a1.pin_dir)
    assert (tmp_path / "agent-node1.log").exists() and (tmp_path / "services-node1.yaml").exists()
    for agent in agents:
        assert sorted(agent.backends(f"{WEB_VIP}:80/TCP")) == sorted(ip for _, ip, _ in BOTH_NODES)
    want = {pod for pod, _, _ in BOTH_NODES}
    for client in ("client", "n1-client"):
        seen = {_curl(lab2.name, client, f"http://{WEB_VIP}/") for _ in range(60)}
        assert seen == want, (client, seen)
        udp_seen = set()
        for i in range(30):
            data, peer = udp_exchange(lab2.pod_ns(client), ECHO_VIP, b"p%d" % i, port=53)
            assert peer == (ECHO_VIP, 53)
            pod, payload = data.decode().split(" ", 1)
            assert payload == f"p{i}"
            udp_seen.add(pod)
        assert udp_seen <= want and len(udp_seen) >= 2


def test_clusterip_to_a_backend_on_the_other_node(lab2, agents):
    """DNAT at the client's node, routed over the underlay, reverse NAT at the client's veth
    egress: the client sees only the VIP, the remote backend sees the client's own address."""
    a0, a1 = agents
    a0.write_manifest([("n1-web-2", "10.244.1.12", True)])
    a1.write_manifest([("web-3", "10.244.0.13", True)])
    wait_until(lambda: a0.backends(f"{WEB_VIP}:80/TCP") == ["10.244.1.12"], 10, "node 0 reprogrammed")
    wait_until(lambda: a1.backends(f"{WEB_VIP}:80/TCP") == ["10.244.0.13"], 10, "node 1 reprogrammed")
    for client, backend, client_ip in (("client", "n1-web-2", "10.244.0.2"),
                                       ("n1-client", "web-3", "10.244.1.2")):
        r = lablib.run_in_pod(lab2.name, client, [
            "curl", "-sS", "--max-time", "3", "-w", " %{remote_ip}:%{remote_port}",
            f"http://{WEB_VIP}/client"], timeout=10)
        assert r.returncode == 0, r.stderr
        seen_by_backend, remote = r.stdout.split()
        assert seen_by_backend.split(":")[0] == client_ip
        assert remote == f"{WEB_VIP}:80"
        assert {_curl(lab2.name, client, f"http://{WEB_VIP}/") for _ in range(10)} == {backend}
        data, peer = udp_exchange(lab2.pod_ns(client), ECHO_VIP, b"x", port=53)
        assert (data, peer) == (f"{backend} x".encode(), (ECHO_VIP, 53))
    assert nsops.read_sysctl(lab2.node_netns(1), "net.ipv4.conf.all.rp_filter") == "1"


def test_force_cleanup_removes_every_nodes_pins(lab2, tmp_path):
    agents = [RunningAgent(lab2.name, tmp_path, BOTH_NODES, node=k, on_exit="keep") for k in range(2)]
    try:
        for agent in agents:
            assert agent.stop() == 0
        assert all(os.path.isdir(a.pin_dir) for a in agents)  # kept on exit, as asked
    finally:
        for agent in agents:
            agent.stop()
        force_cleanup(lab2.name)
    assert not any(os.path.exists(a.pin_dir) for a in agents)


@pytest.mark.parametrize("where", ["_create_underlay", "_start_servers"])
def test_failed_multinode_lab_up_leaves_nothing(lab_names, monkeypatch, where):
    name = lab_names.new()
    real = getattr(lablib, where)

    def boom(lab, *args, **kwargs):
        if where == "_create_underlay":
            real(lab, *args, **kwargs)  # fail after the underlay and ext exist
        raise lablib.LabError("injected failure")

    monkeypatch.setattr(lablib, where, boom)
    with pytest.raises(lablib.LabError, match="injected"):
        lab_up(name, nodes=3)
    assert _lab_netns(name) == []
    assert not os.path.exists(topo.state_file(name))
