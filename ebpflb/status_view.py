"""`ebpflb status`: one data plane at a glance, built from what ebpflb.dataplane.survey read from the
kernel and what the owning agent wrote to its status file (ebpflb.status). Pure: the view and its
warnings are a function of those facts and the time, so each warning is tested with made-up
facts and the command against real agents."""
import time
from typing import Any, Dict, List, Optional

from . import abi

FILL_WARN = 0.9  # a map this full is worth a warning
# lb_dp_cfg's flags, by the name the view gives them.
DP_FLAGS = {"netfilter_grace": abi.LB_DP_F_NETFILTER_GRACE,
            "netfilter_new": abi.LB_DP_F_NETFILTER_NEW}


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _agent(owner_pid: Optional[int], status: Optional[Dict[str, Any]], now: float) -> Optional[dict]:
    if owner_pid is None:
        return None
    st = status if status and status.get("pid") == owner_pid else {}
    started = st.get("started")
    last = st.get("last_sync") or {}
    return {
        "pid": owner_pid, "version": st.get("version"), "started": started,
        "uptime_s": round(now - started, 1) if isinstance(started, (int, float)) else None,
        "source": st.get("source"), "ready": st.get("ready"), "problems": st.get("problems", []),
        "syncs": st.get("syncs"), "rejected": st.get("rejected"), "last_error": st.get("last_error"),
        "last_sync": {k: last.get(k) for k in ("kind", "reason", "services", "writes", "ms", "time")}
        if last else None,
        "skipped": len(st.get("skipped") or []), "refused": list(st.get("refused") or []),
        "repairs": dict(st.get("repairs") or {}), "socket_lb": st.get("socket_lb"),
        "unmatched_devices": list(st.get("unmatched_devices") or []),
        "takeover": st.get("takeover"),
        "status_file": bool(st),
    }


def _warnings(view: dict) -> List[str]:
    out = []
    agent = view["agent"]
    if agent is None:
        out.append("no agent owns this data plane: it serves what was last programmed, and "
                   "nothing follows changes")
    else:
        if not agent["status_file"]:
            out.append(f"the agent (pid {agent['pid']}) has not written its status file yet, or "
                       "it is another process's")
        elif agent["ready"] is False:
            problems = "; ".join(agent["problems"]) or "see its log"
            out.append(f"the agent is not ready: {problems}")
        if agent["last_error"]:
            out.append(f"the last sync did not program everything: {agent['last_error']}")
        if agent["refused"]:
            out.append(f"{len(agent['refused'])} objects refused by the source, first: "
                       f"{agent['refused'][0]}")
        for what in agent["unmatched_devices"]:
            out.append(f"{what} matches no device")
        takeover = agent["takeover"] or {}
        for failure in takeover.get("failed") or []:
            out.append(f"the takeover from kube-proxy is incomplete: {failure}")
        sock = agent["socket_lb"] or {}
        hooks = view["socket_hooks"]
        if sock.get("mode") not in (None, "off") and hooks is not None and not hooks["hooks"]:
            out.append(f"socket load balancing is {sock['mode']} but no hook is attached to "
                       f"{hooks['cgroup']}")
    for m in view["maps"]:
        if m.get("missing"):
            out.append(f"map {m['map']} is not pinned")
        elif m["entries"] is not None and m["max"] and m["entries"] / m["max"] >= FILL_WARN:
            consequence = ("the least recently used entries are evicted" if m["lru"]
                           else "new entries are refused")
            out.append(f"{m['map']} holds {m['entries']} of {m['max']} entries: {consequence}; "
                       "raise its size (ebpflb agent --help)")
    if not view["devices"]:
        out.append("no device of this network namespace runs the programs (a lab node: --netns)")
    if view["dp_flags"]:
        out.append(f"the programs leave flows to netfilter ({', '.join(view['dp_flags'])}): a "
                   "takeover from kube-proxy or a hand-back to it is under way, or stopped "
                   "half-way (an agent starting without --takeover clears it)")
    return out


def build(pin_dir: str, owner_pid: Optional[int], status: Optional[Dict[str, Any]],
          maps: List[dict], devices: List[dict], socket_hooks: Optional[dict],
          now: Optional[float] = None, dp_flags: Optional[int] = None) -> dict:
    now = time.time() if now is None else now
    maps = [dict(m, fill=round(m["entries"] / m["max"], 4) if m.get("entries") is not None
                 and m.get("max") else None) for m in maps]
    view = {"pin_dir": pin_dir, "pinned": all(not m.get("missing") for m in maps),
            "agent": _agent(owner_pid, status, now), "devices": devices,
            "socket_hooks": socket_hooks, "maps": maps,
            "dp_flags": [name for name, bit in DP_FLAGS.items() if (dp_flags or 0) & bit]}
    view["warnings"] = _warnings(view)
    return view


def render(view: dict, now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    lines = [f"Data plane  {view['pin_dir']}{'' if view['pinned'] else ' (partly pinned)'}"]
    agent = view["agent"]
    if agent is None:
        lines.append("Agent       none")
    else:
        state = {True: "ready", False: "not ready", None: "state unknown"}[agent["ready"]]
        parts = [f"pid {agent['pid']}"]
        if agent["version"]:
            parts.append(f"ebpflb {agent['version']}")
        if agent["uptime_s"] is not None:
            parts.append(f"up {_duration(agent['uptime_s'])}")
        lines.append(f"Agent       {', '.join(parts)}, {state}")
        if agent["source"]:
            last = agent["last_sync"]
            when = ""
            if last and isinstance(last.get("time"), (int, float)):
                when = (f"; last sync {last['kind']}, {last['writes']} writes, "
                        f"{_duration(now - last['time'])} ago")
            lines.append(f"Source      {agent['source']} ({agent['syncs']} syncs, "
                         f"{agent['rejected']} rejected{when})")
        if agent["skipped"]:
            lines.append(f"Skipped     {agent['skipped']} Services or ports (service list --all)")
        if agent["repairs"]:
            lines.append("Repairs     " + ", ".join(f"{k} {v}" for k, v in sorted(agent["repairs"].items())))
        takeover = agent["takeover"]
        if takeover and takeover.get("found"):
            lines.append(f"Takeover    from kube-proxy: {takeover['imported']} flows imported, "
                         f"{takeover['handed_over']} handed over, "
                         f"{sum((takeover.get('kept') or {}).values())} kept with netfilter, "
                         f"{len(takeover.get('removed') or [])} rule tables removed"
                         + (", INCOMPLETE" if takeover.get("failed") else ""))
    hooks = view["socket_hooks"]
    if hooks is not None:
        lines.append(f"Socket LB   {len(hooks['hooks'])} hooks on {hooks['cgroup']}"
                     + (f" ({', '.join(hooks['hooks'])})" if hooks["hooks"] else ""))
    devices = []
    for d in view["devices"]:
        tc = ["tc"] if len(d["tc"]) == 2 else [f"tc {h} only" for h in d["tc"]]
        hooks_of = ([f"xdp {d['xdp']}"] if d["xdp"] else []) + tc
        devices.append(f"{d['device']} ({', '.join(hooks_of)})")
    lines.append(f"Devices     {len(devices)}: " + ", ".join(devices) if devices else "Devices     none")
    lines.append("")
    rows = [("MAP", "ENTRIES", "MAX", "FILL")]
    for m in view["maps"]:
        if m.get("missing"):
            rows.append((m["map"], "-", "-", "not pinned"))
        elif m["entries"] is None:
            rows.append((m["map"], "array", str(m["max"]), ""))
        else:
            rows.append((m["map"], str(m["entries"]), str(m["max"]),
                         f"{m['fill'] * 100:.1f}%" + (" (LRU)" if m["lru"] else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if view["warnings"]:
        lines.append("")
        lines.append("Warnings")
        lines += [f"  - {w}" for w in view["warnings"]]
    return "\n".join(lines)
