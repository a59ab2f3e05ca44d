"""`ebpflb explain --socket`: what the cgroup socket hooks (bpf/lb4_sock.c) do with a connect(),
or a datagram sent to an address, and why (pure core; the CLI reads the maps and the settings).

The decision, in the hooks' order:
- not a frontend (no record for every client, scope ALL): untouched;
- socket load balancing off, or host-only and the socket is a pod's: untouched at connect(),
  so its packets carry the frontend and the TC program on the pod device decides (`ebpflb
  explain` without --socket says how);
- a removed frontend kept for its open flows (draining): untouched; a frontend with
  loadBalancerSourceRanges: left to the packet path (the client's address is not chosen yet);
- session affinity, keyed by the client's network namespace; else the socket's hash: its
  cookie, the frontend and the protocol (ebpflb.flowhash.sock_hash) -> slot -> backend, over the
  same slots the TC programs use (slot 0 for a slot gone);
- no usable backend: connect() or the send fails with ECONNREFUSED; but backends only on other
  nodes (a Local traffic policy): left to the packet path, which drops.
Without the socket's cookie (SO_COOKIE) the backend cannot be predicted: the explanation says
which backends the slots hold. tests/bpf/test_socket_lb.py checks predictions against the hooks.
"""
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from .addresses import format_address
from .explain import AffinityView, bound_backend, slot_backend
from .flowhash import FLOW_HASH_SEED, address_word, sock_hash
from .maps import (BACKENDS, NO_BACKEND, SERVICES, SLOT_REJECT, SLOTS, SVC_F_DRAINING,
                   SVC_F_DROP_EMPTY, SVC_F_MAGLEV, SVC_F_SRC_RANGES, SVC_META, SvcKey,
                   frontend_kind)

UNTOUCHED = "untouched"
PACKET_PATH = "packet path"
TRANSLATED = "translated"
REFUSED = "refused"


@dataclass(frozen=True)
class SocketExplanation:
    destination: str  # "ip:port/PROTO"
    mode: str  # all | host-only | off
    host: bool  # a process of the node's network namespace (else a pod's)
    verdict: str  # UNTOUCHED | PACKET_PATH | TRANSLATED | REFUSED
    reason: str
    frontend: Optional[str] = None
    kind: Optional[str] = None
    service: Optional[str] = None
    svc_id: Optional[int] = None
    algorithm: Optional[str] = None
    slots: Optional[int] = None
    cookie: Optional[int] = None
    hash: Optional[int] = None
    slot: Optional[int] = None
    backend_id: Optional[int] = None
    backend: Optional[str] = None  # where the socket connects, when known
    candidates: Tuple[str, ...] = ()  # the slots' backends, when the cookie is not known
    affinity_timeout: int = 0
    affinity: Optional[AffinityView] = None

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def _backend(snapshot: Any, backend_id: int) -> Optional[str]:
    b = snapshot[BACKENDS].get(backend_id)
    return format_address(b.addr, b.port) if b else None


def explain_socket(snapshot: Any, daddr: str, dport: int, proto: int, mode: str, host: bool,
                   cookie: Optional[int] = None, affinity: Optional[AffinityView] = None,
                   affinity_known: bool = True) -> SocketExplanation:
    """`affinity`: the client network namespace's binding to the frontend, if it has one;
    `affinity_known` False when it could not be looked up (the namespace's cookie unknown)."""
    key = SvcKey(daddr, dport, proto)
    base: Dict[str, Any] = {"destination": str(key), "mode": mode, "host": host}
    svc = snapshot[SERVICES].get(key)
    if svc is None:
        return SocketExplanation(**base, verdict=UNTOUCHED,
                                 reason="not a frontend: the socket goes where routing says")
    base.update(frontend=str(key), kind=frontend_kind(svc.flags), svc_id=svc.svc_id,
                service=snapshot[SVC_META].get(svc.svc_id), slots=svc.count,
                algorithm="maglev" if svc.flags & SVC_F_MAGLEV else "random",
                affinity_timeout=svc.affinity_timeout, cookie=cookie)
    if mode == "off":
        return SocketExplanation(**base, verdict=PACKET_PATH,
                                 reason="socket load balancing is off: the TC programs translate "
                                        "the packets (ebpflb explain without --socket)")
    if mode == "host-only" and not host:
        return SocketExplanation(**base, verdict=PACKET_PATH,
                                 reason="socket load balancing is host-only: a pod's packets "
                                        "carry the frontend to the TC program on its device")
    if svc.flags & SVC_F_DRAINING:
        return SocketExplanation(**base, verdict=UNTOUCHED,
                                 reason="a removed frontend, kept only for the flows it has: no "
                                        "new socket is sent to a backend")
    if svc.flags & SVC_F_SRC_RANGES:
        return SocketExplanation(**base, verdict=PACKET_PATH,
                                 reason="the frontend has loadBalancerSourceRanges: the client's "
                                        "address is not chosen at connect(), so the packet path "
                                        "checks it")
    if bound_backend(snapshot, svc, affinity):
        assert affinity is not None
        return SocketExplanation(**base, verdict=TRANSLATED, affinity=affinity,
                                 backend_id=affinity.backend_id,
                                 backend=_backend(snapshot, affinity.backend_id),
                                 reason="session affinity: the client's network namespace is "
                                        "bound to this backend")
    table = snapshot[SLOTS].get(svc.svc_id, ())
    if (svc.count == 0 or not any(table)) and svc.flags & SVC_F_DROP_EMPTY:
        return SocketExplanation(**base, verdict=PACKET_PATH, affinity=affinity,
                                 reason="no backend here, some on other nodes (a Local traffic "
                                        "policy): left to the packet path, which drops, as "
                                        "kube-proxy does")
    if svc.count == 0 or not any(table):
        return SocketExplanation(**base, verdict=REFUSED, affinity=affinity,
                                 reason="no usable backend: connect() or the send fails with "
                                        "ECONNREFUSED at once")
    unknown = (" (a session-affinity binding of the client's network namespace, not looked up "
               "here, would decide first)") if svc.affinity_timeout and not affinity_known else ""
    if cookie is None:
        ids = sorted({i for i in table if i not in (NO_BACKEND, SLOT_REJECT)})
        return SocketExplanation(**base, verdict=TRANSLATED, affinity=affinity,
                                 candidates=tuple(filter(None, (_backend(snapshot, i) for i in ids))),
                                 reason="sent to the backend of slot hash(cookie) % slots; give "
                                        "--cookie (the socket's SO_COOKIE) to know which" + unknown)
    h = sock_hash(cookie, address_word(daddr), dport, proto, FLOW_HASH_SEED)
    slot, backend_id = slot_backend(snapshot, svc, h)
    if backend_id == SLOT_REJECT:
        return SocketExplanation(**base, verdict=REFUSED, affinity=affinity, hash=h, slot=slot,
                                 reason="its slot is the reject share (a Gateway route's "
                                        "backendRefs that do not resolve): connect() or the send "
                                        "fails with ECONNREFUSED" + unknown)
    return SocketExplanation(**base, verdict=TRANSLATED, affinity=affinity, hash=h, slot=slot,
                             backend_id=backend_id, backend=_backend(snapshot, backend_id),
                             reason="sent to the backend of its slot at connect(); no program "
                                    "translates its packets" + unknown)


def packet_path_note(mode: str, outside: bool, frontend: bool) -> Optional[str]:
    """What `ebpflb explain` (the packet path) adds about the other path: a pod's socket that
    the hooks translate never shows the frontend to the TC program being explained."""
    if outside or not frontend or mode not in ("all", "host-only"):
        return None
    if mode == "host-only":
        return ("socket load balancing is host-only: a pod's packets take this path; a "
                "host-network process is balanced at connect() (explain --socket host)")
    return ("socket load balancing is on: a pod process in the hooks' cgroup is balanced at "
            "connect() (explain --socket pod) and its packets never carry the frontend; this is "
            "what happens to packets that still do")


def render_socket(e: SocketExplanation) -> str:
    rows = [("socket", f"connect()/sendmsg() to {e.destination} by a "
                       f"{'host-network process' if e.host else 'pod'}"),
            ("socket LB", e.mode)]
    if e.frontend:
        rows.append(("frontend", f"{e.frontend}  {e.kind}  {e.service}  (svc {e.svc_id})"))
        rows.append(("algorithm", f"{e.algorithm}, {e.slots} slots"))
    if e.hash is not None:
        rows.append(("hash", f"{e.hash:#010x} (murmur3 of cookie {e.cookie}, seed "
                             f"{FLOW_HASH_SEED:#x})"))
        rows.append(("slot", f"{e.slot} = hash % {e.slots}"))
    if e.affinity_timeout:
        rows.append(("affinity", f"ClientIP ({e.affinity_timeout}s) by network namespace"
                                 + (f": backend {e.affinity.backend_id}, idle "
                                    f"{e.affinity.idle_seconds:.1f}s" if e.affinity else "")))
    verdict = e.verdict.upper()
    if e.backend:
        verdict += f" to {e.backend}"
    elif e.candidates:
        verdict += f" to one of {', '.join(e.candidates)}"
    rows.append(("verdict", verdict))
    rows.append(("why", e.reason))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
