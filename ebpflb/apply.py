"""Apply: carrying out a plan against the maps through a MapWriter (the last step of
sources -> store -> model -> records -> plan -> apply).

The writer interface is all this module knows of the kernel; ebpflb/dataplane/bcc_maps.py
implements it with bcc and batch syscalls. Each step of a plan is one action on one map and goes
down as one batch (a full sync is hundreds of thousands of records, a Maglev change thousands of
slots). A write that fails undoes the writes already made, in reverse, so the maps go back to the
last good state instead of staying half-applied.
"""
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Protocol, Sequence, Tuple

from .maps import CONTROL_MAPS, Records, Snapshot
from .plan import DELETE, RESET, UPSERT, Op, Plan, Step

log = logging.getLogger(__name__)


class MapWriter(Protocol):
    def update(self, map_name: str, key: Any, value: Any) -> None: ...
    def update_many(self, map_name: str, items: Sequence[Tuple[Any, Any]]) -> None: ...
    def delete(self, map_name: str, key: Any) -> None: ...
    def zero(self, map_name: str, key: Any) -> None: ...
    def dump(self, map_name: str) -> Dict[Any, Any]: ...
    # Optional batch forms (used when present): delete_many(map, keys), zero_many(map, keys).


class ApplyError(RuntimeError):
    """A map write failed; the writes before it were undone."""

    def __init__(self, op: Op, cause: Exception, rolled_back: bool):
        self.op = op
        self.rolled_back = rolled_back
        state = "earlier writes undone" if rolled_back else "ROLLBACK FAILED, maps may be partial"
        super().__init__(f"writing {op} failed: {cause} ({state})")


@dataclass(frozen=True)
class ApplyResult:
    writes: int


def read_snapshot(writer: MapWriter) -> Snapshot:
    out = Records()
    for name in CONTROL_MAPS:
        out[name].update(writer.dump(name))
    return out


def _do(writer: MapWriter, step: Step) -> None:
    items = step.items
    if step.action == UPSERT:
        if len(items) == 1:
            key, _, new = items[0]
            writer.update(step.map, key, new)
        else:
            writer.update_many(step.map, [(key, new) for key, _, new in items])
        return
    keys = [key for key, _, _ in items]
    many = getattr(writer, "delete_many" if step.action == DELETE else "zero_many", None)
    if many is not None and len(keys) > 1:
        many(step.map, keys)
        return
    one = writer.delete if step.action == DELETE else writer.zero
    for key in keys:
        one(step.map, key)


def _undo(writer: MapWriter, step: Step) -> None:
    if step.action == RESET:
        return  # the counters of an id nobody used are not worth restoring
    for key, old, _ in reversed(step.items):
        if old is None:
            writer.delete(step.map, key)
        else:
            writer.update(step.map, key, old)


def apply_plan(plan: Plan, writer: MapWriter) -> ApplyResult:
    done: List[Step] = []
    for step in plan.steps:
        try:
            _do(writer, step)
        except (OSError, KeyError, ValueError) as exc:
            # A failed batch may have written part of itself: undo all of it (harmless for the
            # rest, which still hold the old values) along with everything before it.
            first = next(step.ops())
            log.error("map write failed: %s (a step of %d writes): %s; undoing %d steps",
                      first, len(step.items), exc, len(done) + 1)
            rolled_back = True
            for earlier in reversed(done + [step]):
                try:
                    _undo(writer, earlier)
                except (OSError, KeyError, ValueError) as undo_exc:
                    log.error("undo of %s failed: %s", next(earlier.ops()), undo_exc)
                    rolled_back = False
            raise ApplyError(first, exc, rolled_back) from exc
        done.append(step)
    return ApplyResult(writes=len(plan))
