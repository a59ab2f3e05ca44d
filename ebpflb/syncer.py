"""The agent's control-plane state between events, and one sync step at a time (pure core apart
from the MapWriter it is given).

sources -> changes -> **store -> model -> planner -> apply**. `take()` files a batch of object
changes: the store keeps the objects, the model recomputes the Services they touch (and any
Service a clash moved). `sync()` then plans those Services alone against the records they own
and applies the plan: one endpoint change costs one Service, at any cluster size. A burst is
whatever arrived since the last sync, planned and written as one.

A full sync (the whole desired state against a read-back of the maps) runs first, after any
failed apply, and when the agent's timer asks (`request_full`); in steady state it finds
nothing, and what it does find is drift, logged and counted. A plan that does not fit is refused
whole and its Services stay pending, retried with the next sync; the maps keep what they had.
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field, replace
from typing import AbstractSet, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from .apply import ApplyError, MapWriter, apply_plan, read_snapshot
from .changes import Change
from .desired import ClusterModel, GatewayOwner, Owner
from .draining import is_draining
from .gcpause import give_back_memory, paused_gc
from .model import DesiredState, HealthCheck, ModelContext, SkippedService
from .plan import CapacityError, ConntrackPurge, OwnershipError, Plan, PlanError, conntrack_purge
from .planner import Planner, owner_order, owner_text
from .records import PlanDefaults
from .store import ObjectStore

log = logging.getLogger(__name__)

INCREMENTAL = "incremental"
FULL = "full"
PERIODIC = "periodic"  # the full sync of the agent's slow timer: whatever it writes is drift
# A batch at least this large is planned with the cyclic garbage collector paused: building
# records allocates in bulk, and collections walking the whole heap would cost more than the work.
BULK = 1000


APPLIED = "applied"
REFUSED = "refused"  # the plan would not fit (PlanError): nothing written
FAILED = "failed"  # a write failed (ApplyError): the earlier writes were undone


@dataclass(frozen=True)
class SyncOutcome:
    kind: str  # INCREMENTAL or FULL
    status: str  # APPLIED, REFUSED or FAILED
    plan: Plan
    services: int  # Services planned
    seconds: float  # plan + apply
    plan_seconds: float
    error: Optional[str] = None
    reason: str = ""  # why a full sync ran: "start", "after a failed apply", "periodic", ...
    purged: Optional[ConntrackPurge] = None

    @property
    def applied(self) -> bool:
        return self.status == APPLIED

    @property
    def writes(self) -> int:
        return len(self.plan) if self.applied else 0


@dataclass
class SyncCounters:
    incremental: int = 0
    full: int = 0
    refused: int = 0
    failed: int = 0
    writes: int = 0
    drift_repairs: int = 0  # writes a full sync made that no change asked for
    history: Dict[str, int] = field(default_factory=dict)


class Syncer:
    def __init__(self, writer: MapWriter, limits: Optional[Mapping[str, int]] = None,
                 defaults: PlanDefaults = PlanDefaults(), ctx: ModelContext = ModelContext(),
                 purge: Optional[Callable[[ConntrackPurge], int]] = None) -> None:
        self.writer = writer
        self.store = ObjectStore()
        self.model = ClusterModel(ctx)
        self.planner = Planner(limits, defaults)
        self.counters = SyncCounters()
        self._purge = purge
        # Services (and Gateways) whose model changed, not yet programmed
        self._pending: Set[Owner] = set()
        self._full_reason: Optional[str] = "start"
        # Why the last sync left something pending (a refused plan, a failed write); None when
        # it programmed everything it was given.
        self.last_error: Optional[str] = None

    # --- input ---------------------------------------------------------------------------
    def take(self, changes: Iterable[Change]) -> int:
        """Files object changes; returns how many Services they touch."""
        changes = list(changes)
        with paused_gc(len(changes) >= BULK):
            touched = self.store.apply(changes)
            self._pending |= self.model.update(self.store, touched)
        return len(touched)

    def set_context(self, ctx: ModelContext) -> int:
        """New node facts (node addresses for NodePorts); returns how many Services they touch."""
        keys = self.model.set_context(ctx)
        if keys or self.model.gateways_stale:
            with paused_gc(len(keys) >= BULK):
                self._pending |= self.model.update(self.store, keys)
        return len(keys)

    def request_full(self, reason: str) -> None:
        if self._full_reason is None:
            self._full_reason = reason

    # --- state ---------------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        """A sync has something to do."""
        return bool(self._pending) or self._full_reason is not None

    def health_checks(self) -> Tuple[HealthCheck, ...]:
        return self.model.health_checks()

    def skipped(self) -> Tuple[SkippedService, ...]:
        return self.model.skipped()

    def unprogrammed_gateways(self) -> Dict[str, str]:
        """Gateways ("namespace/name") whose frontends are not in the maps yet, and why."""
        why = "not in the maps yet: a sync is due"
        if self.last_error is not None:
            why = f"not in the maps: the last sync did not program it ({self.last_error})"
        return {f"{o.namespace}/{o.name}": why for o in self._pending
                if isinstance(o, GatewayOwner)}

    def desired_state(self) -> DesiredState:
        """The whole desired state (costs the whole state: CLI and tests)."""
        return self.model.desired_state()

    # --- sync ----------------------------------------------------------------------------
    def sync(self) -> Optional[SyncOutcome]:
        """Programs what is pending: a full sync when one is due, else the changed Services.
        None when there was nothing to do."""
        outcome = self._sync()
        if outcome is not None:
            self.last_error = outcome.error if self._pending or not outcome.applied else None
        return outcome

    def _sync(self) -> Optional[SyncOutcome]:
        if self._full_reason is not None and (self._full_reason != PERIODIC or not self._pending):
            return self.full_sync(self._full_reason)
        if not self._pending:
            return None
        keys = self._pending
        started = time.perf_counter()
        with paused_gc(len(keys) >= BULK):
            changed = {key: self.model.frontends_of(key) for key in keys}
            try:
                pending = self.planner.plan(changed)
            except OwnershipError as exc:
                self.counters.refused += 1
                self.request_full("planner and model disagree")
                log.error("%d changed Services not programmed: %s; a full sync follows",
                          len(keys), exc)
                return self._refused(INCREMENTAL, len(keys), started, str(exc))
            except PlanError as exc:
                if len(keys) > 1:
                    # One Service that does not fit must not hold back every other change.
                    return self._one_by_one(sorted(keys, key=owner_order), started, exc)
                self.counters.refused += 1
                log.error("changed %s not programmed: %s", _what(next(iter(keys))), exc)
                return self._refused(INCREMENTAL, len(keys), started, str(exc))
            planned = time.perf_counter()
            outcome = self._apply(INCREMENTAL, pending, len(keys), started, planned, "")
        if outcome.applied:
            self._pending = set()
            self.counters.incremental += 1
        return outcome

    def release_drained(self, live_svc_ids) -> Optional[SyncOutcome]:
        """Removes the draining frontends no open flow uses any more (`live_svc_ids`: the service
        ids the conntrack GC found). None when there was nothing to remove, or when a full sync
        is due (it comes first: the planner may not know what the maps hold)."""
        if self._full_reason is not None:
            return None
        started = time.perf_counter()
        try:
            pending = self.planner.release_drained(live_svc_ids)
        except PlanError as exc:  # removals only: cannot overflow; never stop the agent
            log.error("draining frontends not released: %s", exc)
            return None
        if pending is None:
            return None
        gone = pending.plan.counts().get("lb4_services delete", 0)
        outcome = self._apply(INCREMENTAL, pending, 0, started, time.perf_counter(), "drained")
        if outcome.applied:
            log.info("%d draining frontends released: their last flows ended", gone)
        return outcome

    def _one_by_one(self, keys: List[Owner], started: float, first: PlanError) -> SyncOutcome:
        """After a batch that did not fit: each Service alone; those that fit go in, the others
        stay pending (retried with the next sync)."""
        steps: List[Plan] = []
        refused = []
        for key in keys:
            try:
                pending = self.planner.plan({key: self.model.frontends_of(key)})
            except PlanError as exc:
                refused.append(f"{owner_text(key)}: {exc}")
                continue
            outcome = self._apply(INCREMENTAL, pending, 1, time.perf_counter(),
                                  time.perf_counter(), "")
            if not outcome.applied:
                return outcome  # a write failed: a full sync follows
            self._pending.discard(key)
            steps.append(outcome.plan)
        self.counters.refused += len(refused)
        for reason in refused[:20]:
            log.error("changed Service not programmed: %s", reason)
        if len(refused) > 20:
            log.error("... and %d more changed Services not programmed", len(refused) - 20)
        now = time.perf_counter()
        if not steps:
            return SyncOutcome(INCREMENTAL, REFUSED, Plan(), len(keys), now - started,
                               now - started, f"{len(refused)} Services not programmed: {first}")
        self.counters.incremental += 1
        plan = Plan([step for p in steps for step in p.steps])
        return SyncOutcome(INCREMENTAL, APPLIED, plan, len(keys), now - started, now - started,
                           f"{len(refused)} Services not programmed: {refused[0]}"
                           if refused else None)

    def _refused(self, kind: str, services: int, started: float, error: str) -> SyncOutcome:
        now = time.perf_counter()
        return SyncOutcome(kind, REFUSED, Plan(), services, now - started, now - started, error)

    def full_sync(self, reason: str = "requested") -> SyncOutcome:
        started = time.perf_counter()
        # Everything the model holds is about to be programmed from scratch.
        self._pending = set()
        with paused_gc(True):
            current = read_snapshot(self.writer)
            everything = {key: self.model.frontends_of(key) for key in self.model.holders()}
            not_fitting = None
            try:
                pending = self.planner.plan_full(everything, current, self._flows(current))
            except CapacityError as exc:
                fit = self._what_fits(everything, current)
                if fit is None:
                    return self._full_refused(reason, started, len(everything), exc)
                pending, refused = fit
                # The rest stay pending: each later sync offers them again (one by one), so
                # they go in as soon as room is made, and readiness names them meanwhile.
                self._pending |= set(refused)
                self.counters.refused += len(refused)
                not_fitting = (f"{len(refused)} of {len(everything)} Services not programmed "
                               f"(the maps are full): {exc}")
                log.error("full sync (%s): %s; programmed the first %d (by namespace and name), "
                          "not %s%s", reason, not_fitting, len(everything) - len(refused),
                          ", ".join(owner_text(o) for o in refused[:5]),
                          f" and {len(refused) - 5} more" if len(refused) > 5 else "")
            except PlanError as exc:
                return self._full_refused(reason, started, len(everything), exc)
            planned = time.perf_counter()
            outcome = self._apply(FULL, pending, len(everything), started, planned, reason)
        if outcome.applied and not_fitting:
            outcome = replace(outcome, error=not_fitting)
        if outcome.applied:
            self._full_reason = None
            self.counters.full += 1
            if reason == PERIODIC and outcome.writes:
                # Pending changes were programmed first: whatever this one wrote is drift.
                self.counters.drift_repairs += outcome.writes
                log.warning("full sync (%s) repaired drift: %d map writes: %s", reason,
                            outcome.writes, outcome.plan.counts())
            # The state now lives as long as the agent: keep the cyclic GC from walking it on
            # every collection (a third off event-to-map latency at 10k Services, measured).
            # No collection first: at 100,000 Services one takes seconds, and the bulk work
            # made next to no cyclic garbage (reference counting freed the rest).
            gc.freeze()
            give_back_memory()
        return outcome

    def _full_refused(self, reason: str, started: float, services: int,
                      exc: PlanError) -> SyncOutcome:
        """Nothing was written. Until a full sync fits, the maps keep what they held and no
        incremental plan can start from them: the full sync stays due."""
        self.counters.refused += 1
        self._full_reason = reason
        log.error("full sync (%s) not programmed: %s", reason, exc)
        now = time.perf_counter()
        return SyncOutcome(FULL, REFUSED, Plan(), services, now - started, now - started,
                           str(exc), reason)

    def _what_fits(self, everything, current):
        """A full sync that does not fit the maps: the plan for the most Services that do, taken
        in a stable order (namespace, name), and the Services left out. One Service too many
        must not leave the node serving none (a dual-stack cluster needs a backend id per
        endpoint address of each family). A binary search over the count: each try is a whole
        plan, so this costs a few seconds at 10,000 Services, and only on this error path.
        None when not even the first Service fits."""
        owners = sorted(everything, key=owner_order)
        flows = self._flows(current)
        fits, too_many = 0, len(owners)  # owners[:too_many] does not fit (the whole failed)
        best = None
        while too_many - fits > 1:
            n = (fits + too_many) // 2
            try:
                best_try = self.planner.plan_full({o: everything[o] for o in owners[:n]}, current,
                                                  flows)
            except CapacityError:
                too_many = n
                continue
            fits, best = n, best_try
        if best is None:
            return None
        return best, owners[fits:]

    def _flows(self, current) -> Optional[AbstractSet[int]]:
        """The service ids conntrack holds, read only when the maps hold draining frontends (a
        restart: those whose flows ended go). None when unknown: they all stay, for the GC."""
        if not any(is_draining(v) for v in current.services.values()):
            return None
        try:
            return self.writer.flow_service_ids()
        except OSError as exc:
            log.warning("conntrack not read (%s): draining frontends stay until the next GC", exc)
            return None

    def _apply(self, kind: str, pending, services: int, started: float, planned: float,
               reason: str) -> SyncOutcome:
        plan = pending.plan
        if not plan:
            pending.commit()
            now = time.perf_counter()
            return SyncOutcome(kind, APPLIED, plan, services, now - started, planned - started,
                               reason=reason)
        try:
            apply_plan(plan, self.writer)
        except ApplyError as exc:
            pending.abort()
            self.counters.failed += 1
            self._full_reason = "after a failed apply"
            log.error("%s sync: %s; a full sync follows", kind, exc)
            now = time.perf_counter()
            return SyncOutcome(kind, FAILED, plan, services, now - started, planned - started,
                               str(exc), reason)
        pending.commit()
        self.counters.writes += len(plan)
        purge = conntrack_purge(plan, self.planner.frontend_ids())
        if purge and self._purge is not None:
            try:
                removed = self._purge(purge)
                log.info("%d conntrack entries removed (%d frontends gone, %d UDP backends gone)",
                         removed, len(purge.svc_ids), len(purge.udp_backends))
            except OSError as exc:  # the flows time out on their own; serving goes on
                log.warning("conntrack clean-up failed: %s", exc)
        now = time.perf_counter()
        return SyncOutcome(kind, APPLIED, plan, services, now - started, planned - started,
                           reason=reason, purged=purge)


def _what(owner: Owner) -> str:
    return str(owner) if isinstance(owner, GatewayOwner) else f"Service {owner_text(owner)}"
