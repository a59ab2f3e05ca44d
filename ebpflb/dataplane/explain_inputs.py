"""What `ebpflb explain` reads from the kernel besides the control-plane maps (the kernel edge of
ebpflb.explain and ebpflb.explain_socket): the device a packet arrives on (a pod device's listed
addresses, from lb4_pod_addrs) and which backends are routed through a node device (the FIB, as
the programs' bpf_fib_lookup sees it, and lb4_node_ifs), so the explanation follows the program's
path; the flow's conntrack entries and the client's affinity binding. explain_packet and
explain_connect read all of it and return the prediction (the CLI only prints it)."""
import socket
import time
from typing import Any, Dict, Iterable, Optional, Tuple

from ..apply import read_snapshot
from ..explain import (NODE, POD, AffinityView, ConntrackView, Device, Explanation, Flow, explain,
                       frontend_record, reply_key)
from ..explain_socket import SocketExplanation, explain_socket, packet_path_note
from ..maps import BACKENDS, CT_F_SRC_NAT, SERVICES, SvcKey
from .bcc_maps import (CtEntry, be32_to_ip, lookup_affinity, lookup_conntrack,
                       lookup_sock_affinity)


class DeviceError(ValueError):
    """The device a packet is said to arrive on is not one of this network namespace."""


def pod_addresses(bpf: Any, ifindex: int) -> Optional[frozenset]:
    """The addresses lb4_pod_addrs lists for a pod device; None when the device is not listed
    (every source passes there)."""
    addrs, listed = set(), False
    for key in bpf[b"lb4_pod_addrs"].keys():
        if key.ifindex != ifindex:
            continue
        if key.addr == 0:
            listed = True  # the agent's marker: this device's addresses are known
        else:
            addrs.add(be32_to_ip(key.addr))
    return frozenset(addrs) if listed else None


def remote_backends(bpf: Any, ipr: Any, backends: Iterable[str]) -> Dict[str, str]:
    """Backend address -> the address of the node device its route leaves by (what a flow to it
    from outside is SNATed to), for the backends routed through a node device."""
    node_ifs = {key.value: be32_to_ip(value.addr) for key, value in bpf[b"lb4_node_ifs"].items()}
    out = {}
    for addr in backends:
        try:
            route = ipr.route("get", dst=addr)[0]
        except Exception:  # noqa: BLE001 - netlink: no route is an answer too (then: local)
            continue
        oif = route.get_attr("RTA_OIF")
        if oif in node_ifs:
            out[addr] = node_ifs[oif]
    return out


def device(bpf: Any, ifname: Optional[str], outside: bool, backends: Iterable[str]) -> Device:
    """The explain Device for a packet arriving on `ifname` (None: not known), from outside the
    cluster (a node device) or from a pod."""
    from pyroute2 import IPRoute

    ifindex = socket.if_nametoindex(ifname) if ifname else 0
    if not outside:
        return Device(POD, ifindex, pod_addresses(bpf, ifindex) if ifindex else None)
    with IPRoute() as ipr:
        return Device(NODE, ifindex, None, remote_backends(bpf, ipr, backends))


def conntrack_view(entry: CtEntry, now_ns: int, with_device: bool = True) -> ConntrackView:
    """A conntrack entry as ebpflb.explain reads it, aged at `now_ns` (CLOCK_MONOTONIC, the clock
    of bpf_ktime_get_ns()); without `with_device` its ifindex is 0: the device binding is not
    checked."""
    return ConntrackView(f"{entry.nat_addr}:{entry.nat_port}", entry.backend_id,
                         (now_ns - entry.created_ns) / 1e9, (now_ns - entry.last_seen_ns) / 1e9,
                         f"{entry.nat2_addr}:{entry.nat2_port}"
                         if entry.flags & CT_F_SRC_NAT else None,
                         flags=entry.flags, half_open=entry.half_open,
                         ifindex=entry.ifindex if with_device else 0)


def explain_packet(writer: Any, flow: Flow, outside: bool = False,
                   ifname: Optional[str] = None) -> Tuple[Explanation, Optional[str]]:
    """`ebpflb explain`: what the program of the device the packet arrives on (`ifname` in this
    network namespace, None: not known; a node device when `outside`) does with it, from the maps
    `writer` reads and what the kernel holds for the flow (its conntrack entries, the client's
    affinity binding, the device); with the note on the socket hooks' path
    (ebpflb.explain_socket.packet_path_note), None when there is none. DeviceError when `ifname`
    is not a device here."""
    from .sock_attach import read_mode

    bpf = writer.bpf
    snapshot = read_snapshot(writer)
    now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
    with_device = bool(ifname)  # without a device, ifindex 0: the binding is not checked
    entry = lookup_conntrack(bpf, flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto)
    ct = affinity = None
    table = {}
    if entry is not None:
        ct = conntrack_view(entry, now, with_device)
        rev = reply_key(flow, ct)  # the program checks it (a SNAT port still the flow's)
        reply = lookup_conntrack(bpf, rev.saddr, rev.sport, rev.daddr, rev.dport, flow.proto,
                                 reply=True)
        if reply is not None:
            table[rev] = conntrack_view(reply, now, with_device)
    key = SvcKey(flow.daddr, flow.dport, flow.proto)
    _, svc = frontend_record(snapshot, key, outside)  # from outside: a Local policy's own record
    bound = lookup_affinity(bpf, svc.svc_id, flow.saddr) if svc else None
    if bound is not None:
        affinity = AffinityView(bound[0], (now - bound[1]) / 1e9)
    backends = {b.addr for b in snapshot[BACKENDS].values() if svc and b.svc_id == svc.svc_id}
    try:
        dev = device(bpf, ifname, outside, backends)
    except OSError as exc:
        raise DeviceError(f"{ifname}: {exc.strerror or exc}") from exc
    result = explain(snapshot, flow, ct, affinity, device=dev, ct_table=table)
    return result, packet_path_note(read_mode(bpf), outside, key in snapshot[SERVICES])


def explain_connect(writer: Any, flow: Flow, host: bool, cookie: Optional[int] = None,
                    netns_cookie: Optional[int] = None) -> SocketExplanation:
    """`ebpflb explain --socket`: what the cgroup socket hooks do with a connect() or sendmsg() to
    the flow's destination by a host-network process (`host`) or a pod's, from the maps `writer`
    reads, the hooks' settings and the affinity binding of the process's network namespace (a
    host process's namespace cookie is the one the agent recorded; a pod's is `netns_cookie`,
    None: not known). `cookie` is the socket's (SO_COOKIE), None: not known."""
    from .sock_attach import read_host_cookie, read_mode

    bpf = writer.bpf
    snapshot = read_snapshot(writer)
    now = time.monotonic_ns()
    ns_cookie = read_host_cookie(bpf) if host else netns_cookie
    svc = snapshot[SERVICES].get(SvcKey(flow.daddr, flow.dport, flow.proto))
    bound = (lookup_sock_affinity(bpf, svc.svc_id, ns_cookie)
             if svc is not None and svc.affinity_timeout and ns_cookie else None)
    return explain_socket(snapshot, flow.daddr, flow.dport, flow.proto, read_mode(bpf), host,
                          cookie, AffinityView(bound[0], (now - bound[1]) / 1e9) if bound else None,
                          affinity_known=bool(ns_cookie))
