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
from typing import Any, Dict, List, Optional, Protocol, Sequence, Set

from .maps import KERNEL_CONTROL_MAPS, MapId, Records, Snapshot
from .plan import DELETE, RESET, UPSERT, Op, Plan, Step

log = logging.getLogger(__name__)


class MapReader(Protocol):
    """Reads the control-plane maps as the records of ebpflb.maps (what read-only commands
    hold)."""

    def dump(self, map_id: MapId) -> Dict[Any, Any]: ...
    def flow_service_ids(self) -> Optional[Set[int]]:
        """The service ids the open flows (conntrack entries) hold; None when there is no
        conntrack to read (draining frontends are then all kept)."""


class MapWriter(MapReader, Protocol):
    """Writes (and reads) the control-plane maps, a batch per call (a single record is a batch
    of one). Keys and values are the records of ebpflb.maps."""

    def upsert(self, map_id: MapId, keys: Sequence[Any], values: Sequence[Any]) -> None: ...
    def delete(self, map_id: MapId, keys: Sequence[Any]) -> None:
        """Idempotent: a key already gone is not an error."""
    def zero(self, map_id: MapId, ids: Sequence[int]) -> None:
        """Zeroes the per-CPU counters of these ids."""


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


def read_snapshot(reader: MapReader) -> Snapshot:
    """What the control-plane maps hold, IPv6 twins merged into their tables (ebpflb.maps)."""
    out = Records()
    for name in KERNEL_CONTROL_MAPS:
        out[name].update(reader.dump(name))
    return out


def _do(writer: MapWriter, step: Step) -> None:
    if step.action == UPSERT:
        writer.upsert(step.map, step.keys, step.news)
    elif step.action == DELETE:
        writer.delete(step.map, step.keys)
    else:
        writer.zero(step.map, step.keys)


def _undo(writer: MapWriter, step: Step) -> None:
    if step.action == RESET:
        return  # the counters of an id nobody used are not worth restoring
    restore = [(k, old) for k, old in zip(step.keys, step.olds) if old is not None]
    new = [k for k, old in zip(step.keys, step.olds) if old is None]
    if new:
        writer.delete(step.map, new)
    if restore:
        writer.upsert(step.map, [k for k, _ in restore], [old for _, old in restore])


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
                      first, len(step.keys), exc, len(done) + 1)
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
