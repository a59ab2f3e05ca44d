"""What the CLI and the metrics endpoint read from a running data plane: services with their
counters, the global counters, conntrack entries (with the rows and table of `ebpflb ct list`),
and flushing conntrack entries (the kernel edge of ebpflb.stats)."""
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ..apply import read_snapshot
from ..maps import BACKEND_STATS, CT_F_CLOSING, CT_F_EXTERNAL, CT_F_SRC_NAT, SVC_META, SVC_STATS
from ..stats import ServiceStats, build_stats, global_counters
from .bcc_maps import (CT_TABLES, DROP_REASONS, BccMapWriter, CtEntry, read_conntrack, read_stats,
                       read_verdicts)
from .percpu import count_entries, read_flow_stats


def read_service_stats(bpf: Any) -> List[ServiceStats]:
    snapshot = read_snapshot(BccMapWriter(bpf))
    return build_stats(snapshot, read_flow_stats(bpf, SVC_STATS), read_flow_stats(bpf, BACKEND_STATS))


def flows(bpf: Any, svc_ids: Optional[Iterable[int]] = None) -> List[CtEntry]:
    """Forward conntrack entries (one per flow), optionally only those of some frontends."""
    wanted = set(svc_ids) if svc_ids is not None else None
    return [e for e in read_conntrack(bpf)
            if e.direction == "forward" and (wanted is None or e.svc_id in wanted)]


def read_global_counters(bpf: Any) -> Dict[str, Any]:
    """`ebpflb stats --verdicts`: the verdicts by hook, the drop reasons and the events since the
    maps were created (ebpflb.stats.global_counters)."""
    stats = read_stats(bpf)
    return global_counters(read_verdicts(bpf), {k: stats[k] for k in DROP_REASONS},
                           {k: n for k, n in stats.items() if k not in DROP_REASONS})


def ct_state(entry: CtEntry) -> str:
    """A flow's state as `ct list` names it: established, half-open or closing (TCP); "-" (UDP)."""
    if entry.protocol != "TCP":
        return "-"
    if entry.flags & CT_F_CLOSING:
        return "closing"
    return "half-open" if entry.half_open else "established"


def flow_row(e: CtEntry, names: Mapping[int, str], now_ns: int) -> Dict[str, Any]:
    """One flow (its forward entry) as `ebpflb ct list` reports it, in its JSON shape: `names`
    the frontends' names (lb4_svc_meta), `now_ns` the time on the entries' clock
    (CLOCK_MONOTONIC, as bpf_ktime_get_ns())."""
    return {"protocol": e.protocol, "state": ct_state(e), "client": f"{e.saddr}:{e.sport}",
            "frontend": f"{e.daddr}:{e.dport}", "backend": f"{e.nat_addr}:{e.nat_port}",
            "service": names.get(e.svc_id, f"(gone, svc {e.svc_id})"),
            # A backend on another node is reached from this node's address (SNAT); a second
            # flow from one client port to one backend, from a port of its own.
            "snat": f"{e.nat2_addr}:{e.nat2_port}" if e.flags & CT_F_SRC_NAT else None,
            "external": bool(e.flags & CT_F_EXTERNAL),
            "age_seconds": round((now_ns - e.created_ns) / 1e9, 3),
            "idle_seconds": round((now_ns - e.last_seen_ns) / 1e9, 3)}


def flow_rows(bpf: Any, svc_ids: Optional[Iterable[int]] = None) -> List[Dict[str, Any]]:
    """`ebpflb ct list`: every flow, or only those of some frontends, oldest first (flow_row)."""
    import time

    names = read_snapshot(BccMapWriter(bpf))[SVC_META]
    now = time.monotonic_ns()
    return [flow_row(e, names, now)
            for e in sorted(flows(bpf, svc_ids), key=lambda e: e.created_ns)]


def render_flows(rows: List[Dict[str, Any]]) -> str:
    """flow_rows as `ebpflb ct list` prints them for people: aligned columns, then the count."""
    head = ("PROTO", "STATE", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "SERVICE", "AGE", "IDLE")
    table = [head] + [(r["protocol"], r["state"], r["client"], r["frontend"], r["backend"],
                       r["snat"] or "-", r["service"],
                       f"{r['age_seconds']:.0f}s", f"{r['idle_seconds']:.0f}s") for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip() for t in table]
    return "\n".join(lines + [f"{len(rows)} flows"])


def conntrack_entries(bpf: Any) -> Dict[str, int]:
    """How many entries each conntrack table holds now (both directions of every flow)."""
    return {name: count_entries(bpf[name.encode()]) for name in CT_TABLES}


def flush_conntrack(bpf: Any, svc_ids: Optional[Iterable[int]] = None) -> int:
    """Deletes the conntrack entries (both directions) of the given frontends, or all. Returns
    how many entries went. Established flows are re-hashed on their next packet."""
    wanted = set(svc_ids) if svc_ids is not None else None
    deleted = 0
    for name in CT_TABLES:
        t = bpf[name.encode()]
        keys = [k for k, v in t.items() if wanted is None or v.svc_id in wanted]
        if keys:
            t.items_delete_batch((t.Key * len(keys))(*keys))
            deleted += len(keys)
    return deleted
