"""Traffic statistics as people read them (pure core): per-frontend and per-backend counters from
the per-CPU maps (summed by ebpflb.statsagg), joined with the programmed services, with rates
between two readings, rendered like `ipvsadm -Ln --stats --rate` or as JSON."""
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .service_view import service_views
from .maps import FLOW_FIELDS, Counters, Snapshot
from .statsagg import rates as _rates
from .addresses import format_address


ZERO = Counters(0, 0, 0, 0, 0)


@dataclass(frozen=True)
class BackendStats:
    id: int
    backend: str
    counters: Counters
    rates: Optional[Tuple[float, ...]] = None  # per second, FLOW_FIELDS order


@dataclass(frozen=True)
class ServiceStats:
    id: int
    frontend: str
    service: str
    counters: Counters
    backends: Tuple[BackendStats, ...]
    rates: Optional[Tuple[float, ...]] = None


def build_stats(snapshot: Snapshot, svc_counters: Mapping[int, Counters],
                backend_counters: Mapping[int, Counters]) -> List[ServiceStats]:
    out = []
    for view in service_views(snapshot):
        backends = tuple(BackendStats(b.id, format_address(b.address, b.port), backend_counters.get(b.id, ZERO))
                         for b in view.backends)
        out.append(ServiceStats(view.id, view.frontend, view.service,
                                svc_counters.get(view.id, ZERO), backends))
    return out


def with_rates(before: List[ServiceStats], after: List[ServiceStats], seconds: float) -> List[ServiceStats]:
    """`after` with per-second rates against `before`; a frontend or backend new since `before`
    counts from zero."""
    prev_svc = {(s.id, s.frontend): s.counters for s in before}
    prev_be = {(s.id, b.id, b.backend): b.counters for s in before for b in s.backends}
    out = []
    for s in after:
        backends = tuple(
            BackendStats(b.id, b.backend, b.counters,
                         tuple(_rates(prev_be.get((s.id, b.id, b.backend), ZERO), b.counters, seconds)))
            for b in s.backends)
        out.append(ServiceStats(s.id, s.frontend, s.service, s.counters, backends,
                                tuple(_rates(prev_svc.get((s.id, s.frontend), ZERO), s.counters, seconds))))
    return out


def to_json(stats: List[ServiceStats]) -> List[Dict[str, Any]]:
    def counters(c: Counters, r: Optional[Tuple[float, ...]]) -> Dict[str, Any]:
        d: Dict[str, Any] = c._asdict()
        if r is not None:
            d["rates"] = dict(zip(FLOW_FIELDS, r))
        return d

    return [{"id": s.id, "frontend": s.frontend, "service": s.service, **counters(s.counters, s.rates),
             "backends": [{"id": b.id, "backend": b.backend, **counters(b.counters, b.rates)}
                          for b in s.backends]} for s in stats]


_COLUMNS = ("conns", "packets_in", "packets_out", "bytes_in", "bytes_out")
_HEAD = ("CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES")
_RATE_HEAD = ("CPS", "INPPS", "OUTPPS", "INBPS", "OUTBPS")


def render_table(stats: List[ServiceStats]) -> str:
    with_rate = any(s.rates is not None for s in stats)
    head = ("FRONTEND / BACKEND", "SERVICE") + _HEAD + (_RATE_HEAD if with_rate else ())
    rows = [head]

    def cells(c: Counters, r: Optional[Tuple[float, ...]]) -> Tuple[str, ...]:
        out = tuple(str(getattr(c, f)) for f in _COLUMNS)
        if with_rate:
            rate = dict(zip(FLOW_FIELDS, r or (0.0,) * len(FLOW_FIELDS)))
            out += tuple(f"{rate[f]:.1f}" for f in _COLUMNS)
        return out

    for s in stats:
        rows.append((s.frontend, s.service) + cells(s.counters, s.rates))
        for b in s.backends:
            rows.append(("  -> " + b.backend, "") + cells(b.counters, b.rates))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows)


def global_counters(verdicts: Mapping[Tuple[str, str], int], reasons: Mapping[str, int],
                    events: Mapping[str, int]) -> Dict[str, Any]:
    """The global counters as `ebpflb stats --verdicts` shows them: verdicts by hook, drop
    reasons, events. Every name is listed, zero or not, so the shape never changes."""
    by_hook: Dict[str, Dict[str, int]] = {}
    for (hook, verdict), n in verdicts.items():
        by_hook.setdefault(hook, {})[verdict] = n
    return {"verdicts": by_hook, "drops": dict(reasons), "events": dict(events)}


def render_global_counters(counters: Mapping[str, Any]) -> str:
    """A table of verdicts (a row per hook, a column per verdict that any hook counted), then
    the drop reasons and events that are not zero."""
    by_hook = counters["verdicts"]
    hooks = list(by_hook)
    if not hooks:
        return "no verdict counters"
    columns = [v for v in next(iter(by_hook.values()), {})
               if any(by_hook[h][v] for h in hooks)] or ["pass"]
    width = max(len(h) for h in hooks + ["hook"])
    cells = [[str(by_hook[h][v]) for v in columns] for h in hooks]
    widths = [max(len(v), *(len(row[i]) for row in cells)) for i, v in enumerate(columns)]
    lines = ["hook".ljust(width) + "  " + "  ".join(v.rjust(w) for v, w in zip(columns, widths))]
    for h, row in zip(hooks, cells):
        lines.append(h.ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))
    for title in ("drops", "events"):
        nonzero = {k: n for k, n in counters[title].items() if n}
        lines.append("")
        lines.append(f"{title}: " + (", ".join(f"{k} {n}" for k, n in nonzero.items())
                                     if nonzero else "none"))
    return "\n".join(lines)
