"""`ebpflb explain`: which backend a flow reaches, and why (pure core; the CLI reads the maps).

The prediction repeats the data path step by step from a map snapshot: frontend lookup, then a
conntrack entry if one exists (it decides), else the frontend's loadBalancerSourceRanges (a new
flow from elsewhere is dropped), then flow hash -> slot -> backend, with the same hash
(ebpflb.flowhash) and seed the programs use. tests/bpf checks it against the program itself.
"""
import ipaddress
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

from .flowhash import FLOW_HASH_SEED, flow_hash
from .maps import (BACKENDS, BE_F_NO_NEW, NO_BACKEND, PROTO_NUMBERS, SERVICES, SLOTS, SRC_RANGES,
                   SVC_F_ETP_LOCAL, SVC_F_MAGLEV, SVC_F_SRC_RANGES, SVC_META, SvcKey,
                   frontend_kind)
from .model import SCOPE_EXTERNAL


@dataclass(frozen=True)
class Flow:
    saddr: str
    sport: int
    daddr: str
    dport: int
    protocol: str  # TCP | UDP

    @property
    def proto(self) -> int:
        return PROTO_NUMBERS[self.protocol]


@dataclass(frozen=True)
class ConntrackView:
    """The forward conntrack entry of the flow, if the kernel has one."""
    backend: str  # "ip:port" the flow is pinned to
    backend_id: int
    age_seconds: float
    idle_seconds: float
    snat: Optional[str] = None  # "ip:port" of this node, for a flow from outside to another node


@dataclass(frozen=True)
class AffinityView:
    """The client's session-affinity binding to the frontend, if the kernel has one."""
    backend_id: int
    idle_seconds: float


@dataclass(frozen=True)
class Explanation:
    flow: Flow
    verdict: str  # "pass", "drop", "dnat"
    reason: str
    frontend: Optional[str] = None
    kind: Optional[str] = None  # ClusterIP | NodePort | LoadBalancer | ExternalIP
    service: Optional[str] = None
    svc_id: Optional[int] = None
    algorithm: Optional[str] = None
    slots: Optional[int] = None
    hash: Optional[int] = None
    slot: Optional[int] = None
    hashed_backend: Optional[str] = None  # what the hash picks for a new flow
    hashed_backend_id: Optional[int] = None
    conntrack: Optional[ConntrackView] = None
    affinity_timeout: int = 0  # seconds; 0 when the Service has no ClientIP affinity
    affinity: Optional[AffinityView] = None
    affinity_backend: Optional[str] = None  # set when the binding decides
    backend: Optional[str] = None  # where this packet goes

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def parse_flow(src: str, dst: str, protocol: str) -> Flow:
    """Flow from "ip:port" strings; ValueError naming the bad argument."""
    def endpoint(value: str, what: str):
        ip, sep, port = value.rpartition(":")
        try:
            ipaddress.IPv4Address(ip)
            number = int(port) if sep else -1
        except ValueError:
            number = -1
        if not 1 <= number <= 65535:
            raise ValueError(f"{what} {value!r} is not IPv4:PORT (port 1-65535)")
        return ip, number

    saddr, sport = endpoint(src, "source")
    daddr, dport = endpoint(dst, "destination")
    proto = protocol.upper()
    if proto not in PROTO_NUMBERS:
        raise ValueError(f"protocol {protocol!r} is not tcp or udp")
    return Flow(saddr, sport, daddr, dport, proto)


def explain(snapshot, flow: Flow, conntrack: Optional[ConntrackView] = None,
            affinity: Optional[AffinityView] = None, outside: bool = False) -> Explanation:
    """`outside`: the flow arrives on a node device (from outside the cluster), not from a pod."""
    key = SvcKey(flow.daddr, flow.dport, flow.proto)
    svc = snapshot[SERVICES].get(key)
    if svc is None:
        return Explanation(flow, "pass", f"{key} is not a frontend: the packet passes untouched")
    if outside and frontend_kind(svc.flags) == "ClusterIP":
        return Explanation(flow, "drop", "a ClusterIP reached from outside the cluster: dropped",
                           frontend=str(key), kind="ClusterIP",
                           service=snapshot[SVC_META].get(svc.svc_id, ""), svc_id=svc.svc_id)
    if outside and svc.flags & SVC_F_ETP_LOCAL:
        # externalTrafficPolicy Local: traffic from outside uses the node-local record.
        key = key._replace(scope=SCOPE_EXTERNAL)
        svc = snapshot[SERVICES].get(key)
        if svc is None:
            return Explanation(flow, "drop", f"{key} is missing: dropped")
    common: Dict[str, Any] = dict(
        frontend=str(key), kind=frontend_kind(svc.flags),
        service=snapshot[SVC_META].get(svc.svc_id, ""), svc_id=svc.svc_id,
        algorithm="maglev" if svc.flags & SVC_F_MAGLEV else "random", slots=svc.count,
        affinity_timeout=svc.affinity_timeout, affinity=affinity if svc.affinity_timeout else None)
    if svc.count:
        h = flow_hash(int(ipaddress.IPv4Address(flow.saddr)), int(ipaddress.IPv4Address(flow.daddr)),
                      flow.sport, flow.dport, flow.proto, FLOW_HASH_SEED)
        slot = h % svc.count
        table = snapshot[SLOTS].get(svc.svc_id, ())
        backend_id = table[slot] if slot < len(table) and table[slot] != NO_BACKEND else None
        value = snapshot[BACKENDS].get(backend_id) if backend_id is not None else None
        common.update(hash=h, slot=slot, hashed_backend_id=backend_id,
                      hashed_backend=f"{value.addr}:{value.port}" if value else None)
    if conntrack is not None:
        return Explanation(flow, "dnat", "an established flow: conntrack decides",
                           conntrack=conntrack, backend=conntrack.backend, **common)
    if svc.flags & SVC_F_SRC_RANGES and not source_allowed(snapshot, svc.svc_id, flow.saddr):
        return Explanation(flow, "drop", f"a new flow from {flow.saddr}, outside the frontend's "
                           "loadBalancerSourceRanges: dropped", **common)
    bound = _affinity_backend(snapshot, svc, affinity)
    if bound is not None:
        return Explanation(flow, "dnat", "a new flow of a client with session affinity: its "
                           "binding decides", affinity_backend=bound, backend=bound, **common)
    if not common.get("hashed_backend"):
        if svc.flags & SVC_F_ETP_LOCAL and (outside or key.scope == SCOPE_EXTERNAL):
            why = ("the frontend has no backend on this node (externalTrafficPolicy Local): new "
                   "flows from outside are dropped")
            return Explanation(flow, "drop", why, **common)
        else:
            why = ("the frontend has no ready backend: new flows are rejected (TCP RST, ICMP port "
                   "unreachable)")
        return Explanation(flow, "reject", why, **common)
    return Explanation(flow, "dnat", "a new flow: the hash picks the slot, the slot the backend",
                       backend=common["hashed_backend"], **common)


def source_allowed(snapshot, svc_id: int, saddr: str) -> bool:
    """The data path's LPM lookup: does any of the frontend's source ranges hold the address?"""
    addr = ipaddress.IPv4Address(saddr)
    return any(key.svc_id == svc_id and addr in ipaddress.IPv4Network(key.cidr, strict=False)
               for key in snapshot.get(SRC_RANGES, {}))


def _affinity_backend(snapshot, svc, affinity: Optional[AffinityView]) -> Optional[str]:
    """The data path's rule: a fresh binding to a backend still of this frontend, not draining."""
    if not svc.affinity_timeout or affinity is None or affinity.idle_seconds > svc.affinity_timeout:
        return None
    value = snapshot[BACKENDS].get(affinity.backend_id)
    if value is None or value.svc_id != svc.svc_id or value.flags & BE_F_NO_NEW:
        return None
    return f"{value.addr}:{value.port}"


def render(e: Explanation) -> str:
    f = e.flow
    rows = [("flow", f"{f.saddr}:{f.sport} -> {f.daddr}:{f.dport}/{f.protocol}")]
    if e.frontend:
        rows.append(("frontend", f"{e.frontend}  {e.kind}  {e.service}  (svc {e.svc_id})"))
        if e.kind == "ClusterIP":
            rows.append(("from outside", "dropped on node devices (a ClusterIP is in-cluster only)"))
        rows.append(("algorithm", f"{e.algorithm}, {e.slots} slots"))
        if e.hash is not None:
            rows.append(("hash", f"{e.hash:#010x} (murmur3, seed {FLOW_HASH_SEED:#x})"))
            rows.append(("slot", f"{e.slot} = hash % {e.slots}"))
            rows.append(("hashed backend", f"{e.hashed_backend_id} => {e.hashed_backend}"))
        if e.conntrack:
            c = e.conntrack
            rows.append(("conntrack", f"entry -> {c.backend} (backend {c.backend_id}), "
                                      f"age {c.age_seconds:.1f}s, idle {c.idle_seconds:.1f}s"
                                      + (f", SNAT from {c.snat}" if c.snat else "")))
        else:
            rows.append(("conntrack", "no entry"))
        if not e.affinity_timeout:
            rows.append(("affinity", "none (sessionAffinity: None)"))
        elif e.affinity is None:
            rows.append(("affinity", f"ClientIP ({e.affinity_timeout}s), no binding for this client"))
        else:
            state = (f"binds to {e.affinity_backend}" if e.affinity_backend
                     else "binding expired or its backend gone")
            rows.append(("affinity", f"ClientIP ({e.affinity_timeout}s): backend "
                                     f"{e.affinity.backend_id}, idle {e.affinity.idle_seconds:.1f}s, {state}"))
    rows.append(("verdict", f"{e.verdict.upper()}" + (f" to {e.backend}" if e.backend else "")))
    rows.append(("why", e.reason))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
