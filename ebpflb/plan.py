"""Plan: the ordered map writes that turn what the maps hold into what is wanted (pure core).

sources -> store -> model -> records -> **plan** -> apply. `diff()` compares wanted records with
current ones (all of the maps for a full sync, one Service's for an incremental one: see
ebpflb.planner) and returns the fewest writes, ordered so that no packet can see a frontend whose
slots or backends are not written yet: counter resets for new ids, backends, slots, names, VIP
counts, source ranges, frontends, then removals in the reverse order. `check_capacity` refuses a
plan that would not fit in the maps, before anything is written.

A plan is a sequence of steps; a step is one action on one map over many records (one batch
syscall when applied), so a plan of 100,000 writes is not 100,000 objects.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from enum import Enum
from ipaddress import ip_network
from typing import (AbstractSet, Any, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple)

from .maps import (BACKEND_STATS, BACKENDS, IPV6_TWINS, NO_BACKEND, NODE_IFS, POD_ADDR_MARKERS,
                   POD_ADDRS, PROTO_NUMBERS, TABLE_OF, is_ipv6, kernel_map,
                   SERVICES, SLOTS, SRC_RANGES, SVC_F_ETP_LOCAL, SVC_F_SRC_RANGES, SVC_META,
                   SVC_STATS, VIPS, MapId, Records, SlotKey, Snapshot, SrcRangeKey, SvcKey,
                   SvcValue)
from .model import DesiredState
from .records import PlanDefaults  # noqa: F401 - re-exported: plans are made with defaults


class Action(str, Enum):
    UPSERT = "upsert"
    DELETE = "delete"
    RESET = "reset"  # zero the per-CPU counters of an id about to be (re)used

    def __str__(self) -> str:
        return self.value


UPSERT, DELETE, RESET = Action.UPSERT, Action.DELETE, Action.RESET

# Upserts in this order, deletes in the reverse: whatever a record points to exists before it.
# Source ranges come just before the frontends: a frontend that gains SVC_F_SRC_RANGES must find
# its ranges already there (else it would refuse every client for a moment), and its old ranges
# go only once no frontend record asks for them. A range change briefly allows old and new.
WRITE_ORDER = (BACKENDS, SLOTS, SVC_META, VIPS, SRC_RANGES, SERVICES)


class PlanError(ValueError):
    """The desired state cannot be programmed; nothing was written."""


class CapacityError(PlanError):
    """The plan would not fit in the maps."""


class OwnershipError(PlanError):
    """A frontend is asked for by one Service while another one holds it (the planner and the
    model disagree: only a full sync can settle it)."""


class Op(NamedTuple):
    """One record write: a view of a step's item, for display and tests."""

    action: Action
    map: MapId
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


def _fmt_key(map_id: MapId, key: Any) -> str:
    map_id = TABLE_OF.get(map_id, map_id)
    if isinstance(key, SlotKey):
        return f"svc {key.svc_id} slot {key.slot}"
    if isinstance(key, SrcRangeKey):
        return str(key)
    if map_id in (SVC_META, SVC_STATS):
        return f"svc {key}"
    if map_id == VIPS:
        return f"vip {key}"
    if map_id in (BACKENDS, BACKEND_STATS):
        return f"backend {key}"
    if map_id == NODE_IFS:
        return f"node device {key}"
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


class Step:
    """One action on one map over many records, as parallel tuples: keys, old values (None for a
    new key) and new values (None for a delete or a reset). Applied as one batch."""

    __slots__ = ("action", "map", "keys", "olds", "news")

    def __init__(self, action: Action, map_id: MapId, keys: Sequence[Any],
                 olds: Optional[Sequence[Any]] = None, news: Optional[Sequence[Any]] = None) -> None:
        self.action = action
        self.map = map_id
        self.keys = tuple(keys)
        self.olds = tuple(olds) if olds is not None else (None,) * len(self.keys)
        self.news = tuple(news) if news is not None else (None,) * len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def ops(self) -> Iterator[Op]:
        for key, old, new in zip(self.keys, self.olds, self.news):
            yield Op(self.action, self.map, key, old, new)

    def __repr__(self) -> str:
        return f"Step({self.action.value} {self.map.value} x{len(self.keys)})"


class Plan:
    """Ordered steps. `ops` lists every record write (built on demand)."""

    __slots__ = ("steps", "_ops")

    def __init__(self, steps: Sequence[Step] | Sequence[Op] = ()) -> None:
        if steps and isinstance(steps[0], Op):
            steps = Plan.of_ops(steps).steps  # type: ignore[arg-type]
        self.steps: Tuple[Step, ...] = tuple(s for s in steps if s.keys)  # type: ignore[union-attr]
        self._ops: Optional[Tuple[Op, ...]] = None

    @classmethod
    def of_ops(cls, ops: Iterable[Op]) -> "Plan":
        """A plan from single writes (consecutive ones of one action and map share a step)."""
        steps: List[Step] = []
        run: List[Op] = []
        for op in ops:
            if run and (op.action, op.map) != (run[0].action, run[0].map):
                steps.append(Step(run[0].action, run[0].map, [o.key for o in run],
                                  [o.old for o in run], [o.new for o in run]))
                run = []
            run.append(op)
        if run:
            steps.append(Step(run[0].action, run[0].map, [o.key for o in run],
                              [o.old for o in run], [o.new for o in run]))
        return cls(steps)

    @property
    def ops(self) -> Tuple[Op, ...]:
        if self._ops is None:
            self._ops = tuple(op for step in self.steps for op in step.ops())
        return self._ops

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __len__(self) -> int:
        return sum(len(s.keys) for s in self.steps)

    def __add__(self, other: "Plan") -> "Plan":
        return Plan(self.steps + other.steps)

    def counts(self) -> Dict[str, int]:
        """Writes per map and action, e.g. {"lb4_slots upsert": 3}."""
        out: Dict[str, int] = {}
        for step in self.steps:
            name = f"{step.map.value} {step.action.value}"
            out[name] = out.get(name, 0) + len(step.keys)
        return out

    def render(self) -> str:
        if not self.steps:
            return "no changes"
        return "\n".join(str(op) for op in self.ops)


def _ids_in_order(ids: Iterable[int]) -> List[int]:
    out = list(ids)
    if len(out) <= SORTED_STEP_MAX:
        out.sort()
    return out


def _slot_upserts(want: Mapping[int, Tuple[int, ...]], have: Mapping[int, Tuple[int, ...]]) -> Step:
    keys: List[SlotKey] = []
    olds: List[Optional[int]] = []
    news: List[int] = []
    for svc_id in _ids_in_order(svc for svc, table in want.items() if have.get(svc) != table):
        new, old = want[svc_id], have.get(svc_id, ())
        if not old:
            keys.extend(SlotKey(svc_id, slot) for slot in range(len(new)))
            olds.extend((None,) * len(new))
            news.extend(new)
            continue
        padded = old + (NO_BACKEND,) * (len(new) - len(old))
        for slot, (a, b) in enumerate(zip(padded, new)):
            if a != b:
                keys.append(SlotKey(svc_id, slot))
                olds.append(a if a != NO_BACKEND else None)
                news.append(b)
    return Step(UPSERT, SLOTS, keys, olds, news)


def _slot_deletes(want: Mapping[int, Tuple[int, ...]], have: Mapping[int, Tuple[int, ...]]) -> Step:
    keys: List[SlotKey] = []
    olds: List[int] = []
    for svc_id in _ids_in_order(svc for svc, table in have.items() if len(want.get(svc, ())) < len(table)):
        old, keep = have[svc_id], len(want.get(svc_id, ()))
        for slot in range(keep, len(old)):
            if old[slot] != NO_BACKEND:
                keys.append(SlotKey(svc_id, slot))
                olds.append(old[slot])
    return Step(DELETE, SLOTS, keys, olds)


def by_family(step: Step) -> List[Step]:
    """A step on a table whose IPv6 records live in a twin map (ebpflb.maps.IPV6_TWINS) as one
    step per kernel map, IPv4 first; any other step as it is. A record goes where its address
    says: its new value's for an upsert, its old one's for a delete."""
    if step.map not in IPV6_TWINS or not step.keys:
        return [step]
    values = step.news if step.action == UPSERT else step.olds
    twin = IPV6_TWINS[step.map]
    parts: Dict[MapId, Tuple[List[Any], List[Any], List[Any]]] = {}
    for key, old, new, value in zip(step.keys, step.olds, step.news, values):
        part = parts.setdefault(kernel_map(step.map, key, value), ([], [], []))
        part[0].append(key)
        part[1].append(old)
        part[2].append(new)
    if twin not in parts:
        return [step]  # IPv4 only: the common case keeps its step
    return [Step(step.action, map_id, *parts[map_id]) for map_id in (step.map, twin)
            if map_id in parts]


def _family_moves(step: Step) -> Optional[Step]:
    """The deletes an upsert implies when a record changes family under the same key (a backend
    id given to an IPv6 backend after an IPv4 one): the old record leaves the other kernel map."""
    if step.map != BACKENDS or step.action != UPSERT:
        return None
    keys, olds = [], []
    for key, old, new in zip(step.keys, step.olds, step.news):
        if old is not None and is_ipv6(old.addr) != is_ipv6(new.addr):
            keys.append(key)
            olds.append(old)
    return Step(DELETE, BACKENDS, keys, olds) if keys else None


def diff(desired: Records, current: Records) -> Plan:
    """Ordered writes turning `current` into `desired`; equal records are not written. Only the
    changed keys are sorted (for a readable, deterministic plan). Steps name kernel maps: IPv6
    records go to the twin maps (by_family)."""
    upserts: List[Step] = []
    deletes: List[Step] = []
    moves: List[Step] = []
    for name in WRITE_ORDER:
        want, have = desired[name], current[name]
        if name == SLOTS:
            upserts.append(_slot_upserts(want, have))
            continue
        if not have:
            changed = list(want)
            _sort(changed, name)
            step = Step(UPSERT, name, changed, None, [want[k] for k in changed])
        else:
            get = have.get
            changed = [key for key, value in want.items() if get(key) != value]
            _sort(changed, name)
            step = Step(UPSERT, name, changed, [get(k) for k in changed],
                        [want[k] for k in changed])
        upserts.extend(by_family(step))
        move = _family_moves(step)
        if move is not None:
            moves.extend(by_family(move))
    for name in reversed(WRITE_ORDER):
        want, have = desired[name], current[name]
        if name == SLOTS:
            deletes.append(_slot_deletes(want, have))
            continue
        gone = [key for key in have if key not in want]
        _sort(gone, name)
        deletes.extend(by_family(Step(DELETE, name, gone, [have[k] for k in gone])))
        if name == BACKENDS:
            deletes.extend(moves)
    return Plan(upserts + deletes)


def diff_map(map_id: MapId, want: Mapping[Any, Any], have: Mapping[Any, Any]) -> Plan:
    """The writes turning one keyed map's records `have` into `want`: new and changed records
    first, removals last (so nothing is missing while they run), keys sorted; IPv6 records in
    the twin map (by_family)."""
    changed = sorted((k for k, v in want.items() if have.get(k) != v), key=_sort_key(map_id))
    gone = sorted((k for k in have if k not in want), key=_sort_key(map_id))
    return Plan(by_family(Step(UPSERT, map_id, changed, [have.get(k) for k in changed],
                               [want[k] for k in changed]))
                + by_family(Step(DELETE, map_id, gone, [have[k] for k in gone])))


# Steps larger than this keep the records' own order: the order within a step does not matter
# to the kernel, only to a person reading a plan, and nobody reads 100,000 lines.
SORTED_STEP_MAX = 10000


def _sort(keys: List[Any], map_id: MapId) -> None:
    if len(keys) <= SORTED_STEP_MAX:
        keys.sort(key=_sort_key(map_id))


def _address_order(address: str) -> Tuple[int, bytes]:
    """IPv4 before IPv6, each in address order."""
    if ":" in address:
        return (6, socket.inet_pton(socket.AF_INET6, address))
    return (4, socket.inet_aton(address))


def _svc_key_order(key: SvcKey) -> Tuple:
    return (_address_order(key.vip), key.port, key.proto, key.scope)


def _range_order(key: SrcRangeKey) -> Tuple:
    net = ip_network(key.cidr, strict=False)  # a dump may hold host bits
    return (key.svc_id, net.version, int(net.network_address), net.prefixlen)


def _sort_key(map_id: MapId):
    if map_id == SERVICES:
        return _svc_key_order
    if map_id == POD_ADDRS:
        # A device's marker (0.0.0.0: its sources are checked) after its addresses: written
        # first, it would refuse the pod's own packets until they are in.
        return lambda key: (key.ifindex, key.addr in POD_ADDR_MARKERS, _address_order(key.addr))
    if map_id == SRC_RANGES:
        return _range_order
    if map_id == VIPS:
        return _address_order
    return None  # ids: integers sort as they are


def check_capacity(plan: Plan, held: Mapping[MapId, int], limits: Mapping[str, int]) -> None:
    """Refuses a plan whose maps would overflow at their fullest point: during an apply the maps
    hold the old and the new records together, because removals run last. `held`: entries per
    map now (a slot table counts its slots)."""
    added: Dict[MapId, int] = {}
    for step in plan.steps:
        if step.action == UPSERT:
            added[step.map] = added.get(step.map, 0) + step.olds.count(None)
    for name, limit in limits.items():
        map_id = MapId(name)
        peak = held.get(map_id, 0) + added.get(map_id, 0)
        if peak > limit:
            raise CapacityError(f"map {name} would need {peak} entries during the update but holds "
                            f"{limit}; raise its size (agent flags) or program fewer services")
    # Backend ids come from one space for both families, and the per-id counters
    # (lb4_backend_stats) have room for max_backends of them: the two maps share that bound.
    limit = limits.get(BACKENDS.value)
    if limit is not None:
        twin = IPV6_TWINS[BACKENDS]
        peak = sum(held.get(m, 0) + added.get(m, 0) for m in (BACKENDS, twin))
        if peak > limit:
            raise CapacityError(f"maps {BACKENDS} and {twin} would need {peak} backend ids during "
                                f"the update, and the ids of both families number {limit}; raise "
                                "--max-backends or program fewer backends")


def counter_resets(new_svc_ids: Iterable[int], new_backend_ids: Iterable[int]) -> Plan:
    """Zeroing steps for ids the plan hands out that nothing in the maps holds now: their
    counters may still hold the traffic of an earlier owner of the id."""
    return Plan([Step(RESET, SVC_STATS, sorted(new_svc_ids)),
                 Step(RESET, BACKEND_STATS, sorted(new_backend_ids))])


def compute_plan(desired: DesiredState, current: Snapshot,
                 limits: Optional[Mapping[str, int]] = None,
                 defaults: PlanDefaults = PlanDefaults(),
                 live_svc_ids: Optional[AbstractSet[int]] = None) -> Plan:
    """The plan of a full sync: the whole desired state against what the maps hold. A TCP
    frontend that goes away drains (ebpflb.draining); one already draining goes when
    `live_svc_ids` (the service ids conntrack holds, when known) has no flow of it."""
    from .planner import Planner

    planner = Planner(limits, defaults)
    return planner.plan_full(_by_service(desired), current, live_svc_ids).plan


def _by_service(desired: DesiredState) -> Dict[str, List]:
    out: Dict[str, List] = {}
    for frontend, backends in desired.frontends.items():
        out.setdefault(frontend.service, []).append((frontend, backends))
    return out


def apply_to(snapshot: Snapshot, plan: Plan) -> Snapshot:
    """The records the maps hold once `plan` is applied (what the agent caches between syncs)."""
    out = snapshot.copy()
    tables: Dict[int, List[int]] = {}  # slot tables being edited, written back once at the end
    for step in plan.steps:
        if step.action == RESET:
            continue  # counters are not part of a snapshot
        if step.map == SLOTS:
            for key, new in zip(step.keys, step.news):
                table = tables.get(key.svc_id)
                if table is None:
                    table = tables[key.svc_id] = list(out.slots.get(key.svc_id, ()))
                if step.action == DELETE:
                    if key.slot < len(table):
                        table[key.slot] = NO_BACKEND
                else:
                    table.extend([NO_BACKEND] * (key.slot + 1 - len(table)))
                    table[key.slot] = new
            continue
        records = out[step.map]
        if step.action == DELETE:
            for key in step.keys:
                records.pop(key, None)
        else:
            records.update(zip(step.keys, step.news))
    for svc_id, table in tables.items():
        while table and table[-1] == NO_BACKEND:
            table.pop()
        if table:
            out.slots[svc_id] = tuple(table)
        else:
            out.slots.pop(svc_id, None)
    return out


@dataclass(frozen=True)
class ConntrackPurge:
    """Conntrack entries an applied plan makes wrong: every flow of a removed frontend (its id may
    be given to another), and UDP flows to a removed backend (kubernetes#19029: the next datagram
    of the same 5-tuple must reach a live backend). TCP flows to a removed backend are left to
    finish on their own, except half-open ones the backend never answered (a pod on a dead node):
    those only hold a table slot and a client's retries."""
    svc_ids: frozenset
    udp_backends: frozenset  # (svc_id, addr, port)
    tcp_backends: frozenset = frozenset()  # (svc_id, addr, port)

    def __bool__(self) -> bool:
        return bool(self.svc_ids or self.udp_backends or self.tcp_backends)


def conntrack_purge(plan: Plan, remaining: Optional[Mapping[SvcKey, Any]] = None) -> ConntrackPurge:
    """`remaining`: the frontends programmed after the plan. A record removed while its address
    keeps a record of the other scope (externalTrafficPolicy switched from Local to Cluster) is
    no frontend going away: its flows are left to finish, as kube-proxy's conntrack would."""
    deleted: Dict[int, SvcKey] = {}
    udp = set()
    for step in plan.steps:
        if step.action != DELETE:
            continue
        if TABLE_OF.get(step.map, step.map) == SERVICES:
            deleted.update((old.svc_id, key) for key, old in zip(step.keys, step.olds))
    tcp = set()
    for step in plan.steps:
        if step.action == DELETE and TABLE_OF.get(step.map, step.map) == BACKENDS:
            for old in step.olds:
                if old.svc_id in deleted:
                    continue
                if old.proto == PROTO_NUMBERS["UDP"]:
                    udp.add((old.svc_id, old.addr, old.port))
                elif old.proto == PROTO_NUMBERS["TCP"]:
                    tcp.add((old.svc_id, old.addr, old.port))
    moved = {svc_id for svc_id, key in deleted.items()
             if remaining is not None and key._replace(scope=1 - key.scope) in remaining}
    return ConntrackPurge(frozenset(set(deleted) - moved), frozenset(udp), frozenset(tcp))
