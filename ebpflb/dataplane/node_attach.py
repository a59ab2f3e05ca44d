"""Attaching the north-south programs to node devices (the kernel edge of the agent, beside
attach.py, which does the pod-facing devices).

A node device is where traffic from outside the cluster arrives (eth0, a bond). It gets:
- in TC mode, lb4_node_in on TC ingress and lb4_node_out on TC egress;
- in XDP mode, lb4_node_xdp at XDP as well, in front of the same two TC programs: XDP finishes
  what it can and leaves the rest (a neighbour not resolved yet, a reject to send) to TC, and
  replies of local backends can only be rewritten at TC egress (XDP has no egress hook).
  Native XDP is tried first and generic XDP used where the driver has none (`--xdp-mode`).
  Generic XDP gets its own build of the program (lb4_xdp_generic): it cannot keep skb->csum right
  for a packet it rewrites and passes up, so it leaves flows to local backends to TC.
- an entry in lb4_node_ifs (ifindex -> its IPv4 address): a route to a backend through a node
  device means the backend is on another node, and flows to it are SNATed to that address.
XDP programs are recognised as ours by their name, so cleanup removes ours and nothing else.
"""
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pyroute2 import IPRoute

from ..maps import NODE_IFS, NODE_IFS6, NodeIfValue
from .attach import Program, attach, links, matches
from .device_maps import write_device_map
from .libbpf import prog_name
from .loader import PROG_NODE_XDP, PROG_NODE_XDP_GENERIC

log = logging.getLogger(__name__)

NODE_MODES = ("xdp", "tc")
XDP_MODES = ("auto", "native", "generic")
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_PROG_NAMES = (PROG_NODE_XDP, PROG_NODE_XDP_GENERIC)  # ours, by name
# IFLA_XDP_ATTACHED, as a number or as pyroute2 decodes it.
_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", "xdp": "native",
                   "xdpgeneric": "generic", "xdpoffload": "offload"}


def device_ipv4(ipr: IPRoute, ifindex: int) -> Optional[str]:
    """The first IPv4 address of a device (its primary), or None."""
    for msg in ipr.get_addr(family=socket.AF_INET, index=ifindex):
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if addr:
            return addr
    return None


def device_ipv6(ipr: IPRoute, ifindex: int) -> Optional[str]:
    """The first global IPv6 address of a device, or None (link-local addresses are not
    routable towards other nodes: nothing to SNAT to)."""
    for msg in ipr.get_addr(family=socket.AF_INET6, index=ifindex):
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if addr and msg["scope"] == 0 and not ipaddress.IPv6Address(addr).is_link_local:
            return addr
    return None


def xdp_attached(ipr: IPRoute, ifindex: int) -> Tuple[Optional[str], int]:
    """(mode, program id) of the XDP program on a device, (None, 0) when there is none."""
    link = ipr.get_links(ifindex)[0]
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return None, 0
    mode = _ATTACHED_MODES.get(xdp.get_attr("IFLA_XDP_ATTACHED") or 0)
    return mode, xdp.get_attr("IFLA_XDP_PROG_ID") or 0


def attach_xdp(ifname: str, fns: Mapping[str, Any], xdp_mode: str) -> str:
    """Attaches (or atomically replaces) the XDP program of the mode it runs in (`fns`: mode ->
    bcc function); returns that mode."""
    from bcc import BPF  # the kernel edge

    tries = {"auto": ("native", "generic"), "native": ("native",), "generic": ("generic",)}[xdp_mode]
    dev = ifname.encode()  # bcc wants bytes
    errors = []
    for mode in tries:
        flags = XDP_FLAGS_DRV_MODE if mode == "native" else XDP_FLAGS_SKB_MODE
        other = XDP_FLAGS_SKB_MODE if mode == "native" else XDP_FLAGS_DRV_MODE
        try:
            BPF.remove_xdp(dev, other)  # a device holds one mode at a time
        except Exception:  # noqa: BLE001 - nothing attached in that mode
            pass
        try:
            BPF.attach_xdp(dev, fns[mode], flags)
            return mode
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception
            errors.append(f"{mode}: {exc}")
    raise OSError(f"XDP attach to {ifname} failed ({'; '.join(errors)})")


def detach_xdp(ipr: IPRoute, ifindex: int, ifname: str, owns=None) -> bool:
    """Removes our XDP program from a device (someone else's, or another ebpflb data plane's
    when `owns` says so, stays). True if there was ours."""
    from bcc import BPF

    mode, prog_id = xdp_attached(ipr, ifindex)
    if not prog_id or prog_name(prog_id) not in XDP_PROG_NAMES:
        return False
    if owns is not None and not owns(prog_id):
        return False
    flags = XDP_FLAGS_DRV_MODE if mode == "native" else XDP_FLAGS_SKB_MODE
    BPF.remove_xdp(ifname.encode(), flags)
    return True


def detach_xdp_all(ipr: IPRoute, owns=None) -> List[str]:
    return [name for index, name in links(ipr).items() if detach_xdp(ipr, index, name, owns)]


@dataclass
class NodeDevice:
    ifname: str
    address: Optional[str]
    xdp: Optional[str] = None  # the XDP mode it runs in, None in TC mode
    address6: Optional[str] = None  # its IPv6 SNAT address (lb6_node_ifs)


@dataclass
class NodeAttacher:
    """Keeps the node programs on every device matching the patterns, and lb4_node_ifs in step
    with their addresses (devices and addresses may come later)."""

    ipr: IPRoute
    patterns: Sequence[str]
    mode: str
    xdp_mode: str
    node_in: Program
    node_out: Program
    xdp_fns: Mapping[str, Any]  # XDP mode -> the bcc function of its program (attach_xdp)
    writer: Any  # the MapWriter lb4_node_ifs goes through (ebpflb.dataplane.device_maps)
    attached: Dict[int, NodeDevice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in NODE_MODES:
            raise ValueError(f"node mode {self.mode!r} is not one of {', '.join(NODE_MODES)}")
        if self.xdp_mode not in XDP_MODES:
            raise ValueError(f"XDP mode {self.xdp_mode!r} is not one of {', '.join(XDP_MODES)}")

    def consider(self, ifindex: int, ifname: Optional[str]) -> None:
        if not ifname or not matches(ifname, self.patterns):
            return
        address = device_ipv4(self.ipr, ifindex)
        address6 = device_ipv6(self.ipr, ifindex)
        known = self.attached.get(ifindex)
        if known and known.ifname == ifname:
            if known.address != address:
                self._set_node_if(ifindex, ifname, address)
                known.address = address
            if known.address6 != address6:
                self._set_node_if6(ifindex, address6)
                known.address6 = address6
            return
        try:
            attach(self.ipr, ifindex, self.node_in, self.node_out)
            xdp = attach_xdp(ifname, self.xdp_fns, self.xdp_mode) if self.mode == "xdp" else None
            if xdp is None:
                detach_xdp(self.ipr, ifindex, ifname)  # switched from XDP to TC mode
        except Exception as exc:  # noqa: BLE001 - netlink or bcc: the device may be gone
            log.warning("node device %s (ifindex %d): attach failed: %s", ifname, ifindex, exc)
            return
        self._set_node_if(ifindex, ifname, address)
        self._set_node_if6(ifindex, address6)
        self.attached[ifindex] = NodeDevice(ifname, address, xdp, address6)
        log.info("node device %s (ifindex %d, %s): programs attached at %s", ifname, ifindex,
                 address or "no IPv4 address", f"XDP ({xdp}) and TC" if xdp else "TC")

    def reattach(self, ifindex: int) -> bool:
        """Puts the programs back on a node device attached to before (they were removed under
        the agent); False when that fails."""
        dev = self.attached.get(ifindex)
        if dev is None:
            return False
        try:
            attach(self.ipr, ifindex, self.node_in, self.node_out)
            if dev.xdp:
                dev.xdp = attach_xdp(dev.ifname, self.xdp_fns, self.xdp_mode)
        except Exception as exc:  # noqa: BLE001 - netlink or bcc: the device may be gone
            log.warning("node device %s (ifindex %d): re-attach failed: %s", dev.ifname, ifindex,
                        exc)
            return False
        return True

    def _set_node_if(self, ifindex: int, ifname: str, address: Optional[str]) -> None:
        if address is None:
            # Without an address there is nothing to SNAT to: routes through this device are
            # not taken for remote backends until it has one.
            log.warning("node device %s has no IPv4 address: backends behind it are not SNATed",
                        ifname)
        want = {ifindex: NodeIfValue(address)} if address else {}
        write_device_map(self.writer, NODE_IFS, want, only=lambda key: key == ifindex)

    def _set_node_if6(self, ifindex: int, address6: Optional[str]) -> None:
        # Most nodes have no global IPv6 address: nothing to warn about.
        want = {ifindex: NodeIfValue(address6)} if address6 else {}
        write_device_map(self.writer, NODE_IFS6, want, only=lambda key: key == ifindex)

    def forget(self, ifindex: int) -> None:
        dev = self.attached.pop(ifindex, None)
        if dev:
            write_device_map(self.writer, NODE_IFS, {}, only=lambda key: key == ifindex)
            write_device_map(self.writer, NODE_IFS6, {}, only=lambda key: key == ifindex)
            log.info("node device %s (ifindex %d): gone", dev.ifname, ifindex)

    def rescan(self) -> None:
        present = links(self.ipr)
        for ifindex in list(self.attached):
            if present.get(ifindex) != self.attached[ifindex].ifname:
                self.forget(ifindex)
        for ifindex, ifname in sorted(present.items()):
            self.consider(ifindex, ifname)
        # Entries of devices that vanished while no agent ran.
        write_device_map(self.writer, NODE_IFS, {}, only=lambda key: key not in self.attached)
        write_device_map(self.writer, NODE_IFS6, {}, only=lambda key: key not in self.attached)

    def addresses(self) -> List[str]:
        """The addresses of the devices attached to (IPv4 and global IPv6)."""
        return sorted({a for d in self.attached.values() for a in (d.address, d.address6) if a})

    def present_addresses(self) -> List[str]:
        """The addresses of the matching devices present now, attached or not (the agent
        programs NodePorts on them before it attaches)."""
        return sorted({a for i, n in links(self.ipr).items() if matches(n, self.patterns)
                       for a in (device_ipv4(self.ipr, i), device_ipv6(self.ipr, i)) if a})
