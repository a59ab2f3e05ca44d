"""Attaching the TC programs to pod-facing devices, and removing them (the kernel edge of the
agent, next to the loader).

Each device gets a clsact qdisc and, at one filter priority of its own, lb4_from_pod on ingress and
lb4_to_pod on egress. `replace-filter` swaps a program in place, so re-attaching (an agent restart,
an upgrade) never leaves a device without one. Filters are recognised by their name prefix, so
cleanup removes ours and nothing else.
"""
import fnmatch
import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

FILTER_PRIO = 0xEB1  # the pref our filters use; chosen to stay clear of tc's defaults
FILTER_HANDLE = ":1"
FILTER_PREFIX = "ebpflb_"
INGRESS = "ffff:fff2"
EGRESS = "ffff:fff3"
_PARENTS = {INGRESS: 0xFFFFFFF2, EGRESS: 0xFFFFFFF3}
EEXIST, ENOENT, ENODEV, EINVAL = 17, 2, 19, 22


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


def _our_filters(ipr: IPRoute, ifindex: int) -> Tuple[List[Tuple[str, int]], int]:
    """Our filters on a device as (parent, prio), and how many filters of others remain."""
    ours: List[Tuple[str, int]] = []
    others = 0
    for parent, parent_id in _PARENTS.items():
        try:
            filters = ipr.get_filters(index=ifindex, parent=parent_id)
        except NetlinkError as exc:
            if exc.code in (EINVAL, ENOENT, ENODEV):  # no clsact on this device
                continue
            raise
        for f in filters:
            if not f["handle"]:
                continue  # the per-priority chain header tc reports before the filters
            opts = f.get_attr("TCA_OPTIONS")
            name = (opts.get_attr("TCA_BPF_NAME") if opts else None) or ""
            if f.get_attr("TCA_KIND") == "bpf" and name.startswith(FILTER_PREFIX):
                ours.append((parent, f["info"] >> 16))
            else:
                others += 1
    return ours, others


def detach(ipr: IPRoute, ifindex: int) -> bool:
    """Removes our filters from a device, and its clsact qdisc when nothing else uses it.
    Returns True when there was anything of ours."""
    ours, others = _our_filters(ipr, ifindex)
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


def detach_all(ipr: IPRoute) -> List[str]:
    """Removes our programs from every device of the current network namespace."""
    removed = []
    for ifindex, ifname in links(ipr).items():
        if detach(ipr, ifindex):
            removed.append(ifname)
    return removed


class Attacher:
    """Keeps the programs attached to every device whose name matches the patterns, including
    devices that appear later (a CNI creating pod veths)."""

    def __init__(self, ipr: IPRoute, patterns: Iterable[str], ingress: Program, egress: Program):
        self.ipr = ipr
        self.patterns = list(patterns)
        self.ingress = ingress
        self.egress = egress
        self.attached: Dict[int, str] = {}

    def consider(self, ifindex: int, ifname: Optional[str]) -> None:
        if not ifname or not matches(ifname, self.patterns) or self.attached.get(ifindex) == ifname:
            return
        try:
            attach(self.ipr, ifindex, self.ingress, self.egress)
        except NetlinkError as exc:
            # The device can vanish between the event and the attach (a pod deleted at once).
            log.warning("device %s (ifindex %d): attach failed: %s", ifname, ifindex, exc)
            return
        self.attached[ifindex] = ifname
        log.info("device %s (ifindex %d): programs attached", ifname, ifindex)

    def forget(self, ifindex: int) -> None:
        name = self.attached.pop(ifindex, None)
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


class LinkMonitor:
    """Netlink link events (new and deleted devices) as a file descriptor for select()."""

    def __init__(self) -> None:
        from pyroute2.netlink.rtnl import RTMGRP_LINK

        self.ipr = IPRoute()
        self.ipr.bind(groups=RTMGRP_LINK)

    def fileno(self) -> int:
        return self.ipr.fileno()

    def events(self) -> List[Tuple[str, int, Optional[str]]]:
        """Pending events as (RTM_NEWLINK | RTM_DELLINK, ifindex, ifname)."""
        out = []
        for msg in self.ipr.get():
            event = msg.get("event")
            if event in ("RTM_NEWLINK", "RTM_DELLINK"):
                out.append((event, msg["index"], msg.get_attr("IFLA_IFNAME")))
        return out

    def close(self) -> None:
        self.ipr.close()
