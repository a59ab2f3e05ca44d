"""What the CLI and the metrics endpoint read from a running data plane, as plain records: the
conntrack entries (all, or some frontends' flows), how full the tables are, and flushing them.
Joined with the views people read in ebpflb/views.py, above this layer."""
from typing import Any, Dict, Iterable, List, Optional

from .bcc_maps import CT6_TABLES, CT_TABLES, CtEntry, read_conntrack
from .percpu import count_entries


def flows(bpf: Any, svc_ids: Optional[Iterable[int]] = None) -> List[CtEntry]:
    """Forward conntrack entries (one per flow), optionally only those of some frontends."""
    wanted = set(svc_ids) if svc_ids is not None else None
    return [e for e in read_conntrack(bpf)
            if e.direction == "forward" and (wanted is None or e.svc_id in wanted)]


def conntrack_entries(bpf: Any) -> Dict[str, int]:
    """How many entries each conntrack table holds now (both directions of every flow)."""
    return {name: count_entries(bpf[name.encode()]) for name in CT_TABLES + CT6_TABLES}


def flush_conntrack(bpf: Any, svc_ids: Optional[Iterable[int]] = None) -> int:
    """Deletes the conntrack entries (both directions) of the given frontends, or all. Returns
    how many entries went. Established flows are re-hashed on their next packet."""
    wanted = set(svc_ids) if svc_ids is not None else None
    deleted = 0
    for name in CT_TABLES + CT6_TABLES:
        t = bpf[name.encode()]
        keys = [k for k, v in t.items() if wanted is None or v.svc_id in wanted]
        if keys:
            t.items_delete_batch((t.Key * len(keys))(*keys))
            deleted += len(keys)
    return deleted
