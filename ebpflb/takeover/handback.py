"""Handing a node back to kube-proxy (`ebpflb cleanup --handback`), the takeover in reverse,
without moving a connection:

1. kube-proxy's rules must be back (kube-proxy started again): they serve every new flow from
   here on, so the programs are told to leave every flow they do not know to netfilter
   (LB_DP_F_NETFILTER_NEW);
2. each flow of ebpflb's conntrack that netfilter can carry is handed back: held for a moment
   (CT_F_HANDOVER), netfilter's plain entry for it (client -> backend, what netfilter saw of the
   translated packets) replaced by one that translates it (client -> frontend, DNAT to the same
   backend), then left to netfilter (CT_F_NETFILTER);
3. the data plane is removed (the caller, ebpflb.dataplane.cleanup).

What cannot be carried, and why (the report says it per flow kind): a flow ebpflb SNATed (to a
backend on another node, or given a port of its own) or a pod reaching itself has a source
netfilter never chose; such flows end when the data plane goes. Flows of the socket hooks need
nothing: their sockets are connected to the backend itself.

The plan is pure (plan_handback); the kernel's sides are injected as in ebpflb.takeover.run.
"""
from __future__ import annotations

import logging
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from ..maps import CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_HAIRPIN, CT_F_NETFILTER, CT_F_PORT_NAT, \
    CT_F_RESET, CT_F_SNAT
from .flows import TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_SYN_SENT

log = logging.getLogger(__name__)

PROTOS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP}
SNATED = "SNATed by ebpflb to a backend on another node: netfilter has no state for its port"
OWN_PORT = "given a source port of its own by ebpflb: netfilter never chose it"
HAIRPIN = "a pod reaching itself through ebpflb's hairpin address"


@dataclass(frozen=True)
class HandBackFlow:
    """One flow of ebpflb's conntrack as netfilter will take it: client -> frontend, DNAT to
    backend."""

    family: int
    proto: int
    client: Tuple[str, int]
    frontend: Tuple[str, int]
    backend: Tuple[str, int]
    tcp_state: Optional[int]  # TCP_CONNTRACK_* for netfilter's entry; None for UDP
    half_open: bool = False  # in ct4_syn / ct6_syn (the client has not ACKed yet)

    def __str__(self) -> str:
        ep = lambda a, p: f"[{a}]:{p}" if ":" in a else f"{a}:{p}"  # noqa: E731
        return (f"{ep(*self.client)} -> {ep(*self.frontend)} -> {ep(*self.backend)}/"
                f"{'TCP' if self.proto == socket.IPPROTO_TCP else 'UDP'}")


@dataclass(frozen=True)
class HandBackPlan:
    flows: Tuple[HandBackFlow, ...]
    cannot: Dict[str, int]  # why not -> flows
    already: int  # already netfilter's (taken over and never handed over)
    closed: int = 0  # closed by both sides (or reset): nothing left to carry


def _tcp_state(flags: int) -> int:
    if flags & CT_F_CLOSING:
        return TCP_CLOSE_WAIT
    return TCP_ESTABLISHED if flags & CT_F_ESTABLISHED else TCP_SYN_SENT


def plan_handback(entries: Iterable[Any]) -> HandBackPlan:
    """The flows of `entries` (ebpflb.dataplane.bcc_maps.CtEntry, both tables, both families)
    netfilter can carry, and why the others cannot be."""
    flows: List[HandBackFlow] = []
    cannot: Counter = Counter()
    already = closed = 0
    entries = list(entries)
    # The replies' side of each flow: a TCP flow both sides closed is over.
    reply_closing = {(e.saddr, e.sport, e.daddr, e.dport, e.protocol)
                     for e in entries if e.direction == "reply" and e.flags & CT_F_CLOSING}
    for e in entries:
        if e.direction != "forward" or e.protocol not in PROTOS:
            continue
        flags = e.flags
        if flags & CT_F_NETFILTER:
            already += 1
            continue
        if flags & CT_F_RESET or (flags & CT_F_CLOSING and (
                e.nat_addr, e.nat_port, e.saddr, e.sport, e.protocol) in reply_closing):
            closed += 1
            continue
        reason = (SNATED if flags & CT_F_SNAT else OWN_PORT if flags & CT_F_PORT_NAT else
                  HAIRPIN if flags & CT_F_HAIRPIN else None)
        if reason:
            cannot[reason] += 1
            continue
        proto = PROTOS[e.protocol]
        flows.append(HandBackFlow(6 if ":" in e.saddr else 4, proto, (e.saddr, e.sport),
                                  (e.daddr, e.dport), (e.nat_addr, e.nat_port),
                                  _tcp_state(flags) if proto == socket.IPPROTO_TCP else None,
                                  e.half_open))
    return HandBackPlan(tuple(flows), dict(cannot), already, closed)


@dataclass
class HandBackReport:
    found: List[str] = field(default_factory=list)  # kube-proxy's rules, back on the node
    handed_back: int = 0
    cannot: Dict[str, int] = field(default_factory=dict)
    already: int = 0
    closed: int = 0
    ended: int = 0  # ended while the hand-back ran (their entries gone)
    failed: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)  # the data plane's parts, removed after

    def to_json(self) -> Dict[str, Any]:
        return {"found": self.found, "handed_back": self.handed_back, "cannot": self.cannot,
                "already_netfilter": self.already, "closed": self.closed, "ended": self.ended,
                "failed": self.failed,
                "removed": self.removed}

    def render(self) -> str:
        lines = [f"hand-back to kube-proxy ({', '.join(self.found)}): {self.handed_back} flows "
                 f"handed back to netfilter, {self.already} already netfilter's, {self.closed} "
                 f"closed, {sum(self.cannot.values())} could not be carried"]
        lines += [f"  {n} {why}" for why, n in sorted(self.cannot.items())]
        lines += [f"removed {item}" for item in self.removed]
        if self.failed:
            lines.append("failed:")
            lines += [f"  {item}" for item in self.failed]
        return "\n".join(lines)


class HandBackError(RuntimeError):
    """The hand-back cannot start (kube-proxy's rules are not back): nothing changed."""


def hand_back(bpf: Any, netfilter: Any, writes: Any,
              read_entries: Callable[[Any], Iterable[Any]]) -> HandBackReport:
    """Steps 1-2 (the caller removes the data plane after). `netfilter` as in
    ebpflb.takeover.run.Netfilter (removals() and swap()), `writes` as
    ebpflb.dataplane.takeover_maps, `read_entries` as ebpflb.dataplane.bcc_maps.read_conntrack."""
    report = HandBackReport()
    try:
        found = netfilter.removals()
    except (OSError, RuntimeError, ValueError) as exc:
        raise HandBackError(f"cannot read kube-proxy's rules: {exc}") from exc
    # kube-proxy translating Services: per-Service chains (not a canary or leftovers of a
    # kube-proxy that has not synced yet), or IPVS virtual services.
    found = [r for r in found if r.serving]
    if not found:
        raise HandBackError("kube-proxy is not serving Services on this node: start kube-proxy "
                            "first and let it sync (its rules serve every new flow once ebpflb "
                            "is gone); nothing changed")
    report.found = [r.describe() for r in found]
    writes.set_netfilter_new(bpf, True)
    plan = plan_handback(read_entries(bpf))
    report.cannot, report.already, report.closed = dict(plan.cannot), plan.already, plan.closed
    failed = 0
    for flow in plan.flows:
        try:
            if writes.hand_back(bpf, flow, lambda f=flow: netfilter.swap(f)):
                report.handed_back += 1
            else:
                report.ended += 1
        except (OSError, RuntimeError) as exc:
            failed += 1
            log.warning("hand-back of %s: %s", flow, exc)
    if failed:
        report.failed.append(f"{failed} flows not handed back: netfilter refused their entries "
                             "(the data plane stays: run the hand-back again)")
    return report
