"""`ebpflb cleanup --pin-dir X` removes only the programs of the data plane pinned in X.

Two data planes are loaded (the session's, and one of this test with its own pin directory), and
each is attached to a device of its own in a namespace the test creates. Cleaning up the second
removes its filters and pins; the first's filters stay on their device and its pins stay. Before
the fix, cleanup removed every ebpflb filter in the namespace. The namespace and the second
data plane are removed at the end, also on failure.
"""
import os
import shutil
import socket
import subprocess

import pytest
from pyroute2 import IPRoute

from ebpflb.dataplane.attach import Program, _our_filters, attach
from ebpflb.dataplane.cleanup import remove_dataplane
from ebpflb.dataplane.config import DataplaneConfig
from ebpflb.dataplane.loader import load_programs
from ebpflb.lab.nsops import create_netns, in_netns, remove_netns

from ..conftest import unique

pytestmark = pytest.mark.bpf


def _programs(progs):
    return (Program(progs.from_pod.fd, progs.from_pod.name.decode()),
            Program(progs.to_pod.fd, progs.to_pod.name.decode()))


def test_cleanup_removes_only_the_programs_of_its_pin_dir(dataplane):
    ns = unique("ebpflb-ns-own-")
    other = DataplaneConfig(pin_dir=f"/sys/fs/bpf/{unique('ebpflb-test-own-')}")
    create_netns(ns)
    try:
        second = load_programs(other)
        subprocess.run(["ip", "-n", ns, "-batch", "-"], check=True, text=True, capture_output=True,
                       input="link add a0 type veth peer name a1\nlink add b0 type veth peer name b1\n")
        with in_netns(ns):
            ipr = IPRoute()
            try:
                a, b = socket.if_nametoindex("a0"), socket.if_nametoindex("b0")
                attach(ipr, a, *_programs(dataplane.progs))
                attach(ipr, b, *_programs(second))
                removed = remove_dataplane(other, ipr)
                assert "programs on b0" in removed and "programs on a0" not in removed
                assert len(_our_filters(ipr, a)[0]) == 2, "the other data plane's filters went"
                assert _our_filters(ipr, b)[0] == []
            finally:
                ipr.close()
        assert not os.path.exists(other.pin_dir)
        assert os.path.exists(os.path.join(dataplane.config.pin_dir, "lb4_services"))
    finally:
        remove_netns(ns)
        shutil.rmtree(other.pin_dir, ignore_errors=True)
