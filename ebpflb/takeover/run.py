"""A takeover from kube-proxy, in the order that keeps every flow on its pod (the agent's
--takeover at its first start, and `ebpflb takeover`):

1. the maps are programmed for the Services of the agent's source (the agent did it; nothing is
   attached yet), and kube-proxy's rules found (ebpflb/takeover/kube_rules.py);
2. netfilter's conntrack is read and every flow to a frontend imported as one netfilter keeps
   translating (ebpflb/takeover/flows.py), and the programs told that unknown mid-stream TCP may be
   netfilter's (the grace);
3. the programs are attached (the agent does it): new flows are the data path's from here on;
4. netfilter's conntrack is read again, for the flows born between 2 and 3, and the grace ends;
   each flow is handed over to the data path (held while its netfilter entry is deleted), except
   those netfilter also SNATed, which it translates to their end;
5. kube-proxy's rules are removed, one transaction per table, every other rule left alone.

The kernel's side is injected (Netfilter) so the order can be tested without it; the report says
what was imported, handed over, kept, left and removed, and what failed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from .flows import HOST_CLIENT, NOT_SERVED, UNATTACHED, ImportPlan, NfFlow, new_since, \
    plan_imports

# Flows netfilter goes on translating after the takeover (its NAT kept alive for them).
_NETFILTER_LEFT = (HOST_CLIENT, UNATTACHED, NOT_SERVED)

log = logging.getLogger(__name__)

SOURCES = ("auto", "iptables", "nftables", "ipvs")
SWAP_TRIES = 8  # a hand-back's add racing the backend's replies (Netfilter.swap)
# Which rule backends each --from takes (RuleRemoval.backend, IpvsRemoval.backend), and which of
# them must be found. kube-proxy's IPVS mode has iptables chains of its own too.
_BACKENDS = {"iptables": ("iptables-legacy", "iptables-nft"), "nftables": ("nftables",),
             "ipvs": ("ipvs", "iptables-legacy", "iptables-nft")}
_REQUIRED = {"iptables": ("iptables-legacy", "iptables-nft"), "nftables": ("nftables",),
             "ipvs": ("ipvs",)}


class TakeoverError(RuntimeError):
    """The takeover cannot start (nothing found where asked, a tool failing): nothing changed."""


class Netfilter:
    """The kernel edge of a takeover on netfilter's side: kube-proxy's rules, netfilter's
    conntrack. Tests replace it."""

    def removals(self) -> List[Any]:
        """kube-proxy's iptables and nftables rules, then its IPVS state (removed last: its
        ipsets go only once no rule uses them)."""
        from .ipvs import read_removals
        from .netfilter_rules import read_state

        return list(read_state().removals) + read_removals()

    def remove(self, removal: Any) -> None:
        if removal.backend == "ipvs":
            from .ipvs import remove_ipvs

            remove_ipvs(removal)
            return
        from .netfilter_rules import remove

        remove(removal)

    def flows(self) -> List[NfFlow]:
        from .nf_conntrack import dump

        return dump(4) + dump(6)

    def delete(self, flow: NfFlow) -> bool:
        from .nf_conntrack import delete

        return delete(flow)

    def kube_proxy_running(self) -> Optional[str]:
        from .kube_proxy_process import running

        return running()

    def keep_nat(self, families: Any) -> None:
        from . import nat_keeper

        nat_keeper.add(families)

    def swap(self, flow: Any) -> None:
        """A hand-back (ebpflb.takeover.handback.HandBackFlow): netfilter's plain entry of the
        flow (client -> backend, what it saw of the packets ebpflb translated) replaced by one that
        translates it (client -> frontend, DNAT to the backend). A reply of the backend arriving
        in between makes a plain entry backend -> client, whose tuple the new entry needs: that
        one goes too and the add is tried again."""
        import errno

        from .nf_conntrack import NfFlowError, add_dnat, delete

        (c, cp), (f, fp), (b, bp) = flow.client, flow.frontend, flow.backend
        plain = NfFlow(flow.family, flow.proto, (c, cp, b, bp), (b, bp, c, cp))
        from_backend = NfFlow(flow.family, flow.proto, (b, bp, c, cp), (c, cp, b, bp))
        delete(plain)
        for attempt in range(SWAP_TRIES):
            try:
                add_dnat(flow.family, flow.proto, c, cp, f, fp, b, bp, tcp_state=flow.tcp_state)
                return
            except NfFlowError as exc:
                if exc.code != errno.EEXIST or attempt == SWAP_TRIES - 1:
                    raise
                delete(from_backend)
                delete(plain)
                time.sleep(0.0002 * (1 << attempt))  # a burst of replies may be passing


@dataclass
class TakeoverReport:
    source: str
    dry_run: bool = False
    found: List[str] = field(default_factory=list)  # kube-proxy's state, one line per table
    imported: int = 0
    handed_over: int = 0
    kept: Dict[str, int] = field(default_factory=dict)  # why netfilter keeps them -> flows
    left: Dict[str, int] = field(default_factory=dict)  # why not imported -> flows
    other_flows: int = 0  # netfilter flows to no frontend
    removed: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    flows: List[Dict[str, str]] = field(default_factory=list)
    nat_keeper: List[str] = field(default_factory=list)  # families given ebpflb.takeover.nat_keeper

    def to_json(self) -> Dict[str, Any]:
        return {"source": self.source, "dry_run": self.dry_run, "found": self.found,
                "imported": self.imported, "handed_over": self.handed_over, "kept": self.kept,
                "left": self.left, "other_flows": self.other_flows, "removed": self.removed,
                "failed": self.failed, "flows": self.flows, "nat_keeper": self.nat_keeper}

    def summary(self) -> str:
        would = "would import" if self.dry_run else "imported"
        kept = sum(self.kept.values())
        text = (f"takeover from kube-proxy ({', '.join(self.found) or 'no kube-proxy state found'}): "
                f"{would} {self.imported} flows ({self.handed_over} "
                f"{'to hand' if self.dry_run else 'handed'} over to the data path, {kept} kept "
                f"with netfilter), {sum(self.left.values())} flows to frontends left alone, "
                f"{len(self.removed)} rule tables {'to remove' if self.dry_run else 'removed'}")
        if self.failed:
            text += f"; FAILED: {'; '.join(self.failed)}"
        return text

    def render(self) -> str:
        lines = [self.summary()]
        for title, items in (("kube-proxy state", self.found), ("rules removed" if not self.dry_run
                                                                  else "rules to remove",
                                                                  self.removed)):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {item}" for item in items]
        for title, counts in (("kept with netfilter", self.kept), ("left alone", self.left)):
            if counts:
                lines.append(f"{title}:")
                lines += [f"  {n} {reason}" for reason, n in sorted(counts.items())]
        if self.flows:
            lines.append("flows:")
            lines += [f"  {f['client']} -> {f['frontend']} -> {f['backend']}: {f['state']}"
                      for f in self.flows]
        if self.failed:
            lines.append("failed:")
            lines += [f"  {item}" for item in self.failed]
        return "\n".join(lines)


def _flow_row(imp: Any, state: str) -> Dict[str, str]:
    (caddr, cport), (daddr, dport), (baddr, bport) = imp.client, imp.destination, imp.backend
    ep = lambda a, p: f"[{a}]:{p}" if ":" in a else f"{a}:{p}"  # noqa: E731
    return {"client": ep(caddr, cport), "frontend": ep(daddr, dport), "backend": ep(baddr, bport),
            "service": imp.frontend, "state": state}


class Takeover:
    """One takeover: before_attach, then (the agent attaches) after_attach; or dry_run."""

    def __init__(self, source: str = "auto", netfilter: Optional[Netfilter] = None,
                 writes: Any = None) -> None:
        if source not in SOURCES:
            raise ValueError(f"takeover source {source!r} is not one of {', '.join(SOURCES)}")
        self.source = source
        self.netfilter = netfilter or Netfilter()
        self.writes = writes  # ebpflb.dataplane.takeover_maps, or a test's stand-in
        self.removals: List[Any] = []
        self.imported: List[Any] = []
        # Families with flows netfilter goes on translating (kept, or of host-network clients),
        # and their frontends (family, address, port, protocol): an IPVS virtual service of one
        # of those must stay, as IPVS translates them.
        self.netfilter_families: set = set()
        self.netfilter_frontends: set = set()
        self.report = TakeoverReport(source)

    def _find(self) -> List[Any]:
        try:
            found = self.netfilter.removals()
        except (OSError, ValueError, RuntimeError) as exc:
            raise TakeoverError(f"cannot read kube-proxy's rules: {exc}") from exc
        if self.source != "auto":
            found = [r for r in found if r.backend in _BACKENDS[self.source]]
            if not any(r.backend in _REQUIRED[self.source] for r in found):
                raise TakeoverError(f"--from {self.source}: no kube-proxy {self.source} rules "
                                    "on this node")
        self.report.found = [r.describe() for r in found]
        running = self.netfilter.kube_proxy_running() if found else None
        if running and not self.report.dry_run:
            raise TakeoverError(f"kube-proxy still runs on this node ({running}): it would write "
                                "its rules back; stop it on this node first")
        return found

    def _plan(self, snapshot: Any, side_of: Callable[[str], str]) -> ImportPlan:
        try:
            flows = self.netfilter.flows()
        except (OSError, RuntimeError) as exc:  # nf_conntrack.NfConntrackError is one
            raise TakeoverError(f"cannot read netfilter's conntrack: {exc}") from exc
        return plan_imports(flows, snapshot, side_of)

    def dry_run(self, snapshot: Any, side_of: Callable[[str], str]) -> TakeoverReport:
        """What a takeover would import and remove now; changes nothing."""
        self.report.dry_run = True
        self.removals = self._find()
        plan = self._plan(snapshot, side_of)
        self._count(plan)
        self.report.flows = [_flow_row(i, "hand over" if i.kept is None else f"keep: {i.kept}")
                             for i in plan.imports]
        self.report.removed = [r.describe() for r in self.removals]
        return self.report

    def _note_netfilter(self, plan: ImportPlan) -> None:
        flows = [i.flow for i in plan.kept] + [f for f, why in plan.left
                                               if why in _NETFILTER_LEFT]
        self.netfilter_families |= {f.family for f in flows}
        self.netfilter_frontends |= {(f.family, f.orig[2], f.orig[3], f.proto) for f in flows}

    def _count(self, plan: ImportPlan) -> None:
        self._note_netfilter(plan)
        self.report.imported += len(plan.imports)
        for imp in plan.kept:
            self.report.kept[imp.kept] = self.report.kept.get(imp.kept, 0) + 1
        self.report.left = plan.left_by_reason()
        self.report.other_flows = plan.others

    def before_attach(self, bpf: Any, snapshot: Any, side_of: Callable[[str], str]) -> bool:
        """Steps 1-2. False (nothing done) when there is no kube-proxy state and --from auto.
        TakeoverError when it cannot start; the maps then hold no import and no flag.
        The programs will be attached leaving every flow they do not know to netfilter
        (LB_DP_F_NETFILTER_NEW: kube-proxy's rules still serve), so nothing moves between this
        read and the next."""
        self.removals = self._find()
        if not self.removals:
            log.info("takeover: no kube-proxy rules found on this node; nothing to take over")
            return False
        plan = self._plan(snapshot, side_of)
        self.writes.set_netfilter_new(bpf, True)
        self.writes.write_imports(bpf, plan.imports)
        self.imported = list(plan.imports)
        self._count(plan)
        log.info("takeover: %d netfilter flows imported before attaching", len(plan.imports))
        return True

    def _import_more(self, bpf: Any, snapshot: Any, side_of: Callable[[str], str]) -> None:
        """Another read of netfilter's conntrack: the flows born since the last one (retried
        once; TakeoverError when it still fails)."""
        try:
            plan = self._plan(snapshot, side_of)
        except TakeoverError:
            plan = self._plan(snapshot, side_of)
        later = new_since(plan, [i.flow for i in self.imported])
        self.writes.write_imports(bpf, later.imports)
        self.imported += later.imports
        self.report.imported += len(later.imports)
        self._note_netfilter(later)
        for imp in later.kept:
            self.report.kept[imp.kept] = self.report.kept.get(imp.kept, 0) + 1

    def after_attach(self, bpf: Any, snapshot: Any,
                     side_of: Callable[[str], str]) -> TakeoverReport:
        """Steps 4-5, once the programs are attached. Failures are reported, not raised: the
        data path serves whatever is left over.

        New flows become the data path's in two steps, each followed by a read: the flows
        netfilter took while the programs passed every unknown flow (NETFILTER_NEW), then those
        born in the moment before new flows were taken here (when only TCP other than a SYN is
        still left to netfilter: NETFILTER_GRACE). A read that fails stops there, with the
        programs still leaving to netfilter what they may not know, and kube-proxy's rules in
        place."""
        if not self.removals:
            return self.report
        try:
            self._import_more(bpf, snapshot, side_of)
            self.writes.set_netfilter_grace(bpf, True)
            self.writes.set_netfilter_new(bpf, False)
            self._import_more(bpf, snapshot, side_of)
        except TakeoverError as exc:
            self.report.failed.append(f"reading netfilter's conntrack after attaching: {exc}; "
                                      "kube-proxy's rules left in place, and netfilter keeps "
                                      "what this node's programs may not know")
            return self.report
        self.writes.set_netfilter_grace(bpf, False)
        self._hand_over(bpf)
        self._remove_rules()
        return self.report

    def _hand_over(self, bpf: Any) -> None:
        failed = 0
        for imp in self.imported:
            if imp.kept is not None:
                self.report.flows.append(_flow_row(imp, f"kept: {imp.kept}"))
                continue
            try:
                moved = self.writes.hand_over(bpf, imp, lambda f=imp.flow: self.netfilter.delete(f))
            except (OSError, RuntimeError) as exc:
                failed += 1
                self.report.kept[f"netfilter entry not deleted ({exc})"] = \
                    self.report.kept.get(f"netfilter entry not deleted ({exc})", 0) + 1
                self.report.flows.append(_flow_row(imp, f"kept: delete failed: {exc}"))
                continue
            if moved:
                self.report.handed_over += 1
                self.report.flows.append(_flow_row(imp, "handed over"))
            else:
                self.report.flows.append(_flow_row(imp, "ended before its hand-over"))
        if failed:
            self.report.failed.append(f"{failed} flows stayed with netfilter: their entries "
                                      "could not be deleted")

    def _fresh_removals(self) -> List[Any]:
        """kube-proxy's state read again just before it is removed (the hand-over may have
        taken a while; a table changed since would refuse a stale transaction); the first read
        when that fails."""
        try:
            found = self.netfilter.removals()
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("takeover: kube-proxy's rules not read again (%s); removing what the "
                        "first read found", exc)
            return self.removals
        if self.source != "auto":
            found = [r for r in found if r.backend in _BACKENDS[self.source]]
        return found

    def _ipvs_left(self, removal: Any) -> Any:
        """`removal` without the virtual services (and their addresses on kube-ipvs0) of flows
        IPVS goes on translating: deleting one would end them."""
        import dataclasses

        keep = [s for s in removal.services if s.frontend in self.netfilter_frontends]
        if not keep:
            return removal
        addresses = {s.address for s in keep}
        self.report.failed.append(
            f"{len(keep)} IPVS virtual services left for the flows IPVS still translates "
            f"(masqueraded, or of host-network clients): {', '.join(str(s) for s in keep[:5])}; "
            "delete them (ipvsadm -D) once those flows end")
        return dataclasses.replace(
            removal, services=tuple(s for s in removal.services if s not in keep),
            addresses=tuple(a for a in removal.addresses if a not in addresses))

    def _remove_rules(self) -> None:
        if self.netfilter_families:
            # Without kube-proxy's rules netfilter could stop translating the flows it keeps.
            families = sorted(self.netfilter_families)
            try:
                self.netfilter.keep_nat(families)
            except (OSError, RuntimeError) as exc:
                self.report.failed.append(f"kube-proxy's rules left in place: netfilter must go "
                                          f"on translating the flows it keeps, and {exc}")
                return
            self.report.nat_keeper = [f"IPv{f}" for f in families]
        for removal in self._fresh_removals():
            if removal.backend == "ipvs":
                removal = self._ipvs_left(removal)
            try:
                self.netfilter.remove(removal)
            except (OSError, RuntimeError, ValueError) as exc:
                self.report.failed.append(f"removing {removal.describe()}: {exc}")
                continue
            self.report.removed.append(removal.describe())

