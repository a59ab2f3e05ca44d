"""The views the CLI and the metrics endpoint show, read from a running data plane: what
ebpflb/dataplane/ reads from the kernel (maps, conntrack, counters, devices), joined with the pure
views people read (ebpflb.stats, ebpflb.service_view's names, ebpflb.explain, ebpflb.status_view).
This is the layer above dataplane/: nothing in dataplane/ imports a display module."""
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .apply import read_snapshot
from .dataplane.bcc_maps import (DROP_REASONS, BccMapReader, CtEntry, lookup_affinity,
                                 lookup_conntrack, lookup_sock_affinity, read_stats, read_verdicts)
from .dataplane.config import DataplaneConfig
from .dataplane.explain_inputs import conntrack_view, device
from .dataplane.percpu import read_flow_stats
from .dataplane.readers import flows
from .explain import AffinityView, Explanation, Flow, explain, frontend_record, reply_key
from .explain_socket import SocketExplanation, explain_socket, packet_path_note
from .maps import (BACKEND_STATS, BACKENDS, CT_F_CLOSING, CT_F_EXTERNAL, CT_F_HANDOVER,
                   CT_F_NETFILTER, CT_F_SRC_NAT, SERVICES, SVC_META, SVC_STATS, SvcKey)
from .stats import ServiceStats, build_stats, global_counters
from .addresses import format_address


# ---- stats

def read_service_stats(bpf: Any) -> List[ServiceStats]:
    snapshot = read_snapshot(BccMapReader(bpf))
    return build_stats(snapshot, read_flow_stats(bpf, SVC_STATS), read_flow_stats(bpf, BACKEND_STATS))



def read_global_counters(bpf: Any) -> Dict[str, Any]:
    """`ebpflb stats --verdicts`: the verdicts by hook, the drop reasons and the events since the
    maps were created (ebpflb.stats.global_counters)."""
    stats = read_stats(bpf)
    return global_counters(read_verdicts(bpf), {k: stats[k] for k in DROP_REASONS},
                           {k: n for k, n in stats.items() if k not in DROP_REASONS})



# ---- conntrack (`ebpflb ct list`)

def ct_state(entry: CtEntry) -> str:
    """A flow's state as `ct list` names it: established, half-open or closing (TCP); "-" (UDP);
    with "(netfilter)" for a flow netfilter translates (taken over from kube-proxy) and
    "(handover)" for one being handed over, whose packets are dropped meanwhile."""
    if entry.protocol != "TCP":
        state = "-"
    elif entry.flags & CT_F_CLOSING:
        state = "closing"
    else:
        state = "half-open" if entry.half_open else "established"
    if entry.flags & CT_F_HANDOVER:
        return f"{state} (handover)"
    return f"{state} (netfilter)" if entry.flags & CT_F_NETFILTER else state


def flow_row(e: CtEntry, names: Mapping[int, str], now_ns: int) -> Dict[str, Any]:
    """One flow (its forward entry) as `ebpflb ct list` reports it, in its JSON shape: `names`
    the frontends' names (lb4_svc_meta), `now_ns` the time on the entries' clock
    (CLOCK_MONOTONIC, as bpf_ktime_get_ns())."""
    return {"protocol": e.protocol, "state": ct_state(e), "client": format_address(e.saddr, e.sport),
            "frontend": format_address(e.daddr, e.dport),
            "backend": format_address(e.nat_addr, e.nat_port),
            "service": names.get(e.svc_id, f"(gone, svc {e.svc_id})"),
            # A backend on another node is reached from this node's address (SNAT); a second
            # flow from one client port to one backend, from a port of its own.
            "snat": format_address(e.nat2_addr, e.nat2_port) if e.flags & CT_F_SRC_NAT else None,
            "external": bool(e.flags & CT_F_EXTERNAL),
            "age_seconds": round((now_ns - e.created_ns) / 1e9, 3),
            "idle_seconds": round((now_ns - e.last_seen_ns) / 1e9, 3)}


def flow_rows(bpf: Any, svc_ids: Optional[Iterable[int]] = None) -> List[Dict[str, Any]]:
    """`ebpflb ct list`: every flow, or only those of some frontends, oldest first (flow_row)."""
    names = read_snapshot(BccMapReader(bpf))[SVC_META]
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



# ---- explain

class DeviceError(ValueError):
    """The device a packet is said to arrive on is not one of this network namespace."""


def explain_packet(writer: Any, flow: Flow, outside: bool = False,
                   ifname: Optional[str] = None) -> Tuple[Explanation, Optional[str]]:
    """`ebpflb explain`: what the program of the device the packet arrives on (`ifname` in this
    network namespace, None: not known; a node device when `outside`) does with it, from the maps
    `writer` reads and what the kernel holds for the flow (its conntrack entries, the client's
    affinity binding, the device); with the note on the socket hooks' path
    (ebpflb.explain_socket.packet_path_note), None when there is none. DeviceError when `ifname`
    is not a device here."""
    from .dataplane.sock_attach import read_mode

    bpf = writer.bpf
    snapshot = read_snapshot(writer)
    now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
    with_device = bool(ifname)  # without a device, ifindex 0: the binding is not checked
    entry = lookup_conntrack(bpf, flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto)
    ct = affinity = None
    table = {}
    if entry is not None:
        ct = conntrack_view(entry, now, with_device)
        rev = reply_key(flow, ct)  # the program checks it (a SNAT port still the flow's)
        reply = lookup_conntrack(bpf, rev.saddr, rev.sport, rev.daddr, rev.dport, flow.proto,
                                 reply=True)
        if reply is not None:
            table[rev] = conntrack_view(reply, now, with_device)
    key = SvcKey(flow.daddr, flow.dport, flow.proto)
    _, svc = frontend_record(snapshot, key, outside)  # from outside: a Local policy's own record
    bound = lookup_affinity(bpf, svc.svc_id, flow.saddr) if svc else None
    if bound is not None:
        affinity = AffinityView(bound[0], (now - bound[1]) / 1e9)
    backends = {b.addr for b in snapshot[BACKENDS].values() if svc and b.svc_id == svc.svc_id}
    try:
        dev = device(bpf, ifname, outside, backends, ":" in flow.saddr)
    except OSError as exc:
        raise DeviceError(f"{ifname}: {exc.strerror or exc}") from exc
    from .dataplane.takeover_maps import dp_flags

    result = explain(snapshot, flow, ct, affinity, device=dev, ct_table=table,
                     dp_flags=dp_flags(bpf))
    return result, packet_path_note(read_mode(bpf), outside, key in snapshot[SERVICES])


def explain_connect(writer: Any, flow: Flow, host: bool, cookie: Optional[int] = None,
                    netns_cookie: Optional[int] = None) -> SocketExplanation:
    """`ebpflb explain --socket`: what the cgroup socket hooks do with a connect() or sendmsg() to
    the flow's destination by a host-network process (`host`) or a pod's, from the maps `writer`
    reads, the hooks' settings and the affinity binding of the process's network namespace (a
    host process's namespace cookie is the one the agent recorded; a pod's is `netns_cookie`,
    None: not known). `cookie` is the socket's (SO_COOKIE), None: not known."""
    from .dataplane.sock_attach import read_host_cookie, read_mode

    bpf = writer.bpf
    snapshot = read_snapshot(writer)
    now = time.monotonic_ns()
    ns_cookie = read_host_cookie(bpf) if host else netns_cookie
    svc = snapshot[SERVICES].get(SvcKey(flow.daddr, flow.dport, flow.proto))
    bound = (lookup_sock_affinity(bpf, svc.svc_id, ns_cookie)
             if svc is not None and svc.affinity_timeout and ns_cookie else None)
    return explain_socket(snapshot, flow.daddr, flow.dport, flow.proto, read_mode(bpf), host,
                          cookie, AffinityView(bound[0], (now - bound[1]) / 1e9) if bound else None,
                          affinity_known=bool(ns_cookie))


# ---- status

def status_view(config: DataplaneConfig, owner_pid: Optional[int],
                cgroup: Optional[str] = None) -> dict:
    """`ebpflb status`: the view (ebpflb.status_view.build) of the data plane in config.pin_dir,
    read in this network namespace. `owner_pid` is the agent holding it (None: none); its socket
    hooks are looked for on the cgroup its agent recorded, else on `cgroup`, and not at all when
    the agent's status says socket load balancing is off."""
    from .dataplane.loader import pinned
    from .dataplane.survey import devices, dp_flags, map_fill, socket_hooks
    from .status import read_status
    from .status_view import build

    pin_dir = config.pin_dir
    recorded = (read_status(pin_dir) or {}).get("socket_lb") or {}
    hooks = None if recorded.get("mode") == "off" else socket_hooks(
        config, None if recorded.get("cgroup") else cgroup)
    return build(pin_dir, owner_pid, read_status(pin_dir), map_fill(pin_dir),
                 devices(config) if pinned(config) else [], hooks, dp_flags=dp_flags(pin_dir))
