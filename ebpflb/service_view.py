"""What is programmed, as people read it: turns a map snapshot (read from the kernel) into service
views for `ebpflb service list`, as a table or JSON (pure core; the CLI does the reading). Also
which programmed frontends a Service reference (NS/NAME or NS/NAME:PORT) names, for every
command that takes one."""
from dataclasses import asdict, dataclass
from ipaddress import ip_address
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .maps import (BACKENDS, NO_BACKEND, PROTO_NAMES, SERVICES, SLOT_REJECT, SLOTS, SRC_RANGES,
                   SVC_F_DRAINING, SVC_F_DROP_EMPTY, SVC_F_ETP_LOCAL, SVC_F_MAGLEV, SVC_F_SRC_RANGES,
                   SVC_META, Snapshot, frontend_kind)
from .model import TOPOLOGY_NODE, TOPOLOGY_ZONE
from .records import topology_of
from .addresses import format_address


@dataclass(frozen=True)
class BackendView:
    id: int
    address: str
    port: int
    slots: int  # how many selection slots point at it (its share of new flows); 0: draining


@dataclass(frozen=True)
class ServiceView:
    id: int
    frontend: str
    vip: str
    port: int
    protocol: str
    service: str
    kind: str  # ClusterIP | NodePort | LoadBalancer | ExternalIP
    algorithm: str  # random | maglev
    slots: int
    backends: Tuple[BackendView, ...]
    problems: Tuple[str, ...]  # inconsistencies found in the maps (should never happen)
    external_local: bool = False  # externalTrafficPolicy Local: local backends, client IP kept
    # loadBalancerSourceRanges; None when the frontend takes every source, () when it takes none
    source_ranges: Optional[Tuple[str, ...]] = None
    scope: str = "all"  # "all": every client; "external": traffic from outside (Local policy)
    draining: bool = False  # removed, kept only for its open connections (ebpflb.draining)
    # Endpoint hints that chose the backends: "PreferSameNode", "PreferSameZone", or "" (none).
    topology: str = ""
    # What a new flow gets while there is no backend: "reject" (no usable endpoint anywhere) or
    # "drop" (endpoints only on other nodes, under a Local policy).
    no_endpoint: str = "reject"
    # Slots of the reject share (a Gateway route's backendRefs that do not resolve): new flows
    # hashed there are refused.
    reject_slots: int = 0


def service_views(snapshot: Snapshot) -> List[ServiceView]:
    by_service: Dict[int, Dict[int, Any]] = {}
    for backend_id, value in snapshot[BACKENDS].items():
        by_service.setdefault(value.svc_id, {})[backend_id] = value
    ranges: Dict[int, List[str]] = {}
    for range_key in snapshot.get(SRC_RANGES, {}):
        ranges.setdefault(range_key.svc_id, []).append(range_key.cidr)
    out = []
    for key, svc in snapshot[SERVICES].items():
        own = by_service.get(svc.svc_id, {})
        counts: Dict[int, int] = {backend_id: 0 for backend_id in own}
        problems = []
        rejects = 0
        table = snapshot[SLOTS].get(svc.svc_id, ())
        for slot in range(svc.count):
            backend_id = table[slot] if slot < len(table) else NO_BACKEND
            if backend_id == NO_BACKEND:
                problems.append(f"slot {slot} missing")
            elif backend_id == SLOT_REJECT:
                rejects += 1
            elif backend_id not in own:
                problems.append(f"slot {slot}: backend {backend_id} is not this frontend's")
            else:
                counts[backend_id] += 1
        backends = [BackendView(i, own[i].addr, own[i].port, n) for i, n in counts.items()]
        backends.sort(key=lambda b: (_address_order(b.address), b.port))
        proto = PROTO_NAMES.get(key.proto, str(key.proto))
        out.append(ServiceView(svc.svc_id, str(key), key.vip, key.port, proto,
                               snapshot[SVC_META].get(svc.svc_id, ""), frontend_kind(svc.flags),
                               "maglev" if svc.flags & SVC_F_MAGLEV else "random", svc.count,
                               tuple(backends), tuple(problems), bool(svc.flags & SVC_F_ETP_LOCAL),
                               tuple(sorted(ranges.get(svc.svc_id, ()), key=_net_order))
                               if svc.flags & SVC_F_SRC_RANGES else None,
                               "external" if key.scope else "all",
                               bool(svc.flags & SVC_F_DRAINING), topology_of(svc.flags),
                               "drop" if svc.flags & SVC_F_DROP_EMPTY else "reject", rejects))
    out.sort(key=lambda v: (_address_order(v.vip), v.port, v.protocol, v.scope))
    return out


TOPOLOGY_NOTES = {TOPOLOGY_NODE: "(endpoint hints: only the endpoints hinted for this node)",
                  TOPOLOGY_ZONE: "(endpoint hints: only the endpoints hinted for this node's zone)"}


def _address_order(address: str) -> Tuple[int, int]:
    """IPv4 addresses before IPv6 ones, each family in numeric order."""
    addr = ip_address(address)
    return addr.version, int(addr)


def _net_order(cidr: str) -> Tuple[Tuple[int, int], int]:
    addr, _, prefix = cidr.partition("/")
    return _address_order(addr), int(prefix)


def to_json(views: List[ServiceView]) -> List[Dict[str, Any]]:
    return [asdict(v) for v in views]


NO_ENDPOINT_NOTES = {
    "reject": "(no usable endpoint: new flows rejected)",
    "drop": "(no usable endpoint here, some on other nodes, no_backend: new flows dropped)"}


def render_table(views: List[ServiceView], wide: bool = False) -> str:
    """The table of `service list`; `wide` adds the selection algorithm, the slot count and
    whom the record serves."""
    head = ("ID", "FRONTEND", "TYPE", "SERVICE") + (("ALGORITHM", "SLOTS", "SCOPE") if wide else ())
    rows = [head + ("BACKENDS",)]
    for v in views:
        lines = [f"{b.id} => {format_address(b.address, b.port)}" + ("" if b.slots else " (weight 0: draining)")
                 + (f" ({b.slots} slots)" if v.algorithm == "maglev" and b.slots else "")
                 for b in v.backends] or [NO_ENDPOINT_NOTES[v.no_endpoint]]
        if v.reject_slots:
            lines.append(f"(rejected: {v.reject_slots} of {v.slots} slots, the share of "
                         "backendRefs that do not resolve)")
        if v.draining:
            lines = ["(removed: kept for its open connections; new ones are not served)"]
        if v.external_local and v.scope == "external":
            lines.append("(from outside, externalTrafficPolicy Local: this node's backends, "
                         "client IP kept)")
        elif v.external_local:
            lines.append("(externalTrafficPolicy Local: pods reach every backend; traffic from "
                         "outside: see @external)")
        if v.source_ranges is not None:
            lines.append(f"(only from {', '.join(v.source_ranges) or 'nowhere'})")
        if v.topology:
            lines.append(TOPOLOGY_NOTES[v.topology])
        lines += [f"! {p}" for p in v.problems]
        cells = (str(v.id), v.frontend, v.kind, v.service)
        if wide:
            cells += (v.algorithm, str(v.slots), v.scope)
        rows.append(cells + (lines[0],))
        rows.extend(("",) * len(cells) + (line,) for line in lines[1:])
    n = len(head)
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:n], widths)) + "  " + r[n] for r in rows
    ).rstrip()


def service_matches(name: str, ref: str) -> bool:
    """Whether the frontend named `name` ("namespace/name:port", as lb4_svc_meta holds it) is one
    `ref` names: NS/NAME:PORT names that port, NS/NAME every port of the Service."""
    return name == ref or name.partition(":")[0] == ref


def service_filter(ref: Optional[str]) -> Callable[[str], bool]:
    """NS/NAME or NS/NAME:PORT -> a predicate on a frontend's "namespace/name:port"; None takes
    every frontend. ValueError when `ref` is neither form."""
    if ref is None:
        return lambda name: True
    if "/" not in ref:
        raise ValueError(f"{ref!r} is not NS/NAME or NS/NAME:PORT")
    return lambda name: service_matches(name, ref)


def frontends_named(names: Mapping[int, str],
                    refs: Iterable[str]) -> Tuple[List[int], List[str]]:
    """The ids of the frontends (service id -> name, lb4_svc_meta) any of `refs` names, and the
    refs that name none."""
    refs = list(refs)
    ids = [i for i, name in names.items() if any(service_matches(name, r) for r in refs)]
    unknown = [r for r in refs if not any(service_matches(n, r) for n in names.values())]
    return ids, unknown


def service_report(views: List[ServiceView], status: Optional[Mapping[str, Any]],
                   wanted: Callable[[str], bool] = lambda name: True) -> Dict[str, Any]:
    """`ebpflb service list`'s document: the views and, from the agent's status file (`status`,
    for --all), the Services it skipped that `wanted` takes, its node devices and its
    healthCheckNodePorts. One shape with or without the status: what it adds is None without
    it."""
    skipped = ([s for s in status.get("skipped", []) if wanted(s.get("service", "") + ":")
                or wanted(s.get("service", ""))] if status is not None else None)
    return {"services": to_json(views), "skipped": skipped,
            "node_devices": status.get("node_devices", []) if status is not None else None,
            "health_check_ports": (status.get("health_check_ports", [])
                                   if status is not None else None)}


def render_report(views: List[ServiceView], report: Mapping[str, Any], wide: bool = False) -> str:
    """`service list` for people: the table, then what the agent's status adds (service_report),
    when it was read."""
    lines = [render_table(views, wide=wide)]
    skipped = report["skipped"]
    if skipped is not None:
        lines.append(f"\nskipped ({len(skipped)}):" if skipped else "\nskipped: none")
        lines += [f"  {item['service']}: {item['reason']}" for item in skipped]
        lines.append("node devices: " + (", ".join(f"{d['device']} {d['address'] or '-'} "
                                                   f"({d['hook']})"
                                                   for d in report["node_devices"]) or "none"))
        ports = report["health_check_ports"]
        if ports:
            lines.append("healthCheckNodePorts: " + ", ".join(map(str, ports)))
    return "\n".join(lines)
