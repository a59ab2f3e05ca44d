"""Reconcile: one full sync from a whole desired state to the maps (plan against a read-back,
then apply). `ebpflb sync` and tests program the maps through this function; the agent keeps a
Planner instead and plans per changed Service (ebpflb.syncer), with the same full sync at start.
"""
import logging
from dataclasses import dataclass
from typing import AbstractSet, Mapping, Optional

from .apply import ApplyError, MapWriter, apply_plan, read_snapshot
from .draining import is_draining
from .maps import Snapshot
from .model import DesiredState
from .plan import Plan, PlanDefaults, apply_to, compute_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    plan: Plan
    snapshot: Snapshot  # what the maps hold afterwards (unchanged for a dry run)
    applied: bool


def reconcile(desired: DesiredState, writer: MapWriter, limits: Optional[Mapping[str, int]] = None,
              current: Optional[Snapshot] = None, dry_run: bool = False,
              defaults: PlanDefaults = PlanDefaults()) -> SyncResult:
    """Plans against `current` (read from the maps when not given) and applies unless dry_run.
    A TCP frontend that goes away drains (ebpflb.draining); once applied, the draining ones
    conntrack holds no flow of go, in a second plan (read after the first apply: a flow may
    start until then). Raises PlanError (nothing written) or ApplyError (writes undone)."""
    if current is None:
        current = read_snapshot(writer)
    plan = compute_plan(desired, current, limits, defaults, _flows(writer, current))
    if dry_run or not plan:
        return SyncResult(plan, current, False)
    apply_plan(plan, writer)
    log.info("applied %d map writes: %s", len(plan), plan.counts())
    after = apply_to(current, plan)
    try:
        live = _flows(writer, after)
    except OSError as exc:  # the desired state is in; the release waits for the next sync
        log.warning("conntrack not read: draining frontends stay: %s", exc)
        live = None
    if live is not None:
        released = compute_plan(desired, after, limits, defaults, live)
        if released:
            try:
                apply_plan(released, writer)
            except ApplyError as exc:
                if not exc.rolled_back:
                    raise
                # The desired state is in; the records of ended flows go with the next sync.
                log.warning("draining frontends not released: %s", exc)
                return SyncResult(plan, after, True)
            plan, after = plan + released, apply_to(after, released)
    return SyncResult(plan, after, True)


def _flows(writer: MapWriter, snapshot: Snapshot) -> Optional[AbstractSet[int]]:
    """The service ids of the open flows, read only when a frontend drains."""
    if not any(is_draining(v) for v in snapshot.services.values()):
        return None
    return writer.flow_service_ids()
