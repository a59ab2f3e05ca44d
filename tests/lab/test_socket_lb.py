"""Connect-time load balancing in a two-node lab: the real agents with --socket-lb, their cgroup
hooks attached to each lab node's own cgroup (never the machine's root), clients that are real
processes in that cgroup: host-network ones (the node's namespace, like a node agent or a
host-network pod) and pod ones. The packet path stays for traffic from outside the cluster, and
for everything when socket load balancing is off."""
import json
import subprocess
import sys
import time
from typing import Dict, Iterator, List

import pytest

from ebpflb.dataplane.cleanup import strict_owner
from ebpflb.dataplane.config import DataplaneConfig
from ebpflb.dataplane.loader import SOCK_HOOKS
from ebpflb.dataplane.sock_attach import hooks_attached
from ebpflb.lab import lab as lablib
from ebpflb.lab import topology as topo
from ebpflb.lab.nsops import in_cgroup

from .agent_harness import RunningAgent, ebpflb, force_cleanup, wait_until
from .test_northsouth import BOTH, NODE0_EPS, Svc, manifest_text, node_name

WEB = Svc("web", "10.96.5.10", node_port=30580, endpoints=BOTH)
STICKY_VIP = "10.96.5.11"
EMPTY = Svc("empty", "10.96.5.12", node_port=30582, endpoints=[])
ECHO = Svc("echo", "10.96.5.13", protocol="UDP", port=53, target=topo.UDP_ECHO_PORT,
           node_port=30583, endpoints=BOTH)
PODS = {"web-1", "web-2", "n1-web-1", "n1-web-2"}


def sticky_manifest() -> str:
    """demo/sticky: Maglev and ClientIP affinity, the node-0 pods."""
    svc = Svc("sticky", STICKY_VIP, endpoints=NODE0_EPS, type="ClusterIP")
    docs = [json.loads(line) for line in manifest_text(svc).split("---\n") if line.strip()]
    docs[0]["metadata"]["annotations"] = {"lb.ebpflb.io/algorithm": "maglev"}
    docs[0]["spec"]["sessionAffinity"] = "ClientIP"
    return "".join(json.dumps(d) + "\n---\n" for d in docs)


MANIFEST = manifest_text(WEB, EMPTY, ECHO) + "---\n" + sticky_manifest()


def start_agent(lab_name: str, workdir, k: int, mode: str) -> RunningAgent:
    agent = RunningAgent(lab_name, workdir, [], node=k, extra_args=[
        "--node-name", node_name(k), "--node-device", topo.NODE_UNDERLAY_IFNAME,
        "--node-mode", "tc", "--nodeport-addresses", topo.UNDERLAY_CIDR,
        "--metrics-address", "", "--socket-lb", mode])
    agent.write_manifest(text=MANIFEST)
    wait_until(lambda: any(s["frontend"] == f"{STICKY_VIP}:80/TCP" for s in agent.services()),
               15, f"node {k}'s agent to program the Services")
    return agent


@pytest.fixture(scope="module")
def env(lab_names, tmp_path_factory) -> Iterator[Dict]:
    name = lab_names.new()
    agents: List[RunningAgent] = []
    try:
        lab = lablib.lab_up(name, nodes=2)
        workdir = tmp_path_factory.mktemp("socklb")
        agents = [start_agent(name, workdir, k, "all") for k in range(2)]
        yield {"lab": lab, "agents": agents, "workdir": workdir}
    finally:
        try:
            for agent in agents:
                agent.stop()
            force_cleanup(name)
        finally:
            lablib.lab_down(name)


def client(lab_name: str, where: str, *ops: dict) -> list:
    """Runs sockclient operations as a process of `where`: "node" / "node1" (host network) or
    a pod, in that node's cgroup."""
    r = lablib.run_in_pod(lab_name, where, [sys.executable, "-m", "ebpflb.lab.sockclient",
                                            json.dumps(list(ops))], timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def http(lab_name: str, where: str, addr: str, port: int = 80, n: int = 1) -> list:
    return client(lab_name, where, *[{"op": "http", "addr": addr, "port": port}] * n)


def counters(agent: RunningAgent) -> Dict[str, int]:
    """The socket hooks' verdict counters (connect()s and sends balanced: new)."""
    out = json.loads(ebpflb("stats", "--verdicts", "-o", "json", "--pin-dir", agent.pin_dir).stdout)
    return out["verdicts"]["socket"]


def flows(agent: RunningAgent) -> int:
    return len(json.loads(ebpflb("ct", "list", "-o", "json", "--pin-dir", agent.pin_dir).stdout))


def test_host_network_client_reaches_a_cluster_ip_and_node_ports(env):
    lab = env["lab"].name
    agent = env["agents"][0]
    before = counters(agent)["new"]
    results = http(lab, "node", WEB.cluster_ip, n=40)
    assert all(r["errno"] is None for r in results), results
    assert {r["body"] for r in results} == PODS  # pods on both nodes
    assert {r["peer"] for r in results} == {f"{WEB.cluster_ip}:80"}
    # Its own node's NodePort, and the other node's (served there, by the packet path).
    for node_ip in (topo.node_address(0), topo.node_address(1)):
        seen = {r["body"] for r in http(lab, "node", node_ip, WEB.node_port, n=20)}
        assert seen and seen <= PODS, node_ip
    assert counters(agent)["new"] - before == 60
    # Host-network on the other node too, through its own agent's hooks.
    assert {r["body"] for r in http(lab, "node1", WEB.cluster_ip, n=30)} == PODS


def test_pod_client_is_balanced_at_connect_and_leaves_no_flow_state(env):
    lab = env["lab"].name
    agent = env["agents"][0]
    before = flows(agent)
    assert {r["body"] for r in http(lab, "client", WEB.cluster_ip, n=40)} == PODS
    assert flows(agent) == before  # nothing went through the TC programs' conntrack
    # Maglev with ClientIP affinity: one backend for this client, another pod may differ.
    assert len({r["body"] for r in http(lab, "client", STICKY_VIP, n=15)}) == 1


def test_udp_through_the_hooks_replies_from_the_frontend(env):
    lab = env["lab"].name
    for where in ("client", "node"):
        plain, connected = client(lab, where,
                                  {"op": "udp", "addr": ECHO.cluster_ip, "port": 53},
                                  {"op": "udp", "addr": ECHO.cluster_ip, "port": 53,
                                   "connect": True})
        for r in (plain, connected):
            assert r["errno"] is None, (where, r)
            assert r["source"] == f"{ECHO.cluster_ip}:53"
            assert r["reply"].split()[0] in PODS
        assert connected["peer"] == f"{ECHO.cluster_ip}:53"


def test_no_endpoints_is_refused_at_once(env):
    lab = env["lab"].name
    for where in ("client", "node"):
        tcp, node_port = client(
            lab, where, {"op": "http", "addr": EMPTY.cluster_ip, "port": 80},
            {"op": "http", "addr": topo.node_address(0), "port": EMPTY.node_port})
        assert tcp["errno"] == "ECONNREFUSED"
        assert node_port["errno"] == "ECONNREFUSED"


def test_traffic_from_outside_still_takes_the_packet_path(env):
    lab = env["lab"]
    r = lablib.run_in_ext(lab.name, ["curl", "-sS", "--max-time", "3",
                                     f"http://{topo.node_address(0)}:{WEB.node_port}/"])
    assert r.returncode == 0 and r.stdout.strip() in PODS, r.stderr


def test_host_only_and_off(env):
    """host-only: pods go back to the packet path (conntrack entries appear), the node's own
    processes stay balanced at connect(); off: pods get the same answers through the packet
    path, and host processes are not balanced (kube-proxy's iptables mode would; this is the
    escape hatch)."""
    lab = env["lab"].name
    agents = env["agents"]
    cgroup = env["lab"].cgroup(0)
    owns = strict_owner(DataplaneConfig(pin_dir=agents[0].pin_dir))
    assert set(hooks_attached(cgroup, owns)) == set(SOCK_HOOKS)
    agents[0].stop()  # --on-exit remove: its hooks go with its pins
    assert hooks_attached(cgroup, lambda _id: True) == {}
    try:
        for mode in ("host-only", "off"):
            agents[0] = start_agent(lab, env["workdir"], 0, mode)
            before = flows(agents[0])
            assert {r["body"] for r in http(lab, "client", WEB.cluster_ip, n=40)} == PODS
            assert flows(agents[0]) > before
            host = http(lab, "node", WEB.cluster_ip)[0]
            if mode == "host-only":
                assert host["body"] in PODS and host["peer"] == f"{WEB.cluster_ip}:80"
            else:
                assert host["errno"] is not None  # nothing translates the node's own socket
            agents[0].stop()
    finally:
        agents[0].stop()  # a failed check leaves the mode's agent running
        agents[0] = start_agent(lab, env["workdir"], 0, "all")


def test_a_dns_client_with_a_connected_socket_moves_off_a_removed_backend(env):
    """One connected UDP socket asking every 50 ms; its backend leaves the Service (the pod
    still answers, as one being replaced would). The agent closes the socket; the client's
    next socket gets a live backend, within one second of the manifest change."""
    from ebpflb.dataplane.bcc_maps import be32_to_ip
    from ebpflb.dataplane.loader import open_maps

    agent = env["agents"][0]
    table = open_maps(DataplaneConfig(pin_dir=agent.pin_dir))[b"lb4_sock_nat"]
    table.clear()
    loop = {"op": "udp-loop", "addr": ECHO.cluster_ip, "port": 53, "count": 60,
            "interval": 0.05, "reconnect": True}
    client = subprocess.Popen(in_cgroup(env["lab"].cgroup(0), [
        "ip", "netns", "exec", env["lab"].pod_ns("client"), sys.executable, "-m",
        "ebpflb.lab.sockclient", json.dumps([loop])]), stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(k.proto == 17 for k in table.keys()), 10, "the client's socket")
        (pinned,) = {be32_to_ip(k.addr) for k in table.keys() if k.proto == 17}
        time.sleep(0.5)
        changed = time.time()
        rest = [e for e in BOTH if e[1] != pinned]
        echo = Svc(ECHO.name, ECHO.cluster_ip, protocol="UDP", port=53,
                   target=topo.UDP_ECHO_PORT, node_port=ECHO.node_port, endpoints=rest)
        agent.write_manifest(text=manifest_text(WEB, EMPTY, echo) + "---\n" + sticky_manifest())
        (result,) = json.loads(client.communicate(timeout=30)[0])
    finally:
        if client.poll() is None:
            client.kill()
        agent.write_manifest(text=MANIFEST)
    pods = {ip: pod for pod, ip, _, _ in BOTH}
    live = {pods[ip] for _, ip, _, _ in rest}
    answers = [(result["started"] + t, a) for t, a in result["answers"]]
    moved = [at for at, a in answers if a and a.split()[0] in live]
    assert moved, answers
    assert moved[0] - changed < 1.0, f"first answer from a live backend {moved[0] - changed:.2f}s after the change"
    assert all(a.split()[0] in live for at, a in answers if at > moved[0] and a and
               not a.startswith("E"))
