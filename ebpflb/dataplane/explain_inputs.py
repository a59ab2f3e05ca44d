"""What `ebpflb explain` reads from the kernel besides the control-plane maps (the kernel edge of
ebpflb.explain and ebpflb.explain_socket): the device a packet arrives on (a pod device's listed
addresses, from lb4_pod_addrs) and which backends are routed through a node device (the FIB, as
the programs' bpf_fib_lookup sees it, and lb4_node_ifs), so the explanation follows the program's
path; the flow's conntrack entries as explain reads them. ebpflb/views.py joins these with the
prediction."""
import socket
from typing import Any, Dict, Iterable, Optional

from ..addresses import format_address
from ..explain import NODE, POD, ConntrackView, Device
from ..maps import (CT_F_SRC_NAT, NODE_IFS, NODE_IFS6, POD_ADDR_MARKER, POD_ADDR_MARKER6, POD_ADDRS,
                    POD_ADDRS6)
from .bcc_maps import BccMapReader, CtEntry


def pod_addresses(bpf: Any, ifindex: int, ipv6: bool = False) -> Optional[frozenset]:
    """The addresses lb4_pod_addrs (lb6_pod_addrs) lists for a pod device; None when the device
    is not listed for that family (every source passes there)."""
    map_id, marker = (POD_ADDRS6, POD_ADDR_MARKER6) if ipv6 else (POD_ADDRS, POD_ADDR_MARKER)
    addrs = {key.addr for key in BccMapReader(bpf).dump(map_id) if key.ifindex == ifindex}
    # The agent's marker says this device's addresses are known (ebpflb.maps.PodAddrKey).
    return frozenset(addrs - {marker}) if marker in addrs else None


def remote_backends(bpf: Any, ipr: Any, backends: Iterable[str]) -> Dict[str, str]:
    """Backend address -> the address of the node device its route leaves by (what a flow to it
    from outside is SNATed to), for the backends routed through a node device."""
    reader = BccMapReader(bpf)
    node_ifs = {family: {ifindex: value.addr for ifindex, value in reader.dump(map_id).items()}
                for family, map_id in ((4, NODE_IFS), (6, NODE_IFS6))}
    out = {}
    for addr in backends:
        family_ifs = node_ifs[6 if ":" in addr else 4]
        try:
            route = ipr.route("get", dst=addr)[0]
        except Exception:  # noqa: BLE001 - netlink: no route is an answer too (then: local)
            continue
        oif = route.get_attr("RTA_OIF")
        if oif in family_ifs:
            out[addr] = family_ifs[oif]
    return out


def device(bpf: Any, ifname: Optional[str], outside: bool, backends: Iterable[str],
           ipv6: bool = False) -> Device:
    """The explain Device for a packet (of IPv6 with `ipv6`) arriving on `ifname` (None: not
    known), from outside the cluster (a node device) or from a pod."""
    from pyroute2 import IPRoute

    ifindex = socket.if_nametoindex(ifname) if ifname else 0
    if not outside:
        return Device(POD, ifindex, pod_addresses(bpf, ifindex, ipv6) if ifindex else None)
    with IPRoute() as ipr:
        return Device(NODE, ifindex, None, remote_backends(bpf, ipr, backends))


def conntrack_view(entry: CtEntry, now_ns: int, with_device: bool = True) -> ConntrackView:
    """A conntrack entry as ebpflb.explain reads it, aged at `now_ns` (CLOCK_MONOTONIC, the clock
    of bpf_ktime_get_ns()); without `with_device` its ifindex is 0: the device binding is not
    checked."""
    return ConntrackView(format_address(entry.nat_addr, entry.nat_port), entry.backend_id,
                         (now_ns - entry.created_ns) / 1e9, (now_ns - entry.last_seen_ns) / 1e9,
                         format_address(entry.nat2_addr, entry.nat2_port)
                         if entry.flags & CT_F_SRC_NAT else None,
                         flags=entry.flags, half_open=entry.half_open,
                         ifindex=entry.ifindex if with_device else 0)
