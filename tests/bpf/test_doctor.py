"""`ebpflb doctor` on this machine, for real: every check passes when run in a node-like network
namespace (one the test creates with ip_forward on, as a node has; the machine's own namespace
is not a Kubernetes node), its probe namespace and pins are gone afterwards, and a missing
feature (bcc hidden from the command by a module that fails to import) fails with what to do."""
import json
import os
import subprocess
import sys

import pytest

from ebpflb.lab.nsops import create_netns, list_netns, remove_netns, write_sysctls

from ..conftest import unique

pytestmark = pytest.mark.bpf


@pytest.fixture
def node_ns(require_root):
    ns = unique("ebpflb-docnode-")
    create_netns(ns)
    try:
        write_sysctls(ns, {"net.ipv4.ip_forward": "1"})
        yield ns
    finally:
        remove_netns(ns)


def doctor(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ebpflb.cli", "doctor", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def leftovers():
    return ([n for n in list_netns() if n.startswith("ebpflb-doctor-")],
            [p for p in os.listdir("/sys/fs/bpf") if p.startswith("ebpflb-doctor-")])


def test_doctor_passes_on_this_machine(node_ns):
    r = doctor("-o", "json", "--netns", node_ns)
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert r.returncode == 0, r.stdout + r.stderr
    assert {"kernel", "bcc compile", "tc clsact", "xdp native", "xdp generic", "cgroup v2",
            "ip_forward", "kube-proxy"} <= set(checks)
    probes = ("bcc compile", "tc clsact", "xdp native", "xdp generic", "ip_forward")
    assert all(checks[name]["status"] == "ok" for name in probes), checks
    assert leftovers() == ([], [])


def test_doctor_says_what_to_do_when_bcc_is_missing(node_ns, tmp_path):
    fake = tmp_path / "bcc"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("faked for the test: no bcc")\n')
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = doctor("--netns", node_ns, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.split()[1:3] == ["bcc", "compile"])
    assert lines[failed].startswith("FAIL") and "faked for the test: no bcc" in lines[failed]
    assert "linux-headers" in lines[failed + 1]
    assert any(line.startswith("FAIL") and "tc clsact" in line and "not tried" in line
               for line in lines)
    assert leftovers() == ([], [])
