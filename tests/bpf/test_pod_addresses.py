"""The agent's side of source validation: lb4_pod_addrs follows the host routes of each attached
pod device (added, changed, removed with the route or the device), on real devices and routes in
a namespace the test creates and removes, written into the session's real map. What the programs
do with the entries is tested in test_hardening.py."""
import socket
import subprocess

import pytest
from pyroute2 import IPRoute

from ebpflb.dataplane.attach import Attacher, PodAddresses, Program, detach
from ebpflb.dataplane.bcc_maps import BccMapWriter, be32_to_ip
from ebpflb.lab.nsops import create_netns, in_netns, remove_netns

from ..conftest import unique

pytestmark = pytest.mark.bpf
# Packets reach the programs over real devices too: only the drop check of conftest's
# one_verdict_per_run applies.
REAL_TRAFFIC = True


def entries(table, ifindex):
    return sorted(be32_to_ip(k.addr) for k in table.keys() if k.ifindex == ifindex)


def test_pod_addresses_follow_the_host_routes(dataplane):
    ns = unique("ebpflb-ns-pa-")
    table = dataplane.progs.bpf[b"lb4_pod_addrs"]
    table.clear()
    create_netns(ns)
    try:
        subprocess.run(["ip", "-n", ns, "-batch", "-"], check=True, text=True, capture_output=True,
                       input="link add lxc1 type veth peer name p1\nlink set lxc1 up\n"
                             "link set p1 up\nlink add lxc2 type veth peer name p2\n"
                             "link set lxc2 up\nlink set p2 up\n"
                             "route add 10.244.0.21/32 dev lxc1\n")
        progs = dataplane.progs
        with in_netns(ns):
            ipr = IPRoute()
            try:
                one, two = socket.if_nametoindex("lxc1"), socket.if_nametoindex("lxc2")
                # A previous agent's entries: a device gone while no agent ran, and a stale
                # address of a device still here.
                for ifindex, addr in ((99999, "0.0.0.0"), (99999, "10.244.0.99"),
                                      (one, "0.0.0.0"), (one, "10.244.0.98")):
                    table[table.Key(ifindex=ifindex, addr=int.from_bytes(
                        socket.inet_aton(addr), "little"))] = table.Leaf(1)
                attacher = Attacher(ipr, ["lxc*"],
                                    Program(progs.from_pod.fd, progs.from_pod.name.decode()),
                                    Program(progs.to_pod.fd, progs.to_pod.name.decode()),
                                    PodAddresses(ipr, BccMapWriter(progs.bpf)))
                attacher.rescan()
                assert entries(table, one) == ["0.0.0.0", "10.244.0.21"]
                assert entries(table, two) == []  # no host route: not checked
                assert entries(table, 99999) == []
                ipr.route("add", dst="10.244.0.22/32", oif=one)
                ipr.route("add", dst="10.244.0.23/32", oif=two)
                ipr.route("add", dst="10.244.9.0/24", oif=two)  # not a pod's host route
                attacher.routes_changed(one)
                attacher.routes_changed(two)
                assert entries(table, one) == ["0.0.0.0", "10.244.0.21", "10.244.0.22"]
                assert entries(table, two) == ["0.0.0.0", "10.244.0.23"]
                subprocess.run(["ip", "route", "del", "10.244.0.21/32", "dev", "lxc1"], check=True)
                attacher.routes_changed(one)
                assert entries(table, one) == ["0.0.0.0", "10.244.0.22"]
                subprocess.run(["ip", "route", "del", "10.244.0.23/32", "dev", "lxc2"], check=True)
                attacher.routes_changed(two)
                assert entries(table, two) == []  # its last route went: no longer checked
                attacher.forget(one)
                assert entries(table, one) == []
                for ifindex in (one, two):
                    detach(ipr, ifindex)
            finally:
                ipr.close()
    finally:
        table.clear()
        remove_netns(ns)


def entries6(table, ifindex):
    return sorted(socket.inet_ntop(socket.AF_INET6, bytes(k.addr)) for k in table.keys()
                  if k.ifindex == ifindex)


def test_ipv6_host_routes_list_a_pods_ipv6_addresses_apart(dataplane):
    """A dual-stack pod's /128 host route lists its IPv6 address in lb6_pod_addrs with that
    family's marker (::); its /32 one in lb4_pod_addrs with 0.0.0.0; a family without a host
    route gets no marker (its sources are not checked); the entries follow the routes."""
    ns = unique("ebpflb-ns-pa6-")
    table4, table6 = dataplane.progs.bpf[b"lb4_pod_addrs"], dataplane.progs.bpf[b"lb6_pod_addrs"]
    table4.clear()
    table6.clear()
    create_netns(ns)
    try:
        subprocess.run(["ip", "-n", ns, "-batch", "-"], check=True, text=True, capture_output=True,
                       input="link add lxc1 type veth peer name p1\nlink set lxc1 up\n"
                             "link set p1 up\nlink add lxc2 type veth peer name p2\n"
                             "link set lxc2 up\nlink set p2 up\n"
                             "route add 10.244.0.21/32 dev lxc1\n"
                             "route add fd00:10:244::21/128 dev lxc1\n"
                             "route add fd00:10:244::22/128 dev lxc2\n")
        progs = dataplane.progs
        with in_netns(ns):
            ipr = IPRoute()
            try:
                one, two = socket.if_nametoindex("lxc1"), socket.if_nametoindex("lxc2")
                attacher = Attacher(ipr, ["lxc*"],
                                    Program(progs.from_pod.fd, progs.from_pod.name.decode()),
                                    Program(progs.to_pod.fd, progs.to_pod.name.decode()),
                                    PodAddresses(ipr, BccMapWriter(progs.bpf)))
                attacher.rescan()
                assert entries(table4, one) == ["0.0.0.0", "10.244.0.21"]
                assert entries6(table6, one) == ["::", "fd00:10:244::21"]
                assert entries(table4, two) == []  # IPv6 only: its IPv4 sources unchecked
                assert entries6(table6, two) == ["::", "fd00:10:244::22"]
                subprocess.run(["ip", "-6", "route", "del", "fd00:10:244::21/128", "dev", "lxc1"],
                               check=True)
                attacher.routes_changed(one)
                assert entries6(table6, one) == []
                assert entries(table4, one) == ["0.0.0.0", "10.244.0.21"]
                # A new agent finds what the last one wrote (both maps) and keeps it.
                again = PodAddresses(ipr, BccMapWriter(progs.bpf))
                assert again.held[two] == {k: 1 for k in attacher.pod_addrs.held[two]}
                attacher.forget(two)
                assert entries6(table6, two) == []
                for ifindex in (one, two):
                    detach(ipr, ifindex)
            finally:
                ipr.close()
    finally:
        table4.clear()
        table6.clear()
        remove_netns(ns)


def test_the_agents_monitor_hears_ipv6_host_routes_change():
    """LinkMonitor (what wakes the agent to resync a device's pod addresses) gets /128 route
    events too: without them a pod's new IPv6 address was refused as spoofed until the next
    periodic rescan."""
    import select

    from ebpflb.dataplane.attach import LinkMonitor

    ns = unique("ebpflb-ns-mon6-")
    create_netns(ns)
    try:
        subprocess.run(["ip", "-n", ns, "-batch", "-"], check=True, text=True, capture_output=True,
                       input="link add lxc1 type veth peer name p1\nlink set lxc1 up\n"
                             "link set p1 up\n")
        with in_netns(ns):
            monitor = LinkMonitor()
            try:
                ifindex = socket.if_nametoindex("lxc1")
                subprocess.run(["ip", "-6", "route", "add", "fd00:10:244::31/128", "dev", "lxc1"],
                               check=True)
                heard = []
                for _ in range(20):  # bounded: a few reads of what is pending
                    if not select.select([monitor], [], [], 0.5)[0]:
                        break
                    heard += monitor.events()
                    if ("RTM_NEWROUTE", ifindex, None) in heard:
                        break
                assert ("RTM_NEWROUTE", ifindex, None) in heard, heard
            finally:
                monitor.close()
    finally:
        remove_netns(ns)
