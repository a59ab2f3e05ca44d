"""The lab topology on its own, with no load balancer: pods reach each other by pod IP, the node
forwards with strict rp_filter, the VIP range goes nowhere, and the lab's life cycle (up, pods
added and deleted, status, down after a crash) leaves nothing behind.

Tier: lab (root, real namespaces and traffic). Fixtures are in tests/lab/conftest.py.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab import nsops
from ebpflb.lab import topology as topo
from ebpflb.lab.lab import add_pod, del_pod, get_lab, in_netns, lab_down, lab_status, lab_up
from ebpflb.lab.topology import CLIENT_IP, HTTP_PORT, UDP_ECHO_PORT, PodSpec

pytestmark = pytest.mark.lab

VIP = "10.96.0.99"


def _links(netns: str) -> list:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]


def _lab_netns(name: str) -> list:
    return [ns for ns in nsops.list_netns() if ns.startswith(name + "-")]


# ------------------------------------------------------------------ traffic

def test_client_reaches_every_web_pod_over_http(lab, curl):
    assert len(lab.web_pods) == 4
    for pod in lab.web_pods:
        res = curl(lab.name, "client", f"http://{pod.ip}:{HTTP_PORT}/")
        assert res.returncode == 0, res.stderr
        assert res.stdout == f"{pod.name}\n"


def test_client_reaches_every_web_pod_over_udp(lab, udp):
    for pod in lab.web_pods:
        reply, peer = udp(lab.pod_ns("client"), pod.ip, b"ping-" + pod.name.encode())
        assert reply == f"{pod.name} ping-{pod.name}".encode()
        assert peer == (pod.ip, UDP_ECHO_PORT)


def test_source_address_is_preserved(lab, curl):
    res = curl(lab.name, "client", f"http://{lab.ip('web-2')}:{HTTP_PORT}/client")
    assert res.returncode == 0, res.stderr
    ip, port = res.stdout.strip().split(":")
    assert ip == CLIENT_IP
    assert 1024 <= int(port) <= 65535


def test_socket_made_in_netns_stays_there_and_keeps_alive(lab):
    """in_netns moves only this thread, and only for the block; the socket stays in the pod."""
    before = nsops.current_netns_inode()
    with in_netns(lab.pod_ns("client")):
        inside = nsops.current_netns_inode()
        sock = socket.create_connection((lab.ip("web-1"), HTTP_PORT), timeout=5)
    assert nsops.current_netns_inode() == before != inside
    conn = http.client.HTTPConnection(lab.ip("web-1"), HTTP_PORT, timeout=5)
    conn.sock = sock  # already connected from the client pod; http.client reuses it
    try:
        local = sock.getsockname()
        assert local[0] == CLIENT_IP
        # Three requests on one connection: keep-alive works and the peer stays the same.
        for path, want in (("/", "web-1\n"), ("/client", f"{CLIENT_IP}:{local[1]}\n"), ("/", "web-1\n")):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.read().decode() == want
        conn.request("GET", "/nope")
        resp = conn.getresponse()
        assert resp.status == 404
        resp.read()
    finally:
        conn.close()


def test_node_forwards_with_strict_rp_filter(lab):
    node = lab.node_ns
    assert nsops.read_sysctl(node, "net.ipv4.ip_forward") == "1"
    assert nsops.read_sysctl(node, "net.ipv4.conf.all.rp_filter") == "1"
    assert nsops.read_sysctl(node, "net.ipv4.conf.default.rp_filter") == "1"
    for pod in lab.pods:
        assert nsops.read_sysctl(node, f"net.ipv4.conf.{lab.host_ifname(pod)}.rp_filter") == "1"
        assert nsops.read_sysctl(node, f"net.ipv6.conf.{lab.host_ifname(pod)}.disable_ipv6") == "1"
        assert nsops.read_sysctl(lab.pod_ns(pod), "net.ipv6.conf.eth0.disable_ipv6") == "1"


def _rp_filter_drops(node_ns: str) -> int:
    # /proc/thread-self/net follows this thread's namespace (/proc/net follows the main thread's).
    with in_netns(node_ns):
        with open("/proc/thread-self/net/netstat") as fh:
            head, values = [line.split() for line in fh.readlines()[:2]]
    return int(values[head.index("IPReversePathFilter")])


def test_rp_filter_drops_spoofed_source(lab, udp):
    """A datagram from the client pod claiming web-3's address is dropped by the node."""
    before = _rp_filter_drops(lab.node_ns)
    with in_netns(lab.pod_ns("client")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        # IP_TRANSPARENT lets the socket use a source address the pod does not own.
        sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_TRANSPARENT", 19), 1)
        sock.bind((lab.ip("web-3"), 0))
        sock.sendto(b"spoofed", (lab.ip("web-1"), UDP_ECHO_PORT))
    deadline = time.monotonic() + 2
    while _rp_filter_drops(lab.node_ns) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _rp_filter_drops(lab.node_ns) == before + 1
    # The honest path still works.
    assert udp(lab.pod_ns("client"), lab.ip("web-1"), b"honest")[0] == b"web-1 honest"


def test_vip_range_is_blackholed(lab):
    # `ip route get` answers EINVAL for a blackholed destination; list the routes that match.
    routes = lablib.run_in_pod(lab.name, "node", ["ip", "route", "show", "match", VIP])
    assert routes.returncode == 0, routes.stderr
    assert [r.split()[:2] for r in routes.stdout.splitlines()] == [["blackhole", topo.SERVICE_CIDR]]
    with in_netns(lab.pod_ns("client")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(1.0)
        t0 = time.monotonic()
        with pytest.raises(OSError):  # socket.timeout is an OSError
            sock.connect((VIP, 80))
        assert time.monotonic() - t0 < 3


# -------------------------------------------------------------- life cycle

def test_lab_status_reports_pods(lab):
    status = lab_status(lab.name)
    json.dumps(status)  # must be serialisable as it is (the CLI prints it)
    assert status["exists"] and status["node_ns_exists"]
    assert set(status["namespaces"]) == {lab.node_ns} | {lab.pod_ns(p) for p in lab.pods}
    pods = {p["name"]: p for p in status["pods"]}
    assert set(pods) == {"client", "web-1", "web-2", "web-3", "web-4"}
    assert pods["client"]["ip"] == CLIENT_IP and pods["client"]["server"] is False
    assert pods["client"]["server_alive"] is None
    for name in ("web-1", "web-2", "web-3", "web-4"):
        assert pods[name]["ip"] == lab.ip(name)
        assert pods[name]["server_alive"] is True
        assert pods[name]["server_pid"] == lab.pids[name]
    assert lab_status("tnone")["exists"] is False


def test_add_pod_then_del_pod(lab, curl):
    new = PodSpec("web-9", "10.244.0.99")
    add_pod(lab.name, new)
    assert "web-9" in get_lab(lab.name).pods
    res = curl(lab.name, "client", f"http://{new.ip}:{HTTP_PORT}/")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "web-9\n"
    with pytest.raises(lablib.LabExistsError):
        add_pod(lab.name, new)
    with pytest.raises(ValueError):
        add_pod(lab.name, PodSpec("web-10", lab.ip("web-1")))  # address taken

    pid = get_lab(lab.name).pids["web-9"]
    del_pod(lab.name, "web-9")
    assert lab.pod_ns("web-9") not in nsops.list_netns()
    assert topo.host_ifname("web-9") not in _links(lab.node_ns)
    assert not nsops.pid_alive(pid)
    assert "web-9" not in get_lab(lab.name).pods
    assert curl(lab.name, "client", f"http://{new.ip}:{HTTP_PORT}/", 1).returncode != 0
    # The rest of the lab is untouched.
    assert curl(lab.name, "client", f"http://{lab.ip('web-1')}:{HTTP_PORT}/").stdout == "web-1\n"
    with pytest.raises(lablib.LabNotFoundError):
        del_pod(lab.name, "web-9")


def test_lab_up_refuses_an_existing_lab(lab):
    with pytest.raises(lablib.LabExistsError, match=lab.name):
        lab_up(lab.name)
    assert lab_status(lab.name)["pods"][1]["server_alive"]  # the refusal changed nothing


def test_lab_down_removes_everything_and_is_idempotent(lab):
    pids = list(lab.pids.values())
    # An extra process in a pod, as a test or a user would start one: it must go too.
    extra = subprocess.Popen(["ip", "netns", "exec", lab.pod_ns("client"), "sleep", "300"])
    try:
        deadline = time.monotonic() + 5
        while extra.pid not in nsops.netns_pids(lab.pod_ns("client")) and time.monotonic() < deadline:
            time.sleep(0.01)
        removed = lab_down(lab.name)
        assert extra.wait(timeout=5) != 0
    finally:
        if extra.poll() is None:
            extra.kill()
            extra.wait()
    assert any(r.startswith("netns ") for r in removed)
    assert any(str(extra.pid) in r for r in removed)
    assert _lab_netns(lab.name) == []
    assert not any(nsops.pid_alive(p) for p in pids)
    assert not os.path.exists(topo.state_file(lab.name))
    assert not os.path.exists(topo.log_dir(lab.name))
    assert lab_down(lab.name) == []
    assert lab_status(lab.name)["exists"] is False


def test_lab_down_works_without_state_file(lab):
    """After a crash the state file may be gone; the namespace tags still find the lab."""
    pids = list(lab.pids.values())
    os.unlink(topo.state_file(lab.name))
    status = lab_status(lab.name)
    assert status["exists"] and status["state_file"] is None
    pods = {p["name"]: p for p in status["pods"]}
    assert set(pods) == set(lab.pods)
    assert pods["web-1"]["ip"] == lab.ip("web-1") and pods["web-1"]["server_alive"] is True
    assert pods["web-1"]["server_pid"] == lab.pids["web-1"]
    lab_down(lab.name)
    assert _lab_netns(lab.name) == []
    assert not any(nsops.pid_alive(p) for p in pids)


def test_lab_down_never_touches_other_labs(lab, make_lab):
    """Lab "tXXXXX-x" and a foreign untagged "tXXXXX-..." namespace share the prefix "tXXXXX-"."""
    other = make_lab(name=lab.name + "-x", pods=[PodSpec("web-1", "10.244.0.11")])
    foreign = f"{lab.name}-foreign"
    nsops.create_netns(foreign)
    try:
        os.unlink(topo.state_file(lab.name))  # force discovery by prefix and tag
        lab_down(lab.name)
        assert foreign in nsops.list_netns()
        st = lab_status(other.name)
        assert st["namespaces"] == [other.pod_ns("web-1"), other.node_ns]
        assert all(ns in nsops.list_netns() for ns in st["namespaces"])
        assert st["pods"][0]["server_alive"]
        assert _lab_netns(lab.name) == sorted([foreign] + st["namespaces"])
    finally:
        nsops.remove_netns(foreign)


def test_failed_lab_up_leaves_nothing(lab_names, monkeypatch):
    name = lab_names.new()

    def boom(*args, **kwargs):
        raise lablib.LabError("injected failure")

    monkeypatch.setattr(lablib, "_start_servers", boom)
    with pytest.raises(lablib.LabError, match="injected"):
        lab_up(name)
    assert _lab_netns(name) == []
    assert not os.path.exists(topo.state_file(name))


# ------------------------------------------------------------------ naming

@pytest.mark.parametrize("bad", ["", "Ebpflb", "abcdefghijk", "-x", "x-", "a_b", "a.b", "a/b"])
def test_lab_names_are_validated(bad):
    for call in (lab_up, lab_down, lab_status):
        with pytest.raises(lablib.LabConfigError, match="invalid lab name"):
            call(bad)
    with pytest.raises(ValueError):  # a LabConfigError is a ValueError as well
        lab_up(bad)


def test_bad_pods_are_refused_before_anything_is_built(lab_names):
    name = lab_names.new()
    for pods in ([PodSpec("web-1", "10.244.0.11"), PodSpec("web-1", "10.244.0.12")],
                 [PodSpec("a", "10.244.0.11"), PodSpec("b", "10.244.0.11")],
                 [PodSpec("node", "10.244.0.11")],
                 [PodSpec("web", "192.168.1.1")],
                 [PodSpec("Web", "10.244.0.11")]):
        with pytest.raises(ValueError):
            lab_up(name, pods)
    assert _lab_netns(name) == []


def test_names_and_addresses():
    pods = topo.default_pods()
    assert pods[0] == PodSpec("client", "10.244.0.2")
    assert [p.name for p in pods[1:]] == ["web-1", "web-2", "web-3", "web-4"]
    assert [p.ip for p in pods[1:]] == ["10.244.0.11", "10.244.0.12", "10.244.0.13", "10.244.0.14"]
    assert topo.node_netns("ebpflb") == "ebpflb-node"
    assert topo.pod_netns("ebpflb", "web-1") == "ebpflb-web-1"
    names = ["web-1", "client", "a" * 12, "a" * 13, "a" * 32, "a" * 31 + "b", "backend-database-primary"]
    ifnames = [topo.host_ifname(n) for n in names]
    assert ifnames[:3] == ["lxcweb-1", "lxcclient", "lxc" + "a" * 12]
    assert all(len(i) <= 15 for i in ifnames)
    assert len(set(ifnames)) == len(ifnames)
    assert ifnames == [topo.host_ifname(n) for n in names]  # deterministic
    assert topo.pod_mac("10.244.0.11") == "0a:58:0a:f4:00:0b"
    assert topo.host_mac("10.244.0.11") == "ee:ee:0a:f4:00:0b"
