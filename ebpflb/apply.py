"""Apply: carrying out a plan against the maps through a MapWriter (the last step of
sources -> model -> plan -> apply).

The writer interface is all this module knows of the kernel; ebpflb/dataplane/bcc_maps.py
implements it with bcc. A write that fails undoes the writes already made, in reverse, so the
maps go back to the last good state instead of staying half-applied.
"""
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Protocol

from .maps import CONTROL_MAPS, Snapshot
from .plan import DELETE, Op, Plan

log = logging.getLogger(__name__)


class MapWriter(Protocol):
    def update(self, map_name: str, key: Any, value: Any) -> None: ...
    def delete(self, map_name: str, key: Any) -> None: ...
    def dump(self, map_name: str) -> Dict[Any, Any]: ...


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
    return {name: writer.dump(name) for name in CONTROL_MAPS}


def _do(writer: MapWriter, op: Op) -> None:
    if op.action == DELETE:
        writer.delete(op.map, op.key)
    else:
        writer.update(op.map, op.key, op.new)


def _undo(writer: MapWriter, op: Op) -> None:
    if op.old is None:
        writer.delete(op.map, op.key)
    else:
        writer.update(op.map, op.key, op.old)


def apply_plan(plan: Plan, writer: MapWriter) -> ApplyResult:
    done: List[Op] = []
    for op in plan.ops:
        try:
            _do(writer, op)
        except (OSError, KeyError, ValueError) as exc:
            log.error("map write failed: %s: %s; undoing %d earlier writes", op, exc, len(done))
            rolled_back = True
            for earlier in reversed(done):
                try:
                    _undo(writer, earlier)
                except (OSError, KeyError, ValueError) as undo_exc:
                    log.error("undo of %s failed: %s", earlier, undo_exc)
                    rolled_back = False
            raise ApplyError(op, exc, rolled_back) from exc
        done.append(op)
    return ApplyResult(writes=len(done))
