"""The kernel edge of a takeover from kube-proxy on ebpflb's side (ebpflb/takeover/run.py): the
data path's grace setting (lb_dp_cfg), the imported flows written into conntrack, and the
hand-over of one flow from netfilter to the data path. What is written is decided by
ebpflb/takeover/flows.py; netfilter's side is ebpflb/takeover/nf_conntrack.py."""
import socket
import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from .. import abi
from ..maps import CT_F_HANDOVER, CT_F_NETFILTER
from .bcc_maps import ip_to_be32, port_to_be16

DP_CFG = b"lb_dp_cfg"
NETFILTER_GRACE = abi.LB_DP_F_NETFILTER_GRACE
NETFILTER_NEW = abi.LB_DP_F_NETFILTER_NEW


def dp_flags(bpf: Any) -> int:
    """lb_dp_cfg's LB_DP_F_* flags."""
    t = bpf[DP_CFG]
    return int(t[t.Key(0)].flags)


def set_dp_flag(bpf: Any, flag: int, on: bool) -> None:
    t = bpf[DP_CFG]
    v = t[t.Key(0)]
    v.flags = (v.flags | flag) if on else (v.flags & ~flag)
    t[t.Key(0)] = v


def clear_dp_flags(bpf: Any) -> None:
    """Every LB_DP_F_* off: the programs take every flow (an agent starting to serve)."""
    if dp_flags(bpf):
        t = bpf[DP_CFG]
        v = t[t.Key(0)]
        v.flags = 0
        t[t.Key(0)] = v


def netfilter_grace(bpf: Any) -> bool:
    """Whether the programs leave unknown mid-stream TCP packets to netfilter (a takeover is
    under way, or one stopped half-way)."""
    return bool(dp_flags(bpf) & NETFILTER_GRACE)


def set_netfilter_grace(bpf: Any, on: bool) -> None:
    set_dp_flag(bpf, NETFILTER_GRACE, on)


def set_netfilter_new(bpf: Any, on: bool) -> None:
    """A hand-back: every flow not known here, new ones included, passes to netfilter."""
    set_dp_flag(bpf, NETFILTER_NEW, on)


def _addr(struct: Any, name: str, ip: str) -> Any:
    """The value of an address field of a key or entry for `ip`, in the field's own type."""
    if ":" not in ip:
        return ip_to_be32(ip)
    return type(getattr(struct, name)).from_buffer_copy(socket.inet_pton(socket.AF_INET6, ip))


def _table(bpf: Any, family: int, half_open: bool = False) -> Any:
    name = "ct6" if family == 6 else "ct4"
    return bpf[(name + "_syn" if half_open else name).encode()]


def _key(t: Any, saddr: str, sport: int, daddr: str, dport: int, proto: int, reply: bool) -> Any:
    k = t.Key()
    return t.Key(saddr=_addr(k, "saddr", saddr), daddr=_addr(k, "daddr", daddr),
                 sport=port_to_be16(sport), dport=port_to_be16(dport), proto=proto,
                 dir=1 if reply else 0, pad=0)


def _entry(t: Any, nat_addr: str, nat_port: int, flags: int, svc_id: int, backend_id: int,
           now_ns: int) -> Any:
    v = t.Leaf()
    v.created_ns = v.last_seen_ns = now_ns
    v.nat_addr = _addr(v, "nat_addr", nat_addr)
    v.nat_port = port_to_be16(nat_port)
    v.flags = flags
    v.svc_id = svc_id
    v.backend_id = backend_id
    return v


def forward_key(bpf: Any, imp: Any) -> Any:
    """The forward key of an imported flow: its client -> the frontend, as netfilter saw it."""
    t = _table(bpf, imp.flow.family)
    (client, cport), (dst, dport) = imp.client, imp.destination
    return _key(t, client, cport, dst, dport, imp.flow.proto, False)


def write_imports(bpf: Any, imports: Iterable[Any], now_ns: Optional[int] = None) -> int:
    """Writes each flow (ebpflb.takeover.flows.FlowImport) as one netfilter translates: its
    forward entry, and for a flow to be handed over its reply entry too (backend -> client,
    which replies only meet once netfilter's entry is gone). Returns the flows written."""
    now = time.monotonic_ns() if now_ns is None else now_ns  # bpf_ktime_get_ns's clock
    written = 0
    for imp in imports:
        t = _table(bpf, imp.flow.family)
        (client, cport), (dst, dport) = imp.client, imp.destination
        baddr, bport = imp.backend
        proto = imp.flow.proto
        if imp.kept is None:
            rk = _key(t, baddr, bport, client, cport, proto, True)
            t[rk] = _entry(t, dst, dport, imp.flags, imp.svc_id, imp.backend_id, now)
        t[_key(t, client, cport, dst, dport, proto, False)] = _entry(
            t, baddr, bport, imp.flags | CT_F_NETFILTER, imp.svc_id, imp.backend_id, now)
        written += 1
    return written


def _set_flags(t: Any, key: Any, set_: int, clear: int) -> bool:
    try:
        v = t[key]
    except KeyError:
        return False
    v.flags = (v.flags | set_) & ~clear
    t[key] = v
    return True


def _switch(t: Any, key: Any, during: Callable[[], Any], set_: int, clear: int) -> bool:
    """Holds the flow of `key` (its client's packets dropped, counted `handover`) while
    `during` runs, then sets and clears flags. When `during` fails the hold is lifted and the
    flow is left as it was (the exception propagates). False when the entry is gone."""
    if not _set_flags(t, key, CT_F_HANDOVER, 0):
        return False
    try:
        during()
    except BaseException:
        _set_flags(t, key, 0, CT_F_HANDOVER)
        raise
    # Read again: the programs may have tracked a FIN meanwhile.
    return _set_flags(t, key, set_, clear | CT_F_HANDOVER)


def hand_over(bpf: Any, imp: Any, delete_netfilter_entry: Callable[[], Any]) -> bool:
    """Moves one imported flow from netfilter to the data path: held while
    `delete_netfilter_entry` runs, then translated here to the same backend. When the delete
    fails the flow stays netfilter's. False when the flow's entry is gone (it ended, or was
    collected)."""
    return _switch(_table(bpf, imp.flow.family), forward_key(bpf, imp), delete_netfilter_entry,
                   0, CT_F_NETFILTER)


def hand_back(bpf: Any, flow: Any, swap_netfilter_entry: Callable[[], Any]) -> bool:
    """Moves one flow (ebpflb.takeover.handback.HandBackFlow) from the data path to netfilter:
    held while `swap_netfilter_entry` gives netfilter an entry that translates it, then passed
    untouched. When the swap fails the flow stays the data path's."""
    t = _table(bpf, flow.family, flow.half_open)
    (client, cport), (dst, dport) = flow.client, flow.frontend
    return _switch(t, _key(t, client, cport, dst, dport, flow.proto, False),
                   swap_netfilter_entry, CT_F_NETFILTER, 0)


def client_sides(ipr: Any, node_devices: Sequence[str],
                 pod_devices: Sequence[str] = ("lxc*",)) -> Callable[[str], str]:
    """Where a client's packets meet the programs (ebpflb.takeover.flows.SIDE_*), by the node's
    addresses and routes: an address of the node is a host-network client; one routed through a
    node device (--node-device) is outside the cluster; through a pod device (--device), a pod;
    through any other device (an overlay, a device no pattern names) no program sees it."""
    from ..takeover.flows import SIDE_LOCAL, SIDE_NODE, SIDE_OTHER, SIDE_POD
    from .attach import matches

    local = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()} | {"127.0.0.1", "::1"}
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    cache: Dict[str, str] = {}

    def side_of(addr: str) -> str:
        if addr in cache:
            return cache[addr]
        if addr in local:
            side = SIDE_LOCAL
        else:
            try:
                oif = ipr.route("get", dst=addr)[0].get_attr("RTA_OIF")
            except Exception:  # noqa: BLE001 - netlink: no route is an answer too
                oif = None
            name = names.get(oif, "")
            side = (SIDE_NODE if node_devices and matches(name, node_devices) else
                    SIDE_POD if matches(name, pod_devices) else SIDE_OTHER)
        cache[addr] = side
        return side

    return side_of
