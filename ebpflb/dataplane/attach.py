"""Attaching the TC programs to pod-facing devices, and removing them (the kernel edge of the
agent, next to the loader); and the addresses each pod device may send from (lb4_pod_addrs).

Each device gets a clsact qdisc and, at one filter priority of its own, lb4_from_pod on ingress and
lb4_to_pod on egress. `replace-filter` swaps a program in place, so re-attaching (an agent restart,
an upgrade) never leaves a device without one. Filters are recognised by their name prefix, so
cleanup removes ours and nothing else.
"""
import fnmatch
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import sched_bpf

from ..maps import POD_ADDR_MARKER, POD_ADDR_MARKER6, POD_ADDRS, POD_ADDRS6, PodAddrKey
from .device_maps import write_device_map

log = logging.getLogger(__name__)

FILTER_PRIO = 0xEB1  # the pref our filters use; chosen to stay clear of tc's defaults
FILTER_HANDLE = ":1"
FILTER_PREFIX = "ebpflb_"
INGRESS = "ffff:fff2"
EGRESS = "ffff:fff3"
_PARENTS = {INGRESS: 0xFFFFFFF2, EGRESS: 0xFFFFFFF3}
EEXIST, ENOENT, ENODEV, EINVAL, ENOBUFS = 17, 2, 19, 22, 105
OVERRUN = "OVERRUN"  # a LinkMonitor event: events were lost


# pyroute2 decodes the cls_bpf attributes only up to TCA_BPF_FLAGS (8); the kernel also sends
# TCA_BPF_FLAGS_GEN (9), TCA_BPF_TAG (10) and TCA_BPF_ID (11), and the id is what tells whose
# program a filter runs. Appended in the kernel's order, only when this pyroute2 lacks them.
if not any(name == "TCA_BPF_ID" for name, _ in sched_bpf.options.nla_map):
    if len(sched_bpf.options.nla_map) == 9:
        sched_bpf.options.nla_map = sched_bpf.options.nla_map + (
            ("TCA_BPF_FLAGS_GEN", "uint32"), ("TCA_BPF_TAG", "hex"), ("TCA_BPF_ID", "uint32"))


def matches(ifname: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(ifname, p) for p in patterns)


@dataclass(frozen=True)
class Program:
    """A loaded program as the attacher needs it: its fd and the name shown by `tc filter show`."""
    fd: int
    name: str


def _ensure_clsact(ipr: IPRoute, ifindex: int) -> None:
    try:
        ipr.tc("add", "clsact", ifindex)
    except NetlinkError as exc:
        if exc.code != EEXIST:
            raise


def attach(ipr: IPRoute, ifindex: int, ingress: Program, egress: Program) -> None:
    """Attaches (or atomically replaces) both programs on one device."""
    _ensure_clsact(ipr, ifindex)
    for parent, prog in ((INGRESS, ingress), (EGRESS, egress)):
        ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, fd=prog.fd,
               name=FILTER_PREFIX + prog.name, parent=parent, classid=1, direct_action=True,
               prio=FILTER_PRIO)


Owner = Callable[[int], bool]  # program id -> whether it belongs to the data plane at hand


def filters(ipr: IPRoute, ifindex: int) -> List[Tuple[str, int, int, bool]]:
    """Every filter on a device's clsact hooks as (parent, prio, program id, an ebpflb filter
    by its name); [] without clsact."""
    out = []
    for parent, parent_id in _PARENTS.items():
        try:
            found = ipr.get_filters(index=ifindex, parent=parent_id)
        except NetlinkError as exc:
            if exc.code in (EINVAL, ENOENT, ENODEV):  # no clsact on this device
                continue
            raise
        for f in found:
            if not f["handle"]:
                continue  # the per-priority chain header tc reports before the filters
            opts = f.get_attr("TCA_OPTIONS")
            name = (opts.get_attr("TCA_BPF_NAME") if opts else None) or ""
            prog_id = (opts.get_attr("TCA_BPF_ID") if opts else None) or 0
            out.append((parent, f["info"] >> 16, prog_id,
                        f.get_attr("TCA_KIND") == "bpf" and name.startswith(FILTER_PREFIX)))
    return out


def _our_filters(ipr: IPRoute, ifindex: int,
                 owns: Optional[Owner] = None) -> Tuple[List[Tuple[str, int]], int]:
    """Our filters on a device as (parent, prio), and how many filters of others remain. With
    `owns`, an ebpflb filter whose program it does not claim (another agent's, with another pin
    directory) counts as someone else's."""
    ours: List[Tuple[str, int]] = []
    others = 0
    for parent, prio, prog_id, ebpflb in filters(ipr, ifindex):
        if ebpflb and (owns is None or owns(prog_id)):
            ours.append((parent, prio))
        else:
            others += 1
    return ours, others


def detach(ipr: IPRoute, ifindex: int, owns: Optional[Owner] = None) -> bool:
    """Removes our filters from a device, and its clsact qdisc when nothing else uses it.
    Returns True when there was anything of ours."""
    ours, others = _our_filters(ipr, ifindex, owns)
    for parent, prio in ours:
        try:
            ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE, parent=parent, prio=prio)
        except NetlinkError as exc:
            if exc.code not in (ENOENT, ENODEV):
                raise
    if ours and not others:
        try:
            ipr.tc("del", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code not in (ENOENT, EINVAL, ENODEV):
                raise
    return bool(ours)


def links(ipr: IPRoute) -> Dict[int, str]:
    return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def detach_all(ipr: IPRoute, owns: Optional[Owner] = None) -> List[str]:
    """Removes our programs (those `owns` claims) from every device of the current network
    namespace."""
    removed = []
    for ifindex, ifname in links(ipr).items():
        if detach(ipr, ifindex, owns):
            removed.append(ifname)
    return removed


def pod_routes(ipr: IPRoute, ifindex: int) -> FrozenSet[str]:
    """The pod addresses behind a pod device: the host routes (/32 and /128, main table)
    through it, as CNIs that route to each pod's veth (Calico-style) install them."""
    out = set()
    for family, host in ((socket.AF_INET, 32), (socket.AF_INET6, 128)):
        for route in ipr.get_routes(family=family, oif=ifindex, table=254):
            dst = route.get_attr("RTA_DST")
            if dst and route["dst_len"] == host and route.get_attr("RTA_OIF") == ifindex:
                out.add(dst)
    return frozenset(out)


def pod_addr_records(ifindex: int, addrs: FrozenSet[str]) -> Dict[PodAddrKey, int]:
    """A device's entries: its addresses, and the marker of each family it has addresses of (a
    family without any stays unchecked, as a device with no host route does)."""
    markers = {POD_ADDR_MARKER6 if ":" in a else POD_ADDR_MARKER for a in addrs}
    return {PodAddrKey(ifindex, a): 1 for a in addrs | markers}


class PodAddresses:
    """lb4_pod_addrs and lb6_pod_addrs in step with the host routes of each attached pod device: the addresses its
    pod may send to a frontend from. A device with no host route gets no entry, so it is not
    checked (its CNI bridges pods rather than routing to them, and its addresses are unknown).
    Written through plan and apply (ebpflb.dataplane.device_maps): a device's new addresses and
    its marker first, the ones that went last, so a pod is never refused its own address while
    the entries change."""

    def __init__(self, ipr: IPRoute, writer: Any):
        self.ipr = ipr
        self.writer = writer
        # What the pinned map holds per device, a previous agent's entries included (devices gone
        # or re-addressed while no agent ran are corrected by the first rescan: prune, sync);
        # kept in step with every write, so a change is planned without reading the map again.
        self.held: Dict[int, Dict[PodAddrKey, int]] = {}
        for map_id in (POD_ADDRS, POD_ADDRS6):
            for key, value in writer.dump(map_id).items():
                self.held.setdefault(key.ifindex, {})[key] = value

    def prune(self, attached: Iterable[int]) -> None:
        """Forgets the devices not attached now."""
        for ifindex in set(self.held) - set(attached):
            self.forget(ifindex)

    def _write(self, ifindex: int, addrs: FrozenSet[str]) -> None:
        want = pod_addr_records(ifindex, addrs)
        write_device_map(self.writer, POD_ADDRS, want, have=self.held.get(ifindex, {}))
        if want:
            self.held[ifindex] = want
        else:
            self.held.pop(ifindex, None)

    def sync(self, ifindex: int) -> None:
        try:
            want = pod_routes(self.ipr, ifindex)
        except NetlinkError as exc:
            log.warning("device ifindex %d: routes not readable: %s", ifindex, exc)
            return
        held = self.held.get(ifindex)
        # Nothing to do when the entries are what the routes say (a device without routes has
        # no entries, not even a marker).
        if held is not None and want and held == pod_addr_records(ifindex, want):
            return
        if held is None and not want:
            return
        self._write(ifindex, want)
        log.info("device ifindex %d: pod addresses %s", ifindex, ",".join(sorted(want)) or "none")

    def forget(self, ifindex: int) -> None:
        if ifindex in self.held:
            self._write(ifindex, frozenset())


class Attacher:
    """Keeps the programs attached to every device whose name matches the patterns, including
    devices that appear later (a CNI creating pod veths), and, with `pod_addrs`, the addresses
    each device's pod may use."""

    def __init__(self, ipr: IPRoute, patterns: Iterable[str], ingress: Program, egress: Program,
                 pod_addrs: Optional[PodAddresses] = None, exclude: Sequence[str] = ()):
        self.ipr = ipr
        self.patterns = list(patterns)
        # Node devices (--node-device) win: one device cannot run both programs at one hook.
        self.exclude = list(exclude)
        self.ingress = ingress
        self.egress = egress
        self.pod_addrs = pod_addrs
        self.attached: Dict[int, str] = {}

    def consider(self, ifindex: int, ifname: Optional[str]) -> None:
        if not ifname or not matches(ifname, self.patterns) or self.attached.get(ifindex) == ifname:
            return
        if matches(ifname, self.exclude):
            return
        try:
            attach(self.ipr, ifindex, self.ingress, self.egress)
        except NetlinkError as exc:
            # The device can vanish between the event and the attach (a pod deleted at once).
            log.warning("device %s (ifindex %d): attach failed: %s", ifname, ifindex, exc)
            return
        self.attached[ifindex] = ifname
        log.info("device %s (ifindex %d): programs attached", ifname, ifindex)
        self.routes_changed(ifindex)

    def reattach(self, ifindex: int) -> bool:
        """Puts the programs back on a device attached to before (they were removed under the
        agent); False when that fails."""
        name = self.attached.get(ifindex)
        if name is None:
            return False
        try:
            attach(self.ipr, ifindex, self.ingress, self.egress)
        except NetlinkError as exc:
            log.warning("device %s (ifindex %d): re-attach failed: %s", name, ifindex, exc)
            return False
        return True

    def routes_changed(self, ifindex: int) -> None:
        """A route through `ifindex` came or went."""
        if self.pod_addrs is not None and ifindex in self.attached:
            self.pod_addrs.sync(ifindex)

    def forget(self, ifindex: int) -> None:
        name = self.attached.pop(ifindex, None)
        if self.pod_addrs is not None:
            self.pod_addrs.forget(ifindex)
        if name:
            log.info("device %s (ifindex %d): gone", name, ifindex)

    def rescan(self) -> None:
        """Attaches to every matching device present now; drops devices that went away."""
        present = links(self.ipr)
        for ifindex in list(self.attached):
            if present.get(ifindex) != self.attached[ifindex]:
                self.forget(ifindex)
        for ifindex, ifname in sorted(present.items()):
            self.consider(ifindex, ifname)
        for ifindex in list(self.attached):
            self.routes_changed(ifindex)
        if self.pod_addrs is not None:
            self.pod_addrs.prune(self.attached)


class LinkMonitor:
    """Netlink link and route events of both families (devices coming and going, pod routes
    changing) as a file descriptor for select()."""

    def __init__(self) -> None:
        from pyroute2.netlink.rtnl import (RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
                                           RTMGRP_TC)

        self.ipr = IPRoute()
        # tc events too: a filter or qdisc removed under the agent is put back at once.
        self.ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_TC)

    def fileno(self) -> int:
        return self.ipr.fileno()

    def events(self) -> List[Tuple[str, int, Optional[str]]]:
        """Pending events as (RTM_NEWLINK | RTM_DELLINK, ifindex, ifname),
        (RTM_NEWROUTE | RTM_DELROUTE, out ifindex, None), (RTM_DELTFILTER | RTM_DELQDISC,
        ifindex, None), or (OVERRUN, 0, None) when the kernel dropped events (a burst larger
        than the socket's buffer): the caller must look at everything again."""
        out = []
        try:
            msgs = self.ipr.get()
        except OSError as exc:
            if exc.errno != ENOBUFS:
                raise
            log.warning("netlink events lost (%s): rescanning every device", exc.strerror)
            return [(OVERRUN, 0, None)]
        for msg in msgs:
            event = msg.get("event")
            if event in ("RTM_DELTFILTER", "RTM_DELQDISC"):
                out.append((event, msg["index"], None))
            elif event in ("RTM_NEWLINK", "RTM_DELLINK"):
                out.append((event, msg["index"], msg.get_attr("IFLA_IFNAME")))
            elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
                oif = msg.get_attr("RTA_OIF")
                if oif:
                    out.append((event, oif, None))
        return out

    def close(self) -> None:
        self.ipr.close()
