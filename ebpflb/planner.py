"""The planner: which records each Service owns in the maps, and the plan for a change (pure core).

sources -> store -> model -> records -> **planner** -> apply. The planner keeps, per Service, the
records it programmed, and the cluster-wide facts a Service's records depend on: the service id
of every frontend, how many frontends share each VIP, which ids are in use, how full each map is.
- `plan(changed)`: the changed Services' new records against their current ones, so a change
  costs the Services it touches, at 10 Services or 100,000. Ids, capacity and write order are
  exactly those of a full plan: a new id is never one the maps still hold, the capacity check
  counts the whole maps, and the steps keep ebpflb.plan's order.
- `plan_full(everything, current)`: every Service's records against `current` (a read-back of
  the maps): at start, after a failed apply, and on the agent's slow timer, when it finds nothing
  to do unless something else wrote the maps (drift).
A TCP frontend a plan removes stays as a draining record, owned by `Draining(key)`, until the
conntrack GC finds no flow of it (`release_drained`); a Service that asks for its key again
takes it over, with its service id (ebpflb.draining).
A plan is applied, then committed (`PendingPlan.commit`); one that was not applied leaves the
planner as it was.
"""
from __future__ import annotations

import heapq
from typing import (AbstractSet, Callable, Dict, Hashable, Iterable, List, Mapping, Optional,
                    Sequence, Set, Tuple)

from .draining import Draining, drained_records, drains, is_draining, still_open
from .maps import VIPS, VIPS6, MapId, Records, SvcKey
from .model import Backend, Frontend
from .plan import OwnershipError, Plan, PlanError, check_capacity, counter_resets, diff
from .records import PlanDefaults, build_records

Owner = Hashable  # a Service: (namespace, name), or "namespace/name"
OwnerFrontends = Sequence[Tuple[Frontend, Tuple[Backend, ...]]]
BackendIdentity = Tuple[int, str, int, int]  # (svc id, address, port, protocol)


class IdPool:
    """Ids from 1 up (0 means "none" in the data plane): the smallest one nothing uses. A bit
    per id (a set of 400,000 ints would take tens of MiB)."""

    def __init__(self, used: Iterable[int] = ()) -> None:
        self._bits = bytearray(1024)
        self._free: List[int] = []  # freed ids below _next (a heap)
        self._next = 1
        for i in used:
            self._set(i, True)

    def _set(self, i: int, on: bool) -> None:
        byte = i >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        if on:
            self._bits[byte] |= 1 << (i & 7)
        else:
            self._bits[byte] &= ~(1 << (i & 7)) & 0xFF

    def __contains__(self, i: int) -> bool:
        byte = i >> 3
        return byte < len(self._bits) and bool(self._bits[byte] >> (i & 7) & 1)

    def take(self) -> int:
        """A free id, marked used at once (a plan takes many before it commits); given back
        if the plan is not applied."""
        while self._free:
            candidate = heapq.heappop(self._free)
            if candidate not in self:
                self._set(candidate, True)
                return candidate
        bits, i = self._bits, self._next
        # Inline bit test: a full sync takes hundreds of thousands of ids.
        while (i >> 3) < len(bits) and bits[i >> 3] >> (i & 7) & 1:
            i += 1
        self._next = i + 1
        self._set(i, True)
        return i

    def give_back(self, ids: Iterable[int]) -> None:
        """Ids taken for a plan that was not applied."""
        for i in ids:
            if i in self:
                self._set(i, False)
                heapq.heappush(self._free, i)

    def commit(self, freed: Iterable[int]) -> None:
        """A plan is in the maps: the ids its removals freed may be given out again."""
        for i in freed:
            if i in self:
                self._set(i, False)
                heapq.heappush(self._free, i)


class _Ids:
    """The IdSource of one plan: ids the records had keep, new ones come from the pools."""

    def __init__(self, svc_ids: Mapping[SvcKey, int], backends: Mapping[int, object],
                 svc_pool: IdPool, backend_pool: IdPool) -> None:
        self._svc_ids = svc_ids
        self._backend_ids: Dict[BackendIdentity, int] = {}
        # The lowest id wins should two records share an identity (never written so by us).
        for backend_id in sorted(backends, reverse=True):
            v = backends[backend_id]
            self._backend_ids[(v.svc_id, v.addr, v.port, v.proto)] = backend_id  # type: ignore[attr-defined]
        self._svc_pool, self._backend_pool = svc_pool, backend_pool
        self._take_backend = backend_pool.take
        self.new_svc_ids: List[int] = []
        self.new_backend_ids: List[int] = []

    def service_id(self, key: SvcKey) -> int:
        svc_id = self._svc_ids.get(key)
        if svc_id is None:
            svc_id = self._svc_pool.take()
            self.new_svc_ids.append(svc_id)
        return svc_id

    def backend_id(self, svc_id: int, addr: str, port: int, proto: int) -> int:
        identity = (svc_id, addr, port, proto)
        backend_id = self._backend_ids.get(identity)
        if backend_id is None:
            backend_id = self._backend_ids[identity] = self._take_backend()
            self.new_backend_ids.append(backend_id)
        return backend_id

    def give_back(self) -> None:
        self._svc_pool.give_back(self.new_svc_ids)
        self._backend_pool.give_back(self.new_backend_ids)


class PendingPlan:
    """A plan not applied yet: `commit()` once it is in the maps, `abort()` if it is not."""

    def __init__(self, plan: Plan, commit: Callable[[], None], abort: Callable[[], None]) -> None:
        self.plan = plan
        self._commit, self._abort = commit, abort
        self._done = False

    def commit(self) -> None:
        if not self._done:
            self._done = True
            self._commit()

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._abort()


# One owner's records as kept between plans: tuples of items, a few hundred bytes for a
# Service where six dicts would take over a kilobyte; made into Records only when planned.
Compact = Tuple[tuple, tuple, tuple, tuple, tuple, tuple]


def _compact(records: Records) -> Compact:
    return (tuple(records.services.items()), tuple(records.slots.items()),
            tuple(records.backends.items()), tuple(records.meta.items()),
            tuple(records.vips.items()), tuple(records.src_ranges.items()))


def _expand(compact: Compact) -> Records:
    services, slots, backends, meta, vips, src_ranges = compact
    return Records(dict(services), dict(slots), dict(backends), dict(meta), dict(vips),
                   dict(src_ranges))


def _merge(into: Records, part: Records) -> None:
    into.services.update(part.services)
    into.slots.update(part.slots)
    into.backends.update(part.backends)
    into.meta.update(part.meta)
    into.src_ranges.update(part.src_ranges)
    for vip, n in part.vips.items():
        into.vips[vip] = into.vips.get(vip, 0) + n


def _ids_of(records: Records) -> Tuple[Set[int], Set[int]]:
    """(service ids, backend ids) the records use."""
    svc_ids = {v.svc_id for v in records.services.values()}
    svc_ids.update(records.slots, records.meta)
    svc_ids.update(k.svc_id for k in records.src_ranges)
    return svc_ids, set(records.backends)


class Planner:
    def __init__(self, limits: Optional[Mapping[str, int]] = None,
                 defaults: PlanDefaults = PlanDefaults()) -> None:
        self.limits = dict(limits or {})
        self.defaults = defaults
        self._owned: Dict[Owner, Compact] = {}
        self._svc_ids: Dict[SvcKey, int] = {}  # every programmed frontend's service id
        self._owner_of: Dict[SvcKey, Owner] = {}
        self._vips: Dict[str, int] = {}  # frontends per VIP, over every Service
        self._held: Dict[MapId, int] = {}  # kernel entries per map
        self._svc_pool = IdPool()
        self._backend_pool = IdPool()
        self._draining: Dict[SvcKey, int] = {}  # draining frontends and their service ids

    # --- what is programmed --------------------------------------------------------------
    def frontend_ids(self) -> Mapping[SvcKey, int]:
        """Every programmed frontend and its service id."""
        return self._svc_ids

    def held(self) -> Dict[MapId, int]:
        return dict(self._held)

    def draining(self) -> Mapping[SvcKey, int]:
        """The draining frontends and their service ids."""
        return self._draining

    def records(self) -> Records:
        """Everything programmed, as one Records (costs the whole state: tests and debugging)."""
        out = Records()
        for part in self._owned.values():
            _merge(out, _expand(part))
        return out

    # --- incremental -----------------------------------------------------------------------
    def plan(self, changed: Mapping[Owner, OwnerFrontends]) -> PendingPlan:
        """The plan that gives each owner in `changed` exactly these frontends (none: it goes).
        Raises PlanError, with nothing changed, when it would not fit or when a frontend is
        asked for by an owner while another one, not in `changed`, holds it."""
        current = Records()
        for owner in changed:
            old = self._owned.get(owner)
            if old is not None:
                _merge(current, _expand(old))
        ids = _Ids(self._svc_ids, current.backends, self._svc_pool, self._backend_pool)
        want_by_owner: Dict[Owner, Records] = {}
        want = Records()
        taken_over: Set[Owner] = set()  # draining records a Service asks for again
        try:
            for owner in sorted(changed, key=owner_order):
                records = Records()
                build_records(changed[owner], ids, self.defaults, records)
                for key in records.services:
                    holder = self._owner_of.get(key)
                    if holder is not None and holder != owner and holder not in changed:
                        if isinstance(holder, Draining):
                            taken_over.add(holder)
                            continue
                        raise OwnershipError(f"frontend {key} is asked for by {owner_text(owner)} "
                                             f"but held by {owner_text(holder)}")
                want_by_owner[owner] = records
                _merge(want, records)
            for holder in taken_over:
                _merge(current, _expand(self._owned[holder]))
            for owner, records in _drain(current, want, False).items():
                want_by_owner[owner] = records
                _merge(want, records)
            # VIP counts are cluster-wide: the changed owners' share moves, the rest stays.
            touched = set(current.vips) | set(want.vips)
            current_vips = {v: self._vips[v] for v in touched if v in self._vips}
            want_vips = {}
            for vip in touched:
                n = self._vips.get(vip, 0) - current.vips.get(vip, 0) + want.vips.get(vip, 0)
                if n:
                    want_vips[vip] = n
            current.vips, want.vips = current_vips, want_vips
            plan = diff(want, current)
            if plan:
                plan = counter_resets(ids.new_svc_ids, ids.new_backend_ids) + plan
            check_capacity(plan, self._held, self.limits)
        except PlanError:
            ids.give_back()
            raise

        def commit() -> None:
            old_svc, old_backend = _ids_of(current)
            new_svc, new_backend = _ids_of(want)
            for owner in list(changed) + list(taken_over):
                old = self._owned.pop(owner, None)
                if old is not None:
                    for key, _ in old[0]:
                        self._svc_ids.pop(key, None)
                        self._owner_of.pop(key, None)
                if isinstance(owner, Draining):
                    self._draining.pop(owner.key, None)
            for owner, records in want_by_owner.items():
                if records.services:
                    self._owned[owner] = _compact(records)
                for key, value in records.services.items():
                    self._svc_ids[key] = value.svc_id
                    self._owner_of[key] = owner
                    if isinstance(owner, Draining):
                        self._draining[key] = value.svc_id
            for vip in touched:
                if vip in want_vips:
                    self._vips[vip] = want_vips[vip]
                else:
                    self._vips.pop(vip, None)
            before, after = current.sizes(), want.sizes()
            for map_id in before:
                if map_id not in (VIPS, VIPS6):
                    self._held[map_id] = self._held.get(map_id, 0) + after[map_id] - before[map_id]
            # VIP counts are cluster-wide (shared by Services): counted from the whole table.
            ipv6 = sum(1 for vip in self._vips if ":" in vip)
            self._held[VIPS], self._held[VIPS6] = len(self._vips) - ipv6, ipv6
            self._svc_pool.commit(old_svc - new_svc)
            self._backend_pool.commit(old_backend - new_backend)

        return PendingPlan(plan, commit, ids.give_back)

    # --- full ----------------------------------------------------------------------------
    def plan_full(self, everything: Mapping[Owner, OwnerFrontends], current: Records,
                  live_svc_ids: Optional[AbstractSet[int]] = None) -> PendingPlan:
        """The plan that makes the maps, which hold `current`, hold exactly `everything`. New
        ids are never ids `current` holds: old records go only at the end of the apply.
        `live_svc_ids`: the service ids of the open flows, when known: a frontend already
        draining without any goes (`still_open`). One that goes away now drains whatever
        conntrack said before: a flow may start between that read and this apply."""
        used_svc, used_backend = _ids_of(current)
        svc_pool, backend_pool = IdPool(used_svc), IdPool(used_backend)
        ids = _Ids({key: value.svc_id for key, value in current.services.items()},
                   current.backends, svc_pool, backend_pool)
        want_by_owner: Dict[Owner, Records] = {}
        want = Records()
        for owner in sorted(everything, key=owner_order):
            records = Records()
            build_records(everything[owner], ids, self.defaults, records)
            if records.services:
                want_by_owner[owner] = records
                _merge(want, records)
        for owner, records in _drain(current, want, True, live_svc_ids).items():
            want_by_owner[owner] = records
            _merge(want, records)
        plan = diff(want, current)
        if plan:
            plan = counter_resets(ids.new_svc_ids, ids.new_backend_ids) + plan
        check_capacity(plan, current.sizes(), self.limits)

        def commit() -> None:
            self._owned = {owner: _compact(records) for owner, records in want_by_owner.items()}
            self._svc_ids = {key: value.svc_id for key, value in want.services.items()}
            self._owner_of = {key: owner for owner, records in want_by_owner.items()
                              for key in records.services}
            self._vips = dict(want.vips)
            self._held = want.sizes()
            svc_ids, backend_ids = _ids_of(want)
            self._svc_pool = IdPool(svc_ids)
            self._backend_pool = IdPool(backend_ids)
            self._draining = {owner.key: records.services[owner.key].svc_id
                              for owner, records in want_by_owner.items()
                              if isinstance(owner, Draining)}

        return PendingPlan(plan, commit, lambda: None)

    def release_drained(self, live_svc_ids) -> Optional[PendingPlan]:
        """The plan that removes the draining records whose service id no conntrack entry holds
        any more (`live_svc_ids`, from the conntrack GC); None when every one still has flows."""
        gone = {Draining(key): () for key, svc_id in self._draining.items()
                if not still_open(key, svc_id, self._draining, live_svc_ids)}
        return self.plan(gone) if gone else None


def _drain(current: Records, want: Records, keep_draining: bool,
           live_svc_ids: Optional[AbstractSet[int]] = None) -> Dict[Owner, Records]:
    """The draining records of the TCP frontends `current` holds and `want` does not. A record
    already draining stays as it is in a full plan (unless `live_svc_ids` says its flows ended);
    in an incremental one it is there only because its release was asked for."""
    out: Dict[Owner, Records] = {}
    draining = {k: v.svc_id for k, v in current.services.items() if is_draining(v)}
    for key, value in current.services.items():
        if key in want.services or not drains(key):
            continue
        if is_draining(value):
            if not keep_draining:
                continue
            if live_svc_ids is not None and not still_open(key, value.svc_id, draining,
                                                           live_svc_ids):
                continue
        out[Draining(key)] = drained_records(key, value, current.meta.get(value.svc_id, ""))
    return out


def owner_order(owner: Owner):
    """The stable order owners are planned in: Services by namespace and name, then other
    owners, then draining frontends."""
    if isinstance(owner, Draining):
        return (2, (str(owner.key),))
    return (0, owner) if isinstance(owner, tuple) else (1, (str(owner),))


def owner_text(owner: Owner) -> str:
    return "/".join(owner) if isinstance(owner, tuple) else str(owner)
