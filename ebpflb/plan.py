"""Plan: the difference between the desired map contents and what the maps hold (pure core).

sources -> model -> **plan** -> apply. `compute_plan` turns a DesiredState into the map records
the programs read, keeps the ids already programmed (so an unchanged frontend or backend is not
rewritten), and returns the fewest writes, ordered so that no packet can see a frontend whose
slots or backends are not written yet: counter resets for new ids, backends, slots, names,
VIP counts, source ranges, frontends, then removals in the reverse order. It also refuses a
plan that would not fit in the maps, before anything is written.

A frontend's slots are its backends (hash-mod, "random"; a backend of weight w fills w slots) or
its Maglev table (a prime number of slots, so a backend change moves few of them and only the
slots that differ are written). The data path is the same for both: slot = flow hash % count.
"""
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address, ip_network
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple

from .maglev import DEFAULT_M, maglev_table, validate_m
from .maps import (BE_F_NO_NEW, BACKEND_STATS, BACKENDS, FRONTEND_KINDS, SVC_KIND_SHIFT, CONTROL_MAPS, NO_BACKEND, PROTO_NUMBERS, SERVICES,
                   SLOTS, SRC_RANGES, SVC_F_ETP_LOCAL, SVC_F_MAGLEV, SVC_F_SRC_RANGES, SVC_META,
                   SVC_NAME_LEN, SVC_STATS, BackendValue, SlotKey, Snapshot, SrcRangeKey, SvcKey,
                   SvcValue, VIPS, slot_count)
from .model import Backend, DesiredState, Frontend
from .policy import ALGORITHMS

UPSERT = "upsert"
DELETE = "delete"
RESET = "reset"  # zero the per-CPU counters of an id about to be (re)used

# Upserts in this order, deletes in the reverse: whatever a record points to exists before it.
# Source ranges come just before the frontends: a frontend that gains SVC_F_SRC_RANGES must find
# its ranges already there (else it would refuse every client for a moment), and its old ranges
# go only once no frontend record asks for them. A range change briefly allows old and new.
_WRITE_ORDER = (BACKENDS, SLOTS, SVC_META, VIPS, SRC_RANGES, SERVICES)


class PlanError(ValueError):
    """The desired state cannot be programmed (it would not fit); nothing was written."""


@dataclass(frozen=True)
class Op:
    action: str  # UPSERT or DELETE
    map: str
    key: Any
    old: Any  # None when the key is new
    new: Any  # None for a delete

    def __str__(self) -> str:
        key = _fmt_key(self.map, self.key)
        if self.action == RESET:
            return f"0 {self.map} {key}"
        if self.action == DELETE:
            return f"- {self.map} {key} (was {_fmt_value(self.old)})"
        if self.old is None:
            return f"+ {self.map} {key} = {_fmt_value(self.new)}"
        return f"~ {self.map} {key} = {_fmt_value(self.new)} (was {_fmt_value(self.old)})"


def _fmt_key(map_name: str, key: Any) -> str:
    if isinstance(key, SlotKey):
        return f"svc {key.svc_id} slot {key.slot}"
    if isinstance(key, SrcRangeKey):
        return str(key)
    if map_name in (SVC_META, SVC_STATS):
        return f"svc {key}"
    if map_name == VIPS:
        return f"vip {key}"
    if map_name in (BACKENDS, BACKEND_STATS):
        return f"backend {key}"
    return str(key)


def _fmt_value(value: Any) -> str:
    if isinstance(value, SvcValue):
        # The traffic flags, so a plan that only changes one of them still says what changes.
        notes = [note for flag, note in ((SVC_F_ETP_LOCAL, "external local"),
                                         (SVC_F_SRC_RANGES, "source ranges")) if value.flags & flag]
        return f"svc {value.svc_id}, {value.count} slots" + "".join(f", {n}" for n in notes)
    if isinstance(value, int):  # a slot's backend id, or a VIP's frontend count
        return str(value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Plan:
    ops: Tuple[Op, ...]

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def counts(self) -> Dict[str, int]:
        """Writes per map and action, e.g. {"lb4_slots upsert": 3}."""
        out: Dict[str, int] = {}
        for op in self.ops:
            out[f"{op.map} {op.action}"] = out.get(f"{op.map} {op.action}", 0) + 1
        return out

    def render(self) -> str:
        if not self.ops:
            return "no changes"
        return "\n".join(str(op) for op in self.ops)


def frontend_key(frontend: Frontend) -> SvcKey:
    return SvcKey(frontend.vip, frontend.port, PROTO_NUMBERS[frontend.protocol], frontend.scope)


def frontend_name(frontend: Frontend) -> str:
    name = f"{frontend.service}:{frontend.port_name}" if frontend.port_name else frontend.service
    # The kernel record holds SVC_NAME_LEN - 1 bytes; cut on a character boundary.
    return name.encode()[: SVC_NAME_LEN - 1].decode(errors="ignore")


@dataclass(frozen=True)
class PlanDefaults:
    """What a Service without lb.ebpflb.io annotations gets (agent flags)."""
    algorithm: str = "random"
    table_size: int = DEFAULT_M

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        validate_m(self.table_size)


@lru_cache(maxsize=4096)
def _maglev_cached(names: Tuple[bytes, ...], m: int, weights: Tuple[int, ...]) -> Tuple[int, ...]:
    # Services usually share nothing, but a resync recomputes every table: cache the unchanged.
    return tuple(maglev_table(list(names), m, list(weights)))


def frontend_slots(frontend: Frontend, backends: Tuple[Backend, ...],
                   defaults: PlanDefaults) -> Tuple[Tuple[int, ...], int]:
    """Indices into `backends` for each slot of the frontend, and the service flags."""
    policy = frontend.policy
    algorithm = policy.algorithm or defaults.algorithm
    if not policy.weights and algorithm != "maglev":
        return tuple(range(len(backends))), 0  # the common case, on every plan of every frontend
    weights = tuple(policy.weight(b.ip) for b in backends)
    if algorithm == "maglev":
        if not any(weights):
            return (), SVC_F_MAGLEV
        names = tuple(f"{b.ip}:{b.port}".encode() for b in backends)
        return _maglev_cached(names, policy.table_size or defaults.table_size, weights), SVC_F_MAGLEV
    return tuple(i for i, w in enumerate(weights) for _ in range(w)), 0


def _free_ids(used: Set[int]) -> Iterator[int]:
    """Ids from 1 up (0 means "none" in the data plane) that nothing in the maps uses."""
    candidate = 1
    while True:
        if candidate not in used:
            yield candidate
        candidate += 1


def desired_maps(desired: DesiredState, current: Snapshot,
                 defaults: PlanDefaults = PlanDefaults()) -> Snapshot:
    """The map contents that program `desired`, reusing the ids already in `current`.

    Ids that `current` uses for anything are never given to a new record, because the old record
    is removed only at the end of the apply and must stay intact until then.
    """
    cur_services: Mapping[SvcKey, SvcValue] = current[SERVICES]
    cur_backends: Mapping[int, BackendValue] = current[BACKENDS]
    used_svc_ids = {v.svc_id for v in cur_services.values()}
    used_svc_ids |= set(current[SLOTS]) | set(current[SVC_META])
    used_svc_ids |= {k.svc_id for k in current.get(SRC_RANGES, {})}
    new_svc_ids = _free_ids(used_svc_ids)
    # A backend keeps its id while its identity (address, port, protocol, frontend) stays, even
    # when its flags change: its counters and the conntrack entries naming it stay meaningful.
    backend_ids: Dict[Tuple, int] = {}
    for backend_id, value in sorted(cur_backends.items()):
        backend_ids.setdefault(value[:4], backend_id)
    new_backend_ids = _free_ids(set(cur_backends))

    out: Snapshot = {name: {} for name in CONTROL_MAPS}
    for frontend in sorted(desired.frontends):
        key = frontend_key(frontend)
        old = cur_services.get(key)
        svc_id = old.svc_id if old is not None else next(new_svc_ids)
        backends = desired.frontends[frontend]
        ids = []
        # Every backend is programmed, even one of weight 0: it has no slot, but the CLI shows
        # it and its counters go on while its established flows drain.
        weighted = bool(frontend.policy.weights)
        for backend in backends:
            drain = BE_F_NO_NEW if weighted and frontend.policy.weight(backend.ip) == 0 else 0
            value = BackendValue(backend.ip, backend.port, key.proto, svc_id, drain)
            if value[:4] not in backend_ids:
                backend_ids[value[:4]] = next(new_backend_ids)
            out[BACKENDS][backend_ids[value[:4]]] = value
            ids.append(backend_ids[value[:4]])
        slots, flags = frontend_slots(frontend, backends, defaults)
        if slots:
            out[SLOTS][svc_id] = tuple(map(ids.__getitem__, slots))
        flags |= FRONTEND_KINDS.index(frontend.kind) << SVC_KIND_SHIFT
        if frontend.external_local:
            flags |= SVC_F_ETP_LOCAL
        if frontend.source_ranges:
            # Set even when no range is IPv4 (all IPv6): then no IPv4 client is allowed, the
            # safe reading of a list that was meant to restrict.
            flags |= SVC_F_SRC_RANGES
            for cidr in ipv4_ranges(frontend.source_ranges):
                out[SRC_RANGES][SrcRangeKey(svc_id, cidr)] = 1
        out[SERVICES][key] = SvcValue(svc_id, len(slots), flags, frontend.affinity_timeout)
        out[SVC_META][svc_id] = frontend_name(frontend)
        out[VIPS][key.vip] = out[VIPS].get(key.vip, 0) + 1
    return out


def ipv4_ranges(ranges: Tuple[str, ...]) -> List[str]:
    """The IPv4 CIDRs of a frontend's source ranges, normalized (the v4 maps hold only those)."""
    out = []
    for cidr in ranges:
        net = ip_network(cidr, strict=False)
        if net.version == 4 and str(net) not in out:
            out.append(str(net))
    return out


def _slot_upserts(want: Mapping[int, Tuple[int, ...]], have: Mapping[int, Tuple[int, ...]]) -> List[Op]:
    ops = []
    for svc_id in sorted(want):
        new, old = want[svc_id], have.get(svc_id, ())
        if new == old:
            continue
        padded = old + (NO_BACKEND,) * (len(new) - len(old))
        for slot in [i for i, (a, b) in enumerate(zip(padded, new)) if a != b]:
            before = padded[slot] if padded[slot] != NO_BACKEND else None
            ops.append(Op(UPSERT, SLOTS, SlotKey(svc_id, slot), before, new[slot]))
    return ops


def _slot_deletes(want: Mapping[int, Tuple[int, ...]], have: Mapping[int, Tuple[int, ...]]) -> List[Op]:
    ops = []
    for svc_id in sorted(have):
        old, keep = have[svc_id], len(want.get(svc_id, ()))
        ops.extend(Op(DELETE, SLOTS, SlotKey(svc_id, slot), old[slot], None)
                   for slot in range(keep, len(old)) if old[slot] != NO_BACKEND)
    return ops


def diff(desired: Snapshot, current: Snapshot) -> Plan:
    """Ordered writes turning `current` into `desired`; equal records are not written. Only the
    changed keys are sorted (for a readable, deterministic plan)."""
    upserts: List[Op] = []
    deletes: List[Op] = []
    for name in _WRITE_ORDER:
        want, have = desired.get(name, {}), current.get(name, {})
        if name == SLOTS:
            upserts.extend(_slot_upserts(want, have))
            continue
        changed = [key for key, value in want.items() if have.get(key) != value]
        for key in sorted(changed, key=_sort_key):
            upserts.append(Op(UPSERT, name, key, have.get(key), want[key]))
    for name in reversed(_WRITE_ORDER):
        want, have = desired.get(name, {}), current.get(name, {})
        if name == SLOTS:
            deletes.extend(_slot_deletes(want, have))
            continue
        gone = [key for key in have if key not in want]
        for key in sorted(gone, key=_sort_key):
            deletes.append(Op(DELETE, name, key, have[key], None))
    return Plan(tuple(upserts + deletes))


def _sort_key(key: Any) -> Tuple:
    if isinstance(key, SvcKey):
        return (int(IPv4Address(key.vip)), key.port, key.proto)
    if isinstance(key, SrcRangeKey):
        net = ip_network(key.cidr, strict=False)  # a dump may hold host bits
        return (key.svc_id, int(net.network_address), net.prefixlen)
    if isinstance(key, tuple):
        return tuple(key)
    return (key,)


def check_capacity(plan: Plan, current: Snapshot, limits: Mapping[str, int]) -> None:
    """Refuses a plan whose maps would overflow at their fullest point: during an apply the maps
    hold the old and the new records together, because removals run last."""
    for name, limit in limits.items():
        added = sum(1 for op in plan.ops if op.map == name and op.action == UPSERT and op.old is None)
        held = slot_count(current) if name == SLOTS else len(current.get(name, {}))
        peak = held + added
        if peak > limit:
            raise PlanError(f"map {name} would need {peak} entries during the update but holds "
                            f"{limit}; raise its size (agent flags) or program fewer services")


def _counter_resets(want: Snapshot, current: Snapshot) -> List[Op]:
    """Zeroing ops for ids the plan hands out that nothing in the maps holds now: their counters
    may still hold the traffic of an earlier owner of the id."""
    old_svc_ids = {v.svc_id for v in current[SERVICES].values()}
    new_svc_ids = sorted({v.svc_id for v in want[SERVICES].values()} - old_svc_ids)
    new_backend_ids = sorted(set(want[BACKENDS]) - set(current[BACKENDS]))
    return ([Op(RESET, SVC_STATS, i, None, None) for i in new_svc_ids]
            + [Op(RESET, BACKEND_STATS, i, None, None) for i in new_backend_ids])


def compute_plan(desired: DesiredState, current: Snapshot,
                 limits: Optional[Mapping[str, int]] = None,
                 defaults: PlanDefaults = PlanDefaults()) -> Plan:
    want = desired_maps(desired, current, defaults)
    plan = diff(want, current)
    if plan:
        plan = Plan(tuple(_counter_resets(want, current)) + plan.ops)
    if limits:
        check_capacity(plan, current, limits)
    return plan


def apply_to(snapshot: Snapshot, plan: Plan) -> Snapshot:
    """The snapshot the maps hold once `plan` is applied (what the agent caches between syncs)."""
    out = {name: dict(records) for name, records in snapshot.items()}
    tables: Dict[int, List[int]] = {}  # slot tables being edited, written back once at the end
    for op in plan.ops:
        if op.action == RESET:
            continue  # counters are not part of a snapshot
        if op.map == SLOTS:
            table = tables.get(op.key.svc_id)
            if table is None:
                table = tables[op.key.svc_id] = list(out[SLOTS].get(op.key.svc_id, ()))
            if op.action == DELETE:
                if op.key.slot < len(table):
                    table[op.key.slot] = NO_BACKEND
            else:
                table.extend([NO_BACKEND] * (op.key.slot + 1 - len(table)))
                table[op.key.slot] = op.new
            continue
        records = out.setdefault(op.map, {})
        if op.action == DELETE:
            records.pop(op.key, None)
        else:
            records[op.key] = op.new
    for svc_id, table in tables.items():
        while table and table[-1] == NO_BACKEND:
            table.pop()
        if table:
            out[SLOTS][svc_id] = tuple(table)
        else:
            out[SLOTS].pop(svc_id, None)
    return out


@dataclass(frozen=True)
class ConntrackPurge:
    """Conntrack entries an applied plan makes wrong: every flow of a removed frontend (its id may
    be given to another), and UDP flows to a removed backend (kubernetes#19029: the next datagram
    of the same 5-tuple must reach a live backend). TCP flows to a removed backend are left to
    finish on their own."""
    svc_ids: frozenset
    udp_backends: frozenset  # (svc_id, addr, port)

    def __bool__(self) -> bool:
        return bool(self.svc_ids or self.udp_backends)


def conntrack_purge(plan: Plan, remaining: Optional[Mapping[SvcKey, Any]] = None) -> ConntrackPurge:
    """`remaining`: the frontends programmed after the plan. A record removed while its address
    keeps a record of the other scope (externalTrafficPolicy switched from Local to Cluster) is
    no frontend going away: its flows are left to finish, as kube-proxy's conntrack would."""
    deleted = {op.old.svc_id: op.key for op in plan.ops if op.map == SERVICES and op.action == DELETE}
    moved = {svc_id for svc_id, key in deleted.items()
             if remaining is not None and key._replace(scope=1 - key.scope) in remaining}
    svc_ids = set(deleted) - moved
    udp = {(op.old.svc_id, op.old.addr, op.old.port) for op in plan.ops
           if op.map == BACKENDS and op.action == DELETE and op.old.proto == PROTO_NUMBERS["UDP"]
           and op.old.svc_id not in deleted}
    return ConntrackPurge(frozenset(svc_ids), frozenset(udp))
