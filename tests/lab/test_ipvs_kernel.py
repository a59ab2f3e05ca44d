"""ebpflb/takeover/ipvs.py against the real kernel, in a network namespace of its own.

This machine's kernel has no IPVS (CONFIG_IP_VS is off: `modprobe ip_vs` fails), so the IPVS
side can only be checked for its answer there: no "IPVS" generic netlink family reads as no
virtual services, and removing services that cannot exist is a no-op. What the kernel does have
is checked for real: kube-ipvs0 and its addresses through rtnetlink, and kube-proxy's ipsets
(ip_set is built in) with their members, read, then removed with the order the module documents
(a set an iptables rule still matches on is refused until the rule goes).

kube-proxy's kube-ipvs0 is a dummy device. This kernel has no dummy driver either
(CONFIG_DUMMY is off), so the stand-in is a port-less bridge when `dummy` is refused: the module
reads and deletes the device by name and never looks at its kind.

Each namespace is the node namespace of a fresh lab name, removed by the test's finalizer (and
swept by the session if that ever failed); nothing runs in the host's own namespace."""
from __future__ import annotations

import errno
import socket
import subprocess
from typing import List

import pytest
from pyroute2 import IPRoute
from pyroute2.ipset import IPSet, PortEntry
from pyroute2.netlink.exceptions import NetlinkError

from ebpflb.lab import nsops
from ebpflb.lab.nsops import in_netns
from ebpflb.takeover.ipvs import (KUBE_IPVS_DEVICE, IpsetEntry, IpvsDest, IpvsError,
                                  IpvsService, ipvs_removals, kube_ipvs_addresses,
                                  read_removals, read_services, remove_ipvs)

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
ADDRS_V4 = ["10.96.0.1", "10.96.0.10"]
ADDRS_V6 = ["fd00:10:96::1"]
FOREIGN_SET = "cali40all-ipam-pools"  # a CNI's set: must survive


def make_kube_ipvs0(ns: str) -> str:
    """kube-ipvs0 with kube-proxy's kind of addresses (/32, /128); returns the kind used."""
    with in_netns(ns):
        ipr = IPRoute()
    with ipr:
        try:
            ipr.link("add", ifname=KUBE_IPVS_DEVICE, kind="dummy")
            kind = "dummy"
        except NetlinkError as exc:
            if exc.code != errno.EOPNOTSUPP:
                raise
            ipr.link("add", ifname=KUBE_IPVS_DEVICE, kind="bridge")
            kind = "bridge"
        index = ipr.link_lookup(ifname=KUBE_IPVS_DEVICE)[0]
        for addr in ADDRS_V4:
            ipr.addr("add", index=index, address=addr, prefixlen=32)
        for addr in ADDRS_V6:
            ipr.addr("add", index=index, address=addr, prefixlen=128, flags=0x80)  # nodad
    return kind


def make_kube_ipsets(ns: str) -> None:
    """A few of kube-proxy's sets of both families, with members, and a CNI's set."""
    with in_netns(ns):
        ips = IPSet()
    with ips:
        ips.create("KUBE-CLUSTER-IP", stype="hash:ip,port")
        ips.add("KUBE-CLUSTER-IP", ("10.96.0.1", PortEntry(443, TCP)), etype="ip,port")
        ips.add("KUBE-CLUSTER-IP", ("10.96.0.10", PortEntry(53, UDP)), etype="ip,port")
        ips.create("KUBE-NODE-PORT-TCP", stype="bitmap:port", bitmap_ports_range=(0, 65535))
        ips.add("KUBE-NODE-PORT-TCP", 30080, etype="port")
        ips.create("KUBE-LOOP-BACK", stype="hash:ip,port,ip")
        ips.add("KUBE-LOOP-BACK", ("10.244.0.2", PortEntry(8080, TCP), "10.244.0.2"),
                etype="ip,port,ip")
        ips.create("KUBE-6-CLUSTER-IP", stype="hash:ip,port", family=socket.AF_INET6)
        ips.add("KUBE-6-CLUSTER-IP", ("fd00:10:96::1", PortEntry(443, TCP)), etype="ip,port",
                family=socket.AF_INET6)
        ips.create(FOREIGN_SET, stype="hash:net")


def set_names(ns: str) -> List[str]:
    with in_netns(ns):
        ips = IPSet()
    with ips:
        return sorted(m.get_attr("IPSET_ATTR_SETNAME") for m in ips.list())


def device_exists(ns: str) -> bool:
    with nsops.netns_ipr(ns) as ipr:
        return bool(ipr.link_lookup(ifname=KUBE_IPVS_DEVICE))


def run(ns: str, *argv: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"


# Services as read_services would report them on a node with IPVS: this kernel cannot hold
# them, so they only feed ipvs_removals (and show that remove_ipvs skips them here).
CLUSTER = IpvsService(4, TCP, "10.96.0.1", 443, 0, "rr", (IpvsDest("10.244.0.2", 6443, 1,
                                                                   "masq"),))
NODEPORT = IpvsService(4, TCP, "192.168.50.10", 30080, 0, "rr")
CLUSTER6 = IpvsService(6, TCP, "fd00:10:96::1", 443, 0, "rr")
KEEPALIVED = IpvsService(4, 0, None, 0, 256, "wlc")


def test_no_ipvs_family_reads_as_no_services(netns):
    with in_netns(netns):
        assert read_services() == []


def test_nothing_of_kube_proxys_in_a_fresh_namespace(netns):
    with in_netns(netns):
        state = kube_ipvs_addresses()
        removals = read_removals()
    assert (state.device, state.addresses, state.ipsets) == (None, (), ())
    assert removals == []


def test_reads_kube_ipvs0_and_kube_proxys_ipsets(netns):
    make_kube_ipvs0(netns)
    make_kube_ipsets(netns)
    with in_netns(netns):
        state = kube_ipvs_addresses()
    assert state.device == KUBE_IPVS_DEVICE
    assert sorted(state.addresses) == sorted(ADDRS_V4 + ADDRS_V6)  # no fe80:: among them
    sets = {s.name: s for s in state.ipsets}
    assert sorted(sets) == ["KUBE-6-CLUSTER-IP", "KUBE-CLUSTER-IP", "KUBE-LOOP-BACK",
                            "KUBE-NODE-PORT-TCP"]  # the CNI's set is not kube-proxy's
    assert sets["KUBE-CLUSTER-IP"].kind == "hash:ip,port"
    assert sorted(sets["KUBE-CLUSTER-IP"].entries, key=lambda e: e.port) == [
        IpsetEntry("10.96.0.10", 53, UDP), IpsetEntry("10.96.0.1", 443, TCP)]
    assert sets["KUBE-NODE-PORT-TCP"].entries == (IpsetEntry(None, 30080, 0),)
    assert sets["KUBE-6-CLUSTER-IP"].entries == (IpsetEntry("fd00:10:96::1", 443, TCP),)
    assert sets["KUBE-6-CLUSTER-IP"].family == 6


def test_remove_unbinds_each_family_then_deletes_device_and_sets(netns):
    make_kube_ipvs0(netns)
    make_kube_ipsets(netns)
    with in_netns(netns):
        state = kube_ipvs_addresses()
    r4, r6 = ipvs_removals([CLUSTER, NODEPORT, CLUSTER6, KEEPALIVED], state.addresses,
                           state.ipsets)
    assert r4.services == (CLUSTER, NODEPORT) and r4.others == 1
    assert r6.services == (CLUSTER6,)

    with in_netns(netns):
        remove_ipvs(r4)  # no IPVS here: the services are skipped, the rest is real
    # The IPv6 proxier's address keeps the shared device; the IPv4 state is gone.
    assert device_exists(netns)
    with in_netns(netns):
        after = kube_ipvs_addresses()
    assert after.addresses == tuple(ADDRS_V6)
    assert [s.name for s in after.ipsets] == ["KUBE-6-CLUSTER-IP"]

    with in_netns(netns):
        remove_ipvs(r6)
        assert read_removals() == []
    assert not device_exists(netns)
    assert set_names(netns) == [FOREIGN_SET]

    with in_netns(netns):
        remove_ipvs(r4)  # again: everything already gone is fine
        remove_ipvs(r6)


def test_a_set_an_iptables_rule_uses_is_refused_until_the_rule_goes(netns):
    make_kube_ipsets(netns)
    rule = ["-t", "nat", "-A", "OUTPUT", "-m", "set", "--match-set", "KUBE-CLUSTER-IP",
            "dst,dst", "-j", "ACCEPT"]
    run(netns, "iptables-legacy", *rule)
    with in_netns(netns):
        [r4, _] = read_removals()
        with pytest.raises(IpvsError, match="KUBE-CLUSTER-IP: still in use .*iptables rules "
                                            "must be removed first"):
            remove_ipvs(r4)
    run(netns, "iptables-legacy", *(["-D" if a == "-A" else a for a in rule]))
    with in_netns(netns):
        remove_ipvs(r4)
    assert set_names(netns) == ["KUBE-6-CLUSTER-IP", FOREIGN_SET]
