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
            assert xdp_of(f"{lab2}-node") == ("generic", "lb4_node_xdp")
            status = json.loads(ebpflb("service", "list", "--all", "-o", "json", "--pin-dir",
                                       running[0].pin_dir).stdout)
            assert status["node_devices"] == [{"device": "eth0", "address": NODE_ADDRS[0],
                                               "hook": "xdp-generic+tc"}]
            assert served(lab2) == {"web-1", "n1-web-1"}
            from ebpflb.dataplane.bcc_maps import read_stats
            from ebpflb.dataplane.config import DataplaneConfig
            from ebpflb.dataplane.loader import open_maps

            counters = read_stats(open_maps(DataplaneConfig(pin_dir=running[0].pin_dir)))
            assert counters["xdp_forward"] > 0, counters
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
            ebpflb("cleanup", "--netns", ns, "--pin-dir", running[k].pin_dir)
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
    ebpflb("cleanup", "--netns", ns, "--pin-dir", f"/sys/fs/bpf/ebpflb-lab-{lab2}")
    assert xdp_of(ns) == ("native", "lab_xdp_pass"), "cleanup removed someone else's XDP program"
