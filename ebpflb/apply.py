"""Apply: carrying out a plan against the maps through a MapWriter (the last step of
sources -> model -> plan -> apply).

The writer interface is all this module knows of the kernel; ebpflb/dataplane/bcc_maps.py
implements it with bcc. Consecutive upserts to one map go down as one batch (a Maglev change is
thousands of slots). A write that fails undoes the writes already made, in reverse, so the maps go
back to the last good state instead of staying half-applied.
"""
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Protocol, Sequence, Tuple

from .maps import CONTROL_MAPS, Snapshot
from .plan import DELETE, RESET, UPSERT, Op, Plan

log = logging.getLogger(__name__)


class MapWriter(Protocol):
    def update(self, map_name: str, key: Any, value: Any) -> None: ...
    def update_many(self, map_name: str, items: Sequence[Tuple[Any, Any]]) -> None: ...
    def delete(self, map_name: str, key: Any) -> None: ...
    def zero(self, map_name: str, key: Any) -> None: ...
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


def _batches(ops: Sequence[Op]) -> Iterator[List[Op]]:
    """Runs of consecutive upserts to the same map; every other op on its own."""
    run: List[Op] = []
    for op in ops:
        if run and (op.action != UPSERT or op.map != run[0].map):
            yield run
            run = []
        if op.action != UPSERT:
            yield [op]
        else:
            run.append(op)
    if run:
        yield run


def _do(writer: MapWriter, batch: List[Op]) -> None:
    op = batch[0]
    if op.action == DELETE:
        writer.delete(op.map, op.key)
    elif op.action == RESET:
        writer.zero(op.map, op.key)
    elif len(batch) == 1:
        writer.update(op.map, op.key, op.new)
    else:
        writer.update_many(op.map, [(o.key, o.new) for o in batch])


def _undo(writer: MapWriter, op: Op) -> None:
    if op.action == RESET:
        return  # the counters of an id nobody used are not worth restoring
    if op.old is None:
        writer.delete(op.map, op.key)
    else:
        writer.update(op.map, op.key, op.old)


def apply_plan(plan: Plan, writer: MapWriter) -> ApplyResult:
    done: List[Op] = []
    for batch in _batches(plan.ops):
        try:
            _do(writer, batch)
        except (OSError, KeyError, ValueError) as exc:
            # A failed batch may have written part of itself: undo all of it (harmless for the
            # rest, which still hold the old values) along with everything before it.
            undo = done + batch
            log.error("map write failed: %s: %s; undoing %d writes", batch[0], exc, len(undo))
            rolled_back = True
            for earlier in reversed(undo):
                try:
                    _undo(writer, earlier)
                except (OSError, KeyError, ValueError) as undo_exc:
                    log.error("undo of %s failed: %s", earlier, undo_exc)
                    rolled_back = False
            raise ApplyError(batch[0], exc, rolled_back) from exc
        done.extend(batch)
    return ApplyResult(writes=len(done))
