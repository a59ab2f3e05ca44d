"""The maps written from the node's devices rather than from the Services: lb4_node_ifs (each
node device's SNAT address) and lb4_pod_addrs (the addresses each pod device may send from).
The attachers say what a map (or one device's part of it) should hold; the change goes through
the same plan and apply as the Services' records (ebpflb.plan.diff_map, ebpflb.apply.apply_plan:
ordered, batched, undone on failure), so every map write of the agent has one path."""
import logging
from typing import Any, Callable, Mapping, Optional

from ..apply import MapWriter, apply_plan
from ..maps import IPV6_TWINS, MapId
from ..plan import diff_map

log = logging.getLogger(__name__)


def write_device_map(writer: MapWriter, map_id: MapId, want: Mapping[Any, Any],
                     only: Optional[Callable[[Any], bool]] = None,
                     have: Optional[Mapping[Any, Any]] = None) -> int:
    """Makes `map_id` hold `want` (IPv6 records in its twin map, ebpflb.maps.IPV6_TWINS): all of
    it, or (with `only`) the keys `only` accepts, the rest left alone. `have` is what those keys hold now when the caller knows it (else the map is
    read). Returns the number of records written or deleted."""
    if have is None:
        have = dict(writer.dump(map_id))
        if map_id in IPV6_TWINS:  # a table whose IPv6 records live in a twin map: both
            have.update(writer.dump(IPV6_TWINS[map_id]))
        if only is not None:
            have = {k: v for k, v in have.items() if only(k)}
    plan = diff_map(map_id, want, have)
    if len(plan):
        apply_plan(plan, writer)
        for op in plan.ops:
            log.debug("%s", op)
    return len(plan)
