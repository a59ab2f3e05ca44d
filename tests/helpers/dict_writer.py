"""A MapWriter over plain dicts, for pure tests of the planner, the syncer and the agent's logic.
The bpf tier applies the same plans to real maps through ebpflb.dataplane.bcc_maps."""
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ebpflb.maps import KERNEL_CONTROL_MAPS, SLOTS, slot_tables


class DictWriter:
    """`fail_at`: the record write (0-based, over all calls) that raises once, as a map that was
    full for a moment; the records of its batch before it are written, as the kernel does.
    `calls` counts writer calls (a batch is one); `log` lists every record written, in order."""

    def __init__(self, fail_at: int = -1) -> None:
        self.maps: Dict[str, Dict[Any, Any]] = {name: {} for name in KERNEL_CONTROL_MAPS}
        self.counters: Dict[str, Dict[int, int]] = {}
        self.writes = 0
        self.calls = 0
        self.fail_at = fail_at
        self.log: List[Tuple[str, str, Any]] = []  # (action, map, key) in order
        self.flows: Optional[Set[int]] = None

    def _tick(self) -> None:
        if self.writes == self.fail_at:
            self.fail_at = -1
            raise OSError(28, "No space left on device")
        self.writes += 1

    def upsert(self, m: str, keys: Sequence[Any], values: Sequence[Any]) -> None:
        self.calls += 1
        for k, v in zip(keys, values):
            self._upsert_one(m, k, v)

    def _upsert_one(self, m: str, k: Any, v: Any) -> None:
        self._tick()
        self.maps[m][k] = v
        self.log.append(("upsert", str(m), k))

    def delete(self, m: str, keys: Sequence[Any]) -> None:
        self.calls += 1
        for k in keys:
            self._delete_one(m, k)

    def _delete_one(self, m: str, k: Any) -> None:
        self._tick()
        self.maps[m].pop(k, None)
        self.log.append(("delete", str(m), k))

    def zero(self, m: str, ids: Sequence[int]) -> None:
        self.calls += 1
        for k in ids:
            self._tick()
            self.counters.setdefault(str(m), {})[k] = 0
            self.log.append(("reset", str(m), k))

    def dump(self, m: str) -> Dict[Any, Any]:
        return slot_tables(self.maps[m]) if m == SLOTS else dict(self.maps[m])

    def flow_service_ids(self) -> Optional[Set[int]]:
        return self.flows  # None: no conntrack here (a test may set the ids of open flows)
