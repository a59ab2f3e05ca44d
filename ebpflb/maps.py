"""The control plane's view of the BPF maps it writes, as plain values (pure core).

Each map is a dict from a key record to a value record; bpf/lb_structs.h defines the kernel
layouts and ebpflb/dataplane/bcc_maps.py converts between the two. The planner diffs these
dicts, so nothing here knows about bcc or the kernel.
"""
from typing import Any, Dict, List, NamedTuple, Tuple

SERVICES = "lb4_services"
SLOTS = "lb4_slots"
BACKENDS = "lb4_backends"
SVC_META = "lb4_svc_meta"
VIPS = "lb4_vips"  # VIP address -> number of frontends on it (new flows from a VIP are refused)
SRC_RANGES = "lb4_src_ranges"  # (svc id, CIDR) -> 1: loadBalancerSourceRanges (an LPM trie)
# The maps the control plane owns, in no particular order; conntrack and counters belong to the
# programs and are only read (and zeroed when an id is given to a new frontend or backend).
CONTROL_MAPS = (SERVICES, SLOTS, BACKENDS, SVC_META, VIPS, SRC_RANGES)
SVC_STATS = "lb4_svc_stats"
BACKEND_STATS = "lb4_backend_stats"

SVC_F_MAGLEV = 0x1  # LB4_SVC_F_MAGLEV in lb_structs.h
SVC_F_ETP_LOCAL = 0x2  # LB4_SVC_F_ETP_LOCAL: externalTrafficPolicy Local (no SNAT, local only)
SVC_F_SRC_RANGES = 0x4  # LB4_SVC_F_SRC_RANGES: new flows only from the frontend's SRC_RANGES
BE_F_NO_NEW = 0x1  # LB4_BE_F_NO_NEW in lb_structs.h
SVC_KIND_SHIFT = 4  # LB4_SVC_KIND_SHIFT: bits 4-5 of the service flags
FRONTEND_KINDS = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalIP")


def frontend_kind(flags: int) -> str:
    return FRONTEND_KINDS[(flags >> SVC_KIND_SHIFT) & 0x3]

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
PROTO_NAMES = {number: name for name, number in PROTO_NUMBERS.items()}

SVC_NAME_LEN = 128  # LB4_SVC_NAME_LEN in lb_structs.h, including the terminating NUL


class SvcKey(NamedTuple):
    vip: str
    port: int
    proto: int
    scope: int = 0  # LB4_SCOPE_*: 0 every client; 1 traffic from outside (Local policy)

    def __str__(self) -> str:
        return (f"{self.vip}:{self.port}/{PROTO_NAMES.get(self.proto, self.proto)}"
                + ("@external" if self.scope else ""))


class SvcValue(NamedTuple):
    svc_id: int
    count: int
    flags: int = 0
    affinity_timeout: int = 0  # seconds; 0 when the Service has no ClientIP affinity


class SrcRangeKey(NamedTuple):
    """One loadBalancerSourceRanges prefix of a frontend; the kernel key is
    {prefixlen: 32 + the CIDR's, svc_id, addr}, so one LPM trie holds every frontend's ranges."""
    svc_id: int
    cidr: str  # IPv4, normalized ("10.0.0.0/8")

    def __str__(self) -> str:
        return f"svc {self.svc_id} from {self.cidr}"


class SlotKey(NamedTuple):
    svc_id: int
    slot: int


class BackendValue(NamedTuple):
    addr: str
    port: int
    proto: int
    svc_id: int  # the frontend this backend record belongs to
    flags: int = 0  # BE_F_NO_NEW for a draining (weight 0) backend

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}/{PROTO_NAMES.get(self.proto, self.proto)}"


# Map name -> {key record: value record}; meta values are display names (str). lb4_slots is the
# exception: svc id -> the frontend's whole slot table, a tuple of backend ids indexed by slot
# (0 where the kernel map lacks a slot). A table compares in one step, so a plan over large
# Maglev tables costs little when they did not change; writes are still per SlotKey.
Snapshot = Dict[str, Dict[Any, Any]]
NO_BACKEND = 0


def slot_tables(records: Dict["SlotKey", int]) -> Dict[int, Tuple[int, ...]]:
    """Per-slot records, as a map dump gives them, grouped into one table per frontend."""
    tables: Dict[int, List[int]] = {}
    for key, backend_id in records.items():
        table = tables.setdefault(key.svc_id, [])
        table.extend([NO_BACKEND] * (key.slot + 1 - len(table)))
        table[key.slot] = backend_id
    return {svc_id: tuple(table) for svc_id, table in tables.items()}


def slot_count(snapshot: Snapshot) -> int:
    return sum(len(table) for table in snapshot[SLOTS].values())


def empty_snapshot() -> Snapshot:
    return {name: {} for name in CONTROL_MAPS}
