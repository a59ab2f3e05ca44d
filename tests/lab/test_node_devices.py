"""The node-device attachment itself, on a two-node lab with the real agent: the XDP flavour the
agent reports is the one the kernel runs, generic XDP serves remote backends too (XDP_TX through
the generic path), switching an agent from XDP to TC mode takes the XDP program off, and neither
`--on-exit remove` nor `ebpflb cleanup` leaves an XDP program behind. Another XDP program on the
device (not ours) is never removed.

Tier: lab (root, real namespaces and traffic)."""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from ebpflb.lab import lab as lablib
from ebpflb.lab.conformance import NODE_ADDRS, node1_pods, np_service, pods

from .agent_harness import RunningAgent, ebpflb, force_cleanup, wait_until

pytestmark = pytest.mark.lab


@pytest.fixture
def lab2(lab_names) -> Iterator[str]:
    name = lab_names.new()
    lablib.lab_up(name, nodes=2)
    try:
        yield name
    finally:
        force_cleanup(name)  # pins of agents that ran with --on-exit keep
        lablib.lab_down(name)


def xdp_of(netns: str, dev: str = "eth0") -> Tuple[str, str]:
    """(XDP mode, program name) on a device as `ip` reports them, ("", "") when none."""
    out = subprocess.run(["ip", "-n", netns, "-j", "-d", "link", "show", dev], check=True,
                         capture_output=True, text=True).stdout
    xdp = json.loads(out)[0].get("xdp") or {}
    mode = {1: "native", 2: "generic"}.get(xdp.get("mode"), "")
    return mode, (xdp.get("prog") or {}).get("name", "")


def agents(name: str, work: Path, *args: str):
    text = np_service("web", "10.96.1.1", 30080, pods(1) + node1_pods(1))
    out = []
    for k in (0, 1):
        a = RunningAgent(name, work, [], node=k, extra_args=[
            "--node-name", f"node-{k}", "--metrics-address", "", "--health-address", "",
            "--node-device", "eth0", *args])
        a.write_manifest(text=text)
        out.append(a)
    wait_until(lambda: all(f"{NODE_ADDRS[k]}:30080/TCP" in {s["frontend"] for s in a.services()}
                           for k, a in enumerate(out)), 15, "the NodePorts")
    return out


def served(name: str) -> set:
    seen = set()
    for _ in range(16):
        r = lablib.run_in_ext(name, ["curl", "-sS", "--max-time", "3",
                                     f"http://{NODE_ADDRS[0]}:30080/"], timeout=15)
        assert r.returncode == 0, r.stderr
        seen.add(r.stdout.strip())
    return seen


def test_generic_xdp_serves_local_and_remote_backends(lab2):
    with tempfile.TemporaryDirectory() as work:
        running = agents(lab2, Path(work), "--node-mode", "xdp", "--xdp-mode", "generic")
        try:
            assert xdp_of(f"{lab2}-node") == ("generic", "lb4_xdp_generic")
            status = json.loads(ebpflb("service", "list", "--all", "-o", "json", "--pin-dir",
                                       running[0].pin_dir).stdout)
            assert status["node_devices"] == [{"device": "eth0", "address": NODE_ADDRS[0],
                                               "hook": "xdp-generic+tc"}]
            assert served(lab2) == {"web-1", "n1-web-1"}
            from ebpflb.dataplane.bcc_maps import read_counters
            from ebpflb.dataplane.config import DataplaneConfig
            from ebpflb.dataplane.loader import open_maps

            counters = read_counters(open_maps(DataplaneConfig(pin_dir=running[0].pin_dir)))
            assert counters["xdp_forward"] > 0, counters
            assert counters["node_xdp/to_tc"] > 0, counters  # local flows, left to TC
        finally:
            for a in running:
                a.stop()
        assert xdp_of(f"{lab2}-node") == ("", ""), "--on-exit remove left the XDP program"


def test_switching_to_tc_mode_takes_xdp_off_and_cleanup_removes_it(lab2):
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as work:
        running = agents(lab2, Path(first), "--node-mode", "xdp", "--on-exit", "keep")
        for a in running:
            a.stop()
        assert xdp_of(f"{lab2}-node") == ("native", "lb4_node_xdp"), "kept data plane lost XDP"
        # A new workdir: the agents' ready files must be their own (written once attached).
        running = agents(lab2, Path(work), "--node-mode", "tc", "--on-exit", "keep")
        try:
            assert xdp_of(f"{lab2}-node") == ("", ""), "TC mode left the XDP program attached"
            assert served(lab2) == {"web-1", "n1-web-1"}
        finally:
            for a in running:
                a.stop()
        for k, ns in enumerate((f"{lab2}-node", f"{lab2}-node1")):
            ebpflb("cleanup", "--yes", "--netns", ns, "--pin-dir", running[k].pin_dir)
            assert xdp_of(ns) == ("", "")


def test_another_xdp_program_is_left_alone(lab2):
    from ebpflb.lab.xdp_pass import load_xdp_pass
    from ebpflb.lab.nsops import netns_ipr

    ns = f"{lab2}-node"
    fd = load_xdp_pass()
    try:
        with netns_ipr(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], xdp_fd=fd)
    finally:
        import os
        os.close(fd)
    ebpflb("cleanup", "--yes", "--netns", ns, "--pin-dir", f"/sys/fs/bpf/ebpflb-lab-{lab2}")
    assert xdp_of(ns) == ("native", "lab_xdp_pass"), "cleanup removed someone else's XDP program"


def test_agent_sigkill_and_restart_under_traffic_from_outside(lab2, tmp_path):
    """New connections (40/s) and long-lived ones from the external client to node 0's NodePort,
    whose backends are on node 1 (so every flow is SNATed and sent on by XDP), while node 0's
    agent is SIGKILLed and restarted: no connection or request fails, since the XDP and TC
    programs stay attached and the pinned maps (conntrack with the SNAT ports, lb4_node_ifs) stay
    in place; the new agent adopts them with no map write."""
    import time

    from ebpflb.lab.agent_runner import AgentProcess

    from .load import KeptConnections, NewConnections

    text = np_service("web", "10.96.1.1", 30080, node1_pods(1, 2))
    common = ["--metrics-address", "", "--health-address", "", "--node-device", "eth0",
              "--node-mode", "xdp", "--ct-gc-interval", "0.5"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    agents = []
    for k in (0, 1):
        a = RunningAgent(lab2, tmp_path / "a", [], node=k, on_exit="keep" if k == 0 else "remove",
                         extra_args=["--node-name", f"node-{k}", *common])
        a.write_manifest(text=text)
        agents.append(a)
    wait_until(lambda: agents[0].backends(f"{NODE_ADDRS[0]}:30080/TCP") == ["10.244.1.11",
                                                                           "10.244.1.12"],
               15, "the NodePort")
    # The harness's first manifest's frontends drained (no flows): released before the test.
    wait_until(lambda: not any(s["draining"] for s in agents[0].services(draining=True)), 15,
               "the first manifest's frontends to be released")
    ext = f"{lab2}-ext"
    kept = KeptConnections(ext, NODE_ADDRS[0], 30080, count=4, interval=0.25, seconds=12)
    load = NewConnections(ext, NODE_ADDRS[0], 30080, rate=40, seconds=12)
    second = None
    try:
        kept.start()
        load.start()
        time.sleep(4)
        agents[0].proc.kill()  # SIGKILL: no cleanup of any kind
        agents[0].proc.wait()
        assert xdp_of(f"{lab2}-node") == ("native", "lb4_node_xdp")
        ready = tmp_path / "b" / "ready"
        second = AgentProcess(lab2, tmp_path / "b", ["--manifests", str(agents[0].manifest_path)],
                              on_exit="remove", node=0,
                              extra_args=["--node-name", "node-0", "--ready-file", str(ready),
                                          *common])
        wait_until(ready.exists, 60, "the new agent")
        load.join(timeout=40)
        kept.join(timeout=40)
        assert not load.is_alive() and not kept.is_alive()
        assert len(load.result.outcomes) >= 300
        assert load.result.failures == [], load.result.failures[:3]
        assert kept.result.failures == [] and len(kept.result.outcomes) >= 100
        assert set(load.result.pods) == {"n1-web-1", "n1-web-2"}
        assert "0 map writes" in second.log(), second.log()
    finally:
        if kept is not None:
            kept.close()
        for a in agents:
            a.stop()
        if second:
            second.stop()


def test_switching_external_traffic_policy_keeps_established_flows(lab2, tmp_path):
    """Keep-alive connections from outside to node 0's NodePort, opened under
    externalTrafficPolicy Local (served by node 0's pod, client address kept), go on working after
    the Service switches to Cluster and back: a policy change is not a frontend going away."""
    import time

    from .load import KeptConnections

    local = np_service("web", "10.96.1.1", 30080, pods(1) + node1_pods(1),
                       "  externalTrafficPolicy: Local\n")
    cluster = np_service("web", "10.96.1.1", 30080, pods(1) + node1_pods(1))
    agents = []
    for k in (0, 1):
        a = RunningAgent(lab2, tmp_path, [], node=k, extra_args=[
            "--node-name", f"node-{k}", "--metrics-address", "", "--health-address", "",
            "--node-device", "eth0", "--node-mode", "xdp"])
        a.write_manifest(text=local)
        agents.append(a)
    external = f"{NODE_ADDRS[0]}:30080/TCP@external"

    def programmed(present: bool):
        # (A record that goes while flows use it drains: listed, but not in service.)
        return lambda: (external in {s["frontend"] for s in agents[0].services()}) == present

    kept = None
    try:
        wait_until(programmed(True), 15, "the Local record")
        kept = KeptConnections(f"{lab2}-ext", NODE_ADDRS[0], 30080, count=4, interval=0.2,
                               seconds=6)
        kept.start()
        time.sleep(1.5)
        for a in agents:
            a.write_manifest(text=cluster)
        wait_until(programmed(False), 15, "the switch to Cluster")
        time.sleep(1.5)
        for a in agents:
            a.write_manifest(text=local)
        wait_until(programmed(True), 15, "the switch back to Local")
        kept.join(timeout=30)
        assert not kept.is_alive()
        assert kept.result.failures == [], kept.result.failures[:3]
        assert set(kept.result.pods) == {"web-1"} and len(kept.result.outcomes) >= 80
    finally:
        if kept is not None:
            kept.close()
        for a in agents:
            a.stop()
