"""Reconcile: one full sync from a whole desired state to the maps (plan against a read-back,
then apply). `ebpflb sync` and tests program the maps through this function; the agent keeps a
Planner instead and plans per changed Service (ebpflb.syncer), with the same full sync at start.
"""
import logging
from dataclasses import dataclass
from typing import Mapping, Optional

from .apply import MapWriter, apply_plan, read_snapshot
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
    A TCP frontend that goes away drains while conntrack holds flows of it (ebpflb.draining);
    one that has none goes at once, as does a draining one whose flows ended. Raises PlanError
    (nothing written) or ApplyError (writes undone)."""
    if current is None:
        current = read_snapshot(writer)
    plan = compute_plan(desired, current, limits, defaults, writer.flow_service_ids())
    if dry_run or not plan:
        return SyncResult(plan, current, False)
    apply_plan(plan, writer)
    log.info("applied %d map writes: %s", len(plan), plan.counts())
    return SyncResult(plan, apply_to(current, plan), True)
