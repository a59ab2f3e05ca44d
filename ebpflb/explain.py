"""`ebpflb explain`: which backend a flow reaches, and why (pure core; the CLI reads the maps).

The prediction repeats the data path step by step from a map snapshot: frontend lookup, then a
conntrack entry if one exists (it decides), else flow hash -> slot -> backend, with the same hash
(ebpflb.flowhash) and seed the programs use. tests/bpf checks it against the program itself.
"""
import ipaddress
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

from .flowhash import FLOW_HASH_SEED, flow_hash
from .maps import (BACKENDS, NO_BACKEND, PROTO_NUMBERS, SERVICES, SLOTS, SVC_F_MAGLEV, SVC_META,
                   SvcKey)


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


@dataclass(frozen=True)
class Explanation:
    flow: Flow
    verdict: str  # "pass", "drop", "dnat"
    reason: str
    frontend: Optional[str] = None
    service: Optional[str] = None
    svc_id: Optional[int] = None
    algorithm: Optional[str] = None
    slots: Optional[int] = None
    hash: Optional[int] = None
    slot: Optional[int] = None
    hashed_backend: Optional[str] = None  # what the hash picks for a new flow
    hashed_backend_id: Optional[int] = None
    conntrack: Optional[ConntrackView] = None
    backend: Optional[str] = None  # where this packet goes
    affinity: str = "not supported yet (sessionAffinity: ClientIP is planned)"

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


def explain(snapshot, flow: Flow, conntrack: Optional[ConntrackView] = None) -> Explanation:
    key = SvcKey(flow.daddr, flow.dport, flow.proto)
    svc = snapshot[SERVICES].get(key)
    if svc is None:
        return Explanation(flow, "pass", f"{key} is not a frontend: the packet passes untouched")
    common: Dict[str, Any] = dict(
        frontend=str(key), service=snapshot[SVC_META].get(svc.svc_id, ""), svc_id=svc.svc_id,
        algorithm="maglev" if svc.flags & SVC_F_MAGLEV else "random", slots=svc.count)
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
    if not common.get("hashed_backend"):
        return Explanation(flow, "drop", "the frontend has no ready backend: new flows are dropped",
                           **common)
    return Explanation(flow, "dnat", "a new flow: the hash picks the slot, the slot the backend",
                       backend=common["hashed_backend"], **common)


def render(e: Explanation) -> str:
    f = e.flow
    rows = [("flow", f"{f.saddr}:{f.sport} -> {f.daddr}:{f.dport}/{f.protocol}")]
    if e.frontend:
        rows.append(("frontend", f"{e.frontend}  {e.service}  (svc {e.svc_id})"))
        rows.append(("algorithm", f"{e.algorithm}, {e.slots} slots"))
        if e.hash is not None:
            rows.append(("hash", f"{e.hash:#010x} (murmur3, seed {FLOW_HASH_SEED:#x})"))
            rows.append(("slot", f"{e.slot} = hash % {e.slots}"))
            rows.append(("hashed backend", f"{e.hashed_backend_id} => {e.hashed_backend}"))
        if e.conntrack:
            c = e.conntrack
            rows.append(("conntrack", f"entry -> {c.backend} (backend {c.backend_id}), "
                                      f"age {c.age_seconds:.1f}s, idle {c.idle_seconds:.1f}s"))
        else:
            rows.append(("conntrack", "no entry"))
        rows.append(("affinity", e.affinity))
    rows.append(("verdict", f"{e.verdict.upper()}" + (f" to {e.backend}" if e.backend else "")))
    rows.append(("why", e.reason))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
