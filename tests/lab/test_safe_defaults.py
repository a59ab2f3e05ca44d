"""Safe defaults of the agent: it refuses to start, saying what is missing, without the
capabilities it needs; and it changes no sysctl of the node it serves (never route_localnet)."""
import os
import subprocess
import sys

import pytest

from ebpflb.lab import nsops

from .agent_harness import DEFAULT_ENDPOINTS, RunningAgent, force_cleanup

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "demo.yaml")


@pytest.mark.parametrize("drop,named", [("-bpf", "CAP_BPF"), ("-net_admin", "CAP_NET_ADMIN"),
                                        ("-sys_admin,-bpf", "CAP_SYS_ADMIN")])
def test_agent_refuses_without_capabilities(tmp_path, drop, named):
    pin_dir = f"/sys/fs/bpf/ebpflb-nocap-{os.getpid()}"
    r = subprocess.run(["setpriv", f"--bounding-set={drop}", "--inh-caps=-all", "--",
                        sys.executable, "-m", "ebpflb.cli", "agent", "--manifests", EXAMPLES,
                        "--pin-dir", pin_dir, "--metrics-address", "", "--health-address", "",
                        "--socket-lb", "off"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "the agent lacks capabilities it needs" in r.stderr and named in r.stderr
    assert not os.path.exists(pin_dir)  # refused before touching anything


def _sysctls(ns: str) -> dict:
    out = {}
    with nsops.in_netns(ns):
        for root, _, files in os.walk("/proc/sys/net/ipv4"):
            for name in files:
                path = os.path.join(root, name)
                try:
                    with open(path) as f:
                        out[path] = f.read()
                except OSError:
                    continue  # write-only or unreadable entries
    return out


def test_agent_changes_no_sysctl(lab, tmp_path):
    node = f"{lab.name}-node"
    before = _sysctls(node)
    agent = RunningAgent(lab.name, tmp_path, DEFAULT_ENDPOINTS)
    try:
        during = _sysctls(node)
    finally:
        agent.stop()
        force_cleanup(lab.name)
    changed = {k for k in before if during.get(k) != before[k] and "neigh" not in k}
    assert changed == set()
    assert all(v.strip() == "0" for k, v in during.items() if k.endswith("route_localnet"))
