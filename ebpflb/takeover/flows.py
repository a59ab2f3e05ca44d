"""Which of netfilter's connections a takeover from kube-proxy imports, and how (pure).

kube-proxy's flows live in netfilter's conntrack, each with the backend its rules chose. At a
takeover (ebpflb/takeover/run.py) every flow whose original destination is one of the frontends
the data plane now serves is imported into ebpflb's conntrack with that backend, so no flow moves:

- first as a flow netfilter translates (CT_F_NETFILTER): its packets pass the programs untouched
  and netfilter's entry rewrites them, as before the programs were attached;
- then, one flow at a time, handed over: held for the moment its netfilter entry takes to delete
  (CT_F_HANDOVER), then translated by the data path itself, to the same backend.

A flow netfilter also SNATed (kube-proxy masquerades traffic from outside the cluster, and a pod
reaching itself) keeps its netfilter entry to its end: its replies come back to a source port
netfilter chose. A flow of a host-network client is left alone: its socket's packets never meet
the TC programs' frontend lookup as they do for pods (the socket hooks translate new ones); so is
one whose client is behind a device no program is attached to, and one netfilter translates to
a destination ebpflb does not serve (a Service it refused, a CNI's hostPort): netfilter keeps
translating those (the takeover keeps its NAT alive for them, ebpflb/takeover/nat_keeper.py).

Input is what ebpflb/takeover/nf_conntrack.py reads; output is what
ebpflb/dataplane/takeover_maps.py writes. Nothing here touches the kernel.
"""
from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..maps import BACKENDS, CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_EXTERNAL, SvcKey
from ..explain import frontend_record

# include/uapi/linux/netfilter/nf_conntrack_common.h
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
# include/uapi/linux/netfilter/nf_conntrack_tcp.h (enum tcp_conntrack)
TCP_SYN_SENT, TCP_SYN_RECV, TCP_ESTABLISHED = 1, 2, 3
TCP_FIN_WAIT, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_TIME_WAIT, TCP_CLOSE = 4, 5, 6, 7, 8
TCP_CLOSING_STATES = frozenset({TCP_FIN_WAIT, TCP_CLOSE_WAIT, TCP_LAST_ACK})
TCP_OVER_STATES = frozenset({TCP_TIME_WAIT, TCP_CLOSE})

# Where a client's packets meet the programs, by the route to it (the kernel edge decides).
SIDE_POD = "pod"  # behind a pod device: lb4_from_pod
SIDE_NODE = "node"  # behind a node device: XDP or lb4_node_in
SIDE_LOCAL = "local"  # an address of the node itself: a host-network socket
SIDE_OTHER = "other"  # behind a device no program is attached to (an overlay, an unnamed device)

# Why a flow to a frontend is not imported, or is kept with netfilter (the report's words).
NOT_TRANSLATED = "not translated (no DNAT, no IPVS real server)"
OVER = "closed (TIME_WAIT or CLOSE)"
HOST_CLIENT = "a host-network client: netfilter keeps translating it to its end"
SNATED = "SNATed by netfilter too: its replies come back to netfilter's source port"
UNATTACHED = "behind a device ebpflb is not attached to: netfilter keeps translating it"
NOT_SERVED = "translated by netfilter to a frontend ebpflb does not serve: netfilter keeps it"


@dataclass(frozen=True)
class NfFlow:
    """One netfilter conntrack entry as read (ebpflb/takeover/nf_conntrack.py): the original and
    reply tuples as (source, source port, destination, destination port)."""

    family: int  # 4 or 6
    proto: int  # IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP
    orig: Tuple[str, int, str, int]
    reply: Tuple[str, int, str, int]
    status: int = IPS_SEEN_REPLY | IPS_ASSURED | IPS_DST_NAT
    tcp_state: Optional[int] = None
    timeout: int = 0
    mark: int = 0
    zone: int = 0

    @property
    def dnat(self) -> bool:
        return bool(self.status & IPS_DST_NAT)

    @property
    def snat(self) -> bool:
        return bool(self.status & IPS_SRC_NAT)

    @property
    def assured(self) -> bool:
        return bool(self.status & IPS_ASSURED)

    @property
    def seen_reply(self) -> bool:
        return bool(self.status & IPS_SEEN_REPLY)

    @property
    def key(self) -> Tuple[int, int, Tuple[str, int, str, int], int]:
        """What identifies the flow across two reads: its original tuple."""
        return (self.family, self.proto, self.orig, self.zone)

    def __str__(self) -> str:
        src, sport, dst, dport = self.orig
        proto = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP"}.get(self.proto, self.proto)
        return f"{_ep(src, sport)} -> {_ep(dst, dport)}/{proto}"


@dataclass(frozen=True)
class FlowImport:
    """One netfilter flow as ebpflb's conntrack takes it: the forward entry (client -> frontend,
    DNAT to the backend) and, for a flow handed over, the reply entry (backend -> client)."""

    flow: NfFlow
    svc_id: int
    backend_id: int  # 0: the backend is no longer one of the frontend's (the flow keeps it)
    frontend: str  # the frontend's record, as `service list` shows it
    backend: Tuple[str, int]
    flags: int  # the entry's CT_F_* (CT_F_NETFILTER is added by the writer)
    kept: Optional[str] = None  # why netfilter keeps translating it; None: handed over

    @property
    def client(self) -> Tuple[str, int]:
        return self.flow.orig[0], self.flow.orig[1]

    @property
    def destination(self) -> Tuple[str, int]:
        return self.flow.orig[2], self.flow.orig[3]


@dataclass(frozen=True)
class ImportPlan:
    imports: Tuple[FlowImport, ...]
    left: Tuple[Tuple[NfFlow, str], ...]  # flows to a frontend not imported, and why
    others: int  # netfilter flows to no frontend (not ours)

    @property
    def handed_over(self) -> Tuple[FlowImport, ...]:
        return tuple(i for i in self.imports if i.kept is None)

    @property
    def kept(self) -> Tuple[FlowImport, ...]:
        return tuple(i for i in self.imports if i.kept is not None)

    def left_by_reason(self) -> Dict[str, int]:
        return dict(Counter(reason for _, reason in self.left))


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _proto_ok(proto: int) -> bool:
    return proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP)


def _state_flags(flow: NfFlow) -> int:
    """ebpflb's TCP state bits for a flow netfilter saw in `tcp_state`."""
    if flow.proto != socket.IPPROTO_TCP:
        return 0
    state = flow.tcp_state or TCP_ESTABLISHED
    flags = CT_F_ESTABLISHED if state >= TCP_ESTABLISHED else 0
    if state in TCP_CLOSING_STATES:
        flags |= CT_F_CLOSING
    return flags


def translated(flow: NfFlow) -> bool:
    """Whether the flow's destination was rewritten: netfilter's DNAT (kube-proxy's iptables
    and nftables modes), or IPVS (its IPVS mode, with net/ipv4/vs/conntrack=1), which changes the
    reply tuple to the real server's without setting IPS_DST_NAT."""
    return flow.dnat or (flow.reply[0], flow.reply[1]) != (flow.orig[2], flow.orig[3])


def plan_imports(flows: Iterable[NfFlow], snapshot,
                 side_of: Callable[[str], str]) -> ImportPlan:
    """The imports of `flows` against the frontends `snapshot` (ebpflb.apply.read_snapshot)
    holds. `side_of(client address)` says where the client's packets meet the programs
    (SIDE_POD, SIDE_NODE or SIDE_LOCAL)."""
    imports: List[FlowImport] = []
    left: List[Tuple[NfFlow, str]] = []
    others = 0
    backends_of: Dict[int, Dict[Tuple[str, int, int], int]] = {}
    for bid, be in snapshot[BACKENDS].items():
        backends_of.setdefault(be.svc_id, {})[(be.addr, be.port, be.proto)] = bid
    for flow in flows:
        if not _proto_ok(flow.proto):
            continue
        client, cport, dst, dport = flow.orig
        side = side_of(client)
        key, svc = frontend_record(snapshot, SvcKey(dst, dport, flow.proto), side == SIDE_NODE)
        if svc is None:
            if translated(flow):
                left.append((flow, NOT_SERVED))  # a Service ebpflb refused, a hostPort...
            else:
                others += 1
            continue
        if not translated(flow):
            left.append((flow, NOT_TRANSLATED))
            continue
        if flow.proto == socket.IPPROTO_TCP and flow.tcp_state in TCP_OVER_STATES:
            left.append((flow, OVER))
            continue
        if side in (SIDE_LOCAL, SIDE_OTHER):
            left.append((flow, HOST_CLIENT if side == SIDE_LOCAL else UNATTACHED))
            continue
        baddr, bport, rdst, rdport = flow.reply
        snated = flow.snat or (rdst, rdport) != (client, cport)
        flags = _state_flags(flow) | (CT_F_EXTERNAL if side == SIDE_NODE else 0)
        bid = backends_of.get(svc.svc_id, {}).get((baddr, bport, flow.proto), 0)
        imports.append(FlowImport(flow, svc.svc_id, bid, str(key), (baddr, bport), flags,
                                  SNATED if snated else None))
    return ImportPlan(tuple(imports), tuple(left), others)


def new_since(plan: ImportPlan, done: Iterable[NfFlow]) -> ImportPlan:
    """`plan` without the flows already imported (by their original tuple): a second read of
    netfilter's conntrack after attaching finds the flows born in between, and the old ones
    again."""
    seen = {f.key for f in done}
    return ImportPlan(tuple(i for i in plan.imports if i.flow.key not in seen), plan.left,
                      plan.others)
