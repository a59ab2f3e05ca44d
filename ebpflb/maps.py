"""The control plane's view of the BPF maps it writes, as plain values (pure core).

Each map is a dict from a key record to a value record; bpf/lb_structs.h defines the kernel
layouts and ebpflb/dataplane/bcc_maps.py converts between the two. The planner diffs these
dicts, so nothing here knows about bcc or the kernel.
"""
from typing import Any, Dict, NamedTuple

SERVICES = "lb4_services"
SLOTS = "lb4_slots"
BACKENDS = "lb4_backends"
SVC_META = "lb4_svc_meta"
# The maps the control plane owns, in no particular order; conntrack and counters belong to the
# programs and are only read (and zeroed when an id is given to a new frontend or backend).
CONTROL_MAPS = (SERVICES, SLOTS, BACKENDS, SVC_META)
SVC_STATS = "lb4_svc_stats"
BACKEND_STATS = "lb4_backend_stats"

SVC_F_MAGLEV = 0x1  # LB4_SVC_F_MAGLEV in lb_structs.h

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
PROTO_NAMES = {number: name for name, number in PROTO_NUMBERS.items()}

SVC_NAME_LEN = 128  # LB4_SVC_NAME_LEN in lb_structs.h, including the terminating NUL


class SvcKey(NamedTuple):
    vip: str
    port: int
    proto: int

    def __str__(self) -> str:
        return f"{self.vip}:{self.port}/{PROTO_NAMES.get(self.proto, self.proto)}"


class SvcValue(NamedTuple):
    svc_id: int
    count: int
    flags: int = 0


class SlotKey(NamedTuple):
    svc_id: int
    slot: int


class BackendValue(NamedTuple):
    addr: str
    port: int
    proto: int
    svc_id: int  # the frontend this backend record belongs to

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}/{PROTO_NAMES.get(self.proto, self.proto)}"


# Map name -> {key record: value record}. Slot values are backend ids (int); meta values are
# display names (str).
Snapshot = Dict[str, Dict[Any, Any]]


def empty_snapshot() -> Snapshot:
    return {name: {} for name in CONTROL_MAPS}
