"""`ebpflb explain`: what the data plane does with a packet of a flow, and why (pure core; the CLI
reads the maps).

The prediction repeats the decision core of bpf/core.tmpl.h step by step from a snapshot of the
maps, for the hook the packet meets: lb4_from_pod on a pod device (the default) or lb4_node_in
(TC) on a node device (`outside`, or `Device(NODE)`):

- the frontend lookup (a node device takes the externalTrafficPolicy Local record, and refuses a
  ClusterIP); no frontend: the packet passes (on a node device it may be the reply of a flow
  SNATed to another node, on a pod device the reply of a pod reaching itself);
- the flow's conntrack entry, if any: bound to the device that created it, forgotten when expired,
  closed (a new SYN), pointing at a removed backend (a SYN), or a SNAT port lost; else it decides;
  a removed frontend kept for its open flows (draining) serves nothing else;
- for a new flow, policy: loadBalancerSourceRanges, the pod device's own addresses
  (lb4_pod_addrs), then sources that may never start one (loopback, a VIP, the destination);
- the backend: session affinity, else flow hash -> slot -> backend (slot 0 for a slot gone), with
  the same hash (ebpflb.flowhash) and seed the programs use; none: rejected (dropped when the
  Service has backends on other nodes only, a Local policy, and a RST is never answered);
- state: a bare SYN or UDP creates conntrack entries (a new source port when a live flow of
  another frontend holds the reply tuple); other TCP rebuilds a lost forward entry from a live
  reply entry, else is forwarded by hash without state (dropped towards another node: no SNAT
  port to come back by);
- the rewrite: DNAT; a pod reaching itself also gets the hairpin source; a backend on another node
  (routed through a node device) also gets the node's address and a SNAT port (the first free one
  probed from the flow hash).

The verdict names what happens to the packet, `counted_as` the verdict counter it moves
("hook/verdict", as `ebpflb stats --verdicts` and ebpflb_datapath_packets_total name it), and
`counters` the drop reason and events (lb_stats) it moves.
Inputs the maps of the control plane do not hold are arguments: the packet's TCP flags (in the
Flow), the device (its lb4_pod_addrs entries; which backends route through a node device) and the
conntrack entries the decision reads. tests/bpf/test_explain_parity.py checks all of it against
the programs. Not modelled: XDP, later fragments, ICMP, the egress hooks (replies translated on
their way back), FIB failures and path MTU, and conntrack inserts that fail (a full table).
"""
import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Tuple

from . import abi
from .dataplane.config import CtTimeouts, DataplaneConfig
from .addresses import format_address
from .fields import canonical_ip
from .flowhash import FLOW_HASH_SEED, packet_hash
from .maps import (BACKENDS, BE_F_NO_NEW, CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_EXTERNAL,
                   CT_F_HAIRPIN, CT_F_HANDOVER, CT_F_NETFILTER, CT_F_RESET, CT_F_SNAT,
                   CT_F_SRC_NAT, HAIRPIN_ADDR, HAIRPIN_ADDR6, NO_BACKEND, PROTO_NUMBERS,
                   SERVICES, SLOT_REJECT, SLOTS, SRC_RANGES, SVC_F_DRAINING, SVC_F_DROP_EMPTY,
                   SVC_F_ETP_LOCAL, SVC_F_MAGLEV, SVC_F_SRC_RANGES, SVC_META, VIPS, SvcKey,
                   frontend_kind)
from .records import topology_of
from .model import SCOPE_EXTERNAL, TOPOLOGY_NODE

CT_F_KIND = CT_F_HAIRPIN | CT_F_EXTERNAL | CT_F_SNAT  # what ct4_rebuild compares
SNAT_TRIES = abi.LB4_SNAT_TRIES
TCP = PROTO_NUMBERS["TCP"]
TCP_FLAG_LETTERS = "FSRPAUEC"  # as scapy writes them; S, A, F and R are the ones that decide

POD = "pod"  # lb4_from_pod: TC ingress of a pod device (packets leaving a pod)
NODE = "node"  # lb4_node_in: TC ingress of a node device (traffic from outside the cluster)
HOOKS = {POD: "from_pod", NODE: "node_in"}  # the hook label of their verdict counters

_DEFAULTS = DataplaneConfig()  # the timeouts and SNAT ports the programs are built with by default


@dataclass(frozen=True)
class Flow:
    saddr: str
    sport: int
    daddr: str
    dport: int
    protocol: str  # TCP | UDP
    tcp_flags: str = "S"  # of this packet, scapy letters ("S", "A", "PA", "R"...); UDP: ignored

    @property
    def proto(self) -> int:
        return PROTO_NUMBERS[self.protocol]

    @property
    def syn_only(self) -> bool:
        """A bare SYN (no ACK): the only TCP packet that may create state (tcp_syn_only)."""
        return self.proto == TCP and "S" in self.tcp_flags and "A" not in self.tcp_flags


class CtKey(NamedTuple):
    """A conntrack key: a packet's 5-tuple as it arrives, and the direction of the entry."""
    saddr: str
    sport: int
    daddr: str
    dport: int
    proto: int
    reply: bool = False


@dataclass(frozen=True)
class ConntrackView:
    """A conntrack entry. Forward entry: `backend` is where the flow is pinned, `snat` (nat2) the
    source it leaves with: the node's address and port (CT_F_SNAT), or the client's address and
    a port of its own (CT_F_PORT_NAT). Reply entry: `backend` is the frontend the replies come
    from, `snat` the client of such a flow. `flags` None: not known, the entry is taken as live;
    `ifindex` 0: the device is not known, the device binding is not checked."""
    backend: str  # "ip:port"
    backend_id: int
    age_seconds: float
    idle_seconds: float
    snat: Optional[str] = None  # "ip:port"
    flags: Optional[int] = None  # CT_F_*
    half_open: bool = False  # in ct4_syn (the client has not ACKed yet)
    ifindex: int = 0  # forward entries: the device whose packet created the flow


@dataclass(frozen=True)
class AffinityView:
    """The client's session-affinity binding to the frontend, if the kernel has one."""
    backend_id: int
    idle_seconds: float


@dataclass(frozen=True)
class Device:
    """The device the packet arrives on. A pod device: its ifindex and the addresses lb4_pod_addrs
    lists for it (None: the device is not listed, every source passes). A node device: the
    backends whose route leaves through a node device (lb4_node_ifs), each with that device's
    address, the one a flow towards it is SNATed to; any other backend is on this node."""
    kind: str = POD  # POD | NODE
    ifindex: int = 0  # 0: not known
    addrs: Optional[FrozenSet[str]] = None
    remote: Mapping[str, str] = field(default_factory=dict)  # backend address -> SNAT address


@dataclass(frozen=True)
class Explanation:
    flow: Flow
    # pass: untouched. dnat: destination rewritten to `backend` (and the source port to
    # `source`'s for a flow given a port of its own), on to the stack or the pod. hairpin: a pod
    # reaching itself: DNAT and source `source`, sent back out of its device. forward: from a
    # node device to another node: DNAT (or a reply's) and SNAT to `source`, sent out of a node
    # device. drop. reject: answered (TCP RST, ICMP port unreachable).
    verdict: str
    reason: str
    device: str = POD
    counters: Tuple[str, ...] = ()  # the lb_stats counters (drop reason, events), in order
    counted_as: str = ""  # the verdict counter, "hook/verdict" (from_pod/new, node_in/drop...)
    frontend: Optional[str] = None
    kind: Optional[str] = None  # ClusterIP | NodePort | LoadBalancer | ExternalIP
    service: Optional[str] = None
    svc_id: Optional[int] = None
    algorithm: Optional[str] = None
    slots: Optional[int] = None
    hash: Optional[int] = None
    slot: Optional[int] = None
    hashed_backend: Optional[str] = None  # what the hash picks for a new flow
    hashed_backend_id: Optional[int] = None
    conntrack: Optional[ConntrackView] = None
    affinity_timeout: int = 0  # seconds; 0 when the Service has no ClientIP affinity
    affinity: Optional[AffinityView] = None
    affinity_backend: Optional[str] = None  # set when the binding decides
    backend: Optional[str] = None  # the destination this packet leaves with
    source: Optional[str] = None  # the source it leaves with, when that is rewritten
    stateless: bool = False  # forwarded by hash with no conntrack entry

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def frontend_record(snapshot, key: SvcKey, outside: bool) -> Tuple[SvcKey, Any]:
    """lb4_frontend's lookup: the key and record (None: not a frontend) a packet to `key` meets.
    From outside (a node device), a frontend with externalTrafficPolicy Local answers with its
    node-local record (scope external), whose absence is then the answer."""
    svc = snapshot[SERVICES].get(key)
    if svc is not None and outside and svc.flags & SVC_F_ETP_LOCAL:
        key = key._replace(scope=SCOPE_EXTERNAL)
        svc = snapshot[SERVICES].get(key)
    return key, svc


def slot_backend(snapshot, svc, h: int) -> Tuple[int, Optional[int]]:
    """lb4_slot_backend, for a frontend with slots: (slot = hash % count, the slot's backend id);
    a slot missing answers from slot 0, None when that is missing too."""
    slot = h % svc.count
    table = snapshot[SLOTS].get(svc.svc_id, ())
    if slot < len(table) and table[slot] != NO_BACKEND:
        return slot, table[slot]
    return slot, table[0] if table and table[0] != NO_BACKEND else None


def bound_backend(snapshot, svc, affinity: Optional[AffinityView]) -> bool:
    """lb4_affinity_check: does the client's binding still decide (fresh, to a backend still of
    this frontend and taking new flows)?"""
    if not svc.affinity_timeout or affinity is None or \
            affinity.idle_seconds > svc.affinity_timeout:
        return False
    value = snapshot[BACKENDS].get(affinity.backend_id)
    return value is not None and value.svc_id == svc.svc_id and not value.flags & BE_F_NO_NEW


def parse_flow(src: str, dst: str, protocol: str, tcp_flags: str = "S") -> Flow:
    """Flow from "ipv4:port" or "[ipv6]:port" strings; ValueError naming the bad argument."""
    def endpoint(value: str, what: str):
        ip, sep, port = value.rpartition(":")
        bracketed = ip.startswith("[") and ip.endswith("]")
        ip = ip[1:-1] if bracketed else ip
        try:
            version = ipaddress.ip_address(ip).version
            ip = canonical_ip(ip)  # ValueError for a zoned address too
            number = int(port) if sep and (version == 6) == bracketed else -1
        except ValueError:
            number = -1
        if not 1 <= number <= 65535:
            raise ValueError(f"{what} {value!r} is not IPv4:PORT or [IPv6]:PORT (port 1-65535)")
        return ip, number

    saddr, sport = endpoint(src, "source")
    daddr, dport = endpoint(dst, "destination")
    if (":" in saddr) != (":" in daddr):
        raise ValueError(f"source {src!r} and destination {dst!r} are of different IP families "
                         "(ebpflb does no NAT46/64)")
    proto = protocol.upper()
    if proto not in PROTO_NUMBERS:
        raise ValueError(f"protocol {protocol!r} is not tcp or udp")
    flags = tcp_flags.upper()
    if not flags or any(c not in TCP_FLAG_LETTERS for c in flags):
        raise ValueError(f"TCP flags {tcp_flags!r} are not letters of {TCP_FLAG_LETTERS}")
    return Flow(saddr, sport, daddr, dport, proto, flags if proto == "TCP" else "")


def explain(snapshot, flow: Flow, conntrack: Optional[ConntrackView] = None,
            affinity: Optional[AffinityView] = None, outside: bool = False, *,
            device: Optional[Device] = None,
            ct_table: Optional[Mapping[CtKey, ConntrackView]] = None,
            timeouts: CtTimeouts = _DEFAULTS.ct_timeouts,
            snat_ports: Tuple[int, int] = _DEFAULTS.snat_ports,
            dp_flags: int = 0) -> Explanation:
    """What the program of `device` (default: a pod device; `outside`: a node device) does with
    the packet `flow`. `conntrack` is the flow's forward entry; `ct_table` any entries of both
    conntrack tables (the flow's own, its reply entry, flows holding a tuple it needs); entries
    not given are taken as absent. `timeouts` and `snat_ports` as the programs were built;
    `dp_flags` as lb_dp_cfg holds them (LB_DP_F_*: a takeover from kube-proxy, or a hand-back
    to it, under way)."""
    dev = device if device is not None else Device(NODE if outside else POD)
    if dev.kind not in (POD, NODE):
        raise ValueError(f"device kind {dev.kind!r} is not {POD!r} or {NODE!r}")
    table: Dict[CtKey, ConntrackView] = dict(ct_table or {})
    fwd = CtKey(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto)
    if conntrack is not None:
        table[fwd] = conntrack
    return _Decision(snapshot, flow, dev, table, affinity, timeouts, snat_ports, dp_flags).run()


def reply_key(flow: Flow, e: ConntrackView) -> CtKey:
    """ct4_reply_key: the key of the reply entry of `flow`, whose forward entry is `e`."""
    addr, port = _split(e.backend)
    flags = e.flags or 0
    if flags & CT_F_SRC_NAT:
        daddr, dport = _split(e.snat)
    else:
        daddr = hairpin_addr(flow.saddr) if flags & CT_F_HAIRPIN else flow.saddr
        dport = flow.sport
    return CtKey(addr, port, daddr, dport, flow.proto, True)


def fwd_key_of(rk: CtKey, r: ConntrackView) -> CtKey:
    """ct4_fwd_key_of: the forward key of a flow from its reply key and reply entry."""
    flags = r.flags or 0
    if flags & CT_F_SRC_NAT:
        saddr, sport = _split(r.snat)
    else:
        saddr, sport = (rk.saddr if flags & CT_F_HAIRPIN else rk.daddr), rk.dport
    naddr, nport = _split(r.backend)
    return CtKey(saddr, sport, naddr, nport, rk.proto)


def source_allowed(snapshot, svc_id: int, saddr: str) -> bool:
    """The data path's LPM lookup: does any of the frontend's source ranges hold the address?"""
    addr = ipaddress.ip_address(saddr)
    for key in snapshot.get(SRC_RANGES, {}):
        if key.svc_id == svc_id:
            net = ipaddress.ip_network(key.cidr, strict=False)
            if net.version == addr.version and addr in net:
                return True
    return False


def hairpin_addr(address: str) -> str:
    """The hairpin source of the family of `address` (LB4_HAIRPIN_ADDR_HOST, LB6_HAIRPIN_ADDR_*)."""
    return HAIRPIN_ADDR6 if ":" in address else HAIRPIN_ADDR


def _loopback(address: str) -> bool:
    """addr6_is_loopback / 127.0.0.0/8: ::1, and IPv4 loopback, mapped or not."""
    addr = ipaddress.ip_address(address)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _endpoint(addr: str, port: int) -> str:
    return format_address(addr, port)


def _split(endpoint: Optional[str]) -> Tuple[str, int]:
    addr, _, port = (endpoint or "0.0.0.0:0").rpartition(":")
    return addr.strip("[]"), int(port)


class _Decision:
    """One packet through lb4_frontend and its hook, over a private copy of the conntrack entries
    (what the program forgets on the way is forgotten here too)."""

    def __init__(self, snapshot, flow: Flow, dev: Device, table: Dict[CtKey, ConntrackView],
                 affinity: Optional[AffinityView], timeouts: CtTimeouts,
                 snat_ports: Tuple[int, int], dp_flags: int = 0) -> None:
        self.snap, self.flow, self.dev, self.table = snapshot, flow, dev, table
        self.affinity, self.timeouts, self.snat_ports = affinity, timeouts, snat_ports
        self.dp_flags = dp_flags
        self.counters: List[str] = []
        self.new_flow = False  # the packet creates conntrack entries
        self.reply = False  # the packet is a reply translated back
        self.common: Dict[str, Any] = {}
        self.fwd = CtKey(flow.saddr, flow.sport, flow.daddr, flow.dport, flow.proto)
        self.frontend_ep = _endpoint(flow.daddr, flow.dport)

    # ---- results

    def out(self, verdict: str, reason: str, **fields: Any) -> Explanation:
        merged = {**self.common, **fields}
        return Explanation(self.flow, verdict, reason, self.dev.kind, tuple(self.counters),
                           counted_as=f"{HOOKS[self.dev.kind]}/{self.counted(verdict, merged)}",
                           **merged)

    def counted(self, verdict: str, fields: Mapping[str, Any]) -> str:
        """The program's verdict counter (enum lb_verdict) for this explanation."""
        if verdict in ("pass", "drop", "reject"):
            return verdict
        if self.reply:
            return "reply"
        if self.new_flow:
            return "new"
        return "stateless" if fields.get("stateless") else "established"

    def drop(self, counter: str, reason: str) -> Explanation:
        self.counters.append(counter)
        return self.out("drop", f"{reason}: dropped ({counter})")

    # ---- conntrack, as bpf/conntrack.tmpl.h reads it

    def lifetime(self, flags: int, proto: int) -> int:
        return self.timeouts.lifetime(flags, proto)

    def expired(self, e: ConntrackView) -> bool:
        return e.flags is not None and e.idle_seconds > self.lifetime(e.flags, self.flow.proto)

    def reply_key(self, e: ConntrackView) -> CtKey:
        return reply_key(self.flow, e)

    def forget(self, e: ConntrackView, reply: bool) -> None:
        """ct4_forget: the dead flow's entries go (its reply entry only when `reply`)."""
        if reply:
            rev = self.reply_key(e)
            r = self.table.get(rev)
            if (r is not None and r.backend == self.frontend_ep and
                    (not (e.flags or 0) & CT_F_SRC_NAT or
                     r.snat == _endpoint(self.flow.saddr, self.flow.sport))):
                del self.table[rev]
        self.table.pop(self.fwd, None)

    def backend_alive(self, e: ConntrackView) -> bool:
        be = self.snap[BACKENDS].get(e.backend_id)
        return be is not None and _endpoint(be.addr, be.port) == e.backend

    def snat_owned(self, e: ConntrackView) -> bool:
        r = self.table.get(self.reply_key(e))
        return (r is not None and r.snat == _endpoint(self.flow.saddr, self.flow.sport) and
                r.backend == self.frontend_ep)

    def reply_held(self, rev: CtKey) -> bool:
        """ct4_reply_held: a live flow of another frontend holds the reply key (a half-closed
        one too, for tcp_time_wait)."""
        r = self.table.get(rev)
        if r is None or r.backend == self.frontend_ep:
            return False
        if r.flags is None:
            return True
        idle = r.idle_seconds
        f = self.table.get(fwd_key_of(rev, r))
        if f is not None and f.backend == _endpoint(rev.saddr, rev.sport):
            idle = min(idle, f.idle_seconds)
            fflags = f.flags or 0
        else:
            fflags = r.flags & CT_F_CLOSING
        if (r.flags | fflags) & CT_F_RESET or r.flags & fflags & CT_F_CLOSING:
            return False
        if (r.flags | fflags) & CT_F_CLOSING:
            return idle <= self.timeouts.half_closed
        return idle <= self.lifetime(r.flags, self.flow.proto)

    def rebuild(self, be, backend_id: int, flags: int,
                snat: Optional[str]) -> Optional[ConntrackView]:
        """ct4_rebuild: the forward entry of a flow whose reply entry lives, or None."""
        e = ConntrackView(_endpoint(be.addr, be.port), backend_id, 0.0, 0.0, snat, flags)
        found = self.table.get(self.reply_key(e))
        if (found is None or found.backend != self.frontend_ep or found.backend_id != backend_id
                or (found.flags or 0) & CT_F_CLOSING or self.expired(found)):
            return None
        if (found.flags or 0) & CT_F_KIND != flags & CT_F_KIND:
            return None
        if flags & CT_F_SNAT and found.snat != _endpoint(self.flow.saddr, self.flow.sport):
            return None
        return ConntrackView(e.backend, backend_id, 0.0, 0.0, snat,
                             ((found.flags or 0) & CT_F_KIND) | CT_F_ESTABLISHED,
                             ifindex=self.dev.ifindex)

    def snat_port_state(self, key: CtKey) -> str:
        """snat_port_state: free, busy, or time_wait (closed, held through TIME_WAIT)."""
        e = self.table.get(key)
        if e is None:
            return "free"
        if e.flags is None:
            return "busy"
        idle, flags = e.idle_seconds, e.flags
        f = self.table.get(fwd_key_of(key, e))
        if (f is not None and (f.flags or 0) & CT_F_SRC_NAT and
                f.snat == _endpoint(key.daddr, key.dport) and
                f.backend == _endpoint(key.saddr, key.sport)):
            idle = min(idle, f.idle_seconds)
            flags |= f.flags or 0
        if idle > self.lifetime(flags, key.proto):
            return "free"
        if flags & CT_F_CLOSING and idle > self.timeouts.tcp_close:
            return "time_wait"
        return "busy"

    def snat_port(self, be, snat_addr: str) -> Optional[int]:
        """ct4_create_snat: the first free port probed from the flow hash (a closed flow's port
        reused when none is), or None when every probe is taken."""
        low, high = self.snat_ports
        size = high - low + 1
        time_wait = None
        for i in range(SNAT_TRIES):
            port = low + (self.hash() + i) % size
            state = self.snat_port_state(CtKey(be.addr, be.port, snat_addr, port, self.flow.proto,
                                               True))
            if state == "free":
                return port
            if state == "time_wait" and time_wait is None:
                time_wait = port
        if time_wait is not None:
            self.counters.append("snat_reuse")
        return time_wait

    # ---- selection

    def hash(self) -> int:
        f = self.flow
        return packet_hash(f.saddr, f.sport, f.daddr, f.dport, f.proto)

    def source_valid(self) -> bool:
        """lb4_source_valid: a listed address, or any on a device that is not listed."""
        return self.dev.addrs is None or self.flow.saddr in self.dev.addrs

    def bad_source(self) -> bool:
        """lb4_bad_source: loopback, the destination itself, or a VIP."""
        src = self.flow.saddr
        return (_loopback(src) or src == self.flow.daddr or src in self.snap.get(VIPS, {}))

    def hashed(self, svc) -> Tuple[Optional[int], Any]:
        """lb4_select_backend: the flow hash's slot."""
        if not svc.count:
            return None, None
        h = self.hash()
        slot, backend_id = slot_backend(self.snap, svc, h)
        value = self.snap[BACKENDS].get(backend_id) if backend_id is not None else None
        self.common.update(hash=h, slot=slot, hashed_backend_id=backend_id,
                           hashed_backend=_endpoint(value.addr, value.port) if value else None)
        return (backend_id, value) if value is not None else (None, None)

    def bound(self, svc) -> Tuple[Optional[int], Any]:
        """lb4_affinity_backend: a fresh binding to a backend still of this frontend."""
        if not bound_backend(self.snap, svc, self.affinity):
            return None, None
        assert self.affinity is not None
        return self.affinity.backend_id, self.snap[BACKENDS][self.affinity.backend_id]

    # ---- the hooks

    def run(self) -> Explanation:
        f = self.flow
        if self.dev.kind == POD and f.daddr == hairpin_addr(f.daddr):
            return self.hairpin_reply()
        key, svc = frontend_record(self.snap, SvcKey(f.daddr, f.dport, f.proto),
                                   self.dev.kind == NODE)
        if svc is None and key.scope == SCOPE_EXTERNAL:
            return self.drop("no_backend", f"{key} (this node's backends) is missing")
        if svc is None:
            if self.dev.kind == NODE:
                reply = self.snat_reply()
                if reply is not None:
                    return reply
            return self.out("pass", f"{key} is not a frontend: the packet passes untouched")
        self.common.update(
            frontend=str(key), kind=frontend_kind(svc.flags),
            service=self.snap[SVC_META].get(svc.svc_id, ""), svc_id=svc.svc_id,
            algorithm="maglev" if svc.flags & SVC_F_MAGLEV else "random", slots=svc.count,
            affinity_timeout=svc.affinity_timeout,
            affinity=self.affinity if svc.affinity_timeout else None)
        return self.frontend(key, svc)

    def hairpin_reply(self) -> Explanation:
        """lb4_hairpin_reply: a pod answering the hairpin address gets the frontend back as source
        and itself as destination, and goes back out of its device."""
        f = self.flow
        r = self.table.get(CtKey(f.saddr, f.sport, f.daddr, f.dport, f.proto, True))
        if r is None:
            return self.out("pass", "to the hairpin address with no flow of a pod reaching "
                                    "itself: the packet passes untouched")
        self.reply = True
        return self.out("hairpin", "the reply of a pod that reached itself through a frontend: "
                                   "from the frontend, back to the pod", conntrack=r,
                        backend=_endpoint(f.saddr, f.dport), source=r.backend)

    def snat_reply(self) -> Optional[Explanation]:
        """lb4_node_snat_reply: a reply of a flow SNATed to another node, back to its client."""
        f = self.flow
        low, high = self.snat_ports
        if not low <= f.dport <= high:
            return None
        r = self.table.get(CtKey(f.saddr, f.sport, f.daddr, f.dport, f.proto, True))
        if r is None or not (r.flags or 0) & CT_F_SNAT:
            return None
        self.counters.append("node_forward")
        self.reply = True
        return self.out("forward", "the reply of a flow sent on to a backend on another node: "
                                   "from the frontend, back to the client", conntrack=r,
                        backend=r.snat, source=r.backend)

    def frontend(self, key: SvcKey, svc) -> Explanation:
        """lb4_frontend, and what the hook makes of its answer."""
        f, dev = self.flow, self.dev
        if dev.kind == NODE and frontend_kind(svc.flags) == "ClusterIP":
            return self.drop("external_clusterip", "a ClusterIP reached from outside the cluster")
        hashed_id, hashed_be = self.hashed(svc)  # shown whatever decides
        ct = self.table.get(self.fwd)
        why_new = "a new flow"
        if ct is not None:
            self.common["conntrack"] = ct
            flags = ct.flags or 0
            if (dev.kind == POD and ct.ifindex and dev.ifindex and ct.ifindex != dev.ifindex and
                    (flags & CT_F_EXTERNAL or not self.source_valid())):
                return self.drop("spoofed", f"a packet of a flow of device {ct.ifindex}, from a "
                                            "source this device may not use")
            # A flow netfilter translates lives as long as netfilter's entry (the agent's GC).
            expired = self.expired(ct) and not flags & CT_F_NETFILTER
            if expired or (f.syn_only and flags & CT_F_CLOSING):
                why_new = ("a new flow (its conntrack entry expired)" if expired else
                           "a new flow (a SYN reusing the tuple of a closed flow)")
                self.forget(ct, reply=False)
                ct = None
            elif f.syn_only and not self.backend_alive(ct):
                self.counters.append("backend_gone")
                why_new = "a new flow (a SYN retransmitted to a removed backend)"
                self.forget(ct, reply=True)
                ct = None
            elif flags & CT_F_SRC_NAT and not self.snat_owned(ct):
                why_new = "a new flow (its SNAT port went to another flow)"
                self.forget(ct, reply=False)
                ct = None
            if ct is not None:
                return self.hit(ct, "an established flow: conntrack decides")
        if svc.flags & SVC_F_DRAINING:
            return self.out("pass", f"{why_new} to a removed frontend kept only for its open "
                                    "flows: the packet passes untouched")
        if self.dp_flags & abi.LB_DP_F_NETFILTER_NEW:
            self.counters.append("netfilter")
            return self.out("pass", f"{why_new} while the node is handed back to kube-proxy: "
                                    "netfilter's, passed to the stack untouched")
        if f.proto == TCP and not f.syn_only and self.dp_flags & abi.LB_DP_F_NETFILTER_GRACE:
            self.counters.append("netfilter")
            return self.out("pass", "TCP other than a SYN with no conntrack entry while a takeover "
                                    "from kube-proxy is under way: a flow netfilter may still "
                                    "translate, passed to the stack untouched")

        # A new flow (or a TCP packet of a flow we lost). Policy first.
        if svc.flags & SVC_F_SRC_RANGES and not source_allowed(self.snap, svc.svc_id, f.saddr):
            return self.drop("source_denied", f"{why_new} from {f.saddr}, outside the frontend's "
                                              "loadBalancerSourceRanges")
        if dev.kind == POD and not self.source_valid():
            return self.drop("spoofed", f"{why_new} from {f.saddr}, not an address of the pod "
                                        "behind this device")
        if self.bad_source():
            return self.drop("bad_source", f"{why_new} from {f.saddr} (loopback, a VIP or its "
                                           "own destination), which may not start one")
        backend_id, be = self.bound(svc)
        by_affinity = be is not None
        if not by_affinity:
            backend_id, be = hashed_id, hashed_be
        if be is None:
            if svc.flags & SVC_F_DROP_EMPTY or (f.proto == TCP and "R" in f.tcp_flags):
                self.counters.append("no_backend")  # a drop's reason; a reject has none
            if self.common.get("hashed_backend_id") == SLOT_REJECT and not (
                    f.proto == TCP and "R" in f.tcp_flags):
                return self.out("reject", "the hash picks a slot of the reject share (a Gateway "
                                          "route's backendRefs that do not resolve): new flows "
                                          "there are rejected (TCP RST, ICMP port unreachable)")
            if svc.flags & SVC_F_DROP_EMPTY:
                return self.out("drop", "no usable endpoint here, but the Service has some on "
                                        "other nodes (a Local traffic policy): new flows are "
                                        "dropped, as kube-proxy does (no_backend)")
            if f.proto == TCP and "R" in f.tcp_flags:
                return self.out("drop", "no usable endpoint, and a RST is never answered: "
                                        "dropped (no_backend)")
            return self.out("reject", "no usable endpoint: new flows are rejected (TCP RST, "
                                      "ICMP port unreachable)")
        chosen = _endpoint(be.addr, be.port)
        if by_affinity:
            self.common["affinity_backend"] = chosen
        how = ("its session-affinity binding decides" if by_affinity
               else "the hash picks the slot, the slot the backend")
        topology = topology_of(svc.flags)
        if topology:
            # The control plane filled the slots from the hinted endpoints only.
            self.common["topology"] = topology
            how += (", among the endpoints hinted for this "
                    f"{'node' if topology == TOPOLOGY_NODE else 'zone'} ({topology})")
        snat_addr = dev.remote.get(be.addr) if dev.kind == NODE else None
        if not snat_addr:
            flags = (CT_F_EXTERNAL if dev.kind == NODE else
                     CT_F_HAIRPIN if be.addr == f.saddr else 0)
            if f.proto == TCP and not f.syn_only:
                rebuilt = self.rebuild(be, backend_id, flags, None)
                if rebuilt is not None:
                    self.counters.append("conntrack_rebuilt")
                    return self.hit(rebuilt, "a TCP packet of a flow whose forward entry was "
                                             f"lost: rebuilt from its live reply entry ({how})")
                rev = self.reply_key(ConntrackView(chosen, backend_id, 0.0, 0.0, None, flags))
                if self.reply_held(rev):
                    return self.drop("conntrack_collision", "TCP other than a SYN with no "
                                     "conntrack entry, whose tuple at the backend a live flow "
                                     "of another frontend holds")
                return self.deliver(chosen, None, f"TCP other than a SYN with no conntrack entry: "
                                                  f"forwarded by hash, no state created ({how})",
                                    stateless=True)
            rev = self.reply_key(ConntrackView(chosen, backend_id, 0.0, 0.0, None, flags))
            if not self.reply_held(rev):
                self.counters.append("conntrack_insert")
                self.new_flow = True
                return self.deliver(chosen, None, f"{why_new}: {how}")
            # The client's port already reaches this backend through another frontend: this
            # flow gets a port of its own (a pod reaching itself has none to move).
            held = (f"{why_new} whose reply tuple {rev.saddr}:{rev.sport} -> {rev.daddr}:"
                    f"{rev.dport} a live flow of another frontend holds")
            port = None if flags & CT_F_HAIRPIN else self.snat_port(be, f.saddr)
            if port is None:
                return self.drop("conntrack_collision", held + ", with no port for it")
            self.counters += ["port_nat", "conntrack_insert"]
            self.new_flow = True
            return self.deliver(chosen, _endpoint(f.saddr, port),
                                f"{held}: {how}, and a new source port")
        if svc.flags & SVC_F_ETP_LOCAL:
            return self.drop("forward_fail", "externalTrafficPolicy Local with a backend on "
                                             "another node")
        if f.proto == TCP and not f.syn_only:
            low, high = self.snat_ports
            first = low + self.hash() % (high - low + 1)
            rebuilt = self.rebuild(be, backend_id, CT_F_EXTERNAL | CT_F_SNAT,
                                   _endpoint(snat_addr, first))
            if rebuilt is not None:
                self.counters.append("conntrack_rebuilt")
                return self.hit(rebuilt, "a TCP packet of a flow whose forward entry was lost: "
                                         f"rebuilt from its live reply entry ({how})")
            return self.drop("tcp_no_state", "TCP other than a SYN with no conntrack entry, to a "
                                             "backend on another node (no SNAT port for the "
                                             "replies)")
        port = self.snat_port(be, snat_addr)
        if port is None:
            return self.drop("snat_exhausted", f"no free SNAT port of {snat_addr} towards {chosen}")
        self.counters.append("conntrack_insert")
        self.new_flow = True
        return self.deliver(chosen, _endpoint(snat_addr, port),
                            f"{why_new} to a backend on another node: {how}, SNAT to this node",
                            remote=True)

    def hit(self, ct: ConntrackView, reason: str) -> Explanation:
        """lb4_flow_hit: the packet goes where its flow goes."""
        self.common["conntrack"] = ct
        flags = ct.flags or 0
        if flags & CT_F_HANDOVER:
            return self.drop("handover", "a flow being handed over from netfilter to the data "
                                         "path (its netfilter entry being deleted)")
        if flags & CT_F_NETFILTER:
            self.counters.append("netfilter")
            return self.out("pass", "a flow netfilter translates (taken over from kube-proxy): "
                                    "the packet passes to the stack untouched, where netfilter's "
                                    "conntrack entry rewrites it", backend=ct.backend)
        source = ct.snat if flags & CT_F_SRC_NAT else None
        return self.deliver(ct.backend, source, reason, remote=bool(flags & CT_F_SNAT))

    def deliver(self, backend: str, source: Optional[str], reason: str, remote: bool = False,
                stateless: bool = False) -> Explanation:
        """The hook's rewrite: DNAT; a flow to another node: the SNAT source too, and out of a
        node device; a flow with a port of its own: that source port too; a pod reaching itself:
        the hairpin source, and back out of its device."""
        if remote:
            self.counters.append("node_forward")
            return self.out("forward", reason, backend=backend, source=source,
                            stateless=stateless)
        if source is not None and source != _endpoint(self.flow.saddr, self.flow.sport):
            return self.out("dnat", reason, backend=backend, source=source, stateless=stateless)
        if self.dev.kind == POD and _split(backend)[0] == self.flow.saddr:
            return self.out("hairpin", reason + "; the pod reaches itself: its source becomes the "
                                                "hairpin address", backend=backend,
                            source=_endpoint(hairpin_addr(self.flow.saddr), self.flow.sport),
                            stateless=stateless)
        return self.out("dnat", reason, backend=backend, stateless=stateless)


def _steps(e: Explanation) -> List[Tuple[str, str]]:
    """What happens to the packet after the verdict, step by step, for traffic from outside."""
    if e.device != NODE or not e.backend:
        return []
    if e.verdict == "forward":
        return [("1. DNAT", f"destination {e.flow.daddr}:{e.flow.dport} -> {e.backend}"),
                ("2. SNAT", f"source {e.flow.saddr}:{e.flow.sport} -> {e.source} (this node's "
                            "address on the device towards the backend: its replies come back "
                            "here)"),
                ("3. forward", "sent straight back out of the node device towards the backend's "
                               "node (FIB lookup, redirect; no trip through the stack)"),
                ("4. replies", f"{e.backend} -> {e.source} translated back to "
                               f"{e.flow.daddr}:{e.flow.dport} -> {e.flow.saddr}:{e.flow.sport}")]
    if e.verdict == "dnat":
        return [("1. DNAT", f"destination {e.flow.daddr}:{e.flow.dport} -> {e.backend}; the "
                            f"client's address {e.flow.saddr} is kept"),
                ("2. deliver", "handed to the node's stack, which routes it to the pod"),
                ("3. replies", f"translated back to {e.flow.daddr}:{e.flow.dport} on the node "
                               "device's egress (lb4_node_out)")]
    return []


def render(e: Explanation, extra: Tuple[Tuple[str, str], ...] = ()) -> str:
    """The explanation as aligned rows; `extra` rows (what the caller knows besides) last."""
    f = e.flow
    flags = f" [{f.tcp_flags}]" if f.protocol == "TCP" else ""  # which packet of the flow
    rows = [("flow", f"{f.saddr}:{f.sport} -> {f.daddr}:{f.dport}/{f.protocol}{flags}"),
            ("device", "node device (from outside the cluster)" if e.device == NODE
             else "pod device")]
    if e.frontend:
        rows.append(("frontend", f"{e.frontend}  {e.kind}  {e.service}  (svc {e.svc_id})"))
        if e.kind == "ClusterIP":
            rows.append(("from outside", "dropped on node devices (a ClusterIP is in-cluster only)"))
        rows.append(("algorithm", f"{e.algorithm}, {e.slots} slots"))
        if e.hash is not None:
            rows.append(("hash", f"{e.hash:#010x} (murmur3, seed {FLOW_HASH_SEED:#x})"))
            rows.append(("slot", f"{e.slot} = hash % {e.slots}"))
            rows.append(("hashed backend", "the reject share (LB4_SLOT_REJECT)"
                         if e.hashed_backend_id == SLOT_REJECT
                         else f"{e.hashed_backend_id} => {e.hashed_backend}"))
        if e.conntrack:
            c = e.conntrack
            rows.append(("conntrack", f"entry -> {c.backend} (backend {c.backend_id}), "
                                      f"age {c.age_seconds:.1f}s, idle {c.idle_seconds:.1f}s"
                                      + (f", SNAT from {c.snat}" if c.snat else "")))
        else:
            rows.append(("conntrack", "no entry"))
        if not e.affinity_timeout:
            rows.append(("affinity", "none (sessionAffinity: None)"))
        elif e.affinity is None:
            rows.append(("affinity", f"ClientIP ({e.affinity_timeout}s), no binding for this client"))
        else:
            state = (f"binds to {e.affinity_backend}" if e.affinity_backend
                     else "binding expired or its backend gone")
            rows.append(("affinity", f"ClientIP ({e.affinity_timeout}s): backend "
                                     f"{e.affinity.backend_id}, idle {e.affinity.idle_seconds:.1f}s, {state}"))
    verdict = e.verdict.upper() + (f" to {e.backend}" if e.backend else "")
    if e.source:
        verdict += f" from {e.source}"
    if e.stateless:
        verdict += " (no state)"
    rows.append(("verdict", verdict))
    rows.extend(_steps(e))
    rows.append(("why", e.reason))
    rows.append(("counted as", e.counted_as))
    rows.append(("counters", ", ".join(e.counters) or "none"))
    rows.extend(extra)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
