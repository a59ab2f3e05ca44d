"""The lab: a Calico-style Kubernetes topology of one or more nodes built from network namespaces.

Where it sits: an edge of ebpflb, used by `ebpflb lab up/down/status` and the `lab` test tier.
It builds what ebpflb/lab/topology.py names, through ebpflb/lab/nsops.py (namespaces, sysctls,
processes) and pyroute2 (links, addresses, routes, neighbours); the load balancer's agent then
attaches to the node namespace and its pod-facing devices as it would on a real node. With
`nodes` >= 2 the nodes are joined by an underlay bridge (its own namespace), route each other's pod
CIDRs over it, and share it with an external client namespace (see topology.py for the plan).

One owner, one way out: every namespace a lab creates carries the lab's tag (the ifalias of its
`lo`), the state file /run/ebpflb/lab/<lab>.json lists pods and server pids, and lab_down finds
the lab's namespaces by name prefix, tag and state file, so it also works after a crash.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import topology as topo
from ..dataplane.sock_attach import cgroup2_root
from .nsops import (
    LabConfigError,
    LabError,
    LabExistsError,
    LabNotFoundError,
    create_netns,
    in_netns,
    kill_pids,
    list_netns,
    netns_exists,
    netns_ipr,
    netns_path,
    netns_pids,
    in_cgroup,
    pid_alive,
    remove_cgroup,
    remove_netns,
    run_cmd,
    write_sysctls,
)
from .topology import DEFAULT_LAB, PodSpec

__all__ = [
    "Lab", "lab_up", "lab_down", "lab_status", "get_lab", "add_pod", "del_pod", "run_in_pod",
    "run_on_node", "run_in_ext", "in_netns", "LabError", "LabConfigError", "LabExistsError", "LabNotFoundError",
]

log = logging.getLogger(__name__)

STATE_VERSION = 1
SERVER_START_TIMEOUT = 15.0
_SERVER_MODULE = "ebpflb.lab.podserver"
# Node sysctls. rp_filter strict on all/default (and per device below): the load balancer must
# work with it, so the lab must not hide a reverse-path bug behind a lax setting. IPv6 is off so
# captures only show the traffic a test sends (no router solicitations, no DAD).
_NODE_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
}
_POD_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
}
# The underlay and the external client forward nothing; IPv6 off for quiet captures.
_QUIET_SYSCTLS = _POD_SYSCTLS
# A lab with IPv6 (dual-stack or IPv6-only) turns it on, still quiet: no duplicate address
# detection (addresses usable at once), no router solicitations or advertisements (routes and
# neighbours are set by hand).
_IPV6_ON = {
    "net.ipv6.conf.all.disable_ipv6": "0",
    "net.ipv6.conf.default.disable_ipv6": "0",
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.all.router_solicitations": "0",
    "net.ipv6.conf.default.router_solicitations": "0",
    "net.ipv6.conf.all.accept_ra": "0",
    "net.ipv6.conf.default.accept_ra": "0",
    # Load balancer addresses sit inside the underlay's /64, routed to node 0: a redirect from
    # node 0 (the destination looks on-link) would send the client past it for good.
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.default.accept_redirects": "0",
}
# An IPv6-only lab takes these too: the IPv4 ones left in them act on no address.
_NODE_SYSCTLS_DUAL = {**_NODE_SYSCTLS, **_IPV6_ON, "net.ipv6.conf.all.forwarding": "1"}
_POD_SYSCTLS_DUAL = {**_POD_SYSCTLS, **_IPV6_ON}
RT_SCOPE_LINK = 253


@dataclass
class Lab:
    """A running lab as lab_up built it (a snapshot; get_lab re-reads the state file)."""

    name: str
    node_ns: str
    pods: Dict[str, PodSpec]
    pids: Dict[str, int] = field(default_factory=dict)  # pod name -> pod server pid
    state_file: str = ""
    log_dir: str = ""
    nodes: int = 1  # node namespaces: node_ns (node 0), then <lab>-node1...
    # topo.IP_FAMILIES: "dual" gives every pod and node IPv6 too, "ipv6" gives them IPv6 only
    ip_family: str = "ipv4"

    @property
    def dual(self) -> bool:
        return self.ip_family == "dual"

    @property
    def has_ipv4(self) -> bool:
        """Pods and the underlay have IPv4 addresses ("ipv4" and "dual" labs)."""
        return topo.has_ipv4(self.ip_family)

    @property
    def has_ipv6(self) -> bool:
        """Pods and the underlay have IPv6 addresses ("ipv6" and "dual" labs)."""
        return topo.has_ipv6(self.ip_family)

    def pod_ip6(self, pod: PodSpec) -> Optional[str]:
        """`pod`'s IPv6 address: its own in an IPv6-only lab, its IPv4 one's twin in a dual-stack
        one, None in an IPv4 one. Takes a PodSpec: a pod being built is not in `pods` yet."""
        if self.ip_family == "ipv6":
            return pod.ip
        return topo.pod_ip6(pod.ip) if self.dual else None

    def ip6(self, pod: str) -> Optional[str]:
        """A pod's IPv6 address (None in an IPv4 lab)."""
        return self.pod_ip6(self.pods[pod])

    def ip4(self, pod: str) -> Optional[str]:
        """A pod's IPv4 address (None in an IPv6-only lab)."""
        return self.pods[pod].ip if self.has_ipv4 else None

    def pod_ns(self, pod: str) -> str:
        return topo.pod_netns(self.name, pod)

    def node_netns(self, k: int = 0) -> str:
        return topo.node_netns(self.name, k)

    @property
    def node_namespaces(self) -> List[str]:
        return [self.node_netns(k) for k in range(self.nodes)]

    def cgroup(self, k: int = 0) -> Optional[str]:
        """Node k's cgroup (None where no cgroup v2 is mounted): its pods' and host-network
        processes run in it, and its agent's socket hooks attach to it."""
        root = cgroup2_root()
        return topo.node_cgroup(root, self.name, k) if root else None

    def pod_node_ns(self, pod: str) -> str:
        """The namespace of the node pod `pod` runs behind (where its host-side veth is)."""
        return self.node_netns(self.pods[pod].node)

    @property
    def ext_ns(self) -> Optional[str]:
        """The external client's namespace (multi-node labs only)."""
        return topo.ext_netns(self.name) if self.nodes > 1 else None

    @property
    def underlay_ns(self) -> Optional[str]:
        return topo.underlay_netns(self.name) if self.nodes > 1 else None

    def host_ifname(self, pod: str) -> str:
        return topo.host_ifname(pod)

    def ip(self, pod: str) -> str:
        """A pod's address of the lab's primary family: IPv4, except in an IPv6-only lab."""
        return self.pods[pod].ip

    def node_address(self, k: int = 0) -> str:
        """Node k's underlay address of the lab's primary family (multi-node labs)."""
        return topo.node_address_of(k, self.ip_family)

    @property
    def ext_address(self) -> Optional[str]:
        """The external client's address of the lab's primary family (multi-node labs only)."""
        return topo.ext_address_of(self.ip_family) if self.nodes > 1 else None

    @property
    def web_pods(self) -> List[PodSpec]:
        """The pods that run a server (every pod but the client)."""
        return [p for p in self.pods.values() if topo.runs_server(p)]

    def to_state(self) -> Dict[str, Any]:
        # Version 1 still: the multi-node fields are additions a reader may miss (then: 1 node).
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "node_ns": self.node_ns,
            "nodes": self.nodes,
            "ip_family": self.ip_family,
            "node_namespaces": self.node_namespaces,
            "underlay_ns": self.underlay_ns,
            "ext_ns": self.ext_ns,
            "log_dir": self.log_dir,
            "pods": [
                {"name": p.name, "ip": p.ip, "node": p.node, "netns": self.pod_ns(p.name),
                 "host_ifname": topo.host_ifname(p.name), "pid": self.pids.get(p.name)}
                for p in self.pods.values()
            ],
        }

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "Lab":
        name = state["name"]
        pods = {p["name"]: PodSpec(p["name"], p["ip"], int(p.get("node", 0))) for p in state.get("pods", [])}
        pids = {p["name"]: p["pid"] for p in state.get("pods", []) if p.get("pid")}
        return cls(name=name, node_ns=state.get("node_ns", topo.node_netns(name)), pods=pods,
                   pids=pids, state_file=topo.state_file(name), log_dir=topo.log_dir(name),
                   nodes=int(state.get("nodes", 1)),
                   ip_family=state.get("ip_family", "ipv4") if state.get("ip_family") in
                   topo.IP_FAMILIES else "ipv4")


T = TypeVar("T")


def _checked(check: Callable[..., T], *args: Any) -> T:
    """Run a topology validator; its ValueError becomes a LabConfigError (still a ValueError),
    so callers that catch LabError (the CLI) report bad input as cleanly as other failures."""
    try:
        return check(*args)
    except ValueError as exc:
        raise LabConfigError(str(exc)) from exc


# ------------------------------------------------------------------ state file

def _open_under_state_root(path: str, mode: str) -> IO[Any]:
    """Open a file below STATE_ROOT, creating its directory.

    Another lab's lab_down removes STATE_ROOT when it looks empty, which can happen between our
    makedirs and open; retry rather than fail a lab_up that raced with it.
    """
    for attempt in range(5):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            return open(path, mode)
        except FileNotFoundError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _save_state(lab: Lab) -> None:
    # Write-then-rename so a crash never leaves a half-written file for lab_down to choke on.
    tmp = f"{lab.state_file}.tmp"
    with _open_under_state_root(tmp, "w") as fh:
        json.dump(lab.to_state(), fh, indent=1)
    os.replace(tmp, lab.state_file)


def _load_state(name: str) -> Optional[Dict[str, Any]]:
    path = topo.state_file(name)
    try:
        with open(path) as fh:
            state = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("lab %s: ignoring unreadable state file %s: %s", name, path, exc)
        return None
    if not isinstance(state, dict) or state.get("name") != name:
        log.warning("lab %s: ignoring state file %s that describes another lab", name, path)
        return None
    return state


def get_lab(name: str = DEFAULT_LAB) -> Lab:
    """The lab as its state file describes it now (pods added or deleted since lab_up included)."""
    _checked(topo.validate_lab_name, name)
    state = _load_state(name)
    if state is None or not netns_exists(topo.node_netns(name)):
        raise LabNotFoundError(f"lab {name}: not running (no state file or no node namespace)")
    return Lab.from_state(state)


# ---------------------------------------------------------- finding a lab's parts

def _read_tag(ns: str) -> str:
    try:
        with netns_ipr(ns) as ipr:
            msgs = ipr.link("get", ifname="lo")
    except (LabError, NetlinkError, OSError) as exc:
        log.debug("netns %s: cannot read tag: %s", ns, exc)
        return ""
    return (msgs[0].get_attr("IFLA_IFALIAS") or "") if msgs else ""


def _lab_namespaces(name: str, state: Optional[Dict[str, Any]]) -> List[str]:
    """Existing namespaces of lab `name`: pods first, then the external client and the underlay,
    then nodes 1.., node 0 last.

    A namespace is the lab's if it carries the lab's tag; an untagged one (a crash between
    create and tag) only if the state file lists it or it is the lab's node namespace. A name
    prefix alone is not enough: lab "t1" must not take lab "t1-b"'s namespaces, nor anyone
    else's "t1-..." namespace.
    """
    prefix = topo.lab_netns_prefix(name)
    node = topo.node_netns(name)
    known = {node}
    if state:
        known |= {p.get("netns") or topo.pod_netns(name, p["name"]) for p in state.get("pods", [])}
        known |= {ns for ns in state.get("node_namespaces") or [] if ns}
        known |= {state[k] for k in ("underlay_ns", "ext_ns") if state.get(k)}
    mine = []
    for ns in list_netns():
        if not ns.startswith(prefix):
            continue
        owner = topo.lab_of_tag(_read_tag(ns))
        if owner == name or (not owner and ns in known):
            mine.append(ns)
    rank = {"": 0, "ext": 1, "underlay": 1, "node": 2}
    return sorted(mine, key=lambda ns: (ns == node, rank[topo.infra_netns_kind(name, ns)], ns))


def _podserver_pid_is(pid: Optional[int], pod: str) -> bool:
    """True if `pid` is alive and is the pod server of `pod` (guards against pid reuse)."""
    if not pid or not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return _SERVER_MODULE.encode() in argv and pod.encode() in argv


# --------------------------------------------------------------------- building

@contextlib.contextmanager
def _step(lab: str, what: str) -> Iterator[None]:
    """Turn a netlink error into a LabError that says which lab, object and step failed."""
    try:
        yield
    except NetlinkError as exc:
        raise LabError(f"lab {lab}: {what}: {exc}") from exc


def _tag_and_lo_up(ipr: IPRoute, lab: str, ns: str) -> None:
    with _step(lab, f"netns {ns}: tag and bring up lo"):
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up", ifalias=topo.netns_tag(lab))


def _create_node(lab: Lab, k: int = 0) -> None:
    ns = lab.node_netns(k)
    with netns_ipr(ns) as ipr:
        _tag_and_lo_up(ipr, lab.name, ns)
        write_sysctls(ns, _NODE_SYSCTLS_DUAL if lab.has_ipv6 else _NODE_SYSCTLS)
        with _step(lab.name, f"node {ns}: blackhole the Service ranges"):
            # Nothing unserved in the VIP range may follow another route: drop it silently. An
            # IPv6-only node has no IPv4 route at all, so IPv4 has nowhere to leak to.
            if lab.has_ipv4:
                ipr.route("add", dst=topo.SERVICE_CIDR, type="blackhole")
            if lab.has_ipv6:
                ipr.route("add", dst=topo.SERVICE_CIDR6, type="blackhole")
    log.debug("lab %s: node %s configured", lab.name, ns)


def _veth_into(ipr: IPRoute, lab: str, what: str, ifname: str, mac: str, peer_ns: str,
               peer_ifname: str, peer_mac: str) -> None:
    """A veth `ifname` in ipr's namespace whose peer is born in `peer_ns` (no temporary name)."""
    fd = os.open(netns_path(peer_ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _step(lab, f"{what}: create veth {ifname} <-> {peer_ifname} ({peer_ns})"):
            ipr.link("add", ifname=ifname, kind="veth", address=mac,
                     peer={"ifname": peer_ifname, "address": peer_mac, "net_ns_fd": fd})
    finally:
        os.close(fd)


def _wire_checksums(lab: str, ns: str) -> None:
    """Frames on the underlay carry full checksums, as from a real NIC: a veth would otherwise
    pass CHECKSUM_PARTIAL seeds between namespaces, which XDP cannot tell from a checksum (the
    receiving stack then checks every checksum XDP rewrote)."""
    with _step(lab, f"{ns}: {topo.NODE_UNDERLAY_IFNAME} tx checksum offload off"):
        r = run_cmd(["nsenter", f"--net={netns_path(ns)}", "ethtool", "-K",
                     topo.NODE_UNDERLAY_IFNAME, "tx", "off"])
        if r.returncode != 0:
            raise RuntimeError(f"ethtool -K {topo.NODE_UNDERLAY_IFNAME} tx off in {ns}: "
                               f"{r.stderr.strip()}")


def _xdp_ready_port(ipr: IPRoute, lab: str, port: str) -> None:
    """An underlay port takes frames a node's native XDP sends back (see lab/xdp_pass.py)."""
    from .xdp_pass import load_xdp_pass

    fd = load_xdp_pass()
    try:
        with _step(lab, f"underlay port {port}: XDP pass program"):
            ipr.link("set", index=ipr.link_lookup(ifname=port)[0], xdp_fd=fd)
    finally:
        os.close(fd)


def _create_underlay(lab: Lab) -> None:
    """The underlay bridge, the external client, and each node's eth0 on the bridge with routes
    to the other nodes' pod CIDRs. The nodes themselves must exist already."""
    und, ext = topo.underlay_netns(lab.name), topo.ext_netns(lab.name)
    for ns in (und, ext):
        create_netns(ns)
        with netns_ipr(ns) as ipr:
            _tag_and_lo_up(ipr, lab.name, ns)
        write_sysctls(ns, _POD_SYSCTLS_DUAL if lab.has_ipv6 and ns == ext else _QUIET_SYSCTLS)
    with netns_ipr(und) as uipr:
        with _step(lab.name, f"underlay {und}: bridge {topo.UNDERLAY_BRIDGE}"):
            uipr.link("add", ifname=topo.UNDERLAY_BRIDGE, kind="bridge")
            br = uipr.link_lookup(ifname=topo.UNDERLAY_BRIDGE)[0]
            uipr.link("set", index=br, state="up")
        ports = [(topo.EXT_PORT, ext, topo.EXT_ADDRESS, topo.EXT_ADDRESS6)]
        ports += [(topo.underlay_port(k), lab.node_netns(k), topo.node_address(k),
                   topo.node_address6(k)) for k in range(lab.nodes)]
        for i, (port, ns, addr4, addr6) in enumerate(ports):
            addrs = [(a, plen) for a, plen, on in ((addr4, topo.UNDERLAY_PREFIXLEN, lab.has_ipv4),
                                                   (addr6, topo.UNDERLAY_PREFIXLEN6, lab.has_ipv6))
                     if on]
            # Bridge ports: ca:fe:ff:ff:ff:<n>, apart from every addressed device's ca:fe:<ip>.
            _veth_into(uipr, lab.name, f"underlay {und}", port, f"ca:fe:ff:ff:ff:{i:02x}",
                       ns, topo.NODE_UNDERLAY_IFNAME, topo.underlay_mac(addrs[0][0]))
            with _step(lab.name, f"underlay {und}: port {port}"):
                idx = uipr.link_lookup(ifname=port)[0]
                uipr.link("set", index=idx, master=br, state="up")
            write_sysctls(ns, {f"net.ipv6.conf.{topo.NODE_UNDERLAY_IFNAME}.disable_ipv6":
                               "0" if lab.has_ipv6 else "1",
                               f"net.ipv4.conf.{topo.NODE_UNDERLAY_IFNAME}.rp_filter": "1"})
            with netns_ipr(ns) as ipr, _step(lab.name, f"{ns}: {topo.NODE_UNDERLAY_IFNAME} "
                                                       f"{', '.join(a for a, _ in addrs)}"):
                idx = ipr.link_lookup(ifname=topo.NODE_UNDERLAY_IFNAME)[0]
                for addr, prefixlen in addrs:
                    ipr.addr("add", index=idx, address=addr, prefixlen=prefixlen)
                ipr.link("set", index=idx, state="up")
            _wire_checksums(lab.name, ns)
            _xdp_ready_port(uipr, lab.name, port)
    with netns_ipr(ext) as ipr, _step(lab.name, f"{ext}: route the external VIP ranges"):
        if lab.has_ipv4:
            ipr.route("add", dst=topo.EXTERNAL_VIP_CIDR, gateway=topo.node_address(0))
        if lab.has_ipv6:
            # The IPv6 twins of those addresses (fd00:200::c0/122) inside the underlay's /64:
            # the more specific route sends them to node 0 rather than asking the wire.
            ipr.route("add", dst=topo.EXTERNAL_VIP_CIDR6, gateway=topo.node_address6(0))
    for j in range(lab.nodes):
        with netns_ipr(lab.node_netns(j)) as ipr:
            idx = ipr.link_lookup(ifname=topo.NODE_UNDERLAY_IFNAME)[0]
            for k in range(lab.nodes):
                if k != j:
                    with _step(lab.name, f"node {lab.node_netns(j)}: route node {k}'s pod CIDR"):
                        if lab.has_ipv4:
                            ipr.route("add", dst=topo.node_pod_cidr(k),
                                      gateway=topo.node_address(k), oif=idx)
                        if lab.has_ipv6:
                            ipr.route("add", dst=topo.node_pod_cidr6(k),
                                      gateway=topo.node_address6(k), oif=idx)
    log.debug("lab %s: underlay %s with %d nodes and %s", lab.name, und, lab.nodes, ext)


def _create_pod_net(lab: Lab, pod: PodSpec, node_ipr: IPRoute) -> None:
    """Namespace, veth pair, addresses, routes and permanent neighbours of one pod; `node_ipr`
    is bound to the namespace of the pod's node."""
    ns = lab.pod_ns(pod.name)
    node_ns = lab.node_netns(pod.node)
    host = topo.host_ifname(pod.name)
    pmac, hmac = topo.pod_mac(pod.ip), topo.host_mac(pod.ip)
    what = f"pod {pod.name} ({ns})"
    create_netns(ns)
    with netns_ipr(ns) as pipr:
        _tag_and_lo_up(pipr, lab.name, ns)
        # Set before eth0 exists so it comes up without IPv6 from the start (or, with IPv6,
        # with it and without its noise).
        write_sysctls(ns, _POD_SYSCTLS_DUAL if lab.has_ipv6 else _POD_SYSCTLS)
        fd = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _step(lab.name, f"{what}: create veth {host} <-> eth0"):
                # The peer is born inside the pod namespace: no temporary name in the node.
                node_ipr.link("add", ifname=host, kind="veth", address=hmac,
                              peer={"ifname": "eth0", "address": pmac, "net_ns_fd": fd})
        finally:
            os.close(fd)
        six = "0" if lab.has_ipv6 else "1"
        write_sysctls(node_ns, {f"net.ipv4.conf.{host}.rp_filter": "1",
                                f"net.ipv6.conf.{host}.disable_ipv6": six})
        write_sysctls(ns, {"net.ipv6.conf.eth0.disable_ipv6": six})
        with _step(lab.name, f"{what}: host side {host}"):
            hidx = node_ipr.link_lookup(ifname=host)[0]
            node_ipr.link("set", index=hidx, state="up")
            if lab.has_ipv4:
                node_ipr.route("add", dst=f"{pod.ip}/32", oif=hidx, scope=RT_SCOPE_LINK)
                # Permanent neighbours both ways: no ARP, no proxy_arp, nothing left to timing.
                node_ipr.neigh("add", dst=pod.ip, lladdr=pmac, ifindex=hidx, state="permanent")
        with _step(lab.name, f"{what}: eth0"):
            eidx = pipr.link_lookup(ifname="eth0")[0]
            pipr.link("set", index=eidx, state="up")
            if lab.has_ipv4:
                pipr.addr("add", index=eidx, address=pod.ip, prefixlen=32)
                pipr.route("add", dst=f"{topo.POD_GATEWAY}/32", oif=eidx, scope=RT_SCOPE_LINK)
                pipr.route("add", dst="0.0.0.0/0", gateway=topo.POD_GATEWAY, oif=eidx)
                pipr.neigh("add", dst=topo.POD_GATEWAY, lladdr=hmac, ifindex=eidx, state="permanent")
        if lab.has_ipv6:
            _pod_ipv6(lab, pod, node_ipr, pipr, hidx, eidx)
    log.debug("lab %s: pod %s at %s on %s", lab.name, pod.name, pod.ip, host)


def _pod_ipv6(lab: Lab, pod: PodSpec, node_ipr: IPRoute, pipr: IPRoute, hidx: int, eidx: int) -> None:
    """A pod's IPv6 side (dual-stack or IPv6-only), Calico-style as the IPv4 one: a /128 on eth0,
    the default route via a link-local gateway, host routes and permanent neighbours both ways."""
    ip6 = lab.pod_ip6(pod)
    pmac, hmac = topo.pod_mac(pod.ip), topo.host_mac(pod.ip)
    with _step(lab.name, f"pod {pod.name}: IPv6 {ip6}"):
        node_ipr.route("add", dst=f"{ip6}/128", oif=hidx)
        node_ipr.neigh("add", dst=ip6, lladdr=pmac, ifindex=hidx, state="permanent",
                       family=socket.AF_INET6)
        node_ipr.addr("add", index=hidx, address=topo.POD_GATEWAY6, prefixlen=64)
        pipr.addr("add", index=eidx, address=ip6, prefixlen=128)
        pipr.route("add", dst="::/0", gateway=topo.POD_GATEWAY6, oif=eidx)
        pipr.neigh("add", dst=topo.POD_GATEWAY6, lladdr=hmac, ifindex=eidx, state="permanent",
                   family=socket.AF_INET6)


def _server_env() -> Dict[str, str]:
    # The server must import this very ebpflb, installed or not: put its source root first.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _log_tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-n:])
    except OSError:
        return "(no log)"


def _start_servers(lab: Lab, pods: Sequence[PodSpec]) -> None:
    """Start the pod servers in parallel and wait until every one listens (or fail)."""
    env = _server_env()
    pending: Dict[str, int] = {}  # pod name -> read end of its ready pipe
    try:
        for pod in pods:
            rfd, wfd = os.pipe()
            pending[pod.name] = rfd
            argv = in_cgroup(lab.cgroup(pod.node), [
                "ip", "netns", "exec", lab.pod_ns(pod.name), sys.executable, "-m", _SERVER_MODULE,
                "--name", pod.name, "--http-port", str(topo.HTTP_PORT),
                *(["--bind", "::"] if lab.has_ipv6 else []),
                "--udp-port", str(topo.UDP_ECHO_PORT), "--ready-fd", str(wfd), "--detach"])
            try:
                with _open_under_state_root(topo.pod_log(lab.name, pod.name), "ab") as logf:
                    # `ip netns exec` execs python directly; --detach then forks the real server
                    # away, so this launcher exits at once and we never own a child to reap.
                    launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                                stderr=subprocess.STDOUT, pass_fds=(wfd,),
                                                env=env, cwd="/")
            except OSError as exc:
                raise LabError(f"lab {lab.name}: pod {pod.name}: cannot start {argv[0]}: {exc}") from exc
            finally:
                os.close(wfd)
            try:
                launcher.wait(timeout=SERVER_START_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                launcher.kill()
                launcher.wait()
                raise LabError(f"lab {lab.name}: pod {pod.name}: launcher {' '.join(argv[:4])} "
                               f"hung for {SERVER_START_TIMEOUT}s") from exc
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        for pod_name, rfd in list(pending.items()):
            remaining = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([rfd], [], [], remaining)
            line = os.read(rfd, 64).decode(errors="replace") if ready else ""
            os.close(rfd)
            del pending[pod_name]
            if not line.startswith("ready "):
                why = "timed out" if not ready else "exited before listening"
                raise LabError(f"lab {lab.name}: pod {pod_name}: server {why}; log "
                               f"{topo.pod_log(lab.name, pod_name)}:\n{_log_tail(topo.pod_log(lab.name, pod_name))}")
            lab.pids[pod_name] = int(line.split()[1])
            log.debug("lab %s: pod %s server pid %d listening", lab.name, pod_name, lab.pids[pod_name])
    finally:
        for rfd in pending.values():
            os.close(rfd)


def _create_cgroups(lab: Lab) -> None:
    for k in range(lab.nodes):
        path = lab.cgroup(k)
        if path is not None:
            os.makedirs(path, exist_ok=True)


def lab_up(name: str = DEFAULT_LAB, pods: Optional[List[PodSpec]] = None, nodes: int = 1,
           ip_family: str = "ipv4") -> Lab:
    """Build lab `name` with `nodes` nodes and `pods` (default: topo.default_pods(nodes=nodes):
    client + web-1..web-4 on node 0, n<k>-client + n<k>-web-1..2 on node k). Refuses if it exists.

    `ip_family` (topo.IP_FAMILIES): "ipv4"; "ipv6", whose pods' addresses are IPv6 (default_pods
    with ip_family="ipv6") and where no device but lo has IPv4; or "dual".

    On any failure everything built so far is removed before the error propagates.
    """
    _checked(topo.validate_lab_name, name)
    _checked(topo.validate_nodes, nodes)
    _checked(topo.validate_ip_family, ip_family)
    pod_list = _checked(topo.validate_pods, topo.default_pods(nodes=nodes, ip_family=ip_family)
                        if pods is None else pods, nodes, ip_family)
    t0 = time.monotonic()
    existing = _lab_namespaces(name, _load_state(name))
    if existing or os.path.exists(topo.state_file(name)):
        raise LabExistsError(f"lab {name}: already exists (namespaces: {', '.join(existing) or 'none'}; "
                             f"state file: {topo.state_file(name)}); run lab_down('{name}') first")
    lab = Lab(name=name, node_ns=topo.node_netns(name), pods={},
              state_file=topo.state_file(name), log_dir=topo.log_dir(name), nodes=nodes,
              ip_family=ip_family)
    # Creating the node namespace is the claim on the name (O_EXCL): if another lab_up won the
    # race, fail here, before the cleanup below could tear down the winner's lab.
    create_netns(lab.node_ns)
    try:
        _create_cgroups(lab)
        _create_node(lab)
        # The state file lists every node, underlay and ext namespace before they exist.
        _save_state(lab)
        if nodes > 1:
            for k in range(1, nodes):
                create_netns(lab.node_netns(k))
                _create_node(lab, k)
            _create_underlay(lab)
        for k in range(nodes):
            with netns_ipr(lab.node_netns(k)) as node_ipr:
                for pod in (p for p in pod_list if p.node == k):
                    # In the state file before its namespace exists, so a crash leaves it findable.
                    lab.pods[pod.name] = pod
                    _save_state(lab)
                    _create_pod_net(lab, pod, node_ipr)
        _start_servers(lab, [p for p in pod_list if topo.runs_server(p)])
        _save_state(lab)
    except BaseException:
        log.error("lab %s: lab_up failed, removing what was built", name)
        try:
            lab_down(name)
        except (LabError, OSError) as exc:
            log.error("lab %s: cleanup after failed lab_up also failed: %s", name, exc)
        raise
    log.info("lab %s: up with %d node(s) and %d pods in %.2fs", name, nodes, len(pod_list),
             time.monotonic() - t0)
    return lab


# --------------------------------------------------------------------- removing

def _delete_veths(node_ns: str, only: Optional[Sequence[str]] = None) -> List[str]:
    """Delete veths in the node namespace (all, or the named ones); their pod ends go with them.

    Done explicitly because removing a namespace only unlinks its name: something still holding
    it (a socket a test kept) would keep its devices alive.
    """
    removed = []
    if not netns_exists(node_ns):
        return removed
    with netns_ipr(node_ns) as ipr:
        for link in ipr.get_links():
            ifname = link.get_attr("IFLA_IFNAME")
            linkinfo = link.get_attr("IFLA_LINKINFO")
            kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo else None
            if kind != "veth" or (only is not None and ifname not in only):
                continue
            try:
                ipr.link("del", index=link["index"])
                removed.append(ifname)
            except NetlinkError as exc:
                # ENODEV: deleting an earlier pair's peer already took it.
                if exc.code != errno.ENODEV:
                    raise LabError(f"node {node_ns}: delete {ifname}: {exc}") from exc
    return removed


def _stop_processes(namespaces: Sequence[str], extra: Dict[int, str]) -> List[str]:
    """Stop every process in `namespaces` (and the `extra` pids); return what was stopped.

    All are signalled at once and waited for once, not one grace period per pod. The scan
    repeats because a process can fork between scan and signal (a pod server detaching at
    start-up); its child would otherwise outlive the namespace's name, unseen.
    """
    removed: List[str] = []
    where = dict(extra)
    for _ in range(5):
        where.update({pid: f"netns {ns}" for ns in namespaces for pid in netns_pids(ns)})
        if not where:
            return removed
        removed += [f"process {pid} ({where[pid]})" for pid in kill_pids(sorted(where))]
        where = {}
    left = {pid: ns for ns in namespaces for pid in netns_pids(ns)}
    if left:
        log.warning("namespaces %s: processes %s survived SIGKILL", ", ".join(namespaces), sorted(left))
    return removed


def _rmdir_if_empty(path: str) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


def lab_down(name: str = DEFAULT_LAB) -> List[str]:
    """Remove every process, device, namespace and file of lab `name`; return what was removed.

    Works without the state file (after a crash) and when nothing is left (returns []). Never
    touches another lab, even one whose name starts with "<name>-".
    """
    _checked(topo.validate_lab_name, name)
    t0 = time.monotonic()
    state = _load_state(name)
    namespaces = _lab_namespaces(name, state)
    removed: List[str] = []
    strays = {}
    for p in (state or {}).get("pods", []):
        # A server whose namespace name is already gone (partial earlier teardown) is only
        # reachable through the pid the state file recorded.
        if _podserver_pid_is(p.get("pid"), p["name"]):
            strays[p["pid"]] = f"pod {p['name']}"
    removed += _stop_processes(namespaces, strays)
    problems: List[str] = []
    root = cgroup2_root()
    if root:
        try:
            removed += remove_cgroup(topo.lab_cgroup(root, name))
        except LabError as exc:  # the rest still goes; the error is raised at the end
            problems.append(str(exc))
    for ns in namespaces:
        # Nodes (pods' host sides, eth0 on the underlay) and the underlay's bridge ports.
        if topo.infra_netns_kind(name, ns) in ("node", "underlay"):
            removed += [f"link {ifname} (netns {ns})" for ifname in _delete_veths(ns)]
    for ns in namespaces:
        if remove_netns(ns):
            removed.append(f"netns {ns}")
    for sf in (topo.state_file(name), topo.state_file(name) + ".tmp"):
        if os.path.exists(sf):
            os.unlink(sf)
            removed.append(f"file {sf}")
    ld = topo.log_dir(name)
    if os.path.isdir(ld):
        shutil.rmtree(ld)
        removed.append(f"dir {ld}")
    # The shared parents go only when no other lab (or other part of ebpflb) uses them.
    if _rmdir_if_empty(topo.STATE_ROOT):
        _rmdir_if_empty(os.path.dirname(topo.STATE_ROOT))
    if removed:
        log.info("lab %s: down in %.2fs, removed %d objects", name, time.monotonic() - t0, len(removed))
    else:
        log.debug("lab %s: nothing to remove", name)
    if problems:
        raise LabError(f"lab {name}: down, but: {'; '.join(problems)}")
    return removed


# ------------------------------------------------------------------ pods at run time

def add_pod(name: str, pod: PodSpec) -> None:
    """Add one pod (namespace, veth, routes, server) to running lab `name`."""
    lab = get_lab(name)
    if pod.name in lab.pods or netns_exists(lab.pod_ns(pod.name)):
        raise LabExistsError(f"lab {name}: pod {pod.name} already exists")
    pod = _checked(topo.validate_pods, list(lab.pods.values()) + [pod], lab.nodes,
                   lab.ip_family)[-1]
    lab.pods[pod.name] = pod
    _save_state(lab)
    try:
        with netns_ipr(lab.node_netns(pod.node)) as node_ipr:
            _create_pod_net(lab, pod, node_ipr)
        if topo.runs_server(pod):
            _start_servers(lab, [pod])
        _save_state(lab)
    except BaseException:
        log.error("lab %s: add_pod %s failed, removing what was built", name, pod.name)
        try:
            _remove_pod(lab, pod.name)
        except (LabError, OSError) as exc:
            log.error("lab %s: cleanup of pod %s also failed: %s", name, pod.name, exc)
        lab.pods.pop(pod.name, None)
        lab.pids.pop(pod.name, None)
        _save_state(lab)
        raise
    log.info("lab %s: added pod %s at %s", name, pod.name, pod.ip)


def _remove_pod(lab: Lab, pod_name: str) -> List[str]:
    ns = lab.pod_ns(pod_name)
    pid = lab.pids.get(pod_name)
    strays = {pid: f"pod {pod_name}"} if pid and _podserver_pid_is(pid, pod_name) else {}
    removed = _stop_processes([ns], strays)
    # A pod the state file lost may sit behind any node.
    nodes = [lab.pod_node_ns(pod_name)] if pod_name in lab.pods else lab.node_namespaces
    for node_ns in nodes:
        removed += [f"link {i}" for i in _delete_veths(node_ns, only=[topo.host_ifname(pod_name)])]
    if remove_netns(ns):
        removed.append(f"netns {ns}")
    logf = topo.pod_log(lab.name, pod_name)
    if os.path.exists(logf):
        os.unlink(logf)
    return removed


def del_pod(name: str, pod_name: str) -> None:
    """Remove one pod (server, veth, routes, namespace) from running lab `name`."""
    lab = get_lab(name)
    if pod_name not in lab.pods and not netns_exists(lab.pod_ns(pod_name)):
        raise LabNotFoundError(f"lab {name}: no pod {pod_name}")
    removed = _remove_pod(lab, pod_name)
    lab.pods.pop(pod_name, None)
    lab.pids.pop(pod_name, None)
    _save_state(lab)
    log.info("lab %s: deleted pod %s (%s)", name, pod_name, ", ".join(removed))


# ------------------------------------------------------------------ looking and using

def _pod_ip_in_netns(ns: str) -> str:
    """The address on eth0 in `ns`, IPv4 if it has one, else its global IPv6 one (an IPv6-only
    lab's pod), or "" (for status when the state file is gone)."""
    try:
        with netns_ipr(ns) as ipr:
            idx = ipr.link_lookup(ifname="eth0")
            addrs = ipr.get_addr(family=socket.AF_INET, index=idx[0]) if idx else []
            if idx and not addrs:
                # Scope 0 (universe): not the link-local address the kernel gives every device.
                addrs = [a for a in ipr.get_addr(family=socket.AF_INET6, index=idx[0])
                         if a["scope"] == 0]
    except (LabError, NetlinkError, OSError) as exc:
        log.debug("netns %s: cannot read eth0 address: %s", ns, exc)
        return ""
    return addrs[0].get_attr("IFA_ADDRESS") if addrs else ""


def _podserver_pid_in(ns: str, pod: str) -> Optional[int]:
    return next((pid for pid in netns_pids(ns) if _podserver_pid_is(pid, pod)), None)


def _status_ip6(ip: str, family: str) -> Optional[str]:
    """A pod's IPv6 address as status shows it, from the address it lists (None if unknown)."""
    if not ip or family == "ipv4":
        return None
    if ":" in ip:
        return ip
    try:
        return topo.pod_ip6(ip)
    except ValueError:
        return None


def lab_status(name: str = DEFAULT_LAB) -> Dict[str, Any]:
    """What exists of lab `name`: namespaces, pods, servers. JSON-serialisable.

    `ip_family` is the lab's (topo.IP_FAMILIES); addresses named without a family are of its
    primary one (IPv4, except in an "ipv6" lab), those ending in 6 its IPv6 ones (None in an
    "ipv4" lab).
    Per pod: name, ip, ip6, node (its node's index), netns, netns_exists, host_ifname, server
    (whether the pod runs one), server_pid, server_alive (None for a pod without a server).
    Per node (`nodes`): index, netns, netns_exists, address and address6 (on the underlay; None
    in a single-node lab), pod_cidr. Without the state file the pods and nodes are rebuilt from
    the lab's namespaces (a pod's node then from its address, the family from the pods'
    addresses: "ipv6" if they are all IPv6, else "ipv4").
    """
    _checked(topo.validate_lab_name, name)
    state = _load_state(name)
    namespaces = _lab_namespaces(name, state)
    node = topo.node_netns(name)
    prefix = topo.lab_netns_prefix(name)
    if state is not None:
        n_nodes = int(state.get("nodes", 1))
    else:
        n_nodes = 1 + max([topo.node_index(name, ns) for ns in namespaces] + [0])
    known = [(p["name"], p["ip"], int(p.get("node", 0)), p.get("pid")) for p in (state or {}).get("pods", [])]
    listed = {topo.pod_netns(name, pod) for pod, _, _, _ in known}
    # Namespaces the state file does not know (it is gone, or a crash came first).
    for ns in namespaces:
        if not topo.infra_netns_kind(name, ns) and ns not in listed:
            ip = _pod_ip_in_netns(ns)
            known.append((ns[len(prefix):], ip, topo.node_of_ip(ip, n_nodes) if ip else 0, None))
    if state is not None:
        family = Lab.from_state(state).ip_family
    else:
        ips = [ip for _, ip, _, _ in known if ip]
        family = "ipv6" if ips and all(":" in ip for ip in ips) else "ipv4"
    pods = []
    for pod, ip, k, pid in known:
        ns = topo.pod_netns(name, pod)
        server = topo.runs_server(PodSpec(pod, ip, k))
        if server and not _podserver_pid_is(pid, pod):
            pid = _podserver_pid_in(ns, pod) or pid
        pods.append({
            "name": pod, "ip": ip, "ip6": _status_ip6(ip, family), "node": k, "netns": ns,
            "netns_exists": ns in namespaces,
            "host_ifname": topo.host_ifname(pod), "server": server, "server_pid": pid,
            "server_alive": _podserver_pid_is(pid, pod) if server else None,
        })
    multi = n_nodes > 1
    six = topo.has_ipv6(family)
    cgroup_root = cgroup2_root()
    nodes = [{"index": k, "netns": topo.node_netns(name, k),
              "netns_exists": topo.node_netns(name, k) in namespaces,
              "address": topo.node_address_of(k, family) if multi else None,
              "address6": topo.node_address6(k) if multi and six else None,
              "pod_cidr": topo.node_pod_cidr_of(k, family) if multi else
              (topo.POD_CIDR6 if family == "ipv6" else topo.POD_CIDR),
              "cgroup": topo.node_cgroup(cgroup_root, name, k) if cgroup_root else None}
             for k in range(n_nodes)]
    return {
        "lab": name,
        "exists": bool(namespaces),
        "ip_family": family,
        "node_ns": node,
        "node_ns_exists": node in namespaces,
        "nodes": nodes,
        "underlay_ns": topo.underlay_netns(name) if multi else None,
        "ext_ns": topo.ext_netns(name) if multi else None,
        "ext_address": topo.ext_address_of(family) if multi else None,
        "ext_address6": topo.EXT_ADDRESS6 if multi and six else None,
        "namespaces": namespaces,
        "state_file": topo.state_file(name) if state is not None else None,
        "log_dir": topo.log_dir(name),
        "pods": pods,
    }


def run_in_pod(name: str, pod: str, argv: List[str], timeout: float = 30,
               **kw: Any) -> subprocess.CompletedProcess:
    """Run `argv` inside pod `pod` of lab `name` (via `ip netns exec`); output captured as text.

    `pod` may be "node" to run in the node namespace.

    Returns the CompletedProcess whatever the exit code (pass check=True to raise), like
    subprocess.run; extra keyword arguments go to subprocess.run.
    """
    _checked(topo.validate_lab_name, name)
    # "node" is accepted on purpose: pod_netns(lab, "node") is the node namespace.
    _checked(topo.validate_pod_name, pod)
    ns = topo.pod_netns(name, pod)
    if not netns_exists(ns):
        raise LabNotFoundError(f"lab {name}: pod {pod} has no namespace {ns}")
    if "stdout" not in kw and "stderr" not in kw:
        kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(in_cgroup(_cgroup_of(name, pod), ["ip", "netns", "exec", ns, *argv]),
                          timeout=timeout, **kw)


def _cgroup_of(name: str, pod: str) -> Optional[str]:
    """The cgroup a process "in" `pod` runs in: its node's (a node's own for "node<k>"), none
    for the external client, which is outside the cluster."""
    if pod == topo.EXT_NETNS:
        return None
    state = _load_state(name)
    lab = Lab.from_state(state) if state else None
    if lab is None:
        return None
    if pod == "node":
        k = 0
    elif pod.startswith("node") and pod[4:].isdigit():
        k = int(pod[4:])
    elif pod in lab.pods:
        k = lab.pods[pod].node
    else:
        return None
    path = lab.cgroup(k)
    return path if path and os.path.isdir(path) else None


def run_on_node(name: str, argv: List[str], node: int = 0, timeout: float = 30,
                **kw: Any) -> subprocess.CompletedProcess:
    """Run `argv` as a host-network process of node `node` (its namespace and its cgroup), like
    a host-network pod or a node agent; like run_in_pod."""
    return run_in_pod(name, "node" if node == 0 else f"node{node}", argv, timeout=timeout, **kw)


def run_in_ext(name: str, argv: List[str], timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
    """Run `argv` in the external client of multi-node lab `name` (192.168.200.2 on the
    underlay, fd00:200::2 in an IPv6 or dual-stack lab; no route to pods or VIPs); like
    run_in_pod."""
    return run_in_pod(name, topo.EXT_NETNS, argv, timeout=timeout, **kw)
